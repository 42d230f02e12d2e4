"""Leaky ResNet (SPEC §3.1, §5.2): forward, meshes, the adaptive rule, training, the teacher data,
the mesh chain of the spring-block counterpart."""


import numpy as np
import pytest
import torch

from nets import train, train_ensemble
from nets._reference import train_reference
from nets.config import EXTENSION_FIELDS, TrainConfig
from nets.data import load_dataset, teacher_data, teacher_function
from nets.mesh import IRREGULAR_RATIO, adaptive_steps, check_mesh, step_sizes
from nets.resnet import EnsembleLeakyResNet, LeakyResNet, relative_speeds
from springblock import theory
from springblock.params import mesh_chain


def test_forward_equals_a_hand_written_two_layer_loop():
    torch.manual_seed(0)
    m = LeakyResNet(in_dim=5, width=4, depth=2, out_dim=3, ltilde=2.4, rho=[0.25, 0.75]).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    w_in, w, w_out = m.w_in.detach(), m.weights.detach(), m.w_out.detach()
    h0 = x @ w_in.T
    relu1 = torch.cat([torch.clamp(h0, min=0), torch.ones(7, 1, dtype=torch.float64)], 1)
    h1 = (1 - 0.25 * 2.4) * h0 + 0.25 * relu1 @ w[0].T
    relu2 = torch.cat([torch.clamp(h1, min=0), torch.ones(7, 1, dtype=torch.float64)], 1)
    h2 = (1 - 0.75 * 2.4) * h1 + 0.75 * relu2 @ w[1].T
    out, feats = m.forward_features(x)
    assert torch.allclose(out, h2 @ w_out.T, rtol=1e-14, atol=1e-14)
    for a, b in zip(feats, (h0, h1, h2), strict=True):
        assert torch.allclose(a, b, rtol=1e-14, atol=1e-14)
    ens = EnsembleLeakyResNet.from_members([m, m])
    out_e = ens(x.unsqueeze(0).expand(2, 7, 5))
    assert torch.allclose(out_e[1], out, rtol=1e-14, atol=1e-14)
    # the penalty (λ/(2L̃)) Σ ρ_ℓ ‖W_ℓ‖_F², bias column included
    m.weight_decay = 0.01
    expected = 0.01 / (2 * 2.4) * (0.25 * (w[0] ** 2).sum() + 0.75 * (w[1] ** 2).sum())
    assert float(m.regularizer().detach()) == pytest.approx(float(expected), rel=1e-12)


def test_ltilde_zero_is_a_resnet_and_rho_ltilde_one_a_fully_connected_layer():
    torch.manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64)
    m = LeakyResNet(4, 4, 1, 2, ltilde=1.0, rho=[1.0]).double()  # ρL̃ = 1: h_1 = W σ(h_0)
    h0 = x @ m.w_in.detach().T
    s = torch.cat([torch.relu(h0), torch.ones(6, 1, dtype=torch.float64)], 1)
    assert torch.allclose(m.forward_features(x)[1][1], s @ m.weights.detach()[0].T, atol=1e-14)
    z = LeakyResNet(4, 4, 3, 2, ltilde=0.0).double()
    assert torch.count_nonzero(z.weights) == 0  # zero init: the ResNet starts at the identity
    feats = z.forward_features(x)[1]
    assert all(torch.equal(f, feats[0]) for f in feats)


def test_variance_preserving_initialisation():
    torch.manual_seed(2)
    m = LeakyResNet(100, 200, 20, 10, ltilde=8.0)
    x = torch.randn(2000, 100)
    with torch.no_grad():
        norms = [float(f.pow(2).mean()) for f in m.forward_features(x)[1]]
    # E‖h_ℓ‖² stays within a factor 2 of E‖h_0‖² over 20 steps (without the rule: e^{-16})
    assert max(norms) / min(norms) < 2.0


def test_step_schemes_sum_to_one_and_have_their_shape():
    for scheme in ("equidistant", "irregular", "adaptive"):
        for depth in (1, 2, 7, 20):
            rho = step_sizes(scheme, depth)
            assert rho.sum() == pytest.approx(1.0, abs=1e-15) and np.all(rho > 0)
    assert np.all(step_sizes("equidistant", 20) == 1 / 20)
    r = step_sizes("irregular", 20)
    assert np.allclose(r, r[::-1]) and r[0] < r[5] < r[9]  # small - large - small, symmetric
    assert r[9] / r[0] == pytest.approx((1 + (IRREGULAR_RATIO - 1) * np.sin(np.pi * 9.5 / 20))
                                        / (1 + (IRREGULAR_RATIO - 1) * np.sin(np.pi * 0.5 / 20)))
    with pytest.raises(ValueError, match="step_scheme"):
        step_sizes("random", 5)
    with pytest.raises(ValueError, match="rho\\[0\\] \\* ltilde = 2"):
        check_mesh([0.5, 0.5], 4.0)
    with pytest.raises(ValueError, match="sum to 1"):
        check_mesh([0.5, 0.6], 1.0)


def test_adaptive_rule_and_its_safeguards():
    L = 10
    eq = step_sizes("equidistant", L)
    # equal speeds keep the equidistant mesh; rate 0 keeps any mesh
    assert adaptive_steps(np.full(L, 3.0), eq, 2.0) == pytest.approx(eq, rel=1e-12)
    irr = step_sizes("irregular", L)
    assert adaptive_steps(np.arange(1.0, L + 1), irr, 2.0, rate=0.0) == pytest.approx(irr, rel=1e-12)
    # ρ ∝ 1/c (rate 1, inside the bounds), invariant to the scale of the speeds
    c = np.array([4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0])
    new = adaptive_steps(c, eq, 1.0, rate=1.0)
    assert new == pytest.approx((1 / c) / np.sum(1 / c), rel=1e-12)
    assert adaptive_steps(7 * c, eq, 1.0, rate=1.0) == pytest.approx(new, rel=1e-12)
    # damping: one re-set with rate 1/2 is the normalised geometric mean of old and target
    half = adaptive_steps(c, eq, 1.0, rate=0.5)
    g = np.sqrt(eq * new)
    assert half == pytest.approx(g / g.sum(), rel=1e-12)
    # bounds: a frozen layer (speed 0) is floored; steps stay in [min_ratio/L, max_ratio/L],
    # ρL̃ < 0.9 on the fast layers and < 1.8 on the slow ones; Σρ = 1
    c2 = np.array([50.0, 20.0, 5.0, 0.0, 0.01, 0.01, 0.0, 5.0, 20.0, 50.0])
    for lt in (1.0, 8.0, 12.0):
        r = adaptive_steps(c2, eq, lt, rate=1.0)
        assert r.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(r >= 0.25 / L - 1e-15) and np.all(r <= 4.0 / L + 1e-15)
        fast = c2 > np.median(c2)
        assert np.all(r[fast] * lt <= 0.9 + 1e-12) and np.all(r[~fast] * lt <= 1.8 + 1e-12)
        assert np.all(np.diff(r[:4]) >= -1e-15)  # slower layers never get smaller steps
    with pytest.raises(ValueError, match="no mesh of 10 layers"):
        adaptive_steps(c2, eq, 19.0)
    with pytest.raises(ValueError, match="finite"):
        adaptive_steps(np.array([1.0, np.nan]), [0.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="all speeds are zero"):
        adaptive_steps(np.zeros(2), [0.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="rate"):
        adaptive_steps(np.ones(2), [0.5, 0.5], 1.0, rate=1.5)


def test_relative_speeds():
    a = np.ones((4, 3))
    rho = [0.5, 0.25]
    s = relative_speeds([a, 2 * a, 2 * a], rho)
    assert s == pytest.approx([1.0 / (0.5 * 2.0), 0.0])


def test_teacher_data_has_a_rank_three_bottleneck_and_is_seeded():
    d = teacher_data(500, 100, seed=3)
    assert d["x_train"].shape == (500, 30) and d["y_train"].shape == (500, 30) and d["z_train"].shape == (500, 3)
    assert np.abs(d["y_train"].mean(0)).max() < 1e-5 and np.allclose(d["y_train"].std(0), 1, atol=1e-5)
    e = teacher_data(500, 100, seed=3)
    assert all(np.array_equal(d[k], e[k]) for k in d)
    assert not np.array_equal(d["y_train"], teacher_data(500, 100, seed=4)["y_train"])
    # ∂y/∂x = ∂h/∂z ∂g/∂x has rank ≤ 3 (central differences, piecewise linear: exact off kinks)
    g, h = teacher_function(seed=3)
    x = np.random.default_rng(0).standard_normal(30)
    eps = 1e-6
    jac = np.stack([(h(g(x + eps * e_i)) - h(g(x - eps * e_i))) / (2 * eps) for e_i in np.eye(30)], axis=1)
    sv = np.linalg.svd(jac, compute_uv=False)
    assert sv[2] > 1e-3 * sv[0] and sv[3] < 1e-6 * sv[0]
    ds = load_dataset("teacher", n_train=64)
    assert ds.task == "regression" and ds.n_classes == 30 and ds.y_train.dtype == np.float32


def test_teacher_variants_remove_one_relu_and_keep_the_other_half():
    d = teacher_data(300, 50, seed=2)
    # the default variant is the ReLU/ReLU teacher
    assert all(np.array_equal(d[k], teacher_data(300, 50, seed=2, encoder="relu", decoder="relu")[k]) for k in d)
    lin_dec = teacher_data(300, 50, seed=2, decoder="linear")
    lin_enc = teacher_data(300, 50, seed=2, encoder="linear")
    x = d["x_train"].astype(np.float64)
    # same inputs and encoder: z unchanged; y is now an exact affine (rank-3) function of z
    assert np.array_equal(lin_dec["x_train"], d["x_train"]) and np.array_equal(lin_dec["z_train"], d["z_train"])
    design = np.hstack([lin_dec["z_train"].astype(np.float64), np.ones((300, 1))])
    y = lin_dec["y_train"].astype(np.float64)
    res = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.sum(res**2) < 1e-8 * np.sum(y**2)
    # linear encoder: z = V_2 V_1 x exactly linear in x (no constant); the ReLU decoder stays
    z = lin_enc["z_train"].astype(np.float64)
    assert np.sum((z - x @ np.linalg.lstsq(x, z, rcond=None)[0]) ** 2) < 1e-8 * np.sum(z**2)
    assert not np.allclose(z, d["z_train"])
    g, h = teacher_function(seed=2, encoder="linear")
    _, h_relu = teacher_function(seed=2)
    assert np.array_equal(h(z[:5]), h_relu(z[:5]))
    with pytest.raises(ValueError, match="encoder must be one of"):
        teacher_data(10, 10, encoder="tanh")


def test_config_validation_and_stable_hashes():
    base = dict(model="leaky_resnet", depth=10)
    for kw, field in ((dict(alpha=0.2), "alpha"), (dict(dropout=0.1), "dropout"), (dict(ltilde=25.0), "ltilde"),
                      (dict(step_scheme="random"), "step_scheme"), (dict(weight_decay=-1.0), "weight_decay"),
                      (dict(probe_features="pre"), "probe_features"), (dict(adapt_every=0), "adapt_every"),
                      (dict(bottleneck_gamma0=0.0), "bottleneck_gamma0")):
        with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
            TrainConfig(**base, **kw)
    with pytest.raises(ValueError, match="TrainConfig.loss='ce'"):
        TrainConfig(dataset="teacher")
    # the new fields are written only when set, so every earlier config keeps its hash: store
    # keys recorded before the leaky ResNet existed (and before nets.config split from the loop)
    c = TrainConfig()
    assert c.to_dict() == {k: v for k, v in c.__dict__.items() if k not in EXTENSION_FIELDS}
    from phase_diagrams.spec import task_key
    assert task_key(c) == "a9f9924022ef5645b38b"
    assert task_key(TrainConfig(alpha=1, label_noise=0.6)) == "868955f813c8afebac75"
    assert task_key(TrainConfig(**base, ltilde=2.0, step_scheme="adaptive")) == "d321a48d28febf89be64"
    r = TrainConfig(**base, ltilde=2.0, step_scheme="adaptive")
    assert r.to_dict()["ltilde"] == 2.0 and TrainConfig(**r.to_dict()) == r


def _teacher_cfg(**kw):
    base = dict(dataset="teacher", loss="mse", model="leaky_resnet", n_train=128, depth=4, width=12,
                ltilde=2.0, weight_decay=1e-3, epochs=12, probe_every=4, dtype="float64", early_stop_loss=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_ensemble_equals_one_by_one_with_adaptive_meshes():
    cfgs = [_teacher_cfg(step_scheme="adaptive", adapt_every=3, ltilde=2.0, seed=1),
            _teacher_cfg(step_scheme="adaptive", adapt_every=3, ltilde=0.5, weight_decay=1e-2, seed=2,
                         label_noise=0.3)]
    ens = train_ensemble(cfgs)
    for c, he in zip(cfgs, ens, strict=True):
        h = train_reference(c)  # the plain single-network loop
        assert he.ensemble_size == 2
        np.testing.assert_allclose(he.train_loss, h.train_loss, rtol=1e-10)
        np.testing.assert_allclose(he.rho, h.rho, rtol=1e-10)
        assert [e for e, _ in he.rho_trajectory] == [0, 3, 6, 9] == [e for e, _ in h.rho_trajectory]
        assert he.test_loss == pytest.approx(h.test_loss, rel=1e-10)
        np.testing.assert_allclose(he.bottleneck["coi"], h.bottleneck["coi"], rtol=1e-8)
        assert abs(h.rho.sum() - 1) < 1e-12 and not np.allclose(h.rho, 0.25)
    rec = ens[0].to_record()
    assert rec["task"] == "regression" and np.isnan(rec["test_accuracy"]) and rec["test_loss"] > 0
    assert len(rec["loads_per_depth"]) == 4 and len(rec["bottleneck"]["coi"]) == 5


def test_leaky_resnet_classification_equals_the_reference():
    # cross-entropy + weight decay, irregular mesh, SGD minibatches with label noise, the test
    # loss and bottleneck measures: the batched loop (one member and two) against the plain loop
    base = TrainConfig(dataset="gaussian", model="leaky_resnet", n_train=128, depth=4, width=12,
                       ltilde=1.5, weight_decay=1e-3, step_scheme="irregular", epochs=5, batch_size=32,
                       probe_every=2, probe_accuracy=True, dtype="float64")
    cfgs = [base, base.replace(seed=2, label_noise=0.3, ltilde=0.5)]
    ens = train_ensemble(cfgs)
    for c, he, h1 in zip(cfgs, ens, [train(c) for c in cfgs], strict=True):
        ref = train_reference(c)
        for h in (he, h1):
            np.testing.assert_allclose(h.train_loss, ref.train_loss, rtol=1e-10)
            np.testing.assert_allclose(h.trajectory, ref.trajectory, rtol=1e-8, atol=1e-8)
            np.testing.assert_allclose(h.probe_accuracy, ref.probe_accuracy, atol=1e-12)
            assert h.test_loss == pytest.approx(ref.test_loss, rel=1e-10)
            np.testing.assert_allclose(h.bottleneck["coi"], ref.bottleneck["coi"], rtol=1e-8)
            for k, v in ref.state_dict.items():
                np.testing.assert_allclose(h.state_dict[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


def test_bottleneck_probes_leave_training_unchanged():
    a = train(_teacher_cfg(epochs=6, probe_every=2, probe_bottleneck=True))
    b = train(_teacher_cfg(epochs=6, probe_every=0))
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    assert [t["epoch"] for t in a.bottleneck_trajectory] == [0, 2, 4, 6]
    assert a.bottleneck["coi"] == b.bottleneck["coi"]


def test_mesh_chain_follows_the_mesh_and_has_the_closed_form_equilibrium():
    L, lt, kap = 12, 6.0, 1.5
    rho = step_sizes("irregular", L)
    p = mesh_chain(rho, lt, kappa=kap, k_ref=2.0, pin_fraction=0.4, y=1.0)
    assert p.k_array[:-1] == pytest.approx(2.0 / (L * lt * rho), rel=1e-14)
    assert p.k_array[-1] == p.k_array[-2]
    assert p.kappa_array == pytest.approx(2.0 * kap * lt * rho / L, rel=1e-14)
    assert np.all(p.pin_position_array == 0.4)
    assert mesh_chain(np.full(7, 1 / 7), 1.0).k_array == pytest.approx(np.ones(8))  # the original chain
    # uniform mesh: u_n = x_n − a solves u_{n+1} − (2 + κ/k) u_n + u_{n−1} = 0, u_0 = −a, u_{L+1} = y − a
    q = mesh_chain(np.full(L, 1 / L), lt, kappa=kap, pin_fraction=0.5)
    k, kappa = q.k_array[0], q.kappa_array[0]
    lam = ((2 + kappa / k) - np.sqrt((2 + kappa / k) ** 2 - 4)) / 2
    n = np.arange(L + 2)
    m = np.array([[1.0, 1.0], [lam ** (L + 1), lam ** -(L + 1)]])
    c1, c2 = np.linalg.solve(m, [-0.5, 0.5])
    u = c1 * lam**n + c2 * lam**-n
    assert theory.equilibrium(q) == pytest.approx(0.5 + u[1:-1], abs=1e-12)
    # larger L̃: the middle block sits closer to the bottleneck position
    mids = [abs(theory.equilibrium(mesh_chain(np.full(L, 1 / L), v))[L // 2] - 0.5) for v in (1.0, 4.0, 16.0)]
    assert mids[0] > mids[1] > mids[2] >= 0
    with pytest.raises(ValueError, match="ltilde"):
        mesh_chain(rho, 0.0)
    with pytest.raises(ValueError, match="sets ChainParams.k"):
        mesh_chain(rho, 1.0, k=2.0)
