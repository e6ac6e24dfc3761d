"""Per-particle laws drawn as one batch (``particlekit.batched_laws``)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import particlekit as pk
from particlekit import batched_laws, prng


def _per_particle(key, law_fn, xs, num):
    """The draws ``kernels.move`` made before: one key per particle."""
    keys = prng.particle_keys(key, num)
    return jax.vmap(lambda k, x: law_fn(x).sample(k))(keys, xs)


@pytest.mark.parametrize(
    "law_fn, xs",
    [
        (lambda x: dist.Normal(0.9 * x, 0.5 + x * x), jnp.linspace(-1.0, 1.0, 7)),
        (lambda x: dist.Normal(x, 1.0).to_event(1), jnp.ones((7, 3))),
        (lambda x: dist.MultivariateNormal(x, jnp.eye(3) * 2.0), jnp.arange(21.0).reshape(7, 3)),
    ],
)
def test_batchable_laws_are_sampled_as_the_batched_law(law_fn, xs):
    """The draw is the batched law's own draw with the same key (its parameters the
    per-particle ones, stacked)."""
    batched = batched_laws.batched_law(law_fn, xs, 7)
    assert batched is not None and batched.batch_shape == (7,)
    key = jax.random.key(3)
    got = batched_laws.sample_population(key, law_fn, xs, 7)
    one = law_fn(xs[0])
    assert got.shape == (7,) + one.event_shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(batched.sample(key)))
    for i in (0, 6):  # the batch's parameters are the particles' own
        np.testing.assert_allclose(
            np.asarray(batched.mean[i]), np.asarray(law_fn(xs[i]).mean), rtol=1e-6
        )


def test_batched_draws_have_the_per_particle_law():
    """Mean and variance of many batched draws of ``Normal(mu_i, sigma_i)`` match each
    particle's, within 5 Monte Carlo standard errors."""
    num, reps = 4, 20_000
    xs = jnp.asarray([-2.0, 0.0, 1.0, 3.0])
    law_fn = lambda x: dist.Normal(0.5 * x, 0.1 + 0.2 * jnp.abs(x))  # noqa: E731
    draws = jax.vmap(lambda k: batched_laws.sample_population(k, law_fn, xs, num))(
        jax.random.split(jax.random.key(0), reps)
    )
    mu, sd = 0.5 * np.asarray(xs), 0.1 + 0.2 * np.abs(np.asarray(xs))
    np.testing.assert_array_less(np.abs(draws.mean(0) - mu), 5 * sd / np.sqrt(reps))
    np.testing.assert_array_less(np.abs(draws.var(0) - sd**2), 5 * sd**2 * np.sqrt(2.0 / reps))


@pytest.mark.parametrize(
    "law_fn",
    [
        lambda x: dist.Gamma(1.0 + x * x, 1.0),  # not in BATCHABLE
        lambda x: dist.Normal(jnp.full(2, x), 1.0),  # a batch shape of its own
        lambda x: dist.LogNormal(x, 1.0),  # a transformed law
    ],
)
def test_other_laws_keep_the_per_particle_keys(law_fn):
    """Laws NumPyro cannot batch exactly are drawn with a key per particle, as before, in
    chunks of ``batch_size`` if given (the same draws)."""
    xs = jnp.linspace(0.1, 1.0, 5)
    assert batched_laws.batched_law(law_fn, xs, 5) is None
    key = jax.random.key(1)
    want = np.asarray(_per_particle(key, law_fn, xs, 5))
    for batch_size in (None, 2):
        got = batched_laws.sample_population(key, law_fn, xs, 5, batch_size)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_default_path_filter_draws_its_transition_as_one_batch():
    """The bootstrap filter of a per-particle model moves its particles with the batched
    law, as the vectorized model of the same law does: from (numerically) the same initial
    particles, the two filters give the same particles and evidence (with a key per
    particle they differed)."""

    def model(vectorized):
        return pk.StateSpaceModel(
            initial=lambda: dist.Normal(0.0, 1e-30),  # every particle at 0, to float32
            transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
            observation=lambda x, t: dist.Normal(x, 0.5),
            vectorized=vectorized,
        )

    _, ys = model(False).simulate(jax.random.key(0), 15)
    runs = [
        pk.filters.bootstrap(jax.random.key(5), model(v), ys, num_particles=64, keep_history=True)
        for v in (False, True)
    ]
    np.testing.assert_allclose(runs[0].particles, runs[1].particles, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[0].log_evidence, runs[1].log_evidence, rtol=1e-6)


@pytest.mark.parametrize(
    "law", [dist.Normal(0.5, 2.0), dist.Gamma(2.0, 1.0), dist.Normal(jnp.zeros(3), 1.0).to_event(1)]
)
def test_sample_iid_is_the_laws_draw_of_sample_shape_n(law):
    """sample_iid(key, law, N): law.sample(key, (N,)), from a plain key or the engine's
    population key (the same bits), up to the float32 rounding XLA compiles differently
    around the materialised draw (a few ulps; the random bits are the same)."""
    key = jax.random.key(3)
    expected = np.asarray(jax.jit(lambda k: law.sample(k, (64,)))(key))
    for k in (key, prng.population_key(key)):
        draws = np.asarray(jax.jit(lambda k: batched_laws.sample_iid(k, law, 64))(k))
        assert draws.shape == expected.shape
        np.testing.assert_allclose(draws, expected, rtol=1e-6, atol=1e-6)
    other = np.asarray(batched_laws.sample_iid(jax.random.key(4), law, 64))
    assert not np.allclose(other, expected)  # another key, other draws
