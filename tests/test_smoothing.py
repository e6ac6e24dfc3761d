"""FFBS and PaRIS against the exact RTS smoother of a linear-Gaussian model.

Tolerances are ``Z`` standard errors, the standard error estimated from independent
replications (seeds, vmapped).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import rts, scalar_model

import particlekit as pk

Z = 5.0  # z-score tolerance (two-sided, many comparisons, fixed seeds)
A, Q, R = 0.9, 1.0, 0.5


def _ssm():
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(A * x_prev, Q),
        observation=lambda x, t: dist.Normal(x, R),
    )


SSM = _ssm()


@pytest.fixture(scope="module")
def data():
    _, ys = SSM.simulate(jax.random.key(0), 25)
    sm, sP, cross = rts(scalar_model(A, Q, R, 1.0), np.asarray(ys))
    return ys, sm[:, 0], sP[:, 0, 0], cross[:, 0, 0]


def _z(samples, exact):
    """Max z-score of the mean over replications (axis 0) against ``exact``."""
    samples = np.asarray(samples, np.float64)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return np.max(np.abs(samples.mean(axis=0) - exact) / se)


@pytest.mark.parametrize("method", ["exact", "rejection"])
def test_ffbs_matches_rts_means_and_variances(data, method):
    ys, sm, sP, _ = data
    # 32 replications: with 8, the standard error's own error made the max z-score over
    # 25 steps a t-statistic with 7 degrees of freedom, above 5 one run in ~10
    num_seeds, n, m = 32, 256, 256

    def one(key):
        k1, k2 = jax.random.split(key)
        res = pk.filters.bootstrap(k1, SSM, ys, num_particles=n)
        # rejection: with the user's bound sup f = 1 / (Q sqrt(2 pi)) (also derivable)
        bound = None if method == "exact" else -np.log(Q * np.sqrt(2 * np.pi))
        paths = pk.smoothing.ffbs(k2, SSM, res, m, method=method, log_transition_bound=bound)
        return paths.mean(0), paths.var(0), paths

    means, variances, paths = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), num_seeds))
    assert paths.shape == (num_seeds, m, ys.shape[0])
    assert _z(means, sm) < Z
    assert _z(variances, sP) < Z
    assert np.all(np.abs(np.asarray(means).mean(0) - sm) < 0.15)


def _moments_fn():
    def h(x_prev, x, t):
        return {"sum": x, "cross": x_prev * x}

    def h0(x):
        return {"sum": x, "cross": jnp.zeros_like(x)}

    return h, h0


H, H0 = _moments_fn()


@pytest.mark.parametrize(
    "method,n,scheme",
    [
        ("rejection", 1000, "systematic"),
        ("exact", 200, "systematic"),
        ("mcmc", 1000, "systematic"),
        # the parents are one of the two draws where a step resampled
        ("rejection", 1000, "multinomial"),
    ],
)
def test_paris_matches_rts_sum_and_lag_one_moment(data, method, n, scheme):
    ys, sm, sP, cross = data
    exact_sum = sm.sum()
    exact_cross = np.sum(cross + sm[:-1] * sm[1:])

    def one(key):
        res = pk.smoothing.paris(
            key, SSM, ys, additive_fn=H, initial_fn=H0, num_particles=n, method=method,
            resampling=scheme,
        )  # fmt: skip
        return res.estimate, res.mean_trials, res.num_exact

    est, trials, num_exact = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(2), 8))
    assert _z(est["sum"], exact_sum) < Z
    assert _z(est["cross"], exact_cross) < Z
    if method == "rejection":
        # linear cost: a few proposals per draw and only a small fraction done exactly
        assert float(np.mean(trials[:, 1:])) < 10.0
        assert float(np.mean(num_exact[:, 1:])) < 0.2 * 2 * n
    elif method == "mcmc":  # no exact draw; mean_trials is the acceptance rate
        assert np.all(np.asarray(num_exact) == 0)
        assert 0.2 < float(np.mean(trials[:, 1:])) < 1.0
    else:
        assert np.all(np.asarray(num_exact[:, 1:]) == 2 * n)


def test_paris_online_api_reproduces_batch_run(data):
    ys = data[0]
    kw = dict(additive_fn=H, initial_fn=H0, num_particles=64, method="exact")
    batch = pk.smoothing.paris(jax.random.key(7), SSM, ys, **kw)
    smoother = pk.smoothing.paris_online(SSM, **kw)
    k0, k_run = jax.random.split(jax.random.key(7))
    state = smoother.init(k0, ys[0])
    for t in range(1, ys.shape[0]):
        state, info = smoother.update(jax.random.fold_in(k_run, t), state, ys[t])
        assert int(state.t) == t
    np.testing.assert_allclose(state.estimate["sum"], batch.estimate["sum"], rtol=1e-5)
    np.testing.assert_allclose(state.estimate["cross"], batch.estimate["cross"], rtol=1e-5)
    np.testing.assert_allclose(batch.estimates["sum"][-1], batch.estimate["sum"], rtol=1e-6)
    assert batch.tau["sum"].shape == (64,)
    assert np.isfinite(batch.log_evidence) and not bool(batch.failed)


def test_paris_missing_observations_and_multivariate_state():
    """A 2-D random walk with a missing observation: E[sum x_t | y] against the Kalman
    smoother (the automatic bound of a MultivariateNormal transition is used)."""
    from exact import LinearGaussian

    d = 2
    cov = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.MultivariateNormal(jnp.zeros(d), jnp.eye(d)),
        transition=lambda x_prev, t: dist.MultivariateNormal(0.8 * x_prev, cov),
        observation=lambda x, t: dist.Normal(x, 0.6).to_event(1),
    )
    _, ys = ssm.simulate(jax.random.key(8), 12)
    ys = ys.at[5].set(jnp.nan)
    model = LinearGaussian(
        np.zeros(d), np.eye(d), 0.8 * np.eye(d), np.asarray(cov), np.eye(d), 0.36 * np.eye(d)
    )
    sm, _, _ = rts(model, np.asarray(ys))

    def one(key):
        return pk.smoothing.paris(
            key, ssm, ys, additive_fn=lambda xp, x, t: x, initial_fn=lambda x: x,
            num_particles=100, method="rejection",
        ).estimate  # fmt: skip

    est = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(9), 8))
    assert est.shape == (8, d)
    assert _z(est, sm.sum(0)) < Z


def test_max_log_density_closed_forms():
    from particlekit.smoothing import max_log_density

    np.testing.assert_allclose(
        max_log_density(dist.Normal(1.0, 2.0)), dist.Normal(1.0, 2.0).log_prob(1.0), rtol=1e-6
    )
    mvn = dist.MultivariateNormal(jnp.ones(3), jnp.diag(jnp.array([1.0, 2.0, 3.0])))
    np.testing.assert_allclose(max_log_density(mvn), mvn.log_prob(jnp.ones(3)), rtol=1e-6)
    ind = dist.Normal(jnp.zeros(2), jnp.array([0.5, 2.0])).to_event(1)
    np.testing.assert_allclose(max_log_density(ind), ind.log_prob(jnp.zeros(2)), rtol=1e-6)
    assert max_log_density(dist.StudentT(3.0)) is None


def test_invalid_arguments_raise_before_tracing(data):
    ys = data[0]
    with pytest.raises(ValueError, match="num_particles"):
        pk.smoothing.paris(jax.random.key(0), SSM, ys, additive_fn=H, num_particles=0)
    with pytest.raises(ValueError, match="num_backward"):
        pk.smoothing.paris(
            jax.random.key(0), SSM, ys, additive_fn=H, num_particles=10, num_backward=0
        )
    with pytest.raises(ValueError, match="method"):
        pk.smoothing.paris(jax.random.key(0), SSM, ys, additive_fn=H, num_particles=10,
                           method="fast")  # fmt: skip
    with pytest.raises(ValueError, match="additive_fn"):
        pk.smoothing.paris(jax.random.key(0), SSM, ys, additive_fn=None, num_particles=10)
    no_history = pk.filters.FilterResult(*([None] * len(pk.filters.FilterResult._fields)))
    with pytest.raises(ValueError, match="keep_history"):
        pk.smoothing.ffbs(jax.random.key(0), SSM, no_history, 10)
    # a Student-t transition has no automatic density bound
    heavy = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.StudentT(4.0, 0.8 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.7),
    )
    with pytest.raises(ValueError, match="bound"):
        pk.smoothing.paris(jax.random.key(0), heavy, ys, additive_fn=H, num_particles=10,
                           method="rejection")  # fmt: skip


def test_paris_and_ppg_evidence_is_a_compensated_sum_over_long_horizons():
    """An observation that ignores the state makes every increment exact (no Monte Carlo
    noise), so the evidence is a plain sum of T = 30 000 float32 terms: summed naively it is
    off by ~0.15 nats, the compensated sum by ~1e-3."""
    num_steps = 30_000
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda xp, t: dist.Normal(0.5 * xp, 1.0),
        observation=lambda x, t: dist.Normal(0.0, 1.0),
    )
    ys = jnp.asarray(np.random.default_rng(0).normal(size=num_steps) * 1.3, jnp.float32)
    terms = -0.5 * np.log(2 * np.pi) - 0.5 * np.asarray(ys, np.float64) ** 2
    exact = float(np.sum(terms))
    naive = np.float32(0.0)
    for term in terms.astype(np.float32):
        naive = np.float32(naive + term)
    assert abs(float(naive) - exact) > 0.05  # the test can fail: plain float32 drifts
    res = pk.smoothing.paris(
        jax.random.key(0), ssm, ys, additive_fn=lambda xp, x, t: x, num_particles=16
    )
    assert abs(float(res.log_evidence) - exact) < 0.01
    est = pk.pgibbs.ppg(
        jax.random.key(1),
        ssm,
        ys[:5000],
        additive_fn=lambda xp, x, t: x,
        num_particles=16,
        num_iterations=2,
        burn_in=0,
    )
    assert abs(float(est.log_evidence[-1]) - float(np.sum(terms[:5000]))) < 0.01


def test_paris_additive_functional_has_no_float32_drift():
    """A constant h = 0.1 summed over T = 30 000 steps: a plain float32 running sum drifts by
    ~1e-4 relative; PaRIS carries each statistic as a double-float pair and stays exact to
    float32 rounding of the total. Also with a tuple-valued statistic."""
    num_steps = 30_000
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda xp, t: dist.Normal(0.5 * xp, 1.0),
        observation=lambda x, t: dist.Normal(0.0, 1.0),
    )
    naive = np.float32(0.1)
    for _ in range(num_steps - 1):
        naive = np.float32(naive + np.float32(0.1))
    exact = 0.1 * num_steps
    assert abs(float(naive) / exact - 1.0) > 1e-5  # the test can fail: plain float32 drifts
    res = pk.smoothing.paris(
        jax.random.key(0),
        ssm,
        jnp.zeros(num_steps),
        additive_fn=lambda xp, x, t: (0.1, jnp.array([0.1, 0.2])),
        initial_fn=lambda x: (0.1, jnp.array([0.1, 0.2])),
        num_particles=16,
    )
    scalar, vector = res.estimate
    assert abs(float(scalar) / exact - 1.0) < 1e-6
    np.testing.assert_allclose(np.asarray(vector), [exact, 2 * exact], rtol=1e-6)


def test_ffbs_of_a_failed_filter_raises_or_is_nan_under_jit():
    """Impossible data (an observation no particle explains): the filter fails; FFBS of it
    is a ValueError eagerly and NaN paths under ``jit`` (it returned finite-looking
    trajectories)."""
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Uniform(x - 1.0, x + 1.0),
    )
    ys = jnp.array([0.1, 0.3, 50.0, 0.2])
    res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=64)
    assert bool(res.failed)
    with pytest.raises(ValueError, match="failed filter"):
        pk.smoothing.ffbs(jax.random.key(2), ssm, res, 3)
    traced = jax.jit(lambda r: pk.smoothing.ffbs(jax.random.key(2), ssm, r, 3))
    assert np.isnan(np.asarray(traced(res))).all()
    ok = pk.filters.bootstrap(jax.random.key(1), ssm, jnp.zeros(4), num_particles=64)
    assert np.isfinite(np.asarray(traced(ok))).all()


def _tight_transition_model():
    """Transition ``N(x, 0.1^2)``: ``log sup f = -log(0.1) - log(2 pi) / 2 = 1.38``."""
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(x_prev, 0.1),
        observation=lambda x, t: dist.Normal(x, 0.1),
    )


def test_a_transition_bound_below_the_density_is_reported():
    """A ``log_transition_bound`` below ``sup f`` makes accept–reject accept too often (the
    smoothers were ~30 % off with no sign): FFBS, PaRIS, PPG and conditional SMC with
    backward sampling warn after the run (also
    under ``jit``), count it per step (``PaRISResult``'s info), and stay silent with a
    valid bound; NaN and -inf bounds are ValueErrors before tracing."""
    import warnings

    ssm = _tight_transition_model()
    _, ys = ssm.simulate(jax.random.key(0), 12)
    res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=300)
    h = lambda xp, x, t: x  # noqa: E731
    call = dict(method="rejection", log_transition_bound=0.0)
    with pytest.warns(RuntimeWarning, match="acceptance probability above 1"):
        pk.smoothing.ffbs(jax.random.key(2), ssm, res, 300, **call)
    with pytest.warns(RuntimeWarning, match="paris: .* above 1"):
        jax.jit(lambda k: pk.smoothing.paris(k, ssm, ys, additive_fn=h, num_particles=300, **call))(
            jax.random.key(3)
        )
    with pytest.warns(RuntimeWarning, match="ppg: .* above 1"):
        pk.pgibbs.ppg(
            jax.random.key(6), ssm, ys, additive_fn=h, num_particles=300, num_iterations=2,
            burn_in=0, **call,
        )  # fmt: skip
    xs_ref, _ = ssm.simulate(jax.random.key(7), 12)
    with pytest.warns(RuntimeWarning, match="csmc: .* above 1"):
        new = pk.pgibbs.csmc(
            jax.random.key(8), ssm, ys, xs_ref, num_particles=300, backward_sampling=True,
            return_info=True, **call,
        )  # fmt: skip
    assert int(new.num_above_bound) > 0
    online = pk.smoothing.paris_online(ssm, additive_fn=h, num_particles=300, **call)
    state = online.init(jax.random.key(4), ys[0])
    _, info = online.update(jax.random.key(5), state, ys[1])
    assert int(info.num_above_bound) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid bound (the default, derived): no warning
        pk.smoothing.ffbs(jax.random.key(2), ssm, res, 300, method="rejection")
    for bad in (float("nan"), -float("inf")):
        with pytest.raises(ValueError, match="log_transition_bound"):
            pk.smoothing.ffbs(jax.random.key(2), ssm, res, 3, log_transition_bound=bad)
        with pytest.raises(ValueError, match="log_transition_bound"):
            pk.smoothing.paris(
                jax.random.key(3), ssm, ys, additive_fn=h, num_particles=8,
                log_transition_bound=bad,
            )  # fmt: skip
