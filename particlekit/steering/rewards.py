"""Reward adapters: a reward given as a probability of being right (a process reward
model's score in ``[0, 1]``) turned into the log potential that sequence steering takes."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["ProbabilityReward", "probability_reward"]


class ProbabilityReward(eqx.Module):
    """``reward_fn(tokens, length) = strength * log p(tokens, length)`` for a score ``p``
    that must lie in ``[0, 1]``. A score outside ``[0, 1]`` or NaN gives a NaN log
    potential: the particle gets zero weight and is counted in the result's
    ``num_nonfinite``, never silently clipped."""

    probability_fn: Callable
    strength: jax.Array

    def __call__(self, tokens, length):
        p = jnp.asarray(self.probability_fn(tokens, length))
        valid = (p >= 0.0) & (p <= 1.0)
        log_p = jnp.log(jnp.where(valid, p, 1.0))
        # strength * log(0) is -inf for strength > 0 (zero weight); 0 * -inf would be NaN
        scaled = jnp.where(log_p == -jnp.inf, -jnp.inf, self.strength * log_p)
        return jnp.where(valid, scaled, jnp.nan)


def probability_reward(probability_fn, strength: float = 1.0) -> ProbabilityReward:
    """A ``reward_fn`` for ``particlekit.steering.smc`` from a score in ``[0, 1]``:
    ``phi = p ** strength`` (``strength`` is the tilt ``lambda``, or ``1 / temperature``).

    Parameters
    ----------
    probability_fn : callable
        ``probability_fn(tokens, length) -> p`` (a scalar in ``[0, 1]``) for one sequence.
    strength : float
        ``> 0``.

    Raises
    ------
    ValueError
        For a non-callable ``probability_fn`` or a ``strength`` that is not a positive
        finite number.

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> reward = pk.steering.probability_reward(lambda tokens, length: 0.5 * length)
    >>> [float(reward(jnp.zeros(3, jnp.int32), n)) for n in (0, 1, 2, 3)]
    [-inf, -0.6931471824645996, 0.0, nan]
    """
    if not callable(probability_fn):
        raise ValueError(f"probability_fn must be callable (tokens, length) -> p, got "
                         f"{probability_fn!r}")  # fmt: skip
    value = float(strength)
    if not (value > 0 and jnp.isfinite(value)):
        raise ValueError(f"strength must be a positive finite number, got {strength!r}")
    return ProbabilityReward(probability_fn, jnp.asarray(value, jnp.float32))
