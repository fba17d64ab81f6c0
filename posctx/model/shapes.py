"""Real model shapes built offline from their configs, for throughput and planning work.

Speed and store layout depend on a model's shape, not on its trained weights: a GPT-2-small
or Llama-3.2-1B shape with random weights (or on the meta device, with none) plans and runs
like the real model, without a model hub.

>>> shape_config("llama-1b").hidden_size, shape_config("gpt2-small").n_layer
(2048, 12)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from posctx.errors import ModelError
from posctx.model.loading import LoadedModel, layer_name

#: The shapes :func:`shape_config` knows.
SHAPES = ("gpt2-small", "llama-1b")


def shape_config(name: str) -> Any:
    """The transformers config of shape ``name``: ``gpt2-small`` or ``llama-1b``
    (meta-llama/Llama-3.2-1B)."""
    from transformers import GPT2Config, LlamaConfig

    if name == "gpt2-small":
        return GPT2Config()  # 12 layers, 768 dims, 12 heads, 1024 positions
    if name == "llama-1b":
        return LlamaConfig(
            vocab_size=128_256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=131_072,
            tie_word_embeddings=True,
        )
    raise ModelError(f"unknown model shape {name!r}: pick one of {', '.join(SHAPES)}")


def with_model(loaded: LoadedModel, model: Any, weights_hash: str) -> LoadedModel:
    """``loaded`` (for its tokenizer and settings) running ``model`` instead, every layer.

    ``model`` is a transformers base model (e.g. ``AutoModel.from_config(shape_config(...))``,
    random or on the meta device); ``weights_hash`` is what the store records for it.
    """
    cfg = model.config
    n_hidden = cfg.num_hidden_layers + 1
    layers = tuple(range(n_hidden))
    decoder = getattr(cfg, "model_type", "") in {"gpt2", "llama"}
    return dataclasses.replace(
        loaded,
        model=model,
        n_hidden_states=n_hidden,
        layers=layers,
        layer_names=tuple(layer_name(i, n_hidden, decoder) for i in layers),
        hidden_size=cfg.hidden_size,
        max_positions=getattr(cfg, "n_positions", None) or cfg.max_position_embeddings,
        weights_hash=weights_hash,
        final_norm=None,
        final_norm_name=None,
    )


__all__ = ["SHAPES", "shape_config", "with_model"]
