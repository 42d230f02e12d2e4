"""The simulator's own random numbers: xoshiro256++ and a 2048-layer ziggurat for N(0, 1).

Why not NumPy's or Numba's generator: each block-step of the simulator needs one standard normal
and little else, so the generator decides the simulator's speed. Numba's built-in
``np.random.standard_normal`` is a shared Mersenne-Twister/polar generator (~20 ns a draw here and
one global state per thread, which ties results to the thread count). Here every chain owns its
generators, seeded from one 64-bit word, so results do not depend on threads or on how chains are
batched.

The stream of one chain (what :func:`fill_normals` writes and the kernels consume)
---------------------------------------------------------------------------------
The seed word is expanded by splitmix64 into eight words: the first four seed the *main*
xoshiro256++ generator (Blackman & Vigna 2018), the next four the *rescue* generator. Normal
number ``n`` is drawn as follows (Marsaglia & Tsang's ziggurat, 2000, with 2048 layers):

1. ``r`` = the next word of the main generator, always exactly one word per normal;
2. ``layer = r & 2047`` (bits 0-10); ``sr`` = bits 11-63 read as a signed 53-bit integer (sign
   and 52-bit magnitude); the candidate is ``x = sr * x_layer / 2^52``, uniform on
   ``(-x_layer, x_layer)``;
3. ``x`` is accepted at once when ``(|sr| >> 41) < (k_layer >> 41)``, which implies
   ``|sr| < k_layer = floor(2^52 x_{layer+1} / x_layer)``: ``x`` lies in the part of the layer's
   rectangle that is under the density (99.74 % of draws);
4. otherwise :func:`rescue` settles it -- the exact test ``|sr| < k_layer``, then the wedge test
   against ``exp(-x^2/2)`` or, for the base layer, the tail beyond ``R``, and fresh candidates when
   the wedge test fails -- drawing every further word it needs from the *rescue* generator.

Step 4 is why there are two generators: the main stream advances by one word per normal whatever
happens, so :func:`draw_lanes` can draw one candidate for each of ``LANES`` chains at once with
vector instructions and settle the rare (0.26 %) rescues lane by lane afterwards, and every
chain's numbers stay exactly those of :func:`fill_normals`. The ziggurat is exact: the tail
(Marsaglia 1964), wedges and retries are the textbook algorithm, only the source of their uniforms
differs.

Table layout (why one table). Each layer is one 64-bit word: bits 0-52 hold ``x_layer`` in fixed
point (``M = round(x_layer 2^50)``; the layer edges *are* these rounded values, ``x_layer = M
2^-50``, and all other tables are computed from them; layer areas are equal to 1e-12 relative),
bits 53-63 hold ``k_layer >> 41``. The fast test compares ``|sr| >> 41`` with that 11-bit code,
which is conservative (it sends 0.03 % more candidates to :func:`rescue`, which checks
``|sr| < k_layer`` exactly first), and the candidate is ``x = (sr 2^-102) M``, the correctly
rounded ``sr x_layer / 2^52`` (scaling by powers of two is exact). One table look-up
per normal matters because vectorised look-ups (gathers) cost ~0.5 ns per element on the
machines this was tuned on (AMD Zen 4), more than the rest of the draw.

All functions are ``@njit``; scalar states travel as four ``uint64`` values so that LLVM keeps
them in registers.
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, njit, types, uint64
from numba.core import cgutils, errors
from numba.extending import intrinsic, overload

__all__ = [
    "LAYERS", "LANES", "STATE_WORDS", "ZIGGURAT", "ZIGGURAT_SCALE", "splitmix64", "seed_state", "next_u64",
    "uniform", "candidate", "rescue", "fill_normals", "frame_array", "lane_table", "seed_lanes", "draw_lane",
    "draw_lane_scaled", "draw_lanes", "rescue_lanes",
]

#: Layers of the ziggurat. More layers send fewer draws to the slow path (1/LAYERS of them come
#: from the top layer alone) at the cost of a larger table (LAYERS * 8 bytes, L1-resident).
LAYERS = 2048
_LAYER_BITS = 11
#: Chains advanced together by the vectorised kernels (one generator per lane): 16 float64 are two
#: AVX-512 or four AVX2 vectors. 16 measured fastest here; LLVM fully unrolls an 8-lane loop
#: before it can vectorise it.
LANES = 16
#: Main-generator state of one lane group: word j of lane g is ``st[j * LANES + g]``.
STATE_WORDS = 4 * LANES
_EDGE_FRAC_BITS = 50  # x_layer = M * 2^-50, M < 2^53
_CODE_SHIFT = 41  # fast-test code = k_layer >> 41 (11 bits, stored in bits 53-63)
_EDGE_MASK = (1 << 53) - 1
_X_SCALE = 2.0 ** -(52 + _EDGE_FRAC_BITS)  # x = (sr * 2^-102) * M
#: ``x = (sr * M) * ZIGGURAT_SCALE`` for every candidate (see :func:`draw_lane_scaled`).
ZIGGURAT_SCALE = _X_SCALE


def _ziggurat_tables(n: int = LAYERS):
    """Layer edges ``x_0 > x_1 = R > ... > x_{n-1} > x_n = 0`` of an ``n``-layer ziggurat.

    Layers of equal area ``V``: the base layer is the rectangle ``[0, x_0] x [0, f(R)]`` plus the
    tail beyond ``R`` (so ``x_0 = V / f(R)``), layer ``i >= 1`` spans ``[f(x_i), f(x_{i+1})]`` with
    ``x_i (f(x_{i+1}) - f(x_i)) = V``, ``f(x) = exp(-x^2/2)``. ``R`` is found by bisection so that
    the top layer closes at ``f(0) = 1`` (for 256 layers this gives Marsaglia & Tsang's
    R = 3.6541528853610088).

    Returns ``(table, k, f, R)``: the packed words (uint64, see the module docstring), the exact
    fast-accept bounds ``k_i = floor(2^52 x_{i+1} / x_i)`` (int64), ``f_i = exp(-x_i^2 / 2)`` for
    ``i = 0..n`` (``f_n = 1``) and ``R = x_1``, all computed from the rounded edges.
    """
    f = lambda t: math.exp(-0.5 * t * t)  # noqa: E731

    def top_gap(r):  # > 0 when the layers built up from R end below the top (R too large)
        v = r * f(r) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
        x = r
        for _ in range(1, n - 1):
            arg = v / x + f(x)
            if arg >= 1.0:
                return -1.0, v
            x = math.sqrt(-2.0 * math.log(arg))
        return 1.0 - (v / x + f(x)), v

    lo, hi = 2.0, 6.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if top_gap(mid)[0] < 0:
            lo = mid
        else:
            hi = mid
    r = lo
    v = top_gap(r)[1]
    x = [v / f(r), r]
    for i in range(1, n - 1):
        x.append(math.sqrt(-2.0 * math.log(v / x[i] + f(x[i]))))
    m = [round(xi * 2.0**_EDGE_FRAC_BITS) for xi in x] + [0]
    k = [(m[i + 1] << 52) // m[i] for i in range(n)]
    table = np.array([m[i] | ((k[i] >> _CODE_SHIFT) << 53) for i in range(n)], dtype=np.uint64)
    fx = np.array([f(mi * 2.0**-_EDGE_FRAC_BITS) for mi in m])
    return table, np.array(k, dtype=np.int64), fx, m[1] * 2.0**-_EDGE_FRAC_BITS


#: ``(table, k, f, R)`` of :func:`_ziggurat_tables`; passed to every kernel (kernels read no globals).
ZIGGURAT = _ziggurat_tables()

_M1 = uint64(0x9E3779B97F4A7C15)
_M2 = uint64(0xBF58476D1CE4E5B9)
_M3 = uint64(0x94D049BB133111EB)


# --------------------------------------------------------------------------------------------
# Two small LLVM-level helpers.


@intrinsic
def _alloca(typingctx, n, dtype):
    """Pointer to ``n`` (a literal int) uninitialised elements in the calling function's frame."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    count, dt = n.literal_value, dtype.dtype

    def codegen(context, builder, sig, args):
        ptr = cgutils.alloca_once(builder, context.get_value_type(dt), size=count)
        ptr.align = 64  # a cache line: vector loads and stores of these arrays never split one
        return ptr

    return types.CPointer(dt)(n, dtype), codegen


def frame_array(n, dtype):
    """A 1-D scratch array of ``n`` elements in the frame of the jitted function that calls it.

    ``n`` must be a compile-time constant (a literal or a module-level int). Why: LLVM knows that
    such memory aliases nothing passed in. The ziggurat table copied into one
    (:func:`lane_table`) lets the loop vectoriser turn the per-lane table look-ups of
    :func:`draw_lanes` into gathers; with the table as an argument it must assume that the table
    may overlap the output buffers, and leaves the loop scalar. The array lives as long as the
    calling kernel's frame (it is inlined there): never return it from a kernel. Jitted code only.
    """
    raise NotImplementedError("frame_array is only available inside @njit functions")


@overload(frame_array, prefer_literal=True, inline="always")
def _frame_array_impl(n, dtype):
    if not isinstance(n, types.IntegerLiteral):
        raise errors.TypingError("frame_array(n, dtype) needs a compile-time constant n")

    def impl(n, dtype):
        return carray(_alloca(n, dtype), (n,))

    return impl


# --------------------------------------------------------------------------------------------
# Scalar generator: the definition of each chain's stream.


@njit(inline="always")
def _rotl(x, k):
    return (x << uint64(k)) | (x >> uint64(64 - k))


@njit(inline="always")
def splitmix64(z):
    """One splitmix64 step: returns ``(output, new_z)``."""
    z = z + _M1
    r = z
    r = (r ^ (r >> uint64(30))) * _M2
    r = (r ^ (r >> uint64(27))) * _M3
    return r ^ (r >> uint64(31)), z


@njit(inline="always")
def seed_state(seed):
    """Expand one 64-bit seed word into the main and rescue xoshiro256++ states (8 words)."""
    z = uint64(seed)
    s0, z = splitmix64(z)
    s1, z = splitmix64(z)
    s2, z = splitmix64(z)
    s3, z = splitmix64(z)
    a0, z = splitmix64(z)
    a1, z = splitmix64(z)
    a2, z = splitmix64(z)
    a3, z = splitmix64(z)
    return s0, s1, s2, s3, a0, a1, a2, a3


@njit(inline="always")
def next_u64(s0, s1, s2, s3):
    """xoshiro256++: returns ``(r, s0, s1, s2, s3)``."""
    r = _rotl(s0 + s3, 23) + s0
    t = s1 << uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return r, s0, s1, s2, s3


@njit(inline="always")
def uniform(s0, s1, s2, s3):
    """Uniform double in ``(0, 1]`` (53 bits; never 0, so ``log`` is safe)."""
    r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
    return (float(r >> uint64(11)) + 1.0) * (1.0 / 9007199254740992.0), s0, s1, s2, s3


@njit(inline="always")
def candidate(r, zt):
    """Ziggurat candidate of the word ``r``: returns ``(layer, sr, x, accepted)``.

    Branch-free, so that it vectorises across lanes (see the module docstring for the layout).
    """
    layer, sr, p, ok = _candidate_product(r, zt)
    return layer, sr, p * _X_SCALE, ok


@njit(inline="always")
def _candidate_product(r, zt):
    """:func:`candidate` with ``p = sr * M`` (one rounding) in place of ``x``: ``x = p * 2^-102``
    exactly (a power-of-two scaling of a normal number), the same bits as ``(sr 2^-102) M``."""
    layer = np.intp(r & uint64(LAYERS - 1))
    sr = np.int64(r) >> np.int64(_LAYER_BITS)
    w = zt[layer]
    p = float(sr) * float(np.int64(w & uint64(_EDGE_MASK)))
    ok = (abs(sr) >> np.int64(_CODE_SHIFT)) < np.int64(w >> uint64(53))
    return layer, sr, p, ok


@njit
def rescue(layer, sr, x, aux, lane, zt, zk, zf, zr):
    """Settle a candidate that failed the fast test (~0.3 % of draws); returns the normal.

    ``aux[:, lane]`` is the rescue generator's state, read and written back here.
    In order: the exact bound ``|sr| < k_layer``; for the base layer, a draw from the tail beyond
    ``R`` (Marsaglia 1964: ``a = -ln(U1)/R``, ``b = -ln(U2)``, accept when ``2b > a^2``, return
    ``+-(R + a)`` with the candidate's sign); otherwise the wedge test -- a uniform height in
    ``[f(x_layer), f(x_{layer+1})]`` below ``exp(-x^2/2)`` -- and, when it fails, fresh
    candidates from the rescue generator until one is accepted.
    """
    if abs(sr) < zk[layer]:
        return x
    s0, s1, s2, s3 = aux[0, lane], aux[1, lane], aux[2, lane], aux[3, lane]
    while True:
        if layer == 0:
            while True:
                u1, s0, s1, s2, s3 = uniform(s0, s1, s2, s3)
                u2, s0, s1, s2, s3 = uniform(s0, s1, s2, s3)
                a = -math.log(u1) / zr
                b = -math.log(u2)
                if b + b > a * a:
                    x = -(zr + a) if x < 0.0 else zr + a
                    break
            break
        u, s0, s1, s2, s3 = uniform(s0, s1, s2, s3)
        if zf[layer] + u * (zf[layer + 1] - zf[layer]) < math.exp(-0.5 * x * x):
            break
        r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
        layer, sr, x, ok = candidate(r, zt)
        if abs(sr) < zk[layer]:
            break
    aux[0, lane], aux[1, lane], aux[2, lane], aux[3, lane] = s0, s1, s2, s3
    return x


@njit(cache=True)
def fill_normals(seed, out, zt, zk, zf, zr):
    """Fill ``out`` (1-D) with the stream of standard normals of one chain seeded by ``seed``."""
    s0, s1, s2, s3, a0, a1, a2, a3 = seed_state(seed)
    aux = np.empty((4, 1), dtype=np.uint64)
    aux[0, 0], aux[1, 0], aux[2, 0], aux[3, 0] = a0, a1, a2, a3
    for i in range(out.shape[0]):
        r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
        layer, sr, x, ok = candidate(r, zt)
        if not ok:
            x = rescue(layer, sr, x, aux, 0, zt, zk, zf, zr)
        out[i] = x


# --------------------------------------------------------------------------------------------
# The same stream for LANES chains at once. Lane-interleaved layout: state word j of lane g is
# st[j * LANES + g], so that every loop over g reads and writes contiguous memory and vectorises.


@njit(inline="always")
def lane_table(zt):
    """The packed table copied into the caller's frame (see :func:`frame_array` for why)."""
    tab = frame_array(LAYERS, np.uint64)
    for i in range(LAYERS):
        tab[i] = zt[i]
    return tab


@njit(inline="always")
def seed_lanes(st, aux, seeds, c0, n_valid):
    """Seed lane ``g`` with ``seeds[c0 + g]``; lanes ``g >= n_valid`` (padding) repeat the last chain.

    ``st``: (4 * LANES,) main states, lane-interleaved; ``aux``: (4, LANES) rescue states.
    """
    for g in range(LANES):
        s0, s1, s2, s3, a0, a1, a2, a3 = seed_state(seeds[c0 + min(g, n_valid - 1)])
        st[g], st[LANES + g], st[2 * LANES + g], st[3 * LANES + g] = s0, s1, s2, s3
        aux[0, g], aux[1, g], aux[2, g], aux[3, g] = a0, a1, a2, a3


@njit(inline="always")
def draw_lane(st, g, tab):
    """Advance lane ``g``'s main generator; returns ``(r, x, accepted)`` of its next candidate.

    For loops over the lanes that use the candidate at once (see :func:`draw_lanes`); a lane whose
    candidate is not accepted must be settled with :func:`rescue` on ``r`` before its next draw.
    """
    s0, s1, s2, s3 = st[g], st[LANES + g], st[2 * LANES + g], st[3 * LANES + g]
    r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
    st[g], st[LANES + g], st[2 * LANES + g], st[3 * LANES + g] = s0, s1, s2, s3
    layer, sr, x, ok = candidate(r, tab)
    return r, x, ok


@njit(inline="always")
def draw_lane_scaled(st, g, tab, scale):
    """:func:`draw_lane` returning ``scale * x`` for the candidate ``x``, with one multiplication
    fewer: ``(sr M) (scale 2^-102)``, which is bit for bit ``scale * x`` when ``scale`` is 0 or in
    ``[springblock.params.EPS_FLOOR, EPS_CEIL]`` (both products are then normal numbers scaled by a
    power of two).
    Pass ``scale * ZIGGURAT_SCALE`` as ``scale``; returns ``(r, scale * x, accepted)``."""
    s0, s1, s2, s3 = st[g], st[LANES + g], st[2 * LANES + g], st[3 * LANES + g]
    r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
    st[g], st[LANES + g], st[2 * LANES + g], st[3 * LANES + g] = s0, s1, s2, s3
    layer, sr, p, ok = _candidate_product(r, tab)
    return r, p * scale, ok


@njit(inline="always")
def draw_lanes(z, rr, st, tab):
    """One candidate per lane: ``z[g]`` the candidate, ``rr[g]`` its word; returns True when some
    lane's candidate needs :func:`rescue_lanes`. Branch-free: compiles to vector code (for 16 lanes
    on AVX-512: two xoshiro256++ updates of 8 lanes, two gathers, one mask test)."""
    any_rescue = False
    for g in range(LANES):
        r, x, ok = draw_lane(st, g, tab)
        z[g] = x
        rr[g] = r
        any_rescue |= not ok
    return any_rescue


@njit(inline="always")
def rescue_lanes(z, rr, aux, zt, zk, zf, zr):
    """Settle, lane by lane, the candidates of :func:`draw_lanes` that failed the fast test."""
    for g in range(LANES):
        layer, sr, x, ok = candidate(rr[g], zt)
        if not ok:
            z[g] = rescue(layer, sr, x, aux, g, zt, zk, zf, zr)
