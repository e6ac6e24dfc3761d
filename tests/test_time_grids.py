"""Time grids of the diffusion and flow samplers (issue 15 item 2a): the named spacings
("uniform", "quadratic", "karras") against their formulas, user arrays in the samplers'
direction (strictly decreasing from the noise end), a ValueError before tracing for a grid
that is not monotone, has NaN or leaves [0, 1], and every sampler accepting a grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.diffusion.fk_steering import potential_steps
from particlekit.diffusion.schedules import KARRAS_SIGMA_MAX, KARRAS_SIGMA_MIN

GM = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], stds=0.6)
FLOW = pk.diffusion.gaussian_mixture_flow([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], stds=0.6)
KEY = jax.random.key(0)
K = 12


def reward(x):
    return x[0]


def _vp_sigma(schedule, t):
    ab = np.asarray(schedule.alpha_bar(np.asarray(t, np.float32)), np.float64)
    return np.sqrt((1 - ab) / ab)


def test_uniform_and_quadratic_spacings():
    np.testing.assert_allclose(pk.diffusion.time_grid(8), np.linspace(0, 1, 9), atol=1e-7)
    grid = pk.diffusion.time_grid(5, 0.1, 0.9, spacing="quadratic")
    np.testing.assert_allclose(grid, 0.1 + 0.8 * (np.arange(6) / 5) ** 2, rtol=1e-6)
    assert grid.dtype == jnp.float32


@pytest.mark.parametrize("schedule", ["linear", "cosine", "flow"])
@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_spacing_is_linear_in_sigma_to_the_one_over_rho(schedule, rho):
    """Karras et al. 2022, eq. 5: sigma_j^(1/rho) equally spaced between sigma(t_max) (80
    for the flow at t = 1) and max(sigma(t_min), 0.002); the ends are t_max and t_min."""
    grid = np.asarray(pk.diffusion.time_grid(10, spacing="karras", rho=rho, schedule=schedule))
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    inner = grid[1:-1].astype(np.float64)
    if schedule == "flow":
        sig, hi = inner / (1 - inner), KARRAS_SIGMA_MAX
    else:
        sched = pk.diffusion.get_schedule(schedule)
        sig, hi = _vp_sigma(sched, inner), float(_vp_sigma(sched, 1.0))
    lo = KARRAS_SIGMA_MIN
    j = np.arange(9, 0, -1)  # grid[i] is level j = 10 - i (levels run from t_max down)
    expected = hi ** (1 / rho) + j / 10 * (lo ** (1 / rho) - hi ** (1 / rho))
    np.testing.assert_allclose(sig ** (1 / rho), expected, rtol=2e-3)


def test_karras_with_interior_ends_hits_both_exactly():
    grid = np.asarray(pk.diffusion.time_grid(6, 0.2, 0.8, spacing="karras"))
    sched = pk.diffusion.linear_schedule()
    levels = _vp_sigma(sched, grid) ** (1 / 7)
    assert grid[0] == np.float32(0.2) and grid[-1] == np.float32(0.8)
    np.testing.assert_allclose(np.diff(levels), np.diff(levels)[0], rtol=5e-3)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_time_of_alpha_bar_inverts_the_schedule(schedule):
    sched = pk.diffusion.get_schedule(schedule)
    t = np.array([0.0, 1e-4, 0.05, 0.3, 0.7, 0.95])
    back = sched.time_of_alpha_bar(np.asarray(sched.alpha_bar(t), np.float64))
    np.testing.assert_allclose(back, t, atol=2e-5)


def test_sampling_grid_resolves_names_and_arrays():
    grid = pk.diffusion.sampling_grid("quadratic", 4)
    np.testing.assert_allclose(grid, [1.0, 0.5625, 0.25, 0.0625, 0.0], rtol=1e-6)
    assert pk.diffusion.sampling_grid("uniform").shape == (101,)  # the default 100 steps
    user = pk.diffusion.sampling_grid(np.array([1.0, 0.4, 0.1, 0.0]), 3)
    np.testing.assert_allclose(user, [1.0, 0.4, 0.1, 0.0])
    flow = pk.diffusion.sampling_grid("karras", 5, schedule="flow")
    assert float(flow[0]) == 1.0 and float(flow[-1]) == 0.0


BAD_GRIDS = {
    "increasing": ([0.0, 0.5, 1.0], "grid\\[::-1\\]"),
    "not monotone": ([1.0, 0.3, 0.5, 0.0], "strictly decreasing"),
    "repeated time": ([1.0, 0.5, 0.5, 0.0], "strictly decreasing"),
    "NaN": ([1.0, np.nan, 0.0], "finite"),
    "inf": ([np.inf, 0.5, 0.0], "finite"),
    "above one": ([1.5, 0.5, 0.0], "\\[0, 1\\]"),
    "negative": ([1.0, 0.5, -0.1], "\\[0, 1\\]"),
    "one time": ([1.0], "at least two"),
    "2-D": ([[1.0, 0.0], [0.5, 0.0]], "1-D"),
    "unknown name": ("cosine", "one of"),
    "not numbers": (["a", "b"], "grid"),
}


@pytest.mark.parametrize("name", sorted(BAD_GRIDS))
def test_bad_grids_are_value_errors(name):
    grid, match = BAD_GRIDS[name]
    with pytest.raises(ValueError, match=match):
        pk.diffusion.sampling_grid(grid)


def test_grid_below_float32_resolution_and_num_steps_mismatch():
    # alpha_bar(1e-12) = 1 in float32: the step from there would divide by zero
    with pytest.raises(ValueError, match="alpha_bar = 1"):
        pk.diffusion.sampling_grid([1.0, 1e-12, 0.0])
    pk.diffusion.sampling_grid([1.0, 1e-12, 0.0], schedule="flow")  # flows have no alpha_bar
    with pytest.raises(ValueError, match="does not match"):
        pk.diffusion.sampling_grid([1.0, 0.5, 0.0], 3)
    with pytest.raises(ValueError, match="num_steps"):
        pk.diffusion.sampling_grid("uniform", 0)


SAMPLERS = {
    "DiffusionModel.sample": lambda g: GM.sample(KEY, 4, grid=g),
    "FlowModel.sample": lambda g: FLOW.sample(KEY, 4, grid=g),
    "fk_steering": lambda g: pk.diffusion.fk_steering(KEY, GM, reward, num_particles=4, grid=g),
    "best_of_n": lambda g: pk.diffusion.best_of_n(KEY, GM, reward, num_samples=4, grid=g),
    "svdd": lambda g: pk.diffusion.svdd(KEY, GM, reward, num_particles=4, grid=g),
    "rollover_budget_forcing": lambda g: pk.diffusion.rollover_budget_forcing(
        KEY, FLOW, reward, budget=50, grid=g
    ),
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("grid", [[0.0, 0.5, 1.0], [1.0, np.nan, 0.0], [1.0, 0.2, 0.5, 0.0]])
def test_every_sampler_checks_its_grid_before_tracing(sampler, grid):
    with pytest.raises(ValueError, match="grid"):
        SAMPLERS[sampler](np.array(grid))


def test_uniform_array_is_the_default_grid():
    """The uniform grid given as an array reproduces the default run exactly (and reuses
    its compilation: the grid is a traced input)."""
    default = GM.sample(KEY, 16, num_steps=K)
    explicit = GM.sample(KEY, 16, grid=pk.diffusion.time_grid(K)[::-1])
    np.testing.assert_array_equal(default, explicit)
    karras = GM.sample(KEY, 16, num_steps=K, grid="karras")
    assert karras.shape == (16, 2) and bool(jnp.all(jnp.isfinite(karras)))
    assert not bool(jnp.all(karras == default))


def test_every_sampler_runs_on_non_uniform_grids():
    """Smoke runs (fk_steering with a Karras grid and FlowModel's ODE are checked against
    closed forms in test_flow_steering.py)."""
    bon = pk.diffusion.best_of_n(KEY, GM, reward, num_samples=16, num_steps=K, grid="karras")
    assert float(bon.best_reward) == float(jnp.max(bon.rewards))  # reuses GM.sample's compile
    quad = pk.diffusion.sampling_grid("quadratic", 4)
    sv = pk.diffusion.svdd(KEY, GM, reward, num_particles=2, num_children=2, grid=quad)
    assert sv.samples.shape == (2, 2) and bool(jnp.all(jnp.isfinite(sv.samples)))
    xs = FLOW.sample(KEY, 16, num_steps=K, grid="quadratic", method="sde")
    assert xs.shape == (16, 2) and bool(jnp.all(jnp.isfinite(xs)))


def test_resample_window_refers_to_the_grid_times():
    grid = pk.diffusion.sampling_grid([1.0, 0.9, 0.8, 0.3, 0.2, 0.1, 0.0])
    mask = potential_steps(6, 1, (0.0, 0.5), grid)  # potentials where s = grid[k + 1] <= 0.5
    assert np.asarray(mask).tolist() == [False, False, True, True, True, True]


def test_fk_corrector_takes_grids():
    """A uniform grid given as an array is the default run (up to the rounding of the
    times); a Karras grid runs, finite; an increasing grid is refused."""
    model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-1.0], [1.0]], [0.5, 0.5])
    run = lambda **kw: pk.diffusion.fk_corrector(  # noqa: E731
        jax.random.key(0), [model, model], [0.5, 0.5], num_particles=64, progress_bar=False, **kw
    )
    default = run(num_steps=20)
    explicit = run(grid=jnp.linspace(1.0, 0.0, 21))
    np.testing.assert_allclose(default.samples, explicit.samples, rtol=1e-5, atol=1e-5)
    karras = run(grid="karras", num_steps=20)
    assert np.all(np.isfinite(np.asarray(karras.samples))) and not bool(karras.failed)
    with pytest.raises(ValueError):
        run(grid=jnp.linspace(0.0, 1.0, 21))
