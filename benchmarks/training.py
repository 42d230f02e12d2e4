"""Benchmark of batched network training (SPEC §6), ratios measured side by side in one run.

    python -m benchmarks.training [--threads 1] [--members 12] [--quick]

Prints a table with

1. **Ensemble FLOP/s vs a large matmul.** A float32 ``n × n`` matrix product (``n = 2048``)
   sets the machine's practical peak on the same threads. The ensemble path
   (:func:`nets.train_ensemble`) trains ``E`` original-protocol MLPs (7 × 100, 10×10
   MNIST, full batch of 2560, Adam) and its rate is counted as

       FLOPs per epoch = 3 × 2 × Σ_layers (d_in · d_out) × N_train × E

   (forward matmuls, and twice that for the backward pass: gradients with respect to inputs and
   to weights; BatchNorm, activations and the optimiser are not counted). The wall time per epoch
   is the difference of two runs of ``e1`` and ``e2`` epochs, so data loading, the final probe
   and the test accuracy cancel. Target ratio ≥ 0.4.
2. **Ensemble vs one by one on small batches.** The batch-size panel's smallest batches
   (``batch_size = 10``, one epoch = 256 Adam steps on 2560 images): ``E`` networks (α in
   {0, 0.2, …, 1} × seeds) trained as one ensemble vs the same networks trained one after
   another with :func:`nets.train`. Both paths run 1 and 3 epochs; the difference is the
   steady-state wall time per epoch (target ratio ≥ 5×: a panel run is 100 epochs, so this is
   what its wall time is made of), the remainder the fixed cost (set-up, final probe, test
   accuracy). Also printed: the whole 1-epoch runs and the projected 100-epoch protocol.

Expected runtime: ~2 minutes on 2 CPU cores with ``--threads 1`` (``--quick``: ~1 minute).
Needs MNIST in the cache (``python -m nets fetch mnist``).
"""

from __future__ import annotations

import argparse
import time

import torch

from nets import TrainConfig, train, train_ensemble
from nets.config import config_grid
from nets.data import load_dataset


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` float32 GFLOP/s of an ``n × n`` by ``n × n`` product (2 n³ FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def mlp_train_flops_per_sample(in_dim=100, width=100, depth=7, n_classes=10) -> float:
    """3 × forward matmul FLOPs of one sample (see module docstring)."""
    macs = in_dim * width + (depth - 1) * width * width + width * n_classes
    return 3.0 * 2.0 * macs


def ensemble_gflops(members: int, e1: int, e2: int, dataset) -> float:
    """Achieved training GFLOP/s of ``members`` original MLPs trained as one ensemble."""
    cfgs = config_grid(TrainConfig(probe_every=0), alpha=[i / max(members - 1, 1) for i in range(members)])
    times = []
    for epochs in (e1, e2):
        run = [c.replace(epochs=epochs) for c in cfgs]
        t0 = time.perf_counter()
        train_ensemble(run, dataset=dataset)
        times.append(time.perf_counter() - t0)
    per_epoch = (times[1] - times[0]) / (e2 - e1)
    flops = mlp_train_flops_per_sample() * len(dataset.y_train) * members
    return flops / per_epoch / 1e9


def small_batch_times(members: int, dataset, batch_size: int = 10, e1: int = 1, e2: int = 3) -> dict:
    """Wall times (s) of ``members`` batch-10 networks, one by one and as one ensemble.

    Each path is run for ``e1`` and for ``e2`` epochs; the difference divided by ``e2 - e1`` is
    the steady-state time per epoch (set-up, the final probe and the test accuracy cancel),
    and the ``e1`` run gives the fixed cost ``run(e1) - e1 * per_epoch``.
    """
    alphas = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    seeds = list(range(1, (members + len(alphas) - 1) // len(alphas) + 1))
    base = config_grid(TrainConfig(batch_size=batch_size, probe_every=0), seed=seeds, alpha=alphas)[:members]
    out = {}
    for name, fn in (("one_by_one", lambda cs: [train(c, dataset=dataset) for c in cs]),
                     ("ensemble", lambda cs: train_ensemble(cs, dataset=dataset))):
        runs = []
        for epochs in (e1, e2):
            cfgs = [c.replace(epochs=epochs) for c in base]
            t0 = time.perf_counter()
            fn(cfgs)
            runs.append(time.perf_counter() - t0)
        per_epoch = (runs[1] - runs[0]) / (e2 - e1)
        out[name] = dict(run=runs[0], per_epoch=per_epoch, fixed=runs[0] - e1 * per_epoch)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--members", type=int, default=12, help="ensemble size (default 12)")
    p.add_argument("--quick", action="store_true", help="fewer epochs and members")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    members = 6 if args.quick else args.members
    ds = load_dataset("mnist")  # original protocol: 2560 images, 10x10, full test set

    peak = matmul_gflops()
    e1, e2 = (1, 3) if args.quick else (2, 8)
    ens = ensemble_gflops(members, e1, e2, ds)
    sb = small_batch_times(members, ds)
    one, ens_t = sb["one_by_one"], sb["ensemble"]

    def full(t, epochs=100):  # the batch-size panel's protocol: 100 epochs (no early stop)
        return t["fixed"] + epochs * t["per_epoch"]

    print(f"device: CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"ensemble of {members} MLPs (7 x 100, 10x10 MNIST, N = 2560)")
    print(f"{'measurement':60s} {'value':>12s} {'ratio':>8s} {'target':>7s}")
    print(f"{'large matmul 2048^3 float32 (baseline)':60s} {peak:9.1f} GF/s {1.0:8.2f}")
    print(f"{'ensemble training, full batch 2560 (3 x fwd matmul FLOPs)':60s} {ens:9.1f} GF/s "
          f"{ens / peak:8.2f} {'>= 0.4':>7s}")
    print(f"{'batch 10, one by one: wall per epoch (256 steps x E nets)':60s} {one['per_epoch']:10.2f} s  {1.0:8.2f}")
    print(f"{'batch 10, ensemble: wall per epoch':60s} {ens_t['per_epoch']:10.2f} s  "
          f"{one['per_epoch'] / ens_t['per_epoch']:8.2f} {'>= 5':>7s}")
    print(f"{'batch 10, fixed cost per run set (set-up, probe, accuracy)':60s} "
          f"{one['fixed']:6.2f} / {ens_t['fixed']:.2f} s")
    print(f"{'batch 10, 1-epoch runs, whole wall (one by one / ensemble)':60s} "
          f"{one['run']:6.2f} / {ens_t['run']:.2f} s {one['run'] / ens_t['run']:6.2f}")
    print(f"{'batch 10, 100-epoch protocol, projected wall':60s} "
          f"{full(one):6.0f} / {full(ens_t):.0f} s {full(one) / full(ens_t):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
