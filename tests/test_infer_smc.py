"""pk.infer.SMC against exact answers (conjugate models) and on a bimodal posterior.

Each run uses ``num_chains`` independent SMC runs (vmapped, one compile), i.e. independent
seeds; the Monte Carlo standard error of an estimate is estimated from the spread across
those runs, and tolerances are 5 standard errors (plus, for log Z, the Jensen bias
``-Var(log Z_hat) / 2`` of the log of an unbiased estimator).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.special import gammaln
from scipy.stats import multivariate_normal

import particlekit as pk

K = 5.0  # standard errors
C = 8  # independent runs (chains) per test


def assert_within_mc_error(per_chain, exact, *, log_z=False):
    per_chain = np.asarray(per_chain, np.float64)
    assert np.all(np.isfinite(per_chain))
    c = per_chain.shape[0]
    se = np.std(per_chain, axis=0, ddof=1) / np.sqrt(c)
    bias = 0.5 * np.var(per_chain, axis=0, ddof=1) if log_z else 0.0
    err = np.abs(np.mean(per_chain, axis=0) - exact)
    assert np.all(err <= K * se + bias + 1e-3), (np.mean(per_chain, axis=0), exact, se)


# ----------------------------------------------------------------- Normal mean
def normal_mean_model(y, sigma=1.0, m0=0.5, s0=2.0):
    mu = numpyro.sample("mu", dist.Normal(m0, s0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_normal_mean_rwm():
    y = np.random.default_rng(0).normal(1.0, 1.0, size=20).astype(np.float32)
    n, sigma, m0, s0 = y.size, 1.0, 0.5, 2.0
    post_var = 1.0 / (1.0 / s0**2 + n / sigma**2)
    post_mean = post_var * (m0 / s0**2 + y.sum() / sigma**2)
    log_z = multivariate_normal(
        np.full(n, m0), sigma**2 * np.eye(n) + s0**2 * np.ones((n, n))
    ).logpdf(y)

    smc = pk.infer.SMC(normal_mean_model, num_particles=1000, kernel="rwm", num_chains=C)
    smc.run(jax.random.key(0), jnp.asarray(y))
    mu = np.asarray(smc.get_samples(group_by_chain=True)["mu"])
    assert mu.shape == (C, 1000)
    assert_within_mc_error(smc.log_evidence, log_z, log_z=True)
    assert_within_mc_error(mu.mean(1), post_mean)
    assert_within_mc_error(mu.var(1), post_var)
    d = smc.diagnostics
    assert not d.failed.any() and not d.reached_max_stages.any()
    assert np.all(d.stages.temperature[np.arange(C), d.num_stages - 1] == 1.0)
    assert np.all(
        np.diff(d.stages.temperature, axis=1)[~np.isnan(np.diff(d.stages.temperature, axis=1))] > 0
    )
    # one compile per model shape: new data of the same shape reuses the executable
    smc.run(jax.random.key(1), jnp.asarray(y) + 1.0)
    assert len(smc._compiled) == 1
    assert float(np.mean(smc.get_samples()["mu"])) > post_mean + 0.5


# ----------------------------------------------------- Bayesian linear regression
def linreg_model(x, y, alpha=1.0, sigma=0.5):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(x.shape[1]), alpha).to_event(1))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


@pytest.mark.parametrize("kernel", ["mala", "imh"])
def test_linear_regression(kernel):
    rng = np.random.default_rng(1)
    n, d, alpha, sigma = 30, 2, 1.0, 0.5
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5]) + sigma * rng.normal(size=n)).astype(np.float32)
    post_cov = np.linalg.inv(np.eye(d) / alpha**2 + x.T @ x / sigma**2)
    post_mean = post_cov @ x.T @ y / sigma**2
    log_z = multivariate_normal(np.zeros(n), sigma**2 * np.eye(n) + alpha**2 * x @ x.T).logpdf(y)

    smc = pk.infer.SMC(linreg_model, num_particles=1000, kernel=kernel, num_chains=C)
    smc.run(jax.random.key(2), jnp.asarray(x), jnp.asarray(y))
    w = np.asarray(smc.get_samples(group_by_chain=True)["w"])
    assert_within_mc_error(smc.log_evidence, log_z, log_z=True)
    assert_within_mc_error(w.mean(1), post_mean)
    assert_within_mc_error(w.var(1), np.diag(post_cov))
    acc = smc.diagnostics.stages.acceptance_rate
    assert np.all(np.nan_to_num(acc) <= 1.0)
    if kernel == "imh":
        # a Gaussian posterior: the fitted independent proposal is accepted most of the time
        assert np.nanmean(acc) > 0.6


def test_imh_proposal_density_is_the_fitted_gaussian():
    """The IMH correction term must be log N(x; mean, cov) up to a constant: a sign or
    transpose slip would bias the posterior without failing the run."""
    from particlekit.infer import moves

    rng = np.random.default_rng(0)
    mean = jnp.asarray(rng.normal(size=3), jnp.float32)
    a = rng.normal(size=(3, 3))
    cov = jnp.asarray(a @ a.T + np.eye(3), jnp.float32)
    sample, log_q = moves._mixture_proposal(jnp.zeros((1, 1)), mean[None, None], cov[None, None])
    xs = rng.normal(size=(2, 3)).astype(np.float32)
    q = [float(log_q(jnp.asarray(x), 0)) for x in xs]
    exact = [multivariate_normal(np.asarray(mean), np.asarray(cov)).logpdf(x) for x in xs]
    np.testing.assert_allclose(q[0] - q[1], exact[0] - exact[1], rtol=1e-4, atol=1e-4)
    draws = jax.vmap(lambda k: sample(k, 0))(jax.random.split(jax.random.key(0), 20000))
    np.testing.assert_allclose(np.cov(np.asarray(draws).T), np.asarray(cov), atol=0.15)


def test_imh_mixture_proposal_sampler_and_density():
    """Two stacked 3-component mixtures (one per fit label): draws pick each component with
    its weight (the component comes from an extra normal compared with normal quantiles) and
    the density is the scipy mixture density up to its constant, for both labels."""
    from particlekit.infer import moves

    mix = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    centres = np.array([-10.0, 0.0, 10.0])
    means = np.stack([np.stack([np.full(2, c + f) for c in centres]) for f in (0.0, 1.0)])
    covs = np.broadcast_to(np.eye(2) * np.array([1.0, 0.5, 2.0])[:, None, None], (2, 3, 2, 2))
    sample, log_q = moves._mixture_proposal(
        jnp.log(jnp.asarray(mix, jnp.float32)),
        jnp.asarray(means, jnp.float32),
        jnp.asarray(covs, jnp.float32),
    )
    xs = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32) * 8.0
    n = 40_000
    for fit in (0, 1):
        exact = [
            np.log(
                sum(
                    mix[fit, k] * multivariate_normal(means[fit, k], covs[fit, k]).pdf(x)
                    for k in range(3)
                )
            )
            for x in xs
        ]
        # log q leaves out the constant -D/2 log(2 pi), which cancels in the MH ratio
        got = [float(log_q(jnp.asarray(x), fit)) - np.log(2 * np.pi) for x in xs]
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-3)
        keys = jax.random.split(jax.random.key(fit), n)
        draws = np.asarray(jax.vmap(lambda k, f=fit: sample(k, f))(keys))
        component = np.argmin(np.abs(draws[:, :1] - means[fit, :, 0]), axis=1)
        freq = np.bincount(component, minlength=3) / n
        np.testing.assert_allclose(freq, mix[fit], atol=4 * np.sqrt(0.25 / n))


# ------------------------------------------------------------ Gamma precision
def precision_model(y, a=2.0, b=1.0):
    tau = numpyro.sample("tau", dist.Gamma(a, b))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(0.0, 1.0 / jnp.sqrt(tau)), obs=y)


def test_gamma_precision_hmc():
    y = np.random.default_rng(2).normal(0.0, 0.7, size=25).astype(np.float32)
    n, a, b = y.size, 2.0, 1.0
    s = float(np.sum(y.astype(np.float64) ** 2))
    a_post, b_post = a + n / 2, b + s / 2
    log_z = (
        a * np.log(b)
        - gammaln(a)
        + gammaln(a_post)
        - a_post * np.log(b_post)
        - 0.5 * n * np.log(2 * np.pi)
    )
    smc = pk.infer.SMC(
        precision_model, num_particles=500, kernel="hmc", num_integration_steps=5, num_chains=C
    )
    smc.run(jax.random.key(3), jnp.asarray(y))
    tau = np.asarray(smc.get_samples(group_by_chain=True)["tau"])
    assert np.all(tau > 0)
    assert_within_mc_error(smc.log_evidence, log_z, log_z=True)
    assert_within_mc_error(tau.mean(1), a_post / b_post)
    assert_within_mc_error(tau.var(1), a_post / b_post**2)


# ------------------------------------------------------------------ bimodal
def bimodal_model(y, s=0.3):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.5))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu**2, s), obs=y)


@pytest.mark.slow
def test_bimodal_waste_free_both_modes():
    y = jnp.full((5,), 1.0)
    smc = pk.infer.SMC(
        bimodal_model, num_particles=1000, waste_free=True, num_resampled=100, num_chains=C
    )
    smc.run(jax.random.key(4), y)
    mu = np.asarray(smc.get_samples(group_by_chain=True)["mu"])
    frac = (mu > 0).mean(1)
    # symmetric posterior: each mode carries half the mass; the modes are at +-1
    assert_within_mc_error(frac, 0.5)
    # No run collapses onto one mode. The chains never switch modes, so each run's mode
    # fraction drifts like a Wright-Fisher frequency over its ~8 resamplings of P = 100
    # starts: sd ~ sqrt(8 * 0.25 / 100) = 0.14 per run. A collapse is frac = 0 or 1.
    assert np.all(np.abs(frac - 0.5) < 0.45), frac
    assert_within_mc_error(np.abs(mu).mean(1), np.abs(mu).mean())
    assert np.abs(np.abs(mu).mean() - 1.0) < 0.1
    assert np.all(smc.diagnostics.stages.num_mcmc_steps[:, 0] == 9)


# ------------------------------------------------------------- failure modes
def test_likelihood_minus_inf_everywhere_is_a_failed_stage():
    def model():
        numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.factor("impossible", -jnp.inf)

    smc = pk.infer.SMC(model, num_particles=100, num_mcmc_steps=1)
    with pytest.warns(RuntimeWarning, match="zero weight"):
        smc.run(jax.random.key(0))
    d = smc.diagnostics
    assert d.failed.all()
    assert np.all(smc.log_evidence == -np.inf)
    assert not np.any(np.isnan(smc.log_evidence))


def test_max_stages_reported():
    y = jnp.asarray(np.random.default_rng(0).normal(1.0, 1.0, size=20), jnp.float32)
    smc = pk.infer.SMC(
        normal_mean_model, num_particles=100, num_mcmc_steps=1, max_stages=1, num_chains=1
    )
    with pytest.warns(RuntimeWarning, match="max_stages"):
        smc.run(jax.random.key(0), y)
    d = smc.diagnostics
    assert d.reached_max_stages.all() and d.stages.temperature.shape == (1, 1)
    assert 0.0 < d.stages.temperature[0, 0] < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["nuts", "factory"])
def test_other_kernels_normal_mean(kernel):
    import blackjax

    if kernel == "factory":

        def kernel(logdensity_fn, cov):
            return blackjax.additive_step_random_walk.normal_random_walk(
                logdensity_fn, 1.5 * jnp.linalg.cholesky(cov)
            )

    y = np.random.default_rng(0).normal(1.0, 1.0, size=20).astype(np.float32)
    n = y.size
    post_var = 1.0 / (1.0 / 4.0 + n)
    post_mean = post_var * (0.5 / 4.0 + y.sum())
    log_z = multivariate_normal(np.full(n, 0.5), np.eye(n) + 4.0 * np.ones((n, n))).logpdf(y)
    smc = pk.infer.SMC(
        normal_mean_model, num_particles=300, kernel=kernel, num_mcmc_steps=2, num_chains=C
    )
    smc.run(jax.random.key(5), jnp.asarray(y))
    mu = np.asarray(smc.get_samples(group_by_chain=True)["mu"])
    assert_within_mc_error(smc.log_evidence, log_z, log_z=True)
    assert_within_mc_error(mu.mean(1), post_mean)


def test_imh_mixture_proposal_on_a_bimodal_posterior():
    """y ~ N(mu^2, s): modes at mu = +-1. A 2-component IMH proposal fitted by EM keeps the
    acceptance rate high, weighs both modes equally, and the evidence matches quadrature."""
    from scipy import integrate, stats

    y = np.full(5, 1.0)
    s = 0.3

    def joint(mu):
        return stats.norm.pdf(mu, 0.0, 1.5) * np.prod(stats.norm.pdf(y, mu**2, s))

    z, _ = integrate.quad(joint, -4.0, 4.0, points=[-1.0, 1.0], limit=200)
    smc = pk.infer.SMC(
        bimodal_model, num_particles=1000, kernel="imh", imh_components=2, num_chains=C
    )
    smc.run(jax.random.key(6), jnp.asarray(y, jnp.float32))
    assert_within_mc_error(smc.log_evidence, np.log(z), log_z=True)
    mu = np.asarray(smc.get_samples(group_by_chain=True)["mu"])
    assert_within_mc_error((mu > 0).mean(1), 0.5)
    acc = smc.diagnostics.stages.acceptance_rate
    # one Gaussian over both modes would be accepted far less often
    assert np.nanmean(acc) > 0.5, np.nanmean(acc)


def test_fit_gaussian_mixture_recovers_a_known_mixture():
    from particlekit.infer import moves

    rng = np.random.default_rng(3)
    n = 4000
    first = rng.uniform(size=n) < 0.3
    x = np.where(
        first[:, None],
        rng.normal([-2.0, 0.0], 1.0, size=(n, 2)),
        rng.normal([2.0, 1.0], np.sqrt(0.5), size=(n, 2)),
    ).astype(np.float32)
    log_mix, means, covs = moves.fit_gaussian_mixture(jnp.asarray(x), jnp.zeros(n), 2)
    order = np.argsort(np.asarray(means)[:, 0])
    mix = np.exp(np.asarray(log_mix))[order]
    means, covs = np.asarray(means)[order], np.asarray(covs)[order]
    # standard errors with ~1200 / ~2800 points per component are below 0.05
    np.testing.assert_allclose(mix, [0.3, 0.7], atol=0.03)
    np.testing.assert_allclose(means, [[-2.0, 0.0], [2.0, 1.0]], atol=0.1)
    np.testing.assert_allclose(covs[0], np.eye(2), atol=0.15)
    np.testing.assert_allclose(covs[1], 0.5 * np.eye(2), atol=0.1)


def test_progress_bar_announces_compilation_and_shows_the_stage(capsys):
    y = jnp.asarray([0.3, -0.2, 1.1], jnp.float32)
    smc = pk.infer.SMC(normal_mean_model, num_particles=100, progress_bar=True)
    smc.run(jax.random.key(0), y)
    first = capsys.readouterr().err
    assert "tempered SMC (compiling)" in first
    for field in ("lambda=1.000", "stage=", "acc=", "ess="):
        assert field in first
    smc.run(jax.random.key(1), y)  # compiled already: no announcement
    assert "compiling" not in capsys.readouterr().err
    # off by default when standard error is not a terminal (as under pytest)
    assert not pk.infer.SMC(normal_mean_model).progress_bar
