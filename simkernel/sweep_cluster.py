"""Where a sweep's jobs run: a Dask client on a LocalCluster of one-thread worker processes, or
on an existing scheduler, and the loop that submits the jobs and collects their markers.

Ctrl-C in a terminal sends SIGINT to the whole process group, the worker processes included.
The driver alone handles it (it cancels the jobs, closes the cluster and keeps what finished):
a worker does not stop on SIGINT, it only silences its logging (:func:`quiet`, installed on every
worker by a worker plugin, restarted ones too), and so does the driver, so that the cluster's
shutdown under running jobs prints no traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from .sweep_job import FAILED, THREAD_ENV, one_line, run_job

CONNECT_TIMEOUT_S = 10
#: Loggers quietened to errors while a sweep runs (a LocalCluster's start and stop are chatty).
QUIET_LOGGERS = ("distributed", "distributed.worker", "distributed.nanny", "distributed.scheduler",
                 "distributed.core", "distributed.comm", "distributed.http.proxy", "bokeh", "tornado")
#: Dask settings of the workers of a LocalCluster.  The statistical profiler samples every
#: thread's stack many times a second: without it 2 workers went from 1.68x to 1.86-1.95x one
#: worker (benchmarks/bench_sweep.py).  The event-loop tick monitor (every 20 ms) and the system
#: monitor (every 0.5 s, psutil) wake every worker, nanny and the scheduler: with 2 cores and 2
#: workers each wake-up takes a core from a job, so they run 10x less often.  The memory monitors
#: (0.1 s) guard against memory-hungry tasks: once a second is enough for jobs of seconds.
CLUSTER_CONFIG = {"distributed.worker.profile.enabled": False,
                  "distributed.admin.tick.interval": "200ms",
                  "distributed.admin.system-monitor.interval": "5s",
                  "distributed.worker.memory.monitor-interval": "1s"}


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def quiet(*_signal) -> None:
    """Silence Dask's logging in this process: after Ctrl-C the cluster shuts down under running
    jobs, and its workers' lost heartbeats and closed connections are logged as errors with
    tracebacks that say nothing the one-line message does not.  A worker's SIGINT handler."""
    import logging

    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("distributed", "tornado", "asyncio")]
    for name in ("distributed", *names):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _quiet_on_sigint() -> None:
    # signal handlers can be set from the main thread only; elsewhere there is nothing to do
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, quiet)


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietInterrupt(WorkerPlugin):
        """A worker process does not stop on SIGINT (Ctrl-C is the driver's to handle: it cancels
        the jobs and closes the cluster); it only silences its logging (:func:`quiet`)."""
        name = "simkernel-quiet-sigint"

        def setup(self, worker):
            _quiet_on_sigint()

    return QuietInterrupt


@contextlib.contextmanager
def _local_cluster(workers: int):
    """A LocalCluster of ``workers`` one-thread processes whose BLAS/Numba/torch are capped to one
    thread (``CLUSTER_CONFIG`` applies to its workers only: they take the config as it is when
    they start, so the caller's own is left as it was)."""
    import logging

    import dask
    from distributed import LocalCluster

    env = {name: "1" for name in THREAD_ENV}
    try:
        with dask.config.set(CLUSTER_CONFIG):
            # the scheduler's HTTP server (the dashboard, with bokeh) on a free port: never clashes
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", env=env, silence_logs=logging.ERROR)
    except (RuntimeError, OSError, TimeoutError) as e:
        # e.g. a script run from stdin, which the spawned worker processes cannot re-import
        raise ValueError(f"could not start a local Dask cluster of {workers} workers ({one_line(e)[:160]}); "
                         f"run from a file or a notebook, with the sweep under `if __name__ == \"__main__\":`") from None
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.close(timeout=5)


@contextlib.contextmanager
def client(workers: int, scheduler: str | None):
    """A distributed Client: on ``scheduler`` (an address), else on a LocalCluster of ``workers``
    (:func:`_local_cluster`).  Every worker handles SIGINT by :func:`quiet`.  An unreachable scheduler: a one-line
    ValueError."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    from distributed import Client

    if scheduler is not None:
        try:
            c = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as e:
            raise ValueError(f"scheduler {scheduler!r} is unreachable ({one_line(e)[:120]}); start one with "
                             f"`dask scheduler` and `dask worker ADDRESS`, or run on a local cluster without it") from None
        try:
            with contextlib.suppress(Exception):     # another's scheduler may refuse plugins: not ours to force
                c.register_plugin(_plugin_class()())
            yield c
        finally:
            c.close()
        return
    with _local_cluster(workers) as cluster:
        c = Client(cluster)
        try:
            # registered plugins also run on the workers a nanny restarts later
            c.register_plugin(_plugin_class()())
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.close(timeout=5)


def counts(states) -> tuple[int, int]:
    """(done, failed) among job markers (None: not finished)."""
    states = [s for s in states if s]
    return sum(s["status"] == "done" for s in states), sum(s["status"] == "failed" for s in states)


def execute(c, out: Path, jobs, todo, states: dict, info: dict, tick) -> None:
    """Submit ``todo`` and record each job's marker in ``states`` as it finishes (a job whose
    worker died under it is recorded as failed); ``tick(done, failed, running, total)``."""
    from distributed import as_completed

    from .store import write_json

    n_threads = sum(c.nthreads().values()) or info["workers"]
    for j in todo:
        states[j.key] = None
    cwd = os.getcwd()
    futures = {c.submit(run_job, dict(j.spec(), cwd=cwd), str(out / "jobs" / j.key),
                        key=f"simkernel-job-{j.key}", pure=False): j for j in todo}
    pending = len(futures)
    try:
        for fut in as_completed(futures):
            j = futures[fut]
            try:
                states[j.key] = fut.result()
            except Exception as e:       # the worker died under it: recorded as failed
                states[j.key] = {"status": "failed", "key": j.key, "error": one_line(e), "wall_s": None,
                                 "worker": None}
                write_json(out / "jobs" / j.key / FAILED, states[j.key])
            info["ran"].add(j.key)
            pending -= 1
            tick(*counts(states.values()), min(pending, n_threads), len(jobs))
    except KeyboardInterrupt:
        quiet()
        for fut in futures:
            fut.cancel()
        raise


def dashboard(c, scheduler) -> str | None:
    """The Dask dashboard's address, when there is one (a LocalCluster has one only with bokeh)."""
    import importlib.util

    if scheduler is None and importlib.util.find_spec("bokeh") is None:
        return None
    with contextlib.suppress(Exception):
        return c.dashboard_link or None
    return None
