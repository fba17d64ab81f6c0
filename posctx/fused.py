"""The one-pass slab kernel compiled with numba: every sum of a context in one read.

:class:`~posctx.decomposition.kernels.ContextSums` takes three float64 sums of each context
slab ``(t, l, d)``. In numpy that is four passes over the slab (convert to float64, sum over
positions, add to the position sums, square and sum); compiled, it is one pass that reads
each value once, which measured 2-2.5x faster per slab (``bench/decompose.py`` gives the
end-to-end ratio). The results are the same float64 sums, added in another order: they agree
with numpy's to about 1e-15 relative.

numba is optional (``pip install 'posctx[fast]'``). ``POSCTX_KERNEL`` chooses: ``auto`` (the
default: numba when it is installed), ``numba`` (an error if it is not) or ``numpy``.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from posctx.errors import PosctxError

#: Environment variable that chooses the kernel: ``auto``, ``numba`` or ``numpy``.
KERNEL_ENV = "POSCTX_KERNEL"

SlabKernel = Callable[[Any, Any, Any, Any], None]

# numba compiles float32 and float64 slabs; float16 slabs are widened to float32 first.
COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def kernel_name() -> str:
    """The kernel this process uses: ``"numba"`` or ``"numpy"``.

    Cheap enough for graph building: it imports numba where chosen but compiles nothing
    (that happens on the first chunk, in :func:`slab_kernel`).

    Raises
    ------
    PosctxError
        ``POSCTX_KERNEL`` holds an unknown value, or asks for numba where it is not installed.

    Examples
    --------
    >>> kernel_name() in ("numba", "numpy")
    True
    """
    return "numpy" if _numba(_choice()) is None else "numba"


def slab_kernel() -> SlabKernel | None:
    """The compiled slab kernel, or ``None`` where numpy is to be used (see the module doc)."""
    numba = _numba(_choice())
    if numba is None:
        return None
    with _LOCK:  # dask threads start chunks together: compile (or load from cache) once
        return _kernel(numba)


_LOCK = threading.Lock()


def _choice() -> str:
    return os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"


@functools.cache
def _numba(choice: str) -> Any:
    """The numba module if ``choice`` means to use it and it imports, else ``None``."""
    if choice not in ("auto", "numba", "numpy"):
        raise PosctxError(
            f"{KERNEL_ENV}={choice!r} is not a kernel: set it to auto, numba or numpy"
        )
    if choice == "numpy":
        return None
    try:
        import numba
    except ImportError as exc:
        if choice == "auto":
            return None
        raise PosctxError(
            f"{KERNEL_ENV}=numba but numba is not installed ({exc}): "
            "pip install 'posctx[fast]', or unset it to use numpy"
        ) from exc
    return numba


@functools.cache
def _kernel(numba: Any) -> SlabKernel:
    try:
        return _compiled(numba, cache=True)
    except RuntimeError:  # numba found no writable cache folder (read-only install and home)
        return _compiled(numba, cache=False)


def _forget() -> None:
    """Drop the cached choice and kernel (tests change the environment and numba itself)."""
    _numba.cache_clear()
    _kernel.cache_clear()


def _compiled(numba: Any, cache: bool) -> SlabKernel:
    """Compile the kernel now, for float32 slabs, so that a failure shows here."""
    # reassoc lets the sum of squares vectorise; no nnan/ninf, so a NaN (an unwritten block)
    # still turns every sum it enters into NaN. cache=True keeps the machine code on disk.
    kernel: SlabKernel = numba.njit(nogil=True, cache=cache, fastmath={"reassoc", "contract"})(
        _add_slab
    )
    kernel(np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1)), np.zeros((1, 1)), np.zeros(1))
    return kernel


def _add_slab(slab: Any, pos_sum: Any, ctx_row: Any, sumsq: Any) -> None:  # pragma: no cover
    """Add one context: ``ctx_row = sum_t slab``, ``pos_sum += slab``, ``sumsq += sum slab**2``.

    Plain Python loops for numba to compile (runs uncompiled only in tests, on tiny slabs).
    """
    n_positions, n_layers, n_dims = slab.shape
    ctx_row[:] = 0.0
    for t in range(n_positions):
        for k in range(n_layers):
            acc = 0.0
            for j in range(n_dims):
                v = np.float64(slab[t, k, j])
                ctx_row[k, j] += v
                pos_sum[t, k, j] += v
                acc += v * v
            sumsq[k] += acc


__all__ = ["COMPILED_DTYPES", "KERNEL_ENV", "kernel_name", "slab_kernel"]
