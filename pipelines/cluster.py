"""Table 1 on a Dask cluster: extraction blocks run as tasks on the workers (one model per
worker process) and the decomposition's one pass runs on the same cluster.

    python -m pipelines.cluster --workers 2 --models minilm --corpora stdlib --out runs/cluster
    python -m pipelines.cluster --scheduler tcp://scheduler:8786 --config pipelines/configs/table1.toml

``--workers N`` starts a local cluster of N single-threaded worker processes; ``--scheduler``
uses yours (Slurm via dask-jobqueue, Kubernetes, dask-cuda: see docs/scaling.md). Every path
must be reachable from every worker: a shared file system or object storage (``--out
s3://...`` needs the store to be created first and workers with credentials). Output as for
``pipelines.table1``; the results equal a single-process run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd

from pipelines.common import (
    CONTEXT_SETTINGS,
    check_inputs,
    config_from_options,
    markdown_table,
    pipeline_options,
    table1,
)
from pipelines.table1 import run_table1
from posctx.cli import run_cli
from posctx.cluster import dask_client

#: Local cluster size when neither --scheduler nor --workers is given.
DEFAULT_WORKERS = 2


@click.command(name="cluster", context_settings=CONTEXT_SETTINGS)
@pipeline_options()
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Address of a running dask scheduler (tcp://host:8786).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help=f"Start a local cluster of N worker processes. [default: {DEFAULT_WORKERS}]",
)
def command(
    quiet: bool, scheduler: str | None, workers: int | None, **settings: Any
) -> pd.DataFrame:
    """Table 1 on a Dask cluster: extraction blocks and the decomposition run on its workers."""
    if scheduler and workers:
        raise click.UsageError(
            "give --scheduler or --workers, not both: --scheduler uses a running cluster, "
            "--workers starts a local one"
        )
    config = config_from_options(**settings)
    check_inputs(config)  # before a cluster starts
    with dask_client(scheduler, 0 if scheduler else workers or DEFAULT_WORKERS) as client:
        click.echo(f"dask cluster: {client.dashboard_link}")
        metrics = run_table1(config, client=client, progress=not quiet)
    click.echo(markdown_table(table1(metrics)))
    click.echo(f"wrote {Path(config.out) / 'table1.csv'}")
    return metrics


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the command on ``argv`` (default: ``sys.argv[1:]``) and return every measurement.

    A wrong input ends as it does for ``posctx``: one line ``error: ...`` and exit status 2.
    """
    metrics: pd.DataFrame = run_cli(command, argv)
    return metrics


if __name__ == "__main__":
    main()
