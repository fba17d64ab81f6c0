"""Thin xarray layer of the attention dissection: stores in, labelled score parts out.

* :func:`dissect_attention` checks the labels (layer, positions, contexts, heads) of a
  hidden-state store and its decomposition, reads one layer's inputs, runs the numpy kernels
  of :mod:`posctx.attention.kernels` with the weights :mod:`posctx.attention.adapters` reads
  from the model, and returns a labelled :class:`xarray.Dataset`;
* :func:`toeplitz_share` and :func:`format_toeplitz_table` measure and print how Toeplitz
  each part is;

Examples
--------
>>> SCORE_DIMS
('context', 'head', 'query', 'key')
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr
from dask.base import compute

from posctx._deprecated import warn_renamed
from posctx.attention.adapters import (
    _forward_attention,
    attention_weights,
    check_model,
    model_from_store,
)
from posctx.attention.kernels import F64, dissect_kernel, toeplitz_kernel
from posctx.errors import PosctxError
from posctx.model import LoadedModel
from posctx.types import (
    ATTENTION_ATTR,
    CONTEXT,
    DIM,
    HEAD,
    HIDDEN,
    KEY,
    KV_HEAD,
    LAYER,
    LAYER_NAME,
    PART,
    POSITION,
    PROVENANCE_ATTR,
    QUERY,
    TOKEN_ID,
    TOPIC,
)

#: The four parts, in the order (query part, key part): pos-pos, pos-ctx, ctx-pos, ctx-ctx.
PARTS = ("pos_pos", "pos_ctx", "ctx_pos", "ctx_ctx")
#: Dims of every score variable.
SCORE_DIMS = (CONTEXT, HEAD, QUERY, KEY)
#: Contexts dissected by default (each costs ``heads x T^2`` float64 per variable).
DEFAULT_CONTEXTS = 8


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
    hidden: xr.Dataset,
    decomposition: xr.Dataset,
    layer: int,
    *args: Any,
    model: LoadedModel | None = None,
    contexts: int | slice | Sequence[int] | npt.NDArray[Any] = DEFAULT_CONTEXTS,
    heads: Sequence[int] | None = None,
) -> xr.Dataset:
    """Split each head's pre-softmax attention scores at ``layer`` into pos and ctx parts.

    Transformer block ``layer``'s inputs ``x[c, t]`` (the stored ``hidden.sel(layer=layer)``)
    are split as ``a[t] = mu + pos[t]`` and ``b[c, t] = x[c, t] - a[t] = ctx[c] + resid[c, t]``
    with the decomposition of that layer; the norm is linearised with the statistics of the
    full ``x``, every bias goes with the pos part, and ``scaling * q k^T`` splits into
    ``pos_pos + pos_ctx + ctx_pos + ctx_ctx`` (:mod:`posctx.attention`). Scores are among the
    decomposition's positions (usually all but position 0 and a trailing [SEP]).

    The parts come from the stored hidden states; the model's own attention probabilities
    (``pattern``) come from a forward pass over the stored token ids with eager attention,
    restricted to the same positions, which also gives fresh inputs to compare the stored
    ones with (``attrs['input_max_abs_diff']``). This reads the selected contexts of one
    layer of ``hidden`` and computes eagerly: one ``dask.compute`` for everything it reads,
    so a lazy decomposition is computed once.

    Parameters
    ----------
    hidden
        The hidden-state store (:func:`posctx.open_hidden`).
    decomposition
        Its decomposition (:func:`posctx.open_decomposition` or :func:`posctx.decompose`),
        holding ``layer``.
    layer
        Hidden-state index ``0..n_transformer_blocks-1``: the input of transformer block ``layer``.
    model
        The model that made ``hidden``; by default the one its provenance records
        (:func:`~posctx.attention.adapters.model_from_store`). A different weights hash is
        refused.
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
        Unsupported architecture, no transformer block at ``layer``, or weights that did not make
        ``hidden``.
    PosctxError
        The layer, positions or contexts are not in the stores, or the heads do not exist.

    Notes
    -----
    Before posctx 0.2 the model came first: ``dissect_attention(model, hidden,
    decomposition, layer)``. That order still works, with a FutureWarning, until 0.3.
    """
    if isinstance(hidden, LoadedModel):  # the order before 0.2: (model, hidden, dec, layer)
        warn_renamed(
            "dissect_attention(model, hidden, decomposition, layer)",
            "dissect_attention(hidden, decomposition, layer, model=model)",
        )
        model, hidden, decomposition, layer = hidden, decomposition, layer, args[0]
    elif args:
        raise TypeError(f"dissect_attention takes 3 positional arguments, got {3 + len(args)}")
    if model is None:
        model = model_from_store(hidden)
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
    # One pass for everything read: each `.values` on a lazy decomposition would compute it.
    x, mu, pos, token_ids = compute(
        hidden[HIDDEN]
        .sel({**at, CONTEXT: labels, POSITION: positions})
        .transpose(CONTEXT, POSITION, DIM)
        .data,
        decomposition["mu"].sel(at).data,
        decomposition["pos"].sel(at).transpose(POSITION, DIM).data,
        hidden[TOKEN_ID].sel({CONTEXT: labels}).transpose(CONTEXT, POSITION).data,
    )
    x, mu, pos = (np.asarray(v, dtype=np.float64) for v in (x, mu, pos))
    token_ids = np.asarray(token_ids)
    parts = dissect_kernel(x, mu + pos, weights, chosen)

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
        KV_HEAD: (HEAD, weights.kv_head[chosen]),
        QUERY: positions,
        KEY: positions,
    }
    if TOPIC in hidden.coords:
        coords[TOPIC] = (
            CONTEXT,
            np.array([str(t) for t in hidden[TOPIC].sel({CONTEXT: labels}).values]),
        )
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


__all__ = [
    "ATTENTION_ATTR",
    "DEFAULT_CONTEXTS",
    "PARTS",
    "SCORE_DIMS",
    "dissect_attention",
    "format_toeplitz_table",
    "toeplitz_share",
]
