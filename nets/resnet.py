"""Leaky ResNets of Jacot & Kaiser (arXiv 2405.17573; SPEC §3.1, §5.2), single and batched.

Model (symbols as in the paper and the SPEC)
    A constant-width residual stream of width ``w``, depth (number of residual steps) ``L``,
    effective depth ``L̃ >= 0`` and layer step sizes ``ρ_1..ρ_L > 0`` with ``Σ ρ_ℓ = 1``::

        h_0 = x W_inᵀ                                   (linear map into the stream, no bias)
        h_ℓ = (1 − ρ_ℓ L̃) h_{ℓ−1} + ρ_ℓ σ(h_{ℓ−1}) W_ℓᵀ,   ℓ = 1..L
        f(x) = h_L W_outᵀ                                (linear map out, no bias)

    with ``σ(z) = (ReLU(z), 1) ∈ R^{w+1}`` so that ``W_ℓ ∈ R^{w×(w+1)}`` carries the bias in its
    last column. The layer at depth ``p_ℓ = ρ_1 + … + ρ_ℓ`` is the explicit Euler step of the
    representation ODE ``∂_p h_p = −L̃ h_p + W_p σ(h_p)`` (``L̃ = 0``: a plain ResNet; ``ρ_ℓ L̃ = 1``:
    a fully connected layer). Training minimises

        data term + (λ / (2 L̃)) Σ_ℓ ρ_ℓ ‖W_ℓ‖_F²          (:meth:`LeakyResNet.regularizer`)

    (λ = ``weight_decay``; the bias column is decayed; the maps in and out are not; for ``L̃ = 0``
    the factor ``1/(2L̃)`` is replaced by ``1/2``).

Step schemes (:func:`step_sizes`; every scheme has ``Σ ρ_ℓ = 1``)
    ``equidistant``  ``ρ_ℓ = 1/L``.
    ``irregular``    small–large–small: ``ρ_ℓ ∝ 1 + (r − 1) sin(π (ℓ − ½) / L)`` with
                     ``r = IRREGULAR_RATIO = 4`` (the middle step is ~3× the end steps).
    ``adaptive``     starts equidistant; during training ``ρ`` is re-set every ``adapt_every``
                     epochs from the measured relative speeds by :func:`adaptive_steps`
                     (``ρ_ℓ ∝ 1/c_ℓ`` with damping and safeguards, documented there).

Stability. ``|1 − ρ_ℓ L̃| < 1`` (i.e. ``ρ_ℓ L̃ < 2``) is required of every mesh (the leak alone
must contract); :func:`check_mesh` raises naming the offending layer otherwise.

Initialisation (variance preserving). ``W_in ~ N(0, 1/d)``, ``W_out ~ N(0, 1/w)`` and
``W_ℓ ~ N(0, s_ℓ²)`` i.i.d. with ``s_ℓ² = 2 L̃ (2 − ρ_ℓ L̃) / (ρ_ℓ w)`` (times ``init_gain²``):
for a centred stream ``E‖ρ W σ(h)‖² ≈ ρ² s² w ‖h‖²/2``, so ``(1 − ρL̃)² + ρ² s² w / 2 = 1`` keeps
``E‖h_ℓ‖² ≈ E‖h_{ℓ−1}‖²`` at initialisation instead of a signal damped by ``e^{−L̃}``. It is He
initialisation when ``ρL̃ = 1`` and zero when ``L̃ = 0`` (a ResNet starting at the identity).

Batched ensemble (:class:`EnsembleLeakyResNet`)
    ``E`` members stacked along a leading axis (``bmm``), each with its own ``L̃``, ``λ`` and
    mesh ``ρ`` (buffers, so the adaptive scheme re-sets each member's mesh); built from single
    models so the initial weights are identical and results equal training one by one (tested).

Per-layer features: ``forward_features`` returns the stream ``h_0..h_L`` (``L + 1`` tensors of
width ``w``) — the representations ``A_ℓ`` of SPEC §5.2 and the load-curve features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from nets.models import _Ensemble

__all__ = [
    "STEP_SCHEMES",
    "IRREGULAR_RATIO",
    "LeakyResNet",
    "EnsembleLeakyResNet",
    "step_sizes",
    "check_mesh",
    "adaptive_steps",
    "relative_speeds",
    "depth_positions",
]

STEP_SCHEMES = ("equidistant", "irregular", "adaptive")
#: Ratio of the largest to the smallest factor of the irregular (small–large–small) mesh.
IRREGULAR_RATIO = 4.0


def step_sizes(scheme: str, depth: int) -> np.ndarray:
    """Initial layer step sizes ``ρ_1..ρ_L`` (float64, ``Σρ = 1``) of a step scheme.

    ``adaptive`` starts from the equidistant mesh (it is re-set during training).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if scheme in ("equidistant", "adaptive"):
        rho = np.ones(depth)
    elif scheme == "irregular":
        ell = np.arange(1, depth + 1)
        rho = 1.0 + (IRREGULAR_RATIO - 1.0) * np.sin(np.pi * (ell - 0.5) / depth)
    else:
        raise ValueError(f"step_scheme must be one of {STEP_SCHEMES}, got {scheme!r}")
    return rho / rho.sum()


def depth_positions(rho) -> np.ndarray:
    """Depths ``p_0 = 0, p_ℓ = ρ_1 + … + ρ_ℓ`` of the representations ``h_0..h_L``, ``(L + 1,)``."""
    rho = np.asarray(rho, dtype=np.float64)
    return np.concatenate([[0.0], np.cumsum(rho)])


def check_mesh(rho, ltilde: float) -> np.ndarray:
    """Validate a mesh: finite, positive, sums to 1 (to 1e-6), ``ρ_ℓ L̃ < 2``. Returns float64."""
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim != 1 or rho.size < 1:
        raise ValueError(f"rho must be a non-empty 1-D array, got shape {rho.shape}")
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
        raise ValueError(f"rho must be finite and > 0, got {rho.tolist()}")
    if abs(rho.sum() - 1.0) > 1e-6:
        raise ValueError(f"rho must sum to 1, got sum {rho.sum()!r}")
    if not (math.isfinite(ltilde) and ltilde >= 0):
        raise ValueError(f"ltilde must be finite and >= 0, got {ltilde!r}")
    bad = np.flatnonzero(rho * ltilde >= 2.0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"unstable mesh: rho[{i}] * ltilde = {rho[i] * ltilde:.4g} >= 2 "
                         f"(the leak 1 - rho*ltilde must lie in (-1, 1]); use more layers or a smaller ltilde")
    return rho


def relative_speeds(features: Sequence, rho) -> np.ndarray:
    """Relative speeds ``c_ℓ = ‖h_ℓ − h_{ℓ−1}‖_F / (ρ_ℓ ‖h_ℓ‖_F)``, ``ℓ = 1..L`` (float64).

    ``features``: the ``L + 1`` stream tensors/arrays ``(N, w)``. NaN where ``‖h_ℓ‖ = 0``.
    """
    rho = np.asarray(rho, dtype=np.float64)
    if len(features) != rho.size + 1:
        raise ValueError(f"need L + 1 = {rho.size + 1} feature arrays, got {len(features)}")
    out = np.empty(rho.size)
    for ell in range(1, rho.size + 1):
        a = torch.as_tensor(features[ell]).double()
        b = torch.as_tensor(features[ell - 1]).double()
        num = float(torch.linalg.norm(a - b))
        den = float(torch.linalg.norm(a)) * rho[ell - 1]
        out[ell - 1] = num / den if den > 0 else np.nan
    return out


def adaptive_steps(speeds, rho, ltilde: float, *, rate: float = 0.5, floor: float = 1e-3,
                   min_ratio: float = 0.25, max_ratio: float = 4.0, leak_out: float = 0.9,
                   leak_in: float = 1.8) -> np.ndarray:
    """The adaptive mesh rule: new ``ρ`` from the relative speeds ``c_ℓ`` measured on mesh ``rho``.

    Rule (SPEC §5.2, ``ρ_ℓ ∝ 1/c_ℓ``, with safeguards), for ``L`` layers:

    1. *floor*: ``c̃_ℓ = max(c_ℓ, floor · max_j c_j)`` — a frozen layer cannot ask for an
       unbounded step.
    2. *target*: ``t_ℓ = (1/c̃_ℓ) / Σ_j (1/c̃_j)`` — equal relative change per layer.
    3. *damping*: ``ρ*_ℓ ∝ ρ_ℓ^{1−rate} t_ℓ^{rate}`` (geometric interpolation, normalised), so one
       re-set moves the mesh only part of the way and the network can follow.
    4. *bounds*: ``min_ratio/L ≤ ρ_ℓ ≤ hi_ℓ`` with ``hi_ℓ = min(max_ratio/L, leak_ℓ/L̃)``, where
       ``leak_ℓ = leak_out`` (0.9: ``ρ_ℓL̃ < 1``) for layers *outside the bottleneck* — speed above
       the median speed — and ``leak_in`` (1.8: still ``|1 − ρL̃| < 1``) for the slow layers inside
       it. The bounded mesh is ``ρ_ℓ = clip(t ρ*_ℓ, lo, hi_ℓ)`` with the one scale ``t`` that makes
       ``Σρ = 1`` (water-filling; the order of the steps is kept).

    Returns the new mesh (float64, ``Σρ = 1`` to rounding). Raises ``ValueError`` naming the value
    for non-finite or negative speeds, a bad ``rate``, or bounds that admit no mesh
    (``L·min_ratio/L > 1`` or ``Σ hi_ℓ < 1``, e.g. ``L̃`` too large for ``L`` layers).
    """
    c = np.asarray(speeds, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    n = rho.size
    if c.shape != (n,):
        raise ValueError(f"speeds must have one value per layer ({n}), got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"speeds must be finite and >= 0, got {c.tolist()}")
    if c.max() <= 0:
        raise ValueError("all speeds are zero: the representation does not move, no mesh to adapt to")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor!r}")
    if not (0 < min_ratio <= 1 <= max_ratio):
        raise ValueError(f"need 0 < min_ratio <= 1 <= max_ratio, got {min_ratio!r}, {max_ratio!r}")
    check_mesh(rho, ltilde)
    ct = np.maximum(c, floor * c.max())
    target = (1.0 / ct) / np.sum(1.0 / ct)
    new = np.exp((1.0 - rate) * np.log(rho) + rate * np.log(target))
    new /= new.sum()
    lo = np.full(n, min_ratio / n)
    leak = np.where(c > np.median(c), leak_out, leak_in)
    hi = np.full(n, max_ratio / n)
    if ltilde > 0:
        hi = np.minimum(hi, leak / ltilde)
    if lo.sum() > 1.0 + 1e-12 or hi.sum() < 1.0 - 1e-12 or np.any(lo > hi):
        raise ValueError(
            f"adaptive_steps: no mesh of {n} layers satisfies the bounds for ltilde={ltilde!r} "
            f"(sum of upper bounds {hi.sum():.4g} < 1); use more layers or a smaller ltilde"
        )
    return _water_fill(new, lo, hi)


def _water_fill(x, lo, hi) -> np.ndarray:
    """``clip(t · x, lo, hi)`` with the scalar ``t > 0`` for which the entries sum to 1.

    ``Σ clip(t x, lo, hi)`` is continuous and non-decreasing in ``t``, from ``Σ lo ≤ 1`` to
    ``Σ hi ≥ 1``, so ``t`` is found by bisection on ``log t``; the last rounding residual is put
    on the entries strictly inside their bounds.
    """
    def total(log_t):
        return np.clip(np.exp(log_t) * x, lo, hi).sum()

    a, b = np.log(lo.min() / x.max()) - 1.0, np.log(hi.max() / x.min()) + 1.0
    for _ in range(200):
        mid = 0.5 * (a + b)
        if total(mid) < 1.0:
            a = mid
        else:
            b = mid
    out = np.clip(np.exp(b) * x, lo, hi)
    inside = (out > lo) & (out < hi)
    if inside.any():
        out[inside] += (1.0 - out.sum()) * out[inside] / out[inside].sum()
    return out


def _check_args(in_dim, width, depth, out_dim, ltilde):
    for name, v, lo in (("in_dim", in_dim, 1), ("width", width, 1), ("depth", depth, 1), ("out_dim", out_dim, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not (isinstance(ltilde, (int, float, np.floating)) and math.isfinite(ltilde) and ltilde >= 0):
        raise ValueError(f"ltilde must be finite and >= 0, got {ltilde!r}")


class LeakyResNet(nn.Module):
    """One leaky ResNet (module docstring).

    Parameters
    ----------
    in_dim : int
        Input dimension ``d`` (inputs ``(B, ...)`` are flattened).
    width : int
        Stream width ``w``.
    depth : int
        Number of residual steps ``L``.
    out_dim : int
        Output dimension (classes ``K``, or the regression target dimension).
    ltilde : float
        Effective depth ``L̃ >= 0``.
    rho : array ``(L,)`` or None
        Step sizes (default: ``step_sizes(step_scheme, depth)``); stored as a buffer.
    step_scheme : {"equidistant", "irregular", "adaptive"}
    weight_decay : float
        λ of :meth:`regularizer`.
    init_gain : float
        Multiplies the standard deviation of every ``W_ℓ`` at initialisation.
    """

    # attributes read by the ensemble machinery of nets.models (no BN, no dropout, ReLU)
    alpha = 0.0
    dropout = 0.0
    batch_norm = False
    bias = False

    def __init__(self, in_dim: int = 30, width: int = 100, depth: int = 20, out_dim: int = 30,
                 ltilde: float = 1.0, rho=None, step_scheme: str = "equidistant", weight_decay: float = 0.0,
                 init_gain: float = 1.0):
        super().__init__()
        _check_args(in_dim, width, depth, out_dim, ltilde)
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay!r}")
        rho = step_sizes(step_scheme, depth) if rho is None else np.asarray(rho, dtype=np.float64)
        if rho.shape != (depth,):
            raise ValueError(f"rho must have depth={depth} entries, got shape {rho.shape}")
        rho = check_mesh(rho, float(ltilde))
        self.in_dim, self.width, self.depth, self.n_classes = int(in_dim), int(width), int(depth), int(out_dim)
        self.step_scheme = step_scheme
        self.weight_decay = float(weight_decay)
        self.register_buffer("rho", torch.tensor(rho, dtype=torch.float64))
        self.register_buffer("ltilde", torch.tensor(float(ltilde), dtype=torch.float64))
        self.w_in = nn.Parameter(torch.randn(width, in_dim) / math.sqrt(in_dim))
        std = np.sqrt(2.0 * ltilde * (2.0 - rho * ltilde) / (rho * width)) * init_gain
        self.weights = nn.Parameter(torch.randn(depth, width, width + 1) * torch.tensor(std, dtype=torch.float32)
                                    .view(depth, 1, 1))
        self.w_out = nn.Parameter(torch.randn(out_dim, width) / math.sqrt(width))

    def set_rho(self, rho) -> None:
        """Replace the mesh (validated: positive, ``Σρ = 1``, ``ρL̃ < 2``)."""
        rho = check_mesh(np.asarray(rho, dtype=np.float64).reshape(self.depth), float(self.ltilde))
        with torch.no_grad():
            self.rho.copy_(torch.as_tensor(rho, dtype=self.rho.dtype))

    def _run(self, x, keep: bool):
        h = x.flatten(1) @ self.w_in.t()
        feats = [h] if keep else None
        lt = self.ltilde
        w = self.width
        for ell in range(self.depth):
            r = self.rho[ell]
            wl = self.weights[ell]
            z = torch.relu(h) @ wl[:, :w].t() + wl[:, w]
            h = (1 - r * lt) * h + r * z
            if keep:
                feats.append(h)
        return h @ self.w_out.t(), feats

    def forward(self, x):
        return self._run(x, False)[0]

    def forward_features(self, x, kind: str = "post"):
        """Outputs ``(B, out_dim)`` and the ``L + 1`` stream tensors ``h_0..h_L`` ``(B, w)``.

        ``kind`` must be ``"post"`` (the stream itself; the model has no pre-activation layer
        output to probe)."""
        if kind != "post":
            raise ValueError(f"the leaky ResNet's features are its residual stream: kind must be 'post', got {kind!r}")
        return self._run(x, True)

    def regularizer(self) -> torch.Tensor:
        """``(λ / (2 L̃)) Σ_ℓ ρ_ℓ ‖W_ℓ‖_F²`` (``λ/2 Σ ρ ‖W‖²`` when ``L̃ = 0``); a scalar tensor."""
        if self.weight_decay == 0.0:
            return self.weights.new_zeros(())
        lt = float(self.ltilde)
        scale = self.weight_decay / (2.0 * lt if lt > 0 else 2.0)
        return scale * (self.rho * self.weights.pow(2).sum((1, 2))).sum()

    def layer_weights(self) -> list[torch.Tensor]:
        """``W_1..W_L`` as ``(w, w + 1)`` tensors (the last column is the bias)."""
        return [self.weights[ell].detach() for ell in range(self.depth)]


class EnsembleLeakyResNet(_Ensemble):
    """``E`` :class:`LeakyResNet` members trained as one model; inputs ``(E, B, ...)``.

    Per member ``e``: its own ``L̃_e``, ``λ_e`` and mesh ``ρ_e`` (buffers ``rho`` ``(E, L)`` and
    ``ltilde`` ``(E,)``); :meth:`regularizer` returns the ``(E,)`` vector of penalties.
    """

    @classmethod
    def from_members(cls, members: Sequence[LeakyResNet]) -> EnsembleLeakyResNet:
        self = cls()
        self._init_stack(members)
        self.width = members[0].width
        self.weight_decays = [m.weight_decay for m in members]
        return self

    def _col(self, v, dims):
        return v.view(-1, *([1] * dims))

    def _run(self, x, keep: bool):
        e, b = x.shape[:2]
        if e != self.n_members:
            raise ValueError(f"input has {e} members along dim 0, ensemble has {self.n_members}")
        w = self.width
        h = torch.bmm(x.reshape(e, b, -1), self.p("w_in").transpose(1, 2))
        feats = [h] if keep else None
        rho, lt = self.buf("rho"), self.buf("ltilde")
        weights = self.p("weights")  # (E, L, w, w + 1)
        for ell in range(self.depth):
            r = self._col(rho[:, ell], 2)
            wl = weights[:, ell]
            z = torch.baddbmm(wl[:, :, w].unsqueeze(1), torch.relu(h), wl[:, :, :w].transpose(1, 2))
            h = (1 - r * self._col(lt, 2)) * h + r * z
            if keep:
                feats.append(h)
        return torch.bmm(h, self.p("w_out").transpose(1, 2)), feats

    def forward(self, x):
        return self._run(x, False)[0]

    def forward_features(self, x, kind: str = "post"):
        """Outputs ``(E, B, out_dim)`` and ``L + 1`` stream tensors ``(E, B, w)``."""
        if kind != "post":
            raise ValueError(f"the leaky ResNet's features are its residual stream: kind must be 'post', got {kind!r}")
        return self._run(x, True)

    def regularizer(self) -> torch.Tensor:
        """Per-member penalties ``(λ_e / (2 L̃_e)) Σ_ℓ ρ_{e,ℓ} ‖W_{e,ℓ}‖_F²``, shape ``(E,)``."""
        weights = self.p("weights")
        lam = torch.tensor(self.weight_decays, dtype=weights.dtype, device=weights.device)
        lt = self.buf("ltilde").to(weights.dtype)
        scale = lam / (2.0 * torch.where(lt > 0, lt, torch.ones_like(lt)))
        return scale * (self.buf("rho").to(weights.dtype) * weights.pow(2).sum((2, 3))).sum(1)

    def set_rho(self, e: int, rho) -> None:
        """Replace member ``e``'s mesh (validated as :meth:`LeakyResNet.set_rho`)."""
        rho = check_mesh(np.asarray(rho, dtype=np.float64).reshape(self.depth), float(self.buf("ltilde")[e]))
        with torch.no_grad():
            self.buf("rho")[e].copy_(torch.as_tensor(rho, dtype=self.buf("rho").dtype))
