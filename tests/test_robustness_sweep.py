"""Regression tests from a robustness sweep of the public API outside static-model
inference (filters, smoothing, learning, distributed, diffusion, steering). Each finding
below was a silent wrong answer, a silent NaN or an obscure error; each test fails on the
code before its fix.

1. ``paris_online``: once every weight was zero (an impossible observation, a NaN
   likelihood), ``PaRISState`` had no failure flag: the filter restarted from uniform
   weights and ``state.estimate`` stayed a plausible number. ``PaRISState.failed`` now
   reports it, as ``PaRISResult.failed`` does offline.
2. ``learning.mle`` / ``score_climbing`` inside ``jax.jit`` with ``theta_init`` /
   ``phi_init`` a concrete JAX array closed over: ``TracerBoolConversionError`` (the
   finiteness check ran jnp ops, which trace under an outer jit). It now checks with NumPy.
3. ``fit_pdds_potential(learning_rate=nan)`` returned a potential whose every parameter
   was NaN; a negative rate climbed the loss and zero trained nothing, all silently. A
   ``ValueError`` before tracing now.
4. ``fit_pdds_potential``: ``depth=-1`` was an IndexError, ``width=0`` built a network
   without hidden units, ``potential=3`` an AttributeError. ``ValueError`` now.
5. ``fk_steering(resample_window=0.5)`` was a TypeError and a triple a ValueError "too many
   values to unpack". A ``ValueError`` naming ``resample_window`` now.
6. ``steering.best_of(result, scores)`` with fewer scores than sequences returned an
   index into the wrong population; ``best_of(3)`` was an AttributeError. ``ValueError``.
7. ``steering.sequence_log_prob``: a token id outside the vocabulary was clamped to the
   last id (a finite, wrong log-probability) and a ``length`` beyond the tokens silently
   read as ``len(tokens)``. A concrete out-of-vocabulary token is now a ``ValueError`` (a
   traced one has log-probability ``-inf``), and so is the length.
8. ``distributed.spans_processes(3)`` was an AttributeError and ``num_shards("p")``
   returned 1. Both raise a ``ValueError`` for anything but ``None`` or a Sharding.
9. ``StateSpaceModel(initial=dist.Normal(0, 1), ...)`` (a distribution where a function
   belongs, an easy slip) failed at the first use with ``KeyError: 'rng_key'``, and a
   non-callable with a TypeError. A ``ValueError`` at construction now.
10. ``smoothing.backward_indices`` with log-weights and particles of different counts was
    a broadcasting TypeError from deep inside, and ``num_draws=0`` returned an empty draw.
    ``ValueError`` before tracing now.
11. ``DiffusionModel.sample`` / ``FlowModel.sample`` with a network that returns NaN
    somewhere returned NaN samples without a word (these samplers have no diagnostics).
    An eager call now warns (``RuntimeWarning``) with the count.
12. ``smoothing.paris`` (and ``paris_online``, ``pgibbs.ppg``) with a complex-valued
    ``additive_fn`` returned the real part of the estimate only. A ``ValueError`` now.
13. ``learning.mle`` / ``score_climbing`` with a complex ``theta_init`` / ``phi_init``
    silently optimised its real part. A ``ValueError`` now.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import particlekit as pk

N = 8
KEY = jax.random.key(0)
YS = jnp.asarray([0.1, -0.2, 0.3, 0.0])


def _initial():
    return dist.Normal(0.0, 1.0)


def _observation(x, t):
    return dist.Normal(x, 0.5)


SSM = pk.StateSpaceModel(
    initial=_initial,
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=_observation,
)


def _model_fn(a):
    return pk.StateSpaceModel(
        initial=_initial,
        transition=lambda x_prev, t: dist.Normal(a * x_prev, 1.0),
        observation=_observation,
    )


# ---------------------------------------------------------------------------- 1. paris_online
def _run_online(ys):
    online = pk.smoothing.paris_online(SSM, additive_fn=lambda x_prev, x, t: x, num_particles=N)
    state = online.init(KEY, ys[0])
    flags = [bool(state.failed)]
    for t in range(1, len(ys)):
        state, _ = online.update(jax.random.fold_in(KEY, t), state, ys[t])
        flags.append(bool(state.failed))
    return state, flags


def test_paris_online_state_reports_failure():
    # an infinite y_2 gives every particle zero weight at t = 2: failed from then on
    state, flags = _run_online(YS.at[2].set(jnp.inf))
    assert flags == [False, False, True, True]
    assert float(state.particle_state.log_evidence) == -np.inf
    # a missing (NaN) observation is skipped, not a failure
    _, flags = _run_online(YS.at[2].set(jnp.nan))
    assert flags == [False] * 4


# ---------------------------------------------------------------------------- 2. learning/jit
THETA0 = jnp.float32(0.5)  # concrete, closed over by the jitted functions below
PHI0 = jnp.zeros(2)


def test_mle_under_jit_with_a_closed_over_theta():
    def run(ys):
        return pk.learning.mle(
            KEY, _model_fn, THETA0, ys, num_particles=N, num_iterations=2, progress_bar=False
        )

    traced = jax.jit(run)(YS)
    eager = run(YS)
    # the same computation: equal up to float32 rounding of a differently fused program
    np.testing.assert_allclose(np.asarray(traced.theta), np.asarray(eager.theta), rtol=1e-5)
    # a concrete NaN closed over is still caught before tracing (a TracerBoolConversionError
    # before the fix, like any concrete theta_init)
    nan0 = jnp.float32(np.nan)
    with pytest.raises(ValueError, match="theta_init must be finite"):
        jax.jit(
            lambda ys: pk.learning.mle(
                KEY, _model_fn, nan0, ys, num_particles=N, num_iterations=2, progress_bar=False
            )
        )(YS)


def test_score_climbing_under_jit_with_a_closed_over_phi():
    def run(ys):
        return pk.learning.score_climbing(
            KEY,
            SSM,
            ys,
            proposal_fn=lambda phi: lambda x_prev, y, t: dist.Normal(phi[0] * x_prev, 1.0),
            initial_proposal_fn=lambda phi: lambda y: dist.Normal(phi[1], 1.0),
            phi_init=PHI0,
            num_particles=N,
            num_iterations=2,
            progress_bar=False,
        )

    result = jax.jit(run)(YS)
    assert np.all(np.isfinite(np.asarray(result.phi)))


# ---------------------------------------------------------------------------- 3-4. fit_pdds
def _fit(**kwargs):
    options = dict(num_rounds=1, num_train_steps=2, batch_size=8, num_particles=8,
                   num_steps=4, num_mcmc_steps=0, width=4, depth=1, progress_bar=False)  # fmt: skip
    return pk.diffusion.fit_pdds_potential(
        KEY, lambda x: -0.5 * jnp.sum(x**2), 2, **{**options, **kwargs}
    )


@pytest.mark.parametrize("learning_rate", [float("nan"), float("inf"), -1e-3, 0.0, "1e-3", True])
def test_fit_pdds_potential_rejects_a_bad_learning_rate(learning_rate):
    with pytest.raises(ValueError, match="learning_rate"):
        _fit(learning_rate=learning_rate)


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(width=0), "width"), (dict(width=2.5), "width"), (dict(depth=-1), "depth"),
     (dict(depth=1.5), "depth"), (dict(potential=3), "potential")],
)  # fmt: skip
def test_fit_pdds_potential_rejects_a_bad_network(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _fit(**kwargs)


def test_fit_pdds_potential_accepts_valid_variants():
    # depth=0 is a linear network; an array learning rate is a number
    pot = _fit(depth=0, learning_rate=jnp.float32(1e-3))
    leaves = jax.tree.leaves(pot)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in leaves if hasattr(a, "dtype"))


# ---------------------------------------------------------------------------- 5. fk_steering
@pytest.mark.parametrize("window", [0.5, (0.0, 0.5, 1.0), ("a", 1.0), None])
def test_fk_steering_malformed_resample_window(window):
    mixture = pk.diffusion.gaussian_mixture([1.0], [[0.0, 0.0]], stds=1.0)
    with pytest.raises(ValueError, match="resample_window must be a pair"):
        pk.diffusion.fk_steering(
            KEY, mixture, lambda x: x[0], num_particles=N, num_steps=4, resample_window=window
        )


# ---------------------------------------------------------------------------- 6. best_of
def _steer():
    gen = pk.steering.toy_generator()
    return pk.steering.smc(
        KEY,
        gen,
        lambda tokens, length: 1.0 * jnp.sum(tokens == 0),
        num_particles=N,
        max_length=4,
        eos_id=3,
        progress_bar=False,
    )


def test_best_of_checks_the_scores_and_the_result():
    res = _steer()
    with pytest.raises(ValueError, match="one entry per sequence"):
        pk.steering.best_of(res, jnp.arange(3.0))
    with pytest.raises(ValueError, match="SteeringResult"):
        pk.steering.best_of(3)
    with pytest.raises(ValueError, match="result, scores"):
        pk.steering.best_of(None)
    # scores of the right shape still pick their maximum
    assert int(pk.steering.best_of(res, jnp.arange(float(N)))) == N - 1


# ---------------------------------------------------------------------------- 7. log prob
def test_sequence_log_prob_out_of_vocabulary_and_bad_length():
    gen = pk.steering.toy_generator()  # vocabulary of 4 tokens
    inside = pk.steering.sequence_log_prob(gen, jnp.array([1, 3, 3]), 2)
    assert np.isfinite(float(inside))
    # token 9 does not exist (it was read as token 3, a finite value): a concrete id is a
    # ValueError, as in smc's prompt; traced, probability 0
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\)"):
        pk.steering.sequence_log_prob(gen, jnp.array([9, 3, 3]), 2)
    traced = jax.jit(lambda tok: pk.steering.sequence_log_prob(gen, tok, 2))
    assert float(traced(jnp.array([9, 3, 3]))) == -np.inf
    assert float(traced(jnp.array([1, 3, 3]))) == pytest.approx(float(inside))
    with pytest.raises(ValueError, match="length"):
        pk.steering.sequence_log_prob(gen, jnp.array([1, 3, 3]), 9)
    with pytest.raises(ValueError, match="1-D"):
        pk.steering.sequence_log_prob(gen, jnp.zeros((2, 3), jnp.int32), 2)


# ---------------------------------------------------------------------------- 8. distributed
@pytest.mark.parametrize("bad", [3, "p", ("p",)])
def test_distributed_helpers_reject_a_non_sharding(bad):
    with pytest.raises(ValueError, match="sharding"):
        pk.distributed.spans_processes(bad)
    with pytest.raises(ValueError, match="sharding"):
        pk.distributed.num_shards(bad)
    assert pk.distributed.num_shards(None) == 1
    assert pk.distributed.spans_processes(None) is False


# ---------------------------------------------------------------------------- 9. StateSpaceModel
@pytest.mark.parametrize("slot", ["initial", "transition", "observation"])
@pytest.mark.parametrize(
    "bad", [dist.Normal(0.0, 1.0), 3, None], ids=["distribution", "int", "none"]
)
def test_state_space_model_needs_functions(slot, bad):
    laws = dict(initial=_initial, transition=lambda x_prev, t: dist.Normal(x_prev, 1.0),
                observation=_observation)  # fmt: skip
    with pytest.raises(ValueError, match=f"{slot} must be a function"):
        pk.StateSpaceModel(**{**laws, slot: bad})


# ---------------------------------------------------------------------------- 10. backward
def test_backward_indices_checks_its_populations():
    fr = pk.filters.bootstrap(KEY, SSM, YS, num_particles=N)
    xs_prev, targets = fr.particles[1], fr.particles[2][:3]
    idx, _ = pk.smoothing.backward_indices(KEY, SSM, fr.log_weights[1], xs_prev, targets, 2)
    assert idx.shape == (3, 1) and np.all((np.asarray(idx) >= 0) & (np.asarray(idx) < N))
    with pytest.raises(ValueError, match="one per log-weight"):
        pk.smoothing.backward_indices(KEY, SSM, fr.log_weights[1][:4], xs_prev, targets, 2)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        pk.smoothing.backward_indices(KEY, SSM, jnp.zeros((2, N)), xs_prev, targets, 2)
    with pytest.raises(ValueError, match="num_draws"):
        pk.smoothing.backward_indices(KEY, SSM, fr.log_weights[1], xs_prev, targets, 2, num_draws=0)


# ---------------------------------------------------------------------------- 11. samplers
class _HalfNaNVelocity:
    """A velocity that is NaN on the half-space x[0] > 0 (a network that blew up there)."""

    def __call__(self, x, t):
        return jnp.where(x[0] > 0, jnp.nan, 1.0) * x


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_plain_samplers_warn_about_non_finite_samples(kind):
    flow = pk.diffusion.FlowModel(_HalfNaNVelocity(), shape=(2,))
    model = flow if kind == "flow" else flow.as_diffusion_model()
    with pytest.warns(RuntimeWarning, match="samples are NaN or infinite"):
        samples = model.sample(KEY, N, num_steps=4)
    assert np.isnan(np.asarray(samples)).any()
    # a healthy model: no such warning
    healthy = pk.diffusion.gaussian_mixture_flow([1.0], [[0.0, 0.0]], stds=1.0)
    healthy = healthy if kind == "flow" else healthy.as_diffusion_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert np.all(np.isfinite(np.asarray(healthy.sample(KEY, N, num_steps=4))))


# ---------------------------------------------------------------------------- 12. complex h
def test_paris_rejects_a_complex_additive_functional():
    with pytest.raises(ValueError, match="must return real values"):
        pk.smoothing.paris(KEY, SSM, YS, additive_fn=lambda x_prev, x, t: x + 1j, num_particles=N)
    with pytest.raises(ValueError, match="must return real values"):
        pk.smoothing.paris(
            KEY, SSM, YS, additive_fn=lambda x_prev, x, t: x,
            initial_fn=lambda x: x + 1j, num_particles=N,
        )  # fmt: skip


# ---------------------------------------------------------------------------- 13. complex theta
def test_learning_rejects_complex_parameters():
    with pytest.raises(ValueError, match="theta_init must be real"):
        pk.learning.mle(
            KEY, _model_fn, jnp.complex64(0.5 + 1j), YS, num_particles=N, num_iterations=2
        )
    with pytest.raises(ValueError, match="phi_init must be real"):
        pk.learning.score_climbing(
            KEY,
            SSM,
            YS,
            proposal_fn=lambda phi: lambda x_prev, y, t: dist.Normal(x_prev, 1.0),
            initial_proposal_fn=lambda phi: lambda y: dist.Normal(0.0, 1.0),
            phi_init=jnp.zeros(2, jnp.complex64),
            num_particles=N,
            num_iterations=2,
        )


# ------------------------------------------------------------- 14. primitives' callables
def test_primitives_refuse_a_non_callable():
    """``pk.init(key, 3, N)`` and ``pk.run(key, 3, ...)`` raised ``TypeError: 'int' object
    is not callable`` from inside the trace; now a ValueError naming the argument."""
    state = pk.init(KEY, lambda k: jax.random.normal(k), 4)
    with pytest.raises(ValueError, match="sample_fn must be a function"):
        pk.init(KEY, 3, 4)
    with pytest.raises(ValueError, match="step must be a kernel"):
        pk.run(KEY, 3, state, jnp.zeros(2))
    with pytest.raises(ValueError, match="done_fn must be a function"):
        pk.run_until(KEY, lambda k, s, t: s, state, True, max_steps=2)
    with pytest.raises(ValueError, match="step must be a function"):
        pk.run_until(KEY, None, state, lambda s: True, max_steps=2)


# ------------------------------------------- 15. backward draws without a transition density
def _negative_scale_ssm():
    """Samples fine (the filters only sample the transition), but ``log_prob`` is NaN:
    a negative scale computed from the state, so NumPyro's validation does not see it."""
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, -1.0 - 0.0 * x_prev),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )


@pytest.mark.parametrize("method", ["exact", "rejection"])
def test_smoothers_warn_when_backward_rows_have_no_density(method):
    """Before, FFBS, PaRIS and PPG drew such backward indices uniformly without a word (a
    smoother that is not the model's); now each warns with the count of targets, and a
    valid model warns nothing."""
    bad = _negative_scale_ssm()
    res = pk.filters.bootstrap(jax.random.key(1), bad, YS, num_particles=64)
    h = lambda xp, x, t: x  # noqa: E731
    with pytest.warns(RuntimeWarning, match="ffbs: for 30 targets"):  # 10 paths x 3 steps
        jax.block_until_ready(pk.smoothing.ffbs(KEY, bad, res, 10, method=method))
    with pytest.warns(RuntimeWarning, match="paris: for 192 targets"):  # 64 x 3 steps
        jax.block_until_ready(
            pk.smoothing.paris(KEY, bad, YS[:4], additive_fn=h, num_particles=64, method=method)
        )
    with pytest.warns(RuntimeWarning, match="ppg: for 192 targets"):  # 2 sweeps x 32 x 3
        jax.block_until_ready(
            pk.pgibbs.ppg(
                KEY, bad, YS, additive_fn=h, num_particles=32, num_iterations=2, burn_in=0,
                method=method,
            ).estimate
        )  # fmt: skip
    good = pk.filters.bootstrap(jax.random.key(1), SSM, YS, num_particles=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        jax.block_until_ready(pk.smoothing.ffbs(KEY, SSM, good, 10, method=method))
        jax.block_until_ready(
            pk.smoothing.paris(KEY, SSM, YS[:4], additive_fn=h, num_particles=64, method=method)
        )
