"""Kernels against the slow reference, and the invariances of the batched/parallel paths."""

import numba
import numpy as np
import pytest

from springblock import ChainParams, simulate, standard_normals
from springblock import _reference as ref
from springblock.dynamics import _simulate_normals

CASES = [
    ChainParams(n_steps=400, mu_backward=0.15),
    ChainParams(n_steps=400, noise_mode="shared", lam=0.3, kappa=0.2, pin_position=0.3, k=np.linspace(1, 1.3, 8)),
    ChainParams(n_steps=400, eps=0.0, mu_forward=np.linspace(0.01, 0.1, 7), y=0.7),
    ChainParams.second_order_original(n_steps=600),
    ChainParams.second_order_original(n_steps=600, noise_mode="independent", eps=0.05, kappa=0.01),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"order{p.order}-{p.noise_mode}-eps{p.eps}")
def test_kernel_equals_reference(params):
    # 35 chains = groups of 16 + 16 + 3 lanes: check chains in every group and lane position
    res = simulate(params, n_chains=35, seed=11, record_every=37)
    for c in (0, 15, 16, 34):
        z = standard_normals(res.seeds[c], ref.n_normals(params))
        if params.order == 1:
            x, tr = ref.first_order(params, z, record_every=37)
        else:
            x, v, tr = ref.second_order(params, z, record_every=37)
            np.testing.assert_allclose(res.v[c], v, rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.x[c], x, rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.traj[c], tr, rtol=0, atol=1e-12)
    assert list(res.steps) == list(range(0, params.n_steps + 1, 37))


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"order{p.order}-{p.noise_mode}-eps{p.eps}")
def test_injected_normals_reproduce_the_drawing_kernels(params):
    """The kernels on injected normals (the strong-order and overdamped-limit tests' entry point)
    run the production arithmetic: fed each chain's own stream they equal ``simulate`` bit for bit."""
    res = simulate(params, n_chains=19, seed=2, record_every=50, parallel=False)
    xi = np.stack([standard_normals(s, ref.n_normals(params)) for s in res.seeds])
    inj = _simulate_normals(params, xi, record_every=50)
    assert np.array_equal(inj.x, res.x) and np.array_equal(inj.traj, res.traj)
    if params.order == 2:
        assert np.array_equal(inj.v, res.v)
    with pytest.raises(ValueError, match="normals must be"):
        _simulate_normals(params.replace(eps=0.1), xi[:, :5])


def test_numpy_batch_reference_equals_kernel_on_same_noise():
    p = ChainParams(n_steps=200, mu_backward=0.2)
    res = simulate(p, n_chains=4, seed=3)
    noise = np.stack([standard_normals(s, ref.n_normals(p)).reshape(p.n_steps, p.n_blocks) for s in res.seeds], 1)
    np.testing.assert_allclose(ref.numpy_batch_first_order(p, 4, normals=noise), res.x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"order{p.order}-{p.noise_mode}-eps{p.eps}")
def test_chain_results_do_not_depend_on_grouping(params):
    """Chains run 16 at a time (SIMD lanes): chain c must not depend on n_chains, on which group
    it falls in or on the padding of the last group. chain_seeds(seed, n)[:13] is the same for
    any n >= 13, so chain c < 13 has the same seed in both runs."""
    a = simulate(params, n_chains=13, seed=4, record_every=50)
    b = simulate(params, n_chains=40, seed=4, record_every=50)
    assert np.array_equal(a.x, b.x[:13]) and np.array_equal(a.traj, b.traj[:13])
    if params.order == 2:
        assert np.array_equal(a.v, b.v[:13])
    # and within a grid: point p's chains sit in groups of their own (21 = 16 + 5 lanes per point)
    grid = np.array([params, params.replace(y=0.5)], dtype=object)
    g = simulate(grid, n_chains=21, seed=4)
    for p in range(2):
        assert np.array_equal(g.x[p, :13], simulate(grid[p], n_chains=13, seed=4).x)


def test_serial_parallel_and_thread_count_identical():
    grid = ChainParams.grid(ChainParams(n_steps=300), mu_backward=[0.1, 0.2], eps=[0.05, 0.2])
    a = simulate(grid, n_chains=50, seed=5, parallel=True)
    b = simulate(grid, n_chains=50, seed=5, parallel=False)
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        c = simulate(grid, n_chains=50, seed=5, parallel=True)
    finally:
        numba.set_num_threads(n)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.x, c.x)


def test_batched_grid_equals_points_one_by_one():
    grid = ChainParams.grid(ChainParams(n_steps=300), mu_forward=[0.0, 0.05, 0.1], eps=[0.02, 0.3])
    res = simulate(grid, n_chains=20, seed=9, record_every=100)
    assert res.x.shape == (3, 2, 20, 7) and res.traj.shape == (3, 2, 20, 4, 7)
    for idx in np.ndindex(3, 2):
        one = simulate(grid[idx], n_chains=20, seed=9, record_every=100)
        assert np.array_equal(res.x[idx], one.x) and np.array_equal(res.traj[idx], one.traj)


def test_seeds_change_results_and_independent_streams_differ():
    p = ChainParams(n_steps=200)
    assert not np.array_equal(simulate(p, 5, seed=1).x, simulate(p, 5, seed=2).x)
    grid = np.array([p, p], dtype=object)
    crn = simulate(grid, 5, seed=1)
    ind = simulate(grid, 5, seed=1, common_random_numbers=False)
    assert np.array_equal(crn.x[0], crn.x[1]) and not np.array_equal(ind.x[0], ind.x[1])


def test_initial_state_and_mismatched_grid_errors():
    p = ChainParams(n_steps=10, eps=0.0, mu_forward=10.0, mu_backward=10.0)
    x0 = np.linspace(0.1, 0.7, 7)
    assert np.array_equal(simulate(p, 2, x0=x0).x[1], x0)
    with pytest.raises(ValueError, match="n_blocks"):
        simulate([ChainParams(), ChainParams(n_blocks=5)], 2)
    with pytest.raises(ValueError, match="x0"):
        simulate(p, 2, x0=np.zeros(3))
    with pytest.raises(ValueError, match="n_chains"):
        simulate(p, 0)
    with pytest.raises(ValueError, match="record_every"):
        simulate(p, 2, record_every=0)
    with pytest.raises(ValueError, match="seed"):
        simulate(p, 2, seed=-1)
    # a first-order chain has no velocity: v0 is refused (it used to be ignored silently)
    with pytest.raises(ValueError, match="v0 was given, but first-order"):
        simulate(p, 2, v0=np.ones(7))
    # ... and used by a second-order one: no force, no damping, no friction: x = dt v0 after one step
    q = ChainParams.second_order_original(n_steps=1, eps=0.0, mu_forward=0.0, mu_backward=0.0, y=0.0, gamma=0.0)
    r = simulate(q, 1, v0=np.ones(7))
    assert np.array_equal(r.x[0], np.full(7, 0.05)) and np.array_equal(r.v[0], np.ones(7))


def test_noise_below_the_floor_counts_as_zero_in_kernels_and_reference():
    # eps(t) = exp(-400 t) falls below EPS_FLOOR = 2^-920 between steps 159 and 160 (t = 0.01 step):
    # the kernels (which fold eps(t) into the ziggurat's scaling) and the reference must agree bit
    # for bit on both sides of it, first and second order.
    from springblock.params import EPS_FLOOR

    p1 = ChainParams(n_steps=300, eps=1.0, lam=400.0, mu_forward=0.0, mu_backward=0.0)
    assert ref._eps_t(p1, 159) >= EPS_FLOOR and ref._eps_t(p1, 160) == 0.0
    p2 = ChainParams.second_order_original(n_steps=300, noise_mode="independent", eps=1.0, lam=80.0)  # dt = 0.05
    assert ref._eps_t(p2, 159) >= EPS_FLOOR and ref._eps_t(p2, 160) == 0.0
    for p in (p1, p2):
        res = simulate(p, n_chains=17, seed=5, record_every=1)
        for c in (0, 16):
            z = standard_normals(res.seeds[c], ref.n_normals(p))
            tr = ref.first_order(p, z, record_every=1)[1] if p.order == 1 else ref.second_order(p, z, record_every=1)[2]
            assert np.array_equal(res.traj[c], tr)
    # A constant amplitude below the floor, on a chain at rest with no force: every position must stay
    # exactly 0 (unflushed, the folded scaling would add subnormal noise).
    p3 = ChainParams(n_steps=50, eps=2.0**-921, y=0.0, mu_forward=0.0, mu_backward=0.0)
    assert ref._eps_t(p3, 0) == 0.0
    res = simulate(p3, n_chains=16, seed=6, record_every=1)
    assert np.count_nonzero(res.traj) == 0 and np.count_nonzero(res.x) == 0


@pytest.mark.parametrize("eps", [1e251, np.inf, -1e-3])
def test_noise_amplitude_out_of_range_is_an_error(eps):
    with pytest.raises(ValueError, match="eps"):
        ChainParams(eps=eps)
