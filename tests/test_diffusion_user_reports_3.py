"""Regression tests from a third user-style hunt in the diffusion subsystem (flow models,
the shipped digit models, rollover, the baselines). Each test reproduces one reported
problem and fails without its fix:

* ``test_flow_grid_starting_below_one_is_a_value_error``: ``FlowModel.sample`` started
  from ``N(0, I)`` at the first time of any grid, but that is the law of ``x_1`` only;
  for ``N(1.5, 0.3^2)`` data a grid from ``t = 0.5`` gave mean 1.06 and sd 0.57 without a
  word. A grid starting below 1 is now a ``ValueError``.
* ``test_flow_noise_scale_may_be_traced``: ``flow.sample(..., noise_scale=eta)`` inside
  ``jax.jit`` with a traced ``eta`` was a ``ConcretizationTypeError`` (``float()`` of a
  tracer); the value was also a static argument (a recompilation per value).
* ``test_flow_sde_warns_when_the_first_step_overshoots``: Euler–Maruyama of the flow SDE
  with ``noise_scale=20`` and 10 steps gave sd 4446 for ``N(1.5, 0.3^2)`` data, and
  ``noise_scale=200`` with 100 steps NaN, with no sign of trouble. At ``t = 1`` the drift
  is ``(1 + eta) x - E[x_0]`` for any data: ``h (1 + eta) > 1`` now warns.
* ``test_svdd_alpha_may_be_traced``: the same for ``svdd(..., alpha=a)`` under ``jax.jit``,
  although ``alpha`` was already a traced input of the compiled search.
* ``test_rollover_budget_may_be_an_array_or_traced``: ``rollover_budget_forcing`` refused
  ``budget=jnp.int32(50)`` and any traced budget under ``jax.jit`` ("budget must be an
  integer"), although the docstring calls the budget a traced value.
* ``test_svdd_warns_about_nan_final_rewards``: ``svdd`` with a reward that is NaN returned
  NaN rewards (and unsteered, blindly picked particles) without a word; ``best_of_n``
  warned in that case.
* ``test_baselines_name_the_flow_rewrite``: ``best_of_n`` / ``svdd`` of a ``FlowModel``
  said only "model must be a DiffusionModel" (``rollover_budget_forcing`` takes flows);
  the error now names ``flow.as_diffusion_model()``.
* ``test_digits_models_load_under_x64``: with ``jax_enable_x64`` every shipped model failed
  to load (equinox ``RuntimeError``: float64 skeleton against the float32 file).
* ``test_corrupted_weight_files_are_clear_value_errors``: a truncated or empty weight file
  raised equinox's bare ``TreePathError`` ("Error at leaf with path ..."), a file with
  trailing bytes and a file of NaN parameters loaded silently.
"""

import os
import warnings
from importlib import resources

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.diffusion import pretrained

KEY = jax.random.key(0)
MU, SD = 1.5, 0.3
FLOW = pk.diffusion.gaussian_mixture_flow([1.0], [[MU]], stds=SD)  # N(1.5, 0.3^2) data
REWARD = lambda x: x[0]  # noqa: E731


@pytest.mark.parametrize("start", [0.5, 0.9])
def test_flow_grid_starting_below_one_is_a_value_error(start):
    grid = jnp.linspace(start, 0.0, 51)
    with pytest.raises(ValueError, match="must start at the noise end"):
        FLOW.sample(KEY, 16, grid=grid)
    with pytest.raises(ValueError, match="must start at the noise end"):
        FLOW.sample(KEY, 16, grid=grid, method="sde")


def test_flow_grid_from_one_matches_the_exact_marginal():
    """The accepted grid (from t = 1) ends at the exact N(1.5, 0.3^2) (Euler, 200 steps),
    also when it stops at t = 0.5: x_0.5 ~ N(0.75, 0.25 + 0.0225)."""
    n = 8000
    x = FLOW.sample(KEY, n, grid=jnp.linspace(1.0, 0.0, 201))[:, 0]
    assert abs(float(x.mean()) - MU) < 5 * SD / np.sqrt(n)
    assert abs(float(x.std()) - SD) < 0.02
    half = FLOW.sample(KEY, n, grid=jnp.linspace(1.0, 0.5, 101))[:, 0]
    sd_half = np.sqrt(0.25 * SD**2 + 0.25)
    assert abs(float(half.mean()) - 0.5 * MU) < 5 * sd_half / np.sqrt(n)
    assert abs(float(half.std()) - sd_half) < 0.02


def test_flow_noise_scale_may_be_traced():
    sample = jax.jit(lambda k, eta: FLOW.sample(k, 64, num_steps=10, method="sde", noise_scale=eta))
    traced = sample(KEY, 0.5)
    eager = FLOW.sample(KEY, 64, num_steps=10, method="sde", noise_scale=0.5)
    np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="noise_scale"):  # still checked when concrete
        FLOW.sample(KEY, 4, method="sde", noise_scale=-1.0)


@pytest.mark.parametrize("noise_scale,num_steps", [(20.0, 10), (200.0, 100), (1.0, 1)])
def test_flow_sde_warns_when_the_first_step_overshoots(noise_scale, num_steps):
    with pytest.warns(RuntimeWarning, match="too coarse"):
        x = FLOW.sample(KEY, 256, num_steps=num_steps, method="sde", noise_scale=noise_scale)
    assert not (bool(jnp.all(jnp.isfinite(x))) and abs(float(jnp.std(x)) - SD) < 0.1)


def test_flow_sde_fine_steps_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        x = FLOW.sample(KEY, 2000, num_steps=100, method="sde", noise_scale=5.0)[:, 0]
        FLOW.sample(KEY, 4, num_steps=1)  # the ODE: one Euler step is E[x_0], no overshoot
    assert abs(float(x.mean()) - MU) < 0.05 and abs(float(x.std()) - SD) < 0.03


def test_svdd_alpha_may_be_traced():
    model = FLOW.as_diffusion_model()
    search = jax.jit(
        lambda k, a: pk.diffusion.svdd(
            k, model, REWARD, num_particles=8, num_children=2, num_steps=5, alpha=a,
            progress_bar=False,
        ).samples
    )  # fmt: skip
    eager = pk.diffusion.svdd(
        KEY, model, REWARD, num_particles=8, num_children=2, num_steps=5, alpha=0.5,
        progress_bar=False,
    ).samples  # fmt: skip
    np.testing.assert_allclose(search(KEY, 0.5), eager, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        pk.diffusion.svdd(KEY, model, REWARD, num_particles=8, alpha=-1.0)


def test_rollover_budget_may_be_an_array_or_traced():
    rbf = lambda k, b: pk.diffusion.rollover_budget_forcing(  # noqa: E731
        k, FLOW, REWARD, num_steps=4, budget=b, num_samples=3, progress_bar=False
    )
    eager = rbf(KEY, 20)
    for budget in (jnp.int32(20), np.int64(20)):
        np.testing.assert_array_equal(rbf(KEY, budget).samples, eager.samples)
    traced = jax.jit(rbf)(KEY, jnp.int32(20))
    np.testing.assert_allclose(traced.samples, eager.samples, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(traced.num_evaluations, eager.num_evaluations)
    small = jax.jit(rbf)(KEY, jnp.int32(2))  # unchecked under jit: acts as num_steps + 1
    np.testing.assert_array_equal(small.evaluations_per_step, np.ones((3, 4), np.int32))
    for bad in (20.0, jnp.float32(20.0), True, jnp.int32(3)):
        with pytest.raises(ValueError, match="budget"):
            rbf(KEY, bad)


def test_svdd_warns_about_nan_final_rewards():
    model = FLOW.as_diffusion_model()
    nan_left = lambda x: jnp.where(x[0] < MU, jnp.nan, x[0])  # noqa: E731
    with pytest.warns(RuntimeWarning, match="final rewards are NaN"):
        res = pk.diffusion.svdd(
            KEY, model, nan_left, num_particles=64, num_children=1, num_steps=5,
            progress_bar=False,
        )  # fmt: skip
    assert bool(jnp.any(jnp.isnan(res.rewards)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pk.diffusion.svdd(KEY, model, REWARD, num_particles=8, num_steps=5, progress_bar=False)


def test_baselines_name_the_flow_rewrite():
    with pytest.raises(ValueError, match="as_diffusion_model"):
        pk.diffusion.best_of_n(KEY, FLOW, REWARD, num_samples=4)
    with pytest.raises(ValueError, match="as_diffusion_model"):
        pk.diffusion.svdd(KEY, FLOW, REWARD, num_particles=4)


@pytest.fixture
def fresh_cache():
    pretrained._load.cache_clear()
    yield
    pretrained._load.cache_clear()


def test_digits_models_load_under_x64(fresh_cache):
    x = jnp.linspace(-1.0, 1.0, 64)
    logits32 = pretrained.digits_classifier()(x)
    pretrained._load.cache_clear()
    with jax.enable_x64(True):
        flow = pk.diffusion.digits_flow()
        clf = pk.diffusion.digits_classifier()
        model = pk.diffusion.digits_diffusion()
        xs = flow.sample(KEY, 2, num_steps=4)
        assert xs.shape == (2, 64) and xs.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(xs)))
        assert model.sample(KEY, 2, num_steps=4).shape == (2, 64)
        logits64 = clf(jnp.asarray(x, jnp.float64))
        assert logits64.dtype == jnp.float64
    np.testing.assert_allclose(logits64, logits32, rtol=1e-4, atol=1e-4)


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return os.fspath(path)


def test_corrupted_weight_files_are_clear_value_errors(tmp_path, monkeypatch, fresh_cache):
    shipped = resources.files("particlekit.diffusion").joinpath("weights", "digits_flow.eqx")
    data = shipped.read_bytes()
    nan_net = jax.tree.map(
        lambda p: jnp.full_like(p, jnp.nan) if eqx.is_inexact_array(p) else p,
        pretrained.flow_network(KEY),
    )
    nan_path = tmp_path / "nan.eqx"
    eqx.tree_serialise_leaves(nan_path, nan_net)
    cases = {
        _write(tmp_path, "truncated.eqx", data[: len(data) // 2]): "cannot be read",
        _write(tmp_path, "empty.eqx", b""): "cannot be read",
        _write(tmp_path, "trailing.eqx", data + b"\x00"): "longer than",
        os.fspath(nan_path): "NaN or infinite",
    }
    for path, match in cases.items():
        monkeypatch.setitem(pretrained.WEIGHT_FILES, "flow", path)
        pretrained._load.cache_clear()
        with pytest.raises(ValueError, match=match):
            pk.diffusion.digits_flow()
    monkeypatch.setitem(pretrained.WEIGHT_FILES, "flow", os.fspath(tmp_path / "missing.eqx"))
    pretrained._load.cache_clear()
    with pytest.raises(FileNotFoundError, match="missing"):
        pk.diffusion.digits_flow()


def test_em_sampler_warns_when_its_first_step_overshoots():
    """``sampler="em"`` with 3 uniform steps on the linear schedule gave samples of sd 4.4
    for data of sd 0.5, silently: near ``t = 1`` one Euler-Maruyama step multiplies ``x`` by
    ``1 - b dt / 2 = 1 - 20 / 6``. A ``RuntimeWarning`` now says so before tracing, in
    ``DiffusionModel.sample`` and the samplers that take ``sampler=``; the default 100
    steps (``b dt / 2 = 0.1``) and the DDPM kernel stay silent."""
    normal = pk.diffusion.gaussian_mixture([1.0], [[0.0]], stds=0.5)
    with pytest.warns(RuntimeWarning, match="too coarse for sampler='em'"):
        xs = normal.sample(jax.random.key(0), 2000, num_steps=3, sampler="em")
    assert float(jnp.std(xs)) > 2.0  # why the warning is needed (exact 0.5)
    reward = lambda x: -jnp.sum(x**2)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="fk_steering: the time steps are too coarse"):
        pk.diffusion.fk_steering(jax.random.key(1), normal, reward, num_particles=8,
                                 num_steps=3, sampler="em")  # fmt: skip
    with pytest.warns(RuntimeWarning, match="best_of_n: the time steps are too coarse"):
        pk.diffusion.best_of_n(jax.random.key(1), normal, reward, num_samples=8, num_steps=3,
                               sampler="em")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        xs = normal.sample(jax.random.key(0), 2000, sampler="em")
        assert abs(float(jnp.std(xs)) - 0.5) < 0.05
        normal.sample(jax.random.key(0), 8, num_steps=3, sampler="ddpm")
