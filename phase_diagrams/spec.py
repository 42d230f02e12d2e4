"""Grid specs: what a phase-diagram sweep trains and how the spring-block model stands in for it.

A :class:`GridSpec` names a base training protocol (:class:`nets.TrainConfig`), a row axis
(the nonlinearity: LeakyReLU slope ``alpha``) and a column axis (a noise knob), the seeds, the
largest batched ensemble, and the simulator mapping (:class:`SimSpec`). Specs are written in
TOML and validated with errors that name the offending entry::

    preset = "label-noise"        # optional: start from a named preset, override below
    name = "my-label-noise"
    seeds = [1, 2, 3]
    ensemble_size = 6             # networks trained together as one batched model

    [train]                       # any nets.TrainConfig field; "none" for an optional one
    epochs = 100
    probe_every = 10

    [rows]
    field = "alpha"
    values = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]

    [columns]
    field = "label_noise"         # label_noise | lr | dropout | batch_size | sgld_temperature
    values = [0.0, 0.2, 0.4, 0.6]

    [simulator]
    presets = ["scale-both", "vary-forward", "vary-asymmetry"]
    eps_map = "rank"              # rank | linear | log | explicit (then eps = [...])
    eps_min = 0.01
    eps_max = 0.3

Presets (:data:`SPEC_PRESETS`; ``python -m phase_diagrams spec NAME`` prints one as TOML): the four
original panels, each × alpha in {0, 0.2, ..., 1} on the original protocol (SPEC §3.3; the SPEC
gives the ranges of the noise axes, the eight values per axis are ours):

================== ============================================================= =========
preset             columns                                                       epochs
================== ============================================================= =========
label-noise        label + input noise p in {0, 0.1, ..., 0.7}                   100
learning-rate      Adam lr in {1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.5}     200
dropout            p in {0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3}                      100
batch-size         B in {5, 10, 20, 40, 80, 160, 640, 2560}                      100
label-noise-small  p in {0, 0.2, 0.4, 0.6}, seeds 1-3 (the README's main job)    100
smoke              2 x 2 cells, Gaussian mixture, 256 points, batch 32 (tests)   4
leaky-resnet       rows L~ in {1, 2, 4, 8, 16} (not alpha), label noise          100
                   {0, 0.2, 0.4, 0.6}; leaky ResNet L = 20, w = 100, lambda = 1e-3
leaky-resnet-smoke 2 x 2 cells of tiny leaky ResNets on the Gaussian mixture     3
================== ============================================================= =========

The leaky-ResNet presets simulate the ``mesh`` counterpart (:func:`phase_diagrams.simulated.mesh_grid`):
one chain per cell whose springs follow the network's mesh (``k_ℓ ∝ 1/(L̃ ρ_ℓ)``) with an on-site
potential ``κ_ℓ ∝ L̃ ρ_ℓ`` (``simulator.kappa``, ``simulator.pin_fraction``); rows are L̃, not friction.

Simulator mapping: row ``alpha`` → friction ``(mu->, mu<-)`` by each friction preset of
:func:`phase_diagrams.friction.friction_for`; column value → noise ``eps`` by ``eps_map``:

``rank``
    the columns ordered from least to most noisy (:data:`NOISE_DIRECTION`) get ``eps`` on a
    geometric grid from ``eps_min`` to ``eps_max``;
``linear`` / ``log``
    ``eps`` interpolates between ``eps_min`` and ``eps_max`` linearly in the column value (or
    its logarithm; values must be > 0), least noisy value → ``eps_min``;
``explicit``
    ``eps`` lists one value per column.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomllib

from nets.config import TrainConfig, coerce_field
from phase_diagrams.friction import FRICTION_PRESETS, MESH_PRESET, SIM_PRESETS
from springblock.errors import InputError

__all__ = [
    "AxisSpec",
    "SimSpec",
    "GridSpec",
    "SpecError",
    "SPEC_PRESETS",
    "ALPHAS",
    "NOISE_DIRECTION",
    "load_spec",
    "spec_from_dict",
    "preset_spec",
    "spec_to_toml",
    "task_key",
]


class SpecError(InputError):
    """A grid spec is invalid; the message names the offending entry."""


#: +1 if a larger value of the field means more training noise, -1 if less (batch size).
NOISE_DIRECTION = {
    "label_noise": 1,
    "lr": 1,
    "dropout": 1,
    "sgld_temperature": 1,
    "batch_size": -1,
}
EPS_MAPS = ("rank", "linear", "log", "explicit")
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
#: The rows of the original panels: LeakyReLU slopes (0 = ReLU).
ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_MAX_INT = 2**63 - 1  # SQLite INTEGER
#: Most tasks (rows x columns x seeds) one sweep may register (its hashing holds the store's write lock).
MAX_TASKS = 100_000
_NAME_RE = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*")


def _fail(where: str, value, why: str):
    raise SpecError(f"{where}={value!r}: {why}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_int(where: str, v, lo: int, hi: int = _MAX_INT):
    if not _is_int(v) or not lo <= v <= hi:
        _fail(where, v, f"must be an integer >= {lo}" + ("" if hi == _MAX_INT else f" and <= {hi}") + " (below 2**63)")


def _check_real(where: str, v, lo: float = -math.inf, hi: float = math.inf):
    if not _is_real(v) or not math.isfinite(v) or not lo <= v <= hi:
        _fail(where, v, f"must be a finite number in [{lo:g}, {hi:g}]")


@dataclass(frozen=True)
class AxisSpec:
    """One axis of the diagram: a :class:`nets.TrainConfig` field and its distinct values."""

    field: str
    values: tuple

    def __post_init__(self):
        if not isinstance(self.field, str) or self.field not in _TRAIN_FIELDS or self.field == "seed":
            _fail("field", self.field, "not a TrainConfig field that can be an axis")
        if isinstance(self.values, (str, bytes)) or not hasattr(self.values, "__len__"):
            _fail("values", self.values, f"expected a list of {self.field} values")
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            _fail("values", [], f"empty {self.field} axis (give at least one value)")
        if len(set(self.values)) != len(self.values):
            _fail("values", list(self.values), f"repeated {self.field} value")


@dataclass(frozen=True)
class SimSpec:
    """How the spring-block chain stands in for the grid (SPEC §2.4, §4).

    The chain has one block per hidden layer (``n_blocks`` = the model's ``depth``) and
    otherwise the original first-order parameters (``k = 1``, ``eta = 0.01``, ``y = 1``).
    Every field is checked on construction (:class:`SpecError` naming the field).
    """

    presets: tuple = FRICTION_PRESETS  # friction parametrisations to simulate (may be empty)
    mu_max: float = 0.1                # largest friction threshold
    ratio: float = 2.0                 # asymmetry mu<- / mu-> where a preset uses one
    eps_map: str = "rank"              # rank | linear | log | explicit
    eps_min: float = 0.01              # eps of the least noisy column
    eps_max: float = 0.3               # eps of the noisiest column
    eps: tuple = ()                    # explicit eps per column (eps_map = "explicit")
    n_chains: int = 256                # chains per cell
    n_steps: int = 10_000              # time steps
    record_every: int = 100            # trajectory record interval (steps)
    seed: int = 0
    kappa: float = 1.0                 # "mesh" preset: pinning strength kappa-bar
    pin_fraction: float = 0.5          # "mesh" preset: pin position a = pin_fraction * y

    def __post_init__(self):
        w = "simulator."
        if isinstance(self.presets, str) or not hasattr(self.presets, "__iter__"):
            _fail(w + "presets", self.presets, "expected a list of preset names")
        object.__setattr__(self, "presets", tuple(self.presets))
        for n, p in enumerate(self.presets):
            if p not in SIM_PRESETS:
                _fail(f"{w}presets[{n}]", p, f"unknown friction preset; choose from {', '.join(SIM_PRESETS)}")
        if self.eps_map not in EPS_MAPS:
            _fail(w + "eps_map", self.eps_map, f"unknown; choose one of {', '.join(EPS_MAPS)}")
        _check_real(w + "mu_max", self.mu_max, 0.0)
        _check_real(w + "ratio", self.ratio, 1.0)
        _check_real(w + "eps_min", self.eps_min, 0.0)
        _check_real(w + "eps_max", self.eps_max, self.eps_min)
        if isinstance(self.eps, str) or not hasattr(self.eps, "__iter__"):
            _fail(w + "eps", self.eps, "expected a list of numbers")
        object.__setattr__(self, "eps", tuple(self.eps))
        for n, e in enumerate(self.eps):
            _check_real(f"{w}eps[{n}]", e, 0.0)
        _check_int(w + "n_chains", self.n_chains, 1)
        _check_int(w + "n_steps", self.n_steps, 1)
        _check_int(w + "record_every", self.record_every, 1)
        _check_int(w + "seed", self.seed, 0)
        _check_real(w + "kappa", self.kappa, 0.0)
        _check_real(w + "pin_fraction", self.pin_fraction)


@dataclass(frozen=True)
class GridSpec:
    """A validated sweep: build with :func:`load_spec`, :func:`preset_spec`,
    :func:`spec_from_dict` (TOML types, unknown keys) or directly — the constructor checks every
    entry and the axes against the training config and the simulator (:class:`SpecError`)."""

    name: str
    train: TrainConfig
    rows: AxisSpec
    columns: AxisSpec
    seeds: tuple = (1,)
    ensemble_size: int = 6
    simulator: SimSpec = field(default_factory=SimSpec)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            _fail("name", self.name, "must be a non-empty string")
        if not _NAME_RE.fullmatch(self.name):
            _fail("name", self.name, "use letters, digits, '_', '-', '.' and '+' only (it names figure "
                  "files: no '/', spaces, or a leading '.')")
        for what, typ in (("train", TrainConfig), ("rows", AxisSpec), ("columns", AxisSpec), ("simulator", SimSpec)):
            if not isinstance(getattr(self, what), typ):
                _fail(what, getattr(self, what), f"expected a {typ.__name__}")
        if isinstance(self.seeds, (str, bytes)) or not hasattr(self.seeds, "__iter__"):
            _fail("seeds", self.seeds, "expected a list of integers")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            _fail("seeds", [], "empty (give at least one seed)")
        for n, sd in enumerate(self.seeds):
            _check_int(f"seeds[{n}]", sd, 0)
        if len(set(self.seeds)) != len(self.seeds):
            _fail("seeds", list(self.seeds), "repeated seed")
        _check_int("ensemble_size", self.ensemble_size, 1)
        if self.rows.field == self.columns.field:
            _fail("columns.field", self.columns.field, "rows and columns sweep the same field")
        for ax in ("rows", "columns"):
            a = getattr(self, ax)
            for n, v in enumerate(a.values):
                try:
                    self.train.replace(**{a.field: v})
                except (TypeError, ValueError) as err:
                    raise SpecError(f"{ax}.values[{n}]={v!r}: {err}") from None
        _check_simulator(self.simulator, self.rows, self.columns, getattr(self.train, "depth", None))
        n_tasks = len(self.rows.values) * len(self.columns.values) * len(self.seeds)
        if n_tasks > MAX_TASKS:
            _fail("rows x columns x seeds", n_tasks, f"more than {MAX_TASKS} tasks in one sweep; split it into "
                  "several sweeps (names) or use fewer values")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows.values), len(self.columns.values)

    def cells(self):
        """``(i, j, row_value, column_value)`` for every cell, row-major."""
        for i, r in enumerate(self.rows.values):
            for j, c in enumerate(self.columns.values):
                yield i, j, r, c

    def tasks(self) -> list[dict]:
        """One task per (cell, seed): ``{"key", "row", "col", "row_value", "col_value", "seed",
        "config"}`` with ``config`` the full :class:`TrainConfig`. Ordered by seed, then column,
        then row, so that consecutive tasks (one column's rows) batch into one ensemble."""
        out = []
        for s in self.seeds:
            for j, c in enumerate(self.columns.values):
                for i, r in enumerate(self.rows.values):
                    cfg = self.train.replace(**{self.rows.field: r, self.columns.field: c, "seed": s})
                    out.append(dict(key=task_key(cfg), row=i, col=j, row_value=r, col_value=c, seed=s,
                                    config=cfg))
        return out

    def column_eps(self) -> np.ndarray:
        """Noise amplitude ``eps`` standing for each column (module docstring)."""
        return _eps_for(self.columns, self.simulator)

    def noise_values(self) -> np.ndarray:
        """The column values as numbers oriented so that larger = noisier
        (:data:`NOISE_DIRECTION`; a ``None`` batch size is the full batch)."""
        sign = NOISE_DIRECTION.get(self.columns.field, 1)
        return sign * np.array([math.inf if v is None else float(v) for v in self.columns.values])

    def noise_rank(self) -> np.ndarray:
        """Rank of each column from least (0) to most noisy (plots put more noise to the left)."""
        return np.argsort(np.argsort(self.noise_values(), kind="stable"), kind="stable")

    def to_dict(self) -> dict:
        """Plain nested dict (the TOML layout); ``None`` written as ``"none"``."""
        train = {k: ("none" if v is None else v) for k, v in self.train.to_dict().items()}
        sim = dataclasses.asdict(self.simulator)
        sim["presets"] = list(sim["presets"])
        sim["eps"] = list(sim["eps"])
        return dict(
            name=self.name,
            seeds=list(self.seeds),
            ensemble_size=self.ensemble_size,
            train=train,
            rows=dict(field=self.rows.field, values=list(self.rows.values)),
            columns=dict(field=self.columns.field, values=list(self.columns.values)),
            simulator=sim,
        )


def task_key(cfg: TrainConfig) -> str:
    """Hash of a task's full config (sha256 of its sorted JSON, 20 hex digits): the store key.

    Two sweeps that contain the same config share its result.
    """
    blob = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------
def _panel(name, column, values, epochs=100, **train):
    return dict(
        name=name,
        seeds=[1],
        ensemble_size=6,
        train=dict(epochs=epochs, probe_every=10, **train),
        rows=dict(field="alpha", values=list(ALPHAS)),
        columns=dict(field=column, values=list(values)),
        simulator={},
    )


SPEC_PRESETS: dict[str, dict] = {
    "label-noise": _panel("label-noise", "label_noise", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    "learning-rate": _panel("learning-rate", "lr", [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.5],
                            epochs=200),
    "dropout": _panel("dropout", "dropout", [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]),
    "batch-size": dict(_panel("batch-size", "batch_size", [5, 10, 20, 40, 80, 160, 640, 2560]),
                       simulator=dict(eps_map="rank")),
    "label-noise-small": dict(_panel("label-noise-small", "label_noise", [0.0, 0.2, 0.4, 0.6]), seeds=[1, 2, 3]),
    "leaky-resnet": dict(
        name="leaky-resnet",
        seeds=[1],
        ensemble_size=5,
        train=dict(model="leaky_resnet", depth=20, width=100, weight_decay=1e-3, epochs=100, probe_every=10),
        rows=dict(field="ltilde", values=[1.0, 2.0, 4.0, 8.0, 16.0]),
        columns=dict(field="label_noise", values=[0.0, 0.2, 0.4, 0.6]),
        simulator=dict(presets=["mesh"]),
    ),
    "leaky-resnet-smoke": dict(
        name="leaky-resnet-smoke",
        seeds=[1],
        ensemble_size=2,
        train=dict(dataset="gaussian", n_train=128, image_size=4, model="leaky_resnet", depth=4, width=12,
                   weight_decay=1e-3, epochs=3, probe_every=1),
        rows=dict(field="ltilde", values=[1.0, 4.0]),
        columns=dict(field="label_noise", values=[0.0, 0.5]),
        simulator=dict(presets=["mesh"], n_chains=16, n_steps=500, record_every=50),
    ),
    "smoke": dict(
        name="smoke",
        seeds=[1],
        ensemble_size=2,
        train=dict(dataset="gaussian", n_train=256, image_size=4, depth=3, width=16, batch_size=32,
                   epochs=4, probe_every=1),
        rows=dict(field="alpha", values=[0.0, 1.0]),
        columns=dict(field="label_noise", values=[0.0, 0.5]),
        simulator=dict(n_chains=16, n_steps=500, record_every=50),
    ),
}


def preset_spec(name: str, **overrides) -> GridSpec:
    """The named preset (:data:`SPEC_PRESETS`), with top-level ``overrides`` (dicts merge)."""
    if name not in SPEC_PRESETS:
        raise SpecError(f"unknown preset {name!r}; choose one of {', '.join(SPEC_PRESETS)}")
    return spec_from_dict(_merge(copy.deepcopy(SPEC_PRESETS[name]), overrides))


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(base[k], v)
        else:
            base[k] = v
    return base


# ------------------------------------------------------------------------------------------
# parsing and validation
# ------------------------------------------------------------------------------------------
_TOP_KEYS = {"preset", "name", "seeds", "ensemble_size", "train", "rows", "columns", "simulator"}
_AXIS_KEYS = {"field", "values"}
_SIM_TYPES = {
    "presets": list, "mu_max": float, "ratio": float, "eps_map": str, "eps_min": float,
    "eps_max": float, "eps": list, "n_chains": int, "n_steps": int, "record_every": int, "seed": int,
    "kappa": float, "pin_fraction": float,
}


def _type_name(v) -> str:
    return type(v).__name__


def _check_type(where: str, value, expected):
    """Raise SpecError unless ``value`` has TOML type ``expected`` (int accepted for float)."""
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        list: isinstance(value, list),
        dict: isinstance(value, dict),
    }[expected]
    if not ok:
        raise SpecError(f"{where}: expected {expected.__name__}, got {_type_name(value)} {value!r}")


def _unknown(where: str, keys, allowed):
    bad = sorted(set(keys) - set(allowed))
    if bad:
        renamed = {"simulator.pin": "pin_fraction"}.get(f"{where}{bad[0]}")
        hint = f"; renamed to {renamed!r}" if renamed else ""
        raise SpecError(f"unknown key {where}{bad[0]!r}{hint} (allowed: {', '.join(sorted(allowed))})")


def _train_value(where: str, name: str, value):
    """Check one TrainConfig field value from TOML; ``"none"`` means None for optional fields."""
    try:
        return coerce_field(name, value, where=where)
    except ValueError as err:
        raise SpecError(str(err)) from None


def _train_config(where: str, fields: dict) -> TrainConfig:
    try:
        return TrainConfig(**fields)
    except ValueError as err:
        raise SpecError(f"{where}: {err}") from None


def spec_from_dict(d: dict, *, source: str = "spec") -> GridSpec:
    """Validate a nested dict (the TOML layout) into a :class:`GridSpec`.

    Raises
    ------
    SpecError
        Unknown key, wrong type, empty axis, unknown preset, invalid value — naming the entry.
    """
    _check_type(source, d, dict)
    d = copy.deepcopy(d)
    if "preset" in d:
        name = d.pop("preset")
        _check_type("preset", name, str)
        if name not in SPEC_PRESETS:
            raise SpecError(f"preset: unknown preset {name!r}; choose one of {', '.join(SPEC_PRESETS)}")
        d = _merge(copy.deepcopy(SPEC_PRESETS[name]), d)
    _unknown("", d, _TOP_KEYS)
    for key in ("name", "train", "rows", "columns"):
        if key not in d:
            raise SpecError(f"missing key {key!r} (or start from a preset: preset = \"label-noise\")")
    _check_type("name", d["name"], str)
    if not d["name"].strip():
        raise SpecError("name: must not be empty")

    # [train]
    _check_type("train", d["train"], dict)
    _unknown("train.", d["train"], _TRAIN_FIELDS)
    train_fields = {k: _train_value(f"train.{k}", k, v) for k, v in d["train"].items()}
    train = _train_config("train", train_fields)

    # [rows], [columns]
    axes = {}
    for ax in ("rows", "columns"):
        a = d[ax]
        _check_type(ax, a, dict)
        _unknown(f"{ax}.", a, _AXIS_KEYS)
        for key in ("field", "values"):
            if key not in a:
                raise SpecError(f"{ax}: missing key {key!r}")
        _check_type(f"{ax}.field", a["field"], str)
        if a["field"] not in _TRAIN_FIELDS or a["field"] == "seed":
            raise SpecError(f"{ax}.field: {a['field']!r} is not a TrainConfig field that can be an axis")
        _check_type(f"{ax}.values", a["values"], list)
        vals = [_train_value(f"{ax}.values[{n}]", a["field"], v) for n, v in enumerate(a["values"])]
        try:
            axes[ax] = AxisSpec(a["field"], tuple(vals))
        except SpecError as err:
            raise SpecError(f"{ax}.{err}") from None

    seeds = d.get("seeds", [1])
    _check_type("seeds", seeds, list)
    ens = d.get("ensemble_size", 6)
    _check_type("ensemble_size", ens, int)
    sim = d.get("simulator", {})
    _check_type("simulator", sim, dict)
    _unknown("simulator.", sim, _SIM_TYPES)
    kw = {}
    for k, v in sim.items():
        _check_type(f"simulator.{k}", v, _SIM_TYPES[k])
        if k in ("presets", "eps"):
            for n, x in enumerate(v):
                _check_type(f"simulator.{k}[{n}]", x, str if k == "presets" else float)
            v = tuple(float(x) for x in v) if k == "eps" else tuple(v)
        kw[k] = float(v) if _SIM_TYPES[k] is float else v
    return GridSpec(name=d["name"], train=train, rows=axes["rows"], columns=axes["columns"],
                    seeds=tuple(seeds), ensemble_size=ens, simulator=SimSpec(**kw))


def _check_simulator(sim: SimSpec, rows: AxisSpec, columns: AxisSpec, depth: int | None = None) -> None:
    """The simulator's mapping must fit the axes (rows → friction or mesh, columns → eps); the
    chain of the strongest cell must be a valid chain, and its trajectories must fit in memory."""
    if sim.presets:
        from springblock import ChainParams
        from springblock.errors import ResourceError, check_memory

        eps_top = max([sim.eps_max, *sim.eps])
        n_blocks = depth if isinstance(depth, int) and depth >= 1 else 1
        try:  # the largest friction and noise any cell gets (the chain refuses what would overflow)
            ChainParams(n_blocks=n_blocks, mu_forward=sim.mu_max, mu_backward=sim.mu_max * sim.ratio,
                        eps=eps_top, n_steps=1)
        except (TypeError, ValueError) as err:
            raise SpecError(f"simulator: mu_max={sim.mu_max!r}, ratio={sim.ratio!r}, eps up to {eps_top!r} "
                            f"give an invalid chain: {err}") from None
        records = sim.n_steps // sim.record_every + 2
        try:
            check_memory(f"simulator.n_chains={sim.n_chains}, n_steps={sim.n_steps}, record_every="
                         f"{sim.record_every} ({n_blocks} blocks)", 8.0 * sim.n_chains * n_blocks * records,
                         hint="lower simulator.n_chains or n_steps, or raise record_every")
        except ResourceError as err:
            raise SpecError(str(err)) from None
    if MESH_PRESET in sim.presets:
        if rows.field != "ltilde":
            raise SpecError(f"rows.field: the 'mesh' simulator maps the effective depth ltilde to the chain, "
                            f"got {rows.field!r}")
        if any(v is None or v <= 0 for v in rows.values):
            raise SpecError(f"rows.values: the 'mesh' simulator needs ltilde > 0, got {list(rows.values)}")
    if any(p != MESH_PRESET for p in sim.presets):
        if rows.field != "alpha":
            raise SpecError(f"rows.field: the simulator maps alpha to friction, got {rows.field!r} "
                            "(set simulator.presets = [] to sweep another row field, or ['mesh'] for ltilde)")
        if any(not 0 <= v <= 1 for v in rows.values):
            raise SpecError(f"rows.values: the friction presets need alpha in [0, 1], got {list(rows.values)}")
    if sim.presets:
        if columns.field not in NOISE_DIRECTION:
            raise SpecError(f"columns.field: {columns.field!r} is not a noise axis "
                            f"({', '.join(NOISE_DIRECTION)}); set simulator.presets = [] to sweep it")
        if sim.eps_map == "explicit" and len(sim.eps) != len(columns.values):
            raise SpecError(f"simulator.eps: {len(sim.eps)} values for {len(columns.values)} columns")
        if sim.eps_map == "log" and any(v is None or v <= 0 for v in columns.values):
            raise SpecError("simulator.eps_map: 'log' needs column values > 0")
        if sim.eps_map in ("linear", "log") and any(v is None for v in columns.values):
            raise SpecError("simulator.eps_map: column values must be numbers")


def _eps_for(columns: AxisSpec, sim: SimSpec) -> np.ndarray:
    n = len(columns.values)
    if sim.eps_map == "explicit":
        return np.array(sim.eps, dtype=float)
    sign = NOISE_DIRECTION.get(columns.field, 1)
    z = sign * np.array([math.inf if v is None else float(v) for v in columns.values])
    if sim.eps_map == "rank":
        grid = np.geomspace(sim.eps_min, sim.eps_max, n) if sim.eps_min > 0 else \
            np.linspace(sim.eps_min, sim.eps_max, n)
        if n == 1:
            grid = np.array([sim.eps_max])
        out = np.empty(n)
        out[np.argsort(z, kind="stable")] = grid
        return out
    if sim.eps_map == "log":
        z = np.sign(z) * np.log(np.abs(z))
    span = z.max() - z.min()
    t = (z - z.min()) / span if span > 0 else np.ones(n)
    return sim.eps_min + (sim.eps_max - sim.eps_min) * t


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def load_spec(source) -> GridSpec:
    """A :class:`GridSpec` from a TOML file path, a preset name, or a dict.

    Raises
    ------
    SpecError
        Invalid spec (the message names the entry), unreadable TOML, or a missing file.
    """
    if isinstance(source, GridSpec):
        return source
    if not isinstance(source, (str, dict, os.PathLike)):
        raise SpecError(f"spec: expected a GridSpec, a preset name, a TOML path or a dict, got "
                        f"{type(source).__name__} (arguments go store first: e.g. run_sweep(store, spec))")
    if isinstance(source, dict):
        return spec_from_dict(source)
    text = str(source)
    if text in SPEC_PRESETS:
        return preset_spec(text)
    path = Path(text)
    if not path.exists():
        raise SpecError(f"{text!r} is neither a spec file nor a preset ({', '.join(SPEC_PRESETS)})")
    if path.is_dir():
        raise SpecError(f"{text!r} is a directory, not a spec file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                        "a spec is a TOML text file") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read the spec: {err.strerror or err}") from None
    try:
        return spec_from_dict(data, source=str(path))
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def spec_to_toml(spec: GridSpec) -> str:
    """The spec as TOML text that :func:`load_spec` reads back to an equal spec."""
    d = spec.to_dict()
    lines = [f"name = {_toml_value(d['name'])}", f"seeds = {_toml_value(d['seeds'])}",
             f"ensemble_size = {d['ensemble_size']}"]
    for table in ("train", "rows", "columns", "simulator"):
        lines.append("")
        lines.append(f"[{table}]")
        for k, v in d[table].items():
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
