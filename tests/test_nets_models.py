"""Models of SPEC §3.1: architecture, per-layer features, and the batched ensemble forward."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nets.models import CNN, MLP, EnsembleCNN, EnsembleMLP, build_ensemble, build_model


def test_mlp_architecture_defaults():
    m = MLP()
    n_params = sum(p.numel() for p in m.parameters())
    # input BN (2*100) + 7 x [Linear(100,100) + BN(100)] + Linear(100, 10)
    assert n_params == 200 + 7 * (100 * 100 + 100 + 200) + 100 * 10 + 10
    assert [type(b.act).__name__ for b in m.blocks] == ["LeakyReLU"] * 7
    assert m.blocks[0].act.negative_slope == 0.0


def test_mlp_features_are_the_documented_tensors():
    torch.manual_seed(0)
    m = MLP(in_dim=16, width=8, depth=3, n_classes=4, alpha=0.2).double().eval()
    x = torch.randn(32, 1, 4, 4, dtype=torch.float64)
    logits, post = m.forward_features(x, "post")
    _, pre = m.forward_features(x, "pre")
    assert torch.equal(logits, m(x))
    assert len(post) == 4 and torch.equal(post[0], m.input_norm(x.flatten(1)))
    for i, block in enumerate(m.blocks, start=1):
        assert torch.allclose(pre[i], block.norm(block.linear(post[i - 1])))
        assert torch.allclose(post[i], F.leaky_relu(pre[i], 0.2))
    assert torch.allclose(logits, m.head(post[-1]))


def test_linear_network_is_affine_in_eval_mode():
    # α = 1: every layer is affine, so the network maps convex combinations to convex combinations
    torch.manual_seed(1)
    m = MLP(in_dim=10, width=12, depth=4, n_classes=3, alpha=1.0).double().eval()
    a, b = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64)
    assert torch.allclose(m(0.3 * a + 0.7 * b), 0.3 * m(a) + 0.7 * m(b), atol=1e-12)
    r = MLP(in_dim=10, width=12, depth=4, n_classes=3, alpha=0.0).double().eval()
    assert not torch.allclose(r(0.3 * a + 0.7 * b), 0.3 * r(a) + 0.7 * r(b), atol=1e-6)


def test_cnn_features_probe_before_upsampling():
    torch.manual_seed(2)
    m = CNN((1, 10, 10), channels=5, depth=3, n_classes=4).eval()
    x = torch.rand(6, 1, 10, 10)
    logits, feats = m.forward_features(x)
    assert [f.shape[1] for f in feats] == [100, 5 * 5 * 5, 125, 125]
    assert logits.shape == (6, 4) and torch.equal(logits, m(x))
    with pytest.raises(ValueError, match="even"):
        CNN((1, 9, 10))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"alpha": 1.5}, "alpha"), ({"dropout": 1.0}, "dropout"), ({"depth": 0}, "depth"),
     ({"n_classes": 1}, "n_classes")],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def _members(kind, alphas, seed=0):
    out = []
    for i, a in enumerate(alphas):
        torch.manual_seed(seed + i)
        out.append(build_model(kind, (1, 6, 6), width=7, depth=3, n_classes=5, alpha=a, dropout=0.0)
                   .double())
    return out


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("training", [True, False])
def test_ensemble_forward_equals_members(kind, training):
    members = _members(kind, [0.0, 0.3, 1.0])
    ens = build_ensemble(members)
    assert isinstance(ens, EnsembleMLP if kind == "mlp" else EnsembleCNN)
    if not training:  # make the running statistics non-trivial first
        for m in members:
            m.train()
            m(torch.randn(20, 1, 6, 6, dtype=torch.float64))
        ens = build_ensemble(members)
    for m in members:
        m.train(training)
    ens.train(training)
    x = torch.randn(3, 16, 1, 6, 6, dtype=torch.float64)
    logits, feats = ens.forward_features(x)
    for e, m in enumerate(members):
        ref_logits, ref_feats = m.forward_features(x[e])
        assert torch.allclose(logits[e], ref_logits, atol=1e-12)
        for f, g in zip(feats, ref_feats, strict=True):
            assert torch.allclose(f[e], g, atol=1e-12)
        if training:  # running stats updated per member exactly as nn.BatchNorm does
            sd = ens.member_state_dict(e)
            for name, val in m.state_dict().items():
                assert torch.allclose(sd[name].double(), val.double(), atol=1e-12), name


def test_ensemble_backward_equals_members():
    members = _members("mlp", [0.0, 0.5])
    ens = build_ensemble(members)
    x = torch.randn(2, 16, 36, dtype=torch.float64)
    y = torch.randint(5, (2, 16))
    loss = sum(F.cross_entropy(ens(x)[e], y[e]) for e in range(2))
    loss.backward()
    for e, m in enumerate(members):
        F.cross_entropy(m(x[e]), y[e]).backward()
        for name, p in zip(ens._names, ens.params, strict=True):
            assert torch.allclose(p.grad[e], dict(m.named_parameters())[name].grad, atol=1e-12), name


def test_ensemble_rejects_mixed_architectures():
    a = MLP(in_dim=4, width=3, depth=2)
    b = MLP(in_dim=4, width=5, depth=2)
    with pytest.raises(ValueError, match="different architecture"):
        build_ensemble([a, b])
    with pytest.raises(ValueError, match="all MLP or all CNN"):
        build_ensemble([a, CNN((1, 4, 4), depth=2)])


def test_ensemble_input_member_count_checked():
    ens = build_ensemble(_members("mlp", [0.0, 1.0]))
    with pytest.raises(ValueError, match="3 members"):
        ens(torch.zeros(3, 4, 36, dtype=torch.float64))


def test_no_batch_norm_option():
    torch.manual_seed(3)
    m = MLP(in_dim=4, width=3, depth=2, batch_norm=False)
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in m.modules())
    ens = build_ensemble([m, m])
    x = torch.randn(2, 5, 4)
    assert np.allclose(ens(x)[1].detach(), m(x[1]).detach(), atol=1e-6)
