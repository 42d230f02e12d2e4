"""Numba kernels: many chains x many parameter points in one call (SPEC §2.2-2.3).

Pure functions over arrays. Layout: chain ``j`` (of ``n_points * n_chains``) belongs to parameter
point ``p = j // n_chains``; per-point parameters are rows of 2-D arrays. The wrapper
:func:`springblock.dynamics.simulate` validates, seeds and allocates.

Lanes. The chains of one point are advanced ``LANES`` (16) at a time: one ``prange`` iteration
takes chains ``c .. c + 15`` of one point (the last group of a point is padded with copies of its
last chain, whose results are dropped) and keeps them lane-interleaved -- positions as
``(L + 2, LANES)``, generator states as ``4 x LANES`` words -- so that every inner loop runs over
the 16 lanes and compiles to vector instructions: the generator's update, the ziggurat's table
look-up (:func:`springblock._rng.draw_lanes`) and the spring/friction update alike. Lanes never
interact and each carries its own generator seeded from ``seeds[j]``, so a chain's numbers do not
depend on ``n_chains``, on which group it falls in, or on the number of threads; and vector and
scalar code perform the same IEEE operations, so the kernels agree bit for bit with
:mod:`springblock._reference` on the same normals.

Positions are updated synchronously (Jacobi): every block's force is computed from the old
positions. Per step and block the 16 lanes' normals are drawn where they are used: with
independent noise the generator (:func:`~springblock._rng.draw_lane`) and the physics share one
vector loop, and the rare lanes whose candidate needs a rescue are redone with the settled
normal; shared noise draws one row per step (:func:`~springblock._rng.draw_lanes`). When a point
has ``eps == 0`` no random numbers are drawn for it.

The friction update uses the soft threshold in the branch-free form
``sign(F) max(|F| - theta, 0) = F - clip(F, -mu<-, mu->)`` (theta = mu-> for F >= 0, mu<- otherwise;
both frictions are >= 0): outside the band it computes the same ``F - mu->`` or ``F + mu<-`` as
the reference, inside it gives exactly 0, so the results agree bit for bit (up to the sign of a
zero step, which does not change a position).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from springblock._rng import (
    LANES,
    STATE_WORDS,
    candidate,
    draw_lane,
    draw_lanes,
    frame_array,
    lane_table,
    rescue,
    rescue_lanes,
    seed_lanes,
)

__all__ = ["first_order", "first_order_serial", "second_order", "second_order_serial", "LANES"]


@njit(inline="always")
def _load_group(xa, xb, x, c0, n_valid, yp):
    """Fill the old/new position buffers ``(L + 2, LANES)``: row 0 the wall, row L+1 the anchor
    ``yp``, rows 1..L chains ``c0 ..`` of ``x`` (padding lanes repeat the last valid chain)."""
    L = x.shape[1]
    for g in range(LANES):
        c = c0 + min(g, n_valid - 1)
        xa[0, g] = 0.0
        xb[0, g] = 0.0
        xa[L + 1, g] = yp
        xb[L + 1, g] = yp
        for i in range(L):
            xa[i + 1, g] = x[c, i]


@njit(inline="always")
def _record(traj, rec, countdown, record_every, xa, c0, n_valid):
    """Count one step down; every ``record_every`` steps copy the positions into ``traj[:, rec]``."""
    countdown -= 1
    if countdown == 0:
        countdown = record_every
        if rec < traj.shape[1]:
            for g in range(n_valid):
                for i in range(traj.shape[2]):
                    traj[c0 + g, rec, i] = xa[i + 1, g]
            rec += 1
    return rec, countdown


@njit(inline="always")
def _store_group(x, xa, c0, n_valid):
    for g in range(n_valid):
        for i in range(x.shape[1]):
            x[c0 + g, i] = xa[i + 1, g]


@njit(inline="always")
def _record_start(traj, x, c0, n_valid):
    if traj.shape[1] > 0:
        for g in range(n_valid):
            for i in range(x.shape[1]):
                traj[c0 + g, 0, i] = x[c0 + g, i]


@njit(inline="always")
def _any_nonzero(a):
    for i in range(a.shape[0]):
        if a[i] != 0.0:
            return True
    return False


@njit(inline="always")
def _spring_force(xr, xo, xl, k0, k1, ka, a, pinned):
    """``k_{i+1} (x_{i+1} - x_i) - k_i (x_i - x_{i-1}) - kappa_i (x_i - a_i)`` in the reference's
    operation order; the pinning term is left out when ``pinned`` is False (it is then exactly 0)."""
    f = k1 * (xr - xo) - k0 * (xo - xl)
    if pinned:
        f = f - ka * (xo - a)
    return f


@njit(inline="always")
def _slide(xo, f, fw, nbw, h):
    """Overdamped step with Coulomb friction: ``x + eta (F - clip(F, -mu<-, mu->))``; ``nbw = -mu<-``."""
    return xo + h * (f - min(max(f, nbw), fw))


@njit(cache=True)
def _group_first_order(x, traj, seeds, c0, n_valid, kp, mf, mb, kap, pn, e0, lm, h, yp, sh, n_steps,
                       record_every, zt, zk, zf, zr):
    """Chains ``c0 .. c0 + n_valid - 1`` (one point, ``n_valid <= LANES``) of the overdamped model, in place.

    x : (n, L) positions in/out; traj : (n, R, L); kp : (L+1,); mf, mb, kap, pn : (L,); scalars.
    Per step and block i, for all lanes at once (old positions ``xa``, new ``xb``):

        F = k_{i+1} (x_{i+1} - x_i) - k_i (x_i - x_{i-1}) - kappa_i (x_i - a_i) + eps(t) xi
        x_i <- x_i + eta (F - clip(F, -mu<-_i, mu->_i))

    Independent noise: each lane's next candidate normal is drawn and used in one vector loop per
    block; the rare lanes whose candidate needs a rescue are redone with the settled normal.
    """
    L = x.shape[1]
    tab = lane_table(zt)
    st = frame_array(STATE_WORDS, np.uint64)
    z = frame_array(LANES, np.float64)
    rr = frame_array(LANES, np.uint64)
    aux = np.empty((4, LANES), dtype=np.uint64)
    seed_lanes(st, aux, seeds, c0, n_valid)
    # Old and new positions are xs[step % 2] and xs[1 - step % 2] (swapping two arrays instead made
    # LLVM give up vectorising the fused loop below).
    xs = np.empty((2, L + 2, LANES))
    _load_group(xs[0], xs[1], x, c0, n_valid, yp)
    _record_start(traj, x, c0, n_valid)
    for g in range(LANES):
        z[g] = 0.0  # eps == 0: F + 0 * 0, as in the reference
    noisy = e0 != 0.0
    pinned = _any_nonzero(kap)
    rec = 1
    countdown = record_every
    e_t = e0
    for step in range(n_steps):
        if lm != 0.0:
            e_t = e0 * math.exp(-lm * (step * h))
        xa = xs[step & 1]
        xb = xs[1 - (step & 1)]
        if noisy and sh:  # shared noise: one draw per step for all blocks
            if draw_lanes(z, rr, st, tab):
                rescue_lanes(z, rr, aux, zt, zk, zf, zr)
        for i in range(L):
            k0, k1, fw, nbw, ka, a = kp[i], kp[i + 1], mf[i], -mb[i], kap[i], pn[i]
            # (The row loops are written out here, not in helpers taking xa and xb: Numba increfs
            # and decrefs array arguments around every inlined call, an atomic op and a call per row.)
            if noisy and not sh:
                any_rescue = False
                for g in range(LANES):
                    r, zc, ok = draw_lane(st, g, tab)
                    rr[g] = r
                    any_rescue |= not ok
                    xo = xa[i + 1, g]
                    f = _spring_force(xa[i + 2, g], xo, xa[i, g], k0, k1, ka, a, pinned)
                    xb[i + 1, g] = _slide(xo, f + e_t * zc, fw, nbw, h)
                if any_rescue:
                    for g2 in range(LANES):
                        layer, sr, zs, ok2 = candidate(rr[g2], zt)
                        if not ok2:
                            zs = rescue(layer, sr, zs, aux, g2, zt, zk, zf, zr)
                            xo2 = xa[i + 1, g2]
                            f2 = _spring_force(xa[i + 2, g2], xo2, xa[i, g2], k0, k1, ka, a, pinned)
                            xb[i + 1, g2] = _slide(xo2, f2 + e_t * zs, fw, nbw, h)
            else:
                for g3 in range(LANES):
                    xo3 = xa[i + 1, g3]
                    f3 = _spring_force(xa[i + 2, g3], xo3, xa[i, g3], k0, k1, ka, a, pinned)
                    xb[i + 1, g3] = _slide(xo3, f3 + e_t * z[g3], fw, nbw, h)
        rec, countdown = _record(traj, rec, countdown, record_every, xb, c0, n_valid)
    _store_group(x, xs[n_steps & 1], c0, n_valid)


@njit(cache=True)
def _group_second_order(x, v, traj, seeds, c0, n_valid, kp, mf, mb, kap, pn, e0, lm, h, yp, sh, im, gm,
                        n_steps, record_every, zt, zk, zf, zr):
    """Chains ``c0 .. c0 + n_valid - 1`` of the Langevin model, in place (``v`` like ``x``).

    Per step and block, with a = (spring + pinning force) / m at the old positions:

        u     = v + dt (a - (gamma/m) v) + eps(t) sqrt(dt) xi
        v_new = u - clip(u, -mu<- dt, mu-> dt)     (= sign(u) max(|u| - theta dt, 0))
        x_new = x + dt v_new
    """
    L = x.shape[1]
    tab = lane_table(zt)
    st = frame_array(STATE_WORDS, np.uint64)
    z = frame_array(LANES, np.float64)
    rr = frame_array(LANES, np.uint64)
    aux = np.empty((4, LANES), dtype=np.uint64)
    seed_lanes(st, aux, seeds, c0, n_valid)
    xa = np.empty((L + 2, LANES))
    xb = np.empty((L + 2, LANES))
    _load_group(xa, xb, x, c0, n_valid, yp)
    vl = np.empty((L, LANES))
    for g in range(LANES):
        for i in range(L):
            vl[i, g] = v[c0 + min(g, n_valid - 1), i]
    _record_start(traj, x, c0, n_valid)
    for g in range(LANES):
        z[g] = 0.0
    noisy = e0 != 0.0
    sq = math.sqrt(h)
    fh = np.empty(L)  # friction impulses mu-> dt and -mu<- dt, rounded as the reference's theta * dt
    bh = np.empty(L)
    for i in range(L):
        fh[i] = mf[i] * h
        bh[i] = -(mb[i] * h)
    rec = 1
    countdown = record_every
    e_t = e0
    for step in range(n_steps):
        if lm != 0.0:
            e_t = e0 * math.exp(-lm * (step * h))
        es = e_t * sq
        if noisy and sh:
            if draw_lanes(z, rr, st, tab):
                rescue_lanes(z, rr, aux, zt, zk, zf, zr)
        for i in range(L):
            if noisy and not sh:
                if draw_lanes(z, rr, st, tab):
                    rescue_lanes(z, rr, aux, zt, zk, zf, zr)
            k0, k1, fw, bw, ka, a = kp[i], kp[i + 1], fh[i], bh[i], kap[i], pn[i]
            for g in range(LANES):
                xo = xa[i + 1, g]
                vo = vl[i, g]
                acc = (k1 * (xa[i + 2, g] - xo) - k0 * (xo - xa[i, g]) - ka * (xo - a)) * im
                u = vo + h * (acc - gm * vo)
                u = u + es * z[g]
                vn = u - min(max(u, bw), fw)
                vl[i, g] = vn
                xb[i + 1, g] = xo + h * vn
        xa, xb = xb, xa
        rec, countdown = _record(traj, rec, countdown, record_every, xa, c0, n_valid)
    _store_group(x, xa, c0, n_valid)
    for g in range(n_valid):
        for i in range(L):
            v[c0 + g, i] = vl[i, g]


@njit(inline="always")
def _n_groups(n, n_chains):
    """Groups of LANES chains: ``per_point`` per parameter point, ``n // n_chains`` points."""
    per_point = (n_chains + LANES - 1) // LANES
    return per_point, (n // n_chains) * per_point


@njit(inline="always")
def _first_order_group(j, per_point, x, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, eta, y, shared,
                       n_steps, record_every, zt, zk, zf, zr):
    p = j // per_point
    c = (j % per_point) * LANES
    _group_first_order(x, traj, seeds, p * n_chains + c, min(LANES, n_chains - c), k[p], muf[p], mub[p], kappa[p],
                       pin[p], eps[p], lam[p], eta[p], y[p], shared[p], n_steps, record_every, zt, zk, zf, zr)


@njit(inline="always")
def _second_order_group(j, per_point, x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, dt, y, shared,
                        inv_m, gamma_m, n_steps, record_every, zt, zk, zf, zr):
    p = j // per_point
    c = (j % per_point) * LANES
    _group_second_order(x, v, traj, seeds, p * n_chains + c, min(LANES, n_chains - c), k[p], muf[p], mub[p],
                        kappa[p], pin[p], eps[p], lam[p], dt[p], y[p], shared[p], inv_m[p], gamma_m[p], n_steps,
                        record_every, zt, zk, zf, zr)


# Each driver is its own function (not one source compiled twice with and without `parallel`) so
# that all of them can be cached: Numba's on-disk cache keys a function by its source location and
# signature, not by the `parallel` flag. Note also that the cache of a kernel is invalidated only
# by edits to *this* file: after changing an inlined helper of springblock._rng, delete
# springblock/__pycache__/*.nbi (the kernel-vs-reference tests fail on a stale cache).


@njit(parallel=True, cache=True)
def first_order(x, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, eta, y, shared, n_steps, record_every,
                zt, zk, zf, zr):
    """Overdamped chains, groups of LANES chains in parallel.

    x : (n, L) float64, initial positions in, final positions out (n = n_points * n_chains)
    traj : (n, R, L) float64, positions at steps 0, r, 2r, ... (R = 0 when not recording)
    seeds : (n,) uint64
    k : (P, L+1); muf, mub, kappa, pin : (P, L); eps, lam, eta, y : (P,); shared : (P,) bool
    zt, zk, zf, zr : :data:`springblock._rng.ZIGGURAT`
    """
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in prange(n_groups):
        _first_order_group(j, per_point, x, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, eta, y, shared,
                           n_steps, record_every, zt, zk, zf, zr)


@njit(cache=True)
def first_order_serial(x, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, eta, y, shared, n_steps,
                       record_every, zt, zk, zf, zr):
    """:func:`first_order` on the calling thread only (results are identical)."""
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in range(n_groups):
        _first_order_group(j, per_point, x, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, eta, y, shared,
                           n_steps, record_every, zt, zk, zf, zr)


@njit(parallel=True, cache=True)
def second_order(x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, dt, y, shared, inv_m, gamma_m,
                 n_steps, record_every, zt, zk, zf, zr):
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
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in prange(n_groups):
        _second_order_group(j, per_point, x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, dt, y,
                            shared, inv_m, gamma_m, n_steps, record_every, zt, zk, zf, zr)


@njit(cache=True)
def second_order_serial(x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, dt, y, shared, inv_m,
                        gamma_m, n_steps, record_every, zt, zk, zf, zr):
    """:func:`second_order` on the calling thread only (results are identical)."""
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in range(n_groups):
        _second_order_group(j, per_point, x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin, eps, lam, dt, y,
                            shared, inv_m, gamma_m, n_steps, record_every, zt, zk, zf, zr)
