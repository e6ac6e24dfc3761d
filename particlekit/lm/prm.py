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
        if not isinstance(strength, jax.core.Tracer) and not 0 < float(strength) < math.inf:
            # NaN would give every particle zero weight, a negative value would favour the
            # prefixes the PRM judges wrong, inf would make every imperfect prefix -inf
            raise ValueError(f"strength must be a positive finite number, got {strength!r}")
        self.model = model
        self.strength = jnp.asarray(strength, jnp.float32)
        self.start = int(start)

    def token_logits(self, tokens) -> jax.Array:
        """The verdicts on every token of ``tokens (L,)``: ``(L,)``, entry ``t`` the logit
        that token ``t`` is right given ``tokens[:t]`` (entry 0, with no context, is
        ``+inf``)."""
        tokens = jnp.asarray(tokens, jnp.int32)
        out = self.model(tokens)
        q = jnp.take_along_axis(out[:-1], tokens[1:, None], axis=-1)[:, 0]
        return jnp.concatenate([jnp.full((1,), jnp.inf, q.dtype), q])

    def log_probability(self, tokens, length) -> jax.Array:
        """``log P(tokens[:length] right)`` (a scalar): the sum of ``log sigmoid`` of the
        verdicts on positions ``start, ..., length - 1``."""
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
        a larger one. A buffer longer than the PRM's context is a ``ValueError``."""
        tokens = jnp.asarray(tokens, jnp.int32)
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
