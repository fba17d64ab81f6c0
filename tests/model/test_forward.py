"""posctx.model.forward: hidden states batch by batch equal the torch module's own, one big
batch's, in the storage dtype; NaN/inf refused after the block with the layers named."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from posctx.config import ModelConfig
from posctx.errors import NonFiniteError
from posctx.model.forward import CudaApi, forward_block, forward_hidden, launch_block
from posctx.model.loading import LoadedModel, load_model

IDS = np.random.default_rng(0).integers(3, 1000, size=(7, 10))  # ids 0..2 never appear


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"])))


@pytest.fixture(scope="module")
def bert(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["bert"])))


def _fresh(tiny_models: dict[str, Path], **config: object) -> LoadedModel:
    """A tiny GPT-2 of its own, to damage."""
    return load_model(ModelConfig(name=str(tiny_models["gpt2"]), **config))  # type: ignore[arg-type]


def _torch_states(loaded: LoadedModel, ids: np.ndarray) -> np.ndarray:
    """Every hidden state from the module itself, without a mask: (context, position, layer, dim)."""
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.as_tensor(ids), output_hidden_states=True)
    return np.stack([h.numpy() for h in out.hidden_states], axis=2)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_the_states_are_the_modules_own_in_any_batch_size(
    kind: str, request: pytest.FixtureRequest
) -> None:
    loaded: LoadedModel = request.getfixturevalue(kind)
    whole = forward_hidden(loaded, IDS)
    assert whole.shape == (7, 10, 3, 32) and whole.dtype == np.float32
    np.testing.assert_array_equal(whole, _torch_states(loaded, IDS))
    for batch_size in (1, 2, 3, 6, 7, 50):  # uneven last batches, and one larger than the block
        np.testing.assert_array_equal(forward_block(loaded, IDS, batch_size=batch_size), whole)


def test_any_integer_ids_layout_gives_the_same_states(gpt2: LoadedModel) -> None:
    whole = forward_hidden(gpt2, IDS)
    fortran32 = np.asfortranarray(IDS.astype(np.int32))
    np.testing.assert_array_equal(forward_block(gpt2, fortran32, batch_size=3), whole)
    empty = forward_block(gpt2, IDS[:0], batch_size=3)
    assert empty.shape == (0, 10, 3, 32) and empty.dtype == np.float32


def test_float16_storage_is_the_float32_states_rounded(gpt2: LoadedModel) -> None:
    half = forward_block(gpt2, IDS, "float16", batch_size=4)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, forward_hidden(gpt2, IDS).astype(np.float16))
    np.testing.assert_array_equal(forward_hidden(gpt2, IDS, "float16"), half)


def test_chosen_layers_come_in_their_order(tiny_models: dict[str, Path], gpt2: LoadedModel) -> None:
    picked = _fresh(tiny_models, layers=(2, 0))
    states = forward_block(picked, IDS, batch_size=3)
    assert states.shape == (7, 10, 2, 32)
    whole = forward_hidden(gpt2, IDS)
    np.testing.assert_array_equal(states[:, :, 0], whole[:, :, 2])
    np.testing.assert_array_equal(states[:, :, 1], whole[:, :, 0])


def _message(layers: list[str], storage: str = "float32") -> str:
    return (
        f"the model produced NaN/inf hidden states at layers {layers} (model dtype float32, "
        f"storage {storage}); float16 overflows above 65504: use --dtype float32 and "
        "--storage-dtype float32"
    )


def test_nan_is_refused_with_the_layers_that_hold_it(tiny_models: dict[str, Path]) -> None:
    for layers, names in (
        ((), ["block_2+final_norm"]),
        ((0, 2), ["block_2+final_norm"]),
        ((0, 1), None),
    ):
        loaded = _fresh(tiny_models, layers=layers)
        with torch.no_grad():  # the last block's MLP now emits NaN: hidden state 2 only
            loaded.model.h[1].mlp.c_proj.bias.fill_(float("nan"))
        if names is None:  # the damaged layer is not extracted: nothing to refuse
            assert np.isfinite(forward_block(loaded, IDS, batch_size=3)).all()
            continue
        with pytest.raises(NonFiniteError) as info:
            forward_block(loaded, IDS, batch_size=3)
        assert str(info.value) == _message(names)


def test_one_bad_context_in_a_later_batch_is_found_after_the_whole_block(
    tiny_models: dict[str, Path],
) -> None:
    loaded = _fresh(tiny_models)
    with torch.no_grad():
        loaded.model.wte.weight[2].fill_(float("inf"))  # id 2: only where it is placed
    assert np.isfinite(forward_block(loaded, IDS, batch_size=2)).all()
    ids = IDS.copy()
    ids[5, 4] = 2  # context 5: the third of four batches
    calls: list[int] = []
    hook = loaded.model.register_forward_hook(lambda m, args, out: calls.append(1))
    with pytest.raises(NonFiniteError) as info:
        forward_block(loaded, ids, batch_size=2)
    hook.remove()
    assert len(calls) == 4  # every batch ran: the check waits for the end of the block
    assert str(info.value) == _message(["embeddings", "block_1", "block_2+final_norm"])


def test_float16_overflow_is_refused_with_the_advice(tiny_models: dict[str, Path]) -> None:
    loaded = _fresh(tiny_models)
    with torch.no_grad():  # token embeddings far beyond float16's range; ln_f tames the last
        loaded.model.wte.weight.mul_(1e6)
    states = forward_hidden(loaded, IDS)  # float32 storage: finite, so accepted
    assert np.isfinite(states).all()
    with np.errstate(over="ignore"):
        overflowing = np.isinf(states.astype(np.float16)).any(axis=(0, 1, 3))
    names = [name for name, bad in zip(loaded.layer_names, overflowing, strict=True) if bad]
    assert names == ["embeddings", "block_1"]
    with pytest.raises(NonFiniteError) as info:
        forward_block(loaded, IDS, "float16", batch_size=3)
    assert str(info.value) == _message(names, storage="float16")


class _Event:
    def __init__(self, log: list[str]) -> None:
        self.log, self.recorded = log, False

    def record(self, stream: object = None) -> None:
        self.recorded = True
        self.log.append("record" if stream is None else "record on copy stream")

    def synchronize(self) -> None:
        assert self.recorded, "waited for an event never recorded"
        self.log.append("wait")


class _Stream:
    def wait_event(self, event: _Event) -> None:
        assert event.recorded, "a stream waits for an event never recorded"


class FakeCuda(CudaApi):
    """CUDA's calls stood in for on a CPU, where every copy is done at once: the asynchronous
    path's logic (buffers, events, flags, statistics copies) runs, and its results must be the
    synchronous path's."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.pinned_shapes: list[tuple[int, ...]] = []

    def stream(self, device: object) -> _Stream:
        return _Stream()

    def event(self) -> _Event:
        return _Event(self.log)

    def on(self, stream: object) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def current(self, device: object) -> _Stream:
        return _Stream()

    def pinned(self, shape: Any, dtype: Any) -> torch.Tensor:
        self.pinned_shapes.append(tuple(shape))
        return torch.empty(tuple(shape), dtype=dtype)

    def keep_for(self, tensor: Any, stream: object) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    import posctx.model.forward as forward

    fake = FakeCuda()
    monkeypatch.setattr(forward, "accelerator_api", lambda device: fake)
    return fake


def test_the_asynchronous_path_gives_the_same_states(
    gpt2: LoadedModel, fake_cuda: FakeCuda
) -> None:
    import posctx.model.forward as forward

    whole = _torch_states(gpt2, IDS)
    buffers = forward.DeviceBuffers(gpt2, "float32")
    assert buffers.cuda and buffers.copy_stream is not None
    out = forward.host_buffer(gpt2, 7, 10, "float32")
    for batch_size in (2, 3, 7):
        pending = launch_block(gpt2, IDS, batch_size=batch_size, out=out, buffers=buffers)
        states = pending.wait()
        np.testing.assert_array_equal(states, whole)
        assert np.shares_memory(states, out.numpy())  # the run's buffer, reused
    assert fake_cuda.log[-1] == "wait"  # the host waited once, on the block's last copy
    # The ids and the flags, per block: no buffer of states is allocated (`out` is reused).
    assert fake_cuda.pinned_shapes == [(7, 10), (3,)] * 3
    first = buffers._stack
    launch_block(gpt2, IDS, batch_size=2, out=out, buffers=buffers).wait()
    assert buffers._stack is first  # the stacking buffer is made once and reused


def test_the_asynchronous_path_refuses_nan_after_the_block(
    tiny_models: dict[str, Path], fake_cuda: FakeCuda
) -> None:
    loaded = _fresh(tiny_models)
    with torch.no_grad():
        loaded.model.h[1].mlp.c_proj.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError) as info:
        forward_block(loaded, IDS, batch_size=3)
    assert str(info.value) == _message(["block_2+final_norm"])


def test_an_extraction_through_the_asynchronous_path_writes_the_same_store(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xarray as xr

    import posctx.model.forward as forward
    from posctx.extraction import extract
    from tests.stores import tiny_config, write_corpus

    loaded = load_model(ModelConfig(name=str(tiny_models["gpt2"]), batch_size=3))
    config = tiny_config(loaded.path, write_corpus(tmp_path / "corpus"), contexts=10, chunk=1)
    extract(config, str(tmp_path / "sync.zarr"), progress=False, loaded=loaded)
    fake = FakeCuda()
    monkeypatch.setattr(forward, "accelerator_api", lambda device: fake)
    extract(config, str(tmp_path / "async.zarr"), progress=False, loaded=loaded)
    assert "record on copy stream" in fake.log
    a, b = xr.open_zarr(tmp_path / "sync.zarr"), xr.open_zarr(tmp_path / "async.zarr")
    for name in ("hidden", "stat_ctx_sum", "stat_ctx_sumsq", "stat_edge", "block_complete"):
        assert a[name].values.tobytes() == b[name].values.tobytes(), name


@pytest.mark.parametrize(("kind", "norm"), [("gpt2", "ln_f"), ("llama", "norm")])
def test_a_decoders_last_state_is_taken_after_or_before_its_final_norm(
    tiny_models: dict[str, Path], kind: str, norm: str
) -> None:
    ids = IDS % 900 + 3 if kind == "gpt2" else IDS % 900 + 70_000
    after = load_model(ModelConfig(name=str(tiny_models[kind])))
    before = load_model(ModelConfig(name=str(tiny_models[kind]), final_norm="before"))
    assert after.layer_names == ("embeddings", "block_1", "block_2+final_norm")
    assert before.layer_names == ("embeddings", "block_1", "block_2")
    assert after.info()["final_norm"] == before.info()["final_norm"] == norm
    seen: dict[str, torch.Tensor] = {}
    module = getattr(after.model, norm)
    hook = module.register_forward_hook(lambda m, a, o: seen.update(x=a[0], y=o))
    states_after = forward_block(after, ids, batch_size=7)  # one batch: the hook sees it all
    hook.remove()
    states_before = forward_block(before, ids, batch_size=3)
    # HF's last entry is the norm's output; "before" gives the norm's input; the rest equal.
    np.testing.assert_array_equal(states_after[:, :, 2], seen["y"].numpy())
    np.testing.assert_array_equal(states_before[:, :, 2], seen["x"].numpy())
    np.testing.assert_array_equal(states_before[:, :, :2], states_after[:, :, :2])
    assert not np.allclose(states_before[:, :, 2], states_after[:, :, 2])
    assert not before.final_norm._forward_hooks  # the hook is removed after each block


def test_an_encoder_has_no_final_norm_to_skip(tiny_models: dict[str, Path]) -> None:
    from posctx.errors import ModelError

    bert = load_model(ModelConfig(name=str(tiny_models["bert"])))
    assert bert.layer_names[-1] == "block_2" and bert.info()["final_norm"] is None
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=str(tiny_models["bert"]), final_norm="before"))
    assert str(info.value) == (
        f"model {str(tiny_models['bert'])!r} has no final norm after its last block (its last "
        "hidden state is that block's output already): drop --final-norm before"
    )
