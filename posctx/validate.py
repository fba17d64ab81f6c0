"""Checking a hidden-state store: schema, labels, provenance, completeness, values, token ids.

``posctx validate STORE`` runs :func:`validate_store`. Each check reads only what it needs and
reports ``ok``, ``warn`` or ``fail`` with its figures; a broken store gives failing checks,
never an exception, so one run lists everything that is wrong. The value scans read one chunk
at a time, so a store of any size validates in constant memory.

The checks, in order:

``schema``
    Root attrs (``posctx_kind``, ``posctx_schema``), the arrays and coordinates with their
    dims and dtypes, mutually consistent shapes, and a consolidated copy of the metadata that
    matches the arrays.
``labels``
    ``context`` and ``position`` are ``0..N-1``, layers unique, every ``topic``/``source`` a
    non-empty string, ``offset >= 0``, ``block_start`` the planned block starts.
``provenance``
    The ``posctx`` attrs record is complete and its config parses and agrees with the arrays.
``completeness``
    Which blocks were never marked written, as context ranges.
``partial_files``
    Chunk files a killed writer left half written (local stores).
``finite``
    No NaN/inf in the blocks marked written (``scan=True``).
``token_ids``, ``special_tokens``
    Ids within the model's vocabulary; every context framed by the recorded prefix/suffix
    special tokens, which never appear mid-context.
``rerun``
    A few contexts recomputed with the model and compared with the stored values
    (``rerun=N``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np

from posctx.errors import PosctxError, StoreError
from posctx.store import (
    Block,
    _exists,
    _local,
    _open_group,
    _zarr_json,
    is_remote,
    plan_blocks,
)
from posctx.types import (
    BLOCK,
    BLOCK_COMPLETE,
    BLOCK_START,
    CONTEXT,
    DIM,
    HIDDEN,
    HIDDEN_DIMS,
    LAYER,
    LAYER_NAME,
    OFFSET,
    POSITION,
    PROVENANCE_ATTR,
    SCHEMA_VERSION,
    SOURCE,
    TOKEN_ID,
    TOPIC,
)

Status = Literal["ok", "warn", "fail"]

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

#: Keys every provenance record written by ``posctx extract`` has.
REQUIRED_PROVENANCE = (
    "config", "model", "corpus", "special_tokens", "chunk_contexts", "posctx_version", "created",
)

# zarr's LocalStore writes a chunk to "<key minus suffix>.<uuid4 hex>.partial" and renames it;
# a SIGKILL between the two leaves the temporary file behind.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")

# Every array of the schema: dims and the dtype kinds ("f" float, "i"/"u" integer, "T"/"U"/"O"
# string) each must have.
_SCHEMA: dict[str, tuple[tuple[str, ...], str]] = {
    HIDDEN: (HIDDEN_DIMS, "f"),
    TOKEN_ID: ((CONTEXT, POSITION), "i"),
    BLOCK_COMPLETE: ((BLOCK,), "iu"),
    BLOCK_START: ((BLOCK,), "iu"),
    CONTEXT: ((CONTEXT,), "iu"),
    POSITION: ((POSITION,), "iu"),
    LAYER: ((LAYER,), "iu"),
    DIM: ((DIM,), "iu"),
    LAYER_NAME: ((LAYER,), "TUO"),
    TOPIC: ((CONTEXT,), "TUO"),
    SOURCE: ((CONTEXT,), "TUO"),
    OFFSET: ((CONTEXT,), "iu"),
}
# Where the schema fixes the dtype itself, not just its kind.
_EXACT_DTYPES = {HIDDEN: ("float32", "float16"), TOKEN_ID: ("int32",)}
_KIND_NAMES = {"f": "a float", "i": "an integer", "iu": "an integer", "TUO": "strings"}


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its name, ``ok``/``warn``/``fail`` and what it found.

    ``figures`` holds the same findings as plain data (counts, ranges, maxima) for programs.
    """

    name: str
    status: Status
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "figures": _plain(self.figures)}


@dataclass(frozen=True)
class ValidationReport:
    """Everything :func:`validate_store` found, check by check.

    ``skipped`` lists ``(name, reason)`` for checks that were not requested or could not run
    because what they read is missing (which another check then reports as a failure).
    """

    path: str
    checks: list[Check]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def check(self, name: str) -> Check:
        """The check called ``name``; ``KeyError`` if it did not run."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r} in this report (ran: {[c.name for c in self.checks]})")

    def verdict(self) -> str:
        """One line: ``OK``, ``OK with N warnings (...)`` or ``FAIL: N checks failed (...)``."""
        warn = [c.name for c in self.warnings]
        if self.failures:
            names = [c.name for c in self.failures]
            return f"FAIL: {_plural(len(names), 'check')} failed ({', '.join(names)})"
        if warn:
            return f"OK with {_plural(len(warn), 'warning')} ({', '.join(warn)})"
        return f"OK: all {len(self.checks)} checks passed"

    def format(self) -> str:
        """A terminal summary: one line per check, then the skipped checks and the verdict."""
        width = max([len(c.name) for c in self.checks] + [len(n) for n, _ in self.skipped] + [5])
        lines = [f"store {self.path}"]
        lines += [f"{c.status.upper():<5} {c.name:<{width}}  {c.detail}" for c in self.checks]
        lines += [f"skip  {name:<{width}}  {reason}" for name, reason in self.skipped]
        lines.append(f"verdict: {self.verdict()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "verdict": self.verdict(),
            "checks": [c.to_dict() for c in self.checks],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Skip(Exception):
    """A check cannot run: what it needs is missing (and reported by another check)."""


class _Store:
    """The pieces of a store the checks share, each read once and only when needed."""

    def __init__(self, path: str, storage_options: Mapping[str, Any] | None, meta: dict[str, Any]):
        self.path = path
        self.storage_options = storage_options
        self.meta = meta  # the root zarr.json as stored (for the consolidated copy)
        self.group = _open_group(path, "r", storage_options)
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        self.arrays: dict[str, Any] = {}
        self.broken: dict[str, str] = {}  # name -> why it cannot be opened
        for name in _SCHEMA:
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

    def label(self, name: str, index: int) -> Any:
        """The coordinate label at ``index`` along ``name``, or the index if unreadable."""
        try:
            value = self.values(name)[index]
        except Exception:
            return int(index)
        return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------------- checks


def _check_schema(st: _Store) -> Check:
    problems: list[str] = []
    notes: list[str] = []
    kind = st.attrs.get("posctx_kind")
    if kind != "hidden":
        problems.append(f"root attr posctx_kind is {kind!r}, not 'hidden'")
    version = st.attrs.get("posctx_schema")
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
    for name, (dims, kinds) in _SCHEMA.items():
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
        exact = _EXACT_DTYPES.get(name)
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
    shape = ", ".join(f"{d}={n}" for d, n in zip(HIDDEN_DIMS, h.shape))
    n_blocks = st.arrays[BLOCK_COMPLETE].shape[0]
    return Check(
        "schema", "ok",
        f"schema {version}; hidden ({shape}) {h.dtype} in chunks {tuple(h.chunks)}; "
        f"token_id {st.arrays[TOKEN_ID].dtype}; {_plural(n_blocks, 'block')} of "
        f"{st.chunk_contexts()} contexts; every coordinate present",
        figures,
    )


def _shape_problems(st: _Store) -> list[str]:
    """Sizes that disagree between arrays, coordinates and the recorded block size."""
    sizes: dict[str, int] = {}
    problems = []
    # The first array giving a dim its size sets it; `hidden` comes first in _SCHEMA.
    for name, (dims, _) in _SCHEMA.items():
        arr = st.arrays.get(name)
        if arr is None or len(arr.shape) != len(dims):
            if arr is not None:
                problems.append(f"`{name}` has {len(arr.shape)} dims, expected {len(dims)}")
            continue
        for dim, n in zip(dims, arr.shape):
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
    stale += [n for n in _SCHEMA if n in consolidated and n not in st.arrays]
    if stale:
        return [f"consolidated metadata is stale for {sorted(set(stale))}: xr.open_zarr sees "
                f"other shapes or arrays than the store holds; {fix}"]
    return []


def _check_labels(st: _Store) -> Check:
    problems: list[str] = []
    found: list[str] = []  # what was checked and held, with its figures
    for name in (CONTEXT, POSITION, DIM):
        if name in st.arrays:
            values = st.values(name)
            wrong = np.flatnonzero(values != np.arange(values.size))
            if wrong.size:
                problems.append(f"`{name}` is not 0..{values.size - 1} (index {int(wrong[0])} "
                                f"holds {values[wrong[0]]!r})")
            else:
                found.append(f"{name} 0..{values.size - 1}")
    if LAYER in st.arrays:
        layers = st.values(LAYER)
        if np.unique(layers).size != layers.size or (layers.size and layers.min() < 0):
            problems.append(f"`layer` labels are not unique and >= 0: {layers.tolist()}")
        else:
            found.append(f"layers {layers.tolist()}")
    for name in (LAYER_NAME, TOPIC, SOURCE):
        if name in st.arrays:
            values = st.values(name).tolist()
            empty = [i for i, v in enumerate(values) if not (isinstance(v, str) and v)]
            if empty:
                problems.append(f"`{name}` is empty or not a string at "
                                f"{_plural(len(empty), 'index')} (first {empty[:5]})")
            else:
                found.append(f"{len(set(values))} distinct {name}s")
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
            problems.append(f"`block_start` is {starts[:8].tolist()}, the planned block starts "
                            f"are {planned[:8].tolist()}")
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
        return Check("provenance", "fail",
                     f"no `{PROVENANCE_ATTR}` record in the root attrs: nothing says how this "
                     "store was made (it was not written by `posctx extract`)")
    record = raw
    missing = [k for k in REQUIRED_PROVENANCE if k not in record]
    problems = [f"record lacks {missing}"] if missing else []
    if not isinstance(record.get("config"), dict):
        return Check("provenance", "fail", "; ".join(problems or ["config is not a mapping"]),
                     {"missing": missing})
    try:
        config = ExtractConfig.from_dict(record["config"])
    except (PosctxError, TypeError, ValueError, AttributeError) as exc:
        problems.append(f"config does not parse ({type(exc).__name__}: {exc})")
        return Check("provenance", "fail", "; ".join(problems), {"missing": missing})
    model = record.get("model") or {}
    if not model.get("weights_hash"):
        problems.append("model record has no weights_hash")
    problems += _config_vs_arrays(st, config, record)
    figures = {"missing": missing, "contexts": config.store.contexts, "length": config.store.length,
               "model": model.get("name"), "weights_hash": model.get("weights_hash"),
               "posctx_version": record.get("posctx_version")}
    if problems:
        return Check("provenance", "fail", "; ".join(problems), figures)
    return Check(
        "provenance", "ok",
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
                f"--contexts {n} to finish it" if n > store.contexts else ""
            )
            problems.append(f"config says {store.contexts} contexts, the arrays hold {n}{hint}")
        if length != store.length:
            problems.append(f"config says length {store.length}, the arrays hold {length}")
    if HIDDEN in st.arrays:
        h = st.arrays[HIDDEN]
        if str(h.dtype) != store.storage_dtype:
            problems.append(f"config says storage dtype {store.storage_dtype}, `hidden` is {h.dtype}")
        size = (record.get("model") or {}).get("hidden_size")
        if h.ndim == 4 and size is not None and size != h.shape[3]:
            problems.append(f"model hidden_size {size}, `hidden` has dim={h.shape[3]}")
    chunk = record.get("chunk_contexts")
    if store.chunk_contexts and chunk != store.chunk_contexts:
        problems.append(f"config asks chunks of {store.chunk_contexts} contexts, record says {chunk}")
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
    figures = {
        "blocks_total": len(blocks),
        "blocks_complete": int(done.sum()),
        "holes": [[a, b] for a, b in holes],  # [first, last] context of each hole
        "contexts_missing": sum(b.size for b in missing),
    }
    if not missing:
        return Check("completeness", "ok", f"all {len(blocks)} blocks marked written", figures)
    where = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in holes[:10])
    more = f" and {len(holes) - 10} more ranges" if len(holes) > 10 else ""
    return Check(
        "completeness", "fail",
        f"{len(missing)} of {len(blocks)} blocks never marked written: contexts {where}{more} "
        f"({figures['contexts_missing']} contexts); re-run the same `posctx extract` command to "
        "finish them, or use only the finished contexts (`posctx decompose --complete-only`, "
        "posctx.open_hidden(..., complete_only=True))",
        figures,
    )


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


def partial_files(path: str) -> list[tuple[str, int]]:
    """``(path, bytes)`` of the half-written chunk files a killed writer left in a local store.

    zarr writes each chunk to ``<chunk>.<uuid>.partial`` and renames it into place; a writer
    killed in between leaves that file, which no reader ever looks at.
    """
    found = []
    for root, _, files in os.walk(_local(path)):
        for name in files:
            if _PARTIAL.search(name):
                full = os.path.join(root, name)
                try:
                    found.append((full, os.path.getsize(full)))
                except OSError:  # renamed into place by a writer just now
                    continue
    return sorted(found)


def _check_partial(st: _Store, removed: list[tuple[str, int]] | None) -> Check:
    if is_remote(st.path):
        raise _Skip("object stores write whole objects: no partial files")
    found = partial_files(st.path)
    figures = {"count": len(found), "bytes": sum(n for _, n in found)}
    if removed:
        figures.update(removed=len(removed), removed_bytes=sum(n for _, n in removed))
    if found:
        rel = [os.path.relpath(p, _local(st.path)) for p, _ in found[:3]]
        return Check(
            "partial_files", "warn",
            f"{_plural(len(found), 'leftover .partial file')} ({figures['bytes']:,} bytes, e.g. "
            f"{', '.join(rel)}) from a killed writer: harmless to readers; `posctx validate "
            "--clean-partial` removes them when no extraction is running",
            figures,
        )
    gone = (
        f"removed {_plural(len(removed), 'leftover .partial file')} "
        f"({figures['removed_bytes']:,} bytes); " if removed else ""
    )
    return Check("partial_files", "ok", f"{gone}no leftover .partial chunk files", figures)


def _hidden_reader(st: _Store) -> Callable[[slice, slice], np.ndarray]:
    """Reads ``hidden[contexts, :, layers]`` as numpy, directly from the chunk files if it can."""
    arr = st.array(HIDDEN)
    if not is_remote(st.path):
        from posctx.fastread import direct_array

        direct = direct_array(_local(st.path) / HIDDEN)
        if direct is not None and direct.shape == arr.shape:
            return lambda c, l: np.asarray(direct[c, :, l].compute(scheduler="synchronous"))
    return lambda c, l: np.asarray(arr[c, :, l])


def _chunks(st: _Store, blocks: Sequence[Block], progress: bool, what: str) -> Iterator[tuple[Block, slice, np.ndarray]]:
    """``hidden`` one block and one layer chunk at a time: memory stays at one chunk."""
    from tqdm.auto import tqdm

    arr = st.array(HIDDEN)
    n_layers, step = int(arr.shape[2]), int(arr.chunks[2])
    read = _hidden_reader(st)
    for block in tqdm(blocks, desc=what, unit="block", disable=not progress, dynamic_ncols=True):
        for start in range(0, n_layers, step):
            layers = slice(start, min(start + step, n_layers))
            yield block, layers, read(slice(block.start, block.stop), layers)


def _check_finite(st: _Store, progress: bool) -> Check:
    blocks = st.complete_blocks()
    n_unmarked = len(st.blocks()) - len(blocks)
    counts = {"nan": 0, "inf": 0, "vectors": 0}
    bad_blocks: list[int] = []
    bad_contexts: set[int] = set()
    first: tuple[int, int, int] | None = None
    n_values = 0
    for block, layers, data in _chunks(st, blocks, progress, "finite"):
        n_values += data.size
        finite = np.isfinite(data)
        if finite.all():
            continue
        counts["nan"] += int(np.isnan(data).sum())
        counts["inf"] += int(np.isinf(data).sum())
        bad = ~finite.all(axis=3)  # (context, position, layer) vectors holding a bad value
        counts["vectors"] += int(bad.sum())
        bad_contexts.update((block.start + np.flatnonzero(bad.any(axis=(1, 2)))).tolist())
        if not bad_blocks or bad_blocks[-1] != block.index:
            bad_blocks.append(block.index)
        if first is None:
            c, t, k = (int(v) for v in np.argwhere(bad)[0])
            first = (block.start + c, t, layers.start + k)
    figures: dict[str, Any] = {
        "values_scanned": n_values, "blocks_scanned": len(blocks), "blocks_unmarked": n_unmarked,
        **counts, "blocks": bad_blocks, "contexts": sorted(bad_contexts)[:100],
    }
    skipped = f"; {_plural(n_unmarked, 'unmarked block')} not scanned" if n_unmarked else ""
    if first is None:
        return Check(
            "finite", "ok",
            f"all {n_values:,} values of {_plural(len(blocks), 'marked block')} are finite{skipped}",
            figures,
        )
    c, t, k = first
    figures["first"] = {CONTEXT: c, POSITION: st.label(POSITION, t), LAYER: st.label(LAYER, k),
                        LAYER_NAME: st.label(LAYER_NAME, k)}
    shown = ", ".join(map(str, sorted(bad_contexts)[:10]))
    return Check(
        "finite", "fail",
        f"{counts['nan'] + counts['inf']:,} non-finite values ({counts['nan']:,} NaN, "
        f"{counts['inf']:,} inf) in {_plural(counts['vectors'], 'hidden vector')} of contexts "
        f"[{shown}{', ...' if len(bad_contexts) > 10 else ''}], blocks {bad_blocks} marked written; "
        f"first at context={c}, position={figures['first'][POSITION]}, "
        f"layer={figures['first'][LAYER]} ({figures['first'][LAYER_NAME]}): their completion "
        f"markers lie; set block_complete[b] = 0 for those blocks (with zarr) and re-run the "
        f"same `posctx extract` command to rewrite them{skipped}",
        figures,
    )


def _token_blocks(st: _Store, progress: bool, what: str) -> Iterator[tuple[Block, np.ndarray]]:
    """``token_id`` one block at a time (token ids are written for every block at creation)."""
    from tqdm.auto import tqdm

    arr = st.array(TOKEN_ID)
    if arr.ndim != 2:
        raise _Skip("`token_id` is not (context, position)")
    for block in tqdm(st.blocks(), desc=what, unit="block", disable=not progress, dynamic_ncols=True):
        yield block, np.asarray(arr[block.start : block.stop])


def _check_token_ids(st: _Store, progress: bool) -> Check:
    vocab = (st.record.get("model") or {}).get("vocab_size")
    limit = vocab if isinstance(vocab, int) and vocab > 0 else None
    n_bad, first, lo, hi, n_ids = 0, None, None, None, 0
    for block, ids in _token_blocks(st, progress, "token ids"):
        if ids.size == 0:
            continue
        n_ids += ids.size
        lo = int(ids.min()) if lo is None else min(lo, int(ids.min()))
        hi = int(ids.max()) if hi is None else max(hi, int(ids.max()))
        bad = (ids < 0) | (ids >= limit) if limit is not None else ids < 0
        if bad.any():
            n_bad += int(bad.sum())
            if first is None:
                c, t = (int(v) for v in np.argwhere(bad)[0])
                first = (block.start + c, t, int(ids[c, t]))
    figures = {"vocab_size": limit, "ids": n_ids, "min": lo, "max": hi, "out_of_range": n_bad}
    allowed = f"[0, {limit})" if limit is not None else "[0, inf)"
    if first is not None:
        c, t, value = first
        return Check(
            "token_ids", "fail",
            f"{n_bad:,} of {n_ids:,} token ids outside {allowed} (the model's vocabulary); "
            f"first at context={c}, position={t}: {value}; the token ids no longer match the "
            "model: re-extract into a new store",
            {**figures, "first": {CONTEXT: c, POSITION: t, "id": value}},
        )
    if limit is None:
        return Check(
            "token_ids", "warn",
            f"all {n_ids:,} ids >= 0 (range {lo}..{hi}), but the record has no vocab_size (a store "
            "made by an older posctx): the upper bound was not checked",
            figures,
        )
    return Check("token_ids", "ok", f"all {n_ids:,} ids in {allowed} (range {lo}..{hi})", figures)


def _check_special_tokens(st: _Store, progress: bool) -> Check:
    special = st.record.get("special_tokens")
    if not isinstance(special, dict) or "prefix_ids" not in special:
        return Check("special_tokens", "warn",
                     "no special_tokens record: the framing of contexts cannot be checked")
    prefix = [int(v) for v in special.get("prefix_ids") or []]
    suffix = [int(v) for v in special.get("suffix_ids") or []]
    # Separator ids are text tokens placed between documents, legitimately mid-context.
    forbidden = sorted(set(prefix + suffix) - {int(v) for v in special.get("separator_ids") or []})
    p, s = len(prefix), len(suffix)
    rows: dict[str, list[int]] = {"prefix": [], "suffix": []}  # contexts framed wrongly
    n_contexts = 0
    mid: list[tuple[int, int, int]] = []
    n_mid = 0
    for block, ids in _token_blocks(st, progress, "special tokens"):
        length = ids.shape[1]
        n_contexts += len(ids)
        if p + s > length:
            return Check("special_tokens", "fail",
                         f"contexts of {length} tokens cannot hold {p} prefix and {s} suffix ids")
        if p:
            rows["prefix"] += (block.start + np.flatnonzero((ids[:, :p] != prefix).any(axis=1))).tolist()
        if s:
            rows["suffix"] += (block.start + np.flatnonzero((ids[:, length - s :] != suffix).any(axis=1))).tolist()
        if forbidden:
            hits = np.argwhere(np.isin(ids[:, p : length - s], forbidden))
            n_mid += len(hits)
            for c, t in hits[: max(0, 10 - len(mid))].tolist():  # the first ten, as examples
                mid.append((block.start + c, p + t, int(ids[c, p + t])))
    tokens = dict(zip(prefix + suffix, (special.get("prefix_tokens") or []) + (special.get("suffix_tokens") or [])))
    figures: dict[str, Any] = {
        "prefix_ids": prefix, "suffix_ids": suffix, "policy": special.get("policy"),
        "bad_prefix_contexts": rows["prefix"][:100], "bad_suffix_contexts": rows["suffix"][:100],
        "mid_context": n_mid, "mid_context_first": [list(m) for m in mid],
    }
    problems = []
    if rows["prefix"]:
        problems.append(f"{len(rows['prefix'])} of {n_contexts} contexts do not start with "
                        f"{prefix} (first: context {rows['prefix'][0]})")
    if rows["suffix"]:
        problems.append(f"{len(rows['suffix'])} of {n_contexts} contexts do not end with "
                        f"{suffix} (first: context {rows['suffix'][0]})")
    if n_mid:
        c, t, value = mid[0]
        problems.append(
            f"{_plural(n_mid, 'prefix/suffix id')} mid-context, first {tokens.get(value, value)!r} (id "
            f"{value}) at context={c}, position={t}: the model saw a misplaced "
            "[CLS]/BOS/[SEP] there"
        )
    if problems:
        return Check("special_tokens", "fail",
                     "; ".join(problems) + "; re-extract into a new store", figures)
    frame = " + ".join(filter(None, [
        " ".join(map(str, special.get("prefix_tokens") or prefix)), "text",
        " ".join(map(str, special.get("suffix_tokens") or suffix)),
    ]))
    return Check(
        "special_tokens", "ok",
        f"policy {special.get('policy')!r}: every context is {frame}; no "
        f"{'prefix/suffix id' if forbidden else 'special id (none recorded)'} mid-context",
        figures,
    )


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
    candidates = np.concatenate([np.arange(b.start, b.stop) for b in complete] or [np.array([], int)])
    if candidates.size == 0:
        raise _Skip("no block is marked written")
    picks = np.sort(np.random.default_rng(seed).choice(candidates, size=min(n, candidates.size), replace=False))
    try:
        loaded, note = _rerun_model(record["config"].get("model") or {})
    except ModelError as exc:
        return Check("rerun", "fail", f"cannot load the model that made this store: {exc}")
    recorded = (record.get("model") or {}).get("weights_hash")
    if loaded.weights_hash != recorded:
        return Check(
            "rerun", "fail",
            f"the model loaded now is not the one that made this store: weights hash "
            f"{loaded.weights_hash} loaded, {recorded} recorded; values not compared",
            {"weights_hash_loaded": loaded.weights_hash, "weights_hash_recorded": recorded},
        )
    layers = st.values(LAYER).tolist() if LAYER in st.arrays else None
    if layers is not None and list(loaded.layers) != layers:
        return Check("rerun", "fail", f"the model gives layers {list(loaded.layers)}, the store holds {layers}")
    storage = str(hidden.dtype)
    tolerance = max(RERUN_TOLERANCE.get(storage, 1e-4), RERUN_TOLERANCE.get(config.model.dtype, 1e-4))
    batch = config.model.batch_size
    vocab = getattr(loaded.model.config, "vocab_size", None)
    worst_abs, worst_rel, worst_at = 0.0, 0.0, (int(picks[0]), 0, 0)
    per_context: dict[int, float] = {}
    failed: dict[int, str] = {}  # contexts that could not be recomputed, and why
    for (start, stop), members in _batches(complete, picks, batch).items():
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
        f"; contexts {sorted(failed)} not recomputed ({next(iter(failed.values()))})" if failed else ""
    )
    figures: dict[str, Any] = {
        "contexts": picks.tolist(), "max_abs_diff": worst_abs, "max_rel_diff": worst_rel,
        "tolerance": tolerance, "batch_size": batch, "storage_dtype": storage,
        "compute_dtype": config.model.dtype, "mismatched_contexts": bad,
        "weights_hash": loaded.weights_hash, "not_recomputed": sorted(failed),
    }
    done = sorted(per_context)
    summary = (
        f"{_plural(len(done), 'context')} {done[:10]} recomputed in their extraction batches of "
        f"{batch}{note}: max abs diff {worst_abs:.3g}, max relative diff {worst_rel:.3g} "
        f"(tolerance {tolerance:g} for {storage} storage, {config.model.dtype} compute){not_run}"
    )
    if bad:
        c, t, k = worst_at
        return Check(
            "rerun", "fail",
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


def _batches(blocks: Sequence[Block], picks: np.ndarray, batch: int) -> dict[tuple[int, int], list[int]]:
    """The extraction batch ``(start, stop)`` of each picked context, with the picks in it.

    Extraction splits every block into batches of ``batch`` contexts from its start.

    >>> _batches([Block(0, 0, 4), Block(1, 4, 8)], np.array([1, 2, 7]), 3)
    {(0, 3): [1, 2], (7, 8): [7]}
    """
    out: dict[tuple[int, int], list[int]] = {}
    for c in picks.tolist():
        block = next(b for b in blocks if b.start <= c < b.stop)
        start = block.start + (c - block.start) // batch * batch
        out.setdefault((start, min(start + batch, block.stop)), []).append(c)
    return out


# ------------------------------------------------------------------------------ the entry


def _open(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The root metadata of the hidden-state store at ``path``; StoreError when there is none."""
    if not _exists(path, storage_options):
        raise StoreError(f"no posctx store at {path}: check the path")
    try:
        meta = _zarr_json(path, storage_options)
    except ValueError as exc:  # a damaged zarr.json: report it, as a broken store
        return {"_unreadable": f"{type(exc).__name__}: {exc}"}
    if meta is None:
        raise StoreError(
            f"{path} is not a Zarr v3 store (no zarr.json): give the path of a hidden-state "
            "store made by `posctx extract`"
        )
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes", {}), dict):
        return {"_unreadable": "the root zarr.json is not a Zarr group's metadata"}
    attrs = meta.get("attributes") or {}
    kind = attrs.get("posctx_kind")
    if kind not in (None, "hidden"):
        raise StoreError(
            f"{path} is a posctx {kind} store, not a hidden-state store: validate the "
            "hidden-state store it was made from"
        )
    if kind is None and PROVENANCE_ATTR not in attrs and not _has_member(path, storage_options, HIDDEN):
        raise StoreError(
            f"{path} is a Zarr store but not a posctx hidden-state store (no posctx attrs, no "
            "`hidden` array): give the path of a store made by `posctx extract`"
        )
    return meta


def _has_member(path: str, storage_options: Mapping[str, Any] | None, name: str) -> bool:
    try:
        return name in _open_group(path, "r", storage_options)
    except Exception:
        return False


def clean_partial_files(path: str) -> list[tuple[str, int]]:
    """Delete the leftover ``.partial`` files of a local store; returns what was removed.

    Only safe while no extraction writes to the store: a live writer's temporary file is
    indistinguishable from a dead one's.
    """
    if is_remote(path):
        raise StoreError(f"{path}: --clean-partial applies to local stores only (object stores "
                         "leave no partial files)")
    removed = []
    for full, size in partial_files(path):
        try:
            os.unlink(full)
            removed.append((full, size))
        except FileNotFoundError:  # renamed into place meanwhile: nothing to clean
            continue
    return removed


def validate_store(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    scan: bool = True,
    rerun: int = 0,
    seed: int = 0,
    progress: bool = False,
    clean_partial: bool = False,
) -> ValidationReport:
    """Check a hidden-state store and report every problem found, check by check.

    Parameters
    ----------
    path
        Local path or fsspec URL of a store made by ``posctx extract``.
    storage_options
        fsspec options for URLs.
    scan
        Scan the hidden states of every block marked written for NaN/inf (reads the whole
        store, one chunk at a time).
    rerun
        Recompute this many contexts (picked at random among the written blocks) with the
        recorded model and compare them with the stored values; 0 skips the check. Loads the
        model.
    seed
        Seeds the choice of contexts to recompute.
    progress
        Show progress bars on stderr while scanning.
    clean_partial
        First delete the ``.partial`` files killed writers left (local stores; only while no
        extraction is running).

    Returns
    -------
    ValidationReport
        One :class:`Check` per check that ran; ``report.ok`` is false when any failed.

    Raises
    ------
    StoreError
        Nothing is at ``path``, or it is not a hidden-state store (a decomposition store, a
        folder of other files). A damaged hidden-state store raises nothing: its checks fail.

    Examples
    --------
    A synthetic store has the schema and values of a real one but no record of a model:

    >>> import tempfile, posctx.testing, zarr
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_large_planted_store(path, n_contexts=10, length=6, n_layers=2,
    ...                                              n_dims=3, chunk_contexts=4)
    >>> report = validate_store(path)
    >>> [(c.name, c.status) for c in report.checks]  # doctest: +NORMALIZE_WHITESPACE
    [('schema', 'ok'), ('labels', 'ok'), ('provenance', 'fail'), ('completeness', 'ok'),
     ('partial_files', 'ok'), ('finite', 'ok'), ('token_ids', 'warn'), ('special_tokens', 'warn')]

    An unmarked block is a hole:

    >>> zarr.open_group(path, mode="r+", use_consolidated=False)["block_complete"][1] = 0
    >>> print(validate_store(path, scan=False).check("completeness").detail)
    1 of 3 blocks never marked written: contexts 4-7 (4 contexts); re-run the same ...
    """
    path = os.fspath(path)
    meta = _open(path, storage_options)
    removed = clean_partial_files(path) if clean_partial else None
    problem = meta.get("_unreadable")
    if problem is None:
        try:
            st = _Store(path, storage_options, meta)
        except Exception as exc:  # the root group does not open
            problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:  # without the root group nothing else can be checked
        return ValidationReport(
            path,
            [Check("schema", "fail", f"the root group cannot be opened ({problem})")],
            [("all other checks", "the store's root metadata is unreadable")],
        )
    steps: list[tuple[str, Callable[[], Check], str | None]] = [
        ("schema", lambda: _check_schema(st), None),
        ("labels", lambda: _check_labels(st), None),
        ("provenance", lambda: _check_provenance(st), None),
        ("completeness", lambda: _check_completeness(st), None),
        ("partial_files", lambda: _check_partial(st, removed), None),
        ("finite", lambda: _check_finite(st, progress), None if scan else "not requested (--no-scan / scan=False)"),
        ("token_ids", lambda: _check_token_ids(st, progress), None),
        ("special_tokens", lambda: _check_special_tokens(st, progress), None),
        ("rerun", lambda: _check_rerun(st, rerun, seed),
         None if rerun > 0 else "not requested (--rerun N / rerun=N recomputes N contexts with the model)"),
    ]
    checks: list[Check] = []
    skipped: list[tuple[str, str]] = []
    for name, run, not_requested in steps:
        if not_requested:
            skipped.append((name, not_requested))
            continue
        try:
            checks.append(run())
        except _Skip as why:
            skipped.append((name, f"cannot run: {why}"))
        except Exception as exc:  # a store too damaged for this check's reads, NaN from the model
            checks.append(Check(name, "fail", f"could not be checked: {type(exc).__name__}: {exc}"))
    return ValidationReport(path, checks, skipped)


__all__ = [
    "RERUN_TOLERANCE",
    "Check",
    "ValidationReport",
    "clean_partial_files",
    "partial_files",
    "validate_store",
]
