"""Layer meshes of the leaky ResNet (SPEC §5.2): step schemes, the stability check and the
adaptive rule. NumPy only (no torch), so :class:`nets.config.TrainConfig` can validate a mesh
without importing torch. The model is in :mod:`nets.resnet`.

Step schemes (:func:`step_sizes`; every scheme has ``Σ ρ_ℓ = 1``)
    ``equidistant``  ``ρ_ℓ = 1/L``.
    ``irregular``    small–large–small: ``ρ_ℓ ∝ 1 + (r − 1) sin(π (ℓ − ½) / L)`` with
                     ``r = IRREGULAR_RATIO = 4`` (the middle step is ~3× the end steps).
    ``adaptive``     starts equidistant; during training ``ρ`` is re-set every ``adapt_every``
                     epochs from the measured relative speeds by :func:`adaptive_steps`.

Stability. ``|1 − ρ_ℓ L̃| < 1`` (i.e. ``ρ_ℓ L̃ < 2``) is required of every mesh (the leak alone
must contract); :func:`check_mesh` raises naming the offending layer otherwise.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["STEP_SCHEMES", "IRREGULAR_RATIO", "step_sizes", "check_mesh", "adaptive_steps"]

STEP_SCHEMES = ("equidistant", "irregular", "adaptive")
#: Ratio of the largest to the smallest factor of the irregular (small–large–small) mesh.
IRREGULAR_RATIO = 4.0


def step_sizes(scheme: str, depth: int) -> np.ndarray:
    """Initial layer step sizes ``ρ_1..ρ_L`` (float64, ``Σρ = 1``) of a step scheme.

    ``adaptive`` starts from the equidistant mesh (it is re-set during training).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if scheme in ("equidistant", "adaptive"):
        rho = np.ones(depth)
    elif scheme == "irregular":
        ell = np.arange(1, depth + 1)
        rho = 1.0 + (IRREGULAR_RATIO - 1.0) * np.sin(np.pi * (ell - 0.5) / depth)
    else:
        raise ValueError(f"step_scheme must be one of {STEP_SCHEMES}, got {scheme!r}")
    return rho / rho.sum()


def check_mesh(rho, ltilde: float) -> np.ndarray:
    """Validate a mesh: finite, positive, sums to 1 (to 1e-6), ``ρ_ℓ L̃ < 2``. Returns float64."""
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim != 1 or rho.size < 1:
        raise ValueError(f"rho must be a non-empty 1-D array, got shape {rho.shape}")
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
        raise ValueError(f"rho must be finite and > 0, got {rho.tolist()}")
    if abs(rho.sum() - 1.0) > 1e-6:
        raise ValueError(f"rho must sum to 1, got sum {rho.sum()!r}")
    if not (math.isfinite(ltilde) and ltilde >= 0):
        raise ValueError(f"ltilde must be finite and >= 0, got {ltilde!r}")
    bad = np.flatnonzero(rho * ltilde >= 2.0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"unstable mesh: rho[{i}] * ltilde = {rho[i] * ltilde:.4g} >= 2 "
                         f"(the leak 1 - rho*ltilde must lie in (-1, 1]); use more layers or a smaller ltilde")
    return rho


def adaptive_steps(speeds, rho, ltilde: float, *, rate: float = 0.5, floor: float = 1e-3,
                   min_ratio: float = 0.25, max_ratio: float = 4.0, leak_out: float = 0.9,
                   leak_in: float = 1.8) -> np.ndarray:
    """The adaptive mesh rule: new ``ρ`` from the relative speeds ``c_ℓ`` measured on mesh ``rho``.

    Rule (SPEC §5.2, ``ρ_ℓ ∝ 1/c_ℓ``, with safeguards), for ``L`` layers:

    1. *floor*: ``c̃_ℓ = max(c_ℓ, floor · max_j c_j)`` — a frozen layer cannot ask for an
       unbounded step.
    2. *target*: ``t_ℓ = (1/c̃_ℓ) / Σ_j (1/c̃_j)`` — equal relative change per layer.
    3. *damping*: ``ρ*_ℓ ∝ ρ_ℓ^{1−rate} t_ℓ^{rate}`` (geometric interpolation, normalised), so one
       re-set moves the mesh only part of the way and the network can follow.
    4. *bounds*: ``min_ratio/L ≤ ρ_ℓ ≤ hi_ℓ`` with ``hi_ℓ = min(max_ratio/L, leak_ℓ/L̃)``, where
       ``leak_ℓ = leak_out`` (0.9: ``ρ_ℓL̃ < 1``) for layers *outside the bottleneck* — speed above
       the median speed — and ``leak_in`` (1.8: still ``|1 − ρL̃| < 1``) for the slow layers inside
       it. The bounded mesh is ``ρ_ℓ = clip(t ρ*_ℓ, lo, hi_ℓ)`` with the one scale ``t`` that makes
       ``Σρ = 1`` (water-filling; the order of the steps is kept).

    Returns the new mesh (float64, ``Σρ = 1`` to rounding). Raises ``ValueError`` naming the value
    for non-finite or negative speeds, a bad ``rate``, or bounds that admit no mesh
    (``L·min_ratio/L > 1`` or ``Σ hi_ℓ < 1``, e.g. ``L̃`` too large for ``L`` layers).
    """
    c = np.asarray(speeds, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    n = rho.size
    if c.shape != (n,):
        raise ValueError(f"speeds must have one value per layer ({n}), got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"speeds must be finite and >= 0, got {c.tolist()}")
    if c.max() <= 0:
        raise ValueError("all speeds are zero: the representation does not move, no mesh to adapt to")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor!r}")
    if not (0 < min_ratio <= 1 <= max_ratio):
        raise ValueError(f"need 0 < min_ratio <= 1 <= max_ratio, got {min_ratio!r}, {max_ratio!r}")
    check_mesh(rho, ltilde)
    ct = np.maximum(c, floor * c.max())
    target = (1.0 / ct) / np.sum(1.0 / ct)
    new = np.exp((1.0 - rate) * np.log(rho) + rate * np.log(target))
    new /= new.sum()
    lo = np.full(n, min_ratio / n)
    leak = np.where(c > np.median(c), leak_out, leak_in)
    hi = np.full(n, max_ratio / n)
    if ltilde > 0:
        hi = np.minimum(hi, leak / ltilde)
    if lo.sum() > 1.0 + 1e-12 or hi.sum() < 1.0 - 1e-12 or np.any(lo > hi):
        raise ValueError(
            f"adaptive_steps: no mesh of {n} layers satisfies the bounds for ltilde={ltilde!r} "
            f"(sum of upper bounds {hi.sum():.4g} < 1); use more layers or a smaller ltilde"
        )
    return _water_fill(new, lo, hi)


def _water_fill(x, lo, hi) -> np.ndarray:
    """``clip(t · x, lo, hi)`` with the scalar ``t > 0`` for which the entries sum to 1.

    ``Σ clip(t x, lo, hi)`` is continuous and non-decreasing in ``t``, from ``Σ lo ≤ 1`` to
    ``Σ hi ≥ 1``, so ``t`` is found by bisection on ``log t``; the last rounding residual is put
    on the entries strictly inside their bounds.
    """
    def total(log_t):
        return np.clip(np.exp(log_t) * x, lo, hi).sum()

    a, b = np.log(lo.min() / x.max()) - 1.0, np.log(hi.max() / x.min()) + 1.0
    for _ in range(200):
        mid = 0.5 * (a + b)
        if total(mid) < 1.0:
            a = mid
        else:
            b = mid
    out = np.clip(np.exp(b) * x, lo, hi)
    inside = (out > lo) & (out < hi)
    if inside.any():
        out[inside] += (1.0 - out.sum()) * out[inside] / out[inside].sum()
    return out
