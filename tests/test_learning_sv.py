"""Parameter recovery on a stochastic-volatility model from simulated data.

No closed form exists here, so the check is statistical: with T = 500 observations the
maximum-likelihood estimates of (mu, phi, sigma) have standard errors of roughly
(0.27, 0.015, 0.04) (the AR(1) asymptotics of the latent log-volatility, inflated for the
noisy observations); PPG-score ascent must land within about 3-4 of them, and the fitted
parameters must raise the log-likelihood far above the starting point.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import particlekit as pk

TRUE = {"mu": -1.0, "atanh_phi": float(np.arctanh(0.95)), "log_sigma": float(np.log(0.3))}
START = {"mu": 0.0, "atanh_phi": float(np.arctanh(0.5)), "log_sigma": 0.0}


def unpack(theta):
    return theta["mu"], jnp.tanh(theta["atanh_phi"]), jnp.exp(theta["log_sigma"])


def model_fn(theta):
    mu, phi, sigma = unpack(theta)
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(mu, sigma / jnp.sqrt(1.0 - phi**2)),
        transition=lambda x_prev, t: dist.Normal(mu + phi * (x_prev - mu), sigma),
        observation=lambda x, t: dist.Normal(0.0, jnp.exp(0.5 * x)),
    )


def log_likelihood(theta, ys, seeds=8):
    ssm = model_fn(theta)
    keys = jax.random.split(jax.random.key(11), seeds)
    runs = [pk.filters.bootstrap(k, ssm, ys, num_particles=1000, keep_history=False) for k in keys]
    return float(np.mean([float(r.log_evidence) for r in runs]))


@pytest.mark.optimized
@pytest.mark.slow
def test_ppg_score_ascent_recovers_sv_parameters():
    _, ys = model_fn(TRUE).simulate(jax.random.key(0), 500)
    res = pk.learning.mle(
        jax.random.key(1),
        model_fn,
        START,
        ys,
        num_particles=64,
        num_iterations=300,
        estimator="ppg",
        optimizer=optax.adam(optax.exponential_decay(0.05, 300, 0.05)),
    )
    mu, phi, sigma = (float(v) for v in unpack(res.theta_average))
    assert np.all(np.isfinite([mu, phi, sigma]))
    assert abs(phi - 0.95) < 0.06
    assert abs(sigma - 0.3) < 0.15
    assert abs(mu + 1.0) < 1.0
    # the fit is a much better explanation of the data than the start, and about as good
    # as the truth (within a few nats of Monte Carlo and estimation error)
    fitted, start, truth = (log_likelihood(t, ys) for t in (res.theta_average, START, TRUE))
    assert fitted > start + 20.0
    assert fitted > truth - 5.0
