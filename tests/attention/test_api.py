"""posctx.attention.api: the label checks of a dissection, and the Toeplitz share and table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from posctx.attention.api import (
    PARTS,
    SCORE_DIMS,
    _check_pair,
    _context_labels,
    dissect_attention,
    format_toeplitz_table,
    toeplitz_share,
)
from posctx.attention.kernels import toeplitz_kernel
from posctx.config import ModelConfig
from posctx.decomposition import decompose
from posctx.errors import PosctxError
from posctx.model import LoadedModel, load_model
from posctx.testing import hidden_dataset


@pytest.fixture(scope="module")
def hidden() -> xr.Dataset:
    """Ten contexts of 6 tokens, 3 layers of 32 dims (the tiny GPT-2's shape)."""
    h = np.random.default_rng(0).normal(size=(10, 6, 3, 32))
    ds = hidden_dataset(h, chunks_context=5, topics=[f"t{i % 2}" for i in range(10)])
    ds.attrs["posctx"] = {"model": {"weights_hash": "abc"}}
    return ds


@pytest.fixture(scope="module")
def dec(hidden: xr.Dataset) -> xr.Dataset:
    out = decompose(hidden, contexts=[1, 3, 5, 7], positions=slice(1, 4)).compute()
    return out


def test_context_selections(hidden: xr.Dataset, dec: xr.Dataset) -> None:
    assert _context_labels(3, dec, hidden).tolist() == [1, 3, 5]  # the decomposition's first 3
    assert _context_labels(np.int64(9), dec, hidden).tolist() == [1, 3, 5, 7]
    assert _context_labels(slice(6, 8), dec, hidden).tolist() == [6, 7, 8]  # labels, stop included
    assert _context_labels([0, 9], dec, hidden).tolist() == [
        0,
        9,
    ]  # outside the decomposition: fine


@pytest.mark.parametrize(
    ("contexts", "message"),
    [
        (0, "contexts must be at least 1, got 0"),
        ([[1, 2]], r"contexts must be 1-d labels, got shape \(1, 2\)"),
        (True, r"contexts must be 1-d labels, got shape \(\)"),
        (
            [4, 12, 99],
            r"contexts \[12, 99\] are not in the hidden-state store: pick labels it holds",
        ),
        ([], "the context selection is empty: pick at least one context"),
        (slice(20, 30), "the context selection is empty"),
    ],
)
def test_context_selections_that_are_refused(
    hidden: xr.Dataset, dec: xr.Dataset, contexts: object, message: str
) -> None:
    with pytest.raises(PosctxError, match=message):
        _context_labels(contexts, dec, hidden)  # type: ignore[arg-type]


def test_a_matching_pair_passes(hidden: xr.Dataset, dec: xr.Dataset) -> None:
    _check_pair(hidden, dec, 2)


def test_pairs_that_do_not_belong_together_are_refused(hidden: xr.Dataset, dec: xr.Dataset) -> None:
    cases = [
        (hidden, dec, 3, "layer 3 is not in the hidden-state store (its layers: [0, 1, 2])"),
        (
            hidden,
            dec.sel(layer=[0, 1]),
            2,
            "layer 2 is not in the decomposition (its layers: [0, 1])",
        ),
        (
            hidden,
            dec.drop_vars("pos"),
            0,
            "the decomposition has no 'pos': pass a decomposition store",
        ),
        (
            hidden.drop_vars("token_id"),
            dec,
            0,
            "the hidden-state store lacks 'hidden' or 'token_id'",
        ),
        (
            hidden.isel(position=[0, 1, 2]),
            dec,
            0,
            "the decomposition's positions [3, 4] are not in",
        ),
    ]
    for h, d, layer, message in cases:
        with pytest.raises(PosctxError, match=re.escape(message)):
            _check_pair(h, d, layer)
    other = dec.copy()
    other.attrs = {**dec.attrs, "posctx": {"model": {"weights_hash": "xyz"}}}
    with pytest.raises(PosctxError) as info:
        _check_pair(hidden, other, 0)
    assert str(info.value) == (
        "the decomposition was made from another model's hidden states (weights hash xyz vs the "
        "store's abc): pass the store the decomposition was made from"
    )
    unrecorded = dec.copy()
    unrecorded.attrs = {}
    _check_pair(hidden, unrecorded, 0)  # no record on one side: nothing to compare


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"])))


def test_heads_that_do_not_exist_are_refused_before_any_work(
    hidden: xr.Dataset, dec: xr.Dataset, gpt2: LoadedModel
) -> None:
    record = {"posctx": {"model": {"weights_hash": gpt2.weights_hash}}}
    ours, our_dec = hidden.copy(), dec.copy()
    ours.attrs, our_dec.attrs = record, record
    for heads, shown in (([5, 1, 7], "[5, 7]"), ([], "(none)")):
        with pytest.raises(PosctxError) as info:
            dissect_attention(ours, our_dec, 0, model=gpt2, heads=heads)
        assert str(info.value) == f"heads {shown} do not exist: layer 0 has heads 0..1"


def _parts(causal: bool) -> xr.Dataset:
    rng = np.random.default_rng(1)
    t = np.arange(2, 8)
    toeplitz = np.cos(0.5 * (t[:, None] - t[None, :]))
    data = {name: (SCORE_DIMS, rng.normal(size=(3, 2, 6, 6))) for name in (*PARTS, "scores")}
    data["pos_pos"] = (SCORE_DIMS, np.broadcast_to(toeplitz, (3, 2, 6, 6)).copy())
    return xr.Dataset(
        data,
        coords={"context": [0, 4, 5], "head": [1, 3], "query": t, "key": t},
        attrs={"causal": causal, "layer": 2, "layer_name": "block_2"},
    )


@pytest.mark.parametrize("causal", [False, True])
def test_toeplitz_share_per_head_and_part(causal: bool) -> None:
    ds = _parts(causal)
    shares = toeplitz_share(ds)
    assert shares.share.dims == ("head", "part") and shares["head"].values.tolist() == [1, 3]
    assert shares.part.values.tolist() == [*PARTS, "scores"]
    np.testing.assert_allclose(shares.share.sel(part="pos_pos"), 1.0)
    t = ds["query"].values
    share, std, chance = toeplitz_kernel(ds.ctx_ctx.values, t, t, causal=causal)
    np.testing.assert_array_equal(shares.share.sel(part="ctx_ctx").values, share)
    np.testing.assert_array_equal(shares["std"].sel(part="ctx_ctx").values, std)
    assert shares.attrs == {"chance": chance, "layer": 2, "layer_name": "block_2", "n_contexts": 3}
    assert chance == pytest.approx(5 / 20 if causal else 10 / 35)


def test_the_table_shows_each_head_and_the_mean() -> None:
    shares = toeplitz_share(_parts(False))
    lines = format_toeplitz_table(shares).splitlines()
    assert lines[0] == (
        f"layer 2: Toeplitz share per head (sd in brackets); chance {shares.attrs['chance']:.3f}"
    )
    assert lines[1].split() == ["head", *PARTS, "scores"]
    assert len(lines) == 2 + 2 * 3  # a share line and an sd line per head, and for the mean
    assert (
        lines[2].split()[0] == "1" and lines[4].split()[0] == "3" and lines[6].split()[0] == "mean"
    )
    assert float(lines[2].split()[1]) == pytest.approx(1.0)
    mean = np.nanmean(shares.share.values, axis=0)
    assert [float(v) for v in lines[6].split()[1:]] == pytest.approx(
        mean.round(3).tolist(), abs=1e-3
    )
    assert lines[7].strip().startswith("(")
