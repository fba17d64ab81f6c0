"""How many contexts a forward batch can hold: ``--batch-size auto``.

The estimate counts what one context keeps alive during a forward pass with every hidden
state returned: the hidden states in the model's dtype, their stacked copy in the storage
dtype, one layer's attention scores and MLP activations, and, with statistics on a GPU, the
float64 copy they are summed in. The batch is the largest power of two whose contexts fit in
half the device's free memory (a quarter of the host's available memory, at most 4 GiB, on a
CPU), between 1 and 1024.
"""

from __future__ import annotations

from posctx.model.loading import LoadedModel

#: The largest batch ``auto`` chooses.
MAX_AUTO_BATCH = 1024


def batch_for_memory(per_context: int, budget: int) -> int:
    """The largest power of two ``b <= MAX_AUTO_BATCH`` with ``b * per_context <= budget``
    (at least 1).

    >>> batch_for_memory(41 * 2**20, 40 * 2**30), batch_for_memory(10**12, 10**9)
    (512, 1)
    """
    fits = max(1, min(MAX_AUTO_BATCH, budget // max(1, per_context)))
    return 1 << (fits.bit_length() - 1)


def context_bytes(loaded: LoadedModel, length: int, storage_dtype: str, statistics: bool) -> int:
    """Bytes one context of ``length`` tokens holds during a forward pass (an estimate)."""
    cfg = loaded.model.config
    model_itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[loaded.config.dtype]
    store_itemsize = 2 if storage_dtype == "float16" else 4
    n_dims = loaded.hidden_size
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1) or 1)
    inner = int(
        getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * n_dims
    )
    kept = loaded.n_hidden_states * n_dims * model_itemsize
    stacked = len(loaded.layers) * n_dims * store_itemsize
    summed = 2 * len(loaded.layers) * n_dims * 8 if statistics else 0
    transient = heads * length * model_itemsize + 3 * inner * model_itemsize
    return length * (kept + stacked + summed + transient)


def free_memory(device: str) -> int:
    """Bytes the forward pass may use on ``device``: half the free memory of a GPU; a
    quarter of the host's available memory, at most 4 GiB, on a CPU."""
    import torch

    where = torch.device(device)
    if where.type == "cuda":
        free, _total = torch.cuda.mem_get_info(where)
        return int(free) // 2
    import os

    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform
        available = 8 * 2**30
    return int(min(4 * 2**30, available // 4))


def auto_batch_size(loaded: LoadedModel, length: int, storage_dtype: str, statistics: bool) -> int:
    """The forward batch ``--batch-size auto`` chooses for ``loaded`` at ``length`` tokens."""
    return batch_for_memory(
        context_bytes(loaded, length, storage_dtype, statistics), free_memory(loaded.config.device)
    )


__all__ = [
    "MAX_AUTO_BATCH",
    "auto_batch_size",
    "batch_for_memory",
    "context_bytes",
    "free_memory",
]
