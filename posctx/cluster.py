"""A ``dask.distributed`` client for posctx jobs: an existing scheduler or a local cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from posctx.errors import PosctxError


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 0) -> Iterator[Any]:
    """A ``distributed.Client`` for the body of the ``with``; ``None`` when neither is given.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``): Slurm via dask-jobqueue,
        Kubernetes, dask-cuda... (see ``docs/scaling.md``).
    workers
        Start a local cluster of this many worker processes, one thread each (torch already
        uses the cores it is given).

    Examples
    --------
    >>> with dask_client() as client:
    ...     print(client)
    None
    """
    if scheduler and workers:
        raise PosctxError("give a scheduler address or a number of workers, not both")
    if not scheduler and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


__all__ = ["dask_client"]
