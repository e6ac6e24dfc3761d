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
