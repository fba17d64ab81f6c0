"""posctx.geometry.kernels.spiral: principal coordinates of the pos curve and its shape."""

from __future__ import annotations

import numpy as np
import pytest

from posctx.geometry.kernels.spiral import (
    curve_smoothness,
    pca_scores,
    scores_from_svd,
    winding_turns,
)


def test_scores_are_coordinates_on_the_top_right_singular_vectors() -> None:
    x = np.random.default_rng(0).normal(size=(12, 5))
    scores = pca_scores(x, 3)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(np.abs(scores), np.abs(x @ vt[:3].T), rtol=1e-10)
    np.testing.assert_allclose(scores, scores_from_svd(u, s, 3))
    # The sign is fixed: each component's largest-magnitude coordinate is positive.
    top = scores[np.argmax(np.abs(scores), axis=0), np.arange(3)]
    assert (top > 0).all()
    np.testing.assert_allclose(pca_scores(-x, 3), scores, rtol=1e-10)  # sign-free


def test_components_beyond_the_rank_are_zero_columns() -> None:
    x = np.random.default_rng(1).normal(size=(4, 2))
    scores = pca_scores(x, 5)
    assert scores.shape == (4, 5)
    assert not scores[:, 2:].any() and scores[:, :2].any()


def test_curve_smoothness_of_straight_and_zigzag_lines() -> None:
    line = np.outer(np.arange(10.0), [1.0, 2.0])
    step_cos, rough = curve_smoothness(line)
    assert step_cos == pytest.approx(1.0)
    # steps of |(1, 2)|^2 = 5; mean squared distance from the middle: 5 * 8.25
    assert rough == pytest.approx(5 / (2 * 5 * 8.25))
    zigzag = np.array([[0.0, 0.0], [1.0, 0.0]] * 5)
    assert curve_smoothness(zigzag)[0] == pytest.approx(-1.0)


def test_curves_too_short_or_without_spread_give_nan() -> None:
    assert np.isnan(curve_smoothness(np.array([[0.0, 0.0], [1.0, 1.0]]))[0])  # one step
    assert np.isnan(curve_smoothness(np.ones((5, 3)))[1])  # every point the same


def test_winding_counts_net_turns_around_the_centroid() -> None:
    t = np.arange(40) / 40
    circle = np.stack([np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)], axis=1)
    assert winding_turns(circle) == pytest.approx(39 / 40)
    assert winding_turns(circle[::-1]) == pytest.approx(39 / 40)  # either direction
    there_and_back = np.concatenate([circle[:20], circle[19::-1]])
    assert winding_turns(there_and_back) == pytest.approx(0.0, abs=1e-12)
    shifted = circle + [5.0, -3.0]  # turns around its own centroid; a third column is unused
    assert winding_turns(np.hstack([shifted, np.ones((40, 1))])) == pytest.approx(39 / 40)
