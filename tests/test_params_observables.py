"""Parameter validation and the load-curve shape numbers."""

import subprocess
import sys

import numpy as np
import pytest

from springblock import ChainParams
from springblock import observables as ob


@pytest.mark.parametrize("kw,msg", [
    (dict(mu_forward=-0.1), "mu_forward must be >= 0"),
    (dict(mu_backward=[0.1] * 6), "mu_backward must be a scalar or have 7 entries"),
    (dict(eps=-1.0), "eps must be >= 0"),
    (dict(n_blocks=0), "n_blocks must be an integer >= 1"),
    (dict(eta=0.6), "unstable"),
    (dict(k=0.0), "k must be > 0"),
    (dict(noise_mode="pink"), "noise_mode must be one of"),
    (dict(order=3), "order must be 1"),
    (dict(y=float("nan")), "y must be finite"),
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
    d = ob.loads(curve)
    assert d.sum() == pytest.approx(curve[0] - curve[-1])
    assert ob.curvature(curve) == pytest.approx(1.0 - 0.2)
    assert ob.normalized_curvature(curve) == pytest.approx(0.8 / 2.0)
    assert ob.linearity(curve) == pytest.approx(np.std([1.0, 0.5, 0.3, 0.2]))
    assert ob.regime(curve) == "convex"
    assert ob.regime(curve[::-1].max() - curve[::-1] + 1) == "concave"  # loads reversed
    assert ob.regime(np.linspace(2, 0, 8)) == "linear" and ob.linearity(np.linspace(2, 0, 8)) < 1e-15
    assert ob.regime(np.array([0.0, 1.0, 2.0])) == "undefined"
    np.testing.assert_allclose(ob.normalized_curve(curve), (curve - 1) / 2)


def test_chain_curve_equals_elongations():
    x = np.array([0.1, 0.3, 0.35])
    np.testing.assert_allclose(ob.loads(ob.load_curve(x, 1.0)), [0.1, 0.2, 0.05])
    np.testing.assert_allclose(ob.elongations(x, 1.0), [0.1, 0.2, 0.05, 0.65])
    assert ob.chain_energy(x, 1.0, 2.0) == pytest.approx(np.sum(np.square([0.1, 0.2, 0.05, 0.65])))  # k/2 e^2


def test_dependency_direction():
    """springblock never imports torch or pandas; nets never imports numba (fresh interpreters)."""
    subprocess.run([sys.executable, "-c", "import sys, springblock.dynamics, springblock.theory; "
                    "assert 'torch' not in sys.modules and 'pandas' not in sys.modules"], check=True)
    subprocess.run([sys.executable, "-c", "import sys, nets; assert 'numba' not in sys.modules, 'nets imported numba'"],
                   check=True)
