"""Settings of the geometry measurements and the names of their per-layer results."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

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


__all__ = [
    "SCALAR_NAMES",
    "GeometryParams",
]
