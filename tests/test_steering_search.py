"""Search baselines (beam search, DVTS) and answer selection (best-of, weighted vote),
and ``pk.lm.task.final_answer`` against string parsing."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.lm import task, train

GEN = pk.steering.toy_generator()  # letters 0, 1, 2, end token 3
EOS, SEP = 3, 1


def test_beam_selection_keeps_the_best_prefixes_each_repeated():
    select = pk.steering.beam_selection(3)
    lw = jnp.array([0.5, -jnp.inf, 2.0, jnp.nan, 1.0, -1.0])
    np.testing.assert_array_equal(select(jax.random.key(0), lw), [2, 2, 2, 4, 4, 4])
    with pytest.raises(ValueError, match="multiple of 3"):
        select(jax.random.key(0), jnp.zeros(4))


def test_dvts_selection_keeps_the_best_of_each_subtree():
    select = pk.steering.dvts_selection(2)
    lw = jnp.array([0.0, 3.0, jnp.nan, 1.0, -jnp.inf, -jnp.inf])
    out = np.asarray(select(jax.random.key(0), lw))
    np.testing.assert_array_equal(out[:4], [1, 1, 3, 3])
    assert out[4] == out[5] and out[4] in (4, 5)


def test_selection_breaks_ties_uniformly():
    """Four tied prefixes, two kept: each is kept with probability 1/2 (binomial
    tolerance over 2000 draws, 5 standard errors)."""
    select = jax.jit(jax.vmap(pk.steering.beam_selection(2), in_axes=(0, None)))
    kept = np.asarray(select(jax.random.split(jax.random.key(1), 2000), jnp.zeros(4)))
    freq = np.array([(kept == i).any(axis=1).mean() for i in range(4)])
    assert np.all(np.abs(freq - 0.5) < 5 * np.sqrt(0.25 / 2000)), freq


def _only_zeros(tokens, length):
    """0 while the prefix has no letter 2, -inf once it has one."""
    mask = jnp.arange(tokens.shape[0]) < length
    return jnp.where(jnp.any((tokens == 2) & mask), -jnp.inf, 0.0)


@pytest.mark.parametrize("diverse", [False, True])
def test_beam_search_finds_what_sampling_rarely_does(diverse):
    """Sequences without the letter 2 have probability about 0.3 under the toy generator
    at 8 tokens; a search over 4 x 4 extensions per step keeps a valid prefix at every
    step, so every kept (final) sequence is valid, in each of 20 runs."""
    run = jax.jit(
        jax.vmap(
            lambda k: pk.steering.beam_search(
                k,
                GEN,
                _only_zeros,
                num_particles=16,
                beam_width=4,
                max_length=8,
                eos_id=EOS,
                separator_id=SEP,
                diverse=diverse,
            )  # fmt: skip
        )
    )
    res = run(jax.random.split(jax.random.key(2), 20))
    best = pk.steering.best_of(res)
    best_score = np.take_along_axis(np.asarray(res.log_potentials), np.asarray(best)[:, None], 1)
    assert np.all(best_score == 0.0)
    # plain sampling: most sequences contain a 2
    plain = pk.steering.smc(
        jax.random.key(3), GEN, _only_zeros, num_particles=256, max_length=8, eos_id=EOS,
        ess_threshold=0.0,
    )  # fmt: skip
    assert np.mean(np.isfinite(np.asarray(plain.log_weights))) < 0.6


def test_beam_search_bad_input():
    with pytest.raises(ValueError, match="multiple of beam_width"):
        pk.steering.beam_search(
            jax.random.key(0), GEN, _only_zeros, num_particles=10, beam_width=4,
            max_length=4, eos_id=EOS, separator_id=SEP,
        )  # fmt: skip
    with pytest.raises(ValueError, match="give separator_id"):
        pk.steering.beam_search(
            jax.random.key(0), GEN, _only_zeros, num_particles=8, beam_width=4,
            max_length=4, eos_id=EOS, separator_id=None,
        )  # fmt: skip
    with pytest.raises(ValueError, match="beam_width must be a positive"):
        pk.steering.beam_search(
            jax.random.key(0), GEN, _only_zeros, num_particles=8, beam_width=0,
            max_length=4, eos_id=EOS, separator_id=SEP,
        )  # fmt: skip


def test_weighted_vote():
    answers = jnp.array([5, 9, 5, 9, 9, 1])
    assert int(pk.steering.weighted_vote(answers)[0]) == 9
    w = jnp.array([0.5, 0.1, 0.4, 0.1, 0.1, 0.0])
    answer, share = pk.steering.weighted_vote(answers, w)
    assert int(answer) == 5 and abs(float(share) - 0.9 / 1.2) < 1e-6
    # invalid answers do not vote; NaN and negative weights count as 0
    valid = jnp.array([False, True, False, True, True, True])
    assert int(pk.steering.weighted_vote(answers, w, valid)[0]) == 9
    w_bad = jnp.array([jnp.nan, 0.1, -3.0, 0.1, 0.0, 0.5])
    assert int(pk.steering.weighted_vote(answers, w_bad)[0]) == 1
    answer, share = pk.steering.weighted_vote(answers, jnp.zeros(6))
    assert int(answer) == 5 and float(share) == 0.0
    with pytest.raises(ValueError, match="shape of answers"):
        pk.steering.weighted_vote(answers, jnp.ones(3))


def _parsed_answer(text):
    match = re.search(r"(?:^|[;=])A(\d{1,3})\$$", text)
    return (int(match.group(1)), True) if match else (0, False)


def test_final_answer_matches_string_parsing():
    """Sampled solutions of the shipped model (right and wrong), and hand-made edge
    cases, against a regular expression on the decoded text."""
    model = pk.lm.arithmetic_model()
    problems = task.heldout_problems(64)
    prompts = train.problem_prompts(problems)
    tokens, lengths = train.sample_solutions(model, jax.random.key(0), prompts)
    texts = ["12+7+30=19;49;A49$", "12+7+30=19;A$", "12+7+30=19;49;AA4$", "1+2+3=A6$"]
    texts += ["12+7+30=19;49;A1234$", "12+7+30=19;49;A49", "12+7+30=19;4A9$"]
    extra = np.stack([np.pad(task.encode(t), (0, tokens.shape[1] - len(t)), constant_values=EOS)
                      for t in texts])  # fmt: skip
    tokens = np.concatenate([np.asarray(tokens), extra])
    lengths = np.concatenate([np.asarray(lengths), [len(t) for t in texts]])
    answers, valid = jax.vmap(task.final_answer)(tokens, lengths)
    for row, n, a, v in zip(tokens, lengths, np.asarray(answers), np.asarray(valid), strict=True):
        text = task.decode(row[:n]).lstrip("_")
        assert (int(a), bool(v)) == _parsed_answer(text), text
    assert np.mean(valid) > 0.5
