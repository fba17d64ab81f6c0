"""The numba one-pass kernel against numpy's passes, and how the kernel is chosen."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import posctx
from posctx import fused
from posctx.decomposition.kernels import ContextSums, chunk_stats
from posctx.testing import planted_hidden

numba = pytest.importorskip("numba", reason="the fused kernel needs numba (posctx[fast])")


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fused.KERNEL_ENV, raising=False)


def _stats(x: np.ndarray, kernel: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    monkeypatch.setenv(fused.KERNEL_ENV, kernel)
    assert fused.kernel_name() == kernel
    return chunk_stats(x)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_numba_sums_equal_numpys(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    # A mean far from zero and uneven sizes: rounding differences would show in sumsq.
    x = (rng.normal(size=(5, 13, 3, 37)) * 2 + 40).astype(dtype)
    got = _stats(x, "numba", monkeypatch)
    ref = _stats(x, "numpy", monkeypatch)
    exact = x.astype(np.float64)
    np.testing.assert_array_equal(ref["pos_sum"], exact.sum(axis=0))  # numpy's own order
    for name in ("pos_sum", "ctx_sum", "sumsq"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-13, atol=0)
    np.testing.assert_allclose(got["sumsq"], (exact**2).sum(axis=(0, 1, 3)), rtol=1e-13)


def test_a_nan_reaches_every_sum_it_enters(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastmath is limited to reassociation: a NaN (an unwritten block) is never dropped."""
    x = np.ones((3, 4, 2, 5), np.float32)
    x[1, 2, 1, 3] = np.nan
    got = _stats(x, "numba", monkeypatch)
    assert np.isnan(got["pos_sum"][2, 1, 3]) and np.isnan(got["ctx_sum"][1, 1, 3])
    assert np.isnan(got["sumsq"][1]) and not np.isnan(got["sumsq"][0])
    assert np.isnan(got["pos_sum"]).sum() == 1 and np.isnan(got["ctx_sum"]).sum() == 1


def test_strided_slabs_and_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fused.KERNEL_ENV, "numba")
    x = np.random.default_rng(2).normal(size=(4, 6, 2, 8)).astype(np.float32)
    sums = ContextSums(2, 6, 2, 4)
    for i in range(2):
        sums.add(i, x[2 * i, :, :, ::2])  # non-contiguous slabs
    ref = x[::2, :, :, ::2].astype(np.float64)
    np.testing.assert_allclose(sums.result()["pos_sum"], ref.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(sums.result()["ctx_sum"], ref.sum(axis=1), rtol=1e-13)


def test_uncompiled_kernel_is_the_same_arithmetic() -> None:
    """The Python source numba compiles, run as Python, gives numpy's sums."""
    x = np.random.default_rng(3).normal(size=(4, 3, 5)).astype(np.float32)
    pos, ctx, ss = np.zeros((4, 3, 5)), np.full((3, 5), 7.0), np.zeros(3)
    fused._add_slab(x, pos, ctx, ss)
    np.testing.assert_allclose(pos, x.astype(np.float64), rtol=0)
    np.testing.assert_allclose(ctx, x.astype(np.float64).sum(axis=0), rtol=1e-15)
    np.testing.assert_allclose(ss, (x.astype(np.float64) ** 2).sum(axis=(0, 2)), rtol=1e-14)


def test_decomposition_records_its_kernel_and_both_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    ds, truth = planted_hidden(24, 9, 2, 6, chunks_context=5, noise=0.1)
    out = {}
    for kernel in ("numba", "numpy"):
        monkeypatch.setenv(fused.KERNEL_ENV, kernel)
        dec = posctx.decompose(ds)
        assert json.loads(dec.attrs["posctx_decomposition"])["kernel"] == kernel
        out[kernel] = dec.compute()
    for name in ("mu", "pos", "ctx", "ss_total", "ss_resid"):
        np.testing.assert_allclose(out["numba"][name], out["numpy"][name], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["numba"].pos.values, truth["pos"], atol=0.1)


def test_combined_record_names_both_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    ds, _ = planted_hidden(12, 5, 2, 3, chunks_context=4)
    monkeypatch.setenv(fused.KERNEL_ENV, "numba")
    a = posctx.decomposition.statistics(ds, contexts=slice(0, 5))
    monkeypatch.setenv(fused.KERNEL_ENV, "numpy")
    b = posctx.decomposition.statistics(ds, contexts=slice(6, 11))
    both = posctx.decomposition.combine(a, b)
    assert json.loads(both.attrs["posctx_decomposition"])["kernel"] == "numba+numpy"


def test_choice_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fused.KERNEL_ENV, "cuda")
    with pytest.raises(
        posctx.PosctxError, match="POSCTX_KERNEL='cuda' is not a kernel: set it to auto"
    ):
        fused.kernel_name()
    ds, _ = planted_hidden(6, 4, 2, 3)
    with pytest.raises(posctx.PosctxError, match="is not a kernel"):
        posctx.decompose(ds)  # refused while building the graph, before any data is read


def test_without_numba_auto_falls_back_and_numba_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now raises ImportError
    fused._forget()
    try:
        assert fused.kernel_name() == "numpy"
        monkeypatch.setenv(fused.KERNEL_ENV, "numba")
        with pytest.raises(posctx.PosctxError, match=r"numba is not installed.*posctx\[fast\]"):
            fused.kernel_name()
    finally:
        fused._forget()


def test_an_unwritable_numba_cache_falls_back_to_compiling_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_njit = numba.njit
    asked = []

    def njit(*args: object, **kwargs: object) -> object:
        asked.append(kwargs["cache"])
        if kwargs["cache"]:
            raise RuntimeError("cannot cache function '_add_slab': no locator available")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)
    fused._forget()
    try:
        assert fused.kernel_name() == "numba" and asked == []  # choosing compiles nothing
        assert fused.slab_kernel() is not None and asked == [True, False]
        x = np.random.default_rng(4).normal(size=(3, 4, 2, 5)).astype(np.float32)
        np.testing.assert_allclose(chunk_stats(x)["sumsq"], (x.astype(float) ** 2).sum((0, 1, 3)))
    finally:
        fused._forget()


def test_the_old_module_forwards_with_a_warning() -> None:
    import posctx.decomposition.fused as old

    with pytest.warns(
        FutureWarning, match=r"posctx\.decomposition\.fused\.slab_kernel .*posctx\.fused"
    ):
        assert old.slab_kernel is fused.slab_kernel
