"""Data separation D and the load curve (SPEC §1): exact values, invariances, agreement of the
efficient and direct routes, degenerate inputs."""

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from nets import probes


def _clusters(n=300, p=12, k=4, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    means = rng.normal(scale=spread, size=(k, p))
    h = means[y] + rng.normal(size=(n, p)) * rng.uniform(0.5, 2.0, size=p)
    return h, y


def _direct_textbook(h, y):
    """tr(Σ_w Σ_b⁺) written out from the definitions (float64, numpy pinv)."""
    n = len(y)
    g = h.mean(0)
    sb = np.zeros((h.shape[1],) * 2)
    sw = np.zeros_like(sb)
    for c in np.unique(y):
        hc = h[y == c]
        mc = hc.mean(0)
        sb += len(hc) * np.outer(mc - g, mc - g)
        sw += (hc - mc).T @ (hc - mc)
    return np.log(np.trace(sw / n @ np.linalg.pinv(sb / n, rtol=1e-12, hermitian=True)))


@pytest.mark.parametrize("a,s", [(1.0, 0.5), (2.0, 0.1), (0.3, 0.9)])
def test_constructed_1d_value(a, s):
    # classes {-a-s, -a+s} and {a-s, a+s}: Σ_b = a², Σ_w = s², so D = (s/a)²
    h = np.tile([-a - s, -a + s, a - s, a + s], 3)[:, None]
    y = np.tile([0, 0, 1, 1], 3)
    assert probes.log_separation(h, y) == pytest.approx(2 * np.log(s / a), abs=1e-12)
    assert probes.log_separation_direct(h, y) == pytest.approx(2 * np.log(s / a), abs=1e-12)
    # trace ratio equals log D in one dimension
    assert probes.log_trace_ratio(h, y) == pytest.approx(2 * np.log(s / a), abs=1e-12)


@pytest.mark.parametrize("seed,n,p,k", [(0, 300, 12, 4), (1, 200, 40, 10), (2, 50, 80, 5)])
def test_efficient_matches_direct(seed, n, p, k):
    # p > N and p > K cases included: Σ_w is singular, Σ_b has rank K-1
    h, y = _clusters(n, p, k, seed)
    eff = probes.log_separation(h, y)
    direct = probes.log_separation_direct(h, y)
    assert eff == pytest.approx(direct, rel=1e-8)
    assert eff == pytest.approx(_direct_textbook(h, y), rel=1e-8)


def test_invariances():
    h, y = _clusters(400, 15, 5, seed=3)
    ref = probes.log_separation(h, y)
    q = ortho_group.rvs(15, random_state=4)
    assert probes.log_separation(h + 7.5, y) == pytest.approx(ref, abs=1e-9)  # translation
    assert probes.log_separation(h @ q, y) == pytest.approx(ref, abs=1e-9)  # rotation
    assert probes.log_separation(h * 0.01, y) == pytest.approx(ref, abs=1e-9)  # common scale
    assert probes.log_separation(h * 1e3, y) == pytest.approx(ref, abs=1e-9)
    perm = np.array([3, 0, 4, 1, 2])
    assert probes.log_separation(h, perm[y]) == pytest.approx(ref, abs=1e-9)  # relabelling
    order = np.random.default_rng(5).permutation(len(y))
    assert probes.log_separation(h[order], y[order]) == pytest.approx(ref, abs=1e-9)


def test_trace_ratio_definition():
    h, y = _clusters(200, 6, 3, seed=6)
    g = h.mean(0)
    tw = sum(((h[y == c] - h[y == c].mean(0)) ** 2).sum() for c in range(3)) / len(y)
    tb = sum((y == c).sum() * ((h[y == c].mean(0) - g) ** 2).sum() for c in range(3)) / len(y)
    assert probes.log_trace_ratio(h, y) == pytest.approx(np.log(tw) - np.log(tb), rel=1e-12)
    d, t = probes.separation_stats(h, y)
    assert d == probes.log_separation(h, y) and t == probes.log_trace_ratio(h, y)


def test_torch_input_and_float32_features_agree():
    h, y = _clusters(300, 10, 4, seed=7)
    h32 = h.astype(np.float32)
    a = probes.log_separation(h32, y)
    b = probes.log_separation(torch.from_numpy(h32), torch.from_numpy(y))
    assert a == b
    # computed in float64 from the float32 values
    assert a == pytest.approx(probes.log_separation(h32.astype(np.float64), y), rel=1e-15)


def test_collapsed_classes_and_coincident_means():
    y = np.array([0, 0, 1, 1, 2, 2])
    points = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 5.0]])
    assert probes.log_separation(points, y) == -np.inf  # Σ_w = 0: perfectly separated
    same_mean = np.array([[-1.0], [1.0], [-2.0], [2.0], [-3.0], [3.0]])
    assert np.isnan(probes.log_separation(same_mean, y))  # Σ_b = 0: D undefined


@pytest.mark.parametrize(
    "h,y,k,match",
    [
        (np.ones((5, 2)), np.zeros(5, dtype=int), None, "at least 2 classes"),
        (np.random.default_rng(0).normal(size=(6, 2)), np.array([0, 0, 2, 2, 0, 2]), None, r"\[1\]"),
        (np.random.default_rng(0).normal(size=(6, 2)), np.array([0, 1, 0, 1, 0, 1]), 3, r"\[2\]"),
        (np.array([[np.nan], [1.0], [2.0], [3.0]]), np.array([0, 1, 0, 1]), None, "non-finite"),
        (np.arange(4.0)[:, None], np.array([0, 1, 2, 3]), None, "N=4 <= K=4"),
        (np.arange(4.0)[:, None], np.array([0, 1, 0]), None, "length N=4"),
        (np.arange(4.0)[:, None], np.array([0.0, 1.0, 0.0, 1.0]), None, "integers"),
    ],
)
def test_degenerate_inputs_raise(h, y, k, match):
    for fn in (probes.log_separation, probes.log_separation_direct, probes.log_trace_ratio):
        with pytest.raises(ValueError, match=match):
            fn(h, y, k)


def test_bad_rcond():
    h, y = _clusters(50, 3, 2)
    with pytest.raises(ValueError, match="rcond"):
        probes.log_separation(h, y, rcond=0.0)


def test_rcond_drops_tiny_directions():
    # a third class mean displaced by 1e-9 in a new direction: with the cutoff that direction is
    # ignored; without it (tiny rcond) it dominates D through the 1/s² factor.
    h, y = _clusters(300, 4, 3, seed=8)
    h = np.concatenate([h, np.random.default_rng(9).normal(size=(300, 1))], axis=1)
    ref = probes.log_separation(h[:, :4], y)
    assert probes.log_separation(h, y) > ref  # new within-class direction, but full rank
    flat = h.copy()
    flat[:, 4] = np.where(y == 2, 1e-9, 0.0) + np.random.default_rng(10).normal(size=300) * 1e-3
    assert probes.log_separation(flat, y, rcond=1e-6) == pytest.approx(
        probes.log_separation(flat[:, :4], y, rcond=1e-6), abs=1e-3)


def _two_class_layer(n, m, s, t, p, rng):
    """Two classes of ``n`` samples with means ``±m e_1`` and within-class residuals exactly ``±s``
    along ``e_1`` and ``±t`` along the other ``p - 1`` axes (balanced, so the class means are
    exact). Then ``Σ_b = m² e_1 e_1ᵀ``, ``(Σ_w)_11 = s²``, ``tr Σ_w = s² + (p − 1) t²``, hence
    ``D = tr(Σ_w Σ_b⁺) = s²/m²`` and ``tr Σ_w / tr Σ_b = (s² + (p − 1) t²)/m²``."""
    signs = np.tile([1.0, -1.0], n // 2)
    h = np.empty((2 * n, p))
    for c, mean in enumerate((m, -m)):
        rows = slice(c * n, (c + 1) * n)
        h[rows, 0] = mean + s * rng.permutation(signs)
        h[rows, 1:] = t * np.stack([rng.permutation(signs) for _ in range(p - 1)], axis=1)
    y = np.repeat([0, 1], n)
    rot = np.linalg.qr(rng.normal(size=(p, p)))[0]  # D is invariant under rotations of the features
    return h @ rot, y


def test_known_curve_of_a_constructed_dataset():
    # a layer sequence with within-class spread s_l along the class axis: log D_l = 2 log(s_l/m)
    # exactly, loads d_l = 2 log(s_{l-1}/s_l), so the shape numbers are known in closed form
    rng = np.random.default_rng(11)
    m, t, p = 1.5, 0.7, 6
    spreads = np.array([2.0, 1.0, 0.6, 0.4, 0.3])
    layers = [_two_class_layer(200, m, s, t, p, rng) for s in spreads]
    y = layers[0][1]
    curve = probes.layer_curve([h for h, _ in layers], y)
    np.testing.assert_allclose(curve, 2 * np.log(spreads / m), rtol=0, atol=1e-12)
    trace_curve = probes.layer_curve([h for h, _ in layers], y, method="trace")
    np.testing.assert_allclose(trace_curve, np.log((spreads**2 + (p - 1) * t**2) / m**2), atol=1e-12)
    d = 2 * np.log(spreads[:-1] / spreads[1:])  # log 4, 2 log(5/3), 2 log(3/2), 2 log(4/3)
    s = probes.curve_summary(curve)
    np.testing.assert_allclose(s["loads"], d, atol=1e-12)
    assert s["curvature"] == pytest.approx(d[0] - d[-1], abs=1e-12)  # 2 log 3 > 0: convex
    assert s["linearity"] == pytest.approx(np.std(d), abs=1e-12)
    assert s["regime"] == "convex"
    with pytest.raises(ValueError, match="method"):
        probes.layer_curve([h for h, _ in layers], y, method="bogus")


def test_batched_stats_equal_one_by_one():
    sets = [_clusters(200, 9, 4, seed=s) for s in range(3)]
    y = sets[0][1]
    h = np.stack([s[0] for s in sets])
    h[2, 5, 3] = np.nan  # one non-finite member gives NaN without affecting the others
    d, t = probes.separation_stats_batched(h, y)
    for i in range(2):
        ref = probes.separation_stats(h[i], y)
        assert d[i] == pytest.approx(ref[0], rel=1e-12) and t[i] == pytest.approx(ref[1], rel=1e-12)
    assert np.isnan(d[2]) and np.isnan(t[2])
    with pytest.raises(ValueError, match=r"\[3\]"):
        probes.separation_stats_batched(h, np.where(y == 3, 0, y), 4)
