"""Orthogonality of pos and ctx: cross cosines, principal angles, random baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from posctx.geometry.kernels.smoothness import normalise_rows
from posctx.types import Float64Array


def cross_cosines(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[float, float]:
    """Max and mean ``|cos|`` over all pairs of a row of ``a`` and a row of ``b``.

    Examples
    --------
    >>> cross_cosines([[1.0, 0.0]], [[0.0, 2.0], [1.0, 1.0]])
    (0.7071067811865475, 0.35355339059327373)
    """
    cos = np.abs(normalise_rows(a) @ normalise_rows(b).T)
    return float(cos.max()), float(cos.mean())


def numerical_rank(s: Float64Array, shape: tuple[int, int]) -> int:
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


def top_subspace(x: npt.ArrayLike, k: int) -> Float64Array:
    """Orthonormal basis ``(d, r)`` of the top ``r = min(k, rank)`` right singular vectors.

    Examples
    --------
    >>> top_subspace([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 5).shape
    (3, 2)
    """
    a = np.asarray(x, dtype=np.float64)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    return basis_from_svd(s, vt, a.shape[0], k)


def basis_from_svd(s: Float64Array, vt: Float64Array, n_rows: int, k: int) -> Float64Array:
    """:func:`top_subspace` from a thin SVD ``s, vt`` of a matrix with ``n_rows`` rows."""
    r = min(k, numerical_rank(s, (n_rows, vt.shape[1])))
    basis: Float64Array = vt[:r].T
    return basis


def principal_cosines(a: Float64Array, b: Float64Array) -> Float64Array:
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
    out: Float64Array = np.clip(cos, 0.0, 1.0)
    return out


def random_orthonormal(d: int, r: int, rng: np.random.Generator) -> Float64Array:
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
    # Bootstrap resamples draw the same rotations again (the same seed: common random
    # numbers); replaying the generator's state skips the QR, a quarter of their time.
    key = (d, r, repr(rng.bit_generator.state))
    hit = _DRAWN.get(key)
    if hit is not None:
        rng.bit_generator.state = hit[1]
        return hit[0].copy()
    q, upper = np.linalg.qr(rng.normal(size=(d, r)))
    # Fixing the signs of R's diagonal makes Q exactly Haar (Mezzadri 2007).
    out: Float64Array = q * np.sign(np.diag(upper))
    if len(_DRAWN) >= _DRAWN_MAX:
        _DRAWN.pop(next(iter(_DRAWN)))
    _DRAWN[key] = (out.copy(), dict(rng.bit_generator.state))
    return out


#: Rotations drawn, by size and generator state before the draw: (rotation, state after).
_DRAWN: dict[tuple[int, int, str], tuple[Float64Array, dict[str, Any]]] = {}
_DRAWN_MAX = 64


__all__ = [
    "cross_cosines",
    "numerical_rank",
    "top_subspace",
    "basis_from_svd",
    "principal_cosines",
    "random_orthonormal",
]
