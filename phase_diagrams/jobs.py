"""The jobs behind the command line, as Python functions (each CLI command calls one of these).

    from phase_diagrams import jobs
    summary = jobs.run_main("label-noise-small", store="out/runs.sqlite", out_dir="figures")
    per_cell, summary = jobs.compare_store("out/runs.sqlite", "label-noise-small")
    jobs.export("out/runs.sqlite", "runs.parquet", sweep="label-noise-small")
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

from phase_diagrams.compare import compare, measured_cells
from phase_diagrams.plots import plot_all
from phase_diagrams.runner import run_sweep
from phase_diagrams.simulated import simulate_for_spec
from phase_diagrams.spec import GridSpec, load_spec
from phase_diagrams.store import Store

log = logging.getLogger(__name__)

__all__ = ["add_runs", "sweep_and_simulate", "compare_store", "export", "read_export", "status_table", "run_main",
           "fit_job"]

#: Columns holding arrays (lists); exported as JSON text in CSV files.
ARRAY_COLUMNS = ("curve", "loads", "trajectory", "probe_epochs", "train_loss", "trace_ratio_curve", "probe_accuracy",
                 "col_value", "row_value", "times", "params")


def _store(store) -> Store:
    return store if isinstance(store, Store) else Store(store)


def _one_sweep(store: Store, sweep: str | None) -> str:
    names = store.sweeps()
    if sweep is not None:
        if sweep not in names:
            raise KeyError(f"no sweep {sweep!r} in {store.path} (sweeps: {', '.join(names) or 'none'})")
        return sweep
    if len(names) != 1:
        raise KeyError(f"{store.path} holds {len(names)} sweeps ({', '.join(names) or 'none'}); name one with --sweep")
    return names[0]


def sweep_and_simulate(spec, store, *, simulate: bool = True, **run_kw):
    """:func:`~phase_diagrams.runner.run_sweep`, then the simulated counterpart of every cell
    (:func:`~phase_diagrams.simulated.simulate_for_spec`, a few seconds) into the same store."""
    spec = load_spec(spec) if not isinstance(spec, GridSpec) else spec
    store = _store(store)
    report = run_sweep(spec, store, **run_kw)
    if simulate and spec.simulator.presets:
        t0 = time.perf_counter()
        simulate_for_spec(spec, store)
        log.info("simulated counterpart (%d presets) in %.1f s", len(spec.simulator.presets), time.perf_counter() - t0)
    return report


def add_runs(store, sweep: str, histories, cells, *, simulate: bool = True, **kw) -> GridSpec:
    """:meth:`Store.add_runs` (outside runs, e.g. :class:`nets.LoadCurveRecorder` histories), then
    the simulated counterpart of every cell when the synthetic spec has friction presets, so that
    :func:`compare_store`, :func:`~phase_diagrams.plots.plot_all`, :func:`fit_job` and
    :func:`export` work on the sweep. ``kw``: ``row_field``, ``col_field``, ``metadata``, ``simulator``."""
    store = _store(store)
    spec = store.add_runs(sweep, histories, cells, **kw)
    if simulate and spec.simulator.presets:
        simulate_for_spec(spec, store)
    return spec


def compare_store(store, sweep: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell and per-preset comparison of a stored sweep (:func:`~phase_diagrams.compare.compare`)."""
    store = _store(store)
    sweep = _one_sweep(store, sweep)
    spec = store.sweep_spec(sweep)
    sim = store.simulated(sweep)
    if sim.empty:
        raise KeyError(f"sweep {sweep!r} has no simulated cells in {store.path}; "
                       "run the sweep again with simulation on")
    return compare(measured_cells(store.runs(sweep), spec), sim, spec)


def status_table(store) -> pd.DataFrame:
    """One row per sweep of the store: total, done, diverged, failed, running, pending."""
    store = _store(store)
    return pd.DataFrame([dict(sweep=s, **store.progress(s)) for s in store.sweeps()])


def export(store, path, *, sweep: str | None = None, simulated: bool = False) -> Path:
    """Write the runs (or with ``simulated`` the simulated cells) of a store to ``path``.

    The format follows the suffix: ``.csv`` (array columns as JSON text), ``.parquet`` (native
    lists, via pyarrow) or ``.json`` / ``.jsonl`` (one JSON record per line, floats written exactly). ``sweep=None``
    exports every sweep. :func:`read_export` reads any of them back.
    """
    store = _store(store)
    df = store.simulated(sweep) if simulated else store.runs(sweep)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        out = df.copy()
        for c in ARRAY_COLUMNS:
            if c in out.columns:
                out[c] = out[c].map(lambda v: json.dumps(v))
        out.to_csv(path, index=False)
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix in (".json", ".jsonl"):  # full float precision (pandas' to_json rounds to 15 digits)
        with open(path, "w") as fh:
            for rec in df.to_dict(orient="records"):
                fh.write(json.dumps(rec, default=_plain) + "\n")
    else:
        raise ValueError(f"unknown export format {path.suffix!r}: use .csv, .parquet or .json")
    return path


def read_export(path) -> pd.DataFrame:
    """Read a file written by :func:`export` back into the store's table layout."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
        for c in ARRAY_COLUMNS:
            if c in df.columns:
                df[c] = df[c].map(lambda s: json.loads(s) if isinstance(s, str) else s)
        return df
    if suffix == ".parquet":
        df = pd.read_parquet(path)
        for c in ARRAY_COLUMNS:
            if c in df.columns:
                df[c] = df[c].map(_to_list)
        return df
    if suffix in (".json", ".jsonl"):
        with open(path) as fh:
            return pd.DataFrame([json.loads(line) for line in fh if line.strip()])
    raise ValueError(f"unknown export format {path.suffix!r}: use .csv, .parquet or .json")


def _plain(v):
    """JSON fallback for NumPy scalars and arrays."""
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


def _to_list(v):
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        return [_to_list(x) for x in v]
    return v


def run_main(spec="label-noise-small", store="out/runs.sqlite", out_dir="figures", **run_kw) -> dict:
    """The README's main job: sweep (resumable), simulate the counterpart, write every figure and
    the comparison table; return ``{"report", "summary", "figures"}``."""
    spec = load_spec(spec) if not isinstance(spec, GridSpec) else spec
    store = _store(store)
    report = sweep_and_simulate(spec, store, **run_kw)
    if report.ran and report.failed == report.ran:
        raise RuntimeError(f"every one of the {report.ran} tasks failed (stored as 'failed'); the first error:\n"
                           f"{report.failures[0][1]}")
    figures = plot_all(store, spec.name, out_dir)
    per_cell, summary = compare_store(store, spec.name) if spec.simulator.presets else (None, None)
    if per_cell is not None:
        per_cell.to_csv(Path(out_dir) / f"{spec.name}_comparison.csv", index=False)
    return dict(report=report, summary=summary, figures=figures)


def fit_job(store, sweep: str | None = None, out_dir="figures", *, target: str = "final", cells=None,
            workers: int = 1, progress: bool = True, **options) -> pd.DataFrame:
    """Fit spring-block parameters to every cell of a stored sweep
    (:func:`phase_diagrams.fitting.fit_store`, written to the store's ``fits`` table) and write
    ``{sweep}_fit_{target}_params`` (heat maps of the fitted parameters) and
    ``{sweep}_fit_{target}_curves`` (measured vs fitted per cell), PNG and PDF, plus
    ``{sweep}_fit_{target}.csv``. ``options`` are :class:`~phase_diagrams.fitting.FitOptions` fields."""
    from phase_diagrams.fitting import FitOptions, fit_store
    from phase_diagrams.plots import _save, plot_fit_heatmaps, plot_fitted_curves

    store = _store(store)
    sweep = _one_sweep(store, sweep)
    fits = fit_store(store, sweep, target=target, opts=FitOptions(**options), workers=workers, cells=cells,
                     progress=progress)
    spec = store.sweep_spec(sweep)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list = []
    _save(plot_fit_heatmaps(fits, f"{sweep}: fitted chain ({target} curve)", spec.columns.field),
          out / f"{sweep}_fit_{target}_params", written)
    _save(plot_fitted_curves(fits, f"{sweep}: measured vs fitted chain ({target})", spec.columns.field),
          out / f"{sweep}_fit_{target}_curves", written)
    fits.drop(columns=["fitted", "measured"]).to_csv(out / f"{sweep}_fit_{target}.csv", index=False)
    return fits
