"""posctx.extraction.cluster: blocks as tasks on a dask.distributed cluster, one model a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import posctx.extraction.cluster as cluster_module
from posctx.config import ModelConfig
from posctx.errors import StoreError
from posctx.extraction.api import extract
from posctx.extraction.cluster import (
    cached_model,
    extract_block,
    extract_blocks,
    run_blocks_distributed,
)
from posctx.extraction.plan import BlockRun
from posctx.model import LoadedModel, forward_hidden, load_model
from posctx.store import Block, plan_blocks
from tests.stores import tiny_config, write_corpus


@pytest.fixture(autouse=True)
def no_cached_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_module, "_MODELS", {})


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"]), batch_size=3))


@pytest.fixture
def planned(gpt2: LoadedModel, tmp_path: Path) -> str:
    """A planned, unwritten store of 10 contexts x 8 tokens in blocks of 4."""
    path = str(tmp_path / "h.zarr")
    config = tiny_config(gpt2.path, write_corpus(tmp_path / "corpus"), contexts=10)
    extract(config, path, progress=False, loaded=gpt2, plan_only=True)
    return path


def test_a_process_loads_each_model_once(gpt2: LoadedModel) -> None:
    config = gpt2.config.to_dict()
    first = cached_model(config)
    assert first.weights_hash == gpt2.weights_hash
    assert cached_model(dict(reversed(list(config.items())))) is first  # key order is no matter
    other = cached_model({**config, "batch_size": 5})
    assert other is not first and other.config.batch_size == 5
    assert len(cluster_module._MODELS) == 2


def _run(path: str, *blocks: Block) -> BlockRun:
    """The plan of ``blocks`` of the planned store (10 contexts, blocks of 4, batches of 3)."""
    return BlockRun(
        path,
        blocks,
        storage_dtype="float32",
        length=8,
        progress=False,
        n_contexts=10,
        chunk_contexts=4,
        batch_size=3,
    )


def test_extract_blocks_writes_its_blocks_and_their_markers(
    gpt2: LoadedModel, planned: str
) -> None:
    run = _run(planned, Block(1, 4, 8))
    assert extract_blocks(run, gpt2.config.to_dict(), gpt2.weights_hash) == 4
    ds = xr.open_zarr(planned)
    assert ds.block_complete.values.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(
        ds.hidden.values[4:8], forward_hidden(gpt2, ds.token_id.values[4:8])
    )


def test_the_old_extract_block_still_works_with_a_warning(gpt2: LoadedModel, planned: str) -> None:
    with pytest.warns(FutureWarning, match="use posctx.extraction.extract_blocks"):
        size = extract_block(
            planned, Block(2, 8, 10), gpt2.config.to_dict(), "float32", gpt2.weights_hash
        )
    assert size == 2
    assert xr.open_zarr(planned).block_complete.values.tolist() == [0, 0, 1]


def test_a_worker_with_other_weights_writes_nothing(gpt2: LoadedModel, planned: str) -> None:
    with pytest.raises(StoreError) as info:
        extract_blocks(_run(planned, Block(0, 0, 4)), gpt2.config.to_dict(), "0" * 32)
    assert str(info.value) == (
        f"a worker loaded different weights for {gpt2.path!r} than the store records "
        f"({gpt2.weights_hash} vs {'0' * 32}): give every worker the same model"
    )
    assert not xr.open_zarr(planned).block_complete.values.any()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


class _Recording:
    """A client that records how tasks are submitted and passes them on."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.submitted: list[dict[str, Any]] = []

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.submitted.append(kwargs)
        return self.client.submit(*args, **kwargs)


def test_blocks_run_as_named_retried_tasks_and_count_their_tokens(
    gpt2: LoadedModel, planned: str, client: Any
) -> None:
    from dask.base import tokenize

    blocks = plan_blocks(10, 4)
    recording = _Recording(client)
    run = _run(planned, blocks[0], blocks[2])
    tokens = run_blocks_distributed(recording, gpt2, run)
    assert tokens == (4 + 2) * 8
    ds = xr.open_zarr(planned)
    assert ds.block_complete.values.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(
        ds.hidden.values[8:], forward_hidden(gpt2, ds.token_id.values[8:])
    )
    # Named by first block and by what it writes: a resubmitted task is the same task.
    token = tokenize(planned, gpt2.weights_hash, "float32")
    assert [kw["key"] for kw in recording.submitted] == [
        f"posctx-extract-0-{token}",
        f"posctx-extract-2-{token}",
    ]
    assert {kw["retries"] for kw in recording.submitted} == {3}
