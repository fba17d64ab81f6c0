"""Your own topics: one folder (or file) per topic -> store -> decomposition -> report.

    python -m pipelines.topic_corpus path/to/topics --model minilm --out runs/topics

``path/to/topics`` holds one text file per topic (``physics.txt``, ``law.txt``...) or one
folder of text files per topic (``physics/``, ``law/``...); a ``.jsonl``/``.csv``/``.parquet``
table with a ``topic`` column works too. Writes ``OUT/hidden.zarr``,
``OUT/decomposition.zarr`` and the report ``OUT/report/index.html``, and prints how well ctx
separates the topics at each layer.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipelines.common import (
    PipelineConfig,
    add_config_arguments,
    config_from_args,
    markdown_table,
    run_one,
)

TOPIC_COLUMNS = [
    "layer",
    "ctx_within",
    "ctx_between",
    "ctx_within_pc",
    "ctx_between_pc",
    "ctx_ari",
    "ctx_silhouette",
]


def run_topic_corpus(
    config: PipelineConfig, corpus: str, model: str, *, progress: bool = True
) -> pd.DataFrame:
    """Extract, decompose and report one model on one topic corpus; returns the metrics."""
    out = Path(config.out)
    metrics = run_one(config, model, corpus, report=True, progress=progress, folder=out)
    metrics.to_csv(out / "metrics.csv", index=False)
    return metrics


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="folder (or file/table) with one topic per file or folder")
    parser.add_argument(
        "--model", default=None, help="minilm (default), a hub id or a local folder"
    )
    add_config_arguments(parser, several_models=False)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    model = args.model or config.models[0]
    metrics = run_topic_corpus(config, args.corpus, model, progress=not args.quiet)
    print(markdown_table(metrics[TOPIC_COLUMNS]))
    return metrics


if __name__ == "__main__":
    main()
