"""docs/your-own-network.md runs end to end: its Python code blocks, executed in order."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "your-own-network.md"


@pytest.mark.mnist
def test_tutorial_runs_end_to_end(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 6
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "tutorial"}
    exec(compile("\n".join(blocks), str(DOC), "exec"), ns)  # noqa: S102 - the tutorial is the test
    hist, lc, fit = ns["hist"], ns["lc"], ns["fit"]
    assert hist.probe_epochs.tolist() == [0, 2, 4, 6, 8, 10]
    assert lc.layers == ["input", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    np.testing.assert_allclose(lc.curve, hist.final_curve, rtol=1e-12)
    # training separates the classes: the last hidden layer's log D falls from the initial probe
    assert hist.trajectory[-1, -1] < hist.trajectory[0, -1] - 0.5
    assert fit.fitted.shape == hist.trajectory.shape and np.isfinite(fit.rms)
    assert (tmp_path / "my_mlp_trajectory.png").stat().st_size > 0 and (tmp_path / "my_mlp_fit.png").exists()
    assert len(ns["Store"]("own_runs.sqlite").runs("my-mlp")) == 1
