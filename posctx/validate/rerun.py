"""The ``rerun`` check: a few contexts recomputed with the recorded model, compared with the store.

The model is loaded only inside the check (through :mod:`posctx.model`, the one module that
imports torch and transformers), so importing :mod:`posctx.validate` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from posctx.types import HIDDEN, LAYER, POSITION, TOKEN_ID
from posctx.validate.report import Check, _plural, _Skip
from posctx.validate.structure import _Store

#: The largest relative difference (per hidden vector, ``|recomputed - stored| / |stored|``)
#: the ``rerun`` check accepts, by dtype; the coarser of the storage and compute dtypes
#: applies. A recomputation on the same machine with the same libraries is normally
#: bit-identical (each context is recomputed inside the very batch it was extracted in), but
#: another thread count, BLAS build, attention kernel or device sums in another order, and a
#: different batch composition changes the BLAS blocking and so the reduction order too.
#: In float32 that moves values by ~1e-6 relative, so 1e-4 leaves a wide margin while a
#: tampered or mis-attributed vector differs by orders of magnitude more. float16 storage
#: rounds each value to 2**-11 relative (~4.9e-4), hence 2e-3; bfloat16 computation keeps 3
#: fewer mantissa bits than float16, hence 8x that.
RERUN_TOLERANCE: dict[str, float] = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}


def _rerun_model(model_config: Mapping[str, Any]) -> tuple[Any, str]:
    """The recorded model, loaded; on the CPU (with a note) if its device is not usable here."""
    from posctx.config import ModelConfig
    from posctx.errors import ModelError
    from posctx.model import load_model

    config = ModelConfig.from_dict(model_config)
    try:
        return load_model(config), ""
    except ModelError as exc:
        if config.device == "cpu":
            raise
        first = exc
    # Same weights and dtype on another device: a different reduction order, within tolerance.
    # Any other cause (the model is gone) fails on the CPU again and is reported as such.
    return load_model(replace(config, device="cpu")), f" (on cpu: {first})"


def _check_rerun(st: _Store, n: int, seed: int) -> Check:
    from posctx.config import ExtractConfig
    from posctx.errors import ModelError
    from posctx.model import forward_block

    record = st.record
    if "config" not in record:
        raise _Skip("no provenance config says which model made the store")
    config = ExtractConfig.from_dict(record["config"])
    hidden, token_id = st.array(HIDDEN), st.array(TOKEN_ID)
    complete = st.complete_blocks()
    if st.stored_contexts() == 0:
        raise _Skip(f"{st.sample_note()}: there is nothing to compare a recomputation with")
    # Only contexts whose hidden states the store keeps (all, but for --hidden-contexts N).
    candidates = np.concatenate(
        [np.arange(b.start, b.stop) for b in st.stored_blocks()] or [np.array([], int)]
    )
    if candidates.size == 0:
        raise _Skip("no block is marked written")
    picks = np.sort(
        np.random.default_rng(seed).choice(candidates, size=min(n, candidates.size), replace=False)
    )
    try:
        loaded, note = _rerun_model(record["config"].get("model") or {})
    except ModelError as exc:
        return Check("rerun", "fail", f"cannot load the model that made this store: {exc}")
    recorded = (record.get("model") or {}).get("weights_hash")
    if loaded.weights_hash != recorded:
        return Check(
            "rerun",
            "fail",
            f"the model loaded now is not the one that made this store: weights hash "
            f"{loaded.weights_hash} loaded, {recorded} recorded; values not compared",
            {"weights_hash_loaded": loaded.weights_hash, "weights_hash_recorded": recorded},
        )
    layers = st.values(LAYER).tolist() if LAYER in st.arrays else None
    if layers is not None and list(loaded.layers) != layers:
        return Check(
            "rerun",
            "fail",
            f"the model gives layers {list(loaded.layers)}, the store holds {layers}",
        )
    storage = str(hidden.dtype)
    tolerance = max(
        RERUN_TOLERANCE.get(storage, 1e-4), RERUN_TOLERANCE.get(config.model.dtype, 1e-4)
    )
    # The batch the store was extracted with (``auto`` resolved when it was created).
    batch = int(record.get("batch_size") or config.model.batch_size)
    chunk = int(record.get("chunk_contexts") or complete[0].size)
    vocab = getattr(loaded.model.config, "vocab_size", None)
    worst_abs, worst_rel, worst_at = 0.0, 0.0, (int(picks[0]), 0, 0)
    per_context: dict[int, float] = {}
    failed: dict[int, str] = {}  # contexts that could not be recomputed, and why
    n_contexts = int(token_id.shape[0])
    for (start, stop), members in _batches(chunk, n_contexts, picks, batch).items():
        ids = np.asarray(token_id[start:stop])
        if vocab and (ids.min() < 0 or ids.max() >= vocab):
            failed.update(dict.fromkeys(members, "token ids outside the vocabulary in its batch"))
            continue
        try:
            # The whole batch the context was extracted in: same neighbours, same kernels.
            fresh = forward_block(loaded, ids, storage, batch_size=batch)
        except Exception as exc:  # NaN from the model, say: the store cannot match it
            failed.update(dict.fromkeys(members, f"{type(exc).__name__}: {exc}"))
            continue
        for c in members:
            abs_diff, rel = _differences(fresh[c - start], np.asarray(hidden[c]))
            per_context[c] = float(rel.max())
            worst_abs = max(worst_abs, abs_diff)
            if float(rel.max()) > worst_rel:
                t, k = (int(v) for v in np.unravel_index(int(rel.argmax()), rel.shape))
                worst_rel, worst_at = float(rel.max()), (c, t, k)
    bad = sorted(c for c, r in per_context.items() if not r <= tolerance)
    not_run = (
        f"; contexts {sorted(failed)} not recomputed ({next(iter(failed.values()))})"
        if failed
        else ""
    )
    figures: dict[str, Any] = {
        "contexts": picks.tolist(),
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
        "tolerance": tolerance,
        "batch_size": batch,
        "storage_dtype": storage,
        "compute_dtype": config.model.dtype,
        "mismatched_contexts": bad,
        "weights_hash": loaded.weights_hash,
        "not_recomputed": sorted(failed),
    }
    done = sorted(per_context)
    among = ""
    if st.sample_note():
        figures["hidden_contexts"] = st.stored_contexts()
        among = (
            f" (picked among the first {st.stored_contexts()} of {st.n_contexts()} contexts, "
            "the ones whose hidden states the store keeps)"
        )
    summary = (
        f"{_plural(len(done), 'context')} {done[:10]}{among} recomputed in their extraction "
        f"batches of {batch}{note}: max abs diff {worst_abs:.3g}, max relative diff "
        f"{worst_rel:.3g} (tolerance {tolerance:g} for {storage} storage, "
        f"{config.model.dtype} compute){not_run}"
    )
    if bad:
        c, t, k = worst_at
        return Check(
            "rerun",
            "fail",
            f"{summary}; contexts {bad} differ from what the model computes (worst at "
            f"context={c}, position={st.label(POSITION, t)}, layer={st.label(LAYER, k)}): the "
            "stored values were changed after extraction or belong to other token ids",
            figures,
        )
    if failed:
        return Check("rerun", "fail", summary, figures)
    return Check("rerun", "ok", f"{summary}; weights hash matches", figures)


def _differences(new: np.ndarray, stored: np.ndarray) -> tuple[float, np.ndarray]:
    """Max absolute difference, and ``|new - stored| / |stored|`` per (position, layer) vector.

    A non-finite stored value counts as an infinite difference, never as a match.
    """
    a, b = new.astype(np.float64), stored.astype(np.float64)
    diff = np.where(np.isfinite(b), np.abs(a - b), np.inf)
    norm = np.linalg.norm(np.where(np.isfinite(b), b, 0.0), axis=-1)
    err = np.sqrt(np.sum(np.square(diff), axis=-1))
    rel = err / np.maximum(norm, np.finfo(np.float32).tiny)
    return float(diff.max(initial=0.0)), rel


def _batches(
    chunk: int, n_contexts: int, picks: np.ndarray, batch: int
) -> dict[tuple[int, int], list[int]]:
    """The extraction batch ``(start, stop)`` of each picked context, with the picks in it.

    Extraction runs forward groups of ``ceil(batch / chunk)`` consecutive blocks (one block
    when a chunk holds a batch), each in batches of ``batch`` contexts from its start (see
    :mod:`posctx.extraction.groups`).

    >>> _batches(4, 8, np.array([1, 2, 7]), 3)  # blocks of 4: a group is one block
    {(0, 3): [1, 2], (7, 8): [7]}
    >>> _batches(1, 10, np.array([1, 2, 7, 9]), 3)  # blocks of 1: groups of 3 blocks
    {(0, 3): [1, 2], (6, 9): [7], (9, 10): [9]}
    """
    per_group = max(1, -(-batch // chunk)) * chunk
    out: dict[tuple[int, int], list[int]] = {}
    for c in picks.tolist():
        first = c // per_group * per_group
        start = first + (c - first) // batch * batch
        stop = min(start + batch, first + per_group, n_contexts)
        out.setdefault((start, stop), []).append(c)
    return out
