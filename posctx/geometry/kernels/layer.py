"""All measurements of one layer, from its pos and ctx arrays and topic labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from posctx.geometry.kernels.clusters import cluster_scores, topic_similarity
from posctx.geometry.kernels.orthogonality import (
    basis_from_svd,
    cross_cosines,
    principal_cosines,
    random_orthonormal,
)
from posctx.geometry.kernels.params import GeometryParams
from posctx.geometry.kernels.smoothness import smoothness
from posctx.geometry.kernels.spectra import (
    default_screenot_k,
    energy_rank,
    explained_share,
    screenot_threshold,
    stable_rank,
)
from posctx.geometry.kernels.spiral import curve_smoothness, scores_from_svd, winding_turns
from posctx.types import Float64Array, IndexArray


def layer_geometry(
    pos: Float64Array,
    ctx: Float64Array,
    topics: npt.ArrayLike,
    params: GeometryParams,
    rng: np.random.Generator,
    *,
    ids: npt.ArrayLike | None = None,
    centres: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """Every measurement of one layer that needs only pos, (sampled) ctx and topics.

    ``ids`` (the context each row of ``ctx`` copies) and ``centres`` (k-means starting
    centres) serve bootstrap resamples: see :func:`~.clusters.topic_similarity` and
    :func:`~.clusters.cluster_scores`.

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
    k = (
        default_screenot_k(*pos.shape)
        if params.screenot_k is None
        else min(params.screenot_k, k_max)
    )
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
    scores = scores_from_svd(u_pos, s, 3)
    energy = float(np.sum(s**2))
    out["spiral_pc_share"] = float(np.sum(s[:3] ** 2) / energy) if energy > 0 else float("nan")
    out["spiral_step_cos"], out["spiral_roughness"] = curve_smoothness(scores)
    out["spiral_turns"] = winding_turns(scores[:, :2])

    # ctx clusters by topic, in full and in its top principal components.
    out["ctx_within"], out["ctx_between"] = topic_similarity(ctx, labels, ids)
    out["ctx_within_pc"], out["ctx_between_pc"] = topic_similarity(
        scores_from_svd(u_ctx, s_ctx, params.n_pcs), labels, ids
    )
    out["ctx_ari"], out["ctx_nmi"], out["ctx_silhouette"] = cluster_scores(
        ctx, labels, params.seed, centres
    )

    # pos and ctx are nearly orthogonal; the baseline turns the pos set by a random rotation,
    # which keeps the shape of each set and makes the pos span a random subspace.
    out["orth_max_cos"], out["orth_mean_cos"] = cross_cosines(pos, ctx)
    pos_basis = basis_from_svd(s, vt_pos, n_positions, params.subspace_dim)
    ctx_basis = basis_from_svd(s_ctx, vt_ctx, ctx.shape[0], params.subspace_dim)
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


def _pad(x: npt.ArrayLike, n: int) -> Float64Array:
    a = np.asarray(x, dtype=np.float64)[:n]
    out: Float64Array = np.full(n, np.nan)
    out[: a.size] = a
    return out


def sample_indices(n: int, max_n: int, seed: int) -> IndexArray:
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
    out: IndexArray = np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))
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
    "layer_geometry",
    "sample_indices",
    "finite_or_none",
]
