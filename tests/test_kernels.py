"""The composable kernels: init, move, reweight (the evidence rule), resample, mcmc, chain."""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import particlekit as pk
from particlekit.types import ParticleState

N = 6


def _state(log_weights, particles=None, log_evidence=0.0):
    log_weights = jnp.asarray(log_weights, jnp.float32)
    n = log_weights.shape[0]
    particles = jnp.arange(n, dtype=jnp.float32) if particles is None else particles
    return ParticleState(
        particles=particles,
        log_weights=log_weights,
        log_evidence=jnp.asarray(log_evidence, jnp.float32),
        ancestors=jnp.arange(n, dtype=jnp.int32),
        previous_particles=particles,
    )


# ------------------------------------------------------------------------------ init
def test_init_shapes():
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k, (3,)), N)
    assert state.particles.shape == (N, 3)
    assert state.log_weights.shape == (N,) and state.log_weights.dtype == jnp.float32
    assert (np.asarray(state.log_weights) == 0).all()
    assert state.log_evidence.shape == () and float(state.log_evidence) == 0.0
    np.testing.assert_array_equal(state.ancestors, np.arange(N))
    assert state.ancestors.dtype == jnp.int32
    np.testing.assert_array_equal(state.previous_particles, state.particles)
    # distinct keys per particle
    assert len(np.unique(np.asarray(state.particles[:, 0]))) == N


def test_init_pytree_and_vectorized():
    state = pk.init(jax.random.key(0), lambda k: {"a": jax.random.normal(k), "b": jnp.zeros(2)}, N)
    assert state.particles["a"].shape == (N,) and state.particles["b"].shape == (N, 2)
    state = pk.init(
        jax.random.key(0), lambda k, n: jax.random.normal(k, (n, 2)), N, vectorized=True
    )
    assert state.particles.shape == (N, 2)
    with pytest.raises(ValueError, match="leading axis"):
        pk.init(jax.random.key(0), lambda k, n: jax.random.normal(k, (3,)), N, vectorized=True)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10", None])
def test_init_rejects_bad_num_particles(bad):
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        pk.init(jax.random.key(0), lambda k: jax.random.normal(k), bad)


def test_init_accepts_numpy_integer():
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), np.int64(4))
    assert state.particles.shape == (4,)


# ------------------------------------------------------------------------------ move
def test_move_records_previous_particles():
    state = _state(np.log(np.arange(1.0, N + 1)))
    kernel = pk.move(lambda key, x, y: x + y + 0.0 * jax.random.normal(key))
    new, info = kernel(jax.random.key(0), state, 10.0)
    np.testing.assert_allclose(new.particles, np.arange(N) + 10.0)
    np.testing.assert_array_equal(new.previous_particles, state.particles)
    np.testing.assert_array_equal(new.log_weights, state.log_weights)
    assert float(new.log_evidence) == float(state.log_evidence)
    assert float(info.log_evidence_increment) == 0.0 and not bool(info.resampled)
    # one key per particle: noise differs across particles
    noisy, _ = pk.move(lambda key, x, y: jax.random.normal(key))(jax.random.key(1), state)
    assert len(np.unique(np.asarray(noisy.particles))) == N
    vec, _ = pk.move(lambda key, xs, y: xs * y, vectorized=True)(jax.random.key(0), state, 2.0)
    np.testing.assert_allclose(vec.particles, 2.0 * np.arange(N))


# ------------------------------------------------------------------------------ reweight
def test_reweight_evidence_rule():
    """log Z grows by logsumexp(log W_prev + log G), W_prev normalised; the potential sees
    (x_prev, x, inputs)."""
    log_w = np.array([0.3, -1.0, 2.0, -np.inf, 0.0, 1.5], np.float32)
    state = _state(log_w, log_evidence=-3.0)
    state, _ = pk.move(lambda key, x, y: 2.0 * x + 1.0)(jax.random.key(0), state)
    log_g_fn = lambda x_prev, x, y: -0.5 * (x - y) ** 2 + 0.1 * x_prev
    new, info = pk.reweight(log_g_fn)(jax.random.key(1), state, 4.0)

    x_prev = np.arange(N, dtype=np.float64)
    log_g = -0.5 * (2.0 * x_prev + 1.0 - 4.0) ** 2 + 0.1 * x_prev
    log_w_prev = log_w - logsumexp(log_w)
    increment = logsumexp(log_w_prev + log_g)
    assert float(info.log_evidence_increment) == pytest.approx(increment, abs=1e-5)
    assert float(new.log_evidence) == pytest.approx(-3.0 + increment, abs=1e-5)
    np.testing.assert_allclose(new.log_weights, log_w_prev + log_g, rtol=1e-5, atol=1e-5)
    w = np.exp(log_w_prev + log_g - increment)
    assert float(info.ess) == pytest.approx(1.0 / np.sum(w**2), rel=1e-4)
    assert int(info.num_nonfinite) == 0

    vec, vinfo = pk.reweight(log_g_fn, vectorized=True)(jax.random.key(1), state, 4.0)
    assert float(vinfo.log_evidence_increment) == pytest.approx(increment, abs=1e-5)


def test_reweight_counts_nonfinite_potentials():
    state = _state(np.zeros(N))
    log_g = jnp.array([0.0, jnp.nan, 1.0, jnp.inf, jnp.nan, -jnp.inf])
    new, info = pk.reweight(lambda xp, x, y: log_g[x.astype(jnp.int32)])(jax.random.key(0), state)
    assert int(info.num_nonfinite) == 3  # NaN, +inf, NaN; -inf is a legitimate zero weight
    assert np.isneginf(np.asarray(new.log_weights)[[1, 3, 4, 5]]).all()
    expected = logsumexp(np.log(1.0 / N) + np.array([0.0, 1.0]))
    assert float(info.log_evidence_increment) == pytest.approx(expected, abs=1e-5)
    assert not np.isnan(np.asarray(new.log_weights)).any()


def test_reweight_all_zero_weights():
    state = _state(np.zeros(N))
    new, info = pk.reweight(lambda xp, x, y: -jnp.inf)(jax.random.key(0), state)
    assert float(info.log_evidence_increment) == -np.inf
    assert float(new.log_evidence) == -np.inf
    assert float(info.ess) == 0.0


def test_reweight_rejects_non_scalar_potential():
    with pytest.raises(ValueError, match="scalar per particle"):
        pk.reweight(lambda xp, x, y: jnp.zeros(2))(jax.random.key(0), _state(np.zeros(N)))


# ------------------------------------------------------------------------------ resample
def test_resample_thresholds():
    key = jax.random.key(5)
    skewed = np.array([3.0, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)  # ESS ~ 1.8 < N / 2
    flat = np.array([0.1, 0.0, 0.0, -0.1, 0.0, 0.0], np.float32)  # ESS ~ 6 > N / 2
    expected_idx = np.asarray(pk.resampling.systematic(key, jnp.asarray(skewed)))

    for threshold, log_w, should in [
        (0.0, skewed, False),
        (0.5, flat, False),
        (0.5, skewed, True),
        (1.0, flat, True),
        (1.0, skewed, True),
    ]:
        state = _state(log_w, log_evidence=1.25)
        new, info = pk.resample("systematic", threshold)(key, state)
        assert bool(info.resampled) == should, (threshold, log_w)
        assert float(new.log_evidence) == 1.25  # resampling never changes the evidence
        if should:
            idx = np.asarray(pk.resampling.systematic(key, jnp.asarray(log_w)))
            np.testing.assert_array_equal(new.ancestors, idx)
            np.testing.assert_array_equal(new.particles, np.arange(N)[idx])
            np.testing.assert_array_equal(new.previous_particles, np.arange(N)[idx])
            assert (np.asarray(new.log_weights) == 0).all()
            assert float(info.ess) == pytest.approx(N)
        else:
            np.testing.assert_array_equal(new.ancestors, np.arange(N))
            np.testing.assert_array_equal(new.particles, state.particles)
            np.testing.assert_array_equal(new.log_weights, log_w)
    np.testing.assert_array_equal(
        pk.resample(pk.resampling.systematic, 0.5)(key, _state(skewed))[0].ancestors,
        expected_idx,
    )


def test_resample_bad_arguments():
    with pytest.raises(ValueError, match="ess_threshold"):
        pk.resample("systematic", 1.5)
    with pytest.raises(ValueError, match="unknown resampling scheme"):
        pk.resample("nope")


# ------------------------------------------------------------------------------ chain
def test_chain_merges_info():
    state = _state(np.array([4.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    step = pk.chain(
        pk.reweight(lambda xp, x, y: 0.5 * x),
        pk.resample("systematic", 1.0),
        pk.move(lambda key, x, y: x + jax.random.normal(key)),
        pk.reweight(lambda xp, x, y: -0.5 * (x - xp) ** 2),
    )
    new, info = step(jax.random.key(0), state, None)
    assert bool(info.resampled)
    assert float(info.log_evidence_increment) == pytest.approx(float(new.log_evidence), 1e-5)
    assert float(info.ess) == pytest.approx(float(pk.resampling.ess(new.log_weights)), 1e-5)
    assert np.isnan(float(info.acceptance_rate))
    # by hand: two increments
    lw = np.array([4.0, 0, 0, 0, 0, 0])
    first = logsumexp(lw - logsumexp(lw) + 0.5 * np.arange(N))
    second = float(new.log_evidence) - first
    dx = np.asarray(new.particles - new.previous_particles, np.float64)
    assert second == pytest.approx(logsumexp(-0.5 * dx**2) - np.log(N), abs=1e-4)
    with pytest.raises(ValueError, match="at least one kernel"):
        pk.chain()


# ------------------------------------------------------------------------------ mcmc
def test_mcmc_random_walk_leaves_normal_invariant():
    n = 4000
    rw = blackjax.additive_step_random_walk.normal_random_walk(
        lambda x: -0.5 * x**2, sigma=jnp.array(1.5)
    )
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), n)
    state = state._replace(log_weights=jnp.full(n, 0.3), log_evidence=jnp.asarray(2.0))
    new, info = jax.jit(pk.mcmc(rw, num_steps=10))(jax.random.key(1), state, None)
    x = np.asarray(new.particles, np.float64)
    assert abs(x.mean()) < 5.0 / np.sqrt(n)
    assert abs(x.var() - 1.0) < 5.0 * np.sqrt(2.0 / n)
    assert abs(np.mean(x**4) - 3.0) < 5.0 * np.sqrt(96.0 / n)
    # the particles moved, weights and evidence untouched
    assert np.mean(x != np.asarray(state.particles)) > 0.3
    np.testing.assert_array_equal(new.previous_particles, state.particles)
    np.testing.assert_array_equal(new.log_weights, state.log_weights)
    assert float(new.log_evidence) == 2.0
    assert 0.3 < float(info.acceptance_rate) < 0.9


def test_mcmc_kernel_from_inputs():
    """A function of the inputs builds the kernel: target N(0, 1 / precision)."""
    n = 2000

    def kernel_of(precision):
        return blackjax.additive_step_random_walk.normal_random_walk(
            lambda x: -0.5 * precision * x**2, sigma=jnp.array(0.3)
        )

    state = pk.init(jax.random.key(0), lambda k: 0.5 * jax.random.normal(k), n)
    new, _ = pk.mcmc(kernel_of, num_steps=5)(jax.random.key(1), state, jnp.asarray(4.0))
    x = np.asarray(new.particles, np.float64)
    assert abs(x.var() - 0.25) < 5.0 * 0.25 * np.sqrt(2.0 / n)
    with pytest.raises(ValueError, match="num_steps"):
        pk.mcmc(kernel_of, num_steps=0)
