"""Step-level sequence steering (``separator_id``): particles advance one reasoning step,
up to and including the separator token, between reweightings.

Exactness: under ``"exact"`` the potentials still telescope to ``phi(x)``, so the weighted
population targets ``p(x) phi(x) / Z`` whatever the segmentation into steps; checked
against the enumeration of the toy generator (letters 0, 1, 2, end token 3), with token 1
as the separator. Tolerances are ``K`` standard errors over independent runs.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_steering import COUNT_A, EOS, GEN, K, T, _assert_matches, _frequencies, _stack

import particlekit as pk

SEP = 1
N = 256
RUNS = 48


def _ends_steps(tokens, length):
    """0 where the prefix ends a step (last token the separator or the end token, or the
    whole buffer filled), ``-inf`` elsewhere: a reward that only step-level steering can
    satisfy at every evaluation."""
    last = tokens[jnp.clip(length - 1, 0, None)]
    ok = (last == SEP) | (last == EOS) | (length >= tokens.shape[0]) | (length == 0)
    return jnp.where(ok, 0.0, -jnp.inf)


@eqx.filter_jit
def _run(key, reward_fn, variant="exact", max_step_tokens=None):
    return pk.steering.smc(
        key, GEN, reward_fn, num_particles=N, max_length=T, eos_id=EOS, variant=variant,
        separator_id=SEP, max_step_tokens=max_step_tokens, max_steps=T,
    )  # fmt: skip


def _runs(reward_fn, seed, **kwargs):
    keys = jax.random.split(jax.random.key(seed), RUNS)
    return _stack([_run(k, reward_fn, **kwargs) for k in keys])


def test_exact_step_level_matches_enumeration():
    exact = pk.steering.enumerate_sequences(GEN, COUNT_A, max_length=T, eos_id=EOS)
    res = _runs(COUNT_A, seed=3)
    _assert_matches(exact, _frequencies(exact, res.sequences, res.log_weights))
    ratio = np.exp(np.asarray(res.log_evidence, np.float64) - float(exact.log_evidence))
    se = ratio.std(ddof=1) / np.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) < K * se, (ratio.mean(), se)
    assert not np.any(res.failed) and np.all(res.num_nonfinite == 0)


def test_reward_is_evaluated_only_at_step_ends():
    """Every evaluation of ``_ends_steps`` at a step end is 0, so each weight stays 1 and
    the evidence is exactly 1."""
    res = _run(jax.random.key(0), _ends_steps)
    assert not bool(res.failed) and float(res.log_evidence) == 0.0
    assert np.all(np.asarray(res.log_weights) == np.asarray(res.log_weights)[0])
    # the same reward at token level kills every particle that draws a letter other than
    # the separator before the end (so the check above can fail)
    token = pk.steering.smc(
        jax.random.key(0), GEN, _ends_steps, num_particles=N, max_length=T, eos_id=EOS
    )
    assert float(token.log_evidence) < -0.5


def test_max_step_tokens_cuts_steps():
    """With at most 2 tokens per step, a step that reaches 2 tokens without the
    separator ends there, where ``_ends_steps`` is -inf: those particles get zero weight
    (steps of one letter then the separator or the end token survive)."""
    res = _run(jax.random.key(1), _ends_steps, max_step_tokens=2)
    assert not bool(res.failed) and -5.0 < float(res.log_evidence) < -0.05
    finite = np.isfinite(np.asarray(res.log_weights))
    seqs, lengths = np.asarray(res.sequences)[finite], np.asarray(res.lengths)[finite]
    for row, length in zip(seqs, lengths, strict=True):
        run = 0
        for tok in row[: min(length, T - 1)]:  # a step may end by filling the buffer
            run = 0 if tok in (SEP, EOS) else run + 1
            assert run < 2, row


def test_steps_stop_once_every_sequence_has_finished():
    """Two steps of ``a b`` (separator b) then the end token: the later steps are
    skipped under both variants (neutral info: no resampling)."""

    def step_fn(tokens, length):
        nxt = jnp.where(length >= 4, EOS, jnp.where(length % 2 == 0, 0, SEP))
        return jnp.where(jnp.arange(4) == nxt, 0.0, -jnp.inf)

    def reward_fn(tokens, length):
        return jnp.asarray(0.1, jnp.float32) * length

    for variant in ("exact", "softmax"):
        res = pk.steering.smc(
            jax.random.key(0), step_fn, reward_fn, num_particles=4, max_length=8, eos_id=EOS,
            variant=variant, separator_id=SEP, max_steps=8,
        )  # fmt: skip
        np.testing.assert_array_equal(res.sequences[0], [0, 1, 0, 1, 3, 3, 3, 3])
        np.testing.assert_array_equal(res.lengths, 5)
        # 3 steps move (2 letters, 2 letters, the end token); the other 5 are skipped
        assert not np.any(np.asarray(res.resampled)[3:]), variant


@pytest.mark.slow
def test_step_level_particle_gibbs_matches_enumeration():
    exact = pk.steering.enumerate_sequences(GEN, COUNT_A, max_length=T, eos_id=EOS)
    chains = jax.jit(
        jax.vmap(
            lambda k: (
                pk.steering.particle_gibbs(
                    k,
                    GEN,
                    COUNT_A,
                    num_particles=8,
                    num_iterations=300,
                    max_length=T,
                    eos_id=EOS,
                    separator_id=SEP,
                    max_steps=T,
                ).sequences
            )  # fmt: skip
        )
    )(jax.random.split(jax.random.key(5), 24))
    freq = _frequencies(exact, np.asarray(chains[:, 50:]))
    _assert_matches(exact, freq)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(separator_id=4), "separator_id must be in"),
        (dict(separator_id=EOS), "must differ from eos_id"),
        (dict(separator_id=True), "separator_id must be an integer"),
        (dict(max_steps=3), "give separator_id"),
        (dict(max_step_tokens=2), "give separator_id"),
        (dict(separator_id=SEP, max_step_tokens=0), "max_step_tokens must be a positive"),
        (dict(separator_id=SEP, max_steps=-1), "max_steps must be a positive"),
    ],
)
def test_bad_step_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pk.steering.smc(
            jax.random.key(0), GEN, COUNT_A, num_particles=4, max_length=T, eos_id=EOS,
            **kwargs,
        )  # fmt: skip
