"""The driver ``pk.run`` (and ``run_until``), and the composition API end to end: a
bootstrap filter assembled by hand from the primitives matches the Kalman filter."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import kalman, scalar_model

import particlekit as pk

A, Q, R = 0.9, 1.0, 0.5  # x_t = A x_{t-1} + N(0, Q^2),  y_t = x_t + N(0, R^2),  x_0 ~ N(0, 1)
T = 50


def _data(seed=0):
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(A * x_prev, Q),
        observation=lambda x, t: dist.Normal(x, R),
    )
    _, ys = ssm.simulate(jax.random.key(seed), T)
    return ys


# --------------------------------------------------------------------- the composition API
def bootstrap_filter(key, ys, num_particles=500):
    """A bootstrap particle filter from the primitives: returns the log-evidence."""

    def sample_x0(key):  # one particle from the initial law
        return jax.random.normal(key)

    def transition(key, x, y):  # M_t: move one particle
        return A * x + Q * jax.random.normal(key)

    def log_g(x_prev, x, y):  # G_t: weight one particle by the observation density
        return dist.Normal(x, R).log_prob(y)

    key_init, key_first, key_run = jax.random.split(key, 3)
    state = pk.init(key_init, sample_x0, num_particles)
    state, _ = pk.reweight(log_g)(key_first, state, ys[0])
    step = pk.chain(pk.resample("systematic", ess_threshold=0.5), pk.move(transition),
                    pk.reweight(log_g))  # fmt: skip
    final_state, trace = pk.run(key_run, step, state, ys[1:])
    return final_state.log_evidence


def test_bootstrap_filter_by_hand_matches_kalman():
    ys = _data()
    exact_log_z = kalman(scalar_model(A, Q, R), np.asarray(ys))[0]
    keys = jax.random.split(jax.random.key(1), 64)
    log_z = np.asarray(jax.jit(jax.vmap(lambda k: bootstrap_filter(k, ys)))(keys), np.float64)
    # Z_hat is unbiased: mean of Z_hat / Z is 1 within Monte Carlo error
    ratio = np.exp(log_z - exact_log_z)
    assert abs(ratio.mean() - 1.0) < 5.0 * ratio.std() / np.sqrt(len(ratio))
    # log Z_hat itself is biased by about -Var(log Z_hat) / 2 (Jensen)
    jensen = -0.5 * log_z.var()
    assert abs(log_z.mean() - exact_log_z - jensen) < 5.0 * log_z.std() / np.sqrt(len(log_z))


# --------------------------------------------------------------------- run
def _toy_step():
    return pk.chain(
        pk.resample("systematic", 0.5),
        pk.move(lambda k, x, y: A * x + jax.random.normal(k)),
        pk.reweight(lambda xp, x, y: -0.5 * (x - y) ** 2),
    )


def test_run_keep_history_does_not_change_the_result():
    ys = _data()
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 64)
    run = jax.jit(pk.run, static_argnames=("step", "keep_history"))
    step = _toy_step()
    final_h, trace_h = run(jax.random.key(1), step, state, ys, keep_history=True)
    final_n, trace_n = run(jax.random.key(1), step, state, ys, keep_history=False)
    assert trace_n.history is None
    assert trace_h.history.particles.shape == (T, 64)
    assert trace_h.history.log_weights.shape == (T, 64)
    assert trace_h.history.ancestors.shape == (T, 64)
    for a, b in zip(jax.tree.leaves(final_h), jax.tree.leaves(final_n), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(trace_h.info), jax.tree.leaves(trace_n.info), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(trace_h.history.particles[-1], final_h.particles)
    info = trace_h.info
    assert info.ess.shape == info.resampled.shape == info.log_evidence_increment.shape == (T,)
    assert 0 < int(info.resampled.sum()) < T
    assert ((np.asarray(info.ess) >= 1) & (np.asarray(info.ess) <= 64 + 1e-3)).all()
    # running log-evidence: cumulative increments, last equals the final state's
    np.testing.assert_allclose(
        trace_h.log_evidence, np.cumsum(np.asarray(info.log_evidence_increment)), rtol=1e-4
    )
    assert float(trace_h.log_evidence[-1]) == float(final_h.log_evidence)
    # ancestors point into the previous population; identity where no resampling
    kept = ~np.asarray(info.resampled)
    assert (np.asarray(trace_h.history.ancestors)[kept] == np.arange(64)).all()


def test_run_without_inputs_uses_num_steps():
    state = pk.init(jax.random.key(0), lambda k: jnp.zeros(()), 4)
    final, trace = pk.run(jax.random.key(1), pk.move(lambda k, x, t: x + t), state, num_steps=5)
    np.testing.assert_allclose(final.particles, np.full(4, 0 + 1 + 2 + 3 + 4))
    assert trace.info.ess.shape == (5,)
    with pytest.raises(ValueError, match="num_steps"):
        pk.run(jax.random.key(1), pk.move(lambda k, x, t: x), state)
    with pytest.raises(ValueError, match="does not match"):
        pk.run(jax.random.key(1), pk.move(lambda k, x, t: x), state, jnp.zeros(3), num_steps=5)


def test_run_step_keys_differ():
    state = pk.init(jax.random.key(0), lambda k: jnp.zeros(()), 3)
    _, trace = pk.run(
        jax.random.key(1), pk.move(lambda k, x, t: jax.random.normal(k)), state, num_steps=4
    )
    values = np.asarray(trace.history.particles)
    assert len(np.unique(values)) == values.size


def test_run_progress_bar_smoke(capsys):
    state = pk.init(jax.random.key(0), lambda k: jnp.zeros(()), 8)
    final, trace = pk.run(jax.random.key(1), _toy_step(), state, jnp.zeros(7), progress_bar=True)
    jax.effects_barrier()
    assert trace.info.ess.shape == (7,)
    assert np.isfinite(float(final.log_evidence))


def test_run_until_stops():
    def step(key, state, t):
        return state + jax.random.uniform(key)

    final, steps = pk.run_until(jax.random.key(0), step, jnp.zeros(()), lambda s: s > 3.0,
                                max_steps=100)  # fmt: skip
    assert float(final) > 3.0 and 4 <= int(steps) <= 100
    final, steps = pk.run_until(jax.random.key(0), step, jnp.zeros(()), lambda s: s > 1e9,
                                max_steps=7)  # fmt: skip
    assert int(steps) == 7


def test_a_step_that_changes_the_particles_layout_is_a_value_error():
    """A move returning particles of another shape or dtype was a TypeError from inside
    lax.scan about a "carry component"; now a ValueError naming the field, both drivers."""
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 16)
    weight = pk.reweight(lambda xp, x, y: -0.5 * jnp.sum(x**2))
    widen = pk.chain(pk.move(lambda k, x, y: jnp.stack([x, x])), weight)
    with pytest.raises(ValueError, match=r"run: the step changed state.particles from "
                       r"float32\[16\] to float32\[16, 2\]"):  # fmt: skip
        pk.run(jax.random.key(1), widen, state, jnp.zeros(3))
    to_int = pk.chain(pk.move(lambda k, x, y: x.astype(jnp.int32)), weight)
    with pytest.raises(ValueError, match=r"float32\[16\] to int32\[16\]"):
        pk.run(jax.random.key(1), to_int, state, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"run_until: the step changed state\[0\] from "):
        pk.run_until(jax.random.key(0), lambda k, s, t: (s[0][None],), (jnp.zeros(()),),
                     lambda s: s[0].sum() > 1.0, max_steps=3)  # fmt: skip


def test_progress_bar_calls_the_host_about_100_times(capsys, monkeypatch):
    """A 1000-step run updates its bar by strides of 10: about 100 host callbacks, not one
    per step, and the bar still ends at 1000/1000."""
    calls = []
    original = jax.debug.callback

    def counting(fn, *args, **kwargs):
        return original(lambda *a: (calls.append(1), fn(*a)), *args, **kwargs)

    monkeypatch.setattr(jax.debug, "callback", counting)
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 8)
    pk.run(jax.random.key(1), _toy_step(), state, jnp.zeros(1000), progress_bar=True)
    jax.effects_barrier()
    assert 95 <= len(calls) <= 101
    assert "1000/1000" in capsys.readouterr().err
    # the default (None) shows no bar when standard error is not a terminal (pytest)
    calls.clear()
    pk.run(jax.random.key(2), _toy_step(), state, jnp.zeros(1000))
    jax.effects_barrier()
    assert not calls


def test_progress_bar_must_be_a_bool_or_none():
    """``bool("False")`` is True: a string switch would show the bar it was meant to hide."""
    from particlekit.run import resolve_progress_bar

    assert resolve_progress_bar(np.bool_(True)) is True
    for bad in ("False", 0, 1.0):
        with pytest.raises(ValueError, match=r"progress_bar must be True or False \(or None"):
            resolve_progress_bar(bad)
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    with pytest.raises(ValueError, match="progress_bar"):
        pk.smoothing.paris(jax.random.key(0), ssm, jnp.zeros(3), additive_fn=lambda a, b, t: b,
                           num_particles=4, progress_bar="False")  # fmt: skip
