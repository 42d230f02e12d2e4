"""The simulated phase diagram: friction (nonlinearity) x noise, in one batched simulator call.

Rows are the network's LeakyReLU slope alpha (0 = ReLU, most nonlinear, at the top; 1 = linear),
columns the noise amplitude eps (more noise to the left), as in the original figure. Which
friction stands for "more nonlinear" is a modelling choice (SPEC §2.4), exposed as presets:

=================  ==========================================================================
preset             friction at slope alpha (``s = 1 - alpha`` is the nonlinearity)
=================  ==========================================================================
``scale-both``     both thresholds scale together at a fixed asymmetry:
                   mu-> = s * mu_max, mu<- = ratio * s * mu_max
``vary-forward``   mu<- = mu_max fixed, mu-> = s * mu_max (alpha = 1: a frictionless forward
                   direction, the strongest ratchet)
``vary-asymmetry`` mu-> = mu_max fixed, mu<- = mu_max * (1 + (ratio - 1) * alpha)
=================  ==========================================================================

Defaults: mu_max = 0.1, ratio = 2, alpha in {0, 0.2, ..., 1}, eps on 8 log-spaced values from 0.3
to 0.01, the original first-order chain (L = 7, k = 1, eta = 0.01, 10 000 steps), 256 chains.

    python -m phase_diagrams simulate --out figures               # all three presets, ~30 s
    python -m phase_diagrams simulate --preset vary-forward --chains 1000
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from springblock import ChainParams, simulate  # noqa: E402
from springblock.observables import (  # noqa: E402
    REGIME_TOL,
    curvature,
    linearity,
    loads,
    normalized_curvature,
    normalized_curve,
    regime,
)

log = logging.getLogger(__name__)

__all__ = ["PRESETS", "MESH_PRESET", "SIM_PRESETS", "mesh_grid",
           "DiagramSpec", "friction_for", "simulate_diagram", "simulate_for_spec", "plot_load_curve_grid",
           "plot_curvature_heatmap", "run_simulated_diagrams"]

PRESETS = ("scale-both", "vary-forward", "vary-asymmetry")
#: The leaky-ResNet counterpart (rows = effective depth L̃): :func:`mesh_grid`.
MESH_PRESET = "mesh"
#: Every simulator preset a grid spec may name.
SIM_PRESETS = PRESETS + (MESH_PRESET,)
DEFAULT_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_NOISES = tuple(float(v) for v in np.round(np.geomspace(0.3, 0.01, 8), 4))


def friction_for(preset: str, alpha: float, mu_max: float = 0.1, ratio: float = 2.0) -> tuple[float, float]:
    """``(mu->, mu<-)`` that stands for LeakyReLU slope ``alpha`` under a preset (module table)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown friction preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if mu_max < 0 or ratio < 1:
        raise ValueError(f"need mu_max >= 0 and ratio >= 1, got mu_max={mu_max!r}, ratio={ratio!r}")
    s = 1.0 - alpha
    if preset == "scale-both":
        return s * mu_max, ratio * s * mu_max
    if preset == "vary-forward":
        return s * mu_max, mu_max
    return mu_max, mu_max * (1.0 + (ratio - 1.0) * alpha)


@dataclass(frozen=True)
class DiagramSpec:
    """What to simulate: a preset, the two axes, the base chain and the ensemble."""

    preset: str = "vary-forward"
    alphas: tuple = DEFAULT_ALPHAS  # rows: LeakyReLU slope the friction stands for
    noises: tuple = DEFAULT_NOISES  # columns: noise amplitude eps
    base: ChainParams = field(default_factory=ChainParams)  # everything but friction and eps
    mu_max: float = 0.1
    ratio: float = 2.0
    n_chains: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown friction preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if len(self.alphas) == 0 or len(self.noises) == 0:
            raise ValueError("DiagramSpec axes must not be empty (alphas and noises)")
        if any(e < 0 for e in self.noises):
            raise ValueError(f"noise values must be >= 0, got {self.noises}")
        if self.n_chains < 1:
            raise ValueError(f"n_chains must be >= 1, got {self.n_chains}")

    def grid(self) -> np.ndarray:
        """Object array of ChainParams, shape ``(len(alphas), len(noises))``."""
        out = np.empty((len(self.alphas), len(self.noises)), dtype=object)
        for i, a in enumerate(self.alphas):
            mf, mb = friction_for(self.preset, a, self.mu_max, self.ratio)
            for j, e in enumerate(self.noises):
                out[i, j] = dataclasses.replace(self.base, mu_forward=mf, mu_backward=mb, eps=float(e))
        return out


def simulate_diagram(spec: DiagramSpec, tol: float = REGIME_TOL) -> pd.DataFrame:
    """Simulate every cell in one batched call; one tidy row per cell.

    Columns: preset, alpha, noise, mu_forward, mu_backward, curve (ensemble-mean ``y - x_l``,
    list), loads, linearity, curvature, normalized_curvature, regime, n_chains, n_steps, seed,
    wall_s (of the whole batched call).
    """
    grid = spec.grid()
    t0 = time.perf_counter()
    res = simulate(grid, n_chains=spec.n_chains, seed=spec.seed)
    wall = time.perf_counter() - t0
    curves = res.load_curve()
    log.info("simulated %d cells x %d chains in %.1f s", grid.size, spec.n_chains, wall)
    rows = []
    for i, a in enumerate(spec.alphas):
        for j, e in enumerate(spec.noises):
            c = curves[i, j]
            p = grid[i, j]
            rows.append(dict(
                preset=spec.preset, alpha=float(a), noise=float(e), mu_forward=p.mu_forward,
                mu_backward=p.mu_backward, curve=c.tolist(), loads=loads(c).tolist(),
                linearity=float(linearity(c)), curvature=float(curvature(c)),
                normalized_curvature=float(normalized_curvature(c)), regime=regime(c, tol),
                n_chains=spec.n_chains, n_steps=p.n_steps, seed=spec.seed, wall_s=wall,
            ))
    return pd.DataFrame(rows)


def _axes_values(df):
    alphas = np.sort(df["alpha"].unique())  # ReLU (alpha = 0) at the top
    noises = np.sort(df["noise"].unique())[::-1]  # more noise to the left
    return alphas, noises


def plot_load_curve_grid(df: pd.DataFrame, title: str = "", shade: str = "normalized_curvature"):
    """Grid of cells (rows alpha, columns noise), each the normalised load curve over a background
    shaded by ``shade`` (curvature: red convex, blue concave), with one colour bar."""
    alphas, noises = _axes_values(df)
    fig, axes = plt.subplots(len(alphas), len(noises), figsize=(1.35 * len(noises) + 1.4, 1.15 * len(alphas) + 0.9),
                             sharex=True, sharey=True, squeeze=False)
    vals = df[shade].to_numpy(dtype=float)
    lim = max(np.nanmax(np.abs(vals)), 1e-9)
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    cmap = plt.get_cmap("coolwarm")
    for i, a in enumerate(alphas):
        for j, e in enumerate(noises):
            ax = axes[i, j]
            row = df[(df["alpha"] == a) & (df["noise"] == e)]
            ax.set_xticks([])
            ax.set_yticks([])
            if row.empty:
                continue
            r = row.iloc[0]
            curve = normalized_curve(np.asarray(r["curve"]))
            ax.set_facecolor(cmap(norm(r[shade])) if np.isfinite(r[shade]) else "0.85")
            ax.plot(np.arange(curve.size), curve, "k.-", lw=1.2, ms=3)
            ax.set_ylim(-0.1, 1.1)
            if i == len(alphas) - 1:
                ax.set_xlabel(f"{e:g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{a:g}", fontsize=8)
    fig.supxlabel("noise eps (more noise to the left)", fontsize=9)
    fig.supylabel("alpha (LeakyReLU slope; 0 = ReLU)", fontsize=9)
    fig.suptitle(title or "normalised load curves", fontsize=10)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes, shrink=0.8, label=f"{shade} (>0 convex, <0 concave)")
    return fig


def plot_curvature_heatmap(df: pd.DataFrame, title: str = "", value: str = "normalized_curvature"):
    """Heat map of the (normalised) curvature over the grid, each cell labelled with its regime."""
    alphas, noises = _axes_values(df)
    Z = np.full((len(alphas), len(noises)), np.nan)
    lab = np.full(Z.shape, "", dtype=object)
    for i, a in enumerate(alphas):
        for j, e in enumerate(noises):
            row = df[(df["alpha"] == a) & (df["noise"] == e)]
            if not row.empty:
                Z[i, j] = row.iloc[0][value]
                lab[i, j] = row.iloc[0]["regime"]
    lim = max(np.nanmax(np.abs(Z)), 1e-9)
    fig, ax = plt.subplots(figsize=(0.9 * len(noises) + 2.2, 0.6 * len(alphas) + 1.3))
    im = ax.imshow(Z, cmap="coolwarm", norm=TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim), aspect="auto")
    short = {"concave": "cc", "linear": "lin", "convex": "cv", "undefined": "?"}
    for i in range(Z.shape[0]):
        for j in range(Z.shape[1]):
            ax.text(j, i, short.get(lab[i, j], ""), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(noises)), [f"{e:g}" for e in noises], fontsize=7)
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=7)
    ax.set_xlabel("noise eps")
    ax.set_ylabel("alpha")
    ax.set_title(title or value, fontsize=10)
    fig.colorbar(im, ax=ax, label=value)
    fig.tight_layout()
    return fig


def run_simulated_diagrams(out_dir="figures", presets=PRESETS, **spec_kw) -> pd.DataFrame:
    """The main job: simulate each preset's diagram, save figures (PNG + PDF) and a CSV table.

    Writes ``{out}/simulated_{preset}_curves.{png,pdf}``, ``{out}/simulated_{preset}_curvature.{png,pdf}``
    and ``{out}/simulated_diagrams.csv``; returns the combined table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for preset in presets:
        spec = DiagramSpec(preset=preset, **spec_kw)
        df = simulate_diagram(spec)
        frames.append(df)
        for name, fig in (("curves", plot_load_curve_grid(df, f"spring-block chain, preset {preset}")),
                          ("curvature", plot_curvature_heatmap(df, f"c / sum(d), preset {preset}"))):
            for ext in ("png", "pdf"):
                fig.savefig(out / f"simulated_{preset}_{name}.{ext}", dpi=130)
            plt.close(fig)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "simulated_diagrams.csv", index=False)
    return table


def mesh_grid(ltildes, eps, rho, *, kappa: float = 1.0, pin: float = 0.5, mu_max: float = 0.1, ratio: float = 2.0,
              n_steps: int = 10_000) -> np.ndarray:
    """The mesh chains of a leaky-ResNet diagram: object array ``(len(ltildes), len(eps))``.

    Cell ``(i, j)``: :func:`springblock.params.mesh_chain` on the mesh ``rho`` with effective depth
    ``ltildes[i]`` (springs ``k_ℓ ∝ 1/(L̃ ρ_ℓ)``, pinning ``κ_ℓ ∝ L̃ ρ_ℓ`` toward ``pin · y``), noise
    ``eps[j]``, and the friction of a ReLU network under ``scale-both`` (``μ→ = mu_max``,
    ``μ← = ratio · mu_max``); the original first-order chain otherwise (``η = 0.01``, ``y = 1``).
    """
    from springblock.params import mesh_chain

    out = np.empty((len(ltildes), len(eps)), dtype=object)
    for i, lt in enumerate(ltildes):
        for j, e in enumerate(eps):
            out[i, j] = mesh_chain(rho, float(lt), kappa=kappa, pin=pin, mu_forward=mu_max,
                                   mu_backward=ratio * mu_max, eps=float(e), n_steps=n_steps)
    return out


def simulate_for_spec(spec, store=None, presets=None) -> pd.DataFrame:
    """The simulated counterpart of a sweep: every cell under each friction preset.

    Rows: the spec's alpha values → friction by :func:`friction_for`; columns: the noise values →
    ``eps`` by the spec's mapping (:meth:`~phase_diagrams.spec.GridSpec.column_eps`). The chain
    has one block per hidden layer (``n_blocks = spec.train.depth``) and the original first-order
    parameters otherwise; ``spec.simulator`` gives chains, steps, seed and the trajectory record
    interval. One batched kernel call per preset. Rows are written to ``store`` (if given) and
    returned as a table with the columns of :meth:`~phase_diagrams.store.Store.simulated`.

    Preset ``"mesh"`` (leaky-ResNet sweeps, rows = ``ltilde``): the cells are :func:`mesh_grid`
    on the initial mesh of the spec's step scheme (``simulator.kappa``, ``simulator.pin``); the
    store's ``alpha`` column then holds the row value L̃.
    """
    sim = spec.simulator
    presets = tuple(sim.presets if presets is None else presets)
    eps = spec.column_eps()
    base = ChainParams(n_blocks=spec.train.depth, n_steps=sim.n_steps)
    frames = []
    for preset in presets:
        if preset == MESH_PRESET:
            from nets.mesh import step_sizes

            rho = step_sizes(spec.train.step_scheme, spec.train.depth)
            grid = mesh_grid(spec.rows.values, eps, rho, kappa=sim.kappa, pin=sim.pin, mu_max=sim.mu_max,
                             ratio=sim.ratio, n_steps=sim.n_steps)
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
