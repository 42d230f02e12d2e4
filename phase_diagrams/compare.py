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
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from phase_diagrams.spec import NOISE_DIRECTION, GridSpec
from springblock.observables import REGIME_TOL, curve_summary

__all__ = ["noise_rank", "measured_cells", "simulated_cells", "compare", "spearman", "accuracy_linearity"]


def noise_rank(spec: GridSpec) -> np.ndarray:
    """Rank of each column from least (0) to most noisy (for plots: more noise to the left)."""
    sign = NOISE_DIRECTION.get(spec.columns.field, 1)
    vals = np.array([np.inf if v is None else float(v) for v in spec.columns.values]) * sign
    return np.argsort(np.argsort(vals, kind="stable"), kind="stable")


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
    probe_epochs, linearity_runs (per-run v, for the accuracy–linearity scatter).
    """
    ranks = noise_rank(spec)
    out = []
    for i, j, rv, cv in spec.cells():
        sub = runs[(runs["row"] == i) & (runs["col"] == j)] if not runs.empty else runs
        ok = sub[sub["status"] == "done"] if not sub.empty else sub
        curve = _mean_curve(ok["curve"]) if not ok.empty else None
        traj, epochs = _mean_trajectory(ok["trajectory"], ok["probe_epochs"]) if not ok.empty else (None, None)
        acc = ok["test_accuracy"].astype(float).to_numpy() if not ok.empty else np.array([])
        acc = acc[np.isfinite(acc)]
        row = dict(row=i, col=j, row_value=rv, col_value=cv, noise_rank=int(ranks[j]), n_runs=len(sub),
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
        else:
            row.update(curve=None, loads=None, linearity=np.nan, curvature=np.nan, normalized_curvature=np.nan,
                       regime="diverged" if row["n_diverged"] and row["n_diverged"] == row["n_runs"] else "missing")
        out.append(row)
    return pd.DataFrame(out)


def simulated_cells(sim: pd.DataFrame, spec: GridSpec, preset: str) -> pd.DataFrame:
    """The store's simulated rows of one preset (:meth:`Store.simulated`), with ``noise_rank``,
    ``row_value`` and the same column names as :func:`measured_cells`."""
    sub = sim[sim["preset"] == preset].copy()
    if sub.empty:
        raise KeyError(f"no simulated cells for preset {preset!r} of sweep {spec.name!r}: run "
                       f"`python -m phase_diagrams simulate-sweep` or the sweep's `run` first")
    ranks = noise_rank(spec)
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
        spearman_c, spearman_nc, and the measured/simulated regime counts
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
    for preset in presets:
        p = per_cell[per_cell["preset"] == preset]
        defined = p["measured_regime"].isin(["concave", "linear", "convex"])
        summary.append(dict(
            preset=preset, n_cells=len(p), n_compared=int(defined.sum()),
            regime_agreement=float(p["agree"].mean()) if len(p) else np.nan,
            spearman_c=spearman(p["measured_c"], p["simulated_c"]),
            spearman_nc=spearman(p["measured_nc"], p["simulated_nc"]),
            measured_regimes=_counts(p["measured_regime"]), simulated_regimes=_counts(p["simulated_regime"]),
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
