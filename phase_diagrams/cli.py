"""Thin command line over :mod:`phase_diagrams` (``python -m phase_diagrams COMMAND ...``).

Commands (each calls one documented Python function)
----------------------------------------------------
``run [SPEC] [--store S] [--out DIR] [--backend B] [--workers N]``
    The main job (:func:`phase_diagrams.jobs.run_main`): sweep, simulated counterpart, the
    calibrated chain (``--no-calibrate`` to skip), every figure, comparison. Default spec
    ``label-noise-small``, store ``out/runs.sqlite``.
``sweep SPEC --store S [--backend serial|joblib|dask] [--workers N] [--scheduler ADDR]``
    Run or resume a sweep (:func:`phase_diagrams.jobs.sweep_and_simulate`). ``SPEC`` is a TOML
    file or a preset name.
``status --store S``
    Progress of every sweep in a store (:func:`phase_diagrams.jobs.status_table`).
``plot --store S [--sweep NAME] [--out DIR] [--cell ROW,COL]``
    Every figure of a stored sweep (:func:`phase_diagrams.jobs.plot_all`).
``compare --store S [--sweep NAME] [--csv FILE]``
    Regime agreement and Spearman correlation per friction preset
    (:func:`phase_diagrams.jobs.compare_store`).
``export --store S --out FILE.{csv,parquet,json} [--sweep NAME] [--simulated]``
    (:func:`phase_diagrams.jobs.export`).
``fit --store S [--sweep NAME] [--target final|trajectory] [--cell R,C ...] [--workers N]``
    Fit spring-block parameters to every cell, write them to the store and draw them
    (:func:`phase_diagrams.jobs.fit_job`); prints a per-cell table with flags and a flag count.
``fit --curve FILE [--epochs 0,10,20] [--target final|trajectory] [--json] [--out DIR]``
    Fit one curve (1-D) or trajectory (probes x layers) from a CSV / JSON / NPY file
    (:func:`phase_diagrams.fitting.fit_curve`): parameters, 95 % intervals, identified or not,
    combinations, flags, R²; ``--json`` prints a record, ``--out`` writes measured vs fitted.
``calibrate --store S [--sweep NAME] [--transfer-from OTHER] [--out DIR] [--no-scores]``
    One chain–network map for the whole diagram (:func:`phase_diagrams.jobs.calibrate_job`):
    prints the knobs with intervals and the held-out scores next to the seed ceiling, stores the
    calibrated chain as the simulated preset ``calibrated``, writes measured | calibrated and the
    map's curves with bands.
``spec PRESET [--out FILE]``
    Print a preset as TOML, to copy and edit (:func:`phase_diagrams.spec.spec_to_toml`).
``simulate [--preset P|all] [--out DIR] ...``
    The stand-alone simulated diagrams (:func:`phase_diagrams.jobs.simulate_job`).
``bottleneck [--study teacher|load] [--out DIR] [--ltilde 1,2,4,8,16] [--schemes ...] [--epochs N] ...``
    Leaky-ResNet bottleneck studies and their figures (:func:`phase_diagrams.bottleneck.run_bottleneck`):
    singular values across depth, COI / kinetic energy / k̂ along the depth, load curves.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sqlite3
import sys
import time
from pathlib import Path

from springblock.errors import InputError, OneLineParser

__all__ = ["main"]

#: Printed under the traceback of an exception that is not a user error.
BUG_HINT = ("unexpected {name} (a bug in phase_diagrams); please report it with the command line "
            "and the traceback above")


def _say(msg, code: int) -> int:
    print("error: " + " ".join(str(msg).split()), file=sys.stderr)
    return code


def _int_type(lo: int, what: str = "an integer"):
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what} >= {lo} (digits only, no 1e6)") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {lo}")
        if v > 2**63 - 1:
            raise argparse.ArgumentTypeError(f"{text!r}: too large (below 2**63)")
        return v
    parse.__name__ = "int"
    return parse


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return v


def _cell(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v, 10) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROW,COL (two indices >= 0, e.g. 0,1)") from None
    if r < 0 or c < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: indices must be >= 0")
    return r, c


_positive = _int_type(1, "a whole number")
_count = _int_type(0, "a whole number")


def _out_dir(path, flag: str = "--out") -> None:
    """``path`` can be (or already is) a writable directory: checked before any work starts."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {str(path)!r}: is a file, not a directory (give a directory)")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{flag} {str(path)!r}: {str(probe)!r} is a file, so the directory cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {str(path)!r}: directory {str(probe)!r} is not writable (read-only?)")


def _out_file(path, flag: str = "--out") -> None:
    """``path`` can be written: not a directory, in an existing writable directory."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {str(path)!r}: is a directory, not a file name")
    parent = p.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{flag} {str(path)!r}: not writable (read-only file or directory?)")


def _store_for_write(path) -> None:
    """The store of ``run`` / ``sweep`` (created if missing) can be created: checked before the spec runs."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"--store {str(path)!r}: is a directory, not a store file")
    if not p.exists():
        _out_dir(p.parent, "--store")


def _chains_fit(n: int, flag: str = "--chains") -> None:
    from springblock.errors import check_memory

    # a lower bound: every chain holds at least one float64 position and one seed word
    check_memory(f"{flag} {n}", 16.0 * n, hint=f"use fewer {flag}")


def _parser() -> argparse.ArgumentParser:
    from phase_diagrams.friction import FRICTION_PRESETS
    from phase_diagrams.runner import BACKENDS

    ap = OneLineParser(prog="python -m phase_diagrams", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("-v", "--verbose", action="count", default=0)
    sub = ap.add_subparsers(dest="command", required=True)

    def sweep_opts(p):
        p.add_argument("--store", default="out/runs.sqlite", help="SQLite store (default out/runs.sqlite)")
        p.add_argument("--backend", default="joblib", choices=BACKENDS, help="default joblib")
        p.add_argument("--workers", type=_positive, default=None, help="worker processes (default: all cores)")
        p.add_argument("--scheduler", default=None, help="dask scheduler address (backend dask)")
        p.add_argument("--data", default=None, help="MNIST cache dir (default $SPRINGBLOCK_DATA or ./data)")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--no-retry-failed", action="store_true", help="leave failed tasks failed")
        p.add_argument("--no-simulate", action="store_true", help="skip the simulated counterpart")

    r = sub.add_parser("run", help="the main job: sweep + simulation + figures + comparison")
    r.add_argument("spec", nargs="?", default="label-noise-small",
                   help="TOML file or preset (default label-noise-small)")
    r.add_argument("--out", default="figures", help="figure directory (default figures/)")
    r.add_argument("--no-calibrate", action="store_true", help="skip the calibrated chain (presets only)")
    sweep_opts(r)

    s = sub.add_parser("sweep", help="run or resume a sweep")
    s.add_argument("spec", help="TOML file or preset name")
    sweep_opts(s)

    st = sub.add_parser("status", help="progress of every sweep in a store")
    st.add_argument("--store", default="out/runs.sqlite")

    p = sub.add_parser("plot", help="every figure of a stored sweep")
    p.add_argument("--store", default="out/runs.sqlite")
    p.add_argument("--sweep", default=None)
    p.add_argument("--out", default="figures")
    p.add_argument("--cell", type=_cell, default=None, help="ROW,COL of the trajectory figure (indices)")

    c = sub.add_parser("compare", help="measured vs simulated per friction preset")
    c.add_argument("--store", default="out/runs.sqlite")
    c.add_argument("--sweep", default=None)
    c.add_argument("--csv", default=None, help="write the per-cell table here")

    e = sub.add_parser("export", help="runs (or simulated cells) to CSV / parquet / JSON")
    e.add_argument("--store", default="out/runs.sqlite")
    e.add_argument("--sweep", default=None, help="default: every sweep")
    e.add_argument("--out", required=True, help="FILE.csv, FILE.parquet or FILE.json")
    e.add_argument("--simulated", action="store_true")

    f = sub.add_parser("fit", help="fit spring-block parameters to every cell of a stored sweep, or to a curve file")
    f.add_argument("--store", default="out/runs.sqlite")
    f.add_argument("--curve", default=None, metavar="FILE", help="fit this curve / trajectory (.csv, .json, .npy)")
    f.add_argument("--epochs", default=None, help="--curve: probe epochs, comma-separated")
    f.add_argument("--json", action="store_true", help="--curve: print a JSON record")
    f.add_argument("--sweep", default=None)
    f.add_argument("--out", default=None,
                   help="figure directory (default figures/; with --curve: no figure unless given)")
    f.add_argument("--target", default=None, choices=("final", "trajectory"),
                   help="fit the final curve (default for --store; --curve: trajectory when epochs are known) "
                        "or the probe trajectory (adds lam and tau)")
    f.add_argument("--cell", type=_cell, action="append", default=None, metavar="ROW,COL", help="only these cells")
    f.add_argument("--uncertainty", default="mc", choices=("mc", "jacobian", "profile", "bootstrap", "none"),
                   help="default mc: residual scatter + the chains' Monte-Carlo error")
    f.add_argument("--chains", type=_positive, default=256, help="chains of the reported fit (default 256)")
    f.add_argument("--workers", type=_positive, default=None, help="cells fitted in parallel (default: all cores)")
    f.add_argument("--no-progress", action="store_true")

    ca = sub.add_parser("calibrate", help="one chain-network map for the whole diagram, judged on held-out data")
    ca.add_argument("--store", default="out/runs.sqlite")
    ca.add_argument("--sweep", default=None)
    ca.add_argument("--transfer-from", default=None, metavar="SWEEP",
                    help="keep this sweep's friction map, fit only the noise map")
    ca.add_argument("--out", default="figures", help="figure directory (default figures/)")
    ca.add_argument("--no-scores", action="store_true", help="skip the held-out refits (in-sample only)")

    sp = sub.add_parser("spec", help="print a preset as TOML")
    sp.add_argument("preset")
    sp.add_argument("--out", default=None)

    sim = sub.add_parser("simulate", help="stand-alone simulated friction x noise diagrams")
    sim.add_argument("--preset", default="all", help=f"one of {', '.join(FRICTION_PRESETS)}, or 'all' (default)")
    sim.add_argument("--out", default="figures", help="output directory (default figures/)")
    sim.add_argument("--chains", type=_positive, default=256, help="chains per cell (default 256)")
    sim.add_argument("--steps", type=_positive, default=10_000, help="time steps (default 10000)")
    sim.add_argument("--seed", type=_count, default=0)
    sim.add_argument("--mu-max", type=_finite, default=0.1)
    sim.add_argument("--ratio", type=_finite, default=2.0)

    b = sub.add_parser("bottleneck", help="leaky-ResNet bottleneck studies (teacher k* = 3, or load curves)")
    b.add_argument("--study", default="teacher", choices=("teacher", "load"))
    b.add_argument("--out", default="figures", help="output directory (default figures/)")
    b.add_argument("--ltilde", default="1,2,4,8,16", help="effective depths, comma-separated")
    b.add_argument("--schemes", default="equidistant,irregular,adaptive", help="step schemes, comma-separated")
    b.add_argument("--dataset", default=None, help="load study: mnist (default) or fashion-mnist")
    b.add_argument("--epochs", type=_positive, default=None)
    b.add_argument("--lr", type=_finite, default=None)
    b.add_argument("--weight-decay", type=_finite, default=None, help="lambda")
    b.add_argument("--n-train", type=_positive, default=None)
    b.add_argument("--depth", type=_positive, default=None, help="residual steps L (default 20)")
    b.add_argument("--adapt-every", type=_positive, default=None)
    b.add_argument("--seed", type=_count, default=1)
    b.add_argument("--data", default=None, help="MNIST cache dir (default $SPRINGBLOCK_DATA or ./data)")
    return ap


def _sweep_kw(args) -> dict:
    return dict(backend=args.backend, workers=args.workers, scheduler=args.scheduler, data_dir=args.data,
                progress=not args.no_progress, retry_failed=not args.no_retry_failed)


def _print_summary(summary) -> None:
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(summary.to_string(index=False))


def _print_fit_table(fits) -> None:
    """Per-cell fitted values (``*`` = not identified), R², flags; then a count of each flag."""
    names = [n for n in ("mu_forward", "mu_backward", "eps", "lam", "tau") if n in fits.columns]
    rows = []
    for _, r in fits.iterrows():
        row = dict(row_value=r["row_value"], col_value=r["col_value"])
        for n in names:
            star = "" if bool(r.get(f"{n}_identified", True)) else "*"
            row[n] = f"{r[n]:.3g}{star}"
        for c in ("asymmetry", "mobility"):
            if c in fits.columns:
                star = "" if bool(r.get(f"{c}_identified", True)) else "*"
                row[c] = f"{r[c]:.3g}{star}"
        row.update(r2=f"{r['r2']:.3f}", flags=r.get("flags", "") or "-")
        rows.append(row)
    import pandas as pd

    _print_summary(pd.DataFrame(rows))
    print("(* = not identified: 95 % interval reaches a bound or spans more than a factor 10)")
    counts = {k: int(fits[c].sum()) for k, c in (("not converged", "flag_not_converged"),
                                                  ("at bound", "flag_at_bound"), ("r2 < 0.5", "flag_low_r2"),
                                                  ("b = 0", "flag_no_map")) if c in fits.columns}
    flagged = int((fits["n_flags"] > 0).sum()) if "n_flags" in fits.columns else 0
    print(f"flags: {flagged} of {len(fits)} cells flagged; " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _fit_curve_file(args) -> int:
    """``fit --curve FILE``: fit, print (or --json), optionally draw."""
    from pathlib import Path

    import numpy as np

    from phase_diagrams.fitting import FitOptions, fit_curve, load_curve_file
    from springblock.errors import strict_json

    try:
        epochs = [float(v) for v in args.epochs.split(",")] if args.epochs else None
    except ValueError:
        raise InputError(f"--epochs {args.epochs!r}: expected comma-separated numbers") from None
    if args.out:
        _out_dir(args.out)
    if Path(args.curve).is_dir():
        raise InputError(f"--curve {args.curve!r}: is a directory, not a curve file")
    _chains_fit(args.chains)
    data, ep = load_curve_file(args.curve, epochs)
    target = args.target or ("trajectory" if data.ndim == 2 and ep is not None else "final")
    if target == "trajectory" and (data.ndim != 2 or ep is None):
        raise InputError(f"--curve {args.curve!r}: a trajectory fit needs a 2-D (probes x layers) array and its "
                         "epochs (--epochs or a probe_epochs key/column)")
    if target == "final" and data.ndim == 2:
        data = data[-1]  # the last probe is the final curve
    opts = FitOptions(uncertainty=args.uncertainty, n_chains=args.chains)
    res = fit_curve(data, probe_epochs=ep if target == "trajectory" else None, opts=opts)
    rec = dict(file=str(args.curve), **res.to_record())
    if args.json:
        print(strict_json(rec))  # RFC 8259: NaN / inf as null
    else:
        print(f"{args.curve}: {target} fit of {data.shape[-1] - 1} layers ({res.uncertainty} intervals, "
              f"{res.wall_s:.1f} s)")
        for n, v in res.params.items():
            lo, hi = res.ci[n]
            print(f"  {n:>12} = {v:<9.4g} 95 % [{lo:.4g}, {hi:.4g}]  "
                  f"{'identified' if res.identified[n] else 'NOT identified'}")
        for c in res.combinations:
            print(f"  {c['name']:>12} = {c['value']:<9.4g} 95 % [{c['lo']:.4g}, {c['hi']:.4g}]  "
                  f"{'identified' if c['identified'] else 'NOT identified'}")
        print(f"  R² = {res.r2:.4f}, rms = {res.rms:.3g}, affine log D = {res.affine[0]:.3g} + {res.affine[1]:.3g} "
              f"(y − x), converged = {res.converged}")
        print(f"  flags: {'; '.join(res.flags) if res.flags else 'none'}")
    if args.out:
        from phase_diagrams.plots import plot_curve_fit, save_figure

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = save_figure(plot_curve_fit(res, title=Path(args.curve).name), out / f"{Path(args.curve).stem}_fit")
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in written))
    return 0 if np.isfinite(res.rss) else 1


def _check(args) -> dict:
    """Every argument checked before any work (and before a store file is created): the loaded
    spec, the opened store, output locations. Returns what the command needs."""
    from phase_diagrams.spec import load_spec
    from phase_diagrams.store import Store

    cmd, got = args.command, {}
    if cmd in ("run", "sweep"):
        got["spec"] = load_spec(args.spec)
        if cmd == "run":
            _out_dir(args.out)
        _store_for_write(args.store)
    if cmd in ("plot", "fit", "calibrate", "simulate", "bottleneck") and not (cmd == "fit" and args.curve):
        _out_dir(args.out)
    if cmd == "export":
        if Path(args.out).suffix.lower() not in (".csv", ".parquet", ".json", ".jsonl"):
            raise InputError(f"--out {args.out!r}: unknown export format; end the name in .csv, .parquet, .json "
                             "or .jsonl")
        _out_file(args.out)
    if cmd == "compare" and args.csv:
        _out_file(args.csv, "--csv")
    if cmd == "spec" and args.out:
        _out_file(args.out)
    if cmd in ("fit", "simulate"):
        _chains_fit(args.chains)
    if cmd in ("status", "plot", "compare", "export", "fit", "calibrate") and not (cmd == "fit" and args.curve):
        got["store"] = Store.open(args.store)  # read-only commands: a missing or corrupt store is an error
    elif cmd in ("run", "sweep"):
        got["store"] = Store(args.store)
    return got


def main(argv=None) -> int:
    """Run one command; returns the exit code: 0, 2 (a user error: bad argument, spec, store or
    path), 1 (a runtime failure: I/O, failed tasks), 130 (interrupted). A user error prints one line
    ``error: ...``; ``-v`` or ``SPRINGBLOCK_TRACEBACK=1`` adds the traceback."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed in one line (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command == "fit" and args.curve is None and args.out is None:
        args.out = "figures"
    tb = args.verbose > 0 or os.environ.get("SPRINGBLOCK_TRACEBACK", "") not in ("", "0")
    try:
        return _main(args)
    except KeyboardInterrupt as err:  # SIGINT / SIGTERM: a sweep has reaped its workers and released its claims
        rep = getattr(err, "report", None)
        cmd = shlex.join(["python", "-m", "phase_diagrams", *(sys.argv[1:] if argv is None else argv)])
        print(f"interrupted: {rep.stored} of {rep.total} tasks stored in {rep.store}; resume with: {cmd}"
              if rep is not None else f"interrupted; run again with: {cmd}", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)
    except Exception as err:  # noqa: BLE001 -- sorted into user errors and bugs right here
        code = _exit_code(err)
        if tb or code is None:
            import traceback

            traceback.print_exc()
        if code is None:
            return _say(BUG_HINT.format(name=type(err).__name__), 1)
        return _say(_message(err, args), code)


def _exit_code(err) -> int | None:
    """2 for a user error, 1 for a runtime failure, None for a bug (shown with its traceback)."""
    if isinstance(err, (InputError, KeyError, FileNotFoundError, ValueError, TypeError)):
        return 2
    if isinstance(err, (OSError, sqlite3.Error, MemoryError, RuntimeError)):
        return 1
    return None


def _message(err, args) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    if isinstance(err, sqlite3.Error):
        return f"store {getattr(args, 'store', '?')!r}: {err} (sqlite3)"
    if isinstance(err, MemoryError):
        return f"out of memory ({err or 'no detail'}); use smaller sizes or set SPRINGBLOCK_MEMORY_BUDGET"
    return str(err) or type(err).__name__


def _main(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the command line draws files only; the library never picks a backend
    level = logging.WARNING - 10 * min(args.verbose + (args.command in ("run", "sweep", "simulate", "fit",
                                                                         "bottleneck", "calibrate")), 2)
    logging.basicConfig(level=level, format="%(message)s")
    from phase_diagrams import jobs

    t0 = time.perf_counter()
    got = _check(args)
    store = got.get("store")
    if args.command == "run":
        res = jobs.run_main(store, got["spec"], args.out, simulate=not args.no_simulate,
                            calibrate=not args.no_calibrate, **_sweep_kw(args))
        print(res["report"].line())
        if res["summary"] is not None:
            _print_summary(res["summary"])
        if res["scores"] is not None:
            print("\ncalibrated chain, judged on held-out data, next to the seed ceiling:")
            _print_summary(res["scores"])
        print(f"wrote {len(res['figures'])} figure files to {args.out}/ in {time.perf_counter() - t0:.0f} s")
    elif args.command == "sweep":
        report = jobs.sweep_and_simulate(store, got["spec"], simulate=not args.no_simulate, **_sweep_kw(args))
        print(report.line())
        if report.failed:
            return _say(f"{report.failed} task(s) of sweep {got['spec'].name!r} failed (their errors are stored: "
                        f"python -m phase_diagrams export --store {args.store} --out runs.csv); rerun the same "
                        "command to retry them", 1)
    elif args.command == "status":
        table = jobs.status_table(store)
        print(table.to_string(index=False) if not table.empty else f"{args.store}: no sweeps")
    elif args.command == "plot":
        paths = jobs.plot_all(store, args.sweep, args.out, cell=args.cell)
        print("\n".join(str(p) for p in paths))
    elif args.command == "compare":
        per_cell, summary = jobs.compare_store(store, args.sweep)
        _print_summary(summary)
        if args.csv:
            per_cell.to_csv(args.csv, index=False)
    elif args.command == "export":
        print(jobs.export(store, args.out, sweep=args.sweep, simulated=args.simulated))
    elif args.command == "fit" and args.curve is not None:
        return _fit_curve_file(args)
    elif args.command == "fit":
        fits = jobs.fit_job(store, args.sweep, args.out, target=args.target or "final", cells=args.cell,
                            workers=args.workers or os.cpu_count() or 1, progress=not args.no_progress,
                            uncertainty=args.uncertainty, n_chains=args.chains)
        _print_fit_table(fits)
        print("\ntrends over the grid (medians by alpha ascending / by noise, least noisy first):")
        _print_summary(jobs.fit_trends(fits))
        print(f"fitted {len(fits)} cells in {time.perf_counter() - t0:.0f} s; figures in {args.out}/")
    elif args.command == "calibrate":
        from phase_diagrams.calibration import CalibrationOptions

        res = jobs.calibrate_job(store, args.sweep, args.out, transfer_from=args.transfer_from,
                                 scores=() if args.no_scores else ("seed", "column", "row"),
                                 opts=CalibrationOptions())
        cal = res["calibration"]
        print(f"calibrated map ({len(cal.fitted_knobs)} knobs fitted; 95 % intervals; "
              "'identified' = interval inside the search box):")
        _print_summary(cal.params_table())
        print("\nagreement with the measured diagram, next to the seed ceiling (each seed vs the others' mean):")
        _print_summary(res["scores"])
        print(f"calibrated in {cal.wall_s:.0f} s; total {time.perf_counter() - t0:.0f} s; figures in {args.out}/")
    elif args.command == "spec":
        from phase_diagrams.spec import preset_spec, spec_to_toml

        text = spec_to_toml(preset_spec(args.preset))
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text)
        else:
            print(text, end="")
    elif args.command == "simulate":
        from springblock import ChainParams

        presets = None if args.preset == "all" else (args.preset,)
        from springblock.errors import run_interruptible

        # in a worker thread (the kernels release the GIL), so Ctrl-C stops a long simulation at once
        table = run_interruptible(jobs.simulate_job, args.out, presets, base=ChainParams(n_steps=args.steps),
                                  n_chains=args.chains, seed=args.seed, mu_max=args.mu_max, ratio=args.ratio)
        for preset, df in table.groupby("preset", sort=False):
            counts = df["regime"].value_counts().to_dict()
            print(f"{preset:>15}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print(f"wrote {args.out}/simulated_*.png|pdf and simulated_diagrams.csv in "
              f"{time.perf_counter() - t0:.1f} s")
    elif args.command == "bottleneck":
        from phase_diagrams.bottleneck import SUMMARY_COLUMNS, run_bottleneck

        over = {k: v for k, v in (("dataset", args.dataset), ("epochs", args.epochs), ("lr", args.lr),
                                  ("n_train", args.n_train), ("adapt_every", args.adapt_every),
                                  ("depth", args.depth), ("weight_decay", args.weight_decay)) if v is not None}
        try:
            ltildes = [float(v) for v in args.ltilde.split(",")]
        except ValueError:
            raise InputError(f"--ltilde {args.ltilde!r}: expected comma-separated numbers") from None
        df = run_bottleneck(args.study, args.out, ltildes=ltildes,
                            schemes=[v.strip() for v in args.schemes.split(",")], seed=args.seed,
                            cache_dir=args.data, **over)
        _print_summary(df[[c for c in SUMMARY_COLUMNS if c in df.columns]])
        print(f"wrote the {args.study} study to {args.out}/ in {time.perf_counter() - t0:.0f} s")
    return 0
