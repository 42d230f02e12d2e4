"""Interrupted and failing sweeps (issue 14): SIGINT / SIGTERM reap the workers, release the claims,
print the resume command and exit 130 / 143; a dead worker's unit is retried a bounded number of
times; a full disk, a store locked past its timeout and an unreachable dask scheduler each give
one clear error; every store stays complete after a resume."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from phase_diagrams.cli import main
from phase_diagrams.runner import MAX_RETRIES, StoreError, run_sweep, run_unit
from phase_diagrams.spec import load_spec, spec_from_dict, spec_to_toml
from phase_diagrams.store import Store

# Tiny networks on a Gaussian mixture (~0.1 s per task), read from an .npz per column.
TRAIN = {"dataset": "npz", "n_train": 128, "image_size": "none", "depth": 2, "width": 8, "epochs": 40,
         "probe_every": 10}


def _spec(tmp_path, columns, rows=(0.0, 0.5, 1.0)) -> dict:
    return {"name": "tiny", "seeds": [1], "ensemble_size": 1, "train": TRAIN,
            "rows": {"field": "alpha", "values": list(rows)},
            "columns": {"field": "data_root", "values": [str(c) for c in columns]},
            "simulator": {"n_chains": 8, "n_steps": 400, "record_every": 100, "presets": []}}


def _data(path):
    from nets.data import gaussian_mixture

    np.savez(path, **gaussian_mixture(128, 100, dim=9, seed=0))
    return path


def _group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group ``pgid``, from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d))
    return out


def _default_sigint():  # a child of a background shell inherits SIGINT ignored; Ctrl-C must reach it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("backend, sig", [("serial", signal.SIGINT), ("joblib", signal.SIGINT),
                                          ("joblib", signal.SIGTERM)])
def test_interrupted_sweep_reaps_workers_and_resumes(tmp_path, backend, sig):
    # Deterministic: the second column reads a FIFO, so its units block (in the runner or in the
    # loky workers) after the first column's 3 tasks are stored; then the whole process group is
    # signalled, as Ctrl-C in a terminal does.
    good, fifo = _data(tmp_path / "good.npz"), tmp_path / "late.npz"
    os.mkfifo(fifo)
    path, db = tmp_path / "spec.toml", tmp_path / "s.sqlite"
    path.write_text(spec_to_toml(spec_from_dict(_spec(tmp_path, [good, fifo]))))
    args = ["sweep", str(path), "--store", str(db), "--backend", backend, "--workers", "2", "--no-simulate",
            "--no-progress"]
    store = Store(db)
    proc = subprocess.Popen([sys.executable, "-m", "phase_diagrams", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120  # a safety net only
    while time.monotonic() < deadline and proc.poll() is None:
        if "tiny" in store.sweeps() and store.progress("tiny")["done"] >= 3:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # the FIFO units are dispatched
    assert proc.poll() is None, proc.communicate()
    t0 = time.monotonic()
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 128 + sig, err
    assert elapsed < 10, elapsed
    assert "Traceback" not in err, err
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted:")]
    assert line == [f"interrupted: 3 of 6 tasks stored in {db}; resume with: python -m phase_diagrams "
                    + " ".join(args)], err
    for _ in range(50):  # loky's resource tracker leaves once its pipe closes
        if not _group_members(proc.pid):
            break
        time.sleep(0.1)
    assert _group_members(proc.pid) == []
    assert store.integrity_check() == "ok" and store.live_claims() == set()
    assert len(store.runs("tiny")) == 3
    fifo.unlink()
    os.link(good, fifo)  # the second column's data, now readable
    rep = run_sweep(store, load_spec(path), backend="serial", progress=False)
    assert (rep.already_done, rep.ran, rep.done, rep.stored) == (3, 3, 3, 6)
    runs = store.runs("tiny")
    assert len(runs) == 6 and runs["key"].is_unique and store.integrity_check() == "ok"


def test_a_dead_worker_is_retried_then_recorded(tmp_path):
    good = _data(tmp_path / "good.npz")
    marker = tmp_path / "died-once"

    def dies_once(configs, data_dir=None, threads=1):  # pickled by value into the loky worker
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return run_unit(configs, data_dir, threads)

    store = Store(tmp_path / "d.sqlite")
    rep = run_sweep(store, _spec(tmp_path, [good], rows=[0.0]), backend="joblib", workers=1, progress=False,
                    task_fn=dies_once)
    assert (rep.retried, rep.ran, rep.done, rep.failed) == (1, 1, 1, 0)
    assert "1 retried after a worker died" in rep.line()

    def always_dies(configs, data_dir=None, threads=1):
        os._exit(1)

    spec = _spec(tmp_path, [good], rows=[0.5])
    spec["name"] = "doomed"
    rep = run_sweep(store, spec, backend="joblib", workers=1, progress=False, task_fn=always_dies)
    assert (rep.retried, rep.ran, rep.failed) == (MAX_RETRIES, 1, 1)
    err = store.runs("doomed")["error"].iloc[0]
    assert f"died {MAX_RETRIES + 1} times" in err and "TerminatedWorkerError" in err
    assert store.live_claims() == set()


def test_disk_full_stops_with_one_error_and_resumes(tmp_path, monkeypatch):
    good = _data(tmp_path / "good.npz")
    spec = _spec(tmp_path, [good])
    store = Store(tmp_path / "full.sqlite")
    real = Store.write_result
    writes = []

    def fills_up(self, key, record):  # the third write finds the disk full
        if len(writes) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        writes.append(key)
        return real(self, key, record)

    monkeypatch.setattr(Store, "write_result", fills_up)
    with pytest.raises(StoreError, match=rf"store {store.path} could not be written: the disk is full"):
        run_sweep(store, spec, backend="serial", progress=False)
    monkeypatch.setattr(Store, "write_result", real)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the sweep's SIGTERM handler is gone
    assert set(store.runs("tiny")["key"]) == set(writes) and store.live_claims() == set()
    rep = run_sweep(store, spec, backend="serial", progress=False)
    assert (rep.already_done, rep.ran, rep.stored) == (2, 1, 3) and store.integrity_check() == "ok"


def test_a_locked_store_gives_one_error_naming_it(tmp_path, monkeypatch, capsys):
    good = _data(tmp_path / "good.npz")
    path, db = tmp_path / "spec.toml", tmp_path / "locked.sqlite"
    path.write_text(spec_to_toml(spec_from_dict(_spec(tmp_path, [good]))))
    run_sweep(Store(db), load_spec(path), backend="serial", progress=False, max_units=1)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # e.g. a sqlite3 shell in the middle of a transaction
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=rf"store {db} is locked by another process.*then run again"):
            run_sweep(Store(db, timeout=0.3), load_spec(path), backend="serial", progress=False)
        assert time.monotonic() - t0 < 5
        monkeypatch.setattr(Store.__init__, "__defaults__", (0.3,))  # the command line's stores wait 0.3 s
        rc = main(["sweep", str(path), "--store", str(db), "--backend", "serial", "--no-simulate", "--no-progress"])
        err = capsys.readouterr().err
        assert rc != 0 and "Traceback" not in err
        assert [ln for ln in err.splitlines() if ln.startswith("error:")][0].startswith(f"error: store {db} is locked")
    finally:
        other.execute("ROLLBACK")
        other.close()
    store = Store(db)
    assert len(store.runs("tiny")) == 1 and store.live_claims() == set()
    assert run_sweep(store, load_spec(path), backend="serial", progress=False).ran == 2


def test_an_unreachable_scheduler_fails_fast_before_registering(tmp_path, capsys):
    db = tmp_path / "never.sqlite"
    spec = _spec(tmp_path, [tmp_path / "x.npz"])
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"dask scheduler tcp://127\.0\.0\.1:1: not reachable"):
        run_sweep(db, spec, backend="dask", scheduler="tcp://127.0.0.1:1", progress=False)
    assert time.monotonic() - t0 < 6
    assert not db.exists()  # nothing registered, nothing claimed
    path = tmp_path / "spec.toml"
    path.write_text(spec_to_toml(spec_from_dict(spec)))
    rc = main(["sweep", str(path), "--store", str(db), "--backend", "dask", "--scheduler", "tcp://127.0.0.1:1",
               "--no-simulate", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and err.strip().splitlines()[-1].startswith("error: dask scheduler tcp://127.0.0.1:1")


def test_ctrl_c_stops_a_long_simulate_at_once(tmp_path):
    # robustness case CC-12: `phase_diagrams simulate` used to exit only after its kernels finished
    # (143 s after SIGINT). This run would take minutes; SIGINT after 4 s must end it within 15 s.
    proc = subprocess.Popen([sys.executable, "-m", "phase_diagrams", "simulate", "--preset", "scale-both",
                             "--chains", "2000", "--steps", "400000", "--out", str(tmp_path / "fig")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    time.sleep(4.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 15.0
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted")
