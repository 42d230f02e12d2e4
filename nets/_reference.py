"""The plain single-network training loop: the executable spec of :mod:`nets.training`.

:func:`train_reference` trains one network under a :class:`~nets.config.TrainConfig` with plain
``torch.nn`` modules (:class:`nets.models.MLP`, :class:`~nets.models.CNN`,
:class:`nets.resnet.LeakyResNet`), ``torch.optim.Adam`` / ``SGD``, ``nn.Dropout`` fed by the
global generator, and per-sample-set evaluation — no stacking, no fused kernels, no member
bookkeeping. It follows the protocol of :mod:`nets.training` step by step and draws the same
random numbers in the same order, so :func:`nets.train` (the batched loop with one member) and
every member of :func:`nets.train_ensemble` must equal it to float rounding; the tests check
that on every model and noise axis. Slow (one network at a time); not used by the library.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from nets import probes
from nets.config import TrainConfig
from nets.data import Dataset
from nets.evaluate import mean_loss
from nets.history import History
from nets.noise import epoch_batches, noisy_batch, sgld_scale, stream_seeds
from nets.training import RunRecord, data_tensors, load_data, make_model, resolve_device, rng_devices

__all__ = ["train_reference"]


def _accuracy(model, x, y) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train(was)
    if not bool(torch.isfinite(logits).all()):
        return float("nan")
    return int((logits.argmax(-1) == y).sum()) / len(y)


def _features(model, x, cfg: TrainConfig) -> list[torch.Tensor]:
    """Per-layer features of the clean probe set; BatchNorm with running statistics (eval) or
    with the probe set's own statistics, running ones untouched (``probe_mode="batch"``)."""
    was = model.training
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if cfg.probe_mode == "batch":
        for m in bns:
            m.train()
            m.track_running_stats = False
    try:
        with torch.no_grad():
            if cfg.model == "leaky_resnet":
                return model.forward_features(x)[1]
            return model.forward_features(x, cfg.probe_features)[1]
    finally:
        for m in bns:
            m.track_running_stats = True
        model.train(was)


def train_reference(cfg: TrainConfig, *, dataset: Dataset | None = None, cache_dir=None) -> History:
    """Train one network under ``cfg`` with the plain loop; the :class:`History` of :func:`nets.train`."""
    ds = load_data(cfg, dataset, cache_dir)
    dev, dtype = resolve_device(cfg.device), {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    k = ds.n_classes
    t0 = time.perf_counter()
    x, y, xt, yt, xp, yp, bs = data_tensors(ds, cfg, dev, dtype)
    n = len(y)
    tr = RunRecord(cfg, ds.task)
    leaky = cfg.model == "leaky_resnet"
    with torch.random.fork_rng(devices=rng_devices(dev)):
        init_seed, noise_seed, drop_seed = stream_seeds(cfg.seed)
        model = make_model(cfg, ds, init_seed, dev, dtype)
        params = list(model.parameters())
        opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)(params, lr=cfg.lr)
        torch.manual_seed(drop_seed)  # from here on the global stream feeds only nn.Dropout
        gen = torch.Generator(device=dev).manual_seed(noise_seed)
        sgld = sgld_scale(cfg.lr, cfg.sgld_temperature)

        def probe(epoch):
            feats = _features(model, xp, cfg)
            if yp is None:
                d = t = np.full(len(feats), np.nan)
            else:
                pairs = [probes.separation_stats(f.double(), yp, k) if bool(torch.isfinite(f).all())
                         else (np.nan, np.nan) for f in feats]  # NaN: a diverged network
                d, t = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            tr.probe_epochs.append(epoch)
            tr.curves.append(d)
            tr.traces.append(t)
            if cfg.probe_accuracy and ds.task == "classification":
                tr.probe_acc.append(_accuracy(model, xt, yt))
            if leaky:
                final = (not tr.active) or epoch == cfg.epochs
                tr.record_bottleneck(feats, model.layer_weights(), epoch, final)

        if cfg.probe_every > 0:
            probe(0)
        model.train()
        for epoch in range(1, cfg.epochs + 1):
            tr.epochs_run = epoch
            batches = epoch_batches(n, bs, gen)
            total, used = 0.0, 0
            for idx in batches if batches is not None else [None]:
                xb, yb = (x, y) if idx is None else (x[idx], y[idx])
                xb, yb = noisy_batch(xb, yb, cfg.label_noise, k, gen)
                loss = mean_loss(model(xb), yb, cfg.loss, k)
                if leaky:
                    loss = loss + model.regularizer()
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    tr.status, tr.active = "diverged", False
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
            epoch_loss = total / used if tr.active else float("nan")
            tr.losses.append(epoch_loss)
            if tr.active and epoch_loss < cfg.early_stop_loss:
                tr.status, tr.active = "early_stopped", False
            if tr.probe_due(epoch):
                probe(epoch)
            if tr.adapt_due(epoch):
                with torch.no_grad():
                    new = tr.adapt(model.eval().forward_features(x)[1], epoch)
                model.train()
                if new is not None:
                    model.set_rho(new)
            if not tr.active:
                break
        model.eval()
        with torch.no_grad():
            if ds.task == "regression":
                tr.test_loss = float(((model(xt) - yt) ** 2).double().mean())
            else:
                tr.test_accuracy = _accuracy(model, xt, yt)
                if leaky:
                    tr.test_loss = float(mean_loss(model(xt), yt, cfg.loss, k))
        tr.state_dict = {name: v.detach().cpu().clone() for name, v in model.state_dict().items()}
    return tr.history(time.perf_counter() - t0, 1, k)
