"""Per-chunk numpy kernels of the position/context decomposition.

This module is the bottom of the three numeric layers (numpy kernels -> dask graph -> xarray)
and imports neither dask nor xarray. Every kernel works on plain arrays laid out as
``(context, position, layer, dim)``.

The decomposition is declared as chunk -> combine -> finalize:

* chunk: :func:`block_stats` turns one chunk of hidden states into three float64 sums;
* combine: :func:`combine_sum` adds partial sums of neighbouring chunks;
* finalize: divide by the counts and centre (done lazily in :mod:`posctx.decomposition.graph`).

:func:`decompose_numpy` computes the same quantities directly, in memory; it is the
documented reference the out-of-core path is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.float64]

#: Names of the per-chunk sums returned by :func:`block_stats`.
STAT_NAMES = ("pos_sum", "ctx_sum", "sumsq")


def _as_float64(block: npt.ArrayLike) -> Float64Array:
    x = np.asarray(block)
    if x.ndim != 4:
        raise ValueError(f"expected a (context, position, layer, dim) block, got shape {x.shape}")
    # astype(copy=False) keeps float64 input as is and converts float16/float32 once.
    return x.astype(np.float64, copy=False)


def block_stats(block: npt.ArrayLike) -> dict[str, Float64Array]:
    """Float64 sums of one ``(context, position, layer, dim)`` chunk of hidden states.

    The chunk is converted to float64 once; all three sums are taken from that copy, so a
    chunk is read and converted a single time for every statistic of the decomposition.

    Parameters
    ----------
    block
        Hidden states of ``c`` contexts, ``t`` positions, ``l`` layers and ``d`` dims, of any
        real floating dtype.

    Returns
    -------
    dict
        ``pos_sum`` ``(t, l, d)``: sum over contexts; ``ctx_sum`` ``(c, l, d)``: sum over
        positions; ``sumsq`` ``(l,)``: sum of squares over contexts, positions and dims.
        All float64.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    >>> stats = block_stats(x)
    >>> {k: v.shape for k, v in stats.items()}
    {'pos_sum': (3, 2, 2), 'ctx_sum': (2, 2, 2), 'sumsq': (2,)}
    >>> stats["sumsq"].dtype
    dtype('float64')
    >>> float(stats["sumsq"].sum()) == float((x.astype(np.float64) ** 2).sum())
    True
    """
    x = _as_float64(block)
    return {
        "pos_sum": x.sum(axis=0),
        "ctx_sum": x.sum(axis=1),
        # einsum squares on the fly: no second chunk-sized temporary for x**2.
        "sumsq": np.einsum("ctld,ctld->l", x, x),
    }


def take_stat(stats: dict[str, Float64Array], name: str, n_new_axes: int) -> Float64Array:
    """One sum out of a :func:`block_stats` result, with ``n_new_axes`` leading unit axes.

    The leading axes index the chunk a partial sum came from, so that partial sums can be
    stacked into an array and reduced with an ordinary (tree) reduction.

    Examples
    --------
    >>> import numpy as np
    >>> stats = block_stats(np.ones((2, 3, 1, 4)))
    >>> take_stat(stats, "pos_sum", 1).shape
    (1, 3, 1, 4)
    """
    value = stats[name]
    return value.reshape((1,) * n_new_axes + value.shape)


def combine_sum(name: str, *stats: dict[str, Float64Array]) -> Float64Array:
    """Sum one statistic over several :func:`block_stats` results.

    Used to add the partial sums of chunks that share a context block but cover different
    positions; the number of such chunks is small (normally one).

    Examples
    --------
    >>> import numpy as np
    >>> a = block_stats(np.ones((2, 3, 1, 4)))
    >>> b = block_stats(np.ones((2, 5, 1, 4)))
    >>> combine_sum("ctx_sum", a, b)[0, 0]
    array([8., 8., 8., 8.])
    """
    if not stats:
        raise ValueError("combine_sum needs at least one partial result")
    total = stats[0][name].copy()
    for part in stats[1:]:
        total += part[name]
    return total


def decompose_numpy(h: npt.ArrayLike) -> dict[str, Any]:
    """Reference decomposition of an in-memory ``(context, position, layer, dim)`` array.

    Computes, in float64 and per layer, the two-way split of PAPER.md::

        mu      = mean over (c, t) of h[c, t]
        pos[t]  = mean over c of h[c, t] - mu
        ctx[c]  = mean over t of h[c, t] - mu
        resid   = h - mu - pos - ctx

    and the sums of squares ``ss_total = sum |h - mu|^2``, ``ss_pos = C sum_t |pos_t|^2``,
    ``ss_ctx = T sum_c |ctx_c|^2`` and ``ss_resid = sum |resid|^2``, each directly (the
    identity ``ss_total = ss_pos + ss_ctx + ss_resid`` is not used, so tests can check it).

    Parameters
    ----------
    h
        Hidden states, shape ``(C, T, L, D)``.

    Returns
    -------
    dict
        ``mu`` ``(L, D)``, ``pos`` ``(T, L, D)``, ``ctx`` ``(C, L, D)``, ``resid``
        ``(C, T, L, D)`` and ``ss_total``, ``ss_pos``, ``ss_ctx``, ``ss_resid`` ``(L,)``.

    Examples
    --------
    >>> import numpy as np
    >>> h = np.random.default_rng(0).normal(size=(5, 4, 2, 3))
    >>> ref = decompose_numpy(h)
    >>> bool(np.allclose(ref["pos"].sum(axis=0), 0) and np.allclose(ref["ctx"].sum(axis=0), 0))
    True
    >>> bool(np.allclose(ref["ss_total"], ref["ss_pos"] + ref["ss_ctx"] + ref["ss_resid"]))
    True
    """
    x = _as_float64(h)
    n_contexts, length = x.shape[0], x.shape[1]
    mu = x.mean(axis=(0, 1))
    pos = x.mean(axis=0) - mu
    ctx = x.mean(axis=1) - mu
    centred = x - mu
    resid = centred - pos[np.newaxis] - ctx[:, np.newaxis]
    return {
        "mu": mu,
        "pos": pos,
        "ctx": ctx,
        "resid": resid,
        "ss_total": np.einsum("ctld,ctld->l", centred, centred),
        "ss_pos": n_contexts * np.einsum("tld,tld->l", pos, pos),
        "ss_ctx": length * np.einsum("cld,cld->l", ctx, ctx),
        "ss_resid": np.einsum("ctld,ctld->l", resid, resid),
    }


__all__ = [
    "STAT_NAMES",
    "block_stats",
    "combine_sum",
    "decompose_numpy",
    "take_stat",
]
