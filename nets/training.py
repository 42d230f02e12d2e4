"""The training loop (SPEC §3.2–3.3): :func:`train` one network, :func:`train_ensemble` many.

One loop: a single network is a batched ensemble of one. ``python -m nets train --alpha 0
--noise label=0.6`` runs one original-protocol MLP (~2 s on one CPU thread).

Protocol (original defaults, :class:`nets.config.TrainConfig`)
    Adam, cross-entropy, lr 1e-3, full batch (``batch_size=None`` = ``n_train``), 100 epochs,
    2560 MNIST training images resized to 10×10, accuracy on the full test set. An epoch visits
    the training subset once in batches of ``batch_size`` (reshuffled every epoch when
    ``batch_size < n_train``; an incomplete last batch is dropped). Early stop when the epoch's
    mean training loss falls below ``early_stop_loss`` (1e-4). A non-finite loss ends the run
    with status ``"diverged"`` (the update of that step is not applied) — never an exception.

Noise axes (each a phase-diagram column axis; :mod:`nets.noise`)
    ``label_noise`` p (⌊p·B⌋ labels of every batch re-drawn uniformly, inputs + Gaussian noise of
    standard deviation ``p · std(batch)``), ``lr``, ``dropout``, ``batch_size``, and
    ``sgld_temperature`` T (after every optimiser step ``θ ← θ + sqrt(2 · lr · T) · ξ``).

Randomness (seeded, deterministic on CPU)
    ``seed`` is split into three streams (:func:`nets.noise.stream_seeds`): the initialisation
    (PyTorch default init drawn from the global generator seeded with it), the data noise (one
    ``torch.Generator``: shuffles, label and input noise, SGLD — in that order within a step),
    and dropout (one ``torch.Generator`` per network, for its dropout masks only). The caller's
    global RNG state is restored afterwards (``fork_rng``).

Probes (SPEC §1.2, §3.3; :func:`nets.evaluate.probe`)
    Every ``probe_every`` epochs (and at epoch 0 and at the last epoch) the load curve
    ``log D_l``, ``l = 0..depth`` and its trace-ratio variant are computed on the clean probe
    set (default the training subset, eval mode, post-activation features), optionally with the
    test accuracy. A probe draws no random numbers and restores train mode, so training is
    bit-identical with or without probes.

Leaky ResNets (``model="leaky_resnet"``, :mod:`nets.resnet`; SPEC §3.1, §5.2)
    The objective is the data term plus ``(λ/(2L̃)) Σ ρ_ℓ ‖W_ℓ‖_F²`` (``weight_decay`` = λ,
    ``ltilde`` = L̃), the reported ``train_loss`` is that full objective. ``step_scheme`` sets the
    mesh ``ρ``; with ``"adaptive"`` the mesh is re-set by :func:`nets.mesh.adaptive_steps` from
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
    optimiser, loss, epochs, probe settings; free to differ in :data:`nets.config.ENSEMBLE_VARYING`:
    α, dropout, label noise, lr, T, seed, early-stop threshold, and for leaky ResNets L̃ and λ)
    as one batched model (:mod:`nets.models`) with a stacked Adam/SGD (:mod:`nets.optim`) that is
    elementwise and so equal to per-member optimisers, and per-member generators drawn in the same
    order as a network trained alone. A member that stops (early stop, divergence) is frozen: its
    state and test numbers are taken when it stops, while the others train on. Every member's
    numbers equal the plain single-network loop of :mod:`nets._reference` on its own config to
    float rounding (tested).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from nets import evaluate
from nets.bottleneck import layer_measures
from nets.config import TrainConfig, ensemble_key
from nets.data import Dataset, load_dataset
from nets.history import History
from nets.mesh import adaptive_steps, step_sizes
from nets.models import build_ensemble, build_model
from nets.noise import epoch_batches, noisy_batch, sgld_scale, stream_seeds
from nets.optim import StackedOptimizer
from nets.resnet import EnsembleLeakyResNet, LeakyResNet, relative_speeds
from springblock.errors import check_memory

__all__ = ["train", "train_ensemble", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` → CUDA if available else CPU; ``"cuda"`` without a GPU raises."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={spec!r} asked for but CUDA is not available")
    return dev


def train(config: TrainConfig, *, dataset: Dataset | None = None, cache_dir=None) -> History:
    """Train one network under ``config`` and return its :class:`~nets.history.History`.

    Parameters
    ----------
    config : TrainConfig
    dataset : Dataset, optional
        Use this data instead of loading ``config.dataset`` (must match its input shape).
    cache_dir : path, optional
        MNIST cache directory (default ``$SPRINGBLOCK_DATA`` or ``./data``).

    The ensemble loop with one member. Divergence is a status, not an exception. Deterministic on
    CPU for a given ``seed``.
    """
    _check_configs([config])
    return _train_group([config], dataset, cache_dir)[0]


def train_ensemble(configs, *, dataset: Dataset | None = None, cache_dir=None,
                   max_members: int | None = None) -> list[History]:
    """Train many configs as batched ensembles; one :class:`~nets.history.History` per config,
    in order.

    Configs are grouped by :func:`nets.config.ensemble_key` (everything except
    :data:`nets.config.ENSEMBLE_VARYING`); each group (split into chunks of at most
    ``max_members``) is trained as one stacked model. Every member's numbers equal :func:`train`
    on its own config up to float rounding.
    """
    configs = list(configs)
    if not configs:
        return []
    _check_configs(configs)
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


def _check_configs(configs) -> None:
    for i, c in enumerate(configs):
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs[{i}] is a {type(c).__name__}, not a TrainConfig")


# ---------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------
def rng_devices(dev: torch.device) -> list:
    """The CUDA devices whose RNG state ``torch.random.fork_rng`` must save for ``dev``."""
    if dev.type == "cuda":
        return [dev.index if dev.index is not None else torch.cuda.current_device()]
    return []


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def load_data(cfg: TrainConfig, dataset: Dataset | None, cache_dir) -> Dataset:
    """``dataset`` if given, else the data set named by ``cfg`` (:func:`nets.data.load_dataset`)."""
    if dataset is not None:
        return dataset
    return load_dataset(cfg.dataset, root=cfg.data_root, cache_dir=cache_dir,
                        image_size=cfg.image_size, n_train=cfg.n_train, subset_seed=cfg.subset_seed,
                        subset=cfg.subset)


def data_tensors(ds: Dataset, cfg: TrainConfig, dev, dtype):
    """Training, test and probe tensors on ``dev``, the probe labels (None for regression) and the
    batch size."""
    def t(a, dt):
        return torch.from_numpy(np.array(a)).to(device=dev, dtype=dt)

    ytype = dtype if ds.task == "regression" else torch.long
    x, y = t(ds.x_train, dtype), t(ds.y_train, ytype)
    xt, yt = t(ds.x_test, dtype), t(ds.y_test, ytype)
    xp, yp = (x, ds.y_train) if cfg.probe_on == "train" else (xt, ds.y_test)
    bs = cfg.batch_size or len(y)
    if bs > len(y):
        raise ValueError(f"TrainConfig.batch_size={bs} is larger than the {len(y)} training samples")
    if ds.task == "regression":  # labels are only used by log D, which regression data lacks
        return x, y, xt, yt, xp, None, bs
    return x, y, xt, yt, xp, np.asarray(yp, dtype=np.int64), bs


def training_bytes(cfg: TrainConfig, ds: Dataset, members: int = 1) -> float:
    """A rough upper estimate of the memory one (ensemble) run allocates, in bytes: per member
    the weights with their gradient and two Adam moments (4 copies), the activations of one batch
    and the probe features ``(n_probe, p)`` of every layer — from the configuration alone."""
    item = 8 if cfg.dtype == "float64" else 4
    w, L = cfg.width, cfg.depth
    spatial = int(np.prod(ds.input_shape[1:])) if cfg.model == "cnn" and len(ds.input_shape) > 1 else 1
    per_unit = 9 if cfg.model == "cnn" else 1  # 3x3 kernels
    weights = ds.input_dim * w + L * w * w * per_unit + w * spatial * ds.n_classes
    n = len(ds.y_train)
    n_probe = n if cfg.probe_on == "train" else len(ds.y_test)
    batch = cfg.batch_size or n
    features = (L + 1) * w * spatial
    return float(item) * members * (4 * weights + 2 * batch * features + n_probe * features)


def check_training_memory(cfgs, ds: Dataset) -> None:
    """``ResourceError`` naming width/depth/members if :func:`training_bytes` exceeds the budget."""
    ref = cfgs[0]
    check_memory(f"width={ref.width}, depth={ref.depth}, model={ref.model}, {len(cfgs)} member(s), "
                 f"{len(ds.y_train)} training samples", training_bytes(ref, ds, len(cfgs)),
                 hint="use a smaller --width/--depth, fewer members (--max-members) or fewer samples")


def make_model(cfg: TrainConfig, ds: Dataset, init_seed: int, dev, dtype) -> torch.nn.Module:
    """The single network of ``cfg`` for ``ds``, initialised from the global generator seeded
    with ``init_seed`` (PyTorch default initialisation)."""
    torch.manual_seed(init_seed)
    if cfg.model == "leaky_resnet":
        model = LeakyResNet(ds.input_dim, cfg.width, cfg.depth, ds.n_classes, ltilde=cfg.ltilde,
                            step_scheme=cfg.step_scheme, weight_decay=cfg.weight_decay)
    else:
        model = build_model(cfg.model, ds.input_shape, width=cfg.width, depth=cfg.depth,
                            n_classes=ds.n_classes, alpha=cfg.alpha, dropout=cfg.dropout,
                            batch_norm=cfg.batch_norm)
    return model.to(device=dev, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# per-network bookkeeping
# ---------------------------------------------------------------------------------------------
class RunRecord:
    """What one network's run records (becomes its :class:`History`); shared with the reference
    loop :mod:`nets._reference`, like :func:`load_data`, :func:`data_tensors` and
    :func:`make_model`."""

    def __init__(self, cfg: TrainConfig, task: str):
        self.cfg = cfg
        self.task = task
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
        leaky = cfg.model == "leaky_resnet"
        self.rho = step_sizes(cfg.step_scheme, cfg.depth) if leaky else None
        self.rho_traj = [(0, self.rho.tolist())] if leaky else None
        self.bottleneck = None
        self.btraj: list = []

    def probe_due(self, epoch: int) -> bool:
        pe = self.cfg.probe_every
        return (not self.active) or epoch == self.cfg.epochs or (pe > 0 and epoch % pe == 0)

    def adapt_due(self, epoch: int) -> bool:
        cfg = self.cfg
        return (cfg.model == "leaky_resnet" and cfg.step_scheme == "adaptive" and self.active
                and epoch % cfg.adapt_every == 0 and epoch <= cfg.epochs - cfg.adapt_every)

    def adapt(self, feats, epoch: int) -> np.ndarray | None:
        """New mesh from the stream (adaptive scheme); None (mesh kept) if it is not finite."""
        speeds = relative_speeds(feats, self.rho)
        if not np.all(np.isfinite(speeds)):
            log.warning("adaptive steps: non-finite speeds at epoch %d, mesh kept", epoch)
            return None
        self.rho = adaptive_steps(speeds, self.rho, self.cfg.ltilde)
        self.rho_traj.append((int(epoch), self.rho.tolist()))
        return self.rho

    def record_bottleneck(self, feats, weights, epoch: int, final: bool) -> None:
        """Bottleneck measures of a leaky ResNet (every probe with ``probe_bottleneck``, and the
        final one)."""
        cfg = self.cfg
        if not (final or cfg.probe_bottleneck):
            return
        if not all(bool(torch.isfinite(f).all()) for f in feats):
            return  # a diverged network: nothing to measure
        m = layer_measures(feats, self.rho, cfg.ltilde, weights=weights if final else None,
                           gamma0=cfg.bottleneck_gamma0, n_singular=20)
        if cfg.probe_bottleneck:
            self.btraj.append(dict(epoch=int(epoch), coi=m["coi"], k_hat=m["k_hat"], kinetic=m["kinetic"],
                                   speed=m["speed"]))
        if final:
            self.bottleneck = m

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


def _snapshot(ens, e) -> dict:
    return {n: v.cpu() for n, v in ens.member_state_dict(e).items()}


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def _train_group(cfgs: list[TrainConfig], dataset, cache_dir) -> list[History]:
    """Train configs that share :func:`ensemble_key` as one stacked model."""
    ref = cfgs[0]
    ds = load_data(ref, dataset, cache_dir)
    check_training_memory(cfgs, ds)
    dev, dtype = resolve_device(ref.device), _dtype(ref.dtype)
    k = ds.n_classes
    e_count = len(cfgs)
    t0 = time.perf_counter()
    x, y, xt, yt, xp, yp, bs = data_tensors(ds, ref, dev, dtype)
    n = len(y)
    tracks = [RunRecord(c, ds.task) for c in cfgs]
    leaky = ref.model == "leaky_resnet"
    with torch.random.fork_rng(devices=rng_devices(dev)):
        seeds = [stream_seeds(c.seed) for c in cfgs]
        members = [make_model(c, ds, s[0], dev, dtype) for c, s in zip(cfgs, seeds, strict=True)]
        ens = (EnsembleLeakyResNet.from_members(members) if leaky else build_ensemble(members)).to(dev)
        del members
        gens = [torch.Generator(device=dev).manual_seed(s[1]) for s in seeds]
        ens.dropout_generators = [torch.Generator(device=dev).manual_seed(s[2]) for s in seeds]
        opt = StackedOptimizer(ens.params, [c.lr for c in cfgs], ref.optimizer)
        sgld = [sgld_scale(c.lr, c.sgld_temperature) for c in cfgs]
        sgld_vec = torch.tensor(sgld, dtype=torch.float64)
        any_label_noise = any(c.label_noise > 0 for c in cfgs)
        frozen: dict[int, dict] = {}  # member -> final state, taken when it stops

        def probe(epoch, which):
            res, feats = evaluate.probe(ens, xp, yp, k, features=ref.probe_features, mode=ref.probe_mode)
            acc = (evaluate.accuracy(ens, xt, yt) if ref.probe_accuracy and ds.task == "classification"
                   else None)
            for m in which:
                tr = tracks[m]
                tr.probe_epochs.append(epoch)
                tr.curves.append(res[m][0])
                tr.traces.append(res[m][1])
                if acc is not None:
                    tr.probe_acc.append(float(acc[m]))
                if leaky:
                    weights = [ens.p("weights")[m, ell].detach() for ell in range(ref.depth)]
                    final = (not tr.active) or epoch == ref.epochs
                    tr.record_bottleneck([f[m] for f in feats], weights, epoch, final)

        if ref.probe_every > 0:
            probe(0, range(e_count))
        ens.train()
        for epoch in range(1, ref.epochs + 1):
            live = [m for m in range(e_count) if tracks[m].active]
            for m in live:
                tracks[m].epochs_run = epoch
            perms = [epoch_batches(n, bs, g) for g in gens]
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
                losses = evaluate.mean_loss(ens(xb), yb, ref.loss, k)
                if leaky:
                    losses = losses + ens.regularizer()
                lv = losses.detach().double().cpu().numpy()
                if not np.isfinite(lv[live]).all():
                    for m in live:
                        if not math.isfinite(lv[m]):  # diverged: this step's update is not applied
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
                if m in frozen:  # a diverged member: back to its state before the bad step
                    ens.load_member_state_dict(m, frozen[m])
            due = [m for m in range(e_count)
                   if (m in live or m in stopping) and tracks[m].probe_due(epoch)]
            if due:
                probe(epoch, due)
            adapt = [m for m in range(e_count) if tracks[m].adapt_due(epoch)]
            if adapt:
                feats = evaluate.stream(ens, x)
                for m in adapt:
                    new = tracks[m].adapt([f[m] for f in feats], epoch)
                    if new is not None:
                        ens.set_rho(m, new)
            if stopping or epoch == ref.epochs:
                if ds.task == "regression":
                    acc = np.full(e_count, np.nan)
                    tl = evaluate.mse(ens, xt, yt)
                else:
                    acc = evaluate.accuracy(ens, xt, yt)
                    tl = (evaluate.test_loss(ens, xt, yt, ref.loss, k) if leaky
                          else np.full(e_count, np.nan))
                for m in range(e_count):
                    if m in stopping or (epoch == ref.epochs and tracks[m].active):
                        tracks[m].test_accuracy = float(acc[m])
                        tracks[m].test_loss = float(tl[m])
                        frozen[m] = _snapshot(ens, m)
            if all(not t.active for t in tracks):
                break
    wall = time.perf_counter() - t0
    log.info("trained %d %s (first: alpha=%g seed=%d) in %.1f s", e_count, ref.model, ref.alpha,
             ref.seed, wall)
    hists = []
    for m, t in enumerate(tracks):
        t.state_dict = frozen[m]
        hists.append(t.history(wall / e_count, e_count, k))
    return hists
