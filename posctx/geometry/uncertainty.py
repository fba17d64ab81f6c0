"""How sure each measurement is: bootstrap intervals and convergence with the number of contexts.

Both come from the inputs :func:`~posctx.geometry.collect_inputs` already holds, with no
second read of the hidden states: the per-cell sums a decomposition keeps with ``runs``
(cells are runs of consecutive contexts, split by topic) and the ctx vectors.

* **Intervals**: percentile bootstrap. Each resample draws, within every topic, as many
  cells as the topic has, with replacement; the decomposition of the resampled data follows
  exactly from the cell sums (:mod:`posctx.geometry.kernels.bootstrap`), and every
  measurement is taken again. The same resamples serve every layer, so the replicates of two
  layers are paired (their difference has an interval too).
* **Convergence**: the measurements of the contexts of the first 1, 2, 4, ... runs (a seeded
  random order) up to all, and the fewest contexts from which every later estimate stays
  within 5% of the final one (0.01 for similarities and clustering scores).

What is not resampled, and why, is recorded in the attrs (``not_resampled``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import xarray as xr

from posctx.geometry import kernels
from posctx.geometry.kernels import GeometryParams
from posctx.geometry.kernels.bootstrap import (
    ABSOLUTE_TOLERANCE,
    LayerCells,
    nested_runs,
    percentile_interval,
    settled_at,
    stratified_weights,
    weighted_layer,
)
from posctx.geometry.kernels.clusters import kmeans_centres
from posctx.geometry.serialise import inputs_record
from posctx.types import (
    BOUND,
    CELL_COUNT,
    CELL_RUN,
    CELL_TOPIC,
    CONTEXT,
    CONTEXT_CELL,
    DECOMPOSITION_ATTR,
    LAYER,
    LAYER_NAME,
    METRIC,
    RESAMPLE,
    SAMPLE,
    TOPIC,
    UNCERTAINTY_ATTR,
)

#: The measurements that get intervals: every per-layer scalar but the hidden norm.
INTERVAL_METRICS = (
    *kernels.SCALAR_NAMES,
    "share_pos",
    "share_ctx",
    "share_resid",
    "relative_norm",
)
#: Measurements of ctx alone: resampled even when the decomposition kept no cells.
CTX_ONLY = (
    "ctx_within",
    "ctx_between",
    "ctx_within_pc",
    "ctx_between_pc",
    "ctx_ari",
    "ctx_nmi",
    "ctx_silhouette",
)
#: Why some measurements get no interval, or a partial one.
NOT_RESAMPLED = {
    "hidden_norm": "needs the d x d second moment of the hidden states per cell, which is "
    "not kept (cells x layers x d^2 values)",
}
PARTIAL = {
    "relative_norm": "the numerator sqrt(C)|pos|_2 is resampled; the denominator |H|_2 is "
    "held at its all-context value per row (see hidden_norm)",
}
NO_CELLS = (
    "needs the bootstrap cells' position sums, which this decomposition does not keep: "
    "decompose with --runs N (posctx.decompose(..., runs=N))"
)


@dataclasses.dataclass(frozen=True)
class IntervalParams:
    """Settings of the intervals and the convergence path; stored with the results.

    Parameters
    ----------
    level
        Coverage of the intervals (0.95: from the 2.5th and 97.5th percentiles).
    method
        ``"basic"`` (default): ``2 x estimate - percentiles`` reversed, which corrects a
        bias the resamples repeat (a noisy pos adds energy: its stable rank and shares come
        out high, and a resample's higher still); ``"percentile"``: the percentiles
        themselves (may exclude the estimate when such a bias is large).
    resamples
        Bootstrap replicates; the percentile ends need a few hundred to be stable.
    convergence
        Also measure on nested subsets of runs (1, 2, 4, ... runs).
    tolerance
        Relative tolerance of "settled" (0.01 absolute for similarities and scores).
    seed
        Seeds the resamples and the order of runs.
    metrics
        Only these measurements (names of :data:`INTERVAL_METRICS`); ``None`` for all. The
        variance shares and relative norm alone skip the per-layer geometry, which is most
        of the cost (about 0.1 s per resample and layer at C=512, T=126, d=384).

    Examples
    --------
    >>> IntervalParams(level=0.9).level
    0.9
    >>> IntervalParams(level=1.5)
    Traceback (most recent call last):
    ...
    ValueError: level must be between 0 and 1 (e.g. 0.95), got 1.5
    """

    level: float = 0.95
    method: str = "basic"
    resamples: int = 200
    convergence: bool = True
    tolerance: float = 0.05
    seed: int = 0
    metrics: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {self.level}")
        if self.method not in ("basic", "percentile"):
            raise ValueError(f"method must be 'basic' or 'percentile', got {self.method!r}")
        if self.resamples < 2:
            raise ValueError(f"resamples must be >= 2, got {self.resamples}")
        unknown = sorted(set(self.metrics or ()) - set(INTERVAL_METRICS))
        if unknown:
            raise ValueError(f"no interval for {unknown}: choose among {list(INTERVAL_METRICS)}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be between 0 and 1, got {self.tolerance}")


def _layer_cells(inputs: xr.Dataset, i: int, hidden_norm: float) -> LayerCells:
    one = inputs.isel({LAYER: i})
    topics = (
        np.array([str(t) for t in inputs[TOPIC].values])
        if TOPIC in inputs.coords
        else np.full(inputs.sizes[CONTEXT], "all")
    )
    ctx = np.asarray(one["ctx"].values, dtype=np.float64)
    mu = np.asarray(one["mu"].values, dtype=np.float64)
    length = inputs.sizes["position"]
    if "cell_pos_sum" not in inputs:
        # Every sampled context its own cell; pos held fixed.
        return LayerCells(
            pos_sum=None,
            sumsq=None,
            count=np.ones(ctx.shape[0], np.int64),
            ctx_sqnorm=np.zeros(ctx.shape[0]),
            ctx_sum=np.zeros_like(ctx),
            mu=mu,
            pos=np.asarray(one["pos"].values, dtype=np.float64),
            ctx=ctx,
            sample_cell=np.arange(ctx.shape[0]),
            topics=topics,
            length=length,
            hidden_norm=hidden_norm,
        )
    pos_sum = np.asarray(one["cell_pos_sum"].values, dtype=np.float64)
    count = np.asarray(inputs[CELL_COUNT].values, dtype=np.int64)
    return LayerCells(
        pos_sum=pos_sum,
        sumsq=np.asarray(one["cell_sumsq"].values, dtype=np.float64),
        count=count,
        ctx_sqnorm=np.asarray(one["cell_ctx_sqnorm"].values, dtype=np.float64),
        # B_g: the cell's ctx vectors summed, from its position sums.
        ctx_sum=pos_sum.sum(axis=1) / length - count[:, None] * mu,
        mu=mu,
        pos=np.asarray(one["pos"].values, dtype=np.float64),
        ctx=ctx,
        sample_cell=np.asarray(inputs[CONTEXT_CELL].values, dtype=np.intp),
        topics=topics,
        length=length,
        hidden_norm=hidden_norm,
    )


def _cell_counts(inputs: xr.Dataset) -> Any:
    return np.asarray(inputs[CELL_COUNT].values) if CELL_COUNT in inputs.coords else None


def measure_uncertainty(
    inputs: xr.Dataset,
    metrics: xr.Dataset,
    *,
    params: GeometryParams | None = None,
    intervals: IntervalParams | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Bootstrap intervals and the convergence path of every per-layer measurement.

    Computes in memory (numpy) from ``inputs``; reads no store.

    Parameters
    ----------
    inputs
        From :func:`~posctx.geometry.collect_inputs`; with the cells of a decomposition made
        with ``runs`` every measurement in :data:`INTERVAL_METRICS` is resampled, without
        them only those of ctx alone (:data:`CTX_ONLY`).
    metrics
        From :func:`~posctx.geometry.measure_geometry` on ``inputs``: the estimates (a
        measurement it lacks gets a NaN estimate and interval).
    params
        The measurement settings used for ``metrics``.
    intervals
        Level, resamples, convergence, seed.
    progress
        Show a tqdm bar over layers.

    Returns
    -------
    xarray.Dataset
        Over ``metric``, ``layer``, ``bound`` (lo, hi), ``resample`` and ``sample`` (points
        of the convergence path, coordinate ``n_contexts``): ``estimate`` (metric, layer),
        ``interval`` (metric, layer, bound), ``replicates`` (metric, layer, resample),
        ``path`` (metric, layer, sample) and ``needed`` (metric, layer), the fewest contexts
        from which the estimate stayed within tolerance (NaN where not measured). attrs
        ``posctx_uncertainty``: the method, settings and what was not resampled.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs, measure_geometry
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(64, 12, 1, 6, n_topics=2)
    >>> inputs = collect_inputs(posctx.decompose(ds, runs=16))
    >>> u = measure_uncertainty(inputs, measure_geometry(inputs),
    ...                         intervals=IntervalParams(resamples=20))
    >>> lo, hi = u.interval.sel(metric="share_pos", layer=0).values
    >>> bool(lo <= float(u.estimate.sel(metric="share_pos", layer=0)) <= hi)
    True
    >>> u.n_contexts.values.tolist()
    [4, 8, 16, 32, 64]
    """
    params = params or GeometryParams()
    intervals = intervals or IntervalParams()
    has_cells = "cell_pos_sum" in inputs
    names = tuple(
        n
        for n in (INTERVAL_METRICS if has_cells else CTX_ONLY)
        if intervals.metrics is None or n in intervals.metrics
    )
    geometry = any(n in kernels.SCALAR_NAMES for n in names)
    n_layers = inputs.sizes[LAYER]
    if has_cells:
        strata = np.asarray([str(t) for t in inputs[CELL_TOPIC].values])
        runs = np.asarray(inputs[CELL_RUN].values)
    else:
        strata = (
            np.array([str(t) for t in inputs[TOPIC].values])
            if TOPIC in inputs.coords
            else np.full(inputs.sizes[CONTEXT], "all")
        )
        runs = np.arange(inputs.sizes[CONTEXT])
    weights = stratified_weights(strata, intervals.resamples, intervals.seed)
    subsets = (
        nested_runs(runs, intervals.seed, _cell_counts(inputs))[1]
        if intervals.convergence
        else np.zeros((0, strata.size), np.int64)
    )
    replicates = np.full((len(INTERVAL_METRICS), n_layers, intervals.resamples), np.nan)
    path = np.full((len(INTERVAL_METRICS), n_layers, subsets.shape[0]), np.nan)
    nan = np.full(n_layers, np.nan)
    hidden_norm = (
        np.asarray(metrics["hidden_norm"].values, dtype=np.float64)
        if "hidden_norm" in metrics
        else nan
    )
    layers: Any = range(n_layers)
    if progress:
        from tqdm.std import tqdm

        layers = tqdm(layers, desc="intervals: layers", unit="layer")
    for i in layers:
        cells = _layer_cells(inputs, i, float(hidden_norm[i]))
        centres = kmeans_centres(cells.ctx, cells.topics, params.seed) if geometry else None
        for r in range(intervals.resamples):
            one = weighted_layer(weights[r], cells, params, centres=centres, geometry=geometry)
            for m, name in enumerate(INTERVAL_METRICS):
                if name in names:
                    replicates[m, i, r] = one.get(name, np.nan)
        for k in range(subsets.shape[0]):
            one = weighted_layer(subsets[k], cells, params, geometry=geometry)
            for m, name in enumerate(INTERVAL_METRICS):
                if name in names:
                    path[m, i, k] = one.get(name, np.nan)

    count = np.asarray(inputs[CELL_COUNT].values) if has_cells else np.ones(strata.size)
    n_contexts = np.asarray([int(s @ count) for s in subsets], np.int64)
    estimate = np.stack(
        [
            np.asarray(metrics[name].values, dtype=np.float64) if name in metrics else nan
            for name in INTERVAL_METRICS
        ]
    )
    interval = np.full((len(INTERVAL_METRICS), n_layers, 2), np.nan)
    needed = np.full((len(INTERVAL_METRICS), n_layers), np.nan)
    for m, name in enumerate(INTERVAL_METRICS):
        for i in range(n_layers):
            lo, hi = percentile_interval(replicates[m, i], intervals.level)
            if intervals.method == "basic":
                lo, hi = 2 * estimate[m, i] - hi, 2 * estimate[m, i] - lo
            interval[m, i] = lo, hi
            if n_contexts.size:
                needed[m, i] = settled_at(
                    path[m, i], n_contexts, name in ABSOLUTE_TOLERANCE, intervals.tolerance
                )
    record = {
        "interval": intervals.method,
        "method": f"{intervals.method} bootstrap over cells (runs of consecutive contexts of one "
        "topic), resampled within topics, paired across layers"
        if has_cells
        else f"{intervals.method} bootstrap over contexts, resampled within topics (pos held fixed)",
        "level": intervals.level,
        "resamples": intervals.resamples,
        "seed": intervals.seed,
        "tolerance": intervals.tolerance,
        "absolute_tolerance": {"value": 0.01, "metrics": list(ABSOLUTE_TOLERANCE)},
        "cells": json.loads(inputs.attrs.get(DECOMPOSITION_ATTR, "{}")).get("cells"),
        "n_contexts": inputs_record(inputs)["n_contexts"],
        "not_resampled": {
            **NOT_RESAMPLED,
            **({} if has_cells else {n: NO_CELLS for n in INTERVAL_METRICS if n not in names}),
        },
        "partial": PARTIAL if has_cells else {},
    }
    coords: dict[str, Any] = {
        METRIC: list(INTERVAL_METRICS),
        LAYER: metrics[LAYER].values,
        BOUND: ["lo", "hi"],
        "n_contexts": (SAMPLE, n_contexts),
    }
    if LAYER_NAME in metrics.coords:
        coords[LAYER_NAME] = (LAYER, metrics[LAYER_NAME].values)
    return xr.Dataset(
        {
            "estimate": ((METRIC, LAYER), estimate),
            "interval": ((METRIC, LAYER, BOUND), interval),
            "replicates": ((METRIC, LAYER, RESAMPLE), replicates),
            "path": ((METRIC, LAYER, SAMPLE), path),
            "needed": ((METRIC, LAYER), needed),
        },
        coords=coords,
        attrs={UNCERTAINTY_ATTR: json.dumps(record, sort_keys=True)},
    )


def uncertainty_record(uncertainty: xr.Dataset) -> dict[str, Any]:
    """The JSON record of how ``uncertainty`` was made."""
    record: dict[str, Any] = json.loads(uncertainty.attrs[UNCERTAINTY_ATTR])
    return record


def uncertainty_to_dict(uncertainty: xr.Dataset) -> dict[str, Any]:
    """JSON-safe intervals, contexts needed and convergence path (NaN becomes ``None``).

    ``{"method": record, "n_contexts": [...], "metrics": {name: {"interval": [[lo, hi]
    per layer], "contexts_needed": [per layer], "contexts_needed_all_layers": n or None,
    "path": [[per n_contexts] per layer]}}}``; ``contexts_needed_all_layers`` is the most
    any layer needed, None where a layer never settled before all contexts.
    """
    n = uncertainty["n_contexts"].values
    out: dict[str, Any] = {}
    for name in uncertainty[METRIC].values.tolist():
        one = uncertainty.sel({METRIC: name})
        needed = one["needed"].values
        finite = needed[np.isfinite(needed)]
        worst = float(finite.max()) if finite.size else float("nan")
        settled = finite.size and n.size and worst < n[-1]
        out[name] = {
            "interval": kernels.finite_or_none(one["interval"].values),
            "contexts_needed": kernels.finite_or_none(needed),
            "contexts_needed_all_layers": worst if settled else None,
            "path": kernels.finite_or_none(one["path"].values),
        }
    return {
        "method": uncertainty_record(uncertainty),
        "n_contexts": [int(v) for v in n],
        "metrics": out,
    }


__all__ = [
    "CTX_ONLY",
    "INTERVAL_METRICS",
    "IntervalParams",
    "NOT_RESAMPLED",
    "PARTIAL",
    "measure_uncertainty",
    "uncertainty_record",
    "uncertainty_to_dict",
]
