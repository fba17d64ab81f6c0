"""Extraction throughput on an accelerator (or the CPU): forward only, with the store written,
and with the statistics, for MiniLM and random-weight models of real shapes, in one run.

    python bench/extract_gpu.py --device cuda --sweep 1,4,16,64    # the whole table
    python bench/extract_gpu.py --device cpu --models minilm,gpt2-small --lengths 128 \\
        --dtypes float32 --contexts 64 --batch-size 16            # what a CPU can do

For each model (``minilm``: the offline MiniLM; ``gpt2-small`` and ``llama-1b``: random
weights of GPT-2-small's and Llama-3.2-1B's shapes, built from their configs, with MiniLM's
tokenizer from its local folder), each length and each compute dtype, three routes run on the
same planned contexts:

* ``forward``: the forward passes alone, in the run's batches (states stay on the device);
* ``store``: ``posctx.extract --no-statistics``: forward, copy to the host, write;
* ``statistics``: ``posctx.extract``: the same with the statistics kept;
* with ``--sweep 1,4,16,64``: forward only at each of those batch sizes (throughput should
  grow with the batch until the device is saturated).

Each route reports tokens/s, and the store routes the GB/s of hidden states written; the
ratio to ``forward`` is the cost of storing. Then the writer alone (``Writers``, 1-8 threads,
writing blocks of the largest store) is set against a raw sequential write of the same bytes
to the same disk, in the same run. The device is named in the output. ``--json`` saves it all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("minilm", "gpt2-small", "llama-1b")


def load(kind: str, dtype: str, device: str, batch_size: int | str) -> Any:
    """A LoadedModel: MiniLM itself, or random weights of a real shape with its tokenizer."""
    import torch
    from transformers import AutoModel

    from posctx.config import ModelConfig
    from posctx.model import load_model
    from posctx.model.shapes import shape_config, with_model

    minilm = load_model(
        ModelConfig(name="minilm", dtype=dtype, device=device, batch_size=batch_size)
    )
    if kind == "minilm":
        return minilm
    torch.manual_seed(0)
    cfg = shape_config(kind)
    model = AutoModel.from_config(cfg, dtype=getattr(torch, dtype)).to(device).eval()
    return with_model(minilm, model, f"random-{kind}-{dtype}-seed0")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_only(loaded: Any, path: str, storage_dtype: str, batch: int | None = None) -> float:
    """Seconds of the forward passes over the store's contexts, in its batches and groups
    (or in batches of ``batch``)."""
    from posctx.extraction.groups import blocks_per_group, plan_groups
    from posctx.extraction.plan import stored_batch_size
    from posctx.model.forward import DeviceBuffers, launch_block
    from posctx.store import BlockWriter, plan_blocks, read_provenance

    record = read_provenance(path) or {}
    chunk, batch = int(record["chunk_contexts"]), batch or stored_batch_size(record)
    blocks = plan_blocks(int(record["config"]["store"]["contexts"]), chunk)
    groups = plan_groups(blocks, blocks, blocks_per_group(chunk, batch))
    reader = BlockWriter(path)
    ids = [reader.token_ids(g.span) for g in groups]
    buffers = DeviceBuffers(loaded, storage_dtype)
    launch_block(loaded, ids[0][:1], storage_dtype, batch_size=1, keep=0, buffers=buffers).wait()
    _sync(loaded.config.device)
    start = time.perf_counter()
    for group_ids in ids:
        launch_block(loaded, group_ids, storage_dtype, batch_size=batch, keep=0, buffers=buffers)
    _sync(loaded.config.device)
    return time.perf_counter() - start


def one_case(
    kind: str, length: int, dtype: str, args: argparse.Namespace, root: Path
) -> list[dict[str, Any]]:
    from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
    from posctx.extraction import extract
    from posctx.store import read_provenance

    batch: int | str = "auto" if args.batch_size == "auto" else int(args.batch_size)
    loaded = load(kind, dtype, args.device, batch)
    rows = []
    for route in ("store", "statistics"):
        config = ExtractConfig(
            corpus=CorpusConfig(spec="stdlib", balance=False),
            model=ModelConfig(name="minilm", dtype=dtype, device=args.device, batch_size=batch),
            store=StoreConfig(
                contexts=args.contexts,
                length=length,
                storage_dtype=args.storage_dtype,
                statistics=route == "statistics",
            ),
        )
        path = str(root / f"{kind}-{length}-{dtype}-{route}.zarr")
        extract(config, path, progress=False, loaded=loaded, plan_only=True)
        if route == "store":
            seconds = forward_only(loaded, path, args.storage_dtype)
            rows.append(_row(kind, length, dtype, "forward", args.contexts * length, seconds, 0))
            for size in (int(x) for x in args.sweep.split(",") if x):
                # Throughput against batch size: it should grow until the device is saturated.
                seconds = forward_only(loaded, path, args.storage_dtype, size)
                sweep = _row(
                    kind, length, dtype, f"forward b={size}", args.contexts * length, seconds, 0
                )
                rows.append(sweep)
        result = extract(config, path, progress=False, loaded=loaded, writer_threads=args.writers)
        record = read_provenance(path) or {}
        itemsize = 2 if args.storage_dtype == "float16" else 4
        written = args.contexts * length * len(loaded.layers) * loaded.hidden_size * itemsize
        row = _row(kind, length, dtype, route, result.tokens_written, result.seconds, written)
        row.update(
            batch_size=record["batch_size"],
            chunk_contexts=record["chunk_contexts"],
            chunk_layers=record.get("chunk_layers"),
        )
        rows.append(row)
        shutil.rmtree(path, ignore_errors=True)
    del loaded
    return rows


def _row(
    kind: str, length: int, dtype: str, route: str, tokens: int, seconds: float, written: int
) -> dict[str, Any]:
    return {
        "model": kind,
        "length": length,
        "dtype": dtype,
        "route": route,
        "tokens_per_second": tokens / seconds,
        "seconds": seconds,
        "gb_per_second": written / seconds / 1e9,
    }


def writer_rates(root: Path, gigabytes: float, threads: list[int]) -> list[dict[str, Any]]:
    """The writer's GB/s (blocks of about 64 MB into a store) against a raw sequential write
    of the same bytes to the same disk."""
    import xarray as xr

    from posctx.extraction.run import Writers
    from posctx.store import BlockWriter, build_dataset, create_store, plan_blocks
    from posctx.store.provenance import provenance_record

    length, n_layers, n_dims, chunk = 512, 13, 768, 3  # 61 MB blocks, GPT-2-small-like
    per_block = chunk * length * n_layers * n_dims * 4
    n_blocks = max(2, int(gigabytes * 1e9 // per_block))
    contexts = n_blocks * chunk
    data = (
        np.random.default_rng(0)
        .standard_normal((chunk, length, n_layers, n_dims))
        .astype(np.float32)
    )
    rows = []
    raw = root / "raw.bin"
    start = time.perf_counter()
    with open(raw, "wb") as f:
        for _ in range(n_blocks):
            f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    raw_s = time.perf_counter() - start
    raw.unlink()
    rows.append(
        {
            "writer": "raw sequential write",
            "threads": 1,
            "gb_per_second": n_blocks * per_block / raw_s / 1e9,
        }
    )
    for count in threads:
        path = root / f"writer-{count}.zarr"
        record = provenance_record(
            config={}, model={}, corpus={}, special_tokens={}, chunk_contexts=chunk
        )
        ds, encoding = build_dataset(
            token_ids=np.zeros((contexts, length), np.int64),
            topic=["t"] * contexts,
            source=["s"] * contexts,
            offset=np.zeros(contexts, np.int64),
            layers=tuple(range(n_layers)),
            layer_names=tuple(f"l{i}" for i in range(n_layers)),
            hidden_size=n_dims,
            storage_dtype="float32",
            chunk_contexts=chunk,
            chunk_layers=0,
            provenance=record,
            attrs={},
        )
        create_store(str(path), ds, encoding, None)
        writes = Writers(BlockWriter(str(path)), None, lambda block: None, count)
        start = time.perf_counter()
        for block in plan_blocks(contexts, chunk):
            writes.write(block, data)
        writes.close()
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)  # the same durability as the raw write: a sync of the whole file system
        os.close(fd)
        os.sync()
        seconds = time.perf_counter() - start
        assert bool(xr.open_zarr(str(path)).block_complete.values.all())
        rows.append(
            {
                "writer": "posctx Writers",
                "threads": count,
                "gb_per_second": n_blocks * per_block / seconds / 1e9,
            }
        )
        shutil.rmtree(path)
    return rows


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--lengths", default="512,1024")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--storage-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--contexts", type=int, default=256)
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument(
        "--sweep", default="", help="Also time forward only at these batch sizes, e.g. 1,4,16,64."
    )
    parser.add_argument("--writer-gb", type=float, default=4.0)
    parser.add_argument("--writer-threads", default="1,2,4,8")
    parser.add_argument("--dir", default=None, help="Where stores go (default: a temp folder).")
    parser.add_argument("--json", default=None, help="Also save the results here.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="posctx-gpu-bench-", dir=args.dir))
    out: dict[str, Any] = {"device": device_name(args.device), "args": vars(args), "rows": []}
    print(f"device: {out['device']}", flush=True)
    try:
        for kind in args.models.split(","):
            for length in (int(x) for x in args.lengths.split(",")):
                for dtype in args.dtypes.split(","):
                    rows = one_case(kind, length, dtype, args, root)
                    out["rows"] += rows
                    base = rows[0]["tokens_per_second"]
                    for r in rows:
                        print(
                            f"{kind:11s} T={length:5d} {dtype:9s} {r['route']:10s} "
                            f"{r['tokens_per_second']:12,.0f} tok/s  {r['gb_per_second']:6.2f} GB/s"
                            f"  x{r['tokens_per_second'] / base:.3f}"
                            + (f"  batch {r['batch_size']}" if "batch_size" in r else ""),
                            flush=True,
                        )
        threads = [int(x) for x in args.writer_threads.split(",") if x]
        out["writer"] = writer_rates(root, args.writer_gb, threads) if threads else []
        for r in out["writer"]:
            print(f"{r['writer']:22s} threads {r['threads']}: {r['gb_per_second']:.2f} GB/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
