"""A state-space model whose static parameters have a NumPyro prior.

``theta ~ prior`` is written as a NumPyro model of sample sites (constrained supports are
mapped to the real line by NumPyro's bijections), and ``model_fn(theta)`` builds the
``StateSpaceModel`` of the latent path and the data. Inference runs on the flat
unconstrained vector ``u`` (shape ``(D,)``) with ``theta = T(u)``; the prior density of ``u``
includes the log-Jacobian of ``T``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from particlekit.ssm import StateSpaceModel

__all__ = ["ParametricSSM", "check_model_and_data", "draws_with_paths", "unconstrain_params"]

#: the latent paths' name among the parameters' draws (a prior site may not take it)
PATHS_NAME = "x"

LOW_ACCEPTANCE = 0.02
"""A chain of PMMH or particle Gibbs whose random walk on ``theta`` accepts less often than
this hardly moves: both warn."""


@dataclass(frozen=True)
class ParametricSSM:
    """A state-space model ``model_fn(theta)`` with a NumPyro prior on ``theta``.

    Parameters
    ----------
    prior : callable
        A NumPyro model without arguments whose sample sites are the parameters, e.g.
        ``numpyro.sample("rho", dist.Uniform(-1, 1))``. Sites must be continuous and
        proper (they are sampled to start the chains); ``numpyro.deterministic`` sites are
        passed on to ``model_fn`` too. ``numpyro.factor`` terms and sites under
        ``numpyro.handlers.scale`` change the prior's density (``log_prior`` is NumPyro's
        ``-potential_fn``); SMC² weights its prior draws by the change
        (``log_draw_weight``).
    model_fn : callable
        ``model_fn(theta) -> StateSpaceModel`` where ``theta`` is the dict of the prior's
        site values (traceable: ``theta`` holds JAX arrays under ``jit`` / ``vmap``).

    Examples
    --------
    A local-level model (random walk observed with noise) with unknown noise scales:

    >>> import jax, numpyro, numpyro.distributions as dist, particlekit as pk
    >>> def prior():
    ...     numpyro.sample("sigma_x", dist.HalfNormal(1.0))
    ...     numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(x_prev, theta["sigma_x"]),
    ...         observation=lambda x, t: dist.Normal(x, theta["sigma_y"]))
    >>> model = pk.statespace.ParametricSSM(prior, model_fn)
    >>> model.names, model.dim
    (('sigma_x', 'sigma_y'), 2)
    """

    prior: Callable
    model_fn: Callable[[dict], StateSpaceModel]

    def __post_init__(self):
        if not callable(self.prior):
            raise ValueError("prior must be a NumPyro model function (no arguments)")
        if not callable(self.model_fn):
            raise ValueError("model_fn must be a function theta -> pk.StateSpaceModel")

    # ------------------------------------------------------------------ the prior
    @cached_property
    def _info(self):
        from particlekit.infer.numpyro_adapter import inspect_model

        # (an observed-only prior: inspect_model names its observed sites)
        info = inspect_model(self.prior, purpose="a ParametricSSM prior")
        if info.observed:
            raise ValueError(
                f"the prior has observed sites {sorted(info.observed)}: it should only draw "
                "the parameters; the data go to pmmh / smc2 as ys"
            )
        if PATHS_NAME in info.latent_names:
            raise ValueError(
                f"the prior has a site named {PATHS_NAME!r}, the name of the latent paths in "
                "get_samples() and ArviZ: rename the parameter (e.g. 'rho')"
            )
        return info

    @cached_property
    def _target(self):
        from particlekit.infer.numpyro_adapter import make_target

        return make_target(self.prior, (), {}, self._info)

    @cached_property
    def _draws_target(self):
        from particlekit.infer.numpyro_adapter import make_target

        return make_target(self.prior, (), {}, self._info, prior_of_draws=True)

    @property
    def names(self) -> tuple:
        """The prior's sample sites, in trace order."""
        return self._info.latent_names

    @property
    def dim(self) -> int:
        """``D``: the dimension of the unconstrained parameter vector."""
        return self._info.dim

    def log_prior(self, u: jax.Array) -> jax.Array:
        """``log p(u)``: the prior of the unconstrained vector ``u`` (``(D,)``), log-Jacobian
        included, with the prior's ``numpyro.factor`` terms (and the change of density of
        sites under ``numpyro.handlers.scale``): ``-potential_fn(u)`` of NumPyro."""
        log_p, factors = self._target.log_prior_and_likelihood(u)
        return log_p + factors

    def log_draw_weight(self, u: jax.Array) -> jax.Array:
        """``log p(u) - log q(u)`` where ``q`` is the law of ``sample_prior``'s draws: the
        prior's ``numpyro.factor`` terms and the change of density of sites under
        ``numpyro.handlers.scale`` or a mask (zero for a plain prior). Samplers that start
        from prior draws (SMC²) weight them by it."""
        return self._draws_target.log_prior_and_likelihood(u)[1]

    def constrain(self, u: jax.Array) -> dict:
        """``theta = T(u)``: the dict of constrained site values (and deterministic sites)."""
        return self._target.constrain(u)

    def sample_prior(self, key: jax.Array, num_samples: int) -> jax.Array:
        """``(num_samples, D)`` prior draws of ``u``."""
        return self._target.initial_positions(key, num_samples)

    def ssm(self, u: jax.Array) -> StateSpaceModel:
        """The ``StateSpaceModel`` at the unconstrained parameters ``u``."""
        return self.model_fn(self.constrain(u))

    # ------------------------------------------------------------------ checks
    def validate(self, ys, num_particles: int | None = None):
        """Check the prior and ``model_fn`` against the data before tracing: a
        ``ValueError`` that names what to fix. Returns ``ys`` as an array."""
        u0 = self.sample_prior(jax.random.key(0), 1)[0]
        ssm = self.model_fn(self.constrain(u0))
        if not isinstance(ssm, StateSpaceModel):
            raise ValueError(
                f"model_fn(theta) must return a pk.StateSpaceModel, got {type(ssm).__name__}"
            )
        return ssm.validate(ys, num_particles)


def draws_with_paths(theta: dict, paths, group_by_chain: bool = False) -> dict:
    """``{site: draws}`` plus ``"x"`` (``PATHS_NAME``) for latent paths (if any), leading
    axes ``(chain, draw)``; chains concatenated unless ``group_by_chain``: the
    ``get_samples`` of every result of this family."""
    out = dict(theta)
    if paths is not None:
        out[PATHS_NAME] = paths
    if group_by_chain:
        return out
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)


def warn_if_nan_likelihood(counts, algorithm: str, unit: str) -> None:
    """A ``UserWarning`` when any of ``counts`` (one per ``unit``: chain or run) of NaN
    log-densities is nonzero (``PMMHResult.num_nonfinite``, ``SMC2Result.num_nonfinite``):
    the recipes read those parameter values as impossible, which a model undefined there
    by mistake (e.g. ``jnp.sqrt`` of a negative value) turns into a silently truncated
    posterior."""
    counts = np.asarray(counts)
    if not counts.any():
        return
    warnings.warn(
        f"{algorithm}: the model's log-density was NaN (a NaN or +inf prior or filter "
        f"potential) at {counts.tolist()} parameter values per {unit}; they were read as "
        "zero likelihood, so the posterior leaves out every region where the model is "
        "undefined. FIX: make the model defined on the whole prior support (e.g. "
        "jnp.sqrt of a parameter that can be negative), or restrict the prior to where it is",
        UserWarning,
        stacklevel=4,
    )


def check_model_and_data(model, ys, num_particles: int | None = None):
    """The entry points' first check: ``model`` must be a ``ParametricSSM`` whose prior and
    ``model_fn`` fit ``ys`` (``ParametricSSM.validate``). Returns ``ys`` as an array."""
    if not isinstance(model, ParametricSSM):
        raise ValueError(
            f"model must be a pk.statespace.ParametricSSM(prior, model_fn), got "
            f"{type(model).__name__}"
        )
    return model.validate(ys, num_particles)


def unconstrain_params(model: ParametricSSM, params: dict, what: str = "init_params"):
    """``u = T^-1(theta)`` (``(D,)``) for a dict of constrained site values, after checking
    (before tracing) that it names every site of the prior and no other, with the site's
    shape, inside the prior's support: a ``ValueError`` naming ``what`` otherwise.
    Deterministic sites of the prior and ``"x"`` (the latent paths of ``get_samples()``)
    are allowed and ignored."""
    from jax.flatten_util import ravel_pytree
    from numpyro import handlers
    from numpyro.infer.util import unconstrain_fn

    if not isinstance(params, dict):
        raise ValueError(f"{what} must be a dict {{site: value}}, got {type(params).__name__}")
    missing = set(model.names) - set(params)
    if missing:
        raise ValueError(f"{what} lacks the sites {sorted(missing)}")
    reference = model.constrain(model.sample_prior(jax.random.key(0), 1)[0])
    unknown = set(params) - set(reference) - {PATHS_NAME}  # (a pilot run's mean has "x")
    if unknown:  # a misspelt site would otherwise be ignored
        raise ValueError(
            f"{what} has sites {sorted(unknown)} the prior does not draw (its sites: "
            f"{list(model.names)})"
        )
    params = {name: jnp.asarray(params[name]) for name in model.names}
    for name in model.names:
        expected = tuple(jnp.shape(reference[name]))
        if params[name].shape != expected:  # a scalar was broadcast over a vector site
            raise ValueError(
                f"{what}[{name!r}] has shape {params[name].shape}, the prior's site has "
                f"shape {expected}"
            )
    # each site's law at these values: a support may depend on other sites (Uniform(0, a))
    substituted = handlers.substitute(handlers.seed(model.prior, jax.random.key(0)), params)
    tr = handlers.trace(substituted).get_trace()
    outside = [
        name for name in model.names if not bool(jnp.all(tr[name]["fn"].support(params[name])))
    ]  # (a finite unconstrained value does not tell: e.g. a Dirichlet's off the simplex)
    u = unconstrain_fn(model.prior, (), {}, params)
    flat, _ = ravel_pytree({name: u[name] for name in model.names})
    if outside or not bool(jnp.all(jnp.isfinite(flat))):
        raise ValueError(
            f"{what} {params} is outside the prior's support"
            + (f" (sites {outside})" if outside else "")
        )
    return flat
