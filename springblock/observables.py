"""Shape of a load curve, and the spring-block observables that produce one (SPEC §1.3, §2.1).

Pure NumPy, shared by the simulator (``springblock``) and the network probes (``nets``): both
describe layer-wise learning with the same numbers, so a measured and a simulated curve compare
exactly.

Load curve
    ``curve[..., l]`` for ``l = 0..L`` — for a network ``log D_l`` (layer 0 = the input), for a
    chain ``y - x_l`` with the wall ``x_0 = 0`` prepended.
Loads
    ``d_l = curve[l-1] - curve[l]``, ``l = 1..L`` (positive when layer ``l`` improves separation;
    for a chain, the elongation ``e_l`` of spring ``l``). They telescope:
    ``sum(d) = curve[0] - curve[L]``.
Elongations (chains only)
    ``e_i = x_i - x_{i-1}`` of all ``L + 1`` springs, ``i = 1..L+1`` (wall ``x_0 = 0``, anchor
    ``x_{L+1} = y``), ``sum(e) = y``. The loads are the first ``L`` of them; the anchor spring's
    ``e_{L+1} = y - x_L`` is the curve's end value, not a load. Throughout the package
    "elongations" means these ``L + 1`` numbers and "loads" the ``L`` per-layer ``d_l``.
Linearity
    ``v = std(d_1..d_L)`` (population std; 0 for a perfectly linear curve).
Curvature
    ``c = d_1 - d_L`` (= the sum of the second differences ``curve[l+1] - 2 curve[l] + curve[l-1]``,
    ``l = 1..L-1``, of the curve). ``c > 0``: convex, shallow layers learn more; ``c < 0``:
    concave, deep layers learn more.
Normalised curvature
    ``c / sum(d)``: the difference between the first and last load as a fraction of the total
    separation gained; NaN where ``sum(d) <= 0`` (the curve does not descend).
Regime
    ``"concave"`` if ``c/sum(d) < -tol``, ``"convex"`` if ``> tol``, ``"linear"`` otherwise, with
    ``tol = REGIME_TOL = 0.1`` by default; ``"undefined"`` where ``sum(d) <= 0``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "REGIME_TOL",
    "REGIMES",
    "load_curve",
    "elongations",
    "loads",
    "linearity",
    "curvature",
    "normalized_curvature",
    "regime",
    "normalized_curve",
    "curve_summary",
    "chain_energy",
]

#: Default tolerance on ``|c| / sum(d)`` below which a curve is called linear. With 7 loads, a
#: curve whose loads vary linearly by about +-35 % around their mean is still "linear".
REGIME_TOL = 0.1
REGIMES = ("concave", "linear", "convex")


def _as_curve(curve) -> np.ndarray:
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim < 1 or c.shape[-1] < 2:
        raise ValueError(f"a load curve needs at least 2 points along its last axis, got shape {c.shape}")
    return c


def load_curve(x, y) -> np.ndarray:
    """Chain load curve ``y - x_l`` with the wall prepended.

    Parameters
    ----------
    x : array, shape ``(..., L)``
        Block positions.
    y : float or array broadcasting against ``x[..., 0]``
        Anchor position(s).

    Returns
    -------
    array, shape ``(..., L + 1)``: ``[y, y - x_1, ..., y - x_L]``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)[..., None]
    wall = np.zeros(x.shape[:-1] + (1,))
    return y - np.concatenate([wall, x], axis=-1)


def elongations(x, y) -> np.ndarray:
    """Spring elongations ``e_i = x_i - x_{i-1}``, ``i = 1..L+1`` (wall 0, anchor ``y``).

    Returns shape ``(..., L + 1)``; ``e.sum(-1) == y``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64)[..., None], x.shape[:-1] + (1,))
    wall = np.zeros(x.shape[:-1] + (1,))
    return np.diff(np.concatenate([wall, x, y], axis=-1), axis=-1)


def loads(curve) -> np.ndarray:
    """Loads ``d_l = curve[l-1] - curve[l]``, shape ``(..., L)``."""
    c = _as_curve(curve)
    return c[..., :-1] - c[..., 1:]


def linearity(curve) -> np.ndarray:
    """Population standard deviation of the loads (0 = perfectly linear)."""
    return loads(curve).std(axis=-1)


def curvature(curve) -> np.ndarray:
    """``c = d_1 - d_L``: > 0 convex (shallow layers learn more), < 0 concave."""
    d = loads(curve)
    return d[..., 0] - d[..., -1]


def normalized_curvature(curve) -> np.ndarray:
    """``c / sum(d)``; NaN where the curve does not descend (``sum(d) <= 0``)."""
    d = loads(curve)
    total = d.sum(axis=-1)
    c = d[..., 0] - d[..., -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, c / np.where(total > 0, total, 1.0), np.nan)


def regime(curve, tol: float = REGIME_TOL):
    """Three-way label of a curve's shape: ``"concave"``, ``"linear"`` or ``"convex"``.

    ``|c / sum(d)| <= tol`` is linear. A curve that does not descend (``sum(d) <= 0``) is
    ``"undefined"``. Returns a ``str`` for one curve, an object array of labels otherwise.
    """
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"regime tolerance must be finite and >= 0, got {tol!r}")
    cn = np.asarray(normalized_curvature(curve))
    lab = np.full(cn.shape, "linear", dtype=object)
    lab[cn < -tol] = "concave"
    lab[cn > tol] = "convex"
    lab[np.isnan(cn)] = "undefined"
    return lab.item() if lab.ndim == 0 else lab


def normalized_curve(curve) -> np.ndarray:
    """``(curve - min) / (max - min)`` along the last axis (for plotting); 0 where flat."""
    c = _as_curve(curve)
    lo = c.min(axis=-1, keepdims=True)
    span = c.max(axis=-1, keepdims=True) - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span > 0, (c - lo) / np.where(span > 0, span, 1.0), 0.0)


def curve_summary(curve, tol: float = REGIME_TOL) -> dict:
    """All shape numbers of one curve as plain Python values (for records and JSON)."""
    c = _as_curve(curve)
    if c.ndim != 1:
        raise ValueError(f"curve_summary takes one curve (1-D), got shape {c.shape}")
    return {
        "curve": c.tolist(),
        "loads": loads(c).tolist(),
        "linearity": float(linearity(c)),
        "curvature": float(curvature(c)),
        "normalized_curvature": float(normalized_curvature(c)),
        "regime": regime(c, tol),
    }


def chain_energy(x, y, k, kappa=0.0, pin_position=0.0) -> np.ndarray:
    """Elastic energy ``sum_i k_i e_i^2 / 2 + sum_i kappa_i (x_i - a_i)^2 / 2``.

    Parameters
    ----------
    x : array ``(..., L)``; y : anchor position; k : scalar or ``(L+1,)`` spring stiffnesses;
    kappa, pin_position : scalar or ``(L,)`` on-site pinning stiffness and rest positions ``a_i``.
    """
    x = np.asarray(x, dtype=np.float64)
    e = elongations(x, y)
    pin = np.asarray(kappa, dtype=np.float64) * (x - np.asarray(pin_position, dtype=np.float64)) ** 2
    return 0.5 * (np.asarray(k, dtype=np.float64) * e**2).sum(-1) + 0.5 * pin.sum(-1)
