"""The SQLite result store of phase-diagram sweeps (embedded; one file, no server).

Tables
------
``sweeps(name, spec_toml, created_at)``
    Every sweep registered in the store, with its spec.
``sweep_tasks(sweep, key, row, col, row_value, col_value, seed)``
    Which task (by key) sits in which cell of which sweep. A task is shared by every sweep
    that contains the same full config.
``runs(key, status, train_status, config, result, test_accuracy, curvature,
normalized_curvature, linearity, regime, epochs_run, wall_time, ensemble_size, error, version,
owner, host, pid, finished_at)``
    One row per finished task: ``status`` is ``done``, ``diverged`` or ``failed``
    (``error`` holds the message); ``config`` and ``result`` are JSON (the result holds the
    per-layer curves, the probe trajectory, the losses). Written in one transaction per task.
``claims(key, owner, host, pid, claimed_at)``
    Tasks a runner is working on. A claim is live while its runner's process is alive (same
    host) or, for another host, while it is younger than the lease (runners refresh their
    claims); stale claims are taken over, so a killed runner's tasks run again on resume.
Outside runs (:meth:`Store.add_runs`): histories trained elsewhere, under a synthetic sweep
spec and keys ``outside-<hash>``, with ``source = "outside"`` in their config.
``fits(sweep, row, col, target, fit, options, finished_at)``
    Spring-block parameters fitted to a cell (:mod:`phase_diagrams.fitting`), the fit as JSON.
``simulated(key, sweep, preset, row, col, alpha, col_value, eps, mu_forward, mu_backward,
curve, trajectory, times, linearity, curvature, normalized_curvature, regime, params,
finished_at)``
    The simulated counterpart of each cell, per friction preset.

Concurrency: WAL journal, ``busy_timeout`` 60 s, short ``BEGIN IMMEDIATE`` transactions, so
several runners (processes, or hosts on a shared file system that supports SQLite locking)
can share a store; a result row is inserted only if no row for its key exists, and a
runner's claims keep others off its tasks. A process killed at any point leaves the database
consistent (SQLite's atomic commit): at most its uncommitted task is lost.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from springblock.errors import InputError

__all__ = ["Store", "StoreError", "as_store", "STATUSES", "LEASE_S", "RESULT_FIELDS", "ARRAY_COLUMNS"]

#: Per-run results stored as JSON (arrays, or scalars of the leaky-ResNet probes): columns of :meth:`Store.runs`.
RESULT_FIELDS = ("curve", "loads", "trajectory", "probe_epochs", "train_loss", "trace_ratio_curve", "probe_accuracy",
                 "rho", "loads_per_depth", "min_coi", "k_hat_median", "test_loss")
#: Columns of the runs and simulated tables that may hold arrays (exported as JSON text in CSV files).
ARRAY_COLUMNS = RESULT_FIELDS + ("col_value", "row_value", "times", "params")

STATUSES = ("done", "diverged", "failed")
#: A claim from another host expires after this many seconds without a refresh.
LEASE_S = 1800.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    spec_toml TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_tasks (
    sweep TEXT NOT NULL,
    key TEXT NOT NULL,
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    row_value TEXT NOT NULL,
    col_value TEXT NOT NULL,
    seed INTEGER NOT NULL,
    PRIMARY KEY (sweep, key)
);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('done', 'diverged', 'failed')),
    train_status TEXT,
    config TEXT NOT NULL,
    result TEXT,
    test_accuracy REAL,
    curvature REAL,
    normalized_curvature REAL,
    linearity REAL,
    regime TEXT,
    epochs_run INTEGER,
    wall_time REAL,
    ensemble_size INTEGER,
    error TEXT,
    version TEXT,
    owner TEXT,
    host TEXT,
    pid INTEGER,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS simulated (
    key TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    preset TEXT NOT NULL,
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    alpha REAL NOT NULL,
    col_value TEXT NOT NULL,
    eps REAL NOT NULL,
    mu_forward REAL NOT NULL,
    mu_backward REAL NOT NULL,
    curve TEXT NOT NULL,
    trajectory TEXT,
    times TEXT,
    linearity REAL,
    curvature REAL,
    normalized_curvature REAL,
    regime TEXT,
    params TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS simulated_sweep ON simulated (sweep, preset);
CREATE TABLE IF NOT EXISTS fits (
    sweep TEXT NOT NULL,
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    target TEXT NOT NULL,
    fit TEXT NOT NULL,
    options TEXT NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (sweep, row, col, target)
);
"""

@functools.lru_cache(maxsize=1)
def _config_defaults() -> dict:
    """Defaults of the training config, for fields a stored config omits (written only when set)."""
    import dataclasses

    from nets.config import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


#: Config fields added with a default that differs from what earlier versions did: a stored
#: config or spec without the field was run the old way. (Before ``subset`` existed every run
#: used the NumPy subset; the default is now the original code's subset.)
LEGACY_DEFAULTS = {"subset": "numpy"}
#: Spec keys renamed since a store may have been written: ``(table, old, new)``.
LEGACY_NAMES = (("simulator", "pin", "pin_fraction"),)


def _stored_spec(text: str):
    """A spec stored as TOML, validated, with :data:`LEGACY_DEFAULTS` for fields it lacks."""
    import tomllib

    from phase_diagrams.spec import spec_from_dict

    d = tomllib.loads(text)
    train = d.setdefault("train", {})
    for name, value in LEGACY_DEFAULTS.items():
        train.setdefault(name, value)
    for table, old, new in LEGACY_NAMES:
        if old in d.get(table, {}):
            d[table][new] = d[table].pop(old)
    return spec_from_dict(d)

_SUMMARY = ("test_accuracy", "curvature", "normalized_curvature", "linearity", "regime", "epochs_run",
            "wall_time", "ensemble_size")


def _finite_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def _where(**equal) -> tuple[str, tuple]:
    """`` WHERE a = ? AND b = ?`` over the given columns whose value is not None, and the args."""
    used = {k: v for k, v in equal.items() if v is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{k} = ?" for k in used), tuple(used.values())


def _version() -> str:
    try:
        return metadata.version("springblock")
    except metadata.PackageNotFoundError:
        return "unknown"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreError(InputError):
    """A store path that cannot be used: missing (where it must exist), a directory, not a SQLite
    file, corrupt (``PRAGMA integrity_check`` fails), another program's database, or unreadable."""


_SQLITE_MAGIC = b"SQLite format 3\x00"


def as_store(store) -> Store:
    """``store`` itself if it is a :class:`Store`, else the store at that path (created if missing).

    Every function of the package that takes a store takes it first and accepts either form. The
    Python API keeps this lenient form (a new path is a new, empty store); the command line opens
    the stores of its read-only commands with :meth:`Store.open`, which refuses a missing file.

    Raises
    ------
    TypeError
        Neither a path nor a Store (e.g. a spec passed where the store goes).
    StoreError
        The path is a directory, not a SQLite store, corrupt, or another program's database.
    """
    if isinstance(store, Store):
        return store
    if isinstance(store, (str, os.PathLike)):
        return Store(store)
    raise TypeError(f"store: expected a path or a Store, got {type(store).__name__} "
                    "(arguments go store first: e.g. run_sweep(store, spec))")


class Store:
    """A sweep result store in one SQLite file (created with its schema if missing).

    Parameters
    ----------
    path : path of the ``.sqlite`` file (parent directories are created)
    timeout : seconds to wait for another writer's lock
    create : create the file if it is missing (default); ``False`` (or :meth:`open`) refuses a
        missing file and runs ``PRAGMA integrity_check`` on an existing one

    Raises
    ------
    StoreError
        Missing file with ``create=False``; a directory; a file that is not a SQLite database,
        is corrupt, holds another program's tables, or cannot be opened (e.g. read-only directory:
        the WAL journal needs a writable directory).
    """

    def __init__(self, path, timeout: float = 60.0, *, create: bool = True):
        self.path = Path(path)
        self._timeout = float(timeout)
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        existed = self.path.exists()
        self._check_file(create)
        sidecars = [Path(f"{self.path}{x}") for x in ("-wal", "-shm")]
        fresh = [p for p in sidecars if not p.exists()]
        try:
            self._open(existed, create)
        except StoreError:
            for p in fresh:  # the journal files SQLite made while we looked at a bad file
                if p.exists() and (p.name.endswith("-shm") or p.stat().st_size == 0):
                    p.unlink(missing_ok=True)
            raise

    def _open(self, existed: bool, create: bool) -> None:
        try:
            if not existed:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            con = self._connect()
            try:
                if existed:
                    self._check_schema(con, full=not create)
                con.executescript(_SCHEMA)
            finally:
                con.close()
        except sqlite3.Error as err:
            raise self._error(err) from None
        except OSError as err:
            raise StoreError(f"store {str(self.path)!r}: cannot create it: {err.strerror or err}") from None

    @classmethod
    def open(cls, path, timeout: float = 60.0) -> Store:
        """An existing, sound store (``create=False``): for commands that only read."""
        return cls(path, timeout, create=False)

    def _check_file(self, create: bool) -> None:
        p = self.path
        if p.is_dir():
            raise StoreError(f"store {str(p)!r}: is a directory, not a store file")
        if not p.exists():
            if not create:
                raise StoreError(f"store {str(p)!r}: no such file (check the path; a sweep creates it: "
                                 "python -m phase_diagrams sweep SPEC --store PATH)")
            return
        try:
            with open(p, "rb") as fh:
                head = fh.read(16)
        except OSError as err:
            raise StoreError(f"store {str(p)!r}: cannot read it: {err.strerror or err}") from None
        if head and head != _SQLITE_MAGIC:
            raise StoreError(f"store {str(p)!r}: not a SQLite store (wrong file header; truncated, corrupt "
                             "or another kind of file)")

    def _check_schema(self, con, *, full: bool) -> None:
        if full:
            status = con.execute("PRAGMA integrity_check").fetchone()[0]
            if status != "ok":
                raise StoreError(f"store {str(self.path)!r}: corrupt (PRAGMA integrity_check: {status[:200]}); "
                                 "restore it from a copy or export what is readable")
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "runs" in tables:
            cols = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            if not {"key", "status", "result"} <= cols:
                raise StoreError(f"store {str(self.path)!r}: its 'runs' table is another program's "
                                 f"(columns {', '.join(sorted(cols))}); use a new store path")

    def _error(self, err: sqlite3.Error) -> StoreError:
        msg = str(err)
        why = msg
        if "unable to open" in msg or "readonly" in msg:
            why = (f"{msg} (is the directory read-only or missing? the store's WAL journal needs a "
                   "writable directory)")
        elif "not a database" in msg or "malformed" in msg:
            why = f"{msg} (not a SQLite store, or a corrupt one)"
        return StoreError(f"store {str(self.path)!r}: {why}")

    # -------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def _tx(self):
        """One ``BEGIN IMMEDIATE`` transaction (write lock taken up front: no upgrade deadlock)."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _query(self, sql, args=()) -> list[tuple]:
        con = self._connect()
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` (``"ok"`` for a sound file)."""
        return self._query("PRAGMA integrity_check")[0][0]

    # -------------------------------------------------------------------------------------
    # sweeps
    def register_sweep(self, spec) -> None:
        """Record ``spec`` (a :class:`~phase_diagrams.spec.GridSpec`) and its tasks.

        Raises ValueError if a different spec is already registered under the same name. Specs
        are compared as validated specs, not as text: a spec stored by an older version (without
        fields added since, which take their defaults) equals the same spec today, and its text
        is updated to today's layout.
        """
        from phase_diagrams.spec import spec_to_toml

        text = spec_to_toml(spec)
        with self._tx() as con:
            row = con.execute("SELECT spec_toml FROM sweeps WHERE name = ?", (spec.name,)).fetchone()
            if row is not None and row[0] != text:
                old = _stored_spec(row[0])
                if old != spec:
                    hint = ""
                    if old.train.subset != spec.train.subset:
                        hint = (f" (it was trained on the {old.train.subset!r} training subset, this spec uses "
                                f"{spec.train.subset!r}: set train.subset = {old.train.subset!r} to resume it)")
                    raise ValueError(f"store {self.path} already has a different sweep named {spec.name!r}{hint}; "
                                     "rename the sweep (spec 'name') or use another store")
                con.execute("UPDATE sweeps SET spec_toml = ? WHERE name = ?", (text, spec.name))
            if row is None:
                con.execute("INSERT INTO sweeps VALUES (?, ?, ?)", (spec.name, text, time.time()))
            con.executemany(
                "INSERT OR IGNORE INTO sweep_tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(spec.name, t["key"], t["row"], t["col"], json.dumps(t["row_value"]),
                  json.dumps(t["col_value"]), t["seed"]) for t in spec.tasks()],
            )

    def sweeps(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM sweeps ORDER BY created_at")]

    def sweep_name(self, sweep: str | None = None) -> str:
        """``sweep`` if the store holds it; with ``None``, the store's only sweep.

        Raises
        ------
        KeyError
            No such sweep, or ``None`` while the store holds zero or several sweeps.
        """
        names = self.sweeps()
        if sweep is not None:
            if sweep not in names:
                raise KeyError(f"no sweep {sweep!r} in {self.path} (sweeps: {', '.join(names) or 'none'})")
            return sweep
        if len(names) != 1:
            raise KeyError(f"{self.path} holds {len(names)} sweeps ({', '.join(names) or 'none'}); "
                           "name one with --sweep")
        return names[0]

    def sweep_spec(self, name: str):
        """The :class:`~phase_diagrams.spec.GridSpec` registered under ``name``."""
        rows = self._query("SELECT spec_toml FROM sweeps WHERE name = ?", (name,))
        if not rows:
            known = ", ".join(self.sweeps()) or "none"
            raise KeyError(f"no sweep {name!r} in {self.path} (sweeps: {known})")
        return _stored_spec(rows[0][0])

    def finished_keys(self, keys=None, statuses=("done", "diverged")) -> set[str]:
        """Keys among ``keys`` (all if None) with a result of one of ``statuses``."""
        q = f"SELECT key FROM runs WHERE status IN ({','.join('?' * len(statuses))})"
        found = {r[0] for r in self._query(q, tuple(statuses))}
        return found if keys is None else found & set(keys)

    # -------------------------------------------------------------------------------------
    # claims
    def _claim_is_live(self, owner, host, pid, claimed_at, now) -> bool:
        if owner == self.owner:
            return True
        if host == self.host:
            return _pid_alive(pid)
        return now - claimed_at < LEASE_S

    def claim(self, keys) -> list[str]:
        """Claim the ``keys`` that have no final result and no live claim by another runner;
        return those claimed (in order). Stale claims (dead process, expired lease) are taken
        over. A result of status ``failed`` does not block a claim (failed tasks run again)."""
        keys = list(keys)
        if not keys:
            return []
        now = time.time()
        got = []
        with self._tx() as con:
            marks = ",".join("?" * len(keys))
            finished = {r[0] for r in con.execute(
                f"SELECT key FROM runs WHERE status != 'failed' AND key IN ({marks})", keys)}
            claims = {r[0]: r[1:] for r in con.execute(
                f"SELECT key, owner, host, pid, claimed_at FROM claims WHERE key IN ({marks})", keys)}
            for k in keys:
                if k in finished:
                    continue
                c = claims.get(k)
                if c is not None and c[0] != self.owner and self._claim_is_live(*c, now):
                    continue
                con.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                            (k, self.owner, self.host, self.pid, now))
                got.append(k)
        return got

    def refresh_claims(self) -> None:
        """Renew this runner's claims (keeps them live for runners on other hosts)."""
        with self._tx() as con:
            con.execute("UPDATE claims SET claimed_at = ? WHERE owner = ?", (time.time(), self.owner))

    def release(self, keys) -> None:
        """Drop this runner's claims on ``keys``."""
        keys = list(keys)
        if keys:
            with self._tx() as con:
                con.executemany("DELETE FROM claims WHERE key = ? AND owner = ?", [(k, self.owner) for k in keys])

    def live_claims(self) -> set[str]:
        now = time.time()
        rows = self._query("SELECT key, owner, host, pid, claimed_at FROM claims")
        return {r[0] for r in rows if self._claim_is_live(*r[1:], now)}

    # -------------------------------------------------------------------------------------
    # results
    def write_result(self, key: str, record: dict) -> bool:
        """Store one task's record in one transaction and drop its claim.

        ``record``: the task's :meth:`nets.History.to_record` plus ``status`` (``done``,
        ``diverged``, ``failed``), ``train_status`` and, for a failure, ``error``. A final
        (non-failed) row already present for ``key`` is kept and this one dropped (returns
        False): two runners never produce two rows or overwrite a result.
        """
        status = record["status"]
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        config = record["config"]
        result = {k: v for k, v in record.items() if k not in ("config", "status", "error")}
        summary = {k: record.get(k) for k in _SUMMARY}
        for k in ("test_accuracy", "curvature", "normalized_curvature", "linearity", "wall_time"):
            summary[k] = _finite_or_none(summary[k])
        with self._tx() as con:
            old = con.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
            written = old is None or old[0] == "failed"
            if written:
                con.execute(
                    "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, status, record.get("train_status"), json.dumps(config, sort_keys=True),
                     json.dumps(result, allow_nan=True), summary["test_accuracy"], summary["curvature"],
                     summary["normalized_curvature"], summary["linearity"], summary["regime"],
                     summary["epochs_run"], summary["wall_time"], summary["ensemble_size"],
                     record.get("error"), _version(), self.owner, self.host, self.pid, time.time()),
                )
            con.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))
        return written

    # -------------------------------------------------------------------------------------
    # outside runs
    def add_runs(self, sweep: str, histories, cells, *, row_field: str = "alpha", col_field: str = "label_noise",
                 metadata: dict | None = None, simulator: dict | None = None):
        """Record runs trained outside the package (e.g. :class:`nets.LoadCurveRecorder`
        histories) as the sweep ``sweep``, so that plot, compare, fit and export work on them.

        Parameters
        ----------
        histories : sequence of :class:`nets.History`
            From :attr:`nets.LoadCurveRecorder.history` (or :func:`nets.train`).
        cells : sequence of ``(row_value, col_value, seed)``, one per history
            Where each run sits in the grid; the axes are ``row_field`` × ``col_field``, each a
            :class:`nets.TrainConfig` field (default: LeakyReLU slope alpha × label noise, the
            original phase diagram) whose values must be valid for that field.
        metadata : dict, optional
            JSON-able description common to all runs (model, data, optimiser...). Stored with each
            run's config, next to the history's own ``meta`` and the cell values; the runs table
            (:meth:`runs`) shows each key as a column. Training-config columns an outside run does
            not set are None (not the training defaults).
        simulator : dict, optional
            ``[simulator]`` entries of the synthetic spec. Default: the friction presets when the
            rows are alpha and the columns a noise axis, else none (then there is no comparison).

        Returns
        -------
        GridSpec
            The synthetic spec registered for the sweep: rows and columns hold the values of
            ``cells`` (sorted), ``train.depth`` the number of hidden layers ``L`` of the curves
            (the chain of the simulated counterpart has ``L`` blocks). Adding runs to an existing
            outside sweep extends its axes; a cell and seed already stored keeps its first result.
            Every curve of one cell must have the same depth.

        Keys are ``"outside-"`` + a hash of (sweep, row value, column value, seed): outside runs never
        share results with trained tasks.
        """
        import hashlib

        from phase_diagrams.spec import NOISE_DIRECTION, spec_from_dict, spec_to_toml

        histories, cells = list(histories), [tuple(c) for c in cells]
        if len(histories) != len(cells):
            raise ValueError(f"{len(histories)} histories but {len(cells)} cells: give one (row_value, col_value, "
                             "seed) per history")
        if not histories:
            raise ValueError("no histories to add")
        for n, c in enumerate(cells):
            if len(c) != 3:
                raise ValueError(f"cells[{n}] = {c!r}: expected (row_value, col_value, seed)")
        depths = [len(h.final_curve) - 1 for h in histories]
        by_cell: dict = {}
        for (rv, cv, _), d in zip(cells, depths, strict=True):
            if by_cell.setdefault((rv, cv), d) != d:
                raise ValueError(f"cell ({row_field}={rv!r}, {col_field}={cv!r}) has curves of {by_cell[(rv, cv)]} and "
                                 f"{d} hidden layers: runs averaged in one cell need the same depth")
        old = None
        rows_v, cols_v, seeds = [c[0] for c in cells], [c[1] for c in cells], [int(c[2]) for c in cells]
        if sweep in self.sweeps():
            keys = [r[0] for r in self._query("SELECT key FROM sweep_tasks WHERE sweep = ?", (sweep,))]
            if not all(k.startswith("outside-") for k in keys):
                raise ValueError(f"sweep {sweep!r} in {self.path} was trained by a sweep spec; add outside runs "
                                 "under another name")
            old = self.sweep_spec(sweep)
            if (old.rows.field, old.columns.field) != (row_field, col_field):
                raise ValueError(f"sweep {sweep!r} has axes {old.rows.field} x {old.columns.field}, not "
                                 f"{row_field} x {col_field}")
            rows_v, cols_v, seeds = (list(old.rows.values) + rows_v, list(old.columns.values) + cols_v,
                                     list(old.seeds) + seeds)
            depths.append(old.train.depth)

        def uniq(vals):
            return sorted(dict.fromkeys(vals), key=lambda v: (v is None, v if v is not None else 0))

        counts = np.bincount(depths)
        sim = dict(simulator) if simulator is not None else (
            {} if row_field == "alpha" and col_field in NOISE_DIRECTION else {"presets": []})
        spec = spec_from_dict(dict(
            name=sweep, seeds=uniq(seeds), ensemble_size=1,
            train=dict(depth=int(counts.argmax()), epochs=max(1, max(int(h.epochs_run) for h in histories)),
                       probe_every=0),
            rows=dict(field=row_field, values=uniq(rows_v)), columns=dict(field=col_field, values=uniq(cols_v)),
            simulator=sim), source=f"outside sweep {sweep!r}")
        row_of = {v: i for i, v in enumerate(spec.rows.values)}
        col_of = {v: j for j, v in enumerate(spec.columns.values)}
        base = dict(metadata or {})
        tasks, records = [], []
        for h, (rv, cv, seed) in zip(histories, cells, strict=True):
            rec = h.to_record()
            config = h.config.to_dict() if h.config is not None else {}
            config.update(h.meta or {})
            config.update(base)
            config.update({row_field: spec.rows.values[row_of[rv]], col_field: spec.columns.values[col_of[cv]],
                           "seed": int(seed), "source": "outside", "depth": len(h.final_curve) - 1})
            try:
                blob = json.dumps(dict(sweep=sweep, row=config[row_field], col=config[col_field], seed=int(seed)),
                                  sort_keys=True)
                json.dumps(config)
            except TypeError as err:
                raise ValueError(f"metadata must be JSON-able: {err}") from None
            key = "outside-" + hashlib.sha256(blob.encode()).hexdigest()[:20]
            result = {k: v for k, v in rec.items() if k not in config}
            result.update(config=config, status="diverged" if h.status == "diverged" else "done",
                          train_status=h.status)
            tasks.append((sweep, key, row_of[rv], col_of[cv], json.dumps(spec.rows.values[row_of[rv]]),
                          json.dumps(spec.columns.values[col_of[cv]]), int(seed)))
            records.append((key, result))
        text = spec_to_toml(spec)
        with self._tx() as con:
            if old is None:
                con.execute("INSERT INTO sweeps VALUES (?, ?, ?)", (sweep, text, time.time()))
            else:  # extended axes: re-index the stored tasks
                con.execute("UPDATE sweeps SET spec_toml = ? WHERE name = ?", (text, sweep))
                for key, rv, cv in con.execute("SELECT key, row_value, col_value FROM sweep_tasks WHERE sweep = ?",
                                               (sweep,)).fetchall():
                    con.execute("UPDATE sweep_tasks SET row = ?, col = ? WHERE sweep = ? AND key = ?",
                                (row_of[json.loads(rv)], col_of[json.loads(cv)], sweep, key))
            con.executemany("INSERT OR IGNORE INTO sweep_tasks VALUES (?, ?, ?, ?, ?, ?, ?)", tasks)
        for key, rec in records:
            self.write_result(key, rec)
        return spec

    def runs(self, sweep: str | None = None, *, with_arrays: bool = True) -> pd.DataFrame:
        """Tidy table: one row per (sweep task) with a result.

        Columns: sweep, key, row, col, row_value, col_value, seed, status, train_status, the
        summary numbers, error, version, finished_at, every config field (``cfg_`` prefixed
        where it clashes), and with ``with_arrays`` the per-layer ``curve``, ``loads``,
        ``trajectory`` (probes × layers), ``probe_epochs``, ``train_loss``,
        ``trace_ratio_curve`` as lists.
        """
        q = ("SELECT t.sweep, t.key, t.row, t.col, t.row_value, t.col_value, t.seed, r.status, "
             "r.train_status, r.test_accuracy, r.curvature, r.normalized_curvature, r.linearity, r.regime, "
             "r.epochs_run, r.wall_time, r.ensemble_size, r.error, r.version, r.finished_at, r.config, "
             "r.result FROM sweep_tasks t JOIN runs r ON r.key = t.key")
        args = ()
        if sweep is not None:
            q += " WHERE t.sweep = ?"
            args = (sweep,)
        q += " ORDER BY t.sweep, t.seed, t.col, t.row"
        cols = ["sweep", "key", "row", "col", "row_value", "col_value", "seed", "status", "train_status",
                "test_accuracy", "curvature", "normalized_curvature", "linearity", "regime", "epochs_run",
                "wall_time", "ensemble_size", "error", "version", "finished_at", "config", "result"]
        df = pd.DataFrame(self._query(q, args), columns=cols)
        if df.empty:
            return df.drop(columns=["config", "result"])
        df["row_value"] = df["row_value"].map(json.loads)
        df["col_value"] = df["col_value"].map(json.loads)
        configs = df["config"].map(json.loads)
        # union over rows: configs omit optional fields at their defaults (TrainConfig.to_dict)
        for name in dict.fromkeys([k for c in configs for k in c] + list(LEGACY_DEFAULTS)):
            col = name if name not in df.columns else f"cfg_{name}"
            default = LEGACY_DEFAULTS.get(name, _config_defaults().get(name))
            # an outside run (add_runs) has no training config: what it does not set stays None
            df[col] = configs.map(lambda c, n=name, d=default: c.get(n, None if c.get("source") == "outside" else d))
        if with_arrays:
            results = df["result"].map(lambda s: json.loads(s) if s else {})
            for name in RESULT_FIELDS:
                df[name] = results.map(lambda r, n=name: r.get(n))
        return df.drop(columns=["config", "result"])

    def progress(self, sweep: str) -> dict:
        """Counts for one sweep: total, done, diverged, failed, running (live claims), pending."""
        keys = [r[0] for r in self._query("SELECT key FROM sweep_tasks WHERE sweep = ?", (sweep,))]
        if not keys and sweep not in self.sweeps():
            raise KeyError(f"no sweep {sweep!r} in {self.path}")
        status = dict(self._query(
            "SELECT r.key, r.status FROM runs r JOIN sweep_tasks t ON t.key = r.key WHERE t.sweep = ?", (sweep,)))
        live = self.live_claims()
        out = {"total": len(keys), "done": 0, "diverged": 0, "failed": 0, "running": 0, "pending": 0}
        for k in keys:
            s = status.get(k)
            if s in ("done", "diverged"):
                out[s] += 1
            elif k in live:
                out["running"] += 1
            elif s == "failed":
                out["failed"] += 1
            else:
                out["pending"] += 1
        return out

    # -------------------------------------------------------------------------------------
    # simulated counterpart
    def write_simulated(self, rows: list[dict]) -> None:
        """Insert or replace simulated cells (one transaction for the batch of one preset)."""
        with self._tx() as con:
            con.executemany(
                "INSERT OR REPLACE INTO simulated VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r["key"], r["sweep"], r["preset"], r["row"], r["col"], r["alpha"], json.dumps(r["col_value"]),
                  r["eps"], r["mu_forward"], r["mu_backward"], json.dumps(r["curve"]),
                  json.dumps(r.get("trajectory")), json.dumps(r.get("times")), _finite_or_none(r["linearity"]),
                  _finite_or_none(r["curvature"]), _finite_or_none(r["normalized_curvature"]), r["regime"],
                  json.dumps(r["params"]), time.time()) for r in rows],
            )

    def simulated(self, sweep: str | None = None, preset: str | None = None) -> pd.DataFrame:
        """Tidy table of simulated cells (arrays as lists)."""
        q = ("SELECT key, sweep, preset, row, col, alpha, col_value, eps, mu_forward, mu_backward, curve, "
             "trajectory, times, linearity, curvature, normalized_curvature, regime, params FROM simulated")
        where, args = _where(sweep=sweep, preset=preset)
        q += where + " ORDER BY sweep, preset, col, row"
        cols = ["key", "sweep", "preset", "row", "col", "alpha", "col_value", "eps", "mu_forward", "mu_backward",
                "curve", "trajectory", "times", "linearity", "curvature", "normalized_curvature", "regime", "params"]
        df = pd.DataFrame(self._query(q, tuple(args)), columns=cols)
        for c in ("col_value", "curve", "trajectory", "times", "params"):
            df[c] = df[c].map(json.loads)
        return df

    # -------------------------------------------------------------------------------------
    # fits
    def write_fits(self, sweep: str, fits: pd.DataFrame, options: dict) -> None:
        """Insert or replace the fitted cells of ``sweep`` (rows of
        :func:`phase_diagrams.fitting.fit_cells`) in one transaction."""
        opts = json.dumps(options, sort_keys=True)
        rows = []
        for rec in fits.to_dict(orient="records"):
            clean = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in rec.items()}
            rows.append((sweep, int(rec["row"]), int(rec["col"]), rec["target"], json.dumps(clean, default=str),
                         opts, time.time()))
        with self._tx() as con:
            con.executemany("INSERT OR REPLACE INTO fits VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def fits(self, sweep: str | None = None, target: str | None = None) -> pd.DataFrame:
        """Stored fits, one row per (sweep, cell, target), columns as written."""
        where, args = _where(sweep=sweep, target=target)
        q = "SELECT sweep, fit FROM fits" + where + " ORDER BY sweep, target, col, row"
        return pd.DataFrame([dict(json.loads(f), sweep=s) for s, f in self._query(q, tuple(args))])
