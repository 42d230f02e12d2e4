"""Noise x nonlinearity phase diagrams: simulated (this issue) and, later, measured on networks."""

__all__ = ["DiagramSpec", "simulate_diagram", "run_simulated_diagrams", "plot_load_curve_grid",
           "plot_curvature_heatmap", "friction_for", "PRESETS"]


def __getattr__(name):
    if name in __all__:
        from phase_diagrams import simulated

        return getattr(simulated, name)
    raise AttributeError(f"module 'phase_diagrams' has no attribute {name!r}")
