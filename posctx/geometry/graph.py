"""Dask graphs of the geometry's second moments: one Gram task per chunk, then tree sums.

The middle of the three layers (numpy kernels in :mod:`posctx.geometry.kernels`, this, the
xarray layer in :mod:`posctx.geometry.api`), as in :mod:`posctx.decomposition`.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from posctx.geometry import kernels


def gram_array(x: da.Array, centre: da.Array) -> da.Array:
    """Lazy per-layer ``sum (x - centre)(x - centre)^T`` of ``x`` ``(..., layer, dim)``.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = np.random.default_rng(0).normal(size=(6, 2, 3))
    >>> g = gram_array(da.from_array(x, chunks=(4, 2, 3)), da.zeros((2, 3))).compute()
    >>> bool(np.allclose(g[1], x[:, 1].T @ x[:, 1]))
    True

    One :func:`~posctx.geometry.kernels.gram_chunk` task per chunk of ``x``, then dask's tree
    sum over the leading axes: the input is read once, a ``(layer, d, d)`` block per chunk.
    """
    x = x.rechunk({x.ndim - 1: -1})  # every task needs whole rows
    centre = centre.astype(np.float64).rechunk((x.chunks[-2], -1))
    lead = "abcdefgh"[: x.ndim - 2]
    n_dims = x.shape[-1]
    blocks = da.blockwise(
        kernels.gram_chunk,
        lead + "lde",
        x,
        lead + "ld",
        centre,
        "ld",
        new_axes={"e": n_dims},
        adjust_chunks={axis: 1 for axis in lead},
        dtype=np.float64,
        meta=np.empty((0,) * (x.ndim + 1), dtype=np.float64),
    )
    out: da.Array = blocks.sum(axis=tuple(range(x.ndim - 2)))
    return out


def cell_totals(values: da.Array, cells: da.Array, n_cells: int) -> da.Array:
    """Lazy ``(cells, k)`` sums of the rows of ``values`` ``(n, k)`` by their cell ``cells``.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> v = da.from_array(np.arange(8.0).reshape(4, 2), chunks=(3, 2))
    >>> cell_totals(v, da.from_array(np.array([1, 0, 1, 1]), chunks=3), 2).compute().tolist()
    [[2.0, 3.0], [10.0, 13.0]]
    """
    blocks = da.blockwise(
        kernels.cell_chunk,
        "ick",
        values,
        "ik",
        cells,
        "i",
        n_cells=n_cells,
        new_axes={"c": n_cells},
        adjust_chunks={"i": 1},
        dtype=np.float64,
        meta=np.empty((0, 0, 0), dtype=np.float64),
    )
    out: da.Array = blocks.sum(axis=0)
    return out


__all__ = ["cell_totals", "gram_array"]
