"""Context clusters: within/between-topic similarity and k-means scores against topics."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from posctx.geometry.kernels.smoothness import normalise_rows
from posctx.types import Float64Array, IndexArray


def topic_similarity(
    x: npt.ArrayLike, topics: npt.ArrayLike, ids: npt.ArrayLike | None = None
) -> tuple[float, float]:
    """Mean ``|cos|`` between rows of ``x`` of the same topic (within) and of different ones.

    Pairs of distinct rows; a row is never paired with itself, nor, given ``ids`` (a
    bootstrap resample repeats contexts), with a copy of itself. NaN where no pair exists.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, -3.0]])
    >>> within, between = topic_similarity(x, ["a", "a", "b", "b"])
    >>> within > 0.99, between < 0.1
    (True, True)
    """
    xn = normalise_rows(x)
    labels = label_codes(topics)
    cos = np.abs(xn @ xn.T)
    same = labels[:, np.newaxis] == labels[np.newaxis, :]
    np.fill_diagonal(same, False)
    different = labels[:, np.newaxis] != labels[np.newaxis, :]
    if ids is not None:
        source = np.asarray(ids)
        copy = source[:, np.newaxis] == source[np.newaxis, :]
        same &= ~copy
        different &= ~copy
    within = float(cos[same].mean()) if same.any() else float("nan")
    between = float(cos[different].mean()) if different.any() else float("nan")
    return within, between


def label_codes(topics: npt.ArrayLike) -> IndexArray:
    """Integer codes ``0..k-1`` of any labels (strings of any numpy string dtype included).

    Examples
    --------
    >>> label_codes(["b", "a", "b"]).tolist()
    [1, 0, 1]
    """
    # Through Python str: numpy's StringDType (as read from Zarr) cannot be cast to "<U".
    names = np.array([str(t) for t in np.asarray(topics).ravel()])
    _, codes = np.unique(names, return_inverse=True)
    out: IndexArray = codes.astype(np.intp)
    return out


def cluster_scores(
    x: npt.ArrayLike,
    topics: npt.ArrayLike,
    seed: int,
    centres: npt.ArrayLike | None = None,
) -> tuple[float, float, float]:
    """How well topics separate the rows of ``x`` (row-normalised, i.e. cosine geometry).

    k-means with ``k`` = number of topics (10 seeded starts) is scored against the topics
    with the adjusted Rand index and normalised mutual information; the silhouette is that
    of the topic labels themselves under the cosine distance. All NaN with fewer than two
    topics, or fewer than ``k + 1`` rows.

    Returns
    -------
    ari, nmi, silhouette : float

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(3) * 5
    >>> x = centres[np.arange(30) % 3] + rng.normal(size=(30, 3))
    >>> ari, nmi, sil = cluster_scores(x, np.arange(30) % 3, seed=0)
    >>> ari > 0.9, nmi > 0.9, sil > 0.5
    (True, True, True)
    """
    # scikit-learn ships no type information (no py.typed).
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]
    from sklearn.metrics import (  # type: ignore[import-untyped]
        adjusted_rand_score,
        normalized_mutual_info_score,
        silhouette_score,
    )

    xn = normalise_rows(x)
    labels = label_codes(topics)
    k = len(np.unique(labels))
    if k < 2 or xn.shape[0] <= k:
        return float("nan"), float("nan"), float("nan")
    kmeans = (
        KMeans(n_clusters=k, n_init=10, random_state=seed)
        if centres is None
        else KMeans(n_clusters=k, init=np.asarray(centres), n_init=1, random_state=seed)
    )
    predicted = kmeans.fit_predict(xn)
    return (
        float(adjusted_rand_score(labels, predicted)),
        float(normalized_mutual_info_score(labels, predicted)),
        float(silhouette_score(xn, labels, metric="cosine")),
    )


def kmeans_centres(x: npt.ArrayLike, topics: npt.ArrayLike, seed: int) -> Float64Array | None:
    """The centres of :func:`cluster_scores`' k-means (None where it gives NaN).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.eye(2)[np.arange(20) % 2] + 0.01
    >>> kmeans_centres(x, np.arange(20) % 2, seed=0).shape
    (2, 2)
    """
    from sklearn.cluster import KMeans

    xn = normalise_rows(x)
    k = len(np.unique(label_codes(topics)))
    if k < 2 or xn.shape[0] <= k:
        return None
    centres: Float64Array = (
        KMeans(n_clusters=k, n_init=10, random_state=seed).fit(xn).cluster_centers_
    )
    return centres


__all__ = [
    "kmeans_centres",
    "topic_similarity",
    "label_codes",
    "cluster_scores",
]
