"""posctx.cluster: a dask.distributed client from a scheduler address or a local cluster."""

from __future__ import annotations

import os

import pytest

from posctx.cluster import dask_client
from posctx.errors import PosctxError


def test_neither_gives_no_client_and_both_are_refused() -> None:
    with dask_client() as client:
        assert client is None
    with pytest.raises(
        PosctxError, match="give a scheduler address or a number of workers, not both"
    ):
        with dask_client("tcp://127.0.0.1:8786", workers=2):
            pass


def test_a_scheduler_address_connects_to_that_scheduler() -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        with dask_client(cluster.scheduler_address) as client:
            assert client.scheduler.address == cluster.scheduler_address
            assert list(client.nthreads().values()) == [2]
            assert client.submit(sum, [1, 2, 3]).result() == 6
        assert client.status == "closed"
        assert cluster.status.name == "running"  # the scheduler is not ours to stop


def test_workers_start_a_local_cluster_of_single_threaded_processes() -> None:
    with dask_client(workers=2) as client:
        assert list(client.nthreads().values()) == [1, 1]
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
    assert client.status == "closed"
