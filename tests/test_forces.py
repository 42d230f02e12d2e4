"""Each force term of one time step, against hand-derived numbers on a 3-block chain.

The chain (all numbers dyadic, so every result below is exact in floating point):

    wall x_0 = 0, blocks x = (1/4, 1/2, 1), anchor y = 2, springs k = (1, 2, 1/2, 1)
    elongations e = (1/4, 1/4, 1/2, 1), tensions T = k e = (1/4, 1/2, 1/4, 1)
    spring force F_i = T_{i+1} - T_i = (1/4, -1/4, 3/4)

First order (SPEC §2.2), eta = 1/8: ``x_i <- x_i + eta S(F_i + eps xi_i)``, ``S`` the soft threshold
with mu-> for a force toward the anchor (>= 0) and mu<- otherwise. Second order (SPEC §2.3): see
:func:`test_second_order_step`. Each case is run through the production kernel (``simulate``, or
the kernels on injected normals when there is noise) and through the reference.
"""

import numpy as np
import pytest

from springblock import ChainParams, simulate
from springblock import _reference as ref
from springblock.dynamics import _simulate_normals

X0 = np.array([0.25, 0.5, 1.0])
BASE = ChainParams(n_blocks=3, k=(1.0, 2.0, 0.5, 1.0), y=2.0, eta=0.125, n_steps=1, eps=0.0,
                   mu_forward=0.0, mu_backward=0.0)
Z = np.array([0.5, -1.0, 2.0])  # injected normals of the one step (block order)

FIRST_ORDER = {
    # springs only: x + F/8 with F = (1/4, -1/4, 3/4). A Gauss-Seidel update would give block 2
    # F_2 = -3/16 (from the moved block 1): this also pins the synchronous (Jacobi) update.
    "springs": (dict(), None, [0.28125, 0.46875, 1.09375]),
    # anchor pull: y = 3 adds k_4 (3 - 2) = 1 to the last block only: F = (1/4, -1/4, 7/4)
    "anchor": (dict(y=3.0), None, [0.28125, 0.46875, 1.21875]),
    # pinning -kappa_i (x_i - a_i), kappa = (1/2, 0, 1/4), a = (1, 0, 1/2): (3/8, 0, -1/8) added
    "pinning": (dict(kappa=(0.5, 0.0, 0.25), pin_position=(1.0, 0.0, 0.5)), None, [0.328125, 0.46875, 1.078125]),
    # friction mu-> = (1/8, 1/8, 1), mu<- = (1/2, 1/8, 1/2): block 1 slides forward 1/4 - 1/8, block 2
    # slides backward -1/4 + 1/8, block 3 sticks (3/4 < mu->_3: static friction, the dead zone)
    "friction": (dict(mu_forward=(0.125, 0.125, 1.0), mu_backward=(0.5, 0.125, 0.5)), None,
                 [0.265625, 0.484375, 1.0]),
    # static backward: |F_2| = 1/4 < mu<- = 1/2 sticks; mu-> = 0 lets blocks 1 and 3 move freely
    "static-backward": (dict(mu_forward=0.0, mu_backward=0.5), None, [0.28125, 0.5, 1.09375]),
    # independent noise eps xi = (1/8, -1/4, 1/2): F + eps xi = (3/8, -1/2, 5/4)
    "noise": (dict(eps=0.25), Z, [0.296875, 0.4375, 1.15625]),
    # shared noise: one normal (1/2) for all blocks, eps xi = 1/8 each: (3/8, -1/8, 7/8)
    "noise-shared": (dict(eps=0.25, noise_mode="shared"), Z[:1], [0.296875, 0.484375, 1.109375]),
    # noise enters before the threshold and breaks static friction: with the friction above,
    # (3/8 - 1/8, -1/2 + 1/8, 5/4 - 1) = (1/4, -3/8, 1/4)
    "noise-breaks-static": (dict(eps=0.25, mu_forward=(0.125, 0.125, 1.0), mu_backward=(0.5, 0.125, 0.5)), Z,
                            [0.28125, 0.453125, 1.03125]),
}


@pytest.mark.parametrize("case", list(FIRST_ORDER))
def test_first_order_step(case):
    changes, z, expected = FIRST_ORDER[case]
    p = BASE.replace(**changes)
    if z is None:
        x_kernel = simulate(p, n_chains=1, x0=X0).x[0]  # eps = 0: the production path draws nothing
    else:
        x_kernel = _simulate_normals(p, z[None], x0=X0).x[0]
    x_ref, _ = ref.first_order(p, z, x0=X0)
    np.testing.assert_array_equal(x_ref, expected)
    np.testing.assert_array_equal(x_kernel, expected)


SECOND = ChainParams(order=2, n_blocks=3, k=(1.0, 2.0, 0.5, 1.0), y=2.0, eta=0.25, m=2.0, gamma=1.0, n_steps=1,
                     eps=0.0, mu_forward=0.0, mu_backward=0.0)
V0 = np.array([0.5, 0.0, -0.25])
SECOND_ORDER = {
    # u = v + dt (F/m - (gamma/m) v) with F/m = (1/8, -1/8, 3/8), (gamma/m) v = (1/4, 0, -1/8):
    # u = (15/32, -1/32, -1/8); no friction: v' = u, x' = x + dt v'
    "springs-damping": (dict(), None, [0.46875, -0.03125, -0.125]),
    # noise eps sqrt(dt) xi = (1/4)(1/2)(1/2, -1, 2) = (1/16, -1/8, 1/4): u = (17/32, -5/32, 1/8)
    "noise": (dict(eps=0.25), Z, [0.53125, -0.15625, 0.125]),
    # friction impulses dt mu: forward (1/8, 1/8, 1/4), backward 1/8: block 1 slides (17/32 - 4/32),
    # block 2 slides back (-5/32 + 4/32), block 3 sticks (1/8 inside [-1/8, 1/4]: v' = 0 exactly)
    "noise-friction": (dict(eps=0.25, mu_forward=(0.5, 0.5, 1.0), mu_backward=0.5), Z, [0.40625, -0.03125, 0.0]),
}


@pytest.mark.parametrize("case", list(SECOND_ORDER))
def test_second_order_step(case):
    """Semi-implicit Euler with implicit Coulomb friction, one step from ``(X0, V0)``, dt = 1/4,
    m = 2, gamma = 1: ``u = v + dt (F/m - (gamma/m) v) + eps sqrt(dt) xi``, ``v' = u - clip(u,
    -mu<- dt, mu-> dt)``, ``x' = x + dt v'``."""
    changes, z, v_expected = SECOND_ORDER[case]
    p = SECOND.replace(**changes)
    x_expected = X0 + 0.25 * np.array(v_expected)
    if z is None:
        res = simulate(p, n_chains=1, x0=X0, v0=V0)
    else:
        res = _simulate_normals(p, z[None], x0=X0, v0=V0)
    x_ref, v_ref, _ = ref.second_order(p, z, x0=X0, v0=V0)
    for x, v in ((x_ref, v_ref), (res.x[0], res.v[0])):
        np.testing.assert_array_equal(v, v_expected)
        np.testing.assert_array_equal(x, x_expected)


def test_first_order_forward_means_toward_the_anchor():
    """The thresholds follow the sign of the force, not the side of the anchor: with y = -2 the
    anchor spring pushes block 3 toward the wall (T_4 = k_4 (y - x_3) = -3, F_3 = -3 - 1/4 = -13/4),
    so mu<- brakes it and mu-> does not."""
    p = BASE.replace(y=-2.0, mu_forward=10.0, mu_backward=(10.0, 10.0, 0.25))
    # blocks 1 and 2 stick (|F| <= 1/4 < 10); block 3: -13/4 + 1/4 = -3, x_3 = 1 - 3/8
    expected = [0.25, 0.5, 0.625]
    np.testing.assert_array_equal(simulate(p, n_chains=1, x0=X0).x[0], expected)
    np.testing.assert_array_equal(ref.first_order(p, None, x0=X0)[0], expected)
