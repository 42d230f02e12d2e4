"""The simulated phase diagram: friction (nonlinearity) × noise, in one batched simulator call.

Rows are the network's LeakyReLU slope α (0 = ReLU, most nonlinear, at the top; 1 = linear),
columns the chain's noise amplitude ε (more noise to the left), as in the original figure. Which
friction stands for "more nonlinear" is a modelling choice (SPEC §2.4), exposed as the presets of
:mod:`phase_diagrams.friction`.

Defaults: mu_max = 0.1, ratio = 2, α in {0, 0.2, ..., 1}, ε on 8 log-spaced values from 0.3 to
0.01, the original first-order chain (L = 7, k = 1, η = 0.01, 10 000 steps), 256 chains.
The figures are drawn by :mod:`phase_diagrams.plots` (:func:`phase_diagrams.jobs.simulate_job`).

    python -m phase_diagrams simulate --out figures               # all three presets, ~15 s
    python -m phase_diagrams simulate --preset vary-forward --chains 1000
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from phase_diagrams.friction import FRICTION_PRESETS, MESH_PRESET, friction_for
from phase_diagrams.spec import ALPHAS
from springblock import ChainParams, simulate
from springblock.observables import REGIME_TOL, curvature, linearity, loads, normalized_curvature, regime

log = logging.getLogger(__name__)

__all__ = ["DiagramSpec", "simulate_diagram", "simulate_for_spec", "mesh_grid", "DEFAULT_EPS"]

#: The columns of a stand-alone diagram: 8 log-spaced noise amplitudes, noisiest first.
DEFAULT_EPS = tuple(float(v) for v in np.round(np.geomspace(0.3, 0.01, 8), 4))


@dataclass(frozen=True)
class DiagramSpec:
    """What to simulate: a friction preset, the two axes, the base chain and the ensemble."""

    preset: str = "vary-forward"
    alphas: tuple = tuple(ALPHAS)  # rows: LeakyReLU slope the friction stands for
    eps: tuple = DEFAULT_EPS       # columns: the chain's noise amplitude ε
    base: ChainParams = field(default_factory=ChainParams)  # everything but friction and ε
    mu_max: float = 0.1
    ratio: float = 2.0
    n_chains: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.preset not in FRICTION_PRESETS:
            raise ValueError(f"DiagramSpec.preset={self.preset!r}: unknown friction preset; choose one of "
                             f"{', '.join(FRICTION_PRESETS)}")
        if len(self.alphas) == 0 or len(self.eps) == 0:
            raise ValueError("DiagramSpec: the axes alphas and eps must not be empty")
        for a in self.alphas:
            friction_for(self.preset, a, self.mu_max, self.ratio)  # checks alpha, mu_max, ratio
        if any(not (isinstance(e, (int, float)) and np.isfinite(e) and e >= 0) for e in self.eps):
            raise ValueError(f"DiagramSpec.eps={self.eps!r}: values must be finite numbers >= 0")
        if not isinstance(self.base, ChainParams):
            raise TypeError(f"DiagramSpec.base must be a ChainParams, got {type(self.base).__name__}")
        for name in ("n_chains", "seed"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (1 if name == "n_chains" else 0):
                raise ValueError(f"DiagramSpec.{name}={v!r}: must be an integer >= {1 if name == 'n_chains' else 0}")
        from springblock.errors import check_memory

        cells = len(self.alphas) * len(self.eps)  # positions and a seed word per chain and block, every cell
        check_memory(f"DiagramSpec.n_chains={self.n_chains} x {self.base.n_blocks} blocks x {cells} cells",
                     16.0 * self.n_chains * self.base.n_blocks * cells, hint="use fewer chains")

    def grid(self) -> np.ndarray:
        """Object array of ChainParams, shape ``(len(alphas), len(eps))``."""
        out = np.empty((len(self.alphas), len(self.eps)), dtype=object)
        for i, a in enumerate(self.alphas):
            mf, mb = friction_for(self.preset, a, self.mu_max, self.ratio)
            for j, e in enumerate(self.eps):
                out[i, j] = dataclasses.replace(self.base, mu_forward=mf, mu_backward=mb, eps=float(e))
        return out


def simulate_diagram(spec: DiagramSpec, tol: float = REGIME_TOL) -> pd.DataFrame:
    """Simulate every cell in one batched call; one tidy row per cell.

    Columns (those of :func:`phase_diagrams.comparison.simulated_cells`, so the grid figures of
    :mod:`phase_diagrams.plots` draw it): preset, row, col, alpha (= row_value), eps,
    noise_rank (larger = noisier), mu_forward, mu_backward, curve (ensemble-mean ``y − x_l``,
    list), loads, linearity, curvature, normalized_curvature, regime, n_chains, n_steps, seed,
    wall_s (of the whole batched call).
    """
    grid = spec.grid()
    t0 = time.perf_counter()
    res = simulate(grid, n_chains=spec.n_chains, seed=spec.seed)
    wall = time.perf_counter() - t0
    curves = res.load_curve()
    log.info("simulated %d cells x %d chains in %.1f s", grid.size, spec.n_chains, wall)
    rank = np.argsort(np.argsort(np.asarray(spec.eps, dtype=float), kind="stable"), kind="stable")
    rows = []
    for i, a in enumerate(spec.alphas):
        for j, e in enumerate(spec.eps):
            c = curves[i, j]
            p = grid[i, j]
            rows.append(dict(
                preset=spec.preset, row=i, col=j, alpha=float(a), row_value=float(a), eps=float(e),
                noise_rank=int(rank[j]), mu_forward=p.mu_forward, mu_backward=p.mu_backward, curve=c.tolist(),
                loads=loads(c).tolist(), linearity=float(linearity(c)), curvature=float(curvature(c)),
                normalized_curvature=float(normalized_curvature(c)), regime=regime(c, tol),
                n_chains=spec.n_chains, n_steps=p.n_steps, seed=spec.seed, wall_s=wall,
            ))
    return pd.DataFrame(rows)


def mesh_grid(ltildes, eps, rho, *, kappa: float = 1.0, pin_fraction: float = 0.5, mu_max: float = 0.1,
              ratio: float = 2.0, n_steps: int = 10_000) -> np.ndarray:
    """The mesh chains of a leaky-ResNet diagram: object array ``(len(ltildes), len(eps))``.

    Cell ``(i, j)``: :func:`springblock.params.mesh_chain` on the mesh ``rho`` with effective depth
    ``ltildes[i]`` (springs ``k_ℓ ∝ 1/(L̃ ρ_ℓ)``, pinning ``κ_ℓ ∝ L̃ ρ_ℓ`` toward ``pin_fraction · y``), noise
    ``eps[j]``, and the friction of a ReLU network under ``scale-both`` (``μ→ = mu_max``,
    ``μ← = ratio · mu_max``); the original first-order chain otherwise (``η = 0.01``, ``y = 1``).
    """
    from springblock.params import mesh_chain

    out = np.empty((len(ltildes), len(eps)), dtype=object)
    for i, lt in enumerate(ltildes):
        for j, e in enumerate(eps):
            out[i, j] = mesh_chain(rho, float(lt), kappa=kappa, pin_fraction=pin_fraction, mu_forward=mu_max,
                                   mu_backward=ratio * mu_max, eps=float(e), n_steps=n_steps)
    return out


def simulate_for_spec(store, spec, presets=None) -> pd.DataFrame:
    """The simulated counterpart of a sweep: every cell under each friction preset.

    ``store``: a path or a :class:`~phase_diagrams.store.Store` the rows are written to, or None
    (only returned); ``spec``: a :class:`~phase_diagrams.spec.GridSpec`, preset name or TOML path.
    Rows: the spec's alpha values → friction by :func:`~phase_diagrams.friction.friction_for`;
    columns: the noise values → ``eps`` by the spec's mapping
    (:meth:`~phase_diagrams.spec.GridSpec.column_eps`). The chain has one block per hidden layer
    (``n_blocks = spec.train.depth``) and the original first-order parameters otherwise;
    ``spec.simulator`` gives chains, steps, seed and the trajectory record interval. One batched
    kernel call per preset. Rows are written to ``store`` and returned as a table with the columns
    of :meth:`~phase_diagrams.store.Store.simulated`.

    Preset ``"mesh"`` (leaky-ResNet sweeps, rows = ``ltilde``): the cells are :func:`mesh_grid`
    on the initial mesh of the spec's step scheme (``simulator.kappa``, ``simulator.pin_fraction``); the
    store's ``alpha`` column then holds the row value L̃.
    """
    from phase_diagrams.spec import load_spec
    from phase_diagrams.store import as_store

    store = None if store is None else as_store(store)
    spec = load_spec(spec)
    sim = spec.simulator
    presets = tuple(sim.presets if presets is None else presets)
    eps = spec.column_eps()
    base = ChainParams(n_blocks=spec.train.depth, n_steps=sim.n_steps)
    frames = []
    for preset in presets:
        if preset == MESH_PRESET:
            from nets.mesh import step_sizes

            rho = step_sizes(spec.train.step_scheme, spec.train.depth)
            grid = mesh_grid(spec.rows.values, eps, rho, kappa=sim.kappa, pin_fraction=sim.pin_fraction,
                             mu_max=sim.mu_max, ratio=sim.ratio, n_steps=sim.n_steps)
        else:
            grid = np.empty(spec.shape, dtype=object)
            for i, a in enumerate(spec.rows.values):
                mf, mb = friction_for(preset, float(a), sim.mu_max, sim.ratio)
                for j in range(spec.shape[1]):
                    grid[i, j] = dataclasses.replace(base, mu_forward=mf, mu_backward=mb, eps=float(eps[j]))
        t0 = time.perf_counter()
        res = simulate(grid, n_chains=sim.n_chains, seed=sim.seed, record_every=sim.record_every)
        log.info("simulated %s: %d cells x %d chains in %.1f s", preset, grid.size, sim.n_chains,
                 time.perf_counter() - t0)
        curves, traj, times = res.load_curve(), res.trajectory_curve(), res.times()
        rows = []
        for i, a in enumerate(spec.rows.values):
            for j, cv in enumerate(spec.columns.values):
                p, c = grid[i, j], curves[i, j]
                params = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                          for k, v in dataclasses.asdict(p).items()}
                rows.append(dict(
                    key=f"{spec.name}/{preset}/{i}/{j}", sweep=spec.name, preset=preset, row=i, col=j,
                    alpha=float(a), col_value=cv, eps=float(eps[j]), mu_forward=p.mu_forward,
                    mu_backward=p.mu_backward, curve=c.tolist(), trajectory=traj[i, j].tolist(),
                    times=times[i, j].tolist(), linearity=float(linearity(c)), curvature=float(curvature(c)),
                    normalized_curvature=float(normalized_curvature(c)), regime=regime(c),
                    params=dict(params, n_chains=sim.n_chains, seed=sim.seed),
                ))
        if store is not None:
            store.write_simulated(rows)
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
