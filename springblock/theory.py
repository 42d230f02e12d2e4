"""Analytic predictions of the spring-block model (SPEC §2.4), to compare simulations against.

First-order model throughout: ``x <- x + eta S(F)``, ``F = -K x + b + eps xi``, with ``S`` the
asymmetric soft threshold ``S(F) = sign(F) max(|F| - theta(F), 0)``, ``theta = mu->`` for
``F >= 0`` and ``mu<-`` otherwise. ``K`` and ``b``: :meth:`ChainParams.stiffness_matrix`,
:meth:`ChainParams.load_vector`.

* :func:`equilibrium` / :func:`equal_elongations` — no friction, no noise: ``K x* = b``; for uniform
  k every spring stretches ``y / (L + 1)`` (a linear load curve).
* :func:`linear_transient` — no friction, no noise: ``x_t - x* = (I - eta K)^t (x_0 - x*)`` exactly.
* :func:`stationary_covariance` — no friction, noise: the linear Gaussian process
  ``x_{t+1} - x* = A (x_t - x*) + eta eps xi_t``, ``A = I - eta K``, has stationary covariance
  ``Sigma = A Sigma A^T + eta^2 eps^2 Q`` (``Q = I`` independent, ``1 1^T`` shared noise).
* :func:`friction_profile` — friction, no noise, pulled from rest: see its docstring (concave).
* :func:`mean_drift`, :func:`ratchet_force`, :func:`ratchet_elongations` — friction with noise,
  mean field (convex for mu<- > mu->, linear for symmetric friction); :func:`relaxation_steps`
  says how long the noise needs to get there (the concave / ratchet boundary of the diagram).

Energy descent. Without noise a step changes the energy ``E = x^T K x / 2 - b^T x + const`` by
``dE = -eta F.S + eta^2 S^T K S / 2 <= -eta |S|^2 (1 - eta lambda_max(K) / 2)`` because
``F_i S_i = |F_i| |S_i| >= S_i^2``: E never increases while ``eta lambda_max < 2``, which
:class:`ChainParams` enforces.
"""

from __future__ import annotations

import math

import numpy as np

from springblock.params import ChainParams

__all__ = [
    "equilibrium",
    "equal_elongations",
    "linear_transient",
    "stationary_covariance",
    "friction_profile",
    "mean_drift",
    "ratchet_force",
    "ratchet_mobility",
    "relaxation_steps",
    "ratchet_elongations",
]


def equilibrium(params: ChainParams) -> np.ndarray:
    """Frictionless, noiseless fixed point ``x* = K^{-1} b``, shape ``(L,)``."""
    return np.linalg.solve(params.stiffness_matrix(), params.load_vector())


def equal_elongations(params: ChainParams) -> np.ndarray:
    """Elongations ``e_1..e_{L+1}`` at :func:`equilibrium` (``y / (L+1)`` each for uniform k).

    Springs in series carry one tension ``T``: ``e_i = T / k_i`` with ``T = y / sum(1/k_i)``.
    """
    x = equilibrium(params)
    return np.diff(np.concatenate([[0.0], x, [params.y]]))


def linear_transient(params: ChainParams, x0, steps) -> np.ndarray:
    """Exact frictionless, noiseless positions at the given step numbers, ``(len(steps), L)``.

    ``x_t = x* + (I - eta K)^t (x_0 - x*)``, evaluated through the eigendecomposition of ``K``.
    """
    K = params.stiffness_matrix()
    w, Q = np.linalg.eigh(K)
    xs = equilibrium(params)
    d0 = Q.T @ (np.asarray(x0, dtype=np.float64) - xs)
    g = 1.0 - params.eta * w
    t = np.asarray(steps, dtype=np.float64)[:, None]
    return xs + (g**t * d0) @ Q.T


def stationary_covariance(params: ChainParams) -> np.ndarray:
    """Stationary covariance of the frictionless noisy first-order chain, ``(L, L)``.

    Solves ``Sigma = A Sigma A^T + eta^2 eps^2 Q`` in the eigenbasis of ``A = I - eta K``:
    ``Sigma' = Q' / (1 - g_i g_j)`` with ``g = 1 - eta w``. Needs ``lam = 0`` (no stationary
    state for decaying noise) and the first-order model.
    """
    if params.order != 1:
        raise ValueError("stationary_covariance is for the first-order model (order=1)")
    if params.lam != 0.0:
        raise ValueError(f"stationary_covariance needs lam = 0 (decaying noise has no stationary state), "
                         f"got {params.lam}")
    L = params.n_blocks
    w, Qv = np.linalg.eigh(params.stiffness_matrix())
    g = 1.0 - params.eta * w
    q = np.eye(L) if params.noise_mode == "independent" else np.ones((L, L))
    Cp = Qv.T @ q @ Qv * (params.eta * params.eps) ** 2
    return Qv @ (Cp / (1.0 - np.outer(g, g))) @ Qv.T


def friction_profile(params: ChainParams) -> np.ndarray:
    """Final positions of a noiseless chain pulled from rest (all blocks at 0), shape ``(L,)``.

    Blocks only move forward, and a moving block stops exactly at the forward threshold, so in
    tensions ``T_i = k_i e_i``: ``T_{i+1} - T_i = mu->_i`` for every block that moved. The blocks
    that never move are the first ``j`` (their springs keep zero elongation); the pulled blocks
    ``j+1..L`` form a tension staircase, ``T_i = T_{j+1} + sum_{m=j+1}^{i-1} mu->_m``, whose
    elongations ``T_i / k_i`` must add up to ``y``; ``T_{j+1}`` follows linearly, and ``j`` is the
    one for which block ``j`` stays: ``0 <= T_{j+1} <= mu->_j``. For uniform k and mu with
    ``n = L + 1 - j`` springs stretched, ``mu/k n(n-1)/2 <= y <= mu/k n(n+1)/2`` and
    ``e = e_{j+1} + (i - j - 1) mu/k``: elongations grow linearly toward the pulled end — a concave
    load curve. Needs ``y >= 0`` and no pinning.
    """
    if np.any(params.kappa_array != 0.0):
        raise ValueError("friction_profile assumes no on-site pinning (kappa = 0)")
    if params.y < 0:
        raise ValueError(f"friction_profile assumes a forward pull y >= 0, got y={params.y}")
    L, k, mu = params.n_blocks, params.k_array, params.mu_forward_array
    for j in range(L, -1, -1):  # j untouched blocks; springs j+1..L+1 (1-based) are stretched
        # tensions of springs j+1..L+1: T_{j+1} + offsets, offsets from the blocks j+1..L
        offs = np.concatenate([[0.0], np.cumsum(mu[j:])])
        inv_k = 1.0 / k[j:]
        T0 = (params.y - np.sum(offs * inv_k)) / np.sum(inv_k)
        upper = mu[j - 1] if j >= 1 else np.inf
        if T0 >= -1e-15 and T0 <= upper * (1 + 1e-12) + 1e-15:
            e = np.zeros(L + 1)
            e[j:] = (T0 + offs) * inv_k
            return np.cumsum(e)[:L]
    raise AssertionError("no consistent friction profile found")  # unreachable for y >= 0


def _phi(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _Phi(z):
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def mean_drift(F, mu_forward, mu_backward, eps) -> float:
    """Mean of the soft-threshold update ``E[S(F + eps xi)]``, ``xi ~ N(0, 1)``.

    ``eps`` is the noise amplitude of the first-order model (``ChainParams.eps``, or eps(t)).
    With ``z = F + eps xi``, ``S(z) = (z - mu->)_+ - (-z - mu<-)_+`` and the Gaussian identity
    ``E[(z - a)_+] = (F - a) Phi((F - a)/eps) + eps phi((F - a)/eps)``:

        E[S] = (F - mu->) Phi((F - mu->)/eps) + eps phi((F - mu->)/eps)
             + (F + mu<-) Phi(-(F + mu<-)/eps) - eps phi((F + mu<-)/eps).

    At ``F = 0`` this is > 0 when ``mu<- > mu->``: noise ratchets blocks toward the anchor.
    """
    if eps <= 0:
        raise ValueError(f"mean_drift needs eps > 0, got {eps!r}")
    a = (F - mu_forward) / eps
    b = (F + mu_backward) / eps
    return (F - mu_forward) * _Phi(a) + eps * _phi(a) + (F + mu_backward) * _Phi(-b) - eps * _phi(b)


def ratchet_force(mu_forward: float, mu_backward: float) -> float:
    """Net spring force ``F*`` at which the mean drift vanishes: ``E[S(F* + eps xi)] = 0``.

    ``E[S]`` increases strictly with ``F`` (its derivative is ``P(z > mu->) + P(z < -mu<-) > 0``),
    so the root is unique, and it is ``F* = (mu-> - mu<-) / 2`` for every ``eps``: with
    ``c = (mu-> + mu<-)/2`` and ``z = F* + w``, ``S(z) = (w - c)_+ - (-w - c)_+`` is odd in ``w``, so
    its mean vanishes for any symmetric fluctuation ``w`` — Gaussian or not, which is why the
    mean field is exact for the stationary mean elongations; the noise amplitude does not enter.
    ``F* < 0`` (a forward ratchet balanced by a backward spring force) when ``mu<- > mu->``, ``0``
    for symmetric friction.
    """
    return 0.5 * (mu_forward - mu_backward)


def ratchet_mobility(mu_forward: float, mu_backward: float, eps: float) -> float:
    """Slope of the mean drift at ``F*``: ``dE[S]/dF = 2 Phi(-(mu-> + mu<-) / (2 eps))``.

    The linearised mean dynamics is ``x <- x - eta m K (x - x_inf)``: noise turns static friction
    into an effective mobility ``m`` in (0, 1], exponentially small when ``eps << mu``.
    """
    if eps <= 0:
        raise ValueError(f"ratchet_mobility needs eps > 0, got {eps!r}")
    return 2.0 * _Phi(-0.5 * (mu_forward + mu_backward) / eps)


def relaxation_steps(params: ChainParams, eps: float | None = None) -> float:
    """Steps for the slowest mode of the mean to relax by 1/e: ``1 / (eta m lambda_min(K))``.

    Where ``params.n_steps`` is much smaller, the chain has not left its pulled-from-rest
    :func:`friction_profile` (concave); much larger, it has reached the ratchet profile of
    :func:`ratchet_elongations` (linear or convex). Infinite without noise.
    """
    eps = params.eps if eps is None else eps
    if eps == 0:
        return math.inf
    mu_f, mu_b = float(np.mean(params.mu_forward_array)), float(np.mean(params.mu_backward_array))
    lam_min = float(np.linalg.eigvalsh(params.stiffness_matrix())[0])
    return 1.0 / (params.eta * ratchet_mobility(mu_f, mu_b, eps) * lam_min)


def ratchet_elongations(params: ChainParams) -> np.ndarray:
    """Mean-field elongations ``e_1..e_{L+1}`` of a noisy chain with (asymmetric) friction.

    Mean field: every block's mean drift vanishes in the stationary state, so the mean net spring
    force on every block is ``F* = ratchet_force(mu->, mu<-) = (mu-> - mu<-)/2``. In tensions,
    ``T_{i+1} - T_i = F*``: ``T_i = T_1 + (i - 1) F*``, with ``sum T_i / k_i = y``. For uniform k
    the elongation gradient is ``F*/k`` per spring — negative (convex curve) when mu<- > mu->,
    zero (linear) for symmetric friction. Scalar friction and no pinning only.
    """
    if np.any(params.kappa_array != 0.0):
        raise ValueError("ratchet_elongations assumes no on-site pinning (kappa = 0)")
    if isinstance(params.mu_forward, tuple) or isinstance(params.mu_backward, tuple):
        raise ValueError("ratchet_elongations needs scalar mu_forward and mu_backward")
    Fs = ratchet_force(params.mu_forward, params.mu_backward)
    k = params.k_array
    offs = Fs * np.arange(params.n_blocks + 1)
    T1 = (params.y - np.sum(offs / k)) / np.sum(1.0 / k)
    return (T1 + offs) / k
