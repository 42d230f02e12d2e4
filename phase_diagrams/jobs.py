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

import numpy as np
import pandas as pd

from phase_diagrams.compare import compare, measured_cells
from phase_diagrams.plots import plot_all
from phase_diagrams.runner import run_sweep
from phase_diagrams.simulated import simulate_for_spec
from phase_diagrams.spec import GridSpec, load_spec
from phase_diagrams.store import Store

log = logging.getLogger(__name__)

__all__ = ["add_runs", "sweep_and_simulate", "compare_store", "export", "read_export", "status_table", "run_main",
           "fit_job", "calibrate_job", "calibrated_rows", "CALIBRATED"]

#: The simulated preset under which a sweep's calibrated chain is stored.
CALIBRATED = "calibrated"

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
                       "run the sweep again with simulation on, or `python -m phase_diagrams calibrate`")
    presets = sorted(dict.fromkeys(sim["preset"]), key=lambda p: p != CALIBRATED)  # the calibrated chain first
    return compare(measured_cells(store.runs(sweep), spec), sim, spec, presets)


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


def run_main(spec="label-noise-small", store="out/runs.sqlite", out_dir="figures", *, calibrate: bool = True,
             scores=("seed",), **run_kw) -> dict:
    """The README's main job: sweep (resumable), simulate the counterpart, calibrate the chain to the
    measured diagram (:func:`calibrate_job`; the default comparison, next to the seed ceiling; the
    friction presets stay as named alternatives; ``scores``: the held-out refits to score, by default
    the held-out seed), write every figure and the comparison table; return
    ``{"report", "summary", "figures", "calibration", "scores"}``."""
    spec = load_spec(spec) if not isinstance(spec, GridSpec) else spec
    store = _store(store)
    report = sweep_and_simulate(spec, store, **run_kw)
    if report.ran and report.failed == report.ran:
        raise RuntimeError(f"every one of the {report.ran} tasks failed (stored as 'failed'); the first error:\n"
                           f"{report.failures[0][1]}")
    calibration = None
    if calibrate and spec.rows.field == "alpha" and len(spec.seeds) >= 2:
        res = calibrate_job(store, spec.name, out_dir, scores=scores, progress=run_kw.get("progress", True))
        calibration = res["calibration"], res["scores"]
    elif calibrate:
        log.warning("no calibrated chain for %s: calibration needs rows = alpha and >= 2 seeds", spec.name)
    figures = plot_all(store, spec.name, out_dir)
    per_cell, summary = (compare_store(store, spec.name) if spec.simulator.presets or calibration
                         else (None, None))
    if per_cell is not None:
        per_cell.to_csv(Path(out_dir) / f"{spec.name}_comparison.csv", index=False)
    return dict(report=report, summary=summary, figures=figures,
                calibration=None if calibration is None else calibration[0],
                scores=None if calibration is None else calibration[1])


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


def calibrated_rows(cal, spec: GridSpec) -> list[dict]:
    """The calibrated chain's prediction at every cell of ``spec``, as rows of the store's
    ``simulated`` table (preset :data:`CALIBRATED`), so plots and comparisons treat it like a preset."""
    import dataclasses as _dc

    pairs = [(float(rv), cv) for _, _, rv, cv in spec.cells()]
    pred = cal.predict(pairs)
    rows = []
    for (i, j, rv, cv), (_, p) in zip(spec.cells(), pred.iterrows(), strict=True):
        c = [float(v) for v in p["curve"]]
        rows.append(dict(
            key=f"{spec.name}/{CALIBRATED}/{i}/{j}", sweep=spec.name, preset=CALIBRATED, row=i, col=j,
            alpha=float(rv), col_value=cv, eps=float(p["eps"]), mu_forward=float(p["mu_forward"]),
            mu_backward=float(p["mu_backward"]), curve=c, trajectory=[list(map(float, r)) for r in p["trajectory"]],
            times=[float(cal.params["tau"] * e) for e in cal.data.epochs],
            linearity=float(np.std(-np.diff(c))), curvature=float(p["curvature"]),
            normalized_curvature=float(p["normalized_curvature"]), regime=p["regime"],
            params=dict(map=cal.params, lam=float(p["lam"]), tau=float(p["tau"]), n_chains=cal.opts.predict_chains,
                        options=_dc.asdict(cal.opts)),
        ))
    return rows


def calibrate_job(store, sweep: str | None = None, out_dir="figures", *, transfer_from: str | None = None,
                  scores=("seed", "column", "row"), opts=None, progress: bool = True) -> dict:
    """Calibrate the chain–network map of a stored sweep (:func:`phase_diagrams.calibration.calibrate`),
    store its predictions as the simulated preset ``calibrated``, and write
    ``{sweep}_calibrated_side_by_side`` (measured | calibrated chain), ``{sweep}_calibration_map``
    (μ→(α), μ←(α), ε(noise) with 95 % bands), ``{sweep}_calibration_scores`` (held-out
    agreement next to the seed ceiling), PNG and PDF, and ``{sweep}_calibration.csv`` (the knobs)
    and ``{sweep}_calibration_scores.csv``.

    ``transfer_from``: another sweep of the store; its calibrated friction map, lam and tau are
    kept and only the noise map is fitted to ``sweep``. ``scores``: which held-out refits to score
    (:meth:`~phase_diagrams.calibration.Calibration.scores`; ``()`` for in-sample only). Returns
    ``{"calibration", "source", "scores", "figures"}`` (``source``: the calibration of ``transfer_from``
    or None).
    """
    from phase_diagrams.calibration import CalibrationOptions, calibrate
    from phase_diagrams.compare import measured_cells, simulated_cells
    from phase_diagrams.plots import _save, plot_calibration_map, plot_scores, plot_side_by_side

    store = _store(store)
    sweep = _one_sweep(store, sweep)
    opts = opts or CalibrationOptions()
    spec = store.sweep_spec(sweep)
    if spec.rows.field != "alpha":
        raise ValueError(f"sweep {sweep!r} has rows {spec.rows.field!r}: calibrate needs rows = alpha")
    source = None
    if transfer_from is not None:
        src_name = _one_sweep(store, transfer_from)
        src_spec = store.sweep_spec(src_name)
        source = calibrate(store.runs(src_name), opts=opts, noise_field=src_spec.columns.field)
        log.info("calibrated %s (the friction map to transfer) in %.0f s", src_name, source.wall_s)
    runs = store.runs(sweep)
    cal = calibrate(runs, opts=opts, transfer_from=source, noise_field=spec.columns.field)
    log.info("calibrated %s in %.0f s", sweep, cal.wall_s)

    def tell(kind, n, total):
        if progress:
            log.warning("  scores: held-out %s %d/%d", kind, n, total)

    table = cal.scores(which=tuple(scores or ()), progress=tell)
    store.write_simulated(calibrated_rows(cal, spec))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list = []
    cells = measured_cells(runs, spec)
    sc = simulated_cells(store.simulated(sweep), spec, CALIBRATED)
    how = f"transferred from {transfer_from}" if transfer_from else "calibrated"
    _save(plot_side_by_side(cells, sc, title=sweep, col_label=spec.columns.field, preset=how),
          out / f"{sweep}_calibrated_side_by_side", written)
    _save(plot_calibration_map(cal.map_curves(), f"{sweep}: calibrated map ({how}; bands: 95 %)"),
          out / f"{sweep}_calibration_map", written)
    _save(plot_scores(table, f"{sweep}: calibrated chain vs the seed ceiling"), out / f"{sweep}_calibration_scores",
          written)
    cal.params_table().to_csv(out / f"{sweep}_calibration.csv", index=False)
    table.to_csv(out / f"{sweep}_calibration_scores.csv", index=False)
    written += [out / f"{sweep}_calibration.csv", out / f"{sweep}_calibration_scores.csv"]
    return dict(calibration=cal, source=source, scores=table, figures=written)
