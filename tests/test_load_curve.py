"""nets.load_curve / LoadCurveRecorder on models the package did not build (SPEC §1)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nets import LoadCurveRecorder, load_curve, log_separation
from nets.models import MLP
from nets.probes import separation_stats


# ----------------------------------------------------------------------------------------------
# models a user would write
class Block(nn.Module):
    """Conv → BN → ReLU → MaxPool, nested in an nn.Sequential."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.act(self.bn(self.conv(x))))


class NestedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(Block(1, 4), Block(4, 6))
        self.head = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class FunctionalBlock(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x):
        return F.relu(self.lin(x))


class FunctionalMLP(nn.Module):
    """No activation module anywhere: F.relu inside the blocks."""

    def __init__(self):
        super().__init__()
        self.b1, self.b2, self.b3 = FunctionalBlock(12, 16), FunctionalBlock(16, 16), FunctionalBlock(16, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.b3(self.b2(self.b1(x))))


def _data(n, shape, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, *shape, generator=g) + 0.7 * y.view(-1, *[1] * len(shape)).float()
    return x, y


def _hand_hooked(model, x, modules):
    """Reference: forward hooks written by hand, features flattened, eval mode."""
    feats = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: feats.__setitem__(n, o.flatten(1).clone()))
               for n, m in modules]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [x.flatten(1)] + [feats[n] for n, _ in modules]


def _check_equal(lc, model, x, y, modules):
    ref = [log_separation(f, y.numpy()) for f in _hand_hooked(model, x, modules)]
    # same float64 formula on the same features: agreement to rounding (1e-12 relative)
    np.testing.assert_allclose(lc.curve, ref, rtol=1e-12)
    assert lc.layers == ["input"] + [n for n, _ in modules]


# ----------------------------------------------------------------------------------------------
def test_mlp_equals_hand_hooked_features():
    torch.manual_seed(1)
    model = MLP(in_dim=20, width=16, depth=3, n_classes=3)
    x, y = _data(300, (20,))
    for route in ("stream", "memory"):
        lc = load_curve(model, (x, y), route=route, batch_size=64)
        _check_equal(lc, model, x, y, [(f"blocks.{i}.act", model.blocks[i].act) for i in range(3)])
        assert lc.n_features == [20, 16, 16, 16]
    # the package's own features: index 1.. are the same post-activation outputs
    model.eval()
    with torch.no_grad():
        own = model.forward_features(x)[1]
    np.testing.assert_allclose(lc.curve[1:], [log_separation(f, y.numpy()) for f in own[1:]], rtol=1e-12)


def test_nested_cnn_default_layers_and_loader():
    torch.manual_seed(2)
    model = NestedCNN()
    x, y = _data(240, (1, 8, 8))
    loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0))
    lc = load_curve(model, loader)  # labels from the loader; default = the activation modules
    acts = [(f"features.{i}.act", model.features[i].act) for i in range(2)]
    _check_equal(lc, model, x, y, acts)
    by_type = load_curve(model, (x, y), layers=Block)
    _check_equal(by_type, model, x, y, [("features.0", model.features[0]), ("features.1", model.features[1])])
    assert by_type.n_features == [64, 4 * 4 * 4, 6 * 2 * 2]


def test_functional_activations_hook_the_blocks():
    torch.manual_seed(3)
    model = FunctionalMLP()
    x, y = _data(200, (12,))
    lc = load_curve(model, (x.numpy(), y.numpy()))  # arrays; no activation module → top-level blocks
    # the head's output is the model's output (the logits): left out
    _check_equal(lc, model, x, y, [("b1", model.b1), ("b2", model.b2), ("b3", model.b3)])
    picked = load_curve(model, (x, y), layers=lambda name, m: isinstance(m, nn.Linear) and name != "out",
                        transform=torch.relu)
    np.testing.assert_allclose(picked.curve, lc.curve, rtol=1e-12)


def test_reused_activation_module_gives_one_layer_per_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.out(self.act(self.b(self.act(self.a(x)))))

    torch.manual_seed(4)
    model = Shared()
    x, y = _data(100, (6,), k=2)
    lc = load_curve(model, (x, y))
    assert lc.layers == ["input", "act[0]", "act[1]"]
    with torch.no_grad():
        h1 = torch.tanh(model.a(x))
        h2 = torch.tanh(model.b(h1))
    np.testing.assert_allclose(lc.curve[1:], [log_separation(h, y.numpy()) for h in (h1, h2)], rtol=1e-12)


def test_streaming_equals_in_memory_route():
    torch.manual_seed(5)
    model = NestedCNN().double()
    x, y = _data(500, (1, 8, 8), seed=1)
    y = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(3))  # unbalanced classes
    loader = DataLoader(TensorDataset(x, y), batch_size=37, shuffle=True, generator=torch.Generator().manual_seed(1))
    s = load_curve(model, loader, route="stream")
    m = load_curve(model, (x, y), route="memory")
    assert (s.route, m.route) == ("stream", "memory")
    # exact two-pass algebra vs one float64 pass: agreement to rounding, stated as 1e-10 relative
    np.testing.assert_allclose(s.curve, m.curve, rtol=1e-10)
    np.testing.assert_allclose(s.trace_ratio_curve, m.trace_ratio_curve, rtol=1e-10)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    torch.set_num_threads(2)

    def vmhwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    torch.manual_seed(0)
    n = 20000
    model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, 10))
    y = torch.arange(n) % 10
    x = torch.randn(n, 1, 16, 16) + 0.1 * y.view(-1, 1, 1, 1)
    from nets import load_curve
    with torch.no_grad():   # warm up the conv kernels (their workspace is not the probe's memory)
        model(x[:256])
    base = vmhwm()
    lc = load_curve(model, (x, y), route=sys.argv[1], batch_size=256)
    print(json.dumps(dict(peak=vmhwm() - base, base=base, curve=lc.curve.tolist(), p=lc.n_features)))
""")


@pytest.mark.slow  # ~45 s on 2 CPU cores: 2 passes of a 64-channel conv over 20 000 images
def test_streaming_conv_layer_memory_is_bounded(tmp_path):
    """A 64 x 16 x 16 conv layer over 20 000 samples: the dense N x p float64 matrix would be
    20000 * 16384 * 8 B = 2.6 GB; the streaming route must stay < 1 GB above the baseline (the
    process's high-water mark VmHWM, which counts torch allocations)."""
    script = tmp_path / "mem.py"
    script.write_text(_MEMORY_SCRIPT)
    out = subprocess.run([sys.executable, str(script), "stream"], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["p"] == [256, 64 * 16 * 16]
    assert np.all(np.isfinite(res["curve"]))
    print(f"peak above baseline: {res['peak'] / 2**20:.0f} MiB")
    assert res["peak"] < 1 << 30


def test_hooks_removed_and_modes_restored_after_error():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act, self.drop, self.out = nn.Linear(4, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom in batch 3")
            return self.out(self.drop(self.act(self.lin(x))))

    model = Fails()
    model.train()
    model.drop.eval()  # mixed modes must come back as they were
    x, y = _data(100, (4,), k=2)
    with pytest.raises(RuntimeError, match="boom"):
        load_curve(model, (x, y), batch_size=20, route="stream")
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training and model.lin.training and not model.drop.training
    model.calls = -100
    load_curve(model, (x, y), batch_size=20)
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training and not model.drop.training


def test_bad_input_is_named():
    torch.manual_seed(0)
    model = FunctionalMLP()
    x, y = _data(60, (12,))
    with pytest.raises(ValueError, match="labels have length 59 but the data has 60"):
        load_curve(model, x, labels=y[:59])
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_curve(model, (x, torch.zeros(60, dtype=torch.long)), route="stream")
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_curve(model, (x, torch.zeros(60, dtype=torch.long)), route="memory")
    with pytest.raises(ValueError, match="no module named 'b9'"):
        load_curve(model, (x, y), layers=["b1", "b9"])

    class Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = nn.Linear(12, 3), nn.ReLU()

        def forward(self, x):
            return self.act(self.lin(x)), x

    with pytest.raises(TypeError, match="returned a tuple"):
        load_curve(Tuple(), (x, y))
    loader = DataLoader(TensorDataset(x), batch_size=10)
    with pytest.raises(ValueError, match="inputs only"):
        load_curve(model, loader)
    with pytest.raises(ValueError, match="labels have length 50 but the data loader yields more samples"):
        load_curve(model, loader, labels=torch.arange(50) % 3)


def test_recorder_in_own_loop_leaves_training_unchanged():
    x, y = _data(256, (12,))

    def run(record: bool):
        torch.manual_seed(7)
        model = FunctionalMLP()
        model.drop = nn.Dropout(0.2)  # training draws random numbers: the probe must not
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = LoadCurveRecorder(model, (x, y), every=2, metadata={"optimizer": "sgd"}) if record else None
        if rec:
            rec.step(0)
        for epoch in range(1, 6):
            model.train()
            loss = F.cross_entropy(model(model.drop(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rec:
                rec.step(epoch, loss=loss.item())
        return model, (rec.finish() if rec else None)

    plain, _ = run(False)
    model, hist = run(True)
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert hist.probe_epochs.tolist() == [0, 2, 4, 5]
    assert hist.trajectory.shape == (4, 4)
    np.testing.assert_allclose(hist.final_curve, load_curve(model, (x, y)).curve, rtol=1e-12)
    assert len(hist.train_loss) == 5
    rec = hist.to_record()
    assert rec["optimizer"] == "sgd" and rec["layers"] == ["input", "b1", "b2", "b3"]
    assert rec["model_class"] == "FunctionalMLP" and rec["probe_epochs"] == [0, 2, 4, 5]


def test_recorder_as_context_manager():
    torch.manual_seed(8)
    model = MLP(in_dim=12, width=10, depth=2, n_classes=3)
    x, y = _data(120, (12,))
    with LoadCurveRecorder(model, (x, y), every=0) as rec:
        for epoch in range(1, 4):
            rec.step(epoch)
    h = rec.history
    assert h.probe_epochs.tolist() == [0, 3]
    # nothing trained: both probes see the same model
    np.testing.assert_allclose(h.trajectory[0], h.trajectory[1], rtol=0, atol=0)


def test_nonfinite_features_named_or_nan():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    x, y = _data(40, (4,), k=2)
    with pytest.raises(ValueError, match="layer\\(s\\) 1"):
        load_curve(model, (x, y))
    lc = load_curve(model, (x, y), on_nonfinite="nan", route="stream")
    assert np.isfinite(lc.curve[0]) and np.isnan(lc.curve[1])
    assert json.loads(json.dumps(lc.to_dict(), allow_nan=False))["curve"][1] is None


def test_streaming_accumulator_matches_separation_stats():
    from nets.probes import StreamingSeparation

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (333,), generator=g)
    h = torch.randn(333, 7, generator=g, dtype=torch.float64) * 2 + 5 * torch.nn.functional.one_hot(y, 7)
    acc = StreamingSeparation()
    for a in range(0, 333, 50):
        acc.add_means(h[a:a + 50], y[a:a + 50])
    perm = torch.randperm(333, generator=g)
    for a in range(0, 333, 71):
        acc.add_residuals(h[perm[a:a + 71]], y[perm[a:a + 71]])
    np.testing.assert_allclose(acc.result(), separation_stats(h, y.numpy()), rtol=1e-12)
    half = StreamingSeparation()
    half.add_means(h, y)
    half.add_residuals(h[:100], y[:100])
    with pytest.raises(ValueError, match="same samples"):
        half.result()


# ----------------------------------------------------------------------------------------------
# outside runs in the store, and the command line
def _own_run(alpha, noise, seed, x, y, epochs=4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.LeakyReLU(alpha), nn.Linear(16, 16), nn.LeakyReLU(alpha),
                          nn.Linear(16, 16), nn.LeakyReLU(alpha), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    with LoadCurveRecorder(model, (x, y), every=2) as rec:
        for epoch in range(1, epochs + 1):
            flip = torch.rand(len(y), generator=g) < noise
            yt = torch.where(flip, torch.randint(0, 3, (len(y),), generator=g), y)
            loss = F.cross_entropy(model(x), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(epoch, loss=loss.item())
    return rec.finish(test_accuracy=0.5)


def test_outside_runs_in_the_store(tmp_path):
    from phase_diagrams import jobs
    from phase_diagrams.comparison import measured_cells
    from phase_diagrams.fitting import FitOptions, fit_curve
    from phase_diagrams.store import Store

    x, y = _data(150, (12,))
    cells = [(a, p, s) for a in (0.0, 1.0) for p in (0.0, 0.5) for s in (1, 2)]
    hists = [_own_run(a, p, s, x, y) for a, p, s in cells]
    path = tmp_path / "runs.sqlite"
    spec = jobs.add_runs(path, "own-mlp", hists, cells, metadata={"model": "own LeakyReLU MLP", "data": "mixture"},
                         simulator=dict(n_chains=16, n_steps=400, record_every=40))
    assert spec.shape == (2, 2) and spec.train.depth == 3 and spec.seeds == (1, 2)
    store = Store(path)
    runs = store.runs("own-mlp")
    assert len(runs) == 8 and set(runs["status"]) == {"done"}
    assert (runs["source"] == "outside").all() and runs["subset"].isna().all()  # no invented training config
    first = runs[(runs["alpha"] == 0.0) & (runs["label_noise"] == 0.0) & (runs["seed"] == 1)].iloc[0]
    np.testing.assert_allclose(first["curve"], hists[0].final_curve, rtol=1e-15)
    assert first["probe_epochs"] == [0, 2, 4] and first["model"] == "own LeakyReLU MLP"
    table = measured_cells(runs, spec)
    np.testing.assert_allclose(table.loc[0, "curve"], np.mean([h.final_curve for h in hists[:2]], axis=0),
                               rtol=1e-12)
    written = jobs.plot_all(store, "own-mlp", tmp_path / "fig")
    assert any(p.name == "own-mlp_side_by_side_scale-both.png" for p in written)
    per_cell, summary = jobs.compare_store(path, "own-mlp")
    assert len(per_cell) == 4 * len(spec.simulator.presets)
    fast = FitOptions(n_chains=16, search_chains=8, n_steps=400, grid=3, starts=1, maxfev=20, uncertainty="none")
    fits = jobs.fit_store(store, "own-mlp", opts=fast, cells=[(0, 0)], progress=False)
    assert len(fits) == 1 and np.isfinite(fits["rms"].iloc[0])
    res = fit_curve(hists[0].trajectory, probe_epochs=hists[0].probe_epochs, opts=fast)
    assert res.fitted.shape == hists[0].trajectory.shape
    out = jobs.export(path, tmp_path / "runs.json", sweep="own-mlp")
    assert len(jobs.read_export(out)) == 8
    # more runs later extend the axes; a stored (cell, seed) keeps its first result
    extra = [(0.5, 0.5, 1)]
    spec2 = store.add_runs("own-mlp", [_own_run(0.5, 0.5, 1, x, y)], extra)
    assert spec2.rows.values == (0.0, 0.5, 1.0) and len(store.runs("own-mlp")) == 9
    again = store.runs("own-mlp")
    row = again[(again["alpha"] == 1.0) & (again["label_noise"] == 0.5) & (again["seed"] == 2)].iloc[0]
    assert row["row"] == 2 and row["col"] == 1
    with pytest.raises(ValueError, match="2 histories but 1 cells"):
        store.add_runs("x", hists[:2], cells[:1])


def test_cli_probe_json(tmp_path, capsys):
    from nets.cli import main

    (tmp_path / "own_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    """))
    x, y = _data(90, (12,))
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    model = tmp_path / "own_models.py"
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    assert main(["probe", "--model", f"{model}:make", "--weights", str(tmp_path / "w.pt"), "--npz",
                 str(tmp_path / "d.npz"), "--json", "--layers", "1,3"]) == 0
    rec = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert rec["layers"] == ["input", "1", "3"]
    np.testing.assert_allclose(rec["curve"], load_curve(ref, (x, y)).curve, rtol=1e-12)
    assert set(rec) >= {"curve", "trace_ratio_curve", "layers", "summary"}
    assert main(["probe", "--model", f"{model}:missing", "--npz", str(tmp_path / "d.npz")]) == 2
    assert "has no attribute 'missing'" in capsys.readouterr().err
