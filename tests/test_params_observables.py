"""Parameter validation and the load-curve shape numbers."""

import subprocess
import sys

import numpy as np
import pytest

from springblock import ChainParams, simulate
from springblock import observables as ob


@pytest.mark.parametrize("kw,msg", [
    (dict(mu_forward=-0.1), "mu_forward=-0.1: must be >= 0"),
    (dict(mu_backward=[0.1] * 6), "mu_backward must be a scalar or have 7 entries"),
    (dict(eps=-1.0), "eps=-1.0: must be >= 0"),
    (dict(n_blocks=0), "n_blocks=0: must be an integer >= 1"),
    (dict(eta=0.6), "unstable"),
    (dict(k=0.0), "k=0.0: must be > 0"),
    (dict(noise_mode="pink"), "noise_mode='pink': must be one of"),
    (dict(order=3), "order=3: must be the integer 1"),
    (dict(y=float("nan")), "y=nan: must be finite"),
    (dict(order=2, eta=3.0), "unstable"),
    (dict(n_steps=0), "n_steps"),
])
def test_bad_parameters_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ChainParams(**kw)


def test_overshoot_warning_and_roundtrip():
    with pytest.warns(RuntimeWarning, match="overshoots"):
        ChainParams(eta=0.3)
    p = ChainParams(k=np.linspace(1, 2, 8), mu_backward=0.2)
    assert ChainParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown ChainParams field"):
        ChainParams.from_dict({"mu": 1})


def test_loads_telescope_and_shape_numbers():
    curve = np.array([3.0, 2.0, 1.5, 1.2, 1.0])
    np.testing.assert_allclose(ob.loads(curve), [1.0, 0.5, 0.3, 0.2], rtol=0, atol=1e-15)
    assert ob.curvature(curve) == pytest.approx(1.0 - 0.2)
    # c is the sum (not minus the sum) of the curve's second differences (0.5, 0.2, 0.1): > 0 convex
    assert np.diff(curve, 2) == pytest.approx([0.5, 0.2, 0.1]) and ob.curvature(curve) == pytest.approx(0.8)
    assert ob.normalized_curvature(curve) == pytest.approx(0.8 / 2.0)
    assert ob.linearity(curve) == pytest.approx(np.std([1.0, 0.5, 0.3, 0.2]))
    assert ob.regime(curve) == "convex"
    assert ob.regime(curve[::-1].max() - curve[::-1] + 1) == "concave"  # loads reversed
    assert ob.regime(np.linspace(2, 0, 8)) == "linear" and ob.linearity(np.linspace(2, 0, 8)) < 1e-15
    assert ob.regime(np.array([0.0, 1.0, 2.0])) == "undefined"
    np.testing.assert_allclose(ob.normalized_curve(curve), (curve - 1) / 2)


def test_chain_loads_and_elongations_by_hand():
    """Blocks at (0.1, 0.3, 0.35), wall 0, anchor y = 1: elongations of the 4 springs (0.1, 0.2,
    0.05, 0.65); the loads are the first 3 (the anchor spring's 0.65 is the curve's end value)."""
    x = np.array([0.1, 0.3, 0.35])
    np.testing.assert_allclose(ob.load_curve(x, 1.0), [1.0, 0.9, 0.7, 0.65], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ob.loads(ob.load_curve(x, 1.0)), [0.1, 0.2, 0.05], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ob.elongations(x, 1.0), [0.1, 0.2, 0.05, 0.65], rtol=0, atol=1e-15)
    assert ob.chain_energy(x, 1.0, 2.0) == pytest.approx(np.sum(np.square([0.1, 0.2, 0.05, 0.65])))  # k/2 e^2
    # pinning energy kappa_i (x_i - a_i)^2 / 2 with kappa = (1, 0, 2), a = (0.5, 9, 0.25)
    pin = 0.5 * (0.4**2 + 2 * 0.1**2)
    assert ob.chain_energy(x, 1.0, 2.0, kappa=[1.0, 0.0, 2.0], pin_position=[0.5, 9.0, 0.25]) == pytest.approx(
        np.sum(np.square([0.1, 0.2, 0.05, 0.65])) + pin)
    # SimulationResult on the same state (held by friction, no noise): loads (L) and elongations (L + 1)
    p = ChainParams(n_blocks=3, eps=0.0, mu_forward=10.0, mu_backward=10.0, n_steps=3)
    res = simulate(p, n_chains=2, x0=x)
    np.testing.assert_allclose(res.loads(), [0.1, 0.2, 0.05], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.loads(mean=False), [[0.1, 0.2, 0.05]] * 2, rtol=0, atol=1e-15)
    assert not hasattr(res, "elongations")  # one word per concept: the L + 1 springs are ob.elongations


def test_dependency_direction():
    """springblock never imports torch or pandas; nets never imports numba (fresh interpreters)."""
    subprocess.run([sys.executable, "-c", "import sys, springblock.dynamics, springblock.theory; "
                    "assert 'torch' not in sys.modules and 'pandas' not in sys.modules"], check=True)
    subprocess.run([sys.executable, "-c", "import sys, nets; assert 'numba' not in sys.modules, 'nets imported numba'"],
                   check=True)
