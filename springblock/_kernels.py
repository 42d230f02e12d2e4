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
independent noise the generator (:func:`~springblock._rng.draw_lane_scaled`, which folds eps(t)
into the ziggurat's power-of-two scaling: one multiplication fewer, the same bits) and the
physics share one vector loop, and the rare lanes whose candidate needs a rescue are redone with
the settled normal; shared noise draws one row per step (:func:`~springblock._rng.draw_lanes`).
When a point has ``eps == 0`` no random numbers are drawn for it.

Injected normals (tests). :func:`first_order_injected` and :func:`second_order_injected` run the
same group kernels, compiled with ``injected=True``: each lane reads its normals from a row of
``xi`` (the stream :func:`springblock.dynamics.standard_normals` would give, in the same order)
instead of drawing them, and feeds them through the kernels' shared-noise update
``F + eps(t) z`` -- the operations the drawing path performs, bit for bit (the folded scaling
of :func:`~springblock._rng.draw_lane_scaled` is exact). With a chain's own stream they reproduce
:func:`first_order` exactly; with chosen normals (the same Brownian path at several step sizes)
they measure the production kernels' strong order.

Memory. Every array a group writes in its step loop is its own and starts on a cache line
(:func:`_aligned_empty`, 64-byte aligned frame arrays): with the allocator's 16-byte alignment,
vector loads and stores split cache lines in some processes and not others, and two threads'
buffers could share a line. Nothing shared is passed to a call in the step loop either (Numba
increfs array arguments around each call, an atomic op on the array's shared header).

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
    ZIGGURAT_SCALE,
    candidate,
    draw_lane_scaled,
    draw_lanes,
    frame_array,
    lane_table,
    rescue,
    rescue_lanes,
    seed_lanes,
)
from springblock.params import EPS_FLOOR

__all__ = ["first_order", "first_order_serial", "second_order", "second_order_serial", "first_order_injected",
           "second_order_injected", "LANES"]


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
def _eps_t(e0, lm, h, step):
    """The noise amplitude at ``step``: ``e0 exp(-lm step h)``, 0 below ``EPS_FLOOR`` (as the
    reference's ``_eps_t``)."""
    e = e0 if lm == 0.0 else e0 * math.exp(-lm * (step * h))
    return e if e >= EPS_FLOOR else 0.0


@njit(inline="always")
def _aligned_empty(n):
    """An uninitialised float64 array of ``n`` elements starting on a 64-byte boundary (a cache
    line, so a row of 8 lanes is one cache line: with NumPy's allocator's 16- or 32-byte
    alignment, half the processes split every vector load and store in two and run ~40 % slower)."""
    buf = np.empty(n + 8)
    off = ((64 - buf.ctypes.data % 64) % 64) // 8
    return buf[off:off + n]


@njit(inline="always")
def _any_nonzero(a):
    for i in range(a.shape[0]):
        if a[i] != 0.0:
            return True
    return False


@njit(inline="always")
def _inject(z, xi, c0, n_valid, col):
    """``z[g] = xi[chain of lane g, col]`` (padding lanes repeat the last valid chain)."""
    for g in range(LANES):
        z[g] = xi[c0 + min(g, n_valid - 1), col]


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


def _make_group_first_order(pinned, injected):
    """The first-order group kernel with the pinning term compiled in (``pinned=True``) or out: a
    constant here, so the unpinned kernel's vector loop carries no pinning branch or operands.
    ``injected=True``: normals are read from ``xi`` (see the module docstring), not drawn."""

    @njit(cache=True)
    def _group_first_order(x, traj, seeds, xi, c0, n_valid, kp, mf, mb, kap, pn, e0, lm, h, yp, sh, n_steps,
                           record_every, zt, zk, zf, zr):
        """Chains ``c0 .. c0 + n_valid - 1`` (one point, ``n_valid <= LANES``) of the overdamped model, in place.

        x : (n, L) positions in/out; traj : (n, R, L); kp : (L+1,); mf, mb, kap, pn : (L,); scalars;
        xi : (n, n_normals) injected normals (``injected`` only; otherwise unused).
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
        # Old and new positions are xs[cur] and xs[1 - cur], indexed in place: no per-step views (each
        # view is an NRT incref/decref call) and no call taking ``traj`` in the step loop (Numba increfs
        # array arguments around every call; on ``traj``, shared by all threads, that atomic made two
        # threads contend for one cache line every step).
        xs = _aligned_empty(2 * (L + 2) * LANES).reshape((2, L + 2, LANES))
        _load_group(xs[0], xs[1], x, c0, n_valid, yp)
        _record_start(traj, x, c0, n_valid)
        # Thread-local copies of the rescue's tables (the shared ones would be increfed, atomically and
        # from every thread, at each rescue call).
        tk = zk.copy()
        tf = zf.copy()
        for g in range(LANES):
            z[g] = 0.0  # eps == 0: F + 0 * 0, as in the reference
        noisy = e0 != 0.0
        n_rec = traj.shape[1]
        rec = 1
        countdown = record_every
        e_t = _eps_t(e0, lm, h, 0)
        for step in range(n_steps):
            if lm != 0.0:
                e_t = _eps_t(e0, lm, h, step)
            es = e_t * ZIGGURAT_SCALE  # e_t * x == (sr M) * es, bit for bit (see draw_lane_scaled)
            cur = step & 1
            nxt = 1 - cur
            if noisy and sh:  # shared noise: one draw per step for all blocks
                if injected:
                    _inject(z, xi, c0, n_valid, step)
                elif draw_lanes(z, rr, st, tab):
                    rescue_lanes(z, rr, aux, tab, tk, tf, zr)
            for i in range(L):
                k0, k1, fw, nbw, ka, a = kp[i], kp[i + 1], mf[i], -mb[i], kap[i], pn[i]
                # (The row loops are written out here, not in helpers taking xs: Numba increfs and
                # decrefs array arguments around every inlined call, an atomic op and a call per row.)
                if injected and noisy and not sh:
                    _inject(z, xi, c0, n_valid, step * L + i)
                if noisy and not sh and not injected:
                    any_rescue = False
                    for g in range(LANES):
                        r, ez, ok = draw_lane_scaled(st, g, tab, es)
                        rr[g] = r
                        any_rescue |= not ok
                        xo = xs[cur, i + 1, g]
                        f = _spring_force(xs[cur, i + 2, g], xo, xs[cur, i, g], k0, k1, ka, a, pinned)
                        xs[nxt, i + 1, g] = _slide(xo, f + ez, fw, nbw, h)
                    if any_rescue:
                        for g2 in range(LANES):
                            layer, sr, zs, ok2 = candidate(rr[g2], tab)
                            if not ok2:
                                zs = rescue(layer, sr, zs, aux, g2, tab, tk, tf, zr)
                                xo2 = xs[cur, i + 1, g2]
                                f2 = _spring_force(xs[cur, i + 2, g2], xo2, xs[cur, i, g2], k0, k1, ka, a, pinned)
                                xs[nxt, i + 1, g2] = _slide(xo2, f2 + e_t * zs, fw, nbw, h)
                else:
                    for g3 in range(LANES):
                        xo3 = xs[cur, i + 1, g3]
                        f3 = _spring_force(xs[cur, i + 2, g3], xo3, xs[cur, i, g3], k0, k1, ka, a, pinned)
                        xs[nxt, i + 1, g3] = _slide(xo3, f3 + e_t * z[g3], fw, nbw, h)
            countdown -= 1
            if countdown == 0:  # record (written out: see above)
                countdown = record_every
                if rec < n_rec:
                    for g4 in range(n_valid):
                        for i4 in range(L):
                            traj[c0 + g4, rec, i4] = xs[nxt, i4 + 1, g4]
                    rec += 1
        _store_group(x, xs[n_steps & 1], c0, n_valid)

    return _group_first_order


# Numba's cache keys each by its closure constants too, so all are cached.
_group_first_order_free = _make_group_first_order(False, False)
_group_first_order_pinned = _make_group_first_order(True, False)
_group_first_order_free_injected = _make_group_first_order(False, True)
_group_first_order_pinned_injected = _make_group_first_order(True, True)


def _make_group_second_order(injected):
    """The second-order group kernel; ``injected=True`` reads normals from ``xi`` (see the module
    docstring) instead of drawing them."""

    @njit(cache=True)
    def _group_second_order(x, v, traj, seeds, xi, c0, n_valid, kp, mf, mb, kap, pn, e0, lm, h, yp, sh, im, gm,
                            n_steps, record_every, zt, zk, zf, zr):
        """Chains ``c0 .. c0 + n_valid - 1`` of the Langevin model, in place (``v`` like ``x``).

        Per step and block, with a = (spring + pinning force) / m at the old positions:

            u     = v + dt (a - (gamma/m) v) + eps(t) sqrt(dt) xi
            v_new = u - clip(u, -mu<- dt, mu-> dt)     (= sign(u) max(|u| - theta dt, 0))
            x_new = x + dt v_new

        xi : (n, n_normals) injected normals (``injected`` only; otherwise unused).
        """
        L = x.shape[1]
        tab = lane_table(zt)
        st = frame_array(STATE_WORDS, np.uint64)
        z = frame_array(LANES, np.float64)
        rr = frame_array(LANES, np.uint64)
        aux = np.empty((4, LANES), dtype=np.uint64)
        seed_lanes(st, aux, seeds, c0, n_valid)
        xa = _aligned_empty((L + 2) * LANES).reshape((L + 2, LANES))
        xb = _aligned_empty((L + 2) * LANES).reshape((L + 2, LANES))
        _load_group(xa, xb, x, c0, n_valid, yp)
        tk = zk.copy()  # thread-local rescue tables, as in the first-order kernel
        tf = zf.copy()
        vl = _aligned_empty(L * LANES).reshape((L, LANES))
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
        n_rec = traj.shape[1]
        rec = 1
        countdown = record_every
        e_t = _eps_t(e0, lm, h, 0)
        for step in range(n_steps):
            if lm != 0.0:
                e_t = _eps_t(e0, lm, h, step)
            es = e_t * sq
            if noisy and sh:
                if injected:
                    _inject(z, xi, c0, n_valid, step)
                elif draw_lanes(z, rr, st, tab):
                    rescue_lanes(z, rr, aux, tab, tk, tf, zr)
            for i in range(L):
                if noisy and not sh:
                    if injected:
                        _inject(z, xi, c0, n_valid, step * L + i)
                    elif draw_lanes(z, rr, st, tab):
                        rescue_lanes(z, rr, aux, tab, tk, tf, zr)
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
            countdown -= 1
            if countdown == 0:  # record, written out (see the first-order kernel)
                countdown = record_every
                if rec < n_rec:
                    for g4 in range(n_valid):
                        for i4 in range(L):
                            traj[c0 + g4, rec, i4] = xa[i4 + 1, g4]
                    rec += 1
        _store_group(x, xa, c0, n_valid)
        for g in range(n_valid):
            for i in range(L):
                v[c0 + g, i] = vl[i, g]

    return _group_second_order


_group_second_order = _make_group_second_order(False)
_group_second_order_injected = _make_group_second_order(True)


@njit(inline="always")
def _n_groups(n, n_chains):
    """Groups of LANES chains: ``per_point`` per parameter point, ``n // n_chains`` points."""
    per_point = (n_chains + LANES - 1) // LANES
    return per_point, (n // n_chains) * per_point


def _make_first_order_group(free, pinned):
    """The per-group dispatch of a first-order driver over the group kernels ``free`` and ``pinned``
    (one factory, so that a driver compiles only the pair it uses)."""

    @njit(inline="always")
    def _first_order_group(j, per_point, x, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam,
                           eta, y, shared, n_steps, record_every, zt, zk, zf, zr):
        p = j // per_point
        c = (j % per_point) * LANES
        args = (x, traj, seeds, xi, p * n_chains + c, min(LANES, n_chains - c), k[p], muf[p], mub[p], kappa[p],
                pin_position[p], eps[p], lam[p], eta[p], y[p], shared[p], n_steps, record_every, zt, zk, zf, zr)
        if _any_nonzero(kappa[p]):
            pinned(*args)
        else:
            free(*args)

    return _first_order_group


def _make_second_order_group(group):
    """The per-group dispatch of a second-order driver over the group kernel ``group``."""

    @njit(inline="always")
    def _second_order_group(j, per_point, x, v, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam,
                            dt, y, shared, inv_m, gamma_m, n_steps, record_every, zt, zk, zf, zr):
        p = j // per_point
        c = (j % per_point) * LANES
        group(x, v, traj, seeds, xi, p * n_chains + c, min(LANES, n_chains - c), k[p], muf[p], mub[p], kappa[p],
              pin_position[p], eps[p], lam[p], dt[p], y[p], shared[p], inv_m[p], gamma_m[p], n_steps, record_every,
              zt, zk, zf, zr)

    return _second_order_group


_first_order_group = _make_first_order_group(_group_first_order_free, _group_first_order_pinned)
_first_order_group_injected = _make_first_order_group(_group_first_order_free_injected,
                                                      _group_first_order_pinned_injected)
_second_order_group = _make_second_order_group(_group_second_order)
_second_order_group_injected = _make_second_order_group(_group_second_order_injected)


# Each driver is its own function (not one source compiled twice with and without `parallel`) so
# that all of them can be cached: Numba's on-disk cache keys a function by its source location and
# signature, not by the `parallel` flag. The four drivers release the GIL (`nogil=True`, which
# changes no arithmetic) so that `python -m springblock simulate` can run them in a worker thread
# and answer Ctrl-C within a fraction of a second (springblock.cli). Note also that the cache of
# a kernel is invalidated only by edits to *this* file: after changing an inlined helper of springblock._rng, delete
# springblock/__pycache__/*.nbi (the kernel-vs-reference tests fail on a stale cache).


@njit(parallel=True, cache=True, nogil=True)
def first_order(x, traj, seeds, n_chains, k, muf, mub, kappa, pin_position, eps, lam, eta, y, shared, n_steps,
                record_every, zt, zk, zf, zr):
    """Overdamped chains, groups of LANES chains in parallel.

    x : (n, L) float64, initial positions in, final positions out (n = n_points * n_chains)
    traj : (n, R, L) float64, positions at steps 0, r, 2r, ... (R = 0 when not recording)
    seeds : (n,) uint64
    k : (P, L+1); muf, mub, kappa, pin_position : (P, L); eps, lam, eta, y : (P,); shared : (P,) bool
    zt, zk, zf, zr : :data:`springblock._rng.ZIGGURAT`
    """
    xi = np.empty((0, 0))
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in prange(n_groups):
        _first_order_group(j, per_point, x, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam,
                           eta, y, shared, n_steps, record_every, zt, zk, zf, zr)


@njit(cache=True, nogil=True)
def first_order_serial(x, traj, seeds, n_chains, k, muf, mub, kappa, pin_position, eps, lam, eta, y, shared, n_steps,
                       record_every, zt, zk, zf, zr):
    """:func:`first_order` on the calling thread only (results are identical)."""
    xi = np.empty((0, 0))
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in range(n_groups):
        _first_order_group(j, per_point, x, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam,
                           eta, y, shared, n_steps, record_every, zt, zk, zf, zr)


@njit(cache=True)
def first_order_injected(x, traj, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam, eta, y, shared,
                         n_steps, record_every, zt, zk, zf, zr):
    """:func:`first_order_serial` with given normals: chain ``j`` consumes ``xi[j]`` (shape ``(n, n_normals)``,
    in the order of :func:`springblock._reference.n_normals`) instead of its generator's stream."""
    seeds = np.zeros(x.shape[0], dtype=np.uint64)
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in range(n_groups):
        _first_order_group_injected(j, per_point, x, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position, eps,
                                    lam, eta, y, shared, n_steps, record_every, zt, zk, zf, zr)


@njit(parallel=True, cache=True, nogil=True)
def second_order(x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin_position, eps, lam, dt, y, shared, inv_m,
                 gamma_m, n_steps, record_every, zt, zk, zf, zr):
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
    xi = np.empty((0, 0))
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in prange(n_groups):
        _second_order_group(j, per_point, x, v, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam,
                            dt, y, shared, inv_m, gamma_m, n_steps, record_every, zt, zk, zf, zr)


@njit(cache=True, nogil=True)
def second_order_serial(x, v, traj, seeds, n_chains, k, muf, mub, kappa, pin_position, eps, lam, dt, y, shared, inv_m,
                        gamma_m, n_steps, record_every, zt, zk, zf, zr):
    """:func:`second_order` on the calling thread only (results are identical)."""
    xi = np.empty((0, 0))
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in range(n_groups):
        _second_order_group(j, per_point, x, v, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam,
                            dt, y, shared, inv_m, gamma_m, n_steps, record_every, zt, zk, zf, zr)


@njit(cache=True)
def second_order_injected(x, v, traj, xi, n_chains, k, muf, mub, kappa, pin_position, eps, lam, dt, y, shared, inv_m,
                          gamma_m, n_steps, record_every, zt, zk, zf, zr):
    """:func:`second_order_serial` with given normals ``xi`` (as :func:`first_order_injected`)."""
    seeds = np.zeros(x.shape[0], dtype=np.uint64)
    per_point, n_groups = _n_groups(x.shape[0], n_chains)
    for j in range(n_groups):
        _second_order_group_injected(j, per_point, x, v, traj, seeds, xi, n_chains, k, muf, mub, kappa, pin_position,
                                     eps, lam, dt, y, shared, inv_m, gamma_m, n_steps, record_every, zt, zk, zf, zr)
