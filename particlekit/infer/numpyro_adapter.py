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

import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.distribution import MaskedDistribution
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import _unconstrain_reparam, constrain_fn

__all__ = [
    "NumPyroTarget",
    "inspect_model",
    "make_target",
    "ModelInfo",
    "check_dimension",
    "invalid_prior_sites",
]


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
    has_likelihood : bool
        The model has an observed sample site or a ``numpyro.factor`` (``False``: the
        posterior is the prior, which ``SMC.run`` warns about).
    """

    latent_names: tuple
    observed: dict
    unravel_fn: Callable
    dim: int
    has_likelihood: bool = True


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
        sites, or they have no elements (``D = 0``), or observed values lie outside a
        support that the parameters do not move (``observations_outside_support``) or do
        not broadcast against their distribution's batch shape.

    Warns
    -----
    UserWarning
        Observed values broadcast against their distribution, so that each datum enters
        the likelihood several times (``_broadcast_observations``).

    An error of the model itself on the data carries a note listing the data's types and
    shapes (``data_description``).
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    key = jax.random.key(0) if key is None else key
    latent: list = []
    likelihood_sites: list = []
    broadcast: dict = {}
    checked: list = []  # a site that failed a check below (not the model's own error)
    observations: list = []  # (name, distribution, value) of the observed sites

    # One jitted trace (an eager trace of e.g. an LKJ prior dispatches hundreds of ops).
    @jax.jit
    def draw(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs)
        latent.clear()
        likelihood_sites.clear()
        observations.clear()
        unconstrained = {}
        for name, site in tr.items():
            if site["type"] == "plate":
                checked.append(name)
                _check_not_subsampled(name, site, purpose)
                checked.pop()
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                likelihood_sites.append(name)
                continue
            fn = site["fn"]
            if getattr(fn.support, "is_discrete", False) or getattr(fn, "is_discrete", False):
                enumerated = site["infer"].get("enumerate") is not None
                checked.append(name)
                raise ValueError(
                    f"latent site {name!r} is discrete (support {fn.support}); {purpose} "
                    "needs continuous latent sites"
                    + (
                        f" and does not enumerate discrete ones (the site's "
                        f"infer={{'enumerate': {site['infer']['enumerate']!r}}} is for "
                        "NumPyro's own samplers). Marginalise it out in the model (e.g. "
                        "dist.MixtureSameFamily) or observe it."
                        if enumerated
                        else ". Marginalise it out (e.g. with a mixture distribution or "
                        "funsor enumeration) or observe it."
                    )
                )
            latent.append(name)
            unconstrained[name] = biject_to(fn.support).inv(site["value"])
        observations.extend(_observed_data(tr))
        broadcast.clear()
        broadcast.update(_broadcast_observations(tr))  # shapes: static under jit
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
    except Exception as err:  # the model's own error on these data: say what the data were
        if (model_args or model_kwargs) and not checked:
            err.add_note(data_description(model_args, model_kwargs))
        raise
    mismatched = {k: v for k, v in broadcast.items() if v[1] is None}
    if mismatched:
        sites = "; ".join(
            f"{name!r}: observed values of shape {value} against a distribution of batch "
            f"shape {batch}"
            for name, (value, _, batch) in mismatched.items()
        )
        raise ValueError(
            f"observed values whose shape does not match their distribution ({sites}): "
            "the observations and the covariates (or the plate) must have the same length"
            + (". " + data_description(model_args, model_kwargs) if model_args else "")
        )
    if broadcast:
        warn_broadcast_observations(broadcast, purpose)
    outside = outside_support_message(observations)
    if outside:
        checked.append(outside)
        raise ValueError(outside + " (the run would fail at its first stage)")
    if not latent:
        raise ValueError(
            "the model has no latent sample sites: nothing to infer"
            + (f" (its observed sites {sorted(observed)} are data)" if observed else "")
        )
    flat, unravel_fn = ravel_pytree(unconstrained)
    check_dimension(int(flat.shape[0]), {name: jnp.shape(unconstrained[name]) for name in latent})
    return ModelInfo(
        tuple(latent), observed, unravel_fn, int(flat.shape[0]), bool(likelihood_sites)
    )


def _broadcast_observations(trace) -> dict:
    """``{name: (value shape, log-density shape, batch shape)}`` of the observed sample
    sites whose value is broadcast against the batch shape of its distribution, so that
    every datum enters the likelihood several times (``numpyro.factor`` sites excluded);
    the log-density shape is ``None`` where the shapes do not broadcast at all (``y`` of 40
    values against 50 means: NumPyro's message, raised later inside the compiled sampler,
    was "sub got incompatible shapes for broadcasting: (40,), (50,)", naming no site).

    The usual cause is a column vector of observations, ``y`` of shape ``(n, 1)`` (a
    ``DataFrame[["y"]]``, a 2-D ``endog``), against a location of shape ``(n,)``: the
    log-likelihood is an ``(n, n)`` array, each observation paired with every mean, inside
    a ``numpyro.plate`` too. On a linear regression the slope came out ``0.00 ± 0.04`` for
    ``2.0 ± 0.17``, ``log Z`` -5275 for -82, with agreeing chains, ``trustworthy`` and no
    warning (NumPyro's NUTS gives the same wrong posterior)."""
    found = {}
    for name, fn, value in _observed_data(trace):
        value_shape = tuple(jnp.shape(value))
        event_ndim = len(fn.event_shape)
        value_batch = value_shape[: len(value_shape) - event_ndim]
        try:
            full = tuple(jnp.broadcast_shapes(value_batch, tuple(fn.batch_shape)))
        except ValueError:
            full = None  # incompatible shapes: an error (``inspect_model``)
        if full != value_batch:
            found[name] = (value_shape, full, tuple(fn.batch_shape))
    return found


def outside_support_message(observations) -> str:
    """The sentence naming the observed sites of ``observations_outside_support``, or
    ``""``."""
    outside = observations_outside_support(observations)
    if not outside:
        return ""
    return (
        "observed values outside the support of their distribution, where its log-density "
        "is -inf whatever the parameters: "
        + "; ".join(
            f"{name!r} ({kind}, support {support}): {count} of {size} values, e.g. {example!r}"
            for name, (kind, support, count, size, example) in outside.items()
        )
        + ". Recode the data (a Bernoulli needs 0/1 labels, not -1/+1; count distributions "
        "need non-negative integers, not standardised counts) or choose a distribution whose "
        "support holds them"
    )


def observed_sites_outside_support(model, model_args=(), model_kwargs=None) -> str:
    """``outside_support_message`` of ``model`` on the data ``model_args, model_kwargs``,
    from one jitted trace (``SMC.run`` calls it only when a run failed: the check of
    ``inspect_model`` runs at the first data of each shape only)."""
    model_kwargs = {} if model_kwargs is None else model_kwargs
    observations: list = []

    @jax.jit
    def draw(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs)
        observations[:] = _observed_data(tr)
        return jnp.zeros(())

    try:
        draw(jax.random.key(0))
    except Exception:  # the model failed on these data: there is nothing to add here
        return ""
    return outside_support_message(observations)


def _concrete(obj, depth: int = 0) -> bool:
    """``obj`` (a constraint, a mask, a value) holds no tracer: its parameters come from
    the data, not from the latent draws, so it can be evaluated on the host."""
    if isinstance(obj, jax.core.Tracer):
        return False
    if isinstance(obj, (list, tuple)):
        return all(_concrete(o, depth + 1) for o in obj)
    if depth < 4 and hasattr(obj, "__dict__") and not isinstance(obj, (np.ndarray, jax.Array)):
        return all(_concrete(v, depth + 1) for v in vars(obj).values())
    return True


def observations_outside_support(observations) -> dict:
    """``{name: (distribution, support, count, size, example)}`` for the observed sites
    ``(name, distribution, value)`` with values outside a support that does not depend on
    the latent parameters (``Bernoulli``'s ``{0, 1}``, ``Poisson``'s non-negative
    integers, ``Exponential``'s positive reals; a ``Uniform(0, theta)`` with a latent
    ``theta`` is not checked). Elements that a mask (``obs_mask``,
    ``numpyro.handlers.mask``) removes are not counted, nor sites holding NaN (reported
    with their own message).

    NumPyro gives such a value the log-density ``-inf`` at every parameter value, so the
    first stage failed with a ``RuntimeWarning`` about a likelihood "positive on only a
    small part of the prior" and a suggestion of more particles: the message of a
    logistic regression with labels coded -1/+1 (scikit-learn's convention for some
    estimators) or of a Poisson GLM on standardised counts.

    Examples
    --------
    >>> import numpy as np, numpyro.distributions as dist
    >>> observations_outside_support([("y", dist.Bernoulli(0.5), np.array([1.0, -1.0, 1.0]))])
    {'y': ('BernoulliProbs', 'Boolean()', 1, 3, -1.0)}
    """
    from numpyro.distributions.distribution import MaskedDistribution

    found = {}
    for name, fn, value in observations:
        mask = True
        while isinstance(fn, MaskedDistribution):
            mask = jnp.logical_and(mask, fn._mask) if _concrete(fn._mask) else None
            fn = fn.base_dist
        try:
            support = fn.support
        except Exception:  # a distribution without a support: nothing to check
            continue
        if mask is None or not (_concrete(value) and _concrete(support)):
            continue
        try:
            values = np.asarray(value)
            if np.issubdtype(values.dtype, np.floating) and np.any(np.isnan(values)):
                continue
            inside = np.asarray(support(jnp.asarray(value)))
            outside = np.broadcast_to(~inside & np.asarray(mask), inside.shape)
        except Exception:  # a support that cannot be evaluated on its own
            continue
        if np.any(outside):
            event_ndim = np.ndim(values) - outside.ndim
            rows = values.reshape(outside.shape + values.shape[values.ndim - event_ndim :])
            example = np.asarray(rows[np.nonzero(outside)][0]).tolist()
            found[name] = (
                type(fn).__name__,
                str(support),
                int(np.sum(outside)),
                int(outside.size),
                example,
            )
    return found


def warn_broadcast_observations(broadcast: dict, purpose: str = "pk.infer.SMC") -> None:
    """The ``UserWarning`` for the sites of ``_broadcast_observations``."""
    sites = "; ".join(
        f"{name!r}: observed values of shape {value} give a log-likelihood of shape {full}"
        for name, (value, full, _) in broadcast.items()
    )
    warnings.warn(
        f"observations broadcast against their distribution, so each datum enters the "
        f"likelihood several times ({sites}). A column vector y of shape (n, 1) against a "
        f"mean of shape (n,) pairs every observation with every mean: pass y.ravel() (or "
        f"y[:, 0]). {purpose} samples the model as written; its posterior and evidence are "
        "those of the broadcast likelihood",
        UserWarning,
        stacklevel=5,  # the caller of SMC.run
    )


def data_description(model_args, model_kwargs) -> str:
    """A note for an error raised by the model while it was traced on the data of
    ``run``: the type and shape of every argument (a pandas object, a list or a scalar is
    passed to the model as it is, and fails on traced parameters or lacks ``.shape``).

    Examples
    --------
    >>> import numpy as np
    >>> data_description((np.ones((50, 3)), [1.0]), {"y": np.zeros(40, np.int32)})[:72]
    'The data passed to the model: args[0] float64 (50, 3), args[1] list of 1'
    """
    parts = []
    items = [(f"args[{i}]", a) for i, a in enumerate(model_args)]
    items += [(str(k), v) for k, v in model_kwargs.items()]
    for name, value in items:
        if isinstance(value, (jax.Array,)) or hasattr(value, "dtype") and hasattr(value, "shape"):
            kind = "" if isinstance(value, (jax.Array, np.ndarray)) else type(value).__name__ + " "
            parts.append(f"{name} {kind}{value.dtype} {tuple(value.shape)}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{name} {type(value).__name__} of {len(value)}")
        else:
            parts.append(f"{name} {type(value).__name__}")
    return (
        f"The data passed to the model: {', '.join(parts)}. Arrays of one data "
        "set need matching lengths; pandas objects and lists are passed to the model as they "
        "are: convert them with np.asarray (or .to_numpy())"
    )


def _check_not_subsampled(name: str, site, purpose: str) -> None:
    """A ``ValueError`` for ``numpyro.plate(name, size, subsample_size=m)`` with ``m < size``:
    the log-likelihood would be a random mini-batch estimate, redrawn at every evaluation
    (tempering, reweighting and Metropolis–Hastings all need the exact one). NumPyro itself
    fails later, inside the compiled sampler, with a message about a missing random key that
    points to SVI or HMCECS."""
    size, subsample_size = site["args"][:2]
    if subsample_size is not None and subsample_size != size:
        raise ValueError(
            f"plate {name!r} subsamples {subsample_size} of {size} elements; {purpose} needs "
            "the exact likelihood of all the data: drop subsample_size (or set it to the "
            "plate's size)"
        )


def invalid_prior_sites(model, model_args, model_kwargs, info: ModelInfo, positions) -> dict:
    """``{name: count}``: the latent sites whose unconstrained value or log-density (with
    its log-Jacobian) is NaN or ``+inf`` at some of ``positions`` ``(..., D)`` (the prior
    draws), and at how many. That is a draw on, or rounded onto, the boundary of the
    site's support in floating point (a ``Dirichlet(0.1 * ones(10))`` draw in float32 has
    an exact 0 about once in 2000): used to explain an invalid log-prior.

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> def model():
    ...     numpyro.sample("a", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("s", dist.HalfNormal(1.0))
    >>> info = inspect_model(model)
    >>> invalid_prior_sites(model, (), {}, info, jnp.array([[0.0, -jnp.inf], [0.0, 0.0]]))
    {'s': 1}
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs

    def per_site(u):
        params = info.unravel_fn(u)
        substituted = handlers.substitute(
            model, substitute_fn=partial(_unconstrain_reparam, params)
        )
        tr = handlers.trace(substituted).get_trace(*model_args, **model_kwargs)
        bad = {}
        for name in info.latent_names:
            lp = _site_log_prob(tr[name])
            log_det = tr.get(f"_{name}_log_det")
            if log_det is not None:
                lp = lp + _site_log_prob(log_det)
            finite_u = jnp.all(jnp.isfinite(params[name]))
            bad[name] = ~finite_u | jnp.isnan(lp) | (lp == jnp.inf)
        return bad

    flat = jnp.reshape(jnp.asarray(positions), (-1, info.dim))
    bad = jax.jit(jax.vmap(per_site))(flat)
    counts = {name: int(jnp.sum(v)) for name, v in bad.items()}
    return {k: v for k, v in counts.items() if v}


def check_dimension(dim: int, shapes: dict) -> None:
    """A ``ValueError`` for latent sites with no elements at all (``D = 0``, e.g. a weight
    vector sized by an empty design matrix): there is nothing to infer, and the move's tuning
    (scales ``D^(-1/4)``, covariances ``(D, D)``) would fail inside the trace with an
    unrelated error (it raised ``ZeroDivisionError``).

    Examples
    --------
    >>> check_dimension(0, {"w": (0,)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the latent sites have no elements (unconstrained shapes {'w': (0,)}): ...
    """
    if dim == 0:
        raise ValueError(
            f"the latent sites have no elements (unconstrained shapes {shapes}): nothing to infer"
        )


def observed_values(model, model_args=(), model_kwargs=None) -> dict:
    """The values of ``model``'s observed sample sites (``numpyro.factor`` sites excluded)
    for the data ``model_args, model_kwargs``, from one eager host-side trace."""
    model_kwargs = {} if model_kwargs is None else model_kwargs
    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(
        *model_args, **model_kwargs
    )
    return _observed_sites(tr)


def _observed_data(trace) -> list:
    """``(name, distribution, value)`` of a trace's observed sample sites,
    ``numpyro.factor`` excluded."""
    return [
        (name, site["fn"], site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"] and not _is_factor(site)
    ]


def _observed_sites(trace) -> dict:
    """``{name: value}`` of a trace's observed sample sites, ``numpyro.factor`` excluded."""
    return {name: value for name, _, value in _observed_data(trace)}


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


def _draw_log_prob(site):
    """``(drawn, kept)`` for a latent (or log-Jacobian) site under ``numpyro.handlers.scale``
    or a mask, or ``None`` when neither applies (the usual case, with no extra evaluation).

    ``drawn`` is the summed log-density of the distribution the site is *drawn* from (the
    handlers change a site's density but not its draws). ``kept`` is its density in the
    tempering target: ``scale * log p`` on the elements the mask keeps, as in the model, and
    ``log p`` (the density they are drawn from) on the elements it masks out. NumPyro gives
    masked-out latent elements no density at all, i.e. a flat, improper one: a tempered
    target would then end improper and the evidence diverge. The usual source is
    ``numpyro.sample(..., obs=y, obs_mask=m)``, whose latent ``<name>_unobserved`` site
    has an element for every datum, masked out where it is observed; those elements feed
    nothing else, so drawing them from their distribution changes no other marginal and
    not the evidence (they integrate to 1). Before this, an imputation model gave
    ``log Z = +21`` for an exact ``-4.5``, a posterior sd of the mean 0.8 for 0.5, and no
    warning."""
    fn = site["fn"]
    if site["scale"] is None and not isinstance(fn, MaskedDistribution):
        return None
    mask = True
    while isinstance(fn, MaskedDistribution):
        mask = jnp.logical_and(mask, fn._mask)
        fn = fn.base_dist
    value = site["value"]
    intermediates = site.get("intermediates")
    log_prob = fn.log_prob(value, intermediates) if intermediates else fn.log_prob(value)
    scale = 1.0 if site["scale"] is None else site["scale"]
    kept = jnp.where(mask, scale * log_prob, log_prob)
    return jnp.sum(log_prob), jnp.sum(kept)


def make_target(
    model, model_args, model_kwargs, info: ModelInfo, *, prior_of_draws: bool = False
) -> NumPyroTarget:
    """Build the ``NumPyroTarget`` of ``model`` at the given (possibly traced) data.

    ``prior_of_draws=True`` (what tempered SMC needs) makes the log-prior the density of
    the prior *draws*: a latent site under ``numpyro.handlers.scale`` (or a mask) is drawn
    from its unscaled distribution, so only that goes into the prior, and the handler's
    change of density, ``(scale - 1) log p`` (with the log-Jacobian's), into the
    likelihood. The sum is ``-potential_fn`` either way, except on the elements of a latent
    site that a mask removes: NumPyro gives them no density (improper), the target here
    the density they are drawn from (see ``_draw_log_prob``; ``obs_mask`` imputation).
    With the default ``False`` the scaled density stays in the prior (a prior's density in
    MCMC). Without
    the split, tempered SMC started from draws of ``p`` but weighted them as draws of
    ``p^scale``: the evidence was that of the unscaled model.

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
                split = _draw_log_prob(site) if prior_of_draws else None
                if split is None:
                    log_prior = log_prior + lp
                else:  # a scaled or masked site: the handler's change is a likelihood term
                    drawn, kept = split
                    log_prior = log_prior + drawn
                    log_lik = log_lik + jnp.where(jnp.isfinite(drawn), kept - drawn, 0.0)
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
