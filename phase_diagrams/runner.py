"""Resumable sweeps: every (cell, seed) a task keyed by its config hash, results in a SQLite store.

    from phase_diagrams import load_spec, run_sweep
    report = run_sweep("runs.sqlite", load_spec("label-noise"), backend="joblib", workers=2)

Tasks whose configs differ only in member-varying fields (alpha, label noise, lr, dropout, seed,
...; :data:`nets.config.ENSEMBLE_VARYING`) are trained together as one batched ensemble
(:func:`nets.train_ensemble`) of at most ``spec.ensemble_size`` networks — a *work unit*. The
same task function, :func:`run_unit`, runs on every backend:

``serial``
    in this process.
``joblib`` (local default)
    joblib's process pool (loky) with ``workers`` processes (default: the number of cores), each
    with one thread for torch/BLAS (no oversubscription).
``dask``
    a ``dask.distributed`` cluster: ``scheduler="tcp://host:8786"`` connects to a running
    scheduler (e.g. one started by dask-jobqueue on SLURM, see docs/scaling-out.md); without it a
    ``LocalCluster`` of ``workers`` single-threaded processes.

The runner (this process) claims a unit's tasks in the store just before it is dispatched,
writes each result in its own transaction as soon as the unit returns, and releases the
claims. Killing it at any moment loses at most the units in flight; running it again resumes.
Two runners on one store split the work (claims) and never write a task twice.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path

from phase_diagrams.spec import load_spec
from phase_diagrams.store import as_store

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "run_unit", "work_units", "run_sweep", "SweepReport"]

BACKENDS = ("serial", "joblib", "dask")
#: Environment for worker processes: one thread per worker for every BLAS/OpenMP runtime.
_ONE_THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                    "NUMBA_NUM_THREADS")}
_STATUS = {"completed": "done", "early_stopped": "done", "diverged": "diverged"}


def run_unit(configs: list[dict], data_dir: str | None = None, threads: int = 1) -> list[dict]:
    """Train the configs of one work unit; return one record per config, in order.

    The task function of every backend. ``configs`` are :meth:`nets.TrainConfig.to_dict`
    dicts; several are trained as one batched ensemble. Each record is
    :meth:`nets.History.to_record` plus ``status`` (``done`` or ``diverged``), ``train_status``
    and ``config``. An exception fails the whole unit: every record then has status
    ``failed`` and the error (last lines of the traceback) — a sweep never stops on one task.
    Torch runs on ``threads`` threads; the caller's setting is restored afterwards (the serial
    backend runs units in the caller's own process).
    """
    import torch

    from nets import TrainConfig, train, train_ensemble

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        cfgs = [TrainConfig(**c) for c in configs]
        hists = [train(cfgs[0], cache_dir=data_dir)] if len(cfgs) == 1 else train_ensemble(cfgs, cache_dir=data_dir)
        out = []
        for c, h in zip(configs, hists, strict=True):
            rec = h.to_record()
            rec.update(config=c, status=_STATUS[h.status], train_status=h.status)
            out.append(rec)
        return out
    except Exception as err:  # recorded in the store, not raised: the sweep goes on
        msg = f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exc().splitlines(True)[-6:])
        return [_failed(c, msg) for c in configs]
    finally:
        torch.set_num_threads(before)


def _failed(config: dict, message: str) -> dict:
    return dict(config=config, status="failed", train_status=None, error=message[-4000:])


def work_units(tasks: list[dict], ensemble_size: int) -> list[list[dict]]:
    """Group tasks (as :meth:`GridSpec.tasks`) into ensembles of at most ``ensemble_size``
    compatible configs, keeping the task order (one column's rows together)."""
    from nets.config import ensemble_key

    groups: dict[tuple, list[dict]] = {}
    for t in tasks:
        groups.setdefault(ensemble_key(t["config"]), []).append(t)
    units = []
    for members in groups.values():
        for a in range(0, len(members), ensemble_size):
            units.append(members[a : a + ensemble_size])
    return units


# ------------------------------------------------------------------------------------------
# backends: submit(fn, *args) -> future; wait_any(futures) -> done futures
# ------------------------------------------------------------------------------------------
class _Immediate:
    def __init__(self, fn, args):
        try:
            self._value, self._error = fn(*args), None
        except Exception as err:  # pragma: no cover - run_unit catches its own errors
            self._value, self._error = None, err

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


class _SerialBackend:
    slots = 1

    def submit(self, fn, *args):
        return _Immediate(fn, args)

    def wait_any(self, futures):
        return list(futures)

    def close(self):
        pass


class _JoblibBackend:
    def __init__(self, workers: int):
        from joblib.externals.loky import get_reusable_executor

        self.slots = workers
        self.executor = get_reusable_executor(max_workers=workers, env=dict(_ONE_THREAD_ENV), timeout=60)

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args)

    def wait_any(self, futures):
        done, _ = futures_wait(list(futures), return_when=FIRST_COMPLETED)
        return list(done)

    def close(self):
        pass  # the reusable pool is kept for the next sweep in this process


class _DaskBackend:
    def __init__(self, workers: int, scheduler: str | None):
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:  # pragma: no cover - a pinned dependency
            raise RuntimeError("the dask backend needs dask[distributed] (pip install 'dask[distributed]')") from err
        self._cluster = None
        if scheduler:
            self.client = Client(scheduler)
        else:
            self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, env=dict(_ONE_THREAD_ENV))
            self.client = Client(self._cluster)
        n = len(self.client.scheduler_info().get("workers", {}))
        self.slots = max(1, n if scheduler else workers)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def wait_any(self, futures):
        from distributed import wait

        done, _ = wait(list(futures), return_when="FIRST_COMPLETED")
        return list(done)

    def close(self):
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _backend(name: str, workers: int, scheduler: str | None):
    if name == "serial":
        return _SerialBackend()
    if name == "joblib":
        return _JoblibBackend(workers)
    if name == "dask":
        return _DaskBackend(workers, scheduler)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


# ------------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    """What one :func:`run_sweep` call did."""

    sweep: str
    store: str
    total: int
    already_done: int = 0
    ran: int = 0
    done: int = 0
    diverged: int = 0
    failed: int = 0
    elsewhere: int = 0  # tasks claimed by another live runner, left to it
    wall_s: float = 0.0
    failures: list = field(default_factory=list)

    def line(self) -> str:
        return (f"sweep {self.sweep!r}: {self.total} tasks, {self.already_done} already in the store, ran {self.ran} "
                f"({self.done} done, {self.diverged} diverged, {self.failed} failed), {self.elsewhere} left to "
                f"another runner; {self.wall_s:.1f} s")


def run_sweep(store, spec, *, backend: str = "joblib", workers: int | None = None, scheduler: str | None = None,
              data_dir=None, threads_per_worker: int = 1, progress: bool = True, retry_failed: bool = True,
              max_units: int | None = None) -> SweepReport:
    """Run (or resume) every unfinished task of a sweep and store the results.

    Parameters
    ----------
    store : :class:`~phase_diagrams.store.Store` or path of the SQLite file
    spec : GridSpec, preset name or TOML path (:func:`~phase_diagrams.spec.load_spec`)
    backend : ``serial`` | ``joblib`` (default) | ``dask``
    workers : processes (default: ``os.cpu_count()``; for dask with ``scheduler``, the cluster's)
    scheduler : dask scheduler address (``dask`` backend only)
    data_dir : MNIST cache for the workers (default ``$SPRINGBLOCK_DATA`` or ``./data``, resolved
        here so that workers started elsewhere find it)
    threads_per_worker : torch threads in each worker (default 1)
    progress : show a tqdm bar (tasks done / total, ETA)
    retry_failed : run tasks whose stored status is ``failed`` again (default True)
    max_units : stop after dispatching this many work units (for tests and dry runs)

    Returns
    -------
    SweepReport
    """
    from tqdm.auto import tqdm

    from nets.data import default_cache_dir

    store = as_store(store)
    spec = load_spec(spec)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scheduler and backend != "dask":
        raise ValueError(f"scheduler={scheduler!r} needs backend='dask', got {backend!r}")
    workers = int(workers or os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    data_dir = str(Path(data_dir if data_dir is not None else default_cache_dir()).resolve())
    t0 = time.perf_counter()
    store.register_sweep(spec)
    tasks = spec.tasks()
    finished = store.finished_keys(t["key"] for t in tasks)
    if not retry_failed:
        finished |= store.finished_keys((t["key"] for t in tasks), statuses=("failed",))
    pending = [t for t in tasks if t["key"] not in finished]
    report = SweepReport(spec.name, str(store.path), len(tasks), already_done=len(tasks) - len(pending))
    queue = deque(work_units(pending, spec.ensemble_size))
    if max_units is not None:
        queue = deque(list(queue)[: int(max_units)])
    log.info("%s: %d tasks, %d to run in %d work units", spec.name, len(tasks), len(pending), len(queue))
    if not queue:
        report.wall_s = time.perf_counter() - t0
        return report
    bar = tqdm(total=len(tasks), initial=report.already_done, unit="task", desc=spec.name, disable=not progress,
               smoothing=0.1, dynamic_ncols=True)
    pool = _backend(backend, workers, scheduler)
    in_flight: dict = {}
    last_refresh = time.monotonic()
    try:
        while queue or in_flight:
            while queue and len(in_flight) < pool.slots:
                unit = queue.popleft()
                claimed = set(store.claim(t["key"] for t in unit))
                skipped = [t for t in unit if t["key"] not in claimed]
                if skipped:
                    finished_now = store.finished_keys(t["key"] for t in skipped)
                    report.elsewhere += len(skipped) - len(finished_now)
                    bar.update(len(skipped))
                unit = [t for t in unit if t["key"] in claimed]
                if unit:
                    fut = pool.submit(run_unit, [t["config"].to_dict() for t in unit], data_dir, threads_per_worker)
                    in_flight[fut] = unit
            if not in_flight:
                break
            for fut in pool.wait_any(in_flight):
                unit = in_flight.pop(fut)
                try:
                    records = fut.result()
                except Exception as err:  # a worker died (e.g. out of memory): record, go on
                    records = [_failed(t["config"].to_dict(), f"{type(err).__name__}: {err}") for t in unit]
                for t, rec in zip(unit, records, strict=True):
                    store.write_result(t["key"], rec)
                    report.ran += 1
                    setattr(report, rec["status"], getattr(report, rec["status"]) + 1)
                    if rec["status"] == "failed":
                        report.failures.append((t["key"], rec.get("error", "")))
                        log.warning("task %s failed: %s", t["key"], rec.get("error", "").splitlines()[0])
                bar.update(len(unit))
            if time.monotonic() - last_refresh > 60:
                store.refresh_claims()
                last_refresh = time.monotonic()
    finally:
        if in_flight:  # interrupted: give the in-flight tasks back at once
            store.release(t["key"] for unit in in_flight.values() for t in unit)
        pool.close()
        bar.close()
    report.wall_s = time.perf_counter() - t0
    log.debug(report.line())
    return report
