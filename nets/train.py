"""Training with per-layer probes (SPEC §3.2–3.3): one network, or a batched ensemble.

Protocol (original defaults, :class:`TrainConfig`)
    Adam, cross-entropy, lr 1e-3, full batch (``batch_size=None`` = ``n_train``), 100 epochs,
    2560 MNIST training images resized to 10×10, accuracy on the full test set. An epoch visits
    the training subset once in batches of ``batch_size`` (reshuffled every epoch when
    ``batch_size < n_train``; an incomplete last batch is dropped). Early stop when the epoch's
    mean training loss falls below ``early_stop_loss`` (1e-4). A non-finite loss ends the run
    with status ``"diverged"`` (the update of that step is not applied) — never an exception.

Noise axes (each a phase-diagram column axis)
    ``label_noise`` p: in every batch a random ⌊p·B⌋ of the B labels are replaced by uniform
    random labels in ``0..K−1`` (a replacement may equal the original label, so the fraction of
    *changed* labels is p·(K−1)/K on average), and the inputs get Gaussian noise of standard
    deviation ``p · std(batch)`` (``std`` over all entries of the batch, unbiased). Fresh every
    batch. ``lr``, ``dropout``, ``batch_size``, and ``sgld_temperature`` T: after every optimiser
    step each parameter gets ``θ ← θ + sqrt(2 · lr · T) · ξ``, ``ξ ~ N(0, 1)`` (Langevin
    "shaking").

Randomness (seeded, deterministic on CPU)
    ``seed`` is split by ``numpy.random.SeedSequence`` into three streams: the initialisation
    (PyTorch default init drawn from the global generator seeded with it), the data noise (one
    ``torch.Generator``: shuffles, label and input noise, SGLD — in that order within a step),
    and dropout (the global generator re-seeded after initialisation, used only by
    ``nn.Dropout``). The caller's global RNG state is restored afterwards (``fork_rng``).

Probes (SPEC §1.2, §3.3)
    Every ``probe_every`` epochs (and at epoch 0 and at the last epoch) the load curve
    ``log D_l``, ``l = 0..depth`` and its trace-ratio variant are computed on the clean probe
    set (default the training subset, eval mode, post-activation features), optionally with the
    test accuracy. A probe draws no random numbers and restores train mode, so training is
    bit-identical with or without probes.

Leaky ResNets (``model="leaky_resnet"``, :mod:`nets.resnet`; SPEC §3.1, §5.2)
    The objective is the data term plus ``(λ/(2L̃)) Σ ρ_ℓ ‖W_ℓ‖_F²`` (``weight_decay`` = λ,
    ``ltilde`` = L̃), the reported ``train_loss`` is that full objective. ``step_scheme`` sets the
    mesh ``ρ``; with ``"adaptive"`` the mesh is re-set by :func:`nets.resnet.adaptive_steps` from
    the relative speeds measured on the clean probe set after every ``adapt_every``-th epoch,
    except during the last ``adapt_every`` epochs (so the final mesh is trained on); the meshes
    are recorded in ``History.rho_trajectory``. The bottleneck measures
    (:func:`nets.bottleneck.layer_measures`, ``γ₀ = bottleneck_gamma0``) are computed on the
    probe set at the final probe (and at every probe with ``probe_bottleneck``). Features are the
    residual stream ``h_0..h_L``; ``alpha``/``dropout`` must be 0 and ``batch_norm`` is ignored.

Regression (``dataset="teacher"``, needs ``loss="mse"``)
    Targets are float vectors; the loss is the mean squared error over samples and outputs;
    "label noise" replaces ⌊p·B⌋ targets by the targets of uniformly drawn samples of the batch
    (the empirical marginal, as uniform labels are for balanced classes) and adds input noise as
    for classification. ``log D`` needs classes, so the load curve is NaN;
    ``History.test_loss`` is the test MSE and ``test_accuracy`` NaN.

Ensembles
    :func:`train_ensemble` trains compatible configs (same architecture, data, batch size,
    optimiser, loss, epochs, probe settings; free to differ in α, dropout, label noise, lr, T,
    seed, early-stop threshold, and for leaky ResNets L̃ and λ) as one batched model (:mod:`nets.models`), with a stacked
    Adam/SGD that is elementwise and so equal to per-member optimisers, and per-member
    generators drawn in the same order as :func:`train`. Results equal :func:`train` one by one
    to float rounding (tested).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nets import probes
from nets.bottleneck import bottleneck_summary, layer_measures, per_depth_loads
from nets.data import _ALIASES, DATASETS, SUBSETS, Dataset, load_dataset
from nets.models import build_ensemble, build_model
from nets.resnet import STEP_SCHEMES, EnsembleLeakyResNet, LeakyResNet, adaptive_steps, relative_speeds, step_sizes

__all__ = [
    "TrainConfig",
    "History",
    "STATUSES",
    "ENSEMBLE_VARYING",
    "train",
    "train_ensemble",
    "stream_seeds",
    "noisy_batch",
    "resolve_device",
    "config_grid",
    "ensemble_key",
]

log = logging.getLogger(__name__)

STATUSES = ("completed", "early_stopped", "diverged")
#: Config fields that may differ between members of one batched ensemble.
ENSEMBLE_VARYING = ("alpha", "dropout", "label_noise", "lr", "sgld_temperature", "seed",
                    "early_stop_loss", "ltilde", "weight_decay")
#: Fields added with the leaky ResNet: written by :meth:`TrainConfig.to_dict` only when they
#: differ from their defaults, so the config hashes (store keys) of earlier runs stay valid.
EXTENSION_FIELDS = ("ltilde", "step_scheme", "weight_decay", "adapt_every", "probe_bottleneck",
                    "bottleneck_gamma0")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; defaults are the original protocol.

    Raises ``ValueError`` naming the field and value when a value is impossible.
    """

    # --- data
    dataset: str = "mnist"          # mnist | fashion-mnist | cifar10 | gaussian | npz | teacher
    data_root: str | None = None    # source dir (fashion-mnist, cifar10) or the .npz file
    image_size: int | None = 10     # resize to image_size x image_size (antialiased); None: native
    n_train: int | None = 2560      # fixed training subset size (None: all)
    subset_seed: int = 0            # seed of the "numpy" subset, the Gaussian mixture and the teacher
    subset: str = "original"        # original (random_split, generator seed 1) | numpy (nets.data.training_subset)
    # --- model
    model: str = "mlp"              # mlp | cnn | leaky_resnet
    depth: int = 7                  # hidden blocks L_h (leaky_resnet: residual steps L)
    width: int = 100                # MLP hidden width / CNN channels (use 20 for the CNN)
    alpha: float = 0.0              # LeakyReLU negative slope: 0 = ReLU, 1 = linear
    batch_norm: bool = True         # input + hidden BatchNorm
    dropout: float = 0.0            # dropout after every nonlinearity
    # --- noise axes
    label_noise: float = 0.0        # p: floor(p B) labels re-drawn + input noise p*std(batch)
    sgld_temperature: float = 0.0   # T: parameter noise sqrt(2 lr T) N(0,1) after each step
    # --- optimisation
    optimizer: str = "adam"         # adam | sgd
    lr: float = 1e-3
    loss: str = "ce"                # ce (cross-entropy) | mse (on one-hot targets)
    batch_size: int | None = None   # None: full batch (= n_train)
    epochs: int = 100
    early_stop_loss: float = 1e-4   # stop when the epoch's mean training loss is below this
    seed: int = 1
    # --- probes
    probe_every: int = 1            # probe every k epochs (+ epoch 0 and the end); 0: end only
    probe_on: str = "train"         # train (clean training subset) | test
    probe_features: str = "post"    # post | pre (activation)
    probe_mode: str = "eval"        # eval (running BN stats) | batch (batch statistics)
    probe_accuracy: bool = False    # also test accuracy at every probe
    # --- execution
    device: str = "cpu"             # cpu | cuda | cuda:N | auto (cuda if available)
    dtype: str = "float32"          # float32 | float64
    # --- leaky ResNet (model="leaky_resnet"; SPEC §3.1, §5.2); ignored by the MLP and CNN
    ltilde: float = 1.0             # effective depth L~: h <- (1 - rho L~) h + rho W sigma(h)
    step_scheme: str = "equidistant"  # equidistant | irregular | adaptive (rho re-set in training)
    weight_decay: float = 0.0       # lambda: loss += lambda/(2 L~) sum_l rho_l |W_l|_F^2
    adapt_every: int = 10           # adaptive scheme: epochs between mesh re-sets
    probe_bottleneck: bool = False  # bottleneck measures at every probe (always at the end)
    bottleneck_gamma0: float = 1e-3  # relative ridge gamma0 of COI and kinetic energy

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        if str(self.dataset).lower() not in _ALIASES and not str(self.dataset).endswith(".npz"):
            bad("dataset", f"unknown; choose one of {DATASETS} or a .npz path")
        for name, lo in (("depth", 1), ("width", 1), ("epochs", 1), ("probe_every", 0),
                         ("subset_seed", 0), ("seed", 0), ("adapt_every", 1)):
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                bad(name, f"must be an integer >= {lo}")
        for name, lo in (("image_size", 1), ("n_train", 2), ("batch_size", 1)):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < lo):
                bad(name, f"must be None or an integer >= {lo}")
        if self.batch_norm and self.batch_size == 1:
            bad("batch_size", "batch norm needs at least 2 samples per batch")
        if self.n_train is not None and self.batch_size is not None and self.batch_size > self.n_train:
            bad("batch_size", f"larger than n_train={self.n_train}")
        for name, lo, hi, hi_open in (("alpha", 0, 1, False), ("dropout", 0, 1, True),
                                      ("label_noise", 0, 1, False)):
            v = getattr(self, name)
            if not is_num(v) or not (lo <= v <= hi) or (hi_open and v == hi):
                bad(name, f"must be in [{lo}, {hi}{')' if hi_open else ']'}")
        for name in ("lr",):
            v = getattr(self, name)
            if not is_num(v) or not (math.isfinite(v) and v > 0):
                bad(name, "must be finite and > 0")
        for name in ("sgld_temperature", "early_stop_loss", "ltilde", "weight_decay"):
            v = getattr(self, name)
            if not is_num(v) or not (math.isfinite(v) and v >= 0):
                bad(name, "must be finite and >= 0")
        for name, allowed in (("model", ("mlp", "cnn", "leaky_resnet")), ("optimizer", ("adam", "sgd")),
                              ("loss", ("ce", "mse")), ("probe_on", ("train", "test")),
                              ("probe_features", ("post", "pre")),
                              ("probe_mode", ("eval", "batch")),
                              ("dtype", ("float32", "float64")), ("step_scheme", STEP_SCHEMES),
                              ("subset", SUBSETS)):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {allowed}")
        if not isinstance(self.batch_norm, bool):
            bad("batch_norm", "must be a bool")
        if not isinstance(self.probe_accuracy, bool):
            bad("probe_accuracy", "must be a bool")
        if not isinstance(self.probe_bottleneck, bool):
            bad("probe_bottleneck", "must be a bool")
        g0 = self.bottleneck_gamma0
        if not is_num(g0) or not (math.isfinite(g0) and 0 < g0 < 1):
            bad("bottleneck_gamma0", "must be in (0, 1)")
        if str(self.dataset).lower() == "teacher" and self.loss != "mse":
            bad("loss", "the teacher data set is a regression task: use loss='mse'")
        if self.model == "leaky_resnet":
            if self.alpha != 0:
                bad("alpha", "the leaky ResNet's nonlinearity is ReLU: alpha must be 0")
            if self.dropout != 0:
                bad("dropout", "the leaky ResNet has no dropout: must be 0")
            if self.probe_features != "post":
                bad("probe_features", "the leaky ResNet's features are its residual stream: use 'post'")
            rho_lt = step_sizes(self.step_scheme, self.depth) * self.ltilde
            if rho_lt.max() >= 2.0:
                bad("ltilde", f"unstable with depth={self.depth} and step_scheme={self.step_scheme!r}: "
                              f"max rho_l * ltilde = {rho_lt.max():.3g} >= 2")
        dev = str(self.device)
        if not (dev in ("cpu", "cuda", "auto") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            bad("device", "must be cpu, cuda, cuda:N or auto")

    def to_dict(self) -> dict:
        """All fields as plain Python values (for records and JSON).

        The leaky-ResNet fields (:data:`EXTENSION_FIELDS`) are left out while they hold their
        defaults, so configs of earlier versions keep their hash (:func:`phase_diagrams.spec.task_key`);
        ``TrainConfig(**c.to_dict()) == c`` always holds.
        """
        d = dataclasses.asdict(self)
        for name in EXTENSION_FIELDS:
            if d[name] == _DEFAULTS[name]:
                del d[name]
        return d

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


@dataclass
class History:
    """Result of one run.

    Attributes
    ----------
    config : TrainConfig
    status : {"completed", "early_stopped", "diverged"}
    epochs_run : int
        Epochs started (the diverging epoch counts).
    probe_epochs : int array ``(n_probes,)``
        Epoch of each probe (0 = before training).
    trajectory : float64 ``(n_probes, depth + 1)``
        ``log D_l`` at each probe; the last row is the final curve. NaN where the features were
        not finite (a diverged net) or the class means coincided.
    trace_ratio_trajectory : float64 ``(n_probes, depth + 1)``
        ``log tr Σ_w − log tr Σ_b`` at each probe.
    train_loss : float64 ``(epochs_run,)``
        Mean (noisy-batch) training loss of every epoch.
    test_accuracy : float
        Fraction of the test set classified correctly at the end (NaN if the logits are not
        finite).
    probe_accuracy : float64 ``(n_probes,)`` or None
        Test accuracy at each probe, when ``config.probe_accuracy``.
    wall_time : float
        Seconds; for an ensemble member, the ensemble's wall time divided by its size.
    ensemble_size : int
        Number of networks trained together (1 for :func:`train`).
    n_classes : int
    state_dict : dict of tensors
        Final weights in the single-model layout (not part of :meth:`to_record`).
    task : ``"classification"`` or ``"regression"``
    test_loss : float
        Test loss (MSE for regression; cross-entropy / MSE of the logits for classification)
        — leaky ResNets and regression only, else NaN.
    rho : float64 ``(L,)`` or None
        Final layer step sizes (leaky ResNet).
    rho_trajectory : list of ``(epoch, rho list)`` or None
        Every mesh the network trained on (the adaptive scheme re-sets it).
    bottleneck : dict or None
        :func:`nets.bottleneck.layer_measures` at the final probe (leaky ResNet).
    bottleneck_trajectory : list of dict or None
        ``{"epoch", "coi", "k_hat", "kinetic", "speed"}`` at every probe (``probe_bottleneck``).
    meta : dict or None
        A run recorded outside :func:`train` (:class:`nets.LoadCurveRecorder`; then ``config`` is
        None): what describes it (model class, layer names, the user's metadata). Written by
        :meth:`to_record` in place of the config fields.
    """

    config: TrainConfig | None
    status: str
    epochs_run: int
    probe_epochs: np.ndarray
    trajectory: np.ndarray
    trace_ratio_trajectory: np.ndarray
    train_loss: np.ndarray
    test_accuracy: float
    probe_accuracy: np.ndarray | None
    wall_time: float
    ensemble_size: int
    n_classes: int
    state_dict: dict = field(default_factory=dict, repr=False)
    task: str = "classification"
    test_loss: float = float("nan")
    rho: np.ndarray | None = None
    rho_trajectory: list | None = None
    bottleneck: dict | None = None
    bottleneck_trajectory: list | None = None
    meta: dict | None = None

    @property
    def final_curve(self) -> np.ndarray:
        """``log D_l``, ``l = 0..depth``, at the end of training."""
        return self.trajectory[-1]

    def summary(self) -> dict:
        """Shape numbers of the final curve (:func:`nets.probes.curve_summary`)."""
        return probes.curve_summary(self.final_curve)

    def to_record(self) -> dict:
        """One flat dict of JSON-able values: every config field (or the ``meta`` of an outside
        run), the status, the final curve
        and its shape numbers (loads, linearity, curvature, normalized_curvature, regime), the
        trajectories as lists of lists, probe epochs, losses, accuracies and wall time."""
        rec = self.config.to_dict() if self.config is not None else {}
        if self.meta is not None:
            rec.update(self.meta)
        s = self.summary()
        rec.update(
            status=self.status,
            epochs_run=int(self.epochs_run),
            test_accuracy=float(self.test_accuracy),
            curve=s["curve"],
            loads=s["loads"],
            linearity=s["linearity"],
            curvature=s["curvature"],
            normalized_curvature=s["normalized_curvature"],
            regime=s["regime"],
            trace_ratio_curve=self.trace_ratio_trajectory[-1].tolist(),
            trajectory=self.trajectory.tolist(),
            trace_ratio_trajectory=self.trace_ratio_trajectory.tolist(),
            probe_epochs=[int(e) for e in self.probe_epochs],
            probe_accuracy=None if self.probe_accuracy is None else self.probe_accuracy.tolist(),
            train_loss=self.train_loss.tolist(),
            wall_time=float(self.wall_time),
            ensemble_size=int(self.ensemble_size),
            n_classes=int(self.n_classes),
        )
        if self.task != "classification" or self.rho is not None:
            rec.update(task=self.task, test_loss=float(self.test_loss))
        if self.rho is not None:
            rec.update(rho=self.rho.tolist(), rho_trajectory=self.rho_trajectory,
                       loads_per_depth=per_depth_loads(self.final_curve, self.rho).tolist())
        if self.bottleneck is not None:
            rec.update(bottleneck=self.bottleneck, **bottleneck_summary(self.bottleneck))
            rec.update(bottleneck_trajectory=self.bottleneck_trajectory)
        return rec


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def stream_seeds(seed: int) -> tuple[int, int, int]:
    """``(init, data_noise, dropout)`` seeds derived from ``seed`` by ``SeedSequence.spawn``."""
    kids = np.random.SeedSequence(int(seed)).spawn(3)
    return tuple(int(k.generate_state(1, np.uint32)[0]) for k in kids)


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` → CUDA if available else CPU; ``"cuda"`` without a GPU raises."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={spec!r} asked for but CUDA is not available")
    return dev


def _fork_devices(dev: torch.device):
    if dev.type == "cuda":
        return [dev.index if dev.index is not None else torch.cuda.current_device()]
    return []


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def noisy_batch(x: torch.Tensor, y: torch.Tensor, p: float, n_classes: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Label + input noise of strength ``p`` on one batch (new tensors; inputs untouched).

    ``k = ⌊p·B⌋`` positions are chosen by ``randperm(B)[:k]`` and their labels replaced by
    ``randint(K)`` (possibly equal to the old label; float regression targets ``(B, d)`` are
    replaced by the targets of the samples ``randint(B)``); then ``x + p · std(x) · N(0, 1)`` with
    ``std`` over all entries of the batch (unbiased). Draws, in order: randperm, randint, randn
    from ``gen``; nothing when ``p == 0``.
    """
    if p == 0.0:
        return x, y
    b = y.shape[0]
    k = int(math.floor(p * b + 1e-9))
    if k > 0:
        idx = torch.randperm(b, generator=gen, device=gen.device)[:k].to(y.device)
        y = y.clone()
        if y.is_floating_point():  # regression: the targets of uniformly drawn batch samples
            src = torch.randint(b, (k,), generator=gen, device=gen.device).to(y.device)
            y[idx] = y[src]
        else:
            y[idx] = torch.randint(n_classes, (k,), generator=gen, device=gen.device).to(y.device)
    noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
    return x + (p * x.std()) * noise, y


def _epoch_batches(n: int, bs: int, gen: torch.Generator) -> list[torch.Tensor] | None:
    """None for a full batch; otherwise a fresh permutation cut into full batches of ``bs``."""
    if bs >= n:
        return None
    perm = torch.randperm(n, generator=gen, device=gen.device)
    return [perm[i : i + bs] for i in range(0, n - bs + 1, bs)]


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    """Mean loss over the batch (last two dims of ``logits`` are ``(B, K)``); leading dims kept."""
    if y.is_floating_point():  # regression targets (..., B, d): mean squared error
        return ((logits - y) ** 2).mean((-2, -1))
    if kind == "ce":
        per = F.cross_entropy(logits.reshape(-1, k), y.reshape(-1), reduction="none")
        return per.view(y.shape).mean(-1)
    target = F.one_hot(y, k).to(logits.dtype)
    return ((logits - target) ** 2).mean((-2, -1))


def _sgld_scale(cfg: TrainConfig) -> float:
    return math.sqrt(2.0 * cfg.lr * cfg.sgld_temperature)


def _curves(feats: list[torch.Tensor], labels: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per member: (log D curve, trace-ratio curve) from per-layer features ``(E, N, p_l)``.

    Batched over members (:func:`nets.probes.separation_stats_batched`, float64 in row chunks,
    on the features' device). NaN where a member's features are not finite.
    """
    pairs = [probes.separation_stats_batched(f, labels, k) for f in feats]
    d = np.stack([p[0] for p in pairs], axis=1)  # (E, L + 1)
    t = np.stack([p[1] for p in pairs], axis=1)
    return [(d[m], t[m]) for m in range(d.shape[0])]


class _BatchStatProbe:
    """Context: BatchNorm uses batch statistics without touching running stats; dropout off."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.bns = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in self.bns:
            m.train()
            m.track_running_stats = False
        return self.model

    def __exit__(self, *exc):
        for m in self.bns:
            m.track_running_stats = True
        self.model.train(self.was_training)


def _eval_chunks(n: int, chunk: int = 4096):
    return [(i, min(n, i + chunk)) for i in range(0, n, chunk)]


def _accuracy_single(model, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    correct = 0
    finite = True
    with torch.no_grad():
        for a, b in _eval_chunks(len(y)):
            logits = model(x[a:b])
            finite &= bool(torch.isfinite(logits).all())
            correct += int((logits.argmax(-1) == y[a:b]).sum())
    model.train(was)
    return correct / len(y) if finite else float("nan")


def _accuracy_ensemble(ens, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    was = ens.training
    ens.eval()
    e = ens.n_members
    correct = torch.zeros(e, dtype=torch.long)
    finite = torch.ones(e, dtype=torch.bool)
    with torch.no_grad():
        for a, b in _eval_chunks(len(y)):
            xs = x[a:b].unsqueeze(0).expand(e, *x[a:b].shape)
            logits = ens(xs)
            finite &= torch.isfinite(logits).flatten(1).all(1).cpu()
            correct += (logits.argmax(-1) == y[a:b]).sum(1).cpu()
    ens.train(was)
    acc = correct.double().numpy() / len(y)
    acc[~finite.numpy()] = np.nan
    return acc


def _regression_curves(feats, e: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """log D needs classes: NaN curves for regression data."""
    nan = np.full(len(feats), np.nan)
    return [(nan.copy(), nan.copy()) for _ in range(e)]


def _mse_single(model, x, y) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        total = sum(float(((model(x[a:b]) - y[a:b]) ** 2).double().sum()) for a, b in _eval_chunks(len(y)))
    model.train(was)
    return total / y.numel()


def _mse_ensemble(ens, x, y) -> np.ndarray:
    was = ens.training
    ens.eval()
    e = ens.n_members
    total = torch.zeros(e, dtype=torch.float64)
    with torch.no_grad():
        for a, b in _eval_chunks(len(y)):
            xs = x[a:b].unsqueeze(0).expand(e, *x[a:b].shape)
            total += ((ens(xs) - y[a:b]) ** 2).double().sum((1, 2)).cpu()
    ens.train(was)
    return total.numpy() / y.numel()


def _test_loss_ensemble(ens, x, y, kind, k) -> np.ndarray:
    was = ens.training
    ens.eval()
    e = ens.n_members
    with torch.no_grad():
        out = _loss(ens(x.unsqueeze(0).expand(e, *x.shape)), y.unsqueeze(0).expand(e, *y.shape), kind, k)
    ens.train(was)
    return out.double().cpu().numpy()


def _probe_single(model, x, labels_np, k, cfg, task="classification", with_feats=False):
    """Features of the clean probe set → (log D curve, trace-ratio curve) (and the features
    when ``with_feats``). No RNG, no state."""
    was = model.training
    with torch.no_grad():
        if cfg.probe_mode == "batch":
            with _BatchStatProbe(model):
                feats = model.forward_features(x, cfg.probe_features)[1]
        else:
            model.eval()
            parts = [model.forward_features(x[a:b], cfg.probe_features)[1] for a, b in _eval_chunks(len(x))]
            feats = [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
    model.train(was)
    if task == "regression":
        curves = _regression_curves(feats, 1)[0]
    else:
        curves = _curves([f.unsqueeze(0) for f in feats], labels_np, k)[0]
    return (curves, feats) if with_feats else curves


def _probe_ensemble(ens, x, labels_np, k, cfg, task="classification", with_feats=False):
    was = ens.training
    e = ens.n_members
    with torch.no_grad():
        if cfg.probe_mode == "batch":
            ens.eval()
            ens.batch_stats_probe = True
            xs = x.unsqueeze(0).expand(e, *x.shape)
            feats = ens.forward_features(xs, cfg.probe_features)[1]
            ens.batch_stats_probe = False
        else:
            ens.eval()
            parts = []
            for a, b in _eval_chunks(len(x)):
                xs = x[a:b].unsqueeze(0).expand(e, *x[a:b].shape)
                parts.append(ens.forward_features(xs, cfg.probe_features)[1])
            feats = [torch.cat([p[i] for p in parts], dim=1) for i in range(len(parts[0]))]
    ens.train(was)
    if task == "regression":
        curves = _regression_curves(feats, ens.n_members)
    else:
        curves = _curves(feats, labels_np, k)
    return (curves, feats) if with_feats else curves


def _stream(model, x) -> list[torch.Tensor]:
    """Residual stream ``h_0..h_L`` of a (single or ensemble) leaky ResNet on clean inputs, eval
    mode, no RNG: ``(N, w)`` per layer, or ``(E, N, w)`` for an ensemble."""
    was = model.training
    model.eval()
    ens = isinstance(model, EnsembleLeakyResNet)
    with torch.no_grad():
        parts = []
        for a, b in _eval_chunks(len(x)):
            xb = x[a:b].unsqueeze(0).expand(model.n_members, *x[a:b].shape) if ens else x[a:b]
            parts.append(model.forward_features(xb)[1])
    model.train(was)
    return [torch.cat([p[i] for p in parts], dim=1 if ens else 0) for i in range(len(parts[0]))]


def _bottleneck(track, feats, weights, epoch: int, final: bool) -> None:
    """Bottleneck measures of one leaky ResNet into its track (every probe or the final one)."""
    cfg = track.cfg
    if not (final or cfg.probe_bottleneck):
        return
    if not all(bool(torch.isfinite(f).all()) for f in feats):
        return  # a diverged network: nothing to measure
    m = layer_measures(feats, track.rho, cfg.ltilde, weights=weights if final else None,
                       gamma0=cfg.bottleneck_gamma0, n_singular=20)
    if cfg.probe_bottleneck:
        track.btraj.append(dict(epoch=int(epoch), coi=m["coi"], k_hat=m["k_hat"], kinetic=m["kinetic"],
                                speed=m["speed"]))
    if final:
        track.bottleneck = m


def _adapt_due(track, epoch: int) -> bool:
    cfg = track.cfg
    return (cfg.model == "leaky_resnet" and cfg.step_scheme == "adaptive" and track.active
            and epoch % cfg.adapt_every == 0 and epoch <= cfg.epochs - cfg.adapt_every)


def _adapt(track, feats, epoch: int) -> np.ndarray | None:
    """New mesh of one member from its stream (adaptive scheme); None if the stream is not finite."""
    speeds = relative_speeds(feats, track.rho)
    if not np.all(np.isfinite(speeds)):
        log.warning("adaptive steps: non-finite speeds at epoch %d, mesh kept", epoch)
        return None
    track.rho = adaptive_steps(speeds, track.rho, track.cfg.ltilde)
    track.rho_traj.append((int(epoch), track.rho.tolist()))
    return track.rho


class _Track:
    """Per-run bookkeeping shared by the single and the ensemble loops."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.status = "completed"
        self.epochs_run = 0
        self.probe_epochs: list[int] = []
        self.curves: list[np.ndarray] = []
        self.traces: list[np.ndarray] = []
        self.probe_acc: list[float] = []
        self.losses: list[float] = []
        self.active = True
        self.state_dict: dict = {}
        self.test_accuracy = float("nan")
        self.test_loss = float("nan")
        self.task = "classification"
        leaky = cfg.model == "leaky_resnet"
        self.rho = step_sizes(cfg.step_scheme, cfg.depth) if leaky else None
        self.rho_traj = [(0, self.rho.tolist())] if leaky else None
        self.bottleneck = None
        self.btraj: list = []

    def probe_due(self, epoch: int) -> bool:
        pe = self.cfg.probe_every
        return (not self.active) or epoch == self.cfg.epochs or (pe > 0 and epoch % pe == 0)

    def history(self, wall, size, k) -> History:
        return History(
            config=self.cfg,
            status=self.status,
            epochs_run=self.epochs_run,
            probe_epochs=np.array(self.probe_epochs, dtype=np.int64),
            trajectory=np.array(self.curves),
            trace_ratio_trajectory=np.array(self.traces),
            train_loss=np.array(self.losses, dtype=np.float64),
            test_accuracy=self.test_accuracy,
            probe_accuracy=np.array(self.probe_acc) if self.cfg.probe_accuracy else None,
            wall_time=wall,
            ensemble_size=size,
            n_classes=k,
            state_dict=self.state_dict,
            task=self.task,
            test_loss=self.test_loss,
            rho=None if self.rho is None else np.array(self.rho),
            rho_trajectory=self.rho_traj,
            bottleneck=self.bottleneck,
            bottleneck_trajectory=self.btraj if self.cfg.probe_bottleneck else None,
        )


def _load(cfg: TrainConfig, dataset: Dataset | None, cache_dir) -> Dataset:
    if dataset is not None:
        return dataset
    return load_dataset(cfg.dataset, root=cfg.data_root, cache_dir=cache_dir,
                        image_size=cfg.image_size, n_train=cfg.n_train, subset_seed=cfg.subset_seed,
                        subset=cfg.subset)


def _tensors(ds: Dataset, cfg: TrainConfig, dev, dtype):
    def t(a, dt):
        return torch.from_numpy(np.array(a)).to(device=dev, dtype=dt)

    ytype = dtype if ds.task == "regression" else torch.long
    x, y = t(ds.x_train, dtype), t(ds.y_train, ytype)
    xt, yt = t(ds.x_test, dtype), t(ds.y_test, ytype)
    if cfg.probe_on == "train":
        xp, yp = x, ds.y_train
    else:
        xp, yp = xt, ds.y_test
    if ds.task == "regression":  # labels are only used by log D, which regression data lacks
        return x, y, xt, yt, xp, None, cfg.batch_size or len(y)
    bs = cfg.batch_size or len(y)
    if bs > len(y):
        raise ValueError(f"TrainConfig.batch_size={bs} is larger than the {len(y)} training samples")
    return x, y, xt, yt, xp, np.asarray(yp, dtype=np.int64), bs


def _make_model(cfg: TrainConfig, ds: Dataset, init_seed: int, dev, dtype):
    torch.manual_seed(init_seed)
    if cfg.model == "leaky_resnet":
        model = LeakyResNet(ds.input_dim, cfg.width, cfg.depth, ds.n_classes, ltilde=cfg.ltilde,
                            step_scheme=cfg.step_scheme, weight_decay=cfg.weight_decay)
        return model.to(device=dev, dtype=dtype)
    model = build_model(cfg.model, ds.input_shape, width=cfg.width, depth=cfg.depth,
                        n_classes=ds.n_classes, alpha=cfg.alpha, dropout=cfg.dropout,
                        batch_norm=cfg.batch_norm)
    return model.to(device=dev, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# one network
# ---------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, dataset: Dataset | None = None, cache_dir=None) -> History:
    """Train one network under ``config`` and return its :class:`History`.

    Parameters
    ----------
    config : TrainConfig
    dataset : Dataset, optional
        Use this data instead of loading ``config.dataset`` (must match its input shape).
    cache_dir : path, optional
        MNIST cache directory (default ``$SPRINGBLOCK_DATA`` or ``./data``).

    Divergence is a status, not an exception. Deterministic on CPU for a given ``seed``.
    """
    cfg = config
    ds = _load(cfg, dataset, cache_dir)
    dev, dtype = resolve_device(cfg.device), _dtype(cfg.dtype)
    k = ds.n_classes
    t0 = time.perf_counter()
    x, y, xt, yt, xp, yp, bs = _tensors(ds, cfg, dev, dtype)
    n = len(y)
    tr = _Track(cfg)
    with torch.random.fork_rng(devices=_fork_devices(dev)):
        init_seed, noise_seed, drop_seed = stream_seeds(cfg.seed)
        model = _make_model(cfg, ds, init_seed, dev, dtype)
        params = list(model.parameters())
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr)
        torch.manual_seed(drop_seed)  # from here on the global stream feeds only nn.Dropout
        gen = torch.Generator(device=dev).manual_seed(noise_seed)
        sgld = _sgld_scale(cfg)

        leaky = cfg.model == "leaky_resnet"
        tr.task = ds.task

        def probe(epoch):
            (d, t), feats = _probe_single(model, xp, yp, k, cfg, ds.task, with_feats=True)
            tr.probe_epochs.append(epoch)
            tr.curves.append(d)
            tr.traces.append(t)
            if cfg.probe_accuracy and ds.task == "classification":
                tr.probe_acc.append(_accuracy_single(model, xt, yt))
            if leaky:
                final = (not tr.active) or epoch == cfg.epochs
                _bottleneck(tr, feats, model.layer_weights(), epoch, final)

        if cfg.probe_every > 0:
            probe(0)
        model.train()
        for epoch in range(1, cfg.epochs + 1):
            tr.epochs_run = epoch
            batches = _epoch_batches(n, bs, gen)
            total, used = 0.0, 0
            for idx in batches if batches is not None else [None]:
                xb, yb = (x, y) if idx is None else (x[idx], y[idx])
                xb, yb = noisy_batch(xb, yb, cfg.label_noise, k, gen)
                loss = _loss(model(xb), yb, cfg.loss, k)
                if leaky:
                    loss = loss + model.regularizer()
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    tr.status, tr.active = "diverged", False
                    total = float("nan")
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sgld > 0.0:
                    with torch.no_grad():
                        for p in params:
                            p.add_(torch.randn(p.shape, generator=gen, device=dev, dtype=dtype).mul_(sgld))
                total += lv * len(yb)
                used += len(yb)
            epoch_loss = total / max(used, 1) if tr.active else float("nan")
            tr.losses.append(epoch_loss)
            if tr.active and epoch_loss < cfg.early_stop_loss:
                tr.status, tr.active = "early_stopped", False
            log.debug("epoch %d loss %.6g", epoch, epoch_loss)
            if tr.probe_due(epoch):
                probe(epoch)
            if _adapt_due(tr, epoch):
                new = _adapt(tr, _stream(model, x), epoch)
                if new is not None:
                    model.set_rho(new)
            if not tr.active:
                break
        if ds.task == "regression":
            tr.test_loss = _mse_single(model, xt, yt)
        else:
            tr.test_accuracy = _accuracy_single(model, xt, yt)
            if leaky:
                with torch.no_grad():
                    tr.test_loss = float(_loss(model.eval()(xt), yt, cfg.loss, k))
                model.train()
        tr.state_dict = {n_: v.detach().cpu().clone() for n_, v in model.state_dict().items()}
    wall = time.perf_counter() - t0
    log.info("trained %s alpha=%g seed=%d: %s after %d epochs, test acc %.4f (%.1f s)",
             cfg.model, cfg.alpha, cfg.seed, tr.status, tr.epochs_run, tr.test_accuracy, wall)
    return tr.history(wall, 1, k)


# ---------------------------------------------------------------------------------------------
# batched ensemble
# ---------------------------------------------------------------------------------------------
class _StackedOptimizer:
    """Adam / SGD on parameters stacked along dim 0 (members), with per-member lr ``(E,)``.

    Adam as ``torch.optim.Adam`` (default betas and eps, no weight decay):
    ``m ← β1 m + (1−β1) g``, ``v ← β2 v + (1−β2) g²``,
    ``θ ← θ − (lr/(1−β1^t)) · m / (sqrt(v)/sqrt(1−β2^t) + eps)``; SGD: ``θ ← θ − lr g``. Both
    are elementwise, so each member evolves exactly as it would alone.

    Adam runs as PyTorch's multi-tensor fused kernel (``torch._fused_adam_``, one pass over
    memory): on the whole stacked tensors when all members share the learning rate, otherwise on
    the members' slices, one call per distinct learning rate. Without the fused kernel the same
    update is done with vector operations.
    """

    def __init__(self, params, lrs, kind, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.kind = kind
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        ref = self.params[0]
        self.lrs = [float(v) for v in lrs]
        self.groups: dict[float, list[int]] = {}
        for i, lr in enumerate(self.lrs):
            self.groups.setdefault(lr, []).append(i)
        self.lr_cols = [torch.tensor(self.lrs, dtype=torch.float64, device=ref.device)
                        .view(-1, *([1] * (p.dim() - 1))) for p in self.params]
        if kind == "adam":
            self.m = [torch.zeros_like(p) for p in self.params]
            self.v = [torch.zeros_like(p) for p in self.params]
            self.step_t = torch.zeros((), dtype=torch.float32, device=ref.device)
            self.fused = hasattr(torch, "_fused_adam_")

    @torch.no_grad()
    def step(self):
        self.t += 1
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if self.kind == "sgd":
            for i in live:
                p = self.params[i]
                p.add_(p.grad * (-self.lr_cols[i]).to(p.dtype))
            return
        if self.fused:
            self.step_t.fill_(self.t)
            for lr, rows in self.groups.items():
                if len(self.groups) == 1:
                    sel = [(self.params[i], self.m[i], self.v[i]) for i in live]
                    ps, gs, ms, vs = ([a for a, _, _ in sel], [a.grad for a, _, _ in sel],
                                      [b for _, b, _ in sel], [c for _, _, c in sel])
                else:
                    ps = [self.params[i][r] for i in live for r in rows]
                    gs = [self.params[i].grad[r] for i in live for r in rows]
                    ms = [self.m[i][r] for i in live for r in rows]
                    vs = [self.v[i][r] for i in live for r in rows]
                torch._fused_adam_(ps, gs, ms, vs, [], [self.step_t] * len(ps), lr=lr,
                                   beta1=self.b1, beta2=self.b2, weight_decay=0.0, eps=self.eps,
                                   amsgrad=False, maximize=False)
            return
        bc1 = 1 - self.b1**self.t
        bc2_sqrt = (1 - self.b2**self.t) ** 0.5
        for i in live:
            p, m, v, g = self.params[i], self.m[i], self.v[i], self.params[i].grad
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.add_(m.mul((self.lr_cols[i] / (-bc1)).to(p.dtype)).div_(denom))

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def ensemble_key(cfg: TrainConfig) -> tuple:
    """What configs must share to train in one batched ensemble: every field except
    :data:`ENSEMBLE_VARYING`."""
    d = cfg.to_dict()
    return tuple((k, v) for k, v in d.items() if k not in ENSEMBLE_VARYING)


def train_ensemble(configs, *, dataset: Dataset | None = None, cache_dir=None,
                   max_members: int | None = None) -> list[History]:
    """Train many configs as batched ensembles; one :class:`History` per config, in order.

    Configs are grouped by everything except :data:`ENSEMBLE_VARYING` (α, dropout, label
    noise, lr, SGLD temperature, seed, early-stop threshold); each group (split into chunks of
    at most ``max_members``) is trained as one stacked model. Every member's numbers equal
    :func:`train` on its own config up to float rounding.
    """
    configs = list(configs)
    if not configs:
        return []
    for i, c in enumerate(configs):
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs[{i}] is a {type(c).__name__}, not a TrainConfig")
    if max_members is not None and int(max_members) < 1:
        raise ValueError(f"max_members must be >= 1, got {max_members!r}")
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(ensemble_key(c), []).append(i)
    out: list[History | None] = [None] * len(configs)
    for idxs in groups.values():
        step = len(idxs) if max_members is None else int(max_members)
        for s in range(0, len(idxs), step):
            chunk = idxs[s : s + step]
            for i, h in zip(chunk, _train_group([configs[i] for i in chunk], dataset, cache_dir),
                            strict=True):
                out[i] = h
    return out


def _snapshot(ens, e) -> dict:
    return {n: v.cpu() for n, v in ens.member_state_dict(e).items()}


def _restore(ens, e, state):
    with torch.no_grad():
        for n, p in zip(ens._names, ens.params, strict=True):
            p[e].copy_(state[n])
        for n in ens._buffer_names:
            ens.buf(n)[e].copy_(state[n])


def _train_group(cfgs: list[TrainConfig], dataset, cache_dir) -> list[History]:
    ref = cfgs[0]
    ds = _load(ref, dataset, cache_dir)
    dev, dtype = resolve_device(ref.device), _dtype(ref.dtype)
    k = ds.n_classes
    e_count = len(cfgs)
    t0 = time.perf_counter()
    x, y, xt, yt, xp, yp, bs = _tensors(ds, ref, dev, dtype)
    n = len(y)
    tracks = [_Track(c) for c in cfgs]
    with torch.random.fork_rng(devices=_fork_devices(dev)):
        seeds = [stream_seeds(c.seed) for c in cfgs]
        members = [_make_model(c, ds, s[0], dev, dtype) for c, s in zip(cfgs, seeds, strict=True)]
        leaky = ref.model == "leaky_resnet"
        ens = (EnsembleLeakyResNet.from_members(members) if leaky else build_ensemble(members)).to(dev)
        del members
        gens = [torch.Generator(device=dev).manual_seed(s[1]) for s in seeds]
        ens.dropout_generators = [torch.Generator(device=dev).manual_seed(s[2]) for s in seeds]
        opt = _StackedOptimizer(ens.params, [c.lr for c in cfgs], ref.optimizer)
        sgld = [_sgld_scale(c) for c in cfgs]
        sgld_vec = torch.tensor(sgld, dtype=torch.float64)
        any_label_noise = any(c.label_noise > 0 for c in cfgs)
        frozen: dict[int, dict] = {}

        for t in tracks:
            t.task = ds.task

        def probe(epoch, which):
            res, feats = _probe_ensemble(ens, xp, yp, k, ref, ds.task, with_feats=True)
            acc = _accuracy_ensemble(ens, xt, yt) if ref.probe_accuracy and ds.task == "classification" else None
            for m in which:
                tracks[m].probe_epochs.append(epoch)
                tracks[m].curves.append(res[m][0])
                tracks[m].traces.append(res[m][1])
                if acc is not None:
                    tracks[m].probe_acc.append(float(acc[m]))
                if leaky:
                    final = (not tracks[m].active) or epoch == ref.epochs
                    weights = [ens.p("weights")[m, ell].detach() for ell in range(ref.depth)]
                    _bottleneck(tracks[m], [f[m] for f in feats], weights, epoch, final)

        if ref.probe_every > 0:
            probe(0, range(e_count))
        ens.train()
        for epoch in range(1, ref.epochs + 1):
            live = [m for m in range(e_count) if tracks[m].active]
            for m in live:
                tracks[m].epochs_run = epoch
            perms = [_epoch_batches(n, bs, g) for g in gens]
            full_batch = perms[0] is None
            n_steps = 1 if full_batch else len(perms[0])
            if not full_batch:
                perm_all = torch.stack([torch.stack(p) for p in perms])  # (E, steps, B)
            totals = np.zeros(e_count)
            for s in range(n_steps):
                if full_batch:
                    xb = x.unsqueeze(0).expand(e_count, *x.shape)
                    yb = y.unsqueeze(0).expand(e_count, *y.shape)
                else:
                    idx = perm_all[:, s]
                    xb, yb = x[idx], y[idx]
                if any_label_noise:
                    pairs = [noisy_batch(xb[m], yb[m], cfgs[m].label_noise, k, gens[m])
                             for m in range(e_count)]
                    xb = torch.stack([p[0] for p in pairs])
                    yb = torch.stack([p[1] for p in pairs])
                losses = _loss(ens(xb), yb, ref.loss, k)
                if leaky:
                    losses = losses + ens.regularizer()
                lv = losses.detach().double().cpu().numpy()
                if not np.isfinite(lv[live]).all():
                    for m in live:
                        if not math.isfinite(lv[m]):
                            tracks[m].status, tracks[m].active = "diverged", False
                            frozen[m] = _snapshot(ens, m)
                    live = [m for m in live if tracks[m].active]
                totals += np.nan_to_num(lv) * yb.shape[1]
                if not live:
                    break
                opt.zero_grad()
                (losses.sum() if len(live) == e_count else losses[live].sum()).backward()
                opt.step()
                if any(sgld[m] > 0 for m in live):
                    with torch.no_grad():
                        for p in ens.params:
                            noise = torch.zeros_like(p)
                            for m in range(e_count):
                                if sgld[m] > 0:
                                    noise[m] = torch.randn(p.shape[1:], generator=gens[m], device=dev,
                                                           dtype=dtype)
                            p.add_(noise.mul_(sgld_vec.to(dtype).view(-1, *([1] * (p.dim() - 1)))))
            used = n_steps * bs
            stopping = []
            for m in range(e_count):
                if m in frozen and tracks[m].status == "diverged" and tracks[m].epochs_run == epoch:
                    tracks[m].losses.append(float("nan"))
                    stopping.append(m)
                elif m in live:
                    el = float(totals[m]) / used
                    tracks[m].losses.append(el)
                    if el < cfgs[m].early_stop_loss:
                        tracks[m].status, tracks[m].active = "early_stopped", False
                        stopping.append(m)
            for m in stopping:
                if m in frozen:
                    _restore(ens, m, frozen[m])
            due = [m for m in range(e_count)
                   if (m in live or m in stopping) and tracks[m].probe_due(epoch)]
            if due:
                probe(epoch, due)
            adapt = [m for m in range(e_count) if _adapt_due(tracks[m], epoch)]
            if adapt:
                stream = _stream(ens, x)
                for m in adapt:
                    new = _adapt(tracks[m], [f[m] for f in stream], epoch)
                    if new is not None:
                        ens.set_rho(m, new)
            if stopping or epoch == ref.epochs:
                if ds.task == "regression":
                    acc = np.full(e_count, np.nan)
                    tl = _mse_ensemble(ens, xt, yt)
                else:
                    acc = _accuracy_ensemble(ens, xt, yt)
                    tl = _test_loss_ensemble(ens, xt, yt, ref.loss, k) if leaky else np.full(e_count, np.nan)
                for m in range(e_count):
                    if m in stopping or (epoch == ref.epochs and tracks[m].active):
                        tracks[m].test_accuracy = float(acc[m])
                        tracks[m].test_loss = float(tl[m])
                        frozen[m] = _snapshot(ens, m)
            if all(not t.active for t in tracks):
                break
    wall = time.perf_counter() - t0
    log.info("trained an ensemble of %d %s in %.1f s", e_count, ref.model, wall)
    hists = []
    for m, t in enumerate(tracks):
        t.state_dict = frozen[m]
        hists.append(t.history(wall / e_count, e_count, k))
    return hists


def config_grid(base: TrainConfig | None = None, **axes) -> list[TrainConfig]:
    """All configs of the Cartesian product of ``axes`` (field name → list of values) over
    ``base`` (default :class:`TrainConfig`), in row-major order of the keyword arguments.

    Example: ``config_grid(alpha=[0, 1], label_noise=[0, 0.6])`` gives 4 configs.
    """
    base = TrainConfig() if base is None else base
    names = list(axes)
    for name in names:
        if name not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise ValueError(f"config_grid: unknown TrainConfig field {name!r}")
        if not isinstance(axes[name], (list, tuple)) or not axes[name]:
            raise ValueError(f"config_grid: {name} needs a non-empty list of values")
    return [base.replace(**dict(zip(names, combo, strict=True)))
            for combo in itertools.product(*(axes[n] for n in names))]
