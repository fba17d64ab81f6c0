"""Fault injection for extraction: SIGKILL a real process at a chosen store write, then resume.

Every byte posctx puts in a local store goes through zarr's ``LocalStore``, which writes a
chunk to ``<key>.<uuid>.partial`` and renames it into place. A child process counts those
writes and kills itself with SIGKILL (no exception, no cleanup) at write number ``k``:

- ``before``: before write ``k`` starts;
- ``torn``: half of write ``k``'s bytes are in its ``.partial`` file (a kill mid-chunk-write);
- ``after``: write ``k`` is renamed into place, nothing after it happened (between a block's
  data and its completion marker when ``k`` is a data write).

Processes come from a ``forkserver`` that has already imported torch and transformers, so a
killed run and its resume cost a fraction of a second each instead of an interpreter start.
The forkserver never runs a torch op itself, so its children start with no thread pools to
inherit.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Mode = Literal["before", "torn", "after"]
MODES: tuple[Mode, ...] = ("before", "torn", "after")

_CTX = multiprocessing.get_context("forkserver")
# Everything a tiny-BERT extraction imports, so children only fork and run (transformers
# imports its modelling code lazily: ~2 s per process otherwise).
_CTX.set_forkserver_preload(
    [
        "torch",
        "transformers.modeling_utils",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
        "transformers.models.bert.modeling_bert",
        "transformers.tokenization_utils_tokenizers",
        "safetensors.torch",
        "tqdm.auto",
        "xarray",
        "dask.array",
        "zarr",
        "posctx.corpus",
        "posctx.extraction",
        "posctx.model",
    ]
)


@dataclass(frozen=True)
class Kill:
    """Where to kill: at store write number ``write`` (0-based) or at the first write to a
    path containing ``where``, in ``mode``; or after ``seconds`` of wall time."""

    write: int | None = None
    mode: Mode = "before"
    seconds: float | None = None
    where: str | None = None

    def hits(self, n: int, path: Path) -> bool:
        if self.where is not None:
            return self.where in path.as_posix()
        return self.write == n


def tiny_config(
    model: Path, contexts: int = 12, chunk: int = 2, chunk_layers: int = 0
) -> dict[str, Any]:
    """The extraction the fault tests run: a tiny model on the stdlib corpus, T = 16, in
    batches of 3 (so forward groups of 2 blocks with chunks of 2 contexts)."""
    from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig

    return ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=str(model), batch_size=3),
        store=StoreConfig(
            contexts=contexts,
            length=16,
            chunk_contexts=chunk,
            chunk_layers=chunk_layers,
            moments=True,
        ),
    ).to_dict()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(kill: Kill | None, count_file: Path | None, pause: float = 0.0) -> None:
    """Wrap zarr's one local write function with a counter and the kill."""
    import zarr.storage._local as local

    original = local._put
    lock = threading.Lock()
    counter = {"n": 0}

    def put(path: Path, value: Any, exclusive: bool = False) -> int:
        with lock:
            n = counter["n"]
            counter["n"] += 1
            if count_file is not None:
                count_file.write_text(str(counter["n"]))
        if pause:
            time.sleep(pause)  # a slow disk, so that readers can watch a run in progress
        hit = kill is not None and kill.hits(n, path)
        if hit and kill is not None:
            if kill.mode == "before":
                _die()
            if kill.mode == "torn":
                data = bytes(value.as_buffer_like())
                partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_bytes(data[: max(1, len(data) // 2)])
                _die()
        try:
            return original(path, value, exclusive=exclusive)
        finally:  # a write that raised (zarr expects some to) counts as done too
            if hit and kill is not None and kill.mode == "after":
                _die()

    local._put = put
    if kill is not None and kill.seconds is not None:
        timer = threading.Timer(kill.seconds, _die)
        timer.daemon = True
        timer.start()


def _child(
    config: dict[str, Any],
    path: str,
    kill: Kill | None,
    count_file: str | None,
    shard: tuple[int, int] | None = None,
    pause: float = 0.0,
) -> None:
    import torch
    import tqdm

    from posctx.config import ExtractConfig
    from posctx.extraction import extract

    torch.set_num_threads(1)  # several children may run at once on two cores
    # Commit the statistics after every block: the most commits, so the most kill points.
    os.environ["POSCTX_FLUSH_SECONDS"] = "0"
    # tqdm's default lock is a multiprocessing semaphore, which a SIGKILL leaks (and Python's
    # resource tracker then warns about): a thread lock does for one process.
    tqdm.tqdm.set_lock(threading.RLock())
    _install(kill, Path(count_file) if count_file else None, pause)
    extract(ExtractConfig.from_dict(config), path, progress=False, shard=shard)


def start(
    config: dict[str, Any],
    path: Path,
    kill: Kill | None = None,
    count_file: Path | None = None,
    shard: tuple[int, int] | None = None,
    pause: float = 0.0,
) -> Any:
    """Start one extraction in a fresh process (``pause`` seconds before each store write)."""
    proc = _CTX.Process(
        target=_child,
        args=(config, str(path), kill, str(count_file) if count_file else None, shard, pause),
    )
    proc.start()
    return proc


def wait(proc: Any) -> int:
    """Exit code of a process from :func:`start` (-9 when killed)."""
    proc.join(timeout=300)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise TimeoutError("an extraction process hung")
    return int(proc.exitcode)


def run(
    config: dict[str, Any], path: Path, kill: Kill | None = None, count_file: Path | None = None
) -> int:
    """Run one extraction in a fresh process; returns its exit code (-9 when killed)."""
    return wait(start(config, path, kill, count_file))


def run_shard(config: dict[str, Any], path: Path, shard: tuple[int, int]) -> int:
    """Run shard ``(i, n)`` of an extraction in a fresh process; returns its exit code."""
    return wait(start(config, path, shard=shard))


def _set_marker(path: str, array: str, index: int, barrier: Any, pause: float) -> None:
    """Set ``array[index] = 1`` the way a writer records a finished block, with a pause
    between zarr reading the chunk and writing it back (a read-modify-write, when the chunk
    holds other elements) so that concurrent writers interleave."""
    import zarr
    import zarr.storage._local as local

    original = local._get

    def get(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        time.sleep(pause)
        return out

    local._get = get
    marker = zarr.open_array(path, path=array, mode="r+")
    barrier.wait()
    marker[index] = 1


def set_markers_concurrently(path: Path, array: str, n: int, pause: float = 0.3) -> None:
    """``n`` processes at once each set their own element of ``array`` in the store."""
    barrier = _CTX.Barrier(n)
    procs = [
        _CTX.Process(target=_set_marker, args=(str(path), array, i, barrier, pause))
        for i in range(n)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        assert wait(proc) == 0


def store_contents(path: Path) -> dict[str, Any]:
    """Every array of a store (read through zarr, bypassing the consolidated copy) and its
    attributes, without the creation time stamp that differs between any two runs."""
    import zarr

    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    out: dict[str, Any] = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
    attrs = dict(group.attrs)
    record = dict(attrs.get("posctx", {}))
    record.pop("created", None)
    attrs["posctx"] = record
    out["attrs"] = attrs
    if "stat_partials" in group:
        # The partials themselves differ from run to run (writer ids, and how a kill split
        # the blocks between versions); what must agree is their merged sums, with every
        # block counted once: open_statistics checks that, then they are compared.
        from posctx.store.statistics import open_statistics

        stats = open_statistics(str(path), complete_only=True)
        out["merged_statistics"] = Merged(
            {
                name: np.asarray(stats[name].values)
                for name in ("pos_sum", "mean", "m2")
                if name in stats
            }
        )
    return out


@dataclass(frozen=True)
class Merged:
    """Sums merged from partials: equal up to float64 rounding (the grouping differs)."""

    arrays: dict[str, Any]

    def agrees(self, other: Merged) -> bool:
        return set(self.arrays) == set(other.arrays) and all(
            np.allclose(
                self.arrays[k],
                other.arrays[k],
                rtol=1e-12,
                atol=1e-12 * np.abs(self.arrays[k]).max(),
            )
            for k in self.arrays
        )


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of the arrays or attrs that are not bit-for-bit identical (NaN equals NaN)."""
    out = [name for name in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if name == "attrs":
            if x != y:
                out.append(name)
        elif isinstance(x, Merged):
            if not x.agrees(y):
                out.append(name)
        elif x.shape != y.shape or x.dtype != y.dtype:
            out.append(name)
        elif x.dtype.kind in "fc":
            if not np.array_equal(x.view(f"u{x.dtype.itemsize}"), y.view(f"u{y.dtype.itemsize}")):
                out.append(name)
        elif not np.array_equal(x, y):
            out.append(name)
    return out


def leftovers(path: Path) -> list[Path]:
    """Temporary files a killed process left: zarr's ``.partial`` chunks, posctx's
    ``.NAME.creating-*`` folders next to the store."""
    partial = list(path.rglob("*.partial")) if path.exists() else []
    return partial + list(path.parent.glob(f".{path.name}.creating-*"))
