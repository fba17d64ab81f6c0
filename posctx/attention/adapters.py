"""Model side of the attention dissection: everything that reads a torch model.

One adapter per family (:data:`FAMILIES`, keyed by the config's ``model_type``) turns a
transformer block's pre-attention norm, query/key maps and rotary tables into float64 arrays
(:class:`~posctx.attention.kernels.AttentionWeights`, via :func:`attention_weights`) for the
kernels of :mod:`posctx.attention.kernels`. The model's own attention probabilities come from
an eager forward pass, and :func:`model_from_store` loads the model that made a store.
torch is imported inside the functions that need it, never at module level.

Examples
--------
>>> sorted(FAMILIES)[:3]
['bert', 'camembert', 'gpt2']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from posctx.attention.kernels import F64, AttentionWeights
from posctx.errors import ModelError, PosctxError
from posctx.types import PROVENANCE_ATTR

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

    from posctx.model import LoadedModel


def _f64(tensor: Any) -> F64:
    out: F64 = tensor.detach().to("cpu").double().numpy()
    return out


def _norm_arrays(norm: Any, kind: str) -> tuple[F64 | None, F64 | None, float]:
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        raise ModelError(f"cannot find the epsilon of the {kind} {type(norm).__name__}")
    return (
        None if weight is None else _f64(weight),
        None if bias is None else _f64(bias),
        float(eps),
    )


def _linear(module: Any, heads: int, head_dim: int) -> tuple[F64, F64]:
    """``nn.Linear`` (weight ``(out, in)``) as ``(in, heads, head_dim)`` and its bias."""
    w = _f64(module.weight).T.reshape(-1, heads, head_dim)
    b = (
        np.zeros((heads, head_dim))
        if module.bias is None
        else _f64(module.bias).reshape(heads, head_dim)
    )
    return np.ascontiguousarray(w), b


def _rope(model: Any, positions: npt.NDArray[np.integer]) -> tuple[F64, F64]:
    import torch

    rotary = model.rotary_emb
    inv_freq = rotary.inv_freq
    ids = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=inv_freq.device)[None]
    probe = torch.zeros(1, dtype=torch.float32, device=inv_freq.device)
    with torch.no_grad():
        cos, sin = rotary(probe, position_ids=ids)
    return _f64(cos[0]), _f64(sin[0])


def _bert_weights(model: Any, layer: int, positions: npt.NDArray[np.integer]) -> AttentionWeights:
    attn = model.encoder.layer[layer].attention.self
    heads, head_dim = int(attn.num_attention_heads), int(attn.attention_head_size)
    w_q, b_q = _linear(attn.query, heads, head_dim)
    w_k, b_k = _linear(attn.key, heads, head_dim)
    return AttentionWeights(
        model_type=str(model.config.model_type),
        norm="none",
        norm_weight=None,
        norm_bias=None,
        norm_eps=0.0,
        w_q=w_q,
        b_q=b_q,
        w_k=w_k,
        b_k=b_k,
        scaling=float(getattr(attn, "scaling", head_dim**-0.5)),
        rope_cos=None,
        rope_sin=None,
        causal=bool(getattr(model.config, "is_decoder", False)),
    )


def _gpt2_weights(model: Any, layer: int, positions: npt.NDArray[np.integer]) -> AttentionWeights:
    block = model.h[layer]
    attn = block.attn
    if getattr(attn, "is_cross_attention", False):  # pragma: no cover - not in GPT2Model blocks
        raise ModelError("GPT-2 cross-attention blocks are not self-attention")
    heads, head_dim, width = int(attn.num_heads), int(attn.head_dim), int(attn.embed_dim)
    weight, bias = _f64(attn.c_attn.weight), _f64(attn.c_attn.bias)  # Conv1D: (in, 3 * width)
    gamma, beta, eps = _norm_arrays(block.ln_1, "LayerNorm")
    return AttentionWeights(
        model_type="gpt2",
        norm="layernorm",
        norm_weight=gamma,
        norm_bias=beta,
        norm_eps=eps,
        w_q=np.ascontiguousarray(weight[:, :width].reshape(-1, heads, head_dim)),
        b_q=bias[:width].reshape(heads, head_dim),
        w_k=np.ascontiguousarray(weight[:, width : 2 * width].reshape(-1, heads, head_dim)),
        b_k=bias[width : 2 * width].reshape(heads, head_dim),
        scaling=float(attn.scaling),
        rope_cos=None,
        rope_sin=None,
        causal=True,
    )


def _llama_weights(model: Any, layer: int, positions: npt.NDArray[np.integer]) -> AttentionWeights:
    block = model.layers[layer]
    attn = block.self_attn
    cfg = model.config
    head_dim = int(attn.head_dim)
    heads, kv_heads = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
    w_q, b_q = _linear(attn.q_proj, heads, head_dim)
    w_k, b_k = _linear(attn.k_proj, kv_heads, head_dim)
    gamma, _, eps = _norm_arrays(block.input_layernorm, "RMSNorm")
    cos, sin = _rope(model, positions)
    return AttentionWeights(
        model_type=str(cfg.model_type),
        norm="rmsnorm",
        norm_weight=gamma,
        norm_bias=None,
        norm_eps=eps,
        w_q=w_q,
        b_q=b_q,
        w_k=w_k,
        b_k=b_k,
        scaling=float(attn.scaling),
        rope_cos=cos,
        rope_sin=sin,
        causal=True,
    )


@dataclass(frozen=True)
class _Family:
    """How to read one family's attention: its transformer blocks, norm, projections and rotary."""

    description: str
    weights: Callable[[Any, int, npt.NDArray[np.integer]], AttentionWeights]


_BERT = _Family(
    "post-LN encoder: transformer block l's query/key read hidden state l directly "
    "(encoder.layer[l].attention.self.query/.key)",
    _bert_weights,
)
_LLAMA = _Family(
    "pre-RMSNorm decoder: layers[l].input_layernorm, self_attn.q_proj/k_proj (grouped KV "
    "heads), rotary tables from rotary_emb",
    _llama_weights,
)

#: model_type -> adapter. The families share module layouts exactly (the HF classes are copies).
FAMILIES: dict[str, _Family] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "gpt2": _Family(
        "pre-LN decoder: h[l].ln_1, then the fused Conv1D h[l].attn.c_attn (q, k, v columns)",
        _gpt2_weights,
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}


def _n_transformer_blocks(model: Any) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0))


def attention_weights(model: Any, layer: int, positions: npt.ArrayLike) -> AttentionWeights:
    """The pre-attention norm and query/key maps of transformer block ``layer`` of a HF model.

    Parameters
    ----------
    model
        A HuggingFace base model (``LoadedModel.model``: ``BertModel``, ``GPT2Model``,
        ``LlamaModel``...).
    layer
        The transformer block, ``0..n_transformer_blocks-1``; it reads hidden state ``layer``.
    positions
        Position ids (0-based token indices) at which rotary tables are needed.

    Returns
    -------
    AttentionWeights

    Raises
    ------
    ModelError
        The model type has no adapter (see :data:`FAMILIES`), or ``layer`` is no transformer block.
    """
    cfg = getattr(model, "config", None)
    model_type = str(getattr(cfg, "model_type", None))
    family = FAMILIES.get(model_type)
    if family is None:
        raise ModelError(
            f"attention dissection does not support model type {model_type!r} "
            f"({type(model).__name__}): it knows the standard self-attention of "
            f"{', '.join(sorted(FAMILIES))}; add an adapter to posctx.attention.FAMILIES"
        )
    n_transformer_blocks = _n_transformer_blocks(model)
    if not 0 <= layer < n_transformer_blocks:
        raise ModelError(
            f"layer {layer} has no attention: transformer block l reads hidden state l, so "
            f"{model_type} with {n_transformer_blocks} transformer blocks has attention at layers 0..{n_transformer_blocks - 1} "
            f"(hidden state {n_transformer_blocks} is the last transformer block's output)"
        )
    return family.weights(model, layer, np.asarray(positions, dtype=np.int64))


def _batch_size(loaded: LoadedModel) -> int:
    """Contexts per forward pass for attention maps: the model's, or 8 with ``auto`` (each
    context keeps every layer's ``heads x T x T`` probabilities)."""
    batch = loaded.config.batch_size
    return max(1, int(batch)) if not isinstance(batch, str) else 8


def _forward_attention(
    loaded: LoadedModel,
    token_ids: npt.NDArray[np.integer],
    layer: int,
    index: npt.NDArray[np.intp],
    heads: npt.NDArray[np.intp],
) -> tuple[F64, F64]:
    """Attention probabilities of transformer block ``layer`` and its input hidden state, from the model.

    Returns ``(context, head, query, key)`` probabilities and ``(context, position, d)``
    inputs, both at the token indices ``index``. The model runs with eager attention (the
    only implementation that returns probabilities); its setting is restored afterwards.
    """
    import torch

    model = loaded.model
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    device = next(model.parameters()).device
    probs, inputs = [], []
    try:
        with torch.inference_mode():
            batch = _batch_size(loaded)
            for start in range(0, len(token_ids), batch):
                ids = torch.as_tensor(
                    np.asarray(token_ids[start : start + batch], dtype=np.int64),
                    device=device,
                )
                out = model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    output_attentions=True,
                    output_hidden_states=True,
                )
                att = out.attentions[layer].double().cpu().numpy()
                probs.append(att[:, heads][:, :, index][:, :, :, index])
                inputs.append(out.hidden_states[layer].double().cpu().numpy()[:, index])
    finally:
        if before != "eager":
            model.set_attn_implementation(before)
    return np.concatenate(probs), np.concatenate(inputs)


def model_from_store(hidden: xr.Dataset, *, device: str | None = None) -> LoadedModel:
    """Load the model that made a hidden-state store, from its provenance record.

    The model is loaded with eager attention (so that it can return attention
    probabilities) on the recorded device, or ``device``.

    Raises
    ------
    PosctxError
        The store has no record of its model.
    ModelError
        The model cannot be loaded, or its weights hash differs from the recorded one.
    """
    from posctx.config import ModelConfig
    from posctx.model import load_model

    record = hidden.attrs.get(PROVENANCE_ATTR) or {}
    model_record = ((record.get("config") or {}).get("model")) or None
    if model_record is None:
        raise PosctxError(
            "the hidden-state store has no provenance record of its model "
            "(attrs['posctx']['config']['model']): pass a store written by `posctx extract`"
        )
    config = replace(ModelConfig.from_dict(model_record), attn_implementation="eager")
    if device is not None:
        config = replace(config, device=device)
    loaded = load_model(config)
    check_model(loaded, hidden)
    return loaded


def check_model(loaded: LoadedModel, hidden: xr.Dataset) -> None:
    """Refuse a model whose weights hash differs from the one the store records.

    Raises
    ------
    ModelError
        The hashes differ (a store without a recorded hash is accepted).
    """
    recorded = ((hidden.attrs.get(PROVENANCE_ATTR) or {}).get("model") or {}).get("weights_hash")
    if recorded and recorded != loaded.weights_hash:
        raise ModelError(
            f"model {loaded.config.name!r} as loaded now is not the model that made this store "
            f"(weights hash {loaded.weights_hash} loaded, {recorded} recorded): the attention "
            "of other weights does not belong with these hidden states; load the recorded "
            "weights"
        )


__all__ = [
    "FAMILIES",
    "attention_weights",
    "check_model",
    "model_from_store",
]
