"""Benchmark of :func:`nets.load_curve` and :class:`nets.LoadCurveRecorder` (SPEC §6).

    python -m benchmarks.load_curve [--threads 2] [--quick]

Prints, measured side by side in one run (ratios, not absolute times, are the result):

1. **Recorder overhead.** The package's MLP protocol (7 × 100 MLP, 10×10 MNIST, 2560 images,
   full-batch Adam) trained for ``E`` epochs with :class:`nets.LoadCurveRecorder` at ``every=1``
   on probe sets of 2560 (the training set), 512, 256 and 128 images; each epoch's training step
   and each probe are timed separately and overhead = median probe / median training epoch
   (medians, because the development machine is shared). Target ≤ 10 %.
2. **Probe throughput** (samples/s of a whole :func:`nets.load_curve`, all layers): the MLP on
   2560 images, and a 64-channel 3×3 conv layer on 16×16 inputs (16 384 features per sample) on
   4000 images, by the streaming route (two passes, O(pK + Bp) memory) against the in-memory
   route on the same data.

Expected runtime: ~1-2 minutes on 2 CPU cores. Needs MNIST (``python -m nets fetch mnist``).
There is no GPU on the development machine; on a CUDA machine pass ``--device cuda``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nets import LoadCurveRecorder, load_curve
from nets.data import load_dataset
from nets.models import MLP


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def step_times(x, y, epochs, probe_sizes, device="cpu") -> tuple[np.ndarray, dict]:
    """Wall time of every training epoch and of every recorder step after it, timed separately
    in one loop (one recorder per probe-set size, stepped in turn), so that other jobs on a
    shared machine slow both alike; the medians are compared."""
    torch.manual_seed(1)
    model = MLP().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    recs = {n: LoadCurveRecorder(model, (x[:n], y[:n]), every=1) for n in probe_sizes}
    for r in recs.values():
        r.step(0)
    train_t, probe_t = [], {n: [] for n in probe_sizes}
    for epoch in range(1, epochs + 1):
        _sync(device)
        t0 = time.perf_counter()
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        train_t.append(time.perf_counter() - t0)
        for n, r in recs.items():
            t0 = time.perf_counter()
            r.step(epoch)
            _sync(device)
            probe_t[n].append(time.perf_counter() - t0)
    return np.array(train_t), {n: np.array(v) for n, v in probe_t.items()}


def throughput(model, x, y, reps=2) -> dict:
    res = {}
    for route in ("stream", "memory"):
        load_curve(model, (x[:256], y[:256]), route=route)  # warm-up
        best = min(_timed(lambda r=route: load_curve(model, (x, y), route=r, batch_size=512)) for _ in range(reps))
        res[route] = len(y) / best
    return res


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.load_curve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ds = load_dataset("mnist")
    x, y = torch.tensor(ds.x_train).to(dev), torch.tensor(ds.y_train).to(dev)
    epochs = 10 if args.quick else 30
    print(f"device {args.device}, {args.threads} threads")
    print(f"1. recorder overhead at every=1, MLP protocol, {epochs} epochs")
    sizes = (2560, 512, 256, 128)
    train_t, probe_t = step_times(x, y, epochs, sizes, args.device)
    tm = np.median(train_t)
    print(f"   training epoch (full batch 2560, forward + backward + Adam): median {tm * 1e3:6.1f} ms")
    for n in sizes:
        pm = np.median(probe_t[n])
        print(f"   probe set {n:>5d} images: median {pm * 1e3:6.1f} ms per probe = {100 * pm / tm:6.1f} % overhead")
    torch.manual_seed(0)
    mlp = MLP().to(dev)
    t = throughput(mlp, x, y)
    print(f"2. probe throughput, MLP 7x100 on {len(y)} images (8 layers): stream {t['stream']:8.0f} samples/s, "
          f"memory {t['memory']:8.0f} samples/s (stream/memory {t['stream'] / t['memory']:.2f})")
    n = 2000 if args.quick else 4000
    conv = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10)).to(dev)
    yc = torch.arange(n, device=dev) % 10
    xc = torch.randn(n, 1, 16, 16, device=dev) + 0.1 * yc.view(-1, 1, 1, 1)
    t = throughput(conv, xc, yc)
    print(f"   conv 64x16x16 (16384 features) on {n} images: stream {t['stream']:8.0f} samples/s, "
          f"memory {t['memory']:8.0f} samples/s (stream/memory {t['stream'] / t['memory']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
