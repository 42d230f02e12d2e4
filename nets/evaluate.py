"""Evaluation of a batched ensemble of ``E`` networks: loss, accuracy, test MSE and the probes.

Every function takes an ensemble model (:class:`nets.models.EnsembleMLP`,
:class:`~nets.models.EnsembleCNN`, :class:`nets.resnet.EnsembleLeakyResNet`; a single network is
an ensemble of one), evaluates all members on the same clean inputs in chunks of
:data:`EVAL_CHUNK` samples, draws no random numbers and restores the model's train/eval mode,
so training is bit-identical with or without evaluation.

Probes (SPEC §1.2, §3.3)
    :func:`probe` computes, per member, the load curve ``log D_l``, ``l = 0..depth`` and its
    trace-ratio variant ``log tr Σ_w − log tr Σ_b`` from the per-layer features of the clean probe
    set (eval mode — running BatchNorm statistics — or, with ``probe_mode="batch"``, the probe
    set's own batch statistics without touching the running ones; ``"post"`` or ``"pre"``
    activation features). Regression data have no classes: the curves are NaN.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nets import probes

__all__ = ["EVAL_CHUNK", "mean_loss", "accuracy", "mse", "test_loss", "probe", "stream"]

#: Samples per forward pass in evaluation.
EVAL_CHUNK = 4096


def _chunks(n: int, chunk: int = EVAL_CHUNK):
    return [(i, min(n, i + chunk)) for i in range(0, n, chunk)]


def _members(ens, x: torch.Tensor) -> torch.Tensor:
    """The same inputs ``(B, ...)`` for every member: ``(E, B, ...)`` (a view, no copy)."""
    return x.unsqueeze(0).expand(ens.n_members, *x.shape)


def _join(parts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-layer features of all chunks joined along the sample axis, contiguous ``(E, N, p_l)``
    (the separation statistics run several times faster on contiguous rows)."""
    return [torch.cat([p[i] for p in parts], dim=1) for i in range(len(parts[0]))]


def mean_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    """Mean loss over the batch; ``logits`` ``(..., B, K)``, leading dims kept.

    Integer labels ``y`` ``(..., B)``: cross-entropy (``kind="ce"``) or the mean squared error
    against one-hot targets (``"mse"``, mean over samples and outputs). Float targets
    ``(..., B, d)`` (regression): the mean squared error.
    """
    if y.is_floating_point():
        return ((logits - y) ** 2).mean((-2, -1))
    if kind == "ce":
        per = F.cross_entropy(logits.reshape(-1, k), y.reshape(-1), reduction="none")
        return per.view(y.shape).mean(-1)
    target = F.one_hot(y, k).to(logits.dtype)
    return ((logits - target) ** 2).mean((-2, -1))


def accuracy(ens, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Fraction of ``(x, y)`` classified correctly by each member, ``(E,)`` float64; NaN for a
    member whose logits are not all finite."""
    was = ens.training
    ens.eval()
    correct = torch.zeros(ens.n_members, dtype=torch.long)
    finite = torch.ones(ens.n_members, dtype=torch.bool)
    with torch.no_grad():
        for a, b in _chunks(len(y)):
            logits = ens(_members(ens, x[a:b]))
            finite &= torch.isfinite(logits).flatten(1).all(1).cpu()
            correct += (logits.argmax(-1) == y[a:b]).sum(1).cpu()
    ens.train(was)
    acc = correct.double().numpy() / len(y)
    acc[~finite.numpy()] = np.nan
    return acc


def mse(ens, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Mean squared error over samples and outputs of each member on float targets, ``(E,)``."""
    was = ens.training
    ens.eval()
    total = torch.zeros(ens.n_members, dtype=torch.float64)
    with torch.no_grad():
        for a, b in _chunks(len(y)):
            total += ((ens(_members(ens, x[a:b])) - y[a:b]) ** 2).double().sum((1, 2)).cpu()
    ens.train(was)
    return total.numpy() / y.numel()


def test_loss(ens, x: torch.Tensor, y: torch.Tensor, kind: str, k: int) -> np.ndarray:
    """:func:`mean_loss` of each member on ``(x, y)`` (one pass), ``(E,)`` float64."""
    was = ens.training
    ens.eval()
    with torch.no_grad():
        out = mean_loss(ens(_members(ens, x)), _members(ens, y), kind, k)
    ens.train(was)
    return out.double().cpu().numpy()


test_loss.__test__ = False  # not a pytest test


def probe(ens, x: torch.Tensor, labels: np.ndarray | None, k: int, *, features: str = "post",
          mode: str = "eval") -> tuple[list[tuple[np.ndarray, np.ndarray]], list[torch.Tensor]]:
    """Per member ``(log D curve, trace-ratio curve)``, and the features ``(E, N, p_l)``.

    ``labels`` None (regression) gives NaN curves. ``mode="batch"``: BatchNorm uses the probe
    set's batch statistics (one pass, running statistics untouched); ``"eval"``: running
    statistics, in chunks.
    """
    was = ens.training
    ens.eval()
    with torch.no_grad():
        if mode == "batch":
            ens.batch_stats_probe = True
            try:
                feats = ens.forward_features(_members(ens, x), features)[1]
            finally:
                ens.batch_stats_probe = False
        else:
            parts = [ens.forward_features(_members(ens, x[a:b]), features)[1] for a, b in _chunks(len(x))]
            feats = _join(parts)
    ens.train(was)
    if labels is None:
        nan = np.full(len(feats), np.nan)
        return [(nan.copy(), nan.copy()) for _ in range(ens.n_members)], feats
    # batched over members, float64 in row chunks on the features' device; NaN where not finite
    pairs = [probes.separation_stats_batched(f, labels, k) for f in feats]
    d = np.stack([p[0] for p in pairs], axis=1)  # (E, L + 1)
    t = np.stack([p[1] for p in pairs], axis=1)
    return [(d[m], t[m]) for m in range(d.shape[0])], feats


def stream(ens, x: torch.Tensor) -> list[torch.Tensor]:
    """Residual stream ``h_0..h_L`` of a leaky-ResNet ensemble on clean inputs (eval mode, no
    RNG): ``(E, N, w)`` per layer."""
    was = ens.training
    ens.eval()
    with torch.no_grad():
        parts = [ens.forward_features(_members(ens, x[a:b]))[1] for a, b in _chunks(len(x))]
    ens.train(was)
    return _join(parts)
