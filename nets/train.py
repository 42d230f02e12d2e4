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

Ensembles
    :func:`train_ensemble` trains compatible configs (same architecture, data, batch size,
    optimiser, loss, epochs, probe settings; free to differ in α, dropout, label noise, lr, T,
    seed and early-stop threshold) as one batched model (:mod:`nets.models`), with a stacked
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
from nets.data import _ALIASES, DATASETS, Dataset, load_dataset
from nets.models import build_ensemble, build_model

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
                    "early_stop_loss")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; defaults are the original protocol.

    Raises ``ValueError`` naming the field and value when a value is impossible.
    """

    # --- data
    dataset: str = "mnist"          # mnist | fashion-mnist | cifar10 | gaussian | npz
    data_root: str | None = None    # source dir (fashion-mnist, cifar10) or the .npz file
    image_size: int | None = 10     # resize to image_size x image_size (antialiased); None: native
    n_train: int | None = 2560      # fixed training subset size (None: all)
    subset_seed: int = 0            # seed of the fixed subset (same for every run)
    # --- model
    model: str = "mlp"              # mlp | cnn
    depth: int = 7                  # hidden blocks L_h
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
                         ("subset_seed", 0), ("seed", 0)):
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
        for name in ("sgld_temperature", "early_stop_loss"):
            v = getattr(self, name)
            if not is_num(v) or not (math.isfinite(v) and v >= 0):
                bad(name, "must be finite and >= 0")
        for name, allowed in (("model", ("mlp", "cnn")), ("optimizer", ("adam", "sgd")),
                              ("loss", ("ce", "mse")), ("probe_on", ("train", "test")),
                              ("probe_features", ("post", "pre")),
                              ("probe_mode", ("eval", "batch")),
                              ("dtype", ("float32", "float64"))):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {allowed}")
        if not isinstance(self.batch_norm, bool):
            bad("batch_norm", "must be a bool")
        if not isinstance(self.probe_accuracy, bool):
            bad("probe_accuracy", "must be a bool")
        dev = str(self.device)
        if not (dev in ("cpu", "cuda", "auto") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            bad("device", "must be cpu, cuda, cuda:N or auto")

    def to_dict(self) -> dict:
        """All fields as plain Python values (for records and JSON)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


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
    """

    config: TrainConfig
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

    @property
    def final_curve(self) -> np.ndarray:
        """``log D_l``, ``l = 0..depth``, at the end of training."""
        return self.trajectory[-1]

    def summary(self) -> dict:
        """Shape numbers of the final curve (:func:`nets.probes.curve_summary`)."""
        return probes.curve_summary(self.final_curve)

    def to_record(self) -> dict:
        """One flat dict of JSON-able values: every config field, the status, the final curve
        and its shape numbers (loads, linearity, curvature, normalized_curvature, regime), the
        trajectories as lists of lists, probe epochs, losses, accuracies and wall time."""
        rec = self.config.to_dict()
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
    ``randint(K)`` (possibly equal to the old label); then ``x + p · std(x) · N(0, 1)`` with
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


def _probe_single(model, x, labels_np, k, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Features of the clean probe set → (log D curve, trace-ratio curve). No RNG, no state."""
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
    return _curves([f.unsqueeze(0) for f in feats], labels_np, k)[0]


def _probe_ensemble(ens, x, labels_np, k, cfg) -> list[tuple[np.ndarray, np.ndarray]]:
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
    return _curves(feats, labels_np, k)


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
        )


def _load(cfg: TrainConfig, dataset: Dataset | None, cache_dir) -> Dataset:
    if dataset is not None:
        return dataset
    return load_dataset(cfg.dataset, root=cfg.data_root, cache_dir=cache_dir,
                        image_size=cfg.image_size, n_train=cfg.n_train, subset_seed=cfg.subset_seed)


def _tensors(ds: Dataset, cfg: TrainConfig, dev, dtype):
    def t(a, dt):
        return torch.from_numpy(np.array(a)).to(device=dev, dtype=dt)

    x, y = t(ds.x_train, dtype), t(ds.y_train, torch.long)
    xt, yt = t(ds.x_test, dtype), t(ds.y_test, torch.long)
    if cfg.probe_on == "train":
        xp, yp = x, ds.y_train
    else:
        xp, yp = xt, ds.y_test
    bs = cfg.batch_size or len(y)
    if bs > len(y):
        raise ValueError(f"TrainConfig.batch_size={bs} is larger than the {len(y)} training samples")
    return x, y, xt, yt, xp, np.asarray(yp, dtype=np.int64), bs


def _make_model(cfg: TrainConfig, ds: Dataset, init_seed: int, dev, dtype):
    torch.manual_seed(init_seed)
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

        def probe(epoch):
            d, t = _probe_single(model, xp, yp, k, cfg)
            tr.probe_epochs.append(epoch)
            tr.curves.append(d)
            tr.traces.append(t)
            if cfg.probe_accuracy:
                tr.probe_acc.append(_accuracy_single(model, xt, yt))

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
            if not tr.active:
                break
        tr.test_accuracy = _accuracy_single(model, xt, yt)
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
        ens = build_ensemble(members).to(dev)
        del members
        gens = [torch.Generator(device=dev).manual_seed(s[1]) for s in seeds]
        ens.dropout_generators = [torch.Generator(device=dev).manual_seed(s[2]) for s in seeds]
        opt = _StackedOptimizer(ens.params, [c.lr for c in cfgs], ref.optimizer)
        sgld = [_sgld_scale(c) for c in cfgs]
        sgld_vec = torch.tensor(sgld, dtype=torch.float64)
        any_label_noise = any(c.label_noise > 0 for c in cfgs)
        frozen: dict[int, dict] = {}

        def probe(epoch, which):
            res = _probe_ensemble(ens, xp, yp, k, ref)
            acc = _accuracy_ensemble(ens, xt, yt) if ref.probe_accuracy else None
            for m in which:
                tracks[m].probe_epochs.append(epoch)
                tracks[m].curves.append(res[m][0])
                tracks[m].traces.append(res[m][1])
                if acc is not None:
                    tracks[m].probe_acc.append(float(acc[m]))

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
                    yb = y.unsqueeze(0).expand(e_count, n)
                else:
                    idx = perm_all[:, s]
                    xb, yb = x[idx], y[idx]
                if any_label_noise:
                    pairs = [noisy_batch(xb[m], yb[m], cfgs[m].label_noise, k, gens[m])
                             for m in range(e_count)]
                    xb = torch.stack([p[0] for p in pairs])
                    yb = torch.stack([p[1] for p in pairs])
                losses = _loss(ens(xb), yb, ref.loss, k)
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
            if stopping or epoch == ref.epochs:
                acc = _accuracy_ensemble(ens, xt, yt)
                for m in range(e_count):
                    if m in stopping or (epoch == ref.epochs and tracks[m].active):
                        tracks[m].test_accuracy = float(acc[m])
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
