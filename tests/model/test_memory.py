"""posctx.model.memory: --batch-size auto, the largest power of two that fits the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from posctx.config import ModelConfig
from posctx.model import load_model
from posctx.model.memory import (
    MAX_AUTO_BATCH,
    auto_batch_size,
    batch_for_memory,
    context_bytes,
    free_memory,
)


def test_the_batch_is_the_largest_power_of_two_within_the_budget() -> None:
    assert batch_for_memory(100, 100) == 1
    assert batch_for_memory(100, 799) == 4 and batch_for_memory(100, 800) == 8
    assert batch_for_memory(100, 50) == 1  # never below one context
    assert batch_for_memory(1, 10**12) == MAX_AUTO_BATCH
    assert batch_for_memory(0, 10) == 8  # a degenerate estimate stays bounded


def test_a_contexts_bytes_count_its_states_attention_and_mlp(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(ModelConfig(name=str(tiny_models["gpt2"])))  # 2 layers, 32 dims, 2 heads
    length, dims, hidden = 16, 32, 3
    states = hidden * dims * 4 + hidden * dims * 4  # hidden states, stacked copy
    transient = 2 * length * 4 + 3 * 4 * dims * 4  # one layer's scores and MLP (4 x dims)
    assert context_bytes(loaded, length, "float32", False) == length * (states + transient)
    summed = 2 * hidden * dims * 8  # the float64 copy statistics are summed in
    with_stats = context_bytes(loaded, length, "float32", True)
    assert with_stats - context_bytes(loaded, length, "float32", False) == length * summed
    half = context_bytes(loaded, length, "float16", False)
    assert context_bytes(loaded, length, "float32", False) - half == length * hidden * dims * 2


def test_on_a_cpu_auto_uses_at_most_4_gib(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert 0 < free_memory("cpu") <= 4 * 2**30
    loaded = load_model(ModelConfig(name=str(tiny_models["gpt2"])))
    import posctx.model.memory as memory

    monkeypatch.setattr(
        memory, "free_memory", lambda device: 10 * context_bytes(loaded, 64, "float32", False)
    )
    assert auto_batch_size(loaded, 64, "float32", False) == 8
