"""Hardening of the ``python -m phase_diagrams`` front door (issue 14): every bad input one line
``error: ...`` with exit 2 (usage) or 1 (runtime), checked before any work, no traceback; stores
opened strictly; JSON written strictly (RFC 8259).

The ids (C-12, ST-04, P-21, ...) are those of the robustness cases (``robustness-cases.md``); each
table below is a list of distinct bad inputs. Property-based tests (Hypothesis, derandomized) feed
generated grid specs and argument lists. Runtime: about a minute (a 4-task smoke store is built
once per module with the serial backend).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phase_diagrams import jobs
from phase_diagrams.cli import main
from phase_diagrams.spec import GridSpec, SpecError, load_spec, spec_from_dict, spec_to_toml
from phase_diagrams.store import Store, StoreError, as_store
from springblock.errors import InputError


# --------------------------------------------------------------------------------------------------
# helpers
def cli(*argv) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_one_error(code: int, err: str, expect_code: int | tuple = 2, *needles: str) -> str:
    """Exit ``expect_code``; stderr has exactly one ``error:`` line, no traceback; the line names
    every ``needle``."""
    codes = expect_code if isinstance(expect_code, tuple) else (expect_code,)
    assert code in codes, (code, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tmp dir with the smoke store (4 tasks, serial, simulated counterpart) and damaged copies."""
    d = tmp_path_factory.mktemp("harden")
    good = d / "smoke.sqlite"
    jobs.sweep_and_simulate(good, "smoke", backend="serial", progress=False)
    raw = good.read_bytes()
    (d / "text.sqlite").write_text("this is not a database\n" * 50)
    (d / "trunc.sqlite").write_bytes(raw[: len(raw) // 2])
    hdr = bytearray(raw)
    hdr[:16] = b"garbage header!!"
    (d / "hdrcorrupt.sqlite").write_bytes(bytes(hdr))
    mid = bytearray(raw)
    rng = np.random.default_rng(1)
    page = 4096
    for p in range(2, len(raw) // page):  # random bytes over every page but the first (keeps the header)
        mid[p * page:(p + 1) * page] = rng.integers(0, 256, page, dtype=np.uint8).tobytes()
    (d / "midcorrupt.sqlite").write_bytes(bytes(mid))
    con = sqlite3.connect(d / "foreign.sqlite")
    con.execute("CREATE TABLE runs (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    failed = d / "failed.sqlite"
    shutil.copy(good, failed)
    con = sqlite3.connect(failed)
    con.execute("UPDATE runs SET status = 'failed'")
    con.commit()
    con.close()
    noruns = Store(d / "noruns.sqlite")
    noruns.register_sweep(load_spec("smoke"))
    (d / "afile").write_text("x")
    (d / "adir").mkdir()
    (d / "ro").mkdir()
    return d


@pytest.fixture
def readonly(work, monkeypatch):
    """``work/ro`` reads as not writable (tests run as root, which ignores permission bits)."""
    ro = str(work / "ro")
    real = os.access

    def access(path, mode, *a, **k):
        if mode & os.W_OK and os.path.abspath(path).startswith(ro):
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    return work / "ro"


def no_files_with(d: Path, suffix: str) -> set:
    return {p.name for p in d.iterdir() if p.name.endswith(suffix)}


# --------------------------------------------------------------------------------------------------
# store cases: (id, command, store file, needles)
STORE_CASES = [
    ("ST-01", "status", "text.sqlite", ("text.sqlite", "not a SQLite store")),
    ("ST-02", "status", "trunc.sqlite", ("trunc.sqlite",)),
    ("ST-04", "status", "midcorrupt.sqlite", ("midcorrupt.sqlite",)),
    ("ST-05", "export", "midcorrupt.sqlite", ("midcorrupt.sqlite",)),
    ("ST-06", "status", "hdrcorrupt.sqlite", ("hdrcorrupt.sqlite", "not a SQLite store")),
    ("ST-07", "status", ".", ("is a directory",)),
    ("ST-14", "status", "typo.sqlite", ("typo.sqlite", "no such file")),
    ("ST-14/plot", "plot", "typo.sqlite", ("typo.sqlite", "no such file")),
    ("ST-14/export", "export", "typo.sqlite", ("typo.sqlite", "no such file")),
    ("ST-14/compare", "compare", "typo.sqlite", ("typo.sqlite", "no such file")),
    ("ST-14/fit", "fit", "typo.sqlite", ("typo.sqlite", "no such file")),
    ("ST-14/calibrate", "calibrate", "typo.sqlite", ("typo.sqlite", "no such file")),
    ("ST-15/status", "status", "foreign.sqlite", ("foreign.sqlite", "another program")),
    ("ST-15", "sweep", "foreign.sqlite", ("foreign.sqlite", "another program")),
    ("ST-03", "sweep", "trunc.sqlite", ("trunc.sqlite",)),
    ("ST-01/sweep", "sweep", "text.sqlite", ("text.sqlite",)),
]


@pytest.mark.parametrize("case,command,name,needles", STORE_CASES, ids=[c[0] for c in STORE_CASES])
def test_bad_store_is_one_line(work, case, command, name, needles):
    before = sorted(p.name for p in work.iterdir())
    path = work / name if name != "." else work
    extra = {"export": ["--out", work / "adir" / "x.csv"], "plot": ["--out", work / "adir" / "f"],
             "fit": ["--out", work / "adir" / "f", "--no-progress"], "calibrate": ["--out", work / "adir" / "c"],
             "sweep": ["smoke", "--backend", "serial", "--no-progress"]}.get(command, [])
    code, _, err = cli(command, "--store", path, *extra)
    assert_one_error(code, err, 2, *needles)
    assert sorted(p.name for p in work.iterdir()) == before  # no store (or -wal) file created
    assert not (work / "adir" / "x.csv").exists()


def test_store_open_python_api(work):
    """``Store.open`` is strict; ``as_store`` / ``Store(path)`` keep creating a missing store."""
    with pytest.raises(StoreError, match="no such file"):
        Store.open(work / "missing.sqlite")
    with pytest.raises(StoreError, match="PRAGMA integrity_check|malformed|not a SQLite"):
        Store.open(work / "midcorrupt.sqlite")
    assert isinstance(StoreError("x"), InputError)
    new = as_store(work / "adir" / "created.sqlite")
    assert new.sweeps() == [] and new.integrity_check() == "ok"
    assert Store.open(work / "smoke.sqlite").sweeps() == ["smoke"]


@pytest.mark.parametrize("case,command", [("ST-08", "sweep"), ("ST-09", "status"), ("ST-10", "export"),
                                          ("F-17", "fit")])
def test_store_that_sqlite_cannot_open(work, monkeypatch, case, command):
    """A store in a read-only directory: SQLite's 'unable to open' (WAL needs the directory) is
    reported naming the store and the likely cause."""
    real = sqlite3.connect

    def connect(path, *a, **k):
        if "ro_store" in str(path):
            raise sqlite3.OperationalError("unable to open database file")
        return real(path, *a, **k)

    monkeypatch.setattr(sqlite3, "connect", connect)
    path = work / "ro_store.sqlite"
    if command != "sweep":
        shutil.copy(work / "smoke.sqlite", path)
    extra = {"export": ["--out", work / "adir" / "ro.csv"], "fit": ["--out", work / "adir" / "f"],
             "sweep": ["smoke", "--backend", "serial", "--no-progress"]}.get(command, [])
    code, _, err = cli(command, "--store", path, *extra)
    assert_one_error(code, err, 2, "ro_store.sqlite", "read-only")
    path.unlink(missing_ok=True)


def test_export_unknown_sweep_and_all_failed_compare(work):
    # ST-17: an unknown sweep is an error, not a header-only file
    code, _, err = cli("export", "--store", work / "smoke.sqlite", "--sweep", "nosuch", "--out", work / "ns.csv")
    assert_one_error(code, err, 2, "'nosuch'", "smoke")
    assert not (work / "ns.csv").exists()
    # ST-21: a store whose runs all failed has nothing to compare (not "regime_agreement 0.0")
    code, _, err = cli("compare", "--store", work / "failed.sqlite")
    assert_one_error(code, err, 2, "no finished runs")
    # F-04: a registered sweep without runs: not "error: curve"
    code, _, err = cli("fit", "--store", work / "noruns.sqlite", "--out", work / "adir" / "f4", "--no-progress")
    line = assert_one_error(code, err, 2, "no finished runs")
    assert line.strip() != "error: curve"


def test_compare_undefined_agreement_is_nan(work):
    """0 of 0 compared cells: the agreement is undefined (NaN), never 0.0."""
    _, summary = jobs.compare_store(work / "smoke.sqlite")
    none = summary["n_compared"] == 0
    assert summary.loc[none, "regime_agreement"].isna().all()


# --------------------------------------------------------------------------------------------------
# argument and output-location cases: (id, argv with {w} = work dir, exit code, needles)
ARG_CASES = [
    ("C-12", "simulate --preset scale-both --chains 4 --steps 50 --out {w}/afile", 2, ("afile", "not a directory")),
    ("C-15", "bottleneck --ltilde abc --epochs 1 --out {w}/adir/bn", 2, ("--ltilde", "abc")),
    ("C-20", "simulate --preset scale-both --chains 1000000000000 --steps 10 --out {w}/adir/sim", 2,
     ("--chains 1000000000000", "memory budget")),
    ("C-20/1e12", "simulate --chains 1e12 --out {w}/adir/sim", 2, ("--chains", "1e12")),
    ("C-22", "plot --store {w}/smoke.sqlite --cell a,b --out {w}/adir/p", 2, ("--cell", "a,b")),
    ("C-22/neg", "plot --store {w}/smoke.sqlite --cell -1,0 --out {w}/adir/p", 2, ("--cell",)),
    ("C-22/one", "plot --store {w}/smoke.sqlite --cell 3 --out {w}/adir/p", 2, ("--cell", "'3'")),
    ("F-07", "fit --store {w}/smoke.sqlite --cell 0,0 --chains 1000000000000 --no-progress --out {w}/adir/f", 2,
     ("--chains 1000000000000",)),
    ("F-10", "fit --store {w}/smoke.sqlite --cell a,b --no-progress --out {w}/adir/f", 2, ("--cell", "a,b")),
    ("F-15", "fit --store {w}/smoke.sqlite --workers -1 --no-progress --out {w}/adir/f", 2, ("--workers", "-1")),
    ("F-15/0", "fit --store {w}/smoke.sqlite --workers 0 --no-progress --out {w}/adir/f", 2, ("--workers", "'0'")),
    ("sweep-workers", "sweep smoke --store {w}/new1.sqlite --workers -3", 2, ("--workers", "-3")),
    ("steps-0", "simulate --steps 0 --out {w}/adir/sim", 2, ("--steps", "'0'")),
    ("seed-neg", "simulate --seed -1 --out {w}/adir/sim", 2, ("--seed", "-1")),
    ("mu-nan", "simulate --mu-max nan --out {w}/adir/sim", 2, ("--mu-max", "nan")),
    ("ratio-inf", "simulate --ratio inf --out {w}/adir/sim", 2, ("--ratio", "inf")),
    ("preset", "simulate --preset nosuch --chains 4 --steps 10 --out {w}/adir/sim", 2, ("nosuch",)),
    ("spec-preset", "spec nosuch", 2, ("nosuch",)),
    ("spec-out-dir", "spec smoke --out {w}/adir", 2, ("adir", "is a directory")),
    ("spec-out-parent", "spec smoke --out {w}/missing/x.toml", 2, ("missing", "does not exist")),
    ("export-dir", "export --store {w}/smoke.sqlite --out {w}/adir", 2, ("adir",)),
    ("export-suffix", "export --store {w}/smoke.sqlite --out {w}/x.txt", 2, ("x.txt", ".csv")),
    ("export-parent", "export --store {w}/smoke.sqlite --out {w}/missing/x.csv", 2, ("missing", "does not exist")),
    ("export-under-file", "export --store {w}/smoke.sqlite --out {w}/afile/x.csv", 2, ("afile",)),
    ("compare-csv-dir", "compare --store {w}/smoke.sqlite --csv {w}/adir", 2, ("--csv", "adir")),
    ("plot-out-file", "plot --store {w}/smoke.sqlite --out {w}/afile", 2, ("afile", "not a directory")),
    ("plot-out-under-file", "plot --store {w}/smoke.sqlite --out {w}/afile/sub", 2, ("afile",)),
    ("plot-sweep", "plot --store {w}/smoke.sqlite --sweep nosuch --out {w}/adir/p", 2, ("nosuch",)),
    ("fit-out-file", "fit --store {w}/smoke.sqlite --out {w}/afile --no-progress", 2, ("afile",)),
    ("calibrate-out-file", "calibrate --store {w}/smoke.sqlite --out {w}/afile", 2, ("afile",)),
    ("calibrate-sweep", "calibrate --store {w}/smoke.sqlite --sweep nosuch --out {w}/adir/c", 2, ("nosuch",)),
    ("run-out-file", "run smoke --store {w}/new2.sqlite --out {w}/afile --backend serial", 2, ("afile",)),
    ("fit-curve-dir", "fit --curve {w}/adir --out {w}/adir/fc", 2, ("adir", "directory")),
    ("fit-curve-missing", "fit --curve {w}/nosuch.csv --out {w}/adir/fc", 2, ("nosuch.csv",)),
    ("fit-epochs", "fit --curve {w}/afile --epochs a,b --out {w}/adir/fc", 2, ("--epochs",)),
    ("C-17", "sweep nosuch-preset --store {w}/new3.sqlite", 2, ("nosuch-preset",)),
    ("C-18", "run smoke --store {w}/new4.sqlite --backend nosuch", 2, ("--backend", "nosuch")),
    ("C-21", "sweep smoke --store {w}/new5.sqlite --workers x", 2, ("--workers", "'x'")),
    ("status-dir", "status --store {w}/adir", 2, ("adir", "directory")),
    ("unknown-cmd", "nosuch", 2, ("nosuch",)),
    ("missing-arg", "export --store {w}/smoke.sqlite", 2, ("--out",)),
    ("bottleneck-epochs", "bottleneck --epochs 0 --out {w}/adir/bn", 2, ("--epochs", "'0'")),
    ("bottleneck-lr", "bottleneck --lr nan --out {w}/adir/bn", 2, ("--lr", "nan")),
]


@pytest.mark.parametrize("case,argv,code,needles", ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_bad_argument_is_one_line_before_any_work(work, monkeypatch, case, argv, code, needles):
    monkeypatch.setenv("SPRINGBLOCK_MEMORY_BUDGET", "1G")
    before = sorted(p.name for p in work.iterdir())
    got, out, err = cli(*argv.format(w=work).split())
    assert_one_error(got, err, code, *needles)
    # nothing created: no store file (C-17/18/21/22), no output directory, no figures
    assert sorted(p.name for p in work.iterdir()) == before
    assert not any((work / "adir").rglob("*.png"))


@pytest.mark.parametrize("case,argv,needles", [
    ("C-23", "spec label-noise --out {ro}/x.toml", ("x.toml", "not writable")),
    ("C-24", "simulate --preset scale-both --chains 4 --steps 50 --out {ro}/sim", ("sim", "not writable")),
    ("C-25", "run smoke --store {w}/run_ro.sqlite --out {ro}/figs --backend serial --no-progress", ("figs",)),
    ("ST-23", "export --store {w}/smoke.sqlite --out {ro}/out.csv", ("out.csv", "not writable")),
    ("ST-24", "plot --store {w}/smoke.sqlite --out {ro}/figs", ("figs", "not writable")),
    ("F-16", "fit --store {w}/smoke.sqlite --cell 0,0 --uncertainty none --no-progress --workers 1 --out {ro}/figs",
     ("figs", "not writable")),
    ("calibrate-ro", "calibrate --store {w}/smoke.sqlite --out {ro}/c", ("not writable",)),
    ("compare-csv-ro", "compare --store {w}/smoke.sqlite --csv {ro}/c.csv", ("c.csv",)),
    ("sweep-store-ro", "sweep smoke --store {ro}/new.sqlite --backend serial", ("--store", "not writable")),
])
def test_read_only_output_is_refused_up_front(work, readonly, case, argv, needles):
    n_fits = len(Store.open(work / "smoke.sqlite").fits())
    code, _, err = cli(*argv.format(w=work, ro=readonly).split())
    assert_one_error(code, err, 2, *needles)
    assert not (work / "run_ro.sqlite").exists()  # C-25: refused before the store is made or a net trained
    assert len(Store.open(work / "smoke.sqlite").fits()) == n_fits  # F-16: refused before fitting
    assert list(readonly.iterdir()) == []


def test_runtime_failure_is_one_line_exit_1(work, monkeypatch):
    """An I/O failure after the checks (e.g. the disk fills, EROFS) is a runtime error: exit 1."""
    def boom(*a, **k):
        raise OSError(28, "No space left on device", str(work / "adir" / "full.csv"))

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    code, _, err = cli("export", "--store", work / "smoke.sqlite", "--out", work / "adir" / "full.csv")
    assert_one_error(code, err, 1, "full.csv", "No space left")
    def locked(store):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(jobs, "status_table", locked)
    code, _, err = cli("status", "--store", work / "smoke.sqlite")
    assert_one_error(code, err, 1, "smoke.sqlite", "disk I/O error")


def test_resource_error_from_the_simulator_is_one_line(work, monkeypatch):
    """The simulator's own memory guard (a ResourceError) prints as one line too."""
    from springblock.errors import ResourceError

    def guard(*a, **k):
        raise ResourceError("n_chains=256 x 10 blocks: needs about 9 TiB, more than the memory budget of 1 GiB")

    monkeypatch.setattr(jobs, "simulate_job", guard)
    code, _, err = cli("simulate", "--out", work / "adir" / "sim_guard")
    assert_one_error(code, err, 2, "n_chains=256", "memory budget")


def test_traceback_only_when_asked(work, monkeypatch):
    code, _, err = cli("-v", "status", "--store", work / "typo.sqlite")
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error:")
    monkeypatch.setenv("SPRINGBLOCK_TRACEBACK", "1")
    code, _, err = cli("status", "--store", work / "typo.sqlite")
    assert code == 2 and "Traceback" in err
    monkeypatch.setenv("SPRINGBLOCK_TRACEBACK", "0")
    code, _, err = cli("status", "--store", work / "typo.sqlite")
    assert_one_error(code, err, 2)


def test_a_bug_shows_its_traceback_and_asks_for_a_report(work, monkeypatch):
    monkeypatch.setattr(jobs, "status_table", lambda s: None.attribute)  # AttributeError: a bug
    code, _, err = cli("status", "--store", work / "smoke.sqlite")
    assert code == 1 and "Traceback" in err and "AttributeError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: unexpected AttributeError")
    assert "report" in err.rstrip().splitlines()[-1]


def test_help_and_valid_commands_exit_0(work):
    code, out, err = cli("--help")
    assert code == 0 and "usage" in out and err == ""
    code, out, err = cli("status", "--store", work / "smoke.sqlite")
    assert code == 0 and "smoke" in out and "error" not in err
    code, out, _ = cli("spec", "smoke", "--out", work / "adir" / "smoke.toml")
    assert code == 0 and load_spec(work / "adir" / "smoke.toml") == load_spec("smoke")


# --------------------------------------------------------------------------------------------------
# spec cases (P-*) and ST-22: rejected by load_spec before any training, naming the entry
SPEC_CASES = [
    ("P-13", 'seeds = [18446744073709551616]', "seeds[0]"),
    ("P-18", "[rows]\nfield = \"alpha\"\nvalues = [{}]\n[columns]\nfield = \"label_noise\"\nvalues = [{}]\n".format(
        ", ".join(str(i / 1000) for i in range(1000)), ", ".join(str(i / 1000) for i in range(1000))), "tasks"),
    ("P-21", "[simulator]\nmu_max = nan", "simulator.mu_max"),
    ("P-22", "[simulator]\nratio = inf", "simulator.ratio"),
    ("P-23", "[simulator]\nn_chains = 1000000000000", "simulator.n_chains"),
    ("P-24", "[simulator]\neps_max = 1e300", "simulator"),
    ("P-24/mu", "[simulator]\nmu_max = 1e300\nratio = 1e300", "simulator"),
    ("P-36", "[simulator]\nn_steps = 1000000000000", "simulator.n_chains"),
    ("ST-22", 'name = "../escape"', "name"),
    ("name-slash", 'name = "a/b"', "name"),
    ("name-space", 'name = "a b"', "name"),
    ("name-dot", 'name = ".hidden"', "name"),
    ("seeds-neg", "seeds = [-1]", "seeds[0]"),
    ("seeds-dup", "seeds = [1, 1]", "seeds"),
    ("ensemble-0", "ensemble_size = 0", "ensemble_size"),
    ("unknown-key", "colour = 1", "colour"),
    ("eps-neg", "[simulator]\neps_min = -1.0", "simulator.eps_min"),
    ("record-0", "[simulator]\nrecord_every = 0", "simulator.record_every"),
]


@pytest.mark.parametrize("case,body,needle", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_file_names_the_entry(work, monkeypatch, case, body, needle):
    monkeypatch.setenv("SPRINGBLOCK_MEMORY_BUDGET", "1G")
    path = work / f"spec_{case.replace('/', '_')}.toml"
    path.write_text('preset = "smoke"\n' + body + "\n")
    with pytest.raises(SpecError, match=None) as info:
        load_spec(path)
    assert needle in str(info.value) and str(path) in str(info.value)
    store = work / f"spec_{case.replace('/', '_')}.sqlite"
    code, _, err = cli("sweep", path, "--store", store, "--backend", "serial", "--no-progress")
    assert_one_error(code, err, 2, needle)
    assert not store.exists()  # refused before the store (and any training)


def test_spec_directory_and_bad_utf8(work):
    code, _, err = cli("sweep", work / "adir", "--store", work / "p15.sqlite")  # P-15
    assert_one_error(code, err, 2, "adir", "directory")
    bad = work / "bad_utf8.toml"
    bad.write_bytes(b'name = "\xff\xfe"\n')
    code, _, err = cli("sweep", bad, "--store", work / "p16.sqlite")  # P-16
    assert_one_error(code, err, 2, "bad_utf8.toml", "UTF-8")
    assert not (work / "p15.sqlite").exists() and not (work / "p16.sqlite").exists()


# --------------------------------------------------------------------------------------------------
# strict JSON (J-02, fit --curve --json)
def _strict_loads(line: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def test_export_json_is_strict_and_round_trips_nan(work):
    """J-02: NaN and inf (a diverged run) are written as null and read back as NaN."""
    store = work / "nan.sqlite"
    shutil.copy(work / "smoke.sqlite", store)
    con = sqlite3.connect(store)
    key = con.execute("SELECT key FROM runs LIMIT 1").fetchone()[0]
    result = json.loads(con.execute("SELECT result FROM runs WHERE key = ?", (key,)).fetchone()[0])
    result["curve"] = [1.0, float("nan"), float("inf"), 0.5]
    con.execute("UPDATE runs SET result = ?, status = 'diverged', test_accuracy = NULL WHERE key = ?",
                (json.dumps(result), key))
    con.commit()
    con.close()
    out = work / "adir" / "nan.json"
    code, _, err = cli("export", "--store", store, "--out", out)
    assert code == 0, err
    lines = out.read_text().splitlines()
    records = [_strict_loads(ln) for ln in lines]  # RFC 8259: no NaN / Infinity tokens
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    back = jobs.read_export(out)
    orig = Store.open(store).runs()
    assert len(back) == len(orig) == len(records)
    row = back.loc[back["key"] == key].iloc[0]
    assert row["curve"][0] == 1.0 and math.isnan(row["curve"][1]) and math.isnan(row["curve"][2])
    assert math.isnan(row["test_accuracy"])
    for c in ("key", "status", "row", "col", "seed"):
        assert list(back[c]) == list(orig[c])
    good = back.loc[back["key"] != key]
    np.testing.assert_array_equal(np.stack(good["curve"]), np.stack(orig.loc[orig["key"] != key, "curve"]))
    csv = work / "adir" / "nan.csv"  # the CSV's array cells are JSON text: strict as well
    assert cli("export", "--store", store, "--out", csv)[0] == 0
    assert "NaN" not in csv.read_text() and "Infinity" not in csv.read_text()
    row = jobs.read_export(csv).set_index("key").loc[key]
    assert row["curve"][0] == 1.0 and math.isnan(row["curve"][1]) and math.isnan(row["curve"][2])


def test_strict_json_helper():
    rec = dict(a=float("nan"), b=[1.0, float("-inf")], c=np.float64("nan"), d=np.array([np.inf, 2.0]),
               e={"x": np.int64(3)}, f=None, g="s", h=True)
    from springblock.errors import strict_json

    text = strict_json(rec)  # the helper export and fit --curve --json write with
    assert _strict_loads(text) == dict(a=None, b=[1.0, None], c=None, d=[None, 2.0], e={"x": 3}, f=None,
                                       g="s", h=True)


# --------------------------------------------------------------------------------------------------
# property-based: generated specs
_GOOD_NAME = st.from_regex(r"[a-z][a-z0-9_\-]{0,11}", fullmatch=True)
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**65), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=6), st.lists(st.integers(-2, 3), max_size=3))
_ALPHA = st.one_of(st.sampled_from([0.0, 0.2, 0.5, 1.0]), st.floats(-1, 2), st.just(float("nan")), st.text(max_size=3))
_NOISE = st.one_of(st.sampled_from([0.0, 0.1, 0.3, 0.6]), st.floats(-1, 2), st.just(float("inf")))

_ENTRIES = {
    "name": st.one_of(_GOOD_NAME, st.text(max_size=8)),
    "seeds": st.one_of(st.lists(st.integers(0, 20), min_size=1, max_size=3, unique=True),
                       st.lists(st.integers(-5, 2**64), max_size=3), _ANY),
    "ensemble_size": st.one_of(st.integers(1, 3), _ANY),
    "rows.values": st.one_of(st.lists(_ALPHA, min_size=1, max_size=3), _ANY),
    "columns.values": st.one_of(st.lists(_NOISE, min_size=1, max_size=3), _ANY),
    "columns.field": st.sampled_from(["label_noise", "lr", "dropout", "alpha", "seed", "colour", 3]),
    "simulator.mu_max": st.one_of(st.floats(0, 1), _ANY, st.just(1e300)),
    "simulator.ratio": st.one_of(st.floats(1, 5), _ANY),
    "simulator.eps_max": st.one_of(st.floats(0.3, 2), _ANY, st.just(1e300)),
    "simulator.n_chains": st.one_of(st.integers(1, 64), st.integers(1, 10**13), _ANY),
    "simulator.n_steps": st.one_of(st.integers(1, 500), st.integers(1, 10**13), _ANY),
    "simulator.presets": st.one_of(st.lists(st.sampled_from(["scale-both", "vary-forward", "nosuch"]),
                                            max_size=2, unique=True), _ANY),
    "train.epochs": st.one_of(st.integers(1, 5), _ANY),
    "train.colour": _ANY,
    "bogus": _ANY,
}


@st.composite
def spec_dicts(draw):
    d = {"preset": "smoke"}
    for entry in draw(st.lists(st.sampled_from(sorted(_ENTRIES)), max_size=4, unique=True)):
        value = draw(_ENTRIES[entry])
        if "." in entry:
            table, key = entry.split(".")
            d.setdefault(table, {})[key] = value
        else:
            d[entry] = value
    return d


@pytest.fixture(scope="module")
def budget():
    with pytest.MonkeyPatch.context() as mp:  # the memory check of a spec does not depend on this machine
        mp.setenv("SPRINGBLOCK_MEMORY_BUDGET", "1G")
        yield


def test_generated_specs_build_or_raise_spec_error(budget):
    outcomes = {"valid": 0, "invalid": 0}

    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(d=spec_dicts())
    def check(d):
        try:
            spec = spec_from_dict(d)
        except SpecError as err:  # never another exception type
            assert str(err) and "\n" not in str(err).strip()
            outcomes["invalid"] += 1
            return
        outcomes["valid"] += 1
        assert isinstance(spec, GridSpec)
        text = spec_to_toml(spec)
        assert spec_from_dict(tomllib.loads(text)) == spec  # round trip through TOML
        keys = [t["key"] for t in spec.tasks()]
        assert len(keys) == len(set(keys)) == spec.shape[0] * spec.shape[1] * len(spec.seeds)

    check()
    assert outcomes["valid"] >= 10 and outcomes["invalid"] >= 10, outcomes


# property-based: generated argument lists for the quick commands
@st.composite
def argvs(draw, work: Path):
    stores = [work / "smoke.sqlite", work / "typo.sqlite", work / "text.sqlite", work / "midcorrupt.sqlite",
              work / "adir", work / "failed.sqlite", work / "foreign.sqlite", work / "noruns.sqlite"]
    outs = [work / "gen" / "o.csv", work / "gen" / "o.json", work / "gen" / "o.txt", work / "adir", work / "afile",
            work / "missing" / "o.csv", work / "gen" / "figs", work / "afile" / "sub"]
    junk = st.sampled_from(["", "-1", "0", "1e12", "nan", "a,b", "0,0", "1,1", "9,9", "smoke", "nosuch", "--x",
                            "é", "0,0,0"])
    command = draw(st.sampled_from(["spec", "status", "compare", "export", "plot", "nosuch"]))
    argv = [command]
    if command == "spec":
        argv.append(draw(st.one_of(st.sampled_from(["smoke", "label-noise", "nosuch"]), junk)))
    flags = {"spec": ["--out"], "status": ["--store"], "compare": ["--store", "--sweep", "--csv"],
             "export": ["--store", "--sweep", "--out", "--simulated"],
             "plot": ["--store", "--sweep", "--out", "--cell"],
             "nosuch": ["--store"]}[command] + ["--bogus"]
    for flag in draw(st.lists(st.sampled_from(flags), max_size=4, unique=True)):
        argv.append(flag)
        if flag == "--simulated":
            continue
        if flag == "--store":
            argv.append(draw(st.one_of(st.sampled_from(stores), junk)))
        elif flag in ("--out", "--csv"):
            argv.append(draw(st.one_of(st.sampled_from(outs), junk)))
        elif flag == "--sweep":
            argv.append(draw(st.one_of(st.sampled_from(["smoke", "nosuch"]), junk)))
        else:
            argv.append(draw(junk))
    if command in ("status", "compare", "export", "plot") and "--store" not in argv:
        argv += ["--store", str(work / "smoke.sqlite")]  # never the default out/runs.sqlite of the cwd
    return [str(a) for a in argv]


def test_generated_argument_lists_never_traceback(work, monkeypatch):
    (work / "gen").mkdir(exist_ok=True)
    monkeypatch.chdir(work / "gen")  # a relative --out (e.g. "smoke") lands here
    seen, codes = [], {}

    @settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(argvs(work))
    def check(argv):
        seen.append(argv)
        code, _, err = cli(*argv)
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == (0 if code == 0 else 1), (argv, err)
        codes[code] = codes.get(code, 0) + 1

    check()
    assert not (work / "typo.sqlite").exists()  # a mistyped store is never created
    assert len(seen) >= 50 and codes.get(0, 0) >= 5 and codes.get(2, 0) >= 20, codes


# --------------------------------------------------------------------------------------------------
# fitting options (F-api-04, F-api-09, F-api-10)
@pytest.mark.parametrize("case,kw,needle", [
    ("F-api-04", dict(xatol=-1.0), "FitOptions.xatol"),
    ("F-api-04/nan", dict(xatol=float("nan")), "FitOptions.xatol"),
    ("F-api-10", dict(n_steps=10**12), "FitOptions.n_steps"),
    ("fit-chains", dict(n_chains=10**12), "FitOptions.n_chains"),
    ("fit-seed", dict(seed=-1), "FitOptions.seed"),
    ("fit-eta", dict(eta="0.01"), "FitOptions.eta"),
])
def test_fit_options_refuse(monkeypatch, case, kw, needle):
    from phase_diagrams.fitting import FitOptions

    monkeypatch.setenv("SPRINGBLOCK_MEMORY_BUDGET", "1G")
    with pytest.raises(InputError, match=needle.replace(".", r"\.")):
        FitOptions(**kw)


def test_fit_curve_names_the_non_finite_layer():
    from phase_diagrams.fitting import fit_curve

    curve = np.linspace(3, 0, 8)
    curve[3] = np.inf
    with pytest.raises(InputError, match=r"non-finite values .*\[\[3\]\]"):  # F-api-09: not ">= 3 finite layers"
        fit_curve(curve)


def test_diagram_spec_memory_guard(monkeypatch):
    """C-20 through the Python API: the stand-alone diagram refuses before allocating."""
    from phase_diagrams.simulated import DiagramSpec
    from springblock.errors import ResourceError

    monkeypatch.setenv("SPRINGBLOCK_MEMORY_BUDGET", "1G")
    with pytest.raises(ResourceError, match="DiagramSpec.n_chains=1000000000000"):
        DiagramSpec(n_chains=10**12)
    assert DiagramSpec(n_chains=16).n_chains == 16


@pytest.mark.parametrize("kw,needle", [
    (dict(seed=-1), "CalibrationOptions.seed"),
    (dict(search_seed=2**64), "CalibrationOptions.search_seed"),
    (dict(predict_chains=0), "CalibrationOptions.predict_chains"),
    (dict(mu_range=("a", 1.0)), "CalibrationOptions.mu_range"),
    (dict(eps_range=(0.1,)), "CalibrationOptions.eps_range"),
    (dict(lams=(0.0, "x")), "CalibrationOptions.lams"),
    (dict(grid=10**5), "CalibrationOptions.grid"),
    (dict(n_chains=10**12), "CalibrationOptions.n_chains"),
])
def test_calibration_options_refuse(monkeypatch, kw, needle):
    from phase_diagrams.calibration import CalibrationOptions

    monkeypatch.setenv("SPRINGBLOCK_MEMORY_BUDGET", "1G")
    with pytest.raises(InputError, match=needle.replace(".", r"\.")):
        CalibrationOptions(**kw)
    assert CalibrationOptions().grid == 13


def test_failed_tasks_are_one_error_line_exit_1(work, monkeypatch):
    """A sweep whose tasks fail (here: every training raises) exits 1 with one error line."""
    import nets

    def broken(*a, **k):
        raise RuntimeError("training exploded")

    monkeypatch.setattr(nets, "train", broken)  # the serial backend trains in this process
    monkeypatch.setattr(nets, "train_ensemble", broken)
    store = work / "adir" / "failing.sqlite"
    code, out, err = cli("sweep", "smoke", "--store", store, "--backend", "serial", "--no-progress", "--no-simulate")
    if code == 0:
        pytest.skip("could not make the serial runner fail by patching (runner internals moved)")
    assert_one_error(code, err, 1, "failed", "rerun")
