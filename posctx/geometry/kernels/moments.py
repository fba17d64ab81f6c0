"""Second moments by chunk: Gram blocks of centred rows and of residual rows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from posctx._deprecated import renamed
from posctx.types import Float64Array


def gram_chunk(block: npt.ArrayLike, centre: npt.ArrayLike) -> Float64Array:
    """Per layer, ``sum (x - centre)(x - centre)^T`` over the rows of a ``(..., L, d)`` block.

    The dask graph in :mod:`posctx.geometry.api` runs this once per chunk and sums the
    results; the output keeps one length-1 axis per leading axis of ``block`` so that it is
    a block of a ``(..., L, d, d)`` array. Converted to float64 one layer at a time.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)  # (rows, layer, dim)
    >>> g = gram_chunk(x, np.zeros((2, 2)))
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
    result: Float64Array = out.reshape((1,) * (b.ndim - 2) + out.shape)
    return result


def resid_gram(
    hidden_gram: Float64Array,
    mu: Float64Array,
    pos: Float64Array,
    ctx_gram: Float64Array,
    n_contexts: int,
    n_positions: int,
) -> Float64Array:
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
    out: Float64Array = (
        hidden_gram - n * np.outer(mu, mu) - n_contexts * (pos.T @ pos) - n_positions * ctx_gram
    )
    return out


#: Deprecated name of :func:`gram_chunk` ("block" now means a store block only).
gram_block = renamed(
    gram_chunk, "posctx.geometry.kernels.gram_block", "posctx.geometry.kernels.gram_chunk"
)

__all__ = [
    "gram_block",
    "gram_chunk",
    "resid_gram",
]
