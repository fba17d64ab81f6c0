"""Smoothness of the pos Gram matrix: its energy at low DCT frequencies."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from posctx.types import Float64Array


def normalise_rows(x: npt.ArrayLike) -> Float64Array:
    """Rows scaled to unit length; zero rows stay zero.

    Examples
    --------
    >>> normalise_rows([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    a = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    out: Float64Array = a / np.where(norms > 0, norms, 1.0)
    return out


def dct_basis(n: int) -> Float64Array:
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
    f: Float64Array = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
    f[:, 0] /= np.sqrt(2.0)
    return f


def dct_spectrum(gram: npt.ArrayLike) -> Float64Array:
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
    out: Float64Array = f.T @ g @ f
    return out


def low_frequency_share(spectrum: Float64Array, k: int) -> float:
    """Share of ``sum spectrum**2`` (squared Frobenius norm) in the lowest ``k x k`` corner.

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


__all__ = [
    "normalise_rows",
    "dct_basis",
    "dct_spectrum",
    "low_frequency_share",
    "smoothness",
]
