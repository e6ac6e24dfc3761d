"""Sequence steering against exact enumeration.

The toy generator has letters a, b, c (tokens 0, 1, 2) and the end token 3; with at most 4
generated tokens there are 121 sequences, so ``p(x) phi(x) / Z`` and ``Z`` are computed
exactly by :func:`particlekit.steering.enumerate_sequences`. Monte Carlo tolerances are
``K`` standard errors estimated over independent runs (a loop over seeds of one compiled
run) or independent particle Gibbs chains.
"""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk

GEN = pk.steering.toy_generator()
EOS = 3
T = 4
K = 5.0  # standard errors
N = 512
RUNS = 64


class TokenReward(eqx.Module):
    """``log phi(prefix) = a_weight * #a + offset``, NaN (an invalid reward) once the prefix
    contains c when ``nan_on_c``. The parameters are arrays, so every instance shares one
    compiled SMC."""

    a_weight: jax.Array
    nan_on_c: jax.Array
    offset: jax.Array

    def __call__(self, tokens, length):
        mask = jnp.arange(tokens.shape[0]) < length
        has_c = jnp.any((tokens == 2) & mask)
        count = jnp.sum((tokens == 0) & mask)
        return self.a_weight * count + jnp.where(self.nan_on_c & has_c, jnp.nan, self.offset)


def reward(a_weight=1.0, nan_on_c=False, offset=0.0):
    return TokenReward(jnp.float32(a_weight), jnp.asarray(nan_on_c), jnp.float32(offset))


COUNT_A = reward(1.0)


def _one_run(key, reward_fn, variant):
    return pk.steering.smc(
        key, GEN, reward_fn, num_particles=N, max_length=T, eos_id=EOS, variant=variant
    )


_RUNNERS = {v: jax.jit(partial(_one_run, variant=v)) for v in ("exact", "softmax")}


def _stack(results):
    return jax.tree.map(lambda *leaves: np.stack(leaves), *results)


def _smc_runs(reward_fn, variant, seed=42):
    """``RUNS`` independent runs (a loop over seeds of one compiled run: cheaper to compile
    than a vmap over seeds, and each run takes milliseconds)."""
    keys = jax.random.split(jax.random.key(seed), RUNS)
    return _stack([_RUNNERS[variant](k, reward_fn) for k in keys])


@jax.jit
def _weighted_frequencies(exact, sequences, log_weights):
    return jax.vmap(pk.steering.sequence_frequencies, in_axes=(None, 0, 0))(
        exact, sequences, log_weights
    )


def _frequencies(exact, sequences, log_weights=None):
    """Weighted frequencies ``(R, M)`` of the enumerated sequences in each of ``R`` runs."""
    if log_weights is None:
        log_weights = np.zeros(sequences.shape[:2], np.float32)
    return np.asarray(_weighted_frequencies(exact, sequences, log_weights), np.float64)


def _mean_se(values):
    return values.mean(0), values.std(0, ddof=1) / np.sqrt(values.shape[0])


def _assert_matches(exact, freq, *, min_prob=0.01):
    """Per-sequence probabilities within K SE (sequences above ``min_prob``), P(length = k)
    within K SE, and total variation below the sum of SEs (about 2.5 times its expectation
    under Monte Carlo error alone). ``freq`` holds independent runs ``(R, M)``."""
    p = np.exp(np.asarray(exact.log_target, np.float64))
    mean, se = _mean_se(freq)
    big = p > min_prob
    assert big.sum() >= 5
    z = np.abs(mean - p)[big] / np.maximum(se[big], 1e-12)
    assert z.max() < K, (z.max(), np.asarray(exact.sequences)[big][np.argmax(z)])
    lengths = np.asarray(exact.lengths)
    for k in range(1, T + 1):
        group_mean, group_se = _mean_se(freq[:, lengths == k].sum(1))
        assert abs(group_mean - p[lengths == k].sum()) < K * group_se + 1e-6, k
    tv = 0.5 * np.abs(mean - p).sum()
    assert tv < se.sum(), (tv, se.sum())
    return mean, se


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def exact():
    return pk.steering.enumerate_sequences(GEN, COUNT_A, max_length=T, eos_id=EOS)


# ----------------------------------------------------------------------------- generator
def test_toy_generator_closed_form():
    base = pk.steering.enumerate_sequences(GEN, max_length=T, eos_id=EOS)
    assert base.sequences.shape == (121, T)
    np.testing.assert_allclose(np.exp(base.log_probs).sum(), 1.0, rtol=1e-5)
    # p(b, EOS) = 0.5 * 0.2 ; p(a, a, a, a) (truncated) = 0.1 * 0.4^3
    lp = jax.jit(jax.vmap(partial(pk.steering.sequence_log_prob, GEN)))(
        jnp.array([[1, 3, 3, 3], [0, 0, 0, 0]]), jnp.array([2, 4])
    )
    np.testing.assert_allclose(np.exp(lp), [0.5 * 0.2, 0.1 * 0.4**3], rtol=1e-5)


# ----------------------------------------------------------------------------- exact SMC
@pytest.mark.slow
def test_exact_variant_matches_enumeration_and_survives_invalid_rewards(exact):
    res = _smc_runs(COUNT_A, "exact")
    # the weighted population targets p(x) phi(x) / Z ...
    _assert_matches(exact, _frequencies(exact, res.sequences, res.log_weights))
    # ... which is far from the generator's law p(x) (so the check can fail)
    p = np.exp(np.asarray(exact.log_target))
    assert 0.5 * np.abs(np.exp(np.asarray(exact.log_probs)) - p).sum() > 0.3
    # Z_hat is unbiased for Z = E_p[phi(x)] on the natural scale
    ratio = np.exp(np.asarray(res.log_evidence, np.float64) - float(exact.log_evidence))
    se_ratio = ratio.std(ddof=1) / np.sqrt(ratio.size)
    assert se_ratio < 0.05
    assert abs(ratio.mean() - 1.0) < K * se_ratio, (ratio.mean(), se_ratio)
    _check_well_formed(res)
    # the same compiled sampler with invalid rewards (NaN for some sequences, or all -inf)
    _check_invalid_rewards()


def _check_invalid_rewards():
    nan_if_c = reward(0.5, nan_on_c=True)
    runs = _smc_runs(nan_if_c, "exact")
    assert not np.any(np.isnan(runs.log_weights)) and not np.any(np.isnan(runs.log_evidence))
    assert np.all(runs.num_nonfinite.sum(-1) > 0) and not np.any(runs.failed)
    has_c = np.any(runs.sequences == 2, axis=-1)
    assert np.all(np.isneginf(runs.log_weights[has_c]))
    # the population targets p(x) phi(x) with phi = 0 where the reward is NaN
    exact = pk.steering.enumerate_sequences(GEN, nan_if_c, max_length=T, eos_id=EOS)
    _assert_matches(exact, _frequencies(exact, runs.sequences, runs.log_weights))
    ratio = np.exp(np.asarray(runs.log_evidence, np.float64) - float(exact.log_evidence))
    assert abs(ratio.mean() - 1.0) < K * ratio.std(ddof=1) / np.sqrt(ratio.size)

    # every sequence impossible: flagged, -inf evidence, zero ESS, never a NaN
    res = _smc_runs(reward(offset=-np.inf), "exact")
    assert np.all(res.failed) and np.all(res.log_evidence == -np.inf)
    assert not np.any(np.isnan(res.log_weights)) and np.all(res.ess == 0.0)


def _check_well_formed(res):
    assert res.sequences.shape == (RUNS, N, T) and res.sequences.dtype == np.int32
    assert res.ess.shape == (RUNS, T) and res.resampled.shape == (RUNS, T)
    assert not np.any(np.isnan(res.log_weights))
    assert np.all((res.ess >= 1.0 - 1e-3) & (res.ess <= N + 1e-3))
    assert not np.any(res.failed) and np.all(res.num_nonfinite == 0)
    lengths = res.lengths
    assert np.all((lengths >= 1) & (lengths <= T))
    seqs = res.sequences
    pos = np.arange(T)
    # padding with the end token after the length, no end token before its last position
    assert np.all(np.where(pos >= lengths[..., None], seqs == EOS, True))
    assert np.all(np.where(pos < lengths[..., None] - 1, seqs != EOS, True))
    ended = np.take_along_axis(seqs, (lengths - 1)[..., None], axis=-1)[..., 0] == EOS
    np.testing.assert_array_equal(res.ended, ended)
    # the cached potential is the reward of the final sequence (log phi = #a)
    num_a = np.sum((seqs == 0) & (pos < lengths[..., None]), axis=-1)
    np.testing.assert_allclose(res.log_potentials, num_a)


def test_exact_variant_skips_the_steps_after_every_sequence_has_finished():
    """Every sequence is two letters and the end token. With ``max_length=8`` the five
    steps after all have finished are skipped, so the result equals the ``max_length=3``
    run (the same keys), although the final ESS is below the threshold: one more step
    of the full sampler would have resampled."""

    def step_fn(tokens, length):
        letters = jnp.array([0.0, 0.0, 0.0, -jnp.inf])
        end = jnp.array([-jnp.inf, -jnp.inf, -jnp.inf, 0.0])
        return jnp.where(length >= 2, end, letters)

    def reward_fn(tokens, length):  # log phi = 5 #b for finished sequences, else 0
        mask = jnp.arange(tokens.shape[0]) < length
        num_b = jnp.sum((tokens == 1) & mask)
        ended = jnp.any((tokens == EOS) & mask)
        return jnp.where(ended, 5.0 * num_b, 0.0)

    short, long = (
        pk.steering.smc(
            jax.random.key(0), step_fn, reward_fn, num_particles=64, max_length=t, eos_id=EOS
        )
        for t in (3, 8)
    )
    assert float(short.ess[-1]) < 0.5 * 64
    np.testing.assert_array_equal(long.sequences[:, :3], short.sequences)
    assert np.all(np.asarray(long.sequences[:, 3:]) == EOS)
    np.testing.assert_array_equal(long.log_weights, short.log_weights)
    assert float(long.log_evidence) == float(short.log_evidence)
    assert not np.any(long.resampled[3:]) and np.all(long.ess[3:] == long.ess[2])


# ----------------------------------------------------------------------------- softmax
@pytest.mark.slow
def test_softmax_variant_targets_its_own_law_not_p_phi(exact):
    runs = _smc_runs(COUNT_A, "softmax")
    assert np.all(runs.resampled)  # resampling weights = softmax(current reward)
    own = pk.steering.enumerate_sequences(GEN, COUNT_A, max_length=T, eos_id=EOS, variant="softmax")
    mean, se = _assert_matches(own, _frequencies(own, runs.sequences, runs.log_weights))
    ratio = np.exp(np.asarray(runs.log_evidence, np.float64) - float(own.log_evidence))
    assert abs(ratio.mean() - 1.0) < K * ratio.std(ddof=1) / np.sqrt(ratio.size)
    # ... and it is biased for p(x) phi(x): far outside the Monte Carlo error
    tv = 0.5 * np.abs(mean - np.exp(np.asarray(exact.log_target))).sum()
    assert tv > 10 * se.sum(), (tv, se.sum())


# ----------------------------------------------------------------------------- prompt, cache
class CachedMarkov:
    """The toy generator with a carried cache ``(count, token)``: the number of tokens
    processed and the newest token at the previous call, as a key/value cache would carry.
    The logits are NaN (killing the particle) unless the cache followed its own sequence
    through the resampling steps."""

    def __call__(self, tokens, length, cache):
        count, previous = cache
        consistent = (count == length - 1) & (previous == tokens[jnp.maximum(length - 2, 0)])
        newest = tokens[length - 1]
        logits = GEN.transition_logits[newest]
        return jnp.where(consistent, logits, jnp.nan), (length, newest)


@pytest.mark.slow
def test_prompt_and_cache():
    prompt = jnp.array([1, 0], jnp.int32)
    cache = (jnp.int32(1), jnp.int32(1))  # one token processed, the prompt's first
    res = pk.steering.smc(
        jax.random.key(3), CachedMarkov(), COUNT_A, num_particles=32, max_length=3, eos_id=EOS,
        prompt=prompt, init_cache=cache, ess_threshold=1.0,
    )  # fmt: skip
    assert res.sequences.shape == (32, 5)
    np.testing.assert_array_equal(res.sequences[:, :2], np.tile([1, 0], (32, 1)))
    # the cache followed each sequence through resampling (else NaN logits, counted here)
    assert int(res.num_nonfinite.sum()) == 0 and bool(jnp.all(res.resampled))
    assert np.all(np.asarray(res.lengths) > 2) and not bool(res.failed)
    seqs, lengths = np.asarray(res.sequences), np.asarray(res.lengths)
    num_a = np.sum((seqs == 0) & (np.arange(5) < lengths[:, None]), axis=-1)
    np.testing.assert_allclose(res.log_potentials, num_a)
    # log G_0 = log phi(prompt) = 1 (one a in the prompt)
    assert float(res.log_evidence) > 1.0


# ----------------------------------------------------------------------------- particle Gibbs
@pytest.mark.slow
def test_particle_gibbs_matches_enumeration(exact):
    start = (jnp.array([2, 2, 2, 2], jnp.int32), jnp.int32(4))  # an unlikely start

    run = jax.jit(
        lambda key: pk.steering.particle_gibbs(
            key, GEN, COUNT_A, num_particles=8, num_iterations=60, max_length=T, eos_id=EOS,
            reference=start,
        )
    )  # fmt: skip
    chains = _stack([run(k) for k in jax.random.split(jax.random.key(7), 64)])
    assert not np.any(chains.failed)
    assert 0.3 < float(chains.changed.mean()) < 1.0
    np.testing.assert_array_equal(chains.initial_sequence, np.tile([2, 2, 2, 2], (64, 1)))
    # independent chains after burn-in: chain means are i.i.d., so their spread is the SE
    _assert_matches(exact, _frequencies(exact, chains.sequences[:, 10:]), min_prob=0.02)


def test_particle_gibbs_default_reference_and_prompt():
    chain = pk.steering.particle_gibbs(
        jax.random.key(1), GEN, COUNT_A, num_particles=4, num_iterations=5, max_length=2,
        eos_id=EOS, prompt=[0],
    )  # fmt: skip
    seqs, lengths = np.asarray(chain.sequences), np.asarray(chain.lengths)
    assert seqs.shape == (5, 3) and chain.ess.shape == (5, 2) and not bool(chain.failed)
    assert np.all(seqs[:, 0] == 0) and np.all((lengths >= 2) & (lengths <= 3))
    assert chain.initial_sequence.shape == (3,) and int(chain.initial_sequence[0]) == 0
    num_a = np.sum((seqs == 0) & (np.arange(3) < lengths[:, None]), axis=-1)
    np.testing.assert_allclose(chain.log_potentials, num_a)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_particles=0), "num_particles"),
        (dict(num_particles=2.5), "num_particles"),
        (dict(max_length=0), "max_length"),
        (dict(eos_id=4), "eos_id"),
        (dict(variant="greedy"), "variant"),
        (dict(prompt=jnp.zeros((2, 2), jnp.int32)), "prompt"),
        (dict(prompt=jnp.array([7])), "prompt"),
        (dict(ess_threshold=1.5), "ess_threshold"),
        (dict(step_fn=lambda t, n: jnp.zeros((2, 4))), "logits"),
        (dict(reward_fn=lambda t, n: jnp.zeros(3)), "scalar"),
        (dict(resampling="nope"), "scheme"),
    ],
)
def test_invalid_arguments_raise_before_tracing(kwargs, match):
    args = dict(step_fn=GEN, reward_fn=COUNT_A)
    args.update({k: kwargs.pop(k) for k in ("step_fn", "reward_fn") if k in kwargs})
    config = dict(num_particles=8, max_length=T, eos_id=EOS) | kwargs
    with pytest.raises(ValueError, match=match):
        pk.steering.smc(jax.random.key(0), args["step_fn"], args["reward_fn"], **config)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_particles=1), "num_particles"),
        (dict(num_iterations=0), "num_iterations"),
        (dict(reference=(jnp.zeros(3, jnp.int32), 2)), "reference"),
        (dict(reference=(jnp.zeros(4, jnp.int32), 0)), "reference length"),
        (dict(resampling="ssp"), "conditional"),
    ],
)
def test_particle_gibbs_invalid_arguments(kwargs, match):
    config = dict(num_particles=8, num_iterations=5, max_length=T, eos_id=EOS) | kwargs
    with pytest.raises(ValueError, match=match):
        pk.steering.particle_gibbs(jax.random.key(0), GEN, COUNT_A, **config)


@pytest.mark.parametrize("bad", [2.5, True, "3"])
def test_particle_gibbs_non_integer_num_iterations(bad):
    config = dict(num_particles=4, num_iterations=bad, max_length=2, eos_id=EOS)
    with pytest.raises(ValueError, match="num_iterations must be a positive integer"):
        pk.steering.particle_gibbs(jax.random.key(0), GEN, COUNT_A, **config)


def test_particle_gibbs_accepts_any_integral_num_iterations():
    """num_iterations=np.int64(3) used to be rejected although the other entry points
    (pk.run, the filters, pgibbs) accept any integral type."""
    for n in (np.int64(3), np.int32(3)):
        chain = pk.steering.particle_gibbs(jax.random.key(1), GEN, COUNT_A, num_particles=4,
                                           num_iterations=n, max_length=2, eos_id=EOS)  # fmt: skip
        assert chain.sequences.shape[0] == 3


def test_enumeration_refuses_huge_support():
    with pytest.raises(ValueError, match="max_sequences"):
        pk.steering.enumerate_sequences(GEN, max_length=20, eos_id=EOS)
