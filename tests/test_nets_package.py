"""The package surface of ``nets``: no name that changes with import order, torch-free config."""

import importlib
import pkgutil
import subprocess
import sys
import types

import nets


def test_public_names_are_never_modules_whatever_was_imported():
    # import every submodule first: a submodule named like a public function (nets/train.py vs
    # nets.train) would replace the function by the module on the package
    for info in pkgutil.iter_modules(nets.__path__):
        if info.name != "__main__":  # runs the command line
            importlib.import_module(f"nets.{info.name}")
    shadowed = [n for n in nets.__all__ if isinstance(getattr(nets, n), types.ModuleType)]
    assert shadowed == []
    assert callable(nets.train) and callable(nets.load_curve)
    assert sorted(dir(nets)) == sorted(nets.__all__)


def test_config_imports_without_torch():
    # a sweep spec builds and hashes TrainConfigs without importing torch (or numba)
    code = ("import sys, nets.config; nets.config.TrainConfig(alpha=1.0).to_dict(); "
            "bad = [m for m in ('torch', 'numba') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
