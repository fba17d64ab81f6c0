"""The ``statistics`` check: the decomposition's statistics a store keeps from extraction.

A store made by ``posctx extract`` (unless ``--no-statistics``) keeps per context
``stat_ctx_sum``, ``stat_ctx_sumsq`` and ``stat_edge``, and one partial per writer in
``stat_partials`` (:mod:`posctx.store.statistics` has the protocol). The check reads the
record and the partials' metadata, then the values from the content checks' one dask pass
(:class:`~posctx.validate.content._ContentScan`):

* the plan (``attrs["posctx"]["statistics"]``) parses and agrees with the arrays;
* every block marked written is counted by exactly one partial (a block counted but not
  marked is a warning: an extraction running, or killed between its commit and its markers);
* no partial versions that writers which have ended left behind (a warning: harmless to
  readers, and removed by the next ``posctx extract`` of the store);
* the per-context statistics of the marked blocks are finite (NaN: never written);
* for the contexts whose hidden states are stored, the stored statistics equal
  :func:`posctx.sums.block_statistics` of those hidden states: exactly for a store made on a
  CPU, to :data:`~posctx.validate.content.STATISTICS_TOLERANCE` for one made on an
  accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from posctx.errors import StoreError
from posctx.store.integrity import REPAIR_ADVICE, block_runs, describe_missing, missing_chunks
from posctx.store.layout import (
    PER_CONTEXT_STATISTICS,
    RECORD_KEY,
    STATISTICS_SCHEMA,
    StatisticsPlan,
)
from posctx.store.partials import (
    Partial,
    coverage,
    coverage_problems,
    leftover_partials,
    read_partials,
    select_partials,
)
from posctx.types import (
    EDGE,
    HIDDEN,
    POSITION,
    STAT_PARTIALS,
    TOKEN_ID,
    TOPIC,
)
from posctx.validate.content import STATISTICS_TOLERANCE, _ContentScan
from posctx.validate.report import Check, _plural, _Skip
from posctx.validate.structure import _Store

#: Why the check is skipped for a store without statistics.
NO_STATISTICS = (
    "the store keeps no statistics (made before posctx 0.2, or with --no-statistics): "
    "decompositions read its hidden states"
)


def _recompute(names: Sequence[str]) -> str:
    """What to do about blocks whose statistics are wrong: once the partials that count them
    are gone, the next extraction computes their blocks again (and marks them)."""
    if not names:  # counted by none: the next extraction computes them again as they are
        return "re-run the same `posctx extract` command: it computes them again"
    if len(names) == 1:
        return (
            f"delete the partial that counts them ({names[0]}) and re-run the same "
            "`posctx extract` command: it computes that partial's blocks again"
        )
    return (
        f"delete the partials that count them ({', '.join(names)}) and re-run the same "
        "`posctx extract` command: it computes those partials' blocks again"
    )


def _blocks(indices: Sequence[int]) -> str:
    """``block 3`` or ``blocks 1, 3-4``."""
    return f"block{'' if len(indices) == 1 else 's'} {block_runs(indices)}"


def statistics_absent(st: _Store) -> str | None:
    """Why the ``statistics`` check does not apply to ``st``; ``None`` when it does."""
    try:
        plan = st.statistics_plan()
    except Exception:
        return None  # a malformed record: the check reports it
    return NO_STATISTICS if plan is None else None


def _plan_problems(st: _Store, plan: StatisticsPlan) -> list[str]:
    """Where the statistics arrays disagree with the schema, the plan or the hidden states."""
    problems = []
    sizes: dict[str, int] = {}
    for name in (HIDDEN, TOKEN_ID):
        arr = st.arrays.get(name)
        if arr is not None:
            dims = tuple(arr.metadata.dimension_names or ())
            sizes.update({d: int(n) for d, n in zip(dims, arr.shape, strict=False)})
    sizes[EDGE] = len(plan.edges.positions)
    if POSITION in sizes and sizes[POSITION] != plan.edges.length:
        problems.append(
            f"the plan's contexts have {plan.edges.length} positions, the store's {sizes[POSITION]}"
        )
    for name, (dims, kinds) in STATISTICS_SCHEMA.items():
        try:
            arr = st.statistics_array(name)
        except _Skip as why:
            problems.append(str(why))
            continue
        have = tuple(arr.metadata.dimension_names or ())
        if have != dims:
            problems.append(f"`{name}` has dims {have}, expected {dims}")
            continue
        if arr.dtype.kind not in kinds:
            problems.append(f"`{name}` has dtype {arr.dtype}, expected a float")
        wrong = [
            f"{d}={n}" for d, n in zip(dims, arr.shape, strict=True) if d in sizes and n != sizes[d]
        ]
        if wrong:
            expected = ", ".join(f"{d}={sizes[d]}" for d in dims if d in sizes)
            problems.append(f"`{name}` has {', '.join(wrong)}, expected {expected}")
    if TOPIC in st.arrays:
        unknown = sorted({str(t) for t in st.values(TOPIC).tolist()} - set(plan.topics))
        if unknown:
            problems.append(f"topics {unknown[:5]} of the store are not in the plan's topics")
    return problems


def _partial_problems(st: _Store, plan: StatisticsPlan, selected: Sequence[Partial]) -> list[str]:
    """Counted partials whose arrays do not have the shapes their record says."""
    problems = []
    n_layers, n_dims = (
        (int(st.arrays[HIDDEN].shape[2]), int(st.arrays[HIDDEN].shape[3]))
        if HIDDEN in st.arrays and st.arrays[HIDDEN].ndim == 4
        else (None, None)
    )
    group = st.group[STAT_PARTIALS] if selected else None
    for p in selected:
        unknown = sorted(set(p.topics) - set(plan.topics))
        if unknown:
            problems.append(f"partial {p.name} sums topics {unknown[:5]} the plan lacks")
        arrays = dict(group[p.name].arrays()) if group is not None else {}
        expected: dict[str, tuple[int | None, ...]] = {
            "pos_sum": (len(p.topics), plan.edges.length, n_layers, n_dims)
        }
        if plan.moments:
            expected.update(mean=(n_layers, n_dims), m2=(n_layers, n_dims, n_dims))
        for key, shape in expected.items():
            if key not in arrays:
                problems.append(f"partial {p.name} lacks `{key}`")
            elif n_layers is not None and tuple(arrays[key].shape) != shape:
                problems.append(
                    f"partial {p.name}'s `{key}` has shape {tuple(arrays[key].shape)}, "
                    f"expected {shape}"
                )
    return problems


def _counted_by(selected: Sequence[Partial], blocks: Sequence[int]) -> list[str]:
    """The counted partials that list any of ``blocks``, as ``stat_partials/NAME``."""
    wanted = set(blocks)
    return [
        f"{STAT_PARTIALS}/{p.name}" for p in selected if wanted & {index for index, *_ in p.blocks}
    ]


def _made_on(st: _Store) -> str | None:
    """The device the record says computed the store (and so its statistics)."""
    config = st.record.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    device = model.get("device") if isinstance(model, dict) else None
    return str(device) if device else None


def _check_statistics(st: _Store, content: _ContentScan) -> Check:
    try:
        plan = st.statistics_plan()
    except Exception as exc:
        return Check(
            "statistics",
            "fail",
            f"the statistics record (attrs['posctx']['{RECORD_KEY}']) does not parse "
            f"({type(exc).__name__}: {exc}): the statistics cannot be read; extract the store "
            "again",
        )
    if plan is None:  # not reached through validate_store, which skips the check
        raise _Skip(NO_STATISTICS)
    figures: dict[str, Any] = {
        "moments": plan.moments,
        "topics": len(plan.topics),
        "edges": list(plan.edges.positions),
        "hidden_contexts": plan.hidden_contexts,
    }
    problems = _plan_problems(st, plan)
    if problems:
        return Check("statistics", "fail", "; ".join(problems), figures)
    blocks, done = st.blocks(), st.done()
    partials, broken = read_partials(st.path, st.storage_options)
    selected = select_partials(partials)
    counts = coverage(selected, blocks)
    found = coverage_problems(done, counts)
    leftover = leftover_partials(partials, broken, blocks)
    figures.update(
        partials=len(selected),
        blocks_counted=int(np.count_nonzero(counts == 1)),
        uncounted_blocks=np.flatnonzero(done & (counts == 0)).tolist(),
        blocks_counted_twice=np.flatnonzero(counts > 1).tolist(),
        counted_unmarked_blocks=np.flatnonzero(~done & (counts > 0)).tolist(),
        leftover_partials=leftover,
        incomplete_partials=sorted(broken),
    )
    problems = _partial_problems(st, plan, selected)
    lost = _missing_chunks(st, [b for b in blocks if done[b.index]])
    figures["missing_statistics_chunks"] = sum(len(k) for m in lost.values() for k in m.values())
    problems.extend(
        f"{describe_missing(missing, name)}: the store is damaged (a partial copy?); "
        f"{REPAIR_ADVICE}"
        for name, missing in lost.items()
    )
    warnings: list[str] = []
    if "missing" in found:
        problems.append(
            f"{found['missing']}: re-run the same `posctx extract` command: it computes them again"
        )
    if "twice" in found:
        names = ", ".join(_counted_by(selected, figures["blocks_counted_twice"]))
        problems.append(
            f"{found['twice']} ({names}): delete all but one of those partials and re-run the "
            "same `posctx extract` command: it computes the deleted partials' blocks again"
        )
    if "unmarked" in found:
        warnings.append(
            f"{found['unmarked']}: re-run the same `posctx extract` command once no extraction "
            "runs: it marks them"
        )
    if leftover:
        shown = ", ".join(f"{STAT_PARTIALS}/{name}" for name in leftover[:3])
        warnings.append(
            f"{_plural(len(leftover), 'partial version')} left by writers that have ended "
            f"({shown}{', ...' if len(leftover) > 3 else ''}): no reader counts them; the next "
            "`posctx extract` of this store removes them"
        )
    marked = int(done.sum())
    counted = (
        f"{_plural(marked, 'marked block')} each counted by exactly one of "
        f"{_plural(len(selected), 'partial')}"
        if marked
        else "no block marked written yet"
    )
    held = [
        f"plan of {_plural(len(plan.topics), 'topic')}, edges {list(plan.edges.positions)}"
        f"{', with moments' if plan.moments else ''}; {counted}",
        *_values(st, content, selected, figures, problems, warnings),
    ]
    if problems:
        return Check("statistics", "fail", "; ".join(problems + warnings), figures)
    if warnings:
        return Check("statistics", "warn", "; ".join(warnings), figures)
    return Check("statistics", "ok", "; ".join(held), figures)


def _missing_chunks(st: _Store, marked: Sequence[Any]) -> dict[str, dict[int, list[str]]]:
    """Per statistics array, the chunk files that the blocks marked written lack."""
    lost: dict[str, dict[int, list[str]]] = {}
    for name in PER_CONTEXT_STATISTICS:
        try:
            missing = missing_chunks(st.path, marked, st.storage_options, name=name)
        except StoreError:  # unreadable metadata: the structure checks report it
            continue
        if missing:
            lost[name] = missing
    return lost


def _values(
    st: _Store,
    content: _ContentScan,
    selected: Sequence[Partial],
    figures: dict[str, Any],
    problems: list[str],
    warnings: list[str],
) -> list[str]:
    """The findings on the statistics' values: appended to ``problems`` and ``warnings``;
    returns what held, in words."""
    if not content.scan:
        return [
            "values not read (--no-scan): neither their finiteness nor their agreement with the "
            "stored hidden states is checked"
        ]
    found = content.statistics()
    device = _made_on(st)
    on_cpu = device == "cpu"
    figures.update(
        contexts_read=found.contexts,
        nonfinite_contexts=found.nonfinite_contexts.tolist()[:100],
        nonfinite_blocks=list(found.nonfinite_blocks),
        contexts_compared=found.compared,
        max_abs_diff=found.max_abs,
        max_rel_diff=found.max_rel,
        tolerance=STATISTICS_TOLERANCE,
        made_on=device,
        exact_expected=on_cpu,
        mismatched_blocks=list(found.mismatched_blocks),
        mismatched_contexts=found.mismatched_contexts.tolist()[:100],
        not_compared=found.not_compared.tolist()[:100],
    )
    if found.first_nonfinite is not None:
        c, name = found.first_nonfinite
        blocks = list(found.nonfinite_blocks)
        problems.append(
            f"the per-context statistics of {_plural(found.nonfinite_contexts.size, 'context')} "
            f"in {_blocks(blocks)} marked written are not finite (NaN: never written; first at "
            f"context={c}, in `{name}`): {_recompute(_counted_by(selected, blocks))}"
        )
    if found.mismatched_blocks:
        blocks = list(found.mismatched_blocks)
        c, name = found.worst or (-1, "")
        shown = ", ".join(map(str, found.mismatched_contexts[:10].tolist()))
        problems.append(
            f"the stored statistics of {_plural(found.mismatched_contexts.size, 'context')} "
            f"[{shown}{', ...' if found.mismatched_contexts.size > 10 else ''}] in "
            f"{_blocks(blocks)} differ from those of their stored hidden states (largest "
            f"relative difference {found.max_rel:.3g} at context={c}, in `{name}`; tolerance "
            f"{STATISTICS_TOLERANCE:g}): the hidden states or the statistics were changed after "
            f"extraction; {_recompute(_counted_by(selected, blocks))}"
        )
    elif found.inexact and on_cpu:
        warnings.append(
            f"the stored statistics of {_plural(found.inexact, 'context')} differ from those of "
            f"their stored hidden states by up to {found.max_rel:.3g} relative: a store made on "
            "a CPU normally matches exactly (another numpy build or CPU sums in another order); "
            f"within the {STATISTICS_TOLERANCE:g} allowed for accelerators"
        )
    held = [f"the per-context statistics of {_plural(found.contexts, 'context')} are finite"]
    note = st.sample_note()
    if found.compared:
        how = (
            "exactly"
            if found.max_rel == 0
            else f"to {found.max_rel:.3g} relative (tolerance {STATISTICS_TOLERANCE:g} for a "
            f"store made on {device or 'an unrecorded device'})"
        )
        held.append(
            f"those of the {_plural(found.compared, 'context')} with stored hidden states equal "
            f"posctx.sums.block_statistics of them {how}"
        )
    if found.not_compared.size:
        n = int(found.not_compared.size)
        held.append(
            f"{_plural(n, 'context')} not compared: {'its' if n == 1 else 'their'} hidden "
            "states are not finite (see finite)"
        )
    if note:
        held.append(note)
    return held


__all__ = ["NO_STATISTICS", "statistics_absent"]
