"""The simulator's own normal generator: tables, distribution, determinism, and the lane-parallel
draws reproducing each chain's scalar stream exactly."""

import math

import numpy as np
import pytest
from numba import njit
from scipy import stats

from springblock import standard_normals
from springblock._rng import (
    LANES,
    LAYERS,
    STATE_WORDS,
    ZIGGURAT,
    ZIGGURAT_SCALE,
    draw_lane,
    draw_lane_scaled,
    draw_lanes,
    fill_normals,
    frame_array,
    lane_table,
    rescue,
    rescue_lanes,
    seed_lanes,
    seed_state,
)

TABLE, K, F, R = ZIGGURAT
EDGES = np.append((TABLE & np.uint64((1 << 53) - 1)).astype(np.int64) * 2.0**-50, 0.0)  # x_0 .. x_LAYERS


def test_tables_are_consistent():
    x = EDGES
    assert np.all(np.diff(x) < 0) and x[1] == R and F[-1] == 1.0 and K[-1] == 0
    np.testing.assert_allclose(F, np.exp(-0.5 * x * x), rtol=1e-15)
    # every layer has the same area V (the base layer: rectangle [0, x_0] x [0, f(R)] plus the tail)
    v = R * math.exp(-0.5 * R * R) + math.sqrt(math.pi / 2) * math.erfc(R / math.sqrt(2))
    np.testing.assert_allclose(x[0] * F[1], v, rtol=1e-14)
    np.testing.assert_allclose(x[1:LAYERS] * (F[2:] - F[1:LAYERS]), v, rtol=1e-10)
    # exact fast-accept bounds, and the packed 11-bit codes never accept more than they allow
    m = [int(w) & ((1 << 53) - 1) for w in TABLE] + [0]
    assert all(int(K[i]) == (m[i + 1] << 52) // m[i] for i in range(LAYERS))
    code = (TABLE >> np.uint64(53)).astype(np.int64)
    assert np.all(code << 41 <= K) and np.all(K - (code << 41) < 2**41)


def test_normals_match_the_standard_normal():
    z = standard_normals(np.uint64(2024), 4_000_000)
    n = z.size
    # moments within 5 standard errors: SE(mean)=1/sqrt(n), SE(var)=sqrt(2/n), SE(skew)=sqrt(6/n),
    # SE(excess kurtosis)=sqrt(24/n)
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # tail masses P(|Z| > t) within 5 binomial SE, sqrt(p (1 - p) / n): beyond this ziggurat's
    # R = 4.216 (drawn only by the tail algorithm of the rescue path), beyond the classic 256-layer
    # R = 3.654, and at 2 and 3 (layer edges and wedges)
    for t in (2.0, 3.0, 3.6541528853610088, R):
        p = 2 * stats.norm.sf(t)
        assert abs((np.abs(z) > t).mean() - p) < 5 * np.sqrt(p * (1 - p) / n), t


@njit
def _tail_draws(n, zt, zk, zf, zr):
    """n draws of the rescue path's tail algorithm (layer 0, candidate beyond R)."""
    aux = np.empty((4, 1), dtype=np.uint64)
    aux[0, 0], aux[1, 0], aux[2, 0], aux[3, 0] = 1, 2, 3, 4
    out = np.empty(n)
    for i in range(n):
        out[i] = rescue(0, zk[0], zr, aux, 0, zt, zk, zf, zr)
    return out


def test_tail_algorithm_draws_the_truncated_normal():
    t = _tail_draws(200_000, *ZIGGURAT)
    assert t.min() > R
    # KS against P(Z <= s | Z > R) = 1 - sf(s) / sf(R)
    assert stats.kstest(t, lambda s: 1 - stats.norm.sf(s) / stats.norm.sf(R)).pvalue > 1e-4


def test_streams_are_deterministic_and_distinct():
    a = standard_normals(np.uint64(7), 1000)
    assert np.array_equal(a, standard_normals(np.uint64(7), 1000))
    b = standard_normals(np.uint64(8), 1000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(1000)


@njit
def _lane_stream(seeds, c0, n_valid, n, zt, zk, zf, zr):
    """The kernels' generator loop: n rows of LANES normals for chains seeds[c0 ..]."""
    tab = lane_table(zt)
    st = frame_array(STATE_WORDS, np.uint64)
    z = frame_array(LANES, np.float64)
    rr = frame_array(LANES, np.uint64)
    aux = np.empty((4, LANES), dtype=np.uint64)
    seed_lanes(st, aux, seeds, c0, n_valid)
    out = np.empty((n, LANES))
    for t in range(n):
        if draw_lanes(z, rr, st, tab):
            rescue_lanes(z, rr, aux, zt, zk, zf, zr)
        for g in range(LANES):
            out[t, g] = z[g]
    return out


@pytest.mark.parametrize("n_valid", [LANES, 5])
def test_lanes_reproduce_each_chains_scalar_stream(n_valid):
    seeds = np.random.SeedSequence(3).generate_state(40, dtype=np.uint64)
    n = 50_000  # ~2000 rescues over the 16 lanes; padding lanes (g >= n_valid) repeat the last chain
    out = _lane_stream(seeds, 7, n_valid, n, *ZIGGURAT)
    for g in range(LANES):
        ref = np.empty(n)
        fill_normals(seeds[7 + min(g, n_valid - 1)], ref, *ZIGGURAT)
        assert np.array_equal(out[:, g], ref), g


@njit
def _scaled_vs_plain(seed, scales, n, zt):
    """Draw ``n`` candidates per scale twice from the same state: ``scale * x`` with
    :func:`draw_lane` and the folded product of :func:`draw_lane_scaled`."""
    st = np.empty(STATE_WORDS, dtype=np.uint64)
    st2 = np.empty(STATE_WORDS, dtype=np.uint64)
    s0, s1, s2, s3, _, _, _, _ = seed_state(seed)
    for g in range(LANES):
        st[g], st[LANES + g], st[2 * LANES + g], st[3 * LANES + g] = s0 + g, s1, s2, s3
    a = np.empty((scales.shape[0], n))
    b = np.empty((scales.shape[0], n))
    for j in range(scales.shape[0]):
        for i in range(n):
            st2[:] = st
            r, x, ok = draw_lane(st, i % LANES, zt)
            r2, y, ok2 = draw_lane_scaled(st2, i % LANES, zt, scales[j] * ZIGGURAT_SCALE)
            a[j, i] = scales[j] * x
            b[j, i] = y
    return a, b


def test_scaled_draw_is_bit_for_bit_the_scaled_candidate():
    from springblock.params import EPS_CEIL, EPS_FLOOR

    rng = np.random.default_rng(0)
    scales = np.concatenate([[0.0, EPS_FLOOR, EPS_CEIL, 1.0, 0.1, 3e-5],
                             np.exp(rng.uniform(math.log(EPS_FLOOR), math.log(EPS_CEIL), 40))])
    a, b = _scaled_vs_plain(np.uint64(99), scales, 20_000, TABLE)
    assert np.array_equal(a.view(np.uint64), b.view(np.uint64))
    assert np.all(np.isfinite(a)) and np.count_nonzero(a[1]) > 19_900  # the floor itself is not flushed
