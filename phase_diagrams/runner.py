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

Interrupts and failures
-----------------------
SIGINT (Ctrl-C) or SIGTERM stops a sweep within seconds: the workers are killed and reaped (loky
executor shut down with ``kill_workers``; dask futures cancelled, a ``LocalCluster`` closed), the
claims of the units in flight released, and :class:`SweepInterrupted` (a ``KeyboardInterrupt``)
raised with the report; rerunning the same call resumes. While :func:`run_sweep` runs in the main
thread it maps SIGTERM to that exception (only when SIGTERM has its default action; the previous
handler is restored on return). A worker process that dies in a unit (killed, out of memory,
``os._exit``) costs that unit a retry on a fresh worker, at most :data:`MAX_RETRIES` times, counted
in :attr:`SweepReport.retried`; after that its tasks are stored as ``failed`` with the reason. A
store that cannot be written (disk full, locked by another process longer than its timeout) stops
the sweep with one :class:`StoreError` naming the store; stored rows stay, claims are released
where the store allows it, and rerunning resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import threading
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path

from phase_diagrams.spec import load_spec
from phase_diagrams.store import as_store

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "MAX_RETRIES", "run_unit", "work_units", "run_sweep", "SweepReport", "SweepInterrupted",
           "StoreError"]

BACKENDS = ("serial", "joblib", "dask")
#: Environment for worker processes: one thread per worker for every BLAS/OpenMP runtime.
_ONE_THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                    "NUMBA_NUM_THREADS")}
_STATUS = {"completed": "done", "early_stopped": "done", "diverged": "diverged"}
#: Times a work unit runs again after its worker process died (then its tasks are stored as failed).
MAX_RETRIES = 2
#: Seconds to reach a dask scheduler before giving up.
CONNECT_TIMEOUT_S = 5.0


class StoreError(RuntimeError):
    """The store could not be read or written (disk full, locked longer than its timeout, ...);
    the message names the store and what to do. Stored rows are intact; rerunning resumes."""


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by SIGINT or SIGTERM after cleaning up (workers reaped, claims released).

    ``report`` is the :class:`SweepReport` so far (``report.stored`` of ``report.total`` tasks are
    in the store); ``signum`` the signal. Running the same sweep again resumes."""

    def __init__(self, report: SweepReport, signum: int):
        super().__init__(f"sweep {report.sweep!r} interrupted: {report.stored} of {report.total} tasks stored in "
                         f"{report.store}")
        self.report, self.signum = report, int(signum)


class _SigTerm(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while :func:`run_sweep` runs."""

    signum = int(signal.SIGTERM)


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

    def abort(self, futures):
        pass  # the unit ran in this process and was interrupted with it

    def reset(self):
        pass


class _JoblibBackend:
    def __init__(self, workers: int):
        self.slots = workers
        self.reset()

    def reset(self):
        """A working executor: the reusable one, or a new one if a dead worker broke it."""
        from joblib.externals.loky import get_reusable_executor

        self.executor = get_reusable_executor(max_workers=self.slots, env=dict(_ONE_THREAD_ENV), timeout=60)

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args)

    def wait_any(self, futures):
        done, _ = futures_wait(list(futures), return_when=FIRST_COMPLETED)
        return list(done)

    def close(self):
        pass  # the reusable pool is kept for the next sweep in this process

    def abort(self, futures):
        """Kill the workers (they may be deep in a unit) and wait until they are reaped."""
        for f in futures:
            f.cancel()
        self.executor.shutdown(wait=True, kill_workers=True)


class _DaskBackend:
    def __init__(self, workers: int, scheduler: str | None):
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:  # pragma: no cover - a pinned dependency
            raise RuntimeError("the dask backend needs dask[distributed] (pip install 'dask[distributed]')") from err
        self._cluster = None
        if scheduler:
            self.client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
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
        self.client.close(timeout=10)
        if self._cluster is not None:
            self._cluster.close(timeout=10)

    def abort(self, futures):
        """Cancel the units in flight (an external cluster's workers stay up for other clients); a
        LocalCluster is closed, which terminates its worker processes."""
        self.client.cancel(list(futures), force=True)
        self.close()

    def reset(self):
        pass  # the scheduler replaces lost workers (LocalCluster: the nanny restarts them)


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
    retried: int = 0  # task runs repeated because their worker process died
    stored: int = 0  # tasks of the sweep with a final result (done or diverged) in the store at the end
    wall_s: float = 0.0
    failures: list = field(default_factory=list)

    def line(self) -> str:
        return (f"sweep {self.sweep!r}: {self.total} tasks, {self.already_done} already in the store, ran {self.ran} "
                f"({self.done} done, {self.diverged} diverged, {self.failed} failed), {self.elsewhere} left to "
                f"another runner; " + (f"{self.retried} retried after a worker died; " if self.retried else "")
                + f"{self.wall_s:.1f} s")


def run_sweep(store, spec, *, backend: str = "joblib", workers: int | None = None, scheduler: str | None = None,
              data_dir=None, threads_per_worker: int = 1, progress: bool = True, retry_failed: bool = True,
              max_units: int | None = None, task_fn=run_unit) -> SweepReport:
    """Run (or resume) every unfinished task of a sweep and store the results.

    Parameters
    ----------
    store : :class:`~phase_diagrams.store.Store` or path of the SQLite file
    spec : GridSpec, preset name or TOML path (:func:`~phase_diagrams.spec.load_spec`)
    backend : ``serial`` | ``joblib`` (default) | ``dask``
    workers : processes (default: ``os.cpu_count()``; for dask with ``scheduler``, the cluster's)
    scheduler : dask scheduler address (``dask`` backend only); checked reachable within
        :data:`CONNECT_TIMEOUT_S` before anything is registered
    data_dir : MNIST cache for the workers (default ``$SPRINGBLOCK_DATA`` or ``./data``, resolved
        here so that workers started elsewhere find it)
    threads_per_worker : torch threads in each worker (default 1)
    progress : show a tqdm bar (tasks done / total, ETA)
    retry_failed : run tasks whose stored status is ``failed`` again (default True)
    max_units : stop after dispatching this many work units (for tests and dry runs)
    task_fn : the task function, :func:`run_unit` (default) or a picklable callable with its
        signature and records (for tests and instrumentation, e.g. a wrapper that kills its worker)

    Returns
    -------
    SweepReport

    Raises
    ------
    SweepInterrupted
        SIGINT or SIGTERM, after the workers are reaped and the in-flight claims released.
    StoreError
        The store could not be written or stayed locked longer than its timeout.
    """
    from nets.data import default_cache_dir

    if not isinstance(store, (str, os.PathLike)):
        store = as_store(store)  # a Store, or a TypeError for anything else (a path is opened below)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scheduler and backend != "dask":
        raise ValueError(f"scheduler={scheduler!r} needs backend='dask', got {backend!r}")
    workers = int(workers or os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    spec = load_spec(spec)
    if scheduler:
        _check_reachable(scheduler)
    data_dir = str(Path(data_dir if data_dir is not None else default_cache_dir()).resolve())
    with _store_errors(store):
        store = as_store(store)
        with _sigterm_raises():
            return _run(store, spec, backend, workers, scheduler, data_dir, threads_per_worker, progress,
                        retry_failed, max_units, task_fn)


def _run(store, spec, backend, workers, scheduler, data_dir, threads_per_worker, progress, retry_failed, max_units,
         task_fn) -> SweepReport:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    store.register_sweep(spec)
    tasks = spec.tasks()
    keys = [t["key"] for t in tasks]
    finished = store.finished_keys(keys)
    if not retry_failed:
        finished |= store.finished_keys(keys, statuses=("failed",))
    pending = [t for t in tasks if t["key"] not in finished]
    report = SweepReport(spec.name, str(store.path), len(tasks), already_done=len(tasks) - len(pending))
    queue = deque((unit, 0) for unit in work_units(pending, spec.ensemble_size))  # (unit, retries so far)
    if max_units is not None:
        queue = deque(list(queue)[: int(max_units)])
    log.info("%s: %d tasks, %d to run in %d work units", spec.name, len(tasks), len(pending), len(queue))
    if not queue:
        report.stored = len(store.finished_keys(keys))
        report.wall_s = time.perf_counter() - t0
        return report
    bar = tqdm(total=len(tasks), initial=report.already_done, unit="task", desc=spec.name, disable=not progress,
               smoothing=0.1, dynamic_ncols=True)
    pool = None
    in_flight: dict = {}  # future -> (unit, retries)
    held: set[str] = set()  # keys claimed by this runner and not yet written
    last_refresh = time.monotonic()
    try:
        pool = _backend(backend, workers, scheduler)
        while queue or in_flight:
            while queue and len(in_flight) < pool.slots:
                unit, retries = queue.popleft()
                claimed = set(store.claim(t["key"] for t in unit))
                held |= claimed
                skipped = [t for t in unit if t["key"] not in claimed]
                if skipped:
                    finished_now = store.finished_keys(t["key"] for t in skipped)
                    report.elsewhere += len(skipped) - len(finished_now)
                    bar.update(len(skipped))
                unit = [t for t in unit if t["key"] in claimed]
                if unit:
                    fut = pool.submit(task_fn, [t["config"].to_dict() for t in unit], data_dir, threads_per_worker)
                    in_flight[fut] = (unit, retries)
            if not in_flight:
                break
            lost = []
            for fut in pool.wait_any(in_flight):
                unit, retries = in_flight.pop(fut)
                try:
                    records = fut.result()
                except Exception as err:  # noqa: BLE001 - run_unit catches its own; this is the worker's
                    reason = f"{type(err).__name__}: {err}"
                    if _worker_died(err) and retries < MAX_RETRIES:
                        lost.append((unit, retries + 1, reason))
                        continue
                    if _worker_died(err):
                        reason = f"the worker process died {retries + 1} times running this unit; last: {reason}"
                    records = [_failed(t["config"].to_dict(), reason) for t in unit]
                for t, rec in zip(unit, records, strict=True):
                    store.write_result(t["key"], rec)
                    held.discard(t["key"])
                    report.ran += 1
                    setattr(report, rec["status"], getattr(report, rec["status"]) + 1)
                    if rec["status"] == "failed":
                        report.failures.append((t["key"], rec.get("error", "")))
                        log.warning("task %s failed: %s", t["key"], rec.get("error", "").splitlines()[0])
                bar.update(len(unit))
            if lost:
                pool.reset()  # a dead loky worker breaks its executor: every unit in flight comes back here
                for unit, retries, reason in reversed(lost):
                    report.retried += len(unit)
                    log.warning("a worker process died (%s) running %d task(s); running them again (retry %d of %d)",
                                reason.splitlines()[0], len(unit), retries, MAX_RETRIES)
                    queue.appendleft((unit, retries))
            if time.monotonic() - last_refresh > 60:
                store.refresh_claims()
                last_refresh = time.monotonic()
    except KeyboardInterrupt as err:
        with _signals_ignored():  # a second Ctrl-C does not cut the clean-up short
            _clean_up(store, pool, in_flight, held, abort=True)
            bar.close()
            report.stored = len(store.finished_keys(keys))
            report.wall_s = time.perf_counter() - t0
        signum = signal.SIGTERM if isinstance(err, _SigTerm) else signal.SIGINT
        log.warning("%s: interrupted by %s; %d of %d tasks stored, the %d in flight released", spec.name,
                    signal.Signals(signum).name, report.stored, report.total, len(held))
        raise SweepInterrupted(report, signum) from None
    except BaseException:
        _clean_up(store, pool, in_flight, held, abort=True)
        bar.close()
        raise
    _clean_up(store, pool, in_flight, held, abort=False)
    bar.close()
    report.stored = len(store.finished_keys(keys))
    report.wall_s = time.perf_counter() - t0
    log.debug(report.line())
    return report


def _worker_died(err: BaseException) -> bool:
    """The worker process running a unit died: loky's broken executor, dask's ``KilledWorker``."""
    return isinstance(err, BrokenExecutor) or type(err).__name__ == "KilledWorker"


def _clean_up(store, pool, in_flight, held, abort: bool) -> None:
    """Stop the workers (all of them when ``abort``) and give back the claims not written."""
    if pool is not None:
        try:
            pool.abort(in_flight) if abort else pool.close()
        except Exception as err:  # noqa: BLE001 - clean-up goes on: the claims matter more
            log.warning("stopping the %s workers: %s: %s", type(pool).__name__, type(err).__name__, err)
    if held:
        try:
            store.release(held)
        except sqlite3.Error as err:  # e.g. disk full: the claims go stale when this process exits
            log.warning("could not release %d claim(s) in %s (%s); they lapse when this process exits",
                        len(held), store.path, err)


def _check_reachable(address: str) -> None:
    """Raise a one-line RuntimeError naming ``address`` if nothing answers there within
    :data:`CONNECT_TIMEOUT_S` (distributed would wait 30 s, then raise a long traceback)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or parts.hostname is None or parts.port is None:
        return  # another comm (inproc, ucx, ws): let distributed judge it
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise RuntimeError(f"dask scheduler {address}: not reachable within {CONNECT_TIMEOUT_S:g} s ({reason}); "
                           "start one (`dask scheduler`) or check the address") from None


class _store_errors:  # noqa: N801 - a context manager used like a function
    """Turn SQLite's errors into one :class:`StoreError` naming the store and what to do."""

    def __init__(self, store):
        self.path = getattr(store, "path", store)

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is None or not issubclass(kind, sqlite3.Error):
            return False
        text = str(err)
        if "locked" in text or "busy" in text:
            what = ("is locked by another process for longer than the timeout (another runner registering a large "
                    "sweep, or an open transaction in a sqlite3 shell); finish or close that, then run again")
        elif "full" in text:
            what = "could not be written: the disk is full; free space (stored results are intact), then run again"
        else:
            what = f"could not be used ({type(err).__name__}); results stored so far are intact"
        raise StoreError(f"store {self.path} {what} [{text}]") from err


class _sigterm_raises:  # noqa: N801
    """In the main thread, SIGTERM raises :class:`_SigTerm` (a KeyboardInterrupt) while the sweep
    runs, if SIGTERM had its default action; the previous handler is restored on exit."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.old = signal.signal(signal.SIGTERM, _raise_sigterm)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _raise_sigterm(signum, frame):
    raise _SigTerm()


class _signals_ignored:  # noqa: N801
    """SIGINT and SIGTERM ignored (main thread only) for the few seconds of the clean-up."""

    def __enter__(self):
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            if handler is not None:  # None: installed from C, cannot be restored from Python
                signal.signal(sig, handler)
        return False
