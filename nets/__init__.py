"""Real network training with per-layer probes (SPEC §1, §3, §5.2).

Train the MLPs, CNNs and leaky ResNets (:mod:`nets.resnet`, with the bottleneck measures of
:mod:`nets.bottleneck`) of the original noise × nonlinearity phase diagrams on real data (MNIST,
Fashion-MNIST, CIFAR-10, Gaussian mixtures, any ``.npz``) and record the per-layer load curve
``log D_l`` during training. Any other ``nn.Module``: :func:`load_curve`, and
:class:`LoadCurveRecorder` in your own training loop (``docs/your-own-network.md``).
One network: :func:`train`; many at once as a batched ensemble:
:func:`train_ensemble`. Imports torch and numpy (never numba); the load-curve shape numbers come
from :mod:`springblock.observables`.

Quick start::

    python -m nets fetch mnist                      # once: MNIST into $SPRINGBLOCK_DATA or ./data
    python -m nets train --alpha 0 --noise label=0.6 --json
"""

from nets.data import DataNotFoundError, Dataset, fetch_mnist, load_dataset, teacher_data
from nets.load_curve import LoadCurve, LoadCurveRecorder, load_curve
from nets.models import CNN, MLP, EnsembleCNN, EnsembleMLP
from nets.probes import layer_curve, log_separation, log_separation_direct, log_trace_ratio
from nets.resnet import EnsembleLeakyResNet, LeakyResNet
from nets.train import History, TrainConfig, train, train_ensemble

__all__ = [
    "TrainConfig",
    "History",
    "train",
    "train_ensemble",
    "load_dataset",
    "fetch_mnist",
    "Dataset",
    "DataNotFoundError",
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
