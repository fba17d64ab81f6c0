"""Extraction throughput with and without writing the store, measured in one run.

    python pipelines/extract_throughput.py --contexts 512 --length 128

(a) forward only: the model over every block of the plan, results discarded;
(b) ``posctx.extract``: the same blocks, forward plus the background writer into a new store.
The ratio b/a shows how much of the write is hidden behind compute. Both use the same loaded
model, plan and batch size; (a) runs first so that (b) does not profit from a warmer cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.extraction import compute_block, extract, prepare_store
from posctx.model import load_model
from posctx.store import BlockWriter, plan_blocks, read_provenance, size_on_disk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--contexts", type=int, default=512)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--storage-dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=None, help="store path (default: a temporary folder)")
    args = parser.parse_args()

    config = ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(
            name=args.model, batch_size=args.batch_size, device=args.device, dtype=args.dtype
        ),
        store=StoreConfig(
            contexts=args.contexts, length=args.length, storage_dtype=args.storage_dtype
        ),
    )
    tmp = tempfile.mkdtemp(prefix="posctx-throughput-")
    path = args.out or os.path.join(tmp, "hidden.zarr")
    try:
        loaded = load_model(config.model)
        # Plan once (this writes token ids and labels), then time forward-only over the plan.
        prepare_store(config, path, loaded, progress=False)
        chunk = int((read_provenance(path) or {})["chunk_contexts"])
        blocks = plan_blocks(args.contexts, chunk)
        reader = BlockWriter(path)
        compute_block(loaded, reader.token_ids(blocks[0])[:2], args.storage_dtype)  # warm-up
        start = time.perf_counter()
        for block in blocks:
            compute_block(loaded, reader.token_ids(block), args.storage_dtype)
        forward_s = time.perf_counter() - start
        result = extract(config, path, progress=False, loaded=loaded)
        tokens = args.contexts * args.length
        report = {
            "model": args.model,
            "device": args.device,
            "contexts": args.contexts,
            "length": args.length,
            "batch_size": args.batch_size,
            "chunk_contexts": chunk,
            "forward_only_tokens_per_s": tokens / forward_s,
            "extract_tokens_per_s": result.tokens_per_second,
            "extract_over_forward": result.tokens_per_second / (tokens / forward_s),
            "store_bytes": size_on_disk(path),
        }
        print(json.dumps(report, indent=2))
    finally:
        if args.out is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
