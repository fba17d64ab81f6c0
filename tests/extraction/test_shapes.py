"""Extraction planned and run at real model shapes, built offline from configs: a GPT-2-small
shape and a Llama-3.2-1B shape. Forward batches hold the batch asked for whatever the chunk
size, chunks stay within 16-128 MB, and a 2-worker cluster writes what one process writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import posctx.extraction.cluster as cluster_module
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.extraction.api import extract
from posctx.extraction.groups import blocks_per_group
from posctx.model import LoadedModel, load_model
from posctx.model.memory import auto_batch_size
from posctx.model.shapes import shape_config, with_model
from posctx.store import default_chunk_contexts, read_provenance
from tests.stores import write_corpus

MB = 2**20


def _gpt2_small() -> Any:
    return shape_config("gpt2-small")


def _llama_1b() -> Any:
    return shape_config("llama-1b")


def _shaped(tokenizer_model: LoadedModel, config: Any) -> LoadedModel:
    """A model of ``config``'s shape on the meta device (no weights: planning reads none),
    with the tokenizer of a local model folder."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return with_model(tokenizer_model, model, "shape-only")


@pytest.fixture(scope="module")
def tokenizer_model(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"])))


@pytest.mark.parametrize(
    ("shape", "dtype", "before_chunk", "layers", "contexts"),
    [
        ("gpt2-small", "float32", 1, 13, 1),  # 41 MB a context: one per chunk, as before
        ("gpt2-small", "float16", 3, 13, 3),
        ("llama-1b", "float32", 1, 8, 1),  # 143 MB a context: layers split, 67 MB chunks
        ("llama-1b", "float16", 1, 17, 1),  # 71 MB a context
    ],
)
def test_planned_batches_hold_the_batch_asked_and_chunks_stay_in_range(
    tokenizer_model: LoadedModel,
    tmp_path: Path,
    shape: str,
    dtype: str,
    before_chunk: int,
    layers: int,
    contexts: int,
) -> None:
    loaded = _shaped(tokenizer_model, _gpt2_small() if shape == "gpt2-small" else _llama_1b())
    length, batch = 1024, 32
    config = ExtractConfig(
        corpus=CorpusConfig(spec=str(write_corpus(tmp_path / "corpus", words=30_000))),
        model=ModelConfig(name=tokenizer_model.path, batch_size=batch),
        store=StoreConfig(contexts=40, length=length, storage_dtype=dtype),
    )
    path = str(tmp_path / "h.zarr")
    extract(config, path, progress=False, loaded=loaded, plan_only=True)
    record = read_provenance(path) or {}
    itemsize = 2 if dtype == "float16" else 4
    n_layers = len(loaded.layers)
    # Before: a block was one chunk of all layers of about 64 MB, and a forward batch at most
    # one block: 1 context per forward pass here (3 for GPT-2-small in float16).
    before = default_chunk_contexts(length, n_layers, loaded.hidden_size, itemsize)
    assert min(batch, before) == before_chunk
    chunk, chunk_layers = record["chunk_contexts"], record["chunk_layers"]
    assert (chunk_layers, chunk) == (layers, contexts)
    chunk_bytes = chunk * length * chunk_layers * loaded.hidden_size * itemsize
    assert 16 * MB <= chunk_bytes <= 128 * MB
    hidden = xr.open_zarr(path).hidden
    assert hidden.encoding["chunks"] == (chunk, length, chunk_layers, loaded.hidden_size)
    # After: a forward group holds a whole batch of 32 contexts, whatever the chunk.
    assert blocks_per_group(chunk, record["batch_size"]) * chunk >= batch


def test_auto_batch_size_is_recorded_and_fits_the_budget(
    tokenizer_model: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import posctx.model.memory as memory

    monkeypatch.setattr(memory, "free_memory", lambda device: 70 * 2**30)  # half an H200
    loaded = _shaped(tokenizer_model, _gpt2_small())
    chosen = auto_batch_size(loaded, 1024, "float32", statistics=True)
    per_context = memory.context_bytes(loaded, 1024, "float32", statistics=True)
    assert chosen * per_context <= 70 * 2**30 < 2 * chosen * per_context
    config = ExtractConfig(
        corpus=CorpusConfig(spec=str(write_corpus(tmp_path / "corpus", words=20_000))),
        model=ModelConfig(name=tokenizer_model.path, batch_size="auto"),
        store=StoreConfig(contexts=16, length=1024),
    )
    path = str(tmp_path / "h.zarr")
    extract(config, path, progress=False, loaded=loaded, plan_only=True)
    record = read_provenance(path) or {}
    assert record["batch_size"] == chosen and record["config"]["model"]["batch_size"] == "auto"
    # A resume keeps the recorded batch, wherever it runs.
    monkeypatch.setattr(memory, "free_memory", lambda device: 2**30)
    extract(config, path, progress=False, loaded=loaded, plan_only=True)
    assert (read_provenance(path) or {})["batch_size"] == chosen


@pytest.fixture(scope="module")
def gpt2_small(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """Random GPT-2-small weights in a local folder, with a local word-level tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2-small")
    GPT2Model(_gpt2_small()).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(tiny_models["gpt2"])).save_pretrained(path)
    return path


@pytest.fixture
def two_workers() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_two_worker_cluster_writes_what_one_process_writes(
    gpt2_small: Path, tmp_path: Path, two_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_module, "_MODELS", {})
    config = ExtractConfig(
        corpus=CorpusConfig(spec=str(write_corpus(tmp_path / "corpus", words=3000))),
        model=ModelConfig(name=str(gpt2_small), batch_size=2),
        store=StoreConfig(contexts=4, length=256, chunk_contexts=1),
    )
    loaded = load_model(config.model)
    calls: list[int] = []
    hook = loaded.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(len(kwargs["input_ids"])),
        with_kwargs=True,
    )
    try:
        one = str(tmp_path / "one.zarr")
        extract(config, one, progress=False, loaded=loaded)
    finally:
        hook.remove()
    assert calls == [2, 2]  # one context a chunk, two a forward pass
    many = str(tmp_path / "many.zarr")
    result = extract(config, many, progress=False, loaded=loaded, client=two_workers)
    assert result.blocks_written == 4 and result.blocks_missing == 0
    a, b = xr.open_zarr(one), xr.open_zarr(many)
    assert a.hidden.values.tobytes() == b.hidden.values.tobytes()
    for name in ("stat_ctx_sum", "stat_ctx_sumsq", "stat_edge"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert np.isfinite(a.hidden.values).all() and a.hidden.shape == (4, 256, 13, 768)
