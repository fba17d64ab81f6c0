"""Extraction with and without the statistics, in the same run (MiniLM on the CPU).

    python bench/extract_statistics.py --contexts 512 --repeat 3

Runs ``posctx extract`` (MiniLM, the built-in corpus, T=128) in its own process for each
route, the routes in turn so that a drift in the machine's speed hits them alike:

* ``none``: ``--no-statistics``, the hidden states alone (as before statistics existed);
* ``statistics``: the default: hidden states and statistics;
* ``moments``: ``--moments`` as well (the ``dim x dim`` second moments);
* ``statistics-only``: ``--hidden-contexts 0``: statistics, no hidden states.

Each reports the extraction's own timing of its forward-and-write phase (model loading and
planning excluded): tokens per second, and the store's size. Prints a markdown table of the
medians, with each route's ratio to ``none`` taken pair by pair.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics as stats
import subprocess
import sys
import tempfile
from pathlib import Path

ROUTES = {
    "none": ["--no-statistics"],
    "statistics": [],
    "moments": ["--moments"],
    "statistics-only": ["--hidden-contexts", "0"],
}

CODE = """
import json, sys
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.extraction import extract
from posctx.store import size_on_disk
contexts, length, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
flags = json.loads(sys.argv[4])
store = StoreConfig(contexts=contexts, length=length, **flags)
config = ExtractConfig(corpus=CorpusConfig(spec="stdlib"), model=ModelConfig(name="minilm"), store=store)
result = extract(config, out, progress=False)
print(json.dumps({"tokens_per_second": result.tokens_per_second, "seconds": result.seconds,
                  "bytes": size_on_disk(out)}))
"""

FLAGS = {
    "none": {"statistics": False},
    "statistics": {},
    "moments": {"moments": True},
    "statistics-only": {"hidden_contexts": 0},
}


def run(route: str, contexts: int, length: int, out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CODE,
            str(contexts),
            str(length),
            str(out),
            json.dumps(FLAGS[route]),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=512)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    routes = args.routes.split(",")
    work = Path(tempfile.mkdtemp(prefix="posctx-bench-extract-"))
    runs: dict[str, list[dict[str, float]]] = {r: [] for r in routes}
    try:
        for _ in range(args.repeat):
            for route in routes:
                runs[route].append(run(route, args.contexts, args.length, work / "h.zarr"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"MiniLM, {args.contexts} contexts x {args.length} tokens, {args.repeat} runs each\n")
    print("| route | tokens/s (median) | vs none (median of pairs) | store MB |")
    print("|---|---|---|---|")
    base = runs.get("none")
    for route in routes:
        rate = stats.median(r["tokens_per_second"] for r in runs[route])
        ratio = (
            stats.median(
                r["tokens_per_second"] / b["tokens_per_second"]
                for r, b in zip(runs[route], base, strict=True)
            )
            if base
            else float("nan")
        )
        size = stats.median(r["bytes"] for r in runs[route]) / 1e6
        print(f"| {route} | {rate:,.0f} | {ratio:.3f} | {size:,.1f} |")
    out: dict[str, object] = {"args": vars(args), "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
