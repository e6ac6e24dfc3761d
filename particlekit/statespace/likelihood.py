"""The bootstrap particle filter as the likelihood estimator of parameter inference.

PMMH and SMC² need the filter in three shapes the recipe ``pk.filters.bootstrap`` does not
give: one step at a time (SMC² advances every parameter particle's filter by one
observation), over a prefix ``y_{0:t}`` of traced length (SMC²'s rejuvenation), and
without the input checks (they run once, before tracing). They are built here from the same
engine kernels (``init``, ``resample``, ``move``, ``reweight``) with the same evidence rule
and compensated sum, so the estimate is the filter's, step for step.

``log_likelihood_sd`` and ``choose_num_particles`` implement the usual guidance for
pseudo-marginal MCMC: pick the particle count so that the standard deviation of
``log p_hat(y | theta)`` at a central ``theta`` is about 1 to 1.5 (Doucet, Pitt,
Deligiannidis & Kohn 2015; Sherlock, Thiery, Roberts & Rosenthal 2015).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import kernels, resampling
from particlekit.filters import (
    _observation_term,
    bootstrap_step,
    initial_sampler,
    skipping_missing,
)
from particlekit.run import advance
from particlekit.ssm import StateSpaceModel
from particlekit.statespace.model import check_model_and_data, unconstrain_params
from particlekit.types import ParticleState

__all__ = [
    "FilterCarry",
    "filter_init",
    "filter_step",
    "filter_prefix",
    "filter_history",
    "flagged_log_likelihood",
    "log_likelihood_sd",
    "choose_num_particles",
]


class FilterCarry(NamedTuple):
    """A bootstrap filter paused after some step.

    Attributes
    ----------
    state : ParticleState
        The population (``N`` particles) and its running ``log_evidence``.
    compensation : Array of shape ()
        Kahan compensation of the running log-evidence sum.
    num_nonfinite : Array of shape (), int32
        Potentials that were NaN or ``+inf`` so far, over all steps (each such particle
        got weight zero, ``pk.reweight``): a model undefined at these parameters. PMMH and
        SMC² read a filter that met any as a NaN likelihood estimate
        (``flagged_log_likelihood``).
    """

    state: ParticleState
    compensation: jax.Array
    num_nonfinite: jax.Array


def flagged_log_likelihood(carry: FilterCarry) -> jax.Array:
    """The filter's ``log p_hat``, NaN where it met a NaN or ``+inf`` potential
    (``carry.num_nonfinite > 0``): its estimate then dropped the particles where the model
    is undefined, which no estimate of the likelihood should, so the parameter recipes
    reject such a parameter value and count it, rather than read it as the likelihood.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> from particlekit.statespace.likelihood import filter_prefix, flagged_log_likelihood
    >>> def ssm(scale):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...         observation=lambda x, t: dist.Normal(x, jnp.sqrt(scale)))  # NaN for scale < 0
    >>> ys = jnp.zeros(5)
    >>> run = jax.jit(  # (traced: NumPyro's argument validation, if on, does not raise)
    ...     lambda scale: filter_prefix(jax.random.key(0), ssm(scale), ys, 5, num_particles=8))
    >>> good, bad = run(0.25), run(-0.25)
    >>> bool(jnp.isfinite(flagged_log_likelihood(good))), int(bad.num_nonfinite)
    (True, 40)
    >>> bool(jnp.isnan(flagged_log_likelihood(bad)))
    True
    """
    log_evidence = kernels.reported_log_evidence(carry.state.log_evidence)
    return jnp.where(carry.num_nonfinite > 0, jnp.nan, log_evidence)


def _step_kernel(ssm: StateSpaceModel, scheme, ess_threshold):
    """``pk.filters.bootstrap``'s step, with its exact zero increment at a missing ``y_t``
    (``skipping_missing``) and its batched transition draws for a per-particle model."""
    return skipping_missing(bootstrap_step(ssm, scheme, ess_threshold))


def filter_init(
    key, ssm: StateSpaceModel, ys, *, num_particles: int, scheme=resampling.systematic
) -> FilterCarry:
    """Draw ``x_0`` and weight it by ``g_0(y_0 | x_0)``: the filter after step 0."""
    key_init, key_w = jax.random.split(key)
    v = ssm.vectorized

    state = kernels.init(key_init, initial_sampler(ssm), num_particles, vectorized=True)
    y0 = jax.tree.map(lambda a: a[0], ys)
    weigh = kernels.reweight(_observation_term(ssm), vectorized=v)
    state, info = weigh(key_w, state, (y0, jnp.int32(0)))
    return FilterCarry(state, jnp.zeros_like(state.log_evidence), info.num_nonfinite)


def filter_step(
    key, ssm: StateSpaceModel, carry: FilterCarry, ys, t, *, scheme=resampling.systematic,
    ess_threshold: float = 0.5,
):  # fmt: skip
    """Advance the filter from step ``t - 1`` to step ``t`` (``t >= 1``, traced) with
    ``ys[t]`` through ``particlekit.run.advance`` (the key of the step is
    ``fold_in(key, t)``, the evidence a compensated sum). Returns the new carry and the
    ``StepInfo`` of the step."""
    t = jnp.asarray(t, jnp.int32)
    y = jax.tree.map(lambda a: a[t], ys)
    step = _step_kernel(ssm, scheme, ess_threshold)
    state, compensation, info = advance(key, step, carry.state, carry.compensation, t, (y, t), None)
    return FilterCarry(state, compensation, carry.num_nonfinite + info.num_nonfinite), info


def filter_prefix(
    key, ssm: StateSpaceModel, ys, length, *, num_particles: int,
    scheme=resampling.systematic, ess_threshold: float = 0.5,
):  # fmt: skip
    """Run the filter over ``ys[:length]`` (``1 <= length <= T``, may be traced) and return
    the carry after step ``length - 1``; ``carry.state.log_evidence`` estimates
    ``log p(y_{0:length-1})``. A static ``length`` runs under ``lax.scan``, a traced one
    under ``lax.while_loop``."""
    key_init, key_run = jax.random.split(key)
    carry = filter_init(key_init, ssm, ys, num_particles=num_particles, scheme=scheme)
    step = partial(filter_step, key_run, ssm, ys=ys, scheme=scheme, ess_threshold=ess_threshold)

    if isinstance(length, int | np.integer):
        if length <= 1:
            return carry

        def body(c, t):
            return step(c, t=t)[0], None

        carry, _ = jax.lax.scan(body, carry, jnp.arange(1, length, dtype=jnp.int32))
        return carry

    def cond(loop):
        return loop[1] < length

    def body_while(loop):
        c, t = loop
        return step(c, t=t)[0], t + 1

    carry, _ = jax.lax.while_loop(cond, body_while, (carry, jnp.ones((), jnp.int32)))
    return carry


def filter_history(
    key, ssm: StateSpaceModel, ys, *, num_particles: int, scheme=resampling.systematic,
    ess_threshold: float = 0.5,
):  # fmt: skip
    """Run the filter over all of ``ys`` keeping particles and ancestors; returns
    ``(log_evidence, particles (T, N, ...), log_weights (T, N), ancestors (T, N))``."""
    key_init, key_run = jax.random.split(key)
    carry = filter_init(key_init, ssm, ys, num_particles=num_particles, scheme=scheme)
    first = carry.state

    def body(c, t):
        c, _ = filter_step(key_run, ssm, c, ys, t, scheme=scheme, ess_threshold=ess_threshold)
        return c, c.state

    ts = jnp.arange(1, ys.shape[0], dtype=jnp.int32)
    carry, hist = jax.lax.scan(body, carry, ts)

    def cat(a, b):
        return jnp.concatenate([a[None], b])

    particles = jax.tree.map(cat, first.particles, hist.particles)
    return (
        kernels.reported_log_evidence(carry.state.log_evidence),
        particles,
        cat(first.log_weights, hist.log_weights),
        cat(first.ancestors, hist.ancestors),
    )


def sample_path(key, particles, log_weights, ancestors):
    """One trajectory ``(T, ...)`` from a filter's genealogy: a final particle drawn by its
    weight, then its ancestors back to ``t = 0`` (the path PMMH pairs with ``theta``,
    Andrieu, Doucet & Holenstein 2010, Section 2.4.2)."""
    # in the ancestors' dtype: int64 under jax_enable_x64 broke the scan carry
    last = jax.random.categorical(key, log_weights[-1]).astype(ancestors.dtype)

    def body(idx, inp):
        xs_t, anc_t = inp
        x = jax.tree.map(lambda a: a[idx], xs_t)
        return anc_t[idx], x

    _, path = jax.lax.scan(body, last, (particles, ancestors), reverse=True)
    return path


# ------------------------------------------------------------------ choosing N
def log_likelihood_sd(
    key: jax.Array, model, ys, theta: dict, *, num_particles: int, num_runs: int = 32
) -> float:
    """Standard deviation of the bootstrap filter's ``log p_hat(y | theta)`` over
    ``num_runs`` independent runs at one ``theta`` (a dict of site values).

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist, particlekit as pk
    >>> def prior():
    ...     numpyro.sample("sigma", dist.HalfNormal(1.0))
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, theta["sigma"]),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> model = pk.statespace.ParametricSSM(prior, model_fn)
    >>> _, ys = model_fn({"sigma": 1.0}).simulate(jax.random.key(0), 50)
    >>> sd = pk.statespace.log_likelihood_sd(
    ...     jax.random.key(1), model, ys, {"sigma": 1.0}, num_particles=128)
    >>> 0.0 < sd < 2.0
    True
    """
    kernels.check_key(key)
    kernels.check_not_traced(  # returns a Python float
        "pk.statespace.log_likelihood_sd",
        "For the log-likelihood estimates themselves under vmap, use "
        "pk.filters.bootstrap(...).log_evidence.",
        key, ys, theta,
    )  # fmt: skip
    num_runs = kernels.check_num_particles(num_runs, "num_runs")
    if num_runs < 2:
        raise ValueError(f"num_runs must be >= 2 to estimate a spread, got {num_runs}")
    ys = check_model_and_data(model, ys, num_particles)
    # every site, with its shape, inside the prior's support (a value outside it read as
    # "the data are impossible at this theta"; a missing site was a KeyError)
    theta = model.constrain(unconstrain_params(model, theta, "theta"))
    ssm = model.model_fn(theta)
    log_z = _log_likelihoods(
        jax.random.split(key, num_runs), ys, ssm=ssm, num_particles=num_particles
    )
    log_z = np.asarray(log_z, dtype=np.float64)
    if not np.all(np.isfinite(log_z)):
        raise ValueError(
            f"the filter's log-likelihood at theta={theta} is -inf or NaN in "
            f"{int(np.sum(~np.isfinite(log_z)))} of {num_runs} runs: the data are (nearly) "
            "impossible at this theta; choose a theta nearer the posterior"
        )
    return float(np.std(log_z, ddof=1))


@partial(jax.jit, static_argnames=("ssm", "num_particles"))
def _log_likelihoods(keys, ys, ssm=None, num_particles=None):
    def one(k):
        carry = filter_prefix(k, ssm, ys, ys.shape[0], num_particles=num_particles)
        return kernels.reported_log_evidence(carry.state.log_evidence)

    return jax.vmap(one)(keys)


def choose_num_particles(
    key: jax.Array, model, ys, theta: dict, *, target_sd: float = 1.2,
    initial: int = 64, max_num_particles: int = 2**16, num_runs: int = 32,
) -> int:  # fmt: skip
    """The smallest power-of-two multiple of ``initial`` whose ``log_likelihood_sd`` at
    ``theta`` is at most ``target_sd`` (1 to 1.5 is the usual advice for PMMH; the
    variance falls roughly as ``1 / N``). Raises ``ValueError`` if ``max_num_particles`` is
    not enough. ``theta`` should be central in the posterior (a pilot run's mean).

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist, particlekit as pk
    >>> def prior():
    ...     numpyro.sample("sigma", dist.HalfNormal(1.0))
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, theta["sigma"]),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> model = pk.statespace.ParametricSSM(prior, model_fn)
    >>> _, ys = model_fn({"sigma": 1.0}).simulate(jax.random.key(0), 50)
    >>> n = pk.statespace.choose_num_particles(jax.random.key(1), model, ys, {"sigma": 1.0})
    >>> n in (64, 128, 256, 512)
    True
    """
    kernels.check_key(key)
    kernels.check_not_traced(  # returns a Python int
        "pk.statespace.choose_num_particles", "", key, ys, theta
    )
    initial = kernels.check_num_particles(initial, "initial")
    if not target_sd > 0:
        raise ValueError(f"target_sd must be positive, got {target_sd}")
    max_num_particles = kernels.check_num_particles(max_num_particles, "max_num_particles")
    if max_num_particles < initial:  # no count would be tried
        raise ValueError(f"max_num_particles ({max_num_particles}) must be >= initial ({initial})")
    n = initial
    sds = []
    while n <= max_num_particles:
        key, sub = jax.random.split(key)
        sd = log_likelihood_sd(sub, model, ys, theta, num_particles=n, num_runs=num_runs)
        sds.append((n, sd))
        if sd <= target_sd:
            return n
        n *= 2
    raise ValueError(
        f"no particle count up to {max_num_particles} brings the log-likelihood sd to "
        f"{target_sd} (measured (N, sd): {[(m, round(s, 2)) for m, s in sds]}); raise "
        "max_num_particles, use a better proposal (pk.filters.guided), or check theta"
    )
