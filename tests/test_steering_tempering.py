"""Particle Gibbs with the softmax weighting (Puri et al. 2025, Algorithm 2) and parallel
tempering of particle Gibbs chains (Algorithm 3) against exact enumeration.

The toy generator (letters 0, 1, 2, end token 3, at most 4 tokens: 121 sequences) makes
every target enumerable: ``p(x) phi(x)^beta / Z_beta`` for each temperature of parallel
tempering (the enumeration of the reward scaled by ``beta``), and the softmax variant's own
target ``p(x) prod_t phi(x_{1:min(t,|x|)}) / Z'``. Tolerances are ``K`` standard errors of
the per-chain sequence frequencies over independent chains (a ``vmap`` over seeds).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_steering import COUNT_A, EOS, GEN, K, T, _assert_matches, _frequencies, reward

import particlekit as pk
from particlekit.steering.sequences import SequenceState
from particlekit.steering.tempering import _swap

CHAINS = 64
A_WEIGHT = 1.5
TEMPERATURES = (1.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def exact():
    return pk.steering.enumerate_sequences(GEN, COUNT_A, max_length=T, eos_id=EOS)


def _tempered_targets(a_weight=A_WEIGHT, temperatures=TEMPERATURES):
    """The enumeration of ``p(x) phi(x)^beta`` for each temperature (``log phi`` linear in
    the weight of the reward, so scaling the weight scales ``log phi``)."""
    return [
        pk.steering.enumerate_sequences(GEN, reward(a_weight / t), max_length=T, eos_id=EOS)
        for t in temperatures
    ]


def _chains(run, seed):
    return run(jax.random.split(jax.random.key(seed), CHAINS))


# ----------------------------------------------------------------------------- particle Gibbs
def test_softmax_particle_gibbs_targets_the_softmax_law_not_p_phi(exact):
    """Token level: the softmax chain's frequencies match the enumeration of its own target
    ``p(x) prod_t phi(x_{1:min(t,|x|)})``, and are far (total variation > 10 standard
    errors) from ``p(x) phi(x) / Z``."""
    run = jax.jit(
        jax.vmap(
            lambda key: pk.steering.particle_gibbs(
                key, GEN, COUNT_A, num_particles=4, num_iterations=300, max_length=T,
                eos_id=EOS, variant="softmax",
            )
        )
    )  # fmt: skip
    chains = _chains(run, seed=11)
    assert not np.any(chains.failed)
    assert 0.2 < float(chains.changed.mean()) < 1.0
    own = pk.steering.enumerate_sequences(GEN, COUNT_A, max_length=T, eos_id=EOS, variant="softmax")
    mean, se = _assert_matches(own, _frequencies(own, chains.sequences[:, 30:]))
    tv = 0.5 * np.abs(mean - np.exp(np.asarray(exact.log_target))).sum()
    assert tv > 10 * se.sum(), (tv, se.sum())


def test_particle_gibbs_variant_is_checked():
    with pytest.raises(ValueError, match="variant"):
        pk.steering.particle_gibbs(jax.random.key(0), GEN, COUNT_A, num_particles=4,
                                   num_iterations=2, max_length=T, eos_id=EOS,
                                   variant="greedy")  # fmt: skip


# ----------------------------------------------------------------------------- tempering
def _run_tempering(**kwargs):
    config = dict(num_particles=4, num_iterations=300, temperatures=TEMPERATURES, max_length=T,
                  eos_id=EOS) | kwargs  # fmt: skip
    return jax.jit(
        jax.vmap(lambda key: pk.steering.parallel_tempering(key, GEN, reward(A_WEIGHT), **config))
    )


def _assert_chains_match(chains, burn_in=30):
    """Chain ``j`` of every run matches ``p(x) phi(x)^{beta_j} / Z_j``."""
    assert not np.any(chains.failed)
    for j, target in enumerate(_tempered_targets()):
        _assert_matches(target, _frequencies(target, chains.sequences[:, j, burn_in:]))
    # log_potentials are untempered: the reward itself at every temperature
    seqs, lengths = chains.sequences, chains.lengths
    num_a = np.sum((seqs == 0) & (np.arange(T) < lengths[..., None]), axis=-1)
    np.testing.assert_allclose(chains.log_potentials, A_WEIGHT * num_a, rtol=1e-5)


def test_parallel_tempering_chains_match_tempered_targets():
    """Token level: the chain at temperature 1 samples ``p(x) phi(x) / Z`` and the chain
    at temperature ``t`` samples ``p(x) phi(x)^{1/t} / Z_t``; neighbours swap sometimes,
    not always."""
    chains = _chains(_run_tempering(), seed=5)
    assert chains.sequences.shape == (CHAINS, 3, 300, T)
    assert chains.ess.shape == (CHAINS, 3, 300, T) and chains.swapped.shape == (CHAINS, 300, 2)
    _assert_chains_match(chains)
    rates = np.asarray(chains.swap_acceptance).mean(0)
    assert np.all((rates > 0.05) & (rates < 0.95)), rates
    swapped = np.asarray(chains.swapped)  # pair (0, 1) after even iterations, (1, 2) odd
    assert not np.any(swapped[:, 1::2, 0]) and not np.any(swapped[:, 0::2, 1])
    # the hot chains move more often than the cold one
    moves = np.asarray(chains.changed).mean((0, 2))
    assert moves[0] < moves[1] < moves[2], moves


@pytest.mark.slow
def test_parallel_tempering_step_level_matches_tempered_targets():
    """Step level (token 1 ends a step, swaps every 3 iterations): every sequence finishes
    within ``T`` steps, so the targets are those of the token level."""
    run = _run_tempering(separator_id=1, max_steps=T, swap_every=3, num_iterations=450)
    chains = _chains(run, seed=6)
    assert chains.ess.shape == (CHAINS, 3, 450, T)
    _assert_chains_match(chains)
    attempts = (np.arange(450) + 1) % 3 == 0
    assert not np.any(np.asarray(chains.swapped)[:, ~attempts])
    rates = np.asarray(chains.swap_acceptance).mean(0)
    assert np.all((rates > 0.05) & (rates < 0.95)), rates


def test_swap_schedule_traced_ladder_and_prompt():
    """With a flat reward every proposed swap is accepted (ratio 1), so ``swapped`` is the
    schedule itself: every ``swap_every``-th iteration, even pairs first, then odd. The
    temperatures may be traced (one compilation for several ladders)."""

    @jax.jit
    def ladder(temperatures):
        return pk.steering.parallel_tempering(
            jax.random.key(0), GEN, reward(0.0), num_particles=3, num_iterations=8,
            temperatures=temperatures, max_length=3, eos_id=EOS, swap_every=2, prompt=[0],
        )  # fmt: skip

    pt = ladder(jnp.array([1.0, 2.0, 4.0, 8.0]))
    expected = np.zeros((8, 3), bool)
    expected[[1, 5]] = [True, False, True]  # even pairs (0, 1), (2, 3)
    expected[[3, 7]] = [False, True, False]  # odd pair (1, 2)
    np.testing.assert_array_equal(pt.swapped, expected)
    np.testing.assert_array_equal(pt.swap_acceptance, np.ones(3))
    np.testing.assert_allclose(pt.temperatures, [1.0, 2.0, 4.0, 8.0])
    assert pt.sequences.shape == (4, 8, 4) and pt.initial_sequences.shape == (4, 4)
    assert np.all(np.asarray(pt.sequences)[..., 0] == 0) and not bool(pt.failed)
    # the starting references' lengths: the prompt and 1 to 3 new tokens, the end token
    # last unless truncated, padded with the end token after it
    initial, lengths = np.asarray(pt.initial_sequences), np.asarray(pt.initial_lengths)
    assert lengths.shape == (4,) and np.all((lengths >= 2) & (lengths <= 4))
    assert np.all(initial[:, 0] == 0)
    for tokens, n in zip(initial, lengths, strict=True):
        assert np.all(tokens[n:] == EOS) and np.all(tokens[1 : n - 1] != EOS)
        assert n == 4 or tokens[n - 1] == EOS


def test_swap_move_metropolis_probability():
    """The exchange of references ``j, j + 1`` is accepted with probability
    ``min(1, exp((beta_j - beta_{j+1}) (log phi(x_{j+1}) - log phi(x_j))))`` and moves the
    references (and their potentials) together; a zero-potential partner is refused."""
    betas = jnp.array([1.0, 0.5, 0.25, 0.125])
    log_phi = jnp.array([0.0, 1.0, -2.0, -jnp.inf])
    refs = SequenceState(
        tokens=jnp.arange(4, dtype=jnp.int32)[:, None] * jnp.ones((1, 3), jnp.int32),
        length=jnp.arange(4, dtype=jnp.int32),
        finished=jnp.ones(4, bool),
        log_potential=log_phi,
        cache=(),
    )

    @jax.jit
    @partial(jax.vmap, in_axes=(0, None))
    def swap(key, parity):
        return _swap(key, refs, betas, parity, jnp.asarray(True))

    log_alpha = np.asarray((betas[:-1] - betas[1:]) * (log_phi[1:] - log_phi[:-1]))
    alpha_all = np.minimum(1.0, np.exp(log_alpha))
    np.testing.assert_allclose(alpha_all, [1.0, np.exp(-0.75), 0.0])  # (2, 3): phi(x_3) = 0
    keys = jax.random.split(jax.random.key(3), 20_000)
    for parity in (0, 1):
        moved, attempted, accepted = swap(keys, parity)
        pairs = np.arange(3) % 2 == parity
        assert np.all(np.asarray(attempted) == pairs)
        alpha = np.where(pairs, alpha_all, 0.0)
        rate = np.asarray(accepted).mean(0)
        se = np.sqrt(alpha * (1 - alpha) / keys.shape[0]) + 1e-9
        assert np.all(np.abs(rate - alpha) < K * se), (rate, alpha)
        # references follow the permutation, with their lengths and potentials
        tokens = np.asarray(moved.tokens)[:, :, 0]
        np.testing.assert_array_equal(tokens, np.asarray(moved.length))
        np.testing.assert_array_equal(np.asarray(moved.log_potential), log_phi[tokens])
        assert np.all(np.sort(tokens, axis=1) == np.arange(4))
    # one temperature: no pair
    one = jax.tree.map(lambda leaf: leaf[:1], refs)
    moved, attempted, accepted = _swap(keys[0], one, betas[:1], 0, jnp.asarray(True))
    assert attempted.shape == accepted.shape == (0,)
    np.testing.assert_array_equal(moved.tokens, one.tokens)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperatures=[]), "temperatures"),
        (dict(temperatures=1.0), "temperatures"),
        (dict(temperatures=[[1.0, 2.0]]), "temperatures"),
        (dict(temperatures=[1.0, 0.0]), "temperatures"),
        (dict(temperatures=[1.0, -2.0]), "temperatures"),
        (dict(temperatures=[1.0, np.inf]), "temperatures"),
        (dict(temperatures=[1.0, np.nan]), "temperatures"),
        (dict(temperatures=["hot"]), "temperatures"),
        (dict(num_particles=1), "num_particles >= 2"),
        (dict(num_iterations=0), "num_iterations"),
        (dict(num_iterations=2.5), "num_iterations"),
        (dict(swap_every=0), "swap_every"),
        (dict(swap_every=6), "swap_every"),
        (dict(swap_every=1.5), "swap_every"),
        (dict(ess_threshold=2.0), "ess_threshold"),
        (dict(resampling="ssp"), "conditional"),
        (dict(eos_id=7), "eos_id"),
        (dict(max_steps=3), "separator_id"),
    ],
)
def test_parallel_tempering_invalid_arguments(kwargs, match):
    config = dict(num_particles=4, num_iterations=5, temperatures=[1.0, 2.0], max_length=T,
                  eos_id=EOS) | kwargs  # fmt: skip
    with pytest.raises(ValueError, match=match):
        pk.steering.parallel_tempering(jax.random.key(0), GEN, COUNT_A, **config)
