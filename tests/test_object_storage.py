"""Stores on object storage: extraction, resume, decomposition and refusals against a real S3
API (moto's server on localhost), each equal bit for bit to the same work done locally."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import posctx
import posctx.store
from posctx.cli import cli
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.errors import StoreError

pytest.importorskip("s3fs", reason="object storage needs the s3 extra")
moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")


def _config(model: Path) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=str(model), batch_size=3),
        store=StoreConfig(contexts=10, length=12, chunk_contexts=4),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free localhost port, for this module's tests."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    """A fresh, empty bucket on the moto server: its URL and the fsspec storage options.

    Credentials are fake and the environment says so, so that nothing reaches for a real
    AWS account, a config file or an instance-metadata endpoint.
    """
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    opts: dict[str, Any] = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    bucket = f"posctx-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}", opts


@pytest.fixture(scope="module")
def local_reference(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExtractConfig, Path]:
    """The same extraction into a local store, the reference every S3 result must equal."""
    config = _config(tiny_models["gpt2"])
    path = tmp_path_factory.mktemp("local") / "h.zarr"
    posctx.extract(config, str(path), progress=False)
    return config, path


def _assert_same_hidden(url: str, opts: dict[str, Any], local: Path) -> None:
    remote = posctx.open_hidden(url, storage_options=opts)
    reference = posctx.open_hidden(str(local))
    np.testing.assert_array_equal(remote.hidden.values, reference.hidden.values)
    np.testing.assert_array_equal(remote.token_id.values, reference.token_id.values)
    for name in ("topic", "source", "offset", "layer_name"):
        np.testing.assert_array_equal(remote[name].values, reference[name].values)


def test_extract_to_s3_equals_local(
    s3: tuple[str, dict[str, Any]], local_reference: tuple[ExtractConfig, Path]
) -> None:
    bucket, opts = s3
    config, local = local_reference
    url = f"{bucket}/h.zarr"
    result = posctx.extract(config, url, storage_options=opts, progress=False)
    assert (result.blocks_written, result.blocks_already_done) == (3, 0)

    plain = xr.open_zarr(url, storage_options=opts)  # plain xarray, every label
    assert plain.hidden.shape == (10, 12, 3, 32)
    assert list(plain.layer_name.values) == ["embeddings", "block_1", "block_2"]
    assert set(plain.topic.values) == {"reference", "docstrings", "code"}
    assert plain.attrs["posctx"]["config"] == config.to_dict()
    _assert_same_hidden(url, opts, local)


def test_resume_on_s3(
    s3: tuple[str, dict[str, Any]],
    local_reference: tuple[ExtractConfig, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket, opts = s3
    config, local = local_reference
    url = f"{bucket}/h.zarr"
    real_write = posctx.store.BlockWriter.write
    calls = []

    def killed_on_second_block(self: Any, block: Any, data: np.ndarray) -> None:
        calls.append(block.index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(self, block, data)

    monkeypatch.setattr(posctx.store.BlockWriter, "write", killed_on_second_block)
    with pytest.raises(KeyboardInterrupt):
        posctx.extract(config, url, storage_options=opts, progress=False)
    monkeypatch.setattr(posctx.store.BlockWriter, "write", real_write)
    info = posctx.store.store_info(url, opts)
    assert (info["blocks_complete"], info["complete"]) == (1, False)

    result = posctx.extract(config, url, storage_options=opts, progress=False)
    assert result.resumed and (result.blocks_written, result.blocks_already_done) == (2, 1)
    info = posctx.store.store_info(url, opts)
    assert info["complete"] and info["blocks_complete"] == info["blocks_total"] == 3
    assert info["size_on_disk"] >= 10 * 12 * 3 * 32 * 4  # every hidden state is stored
    _assert_same_hidden(url, opts, local)


def test_decompose_on_s3_equals_local(
    s3: tuple[str, dict[str, Any]], local_reference: tuple[ExtractConfig, Path], tmp_path: Path
) -> None:
    bucket, opts = s3
    config, local = local_reference
    url, dec_url = f"{bucket}/h.zarr", f"{bucket}/d.zarr"
    posctx.extract(config, url, storage_options=opts, progress=False)
    posctx.write_decomposition(
        posctx.decompose(posctx.open_hidden(url, storage_options=opts)),
        dec_url,
        storage_options=opts,
    )
    posctx.write_decomposition(posctx.decompose(posctx.open_hidden(str(local))), tmp_path / "d.zarr")
    remote = posctx.open_decomposition(dec_url, storage_options=opts).compute()
    reference = posctx.open_decomposition(tmp_path / "d.zarr").compute()
    xr.testing.assert_equal(remote, reference)  # exact; attrs differ (source, time)
    assert json.loads(remote.attrs["posctx_decomposition"])["source_store"] == url

    # The command line, with the options given as KEY=VALUE (JSON values).
    cli_url = f"{bucket}/d-cli.zarr"
    options = [
        "--storage-option", "key=testing",
        "--storage-option", "secret=testing",
        "--storage-option", f"client_kwargs={json.dumps(opts['client_kwargs'])}",
    ]  # fmt: skip
    run = CliRunner().invoke(cli, ["decompose", url, "--out", cli_url, "--positions", "all", *options])
    assert run.exit_code == 0, run.output
    assert "embeddings" in run.output
    from_cli = posctx.open_decomposition(cli_url, storage_options=opts).compute()
    xr.testing.assert_equal(from_cli, reference)


def test_foreign_prefix_is_refused_and_kept(
    s3: tuple[str, dict[str, Any]], local_reference: tuple[ExtractConfig, Path]
) -> None:
    import s3fs

    bucket, opts = s3
    config, _ = local_reference
    fs = s3fs.S3FileSystem(**opts)
    foreign = f"{bucket}/foreign"
    fs.pipe(f"{foreign}/keep.txt", b"x")
    with pytest.raises(StoreError, match="is not a posctx hidden-state store"):
        posctx.extract(config, foreign, storage_options=opts, progress=False)
    fs.invalidate_cache()
    assert fs.ls(foreign) == [f"{foreign.removeprefix('s3://')}/keep.txt"]
    assert fs.cat(f"{foreign}/keep.txt") == b"x"
