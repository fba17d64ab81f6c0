"""Stores on object storage: extraction, resume, extension, decomposition and refusals against
a real S3 API (moto's server on localhost), each equal bit for bit to the same work done
on a local disk."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import s3fs
import xarray as xr
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

import posctx
import posctx.store
import posctx.testing
from posctx.cli import cli
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.errors import StoreError

S3 = tuple[str, dict[str, Any]]  # a bucket's URL and the storage options that reach it


def _config(model: Path, contexts: int = 10) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=str(model), batch_size=3),
        store=StoreConfig(contexts=contexts, length=12, chunk_contexts=4),
    )


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on localhost, for this module's tests (port 0: the OS picks a free one)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh, empty bucket on the moto server: its URL and the fsspec storage options.

    The credentials are fake and the environment holds nothing else, so that nothing reaches
    for a real AWS account, a config file or an instance-metadata endpoint.
    """
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"posctx-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    opts = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    return f"s3://{bucket}", opts


@pytest.fixture(scope="module")
def reference(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExtractConfig, Path]:
    """The extraction every S3 store must equal, and its store on a local disk."""
    config = _config(tiny_models["gpt2"])
    path = tmp_path_factory.mktemp("local") / "h.zarr"
    posctx.extract(config, str(path), progress=False)
    return config, path


def _assert_same_store(url: str, opts: dict[str, Any], local: Path) -> None:
    remote = posctx.open_hidden(url, storage_options=opts).compute()
    expected = posctx.open_hidden(str(local)).compute()
    xr.testing.assert_equal(remote, expected)  # exact: every value and label
    for key in ("config", "model", "special_tokens", "corpus"):  # the record, but its times
        assert remote.attrs["posctx"][key] == expected.attrs["posctx"][key]


def test_extract_to_s3_equals_local(s3: S3, reference: tuple[ExtractConfig, Path]) -> None:
    bucket, opts = s3
    config, local = reference
    url = f"{bucket}/h.zarr"
    result = posctx.extract(config, url, storage_options=opts, progress=False)
    assert (result.blocks_written, result.blocks_already_done) == (3, 0)

    plain = xr.open_zarr(url, storage_options=opts)  # plain xarray, every label
    assert plain.hidden.shape == (10, 12, 3, 32)
    assert list(plain.layer_name.values) == ["embeddings", "block_1", "block_2+final_norm"]
    assert set(plain.topic.values) == {"reference", "docstrings", "code"}
    assert plain.attrs["posctx"]["config"] == config.to_dict()
    _assert_same_store(url, opts, local)


def test_resume_and_extend_on_s3(
    s3: S3, reference: tuple[ExtractConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, opts = s3
    config, local = reference
    url = f"{bucket}/h.zarr"
    real_write = posctx.store.BlockWriter.write_unmarked
    calls = []

    def killed_on_second_block(self: Any, block: Any, data: np.ndarray, stats: Any) -> None:
        calls.append(block.index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(self, block, data, stats)

    # Statistics committed (and the marker set) after every block, as a kill here expects.
    monkeypatch.setenv("POSCTX_FLUSH_SECONDS", "0")
    monkeypatch.setattr(posctx.store.BlockWriter, "write_unmarked", killed_on_second_block)
    with pytest.raises(KeyboardInterrupt):
        posctx.extract(config, url, storage_options=opts, progress=False)
    monkeypatch.setattr(posctx.store.BlockWriter, "write", real_write)
    info = posctx.store.store_info(url, opts)
    assert (info["blocks_complete"], info["complete"]) == (1, False)

    result = posctx.extract(config, url, storage_options=opts, progress=False)
    assert result.resumed and (result.blocks_written, result.blocks_already_done) == (2, 1)
    info = posctx.store.store_info(url, opts)
    assert info["complete"] and info["blocks_complete"] == info["blocks_total"] == 3
    assert info["size_on_disk"] >= 10 * 12 * 3 * 32 * 4  # every hidden state is there
    _assert_same_store(url, opts, local)

    # Extending on S3 (resize, re-consolidate, record last) equals the fresh extraction.
    grown = f"{bucket}/grown.zarr"
    posctx.extract(_config(Path(config.model.name), 6), grown, storage_options=opts, progress=False)
    result = posctx.extract(config, grown, storage_options=opts, progress=False)
    assert (result.blocks_written, result.blocks_already_done) == (2, 1)  # partial block 1 grew
    _assert_same_store(grown, opts, local)


def test_interrupted_creation_on_s3_recovers_by_rerunning_once_its_process_is_gone(
    s3: S3, reference: tuple[ExtractConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import subprocess
    import sys

    import zarr

    bucket, opts = s3
    config, local = reference
    url = f"{bucket}/h.zarr"
    real_to_zarr = xr.Dataset.to_zarr

    def killed_after_arrays(self: xr.Dataset, *args: Any, **kwargs: Any) -> Any:
        real_to_zarr(self, *args, **kwargs)
        raise KeyboardInterrupt  # before the provenance record is written

    monkeypatch.setattr(xr.Dataset, "to_zarr", killed_after_arrays)
    with pytest.raises(KeyboardInterrupt):
        posctx.extract(config, url, storage_options=opts, progress=False)
    monkeypatch.setattr(xr.Dataset, "to_zarr", real_to_zarr)
    # Its creator (this very process) still runs: the half-made store is not touched.
    host = socket.gethostname()
    with pytest.raises(StoreError) as info:
        posctx.extract(config, url, storage_options=opts, progress=False)
    assert str(info.value) == (
        f"{url}: the creation of this store was interrupted before it was usable, or is still "
        f"going on in process {os.getpid()} on {host}: once that process has ended, delete the "
        "store and re-run the same command"
    )
    # As if it had been killed: the same command then clears it and creates the store afresh.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    group = zarr.open_group(url, mode="r+", storage_options=opts, use_consolidated=False)
    group.update_attributes({"posctx_creating": {"host": host, "pid": int(dead.stdout)}})
    result = posctx.extract(config, url, storage_options=opts, progress=False)
    assert not result.resumed and result.blocks_missing == 0
    _assert_same_store(url, opts, local)


def test_decompose_on_s3_equals_local(
    s3: S3, reference: tuple[ExtractConfig, Path], tmp_path: Path
) -> None:
    bucket, opts = s3
    config, local = reference
    url, dec_url = f"{bucket}/h.zarr", f"{bucket}/d.zarr"
    posctx.extract(config, url, storage_options=opts, progress=False)
    ds = posctx.open_hidden(url, storage_options=opts)
    posctx.write_decomposition(posctx.decompose(ds), dec_url, storage_options=opts)
    posctx.write_decomposition(
        posctx.decompose(posctx.open_hidden(str(local))), tmp_path / "d.zarr"
    )
    remote = posctx.open_decomposition(dec_url, storage_options=opts).compute()
    expected = posctx.open_decomposition(tmp_path / "d.zarr").compute()
    xr.testing.assert_equal(remote, expected)  # exact; attrs name the source and the time
    assert json.loads(remote.attrs["posctx_decomposition"])["source_store"] == url

    with pytest.raises(StoreError, match="already holds data"):
        posctx.write_decomposition(posctx.decompose(ds), dec_url, storage_options=opts)
    with pytest.raises(StoreError, match="is a hidden-state store"):
        posctx.write_decomposition(posctx.decompose(ds), url, mode="w", storage_options=opts)
    _assert_same_store(url, opts, local)  # intact

    # The command line: options as KEY=VALUE with JSON values; one set serves a remote and a
    # local store in the same command.
    options = [
        "--storage-option", "key=testing",
        "--storage-option", "secret=testing",
        "--storage-option", f"client_kwargs={json.dumps(opts['client_kwargs'])}",
    ]  # fmt: skip
    for out in (f"{bucket}/d-cli.zarr", str(tmp_path / "d-cli.zarr")):
        run = CliRunner().invoke(
            cli, ["decompose", url, "--out", out, "--positions", "all", *options]
        )
        assert run.exit_code == 0, run.output
        assert "embeddings" in run.output
        assert "decomposed from the statistics kept during extraction" in run.output
        got = posctx.open_decomposition(out, storage_options=opts).compute()
        for name in ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid"):
            np.testing.assert_allclose(got[name].values, expected[name].values, rtol=1e-12)
    run = CliRunner().invoke(cli, ["info", url, *options])
    assert run.exit_code == 0, run.output
    assert "3/3 written (complete)" in run.output


def test_foreign_prefix_is_refused_and_kept(s3: S3, reference: tuple[ExtractConfig, Path]) -> None:
    bucket, opts = s3
    config, _ = reference
    fs = s3fs.S3FileSystem(**opts)
    foreign = f"{bucket}/foreign"
    fs.pipe(f"{foreign}/keep.txt", b"x")
    with pytest.raises(StoreError, match="is not a posctx hidden-state store"):
        posctx.extract(config, foreign, storage_options=opts, progress=False)
    fs.invalidate_cache()
    assert fs.find(foreign) == [f"{foreign.removeprefix('s3://')}/keep.txt"]
    assert fs.cat(f"{foreign}/keep.txt") == b"x"


def test_missing_bucket_is_a_store_error(s3: S3, reference: tuple[ExtractConfig, Path]) -> None:
    _, opts = s3
    config, _ = reference
    url = f"s3://posctx-missing-{uuid.uuid4().hex[:8]}/h.zarr"
    with pytest.raises(StoreError, match="cannot write a store at .*check the bucket"):
        posctx.extract(config, url, storage_options=opts, progress=False)


def test_unwritable_bucket_is_reported_before_the_model_loads(s3: S3) -> None:
    _, opts = s3
    config = ExtractConfig(model=ModelConfig(name="no/such-model-anywhere"))
    url = f"s3://posctx-missing-{uuid.uuid4().hex[:8]}/h.zarr"
    with pytest.raises(StoreError, match="cannot write a store at"):  # not a ModelError
        posctx.extract(config, url, storage_options=opts, progress=False)


def _count_s3_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record every S3 API call s3fs makes: ``(operation, key or prefix)``."""
    calls: list[tuple[str, str]] = []
    real = s3fs.S3FileSystem._call_s3

    async def counted(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        target = kwargs.get("Key") or kwargs.get("Prefix") or ""
        calls.append((method if isinstance(method, str) else method.__name__, str(target)))
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    return calls


@pytest.mark.parametrize("sep", ["/", "."])
def test_missing_chunks_on_s3_come_from_one_listing(
    s3: S3, sep: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zarr

    from posctx.store import plan_blocks
    from posctx.store.integrity import missing_chunks
    from posctx.testing import raise_if_dask_computes

    bucket, opts = s3
    url = f"{bucket}/h.zarr"
    group = zarr.open_group(url, mode="w", storage_options=opts)
    hidden = group.create_array(
        "hidden",
        shape=(10, 3, 4, 2),
        chunks=(4, 3, 2, 2),  # 3 blocks of 4 contexts, 2 layer chunks: 6 chunk objects
        dtype="f4",
        fill_value=np.nan,
        compressors=None,
        chunk_key_encoding={"name": "default", "separator": sep},
    )
    hidden[...] = np.ones(hidden.shape, np.float32)
    blocks = plan_blocks(10, 4)
    assert missing_chunks(url, blocks, opts) == {}

    key = sep.join(["c", "1", "0", "1", "0"])
    fs = s3fs.S3FileSystem(**opts)
    fs.rm(f"{url}/hidden/{key}")
    calls = _count_s3_calls(monkeypatch)
    with raise_if_dask_computes(max_computes=0):
        assert missing_chunks(url, blocks, opts) == {1: [f"hidden/{key}"]}
    operations = [operation for operation, _ in calls]
    # The array's metadata (a HEAD and a GET), then one listing of its prefix: 3 requests
    # in all, none per chunk.
    assert operations.count("list_objects_v2") == 1 and len(calls) <= 3, calls
    assert {target for op, target in calls if op != "list_objects_v2"} == {
        "h.zarr/hidden/zarr.json"
    }, calls


def test_open_hidden_on_s3_refuses_missing_chunk_objects(s3: S3) -> None:
    bucket, opts = s3
    url = f"{bucket}/h.zarr"
    posctx.testing.write_planted_store(
        url,
        storage_options=opts,
        n_contexts=10,
        length=4,
        n_layers=2,
        n_dims=3,
        chunks_context=4,
        chunks_layer=1,
    )
    posctx.open_hidden(url, storage_options=opts)  # whole
    s3fs.S3FileSystem(**opts).rm(f"{url}/hidden/c/2/0/1/0")  # a lifecycle rule took it
    with pytest.raises(StoreError) as info:
        posctx.open_hidden(url, storage_options=opts)
    assert str(info.value).startswith(
        f"{url}: 1 chunk of hidden is missing although its block is marked written (block 2; "
        f"e.g. hidden/c/2/0/1/0): the store is damaged (a partial copy?); run `posctx validate "
        f"{url}` for details"
    )
    report = posctx.validate_store(url, storage_options=opts, scan=False)
    completeness = report.check("completeness")
    assert completeness.status == "fail"
    assert completeness.figures["missing_chunk_keys"] == ["hidden/c/2/0/1/0"]
