"""Cost of ``open_hidden``'s check for missing chunk files, on a store of many blocks.

    python bench/open_check.py --blocks 1024 --layer-chunks 2

Writes a small planted store (2 contexts per block, 4 positions, 4 dims, ``--layer-chunks``
chunk files per block) in a temporary folder, then times
``posctx.store.integrity.missing_chunks`` over every block (one ``stat`` per chunk file),
and ``posctx.open_hidden`` with and without the check, and prints the figures in ms. The
store is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import posctx
from posctx.store import plan_blocks, reading
from posctx.store.integrity import missing_chunks
from posctx.testing import write_large_planted_store


def _ms(run: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Min and median wall time of ``repeat`` calls, in ms."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1024)
    parser.add_argument("--layer-chunks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="posctx-open-check-")
    path = os.path.join(folder, "h.zarr")
    try:
        n_contexts = 2 * args.blocks
        write_large_planted_store(
            path,
            n_contexts=n_contexts,
            length=4,
            n_layers=args.layer_chunks,
            n_dims=4,
            chunk_contexts=2,
            chunk_layers=1,
        )
        blocks = plan_blocks(n_contexts, 2)
        n_files = args.blocks * args.layer_chunks
        start = time.perf_counter()
        assert missing_chunks(path, blocks) == {}
        print(f"{args.blocks} blocks, {n_files} chunk files of hidden")
        print(f"missing_chunks, first call: {(time.perf_counter() - start) * 1e3:.2f} ms")
        fmt = "min {:.2f} ms, median {:.2f} ms of {}"
        print(
            "missing_chunks:",
            fmt.format(*_ms(lambda: missing_chunks(path, blocks), args.repeat), args.repeat),
        )
        print(
            "open_hidden:",
            fmt.format(*_ms(lambda: posctx.open_hidden(path), args.repeat), args.repeat),
        )
        check = reading.check_chunks_present
        reading.check_chunks_present = lambda *a, **k: None  # type: ignore[assignment]
        try:
            timed = _ms(lambda: posctx.open_hidden(path), args.repeat)
        finally:
            reading.check_chunks_present = check
        print("open_hidden without the check:", fmt.format(*timed, args.repeat))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
