"""Training protocol, noise axes, probes during training and batched ensembles (SPEC §3.2–3.3).

Real-data tests use small MNIST subsets from the default cache (``python -m nets fetch mnist``;
skipped without it). The oracle of the batched loop is the plain single-network loop
:func:`nets._reference.train_reference`.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from nets import cli, train, train_ensemble
from nets._reference import train_reference
from nets.config import TrainConfig, coerce_field, config_grid, parse_field
from nets.data import load_dataset
from nets.noise import noisy_batch, stream_seeds


@pytest.fixture(scope="module")
def mnist_small(mnist):
    """512 MNIST training images (10x10) and the first 2000 test images."""
    ds = load_dataset("mnist", n_train=512)
    return dataclasses.replace(ds, x_test=ds.x_test[:2000], y_test=ds.y_test[:2000])


@pytest.fixture(scope="module")
def mnist_tiny(mnist):
    ds = load_dataset("mnist", n_train=128)
    return dataclasses.replace(ds, x_test=ds.x_test[:500], y_test=ds.y_test[:500])


# ------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------
def test_defaults_are_the_original_protocol():
    c = TrainConfig()
    assert (c.dataset, c.image_size, c.n_train, c.model, c.depth, c.width) == ("mnist", 10, 2560, "mlp", 7, 100)
    assert (c.optimizer, c.lr, c.loss, c.batch_size, c.epochs) == ("adam", 1e-3, "ce", None, 100)
    assert c.early_stop_loss == 1e-4 and c.seed == 1
    assert c.probe_on == "train" and c.probe_features == "post" and c.probe_mode == "eval"
    assert TrainConfig(**c.to_dict()) == c


@pytest.mark.parametrize(
    "field,value",
    [("alpha", -0.1), ("alpha", 2), ("dropout", 1.0), ("label_noise", 1.5), ("lr", 0.0),
     ("lr", float("nan")), ("epochs", 0), ("batch_size", 0), ("model", "resnet"),
     ("optimizer", "lbfgs"), ("loss", "hinge"), ("dataset", "imagenet"), ("device", "tpu"),
     ("sgld_temperature", -1.0), ("depth", 2.5), ("probe_every", -1), ("dtype", "float16"),
     # types are exact: no numeric strings, no bools for numbers, no floats for ints
     ("epochs", "10"), ("epochs", 2.0), ("seed", True), ("alpha", "0.1"), ("lr", False),
     ("batch_norm", 1), ("probe_accuracy", "yes"), ("data_root", 3), ("model", None)],
)
def test_bad_config_names_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}={value!r}"):
        TrainConfig(**{field: value})


def test_coerce_and_parse_fields():
    assert coerce_field("lr", 1) == 1.0 and isinstance(coerce_field("lr", 1), float)
    assert coerce_field("batch_size", "none") is None and coerce_field("data_root", None) is None
    assert coerce_field("model", "cnn") == "cnn" and coerce_field("batch_norm", False) is False
    for name, value, got in (("epochs", "10", "str"), ("epochs", 1.0, "float"), ("lr", True, "bool"),
                             ("batch_norm", 0, "int"), ("model", 3, "int"), ("n_train", "2560", "str")):
        with pytest.raises(ValueError, match=rf"^train\.{name}: expected \w+, got {got} "):
            coerce_field(name, value, where=f"train.{name}")
    with pytest.raises(ValueError, match="unknown TrainConfig field 'bogus'"):
        coerce_field("bogus", 1)
    assert parse_field("batch_size", "none") is None and parse_field("lr", "3e-3") == 3e-3
    assert parse_field("batch_norm", "off") is False and parse_field("epochs", " 12 ") == 12
    for name, text in (("epochs", "1.5"), ("batch_norm", "maybe"), ("alpha", "x")):
        with pytest.raises(ValueError, match=rf"--{name.replace('_', '-')}: cannot read"):
            parse_field(name, text)
    c = TrainConfig.from_dict({"alpha": 1, "batch_size": "none", "epochs": 3})
    assert c == TrainConfig(alpha=1.0, epochs=3) and isinstance(c.alpha, float)
    with pytest.raises(ValueError, match=r"rec\.epochs: expected int, got str"):
        TrainConfig.from_dict({"epochs": "3"}, where="rec")


def test_batch_size_checks():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)  # batch norm needs 2 samples
    with pytest.raises(ValueError, match="n_train=2560"):
        TrainConfig(batch_size=5000)


def test_config_grid():
    cfgs = config_grid(TrainConfig(epochs=3), alpha=[0.0, 1.0], label_noise=[0.0, 0.3, 0.6])
    assert len(cfgs) == 6 and all(c.epochs == 3 for c in cfgs)
    assert [(c.alpha, c.label_noise) for c in cfgs][:3] == [(0.0, 0.0), (0.0, 0.3), (0.0, 0.6)]
    with pytest.raises(ValueError, match="'bogus'"):
        config_grid(bogus=[1])


def test_stream_seeds_distinct_and_stable():
    a = stream_seeds(1)
    assert a == stream_seeds(1) and len(set(a)) == 3 and a != stream_seeds(2)


# ------------------------------------------------------------------------------------------
# noise
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p,b", [(0.3, 100), (0.6, 2560), (0.29, 100), (0.05, 10)])
def test_label_noise_replaces_exactly_floor_pB_labels(p, b):
    k = 10
    x = torch.rand(b, 1, 10, 10)
    y = torch.arange(b) % k
    xn, yn = noisy_batch(x, y, p, k, torch.Generator().manual_seed(3))
    n_replaced = math.floor(p * b + 1e-9)
    # replay the documented draws: randperm(B)[:k] positions, randint(K) new labels, randn
    g = torch.Generator().manual_seed(3)
    expected = y.clone()
    idx = torch.tensor([], dtype=torch.long)
    if n_replaced:  # nothing is drawn when floor(p B) = 0
        idx = torch.randperm(b, generator=g)[:n_replaced]
        expected[idx] = torch.randint(k, (n_replaced,), generator=g)
    assert torch.equal(yn, expected)
    changed = (yn != y).nonzero().flatten()
    assert set(changed.tolist()) <= set(idx.tolist())
    torch.testing.assert_close(xn - x, p * x.std() * torch.randn(x.shape, generator=g),
                               rtol=0, atol=1e-6)
    assert torch.equal(y, torch.arange(b) % k)  # inputs untouched


def test_label_noise_rate_statistics():
    # the fraction of changed labels is p (K-1)/K; over 200 batches of 500 the standard error is
    # sqrt(q (1-q) / 1e5) ≈ 1.5e-3 -> allow 5 SE
    p, k, b = 0.6, 10, 500
    g = torch.Generator().manual_seed(0)
    y = torch.arange(b) % k
    changed = 0
    for _ in range(200):
        changed += int((noisy_batch(torch.zeros(b, 4), y, p, k, g)[1] != y).sum())
    q = p * (k - 1) / k
    assert changed / (200 * b) == pytest.approx(q, abs=5 * math.sqrt(q * (1 - q) / (200 * b)))


def test_input_noise_std():
    # noise std = p * std(batch); relative SE of a std estimate from n = 256000 draws ≈ 1.4e-3
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2560, 1, 10, 10, dtype=torch.float64) * 3
    xn, _ = noisy_batch(x, torch.zeros(2560, dtype=torch.long), 0.4, 10, g)
    assert float((xn - x).std()) == pytest.approx(0.4 * float(x.std()), rel=6e-3)
    assert noisy_batch(x, torch.zeros(2560, dtype=torch.long), 0.0, 10, g)[0] is x


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def test_mlp_trains_on_real_mnist(mnist_small):
    cfg = TrainConfig(n_train=512, epochs=30, batch_size=128, probe_every=10, probe_accuracy=True)
    h = train(cfg, dataset=mnist_small)
    assert h.status == "completed" and h.epochs_run == 30
    assert h.test_accuracy > 0.80  # 512 images, 10x10, 120 Adam steps
    assert h.train_loss[-1] < 0.5 * h.train_loss[0]
    assert h.probe_epochs.tolist() == [0, 10, 20, 30]
    assert h.trajectory.shape == (4, 8) and np.all(np.isfinite(h.trajectory))
    # learning separates the classes in the last hidden layer
    assert h.trajectory[-1, -1] < h.trajectory[0, -1] - 1.0
    assert h.trajectory[-1, -1] < h.trajectory[-1, 0]
    assert h.probe_accuracy[-1] == h.test_accuracy and h.probe_accuracy[0] < 0.5
    # the record carries this run's numbers, recomputed here from the trajectory: loads
    # d_l = log D_{l-1} - log D_l, curvature d_1 - d_L; it survives JSON unchanged
    rec = h.to_record()
    assert json.loads(json.dumps(rec)) == rec
    d = -np.diff(h.trajectory[-1])
    assert rec["curve"] == h.trajectory[-1].tolist() == rec["trajectory"][-1]
    np.testing.assert_allclose(rec["loads"], d, rtol=1e-12)
    assert rec["curvature"] == pytest.approx(d[0] - d[-1], rel=1e-12)
    assert rec["test_accuracy"] == h.test_accuracy and rec["train_loss"] == h.train_loss.tolist()
    assert rec["alpha"] == 0.0 and rec["status"] == "completed" and rec["probe_epochs"] == [0, 10, 20, 30]


def test_cnn_trains_on_real_mnist(mnist_small):
    cfg = TrainConfig(model="cnn", width=20, depth=3, n_train=512, epochs=15, batch_size=128,
                      probe_every=5, lr=3e-3)
    h = train(cfg, dataset=mnist_small)
    assert h.status == "completed" and h.trajectory.shape == (4, 4)
    assert h.test_accuracy > 0.7
    assert h.trajectory[-1, -1] < h.trajectory[0, -1]


def test_training_is_deterministic(mnist_tiny):
    cfg = TrainConfig(n_train=128, epochs=3, batch_size=32, dropout=0.2, label_noise=0.3,
                      sgld_temperature=1e-7, probe_every=0)
    a, b = train(cfg, dataset=mnist_tiny), train(cfg, dataset=mnist_tiny)
    c = train(cfg.replace(seed=2), dataset=mnist_tiny)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not torch.equal(a.state_dict["head.weight"], c.state_dict["head.weight"])
    # the caller's global RNG is untouched
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    train(cfg, dataset=mnist_tiny)
    assert torch.equal(torch.rand(1), before)


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_probe_does_not_change_training(mnist_tiny, mode):
    base = TrainConfig(n_train=128, epochs=4, batch_size=32, dropout=0.2, label_noise=0.3,
                       sgld_temperature=1e-7, probe_mode=mode)
    with_probes = train(base.replace(probe_every=1, probe_accuracy=True), dataset=mnist_tiny)
    without = train(base.replace(probe_every=0), dataset=mnist_tiny)
    assert with_probes.probe_epochs.tolist() == [0, 1, 2, 3, 4] and without.probe_epochs.tolist() == [4]
    for k, v in with_probes.state_dict.items():
        assert torch.equal(v, without.state_dict[k]), k  # bit-identical, incl. BN running stats
    assert np.array_equal(with_probes.train_loss, without.train_loss)
    assert np.array_equal(with_probes.final_curve, without.final_curve)


def test_probe_options(mnist_tiny):
    base = TrainConfig(n_train=128, epochs=2, probe_every=0)
    post = train(base, dataset=mnist_tiny)
    pre = train(base.replace(probe_features="pre"), dataset=mnist_tiny)
    test = train(base.replace(probe_on="test"), dataset=mnist_tiny)
    assert post.final_curve[0] == pre.final_curve[0]  # the input layer is the same
    assert not np.allclose(post.final_curve[1:], pre.final_curve[1:])
    assert not np.allclose(post.final_curve, test.final_curve)
    assert np.array_equal(post.state_dict["head.weight"], pre.state_dict["head.weight"])


def test_divergence_is_a_status(mnist_tiny):
    cfg = TrainConfig(n_train=128, epochs=30, optimizer="sgd", lr=50.0, loss="mse", probe_every=5)
    h = train(cfg, dataset=mnist_tiny)
    assert h.status == "diverged" and h.epochs_run < 30
    assert np.isnan(h.train_loss[-1]) and h.probe_epochs[-1] == h.epochs_run
    assert np.isfinite(h.train_loss[:-1]).all()
    # the step whose loss was not finite is not applied: the kept parameters are those before
    # it, huge but finite (an applied inf/NaN gradient would make them NaN; the BatchNorm
    # running statistics may overflow, they are not parameters)
    params = {k: v for k, v in h.state_dict.items() if "running" not in k and "batches" not in k}
    assert all(bool(torch.isfinite(v).all()) for v in params.values())


def test_early_stop():
    ds = load_dataset("gaussian", n_train=200, image_size=10)
    cfg = TrainConfig(dataset="gaussian", n_train=200, epochs=200, lr=1e-2, early_stop_loss=1e-3,
                      probe_every=50)
    h = train(cfg, dataset=ds)
    assert h.status == "early_stopped" and h.epochs_run < 200
    assert h.train_loss[-1] < 1e-3 <= h.train_loss[-2]
    assert h.probe_epochs[-1] == h.epochs_run


# ------------------------------------------------------------------------------------------
# batched ensembles
# ------------------------------------------------------------------------------------------
def _member_configs(base):
    return [
        base.replace(alpha=0.0, seed=1, label_noise=0.3, dropout=0.1),
        base.replace(alpha=0.4, seed=2, dropout=0.2, lr=3e-3),
        base.replace(alpha=1.0, seed=3, label_noise=0.6, sgld_temperature=1e-6),
        base.replace(alpha=0.2, seed=4, early_stop_loss=10.0),  # stops after epoch 1
    ]


def _assert_same(single, member, tol):
    assert single.status == member.status and single.epochs_run == member.epochs_run
    assert np.array_equal(single.probe_epochs, member.probe_epochs)
    np.testing.assert_allclose(member.train_loss, single.train_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(member.trajectory, single.trajectory, rtol=tol, atol=tol)
    assert member.test_accuracy == pytest.approx(single.test_accuracy, abs=tol)
    for k, v in single.state_dict.items():
        np.testing.assert_allclose(member.state_dict[k].double(), v.double(), rtol=tol, atol=tol,
                                   err_msg=k)


@pytest.mark.parametrize("model,options", [
    ("mlp", {}),
    ("cnn", {}),
    ("mlp", dict(probe_mode="batch", probe_features="pre", probe_on="test", optimizer="sgd", lr=0.05)),
])
def test_batched_loop_equals_the_reference_float64(mnist_tiny, model, options):
    # float64 makes the comparison sharp: Adam divides by sqrt(v) + 1e-8, which turns float32
    # rounding in gradients that vanish in exact arithmetic (the bias before a BatchNorm) into
    # lr-sized steps; in float64 that rounding is 1e-9 times smaller. Members cover dropout,
    # label noise, lr, SGLD, early stop, shuffled minibatches and probe accuracy.
    width, depth = (16, 3) if model == "mlp" else (6, 2)
    base = TrainConfig(model=model, width=width, depth=depth, n_train=128, epochs=4, batch_size=32,
                       probe_every=2, dtype="float64", probe_accuracy=True, **options)
    cfgs = _member_configs(base)
    ens = train_ensemble(cfgs, dataset=mnist_tiny)
    assert [h.ensemble_size for h in ens] == [4] * 4
    assert ens[3].status == "early_stopped" and ens[3].epochs_run == 1
    for cfg, member in zip(cfgs, ens, strict=True):
        ref = train_reference(cfg, dataset=mnist_tiny)
        _assert_same(ref, member, 1e-8)
        if cfg is cfgs[0]:
            one = train(cfg, dataset=mnist_tiny)
            assert one.ensemble_size == 1
            _assert_same(ref, one, 1e-8)


@pytest.mark.parametrize("options", [dict(batch_norm=False), dict(probe_mode="batch")])
def test_batched_loop_equals_the_reference_float32(mnist_tiny, options):
    # float32: the stacked and the plain loop round differently (~1e-7 relative per operation).
    # With BatchNorm, Adam amplifies that rounding in the bias before each BatchNorm (its exact
    # gradient is 0, so g/(sqrt(v) + eps) ~ ±1 and the bias moves by ~lr per step either way);
    # the batch statistics cancel that bias, the running ones lag behind it, so eval-mode
    # features (and log D) differ by O(lr · steps / σ) ~ 0.04 after 6 steps — not rounding.
    # Compared here where rounding is all there is: without BatchNorm, and with batch-statistics
    # probes. Measured over 6 Adam steps: losses < 1e-6 relative, log D < 2e-5 absolute; the
    # bounds are ~10x that. The test accuracy (eval mode) may differ by a few of 500 images
    # with BatchNorm (measured 3), by none without.
    base = TrainConfig(n_train=128, epochs=3, batch_size=64, probe_every=1, **options)
    cfgs = _member_configs(base)[:3]
    ens = train_ensemble(cfgs, dataset=mnist_tiny)
    for cfg, member in zip(cfgs, ens, strict=True):
        ref = train_reference(cfg, dataset=mnist_tiny)
        np.testing.assert_allclose(member.train_loss, ref.train_loss, rtol=1e-5)
        np.testing.assert_allclose(member.trajectory, ref.trajectory, rtol=0, atol=2e-4)
        tol = 0.0 if not cfg.batch_norm else 0.02
        assert member.test_accuracy == pytest.approx(ref.test_accuracy, abs=tol + 1e-12)


def test_ensemble_with_diverging_member(mnist_tiny):
    base = TrainConfig(n_train=128, epochs=6, optimizer="sgd", loss="mse", probe_every=2,
                       dtype="float64")
    cfgs = [base.replace(lr=0.05, seed=1), base.replace(lr=50.0, seed=2), base.replace(lr=0.1, alpha=1.0)]
    ens = train_ensemble(cfgs, dataset=mnist_tiny)
    assert [h.status for h in ens] == ["completed", "diverged", "completed"]
    for cfg, member in zip(cfgs, ens, strict=True):
        ref = train_reference(cfg, dataset=mnist_tiny)
        assert ref.status == member.status and ref.epochs_run == member.epochs_run
        np.testing.assert_array_equal(np.isnan(member.train_loss), np.isnan(ref.train_loss))
        if member.status == "diverged":
            # weights ~1e115 by then: only relative rounding of the losses is comparable
            np.testing.assert_allclose(member.train_loss, ref.train_loss, rtol=1e-8)
        else:  # the others are unaffected by their diverging neighbour
            _assert_same(ref, member, 1e-8)


def test_train_ensemble_groups_and_orders(mnist_tiny):
    base = TrainConfig(n_train=128, epochs=1, probe_every=0, dtype="float64")
    cfgs = [base.replace(width=8, seed=1), base.replace(width=12, seed=2), base.replace(width=8, seed=3)]
    hs = train_ensemble(cfgs, dataset=mnist_tiny, max_members=1)
    assert [h.config for h in hs] == cfgs and [h.ensemble_size for h in hs] == [1, 1, 1]
    hs2 = train_ensemble(cfgs, dataset=mnist_tiny)
    assert [h.ensemble_size for h in hs2] == [2, 1, 2]
    assert hs2[0].state_dict["head.weight"].shape == (10, 8)
    # configs differing only in the varying fields train as one ensemble
    varied = [base, base.replace(alpha=0.5), base.replace(dropout=0.1), base.replace(label_noise=0.2),
              base.replace(lr=1e-2), base.replace(seed=7), base.replace(sgld_temperature=1e-6),
              base.replace(early_stop_loss=0.5)]
    assert [h.ensemble_size for h in train_ensemble(varied, dataset=mnist_tiny)] == [8] * 8
    with pytest.raises(TypeError, match="TrainConfig"):
        train_ensemble([{"alpha": 0}])


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def test_cli_train_json(capsys):
    rc = cli.main(["train", "--dataset", "gaussian", "--n-train", "100", "--epochs", "2",
                   "--width", "8", "--depth", "2", "--alpha", "0,1", "--noise", "label=0.2",
                   "--probe-every", "1", "--json"])
    assert rc == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["alpha"] for r in recs] == [0.0, 1.0] and all(r["label_noise"] == 0.2 for r in recs)
    assert all(len(r["curve"]) == 3 and r["ensemble_size"] == 2 for r in recs)


def test_cli_errors(capsys, tmp_path):
    assert cli.main(["train", "--alpha", "2"]) == 2
    assert "TrainConfig.alpha=2.0" in capsys.readouterr().err
    assert cli.main(["train", "--noise", "temperature=1"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert cli.main(["train", "--cache", str(tmp_path), "--epochs", "1"]) == 2
    assert "python -m nets fetch mnist" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_training_matches_cpu(mnist_tiny):
    cfg = TrainConfig(n_train=128, epochs=3, probe_every=1, dtype="float64")
    cpu = train(cfg, dataset=mnist_tiny)
    gpu = train(cfg.replace(device="cuda"), dataset=mnist_tiny)
    np.testing.assert_allclose(gpu.trajectory, cpu.trajectory, atol=1e-6)
    ens = train_ensemble([cfg.replace(device="cuda", seed=s) for s in (1, 2)], dataset=mnist_tiny)
    np.testing.assert_allclose(ens[0].trajectory, cpu.trajectory, atol=1e-6)


@pytest.mark.slow
@pytest.mark.mnist
def test_original_protocol_reproduces_the_paper_pattern():
    # SPEC §3.3 protocol (2560 MNIST images at 10x10, 7 x 100, Adam 1e-3, full batch, 100
    # epochs), ~35 s on one CPU core: ReLU without noise learns in the deep layers (concave),
    # the linear network with strong label noise in the shallow ones (convex).
    cfgs = config_grid(TrainConfig(probe_every=10), alpha=[0.0, 1.0], label_noise=[0.0, 0.6])
    hs = {(h.config.alpha, h.config.label_noise): h for h in train_ensemble(cfgs)}
    relu_clean, linear_noisy = hs[(0.0, 0.0)], hs[(1.0, 0.6)]
    assert relu_clean.summary()["curvature"] < 0 and relu_clean.summary()["regime"] == "concave"
    assert linear_noisy.summary()["curvature"] > 0 and linear_noisy.summary()["regime"] == "convex"
    assert all(h.status == "completed" for h in hs.values())
    assert relu_clean.test_accuracy > 0.9 and linear_noisy.test_accuracy > 0.8
