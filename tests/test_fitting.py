"""Fitting spring-block parameters to load curves (SPEC §5.1): the analytic start, the affine map,
recovery of known parameters from simulated curves and trajectories, and the store round trip."""

import numpy as np
import pytest

from phase_diagrams.fitting import FitOptions, _affine, chain_curves, fit_curve, initial_guess
from springblock import ChainParams, theory

# small ensembles: recovery tests take a few seconds each
FAST = FitOptions(n_chains=128, search_chains=48, grid=5, maxfev=180)


def _curve_from_elongations(e, offset=2.0, scale=3.0):
    """A 'measured' log D curve: y − x_l (wall prepended) mapped affinely."""
    x = np.cumsum(e)[:-1]
    return offset + scale * (1.0 - np.concatenate([[0.0], x]))


def test_affine_map_is_least_squares_with_nonnegative_slope():
    rng = np.random.default_rng(0)
    s = rng.normal(size=8)
    a, b, rss = _affine(1.5 + 2.0 * s, s)
    assert (a, b) == pytest.approx((1.5, 2.0)) and rss == pytest.approx(0.0, abs=1e-20)
    a, b, rss = _affine(-s, s)  # an anti-correlated curve: b clipped at 0, a = mean
    assert b == 0.0 and a == pytest.approx(-s.mean()) and rss == pytest.approx(((s - s.mean()) ** 2).sum())


def test_initial_guess_inverts_the_analytic_profiles():
    # concave: the noiseless friction staircase with mu = 0.06 -> the guess reads mu off the last steps
    p = ChainParams(mu_forward=0.06, mu_backward=0.06, eps=0.0)
    x = theory.friction_profile(p)
    e = np.diff(np.concatenate([[0.0], x, [p.y]]))
    g = initial_guess(_curve_from_elongations(e))
    assert g["mu_forward"] == pytest.approx(0.06, rel=1e-9) and g["mu_backward"] == g["mu_forward"]
    assert g["eps"] < 0.03  # little noise: the staircase must survive the horizon
    # convex: the ratchet profile's gradient (mu-> - mu<-)/2 per spring is read back exactly
    q = ChainParams(mu_forward=0.05, mu_backward=0.17, eps=0.1)
    g = initial_guess(_curve_from_elongations(theory.ratchet_elongations(q)))
    assert g["mu_backward"] - g["mu_forward"] == pytest.approx(0.12, rel=1e-9)


def test_recovers_a_concave_chain_from_its_final_curve():
    truth = dict(mu_forward=0.1, mu_backward=0.1, eps=0.02)
    curve = 1.0 + 4.0 * chain_curves(7, [truth], FitOptions(n_chains=1000, seed=11))[0]
    r = fit_curve(curve, opts=FAST)
    assert r.r2 > 0.999 and r.rms < 0.01
    assert r.params["mu_forward"] == pytest.approx(0.1, rel=0.05)
    assert r.params["eps"] == pytest.approx(0.02, rel=0.15)
    lo, hi = r.ci["mu_forward"]
    assert lo <= 0.1 <= hi and hi / lo < 1.3  # identified
    lo, hi = r.ci["mu_backward"]
    assert hi / lo > 3  # blocks pulled from rest rarely move back: mu<- is barely identified
    assert r.affine == pytest.approx((1.0, 4.0), rel=0.05)


def test_recovers_the_ratchet_gradient_of_a_convex_chain():
    truth = dict(mu_forward=0.05, mu_backward=0.15, eps=0.1)
    curve = -2.0 + 3.0 * chain_curves(7, [truth], FitOptions(n_chains=1000, seed=11))[0]
    r = fit_curve(curve, opts=FAST)
    assert r.r2 > 0.999
    # the stationary ratchet profile fixes mu<- - mu-> (gradient F*/k); the pair itself is a ridge
    assert r.params["mu_backward"] - r.params["mu_forward"] == pytest.approx(0.10, rel=0.2)
    assert r.ci["mu_backward"][0] <= 0.15 <= r.ci["mu_backward"][1]


def test_recovers_time_scale_and_friction_from_a_trajectory():
    truth = dict(mu_forward=0.08, mu_backward=0.08, eps=0.03, lam=0.0, tau=0.4)
    epochs = np.arange(0, 101, 10)
    traj = 0.5 + 2.0 * chain_curves(7, [truth], FitOptions(n_chains=1000, seed=11), probe_epochs=epochs)[0]
    r = fit_curve(traj, probe_epochs=epochs, opts=FAST)
    assert r.target == "trajectory" and r.fitted.shape == traj.shape and r.r2 > 0.999
    assert r.params["tau"] == pytest.approx(0.4, rel=0.1)
    assert r.params["mu_forward"] == pytest.approx(0.08, rel=0.1)
    assert r.params["eps"] == pytest.approx(0.03, rel=0.15)
    # the time scale is identified from a trajectory: the truth lies in the 95 % interval, widened
    # by 3 % because the interval counts only the residual scatter, not the Monte-Carlo error of
    # the 128-chain fit against the 1000-chain "measurement" (a ~1-2 % shift of the optimum)
    for name in ("tau", "mu_forward", "lam"):
        lo, hi = r.ci[name]
        assert lo * 0.97 - 1e-4 <= truth[name] <= hi * 1.03 + 1e-4, (name, r.ci[name])
        assert hi / max(lo, 1e-4) < 1.2 or name == "lam", (name, r.ci[name])  # and narrow


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="final curve must be 1-D"):
        fit_curve(np.ones((3, 8)), opts=FAST)
    with pytest.raises(ValueError, match="one epoch per probe"):
        fit_curve(np.ones((3, 8)), probe_epochs=[0, 1], opts=FAST)
    with pytest.raises(ValueError, match=">= 3 finite layers"):
        fit_curve([1.0, np.nan, 0.0], opts=FAST)
    with pytest.raises(ValueError, match="uncertainty"):
        FitOptions(uncertainty="magic")
    with pytest.raises(ValueError, match="bootstrap intervals need"):
        fit_curve(np.linspace(3, 0, 8), opts=FitOptions(uncertainty="bootstrap", grid=3, maxfev=20))


def test_fit_store_writes_fits_and_figures(tmp_path):
    from phase_diagrams import jobs
    from phase_diagrams.cli import main
    from phase_diagrams.runner import run_sweep
    from phase_diagrams.store import Store

    spec = {"name": "fitme", "seeds": [1, 2], "ensemble_size": 4,
            "train": {"dataset": "gaussian", "n_train": 128, "image_size": 3, "depth": 3, "width": 8, "epochs": 30,
                      "probe_every": 10},
            "rows": {"field": "alpha", "values": [0.0, 1.0]},
            "columns": {"field": "label_noise", "values": [0.0, 0.5]},
            "simulator": {"presets": []}}
    store = Store(tmp_path / "f.sqlite")
    run_sweep(spec, store, backend="serial", progress=False)
    fits = jobs.fit_job(store, "fitme", tmp_path / "fig", cells=[(0, 0), (1, 1)], progress=False,
                        n_chains=64, search_chains=32, grid=3, maxfev=40, uncertainty="bootstrap", n_bootstrap=3)
    assert sorted(zip(fits["row"], fits["col"], strict=True)) == [(0, 0), (1, 1)]
    assert (fits["mu_forward_lo"] <= fits["mu_forward_hi"]).all()
    back = store.fits("fitme", "final")
    assert len(back) == 2 and np.allclose(back["eps"], fits["eps"])
    for stem in ("fitme_fit_final_params", "fitme_fit_final_curves"):
        assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 2000
    assert main(["fit", "--store", str(store.path), "--cell", "0,1", "--out", str(tmp_path / "fig"),
                 "--uncertainty", "none", "--chains", "32", "--workers", "1", "--no-progress"]) == 0
    assert len(store.fits("fitme")) == 3
    assert main(["fit", "--store", str(store.path), "--cell", "7,7", "--out", str(tmp_path / "fig")]) == 2


def test_fit_trends_report_rank_correlations_and_monotone_medians():
    import pandas as pd

    from phase_diagrams.fitting import fit_trends

    rows = []
    for i, a in enumerate([0.0, 0.5, 1.0]):
        for j in range(4):
            mf, eps = 0.1 * (1 - a) + 0.01, 0.01 * (j + 1)  # friction falls with alpha, noise rises
            rows.append(dict(row=i, col=j, row_value=a, noise_rank=j, mu_forward=mf, mu_forward_lo=mf / 2,
                             mu_forward_hi=mf * 2, mu_backward=0.05, mu_backward_lo=1e-4, mu_backward_hi=1.0,
                             eps=eps, eps_lo=eps * 0.9, eps_hi=eps * 1.1, asymmetry=0.05 - mf, mobility=0.5))
    t = fit_trends(pd.DataFrame(rows)).set_index("param")
    assert t.loc["mu_forward", "spearman_alpha"] == pytest.approx(-1.0)
    assert t.loc["mu_forward", "monotone_in_alpha"] == "decreasing"
    assert t.loc["eps", "spearman_noise"] == pytest.approx(1.0) and t.loc["eps", "monotone_in_noise"] == "increasing"
    assert t.loc["mu_forward", "identified"] == 1.0 and t.loc["mu_backward", "identified"] == 0.0
    assert t.loc["asymmetry", "spearman_alpha"] == pytest.approx(1.0) and np.isnan(t.loc["asymmetry", "identified"])
