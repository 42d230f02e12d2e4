"""Real network training with per-layer probes (SPEC §1, §3, §5.2).

Train the MLPs, CNNs and leaky ResNets (:mod:`nets.resnet`, with the bottleneck measures of
:mod:`nets.bottleneck`) of the original noise × nonlinearity phase diagrams on real data (MNIST,
Fashion-MNIST, CIFAR-10, Gaussian mixtures, any ``.npz``) and record the per-layer load curve
``log D_l`` during training. Any other ``nn.Module``: :func:`load_curve`, and
:class:`LoadCurveRecorder` in your own training loop (``docs/your-own-network.md``).
One network: :func:`train`; many at once as a batched ensemble: :func:`train_ensemble` (one
loop, :mod:`nets.training`; a single network is an ensemble of one). Imports torch and numpy
(never numba); the load-curve shape numbers come from :mod:`springblock.observables`.

Modules: :mod:`nets.config` (``TrainConfig``; no torch), :mod:`nets.data`, :mod:`nets.models`,
:mod:`nets.resnet` and :mod:`nets.mesh`, :mod:`nets.noise`, :mod:`nets.optim`,
:mod:`nets.evaluate`, :mod:`nets.training`, :mod:`nets.history`, :mod:`nets.probes`,
:mod:`nets.bottleneck`, :mod:`nets.hooks` (any ``nn.Module``), :mod:`nets.cli`. Public names are
loaded lazily, so ``import nets.config`` does not import torch.

Quick start::

    python -m nets fetch mnist                      # once: MNIST into $SPRINGBLOCK_DATA or ./data
    python -m nets train --alpha 0 --noise label=0.6 --json
"""

from importlib import import_module

__all__ = [
    "TrainConfig",
    "History",
    "train",
    "train_ensemble",
    "load_dataset",
    "fetch_mnist",
    "Dataset",
    "DataNotFoundError",
    "DataError",
    "MLP",
    "CNN",
    "EnsembleMLP",
    "EnsembleCNN",
    "LeakyResNet",
    "EnsembleLeakyResNet",
    "teacher_data",
    "log_separation",
    "log_separation_direct",
    "log_trace_ratio",
    "layer_curve",
    "load_curve",
    "LoadCurve",
    "LoadCurveRecorder",
]

_LAZY = {
    "TrainConfig": "nets.config",
    "History": "nets.history",
    "train": "nets.training",
    "train_ensemble": "nets.training",
    "load_dataset": "nets.data",
    "fetch_mnist": "nets.data",
    "Dataset": "nets.data",
    "DataNotFoundError": "nets.data",
    "DataError": "nets.data",
    "teacher_data": "nets.data",
    "MLP": "nets.models",
    "CNN": "nets.models",
    "EnsembleMLP": "nets.models",
    "EnsembleCNN": "nets.models",
    "LeakyResNet": "nets.resnet",
    "EnsembleLeakyResNet": "nets.resnet",
    "log_separation": "nets.probes",
    "log_separation_direct": "nets.probes",
    "log_trace_ratio": "nets.probes",
    "layer_curve": "nets.probes",
    "load_curve": "nets.hooks",
    "LoadCurve": "nets.hooks",
    "LoadCurveRecorder": "nets.hooks",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nets' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
