"""Where Dask work runs: ``local`` / ``local:N`` (a LocalCluster started for the job) or the
scheduler of a running cluster (``tcp://host:port``). Batch scoring and training both connect
through :func:`connect`."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

_LOCAL = re.compile(r"^local(?::(?P<workers>\d+))?$")


class ClusterError(ValueError):
    """A cluster address that cannot be used."""


@dataclass(frozen=True)
class ClusterSpec:
    """``local`` / ``local:N`` (a LocalCluster of N worker processes, default: one per core) or
    ``tcp://host:port`` (the scheduler of an existing cluster)."""

    address: str | None
    workers: int | None

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        spec = text.strip()
        if match := _LOCAL.match(spec):
            workers = int(match["workers"]) if match["workers"] else None
            if workers == 0:
                raise ClusterError("cluster: local:N needs at least one worker (e.g. local:2)")
            return cls(None, workers)
        if re.match(r"^(tcp|tls|ucx|inproc)://[^:/]+(:\d+)?$", spec):
            return cls(spec, None)
        raise ClusterError(
            f"cluster: {text!r} is not a cluster; use local, local:N (N worker processes) or "
            "the scheduler's address, e.g. tcp://scheduler:8786"
        )


@contextlib.contextmanager
def connect(spec: ClusterSpec | str, *, memory_limit: str | None = None) -> Iterator[Client]:
    """A Dask client: on a new LocalCluster (one thread per worker process, closed on exit) or
    on the given scheduler (left running)."""
    from distributed import Client, LocalCluster

    if isinstance(spec, str):
        spec = ClusterSpec.parse(spec)
    if spec.address is not None:
        try:
            client = Client(spec.address, timeout="10s")
        except OSError as exc:
            raise ClusterError(
                f"cluster: no Dask scheduler answers at {spec.address} ({exc}); start one with "
                "`dask scheduler` and workers with `dask worker <address>`"
            ) from None
        with client:
            yield client
        return
    workers = spec.workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit or "auto",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(_quiet_task_errors())
        yield client


def _not_a_failed_task(record: logging.LogRecord) -> bool:
    """Drops a worker's log of a failed task and of the tasks cancelled when the job then
    closes the cluster."""
    text = str(record.msg)
    return not (text.startswith("Compute Failed") or "ended with CancelledError" in text)


def _quiet_task_errors() -> Any:
    """A worker plugin: a worker of a LocalCluster logs each failed task with its traceback to
    the terminal the job runs in (and the other workers' tasks that closing the cluster then
    cancels), while the client raises the same error and the CLI says it in one line (bad input
    names what is wrong). The workers' other messages stay. (Defined on
    use: importing distributed costs every command that never starts a cluster.)"""
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietTaskErrors(WorkerPlugin):
        name = "tiering-quiet-task-errors"

        def setup(self, worker: object) -> None:
            for name in ("distributed.worker", "distributed.worker.state_machine"):
                logging.getLogger(name).addFilter(_not_a_failed_task)

    return QuietTaskErrors()
