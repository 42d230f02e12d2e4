"""Simulator benchmark: ``python -m benchmarks.simulator [--quick]`` (about 30 s on 2 cores).

Measures in one run, on the same machine and the same model (the original first-order chain,
L = 7, independent noise), the cost per block-step of

* the Numba kernel (:func:`springblock.simulate`, all cores),
* a plain-Python loop (scalar loops, ``random.gauss``) on a small sub-ensemble,
* the vectorised NumPy batch (:func:`springblock._reference.numpy_batch_first_order`),
* drawing the same normals with the kernel's own generator on the same cores (the limit): the same
  16-lane groups, seeds and generator code as the kernel, the physics replaced by a sum; the faster
  of two loops counts (normals drawn into a row buffer, or drawn and summed in one vector loop as
  the kernel's fused loop does),
* the kernel with ``eps = 0`` (the physics alone, no normals drawn), and the kernel against the
  normals on one core (a quarter of the ensemble),

and the Langevin kernel against ``sdeint.itoint`` (Euler-Maruyama) on the original notebook SDE
(L = 7, k = 0.1, m = gamma = 1, shared noise eps = 0.003, lam = 0.001, dt = 0.05, T = 700), per
simulated path. Prints a table of ratios; times are the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import numba
import numpy as np
from numba import njit, prange

from springblock import ChainParams, chain_seeds, simulate
from springblock._reference import numpy_batch_first_order
from springblock._rng import (
    LANES,
    STATE_WORDS,
    ZIGGURAT,
    candidate,
    draw_lane,
    draw_lanes,
    frame_array,
    lane_table,
    rescue,
    rescue_lanes,
    seed_lanes,
)


@njit(inline="always")
def _draw_and_sum(acc, rr, st, tab):
    """As the fused loop of :func:`springblock._kernels._group_first_order`, summing instead of stepping."""
    any_rescue = False
    for g in range(LANES):
        r, z, ok = draw_lane(st, g, tab)
        rr[g] = r
        any_rescue |= not ok
        acc[g] += z
    return any_rescue


@njit(inline="always")
def _rescue_and_resum(acc, rr, aux, zt, zk, zf, zr):
    for g in range(LANES):
        layer, sr, z, ok = candidate(rr[g], zt)
        if not ok:
            acc[g] += rescue(layer, sr, z, aux, g, zt, zk, zf, zr) - z


@njit
def _noise_group(seeds, c0, n_valid, n_steps, L, fused, zt, zk, zf, zr):
    """The kernel's generator loop for one group of LANES chains, with the physics taken out:
    one row of LANES normals per block and step, drawn into a buffer and summed (``fused=False``)
    or drawn and summed in one vector loop like the kernel's independent-noise path."""
    tab = lane_table(zt)
    st = frame_array(STATE_WORDS, np.uint64)
    z = frame_array(LANES, np.float64)
    rr = frame_array(LANES, np.uint64)
    acc = frame_array(LANES, np.float64)
    aux = np.empty((4, LANES), dtype=np.uint64)
    seed_lanes(st, aux, seeds, c0, n_valid)
    for g in range(LANES):
        acc[g] = 0.0
    for _ in range(n_steps):
        for _ in range(L):
            if fused:
                if _draw_and_sum(acc, rr, st, tab):
                    _rescue_and_resum(acc, rr, aux, zt, zk, zf, zr)
            else:
                if draw_lanes(z, rr, st, tab):
                    rescue_lanes(z, rr, aux, zt, zk, zf, zr)
                for g in range(LANES):
                    acc[g] += z[g]
    total = 0.0
    for g in range(n_valid):
        total += acc[g]
    return total


@njit(parallel=True)
def noise_only(seeds, n_steps, L, fused, zt, zk, zf, zr):
    """Draw ``n_steps * L`` normals per chain exactly as the kernel does (same lanes, same
    generator code, same cores), and only sum them."""
    n = seeds.shape[0]
    n_groups = (n + LANES - 1) // LANES
    out = np.empty(n_groups)
    for j in prange(n_groups):
        c0 = j * LANES
        out[j] = _noise_group(seeds, c0, min(LANES, n - c0), n_steps, L, fused, zt, zk, zf, zr)
    return out


def python_loop(params: ChainParams, n_chains: int, n_steps: int, seed: int = 0):
    """The model in plain Python: scalar loops over chains, steps and blocks."""
    rnd = random.Random(seed)
    L, k, eta, y, eps = params.n_blocks, params.k, params.eta, params.y, params.eps
    mf, mb = params.mu_forward, params.mu_backward
    out = []
    for _ in range(n_chains):
        x = [0.0] * L
        for _ in range(n_steps):
            new = x[:]
            for i in range(L):
                left = x[i - 1] if i > 0 else 0.0
                right = x[i + 1] if i < L - 1 else y
                F = k * (right - 2 * x[i] + left) + eps * rnd.gauss(0.0, 1.0)
                th = mf if F >= 0 else mb
                m = abs(F) - th
                if m > 0:
                    new[i] = x[i] + eta * math.copysign(m, F)
            x = new
        out.append(x)
    return out


def sdeint_notebook(params: ChainParams, seed: int = 0):
    """One path of the notebook SDE with ``sdeint.itoint`` (naive kinetic friction -mu sign(v))."""
    import sdeint

    L, k, m, g = params.n_blocks, params.k, params.m, params.gamma
    mf, mb, eps, lam, y = params.mu_forward, params.mu_backward, params.eps, params.lam, params.y

    def f(s, t):
        x, v = s[:L], s[L:]
        xp = np.concatenate([[0.0], x, [y]])
        acc = (k / m) * (xp[2:] - 2 * x + xp[:-2]) - (g / m) * v - np.where(v > 0, mf, np.where(v < 0, -mb, 0.0))
        return np.concatenate([v, acc])

    def G(s, t):
        out = np.zeros((2 * L, 1))
        out[L:, 0] = eps * math.exp(-lam * t)  # one shared Wiener process
        return out

    tspan = np.linspace(0.0, params.time, params.n_steps + 1)
    return sdeint.itoint(f, G, np.zeros(2 * L), tspan, generator=np.random.default_rng(seed))


def best(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def best_interleaved(fns, repeat):
    """Best time of each function, the functions run alternately (so that a ratio of two of them
    is not skewed by a change of load on this shared machine between their runs)."""
    ts = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, ts, strict=True):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [min(t) for t in ts]


def run(quick: bool = False, repeat: int = 3) -> dict:
    """Run every measurement; return times per block-step (s) and the ratios."""
    p = ChainParams()  # original first-order chain
    L = p.n_blocks
    C = 512 if quick else 2000
    S = p.n_steps
    simulate(p.replace(n_steps=10), 4)  # compile
    seeds = chain_seeds(0, C).reshape(-1)
    noise_only(seeds[:2], 10, L, False, *ZIGGURAT)
    noise_only(seeds[:2], 10, L, True, *ZIGGURAT)
    bs = C * S * L
    p0 = p.replace(eps=0.0)
    t_kernel, t_buffered, t_fused, t_phys = (t / bs for t in best_interleaved(
        [lambda: simulate(p, C, seed=1), lambda: noise_only(seeds, S, L, False, *ZIGGURAT),
         lambda: noise_only(seeds, S, L, True, *ZIGGURAT), lambda: simulate(p0, C, seed=1)], repeat))
    t_noise = min(t_buffered, t_fused)  # the generator at its best
    # The same pair on one core (a quarter of the ensemble): the ratio without the second core's
    # interference, which on this shared VM slows the arithmetic-heavy kernel more than the generator.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        C1 = C // 4
        t_k1, t_b1, t_f1 = (t / (C1 * S * L) for t in best_interleaved(
            [lambda: simulate(p, C1, seed=1), lambda: noise_only(seeds[:C1], S, L, False, *ZIGGURAT),
             lambda: noise_only(seeds[:C1], S, L, True, *ZIGGURAT)], repeat))
    finally:
        numba.set_num_threads(threads)
    Cn, Sn = (256, 500) if quick else (2000, 1000)
    t_numpy = best(lambda: numpy_batch_first_order(p.replace(n_steps=Sn), Cn, seed=1), max(1, repeat - 1)) / (Cn * Sn * L)
    Cp, Sp = (2, 1000) if quick else (4, 2000)
    t_py = best(lambda: python_loop(p, Cp, Sp), 2) / (Cp * Sp * L)

    q = ChainParams.second_order_original()
    simulate(q.replace(n_steps=10), 2)
    Cq = 256 if quick else 1000
    t_k2 = best(lambda: simulate(q, Cq, seed=1), repeat) / Cq  # per path
    qs = q if not quick else q.replace(n_steps=2000)
    t_sde = best(lambda: sdeint_notebook(qs), 1) * (q.n_steps / qs.n_steps)  # per path, scaled to T = 700
    return dict(kernel=t_kernel, noise=t_noise, physics=t_phys, kernel_1core=t_k1, noise_1core=min(t_b1, t_f1),
                numpy=t_numpy, python=t_py, kernel2_path=t_k2, sdeint_path=t_sde, threads=threads)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.simulator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller ensembles (for a smoke run)")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    r = run(args.quick, args.repeat)
    print(f"# springblock simulator benchmark ({numba.get_num_threads()} threads, {numba.threading_layer()} "
          f"threading layer; best of {args.repeat} runs)")
    print("| measurement | time | ratio | target |")
    print("|---|---|---|---|")
    print(f"| first-order kernel, per block-step | {r['kernel'] * 1e9:.2f} ns | 1 | |")
    print(f"| plain-Python loop, per block-step | {r['python'] * 1e9:.0f} ns | kernel {r['python'] / r['kernel']:.0f}x faster | >= 500x |")
    print(f"| vectorised NumPy batch, per block-step | {r['numpy'] * 1e9:.2f} ns | kernel {r['numpy'] / r['kernel']:.1f}x faster | >= 3x |")
    print(f"| normals only (kernel's generator, same cores), per draw | {r['noise'] * 1e9:.2f} ns | kernel at {r['noise'] / r['kernel']:.2f} of this rate | >= 0.7 |")
    print(f"| kernel with eps = 0 (physics alone, no draws), per block-step | {r['physics'] * 1e9:.2f} ns | | |")
    print(f"| one core: kernel / normals only | {r['kernel_1core'] * 1e9:.2f} / {r['noise_1core'] * 1e9:.2f} ns | kernel at {r['noise_1core'] / r['kernel_1core']:.2f} of this rate | >= 0.7 |")
    print(f"| Langevin kernel, per path (T=700, 14000 steps) | {r['kernel2_path'] * 1e3:.3f} ms | 1 | |")
    print(f"| sdeint.itoint, per path | {r['sdeint_path']:.2f} s | kernel {r['sdeint_path'] / r['kernel2_path']:.0f}x faster | >= 1000x |")


if __name__ == "__main__":
    main()
