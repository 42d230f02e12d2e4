"""Cell tables and the measured-vs-simulated comparison (SPEC §4).

Everything here turns stored rows into tidy per-cell tables; the figures
(:mod:`phase_diagrams.plots`) only draw these tables.

Measured cell (:func:`measured_cells`)
    The mean over seeds of the final ``log D_l`` curves of the runs that finished with finite
    curves (diverged and failed runs are counted, not averaged), its shape numbers (loads,
    linearity v, curvature c, c/Σd, regime — :mod:`springblock.observables`), the mean and
    standard deviation of the test accuracy, and the mean probe trajectory.
Comparison (:func:`compare`)
    For each friction preset, per cell: measured and simulated c, c/Σd and regime; per preset:
    the fraction of cells whose regime labels agree, and the Spearman rank correlation over cells
    of c (raw: ``d_1 − d_L``) and of c/Σd (scale-free; the one to trust, since log D and the chain's
    elongations have different units). Cells where a measured curve is undefined (no finite run,
    or a non-descending curve) are left out of the correlation and counted as disagreeing.
The ceiling (:func:`seed_ceiling`)
    How well the measurement agrees with itself: each seed's per-cell regime and c/Σd against
    those of the mean curve of the *other* seeds on the same cells. No chain can be expected to
    agree with the mean curve better than the seeds agree with each other, so every agreement
    figure is shown next to it. Per cell: the seed spread (SD over seeds of c/Σd and of c), whether
    all seeds give one regime, and whether the mean c/Σd lies within one seed-SD of a regime
    threshold ``±tol`` (such a cell's regime is a coin toss between two labels).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

from phase_diagrams.spec import GridSpec
from springblock.observables import REGIME_TOL, curvature, curve_summary, normalized_curvature, regime

__all__ = ["measured_cells", "simulated_cells", "compare", "spearman", "accuracy_linearity",
           "seed_ceiling", "ceiling_summary"]


def _mean_curve(curves) -> np.ndarray | None:
    arrs = [np.asarray(c, dtype=float) for c in curves if c is not None]
    arrs = [a for a in arrs if np.all(np.isfinite(a))]
    if not arrs:
        return None
    return np.mean(arrs, axis=0)


def _mean_trajectory(trajs, epochs) -> tuple[list | None, list | None]:
    good = [(np.asarray(t, dtype=float), tuple(e)) for t, e in zip(trajs, epochs, strict=True)
            if t is not None and e is not None]
    good = [(t, e) for t, e in good if t.ndim == 2 and np.all(np.isfinite(t))]
    if not good:
        return None, None
    ref = good[0][1]
    same = [t for t, e in good if e == ref]
    return np.mean(same, axis=0).tolist(), list(ref)


def measured_cells(runs: pd.DataFrame, spec: GridSpec, tol: float = REGIME_TOL) -> pd.DataFrame:
    """One row per cell of ``spec`` from the store's runs table (:meth:`Store.runs`).

    Columns: row, col, row_value, col_value, noise_rank, n_runs, n_done, n_diverged, n_failed,
    accuracy (mean over finished runs), accuracy_std, curve (mean final log D curve, or None),
    loads, linearity, curvature, normalized_curvature, regime (``"missing"`` without a finite
    curve, ``"diverged"`` if every run diverged), trajectory (mean over seeds, probes × layers),
    probe_epochs, linearity_runs (per-run v, for the accuracy–linearity scatter), seeds and
    seed_curves (each finished seed's final curve: the seed band of the figures), nc_sd (SD of
    c/Σd over seeds; NaN with one seed) and near_threshold (the mean c/Σd within one seed-SD of
    ``±tol``).
    """
    ranks = spec.noise_rank()
    out = []
    for i, j, rv, cv in spec.cells():
        sub = runs[(runs["row"] == i) & (runs["col"] == j)] if not runs.empty else runs
        ok = sub[sub["status"] == "done"] if not sub.empty else sub
        curve = _mean_curve(ok["curve"]) if not ok.empty else None
        traj, epochs = _mean_trajectory(ok["trajectory"], ok["probe_epochs"]) if not ok.empty else (None, None)
        acc = ok["test_accuracy"].astype(float).to_numpy() if not ok.empty else np.array([])
        acc = acc[np.isfinite(acc)]
        seed_curves, seeds = [], []
        if not ok.empty:
            for sd, c in zip(ok["seed"], ok["curve"], strict=True):
                if c is not None and np.all(np.isfinite(np.asarray(c, dtype=float))):
                    seeds.append(int(sd))
                    seed_curves.append(np.asarray(c, dtype=float).tolist())
        nc_seeds = np.array([float(normalized_curvature(c)) for c in seed_curves]) if seed_curves else np.array([])
        row = dict(row=i, col=j, row_value=rv, col_value=cv, noise_rank=int(ranks[j]), n_runs=len(sub),
                   seeds=seeds, seed_curves=seed_curves,
                   nc_sd=float(np.nanstd(nc_seeds)) if len(seed_curves) > 1 else np.nan,
                   n_done=len(ok), n_diverged=int((sub["status"] == "diverged").sum()) if len(sub) else 0,
                   n_failed=int((sub["status"] == "failed").sum()) if len(sub) else 0,
                   accuracy=float(acc.mean()) if acc.size else np.nan,
                   accuracy_std=float(acc.std()) if acc.size else np.nan,
                   trajectory=traj, probe_epochs=epochs,
                   linearity_runs=ok["linearity"].astype(float).tolist() if not ok.empty else [],
                   accuracy_runs=ok["test_accuracy"].astype(float).tolist() if not ok.empty else [])
        if curve is not None:
            s = curve_summary(curve, tol)
            row.update(curve=s["curve"], loads=s["loads"], linearity=s["linearity"], curvature=s["curvature"],
                       normalized_curvature=s["normalized_curvature"], regime=s["regime"])
            nc, sd = s["normalized_curvature"], row["nc_sd"]
            row["near_threshold"] = bool(np.isfinite(nc) and np.isfinite(sd) and min(abs(nc - tol), abs(nc + tol)) < sd)
        else:
            row.update(curve=None, loads=None, linearity=np.nan, curvature=np.nan, normalized_curvature=np.nan,
                       near_threshold=False,
                       regime="diverged" if row["n_diverged"] and row["n_diverged"] == row["n_runs"] else "missing")
        out.append(row)
    return pd.DataFrame(out)


def simulated_cells(sim: pd.DataFrame, spec: GridSpec, preset: str) -> pd.DataFrame:
    """The store's simulated rows of one preset (:meth:`Store.simulated`), with ``noise_rank``,
    ``row_value`` and the same column names as :func:`measured_cells`."""
    sub = sim[sim["preset"] == preset].copy()
    if sub.empty:
        raise KeyError(f"no simulated cells for preset {preset!r} of sweep {spec.name!r}: run "
                       f"`python -m phase_diagrams sweep SPEC` (it simulates the counterpart after training)")
    ranks = spec.noise_rank()
    sub["row_value"] = sub["alpha"]
    sub["noise_rank"] = sub["col"].map(lambda j: int(ranks[j]))
    return sub.sort_values(["row", "col"]).reset_index(drop=True)


def spearman(a, b) -> float:
    """Spearman rank correlation over the pairs where both values are finite (NaN if < 3)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def compare(measured: pd.DataFrame, sim: pd.DataFrame, spec: GridSpec, presets=None) -> tuple[pd.DataFrame,
                                                                                                pd.DataFrame]:
    """Measured vs simulated, per cell and per friction preset.

    Parameters
    ----------
    measured : :func:`measured_cells`
    sim : the store's simulated rows (:meth:`Store.simulated`) for this sweep
    presets : friction presets to compare (default: all present in ``sim``)

    Returns
    -------
    per_cell : row, col, row_value, col_value, preset, measured_c, simulated_c, measured_nc,
        simulated_nc, measured_regime, simulated_regime, agree
    summary : one row per preset: n_cells, n_compared, regime_agreement (fraction of all cells),
        spearman_c, spearman_nc, the measured/simulated regime counts, and the ceiling
        (:func:`seed_ceiling`: ceiling_agreement, ceiling_spearman_nc, ceiling_spearman_c — the mean
        over seeds of each seed against the other seeds' mean; NaN with one seed)
    """
    presets = list(dict.fromkeys(sim["preset"])) if presets is None else list(presets)
    rows, summary = [], []
    for preset in presets:
        s = simulated_cells(sim, spec, preset).set_index(["row", "col"])
        for _, m in measured.iterrows():
            r = s.loc[(m["row"], m["col"])]
            rows.append(dict(row=m["row"], col=m["col"], row_value=m["row_value"], col_value=m["col_value"],
                             noise_rank=m["noise_rank"], preset=preset, measured_c=m["curvature"],
                             simulated_c=r["curvature"], measured_nc=m["normalized_curvature"],
                             simulated_nc=r["normalized_curvature"], measured_regime=m["regime"],
                             simulated_regime=r["regime"], agree=bool(m["regime"] == r["regime"])))
    per_cell = pd.DataFrame(rows)
    ceiling = _ceiling_of_cells(measured)
    for preset in presets:
        p = per_cell[per_cell["preset"] == preset]
        defined = p["measured_regime"].isin(["concave", "linear", "convex"])
        summary.append(dict(
            preset=preset, n_cells=len(p), n_compared=int(defined.sum()),
            regime_agreement=float(p["agree"].mean()) if len(p) else np.nan,
            spearman_c=spearman(p["measured_c"], p["simulated_c"]),
            spearman_nc=spearman(p["measured_nc"], p["simulated_nc"]),
            measured_regimes=_counts(p["measured_regime"]), simulated_regimes=_counts(p["simulated_regime"]),
            **ceiling,
        ))
    return per_cell, pd.DataFrame(summary)


def _counts(labels) -> str:
    c = pd.Series(labels).value_counts()
    return " ".join(f"{k}:{c.get(k, 0)}" for k in ("concave", "linear", "convex") if c.get(k, 0)) or "-"


def accuracy_linearity(measured: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-run test accuracy and linearity v over all cells, and their Spearman correlation."""
    acc = np.array([a for lst in measured["accuracy_runs"] for a in lst], dtype=float)
    lin = np.array([v for lst in measured["linearity_runs"] for v in lst], dtype=float)
    return acc, lin, spearman(acc, lin)


def _cell_keys(runs: pd.DataFrame) -> pd.Series:
    """A hashable cell key per run: ``(row, col)`` where the table has them, else the values."""
    if "row" in runs.columns and "col" in runs.columns:
        return pd.Series(list(zip(runs["row"].astype(int), runs["col"].astype(int), strict=True)), index=runs.index)
    rv = runs["row_value"] if "row_value" in runs.columns else runs["alpha"]
    return pd.Series([(json.dumps(a), json.dumps(b)) for a, b in zip(rv, runs["col_value"], strict=True)],
                     index=runs.index)


def seed_ceiling(runs: pd.DataFrame, tol: float = REGIME_TOL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The measurement's own ceiling: how well each seed agrees with the mean of the other seeds.

    Parameters
    ----------
    runs : a table like :meth:`Store.runs` (``row``/``col`` or ``row_value``/``col_value``,
        ``seed``, ``curve``; runs with a ``status`` other than ``done`` or a non-finite curve are
        left out)
    tol : regime threshold on ``|c/Σd|``

    Returns
    -------
    per_cell : one row per cell: row_value, col_value, n_seeds, nc_mean (c/Σd of each seed's
        curve, averaged), nc_sd (population SD over seeds), c_mean, c_sd, regimes (each seed's,
        by seed), seeds_agree (all seeds one regime), near_threshold (``|nc_mean ∓ tol| < nc_sd``
        for either threshold)
    per_seed : one row per seed: n_cells, regime_agreement (fraction of cells whose regime from
        this seed's curve equals the regime of the mean curve of the other seeds),
        spearman_nc and spearman_c over cells (this seed vs the others' mean)

    Raises ValueError with fewer than 2 seeds in common cells (a ceiling needs replicates).
    """
    ok = runs
    if "status" in ok.columns:
        ok = ok[ok["status"] == "done"]
    ok = ok[ok["curve"].map(lambda c: c is not None and np.all(np.isfinite(np.asarray(c, dtype=float))))]
    if ok.empty:
        raise ValueError("no finished run with a finite curve: the ceiling needs measured curves")
    keys = _cell_keys(ok)
    seeds = sorted(ok["seed"].unique())
    if len(seeds) < 2:
        raise ValueError(f"the seed ceiling needs >= 2 seeds, got {len(seeds)} (seed {seeds[0]}): "
                         "add seeds to the sweep (spec 'seeds')")
    rv = ok["row_value"] if "row_value" in ok.columns else ok["alpha"]
    cells, curves = {}, {}
    for k, s_, c, r, v in zip(keys, ok["seed"], ok["curve"], rv, ok["col_value"], strict=True):
        cells.setdefault(k, (r, v))
        curves.setdefault(k, {})[int(s_)] = np.asarray(c, dtype=float)
    order = sorted(cells)
    per_cell = []
    for k in order:
        by_seed = curves[k]
        nc = np.array([float(normalized_curvature(c)) for c in by_seed.values()])
        cc = np.array([float(curvature(c)) for c in by_seed.values()])
        labels = [regime(c, tol) for c in by_seed.values()]
        m, sd = float(np.nanmean(nc)) if np.isfinite(nc).any() else np.nan, float(np.nanstd(nc)) if nc.size else np.nan
        per_cell.append(dict(
            row_value=cells[k][0], col_value=cells[k][1], cell=k, n_seeds=len(by_seed), nc_mean=m, nc_sd=sd,
            c_mean=float(cc.mean()), c_sd=float(cc.std()),
            regimes=" ".join(f"{s_}:{lab}" for s_, lab in zip(by_seed, labels, strict=True)),
            seeds_agree=len(set(labels)) == 1 and len(labels) > 1,
            near_threshold=bool(np.isfinite(m) and min(abs(m - tol), abs(m + tol)) < sd),
        ))
    per_seed = []
    for s_ in seeds:
        mine, others = [], []
        for k in order:
            by_seed = curves[k]
            rest = [c for t, c in by_seed.items() if t != s_]
            if s_ in by_seed and rest:
                mine.append(by_seed[s_])
                others.append(np.mean(rest, axis=0))
        if not mine:
            continue
        a, b = np.array(mine), np.array(others)
        ra, rb = regime(a, tol), regime(b, tol)
        per_seed.append(dict(seed=int(s_), n_cells=len(mine), regime_agreement=float(np.mean(ra == rb)),
                             spearman_nc=spearman(normalized_curvature(a), normalized_curvature(b)),
                             spearman_c=spearman(curvature(a), curvature(b))))
    if not per_seed:
        raise ValueError("no cell has runs of two seeds: the ceiling needs replicates of the same cells")
    return pd.DataFrame(per_cell), pd.DataFrame(per_seed)


def ceiling_summary(per_cell: pd.DataFrame, per_seed: pd.DataFrame) -> dict:
    """The ceiling in one line's numbers: regime agreement and Spearman of c/Σd and c over seeds
    (min, mean, max), the cells where all seeds agree and those near a threshold."""
    out = dict(n_cells=len(per_cell), n_seeds=len(per_seed))
    for name in ("regime_agreement", "spearman_nc", "spearman_c"):
        v = per_seed[name].to_numpy(float)
        out[name] = float(np.nanmean(v))
        out[f"{name}_min"], out[f"{name}_max"] = float(np.nanmin(v)), float(np.nanmax(v))
    out["seeds_agree"] = int(per_cell["seeds_agree"].sum())
    out["near_threshold"] = int(per_cell["near_threshold"].sum())
    return out


def _ceiling_of_cells(measured: pd.DataFrame) -> dict:
    """The :func:`seed_ceiling` summary from a :func:`measured_cells` table (NaN with one seed)."""
    nan = dict(ceiling_agreement=np.nan, ceiling_spearman_nc=np.nan, ceiling_spearman_c=np.nan)
    if "seed_curves" not in measured.columns:
        return nan
    runs = pd.DataFrame([dict(row=r["row"], col=r["col"], row_value=r["row_value"], col_value=r["col_value"], seed=s,
                              curve=c)
                         for _, r in measured.iterrows() for s, c in zip(r["seeds"], r["seed_curves"], strict=True)])
    if runs.empty or runs["seed"].nunique() < 2:
        return nan
    try:
        _, per_seed = seed_ceiling(runs)
    except ValueError:
        return nan
    return dict(ceiling_agreement=float(per_seed["regime_agreement"].mean()),
                ceiling_spearman_nc=float(per_seed["spearman_nc"].mean()),
                ceiling_spearman_c=float(per_seed["spearman_c"].mean()))
