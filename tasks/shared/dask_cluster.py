"""Dask for closedloop: a cluster to use and Prefect's DaskTaskRunner on it.

The flows that spread work use it: training on ``xgboost.dask``, drift by column chunks, scoring by segments.

``cluster`` connects to ``CLOSEDLOOP_DASK_ADDRESS`` (a Dask scheduler: the Helm chart in infra/, or any other)
or, without one, starts a ``LocalCluster`` of worker processes on this machine and stops it afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)


@contextmanager
def cluster(address: str | None, workers: int = 2, threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` on ``address``, or on a LocalCluster of ``workers`` processes started here."""
    from distributed import Client, LocalCluster

    if address:
        with Client(address, timeout="30s") as client:  # type: ignore[no-untyped-call]
            yield client
        return
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,  # no web server nobody asked for
            host="127.0.0.1",
        ) as local,
        Client(local) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


def dask_runner(address: str | None, workers: int = 2) -> Any:
    """prefect-dask's task runner on ``address`` (a Dask scheduler), or on a LocalCluster of worker processes.

    A flow or subflow given this runner runs its mapped tasks on the cluster's workers, side by side: tuning
    trials, drift column chunks, scoring segments.
    """
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "host": "127.0.0.1",
        }
    )


def worker_count(client: Any) -> int:
    """How many workers the cluster has now."""
    return len(client.scheduler_info()["workers"])
