"""Slow reference implementations: the executable specification of SPEC §2.2-2.3.

The kernels in :mod:`springblock._kernels` must agree with these to 1e-12 (in practice bit for bit)
when they consume the same normals. ``normals`` is a 1-D stream of standard normals consumed in the
kernels' order: per step, one draw per block in block order (independent noise) or one draw
(shared noise); nothing when ``eps == 0``. :func:`springblock.dynamics.standard_normals` gives a
chain's stream.

Also here: :func:`numpy_batch_first_order`, the straightforward vectorised NumPy version of the
first-order model over an ensemble (the benchmark's second baseline).
"""

from __future__ import annotations

import math

import numpy as np

from springblock.params import EPS_FLOOR, ChainParams

__all__ = ["n_normals", "first_order", "second_order", "numpy_batch_first_order"]


def n_normals(params: ChainParams, n_steps: int | None = None) -> int:
    """Number of normals one chain consumes."""
    n_steps = params.n_steps if n_steps is None else n_steps
    if params.eps == 0.0:
        return 0
    return n_steps * (1 if params.noise_mode == "shared" else params.n_blocks)


def _normals_reader(params, normals):
    normals = np.zeros(0) if normals is None else np.asarray(normals, dtype=np.float64)
    need = n_normals(params)
    if normals.shape[0] < need:
        raise ValueError(f"normals stream too short: need {need} normals, got {normals.shape[0]}")
    L = params.n_blocks
    per = 1 if params.noise_mode == "shared" else L

    def step_normals(step):
        if params.eps == 0.0:
            return np.zeros(L)
        z = normals[step * per:(step + 1) * per]
        return np.full(L, z[0]) if per == 1 else z

    return step_normals


def _eps_t(params, step):
    """eps(t) = eps exp(-lam t), t = step * eta; 0 once below ``EPS_FLOOR`` (~1.4e-277), as in the kernels."""
    e = params.eps if params.lam == 0.0 else params.eps * math.exp(-params.lam * (step * params.eta))
    return e if e >= EPS_FLOOR else 0.0


def _spring_force(params, x):
    """k_{i+1}(x_{i+1} - x_i) - k_i(x_i - x_{i-1}) - kappa_i(x_i - a_i), wall 0 and anchor y."""
    k = params.k_array
    xp = np.concatenate([[0.0], x, [params.y]])
    return k[1:] * (xp[2:] - x) - k[:-1] * (x - xp[:-2]) - params.kappa_array * (x - params.pin_position_array)


def first_order(params: ChainParams, normals=None, x0=None, record_every: int | None = None):
    """One overdamped chain, SPEC §2.2, step by step.

    Returns ``(x_final, traj)`` with ``traj`` of shape ``(R, L)`` (positions at steps 0, r, 2r,
    ...) or None.
    """
    L = params.n_blocks
    x = np.zeros(L) if x0 is None else np.array(x0, dtype=np.float64)
    step_normals = _normals_reader(params, normals)
    mf, mb = params.mu_forward_array, params.mu_backward_array
    traj = [x.copy()] if record_every else None
    for step in range(params.n_steps):
        F = _spring_force(params, x) + _eps_t(params, step) * step_normals(step)
        theta = np.where(F >= 0.0, mf, mb)
        x = x + params.eta * np.sign(F) * np.maximum(np.abs(F) - theta, 0.0)
        if record_every and (step + 1) % record_every == 0:
            traj.append(x.copy())
    return x, (np.array(traj) if record_every else None)


def second_order(params: ChainParams, normals=None, x0=None, v0=None, record_every: int | None = None):
    """One Langevin chain, SPEC §2.3, semi-implicit Euler with implicit Coulomb friction.

    ``u = v + dt (F/m - (gamma/m) v) + eps(t) sqrt(dt) xi``; ``v <- prox(u)`` (stick when
    ``-mu<- dt <= u <= mu-> dt``, else reduced by the friction impulse); ``x <- x + dt v``.
    Returns ``(x_final, v_final, traj)``.
    """
    L = params.n_blocks
    x = np.zeros(L) if x0 is None else np.array(x0, dtype=np.float64)
    v = np.zeros(L) if v0 is None else np.array(v0, dtype=np.float64)
    step_normals = _normals_reader(params, normals)
    mf, mb = params.mu_forward_array, params.mu_backward_array
    dt, inv_m, gm = params.eta, 1.0 / params.m, params.gamma / params.m
    sq = math.sqrt(dt)
    traj = [x.copy()] if record_every else None
    for step in range(params.n_steps):
        a = _spring_force(params, x) * inv_m
        u = v + dt * (a - gm * v)
        u = u + _eps_t(params, step) * sq * step_normals(step)
        theta = np.where(u >= 0.0, mf, mb)
        v = np.sign(u) * np.maximum(np.abs(u) - theta * dt, 0.0)
        x = x + dt * v
        if record_every and (step + 1) % record_every == 0:
            traj.append(x.copy())
    return x, v, (np.array(traj) if record_every else None)


def numpy_batch_first_order(params: ChainParams, n_chains: int, seed: int = 0, normals=None) -> np.ndarray:
    """Vectorised NumPy first-order ensemble, shape ``(n_chains, L)`` final positions.

    Noise from ``numpy.random.default_rng(seed)`` (one ``(n_chains, L)`` draw per step), or from
    ``normals`` of shape ``(n_steps, n_chains, L)`` if given. Independent noise only.
    """
    if params.noise_mode != "independent":
        raise ValueError(f"numpy_batch_first_order draws independent noise only, got noise_mode={params.noise_mode!r}")
    L = params.n_blocks
    rng = np.random.default_rng(seed)
    k = params.k_array
    mf, mb = params.mu_forward_array, params.mu_backward_array
    kap, pin = params.kappa_array, params.pin_position_array
    xp = np.zeros((n_chains, L + 2))
    xp[:, -1] = params.y
    z = np.empty((n_chains, L))
    for step in range(params.n_steps):
        x = xp[:, 1:-1]
        if normals is None:
            rng.standard_normal(out=z)
        else:
            z = normals[step]
        F = k[1:] * (xp[:, 2:] - x) - k[:-1] * (x - xp[:, :-2]) - kap * (x - pin) + _eps_t(params, step) * z
        theta = np.where(F >= 0.0, mf, mb)
        xp[:, 1:-1] = x + params.eta * np.sign(F) * np.maximum(np.abs(F) - theta, 0.0)
    return xp[:, 1:-1].copy()
