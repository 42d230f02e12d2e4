"""The public surface: names that do not change with import order, imports that stay light and
change no global state, one argument order."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import pytest

PACKAGES = {"springblock": {"observables", "theory"}, "nets": set(), "phase_diagrams": {"jobs"}}


def _import_all(pkg: str) -> None:
    mod = importlib.import_module(pkg)
    for info in pkgutil.iter_modules(mod.__path__):
        if info.name != "__main__":
            importlib.import_module(f"{pkg}.{info.name}")


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_public_names_are_what_they_say_after_every_submodule_is_imported(pkg):
    # importing a submodule binds it as an attribute of its package: a public function with the
    # name of a module (phase_diagrams.compare, nets.train) would silently become that module
    _import_all(pkg)
    mod = importlib.import_module(pkg)
    assert len(mod.__all__) == len(set(mod.__all__))
    for name in mod.__all__:
        obj = getattr(mod, name)
        assert isinstance(obj, types.ModuleType) == (name in PACKAGES[pkg]), f"{pkg}.{name} is {obj!r}"
    assert set(dir(mod)) >= set(mod.__all__)
    # ... and every submodule is reachable as itself (`import nets.train as t` once gave a function)
    for info in pkgutil.iter_modules(mod.__path__):
        if info.name != "__main__":
            assert getattr(mod, info.name) is sys.modules[f"{pkg}.{info.name}"], f"{pkg}.{info.name} is shadowed"


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_specs_and_the_cli_parser_load_without_torch_or_numba():
    # a spec (and so `--help` and every CLI error about a spec) never waits for torch or numba
    loaded = _fresh("import sys, phase_diagrams.spec, phase_diagrams.friction, nets.config\n"
                    "from phase_diagrams.cli import _parser; _parser()\n"
                    "print(sorted(m for m in ('torch', 'numba', 'matplotlib.pyplot') if m in sys.modules))")
    assert loaded == "[]"


def test_library_code_leaves_the_matplotlib_backend_and_thread_counts_alone():
    code = """
import matplotlib, torch, numba
matplotlib.use("svg")
torch.set_num_threads(2); numba.set_num_threads(1)
import phase_diagrams.plots, phase_diagrams.jobs, phase_diagrams.bottleneck, phase_diagrams.simulated
import pandas as pd
from phase_diagrams.plots import plot_heatmap
from phase_diagrams.runner import run_unit
from nets import TrainConfig
cells = pd.DataFrame([dict(row=0, col=0, row_value=0.0, col_value=0.0, noise_rank=0, regime="linear",
                           normalized_curvature=0.0)])
plot_heatmap(cells)
cfg = TrainConfig(dataset="gaussian", n_train=64, image_size=3, depth=2, width=4, epochs=1, probe_every=0)
run_unit([cfg.to_dict()], threads=1)
print(matplotlib.get_backend(), torch.get_num_threads(), numba.get_num_threads())
"""
    assert _fresh(code) == "svg 2 1"


def test_every_store_taking_function_takes_the_store_first():
    import inspect

    from phase_diagrams import jobs, plots, runner, simulated

    funcs = [runner.run_sweep, simulated.simulate_for_spec, jobs.sweep_and_simulate, jobs.add_runs,
             jobs.compare_store, jobs.plot_all, jobs.export, jobs.status_table, jobs.run_main, jobs.fit_store,
             jobs.fit_job, jobs.calibrate_job]
    for f in funcs:
        assert next(iter(inspect.signature(f).parameters)) == "store", f.__name__
    assert not hasattr(plots, "plot_all")  # figures only read tables; jobs.plot_all reads the store


def test_a_spec_in_the_store_place_is_a_clear_error(tmp_path):
    from phase_diagrams import run_sweep
    from phase_diagrams.spec import SpecError, preset_spec

    with pytest.raises(TypeError, match=r"store: expected a path or a Store, got GridSpec"):
        run_sweep(preset_spec("smoke"), tmp_path / "s.sqlite")
    with pytest.raises(SpecError, match=r"spec: expected a GridSpec"):
        run_sweep(tmp_path / "s.sqlite", 3.5)
