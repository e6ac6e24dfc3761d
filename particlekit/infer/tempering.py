"""Adaptive tempering: the next inverse temperature by bisection on the conditional ESS.

Between ``pi_{lambda}`` and ``pi_{lambda + delta}`` the incremental weight is the potential
``G(u) = L(u)^delta``. The conditional ESS of Zhou, Johansen & Aston (2016, eq. 3.16),

    CESS(delta) = (sum_i W_i G_i)^2 / sum_i W_i G_i^2     (as a fraction of 1),

decreases in ``delta``; we pick the largest ``delta <= 1 - lambda`` with
``CESS(delta) >= target_ess`` by bisection on ``log delta`` (fixed iteration count, so it
compiles into the surrounding ``lax.while_loop``). With equal weights ``W`` this is the
usual ESS rule of PyMC, BlackJAX and ``particles``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from particlekit import resampling

__all__ = ["conditional_ess", "next_temperature", "safe_log_likelihood"]


def safe_log_likelihood(log_lik: jax.Array) -> jax.Array:
    """Map NaN and ``+inf`` log-likelihoods to ``-inf`` (zero weight at any ``delta > 0``),
    the engine's rule for log-weights."""
    return resampling.sanitize_log_weights(log_lik)


def _tempered_increment(delta, log_lik):
    # delta * (-inf) must be -inf for delta > 0 and 0 for delta = 0.
    return jnp.where(delta > 0, delta * log_lik, 0.0)


def conditional_ess(log_weights: jax.Array, log_lik: jax.Array, delta) -> jax.Array:
    """Conditional ESS fraction in ``[0, 1]`` of the increment ``L^delta``.

    Parameters
    ----------
    log_weights : Array of shape (N,)
        Current (unnormalised) log-weights.
    log_lik : Array of shape (N,)
        Log-likelihood of each particle (``-inf`` allowed).
    delta : scalar
        Temperature increment.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(conditional_ess(jnp.zeros(4), jnp.array([0.0, -1.0, -2.0, -3.0]), 0.0))
    1.0
    """
    value = _conditional_ess(resampling.normalize(log_weights), log_lik, delta)
    return jnp.where(jnp.any(log_weights > -jnp.inf), value, 0.0)  # all weights zero: 0


def _conditional_ess(weights, log_lik, delta):
    """``conditional_ess`` for normalised weights ``W`` (precomputed once per
    bisection), with one ``exp`` per particle: ``h_i = exp(log G_i - max_{j: W_j > 0}
    log G_j)`` gives ``CESS = (sum_i W_i h_i)^2 / sum_i W_i h_i^2``."""
    log_g = _tempered_increment(delta, log_lik)
    log_g = jnp.where(weights > 0, log_g, -jnp.inf)
    top = jnp.max(log_g)
    h = jnp.exp(log_g - jnp.where(jnp.isfinite(top), top, 0.0))
    wh = weights * h
    value = jnp.sum(wh) ** 2 / jnp.sum(wh * h)
    return jnp.where(jnp.isfinite(top) & jnp.isfinite(value), value, 0.0)


def next_temperature(
    log_weights: jax.Array,
    log_lik: jax.Array,
    temperature,
    *,
    target_ess: float = 0.5,
    min_increment: float = 1e-6,
    num_bisections: int = 30,
) -> tuple[jax.Array, jax.Array]:
    """The next inverse temperature ``lambda' in (lambda, 1]``.

    Parameters
    ----------
    log_weights, log_lik : Array of shape (N,)
    temperature : scalar
        Current ``lambda`` in ``[0, 1)``.
    target_ess : float in (0, 1)
        Target conditional ESS fraction.
    min_increment : float
        Guard against a stalled schedule (BlackJAX issue 914): ``delta`` is at least this.
    num_bisections : int
        Bisection iterations on ``log delta`` over ``[log min_increment, log(1 - lambda)]``.

    Returns
    -------
    new_temperature : Array of shape ()
    forced : Array of shape (), bool
        True when the ESS rule asked for less than ``min_increment`` (the guard was used).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> lam, forced = next_temperature(jnp.zeros(4), jnp.array([0.0, -1.0, -2.0, -3.0]), 0.0)
    """
    temperature = jnp.asarray(temperature, log_lik.dtype)
    log_lik = safe_log_likelihood(log_lik)
    max_delta = 1.0 - temperature
    min_delta = jnp.minimum(jnp.asarray(min_increment, log_lik.dtype), max_delta)

    weights = resampling.normalize(log_weights)

    def ok(delta):
        return _conditional_ess(weights, log_lik, delta) >= target_ess

    lo = jnp.log(min_delta)
    hi = jnp.log(max_delta)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        good = ok(jnp.exp(mid))
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_bisections, body, (lo, hi))
    delta = jnp.where(ok(max_delta), max_delta, jnp.exp(lo))
    forced = ~ok(min_delta)
    delta = jnp.clip(delta, min_delta, max_delta)
    # A step that lands within min_increment of 1 (the bisection's float32 rounding can
    # stop it one ulp short) goes to 1: a last stage of a few ulps would cost a whole move.
    new_temperature = jnp.where(
        (delta >= max_delta) | (temperature + delta >= 1.0 - min_delta), 1.0, temperature + delta
    )
    return new_temperature.astype(log_lik.dtype), forced
