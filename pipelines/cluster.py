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

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipelines.common import add_config_arguments, config_from_args, markdown_table, table1
from pipelines.table1 import run_table1
from posctx.cluster import dask_client


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler")
    where.add_argument("--workers", type=int, help="local cluster size (default 2)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    workers = 0 if args.scheduler else (args.workers or 2)
    with dask_client(args.scheduler, workers) as client:
        print(f"dask cluster: {client.dashboard_link}")
        metrics = run_table1(config, client=client, progress=not args.quiet)
    print(markdown_table(table1(metrics)))
    print(f"wrote {Path(config.out) / 'table1.csv'}")
    return metrics


if __name__ == "__main__":
    main()
