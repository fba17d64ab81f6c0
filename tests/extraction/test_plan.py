"""posctx.extraction.plan: context plans, store creation, and the refusals of a resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import posctx.extraction.plan as plan_module
from posctx._version import version
from posctx.config import ModelConfig
from posctx.errors import ModelError, PosctxError, StoreError
from posctx.extraction.plan import (
    check_shard,
    chunk_layout,
    config_differences,
    pending_blocks,
    plan_contexts,
    prepare_store,
    refuse_interrupted_extension,
    refuse_mismatch,
)
from posctx.model import LoadedModel, load_model
from posctx.store import (
    Block,
    StoreCreatedConcurrently,
    default_chunk_contexts,
    plan_blocks,
    read_provenance,
)
from posctx.types import SCHEMA_VERSION
from tests.stores import tiny_config, write_corpus


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, LoadedModel]:
    return {
        kind: load_model(ModelConfig(name=str(tiny_models[kind]), batch_size=3))
        for kind in ("gpt2", "bert")
    }


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def _token_ids(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(path), mode="r", use_consolidated=False)["token_id"][:])


# --- pure planning ---------------------------------------------------------------------------


def test_config_differences_lists_dotted_names_sorted_by_section_and_key() -> None:
    stored = {"store": {"length": 8, "contexts": 4}, "model": {"name": "a", "dtype": "float32"}}
    asked = {"store": {"length": 9, "contexts": 5}, "model": {"name": "a", "dtype": "float16"}}
    assert config_differences(stored, asked) == ["model.dtype", "store.contexts", "store.length"]
    assert config_differences(stored, stored) == []
    # A section or key only one side has is a setting of another posctx version, not a
    # difference: a store made before a setting existed (statistics, say) still resumes.
    assert config_differences({}, {"corpus": {"seed": 1}}) == []
    assert config_differences({"model": {}}, {"model": {"attn_implementation": None}}) == []
    assert config_differences(
        {"store": {"statistics": True}}, {"store": {"statistics": False}}
    ) == ["store.statistics"]


def test_refuse_mismatch_names_every_difference_with_both_values(corpus: Path) -> None:
    stored = {"config": tiny_config("m", corpus, contexts=8).to_dict()}
    refuse_mismatch("h.zarr", stored, tiny_config("m", corpus, contexts=8))  # same: accepted
    asked = tiny_config("other", corpus, contexts=8, length=12)
    with pytest.raises(StoreError) as info:
        refuse_mismatch("h.zarr", stored, asked)
    assert str(info.value) == (
        "h.zarr was made with different settings (model.name: store has 'm', asked 'other', "
        "store.length: store has 8, asked 12): re-run with the store's settings to resume it, "
        "or choose another --out"
    )


def test_more_contexts_are_a_difference_unless_growing_is_allowed(corpus: Path) -> None:
    stored = {"config": tiny_config("m", corpus, contexts=8).to_dict()}
    more, fewer = tiny_config("m", corpus, contexts=12), tiny_config("m", corpus, contexts=6)
    refuse_mismatch("h.zarr", stored, more, allow_more_contexts=True)
    with pytest.raises(StoreError, match="store.contexts: store has 8, asked 12"):
        refuse_mismatch("h.zarr", stored, more)
    with pytest.raises(StoreError, match="store.contexts: store has 8, asked 6"):
        refuse_mismatch("h.zarr", stored, fewer, allow_more_contexts=True)


def test_pending_blocks_skip_done_ones_and_shards_partition_the_rest() -> None:
    blocks = plan_blocks(23, 3)  # 8 blocks, the last one short
    done = np.array([True, False, False, True, False, True, False, False])
    pending = pending_blocks(blocks, done)
    assert [b.index for b in pending] == [1, 2, 4, 6, 7]
    assert pending[-1] == Block(7, 21, 23)
    for n in (1, 2, 3, 5, 9):
        shards = [pending_blocks(blocks, done, shard=(i, n)) for i in range(n)]
        assert sorted(b.index for s in shards for b in s) == [1, 2, 4, 6, 7]
        for i, mine in enumerate(shards):
            assert all(b.index % n == i for b in mine)
            assert mine == sorted(mine, key=lambda b: b.index)
    assert pending_blocks(blocks, np.ones(8, bool)) == []


@pytest.mark.parametrize("shard", [None, (0, 1), (3, 4), (0, 2)])
def test_check_shard_accepts_existing_shards(shard: tuple[int, int] | None) -> None:
    check_shard(shard)


@pytest.mark.parametrize("shard", [(4, 4), (-1, 4), (0, 0), (2, -3)])
def test_check_shard_refuses_shards_that_name_no_blocks(shard: tuple[int, int]) -> None:
    with pytest.raises(PosctxError) as info:
        check_shard(shard)
    assert str(info.value).startswith(f"shard {shard[0]}/{shard[1]} does not exist")
    assert "0 <= I < N, e.g. 0/4 ... 3/4" in str(info.value)


# --- context plans ---------------------------------------------------------------------------


def test_plan_contexts_frames_contexts_with_the_models_special_tokens(
    models: dict[str, LoadedModel], corpus: Path
) -> None:
    from posctx.corpus import open_corpus

    config = tiny_config("m", corpus, contexts=6, length=10)
    bert = plan_contexts(config, models["bert"], open_corpus(config.corpus), False)
    assert bert.token_ids.shape == (6, 10)
    assert (bert.token_ids[:, 0] == 101).all() and (bert.token_ids[:, -1] == 102).all()
    assert not np.isin(bert.token_ids[:, 1:-1], [101, 102]).any()
    assert sorted(bert.topic.tolist()) == ["alpha"] * 3 + ["beta"] * 3  # balanced
    assert set(bert.source.tolist()) == {"alpha.txt", "beta.txt"}
    gpt2 = plan_contexts(config, models["gpt2"], open_corpus(config.corpus), False)
    # Each window is the model's own encoding of its file at its offset: 8 content tokens
    # between [CLS] and [SEP] for BERT, all 10 for GPT-2 (which adds no special tokens).
    for plan, loaded, content in (
        (bert, models["bert"], slice(1, -1)),
        (gpt2, models["gpt2"], slice(None)),
    ):
        for ids, source, offset in zip(plan.token_ids, plan.source, plan.offset, strict=True):
            stream = loaded.encode((corpus / str(source)).read_text())
            window = ids[content]
            assert window.tolist() == stream[offset : offset + window.size]
    again = plan_contexts(config, models["gpt2"], open_corpus(config.corpus), False)
    np.testing.assert_array_equal(gpt2.token_ids, again.token_ids)  # seeded
    other = dataclasses.replace(
        config, corpus=dataclasses.replace(config.corpus, seed=config.corpus.seed + 1)
    )
    reseeded = plan_contexts(other, models["gpt2"], open_corpus(other.corpus), False)
    assert not np.array_equal(gpt2.token_ids, reseeded.token_ids)


# --- creating and resuming a store -----------------------------------------------------------


def test_the_default_chunk_holds_64_mb_of_the_layers_a_chunk_has(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path
) -> None:
    """With --chunk-layers 1, a chunk of one layer holds three times the contexts of one of all
    three layers: chunks stay near 64 MB, and blocks (the forward pass's batches) grow. A
    store with fewer contexts than that has one chunk of just its contexts, not 64 MB."""
    from dataclasses import replace

    loaded = models["gpt2"]
    config = tiny_config(loaded.path, corpus, contexts=7, length=8, chunk=0)
    one_layer = replace(config, store=replace(config.store, chunk_layers=1))
    big = replace(one_layer, store=replace(one_layer.store, contexts=100_000))
    assert chunk_layout(big, loaded) == (1, default_chunk_contexts(8, 1, 32, 4)) == (1, 65536)
    all_layers = replace(config, store=replace(config.store, contexts=100_000))
    assert chunk_layout(all_layers, loaded) == (3, 21845)  # 65536 // 3
    prepare_store(one_layer, str(tmp_path / "h.zarr"), loaded, progress=False)
    record = read_provenance(str(tmp_path / "h.zarr"))
    assert record is not None
    assert record["chunk_contexts"] == 7
    group = zarr.open_group(str(tmp_path / "h.zarr"), mode="r", use_consolidated=False)
    assert group["hidden"].chunks == (7, 8, 1, 32)
    chunk_files = [p for p in (tmp_path / "h.zarr" / "hidden").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in chunk_files) < 10_000  # no padding to 64 MB


def test_prepare_store_creates_the_store_with_its_record_then_resumes_it(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path
) -> None:
    from posctx.corpus import open_corpus

    loaded = models["gpt2"]
    config = tiny_config(loaded.path, corpus, contexts=7, length=8, chunk=0)
    path = tmp_path / "h.zarr"
    assert prepare_store(config, str(path), loaded, progress=False) is False  # created
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    attrs = dict(group.attrs)
    assert attrs["posctx_kind"] == "hidden" and attrs["posctx_schema"] == SCHEMA_VERSION
    assert attrs["title"] == (f"posctx hidden states of {loaded.path} on {corpus} (C=7, T=8)")
    record = attrs["posctx"]
    # chunk_contexts=0: about 64 MB per chunk, but no more than the store's 7 contexts
    assert record["chunk_contexts"] == 7
    assert record["config"] == config.to_dict()
    assert record["model"]["weights_hash"] == loaded.weights_hash
    assert record["special_tokens"] == loaded.special.to_dict()
    assert record["corpus"]["topics"] == ["alpha", "beta"]
    assert group["hidden"].shape == (7, 8, 3, 32) and group["block_complete"].shape == (1,)
    expected = plan_contexts(config, loaded, open_corpus(config.corpus), False).token_ids
    np.testing.assert_array_equal(_token_ids(path), expected)
    assert prepare_store(config, str(path), loaded, progress=False) is True  # resumed
    assert read_provenance(str(path)) == record  # untouched


def test_prepare_store_refuses_other_settings_and_other_weights(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path
) -> None:
    loaded = models["gpt2"]
    config = tiny_config(loaded.path, corpus)
    path = str(tmp_path / "h.zarr")
    prepare_store(config, path, loaded, progress=False)
    with pytest.raises(
        StoreError, match=r"different settings \(store.length: store has 8, asked 9"
    ):
        prepare_store(tiny_config(loaded.path, corpus, length=9), path, loaded, progress=False)
    other = dataclasses.replace(loaded, weights_hash="f" * 16)
    with pytest.raises(StoreError) as info:
        prepare_store(config, path, other, progress=False)
    assert str(info.value) == (
        f"{path} was made with different weights for model {loaded.path!r} (hash "
        f"{loaded.weights_hash} vs {'f' * 16}): use the same weights to resume, or choose "
        "another --out"
    )


def test_a_length_beyond_the_model_is_refused_before_anything_is_written(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path
) -> None:
    loaded = models["gpt2"]  # 64 positions
    with pytest.raises(ModelError, match="--length 65 exceeds the 64 positions"):
        prepare_store(tiny_config(loaded.path, corpus, length=65), str(tmp_path / "h.zarr"), loaded)
    assert list(tmp_path.iterdir()) == [corpus]


def test_more_contexts_extend_the_store_keeping_its_contexts(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path
) -> None:
    from posctx.corpus import open_corpus

    loaded = models["gpt2"]
    path = tmp_path / "h.zarr"
    prepare_store(tiny_config(loaded.path, corpus, contexts=8), str(path), loaded, progress=False)
    before = _token_ids(path)
    grown = tiny_config(loaded.path, corpus, contexts=11)
    assert prepare_store(grown, str(path), loaded, progress=False) is True
    after = _token_ids(path)
    np.testing.assert_array_equal(after[:8], before)
    fresh = plan_contexts(grown, loaded, open_corpus(grown.corpus), False).token_ids
    np.testing.assert_array_equal(after, fresh)  # plans are prefix-stable
    record = read_provenance(str(path)) or {}
    assert record["config"]["store"]["contexts"] == 11
    assert record["extensions"] == [{"from": 8, "to": 11, "posctx_version": version()}]
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    assert group["hidden"].shape[0] == 11 and group["block_start"][:].tolist() == [0, 4, 8]
    assert group.attrs["title"].endswith("(C=11, T=8)")


def test_an_extension_is_refused_when_the_corpus_changed(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path
) -> None:
    loaded = models["gpt2"]
    path = tmp_path / "h.zarr"
    prepare_store(tiny_config(loaded.path, corpus, contexts=8), str(path), loaded, progress=False)
    before = _token_ids(path)
    write_corpus(corpus, skip=20_000)  # same files, other text
    with pytest.raises(StoreError) as info:
        prepare_store(tiny_config(loaded.path, corpus, contexts=12), str(path), loaded)
    assert str(info.value) == (
        f"{path}: the corpus no longer yields the store's 8 contexts (it changed since the "
        "store was made), so the store cannot be extended: extract into a new --out"
    )
    np.testing.assert_array_equal(_token_ids(path), before)
    assert (read_provenance(str(path)) or {})["config"]["store"]["contexts"] == 8


def _racing_creator(change_ids: bool) -> Any:
    """``create_store`` as another process wins the race: it creates the store first."""
    real = plan_module.create_store

    def create(path: str, ds: Any, encoding: Any, storage_options: Any = None) -> None:
        if change_ids:
            ds = ds.assign(token_id=ds.token_id + 1)
        real(path, ds, encoding, storage_options)
        raise StoreCreatedConcurrently(f"{path} was created by another process meanwhile")

    return create


def test_a_store_created_meanwhile_is_joined_when_it_is_the_same_store(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = models["gpt2"]
    monkeypatch.setattr(plan_module, "create_store", _racing_creator(change_ids=False))
    path = str(tmp_path / "h.zarr")
    assert prepare_store(tiny_config(loaded.path, corpus), path, loaded, progress=False) is True


def test_a_store_created_meanwhile_from_another_corpus_is_refused(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = models["gpt2"]
    monkeypatch.setattr(plan_module, "create_store", _racing_creator(change_ids=True))
    path = str(tmp_path / "h.zarr")
    with pytest.raises(StoreError) as info:
        prepare_store(tiny_config(loaded.path, corpus), path, loaded, progress=False)
    assert str(info.value) == (
        f"{path} was created meanwhile by another process from a different corpus: make every "
        "process read the same corpus, or choose another --out"
    )


def test_an_interrupted_extension_must_be_finished_first(
    models: dict[str, LoadedModel], corpus: Path, tmp_path: Path
) -> None:
    loaded = models["gpt2"]
    path = str(tmp_path / "h.zarr")
    config = tiny_config(loaded.path, corpus, contexts=8)
    prepare_store(config, path, loaded, progress=False)
    stored = read_provenance(path) or {}
    refuse_interrupted_extension(path, stored, config, None)  # nothing interrupted
    # An extension to 12 that was killed after resizing the arrays, before its record.
    zarr.open_group(path, mode="r+", use_consolidated=False)["token_id"].resize((12, 8))
    with pytest.raises(StoreError) as info:
        refuse_interrupted_extension(path, stored, config, None)
    assert str(info.value) == (
        f"{path}: an extension to 12 contexts was interrupted: re-run with --contexts 12 to "
        "finish it"
    )
    finishing = tiny_config(loaded.path, corpus, contexts=12)
    refuse_interrupted_extension(path, stored, finishing, None)  # the run that finishes it
