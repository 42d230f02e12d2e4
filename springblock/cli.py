"""``python -m springblock simulate``: one parameter point, ensemble-mean load curve and shape.

    python -m springblock simulate                      # original first-order run, ~1 s
    python -m springblock simulate --order 2 --json     # original Langevin notebook values
    python -m springblock simulate --mu-backward 0.2 --eps 0.2 --chains 2000

Errors (a bad value, a size beyond the memory budget) print one line ``error: ...`` and exit 2;
Ctrl-C stops the run within a fraction of a second with exit status 130; ``-v`` (or
``SPRINGBLOCK_TRACEBACK=1``) adds the traceback. ``--json`` is strict RFC 8259 JSON (null for a
non-finite number).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from springblock.dynamics import simulate
from springblock.errors import InputError, OneLineParser, run_cli, run_interruptible, strict_json
from springblock.observables import elongations
from springblock.params import NOISE_MODES, ChainParams


def _floats(text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m springblock", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="simulate one parameter point and print the load curve")
    s.add_argument("--order", type=int, choices=(1, 2), default=1,
                   help="1 overdamped (original first-order defaults), 2 Langevin (original notebook defaults)")
    for f in dataclasses.fields(ChainParams):
        if f.name == "order":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "noise_mode":
            s.add_argument(flag, choices=NOISE_MODES, default=None)
        elif f.name in ("n_blocks", "n_steps"):
            s.add_argument(flag, type=int, default=None)
        else:
            s.add_argument(flag, type=_floats, default=None,
                           help="scalar, or comma-separated per-spring/per-block values" if f.name in
                           ("k", "mu_forward", "mu_backward", "kappa", "pin_position") else None)
    s.add_argument("--steps", type=int, default=None, help="alias of --n-steps")
    s.add_argument("--chains", type=int, default=1000, help="ensemble size (default 1000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("-v", "--verbose", action="count", default=0, help="show the traceback of an error")
    return ap


def params_from_args(args) -> ChainParams:
    """The :class:`ChainParams` an argument namespace describes (order-specific defaults)."""
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(ChainParams)
               if f.name != "order" and getattr(args, f.name, None) is not None}
    if args.steps is not None:
        changes["n_steps"] = args.steps
    base = ChainParams if args.order == 1 else ChainParams.second_order_original
    return base(**changes)


def simulate_summary(params: ChainParams, n_chains: int = 1000, seed: int = 0) -> dict:
    """Ensemble-mean load curve, loads (``L``), elongations (``L + 1`` springs) and shape numbers of
    one point, JSON-able."""
    res = simulate(params, n_chains=n_chains, seed=seed)
    s = res.summary()
    return {
        "params": params.to_dict(),
        "n_chains": n_chains,
        "seed": seed,
        "load_curve": res.load_curve().tolist(),
        "loads": res.loads().tolist(),
        "elongations": elongations(res.x.mean(0), params.y).tolist(),
        "linearity": float(s["linearity"]),
        "curvature": float(s["curvature"]),
        "normalized_curvature": float(s["normalized_curvature"]),
        "regime": s["regime"],
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    status = run_cli(lambda: _simulate(args), verbose=args.verbose)
    if status == 130 and threading_active():
        # the kernel still runs in its worker thread: leave now instead of waiting for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return status


def threading_active() -> bool:
    import threading

    return any(t.name == "springblock-work" and t.is_alive() for t in threading.enumerate())


def _simulate(args) -> int:
    for name in ("chains", "seed"):
        v = getattr(args, name)
        if v < (1 if name == "chains" else 0) or v >= 2**63:
            raise InputError(f"--{name} {v}: must be an integer in [{1 if name == 'chains' else 0}, 2**63)")
    params = params_from_args(args)
    # the kernel runs in a worker thread (it releases the GIL) so that Ctrl-C answers at once
    out = run_interruptible(simulate_summary, params, args.chains, args.seed)
    if args.json:
        print(strict_json(out, indent=2))
        return 0
    p = out["params"]
    print(f"order {p['order']}  L={p['n_blocks']}  k={p['k']}  mu->={p['mu_forward']}  mu<-={p['mu_backward']}  "
          f"eps={p['eps']}  lam={p['lam']}  noise_mode={p['noise_mode']}  eta={p['eta']}  steps={p['n_steps']}  "
          f"chains={args.chains}  seed={args.seed}")
    print(f"{'layer':>5} {'y - x':>10} {'load d':>10}")
    for i, c in enumerate(out["load_curve"]):
        e = "" if i == 0 else f"{out['loads'][i - 1]:10.5f}"
        print(f"{i:>5} {c:10.5f} {e:>10}")
    print(f"linearity v = {out['linearity']:.5f}   curvature c = {out['curvature']:+.5f}   "
          f"c/sum(d) = {out['normalized_curvature']:+.4f}   regime: {out['regime']}")
    return 0
