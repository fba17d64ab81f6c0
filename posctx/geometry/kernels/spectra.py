"""Singular value spectra: stable rank, energy ranks, the ScreeNOT threshold."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from posctx.types import Float64Array


def singular_values(x: npt.ArrayLike) -> Float64Array:
    """Singular values of a matrix in float64, largest first.

    Examples
    --------
    >>> singular_values([[3.0, 0.0], [0.0, 4.0]]).tolist()
    [4.0, 3.0]
    """
    s: Float64Array = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    return s


def gram_spectrum(gram: npt.ArrayLike) -> Float64Array:
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
    s: Float64Array = np.sqrt(np.clip(eig, 0.0, None))
    return s


def stable_rank(s: Float64Array) -> float:
    """``sum_j s_j^2 / s_1^2`` of singular values ``s`` (NaN for a zero matrix).

    Examples
    --------
    >>> import numpy as np
    >>> stable_rank(np.array([2.0, 1.0, 1.0]))
    1.5
    """
    top = float(np.max(s)) if s.size else 0.0
    return float(np.sum(s**2) / top**2) if top > 0 else float("nan")


def energy_rank(s: Float64Array, share: float) -> int:
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


def explained_share(s: Float64Array, rank: int) -> float:
    """Share of the sum of singular values carried by the top ``rank`` (as the paper reports).

    Examples
    --------
    >>> import numpy as np
    >>> explained_share(np.array([3.0, 1.0]), 1)
    0.75
    """
    total = float(np.sum(s))
    return float(np.sum(np.sort(s)[::-1][:rank]) / total) if total > 0 else float("nan")


__all__ = [
    "singular_values",
    "gram_spectrum",
    "stable_rank",
    "energy_rank",
    "default_screenot_k",
    "screenot_threshold",
    "explained_share",
]
