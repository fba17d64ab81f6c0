"""The paper's Table 1 for a list of models and corpora: ranks, stable ranks and relative norm
of pos, and within/between-topic similarity of ctx, at every layer, with figures.

    python -m pipelines.table1 --models minilm --corpora stdlib --out runs/table1
    python -m pipelines.table1 --config pipelines/configs/table1.toml

Writes ``OUT/table1.csv`` and ``OUT/table1.md`` (the Table 1 columns), ``OUT/metrics.csv``
(every measurement), ``OUT/figures/*.png`` (one per column, a line per model and corpus
against relative depth) and each run's stores under ``OUT/MODEL/CORPUS/``. Extraction
resumes, so an interrupted pipeline picks up where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd

from pipelines.common import (
    CONTEXT_SETTINGS,
    TABLE1_COLUMNS,
    PipelineConfig,
    check_inputs,
    config_from_options,
    markdown_table,
    pipeline_options,
    plot_layerwise,
    run_one,
    table1,
)
from posctx.cli import run_cli


def run_table1(
    config: PipelineConfig, *, client: Any = None, progress: bool = True
) -> pd.DataFrame:
    """Every model on every corpus; writes the table files and figures, returns all metrics.

    Every model and corpus is checked before the first one runs (:func:`check_inputs`).
    """
    check_inputs(config)
    frames = [
        run_one(config, model, corpus, client=client, progress=progress)
        for model in config.models
        for corpus in config.corpora
    ]
    metrics = pd.concat(frames, ignore_index=True)
    out = Path(config.out)
    metrics.to_csv(out / "metrics.csv", index=False)
    table = table1(metrics)
    table.to_csv(out / "table1.csv", index=False)
    (out / "table1.md").write_text(markdown_table(table) + "\n", encoding="utf-8")
    plot_layerwise(metrics, list(TABLE1_COLUMNS), out / "figures")
    return metrics


@click.command(name="table1", context_settings=CONTEXT_SETTINGS)
@pipeline_options()
def command(quiet: bool, **settings: Any) -> pd.DataFrame:
    """The paper's Table 1 for every model on every corpus, with figures."""
    config = config_from_options(**settings)
    metrics = run_table1(config, progress=not quiet)
    click.echo(markdown_table(table1(metrics)))
    click.echo(f"wrote {Path(config.out) / 'table1.csv'} and {Path(config.out) / 'figures'}")
    return metrics


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the command on ``argv`` (default: ``sys.argv[1:]``) and return every measurement.

    A wrong input ends as it does for ``posctx``: one line ``error: ...`` and exit status 2.
    """
    metrics: pd.DataFrame = run_cli(command, argv)
    return metrics


if __name__ == "__main__":
    main()
