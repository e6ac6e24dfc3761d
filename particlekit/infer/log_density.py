"""A static model as plain JAX log-densities, for users who do not write NumPyro.

Tempering needs the posterior split into a prior and a likelihood
(``pi_lambda ∝ p(theta) L(theta)^lambda``), and the sampler needs a starting population from
the prior. ``LogDensityModel`` carries the three; ``particlekit.infer.SMC``
accepts it in place of a NumPyro model and returns the same result object, summaries and
ArviZ output.

``theta`` is any pytree of arrays (one particle) in an unconstrained space: the user's
densities are used as they are, so a positive parameter should be written in terms of its
logarithm (with the log-Jacobian in ``log_prior``), as NumPyro does automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from particlekit.infer.numpyro_adapter import ModelInfo, NumPyroTarget, check_dimension
from particlekit.types import path_key_name

__all__ = ["LogDensityModel", "inspect_log_density_model", "make_log_density_target"]


class LogDensityModel(NamedTuple):
    """A model given by its log-prior, log-likelihood and a way to start from the prior.

    All three functions receive the data given to ``SMC.run(key, *args, **kwargs)`` after
    their first argument (arrays are traced, so new data of the same shape reuses the
    compiled sampler).

    Attributes
    ----------
    log_prior : callable
        ``(theta, *args, **kwargs) -> scalar``: log prior density of one particle.
    log_likelihood : callable
        ``(theta, *args, **kwargs) -> scalar``: log-likelihood (``-inf`` allowed).
    sample_prior : callable, optional
        ``(key, *args, **kwargs) -> theta``: one draw from the prior.
    initial_population : pytree, optional
        Instead of ``sample_prior``: ``M >= num_particles`` draws from the prior, leaves
        with leading axis ``M``; each chain starts from its own random subset of
        ``num_particles`` of them (chains are nearly independent only when ``M`` is much
        larger than ``num_particles``).

    Examples
    --------
    The conjugate normal mean, ``theta ~ N(0, 1)``, ``y_i ~ N(theta, 1)``:

    >>> import jax, jax.numpy as jnp
    >>> import jax.scipy.stats.norm as norm
    >>> import particlekit as pk
    >>> model = pk.infer.LogDensityModel(
    ...     log_prior=lambda theta, y: norm.logpdf(theta),
    ...     log_likelihood=lambda theta, y: jnp.sum(norm.logpdf(y, theta)),
    ...     sample_prior=lambda key, y: jax.random.normal(key),
    ... )
    >>> smc = pk.infer.SMC(model, num_particles=500)
    >>> smc.run(jax.random.key(0), jnp.array([0.5, 1.0, 1.5]))
    >>> round(float(smc.get_samples()["theta"].mean()), 1)  # exact: 0.75
    0.7
    """

    log_prior: Callable
    log_likelihood: Callable
    sample_prior: Callable | None = None
    initial_population: Any = None


def _check(model: LogDensityModel) -> None:
    if not callable(model.log_prior) or not callable(model.log_likelihood):
        raise ValueError("LogDensityModel needs callable log_prior and log_likelihood")
    if (model.sample_prior is None) == (model.initial_population is None):
        raise ValueError(
            "LogDensityModel needs exactly one of sample_prior (key -> one draw of the "
            "prior) and initial_population (draws from the prior, leading axis M)"
        )
    if model.sample_prior is not None and not callable(model.sample_prior):
        raise ValueError("sample_prior must be a callable (key, *args) -> theta")


def _one_particle_structure(model: LogDensityModel, args, kwargs):
    if model.sample_prior is not None:
        return jax.eval_shape(lambda k: model.sample_prior(k, *args, **kwargs), jax.random.key(0))
    leaves = jax.tree.leaves(model.initial_population)
    if not leaves:
        raise ValueError("initial_population has no arrays")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "every leaf of initial_population needs the same leading axis M (one row per "
            f"draw), got leading sizes {sorted(map(str, sizes))}"
        )
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.asarray(a).dtype),
        model.initial_population,
    )


def population_size(model: LogDensityModel) -> int | None:
    """``M``, the number of rows of ``initial_population`` (``None`` without one)."""
    if model.initial_population is None:
        return None
    return int(jnp.shape(jax.tree.leaves(model.initial_population)[0])[0])


def site_names(theta) -> tuple[str, ...]:
    """One name per leaf of ``theta``, in ``jax.tree`` order: ``"theta"`` for an array, the
    keys of a dict of arrays, and the path joined by dots otherwise (``"a.w"`` for
    ``{"a": {"w": ...}}``, ``"theta.0"`` for a tuple's first entry).

    Examples
    --------
    >>> site_names({"a": {"w": 0.0}, "b": 1.0}), site_names((0.0, 1.0))
    (('a.w', 'b'), ('theta.0', 'theta.1'))
    """
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(theta)[0]]
    if paths == [()]:
        return ("theta",)
    prefix = [] if isinstance(theta, dict) else ["theta"]
    return tuple(".".join(prefix + [path_key_name(k) for k in path]) for path in paths)


def _check_scalar_densities(model: LogDensityModel, structure, args, kwargs) -> None:
    """``log_prior`` and ``log_likelihood`` must return one number per particle."""
    for name in ("log_prior", "log_likelihood"):
        fn = getattr(model, name)
        out = jax.eval_shape(lambda theta, fn=fn: fn(theta, *args, **kwargs), structure)
        shapes = [leaf.shape for leaf in jax.tree.leaves(out)]
        if shapes != [()]:
            raise ValueError(
                f"LogDensityModel.{name} must return a scalar for one particle theta, got "
                f"shape {shapes[0] if len(shapes) == 1 else shapes} (sum the terms, e.g. "
                "jnp.sum(norm.logpdf(y, mu)))"
            )


def inspect_log_density_model(model: LogDensityModel, args=(), kwargs=None) -> ModelInfo:
    """The ``ModelInfo`` of a ``LogDensityModel``: one latent site per leaf of ``theta``
    (``site_names``) and the flattening of ``theta``. Raises ``ValueError`` on a malformed
    model (no floating ``theta``, a ``theta`` with no elements, log-densities that are not
    scalars)."""
    _check(model)
    kwargs = {} if kwargs is None else kwargs
    structure = _one_particle_structure(model, args, kwargs)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    flat, unravel_fn = ravel_pytree(zeros)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(f"theta must be floating point, got {flat.dtype}")
    names = site_names(zeros)
    check_dimension(
        int(flat.shape[0]),
        dict(zip(names, (s.shape for s in jax.tree.leaves(structure)), strict=True)),
    )
    _check_scalar_densities(model, structure, args, kwargs)
    return ModelInfo(names, {}, unravel_fn, int(flat.shape[0]))


def make_log_density_target(model: LogDensityModel, args, kwargs, info: ModelInfo):
    """The tempering target of a ``LogDensityModel`` at the given (possibly traced)
    data, with the interface of
    ``NumPyroTarget``."""
    kwargs = {} if kwargs is None else kwargs

    def log_prior_and_likelihood(u):
        theta = info.unravel_fn(u)
        log_prior = jnp.asarray(model.log_prior(theta, *args, **kwargs), u.dtype)
        log_lik = jnp.asarray(model.log_likelihood(theta, *args, **kwargs), u.dtype)
        return log_prior, log_lik

    def sample_prior(key):
        return ravel_pytree(model.sample_prior(key, *args, **kwargs))[0]

    def initial_positions(key, num_particles):
        if model.sample_prior is not None:
            return jax.vmap(sample_prior)(jax.random.split(key, num_particles))
        rows = jax.vmap(lambda i: ravel_pytree(jax.tree.map(lambda a: a[i], population))[0])
        population = model.initial_population
        size = population_size(model)
        pick = jax.random.choice(key, size, (num_particles,), replace=False)
        return rows(pick)

    def constrain(u):
        leaves = jax.tree.leaves(info.unravel_fn(u))
        return dict(zip(info.latent_names, leaves, strict=True))

    return NumPyroTarget(
        log_prior_and_likelihood, sample_prior, constrain, info.dim, initial_positions
    )
