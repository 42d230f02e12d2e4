"""Issue 11's measured targets, and what a wider family of maps can reach (docs/calibration.md).

    python -m studies.calibration_targets --store S                        # everything
    python -m studies.calibration_targets --store S --parts free,cellwise  # the wider families only

Everything takes ~1 h on 2 shared cores (the smooth family's 37 held-out refits are most of it; the
separable-free family's scores 4-25 min per panel); results of this run: docs/calibration.md.

``S`` holds the sweeps ``label-noise`` (alpha in {0, 0.2, ..., 1}) and ``label-noise-fine``
(the same plus alpha in {0.85, 0.9, 0.95}; ``python -m phase_diagrams sweep studies/label-noise-fine.toml
--store S``), seeds 1-3. Parts:

``ceiling``
    each seed against the mean of the other seeds (:func:`phase_diagrams.comparison.seed_ceiling`).
``smooth``
    the library's 11-knob family (:func:`phase_diagrams.calibrate`) with its held-out scores: seed,
    leave-one-column-out and leave-one-row-out on both panels (per-row fold agreement printed).
``free``
    the *saturated separable* family: a free ``(mu->, mu<-)`` for every alpha row, a free ``eps``
    for every noise column, shared ``lam`` and ``tau`` (2 R + C + 2 knobs; it contains every
    map alpha -> friction times noise -> eps, the smooth family included). Same objective, same
    emulator. The objective is a sum over cells, so the fit is exact block coordinate descent:
    each row's ``(mu->, mu<-)`` on a 37 x 37 grid (log-spaced over the emulator's range), each
    column's ``eps`` on 37 points, ``(lam, tau)`` on 9 x 25, repeated until ``J`` stops falling,
    then on grids zoomed around the optimum; from the smooth fit's map and from 3 random starts,
    the best kept. Judged in-sample and on held-out seeds (fit the mean of two seeds, predict the
    third), predictions by direct simulation (256 chains, fresh noise) like the library's.
    Leaving out a row or a column has no prediction in this family (its knobs are free).
``cellwise``
    the chain with its own ``(mu->, mu<-, eps)`` in every cell (shared ``lam``, ``tau``): what the
    chain can draw at all. In-sample only.

Output: tables on stdout and ``--out`` (CSV + JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from phase_diagrams import calibration as C
from phase_diagrams.comparison import seed_ceiling, spearman
from springblock.observables import normalized_curvature, regime

log = logging.getLogger("calibration_targets")
TOL = C.REGIME_TOL


# ------------------------------------------------------------------------------------------
# block coordinate descent on the emulator
# ------------------------------------------------------------------------------------------
def _chunked_terms(target, emu, mf, mb, eps, lam, tau, cells, chunk=3000):
    """``target.cell_terms`` in chunks of candidates (memory)."""
    P, n = mf.shape
    lam = np.broadcast_to(np.asarray(lam, float), (P,))
    tau = np.broadcast_to(np.asarray(tau, float), (P,))
    step = max(1, chunk // max(n, 1))
    out = np.empty((P, n))
    for a in range(0, P, step):
        b = min(P, a + step)
        out[a:b] = target.cell_terms(emu, mf[a:b], mb[a:b], eps[a:b], lam[a:b], tau[a:b], cells=cells)
    return out


class Chain:
    """Per-cell chain parameters ``mf, mb, eps`` (C,) and shared ``lam, tau``."""

    def __init__(self, mf, mb, eps, lam, tau):
        self.mf, self.mb, self.eps = (np.array(v, dtype=float) for v in (mf, mb, eps))
        self.lam, self.tau = float(lam), float(tau)

    def copy(self):
        return Chain(self.mf, self.mb, self.eps, self.lam, self.tau)


def _grids(emu, tau_hi, n=37):
    o = emu.opts
    return dict(mu=np.geomspace(*o.mu_range, n), eps=np.geomspace(*o.eps_range, n),
                lam=np.linspace(o.lams[0], o.lams[-1], 9), tau=np.geomspace(C.BOUNDS["tau"][0], tau_hi, 25))


def _zoom(v, lo, hi, n=13, span=1.5, log=True):
    """n points around v spanning +-span coarse log-steps (or +- span in linear units)."""
    if log:
        g = np.exp(np.linspace(np.log(v) - span, np.log(v) + span, n))
    else:
        g = np.linspace(v - span, v + span, n)
    return np.unique(np.clip(g, lo, hi))


def _descend(target, emu, ch: Chain, groups: dict, grids: dict, *, cellwise=False, max_sweeps=12, zoom_rounds=3):
    """Block coordinate descent of ``J`` (exact per block: grid search). ``groups``: ``rows`` (cell
    indices per row) and ``cols`` (per column) for the separable family; ``cellwise`` gives every
    cell its own triple instead."""
    o = emu.opts
    mu_lo, mu_hi = o.mu_range
    e_lo, e_hi = o.eps_range
    lam_lo, lam_hi = o.lams[0], o.lams[-1]
    tau_lo, tau_hi = grids["tau"][0], grids["tau"][-1]

    def J(c):
        return float(_chunked_terms(target, emu, c.mf[None], c.mb[None], c.eps[None], c.lam, c.tau, None).mean())

    def shared_block(c, lam_g, tau_g):
        L, T = np.meshgrid(lam_g, tau_g, indexing="ij")
        L, T = L.ravel(), T.ravel()
        P = L.size
        terms = _chunked_terms(target, emu, np.repeat(c.mf[None], P, 0), np.repeat(c.mb[None], P, 0),
                               np.repeat(c.eps[None], P, 0), L, T, None)
        k = int(np.argmin(terms.sum(1)))
        c.lam, c.tau = float(L[k]), float(T[k])

    def pair_block(c, idx, mf_g, mb_g):  # one row: (mf, mb) shared by the cells idx
        A, B = np.meshgrid(mf_g, mb_g, indexing="ij")
        A, B = A.ravel(), B.ravel()
        n = len(idx)
        terms = _chunked_terms(target, emu, np.repeat(A[:, None], n, 1), np.repeat(B[:, None], n, 1),
                               np.repeat(c.eps[idx][None], A.size, 0), c.lam, c.tau, idx)
        k = int(np.argmin(terms.sum(1)))
        c.mf[idx], c.mb[idx] = A[k], B[k]

    def eps_block(c, idx, e_g):  # one column: eps shared by the cells idx
        n = len(idx)
        terms = _chunked_terms(target, emu, np.repeat(c.mf[idx][None], e_g.size, 0),
                               np.repeat(c.mb[idx][None], e_g.size, 0), np.repeat(e_g[:, None], n, 1), c.lam, c.tau,
                               idx)
        k = int(np.argmin(terms.sum(1)))
        c.eps[idx] = e_g[k]

    def triple_block(c, i, mf_g, mb_g, e_g):  # one cell: its own (mf, mb, eps)
        A, B, E = (v.ravel() for v in np.meshgrid(mf_g, mb_g, e_g, indexing="ij"))
        terms = _chunked_terms(target, emu, A[:, None], B[:, None], E[:, None], c.lam, c.tau, np.array([i]))
        k = int(np.argmin(terms[:, 0]))
        c.mf[i], c.mb[i], c.eps[i] = A[k], B[k], E[k]

    ch = ch.copy()
    j_old = J(ch)
    coarse_mu = np.log(grids["mu"][1] / grids["mu"][0])
    coarse_e = np.log(grids["eps"][1] / grids["eps"][0])
    for rnd in range(zoom_rounds + 1):
        scale = 1.0 if rnd == 0 else 0.5 ** (rnd - 1)
        for _ in range(max_sweeps):
            if rnd == 0:
                lam_g, tau_g = grids["lam"], grids["tau"]
            else:
                lam_g = _zoom(ch.lam, lam_lo, lam_hi, 9, 0.005 * scale, log=False)
                tau_g = _zoom(ch.tau, tau_lo, tau_hi, 9, 0.12 * scale)
            shared_block(ch, lam_g, tau_g)
            if cellwise:
                for i in range(len(ch.mf)):
                    if rnd == 0:
                        g = (grids["mu"][::2], grids["mu"][::2], grids["eps"][::2])
                    else:
                        g = (_zoom(ch.mf[i], mu_lo, mu_hi, 9, 2 * coarse_mu * scale),
                             _zoom(ch.mb[i], mu_lo, mu_hi, 9, 2 * coarse_mu * scale),
                             _zoom(ch.eps[i], e_lo, e_hi, 9, 2 * coarse_e * scale))
                    triple_block(ch, i, *g)
            else:
                for idx in groups["rows"]:
                    if rnd == 0:
                        g = (grids["mu"], grids["mu"])
                    else:
                        g = (_zoom(ch.mf[idx[0]], mu_lo, mu_hi, 13, 1.5 * coarse_mu * scale),
                             _zoom(ch.mb[idx[0]], mu_lo, mu_hi, 13, 1.5 * coarse_mu * scale))
                    pair_block(ch, idx, *g)
                for idx in groups["cols"]:
                    g = grids["eps"] if rnd == 0 else _zoom(ch.eps[idx[0]], e_lo, e_hi, 13, 1.5 * coarse_e * scale)
                    eps_block(ch, idx, g)
            j_new = J(ch)
            if j_old - j_new < 1e-4 * max(j_old, 1e-9):
                j_old = j_new
                break
            j_old = j_new
    return ch, j_old


def _groups(data):
    return dict(rows=[np.flatnonzero(data.row == r) for r in np.unique(data.row)],
                cols=[np.flatnonzero(data.col == c) for c in np.unique(data.col)])


def fit_free(data, emu, opts, *, start: dict | None = None, n_random=3, seed=0, cellwise=False):
    """Best separable-free (or ``cellwise``) chain for ``data`` on the emulator: block coordinate
    descent from the smooth map ``start`` (knobs) and from ``n_random`` random starts."""
    target = C._Target(data, opts)
    tau_hi = min(C.BOUNDS["tau"][1], float(emu.times[-1]) / float(data.epochs[-1]))
    grids = _grids(emu, tau_hi)
    groups = _groups(data)
    starts = []
    if start is not None:
        mf, mb = C.friction_map(start, data.alpha)
        starts.append(Chain(np.clip(mf, *opts.mu_range), np.clip(mb, *opts.mu_range),
                            np.clip(C.noise_map(start, data.u), *opts.eps_range), start["lam"],
                            min(start["tau"], tau_hi)))
    rng = np.random.default_rng(seed)
    R, K = len(groups["rows"]), len(groups["cols"])
    ri = np.unique(data.row, return_inverse=True)[1]   # a subset keeps the panel's row / column numbers
    ki = np.unique(data.col, return_inverse=True)[1]
    for _ in range(n_random):
        rf, rb, ce = (np.exp(rng.uniform(np.log(0.005), np.log(0.5), n)) for n in (R, R, K))
        starts.append(Chain(rf[ri], rb[ri], np.sort(ce)[ki], rng.uniform(0, 0.04),
                            np.exp(rng.uniform(np.log(0.3), np.log(tau_hi)))))
    best = None
    for n, s in enumerate(starts):
        t0 = time.perf_counter()
        ch, j = _descend(target, emu, s, groups, grids, cellwise=cellwise)
        log.info("  start %d: J = %.3f (%.0f s)", n, j, time.perf_counter() - t0)
        if best is None or j < best[1]:
            best = (ch, j)
    return best


def predict_chain(ch: Chain, data, opts, *, n_chains=256, seed=None) -> np.ndarray:
    """Direct simulation (fresh chain noise) of the per-cell chain: final curves (C, L+1)."""
    sim = C.simulate_chains(ch.mf, ch.mb, ch.eps, ch.lam, ch.tau, data.epochs, data.n_blocks, n_chains=n_chains,
                            seed=opts.seed + 1 if seed is None else seed, eta=opts.eta)
    return sim[:, -1]


def score_row(kind, pred, meas, ceil) -> dict:
    pred, meas = np.asarray(pred), np.asarray(meas)
    out = dict(kind=kind, n_cells=len(pred),
               regime_agreement=float(np.mean(regime(pred, TOL) == regime(meas, TOL))),
               spearman_nc=spearman(normalized_curvature(pred), normalized_curvature(meas)))
    out.update(ceil)
    out["ratio"] = out["regime_agreement"] / ceil["ceiling_agreement"]
    return out


def ceiling_of(data) -> tuple[dict, pd.DataFrame]:
    per_cell, per_seed = seed_ceiling(C._as_runs(data), TOL)
    return dict(ceiling_agreement=float(per_seed["regime_agreement"].mean()),
                ceiling_spearman_nc=float(per_seed["spearman_nc"].mean())), per_seed


def free_family(data, emu, opts, start, *, cellwise=False, held_out=("seed", "row", "column"), n_random=3,
                fold_starts=4, report=None):
    """In-sample and held-out scores of a free family; the fitted chain and its predictions.

    In-sample: from the smooth fit ``start`` and ``n_random`` random starts. Held-out folds start
    from ``fold_starts`` random points only (the smooth fit saw the held-out data). ``report`` is
    called with each score row as soon as it is measured. Held-out seed:
    fit the other seeds' mean, predict this seed. Leave one row (column) out: fit the other cells,
    then interpolate the left-out row's log mu->, log mu<- linearly in alpha between its fitted
    neighbours (the left-out column's log eps in the noise coordinate u; beyond the last fitted row
    or column: its value), i.e. the separable family with piecewise-linear maps."""
    ceil, _ = ceiling_of(data)
    name = "cellwise-free" if cellwise else "separable-free"
    t0 = time.perf_counter()
    ch, j = fit_free(data, emu, opts, start=start, cellwise=cellwise, n_random=n_random)
    fit_s = time.perf_counter() - t0
    pred = predict_chain(ch, data, opts)
    meas = np.nanmean(data.final, axis=1)
    rows = [dict(score_row(f"{name}, in-sample", pred, meas, ceil), J=j, fit_s=round(fit_s))]
    report = report or (lambda r: None)
    report(rows[-1])
    if "seed" in held_out:
        t1 = time.perf_counter()
        pr, me, folds = [], [], []
        for s in range(len(data.seeds)):
            rest = [t for t in range(len(data.seeds)) if t != s]
            have = np.isfinite(data.final[:, s, 0])
            chs, _ = fit_free(data.subset(seeds=rest), emu, opts, start=None, n_random=fold_starts, seed=s + 1,
                              cellwise=cellwise)
            p = predict_chain(chs, data, opts)
            pr.append(p[have])
            me.append(data.final[have, s])
            folds.append(float(np.mean(regime(p[have], TOL) == regime(data.final[have, s], TOL))))
        r = score_row(f"{name}, held-out seed", np.concatenate(pr), np.concatenate(me), ceil)
        r["fold_agreement"] = " ".join(f"{a:.2f}" for a in folds)
        r["fit_s"] = round(time.perf_counter() - t1)
        rows.append(r)
        report(r)
    for kind in ("row", "column"):
        if kind not in held_out or cellwise:  # a cell's own knobs say nothing about another cell
            continue
        t1 = time.perf_counter()
        keys = data.row if kind == "row" else data.col
        pred_lo = np.full_like(meas, np.nan)
        folds = []
        for g in np.unique(keys):
            out, keep = np.flatnonzero(keys == g), np.flatnonzero(keys != g)
            sub = data.subset(cells=keep)
            chs, _ = fit_free(sub, emu, opts, start=None, n_random=fold_starts, seed=100 + int(g))
            if kind == "row":
                a_fit, first = np.unique(sub.alpha, return_index=True)
                mf = np.exp(np.interp(data.alpha[out], a_fit, np.log(chs.mf[first])))
                mb = np.exp(np.interp(data.alpha[out], a_fit, np.log(chs.mb[first])))
                col_eps = {int(c): e for c, e in zip(sub.col, chs.eps, strict=True)}
                eps = np.array([col_eps[int(c)] for c in data.col[out]])
            else:
                u_fit, first = np.unique(sub.u, return_index=True)
                eps = np.exp(np.interp(data.u[out], u_fit, np.log(chs.eps[first])))
                row_f = {int(r): (f, b) for r, f, b in zip(sub.row, chs.mf, chs.mb, strict=True)}
                mf = np.array([row_f[int(r)][0] for r in data.row[out]])
                mb = np.array([row_f[int(r)][1] for r in data.row[out]])
            p = C.simulate_chains(mf, mb, eps, chs.lam, chs.tau, data.epochs, data.n_blocks, n_chains=256,
                                  seed=opts.seed + 1, eta=opts.eta)[:, -1]
            pred_lo[out] = p
            folds.append(float(np.mean(regime(p, TOL) == regime(meas[out], TOL))))
        r = score_row(f"{name} (interpolated), leave-one-{kind}-out", pred_lo, meas, ceil)
        r["fold_agreement"] = " ".join(f"{a:.2f}" for a in folds)
        r["fit_s"] = round(time.perf_counter() - t1)
        rows.append(r)
        report(r)
    return rows, ch, pred


def cell_table(data, preds: dict) -> pd.DataFrame:
    """Per cell: measured c/Σd (mean curve) ± seed SD, regime, and each model's c/Σd and regime."""
    meas = np.nanmean(data.final, axis=1)
    seed_nc = np.asarray(normalized_curvature(data.final), dtype=float)     # (C, S)
    tab = pd.DataFrame(dict(alpha=data.alpha, col_value=data.col_value,
                            nc=np.asarray(normalized_curvature(meas), dtype=float),
                            nc_sd=np.nanstd(seed_nc, axis=1, ddof=1),
                            seed_regimes=["".join(r[0] for r in regime(data.final[c], TOL)) for c in range(len(meas))],
                            regime=list(regime(meas, TOL))))
    for name, p in preds.items():
        tab[f"nc_{name}"] = np.asarray(normalized_curvature(p), dtype=float)
        tab[f"regime_{name}"] = list(regime(p, TOL))
    tab["near_threshold"] = (np.abs(np.abs(tab["nc"]) - TOL) < tab["nc_sd"])
    return tab


# ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--sweep", default="label-noise")
    ap.add_argument("--fine", default="label-noise-fine", help="the panel with alpha rows 0.85-0.95 added")
    ap.add_argument("--parts", default="ceiling,smooth,free,cellwise")
    ap.add_argument("--panels", default="sweep,fine", help="which panels the free families run on")
    ap.add_argument("--smooth-scores", default="seed,column,row")
    ap.add_argument("--free-scores", default="seed,row,column", help="held-out scores of the separable-free family")
    ap.add_argument("--cellwise-scores", default="", help="'seed': held-out seeds for the cellwise family too")
    ap.add_argument("--starts", type=int, default=3, help="random starts of an in-sample free fit (+ the smooth fit)")
    ap.add_argument("--fold-starts", type=int, default=2, help="random starts of a held-out free fit")
    ap.add_argument("--smooth-json", default=None,
                    help="the smooth fit's knobs ({sweep}_smooth.json of an earlier run) instead of calibrating anew")
    ap.add_argument("--out", default="out/calibration_targets")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from phase_diagrams.store import Store

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    st = Store(args.store)
    panels = {"sweep": args.sweep, "fine": args.fine}
    opts = C.CalibrationOptions()
    datas = {k: C.cell_data(st.runs(v)) for k, v in panels.items() if v in st.sweeps()}
    emu = C.Emulator.build(next(iter(datas.values())).n_blocks, opts)
    rows = []
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_rows", 200)

    def report(r):
        rows.append(r)
        print(json.dumps(r), flush=True)
        pd.DataFrame(rows).to_csv(out / "targets.csv", index=False)

    for key, data in datas.items():
        sweep = panels[key]
        ceil, per_seed = ceiling_of(data)
        if "ceiling" in parts:
            report(dict(panel=sweep, kind="ceiling", n_cells=len(data.alpha),
                        fold_agreement=" ".join(f"{a:.3f}" for a in per_seed["regime_agreement"]),
                        regime_agreement=ceil["ceiling_agreement"], spearman_nc=ceil["ceiling_spearman_nc"]))
        start = None
        smooth_cal = None
        if args.smooth_json and "smooth" not in parts:
            start = json.load(open(args.smooth_json.format(sweep=sweep)))["params"]
        elif parts & {"smooth", "free", "cellwise"}:
            t0 = time.perf_counter()
            smooth_cal = C.calibrate(st.runs(sweep), opts=opts, emulator=emu)
            cal_s = time.perf_counter() - t0
            start = smooth_cal.params
            json.dump(dict(params=smooth_cal.params, J=smooth_cal.objective), open(out / f"{sweep}_smooth.json", "w"))
        if "smooth" in parts:
            t0 = time.perf_counter()
            which = tuple(args.smooth_scores.split(","))
            sc = smooth_cal.scores(which=which)
            for r in sc.to_dict("records"):
                r = dict(panel=sweep, **{k: v for k, v in r.items() if k != "kind"}, kind=f"smooth, {r['kind']}",
                         fit_s=round(cal_s if r["kind"] == "in-sample" else time.perf_counter() - t0))
                report(r)
        preds = {}
        if smooth_cal is not None:
            preds["smooth"] = np.stack(smooth_cal.predict()["curve"])
        elif start is not None:  # the same as Calibration.predict: 256 chains, seed opts.seed + 1
            preds["smooth"] = C.simulate_cells(start, data.alpha, data.u, data.epochs, data.n_blocks,
                                               n_chains=opts.predict_chains, seed=opts.seed + 1, eta=opts.eta)[:, -1]
        if key in args.panels.split(","):
            for fam, cw in (("free", False), ("cellwise", True)):
                if fam not in parts:
                    continue
                log.info("%s: %s family", sweep, fam)
                scores = args.cellwise_scores if cw else args.free_scores
                res, ch, pred = free_family(data, emu, opts, start, cellwise=cw, held_out=tuple(scores.split(",")),
                                            n_random=args.starts,
                                            fold_starts=args.fold_starts,
                                            report=lambda r, sw=sweep: report(dict(panel=sw, **r)))
                preds[fam] = pred
                pd.DataFrame(dict(alpha=data.alpha, col_value=data.col_value, mu_forward=ch.mf, mu_backward=ch.mb,
                                  eps=ch.eps, lam=ch.lam, tau=ch.tau)).to_csv(out / f"{sweep}_{fam}_chain.csv",
                                                                             index=False)
        if preds:
            tab = cell_table(data, preds)
            tab.to_csv(out / f"{sweep}_cells.csv", index=False)
            for name in preds:
                wrong = tab[tab["regime"] != tab[f"regime_{name}"]]
                print(f"\n{sweep}: {len(wrong)} of {len(tab)} cells the {name} family gets wrong "
                      f"({int(wrong['near_threshold'].sum())} within one seed-SD of the threshold)")
                print(wrong[["alpha", "col_value", "nc", "nc_sd", "seed_regimes", "regime", f"nc_{name}",
                             f"regime_{name}", "near_threshold"]].round(3).to_string(index=False))
    print()
    print(pd.DataFrame(rows).reindex(columns=["panel", "kind", "n_cells", "regime_agreement", "spearman_nc",
                                              "ceiling_agreement", "ceiling_spearman_nc", "ratio", "fold_agreement"])
          .round(3).to_string(index=False))


if __name__ == "__main__":
    main()
