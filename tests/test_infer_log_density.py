"""pk.infer.SMC on plain JAX log-densities (LogDensityModel) against exact answers and
against the same model written in NumPyro."""

import jax
import jax.numpy as jnp
import jax.scipy.stats.norm as norm
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import particlekit as pk

C = 6  # independent chains; tolerances are 5 standard errors across them


def _regression(seed=1, n=30, d=2, sigma=0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5]) + sigma * rng.normal(size=n)).astype(np.float32)
    post_cov = np.linalg.inv(np.eye(d) + x.T @ x / sigma**2)
    post_mean = post_cov @ x.T @ y / sigma**2
    log_z = multivariate_normal(np.zeros(n), sigma**2 * np.eye(n) + x @ x.T).logpdf(y)
    return jnp.asarray(x), jnp.asarray(y), post_mean, post_cov, log_z


def _log_prior(theta, x, y):
    return jnp.sum(norm.logpdf(theta["w"]))


def _log_likelihood(theta, x, y):
    return jnp.sum(norm.logpdf(y, x @ theta["w"], 0.5))


def _check(smc, post_mean, post_cov, log_z):
    w = np.asarray(smc.get_samples(group_by_chain=True)["w"])  # (C, N, 2)
    le = np.asarray(smc.log_evidence, np.float64)
    se = le.std(ddof=1) / np.sqrt(C)
    assert abs(le.mean() - log_z) < 5 * se + 0.5 * le.var(ddof=1) + 1e-3, (le, log_z)
    means = w.mean(1)
    se_mean = means.std(0, ddof=1) / np.sqrt(C)
    assert np.all(np.abs(means.mean(0) - post_mean) < 5 * se_mean + 1e-3)
    sds = w.std(1)
    se_sd = sds.std(0, ddof=1) / np.sqrt(C)
    assert np.all(np.abs(sds.mean(0) - np.sqrt(np.diag(post_cov))) < 5 * se_sd + 1e-3)


def test_log_density_model_matches_exact_posterior_and_evidence():
    x, y, post_mean, post_cov, log_z = _regression()
    model = pk.infer.LogDensityModel(
        _log_prior,
        _log_likelihood,
        sample_prior=lambda key, x, y: {"w": jax.random.normal(key, (2,))},
    )
    smc = pk.infer.SMC(model, num_particles=1000, num_chains=C)
    smc.run(jax.random.key(0), x, y)
    _check(smc, post_mean, post_cov, log_z)
    # the same result object and ArviZ groups as for a NumPyro model
    idata = smc.to_inference_data()
    assert idata.posterior["w"].shape == (C, 1000, 2)
    assert idata.smc_stages["correlation"].shape[0] == C
    assert np.isfinite(smc.diagnostics.log_likelihood).all()


def test_log_density_model_from_an_initial_population():
    x, y, post_mean, post_cov, log_z = _regression()
    prior_draws = {"w": jax.random.normal(jax.random.key(7), (C * 1000 * 4, 2))}
    model = pk.infer.LogDensityModel(_log_prior, _log_likelihood, initial_population=prior_draws)
    smc = pk.infer.SMC(model, num_particles=1000, num_chains=C)
    smc.run(jax.random.key(1), x, y)
    _check(smc, post_mean, post_cov, log_z)


def test_log_density_model_array_theta_and_recompile_free_rerun():
    model = pk.infer.LogDensityModel(
        log_prior=lambda theta, y: norm.logpdf(theta),
        log_likelihood=lambda theta, y: jnp.sum(norm.logpdf(y, theta)),
        sample_prior=lambda key, y: jax.random.normal(key),
    )
    smc = pk.infer.SMC(model, num_particles=200, num_chains=2)
    smc.run(jax.random.key(0), jnp.array([0.5, 1.0]))
    smc.run(jax.random.key(1), jnp.array([2.5, 3.0]))
    assert len(smc._compiled) == 1
    # posterior N(11/6, 1/3)
    assert abs(float(smc.get_samples()["theta"].mean()) - 11 / 6) < 0.15


def test_log_density_model_errors():
    def lp(theta):
        return -0.5 * theta**2

    with pytest.raises(ValueError, match="exactly one of sample_prior"):
        pk.infer.SMC(pk.infer.LogDensityModel(lp, lp), num_particles=10).run(jax.random.key(0))
    with pytest.raises(ValueError, match="fewer than num_particles"):
        pk.infer.SMC(
            pk.infer.LogDensityModel(lp, lp, initial_population=jnp.zeros(5)), num_particles=10
        )
    with pytest.raises(ValueError, match="NumPyro model"):
        pk.infer.SMC("model")


def test_log_density_model_nested_and_tuple_theta():
    """A tuple or nested-dict ``theta`` ("any pytree of floating arrays"): one named site
    per leaf (``site_names``) in the samples, the summary and ArviZ, with the conjugate
    posterior mean of ``mu = w + b[0]`` (``y_i ~ N(mu, 1)``, independent ``N(0, 1)``
    priors, so ``mu ~ N(0, 2)``, ``E[mu | y] = sum(y) / (n + 1/2)`` and by symmetry
    ``E[w | y] = E[b0 | y] = sum(y) / (2 n + 1)``; posterior sd of each 0.76)."""
    y = jnp.array([0.5, 1.0, 1.5])
    model = pk.infer.LogDensityModel(
        log_prior=lambda th, y: norm.logpdf(th[0]["w"]) + jnp.sum(norm.logpdf(th[1])),
        log_likelihood=lambda th, y: jnp.sum(norm.logpdf(y, th[0]["w"] + th[1][0])),
        sample_prior=lambda key, y: (
            {"w": jax.random.normal(key)},
            jax.random.normal(jax.random.fold_in(key, 1), (2,)),
        ),
    )
    smc = pk.infer.SMC(model, num_particles=500, num_chains=2)
    smc.run(jax.random.key(0), y)
    samples = smc.get_samples()
    assert set(samples) == {"theta.0.w", "theta.1"}
    assert samples["theta.0.w"].shape == (1000,) and samples["theta.1"].shape == (1000, 2)
    exact = float(jnp.sum(y)) / 7  # standard error about 0.76 / sqrt(500) = 0.034
    assert abs(float(samples["theta.0.w"].mean()) - exact) < 0.15
    assert abs(float(samples["theta.1"][:, 0].mean()) - exact) < 0.15
    assert "theta.1" in smc.to_inference_data().posterior
    assert pk.infer.log_density.site_names({"a": {"w": 0.0}, "b": 1.0}) == ("a.w", "b")


def test_log_density_model_densities_must_be_scalars():
    def lp(theta, y):
        return norm.logpdf(theta)

    def sample(key, y):
        return jax.random.normal(key)

    y = jnp.array([0.5, 1.0, 1.5])
    for bad in (
        pk.infer.LogDensityModel(lp, lambda theta, y: norm.logpdf(y, theta), sample),
        pk.infer.LogDensityModel(lambda theta, y: norm.logpdf(y, theta), lp, sample),
    ):
        with pytest.raises(ValueError, match=r"must return a scalar .* got shape \(3,\)"):
            pk.infer.SMC(bad, num_particles=10).run(jax.random.key(0), y)


@pytest.mark.parametrize("value", [-1.0, 0.0, 1.0, 1.5, float("nan")])
def test_target_acceptance_outside_the_unit_interval_is_a_value_error(value):
    model = pk.infer.LogDensityModel(
        lambda theta: norm.logpdf(theta), lambda theta: 0.0 * theta, lambda key: 0.0 * key
    )
    with pytest.raises(ValueError, match="target_acceptance must be in"):
        pk.infer.SMC(model, num_particles=10, target_acceptance=value)
