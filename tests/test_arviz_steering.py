"""ArviZ converters of the diffusion steering results (``pk.arviz.from_fk_steering``,
``from_fk_corrector``, ``from_pdds``, ``from_svdd``, ``from_best_of_n``): groups, dims and
values equal to the result's fields, batches of runs as chains, equally weighted posterior draws.

Small analytic models (a 2-D Gaussian mixture), a few particles and steps. Each check runs on
the installed ArviZ (``InferenceData`` for arviz < 1) and, with ``arviz_major_version``
patched to 1, on the ``xarray.DataTree`` that arviz >= 1 uses."""

import functools

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arviz_checks import check_container, group, groups, stack

import particlekit as pk

N, K = 16, 8
MODEL = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
M1 = pk.diffusion.gaussian_mixture([1.0], [[-1.0, 0.0]], stds=1.0)
M2 = pk.diffusion.gaussian_mixture([1.0], [[1.0, 0.0]], stds=1.0)


def reward(x):
    return x[0]


@functools.cache
def fk_runs():
    # one compilation, three runs (the difference potential, resampling every other step)
    return [
        pk.diffusion.fk_steering(
            jax.random.key(s),
            MODEL,
            reward,
            num_particles=N,
            num_steps=K,
            lmbda=2.0,
            resample_every=2,
            progress_bar=False,
        )  # fmt: skip
        for s in range(3)
    ]


@functools.cache
def fkc_run():
    return pk.diffusion.product_of_experts(
        jax.random.key(5), M1, M2, num_particles=N, num_steps=K, progress_bar=False
    )


def normalised(log_w):
    log_w = np.asarray(log_w, np.float64)
    return log_w - np.logaddexp.reduce(log_w)


# ------------------------------------------------------------------------------ FK steering
def test_fk_steering_groups_dims_and_values(api):
    res = fk_runs()[0]
    data = pk.arviz.from_fk_steering(res)
    check_container(data, api)
    # weighted particles only: no posterior without a key
    assert groups(data) == {"sample_stats", "weighted_particles", "steps"}
    weighted = group(data, "weighted_particles")
    assert weighted["x"].dims == ("chain", "particle", "x_dim_0")
    assert weighted["x"].shape == (1, N, 2)
    np.testing.assert_array_equal(weighted["x"].values[0], res.samples)
    np.testing.assert_array_equal(weighted["reward"].values[0], res.rewards)
    assert weighted["log_weight"].dims == ("chain", "particle")
    np.testing.assert_allclose(weighted["log_weight"].values[0], normalised(res.log_weights),
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(np.exp(weighted["log_weight"].values).sum(-1), 1.0, rtol=1e-5)
    stats = group(data, "sample_stats")
    assert stats["log_marginal_likelihood"].dims == ("chain",)
    np.testing.assert_array_equal(stats["log_marginal_likelihood"].values, [res.log_evidence])
    np.testing.assert_array_equal(stats["failed"].values, [False])
    steps = group(data, "steps")
    for name, field in [
        ("ess", res.ess),
        ("resampled", res.resampled),
        ("intermediate_reward", res.intermediate_rewards),
        ("num_nonfinite", res.num_nonfinite),
        ("num_nonfinite_intermediate", res.num_nonfinite_intermediate),
    ]:
        assert steps[name].dims == ("chain", "step")
        assert steps[name].shape == (1, K)
        np.testing.assert_array_equal(steps[name].values[0], field)
    # resampling every other step: flags only at odd steps (never at the last one)
    assert not steps["resampled"].values[0, ::2].any()
    assert data.attrs["particlekit_result"] == "FKSteeringResult"
    assert data.attrs["num_particles"] == N


def test_fk_steering_posterior_draws(api):
    res = fk_runs()[0]
    data = pk.arviz.from_fk_steering(res, key=jax.random.key(7), num_draws=40)
    assert groups(data) == {"posterior", "sample_stats", "weighted_particles", "steps"}
    post = group(data, "posterior")
    assert post["x"].dims == ("chain", "draw", "x_dim_0") and post["x"].shape == (1, 40, 2)
    # every draw is one of the particles, and its reward is that particle's reward
    samples, rewards = np.asarray(res.samples), np.asarray(res.rewards)
    match = np.all(post["x"].values[0][:, None, :] == samples[None], axis=-1)  # (draw, N)
    assert match.any(axis=1).all()
    idx = match.argmax(axis=1)
    stats = group(data, "sample_stats")
    assert stats["reward"].dims == ("chain", "draw")
    np.testing.assert_array_equal(stats["reward"].values[0], rewards[idx])
    assert stats["log_marginal_likelihood"].dims == ("chain",)
    # systematic resampling: each particle drawn floor or ceil of 40 W_i times
    w = np.exp(normalised(res.log_weights))
    counts = np.bincount(idx, minlength=N)
    assert np.all(np.abs(counts - 40 * w) < 1 + 1e-4)
    # the same key gives the same draws; the default number of draws is N
    again = pk.arviz.from_fk_steering(res, key=jax.random.key(7), num_draws=40)
    np.testing.assert_array_equal(group(again, "posterior")["x"].values, post["x"].values)
    default = pk.arviz.from_fk_steering(res, key=jax.random.key(8))
    assert group(default, "posterior")["x"].shape == (1, N, 2)
    if api == "installed":  # ArviZ's own summaries work on the equally weighted draws
        table = az.summary(default, var_names=["x"], kind="stats")
        assert len(table) == 2 and np.all(np.isfinite(np.asarray(table["mean"], float)))


def test_fk_steering_batch_of_runs_is_chains(api):
    runs = fk_runs()
    batch = stack(runs)
    data = pk.arviz.from_fk_steering(batch, key=jax.random.key(0))
    weighted = group(data, "weighted_particles")
    assert weighted["x"].shape == (3, N, 2) and weighted["log_weight"].shape == (3, N)
    assert group(data, "steps")["ess"].shape == (3, K)
    assert group(data, "posterior")["x"].shape == (3, N, 2)
    assert group(data, "sample_stats")["reward"].shape == (3, N)
    for c, res in enumerate(runs):
        np.testing.assert_array_equal(weighted["x"].values[c], res.samples)
        np.testing.assert_array_equal(group(data, "steps")["ess"].values[c], res.ess)
        np.testing.assert_array_equal(
            group(data, "sample_stats")["log_marginal_likelihood"].values[c], res.log_evidence
        )
        # each chain's draws are its own particles
        post = group(data, "posterior")["x"].values[c]
        assert np.all(np.any(np.all(post[:, None] == np.asarray(res.samples)[None], -1), 1))
    nested = jax.tree.map(lambda a: a[None], batch)
    with pytest.raises(ValueError, match="batch"):
        pk.arviz.from_fk_steering(nested)


def test_fk_steering_failed_run_and_bad_arguments():
    res = fk_runs()[0]
    dead = res._replace(
        log_weights=jnp.full((N,), -jnp.inf),
        log_evidence=jnp.array(-jnp.inf),
        failed=jnp.array(True),
    )
    data = pk.arviz.from_fk_steering(dead, key=jax.random.key(0))
    assert np.all(np.isnan(group(data, "posterior")["x"].values))
    assert np.all(np.isnan(group(data, "sample_stats")["reward"].values))
    assert group(data, "sample_stats")["failed"].values.tolist() == [True]
    assert np.isneginf(group(data, "sample_stats")["log_marginal_likelihood"].values).all()
    with pytest.raises(ValueError, match="num_draws"):
        pk.arviz.from_fk_steering(res, key=jax.random.key(0), num_draws=0)
    with pytest.raises(ValueError, match="num_draws"):
        pk.arviz.from_fk_steering(res, key=jax.random.key(0), num_draws=2.5)
    with pytest.raises(ValueError, match="key"):
        pk.arviz.from_fk_steering(res, key=0)


# ------------------------------------------------------------------------------ FK correctors
@pytest.mark.filterwarnings("ignore:fk_corrector. the time steps are too coarse")  # K = 8
def test_fk_corrector_groups_dims_and_values(api):
    res = fkc_run()
    data = pk.arviz.from_fk_corrector(res)
    check_container(data, api)
    assert groups(data) == {"sample_stats", "weighted_particles", "steps"}
    weighted = group(data, "weighted_particles")
    assert weighted["x"].dims == ("chain", "particle", "x_dim_0")
    np.testing.assert_array_equal(weighted["x"].values[0], res.samples)
    assert "reward" not in weighted
    np.testing.assert_allclose(weighted["log_weight"].values[0], normalised(res.log_weights),
                               atol=1e-5)  # fmt: skip
    steps = group(data, "steps")
    assert set(steps.data_vars) == {"ess", "resampled", "num_nonfinite"}
    for name in ("ess", "resampled", "num_nonfinite"):
        assert steps[name].dims == ("chain", "step") and steps[name].shape == (1, K)
        np.testing.assert_array_equal(steps[name].values[0], getattr(res, name))
    stats = group(data, "sample_stats")
    np.testing.assert_array_equal(stats["log_marginal_likelihood"].values, [res.log_evidence])
    np.testing.assert_array_equal(stats["failed"].values, [res.failed])
    assert data.attrs["particlekit_result"] == "FKCResult"
    # equally weighted draws, and a batch of runs as chains
    drawn = pk.arviz.from_fk_corrector(stack([res, res]), key=jax.random.key(1), num_draws=5)
    assert group(drawn, "posterior")["x"].shape == (2, 5, 2)
    assert "reward" not in group(drawn, "sample_stats")
    assert group(drawn, "steps")["ess"].shape == (2, K)


# ------------------------------------------------------------------------------ PDDS
def test_pdds_groups_dims_and_values(api):
    def log_density(x):  # an unnormalised 2-D Gaussian mixture
        return jnp.logaddexp(-jnp.sum((x - 1.5) ** 2), -jnp.sum((x + 1.5) ** 2))

    res = pk.diffusion.pdds(jax.random.key(3), log_density, dim=2, num_particles=N,
                            num_steps=K, num_mcmc_steps=1, progress_bar=False)  # fmt: skip
    data = res.to_inference_data()
    check_container(data, api)
    assert groups(data) == {"sample_stats", "weighted_particles", "steps"}
    weighted = group(data, "weighted_particles")
    assert weighted["x"].dims == ("chain", "particle", "x_dim_0")
    np.testing.assert_array_equal(weighted["x"].values[0], res.samples)
    np.testing.assert_allclose(weighted["log_weight"].values[0], normalised(res.log_weights),
                               atol=1e-5)  # fmt: skip
    steps = group(data, "steps")
    names = {"ess", "resampled", "acceptance_rate", "num_nonfinite", "num_nonfinite_intermediate"}
    assert set(steps.data_vars) == names
    for name in names - {"acceptance_rate"}:
        assert steps[name].dims == ("chain", "step") and steps[name].shape == (1, K + 1)
        np.testing.assert_array_equal(steps[name].values[0], getattr(res, name))
    # step 0 is the initial weighting (no MCMC), step k the k-th reverse step
    rates = steps["acceptance_rate"].values[0]
    assert np.isnan(rates[0])
    np.testing.assert_array_equal(rates[1:], res.acceptance_rate)
    assert np.all((rates[1:] > 0) & (rates[1:] <= 1))
    stats = group(data, "sample_stats")
    np.testing.assert_array_equal(stats["log_marginal_likelihood"].values, [res.log_evidence])
    assert data.attrs["particlekit_result"] == "PDDSResult"
    # equally weighted draws are particles, and a batch of runs is chains
    drawn = pk.arviz.from_pdds(stack([res, res]), key=jax.random.key(1), num_draws=5)
    post = group(drawn, "posterior")["x"].values
    assert post.shape == (2, 5, 2)
    assert np.all(np.any(np.all(post[0][:, None] == np.asarray(res.samples)[None], -1), 1))
    assert group(drawn, "steps")["acceptance_rate"].shape == (2, K + 1)


# ------------------------------------------------------------------------------ baselines
def test_svdd_groups_dims_and_values(api):
    res = pk.diffusion.svdd(jax.random.key(2), MODEL, reward, num_particles=4, num_children=3,
                            num_steps=K, progress_bar=False)  # fmt: skip
    data = pk.arviz.from_svdd(res)
    check_container(data, api)
    assert groups(data) == {"posterior", "sample_stats"}
    post = group(data, "posterior")
    assert post["x"].dims == ("chain", "draw", "x_dim_0") and post["x"].shape == (1, 4, 2)
    np.testing.assert_array_equal(post["x"].values[0], res.samples)
    stats = group(data, "sample_stats")
    assert stats["reward"].dims == ("chain", "draw")
    np.testing.assert_array_equal(stats["reward"].values[0], res.rewards)
    batch = pk.arviz.from_svdd(stack([res, res, res]))
    assert group(batch, "posterior")["x"].shape == (3, 4, 2)
    assert group(batch, "sample_stats")["reward"].shape == (3, 4)
    if api == "installed":
        assert len(az.summary(batch, var_names=["x"], kind="stats")) == 2


def test_best_of_n_groups_dims_and_values(api):
    res = pk.diffusion.best_of_n(jax.random.key(3), MODEL, reward, num_samples=12, num_steps=K)
    data = pk.arviz.from_best_of_n(res)
    check_container(data, api)
    assert groups(data) == {"posterior", "sample_stats", "best"}
    post = group(data, "posterior")
    assert post["x"].dims == ("chain", "draw", "x_dim_0") and post["x"].shape == (1, 12, 2)
    np.testing.assert_array_equal(post["x"].values[0], res.samples)
    stats = group(data, "sample_stats")
    np.testing.assert_array_equal(stats["reward"].values[0], res.rewards)
    assert stats["is_best"].dims == ("chain", "draw")
    assert stats["is_best"].values.sum() == 1
    i = int(np.argmax(stats["is_best"].values[0]))
    np.testing.assert_array_equal(post["x"].values[0, i], res.best)
    assert stats["best_reward"].dims == ("chain",)
    np.testing.assert_array_equal(stats["best_reward"].values, [res.best_reward])
    best = group(data, "best")
    assert best["x"].dims == ("chain", "x_dim_0")
    np.testing.assert_array_equal(best["x"].values[0], res.best)
    # a NaN reward is never the pick (as in best_of_n); a batch of runs is chains
    rewards = res.rewards.at[0].set(jnp.nan)
    nan_res = res._replace(rewards=rewards, best_reward=jnp.nanmax(rewards))
    batch = pk.arviz.from_best_of_n(stack([res, nan_res]))
    flags = group(batch, "sample_stats")["is_best"].values
    assert flags.shape == (2, 12) and flags.sum(1).tolist() == [1, 1] and not flags[1, 0]
    assert group(batch, "best")["x"].shape == (2, 2)


def test_from_rollover_groups_and_values():
    model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0], [2.0]], stds=0.5)
    res = pk.diffusion.rollover_budget_forcing(
        jax.random.key(0), model, lambda x: x[0], num_steps=5, budget=20, num_samples=4,
        progress_bar=False,
    )  # fmt: skip
    idata = res.to_inference_data()
    np.testing.assert_array_equal(idata["posterior"]["x"].values[0], np.asarray(res.samples))
    np.testing.assert_array_equal(
        idata["sample_stats"]["num_evaluations"].values[0], np.asarray(res.num_evaluations)
    )
    assert idata["steps"]["evaluations"].shape == (1, 4, 5)
    np.testing.assert_array_equal(
        idata["steps"]["evaluations"].values[0], np.asarray(res.evaluations_per_step)
    )
