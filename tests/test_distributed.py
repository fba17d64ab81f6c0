"""Extraction and decomposition on a dask.distributed cluster equal the single-process results."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import posctx
import posctx.testing
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.extraction import extract, prepare_store
from posctx.model import load_model


def _config(model: str, contexts: int = 24, chunk: int = 4, batch: int = 4) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=model, batch_size=batch),
        store=StoreConfig(contexts=contexts, length=32, chunk_contexts=chunk),
    )


def _assert_same_store(a_path: Path, b_path: Path) -> None:
    from posctx.store.statistics import open_statistics

    a, b = xr.open_zarr(a_path), xr.open_zarr(b_path)
    assert bool(b.block_complete.all())
    names = ("hidden", "token_id", "topic", "source", "offset")
    for name in (*names, "stat_ctx_sum", "stat_ctx_sumsq", "stat_edge"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    # Position sums from the cluster's task partials, merged: every block counted once.
    sums_a, sums_b = open_statistics(str(a_path)), open_statistics(str(b_path))
    np.testing.assert_allclose(sums_a.pos_sum.values, sums_b.pos_sum.values, rtol=1e-13, atol=0)


@pytest.fixture(scope="module")
def cluster_client():  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        with Client(cluster) as client:
            yield client


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-bert", "minilm"])
def test_cluster_extraction_equals_single_process_bit_for_bit(
    model: str, tiny_models: dict[str, Path], tmp_path: Path, cluster_client: object
) -> None:
    name = str(tiny_models["bert"]) if model == "tiny-bert" else "minilm"
    # Same arithmetic on both sides: distributed's nanny starts workers with OMP_NUM_THREADS=1,
    # and on AVX-512 CPUs MKL gives MiniLM's matrix products other last bits with 1 thread
    # than with 2 (up to 7e-6 absolute; measured here, eager and sdpa attention alike).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(_config(name), str(tmp_path / "local.zarr"), progress=False)
    finally:
        torch.set_num_threads(threads)
    result = extract(
        _config(name), str(tmp_path / "cluster.zarr"), progress=False, client=cluster_client
    )
    assert result.blocks_written == 6 and result.tokens_written == 24 * 32
    _assert_same_store(tmp_path / "local.zarr", tmp_path / "cluster.zarr")


@pytest.mark.slow
def test_killed_worker_blocks_are_redone(tmp_path: Path) -> None:
    """SIGKILL one worker process mid-extraction: the job completes, identical to the reference."""
    from distributed import Client, LocalCluster

    config = _config("minilm", contexts=40, chunk=2, batch=1)
    extract(config, str(tmp_path / "reference.zarr"), progress=False)
    out = tmp_path / "cluster.zarr"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        loaded = load_model(config.model)
        prepare_store(config, str(out), loaded, progress=False)
        killed = []

        def kill_when_started() -> None:
            folder = out / "block_complete" / "c"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if folder.is_dir() and len(list(folder.iterdir())) >= 2:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(len(list(folder.iterdir())))
                    return
                time.sleep(0.01)

        import threading

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        result = extract(config, str(out), progress=False, client=client, loaded=loaded)
        killer.join()
    assert killed and killed[0] < 20, f"kill landed after {killed} of 20 blocks"
    assert result.blocks_written + result.blocks_already_done == 20
    _assert_same_store(tmp_path / "reference.zarr", out)


def test_cluster_decomposition_equals_threaded(tmp_path: Path, cluster_client: object) -> None:
    path = tmp_path / "h.zarr"
    posctx.testing.write_large_planted_store(
        str(path), n_contexts=30, length=8, n_layers=2, n_dims=5, chunk_contexts=4
    )
    ds = posctx.open_hidden(str(path))
    threaded = posctx.decompose(ds, positions=slice(1, None), moments=True).compute(
        scheduler="threads"
    )
    posctx.write_decomposition(
        posctx.decompose(ds, positions=slice(1, None), moments=True), tmp_path / "d.zarr"
    )
    on_cluster = posctx.open_decomposition(tmp_path / "d.zarr").compute()
    for name in threaded.data_vars:
        np.testing.assert_allclose(
            on_cluster[name].values, threaded[name].values, rtol=1e-10, atol=1e-12
        )


@pytest.mark.slow
def test_cli_workers_flag(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(*extra: str, out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "posctx",
                "extract",
                "--model",
                str(tiny_models["gpt2"]),
                "--contexts",
                "12",
                "--length",
                "16",
                "--chunk-contexts",
                "4",
                "--quiet",
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
        )

    assert run(out=tmp_path / "local.zarr").returncode == 0
    cluster = run("--workers", "2", out=tmp_path / "cluster.zarr")
    assert cluster.returncode == 0, cluster.stderr[-2000:]
    assert "3 blocks written" in cluster.stdout
    _assert_same_store(tmp_path / "local.zarr", tmp_path / "cluster.zarr")
    both = run("--workers", "2", "--scheduler", "tcp://127.0.0.1:1", out=tmp_path / "x.zarr")
    assert both.returncode == 2 and "not both" in both.stderr
