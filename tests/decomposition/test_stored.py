"""posctx.decomposition.stored: a store's statistics give what a read of its hidden states gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import posctx
import posctx.testing
from posctx.decomposition import finalize, statistics
from posctx.decomposition.stored import (
    ALL,
    CORE,
    cannot_serve,
    plan_edges,
    positions_kind,
    stored_statistics,
)
from posctx.store.statistics import open_statistics
from posctx.sums import Edges, block_statistics
from posctx.types import STATISTICS_ATTR

SUMS = ("pos_sum", "ctx_sum", "sumsq")
OUTPUTS = ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid")


def _planted(path: Path, **kwargs: Any) -> str:
    """10 contexts x 6 tokens (position 0 left out), blocks of 4, topics alternating."""
    posctx.testing.write_large_planted_store(
        str(path),
        n_contexts=10,
        length=6,
        n_layers=2,
        n_dims=3,
        chunk_contexts=4,
        n_topics=2,
        statistics=True,
        **kwargs,
    )
    return str(path)


@pytest.fixture(scope="module")
def with_moments(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _planted(tmp_path_factory.mktemp("stored") / "m.zarr", moments=True)


@pytest.fixture(scope="module")
def float16(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _planted(tmp_path_factory.mktemp("stored") / "h.zarr", dtype="float16")


def _hand_statistics(ds: xr.Dataset, edges: Edges) -> xr.Dataset:
    """What open_statistics gives for hidden states ``ds``, built from block_statistics."""
    topics = sorted({str(t) for t in ds.topic.values})
    index = [topics.index(str(t)) for t in ds.topic.values]
    b = block_statistics(ds.hidden.values, edges, index, len(topics), moments=True)
    dims = {
        "stat_ctx_sum": ("context", "layer", "dim"),
        "stat_ctx_sumsq": ("context", "layer"),
        "stat_edge": ("context", "edge", "layer", "dim"),
        "pos_sum": ("stat_topic", "position", "layer", "dim"),
        "mean": ("layer", "dim"),
        "m2": ("layer", "dim", "dim2"),
    }
    keys = {"stat_ctx_sum": "ctx_sum", "stat_ctx_sumsq": "ctx_sumsq", "stat_edge": "edge"}
    out = xr.Dataset(
        {name: (d, b[keys.get(name, name)]) for name, d in dims.items()},
        coords={
            "context": ds.context.values,
            "topic": ("context", ds.topic.values),
            "layer": ds.layer.values,
            "dim": ds.dim.values,
            "edge": list(edges.positions),
            "stat_topic": topics,
        },
        attrs={
            **ds.attrs,
            STATISTICS_ATTR: {
                "lead": edges.lead,
                "trail": edges.trail,
                "length": edges.length,
                "moments": True,
                "count": b["count"],
            },
        },
    ).chunk({"context": 4})
    return out


def _relative(a: xr.Dataset, b: xr.Dataset, names: tuple[str, ...]) -> float:
    """Largest difference of each variable relative to its own largest magnitude."""
    return max(
        float(np.abs(a[n].values - b[n].values).max() / np.abs(b[n].values).max()) for n in names
    )


def _record(ds: xr.Dataset) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(ds.attrs["posctx_decomposition"])
    return record


# ------------------------------------------------------------------------ positions_kind


@pytest.mark.parametrize(
    ("positions", "kind"),
    [
        ("auto", CORE),
        ("all", None),  # only "auto" is a name; all positions are None
        ("paper", None),
        (None, ALL),
        (slice(None), ALL),
        (slice(0, 5), ALL),  # label slices include their stop
        (list(range(6)), ALL),
        (np.arange(6), ALL),
        (slice(1, None), CORE),
        (slice(1, 5), CORE),
        ([1, 2, 3, 4, 5], CORE),
        (slice(2, None), None),
        (slice(0, 4), None),
        (slice(1, 4), None),
        ([5, 4, 3, 2, 1], None),  # the core's labels, not in order
        ([0, 2], None),
        (3, None),
    ],
)
def test_positions_kind_of_a_store_without_trailing_edges(
    with_moments: str, positions: Any, kind: str | None
) -> None:
    assert positions_kind(open_statistics(with_moments), positions) == kind


@pytest.mark.parametrize(
    ("positions", "kind"),
    [(slice(1, 4), CORE), (slice(1, None), None), (slice(0, 6), ALL), ("auto", CORE)],
)
def test_positions_kind_with_trailing_edges(positions: Any, kind: str | None) -> None:
    ds, _ = posctx.testing.planted_hidden(4, 7, 1, 2, n_topics=2)
    stats = _hand_statistics(ds, Edges(7, 1, 2))  # positions 0, 5 and 6 left out
    assert plan_edges(stats) == Edges(7, 1, 2)
    assert positions_kind(stats, positions) == kind


def test_plan_edges_reads_the_record(with_moments: str) -> None:
    assert plan_edges(open_statistics(with_moments)) == Edges(6, 1, 0)


# -------------------------------------------------------------------------- cannot_serve


POSITIONS = (
    "the statistics serve the default positions and all positions, not an arbitrary position range"
)
CONTEXTS = (
    "the statistics keep position sums per topic, not per context, so a context selection "
    "needs the hidden states"
)
NO_MOMENTS = "the store's statistics have no second moments (extracted without --moments)"
TOPIC_MOMENTS = "the second moments are kept over all topics together, not per topic"


@pytest.mark.parametrize(
    ("kwargs", "moments_store", "reason"),
    [
        ({}, False, None),
        ({"positions": None, "topic": "topic1"}, False, None),
        ({"moments": True}, True, None),
        ({"positions": None, "moments": True}, True, None),
        ({"positions": slice(2, 4)}, True, POSITIONS),
        ({"positions": slice(2, 4), "contexts": [0, 1]}, True, POSITIONS),  # the first reason
        ({"contexts": [0, 1]}, True, CONTEXTS),
        ({"contexts": slice(0, 9)}, True, CONTEXTS),  # even one naming every context
        ({"moments": True}, False, NO_MOMENTS),
        ({"moments": True, "topic": "topic0"}, False, NO_MOMENTS),
        ({"moments": True, "topic": "topic0"}, True, TOPIC_MOMENTS),
    ],
)
def test_cannot_serve_gives_the_first_reason_in_one_line(
    with_moments: str, float16: str, kwargs: dict[str, Any], moments_store: bool, reason: Any
) -> None:
    stats = open_statistics(with_moments if moments_store else float16)
    assert cannot_serve(stats, **kwargs) == reason


def test_stored_statistics_refuse_positions_they_cannot_serve(with_moments: str) -> None:
    with pytest.raises(ValueError) as info:
        stored_statistics(open_statistics(with_moments), positions=slice(2, 4))
    assert str(info.value) == "the statistics cannot serve positions slice(2, 4, None)"


# --------------------------------------------------------------------- stored_statistics


@pytest.mark.parametrize(
    ("positions", "read_positions", "topic", "moments"),
    [
        ("auto", slice(1, None), None, True),
        (None, None, None, True),
        ("auto", slice(1, None), "topic1", False),
        (None, None, "topic0", False),
        (slice(1, 5), slice(1, None), None, False),  # a label slice naming the core
    ],
)
def test_stored_statistics_equal_a_read_of_the_hidden_states(
    with_moments: str, positions: Any, read_positions: Any, topic: str | None, moments: bool
) -> None:
    stats = open_statistics(with_moments)
    got = stored_statistics(stats, positions=positions, topic=topic, moments=moments)
    hidden = posctx.open_hidden(with_moments)
    contexts = None
    if topic is not None:
        contexts = hidden.context.values[[str(t) == topic for t in hidden.topic.values]]
    read = statistics(hidden, positions=read_positions, contexts=contexts, moments=moments)
    assert sorted(got.data_vars) == sorted(read.data_vars)
    for name in got.data_vars:
        assert got[name].dims == read[name].dims, name
    assert got.position.values.tolist() == read.position.values.tolist()
    assert got.context.values.tolist() == read.context.values.tolist()
    assert [str(t) for t in got.topic.values] == [str(t) for t in read.topic.values]
    assert "edge" not in got.coords and "stat_topic" not in got.coords
    assert _record(got) == {
        **_record(read),
        "source": "statistics",
        "kernel": "none: sums kept during extraction",
    }
    got, read = got.compute(), read.compute()
    assert _relative(got, read, SUMS) < 1e-12
    if moments:
        # Float32 products of centred rows: grouped by block here, by chunk in the read.
        assert _relative(got, read, ("m2_hidden",)) < 1e-6
    # ... and so is the decomposition made from them.
    dec = finalize(got).compute()
    direct = posctx.decompose(
        hidden, positions=read_positions, contexts=contexts, moments=moments
    ).compute()
    assert _relative(dec, direct, OUTPUTS) < 1e-12


def test_stored_statistics_of_a_float16_store(float16: str) -> None:
    """Stored values in float16: the sums are of the stored values, exactly as a read."""
    stats = open_statistics(float16)
    assert stats.stat_edge.dtype == np.float16
    hidden = posctx.open_hidden(float16)
    for positions, read_positions in (("auto", slice(1, None)), (None, None)):
        got = stored_statistics(stats, positions=positions).compute()
        read = statistics(hidden, positions=read_positions).compute()
        assert _relative(got, read, SUMS) < 1e-12
        assert _record(got)["source"] == "statistics"


@pytest.mark.parametrize(("positions", "read_positions"), [("auto", slice(1, 4)), (None, None)])
def test_stored_statistics_with_trailing_edges(positions: Any, read_positions: Any) -> None:
    """Two trailing positions left out (statistics built by hand from planted states)."""
    ds, _ = posctx.testing.planted_hidden(8, 7, 2, 3, n_topics=2, noise=0.5)
    stats = _hand_statistics(ds, Edges(7, 1, 2))
    got = stored_statistics(stats, positions=positions, moments=True).compute()
    read = statistics(ds, positions=read_positions, moments=True).compute()
    assert got.position.values.tolist() == read.position.values.tolist()
    assert _relative(got, read, SUMS) < 1e-12
    assert _relative(got, read, ("m2_hidden",)) < 1e-6
    one_topic = stored_statistics(stats, positions=positions, topic="topic1").compute()
    in_topic = ds.context.values[[str(t) == "topic1" for t in ds.topic.values]]
    read = statistics(ds, positions=read_positions, contexts=in_topic).compute()
    assert one_topic.context.values.tolist() == in_topic.tolist() == [1, 3, 5, 7]
    assert _relative(one_topic, read, SUMS) < 1e-12


def test_stored_statistics_compute_nothing_until_asked(with_moments: str) -> None:
    stats = open_statistics(with_moments)
    with posctx.testing.raise_if_dask_computes():
        stored_statistics(stats, positions=None, moments=True)
