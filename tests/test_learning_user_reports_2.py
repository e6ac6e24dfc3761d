"""Regression tests from a second user-style hunt in parameter learning (``pk.learning.mle``).

Findings (symptom before the fix, then the fix):

1. A too-large learning rate (e.g. ``optax.sgd(50.0)``) threw ``theta`` in one update to a
   value where the filter overflows (``|a| >> 1``: every weight zero). Every later sweep
   failed at that ``theta`` and was skipped, so the run stayed stuck there, and the only
   warning blamed the data ("every weight zero at some step, or a non-finite score"), as
   for impossible observations. ``mle`` now recognises failures that start after
   successful iterations and last to the end, and warns that the iterates diverged, from
   which iteration, that ``theta`` and ``theta_average`` are not estimates, and what to do
   (lower the learning rate, clip the updates, reparameterise).


2. With ``estimator="ppg"`` the same divergence was entirely silent: the pinned reference
   keeps every conditional sweep alive (its weight stays finite while every other
   particle's underflows to zero), so no sweep "failed", the "score" was the reference
   path's own, and ``theta`` ran off to ``a = -5e15`` in four updates with
   ``failed=False`` and no warning. A PPG sweep in which the reference holds all the
   normalised weight at some step now counts as failed (``log_evidence`` ``-inf``, update
   skipped), like a PaRIS sweep with every weight zero; then finding 1's warning applies.
   The same silent failure hit an observation the model cannot explain (one outlier 40
   noise sds away): PPG went to ``a = -35`` (exact MLE and PaRIS near 0.95) unflagged; it
   is now counted in ``num_failed`` and warned about.

3. ``mle`` and ``score_climbing`` inside ``jax.jit`` / ``jax.vmap`` with any optimizer
   other than the default raised ``TracerBoolConversionError`` from the optimizer probe
   (it ran on traced stand-ins of the parameters). The probe now runs eagerly on concrete
   stand-ins (``jax.ensure_compile_time_eval``), so a negative learning rate is still a
   ``ValueError`` under ``jit``; an optimizer closing over traced values is not probed.

The models are tiny (T = 10, N = 8, a few iterations) so that compilation dominates.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from learning_models import model_fn, narrow_fn

import particlekit as pk

YS = model_fn({"a": 0.9}).simulate(jax.random.key(0), 10)[1]
KEY = jax.random.key(1)


def _runtime_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("estimator", ["paris", "ppg"])
def test_divergent_learning_rate_warns_that_the_iterates_diverged(estimator):
    # sgd(1e4) on -score / T: the first update moves a from 0.2 to |a| ~ 1e3, where the
    # states overflow float32 within 10 steps; every later sweep fails (deterministic: the
    # overflow does not depend on the draws)
    res, messages = _runtime_warnings(
        lambda: pk.learning.mle(
            KEY,
            model_fn,
            {"a": 0.2},
            YS,
            num_particles=8,
            num_iterations=4,
            optimizer=optax.sgd(1e4),
            estimator=estimator,
            progress_bar=False,
        )
    )
    assert bool(res.failed) and int(res.num_failed) == 3
    assert np.isfinite(res.log_evidence[0]) and not np.any(np.isfinite(res.log_evidence[1:]))
    assert len(messages) == 1
    assert "diverged" in messages[0] and "from iteration 1 on" in messages[0]
    assert "learning rate" in messages[0]
    # the stuck iterate is the one the divergent update reached
    assert abs(float(res.theta["a"])) > 10.0


def test_impossible_data_is_not_reported_as_divergence():
    # every sweep fails from the start: the data, not the optimiser, are the problem
    _, messages = _runtime_warnings(
        lambda: pk.learning.mle(
            KEY,
            narrow_fn,
            {"a": 0.2},
            YS + 100.0,
            num_particles=8,
            num_iterations=3,
            progress_bar=False,
        )
    )
    assert len(messages) == 1
    assert "3 iteration(s) failed" in messages[0] and "diverged" not in messages[0]


def test_no_warning_for_a_healthy_run_and_none_under_jit():
    res, messages = _runtime_warnings(
        lambda: pk.learning.mle(
            KEY, model_fn, {"a": 0.2}, YS, num_particles=8, num_iterations=3, progress_bar=False
        )
    )
    assert not bool(res.failed) and messages == []
    # under jit the counts are traced: no warning, the result's fields report the failure
    run = jax.jit(
        lambda a: pk.learning.mle(
            KEY,
            model_fn,
            {"a": a},
            YS,
            num_particles=8,
            num_iterations=4,
            optimizer=optax.sgd(1e4),
            progress_bar=False,
        )
    )
    res, messages = _runtime_warnings(lambda: run(jnp.float32(0.2)))
    assert messages == [] and int(res.num_failed) == 3


def test_custom_optimizer_under_jit_and_vmap():
    # the optimizer probe ran on traced stand-ins and bool() of its answer raised
    # TracerBoolConversionError for any optimizer other than the default
    opt = optax.adam(0.05)

    def run(key, a):
        return pk.learning.mle(
            key,
            model_fn,
            {"a": a},
            YS,
            num_particles=8,
            num_iterations=3,
            optimizer=opt,
            progress_bar=False,
        ).theta["a"]

    eager = run(KEY, jnp.float32(0.2))
    np.testing.assert_allclose(jax.jit(run)(KEY, jnp.float32(0.2)), eager, rtol=1e-5)
    batch = jax.vmap(run, in_axes=(0, None))(jax.random.split(KEY, 2), jnp.float32(0.2))
    assert batch.shape == (2,) and np.all(np.isfinite(batch))
    # the probe still rejects a negative learning rate under jit, before tracing the run
    with pytest.raises(ValueError, match="negative learning rate"):
        jax.jit(
            lambda a: (
                pk.learning.mle(
                    KEY,
                    model_fn,
                    {"a": a},
                    YS,
                    num_particles=8,
                    num_iterations=3,
                    optimizer=optax.sgd(-0.1),
                    progress_bar=False,
                ).theta
            )
        )(jnp.float32(0.2))
    # a learning rate traced by the outer jit cannot be probed: the run goes ahead
    traced_lr = jax.jit(
        lambda lr: pk.learning.mle(
            KEY,
            model_fn,
            {"a": 0.2},
            YS,
            num_particles=8,
            num_iterations=3,
            optimizer=optax.sgd(lr),
            progress_bar=False,
        ).theta["a"]
    )(jnp.float32(0.05))
    assert np.isfinite(traced_lr)


def test_custom_optimizer_under_jit_score_climbing():
    ssm = model_fn({"a": 0.9})

    def prop(phi):
        return lambda xp, y, t: dist.Normal(phi[0] * xp + phi[1] * y, 1.0)

    def prop0(phi):
        return lambda y: dist.Normal(phi[1] * y, 1.0)

    run = jax.jit(
        lambda phi: (
            pk.learning.score_climbing(
                KEY,
                ssm,
                YS,
                proposal_fn=prop,
                initial_proposal_fn=prop0,
                phi_init=phi,
                num_particles=8,
                num_iterations=3,
                optimizer=optax.adam(0.05),
                progress_bar=False,
            ).phi
        )
    )
    assert np.all(np.isfinite(run(jnp.zeros(2))))


def test_ppg_with_an_outlier_is_flagged_not_silently_wrong():
    # one observation 40 noise sds away: the conditional sweeps are carried by the
    # reference alone at that step. Before the fix the PPG run went to a = -35 (the exact
    # MLE, and the PaRIS run, are near 0.95) with failed=False and no warning.
    ys = model_fn({"a": 0.9}).simulate(jax.random.key(0), 30)[1].at[15].set(20.0)
    res, messages = _runtime_warnings(
        lambda: pk.learning.mle(
            KEY,
            model_fn,
            {"a": 0.5},
            ys,
            num_particles=16,
            num_iterations=20,
            estimator="ppg",
            progress_bar=False,
        )
    )
    assert bool(res.failed) and int(res.num_failed) > 0
    assert not np.all(np.isfinite(res.log_evidence))
    assert len(messages) == 1 and "reference alone" in messages[0]
