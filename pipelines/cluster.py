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
import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from pipelines.common import add_config_arguments, config_from_args, markdown_table, table1
from pipelines.table1 import run_table1


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A client that is also dask's default scheduler while the block runs."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    # One thread per worker process: torch already uses the cores it is given.
    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        yield client


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler")
    where.add_argument("--workers", type=int, default=2, help="local cluster size (default 2)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    with dask_client(args.scheduler, args.workers) as client:
        print(f"dask cluster: {client.dashboard_link}")
        metrics = run_table1(config, client=client, progress=not args.quiet)
    print(markdown_table(table1(metrics)))
    print(f"wrote {Path(config.out) / 'table1.csv'}")
    return metrics


if __name__ == "__main__":
    main()
