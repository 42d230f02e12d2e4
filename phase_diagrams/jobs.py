"""The jobs behind the command line, as Python functions (each CLI command calls one of these).

Every job that reads or writes a store takes it first, as a path or a :class:`Store`, then the
sweep (a name, or a spec where the job creates the sweep), then the output location.

    from phase_diagrams import jobs
    summary = jobs.run_main("out/runs.sqlite", "label-noise-small", out_dir="figures")
    per_cell, summary = jobs.compare_store("out/runs.sqlite", "label-noise-small")
    jobs.export("out/runs.sqlite", "runs.parquet", sweep="label-noise-small")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from phase_diagrams.comparison import accuracy_linearity, compare, measured_cells, simulated_cells
from phase_diagrams.plots import save_figure, sweep_figures
from phase_diagrams.runner import run_sweep
from phase_diagrams.simulated import simulate_for_spec
from phase_diagrams.spec import GridSpec, load_spec
from phase_diagrams.store import ARRAY_COLUMNS, as_store
from springblock.errors import strict_json

log = logging.getLogger(__name__)

__all__ = ["add_runs", "sweep_and_simulate", "compare_store", "plot_all", "export", "read_export", "status_table",
           "run_main", "simulate_job", "fit_cells", "fit_store", "fit_trends", "fit_job", "calibrate_job",
           "calibrated_rows", "CALIBRATED"]

#: The simulated preset under which a sweep's calibrated chain is stored.
CALIBRATED = "calibrated"

def sweep_and_simulate(store, spec, *, simulate: bool = True, **run_kw):
    """:func:`~phase_diagrams.runner.run_sweep`, then the simulated counterpart of every cell
    (:func:`~phase_diagrams.simulated.simulate_for_spec`, a few seconds) into the same store."""
    store = as_store(store)
    spec = load_spec(spec)
    report = run_sweep(store, spec, **run_kw)
    if simulate and spec.simulator.presets:
        t0 = time.perf_counter()
        simulate_for_spec(store, spec)
        log.info("simulated counterpart (%d presets) in %.1f s", len(spec.simulator.presets), time.perf_counter() - t0)
    return report


def add_runs(store, sweep: str, histories, cells, *, simulate: bool = True, **kw) -> GridSpec:
    """:meth:`Store.add_runs` (outside runs, e.g. :class:`nets.LoadCurveRecorder` histories), then
    the simulated counterpart of every cell when the synthetic spec has friction presets, so that
    :func:`compare_store`, :func:`plot_all`, :func:`fit_job` and
    :func:`export` work on the sweep. ``kw``: ``row_field``, ``col_field``, ``metadata``, ``simulator``."""
    store = as_store(store)
    spec = store.add_runs(sweep, histories, cells, **kw)
    if simulate and spec.simulator.presets:
        simulate_for_spec(store, spec)
    return spec


def compare_store(store, sweep: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell and per-preset comparison of a stored sweep (:func:`~phase_diagrams.comparison.compare`)."""
    store = as_store(store)
    sweep = store.sweep_name(sweep)
    spec = store.sweep_spec(sweep)
    sim = store.simulated(sweep)
    if sim.empty:
        raise KeyError(f"sweep {sweep!r} has no simulated cells in {store.path}; "
                       "run the sweep again with simulation on, or `python -m phase_diagrams calibrate`")
    presets = sorted(dict.fromkeys(sim["preset"]), key=lambda p: p != CALIBRATED)  # the calibrated chain first
    runs = store.runs(sweep, with_arrays=False)
    if runs.empty or not (runs["status"] == "done").any():  # an agreement of 0 out of 0 cells means nothing
        raise ValueError(f"sweep {sweep!r} has no finished runs in {store.path} to compare "
                         f"({len(runs)} stored, none done); run or resume it first")
    per_cell, summary = compare(measured_cells(store.runs(sweep), spec), sim, spec, presets)
    if {"n_compared", "regime_agreement"} <= set(summary.columns):  # 0 of 0 cells agree: undefined, not 0
        summary.loc[summary["n_compared"] == 0, "regime_agreement"] = np.nan
    return per_cell, summary


def plot_all(store, sweep: str | None = None, out_dir="figures", *, cell: tuple[int, int] | None = None) -> list[Path]:
    """Write every figure of a stored sweep to ``out_dir`` (PNG and PDF); return the paths.

    The figures are those of :func:`~phase_diagrams.plots.sweep_figures`: the measured grid and its
    c/Σd heat map, accuracy vs linearity, and per stored simulated preset the chain's grid,
    measured | chain side by side, its heat map and the comparison; the probe trajectory of
    ``cell = (row, col)`` (default: the top-left cell, ReLU at the most noise) when recorded.
    """
    store = as_store(store)
    sweep = store.sweep_name(sweep)
    spec = store.sweep_spec(sweep)
    runs = store.runs(sweep)
    if runs.empty:
        raise ValueError(f"sweep {sweep!r} has no results in {store.path} yet")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = measured_cells(runs, spec)
    what = f"{spec.train.model}, {spec.train.dataset}"
    if "source" in runs.columns and (runs["source"] == "outside").all():  # Store.add_runs
        names = [str(v) for col in ("model", "model_class") if col in runs.columns for v in runs[col] if v is not None]
        what = "outside runs: " + "/".join(dict.fromkeys(names[:1] or ["own model"]))
    sim = store.simulated(sweep)
    presets = list(dict.fromkeys(sim["preset"])) if not sim.empty else []
    simulated = {p: simulated_cells(sim, spec, p) for p in presets}
    comparison = compare(cells, sim, spec) if presets else None
    figs = sweep_figures(spec, cells, simulated, comparison, accuracy=accuracy_linearity(cells), what=what, cell=cell)
    written: list[Path] = []
    for name, fig in figs.items():
        written += save_figure(fig, out / name)
    return written


def simulate_job(out_dir="figures", presets=None, **spec_kw) -> pd.DataFrame:
    """The stand-alone simulated diagrams: each friction preset's diagram
    (:class:`~phase_diagrams.simulated.DiagramSpec` with ``spec_kw``), its grid and c/Σd heat map
    as ``{out}/simulated_{preset}_curves`` and ``{out}/simulated_{preset}_curvature`` (PNG and PDF),
    and ``{out}/simulated_diagrams.csv``; returns the combined table."""
    from phase_diagrams.friction import FRICTION_PRESETS
    from phase_diagrams.plots import plot_heatmap, plot_simulated_grid
    from phase_diagrams.simulated import DiagramSpec, simulate_diagram

    specs = [DiagramSpec(preset=p, **spec_kw) for p in (FRICTION_PRESETS if presets is None else presets)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for spec in specs:
        df = simulate_diagram(spec)
        frames.append(df)
        save_figure(plot_simulated_grid(df, f"spring-block chain, preset {spec.preset}"),
                    out / f"simulated_{spec.preset}_curves")
        save_figure(plot_heatmap(df, title=f"c / Σd, preset {spec.preset}", col_label="eps", col_key="eps"),
                    out / f"simulated_{spec.preset}_curvature")
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "simulated_diagrams.csv", index=False)
    return table


def status_table(store) -> pd.DataFrame:
    """One row per sweep of the store: total, done, diverged, failed, running, pending."""
    store = as_store(store)
    return pd.DataFrame([dict(sweep=s, **store.progress(s)) for s in store.sweeps()])


def export(store, path, *, sweep: str | None = None, simulated: bool = False) -> Path:
    """Write the runs (or with ``simulated`` the simulated cells) of a store to ``path``.

    The format follows the suffix: ``.csv`` (array columns as JSON text), ``.parquet`` (native
    lists, via pyarrow) or ``.json`` / ``.jsonl`` (one JSON record per line, floats written exactly; RFC 8259:
    NaN and ±inf are written as ``null``, read back as NaN in number columns). ``sweep=None``
    exports every sweep; an unknown ``sweep`` is a KeyError. :func:`read_export` reads any of them back.
    """
    store = as_store(store)
    if sweep is not None:
        store.sweep_name(sweep)  # KeyError naming the sweeps the store holds (not a header-only file)
    df = store.simulated(sweep) if simulated else store.runs(sweep)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        out = df.copy()
        for c in ARRAY_COLUMNS:
            if c in out.columns:
                out[c] = out[c].map(strict_json)  # JSON text in a cell, RFC 8259 too (NaN as null)
        out.to_csv(path, index=False)
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix in (".json", ".jsonl"):  # full float precision (pandas' to_json rounds to 15 digits)
        with open(path, "w") as fh:
            for rec in df.to_dict(orient="records"):
                fh.write(strict_json(rec) + "\n")
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
                df[c] = df[c].map(lambda s: _nan_for_null(json.loads(s)) if isinstance(s, str) else s)
        return df
    if suffix == ".parquet":
        df = pd.read_parquet(path)
        for c in ARRAY_COLUMNS:
            if c in df.columns:
                df[c] = df[c].map(_to_list)
        return df
    if suffix in (".json", ".jsonl"):
        with open(path) as fh:
            df = pd.DataFrame([json.loads(line) for line in fh if line.strip()])
        for c in ARRAY_COLUMNS:  # null inside an array was a NaN or inf (strict JSON): back to NaN
            if c in df.columns:
                df[c] = df[c].map(_nan_for_null)
        return df
    raise ValueError(f"unknown export format {path.suffix!r}: use .csv, .parquet or .json")


def _nan_for_null(v):
    if isinstance(v, list):
        return [math.nan if x is None else _nan_for_null(x) for x in v]
    return v


def _to_list(v):
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        return [_to_list(x) for x in v]
    return v


def run_main(store="out/runs.sqlite", spec="label-noise-small", out_dir="figures", *, calibrate: bool = True,
             scores=("seed",), **run_kw) -> dict:
    """The README's main job: sweep (resumable), simulate the counterpart, calibrate the chain to the
    measured diagram (:func:`calibrate_job`; the default comparison, next to the seed ceiling; the
    friction presets stay as named alternatives; ``scores``: the held-out refits to score, by default
    the held-out seed), write every figure and the comparison table; return
    ``{"report", "summary", "figures", "calibration", "scores"}``."""
    store = as_store(store)
    spec = load_spec(spec)
    report = sweep_and_simulate(store, spec, **run_kw)
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


def _fit_cell_task(cell: dict, opts_d: dict, start_points, target: str, worker: bool) -> dict:
    """Fit one cell (a dict with curve / trajectory / probe_epochs / replicates); ``worker``: in a
    worker process of :func:`fit_cells`, where each simulation runs on one thread."""
    from phase_diagrams.fitting import FitOptions, fit_curve

    if worker:  # a joblib worker process of our own: cells run in parallel, each on one thread
        import numba

        numba.set_num_threads(1)
    opts = FitOptions(**opts_d)
    if target == "trajectory":
        res = fit_curve(cell["trajectory"], probe_epochs=cell["probe_epochs"], opts=opts, start_points=start_points,
                        replicates=cell.get("replicates"))
    else:
        res = fit_curve(cell["curve"], opts=opts, start_points=start_points, replicates=cell.get("replicates"))
    return dict(row=cell["row"], col=cell["col"], **res.to_record())


def fit_cells(cells: pd.DataFrame, *, target: str = "final", opts=None, workers: int = 1,
              progress: bool = True) -> pd.DataFrame:
    """Fit every cell of a :func:`~phase_diagrams.comparison.measured_cells` table (cells without a
    finite curve are skipped). ``workers > 1`` fits cells in parallel processes (joblib), each
    simulating on one thread. Returns one row per fitted cell: row, col, row_value, col_value,
    noise_rank, the fitted parameters, ``{name}_lo`` / ``{name}_hi``, the derived ``asymmetry =
    mu<- − mu->`` (the ratchet gradient is ``−asymmetry/2`` per spring) and noise ``mobility =
    2 Phi(−(mu-> + mu<-)/(2 eps))`` (:func:`springblock.theory.ratchet_mobility`: how freely noise
    moves the blocks), a, b, rss, rms, r2, fitted, measured, target, n_evals, converged, wall_s;
    ``{name}_identified`` (:func:`is_identified`), the combinations' ``{c}_lo``, ``{c}_hi``,
    ``{c}_identified`` (c = asymmetry, mobility, best; ``best_combination`` names the latter),
    ``flags`` (``"; "``-joined :attr:`FitResult.flags`), ``n_flags`` and the booleans
    ``flag_not_converged``, ``flag_at_bound``, ``flag_low_r2``, ``flag_no_map``. Cells may have
    different depths (one start grid per depth)."""
    from joblib import Parallel, delayed
    from scipy import special
    from tqdm.auto import tqdm

    from phase_diagrams.fitting import FitOptions, start_grid

    opts = FitOptions() if opts is None else opts
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r}: must be an integer >= 1")

    if target not in ("final", "trajectory"):
        raise ValueError(f"target must be 'final' or 'trajectory', got {target!r}")
    use = cells[cells["curve"].map(lambda c: c is not None)]
    if target == "trajectory":
        use = use[use["trajectory"].map(lambda t: t is not None and len(t) >= 3)]
    if use.empty:
        what = " and a trajectory" if target == "trajectory" else ""
        raise ValueError(f"no cell has a finite measured curve{what}")
    # cells of different depths: one start grid per depth (L + 1 = len(curve))
    depths = sorted({len(c) - 1 for c in use["curve"]})
    grids = {d: start_grid(d, opts) for d in depths}
    jobs = [dict(row=int(r["row"]), col=int(r["col"]), curve=r["curve"], trajectory=r.get("trajectory"),
                 probe_epochs=r.get("probe_epochs"), replicates=r.get("replicates")) for _, r in use.iterrows()]
    opts_d = dataclasses.asdict(opts)
    it = Parallel(n_jobs=workers, return_as="generator")(
        delayed(_fit_cell_task)(j, opts_d, grids[len(j["curve"]) - 1], target, workers > 1) for j in jobs)
    rows = list(tqdm(it, total=len(jobs), desc=f"fit ({target})", unit="cell", disable=not progress))
    out = []
    meta = use.set_index(["row", "col"])
    for r in rows:
        m = meta.loc[(r["row"], r["col"])]
        flat = dict(row=r["row"], col=r["col"], row_value=m["row_value"], col_value=m["col_value"],
                    noise_rank=m["noise_rank"], target=r["target"])
        for n, v in r["params"].items():
            flat[n] = v
            flat[f"{n}_lo"], flat[f"{n}_hi"] = (np.nan if w is None else w for w in r["ci"][n])
            flat[f"{n}_identified"] = bool(r["identified"][n])
        p = r["params"]
        flat["asymmetry"] = p["mu_backward"] - p["mu_forward"]
        flat["mobility"] = float(2 * special.ndtr(-(p["mu_forward"] + p["mu_backward"]) / (2 * p["eps"])))
        flat.update(a=r["affine"][0], b=r["affine"][1], rss=r["rss"], rms=r["rms"], r2=r["r2"], fitted=r["fitted"],
                    measured=r["measured"], n_evals=r["n_evals"], converged=r["converged"], wall_s=r["wall_s"],
                    start=json.dumps(r["start"]))
        for c in r["combinations"]:
            key = c["name"].split(":")[0]
            flat[f"{key}_lo"], flat[f"{key}_hi"] = c["lo"], c["hi"]
            flat[f"{key}_identified"] = bool(c["identified"])
            if key == "best":
                flat["best_combination"], flat["best"] = c["name"][6:], c["value"]
        flags = list(r["flags"])
        flat.update(flags="; ".join(flags), n_flags=len(flags), flag_not_converged="not converged" in flags,
                    flag_at_bound=any(f.endswith("at bound") for f in flags),
                    flag_low_r2="r2 < 0.5" in flags, flag_no_map=any(f.startswith("b = 0") for f in flags))
        out.append(flat)
    return pd.DataFrame(out)


def fit_store(store, sweep: str | None = None, *, target: str = "final", opts=None, workers: int = 1, cells=None,
              progress: bool = True) -> pd.DataFrame:
    """Fit every cell (or the ``cells`` list of ``(row, col)``) of a stored sweep and write the fits
    to the store (table ``fits``); returns the table of :func:`fit_cells`. Per-seed curves are
    passed along, so ``opts.uncertainty="bootstrap"`` resamples seeds."""
    from phase_diagrams.fitting import FitOptions

    opts = FitOptions() if opts is None else opts
    store = as_store(store)
    sweep = store.sweep_name(sweep)
    spec = store.sweep_spec(sweep)
    runs = store.runs(sweep)
    if runs.empty or not (runs["status"] == "done").any():
        raise ValueError(f"sweep {sweep!r} has no finished runs in {store.path} to fit "
                         f"({len(runs)} stored); run or resume it first: python -m phase_diagrams sweep SPEC "
                         f"--store {store.path}")
    table = measured_cells(runs, spec)
    ok = runs[runs["status"] == "done"]
    key = "trajectory" if target == "trajectory" else "curve"
    table["replicates"] = [
        [v for v in ok.loc[(ok["row"] == r) & (ok["col"] == c), key] if v is not None] or None
        for r, c in zip(table["row"], table["col"], strict=True)
    ]
    if cells is not None:
        want = {tuple(c) for c in cells}
        table = table[[(r, c) in want for r, c in zip(table["row"], table["col"], strict=True)]]
        if table.empty:
            raise ValueError(f"none of the cells {sorted(want)} is in the {spec.shape[0]} x {spec.shape[1]} grid")
    fits = fit_cells(table, target=target, opts=opts, workers=workers, progress=progress)
    store.write_fits(sweep, fits, dataclasses.asdict(opts))
    return fits


def fit_trends(fits: pd.DataFrame) -> pd.DataFrame:
    """How the fitted parameters (and the derived asymmetry and mobility) move across the grid: for
    each, the Spearman rank
    correlation over cells with the row value (alpha) and with the column's noise rank, the
    median per row (alpha ascending) and per column (least to most noisy), whether those medians
    are monotone, and the fraction of cells where it is identified (the ``{name}_identified``
    column, else :func:`~phase_diagrams.fitting.is_identified` of the interval: inside the bounds and
    within a factor 10)."""
    from phase_diagrams.comparison import spearman
    from phase_diagrams.fitting import PARAMS, is_identified

    out = []
    for name in [n for n in PARAMS if n in fits.columns] + [n for n in ("asymmetry", "mobility") if n in fits]:
        by_row = fits.groupby("row_value")[name].median()
        by_col = fits.groupby("noise_rank")[name].median()
        if f"{name}_identified" in fits:
            ident = float(fits[f"{name}_identified"].astype(bool).mean())
        elif f"{name}_lo" in fits and name in PARAMS:
            ident = float(np.mean([is_identified(name, (lo, hi))
                                   for lo, hi in zip(fits[f"{name}_lo"], fits[f"{name}_hi"], strict=True)]))
        else:
            ident = float("nan")  # derived quantity without an interval

        def monotone(v):
            d = np.diff(np.asarray(v, dtype=float))
            return "increasing" if np.all(d >= 0) else "decreasing" if np.all(d <= 0) else "no"

        out.append(dict(param=name, spearman_alpha=spearman(fits["row_value"], fits[name]),
                        spearman_noise=spearman(fits["noise_rank"], fits[name]),
                        median_by_alpha=" ".join(f"{v:.3g}" for v in by_row), monotone_in_alpha=monotone(by_row),
                        median_by_noise=" ".join(f"{v:.3g}" for v in by_col), monotone_in_noise=monotone(by_col),
                        identified=ident))
    return pd.DataFrame(out)


def fit_job(store, sweep: str | None = None, out_dir="figures", *, target: str = "final", cells=None,
            workers: int = 1, progress: bool = True, **options) -> pd.DataFrame:
    """Fit spring-block parameters to every cell of a stored sweep
    (:func:`fit_store`, written to the store's ``fits`` table) and write
    ``{sweep}_fit_{target}_params`` (heat maps of the fitted parameters) and
    ``{sweep}_fit_{target}_curves`` (measured vs fitted per cell), PNG and PDF, plus
    ``{sweep}_fit_{target}.csv``. ``options`` are :class:`~phase_diagrams.fitting.FitOptions` fields."""
    from phase_diagrams.fitting import FitOptions
    from phase_diagrams.plots import plot_fit_heatmaps, plot_fitted_curves

    store = as_store(store)
    sweep = store.sweep_name(sweep)
    fits = fit_store(store, sweep, target=target, opts=FitOptions(**options), workers=workers, cells=cells,
                     progress=progress)
    spec = store.sweep_spec(sweep)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list = []
    figure = plot_fit_heatmaps(fits, f"{sweep}: fitted chain ({target} curve)", spec.columns.field)
    written += save_figure(figure, out / f"{sweep}_fit_{target}_params")
    figure = plot_fitted_curves(fits, f"{sweep}: measured vs fitted chain ({target})", spec.columns.field)
    written += save_figure(figure, out / f"{sweep}_fit_{target}_curves")
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
    from phase_diagrams.plots import plot_calibration_map, plot_scores, plot_side_by_side

    store = as_store(store)
    sweep = store.sweep_name(sweep)
    opts = opts or CalibrationOptions()
    spec = store.sweep_spec(sweep)
    if spec.rows.field != "alpha":
        raise ValueError(f"sweep {sweep!r} has rows {spec.rows.field!r}: calibrate needs rows = alpha")
    source = None
    if transfer_from is not None:
        src_name = store.sweep_name(transfer_from)
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
    figure = plot_side_by_side(cells, sc, title=sweep, col_label=spec.columns.field, preset=how)
    written += save_figure(figure, out / f"{sweep}_calibrated_side_by_side")
    figure = plot_calibration_map(cal.map_curves(), f"{sweep}: calibrated map ({how}; bands: 95 %)")
    written += save_figure(figure, out / f"{sweep}_calibration_map")
    figure = plot_scores(table, f"{sweep}: calibrated chain vs the seed ceiling")
    written += save_figure(figure, out / f"{sweep}_calibration_scores")
    cal.params_table().to_csv(out / f"{sweep}_calibration.csv", index=False)
    table.to_csv(out / f"{sweep}_calibration_scores.csv", index=False)
    written += [out / f"{sweep}_calibration.csv", out / f"{sweep}_calibration_scores.csv"]
    return dict(calibration=cal, source=source, scores=table, figures=written)
