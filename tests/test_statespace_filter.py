"""The state-space recipes' filter (``particlekit.statespace.likelihood``, which PMMH, SMC²
and ``log_likelihood_sd`` run) is ``pk.filters.bootstrap``'s step: a per-particle model
gives the vectorized model's numbers bit for bit (batched transition draws), and a missing
observation adds exactly nothing to the log-likelihood."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import particlekit as pk
from particlekit.statespace import likelihood


def model(vectorized):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.8 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
        vectorized=vectorized,
    )


YS = model(True).simulate(jax.random.key(0), 12)[1]


def log_likelihood(ssm, ys, num_particles=256):
    carry = likelihood.filter_prefix(
        jax.random.key(1), ssm, ys, ys.shape[0], num_particles=num_particles
    )
    return carry.state.log_evidence


def test_per_particle_model_gives_the_vectorized_draws():
    """The same particles and ancestors at every step (the per-particle model's transition
    drawn as one batch with the vectorized model's key); the observation densities, one
    computed per particle and one vectorized, may round differently in the last bit."""
    a = log_likelihood(model(True), YS)
    b = log_likelihood(model(False), YS)
    assert np.isfinite(a) and abs(a - b) < 1e-5
    vectorized, per_particle = (
        likelihood.filter_history(jax.random.key(2), model(v), YS, num_particles=64)
        for v in (True, False)
    )
    _, particles, log_weights, ancestors = vectorized
    np.testing.assert_array_equal(per_particle[1], particles)
    np.testing.assert_array_equal(per_particle[3], ancestors)
    np.testing.assert_allclose(per_particle[2], log_weights, rtol=1e-6)


def test_missing_observations_add_exactly_nothing():
    """With every observation after ``y_0`` missing, the log-likelihood is exactly the
    first step's (the increment of a step with all potentials 1 was ``log sum_i W_i``, an
    ulp off 0 for some populations unless the weights were equal: never resampled here)."""
    ys = YS.at[1:].set(jnp.nan)
    ssm = model(True)
    for num_particles in (100, 300):

        @jax.jit
        @jax.vmap
        def total_and_first(key, num_particles=num_particles):
            carry = likelihood.filter_prefix(
                key, ssm, ys, ys.shape[0], num_particles=num_particles, ess_threshold=0.0
            )
            # the same first step (``filter_prefix``'s first key), then eleven exact zeros
            key_init, _ = jax.random.split(key)
            first = likelihood.filter_init(key_init, ssm, ys, num_particles=num_particles)
            return carry.state.log_evidence, first.state.log_evidence

        total, first = total_and_first(jax.random.split(jax.random.key(0), 64))
        np.testing.assert_array_equal(total, first)
