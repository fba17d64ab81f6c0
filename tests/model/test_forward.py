"""posctx.model.forward: hidden states batch by batch equal the torch module's own, one big
batch's, in the storage dtype; NaN/inf refused after the block with the layers named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from posctx.config import ModelConfig
from posctx.errors import NonFiniteError
from posctx.model.forward import forward_block, forward_hidden
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
    for layers, names in (((), ["block_2"]), ((0, 2), ["block_2"]), ((0, 1), None)):
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
    assert str(info.value) == _message(["embeddings", "block_1", "block_2"])


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
