"""Networks of the original phase-diagram experiments (SPEC §3.1), single and batched.

Single models (plain ``torch.nn`` layers; the reference path)
    :class:`MLP`: ``BatchNorm1d(d)`` on the flattened input, then ``depth`` blocks
    ``Linear(w, w) → BatchNorm1d(w) → LeakyReLU(α) → Dropout(p)`` (the first maps ``d → w``),
    then ``Linear(w, K)``.
    :class:`CNN`: ``BatchNorm2d(C)`` on the input, then ``depth`` blocks
    ``Conv3×3(c, padding=1) → BatchNorm2d(c) → LeakyReLU(α) → MaxPool(2) → Upsample(2)
    → Dropout(p)``, flatten, ``Linear(c·H·W, K)``. Needs even ``H`` and ``W``.
    Defaults: depth 7, width/channels 100/20, bias on, PyTorch default initialisation.

Per-layer features (SPEC §1.2) from ``forward_features(x, kind)``:
    index 0 = the input after the input BatchNorm (flattened);
    index ℓ = hidden block ℓ's ``"post"`` activation (the LeakyReLU output; for the CNN after
    max-pooling, before upsampling) or ``"pre"`` activation (the BatchNorm output fed to the
    nonlinearity). The logits are returned separately.

Batched ensembles (:class:`EnsembleMLP`, :class:`EnsembleCNN`)
    ``E`` networks of one architecture stacked along a leading member axis and trained as one
    model: ``baddbmm`` for the linear layers, a grouped convolution (``groups=E``) for the
    convolutions, one ``batch_norm`` call over ``E × width`` channels (which is per-member batch
    norm over each member's own batch), a per-member LeakyReLU slope ``α_e`` and per-member
    dropout masks drawn from per-member generators. Built from single models
    (:meth:`EnsembleMLP.from_members`) so the initial weights are identical, and convertible back
    (:meth:`member_state_dict`). Inputs are ``(E, B, ...)``: each member sees its own batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "CNN", "EnsembleMLP", "EnsembleCNN", "build_model", "build_ensemble"]

FEATURE_KINDS = ("post", "pre")


def _check_common(depth, width, n_classes, alpha, dropout):
    if int(depth) < 1:
        raise ValueError(f"depth must be >= 1, got {depth!r}")
    if int(width) < 1:
        raise ValueError(f"width must be >= 1, got {width!r}")
    if int(n_classes) < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"LeakyReLU slope alpha must be in [0, 1], got {alpha!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _check_kind(kind):
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")


class _MLPBlock(nn.Module):
    def __init__(self, d_in, width, alpha, dropout, batch_norm, bias):
        super().__init__()
        self.linear = nn.Linear(d_in, width, bias=bias)
        self.norm = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU(alpha)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        pre = self.norm(self.linear(x))
        post = self.act(pre)
        return pre, post, self.drop(post)


class MLP(nn.Module):
    """The phase-diagram MLP (see module docstring).

    Parameters
    ----------
    in_dim : int
        Input dimension ``d`` (inputs of any shape ``(B, ...)`` are flattened).
    width : int
        Hidden width ``w`` (default 100).
    depth : int
        Number of hidden blocks ``L_h`` (default 7).
    n_classes : int
        ``K`` (default 10).
    alpha : float
        LeakyReLU negative slope α ∈ [0, 1] (0 = ReLU, 1 = linear).
    dropout : float
        Dropout probability after each nonlinearity.
    batch_norm : bool
        Input and hidden BatchNorm (default on).
    bias : bool
        Biases of the linear layers (default on).
    """

    def __init__(self, in_dim: int = 100, width: int = 100, depth: int = 7, n_classes: int = 10,
                 alpha: float = 0.0, dropout: float = 0.0, batch_norm: bool = True,
                 bias: bool = True):
        super().__init__()
        _check_common(depth, width, n_classes, alpha, dropout)
        if int(in_dim) < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim!r}")
        self.in_dim, self.width, self.depth, self.n_classes = in_dim, width, depth, n_classes
        self.alpha, self.dropout, self.batch_norm, self.bias = alpha, dropout, batch_norm, bias
        self.input_norm = nn.BatchNorm1d(in_dim) if batch_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            _MLPBlock(in_dim if i == 0 else width, width, alpha, dropout, batch_norm, bias)
            for i in range(depth)
        )
        self.head = nn.Linear(width, n_classes, bias=bias)

    def forward_features(self, x, kind: str = "post"):
        """Logits ``(B, K)`` and the list of ``depth + 1`` feature tensors ``(B, p_l)``."""
        _check_kind(kind)
        h = self.input_norm(x.flatten(1))
        feats = [h]
        for block in self.blocks:
            pre, post, h = block(h)
            feats.append(post if kind == "post" else pre)
        return self.head(h), feats

    def forward(self, x):
        h = self.input_norm(x.flatten(1))
        for block in self.blocks:
            h = block(h)[2]
        return self.head(h)


class _CNNBlock(nn.Module):
    def __init__(self, c_in, channels, alpha, dropout, batch_norm, bias):
        super().__init__()
        self.conv = nn.Conv2d(c_in, channels, 3, padding=1, bias=bias)
        self.norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU(alpha)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        pre = self.norm(self.conv(x))
        post = self.pool(self.act(pre))
        return pre, post, self.drop(self.up(post))


class CNN(nn.Module):
    """The phase-diagram CNN (see module docstring).

    Parameters
    ----------
    in_shape : (C, H, W)
        Input image shape; ``H`` and ``W`` must be even (pool then upsample by 2).
    channels : int
        Convolution channels (default 20).
    depth, n_classes, alpha, dropout, batch_norm, bias : as :class:`MLP`.
    """

    def __init__(self, in_shape: Sequence[int] = (1, 10, 10), channels: int = 20, depth: int = 7,
                 n_classes: int = 10, alpha: float = 0.0, dropout: float = 0.0,
                 batch_norm: bool = True, bias: bool = True):
        super().__init__()
        _check_common(depth, channels, n_classes, alpha, dropout)
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ValueError(f"CNN in_shape must be (C, H, W), got {in_shape!r}")
        if in_shape[1] % 2 or in_shape[2] % 2:
            raise ValueError(f"CNN needs even image height and width, got {in_shape[1:]}")
        self.in_shape, self.channels, self.depth, self.n_classes = in_shape, channels, depth, n_classes
        self.alpha, self.dropout, self.batch_norm, self.bias = alpha, dropout, batch_norm, bias
        self.input_norm = nn.BatchNorm2d(in_shape[0]) if batch_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            _CNNBlock(in_shape[0] if i == 0 else channels, channels, alpha, dropout, batch_norm, bias)
            for i in range(depth)
        )
        self.head = nn.Linear(channels * in_shape[1] * in_shape[2], n_classes, bias=bias)

    def forward_features(self, x, kind: str = "post"):
        """Logits ``(B, K)`` and ``depth + 1`` flattened feature tensors ``(B, p_l)``."""
        _check_kind(kind)
        h = self.input_norm(x)
        feats = [h.flatten(1)]
        for block in self.blocks:
            pre, post, h = block(h)
            feats.append((post if kind == "post" else pre).flatten(1))
        return self.head(h.flatten(1)), feats

    def forward(self, x):
        h = self.input_norm(x)
        for block in self.blocks:
            h = block(h)[2]
        return self.head(h.flatten(1))


# ---------------------------------------------------------------------------------------------
# Batched ensembles
# ---------------------------------------------------------------------------------------------
class _Ensemble(nn.Module):
    """Shared machinery: stacked parameters in the member's ``named_parameters`` order."""

    def _init_stack(self, members: Sequence[nn.Module]):
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        ref = members[0]
        self.n_members = len(members)
        self._names = [n for n, _ in ref.named_parameters()]
        self._buffer_names = [n for n, _ in ref.named_buffers()]
        ref_shapes = {n: p.shape for n, p in ref.state_dict().items()}
        for i, m in enumerate(members):
            if type(m) is not type(ref):
                raise ValueError(f"member {i} is a {type(m).__name__}, member 0 a {type(ref).__name__}")
            shapes = {n: p.shape for n, p in m.state_dict().items()}
            if shapes != ref_shapes:
                raise ValueError(f"member {i} has a different architecture from member 0")
        self._pcache = self._bcache = None
        mparams = [dict(m.named_parameters()) for m in members]
        mbufs = [dict(m.named_buffers()) for m in members]
        self.params = nn.ParameterList(
            nn.Parameter(torch.stack([mp[n].detach() for mp in mparams]).clone()) for n in self._names
        )
        for j, n in enumerate(self._buffer_names):
            self.register_buffer(f"_buf{j}", torch.stack([mb[n] for mb in mbufs]).clone())
        self.alphas = [float(m.alpha) for m in members]
        self._one_alpha = len(set(self.alphas)) == 1
        self._slope_cache: dict = {}
        self.dropout_p = [float(m.dropout) for m in members]
        self.batch_norm = ref.batch_norm
        self.bias = ref.bias
        self.depth = ref.depth
        self.n_classes = ref.n_classes
        self.dropout_generators = None
        #: when True, BatchNorm uses the batch's own statistics and leaves the running ones alone
        self.batch_stats_probe = False

    def p(self, name):
        """Stacked parameter ``(E, ...)`` of the single model's parameter ``name``."""
        if self._pcache is None:
            self._pcache = dict(zip(self._names, self.params, strict=True))
        return self._pcache[name]

    def buf(self, name):
        """Stacked buffer ``(E, ...)`` of the single model's buffer ``name``."""
        if self._bcache is None:
            self._bcache = {n: getattr(self, f"_buf{j}") for j, n in enumerate(self._buffer_names)}
        return self._bcache[name]

    def _apply(self, fn, *args, **kwargs):  # .to() / .double() replace buffer objects
        self._pcache = self._bcache = None
        return super()._apply(fn, *args, **kwargs)

    def member_state_dict(self, e: int) -> dict[str, torch.Tensor]:
        """State dict of member ``e`` in the layout of the single model (cloned)."""
        out = {n: p.detach()[e].clone() for n, p in zip(self._names, self.params, strict=True)}
        for n in self._buffer_names:
            out[n] = self.buf(n)[e].clone()
        return out

    def load_member_state_dict(self, e: int, state: dict[str, torch.Tensor]) -> None:
        """Copy a state dict in the single model's layout (:meth:`member_state_dict`) into member
        ``e``, in place."""
        with torch.no_grad():
            for n, p in zip(self._names, self.params, strict=True):
                p[e].copy_(state[n])
            for n in self._buffer_names:
                self.buf(n)[e].copy_(state[n])

    def _bn(self, h, prefix):
        """Per-member batch norm: ``h`` is ``(N, E*c, ...)`` with member ``e``'s channel ``j`` at
        ``e*c + j`` (``(1, E*c, B)`` for the MLP, ``(B, E*c, H, W)`` for the CNN); statistics
        are per channel over all other axes, exactly ``nn.BatchNorm`` of each member on its own
        batch. Stacked affine parameters and running stats are ``(E, c)``."""
        if not self.batch_norm:
            return h
        if self.batch_stats_probe:  # batch statistics, running stats untouched (probe option)
            rm = rv = None
        else:
            rm = self.buf(prefix + ".running_mean").view(-1)
            rv = self.buf(prefix + ".running_var").view(-1)
        return F.batch_norm(
            h,
            rm,
            rv,
            self.p(prefix + ".weight").reshape(-1),
            self.p(prefix + ".bias").reshape(-1),
            self.training or self.batch_stats_probe,
            0.1,
            1e-5,
        )

    def _count_batches(self):
        if self.batch_norm and self.training:
            for n in self._buffer_names:
                if n.endswith("num_batches_tracked"):
                    self.buf(n).add_(1)  # kept for state-dict parity; momentum is fixed

    def _leaky(self, h, slope_shape, repeat=1):
        """LeakyReLU with slope ``alpha[e]`` per member: ``h · f``, ``f = [h > 0](1 − α) + α``.

        ``f`` is exactly 1 or ``α`` (``α + fl(1 − α) = 1`` in binary floating point for
        ``α ∈ [0, 1]``), so values and gradient equal ``nn.LeakyReLU``'s (``x`` if ``x > 0``
        else ``α x``; derivative 1 or ``α``). Built from light elementwise kernels (a
        broadcast ``torch.where`` is several times slower on CPU). The slopes are repeated
        ``repeat`` times and shaped ``slope_shape`` to broadcast against ``h``. When all members
        share one slope (always for an ensemble of one), ``F.leaky_relu`` itself (faster).
        """
        if self._one_alpha:
            return F.leaky_relu(h, self.alphas[0])
        key = (h.dtype, h.device, tuple(slope_shape), repeat)
        if key not in self._slope_cache:  # exact slopes in the activation dtype, as nn.LeakyReLU
            slopes = torch.tensor(self.alphas, dtype=h.dtype, device=h.device)
            slopes = slopes.repeat_interleave(repeat).view(slope_shape)
            self._slope_cache[key] = (slopes, 1 - slopes)
        alpha, one_minus = self._slope_cache[key]
        with torch.no_grad():
            factor = (h > 0).to(h.dtype).mul_(one_minus).add_(alpha)
        return h * factor

    def _dropout(self, h, single_shape, arrange):
        """Per-member dropout drawn like ``F.dropout`` on CPU: mask = bernoulli(1−p)/(1−p) from
        the member's generator, one draw of the single model's feature shape ``single_shape``
        per member; ``arrange(list of E masks)`` lays them out like ``h``."""
        if not self.training or all(p == 0.0 for p in self.dropout_p):
            return h
        if self.dropout_generators is None:
            raise RuntimeError("set ensemble.dropout_generators (one torch.Generator per member)")
        masks = []
        for p, g in zip(self.dropout_p, self.dropout_generators, strict=True):
            if p == 0.0:
                masks.append(torch.ones(single_shape, dtype=h.dtype, device=h.device))
            else:
                m = torch.empty(single_shape, dtype=h.dtype, device=h.device).bernoulli_(1 - p, generator=g)
                masks.append(m.div_(1 - p))
        return h * arrange(masks)


class EnsembleMLP(_Ensemble):
    """``E`` :class:`MLP` members trained as one model (see module docstring).

    Inputs ``(E, B, ...)`` (flattened per sample); logits ``(E, B, K)``.

    Internally activations are feature-major, ``(E, w, B)`` contiguous: a linear layer is one
    ``baddbmm`` ``W_e h_e + b_e`` whose output is already laid out for batch norm as
    ``(1, E·w, B)`` (per-member, per-feature statistics over the batch, contiguous rows).
    """

    @classmethod
    def from_members(cls, members: Sequence[MLP]) -> EnsembleMLP:
        self = cls()
        self._init_stack(members)
        return self

    #: Below this batch size the product is taken as ``(h_eᵀ W_eᵀ)ᵀ``: BLAS is several times
    #: faster with the small batch as the row dimension than as the column dimension.
    SMALL_BATCH = 128

    def _linear(self, h, prefix):
        """``(E, d_in, B)`` → ``(E, d_out, B)``: ``W_e h_e + b_e`` for every member."""
        w = self.p(prefix + ".weight")
        bias = self.p(prefix + ".bias") if self.bias else None
        if h.shape[2] < self.SMALL_BATCH:
            return _SmallBatchLinear.apply(h, w, bias)
        if bias is None:
            return torch.bmm(w, h)
        return torch.baddbmm(bias.unsqueeze(2), w, h)

    def _bn_fm(self, h, prefix):
        e, c, b = h.shape
        return self._bn(h.reshape(1, e * c, b), prefix).view(e, c, b)

    def _run(self, x, kind=None):
        e, b = x.shape[:2]
        if e != self.n_members:
            raise ValueError(f"input has {e} members along dim 0, ensemble has {self.n_members}")
        self._count_batches()
        h = self._bn_fm(x.reshape(e, b, -1).transpose(1, 2).contiguous(), "input_norm")
        feats = [h.transpose(1, 2)]
        shape = (e, 1, 1)
        for i in range(self.depth):
            pre = self._bn_fm(self._linear(h, f"blocks.{i}.linear"), f"blocks.{i}.norm")
            post = self._leaky(pre, shape)
            if kind is not None:
                feats.append((post if kind == "post" else pre).transpose(1, 2))
            h = self._dropout(post, (b, post.shape[1]),
                              lambda ms: torch.stack([m.t() for m in ms]))
        return self._linear(h, "head").transpose(1, 2), feats

    def forward(self, x):
        return self._run(x)[0]

    def forward_features(self, x, kind: str = "post"):
        """Logits ``(E, B, K)`` and ``depth + 1`` feature tensors ``(E, B, p_l)``."""
        _check_kind(kind)
        return self._run(x, kind)


class EnsembleCNN(_Ensemble):
    """``E`` :class:`CNN` members trained as one model via grouped convolutions.

    Inputs ``(E, B, C, H, W)``; logits ``(E, B, K)``.
    """

    @classmethod
    def from_members(cls, members: Sequence[CNN]) -> EnsembleCNN:
        self = cls()
        self._init_stack(members)
        self.in_shape = members[0].in_shape
        self.channels = members[0].channels
        return self

    def _conv(self, h, prefix):
        w = self.p(prefix + ".weight")  # (E, c_out, c_in, 3, 3)
        bias = self.p(prefix + ".bias").reshape(-1) if self.bias else None
        return F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias, padding=1, groups=self.n_members)

    def _run(self, x, kind=None):
        e, b = x.shape[:2]
        if e != self.n_members:
            raise ValueError(f"input has {e} members along dim 0, ensemble has {self.n_members}")
        self._count_batches()
        c, hh, ww = x.shape[2:]
        h = x.transpose(0, 1).reshape(b, e * c, hh, ww)
        h = self._bn(h, "input_norm")
        feats = [h.view(b, e, -1).transpose(0, 1)]
        for i in range(self.depth):
            pre = self._bn(self._conv(h, f"blocks.{i}.conv"), f"blocks.{i}.norm")
            post = F.max_pool2d(self._leaky(pre, (1, e * self.channels, 1, 1), self.channels), 2)
            if kind is not None:
                f = post if kind == "post" else pre
                feats.append(f.reshape(b, e, -1).transpose(0, 1))
            up = F.interpolate(post, scale_factor=2.0, mode="nearest")
            h = self._dropout(up, (b, self.channels, hh, ww),
                              lambda ms, shape=up.shape: torch.stack(ms, dim=1).view(shape))
        flat = h.view(b, e, -1).transpose(0, 1)
        w = self.p("head.weight")
        logits = torch.baddbmm(self.p("head.bias").unsqueeze(1), flat, w.transpose(1, 2)) if self.bias \
            else torch.bmm(flat, w.transpose(1, 2))
        return logits, feats

    def forward(self, x):
        return self._run(x)[0]

    def forward_features(self, x, kind: str = "post"):
        """Logits ``(E, B, K)`` and ``depth + 1`` feature tensors ``(E, B, p_l)``."""
        _check_kind(kind)
        return self._run(x, kind)


class _SmallBatchLinear(torch.autograd.Function):
    """``z_e = W_e h_e + b_e`` on feature-major ``h`` ``(E, d_in, B)`` for small ``B``.

    Forward as ``(h_eᵀ W_eᵀ)ᵀ`` and backward as ``∂h_eᵀ = ∂z_eᵀ W_e``, ``∂W_e = ∂z_e h_eᵀ``,
    ``∂b_e = Σ_B ∂z_e``: every product has the small batch as a row or inner dimension (fast
    BLAS shapes) and the weight gradient comes out in the weight's own layout (no copy).
    """

    @staticmethod
    def forward(ctx, h, w, bias):
        ht, wt = h.transpose(1, 2), w.transpose(1, 2)
        zt = torch.bmm(ht, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), ht, wt)
        ctx.save_for_backward(h, w)
        ctx.has_bias = bias is not None
        return zt.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, gz):
        h, w = ctx.saved_tensors
        gh = gw = gb = None
        if ctx.needs_input_grad[0]:
            gh = torch.bmm(gz.transpose(1, 2), w).transpose(1, 2)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(gz, h.transpose(1, 2))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gz.sum(2)
        return gh, gw, gb


def build_model(kind: str, input_shape, *, width: int, depth: int, n_classes: int, alpha: float,
                dropout: float, batch_norm: bool = True, bias: bool = True) -> nn.Module:
    """An :class:`MLP` (``kind="mlp"``, ``width`` hidden units) or :class:`CNN`
    (``kind="cnn"``, ``width`` channels) for inputs of shape ``input_shape`` (no batch dim)."""
    shape = tuple(int(s) for s in input_shape)
    if kind == "mlp":
        d = 1
        for s in shape:
            d *= s
        return MLP(d, width, depth, n_classes, alpha, dropout, batch_norm, bias)
    if kind == "cnn":
        if len(shape) != 3:
            raise ValueError(f"the CNN needs image inputs (C, H, W), got shape {shape}")
        return CNN(shape, width, depth, n_classes, alpha, dropout, batch_norm, bias)
    raise ValueError(f"model must be 'mlp' or 'cnn', got {kind!r}")


def build_ensemble(members: Sequence[nn.Module]) -> _Ensemble:
    """Stack single models (all :class:`MLP` or all :class:`CNN`) into a batched ensemble."""
    if all(isinstance(m, MLP) for m in members):
        return EnsembleMLP.from_members(members)
    if all(isinstance(m, CNN) for m in members):
        return EnsembleCNN.from_members(members)
    raise ValueError("ensemble members must be all MLP or all CNN")
