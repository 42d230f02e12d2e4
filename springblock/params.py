"""Parameters of one spring-block chain (SPEC §2), as a frozen, validated dataclass.

Symbols follow the paper (Shi, Pan & Dokmanic 2025) and SPEC §2:

=================  =========================================================================
field              meaning
=================  =========================================================================
``n_blocks``       L, number of blocks = number of hidden layers
``k``              spring stiffness; scalar or one value per spring (L + 1: spring i joins
                   block i-1 and block i, spring 1 is tied to the wall, spring L+1 to y)
``mu_forward``     mu->, friction threshold against motion toward the anchor (scalar or (L,))
``mu_backward``    mu<-, friction threshold against motion toward the wall (scalar or (L,))
``eps``            noise amplitude epsilon (force units in the first-order model; the
                   coefficient of dW in the second-order model)
``lam``            noise decay rate lambda: eps(t) = eps * exp(-lam * t)
``noise_mode``     how the normals xi enter: ``"independent"`` (one N(0,1) per block and step)
                   or ``"shared"`` (one draw per step for all blocks, as in one of the original
                   notebooks)
``eta``            time step: eta of the overdamped update, dt of the Langevin integrator
``y``              anchor position x_{L+1} (the target pulling the last spring; "anchor"
                   always means y, never the pinning rest positions)
``order``          1 = overdamped (SPEC §2.2), 2 = Langevin (SPEC §2.3)
``n_steps``        number of time steps; simulation time t = step * eta
``m``, ``gamma``   mass and viscous damping (second order only)
``kappa``          on-site pinning stiffness kappa_i >= 0 (scalar or (L,)); force
                   -kappa_i (x_i - a_i)
``pin_position``   rest positions a_i of the pinning springs (scalar or (L,))
=================  =========================================================================

Defaults are those of the original first-order experiment (L = 7, y = 1, k = 1, eta = 0.01,
eps = 0.1, mu-> = mu<- = 0.1, 10 000 steps): ``ChainParams()`` is that run;
:meth:`ChainParams.second_order_original` gives the original Langevin notebook's values.

Stability (checked on construction). Let ``lambda_G = max_i (2 (k_i + k_{i+1}) + kappa_i)``, a
Gershgorin bound on the largest eigenvalue of the stiffness matrix (= 4 k for uniform k, no
pinning). First order: ``eta * lambda_G >= 2`` is rejected (the explicit update of the fastest
mode can diverge; this is the SPEC's eta * max k * 4 >= 2); above ``eta * lambda_G > 1`` a
``RuntimeWarning`` is issued (the fastest mode overshoots, alternating in sign every step).
Energy descent without noise holds whenever ``eta * lambda_max < 2`` (see :mod:`springblock.theory`).
Second order (semi-implicit Euler): ``eta^2 * lambda_G / m >= 4`` or ``eta * gamma / m >= 2``
is rejected.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np

from springblock.errors import InputError, check_memory

__all__ = ["ChainParams", "NOISE_MODES", "EPS_FLOOR", "EPS_CEIL", "MAGNITUDE_MAX", "N_STEPS_MAX", "mesh_chain"]

NOISE_MODES = ("independent", "shared")
#: eps(t) below EPS_FLOOR (2^-920, about 1.4e-277) counts as 0 in the kernels and the reference,
#: and eps must be <= EPS_CEIL: in between, the kernels fold eps(t) into the ziggurat's own
#: power-of-two scaling of its candidates without changing a bit of the result
#: (:func:`springblock._rng.draw_lane_scaled`).
EPS_FLOOR = 2.0 ** -920
EPS_CEIL = 1e250
#: Largest magnitude of any float field (k, mu, kappa, pin_position, eps, lam, eta, y, m, gamma),
#: and 1 / MAGNITUDE_MAX the smallest mass m. Why 1e20: one update multiplies at most four such
#: factors (e.g. dt/m * k * y, dt * eps * xi / m with |xi| < 40 from the ziggurat), so a step moves a
#: block by < 40 * 1e80; over N_STEPS_MAX = 1e15 steps a block stays below ~1e97 even as a free
#: random walk (the springs only pull back), the summaries square such numbers (< 1e194) and sum
#: them over chains and blocks (< 1e19 terms): < 1e213, far below the float64 limit 1.8e308. The
#: bound excludes no physics: values beyond 1e20 in units where the defaults are O(1) only
#: overflow (eps=1e200 and y=1e308 gave inf/NaN summaries before it).
MAGNITUDE_MAX = 1e20
#: Most time steps of one simulation (a float64 step count t = step * eta stays exact below 2^53).
N_STEPS_MAX = 10**15

ArrayLike = float | tuple


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _as_float_array(name, value):
    """``value`` as a float64 array if it is a real number or a sequence/array of them — never a
    numeric string, a bool or None (``InputError`` naming the field otherwise)."""
    if isinstance(value, np.ndarray):
        ok = value.dtype.kind in "iuf"
        items = value
    elif isinstance(value, (list, tuple)):
        items = value
        ok = all(_is_number(v) or (isinstance(v, np.ndarray) and v.dtype.kind in "iuf") for v in value)
    else:
        items = None
        ok = _is_number(value)
    if not ok:
        bad = value if items is None or isinstance(value, np.ndarray) else next(
            (v for v in items if not _is_number(v)), value)
        what = f"array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(bad).__name__
        raise InputError(f"ChainParams.{name}={bad!r}: expected a real number (int or float) or a sequence "
                         f"of them, got {what}")
    try:
        return np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, ints beyond float64
        raise InputError(f"ChainParams.{name}={value!r}: not a number or 1-D array of numbers ({e})") from None


def _per(name, value, n, *, positive=False, nonneg=False):
    """Normalise a scalar-or-array field: a float, or a tuple of n floats. Raise naming the field."""
    arr = _as_float_array(name, value)
    if arr.ndim == 0:
        vals = [float(arr)]
        out = float(arr)
    elif arr.ndim == 1:
        if arr.shape[0] != n:
            raise InputError(f"ChainParams.{name} must be a scalar or have {n} entries, got {arr.shape[0]}")
        vals = arr.tolist()
        out = tuple(vals)
    else:
        raise InputError(f"ChainParams.{name} must be a scalar or 1-D, got shape {arr.shape}")
    for i, v in enumerate(vals):
        where = "" if arr.ndim == 0 else f"[{i}]"
        if not math.isfinite(v):
            raise InputError(f"ChainParams.{name}{where}={v!r}: must be finite")
        if abs(v) > MAGNITUDE_MAX:
            raise InputError(f"ChainParams.{name}{where}={v!r}: magnitude above {MAGNITUDE_MAX:g} "
                             "(the simulation would overflow float64; see springblock.params.MAGNITUDE_MAX)")
        if positive and v <= 0:
            raise InputError(f"ChainParams.{name}{where}={v!r}: must be > 0")
        if nonneg and v < 0:
            raise InputError(f"ChainParams.{name}{where}={v!r}: must be >= 0")
    return out


@dataclass(frozen=True)
class ChainParams:
    """One chain's parameters (see the module docstring for every symbol).

    Scalars broadcast; array-valued fields are stored as tuples so the object stays hashable.
    Use :func:`dataclasses.replace` (or :meth:`replace`) for variants; :meth:`grid` for a whole
    parameter grid.

    Types are exact: a float field takes an int or float (or a sequence/array of them), never a
    numeric string, a bool or None; ``n_blocks``, ``n_steps`` and ``order`` take ints only. Every
    float field has magnitude <= :data:`MAGNITUDE_MAX` (1e20) and ``m >= 1e-20``, so no accepted
    chain overflows float64 (see the comment at :data:`MAGNITUDE_MAX`).

    Raises
    ------
    springblock.errors.InputError (a ValueError)
        ``"ChainParams.<field>=<value>: <why>"`` (negative friction, negative noise, L < 1, a
        numeric string, NaN, a value beyond 1e20, an unstable time step, an unknown noise mode, ...).
    springblock.errors.ResourceError
        for an ``n_blocks`` whose arrays exceed the memory budget.
    """

    n_blocks: int = 7  # L: blocks = hidden layers of the network
    k: ArrayLike = 1.0  # spring stiffness (scalar or L+1 values)
    mu_forward: ArrayLike = 0.1  # mu->: threshold against moving toward the anchor
    mu_backward: ArrayLike = 0.1  # mu<-: threshold against moving toward the wall
    eps: float = 0.1  # noise amplitude
    lam: float = 0.0  # noise decay rate: eps(t) = eps exp(-lam t)
    noise_mode: str = "independent"  # "independent" per block, or "shared" by all blocks
    eta: float = 0.01  # time step (eta first order, dt second order)
    y: float = 1.0  # anchor position
    order: int = 1  # 1 overdamped, 2 Langevin
    n_steps: int = 10_000  # time steps; t = step * eta
    m: float = 1.0  # mass (second order)
    gamma: float = 1.0  # viscous damping (second order)
    kappa: ArrayLike = 0.0  # on-site pinning stiffness (scalar or L values)
    pin_position: ArrayLike = 0.0  # pinning rest positions a_i (scalar or L values)

    def __post_init__(self):
        L = self.n_blocks
        if isinstance(L, (bool, np.bool_)) or not isinstance(L, (int, np.integer)) or L < 1:
            raise InputError(f"ChainParams.n_blocks={L!r}: must be an integer >= 1")
        object.__setattr__(self, "n_blocks", int(L))
        # validation builds about a dozen (L + 1,) float64 arrays; refuse absurd L before that
        if L > 10**5:  # (small chains skip reading the budget: ChainParams are built by the thousand)
            check_memory(f"ChainParams.n_blocks={L}", 12 * 8 * (L + 1), hint="use fewer blocks")
        o = self.order
        if isinstance(o, (bool, np.bool_)) or not isinstance(o, (int, np.integer)) or o not in (1, 2):
            raise InputError(f"ChainParams.order={o!r}: must be the integer 1 (overdamped) or 2 (Langevin)")
        object.__setattr__(self, "order", int(o))
        n = self.n_steps
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 1 <= n <= N_STEPS_MAX:
            raise InputError(f"ChainParams.n_steps={n!r}: must be an integer in [1, {N_STEPS_MAX:.0e}]")
        object.__setattr__(self, "n_steps", int(n))
        if not isinstance(self.noise_mode, str) or self.noise_mode not in NOISE_MODES:
            raise InputError(f"ChainParams.noise_mode={self.noise_mode!r}: must be one of {NOISE_MODES}")
        set_ = lambda f, v: object.__setattr__(self, f, v)  # noqa: E731
        set_("k", _per("k", self.k, L + 1, positive=True))
        set_("mu_forward", _per("mu_forward", self.mu_forward, L, nonneg=True))
        set_("mu_backward", _per("mu_backward", self.mu_backward, L, nonneg=True))
        set_("kappa", _per("kappa", self.kappa, L, nonneg=True))
        set_("pin_position", _per("pin_position", self.pin_position, L))
        for name, kw in (("eps", {"nonneg": True}), ("lam", {"nonneg": True}), ("eta", {"positive": True}),
                         ("y", {}), ("m", {"positive": True}), ("gamma", {"nonneg": True})):
            v = getattr(self, name)
            if not _is_number(v) and not (isinstance(v, np.ndarray) and v.ndim == 0):
                _as_float_array(name, v)  # raises for strings, bools, None
                raise InputError(f"ChainParams.{name}={v!r}: must be a scalar")
            set_(name, _per(name, v, 1, **kw))
        if self.m < 1.0 / MAGNITUDE_MAX:
            raise InputError(f"ChainParams.m={self.m!r}: must be >= {1.0 / MAGNITUDE_MAX:g} (1/m multiplies every "
                             "force; see springblock.params.MAGNITUDE_MAX)")
        if self.eps > EPS_CEIL:
            raise InputError(f"ChainParams.eps={self.eps!r}: must be <= {EPS_CEIL:g}")
        self._check_stability()

    # ------------------------------------------------------------------ arrays
    @property
    def k_array(self) -> np.ndarray:
        """Spring stiffnesses, shape ``(L + 1,)``."""
        return np.broadcast_to(np.asarray(self.k, dtype=np.float64), (self.n_blocks + 1,)).copy()

    def _block_array(self, name) -> np.ndarray:
        return np.broadcast_to(np.asarray(getattr(self, name), dtype=np.float64), (self.n_blocks,)).copy()

    @property
    def mu_forward_array(self) -> np.ndarray:
        """mu-> per block, shape ``(L,)``."""
        return self._block_array("mu_forward")

    @property
    def mu_backward_array(self) -> np.ndarray:
        """mu<- per block, shape ``(L,)``."""
        return self._block_array("mu_backward")

    @property
    def kappa_array(self) -> np.ndarray:
        """On-site pinning stiffness per block, shape ``(L,)``."""
        return self._block_array("kappa")

    @property
    def pin_position_array(self) -> np.ndarray:
        """Pinning rest positions per block, shape ``(L,)``."""
        return self._block_array("pin_position")

    @property
    def frictionless(self) -> bool:
        return not (np.any(self.mu_forward_array > 0) or np.any(self.mu_backward_array > 0))

    def stiffness_matrix(self) -> np.ndarray:
        """``K`` with ``F = -K x + b`` for the spring (and pinning) forces, shape ``(L, L)``.

        ``K = tridiag(-k_i, k_i + k_{i+1} + kappa_i, -k_{i+1})`` (``k T`` for uniform k).
        """
        k = self.k_array
        K = np.diag(k[:-1] + k[1:] + self.kappa_array)
        i = np.arange(self.n_blocks - 1)
        K[i, i + 1] = -k[1:-1]
        K[i + 1, i] = -k[1:-1]
        return K

    def load_vector(self) -> np.ndarray:
        """``b`` with ``F = -K x + b``: the anchor pull ``k_{L+1} y`` on the last block and ``kappa_i a_i``."""
        b = self.kappa_array * self.pin_position_array
        b[-1] += self.k_array[-1] * self.y
        return b

    # ------------------------------------------------------------------ checks
    def _check_stability(self):
        k = self.k_array
        lam_g = float(np.max(2.0 * (k[:-1] + k[1:]) + self.kappa_array))
        if self.order == 1:
            r = self.eta * lam_g
            if r >= 2.0:
                raise InputError(
                    f"ChainParams.eta={self.eta!r} is unstable for the overdamped update: "
                    f"eta * max_i(2(k_i + k_(i+1)) + kappa_i) = {r:.4g} >= 2 (for uniform k: need eta * k < 1/2)"
                )
            if r > 1.0:
                warnings.warn(
                    f"ChainParams.eta={self.eta!r}: eta * lambda_G = {r:.3g} > 1, the fastest mode "
                    "overshoots and alternates in sign each step",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            r = self.eta**2 * lam_g / self.m
            if r >= 4.0:
                raise InputError(
                    f"ChainParams.eta={self.eta!r} (dt) is unstable for the Langevin integrator: "
                    f"dt^2 * lambda_G / m = {r:.4g} >= 4"
                )
            if self.eta * self.gamma / self.m >= 2.0:
                raise InputError(
                    f"ChainParams.eta={self.eta!r} (dt) is unstable for the damping: "
                    f"dt * gamma / m = {self.eta * self.gamma / self.m:.4g} >= 2"
                )

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes) -> ChainParams:
        """``dataclasses.replace`` with validation."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {key: (list(v) if isinstance(v, tuple) else v) for key, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ChainParams:
        """Inverse of :meth:`to_dict`; unknown keys raise naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown ChainParams field(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def time(self) -> float:
        """Total simulation time ``n_steps * eta``."""
        return self.n_steps * self.eta

    @classmethod
    def second_order_original(cls, **changes) -> ChainParams:
        """The original Langevin notebook: L=7, m=1, gamma=1, k=0.1, eps=0.003, lam=0.001,
        dt=0.05, T=700 (14 000 steps), mu->=0.003, mu<-=0.004, shared noise, from rest."""
        base = dict(order=2, n_blocks=7, m=1.0, gamma=1.0, k=0.1, eps=0.003, lam=0.001, eta=0.05,
                    n_steps=14_000, mu_forward=0.003, mu_backward=0.004, noise_mode="shared", y=1.0)
        base.update(changes)
        return cls(**base)

    @staticmethod
    def grid(base: ChainParams, **axes) -> np.ndarray:
        """Outer product of parameter values: an object array of ``ChainParams``.

        ``ChainParams.grid(base, mu_forward=[...], eps=[...])`` has shape
        ``(len(mu_forward), len(eps))``, axes in keyword order.
        """
        if not axes:
            raise InputError("ChainParams.grid needs at least one axis, e.g. eps=[0.01, 0.1]")
        names = list(axes)
        values = [list(np.atleast_1d(np.asarray(axes[n], dtype=object))) for n in names]
        for n, v in zip(names, values, strict=True):
            if len(v) == 0:
                raise InputError(f"ChainParams.grid axis {n!r} is empty")
        shape = tuple(len(v) for v in values)
        out = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            changes = {n: values[a][i] for a, (n, i) in enumerate(zip(names, idx, strict=True))}
            out[idx] = dataclasses.replace(base, **changes)
        return out


def mesh_chain(rho, ltilde: float, *, k_ref: float = 1.0, kappa: float = 1.0,
               pin_fraction: float = 0.5, **fields) -> ChainParams:
    """The spring-block counterpart of a leaky ResNet on the mesh ``rho`` (SPEC §5.2).

    One block per residual step (``n_blocks = L = len(rho)``; block ``ℓ`` is the representation
    after step ``ℓ``, the wall the input representation, the anchor the supervision). The chain's
    elastic energy

        E = (k_ref/L) Σ_ℓ [ (x_ℓ − x_{ℓ−1})² / (2 L̃ ρ_ℓ)  +  κ̄ L̃ ρ_ℓ (x_ℓ − a)² / 2 ]

    discretises ``(k_ref/L) ∫ [ (∂_p x)²/(2L̃) + (κ̄ L̃/2)(x − a)² ] dp`` — the leaky ResNet's
    Lagrangian (kinetic energy ``(1/(2L̃))‖∂_p A‖²`` plus potential ``(L̃/2) COI``) with the Cost of
    Identity replaced by a quadratic well around the bottleneck position ``a = pin_fraction · y``. So

    - spring ``ℓ = 1..L`` (step ``ℓ``): ``k_ℓ = k_ref / (L L̃ ρ_ℓ)`` (``∝ 1/(L̃ ρ_ℓ)``); the readout
      spring ``L + 1`` to the anchor has the stiffness of the last step, ``k_{L+1} = k_L``;
    - on-site pinning of block ``ℓ``: ``κ_ℓ = k_ref κ̄ L̃ ρ_ℓ / L`` toward
      ``a = pin_fraction · y`` (``ChainParams.pin_position``).

    The equidistant mesh with ``L̃ = 1`` has ``k_ℓ = k_ref`` (the original chain). Without friction
    and noise the equilibrium deviates from ``a`` in two boundary layers of width
    ``1 / (√κ̄ L̃)`` in depth ``p`` (``u_n = x_n − a`` solves ``u_{n+1} − (2 + κ/k) u_n + u_{n−1} = 0``
    on a uniform mesh): for large ``L̃`` the load is carried at both ends and the middle blocks
    sit still at ``a`` — the bottleneck.

    Parameters
    ----------
    rho : array ``(L,)``
        Layer step sizes, positive, summing to 1.
    ltilde : float > 0
        Effective depth ``L̃``.
    k_ref, kappa, pin_fraction : float
        Stiffness scale, pinning strength ``κ̄ ≥ 0`` and the pinning rest position (the bottleneck)
        as a fraction of ``y``.
    **fields
        Any other :class:`ChainParams` field (friction, ``eps``, ``eta``, ``y``, ``n_steps`` ...).
    """
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim != 1 or rho.size < 1:
        raise InputError(f"mesh_chain: rho must be a non-empty 1-D array, got shape {rho.shape}")
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0) or abs(rho.sum() - 1.0) > 1e-6:
        raise InputError(f"mesh_chain: rho must be positive and sum to 1, got {rho.tolist()}")
    for name, v in (("ltilde", ltilde), ("k_ref", k_ref), ("kappa", kappa), ("pin_fraction", pin_fraction)):
        if not _is_number(v):
            raise InputError(f"mesh_chain: {name}={v!r}: expected a real number, got {type(v).__name__}")
    for name, v, positive in (("ltilde", ltilde, True), ("k_ref", k_ref, True), ("kappa", kappa, False)):
        if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
            raise InputError(f"mesh_chain: {name} must be finite and {'> 0' if positive else '>= 0'}, got {v!r}")
    if not math.isfinite(pin_fraction):
        raise InputError(f"mesh_chain: pin_fraction must be finite, got {pin_fraction!r}")
    for name in ("n_blocks", "k", "kappa", "pin_position"):
        if name in fields:
            raise InputError(f"mesh_chain sets ChainParams.{name} itself; do not pass it")
    L = rho.size
    k = k_ref / (L * ltilde * rho)
    y = float(fields.get("y", 1.0))
    return ChainParams(n_blocks=L, k=tuple(np.append(k, k[-1])), kappa=tuple(k_ref * kappa * ltilde * rho / L),
                       pin_position=pin_fraction * y, **fields)
