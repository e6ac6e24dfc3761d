"""Bad input for language-model steering: each a clear ``ValueError`` before tracing or a
counted flag (``num_nonfinite``) in the result, never a silent NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.lm import task

GEN = pk.steering.toy_generator()  # letters 0, 1, 2, end token 3
EOS = 3


def _count_a(tokens, length):
    return 0.7 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))


def _run(reward, **kwargs):
    return pk.steering.smc(
        jax.random.key(0), GEN, reward, num_particles=64, max_length=4, eos_id=EOS, **kwargs
    )


def test_probability_reward_is_the_log_reward():
    """The same run with ``phi = p`` given as a probability and as ``log p``."""
    as_log = _run(lambda t, n: _count_a(t, n) - 3.0)
    as_prob = _run(pk.steering.probability_reward(lambda t, n: jnp.exp(_count_a(t, n) - 3.0)))
    np.testing.assert_array_equal(as_log.sequences, as_prob.sequences)
    np.testing.assert_allclose(as_log.log_evidence, as_prob.log_evidence, rtol=1e-5)
    squared = _run(pk.steering.probability_reward(lambda t, n: jnp.exp(_count_a(t, n) - 3), 2.0))
    np.testing.assert_allclose(
        squared.log_potentials, 2.0 * (_count_a_batch(squared) - 3.0), rtol=1e-5
    )


def _count_a_batch(res):
    return jax.vmap(_count_a)(res.sequences, res.lengths)


def test_probability_outside_unit_interval_is_counted_not_clipped():
    """``p = 0.4 * (#a + 1)`` exceeds 1 from 2 letters a on: those particles get zero
    weight, counted, and nothing is NaN."""
    reward = pk.steering.probability_reward(lambda t, n: 0.4 * (_count_a(t, n) / 0.7 + 1.0))
    res = _run(reward)
    assert int(res.num_nonfinite.sum()) > 0 and not bool(res.failed)
    assert np.isfinite(float(res.log_evidence))
    assert not np.any(np.isnan(np.asarray(res.log_weights)))
    alive = np.isfinite(np.asarray(res.log_weights))
    assert np.all(np.asarray(_count_a_batch(res))[alive] / 0.7 < 2)


@pytest.mark.parametrize("strength", [0.0, -1.0, float("nan"), float("inf")])
def test_probability_reward_bad_strength(strength):
    with pytest.raises(ValueError, match="strength must be a positive"):
        pk.steering.probability_reward(lambda t, n: 0.5, strength)


def test_probability_reward_not_callable():
    with pytest.raises(ValueError, match="must be callable"):
        pk.steering.probability_reward(0.5)


def _random_lm(vocab_size, context_length):
    cfg = pk.lm.TransformerConfig(vocab_size=vocab_size, context_length=context_length,
                                  d_model=16, num_heads=2, num_layers=1)  # fmt: skip
    return pk.lm.Transformer(cfg, jax.random.key(0))


def test_prm_flags_tokens_outside_its_vocabulary():
    """A generator with 20 token ids steered by the shipped PRM (16): every prefix that
    holds an id >= 16 gets a NaN reward, counted; the run reports it."""
    prm = pk.lm.arithmetic_prm()
    prompt = task.encode_prompt([12, 7, 30])
    lm, cache = pk.lm.steering_model(_random_lm(20, task.CONTEXT_LENGTH), prompt)
    res = pk.steering.smc(
        jax.random.key(0), lm, prm, num_particles=32, max_length=task.MAX_NEW_TOKENS,
        eos_id=task.EOS, prompt=prompt, init_cache=cache,
    )  # fmt: skip
    assert int(res.num_nonfinite.sum()) > 0
    assert not np.any(np.isnan(np.asarray(res.log_weights)))
    # the PRM itself, on one prefix with an id outside its vocabulary: traced (as in
    # smc), a NaN; concrete, a ValueError
    tokens = jnp.concatenate([jnp.asarray(prompt), jnp.array([17, 3])])
    assert np.isnan(float(jax.jit(lambda t, n: prm(t, n))(tokens, tokens.shape[0])))
    assert np.isfinite(float(jax.jit(lambda t, n: prm(t, n))(tokens, tokens.shape[0] - 2)))
    with pytest.raises(ValueError, match="token ids must be in"):
        prm(tokens, tokens.shape[0])


def test_buffer_longer_than_the_prm_context_is_a_value_error():
    prm = pk.lm.arithmetic_prm()
    prompt = task.encode_prompt([12, 7, 30])
    lm, cache = pk.lm.steering_model(_random_lm(16, 64), prompt)
    with pytest.raises(ValueError, match="the PRM reads at most"):
        pk.steering.smc(
            jax.random.key(0), lm, prm, num_particles=4, max_length=40, eos_id=task.EOS,
            prompt=prompt, init_cache=cache,
        )  # fmt: skip


def test_prompt_plus_max_length_beyond_the_model_context_is_a_value_error():
    model = pk.lm.arithmetic_model()
    prompt = task.encode_prompt([12, 7, 30])
    lm, cache = pk.lm.steering_model(model, prompt)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        pk.steering.smc(
            jax.random.key(0), lm, task.verifier_log_reward, num_particles=4,
            max_length=task.MAX_NEW_TOKENS + 1, eos_id=task.EOS, prompt=prompt,
            init_cache=cache,
        )  # fmt: skip
    with pytest.raises(ValueError, match="longer than the context"):
        pk.lm.steering_model(model, np.zeros(task.CONTEXT_LENGTH + 1, np.int32))
    with pytest.raises(ValueError, match="separator_id must be in"):
        pk.steering.smc(
            jax.random.key(0), lm, task.verifier_log_reward, num_particles=4,
            max_length=task.MAX_NEW_TOKENS, eos_id=task.EOS, prompt=prompt,
            init_cache=cache, separator_id=task.VOCAB_SIZE,
        )  # fmt: skip
