"""Calibrate one chain–network map to a whole phase diagram (SPEC §5.1b): "which chain is this network?"

A per-cell fit (:mod:`phase_diagrams.fitting`) answers for one curve and cannot say how the chain
changes across the diagram. A calibration fits *one* map from the network's knobs to the chain's
parameters, jointly to every cell and seed, and is judged only on what it did not see.

The family of maps
    Rows are the LeakyReLU slope ``alpha`` (``s = 1 − alpha`` the nonlinearity), columns a noise
    knob mapped to a coordinate ``u ∈ [0, 1]`` (least to most noisy; linear in the value for label
    noise, dropout and SGLD temperature, in its logarithm for the learning rate and the batch size,
    the batch size reversed; see :func:`noise_coordinate`)::

        mu->(alpha) = f0 · (rf + (1 − rf) s^pf)          f0 = mu->(0),  rf = mu->(1)/mu->(0)
        mu<-(alpha) = b0 · (rb + (1 − rb) s^pb)          b0 = mu<-(0),  rb = mu<-(1)/mu<-(0)
        eps(u)      = e0 · (e1/e0)^(u^h)                 e0, e1 = eps at the least / most noisy column
        eps(t)      = eps · exp(−lam t),   t = tau · epoch

    (``e1 < e0`` counts as ``e1 = e0``: eps never falls with more noise) —
    eleven knobs ``f0 rf pf b0 rb pb e0 e1 h lam tau`` (:data:`KNOBS`), each smooth. The family
    contains the three friction presets of :func:`phase_diagrams.friction.friction_for`
    (``scale-both``: rf = rb = 0, b0 = ratio f0, pf = pb = 1; ``vary-forward``: rf = 0, rb = 1;
    ``vary-asymmetry``: rf = 1, rb = ratio) and the spec's ``rank`` noise map (h = 1). The
    asymmetry ``mu<- − mu->`` may be non-monotone in alpha (pf ≠ pb), ``eps > 0`` at zero added
    noise is allowed (optimisation itself shakes the blocks), and ``eps`` grows with the noise.
    The chain is the first-order chain of SPEC §2.2 with one block per hidden layer, ``k = y = 1``,
    ``eta = 0.01``, blocks starting at rest.
The emulator (:class:`Emulator`)
    Every candidate map needs the chain's curves at all cells; simulating them per candidate is
    too slow for a global search. The emulator simulates once a table of chains over a grid of
    ``(mu->, mu<-, eps, lam)`` (log-spaced friction and noise, ``CalibrationOptions.grid``), all with
    the same chain noise (common random numbers, so the table is smooth in its parameters), records
    the ensemble-mean ``y − x_l`` at log-spaced times up to ``t_max``, and interpolates
    multilinearly (in the logs of mu and eps, linearly in lam and log t). The table is cached on
    disk (``$SPRINGBLOCK_CACHE`` or ``~/.cache/springblock``), keyed by its options. Reported
    predictions (:meth:`Calibration.predict`) are direct simulations at the fitted map with fresh
    chain noise, not the emulator.
The objective
    For the cells used, with the per-cell mean over seeds of the final curve ``m_c`` (log D_0..L),
    the probe trajectory's change since the first probe ``Δ_c(e) = log D(e) − log D(0)``, and the
    final curve's normalised curvature ``nc_c = c/Σd``::

        J = w_final · mean_c RSS_c(final) / (n σ_f²)        (affine map log D ≈ a + b (y − x), b >= 0)
          + w_traj  · mean_c RSS_c(traj)  / (n σ_t²)        (Δ log D ≈ b' Δ(y − x), b' >= 0)
          + w_nc    · mean_c (nc_chain − nc_c)² / σ_nc²

    each term a mean squared residual in units of the measurement's own noise (σ² pooled over
    cells: the variance over seeds divided by the number of seeds averaged, floored at
    :data:`SIGMA_FLOOR`). The trajectories fix the time scale tau and the decay lam, the final
    curves the shape; the third term asks for the number the regimes are judged by. ``J`` is a
    sum over cells (``_Target.cell_terms`` gives each cell's share), so families whose knobs act on
    disjoint cells can be fitted block by block: ``studies/calibration_targets.py`` fits the
    saturated separable family (free friction per row, free eps per column) and a chain per cell
    that way, the upper bounds of docs/calibration.md.
The search
    Differential evolution (:func:`scipy.optimize.differential_evolution`, vectorised over the
    population, Sobol start, seeded) over the knobs on the emulator, then Nelder–Mead from its best
    point; ``restarts`` independent searches, the best kept (the objective has several basins: one
    search of 40 generations landed in a basin 25–90 % worse in 2 of 3 seeds on the label-noise panel).
    Then a bounded least-squares polish of the same objective by *direct* simulation (common random
    numbers, ``polish_chains`` chains): the emulator's interpolation error (≈ 0.015 in y − x on a
    13-point grid, 7 × the chains' Monte-Carlo error) biased the knobs by several of their standard
    errors on simulated truths; the polish removes it.
Uncertainty
    Wald intervals ``θ̂ ± 1.96 se`` in the search coordinates (logs for levels, exponents and tau)
    from the polish's Jacobian ``J`` of the residuals: the cluster-robust sandwich over cells
    ``A⁻¹ (Σ_c g_c g_cᵀ) A⁻¹ · C/(C − p)`` (``A = JᵀJ``, ``g_c = J_cᵀ r_c``; each cell an
    independent cluster, so seed noise and misfit count at their observed size) plus the Monte-Carlo
    error of the fit's own chains, ``A⁻¹ Jᵀ S J A⁻¹`` with ``S`` the covariance of the residuals over
    ``mc_seeds`` independent chain seeds. A knob whose interval reaches its search bound (within 2 %
    of the range) is reported as not identified; so is a knob whose true value sits on a bound
    (e.g. no noise decay, ``lam = 0``), where a Wald interval is not valid. The map's bands
    (:meth:`Calibration.map_curves`) are percentiles of the map over ``n_draws`` draws of the knobs
    from ``N(θ̂, cov)``.
Scores (:meth:`Calibration.scores`)
    Each a refit from scratch on part of the data, judged on the rest, next to the ceiling (each
    seed against the mean of the other seeds, :func:`phase_diagrams.comparison.seed_ceiling`):
    held-out seed (fit the other seeds' mean, predict this seed's regimes), leave-one-column-out
    and leave-one-row-out (fit the other cells, predict the left-out ones against the all-seed
    mean; the ceiling on the same cells). Regime agreement and Spearman of c/Σd and of c.
Transfer
    ``calibrate(runs_B, transfer_from=cal_A)`` keeps A's friction map, lam and tau and fits only
    the noise map (``e0 e1 h``) to panel B.

    from phase_diagrams import calibrate
    cal = calibrate(store.runs("label-noise"))        # ~1-3 min on 2 cores (first call builds the emulator)
    cal.params, cal.intervals                          # the map's knobs with 95 % intervals
    cal.predict(cells)                                 # the chain at any (alpha, noise)
    cal.scores()                                       # held-out agreement next to the ceiling
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize

from phase_diagrams.comparison import seed_ceiling, spearman
from phase_diagrams.spec import NOISE_DIRECTION
from springblock.errors import InputError, check_memory
from springblock.observables import REGIME_TOL, curvature, normalized_curvature, regime

log = logging.getLogger(__name__)

__all__ = ["KNOBS", "CalibrationOptions", "Calibration", "Emulator", "calibrate", "friction_map", "noise_map",
           "noise_coordinate", "cell_data"]

#: The map's knobs, in this order (module docstring).
KNOBS = ("f0", "rf", "pf", "b0", "rb", "pb", "e0", "e1", "h", "lam", "tau")
#: Search bounds; friction and noise levels, exponents and tau are searched in their logarithms.
BOUNDS = {"f0": (2e-3, 0.5), "rf": (0.0, 3.0), "pf": (0.2, 5.0), "b0": (2e-3, 0.5), "rb": (0.0, 3.0),
          "pb": (0.2, 5.0), "e0": (2e-3, 1.2), "e1": (2e-3, 1.2), "h": (0.2, 5.0), "lam": (0.0, 0.04),
          "tau": (0.1, 2.0)}
_LOG = {"f0", "pf", "b0", "pb", "e0", "e1", "h", "tau"}
NOISE_KNOBS = ("e0", "e1", "h")
#: Lower bound of the seed-noise scales of the objective (log D units; c/Σd for sigma_nc).
SIGMA_FLOOR = 0.01
#: Columns whose noise coordinate is the logarithm of the value.
LOG_FIELDS = ("lr", "batch_size")


@dataclass(frozen=True)
class CalibrationOptions:
    """How to calibrate (defaults: 13 × 13 × 13 × 3 emulator grid of 64 chains up to t = 200,
    3 differential evolutions of 80 generations, a least-squares polish by direct simulation)."""

    mu_range: tuple = (1e-3, 1.5)      # emulator friction range (mu-> and mu<-), log-spaced
    eps_range: tuple = (1e-3, 1.2)     # emulator noise range, log-spaced
    grid: int = 13                     # emulator points per friction / noise axis
    lams: tuple = (0.0, 0.015, 0.04)   # emulator noise-decay values
    t_max: float = 200.0               # emulator horizon (simulation time)
    n_times: int = 48                  # emulator record times, log-spaced in (0, t_max]
    n_chains: int = 64                 # emulator chains per point
    polish_chains: int = 256           # chains per cell of the direct-simulation polish and its intervals
    eta: float = 0.01                  # chain time step
    seed: int = 0                      # emulator chain noise
    predict_chains: int = 256          # chains of a reported prediction (fresh noise: seed + 1)
    w_final: float = 1.0               # objective weights (module docstring)
    w_traj: float = 1.0
    w_nc: float = 1.0
    popsize: int = 12                  # differential evolution: population = popsize × knobs
    maxiter: int = 80                  # differential evolution generations per restart
    restarts: int = 3                  # independent global searches (different seeds); the best is kept
    polish_fev: int = 600              # Nelder–Mead evaluations after the global search
    polish_sims: int = 80              # direct simulations of the least-squares polish (and its Jacobian)
    mc_seeds: int = 4                  # independent chain seeds for the Monte-Carlo part of the intervals
    n_draws: int = 200                 # draws from the knobs' normal approximation (the bands of map_curves)
    search_seed: int = 0               # seed of the search and of the draws
    tol: float = REGIME_TOL            # regime threshold on |c/Σd|
    cache_dir: str | None = None       # emulator cache (default $SPRINGBLOCK_CACHE or ~/.cache/springblock)

    def __post_init__(self):
        for name in ("grid", "n_times", "n_chains", "polish_chains", "popsize", "maxiter", "polish_fev", "polish_sims",
                     "n_draws"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 2:
                raise InputError(f"CalibrationOptions.{name}={v!r}: must be an integer >= 2")
        for name in ("restarts", "mc_seeds"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"CalibrationOptions.{name}={v!r}: must be an integer >= 1")
        for name in ("seed", "search_seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
                raise InputError(f"CalibrationOptions.{name}={v!r}: must be an integer in [0, 2**63)")
        v = self.predict_chains
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"CalibrationOptions.predict_chains={v!r}: must be an integer >= 1")
        for name in ("mu_range", "eps_range"):
            pair = getattr(self, name)
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)):
                raise InputError(f"CalibrationOptions.{name}={pair!r}: expected (low, high), two numbers")
            lo, hi = pair
            if not (0 < lo < hi and math.isfinite(hi)):
                raise InputError(f"CalibrationOptions.{name}={(lo, hi)!r}: need 0 < low < high")
        lams = tuple(self.lams)
        if len(lams) < 2 or any(not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                     and v >= 0) for v in lams) or list(lams) != sorted(set(lams)):
            raise InputError(f"CalibrationOptions.lams={lams!r}: >= 2 increasing values >= 0")
        for name in ("t_max", "eta", "w_final", "w_traj", "w_nc", "tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"CalibrationOptions.{name}={v!r}: must be finite and >= 0")
        if self.t_max <= 0 or not (0 < self.eta <= 0.1):
            raise InputError(f"CalibrationOptions: need t_max > 0 and 0 < eta <= 0.1, got {self.t_max}, {self.eta}")
        if self.w_final + self.w_traj + self.w_nc <= 0:
            raise InputError("CalibrationOptions: at least one objective weight must be > 0")
        # the emulator table: grid^3 x lams points, n_times records of n_chains chains at the widest
        check_memory(f"CalibrationOptions.grid={self.grid}, lams x {len(lams)}, n_times={self.n_times}",
                     8.0 * self.grid**3 * len(lams) * self.n_times, hint="use a smaller grid or fewer n_times")
        for name in ("n_chains", "polish_chains", "predict_chains"):  # >= 16 bytes per chain
            check_memory(f"CalibrationOptions.{name}={getattr(self, name)}", 16.0 * getattr(self, name))


# ------------------------------------------------------------------------------------------
# the family
# ------------------------------------------------------------------------------------------
def friction_map(p: dict, alpha) -> tuple[np.ndarray, np.ndarray]:
    """``(mu->, mu<-)`` at LeakyReLU slope(s) ``alpha`` under the knobs ``p`` (module docstring)."""
    s = 1.0 - np.asarray(alpha, dtype=float)
    mf = p["f0"] * (p["rf"] + (1.0 - p["rf"]) * s ** p["pf"])
    mb = p["b0"] * (p["rb"] + (1.0 - p["rb"]) * s ** p["pb"])
    return np.maximum(mf, 0.0), np.maximum(mb, 0.0)


def noise_map(p: dict, u) -> np.ndarray:
    """``eps`` at noise coordinate(s) ``u ∈ [0, 1]``: ``e0 (e1/e0)^(u^h)`` (``e1 >= e0`` enforced)."""
    rise = max(math.log(p["e1"]) - math.log(p["e0"]), 0.0)
    return p["e0"] * np.exp(rise * np.clip(np.asarray(u, dtype=float), 0.0, None) ** p["h"])


def noise_coordinate(field_name: str | None, values, reference=None) -> np.ndarray:
    """Each column value's position ``u`` from least (0) to most (1) noisy among ``reference``
    (default: ``values`` themselves; values outside its range extrapolate beyond [0, 1]): linear in
    the value, or in its logarithm for :data:`LOG_FIELDS`; reversed where more of the knob is less
    noise (:data:`phase_diagrams.spec.NOISE_DIRECTION`, the batch size). ``None`` (a full batch)
    counts as the largest value of ``reference``."""
    ref = [None if v is None else float(v) for v in (values if reference is None else reference)]
    finite = [v for v in ref if v is not None]
    if not finite:
        raise ValueError(f"noise values {list(values)!r}: need at least one number")
    top = max(finite)

    def coord(vs):
        x = np.array([top if v is None else float(v) for v in vs], dtype=float)
        if field_name in LOG_FIELDS:
            if np.any(x <= 0):
                raise ValueError(f"{field_name} values must be > 0 for the logarithmic noise coordinate, got "
                                 f"{list(vs)!r}")
            x = np.log(x)
        return x * NOISE_DIRECTION.get(field_name, 1)

    x, r = coord(values), coord(ref)
    span = r.max() - r.min()
    return (x - r.min()) / span if span > 0 else np.zeros_like(x)


def _from_theta(theta, knobs, bounds) -> dict:
    out = {}
    for k, v in zip(knobs, np.asarray(theta, dtype=float), strict=True):
        lo, hi = bounds[k]
        out[k] = float(np.clip(math.exp(v) if k in _LOG else v, lo, hi))
    return out


def _theta_bounds(knobs, bounds) -> list[tuple[float, float]]:
    return [tuple(math.log(b) if k in _LOG else b for b in bounds[k]) for k in knobs]


# ------------------------------------------------------------------------------------------
# the emulator
# ------------------------------------------------------------------------------------------
class Emulator:
    """Ensemble-mean chain load curves ``y − x_l(t)`` over a ``(mu->, mu<-, eps, lam)`` grid,
    interpolated (module docstring). Build with :meth:`build` (cached on disk)."""

    def __init__(self, n_blocks: int, opts: CalibrationOptions, table: np.ndarray, times: np.ndarray):
        self.n_blocks, self.opts = int(n_blocks), opts
        self.table = table                              # (nmf, nmb, neps, nlam, T, L+1) float32
        self.times = times                              # (T,), times[0] = 0
        self.axes = (np.log(np.geomspace(*opts.mu_range, opts.grid)), np.log(np.geomspace(*opts.mu_range, opts.grid)),
                     np.log(np.geomspace(*opts.eps_range, opts.grid)), np.asarray(opts.lams, dtype=float))
        self._logt = np.log(times[1:])

    # -- building
    @staticmethod
    def _key(n_blocks: int, opts: CalibrationOptions) -> str:
        fields = ("mu_range", "eps_range", "grid", "lams", "t_max", "n_times", "n_chains", "eta", "seed")
        blob = json.dumps(dict(n_blocks=n_blocks, version=2, **{f: getattr(opts, f) for f in fields}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def build(cls, n_blocks: int, opts: CalibrationOptions = CalibrationOptions(), *, cache: bool = True,
              progress=None) -> Emulator:
        """Simulate the table (or load it from the cache). Cost: ``grid² · grid · len(lams)``
        points × ``n_chains`` chains × ``t_max/eta`` steps (≈ 30–60 s on 2 cores for the defaults)."""
        from springblock import ChainParams, simulate

        path = None
        if cache:
            root = Path(opts.cache_dir or os.environ.get("SPRINGBLOCK_CACHE") or Path.home() / ".cache" / "springblock")
            path = root / f"emulator-{cls._key(n_blocks, opts)}.npz"
            if path.exists():
                try:
                    with np.load(path) as z:
                        return cls(n_blocks, opts, z["table"], z["times"])
                except (OSError, ValueError, KeyError):
                    log.warning("emulator cache %s unreadable; rebuilding", path)
        t0 = time.perf_counter()
        mus = np.geomspace(*opts.mu_range, opts.grid)
        epss = np.geomspace(*opts.eps_range, opts.grid)
        n_steps = int(round(opts.t_max / opts.eta))
        want = np.concatenate([[0.0], np.geomspace(opts.t_max / 400, opts.t_max, opts.n_times - 1)])
        every = max(1, int(round(want[1] / opts.eta / 2)))
        n_steps = every * int(math.ceil(n_steps / every))
        rec_t = np.arange(0, n_steps + 1, every) * opts.eta
        pick = np.unique(np.searchsorted(rec_t, want - 1e-12).clip(0, rec_t.size - 1))
        times = rec_t[pick]
        shape = (opts.grid, opts.grid, opts.grid, len(opts.lams))
        table = np.empty(shape + (times.size, n_blocks + 1), dtype=np.float32)
        points = [(i, j, k, q) for i in range(shape[0]) for j in range(shape[1]) for k in range(shape[2])
                  for q in range(shape[3])]
        chunk = max(1, int(2e8 // (opts.n_chains * rec_t.size * n_blocks * 8)))
        log.info("building the calibration emulator: %d chains x %d points, %d steps", opts.n_chains, len(points),
                 n_steps)
        for start in range(0, len(points), chunk):
            part = points[start:start + chunk]
            grid = np.empty(len(part), dtype=object)
            for n, (i, j, k, q) in enumerate(part):
                grid[n] = ChainParams(n_blocks=n_blocks, k=1.0, y=1.0, eta=opts.eta, n_steps=n_steps,
                                      mu_forward=float(mus[i]), mu_backward=float(mus[j]), eps=float(epss[k]),
                                      lam=float(opts.lams[q]))
            res = simulate(grid, n_chains=opts.n_chains, seed=opts.seed, record_every=every)
            x = res.traj[:, :, pick, :]                                    # (P, chains, T, L)
            curve = np.concatenate([np.ones(x.shape[:3] + (1,)), 1.0 - x], axis=-1).mean(axis=1)  # y − x_l
            for n, (i, j, k, q) in enumerate(part):
                table[i, j, k, q] = curve[n]
            if progress is not None:
                progress(min(start + chunk, len(points)), len(points))
        log.info("emulator built in %.1f s", time.perf_counter() - t0)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, table=table, times=times)
                os.replace(tmp, path)
            except OSError as exc:  # a read-only home: work without the cache
                log.warning("could not cache the emulator at %s: %s", path, exc)
        return cls(n_blocks, opts, table, times)

    # -- lookup
    def _weights(self, coords):
        """Per axis: lower index and weight of the upper neighbour (coordinates clipped to the grid)."""
        out = []
        for ax, c in zip(self.axes, coords, strict=True):
            c = np.clip(c, ax[0], ax[-1])
            i = np.clip(np.searchsorted(ax, c, side="right") - 1, 0, ax.size - 2)
            w = (c - ax[i]) / (ax[i + 1] - ax[i])
            out.append((i, w))
        return out

    def curves(self, mf, mb, eps, lam, t) -> np.ndarray:
        """Interpolated mean curves: ``mf, mb, eps, lam`` of shape ``(N,)``, times ``t`` of shape
        ``(N, K)`` → ``(N, K, L+1)``. Friction and noise are clipped to the table's range (friction
        below ``mu_range[0]`` acts as none), times to ``[0, t_max]``."""
        tab = self.table
        tiny = 1e-300
        (i0, w0), (i1, w1), (i2, w2), (i3, w3) = self._weights(
            (np.log(np.maximum(mf, tiny)), np.log(np.maximum(mb, tiny)), np.log(np.maximum(eps, tiny)), lam))
        t = np.clip(np.asarray(t, dtype=float), 0.0, self.times[-1])
        # time: index into times (times[0] = 0, then log-spaced); linear in log t, linear from 0 to times[1]
        lt = np.log(np.maximum(t, self.times[1]))
        j = np.clip(np.searchsorted(self._logt, lt, side="right") - 1, 0, self._logt.size - 2)
        wt = np.clip((lt - self._logt[j]) / (self._logt[j + 1] - self._logt[j]), 0.0, 1.0)
        j = j + 1
        early = t < self.times[1]
        j = np.where(early, 0, j)
        wt = np.where(early, t / self.times[1], wt)
        nt, L1 = tab.shape[-2], tab.shape[-1]
        flat = tab.reshape(-1, L1)
        n1, n2, n3 = tab.shape[1], tab.shape[2], tab.shape[3]
        idx, wgt = [], []
        for a in (0, 1):
            wa = w0 if a else 1 - w0
            for b in (0, 1):
                wb = wa * (w1 if b else 1 - w1)
                for c in (0, 1):
                    wc = wb * (w2 if c else 1 - w2)
                    for d in (0, 1):
                        wd = (wc * (w3 if d else 1 - w3))[:, None]
                        base = ((((i0 + a) * n1 + i1 + b) * n2 + i2 + c) * n3 + i3 + d) * nt   # (N,)
                        idx += [base[:, None] + j, base[:, None] + j + 1]                      # (N, K) each
                        wgt += [wd * (1 - wt), wd * wt]
        rows = np.take(flat, np.stack(idx, axis=-1), axis=0)                                 # (N, K, 32, L+1)
        out = np.einsum("nkc,nkcl->nkl", np.stack(wgt, axis=-1), rows)
        return out


# ------------------------------------------------------------------------------------------
# the data
# ------------------------------------------------------------------------------------------
@dataclass
class CellData:
    """Per-cell, per-seed arrays of a runs table (:func:`cell_data`)."""

    alpha: np.ndarray          # (C,)
    col_value: list            # (C,) the noise knob's value
    u: np.ndarray              # (C,) noise coordinate
    seeds: np.ndarray          # (S,)
    final: np.ndarray          # (C, S, L+1), NaN where a seed is missing
    traj: np.ndarray | None    # (C, S, K, L+1) change since the first probe, NaN where missing
    epochs: np.ndarray         # (K,) probe epochs (the last is the final curve's epoch)
    noise_field: str | None
    row: np.ndarray            # (C,) row index, (C,) column index
    col: np.ndarray

    @property
    def n_blocks(self) -> int:
        return self.final.shape[-1] - 1

    def subset(self, cells=None, seeds=None) -> CellData:
        ci = np.arange(len(self.alpha)) if cells is None else np.asarray(cells)
        si = np.arange(len(self.seeds)) if seeds is None else np.asarray(seeds)
        return dataclasses.replace(
            self, alpha=self.alpha[ci], col_value=[self.col_value[i] for i in ci], u=self.u[ci], seeds=self.seeds[si],
            final=self.final[ci][:, si], traj=None if self.traj is None else self.traj[ci][:, si],
            row=self.row[ci], col=self.col[ci])


def _infer_noise_field(runs: pd.DataFrame) -> str | None:
    """The config column whose values equal ``col_value`` on every run (e.g. ``label_noise``)."""
    for name in NOISE_DIRECTION:
        if name in runs.columns:
            a = [None if v is None else float(v) for v in runs[name]]
            b = [None if v is None else float(v) for v in runs["col_value"]]
            if a == b:
                return name
    return None


def cell_data(runs: pd.DataFrame, *, noise_field: str | None = None) -> CellData:
    """Turn a runs table (:meth:`Store.runs`, or any table with ``alpha`` or ``row_value``,
    ``col_value``, ``seed``, ``curve`` and optionally ``trajectory`` + ``probe_epochs``) into
    per-cell, per-seed arrays. Unfinished runs (``status`` other than ``done``) are dropped.

    Raises ValueError naming the problem for an empty table, one seed, mixed depths, non-finite
    curves, rows that are not a LeakyReLU slope in [0, 1], or probe schedules that differ."""
    if not isinstance(runs, pd.DataFrame):
        raise TypeError(f"runs must be a pandas DataFrame like Store.runs(), got {type(runs).__name__}")
    if runs.empty:
        raise ValueError("runs is empty: nothing to calibrate (run the sweep first)")
    for col in ("col_value", "seed", "curve"):
        if col not in runs.columns:
            raise ValueError(f"runs has no column {col!r} (need alpha or row_value, col_value, seed, curve)")
    if "row_value" not in runs.columns and "alpha" not in runs.columns:
        raise ValueError("runs has neither 'row_value' nor 'alpha': calibrate needs the LeakyReLU slope of each run")
    ok = runs[runs["status"] == "done"] if "status" in runs.columns else runs
    if ok.empty:
        raise ValueError(f"none of the {len(runs)} runs finished (status 'done'): nothing to calibrate")
    curves = [np.asarray(c, dtype=float) if c is not None else None for c in ok["curve"]]
    for n, c in enumerate(curves):
        if c is None or c.ndim != 1:
            raise ValueError(f"run {n} (seed {ok['seed'].iloc[n]}): curve is missing or not 1-D")
        if not np.all(np.isfinite(c)):
            raise ValueError(f"run {n} (seed {ok['seed'].iloc[n]}, col_value {ok['col_value'].iloc[n]!r}): the curve "
                             f"has non-finite values {c.tolist()}")
    depths = sorted({c.size for c in curves})
    if len(depths) > 1:
        raise ValueError(f"runs mix depths (curves of {depths} layers): calibrate one depth at a time")
    if depths[0] < 4:
        raise ValueError(f"curves of {depths[0]} layers are too short to calibrate (need >= 4: 3 hidden layers)")
    alpha = np.array([float(v) for v in (ok["row_value"] if "row_value" in ok.columns else ok["alpha"])])
    if np.any(~np.isfinite(alpha)) or alpha.min() < 0 or alpha.max() > 1:
        raise ValueError(f"row values {sorted(set(alpha.tolist()))} are not LeakyReLU slopes in [0, 1]: calibrate "
                         "needs a sweep whose rows are alpha")
    seeds = np.array(sorted({int(s) for s in ok["seed"]}))
    if seeds.size < 2:
        raise ValueError(f"runs have one seed ({seeds[0]}): calibrate needs >= 2 seeds for the objective's noise "
                         "scale and the ceiling (spec 'seeds')")
    noise_field = noise_field or _infer_noise_field(ok)
    colkey = [json.dumps(v) for v in ok["col_value"]]
    cells = sorted({(a, k) for a, k in zip(alpha, colkey, strict=True)},
                   key=lambda t: (t[0], json.loads(t[1]) if json.loads(t[1]) is not None else math.inf))
    index = {c: n for n, c in enumerate(cells)}
    sidx = {int(s): n for n, s in enumerate(seeds)}
    L1 = depths[0]
    final = np.full((len(cells), seeds.size, L1), np.nan)
    has_traj = "trajectory" in ok.columns and "probe_epochs" in ok.columns and all(
        t is not None for t in ok["trajectory"])
    epochs = None
    traj = None
    if has_traj:
        schedules = {tuple(float(e) for e in p) for p in ok["probe_epochs"]}
        if len(schedules) > 1:
            log.info("probe schedules differ between runs (early stops?); using the final curves only")
            has_traj = False
        else:
            epochs = np.array(sorted(schedules)[0])
            if epochs.size < 2:
                has_traj = False
    if has_traj:
        traj = np.full((len(cells), seeds.size, epochs.size, L1), np.nan)
    for n, (a, k, s, c) in enumerate(zip(alpha, colkey, ok["seed"], curves, strict=True)):
        ci, si = index[(a, k)], sidx[int(s)]
        if np.isfinite(final[ci, si]).all():
            raise ValueError(f"two runs of cell alpha={a}, col_value={json.loads(k)!r}, seed {s}")
        final[ci, si] = c
        if traj is not None:
            t = np.asarray(ok["trajectory"].iloc[n], dtype=float)
            if t.shape != (epochs.size, L1) or not np.all(np.isfinite(t)):
                raise ValueError(f"run of cell alpha={a}, col_value={json.loads(k)!r}, seed {s}: trajectory of shape "
                                 f"{t.shape} (need {(epochs.size, L1)}) or non-finite")
            traj[ci, si] = t - t[0]
    if epochs is None:
        last = float(ok["epochs_run"].max()) if "epochs_run" in ok.columns else float(ok.get("epochs", [100]).max())
        epochs = np.array([0.0, last])
    col_values = [json.loads(k) for _, k in cells]
    u = noise_coordinate(noise_field, col_values)
    avals = sorted({a for a, _ in cells})
    cvals = sorted({k for _, k in cells}, key=lambda k: u[[kk for _, kk in cells].index(k)])
    row = np.array([avals.index(a) for a, _ in cells])
    col = np.array([cvals.index(k) for _, k in cells])
    return CellData(alpha=np.array([a for a, _ in cells]), col_value=col_values, u=u, seeds=seeds, final=final,
                    traj=traj, epochs=epochs, noise_field=noise_field, row=row, col=col)


# ------------------------------------------------------------------------------------------
# the objective
# ------------------------------------------------------------------------------------------
def _affine_rss(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per row (last axis = observations): RSS of ``m ≈ a + b s`` with ``b >= 0``."""
    mc = m - m.mean(axis=-1, keepdims=True)
    sc = s - s.mean(axis=-1, keepdims=True)
    var = (sc * sc).sum(axis=-1)
    b = np.where(var > 0, np.maximum((sc * mc).sum(axis=-1) / np.where(var > 0, var, 1.0), 0.0), 0.0)
    r = mc - b[..., None] * sc
    return (r * r).sum(axis=-1)


def _scale_rss(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per row: RSS of ``m ≈ b s`` with ``b >= 0`` (no offset: both start at 0)."""
    var = (s * s).sum(axis=-1)
    b = np.where(var > 0, np.maximum((s * m).sum(axis=-1) / np.where(var > 0, var, 1.0), 0.0), 0.0)
    r = m - b[..., None] * s
    return (r * r).sum(axis=-1)


class _Target:
    """What one calibration fits: the per-cell means of some seeds and the noise scales."""

    def __init__(self, data: CellData, opts: CalibrationOptions):
        self.data, self.opts = data, opts
        self.alpha, self.u = data.alpha, data.u
        self.final = np.nanmean(data.final, axis=1)                       # (C, L+1)
        n_seeds = np.isfinite(data.final[..., 0]).sum(axis=1)            # (C,)
        if np.any(n_seeds == 0):
            raise ValueError("a cell has no finished run among the seeds used")
        self.traj = None if data.traj is None else np.nanmean(data.traj, axis=1)  # (C, K, L+1)
        self.nc = np.asarray(normalized_curvature(self.final), dtype=float)
        self.epochs = data.epochs
        self.t_final = float(data.epochs[-1])

        def pooled(x, axis_seed=1):
            dev = x - np.nanmean(x, axis=axis_seed, keepdims=True)
            k = np.isfinite(x).sum(axis=axis_seed)
            ss = np.nansum(dev ** 2, axis=axis_seed)
            dof = np.maximum(k - 1, 0)
            var = ss.sum() / max(dof.sum(), 1) if dof.sum() > 0 else np.nan
            return var

        nm = max(float(n_seeds.mean()), 1.0)
        var_f = pooled(data.final)
        self.sigma_f = math.sqrt(max(var_f / nm if np.isfinite(var_f) else 0.0, SIGMA_FLOOR ** 2))
        if data.traj is not None:
            var_t = pooled(data.traj[:, :, 1:])
            self.sigma_t = math.sqrt(max(var_t / nm if np.isfinite(var_t) else 0.0, SIGMA_FLOOR ** 2))
        else:
            self.sigma_t = np.nan
        seed_nc = np.asarray(normalized_curvature(data.final), dtype=float)  # (C, S)
        var_nc = pooled(seed_nc[..., None])
        self.sigma_nc = math.sqrt(max(var_nc / nm if np.isfinite(var_nc) else 0.0, SIGMA_FLOOR ** 2))
        self.n_cells = len(self.alpha)

    def objective(self, emu: Emulator, thetas: np.ndarray, knobs, fixed: dict, bounds: dict) -> np.ndarray:
        """``J`` for each row of ``thetas`` (``(P, len(knobs))``)."""
        thetas = np.atleast_2d(thetas)
        P, C = thetas.shape[0], self.n_cells
        ps = [dict(fixed, **_from_theta(t, knobs, bounds)) for t in thetas]
        mf = np.empty((P, C))
        mb = np.empty((P, C))
        eps = np.empty((P, C))
        lam = np.empty(P)
        tau = np.empty(P)
        for n, p in enumerate(ps):
            mf[n], mb[n] = friction_map(p, self.alpha)
            eps[n] = noise_map(p, self.u)
            lam[n] = p["lam"]
            tau[n] = p["tau"]
        return self.cell_terms(emu, mf, mb, eps, lam, tau).mean(axis=1)

    def cell_terms(self, emu: Emulator, mf, mb, eps, lam, tau, cells=None) -> np.ndarray:
        """Each cell's share of ``J`` (``J`` = the mean over all cells), for chain parameters given
        per candidate and cell: ``mf, mb, eps`` of shape ``(P, n)`` for the cells ``cells`` (default
        all, ``n = C``), ``lam, tau`` of shape ``(P,)`` (or scalars) → ``(P, n)``. The objective is a
        sum over cells, so a map whose knobs act on disjoint cells can be fitted block by block."""
        ci = np.arange(self.n_cells) if cells is None else np.asarray(cells)
        mf, mb, eps = (np.atleast_2d(np.asarray(v, dtype=float)) for v in (mf, mb, eps))
        P, n = mf.shape
        lam = np.broadcast_to(np.asarray(lam, dtype=float), (P,))
        tau = np.broadcast_to(np.asarray(tau, dtype=float), (P,))
        if self.traj is not None:
            times = tau[:, None] * self.epochs[None, :]                   # (P, K)
        else:
            times = tau[:, None] * np.array([self.t_final])[None, :]
        t = np.repeat(times[:, None, :], n, axis=1).reshape(P * n, -1)
        sim = emu.curves(mf.ravel(), mb.ravel(), eps.ravel(), np.repeat(lam, n), t)  # (P*n, K, L+1)
        sim = sim.reshape(P, n, t.shape[1], -1)
        fin = sim[:, :, -1]                                               # (P, n, L+1)
        o = self.opts
        out = np.zeros((P, n))
        L1 = fin.shape[-1]
        if o.w_final:
            rss = _affine_rss(np.broadcast_to(self.final[ci], fin.shape), fin)
            out += o.w_final * rss / (L1 * self.sigma_f ** 2)
        if o.w_traj and self.traj is not None:
            d_sim = (sim - sim[:, :, :1])[:, :, 1:].reshape(P, n, -1)
            d_meas = np.broadcast_to(self.traj[ci, 1:].reshape(n, -1), d_sim.shape)
            rss = _scale_rss(d_meas, d_sim)
            out += o.w_traj * rss / (d_sim.shape[-1] * self.sigma_t ** 2)
        if o.w_nc:
            nc = np.asarray(normalized_curvature(fin), dtype=float)
            nc = np.where(np.isfinite(nc), nc, 10.0)  # a chain that does not move: far from any network
            meas = np.where(np.isfinite(self.nc[ci]), self.nc[ci], 0.0)
            out += o.w_nc * ((nc - meas) / self.sigma_nc) ** 2
        return out


def _search(target: _Target, emu: Emulator, knobs, fixed: dict, box: dict, opts: CalibrationOptions, seed: int,
            start: np.ndarray | None = None, fev: int | None = None):
    """Global search (differential evolution) then Nelder–Mead; with ``start`` only the local part."""
    bounds = _theta_bounds(knobs, box)

    def vec(x):  # differential_evolution (vectorized) passes (n_knobs, P)
        return target.objective(emu, np.asarray(x).T, knobs, fixed, box)

    def one(x):
        return float(target.objective(emu, x[None, :], knobs, fixed, box)[0])

    if start is None:  # independent searches from different seeds, each polished; the best one wins
        best = None
        for r in range(opts.restarts):
            res = optimize.differential_evolution(vec, bounds, popsize=opts.popsize, maxiter=opts.maxiter,
                                                  seed=seed + 1000 * r, vectorized=True, updating="deferred",
                                                  polish=False, tol=1e-6, init="sobol")
            x, f = _search(target, emu, knobs, fixed, box, opts, seed, start=res.x, fev=fev)
            if best is None or f < best[1]:
                best = (x, f)
        return best
    x0 = start
    # the first simplex spans 5 % of each knob's range, so a refit explores beyond the start's neighbourhood
    width = np.array([hi - lo for lo, hi in bounds])
    lo_b, hi_b = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    simplex = np.vstack([x0] + [np.clip(x0 + np.where(np.arange(len(x0)) == i, 0.05 * width, 0.0), lo_b, hi_b)
                                for i in range(len(x0))])
    for i in range(1, len(simplex)):  # a start at the upper bound steps down instead
        if np.allclose(simplex[i], x0):
            simplex[i, i - 1] = x0[i - 1] - 0.05 * width[i - 1]
    loc = optimize.minimize(one, x0, method="Nelder-Mead", bounds=bounds,
                            options=dict(maxfev=fev or opts.polish_fev, xatol=1e-3, fatol=1e-6,
                                         initial_simplex=simplex))
    return loc.x, float(loc.fun)


def simulate_cells(params: dict, alpha, u, epochs, n_blocks: int, *, n_chains: int, seed: int,
                   eta: float = 0.01) -> np.ndarray:
    """The chain of the map ``params`` at cells ``(alpha, u)``, simulated directly: ensemble-mean
    ``y − x_l`` at ``t = tau · epochs``, shape ``(C, len(epochs), L+1)``."""
    mf, mb = friction_map(params, alpha)
    eps = noise_map(params, u)
    return simulate_chains(mf, mb, eps, params["lam"], params["tau"], epochs, n_blocks, n_chains=n_chains, seed=seed,
                           eta=eta)


def simulate_chains(mf, mb, eps, lam: float, tau: float, epochs, n_blocks: int, *, n_chains: int, seed: int,
                    eta: float = 0.01) -> np.ndarray:
    """Chains of given ``(mu->, mu<-, eps)`` per cell and shared ``lam``, ``tau``, simulated directly
    (common random numbers: chain ``c`` sees the same noise in every cell): ensemble-mean
    ``y − x_l`` at ``t = tau · epochs``, shape ``(C, len(epochs), L+1)``."""
    from springblock import ChainParams, simulate

    mf, mb, eps = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (mf, mb, eps))
    epochs = np.asarray(epochs, dtype=float)
    t_end = float(tau * epochs[-1])
    every = max(1, int(round(t_end / eta / 200)))
    n_steps = max(every, every * int(math.ceil(t_end / eta / every)))
    grid = np.empty(len(mf), dtype=object)
    for n in range(len(mf)):
        grid[n] = ChainParams(n_blocks=n_blocks, k=1.0, y=1.0, eta=eta, n_steps=n_steps, mu_forward=float(mf[n]),
                              mu_backward=float(mb[n]), eps=float(eps[n]), lam=float(lam))
    res = simulate(grid, n_chains=n_chains, seed=seed, record_every=every)
    tr = np.asarray(res.trajectory_curve())                               # (C, R, L+1)
    times = res.steps * eta
    want = tau * epochs
    return np.stack([np.stack([np.interp(want, times, tr[c, :, l]) for l in range(tr.shape[-1])], axis=-1)
                     for c in range(len(mf))])


# ------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A calibrated chain–network map.

    Attributes
    ----------
    params : dict
        The knobs (:data:`KNOBS`) of the fitted map.
    intervals : dict
        ``knob -> (low, high)`` 95 % interval (module docstring; NaN when not computed).
    identified : dict
        ``knob -> bool``: False where the interval reaches a search bound (or was held fixed).
    objective : float
        ``J`` at the fit (module docstring).
    ceiling : (per_cell, per_seed) of :func:`phase_diagrams.comparison.seed_ceiling`
    data : the :class:`CellData` fitted
    fitted_knobs : the knobs that were fitted (all, or the noise knobs in a transfer)
    transfer_from : the calibration whose friction map, lam and tau were kept (or None)
    replicates : draws of the knobs from their normal approximation, ``(n_draws, len(KNOBS))``
    wall_s : seconds spent (emulator included)
    """

    params: dict
    intervals: dict
    identified: dict
    objective: float
    ceiling: tuple
    data: CellData
    opts: CalibrationOptions
    fitted_knobs: tuple
    transfer_from: Calibration | None = None
    replicates: np.ndarray = field(default_factory=lambda: np.empty((0, len(KNOBS))))
    wall_s: float = 0.0
    emulator: Emulator | None = field(default=None, repr=False)
    _scores: pd.DataFrame | None = field(default=None, repr=False)

    def map_at(self, alpha, col_value=None, *, u=None, params: dict | None = None) -> pd.DataFrame:
        """The chain parameters at LeakyReLU slopes ``alpha`` and noise values (or coordinates ``u``)."""
        p = self.params if params is None else params
        alpha = np.atleast_1d(np.asarray(alpha, dtype=float))
        if u is None:
            u = self._u(np.atleast_1d(np.asarray(col_value, dtype=object)).tolist())
        mf, mb = friction_map(p, alpha)
        return pd.DataFrame(dict(alpha=alpha, u=np.broadcast_to(u, alpha.shape), mu_forward=mf, mu_backward=mb,
                                 eps=np.broadcast_to(noise_map(p, u), alpha.shape), lam=p["lam"], tau=p["tau"]))

    def _u(self, values) -> np.ndarray:
        """Noise coordinates of column values, on the scale of the calibrated panel's columns."""
        return noise_coordinate(self.data.noise_field, values, reference=self.data.col_value)

    def predict(self, cells=None, *, n_chains: int | None = None, seed: int | None = None,
                epochs=None) -> pd.DataFrame:
        """The calibrated chain at each cell, by direct simulation with fresh chain noise.

        Parameters
        ----------
        cells : DataFrame with ``alpha`` (or ``row_value``) and ``col_value``, or a list of
            ``(alpha, col_value)`` pairs; default: every calibrated cell
        n_chains, seed : the ensemble (default ``opts.predict_chains``, ``opts.seed + 1``)
        epochs : probe epochs of the predicted trajectory (default the data's)

        Returns one row per cell: alpha, col_value, u, mu_forward, mu_backward, eps, lam, tau,
        curve (``y − x_l`` at the final epoch), trajectory (at the probe epochs), curvature,
        normalized_curvature, regime.
        """
        if cells is None:
            alpha, cvals = self.data.alpha, list(self.data.col_value)
        elif isinstance(cells, pd.DataFrame):
            alpha = np.asarray(cells["row_value"] if "row_value" in cells.columns else cells["alpha"], dtype=float)
            cvals = list(cells["col_value"])
        else:
            pairs = list(cells)
            alpha = np.array([float(a) for a, _ in pairs])
            cvals = [c for _, c in pairs]
        m = self.map_at(alpha, cvals)
        epochs = np.asarray(self.data.epochs if epochs is None else epochs, dtype=float)
        traj = simulate_cells(self.params, alpha, m["u"].to_numpy(), epochs, self.data.n_blocks,
                              n_chains=n_chains or self.opts.predict_chains,
                              seed=self.opts.seed + 1 if seed is None else seed, eta=self.opts.eta)
        fin = traj[:, -1]
        m["col_value"] = cvals
        m["curve"] = list(fin)
        m["trajectory"] = list(traj)
        m["curvature"] = curvature(fin)
        m["normalized_curvature"] = normalized_curvature(fin)
        m["regime"] = list(np.atleast_1d(regime(fin, self.opts.tol)))
        return m

    # ---------------------------------------------------------------------- scores
    def scores(self, *, which=("seed", "column", "row"), progress=None) -> pd.DataFrame:
        """Held-out agreement next to the ceiling (module docstring); one row per held-out kind:
        kind, folds, n_cells, regime_agreement, spearman_nc, spearman_c and the ceiling's
        ``ceiling_agreement``, ``ceiling_spearman_nc``, ``ceiling_spearman_c`` on the same cells,
        and ``ratio`` = agreement / ceiling. Each fold is a refit from scratch (cached after the first call)."""
        if self._scores is not None and set(which) <= set(self._scores["kind"]):
            return self._scores[self._scores["kind"].isin(which)].reset_index(drop=True)
        rows = [self._in_sample()]
        if "seed" in which:
            rows.append(self._held_out_seeds(progress))
        for kind in ("column", "row"):
            if kind in which:
                rows.append(self._leave_out(kind, progress))
        self._scores = pd.DataFrame([r for r in rows if r is not None])
        return self._scores

    def _refit(self, data: CellData) -> Calibration:
        return _fit(data, self.opts, emulator=self.emulator, transfer_from=self.transfer_from, uncertainty=False,
                    with_ceiling=False)

    def _ceiling(self) -> dict:
        """The seed ceiling on every calibrated cell (:func:`seed_ceiling`), mean over seeds."""
        per_seed = self.ceiling[1]
        if per_seed is None:
            per_seed = seed_ceiling(_as_runs(self.data), self.opts.tol)[1]
        return dict(ceiling_agreement=float(per_seed["regime_agreement"].mean()),
                    ceiling_spearman_nc=float(per_seed["spearman_nc"].mean()),
                    ceiling_spearman_c=float(per_seed["spearman_c"].mean()))

    def _row(self, kind, folds, pred_curves, meas_curves) -> dict:
        pr, me = np.asarray(pred_curves), np.asarray(meas_curves)
        out = dict(kind=kind, folds=folds, n_cells=len(pr),
                   regime_agreement=float(np.mean(regime(pr, self.opts.tol) == regime(me, self.opts.tol))),
                   spearman_nc=spearman(normalized_curvature(pr), normalized_curvature(me)),
                   spearman_c=spearman(curvature(pr), curvature(me)))
        out.update(self._ceiling())
        out["ratio"] = out["regime_agreement"] / out["ceiling_agreement"] if out["ceiling_agreement"] > 0 else np.nan
        return out

    def _in_sample(self) -> dict:
        pred = self.predict()
        return self._row("in-sample", 1, np.stack(pred["curve"]), np.nanmean(self.data.final, axis=1))

    def _held_out_seeds(self, progress) -> dict:
        pr, me = [], []
        S = len(self.data.seeds)
        agree = []
        for s in range(S):
            rest = [t for t in range(S) if t != s]
            have = np.isfinite(self.data.final[:, s, 0])
            fit = self._refit(self.data.subset(seeds=rest))
            pred = np.stack(fit.predict()["curve"])
            pr.append(pred[have])
            me.append(self.data.final[have, s])
            agree.append(float(np.mean(regime(pred[have], self.opts.tol) == regime(self.data.final[have, s],
                                                                                  self.opts.tol))))
            if progress:
                progress("seed", s + 1, S)
        # per fold: the seed against the fit on the others; the ceiling: the seed against the others' mean
        row = self._row("held-out seed", S, np.concatenate(pr), np.concatenate(me))
        row["fold_agreement"] = " ".join(f"{a:.2f}" for a in agree)
        return row

    def _leave_out(self, kind, progress) -> dict | None:
        keys = self.data.col if kind == "column" else self.data.row
        groups = np.unique(keys)
        if groups.size < 3:
            return None
        pred = np.full(self.data.final.shape[::2], np.nan)                 # (C, L+1)
        fold_agree = []
        for n, g in enumerate(groups):
            out = np.flatnonzero(keys == g)
            keep = np.flatnonzero(keys != g)
            fit = self._refit(self.data.subset(cells=keep))
            cells = list(zip(self.data.alpha[out], [self.data.col_value[i] for i in out], strict=True))
            p = np.stack(fit.predict(cells)["curve"])
            pred[out] = p
            meas = np.nanmean(self.data.final[out], axis=1)
            fold_agree.append(float(np.mean(regime(p, self.opts.tol) == regime(meas, self.opts.tol))))
            if progress:
                progress(kind, n + 1, groups.size)
        row = self._row(f"leave-one-{kind}-out", int(groups.size), pred, np.nanmean(self.data.final, axis=1))
        row["fold_agreement"] = " ".join(f"{a:.2f}" for a in fold_agree)
        return row

    # ---------------------------------------------------------------------- tables
    def params_table(self) -> pd.DataFrame:
        """One row per knob: value, 95 % interval, identified, fitted (False: kept from a transfer)."""
        return pd.DataFrame([dict(knob=k, value=self.params[k], low=self.intervals[k][0], high=self.intervals[k][1],
                                  identified=self.identified[k], fitted=k in self.fitted_knobs) for k in KNOBS])

    def map_curves(self, n: int = 51) -> dict:
        """The map's curves and their 95 % bands (percentiles over :attr:`replicates`): ``alpha``,
        ``mu_forward``, ``mu_backward`` (each ``(3, n)``: low, fit, high) and ``u``, ``eps``; also
        the cells' column values."""
        a = np.linspace(0, 1, n)
        u = np.linspace(0, 1, n)
        mf, mb = friction_map(self.params, a)
        eps = noise_map(self.params, u)
        reps = [dict(zip(KNOBS, r, strict=True)) for r in self.replicates]

        def band(fit, f):
            if not reps:
                return np.stack([fit, fit, fit])
            v = np.stack([f(r) for r in reps])
            return np.stack([np.percentile(v, 2.5, axis=0), fit, np.percentile(v, 97.5, axis=0)])

        return dict(alpha=a, mu_forward=band(mf, lambda r: friction_map(r, a)[0]),
                    mu_backward=band(mb, lambda r: friction_map(r, a)[1]), u=u,
                    eps=band(eps, lambda r: noise_map(r, u)), cell_u=self.data.u, cell_values=self.data.col_value,
                    noise_field=self.data.noise_field)


# ------------------------------------------------------------------------------------------
# the fit
# ------------------------------------------------------------------------------------------
def _identified(knob, lo, hi, box) -> bool:
    blo, bhi = box[knob]
    if knob in _LOG:
        blo, bhi, lo, hi = math.log(blo), math.log(bhi), math.log(max(lo, 1e-300)), math.log(max(hi, 1e-300))
    margin = 0.02 * (bhi - blo)
    return bool(np.isfinite(lo) and np.isfinite(hi) and lo > blo + margin and hi < bhi - margin)


def _fit(data: CellData, opts: CalibrationOptions, *, emulator: Emulator | None = None,
         transfer_from: Calibration | None = None, uncertainty: bool = True, with_ceiling: bool = True) -> Calibration:
    t0 = time.perf_counter()
    emu = emulator or Emulator.build(data.n_blocks, opts)
    if emu.n_blocks != data.n_blocks:
        raise ValueError(f"the emulator has {emu.n_blocks} blocks, the data {data.n_blocks} hidden layers")
    box = dict(BOUNDS)
    tau_hi = float(emu.times[-1]) / max(float(data.epochs[-1]), 1e-9)
    if tau_hi < box["tau"][1]:  # the emulator's horizon over the training length caps tau
        box["tau"] = (box["tau"][0], tau_hi)
    if box["tau"][1] <= box["tau"][0]:
        raise ValueError(f"{data.epochs[-1]:g} epochs exceed the emulator's horizon t_max={emu.times[-1]:g} at the "
                         f"smallest tau {box['tau'][0]}: raise CalibrationOptions.t_max")
    target = _Target(data, opts)
    if transfer_from is not None:
        knobs = NOISE_KNOBS
        fixed = {k: transfer_from.params[k] for k in KNOBS if k not in NOISE_KNOBS}
    else:
        knobs, fixed = KNOBS, {}
    theta, J = _search(target, emu, knobs, fixed, box, opts, opts.search_seed)
    params = dict(fixed, **_from_theta(theta, knobs, box))
    params = {k: params[k] for k in KNOBS}
    intervals = {k: (np.nan, np.nan) for k in KNOBS}
    identified = {k: False for k in KNOBS}
    draws = np.empty((0, len(KNOBS)))
    if uncertainty:
        theta, J, cov = _polish_and_intervals(target, theta, knobs, fixed, box, opts)
        params = {k: dict(fixed, **_from_theta(theta, knobs, box))[k] for k in KNOBS}
        se = np.sqrt(np.clip(np.diag(cov), 0, None))  # inf for blind knobs
        tb = _theta_bounds(knobs, box)
        for i, k in enumerate(knobs):
            lo_t = float(np.clip(theta[i] - 1.96 * se[i], *tb[i]))
            hi_t = float(np.clip(theta[i] + 1.96 * se[i], *tb[i]))
            lo, hi = (math.exp(lo_t), math.exp(hi_t)) if k in _LOG else (lo_t, hi_t)
            intervals[k] = (lo, hi)
            identified[k] = _identified(k, lo, hi, box)
        rng = np.random.default_rng(opts.search_seed + 1)
        finite = np.isfinite(np.diag(cov))
        th_draws = np.repeat(theta[None, :], opts.n_draws, axis=0)
        if finite.any():  # draws of the identified directions; a blind knob stays at its fit
            sub = cov[np.ix_(finite, finite)]
            th_draws[:, finite] = rng.multivariate_normal(theta[finite], sub, size=opts.n_draws, method="eigh")
        draws = np.array([[dict(fixed, **_from_theta(t, knobs, box))[k] for k in KNOBS] for t in th_draws])
    for k in KNOBS:
        if k not in knobs and transfer_from is not None:
            intervals[k] = transfer_from.intervals[k]
    reps = draws
    ceiling = seed_ceiling(_as_runs(data), opts.tol) if with_ceiling else (None, None)
    return Calibration(params=params, intervals=intervals, identified=identified, objective=J, ceiling=ceiling,
                       data=data, opts=opts, fitted_knobs=tuple(knobs), transfer_from=transfer_from, replicates=reps,
                       wall_s=time.perf_counter() - t0, emulator=emu)


def _direct_residuals(target: _Target, theta, knobs, fixed, box, opts: CalibrationOptions, seed: int,
                      n_chains: int) -> np.ndarray:
    """Per-cell residual blocks ``(C, m)`` of the objective by direct simulation, scaled so that
    ``(r ** 2).sum() = J`` (module docstring): the final curve after its profiled affine map, the
    trajectory change after its profiled scale, and c/Σd."""
    data = target.data
    p = dict(fixed, **_from_theta(theta, knobs, box))
    epochs = data.epochs if target.traj is not None else np.array([0.0, target.t_final])
    sim = simulate_cells(p, data.alpha, data.u, epochs, data.n_blocks, n_chains=n_chains, seed=seed, eta=opts.eta)
    return _sim_residuals(target, sim, opts)


def _sim_residuals(target: _Target, sim: np.ndarray, opts: CalibrationOptions) -> np.ndarray:
    """:func:`_direct_residuals` of simulated curves ``sim`` (``(C, K, L+1)`` at the target's probe
    epochs, or ``(C, 2, L+1)`` without trajectories)."""
    has_traj = target.traj is not None
    C, L1 = sim.shape[0], sim.shape[-1]
    blocks = []
    fin = sim[:, -1]
    if opts.w_final:
        mc = target.final - target.final.mean(-1, keepdims=True)
        sc = fin - fin.mean(-1, keepdims=True)
        b = np.maximum((mc * sc).sum(-1) / np.maximum((sc * sc).sum(-1), 1e-300), 0.0)
        blocks.append((mc - b[:, None] * sc) * math.sqrt(opts.w_final / (L1 * C)) / target.sigma_f)
    if opts.w_traj and has_traj:
        ds = (sim - sim[:, :1])[:, 1:].reshape(C, -1)
        dm = target.traj[:, 1:].reshape(C, -1)
        b = np.maximum((dm * ds).sum(-1) / np.maximum((ds * ds).sum(-1), 1e-300), 0.0)
        blocks.append((dm - b[:, None] * ds) * math.sqrt(opts.w_traj / (ds.shape[1] * C)) / target.sigma_t)
    if opts.w_nc:
        nc = np.asarray(normalized_curvature(fin), dtype=float)
        nc = np.where(np.isfinite(nc), nc, 10.0)
        meas = np.where(np.isfinite(target.nc), target.nc, 0.0)
        blocks.append(((nc - meas) * math.sqrt(opts.w_nc / C) / target.sigma_nc)[:, None])
    return np.concatenate(blocks, axis=1)


def _polish_and_intervals(target: _Target, theta, knobs, fixed, box, opts: CalibrationOptions):
    """Polish the emulator's optimum by direct simulation and give the knobs' covariance.

    Returns ``(theta, J, cov)`` in search coordinates: ``theta`` from a bounded least-squares
    refinement (:func:`scipy.optimize.least_squares`) of the directly simulated residuals (chain
    noise fixed: common random numbers); ``cov`` = the cluster-robust sandwich over cells
    ``A⁻¹ (Σ_c g_c g_cᵀ) A⁻¹ · C/(C − p)`` (``A = JᵀJ``, ``g_c = J_cᵀ r_c``: each cell an
    independent cluster, so misfit and seed noise count as they are) plus the Monte-Carlo error of
    the fit's own chains, ``A⁻¹ Jᵀ S J A⁻¹`` with ``S`` the covariance of the residuals over
    ``opts.mc_seeds`` independent chain seeds."""
    lo = np.array([b[0] for b in _theta_bounds(knobs, box)])
    hi = np.array([b[1] for b in _theta_bounds(knobs, box)])
    x0 = np.clip(theta, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))

    def resid(th):
        return _direct_residuals(target, th, knobs, fixed, box, opts, opts.seed, opts.polish_chains).ravel()

    res = optimize.least_squares(resid, x0, bounds=(lo, hi), diff_step=0.01, max_nfev=opts.polish_sims,
                                 x_scale="jac")
    th = res.x
    r = res.fun.reshape(target.n_cells, -1)
    Jm = res.jac.reshape(target.n_cells, r.shape[1], -1)                  # (C, m, p)
    J2 = res.jac
    A = J2.T @ J2
    p = A.shape[0]
    A_reg = A + 1e-9 * max(np.trace(A) / p, 1e-300) * np.eye(p)        # unidentified directions: huge variance
    Ainv = np.linalg.inv(A_reg)
    g = np.einsum("cmp,cm->cp", Jm, r)
    C = target.n_cells
    cov = Ainv @ (g.T @ g) @ Ainv * (C / max(C - p, 1))
    if opts.mc_seeds >= 2:
        rs = np.stack([_direct_residuals(target, th, knobs, fixed, box, opts, opts.seed + 200 + k,
                                         opts.polish_chains).ravel() for k in range(opts.mc_seeds)])
        v = (rs - rs.mean(axis=0)) @ J2 @ Ainv                            # (k, p)
        cov = cov + v.T @ v / (opts.mc_seeds - 1)
    # directions the residuals do not feel (e.g. h when e1 <= e0): the sandwich gives them zero
    # variance; they are not identified, so their knobs get an infinite variance
    w, vecs = np.linalg.eigh(A)
    null = w <= 1e-8 * max(w.max(), 1e-300)
    if null.any():
        blind = (np.abs(vecs[:, null]) > 0.1).any(axis=1)
        cov[blind, :] = 0.0
        cov[:, blind] = 0.0
        cov[blind, blind] = np.inf
    return th, float((res.fun ** 2).sum()), cov


def _as_runs(data: CellData) -> pd.DataFrame:
    """The cell data back as a runs-like table (for :func:`seed_ceiling`)."""
    rows = []
    for c in range(len(data.alpha)):
        for s, seed in enumerate(data.seeds):
            if np.isfinite(data.final[c, s]).all():
                rows.append(dict(row=int(data.row[c]), col=int(data.col[c]), row_value=float(data.alpha[c]),
                                 col_value=data.col_value[c], seed=int(seed), curve=data.final[c, s].tolist()))
    return pd.DataFrame(rows)


def calibrate(runs, *, opts: CalibrationOptions = CalibrationOptions(), transfer_from: Calibration | None = None,
              noise_field: str | None = None, emulator: Emulator | None = None) -> Calibration:
    """Fit one chain–network map to every cell and seed of a diagram (module docstring).

    Parameters
    ----------
    runs : a table like :meth:`phase_diagrams.Store.runs` (``alpha`` or ``row_value``,
        ``col_value``, ``seed``, ``curve``, and ``trajectory`` + ``probe_epochs`` when recorded),
        with >= 2 seeds and one depth
    opts : :class:`CalibrationOptions`
    transfer_from : a :class:`Calibration` of another panel: keep its friction map, lam and tau,
        fit only the noise map (``e0 d h``)
    noise_field : the column axis (``label_noise``, ``lr``, ``dropout``, ``batch_size``,
        ``sgld_temperature``); inferred from the runs' config columns when omitted
    emulator : a prebuilt :class:`Emulator` (else built, or loaded from the cache)

    Returns
    -------
    :class:`Calibration` (``params``, ``intervals``, ``identified``, ``predict``, ``scores``)
    """
    data = cell_data(runs, noise_field=noise_field)
    if transfer_from is not None and transfer_from.data.n_blocks != data.n_blocks:
        raise ValueError(f"transfer_from was calibrated on {transfer_from.data.n_blocks} hidden layers, these runs "
                         f"have {data.n_blocks}")
    return _fit(data, opts, emulator=emulator, transfer_from=transfer_from)
