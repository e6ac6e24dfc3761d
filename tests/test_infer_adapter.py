"""The NumPyro adapter: log-prior / log-likelihood split, prior sampling, input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import potential_energy

import particlekit as pk
from particlekit.infer.numpyro_adapter import inspect_model, make_target


def constrained_model(y, x):
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))
    b = numpyro.sample("b", dist.Uniform(-1.0, 2.0))
    chol = numpyro.sample("L", dist.LKJCholesky(3, 2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(b * x + p[0], s), obs=y)
    numpyro.factor("f", -0.5 * jnp.sum(chol**2))


Y = jnp.arange(5.0)
X = jnp.linspace(-1.0, 1.0, 5)


def test_split_sums_to_minus_potential_fn():
    info = inspect_model(constrained_model, (Y, X))
    target = make_target(constrained_model, (Y, X), {}, info)

    def potential_fn(params):
        return potential_energy(constrained_model, (Y, X), {}, params)

    @jax.jit
    @jax.vmap
    def evaluate(u):
        lp, ll = target.log_prior_and_likelihood(u)
        # the likelihood (observed sites + factor) by hand, in constrained space
        theta = target.constrain(u)
        by_hand = jnp.sum(
            dist.Normal(theta["b"] * X + theta["p"][0], theta["s"]).log_prob(Y)
        ) - 0.5 * jnp.sum(theta["L"] ** 2)
        return lp, ll, -potential_fn(info.unravel_fn(u)), by_hand

    us = 1.5 * jax.random.normal(jax.random.key(1), (8, info.dim))
    lp, ll, minus_potential, by_hand = evaluate(us)
    np.testing.assert_allclose(lp + ll, minus_potential, rtol=1e-5)
    np.testing.assert_allclose(ll, by_hand, rtol=1e-5)
    assert np.all(np.abs(ll) > 0) and np.all(np.abs(lp - minus_potential) > 1e-3)


def test_jacobian_is_in_the_prior():
    # For s ~ HalfNormal(1), u = log s: log p(u) = log HalfNormal(e^u) + u.
    def model():
        numpyro.sample("s", dist.HalfNormal(1.0))

    info = inspect_model(model)
    target = make_target(model, (), {}, info)
    u = jnp.array([0.3])
    lp, ll = target.log_prior_and_likelihood(u)
    np.testing.assert_allclose(lp, dist.HalfNormal(1.0).log_prob(jnp.exp(0.3)) + 0.3, rtol=1e-6)
    assert ll == 0.0


def test_prior_sampling_in_unconstrained_space():
    info = inspect_model(constrained_model, (Y, X))
    target = make_target(constrained_model, (Y, X), {}, info)
    n = 4000

    @jax.jit
    def draw(key):
        us = jax.vmap(target.sample_prior)(jax.random.split(key, n))
        return us, jax.vmap(target.constrain)(us)

    us, theta = draw(jax.random.key(0))
    assert us.shape == (n, info.dim)
    assert np.all(theta["s"] > 0)
    np.testing.assert_allclose(np.sum(theta["p"], -1), 1.0, rtol=1e-5)
    assert np.all((theta["b"] > -1.0) & (theta["b"] < 2.0))
    # E[s] = sqrt(2 / pi) for HalfNormal(1); sd(s) = sqrt(1 - 2 / pi); 5 standard errors
    se = np.sqrt(1 - 2 / np.pi) / np.sqrt(n)
    assert abs(np.mean(theta["s"]) - np.sqrt(2 / np.pi)) < 5 * se
    # E[b] = 0.5 for Uniform(-1, 2), sd = 3 / sqrt(12)
    assert abs(np.mean(theta["b"]) - 0.5) < 5 * 3 / np.sqrt(12 * n)


def test_discrete_latent_site_is_named():
    def model():
        numpyro.sample("k", dist.Poisson(3.0))
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'k' is discrete"):
        pk.infer.SMC(model, num_particles=10).run(jax.random.key(0))


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_bad_num_particles(n):
    with pytest.raises(ValueError, match="num_particles"):
        pk.infer.SMC(constrained_model, num_particles=n)


def test_bad_configuration():
    with pytest.raises(ValueError, match="kernel"):
        pk.infer.SMC(constrained_model, kernel="gibbs")
    with pytest.raises(ValueError, match="imh_components"):
        pk.infer.SMC(constrained_model, kernel="rwm", imh_components=2)
    with pytest.raises(ValueError, match="imh_components"):
        pk.infer.SMC(constrained_model, kernel="imh", imh_components=0)
    with pytest.raises(ValueError, match="num_particles >= 8"):
        pk.infer.SMC(constrained_model, kernel="imh", imh_components=4, num_particles=7)
    with pytest.raises(ValueError, match="target_ess"):
        pk.infer.SMC(constrained_model, target_ess=1.5)
    with pytest.raises(ValueError, match="num_resampled"):
        pk.infer.SMC(constrained_model, num_particles=100, waste_free=True, num_resampled=30)
    with pytest.raises(ValueError, match="must divide"):
        pk.infer.SMC(constrained_model, num_particles=100, waste_free=True, num_mcmc_steps=6)
    with pytest.raises(ValueError, match="give only one"):
        pk.infer.SMC(
            constrained_model,
            num_particles=100,
            waste_free=True,
            num_resampled=10,
            num_mcmc_steps=4,
        )


def test_nan_log_density_at_prior_draw():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.factor("bad", jnp.where(z > 0, jnp.nan, 0.0))

    with pytest.raises(ValueError, match="log-likelihood is NaN"):
        pk.infer.SMC(model, num_particles=50).run(jax.random.key(0))


def test_tempering_bisection_hits_target():
    from particlekit.infer.tempering import conditional_ess, next_temperature

    step = jax.jit(next_temperature)
    log_lik = -0.5 * jax.random.normal(jax.random.key(0), (100,)) ** 2 * 50.0
    lam, forced = step(jnp.zeros(100), log_lik, 0.0)
    assert 0.0 < lam < 1.0 and not forced
    cess = jax.jit(conditional_ess)(jnp.zeros(100), log_lik, lam)
    np.testing.assert_allclose(cess, 0.5, atol=1e-3)
    # a flat likelihood jumps straight to 1
    lam, _ = step(jnp.zeros(100), jnp.zeros(100), 0.3)
    assert lam == 1.0
    # -inf everywhere: the minimum increment is forced
    lam, forced = step(jnp.zeros(100), jnp.full(100, -jnp.inf), 0.0)
    assert forced and lam == pytest.approx(1e-6)


def test_conditional_ess_matches_direct_formula():
    """CESS = (sum W G)^2 / sum W G^2 in float64 NumPy, with unequal weights, zero weights
    and -inf log-likelihoods; one test per regime of delta."""
    from particlekit.infer.tempering import conditional_ess

    rng = np.random.default_rng(0)
    log_w = rng.normal(size=200) * 2.0
    log_w[:5] = -np.inf
    log_lik = -np.abs(rng.normal(size=200)) * 300.0
    log_lik[10:15] = -np.inf
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
    w /= w.sum()
    for delta in (0.0, 1e-4, 0.01, 0.3, 1.0):
        g = np.where(np.isfinite(log_lik), np.exp(delta * (log_lik - log_lik.max())), 0.0)
        expected = (w @ g) ** 2 / (w @ g**2) if delta > 0 else 1.0
        got = conditional_ess(jnp.asarray(log_w, jnp.float32), jnp.asarray(log_lik), delta)
        np.testing.assert_allclose(float(got), expected, rtol=1e-4)
    # every weight zero: no effective sample at all
    assert float(conditional_ess(jnp.full(200, -jnp.inf), jnp.asarray(log_lik), 0.1)) == 0.0


def test_improper_prior_is_a_clear_error():
    def model(y):
        mu = numpyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match="ImproperUniform.*LogDensityModel"):
        pk.infer.SMC(model, num_particles=10).run(jax.random.key(0), jnp.array([0.5]))


@pytest.mark.parametrize("start", [0.34, 0.9, 0.123])
def test_next_temperature_does_not_stop_an_ulp_short_of_one(start):
    """When the ESS rule only just fails at ``lambda = 1`` the bisection ends a few ulps
    below it in float32 (0.99999988 from 0.34 before the fix); that step must go to 1, not
    leave a last stage of a few ulps that costs a whole move."""
    from particlekit.infer.tempering import conditional_ess, next_temperature

    z = jnp.asarray(np.random.default_rng(0).normal(size=1000), jnp.float32)
    lo, hi = 0.1, 10.0  # scale s with CESS(delta = 1 - start) just below 0.5
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(conditional_ess(jnp.zeros(1000), mid * z, 1.0 - start)) >= 0.5:
            lo = mid
        else:
            hi = mid
    lam, _ = next_temperature(jnp.zeros(1000), hi * z, start)
    assert float(lam) == 1.0
