"""Bottleneck studies of leaky ResNets (SPEC §5.2; Jacot & Kaiser) and their figures.

Three studies, each a tidy table (one row per network) that the figures only read:

``teacher`` (:func:`teacher_study`)
    Leaky ResNets (``L = 20``, ``w = 100``) trained on the regression teacher with a ``k* = 3``
    bottleneck (``nets.data.teacher_data``: ``R^30 → R^3 → R^30``), full-batch Adam on the
    objective ``MSE + (λ/(2L̃)) Σ ρ_ℓ ‖W_ℓ‖²``; per layer the measures of
    :func:`nets.bottleneck.layer_measures` and their summary (min COI, k̂, bottleneck extent,
    kinetic energy at the ends).
``directions`` (:func:`direction_study`)
    The teacher networks for a grid of (L̃, λ, seed), optionally on a control teacher (linear
    encoder or decoder, :func:`nets.data.teacher_function`): which functions of the teacher's
    bottleneck ``z`` the middle representation carries — the R² of each centred principal
    direction on ``[z, 1]`` and on ``[z, ‖z‖, 1]`` (:func:`nets.bottleneck.direction_r2`), on the
    training points and on held-out test points.
``load`` (:func:`load_curve_study`)
    The same networks on MNIST or Fashion-MNIST classification (10×10 images, 2560 training
    images); the load curve ``log D_ℓ`` at the depths ``p_ℓ``, loads per unit depth and how linear
    the curve is per layer and per unit depth.

Figures (:func:`plot_singular_values`, :func:`plot_profiles`, :func:`plot_load_curves`): singular
values across depth, COI / kinetic energy / k̂ along ``p``, load curves along ``p``, for every L̃
and step scheme. Command line (``python -m phase_diagrams bottleneck``)::

    python -m phase_diagrams bottleneck --study teacher --out figures   # runtimes: docs/leaky-resnets.md
    python -m phase_diagrams bottleneck --study load --dataset fashion-mnist --out figures
    python -m phase_diagrams bottleneck --study directions --ltilde 16 --weight-decay 0.003,0.01 --out figures

``teacher`` and ``load`` train one batched ensemble per step scheme (members = the L̃ values),
``directions`` one ensemble over every (L̃, λ, seed).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from nets import LeakyResNet, TrainConfig, train_ensemble  # noqa: E402
from nets.bottleneck import bottleneck_summary, cost_of_identity, direction_r2  # noqa: E402
from nets.data import Dataset, teacher_data  # noqa: E402
from nets.mesh import STEP_SCHEMES  # noqa: E402
from phase_diagrams.plots import _save  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "TEACHER_DEFAULTS",
    "LOAD_DEFAULTS",
    "teacher_study",
    "direction_study",
    "load_curve_study",
    "curve_linearity",
    "plot_singular_values",
    "plot_profiles",
    "plot_load_curves",
    "run_bottleneck",
    "run_directions",
    "format_directions",
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


def _teacher_set(n_train: int, seed: int, encoder: str, decoder: str) -> tuple[Dataset, dict]:
    """The teacher data set exactly as ``load_dataset("teacher", n_train=…, subset_seed=seed)`` builds
    it (2000 test points), for any encoder/decoder variant; also returns the raw arrays (with ``z``)."""
    d = teacher_data(n_train, 2000, seed=seed, encoder=encoder, decoder=decoder)
    arrays = {k: np.ascontiguousarray(d[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
    ds = Dataset("teacher", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                 int(d["y_train"].shape[1]), np.arange(n_train), task="regression")
    return ds, d


def _stream_of(cfg: TrainConfig, h, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The trained network's residual stream ``A_0..A_L`` (float64) and outputs on the inputs ``x``."""
    model = LeakyResNet(x.shape[1], cfg.width, cfg.depth, h.n_classes, ltilde=cfg.ltilde, rho=h.rho,
                        weight_decay=cfg.weight_decay)
    model.load_state_dict(h.state_dict)
    with torch.no_grad():
        out, feats = model.forward_features(torch.as_tensor(x, dtype=torch.float32))
    return [f.double().numpy() for f in feats], out.double().numpy()


def direction_study(ltildes=(12.0, 16.0), weight_decays=(1e-2,), seeds=(1,), *, encoder: str = "relu",
                    decoder: str = "relu", scheme: str = "equidistant", n_directions: int = 6, cache_dir=None,
                    **overrides) -> pd.DataFrame:
    """Which functions of the teacher's ``z`` the bottleneck of each trained network carries.

    Trains one batched ensemble over every (L̃, λ = ``weight_decay``, seed) on the teacher of
    :data:`TEACHER_DEFAULTS` (``overrides`` replace its fields, e.g. ``n_train``, ``epochs``;
    ``encoder``/``decoder`` pick a control teacher). For the middle representation ``A_{L/2}``
    (``p = 0.5``) it reports the centred singular values relative to the largest (``sv_rel``), and
    :func:`nets.bottleneck.direction_r2` of the first ``n_directions`` centred directions on
    ``[z, 1]`` (``r2_z``) and on ``[z, ‖z‖, 1]`` (``r2_zn``), each on the training points and on the
    test points (``…_test``; the training directions and fits applied unchanged), plus the MSE of
    the network on both sets, ``weight_cost = Σ_ℓ ρ_ℓ ‖W_ℓ‖_F² / (2L̃)`` (so the training objective
    at any ``λ'`` is ``mse_train + λ' · weight_cost``: networks trained at different λ compare on
    one objective), ``coi_mid_by_gamma0`` (COI of ``A_{L/2}`` at ``γ₀ = 10⁻², 10⁻³, 10⁻⁴``: an exactly
    rank-``k`` non-negative representation approaches ``k`` from below as ``γ₀ → 0``), the raw
    (uncentred) relative singular values ``sv_raw_rel``, ``negative_share = ‖min(A, 0)‖_F / ‖A‖_F``
    (0: ReLU is the identity on ``A_{L/2}``) and the summary numbers of
    :func:`nets.bottleneck.bottleneck_summary`.
    """
    fields = dict(TEACHER_DEFAULTS, **overrides)
    fields.pop("weight_decay")
    if scheme not in STEP_SCHEMES:
        raise ValueError(f"unknown step scheme {scheme!r}; choose from {', '.join(STEP_SCHEMES)}")
    ds, d = _teacher_set(int(fields["n_train"]), int(fields.get("subset_seed", 0)), encoder, decoder)
    cfgs = [TrainConfig(**fields, ltilde=float(lt), weight_decay=float(wd), step_scheme=scheme, seed=int(sd))
            for lt in ltildes for wd in weight_decays for sd in seeds]
    t0 = time.perf_counter()
    hists = train_ensemble(cfgs, dataset=ds, cache_dir=cache_dir)
    log.info("directions: %d networks in %.0f s", len(cfgs), time.perf_counter() - t0)
    z = {s: d[f"z_{s}"].astype(np.float64) for s in ("train", "test")}
    zn = {s: np.hstack([z[s], np.linalg.norm(z[s], axis=1, keepdims=True)]) for s in z}
    rows = []
    for cfg, h in zip(cfgs, hists, strict=True):
        row = dict(encoder=encoder, decoder=decoder, n_train=cfg.n_train, epochs=h.epochs_run, ltilde=cfg.ltilde,
                   weight_decay=cfg.weight_decay, seed=cfg.seed, status=h.status, test_loss=float(h.test_loss))
        streams = {}
        for s in ("train", "test"):
            streams[s], pred = _stream_of(cfg, h, d[f"x_{s}"])
            row[f"mse_{s}"] = float(np.mean((pred - d[f"y_{s}"]) ** 2))
        w2 = h.state_dict["weights"].double().pow(2).sum((1, 2)).numpy()
        row["weight_cost"] = float(np.sum(np.asarray(h.rho) * w2) / (2.0 * cfg.ltilde))
        mid = cfg.depth // 2
        for key, reg in (("z", z), ("zn", zn)):
            r = direction_r2(streams["train"][mid], reg["train"], a_test=streams["test"][mid],
                             regressors_test=reg["test"], n_directions=n_directions)
            row[f"r2_{key}"], row[f"r2_{key}_test"] = r["r2"], r["r2_test"]
            row[f"r2_total_{key}"], row[f"r2_total_{key}_test"] = r["r2_total"], r["r2_total_test"]
        row["sv_rel"] = (np.asarray(r["sv_centered"]) / r["sv_centered"][0]).tolist()
        a_mid = streams["train"][mid]
        row["coi_mid_by_gamma0"] = {g: cost_of_identity(a_mid, g) for g in (1e-2, 1e-3, 1e-4)}
        sv_raw = np.linalg.svd(a_mid, compute_uv=False)
        row["sv_raw_rel"] = (sv_raw[:n_directions] / sv_raw[0]).tolist()
        row["negative_share"] = float(np.linalg.norm(np.minimum(a_mid, 0.0)) / np.linalg.norm(a_mid))
        row["coi"] = h.bottleneck["coi"]
        row.update(bottleneck_summary(h.bottleneck))
        rows.append(row)
    return pd.DataFrame(rows)


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
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(lts)))
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
    fig, axes = plt.subplots(len(schemes), len(lts), figsize=(2.4 * len(lts) + 0.6, 2.1 * len(schemes) + 0.8),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    cmap = plt.get_cmap("plasma")
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
    fig, axes = plt.subplots(3, len(schemes), figsize=(3.6 * len(schemes) + 0.6, 7.6), sharex=True,
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
    fig, axes = plt.subplots(2, len(schemes), figsize=(3.6 * len(schemes) + 0.6, 5.6), sharex=True,
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


def _write_table(df: pd.DataFrame, path: Path) -> Path:
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


def run_bottleneck(out_dir="figures", study: str = "teacher", *, ltildes=(1.0, 2.0, 4.0, 8.0, 16.0),
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
        _save(plot_profiles(df, 3.0, "teacher k* = 3: COI, kinetic energy and k̂ along the depth"),
              out / f"{stem}_profiles", written)
    elif study == "load":
        df = load_curve_study(ltildes, schemes, seed=seed, cache_dir=cache_dir, **overrides)
        stem = f"bottleneck_load_{df['dataset'].iloc[0]}"
        _save(plot_load_curves(df, f"leaky ResNets on {df['dataset'].iloc[0]}: log D along the depth"),
              out / f"{stem}_curves", written)
        _save(plot_profiles(df, None, f"leaky ResNets on {df['dataset'].iloc[0]}: COI, kinetic energy, k̂"),
              out / f"{stem}_profiles", written)
    else:
        raise ValueError(f"study must be 'teacher' or 'load', got {study!r}")
    _save(plot_singular_values(df), out / f"{stem}_singular_values", written)
    _write_table(df, out / f"{stem}.jsonl")
    df[[c for c in SUMMARY_COLUMNS if c in df.columns]].to_csv(out / f"{stem}.csv", index=False)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return df


def format_directions(df: pd.DataFrame, n: int = 5) -> str:
    """A plain-text table of :func:`direction_study`: one line per network with the test MSE, min
    COI, k̂ (middle half), kinetic share at the ends, the first ``n`` relative centred singular
    values of ``A_{L/2}`` and their R² on ``[z, 1]`` and ``[z, ‖z‖, 1]`` (train / test)."""
    def vec(v):
        return " ".join(f"{x:5.2f}" for x in v[:n])

    lines = []
    for r in df.to_dict(orient="records"):
        lines.append(f"{r['encoder']}/{r['decoder']} N={r['n_train']} L~={r['ltilde']:g} lambda={r['weight_decay']:g} "
                     f"seed={r['seed']} epochs={r['epochs']}: mse train {r['mse_train']:.3f} test {r['mse_test']:.3f}, "
                     f"min COI {r['min_coi']:.2f}, k_hat mid {r['k_hat_mid']:.2f}, kinetic ends "
                     f"{r['kinetic_ends']:.2f}, extent {r['bottleneck_extent']:.2f}, weight cost "
                     f"{r['weight_cost']:.2f} (objective at lambda' = 3e-3 / 1e-2: "
                     + " / ".join(f"{r['mse_train'] + lam * r['weight_cost']:.4f}" for lam in (3e-3, 1e-2)) + ")")
        lines.append(f"    s_i/s_1 (centred A_L/2)    {vec(r['sv_rel'])}   COI(A_L/2) at gamma0 = 1e-2, 1e-3, 1e-4: "
                     + ", ".join(f"{v:.3f}" for v in r["coi_mid_by_gamma0"].values()))
        lines.append(f"    s_i/s_1 (raw A_L/2)        {vec(r['sv_raw_rel'])}   "
                     f"|min(A, 0)| / |A| = {r['negative_share']:.4f}")
        for key, name in (("z", "[z, 1]"), ("zn", "[z, |z|, 1]")):
            lines.append(f"    R2 on {name:12s} train {vec(r[f'r2_{key}'])}   test {vec(r[f'r2_{key}_test'])}   "
                         f"(all: {r[f'r2_total_{key}']:.3f} / {r[f'r2_total_{key}_test']:.3f})")
    return "\n".join(lines)


def run_directions(out_dir="figures", **kw) -> pd.DataFrame:
    """:func:`direction_study` with ``kw``; writes a ``.jsonl`` table (every column)
    and ``….txt`` (:func:`format_directions`), named ``bottleneck_directions_{encoder}_{decoder}``,
    to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = direction_study(**kw)
    stem = f"bottleneck_directions_{kw.get('encoder', 'relu')}_{kw.get('decoder', 'relu')}"
    _write_table(df, out / f"{stem}.jsonl")
    (out / f"{stem}.txt").write_text(format_directions(df) + "\n")
    return df
