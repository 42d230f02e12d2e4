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

Meshes. The step schemes (``equidistant``, ``irregular``, ``adaptive``), the stability condition
``ρ_ℓ L̃ < 2`` and the adaptive rule live in :mod:`nets.mesh` (NumPy only).

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

from nets.mesh import check_mesh, step_sizes
from nets.models import _Ensemble

__all__ = ["LeakyResNet", "EnsembleLeakyResNet", "relative_speeds"]


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
