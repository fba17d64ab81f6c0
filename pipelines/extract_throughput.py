"""Extraction throughput with and without writing the store, measured in one run.

    python pipelines/extract_throughput.py --contexts 512 --length 128

(a) forward only: the model over every forward group of the plan, results discarded;
(b) ``posctx.extract``: the same blocks, forward plus the background writer into a new store.
The ratio b/a shows how much of the write is hidden behind compute. Both use the same loaded
model, plan and batch size; (a) runs first so that (b) does not profit from a warmer cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import click

from posctx.cli import run_cli
from posctx.config import (
    MODEL_DTYPES,
    STORAGE_DTYPES,
    CorpusConfig,
    ExtractConfig,
    ModelConfig,
    StoreConfig,
)
from posctx.extraction import compute_block, extract, prepare_store
from posctx.extraction.groups import blocks_per_group, plan_groups
from posctx.model import load_model
from posctx.store import BlockWriter, plan_blocks, read_provenance, size_on_disk


# Run as a script (``python pipelines/extract_throughput.py``), so it imports posctx only, not
# the options of pipelines.common; the flags are those of the other pipelines.
@click.command(name="extract_throughput", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="minilm", show_default=True)
@click.option("--contexts", default=512, show_default=True)
@click.option("--length", default=128, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option(
    "--storage-dtype", type=click.Choice(STORAGE_DTYPES), default="float32", show_default=True
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(MODEL_DTYPES), default="float32", show_default=True)
@click.option("--out", default=None, help="Store path (default: a temporary folder).")
def command(
    model: str,
    contexts: int,
    length: int,
    batch_size: int,
    storage_dtype: str,
    device: str,
    dtype: str,
    out: str | None,
) -> dict[str, Any]:
    """Extraction throughput with and without writing the store, measured in one run."""
    config = ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=model, batch_size=batch_size, device=device, dtype=dtype),
        store=StoreConfig(contexts=contexts, length=length, storage_dtype=storage_dtype),
    )
    tmp = tempfile.mkdtemp(prefix="posctx-throughput-")
    path = out or os.path.join(tmp, "hidden.zarr")
    try:
        loaded = load_model(config.model)
        # Plan once (this writes token ids and labels), then time forward-only over the plan.
        prepare_store(config, path, loaded, progress=False)
        chunk = int((read_provenance(path) or {})["chunk_contexts"])
        blocks = plan_blocks(contexts, chunk)
        # The forward groups extraction runs (batches independent of the chunk size).
        groups = plan_groups(blocks, blocks, blocks_per_group(chunk, batch_size))
        reader = BlockWriter(path)
        compute_block(loaded, reader.token_ids(blocks[0])[:2], storage_dtype)  # warm-up
        start = time.perf_counter()
        for group in groups:
            compute_block(loaded, reader.token_ids(group.span), storage_dtype)
        forward_s = time.perf_counter() - start
        result = extract(config, path, progress=False, loaded=loaded)
        tokens = contexts * length
        report = {
            "model": model,
            "device": device,
            "contexts": contexts,
            "length": length,
            "batch_size": batch_size,
            "chunk_contexts": chunk,
            "forward_only_tokens_per_s": tokens / forward_s,
            "extract_tokens_per_s": result.tokens_per_second,
            "extract_over_forward": result.tokens_per_second / (tokens / forward_s),
            "store_bytes": size_on_disk(path),
        }
        click.echo(json.dumps(report, indent=2))
    finally:
        if out is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command on ``argv`` (default: ``sys.argv[1:]``) and return the measurements.

    A wrong input ends as it does for ``posctx``: one line ``error: ...`` and exit status 2.
    """
    report: dict[str, Any] = run_cli(command, argv)
    return report


if __name__ == "__main__":
    main()
