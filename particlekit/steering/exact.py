"""Exact steered distributions of small generators by enumeration: every sequence of at
most ``max_length`` tokens, its generator probability ``p(x)``, its potential ``phi(x)``,
the steered law ``p(x) phi(x) / Z`` and ``log Z`` (for tests, examples and sanity checks).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from particlekit.resampling import normalize, sanitize_log_weights
from particlekit.steering.generators import sequence_log_prob
from particlekit.steering.sequences import check_config

__all__ = ["Enumeration", "enumerate_sequences", "sequence_frequencies"]


class Enumeration(NamedTuple):
    """Every sequence a generator can produce within ``max_length`` tokens.

    Attributes
    ----------
    sequences : Array of shape (M, L), int32
        Prompt, generated tokens, padding with the end token (the layout of
        ``particlekit.steering.SteeringResult.sequences``).
    lengths : Array of shape (M,), int32
    log_probs : Array of shape (M,)
        ``log p(x)`` under the generator (sums to one over the ``M`` sequences).
    log_potentials : Array of shape (M,)
        ``log phi(x)`` of the complete sequence (``-inf`` for NaN rewards).
    log_target : Array of shape (M,)
        Normalised log-probabilities of the steered law of the variant: ``"exact"``:
        ``p(x) phi(x) / Z``; ``"softmax"``: ``p(x) prod_t phi(x_{1:min(t,|x|)}) / Z'``.
    log_evidence : Array of shape ()
        ``log Z`` of the variant (what ``particlekit.steering.smc`` estimates):
        ``log E_p[phi(x)]`` for ``"exact"``.
    """

    sequences: jax.Array
    lengths: jax.Array
    log_probs: jax.Array
    log_potentials: jax.Array
    log_target: jax.Array
    log_evidence: jax.Array


def _all_sequences(num_steps, letters, eos_id, prompt, total):
    """All token buffers: ``k < T`` letters then the end token, or ``T`` letters."""
    rows, lengths = [], []
    for k in range(num_steps + 1):
        for body in itertools.product(letters, repeat=k):
            row = [*prompt, *body, *([eos_id] if k < num_steps else [])]
            lengths.append(len(row))
            rows.append(row + [eos_id] * (total - len(row)))
    return np.asarray(rows, np.int32), np.asarray(lengths, np.int32)


@eqx.filter_jit
def _score(step_fn, reward_fn, tokens, lengths, *, start, max_length, variant):
    """``log p(x)``, ``log phi(x)`` and the variant's unnormalised log-target (jitted)."""
    log_probs = jax.vmap(lambda t, n: sequence_log_prob(step_fn, t, n, start))(tokens, lengths)
    log_potentials = sanitize_log_weights(jax.vmap(reward_fn)(tokens, lengths))
    if variant == "exact":
        log_unnorm = log_probs + log_potentials
    else:
        steps = start + jnp.arange(max_length + 1)  # the prompt, then after each token

        def accumulated(t, n):
            prefix = jax.vmap(lambda s: reward_fn(t, jnp.minimum(s, n)))(steps)
            return jnp.sum(sanitize_log_weights(prefix))

        log_unnorm = log_probs + jax.vmap(accumulated)(tokens, lengths)
    return log_probs, log_potentials, sanitize_log_weights(log_unnorm)


def enumerate_sequences(
    step_fn,
    reward_fn=None,
    *,
    max_length: int,
    eos_id: int,
    prompt=None,
    variant: str = "exact",
    max_sequences: int = 200_000,
) -> Enumeration:
    """Enumerate the steered distribution of a small generator exactly.

    The sequences are all strings of ``k < max_length`` non-end tokens followed by the end
    token, and all strings of ``max_length`` non-end tokens (truncated): with ``K`` letters,
    ``sum_{k<T} K^k + K^T`` of them.

    Parameters
    ----------
    step_fn, reward_fn : callable
        As in ``particlekit.steering.smc`` (``reward_fn=None``: ``phi = 1``).
    max_length, eos_id, prompt, variant
        As in ``particlekit.steering.smc``.
    max_sequences : int
        Refuse (ValueError) to enumerate more sequences than this.

    Returns
    -------
    Enumeration

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()
    >>> exact = pk.steering.enumerate_sequences(gen, max_length=4, eos_id=3)
    >>> exact.sequences.shape, round(float(jnp.exp(exact.log_probs).sum()), 4)
    ((121, 4), 1.0)
    """
    if reward_fn is None:

        def reward_fn(tokens, length):
            return jnp.zeros(())

    config, prompt = check_config(
        step_fn,
        reward_fn,
        num_particles=1,
        max_length=max_length,
        eos_id=eos_id,
        prompt=prompt,
        init_cache=None,
        variant=variant,
    )
    letters = [v for v in range(config.vocab_size) if v != config.eos_id]
    k = len(letters)
    count = sum(k**i for i in range(max_length)) + k**max_length
    if count > max_sequences:
        raise ValueError(
            f"enumerating {count} sequences exceeds max_sequences={max_sequences}; use a "
            "smaller vocabulary or max_length"
        )
    rows, lengths = _all_sequences(
        max_length, letters, config.eos_id, np.asarray(prompt).tolist(), config.total_length
    )
    tokens, lengths = jnp.asarray(rows), jnp.asarray(lengths)
    log_probs, log_potentials, log_unnorm = _score(
        step_fn,
        reward_fn,
        tokens,
        lengths,
        start=config.prompt_length,
        max_length=int(max_length),
        variant=variant,
    )
    log_evidence = logsumexp(log_unnorm)
    return Enumeration(
        sequences=tokens,
        lengths=lengths,
        log_probs=log_probs,
        log_potentials=log_potentials,
        log_target=jnp.log(normalize(log_unnorm)),
        log_evidence=log_evidence,
    )


def sequence_frequencies(enumeration: Enumeration, sequences, log_weights=None) -> jax.Array:
    """Weighted frequencies of ``sequences (N, L)`` over the enumerated support.

    Parameters
    ----------
    enumeration : Enumeration
    sequences : Array of shape (N, L)
        E.g. ``SteeringResult.sequences`` or the chain of ``particle_gibbs``.
    log_weights : Array of shape (N,), optional
        Unnormalised log-weights (equal weights if omitted).

    Returns
    -------
    Array, shape (M,)
        Probability of each enumerated sequence under the weighted sample.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> gen = pk.steering.toy_generator()
    >>> exact = pk.steering.enumerate_sequences(gen, max_length=2, eos_id=3)
    >>> freq = pk.steering.sequence_frequencies(exact, exact.sequences[:2])
    >>> freq[:3].tolist()
    [0.5, 0.5, 0.0]
    """
    sequences = jnp.asarray(sequences)
    if sequences.ndim != 2 or sequences.shape[1] != enumeration.sequences.shape[1]:
        raise ValueError(
            f"sequences must have shape (N, {enumeration.sequences.shape[1]}), got "
            f"{sequences.shape}"
        )
    n = sequences.shape[0]
    if log_weights is not None and jnp.shape(log_weights) != (n,):
        raise ValueError(
            f"log_weights must have shape ({n},), one per sequence, got {jnp.shape(log_weights)}"
        )
    weights = jnp.full((n,), 1.0 / n) if log_weights is None else normalize(log_weights)
    match = jnp.all(sequences[:, None, :] == enumeration.sequences[None, :, :], axis=-1)
    return weights @ match.astype(weights.dtype)
