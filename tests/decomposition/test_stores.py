"""decompose_store: a hidden-state store in, a decomposition store out (``posctx decompose``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import posctx
from posctx.decomposition.kernels import decompose_numpy
from posctx.decomposition.stores import decompose_store
from posctx.errors import PosctxError, StoreError
from posctx.testing import write_planted_store


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = str(tmp_path / "h.zarr")
    write_planted_store(path, n_contexts=12, length=6, n_layers=2, n_dims=4, n_topics=3)
    return path


def _reference(store: str, contexts: list[int], positions: slice) -> dict[str, np.ndarray]:
    ds = posctx.open_hidden(store)
    return decompose_numpy(ds.hidden.sel(context=contexts, position=positions).values)


def test_a_fresh_decomposition_drops_position_zero_by_default(store: str, tmp_path: Path) -> None:
    result = decompose_store(store, tmp_path / "d.zarr")
    dec = result.decomposition
    assert result.contexts_read == 12 and result.previous is None
    assert result.path == str(tmp_path / "d.zarr") and result.seconds > 0
    assert dec.position.values.tolist() == [1, 2, 3, 4, 5]
    ref = _reference(store, list(range(12)), slice(1, None))
    for name in ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid"):
        np.testing.assert_allclose(dec[name].values, ref[name], rtol=1e-10, atol=1e-12)
    record = json.loads(dec.attrs["posctx_decomposition"])
    assert record["positions"] == [1, 5] and record["source_store"] is not None


def test_a_topic_and_a_context_range_select_their_intersection(store: str, tmp_path: Path) -> None:
    topics = [str(t) for t in posctx.open_hidden(store).topic.values]
    wanted = [c for c in range(3, 10) if topics[c] == "topic1"]
    result = decompose_store(
        store, tmp_path / "d.zarr", topic="topic1", contexts=slice(3, 9), positions=None
    )
    assert result.decomposition.context.values.tolist() == wanted
    ref = _reference(store, wanted, slice(None))
    np.testing.assert_allclose(result.decomposition.ctx.values, ref["ctx"], rtol=1e-10, atol=1e-12)


def test_an_update_reads_only_the_new_contexts(store: str, tmp_path: Path) -> None:
    first = decompose_store(store, tmp_path / "a.zarr", contexts=slice(0, 7), moments=True)
    assert first.contexts_read == 8
    updated = decompose_store(store, tmp_path / "b.zarr", previous=tmp_path / "a.zarr")
    assert updated.contexts_read == 4 and updated.previous == str(tmp_path / "a.zarr")
    full = decompose_store(store, tmp_path / "c.zarr", moments=True).decomposition
    for name in ("ctx", "pos", "ss_resid", "sv_resid"):
        np.testing.assert_allclose(
            updated.decomposition[name].values, full[name].values, rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        ({"topic": "topic0"}, "--topic"),
        ({"contexts": slice(0, 3), "moments": True}, "--contexts, --moments"),
        ({"positions": None}, "--positions"),
    ],
)
def test_an_update_refuses_options_it_takes_from_the_previous_decomposition(
    store: str, tmp_path: Path, options: dict[str, object], flags: str
) -> None:
    decompose_store(store, tmp_path / "a.zarr", contexts=slice(0, 7))
    with pytest.raises(PosctxError, match=f"drop {flags}$"):
        decompose_store(store, tmp_path / "b.zarr", previous=tmp_path / "a.zarr", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "b.zarr").exists()


def test_an_unknown_topic_names_the_topics_held(store: str, tmp_path: Path) -> None:
    with pytest.raises(PosctxError, match="its topics are 'topic0', 'topic1', 'topic2'; pass one"):
        decompose_store(store, tmp_path / "d.zarr", topic="poetry")
    assert not (tmp_path / "d.zarr").exists()


def test_mode_w_replaces_a_decomposition_and_w_dash_refuses(store: str, tmp_path: Path) -> None:
    decompose_store(store, tmp_path / "d.zarr", contexts=slice(0, 3))
    with pytest.raises(StoreError, match="already holds data"):
        decompose_store(store, tmp_path / "d.zarr")
    replaced = decompose_store(store, tmp_path / "d.zarr", mode="w")
    assert replaced.decomposition.sizes["context"] == 12
