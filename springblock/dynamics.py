"""Simulate ensembles of spring-block chains over grids of parameter points.

>>> from springblock import ChainParams, simulate
>>> res = simulate(ChainParams(), n_chains=1000, seed=1)        # the original first-order run
>>> res.load_curve()                                             # ensemble-mean y - x_l, shape (8,)
>>> grid = ChainParams.grid(ChainParams(), mu_backward=[0.1, 0.2], eps=[0.02, 0.1, 0.3])
>>> res = simulate(grid, n_chains=500, seed=1, record_every=100)  # one batched call, 6 points
>>> res.summary()["regime"]                                      # shape (2, 3)

Noise and seeding. Chain ``c`` of every parameter point is seeded with the same word
``chain_seeds(seed, n_chains)[c]`` by default (*common random numbers*): points of a grid then
differ only through their parameters, which makes phase diagrams and fitted objectives smooth,
and a grid simulated in one call equals its points simulated one by one. Pass
``common_random_numbers=False`` for independent streams at every point. Every chain generates its
own normals (xoshiro256++ + ziggurat, :mod:`springblock._rng`), so results are identical for any
number of threads and do not depend on ``n_chains`` or on how the kernels group chains into SIMD
lanes (:mod:`springblock._kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from springblock import _kernels
from springblock._rng import ZIGGURAT, fill_normals
from springblock.errors import InputError, check_memory
from springblock.observables import (
    REGIME_TOL,
    chain_energy,
    curvature,
    linearity,
    load_curve,
    loads,
    normalized_curvature,
    regime,
)
from springblock.params import ChainParams

__all__ = ["simulate", "SimulationResult", "chain_seeds", "standard_normals"]


def chain_seeds(seed: int, n_chains: int, n_points: int = 1, common: bool = True) -> np.ndarray:
    """Per-chain 64-bit seed words, shape ``(n_points, n_chains)``.

    Derived with :class:`numpy.random.SeedSequence` from ``seed``; with ``common=True`` every
    point gets the same ``n_chains`` words (common random numbers), otherwise all words differ.
    """
    if n_chains < 1:
        raise InputError(f"n_chains={n_chains!r}: must be >= 1")
    check_memory(f"chain_seeds: n_points={n_points} x n_chains={n_chains}", 16 * n_points * n_chains,
                 hint="use fewer chains or points")
    seed = _check_seed(seed)
    ss = np.random.SeedSequence(seed)
    if common:
        words = ss.generate_state(n_chains, dtype=np.uint64)
        return np.ascontiguousarray(np.broadcast_to(words, (n_points, n_chains)))
    return ss.generate_state(n_points * n_chains, dtype=np.uint64).reshape(n_points, n_chains)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed={seed!r}: must be a non-negative integer")
    return int(seed)


def standard_normals(seed_word, n: int) -> np.ndarray:
    """The first ``n`` standard normals of the chain seeded with ``seed_word`` (a uint64 word).

    This is exactly the stream the kernels consume: per step, one draw per block in block order
    (independent noise) or one draw per step (shared noise); none when ``eps == 0``.
    """
    out = np.empty(int(n))
    fill_normals(np.uint64(seed_word), out, *ZIGGURAT)
    return out


def _stack_params(points) -> dict:
    """Per-point parameter arrays for the kernels from a flat sequence of :class:`ChainParams`."""
    points = list(points)
    if not points:
        raise InputError("no parameter points given")
    for p in points:
        if not isinstance(p, ChainParams):
            raise TypeError(f"expected ChainParams, got {type(p).__name__}")
    first = points[0]
    for name in ("n_blocks", "order", "n_steps"):
        vals = sorted({getattr(p, name) for p in points})
        if len(vals) > 1:
            raise InputError(f"all points of one call must share {name}; got {vals}")
    return dict(
        k=np.stack([p.k_array for p in points]),
        muf=np.stack([p.mu_forward_array for p in points]),
        mub=np.stack([p.mu_backward_array for p in points]),
        kappa=np.stack([p.kappa_array for p in points]),
        pin_position=np.stack([p.pin_position_array for p in points]),
        eps=np.array([p.eps for p in points]),
        lam=np.array([p.lam for p in points]),
        eta=np.array([p.eta for p in points]),
        y=np.array([p.y for p in points]),
        shared=np.array([p.noise_mode == "shared" for p in points]),
        inv_m=np.array([1.0 / p.m for p in points]),
        gamma_m=np.array([p.gamma / p.m for p in points]),
        n_blocks=first.n_blocks,
        order=first.order,
        n_steps=first.n_steps,
    )


@dataclass
class SimulationResult:
    """Final states (and optional trajectories) of an ensemble over a parameter grid.

    Attributes
    ----------
    params : object array of ChainParams, shape ``grid_shape`` (``()`` for one point)
    x : final positions, shape ``grid_shape + (n_chains, L)``
    v : final velocities (second order) or None
    traj : positions at the recorded steps, ``grid_shape + (n_chains, R, L)``, or None
    steps : recorded step numbers ``(R,)`` (0, r, 2r, ...); times = steps * eta per point
    seeds : per-chain seed words, ``grid_shape + (n_chains,)``
    """

    params: np.ndarray
    x: np.ndarray
    v: np.ndarray | None
    traj: np.ndarray | None
    steps: np.ndarray
    seeds: np.ndarray
    grid_shape: tuple = field(default=())

    @property
    def y(self) -> np.ndarray:
        """Anchor positions, shape ``grid_shape``."""
        return np.vectorize(lambda p: p.y, otypes=[float])(self.params)

    def times(self) -> np.ndarray:
        """Simulation times of the recorded steps, ``grid_shape + (R,)``."""
        eta = np.vectorize(lambda p: p.eta, otypes=[float])(self.params)
        return eta[..., None] * self.steps

    def load_curve(self, mean: bool = True) -> np.ndarray:
        """``y - x_l`` with the wall prepended: ``grid_shape + (L+1,)`` (ensemble mean) or per chain."""
        y = self.y
        if mean:
            return load_curve(self.x.mean(axis=-2), y)
        return load_curve(self.x, y[..., None])

    def loads(self, mean: bool = True) -> np.ndarray:
        """Loads ``d_l = e_l``, ``l = 1..L``: ``grid_shape + (L,)`` (ensemble mean) or per chain.

        The elongations of the first ``L`` springs; the anchor spring's ``e_{L+1}`` is the curve's
        end value, not a load (all ``L + 1``: :func:`springblock.observables.elongations`).
        """
        return loads(self.load_curve(mean))

    def trajectory_curve(self) -> np.ndarray:
        """Ensemble-mean load curve at each recorded step: ``grid_shape + (R, L+1)``."""
        if self.traj is None:
            raise InputError("no trajectory recorded: call simulate(..., record_every=r)")
        return load_curve(self.traj.mean(axis=-3), self.y[..., None])

    def energy(self) -> np.ndarray:
        """Elastic energy of every chain, ``grid_shape + (n_chains,)``."""
        out = np.empty(self.x.shape[:-1])
        for idx in np.ndindex(*self.grid_shape):
            p = self.params[idx]
            out[idx] = chain_energy(self.x[idx], p.y, p.k_array, p.kappa_array, p.pin_position_array)
        return out

    def summary(self, tol: float = REGIME_TOL) -> dict:
        """Shape numbers of the ensemble-mean curve at every point (arrays of ``grid_shape``)."""
        c = self.load_curve()
        return {
            "linearity": linearity(c),
            "curvature": curvature(c),
            "normalized_curvature": normalized_curvature(c),
            "regime": regime(c, tol),
        }


def simulate(params, n_chains: int = 1000, seed: int = 0, *, record_every: int | None = None,
             x0=None, v0=None, common_random_numbers: bool = True, parallel: bool = True) -> SimulationResult:
    """Run ``n_chains`` chains at every parameter point in one batched kernel call.

    Parameters
    ----------
    params : ChainParams, or an array/sequence of them (any shape; see :meth:`ChainParams.grid`).
        All points must share ``n_blocks``, ``order`` and ``n_steps``.
    n_chains : chains per point.
    seed : non-negative integer; see the module docstring for the seeding scheme.
    record_every : record positions every this many steps (step 0 included), or None.
    x0, v0 : initial positions / velocities broadcasting to ``grid_shape + (n_chains, L)``;
        default 0 (blocks at rest at the wall). ``v0`` only for second-order chains (a
        first-order chain has no velocity; passing one raises).
    common_random_numbers : same noise stream for chain c at every point (default True).
    parallel : run over cores (results are identical to ``parallel=False``).

    Returns
    -------
    SimulationResult

    Raises
    ------
    springblock.errors.InputError
        a bad ``n_chains``, ``seed``, ``record_every``, ``x0``/``v0`` (naming it).
    springblock.errors.ResourceError
        before allocating, if seeds, states and trajectory (:func:`simulation_bytes`) would exceed
        :func:`springblock.errors.memory_budget`; the message names the sizes.
    """
    if isinstance(n_chains, (bool, np.bool_)) or not isinstance(n_chains, (int, np.integer)) or n_chains < 1:
        raise InputError(f"n_chains={n_chains!r}: must be an integer >= 1")
    grid = _as_grid(params)
    first = _stack_params(grid.reshape(-1)[:1])
    _check_allocation(grid.size, int(n_chains), first["n_blocks"], first["n_steps"], first["order"],
                      _check_record_every(record_every), x0 is not None, v0 is not None)
    seeds = chain_seeds(seed, int(n_chains), grid.size, common_random_numbers).reshape(-1)
    return _run(grid, int(n_chains), seeds, None, record_every, x0, v0, parallel)


def _simulate_normals(params: ChainParams, normals, *, record_every: int | None = None, x0=None,
                      v0=None) -> SimulationResult:
    """The production kernels on given normals (serial; for tests of the kernels' numerics).

    ``normals`` : ``(n_chains, n)`` with ``n >= springblock._reference.n_normals(params)``; chain ``c``
    consumes row ``c`` in the kernels' order (per step one normal per block, or one per step for
    shared noise). With ``standard_normals(seed_word, n)`` as a row the chain equals the chain of
    :func:`simulate` with that seed word, bit for bit. ``seeds`` of the result are 0.
    """
    if not isinstance(params, ChainParams):
        raise TypeError(f"expected one ChainParams, got {type(params).__name__}")
    xi = np.asarray(normals, dtype=np.float64)
    per_step = 0 if params.eps == 0.0 else (1 if params.noise_mode == "shared" else params.n_blocks)
    need = params.n_steps * per_step
    if xi.ndim != 2 or xi.shape[1] < need or not np.all(np.isfinite(xi[:, :need])):
        raise InputError(f"normals must be finite, of shape (n_chains, >= {need}), got {xi.shape}")
    xi = np.ascontiguousarray(xi)
    grid = _as_grid(params)
    return _run(grid, xi.shape[0], np.zeros(xi.shape[0], dtype=np.uint64), xi, record_every, x0, v0, False)


def _check_record_every(record_every):
    if record_every is None:
        return None
    if isinstance(record_every, (bool, np.bool_)) or not isinstance(record_every, (int, np.integer)) \
            or record_every < 1:
        raise InputError(f"record_every={record_every!r}: must be an integer >= 1 (or None)")
    return int(record_every)


def simulation_bytes(n_points: int, n_chains: int, n_blocks: int, n_steps: int, order: int = 1,
                     record_every: int | None = None, x0: bool = False, v0: bool = False) -> int:
    """Bytes :func:`simulate` allocates: seed words (and SeedSequence's pool of the same size),
    positions (and velocities) ``(P C, L)``, the broadcast copies of ``x0``/``v0``, and the
    trajectory ``(P C, R, L)`` with ``R = n_steps // record_every + 1`` records — all float64."""
    pc = n_points * n_chains
    records = 0 if record_every is None else n_steps // record_every + 1
    states = (1 + (order == 2)) * (1 + 0.5 * (x0 or v0))  # x, v; + copies of x0/v0 (rough)
    return int(8 * pc * (2 + n_blocks * (states + records)))


def _check_allocation(P, C, L, n_steps, order, record_every, x0=False, v0=False):
    """``ResourceError`` naming the sizes if the allocation exceeds the memory budget."""
    nbytes = simulation_bytes(P, C, L, n_steps, order, record_every, x0, v0)
    rec = "" if record_every is None else f" x {n_steps // record_every + 1} records (record_every={record_every})"
    check_memory(f"simulate: {P} point(s) x n_chains={C} x n_blocks={L}{rec}", nbytes,
                 hint="use fewer chains or points" + (", or a larger record_every" if rec else ""))


def _as_grid(params) -> np.ndarray:
    grid = np.empty((), dtype=object)
    if isinstance(params, ChainParams):
        grid[()] = params
        return grid
    grid = np.asarray(params, dtype=object)
    if grid.size == 0:
        raise InputError("params is empty")
    return grid


def _run(grid, C, seeds, normals, record_every, x0, v0, parallel) -> SimulationResult:
    """Validate, allocate and call the kernel for every point of ``grid`` (``C`` chains each);
    ``normals`` None: the chains draw their own, seeded by ``seeds``; else the injected drivers."""
    shape = grid.shape
    flat = list(grid.reshape(-1))
    a = _stack_params(flat)
    P, L, n_steps = len(flat), a["n_blocks"], a["n_steps"]
    record_every = _check_record_every(record_every)
    _check_allocation(P, C, L, n_steps, a["order"], record_every, x0 is not None, v0 is not None)
    if record_every is not None:
        steps = np.arange(0, n_steps + 1, int(record_every))
    else:
        steps = np.zeros(0, dtype=np.int64)
    if v0 is not None and a["order"] == 1:
        raise InputError("v0 was given, but first-order (order=1, overdamped) chains have no velocity; "
                         "pass v0 only with order=2")

    def initial(val, name):
        if val is None:
            return np.zeros((P * C, L))
        arr = np.asarray(val, dtype=np.float64)
        try:
            arr = np.broadcast_to(arr, shape + (C, L))
        except ValueError:
            raise InputError(f"{name} with shape {arr.shape} does not broadcast to {shape + (C, L)}") from None
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} contains non-finite values")
        return np.array(arr.reshape(P * C, L), dtype=np.float64, order="C")  # a writable copy

    x = initial(x0, "x0")
    traj = np.empty((P * C, len(steps), L)) if len(steps) else np.empty((P * C, 0, L))
    common = (a["k"], a["muf"], a["mub"], a["kappa"], a["pin_position"], a["eps"], a["lam"], a["eta"], a["y"],
              a["shared"])
    noise = seeds if normals is None else normals  # the drivers' third argument
    v = None
    if a["order"] == 1:
        if normals is not None:
            kern = _kernels.first_order_injected
        else:
            kern = _kernels.first_order if parallel else _kernels.first_order_serial
        kern(x, traj, noise, C, *common, n_steps, int(record_every or 1), *ZIGGURAT)
    else:
        v = initial(v0, "v0")
        if normals is not None:
            kern = _kernels.second_order_injected
        else:
            kern = _kernels.second_order if parallel else _kernels.second_order_serial
        kern(x, v, traj, noise, C, *common, a["inv_m"], a["gamma_m"], n_steps, int(record_every or 1), *ZIGGURAT)
        v = v.reshape(shape + (C, L))
    return SimulationResult(
        params=grid,
        x=x.reshape(shape + (C, L)),
        v=v,
        traj=traj.reshape(shape + (C, len(steps), L)) if len(steps) else None,
        steps=steps,
        seeds=seeds.reshape(shape + (C,)),
        grid_shape=shape,
    )
