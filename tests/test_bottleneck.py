"""Bottleneck measures of SPEC §5.2 on cases with known answers (nets.bottleneck)."""

import numpy as np
import pytest
import torch

from nets import bottleneck as bn


def _nonneg_rank(rng, n, w, r):
    """A generic non-negative (N, w) matrix of rank r (its column space misses the ones vector)."""
    return rng.random((n, r)) @ rng.random((r, w))


def _direct_coi(a, gamma0):
    """Slow reference: tr(Aᵀ (K + γI)⁻¹ A) with an explicit inverse of the N x N matrix."""
    a = np.asarray(a, dtype=np.float64)
    s = np.hstack([np.maximum(a, 0), np.ones((a.shape[0], 1))])
    k = s @ s.T
    gamma = gamma0 * np.linalg.norm(k, 2)
    return float(np.trace(a.T @ np.linalg.inv(k + gamma * np.eye(len(k))) @ a))


@pytest.mark.parametrize("r", [1, 3, 7])
def test_coi_of_nonnegative_rank_r_matrix_is_r(r):
    rng = np.random.default_rng(r)
    a = _nonneg_rank(rng, 150, 40, r)
    # COI_γ → r from below as γ → 0: the deficit is Σ γ/(λ_i + γ) over the r + 1 non-zero
    # eigenvalues of K, i.e. O(γ₀ · λ_max/λ_min); for γ₀ = 1e-10 it is below 1e-5 here.
    assert bn.cost_of_identity(a, 1e-10) == pytest.approx(r, abs=1e-5)
    vals = [bn.cost_of_identity(a, g) for g in (1e-1, 1e-2, 1e-4, 1e-6)]
    assert all(v < r for v in vals)
    assert np.all(np.diff(vals) > 0)  # COI_γ increases as γ decreases


def test_coi_of_constant_matrix_has_closed_form():
    # A = c 1 1ᵀ (N x w): K = (c²w + 1) 1 1ᵀ, so COI_γ = c²w / ((c²w + 1)(1 + γ₀)) exactly
    # (the ones vector lies in the column space: the one case where COI of a non-negative
    # rank-1 matrix is below 1 even at γ = 0).
    n, w, c, g0 = 50, 8, 0.7, 1e-3
    a = np.full((n, w), c)
    expected = c * c * w / ((c * c * w + 1) * (1 + g0))
    for method in ("dual", "gram"):
        assert bn.cost_of_identity(a, g0, method=method) == pytest.approx(expected, rel=1e-12)


def test_coi_of_an_affine_k_dimensional_representation_is_k_plus_one():
    # A = 1 mᵀ + Z B > 0 with Z (N x k): rank k + 1 and the ones vector in its column space;
    # the row space of (A, 1) misses e_{w+1}, so COI_0 = rank = k + 1 (the centred A has rank k)
    rng = np.random.default_rng(9)
    for k in (1, 3):
        a = 5.0 + rng.random(40) + 0.5 * rng.standard_normal((300, k)) @ rng.standard_normal((k, 40))
        assert a.min() > 0
        assert bn.cost_of_identity(a, 1e-10) == pytest.approx(k + 1, abs=1e-3)
        m = bn.layer_measures([a, a], [1.0], 1.0, rtol=1e-6)
        assert m["numerical_rank"][0] == k + 1 and m["numerical_rank_centered"][0] == k


@pytest.mark.parametrize("shape", [(80, 20), (30, 60)])
def test_cholesky_routes_equal_slow_direct_formula(shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape) * 2.0 + 0.3
    for g0 in (1e-2, 1e-5):
        ref = _direct_coi(a, g0)
        assert bn.cost_of_identity(a, g0, method="dual") == pytest.approx(ref, rel=1e-9)
        assert bn.cost_of_identity(a, g0, method="gram") == pytest.approx(ref, rel=1e-9)
    # float32 tensor input is computed in float64 all the same
    t = torch.tensor(a, dtype=torch.float32)
    assert bn.cost_of_identity(t, 1e-3) == pytest.approx(_direct_coi(t.double().numpy(), 1e-3), rel=1e-9)


def test_stable_rank_lower_bound_and_rank_inequalities():
    rng = np.random.default_rng(1)
    for _trial in range(20):
        n, w = rng.integers(5, 60), rng.integers(3, 40)
        a = rng.standard_normal((n, w)) * rng.uniform(0.1, 10) + rng.uniform(-1, 1)
        g0 = 10.0 ** rng.uniform(-6, -1)
        assert bn.coi_lower_bound(a, g0) <= bn.cost_of_identity(a, g0) * (1 + 1e-12)
        r = bn.rank_measures(bn.singular_values(a), rtol=1e-10)
        assert r["stable_rank"] <= r["numerical_rank"] + 1e-12
        assert r["effective_rank"] <= r["numerical_rank"] + 1e-12
        assert 1.0 - 1e-12 <= r["stable_rank"]
    # the bound is the stable rank ‖A‖_*²/‖A‖_F² when N is negligible against ‖A‖_F² (scaled A)
    a = 1e4 * _nonneg_rank(rng, 40, 30, 4)
    sv = bn.singular_values(a)
    assert bn.coi_lower_bound(a, 1e-12) == pytest.approx(sv.sum() ** 2 / np.sum(sv**2), rel=1e-6)


def test_ranks_of_a_scaled_orthonormal_matrix_are_exact():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    r = bn.rank_measures(bn.singular_values(3.0 * q))
    assert r["numerical_rank"] == 6
    assert r["stable_rank"] == pytest.approx(6.0, rel=1e-12)
    assert r["effective_rank"] == pytest.approx(6.0, rel=1e-12)


def test_invariances():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((60, 12)) + 0.5
    o_feat, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    o_data, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    # ranks: any orthogonal rotation of the features or of the data points
    r0 = bn.rank_measures(bn.singular_values(a))
    for b in (a @ o_feat, o_data @ a):
        r = bn.rank_measures(bn.singular_values(b))
        assert r["numerical_rank"] == r0["numerical_rank"]
        assert r["stable_rank"] == pytest.approx(r0["stable_rank"], rel=1e-10)
        assert r["effective_rank"] == pytest.approx(r0["effective_rank"], rel=1e-10)
    # COI: permutations of the features and of the data points (they commute with ReLU)
    c0 = bn.cost_of_identity(a)
    assert bn.cost_of_identity(a[:, rng.permutation(12)]) == pytest.approx(c0, rel=1e-10)
    assert bn.cost_of_identity(a[rng.permutation(60)]) == pytest.approx(c0, rel=1e-10)
    # the quadratic form: V → V O leaves tr(Vᵀ (K + γI)⁻¹ V) unchanged for a fixed kernel
    s = bn.feature_map(a)
    v = rng.standard_normal((60, 12))
    g = bn.gamma_of(s, 1e-3)
    assert bn.inverse_quadratic_trace(s, v @ o_feat, g) == pytest.approx(bn.inverse_quadratic_trace(s, v, g),
                                                                         rel=1e-10)
    # and a rotation of the data points acts on the kernel as O K Oᵀ: invariant too
    assert bn.inverse_quadratic_trace(o_data @ s.numpy(), o_data @ v, g) == pytest.approx(
        bn.inverse_quadratic_trace(s, v, g), rel=1e-9)


def test_kinetic_energy_and_hamiltonian_on_a_pure_scaling_step():
    # A_next = (1 + ρ s) A_prev  ⇒  V = s A_prev and T = s² COI_γ(A_prev) / (2 L̃) exactly
    rng = np.random.default_rng(4)
    a = _nonneg_rank(rng, 70, 15, 3)
    rho, lt, s_ = 0.05, 4.0, 1.7
    coi = bn.cost_of_identity(a)
    t = bn.kinetic_energy(a, (1 + rho * s_) * a, rho, lt)
    assert t == pytest.approx(s_**2 * coi / (2 * lt), rel=1e-10)
    assert bn.kinetic_energy(a, a, rho, lt) == 0.0
    feats = [a, (1 + 0.5 * s_) * a, (1 + 0.5 * s_) * a]
    m = bn.layer_measures(feats, [0.5, 0.5], lt)
    assert m["kinetic"][0] == pytest.approx(s_**2 * coi / (2 * lt), rel=1e-10)
    assert m["kinetic"][1] == 0.0
    assert m["hamiltonian"][0] == pytest.approx(m["kinetic"][0] - lt / 2 * coi, rel=1e-10)
    assert m["k_hat"][0] == pytest.approx(coi - s_**2 * coi / lt**2, rel=1e-10)
    assert m["k_hat"][1] == pytest.approx(m["coi"][1], rel=1e-12)  # no motion: k̂ = COI
    assert np.all(np.array(m["k_hat"]) <= np.array(m["coi"][:-1]) + 1e-12)
    speed = np.linalg.norm(feats[1] - feats[0]) / (0.5 * np.linalg.norm(feats[1]))
    assert m["speed"] == pytest.approx([speed, 0.0], rel=1e-12)
    assert m["p"] == [0.0, 0.5, 1.0]


def test_layer_measures_agree_with_the_single_functions_and_subsampling_is_seeded():
    rng = np.random.default_rng(5)
    feats = [rng.standard_normal((300, 10)) for _ in range(4)]
    w = [rng.standard_normal((10, 11)) for _ in range(3)]
    rho = [0.2, 0.5, 0.3]
    m = bn.layer_measures(feats, rho, 2.0, weights=w)
    for ell in range(4):
        assert m["coi"][ell] == pytest.approx(bn.cost_of_identity(feats[ell]), rel=1e-12)
    for ell in range(3):
        assert m["kinetic"][ell] == pytest.approx(bn.kinetic_energy(feats[ell], feats[ell + 1], rho[ell], 2.0),
                                                  rel=1e-12)
        assert m["sv_w"][ell] == pytest.approx(np.linalg.svd(w[ell], compute_uv=False).tolist(), rel=1e-10)
    a = bn.layer_measures(feats, rho, 2.0, max_samples=100, seed=7)
    b = bn.layer_measures(feats, rho, 2.0, max_samples=100, seed=7)
    c = bn.layer_measures(feats, rho, 2.0, max_samples=100, seed=8)
    assert a["coi"] == b["coi"] and a["coi"] != c["coi"]
    # a subsample of a non-negative rank-3 matrix still has COI ≈ 3
    big = _nonneg_rank(rng, 2000, 30, 3)
    assert bn.cost_of_identity(big, 1e-10, method="gram", max_samples=200, seed=1) == pytest.approx(3, abs=1e-4)


def test_summary_and_per_depth_loads():
    m = dict(coi=[30.0, 10.0, 3.2, 3.1, 3.3, 12.0, 30.0], rho=[1 / 6] * 6, p=list(np.linspace(0, 1, 7)),
             kinetic=[10.0, 5.0, 0.1, 0.1, 5.0, 10.0], k_hat=[2.9, 2.8, 2.95, 3.0, 2.9, 2.85],
             numerical_rank=[30, 10, 3, 3, 3, 12, 30])
    s = bn.bottleneck_summary(m)
    assert s["min_coi"] == 3.1 and s["argmin_coi"] == 3
    assert s["bottleneck_extent"] == pytest.approx(3 / 6)  # layers 2, 3, 4 within 1 of the min
    # steps with midpoints 1/12 and 11/12 lie in the end quarters: (10 + 10) / 30.2
    assert s["kinetic_ends"] == pytest.approx(20 / 30.2)
    curve = np.array([3.0, 2.0, 1.5, 1.4])
    assert bn.per_depth_loads(curve, [0.5, 0.25, 0.25]) == pytest.approx([2.0, 2.0, 0.4])


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="non-finite"):
        bn.cost_of_identity(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="gamma0"):
        bn.cost_of_identity(np.ones((3, 2)), 0.0)
    with pytest.raises(ValueError, match="method"):
        bn.cost_of_identity(np.ones((3, 2)), method="pinv")
    with pytest.raises(ValueError, match="ltilde > 0"):
        bn.kinetic_energy(np.ones((3, 2)), np.ones((3, 2)), 0.1, 0.0)
    with pytest.raises(ValueError, match="L \\+ 1 = 3"):
        bn.layer_measures([np.ones((3, 2))] * 2, [0.5, 0.5], 1.0)


def test_direction_r2_separates_affine_and_quadratic_directions():
    # z on a symmetric grid (every sign pattern of (z1, z2) present), so z1², z1 z2 are exactly
    # orthogonal to z1, z2 and the constant. A = offset + [3 z1, 2 z2, q] rotated into R^8, with
    # q = z1² − mean (smaller spread): the centred directions are z1, z2, q in that order, R² on
    # [z, 1] is exactly (1, 1, 0); on [z, z1²] it is (1, 1, 1).
    g = np.linspace(0.2, 1.0, 5)
    z1, z2 = (v.ravel() for v in np.meshgrid(np.concatenate([-g, g]), np.concatenate([-g, g])))
    z = np.stack([z1, z2], 1)
    q = z1**2 - np.mean(z1**2)
    rot = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))[0][:3]
    a = 5.0 + np.stack([3 * z1, 2 * z2, q], 1) @ rot
    r = bn.direction_r2(a, z, n_directions=4)
    assert np.allclose(r["r2"][:3], [1.0, 1.0, 0.0], atol=1e-10)
    assert r["sv_centered"][3] < 1e-10 * r["sv_centered"][0]
    # share of the centred variance that is affine in z: (9 Σz1² + 4 Σz2²) / (… + Σq²)
    var = np.array([9 * np.sum(z1**2), 4 * np.sum(z2**2), np.sum(q**2)])
    assert r["r2_total"] == pytest.approx(var[:2].sum() / var.sum(), rel=1e-10)
    full = bn.direction_r2(a, np.stack([z1, z2, z1**2], 1), n_directions=3)
    assert np.allclose(full["r2"], 1.0, atol=1e-10) and full["r2_total"] == pytest.approx(1.0, abs=1e-10)
    # held-out points from the same map: the training fit transfers exactly (R²_test = R²)
    zt = np.random.default_rng(1).uniform(-1, 1, (50, 2))
    at = 5.0 + np.stack([3 * zt[:, 0], 2 * zt[:, 1], zt[:, 0] ** 2 - np.mean(z1**2)], 1) @ rot
    ft = bn.direction_r2(a, np.stack([z1, z2, z1**2], 1), a_test=at,
                         regressors_test=np.hstack([zt, zt[:, :1] ** 2]), n_directions=3)
    assert np.allclose(ft["r2_test"], 1.0, atol=1e-10) and ft["r2_total_test"] == pytest.approx(1.0, abs=1e-10)
    with pytest.raises(ValueError, match="rows"):
        bn.direction_r2(a, z[:-1])
    with pytest.raises(ValueError, match="neither"):
        bn.direction_r2(a, z, a_test=at)
