"""posctx.attention.writers: the `posctx attention` files, and the refusals before any is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import posctx
from posctx.attention.api import dissect_attention, toeplitz_share
from posctx.attention.writers import _finite, write_attention_dissection
from posctx.decomposition import paper_positions
from posctx.errors import ModelError
from posctx.extraction import extract
from tests.stores import tiny_config, write_corpus


@pytest.fixture(scope="module")
def stores(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """A tiny-BERT store of 6 contexts x 10 tokens and its decomposition."""
    root = tmp_path_factory.mktemp("writers")
    hidden, dec = str(root / "h.zarr"), str(root / "d.zarr")
    extract(
        tiny_config(tiny_models["bert"], write_corpus(root / "corpus"), contexts=6, length=10),
        hidden,
        progress=False,
    )
    ds = posctx.open_hidden(hidden)
    posctx.write_decomposition(posctx.decompose(ds, positions=paper_positions(ds)), dec)
    return hidden, dec


def test_figures_and_tables_hold_the_dissections_measurements(
    stores: tuple[str, str], tmp_path: Path
) -> None:
    hidden, dec = stores
    out = tmp_path / "att"
    result = write_attention_dissection(hidden, dec, [1], out, contexts=2, heads=[0])
    assert [p.name for p in result.figures] == [
        "attention_layer1.png",
        "attention_layer1_context0.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.figures)
    assert result.seconds > 0 and len(result.shares) == 1
    ds = posctx.open_hidden(hidden)
    expected = toeplitz_share(
        dissect_attention(ds, posctx.open_decomposition(dec), 1, contexts=2, heads=[0])
    )
    np.testing.assert_array_equal(result.shares[0].share.values, expected.share.values)
    record = json.loads(result.json.read_text())
    assert record["hidden"] == hidden and record["decomposition"] == dec and record["contexts"] == 2
    assert record["weights_hash"] == ds.attrs["posctx"]["model"]["weights_hash"]
    rows = record["rows"]
    assert [(r["layer"], r["head"], r["part"]) for r in rows] == [
        (1, 0, part) for part in ("pos_pos", "pos_ctx", "ctx_pos", "ctx_ctx", "scores")
    ]
    assert [r["share"] for r in rows] == pytest.approx(expected.share.sel(head=0).values.tolist())
    assert {r["layer_name"] for r in rows} == {"block_1"}
    with result.csv.open() as fh:
        table = list(csv.DictReader(fh))
    assert [row["part"] for row in table] == [r["part"] for r in rows]
    assert [float(row["share"]) for row in table] == pytest.approx([r["share"] for r in rows])


def test_a_layer_without_a_block_is_refused_before_anything_is_written(
    stores: tuple[str, str], tmp_path: Path
) -> None:
    hidden, dec = stores
    out = tmp_path / "att"
    with pytest.raises(
        ModelError, match=r"layer 2 has no attention: transformer block l reads hidden state l"
    ):
        write_attention_dissection(hidden, dec, [0, 2], out, contexts=2)
    assert not out.exists()


def test_non_finite_measurements_are_written_as_null() -> None:
    assert _finite(np.float64(0.25)) == 0.25
    assert _finite(float("nan")) is None and _finite(np.inf) is None
