"""posctx.geometry.kernels.orthogonality: numerical rank, subspaces and principal angles."""

from __future__ import annotations

import numpy as np
import pytest

from posctx.geometry.kernels.orthogonality import (
    basis_from_svd,
    cross_cosines,
    numerical_rank,
    principal_cosines,
    top_subspace,
)


def test_numerical_rank_is_numpys_matrix_rank() -> None:
    rng = np.random.default_rng(0)
    for rank in range(4):
        x = rng.normal(size=(9, rank)) @ rng.normal(size=(rank, 6))
        s = np.linalg.svd(x, compute_uv=False)
        assert numerical_rank(s, x.shape) == np.linalg.matrix_rank(x) == rank
    assert numerical_rank(np.zeros(0), (0, 3)) == 0


def test_the_basis_is_capped_by_k_and_by_the_rank() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 2)) @ rng.normal(size=(2, 5))  # rank 2 in R^5
    assert top_subspace(x, 4).shape == (5, 2)
    assert top_subspace(x, 1).shape == (5, 1)
    basis = top_subspace(x, 4)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    # It spans the row space: projecting the rows on it changes nothing.
    np.testing.assert_allclose(x @ basis @ basis.T, x, atol=1e-10)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_array_equal(basis_from_svd(s, vt, 10, 4), basis)


def test_principal_cosines_of_known_angles() -> None:
    e = np.eye(4)
    theta = 0.3
    tilted = np.stack([e[0], np.cos(theta) * e[1] + np.sin(theta) * e[2]], axis=1)
    np.testing.assert_allclose(
        principal_cosines(e[:, :2], tilted), [1.0, np.cos(theta)], atol=1e-12
    )
    assert principal_cosines(e[:, :2], e[:, :0]).shape == (0,)
    assert principal_cosines(e[:, :0], e[:, :2]).size == 0
    assert principal_cosines(e[:, :2], e[:, :2] * (1 + 1e-12)).max() <= 1.0  # clipped


def test_cross_cosines_ignore_sign_and_length_and_zero_rows_count_as_orthogonal() -> None:
    a = np.array([[2.0, 0.0], [0.0, 0.0]])
    b = np.array([[-3.0, 0.0], [1.0, 1.0]])
    max_cos, mean_cos = cross_cosines(a, b)
    assert max_cos == pytest.approx(1.0)
    assert mean_cos == pytest.approx((1.0 + np.sqrt(0.5)) / 4)
