"""A hidden-state store in, a decomposition store out: what ``posctx decompose`` runs.

:func:`decompose_store` is the one place that chooses between a fresh decomposition and an
update of an earlier one (``--from``), resolves the default positions and a topic, and opens
the result; the command line, the demo and the pipelines all call it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import xarray as xr

from posctx.decomposition.api import (
    Selection,
    decompose,
    finalize,
    label_select,
    paper_positions,
)
from posctx.decomposition.incremental import update_decomposition
from posctx.decomposition.storage import open_decomposition, write_decomposition
from posctx.decomposition.stored import cannot_serve, stored_statistics
from posctx.errors import PosctxError
from posctx.store import open_hidden, read_provenance
from posctx.store.layout import StatisticsPlan
from posctx.store.statistics import open_statistics
from posctx.types import (
    CONTEXT,
    DECOMPOSITION_ATTR,
    HIDDEN_SAMPLE_ATTR,
    POSITION,
    STATISTICS_ATTR,
    TOPIC,
    PathLike,
)

#: The position selection that drops position 0 and a trailing [SEP] (:func:`paper_positions`).
AUTO: Final = "auto"


@dataclass(frozen=True)
class DecomposeResult:
    """What :func:`decompose_store` wrote.

    Attributes
    ----------
    path
        The decomposition store.
    decomposition
        It, opened (lazy; :func:`~posctx.decomposition.open_decomposition`).
    contexts_read
        Contexts whose hidden states were read: none from statistics, all of the selection
        for a fresh decomposition from the hidden states, only the new ones for an update.
    previous
        The decomposition an update started from, else ``None``.
    seconds
        Wall time.
    source
        ``"statistics"`` when the statistics kept during extraction served the selection
        (no hidden state read), else ``"hidden states"`` (naming a stored sample).
    source_reason
        Why the hidden states were read, when the store has statistics that could not serve.
    """

    path: str
    decomposition: xr.Dataset
    contexts_read: int
    previous: str | None
    seconds: float
    source: str = "hidden states"
    source_reason: str | None = None


def decompose_store(
    store: PathLike,
    out: PathLike,
    *,
    positions: Selection | Literal["auto"] = AUTO,
    contexts: Selection = None,
    topic: str | None = None,
    moments: bool = False,
    runs: int | None = None,
    previous: PathLike | None = None,
    mode: Literal["w", "w-"] = "w-",
    complete_only: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> DecomposeResult:
    """Decompose the hidden-state store ``store`` into the decomposition store ``out``.

    Parameters
    ----------
    store
        Path or URL of a hidden-state store (``posctx extract``).
    out
        Path or URL of the decomposition store to write.
    positions
        Position labels (see :func:`~posctx.decomposition.decompose`), or ``"auto"``: all
        but position 0 and a trailing [SEP] (:func:`~posctx.decomposition.paper_positions`).
    contexts
        Context labels; ``None`` for all.
    topic
        Only the contexts of this topic (combined with ``contexts``).
    moments
        Also accumulate the ``dim x dim`` second moments (spectra; see ``decompose``).
    runs
        Also keep the bootstrap cells' sums (see ``decompose``), for the report's confidence
        intervals and convergence path. The statistics kept during extraction hold no
        per-run sums, so this reads the hidden states (once).
    previous
        A decomposition of some of ``store``'s contexts: read only the contexts it lacks and
        take the rest from its statistics (:func:`update_decomposition`). Its positions and
        moments are used, so ``positions``, ``contexts``, ``topic`` and ``moments`` must be
        left at their defaults.
    mode
        ``"w-"`` refuses an existing ``out``; ``"w"`` replaces a decomposition store there.
    complete_only
        Use only the finished blocks of an interrupted store (recorded in the output).
    storage_options
        fsspec options for URLs.

    Returns
    -------
    DecomposeResult

    Raises
    ------
    PosctxError
        A topic the store does not hold, an option that an update cannot take, an empty or
        wrong selection; ``StoreError`` for the stores themselves.

    Examples
    --------
    >>> import os, tempfile, posctx.testing
    >>> tmp = tempfile.mkdtemp()
    >>> _ = posctx.testing.write_planted_store(os.path.join(tmp, "h.zarr"), n_contexts=8,
    ...                                        length=5, n_layers=2, n_dims=3, n_topics=2)
    >>> result = decompose_store(os.path.join(tmp, "h.zarr"), os.path.join(tmp, "d.zarr"),
    ...                          topic="topic1")
    >>> result.contexts_read, result.decomposition.sizes["position"]
    (4, 4)
    """
    start = time.perf_counter()
    target = os.fspath(store)
    if previous is not None:
        _refuse_update_options(previous, positions, contexts, topic, moments, runs)
    record = read_provenance(target, storage_options)
    plan = None if record is None else StatisticsPlan.from_record(record)
    if previous is not None and plan is not None:
        old = json.loads(
            open_decomposition(previous, storage_options=storage_options).attrs[DECOMPOSITION_ATTR]
        )
        # What the update would read is all in the statistics: no previous sums needed.
        first, last = old["positions"]
        positions, moments = slice(first, last), bool(old.get("moments"))
    # Decided from the plan alone: a selection they cannot serve never opens the statistics.
    reason = (
        "the store keeps no statistics (made before posctx 0.2, or --no-statistics)"
        if plan is None
        else "the bootstrap cells (--runs) need per-run sums, which extraction does not keep"
        if runs is not None
        else cannot_serve(
            _skeleton(plan), positions=positions, contexts=contexts, topic=topic, moments=moments
        )
    )
    if plan is not None and reason is None:
        stats = open_statistics(
            target, complete_only=complete_only, storage_options=storage_options
        )
        if topic is not None:
            _topic_contexts(stats, topic, target)
        dec = finalize(stored_statistics(stats, positions=positions, topic=topic, moments=moments))
        write_decomposition(dec, out, mode=mode, storage_options=storage_options, one_pass=True)
        n_read, source = 0, "statistics"
    elif plan is not None and plan.hidden_contexts == 0:
        raise PosctxError(
            f"{reason}, and {target} keeps no hidden states (extracted with --hidden-contexts "
            "0): decompose the default positions or all positions (--positions auto or all) "
            "of all contexts or of one --topic" + ("" if previous is None else ", without --from")
        )
    elif previous is not None:
        ds = open_hidden(target, storage_options=storage_options, complete_only=complete_only)
        n_read = update_decomposition(ds, previous, out, mode=mode, storage_options=storage_options)
        source = _hidden_source(ds)
    else:
        ds = open_hidden(target, storage_options=storage_options, complete_only=complete_only)
        if topic is not None:
            in_topic = _topic_contexts(ds, topic, target)
            if contexts is not None:  # both: the topic's contexts among those selected
                chosen = label_select(ds[CONTEXT], CONTEXT, contexts).values
                in_topic = in_topic[np.isin(in_topic, chosen)]
            contexts = in_topic
        dec = decompose(
            ds,
            positions=paper_positions(ds) if isinstance(positions, str) else positions,
            contexts=contexts,
            moments=moments,
            runs=runs,
        )
        if reason is not None:
            record = json.loads(dec.attrs[DECOMPOSITION_ATTR])
            record["source_reason"] = reason
            dec.attrs[DECOMPOSITION_ATTR] = json.dumps(record, sort_keys=True)
        n_read = int(dec.sizes[CONTEXT])
        write_decomposition(dec, out, mode=mode, storage_options=storage_options)
        source = _hidden_source(ds)
    return DecomposeResult(
        path=os.fspath(out),
        decomposition=open_decomposition(out, storage_options=storage_options),
        contexts_read=n_read,
        previous=None if previous is None else os.fspath(previous),
        seconds=time.perf_counter() - start,
        source=source,
        source_reason=None if source == "statistics" else reason,
    )


def moments_from_statistics(
    store: PathLike,
    dec: xr.Dataset,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray | None:
    """The second moment of ``dec``'s hidden states from the store's statistics, if they serve.

    ``m2_hidden`` (layer, dim, dim2) over exactly ``dec``'s contexts and positions, lazily,
    when ``store`` keeps moments (``posctx extract --moments``) and ``dec`` covers all its
    contexts at the default positions or all positions; ``None`` otherwise. With it, the
    report's relative norm and residual spectrum need no read of the hidden states.
    """
    target = os.fspath(store)
    record = read_provenance(target, storage_options)
    plan = None if record is None else StatisticsPlan.from_record(record)
    if plan is None or not plan.moments:
        return None
    complete_only = "complete_only" in json.loads(dec.attrs.get(DECOMPOSITION_ATTR, "{}"))
    stats = open_statistics(target, complete_only=complete_only, storage_options=storage_options)
    first, last = (int(v) for v in dec[POSITION].values[[0, -1]])
    if cannot_serve(stats, positions=slice(first, last), moments=True) is not None:
        return None
    if not np.array_equal(stats[CONTEXT].values, dec[CONTEXT].values):
        return None
    m2: xr.DataArray = stored_statistics(stats, positions=slice(first, last), moments=True)[
        "m2_hidden"
    ]
    return m2


def _refuse_update_options(
    previous: PathLike,
    positions: Selection | str,
    contexts: Selection,
    topic: str | None,
    moments: bool,
    runs: int | None = None,
) -> None:
    given = [
        flag
        for flag, is_set in (
            ("--positions", not (isinstance(positions, str) and positions == AUTO)),
            ("--contexts", contexts is not None),
            ("--topic", topic is not None),
            ("--moments", moments),
            ("--runs", runs is not None),
        )
        if is_set
    ]
    if given:
        raise PosctxError(
            f"an update (--from {os.fspath(previous)}) takes its positions, contexts and "
            f"moments from that decomposition (and keeps no bootstrap cells): drop "
            f"{', '.join(given)}"
        )


def _skeleton(plan: StatisticsPlan) -> xr.Dataset:
    """What :func:`cannot_serve` needs to know of a store's statistics: their plan."""
    skeleton = xr.Dataset(
        coords={POSITION: np.arange(plan.edges.length)}, attrs={STATISTICS_ATTR: plan.to_dict()}
    )
    if plan.moments:
        skeleton["m2"] = (), 0.0
    return skeleton


def _hidden_source(ds: xr.Dataset) -> str:
    sample = ds.attrs.get(HIDDEN_SAMPLE_ATTR)
    if sample:
        return (
            f"hidden states (the {sample['stored_contexts']} stored of "
            f"{sample['contexts_total']} contexts)"
        )
    return "hidden states"


def _topic_contexts(ds: xr.Dataset, topic: str | None, store: PathLike) -> np.ndarray:
    """The context labels of ``topic``, refusing a topic the store does not hold."""
    topics = np.array([str(t) for t in ds[TOPIC].values])
    held = sorted(set(topics.tolist()))
    if topic not in held:
        raise PosctxError(
            f"topic {topic!r} is not in {os.fspath(store)}: its topics are "
            f"{', '.join(map(repr, held))}; pass one of them to --topic"
        )
    values: np.ndarray = ds[CONTEXT].values[topics == topic]
    return values


__all__ = ["AUTO", "DecomposeResult", "decompose_store", "moments_from_statistics"]
