"""Particle filters against exact answers.

Linear-Gaussian models are checked against the float64 Kalman filter of ``tests/exact.py``.
``Z_hat = exp(log Z_hat)`` is unbiased while ``log Z_hat`` is biased by about
``-Var(log Z_hat) / 2`` (Jensen), so the main check is on the natural scale: over ``S``
seeds (one ``vmap``), ``mean(exp(log Z_hat - log Z))`` is 1 within 5 standard errors.
Every filter configuration is jitted once and reused for every data set of the same shape.
"""

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import LinearGaussian, kalman, scalar_model

import particlekit as pk

Z = 5.0
S = 64  # seeds per Monte Carlo expectation
T = 50
N = 500

# ---------------------------------------------------------------------------- 1-D model
A1, Q1, R1 = 0.9, 1.0, 0.5
LG1 = scalar_model(A1, Q1, R1)
SSM1 = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(A1 * x_prev, Q1),
    observation=lambda x, t: dist.Normal(x, R1),
)
_S2 = 1.0 / (1.0 / Q1**2 + 1.0 / R1**2)  # locally optimal proposal variance
_S02 = 1.0 / (1.0 + 1.0 / R1**2)


def optimal_proposal(x_prev, y, t):
    return dist.Normal(_S2 * (A1 * x_prev / Q1**2 + y / R1**2), np.sqrt(_S2))


def optimal_initial_proposal(y):
    return dist.Normal(_S02 * y / R1**2, np.sqrt(_S02))


def exact_log_predictive(x_prev, y, t):
    return dist.Normal(A1 * x_prev, np.sqrt(Q1**2 + R1**2)).log_prob(y)


# ---------------------------------------------------------------------------- 3-D model
A3 = np.array([[0.8, 0.1, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.9]])
Q3 = np.diag([0.5, 0.4, 0.6]) ** 2
H3 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
R3 = np.eye(2) * 0.5**2
LG3 = LinearGaussian(np.zeros(3), np.eye(3), A3, Q3, H3, R3)
_A3, _Q3, _H3, _R3 = (jnp.asarray(m, jnp.float32) for m in (A3, Q3, H3, R3))
SSM3 = pk.StateSpaceModel(
    initial=lambda: dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3)),
    transition=lambda x_prev, t: dist.MultivariateNormal(_A3 @ x_prev, _Q3),
    observation=lambda x, t: dist.MultivariateNormal(_H3 @ x, _R3),
)
SSM3_VEC = pk.StateSpaceModel(
    initial=lambda: dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3)),
    transition=lambda xs, t: dist.MultivariateNormal(xs @ _A3.T, _Q3),
    observation=lambda xs, t: dist.MultivariateNormal(xs @ _H3.T, _R3),
    vectorized=True,
)


# ---------------------------------------------------------------------------- helpers
@cache
def _runner(name, ssm, num_particles, keep_history=True, **kwargs):
    """Jitted ``(keys (S,), ys) -> dict`` running filter ``name`` once per key."""
    filter_fn = getattr(pk.filters, name)

    def one(key, ys):
        res = filter_fn(key, ssm, ys, num_particles=num_particles,
                        keep_history=keep_history, **kwargs)  # fmt: skip
        out = {"log_z": res.log_evidence, "failed": res.failed, "ess": res.ess,
               "resampled": res.resampled}  # fmt: skip
        if keep_history:
            out["mean"] = res.filtering_mean()
        return out

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def run_filter(name, ssm, ys, *, seed=0, num_particles=N, seeds=S, **kwargs):
    keys = jax.random.split(jax.random.key(seed), seeds)
    out = _runner(name, ssm, num_particles, **kwargs)(keys, jnp.asarray(ys, jnp.float32))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def assert_unbiased(log_z, exact_log_z):
    """Z_hat / Z has mean 1 within Z standard errors, and mean log Z_hat sits at the
    Jensen bias -Var/2 (a second-order approximation, so allowed the SE of the variance
    term as well)."""
    ratio = np.exp(log_z - exact_log_z)
    se = ratio.std() / np.sqrt(len(ratio))
    assert abs(ratio.mean() - 1.0) < Z * se, (ratio.mean(), se)
    var = log_z.var()
    jensen = -0.5 * var
    se_log = np.sqrt(var / len(log_z)) + 0.5 * var * np.sqrt(2.0 / len(log_z))
    assert abs(log_z.mean() - exact_log_z - jensen) < Z * se_log, (log_z.mean(), exact_log_z)


def assert_means_match(means, exact_means):
    """Average over seeds of the filtering means equals the Kalman filtered means."""
    avg = means.mean(axis=0)
    se = means.std(axis=0) / np.sqrt(means.shape[0])
    np.testing.assert_array_less(np.abs(avg - exact_means.reshape(avg.shape)), Z * se + 1e-3)


@cache
def data1(seed=0, num_steps=T):
    return np.asarray(SSM1.simulate(jax.random.key(seed), num_steps)[1], np.float64)


@cache
def data3(seed=0):
    return np.asarray(SSM3.simulate(jax.random.key(seed), T)[1], np.float64)


# ---------------------------------------------------------------------------- 1-D
def test_bootstrap_1d_matches_kalman():
    ys = data1()
    log_z, means = kalman(LG1, ys)[:2]
    out = run_filter("bootstrap", SSM1, ys)
    assert not out["failed"].any()
    assert_unbiased(out["log_z"], log_z)
    assert_means_match(out["mean"], means)
    assert out["ess"].shape == (S, T)


def test_guided_optimal_proposal_beats_bootstrap():
    ys = data1()
    log_z, means = kalman(LG1, ys)[:2]
    guided = run_filter("guided", SSM1, ys, proposal=optimal_proposal,
                        initial_proposal=optimal_initial_proposal)  # fmt: skip
    assert_unbiased(guided["log_z"], log_z)
    assert_means_match(guided["mean"], means)
    boot = run_filter("bootstrap", SSM1, ys)
    # the variance ratio of two samples of 64 exceeds 2.5 with probability < 1e-4 under
    # equal variances; the optimal proposal is far better than that
    assert boot["log_z"].var() > 3.0 * guided["log_z"].var()
    assert guided["ess"].mean() > boot["ess"].mean()


def test_auxiliary_matches_kalman():
    ys = data1()
    log_z, means = kalman(LG1, ys)[:2]
    out = run_filter("auxiliary", SSM1, ys, log_predictive=exact_log_predictive)
    assert_unbiased(out["log_z"], log_z)
    assert_means_match(out["mean"], means)


@pytest.mark.parametrize("name", ["bootstrap", "guided", "auxiliary"])
def test_missing_observations_are_skipped(name):
    ys = data1(seed=1).copy()
    ys[[0, 7, 8, 30, T - 1]] = np.nan
    log_z, means = kalman(LG1, ys)[:2]
    kwargs = {
        "bootstrap": {},
        "guided": {"proposal": optimal_proposal, "initial_proposal": optimal_initial_proposal},
        "auxiliary": {"log_predictive": exact_log_predictive},
    }[name]
    out = run_filter(name, SSM1, ys, **kwargs)
    assert not out["failed"].any()
    assert_unbiased(out["log_z"], log_z)
    assert_means_match(out["mean"], means)


@pytest.mark.parametrize("name", ["bootstrap", "guided", "auxiliary"])
def test_missing_steps_add_exactly_zero_evidence(name):
    """A fully missing y_t has potential 1 for every particle: its increment is exactly 0
    (computed, log sum_i W_i of unequal normalised weights missed 0 by an ulp), and
    log Z does not move there."""
    ys = data1(seed=2).copy()
    ys[10:40] = np.nan
    kwargs = {
        "bootstrap": {},
        "guided": {"proposal": optimal_proposal},
        "auxiliary": {"log_predictive": exact_log_predictive},
    }[name]
    # rarely resampled, so the weights are not uniform at the missing steps (where the sum
    # of uniform weights is trivially 1)
    # (32 particles: unfixed, the auxiliary filter's increment missed 0 at one of these steps)
    res = getattr(pk.filters, name)(
        jax.random.key(5), SSM1, ys, num_particles=32, ess_threshold=0.05, **kwargs
    )
    increments = np.asarray(res.log_evidence_increments)
    assert (increments[10:40] == 0.0).all(), increments[10:40]
    assert not bool(res.failed) and np.isfinite(increments).all()
    assert (np.asarray(res.ess)[10:40] < 31).all()
    np.testing.assert_allclose(increments.sum(), float(res.log_evidence), rtol=1e-5)


def test_guided_missing_first_observation_draws_from_the_initial_law():
    """At a missing y_0 the guided filter draws x_0 from the initial law with equal
    weights, as it uses the transition at later missing steps: the initial proposal, built
    for a made-up y_0 = 0, is narrower than the prior (variance 0.2 against 1), so its
    importance weights p / q had infinite variance."""
    ys = data1(seed=1).copy()
    ys[0] = np.nan
    res = pk.filters.guided(
        jax.random.key(4), SSM1, ys, num_particles=N, proposal=optimal_proposal,
        initial_proposal=optimal_initial_proposal,
    )  # fmt: skip
    np.testing.assert_allclose(float(res.ess[0]), N, rtol=1e-5)
    x0 = np.asarray(res.particles[0], np.float64)
    # the prior's sd is 1 (the proposal's sqrt(0.2)); sd of the sample sd ~ 1 / sqrt(2 N)
    assert abs(x0.std() - 1.0) < Z / np.sqrt(2 * N), x0.std()


def test_filtering_mean_and_variance_single_run():
    ys = data1()
    _, means, covs = kalman(LG1, ys)[:3]
    res = pk.filters.bootstrap(jax.random.key(3), SSM1, ys, num_particles=N)
    assert res.particles.shape == (T, N) and res.log_weights.shape == (T, N)
    assert res.ancestors.shape == (T, N) and res.ancestors.dtype == jnp.int32
    assert res.resampled.shape == (T,) and not bool(res.resampled[0])
    assert res.log_evidence_increments.shape == (T,)
    np.testing.assert_allclose(res.log_evidence_increments.sum(), res.log_evidence, rtol=1e-4)
    mean = np.asarray(res.filtering_mean(), np.float64)
    var = np.asarray(res.filtering_variance(), np.float64)
    ess = np.asarray(res.ess)
    # per-step error of a weighted mean: sd / sqrt(ESS) (ESS-based, a rough SE; use 6)
    sd = np.sqrt(covs[:, 0, 0])
    assert (np.abs(mean - means[:, 0]) < 6.0 * sd / np.sqrt(ess)).all()
    assert (np.abs(var / covs[:, 0, 0] - 1.0) < 6.0 * np.sqrt(2.0 / ess) + 0.05).all()
    second = np.asarray(res.filtering_mean(lambda x: x**2))
    np.testing.assert_allclose(second - mean**2, var, rtol=1e-3, atol=1e-5)


def test_single_time_step():
    ys = data1()[:1]
    res = pk.filters.bootstrap(jax.random.key(0), SSM1, ys, num_particles=64)
    assert res.particles.shape == (1, 64) and res.ess.shape == (1,)
    assert np.isfinite(float(res.log_evidence))


def test_keep_history_false_same_evidence():
    ys = data1()
    kw = dict(num_particles=64, proposal=optimal_proposal)
    full = pk.filters.guided(jax.random.key(2), SSM1, ys, **kw)
    lean = pk.filters.guided(jax.random.key(2), SSM1, ys, keep_history=False, **kw)
    assert lean.particles is None and lean.log_weights is None and lean.ancestors is None
    assert float(lean.log_evidence) == pytest.approx(float(full.log_evidence), abs=1e-4)
    np.testing.assert_allclose(lean.ess, full.ess, rtol=1e-4)
    np.testing.assert_allclose(lean.final_state.particles, full.particles[-1], rtol=1e-5)
    with pytest.raises(ValueError, match="keep_history=True"):
        lean.filtering_mean()


def test_resampling_options():
    ys = data1()
    log_z = kalman(LG1, ys)[0]
    out = run_filter("bootstrap", SSM1, ys, resampling="stratified", ess_threshold=1.0)
    assert out["resampled"][:, 1:].all() and not out["resampled"][:, 0].any()
    assert_unbiased(out["log_z"], log_z)
    never = pk.filters.bootstrap(
        jax.random.key(0), SSM1, ys, num_particles=64, ess_threshold=0.0,
        resampling=pk.resampling.multinomial,
    )  # fmt: skip
    assert not bool(never.resampled.any())
    assert (np.asarray(never.ancestors) == np.arange(64)).all()


# ---------------------------------------------------------------------------- 3-D
@pytest.mark.parametrize("ssm", [SSM3, SSM3_VEC], ids=["vmapped", "vectorized"])
def test_bootstrap_3d_matches_kalman(ssm):
    ys = data3()
    assert ys.shape == (T, 2)
    log_z, means = kalman(LG3, ys)[:2]
    out = run_filter("bootstrap", ssm, ys)
    assert out["mean"].shape == (S, T, 3)
    assert_unbiased(out["log_z"], log_z)
    assert_means_match(out["mean"], means)


def test_missing_vector_observations():
    ys = data3().copy()
    ys[[3, 4, 40]] = np.nan
    log_z, means = kalman(LG3, ys)[:2]
    out = run_filter("bootstrap", SSM3_VEC, ys, seed=1)
    assert_unbiased(out["log_z"], log_z)
    assert_means_match(out["mean"], means)


# ---------------------------------------------------------------------------- long horizon
@pytest.mark.optimized
@pytest.mark.slow
def test_long_horizon_float32_evidence():
    """T = 10,000 in float32 with keep_history=False: |log Z| ~ 1e4, where a float32 ulp
    is ~1e-3, and naive summation would drift. A strongly informative model (r = 0.1)
    with the locally optimal proposal keeps Var(log Z_hat) small, so any rounding drift
    shows up against the Kalman value."""
    r, num_steps = 0.1, 10_000
    s2 = 1.0 / (1.0 + 1.0 / r**2)
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(A1 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, r),
        vectorized=True,
    )
    proposal = lambda x_prev, y, t: dist.Normal(s2 * (A1 * x_prev + y / r**2), np.sqrt(s2))
    ys = np.asarray(ssm.simulate(jax.random.key(7), num_steps)[1], np.float64)
    exact = kalman(scalar_model(A1, 1.0, r), ys)[0]
    out = run_filter("guided", ssm, ys, num_particles=512, seeds=16, keep_history=False,
                     proposal=proposal)  # fmt: skip
    assert not out["failed"].any()
    assert_unbiased(out["log_z"], exact)
    # the test has power: a rounding drift of one nat would be > 5 standard errors
    assert out["log_z"].std() / np.sqrt(len(out["log_z"])) < 0.2


# ---------------------------------------------------------------------------- SV vs particles
def test_stochastic_volatility_matches_particles():
    particles = pytest.importorskip("particles")
    from particles import state_space_models as ssms

    mu, rho, sigma = -1.02, 0.9702, 0.178  # particles.StochVol's parametrisation
    sv = ssms.StochVol(mu=mu, rho=rho, sigma=sigma)
    np.random.seed(0)  # noqa: NPY002 (particles draws from the global NumPy state)
    _, y = sv.simulate(100)
    ys = np.array([float(np.squeeze(v)) for v in y])

    reps = 24
    ref = []
    for _ in range(reps):
        smc = particles.SMC(fk=ssms.Bootstrap(ssm=sv, data=ys), N=N,
                            resampling="systematic", ESSrmin=0.5)  # fmt: skip
        smc.run()
        ref.append(smc.logLt)
    ref = np.array(ref)

    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(mu, sigma / np.sqrt(1.0 - rho**2)),
        transition=lambda x_prev, t: dist.Normal(mu + rho * (x_prev - mu), sigma),
        observation=lambda x, t: dist.Normal(0.0, jnp.exp(0.5 * x)),
    )
    ours = run_filter("bootstrap", ssm, ys)["log_z"]
    # compare Z_hat on the natural scale (both unbiased for the same Z)
    c = np.mean(ours)
    a, b = np.exp(ours - c), np.exp(ref - c)
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < Z * se, (ours.mean(), ref.mean(), se)
    # same algorithm, same spread of log Z_hat (F-ratio bound for 64 vs 24 samples)
    assert 1 / 4 < ours.var() / ref.var() < 4


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_particles(bad):
    with pytest.raises(ValueError, match="num_particles"):
        pk.filters.bootstrap(jax.random.key(0), SSM1, data1(), num_particles=bad)


def test_ys_shape_mismatch():
    with pytest.raises(ValueError, match="ys has shape"):
        pk.filters.bootstrap(jax.random.key(0), SSM1, np.zeros((T, 2)), num_particles=8)
    with pytest.raises(ValueError, match=r"\(T,\) \+ \(2,\)"):
        pk.filters.bootstrap(jax.random.key(0), SSM3, np.zeros((T, 3)), num_particles=8)
    with pytest.raises(ValueError, match="ys has shape"):
        pk.filters.bootstrap(jax.random.key(0), SSM3_VEC, np.zeros(T), num_particles=8)
    with pytest.raises(ValueError, match="leading time axis"):
        pk.filters.bootstrap(jax.random.key(0), SSM1, np.zeros((0,)), num_particles=8)


def test_callables_must_return_distributions():
    bad_transition = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: 0.9 * x_prev,
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    with pytest.raises(ValueError, match="transition.*must return a numpyro"):
        pk.filters.bootstrap(jax.random.key(0), bad_transition, data1(), num_particles=8)
    bad_initial = pk.StateSpaceModel(
        initial=lambda: 0.0,
        transition=lambda x_prev, t: dist.Normal(x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    with pytest.raises(ValueError, match="initial.*must return a numpyro"):
        pk.filters.bootstrap(jax.random.key(0), bad_initial, data1(), num_particles=8)
    bad_observation = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 1.0).log_prob,
    )
    with pytest.raises(ValueError, match="observation.*must return a numpyro"):
        pk.filters.auxiliary(jax.random.key(0), bad_observation, data1(), num_particles=8,
                             log_predictive=exact_log_predictive)  # fmt: skip
    with pytest.raises(ValueError, match="proposal"):
        pk.filters.guided(jax.random.key(0), SSM1, data1(), proposal=None, num_particles=8)
    with pytest.raises(ValueError, match="ssm must be"):
        pk.filters.bootstrap(jax.random.key(0), "model", data1(), num_particles=8)
    with pytest.raises(ValueError, match="ess_threshold"):
        pk.filters.bootstrap(jax.random.key(0), SSM1, data1(), num_particles=8, ess_threshold=2)
    with pytest.raises(ValueError, match="unknown resampling"):
        pk.filters.bootstrap(jax.random.key(0), SSM1, data1(), num_particles=8, resampling="x")


def test_partially_missing_vector_observation():
    ys = data3().copy()
    ys[5, 1] = np.nan
    with pytest.raises(ValueError, match="partially missing observations at steps \\[5\\]"):
        pk.filters.bootstrap(jax.random.key(0), SSM3, ys, num_particles=8)


def _filter_kwargs_3d(name):
    if name == "guided":
        return {
            "proposal": lambda x_prev, y, t: dist.MultivariateNormal(_A3 @ x_prev, _Q3),
            "initial_proposal": lambda y: dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3)),
        }
    if name == "auxiliary":
        return {"log_predictive": lambda x_prev, y, t: jnp.zeros(())}
    return {}


@pytest.mark.parametrize("where", [0, 5])
@pytest.mark.parametrize("name", ["bootstrap", "guided", "auxiliary"])
def test_partially_missing_vector_observation_traced_is_flagged(name, where):
    """Under jit (and vmap) a partly missing y_t cannot raise; it used to be skipped as if
    fully missing (increment 0, failed=False). Now every particle gets zero weight at that
    step, is counted in num_nonfinite, and the run reports failed with log Z = -inf, while a
    fully missing y_t is still skipped."""
    ys = data3().copy()
    ys[where, 1] = np.nan
    filter_fn = getattr(pk.filters, name)
    kwargs = _filter_kwargs_3d(name)
    n = 16

    def one(key, ys):
        return filter_fn(key, SSM3, ys, num_particles=n, **kwargs)

    res = jax.jit(one)(jax.random.key(0), jnp.asarray(ys, jnp.float32))
    assert bool(res.failed)
    assert float(res.log_evidence) == -np.inf
    assert int(res.num_nonfinite[where]) == n
    assert float(res.log_evidence_increments[where]) == -np.inf
    assert not np.isnan(np.asarray(res.log_weights)).any()
    batched = jax.vmap(one)(
        jax.random.split(jax.random.key(1), 3), jnp.stack([jnp.asarray(ys, jnp.float32)] * 3)
    )
    assert np.asarray(batched.failed).all()
    full = data3().copy()
    full[where] = np.nan
    ok = jax.jit(one)(jax.random.key(0), jnp.asarray(full, jnp.float32))
    assert not bool(ok.failed) and float(ok.log_evidence_increments[where]) == 0.0
    assert int(ok.num_nonfinite.sum()) == 0


def test_auxiliary_counts_each_nonfinite_particle_once():
    """A first-stage weight that is NaN for x_prev > 0 is one non-finite particle: it used to
    be counted again at the second stage (num_nonfinite doubled). Without resampling
    (ess_threshold=0) the particles are those of the history, so the count at step t is the
    number of particles with x_{t-1} > 0."""

    def log_predictive(x_prev, y, t):
        value = exact_log_predictive(x_prev, y, t)
        return jnp.where(x_prev > 0, jnp.nan, value)

    res = pk.filters.auxiliary(jax.random.key(0), SSM1, data1()[:10],
                               log_predictive=log_predictive, num_particles=64,
                               ess_threshold=0.0)  # fmt: skip
    expected = np.sum(np.asarray(res.particles[:-1]) > 0, axis=1)
    assert expected.sum() > 0
    np.testing.assert_array_equal(np.asarray(res.num_nonfinite[1:]), expected)
    assert int(res.num_nonfinite[0]) == 0


@pytest.mark.filterwarnings("ignore:Out-of-support")
@pytest.mark.parametrize("where", [0, 20])
def test_impossible_data_fails_cleanly(where):
    """A uniform observation density and an observation outside its support: every
    weight is zero, so log Z = -inf, failed is set, and nothing is NaN."""
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.5 * x_prev, 1.0),
        observation=lambda x, t: dist.Uniform(x - 1.0, x + 1.0),
    )
    ys = np.zeros(30)
    ys[where] = 100.0
    res = pk.filters.bootstrap(jax.random.key(0), ssm, ys, num_particles=64)
    assert bool(res.failed)
    assert float(res.log_evidence) == -np.inf
    for leaf in (res.log_evidence_increments, res.ess, res.log_weights, res.particles):
        assert not np.isnan(np.asarray(leaf)).any()
    assert float(res.ess[where]) == 0.0
    ok = pk.filters.bootstrap(jax.random.key(0), ssm, np.zeros(30), num_particles=64)
    assert not bool(ok.failed) and np.isfinite(float(ok.log_evidence))


def test_batch_size_gives_the_same_filter():
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    _, ys = ssm.simulate(jax.random.key(0), 20)
    full = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=100)
    chunked = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=100, batch_size=32)
    # the same keys per particle: the same particles, weights and evidence (32 does not
    # divide 100: lax.map handles the remainder)
    np.testing.assert_allclose(chunked.particles, full.particles, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked.log_evidence, full.log_evidence, rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=100, batch_size=0)
