"""Bootstrap and convergence of one layer's measurements from per-cell sums (no hidden states).

A *cell* is the contexts of one topic within one run of consecutive contexts
(:func:`posctx.decomposition.kernels.plan_cells`). The decomposition keeps, per cell, the
position sums ``S_g`` ``(T, d)``, the sum of squares ``Q_g`` and the count ``n_g``; with the
per-context ctx vectors this gives, for any weights ``w_g`` on the cells (a resample, or a
subset of runs), the decomposition of the weighted data exactly::

    n* = sum w_g n_g                 mu*  = sum_g w_g S_g summed over t / (n* T)
    pos* = sum_g w_g S_g / n* - mu*  ctx*_c = ctx_c + mu - mu*
    ss_total* = sum w_g Q_g - n* T |mu*|^2,   ss_pos* = n* sum_t |pos*_t|^2,
    ss_ctx*   = T sum_g w_g (A_g + 2 (mu - mu*) . B_g + n_g |mu - mu*|^2)

with ``A_g = sum_{c in g} |ctx_c|^2`` and ``B_g = sum_{c in g} ctx_c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from posctx.geometry.kernels.layer import layer_geometry
from posctx.geometry.kernels.params import GeometryParams
from posctx.types import Float64Array, IndexArray, IntArray

#: Measurements read with an absolute tolerance of 0.01 when deciding whether they settled
#: (cosines, similarities and clustering scores: bounded, and often near zero).
ABSOLUTE_TOLERANCE = (
    "ctx_within",
    "ctx_between",
    "ctx_within_pc",
    "ctx_between_pc",
    "ctx_ari",
    "ctx_nmi",
    "ctx_silhouette",
    "orth_max_cos",
    "orth_mean_cos",
    "orth_max_cos_random",
    "orth_mean_cos_random",
    "orth_top_principal_cos",
    "orth_top_principal_cos_random",
    "spiral_step_cos",
)


@dataclass(frozen=True)
class LayerCells:
    """One layer's per-cell sums and its sampled ctx vectors (see the module docstring).

    ``sample_cell`` is the cell of each row of ``ctx`` (the contexts the pairwise measures
    use), ``hidden_norm`` the spectral norm of all hidden states (NaN if unknown).
    ``pos_sum`` is None when the decomposition kept no cells: pos is then held fixed and
    only the measures of ctx alone are resampled.
    """

    pos_sum: Float64Array | None
    sumsq: Float64Array | None
    count: IntArray
    ctx_sqnorm: Float64Array
    ctx_sum: Float64Array
    mu: Float64Array
    pos: Float64Array
    ctx: Float64Array
    sample_cell: IndexArray
    topics: npt.NDArray[Any]
    length: int
    hidden_norm: float


def cell_chunk(values: npt.ArrayLike, cells: npt.ArrayLike, n_cells: int) -> Float64Array:
    """``(1, n_cells, k)``: the rows of ``values`` ``(n, k)`` summed by their cell ``cells``.

    Examples
    --------
    >>> cell_chunk([[1.0], [2.0], [4.0]], [0, 2, 0], 3).tolist()
    [[[5.0], [0.0], [2.0]]]
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros((1, n_cells, v.shape[1]))
    np.add.at(out[0], np.asarray(cells, dtype=np.intp), v)
    return out


def stratified_weights(strata: npt.ArrayLike, n_resamples: int, seed: int) -> IntArray:
    """``(n_resamples, cells)`` multiplicities: each stratum's cells drawn with replacement.

    Examples
    --------
    >>> w = stratified_weights(["a", "a", "a", "b"], 5, seed=0)
    >>> w.shape, w[:, :3].sum(axis=1).tolist(), w[:, 3].tolist()
    ((5, 4), [3, 3, 3, 3, 3], [1, 1, 1, 1, 1])
    """
    labels = np.asarray([str(s) for s in np.asarray(strata).ravel()])
    rng = np.random.default_rng(seed)
    out = np.zeros((n_resamples, labels.size), np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        draws = rng.integers(0, members.size, size=(n_resamples, members.size))
        for r in range(n_resamples):
            out[r, members] = np.bincount(draws[r], minlength=members.size)
    return out


def nested_runs(
    cell_run: npt.ArrayLike, seed: int, counts: npt.ArrayLike | None = None
) -> tuple[IntArray, IntArray]:
    """Nested subsets of runs, 1, 2, 4, ... then all, in a seeded random order.

    Given ``counts`` (contexts per cell), a short last run comes last, so that every subset
    but the whole holds a power of two contexts when runs do.

    Returns ``(n_runs, weights)``: how many runs each subset has, and ``(subsets, cells)``
    0/1 weights of the cells in it.

    Examples
    --------
    >>> n, w = nested_runs([0, 0, 1, 1, 2], seed=0)
    >>> n.tolist(), w.sum(axis=1).tolist()
    ([1, 2, 3], [1, 3, 5])
    >>> _, w = nested_runs([0, 0, 1, 1, 2], seed=0, counts=[2, 2, 2, 2, 1])
    >>> (w @ [2, 2, 2, 2, 1]).tolist()
    [4, 8, 9]
    """
    runs = np.asarray(cell_run)
    labels = np.unique(runs)
    order = np.random.default_rng(seed).permutation(labels)
    if counts is not None:
        size = np.bincount(np.searchsorted(labels, runs), weights=np.asarray(counts, float))
        full = size[np.searchsorted(labels, order)] == size.max()
        order = np.concatenate([order[full], order[~full]])
    sizes = [k for k in (2**i for i in range(64)) if k < order.size] + [order.size]
    weights = np.stack([np.isin(runs, order[:k]).astype(np.int64) for k in sizes])
    return np.asarray(sizes, np.int64), weights


def weighted_layer(
    weights: npt.ArrayLike,
    cells: LayerCells,
    params: GeometryParams,
    *,
    centres: Float64Array | None = None,
    geometry: bool = True,
) -> dict[str, float]:
    """The scalar measurements of the data the cell ``weights`` describe (one layer).

    Runs :func:`~posctx.geometry.kernels.layer.layer_geometry` on the reweighted pos and
    the sampled ctx rows repeated by their cells' weights (each copy tagged with its
    context, so that no pair is a context with itself), with the same seeded random
    baselines for every call, plus the variance shares and the relative norm; with
    ``geometry=False`` only the latter (cheap: no decomposition of matrices).
    """
    w = np.asarray(weights, dtype=np.float64)
    n = float(w @ cells.count)
    delta = np.zeros_like(cells.mu)
    pos = cells.pos
    out: dict[str, float] = {}
    if cells.pos_sum is not None and cells.sumsq is not None:
        total = np.tensordot(w, cells.pos_sum, axes=1)
        mu = total.sum(axis=0) / (n * cells.length)
        pos = total / n - mu
        delta = cells.mu - mu
        ss_total = float(w @ cells.sumsq) - n * cells.length * float(mu @ mu)
        ss_pos = n * float(np.sum(pos**2))
        ss_ctx = cells.length * float(
            w @ cells.ctx_sqnorm + 2 * (w @ cells.ctx_sum) @ delta + n * float(delta @ delta)
        )
        out["share_pos"] = ss_pos / ss_total
        out["share_ctx"] = ss_ctx / ss_total
        out["share_resid"] = 1.0 - out["share_pos"] - out["share_ctx"]
    if not geometry:
        out["relative_norm"] = (
            float(np.linalg.norm(pos, 2)) / cells.hidden_norm * np.sqrt(np.sum(cells.count))
        )
        return out
    rows = np.repeat(np.arange(cells.ctx.shape[0]), w[cells.sample_cell].astype(np.int64))
    one = layer_geometry(
        pos,
        cells.ctx[rows] + delta,
        cells.topics[rows],
        params,
        np.random.default_rng(params.seed),
        ids=rows,
        centres=centres,
    )
    out.update({k: float(v) for k, v in one.items() if np.ndim(v) == 0})
    # The denominator |H|_2 is held at its all-context value per row (see uncertainty.py).
    out["relative_norm"] = out["pos_norm"] / cells.hidden_norm * np.sqrt(np.sum(cells.count))
    return out


def percentile_interval(values: npt.ArrayLike, level: float) -> tuple[float, float]:
    """The percentile bootstrap interval of ``level`` (NaN if half the values are NaN).

    Examples
    --------
    >>> [round(v, 6) for v in percentile_interval(range(101), 0.9)]
    [5.0, 95.0]
    """
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).sum() * 2 > v.size or v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.nanquantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def settled_at(
    path: npt.ArrayLike, n_contexts: npt.ArrayLike, absolute: bool, tolerance: float = 0.05
) -> float:
    """Fewest contexts from which every later estimate stays within tolerance of the last.

    The tolerance is ``tolerance`` times ``|last|`` (``0.01`` when ``absolute``); NaN where
    the last estimate is NaN. The last point itself always qualifies: a result equal to all
    the contexts means the estimate had not settled before.

    Examples
    --------
    >>> settled_at([1.3, 0.9, 1.02, 1.0], [64, 128, 256, 512], absolute=False)
    256.0
    """
    p = np.asarray(path, dtype=np.float64)
    n = np.asarray(n_contexts, dtype=np.float64)
    last = p[-1]
    if not np.isfinite(last):
        return float("nan")
    allowed = 0.01 if absolute else tolerance * abs(last)
    within = np.abs(p - last) <= allowed + 1e-12
    outside = np.flatnonzero(~within)
    return float(n[0] if outside.size == 0 else n[outside[-1] + 1])


__all__ = [
    "ABSOLUTE_TOLERANCE",
    "LayerCells",
    "cell_chunk",
    "nested_runs",
    "percentile_interval",
    "settled_at",
    "stratified_weights",
    "weighted_layer",
]
