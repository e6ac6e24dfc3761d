"""A NumPyro model as a tempering target: log-prior and log-likelihood in unconstrained space.

Tempered SMC targets ``pi_lambda(u) ∝ p(u) L(u)^lambda`` on the unconstrained space
``u = T^{-1}(theta)`` of the latent sites, where ``p(u)`` is the prior density *including*
the log-Jacobian of ``theta = T(u)`` and ``L`` the likelihood: every observed site plus every
``numpyro.factor`` (as in NumPyro's own ``log_likelihood`` and in PyMC).

The trap (issue 4): NumPyro's ``potential_fn`` substitutes ``u`` through
``_unconstrain_reparam``, which records each log-Jacobian as a *factor site*
``_<name>_log_det``, i.e. as an observed site. Splitting by "observed or not" would move the
Jacobians into the likelihood. We split by provenance instead, and the tests check
``log_prior + log_likelihood == -potential_fn`` at random points.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import _unconstrain_reparam, constrain_fn

__all__ = ["NumPyroTarget", "inspect_model", "make_target", "ModelInfo"]


class ModelInfo(NamedTuple):
    """What a host-side trace of the model tells us (computed once, before tracing).

    Attributes
    ----------
    latent_names : tuple of str
        Continuous latent sample sites, in trace order.
    observed : dict
        Observed values of observed sample sites (``numpyro.factor`` sites excluded).
    unravel_fn : callable
        Maps a flat unconstrained vector ``(D,)`` back to the dict of unconstrained sites.
    dim : int
        ``D``, the dimension of the unconstrained space.
    """

    latent_names: tuple
    observed: dict
    unravel_fn: Callable
    dim: int


def _is_factor(site) -> bool:
    return site["infer"].get("is_auxiliary", False) and site["is_observed"]


def inspect_model(
    model, model_args=(), model_kwargs=None, *, key=None, purpose: str = "pk.infer.SMC"
) -> ModelInfo:
    """Trace ``model`` once on the host and validate it for SMC (``purpose`` names the
    caller in the error messages).

    Raises
    ------
    ValueError
        If a latent sample site is discrete (it names the site), or there are no latent
        sites.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    key = jax.random.key(0) if key is None else key
    latent: list = []

    # One jitted trace (an eager trace of e.g. an LKJ prior dispatches hundreds of ops).
    @jax.jit
    def draw(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs)
        latent.clear()
        unconstrained = {}
        for name, site in tr.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            fn = site["fn"]
            if getattr(fn.support, "is_discrete", False) or getattr(fn, "is_discrete", False):
                raise ValueError(
                    f"latent site {name!r} is discrete (support {fn.support}); {purpose} "
                    "needs continuous latent sites. Marginalise it out (e.g. with a mixture "
                    "distribution or funsor enumeration) or observe it."
                )
            latent.append(name)
            unconstrained[name] = biject_to(fn.support).inv(site["value"])
        return _observed_sites(tr), unconstrained

    try:
        observed, unconstrained = draw(key)
    except NotImplementedError as err:
        raise ValueError(
            f"{purpose} starts from draws of the prior, and this model's prior cannot be "
            f"sampled (NumPyro raised NotImplementedError{': ' + str(err) if str(err) else ''}"
            "; dist.ImproperUniform and other improper priors have no sampler). Give every "
            "latent site a proper prior"
            + (
                ", or write the model as a pk.infer.LogDensityModel with an "
                "initial_population drawn from a proper reference distribution whose "
                "density is in log_prior."
                if purpose == "pk.infer.SMC"
                else "."
            )
        ) from err
    if not latent:
        raise ValueError(
            "the model has no latent sample sites: nothing to infer"
            + (f" (its observed sites {sorted(observed)} are data)" if observed else "")
        )
    flat, unravel_fn = ravel_pytree(unconstrained)
    return ModelInfo(tuple(latent), observed, unravel_fn, int(flat.shape[0]))


def observed_values(model, model_args=(), model_kwargs=None) -> dict:
    """The values of ``model``'s observed sample sites (``numpyro.factor`` sites excluded)
    for the data ``model_args, model_kwargs``, from one eager host-side trace."""
    model_kwargs = {} if model_kwargs is None else model_kwargs
    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(
        *model_args, **model_kwargs
    )
    return _observed_sites(tr)


def _observed_sites(trace) -> dict:
    """``{name: value}`` of a trace's observed sample sites, ``numpyro.factor`` excluded."""
    return {
        name: site["value"]
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"] and not _is_factor(site)
    }


def _site_log_prob(site):
    value = site["value"]
    intermediates = site.get("intermediates")
    fn = site["fn"]
    log_prob = fn.log_prob(value, intermediates) if intermediates else fn.log_prob(value)
    scale = site["scale"]
    if scale is not None:
        log_prob = scale * log_prob
    return jnp.sum(log_prob)


class NumPyroTarget(NamedTuple):
    """The tempering target of a NumPyro model on flat unconstrained vectors ``u`` of shape
    ``(D,)``.

    Attributes
    ----------
    log_prior_and_likelihood : callable
        ``u -> (log p(u), log L(u))``: the prior with the log-Jacobians and the likelihood
        (observed sites and factors). Their sum is ``-potential_fn(u)`` of NumPyro.
    sample_prior : callable
        ``key -> u``: one draw of the prior, mapped to unconstrained space.
    constrain : callable
        ``u -> dict`` of constrained latent values (and deterministic sites).
    dim : int
        ``D``.
    initial_positions : callable
        ``(key, num_particles) -> (num_particles, D)``: the starting population.
    """

    log_prior_and_likelihood: Callable
    sample_prior: Callable
    constrain: Callable
    dim: int
    initial_positions: Callable


def make_target(model, model_args, model_kwargs, info: ModelInfo) -> NumPyroTarget:
    """Build the ``NumPyroTarget`` of ``model`` at the given (possibly traced) data.

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> info = inspect_model(model, (1.0,))
    >>> target = make_target(model, (1.0,), {}, info)
    >>> lp, ll = target.log_prior_and_likelihood(jax.numpy.zeros(1))
    """
    latent = set(info.latent_names)
    jacobian_names = {f"_{name}_log_det" for name in latent}

    def log_prior_and_likelihood(u):
        params = info.unravel_fn(u)
        substituted = handlers.substitute(
            model, substitute_fn=partial(_unconstrain_reparam, params)
        )
        tr = handlers.trace(substituted).get_trace(*model_args, **model_kwargs)
        log_prior = jnp.zeros((), u.dtype)
        log_lik = jnp.zeros((), u.dtype)
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            lp = _site_log_prob(site)
            # Jacobian factors and latent sites belong to the prior; observed sites and
            # user factors to the likelihood.
            if name in latent or name in jacobian_names:
                log_prior = log_prior + lp
            else:
                log_lik = log_lik + lp
        return log_prior, log_lik

    def sample_prior(key):
        seeded = handlers.seed(model, key)
        tr = handlers.trace(seeded).get_trace(*model_args, **model_kwargs)
        u = {
            name: biject_to(tr[name]["fn"].support).inv(tr[name]["value"])
            for name in info.latent_names
        }
        return ravel_pytree(u)[0]

    def constrain(u):
        return constrain_fn(
            model, model_args, model_kwargs, info.unravel_fn(u), return_deterministic=True
        )

    def initial_positions(key, num_particles):
        return jax.vmap(sample_prior)(jax.random.split(key, num_particles))

    return NumPyroTarget(
        log_prior_and_likelihood, sample_prior, constrain, info.dim, initial_positions
    )
