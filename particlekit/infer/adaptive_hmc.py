"""HMC within tempered SMC, tuned from the population at every stage (the default move).

Each stage's move leaves ``pi_lambda`` invariant and is tuned, without user input, from
the weighted particles and from the particles' own trajectories (Buchholz, Chopin & Jacob
2021, "Adaptive tuning of Hamiltonian Monte Carlo within sequential Monte Carlo"):

- **mass matrix**: the inverse mass matrix is the weighted particle covariance ``Sigma``
  (dense for ``D <=`` ``DENSE_MAX_DIM``, else its diagonal), so the preconditioned
  target is close to isotropic with unit scales;
- **step size** ``eps``: after every MCMC step, ``log eps += 0.5 log(a / a_target)``
  (damped to ``[-0.5, 0.25]``), ``a`` the population's mean acceptance probability; carried
  over to the next stage, where the new ``Sigma`` has absorbed the change of scale;
- **trajectory length** ``T = eps L``: each particle integrates for a jittered time
  ``u_i T``, ``u_i ~ U(0.5, 1.5)`` (jittering also avoids periodic trajectories). The
  expected squared jump ``s_i = alpha_i |Sigma^{-1/2}(x_i' - x_i)|^2`` (acceptance
  probability times the squared proposed jump, standardised coordinates) of the particles
  with ``u_i > 1`` and ``u_i < 1`` gives the local slope ``beta = d log ESJD / d log t``.
  The ESJD per gradient evaluation, ``ESJD / t``, is largest where ``beta = 1``, so
  ``log T += clip(beta - 1, -1, 1) / 2`` after every step: trajectories grow while
  the jump still grows faster than their cost (``beta ~ 2``, ballistic) and shrink once
  they fold back (``beta < 1``). On a standard Gaussian this settles near ``T ~ 2.3``;
- **number of steps** per stage: steps continue until the population has moved, i.e. the
  correlation, across particles, between each coordinate (and the tempered log-density)
  at the start of the stage and now is at most ``max_correlation`` (computed on
  ``tanh``-squashed standardised values, so robust to heavy tails; never below the noise
  level of ``correlation_thresholds``), or a cap is hit. A large negative correlation
  (a trajectory that swings to the other side of the mode) counts as moved. The
  final correlation is reported per stage, so a capped stage that did not decorrelate is
  visible (and warned about by ``particlekit.infer.SMC``).

The choice of a dense mass matrix below ``DENSE_MAX_DIM`` dimensions: a dense ``D x D``
leapfrog product costs less than one evaluation of a typical model's gradient there, and
the covariance of ``N >= 20 D`` particles is estimated well enough (its eigenvalues are
within a few tens of percent) to precondition correlated posteriors (regressions with
correlated predictors, hierarchical models). Above it, the dense estimate is too noisy for
the default ``N = 1000`` and the product too costly, so the diagonal is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp

__all__ = [
    "DENSE_MAX_DIM",
    "HMCTuning",
    "initial_tuning",
    "inverse_mass_matrix",
    "mutate_hmc",
    "population_correlation",
    "column_correlations",
    "correlation_thresholds",
]

DENSE_MAX_DIM = 50
JITTER = (0.5, 1.5)  # range of the trajectory-length multiplier u_i
TARGET_ACCEPTANCE = 0.8


class HMCTuning(NamedTuple):
    """Tuning carried from stage to stage: ``log eps`` and ``log T`` (scalars)."""

    log_step_size: jax.Array
    log_trajectory_length: jax.Array


def initial_tuning(dim: int, dtype=jnp.float32) -> HMCTuning:
    """``eps = D^{-1/4}`` (the usual HMC scaling) and ``T = 1`` in standardised units."""
    return HMCTuning(jnp.asarray(-0.25 * math.log(dim), dtype), jnp.asarray(0.0, dtype))


def inverse_mass_matrix(cov: jax.Array, num_particles: int) -> jax.Array:
    """The inverse mass matrix from the weighted covariance ``(D, D)``: dense when
    ``D <= DENSE_MAX_DIM`` and ``N >= 20 D``, else the diagonal ``(D,)``."""
    dim = cov.shape[0]
    if dim <= DENSE_MAX_DIM and num_particles >= 20 * dim:
        return cov
    return jnp.diag(cov)


def _squash(x: jax.Array, centre: jax.Array, scale: jax.Array) -> jax.Array:
    """``tanh((x - centre) / scale)``: bounded, so that a few far-out particles cannot
    dominate a correlation."""
    return jnp.tanh((x - centre) / scale)


def column_correlations(start: jax.Array, now: jax.Array) -> jax.Array:
    """Correlations ``(K,)`` across particles between the columns of ``start`` and ``now``
    (both ``(N, K)``), computed on the values squashed by ``tanh`` after standardising both
    with the start's mean and sd. The squashing makes them robust to heavy tails (as a rank
    correlation, at the cost of a mean instead of a sort): a few far-out particles cannot
    hold a correlation up once the bulk of the population has moved. Columns constant at
    the start count as decorrelated (0)."""
    centre = jnp.mean(start, axis=0)
    sd = jnp.std(start, axis=0)
    tiny = jnp.finfo(start.dtype).tiny
    scale = jnp.maximum(sd, tiny)
    a = _squash(start, centre, scale)
    b = _squash(now, centre, scale)
    a = a - jnp.mean(a, axis=0)
    b = b - jnp.mean(b, axis=0)
    norm = jnp.sqrt(jnp.mean(a**2, axis=0) * jnp.mean(b**2, axis=0))
    rho = jnp.where((sd > tiny) & (norm > tiny), jnp.mean(a * b, axis=0) / norm, 0.0)
    return jnp.nan_to_num(rho)


def population_correlation(start: jax.Array, now: jax.Array) -> jax.Array:
    """The largest of ``column_correlations``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1000, 2))
    >>> round(float(population_correlation(x, x)), 4)
    1.0
    """
    return jnp.max(column_correlations(start, now))


def correlation_thresholds(num_particles: int, dim: int, max_correlation: float):
    """Thresholds ``(D + 1,)`` of the stopping rule, for the ``D`` coordinates and the
    log-density. A correlation estimated from ``N`` particles has a sampling sd of about
    ``1 / sqrt(N)``, so the largest of ``D`` independent ones exceeds ``z_{1 - 0.05 / D} /
    sqrt(N)`` only 5 % of the time (0.10 for ``D = 100``, ``N = 1000``): the coordinates'
    threshold is ``max(max_correlation, z_{1 - 0.05 / D} / sqrt(N))`` so that noise alone
    cannot keep the move running, and the log-density's is ``max(max_correlation,
    z_0.95 / sqrt(N))``. The log-density decorrelates last and sets the accuracy of the
    next stage's reweighting (hence of the evidence), so it keeps the tight threshold.

    Examples
    --------
    >>> thresholds = correlation_thresholds(1000, 100, 0.05)
    >>> round(float(thresholds[0]), 3), round(float(thresholds[-1]), 3)
    (0.104, 0.052)
    """
    from statistics import NormalDist

    root_n = math.sqrt(num_particles)
    coordinates = max(max_correlation, NormalDist().inv_cdf(1.0 - 0.05 / dim) / root_n)
    log_density = max(max_correlation, NormalDist().inv_cdf(0.95) / root_n)
    return jnp.asarray([coordinates] * dim + [log_density])


def _columns(states) -> jax.Array:
    """Positions ``(N, D)`` and the tempered log-density as the columns followed for the
    correlation criterion."""
    return jnp.concatenate([states.position, states.logdensity[:, None]], axis=1)


class _Loop(NamedTuple):
    k: jax.Array
    states: object
    tuning: HMCTuning
    acc_sum: jax.Array
    correlation: jax.Array
    decorrelated: jax.Array


def _trajectory_change(jump, time, long):
    """``clip(beta - 1, -1, 1) / 2``, ``beta`` the slope of log ESJD against log integration
    time between the particles with long (``u_i > 1``) and short trajectories (equal counts
    in expectation, so sums stand for means); ``+1/2`` while the two times are too close to
    tell (trajectories of one or two leapfrog steps, which should grow)."""
    tiny = jnp.finfo(jump.dtype).tiny

    def log_ratio(x):
        hi, lo = jnp.sum(jnp.where(long, x, 0.0)), jnp.sum(jnp.where(long, 0.0, x))
        return jnp.log(jnp.maximum(hi, tiny) / jnp.maximum(lo, tiny))

    time_ratio = log_ratio(time)
    slope = jnp.where(time_ratio > 0.05, log_ratio(jump) / jnp.maximum(time_ratio, 0.05), 2.0)
    return 0.5 * jnp.clip(jnp.nan_to_num(slope - 1.0), -1.0, 1.0)


def mutate_hmc(
    key,
    positions: jax.Array,
    logdensity_fn: Callable,
    cov: jax.Array,
    tuning: HMCTuning,
    *,
    max_steps: int,
    max_correlation: float,
    max_integration_steps: int,
    target_acceptance: float = TARGET_ACCEPTANCE,
    num_steps: int | None = None,
    num_integration_steps: int | None = None,
):
    """Move the resampled particles ``positions`` ``(N, D)`` with HMC invariant for
    ``logdensity_fn``, tuned as described in the module docstring.

    Parameters
    ----------
    cov : Array, (D, D)
        Weighted particle covariance of the stage (the inverse mass matrix).
    tuning : HMCTuning
        Step size and trajectory length carried from the previous stage.
    max_steps : int
        Cap on the number of MCMC steps.
    max_correlation : float
        Stop once every coordinate's (and the log-density's) correlation with its value at
        the start of the stage is at most this, or the noise level of
        ``correlation_thresholds`` where that is larger.
    max_integration_steps : int
        Cap on the leapfrog steps of one trajectory.
    num_steps : int, optional
        Fixed number of MCMC steps instead of the correlation criterion.
    num_integration_steps : int, optional
        Fixed mean number of leapfrog steps instead of the adapted trajectory length.

    Returns
    -------
    positions : Array, (N, D)
    acceptance : scalar, mean acceptance probability over the stage
    steps : int32 scalar
    tuning : HMCTuning for the next stage
    correlation : scalar, the final largest correlation with the start
    decorrelated : bool scalar, the stopping criterion was met

    Examples
    --------
    Move 500 draws of ``N(0, 1)`` in 2-D with the target ``N(0, I)``:

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (500, 2))
    >>> logdensity = lambda u: -0.5 * jnp.sum(u**2)
    >>> out = mutate_hmc(jax.random.key(1), x, logdensity, jnp.eye(2), initial_tuning(2),
    ...                  max_steps=10, max_correlation=0.1, max_integration_steps=50)
    >>> moved, acceptance, steps, tuning, correlation, decorrelated = out
    >>> bool(acceptance > 0.5), bool(decorrelated), bool(correlation <= 0.1)
    (True, True, True)
    """
    n, dim = positions.shape
    dtype = positions.dtype
    inv_mass = inverse_mass_matrix(cov, n)
    scales = jnp.sqrt(jnp.maximum(jnp.diag(cov), jnp.finfo(dtype).tiny))
    kernel = blackjax.hmc.build_kernel()
    init = jax.vmap(lambda u: blackjax.hmc.init(u, logdensity_fn))
    states = init(positions)
    start = _columns(states)
    thresholds = correlation_thresholds(n, dim, max_correlation).astype(dtype)

    def one_step(key, states, tuning: HMCTuning):
        k_len, k_move = jax.random.split(key)
        step_size = jnp.exp(tuning.log_step_size)
        u = jax.random.uniform(k_len, (n,), dtype, *JITTER)
        if num_integration_steps is None:
            mean_steps = jnp.exp(tuning.log_trajectory_length) / step_size
        else:
            mean_steps = jnp.asarray(num_integration_steps, dtype)
        lengths = jnp.clip(jnp.round(u * mean_steps), 1, max_integration_steps).astype(jnp.int32)

        def move(key, state, length):
            return kernel(key, state, logdensity_fn, step_size, inv_mass, length)

        new, info = jax.vmap(move)(jax.random.split(k_move, n), states, lengths)
        alpha = jnp.nan_to_num(jnp.clip(info.acceptance_rate, 0.0, 1.0))
        proposed = info.proposal.position
        jump = alpha * jnp.sum(((proposed - states.position) / scales) ** 2, axis=1)
        jump = jnp.nan_to_num(jump, posinf=0.0)
        time = step_size * lengths.astype(dtype)
        return new, alpha, _trajectory_change(jump, time, u > 1.0)

    def cond(c: _Loop):
        if num_steps is not None:
            return c.k < num_steps
        return (c.k < 1) | (~c.decorrelated & (c.k < max_steps))

    def body(c: _Loop):
        states, alpha, change = one_step(jax.random.fold_in(key, c.k), c.states, c.tuning)
        rho = column_correlations(start, _columns(states))
        acc = jnp.mean(alpha)
        step = jnp.clip(0.5 * jnp.log((acc + 1e-3) / target_acceptance), -0.5, 0.25)
        log_step_size = jnp.clip(c.tuning.log_step_size + step, -15.0, 5.0)
        # the trajectory cannot usefully grow past the leapfrog cap
        log_cap = jnp.log(max_integration_steps * 1.0) + log_step_size
        log_trajectory = jnp.clip(
            jnp.minimum(c.tuning.log_trajectory_length + change, log_cap), -10.0, 10.0
        )
        return _Loop(
            k=c.k + 1,
            states=states,
            tuning=HMCTuning(log_step_size, log_trajectory),
            acc_sum=c.acc_sum + acc,
            correlation=jnp.max(rho),
            decorrelated=jnp.all(rho <= thresholds),
        )

    out = jax.lax.while_loop(
        cond,
        body,
        _Loop(
            jnp.zeros((), jnp.int32),
            states,
            tuning,
            jnp.zeros((), dtype),
            jnp.ones((), dtype),
            jnp.zeros((), bool),
        ),
    )
    acceptance = out.acc_sum / jnp.maximum(out.k, 1)
    return out.states.position, acceptance, out.k, out.tuning, out.correlation, out.decorrelated
