"""Physics: the simulator against the analytic predictions of SPEC §2.4."""

import math

import numpy as np
import pytest

from springblock import ChainParams, simulate, theory
from springblock import _reference as ref
from springblock.observables import chain_energy, curvature, elongations, load_curve, regime


def test_equal_elongations_without_friction_and_noise():
    p = ChainParams(mu_forward=0.0, mu_backward=0.0, eps=0.0, n_steps=20_000)
    res = simulate(p, n_chains=1)
    e = elongations(res.x[0], p.y)
    np.testing.assert_allclose(e, 1 / 8, atol=1e-9)
    np.testing.assert_allclose(theory.equal_elongations(p), 1 / 8, atol=1e-14)
    assert regime(load_curve(res.x[0], p.y)) == "linear"
    # springs in series with unequal k carry one tension: e_i = T / k_i
    k = np.linspace(0.5, 2.0, 8)
    e = theory.equal_elongations(p.replace(k=k))
    np.testing.assert_allclose(k * e, (k * e)[0], rtol=1e-12)
    assert math.isclose(e.sum(), 1.0)


def test_exact_linear_transient():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=7)
    p = ChainParams(mu_forward=0.0, mu_backward=0.0, eps=0.0, n_steps=500, k=rng.uniform(0.5, 1.5, 8),
                    kappa=0.1, pin_position=0.2)
    res = simulate(p, n_chains=1, x0=x0, record_every=25)
    np.testing.assert_allclose(res.traj[0], theory.linear_transient(p, x0, res.steps), rtol=0, atol=1e-12)


def test_friction_fixed_point_does_not_move():
    # x chosen so that every net force lies strictly inside the friction band
    x0 = np.array([0.1, 0.18, 0.27, 0.35, 0.44, 0.52, 0.6])
    p = ChainParams(eps=0.0, mu_forward=0.5, mu_backward=0.5, n_steps=1000)
    F = -p.stiffness_matrix() @ x0 + p.load_vector()
    assert np.all(np.abs(F) < 0.5)
    assert np.array_equal(simulate(p, 1, x0=x0).x[0], x0)
    p2 = ChainParams.second_order_original(eps=0.0, mu_forward=0.5, mu_backward=0.5, n_steps=1000)
    r2 = simulate(p2, 1, x0=x0)  # Langevin: at rest inside the band, static friction holds
    assert np.array_equal(r2.x[0], x0) and np.all(r2.v[0] == 0)


@pytest.mark.parametrize("mu", [0.05, 0.1, 0.3])
def test_energy_never_increases_without_noise(mu):
    p = ChainParams(eps=0.0, mu_forward=mu, mu_backward=2 * mu, n_steps=3000, eta=0.04)
    res = simulate(p, n_chains=1, x0=np.random.default_rng(1).normal(size=7), record_every=1)
    E = chain_energy(res.traj[0], p.y, p.k_array)
    assert np.all(np.diff(E) <= 1e-13 * E[:-1])
    assert E[-1] < E[0]


@pytest.mark.parametrize("noise", ["independent", "shared"])
def test_stationary_covariance_matches_lyapunov(noise):
    p = ChainParams(mu_forward=0.0, mu_backward=0.0, eps=0.3, eta=0.05, n_steps=4000, noise_mode=noise)
    C = 4000
    x = simulate(p, n_chains=C, seed=3).x  # 4000 steps = 30 relaxation times of the slowest mode
    S = np.cov(x.T)
    Sig = theory.stationary_covariance(p)
    # SE of a sample covariance of Gaussians: sqrt((S_ii S_jj + S_ij^2) / C); allow 5 SE
    se = np.sqrt((np.outer(np.diag(Sig), np.diag(Sig)) + Sig**2) / C)
    assert np.max(np.abs(S - Sig) / se) < 5
    # the mean is the frictionless equilibrium, within 5 SE
    se_m = np.sqrt(np.diag(Sig) / C)
    assert np.max(np.abs(x.mean(0) - theory.equilibrium(p)) / se_m) < 5


@pytest.mark.parametrize("y,mu,k", [(1.0, 0.1, 1.0), (1.0, 0.05, 1.0), (0.3, 0.1, 1.0), (2.0, 0.04, 0.7),
                                    (1.7, 0.07, tuple(np.linspace(1, 1.5, 8)))])
def test_friction_profile_pulled_from_rest(y, mu, k):
    p = ChainParams(eps=0.0, mu_forward=mu, mu_backward=0.03, y=y, k=k, n_steps=60_000)
    x = simulate(p, n_chains=1).x[0]
    xt = theory.friction_profile(p)
    np.testing.assert_allclose(x, xt, atol=1e-9)
    e = elongations(xt, y)[:-1]
    moved = e > 0
    assert np.all(e[~moved] == 0)
    if np.isscalar(k):
        np.testing.assert_allclose(np.diff(e[moved]), mu / k, atol=1e-12)  # linear growth toward y
    assert curvature(load_curve(xt, y)) < 0  # concave


def test_friction_profile_closed_form_uniform():
    # mu/k n(n-1)/2 <= y <= mu/k n(n+1)/2 with n stretched springs: y=1, mu=0.1 -> n=4
    e = elongations(theory.friction_profile(ChainParams(eps=0.0, mu_forward=0.1)), 1.0)
    np.testing.assert_allclose(e, [0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4], atol=1e-14)


def test_mean_drift_formula_against_monte_carlo():
    rng = np.random.default_rng(4)
    z = rng.standard_normal(2_000_000)
    for F, mf, mb, s in [(0.0, 0.05, 0.15, 0.1), (0.1, 0.1, 0.1, 0.05), (-0.2, 0.0, 0.3, 0.2)]:
        w = F + s * z
        S = np.sign(w) * np.maximum(np.abs(w) - np.where(w >= 0, mf, mb), 0)
        assert abs(S.mean() - theory.mean_drift(F, mf, mb, s)) < 5 * S.std() / np.sqrt(z.size)
    for s in (0.01, 0.1, 1.0):  # F* = (mu-> - mu<-)/2 is the root for every sigma
        assert abs(theory.mean_drift(theory.ratchet_force(0.05, 0.2), 0.05, 0.2, s)) < 1e-15
    assert theory.mean_drift(0.0, 0.05, 0.2, 0.1) > 0  # forward ratchet at zero force


@pytest.mark.parametrize("mf,mb,eps", [(0.05, 0.15, 0.1), (0.0, 0.1, 0.1), (0.1, 0.1, 0.1), (0.02, 0.1, 0.3)])
def test_ratchet_elongations_match_simulation(mf, mb, eps):
    p = ChainParams(mu_forward=mf, mu_backward=mb, eps=eps, n_steps=30_000)
    assert p.n_steps > 10 * theory.relaxation_steps(p)
    res = simulate(p, n_chains=1500, seed=8)
    e = elongations(res.x, p.y)  # (C, 8)
    ids = np.arange(8)
    slopes = np.polyfit(ids, e.T, 1)[0]  # per-chain least-squares gradient
    se = slopes.std() / np.sqrt(slopes.size)
    grad = np.polyfit(ids, theory.ratchet_elongations(p), 1)[0]
    assert grad == pytest.approx((mf - mb) / 2, abs=1e-12)
    assert abs(slopes.mean() - grad) < 5 * se
    lab = regime(load_curve(res.x.mean(0), p.y))
    assert lab == ("linear" if mf == mb else "convex")


def test_low_noise_stays_concave_high_noise_ratchets():
    base = ChainParams(mu_forward=0.05, mu_backward=0.15)
    low = base.replace(eps=0.02)
    assert theory.relaxation_steps(low) > 100 * low.n_steps
    assert regime(simulate(low, 200, seed=1).load_curve()) == "concave"
    assert regime(simulate(base.replace(eps=0.2), 200, seed=1).load_curve()) == "convex"


def _coarse(xi_fine, r):
    return xi_fine.reshape(-1, r, xi_fine.shape[-1]).sum(1) / np.sqrt(r)


@pytest.mark.parametrize("friction", [0.0, 0.02])
def test_second_order_strong_convergence(friction):
    """Semi-implicit Euler on one Brownian path: error at T vs a 1/64-step solution shrinks as
    dt^p; p ~ 1 without friction (additive noise), p >= 0.5 with Coulomb friction."""
    T, dts, L = 4.0, [0.2, 0.1, 0.05, 0.025], 7
    fine = dts[-1] / 16
    n_fine = round(T / fine)
    base = ChainParams.second_order_original(k=1.0, eps=0.2, lam=0.0, noise_mode="independent", n_steps=n_fine,
                                             eta=fine, mu_forward=friction, mu_backward=1.5 * friction)
    errs = []
    for seed in range(4):
        xi = np.random.default_rng(seed).standard_normal((n_fine, L))
        x_ref, _, _ = ref.second_order(base, xi.reshape(-1))
        e = []
        for dt in dts:
            r = round(dt / fine)
            p = base.replace(eta=dt, n_steps=n_fine // r)
            x, _, _ = ref.second_order(p, _coarse(xi, r).reshape(-1))
            e.append(np.linalg.norm(x - x_ref))
        errs.append(e)
    err = np.mean(errs, axis=0)
    order = np.polyfit(np.log(dts), np.log(err), 1)[0]
    assert order > (0.85 if friction == 0 else 0.5), (order, err)
    assert np.all(np.diff(err) < 0)
