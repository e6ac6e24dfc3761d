"""Regression tests from a user-style hunt through the composition primitives.

A user wrote custom samplers from ``pk.init``, ``pk.move``, ``pk.reweight``, ``pk.resample``,
``pk.mcmc``, ``pk.chain``, ``pk.run`` and ``pk.run_until`` (bootstrap filters, tempered SMC
with BlackJAX moves, pytree particles, custom resampling schemes, hand-written kernels, a
float64 run) and looked for silent wrong answers, crashes and unclear errors. Each test here
failed before its fix; every model is a few particles on a scalar state, so that the tests
are dominated by (small) compilations.
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.types import StepInfo

N = 8


def _state():
    return pk.init(jax.random.key(0), lambda k: jax.random.normal(k), N)


def _weighted_state():
    state, _ = pk.reweight(lambda x_prev, x, y: 4.0 * x)(None, _state())  # ESS < N / 2
    return state


# ------------------------------------------------------------ custom resampling schemes
def _three_argument_scheme(key, log_weights, num_samples):
    """The documented signature ``(key, log_weights, num_samples) -> indices``."""
    return pk.resampling.multinomial(key, log_weights, num_samples)


def _int16_scheme(key, log_weights, num_samples=None):
    """A scheme returning a narrow integer dtype (int64 under ``jax_enable_x64`` is the
    common case: ``jax.random.categorical``)."""
    return pk.resampling.systematic(key, log_weights).astype(jnp.int16)


@pytest.mark.parametrize("scheme", [_three_argument_scheme, _int16_scheme])
@pytest.mark.parametrize("ess_threshold", [0.5, 1.0])
def test_custom_scheme_with_the_documented_signature_and_any_integer_dtype(scheme, ess_threshold):
    # was: TypeError (missing num_samples), and for int16 / int64 indices a lax.cond or
    # scan carry type mismatch
    state = _weighted_state()
    final, trace = pk.run(jax.random.key(1), pk.resample(scheme, ess_threshold), state,
                          num_steps=2)  # fmt: skip
    assert final.ancestors.dtype == jnp.int32
    assert bool(trace.info.resampled[0])
    assert final.particles.shape == (N,)


@pytest.mark.parametrize(
    "scheme",
    [
        lambda key, log_w, m: jnp.arange(log_w.shape[0] - 1),  # one index short
        lambda key, log_w, m: jnp.arange(log_w.shape[0]) * 1.0,  # float indices
    ],
)
def test_scheme_of_the_wrong_shape_or_dtype_is_a_value_error(scheme):
    # was: a shrunken population in eager code, a cond / scan type error or an indexer
    # TypeError under run
    with pytest.raises(ValueError, match="resampling scheme must return 8 integer"):
        pk.resample(scheme, 1.0)(jax.random.key(1), _weighted_state())


@pytest.mark.parametrize("bad", ["0.5", None, True])
def test_ess_threshold_that_is_not_a_number_is_a_value_error(bad):
    # was: "0.5" accepted, then a TypeError at trace time; None a TypeError
    with pytest.raises(ValueError, match="ess_threshold must be a number"):
        pk.resample("systematic", bad)


# ------------------------------------------------------------------- kernels' own checks
def test_move_that_changes_the_population_size_is_a_value_error():
    # was: a population of 4 particles with 8 weights, reported later by reweight as "the
    # log-potential must be a scalar per particle"
    shrink = pk.move(lambda key, xs, y: xs[:4], vectorized=True)
    with pytest.raises(ValueError, match="leading axis 8"):
        shrink(jax.random.key(1), _state())
    summary = pk.move(lambda key, xs, y: {"x": xs, "mean": jnp.mean(xs)}, vectorized=True)
    with pytest.raises(ValueError, match=r"\['mean'\] has shape \(\)"):
        summary(jax.random.key(1), _state())


@pytest.mark.parametrize("log_g", [lambda xp, x, y: x > 0, lambda xp, x, y: x + 0j])
def test_boolean_or_complex_log_potential_is_a_value_error(log_g):
    # was: an indicator x > 0 read as log G in {0, 1} (potential {1, e}), silently; a
    # complex one lost its imaginary part with only a warning
    with pytest.raises(ValueError, match="log-potential"):
        pk.reweight(log_g)(None, _state())


@pytest.mark.parametrize("bad_key", [0, jnp.zeros(2)])
@pytest.mark.parametrize("which", ["move", "mcmc", "chain"])
def test_kernels_name_a_bad_key(which, bad_key):
    # was: AttributeError / TypeError from inside jax.random (resample already checked)
    blackjax = pytest.importorskip("blackjax")
    kernel = {
        "move": pk.move(lambda k, x, y: x),
        "mcmc": pk.mcmc(
            blackjax.additive_step_random_walk.normal_random_walk(
                lambda x: -0.5 * x**2, sigma=jnp.array(0.5)
            )
        ),
        "chain": pk.chain(pk.move(lambda k, x, y: x)),
    }[which]
    with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
        kernel(bad_key, _state())


def test_chain_of_an_uncalled_primitive_is_a_value_error():
    # was: "TypeError: resample() takes from 0 to 2 positional arguments but 3 were given"
    # at the first step
    with pytest.raises(ValueError, match=r"pk.resample itself: call it"):
        pk.chain(pk.resample, pk.move(lambda k, x, y: x))
    with pytest.raises(ValueError, match="chain takes kernels"):
        pk.chain(1)


# ------------------------------------------------------------------------------ the driver
@pytest.mark.parametrize(
    "inputs, match",
    [
        (jnp.float32(1.0), "inputs is the scalar"),
        ([0.1, 0.2, 0.3], r"\[0\] is the scalar 0.1; a list or tuple"),
        ({"y": jnp.zeros(3), "beta": 1.0}, r"\['beta'\] is the scalar"),
        ((jnp.zeros(3), jnp.zeros(4)), r"different leading \(time\) axes \[3, 4\]"),
    ],
)
def test_run_inputs_without_a_common_time_axis_are_value_errors(inputs, match):
    # was: IndexError, AttributeError ('float' has no attribute 'shape'), or scan's error
    with pytest.raises(ValueError, match=match):
        pk.run(jax.random.key(1), pk.move(lambda k, x, y: x), _state(), inputs)


def test_run_names_a_kernel_output_passed_as_state_and_a_step_without_info():
    step = pk.move(lambda k, x, y: x)
    out = pk.reweight(lambda xp, x, y: 0.0)(None, _state())  # (state, info)
    with pytest.raises(ValueError, match="kernel returns \\(state, info\\)"):
        pk.run(jax.random.key(1), step, out, num_steps=2)
    with pytest.raises(ValueError, match="step must return \\(state, info\\)"):
        pk.run(jax.random.key(1), lambda k, s, t: s, _state(), num_steps=2)


def test_run_keeps_the_evidence_of_a_hand_written_kernel():
    # A kernel for the constant potential log G = -1 that updates log_evidence itself and
    # returns StepInfo.neutral: run used to overwrite its evidence with the sum of the
    # reported increments (0), silently. Exact: log Z = -1 per step.
    def constant_potential(key, state, inputs):
        state = state._replace(log_evidence=state.log_evidence - 1.0)
        return state, StepInfo.neutral(state)

    final, trace = pk.run(jax.random.key(1), constant_potential, _state(), num_steps=3)
    np.testing.assert_array_equal(trace.log_evidence, [-1.0, -2.0, -3.0])
    assert float(final.log_evidence) == -3.0
    np.testing.assert_array_equal(trace.info.log_evidence_increment, [-1.0, -1.0, -1.0])
    # pk.reweight's increments (reported and applied) are unchanged
    step = pk.chain(pk.reweight(lambda xp, x, y: -1.0), pk.move(lambda k, x, y: x))
    _, trace = pk.run(jax.random.key(1), step, _state(), num_steps=3)
    np.testing.assert_allclose(trace.log_evidence, [-1.0, -2.0, -3.0], rtol=1e-6)


def test_run_until_checks_its_arguments_and_accepts_python_bools():
    state = _state()
    move = pk.move(lambda k, x, y: x)

    def state_only(key, s, t):
        return move(key, s, t)[0]

    # done_fn returning a Python bool: ~False == -1 made the loop condition an int
    _, steps = pk.run_until(jax.random.key(1), state_only, state, lambda s: False, max_steps=3)
    assert int(steps) == 3
    for bad in (2.5, -1, "5"):
        with pytest.raises(ValueError, match="max_steps must be a non-negative integer"):
            pk.run_until(jax.random.key(1), state_only, state, lambda s: False, max_steps=bad)
    with pytest.raises(ValueError, match="returns the new state only"):
        pk.run_until(jax.random.key(1), move, state, lambda s: False, max_steps=3)


# --------------------------------------------------------------------- a float64 run
X64_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import particlekit as pk

    def categorical(key, log_weights, num_samples):  # int64 indices under x64
        return jax.random.categorical(key, log_weights, shape=(num_samples,))

    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 8)
    step = pk.chain(pk.resample(categorical, 0.5),
                    pk.move(lambda k, x, y: 0.9 * x + jax.random.normal(k)),
                    pk.reweight(lambda xp, x, y: -0.5 * (x - y) ** 2))
    final, trace = pk.run(jax.random.key(1), step, state, jnp.zeros(4))
    assert final.log_evidence.dtype == jnp.float64, final.log_evidence.dtype
    assert final.ancestors.dtype == jnp.int32
    assert bool(jnp.isfinite(final.log_evidence))
    print("ok", int(trace.info.resampled.sum()))
    """
)


def test_float64_run_with_a_custom_categorical_scheme():
    # was: "cond branches must have equal output types" (int64 vs int32 ancestors)
    out = subprocess.run(
        [sys.executable, "-c", X64_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("make", [pk.move, pk.reweight])
def test_batch_size_with_a_vectorized_function_is_a_value_error(make):
    # was: batch_size silently ignored (the whole population evaluated at once, the memory
    # the user asked to bound not bounded)
    with pytest.raises(ValueError, match="batch_size=4 needs a per-particle function"):
        make(lambda *args: args[1], vectorized=True, batch_size=4)
    make(lambda *args: args[1], vectorized=False, batch_size=4)  # fine: chunked lax.map
