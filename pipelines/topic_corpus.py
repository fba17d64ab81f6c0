"""Your own topics: one folder (or file) per topic -> store -> decomposition -> report.

    python -m pipelines.topic_corpus path/to/topics --model minilm --out runs/topics

``path/to/topics`` holds one text file per topic (``physics.txt``, ``law.txt``...) or one
folder of text files per topic (``physics/``, ``law/``...); a ``.jsonl``/``.csv``/``.parquet``
table with a ``topic`` column works too. Writes ``OUT/hidden.zarr``,
``OUT/decomposition.zarr`` and the report ``OUT/report/index.html``, and prints how well ctx
separates the topics at each layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd

from pipelines.common import (
    CONTEXT_SETTINGS,
    PipelineConfig,
    config_from_options,
    markdown_table,
    pipeline_options,
    run_one,
)
from posctx.cli import run_cli

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


@click.command(name="topic_corpus", context_settings=CONTEXT_SETTINGS)
@click.argument("corpus")
@click.option(
    "--model",
    default=None,
    help="minilm, a HF id or a local model folder. [default: the --config file's first model, "
    "else minilm]",
)
@pipeline_options(several_models=False)
def command(corpus: str, model: str | None, quiet: bool, **settings: Any) -> pd.DataFrame:
    """One model on CORPUS, a folder (or file, or table) with one topic per file or folder:
    store, decomposition, report, and how well ctx separates the topics at each layer."""
    config = config_from_options(**settings)
    metrics = run_topic_corpus(config, corpus, model or config.models[0], progress=not quiet)
    click.echo(markdown_table(metrics[TOPIC_COLUMNS]))
    return metrics


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the command on ``argv`` (default: ``sys.argv[1:]``) and return the measurements.

    A wrong input ends as it does for ``posctx``: one line ``error: ...`` and exit status 2.
    """
    metrics: pd.DataFrame = run_cli(command, argv)
    return metrics


if __name__ == "__main__":
    main()
