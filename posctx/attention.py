"""Attention dissection: each head's scores split into position and context parts (PAPER.md 4).

At layer ``l`` the self-attention of transformer block ``l`` reads the hidden states
``x[c, t] = hidden[c, t, l]`` (layer 0 = embedding output). With the decomposition of that
layer, every input vector splits in two::

    x[c, t] = a[t] + b[c, t]
    a[t]    = mu + pos[t]                  the "pos" part
    b[c, t] = ctx[c] + resid[c, t]         the "ctx" part (= x - a; the residual goes with it)

The block's pre-attention norm is linearised exactly, token by token, with the statistics of
the full ``x`` (``center(v) = v - mean_d v``, ``s = sqrt(var_d x + eps)``,
``r = sqrt(mean_d x^2 + eps)``)::

    LayerNorm:  LN(x) = [gamma * center(a) / s + beta] + [gamma * center(b) / s]
    RMSNorm:    RN(x) = [gamma * a / r]                + [gamma * b / r]
    none (BERT-style post-LN blocks): the block reads x itself

then the query and key maps (and rotary embeddings, which are linear at each position) are
applied to each part: ``q_a = W_q n_a + b_q``, ``q_b = W_q n_b``, likewise ``k``. **Every
bias (the norm's beta, the query and key biases) goes with the pos part**: it does not
depend on the context. Per head ``h`` with the module's own scaling::

    scores  = scaling * q k^T
            = scaling * (q_a k_a^T + q_a k_b^T + q_b k_a^T + q_b k_b^T)
            =            pos_pos  +  pos_ctx  +  ctx_pos  +  ctx_ctx

exactly, up to float64 rounding. :func:`dissect_attention` computes the four parts, the full
pre-softmax scores (from ``x`` directly, a separate path) and the model's own attention
probabilities from a forward pass; :func:`toeplitz_share` measures how much of each part's
variance its mean along each diagonal (query - key) explains; :func:`write_attention_dissection`
is the ``posctx attention`` command.

The module has three layers, as the rest of posctx: per-family adapters turn a model's torch
modules into float64 numpy arrays (:class:`AttentionWeights`; torch is imported inside the
functions that need it, never at module level), numpy kernels do the arithmetic, and a thin
xarray layer selects by label and attaches coordinates.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> t = np.arange(6)
>>> toeplitz = np.cos(0.5 * (t[:, None] - t[None, :]))[None, None]   # (context, head, q, k)
>>> float(toeplitz_kernel(toeplitz, t, t, causal=False)[0][0])
1.0
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import xarray as xr

from posctx.errors import ModelError, PosctxError
from posctx.types import CONTEXT, DIM, HIDDEN, LAYER, LAYER_NAME, POSITION, PROVENANCE_ATTR, TOKEN_ID, TOPIC

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel

#: Dimension names of the dissection.
HEAD = "head"
QUERY = "query"
KEY = "key"
PART = "part"

#: The four parts, in the order (query part, key part): pos-pos, pos-ctx, ctx-pos, ctx-ctx.
PARTS = ("pos_pos", "pos_ctx", "ctx_pos", "ctx_ctx")
#: Dims of every score variable.
SCORE_DIMS = (CONTEXT, HEAD, QUERY, KEY)
#: attrs key of the JSON record that says how a dissection was made.
ATTENTION_ATTR = "posctx_attention"
#: Contexts dissected by default (each costs ``heads x T^2`` float64 per variable).
DEFAULT_CONTEXTS = 8

F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Weights: what the dissection needs from one block, as float64 numpy arrays
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionWeights:
    """One block's pre-attention norm, query/key maps and rotary tables, in float64.

    Attributes
    ----------
    model_type
        The HuggingFace ``model_type`` the weights came from.
    norm
        ``"layernorm"``, ``"rmsnorm"`` or ``"none"`` (the block reads its input directly).
    norm_weight, norm_bias
        ``gamma`` and ``beta`` of the norm, ``(d,)``; ``None`` where the norm has none.
    norm_eps
        The norm's epsilon.
    w_q, w_k
        ``(d, heads, head_dim)`` and ``(d, kv_heads, head_dim)``: ``q = n @ w_q + b_q``.
    b_q, b_k
        ``(heads, head_dim)`` and ``(kv_heads, head_dim)``; zeros where the model has none.
    scaling
        The factor the module multiplies ``q k^T`` by (``1/sqrt(head_dim)`` for most models;
        GPT-2's ``scale_attn_by_inverse_layer_idx`` divides it further).
    rope_cos, rope_sin
        ``(positions, head_dim)`` rotary tables at the requested positions, or ``None``.
    causal
        Whether the model masks keys after the query.
    """

    model_type: str
    norm: str
    norm_weight: F64 | None
    norm_bias: F64 | None
    norm_eps: float
    w_q: F64
    b_q: F64
    w_k: F64
    b_k: F64
    scaling: float
    rope_cos: F64 | None
    rope_sin: F64 | None
    causal: bool

    @property
    def n_heads(self) -> int:
        return int(self.w_q.shape[1])

    @property
    def n_kv_heads(self) -> int:
        return int(self.w_k.shape[1])

    @property
    def kv_head(self) -> npt.NDArray[np.intp]:
        """The key head each query head reads (grouped-query attention shares them)."""
        return np.arange(self.n_heads) // (self.n_heads // self.n_kv_heads)


def _f64(tensor: Any) -> F64:
    out: F64 = tensor.detach().to("cpu").double().numpy()
    return out


def _attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


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
        model_type=str(model.config.model_type), norm="none", norm_weight=None, norm_bias=None,
        norm_eps=0.0, w_q=w_q, b_q=b_q, w_k=w_k, b_k=b_k,
        scaling=float(getattr(attn, "scaling", head_dim**-0.5)), rope_cos=None, rope_sin=None,
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
        model_type="gpt2", norm="layernorm", norm_weight=gamma, norm_bias=beta, norm_eps=eps,
        w_q=np.ascontiguousarray(weight[:, :width].reshape(-1, heads, head_dim)),
        b_q=bias[:width].reshape(heads, head_dim),
        w_k=np.ascontiguousarray(weight[:, width : 2 * width].reshape(-1, heads, head_dim)),
        b_k=bias[width : 2 * width].reshape(heads, head_dim),
        scaling=float(attn.scaling), rope_cos=None, rope_sin=None, causal=True,
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
        model_type=str(cfg.model_type), norm="rmsnorm", norm_weight=gamma, norm_bias=None,
        norm_eps=eps, w_q=w_q, b_q=b_q, w_k=w_k, b_k=b_k, scaling=float(attn.scaling),
        rope_cos=cos, rope_sin=sin, causal=True,
    )


@dataclass(frozen=True)
class _Family:
    """How to read one family's attention: its blocks, norm, projections and rotary."""

    description: str
    weights: Callable[[Any, int, npt.NDArray[np.integer]], AttentionWeights]


_BERT = _Family(
    "post-LN encoder: block l's query/key read hidden state l directly "
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


def _n_blocks(model: Any) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0))


def attention_weights(
    model: Any, layer: int, positions: npt.ArrayLike
) -> AttentionWeights:
    """The pre-attention norm and query/key maps of block ``layer`` of a HuggingFace model.

    Parameters
    ----------
    model
        A HuggingFace base model (``LoadedModel.model``: ``BertModel``, ``GPT2Model``,
        ``LlamaModel``...).
    layer
        The block, ``0..n_blocks-1``; it reads hidden state ``layer``.
    positions
        Position ids (0-based token indices) at which rotary tables are needed.

    Returns
    -------
    AttentionWeights

    Raises
    ------
    ModelError
        The model type has no adapter (see :data:`FAMILIES`), or ``layer`` is no block.
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
    n_blocks = _n_blocks(model)
    if not 0 <= layer < n_blocks:
        raise ModelError(
            f"layer {layer} has no attention block: block l reads hidden state l, so "
            f"{model_type} with {n_blocks} blocks has attention at layers 0..{n_blocks - 1} "
            f"(hidden state {n_blocks} is the last block's output)"
        )
    return family.weights(model, layer, np.asarray(positions, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# Numpy kernels
# --------------------------------------------------------------------------------------------


def split_norm(a: F64, b: F64, weights: AttentionWeights) -> tuple[F64, F64]:
    """The pre-attention norm of ``x = a + b``, split into its ``a`` and ``b`` parts.

    The norm's statistics come from the full ``x``; the bias goes with ``a``. The parts add
    up to :func:`apply_norm` of ``x``.

    Parameters
    ----------
    a
        ``(..., d)`` pos part (broadcast against ``b``).
    b
        ``(..., d)`` ctx part.
    weights
        From :func:`attention_weights`.

    Examples
    --------
    >>> import numpy as np
    >>> w = AttentionWeights("demo", "layernorm", np.array([1.0, 2.0, 3.0]), np.ones(3), 1e-5,
    ...     np.zeros((3, 1, 1)), np.zeros((1, 1)), np.zeros((3, 1, 1)), np.zeros((1, 1)), 1.0,
    ...     None, None, False)
    >>> a, b = np.array([1.0, 0.0, 2.0]), np.array([0.5, -1.0, 0.0])
    >>> na, nb = split_norm(a, b, w)
    >>> bool(np.allclose(na + nb, apply_norm(a + b, w)))
    True
    """
    a, b = np.broadcast_arrays(a, b)
    if weights.norm == "none":
        return a.astype(np.float64), b.astype(np.float64)
    x = a + b
    gamma = 1.0 if weights.norm_weight is None else weights.norm_weight
    if weights.norm == "layernorm":
        scale = np.sqrt(x.var(axis=-1, keepdims=True) + weights.norm_eps)
        na = gamma * (a - a.mean(axis=-1, keepdims=True)) / scale
        nb = gamma * (b - b.mean(axis=-1, keepdims=True)) / scale
    elif weights.norm == "rmsnorm":
        scale = np.sqrt((x * x).mean(axis=-1, keepdims=True) + weights.norm_eps)
        na, nb = gamma * a / scale, gamma * b / scale
    else:  # pragma: no cover - adapters only make the three kinds
        raise PosctxError(f"unknown norm {weights.norm!r}")
    if weights.norm_bias is not None:
        na = na + weights.norm_bias
    return na, nb


def apply_norm(x: F64, weights: AttentionWeights) -> F64:
    """The block's pre-attention norm of ``x`` (``(..., d)``), computed directly."""
    if weights.norm == "none":
        return x.astype(np.float64)
    gamma = 1.0 if weights.norm_weight is None else weights.norm_weight
    if weights.norm == "layernorm":
        centred = x - x.mean(axis=-1, keepdims=True)
        out = gamma * centred / np.sqrt(x.var(axis=-1, keepdims=True) + weights.norm_eps)
    else:
        out = gamma * x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + weights.norm_eps)
    if weights.norm_bias is not None:
        out = out + weights.norm_bias
    result: F64 = out
    return result


def _rotate_half(v: F64) -> F64:
    half = v.shape[-1] // 2
    return np.concatenate([-v[..., half:], v[..., :half]], axis=-1)


def project(n: F64, w: F64, bias: F64 | None, weights: AttentionWeights) -> F64:
    """``(context, position, d)`` normed vectors -> ``(context, position, heads, head_dim)``.

    ``bias`` is added when given (the pos part); rotary embeddings, linear at each position,
    are applied to whatever part is projected.
    """
    out: F64 = np.einsum("ctd,dhe->cthe", n, w, optimize=True)
    if bias is not None:
        out = out + bias
    if weights.rope_cos is not None and weights.rope_sin is not None:
        cos, sin = weights.rope_cos[:, None, :], weights.rope_sin[:, None, :]
        out = out * cos + _rotate_half(out) * sin
    return out


def head_scores(q: F64, k: F64, weights: AttentionWeights, heads: npt.NDArray[np.intp]) -> F64:
    """``scaling * q k^T`` per head: ``(context, head, query, key)`` for the given heads."""
    out: F64 = np.einsum(
        "cihe,cjhe->chij", q[:, :, heads], k[:, :, weights.kv_head[heads]], optimize=True
    )
    return out * weights.scaling


def dissect_kernel(
    x: F64, a: F64, weights: AttentionWeights, heads: npt.NDArray[np.intp]
) -> dict[str, F64]:
    """The four parts and the full scores of inputs ``x`` split as ``a + (x - a)``.

    Parameters
    ----------
    x
        ``(context, position, d)`` the block's inputs.
    a
        ``(position, d)`` the pos part, ``mu + pos[t]``.
    weights
        From :func:`attention_weights`, with rotary tables at these positions.
    heads
        Query heads to compute.

    Returns
    -------
    dict
        ``pos_pos``, ``pos_ctx``, ``ctx_pos``, ``ctx_ctx`` and ``scores``, each
        ``(context, head, query, key)`` float64. ``scores`` comes from ``x`` directly.
    """
    x = np.asarray(x, dtype=np.float64)
    a_full = np.broadcast_to(np.asarray(a, dtype=np.float64), x.shape)
    b = x - a_full
    na, nb = split_norm(a_full, b, weights)
    q_a, q_b = project(na, weights.w_q, weights.b_q, weights), project(nb, weights.w_q, None, weights)
    k_a, k_b = project(na, weights.w_k, weights.b_k, weights), project(nb, weights.w_k, None, weights)
    n = apply_norm(x, weights)
    q, k = project(n, weights.w_q, weights.b_q, weights), project(n, weights.w_k, weights.b_k, weights)
    return {
        "pos_pos": head_scores(q_a, k_a, weights, heads),
        "pos_ctx": head_scores(q_a, k_b, weights, heads),
        "ctx_pos": head_scores(q_b, k_a, weights, heads),
        "ctx_ctx": head_scores(q_b, k_b, weights, heads),
        "scores": head_scores(q, k, weights, heads),
    }


def causal_mask(query: npt.ArrayLike, key: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """``(query, key)`` True where a causal model lets the query see the key (key <= query)."""
    return np.asarray(key)[None, :] <= np.asarray(query)[:, None]


def toeplitz_kernel(
    parts: F64, query: npt.ArrayLike, key: npt.ArrayLike, *, causal: bool
) -> tuple[F64, F64, float]:
    """Share of variance explained by the mean along each diagonal, per head.

    For each context and head, the part ``P[i, j]`` (over the entries the model uses: all,
    or ``key <= query`` when ``causal``) is fitted by ``M[query_i - key_j]``, its mean along
    each diagonal. The share is ``1 - sum_c SS_res / sum_c SS_tot`` with sums of squares
    about each context's own mean, pooled over contexts: 1 for a Toeplitz part, about the
    chance level for noise.

    Parameters
    ----------
    parts
        ``(context, head, query, key)``.
    query, key
        Position labels of the query and key axes (diagonals are label differences).
    causal
        Use only ``key <= query``.

    Returns
    -------
    share, std, chance
        ``share`` and ``std`` are ``(head,)``: the share, and the pooled within-context
        standard deviation of the part. ``chance`` is the expected share of i.i.d. noise,
        ``(diagonals - 1) / (entries - 1)``. A part with no variance has share NaN.
    """
    query, key = np.asarray(query), np.asarray(key)
    mask = causal_mask(query, key) if causal else np.ones((query.size, key.size), bool)
    diagonal = (query[:, None] - key[None, :])[mask]
    values = np.asarray(parts, dtype=np.float64)[..., mask]  # (context, head, entries)
    groups, inverse, counts = np.unique(diagonal, return_inverse=True, return_counts=True)
    # One matrix product does the per-diagonal sums for every context and head at once.
    onehot = np.zeros((diagonal.size, groups.size))
    onehot[np.arange(diagonal.size), inverse] = 1.0
    sums = values @ onehot
    fitted = (sums / counts)[..., inverse]
    ss_res = ((values - fitted) ** 2).sum(axis=(0, -1))
    centred = values - values.mean(axis=-1, keepdims=True)
    ss_tot = (centred**2).sum(axis=(0, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    std = np.sqrt(ss_tot / (values.shape[0] * values.shape[-1]))
    chance = (groups.size - 1) / max(diagonal.size - 1, 1)
    return share, std, float(chance)


def softmax_scores(scores: F64, query: npt.ArrayLike, key: npt.ArrayLike, *, causal: bool) -> F64:
    """Softmax over keys of ``(..., query, key)`` scores, with the causal mask if asked."""
    s = np.array(scores, dtype=np.float64)
    if causal:
        s = np.where(causal_mask(query, key), s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    out: F64 = e / e.sum(axis=-1, keepdims=True)
    return out


# --------------------------------------------------------------------------------------------
# Model side: the attention probabilities of a forward pass, and the model of a store
# --------------------------------------------------------------------------------------------


def _forward_attention(
    loaded: LoadedModel,
    token_ids: npt.NDArray[np.integer],
    layer: int,
    index: npt.NDArray[np.intp],
    heads: npt.NDArray[np.intp],
) -> tuple[F64, F64]:
    """Attention probabilities of block ``layer`` and its input hidden state, from the model.

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
            for start in range(0, len(token_ids), max(1, loaded.config.batch_size)):
                ids = torch.as_tensor(
                    np.asarray(token_ids[start : start + loaded.config.batch_size], dtype=np.int64),
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


# --------------------------------------------------------------------------------------------
# The xarray layer
# --------------------------------------------------------------------------------------------


def _context_labels(
    contexts: int | slice | Sequence[int] | npt.NDArray[Any], dec: xr.Dataset, hidden: xr.Dataset
) -> npt.NDArray[Any]:
    if isinstance(contexts, (int, np.integer)) and not isinstance(contexts, bool):
        if contexts < 1:
            raise PosctxError(f"contexts must be at least 1, got {contexts}")
        labels = dec[CONTEXT].values[: int(contexts)]
    elif isinstance(contexts, slice):
        labels = hidden[CONTEXT].sel({CONTEXT: contexts}).values
    else:
        labels = np.asarray(contexts)
        if labels.ndim != 1:
            raise PosctxError(f"contexts must be 1-d labels, got shape {labels.shape}")
    missing = np.setdiff1d(labels, hidden[CONTEXT].values)
    if missing.size:
        raise PosctxError(
            f"contexts {missing[:5].tolist()} are not in the hidden-state store: pick labels "
            "it holds"
        )
    if labels.size == 0:
        raise PosctxError("the context selection is empty: pick at least one context")
    return labels


def _check_pair(hidden: xr.Dataset, dec: xr.Dataset, layer: int) -> None:
    for name, ds in (("hidden-state store", hidden), ("decomposition", dec)):
        if layer not in ds[LAYER].values:
            raise PosctxError(
                f"layer {layer} is not in the {name} (its layers: {ds[LAYER].values.tolist()}): "
                "decompose and dissect a layer both hold"
            )
    for name in ("mu", "pos"):
        if name not in dec.data_vars:
            raise PosctxError(f"the decomposition has no {name!r}: pass a decomposition store")
    if HIDDEN not in hidden.data_vars or TOKEN_ID not in hidden.data_vars:
        raise PosctxError(
            "the hidden-state store lacks 'hidden' or 'token_id': pass a store written by "
            "`posctx extract`"
        )
    missing = np.setdiff1d(dec[POSITION].values, hidden[POSITION].values)
    if missing.size:
        raise PosctxError(
            f"the decomposition's positions {missing[:5].tolist()} are not in the hidden-state "
            "store: pass the store the decomposition was made from"
        )
    made = ((dec.attrs.get(PROVENANCE_ATTR) or {}).get("model") or {}).get("weights_hash")
    have = ((hidden.attrs.get(PROVENANCE_ATTR) or {}).get("model") or {}).get("weights_hash")
    if made and have and made != have:
        raise PosctxError(
            "the decomposition was made from another model's hidden states (weights hash "
            f"{made} vs the store's {have}): pass the store the decomposition was made from"
        )


def dissect_attention(
    model: LoadedModel,
    hidden: xr.Dataset,
    decomposition: xr.Dataset,
    layer: int,
    *,
    contexts: int | slice | Sequence[int] | npt.NDArray[Any] = DEFAULT_CONTEXTS,
    heads: Sequence[int] | None = None,
) -> xr.Dataset:
    """Split each head's pre-softmax attention scores at ``layer`` into pos and ctx parts.

    Block ``layer``'s inputs ``x[c, t]`` (the stored ``hidden.sel(layer=layer)``) are split
    as ``a[t] = mu + pos[t]`` and ``b[c, t] = x[c, t] - a[t] = ctx[c] + resid[c, t]`` with
    the decomposition of that layer; the norm is linearised with the statistics of the full
    ``x``, every bias goes with the pos part, and ``scaling * q k^T`` splits into
    ``pos_pos + pos_ctx + ctx_pos + ctx_ctx`` (module docstring). Scores are among the
    decomposition's positions (usually all but position 0 and a trailing [SEP]).

    The parts come from the stored hidden states; the model's own attention probabilities
    (``pattern``) come from a forward pass over the stored token ids with eager attention,
    restricted to the same positions, which also gives fresh inputs to compare the stored
    ones with (``attrs['input_max_abs_diff']``). This reads the selected contexts of one
    layer of ``hidden`` and computes eagerly.

    Parameters
    ----------
    model
        The model that made ``hidden`` (:func:`model_from_store` loads it); a different
        weights hash is refused.
    hidden
        The hidden-state store (:func:`posctx.open_hidden`).
    decomposition
        Its decomposition (:func:`posctx.open_decomposition` or :func:`posctx.decompose`),
        holding ``layer``.
    layer
        Hidden-state index ``0..n_blocks-1``: the input of block ``layer``.
    contexts
        An int ``n``: the decomposition's first ``n`` contexts; or context labels (a slice,
        a sequence or an array). Contexts outside the decomposition are allowed: their ctx
        part is ``x - mu - pos``. Memory is about ``6 x contexts x heads x T^2 x 8`` bytes.
    heads
        Query heads to dissect; all by default.

    Returns
    -------
    xarray.Dataset
        ``pos_pos``, ``pos_ctx``, ``ctx_pos``, ``ctx_ctx``, ``scores`` (pre-softmax, no mask)
        and ``pattern`` (the model's attention probabilities, softmax over all positions),
        float64 with dims ``(context, head, query, key)``; coordinates ``context`` (with
        ``topic`` where known), ``head``, ``kv_head``, ``query`` and ``key`` (position
        labels). attrs: ``layer``, ``layer_name``, ``model_type``, ``causal``, ``norm``,
        ``scaling``, ``input_max_abs_diff`` and ``input_max_abs`` (stored vs fresh inputs)
        and ``posctx_attention``, a JSON record of all of it.

    Raises
    ------
    ModelError
        Unsupported architecture, no block at ``layer``, or weights that did not make
        ``hidden``.
    PosctxError
        The layer, positions or contexts are not in the stores, or the heads do not exist.
    """
    check_model(model, hidden)
    _check_pair(hidden, decomposition, layer)
    labels = _context_labels(contexts, decomposition, hidden)
    positions = decomposition[POSITION].values
    index = hidden.indexes[POSITION].get_indexer(positions)
    # Rotary tables are indexed by token index in the context (the position id).
    weights = attention_weights(model.model, int(layer), index)
    all_heads = np.arange(weights.n_heads)
    chosen = all_heads if heads is None else np.asarray(list(heads), dtype=np.intp)
    bad = np.setdiff1d(chosen, all_heads)
    if bad.size or chosen.size == 0:
        raise PosctxError(
            f"heads {bad.tolist() or '(none)'} do not exist: layer {layer} has heads "
            f"0..{weights.n_heads - 1}"
        )
    causal = weights.causal

    at = {LAYER: int(layer)}
    x = np.asarray(
        hidden[HIDDEN].sel({**at, CONTEXT: labels, POSITION: positions})
        .transpose(CONTEXT, POSITION, DIM).values,
        dtype=np.float64,
    )
    mu = np.asarray(decomposition["mu"].sel(at).values, dtype=np.float64)
    pos = np.asarray(decomposition["pos"].sel(at).transpose(POSITION, DIM).values, dtype=np.float64)
    parts = dissect_kernel(x, mu + pos, weights, chosen)

    token_ids = np.asarray(hidden[TOKEN_ID].sel({CONTEXT: labels}).transpose(CONTEXT, POSITION).values)
    pattern, fresh = _forward_attention(model, token_ids, int(layer), index, chosen)

    layer_name = (
        str(hidden[LAYER_NAME].sel(at).values) if LAYER_NAME in hidden.coords else str(layer)
    )
    record = {
        "layer": int(layer),
        "layer_name": layer_name,
        "model": model.config.name,
        "model_type": weights.model_type,
        "weights_hash": model.weights_hash,
        "causal": bool(causal),
        "norm": weights.norm,
        "scaling": float(weights.scaling),
        "n_heads": weights.n_heads,
        "n_kv_heads": weights.n_kv_heads,
        "heads": chosen.tolist(),
        "contexts": labels.tolist(),
        "positions": positions.tolist(),
        "input_max_abs_diff": float(np.abs(fresh - x).max()),
        "input_max_abs": float(np.abs(x).max()),
    }
    dims = SCORE_DIMS
    data = {name: (dims, parts[name]) for name in (*PARTS, "scores")}
    data["pattern"] = (dims, pattern)
    coords: dict[str, Any] = {
        CONTEXT: labels,
        HEAD: chosen,
        "kv_head": (HEAD, weights.kv_head[chosen]),
        QUERY: positions,
        KEY: positions,
    }
    if TOPIC in hidden.coords:
        coords[TOPIC] = (CONTEXT, np.array([str(t) for t in hidden[TOPIC].sel({CONTEXT: labels}).values]))
    attrs = {k: v for k, v in record.items() if not isinstance(v, list)}
    attrs[ATTENTION_ATTR] = json.dumps(record, sort_keys=True)
    return xr.Dataset(data, coords=coords, attrs=attrs)


def toeplitz_share(ds: xr.Dataset) -> xr.Dataset:
    """How Toeplitz-like each part (and the full scores) is, per head.

    For each head and variable (``pos_pos``, ``pos_ctx``, ``ctx_pos``, ``ctx_ctx``,
    ``scores``), the share of the variance, within each context and pooled over contexts,
    that the mean along each diagonal ``query - key`` explains (:func:`toeplitz_kernel`); for
    causal models only entries with ``key <= query`` count.

    Parameters
    ----------
    ds
        From :func:`dissect_attention`.

    Returns
    -------
    xarray.Dataset
        ``share`` and ``std`` (the part's pooled within-context standard deviation), dims
        ``(head, part)``; attrs ``chance`` (the share i.i.d. noise would get), ``layer``,
        ``layer_name``, ``n_contexts``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = np.arange(8)
    >>> smooth = np.cos(0.3 * (t[:, None] - t[None, :]))[None, None] * np.ones((2, 1, 1, 1))
    >>> noise = np.random.default_rng(0).normal(size=(2, 1, 8, 8))
    >>> ds = xr.Dataset({p: (SCORE_DIMS, smooth if p == "pos_pos" else noise)
    ...                  for p in (*PARTS, "scores")}, coords={QUERY: t, KEY: t},
    ...                 attrs={"causal": False, "layer": 0})
    >>> shares = toeplitz_share(ds)
    >>> float(shares.share.sel(part="pos_pos")[0]), bool(shares.share.sel(part="ctx_ctx")[0] < 0.5)
    (1.0, True)
    """
    names = [*PARTS, "scores"]
    causal = bool(ds.attrs.get("causal", False))
    query, key = ds[QUERY].values, ds[KEY].values
    shares, stds = [], []
    chance = math.nan
    for name in names:
        share, std, chance = toeplitz_kernel(
            ds[name].transpose(*SCORE_DIMS).values, query, key, causal=causal
        )
        shares.append(share)
        stds.append(std)
    coords: dict[str, Any] = {PART: names}
    if HEAD in ds.coords:
        coords[HEAD] = ds[HEAD].values
    return xr.Dataset(
        {
            "share": ((HEAD, PART), np.stack(shares, axis=1)),
            "std": ((HEAD, PART), np.stack(stds, axis=1)),
        },
        coords=coords,
        attrs={
            "chance": chance,
            "layer": ds.attrs.get("layer"),
            "layer_name": ds.attrs.get("layer_name"),
            "n_contexts": int(ds.sizes.get(CONTEXT, 0)),
        },
    )


def format_toeplitz_table(shares: xr.Dataset) -> str:
    """Per-head Toeplitz shares (and standard deviations) as a fixed-width text table.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> shares = xr.Dataset({"share": ((HEAD, PART), np.full((1, 5), 0.5)),
    ...     "std": ((HEAD, PART), np.ones((1, 5)))},
    ...     coords={HEAD: [0], PART: [*PARTS, "scores"]}, attrs={"chance": 0.1, "layer": 2})
    >>> print(format_toeplitz_table(shares).splitlines()[1])
    head   pos_pos   pos_ctx   ctx_pos   ctx_ctx    scores
    """
    names = list(shares[PART].values)
    title = (
        f"layer {shares.attrs.get('layer')}: Toeplitz share per head (sd in brackets); "
        f"chance {shares.attrs.get('chance', math.nan):.3f}"
    )
    lines = [title, f"{'head':<4} " + " ".join(f"{n:>9}" for n in names)]

    def row(label: str, share: F64, std: F64) -> str:
        cells = " ".join(f"{s:>9.3f}" for s in share)
        sds = " ".join(f"{'(' + format(d, '.3g') + ')':>9}" for d in std)
        return f"{label:<4} {cells}\n{'':<4} {sds}"

    for i, head in enumerate(shares[HEAD].values):
        lines.append(row(str(int(head)), shares.share.values[i], shares["std"].values[i]))
    lines.append(
        row("mean", np.nanmean(shares.share.values, axis=0), shares["std"].values.mean(axis=0))
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class AttentionResult:
    """What :func:`write_attention_dissection` wrote, and the measurements."""

    figures: tuple[Path, ...]
    json: Path
    csv: Path
    shares: tuple[xr.Dataset, ...]
    seconds: float


def write_attention_dissection(
    hidden_path: str,
    decomposition_path: str,
    layers: Sequence[int],
    out: str | Path,
    *,
    contexts: int = DEFAULT_CONTEXTS,
    heads: Sequence[int] | None = None,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> AttentionResult:
    """The ``posctx attention`` command: dissect layers, write figures and Toeplitz shares.

    Loads the model recorded in the hidden-state store (refusing other weights), dissects
    each layer on the first ``contexts`` contexts of the decomposition and writes::

        OUT/attention_layer{L}.png            per head: pattern and the four parts, mean over contexts
        OUT/attention_layer{L}_context{C}.png the same for the first context alone
        OUT/toeplitz.json                     per layer and head, share and sd of each part
        OUT/toeplitz.csv                      the same, one row per (layer, head, part)

    Returns
    -------
    AttentionResult
    """
    from posctx.decomposition import open_decomposition
    from posctx.plots import plot_attention_dissection, png_bytes
    from posctx.store import open_hidden

    start = time.perf_counter()
    hidden = open_hidden(hidden_path, storage_options=storage_options)
    dec = open_decomposition(decomposition_path, storage_options=storage_options)
    loaded = model_from_store(hidden, device=device)
    for layer in layers:  # refuse a layer without a block before writing anything
        attention_weights(loaded.model, int(layer), np.zeros(1, np.int64))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    all_shares: list[xr.Dataset] = []
    rows: list[dict[str, Any]] = []
    for layer in layers:
        ds = dissect_attention(loaded, hidden, dec, int(layer), contexts=contexts, heads=heads)
        shares = toeplitz_share(ds)
        all_shares.append(shares)
        first = ds[CONTEXT].values[0]
        for name, context in ((f"attention_layer{layer}.png", None), (f"attention_layer{layer}_context{first}.png", first)):
            path = target / name
            path.write_bytes(png_bytes(plot_attention_dissection(ds, context=context)))
            figures.append(path)
        for i, head in enumerate(shares[HEAD].values):
            for j, part in enumerate(shares[PART].values):
                rows.append({
                    "layer": int(layer), "layer_name": ds.attrs["layer_name"], "head": int(head),
                    "part": str(part), "share": _finite(shares.share.values[i, j]),
                    "std": _finite(shares["std"].values[i, j]), "chance": shares.attrs["chance"],
                })
    json_path, csv_path = target / "toeplitz.json", target / "toeplitz.csv"
    json_path.write_text(json.dumps({
        "hidden": str(hidden_path),
        "decomposition": str(decomposition_path),
        "model": loaded.config.name,
        "weights_hash": loaded.weights_hash,
        "contexts": int(contexts),
        "measure": "share of each part's within-context variance explained by its mean along "
                   "each diagonal (query - key), pooled over contexts; causal models: key <= query",
        "rows": rows,
    }, indent=2))
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["layer"])
        writer.writeheader()
        writer.writerows(rows)
    return AttentionResult(
        tuple(figures), json_path, csv_path, tuple(all_shares), time.perf_counter() - start
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


__all__ = [
    "ATTENTION_ATTR",
    "FAMILIES",
    "HEAD",
    "KEY",
    "PART",
    "PARTS",
    "QUERY",
    "SCORE_DIMS",
    "AttentionResult",
    "AttentionWeights",
    "apply_norm",
    "attention_weights",
    "causal_mask",
    "check_model",
    "dissect_attention",
    "dissect_kernel",
    "format_toeplitz_table",
    "head_scores",
    "model_from_store",
    "project",
    "softmax_scores",
    "split_norm",
    "toeplitz_kernel",
    "toeplitz_share",
    "write_attention_dissection",
]
