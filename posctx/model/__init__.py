"""The model layer: the only package that imports torch and transformers.

Three modules, in the order a model is used: :mod:`~posctx.model.resolve` finds a model's
files (the built-in ``minilm``, a local folder or a HuggingFace id),
:mod:`~posctx.model.loading` loads and checks the model and tokenizer, and
:mod:`~posctx.model.forward` runs the forward pass that returns every requested hidden state
as one ``(batch, position, layer, dim)`` array. torch is imported inside functions only, so
importing posctx stays light.
"""

from __future__ import annotations

from posctx.model.forward import forward_block, forward_hidden
from posctx.model.loading import (
    LoadedModel,
    SpecialTokens,
    check_device,
    check_length,
    check_loadable,
    load_model,
    special_tokens,
    weights_hash,
)
from posctx.model.resolve import MINILM, cache_dir, minilm_path, resolve_model

__all__ = [
    "MINILM",
    "LoadedModel",
    "SpecialTokens",
    "cache_dir",
    "check_device",
    "check_length",
    "check_loadable",
    "forward_block",
    "forward_hidden",
    "load_model",
    "minilm_path",
    "resolve_model",
    "special_tokens",
    "weights_hash",
]
