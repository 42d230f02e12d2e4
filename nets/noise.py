"""The protocol's randomness: seed streams, noisy batches, minibatch order (SPEC §3.2).

Randomness (seeded, deterministic on CPU)
    ``seed`` is split by ``numpy.random.SeedSequence`` into three streams (:func:`stream_seeds`):
    the initialisation (PyTorch default init drawn from the global generator seeded with it), the
    data noise (one ``torch.Generator``: shuffles, label and input noise, SGLD — in that order
    within a step), and dropout (one ``torch.Generator`` per network, used only by its dropout
    masks). :func:`nets.train` restores the caller's global RNG state afterwards (``fork_rng``).

Label noise ``p`` (:func:`noisy_batch`)
    In every batch a random ⌊p·B⌋ of the B labels are replaced by uniform random labels in
    ``0..K−1`` (a replacement may equal the original label, so the fraction of *changed* labels
    is p·(K−1)/K on average), and the inputs get Gaussian noise of standard deviation
    ``p · std(batch)`` (``std`` over all entries of the batch, unbiased). Fresh every batch.
    Regression targets: ⌊p·B⌋ targets are replaced by those of uniformly drawn batch samples.

SGLD temperature ``T`` (:func:`sgld_scale`)
    After every optimiser step each parameter gets ``θ ← θ + sqrt(2 · lr · T) · ξ``,
    ``ξ ~ N(0, 1)`` from the data-noise generator (Langevin "shaking").
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["stream_seeds", "noisy_batch", "epoch_batches", "sgld_scale"]


def stream_seeds(seed: int) -> tuple[int, int, int]:
    """``(init, data_noise, dropout)`` seeds derived from ``seed`` by ``SeedSequence.spawn``."""
    kids = np.random.SeedSequence(int(seed)).spawn(3)
    return tuple(int(k.generate_state(1, np.uint32)[0]) for k in kids)


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


def epoch_batches(n: int, bs: int, gen: torch.Generator) -> list[torch.Tensor] | None:
    """None for a full batch; otherwise a fresh permutation cut into full batches of ``bs``."""
    if bs >= n:
        return None
    perm = torch.randperm(n, generator=gen, device=gen.device)
    return [perm[i : i + bs] for i in range(0, n - bs + 1, bs)]


def sgld_scale(lr: float, temperature: float) -> float:
    """Standard deviation ``sqrt(2 · lr · T)`` of the SGLD parameter noise per step."""
    return math.sqrt(2.0 * lr * temperature)
