"""posctx.geometry.kernels.spectra: singular values, from the matrix or its Gram, and ranks."""

from __future__ import annotations

import numpy as np
import pytest

from posctx.geometry.kernels.spectra import (
    default_screenot_k,
    energy_rank,
    explained_share,
    gram_spectrum,
    screenot_threshold,
    singular_values,
)


def test_singular_values_are_numpys_in_float64_largest_first() -> None:
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    s = singular_values(x)
    assert s.dtype == np.float64 and (np.diff(s) <= 0).all()
    np.testing.assert_allclose(s, np.linalg.svd(x.astype(np.float64), compute_uv=False), rtol=1e-12)


@pytest.mark.parametrize("shape", [(9, 4), (3, 6)])
def test_the_gram_spectrum_equals_the_singular_values(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(1).normal(size=shape)
    s = gram_spectrum(x.T @ x)
    assert s.shape == (shape[1],)  # a wide matrix: its extra values are zeros, not NaN
    expected = np.zeros(shape[1])
    expected[: min(shape)] = np.linalg.svd(x, compute_uv=False)
    np.testing.assert_allclose(s, expected, rtol=1e-10, atol=1e-7)
    assert not np.isnan(s).any()


def test_rounding_below_zero_is_clipped() -> None:
    assert gram_spectrum(np.diag([4.0, -1e-18])).tolist() == [2.0, 0.0]


def test_energy_rank_counts_an_exact_share_as_reached() -> None:
    assert energy_rank(np.array([1.0, 1.0]), 0.5) == 1
    assert energy_rank(np.array([1.0, 3.0, 1.0]), 0.9) == 2  # order of s does not matter
    assert energy_rank(np.array([1.0, 1.0, 1.0, 1.0]), 1.0) == 4


def test_explained_share_takes_the_largest_values_first() -> None:
    assert explained_share(np.array([1.0, 3.0]), 1) == 0.75
    assert explained_share(np.array([1.0, 3.0]), 5) == 1.0
    assert explained_share(np.array([2.0, 2.0]), 0) == 0.0
    assert np.isnan(explained_share(np.zeros(3), 1))


@pytest.mark.parametrize(
    ("shape", "k"),
    [((127, 384), 20), ((384, 127), 20), ((10, 384), 4), ((4, 4), 1), ((2, 9), 0), ((1, 1), 0)],
)
def test_the_default_screenot_bound_fits_its_imputation(shape: tuple[int, int], k: int) -> None:
    assert default_screenot_k(*shape) == k
    assert k == 0 or 2 * k + 1 < min(shape)


def test_screenot_uses_the_default_bound_when_none_is_given() -> None:
    rng = np.random.default_rng(2)
    x = 5 * rng.normal(size=(40, 1)) @ rng.normal(size=(1, 30)) / np.sqrt(30)
    x += rng.normal(size=(40, 30)) / np.sqrt(30)
    assert screenot_threshold(x) == screenot_threshold(x, default_screenot_k(40, 30))
    threshold, rank = screenot_threshold(x)
    s = singular_values(x)
    assert rank == 1 == int((s > threshold).sum())
