"""Overhead of Icechunk (a transactional Zarr store) against a plain local Zarr v3 store.

    python bench/icechunk_overhead.py --blocks 16 --chunk-mb 64 --repeat 3 --json out.json

Needs ``pip install icechunk`` (not a posctx dependency).

Writes the same N blocks of hidden-state-shaped float32 data (one chunk of contexts each,
shape (c, 128, 7, 384) with c chosen so a chunk is about M MiB, uncompressed) plus a
per-block completion marker into

(a) ``zarr``: a plain local Zarr v3 store (``zarr.open_group`` on a path), data then marker
    per block, exactly as ``posctx.store.BlockWriter`` does;
(b) ``icechunk/1``: an Icechunk repository on local filesystem storage, one writable session
    and one commit per block (data and marker in the same transaction);
(c) ``icechunk/K``: the same with one commit every K blocks (``--commit-every``, default: all
    blocks in one commit).

Every array is uncompressed (``compressors=None``) with the ``bytes`` codec only, in all three
stores. For each store it measures the write time (best of ``--repeat``; the time spent inside
``commit`` is reported separately), the time to fsync every file of the store afterwards
(i.e. to make the written bytes durable), the time to read every block back through zarr
(warm: the data is in the page cache; fastest of ``--read-passes``), for the plain store also
the direct one-``fromfile``-per-chunk read that ``posctx.fastread`` uses, the size on disk,
the number of files, and how much resident memory grew by the end of each transaction (does
an open session hold the written data?). Store creation (schema, arrays, Icechunk's initial
commit) is timed separately and not included in the write time. Stores are deleted after
each run unless ``--keep``; the three variants are interleaved within each run.

The data is random but fixed (seeded); a pool of up to 8 distinct blocks is generated before
any timing and block b writes pool[b % 8], so memory stays bounded for large N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

LENGTH, LAYERS, DIMS = 128, 7, 384
BYTES_PER_CONTEXT = LENGTH * LAYERS * DIMS * 4
POOL = 8


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, number of files) under ``path``."""
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            total += st.st_blocks * 512
            files += 1
    return total, files


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path``: what it costs to make the store durable."""
    for root, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_arrays(store: Any, n_blocks: int, c: int) -> tuple[Any, Any]:
    """posctx's two written arrays: ``hidden`` (one chunk per block, no compressor, NaN
    fill) and ``block_complete`` (uint8, one chunk per block)."""
    group = zarr.open_group(store, mode="w", zarr_format=3)
    hidden = group.create_array(
        "hidden",
        shape=(n_blocks * c, LENGTH, LAYERS, DIMS),
        chunks=(c, LENGTH, LAYERS, DIMS),
        dtype="float32",
        compressors=None,
        fill_value=np.nan,
        dimension_names=("context", "position", "layer", "dim"),
    )
    marker = group.create_array(
        "block_complete",
        shape=(n_blocks,),
        chunks=(1,),
        dtype="uint8",
        compressors=None,
        fill_value=0,
        dimension_names=("block",),
    )
    return hidden, marker


class Variant:
    """One way of storing the blocks: ``setup`` creates an empty store, ``write`` fills it,
    ``read`` returns a callable that reads block b back as a numpy array."""

    name = ""

    def __init__(self, path: Path, n_blocks: int, c: int) -> None:
        self.path, self.n_blocks, self.c = path, n_blocks, c
        self.commit_s = 0.0
        self.commits = 0
        self.rss_peak = 0.0  # largest resident memory seen at the end of a transaction

    def setup(self) -> None:
        raise NotImplementedError

    def write(self, data: Callable[[int], np.ndarray]) -> None:
        raise NotImplementedError

    def readers(self) -> dict[str, Callable[[int], np.ndarray]]:
        raise NotImplementedError


class PlainZarr(Variant):
    name = "zarr"

    def setup(self) -> None:
        create_arrays(str(self.path), self.n_blocks, self.c)

    def write(self, data: Callable[[int], np.ndarray]) -> None:
        group = zarr.open_group(str(self.path), mode="r+")
        hidden, marker = group["hidden"], group["block_complete"]
        for b in range(self.n_blocks):
            hidden[b * self.c : (b + 1) * self.c] = data(b)  # data first,
            marker[b] = 1  # then the marker (posctx.store.BlockWriter.write)
        self.rss_peak = rss_mb()

    def readers(self) -> dict[str, Callable[[int], np.ndarray]]:
        hidden = zarr.open_group(str(self.path), mode="r")["hidden"]
        shape = (self.c, LENGTH, LAYERS, DIMS)

        def via_zarr(b: int) -> np.ndarray:
            return hidden[b * self.c : (b + 1) * self.c]

        def direct(b: int) -> np.ndarray:  # what posctx.fastread does for such a store
            return np.fromfile(
                self.path / "hidden" / "c" / str(b) / "0" / "0" / "0", "<f4"
            ).reshape(shape)

        return {"zarr": via_zarr, "direct": direct}


class Icechunk(Variant):
    def __init__(self, path: Path, n_blocks: int, c: int, every: int) -> None:
        super().__init__(path, n_blocks, c)
        self.every = every
        self.name = f"icechunk/{every}"

    def setup(self) -> None:
        import icechunk as ic

        self.repo = ic.Repository.create(ic.local_filesystem_storage(str(self.path)))
        session = self.repo.writable_session("main")
        create_arrays(session.store, self.n_blocks, self.c)
        session.commit("create arrays")

    def write(self, data: Callable[[int], np.ndarray]) -> None:
        for first in range(0, self.n_blocks, self.every):
            session = self.repo.writable_session("main")
            group = zarr.open_group(session.store, mode="r+")
            hidden, marker = group["hidden"], group["block_complete"]
            last = min(first + self.every, self.n_blocks)
            for b in range(first, last):
                hidden[b * self.c : (b + 1) * self.c] = data(b)
                marker[b] = 1  # redundant here: the commit is the atomic unit
            self.rss_peak = max(self.rss_peak, rss_mb())  # does the session hold the data?
            t = time.perf_counter()
            session.commit(f"blocks {first}..{last - 1}")
            self.commit_s += time.perf_counter() - t
            self.commits += 1

    def readers(self) -> dict[str, Callable[[int], np.ndarray]]:
        session = self.repo.readonly_session(branch="main")
        hidden = zarr.open_group(session.store, mode="r")["hidden"]

        def via_zarr(b: int) -> np.ndarray:
            return hidden[b * self.c : (b + 1) * self.c]

        return {"zarr": via_zarr}


def run(args: argparse.Namespace) -> dict[str, Any]:
    c = max(1, int(args.chunk_mb * 2**20 // BYTES_PER_CONTEXT))
    block_bytes = c * BYTES_PER_CONTEXT
    total_bytes = args.blocks * block_bytes
    rng = np.random.default_rng(0)
    pool = [
        rng.standard_normal((c, LENGTH, LAYERS, DIMS), dtype=np.float32)
        for _ in range(min(POOL, args.blocks))
    ]

    def data(b: int) -> np.ndarray:
        return pool[b % len(pool)]

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    every = args.commit_every or args.blocks
    makers: list[Callable[[Path], Variant]] = [
        lambda p: PlainZarr(p, args.blocks, c),
        lambda p: Icechunk(p, args.blocks, c, 1),
    ]
    if every != 1:
        makers.append(lambda p: Icechunk(p, args.blocks, c, every))

    results: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    print(
        f"{args.blocks} blocks of {c} contexts x {LENGTH} x {LAYERS} x {DIMS} float32 "
        f"({block_bytes / 1e6:.1f} MB each, {total_bytes / 1e9:.2f} GB in all), "
        f"best of {args.repeat} runs ({args.read_passes} read passes each), "
        f"load average {load_before[0]:.2f}",
        flush=True,
    )
    for r in range(args.repeat):
        for make in makers:  # interleaved, so drift of the machine hits every store alike
            name = make(Path("x")).name
            path = workdir / name.replace("/", "-")
            shutil.rmtree(path, ignore_errors=True)
            v = make(path)
            rss0 = rss_mb()
            t0 = time.perf_counter()
            v.setup()
            t1 = time.perf_counter()
            v.write(data)
            t2 = time.perf_counter()
            fsync_tree(path)
            t3 = time.perf_counter()
            reads: dict[str, float] = {}
            for _ in range(args.read_passes):
                for route, read in v.readers().items():
                    t = time.perf_counter()
                    for b in range(args.blocks):
                        block = read(b)
                    elapsed = time.perf_counter() - t
                    reads[route] = min(reads.get(route, elapsed), elapsed)
                    assert np.array_equal(block, data(args.blocks - 1)), (name, route)
            size, files = disk_usage(path)
            rec = results.setdefault(name, {"runs": []})
            rec["runs"].append(
                {
                    "setup_s": t1 - t0,
                    "write_s": t2 - t1,
                    "commit_s": v.commit_s,
                    "commits": v.commits,
                    "fsync_s": t3 - t2,
                    "read_s": reads,
                    "disk_bytes": size,
                    "files": files,
                    "rss_growth_mb": v.rss_peak - rss0,
                }
            )
            print(
                f"  run {r + 1} {name:12s} write {t2 - t1:6.2f} s (commits {v.commit_s:5.2f} s)"
                f"  fsync {t3 - t2:5.2f} s  read "
                + ", ".join(f"{k} {s:5.2f} s" for k, s in reads.items()),
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)

    for rec in results.values():
        runs = rec["runs"]
        rec["best"] = {
            key: min(run[key] for run in runs) for key in ("setup_s", "write_s", "fsync_s")
        }
        rec["best"]["commit_s"] = min(run["commit_s"] for run in runs)
        rec["best"]["write_fsync_s"] = min(run["write_s"] + run["fsync_s"] for run in runs)
        rec["best"]["read_s"] = {
            route: min(run["read_s"][route] for run in runs) for route in runs[0]["read_s"]
        }
        rec["commits"] = runs[0]["commits"]
        rec["disk_bytes"] = runs[-1]["disk_bytes"]
        rec["files"] = runs[-1]["files"]
        rec["rss_growth_mb"] = max(run["rss_growth_mb"] for run in runs)

    import icechunk

    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "blocks": args.blocks,
        "contexts_per_block": c,
        "block_bytes": block_bytes,
        "total_bytes": total_bytes,
        "repeat": args.repeat,
        "read_passes": args.read_passes,
        "loadavg_before_after": [load_before[0], os.getloadavg()[0]],
        "commit_every": every,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
            "zarr": zarr.__version__,
            "icechunk": icechunk.__version__,
        },
        "results": results,
    }


def table(report: dict[str, Any]) -> str:
    total = report["total_bytes"]
    base = report["results"]["zarr"]["best"]
    rows = [
        "| store | commits | write s | write GB/s | vs zarr | of which commit s | write+fsync s "
        "| vs zarr | read s (zarr) | read GB/s | vs zarr | on disk MB | files "
        "| RSS growth MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rec in report["results"].items():
        best = rec["best"]
        read = best["read_s"]["zarr"]
        rows.append(
            f"| {name} | {rec['commits'] or '-'} | {best['write_s']:.2f} | {total / best['write_s'] / 1e9:.2f} "
            f"| {best['write_s'] / base['write_s']:.2f} | {best['commit_s']:.2f} "
            f"| {best['write_fsync_s']:.2f} | {best['write_fsync_s'] / base['write_fsync_s']:.2f} "
            f"| {read:.2f} | {total / read / 1e9:.2f} | {read / base['read_s']['zarr']:.2f} "
            f"| {rec['disk_bytes'] / 1e6:.1f} | {rec['files']} | {rec['rss_growth_mb']:.0f} |"
        )
    direct = base["read_s"]["direct"]
    rows.append(
        f"| zarr, direct read (posctx.fastread) | - | - | - | - | - | - | - | {direct:.2f} "
        f"| {total / direct / 1e9:.2f} | {direct / base['read_s']['zarr']:.2f} | - | - | - |"
    )
    setup = ", ".join(f"{k} {r['best']['setup_s']:.3f} s" for k, r in report["results"].items())
    return "\n".join(rows) + f"\n\nstore creation (not in write times): {setup}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=16, help="number of blocks (chunks) to write")
    parser.add_argument("--chunk-mb", type=float, default=64, help="approximate chunk size in MiB")
    parser.add_argument(
        "--workdir", default="/tmp/posctx-icechunk-bench", help="where the stores go"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per store; the best is reported"
    )
    parser.add_argument(
        "--commit-every",
        type=int,
        default=0,
        help="blocks per commit for the batched Icechunk store (default: all in one commit)",
    )
    parser.add_argument(
        "--read-passes",
        type=int,
        default=2,
        help="full reads of each store per run; the fastest counts (reads are noisy)",
    )
    parser.add_argument("--json", help="also write the full results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the stores of the last run")
    args = parser.parse_args(argv)
    if (
        min(args.blocks, args.repeat, args.read_passes) < 1
        or args.chunk_mb <= 0
        or args.commit_every < 0
    ):
        parser.error(
            "--blocks, --repeat and --read-passes must be >= 1, --chunk-mb > 0, --commit-every >= 0"
        )

    import icechunk

    icechunk.set_logs_filter("error")  # the local-storage note on concurrent commits, each run
    warnings.filterwarnings("ignore", message="Consolidated metadata")
    report = run(args)
    print()
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
