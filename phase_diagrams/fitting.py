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
    the best continued; the reported curve and intervals use 256 chains (see Polish). A trajectory is fitted in
    stages: the final curve first (as above), then ``tau`` by a bounded 1-D search with the rest
    fixed, then all five parameters by Nelder–Mead from there.
Polish
    The search optimum carries the Monte-Carlo error of ``search_chains`` chains; it is re-optimised
    by least squares (``scipy.optimize.least_squares``, ``FitOptions.polish`` evaluations) on the
    ``n_chains`` objective, from the best start and (``"mc"``) from the other starts' optima.
    ``converged`` is the least-squares stopping status (False: the budget ran out).
Uncertainty (``FitOptions.uncertainty``)
    ``"mc"`` (default): the measured curve is modelled as ``m = a + b c(θ) + e_m`` with white
    measurement scatter ``e_m`` (variance ``s² = RSS / (n − p − 2)``), and the fitted chain curve
    is ``c(θ) + e_f``, the mean of ``N = n_chains`` chains of one fixed seed, with covariance
    ``Σ_f = b² C(θ̂) / N``, ``C`` the per-chain covariance of ``y − x_l`` (from
    ``cov_chains`` chains of a fresh seed). With ``J`` the Jacobian of the profiled residuals in
    the (log-)parameters and ``G = (JᵀJ)⁻¹Jᵀ`` the sandwich covariance is::

        Σ_θ = (t_{0.975, n−p−2} / 1.96)² s² G Gᵀ + G Σ_f Gᵀ

    (directions with no curvature in ``JᵀJ`` get variance 10⁶), 95 % intervals
    ``exp(θ̂ ± 1.96 sqrt(diag Σ_θ))`` clipped to the bounds. Because the surface has curved
    ridges and separate valleys, the intervals are then widened to the union with (i) the other
    starts' optima whose ``RSS <= RSS_min (1 + F_{1,n−p−2}(0.95)/(n−p−2))``, (ii) a scan along
    the largest-variance direction of the identified parameters (points under the same limit),
    (iii) a profile over each not-identified parameter (fixed at ``profile_points`` values,
    the others re-fitted, sandwich intervals of accepted points). ``"jacobian"``: the old
    residual-only Gauss–Newton interval ``s² (JᵀJ)⁻¹`` (ignores the chains' Monte-Carlo error:
    it excluded the truth on concave curves). ``"profile"``: profile likelihood on a grid.
    ``"bootstrap"``: the cell's seeds resampled (needs ≥ 2 seeds).
Identified
    :func:`is_identified`: a finite interval inside the bounds (an interval reaching a bound is
    never identified) and narrower than a factor 10 (``lam``: width ≤ 0.5). What is not identified
    is reported with the combinations that may be (:attr:`FitResult.combinations`):
    ``asymmetry = mu<- − mu->`` (a convex curve's ratchet gradient), ``mobility = 2 Phi(−(mu-> +
    mu<-)/(2 eps))``, and ``best``, the log-linear combination along the smallest eigenvalue of
    ``Σ_θ`` (on a concave curve ``mu-> eps^-0.8``), delta-method intervals.
Flags
    ``"not converged"``, ``"{name} at bound"``, ``"r2 < 0.5"``, ``"b = 0: ..."`` (the chain cannot
    follow the curve) in :attr:`FitResult.flags` and the ``flags`` / ``flag_*`` columns of
    :func:`phase_diagrams.jobs.fit_cells`; see ``docs/fitting.md`` for the measured coverage (:func:`coverage_study`).

    from phase_diagrams import fit_curve                     # or phase_diagrams.fitting
    res = fit_curve(curve)                                   # one final log D curve (~5-10 s on 2 cores)
    res.params, res.ci, res.identified, res.combinations, res.flags
    res = fit_curve(trajectory, probe_epochs=epochs)         # a probe trajectory

Many cells of a stored sweep (joblib fan-out, the store's ``fits`` table, trend statistics):
:func:`phase_diagrams.jobs.fit_store`, :func:`~phase_diagrams.jobs.fit_cells`,
:func:`~phase_diagrams.jobs.fit_trends`.
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
from springblock.errors import InputError, check_memory, finite_or_none

log = logging.getLogger(__name__)

__all__ = ["FitOptions", "FitResult", "PARAMS", "initial_guess", "chain_curves", "chain_samples", "affine_fit",
           "is_identified", "fit_curve", "coverage_study", "coverage_summary",
           "load_curve_file", "COVERAGE_TRUTHS"]

#: Fitted parameters, in this order; the last two only for trajectories.
PARAMS = ("mu_forward", "mu_backward", "eps", "lam", "tau")
_BOUNDS = {  # natural-scale bounds (the optimiser works on logs except for lam)
    "mu_forward": (1e-4, 1.0),
    "mu_backward": (1e-4, 1.0),
    "eps": (1e-4, 2.0),
    "lam": (0.0, 1.0),
    "tau": (1e-3, 1e3),
}
#: Most time steps of one fit's horizon (each evaluation simulates all of them).
MAX_FIT_STEPS = 10**8
UNCERTAINTIES = ("mc", "jacobian", "profile", "bootstrap", "none")
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
    uncertainty: str = "mc"      # mc (MC-aware sandwich, default) | jacobian | profile | bootstrap | none
    polish: int = 30             # least-squares evaluations on n_chains after the search (0: none)
    cov_chains: int = 1024       # chains (fresh seed) that estimate the chain covariance of the "mc" intervals
    profile_points: int = 4      # "mc": profile points per non-identified parameter (0: no profile)
    n_bootstrap: int = 20        # bootstrap resamples (bootstrap only)
    records: int = 200           # trajectory records over the horizon (trajectory fits)
    baseline: str = "initial"    # trajectories: fit the change since the first probe ("initial") or "none"

    def __post_init__(self):
        for name in ("polish", "profile_points"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InputError(f"FitOptions.{name}={v!r}: must be an integer >= 0")
        for name in ("n_chains", "search_chains", "n_steps", "grid", "starts", "maxfev", "n_bootstrap", "records",
                     "cov_chains"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"FitOptions.{name}={v!r}: must be an integer >= 1")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise InputError(f"FitOptions.seed={self.seed!r}: must be an integer in [0, 2**63)")
        if self.n_steps > MAX_FIT_STEPS:
            raise InputError(f"FitOptions.n_steps={self.n_steps!r}: at most {MAX_FIT_STEPS:.0e} steps (every "
                             "evaluation simulates the whole horizon; the default is 10 000)")
        for name in ("n_chains", "search_chains", "cov_chains"):  # >= 16 bytes per chain (position, seed)
            check_memory(f"FitOptions.{name}={getattr(self, name)}", 16.0 * getattr(self, name))
        if not isinstance(self.xatol, (int, float)) or isinstance(self.xatol, bool) or not (
                math.isfinite(self.xatol) and self.xatol > 0):
            raise InputError(f"FitOptions.xatol={self.xatol!r}: must be a finite number > 0")
        if self.uncertainty not in UNCERTAINTIES:
            raise InputError(f"FitOptions.uncertainty={self.uncertainty!r}: choose {', '.join(UNCERTAINTIES)}")
        if self.baseline not in ("initial", "none"):
            raise InputError(f"FitOptions.baseline={self.baseline!r}: choose initial or none")
        if not isinstance(self.eta, (int, float)) or isinstance(self.eta, bool) or not (0 < self.eta <= 0.1):
            raise InputError(f"FitOptions.eta={self.eta!r}: must be in (0, 0.1]")


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
    identified : dict
        ``name -> bool`` by :func:`is_identified` (never True for an interval reaching a bound).
    combinations : list of dict
        ``name, value, lo, hi, identified`` of derived quantities the data may pin when the
        parameters are not (see :func:`_combinations`): ``asymmetry``, ``mobility``, ``best: ...``.
    flags : list of str
        Problems: ``"not converged"``, ``"{name} at bound"``, ``"r2 < 0.5"``, ``"b = 0: ..."``.
    uncertainty : the method of ``ci``
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
    identified: dict = field(default_factory=dict)
    combinations: list = field(default_factory=list)
    flags: list = field(default_factory=list)
    uncertainty: str = ""

    def to_record(self) -> dict:
        """A JSON-ready dict (NaN and infinities as None)."""
        rec = dict(params=self.params, ci={k: list(v) for k, v in self.ci.items()}, identified=self.identified,
                   combinations=self.combinations, flags=self.flags, affine=list(self.affine), rss=self.rss,
                   rms=self.rms, r2=self.r2, fitted=np.asarray(self.fitted).tolist(),
                   measured=np.asarray(self.measured).tolist(), target=self.target, n_evals=self.n_evals,
                   converged=self.converged, wall_s=self.wall_s, start=self.start, uncertainty=self.uncertainty)
        return finite_or_none(rec)


# ------------------------------------------------------------------------------------------
# the chain side
# ------------------------------------------------------------------------------------------
def _chain(n_blocks: int, opts: FitOptions, p: dict, n_steps: int) -> ChainParams:
    return ChainParams(n_blocks=n_blocks, k=1.0, y=1.0, eta=opts.eta, n_steps=int(n_steps),
                       mu_forward=float(p["mu_forward"]), mu_backward=float(p["mu_backward"]),
                       eps=float(p["eps"]), lam=float(p.get("lam", 0.0)))


def _horizon(tau: float, epochs: np.ndarray, opts: FitOptions) -> tuple[int, int]:
    """``(record_every, n_steps)`` covering ``t = tau * max(epochs)`` in about ``opts.records`` records."""
    t_end = tau * float(epochs.max())
    every = max(1, int(math.ceil(t_end / opts.eta / opts.records)))
    n_steps = every * int(math.ceil(t_end / opts.eta / every)) if t_end > 0 else every
    return every, n_steps


def _interp_rows(times: np.ndarray, curves: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``curves[..., R, L+1]`` from ``times (R,)`` to ``want`` along axis -2
    (clamped at the ends, as :func:`numpy.interp`)."""
    w = np.clip(want, times[0], times[-1])
    i = np.clip(np.searchsorted(times, w, side="right") - 1, 0, max(len(times) - 2, 0))
    j = np.minimum(i + 1, len(times) - 1)
    span = np.where(times[j] > times[i], times[j] - times[i], 1.0)
    f = ((w - times[i]) / span)[:, None]
    return (1 - f) * curves[..., i, :] + f * curves[..., j, :]


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
    every, n_steps = _horizon(tau, epochs, opts)
    grid = [_chain(n_blocks, opts, p, n_steps) for p in points]
    res = simulate(grid, n_chains=opts.n_chains, seed=opts.seed, record_every=every)
    traj = np.asarray(res.trajectory_curve())  # (P, R, L+1)
    return _interp_rows(res.steps * opts.eta, traj, tau * epochs)


def chain_samples(n_blocks: int, point: dict, opts: FitOptions, *, probe_epochs=None) -> np.ndarray:
    """Per-chain ``y − x_l`` curves of one parameter dict: ``(n_chains, L+1)`` (final) or
    ``(n_chains, n_probes, L+1)`` (at ``t = tau * epoch``), ``opts.n_chains`` chains of seed
    ``opts.seed``. Their mean is :func:`chain_curves`; their covariance over chains divided by
    the number of chains is the Monte-Carlo covariance of that mean."""
    if probe_epochs is None:
        res = simulate(_chain(n_blocks, opts, point, opts.n_steps), n_chains=opts.n_chains, seed=opts.seed)
        return np.asarray(res.load_curve(mean=False))
    epochs = np.asarray(probe_epochs, dtype=float)
    tau = float(point["tau"])
    every, n_steps = _horizon(tau, epochs, opts)
    res = simulate(_chain(n_blocks, opts, point, n_steps), n_chains=opts.n_chains, seed=opts.seed,
                   record_every=every)
    per = 1.0 - np.concatenate([np.zeros(res.traj.shape[:-1] + (1,)), res.traj], axis=-1)  # y = 1
    return _interp_rows(res.steps * opts.eta, per, tau * epochs)


def affine_fit(measured, sim) -> tuple[float, float, float]:
    """Least-squares affine map ``measured ≈ a + b sim`` with ``b >= 0``.

    ``b = max(cov(m, s) / var(s), 0)`` and ``a = mean(m) − b mean(s)`` over all entries (arrays of
    any, equal, shape); returns ``(a, b, rss)`` with ``rss = Σ (m − a − b s)²``. A clipped
    ``b = 0`` means the simulated curve cannot follow the measured one (anti-correlated or flat).
    """
    measured, sim = np.asarray(measured, dtype=float), np.asarray(sim, dtype=float)
    m, s = measured.ravel(), sim.ravel()
    sc = s - s.mean()
    var = float(sc @ sc)
    b = max(float(sc @ (m - m.mean())) / var, 0.0) if var > 0 else 0.0
    a = float(m.mean() - b * s.mean())
    r = m - a - b * s
    return a, b, float(r @ r)


_affine = affine_fit  # the historical private name (tests, old callers)


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
        a, b, _ = affine_fit(self.measured, sim)
        return (self.measured - a - b * sim).ravel()

    def __call__(self, theta):
        return affine_fit(self.measured, self.curves(theta))[2]


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


def _residual_jacobian(obj, theta, h):
    """Central differences ``∂r/∂θ`` of the affine-profiled residuals, ``(n_obs, p)``."""
    cols = []
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        cols.append((obj.residuals(theta + e) - obj.residuals(theta - e)) / (2 * h))
    return np.stack(cols, axis=1)


_UNBOUNDED = 1e6  # variance (log units²) given to a direction the residuals do not feel


def _mc_covariance(jac, s2_white, sigma_fit, dof, z=1.959963984540054):
    """Effective covariance of the parameters (log scale) of the MC-aware sandwich.

    ``G = (JᵀJ)⁻¹ Jᵀ``; ``Σ_θ = (t_dof/z)² s² G Gᵀ + G Σ_fit Gᵀ`` so that ``θ ± z sqrt(diag Σ_θ)``
    is a 95 % interval (the white part carries a Student-t factor: ``s²`` is estimated from
    ``dof`` residual degrees of freedom). Directions with ``JᵀJ`` eigenvalue below ``1e-10`` of the
    largest get variance ``1e6``: nothing in the data pins them.
    """
    info = jac.T @ jac
    d, v = np.linalg.eigh(info)
    small = d <= 1e-10 * max(d.max(), 1e-300)
    inv = (v[:, ~small] / d[~small]) @ v[:, ~small].T
    g = inv @ jac.T
    t = stats.t.ppf(0.975, max(dof, 1))
    cov = (t / z) ** 2 * s2_white * (g @ g.T) + g @ sigma_fit @ g.T
    if small.any():
        cov = cov + _UNBOUNDED * v[:, small] @ v[:, small].T
    return 0.5 * (cov + cov.T)


def _ci_from_cov(theta, cov, names, z=1.959963984540054):
    ci = {}
    for i, n in enumerate(names):
        lo, hi = _BOUNDS[n]
        s = math.sqrt(max(cov[i, i], 0.0))
        if _LOG[n]:
            ci[n] = (float(math.exp(max(theta[i] - z * s, math.log(lo)))),
                     float(math.exp(min(theta[i] + z * s, math.log(hi)))))
        else:
            ci[n] = (float(max(theta[i] - z * s, lo)), float(min(theta[i] + z * s, hi)))
    return ci


def is_identified(name: str, interval) -> bool:
    """The identification rule used everywhere (FitResult, :func:`fit_cells`, :func:`fit_trends`,
    the figures): a finite 95 % interval that reaches neither bound of ``_BOUNDS[name]`` (within
    0.1 %) and is narrower than a factor 10 (``hi/lo <= 10``; for ``lam``, width ``<= 0.5``)."""
    lo, hi = (float(v) for v in interval)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        return False
    blo, bhi = _BOUNDS[name]
    if _LOG.get(name, True):
        return lo > blo * 1.001 and hi < bhi / 1.001 and hi <= 10 * lo
    return lo > blo + 1e-3 * (bhi - blo) and hi < bhi - 1e-3 * (bhi - blo) and hi - lo <= 0.5


def _combinations(params: dict, theta, cov, names, ci: dict, z=1.959963984540054, w=None) -> list[dict]:
    """Derived quantities with delta-method intervals from the log-parameter covariance ``cov``.

    ``asymmetry = mu<- − mu->`` (the ratchet gradient is ``−asymmetry/2k`` per spring),
    ``mobility = 2 Phi(−u)``, ``u = (mu-> + mu<-)/(2 eps)`` (interval on ``log m``), and ``best``:
    the log-linear combination ``Π θ_i^{v_i}`` of mu->, mu<-, eps along the eigenvector ``v`` of
    the smallest eigenvalue of their covariance (scaled so that ``max |v_i| = 1``): the direction
    the curve pins best (on a concave curve, the ridge's normal). ``best`` is a local (tangent)
    direction: it counts as identified only when every parameter in it has an interval inside the
    bounds — on a ridge that runs into a bound (convex, linear curves) it is curved on the scale of
    the interval and the delta method does not cover (measured: 2 of 6 convex cases)."""
    ix = {n: i for i, n in enumerate(names)}
    k = [ix["mu_forward"], ix["mu_backward"], ix["eps"]]
    sub = cov[np.ix_(k, k)]
    mf, mb, ep = params["mu_forward"], params["mu_backward"], params["eps"]
    out = []

    def add(name, value, grad, log, rule):
        g = np.zeros(len(names))
        g[k] = grad
        se = math.sqrt(max(float(g @ cov @ g), 0.0))
        if log:  # value is the log of the quantity
            with np.errstate(over="ignore", under="ignore"):
                value, lo, hi = (float(np.exp(v)) for v in (value, value - z * se, value + z * se))
        else:
            lo, hi = value - z * se, value + z * se
        ok = bool(se < 0.1 * math.sqrt(_UNBOUNDED) and rule(lo, hi))
        out.append(dict(name=name, value=float(value), lo=float(lo), hi=float(hi), identified=ok))

    # signed: identified when the half-width is below half its size (or below 0.01 near zero)
    add("asymmetry", mb - mf, [-mf, mb, 0.0], False, lambda lo, hi: (hi - lo) / 2 <= max(0.5 * abs(mb - mf), 0.01))
    u = (mf + mb) / (2 * ep)
    log_m = math.log(2.0) + float(special.log_ndtr(-u))
    dlogm_du = -math.exp(-0.5 * u * u - 0.5 * math.log(2 * math.pi) - float(special.log_ndtr(-u)))
    add("mobility", log_m, [dlogm_du * mf / (2 * ep), dlogm_du * mb / (2 * ep), -dlogm_du * u], True,
        lambda lo, hi: lo > 0 and hi <= 10 * lo)
    if w is None:
        d, v = np.linalg.eigh(sub)
        w = v[:, 0] / v[np.argmax(np.abs(v[:, 0])), 0]
        w = np.where(np.abs(w) < 0.05, 0.0, np.round(w, 2))
    label = " ".join(f"{n}^{c:g}" for n, c in zip(("mu_forward", "mu_backward", "eps"), w, strict=True) if c != 0)
    val = float(w @ theta[k])
    inside = all(is_identified(n, ci[n]) or c == 0 for n, c in zip(("mu_forward", "mu_backward", "eps"), w,
                                                                    strict=True))
    add(f"best: {label}", val, w, True, lambda lo, hi: inside and lo > 0 and hi <= 10 * lo)
    return out


def _flags(params, names, converged, r2, b) -> list[str]:
    """Problems of a fit, as short strings (empty: none)."""
    out = []
    if not converged:
        out.append("not converged")
    for n in names:
        lo, hi = _BOUNDS[n]
        v = params[n]
        near = (abs(math.log(v / lo)) < 0.01 or abs(math.log(hi / v)) < 0.01) if _LOG[n] else \
            (v - lo < 1e-3 * (hi - lo) and n != "lam") or hi - v < 1e-3 * (hi - lo)
        if near:
            out.append(f"{n} at bound")
    if not (np.isfinite(r2) and r2 >= 0.5):
        out.append("r2 < 0.5")
    if b <= 0:
        out.append("b = 0: the chain cannot follow the curve")
    return out


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

    Returns
    -------
    FitResult
        ``params``, 95 % ``ci``, ``identified``, ``combinations``, ``flags``, ``r2``, ``fitted``.

    Examples
    --------
    >>> import numpy as np
    >>> from phase_diagrams import fit_curve, FitOptions
    >>> from phase_diagrams.fitting import chain_curves
    >>> truth = dict(mu_forward=0.05, mu_backward=0.15, eps=0.1)        # a ratchet: convex curve
    >>> curve = 1.0 + 3.0 * chain_curves(7, [truth], FitOptions(n_chains=512, seed=9))[0]
    >>> res = fit_curve(curve)                                          # ~5-10 s on 2 cores
    >>> res.identified["mu_forward"]                                    # the levels: a ridge
    False
    >>> asym = next(c for c in res.combinations if c["name"] == "asymmetry")
    >>> asym["identified"] and asym["lo"] <= 0.10 <= asym["hi"]         # mu<- - mu->: pinned
    True
    """
    t0 = time.perf_counter()
    y = np.asarray(measured, dtype=float)
    traj = probe_epochs is not None
    if traj and (y.ndim != 2 or len(probe_epochs) != y.shape[0]):
        raise ValueError(f"a trajectory must be (n_probes, L+1) with one epoch per probe, got {y.shape} and "
                         f"{None if probe_epochs is None else len(probe_epochs)} epochs")
    if not traj and y.ndim != 1:
        raise ValueError(f"a final curve must be 1-D (L+1,), got shape {y.shape}; pass probe_epochs for a trajectory")
    if y.shape[-1] < 3:
        raise InputError(f"the measured curve has {y.shape[-1]} layers: a fit needs >= 3")
    if not np.all(np.isfinite(y)):
        bad = np.argwhere(~np.isfinite(y))[:5].tolist()
        raise InputError(f"the measured curve has non-finite values (NaN or inf) at {bad}"
                         f"{' ...' if (~np.isfinite(y)).sum() > 5 else ''}: every value must be finite")
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
        ranked = sorted(((affine_fit(final, c)[2], i) for i, c in enumerate(curves)), key=lambda t: t[0])
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
    others = [t[0].x for t in tries if t[0] is not res]
    if len(starts) > 1:
        res = _minimize(search, res.x, names, max(opts.maxfev - short * len(starts), 20), opts.xatol)
    start = {k: v for k, v in start.items()}
    source = start.pop("source", "given")
    theta = res.x
    converged = bool(res.success)
    obj = _Objective(y, n_blocks, opts, probe_epochs, names)  # the reported numbers: opts.n_chains
    if opts.polish > 0:
        # the search optimum carries the Monte-Carlo error of search_chains chains: re-optimise on
        # the n_chains objective (least squares on the profiled residuals), whose error the "mc"
        # interval counts
        bnd = _theta_bounds(names)
        lo_b, hi_b = np.array([b[0] for b in bnd]), np.array([b[1] for b in bnd])
        x0 = np.clip(theta, lo_b + 1e-9, hi_b - 1e-9)
        ls = optimize.least_squares(obj.residuals, x0, bounds=(lo_b, hi_b), method="trf", diff_step=0.01,
                                    max_nfev=opts.polish, x_scale=np.where([_LOG[n] for n in names], 1.0, 0.1),
                                    xtol=1e-3, ftol=1e-3)
        if 2 * ls.cost <= obj(theta):
            theta = ls.x
        converged = bool(ls.status > 0)  # 0: the evaluation budget ran out
    if opts.polish > 0 and opts.uncertainty == "mc":
        # the other starts' optima, polished alike: separate valleys that fit as well are kept
        # (below) as part of the interval
        alt = []
        for x in others:
            if np.max(np.abs(x - theta)) < 0.05:
                continue
            lsx = optimize.least_squares(obj.residuals, np.clip(x, lo_b + 1e-9, hi_b - 1e-9), bounds=(lo_b, hi_b),
                                         method="trf", diff_step=0.01, max_nfev=max(opts.polish // 3, 8),
                                         x_scale=np.where([_LOG[n] for n in names], 1.0, 0.1), xtol=1e-3, ftol=1e-3)
            alt.append((2 * lsx.cost, lsx.x))
        if alt and min(alt, key=lambda t: t[0])[0] < obj(theta):  # another valley is deeper: report it
            k = int(np.argmin([t[0] for t in alt]))
            alt[k], theta = (obj(theta), theta), alt[k][1]
    else:
        alt = []
    best = _from_theta(theta, names)
    sim = obj.curves(theta)
    a, b, rss = affine_fit(y, sim)
    n_obs = y.size
    dof = max(n_obs - len(theta) - 2, 1)
    ci = {n: (float("nan"), float("nan")) for n in names}
    cov = None
    combos = []
    if opts.uncertainty == "mc":
        cov = _mc_uncertainty(obj, theta, names, b, rss, dof, best, probe_epochs, n_blocks, opts)
        ci = _ci_from_cov(theta, cov, names)
        combos = _combinations(best, theta, cov, names, ci)
        limit = rss * (1 + stats.f.ppf(0.95, 1, dof) / dof)
        for rss_k, th_k in alt:  # other local optima inside the likelihood region: union of intervals
            if rss_k > limit or np.max(np.abs(th_k - theta)) < 0.05:
                continue
            p_k = _from_theta(th_k, names)
            _, b_k, _ = affine_fit(y, obj.curves(th_k))
            cov_k = _mc_uncertainty(obj, th_k, names, b_k, rss_k, dof, p_k, probe_epochs, n_blocks, opts)
            ci_k = _ci_from_cov(th_k, cov_k, names)
            ci = {n: (min(ci[n][0], ci_k[n][0]), max(ci[n][1], ci_k[n][1])) for n in names}
            w = np.array([_parse_power(c["name"][6:]).get(n, 0.0) for n in PARAMS[:3]
                          for c in combos if c["name"].startswith("best: ")])
            more = {c["name"] if not c["name"].startswith("best: ") else "best": c
                    for c in _combinations(p_k, th_k, cov_k, names, ci_k, w=w if w.size else None)}
            for c in combos:
                o = more.get(c["name"] if not c["name"].startswith("best: ") else "best")
                c["lo"], c["hi"] = min(c["lo"], o["lo"]), max(c["hi"], o["hi"])
                c["identified"] = c["identified"] and o["identified"]
        ci = _ridge_scan(obj, theta, names, ci, cov, limit)
        ci, combos = _profile_unidentified(y, theta, names, ci, combos, rss, dof, probe_epochs, n_blocks, opts)
    elif opts.uncertainty == "jacobian":
        ci = _jacobian_ci(obj, theta, names, rss, n_obs)
    elif opts.uncertainty == "profile":
        ci = _profile_ci(obj, theta, names, rss, n_obs)
    elif opts.uncertainty == "bootstrap":
        ci = _bootstrap_ci(replicates, best, probe_epochs, opts)
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - rss / tss if tss > 0 else float("nan")
    identified = {n: is_identified(n, ci[n]) for n in names}
    return FitResult(params=best, ci=ci, affine=(a, b), rss=rss, rms=math.sqrt(rss / n_obs), r2=r2,
                     fitted=a + b * sim + shift, measured=y + shift, target="trajectory" if traj else "final",
                     n_evals=search.n + obj.n, converged=converged, wall_s=time.perf_counter() - t0,
                     start=dict(start, source=source), identified=identified, combinations=combos,
                     flags=_flags(best, names, converged, r2, b), uncertainty=opts.uncertainty)


def _ridge_scan(obj, theta, names, ci, cov, limit, points=17, span=1.0):
    """Extend the intervals along the ridge of the identified parameters.

    The local sandwich sees one valley; a concave curve's staircase has a long, narrow ridge
    (``mu-> eps^-0.8`` fixed) along which the optimiser stops early and separate minima fit as
    well. Scan ``θ̂ + t u``, ``t ∈ [−span, span]`` (log units, ``points`` points, one batched
    simulation), ``u`` the largest-variance eigenvector of ``cov`` restricted to the identified
    log-parameters; every scanned point with ``RSS <= limit`` is added to the intervals."""
    idx = [i for i, n in enumerate(names) if _LOG[n] and is_identified(n, ci[n])]
    if len(idx) < 2:
        return ci
    d, v = np.linalg.eigh(cov[np.ix_(idx, idx)])
    u = np.zeros(len(names))
    u[idx] = v[:, -1]
    bnd = _theta_bounds(names)
    lo_b, hi_b = np.array([b[0] for b in bnd]), np.array([b[1] for b in bnd])
    ts = np.linspace(-span, span, points)
    thetas = [np.clip(theta + t * u, lo_b, hi_b) for t in ts]
    pts = [dict(obj.fixed, **_from_theta(th, names)) for th in thetas]
    if obj.probe_epochs is not None:
        return ci  # trajectory points need one tau per call; the scan is for final curves
    curves = chain_curves(obj.n_blocks, pts, obj.opts)
    ci = dict(ci)
    for th, c in zip(thetas, curves, strict=True):
        if affine_fit(obj.measured, c)[2] <= limit:
            for n, val in _from_theta(th, names).items():
                ci[n] = (min(ci[n][0], val), max(ci[n][1], val))
    return ci


def _profile_unidentified(y, theta, names, ci, combos, rss, dof, probe_epochs, n_blocks, opts):
    """Widen the "mc" intervals over the directions the data do not pin.

    A parameter the sandwich calls not identified may sit far along a curved ridge, where the
    local covariance says nothing about the others. For each such parameter ``j`` (of mu->, mu<-,
    eps) and ``opts.profile_points`` values ``v`` log-spaced over its bounds: fix ``θ_j = v``,
    re-fit the others (least squares, ``opts.polish // 2`` evaluations), and if the profile
    ``RSS(v) <= RSS_min (1 + F_{1,dof}(0.95) / dof)`` take the union of every interval with that
    point's sandwich interval (the combinations likewise, ``best`` along the same exponents)."""
    free = [i for i, n in enumerate(names) if n in PARAMS[:3] and not is_identified(n, ci[n])]
    if not free or opts.profile_points < 1:
        return ci, combos
    limit = rss * (1 + stats.f.ppf(0.95, 1, dof) / dof)
    ci = dict(ci)
    comb = {c["name"]: dict(c) for c in combos}
    best_name = next((c["name"] for c in combos if c["name"].startswith("best: ")), None)
    w = np.array([_parse_power(best_name[6:]).get(n, 0.0) for n in PARAMS[:3]]) if best_name else None
    bnd = _theta_bounds(names)
    for i in free:
        others = [k for k in range(len(names)) if k != i]
        sub_names = tuple(names[k] for k in others)
        lo_b, hi_b = np.array([bnd[k][0] for k in others]), np.array([bnd[k][1] for k in others])
        for v in np.linspace(bnd[i][0], bnd[i][1], opts.profile_points + 2)[1:-1]:
            fixed = {names[i]: math.exp(v) if _LOG[names[i]] else v}
            sub = _Objective(y, n_blocks, opts, probe_epochs, sub_names, fixed=fixed)
            x0 = np.clip(theta[others], lo_b + 1e-9, hi_b - 1e-9)
            ls = optimize.least_squares(sub.residuals, x0, bounds=(lo_b, hi_b), method="trf", diff_step=0.01,
                                        max_nfev=max(opts.polish // 2, 8), xtol=1e-3, ftol=1e-3)
            if 2 * ls.cost > limit:
                continue
            full = theta.copy()
            full[others] = ls.x
            point = dict(fixed, **_from_theta(ls.x, sub_names))
            _, b_v, rss_v = affine_fit(y, sub.curves(ls.x))
            c_sub = _mc_uncertainty(sub, ls.x, sub_names, b_v, rss_v, dof, point, probe_epochs, n_blocks, opts)
            cov = np.zeros((len(names), len(names)))
            cov[np.ix_(others, others)] = c_sub
            ci_v = _ci_from_cov(full, cov, names)
            for n in names:
                ci[n] = (min(ci[n][0], ci_v[n][0]), max(ci[n][1], ci_v[n][1]))
            for c in _combinations({**_from_theta(full, names)}, full, cov, names, ci_v, w=w):
                key = best_name if c["name"].startswith("best: ") else c["name"]
                if key in comb:
                    comb[key]["lo"], comb[key]["hi"] = min(comb[key]["lo"], c["lo"]), max(comb[key]["hi"], c["hi"])
    out = []
    for c in comb.values():
        if c["name"] == "asymmetry":
            c["identified"] = bool(c["identified"] and (c["hi"] - c["lo"]) / 2 <= max(0.5 * abs(c["value"]), 0.01))
        else:
            c["identified"] = bool(c["identified"] and c["lo"] > 0 and c["hi"] <= 10 * c["lo"])
        if c["name"] == best_name:
            c["identified"] = bool(c["identified"] and all(
                is_identified(n, ci[n]) for n, e in zip(PARAMS[:3], w, strict=True) if e != 0))
        out.append(c)
    return ci, out


def _mc_uncertainty(obj, theta, names, b, rss, dof, best, probe_epochs, n_blocks, opts):
    """Log-parameter covariance of the "mc" method (see the module docstring)."""
    jac = _residual_jacobian(obj, theta, 0.02)
    samples = chain_samples(n_blocks, best, dataclasses.replace(opts, n_chains=opts.cov_chains,
                                                                seed=opts.seed + 7919), probe_epochs=probe_epochs)
    flat = samples.reshape(samples.shape[0], -1)
    if probe_epochs is not None and opts.baseline == "initial":
        flat = (samples - samples[:, :1]).reshape(samples.shape[0], -1)
    sigma_fit = b * b * np.cov(flat, rowvar=False) / opts.n_chains
    return _mc_covariance(jac, rss / dof, sigma_fit, dof)


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


def load_curve_file(path, epochs=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a measured curve or trajectory from CSV, JSON or NPY; returns ``(data, probe_epochs)``.

    ``data`` is ``(L+1,)`` (a final curve ``log D_0..log D_L``) or ``(n_probes, L+1)`` (probes ×
    layers); ``probe_epochs`` comes from ``epochs`` if given, else from the file (JSON key
    ``probe_epochs``; CSV column ``probe_epochs`` or ``epoch``), else None. JSON may be a bare
    (nested) list, ``{"curve": [...]}``, ``{"trajectory": [[...]], "probe_epochs": [...]}`` or a
    record of ``python -m nets train --json`` (``curve``, ``trajectory``, ``probe_epochs``): a
    trajectory is preferred when it comes with epochs. CSV: numbers only (one row: a curve; rows:
    probes), or a header row with an ``epoch``/``probe_epochs`` column. Raises ``ValueError``
    (naming the file) for a missing or unreadable file, a wrong shape or non-finite values.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    file_epochs = None
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".json":
            obj = json.loads(path.read_text())
            if isinstance(obj, list) and obj and isinstance(obj[0], dict):
                obj = obj[-1]  # a list of records: the last one
            if isinstance(obj, dict):
                traj, curve = obj.get("trajectory"), obj.get("curve")
                file_epochs = obj.get("probe_epochs", obj.get("epochs"))
                if traj is not None and (file_epochs is not None or epochs is not None):
                    data = traj
                elif curve is not None:
                    data, file_epochs = curve, None
                elif traj is not None:
                    data = traj
                else:
                    raise ValueError("a JSON object needs a 'curve' or 'trajectory' key")
            else:
                data = obj
        elif suffix == ".csv":
            text = path.read_text().strip().splitlines()
            first = text[0].split(",") if text else []
            try:
                [float(v) for v in first]
                data = np.loadtxt(path, delimiter=",", ndmin=1)
            except ValueError:
                df = pd.read_csv(path)
                key = next((c for c in ("probe_epochs", "epoch", "epochs") if c in df.columns), None)
                if key is not None:
                    file_epochs = df[key].to_numpy(float)
                    df = df.drop(columns=[key])
                data = df.to_numpy(float)
                if data.shape[0] == 1 and file_epochs is None:
                    data = data[0]
        else:
            raise ValueError(f"unknown format {suffix!r}: use .csv, .json or .npy")
        data = np.asarray(data, dtype=float)
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path}: cannot read: {err}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if data.ndim not in (1, 2) or data.shape[-1] < 3:
        raise ValueError(f"{path}: expected a 1-D curve (L+1 >= 3 layers) or a 2-D (probes x layers) array, "
                         f"got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: contains {int((~np.isfinite(data)).sum())} non-finite values (NaN or inf)")
    ep = epochs if epochs is not None else file_epochs
    if ep is not None:
        ep = np.asarray(ep, dtype=float).ravel()
        if data.ndim == 1:
            ep = None  # a final curve needs no epochs
        elif len(ep) != data.shape[0] or not np.all(np.isfinite(ep)):
            raise ValueError(f"{path}: {data.shape[0]} probes but {len(ep)} epochs")
    return data, ep


#: Simulated truths of the coverage study, one per regime (SPEC §2.4): a pulled friction staircase
#: (concave), a relaxed chain (linear), a ratchet (convex, mu<- > mu->).
COVERAGE_TRUTHS = {
    "concave": dict(mu_forward=0.12, mu_backward=0.12, eps=0.06),
    "linear": dict(mu_forward=0.03, mu_backward=0.03, eps=0.1),
    "convex": dict(mu_forward=0.05, mu_backward=0.15, eps=0.1),
}


def coverage_study(truths: dict | None = None, n_rep: int = 10, *, n_blocks: int = 7, measure_chains: int = 512,
                   opts: FitOptions = FitOptions(), seed: int = 1, progress: bool = False) -> pd.DataFrame:
    """Do the 95 % intervals cover the truth? Simulate each truth ``n_rep`` times with chain noise
    the fit never sees (``measure_chains`` chains, seeds ``10_000 + seed·1000 + rep``, never the
    fit's ``opts.seed``), put it through an unknown affine map ``log D = a + b (y − x)`` with
    ``a ~ U(−2, 2)``, ``b ~ U(1, 5)``, fit with ``opts`` (its chain seed ``opts.seed + rep``: the
    fit's own Monte-Carlo error is drawn afresh too) and record per parameter (and combination)
    the estimate, interval, whether it is identified and whether it covers the truth.

    Returns one row per (regime, rep, quantity): regime, rep, quantity, kind ("param" or
    "combination"), truth, value, lo, hi, identified, covered, flags. Summarise with
    :func:`coverage_summary`. Cost: ``len(truths) · n_rep`` fits (~3–5 s each on one core).
    """
    truths = COVERAGE_TRUTHS if truths is None else truths
    rng = np.random.default_rng(seed)
    rows = []
    for regime, truth in truths.items():
        for rep in range(n_rep):
            noise = 10_000 + 1000 * seed + rep
            if noise == opts.seed + rep:
                noise += 1
            sim = chain_curves(n_blocks, [truth], dataclasses.replace(opts, n_chains=measure_chains, seed=noise))[0]
            a, b = rng.uniform(-2, 2), rng.uniform(1, 5)
            r = fit_curve(a + b * sim, opts=dataclasses.replace(opts, seed=opts.seed + rep))
            flags = "; ".join(r.flags)
            for n in r.params:
                lo, hi = r.ci[n]
                rows.append(dict(regime=regime, rep=rep, quantity=n, kind="param", truth=truth[n],
                                 value=r.params[n], lo=lo, hi=hi, identified=r.identified[n],
                                 covered=bool(lo <= truth[n] <= hi), flags=flags))
            u = (truth["mu_forward"] + truth["mu_backward"]) / (2 * truth["eps"])
            true_c = {"asymmetry": truth["mu_backward"] - truth["mu_forward"], "mobility": float(2 * special.ndtr(-u))}
            for c in r.combinations:
                key = c["name"]
                if key.startswith("best: "):
                    w = _parse_power(key[6:])
                    tv = math.exp(sum(e * math.log(truth[k]) for k, e in w.items()))
                else:
                    tv = true_c[key]
                rows.append(dict(regime=regime, rep=rep, quantity=key.split(":")[0], kind="combination", truth=tv,
                                 value=c["value"], lo=c["lo"], hi=c["hi"], identified=c["identified"],
                                 covered=bool(c["lo"] <= tv <= c["hi"]), flags=flags))
            if progress:
                log.info("coverage %s rep %d: %s", regime, rep, {k: round(v, 4) for k, v in r.params.items()})
    return pd.DataFrame(rows)


def _parse_power(label: str) -> dict:
    out = {}
    for term in label.split():
        name, exp = term.split("^")
        out[name] = float(exp)
    return out


def coverage_summary(study: pd.DataFrame) -> pd.DataFrame:
    """Per (regime, quantity): cases, how many identified, coverage among the identified (and among
    all cases)."""
    g = study.groupby(["regime", "kind", "quantity"], sort=False)
    out = g.apply(lambda d: pd.Series(dict(
        cases=len(d), identified=int(d["identified"].sum()),
        covered_identified=int((d["covered"] & d["identified"]).sum()),
        coverage_identified=float(d.loc[d["identified"], "covered"].mean()) if d["identified"].any() else np.nan,
        coverage_all=float(d["covered"].mean()))), include_groups=False)
    return out.reset_index()
