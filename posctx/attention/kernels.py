"""Numpy kernels of the attention dissection: float64 arrays in, score parts out.

The bottom of the dissection's layers (adapters and numpy kernels -> :mod:`posctx.attention.api`);
nothing here imports torch, transformers, xarray or dask. :class:`AttentionWeights` holds what
the kernels need from one transformer block, as :mod:`posctx.attention.adapters` reads it from a model:

* :func:`split_norm` linearises the pre-attention norm of ``x = a + b`` into its two parts
  (:func:`apply_norm` is the direct norm they add up to);
* :func:`project` and :func:`head_scores` apply the query/key maps, rotary tables and the
  module's scaling; :func:`dissect_kernel` puts them together into the four parts;
* :func:`toeplitz_kernel` measures how Toeplitz each part is; :func:`causal_mask` and
  :func:`softmax_scores` are the masking and softmax of the model's attention.

Examples
--------
>>> import numpy as np
>>> scores = np.zeros((1, 1, 3, 3))
>>> softmax_scores(scores, np.arange(3), np.arange(3), causal=True)[0, 0, 1].tolist()
[0.5, 0.5, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from posctx.errors import PosctxError

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AttentionWeights:
    """One transformer block's pre-attention norm, query/key maps and rotary tables, in float64.

    Attributes
    ----------
    model_type
        The HuggingFace ``model_type`` the weights came from.
    norm
        ``"layernorm"``, ``"rmsnorm"`` or ``"none"`` (the transformer block reads its input directly).
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
    """The transformer block's pre-attention norm of ``x`` (``(..., d)``), computed directly."""
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
        ``(context, position, d)`` the transformer block's inputs.
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
    q_a, q_b = (
        project(na, weights.w_q, weights.b_q, weights),
        project(nb, weights.w_q, None, weights),
    )
    k_a, k_b = (
        project(na, weights.w_k, weights.b_k, weights),
        project(nb, weights.w_k, None, weights),
    )
    n = apply_norm(x, weights)
    q, k = (
        project(n, weights.w_q, weights.b_q, weights),
        project(n, weights.w_k, weights.b_k, weights),
    )
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


__all__ = [
    "AttentionWeights",
    "apply_norm",
    "causal_mask",
    "dissect_kernel",
    "head_scores",
    "project",
    "softmax_scores",
    "split_norm",
    "toeplitz_kernel",
]
