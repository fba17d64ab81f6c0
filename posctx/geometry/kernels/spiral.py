"""The pos curve in its top principal components: step cosines, roughness, winding."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from posctx.geometry.kernels.smoothness import normalise_rows
from posctx.types import Float64Array


def pca_scores(x: npt.ArrayLike, n: int) -> Float64Array:
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
    return scores_from_svd(u, s, n)


def scores_from_svd(u: Float64Array, s: Float64Array, n: int) -> Float64Array:
    """:func:`pca_scores` from a thin SVD ``u, s`` (computed once per matrix and layer)."""
    scores = u[:, :n] * s[:n]
    # Fix the arbitrary sign: the largest-magnitude coordinate of each component is positive.
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(scores.shape[1])])
    scores = scores * np.where(signs == 0, 1.0, signs)
    if scores.shape[1] < n:
        scores = np.hstack([scores, np.zeros((u.shape[0], n - scores.shape[1]))])
    out: Float64Array = scores
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
    step_cos = (
        float(np.mean(np.sum(unit[1:] * unit[:-1], axis=1))) if len(steps) > 1 else float("nan")
    )
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


__all__ = [
    "pca_scores",
    "scores_from_svd",
    "curve_smoothness",
    "winding_turns",
]
