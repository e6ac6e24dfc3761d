"""A learned process reward model (PRM) as a reward function of sequence steering.

The PRM is a causal transformer read token by token: its output row ``t - 1`` holds, for
every candidate token ``v``, the logit ``q_t(v)`` of "token ``t`` is right, given that
``tokens[:t]`` is right". The probability that a prefix is right so far is the product of
these verdicts over the generated tokens,

    P(tokens[:n] right) = prod_{t = start}^{n - 1} sigmoid(q_t(tokens[t])),

so that one forward pass scores every prefix, a wrong token lowers the score of every
longer prefix, and each verdict only has to judge one new token.
"""

from __future__ import annotations

import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from particlekit.lm.transformer import Transformer

__all__ = ["ProcessRewardModel"]


class ProcessRewardModel(eqx.Module):
    """A learned PRM; called as a ``reward_fn`` of ``particlekit.steering.smc``:
    ``prm(tokens, length) -> strength * log P(tokens[:length] right)``.

    Parameters
    ----------
    model : Transformer
        With ``output_size`` equal to its vocabulary (the shape of a language model).
    start : int
        The first position judged (the prompt length): the prompt is taken as right.
    strength : float
        The tilt ``lambda > 0`` (finite): the potential is ``P(right) ** lambda`` (a traced
        value).

    Raises
    ------
    ValueError
        For a model whose ``output_size`` is not its vocabulary, a ``start`` that is not an
        integer in ``[1, context_length]``, or a ``strength`` that is not a positive finite
        number.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from particlekit.lm.transformer import TransformerConfig
    >>> cfg = TransformerConfig(vocab_size=4, context_length=8, d_model=8, num_heads=2,
    ...                         num_layers=1)
    >>> prm = ProcessRewardModel(Transformer(cfg, jax.random.key(0)), start=2)
    >>> p = prm.probability(jnp.array([0, 1, 2, 3, 3]), 4)   # judges tokens 2 and 3
    >>> p.shape, bool(0 < p < 1), float(prm.probability(jnp.array([0, 1, 2]), 2))
    ((), True, 1.0)
    """

    model: Transformer
    strength: jax.Array
    start: int = eqx.field(static=True)

    def __init__(self, model: Transformer, start: int, strength: float = 1.0):
        cfg = model.config
        if cfg.output_size not in (None, cfg.vocab_size):
            raise ValueError(
                f"the PRM scores every candidate token: output_size must be the vocabulary "
                f"size {cfg.vocab_size}, got {cfg.output_size}"
            )
        if (
            isinstance(start, bool)
            or not isinstance(start, numbers.Integral)
            or not 1 <= int(start) <= cfg.context_length
        ):
            raise ValueError(
                f"start must be an integer in [1, {cfg.context_length}], got {start!r}"
            )
        if not isinstance(strength, jax.core.Tracer):
            # NaN would give every particle zero weight, a negative value would favour the
            # prefixes the PRM judges wrong, inf would make every imperfect prefix -inf
            arr = None if isinstance(strength, str | bytes) else np.asarray(strength)
            if (
                arr is None
                or arr.ndim != 0
                or arr.dtype.kind not in "iuf"
                or not 0 < float(arr) < math.inf
            ):
                raise ValueError(f"strength must be a positive finite number, got {strength!r}")
        self.model = model
        self.strength = jnp.asarray(strength, jnp.float32)
        self.start = int(start)

    def token_logits(self, tokens) -> jax.Array:
        """The verdicts on every token of ``tokens (L,)``: ``(L,)``, entry ``t`` the logit
        that token ``t`` is right given ``tokens[:t]`` (entry 0, with no context, is
        ``+inf``)."""
        tokens = _check_tokens(tokens)
        out = self.model(tokens)
        q = jnp.take_along_axis(out[:-1], tokens[1:, None], axis=-1)[:, 0]
        return jnp.concatenate([jnp.full((1,), jnp.inf, out.dtype), q])[: tokens.shape[0]]

    def log_probability(self, tokens, length) -> jax.Array:
        """``log P(tokens[:length] right)`` (a scalar): the sum of ``log sigmoid`` of the
        verdicts on positions ``start, ..., length - 1``. The entries from ``length`` on
        are ignored, whatever they hold (the model is causal)."""
        tokens = _check_tokens(tokens)
        length = _check_length(length)
        # the positions past the prefix never reach a judged verdict: read them as id 0,
        # so that padding outside the vocabulary there (e.g. -1) is not an error
        tokens = jnp.where(jnp.arange(tokens.shape[0]) < length, tokens, 0)
        q = self.token_logits(tokens)
        t = jnp.arange(q.shape[0])
        judged = (t >= self.start) & (t < length)
        return jnp.sum(jnp.where(judged, jax.nn.log_sigmoid(q), 0.0))

    def probability(self, tokens, length) -> jax.Array:
        """``P(tokens[:length] right)`` (a scalar in ``[0, 1]``)."""
        return jnp.exp(self.log_probability(tokens, length))

    def __call__(self, tokens, length) -> jax.Array:
        """``strength * log P(tokens[:length] right)``: the steering reward; NaN (zero
        weight, counted in ``num_nonfinite`` by ``particlekit.steering.smc``) when the
        prefix holds a token id outside the PRM's vocabulary, e.g. from a generator with
        a larger one; the entries from ``length`` on are ignored, whatever they hold. A
        buffer longer than the PRM's context, a buffer that is not 1-D integer ids, or a
        ``length`` that is not an integer scalar is a ``ValueError``."""
        tokens = _check_tokens(tokens)
        length = _check_length(length)
        cfg = self.model.config
        if tokens.shape[0] > cfg.context_length:  # static: raised when smc checks
            raise ValueError(
                f"the PRM reads at most {cfg.context_length} positions, got a buffer of "
                f"{tokens.shape[0]} (len(prompt) + max_length)"
            )
        t = jnp.arange(tokens.shape[0])
        outside = jnp.any((t < length) & ((tokens < 0) | (tokens >= cfg.vocab_size)))
        value = self.strength * self.log_probability(tokens, length)
        return jnp.where(outside, jnp.nan, value)


def _check_tokens(tokens) -> jax.Array:
    """A 1-D array of integer token ids as int32, else a ``ValueError`` (static: checked
    under ``jit`` too; an empty list is accepted)."""
    arr = tokens if isinstance(tokens, jax.Array) else np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and not jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(
            f"tokens must be a 1-D array of integer token ids, got shape {arr.shape} and "
            f"dtype {arr.dtype}"
        )
    return jnp.asarray(arr, jnp.int32)


def _check_length(length) -> jax.Array:
    """The filled length as an int32 scalar, else a ``ValueError``."""
    arr = length if isinstance(length, jax.Array) else np.asarray(length)
    if arr.ndim != 0 or not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"length must be an integer scalar, got {length!r}")
    return jnp.asarray(arr, jnp.int32)
