"""The simulated phase diagram: presets, the three regimes, figures and the CLI."""

import numpy as np
import pytest

from phase_diagrams.__main__ import main
from phase_diagrams.friction import friction_for
from phase_diagrams.plots import plot_heatmap, plot_simulated_grid
from phase_diagrams.simulated import DiagramSpec, simulate_diagram
from springblock import ChainParams, theory


def test_friction_presets():
    assert friction_for("scale-both", 0.0) == (0.1, 0.2) and friction_for("scale-both", 1.0) == (0.0, 0.0)
    assert friction_for("vary-forward", 1.0) == (0.0, 0.1) and friction_for("vary-forward", 0.0) == (0.1, 0.1)
    assert friction_for("vary-asymmetry", 0.0) == (0.1, 0.1) and friction_for("vary-asymmetry", 1.0) == (0.1, 0.2)
    with pytest.raises(ValueError, match="unknown friction preset 'nope'"):
        friction_for("nope", 0.5)
    with pytest.raises(ValueError, match="alpha must lie in"):
        friction_for("scale-both", 1.5)


def test_diagram_shows_three_regimes_where_the_theory_puts_them():
    spec = DiagramSpec(preset="vary-forward", alphas=(0.0, 1.0), eps=(0.3, 0.01),
                       base=ChainParams(n_steps=5000), n_chains=64)
    df = simulate_diagram(spec).set_index(["alpha", "eps"])
    assert df.loc[(0.0, 0.01), "regime"] == "concave"  # ReLU-like friction, weak noise: pulled profile
    assert df.loc[(0.0, 0.3), "regime"] == "linear"  # symmetric friction, strong noise
    assert df.loc[(1.0, 0.3), "regime"] == "convex"  # asymmetric friction, strong noise: ratchet
    # The loads are the elongations SPEC §2.4 predicts. Tolerance 5 SE of a mean elongation over 64
    # chains, SE = s / sqrt(64) with s <= 0.02 the per-chain std of one elongation in these cells
    # (measured 0.016-0.019), so 5 SE = 0.0125.
    tol = 5 * 0.02 / np.sqrt(64)
    p = spec.base
    # symmetric friction, strong noise: equal elongations y / (L + 1)
    np.testing.assert_allclose(df.loc[(0.0, 0.3), "loads"], p.y / (p.n_blocks + 1), atol=tol)
    # mu-> = 0 < mu<-, strong noise: the ratchet's mean-field profile, gradient (mu-> - mu<-)/2 per spring
    ratchet = theory.ratchet_elongations(p.replace(mu_forward=0.0, mu_backward=0.1, eps=0.3))
    np.testing.assert_allclose(df.loc[(1.0, 0.3), "loads"], ratchet[:-1], atol=tol)
    # eps = mu / 10: noise never frees a block at rest with a small net force (it would need a
    # ~7-sigma normal), so the three blocks the pull from rest never reached keep zero loads
    assert np.array_equal(df.loc[(0.0, 0.01), "loads"][:3], [0.0, 0.0, 0.0])
    fig = plot_simulated_grid(df.reset_index())
    assert len(fig.axes) == 5  # 4 cells + colour bar
    assert plot_heatmap(df.reset_index(), col_key="eps").axes


def test_cli_writes_figures(tmp_path, capsys):
    rc = main(["simulate", "--preset", "scale-both", "--out", str(tmp_path), "--chains", "8", "--steps", "500"])
    assert rc == 0
    for name in ("simulated_scale-both_curves.png", "simulated_scale-both_curvature.pdf"):
        assert (tmp_path / name).stat().st_size > 1000
    # the table: 6 alpha x 8 eps cells of the preset, and the printed regime counts are its counts
    import pandas as pd

    table = pd.read_csv(tmp_path / "simulated_diagrams.csv")
    assert len(table) == 48 and set(table["preset"]) == {"scale-both"} and table["n_chains"].eq(8).all()
    counts = table["regime"].value_counts().to_dict()
    assert capsys.readouterr().out.splitlines()[0].split(": ")[1] == ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items()))
    assert main(["simulate", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown friction preset" in capsys.readouterr().err


def test_springblock_cli(capsys):
    from springblock.cli import main as sb_main

    assert sb_main(["simulate", "--chains", "50", "--steps", "2000", "--eps", "0", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["elongations"], [0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4], atol=2e-3)
    assert out["regime"] == "concave"
    assert sb_main(["simulate", "--mu-forward", "-1"]) == 2
