"""Regressions from user reports on the state-space filters.

- A transition that draws NaN states (a model bug) gave those particles zero weight, but
  ``filtering_mean`` (and ArviZ's ``x_mean``) was NaN: ``0 * NaN`` in the weighted sum. The
  PaRIS and PPG estimates were NaN the same way (a dead particle's statistic is NaN).
- SQMC and correlated PMMH built the transition on concrete zeros, which NumPyro's argument
  validation rejects outside the state's support (``Normal(x, 0.1 * x)``).
- A per-particle model with a batch-shaped law (``Normal(jnp.zeros(2), 1.0)`` without
  ``.to_event(1)``) passed the filters and failed in the smoothers with a broadcasting error.
- Guided / auxiliary callables that return the wrong thing failed with ``AttributeError`` /
  ``TypeError`` / broadcasting errors instead of the documented ``ValueError``.
- ``to_inference_data(ys)`` with ``ys`` a Python list read the list as a pytree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import particlekit as pk

N = 64
KEY = jax.random.key(0)
YS = jnp.array([0.5, 0.6, 0.7, 0.8])
SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)
# a model bug: the transition's scale is NaN where x_prev < 0, so some draws are NaN
NAN_SSM = pk.StateSpaceModel(
    initial=SSM.initial,
    transition=lambda x_prev, t: dist.Normal(x_prev, jnp.sqrt(x_prev)),
    observation=SSM.observation,
)


def proposal(x_prev, y, t):
    return dist.Normal(x_prev, 1.0)


def log_predictive(x_prev, y, t):
    return dist.Normal(0.9 * x_prev, 1.2).log_prob(y)


# ------------------------------------------------------------------------- NaN particles
def _reference_mean(res) -> np.ndarray:
    """Weighted mean over the particles of positive weight, in float64."""
    w = np.exp(np.asarray(res.log_weights, np.float64))
    w = np.where(np.isnan(w), 0.0, w)
    w /= w.sum(axis=1, keepdims=True)
    x = np.where(w > 0, np.asarray(res.particles, np.float64), 0.0)
    return (w * x).sum(axis=1)


@pytest.mark.parametrize(
    "run",
    [
        lambda k: pk.filters.bootstrap(k, NAN_SSM, YS, num_particles=N),
        lambda k: pk.filters.auxiliary(k, NAN_SSM, YS, log_predictive=log_predictive,
                                       num_particles=N),
        lambda k: pk.filters.guided(k, NAN_SSM, YS, proposal=proposal, num_particles=N),
    ],
    ids=["bootstrap", "auxiliary", "guided"],
)  # fmt: skip
@pytest.mark.parametrize("seed", [0, 1])
def test_zero_weight_nan_particles_do_not_poison_filtering_mean(run, seed):
    res = run(jax.random.key(seed))
    assert int(res.num_nonfinite.sum()) > 0 and not bool(res.failed)
    mean = np.asarray(res.filtering_mean())
    assert np.all(np.isfinite(mean))
    np.testing.assert_allclose(mean, _reference_mean(res), rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(res.filtering_variance())))
    assert np.all(np.asarray(res.filtering_variance()) >= -1e-5)
    x_mean = np.asarray(res.to_inference_data(YS)["filtering"]["x_mean"])
    np.testing.assert_allclose(x_mean[0], mean, rtol=1e-6)


def test_zero_weight_nan_particles_do_not_poison_paris_and_ppg():
    h, h0 = (lambda x_prev, x, t: x), (lambda x: x)  # the sum of the states
    res = pk.smoothing.paris(jax.random.key(0), NAN_SSM, YS, additive_fn=h, initial_fn=h0,
                             num_particles=N)  # fmt: skip
    assert int(res.num_nonfinite.sum()) > 0 and not bool(res.failed)
    assert np.all(np.isnan(np.asarray(res.tau)) <= np.isneginf(np.asarray(res.log_weights)))
    assert np.all(np.isfinite(np.asarray(res.estimates)))
    w = np.exp(np.asarray(res.log_weights, np.float64))
    w = np.where(np.isnan(w), 0.0, w) / np.nansum(w)
    reference = np.sum(np.where(w > 0, w * np.asarray(res.tau, np.float64), 0.0))
    np.testing.assert_allclose(float(res.estimate), reference, rtol=1e-4, atol=1e-5)
    ppg = pk.pgibbs.ppg(jax.random.key(1), NAN_SSM, YS, additive_fn=h, initial_fn=h0,
                        num_particles=N, num_iterations=4, burn_in=1)  # fmt: skip
    assert np.all(np.isfinite(np.asarray(ppg.estimates)))


# ------------------------------------------------------------------------- SQMC support
POSITIVE_SSM = pk.StateSpaceModel(
    initial=lambda: dist.Uniform(1.0, 2.0),  # x_t > 0 always
    transition=lambda x_prev, t: dist.Normal(x_prev, 0.1 * x_prev),  # scale > 0 there
    observation=lambda x, t: dist.Normal(x, 0.2),
)


def test_sqmc_and_correlated_pmmh_accept_laws_invalid_at_zero():
    ys = POSITIVE_SSM.simulate(jax.random.key(3), 10)[1]
    assert pk.statespace.correlated.check_model(POSITIVE_SSM) == ()
    sqmc = pk.filters.sqmc(jax.random.key(1), POSITIVE_SSM, ys, num_particles=256)
    boot = jax.vmap(
        lambda k: pk.filters.bootstrap(k, POSITIVE_SSM, ys, num_particles=256).log_evidence
    )(jax.random.split(jax.random.key(2), 16))
    # the bootstrap's spread over 16 seeds bounds the error of either estimate
    tol = 5 * float(np.std(boot)) + 0.05
    assert abs(float(sqmc.log_evidence) - float(np.mean(boot))) < tol
    # the real checks still hold: a transition of the wrong shape is a ValueError
    wrong = pk.StateSpaceModel(
        initial=POSITIVE_SSM.initial,
        transition=lambda x_prev, t: dist.Normal(x_prev * jnp.ones(2), 1.0).to_event(1),
        observation=POSITIVE_SSM.observation,
    )
    with pytest.raises(ValueError, match="draws shape"):
        pk.statespace.correlated.check_model(wrong)


# ------------------------------------------------------------------------- batch shapes
def _batch_shaped(part: str | None) -> pk.StateSpaceModel:
    """A 2-D model whose ``part`` law lacks ``.to_event(1)`` (None: none does)."""
    laws = {
        "initial": lambda: dist.Normal(jnp.zeros(2), 1.0).to_event(1),
        "transition": lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0).to_event(1),
        "observation": lambda x, t: dist.Normal(x, 0.5).to_event(1),
    }
    if part == "initial":
        laws[part] = lambda: dist.Normal(jnp.zeros(2), 1.0)
    elif part == "transition":
        laws[part] = lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0)
    elif part == "observation":
        laws[part] = lambda x, t: dist.Normal(x, 0.5)
    return pk.StateSpaceModel(**laws)


@pytest.mark.parametrize("part", ["initial", "transition", "observation"])
def test_batch_shaped_per_particle_law_is_a_value_error(part):
    ssm = _batch_shaped(part)
    ys = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match=rf"{part}\(.*batch shape \(2,\).*to_event\(1\)"):
        pk.filters.bootstrap(KEY, ssm, ys, num_particles=16)
    with pytest.raises(ValueError, match=r"to_event\(1\)"):
        pk.smoothing.paris(KEY, ssm, ys, additive_fn=lambda xp, x, t: x, num_particles=16)
    with pytest.raises(ValueError, match=r"to_event\(1\)"):
        pk.pgibbs.csmc(KEY, ssm, ys, jnp.zeros((5, 2)), num_particles=16)


def test_event_shaped_and_vectorized_models_still_run():
    ssm = _batch_shaped(None)
    res = pk.filters.bootstrap(KEY, ssm, jnp.zeros((5, 2)), num_particles=16)
    assert pk.smoothing.ffbs(KEY, ssm, res, 4).shape == (4, 5, 2)
    vectorized = pk.StateSpaceModel(
        initial=SSM.initial, transition=SSM.transition, observation=SSM.observation,
        vectorized=True,
    )  # fmt: skip
    assert np.isfinite(
        float(pk.filters.bootstrap(KEY, vectorized, YS, num_particles=16).log_evidence)
    )


# ------------------------------------------------------------------------- user callables
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"proposal": lambda xp, y, t: xp}, r"proposal\(x_prev, y, t\) must return .*array"),
        ({"proposal": proposal, "initial_proposal": lambda y0: 3.0},
         r"initial_proposal\(y0\) must return .*float"),
        ({"proposal": lambda xp, y, t: dist.Normal(jnp.zeros(2), 1.0).to_event(1)},
         r"proposal\(x_prev, y, t\) returned .*shape \(2,\).*expected \(\)"),
        ({"proposal": proposal, "initial_proposal": lambda y0: dist.Normal(jnp.zeros(2), 1.0)},
         r"initial_proposal\(y0\) returned .*shape \(2,\)"),
    ],
    ids=["proposal-array", "initial-float", "proposal-event-shape", "initial-batch-shape"],
)  # fmt: skip
def test_guided_callables_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pk.filters.guided(KEY, SSM, YS, num_particles=8, **kwargs)


def test_guided_batch_shaped_proposal_names_to_event():
    ssm = _batch_shaped(None)
    with pytest.raises(ValueError, match=r"proposal\(x_prev, y, t\).*batch shape.*to_event"):
        pk.filters.guided(KEY, ssm, jnp.zeros((3, 2)), num_particles=8,
                          proposal=lambda xp, y, t: dist.Normal(xp, 1.0))  # fmt: skip


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda xp, y, t: dist.Normal(xp, 1.0), "got a Normal distribution"),
        (lambda xp, y, t: jnp.stack([xp, xp]), r"expected shape \(\), got .* shape \(2,\)"),
        (lambda xp, y, t: None, "got NoneType"),
    ],
    ids=["distribution", "vector", "none"],
)
def test_auxiliary_log_predictive_is_checked(fn, match):
    with pytest.raises(ValueError, match=match):
        pk.filters.auxiliary(KEY, SSM, YS, log_predictive=fn, num_particles=8)


# ------------------------------------------------------------------------- list data
@pytest.mark.parametrize("container", [list, tuple, np.asarray])
def test_to_inference_data_takes_a_list_of_observations(container):
    ys = container([0.1, 0.4, -0.2, 0.3])
    res = pk.filters.bootstrap(KEY, SSM, ys, num_particles=16)
    observed = res.to_inference_data(ys)["observed_data"]["y"]
    assert observed.dims == ("time",)
    np.testing.assert_allclose(np.asarray(observed), [0.1, 0.4, -0.2, 0.3], rtol=1e-6)


def test_poisson_state_model_matches_the_forward_algorithm():
    """A model whose state is Poisson raised ``NotImplementedError: poisson is only
    implemented for the threefry2x32 RNG`` in every filter: ``jax.random.poisson`` accepts
    only ``jax.random``'s own key implementation, and the engine hands the user's functions
    its fused keys (``prng.call_with_keys`` now retries with ``jax.random``'s keys of the
    same bits). The log-evidence is checked against the forward algorithm on the truncated
    state space ``{0, ..., 59}`` (the mass beyond is below 1e-20)."""
    from scipy.stats import norm, poisson

    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Poisson(3.0),
        transition=lambda x_prev, t: dist.Poisson(0.5 * x_prev + 1.0),
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    ys = np.array([2.1, 4.0, 3.2, 0.5, 1.9, 2.7, 1.0, 3.3], np.float32)
    states = np.arange(60)
    transition = poisson.pmf(states[None, :], 0.5 * states[:, None] + 1.0)
    alpha = poisson.pmf(states, 3.0) * norm.pdf(ys[0], states, 1.0)
    log_z = np.log(alpha.sum())
    for y in ys[1:]:
        alpha = (alpha / alpha.sum()) @ transition * norm.pdf(y, states, 1.0)
        log_z += np.log(alpha.sum())
    keys = jax.random.split(jax.random.key(0), 8)
    runs = jax.vmap(lambda k: pk.filters.bootstrap(k, ssm, ys, num_particles=512).log_evidence)
    est = np.asarray(runs(keys), np.float64)
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - log_z) < 4 * se + 0.01, (est.mean(), log_z, se)
    # PaRIS draws its particles through the same kernels
    res = pk.smoothing.paris(jax.random.key(1), ssm, ys, additive_fn=lambda xp, x, t: 1.0 * x,
                             num_particles=64)  # fmt: skip
    assert np.isfinite(float(res.estimate))
