"""posctx.attention.figures: one row per head, the pattern beside the four parts."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from posctx.attention.api import PARTS, SCORE_DIMS
from posctx.attention.figures import plot_attention_dissection


def _parts(query: list[int], *, causal: bool, layer_name: str = "block_2") -> xr.Dataset:
    rng = np.random.default_rng(0)
    n = len(query)
    data = {name: (SCORE_DIMS, rng.normal(size=(2, 3, n, n))) for name in (*PARTS, "scores")}
    data["pattern"] = (SCORE_DIMS, rng.uniform(size=(2, 3, n, n)))
    return xr.Dataset(
        data,
        coords={
            "context": [4, 7],
            "head": [0, 1, 5],
            "query": query,
            "key": query,
            "topic": ("context", ["code", "prose"]),
        },
        attrs={"layer": 2, "layer_name": layer_name, "causal": causal},
    )


def _images(fig: object) -> list[np.ndarray]:
    return [np.ma.getdata(ax.images[0].get_array()) for ax in fig.axes]  # type: ignore[attr-defined]


def test_one_row_per_head_and_one_column_per_panel() -> None:
    ds = _parts([1, 2, 3, 4], causal=False)
    fig = plot_attention_dissection(ds)
    assert len(fig.axes) == 3 * 5
    assert [ax.get_ylabel() for ax in fig.axes[::5]] == [
        "head 0: query",
        "head 1: query",
        "head 5: query",
    ]
    assert [ax.get_xlabel() for ax in fig.axes[-5:]] == ["key"] * 5
    assert all(ax.get_xlabel() == "" for ax in fig.axes[:-5])
    mean = ds.mean("context")
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles[0] == "pattern"
    for title, part in zip(titles[1:], PARTS, strict=True):
        limit = float(np.abs(mean[part].sel(head=0)).max())
        assert title == f"{part.replace('_', '-')} (±{limit:.3g})"
    np.testing.assert_allclose(_images(fig)[1], mean.pos_pos.sel(head=0).values)
    assert fig.texts[0].get_text() == (
        "layer 2 (block_2): attention pattern and its pre-softmax scores split into pos/ctx "
        "parts, mean over 2 contexts"
    )


def test_a_causal_model_leaves_keys_after_the_query_blank() -> None:
    fig = plot_attention_dissection(_parts([1, 2, 3, 4], causal=True), heads=[5], context=7)
    assert len(fig.axes) == 5
    upper = np.triu_indices(4, 1)
    for image in _images(fig):
        assert np.isnan(image[upper]).all() and np.isfinite(image[np.tril_indices(4)]).all()
    assert fig.texts[0].get_text().endswith("context 7, prose")
    assert not np.isnan(
        _images(plot_attention_dissection(_parts([1, 2, 3, 4], causal=False)))[0]
    ).any()


@pytest.mark.parametrize(
    ("query", "extent"), [([3, 4, 5], (2.5, 5.5, 5.5, 2.5)), ([1, 3, 4], (-0.5, 2.5, 2.5, -0.5))]
)
def test_contiguous_positions_are_drawn_at_their_labels(
    query: list[int], extent: tuple[float, ...]
) -> None:
    fig = plot_attention_dissection(_parts(query, causal=False))
    assert tuple(fig.axes[0].images[0].get_extent()) == extent


def test_a_layer_named_by_its_number_is_not_named_twice() -> None:
    fig = plot_attention_dissection(_parts([1, 2], causal=False, layer_name="2"))
    assert fig.texts[0].get_text().startswith("layer 2: attention pattern")
