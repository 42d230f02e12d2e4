"""The training protocol's configuration: :class:`TrainConfig` and the grids built from it.

NumPy and the standard library only — no torch — so a sweep specification
(:mod:`phase_diagrams.spec`) can build and hash configs without importing torch. The protocol
these fields define is specified in :mod:`nets.training`.

Reading configs from text: :func:`coerce_field` checks one plain value (TOML, JSON) against the
field's type, :func:`parse_field` reads one command-line string, :meth:`TrainConfig.from_dict`
builds a config from a mapping of plain values.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass

import numpy as np

from nets.data import DATASET_ALIASES, DATASETS, SUBSETS
from nets.mesh import STEP_SCHEMES, step_sizes
from springblock.errors import InputError

#: Every int field must fit a signed 64-bit integer (the SQLite INTEGER of the store, torch's seeds).
INT_MAX = 2**63 - 1

__all__ = [
    "TrainConfig",
    "STATUSES",
    "ENSEMBLE_VARYING",
    "EXTENSION_FIELDS",
    "coerce_field",
    "parse_field",
    "config_grid",
    "ensemble_key",
]

#: How a run ends (:attr:`nets.History.status`).
STATUSES = ("completed", "early_stopped", "diverged")
#: Config fields that may differ between members of one batched ensemble.
ENSEMBLE_VARYING = ("alpha", "dropout", "label_noise", "lr", "sgld_temperature", "seed",
                    "early_stop_loss", "ltilde", "weight_decay")
#: Fields added with the leaky ResNet: written by :meth:`TrainConfig.to_dict` only when they
#: differ from their defaults, so the config hashes (store keys) of earlier runs stay valid.
EXTENSION_FIELDS = ("ltilde", "step_scheme", "weight_decay", "adapt_every", "probe_bottleneck",
                    "bottleneck_gamma0")
#: Allowed values of the choice fields.
CHOICES = {
    "model": ("mlp", "cnn", "leaky_resnet"),
    "optimizer": ("adam", "sgd"),
    "loss": ("ce", "mse"),
    "probe_on": ("train", "test"),
    "probe_features": ("post", "pre"),
    "probe_mode": ("eval", "batch"),
    "dtype": ("float32", "float64"),
    "step_scheme": STEP_SCHEMES,
    "subset": SUBSETS,
}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


_TYPE_CHECKS = {int: _is_int, float: _is_num, bool: lambda v: isinstance(v, bool),
                str: lambda v: isinstance(v, str)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; defaults are the original protocol.

    Validated on construction: every field must have its annotated type exactly (an ``int`` for
    an int field, never a bool, a numeric string or a float; an int or float for a float field;
    ``True``/``False`` for a bool field; ``None`` only where the annotation allows it) and a
    possible value; otherwise ``InputError("TrainConfig.<field>=<value>: <why>")`` (a
    ``ValueError``, :mod:`springblock.errors`); ints must be < 2**63 and floats finite. To read
    values from TOML, JSON or a command line use :func:`coerce_field`, :func:`parse_field` or
    :meth:`from_dict`.
    """

    # --- data
    dataset: str = "mnist"          # mnist | fashion-mnist | cifar10 | gaussian | npz | teacher
    data_root: str | None = None    # source dir (fashion-mnist, cifar10) or the .npz file
    image_size: int | None = 10     # resize to image_size x image_size (antialiased); None: native
    n_train: int | None = 2560      # fixed training subset size (None: all)
    subset_seed: int = 0            # seed of the "numpy" subset, the Gaussian mixture and the teacher
    subset: str = "original"        # original (random_split, generator seed 1) | numpy (nets.data.training_subset)
    # --- model
    model: str = "mlp"              # mlp | cnn | leaky_resnet
    depth: int = 7                  # hidden blocks L_h (leaky_resnet: residual steps L)
    width: int = 100                # MLP hidden width / CNN channels (use 20 for the CNN)
    alpha: float = 0.0              # LeakyReLU negative slope: 0 = ReLU, 1 = linear
    batch_norm: bool = True         # input + hidden BatchNorm
    dropout: float = 0.0            # dropout after every nonlinearity
    # --- noise axes
    label_noise: float = 0.0        # p: floor(p B) labels re-drawn + input noise p*std(batch)
    sgld_temperature: float = 0.0   # T: parameter noise sqrt(2 lr T) N(0,1) after each step
    # --- optimisation
    optimizer: str = "adam"         # adam | sgd
    lr: float = 1e-3
    loss: str = "ce"                # ce (cross-entropy) | mse (on one-hot targets)
    batch_size: int | None = None   # None: full batch (= n_train)
    epochs: int = 100
    early_stop_loss: float = 1e-4   # stop when the epoch's mean training loss is below this
    seed: int = 1
    # --- probes
    probe_every: int = 1            # probe every k epochs (+ epoch 0 and the end); 0: end only
    probe_on: str = "train"         # train (clean training subset) | test
    probe_features: str = "post"    # post | pre (activation)
    probe_mode: str = "eval"        # eval (running BN stats) | batch (batch statistics)
    probe_accuracy: bool = False    # also test accuracy at every probe
    # --- execution
    device: str = "cpu"             # cpu | cuda | cuda:N | auto (cuda if available)
    dtype: str = "float32"          # float32 | float64
    # --- leaky ResNet (model="leaky_resnet"; SPEC §3.1, §5.2); ignored by the MLP and CNN
    ltilde: float = 1.0             # effective depth L~: h <- (1 - rho L~) h + rho W sigma(h)
    step_scheme: str = "equidistant"  # equidistant | irregular | adaptive (rho re-set in training)
    weight_decay: float = 0.0       # lambda: loss += lambda/(2 L~) sum_l rho_l |W_l|_F^2
    adapt_every: int = 10           # adaptive scheme: epochs between mesh re-sets
    probe_bottleneck: bool = False  # bottleneck measures at every probe (always at the end)
    bottleneck_gamma0: float = 1e-3  # relative ridge gamma0 of COI and kinetic energy

    def __post_init__(self):
        def bad(name, why):
            raise InputError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name, (base, optional) in _FIELD_TYPES.items():
            v = getattr(self, name)
            if not ((optional and v is None) or _TYPE_CHECKS[base](v)):
                bad(name, f"expected {base.__name__}{' or None' if optional else ''}, got {type(v).__name__}")
            if base is int and v is not None and v > INT_MAX:
                bad(name, "must be < 2**63 (a 64-bit integer: store keys, seeds)")
            if base is float and not math.isfinite(v):
                bad(name, "must be finite")
        if self.dataset.lower() not in DATASET_ALIASES and not self.dataset.endswith(".npz"):
            bad("dataset", f"unknown; choose one of {DATASETS} or a .npz path")
        for name, lo in (("depth", 1), ("width", 1), ("epochs", 1), ("probe_every", 0),
                         ("subset_seed", 0), ("seed", 0), ("adapt_every", 1)):
            if getattr(self, name) < lo:
                bad(name, f"must be an integer >= {lo}")
        for name, lo in (("image_size", 1), ("n_train", 2), ("batch_size", 1)):
            v = getattr(self, name)
            if v is not None and v < lo:
                bad(name, f"must be None or an integer >= {lo}")
        if self.batch_norm and self.batch_size == 1:
            bad("batch_size", "batch norm needs at least 2 samples per batch")
        if self.n_train is not None and self.batch_size is not None and self.batch_size > self.n_train:
            bad("batch_size", f"larger than n_train={self.n_train}")
        for name, lo, hi, hi_open in (("alpha", 0, 1, False), ("dropout", 0, 1, True),
                                      ("label_noise", 0, 1, False)):
            v = getattr(self, name)
            if not (lo <= v <= hi) or (hi_open and v == hi):
                bad(name, f"must be in [{lo}, {hi}{')' if hi_open else ']'}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "must be finite and > 0")
        for name in ("sgld_temperature", "early_stop_loss", "ltilde", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                bad(name, "must be finite and >= 0")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {allowed}")
        g0 = self.bottleneck_gamma0
        if not (math.isfinite(g0) and 0 < g0 < 1):
            bad("bottleneck_gamma0", "must be in (0, 1)")
        if self.dataset.lower() == "teacher" and self.loss != "mse":
            bad("loss", "the teacher data set is a regression task: use loss='mse'")
        if self.model == "leaky_resnet":
            if self.alpha != 0:
                bad("alpha", "the leaky ResNet's nonlinearity is ReLU: alpha must be 0")
            if self.dropout != 0:
                bad("dropout", "the leaky ResNet has no dropout: must be 0")
            if self.probe_features != "post":
                bad("probe_features", "the leaky ResNet's features are its residual stream: use 'post'")
            rho_lt = step_sizes(self.step_scheme, self.depth) * self.ltilde
            if rho_lt.max() >= 2.0:
                bad("ltilde", f"unstable with depth={self.depth} and step_scheme={self.step_scheme!r}: "
                              f"max rho_l * ltilde = {rho_lt.max():.3g} >= 2")
        dev = self.device
        if not (dev in ("cpu", "cuda", "auto") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            bad("device", "must be cpu, cuda, cuda:N or auto")

    def to_dict(self) -> dict:
        """All fields as plain Python values (for records and JSON).

        The leaky-ResNet fields (:data:`EXTENSION_FIELDS`) are left out while they hold their
        defaults, so configs of earlier versions keep their hash (:func:`phase_diagrams.spec.task_key`);
        ``TrainConfig(**c.to_dict()) == c`` always holds.
        """
        d = dataclasses.asdict(self)
        for name in EXTENSION_FIELDS:
            if d[name] == _DEFAULTS[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: typing.Mapping, *, where: str | None = None) -> TrainConfig:
        """A config from plain values (a record, a TOML table), each read by :func:`coerce_field`;
        missing fields take their defaults. ``ValueError`` for an unknown field or a bad value."""
        return cls(**{name: coerce_field(name, v, where=None if where is None else f"{where}.{name}")
                      for name, v in d.items()})

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _field_type(hint) -> tuple[type, bool]:
    args = typing.get_args(hint)
    optional = type(None) in args
    return (next(a for a in args if a is not type(None)) if args else hint), optional


#: ``field name → (base type, None allowed)`` from the annotations.
_FIELD_TYPES = {name: _field_type(h) for name, h in typing.get_type_hints(TrainConfig).items()}


def coerce_field(name: str, value, *, where: str | None = None):
    """The value of ``TrainConfig.<name>`` from a plain value (TOML, JSON), type-checked exactly.

    ``None`` or the string ``"none"`` (any case) is None for an optional field; an ``int`` for a
    float field becomes a float; otherwise ``value`` must already have the field's type: an int
    field takes an int (not a bool, float or numeric string), a float field an int or float (not
    a bool or string), a bool field ``True``/``False``, a str field a str. The range of the value
    is checked by :class:`TrainConfig` itself.

    Raises
    ------
    ValueError
        ``"<where>: expected int, got str '10'"`` (``where`` defaults to ``TrainConfig.<name>``),
        or for an unknown field name.
    """
    where = f"TrainConfig.{name}" if where is None else where
    if name not in _FIELD_TYPES:
        raise InputError(f"{where}: unknown TrainConfig field {name!r}")
    base, optional = _FIELD_TYPES[name]
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    if not _TYPE_CHECKS[base](value):
        raise InputError(f"{where}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if base is float else value


def parse_field(name: str, text: str, *, where: str | None = None):
    """The value of ``TrainConfig.<name>`` from one command-line string (then :func:`coerce_field`).

    ``none``/``null``/empty gives None for an optional field; an int field reads ``int(text)``, a
    float field ``float(text)``, a bool field one of true/false/1/0/yes/no/on/off; a str field
    keeps the (stripped) text. ``ValueError`` naming ``where`` (default ``--<name>``) otherwise.
    """
    where = f"--{name.replace('_', '-')}" if where is None else where
    if name not in _FIELD_TYPES:
        raise InputError(f"{where}: unknown TrainConfig field {name!r}")
    base, optional = _FIELD_TYPES[name]
    t = text.strip()
    if optional and t.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            value = {"1": True, "true": True, "yes": True, "on": True,
                     "0": False, "false": False, "no": False, "off": False}[t.lower()]
        else:
            value = base(t)
    except (KeyError, ValueError):
        raise InputError(f"{where}: cannot read {text!r} as {base.__name__}") from None
    return coerce_field(name, value, where=where)


def config_grid(base: TrainConfig | None = None, **axes) -> list[TrainConfig]:
    """All configs of the Cartesian product of ``axes`` (field name → list of values) over
    ``base`` (default :class:`TrainConfig`), in row-major order of the keyword arguments.

    Example: ``config_grid(alpha=[0, 1], label_noise=[0, 0.6])`` gives 4 configs.
    """
    base = TrainConfig() if base is None else base
    names = list(axes)
    for name in names:
        if name not in _FIELD_TYPES:
            raise InputError(f"config_grid: unknown TrainConfig field {name!r}")
        if not isinstance(axes[name], (list, tuple)) or not axes[name]:
            raise InputError(f"config_grid: {name} needs a non-empty list of values")
    return [base.replace(**dict(zip(names, combo, strict=True)))
            for combo in itertools.product(*(axes[n] for n in names))]


def ensemble_key(cfg: TrainConfig) -> tuple:
    """What configs must share to train in one batched ensemble: every field except
    :data:`ENSEMBLE_VARYING`."""
    return tuple((k, v) for k, v in cfg.to_dict().items() if k not in ENSEMBLE_VARYING)
