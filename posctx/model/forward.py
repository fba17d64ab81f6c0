"""Forward passes: every requested hidden state of full-length contexts, in storage dtype.

:func:`launch_block` starts a block of contexts batch by batch and returns at once with a
:class:`PendingStates`; its ``wait`` gives the states on the host. On a GPU each batch is cast
and stacked into a device buffer, then copied to pinned host memory on a separate CUDA stream
while the next batch computes, and the caller can launch the next block before waiting for
this one, so that copies and host work overlap the forward passes. :func:`forward_block` is
launch-then-wait. NaN/inf are refused, with advice, when the block is waited for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from posctx.errors import NonFiniteError
from posctx.model.loading import LoadedModel

#: ``on_batch(states, start, stop)``: a batch's states (``(stop - start, T, L, D)``, storage
#: dtype, on the model's device) for contexts ``start:stop`` of the block, as they are made.
BatchCallback = Callable[[Any, int, int], None]


def forward_hidden(
    loaded: LoadedModel, token_ids: np.ndarray, storage_dtype: str = "float32"
) -> np.ndarray:
    """Hidden states of a batch of full-length contexts.

    Every context has exactly T real tokens, so the attention mask is all ones and position
    ids are the default ``0..T-1``: nothing is padded, nothing shifts.

    Parameters
    ----------
    loaded
        From :func:`load_model`.
    token_ids
        ``(batch, T)`` integer array.
    storage_dtype
        ``"float32"`` or ``"float16"``: the dtype of the returned array.

    Returns
    -------
    numpy.ndarray
        ``(batch, T, n_layers, hidden_size)`` in ``storage_dtype``; NaN or inf raise
        ``NonFiniteError``, as in :func:`forward_block`.
    """
    return forward_block(loaded, token_ids, storage_dtype, batch_size=max(1, len(token_ids)))


def storage_torch_dtype(storage_dtype: str) -> Any:
    """The torch dtype of a storage dtype name (``"float32"`` or ``"float16"``)."""
    import torch

    return torch.float16 if storage_dtype == "float16" else torch.float32


def host_buffer(loaded: LoadedModel, contexts: int, length: int, storage_dtype: str) -> Any:
    """A host tensor for ``contexts`` contexts' states: pinned when the model is on a GPU.

    Pinned (page-locked) memory is what lets a device-to-host copy run asynchronously; it is
    slow to allocate, so a run allocates its buffers once and reuses them.
    """
    import torch

    shape = (contexts, length, len(loaded.layers), loaded.hidden_size)
    cuda = torch.device(loaded.config.device).type == "cuda"
    return torch.empty(shape, dtype=storage_torch_dtype(storage_dtype), pin_memory=cuda)


class CudaApi:
    """The CUDA calls of the asynchronous path, in one place (a test can stand in for them
    on a CPU to run the path's logic; see ``tests/model/test_forward.py``)."""

    def stream(self, device: Any) -> Any:
        import torch

        return torch.cuda.Stream(device)

    def event(self) -> Any:
        import torch

        return torch.cuda.Event()

    def on(self, stream: Any) -> Any:
        """A context in which work is queued on ``stream``."""
        import torch

        return torch.cuda.stream(stream)

    def current(self, device: Any) -> Any:
        import torch

        return torch.cuda.current_stream(device)

    def pinned(self, shape: Any, dtype: Any) -> Any:
        import torch

        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def keep_for(self, tensor: Any, stream: Any) -> None:
        """``tensor``'s memory is used by ``stream``: not reused before that work is done."""
        tensor.record_stream(stream)


def accelerator_api(device: Any) -> CudaApi | None:
    """The asynchronous-copy API of ``device``: CUDA's on a GPU, none on a CPU."""
    return CudaApi() if device.type == "cuda" else None


class DeviceBuffers:
    """What one run reuses on the model's device: the stacking buffer of a batch, the copy
    stream, and the finiteness flags' pinned host copies.

    Parameters
    ----------
    loaded
        The model.
    storage_dtype
        The dtype the states are cast to on the device.
    """

    def __init__(self, loaded: LoadedModel, storage_dtype: str) -> None:
        import torch

        self.device = torch.device(loaded.config.device)
        self.api = accelerator_api(self.device)
        self.cuda = self.api is not None
        self.dtype = storage_torch_dtype(storage_dtype)
        self.copy_stream = None if self.api is None else self.api.stream(self.device)
        self._stack: Any = None
        self._ids: Any = None
        # The compute stream waits on this before overwriting the stacking buffer.
        self._copied: Any = None

    def stack(self, loaded: LoadedModel, hidden_states: Any) -> Any:
        """The requested layers of one batch, cast and stacked: ``(b, T, L, D)`` on device."""
        import torch

        first = hidden_states[0]
        shape = (first.shape[0], first.shape[1], len(loaded.layers), first.shape[2])
        if not self.cuda:
            return torch.stack([hidden_states[i] for i in loaded.layers], dim=2).to(self.dtype)
        if (
            self._stack is None
            or tuple(self._stack.shape[1:]) != shape[1:]
            or self._stack.shape[0] < shape[0]
        ):
            self._stack = torch.empty(shape, dtype=self.dtype, device=self.device)
        if self._copied is not None:
            assert self.api is not None
            self.api.current(self.device).wait_event(self._copied)
        out = self._stack[: shape[0], : shape[1]]
        for j, i in enumerate(loaded.layers):
            out[:, :, j].copy_(hidden_states[i])
        return out

    def copy_to_host(self, states: Any, host: Any) -> None:
        """Copy ``states`` into ``host``: asynchronously on the copy stream on a GPU."""
        if self.copy_stream is None or self.api is None:
            host.copy_(states)
            return
        api = self.api
        computed = api.event()
        computed.record()
        with api.on(self.copy_stream):
            self.copy_stream.wait_event(computed)
            host.copy_(states, non_blocking=True)
            self._copied = api.event()
            self._copied.record(self.copy_stream)

    def parts_to_host(self, parts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
        """Copy the tensors of ``parts`` to pinned host memory after the work queued so far.

        Returns the copies and a CUDA event to synchronise before reading them (``None`` on
        a CPU, where ``parts`` come back as they are). Waiting on the event waits for these
        copies only, not for forward passes queued later.
        """
        if self.copy_stream is None or self.api is None or not parts:
            return parts, None
        api = self.api
        computed = api.event()
        computed.record()
        out = []
        with api.on(self.copy_stream):
            self.copy_stream.wait_event(computed)
            for part in parts:
                copied: dict[str, Any] = {}
                for name, value in part.items():
                    if isinstance(value, np.ndarray):
                        copied[name] = value
                        continue
                    copied[name] = api.pinned(value.shape, value.dtype)
                    copied[name].copy_(value, non_blocking=True)
                    api.keep_for(value, self.copy_stream)
                out.append(copied)
            done = api.event()
            done.record(self.copy_stream)
        return out, done

    def ids_to_device(self, ids: np.ndarray) -> Any:
        """A block's token ids on the device, copied once through pinned memory on a GPU (a
        copy from pageable memory would make the host wait for the work queued before it)."""
        import torch

        if self.api is None:
            return torch.as_tensor(ids, device=self.device)
        pinned = self.api.pinned(ids.shape, torch.int64)
        pinned.numpy()[...] = ids
        on_device = pinned.to(self.device, non_blocking=True)
        # Kept until the next block's (torch's pinned allocator also waits for the copy).
        self._ids = pinned
        return on_device

    def flags_to_host(self, bad: Any) -> tuple[Any, Any]:
        """Copy the finiteness flags to pinned memory after the work queued so far; returns
        the copy and the event that says the block's copies are all done."""
        assert self.copy_stream is not None and self.api is not None
        api = self.api
        flags = api.pinned(bad.shape, bad.dtype)
        computed = api.event()
        computed.record()
        with api.on(self.copy_stream):
            self.copy_stream.wait_event(computed)
            flags.copy_(bad, non_blocking=True)
            done = api.event()
            done.record(self.copy_stream)
        return flags, done


class PendingStates:
    """A launched block: :meth:`wait` returns its states once they are on the host."""

    def __init__(
        self,
        loaded: LoadedModel,
        host: Any,
        bad: Any,
        done: Any,
        storage_dtype: str,
    ) -> None:
        self._loaded = loaded
        self._host = host
        self._bad = bad
        self._done = done
        self._storage_dtype = storage_dtype

    def wait(self) -> np.ndarray:
        """The states ``(keep, T, L, D)`` on the host; raises ``NonFiniteError`` on NaN/inf."""
        if self._done is not None:
            self._done.synchronize()  # this block's copies only, not later launches
        bad_layers = self._bad.numpy()
        if bad_layers.any():
            names = [self._loaded.layer_names[int(i)] for i in np.flatnonzero(bad_layers)]
            raise NonFiniteError(
                f"the model produced NaN/inf hidden states at layers {names} "
                f"(model dtype {self._loaded.config.dtype}, storage {self._storage_dtype}); "
                "float16 overflows above 65504: use --dtype float32 and --storage-dtype float32"
            )
        states: np.ndarray = self._host.numpy()
        return states


def launch_block(
    loaded: LoadedModel,
    token_ids: np.ndarray,
    storage_dtype: str = "float32",
    *,
    batch_size: int,
    on_batch: BatchCallback | None = None,
    keep: int | None = None,
    out: Any = None,
    buffers: DeviceBuffers | None = None,
) -> PendingStates:
    """Start the forward passes of a block of contexts, ``batch_size`` contexts at a time.

    Batches are counted from the block's first context. On a CPU everything is done when
    this returns; on a GPU the work is queued, and the host waits only in
    :meth:`PendingStates.wait` (once per block, on this block's copies).

    Parameters
    ----------
    loaded
        From :func:`~posctx.model.load_model`.
    token_ids
        ``(contexts, T)`` integer array.
    storage_dtype
        ``"float32"`` or ``"float16"``: the dtype of the returned (and stored) states.
    batch_size
        Contexts per forward pass.
    on_batch
        Called with each batch's states on the device (see :data:`BatchCallback`), e.g. to
        accumulate statistics.
    keep
        Copy to the host the states of the first ``keep`` contexts only (the others go to
        ``on_batch`` alone and never leave the device); default all.
    out
        A host tensor of at least ``keep`` contexts to copy into (from :func:`host_buffer`,
        reused between blocks); default a new one.
    buffers
        The run's :class:`DeviceBuffers`; default new ones.
    """
    import torch

    buffers = buffers or DeviceBuffers(loaded, storage_dtype)
    device = buffers.device
    ids_all = np.ascontiguousarray(token_ids, dtype=np.int64)
    n, length = ids_all.shape
    keep = n if keep is None else max(0, min(keep, n))
    n_layers = len(loaded.layers)
    if out is None:
        out = host_buffer(loaded, keep, length, storage_dtype)
    host = out[:keep]
    bad = torch.zeros(n_layers, dtype=torch.bool, device=device)
    on_device = buffers.ids_to_device(ids_all)
    pre_norm: list[Any] = []
    # --final-norm before: the last hidden state is the final norm's input, not its output.
    hook = (
        None
        if loaded.final_norm is None
        else loaded.final_norm.register_forward_hook(lambda m, a, o: pre_norm.append(a[0]))
    )
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                ids = on_device[start:stop]
                hidden = loaded.model(
                    input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
                ).hidden_states
                if hook is not None:
                    hidden = (*hidden[:-1], pre_norm.pop())
                stacked = buffers.stack(loaded, hidden)
                bad |= ~torch.isfinite(stacked).transpose(0, 2).reshape(n_layers, -1).all(dim=1)
                if on_batch is not None:
                    on_batch(stacked, start, stop)
                if start < keep:
                    kept = min(stop, keep) - start
                    buffers.copy_to_host(stacked[:kept], host[start : start + kept])
    finally:
        if hook is not None:
            hook.remove()
    if buffers.copy_stream is None:
        return PendingStates(loaded, host, bad, None, storage_dtype)
    flags, done = buffers.flags_to_host(bad)
    return PendingStates(loaded, host, flags, done, storage_dtype)


def forward_block(
    loaded: LoadedModel,
    token_ids: np.ndarray,
    storage_dtype: str = "float32",
    *,
    batch_size: int,
    on_batch: BatchCallback | None = None,
    keep: int | None = None,
) -> np.ndarray:
    """Hidden states of a block of contexts, computed ``batch_size`` contexts at a time.

    :func:`launch_block` and then :meth:`PendingStates.wait`: see there. On a GPU, each
    batch's states are copied to pinned host memory on a separate CUDA stream while the next
    batch computes, and finiteness is checked on the device without a synchronisation per
    batch: the host waits once, at the end of the block.

    Returns
    -------
    numpy.ndarray
        ``(keep, T, n_layers, hidden_size)`` in ``storage_dtype``.

    Raises
    ------
    NonFiniteError
        Some hidden state is NaN or inf (in the model's dtype or after the cast to storage).
    """
    return launch_block(
        loaded, token_ids, storage_dtype, batch_size=batch_size, on_batch=on_batch, keep=keep
    ).wait()


__all__ = [
    "BatchCallback",
    "CudaApi",
    "accelerator_api",
    "DeviceBuffers",
    "PendingStates",
    "forward_block",
    "forward_hidden",
    "host_buffer",
    "launch_block",
    "storage_torch_dtype",
]
