"""End to end with tiny random models: corpus -> store -> plain xarray, resume, bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.errors import CorpusError, ModelError, NonFiniteError, StoreError
from posctx.extraction import config_differences, extract
from posctx.model import forward_hidden, load_model


def _config(
    model: Path | str, *, contexts: int = 12, length: int = 16, chunk: int = 4, **kw: object
) -> ExtractConfig:
    corpus = kw.pop("corpus", "stdlib")
    seed = kw.pop("seed", 0)
    return ExtractConfig(
        corpus=CorpusConfig(spec=str(corpus), seed=int(seed)),  # type: ignore[call-overload]
        model=ModelConfig(name=str(model), batch_size=3, **kw),  # type: ignore[arg-type]
        store=StoreConfig(contexts=contexts, length=length, chunk_contexts=chunk),
    )


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = Path(root) / name
            digest.update(str(full.relative_to(path)).encode())
            digest.update(full.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_tiny_model_end_to_end(kind: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "h.zarr"
    config = _config(tiny_models[kind])
    result = extract(config, str(out), progress=False)
    assert (result.blocks_written, result.blocks_already_done) == (3, 0)
    assert result.tokens_written == 12 * 16

    ds = xr.open_zarr(out)  # plain xarray, no posctx
    assert ds.hidden.shape == (12, 16, 3, 32)
    assert list(ds.layer.values) == [0, 1, 2]
    # A decoder's last hidden state comes after its final norm, and its name says so.
    last = "block_2" if kind == "bert" else "block_2+final_norm"
    assert list(ds.layer_name.values) == ["embeddings", "block_1", last]
    assert set(ds.topic.values) == {"reference", "docstrings", "code"}
    assert (ds.offset.values >= 0).all() and all(ds.source.values)
    ids = ds.token_id.values
    prov = ds.attrs["posctx"]
    special = prov["special_tokens"]
    assert prov["config"] == config.to_dict()
    assert prov["model"]["weights_hash"] and prov["model"]["attn_implementation"]
    assert prov["model"]["batch_size"] == 3 and prov["model"]["dtype"] == "float32"
    if kind == "bert":  # [CLS] first, [SEP] last, never in between
        assert special["prefix_tokens"] == ["[CLS]"] and special["suffix_tokens"] == ["[SEP]"]
        assert (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all()
        assert not np.isin(ids[:, 1:-1], [101, 102]).any()
    elif kind == "llama":  # BOS first only; ids above 65,535 survive (int32, not uint16)
        assert special["prefix_tokens"] == ["<s>"] and special["suffix_tokens"] == []
        assert (ids[:, 0] == 1).all() and not (ids[:, 1:] == 1).any()
        assert ids[:, 1:].max() > 65_535 and ds.token_id.dtype == np.int32
    else:  # GPT-2 adds nothing
        assert special["prefix_ids"] == [] and special["suffix_ids"] == []

    # The stored states are exactly the model's states for the stored token ids.
    loaded = load_model(config.model)
    np.testing.assert_array_equal(ds.hidden.values[:5], forward_hidden(loaded, ids[:5]))


def test_layer_subset_and_float16_storage(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "h.zarr"
    config = ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=str(tiny_models["bert"]), layers=(0, 2)),
        store=StoreConfig(contexts=6, length=16, storage_dtype="float16", chunk_contexts=4),
    )
    extract(config, str(out), progress=False)
    ds = xr.open_zarr(out)
    assert ds.hidden.dtype == np.float16
    assert list(ds.layer.values) == [0, 2] and list(ds.layer_name.values) == [
        "embeddings",
        "block_2",
    ]
    assert np.isfinite(ds.hidden.values).all()


def test_rerun_complete_store_does_nothing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "h.zarr"
    config = _config(tiny_models["gpt2"])
    extract(config, str(out), progress=False)
    before = _tree_digest(out)
    again = extract(config, str(out), progress=False)
    assert (again.resumed, again.blocks_written, again.blocks_already_done) == (True, 0, 3)
    assert _tree_digest(out) == before


def test_different_settings_are_refused_and_store_kept(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "h.zarr"
    extract(_config(tiny_models["gpt2"]), str(out), progress=False)
    before = _tree_digest(out)
    for changed in (
        _config(tiny_models["gpt2"], seed=1),
        _config(tiny_models["gpt2"], length=20),
        _config(tiny_models["llama"]),
        _config(tiny_models["gpt2"], corpus=tmp_path),
    ):
        with pytest.raises(
            StoreError, match="was made with different settings.*choose another --out"
        ):
            extract(changed, str(out), progress=False)
    assert _tree_digest(out) == before


def test_config_differences_names_fields() -> None:
    a, b = _config("m").to_dict(), _config("m", seed=3, contexts=5).to_dict()
    assert config_differences(a, b) == ["corpus.seed", "store.contexts"]


def test_bad_inputs_fail_clearly_without_side_effects(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="cannot load model 'no/such-model-here'.*pass 'minilm'"):
        extract(_config("no/such-model-here"), str(tmp_path / "a.zarr"), progress=False)
    with pytest.raises(CorpusError, match="not 'stdlib'"):
        extract(
            _config(tiny_models["gpt2"], corpus=tmp_path / "nope"),
            str(tmp_path / "b.zarr"),
            progress=False,
        )
    small = tmp_path / "small.txt"
    small.write_text("only a few words here")
    with pytest.raises(CorpusError, match="fewer than one context"):
        extract(
            _config(tiny_models["gpt2"], corpus=small), str(tmp_path / "c.zarr"), progress=False
        )
    with pytest.raises(ModelError, match="--length 100 exceeds the 64 positions"):
        extract(_config(tiny_models["bert"], length=100), str(tmp_path / "d.zarr"), progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write a store"):
        extract(_config(tiny_models["gpt2"]), str(blocker / "e.zarr"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "small.txt"]


def test_overflow_is_refused_and_finished_blocks_kept(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """float16 storage of states above 65504 would be inf: refuse, keep what is written."""
    import torch

    config = ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=str(tiny_models["bert"])),
        store=StoreConfig(contexts=8, length=16, storage_dtype="float16", chunk_contexts=4),
    )
    out = tmp_path / "h.zarr"
    loaded = load_model(config.model)
    extract(config, str(out), progress=False, loaded=loaded)
    finished = xr.open_zarr(out).hidden.values.copy()
    with torch.no_grad():  # make the embedding LayerNorm emit values beyond float16's range
        loaded.model.embeddings.LayerNorm.weight.mul_(1e6)
    hot = tmp_path / "hot.zarr"
    with pytest.raises(
        NonFiniteError, match="NaN/inf hidden states at layers.*use --dtype float32"
    ):
        extract(config, str(hot), progress=False, loaded=loaded)
    assert not xr.open_zarr(hot).block_complete.values.any()  # nothing bad was marked done
    np.testing.assert_array_equal(xr.open_zarr(out).hidden.values, finished)


def test_extend_store_equals_fresh_extraction(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import posctx

    small, grown, fresh = tmp_path / "s.zarr", tmp_path / "g.zarr", tmp_path / "f.zarr"
    extract(_config(tiny_models["bert"], contexts=10), str(grown), progress=False)
    posctx.write_decomposition(posctx.decompose(posctx.open_hidden(str(grown))), small)
    before = xr.open_zarr(grown).hidden.values[:8].copy()
    result = extract(_config(tiny_models["bert"], contexts=19), str(grown), progress=False)
    # blocks 0-1 kept; the partial block 2 (contexts 8-9) grows and is redone; 3-4 are new
    assert (result.resumed, result.blocks_already_done, result.blocks_written) == (True, 2, 3)
    extract(_config(tiny_models["bert"], contexts=19), str(fresh), progress=False)
    a, b = xr.open_zarr(grown), xr.open_zarr(fresh)
    for name in ("hidden", "token_id", "topic", "source", "offset", "context", "block_start"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    np.testing.assert_array_equal(a.hidden.values[:8], before)
    assert a.attrs["posctx"]["config"]["store"]["contexts"] == 19
    assert a.attrs["posctx"]["extensions"][0]["from"] == 10
    # The decomposition of the first 10 contexts updates by reading only the 9 new ones.
    n_new = posctx.update_decomposition(posctx.open_hidden(str(grown)), small, tmp_path / "u.zarr")
    assert n_new == 9
    updated = posctx.open_decomposition(tmp_path / "u.zarr")
    scratch = posctx.decompose(posctx.open_hidden(str(fresh))).compute()
    np.testing.assert_allclose(updated.ctx.values, scratch.ctx.values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(updated.ss_resid.values, scratch.ss_resid.values, rtol=1e-9)


def test_fewer_contexts_and_interrupted_extension_are_refused(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import posctx.store.location

    out = tmp_path / "h.zarr"
    extract(_config(tiny_models["gpt2"], contexts=8), str(out), progress=False)
    with pytest.raises(StoreError, match="store.contexts: store has 8, asked 6"):
        extract(_config(tiny_models["gpt2"], contexts=6), str(out), progress=False)

    real_consolidate = posctx.store.location.writing_consolidated

    def crash() -> object:
        raise KeyboardInterrupt  # killed after the arrays grew, before the record was written

    monkeypatch.setattr(posctx.store.location, "writing_consolidated", crash)
    with pytest.raises(KeyboardInterrupt):
        extract(_config(tiny_models["gpt2"], contexts=13), str(out), progress=False)
    monkeypatch.setattr(posctx.store.location, "writing_consolidated", real_consolidate)
    assert posctx.open_hidden(str(out)).sizes["context"] == 8  # still opens as its old self
    with pytest.raises(StoreError, match="extension to 13 contexts was interrupted.*--contexts 13"):
        extract(_config(tiny_models["gpt2"], contexts=8), str(out), progress=False)
    done = extract(_config(tiny_models["gpt2"], contexts=13), str(out), progress=False)
    assert done.blocks_written == 2 and posctx.open_hidden(str(out)).sizes["context"] == 13


def test_the_pre_norm_last_layer_is_recorded_and_a_resume_must_ask_for_it(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "h.zarr"
    before = _config(tiny_models["gpt2"], final_norm="before")
    extract(before, str(out), progress=False)
    ds = xr.open_zarr(out)
    assert list(ds.layer_name.values) == ["embeddings", "block_1", "block_2"]
    prov = ds.attrs["posctx"]
    assert prov["config"]["model"]["final_norm"] == "before"
    assert prov["model"]["final_norm"] == "ln_f"
    loaded = load_model(before.model)
    np.testing.assert_array_equal(ds.hidden.values, forward_hidden(loaded, ds.token_id.values))
    with pytest.raises(StoreError, match="model.final_norm: store has 'before', asked 'after'"):
        extract(_config(tiny_models["gpt2"]), str(out), progress=False)
