"""MCMC rejuvenation moves from BlackJAX, tuned from the particle population.

At each tempering stage the move kernel ``M_t`` must leave ``pi_{lambda_t}`` invariant; we
build it from BlackJAX and tune it with the current weighted particles (Chopin 2002;
Buchholz, Chopin & Jacob 2021):

- ``"rwm"``: Gaussian random walk with covariance ``s^2 Sigma``, ``Sigma`` the weighted
  particle covariance, ``s`` started at ``2.38 / sqrt(D)`` (Roberts & Rosenthal 2001);
- ``"mala"``: step size ``h = s^2 min_j Sigma_jj / 2``;
- ``"hmc"`` / ``"nuts"``: diagonal inverse mass matrix ``diag(Sigma)``, step size ``s``;
- ``"imh"``: independent Metropolis–Hastings (BlackJAX ``irmh``) proposing from the Gaussian
  ``N(mu, Sigma)`` fitted to the weighted particles, as PyMC's default SMC kernel. Each
  accepted move is a fresh draw, so it decorrelates in a few steps when the tempered targets
  are close to Gaussian, and mixes poorly when they are not (multimodal, funnels);
- a factory ``factory(logdensity_fn, cov) -> blackjax algorithm`` (no scale adaptation).

The scale ``s`` is updated from one stage to the next towards the kernel's target acceptance
rate, ``s <- s * a / a_target`` (damped to a factor in ``[e^-2, e]`` per stage; not for
``"imh"``, whose proposal is not scaled). The number of steps per stage is adapted by a
decorrelation criterion (as PyMC's SMC): steps continue until the probability that a
particle has not moved at all, ``(1 - a)^k`` with ``a`` the running mean acceptance, is
below ``decorrelation_threshold`` (or ``max_steps`` is hit).

The Metropolis–Hastings kernels (``"rwm"``, ``"imh"``) run on the particle dicts
``{"u", "log_prior", "log_lik"}``: their proposals evaluate the model once and the chain
state keeps the result, so the next stage's reweighting needs no further evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp

from particlekit import resampling

__all__ = [
    "KERNELS",
    "TARGET_ACCEPTANCE",
    "MoveSpec",
    "initial_log_scale",
    "Move",
    "build_move",
    "adapt_log_scale",
    "weighted_moments",
    "mutate",
    "mutate_waste_free",
]

KERNELS = ("rwm", "mala", "hmc", "nuts", "imh")
TARGET_ACCEPTANCE = {"rwm": 0.3, "mala": 0.574, "hmc": 0.65, "nuts": 0.8, "imh": 0.5}


class MoveSpec(NamedTuple):
    """Static description of the move.

    Attributes
    ----------
    kernel : str or callable
        One of :data:`KERNELS` or a factory ``(logdensity_fn, cov) -> algorithm``.
    target_acceptance : float
        Acceptance rate the scale is adapted towards.
    num_integration_steps : int
        Leapfrog steps of ``"hmc"``.
    """

    kernel: str | Callable
    target_acceptance: float
    num_integration_steps: int = 10


def initial_log_scale(kernel, dim: int) -> float:
    """Starting value of ``log s`` for a ``dim``-dimensional target."""
    import math

    if kernel == "rwm":
        return math.log(2.38 / math.sqrt(dim))
    if kernel == "mala":
        return math.log(1.65 * dim ** (-1.0 / 6.0))
    if kernel in ("hmc", "nuts"):
        return math.log(dim ** (-0.25))
    return 0.0


def weighted_moments(positions: jax.Array, log_weights: jax.Array):
    """Weighted mean ``(D,)`` and covariance ``(D, D)`` of particles ``(N, D)``, with a
    small jitter so the covariance is positive definite."""
    w = resampling.normalize(log_weights)
    mean = w @ positions
    centred = positions - mean
    cov = (centred * w[:, None]).T @ centred
    dim = positions.shape[1]
    jitter = 1e-6 * (jnp.trace(cov) / dim + 1e-6)
    cov = cov + jitter * jnp.eye(dim, dtype=positions.dtype)
    return mean, cov


def _cholesky(cov):
    chol = jnp.linalg.cholesky(cov)
    return jnp.where(jnp.isfinite(chol), chol, jnp.eye(cov.shape[0], dtype=cov.dtype))


def _gaussian_proposal(mean, cov):
    """Sampler and log-density (up to a constant) of ``N(mean, cov)`` on positions ``(D,)``."""
    chol = _cholesky(cov)
    # Inverted once per stage, so each particle's density is one matrix-vector product.
    inv_chol = jax.scipy.linalg.solve_triangular(
        chol, jnp.eye(chol.shape[0], dtype=chol.dtype), lower=True
    )

    def sample(key):
        return mean + chol @ jax.random.normal(key, mean.shape, mean.dtype)

    def log_density(u):
        z = inv_chol @ (u - mean)
        return -0.5 * jnp.sum(z**2)

    return sample, log_density


class Move(NamedTuple):
    """A stage's BlackJAX algorithm and how its positions relate to particles.

    Attributes
    ----------
    algorithm : blackjax SamplingAlgorithm
    on_particles : bool
        True when the algorithm's positions are the particle dicts
        ``{"u", "log_prior", "log_lik"}`` themselves (Metropolis–Hastings kernels, whose
        proposals evaluate the model once, so no evaluation is repeated after the move);
        False when they are the unconstrained vectors ``u`` (gradient-based kernels and
        factories), which are evaluated after the move.
    """

    algorithm: object
    on_particles: bool


def build_move(
    spec: MoveSpec,
    evaluate: Callable,
    tempered_log_density: Callable,
    mean: jax.Array,
    cov: jax.Array,
    log_scale,
) -> Move:
    """The stage's move, tuned by the weighted particle ``mean`` ``(D,)``, covariance
    ``cov`` ``(D, D)`` and scale ``s = exp(log_scale)``.

    Parameters
    ----------
    evaluate : callable
        ``u -> {"u": u, "log_prior": ..., "log_lik": ...}`` (one model evaluation).
    tempered_log_density : callable
        ``(log_prior, log_lik) -> log pi_lambda`` (invariant density of the move).
    """
    scale = jnp.exp(log_scale)
    kernel = spec.kernel

    def on_particle(particle):
        return tempered_log_density(particle["log_prior"], particle["log_lik"])

    if kernel == "rwm":
        step_chol = scale * _cholesky(cov)

        def random_walk(key, particle):
            u = particle["u"]
            return evaluate(u + step_chol @ jax.random.normal(key, u.shape, u.dtype))

        return Move(blackjax.rmh(on_particle, random_walk), True)
    if kernel == "imh":
        sample, log_q = _gaussian_proposal(mean, cov)

        def independent(key):
            return evaluate(sample(key))

        def proposal_log_density(state_from, state_to):
            del state_from  # independent proposal: q(x' | x) = q(x')
            return log_q(state_to.position["u"])

        return Move(blackjax.irmh(on_particle, independent, proposal_log_density), True)

    def on_vector(u):
        particle = evaluate(u)
        return tempered_log_density(particle["log_prior"], particle["log_lik"])

    diag = jnp.diag(cov)
    if kernel == "mala":
        algorithm = blackjax.mala(on_vector, 0.5 * scale**2 * jnp.min(diag))
    elif kernel == "hmc":
        algorithm = blackjax.hmc(
            on_vector,
            step_size=scale,
            inverse_mass_matrix=diag,
            num_integration_steps=spec.num_integration_steps,
        )
    elif kernel == "nuts":
        algorithm = blackjax.nuts(on_vector, step_size=scale, inverse_mass_matrix=diag)
    else:
        algorithm = kernel(on_vector, cov)
    return Move(algorithm, False)


def adapt_log_scale(spec: MoveSpec, log_scale, acceptance_rate):
    """Next ``log s`` given the stage's mean acceptance rate (unchanged for factories)."""
    if callable(spec.kernel) or spec.kernel == "imh":
        return log_scale
    acc = jnp.where(jnp.isnan(acceptance_rate), spec.target_acceptance, acceptance_rate)
    # multiplicative update s <- s * acc / target, damped to [e^-2, e^1] per stage
    step = jnp.clip(jnp.log((acc + 1e-3) / spec.target_acceptance), -2.0, 1.0)
    return jnp.clip(log_scale + step, -12.0, 5.0)


def _acceptance(info):
    rate = getattr(info, "acceptance_rate", None)
    if rate is None:
        rate = getattr(info, "is_accepted", None)
    if rate is None:
        return jnp.nan
    return jnp.asarray(rate, jnp.float32)


def _step_all(algorithm, key, states):
    keys = jax.random.split(key, jax.tree.leaves(states)[0].shape[0])
    new_states, info = jax.vmap(algorithm.step)(keys, states)
    return new_states, jnp.mean(_acceptance(info))


def mutate(
    key,
    positions,
    algorithm,
    *,
    num_steps: int | None,
    max_steps: int,
    decorrelation_threshold: float,
):
    """Move every particle with the BlackJAX ``algorithm``; ``positions`` is an array
    ``(N, D)`` or a pytree of arrays with leading axis ``N``.

    With ``num_steps`` given, exactly that many steps; otherwise at least one step and until
    ``(1 - a)^k <= decorrelation_threshold`` or ``k = max_steps``, ``a`` the running mean
    acceptance rate. Returns ``(positions, mean_acceptance, steps_taken)``.
    """
    states = jax.vmap(algorithm.init)(positions)

    def cond(carry):
        k, _, acc_sum = carry
        if num_steps is not None:
            return k < num_steps
        a = jnp.clip(acc_sum / jnp.maximum(k, 1), 0.0, 1.0)
        unmoved = jnp.exp(k * jnp.log1p(-jnp.minimum(a, 1.0 - 1e-6)))
        return (k < 1) | ((unmoved > decorrelation_threshold) & (k < max_steps))

    def body(carry):
        k, states, acc_sum = carry
        states, acc = _step_all(algorithm, jax.random.fold_in(key, k), states)
        return k + 1, states, acc_sum + jnp.nan_to_num(acc)

    k, states, acc_sum = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), states, jnp.zeros((), jnp.float32))
    )
    return states.position, acc_sum / jnp.maximum(k, 1), k


def mutate_waste_free(key, starts, algorithm, *, chain_length: int):
    """Waste-free move (Dau & Chopin 2022): grow each of the ``P`` resampled particles
    (leading axis ``P`` of the pytree ``starts``) into a chain of ``chain_length = M`` states
    (the start included), giving ``N = P M`` particles (leading axis ``N``, chain step major).
    Returns ``(positions, mean_acceptance, M - 1)``."""
    states = jax.vmap(algorithm.init)(starts)

    def body(states, step_key):
        states, acc = _step_all(algorithm, step_key, states)
        return states, (states.position, acc)

    _, (path, accs) = jax.lax.scan(body, states, jax.random.split(key, chain_length - 1))

    def chains(start, steps):  # (P, ...) and (M - 1, P, ...) -> (M P, ...)
        whole = jnp.concatenate([start[None], steps], axis=0)
        return whole.reshape((-1,) + start.shape[1:])

    positions = jax.tree.map(chains, starts, path)
    return positions, jnp.mean(accs), jnp.asarray(chain_length - 1, jnp.int32)
