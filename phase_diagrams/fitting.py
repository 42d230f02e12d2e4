"""Fit spring-block parameters to trained networks (SPEC §5.1): "which chain is this network?"

Model
    The first-order chain of SPEC §2.2 with one block per hidden layer, ``k = 1``, ``y = 1``,
    ``eta = 0.01`` and blocks starting at rest at the wall. Free parameters (all relative to
    ``k``): ``mu_forward``, ``mu_backward``, ``eps`` and, when a probe trajectory is fitted, the
    noise decay ``lam`` and the time scale ``tau`` (simulation time per training epoch, so epoch
    ``e`` is compared with the chain at ``t = tau e``). A final curve alone is compared with the
    chain after ``FitOptions.n_steps`` steps.
Affine map
    A measured ``log D_l`` and a simulated ``y − x_l`` are compared up to ``log D ≈ a + b (y − x)``
    with ``b >= 0`` (profiled out in closed form at every candidate: least squares, with ``b``
    clipped at 0), one map for all layers and probe times. A trajectory is compared by its change
    since the first probe (``FitOptions.baseline = "initial"``, default): a randomly initialised
    network's ``log D_l`` already varies with depth, a chain at rest does not.
Objective
    The residual sum of squares ``RSS = Σ (log D − a − b (y − x))²`` over layers (and probes), the
    chain's ensemble mean taken over ``n_chains`` chains with *common random numbers*: every
    candidate sees the same noise, so the objective is a smooth function of the parameters and
    differences between candidates are not Monte-Carlo noise.
Optimiser
    Nelder–Mead (``scipy.optimize.minimize``) on ``log mu->, log mu<-, log eps`` (and ``lam``,
    ``log tau``) on 64 chains, a short search from each of ``FitOptions.starts`` starts — (i) the
    analytic guess of :func:`initial_guess`
    (SPEC §2.4: the ratchet gradient ``(mu-> − mu<-)/2k`` per spring for a convex curve, the
    friction staircase ``mu->/k`` for a concave one, and an ``eps`` whose relaxation time
    (:func:`springblock.theory.relaxation_steps`) fits the horizon) and (ii) the best points of a
    coarse grid simulated in one batched kernel call (shared by every cell of a panel) — then
    the best continued; the reported curve and intervals use 256 chains. A trajectory is fitted in
    stages: the final curve first (as above), then ``tau`` by a bounded 1-D search with the rest
    fixed, then all five parameters by Nelder–Mead from there.
Uncertainty (``FitOptions.uncertainty``)
    ``"jacobian"`` (default, cheap): Gauss–Newton covariance ``s² (JᵀJ)⁻¹`` of the log-parameters
    from central differences of the residuals, ``s² = RSS / (n − p − 2)``; 95 % intervals
    ``exp(θ ± 1.96 se)``. ``"profile"``: profile-likelihood intervals — each parameter on a grid,
    the others re-optimised, the interval where ``RSS`` stays below ``RSS_min (1 + F_{1,n−p−2}(0.95)
    / (n − p − 2))``. ``"bootstrap"``: over seeds — the cell's seeds resampled with replacement,
    refitted, 2.5–97.5 % percentiles (needs ≥ 2 seeds). An interval that reaches a bound or an
    infinite standard error marks a parameter the data do not identify.

    from phase_diagrams.fitting import fit_curve, fit_store
    res = fit_curve(curve)                                   # one final log D curve
    res = fit_curve(trajectory, probe_epochs=epochs)         # a probe trajectory
    table = fit_store("runs.sqlite", "label-noise")          # every cell, written to the store
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from springblock import ChainParams, simulate

log = logging.getLogger(__name__)

__all__ = ["FitOptions", "FitResult", "PARAMS", "initial_guess", "chain_curves", "fit_curve", "fit_cells",
           "fit_store", "fit_trends"]

#: Fitted parameters, in this order; the last two only for trajectories.
PARAMS = ("mu_forward", "mu_backward", "eps", "lam", "tau")
_BOUNDS = {  # natural-scale bounds (the optimiser works on logs except for lam)
    "mu_forward": (1e-4, 1.0),
    "mu_backward": (1e-4, 1.0),
    "eps": (1e-4, 2.0),
    "lam": (0.0, 1.0),
    "tau": (1e-3, 1e3),
}
_LOG = {"mu_forward": True, "mu_backward": True, "eps": True, "lam": False, "tau": True}


@dataclass(frozen=True)
class FitOptions:
    """How to fit (defaults: search on 64 chains, report on 256, 10 000 steps, Jacobian intervals)."""

    n_chains: int = 256          # chains of the reported fit and its intervals (common random numbers)
    search_chains: int = 64      # chains per candidate during the search (4x cheaper, same noise words)
    n_steps: int = 10_000        # horizon of a final-curve fit (steps of eta = 0.01)
    eta: float = 0.01            # chain time step
    seed: int = 0                # noise of the chains
    grid: int = 7                # coarse start grid: grid^3 points over (mu->, mu<-, eps)
    starts: int = 3              # Nelder-Mead starts: the analytic guess + the best grid points
    maxfev: int = 240            # Nelder-Mead function evaluations in all
    xatol: float = 0.01          # Nelder-Mead tolerance on the log-parameters (1 %)
    uncertainty: str = "jacobian"  # jacobian | profile | bootstrap | none
    n_bootstrap: int = 20        # bootstrap resamples (bootstrap only)
    records: int = 200           # trajectory records over the horizon (trajectory fits)
    baseline: str = "initial"    # trajectories: fit the change since the first probe ("initial") or "none"

    def __post_init__(self):
        for name in ("n_chains", "search_chains", "n_steps", "grid", "starts", "maxfev", "n_bootstrap", "records"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"FitOptions.{name}={v!r}: must be an integer >= 1")
        if self.uncertainty not in ("jacobian", "profile", "bootstrap", "none"):
            raise ValueError(f"FitOptions.uncertainty={self.uncertainty!r}: choose jacobian, profile, bootstrap "
                             "or none")
        if self.baseline not in ("initial", "none"):
            raise ValueError(f"FitOptions.baseline={self.baseline!r}: choose initial or none")
        if not (0 < self.eta <= 0.1):
            raise ValueError(f"FitOptions.eta={self.eta!r}: must be in (0, 0.1]")


@dataclass
class FitResult:
    """A fitted chain.

    Attributes
    ----------
    params : dict
        Fitted ``mu_forward``, ``mu_backward``, ``eps`` (and ``lam``, ``tau`` for trajectories).
    ci : dict
        ``name -> (low, high)`` 95 % interval (NaN when not computed).
    affine : (a, b)
        ``log D ≈ a + b (y − x)``.
    rss, rms : residual sum of squares and root-mean-square residual (log D units)
    r2 : fraction of the measured variance explained (of the change since the first probe for a
        trajectory with ``baseline="initial"``)
    fitted : simulated curve(s) mapped to log D units, the shape of the measured data
    measured : the measured data
    target : ``"final"`` or ``"trajectory"``
    n_evals, converged, wall_s, start : optimiser facts and the start point used
    """

    params: dict
    ci: dict
    affine: tuple
    rss: float
    rms: float
    r2: float
    fitted: np.ndarray
    measured: np.ndarray
    target: str
    n_evals: int
    converged: bool
    wall_s: float
    start: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        return dict(params=self.params, ci={k: list(v) for k, v in self.ci.items()}, affine=list(self.affine),
                    rss=self.rss, rms=self.rms, r2=self.r2, fitted=np.asarray(self.fitted).tolist(),
                    measured=np.asarray(self.measured).tolist(), target=self.target, n_evals=self.n_evals,
                    converged=self.converged, wall_s=self.wall_s, start=self.start)


# ------------------------------------------------------------------------------------------
# the chain side
# ------------------------------------------------------------------------------------------
def _chain(n_blocks: int, opts: FitOptions, p: dict, n_steps: int) -> ChainParams:
    return ChainParams(n_blocks=n_blocks, k=1.0, y=1.0, eta=opts.eta, n_steps=int(n_steps),
                       mu_forward=float(p["mu_forward"]), mu_backward=float(p["mu_backward"]),
                       eps=float(p["eps"]), lam=float(p.get("lam", 0.0)))


def chain_curves(n_blocks: int, points: list[dict], opts: FitOptions, *, probe_epochs=None) -> np.ndarray:
    """Ensemble-mean ``y − x_l`` curves of candidate parameter dicts, in one batched call.

    Final curves ``(P, L+1)`` after ``opts.n_steps``; with ``probe_epochs`` (all points must
    share ``tau``) the curves at ``t = tau * epoch``, ``(P, n_probes, L+1)``, linearly interpolated
    between ``opts.records`` records.
    """
    if probe_epochs is None:
        grid = [_chain(n_blocks, opts, p, opts.n_steps) for p in points]
        return np.asarray(simulate(grid, n_chains=opts.n_chains, seed=opts.seed).load_curve())
    epochs = np.asarray(probe_epochs, dtype=float)
    taus = {float(p["tau"]) for p in points}
    if len(taus) != 1:
        raise ValueError("points of one trajectory call must share tau")
    tau = taus.pop()
    t_end = tau * float(epochs.max())
    every = max(1, int(math.ceil(t_end / opts.eta / opts.records)))
    n_steps = every * int(math.ceil(t_end / opts.eta / every)) if t_end > 0 else every
    grid = [_chain(n_blocks, opts, p, n_steps) for p in points]
    res = simulate(grid, n_chains=opts.n_chains, seed=opts.seed, record_every=every)
    traj = np.asarray(res.trajectory_curve())  # (P, R, L+1)
    times = res.steps * opts.eta
    want = tau * epochs
    out = np.empty((len(points), len(epochs), n_blocks + 1))
    for layer in range(n_blocks + 1):
        for q in range(len(points)):
            out[q, :, layer] = np.interp(want, times, traj[q, :, layer])
    return out


def _affine(measured: np.ndarray, sim: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``measured ≈ a + b sim`` with ``b >= 0``; returns ``(a, b, rss)``."""
    m, s = measured.ravel(), sim.ravel()
    sc = s - s.mean()
    var = float(sc @ sc)
    b = max(float(sc @ (m - m.mean())) / var, 0.0) if var > 0 else 0.0
    a = float(m.mean() - b * s.mean())
    r = m - a - b * s
    return a, b, float(r @ r)


# ------------------------------------------------------------------------------------------
# starting points
# ------------------------------------------------------------------------------------------
def _eps_for_relaxation(mu_f: float, mu_b: float, n_blocks: int, steps: float, eta: float) -> float:
    """``eps`` at which :func:`springblock.theory.relaxation_steps` equals ``steps``:
    ``1 / (eta m lambda_min(K)) = steps`` with mobility ``m = 2 Phi(−(mu-> + mu<-)/(2 eps))``
    (solved in logs: ``m`` underflows for small ``eps``)."""
    lam_min = float(np.linalg.eigvalsh(ChainParams(n_blocks=n_blocks).stiffness_matrix())[0])

    def gap(log_eps):
        log_m = math.log(2.0) + float(special.log_ndtr(-0.5 * (mu_f + mu_b) / math.exp(log_eps)))
        return -math.log(eta * lam_min) - log_m - math.log(steps)

    lo, hi = math.log(_BOUNDS["eps"][0]), math.log(_BOUNDS["eps"][1])
    if gap(hi) > 0:
        return _BOUNDS["eps"][1]
    if gap(lo) < 0:
        return _BOUNDS["eps"][0]
    return math.exp(optimize.brentq(gap, lo, hi, xtol=1e-4))


def initial_guess(curve, opts: FitOptions = FitOptions()) -> dict:
    """Analytic start for a final curve ``log D_0..log D_L`` (SPEC §2.4).

    With loads ``d_l`` and their mean slope ``g = (d_L − d_1)/(L − 1)``, the chain's elongations
    are the loads rescaled by ``s`` so that all ``L + 1`` springs (the anchor spring continuing
    the trend) add up to ``y = 1``. Concave (``g > 0``): the pulled friction staircase
    (:func:`springblock.theory.friction_profile`) has step ``mu->/k`` between the moved springs,
    read off the last two loads: ``mu-> = mu<- = (d_L − d_{L−1}) s``, and little noise (``eps``
    relaxing over 30 horizons). Convex (``g < 0``): the ratchet profile
    (:func:`springblock.theory.ratchet_elongations`) has gradient ``F*/k = (mu-> − mu<-)/2`` per
    spring, so ``mu<- = mu-> − 2 g s`` at a base ``mu-> = 0.05``, and ``eps`` relaxes the chain in
    a third of the horizon. Linear: symmetric ``mu = 0.05``, relaxed noise.
    """
    c = np.asarray(curve, dtype=float)
    d = c[:-1] - c[1:]
    L = d.size
    g = (d[-1] - d[0]) / max(L - 1, 1)
    lo, hi = _BOUNDS["mu_forward"]
    if g > 0:  # concave: the staircase's step is the gradient of the last (pulled) loads
        step = max(d[-1] - d[-2], g)
        s = 1.0 / (d.sum() + d[-1] + step) if d.sum() + d[-1] + step > 0 else 1.0
        mf = mb = float(np.clip(step * s, lo, hi))
        if step * s > 1e-3:
            eps = _eps_for_relaxation(mf, mb, L, 30 * opts.n_steps, opts.eta)
            return dict(mu_forward=mf, mu_backward=mb, eps=float(np.clip(eps, *_BOUNDS["eps"])))
    total = d.sum() + d[-1] + g
    s = 1.0 / total if total > 0 else 1.0
    if g * s < -1e-3:  # convex: ratchet gradient
        mf = 0.05
        mb = float(np.clip(mf - 2 * g * s, lo, hi))
    else:  # linear
        mf = mb = 0.05
    eps = _eps_for_relaxation(mf, mb, L, opts.n_steps / 3, opts.eta)
    return dict(mu_forward=mf, mu_backward=mb, eps=float(np.clip(eps, *_BOUNDS["eps"])))


def start_grid(n_blocks: int, opts: FitOptions) -> tuple[list[dict], np.ndarray]:
    """The coarse start grid (``opts.grid``³ log-spaced points over mu->, mu<- in [0.005, 0.3] and
    eps in [0.003, 0.5]) and its final curves, one batched call."""
    mus = np.geomspace(0.005, 0.3, opts.grid)
    epss = np.geomspace(0.003, 0.5, opts.grid)
    pts = [dict(mu_forward=float(a), mu_backward=float(b), eps=float(e)) for a in mus for b in mus for e in epss]
    return pts, chain_curves(n_blocks, pts, dataclasses.replace(opts, n_chains=opts.search_chains))


# ------------------------------------------------------------------------------------------
# the fit
# ------------------------------------------------------------------------------------------
def _names(trajectory: bool) -> tuple[str, ...]:
    return PARAMS if trajectory else PARAMS[:3]


def _to_theta(p: dict, names) -> np.ndarray:
    return np.array([math.log(p[n]) if _LOG[n] else p[n] for n in names])


def _from_theta(theta, names) -> dict:
    out = {}
    for n, v in zip(names, theta, strict=True):
        lo, hi = _BOUNDS[n]
        out[n] = float(np.clip(math.exp(v) if _LOG[n] else v, lo, hi))
    return out


def _theta_bounds(names):
    return [tuple(math.log(b) if _LOG[n] else b for b in _BOUNDS[n]) for n in names]


class _Objective:
    """RSS of one measured target as a function of the (log-)parameters; counts evaluations."""

    def __init__(self, measured, n_blocks, opts, probe_epochs, names, fixed=None):
        self.measured, self.n_blocks, self.opts = measured, n_blocks, opts
        self.probe_epochs, self.names, self.fixed = probe_epochs, names, dict(fixed or {})
        self.n = 0

    def curves(self, theta):
        p = dict(self.fixed, **_from_theta(theta, self.names))
        self.n += 1
        c = chain_curves(self.n_blocks, [p], self.opts, probe_epochs=self.probe_epochs)[0]
        if self.probe_epochs is not None and self.opts.baseline == "initial":
            c = c - c[0]  # the change since the first probe (the measured side is shifted alike)
        return c

    def residuals(self, theta):
        sim = self.curves(theta)
        a, b, _ = _affine(self.measured, sim)
        return (self.measured - a - b * sim).ravel()

    def __call__(self, theta):
        return _affine(self.measured, self.curves(theta))[2]


def _minimize(obj, theta0, names, maxfev, xatol):
    bounds = _theta_bounds(names)
    step = np.array([0.5 if _LOG[n] else 0.05 for n in names])
    simplex = np.vstack([theta0] + [theta0 + np.eye(len(names))[i] * step[i] for i in range(len(names))])
    simplex = np.clip(simplex, [b[0] for b in bounds], [b[1] for b in bounds])
    return optimize.minimize(obj, theta0, method="Nelder-Mead", bounds=bounds,
                             options=dict(maxfev=maxfev, initial_simplex=simplex, xatol=xatol, fatol=1e-12))


def _jacobian_ci(obj, theta, names, rss, n_obs):
    h = 1e-2
    r0 = obj.residuals(theta)
    cols = []
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        cols.append((obj.residuals(theta + e) - obj.residuals(theta - e)) / (2 * h))
    jac = np.stack(cols, axis=1)
    dof = max(n_obs - len(theta) - 2, 1)
    s2 = max(rss, float(r0 @ r0)) / dof
    # a parameter the residuals do not feel has an infinite standard error; the others come from
    # the inverse of their block of J^T J (a pseudo-inverse if that block is singular too)
    norms = np.linalg.norm(jac, axis=0)
    keep = norms > 1e-9 * max(norms.max(), 1e-300)
    se = np.full(len(theta), np.inf)
    if keep.any():
        jk = jac[:, keep]
        info = jk.T @ jk
        try:
            cov = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            cov = np.linalg.pinv(info)
        var = s2 * np.diag(cov)
        se[keep] = np.where(var >= 0, np.sqrt(np.abs(var)), np.inf)
    ci = {}
    for n, t, s in zip(names, theta, se, strict=True):
        lo, hi = _BOUNDS[n]
        if not np.isfinite(s):
            ci[n] = (lo, hi)
        elif _LOG[n]:
            ci[n] = (float(math.exp(max(t - 1.96 * s, math.log(lo)))), float(math.exp(min(t + 1.96 * s, math.log(hi)))))
        else:
            ci[n] = (float(max(t - 1.96 * s, lo)), float(min(t + 1.96 * s, hi)))
    return ci


def _profile_ci(obj, theta, names, rss, n_obs, maxfev=40, points=7):
    dof = max(n_obs - len(theta) - 2, 1)
    limit = rss * (1 + stats.f.ppf(0.95, 1, dof) / dof)
    bounds = _theta_bounds(names)
    ci = {}
    for i, n in enumerate(names):
        span = 1.5 if _LOG[n] else 0.2
        grid = np.clip(theta[i] + np.linspace(-span, span, points), *bounds[i])
        inside = []
        others = [j for j in range(len(names)) if j != i]
        for g in grid:
            def sub(t_other, g=g, i=i, others=others):
                t = theta.copy()
                t[i] = g
                t[others] = t_other
                return obj(t)

            best = optimize.minimize(sub, theta[others], method="Nelder-Mead", bounds=[bounds[j] for j in others],
                                     options=dict(maxfev=maxfev)).fun if others else sub(np.array([]))
            inside.append(best <= limit)
        vals = [math.exp(g) if _LOG[n] else g for g in grid]
        ok = [v for v, keep in zip(vals, inside, strict=True) if keep]
        ci[n] = (float(min(ok)), float(max(ok))) if ok else (float("nan"), float("nan"))
    return ci


def fit_curve(measured, *, probe_epochs=None, opts: FitOptions = FitOptions(), start: dict | None = None,
              start_points=None, replicates=None) -> FitResult:
    """Fit one chain to a measured final curve or probe trajectory.

    Parameters
    ----------
    measured : ``(L+1,)`` final ``log D_l`` curve, or ``(n_probes, L+1)`` trajectory (then
        ``probe_epochs`` is required)
    probe_epochs : epochs of the trajectory's probes
    opts : :class:`FitOptions`
    start : a parameter dict to start from (skips the start search)
    start_points : ``(points, curves)`` from :func:`start_grid` (computed here if None)
    replicates : ``(n_seeds, ...)`` per-seed data whose mean is ``measured`` (bootstrap only)
    """
    t0 = time.perf_counter()
    y = np.asarray(measured, dtype=float)
    traj = probe_epochs is not None
    if traj and (y.ndim != 2 or len(probe_epochs) != y.shape[0]):
        raise ValueError(f"a trajectory must be (n_probes, L+1) with one epoch per probe, got {y.shape} and "
                         f"{None if probe_epochs is None else len(probe_epochs)} epochs")
    if not traj and y.ndim != 1:
        raise ValueError(f"a final curve must be 1-D (L+1,), got shape {y.shape}; pass probe_epochs for a trajectory")
    if y.shape[-1] < 3 or not np.all(np.isfinite(y)):
        raise ValueError("the measured curve needs >= 3 finite layers")
    n_blocks = y.shape[-1] - 1
    final = y[-1] if traj else y
    shift = np.zeros_like(y)
    if traj and opts.baseline == "initial":
        shift = np.broadcast_to(y[0], y.shape).copy()
        # A randomly initialised network is not a chain at rest (its log D_l already varies with
        # depth); compare what training changed: log D_l(e) − log D_l(e_0) with the chain's
        # (y − x_l(t)) − (y − x_l(0)).
        y = y - y[0]
    names = _names(traj)
    # start: analytic guess vs the coarse grid's best final-curve fit
    search = _Objective(y, n_blocks, dataclasses.replace(opts, n_chains=opts.search_chains), probe_epochs, names)
    if traj and start is None:
        # stage A: the final curve at the standard horizon; stage B: the time scale tau by a 1-D
        # search with the rest fixed; then all five parameters from there
        quick = dataclasses.replace(opts, uncertainty="none", maxfev=max(60, opts.maxfev // 2))
        base = fit_curve(final, opts=quick, start_points=start_points).params
        base["lam"] = 0.0
        epochs = np.asarray(probe_epochs, dtype=float)
        tau0 = opts.n_steps * opts.eta / max(float(epochs.max()), 1.0)
        lt = optimize.minimize_scalar(
            lambda v: search(_to_theta(dict(base, tau=math.exp(v)), names)),
            bounds=(math.log(tau0) - 4, min(math.log(tau0) + 3, math.log(_BOUNDS["tau"][1]))), method="bounded",
            options=dict(xatol=0.02, maxiter=25))
        start = dict(base, tau=math.exp(lt.x), source="final+tau")
    if start is None:
        guess = dict(initial_guess(final, opts), source="analytic")
        pts, curves = start_points if start_points is not None else start_grid(n_blocks, opts)
        ranked = sorted(((_affine(final, c)[2], i) for i, c in enumerate(curves)), key=lambda t: t[0])
        starts = [guess] + [dict(pts[i], source="grid") for _, i in ranked[: opts.starts - 1]]
    else:
        starts = [dict(start, source=start.get("source", "given"))]
    if traj:
        epochs = np.asarray(probe_epochs, dtype=float)
        for st in starts:
            st.setdefault("lam", 0.0)
            st.setdefault("tau", opts.n_steps * opts.eta / max(float(epochs.max()), 1.0))
    # multi-start: a short search from each start, then the best one continued to maxfev
    short = max(20, opts.maxfev // (2 * len(starts))) if len(starts) > 1 else opts.maxfev
    tries = [(_minimize(search, _to_theta(st, names), names, short, opts.xatol), st) for st in starts]
    res, start = min(tries, key=lambda t: t[0].fun)
    if len(starts) > 1:
        res = _minimize(search, res.x, names, max(opts.maxfev - short * len(starts), 20), opts.xatol)
    start = {k: v for k, v in start.items()}
    source = start.pop("source", "given")
    theta = res.x
    best = _from_theta(theta, names)
    obj = _Objective(y, n_blocks, opts, probe_epochs, names)  # the reported numbers: opts.n_chains
    sim = obj.curves(theta)
    a, b, rss = _affine(y, sim)
    n_obs = y.size
    ci = {n: (float("nan"), float("nan")) for n in names}
    if opts.uncertainty == "jacobian":
        ci = _jacobian_ci(obj, theta, names, rss, n_obs)
    elif opts.uncertainty == "profile":
        ci = _profile_ci(obj, theta, names, rss, n_obs)
    elif opts.uncertainty == "bootstrap":
        ci = _bootstrap_ci(replicates, best, probe_epochs, opts)
    tss = float(((y - y.mean()) ** 2).sum())
    return FitResult(params=best, ci=ci, affine=(a, b), rss=rss, rms=math.sqrt(rss / n_obs),
                     r2=1 - rss / tss if tss > 0 else float("nan"), fitted=a + b * sim + shift, measured=y + shift,
                     target="trajectory" if traj else "final", n_evals=search.n + obj.n, converged=bool(res.success),
                     wall_s=time.perf_counter() - t0, start=dict(start, source=source))


def _bootstrap_ci(replicates, best, probe_epochs, opts):
    if replicates is None or len(replicates) < 2:
        raise ValueError("bootstrap intervals need the per-seed data of >= 2 seeds (replicates)")
    reps = np.asarray(replicates, dtype=float)
    rng = np.random.default_rng(opts.seed)
    quick = dataclasses.replace(opts, uncertainty="none", maxfev=max(30, opts.maxfev // 4))
    draws = []
    for _ in range(opts.n_bootstrap):
        pick = rng.integers(0, len(reps), len(reps))
        r = fit_curve(reps[pick].mean(axis=0), probe_epochs=probe_epochs, opts=quick, start=best)
        draws.append(r.params)
    return {n: (float(np.percentile([d[n] for d in draws], 2.5)), float(np.percentile([d[n] for d in draws], 97.5)))
            for n in best}


# ------------------------------------------------------------------------------------------
# many cells
# ------------------------------------------------------------------------------------------
def _fit_cell_task(cell: dict, opts_d: dict, start_points, target: str) -> dict:
    """Worker: fit one cell (a dict with curve / trajectory / probe_epochs / replicates)."""
    import numba

    numba.set_num_threads(1)  # cells run in parallel; each simulation on one thread
    opts = FitOptions(**opts_d)
    if target == "trajectory":
        res = fit_curve(cell["trajectory"], probe_epochs=cell["probe_epochs"], opts=opts, start_points=start_points,
                        replicates=cell.get("replicates"))
    else:
        res = fit_curve(cell["curve"], opts=opts, start_points=start_points, replicates=cell.get("replicates"))
    return dict(row=cell["row"], col=cell["col"], **res.to_record())


def fit_cells(cells: pd.DataFrame, *, target: str = "final", opts: FitOptions = FitOptions(),
              workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Fit every cell of a :func:`~phase_diagrams.compare.measured_cells` table (cells without a
    finite curve are skipped). ``workers > 1`` fits cells in parallel processes (joblib), each
    simulating on one thread. Returns one row per fitted cell: row, col, row_value, col_value,
    noise_rank, the fitted parameters, ``{name}_lo`` / ``{name}_hi``, the derived ``asymmetry =
    mu<- − mu->`` (the ratchet gradient is ``−asymmetry/2`` per spring) and noise ``mobility =
    2 Phi(−(mu-> + mu<-)/(2 eps))`` (:func:`springblock.theory.ratchet_mobility`: how freely noise
    moves the blocks), a, b, rss, rms, r2, fitted, measured, target, n_evals, converged, wall_s."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if target not in ("final", "trajectory"):
        raise ValueError(f"target must be 'final' or 'trajectory', got {target!r}")
    use = cells[cells["curve"].map(lambda c: c is not None)]
    if target == "trajectory":
        use = use[use["trajectory"].map(lambda t: t is not None and len(t) >= 3)]
    if use.empty:
        what = " and a trajectory" if target == "trajectory" else ""
        raise ValueError(f"no cell has a finite measured curve{what}")
    n_blocks = len(use.iloc[0]["curve"]) - 1
    start_points = start_grid(n_blocks, opts)
    jobs = [dict(row=int(r["row"]), col=int(r["col"]), curve=r["curve"], trajectory=r.get("trajectory"),
                 probe_epochs=r.get("probe_epochs"), replicates=r.get("replicates")) for _, r in use.iterrows()]
    opts_d = dataclasses.asdict(opts)
    it = Parallel(n_jobs=workers, return_as="generator")(
        delayed(_fit_cell_task)(j, opts_d, start_points, target) for j in jobs)
    rows = list(tqdm(it, total=len(jobs), desc=f"fit ({target})", unit="cell", disable=not progress))
    out = []
    meta = use.set_index(["row", "col"])
    for r in rows:
        m = meta.loc[(r["row"], r["col"])]
        flat = dict(row=r["row"], col=r["col"], row_value=m["row_value"], col_value=m["col_value"],
                    noise_rank=m["noise_rank"], target=r["target"])
        for n, v in r["params"].items():
            flat[n] = v
            flat[f"{n}_lo"], flat[f"{n}_hi"] = r["ci"][n]
        p = r["params"]
        flat["asymmetry"] = p["mu_backward"] - p["mu_forward"]
        flat["mobility"] = float(2 * special.ndtr(-(p["mu_forward"] + p["mu_backward"]) / (2 * p["eps"])))
        flat.update(a=r["affine"][0], b=r["affine"][1], rss=r["rss"], rms=r["rms"], r2=r["r2"], fitted=r["fitted"],
                    measured=r["measured"], n_evals=r["n_evals"], converged=r["converged"], wall_s=r["wall_s"],
                    start=json.dumps(r["start"]))
        out.append(flat)
    return pd.DataFrame(out)


def fit_store(store, sweep: str | None = None, *, target: str = "final", opts: FitOptions = FitOptions(),
              workers: int = 1, cells=None, progress: bool = True) -> pd.DataFrame:
    """Fit every cell (or the ``cells`` list of ``(row, col)``) of a stored sweep and write the fits
    to the store (table ``fits``); returns the table of :func:`fit_cells`. Per-seed curves are
    passed along, so ``opts.uncertainty="bootstrap"`` resamples seeds."""
    from phase_diagrams.compare import measured_cells
    from phase_diagrams.jobs import _one_sweep, _store

    store = _store(store)
    sweep = _one_sweep(store, sweep)
    spec = store.sweep_spec(sweep)
    runs = store.runs(sweep)
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
    are monotone, and the fraction of cells where it is identified (95 % interval within a factor
    10)."""
    from phase_diagrams.compare import spearman

    out = []
    for name in [n for n in PARAMS if n in fits.columns] + [n for n in ("asymmetry", "mobility") if n in fits]:
        by_row = fits.groupby("row_value")[name].median()
        by_col = fits.groupby("noise_rank")[name].median()
        if f"{name}_lo" in fits:
            lo, hi = fits[f"{name}_lo"].to_numpy(float), fits[f"{name}_hi"].to_numpy(float)
            ident = float((np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi < 10 * np.where(lo > 0, lo, np.inf)))
                          .mean())
        else:
            ident = float("nan")  # derived quantity: no interval

        def monotone(v):
            d = np.diff(np.asarray(v, dtype=float))
            return "increasing" if np.all(d >= 0) else "decreasing" if np.all(d <= 0) else "no"

        out.append(dict(param=name, spearman_alpha=spearman(fits["row_value"], fits[name]),
                        spearman_noise=spearman(fits["noise_rank"], fits[name]),
                        median_by_alpha=" ".join(f"{v:.3g}" for v in by_row), monotone_in_alpha=monotone(by_row),
                        median_by_noise=" ".join(f"{v:.3g}" for v in by_col), monotone_in_noise=monotone(by_col),
                        identified=ident))
    return pd.DataFrame(out)
