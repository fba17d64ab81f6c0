"""Float64 sums and second moments shared by extraction, the store and the decomposition.

The statistics a store keeps while it is extracted (docs/store.md, "Statistics") are sums
over a block's contexts, positions and cells: additive over contexts, so that any set of
blocks merges exactly. This module holds their numpy definition, one block at a time
(:func:`block_statistics`, the reference the device code in :mod:`posctx.model.statistics`
is tested against), and the merge of per-process partial sums (:class:`PartialSums`,
:func:`merge_moments`). Numpy only: no xarray, dask, torch or zarr.

The positions a decomposition leaves out by default (position 0, an attention sink, and the
tokenizer's trailing special tokens) are the *edges*; the rest, one contiguous range, is the
*core*. Per context the store keeps sums over the core and the edge vectors themselves, so
that the default selection and all positions are both served by additions alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from posctx.fused import COMPILED_DTYPES, slab_kernel
from posctx.types import Float64Array

#: Names of the per-context statistics of :func:`block_statistics`.
CONTEXT_STATISTICS = ("ctx_sum", "ctx_sumsq", "edge")


@dataclass(frozen=True)
class Edges:
    """The left-out positions of a context of ``length`` tokens: ``lead`` first, ``trail`` last.

    Examples
    --------
    >>> edges = Edges(length=8, lead=1, trail=1)
    >>> edges.core, edges.positions
    (slice(1, 7, None), (0, 7))
    """

    length: int
    lead: int = 1
    trail: int = 0

    def __post_init__(self) -> None:
        if self.lead < 0 or self.trail < 0 or self.lead + self.trail >= self.length:
            raise ValueError(
                f"edges of {self.lead} leading and {self.trail} trailing positions leave no "
                f"core in a context of {self.length}"
            )

    @property
    def core(self) -> slice:
        """The positions the default selection keeps, as a slice."""
        return slice(self.lead, self.length - self.trail)

    @property
    def positions(self) -> tuple[int, ...]:
        """The left-out positions, in order."""
        return (
            *range(self.lead),
            *range(self.length - self.trail, self.length),
        )


def block_statistics(
    block: npt.ArrayLike,
    edges: Edges,
    topic_index: npt.ArrayLike,
    n_topics: int,
    *,
    moments: bool = False,
    pos_sum: Float64Array | None = None,
) -> dict[str, Any]:
    """The statistics extraction keeps of one store block, from its stored values.

    Parameters
    ----------
    block
        Hidden states ``(c, T, L, D)`` as stored (after the cast to the storage dtype).
    edges
        The left-out positions.
    topic_index
        ``(c,)``: the index of each context's topic among ``n_topics``.
    n_topics
        Number of topics of the store.
    moments
        Also the core cells' count, mean and centred second moment.
    pos_sum
        Add the position sums into this ``(n_topics, T, L, D)`` array (returned as
        ``pos_sum``) instead of a new one: an accumulator over blocks.

    Notes
    -----
    Where numba is installed (``posctx[fast]``; ``POSCTX_KERNEL`` chooses), each core slab is
    summed in one read by :func:`posctx.fused.slab_kernel`; otherwise numpy's passes. They
    agree to about 1e-15 relative (another order of the same float64 additions).

    Returns
    -------
    dict
        Per context: ``ctx_sum`` ``(c, L, D)`` and ``ctx_sumsq`` ``(c, L)``, float64 sums over
        the core positions, and ``edge`` ``(c, E, L, D)``, the stored values at the edges.
        Over the block: ``pos_sum`` ``(n_topics, T, L, D)``, float64 sums over each topic's
        contexts at every position; with ``moments``, ``count``, ``mean`` ``(L, D)`` and
        ``m2`` ``(L, D, D)`` of the core cells (:func:`centred_moments`).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(2 * 4 * 1 * 2, dtype=np.float32).reshape(2, 4, 1, 2)
    >>> stats = block_statistics(x, Edges(4, 1, 1), [0, 1], 2)
    >>> stats["ctx_sum"][1, 0].tolist(), stats["edge"].shape, stats["pos_sum"][1, 3, 0].tolist()
    ([22.0, 24.0], (2, 2, 1, 2), [14.0, 15.0])
    """
    x = np.asarray(block)
    if x.ndim != 4:
        raise ValueError(f"expected a (context, position, layer, dim) block, got shape {x.shape}")
    c, length, n_layers, n_dims = x.shape
    topics = np.asarray(topic_index, dtype=np.intp)
    core = edges.core
    out: dict[str, Any] = {
        "ctx_sum": np.empty((c, n_layers, n_dims)),
        "ctx_sumsq": np.empty((c, n_layers)),
        "edge": np.ascontiguousarray(x[:, list(edges.positions)]),
        "pos_sum": np.zeros((n_topics, length, n_layers, n_dims)) if pos_sum is None else pos_sum,
    }
    kernel = slab_kernel()
    if kernel is not None:  # numba: every sum of a core slab in one read (posctx.fused)
        widen = None if x.dtype in COMPILED_DTYPES else np.empty(x.shape[1:], np.float32)
        edge_rows = list(edges.positions)
        for i in range(c):
            slab = x[i]
            if widen is not None:
                np.copyto(widen, slab)
                slab = widen
            rows = out["pos_sum"][topics[i]]
            out["ctx_sumsq"][i] = 0.0
            kernel(slab[core], rows[core], out["ctx_sum"][i], out["ctx_sumsq"][i])
            rows[edge_rows] += slab[edge_rows]
    else:
        buf = np.empty((length, n_layers, n_dims))
        for i in range(c):  # one context at a time: its float64 copy stays in cache
            np.copyto(buf, x[i])
            np.sum(buf[core], axis=0, out=out["ctx_sum"][i])
            out["ctx_sumsq"][i] = np.einsum("tld,tld->l", buf[core], buf[core])
            out["pos_sum"][topics[i]] += buf
    if moments:
        cells = x[:, core]
        count = cells.shape[0] * cells.shape[1]
        mean = out["ctx_sum"].sum(axis=0) / max(count, 1)
        out.update(count=float(count), **centred_moments(cells, mean))
    return out


def centred_moments(x: npt.NDArray[Any], mean: Float64Array) -> dict[str, Float64Array]:
    """``mean`` and per-layer ``m2 = sum over rows of (x - mean)(x - mean)^T`` of a chunk.

    ``x`` is ``(c, t, L, D)``. The rows are centred in the data's own precision (at least
    float32) and multiplied in float32 (BLAS), with float64 accumulation across chunks:
    centring first keeps the relative error near float32's 1e-7 even when the mean dwarfs the
    spread, and float32 products are twice as fast.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(3, 4, 2, 5))
    >>> mean = x.mean(axis=(0, 1))
    >>> m2 = centred_moments(x, mean)["m2"]
    >>> rows = (x - mean).reshape(12, 2, 5)
    >>> bool(np.allclose(m2[1], rows[:, 1].T @ rows[:, 1], rtol=1e-5))
    True
    """
    c, t, n_layers, d = x.shape
    m2 = np.empty((n_layers, d, d))
    work = np.promote_types(x.dtype, np.float32)
    for k in range(n_layers):
        rows = x[:, :, k, :].reshape(c * t, d).astype(work)
        rows -= mean[k].astype(work)
        rows32 = rows.astype(np.float32, copy=False)
        m2[k] = rows32.T @ rows32
    return {"mean": np.asarray(mean, dtype=np.float64), "m2": m2}


def merge_moments(
    n_a: float,
    mean_a: Float64Array,
    m2_a: Float64Array,
    n_b: float,
    mean_b: Float64Array,
    m2_b: Float64Array,
) -> tuple[float, Float64Array, Float64Array]:
    """Merge two groups' counts, means and centred second moments (Chan et al.).

    ``m2 = m2_a + m2_b + (n_a n_b / n) (mean_a - mean_b)(mean_a - mean_b)^T`` per layer: exact,
    and free of the cancellation that uncentred sums suffer when the mean is large.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(1).normal(size=(10, 3, 1, 2)) + 50
    >>> a, b = x[:4], x[4:]
    >>> def stats(y):
    ...     mean = y.mean(axis=(0, 1))
    ...     return y.shape[0] * y.shape[1], mean, centred_moments(y, mean)["m2"]
    >>> n, mean, m2 = merge_moments(*stats(a), *stats(b))
    >>> bool(np.allclose(m2, stats(x)[2], rtol=1e-4))
    True
    """
    n = n_a + n_b
    if n == 0:
        return 0.0, mean_a, m2_a
    delta = mean_a - mean_b
    cross = np.einsum("ld,le->lde", delta, delta) * (n_a * n_b / n)
    return n, (n_a * mean_a + n_b * mean_b) / n, m2_a + m2_b + cross


class PartialSums:
    """Position sums per topic and core moments, merged over any number of blocks or partials.

    What one process accumulates while it extracts, and what a reader merges from every
    process's partial: :meth:`add` takes :func:`block_statistics` (or a stored partial) for
    the topics named in ``topics``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones((2, 4, 1, 2), np.float32)
    >>> sums = PartialSums(("a", "b"), length=4, n_layers=1, n_dims=2, moments=False)
    >>> sums.add(block_statistics(x, Edges(4), [0, 1], 2), ("a", "b"))
    >>> sums.add(block_statistics(x, Edges(4), [1, 1], 2), ("a", "b"))
    >>> sums.pos_sum[:, 0, 0, 0].tolist()
    [1.0, 3.0]
    """

    def __init__(
        self, topics: Sequence[str], *, length: int, n_layers: int, n_dims: int, moments: bool
    ) -> None:
        self.topics = tuple(topics)
        self.pos_sum = np.zeros((len(self.topics), length, n_layers, n_dims))
        self.moments = moments
        self.count = 0.0
        self.mean = np.zeros((n_layers, n_dims))
        self.m2 = np.zeros((n_layers, n_dims, n_dims)) if moments else None

    def add(self, stats: Mapping[str, Any], topics: Sequence[str]) -> None:
        """Add statistics whose ``pos_sum`` rows are the topics ``topics`` (a subset of ours)."""
        rows = [self.topics.index(t) for t in topics]
        self.pos_sum[rows] += stats["pos_sum"]
        self.add_moments(stats)

    def add_moments(self, stats: Mapping[str, Any]) -> None:
        """Merge only the second moments of ``stats`` (position sums added elsewhere)."""
        if self.m2 is not None:
            self.count, self.mean, self.m2 = merge_moments(
                self.count, self.mean, self.m2, stats["count"], stats["mean"], stats["m2"]
            )

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pos_sum": self.pos_sum}
        if self.m2 is not None:
            out.update(count=self.count, mean=self.mean, m2=self.m2)
        return out


__all__ = [
    "CONTEXT_STATISTICS",
    "Edges",
    "PartialSums",
    "block_statistics",
    "centred_moments",
    "merge_moments",
]
