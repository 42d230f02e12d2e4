"""``python -m phase_diagrams simulate [--preset P|all] [--out DIR] [--chains N] [--steps T] [--seed S]``

Simulated friction x noise phase diagrams (PNG + PDF figures and a CSV table in --out).
All three presets with the defaults take about half a minute on 2 cores.
"""

import argparse
import logging
import sys
import time

from phase_diagrams.simulated import PRESETS, run_simulated_diagrams
from springblock import ChainParams


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase_diagrams", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="simulated friction x noise phase diagrams")
    s.add_argument("--preset", default="all", help=f"one of {', '.join(PRESETS)}, or 'all' (default)")
    s.add_argument("--out", default="figures", help="output directory (default figures/)")
    s.add_argument("--chains", type=int, default=256, help="chains per cell (default 256)")
    s.add_argument("--steps", type=int, default=10_000, help="time steps (default 10000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mu-max", type=float, default=0.1)
    s.add_argument("--ratio", type=float, default=2.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    presets = PRESETS if args.preset == "all" else (args.preset,)
    t0 = time.perf_counter()
    try:
        table = run_simulated_diagrams(args.out, presets, base=ChainParams(n_steps=args.steps), n_chains=args.chains,
                                       seed=args.seed, mu_max=args.mu_max, ratio=args.ratio)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for preset, df in table.groupby("preset", sort=False):
        counts = df["regime"].value_counts().to_dict()
        print(f"{preset:>15}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"wrote {args.out}/simulated_*.png|pdf and simulated_diagrams.csv in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
