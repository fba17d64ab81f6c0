"""Attention dissection: each head's scores split into position and context parts (PAPER.md 4).

At layer ``l`` the self-attention of transformer block ``l`` reads the hidden states
``x[c, t] = hidden[c, t, l]`` (layer 0 = embedding output). With the decomposition of that
layer, every input vector splits in two::

    x[c, t] = a[t] + b[c, t]
    a[t]    = mu + pos[t]                  the "pos" part
    b[c, t] = ctx[c] + resid[c, t]         the "ctx" part (= x - a; the residual goes with it)

The transformer block's pre-attention norm is linearised exactly, token by token, with the statistics of
the full ``x`` (``center(v) = v - mean_d v``, ``s = sqrt(var_d x + eps)``,
``r = sqrt(mean_d x^2 + eps)``)::

    LayerNorm:  LN(x) = [gamma * center(a) / s + beta] + [gamma * center(b) / s]
    RMSNorm:    RN(x) = [gamma * a / r]                + [gamma * b / r]
    none (BERT-style post-LN transformer blocks): the block reads x itself

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

The package has three numeric layers, as the rest of posctx:

* :mod:`~posctx.attention.adapters`: everything that touches a torch model. Per-family
  adapters (:data:`FAMILIES`) turn a transformer block's torch modules into float64 arrays
  (:class:`AttentionWeights`); the model's own forward gives ``pattern``;
  :func:`model_from_store` loads the model that made a store. torch is imported inside the
  functions that need it, never at module level;
* :mod:`~posctx.attention.kernels`: the numpy arithmetic (:func:`split_norm`,
  :func:`project`, :func:`head_scores`, :func:`dissect_kernel`, :func:`toeplitz_kernel`...),
  with neither torch nor xarray;
* :mod:`~posctx.attention.api`: the thin xarray layer, which checks and selects by label and
  attaches coordinates (:func:`dissect_attention`, :func:`toeplitz_share`);

and, on top, :mod:`~posctx.attention.figures` (:func:`plot_attention_dissection`) and
:mod:`~posctx.attention.writers` (:func:`write_attention_dissection`: figures, JSON and CSV
files).

The dimension names (``head``, ``query``, ``key``, ``part``) are in :mod:`posctx.types`.

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

from posctx.attention.adapters import FAMILIES, attention_weights, check_model, model_from_store
from posctx.attention.api import (
    ATTENTION_ATTR,
    PARTS,
    SCORE_DIMS,
    dissect_attention,
    format_toeplitz_table,
    toeplitz_share,
)
from posctx.attention.figures import plot_attention_dissection
from posctx.attention.kernels import (
    AttentionWeights,
    apply_norm,
    causal_mask,
    dissect_kernel,
    head_scores,
    project,
    softmax_scores,
    split_norm,
    toeplitz_kernel,
)
from posctx.attention.writers import AttentionResult, write_attention_dissection
from posctx.types import HEAD, KEY, PART, QUERY

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
    "plot_attention_dissection",
    "project",
    "softmax_scores",
    "split_norm",
    "toeplitz_kernel",
    "toeplitz_share",
    "write_attention_dissection",
]
