"""The simulator's own normal generator: distribution and determinism."""

import numpy as np
from scipy import stats

from springblock import standard_normals
from springblock._rng import ZIGGURAT


def test_tables_are_consistent():
    k, w, f = ZIGGURAT
    x = w * 2.0**52
    assert np.all(np.diff(x) < 0) and f[-1] == 1.0 and k[-1] == 0
    # every layer has the same area V: x_i (f(x_{i+1}) - f(x_i)) for i >= 1
    areas = x[1:255] * (f[2:256] - f[1:255])
    np.testing.assert_allclose(areas, 0.00492867323399, rtol=1e-9)


def test_normals_match_the_standard_normal():
    z = standard_normals(np.uint64(2024), 2_000_000)
    n = z.size
    # moments within 5 standard errors: SE(mean)=1/sqrt(n), SE(var)=sqrt(2/n), SE(kurt)=sqrt(24/n)
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # the tail beyond R = 3.654 (sampled by the rare path) has the right mass, within 5 SE
    p = 2 * stats.norm.sf(3.6541528853610088)
    assert abs((np.abs(z) > 3.6541528853610088).mean() - p) < 5 * np.sqrt(p / n)


def test_streams_are_deterministic_and_distinct():
    a = standard_normals(np.uint64(7), 1000)
    assert np.array_equal(a, standard_normals(np.uint64(7), 1000))
    b = standard_normals(np.uint64(8), 1000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(1000)
