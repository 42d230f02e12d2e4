"""Spring-block model of layer-wise feature learning (Shi, Pan & Dokmanic, PRL 2025).

A chain of ``L`` blocks (one per hidden layer) between a wall (the input) and an anchor ``y``
(the supervision), with Coulomb friction (the nonlinearity) and noise (SGD/label noise).

Public names are loaded lazily so that ``import springblock.observables`` (pure NumPy, shared
with ``nets``) does not import Numba.
"""

from importlib import import_module

__all__ = [
    "ChainParams",
    "simulate",
    "SimulationResult",
    "chain_seeds",
    "standard_normals",
    "observables",
    "theory",
]

_LAZY = {
    "ChainParams": "springblock.params",
    "simulate": "springblock.dynamics",
    "SimulationResult": "springblock.dynamics",
    "chain_seeds": "springblock.dynamics",
    "standard_normals": "springblock.dynamics",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in ("observables", "theory"):
        return import_module(f"springblock.{name}")
    raise AttributeError(f"module 'springblock' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
