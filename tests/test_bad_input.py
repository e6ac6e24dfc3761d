"""Property-based bad-input suite (issue 18) over the public entry points.

The property, for every entry point and every input drawn here: the call either raises a
``ValueError`` with a message, or returns a result whose diagnostics flag the failure
(``failed``, ``num_nonfinite``, a ``-inf`` evidence), and a returned sample or evidence is
never NaN (the evidence may be ``-inf``, and then the result says it failed). Where the
input is known to be fine (a missing observation, a weight that is only partly invalid)
the result must also *not* be flagged, so that a recipe flagging everything cannot pass.

The sizes are tiny (``N = 8`` particles, ``T = 4`` steps) and the shapes few, so that
each recipe compiles once and every further example reuses it; the user functions are
module-level functions or equinox modules whose parameters are arrays (traced, not
compiled in), for the same reason. ``derandomize=True`` makes every run draw the same
examples.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import particlekit as pk

N, T = 8, 4
KEY = jax.random.key(0)
NAN, INF = float("nan"), float("inf")


def fast(max_examples):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------------ checks
def _float_leaves(tree):
    leaves = jax.tree.leaves(tree)
    return [np.asarray(a) for a in leaves if np.issubdtype(np.asarray(a).dtype, np.floating)]


def _no_nan(tree, what):
    for leaf in _float_leaves(tree):
        assert not np.isnan(leaf).any(), f"NaN in the returned {what}"


def expect_value_error(call):
    """The call must raise a ValueError whose message is not empty (nothing else)."""
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).strip(), "a ValueError without a message"


def check_outcome(call, entry, *, must_flag=False, must_not_flag=False):
    """The property: a ValueError with a message, or a result with no NaN in its samples
    and evidence, whose evidence is ``-inf`` only when the result is flagged. Returns the
    result (None after a ValueError)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except ValueError as err:
        assert str(err).strip(), "a ValueError without a message"
        return None
    _no_nan(entry.samples(result), "samples")
    counts = getattr(result, "num_nonfinite", None)
    if counts is not None and entry.evidence is not None:
        # a particle is counted once per step (the auxiliary filter counted it twice)
        assert np.all(np.asarray(counts) <= N), f"num_nonfinite {counts} exceeds N = {N}"
    flagged = bool(entry.flagged(result))
    if entry.evidence is not None:
        evidence = np.asarray(entry.evidence(result), np.float64)
        assert not np.isnan(evidence).any(), "NaN evidence"
        assert not np.isposinf(evidence).any(), "+inf evidence"
        if np.isneginf(evidence).any():
            assert flagged, "evidence -inf without a failure flag"
    if must_flag:
        assert flagged, "impossible input, but the result does not flag a failure"
    if must_not_flag:
        assert not flagged, "valid input, but the result flags a failure"
    return result


class Entry:
    """How to read one entry point's result."""

    def __init__(self, samples, evidence=None, flagged=None):
        self.samples = samples
        self.evidence = evidence
        self.flagged = flagged if flagged is not None else (lambda r: np.any(r.failed))


def _failed_or_nonfinite(r):
    return bool(np.any(r.failed)) or int(np.sum(r.num_nonfinite)) > 0


# ------------------------------------------------------------------------------ models
def _initial():
    return dist.Normal(0.0, 1.0)


def _transition(x_prev, t):
    return dist.Normal(0.9 * x_prev, 1.0)


def _observation(x, t):
    return dist.Normal(x, 0.5)


SSM = pk.StateSpaceModel(initial=_initial, transition=_transition, observation=_observation)
SSM2 = pk.StateSpaceModel(
    initial=lambda: dist.Normal(jnp.zeros(2), 1.0).to_event(1),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0).to_event(1),
    observation=lambda x, t: dist.Normal(x, 0.5).to_event(1),
)


def _proposal(x_prev, y, t):
    # uses y as given: an infinite observation gives infinite proposals
    return dist.Normal(0.5 * x_prev + 0.5 * y, 1.0)


def _log_predictive(x_prev, y, t):
    # a non-finite look-ahead weight wherever |y| > 4 (NaN above, +inf below)
    exact = dist.Normal(0.9 * x_prev, np.sqrt(1.25)).log_prob(y)
    return jnp.where(y > 4.0, jnp.nan, jnp.where(y < -4.0, jnp.inf, exact))


def _additive(x_prev, x, t):
    return x


def _model_fn(a):
    return pk.StateSpaceModel(
        initial=_initial,
        transition=lambda x_prev, t: dist.Normal(a * x_prev, 1.0),
        observation=_observation,
    )


def _keep_theta(key, a, xs, ys):
    return a


def _sc_proposal(phi):
    return lambda x_prev, y, t: dist.Normal(phi[0] * x_prev + phi[1] * y, jnp.exp(phi[2]))


def _sc_initial_proposal(phi):
    return lambda y: dist.Normal(phi[1] * y, jnp.exp(phi[2]))


def _ffbs(key, ys, n):
    filtered = pk.filters.bootstrap(key, SSM, ys, num_particles=n)
    return filtered, pk.smoothing.ffbs(key, SSM, filtered, 4)


def _filter_entry():
    return Entry(
        lambda r: (r.particles, r.log_weights), lambda r: r.log_evidence, _failed_or_nonfinite
    )


SSM_CALLS = {
    "bootstrap": lambda key, ys, n: pk.filters.bootstrap(key, SSM, ys, num_particles=n),
    "guided": lambda key, ys, n: pk.filters.guided(
        key, SSM, ys, proposal=_proposal, num_particles=n
    ),
    "auxiliary": lambda key, ys, n: pk.filters.auxiliary(
        key, SSM, ys, log_predictive=_log_predictive, num_particles=n
    ),
    "ffbs": lambda key, ys, n: _ffbs(key, ys, n),
    "paris": lambda key, ys, n: pk.smoothing.paris(
        key, SSM, ys, additive_fn=_additive, num_particles=n
    ),
    "csmc": lambda key, ys, n: pk.pgibbs.csmc(
        key, SSM, ys, jnp.zeros(jnp.shape(ys)[:1]), num_particles=n, return_info=True
    ),
    "ppg": lambda key, ys, n: pk.pgibbs.ppg(
        key, SSM, ys, additive_fn=_additive, num_particles=n, num_iterations=2, burn_in=0
    ),
    "particle_gibbs": lambda key, ys, n: pk.pgibbs.particle_gibbs(
        key,
        _model_fn,
        ys,
        theta_init=jnp.float32(0.5),
        num_samples=2,
        num_particles=n,
        theta_update=_keep_theta,
    ),
    "mle": lambda key, ys, n: pk.learning.mle(
        key, _model_fn, jnp.float32(0.5), ys, num_particles=n, num_iterations=2
    ),
    "score_climbing": lambda key, ys, n: pk.learning.score_climbing(
        key,
        SSM,
        ys,
        proposal_fn=_sc_proposal,
        initial_proposal_fn=_sc_initial_proposal,
        phi_init=jnp.zeros(3),
        num_particles=n,
        num_iterations=2,
    ),
}

SSM_ENTRIES = {
    "bootstrap": _filter_entry(),
    "guided": _filter_entry(),
    "auxiliary": _filter_entry(),
    # ffbs draws paths from a filter's result, whose diagnostics flag a failure
    "ffbs": Entry(
        lambda r: (r[0].particles, r[1]),
        lambda r: r[0].log_evidence,
        lambda r: _failed_or_nonfinite(r[0]),
    ),
    "paris": Entry(
        lambda r: (r.particles, r.log_weights, r.estimate, r.tau),
        lambda r: r.log_evidence,
        _failed_or_nonfinite,
    ),
    "csmc": Entry(lambda r: r.trajectory, lambda r: r.log_evidence, _failed_or_nonfinite),
    # PPGResult and MLEResult have no failed field: their flag is the -inf evidence
    "ppg": Entry(
        lambda r: (r.estimate, r.estimates, r.reference),
        lambda r: r.log_evidence,
        lambda r: bool(np.any(np.isneginf(np.asarray(r.log_evidence)))),
    ),
    "particle_gibbs": Entry(lambda r: (r.theta, r.states), flagged=_failed_or_nonfinite),
    "mle": Entry(
        lambda r: (r.theta, r.theta_average, r.trace),
        lambda r: r.log_evidence,
        lambda r: bool(np.any(np.isneginf(np.asarray(r.log_evidence)))),
    ),
    "score_climbing": Entry(
        lambda r: (r.phi, r.phi_average, r.paths), flagged=_failed_or_nonfinite
    ),
}


# diffusion: rewards and densities as equinox modules with array parameters (traced, so
# every example reuses one compilation)
class LinearReward(eqx.Module):
    """``r(x) = a . x``, NaN where ``x[0] > nan_above``."""

    a: jax.Array
    nan_above: jax.Array

    def __call__(self, x):
        return jnp.where(x[0] > self.nan_above, jnp.nan, x @ self.a)


class GaussianDensity(eqx.Module):
    """``log N(x; m, s^2 I)`` up to a constant, NaN where ``x[0] > nan_above``."""

    m: jax.Array
    s: jax.Array
    nan_above: jax.Array

    def __call__(self, x):
        value = -0.5 * jnp.sum(((x - self.m) / self.s) ** 2)
        return jnp.where(x[0] > self.nan_above, jnp.nan, value)


MIXTURE = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], stds=0.7)
MIXTURE2 = pk.diffusion.gaussian_mixture([1.0], [[0.5, -0.5]], stds=1.0)


def _diffusion_entry(samples=lambda r: (r.samples, r.log_weights)):
    return Entry(samples, lambda r: r.log_evidence, _failed_or_nonfinite)


DIFFUSION_CALLS = {
    "fk_steering": lambda key, n: pk.diffusion.fk_steering(
        key, MIXTURE, LinearReward(jnp.ones(2), jnp.float32(INF)), num_particles=n, num_steps=T
    ),
    "pdds": lambda key, n: pk.diffusion.pdds(
        key,
        GaussianDensity(jnp.zeros(2), jnp.float32(1.0), jnp.float32(INF)),
        2,
        num_particles=n,
        num_steps=T,
    ),
    "fk_corrector": lambda key, n: pk.diffusion.fk_corrector(
        key, [MIXTURE, MIXTURE2], [1.0, 1.0], num_particles=n, num_steps=T
    ),
    "best_of_n": lambda key, n: pk.diffusion.best_of_n(
        key, MIXTURE, LinearReward(jnp.ones(2), jnp.float32(INF)), num_samples=n, num_steps=T
    ),
}


# sequence steering: the toy generator and a reward module with array parameters
GEN = pk.steering.toy_generator()
EOS = 3


class TokenReward(eqx.Module):
    """``log phi = weight * #a + offset`` (NaN, inf or -inf parameters allowed)."""

    weight: jax.Array
    offset: jax.Array

    def __call__(self, tokens, length):
        mask = jnp.arange(tokens.shape[0]) < length
        return self.weight * jnp.sum((tokens == 0) & mask) + self.offset


TOKEN_REWARD = TokenReward(jnp.float32(1.0), jnp.float32(0.0))


def _steer(key, n, reward=TOKEN_REWARD, prompt=None):
    return pk.steering.smc(key, GEN, reward, num_particles=n, max_length=T, eos_id=EOS,
                           prompt=prompt)  # fmt: skip


# log_potentials are the user's rewards as evaluated (NaN if the reward is NaN): not checked
STEERING_ENTRY = Entry(lambda r: r.log_weights, lambda r: r.log_evidence, _failed_or_nonfinite)


# static models: a NumPyro model and the same as a LogDensityModel
def _numpyro_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


LOG_DENSITY_MODEL = pk.infer.LogDensityModel(
    log_prior=lambda theta, y: -0.5 * theta**2,
    log_likelihood=lambda theta, y: jnp.sum(-0.5 * (y - theta) ** 2),
    sample_prior=lambda key, y: jax.random.normal(key),
)
SMC_KW = dict(num_particles=N, num_chains=1, kernel="rwm", num_mcmc_steps=1, max_stages=10)
SMC_SAMPLERS = {
    "numpyro": pk.infer.SMC(_numpyro_model, **SMC_KW),
    "log_density": pk.infer.SMC(LOG_DENSITY_MODEL, **SMC_KW),
}
SMC_ENTRY = Entry(
    lambda r: (r.positions, r.weighted_positions), lambda r: r.log_evidence, _failed_or_nonfinite
)


def _smc_run(key, name="numpyro", y=None):
    smc = SMC_SAMPLERS[name]
    smc.run(key, jnp.zeros(3) if y is None else y)
    return smc.result


# engine: pk.init / pk.run with a potential read from the inputs
def _init(key, n):
    return pk.init(key, _draw, n)


def _draw(key):
    return jax.random.normal(key)


def _potential_from_inputs(xs_prev, xs, log_g):
    return log_g


RUN_STEP = pk.chain(
    pk.resample("systematic", ess_threshold=1.0),
    pk.move(lambda key, x, g: x + jax.random.normal(key)),
    pk.reweight(_potential_from_inputs, vectorized=True),
)


@jax.jit
def _run_jit(key, log_g):
    state = pk.init(key, _draw, N)
    return pk.run(key, RUN_STEP, state, log_g, keep_history=False, progress_bar=False)


SCHEMES = list(pk.resampling.SCHEMES.values())
CONDITIONAL = list(pk.resampling.CONDITIONAL_SCHEMES.values())


# ------------------------------------------------------------------------------ keys
def _all_key_calls():
    """Every entry point, called with ``key`` first and valid arguments otherwise."""
    ys = jnp.zeros(T)
    calls = {f"{name}": (lambda f: lambda key: f(key, ys, N))(f) for name, f in SSM_CALLS.items()}
    calls.update(
        {name: (lambda f: lambda key: f(key, N))(f) for name, f in DIFFUSION_CALLS.items()}
    )
    calls.update({f"resampling.{f.__name__}": (lambda f: lambda key: f(key, jnp.zeros(N)))(f)
                  for f in SCHEMES + CONDITIONAL})  # fmt: skip
    calls["init"] = lambda key: _init(key, N)
    calls["run"] = lambda key: pk.run(key, RUN_STEP, _init(KEY, N), jnp.zeros((T, N)))
    calls["steering.smc"] = lambda key: _steer(key, N)
    calls["steering.particle_gibbs"] = lambda key: pk.steering.particle_gibbs(
        key, GEN, TOKEN_REWARD, num_particles=N, num_iterations=2, max_length=T, eos_id=EOS
    )
    calls["infer.SMC"] = lambda key: _smc_run(key)
    calls["infer.SMC(LogDensityModel)"] = lambda key: _smc_run(key, "log_density")
    return calls


KEY_CALLS = _all_key_calls()

BAD_KEYS = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.sampled_from(
        [
            np.zeros(2, np.float32),  # the legacy key's shape with a wrong dtype
            np.zeros(2, np.int32),
            jnp.zeros(2, jnp.float32),
            np.zeros(3, np.uint32),  # the legacy dtype with a wrong shape
            np.zeros((), np.uint32),
            np.zeros((2, 2), np.uint32),  # a batch of legacy keys
            jax.random.split(KEY, 2),  # a batch of typed keys
            jax.random.key_data(KEY).astype(jnp.float32),
        ]
    ),
)


@pytest.mark.parametrize("name", sorted(KEY_CALLS))
@fast(12)
@given(key=BAD_KEYS)
def test_a_bad_key_is_a_value_error(name, key):
    """Issue 18 item 1: an int, float, None or wrongly typed array where the key belongs
    is a ValueError from the one shared key check, at every entry point (the resampling
    schemes raised JAX's TypeError)."""
    with pytest.raises(ValueError, match="must be a JAX PRNG key"):
        KEY_CALLS[name](key)


# ------------------------------------------------------------------------------ counts
def _all_count_calls():
    """Every entry point with a particle count, called with valid arguments otherwise."""
    ys = jnp.zeros(T)
    calls = {name: (lambda f: lambda n: f(KEY, ys, n))(f) for name, f in SSM_CALLS.items()}
    calls.update({name: (lambda f: lambda n: f(KEY, n))(f) for name, f in DIFFUSION_CALLS.items()})
    calls.update({f"resampling.{f.__name__}": (lambda f: lambda n: f(KEY, jnp.zeros(N), n))(f)
                  for f in SCHEMES})  # fmt: skip
    calls["init"] = lambda n: _init(KEY, n)
    calls["steering.smc"] = lambda n: _steer(KEY, n)
    calls["steering.particle_gibbs"] = lambda n: pk.steering.particle_gibbs(
        KEY, GEN, TOKEN_REWARD, num_particles=n, num_iterations=2, max_length=T, eos_id=EOS
    )
    calls["infer.SMC"] = lambda n: pk.infer.SMC(_numpyro_model, **{**SMC_KW, "num_particles": n})
    return calls


COUNT_CALLS = _all_count_calls()

BAD_COUNTS = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=2**31, max_value=10**15),  # more than int32 indices can address
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            True,
            False,
            None,
            "8",
            8.0,
            1e10,
            10**10,
            np.float64(8.0),
            np.int64(-1),
            np.int64(10**10),
            jnp.float32(8.0),
        ]
    ),
)


# num_particles=None reached `num_particles < 2` unchecked there: a TypeError (pgibbs.py,
# learning.py; issue 18, fixed)
NONE_COUNT_FIXED = {"particle_gibbs", "score_climbing"}


@pytest.mark.parametrize("name", sorted(COUNT_CALLS))
@fast(12)
@given(n=BAD_COUNTS)
def test_a_bad_particle_count_is_a_value_error(name, n):
    """0, negatives, floats, booleans and counts beyond int32 indices (1e10 crashed with
    RESOURCE_EXHAUSTED or an OverflowError) are ValueErrors before anything is traced."""
    if n is None and (name.startswith("resampling.") or name in NONE_COUNT_FIXED):
        return  # num_samples=None means N; the fixed cases have their own test
    expect_value_error(lambda: COUNT_CALLS[name](n))


@pytest.mark.parametrize("name", sorted(NONE_COUNT_FIXED))
def test_none_particle_count_is_a_value_error(name):
    expect_value_error(lambda: COUNT_CALLS[name](None))


def test_a_huge_count_names_the_memory_it_needs():
    with pytest.raises(ValueError, match=r"37\.3 GiB"):
        pk.filters.bootstrap(KEY, SSM, jnp.zeros(T), num_particles=10**10)
    with pytest.raises(ValueError, match="GiB"):
        pk.resampling.systematic(KEY, jnp.zeros(N), 10**10)
    # below the int32 limit but beyond the memory of the machine: named before allocating
    with pytest.raises(ValueError, match="GiB"):
        pk.init(KEY, lambda k: jax.random.normal(k, (2**20,)), 2**31 - 1)


@pytest.mark.parametrize("n", [np.int64(N), np.int32(N)], ids=["int64", "int32"])
@pytest.mark.parametrize("name", ["init", "bootstrap", "resampling.systematic", "steering.smc"])
def test_numpy_integer_counts_are_accepted(name, n):
    result = COUNT_CALLS[name](n)
    assert result is not None


# ------------------------------------------------------------------------------ sharding
def _all_sharding_calls():
    ys = jnp.zeros(T)
    return {
        "bootstrap": lambda sh: pk.filters.bootstrap(KEY, SSM, ys, num_particles=N, sharding=sh),
        "guided": lambda sh: pk.filters.guided(KEY, SSM, ys, proposal=_proposal, num_particles=N,
                                               sharding=sh),
        "auxiliary": lambda sh: pk.filters.auxiliary(KEY, SSM, ys, log_predictive=_log_predictive,
                                                     num_particles=N, sharding=sh),
        "run": lambda sh: pk.run(KEY, RUN_STEP, _init(KEY, N), jnp.zeros((T, N)), sharding=sh),
        "fk_steering": lambda sh: pk.diffusion.fk_steering(
            KEY, MIXTURE, LinearReward(jnp.ones(2), jnp.float32(INF)), num_particles=N,
            num_steps=T, sharding=sh),
        "pdds": lambda sh: pk.diffusion.pdds(
            KEY, GaussianDensity(jnp.zeros(2), jnp.float32(1.0), jnp.float32(INF)), 2,
            num_particles=N, num_steps=T, sharding=sh),
        "fk_corrector": lambda sh: pk.diffusion.fk_corrector(
            KEY, [MIXTURE], [1.0], num_particles=N, num_steps=T, sharding=sh),
        "steering.smc": lambda sh: pk.steering.smc(KEY, GEN, TOKEN_REWARD, num_particles=N,
                                                   max_length=T, eos_id=EOS, sharding=sh),
        "infer.SMC": lambda sh: pk.infer.SMC(_numpyro_model, **SMC_KW, sharding=sh),
    }  # fmt: skip


SHARDING_CALLS = _all_sharding_calls()
BAD_SHARDINGS = st.one_of(
    st.text(min_size=1, max_size=4),
    st.integers(),
    st.sampled_from([jax.devices()[0], jax.devices(), ("p",), {"p": 1}, 1.0]),
)


@pytest.mark.parametrize("name", sorted(SHARDING_CALLS))
@fast(5)
@given(sharding=BAD_SHARDINGS)
def test_a_bad_sharding_is_a_value_error(name, sharding):
    """Issue 18 item 8: a sharding= that is not a jax.sharding.Sharding raised deep inside
    JAX in the filters and pk.run: one shared check (run.check_sharding) everywhere."""
    with pytest.raises(ValueError, match="sharding"):
        SHARDING_CALLS[name](sharding)


# ------------------------------------------------------------------------------ data
OBS_VALUES = st.one_of(
    st.floats(min_value=-3.0, max_value=3.0, width=32),
    st.sampled_from([NAN, INF, -INF, 1e30, -1e30]),
)
OBSERVATIONS = st.lists(OBS_VALUES, min_size=T, max_size=T).map(lambda v: np.asarray(v, np.float32))


def _impossible(ys):
    """An observation that no state explains in float32: +-inf, or so far away that its
    log-density under N(x, 0.5^2) is -inf for every particle."""
    return bool(np.any(np.abs(ys) > 1e19))


# every entry, score_climbing included (it returned NaN on impossible data until issue 18
# was fixed; see test_open_defects)
FAST_OBS = list(SSM_CALLS)


def _check_observations(name, ys):
    impossible = _impossible(ys)
    check_outcome(
        lambda: SSM_CALLS[name](KEY, jnp.asarray(ys), N),
        SSM_ENTRIES[name],
        must_flag=impossible,
        must_not_flag=not impossible,
    )


@pytest.mark.parametrize("name", FAST_OBS)
@fast(10)
@given(ys=OBSERVATIONS)
def test_observations_missing_infinite_or_impossible(name, ys):
    """NaN observations are missing (a valid result, not flagged); an infinite or
    impossibly far one is flagged (failed, or -inf evidence for ppg and mle); no NaN is
    returned in either case."""
    _check_observations(name, ys)


MISSING, IMPOSSIBLE = [0.1, NAN, 0.2, 0.3], [0.1, INF, 0.2, 0.3]


@pytest.mark.parametrize(
    "name, ys",
    [
        ("particle_gibbs", MISSING),
        ("particle_gibbs", IMPOSSIBLE),
        ("score_climbing", MISSING),  # IMPOSSIBLE: see test_open_defects
    ],
    ids=["particle_gibbs-missing", "particle_gibbs-impossible", "score_climbing-missing"],
)
def test_observations_examples(name, ys):
    """Issue 18 item 2: one missing observation gave score_climbing NaN phi and paths."""
    _check_observations(name, np.asarray(ys, np.float32))


@pytest.mark.parametrize(
    "name, ys",
    [
        ("score_climbing", IMPOSSIBLE),
        ("guided", [0.0, 0.0, INF, -INF]),
    ],
)  # fmt: skip
def test_open_defects(name, ys):
    """Defects once open (issue 18), now fixed: score_climbing kept updating phi from failed
    sweeps (NaN phi and paths); the guided filter let a proposal drawn at an infinite
    observation put infinite, then NaN, states into its particles."""
    _check_observations(name, np.asarray(ys, np.float32))


BAD_SHAPES = st.sampled_from([(), (0,), (T, 1), (T, 2), (T, 2, 2), (T, 1, 1)])
FILL = st.sampled_from([0.0, NAN, INF])


@pytest.mark.parametrize("name", sorted(SSM_CALLS))
@fast(6)
@given(shape=BAD_SHAPES, fill=FILL)
def test_wrongly_shaped_observations_are_value_errors(name, shape, fill):
    """Observations of a shape the model cannot emit (scalar, empty, an extra axis) are
    ValueErrors naming the expected shape, before anything is traced."""
    ys = jnp.full(shape, fill, jnp.float32)
    expect_value_error(lambda: SSM_CALLS[name](KEY, ys, N))


VECTOR_OBS = st.lists(
    st.tuples(st.sampled_from([0.3, NAN]), st.sampled_from([-0.2, NAN])), min_size=T, max_size=T
).map(lambda rows: np.asarray(rows, np.float32))


@jax.jit
def _bootstrap2(ys):
    return pk.filters.bootstrap(KEY, SSM2, ys, num_particles=N)


@jax.jit
def _paris2(ys):
    return pk.smoothing.paris(KEY, SSM2, ys, additive_fn=_additive, num_particles=N)


@pytest.mark.parametrize(
    "eager, traced, entry",
    [
        (lambda ys: pk.filters.bootstrap(KEY, SSM2, ys, num_particles=N), _bootstrap2,
         _filter_entry()),
        (lambda ys: pk.smoothing.paris(KEY, SSM2, ys, additive_fn=_additive, num_particles=N),
         _paris2, SSM_ENTRIES["paris"]),
    ],
    ids=["bootstrap", "paris"],
)  # fmt: skip
@fast(8)
@given(ys=VECTOR_OBS)
def test_partly_missing_vector_observations_agree_eager_and_traced(eager, traced, entry, ys):
    """Issue 18 item 3: a 2-D y_t with one NaN coordinate was a ValueError eagerly but
    silently skipped under jit (increment 0, failed=False). Eagerly it is a ValueError;
    traced, every particle gets zero weight and the result reports failed. A fully missing
    y_t is skipped in both."""
    nan = np.isnan(ys)
    partly = bool(np.any(nan.any(axis=1) & ~nan.all(axis=1)))
    if partly:
        expect_value_error(lambda: eager(jnp.asarray(ys)))
    else:
        check_outcome(lambda: eager(jnp.asarray(ys)), entry, must_not_flag=True)
    check_outcome(
        lambda: traced(jnp.asarray(ys)), entry, must_flag=partly, must_not_flag=not partly
    )


@fast(10)
@given(
    reference=st.lists(OBS_VALUES, min_size=T, max_size=T),
    shape=st.sampled_from([(T,), (T + 1,), (T, 1)]),
)
def test_csmc_reference_non_finite_or_misshaped(reference, shape):
    """Issue 18 item 5: a NaN or infinite reference trajectory, or one of the wrong length,
    is a ValueError; a finite one gives a trajectory with the filters' diagnostics."""
    ref = np.resize(np.asarray(reference, np.float32), shape)
    ys = jnp.asarray([0.1, 0.2, -0.1, 0.3])

    def call():
        return pk.pgibbs.csmc(KEY, SSM, ys, jnp.asarray(ref), num_particles=N, return_info=True)

    if shape != (T,) or not np.all(np.isfinite(ref)):
        expect_value_error(call)
    else:
        check_outcome(call, SSM_ENTRIES["csmc"])


# ------------------------------------------------------------------------------ weights
LOG_WEIGHT = st.one_of(
    st.floats(min_value=-1e4, max_value=1e4, width=32),
    st.sampled_from([NAN, INF, -INF, 3e38, -3e38]),
)
LOG_WEIGHTS = st.one_of(
    st.lists(LOG_WEIGHT, min_size=N, max_size=N),
    st.sampled_from([[-INF] * N, [NAN] * N, [INF] * N, [NAN, INF] * (N // 2)]),
).map(lambda v: np.asarray(v, np.float32))


def _valid(log_weights):
    """Particles with a positive weight: NaN and +inf count as zero weight, like -inf."""
    return np.isfinite(log_weights)


_JITTED = {}


def _jitted(fn):
    if fn not in _JITTED:
        _JITTED[fn] = jax.jit(fn)
    return _JITTED[fn]


@pytest.mark.parametrize("scheme", SCHEMES + CONDITIONAL, ids=lambda f: f.__name__)
@fast(15)
@given(log_weights=LOG_WEIGHTS)
def test_resampling_with_non_finite_log_weights(scheme, log_weights):
    """NaN and +inf log-weights are zero weights: the schemes never pick such a particle
    while a valid one exists (all invalid: the uniform fallback), and return N int32
    indices in range (conditional schemes: slot 0 keeps the reference)."""
    idx = np.asarray(_jitted(scheme)(KEY, jnp.asarray(log_weights)))
    assert idx.shape == (N,) and idx.dtype == np.int32
    assert np.all((idx >= 0) & (idx < N))
    valid = _valid(log_weights)
    picked = idx[1:] if scheme in CONDITIONAL else idx
    if valid.any():
        assert np.all(valid[picked]), (log_weights, idx)
    if scheme in CONDITIONAL:
        assert idx[0] == 0


@fast(30)
@given(log_weights=LOG_WEIGHTS)
def test_ess_and_normalize_with_non_finite_log_weights(log_weights):
    """ESS in [0, N] (0 when every weight is zero), never NaN; normalised weights sum to
    one (uniform when every weight is zero) with zero where the log-weight is invalid."""
    valid = _valid(log_weights)
    ess = float(_jitted(pk.resampling.ess)(jnp.asarray(log_weights)))
    assert 0.0 <= ess <= N * (1 + 1e-5)
    if not valid.any():
        assert ess == 0.0
    w = np.asarray(_jitted(pk.resampling.normalize)(jnp.asarray(log_weights)))
    assert not np.isnan(w).any() and abs(w.sum() - 1.0) < 1e-5
    if valid.any():
        assert np.all(w[~valid] == 0.0)


@pytest.mark.parametrize("fn", [pk.resampling.ess, pk.resampling.normalize, *SCHEMES],
                         ids=lambda f: f.__name__)  # fmt: skip
@pytest.mark.parametrize("shape", [(), (0,), (2, N)], ids=["scalar", "empty", "2d"])
def test_scalar_empty_or_2d_log_weights_are_value_errors(fn, shape):
    """A scalar log-weight gave an IndexError, an empty array failed inside JAX, and a
    2-D array was silently treated as one population."""
    lw = jnp.zeros(shape)
    expect_value_error(lambda: fn(lw) if fn in (pk.resampling.ess, pk.resampling.normalize)
                       else fn(KEY, lw))  # fmt: skip


@fast(15)
@given(indices=st.lists(st.integers(-3, N + 3), min_size=N, max_size=N))
def test_offspring_counts_out_of_range(indices):
    """An index outside [0, N) was dropped (and a negative one counted for the parent it
    wraps to): a ValueError eagerly; under jit it is never counted, so the counts sum to
    fewer than the indices."""
    indices = np.asarray(indices, np.int32)
    inside = (indices >= 0) & (indices < N)
    traced = np.asarray(jax.jit(pk.resampling.offspring_counts, static_argnums=1)(indices, N))
    assert traced.sum() == inside.sum()
    assert np.array_equal(traced, np.bincount(indices[inside], minlength=N))
    if inside.all():
        assert np.array_equal(np.asarray(pk.resampling.offspring_counts(indices, N)), traced)
    else:
        expect_value_error(lambda: pk.resampling.offspring_counts(indices, N))


@fast(20)
@given(log_g=st.lists(st.lists(LOG_WEIGHT, min_size=N, max_size=N), min_size=T, max_size=T))
def test_run_with_non_finite_potentials(log_g):
    """pk.init / pk.run with potentials that are NaN, +-inf or huge: every NaN or +inf
    potential is counted in num_nonfinite (and is a zero weight), the evidence is never
    NaN, and it is exactly sum_t log mean_i exp(G_ti) over the valid potentials (-inf if a
    step has none): this step resamples before every reweight, and G does not depend on
    the particles."""
    log_g = np.asarray(log_g, np.float32)
    final, trace = _run_jit(KEY, jnp.asarray(log_g))
    invalid = np.isnan(log_g) | (log_g == np.inf)
    assert np.array_equal(np.asarray(trace.info.num_nonfinite), invalid.sum(axis=1))
    g = np.where(invalid, -np.inf, log_g.astype(np.float64))
    with np.errstate(divide="ignore"):
        exact = np.sum(np.log(np.mean(np.exp(g - g.max(axis=1, keepdims=True)), axis=1))
                       + np.where(np.isfinite(g.max(axis=1)), g.max(axis=1), -np.inf))  # fmt: skip
    got = float(final.log_evidence)
    assert not np.isnan(got)
    if abs(exact) > np.finfo(np.float32).max:  # -inf, or beyond float32 (sums of 3e38)
        assert got == np.sign(exact) * np.inf, (got, exact)
    else:
        assert abs(got - exact) <= 1e-5 * max(1.0, abs(exact)), (got, exact)


# ------------------------------------------------------------------------------ diffusion
PARAM = st.one_of(
    st.floats(min_value=-3.0, max_value=3.0, width=32),
    st.sampled_from([NAN, INF, -INF, 1e30, -1e30]),
)
DIFFUSION_ENTRY = _diffusion_entry()


@fast(12)
@given(a=st.tuples(PARAM, PARAM), nan_above=PARAM, lmbda=PARAM)
def test_fk_steering_with_non_finite_rewards(a, nan_above, lmbda):
    """NaN / infinite rewards (everywhere or beyond a threshold) and a NaN or infinite
    lmbda: finite samples, evidence never NaN, -inf exactly when failed."""
    reward = LinearReward(jnp.asarray(a, jnp.float32), jnp.float32(nan_above))
    result = check_outcome(
        lambda: pk.diffusion.fk_steering(
            KEY, MIXTURE, reward, num_particles=N, num_steps=T, lmbda=lmbda
        ),
        DIFFUSION_ENTRY,
    )
    if result is not None and bool(result.failed):
        assert float(result.log_evidence) == -np.inf


@fast(12)
@given(m=st.tuples(PARAM, PARAM), s=PARAM, nan_above=PARAM)
def test_pdds_with_non_finite_densities(m, s, nan_above):
    """A target density that is NaN, -inf or overflowing (in part of the space or
    everywhere): finite samples, evidence never NaN, -inf exactly when failed."""
    density = GaussianDensity(jnp.asarray(m, jnp.float32), jnp.float32(s), jnp.float32(nan_above))
    result = check_outcome(
        lambda: pk.diffusion.pdds(KEY, density, 2, num_particles=N, num_steps=T), DIFFUSION_ENTRY
    )
    if result is not None and bool(result.failed):
        assert float(result.log_evidence) == -np.inf


BETAS = st.one_of(
    st.floats(min_value=-2.0, max_value=4.0, width=32),
    st.sampled_from([0.0, NAN, INF, -INF, 1e4, 1e30, 1e-40, 1e39]),
)


@fast(15)
@given(betas=st.tuples(BETAS, BETAS))
def test_fk_corrector_with_extreme_exponents(betas):
    """Issue 18 item 6: anneal(beta=1e4) gave NaN samples (the Euler-Maruyama drift
    overflows). Exponents that are non-finite, sum to <= 0 or leave float32 are
    ValueErrors; otherwise the samples and mean() are finite, the evidence is never NaN
    and -inf exactly when failed."""
    result = check_outcome(
        lambda: pk.diffusion.fk_corrector(
            KEY, [MIXTURE, MIXTURE2], list(betas), num_particles=N, num_steps=T
        ),
        DIFFUSION_ENTRY,
    )
    if result is not None:
        assert np.all(np.isfinite(np.asarray(result.samples)))
        assert np.all(np.isfinite(np.asarray(result.mean())))
        assert bool(result.failed) == bool(np.isneginf(float(result.log_evidence)))


@pytest.mark.parametrize("beta", [1e8, 1e20])
def test_anneal_large_beta_samples_are_finite(beta):
    """Issue 18 item 6: anneal(beta=1e4) returned NaN samples (at 50 steps; these betas
    overflow within the suite's 4): the run fails, with finite samples and mean()."""
    result = check_outcome(
        lambda: pk.diffusion.anneal(KEY, MIXTURE, beta, num_particles=N, num_steps=T),
        DIFFUSION_ENTRY,
        must_flag=True,
    )
    assert np.all(np.isfinite(np.asarray(result.samples)))
    assert np.all(np.isfinite(np.asarray(result.mean())))


@fast(40)
@given(
    means=st.tuples(st.floats(-2.0, 2.0), st.floats(-2.0, 2.0)),
    std=st.floats(0.1, 2.0),
    weight=st.floats(0.0, 2.0),
    bad=st.sampled_from([None, "mean", "std", "weight"]),
    bad_value=st.sampled_from([NAN, INF, -INF, -1.0, 0.0]),
)
def test_gaussian_mixture_parameters(means, std, weight, bad, bad_value):
    """A non-finite mean (accepted before issue 18), weight or standard deviation, a
    negative weight or a non-positive standard deviation is a ValueError; valid parameters
    give a model with a finite score."""
    means = list(means)
    if bad == "mean":
        means[1] = bad_value
    elif bad == "std":
        std = bad_value
    elif bad == "weight":
        weight = bad_value
    valid = bool(np.all(np.isfinite(means)) and np.isfinite(std) and std > 0
                 and np.isfinite(weight) and weight >= 0)  # fmt: skip

    def call():
        return pk.diffusion.gaussian_mixture([1.0, weight], [[means[0]], [means[1]]], stds=std)

    if not valid:
        expect_value_error(call)
    else:
        score = call().score(jnp.zeros(1), jnp.float32(0.5))
        assert np.all(np.isfinite(np.asarray(score)))


@pytest.mark.parametrize(
    "call",
    [
        lambda r: pk.diffusion.fk_steering(KEY, MIXTURE, r, num_particles=N, num_steps=T),
        lambda r: pk.diffusion.best_of_n(KEY, MIXTURE, r, num_samples=N, num_steps=T),
        lambda r: pk.diffusion.svdd(KEY, MIXTURE, r, num_particles=N, num_children=2,
                                    num_steps=T),
    ],
    ids=["fk_steering", "best_of_n", "svdd"],
)  # fmt: skip
@pytest.mark.parametrize(
    "reward", [lambda x: x, lambda x: x[:1], lambda x: x[:, None], lambda x: "r"],
    ids=["vector", "(1,)", "matrix", "str"],
)  # fmt: skip
def test_reward_of_the_wrong_shape_is_a_value_error(call, reward):
    """A reward that is not a scalar per sample failed while tracing in fk_steering (and
    best_of_n returned per-coordinate rewards); steering.smc checked it cleanly."""
    with pytest.raises(ValueError, match="reward_fn"):
        call(reward)


# ------------------------------------------------------------------------------ steering
@fast(12)
@given(weight=PARAM, offset=PARAM)
def test_sequence_steering_with_non_finite_rewards(weight, offset):
    """Rewards that are NaN, +-inf or overflowing (the prompt's own reward included): log
    weights never NaN, the evidence -inf exactly when the result reports failed."""
    result = check_outcome(
        lambda: _steer(KEY, N, TokenReward(jnp.float32(weight), jnp.float32(offset))),
        STEERING_ENTRY,
        must_flag=not np.isfinite(offset),  # the prompt's reward already rules out all
    )
    if result is not None:
        assert bool(result.failed) == bool(np.isneginf(float(result.log_evidence)))


@jax.jit
def _steer_traced(prompt):
    return _steer(KEY, N, prompt=prompt)


@fast(15)
@given(prompt=st.lists(st.integers(-3, 8), min_size=2, max_size=2))
def test_out_of_vocabulary_prompt_eager_and_traced(prompt):
    """A prompt token outside the vocabulary [0, 4) is a ValueError eagerly; traced (under
    jit) it was accepted silently, and now every particle gets zero weight and the result
    reports failed."""
    prompt = np.asarray(prompt, np.int32)
    oov = bool(np.any((prompt < 0) | (prompt >= 4)))
    if oov:
        expect_value_error(lambda: _steer(KEY, N, prompt=prompt))
    check_outcome(lambda: _steer_traced(jnp.asarray(prompt)), STEERING_ENTRY, must_flag=oov,
                  must_not_flag=not oov)  # fmt: skip


@pytest.mark.parametrize(
    "num_iterations, ok",
    [(2, True), (np.int64(2), True), (np.int32(2), True), (2.0, False), (0, False),
     (-1, False), (True, False), (None, False), (10**10, False)],
)  # fmt: skip
def test_steering_particle_gibbs_num_iterations(num_iterations, ok):
    def call():
        return pk.steering.particle_gibbs(KEY, GEN, TOKEN_REWARD, num_particles=N,
                                          num_iterations=num_iterations, max_length=T,
                                          eos_id=EOS)  # fmt: skip

    if ok:
        result = call()
        assert not bool(np.any(result.failed))
    else:
        expect_value_error(call)


# ------------------------------------------------------------------------------ static
@pytest.mark.parametrize("name", sorted(SMC_SAMPLERS))
@fast(6)
@given(y=st.lists(OBS_VALUES, min_size=3, max_size=3))
def test_smc_with_missing_infinite_or_impossible_data(name, y):
    """pk.infer.SMC (a NumPyro model and a LogDensityModel): a NaN or infinite datum makes
    the likelihood NaN / -inf for every particle: a ValueError, or a failed result with
    -inf evidence (and a warning), never NaN positions or evidence."""
    y = np.asarray(y, np.float32)
    bad = not np.all(np.abs(y) < 1e19)
    check_outcome(lambda: _smc_run(KEY, name, jnp.asarray(y)), SMC_ENTRY, must_flag=bad,
                  must_not_flag=not bad)  # fmt: skip


@fast(20)
@given(
    num_steps=st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=2**31, max_value=10**12),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([True, "3", np.float32(3.0), np.int64(-3)]),
    )
)
def test_run_rejects_impossible_num_steps(num_steps):
    """pk.run(num_steps=-3) ran 0 steps silently, and 10**10 ran out of memory."""
    with pytest.raises(ValueError, match="num_steps"):
        pk.run(KEY, RUN_STEP, _init(KEY, N), num_steps=num_steps)


def _parametric():
    return pk.statespace.ParametricSSM(
        lambda: numpyro.sample("a", dist.Uniform(-1.0, 1.0)), lambda p: _model_fn(p["a"])
    )


def _ess_threshold_calls():
    """Every public entry point with an ``ess_threshold`` argument, as ``f(threshold)``."""
    ys = jnp.zeros(T)
    return {
        "resample": lambda e: pk.resample("systematic", e),
        "bootstrap": lambda e: pk.filters.bootstrap(
            KEY, SSM, ys, num_particles=N, ess_threshold=e
        ),  # fmt: skip
        "paris": lambda e: pk.smoothing.paris(
            KEY, SSM, ys, additive_fn=_additive, num_particles=N, ess_threshold=e
        ),
        "mle": lambda e: pk.learning.mle(
            KEY,
            _model_fn,
            jnp.float32(0.5),
            ys,
            num_particles=N,
            num_iterations=2,
            ess_threshold=e,
        ),  # fmt: skip
        "pmmh": lambda e: pk.statespace.pmmh(
            KEY,
            _parametric(),
            ys,
            num_particles=N,
            num_samples=2,
            num_warmup=2,
            ess_threshold=e,
        ),  # fmt: skip
        "smc2": lambda e: pk.statespace.smc2(
            KEY, _parametric(), ys, num_theta_particles=N, num_x_particles=N, ess_threshold=e
        ),
        "fk_steering": lambda e: pk.diffusion.fk_steering(
            KEY,
            MIXTURE,
            LinearReward(jnp.ones(2), jnp.float32(INF)),
            num_particles=N,
            num_steps=T,
            ess_threshold=e,
        ),  # fmt: skip
        "fk_corrector": lambda e: pk.diffusion.fk_corrector(
            KEY, [MIXTURE, MIXTURE2], [1.0, 1.0], num_particles=N, num_steps=T, ess_threshold=e
        ),
        "pdds": lambda e: pk.diffusion.pdds(
            KEY,
            GaussianDensity(jnp.zeros(2), jnp.float32(1.0), jnp.float32(INF)),
            2,
            num_particles=N,
            num_steps=T,
            ess_threshold=e,
        ),  # fmt: skip
        "steering.smc": lambda e: pk.steering.smc(
            KEY, GEN, TOKEN_REWARD, num_particles=N, max_length=T, eos_id=EOS, ess_threshold=e
        ),
        "steering.particle_gibbs": lambda e: pk.steering.particle_gibbs(
            KEY,
            GEN,
            TOKEN_REWARD,
            num_particles=N,
            num_iterations=2,
            max_length=T,
            eos_id=EOS,
            ess_threshold=e,
        ),  # fmt: skip
        "steering.parallel_tempering": lambda e: pk.steering.parallel_tempering(
            KEY,
            GEN,
            TOKEN_REWARD,
            num_particles=N,
            num_iterations=2,
            temperatures=[1.0],
            max_length=T,
            eos_id=EOS,
            ess_threshold=e,
        ),  # fmt: skip
    }


@pytest.mark.parametrize("name", sorted(_ess_threshold_calls()))
@pytest.mark.parametrize("bad", ["0.5", True, float("nan"), 1.5])
def test_every_ess_threshold_is_checked_the_same_way(name, bad):
    """Eleven entry points checked ``ess_threshold`` with ``float(x)`` inline (only
    ``pk.resample`` had the strict check): the string ``"0.5"`` and ``True`` (read as 1.0)
    passed. All now share ``kernels.check_ess_threshold`` and raise before tracing."""
    with pytest.raises(ValueError, match="ess_threshold must be"):
        _ess_threshold_calls()[name](bad)
