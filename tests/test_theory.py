"""Physics: the simulator against the analytic predictions of SPEC §2.4."""

import math

import numpy as np
import pytest

from springblock import ChainParams, simulate, theory
from springblock.dynamics import _simulate_normals
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
    e_mf = theory.ratchet_elongations(p)
    # the mean-field profile is the one on which every block's mean drift vanishes: net force
    # T_{i+1} - T_i (T = k e) is a root of mean_drift (checked against Monte Carlo above), and the
    # springs span the chain
    net = np.diff(p.k_array * e_mf)
    assert max(abs(theory.mean_drift(f, mf, mb, eps)) for f in net) < 1e-12
    assert e_mf.sum() == pytest.approx(p.y, abs=1e-12)
    grad = np.polyfit(ids, e_mf, 1)[0]
    # simulated per-chain gradients: mean within 5 SE, SE = std / sqrt(n_chains)
    assert abs(slopes.mean() - grad) < 5 * se
    lab = regime(load_curve(res.x.mean(0), p.y))
    assert lab == ("linear" if mf == mb else "convex")


def test_low_noise_stays_concave_high_noise_ratchets():
    base = ChainParams(mu_forward=0.05, mu_backward=0.15)
    low = base.replace(eps=0.02)
    assert theory.relaxation_steps(low) > 100 * low.n_steps
    assert regime(simulate(low, 200, seed=1).load_curve()) == "concave"
    assert regime(simulate(base.replace(eps=0.2), 200, seed=1).load_curve()) == "convex"


def _coarse(xi, r):
    """Normals of the step r * h from those of step h, on the same Brownian path: ``(C, n, L)`` ->
    ``(C, n / r, L)``, the sum of each r consecutive increments over sqrt(r)."""
    C, n, L = xi.shape
    return xi.reshape(C, n // r, r, L).sum(2) / np.sqrt(r)


@pytest.mark.parametrize("order,friction", [(1, 0.0), (2, 0.0), (2, 0.05)])
def test_kernel_strong_order(order, friction):
    """Strong order of the production kernels (normals injected), two-sided.

    Frictionless, both integrators are Euler-Maruyama schemes with additive noise of the linear
    SDE ``gamma dx = (-K x + b) dt + sigma dW`` (first order, gamma = 1: x <- x + dt F + sigma
    sqrt(dt) xi, i.e. eta = dt and eps = sigma / sqrt(dt)) and of the Langevin SDE (second order,
    eps = sigma). With additive noise Milstein's correction vanishes, so Euler-Maruyama *is*
    Milstein: strong order 1 (Kloeden & Platen 1992, ch. 10), not the generic 1/2. The RMS error
    at T over 64 Brownian paths, against the same kernel at dt/16 of the finest step, must decay
    with a log-log slope in [0.8, 1.25] (measured 1.03-1.08 over seeds 0-2).

    Friction: the second-order kernel's friction is an implicit step of the Coulomb force in
    velocity (a consistent scheme for fixed mu); its drift is discontinuous at v = 0, where the
    general guarantee drops to order 1/2, so its interval is [0.45, 1.25] (measured 0.97-1.01).
    The first-order model's soft threshold acts on the per-step force noise eps xi = sigma xi /
    sqrt(dt), which grows as dt shrinks: with friction the family has no dt -> 0 limit at fixed
    mu, so only its frictionless case is an SDE scheme to measure.
    """
    L, C, sigma = 7, 64, 0.2
    if order == 1:
        T, dts = 2.0, [0.1, 0.05, 0.025, 0.0125]

        def params(dt, n):
            return ChainParams(k=1.0, eta=dt, n_steps=n, eps=sigma / np.sqrt(dt), mu_forward=friction,
                               mu_backward=1.5 * friction)
    else:
        T, dts = 4.0, [0.2, 0.1, 0.05, 0.025]

        def params(dt, n):
            return ChainParams(order=2, k=1.0, m=1.0, gamma=1.0, eta=dt, n_steps=n, eps=sigma,
                               mu_forward=friction, mu_backward=1.5 * friction)
    fine = dts[-1] / 16
    n_fine = round(T / fine)
    xi = np.random.default_rng(0).standard_normal((C, n_fine, L))
    x_fine = _simulate_normals(params(fine, n_fine), xi.reshape(C, -1)).x
    err = []
    for dt in dts:
        r = round(dt / fine)
        x = _simulate_normals(params(dt, n_fine // r), _coarse(xi, r).reshape(C, -1)).x
        err.append(np.sqrt(np.mean(np.sum((x - x_fine) ** 2, axis=-1))))
    slope = np.polyfit(np.log(dts), np.log(err), 1)[0]
    lo = 0.8 if friction == 0 else 0.45
    assert lo <= slope <= 1.25, (slope, err)


def test_langevin_kernel_overdamped_limit():
    """The Langevin kernel approaches the first-order kernel as m -> 0, on the same normals.

    Second order with mass m, damping gamma, friction and noise as forces (mu_acc = mu / m,
    eps_2 = sigma / m): ``m dv = (F - gamma v - mu sgn v) dt + sigma dW``; its m -> 0 limit is
    ``gamma dx = (F - mu sgn dx) dt + sigma dW``, whose step dt is the first-order map with
    eta = dt / gamma, eps_1 = sigma / sqrt(dt) (the same xi each step).

    (i) Exactly at m = gamma dt the kernel's step *is* that map: u = (dt/m)(F + eps_1 xi) and
        v' = (dt/m) S(F + eps_1 xi), so x' = x + eta S(...): equal to rounding (1e-12).
    (ii) For m >> dt, summing ``m dv`` gives ``gamma (x_m - x_0)(T) = int (F(x_m) - F(x_0)) - m
        (v(T) - v(0))``; the last term dominates, and by equipartition ``m <v_i^2> = sigma^2 /
        (2 gamma)``, so without friction the RMS distance is ``sigma sqrt(L m / (2 gamma^3))``:
        rate 1/2 in m. Asserted: the measured RMS over 64 paths within 20 % of that (the RMS of
        448 squared distances has ~3.5 % standard error; the dropped integral term is O(m)),
        and with friction the log-log slope over m = 4..256 dt in [0.4, 0.65] (measured 0.52-0.56).
    """
    L, C, dt, T, sigma, gamma = 7, 64, 1e-3, 2.0, 0.2, 1.0
    n = round(T / dt)
    xi = np.random.default_rng(0).standard_normal((C, n * L))
    x0 = np.random.default_rng(1).normal(scale=0.3, size=(C, L))
    for mu in (0.0, 0.05):
        p1 = ChainParams(k=1.0, eta=dt / gamma, eps=sigma / np.sqrt(dt), n_steps=n, mu_forward=mu, mu_backward=2 * mu)
        x1 = _simulate_normals(p1, xi, x0=x0).x
        ms = dt * 2.0 ** np.arange(0, 9, 2)  # m = dt, 4 dt, ..., 256 dt
        rms = []
        for m in ms:
            p2 = ChainParams(order=2, k=1.0, m=m, gamma=gamma, eta=dt, eps=sigma / m, n_steps=n,
                             mu_forward=mu / m, mu_backward=2 * mu / m)
            x2 = _simulate_normals(p2, xi, x0=x0).x
            rms.append(np.sqrt(np.mean(np.sum((x2 - x1) ** 2, axis=-1))))
        rms = np.array(rms)
        assert rms[0] < 1e-12  # (i)
        if mu == 0.0:
            predicted = sigma * np.sqrt(L * ms[2:] / (2 * gamma**3))
            np.testing.assert_allclose(rms[2:], predicted, rtol=0.2)
        slope = np.polyfit(np.log(ms[1:]), np.log(rms[1:]), 1)[0]
        assert 0.4 <= slope <= 0.65, (slope, rms)
