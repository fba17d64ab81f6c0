"""posctx.geometry.kernels.clusters: topic labels, and how well topics separate contexts."""

from __future__ import annotations

import numpy as np
import pytest

from posctx.geometry.kernels.clusters import cluster_scores, label_codes, topic_similarity


def test_label_codes_from_any_string_dtype() -> None:
    names = ["code", "prose", "code", "docs"]
    expected = [0, 2, 0, 1]
    assert label_codes(names).tolist() == expected
    assert label_codes(np.array(names, dtype=object)).tolist() == expected
    assert label_codes(np.array(names, dtype=np.dtypes.StringDType())).tolist() == expected
    assert label_codes(np.array([[3, 1], [3, 2]])).tolist() == [2, 0, 2, 1]  # raveled
    assert label_codes(["a"]).dtype == np.intp


def test_similarity_is_cosine_geometry() -> None:
    rng = np.random.default_rng(0)
    x, topics = rng.normal(size=(12, 4)), np.arange(12) % 3
    scaled = x * rng.uniform(0.1, 10.0, size=(12, 1))
    assert topic_similarity(scaled, topics) == pytest.approx(topic_similarity(x, topics))
    flipped = x * np.where(np.arange(12) % 2, 1.0, -1.0)[:, None]  # |cos|: signs do not matter
    assert topic_similarity(flipped, topics) == pytest.approx(topic_similarity(x, topics))


def test_a_topic_of_one_context_has_no_within_pair() -> None:
    within, between = topic_similarity(np.eye(3), ["a", "b", "c"])
    assert np.isnan(within) and between == 0.0


def test_cluster_scores_are_nan_without_two_topics_or_enough_rows() -> None:
    x = np.random.default_rng(1).normal(size=(6, 3))
    assert all(np.isnan(v) for v in cluster_scores(x, np.zeros(6), seed=0))
    assert all(np.isnan(v) for v in cluster_scores(x[:3], [0, 1, 2], seed=0))  # rows <= k


def test_cluster_scores_see_directions_not_lengths() -> None:
    rng = np.random.default_rng(2)
    centres = np.eye(3) * 4
    topics = np.arange(30) % 3
    x = centres[topics] + rng.normal(size=(30, 3))
    scores = cluster_scores(x, topics, seed=0)
    scaled = cluster_scores(x * rng.uniform(0.5, 5.0, size=(30, 1)), topics, seed=0)
    assert scores == pytest.approx(scaled)
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(1.0)
    # Labels that say nothing about the rows: chance agreement, a negative silhouette.
    ari, nmi, silhouette = cluster_scores(x, np.arange(30) % 2, seed=0)
    assert abs(ari) < 0.1 and silhouette < 0.05
