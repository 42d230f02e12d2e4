"""Noise × nonlinearity phase diagrams: sweeps of real networks, their spring-block counterpart,
a SQLite store, figures, the comparison, per-cell fits and the calibrated chain (SPEC §4–5).

    from phase_diagrams import load_spec, run_sweep, plot_all, calibrate, Store
    run_sweep("runs.sqlite", "label-noise", backend="joblib")   # resumable; dask for clusters
    plot_all("runs.sqlite", "label-noise", "figures")
    cal = calibrate(Store("runs.sqlite").runs("label-noise"))

Every function that takes a store takes it first, as a path or a :class:`Store`. The command
line (``python -m phase_diagrams``) calls :mod:`phase_diagrams.jobs`. Public names are loaded
lazily (``import phase_diagrams`` imports neither torch nor numba).
"""

from importlib import import_module

_LAZY = {
    # specs
    "GridSpec": "phase_diagrams.spec",
    "SimSpec": "phase_diagrams.spec",
    "AxisSpec": "phase_diagrams.spec",
    "SpecError": "phase_diagrams.spec",
    "load_spec": "phase_diagrams.spec",
    "preset_spec": "phase_diagrams.spec",
    "spec_to_toml": "phase_diagrams.spec",
    "friction_for": "phase_diagrams.friction",
    # store and sweeps
    "Store": "phase_diagrams.store",
    "run_sweep": "phase_diagrams.runner",
    "SweepReport": "phase_diagrams.runner",
    # the simulated counterpart
    "DiagramSpec": "phase_diagrams.simulated",
    "simulate_diagram": "phase_diagrams.simulated",
    "simulate_for_spec": "phase_diagrams.simulated",
    # comparison, figures
    "measured_cells": "phase_diagrams.comparison",
    "compare": "phase_diagrams.comparison",
    "seed_ceiling": "phase_diagrams.comparison",
    "plot_all": "phase_diagrams.jobs",
    # per-cell fits
    "fit_curve": "phase_diagrams.fitting",
    "FitOptions": "phase_diagrams.fitting",
    "FitResult": "phase_diagrams.fitting",
    "fit_store": "phase_diagrams.jobs",
    # calibration
    "calibrate": "phase_diagrams.calibration",
    "Calibration": "phase_diagrams.calibration",
    "CalibrationOptions": "phase_diagrams.calibration",
    # leaky-ResNet bottleneck studies
    "run_bottleneck": "phase_diagrams.bottleneck",
}

__all__ = sorted(_LAZY) + ["jobs"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name == "jobs":
        return import_module("phase_diagrams.jobs")
    raise AttributeError(f"module 'phase_diagrams' has no attribute {name!r}")


def __dir__():
    return __all__
