"""Numba kernels: many chains x many parameter points in one call (SPEC §2.2-2.3).

Pure functions over arrays. Layout: chain ``j`` (of ``n_points * n_chains``) belongs to parameter
point ``p = j // n_chains``; per-point parameters are rows of 2-D arrays. Each chain seeds its own
generator from ``seeds[j]`` inside the parallel loop, so results do not depend on the number of
threads. The wrapper :func:`springblock.dynamics.simulate` validates, seeds and allocates.

Positions are updated synchronously (Jacobi): every block's force is computed from the old
positions. When a point has ``eps == 0`` no random numbers are drawn for it.

The drivers (``prange`` over chains) call one compiled function per chain: Numba's parfor
lowering of a large loop body ran at half the speed of the same body compiled as a function.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from springblock._rng import normal, seed_state

__all__ = ["first_order", "first_order_serial", "second_order", "second_order_serial", "fill_block", "BLOCK_STEPS"]

#: Steps whose normals are drawn in one tight generator loop before they are used.
BLOCK_STEPS = 64


@njit(cache=True)
def fill_block(buf, n, s0, s1, s2, s3, zk, zw, zf):
    """Draw ``n`` normals into ``buf[:n]``; return the advanced generator state."""
    for i in range(n):
        buf[i], s0, s1, s2, s3 = normal(s0, s1, s2, s3, zk, zw, zf)
    return s0, s1, s2, s3


@njit(inline="always")
def _padded_buffers(xj, yp, tj):
    """Old/new position buffers ``[0, x_1..x_L, y]``; writes the step-0 record if recording."""
    L = xj.shape[0]
    xa = np.empty(L + 2)
    xb = np.empty(L + 2)
    xa[0] = 0.0
    xb[0] = 0.0
    xa[L + 1] = yp
    xb[L + 1] = yp
    for i in range(L):
        xa[i + 1] = xj[i]
        if tj.shape[0] > 0:
            tj[0, i] = xj[i]
    return xa, xb


@njit(inline="always")
def _record(tj, rec, countdown, record_every, xa):
    """Count one step down; every ``record_every`` steps copy the positions into ``tj[rec]``."""
    countdown -= 1
    if countdown == 0:
        countdown = record_every
        if rec < tj.shape[0]:
            for i in range(tj.shape[1]):
                tj[rec, i] = xa[i + 1]
            rec += 1
    return rec, countdown


@njit(cache=True)
def _chain_first_order(xj, tj, seed, kp, mf, mb, kap, pn, e0, lm, h, yp, sh, n_steps, record_every, zk, zw, zf):
    """One overdamped chain, in place: ``xj`` (L,) positions, ``tj`` (R, L) trajectory rows.

    The normals of ``BLOCK_STEPS`` steps are drawn at once into a small buffer (one tight
    generator loop, :func:`fill_block`); then each step updates all blocks from the old positions
    held in a padded buffer ``[0, x_1..x_L, y]`` (a second buffer takes the new positions; the
    two are swapped). Keeping the generator loop apart from the update's arithmetic measured
    ~15 % faster than drawing inside the update loop.
    """
    L = xj.shape[0]
    noisy = e0 != 0.0
    n_draw = 1 if sh else L  # normals per step
    stride = 0 if sh else 1  # block i reads zb[i * stride]: shared noise reads zb[0]
    s0, s1, s2, s3 = seed_state(seed)
    xa, xb = _padded_buffers(xj, yp, tj)  # old / new positions, padded with the wall and y
    zb = np.zeros(BLOCK_STEPS * n_draw)  # normals of the next BLOCK_STEPS steps
    rec = 1
    countdown = record_every  # steps until the next record (no modulo in the loop)
    e_t = e0
    step = 0
    while step < n_steps:
        nb = min(BLOCK_STEPS, n_steps - step)
        if noisy:
            s0, s1, s2, s3 = fill_block(zb, nb * n_draw, s0, s1, s2, s3, zk, zw, zf)
        for b in range(nb):
            if lm != 0.0:
                e_t = e0 * math.exp(-lm * ((step + b) * h))
            off = b * n_draw
            for i in range(L):
                xo = xa[i + 1]
                f = kp[i + 1] * (xa[i + 2] - xo) - kp[i] * (xo - xa[i]) - kap[i] * (xo - pn[i])
                f = f + e_t * zb[off + i * stride]
                # soft threshold, branch-free: x += eta sign(F) max(|F| - theta, 0)
                th = mf[i] if f >= 0.0 else mb[i]
                mv = max(abs(f) - th, 0.0)
                xb[i + 1] = xo + h * math.copysign(mv, f)
            xa, xb = xb, xa
            rec, countdown = _record(tj, rec, countdown, record_every, xa)
        step += nb
    for i in range(L):
        xj[i] = xa[i + 1]


def _first_order_impl(x, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, eta, y, shared,
                      n_steps, record_every, zk, zw, zf):
    """Overdamped chains.

    x : (n, L) float64, initial positions in, final positions out (n = n_points * n_chains)
    traj : (n, R, L) float64, positions at steps 0, r, 2r, ... (R = 0 when not recording)
    seeds : (n,) uint64
    k : (P, L+1); muf, mub, kappa, pin : (P, L); eps, lam, eta, y : (P,); shared : (P,) bool
    """
    for j in prange(x.shape[0]):
        p = j // n_chains
        _chain_first_order(x[j], traj[j], seeds[j], k[p], muf[p], mub[p], kappa[p], pin[p], eps[p], lam[p],
                           eta[p], y[p], shared[p], n_steps, record_every, zk, zw, zf)


@njit(cache=True)
def _chain_second_order(xj, vj, tj, seed, kp, mf, mb, kap, pn, e0, lm, h, yp, sh, im, gm, n_steps, record_every,
                        zk, zw, zf):
    """One Langevin chain, in place: ``xj``, ``vj`` (L,), ``tj`` (R, L). Same two-pass layout as
    :func:`_chain_first_order`; velocities are updated in place (each depends only on itself)."""
    L = xj.shape[0]
    noisy = e0 != 0.0
    n_draw = 1 if sh else L  # normals per step
    stride = 0 if sh else 1  # block i reads zb[i * stride]: shared noise reads zb[0]
    sq = math.sqrt(h)
    s0, s1, s2, s3 = seed_state(seed)
    xa, xb = _padded_buffers(xj, yp, tj)
    zb = np.zeros(BLOCK_STEPS * n_draw)
    rec = 1
    countdown = record_every
    e_t = e0
    step = 0
    while step < n_steps:
        nb = min(BLOCK_STEPS, n_steps - step)
        if noisy:
            s0, s1, s2, s3 = fill_block(zb, nb * n_draw, s0, s1, s2, s3, zk, zw, zf)
        for b in range(nb):
            if lm != 0.0:
                e_t = e0 * math.exp(-lm * ((step + b) * h))
            off = b * n_draw
            for i in range(L):
                xo = xa[i + 1]
                vo = vj[i]
                a = (kp[i + 1] * (xa[i + 2] - xo) - kp[i] * (xo - xa[i]) - kap[i] * (xo - pn[i])) * im
                u = vo + h * (a - gm * vo)
                u = u + e_t * sq * zb[off + i * stride]
                th = mf[i] if u >= 0.0 else mb[i]
                vn = math.copysign(max(abs(u) - th * h, 0.0), u)
                vj[i] = vn
                xb[i + 1] = xo + h * vn
            xa, xb = xb, xa
            rec, countdown = _record(tj, rec, countdown, record_every, xa)
        step += nb
    for i in range(L):
        xj[i] = xa[i + 1]


def _second_order_impl(x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, dt, y, shared,
                       inv_m, gamma_m, n_steps, record_every, zk, zw, zf):
    """Langevin chains, semi-implicit Euler with implicit (set-valued) Coulomb friction.

    Per block and step, with a = spring + pinning force / m evaluated at the old positions:

        u     = v + dt (a - (gamma/m) v) + eps(t) sqrt(dt) xi
        v_new = u - mu-> dt  if u >  mu-> dt
                u + mu<- dt  if u < -mu<- dt
                0            otherwise            (stick: friction absorbs the impulse)
        x_new = x + dt v_new

    ``v_new`` is the proximal step of the friction potential mu-> v+ + mu<- v-, i.e. friction is
    treated implicitly: a block at rest stays at rest while the impulse of all other forces over
    the step stays within the friction band, and a moving block that friction would reverse stops.
    x, v : (n, L) in/out; inv_m = 1/m, gamma_m = gamma/m : (P,); other arrays as first order.
    """
    for j in prange(x.shape[0]):
        p = j // n_chains
        _chain_second_order(x[j], v[j], traj[j], seeds[j], k[p], muf[p], mub[p], kappa[p], pin[p], eps[p],
                            lam[p], dt[p], y[p], shared[p], inv_m[p], gamma_m[p], n_steps, record_every,
                            zk, zw, zf)


# The drivers are compiled twice, parallel and serial (for the tests of thread independence). Only
# the per-chain functions are cached: Numba's on-disk cache keys a function by its source location
# and signature, not by the `parallel` flag, so two cached compilations of one driver would collide.
first_order = njit(parallel=True)(_first_order_impl)
first_order_serial = njit(_first_order_impl)
second_order = njit(parallel=True)(_second_order_impl)
second_order_serial = njit(_second_order_impl)
