"""Which functions of the teacher's bottleneck does a leaky ResNet's middle layer carry?

A one-off study behind ``docs/leaky-resnets.md`` (kept out of the library): the teacher networks
of :data:`phase_diagrams.bottleneck.TEACHER_DEFAULTS` for a grid of (L̃, λ, seed), optionally on a
control teacher (linear encoder or decoder, :func:`nets.data.teacher_data`), trained as one
batched ensemble; for the middle representation the R² of each centred principal direction on
``[z, 1]`` and on ``[z, ‖z‖, 1]`` (:func:`nets.bottleneck.direction_r2`), on the training points
and on held-out test points.

    python -m studies.directions --ltilde 16 --weight-decay 0.003,0.01 --out figures
    python -m studies.directions --ltilde 2 --seed 1,2 --epochs 2 --n-train 48 --depth 4 --encoder linear
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nets import LeakyResNet, TrainConfig, train_ensemble
from nets.bottleneck import bottleneck_summary, cost_of_identity, direction_r2
from nets.data import Dataset, teacher_data
from nets.mesh import STEP_SCHEMES
from phase_diagrams.bottleneck import TEACHER_DEFAULTS, write_table

log = logging.getLogger(__name__)


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
    write_table(df, out / f"{stem}.jsonl")
    (out / f"{stem}.txt").write_text(format_directions(df) + "\n")
    return df


def main(argv=None) -> int:
    """``python -m studies.directions``: run :func:`run_directions` and print its table."""
    p = argparse.ArgumentParser(prog="python -m studies.directions", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="figures")
    p.add_argument("--ltilde", default="12,16", help="comma-separated effective depths")
    p.add_argument("--weight-decay", default=str(TEACHER_DEFAULTS["weight_decay"]), help="comma-separated lambdas")
    p.add_argument("--seed", default="1", help="comma-separated seeds")
    p.add_argument("--encoder", default="relu", choices=("relu", "linear"))
    p.add_argument("--decoder", default="relu", choices=("relu", "linear"))
    p.add_argument("--scheme", default="equidistant", choices=STEP_SCHEMES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--n-train", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--data", default=None, help="data cache directory")
    args = p.parse_args(argv)
    try:
        ltildes = [float(v) for v in args.ltilde.split(",")]
        wds = [float(v) for v in args.weight_decay.split(",")]
        seeds = [int(v) for v in args.seed.split(",")]
    except ValueError as err:
        p.error(str(err))
    over = {k: v for k, v in (("epochs", args.epochs), ("n_train", args.n_train), ("depth", args.depth))
            if v is not None}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    df = run_directions(args.out, ltildes=ltildes, weight_decays=wds, seeds=seeds, encoder=args.encoder,
                        decoder=args.decoder, scheme=args.scheme, cache_dir=args.data, **over)
    print(format_directions(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
