"""Out-of-core decomposition: spectra, incremental updates, subsets, bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import posctx
from posctx.cli import cli
from posctx.decomposition import combine, finalize, norms, statistics, update_decomposition
from posctx.decomposition.kernels import decompose_numpy
from posctx.testing import (
    planted_hidden,
    raise_if_dask_computes,
    track_chunk_reads,
    write_large_planted_store,
    write_planted_store,
)


def _numpy_spectra(h: np.ndarray) -> dict[str, np.ndarray]:
    ref = decompose_numpy(h)
    c, t, n_layers, d = h.shape
    rows = lambda x: np.moveaxis(x.reshape(c * t, n_layers, d), 1, 0)  # noqa: E731
    return {
        "sv_hidden": np.linalg.svd(rows(h.astype(float) - ref["mu"]), compute_uv=False),
        "sv_resid": np.linalg.svd(rows(ref["resid"]), compute_uv=False),
        "norm_hidden": np.linalg.svd(rows(h.astype(float)), compute_uv=False)[:, 0],
        "m2_resid": ref["m2_resid"],
    }


@pytest.mark.parametrize("scheduler", ["threads", "sync", "distributed"])
def test_spectra_match_numpy_on_every_scheduler(scheduler: str) -> None:
    ds, _ = planted_hidden(18, 7, 3, 5, chunks_context=4, chunks_layer=2, noise=0.5)
    dec = posctx.decompose(ds, moments=True)
    if scheduler == "distributed":
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
            ) as cluster,
            Client(cluster),
        ):
            got = dec.compute()
    else:
        got = dec.compute(scheduler=scheduler)
    ref = _numpy_spectra(ds.hidden.values)
    for name, expected in ref.items():
        np.testing.assert_allclose(
            got[name].values, expected, rtol=2e-5, atol=1e-5 * np.abs(expected).max()
        )
    # The residual's energy is the sum of its squared singular values.
    np.testing.assert_allclose((got.sv_resid**2).sum("component"), got.ss_resid, rtol=1e-5)


def test_moments_survive_a_large_mean() -> None:
    """Chunk-centred float32 products: no cancellation when the mean dwarfs the spread."""
    ds, _ = planted_hidden(16, 6, 2, 4, chunks_context=3, noise=0.2, dtype="float64")
    shifted = ds.assign(hidden=ds.hidden + 1e4)
    got = posctx.decompose(shifted, moments=True).compute()
    ref = _numpy_spectra(shifted.hidden.values)
    np.testing.assert_allclose(got.sv_resid.values, ref["sv_resid"], rtol=1e-3)


def test_incremental_update_equals_recomputation_and_reads_only_new(tmp_path: Path) -> None:
    ds, _ = planted_hidden(30, 6, 2, 4, chunks_context=5, dtype="float64")
    first, updated = tmp_path / "first.zarr", tmp_path / "updated.zarr"
    posctx.write_decomposition(
        posctx.decompose(ds, positions=slice(1, None), contexts=slice(0, 19), moments=True), first
    )
    tracked, reads = track_chunk_reads(ds.hidden.data)
    n_new = update_decomposition(ds.assign(hidden=(ds.hidden.dims, tracked)), first, updated)
    assert n_new == 10
    assert sorted(reads.counts) == [(4, 0, 0, 0), (5, 0, 0, 0)]  # contexts 20..29 only
    assert set(reads.counts.values()) == {1}
    got = posctx.open_decomposition(updated).compute()
    scratch = posctx.decompose(ds, positions=slice(1, None), moments=True).compute()
    for name in scratch.data_vars:
        np.testing.assert_allclose(got[name].values, scratch[name].values, rtol=1e-9, atol=1e-9)
    assert got.topic.values.tolist() == scratch.topic.values.tolist()
    with pytest.raises(posctx.PosctxError, match="nothing to add"):
        update_decomposition(ds, updated, tmp_path / "again.zarr")


def test_combine_refuses_overlap_and_mismatch() -> None:
    ds, _ = planted_hidden(10, 5, 2, 3)
    a = statistics(ds, contexts=slice(0, 5))
    with pytest.raises(posctx.PosctxError, match="in both sets"):
        combine(a, statistics(ds, contexts=slice(5, 9)))
    with pytest.raises(posctx.PosctxError, match="different positions"):
        combine(a, statistics(ds, contexts=slice(6, 9), positions=slice(1, None)))


def test_topic_subset_equals_numpy_reference() -> None:
    ds, _ = planted_hidden(24, 6, 2, 4, chunks_context=5, n_topics=3)
    topic1 = ds.context.values[ds.topic.values == "topic1"]
    got = posctx.decompose(ds, contexts=topic1, positions=slice(2, None)).compute()
    ref = decompose_numpy(ds.hidden.sel(context=topic1, position=slice(2, None)).values)
    for name in ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid"):
        np.testing.assert_allclose(got[name].values, ref[name], rtol=1e-10, atol=1e-10)
    assert set(got.topic.values) == {"topic1"}


def test_lazy_apis_compute_nothing(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    write_planted_store(str(path), n_contexts=12, length=5, n_layers=2, n_dims=3, chunks_context=4)
    ds = posctx.open_hidden(str(path))
    with raise_if_dask_computes():
        s1 = statistics(ds, contexts=slice(0, 5), moments=True)
        s2 = statistics(ds, contexts=slice(6, 11), moments=True)
        dec = finalize(combine(s1, s2))
        n = norms(ds, dec)
        r = posctx.residual(ds, dec)
    assert n.resid_norm.dims == ("context", "position", "layer") and r.ndim == 4
    computed = dec.compute()
    np.testing.assert_allclose(
        (n.resid_norm**2).sum(("context", "position")).values, computed.ss_resid.values, rtol=1e-6
    )
    np.testing.assert_allclose(
        (n.hidden_norm**2).sum(("context", "position")).values, computed.ss_total.values, rtol=1e-6
    )


def test_cli_moments_and_incremental(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    write_planted_store(str(path), n_contexts=12, length=5, n_layers=2, n_dims=3, chunks_context=4)
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "decompose",
            str(path),
            "--out",
            str(tmp_path / "a.zarr"),
            "--moments",
            "--contexts",
            "0:7",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        [
            "decompose",
            str(path),
            "--out",
            str(tmp_path / "b.zarr"),
            "--from",
            str(tmp_path / "a.zarr"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 new contexts" in res.output
    b = posctx.open_decomposition(tmp_path / "b.zarr")
    assert b.sizes["context"] == 12 and "sv_resid" in b


@pytest.mark.slow
def test_memory_limited_run_on_a_store_four_times_the_limit(tmp_path: Path) -> None:
    """RLIMIT_DATA caps the process's heap at 500 MiB; the store holds 2.1 GB of float32."""
    path = tmp_path / "big.zarr"
    truth = write_large_planted_store(
        str(path), n_contexts=2176, length=128, n_layers=5, n_dims=384, chunk_contexts=16
    )
    script = textwrap.dedent(
        f"""
        import resource
        limit = 500 * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        import posctx
        ds = posctx.open_hidden({str(path)!r})
        assert ds.hidden.nbytes > 4 * limit
        posctx.write_decomposition(posctx.decompose(ds), {str(tmp_path / "dec.zarr")!r})
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    dec = posctx.open_decomposition(str(tmp_path / "dec.zarr"))
    np.testing.assert_allclose(dec.mu.values, truth["mu"], atol=1e-4)
    np.testing.assert_allclose(dec.pos.values, truth["pos"], atol=1e-4)
    np.testing.assert_allclose(dec.ctx.values, truth["ctx"], atol=1e-4)
