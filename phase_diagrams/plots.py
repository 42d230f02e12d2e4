"""Phase-diagram figures. Every function takes tables (:mod:`phase_diagrams.comparison`) and
returns a matplotlib Figure; none computes a statistic. :func:`sweep_figures` draws every figure
of a sweep from its tables; :func:`phase_diagrams.jobs.plot_all` reads a store and saves them.
No function here touches pyplot or the matplotlib backend (the CLI chooses Agg).

Layout of a diagram (the original figure): rows = LeakyReLU slope alpha (ReLU, alpha = 0, at the
top), columns = the noise axis with more noise to the left; each cell the normalised load curve
``(log D_l − min) / (max − min)`` (the chain: ``y − x_l``) over a background shaded by test
accuracy (measured) or by the normalised curvature c/Σd (simulated), one colour bar per panel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from springblock.observables import normalized_curve

__all__ = [
    "plot_measured_grid",
    "plot_simulated_grid",
    "plot_side_by_side",
    "plot_heatmap",
    "plot_accuracy_vs_linearity",
    "plot_trajectories",
    "plot_comparison",
    "plot_fit_heatmaps",
    "plot_fitted_curves",
    "plot_calibration_map",
    "plot_scores",
    "plot_curve_fit",
    "sweep_figures",
    "save_figure",
]

#: Row-axis labels of the figures, by the spec's row field.
ROW_LABELS = {"alpha": "alpha (LeakyReLU slope; 0 = ReLU)", "ltilde": "effective depth L̃"}
_ALPHA = ROW_LABELS["alpha"]

_SHORT = {"concave": "cc", "linear": "lin", "convex": "cv", "undefined": "?", "missing": "–", "diverged": "div"}


def subplots(nrows: int = 1, ncols: int = 1, *, figsize, layout=None, **kw):
    """``(Figure, axes)`` like ``pyplot.subplots``, without pyplot: no backend is chosen, no
    global figure list grows (a figure is freed with its last reference)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kw)


def _fmt(v) -> str:
    return "full" if v is None else f"{v:.3g}"


def _order(cells: pd.DataFrame):
    """Row indices top to bottom (alpha ascending) and column indices left to right (noisiest first)."""
    rows = cells.drop_duplicates("row").sort_values("row_value")
    cols = cells.drop_duplicates("col").sort_values("noise_rank", ascending=False)
    return rows, cols


def _draw_grid(fig, cells: pd.DataFrame, shade: str, cmap, norm, *, title: str, col_label: str,
               bar_label: str, curve: str = "curve", col_key: str = "col_value", rect=(0.0, 1.0),
               row_label: str = _ALPHA):
    """Draw the cell grid into the horizontal slice ``rect = (x0, x1)`` of ``fig`` (figure
    coordinates) with its colour bar on the right. A fixed grid layout: matplotlib's constrained
    layout took ~2 s per 48-cell figure."""
    rows, cols = _order(cells)
    x0, x1 = rect
    w = x1 - x0
    gs = fig.add_gridspec(len(rows), len(cols), left=x0 + 0.075 * w, right=x0 + 0.86 * w, bottom=0.11, top=0.89,
                          wspace=0.07, hspace=0.07)
    table = cells.set_index(["row", "col"])
    for a, (_, r) in enumerate(rows.iterrows()):
        for b, (_, c) in enumerate(cols.iterrows()):
            ax = fig.add_subplot(gs[a, b])
            ax.set_xticks([])
            ax.set_yticks([])
            cell = table.loc[(r["row"], c["col"])]
            val = cell.get(shade, np.nan)
            ax.set_facecolor(cmap(norm(val)) if val is not None and np.isfinite(val) else "0.97")
            if cell[curve] is not None:
                band = cell.get("seed_curves") if curve == "curve" else None
                if band is not None and len(band) > 1:  # the seed band: each seed's normalised curve
                    each = normalized_curve(np.asarray(band, dtype=float))
                    ax.fill_between(np.arange(each.shape[1]), each.min(axis=0), each.max(axis=0), color="C3",
                                    alpha=0.25, lw=0)
                if bool(cell.get("near_threshold", False)):  # the regime is within one seed-SD of a threshold
                    ax.text(0.97, 0.06, "±", ha="right", va="bottom", transform=ax.transAxes, fontsize=7, color="C0")
                y = normalized_curve(np.asarray(cell[curve], dtype=float))
                ax.plot(np.arange(y.size), y, ".-", color="C3", lw=1.3, ms=3)
                ax.set_ylim(-0.12, 1.12)
            else:
                ax.text(0.5, 0.5, _SHORT.get(cell.get("regime", "missing"), "?"), ha="center", va="center",
                        transform=ax.transAxes, fontsize=8, color="0.3")
            if a == len(rows) - 1:
                ax.set_xlabel(_fmt(c[col_key]), fontsize=7)
            if b == 0:
                ax.set_ylabel(_fmt(r["row_value"]), fontsize=7)
    fig.text(x0 + 0.47 * w, 0.035, f"{col_label} (more noise to the left)", ha="center", fontsize=8)
    fig.text(x0 + 0.012 * w, 0.5, row_label, va="center", rotation=90, fontsize=8)
    fig.text(x0 + 0.47 * w, 0.94, title, ha="center", fontsize=9)
    cax = fig.add_axes((x0 + 0.885 * w, 0.2, 0.018 * w, 0.6))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label=bar_label)


def _accuracy_norm(cells):
    acc = cells["accuracy"].to_numpy(dtype=float)
    acc = acc[np.isfinite(acc)]
    lo, hi = (acc.min(), acc.max()) if acc.size else (0.0, 1.0)
    return Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)


def _curvature_norm(values):
    v = np.asarray(values, dtype=float)
    lim = max(np.nanmax(np.abs(v)) if np.isfinite(v).any() else 0.0, 1e-9)
    return TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)


def _size(cells, extra_w=1.6):
    rows, cols = _order(cells)
    return 1.15 * len(cols) + extra_w, 1.0 * len(rows) + 1.0


def plot_measured_grid(cells: pd.DataFrame, title: str = "measured load curves", col_label: str = "noise",
                       row_label: str = _ALPHA):
    """The original figure: normalised mean load curve per cell over grey shaded by test accuracy
    (darker = more accurate), with the band of the seeds' normalised curves (min–max over seeds)
    and a "±" where the cell's mean c/Σd lies within one seed-SD of a regime threshold.
    ``cells``: :func:`~phase_diagrams.comparison.measured_cells`."""
    fig = Figure(figsize=_size(cells))
    _draw_grid(fig, cells, "accuracy", colormaps["Greys"], _accuracy_norm(cells), title=title,
               col_label=col_label, bar_label="test accuracy", row_label=row_label)
    return fig


def plot_simulated_grid(cells: pd.DataFrame, title: str = "spring-block chain", row_label: str = _ALPHA):
    """Simulated cells (``y − x_l``), background shaded by c/Σd (red convex, blue concave); the
    columns are labelled with their noise amplitude eps.
    ``cells``: :func:`~phase_diagrams.comparison.simulated_cells`."""
    fig = Figure(figsize=_size(cells))
    _draw_grid(fig, cells, "normalized_curvature", colormaps["coolwarm"],
               _curvature_norm(cells["normalized_curvature"]), title=title, col_label="eps",
               bar_label="c / Σd (>0 convex)", col_key="eps", row_label=row_label)
    return fig


def plot_side_by_side(measured: pd.DataFrame, simulated: pd.DataFrame, *, title: str = "",
                      col_label: str = "noise", preset: str = "", row_label: str = _ALPHA):
    """Measured | simulated, one figure: left the measured grid (accuracy shading), right the
    chain (c/Σd shading), cells in the same places."""
    w, h = _size(measured)
    fig = Figure(figsize=(2 * w, h + 0.3))
    _draw_grid(fig, measured, "accuracy", colormaps["Greys"], _accuracy_norm(measured),
               title=f"{title}: measured log D per layer".strip(": "), col_label=col_label,
               bar_label="test accuracy", rect=(0.0, 0.5), row_label=row_label)
    _draw_grid(fig, simulated, "normalized_curvature", colormaps["coolwarm"],
               _curvature_norm(simulated["normalized_curvature"]),
               title=f"simulated: y − x per block ({preset})", col_label="eps", bar_label="c / Σd",
               col_key="eps", rect=(0.5, 1.0), row_label=row_label)
    return fig


def plot_heatmap(cells: pd.DataFrame, value: str = "normalized_curvature", title: str = "",
                 col_label: str = "noise", col_key: str = "col_value", row_label: str = "alpha"):
    """Heat map of ``value`` (default c/Σd) over the grid, each cell labelled with its regime."""
    rows, cols = _order(cells)
    table = cells.set_index(["row", "col"])
    z = np.full((len(rows), len(cols)), np.nan)
    labels = np.full(z.shape, "", dtype=object)
    for a, r in enumerate(rows["row"]):
        for b, c in enumerate(cols["col"]):
            cell = table.loc[(r, c)]
            v = cell[value]
            z[a, b] = np.nan if v is None else float(v)
            labels[a, b] = _SHORT.get(cell["regime"], "")
    fig, ax = subplots(figsize=(0.85 * len(cols) + 2.4, 0.55 * len(rows) + 1.4), layout="constrained")
    im = ax.imshow(z, cmap="coolwarm", norm=_curvature_norm(z), aspect="auto")
    for a in range(z.shape[0]):
        for b in range(z.shape[1]):
            ax.text(b, a, labels[a, b], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), [_fmt(v) for v in cols[col_key]], fontsize=7)
    ax.set_yticks(range(len(rows)), [_fmt(v) for v in rows["row_value"]], fontsize=7)
    ax.set_xlabel(f"{col_label} (more noise to the left)")
    ax.set_ylabel(row_label)
    ax.set_title(title or value, fontsize=9)
    fig.colorbar(im, ax=ax, label=value)
    return fig


def plot_accuracy_vs_linearity(accuracy, linearity, rho: float, title: str = ""):
    """Scatter of test accuracy against linearity v (one point per run), with the Spearman ρ
    computed by :func:`~phase_diagrams.comparison.accuracy_linearity`."""
    fig, ax = subplots(figsize=(4.2, 3.4), layout="constrained")
    ax.scatter(linearity, accuracy, s=14, alpha=0.8)
    ax.set_xlabel("linearity v = std of the loads")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}  Spearman ρ = {rho:+.2f}".strip(), fontsize=9)
    return fig


def plot_trajectories(run: pd.Series, sim: pd.Series | None = None, title: str = ""):
    """Load-curve trajectory of one cell over training (``log D_l`` at each probe, one line per
    layer) next to the chain's block trajectories ``y − x_l`` over simulation time."""
    ncols = 2 if sim is not None else 1
    fig, axes = subplots(1, ncols, figsize=(4.4 * ncols, 3.4), layout="constrained", squeeze=False)
    traj = np.asarray(run["trajectory"], dtype=float)
    epochs = np.asarray(run["probe_epochs"])
    colors = colormaps["viridis"](np.linspace(0, 1, traj.shape[1]))
    ax = axes[0, 0]
    for layer in range(traj.shape[1]):
        ax.plot(epochs, traj[:, layer], color=colors[layer], lw=1.2, label=f"{layer}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("log D_l")
    ax.set_title("network: layers 0 (input) .. L", fontsize=9)
    ax.legend(fontsize=6, ncol=2, title="layer", title_fontsize=6)
    if sim is not None:
        st = np.asarray(sim["trajectory"], dtype=float)
        t = np.asarray(sim["times"], dtype=float)
        ax = axes[0, 1]
        for block in range(st.shape[1]):
            ax.plot(t, st[:, block], color=colors[min(block, len(colors) - 1)], lw=1.2)
        ax.set_xlabel("simulation time t = step · eta")
        ax.set_ylabel("y − x_l")
        ax.set_title(f"chain ({sim['preset']}): wall 0 .. block L", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_comparison(per_cell: pd.DataFrame, summary: pd.DataFrame, title: str = ""):
    """Measured against simulated c/Σd over cells, one panel per friction preset, coloured by
    whether the regime labels agree; agreement and Spearman in each panel title."""
    presets = list(summary["preset"])
    fig, axes = subplots(1, len(presets), figsize=(3.6 * len(presets), 3.4), layout="constrained",
                             squeeze=False)
    for ax, (_, s) in zip(axes[0], summary.iterrows(), strict=True):
        p = per_cell[per_cell["preset"] == s["preset"]]
        for agree, color in ((True, "C2"), (False, "C3")):
            q = p[p["agree"] == agree]
            ax.scatter(q["simulated_nc"], q["measured_nc"], s=16, color=color,
                       label="regimes agree" if agree else "disagree")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set_xlabel("simulated c / Σd")
        ax.set_ylabel("measured c / Σd")
        ceil = s.get("ceiling_agreement", np.nan)
        ceil_txt = (f"\n(seed ceiling {ceil:.0%}, ρ = {s.get('ceiling_spearman_nc', np.nan):+.2f})"
                    if np.isfinite(ceil) else "")
        ax.set_title(f"{s['preset']}: agree {s['regime_agreement']:.0%}, ρ = {s['spearman_nc']:+.2f}{ceil_txt}",
                     fontsize=9)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path) -> list[Path]:
    """Save ``fig`` as ``path.png`` and ``path.pdf`` (130 dpi); returns the two paths."""
    path = Path(path)
    out = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in out:
        fig.savefig(p, dpi=130)
    return out


def plot_curve_fit(res, title: str = ""):
    """Measured (dots) vs fitted (line) ``log D_l`` of one :class:`~phase_diagrams.fitting.FitResult`
    (every probe of a trajectory, darker = later), with the fitted parameters, their intervals and
    the flags in the title (red when flagged)."""
    m, f = np.atleast_2d(np.asarray(res.measured, float)), np.atleast_2d(np.asarray(res.fitted, float))
    fig, ax = subplots(figsize=(5.2, 3.6), layout="constrained")
    shades = np.linspace(0.35, 1.0, m.shape[0])
    for i in range(m.shape[0]):
        ax.plot(np.arange(m.shape[1]), m[i], ".", color=colormaps["Greys"](shades[i]), ms=5)
        ax.plot(np.arange(f.shape[1]), f[i], "-", color=colormaps["Reds"](shades[i]), lw=1.1)
    ax.set_xlabel("layer l")
    ax.set_ylabel("log D_l")
    parts = [f"{n} {v:.3g} [{res.ci[n][0]:.2g}, {res.ci[n][1]:.2g}]{'' if res.identified.get(n) else ' (n.i.)'}"
             for n, v in res.params.items()]
    head = (title + "\n" if title else "") + f"R² {res.r2:.3f}; " + "; ".join(parts[:3])
    if len(parts) > 3:
        head += "\n" + "; ".join(parts[3:])
    flags = "flags: " + "; ".join(res.flags) if res.flags else "no flags"
    ax.set_title(head + "\n" + flags + "   (dots: measured, line: fitted; n.i. = not identified)", fontsize=6.5,
                 color="C3" if res.flags else "k")
    return fig


def sweep_figures(spec, cells: pd.DataFrame, simulated: dict | None = None, comparison=None, *,
                  accuracy=None, what: str = "", cell: tuple[int, int] | None = None) -> dict:
    """Every figure of one sweep from its tables, as ``{name: Figure}`` (:func:`phase_diagrams.jobs.plot_all`
    saves them).

    ``cells``: :func:`~phase_diagrams.comparison.measured_cells`; ``simulated``: ``{preset:
    simulated_cells}``; ``comparison``: ``(per_cell, summary)`` of
    :func:`~phase_diagrams.comparison.compare`; ``accuracy``: ``(accuracy, linearity, rho)`` of
    :func:`~phase_diagrams.comparison.accuracy_linearity`; ``cell = (row, col)``: the cell whose trajectory is
    drawn (default the top-left cell, ReLU at the most noise). Names: ``{sweep}_measured``,
    ``{sweep}_measured_curvature``, ``{sweep}_accuracy_vs_linearity``, per preset
    ``{sweep}_simulated_{preset}``, ``{sweep}_side_by_side_{preset}``,
    ``{sweep}_simulated_{preset}_curvature``; ``{sweep}_comparison``; ``{sweep}_trajectories`` when
    the cell has a probe trajectory.
    """
    sweep, col = spec.name, spec.columns.field
    rl = ROW_LABELS.get(spec.rows.field, spec.rows.field)
    figs = {
        f"{sweep}_measured": plot_measured_grid(cells, f"{sweep}: measured load curves ({what})".replace(" ()", ""),
                                                col, row_label=rl),
        f"{sweep}_measured_curvature": plot_heatmap(cells, title=f"{sweep}: measured c / Σd", col_label=col,
                                                    row_label=spec.rows.field),
    }
    if accuracy is not None:
        figs[f"{sweep}_accuracy_vs_linearity"] = plot_accuracy_vs_linearity(*accuracy, sweep)
    for preset, sc in (simulated or {}).items():
        figs[f"{sweep}_simulated_{preset}"] = plot_simulated_grid(sc, f"{sweep}: chain, simulator preset {preset}",
                                                                   row_label=rl)
        figs[f"{sweep}_side_by_side_{preset}"] = plot_side_by_side(cells, sc, title=sweep, col_label=col,
                                                                    preset=preset, row_label=rl)
        figs[f"{sweep}_simulated_{preset}_curvature"] = plot_heatmap(
            sc, title=f"{sweep}: simulated c / Σd ({preset})", col_label="eps", col_key="eps",
            row_label=spec.rows.field)
    if comparison is not None:
        figs[f"{sweep}_comparison"] = plot_comparison(*comparison, f"{sweep}: measured vs simulated")
    if cell is None:
        top = cells.sort_values(["row_value", "noise_rank"], ascending=[True, False]).iloc[0]
        cell = (int(top["row"]), int(top["col"]))
    sel = cells[(cells["row"] == cell[0]) & (cells["col"] == cell[1])]
    if sel.empty:
        raise ValueError(f"cell {cell} is not in the {spec.shape[0]} x {spec.shape[1]} grid of {sweep!r}")
    c = sel.iloc[0]
    if c["trajectory"] is not None and len(c["trajectory"]) > 1:
        first = next(iter((simulated or {}).values()), None)
        s = None
        if first is not None:
            sp = first[(first["row"] == cell[0]) & (first["col"] == cell[1])]
            s = sp.iloc[0] if not sp.empty else None
        label = f"{sweep}: cell {spec.rows.field}={_fmt(c['row_value'])}, {col}={_fmt(c['col_value'])}"
        figs[f"{sweep}_trajectories"] = plot_trajectories(c, s, label)
    return figs


def plot_fit_heatmaps(fits: pd.DataFrame, title: str = "", col_label: str = "noise"):
    """Fitted parameters over the grid, one heat map per parameter (log colour scale), each cell
    annotated with its value; ``///`` hatching marks a value the data do not identify there
    (``{name}_identified`` False: the 95 % interval reaches a bound or spans more than a factor
    10), ``xx`` (red) a flagged cell (not converged, a parameter at a bound, R² < 0.5, b = 0; see
    the ``flags`` column). ``fits``: :func:`~phase_diagrams.fitting.fit_cells`."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    names = [n for n in ("mu_forward", "mu_backward", "eps", "lam", "tau") if n in fits.columns]
    rows, cols = _order(fits)
    fig, axes = subplots(1, len(names), figsize=(0.62 * len(cols) * len(names) + 1.2 * len(names),
                                                      0.42 * len(rows) + 1.7), layout="constrained", squeeze=False)
    table = fits.set_index(["row", "col"])
    for ax, name in zip(axes[0], names, strict=True):
        z = np.full((len(rows), len(cols)), np.nan)
        unsure = np.zeros(z.shape, dtype=bool)
        flagged = np.zeros(z.shape, dtype=bool)
        for a, r in enumerate(rows["row"]):
            for b, c in enumerate(cols["col"]):
                if (r, c) in table.index:
                    cell = table.loc[(r, c)]
                    z[a, b] = cell[name]
                    lo, hi = cell[f"{name}_lo"], cell[f"{name}_hi"]
                    if f"{name}_identified" in cell.index:
                        unsure[a, b] = not bool(cell[f"{name}_identified"])
                    else:
                        unsure[a, b] = not (np.isfinite(lo) and np.isfinite(hi) and lo > 0 and hi / lo < 10)
                    flagged[a, b] = int(cell.get("n_flags", 0) or 0) > 0
        pos = z[np.isfinite(z) & (z > 0)]
        norm = LogNorm(vmin=pos.min(), vmax=max(pos.max(), pos.min() * 1.01)) if pos.size else None
        im = ax.imshow(np.where(z > 0, z, np.nan), cmap="viridis", norm=norm, aspect="auto")
        for a in range(z.shape[0]):
            for b in range(z.shape[1]):
                if np.isfinite(z[a, b]):
                    ax.text(b, a, f"{z[a, b]:.2g}", ha="center", va="center", fontsize=5.5, color="w")
                if unsure[a, b]:
                    ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, hatch="///", color="0.85", lw=0))
                if flagged[a, b]:
                    ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, hatch="xx", color="C3", lw=0.8))
        ax.set_xticks(range(len(cols)), [_fmt(v) for v in cols["col_value"]], fontsize=6, rotation=90)
        ax.set_yticks(range(len(rows)), [_fmt(v) for v in rows["row_value"]], fontsize=6)
        ax.set_xlabel(f"{col_label} (more noise to the left)", fontsize=7)
        ax.set_title(f"fitted {name} / k\n(/// not identified, red xx flagged)", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0, 0].set_ylabel("alpha")
    n_flag = int((fits["n_flags"] > 0).sum()) if "n_flags" in fits.columns else 0
    fig.suptitle((title + "; " if title else "") + f"{n_flag} of {len(fits)} cells flagged (red xx)", fontsize=9)
    return fig


def plot_fitted_curves(fits: pd.DataFrame, title: str = "", col_label: str = "noise"):
    """Measured final ``log D_l`` (dots) and the fitted chain mapped by its affine map (line) per
    cell, in log D units; each cell titled with its rms residual and R². A flagged cell (see the
    ``flags`` column) is hatched red and its title names the flags. For trajectory fits the last
    probe is shown."""
    rows, cols = _order(fits)
    w, h = _size(fits, extra_w=0.8)
    fig = Figure(figsize=(max(w, 6.5), max(h, 3.0)))
    gs = fig.add_gridspec(len(rows), len(cols), left=0.07, right=0.98, bottom=0.1, top=0.88, wspace=0.25,
                          hspace=0.45)
    table = fits.set_index(["row", "col"])
    for a, (_, r) in enumerate(rows.iterrows()):
        for b, (_, c) in enumerate(cols.iterrows()):
            ax = fig.add_subplot(gs[a, b])
            ax.tick_params(labelsize=5)
            if (r["row"], c["col"]) not in table.index:
                ax.set_axis_off()
                continue
            cell = table.loc[(r["row"], c["col"])]
            m, f = np.asarray(cell["measured"], dtype=float), np.asarray(cell["fitted"], dtype=float)
            if m.ndim == 2:
                m, f = m[-1], f[-1]
            ax.plot(np.arange(m.size), m, "k.", ms=3)
            ax.plot(np.arange(f.size), f, "-", color="C3", lw=1.1)
            flags = str(cell.get("flags", "") or "")
            ax.set_title(f"rms {cell['rms']:.2g} R² {cell['r2']:.2f}" + (f"\n{flags}" if flags else ""), fontsize=4.5,
                         pad=1, color="C3" if flags else "k")
            if flags:
                ax.patch.set_hatch("xx")
                ax.patch.set_edgecolor("mistyrose")
            if a == len(rows) - 1:
                ax.set_xlabel(_fmt(c["col_value"]), fontsize=7)
            if b == 0:
                ax.set_ylabel(_fmt(r["row_value"]), fontsize=7)
    fig.text(0.5, 0.02, f"{col_label} (more noise to the left); dots: measured log D_l, line: fitted chain",
             ha="center", fontsize=8)
    fig.text(0.005, 0.5, "alpha", va="center", rotation=90, fontsize=8)
    n_flag = int((fits["n_flags"] > 0).sum()) if "n_flags" in fits.columns else 0
    fig.text(0.5, 0.94, (title or "measured vs fitted") + f"; {n_flag} flagged cells hatched red", ha="center",
             fontsize=9)
    return fig


def plot_calibration_map(curves: dict, title: str = ""):
    """The calibrated map with its 95 % bands: mu->(alpha) and mu<-(alpha) left, eps over the
    noise coordinate right (the panel's columns marked). ``curves``:
    :meth:`~phase_diagrams.calibration.Calibration.map_curves`."""
    fig, (a1, a2) = subplots(1, 2, figsize=(8.4, 3.3), layout="constrained")
    for name, color, label in (("mu_forward", "C0", "μ→ (forward)"), ("mu_backward", "C3", "μ← (backward)")):
        lo, mid, hi = curves[name]
        a1.fill_between(curves["alpha"], lo, hi, color=color, alpha=0.25, lw=0)
        a1.plot(curves["alpha"], mid, color=color, label=label)
    a1.set_xlabel("alpha (LeakyReLU slope; 0 = ReLU)")
    a1.set_ylabel("friction / k")
    a1.legend(fontsize=7)
    lo, mid, hi = curves["eps"]
    a2.fill_between(curves["u"], lo, hi, color="C2", alpha=0.25, lw=0)
    a2.plot(curves["u"], mid, color="C2", label="ε")
    a2.set_yscale("log")
    ticks = sorted(set(zip(np.round(curves["cell_u"], 6), [_fmt(v) for v in curves["cell_values"]], strict=True)))
    a2.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=7)
    a2.set_xlabel(f"{curves.get('noise_field') or 'noise'} (least → most noisy)")
    a2.set_ylabel("ε / k")
    a2.legend(fontsize=7)
    fig.suptitle(title or "calibrated map (bands: 95 %)", fontsize=10)
    return fig


def plot_scores(scores: pd.DataFrame, title: str = ""):
    """Held-out regime agreement and Spearman of c/Σd per kind of hold-out, each next to the seed
    ceiling on the same cells. ``scores``: :meth:`~phase_diagrams.calibration.Calibration.scores`."""
    fig, axes = subplots(1, 2, figsize=(8.4, 3.0), layout="constrained")
    x = np.arange(len(scores))
    for ax, (val, ceil, lab) in zip(axes, (("regime_agreement", "ceiling_agreement", "regime agreement"),
                                          ("spearman_nc", "ceiling_spearman_nc", "Spearman of c / Σd")), strict=True):
        ax.bar(x - 0.18, scores[val], width=0.36, color="C0", label="calibrated chain")
        ax.bar(x + 0.18, scores[ceil], width=0.36, color="0.6", label="seed ceiling")
        ax.set_xticks(x, scores["kind"], fontsize=7, rotation=15)
        ax.set_ylim(min(0.0, float(np.nanmin(scores[val]))), 1.0)
        ax.set_ylabel(lab)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
