"""StateSpaceModel: sampling, log-densities, missing observations, simulation, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

import particlekit as pk
from particlekit.ssm import missing_mask

SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev + t, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)


def test_log_densities_match_scipy():
    x_prev, x, y, t = 0.3, -0.2, 1.1, 4
    assert float(SSM.transition_log_prob(x_prev, x, t)) == pytest.approx(
        stats.norm(0.9 * x_prev + t, 1.0).logpdf(x), abs=1e-5
    )
    assert float(SSM.observation_log_prob(x, y, t)) == pytest.approx(
        stats.norm(x, 0.5).logpdf(y), abs=1e-5
    )
    assert float(SSM.initial_log_prob(x)) == pytest.approx(stats.norm().logpdf(x), abs=1e-5)
    # a missing observation contributes nothing (and no NaN)
    assert float(SSM.observation_log_prob(x, jnp.nan, t)) == 0.0
    grad = jax.grad(lambda x: SSM.observation_log_prob(x, jnp.nan, t))(x)
    assert float(grad) == 0.0


def test_sampling_shapes():
    assert SSM.sample_initial(jax.random.key(0)).shape == ()
    assert SSM.sample_initial(jax.random.key(0), 7).shape == (7,)
    x = SSM.sample_transition(jax.random.key(1), jnp.asarray(1.0), 2)
    assert x.shape == ()


def test_simulate_follows_the_model():
    """Time-varying mean through t: E[x_t] = 0.9 E[x_{t-1}] + t."""
    num_steps = 6
    xs, ys = jax.vmap(lambda k: SSM.simulate(k, num_steps))(jax.random.split(jax.random.key(0),
                                                                             2000))  # fmt: skip
    assert xs.shape == ys.shape == (2000, num_steps)
    mean = np.zeros(num_steps)
    var = np.ones(num_steps)
    for t in range(1, num_steps):
        mean[t] = 0.9 * mean[t - 1] + t
        var[t] = 0.81 * var[t - 1] + 1.0
    xs = np.asarray(xs, np.float64)
    assert (np.abs(xs.mean(0) - mean) < 5 * np.sqrt(var / 2000)).all()
    resid = np.asarray(ys, np.float64) - xs
    assert abs(resid.std() - 0.5) < 5 * 0.5 / np.sqrt(2 * resid.size)
    with pytest.raises(ValueError, match="num_steps"):
        SSM.simulate(jax.random.key(0), 0)


def test_simulate_vector_and_vectorized():
    a = jnp.array([[0.5, 0.1], [0.0, 0.8]])
    for vectorized in (False, True):
        ssm = pk.StateSpaceModel(
            initial=lambda: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
            transition=(
                (lambda xs, t: dist.MultivariateNormal(xs @ a.T, jnp.eye(2)))
                if vectorized
                else (lambda x, t: dist.MultivariateNormal(a @ x, jnp.eye(2)))
            ),
            observation=lambda x, t: dist.Normal(x, 1.0).to_event(1),
            vectorized=vectorized,
        )
        xs, ys = ssm.simulate(jax.random.key(0), 10)
        assert xs.shape == (10, 2) and ys.shape == (10, 2)
        assert ssm.validate(ys, 5).shape == (10, 2)


def test_missing_mask():
    np.testing.assert_array_equal(missing_mask(jnp.array([1.0, jnp.nan, 2.0])),
                                  [False, True, False])  # fmt: skip
    ys = jnp.array([[1.0, 2.0], [jnp.nan, jnp.nan], [0.0, 1.0]])
    np.testing.assert_array_equal(missing_mask(ys), [False, True, False])


def test_validate_errors():
    ys = jnp.zeros(5)
    assert SSM.validate(ys, 3).shape == (5,)
    with pytest.raises(ValueError, match="num_particles"):
        SSM.validate(ys, 0)
    with pytest.raises(ValueError, match="leading time axis"):
        SSM.validate(jnp.asarray(1.0))
    with pytest.raises(ValueError, match=r"should be \(T,\) \+ \(\)"):
        SSM.validate(jnp.zeros((5, 2)))
    mismatch = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    with pytest.raises(ValueError, match="event shape"):
        mismatch.validate(ys)


def test_validate_compiles_nothing(caplog):
    """Checking a model traces its distributions abstractly: no eager operation is
    compiled (a first call's latency), whatever the state's shape, and a callable that does
    not return a distribution is still named."""
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(jnp.zeros(13), 1.0).to_event(1),
        transition=lambda x_prev, t: dist.Normal(0.37 * x_prev - 1.3, 0.7).to_event(1),
        observation=lambda x, t: dist.Normal(2.1 * x[:3], 0.3).to_event(1),
    )
    ys = jnp.zeros((4, 3))
    with jax.log_compiles(True), caplog.at_level("DEBUG"):
        assert ssm.validate(ys, 10).shape == (4, 3)
    assert not [r for r in caplog.records if "ompil" in r.getMessage()]
    bad = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: 0.9 * x_prev,
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    with pytest.raises(ValueError, match=r"transition\(x_prev, t\) must return"):
        bad.validate(jnp.zeros(3))


def test_partly_missing_vector_observation_is_nan_not_skipped():
    """observation_log_prob read a partly missing vector y_t (one NaN coordinate) as fully
    missing (0, the observed coordinate silently dropped); it is now NaN, which the filters
    count as zero weight and report in failed. A fully missing y_t is still 0."""
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
        transition=lambda x_prev, t: dist.MultivariateNormal(x_prev, jnp.eye(2)),
        observation=lambda x, t: dist.MultivariateNormal(x, jnp.eye(2)),
    )
    x = jnp.array([0.3, -0.1])
    assert np.isnan(float(ssm.observation_log_prob(x, jnp.array([1.0, jnp.nan]), 0)))
    assert float(ssm.observation_log_prob(x, jnp.array([jnp.nan, jnp.nan]), 0)) == 0.0
    assert np.isfinite(float(ssm.observation_log_prob(x, jnp.array([1.0, 2.0]), 0)))
    ys = jnp.array([[1.0, jnp.nan], [jnp.nan, jnp.nan], [0.0, 1.0]])
    np.testing.assert_array_equal(missing_mask(ys), [False, True, False])
