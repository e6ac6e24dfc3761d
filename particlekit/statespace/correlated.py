"""The bootstrap filter driven by explicit Gaussian noise, for correlated pseudo-marginal
MCMC (Deligiannidis, Doucet & Pitt 2018).

PMMH's chain can carry the filter's random numbers instead of a fresh seed per proposal:
if the estimate ``p_hat(y | theta, z)`` is a smooth function of standard normal variates
``z``, proposing ``z' = rho z + sqrt(1 - rho^2) xi`` (a Crank–Nicolson move, reversible
for ``N(0, I)``) with ``rho`` near one makes the estimates at the current and proposed
``theta`` strongly correlated, so the noise of their ratio, not of each estimate, sets the
acceptance; far fewer particles then suffice for long series.

Smoothness needs two things (ibid., Section 4): the moves are ``x_t = F^-1(Phi(z))`` by
inverse transform of the transition (``loc + scale z`` for normal laws), and resampling
inverts the cumulative weights of the particles *sorted* (by value in one dimension, along
a Hilbert curve otherwise) at the sorted uniforms ``Phi(z_res)``, so that a small change of
the particles or of ``z_res`` changes few ancestors. Every step resamples. The laws
supported are those of ``pk.filters.sqmc`` (normal, multivariate normal, univariate laws
with an ``icdf``, and independent batches of them).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr
from numpyro import distributions as dist

from particlekit import kernels, resampling
from particlekit.filters import _observation_term
from particlekit.sqmc import _hilbert_order, _inverse_transform, _state_shape, _unwrap
from particlekit.ssm import StateSpaceModel
from particlekit.types import ParticleState

__all__ = ["FilterNoise", "check_model", "sample_noise", "refresh_noise", "correlated_filter"]


class FilterNoise(NamedTuple):
    """The standard normal variates that drive one run of the correlated filter.

    Attributes
    ----------
    initial : Array of shape (N, *state_shape)
        Draws ``x_0``.
    move : Array of shape (T - 1, N, *state_shape)
        Move the resampled particles at ``t = 1 .. T - 1``.
    resample : Array of shape (T - 1, N)
        Sorted, they are the uniforms ``Phi(z)`` that pick the ancestors.
    """

    initial: jax.Array
    move: jax.Array
    resample: jax.Array


def check_model(ssm: StateSpaceModel) -> tuple:
    """The shape of one state, after checking (before tracing) that the initial and
    transition laws can be inverted; a ``ValueError`` otherwise."""
    return _state_shape(ssm, who="correlated PMMH")


def sample_noise(key, num_steps: int, num_particles: int, state_shape: tuple) -> FilterNoise:
    """Fresh ``N(0, I)`` noise for a run over ``num_steps`` observations."""
    k0, k1, k2 = jax.random.split(key, 3)
    n, shape = num_particles, tuple(state_shape)
    return FilterNoise(
        jax.random.normal(k0, (n, *shape)),
        jax.random.normal(k1, (num_steps - 1, n, *shape)),
        jax.random.normal(k2, (num_steps - 1, n)),
    )


def refresh_noise(key, noise: FilterNoise, correlation) -> FilterNoise:
    """The Crank–Nicolson proposal ``rho z + sqrt(1 - rho^2) xi``, ``xi ~ N(0, I)``."""
    leaves, tree = jax.tree.flatten(noise)
    keys = jax.random.split(key, len(leaves))
    scale = jnp.sqrt(1.0 - correlation**2)
    fresh = [
        correlation * z + scale * jax.random.normal(k, z.shape, z.dtype)
        for k, z in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(tree, fresh)


def _from_normal(law, z):
    """``F^-1(Phi(z))`` for standard normal ``z`` of the law's sample shape, without the
    detour through ``Phi`` for normal laws (which would round to 1 in the far tail)."""
    base = _unwrap(law)
    if isinstance(base, dist.MultivariateNormal):
        x = base.loc + jnp.squeeze(base.scale_tril @ z[..., None], -1)
        return jnp.broadcast_to(x, z.shape)
    if type(base) is dist.Normal:
        return jnp.broadcast_to(base.loc + base.scale * z, z.shape)
    tiny = jnp.finfo(z.dtype).eps
    return _inverse_transform(law, jnp.clip(ndtr(z), tiny, 1.0 - tiny))


def _sorted_ancestors(x, log_weights, z_res):
    """Ancestors by inverting the cumulative weights of the particles in Hilbert order at
    the sorted uniforms ``Phi(z_res)``."""
    n = log_weights.shape[0]
    order = _hilbert_order(x.reshape(n, -1))
    cdf = resampling._cdf(log_weights[order])
    u = jnp.sort(ndtr(z_res))
    idx = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)
    return order[idx]


def correlated_filter(
    ssm: StateSpaceModel, ys, noise: FilterNoise, *, keep_history=False, flag_nonfinite=False
):
    """Run the filter over ``ys`` with the given noise (deterministic in it).

    Returns ``log_evidence`` (NaN read as ``-inf``; with ``flag_nonfinite``, NaN where a
    potential was NaN or ``+inf``, as ``likelihood.flagged_log_likelihood``, so that PMMH
    rejects and counts it) and, with ``keep_history``, the history
    ``(particles (T, N, ...), log_weights (T, N), ancestors (T, N))`` that
    ``likelihood.sample_path`` reads.

    Examples
    --------
    Two runs with strongly correlated noise give close estimates:

    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> from particlekit.statespace import correlated
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = ssm.simulate(jax.random.key(0), 50)
    >>> z = correlated.sample_noise(jax.random.key(1), 50, 64, correlated.check_model(ssm))
    >>> z_near = correlated.refresh_noise(jax.random.key(2), z, 0.999)
    >>> a = correlated.correlated_filter(ssm, ys, z)
    >>> b = correlated.correlated_filter(ssm, ys, z_near)
    >>> bool(abs(a - b) < 0.5)
    True
    """
    n = noise.initial.shape[0]
    v = ssm.vectorized
    weigh = kernels.reweight(_observation_term(ssm), vectorized=v)
    x0 = _from_normal(ssm.initial(), noise.initial)
    state = ParticleState(
        particles=x0,
        log_weights=jnp.zeros(n, x0.dtype),
        log_evidence=jnp.zeros((), x0.dtype),
        ancestors=jnp.arange(n, dtype=jnp.int32),
        previous_particles=x0,
    )
    state, info0 = weigh(None, state, (jax.tree.map(lambda a: a[0], ys), jnp.int32(0)))

    def step(carry, inp):
        state, compensation, num_nonfinite = carry
        y, t, z_move, z_res = inp
        idx = _sorted_ancestors(state.particles, state.log_weights, z_res)
        x_prev = state.particles[idx]
        if v:
            x = _from_normal(ssm.transition(x_prev, t), z_move)
        else:
            x = jax.vmap(lambda xp, z: _from_normal(ssm.transition(xp, t), z))(x_prev, z_move)
        moved = state._replace(
            particles=x.astype(x_prev.dtype), previous_particles=x_prev,
            log_weights=jnp.zeros_like(state.log_weights), ancestors=idx,
        )  # fmt: skip
        new, info = weigh(None, moved, (y, t))
        total, compensation = kernels.compensated_add(
            state.log_evidence, compensation, info.log_evidence_increment
        )
        new = new._replace(log_evidence=total)
        carry = (new, compensation, num_nonfinite + info.num_nonfinite)
        return carry, (new if keep_history else None)

    num_steps = ys.shape[0]
    ts = jnp.arange(1, num_steps, dtype=jnp.int32)
    inputs = (jax.tree.map(lambda a: a[1:], ys), ts, noise.move, noise.resample)
    init = (state, jnp.zeros_like(state.log_evidence), info0.num_nonfinite)
    (final, _, num_nonfinite), hist = jax.lax.scan(step, init, inputs)
    log_evidence = kernels.reported_log_evidence(final.log_evidence)
    if flag_nonfinite:
        log_evidence = jnp.where(num_nonfinite > 0, jnp.nan, log_evidence)
    if not keep_history:
        return log_evidence

    def cat(a, b):
        return jnp.concatenate([a[None], b])

    return log_evidence, (
        jax.tree.map(cat, state.particles, hist.particles),
        cat(state.log_weights, hist.log_weights),
        cat(state.ancestors, hist.ancestors),
    )
