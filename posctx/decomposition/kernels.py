"""Per-chunk numpy kernels of the position/context decomposition.

This module is the bottom of the three numeric layers (numpy kernels -> dask graph -> xarray)
and imports neither dask nor xarray. Every kernel works on plain arrays laid out as
``(context, position, layer, dim)``.

The decomposition is declared as chunk -> combine -> finalize:

* chunk: :func:`chunk_stats` turns one chunk of hidden states into three float64 sums;
* combine: :func:`combine_sum` adds partial sums of neighbouring chunks;
* finalize: divide by the counts and centre (done lazily in :mod:`posctx.decomposition.graph`).

:func:`decompose_numpy` computes the same quantities directly, in memory; it is the
documented reference the out-of-core path is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from posctx._deprecated import renamed
from posctx.fused import COMPILED_DTYPES, slab_kernel
from posctx.sums import centred_moments, merge_moments
from posctx.types import Float64Array, IndexArray

#: Names of the per-chunk sums returned by :func:`chunk_stats`.
STAT_NAMES = ("pos_sum", "ctx_sum", "sumsq")
#: Names of the per-cell sums returned by :func:`chunk_stats` given cells.
CELL_STAT_NAMES = ("cell_pos_sum", "cell_sumsq")
#: Default number of runs a decomposition splits its contexts into (the bootstrap's units).
DEFAULT_RUNS = 32


def run_length(n_contexts: int, runs: int) -> int:
    """Contexts per run: the smallest power of two that cuts ``n_contexts`` into <= ``runs``.

    A power of two, so that the convergence path (the first 1, 2, 4, ... runs) uses a power
    of two contexts at every step.

    Examples
    --------
    >>> run_length(512, 32), run_length(1000, 32), run_length(10, 32)
    (16, 32, 1)
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    length = 1
    while -(-n_contexts // length) > runs:
        length *= 2
    return length


def plan_cells(topics: npt.ArrayLike, runs: int) -> dict[str, Any]:
    """The bootstrap cells of a decomposition: runs of consecutive contexts, split by topic.

    A *run* is ``run_length(C, runs)`` consecutive contexts (in the decomposition's order);
    a *cell* is the contexts of one topic within one run. Cells are the units the bootstrap
    resamples (within topics) and the convergence path adds (by runs): consecutive contexts,
    often windows of one document, are not independent, so they are kept together.

    Returns
    -------
    dict
        ``cell`` ``(C,)`` the cell of each context; per cell ``run``, ``topic`` (the label)
        and ``count`` (its contexts); ``run_length``, the contexts per run.

    Examples
    --------
    >>> cells = plan_cells(["a", "b", "a", "b", "a", "b"], runs=2)
    >>> cells["run_length"], cells["cell"].tolist(), cells["topic"].tolist()
    (4, [0, 1, 0, 1, 2, 3], ['a', 'b', 'a', 'b'])
    >>> cells["run"].tolist(), cells["count"].tolist()
    ([0, 0, 1, 1], [2, 2, 1, 1])
    """
    names = np.array([str(t) for t in np.asarray(topics).ravel()])
    labels, codes = np.unique(names, return_inverse=True)
    length = run_length(names.size, runs)
    raw = (np.arange(names.size) // length) * labels.size + codes
    present, cell = np.unique(raw, return_inverse=True)
    return {
        "cell": cell.astype(np.intp),
        "run": (present // labels.size).astype(np.intp),
        "topic": labels[present % labels.size],
        "count": np.bincount(cell, minlength=present.size).astype(np.int64),
        "run_length": length,
    }


def _as_float64(h: npt.ArrayLike) -> Float64Array:  # used by the numpy reference
    x = np.asarray(h)
    if x.ndim != 4:
        raise ValueError(f"expected a (context, position, layer, dim) array, got shape {x.shape}")
    # astype(copy=False) keeps float64 input as is and converts float16/float32 once.
    return x.astype(np.float64, copy=False)


def chunk_stats(
    chunk: npt.ArrayLike, moments: bool = False, cells: IndexArray | None = None
) -> dict[str, Float64Array]:
    """Float64 sums of one ``(context, position, layer, dim)`` chunk of hidden states.

    The chunk is read once for every statistic of the decomposition. It is converted to
    float64 one context at a time: a context (``t*l*d`` values, 1.4 MB for MiniLM at T=128)
    stays in cache while all sums are taken from it, which measured 1.8x faster than
    converting the whole chunk first, with the same float64 results.

    Parameters
    ----------
    chunk
        Hidden states of ``c`` contexts, ``t`` positions, ``l`` layers and ``d`` dims, of any
        real floating dtype.
    moments
        Also return the chunk's mean and its second moment about that mean, per layer.
    cells
        Optional ``(c,)`` local cell index ``0..k-1`` of each context (:func:`plan_cells`).

    Returns
    -------
    dict
        ``pos_sum`` ``(t, l, d)``: sum over contexts; ``ctx_sum`` ``(c, l, d)``: sum over
        positions; ``sumsq`` ``(l,)``: sum of squares over contexts, positions and dims.
        With ``moments``: ``mean`` ``(l, d)`` and ``m2`` ``(l, d, d)``, the sum over the
        chunk's ``c*t`` rows of ``(x - mean)(x - mean)^T``. With ``cells``:
        ``cell_pos_sum`` ``(k, t, l, d)`` and ``cell_sumsq`` ``(k, l)``, the same sums over
        each cell's contexts (``pos_sum`` and ``sumsq`` are then their totals). All float64.

    Notes
    -----
    ``m2`` is formed with a float32 matrix product of the chunk-centred rows (float64
    accumulation across chunks): centring first keeps the relative error near float32's
    1e-7 even when the mean dwarfs the spread, and float32 BLAS is twice as fast.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    >>> stats = chunk_stats(x)
    >>> {k: v.shape for k, v in stats.items()}
    {'pos_sum': (3, 2, 2), 'ctx_sum': (2, 2, 2), 'sumsq': (2,)}
    >>> stats["sumsq"].dtype
    dtype('float64')
    >>> float(stats["sumsq"].sum()) == float((x.astype(np.float64) ** 2).sum())
    True
    >>> chunk_stats(x, moments=True)["m2"].shape
    (2, 2, 2)
    """
    x = np.asarray(chunk)
    if x.ndim != 4:
        raise ValueError(f"expected a (context, position, layer, dim) chunk, got shape {x.shape}")
    c, t, n_layers, d = x.shape
    sums = ContextSums(c, t, n_layers, d, cells)
    for i in range(c):
        sums.add(i, x[i])
    out = sums.result()
    if moments:
        out.update(centred_moments(x, out["pos_sum"].sum(axis=0) / max(c * t, 1)))
    return out


class ContextSums:
    """Accumulates the sums of :func:`chunk_stats` one context slab ``(t, l, d)`` at a time.

    Lets a caller that reads slabs itself (straight from a chunk file, see
    :mod:`posctx.store.direct`) take the same sums without ever holding the whole chunk.
    """

    def __init__(
        self,
        n_contexts: int,
        length: int,
        n_layers: int,
        n_dims: int,
        cells: IndexArray | None = None,
    ) -> None:
        # With cells, each context's position sums and squares go to its cell's accumulator
        # (the same one add per context), and the totals are the cells' sums.
        self.cells = np.zeros(n_contexts, np.intp) if cells is None else np.asarray(cells)
        self.keep_cells = cells is not None
        n_cells = int(self.cells.max()) + 1 if self.cells.size else 1
        self.cell_pos_sum = np.zeros((n_cells, length, n_layers, n_dims))
        self.ctx_sum = np.empty((n_contexts, n_layers, n_dims))
        self.cell_sumsq = np.zeros((n_cells, n_layers))
        # The compiled one-pass kernel where numba is installed (posctx.fused).
        self._fused = slab_kernel()
        # One reused buffer: a fresh 1.4 MB array per context would be mmap-allocated and
        # page-faulted every time (measured 1.3x slower). float64 for numpy's passes; float32
        # to widen float16 slabs, which numba does not compile, for the fused kernel.
        buf_dtype = np.float64 if self._fused is None else np.float32
        self._buf = np.empty((length, n_layers, n_dims), buf_dtype)

    def add(self, i: int, slab: npt.NDArray[Any]) -> None:
        """Add context ``i``'s hidden states ``(t, l, d)``, of any real dtype."""
        cell = self.cells[i]
        pos_sum, sumsq = self.cell_pos_sum[cell], self.cell_sumsq[cell]
        if self._fused is not None:
            if slab.dtype not in COMPILED_DTYPES:
                np.copyto(self._buf, slab)
                slab = self._buf
            self._fused(slab, pos_sum, self.ctx_sum[i], sumsq)
            return
        buf = self._buf
        np.copyto(buf, slab)
        np.sum(buf, axis=0, out=self.ctx_sum[i])
        pos_sum += buf
        sumsq += np.einsum("tld,tld->l", buf, buf)

    def result(self) -> dict[str, Float64Array]:
        if not self.keep_cells:
            return {
                "pos_sum": self.cell_pos_sum[0],
                "ctx_sum": self.ctx_sum,
                "sumsq": self.cell_sumsq[0],
            }
        return {
            "pos_sum": self.cell_pos_sum.sum(axis=0),
            "ctx_sum": self.ctx_sum,
            "sumsq": self.cell_sumsq.sum(axis=0),
            "cell_pos_sum": self.cell_pos_sum,
            "cell_sumsq": self.cell_sumsq,
        }


def combine_cells(
    name: str, cells: tuple[int, ...], *stats: dict[str, Float64Array]
) -> Float64Array:
    """Sum one cell's statistic ``name`` over chunks: ``stats[i][name][cells[i]]``.

    A run may straddle chunks (and a chunk's positions may come in several chunks), so a
    cell's sums are added from every chunk result that holds it, with a leading unit axis.

    Examples
    --------
    >>> import numpy as np
    >>> a = chunk_stats(np.ones((2, 3, 1, 4)), cells=np.array([0, 1]))
    >>> b = chunk_stats(np.ones((1, 3, 1, 4)), cells=np.array([0]))
    >>> combine_cells("cell_sumsq", (1, 0), a, b).tolist()
    [[24.0]]
    """
    total: Float64Array = stats[0][name][cells[0]].copy()
    for local, part in zip(cells[1:], stats[1:], strict=True):
        total += part[name][local]
    out: Float64Array = total[np.newaxis]
    return out


def singular_values(m2: npt.ArrayLike) -> Float64Array:
    """Singular values (descending) of a matrix ``X`` from its Gram matrix ``X^T X``, per layer.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(2).normal(size=(50, 4))
    >>> sv = singular_values((x.T @ x)[np.newaxis])[0]
    >>> bool(np.allclose(sv, np.linalg.svd(x, compute_uv=False)))
    True
    """
    eig = np.linalg.eigvalsh(np.asarray(m2, dtype=np.float64))[..., ::-1]
    # Rounding can leave tiny negative eigenvalues of a positive semi-definite matrix.
    return np.sqrt(np.clip(eig, 0.0, None))


def take_stat(stats: dict[str, Float64Array], name: str, n_new_axes: int) -> Float64Array:
    """One sum out of a :func:`chunk_stats` result, with ``n_new_axes`` leading unit axes.

    The leading axes index the chunk a partial sum came from, so that partial sums can be
    stacked into an array and reduced with an ordinary (tree) reduction.

    Examples
    --------
    >>> import numpy as np
    >>> stats = chunk_stats(np.ones((2, 3, 1, 4)))
    >>> take_stat(stats, "pos_sum", 1).shape
    (1, 3, 1, 4)
    """
    value = stats[name]
    return value.reshape((1,) * n_new_axes + value.shape)


def combine_sum(name: str, *stats: dict[str, Float64Array]) -> Float64Array:
    """Sum one statistic over several :func:`chunk_stats` results.

    Used to add the partial sums of chunks that share a context chunk but cover different
    positions; the number of such chunks is small (normally one).

    Examples
    --------
    >>> import numpy as np
    >>> a = chunk_stats(np.ones((2, 3, 1, 4)))
    >>> b = chunk_stats(np.ones((2, 5, 1, 4)))
    >>> combine_sum("ctx_sum", a, b)[0, 0]
    array([8., 8., 8., 8.])
    """
    if not stats:
        raise ValueError("combine_sum needs at least one partial result")
    total = stats[0][name].copy()
    for part in stats[1:]:
        total += part[name]
    return total


def decompose_numpy(h: npt.ArrayLike) -> dict[str, Any]:
    """Reference decomposition of an in-memory ``(context, position, layer, dim)`` array.

    Computes, in float64 and per layer, the two-way split of PAPER.md::

        mu      = mean over (c, t) of h[c, t]
        pos[t]  = mean over c of h[c, t] - mu
        ctx[c]  = mean over t of h[c, t] - mu
        resid   = h - mu - pos - ctx

    and the sums of squares ``ss_total = sum |h - mu|^2``, ``ss_pos = C sum_t |pos_t|^2``,
    ``ss_ctx = T sum_c |ctx_c|^2`` and ``ss_resid = sum |resid|^2``, each directly (the
    identity ``ss_total = ss_pos + ss_ctx + ss_resid`` is not used, so tests can check it).

    Parameters
    ----------
    h
        Hidden states, shape ``(C, T, L, D)``.

    Returns
    -------
    dict
        ``mu`` ``(L, D)``, ``pos`` ``(T, L, D)``, ``ctx`` ``(C, L, D)``, ``resid``
        ``(C, T, L, D)``, ``ss_total``, ``ss_pos``, ``ss_ctx``, ``ss_resid`` ``(L,)`` and the
        second moments ``m2_hidden`` (of ``h - mu``) and ``m2_resid`` ``(L, D, D)``.

    Examples
    --------
    >>> import numpy as np
    >>> h = np.random.default_rng(0).normal(size=(5, 4, 2, 3))
    >>> ref = decompose_numpy(h)
    >>> bool(np.allclose(ref["pos"].sum(axis=0), 0) and np.allclose(ref["ctx"].sum(axis=0), 0))
    True
    >>> bool(np.allclose(ref["ss_total"], ref["ss_pos"] + ref["ss_ctx"] + ref["ss_resid"]))
    True
    """
    x = _as_float64(h)
    n_contexts, length = x.shape[0], x.shape[1]
    mu = x.mean(axis=(0, 1))
    pos = x.mean(axis=0) - mu
    ctx = x.mean(axis=1) - mu
    centred = x - mu
    resid = centred - pos[np.newaxis] - ctx[:, np.newaxis]
    rows = centred.reshape(-1, *centred.shape[2:])
    resid_rows = resid.reshape(-1, *resid.shape[2:])
    return {
        "m2_hidden": np.einsum("nld,nle->lde", rows, rows),
        "m2_resid": np.einsum("nld,nle->lde", resid_rows, resid_rows),
        "mu": mu,
        "pos": pos,
        "ctx": ctx,
        "resid": resid,
        "ss_total": np.einsum("ctld,ctld->l", centred, centred),
        "ss_pos": n_contexts * np.einsum("tld,tld->l", pos, pos),
        "ss_ctx": length * np.einsum("cld,cld->l", ctx, ctx),
        "ss_resid": np.einsum("ctld,ctld->l", resid, resid),
    }


#: Deprecated name of :func:`chunk_stats` ("block" now means a store block only).
block_stats = renamed(
    chunk_stats,
    "posctx.decomposition.kernels.block_stats",
    "posctx.decomposition.kernels.chunk_stats",
)

__all__ = [
    "CELL_STAT_NAMES",
    "DEFAULT_RUNS",
    "STAT_NAMES",
    "ContextSums",
    "chunk_stats",
    "combine_cells",
    "centred_moments",
    "combine_sum",
    "decompose_numpy",
    "merge_moments",
    "plan_cells",
    "run_length",
    "singular_values",
    "take_stat",
]
