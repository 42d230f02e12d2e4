"""Which friction stands for which network (SPEC §2.4): the α → (μ→, μ←) presets.

Pure Python (no NumPy, no Numba), so a spec can name and check presets without loading the
simulator. Rows of a diagram are the network's LeakyReLU slope α (0 = ReLU, most nonlinear);
``s = 1 − α`` is the nonlinearity:

=================  ==========================================================================
preset             friction at slope α
=================  ==========================================================================
``scale-both``     both thresholds scale together at a fixed asymmetry:
                   μ→ = s · mu_max, μ← = ratio · s · mu_max
``vary-forward``   μ← = mu_max fixed, μ→ = s · mu_max (α = 1: a frictionless forward
                   direction, the strongest ratchet)
``vary-asymmetry`` μ→ = mu_max fixed, μ← = mu_max · (1 + (ratio − 1) · α)
``mesh``           leaky-ResNet sweeps (rows = effective depth L̃):
                   :func:`phase_diagrams.simulated.mesh_grid`
=================  ==========================================================================
"""

from __future__ import annotations

import math

__all__ = ["FRICTION_PRESETS", "MESH_PRESET", "SIM_PRESETS", "friction_for"]

#: The α → friction presets.
FRICTION_PRESETS = ("scale-both", "vary-forward", "vary-asymmetry")
#: The leaky-ResNet counterpart (rows = effective depth L̃).
MESH_PRESET = "mesh"
#: Every simulator preset a grid spec may name.
SIM_PRESETS = FRICTION_PRESETS + (MESH_PRESET,)


def friction_for(preset: str, alpha: float, mu_max: float = 0.1, ratio: float = 2.0) -> tuple[float, float]:
    """``(μ→, μ←)`` that stands for LeakyReLU slope ``alpha`` under ``preset`` (module table).

    Raises
    ------
    ValueError
        Unknown preset, ``alpha`` outside [0, 1], ``mu_max < 0``, ``ratio < 1`` or a non-finite value.
    """
    if preset not in FRICTION_PRESETS:
        raise ValueError(f"unknown friction preset {preset!r}; choose one of {', '.join(FRICTION_PRESETS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if not (math.isfinite(mu_max) and math.isfinite(ratio)) or mu_max < 0 or ratio < 1:
        raise ValueError(f"need finite mu_max >= 0 and ratio >= 1, got mu_max={mu_max!r}, ratio={ratio!r}")
    s = 1.0 - alpha
    if preset == "scale-both":
        return s * mu_max, ratio * s * mu_max
    if preset == "vary-forward":
        return s * mu_max, mu_max
    return mu_max, mu_max * (1.0 + (ratio - 1.0) * alpha)
