"""posctx.geometry.kernels.smoothness: the pos Gram matrix's energy at low DCT frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from posctx.geometry.kernels.smoothness import (
    dct_basis,
    dct_spectrum,
    low_frequency_share,
    normalise_rows,
    smoothness,
)


def test_rows_become_unit_vectors_and_zero_rows_stay_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]], dtype=np.float32)
    out = normalise_rows(x)
    assert out.dtype == np.float64
    assert out.tolist() == [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]]
    np.testing.assert_allclose(normalise_rows(np.ones((2, 3, 4))), 0.5)  # any leading axes


def test_a_single_frequency_has_all_its_energy_there() -> None:
    f = dct_basis(8)
    for k in (0, 2, 7):
        gram = np.outer(f[:, k], f[:, k])
        spectrum = dct_spectrum(gram)
        expected = np.zeros((8, 8))
        expected[k, k] = 1.0
        np.testing.assert_allclose(spectrum, expected, atol=1e-12)
        assert low_frequency_share(spectrum, k + 1) == pytest.approx(1.0)
        assert low_frequency_share(spectrum, k) == pytest.approx(0.0, abs=1e-20)


def test_low_frequency_share_is_of_the_squared_entries() -> None:
    spectrum = np.array([[1.0, 2.0], [-2.0, 4.0]])  # energies 1, 4, 4, 16
    assert low_frequency_share(spectrum, 1) == pytest.approx(1 / 25)
    assert low_frequency_share(spectrum, 2) == 1.0
    assert np.isnan(low_frequency_share(np.zeros((3, 3)), 1))


def test_the_shuffled_baseline_averages_seeded_permutations() -> None:
    rng = np.random.default_rng(0)
    pos = np.cumsum(rng.normal(size=(24, 5)), axis=0)  # a random walk: smooth-ish
    share, shuffled = smoothness(pos, 4, np.random.default_rng(7), n_shuffles=5)
    p = normalise_rows(pos)
    gram = p @ p.T
    assert share == low_frequency_share(dct_spectrum(gram), 4)
    perms = np.random.default_rng(7)
    expected = [
        low_frequency_share(dct_spectrum(gram[np.ix_(perm, perm)]), 4)
        for perm in (perms.permutation(24) for _ in range(5))
    ]
    assert shuffled == pytest.approx(np.mean(expected), rel=1e-12)
    assert share > shuffled


def test_rows_of_one_direction_are_smooth_in_any_order() -> None:
    pos = np.outer(np.arange(1.0, 11.0), [1.0, 2.0])  # every row the same direction
    share, shuffled = smoothness(pos, 1, np.random.default_rng(0), n_shuffles=3)
    assert share == pytest.approx(1.0) and shuffled == pytest.approx(1.0)
