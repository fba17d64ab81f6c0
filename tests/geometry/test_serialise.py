"""posctx.geometry.serialise: records, the per-layer table and the JSON-safe dict, NaN as None."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import xarray as xr

import posctx
from posctx.geometry.serialise import (
    geometry_record,
    inputs_record,
    metrics_table,
    metrics_to_dict,
    provenance,
)
from posctx.testing import planted_hidden
from posctx.types import DECOMPOSITION_ATTR, GEOMETRY_ATTR, INPUTS_ATTR, PROVENANCE_ATTR

RECORD = {"params": {"energy": 0.9}, "relative_norm": "missing", "topics": ["a", "b"]}


def _metrics(with_names: bool = True) -> xr.Dataset:
    """A measurements dataset made by hand: three layers, a NaN, an int, a bool and a vector."""
    coords: dict[str, object] = {"layer": [0, 3, 6]}
    if with_names:
        coords["layer_name"] = ("layer", ["embeddings", "block_3", "block_6"])
    return xr.Dataset(
        {
            "pos_norm": ("layer", [1.5, np.nan, 2.25], {"description": "norm of pos"}),
            "rank": ("layer", np.array([2, 3, 4], dtype=np.int64)),
            "smooth": ("layer", [True, False, True]),
            "pos_sv": (("layer", "k"), [[3.0, 1.0], [2.0, np.nan], [np.inf, 0.5]]),
        },
        coords=coords,
        attrs={GEOMETRY_ATTR: json.dumps(RECORD), INPUTS_ATTR: json.dumps({"n": 12})},
    )


def test_the_records_are_the_parsed_json_attrs() -> None:
    metrics = _metrics()
    assert geometry_record(metrics) == RECORD
    assert inputs_record(metrics) == {"n": 12}
    assert geometry_record(metrics) is not geometry_record(metrics)  # a fresh copy each call


def test_the_table_has_one_row_per_layer_and_the_scalars_only() -> None:
    table = metrics_table(_metrics())
    assert list(table.columns) == ["layer_name", "pos_norm", "rank", "smooth"]  # no pos_sv
    assert table.index.name == "layer" and list(table.index) == [0, 3, 6]
    assert table["layer_name"].tolist() == ["embeddings", "block_3", "block_6"]
    np.testing.assert_array_equal(table["pos_norm"], [1.5, np.nan, 2.25])
    assert table["rank"].dtype == np.int64 and table["smooth"].tolist() == [True, False, True]
    assert list(metrics_table(_metrics(with_names=False)).columns) == ["pos_norm", "rank", "smooth"]


def test_the_table_round_trips_through_csv_with_nan_kept() -> None:
    table = metrics_table(_metrics())
    back = pd.read_csv(io.StringIO(table.to_csv()), index_col="layer")
    pd.testing.assert_frame_equal(back, table)


def test_the_dict_holds_every_value_with_nan_and_inf_as_none() -> None:
    d = metrics_to_dict(_metrics())
    assert d == {
        "geometry": RECORD,
        "descriptions": {"pos_norm": "norm of pos", "rank": "", "smooth": "", "pos_sv": ""},
        "layers": [
            {
                "layer": 0,
                "layer_name": "embeddings",
                "pos_norm": 1.5,
                "rank": 2,
                "smooth": True,
                "pos_sv": [3.0, 1.0],
            },
            {
                "layer": 3,
                "layer_name": "block_3",
                "pos_norm": None,
                "rank": 3,
                "smooth": False,
                "pos_sv": [2.0, None],
            },
            {
                "layer": 6,
                "layer_name": "block_6",
                "pos_norm": 2.25,
                "rank": 4,
                "smooth": True,
                "pos_sv": [None, 0.5],
            },
        ],
    }
    row = d["layers"][0]
    assert type(row["layer"]) is int and type(row["rank"]) is int and type(row["smooth"]) is bool
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN token anywhere
    assert json.loads(text) == d
    assert "layer_name" not in metrics_to_dict(_metrics(with_names=False))["layers"][0]


def test_the_dict_of_real_measurements_matches_the_dataset() -> None:
    ds, _ = planted_hidden(30, 12, 2, 6)
    metrics = posctx.measure_geometry(posctx.decompose(ds)).compute()
    d = metrics_to_dict(metrics)
    assert [row["layer"] for row in d["layers"]] == [0, 1]
    for i, row in enumerate(d["layers"]):
        assert set(row) == {"layer", "layer_name", *map(str, metrics.data_vars)}
        for name in metrics.data_vars:
            want = np.asarray(metrics[name].values[i], dtype=float).ravel()
            got = np.array(
                [math.nan if v is None else v for v in np.ravel(row[str(name)])], dtype=float
            )
            np.testing.assert_array_equal(got, np.where(np.isfinite(want), want, np.nan))
    json.dumps(d, allow_nan=False)


def test_provenance_reads_a_dataset_or_a_mapping() -> None:
    store = {"model": {"name": "m"}}
    dec_record = {"positions": [1, None]}
    ds = xr.Dataset(
        attrs={PROVENANCE_ATTR: store, DECOMPOSITION_ATTR: json.dumps(dec_record), "x": 1}
    )
    assert provenance(ds) == {"store": store, "decomposition": dec_record}
    copied = provenance(ds)["store"]
    copied["model"] = "changed"  # a copy of the attrs' dict, not the dict itself
    assert ds.attrs[PROVENANCE_ATTR] == {"model": {"name": "m"}}
    # A record already parsed (a mapping of attrs, as the report passes) is kept as it is.
    as_dict = {PROVENANCE_ATTR: store, DECOMPOSITION_ATTR: dec_record}
    assert provenance(as_dict) == {"store": store, "decomposition": dec_record}
    assert provenance({}) == {"store": {}, "decomposition": None}
