"""Bad inputs across the engine, the state-space recipes and the converters: each raises a
clear ``ValueError`` before tracing or is reported in the result (an audit of the public
API found these answered with a silent wrong result or an error from deep inside)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import particlekit as pk
from particlekit.statespace import correlated

KEY = jax.random.key(0)


def _ssm(rho=0.9):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(rho * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )


SSM = _ssm()
_, YS = SSM.simulate(KEY, 8)


# --------------------------------------------------------- a model NaN on part of the prior
def _prior():
    numpyro.sample("rho", dist.Uniform(-1.0, 1.0))


def _nan_below_zero(theta):  # sqrt(rho) ** 2 is rho for rho >= 0 and NaN below
    return _ssm(jnp.sqrt(theta["rho"]) ** 2)


def _well_defined(theta):
    return _ssm(theta["rho"])


def _nan_warnings(record):
    return [w for w in record if "log-density was NaN" in str(w.message)]


@pytest.mark.parametrize("model_fn", [_nan_below_zero, _well_defined])
def test_pmmh_counts_and_warns_about_a_model_that_is_nan_somewhere(model_fn):
    model = pk.statespace.ParametricSSM(_prior, model_fn)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = pk.statespace.pmmh(
            KEY, model, YS, num_particles=16, num_samples=20, num_warmup=20, num_chains=2,
            latent_paths=False, progress_bar=False,
        )  # fmt: skip
    counts = np.asarray(res.num_nonfinite)
    if model_fn is _well_defined:
        assert counts.tolist() == [0, 0] and not _nan_warnings(record)
        return
    # half the prior is NaN: among 16 starting candidates and 40 proposals per chain some
    # are (the probability that none is, per chain, is below 2**-16)
    assert (counts > 0).all()
    assert len(_nan_warnings(record)) == 1
    assert (np.asarray(res.theta["rho"]) >= 0).all()  # never accepted where NaN
    data = res.to_inference_data()
    assert np.asarray(data["sample_stats"]["num_nonfinite"]).tolist() == counts.tolist()


@pytest.mark.parametrize("model_fn", [_nan_below_zero, _well_defined])
def test_smc2_counts_and_warns_about_a_model_that_is_nan_somewhere(model_fn):
    model = pk.statespace.ParametricSSM(_prior, model_fn)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = pk.statespace.smc2(
            KEY, model, YS, num_theta_particles=32, num_x_particles=8, num_mcmc_steps=1,
            latent_paths=False, progress_bar=False,
        )  # fmt: skip
    count = int(np.asarray(res.num_nonfinite)[0])
    if model_fn is _well_defined:
        assert count == 0 and not _nan_warnings(record)
        return
    assert count >= 8  # about half of the 32 prior draws (P(count < 8) < 1e-3)
    assert len(_nan_warnings(record)) == 1
    assert (np.asarray(res.theta["rho"]) >= 0).all()
    data = res.to_inference_data()
    assert int(np.asarray(data["sample_stats"]["num_nonfinite"])[0]) == count


def test_a_filter_that_met_nan_potentials_has_no_likelihood_estimate():
    bad = _ssm(jnp.nan)
    shape = correlated.check_model(bad)
    noise = correlated.sample_noise(KEY, YS.shape[0], 8, shape)
    assert np.isneginf(correlated.correlated_filter(bad, YS, noise))  # (as documented)
    assert np.isnan(correlated.correlated_filter(bad, YS, noise, flag_nonfinite=True))
    good = correlated.correlated_filter(SSM, YS, noise, flag_nonfinite=True)
    assert np.isfinite(good)


# --------------------------------------------------------- static models: a collapsed start
def _log_density_model(**start):
    return pk.infer.LogDensityModel(
        lambda th: -0.5 * jnp.sum(th**2), lambda th: -0.5 * jnp.sum((th - 1.0) ** 2), **start
    )


@pytest.mark.parametrize(
    "start",
    [
        dict(initial_population=jnp.zeros((64, 2))),  # copies of one draw
        dict(initial_population=jnp.stack([jnp.arange(64.0), jnp.zeros(64)], axis=1)),
        dict(sample_prior=lambda key: jnp.zeros(2)),  # ignores its key
    ],
)
def test_smc_rejects_initial_particles_without_spread(start):
    smc = pk.infer.SMC(_log_density_model(**start), num_particles=32, kernel="rwm")
    with pytest.raises(ValueError, match="all equal in"):
        smc.run(KEY)


def test_num_resampled_needs_waste_free_and_fewer_than_num_particles():
    model = _log_density_model(sample_prior=lambda key: jax.random.normal(key, (2,)))
    with pytest.raises(ValueError, match="only applies to waste-free"):
        pk.infer.SMC(model, num_particles=16, num_resampled=-3)
    with pytest.raises(ValueError, match="< num_particles"):
        pk.infer.SMC(model, num_particles=16, waste_free=True, num_resampled=32)


# --------------------------------------------------------- state-space inputs
def test_joint_log_prob_checks_the_trajectory():
    xs, ys = SSM.simulate(KEY, 3)
    with pytest.raises(ValueError, match="xs has state shape"):
        pk.pgibbs.joint_log_prob(SSM, jnp.zeros((3, 2)), ys)
    with pytest.raises(ValueError, match="leading axis T=3"):
        pk.pgibbs.joint_log_prob(SSM, jnp.zeros(4), ys)
    assert np.isfinite(pk.pgibbs.joint_log_prob(SSM, xs, ys))


@pytest.mark.parametrize("ys", [None, "abc", ["a", "b"]])
def test_filters_reject_observations_that_are_not_arrays(ys):
    with pytest.raises(ValueError, match="ys must"):
        pk.filters.bootstrap(KEY, SSM, ys, num_particles=8)


def test_the_message_for_a_law_that_is_not_a_distribution_shows_that_law():
    ssm = pk.StateSpaceModel(
        initial=lambda: 0.0,
        transition=lambda x_prev, t: dist.Normal(x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    with pytest.raises(ValueError, match=r"initial=`lambda: dist\.Normal"):
        pk.filters.bootstrap(KEY, ssm, YS, num_particles=8)


@pytest.mark.parametrize("num", [-1, 0, 2.5])
def test_sample_initial_checks_the_count(num):
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        SSM.sample_initial(KEY, num)


def test_paris_rejects_an_additive_function_without_arrays():
    for bad in (lambda xp, x, t: None, lambda xp, x, t: {}):
        with pytest.raises(ValueError, match="no array"):
            pk.smoothing.paris(KEY, SSM, YS, additive_fn=bad, num_particles=8)


def test_ffbs_rejects_another_models_filter():
    res = pk.filters.bootstrap(KEY, SSM, YS, num_particles=8)
    other = pk.StateSpaceModel(
        initial=lambda: dist.Normal(jnp.zeros(2), 1.0).to_event(1),
        transition=lambda x_prev, t: dist.Normal(x_prev, 1.0).to_event(1),
        observation=lambda x, t: dist.Normal(x[0], 1.0),
    )
    with pytest.raises(ValueError, match="not states of this model"):
        pk.smoothing.ffbs(KEY, other, res, 4)


# --------------------------------------------------------- the engine's primitives
def test_primitives_reject_functions_that_are_not_callable():
    with pytest.raises(ValueError, match="fn must be"):
        pk.move(3)
    with pytest.raises(ValueError, match="fn must be"):
        pk.reweight(3)
    with pytest.raises(ValueError, match="kernel must be"):
        pk.mcmc(3, 1)


def test_chain_names_a_kernel_that_returns_the_state_alone():
    state = pk.init(KEY, lambda k: jax.random.normal(k), 8)
    step = pk.chain(lambda k, s, y: s)
    with pytest.raises(ValueError, match=r"must return \(state, info\)"):
        pk.run(KEY, step, state, jnp.zeros(2))


def test_keep_history_must_be_a_bool():
    state = pk.init(KEY, lambda k: jax.random.normal(k), 8)
    with pytest.raises(ValueError, match="keep_history must be True or False"):
        pk.run(KEY, pk.resample(), state, jnp.zeros(2), keep_history="x")
    with pytest.raises(ValueError, match="keep_history must be True or False"):
        pk.filters.bootstrap(KEY, SSM, YS, num_particles=8, keep_history="no")


@pytest.mark.parametrize("bad_index", [100, -1])
def test_a_custom_schemes_invalid_ancestors_get_zero_weight_and_are_counted(bad_index):
    state = pk.init(KEY, lambda k: jax.random.normal(k), 8)

    def scheme(key, log_weights, num_samples=None):  # slots 0 and 1 point outside [0, 8)
        return jnp.arange(8, dtype=jnp.int32).at[:2].set(bad_index)

    final, trace = pk.run(KEY, pk.resample(scheme, 1.0), state, jnp.zeros(3))
    assert np.asarray(trace.info.num_nonfinite).tolist() == [2, 2, 2]
    assert np.isneginf(np.asarray(final.log_weights)[:2]).all()
    assert np.isfinite(np.asarray(final.log_weights)[2:]).all()
    _, fine = pk.run(KEY, pk.resample(lambda k, lw, n=None: jnp.arange(8)), state, jnp.zeros(3))
    assert np.asarray(fine.info.num_nonfinite).tolist() == [0, 0, 0]


# --------------------------------------------------------- converters
def test_converters_name_the_result_they_take():
    with pytest.raises(ValueError, match="expected a particlekit FilterResult, got int"):
        pk.arviz.from_filter(3)
    with pytest.raises(ValueError, match=r"posterior\['a'\] must be an array \(chain, draw"):
        pk.arviz.from_draws({"a": 1.0})


def test_auxiliary_filter_evidence_ignores_a_constant_in_the_look_ahead():
    # the constant cancels between the two stages; in float32 it used to swamp the
    # increments (1e7 moved log_evidence by 0.5 nats, 1e8 by 9)
    def run(c):
        return pk.filters.auxiliary(
            KEY, SSM, YS, log_predictive=lambda x, y, t: c + 0.0 * x, num_particles=64
        ).log_evidence

    reference = float(run(0.0))
    for c in (1e4, 1e7, 1e8):
        assert float(run(c)) == pytest.approx(reference, abs=1e-4)


def test_guided_and_auxiliary_filters_take_a_dict_state():
    # both failed in their argument checks (an AttributeError: 'dict' has no 'shape')
    from exact import kalman
    from test_sqmc_distributed_user_reports import PYTREE_LG, PYTREE_SSM

    ssm = PYTREE_SSM
    _, ys = ssm.simulate(KEY, 10)
    exact = kalman(PYTREE_LG, np.asarray(ys, np.float64))[0]
    guided = pk.filters.guided(
        KEY, ssm, ys, proposal=lambda x, y, t: ssm.transition(x, t), num_particles=256
    )
    auxiliary = pk.filters.auxiliary(
        KEY, ssm, ys, num_particles=256,
        log_predictive=lambda x, y, t: dist.Normal(x["pos"] + 0.5 * x["vel"], 0.87).log_prob(y),
    )  # fmt: skip
    # sd of a 256-particle estimate here: about 0.1
    assert float(guided.log_evidence) == pytest.approx(exact, abs=0.5)
    assert float(auxiliary.log_evidence) == pytest.approx(exact, abs=0.5)
