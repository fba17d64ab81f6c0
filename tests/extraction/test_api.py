"""posctx.extraction.api: what extract checks first, plan-only runs, shards and their results."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from posctx.config import ModelConfig
from posctx.errors import CorpusError, PosctxError, StoreError
from posctx.extraction.api import ExtractResult, extract
from posctx.model import LoadedModel, forward_hidden, load_model
from tests.stores import tiny_config, write_corpus


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"]), batch_size=3))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def _config(gpt2: LoadedModel, corpus: Path, contexts: int = 12) -> object:
    return tiny_config(gpt2.path, corpus, contexts=contexts)


def test_tokens_per_second() -> None:
    result = ExtractResult("p", 4, 1, 1, 0, tokens_written=100, seconds=2.0, resumed=False)
    assert result.tokens_per_second == 50.0 and result.blocks_missing == 0
    assert np.isnan(ExtractResult("p", 4, 1, 0, 1, 0, 0.0, True).tokens_per_second)


def test_plan_only_creates_the_store_and_computes_nothing(
    gpt2: LoadedModel, corpus: Path, tmp_path: Path
) -> None:
    path = tmp_path / "h.zarr"
    planned = extract(_config(gpt2, corpus), str(path), progress=False, loaded=gpt2, plan_only=True)
    assert (planned.resumed, planned.n_blocks, planned.blocks_written) == (False, 3, 0)
    assert (planned.blocks_missing, planned.tokens_written) == (3, 0)
    assert (planned.plan_only, planned.blocks_already_done) == (True, 0)  # nothing done yet
    ds = xr.open_zarr(path)
    assert not ds.block_complete.values.any() and np.isnan(ds.hidden.values).all()
    done = extract(_config(gpt2, corpus), str(path), progress=False, loaded=gpt2)
    assert (done.resumed, done.blocks_written, done.blocks_missing) == (True, 3, 0)
    assert (done.plan_only, done.blocks_already_done) == (False, 0)
    again = extract(_config(gpt2, corpus), str(path), progress=False, loaded=gpt2, plan_only=True)
    assert (again.blocks_already_done, again.blocks_missing, again.blocks_written) == (3, 0, 0)
    assert done.tokens_written == 12 * 8
    ids = xr.open_zarr(path).token_id.values
    np.testing.assert_array_equal(xr.open_zarr(path).hidden.values, forward_hidden(gpt2, ids))


def test_shards_write_disjoint_blocks_of_one_store(
    gpt2: LoadedModel, corpus: Path, tmp_path: Path
) -> None:
    path = str(tmp_path / "h.zarr")
    first = extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2, shard=(0, 2))
    # Blocks 0 and 2 are shard 0's; block 1 is left to shard 1.
    assert (first.blocks_written, first.blocks_already_done, first.blocks_missing) == (2, 0, 1)
    assert first.tokens_written == 8 * 8  # blocks of 4 contexts of 8 tokens
    assert xr.open_zarr(path).block_complete.values.tolist() == [1, 0, 1]
    second = extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2, shard=(1, 2))
    assert (second.resumed, second.blocks_written, second.blocks_missing) == (True, 1, 0)
    again = extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2, shard=(0, 2))
    assert (again.blocks_written, again.blocks_already_done) == (0, 2)


def test_a_shard_never_extends_a_store(gpt2: LoadedModel, corpus: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "h.zarr")
    extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2, plan_only=True)
    with pytest.raises(StoreError) as info:
        extract(_config(gpt2, corpus, 16), path, progress=False, loaded=gpt2, shard=(0, 2))
    assert str(info.value) == (
        f"{path} holds 12 contexts: extend it to 16 with one process first (the same command "
        "without --shard, with --plan-only), then start the shards"
    )
    assert xr.open_zarr(path).sizes["context"] == 12


def test_a_shard_never_creates_a_store_on_object_storage(gpt2: LoadedModel, corpus: Path) -> None:
    path = f"memory://posctx-tests/{uuid.uuid4().hex}/h.zarr"
    with pytest.raises(StoreError) as info:
        extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2, shard=(0, 2))
    assert str(info.value) == (
        f"{path} does not exist yet: on object storage, create it with one process first (the "
        "same command without --shard, with --plan-only), then start the shards"
    )


def test_bad_shards_foreign_outputs_and_bad_corpora_fail_before_the_model_loads(
    corpus: Path, tmp_path: Path
) -> None:
    unloadable = tmp_path / "no-such-model"  # loading it would fail with a ModelError
    with pytest.raises(PosctxError, match="shard 2/2 does not exist"):
        extract(tiny_config(unloadable, corpus), str(tmp_path / "a.zarr"), shard=(2, 2))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(
        StoreError, match="is not a posctx hidden-state store: choose another --out"
    ):
        extract(tiny_config(unloadable, corpus), str(foreign))
    with pytest.raises(CorpusError, match="is not 'stdlib'"):
        extract(tiny_config(unloadable, tmp_path / "nope"), str(tmp_path / "b.zarr"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "foreign"]


def test_the_only_writer_removes_killed_writers_leftovers_and_a_shard_does_not(
    gpt2: LoadedModel, corpus: Path, tmp_path: Path
) -> None:
    path = tmp_path / "h.zarr"
    extract(_config(gpt2, corpus), str(path), progress=False, loaded=gpt2, plan_only=True)
    leftover = path / "hidden" / "c" / "1" / "0" / "0" / f"0.{uuid.uuid4().hex}.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a chunk")
    extract(_config(gpt2, corpus), str(path), progress=False, loaded=gpt2, shard=(0, 2))
    assert leftover.exists()  # another shard may be writing block 1 right now
    extract(_config(gpt2, corpus), str(path), progress=False, loaded=gpt2, plan_only=True)
    assert not leftover.exists()


def _interrupted_creation(
    gpt2: LoadedModel, corpus: Path, monkeypatch: pytest.MonkeyPatch, creator: dict[str, object]
) -> str:
    """A store on object storage whose creating process died before writing its record."""
    import zarr

    import posctx.store.create as create
    from posctx.store import read_provenance
    from posctx.store.provenance import InterruptedCreation

    path = f"memory://posctx-tests/{uuid.uuid4().hex}/h.zarr"

    def killed_before_the_record(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt  # the process dies after the arrays, before the record

    with monkeypatch.context() as patch:
        patch.setattr(create, "open_group", killed_before_the_record)
        with pytest.raises(KeyboardInterrupt):
            extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2, plan_only=True)
    with pytest.raises(InterruptedCreation) as info:
        read_provenance(path, output=True)
    assert info.value.creator == {"host": socket.gethostname(), "pid": os.getpid()}
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    group.update_attributes({"posctx_creating": creator})
    return path


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    return int(done.stdout)


def test_a_rerun_recovers_a_creation_its_dead_process_left_on_object_storage(
    gpt2: LoadedModel, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _interrupted_creation(
        gpt2, corpus, monkeypatch, {"host": socket.gethostname(), "pid": _dead_pid()}
    )
    done = extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2)
    assert not done.resumed and done.blocks_missing == 0 and done.blocks_written == 3
    local = str(tmp_path / "local.zarr")
    extract(_config(gpt2, corpus), local, progress=False, loaded=gpt2)
    np.testing.assert_array_equal(
        xr.open_zarr(path).hidden.values, xr.open_zarr(local).hidden.values
    )


def test_a_creation_by_another_hosts_process_is_left_alone(
    gpt2: LoadedModel, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    path = _interrupted_creation(gpt2, corpus, monkeypatch, {"host": "elsewhere", "pid": 7})
    before = sorted(fsspec.filesystem("memory").find(path))
    with pytest.raises(StoreError) as info:
        extract(_config(gpt2, corpus), path, progress=False, loaded=gpt2)
    assert str(info.value) == (
        f"{path}: the creation of this store was interrupted before it was usable, or is still "
        "going on in process 7 on elsewhere: once that process has ended, delete the store and "
        "re-run the same command"
    )
    assert sorted(fsspec.filesystem("memory").find(path)) == before  # nothing deleted
