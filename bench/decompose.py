"""Benchmark of the decomposition against the I/O limit and the routes a user would write.

    python bench/decompose.py --gb 8 --routes read,posctx,naive,numpy --scaling

Generates a planted store of the requested size in the real store schema (MiniLM-shaped:
T=128, 7 layers, 384 dims, about 64 MB chunks), then runs each route in its own process and
measures wall time and peak memory (max RSS) of that process:

(a) ``read``: every chunk read and decoded through xarray's zarr backend (``xr.open_zarr``)
    with the same dask threads, no arithmetic: the I/O limit through zarr;
(a') ``direct``: every chunk read by posctx's direct reader (``posctx.fastread``, what
    ``posctx.open_hidden`` uses for uncompressed local stores), no arithmetic;
(b) ``posctx``: ``posctx.write_decomposition(posctx.decompose(open_hidden(store)), out)``;
(b') ``posctx-numpy``: the same with ``POSCTX_KERNEL=numpy`` (numpy's passes instead of the
    compiled one-pass kernel of ``posctx.fused``);
(b'') ``posctx-prior``: posctx before that kernel and raw outputs: numpy kernel, outputs
    compressed with zstd, ``ctx`` stored in one hidden chunk's contexts per chunk;
(c) ``naive``: the xarray route a user would write: ``.mean`` over each axis and the sum of
    squares, each computed separately;
(d) ``numpy``: load the whole array into memory, then numpy (only where it fits).

Every route's mu, pos and sums of squares are compared with posctx's. Results are printed as
a markdown table and written as JSON next to the store (``--json`` to choose where).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LENGTH, LAYERS, DIMS, CHUNK = 128, 7, 384, 48
#: Routes timed best of --repeat runs (the others are slow enough for one).
REPEATED = ("read", "direct", "posctx", "posctx-numpy", "posctx-prior")
BYTES_PER_CONTEXT = LENGTH * LAYERS * DIMS * 4

ROUTE_CODE = {
    "read": """
import dask, numpy as np, xarray as xr
x = xr.open_zarr(STORE).hidden.data
START()
dask.compute(x.map_blocks(lambda b: np.zeros((1,) * 4, b.dtype), chunks=(1,) * 4), scheduler="threads")
""",
    "direct": """
import dask, numpy as np, posctx
x = posctx.open_hidden(STORE).hidden.data
START()
dask.compute(x.map_blocks(lambda b: np.zeros((1,) * 4, b.dtype), chunks=(1,) * 4), scheduler="threads")
""",
    "posctx": """
import posctx, numpy as np
START()
posctx.write_decomposition(posctx.decompose(posctx.open_hidden(STORE)), OUT + "/dec.zarr")
STOP()
dec = posctx.open_decomposition(OUT + "/dec.zarr")
np.savez(OUT + "/result.npz", mu=dec.mu.values, pos=dec.pos.values, ss_total=dec.ss_total.values,
         ss_ctx=dec.ss_ctx.values, ss_resid=dec.ss_resid.values)
""",
    "naive": """
import xarray as xr, numpy as np
h = xr.open_zarr(STORE).hidden
START()
mu = h.mean(("context", "position")).compute()
pos = (h.mean("context") - mu).compute()
ctx = (h.mean("position") - mu).compute()
ss_total = ((h - mu) ** 2).sum(("context", "position", "dim")).compute()
C, T = h.sizes["context"], h.sizes["position"]
ss_pos = C * (pos ** 2).sum(("position", "dim"))
ss_ctx = T * (ctx ** 2).sum(("context", "dim"))
STOP()
np.savez(OUT + "/result.npz", mu=mu.values, pos=pos.values, ss_total=ss_total.values,
         ss_ctx=ss_ctx.values, ss_resid=(ss_total - ss_pos - ss_ctx).values)
""",
    "numpy": """
import zarr, numpy as np
START()
x = zarr.open_array(STORE + "/hidden", mode="r")[:]
C, T = x.shape[:2]
mu = x.mean(axis=(0, 1), dtype=np.float64)
pos = x.mean(axis=0, dtype=np.float64) - mu
ctx = x.mean(axis=1, dtype=np.float64) - mu
ss_total = np.einsum("ctld,ctld->l", x, x, dtype=np.float64) - C * T * (mu ** 2).sum(-1)
ss_pos = C * (pos ** 2).sum((0, 2))
ss_ctx = T * (ctx ** 2).sum((0, 2))
STOP()
np.savez(OUT + "/result.npz", mu=mu, pos=pos, ss_total=ss_total, ss_ctx=ss_ctx,
         ss_resid=ss_total - ss_pos - ss_ctx)
""",
}

# The same route with numpy's four passes per slab instead of the numba kernel.
ROUTE_CODE["posctx-numpy"] = (
    'import os\nos.environ["POSCTX_KERNEL"] = "numpy"\n' + ROUTE_CODE["posctx"]
)
# posctx as it was before the kernel and output changes: numpy kernel, outputs compressed with
# zarr's default (zstd), ctx chunks of one hidden chunk's contexts.
ROUTE_CODE["posctx-prior"] = (
    'import os\nos.environ["POSCTX_KERNEL"] = "numpy"\n'
    "import posctx.decomposition.storage as st\n"
    'st.OUTPUT_COMPRESSORS = "auto"\nst.CONTEXT_CHUNK_BYTES = 0\n'
) + ROUTE_CODE["posctx"]

# Timed inside the child, after imports and opening: START() to STOP() (or the end). Peak
# memory is the child's own VmHWM (ru_maxrss of a forked child would inherit the parent's).
PRELUDE = """
import atexit, json, time
_t = {}
def START():
    _t["start"] = time.perf_counter()
def STOP():
    _t.setdefault("stop", time.perf_counter())
def _report():
    STOP()
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    json.dump({"seconds": _t["stop"] - _t["start"], "peak_rss_mb": int(hwm) / 1024},
              open(OUT + "/timing.json", "w"))
atexit.register(_report)
"""


def run_route(route: str, store: Path, out: Path) -> dict[str, float]:
    """Run one route in a fresh process; its timed seconds, process seconds and peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    code = f"STORE = {str(store)!r}\nOUT = {str(out)!r}\n" + PRELUDE + ROUTE_CODE[route]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    record = json.loads((out / "timing.json").read_text())
    record["process_seconds"] = time.perf_counter() - start
    return record


def make_store(path: Path, n_contexts: int) -> None:
    from posctx.testing import write_large_planted_store

    if (path / "zarr.json").exists():
        return
    write_large_planted_store(
        str(path),
        n_contexts=n_contexts,
        length=LENGTH,
        n_layers=LAYERS,
        n_dims=DIMS,
        chunk_contexts=CHUNK,
        progress=True,
    )


def warm(store: Path) -> float:
    """Read every file once so that every route starts from the same, warm page cache."""
    start = time.perf_counter()
    buf = bytearray(1 << 24)
    for root, _, files in os.walk(store):
        for name in files:
            with open(os.path.join(root, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return time.perf_counter() - start


def compare(reference: Path, other: Path) -> float:
    """Largest relative difference between two routes' results."""
    import numpy as np

    a, b = np.load(reference), np.load(other)
    return max(
        float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-30)) for k in a.files
    )


def machine() -> str:
    import numpy as np

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=8.0, help="store size in GB (1e9 bytes)")
    parser.add_argument(
        "--routes", default="read,direct,posctx,posctx-numpy,posctx-prior,naive,numpy"
    )
    parser.add_argument(
        "--scaling", action="store_true", help="also time posctx at 1/16, 1/4 of the size"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of read/direct/posctx (best kept); naive and numpy run once",
    )
    parser.add_argument("--workdir", default=None, help="where stores go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="posctx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n_contexts = max(CHUNK, round(args.gb * 1e9 / BYTES_PER_CONTEXT / CHUNK) * CHUNK)
    store = work / f"hidden-{n_contexts}.zarr"
    t0 = time.perf_counter()
    make_store(store, n_contexts)
    size = n_contexts * BYTES_PER_CONTEXT
    print(
        f"store {store}: {n_contexts} contexts, {size / 1e9:.2f} GB, made in {time.perf_counter() - t0:.0f} s"
    )

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cached = size < 0.5 * ram
    if cached:  # fits in the page cache: measure every route warm, none from disk
        print(f"warm-up read: {size / 1e9 / warm(store):.2f} GB/s")
    else:
        print("store exceeds half the RAM: every route reads it from disk")
    results: dict[str, dict[str, float]] = {}
    for route in args.routes.split(","):
        if route == "numpy" and size > 0.6 * ram:
            print(f"skip numpy: {size / 1e9:.1f} GB does not fit in memory")
            continue
        out = work / f"out-{route}"
        shutil.rmtree(out, ignore_errors=True)
        runs = [
            run_route(route, store, out) for _ in range(args.repeat if route in REPEATED else 1)
        ]
        results[route] = min(runs, key=lambda r: r["seconds"])
        results[route]["runs"] = len(runs)
        results[route]["gb_per_s"] = size / 1e9 / results[route]["seconds"]
        if route not in ("read", "direct", "posctx"):  # compared with posctx's results
            results[route]["max_rel_diff_vs_posctx"] = compare(
                work / "out-posctx/result.npz", out / "result.npz"
            )
        print(route, json.dumps(results[route]))

    scaling = {}
    if args.scaling:
        for fraction in (16, 4):
            n = max(CHUNK, n_contexts // fraction // CHUNK * CHUNK)
            sub = work / f"hidden-{n}.zarr"
            make_store(sub, n)
            if cached:
                warm(sub)
            out = work / f"out-scaling-{n}"
            shutil.rmtree(out, ignore_errors=True)
            scaling[n] = min(
                (run_route("posctx", sub, out) for _ in range(args.repeat)),
                key=lambda r: r["seconds"],
            )
            if not args.keep:
                shutil.rmtree(sub, ignore_errors=True)
        scaling[n_contexts] = results.get("posctx") or run_route(
            "posctx", store, work / "out-posctx"
        )

    where = "page cache (warm)" if cached else "disk (larger than half the RAM)"
    print(
        f"\nmachine: {machine()}; store {size / 1e9:.2f} GB, {n_contexts} contexts, chunks of {CHUNK} contexts ({CHUNK * BYTES_PER_CONTEXT / 1e6:.0f} MB), read from {where}\n"
    )
    print("| route | seconds | GB/s | peak RSS (MB) | vs posctx (time) | max rel. diff vs posctx |")
    print("|---|---|---|---|---|---|")
    base = results.get("posctx", {}).get("seconds")
    for route, r in results.items():
        ratio = f"{r['seconds'] / base:.2f}" if base else "-"
        diff = r.get("max_rel_diff_vs_posctx")
        print(
            f"| {route} | {r['seconds']:.1f} | {r['gb_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {ratio} | {'-' if diff is None else f'{diff:.1e}'} |"
        )
    if "read" in results and base:
        print(
            f"\nposctx / zarr decode-only throughput (b/a): {results['read']['seconds'] / base:.2f}"
        )
    if "direct" in results and base:
        print(
            f"posctx / direct read-only throughput (b/a'): {results['direct']['seconds'] / base:.2f}"
        )
    if "naive" in results and base:
        print(f"naive xarray / posctx time (c/b): {results['naive']['seconds'] / base:.2f}")
    if "numpy" in results and base:
        print(f"numpy in memory / posctx time (d/b): {results['numpy']['seconds'] / base:.2f}")
    if scaling:
        print("\n| contexts | seconds | seconds per 1000 contexts |")
        print("|---|---|---|")
        for n, r in sorted(scaling.items()):
            print(f"| {n} | {r['seconds']:.1f} | {1000 * r['seconds'] / n:.2f} |")
    record = {
        "machine": machine(),
        "n_contexts": n_contexts,
        "bytes": size,
        "cached": cached,
        "routes": results,
        "scaling": {str(k): v for k, v in scaling.items()},
    }
    Path(args.json or work / "bench.json").write_text(json.dumps(record, indent=2))
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
