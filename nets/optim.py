"""The optimiser of the batched loop: Adam / SGD on parameters stacked along a member axis.

Each member's update equals ``torch.optim.Adam`` / ``torch.optim.SGD`` (default betas and eps,
no weight decay) on that member alone — the updates are elementwise — so an ensemble of ``E``
networks trains as ``E`` separate runs would, up to float rounding (tested against the plain
loop of :mod:`nets._reference`).
"""

from __future__ import annotations

import torch

__all__ = ["StackedOptimizer"]


class StackedOptimizer:
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
