"""The store's statistics, computed where the hidden states are (the model's device).

:class:`DeviceStatistics` takes each batch of hidden states as they will be stored (already
cast to the storage dtype), keeps the per-context sums to hand to the store with their block,
and accumulates the per-topic position sums and, on request, the core cells' second moment on
the device, in float64. The arithmetic is that of :func:`posctx.sums.block_statistics`, the
numpy reference it is tested against; only the device and the summation order differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from posctx.sums import CONTEXT_STATISTICS, Edges, PartialSums, block_statistics


class DeviceStatistics:
    """Statistics of the batches one process computes, accumulated on ``device``.

    Parameters
    ----------
    edges
        The positions the default selection leaves out.
    topics
        The store's topics; each context is given as an index into them.
    n_layers, n_dims
        Shape of a context's hidden states besides its positions.
    moments
        Also accumulate the core cells' count, mean and centred second moment.
    device
        A torch device (string or ``torch.device``).
    numpy_on_cpu
        On a CPU, accumulate with :func:`posctx.sums.block_statistics` (faster there); off,
        use the same torch code as on an accelerator (tests compare the two).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from posctx.sums import Edges, block_statistics
    >>> x = torch.arange(2 * 4 * 1 * 2, dtype=torch.float32).reshape(2, 4, 1, 2)
    >>> stats = DeviceStatistics(Edges(4, 1, 1), ("a", "b"), 1, 2, moments=False, device="cpu",
    ...                          numpy_on_cpu=False)
    >>> stats.add(x, np.array([0, 1]))
    >>> ref = block_statistics(x.numpy(), Edges(4, 1, 1), [0, 1], 2)
    >>> bool(np.array_equal(stats.take_contexts()["ctx_sum"], ref["ctx_sum"]))
    True
    >>> bool(np.array_equal(stats.snapshot()["pos_sum"], ref["pos_sum"]))
    True
    """

    def __init__(
        self,
        edges: Edges,
        topics: Sequence[str],
        n_layers: int,
        n_dims: int,
        *,
        moments: bool,
        device: Any,
        numpy_on_cpu: bool = True,
    ) -> None:
        import torch

        self.edges = edges
        self.topics = tuple(topics)
        self.device = torch.device(device)
        f64, on = torch.float64, self.device
        shape = (len(self.topics), edges.length, n_layers, n_dims)
        self._pos_sum = torch.zeros(shape, dtype=f64, device=on)
        self._edge_index = torch.as_tensor(edges.positions, dtype=torch.long, device=self.device)
        self.moments = moments
        self._count = 0.0
        self._mean = torch.zeros((n_layers, n_dims), dtype=f64, device=on)
        self._m2 = (
            torch.zeros((n_layers, n_dims, n_dims), dtype=f64, device=on) if moments else None
        )
        self._contexts: list[dict[str, Any]] = []
        # On a CPU the states are host memory already: numpy's per-context passes over a
        # cached slab (posctx.sums) beat torch's whole-batch float64 copies.
        self._host = (
            PartialSums(
                self.topics, length=edges.length, n_layers=n_layers, n_dims=n_dims, moments=moments
            )
            if self.device.type == "cpu" and numpy_on_cpu
            else None
        )

    def add(self, stacked: Any, topic_index: np.ndarray) -> None:
        """Add a batch ``(b, T, L, D)`` of hidden states, in the storage dtype, on the device.

        ``topic_index`` holds the topic of each of the ``b`` contexts. The per-context sums go
        to the host at once (they are small); the rest stays on the device.
        """
        import torch

        if self._host is not None:
            # NaN/inf states are refused by forward_block at the end of the block, which stops
            # the run with these sums uncommitted: numpy need not warn about them meanwhile.
            with np.errstate(invalid="ignore", over="ignore"):
                stats = block_statistics(
                    stacked.numpy(),
                    self.edges,
                    topic_index,
                    len(self.topics),
                    moments=self.moments,
                    pos_sum=self._host.pos_sum,
                )
            self._contexts.append({name: stats[name] for name in CONTEXT_STATISTICS})
            if self.moments:
                self._host.add_moments(stats)
            return
        x = stacked.double()
        core = x[:, self.edges.core]
        ctx_sum = core.sum(dim=1)
        # Kept on the device until take_contexts: a copy to the host here would make the host
        # wait for every batch, and the next forward pass could not be queued meanwhile.
        self._contexts.append(
            {
                "ctx_sum": ctx_sum,
                "ctx_sumsq": (core * core).sum(dim=(1, 3)),
                "edge": stacked.index_select(1, self._edge_index),
            }
        )
        topic_index = np.asarray(topic_index)
        # One sum per topic (index_add_ on a GPU adds with atomics, in no fixed order), over
        # rows chosen on the host: a mask made on the device would make the host wait.
        for g in np.unique(topic_index).tolist():
            rows = torch.as_tensor(np.flatnonzero(topic_index == g), device=self.device)
            self._pos_sum[g] += x.index_select(0, rows).sum(dim=0)
        if self._m2 is not None:
            self._add_moments(stacked, ctx_sum)

    def _add_moments(self, stacked: Any, ctx_sum: Any) -> None:
        import torch

        cells = stacked[:, self.edges.core]
        count = float(cells.shape[0] * cells.shape[1])
        if not count:  # an empty batch: nothing to merge, and no mean (0 / 0 would be NaN)
            return
        mean = ctx_sum.sum(dim=0) / count
        n_layers, n_dims = mean.shape
        m2 = torch.empty((n_layers, n_dims, n_dims), dtype=torch.float64, device=self.device)
        # As posctx.sums.centred_moments: centre in float32, multiply in float32.
        for k in range(n_layers):
            rows = cells[:, :, k, :].reshape(-1, n_dims).float() - mean[k].float()
            m2[k] = (rows.T @ rows).double()
        total = self._count + count
        delta = self._mean - mean
        cross = torch.einsum("ld,le->lde", delta, delta) * (self._count * count / total)
        assert self._m2 is not None
        self._m2 += m2 + cross
        self._mean = (self._count * self._mean + count * mean) / total
        self._count = total

    def take_contexts(self) -> dict[str, np.ndarray]:
        """The per-context statistics of the batches added since the last call, in order."""
        return join_contexts(self.take_parts())

    def take_parts(self) -> list[dict[str, Any]]:
        """What :meth:`take_contexts` joins, left where it is (device tensors on a GPU), so
        that the caller can copy it to the host without waiting for later work."""
        parts, self._contexts = self._contexts, []
        return parts

    def snapshot(self) -> dict[str, Any]:
        """The accumulated sums so far, on the host (a copy): what a partial stores."""
        if self._host is not None:
            return {
                k: np.copy(v) if isinstance(v, np.ndarray) else float(v)
                for k, v in self._host.result().items()
            }
        out: dict[str, Any] = {"pos_sum": self._pos_sum.cpu().numpy().copy()}
        if self._m2 is not None:
            out.update(
                count=self._count,
                mean=self._mean.cpu().numpy().copy(),
                m2=self._m2.cpu().numpy().copy(),
            )
        return out


def join_contexts(parts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-context statistics of consecutive batches (numpy arrays or tensors), joined."""
    return {name: np.concatenate([_on_host(p[name]) for p in parts]) for name in CONTEXT_STATISTICS}


def _on_host(values: Any) -> np.ndarray:
    """A numpy array of per-context statistics (a torch tensor is copied from its device)."""
    if isinstance(values, np.ndarray):
        return values
    out: np.ndarray = values.cpu().numpy()
    return out


__all__ = ["DeviceStatistics", "join_contexts"]
