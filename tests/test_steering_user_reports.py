"""Regression tests from a user-style hunt for silent wrong answers, crashes and unclear
errors in sequence steering (``particlekit.steering``) and the shipped language-model
pieces (``particlekit.lm``).

Each test reproduces one reported defect and fails without its fix. They reuse the toy
generator and tiny shapes (and the shipped 32-position transformer where the report is
about it), so that compilation dominates and each runs in a few seconds.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.lm import pretrained, prm, task, transformer

GEN = pk.steering.toy_generator()  # letters 0, 1, 2; end token 3


def _dies_at_first_token(bad):
    """A reward that is ``bad`` (NaN or -inf) on every one-token prefix and 0 elsewhere:
    every particle gets zero weight at step 1, while its later prefixes score finite."""

    def reward(tokens, length):
        return jnp.where(length == 1, bad, 0.0)

    return reward


@pytest.mark.parametrize("bad", [jnp.nan, -jnp.inf])
@pytest.mark.parametrize("variant", ["exact", "softmax"])
def test_a_population_whose_weights_all_vanished_stays_at_zero_weight(bad, variant):
    # Reported: once every weight was zero, the engine's reweight normalised the all-zero
    # weights to uniform ones and the particles whose next prefix scored finite came back:
    # failed=True and log_evidence=-inf, yet ess=[0, 0, 8, 8] and finite uniform weights.
    res = pk.steering.smc(jax.random.key(0), GEN, _dies_at_first_token(bad), num_particles=8,
                          max_length=4, eos_id=3, variant=variant, ess_threshold=0.0)  # fmt: skip
    assert bool(res.failed)
    assert float(res.log_evidence) == -np.inf
    np.testing.assert_array_equal(np.asarray(res.ess), 0.0)
    assert bool(jnp.all(res.log_weights == -jnp.inf))


def test_particle_gibbs_and_tempering_report_sweeps_whose_weights_all_vanished():
    # Reported: the conditional sweeps revived their dead particles, drew the next
    # reference from them and reported failed=False.
    reward = _dies_at_first_token(jnp.nan)
    chain = pk.steering.particle_gibbs(jax.random.key(0), GEN, reward, num_particles=4,
                                       num_iterations=3, max_length=3, eos_id=3)  # fmt: skip
    assert bool(chain.failed)
    np.testing.assert_array_equal(np.asarray(chain.ess), 0.0)
    pt = pk.steering.parallel_tempering(jax.random.key(0), GEN, reward, num_particles=4,
                                        num_iterations=2, temperatures=[1.0, 2.0],
                                        max_length=3, eos_id=3)  # fmt: skip
    assert bool(pt.failed)


def test_a_cache_of_another_dtype_is_a_value_error_before_tracing():
    # Reported: only shapes were compared, and a step returning a float cache for an int
    # one crashed inside lax.while_loop with a TypeError about carry types.
    def step(tokens, length, cache):
        return GEN(tokens, length), cache + 0.5

    with pytest.raises(ValueError, match="dtypes of init_cache"):
        pk.steering.smc(jax.random.key(0), step, lambda t, n: 0.0, num_particles=2,
                        max_length=3, eos_id=3, init_cache=jnp.zeros(2, jnp.int32))  # fmt: skip


def test_a_complex_reward_is_a_value_error():
    # Reported: the imaginary part was dropped with only a ComplexWarning.
    with pytest.raises(ValueError, match="real log potential"):
        pk.steering.smc(jax.random.key(0), GEN, lambda t, n: jnp.complex64(1j),
                        num_particles=2, max_length=3, eos_id=3)  # fmt: skip


def test_weighted_vote_with_infinite_weights_and_a_misshaped_mask():
    answers = jnp.array([1, 2, 2, 3])
    # exp of a large log-reward overflows to inf: the share was inf / inf = NaN
    answer, share = pk.steering.weighted_vote(answers, jnp.array([jnp.inf, 1.0, 1.0, 0.0]))
    assert int(answer) == 1 and float(share) == 1.0
    answer, share = pk.steering.weighted_vote(answers, jnp.array([jnp.inf, jnp.inf, 5.0, 0.0]))
    assert int(answer) == 1 and float(share) == 0.5
    # an (N, 1) mask broadcast into an (N, N) vote and returned an array as the share
    with pytest.raises(ValueError, match="valid must have the shape"):
        pk.steering.weighted_vote(answers, None, jnp.ones((4, 1), bool))


def test_sequence_frequencies_checks_the_number_of_log_weights():
    exact = pk.steering.enumerate_sequences(GEN, max_length=2, eos_id=3)
    with pytest.raises(ValueError, match="log_weights must have shape"):
        pk.steering.sequence_frequencies(exact, exact.sequences[:3], jnp.zeros(4))


def test_markov_generator_rejects_nan_tables_and_a_fractional_eos():
    # NaN probabilities became NaN logits, which steering treats as impossible tokens
    with pytest.raises(ValueError, match="no NaN"):
        pk.steering.markov_generator([1.0, np.nan], [[1.0, 1.0], [1.0, 1.0]], eos_id=1)
    with pytest.raises(ValueError, match="finite"):
        pk.steering.markov_generator([1.0, np.inf], [[1.0, 1.0], [1.0, 1.0]], eos_id=1)
    with pytest.raises(ValueError, match="finite or -inf"):
        pk.steering.MarkovGenerator(jnp.array([0.0, jnp.nan]), jnp.zeros((2, 2)), eos_id=1)
    # eos_id=1.7 was truncated to 1
    with pytest.raises(ValueError, match="integer token id"):
        pk.steering.markov_generator([1.0, 1.0], [[1.0, 1.0], [1.0, 1.0]], eos_id=1.7)


def _tiny_model():
    cfg = transformer.TransformerConfig(vocab_size=4, context_length=8, d_model=8,
                                        num_heads=2, num_layers=1)  # fmt: skip
    return transformer.Transformer(cfg, jax.random.key(0))


def test_generate_rejects_an_eos_outside_the_vocabulary_and_bad_arguments():
    model, prompt = _tiny_model(), jnp.array([0, 1])
    # an end token the model can never emit silently never stopped the generation
    for eos in (4, -1):
        with pytest.raises(ValueError, match="eos_id must be in"):
            transformer.generate(model, jax.random.key(1), prompt, 3, eos_id=eos)
    with pytest.raises(ValueError, match="integer token id"):
        transformer.generate(model, jax.random.key(1), prompt, 3, eos_id=2.5)
    # temperature inf silently sampled uniformly
    with pytest.raises(ValueError, match="finite"):
        transformer.generate(model, jax.random.key(1), prompt, 3, eos_id=3,
                             temperature=float("inf"))  # fmt: skip
    # max_new_tokens=True was one token; 2.5 a TypeError
    for bad in (True, 2.5):
        with pytest.raises(ValueError, match="max_new_tokens"):
            transformer.generate(model, jax.random.key(1), prompt, bad, eos_id=3)


def test_steering_lm_rejects_an_infinite_temperature():
    with pytest.raises(ValueError, match="finite and > 0"):
        transformer.SteeringLM(_tiny_model(), float("inf"))


def test_process_reward_model_rejects_a_bad_strength_or_start():
    # NaN killed every particle, a negative strength favoured the prefixes judged wrong
    for strength in (float("nan"), -1.0, float("inf"), 0.0):
        with pytest.raises(ValueError, match="strength"):
            pretrained.arithmetic_prm(strength)
    # start=1.5 was truncated to 1
    with pytest.raises(ValueError, match="start must be an integer"):
        prm.ProcessRewardModel(_tiny_model(), 1.5)
    assert float(pretrained.arithmetic_prm(2.0).strength) == 2.0
    assert pretrained.arithmetic_prm().start == task.PROMPT_LENGTH


def test_a_batch_of_prompts_of_unequal_length_is_a_clear_value_error():
    # numpy's "inhomogeneous shape" error said nothing about prompts
    for prompt in ([[1, 2], [0]], [[1, 2], [0, 1]]):
        with pytest.raises(ValueError, match="for a batch of prompts"):
            pk.steering.smc(jax.random.key(0), GEN, lambda t, n: 0.0, num_particles=2,
                            max_length=2, eos_id=3, prompt=prompt)  # fmt: skip


def test_smc_shows_its_default_progress_bar_on_a_terminal(capsys, monkeypatch):
    # documented: progress_bar=None shows a bar when standard error is a terminal; smc
    # passed bool(None) = False on, so it never showed one (particle_gibbs did)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    res = pk.steering.smc(jax.random.key(2), GEN, lambda t, n: 0.0, num_particles=8,
                          max_length=4, eos_id=3, separator_id=1, max_steps=4)  # fmt: skip
    jax.block_until_ready(res)
    jax.effects_barrier()
    assert "4/4" in capsys.readouterr().err


def test_best_of_never_picks_a_sequence_with_an_invalid_plus_inf_reward():
    # a +inf reward is invalid (zero weight, counted in num_nonfinite), yet best_of ranked
    # log_potentials as they are and returned the +inf sequence
    def reward(tokens, length):  # +inf on prefixes holding the letter 2, else the #0s
        filled = jnp.arange(tokens.shape[0]) < length
        return jnp.where(jnp.any((tokens == 2) & filled), jnp.inf, 1.0 * jnp.sum(
            (tokens == 0) & filled))  # fmt: skip

    res = pk.steering.beam_search(jax.random.key(0), GEN, reward, num_particles=8,
                                  beam_width=2, max_length=4, eos_id=3, separator_id=1)  # fmt: skip
    assert bool(jnp.any(res.log_potentials == jnp.inf))  # the case reported
    best = int(pk.steering.best_of(res))
    assert float(res.log_potentials[best]) == float(
        jnp.max(jnp.where(jnp.isfinite(res.log_potentials), res.log_potentials, -jnp.inf))
    )
    assert not bool(jnp.any(res.sequences[best, : res.lengths[best]] == 2))


def test_a_boolean_reward_is_a_value_error():
    # an indicator returned as the reward was read as log phi in {0, 1}: a mild tilt by e
    # instead of the hard constraint it usually means, without any error
    with pytest.raises(ValueError, match="got a bool"):
        pk.steering.smc(jax.random.key(0), GEN, lambda t, n: n > 1, num_particles=2,
                        max_length=3, eos_id=3)  # fmt: skip
    with pytest.raises(ValueError, match="got a bool"):
        pk.steering.enumerate_sequences(GEN, lambda t, n: n > 1, max_length=2, eos_id=3)


def test_a_cached_step_without_init_cache_is_a_value_error():
    # forgetting init_cache with SteeringLM (or giving one to a stateless step) was a bare
    # TypeError about positional arguments from inside jax.eval_shape
    lm, cache = transformer.steering_model(_tiny_model(), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="needs init_cache"):
        pk.steering.smc(jax.random.key(0), lm, lambda t, n: 0.0, num_particles=2,
                        max_length=3, eos_id=3, prompt=jnp.array([0, 1]))  # fmt: skip
    with pytest.raises(ValueError, match="step_fn\\(tokens, length, cache\\)"):
        pk.steering.smc(jax.random.key(0), GEN, lambda t, n: 0.0, num_particles=2,
                        max_length=3, eos_id=3, init_cache=cache)  # fmt: skip


@pytest.mark.parametrize(
    "tokens, length, message",
    [
        ([0, 0, 0, 0, 0, 0, 0, 3], 8, "must start with the prompt"),
        ([1, 2, 0, 3, 0, 0, 0, 3], 8, "eos_id=3 at position 3, before its end"),
        ([1, 2, 0, 0, 3, 0, 0, 0], 5, "padded with eos_id=3"),
        ([1, 2, 0, 0, 1, 3, 3, 3], 5, "must end with eos_id=3"),
    ],
)
def test_particle_gibbs_reference_the_model_cannot_produce_is_a_value_error(
    tokens, length, message
):
    # was: an early eos_id silently replayed a shorter sequence (the chain's first state was
    # not the reference given: `changed` True at the first sweep), another prompt's tokens
    # were kept in the reference, and bad padding went unnoticed
    gen = pk.steering.toy_generator()
    with pytest.raises(ValueError, match=message):
        pk.steering.particle_gibbs(
            jax.random.key(1), gen, lambda t, n: 0.0 * n, num_particles=2, num_iterations=2,
            max_length=6, eos_id=3, prompt=jnp.array([1, 2]),
            reference=(jnp.array(tokens), length),
        )  # fmt: skip
