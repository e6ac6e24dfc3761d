"""Sequence generators: the step-function protocol and a tiny Markov generator shipped for
tests, examples and sanity checks.

A *step function* is the one thing particle steering needs from an autoregressive model::

    step_fn(tokens, length) -> logits

with ``tokens`` an int32 buffer of shape ``(L,)`` whose first ``length`` entries are the
prefix (prompt included) and whose remaining entries are padding (the end token), and
``logits`` of shape ``(V,)``: the unnormalised log-probabilities of the next token. It acts
on **one** sequence; the library vmaps it over particles. Padding must be ignored (a causal
language model does so by construction when it reads position ``length - 1``).
"""

from __future__ import annotations

import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MarkovGenerator", "markov_generator", "toy_generator", "sequence_log_prob"]


class MarkovGenerator(eqx.Module):
    """A first-order Markov (bigram) generator over ``V`` tokens, one of them the end
    token; itself a step function ``(tokens, length) -> logits``.

    The first generated token is drawn from ``initial`` (or from the transition row of the
    last prompt token when there is a prompt), every later one from the row of the previous
    token. An equinox module: its tables are traced inputs of the jitted samplers, so
    generators of the same size share one compilation.

    Parameters
    ----------
    initial_logits : Array of shape (V,)
        Unnormalised log-probabilities of the first token.
    transition_logits : Array of shape (V, V)
        Row ``a`` holds the unnormalised log-probabilities of the token following ``a``.
    eos_id : int
        The end-of-sequence token.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> gen = toy_generator()
    >>> gen(jnp.array([0, 3, 3, 3]), 1).shape
    (4,)
    """

    initial_logits: jax.Array
    transition_logits: jax.Array
    eos_id: int = eqx.field(static=True)
    vocab_size: int = eqx.field(static=True)

    def __init__(self, initial_logits, transition_logits, *, eos_id: int):
        initial_logits = jnp.asarray(initial_logits, jnp.result_type(float))
        transition_logits = jnp.asarray(transition_logits, jnp.result_type(float))
        v = initial_logits.shape[0] if initial_logits.ndim == 1 else -1
        if initial_logits.ndim != 1 or transition_logits.shape != (v, v):
            raise ValueError(
                "initial_logits must have shape (V,) and transition_logits (V, V); got "
                f"{initial_logits.shape} and {transition_logits.shape}"
            )
        if isinstance(eos_id, bool) or not isinstance(eos_id, numbers.Integral):
            raise ValueError(f"eos_id must be an integer token id, got {eos_id!r}")
        if not 0 <= int(eos_id) < v:
            raise ValueError(f"eos_id must be in [0, {v}), got {eos_id}")
        for name, table in (("initial_logits", initial_logits),
                            ("transition_logits", transition_logits)):  # fmt: skip
            if not isinstance(table, jax.core.Tracer) and bool(
                jnp.any(jnp.isnan(table) | (table == jnp.inf))
            ):
                # NaN / +inf logits are no distribution: steering would silently treat the
                # NaN ones as impossible tokens
                raise ValueError(f"{name} must be finite or -inf (impossible), got {table}")
        self.initial_logits = initial_logits
        self.transition_logits = transition_logits
        self.eos_id = int(eos_id)
        self.vocab_size = int(v)

    def __call__(self, tokens: jax.Array, length: jax.Array) -> jax.Array:
        """Next-token logits ``(V,)`` given the prefix ``tokens[:length]``."""
        last = tokens[jnp.clip(length - 1, 0, tokens.shape[0] - 1)]
        return jnp.where(length > 0, self.transition_logits[last], self.initial_logits)


def markov_generator(initial_probs, transition_probs, *, eos_id: int) -> MarkovGenerator:
    """Build a ``MarkovGenerator`` from probability tables (rows need not be
    normalised; zeros are impossible transitions).

    Parameters
    ----------
    initial_probs : array of shape (V,)
    transition_probs : array of shape (V, V)
    eos_id : int

    Examples
    --------
    >>> gen = markov_generator([0.5, 0.5, 0.0], [[0.2, 0.3, 0.5]] * 3, eos_id=2)
    >>> gen.vocab_size
    3
    """
    initial = np.asarray(initial_probs, dtype=np.float64)
    transition = np.asarray(transition_probs, dtype=np.float64)
    if not (np.all(initial >= 0) and np.all(transition >= 0)):  # NaN fails too
        raise ValueError("probabilities must be non-negative numbers (no NaN)")
    if not (np.all(np.isfinite(initial)) and np.all(np.isfinite(transition))):
        raise ValueError("probabilities must be finite")
    with np.errstate(divide="ignore"):
        return MarkovGenerator(np.log(initial), np.log(transition), eos_id=eos_id)


def toy_generator() -> MarkovGenerator:
    """The shipped toy generator: letters ``a, b, c`` (tokens 0, 1, 2) and the end token 3.

    ``a`` is rare at the start, letters tend to repeat, and the end token has probability
    0.2 to 0.3 after every letter, so sequences of up to 4 tokens carry most of the mass
    and the full distribution over sequences of length ``<= 4`` (121 of them) can be
    enumerated exactly (``particlekit.steering.enumerate_sequences``).

    Examples
    --------
    >>> toy_generator().eos_id
    3
    """
    initial = [0.1, 0.5, 0.4, 0.0]
    transition = [
        [0.4, 0.2, 0.2, 0.2],  # after a
        [0.1, 0.5, 0.2, 0.2],  # after b
        [0.1, 0.2, 0.4, 0.3],  # after c
        [0.0, 0.0, 0.0, 1.0],  # after the end token (never used)
    ]
    return markov_generator(initial, transition, eos_id=3)


def sequence_log_prob(step_fn, tokens: jax.Array, length: jax.Array, start: int = 0):
    """Exact ``log p(tokens[start:length] | tokens[:start])`` of one sequence under a step
    function (the sum of next-token log-probabilities).

    Parameters
    ----------
    step_fn : callable
        ``(tokens, length) -> logits (V,)``.
    tokens : Array of shape (L,)
    length : int or Array
        Number of filled positions (prompt and end token included).
    start : int
        Prompt length: positions before ``start`` are conditioned on, not scored.

    Raises
    ------
    ValueError
        For ``tokens`` that are not 1-D, a concrete ``length`` outside
        ``[0, len(tokens)]``, or (concrete ``tokens`` and ``length``) a token id of
        ``tokens[:length]`` outside the vocabulary ``[0, V)`` of ``step_fn``. Under tracing
        such an id cannot be checked: it has probability 0 (a log-probability of ``-inf``
        when it is scored).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> gen = toy_generator()
    >>> round(float(jnp.exp(sequence_log_prob(gen, jnp.array([1, 3, 3]), 2))), 3)
    0.1
    """
    ids = None if isinstance(tokens, jax.core.Tracer) else np.asarray(tokens)
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array of token ids, got shape {tokens.shape}")
    if not isinstance(length, jax.core.Tracer):
        if not 0 <= int(length) <= tokens.shape[0]:
            # a longer length was silently read as tokens.shape[0]
            raise ValueError(
                f"length must be in [0, {tokens.shape[0]}] (len(tokens)), got {length}"
            )
        if ids is not None:
            _check_token_ids(ids[: int(length)], _vocab_size(step_fn, tokens))
    positions = jnp.arange(tokens.shape[0])

    def term(pos):
        log_p = jax.nn.log_softmax(step_fn(tokens, pos))
        token = tokens[pos]
        # a token outside the vocabulary has probability 0 (indexing clamped it to the last
        # token id, a silently wrong answer)
        inside = (token >= 0) & (token < log_p.shape[-1])
        log_p_token = jnp.where(inside, log_p[jnp.clip(token, 0, log_p.shape[-1] - 1)], -jnp.inf)
        return jnp.where((pos >= start) & (pos < length), log_p_token, 0.0)

    return jnp.sum(jax.vmap(term)(positions))


def _vocab_size(step_fn, tokens: jax.Array) -> int:
    """The size ``V`` of the logits ``step_fn(tokens, length)`` returns (shapes only)."""
    length = jax.ShapeDtypeStruct((), jnp.int32)
    return int(jax.eval_shape(step_fn, tokens, length).shape[-1])


def _check_token_ids(ids: np.ndarray, vocab: int) -> None:
    """A ``ValueError`` unless every token id of ``ids`` is in ``[0, vocab)``, as
    ``smc`` checks its prompt (an id outside the vocabulary is no token of the generator:
    it would silently get probability 0)."""
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token ids must be in [0, {vocab}) (the vocabulary), got {ids.tolist()}")
