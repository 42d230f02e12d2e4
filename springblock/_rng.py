"""The simulator's own random numbers: xoshiro256++ and a 256-layer ziggurat for N(0, 1).

Why not NumPy's or Numba's generator: each block-step of the simulator needs one standard normal
and little else, so the generator decides the simulator's speed. Numba's built-in
``np.random.standard_normal`` is a shared Mersenne-Twister/polar generator (~20 ns a draw here and
one global state per thread, which ties results to the thread count). Here every chain owns a
4-word xoshiro256++ state held in registers (Blackman & Vigna 2018), seeded from one 64-bit word
through splitmix64, and normals come from the Marsaglia-Tsang ziggurat (2000) with 256 layers:
one 64-bit draw, one table look-up and one compare in ~99 % of cases.

All functions are ``@njit`` and take/return the state as four ``uint64`` scalars so that LLVM
keeps it in registers inside the kernels' time loops.

Bit layout of one ziggurat draw ``r``: bits 0-7 select the layer; bits 11-63, read as a signed
53-bit integer ``sr``, give the sign and the 52-bit magnitude ``rabs = |sr|``; the candidate is
``x = sr * w[layer]``, accepted at once when ``rabs < k[layer]``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

__all__ = ["ZIGGURAT", "splitmix64", "seed_state", "next_u64", "uniform", "normal", "fill_normals"]

_ZIG_R = 3.6541528853610088  # start of the tail for 256 layers (Marsaglia & Tsang 2000)
_ZIG_V = 0.00492867323399  # area of each layer under f(x) = exp(-x^2 / 2)
_TWO52 = float(2**52)


def _ziggurat_tables():
    """Layer edges ``x_0 > x_1 = R > ... > x_255 > x_256 = 0`` and the derived tables.

    Returns ``(k, w, f)``: ``k[i] = floor(2^52 x_{i+1} / x_i)`` (int64, the fast-accept bound
    for ``rabs``), ``w[i] = x_i / 2^52`` and ``f[i] = exp(-x_i^2 / 2)`` with ``f[256] = 1``.
    """
    n = 256
    x = np.zeros(n + 1)
    f = lambda t: math.exp(-0.5 * t * t)  # noqa: E731
    x[0] = _ZIG_V / f(_ZIG_R)  # base layer: rectangle of width V / f(R) plus the tail
    x[1] = _ZIG_R
    for i in range(1, n - 1):
        x[i + 1] = math.sqrt(-2.0 * math.log(_ZIG_V / x[i] + f(x[i])))
    x[n] = 0.0
    k = np.array([int(_TWO52 * x[i + 1] / x[i]) for i in range(n)], dtype=np.int64)
    w = x[:n] / _TWO52
    fx = np.array([f(t) for t in x])
    return k, w, fx


ZIGGURAT = _ziggurat_tables()

_M1 = uint64(0x9E3779B97F4A7C15)
_M2 = uint64(0xBF58476D1CE4E5B9)
_M3 = uint64(0x94D049BB133111EB)


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
    """Expand one 64-bit seed word into a xoshiro256++ state (never all zero)."""
    z = uint64(seed)
    s0, z = splitmix64(z)
    s1, z = splitmix64(z)
    s2, z = splitmix64(z)
    s3, z = splitmix64(z)
    return s0, s1, s2, s3


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


@njit
def _normal_slow(idx, x, s0, s1, s2, s3, zw, zf):
    """Rare path of the ziggurat (~1 % of draws): the tail or the wedge of layer ``idx``.

    Returns ``(accepted, value, s0, s1, s2, s3)``.
    """
    if idx == 0:
        # Tail beyond R (Marsaglia 1964): a = -ln(U1)/R, b = -ln(U2), accept when 2b > a^2.
        while True:
            u1, s0, s1, s2, s3 = uniform(s0, s1, s2, s3)
            u2, s0, s1, s2, s3 = uniform(s0, s1, s2, s3)
            a = -math.log(u1) / _ZIG_R
            b = -math.log(u2)
            if b + b > a * a:
                t = _ZIG_R + a
                return True, (-t if x < 0.0 else t), s0, s1, s2, s3
    u, s0, s1, s2, s3 = uniform(s0, s1, s2, s3)
    # x lies in [x_{idx+1}, x_idx]: a uniform height in [f(x_idx), f(x_{idx+1})] under the curve?
    if zf[idx] + u * (zf[idx + 1] - zf[idx]) < math.exp(-0.5 * x * x):
        return True, x, s0, s1, s2, s3
    return False, 0.0, s0, s1, s2, s3


@njit(inline="always")
def normal(s0, s1, s2, s3, zk, zw, zf):
    """One standard normal from the ziggurat: returns ``(value, s0, s1, s2, s3)``.

    ``zk, zw, zf`` are the tables of :data:`ZIGGURAT` (passed in: kernels read no globals).
    """
    while True:
        r, s0, s1, s2, s3 = next_u64(s0, s1, s2, s3)
        idx = np.intp(r & uint64(0xFF))
        # Bits 11-63 as a signed 53-bit integer: sign and 52-bit magnitude in one branch-free
        # step (a data-dependent sign branch would mispredict half the time).
        sr = np.int64(r) >> np.int64(11)
        rabs = abs(sr)
        x = float(sr) * zw[idx]
        if rabs < zk[idx]:
            return x, s0, s1, s2, s3
        ok, x, s0, s1, s2, s3 = _normal_slow(idx, x, s0, s1, s2, s3, zw, zf)
        if ok:
            return x, s0, s1, s2, s3


@njit
def fill_normals(seed, out, zk, zw, zf):
    """Fill ``out`` (1-D) with the stream of standard normals of one chain seeded by ``seed``."""
    s0, s1, s2, s3 = seed_state(seed)
    for i in range(out.shape[0]):
        out[i], s0, s1, s2, s3 = normal(s0, s1, s2, s3, zk, zw, zf)
