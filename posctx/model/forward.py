"""Forward passes: every requested hidden state of full-length contexts, in storage dtype.

:func:`forward_block` runs a block of contexts batch by batch (on a GPU, copying each batch
to pinned host memory while the next computes) and refuses NaN/inf with advice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from posctx.errors import NonFiniteError
from posctx.model.loading import LoadedModel
from posctx.model.statistics import DeviceStatistics


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
    return forward_block(loaded, token_ids, storage_dtype, batch_size=len(token_ids))


def _stacked_states(loaded: LoadedModel, ids: Any, storage_dtype: str) -> Any:
    """The requested layers' states of one batch, on the model's device, in storage dtype."""
    import torch

    out = loaded.model(
        input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
    )
    target = torch.float16 if storage_dtype == "float16" else torch.float32
    return torch.stack([out.hidden_states[i] for i in loaded.layers], dim=2).to(target)


def _raise_non_finite(loaded: LoadedModel, bad_layers: np.ndarray, storage_dtype: str) -> None:
    names = [loaded.layer_names[int(i)] for i in np.flatnonzero(bad_layers)]
    raise NonFiniteError(
        f"the model produced NaN/inf hidden states at layers {names} "
        f"(model dtype {loaded.config.dtype}, storage {storage_dtype}); float16 overflows "
        "above 65504: use --dtype float32 and --storage-dtype float32"
    )


def forward_block(
    loaded: LoadedModel,
    token_ids: np.ndarray,
    storage_dtype: str = "float32",
    *,
    batch_size: int,
    statistics: DeviceStatistics | None = None,
    topic_index: np.ndarray | None = None,
    keep: int | None = None,
) -> np.ndarray:
    """Hidden states of a block of contexts, computed ``batch_size`` contexts at a time.

    On a GPU, each batch's states are copied to pinned host memory on a separate CUDA
    stream while the next batch computes, and finiteness is checked on the device without a
    synchronisation per batch: the host waits once, at the end of the block. On a CPU the
    batches simply run in turn.

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
    statistics
        Add every batch, as it will be stored, to these statistics (on the model's device);
        ``topic_index`` then gives each context's topic.
    keep
        Return the states of the first ``keep`` contexts only (the others go to
        ``statistics`` alone and never leave the device); default all.

    Returns
    -------
    numpy.ndarray
        ``(keep, T, n_layers, hidden_size)`` in ``storage_dtype``.

    Raises
    ------
    NonFiniteError
        Some hidden state is NaN or inf (in the model's dtype or after the cast to storage).
    """
    import torch

    device = torch.device(loaded.config.device)
    ids_all = np.ascontiguousarray(token_ids, dtype=np.int64)
    n, length = ids_all.shape
    keep = n if keep is None else max(0, min(keep, n))
    if statistics is not None and (topic_index is None or len(topic_index) != n):
        raise ValueError("statistics need one topic index per context")
    n_layers = len(loaded.layers)
    shape = (keep, length, n_layers, loaded.hidden_size)
    target = torch.float16 if storage_dtype == "float16" else torch.float32
    cuda = device.type == "cuda"
    # Pinned (page-locked) memory is what lets a device-to-host copy run asynchronously.
    host = torch.empty(shape, dtype=target, pin_memory=cuda and keep > 0)
    copy_stream = torch.cuda.Stream(device) if cuda else None
    bad = torch.zeros(n_layers, dtype=torch.bool, device=device)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            ids = torch.as_tensor(ids_all[start:stop], device=device)
            stacked = _stacked_states(loaded, ids, storage_dtype)
            bad |= ~torch.isfinite(stacked).transpose(0, 2).reshape(n_layers, -1).all(dim=1)
            if statistics is not None:
                assert topic_index is not None
                statistics.add(stacked, topic_index[start:stop])
            if start >= keep:
                continue
            kept = min(stop, keep) - start
            if copy_stream is None:
                host[start : start + kept].copy_(stacked[:kept])
                continue
            computed = torch.cuda.Event()
            computed.record()
            with torch.cuda.stream(copy_stream):
                copy_stream.wait_event(computed)
                host[start : start + kept].copy_(stacked[:kept], non_blocking=True)
                # The copy stream still reads `stacked` after this loop frees it.
                stacked.record_stream(copy_stream)
        if copy_stream is not None:
            copy_stream.synchronize()
        states = host.numpy()
        bad_layers = bad.cpu().numpy()  # one device-to-host synchronisation per block
        if bad_layers.any():
            _raise_non_finite(loaded, bad_layers, storage_dtype)
    return states


__all__ = ["forward_block", "forward_hidden"]
