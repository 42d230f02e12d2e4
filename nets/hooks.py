"""Load curves of any PyTorch model: :func:`load_curve` and :class:`LoadCurveRecorder` (SPEC §1).

Bring your own network: an ``nn.Module``, data (a ``DataLoader``, ``(x, y)`` tensors or arrays)
and, during training, your own loop. Tutorial: ``docs/your-own-network.md``.

Which features (``layers``)
    Layer 0 is the model's input as given (flattened per sample); then one feature set per
    selected hooked module output, in the order the forward pass produces them:

    * ``None`` (default): the output of every activation module (:data:`ACTIVATIONS`, e.g.
      ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU``, ``nn.Tanh``); if the model has none (it calls
      ``F.relu``), the output of every top-level block (the model's children, containers such as
      ``nn.Sequential`` opened recursively). A selected output that *is* the model's output (the
      logits) is left out. The choice is logged (``logging.INFO``, logger ``nets.hooks``).
    * module names (``"features.0"``, as in ``model.named_modules()``);
    * module types (``nn.ReLU``, a block class, or a tuple of them);
    * a callable ``(name, module) -> bool``.

    A module called several times in one forward pass (one ``self.act`` reused) gives one layer
    per call, named ``act[0]``, ``act[1]``, .... ``transform`` (e.g. ``torch.relu``) is applied to
    every hooked output, for a model whose blocks end before a functional activation.

How D is computed (``route``)
    ``"stream"``: exact, two passes over the data, memory ``O(p K + B p)`` per layer of ``p``
    features with batches of ``B`` (:class:`nets.probes.StreamingSeparation`): class means in
    pass 1, then the within-class residuals of every batch projected on the between-class space
    (``D = (1/N) ‖R U_r S_r⁻¹‖²_F``, float64). No ``N × p`` matrix is held.
    ``"memory"``: one pass; every layer's ``N × p`` features are kept (on the model's device, in
    their dtype) and given to :func:`nets.probes.separation_stats`. Faster for small layers.
    ``"auto"`` (default): ``"memory"`` when the number of samples is known and all layers
    together need at most :data:`MEMORY_ROUTE_BYTES`, else ``"stream"``.
    The two routes agree to float64 rounding (tested to 1e-10 relative).

Execution
    On the model's device (that of its first parameter or buffer; CPU without any), inputs cast
    to the model's floating dtype, under ``torch.no_grad``, in eval mode by default
    (``mode="eval"``; ``"train"`` for batch statistics; ``None`` leaves the modes alone). Every
    module's training flag is restored and every hook removed afterwards, also on error. Eval
    mode draws no random numbers, so probing does not change training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from nets import probes
from nets.history import History
from springblock.errors import check_memory, finite_or_none

__all__ = ["ACTIVATIONS", "MEMORY_ROUTE_BYTES", "LoadCurve", "load_curve", "LoadCurveRecorder"]

log = logging.getLogger(__name__)

#: Module types whose outputs are the default hidden representations.
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
               nn.Softsign, nn.Tanhshrink, nn.LogSigmoid)

#: ``route="auto"`` keeps all features in memory up to this many bytes (256 MiB), else streams.
MEMORY_ROUTE_BYTES = 1 << 28

ROUTES = ("auto", "stream", "memory")
MODES = ("eval", "train", None)
_CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class LoadCurve:
    """Per-layer separation of one model on one data set.

    Attributes
    ----------
    layers : list of str
        ``"input"``, then the hooked modules (``name`` or ``name[k]`` for the k-th call).
    curve : float64 ``(L + 1,)``
        ``log D_l`` (natural log); NaN where undefined (non-finite features, coincident class
        means), ``-inf`` where the classes collapse to points.
    trace_ratio_curve : float64 ``(L + 1,)``
        ``log tr Σ_w − log tr Σ_b``.
    n_features : list of int
        ``p_l`` of each layer (flattened).
    n_samples, n_classes : int
    route : ``"stream"`` or ``"memory"`` (the one used)
    """

    layers: list
    curve: np.ndarray
    trace_ratio_curve: np.ndarray
    n_features: list
    n_samples: int
    n_classes: int
    route: str
    summary: dict = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "summary", probes.curve_summary(self.curve))

    @property
    def loads(self) -> np.ndarray:
        """``d_l = log D_{l-1} − log D_l``, ``l = 1..L``."""
        return np.asarray(self.summary["loads"])

    @property
    def linearity(self) -> float:
        """``v``: population std of the loads."""
        return self.summary["linearity"]

    @property
    def curvature(self) -> float:
        """``c = d_1 − d_L`` (> 0 convex)."""
        return self.summary["curvature"]

    @property
    def regime(self) -> str:
        return self.summary["regime"]

    def to_dict(self) -> dict:
        """Strict-JSON dict (NaN and inf written as None): ``curve``, ``trace_ratio_curve``,
        ``layers``, ``summary``, ``n_features``, ``n_samples``, ``n_classes``, ``route``."""
        return finite_or_none(dict(curve=self.curve.tolist(), trace_ratio_curve=self.trace_ratio_curve.tolist(),
                                layers=list(self.layers), summary=self.summary, n_features=list(self.n_features),
                                n_samples=int(self.n_samples), n_classes=int(self.n_classes), route=self.route))


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    try:
        return torch.from_numpy(np.array(a))  # a copy: read-only or memory-mapped arrays are fine
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be a tensor or an array, got {type(a).__name__}") from err


def _rows(a, what: str):
    """Inputs kept as given (a NumPy array is converted batch by batch, never copied whole)."""
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return a
    return _tensor(a, what)


class _Data:
    """Re-iterable ``(x, y)`` batches from a loader, ``(x, y)`` or ``x`` with ``labels``."""

    def __init__(self, data, labels, batch_size: int):
        self.labels = None if labels is None else _tensor(labels, "labels").reshape(-1)
        if self.labels is not None and (self.labels.is_floating_point() or self.labels.is_complex()):
            raise ValueError(f"labels must be integers, got dtype {self.labels.dtype}")
        self.loader = None
        if isinstance(data, (torch.Tensor, np.ndarray)):
            if self.labels is None:
                raise ValueError("data is one array of inputs: pass labels=..., or data=(x, y)")
            self.x, self.y = _rows(data, "data"), self.labels
        elif isinstance(data, (tuple, list)):
            if len(data) != 2:
                raise ValueError(f"data as a tuple must be (x, y), got {len(data)} items")
            self.x, self.y = _rows(data[0], "x"), _tensor(data[1], "y").reshape(-1)
            if self.labels is not None:
                raise ValueError("labels given twice: in data=(x, y) and as labels=")
            if self.y.is_floating_point():
                raise ValueError(f"labels y must be integers, got dtype {self.y.dtype}")
        elif isinstance(data, Iterable):
            self.loader = data
            sampler = getattr(data, "sampler", None)
            if self.labels is not None and isinstance(sampler, torch.utils.data.RandomSampler):
                raise ValueError("labels= with a shuffling DataLoader: the labels cannot be matched to the "
                                 "samples; let the loader yield (x, y) batches or turn shuffle off")
        else:
            raise TypeError(f"data must be a DataLoader (or iterable of batches), (x, y) or a tensor/array, "
                            f"got {type(data).__name__}")
        if self.loader is None:
            if len(self.x) != len(self.y):
                raise ValueError(f"labels have length {len(self.y)} but the data has {len(self.x)} samples")
            if len(self.x) == 0:
                raise ValueError("the data has no samples")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")

    @property
    def n(self) -> int | None:
        if self.loader is None:
            return len(self.x)
        if self.labels is not None:
            return len(self.labels)
        ds = getattr(self.loader, "dataset", None)
        try:
            return len(ds) if ds is not None and not getattr(self.loader, "drop_last", False) else None
        except TypeError:
            return None

    def batches(self):
        if self.loader is None:
            for a in range(0, len(self.x), self.batch_size):
                yield _tensor(self.x[a:a + self.batch_size], "x"), self.y[a:a + self.batch_size]
            return
        offset = 0
        for batch in self.loader:
            if isinstance(batch, (tuple, list)):
                if len(batch) == 0:
                    raise ValueError("the data loader yielded an empty batch")
                x = batch[0]
                y = batch[1] if self.labels is None and len(batch) > 1 else None
            else:
                x, y = batch, None
            x = _tensor(x, "a batch's inputs")
            if self.labels is not None:
                if offset + len(x) > len(self.labels):
                    raise ValueError(f"labels have length {len(self.labels)} but the data loader yields more "
                                     f"samples ({offset + len(x)} so far)")
                y = self.labels[offset:offset + len(x)]
            elif y is None:
                raise ValueError("the data loader yields inputs only: pass labels=... (in the loader's order)")
            y = _tensor(y, "a batch's labels").reshape(-1)
            if y.is_floating_point():
                raise ValueError(f"labels must be integers, got dtype {y.dtype}")
            if len(y) != len(x):
                raise ValueError(f"a batch has {len(x)} inputs but {len(y)} labels")
            offset += len(x)
            yield x, y
        if self.labels is not None and offset != len(self.labels):
            raise ValueError(f"labels have length {len(self.labels)} but the data loader yielded {offset} samples")


# ---------------------------------------------------------------------------------------------
# layer selection and hooks
# ---------------------------------------------------------------------------------------------
def _top_level(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, _CONTAINERS):
            out += _top_level(child, full + ".")
        else:
            out.append((full, child))
    return out


def _is_type_spec(layers) -> bool:
    if isinstance(layers, type):
        return True
    return isinstance(layers, tuple) and len(layers) > 0 and all(isinstance(t, type) for t in layers)


def _candidates(model: nn.Module, layers) -> tuple[list[tuple[str, nn.Module]], str]:
    """Modules to hook and a description of the rule that chose them."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if layers is None:
        acts = [(n, m) for n, m in named if isinstance(m, ACTIVATIONS)]
        if acts:
            return acts, "activation modules"
        return _top_level(model), "top-level blocks (no activation modules: the model calls functional activations)"
    if _is_type_spec(layers):
        types = layers if isinstance(layers, tuple) else (layers,)
        got = [(n, m) for n, m in named if isinstance(m, types)]
        if not got:
            raise ValueError(f"the model has no module of type {', '.join(t.__name__ for t in types)}")
        return got, "modules of type " + ", ".join(t.__name__ for t in types)
    if isinstance(layers, str):
        layers = [layers]
    if callable(layers):
        got = [(n, m) for n, m in named if layers(n, m)]
        if not got:
            raise ValueError("the layers callable selected no module")
        return got, "modules chosen by the layers callable"
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: give module names, module types or a callable (or None)")
    if all(isinstance(t, type) for t in layers):
        return _candidates(model, tuple(layers))
    table = dict(named)
    out = []
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"layers must be module names, module types or a callable, got {name!r}")
        if name not in table:
            some = ", ".join(list(table)[:12]) + (", ..." if len(table) > 12 else "")
            raise ValueError(f"the model has no module named {name!r} (modules: {some})")
        out.append((name, table[name]))
    return out, "named modules"


class _Hooks:
    """Forward hooks on the candidate modules: each call of a hooked module in one forward pass
    is one layer, identified by ``(name, call index)``; ``sink(layer_id, features)`` gets the
    flattened features."""

    def __init__(self, candidates, transform):
        self.candidates = candidates
        self.transform = transform
        self.handles = []
        self.calls: dict[str, int] = {}
        self.order: list[tuple[str, int]] = []
        self.raw: dict[tuple[str, int], object] = {}
        self.sink: Callable | None = None
        self.keep_raw = False

    def __enter__(self):
        for name, mod in self.candidates:
            self.handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def reset(self):
        self.calls.clear()
        self.order.clear()
        self.raw.clear()

    def _hook(self, name):
        def hook(module, inputs, output):
            k = self.calls.get(name, 0)
            self.calls[name] = k + 1
            lid = (name, k)
            self.order.append(lid)
            if self.keep_raw:
                self.raw[lid] = output
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"module {name!r} returned {type(output).__name__}, not a tensor: it cannot be a "
                                "probed layer (select another module with layers=...)")
            h = self.transform(output) if self.transform is not None else output
            self.sink(lid, h.reshape(h.shape[0], -1))
        return hook


def _device_dtype(model: nn.Module):
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device, torch.get_default_dtype()
    return torch.device("cpu"), torch.get_default_dtype()


class _ModeGuard:
    """Set the model's mode; restore every module's own training flag on exit."""

    def __init__(self, model: nn.Module, mode):
        self.model, self.mode = model, mode

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        if self.mode == "eval":
            self.model.eval()
        elif self.mode == "train":
            self.model.train()
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag


class _Plan:
    """The resolved layers of one model (found on the first batch, then fixed)."""

    def __init__(self, model, layers, transform):
        self.model = model
        self.spec = layers
        self.transform = transform
        self.candidates, self.rule = _candidates(model, layers)
        self.ids: list[tuple[str, int]] | None = None
        self.names: list[str] | None = None
        self.device, self.dtype = _device_dtype(model)
        self.bytes_per_sample: int | None = None
        self.calls_per_module: dict[str, int] = {}

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.to(self.dtype) if x.is_floating_point() and x.dtype != self.dtype else x

    def forward(self, hooks: _Hooks, x: torch.Tensor):
        hooks.reset()
        out = self.model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned a {type(out).__name__}, not a tensor: load_curve needs a forward "
                            "that returns one tensor (the logits); wrap the model, e.g. "
                            "`class Wrapped(nn.Module): def forward(self, x): return model(x)[0]`")
        if self.ids is None:
            self._resolve(hooks, out)
        else:
            seen = set(hooks.order)
            missing = [i for i in self.ids if i not in seen]
            if missing:
                raise RuntimeError(f"layer {self._name(missing[0])!r} was not called in this forward pass "
                                   "(the model's forward changed between batches)")
        return out

    def _name(self, lid):
        return lid[0] if self.calls_per_module.get(lid[0], 1) == 1 else f"{lid[0]}[{lid[1]}]"

    def _resolve(self, hooks: _Hooks, out):
        order = list(dict.fromkeys(hooks.order))
        self.calls_per_module = dict(hooks.calls)
        if self.spec is None:  # the default leaves out the logits
            kept = [lid for lid in order if hooks.raw.get(lid) is not out]
        else:
            kept = order
            called = {lid[0] for lid in order}
            for name, _ in self.candidates:
                if name not in called and not _is_type_spec(self.spec) and not callable(self.spec):
                    raise ValueError(f"layer {name!r} was not called in the model's forward pass")
        if not kept:
            raise ValueError(f"no hidden layer found ({self.rule}); name the modules with layers=[...]")
        self.ids = kept
        self.names = ["input"] + [self._name(lid) for lid in kept]
        log.info("load_curve: %d layers from %s: %s", len(kept), self.rule, ", ".join(self.names[1:]))


def _run(plan: _Plan, data: _Data, sink_input, sink_layer, keep_raw_first: bool):
    """One pass over the data: the input and every hooked output to the sinks."""
    with _Hooks(plan.candidates, plan.transform) as hooks:
        hooks.sink = lambda lid, h: sink_layer(lid, h, current["y"])
        current = {"y": None}
        for x, y in data.batches():
            x = plan.to_input(x)
            y = y.to(plan.device, torch.long)
            if len(x) != len(y):
                raise ValueError(f"a batch has {len(x)} inputs but {len(y)} labels")
            current["y"] = y
            sink_input(x.reshape(x.shape[0], -1), y)
            hooks.keep_raw = plan.ids is None and keep_raw_first
            plan.forward(hooks, x)


def _curve_stream(plan: _Plan, data: _Data, n_classes, rcond):
    accs: dict = {}

    def acc(lid):
        if lid not in accs:
            accs[lid] = probes.StreamingSeparation(n_classes, rcond=rcond)
        return accs[lid]

    _run(plan, data, lambda h, y: acc("input").add_means(h, y), lambda lid, h, y: acc(lid).add_means(h, y), True)
    ids = ["input"] + plan.ids
    for lid in ids:
        accs[lid].freeze()
    _run(plan, data, lambda h, y: accs["input"].add_residuals(h, y),
         lambda lid, h, y: accs[lid].add_residuals(h, y) if lid in accs and lid in plan.ids else None, False)
    finite = [accs[lid].finite for lid in ids]
    res = [accs[lid].result() for lid in ids]
    n_feat = [accs[lid].n_features for lid in ids]
    return res, finite, n_feat, accs["input"].n, accs["input"].n_classes_used


def _curve_memory(plan: _Plan, data: _Data, n_classes, rcond):
    feats: dict = {}
    ys: list = []

    def keep(lid, h):
        feats.setdefault(lid, []).append(h.detach().clone())

    _run(plan, data, lambda h, y: (keep("input", h), ys.append(y)), lambda lid, h, y: keep(lid, h), True)
    y = torch.cat(ys).cpu().numpy()
    ids = ["input"] + plan.ids
    res: list = [None] * len(ids)
    finite: list = [True] * len(ids)
    n_feat: list = [0] * len(ids)
    groups: dict = {}  # layers of one size go through one batched call (fewer small kernels)
    for i, lid in enumerate(ids):
        h = torch.cat(feats.pop(lid))
        n_feat[i] = int(h.shape[1])
        finite[i] = bool(torch.isfinite(h).all())
        groups.setdefault((h.shape[1], h.dtype), []).append((i, h))
    for items in groups.values():
        stack = items[0][1][None] if len(items) == 1 else torch.stack([h for _, h in items])
        d, t = probes.separation_stats_batched(stack, y, n_classes, rcond=rcond)  # NaN where not finite
        for (i, _), di, ti in zip(items, d, t, strict=True):
            res[i] = (float(di), float(ti))
        del stack
    k = int(n_classes) if n_classes is not None else int(y.max()) + 1
    return res, finite, n_feat, len(y), k


def _probe(plan: _Plan, data: _Data, *, n_classes, route, mode, rcond, on_nonfinite) -> LoadCurve:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'eval', 'train' or None, got {mode!r}")
    if on_nonfinite not in ("raise", "nan"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'nan', got {on_nonfinite!r}")
    if route == "auto":
        route = _auto_route(plan, data)
    elif route == "memory" and data.n is not None:
        # the memory route keeps every layer's (n, p) features, then concatenates them (x 2)
        bps = _bytes_per_sample(plan, data)
        check_memory(f"route='memory': {data.n} samples x {bps} bytes of features per sample", 2.0 * data.n * bps,
                     hint="use route='stream' (same result, constant memory)")
    with torch.no_grad(), _ModeGuard(plan.model, mode):
        if route == "stream":
            res, finite, n_feat, n, k = _curve_stream(plan, data, n_classes, rcond)
        else:
            res, finite, n_feat, n, k = _curve_memory(plan, data, n_classes, rcond)
    names = plan.names
    bad = [names[i] for i, ok in enumerate(finite) if not ok]
    if bad and on_nonfinite == "raise":
        raise ValueError(f"non-finite features (NaN or inf) at layer(s) {', '.join(bad)}")
    return LoadCurve(layers=list(names), curve=np.array([r[0] for r in res]),
                     trace_ratio_curve=np.array([r[1] for r in res]), n_features=n_feat, n_samples=n, n_classes=k,
                     route=route)


def _auto_route(plan: _Plan, data: _Data) -> str:
    n = data.n
    if n is None:
        return "stream"
    return "memory" if n * _bytes_per_sample(plan, data) <= MEMORY_ROUTE_BYTES else "stream"


def _bytes_per_sample(plan: _Plan, data: _Data) -> int:
    """Bytes of the probed features (all layers and the input) of one sample."""
    if plan.bytes_per_sample is None:  # size the layers on one small batch
        x, _ = next(iter(data.batches()))
        sizes = {}
        with torch.no_grad(), _ModeGuard(plan.model, "eval"), _Hooks(plan.candidates, plan.transform) as hooks:
            hooks.sink = lambda lid, h: sizes.__setitem__(lid, h.shape[1] * h.element_size())
            hooks.keep_raw = True
            plan.forward(hooks, plan.to_input(x[:2]))
        plan.bytes_per_sample = sum(sizes[lid] for lid in plan.ids) + x[0].numel() * 4
    return plan.bytes_per_sample


def load_curve(model: nn.Module, data, *, labels=None, layers=None, n_classes: int | None = None,
               batch_size: int = 512, route: str = "auto", mode: str | None = "eval", transform=None,
               rcond: float = probes.RCOND, on_nonfinite: str = "raise") -> LoadCurve:
    """Per-layer ``log D_l`` (and the trace ratio, loads, v, c, regime) of any ``nn.Module``.

    Parameters
    ----------
    model : nn.Module
        Its forward must return one tensor (the logits).
    data : DataLoader (or any re-iterable of ``(x, y, ...)`` or ``x`` batches), ``(x, y)``
        tensors/arrays, or ``x`` with ``labels``. A loader is iterated once (``route="memory"``)
        or twice (``"stream"``); both passes must visit the same samples.
    labels : int array ``(N,)``, optional
        Class labels in data order (for inputs-only data; not with a shuffling loader).
    layers : None, module names, module types, or a callable ``(name, module) -> bool``
        See the module docstring; the input is always layer 0.
    n_classes : int, optional
        ``K``; default ``max(label) + 1``. Every class needs a sample.
    batch_size : int
        Rows per forward pass for tensor/array data.
    route : {"auto", "stream", "memory"}
    mode : {"eval", "train", None}
    transform : callable, optional
        Applied to every hooked module output (e.g. ``torch.relu``).
    rcond : float
        Pseudo-inverse cutoff (:data:`nets.probes.RCOND`).
    on_nonfinite : {"raise", "nan"}
        Non-finite features raise ``ValueError`` naming the layer, or give NaN there.

    Returns
    -------
    LoadCurve

    Raises
    ------
    ValueError
        Labels of the wrong length, one class only, an empty class, a layer name the model lacks,
        non-finite features. ``TypeError``: the model returns a tuple (or not a tensor).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    plan = _Plan(model, layers, transform)
    return _probe(plan, _Data(data, labels, batch_size), n_classes=n_classes, route=route, mode=mode, rcond=rcond,
                  on_nonfinite=on_nonfinite)


# ---------------------------------------------------------------------------------------------
# recorder
# ---------------------------------------------------------------------------------------------
class LoadCurveRecorder:
    """Record the load curve during your own training loop.

    ::

        rec = LoadCurveRecorder(model, (x_probe, y_probe), every=1)
        with rec:                              # probes epoch 0 now, the last epoch on exit
            for epoch in range(1, epochs + 1):
                ...                            # your training step(s)
                rec.step(epoch, loss=loss)     # probes when epoch % every == 0
        hist = rec.history                     # a nets.History: trajectory, probe_epochs, ...
        fit_curve(hist.final_curve); fit_curve(hist.trajectory, probe_epochs=hist.probe_epochs)

    Without ``with``: call ``rec.step(0)`` before training and ``rec.finish()`` after. Every
    probe is :func:`load_curve` with the same arguments (``probe_kw``), on the same layers
    (chosen at the first probe); it runs in eval mode under ``no_grad``, draws no random
    numbers and restores the model's modes, so training is unchanged.

    Parameters
    ----------
    model : nn.Module
    probe_data : as ``data`` of :func:`load_curve` (the clean probe set)
    every : int
        Probe when ``epoch % every == 0`` (``0``: only at the start of a ``with`` block and at
        :meth:`finish`).
    metadata : dict, optional
        Describes the run (model name, data set, optimiser, ...): kept in
        ``history.meta`` and written with the run by :meth:`phase_diagrams.store.Store.add_runs`.
    probe_kw : keyword arguments of :func:`load_curve` (``labels``, ``layers``, ``route``, ...)
    """

    def __init__(self, model: nn.Module, probe_data, *, every: int = 1, metadata: dict | None = None,
                 **probe_kw):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (isinstance(every, int) and every >= 0):
            raise ValueError(f"every must be an int >= 0, got {every!r}")
        unknown = set(probe_kw) - {"labels", "layers", "n_classes", "batch_size", "route", "mode", "transform",
                                   "rcond"}
        if unknown:
            raise TypeError(f"unknown load_curve argument(s): {', '.join(sorted(unknown))}")
        self.model = model
        self.every = every
        self.metadata = dict(metadata or {})
        labels = probe_kw.pop("labels", None)
        self._data = _Data(probe_data, labels, probe_kw.pop("batch_size", 512))
        self._plan = _Plan(model, probe_kw.pop("layers", None), probe_kw.pop("transform", None))
        self._kw = dict(n_classes=probe_kw.pop("n_classes", None), route=probe_kw.pop("route", "auto"),
                        mode=probe_kw.pop("mode", "eval"), rcond=probe_kw.pop("rcond", probes.RCOND),
                        on_nonfinite="nan")
        self.curves: list[LoadCurve] = []
        self.probe_epochs: list[int] = []
        self.losses: dict[int, float] = {}
        self.last_epoch: int | None = None
        self.test_accuracy = float("nan")
        self._t0 = time.perf_counter()
        self._wall = 0.0

    def probe(self, epoch: int) -> LoadCurve:
        """Probe now and record it as ``epoch``."""
        lc = _probe(self._plan, self._data, **self._kw)
        if self.curves and lc.layers != self.curves[0].layers:
            raise RuntimeError(f"the probed layers changed: {self.curves[0].layers} then {lc.layers}")
        self.curves.append(lc)
        self.probe_epochs.append(int(epoch))
        return lc

    def step(self, epoch: int, *, loss: float | None = None) -> LoadCurve | None:
        """End of ``epoch``: record ``loss`` (optional) and probe if ``epoch % every == 0``."""
        epoch = int(epoch)
        if self.probe_epochs and epoch < self.probe_epochs[-1]:
            raise ValueError(f"epochs must not decrease: step({epoch}) after a probe at epoch {self.probe_epochs[-1]}")
        self.last_epoch = epoch
        if loss is not None:
            self.losses[epoch] = float(loss)
        if self.every and epoch % self.every == 0 and (not self.probe_epochs or self.probe_epochs[-1] != epoch):
            return self.probe(epoch)
        return None

    def finish(self, *, test_accuracy: float | None = None) -> History:
        """Probe the last stepped epoch if it was not probed; return :attr:`history`."""
        last = self.last_epoch if self.last_epoch is not None else 0
        if not self.probe_epochs or self.probe_epochs[-1] != last:
            self.probe(last)
        if test_accuracy is not None:
            self.test_accuracy = float(test_accuracy)
        self._wall = time.perf_counter() - self._t0
        return self.history

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.step(0)
        if not self.probe_epochs:  # every=0: still the initial curve
            self.probe(0)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        return False

    @property
    def layers(self) -> list[str]:
        return self.curves[0].layers if self.curves else []

    @property
    def history(self) -> History:
        """A :class:`nets.History` (``config=None``; ``meta`` holds ``metadata``, the layer names
        and the model's class): ``trajectory`` ``(n_probes, L + 1)``, ``probe_epochs``,
        ``final_curve``, ``summary()``, ``to_record()``; ``train_loss`` holds the losses given
        to :meth:`step` (in epoch order)."""
        if not self.curves:
            raise RuntimeError("nothing recorded yet: call step(0) (or use the recorder as a context manager)")
        traj = np.array([c.curve for c in self.curves])
        status = "completed" if np.all(np.isfinite(traj[-1])) else "diverged"
        meta = dict(model_class=type(self.model).__name__, layers=self.layers, **self.metadata)
        epochs = sorted(self.losses)
        return History(config=None, status=status, epochs_run=int(self.last_epoch or 0),
                       probe_epochs=np.array(self.probe_epochs, dtype=np.int64), trajectory=traj,
                       trace_ratio_trajectory=np.array([c.trace_ratio_curve for c in self.curves]),
                       train_loss=np.array([self.losses[e] for e in epochs], dtype=np.float64),
                       test_accuracy=self.test_accuracy, probe_accuracy=None,
                       wall_time=self._wall or time.perf_counter() - self._t0, ensemble_size=1,
                       n_classes=self.curves[-1].n_classes, meta=meta)
