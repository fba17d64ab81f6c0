"""Numpy kernels of the geometry measurements: one layer's arrays in, numbers out.

The bottom of the geometry's two numeric layers (numpy kernels -> :mod:`posctx.geometry.api`);
nothing here imports xarray or dask. Every function takes plain arrays of one layer:

* ``pos`` ``(T, d)``: position means, centred over positions;
* ``ctx`` ``(C, d)``: context means, centred over contexts (possibly a sample of them);
* ``topics`` ``(C,)``: one label per context.

scikit-learn (k-means and cluster scores) and ``screenot`` (the optimal singular value
threshold) are imported inside the functions that use them, so importing this module stays
light. Formulas and their sources are in ``docs/geometry.md``.

Examples
--------
>>> import numpy as np
>>> t = np.arange(32) / 32
>>> circle = np.stack([np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)], axis=1)
>>> round(stable_rank(singular_values(circle)), 3)
2.0
>>> round(winding_turns(circle), 3)
0.969
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: Names of the per-layer scalar measurements returned by :func:`layer_geometry`.
SCALAR_NAMES = (
    "pos_stable_rank",
    "pos_screenot_rank",
    "pos_screenot_threshold",
    "pos_screenot_share",
    "pos_rank90",
    "pos_rank99",
    "pos_norm",
    "smooth_low_share",
    "smooth_low_share_shuffled",
    "spiral_pc_share",
    "spiral_step_cos",
    "spiral_roughness",
    "spiral_turns",
    "ctx_within",
    "ctx_between",
    "ctx_within_pc",
    "ctx_between_pc",
    "ctx_ari",
    "ctx_nmi",
    "ctx_silhouette",
    "orth_max_cos",
    "orth_mean_cos",
    "orth_max_cos_random",
    "orth_mean_cos_random",
    "orth_top_principal_cos",
    "orth_top_principal_cos_random",
)


@dataclasses.dataclass(frozen=True)
class GeometryParams:
    """Settings of the geometry measurements; validated on construction, stored with results.

    Parameters
    ----------
    n_low_frequencies
        ``k`` of the smoothness measure: the share of the DCT energy of the pos Gram matrix in
        its lowest ``k`` x ``k`` frequencies.
    n_pcs
        Principal components of ctx kept for the projected within/between similarity (the
        paper uses 20).
    subspace_dim
        ``k`` of the principal angles between the top-``k`` pos and ctx subspaces (fewer
        where either matrix has lower numerical rank).
    screenot_k
        Upper bound on the rank of pos given to ScreeNOT; ``None`` means
        ``min(20, (min(T, d) - 2) // 2)``, the largest its imputation allows up to 20.
    n_random
        Random draws (positions shuffled, pos set rotated) averaged for each baseline.
    max_contexts
        Contexts sampled (seeded, uniformly) for pairwise measures, whose cost grows with
        the square of the number of contexts; all are used when there are fewer.
    seed
        Seeds the context sample, k-means and every random baseline.

    Examples
    --------
    >>> GeometryParams(n_pcs=10).n_pcs
    10
    >>> GeometryParams(n_random=0)
    Traceback (most recent call last):
    ...
    ValueError: n_random must be >= 1, got 0
    """

    n_low_frequencies: int = 8
    n_pcs: int = 20
    subspace_dim: int = 10
    screenot_k: int | None = None
    n_random: int = 8
    max_contexts: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("n_low_frequencies", "n_pcs", "subspace_dim", "n_random", "max_contexts"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{field} must be >= 1, got {value!r}")
        if self.screenot_k is not None and self.screenot_k < 0:
            raise ValueError(f"screenot_k must be >= 0 or None, got {self.screenot_k}")

    def to_json(self) -> str:
        """The settings as a JSON object (for attrs and metrics.json)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# --- spectra ---------------------------------------------------------------------------------


def singular_values(x: npt.ArrayLike) -> FloatArray:
    """Singular values of a matrix in float64, largest first.

    Examples
    --------
    >>> singular_values([[3.0, 0.0], [0.0, 4.0]]).tolist()
    [4.0, 3.0]
    """
    s: FloatArray = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    return s


def gram_spectrum(gram: npt.ArrayLike) -> FloatArray:
    """Singular values of any matrix ``X`` from its Gram matrix ``X^T X``, largest first.

    Eigenvalues that rounding made slightly negative are clipped to zero. Forming the Gram
    squares the condition number: values below about ``1e-7 s_1`` are rounding noise.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    >>> gram_spectrum(x.T @ x).tolist()
    [4.0, 3.0]
    """
    eig = np.linalg.eigvalsh(np.asarray(gram, dtype=np.float64))[::-1]
    s: FloatArray = np.sqrt(np.clip(eig, 0.0, None))
    return s


def stable_rank(s: FloatArray) -> float:
    """``sum_j s_j^2 / s_1^2`` of singular values ``s`` (NaN for a zero matrix).

    Examples
    --------
    >>> import numpy as np
    >>> stable_rank(np.array([2.0, 1.0, 1.0]))
    1.5
    """
    top = float(np.max(s)) if s.size else 0.0
    return float(np.sum(s**2) / top**2) if top > 0 else float("nan")


def energy_rank(s: FloatArray, share: float) -> int:
    """Fewest components whose squared singular values reach ``share`` of the total.

    Examples
    --------
    >>> import numpy as np
    >>> energy_rank(np.array([3.0, 1.0, 1.0]), 0.9), energy_rank(np.array([3.0, 1.0, 1.0]), 0.99)
    (2, 3)
    """
    energy = np.sort(s)[::-1] ** 2
    total = energy.sum()
    if total <= 0:
        return 0
    # A hair below `share` so that an exact share is not missed through rounding.
    return int(np.searchsorted(np.cumsum(energy) / total, share - 1e-12) + 1)


def default_screenot_k(n_rows: int, n_cols: int) -> int:
    """The default rank bound for ScreeNOT: ``min(20, (min(n_rows, n_cols) - 2) // 2)``.

    ScreeNOT's imputation needs ``2k + 1 < min(n_rows, n_cols)``.

    Examples
    --------
    >>> default_screenot_k(127, 384), default_screenot_k(10, 384), default_screenot_k(3, 5)
    (20, 4, 0)
    """
    return max(0, min(20, (min(n_rows, n_cols) - 2) // 2))


def screenot_threshold(x: npt.ArrayLike, k: int | None = None) -> tuple[float, int]:
    """ScreeNOT (Donoho, Gavish & Romanov 2023): optimal hard threshold and the rank it keeps.

    Calls the authors' package ``screenot`` on ``x`` scaled to a unit top singular value
    (its bisection stops at an absolute tolerance of 1e-5, so the scale would otherwise
    matter) and scales the threshold back.

    Parameters
    ----------
    x
        A matrix, signal plus noise.
    k
        Upper bound on the signal rank (may be loose); default :func:`default_screenot_k`.

    Returns
    -------
    threshold : float
        Singular values above it are kept.
    rank : int
        How many singular values exceed the threshold.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> signal = 8 * rng.normal(size=(200, 2)) @ rng.normal(size=(2, 300)) / np.sqrt(300)
    >>> _, rank = screenot_threshold(signal + rng.normal(size=(200, 300)) / np.sqrt(300))
    >>> rank
    2
    """
    from screenot import adaptiveHardThresholding  # type: ignore[import-untyped]  # no stubs

    y = np.asarray(x, dtype=np.float64)
    top = float(np.linalg.norm(y, 2)) if y.size else 0.0
    if top == 0.0:
        return 0.0, 0
    if k is None:
        k = default_screenot_k(*y.shape)
    _, threshold, rank = adaptiveHardThresholding(y / top, k)
    return float(threshold) * top, int(rank)


def explained_share(s: FloatArray, rank: int) -> float:
    """Share of the sum of singular values carried by the top ``rank`` (as the paper reports).

    Examples
    --------
    >>> import numpy as np
    >>> explained_share(np.array([3.0, 1.0]), 1)
    0.75
    """
    total = float(np.sum(s))
    return float(np.sum(np.sort(s)[::-1][:rank]) / total) if total > 0 else float("nan")


# --- smoothness ------------------------------------------------------------------------------


def normalise_rows(x: npt.ArrayLike) -> FloatArray:
    """Rows scaled to unit length; zero rows stay zero.

    Examples
    --------
    >>> normalise_rows([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    a = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    out: FloatArray = a / np.where(norms > 0, norms, 1.0)
    return out


def dct_basis(n: int) -> FloatArray:
    """Orthonormal DCT-II basis as an ``(n, n)`` matrix whose column ``k`` is frequency ``k``.

    ``F[t, k] = sqrt(2/n) c_k cos(pi (2t + 1) k / (2n))`` with ``c_0 = 1/sqrt(2)``, else 1.

    Examples
    --------
    >>> import numpy as np
    >>> f = dct_basis(5)
    >>> bool(np.allclose(f.T @ f, np.eye(5)))
    True
    >>> bool(np.allclose(f[:, 0], 1 / np.sqrt(5)))
    True
    """
    t = np.arange(n)[:, np.newaxis]
    k = np.arange(n)[np.newaxis, :]
    f: FloatArray = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
    f[:, 0] /= np.sqrt(2.0)
    return f


def dct_spectrum(gram: npt.ArrayLike) -> FloatArray:
    """``F^T G F`` for the orthonormal DCT-II basis ``F``: ``G`` in frequency coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> spec = dct_spectrum(np.ones((4, 4)))  # constant: all energy at frequency (0, 0)
    >>> round(float(spec[0, 0]), 6), round(float(np.abs(spec).sum() - spec[0, 0]), 6)
    (4.0, 0.0)
    """
    g = np.asarray(gram, dtype=np.float64)
    f = dct_basis(g.shape[0])
    out: FloatArray = f.T @ g @ f
    return out


def low_frequency_share(spectrum: FloatArray, k: int) -> float:
    """Share of ``sum spectrum**2`` (squared Frobenius norm) in the lowest ``k x k`` block.

    Examples
    --------
    >>> import numpy as np
    >>> low_frequency_share(np.diag([3.0, 1.0, 0.0]), 1)
    0.9
    """
    energy = spectrum**2
    total = float(energy.sum())
    return float(energy[:k, :k].sum() / total) if total > 0 else float("nan")


def smoothness(
    pos: npt.ArrayLike, k: int, rng: np.random.Generator, n_shuffles: int = 1
) -> tuple[float, float]:
    """Low-frequency share of the Gram matrix of row-normalised ``pos``, and the same shuffled.

    The baseline permutes the positions at random (``n_shuffles`` times, averaged), which
    keeps the vectors and destroys only their order.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 1, 64)[:, None]
    >>> smooth = np.hstack([np.cos(np.pi * t), np.sin(np.pi * t), t])
    >>> share, shuffled = smoothness(smooth, 4, np.random.default_rng(0))
    >>> share > 0.99 > 0.5 > shuffled
    True
    """
    p = normalise_rows(pos)
    gram = p @ p.T
    share = low_frequency_share(dct_spectrum(gram), k)
    shuffled = []
    for _ in range(n_shuffles):
        perm = rng.permutation(gram.shape[0])
        shuffled.append(low_frequency_share(dct_spectrum(gram[np.ix_(perm, perm)]), k))
    return share, float(np.mean(shuffled))


# --- spiral ----------------------------------------------------------------------------------


def pca_scores(x: npt.ArrayLike, n: int) -> FloatArray:
    """Coordinates of the rows of ``x`` on its top ``n`` right singular vectors.

    ``x`` is used as given (pos and ctx are already centred), so these are principal
    components. Missing components (``n`` above the rank bound) are zero columns.

    Examples
    --------
    >>> pca_scores([[0.0, -2.0], [0.0, 1.0], [0.0, 1.0]], 1).round(6).tolist()
    [[2.0], [-1.0], [-1.0]]
    """
    a = np.asarray(x, dtype=np.float64)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return _scores(u, s, n)


def _scores(u: FloatArray, s: FloatArray, n: int) -> FloatArray:
    """:func:`pca_scores` from a thin SVD ``u, s`` (computed once per matrix and layer)."""
    scores = u[:, :n] * s[:n]
    # Fix the arbitrary sign: the largest-magnitude coordinate of each component is positive.
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(scores.shape[1])])
    scores = scores * np.where(signs == 0, 1.0, signs)
    if scores.shape[1] < n:
        scores = np.hstack([scores, np.zeros((u.shape[0], n - scores.shape[1]))])
    out: FloatArray = scores
    return out


def curve_smoothness(points: npt.ArrayLike) -> tuple[float, float]:
    """Step-to-step smoothness of a curve through ``points`` ``(n, k)``, in order.

    Returns
    -------
    step_cos : float
        Mean cosine between consecutive steps ``z[t+1] - z[t]`` and ``z[t] - z[t-1]``:
        near 1 for a smooth curve; negative for independent points (about -0.43 in three
        dims: consecutive steps are correlated -1/2, and their mean cosine tends to that as
        the dims grow).
    roughness : float
        Mean squared step over twice the mean squared distance from the centroid: near 0
        for a smooth curve, 1 in expectation for independent points.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 2 * np.pi, 100)
    >>> cos, rough = curve_smoothness(np.stack([np.cos(t), np.sin(t)], axis=1))
    >>> cos > 0.99, rough < 0.01
    (True, True)
    """
    z = np.asarray(points, dtype=np.float64)
    steps = np.diff(z, axis=0)
    unit = normalise_rows(steps)
    step_cos = float(np.mean(np.sum(unit[1:] * unit[:-1], axis=1))) if len(steps) > 1 else float("nan")
    spread = float(np.mean(np.sum((z - z.mean(axis=0)) ** 2, axis=1)))
    rough = float(np.mean(np.sum(steps**2, axis=1)) / (2 * spread)) if spread > 0 else float("nan")
    return step_cos, rough


def winding_turns(points: npt.ArrayLike) -> float:
    """Absolute accumulated angle of a 2-d curve around its centroid, in turns.

    Each step's angle is wrapped to ``(-pi, pi]``; a curve that goes once round is 1
    (less the last step back to its start).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(100) / 50  # two turns
    >>> round(winding_turns(np.stack([np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)], 1)), 2)
    1.98
    """
    z = np.asarray(points, dtype=np.float64)[:, :2]
    z = z - z.mean(axis=0)
    angle = np.arctan2(z[:, 1], z[:, 0])
    step = np.angle(np.exp(1j * np.diff(angle)))
    return float(abs(step.sum()) / (2 * np.pi))


# --- context clusters ------------------------------------------------------------------------


def topic_similarity(x: npt.ArrayLike, topics: npt.ArrayLike) -> tuple[float, float]:
    """Mean ``|cos|`` between rows of ``x`` of the same topic (within) and of different ones.

    Pairs of distinct rows; a row is never paired with itself. NaN where no pair exists.

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
    within = float(cos[same].mean()) if same.any() else float("nan")
    between = float(cos[different].mean()) if different.any() else float("nan")
    return within, between


def label_codes(topics: npt.ArrayLike) -> IntArray:
    """Integer codes ``0..k-1`` of any labels (strings of any numpy string dtype included).

    Examples
    --------
    >>> label_codes(["b", "a", "b"]).tolist()
    [1, 0, 1]
    """
    # Through Python str: numpy's StringDType (as read from Zarr) cannot be cast to "<U".
    names = np.array([str(t) for t in np.asarray(topics).ravel()])
    _, codes = np.unique(names, return_inverse=True)
    out: IntArray = codes.astype(np.intp)
    return out


def cluster_scores(
    x: npt.ArrayLike, topics: npt.ArrayLike, seed: int
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
    predicted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(xn)
    return (
        float(adjusted_rand_score(labels, predicted)),
        float(normalized_mutual_info_score(labels, predicted)),
        float(silhouette_score(xn, labels, metric="cosine")),
    )


# --- orthogonality ---------------------------------------------------------------------------


def cross_cosines(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[float, float]:
    """Max and mean ``|cos|`` over all pairs of a row of ``a`` and a row of ``b``.

    Examples
    --------
    >>> cross_cosines([[1.0, 0.0]], [[0.0, 2.0], [1.0, 1.0]])
    (0.7071067811865475, 0.35355339059327373)
    """
    cos = np.abs(normalise_rows(a) @ normalise_rows(b).T)
    return float(cos.max()), float(cos.mean())


def numerical_rank(s: FloatArray, shape: tuple[int, int]) -> int:
    """Singular values above ``max(shape) * eps * s_1`` (numpy's ``matrix_rank`` rule).

    Examples
    --------
    >>> import numpy as np
    >>> numerical_rank(np.array([1.0, 1e-3, 1e-17]), (3, 3))
    2
    """
    if not s.size or s.max() == 0:
        return 0
    return int(np.sum(s > max(shape) * np.finfo(np.float64).eps * s.max()))


def top_subspace(x: npt.ArrayLike, k: int) -> FloatArray:
    """Orthonormal basis ``(d, r)`` of the top ``r = min(k, rank)`` right singular vectors.

    Examples
    --------
    >>> top_subspace([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 5).shape
    (3, 2)
    """
    a = np.asarray(x, dtype=np.float64)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    return _basis(s, vt, a.shape[0], k)


def _basis(s: FloatArray, vt: FloatArray, n_rows: int, k: int) -> FloatArray:
    """:func:`top_subspace` from a thin SVD ``s, vt`` of a matrix with ``n_rows`` rows."""
    r = min(k, numerical_rank(s, (n_rows, vt.shape[1])))
    basis: FloatArray = vt[:r].T
    return basis


def principal_cosines(a: FloatArray, b: FloatArray) -> FloatArray:
    """Cosines of the principal angles between the spans of orthonormal bases ``a``, ``b``.

    Largest first (the smallest angle first); ``min`` of the two dimensions of them.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.eye(3)
    >>> principal_cosines(e[:, :2], e[:, 1:]).round(6).tolist()
    [1.0, 0.0]
    """
    if a.shape[1] == 0 or b.shape[1] == 0:
        return np.zeros(0)
    cos = np.linalg.svd(a.T @ b, compute_uv=False)
    out: FloatArray = np.clip(cos, 0.0, 1.0)
    return out


def random_orthonormal(d: int, r: int, rng: np.random.Generator) -> FloatArray:
    """``(d, r)`` orthonormal columns spanning a uniformly random ``r``-dim subspace (Haar).

    For ``r = d`` a Haar random rotation. A matrix ``X = U S V^T`` turned by a random
    rotation ``Q`` is ``U S (Q^T V)^T``, and ``Q^T V`` is distributed as this with
    ``r = rank``: the cost is a ``d x r`` QR, not ``d x d``.

    Examples
    --------
    >>> import numpy as np
    >>> w = random_orthonormal(5, 2, np.random.default_rng(0))
    >>> w.shape, bool(np.allclose(w.T @ w, np.eye(2)))
    ((5, 2), True)
    """
    q, upper = np.linalg.qr(rng.normal(size=(d, r)))
    # Fixing the signs of R's diagonal makes Q exactly Haar (Mezzadri 2007).
    out: FloatArray = q * np.sign(np.diag(upper))
    return out


# --- second moments and norms ----------------------------------------------------------------


def gram_block(block: npt.ArrayLike, centre: npt.ArrayLike) -> FloatArray:
    """Per layer, ``sum (x - centre)(x - centre)^T`` over the rows of a ``(..., L, d)`` block.

    The dask graph in :mod:`posctx.geometry.api` runs this once per chunk and sums the
    results; the output keeps one length-1 axis per leading axis of ``block`` so that it is
    a block of a ``(..., L, d, d)`` array. Converted to float64 one layer at a time.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)  # (rows, layer, dim)
    >>> g = gram_block(x, np.zeros((2, 2)))
    >>> g.shape
    (1, 2, 2, 2)
    >>> bool(np.allclose(g[0, 1], x[:, 1].T.astype(float) @ x[:, 1]))
    True
    """
    b = np.asarray(block)
    c = np.asarray(centre, dtype=np.float64)
    n_layers, n_dims = b.shape[-2], b.shape[-1]
    out = np.empty((n_layers, n_dims, n_dims))
    for layer in range(n_layers):
        rows = b[..., layer, :].reshape(-1, n_dims).astype(np.float64) - c[layer]
        out[layer] = rows.T @ rows
    result: FloatArray = out.reshape((1,) * (b.ndim - 2) + out.shape)
    return result


def resid_gram(
    hidden_gram: FloatArray,
    mu: FloatArray,
    pos: FloatArray,
    ctx_gram: FloatArray,
    n_contexts: int,
    n_positions: int,
) -> FloatArray:
    """Residual second moment ``R^T R`` from the identity of a balanced two-way table.

    ``H^T H = CT mu mu^T + C P^T P + T X^T X + R^T R`` where ``H`` (``CT x d``) holds the
    hidden states with their mean, ``P`` (``T x d``) pos, ``X`` (``C x d``) ctx (all
    contexts: ``ctx_gram = X^T X``) and ``R`` the residual: every cross term vanishes
    because pos and ctx sum to zero and the residual sums to zero over contexts and over
    positions.

    Examples
    --------
    >>> import numpy as np
    >>> from posctx.testing import planted_components
    >>> parts = planted_components(6, 5, 1, 3)
    >>> h = parts["h"][:, :, 0].reshape(-1, 3)
    >>> pos, ctx, mu = parts["pos"][:, 0], parts["ctx"][:, 0], parts["mu"][0]
    >>> r = parts["resid"][:, :, 0].reshape(-1, 3)
    >>> bool(np.allclose(resid_gram(h.T @ h, mu, pos, ctx.T @ ctx, 6, 5), r.T @ r))
    True
    """
    n = n_contexts * n_positions
    out: FloatArray = (
        hidden_gram - n * np.outer(mu, mu) - n_contexts * (pos.T @ pos) - n_positions * ctx_gram
    )
    return out


# --- one layer -------------------------------------------------------------------------------


def layer_geometry(
    pos: FloatArray,
    ctx: FloatArray,
    topics: npt.ArrayLike,
    params: GeometryParams,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Every measurement of one layer that needs only pos, (sampled) ctx and topics.

    Returns the scalars named in :data:`SCALAR_NAMES` plus ``pos_sv`` (singular values of
    pos), ``orth_principal_cos`` and ``orth_principal_cos_random`` (length
    ``params.subspace_dim``, NaN-padded where a subspace is smaller).

    Examples
    --------
    >>> import numpy as np
    >>> from posctx.testing import planted_components
    >>> parts = planted_components(30, 16, 1, 8)
    >>> m = layer_geometry(parts["pos"][:, 0], parts["ctx"][:, 0], parts["topic"],
    ...                    GeometryParams(), np.random.default_rng(0))
    >>> round(m["pos_stable_rank"], 2), m["pos_screenot_rank"], m["ctx_ari"]
    (1.78, 3, 1.0)
    """
    n_positions, n_dims = pos.shape
    labels = np.asarray(topics)
    out: dict[str, Any] = {}
    # One thin SVD per matrix, reused by every measure below.
    u_pos, s, vt_pos = np.linalg.svd(pos, full_matrices=False)
    u_ctx, s_ctx, vt_ctx = np.linalg.svd(ctx, full_matrices=False)

    # pos is low-rank.
    out["pos_sv"] = s
    out["pos_norm"] = float(s[0]) if s.size else float("nan")
    out["pos_stable_rank"] = stable_rank(s)
    # A larger bound than the imputation allows (2k + 1 < min(T, d)) is lowered to the maximum.
    k_max = max(0, (min(pos.shape) - 2) // 2)
    k = default_screenot_k(*pos.shape) if params.screenot_k is None else min(params.screenot_k, k_max)
    threshold, rank = screenot_threshold(pos, k)
    out["pos_screenot_threshold"] = threshold
    out["pos_screenot_rank"] = rank
    out["pos_screenot_share"] = explained_share(s, rank)
    out["pos_rank90"] = energy_rank(s, 0.90)
    out["pos_rank99"] = energy_rank(s, 0.99)

    # pos is smooth.
    share, shuffled = smoothness(pos, params.n_low_frequencies, rng, params.n_random)
    out["smooth_low_share"], out["smooth_low_share_shuffled"] = share, shuffled

    # pos traces a curve (a spiral in many layers) in its top principal components.
    scores = _scores(u_pos, s, 3)
    energy = float(np.sum(s**2))
    out["spiral_pc_share"] = float(np.sum(s[:3] ** 2) / energy) if energy > 0 else float("nan")
    out["spiral_step_cos"], out["spiral_roughness"] = curve_smoothness(scores)
    out["spiral_turns"] = winding_turns(scores[:, :2])

    # ctx clusters by topic, in full and in its top principal components.
    out["ctx_within"], out["ctx_between"] = topic_similarity(ctx, labels)
    out["ctx_within_pc"], out["ctx_between_pc"] = topic_similarity(
        _scores(u_ctx, s_ctx, params.n_pcs), labels
    )
    out["ctx_ari"], out["ctx_nmi"], out["ctx_silhouette"] = cluster_scores(
        ctx, labels, params.seed
    )

    # pos and ctx are nearly orthogonal; the baseline turns the pos set by a random rotation,
    # which keeps the shape of each set and makes the pos span a random subspace.
    out["orth_max_cos"], out["orth_mean_cos"] = cross_cosines(pos, ctx)
    pos_basis = _basis(s, vt_pos, n_positions, params.subspace_dim)
    ctx_basis = _basis(s_ctx, vt_ctx, ctx.shape[0], params.subspace_dim)
    principal = principal_cosines(pos_basis, ctx_basis)
    random_max, random_mean, random_principal = [], [], []
    for _ in range(params.n_random):
        # pos Q = U S (Q^T V)^T; Q^T V is a Haar random orthonormal (d, min(T, d)) matrix W,
        # and Q^T turns pos's top right singular vectors into W's first columns.
        w = random_orthonormal(n_dims, s.size, rng)
        m, mean = cross_cosines((u_pos * s) @ w.T, ctx)
        random_max.append(m)
        random_mean.append(mean)
        random_principal.append(principal_cosines(w[:, : pos_basis.shape[1]], ctx_basis))
    out["orth_max_cos_random"] = float(np.mean(random_max))
    out["orth_mean_cos_random"] = float(np.mean(random_mean))
    out["orth_principal_cos"] = _pad(principal, params.subspace_dim)
    out["orth_principal_cos_random"] = _pad(np.mean(random_principal, axis=0), params.subspace_dim)
    out["orth_top_principal_cos"] = float(principal[0]) if principal.size else float("nan")
    out["orth_top_principal_cos_random"] = (
        float(out["orth_principal_cos_random"][0]) if principal.size else float("nan")
    )
    return out


def _pad(x: npt.ArrayLike, n: int) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)[:n]
    out: FloatArray = np.full(n, np.nan)
    out[: a.size] = a
    return out


def sample_indices(n: int, max_n: int, seed: int) -> IntArray:
    """Sorted indices of a seeded uniform sample of ``min(n, max_n)`` of ``range(n)``.

    Examples
    --------
    >>> sample_indices(5, 10, 0).tolist()
    [0, 1, 2, 3, 4]
    >>> len(sample_indices(100, 10, 0))
    10
    """
    if n <= max_n:
        return np.arange(n)
    out: IntArray = np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))
    return out


def finite_or_none(value: Any) -> Any:
    """JSON-safe value: NaN/inf floats become ``None``, numpy scalars plain Python.

    Examples
    --------
    >>> finite_or_none(float("nan")), finite_or_none(np.float64(1.5)), finite_or_none(np.int64(2))
    (None, 1.5, 2)
    """
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [finite_or_none(v) for v in value]
    return value


__all__ = [
    "SCALAR_NAMES",
    "GeometryParams",
    "cluster_scores",
    "cross_cosines",
    "curve_smoothness",
    "dct_basis",
    "dct_spectrum",
    "default_screenot_k",
    "energy_rank",
    "explained_share",
    "finite_or_none",
    "gram_block",
    "gram_spectrum",
    "label_codes",
    "layer_geometry",
    "low_frequency_share",
    "normalise_rows",
    "numerical_rank",
    "pca_scores",
    "principal_cosines",
    "random_orthonormal",
    "resid_gram",
    "sample_indices",
    "screenot_threshold",
    "singular_values",
    "smoothness",
    "stable_rank",
    "top_subspace",
    "topic_similarity",
    "winding_turns",
]
