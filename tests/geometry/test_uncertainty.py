"""posctx.geometry.uncertainty: intervals that cover the truth, narrow with more contexts,
come from the cells alone, and a convergence path that ends at the estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import posctx
from posctx.geometry import collect_inputs, measure_geometry
from posctx.geometry.kernels.bootstrap import settled_at, stratified_weights
from posctx.geometry.uncertainty import (
    CTX_ONLY,
    INTERVAL_METRICS,
    IntervalParams,
    measure_uncertainty,
    uncertainty_to_dict,
)
from posctx.testing import hidden_dataset, planted_hidden, raise_if_dask_computes

T, D, TOPICS = 12, 6, 2
SIGMA, TAU = 1.0, 0.5


def _population(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed pos curve and topic means (the population), the same for every sample."""
    rng = np.random.default_rng(1000 + seed)
    t = np.arange(T) / T
    pos = np.zeros((T, D))
    pos[:, 0], pos[:, 1] = 1.5 * np.cos(2 * np.pi * t), 1.5 * np.sin(2 * np.pi * t)
    pos -= pos.mean(axis=0)
    means = rng.normal(size=(TOPICS, D))
    return pos, means - means.mean(axis=0)


def _sample(n_contexts: int, seed: int) -> tuple[object, dict[str, float]]:
    """Contexts drawn i.i.d. from the population: h = pos[t] + m_topic + z_c + e_ct."""
    pos, means = _population(0)
    rng = np.random.default_rng(seed)
    topic = np.arange(n_contexts) % TOPICS
    ctx = means[topic] + TAU * rng.normal(size=(n_contexts, D))
    h = pos[None] + ctx[:, None] + SIGMA * rng.normal(size=(n_contexts, T, D))
    ds = hidden_dataset(
        h[:, :, None, :].astype(np.float64),
        chunks_context=16,
        topics=[f"topic{k}" for k in topic],
    )
    # The population values of the shares (C -> infinity, T fixed): ctx means carry the
    # noise averaged over T positions, the total every part.
    p = float((pos**2).sum(axis=1).mean())
    c = float((means**2).sum(axis=1).mean()) + D * TAU**2 + D * SIGMA**2 / T
    total = p + float((means**2).sum(axis=1).mean()) + D * TAU**2 + D * SIGMA**2
    return ds, {"share_pos": p / total, "share_ctx": c / total}


def _shares(n_contexts: int, seed: int, resamples: int = 200) -> object:
    ds, truth = _sample(n_contexts, seed)
    inputs = collect_inputs(posctx.decompose(ds, runs=n_contexts // 2))
    # Only the shares are asked for: their estimates, without the whole geometry.
    metrics = xr.Dataset(
        {f"share_{p}": inputs[f"ss_{p}"] / inputs["ss_total"] for p in ("pos", "ctx")}
    )
    params = IntervalParams(
        resamples=resamples, convergence=False, seed=seed, metrics=("share_pos", "share_ctx")
    )
    return measure_uncertainty(inputs, metrics, intervals=params), truth


def test_intervals_cover_the_planted_truth_at_about_the_nominal_rate() -> None:
    """100 samples from one population: the 95% intervals cover its shares 88-100% of the
    time (a binomial 95% range around 95 for 100 draws is 90-99)."""
    covered = {"share_pos": 0, "share_ctx": 0}
    for seed in range(100):
        u, truth = _shares(128, seed)
        for name in covered:
            lo, hi = u.interval.sel(metric=name, layer=0).values
            covered[name] += bool(lo <= truth[name] <= hi)
    assert 88 <= covered["share_pos"] <= 100, covered
    assert 88 <= covered["share_ctx"] <= 100, covered


def test_intervals_narrow_as_one_over_the_root_of_the_contexts() -> None:
    """Four times the contexts: half the width (within 0.35-0.65 over five samples)."""
    widths = {n: [] for n in (64, 256)}
    for n in widths:
        for seed in range(5):
            u, _ = _shares(n, seed)
            lo, hi = u.interval.sel(metric="share_pos", layer=0).values
            widths[n].append(hi - lo)
    ratio = np.mean(widths[256]) / np.mean(widths[64])
    assert 0.35 < ratio < 0.65, ratio


@pytest.fixture(scope="module")
def measured() -> tuple[object, object, object]:
    ds, _ = planted_hidden(64, 12, 2, 8, n_topics=2, chunks_context=16)
    dec = posctx.decompose(ds, runs=16)
    with raise_if_dask_computes(max_computes=1):
        inputs = collect_inputs(dec)
    metrics = measure_geometry(inputs)
    with raise_if_dask_computes(max_computes=0):
        u = measure_uncertainty(inputs, metrics, intervals=IntervalParams(resamples=30))
    return inputs, metrics, u


def test_every_measurement_gets_an_interval_and_a_path(measured: tuple) -> None:
    _, metrics, u = measured
    assert u.interval.sizes == {"metric": len(INTERVAL_METRICS), "layer": 2, "bound": 2}
    finite = [
        name for name in INTERVAL_METRICS if np.isfinite(u.interval.sel(metric=name).values).all()
    ]
    # relative_norm needs the hidden norm (no hidden store or moments here).
    assert set(INTERVAL_METRICS) - set(finite) == {"relative_norm"}
    lo, hi = u.interval.sel(metric=finite, bound="lo"), u.interval.sel(metric=finite, bound="hi")
    assert bool((lo <= hi).all())
    # Powers of two contexts: runs of 4 contexts, 1, 2, 4, 8 then all 16 runs.
    assert u.n_contexts.values.tolist() == [4, 8, 16, 32, 64]
    # The last point is all the contexts: the estimate, for the measures without baselines.
    for name in ("pos_stable_rank", "share_pos", "share_ctx", "ctx_within", "spiral_turns"):
        np.testing.assert_allclose(
            u.path.sel(metric=name).values[:, -1], metrics[name].values, rtol=1e-9
        )
    record = json.loads(u.attrs["posctx_uncertainty"])
    assert record["interval"] == "basic" and record["resamples"] == 30
    assert "hidden_norm" in record["not_resampled"] and "relative_norm" in record["partial"]


def test_replicates_are_paired_across_layers(measured: tuple) -> None:
    """The same resamples serve every layer: layer 1 measured alone gets the replicates it
    gets beside layer 0, so differences between layers can be bootstrapped too."""
    inputs, metrics, u = measured
    alone = measure_uncertainty(
        inputs.isel(layer=[1]),
        metrics.isel(layer=[1]),
        intervals=IntervalParams(resamples=30, metrics=("share_pos", "share_ctx")),
    )
    for name in ("share_pos", "share_ctx"):
        np.testing.assert_allclose(
            alone.replicates.sel(metric=name, layer=1), u.replicates.sel(metric=name, layer=1)
        )


def test_json_record_names_contexts_needed(measured: tuple) -> None:
    _, _, u = measured
    data = uncertainty_to_dict(u)
    json.dumps(data, allow_nan=False)
    share = data["metrics"]["share_pos"]
    assert len(share["interval"]) == 2 and share["contexts_needed"][0] in data["n_contexts"]


def test_without_cells_only_ctx_measures_are_resampled() -> None:
    ds, _ = planted_hidden(40, 10, 1, 6, n_topics=2)
    inputs = collect_inputs(posctx.decompose(ds))
    u = measure_uncertainty(
        inputs, measure_geometry(inputs), intervals=IntervalParams(resamples=10)
    )
    resampled = {
        name for name in INTERVAL_METRICS if np.isfinite(u.interval.sel(metric=name).values).all()
    }
    assert resampled == set(CTX_ONLY)
    record = json.loads(u.attrs["posctx_uncertainty"])
    assert "--runs" in record["not_resampled"]["pos_stable_rank"]


def test_stratified_weights_keep_each_topics_cell_count() -> None:
    strata = ["a"] * 5 + ["b"] * 3
    w = stratified_weights(strata, 50, seed=1)
    assert (w[:, :5].sum(axis=1) == 5).all() and (w[:, 5:].sum(axis=1) == 3).all()
    assert w.std() > 0


def test_settled_at_uses_absolute_tolerance_for_similarities() -> None:
    path, n = [0.05, 0.009, 0.004, 0.0], [8, 16, 32, 64]
    assert settled_at(path, n, absolute=True) == 16
    assert settled_at(path, n, absolute=False) == 64


def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match="no interval for"):
        IntervalParams(metrics=("nope",))
    with pytest.raises(ValueError, match="method must be"):
        IntervalParams(method="bca")
