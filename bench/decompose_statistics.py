"""Decomposing from the statistics kept during extraction vs reading the hidden states back.

    python bench/decompose_statistics.py --gb 2.5 --lengths 128,512 --repeat 3

For each context length T, writes a planted store of about ``--gb`` GB of hidden states in the
real store schema (MiniLM-shaped: 7 layers, 384 dims, float32, about 64 MB chunks) with the
statistics ``posctx extract`` keeps, then times, each in its own process and in turn:

* ``read``: the decomposition from the hidden states, as before statistics existed:
  ``write_decomposition(decompose(open_hidden(store), positions=paper_positions), out)``;
* ``statistics``: ``posctx decompose``'s library call, ``decompose_store(store, out)``, which
  the statistics serve (the same default positions).

Each route reports the time of the call in its process (opening the store included; imports
excluded, the lazy ones of zarr and distributed too), and the bytes the
process read and wrote during it (``rchar``/``wchar`` of /proc/self/io: every byte through
read and write calls, from the page cache or the disk). The page cache is warm for both (the
store was just written or read), or with ``--cold`` empty (root only: the page cache is
dropped before each route, so both read from the disk). Both results are compared (mu, pos,
ctx, sums of squares).
Prints a markdown table; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics as stats
import subprocess
import sys
import tempfile
from pathlib import Path

LAYERS, DIMS = 7, 384

ROUTES = {
    "read": """
import posctx
from posctx.decomposition import paper_positions
START()
ds = posctx.open_hidden(STORE)
posctx.write_decomposition(posctx.decompose(ds, positions=paper_positions(ds)), OUT)
""",
    "statistics": """
from posctx.decomposition.stores import decompose_store
START()
result = decompose_store(STORE, OUT)
assert result.source == "statistics", result.source
""",
}

HARNESS = """
import json, sys, time
# Imports are not the work: both routes import these lazily (zarr when a store is opened,
# distributed when dask looks for a client in its first compute), so they import them first.
import distributed, zarr, xarray.backends.zarr
def io():
    fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])
STORE, OUT = sys.argv[1], sys.argv[2]
marks = {}
def START():
    marks["t"] = time.perf_counter()
    marks["io"] = io()
BODY
seconds = time.perf_counter() - marks["t"]
read, written = (b - a for a, b in zip(marks["io"], io()))
print(json.dumps({"seconds": seconds, "read": read, "written": written}))
"""


def drop_caches() -> None:
    """Empty the page cache (root only): the next reads come from the disk."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_route(route: str, store: Path, out: Path, cold: bool = False) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    if cold:
        drop_caches()
    code = HARNESS.replace("BODY", ROUTES[route])
    done = subprocess.run(
        [sys.executable, "-c", code, str(store), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare(a: Path, b: Path) -> float:
    """Largest difference of mu, pos, ctx, ss_* relative to each variable's largest value."""
    import numpy as np

    import posctx

    x, y = posctx.open_decomposition(str(a)), posctx.open_decomposition(str(b))
    names = ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid")
    return max(
        float(np.abs(x[n].values - y[n].values).max() / np.abs(y[n].values).max()) for n in names
    )


def build(path: Path, gb: float, length: int) -> int:
    from posctx.testing import write_large_planted_store

    per_context = length * LAYERS * DIMS * 4
    chunk = max(2, (64 * 2**20 // per_context) // 2 * 2)
    n_contexts = int(gb * 1e9 // per_context) // chunk * chunk
    if not path.exists():
        write_large_planted_store(
            str(path),
            n_contexts=n_contexts,
            length=length,
            n_layers=LAYERS,
            n_dims=DIMS,
            chunk_contexts=chunk,
            statistics=True,
            progress=True,
        )
    return n_contexts


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.5, help="hidden-state bytes per store")
    parser.add_argument("--lengths", default="128,512", help="context lengths T, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each route")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="posctx-bench-stats-"))
    work.mkdir(parents=True, exist_ok=True)
    table: dict[str, object] = {"machine": f"{platform.machine()}, {platform.processor() or ''}"}
    rows = []
    try:
        for length in (int(v) for v in args.lengths.split(",")):
            store = work / f"T{length}.zarr"
            n_contexts = build(store, args.gb, length)
            hidden = sum(f.stat().st_size for f in (store / "hidden").rglob("*") if f.is_file())
            runs: dict[str, list[dict[str, float]]] = {route: [] for route in ROUTES}
            for _ in range(args.repeat):
                for route in ROUTES:  # in turn: a drift in the machine's speed hits both
                    out = work / f"out-{route}.zarr"
                    runs[route].append(run_route(route, store, out, cold=args.cold))
            worst = compare(work / "out-statistics.zarr", work / "out-read.zarr")
            median = {r: stats.median(x["seconds"] for x in v) for r, v in runs.items()}
            row = {
                "T": length,
                "cache": "cold" if args.cold else "warm",
                "contexts": n_contexts,
                "hidden_gb": hidden / 1e9,
                "read_s": median["read"],
                "statistics_s": median["statistics"],
                "speedup": median["read"] / median["statistics"],
                "read_gb_read": runs["read"][-1]["read"] / 1e9,
                "statistics_gb_read": runs["statistics"][-1]["read"] / 1e9,
                "read_gb_written": runs["read"][-1]["written"] / 1e9,
                "statistics_gb_written": runs["statistics"][-1]["written"] / 1e9,
                "max_relative_difference": worst,
                "runs": runs,
            }
            rows.append(row)
            print(
                f"| {length} | {'cold' if args.cold else 'warm'} | {n_contexts} | {hidden / 1e9:.2f} | {median['read']:.2f} | "
                f"{median['statistics']:.2f} | {row['speedup']:.1f}x | "
                f"{row['read_gb_read']:.2f} / {row['read_gb_written']:.3f} | "
                f"{row['statistics_gb_read']:.3f} / {row['statistics_gb_written']:.3f} | "
                f"{worst:.1e} |",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(store)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    table["rows"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    print(
        "| T | page cache | contexts | hidden GB | read s | statistics s | speed-up | read: GB read / "
        "written | statistics: GB read / written | max rel. diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    main()
