"""Noise x nonlinearity phase diagrams: sweeps of real networks, their spring-block counterpart,
a SQLite store, figures and the comparison (SPEC §4).

    from phase_diagrams import load_spec, run_sweep, plot_all, jobs
    spec = load_spec("label-noise")                    # a preset, or a TOML file
    run_sweep(spec, "runs.sqlite", backend="joblib")   # resumable; dask for clusters
    jobs.run_main("label-noise-small")                 # the README's main job

Public names are loaded lazily (``import phase_diagrams`` imports neither torch nor numba).
"""

from importlib import import_module

_LAZY = {
    "GridSpec": "phase_diagrams.spec",
    "SimSpec": "phase_diagrams.spec",
    "AxisSpec": "phase_diagrams.spec",
    "SpecError": "phase_diagrams.spec",
    "load_spec": "phase_diagrams.spec",
    "preset_spec": "phase_diagrams.spec",
    "spec_to_toml": "phase_diagrams.spec",
    "Store": "phase_diagrams.store",
    "run_sweep": "phase_diagrams.runner",
    "run_unit": "phase_diagrams.runner",
    "SweepReport": "phase_diagrams.runner",
    "measured_cells": "phase_diagrams.compare",
    "compare": "phase_diagrams.compare",
    "plot_all": "phase_diagrams.plots",
    "DiagramSpec": "phase_diagrams.simulated",
    "simulate_diagram": "phase_diagrams.simulated",
    "simulate_for_spec": "phase_diagrams.simulated",
    "run_simulated_diagrams": "phase_diagrams.simulated",
    "plot_load_curve_grid": "phase_diagrams.simulated",
    "plot_curvature_heatmap": "phase_diagrams.simulated",
    "friction_for": "phase_diagrams.simulated",
    "mesh_grid": "phase_diagrams.simulated",
    "fit_curve": "phase_diagrams.fitting",
    "FitOptions": "phase_diagrams.fitting",
    "FitResult": "phase_diagrams.fitting",
    "calibrate": "phase_diagrams.calibration",
    "Calibration": "phase_diagrams.calibration",
    "CalibrationOptions": "phase_diagrams.calibration",
    "seed_ceiling": "phase_diagrams.compare",
    "run_bottleneck": "phase_diagrams.bottleneck",
    "teacher_study": "phase_diagrams.bottleneck",
    "load_curve_study": "phase_diagrams.bottleneck",
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
