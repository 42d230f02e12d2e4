"""Bottleneck studies of leaky ResNets (SPEC §5.2; Jacot & Kaiser) and their figures.

Two studies, each a tidy table (one row per network) that the figures only read:

``teacher`` (:func:`teacher_study`)
    Leaky ResNets (``L = 20``, ``w = 100``) trained on the regression teacher with a ``k* = 3``
    bottleneck (``nets.data.teacher_data``: ``R^30 → R^3 → R^30``), full-batch Adam on the
    objective ``MSE + (λ/(2L̃)) Σ ρ_ℓ ‖W_ℓ‖²``; per layer the measures of
    :func:`nets.bottleneck.layer_measures` and their summary (min COI, k̂, bottleneck extent,
    kinetic energy at the ends).
``load`` (:func:`load_curve_study`)
    The same networks on MNIST or Fashion-MNIST classification (10×10 images, 2560 training
    images); the load curve ``log D_ℓ`` at the depths ``p_ℓ``, loads per unit depth and how linear
    the curve is per layer and per unit depth.

Figures (:func:`plot_singular_values`, :func:`plot_profiles`, :func:`plot_load_curves`): singular
values across depth, COI / kinetic energy / k̂ along ``p``, load curves along ``p``, for every L̃
and step scheme. Command line (``python -m phase_diagrams bottleneck``)::

    python -m phase_diagrams bottleneck --study teacher --out figures   # runtimes: docs/leaky-resnets.md
    python -m phase_diagrams bottleneck --study load --dataset fashion-mnist --out figures

Each trains one batched ensemble per step scheme (members = the L̃ values). The one-off study of
which functions of the teacher's bottleneck the middle representation carries is a script:
``python -m studies.directions`` (``studies/directions.py``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps

from nets import TrainConfig, train_ensemble
from nets.bottleneck import bottleneck_summary
from nets.mesh import STEP_SCHEMES
from phase_diagrams.plots import save_figure, subplots

log = logging.getLogger(__name__)

__all__ = [
    "TEACHER_DEFAULTS",
    "LOAD_DEFAULTS",
    "teacher_study",
    "load_curve_study",
    "curve_linearity",
    "plot_singular_values",
    "plot_profiles",
    "plot_load_curves",
    "run_bottleneck",
    "write_table",
    "read_table",
]

#: Training protocol of the teacher study (overridable by keyword). λ = 10⁻²: at λ = 3·10⁻³ Adam ends
#: in a 4-dimensional bottleneck (the teacher's z plus its radius ‖z‖, min COI ≈ 4) whose objective is
#: higher than that of the 3-dimensional one found at λ = 10⁻² (docs/leaky-resnets.md).
TEACHER_DEFAULTS = dict(dataset="teacher", loss="mse", model="leaky_resnet", n_train=512, depth=20, width=100,
                        weight_decay=1e-2, lr=2e-2, epochs=6000, adapt_every=200, probe_every=0,
                        early_stop_loss=0.0)
#: Training protocol of the load-curve study (overridable by keyword).
LOAD_DEFAULTS = dict(dataset="mnist", model="leaky_resnet", depth=20, width=100, weight_decay=1e-3, lr=1e-3,
                     epochs=100, probe_every=0)


def _study(base: dict, ltildes, schemes, seed, cache_dir, overrides) -> list:
    fields = dict(base, **overrides)
    out = []
    for scheme in schemes:
        if scheme not in STEP_SCHEMES:
            raise ValueError(f"unknown step scheme {scheme!r}; choose from {', '.join(STEP_SCHEMES)}")
        cfgs = [TrainConfig(**fields, ltilde=float(lt), step_scheme=scheme, seed=seed) for lt in ltildes]
        t0 = time.perf_counter()
        hists = train_ensemble(cfgs, cache_dir=cache_dir)
        log.info("%s: %d networks in %.0f s", scheme, len(cfgs), time.perf_counter() - t0)
        out.extend(zip(cfgs, hists, strict=True))
    return out


def _bottleneck_row(cfg, h) -> dict:
    b = h.bottleneck
    row = dict(scheme=cfg.step_scheme, ltilde=cfg.ltilde, seed=cfg.seed, status=h.status, epochs=h.epochs_run,
               objective=float(h.train_loss[-1]), test_loss=float(h.test_loss), test_accuracy=float(h.test_accuracy),
               wall_s=float(h.wall_time * h.ensemble_size), rho=h.rho.tolist(),
               rho_trajectory=h.rho_trajectory)
    if b is not None:
        row.update({k: b[k] for k in ("p", "coi", "coi_lower_bound", "kinetic", "k_hat", "speed", "numerical_rank",
                                      "numerical_rank_centered", "stable_rank", "effective_rank", "sv",
                                      "sv_centered", "sv_w")})
        row.update(bottleneck_summary(b))
    return row


def teacher_study(ltildes=(1.0, 2.0, 4.0, 8.0, 16.0), schemes=STEP_SCHEMES, *, seed: int = 1, cache_dir=None,
                  **overrides) -> pd.DataFrame:
    """Train the leaky ResNets of the teacher study and measure their bottleneck (module docstring).

    ``overrides`` are :class:`nets.TrainConfig` fields replacing :data:`TEACHER_DEFAULTS`.
    Returns one row per (scheme, L̃): the config numbers, status, final objective, test MSE, wall
    time of the ensemble, the mesh, the per-layer measures as lists and the summary numbers.
    """
    return pd.DataFrame([_bottleneck_row(c, h) for c, h in
                         _study(TEACHER_DEFAULTS, ltildes, schemes, seed, cache_dir, overrides)])


def curve_linearity(curve, rho) -> dict:
    """How linear a load curve is, per layer and per unit depth.

    ``cv_layer`` = std/mean of the loads ``d_ℓ`` (0: every layer does the same work);
    ``cv_depth`` = std/mean of the loads per unit depth ``d_ℓ/ρ_ℓ`` (0: linear in ``p``);
    ``r2_depth`` = R² of the least-squares line of ``log D_ℓ`` against ``p_ℓ``.
    """
    c = np.asarray(curve, dtype=float)
    rho = np.asarray(rho, dtype=float)
    d = -np.diff(c)
    dp = d / rho
    p = np.concatenate([[0.0], np.cumsum(rho)])
    fit = np.polyfit(p, c, 1)
    res = c - np.polyval(fit, p)
    tot = np.sum((c - c.mean()) ** 2)
    return dict(cv_layer=float(d.std() / abs(d.mean())) if d.mean() != 0 else np.nan,
                cv_depth=float(dp.std() / abs(dp.mean())) if dp.mean() != 0 else np.nan,
                r2_depth=float(1 - np.sum(res**2) / tot) if tot > 0 else np.nan)


def load_curve_study(ltildes=(1.0, 2.0, 4.0, 8.0, 16.0), schemes=STEP_SCHEMES, *, seed: int = 1, cache_dir=None,
                     **overrides) -> pd.DataFrame:
    """Leaky ResNets on a classification data set (default MNIST): the load curve along ``p``.

    ``overrides`` replace :data:`LOAD_DEFAULTS` (e.g. ``dataset="fashion-mnist"``). Rows: as
    :func:`teacher_study` plus ``curve`` (``log D_0..log D_L``), ``loads_per_depth`` and
    :func:`curve_linearity`.
    """
    rows = []
    for cfg, h in _study(LOAD_DEFAULTS, ltildes, schemes, seed, cache_dir, overrides):
        row = _bottleneck_row(cfg, h)
        rec = h.to_record()
        row.update(dataset=cfg.dataset, curve=rec["curve"], loads_per_depth=rec["loads_per_depth"],
                   normalized_curvature=rec["normalized_curvature"], regime=rec["regime"],
                   **curve_linearity(rec["curve"], h.rho))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# figures (read tables, compute nothing)
# ------------------------------------------------------------------------------------------
def _panels(df):
    schemes = [s for s in STEP_SCHEMES if s in set(df["scheme"])]
    lts = sorted(df["ltilde"].unique())
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(lts)))
    return schemes, lts, dict(zip(lts, colors, strict=True))


def _row(df, scheme, lt):
    sel = df[(df["scheme"] == scheme) & (df["ltilde"] == lt)]
    return None if sel.empty else sel.iloc[0]


def plot_singular_values(df: pd.DataFrame, n_values: int = 10, title: str = "", key: str = "sv_centered"):
    """Singular values of ``A_ℓ`` across depth: rows = step schemes, columns = L̃; in each panel
    the ``n_values`` largest singular values (relative to the largest) of every representation,
    one line per rank index, against the depth ``p_ℓ`` (log scale). ``key`` ``"sv_centered"``
    (default: the mean row removed, so an affine ``k``-dimensional representation shows ``k``
    dominant values) or ``"sv"``."""
    schemes, lts, _ = _panels(df)
    fig, axes = subplots(len(schemes), len(lts), figsize=(2.4 * len(lts) + 0.6, 2.1 * len(schemes) + 0.8),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    cmap = colormaps["plasma"]
    for a, scheme in enumerate(schemes):
        for b, lt in enumerate(lts):
            ax = axes[a, b]
            r = _row(df, scheme, lt)
            if r is None or not isinstance(r.get(key), list):
                continue
            p = np.asarray(r["p"])
            sv = np.array([np.pad(s[:n_values], (0, max(0, n_values - len(s))), constant_values=np.nan)
                           for s in r[key]])
            sv = sv / sv[:, :1]
            for i in range(n_values):
                ax.semilogy(p, sv[:, i], ".-", ms=2, lw=1, color=cmap(i / n_values))
            ax.set_ylim(1e-3, 1.5)
            if a == 0:
                ax.set_title(f"L̃ = {lt:g}", fontsize=9)
            if b == 0:
                ax.set_ylabel(f"{scheme}\ns_i / s_1", fontsize=8)
            if a == len(schemes) - 1:
                ax.set_xlabel("depth p", fontsize=8)
    what = "centred representations" if key == "sv_centered" else "representations"
    fig.suptitle(title or f"singular values of the {what} A_ℓ (largest {n_values}, relative)", fontsize=10)
    return fig


def plot_profiles(df: pd.DataFrame, k_star: float | None = 3.0, title: str = ""):
    """COI, kinetic energy and k̂ along the depth ``p``: rows = the three measures, columns = step
    schemes, one line per L̃; the dashed line marks ``k*``."""
    schemes, lts, col = _panels(df)
    fig, axes = subplots(3, len(schemes), figsize=(3.6 * len(schemes) + 0.6, 7.6), sharex=True,
                             squeeze=False, layout="constrained")
    for b, scheme in enumerate(schemes):
        for lt in lts:
            r = _row(df, scheme, lt)
            if r is None or not isinstance(r.get("coi"), list):
                continue
            p = np.asarray(r["p"])
            mid = (p[:-1] + p[1:]) / 2
            axes[0, b].semilogy(p, r["coi"], ".-", color=col[lt], lw=1.2, ms=3, label=f"L̃ = {lt:g}")
            axes[1, b].semilogy(mid, np.maximum(r["kinetic"], 1e-12), ".-", color=col[lt], lw=1.2, ms=3)
            axes[2, b].plot(mid, r["k_hat"], ".-", color=col[lt], lw=1.2, ms=3)
        axes[0, b].set_title(scheme, fontsize=9)
        axes[2, b].set_xlabel("depth p")
        if k_star is not None:
            for ax in (axes[0, b], axes[2, b]):
                ax.axhline(k_star, color="0.4", ls="--", lw=0.8)
        lo = np.nanmin([np.nanmin(v) for v in df["k_hat"] if isinstance(v, list)] + [0.0])
        axes[2, b].set_ylim(max(lo, -5 * (k_star or 1)), 2.5 * (k_star or 1) + 1)
    axes[0, 0].set_ylabel("COI_γ(A_ℓ)")
    axes[1, 0].set_ylabel("kinetic energy T_ℓ")
    axes[2, 0].set_ylabel("k̂_ℓ = −2H_ℓ / L̃")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title or "Cost of Identity, kinetic energy and Hamiltonian estimate along the depth", fontsize=10)
    return fig


def plot_load_curves(df: pd.DataFrame, title: str = ""):
    """Load curves of the classification study: top row ``log D_ℓ`` against the depth ``p_ℓ``,
    bottom row the loads per unit depth ``d_ℓ/ρ_ℓ``; columns = step schemes, one line per L̃."""
    schemes, lts, col = _panels(df)
    fig, axes = subplots(2, len(schemes), figsize=(3.6 * len(schemes) + 0.6, 5.6), sharex=True,
                             squeeze=False, layout="constrained")
    for b, scheme in enumerate(schemes):
        for lt in lts:
            r = _row(df, scheme, lt)
            if r is None:
                continue
            p = np.concatenate([[0.0], np.cumsum(r["rho"])])
            mid = (p[:-1] + p[1:]) / 2
            axes[0, b].plot(p, r["curve"], ".-", color=col[lt], lw=1.2, ms=3,
                            label=f"L̃ = {lt:g} (R² {r['r2_depth']:.2f})")
            axes[1, b].plot(mid, r["loads_per_depth"], ".-", color=col[lt], lw=1.2, ms=3)
        axes[0, b].set_title(scheme, fontsize=9)
        axes[0, b].legend(fontsize=6)
        axes[1, b].set_xlabel("depth p")
    axes[0, 0].set_ylabel("log D_ℓ")
    axes[1, 0].set_ylabel("load per unit depth d_ℓ / ρ_ℓ")
    fig.suptitle(title or "load curves of leaky ResNets along the depth", fontsize=10)
    return fig


def write_table(df: pd.DataFrame, path) -> Path:
    with open(path, "w") as fh:
        for rec in df.to_dict(orient="records"):
            fh.write(json.dumps(rec, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)) + "\n")
    return path


def read_table(path) -> pd.DataFrame:
    """Read a study table written by :func:`run_bottleneck` (JSON lines)."""
    with open(path) as fh:
        return pd.DataFrame([json.loads(line) for line in fh if line.strip()])


SUMMARY_COLUMNS = ("scheme", "ltilde", "status", "objective", "test_loss", "test_accuracy", "min_coi",
                   "k_hat_median", "k_hat_mid", "bottleneck_extent", "kinetic_ends", "mid_numerical_rank",
                   "mid_numerical_rank_centered", "min_numerical_rank", "cv_layer", "cv_depth", "r2_depth", "wall_s")


def run_bottleneck(study: str = "teacher", out_dir="figures", *, ltildes=(1.0, 2.0, 4.0, 8.0, 16.0),
                   schemes=STEP_SCHEMES, seed: int = 1, cache_dir=None, **overrides) -> pd.DataFrame:
    """Run one study and write its table and figures to ``out_dir``; return the table.

    ``teacher``: ``bottleneck_teacher.jsonl`` / ``.csv`` (summary columns),
    ``bottleneck_teacher_singular_values``, ``bottleneck_teacher_profiles`` (PNG + PDF).
    ``load``: ``bottleneck_load_{dataset}.jsonl`` / ``.csv``, ``bottleneck_load_{dataset}_curves``,
    ``…_profiles`` and ``…_singular_values``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list = []
    if study == "teacher":
        df = teacher_study(ltildes, schemes, seed=seed, cache_dir=cache_dir, **overrides)
        stem = "bottleneck_teacher"
        written += save_figure(plot_profiles(df, 3.0, "teacher k* = 3: COI, kinetic energy and k̂ along the depth"),
                               out / f"{stem}_profiles")
    elif study == "load":
        df = load_curve_study(ltildes, schemes, seed=seed, cache_dir=cache_dir, **overrides)
        stem = f"bottleneck_load_{df['dataset'].iloc[0]}"
        ds = df["dataset"].iloc[0]
        written += save_figure(plot_load_curves(df, f"leaky ResNets on {ds}: log D along the depth"),
                               out / f"{stem}_curves")
        written += save_figure(plot_profiles(df, None, f"leaky ResNets on {ds}: COI, kinetic energy, k̂"),
                               out / f"{stem}_profiles")
    else:
        raise ValueError(f"study must be 'teacher' or 'load', got {study!r}")
    written += save_figure(plot_singular_values(df), out / f"{stem}_singular_values")
    write_table(df, out / f"{stem}.jsonl")
    df[[c for c in SUMMARY_COLUMNS if c in df.columns]].to_csv(out / f"{stem}.csv", index=False)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return df
