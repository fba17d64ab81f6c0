"""posctx.geometry.kernels.layer: all of one layer's measurements, samples and JSON values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posctx.geometry.kernels.layer import finite_or_none, layer_geometry, sample_indices
from posctx.geometry.kernels.params import SCALAR_NAMES, GeometryParams
from posctx.geometry.kernels.spectra import screenot_threshold
from posctx.testing import planted_components


@pytest.fixture(scope="module")
def parts() -> dict[str, np.ndarray]:
    return planted_components(30, 16, 1, 8, seed=3)


def _measure(parts: dict[str, np.ndarray], **params: object) -> dict[str, object]:
    return layer_geometry(
        parts["pos"][:, 0],
        parts["ctx"][:, 0],
        parts["topic"],
        GeometryParams(**params),  # type: ignore[arg-type]
        np.random.default_rng(0),
    )


def test_every_scalar_and_the_vectors_are_measured(parts: dict[str, np.ndarray]) -> None:
    out = _measure(parts, subspace_dim=5)
    assert set(out) == {*SCALAR_NAMES, "pos_sv", "orth_principal_cos", "orth_principal_cos_random"}
    s = np.linalg.svd(parts["pos"][:, 0], compute_uv=False)
    np.testing.assert_allclose(out["pos_sv"], s, rtol=1e-12)  # type: ignore[arg-type]
    assert out["pos_norm"] == pytest.approx(s[0])
    assert out["pos_rank99"] == 3  # the planted helix has rank 3
    assert out["spiral_pc_share"] == pytest.approx(1.0)  # all of pos in its top 3 components
    assert out["ctx_ari"] == pytest.approx(1.0)  # the planted topics are recovered


def test_principal_cosines_are_padded_to_the_subspace_dim(parts: dict[str, np.ndarray]) -> None:
    out = _measure(parts, subspace_dim=6)
    cos = np.asarray(out["orth_principal_cos"])
    assert cos.shape == (6,)
    assert np.isfinite(cos[:3]).all() and np.isnan(cos[3:]).all()  # pos has rank 3
    assert out["orth_top_principal_cos"] == cos[0]


def test_a_screenot_bound_beyond_the_imputation_is_lowered(parts: dict[str, np.ndarray]) -> None:
    pos = parts["pos"][:, 0]  # 16 x 8: the imputation allows k <= 3
    out = _measure(parts, screenot_k=50)
    assert (out["pos_screenot_threshold"], out["pos_screenot_rank"]) == screenot_threshold(pos, 3)


def test_the_same_generator_state_gives_the_same_measurements(parts: dict[str, np.ndarray]) -> None:
    a, b = _measure(parts), _measure(parts)
    for name in SCALAR_NAMES:
        assert a[name] == b[name] or (math.isnan(a[name]) and math.isnan(b[name])), name  # type: ignore[arg-type]


def test_sample_indices_are_a_seeded_sorted_sample_without_repeats() -> None:
    sample = sample_indices(1000, 50, seed=4)
    assert sample.size == 50 and np.unique(sample).size == 50 and (np.diff(sample) > 0).all()
    np.testing.assert_array_equal(sample, sample_indices(1000, 50, seed=4))
    assert not np.array_equal(sample, sample_indices(1000, 50, seed=5))
    assert sample_indices(50, 50, seed=4).tolist() == list(range(50))


def test_values_are_made_json_safe_all_the_way_down() -> None:
    value = {
        "a": [np.float32(1.5), float("inf"), np.nan],
        1: (np.int64(3), np.bool_(True)),
        "arr": np.array([[0.5, np.nan]]),
        "text": "kept",
        "none": None,
    }
    assert finite_or_none(value) == {
        "a": [1.5, None, None],
        "1": [3, True],
        "arr": [[0.5, None]],
        "text": "kept",
        "none": None,
    }
