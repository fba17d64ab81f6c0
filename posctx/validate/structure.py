"""The checks that read a store's metadata and labels, never its hidden states.

:class:`_Store` is the view of a store every check shares. The checks here compare the
arrays with the schema, the labels with their rules, the provenance record with the arrays,
the completion markers with the planned blocks, and list the ``.partial`` files killed writers
left behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posctx.errors import PosctxError, StoreError
from posctx.store import Block, is_remote, partial_files, plan_blocks
from posctx.store.integrity import REPAIR_ADVICE, describe_missing, missing_chunks
from posctx.store.layout import (
    EXACT_DTYPES,
    RANGE_COORDS,
    SCHEMA,
    STRING_COORDS,
    StatisticsPlan,
)
from posctx.store.location import local_path, open_group
from posctx.types import (
    BLOCK,
    BLOCK_COMPLETE,
    BLOCK_START,
    CONTEXT,
    HIDDEN,
    HIDDEN_DIMS,
    HIDDEN_KIND,
    KIND_ATTR,
    LAYER,
    OFFSET,
    PROVENANCE_ATTR,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
    TOKEN_ID,
)
from posctx.validate.report import Check, _plural, _Skip

#: Keys every provenance record written by ``posctx extract`` has.
REQUIRED_PROVENANCE = (
    "config",
    "model",
    "corpus",
    "special_tokens",
    "chunk_contexts",
    "posctx_version",
    "created",
)

_KIND_NAMES = {"f": "a float", "i": "an integer", "iu": "an integer", "TUO": "strings"}


class _Store:
    """The pieces of a store the checks share, each read once and only when needed."""

    def __init__(self, path: str, storage_options: Mapping[str, Any] | None, meta: dict[str, Any]):
        self.path = path
        self.storage_options = storage_options
        self.meta = meta  # the root zarr.json as stored (for the consolidated copy)
        self.group = open_group(path, "r", storage_options)
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        self.arrays: dict[str, Any] = {}
        self.broken: dict[str, str] = {}  # name -> why it cannot be opened
        for name in SCHEMA:
            try:
                self.arrays[name] = self.group[name]
            except KeyError:
                pass
            except Exception as exc:  # damaged member metadata: reported by the schema check
                self.broken[name] = f"{type(exc).__name__}: {exc}"
        self._cache: dict[str, Any] = {}

    def array(self, name: str) -> Any:
        if name not in self.arrays:
            raise _Skip(f"`{name}` is missing")
        return self.arrays[name]

    @property
    def record(self) -> dict[str, Any]:
        record = self.attrs.get(PROVENANCE_ATTR)
        return record if isinstance(record, dict) else {}

    def values(self, name: str) -> np.ndarray:
        """A small array (a coordinate, the markers) read whole."""
        if name not in self._cache:
            self._cache[name] = np.asarray(self.array(name)[...])
        value: np.ndarray = self._cache[name]
        return value

    def n_contexts(self) -> int:
        for name in (HIDDEN, TOKEN_ID, CONTEXT):
            if name in self.arrays and self.arrays[name].ndim >= 1:
                return int(self.arrays[name].shape[0])
        raise _Skip("neither `hidden` nor `token_id` is there to give the number of contexts")

    def chunk_contexts(self) -> int:
        """Contexts per block: the recorded value, else the chunking of ``hidden``."""
        recorded = self.record.get("chunk_contexts")
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
            return recorded
        if HIDDEN in self.arrays:
            return int(self.arrays[HIDDEN].chunks[0])
        raise _Skip("no recorded chunk_contexts and no `hidden` to take the block size from")

    def blocks(self) -> list[Block]:
        return plan_blocks(self.n_contexts(), self.chunk_contexts())

    def done(self) -> np.ndarray:
        """One boolean per planned block: marked written (a missing marker counts as not)."""
        markers = self.values(BLOCK_COMPLETE).reshape(-1)
        blocks = self.blocks()
        out = np.zeros(len(blocks), dtype=bool)
        n = min(len(blocks), markers.size)
        out[:n] = markers[:n] == 1
        return out

    def complete_blocks(self) -> list[Block]:
        done = self.done()
        return [b for b in self.blocks() if done[b.index]]

    def statistics_array(self, name: str) -> Any:
        """One of the statistics arrays (``stat_ctx_sum``...), opened once."""
        key = f"statistics:{name}"
        if key not in self._cache:
            try:
                self._cache[key] = self.group[name]
            except KeyError:
                raise _Skip(f"`{name}` is missing") from None
        return self._cache[key]

    def statistics_plan(self) -> StatisticsPlan | None:
        """The recorded statistics plan; ``None`` for a store without statistics.

        Raises what :meth:`StatisticsPlan.from_record` raises for a malformed record (the
        ``statistics`` check reports it).
        """
        return StatisticsPlan.from_record(self.record)

    def stored_contexts(self) -> int | None:
        """How many contexts (the first ones) keep their hidden states; ``None`` for all.

        A store extracted with ``--hidden-contexts N`` (N below its number of contexts) keeps
        the hidden states of its first N contexts only; its statistics cover every context. A
        malformed statistics record counts as all (the ``statistics`` check reports it).
        """
        try:
            plan = self.statistics_plan()
        except Exception:
            return None
        if plan is None or plan.hidden_contexts is None:
            return None
        n = self.n_contexts()
        return int(plan.hidden_contexts) if 0 <= plan.hidden_contexts < n else None

    def stored_blocks(self) -> list[Block]:
        """The blocks marked written, cut to their contexts whose hidden states are stored.

        All of :meth:`complete_blocks` for a store that keeps every hidden state; for a
        ``--hidden-contexts N`` store only the blocks that start before context N, the one
        holding context N cut there.
        """
        stored = self.stored_contexts()
        blocks = self.complete_blocks()
        if stored is None:
            return blocks
        return [Block(b.index, b.start, min(b.stop, stored)) for b in blocks if b.start < stored]

    def sample_note(self) -> str:
        """For a ``--hidden-contexts N`` store, what it keeps, in words; "" for any other."""
        stored = self.stored_contexts()
        if stored is None:
            return ""
        if stored == 0:
            return "the store keeps no hidden states (extracted with --hidden-contexts 0)"
        return (
            f"the store keeps the hidden states of its first {stored} of {self.n_contexts()} "
            f"contexts (extracted with --hidden-contexts {stored})"
        )

    def label(self, name: str, index: int) -> Any:
        """The coordinate label at ``index`` along ``name``, or the index if unreadable."""
        try:
            value = self.values(name)[index]
        except Exception:
            return int(index)
        return value.item() if isinstance(value, np.generic) else value


def _check_schema(st: _Store) -> Check:
    problems: list[str] = []
    notes: list[str] = []
    kind = st.attrs.get(KIND_ATTR)
    if kind != HIDDEN_KIND:
        problems.append(f"root attr posctx_kind is {kind!r}, not 'hidden'")
    version = st.attrs.get(SCHEMA_ATTR)
    if version is None:
        problems.append(f"root attr posctx_schema is missing (this posctx writes {SCHEMA_VERSION})")
    elif version != SCHEMA_VERSION:
        made_by = st.record.get("posctx_version", "an unknown version")
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        fix = "upgrade posctx to read it" if newer else "re-extract it with this posctx"
        problems.append(
            f"store schema version {version!r}, this posctx reads schema {SCHEMA_VERSION}: "
            f"{fix}, or read it with posctx {made_by} that wrote it"
        )
    for name, (dims, kinds) in SCHEMA.items():
        if name in st.broken:
            problems.append(f"`{name}` cannot be opened ({st.broken[name]})")
            continue
        if name not in st.arrays:
            problems.append(f"`{name}` is missing")
            continue
        arr = st.arrays[name]
        have = tuple(arr.metadata.dimension_names or ())
        if have != dims:
            problems.append(f"`{name}` has dims {have}, expected {dims}")
        exact = EXACT_DTYPES.get(name)
        if (str(arr.dtype) not in exact) if exact else (arr.dtype.kind not in kinds):
            expected = " or ".join(exact) if exact else _KIND_NAMES[kinds]
            problems.append(f"`{name}` has dtype {arr.dtype}, expected {expected}")
    problems += _shape_problems(st)
    notes += _consolidated_notes(st)
    figures: dict[str, Any] = {"schema_version": version, "expected_schema_version": SCHEMA_VERSION}
    if HIDDEN in st.arrays:
        figures.update(shape=list(st.arrays[HIDDEN].shape), dtype=str(st.arrays[HIDDEN].dtype))
    if problems:
        return Check("schema", "fail", "; ".join(problems + notes), figures)
    if notes:
        return Check("schema", "warn", "; ".join(notes), figures)
    h = st.arrays[HIDDEN]
    shape = ", ".join(f"{d}={n}" for d, n in zip(HIDDEN_DIMS, h.shape, strict=False))
    n_blocks = st.arrays[BLOCK_COMPLETE].shape[0]
    return Check(
        "schema",
        "ok",
        f"schema {version}; hidden ({shape}) {h.dtype} in chunks {tuple(h.chunks)}; "
        f"token_id {st.arrays[TOKEN_ID].dtype}; {_plural(n_blocks, 'block')} of "
        f"{st.chunk_contexts()} contexts; every coordinate present",
        figures,
    )


def _shape_problems(st: _Store) -> list[str]:
    """Sizes that disagree between arrays, coordinates and the recorded block size."""
    sizes: dict[str, int] = {}
    problems = []
    # The first array giving a dim its size sets it; `hidden` comes first in SCHEMA.
    for name, (dims, _) in SCHEMA.items():
        arr = st.arrays.get(name)
        if arr is None or len(arr.shape) != len(dims):
            if arr is not None:
                problems.append(f"`{name}` has {len(arr.shape)} dims, expected {len(dims)}")
            continue
        for dim, n in zip(dims, arr.shape, strict=False):
            if dim not in sizes:
                sizes[dim] = int(n)
            elif sizes[dim] != n:
                problems.append(f"`{name}` has {dim}={n}, other arrays {dim}={sizes[dim]}")
    try:
        chunk = st.chunk_contexts()
        n_contexts = st.n_contexts()
    except _Skip:
        return problems
    planned = len(plan_blocks(n_contexts, chunk)) if n_contexts else 0
    if BLOCK in sizes and sizes[BLOCK] != planned:
        problems.append(
            f"{sizes[BLOCK]} blocks, but {n_contexts} contexts in blocks of {chunk} make {planned}"
        )
    if HIDDEN in st.arrays and st.arrays[HIDDEN].chunks[0] != chunk:
        # Blocks must be whole chunks, or two writers would share (and lose) a chunk.
        problems.append(
            f"`hidden` chunks hold {st.arrays[HIDDEN].chunks[0]} contexts, the record's blocks {chunk}"
        )
    return problems


def _consolidated_notes(st: _Store) -> list[str]:
    """Where ``xr.open_zarr`` (which reads the consolidated copy) would see another store."""
    fix = "re-consolidate with zarr.consolidate_metadata(STORE)"
    consolidated = (st.meta.get("consolidated_metadata") or {}).get("metadata")
    if consolidated is None:
        return [f"no consolidated metadata: plain xr.open_zarr is slower and warns; {fix}"]
    stale = []
    for name, arr in st.arrays.items():
        copy = consolidated.get(name)
        if copy is None or list(copy.get("shape", [])) != list(arr.shape):
            stale.append(name)
    stale += [n for n in SCHEMA if n in consolidated and n not in st.arrays]
    if stale:
        return [
            f"consolidated metadata is stale for {sorted(set(stale))}: xr.open_zarr sees "
            f"other shapes or arrays than the store holds; {fix}"
        ]
    return []


def _label_rule(name: str, values: np.ndarray) -> tuple[str | None, str]:
    """What is wrong with a coordinate's labels (or ``None``), and what held, in words."""
    if name in RANGE_COORDS:
        wrong = np.flatnonzero(values != np.arange(values.size))
        problem = (
            f"`{name}` is not 0..{values.size - 1} (index {int(wrong[0])} holds "
            f"{values[wrong[0]].tolist()!r})"
            if wrong.size
            else None
        )
        return problem, f"{name} 0..{values.size - 1}"
    if name == LAYER:
        bad = np.unique(values).size != values.size or (values.size and values.min() < 0)
        listed = values.tolist()
        return (f"`layer` labels are not unique and >= 0: {listed}" if bad else None), (
            f"layers {listed}"
        )
    strings = values.tolist()
    empty = [i for i, v in enumerate(strings) if not (isinstance(v, str) and v)]
    problem = (
        f"`{name}` is empty or not a string at {_plural(len(empty), 'index', 'indices')} (first {empty[:5]})"
        if empty
        else None
    )
    return problem, f"{len(set(strings))} distinct {name}s"


def _check_labels(st: _Store) -> Check:
    problems: list[str] = []
    found: list[str] = []  # what was checked and held, with its figures
    for name in (*RANGE_COORDS, LAYER, *STRING_COORDS):
        if name in st.arrays:
            problem, held = _label_rule(name, st.values(name))
            if problem:
                problems.append(problem)
            else:
                found.append(held)
    if OFFSET in st.arrays:
        negative = np.flatnonzero(st.values(OFFSET) < 0)
        if negative.size:
            problems.append(f"`offset` < 0 at contexts {negative[:5].tolist()}")
        else:
            found.append("offsets >= 0")
    if BLOCK_START in st.arrays:
        try:
            planned: np.ndarray | None = np.array([b.start for b in st.blocks()])
        except _Skip:
            planned = None  # no block size to plan with: the schema check says why
        starts = st.values(BLOCK_START)
        if planned is not None and not np.array_equal(starts, planned):
            problems.append(
                f"`block_start` is {starts[:8].tolist()}, the planned block starts "
                f"are {planned[:8].tolist()}"
            )
        elif planned is not None:
            found.append(f"{starts.size} block starts as planned")
    if not problems and not found:
        raise _Skip("no coordinate is there to check")
    figures = {"problems": problems, "checked": found}
    if problems:
        return Check("labels", "fail", "; ".join(problems), figures)
    return Check("labels", "ok", "; ".join(found), figures)


def _check_provenance(st: _Store) -> Check:
    from posctx.config import ExtractConfig

    raw = st.attrs.get(PROVENANCE_ATTR)
    if not isinstance(raw, dict):
        return Check(
            "provenance",
            "fail",
            f"no `{PROVENANCE_ATTR}` record in the root attrs: nothing says how this "
            "store was made (it was not written by `posctx extract`)",
        )
    record = raw
    missing = [k for k in REQUIRED_PROVENANCE if k not in record]
    problems = [f"record lacks {missing}"] if missing else []
    if not isinstance(record.get("config"), dict):
        return Check(
            "provenance",
            "fail",
            "; ".join(problems or ["config is not a mapping"]),
            {"missing": missing},
        )
    try:
        config = ExtractConfig.from_dict(record["config"])
    except (PosctxError, TypeError, ValueError, AttributeError) as exc:
        problems.append(f"config does not parse ({type(exc).__name__}: {exc})")
        return Check("provenance", "fail", "; ".join(problems), {"missing": missing})
    model = record.get("model") or {}
    if not model.get("weights_hash"):
        problems.append("model record has no weights_hash")
    problems += _config_vs_arrays(st, config, record)
    figures = {
        "missing": missing,
        "contexts": config.store.contexts,
        "length": config.store.length,
        "model": model.get("name"),
        "weights_hash": model.get("weights_hash"),
        "posctx_version": record.get("posctx_version"),
    }
    if problems:
        return Check("provenance", "fail", "; ".join(problems), figures)
    return Check(
        "provenance",
        "ok",
        f"record complete; config parses and matches the arrays (C={config.store.contexts}, "
        f"T={config.store.length}, {config.store.storage_dtype}); model {model.get('name')} "
        f"weights {str(model.get('weights_hash'))[:12]}; made {record.get('created')} by posctx "
        f"{record.get('posctx_version')}",
        figures,
    )


def _config_vs_arrays(st: _Store, config: Any, record: Mapping[str, Any]) -> list[str]:
    problems = []
    store = config.store
    if TOKEN_ID in st.arrays and st.arrays[TOKEN_ID].ndim == 2:
        n, length = (int(v) for v in st.arrays[TOKEN_ID].shape)
        if n != store.contexts:
            hint = (
                f": an extension to {n} contexts was interrupted; re-run `posctx extract` with "
                f"--contexts {n} to finish it"
                if n > store.contexts
                else ""
            )
            problems.append(f"config says {store.contexts} contexts, the arrays hold {n}{hint}")
        if length != store.length:
            problems.append(f"config says length {store.length}, the arrays hold {length}")
    if HIDDEN in st.arrays:
        h = st.arrays[HIDDEN]
        if str(h.dtype) != store.storage_dtype:
            problems.append(
                f"config says storage dtype {store.storage_dtype}, `hidden` is {h.dtype}"
            )
        size = (record.get("model") or {}).get("hidden_size")
        if h.ndim == 4 and size is not None and size != h.shape[3]:
            problems.append(f"model hidden_size {size}, `hidden` has dim={h.shape[3]}")
    chunk = record.get("chunk_contexts")
    if store.chunk_contexts and chunk != store.chunk_contexts:
        problems.append(
            f"config asks chunks of {store.chunk_contexts} contexts, record says {chunk}"
        )
    if LAYER in st.arrays:
        n_states = (record.get("model") or {}).get("n_hidden_states")
        expected = list(config.model.layers) or (list(range(n_states)) if n_states else None)
        layers = st.values(LAYER).tolist()
        if expected is not None and layers != expected:
            problems.append(f"config's layers are {expected}, the store's {layers}")
    return problems


def _check_completeness(st: _Store) -> Check:
    st.array(BLOCK_COMPLETE)
    blocks, done = st.blocks(), st.done()
    missing = [b for b in blocks if not done[b.index]]
    holes = _holes(missing)
    lost = _missing_chunks(st)
    figures: dict[str, Any] = {
        "blocks_total": len(blocks),
        "blocks_complete": int(done.sum()),
        "holes": [[a, b] for a, b in holes],  # [first, last] context of each hole
        "contexts_missing": sum(b.size for b in missing),
        # chunk files of hidden that blocks marked written lack (a damaged store)
        "missing_chunks": sum(len(keys) for keys in lost.values()),
        "damaged_blocks": sorted(lost),
        "missing_chunk_keys": [k for keys in lost.values() for k in keys][:100],
    }
    sample = st.sample_note()
    if sample:  # chunk files are expected only for the blocks that keep hidden states
        figures["hidden_contexts"] = st.stored_contexts()
        figures["blocks_with_hidden"] = len(st.stored_blocks())
        expected = (
            "chunk files of hidden are expected for those only"
            if st.stored_contexts()
            else "no chunk file of hidden is expected"
        )
        sample = f"; {sample}: {expected}"
    damaged = (
        f"{describe_missing(lost)}: the store is damaged (a partial copy?); {REPAIR_ADVICE}"
        if lost
        else ""
    )
    if not missing:
        if damaged:
            return Check(
                "completeness",
                "fail",
                f"all {len(blocks)} blocks marked written, but {damaged}{sample}",
                figures,
            )
        return Check(
            "completeness", "ok", f"all {len(blocks)} blocks marked written{sample}", figures
        )
    where = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in holes[:10])
    more = f" and {len(holes) - 10} more ranges" if len(holes) > 10 else ""
    return Check(
        "completeness",
        "fail",
        f"{len(missing)} of {len(blocks)} blocks never marked written: contexts {where}{more} "
        f"({figures['contexts_missing']} contexts); re-run the same `posctx extract` command to "
        "finish them, or use only the finished contexts (`posctx decompose --complete-only`, "
        f"posctx.open_hidden(..., complete_only=True)){'; and ' + damaged if damaged else ''}"
        f"{sample}",
        figures,
    )


def _missing_chunks(st: _Store) -> dict[int, list[str]]:
    """Chunk files of ``hidden`` that the blocks marked written lack (see store.integrity).

    Only of the contexts whose hidden states the store keeps (:meth:`_Store.stored_blocks`).

    Empty when ``hidden``'s metadata cannot be read: the schema check reports that.
    """
    if HIDDEN not in st.arrays:
        return {}
    try:
        return missing_chunks(st.path, st.stored_blocks(), st.storage_options)
    except StoreError:
        return {}


def _holes(missing: Sequence[Block]) -> list[tuple[int, int]]:
    """Runs of adjacent blocks as ``(first, last)`` context, inclusive.

    >>> _holes([Block(1, 4, 8), Block(2, 8, 12), Block(4, 16, 18)])
    [(4, 11), (16, 17)]
    """
    holes: list[tuple[int, int]] = []
    for b in missing:
        if holes and holes[-1][1] == b.start - 1:
            holes[-1] = (holes[-1][0], b.stop - 1)
        else:
            holes.append((b.start, b.stop - 1))
    return holes


def _check_partial(st: _Store, removed: tuple[int, int]) -> Check:
    """Leftover ``.partial`` files; ``removed`` is ``(files, bytes)`` deleted just before."""
    if is_remote(st.path):
        raise _Skip("object stores write whole objects: no partial files")
    found = partial_files(st.path)
    figures = {"count": len(found), "bytes": sum(n for _, n in found)}
    n_removed, removed_bytes = removed
    if n_removed:
        figures.update(removed=n_removed, removed_bytes=removed_bytes)
    if found:
        rel = [os.path.relpath(p, local_path(st.path)) for p, _ in found[:3]]
        return Check(
            "partial_files",
            "warn",
            f"{_plural(len(found), 'leftover .partial file')} ({figures['bytes']:,} bytes, e.g. "
            f"{', '.join(rel)}) from a killed writer: harmless to readers; `posctx validate "
            "--clean-partial` removes them when no extraction is running",
            figures,
        )
    gone = (
        f"removed {_plural(n_removed, 'leftover .partial file')} ({removed_bytes:,} bytes); "
        if n_removed
        else ""
    )
    return Check("partial_files", "ok", f"{gone}no leftover .partial chunk files", figures)
