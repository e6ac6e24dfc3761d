"""The one converter from particlekit results to ArviZ.

We build plain ``xarray.Dataset`` groups and wrap them per ArviZ version: an
``az.InferenceData`` for arviz < 1 (Python 3.11) and an ``xarray.DataTree`` for arviz >= 1
(Python >= 3.12). Building the datasets ourselves keeps the stage group rectangular with
dims ``(chain, stage)`` only (arviz 1.x ``from_dict`` would put ``chain × draw`` on it).

Groups of ``from_smc``:

- ``posterior``: equally weighted draws, dims ``(chain, draw, ...)``;
- ``sample_stats``: ``lp`` ``(chain, draw)`` (log-prior with Jacobians + log-likelihood, i.e.
  ``-potential_energy``), ``log_marginal_likelihood``, ``failed`` (a stage had every weight
  zero: ``log_marginal_likelihood`` is ``-inf`` and the chain's draws are not posterior
  draws), ``reached_max_stages`` (the schedule stopped short of ``beta = 1``) and
  ``num_nonfinite`` (NaN / ``+inf`` log-potentials counted as zero weight), ``(chain,)``;
- ``smc_stages``: ``beta``, ``ess``, ``acceptance_rate``, ``num_mcmc_steps``,
  ``log_evidence_increment``, ``scale``, ``trajectory_length``, ``correlation``,
  ``capped``, dims ``(chain, stage)``, NaN after a chain's last stage;
- ``weighted_particles``: the last stage's population before the final resampling and its
  normalised ``log_weight``, dims ``(chain, particle, ...)``;
- ``log_likelihood``: pointwise log-likelihood of each observed site, ``(chain, draw, ...)``
  (NumPyro models only: a ``LogDensityModel`` has one total, in
  ``sample_stats``' ``lp``);
- ``observed_data``.

State-space results (``to_inference_data()`` of each result calls these). Every group has a
leading ``chain`` dim: one run is one chain, and a batch of runs made with ``jax.vmap``
(one leading axis over every array of the result) is several chains. The batch is detected
from the result's log-evidence (or ``failed``) array: a scalar per run, one more axis for a
batch (``ValueError`` for more). Pytree states and functionals give one variable per leaf,
named by its dict keys / attribute names joined by ``_`` (a bare array is ``x`` for a state,
``S`` for an additive functional, ``theta`` / ``phi`` for parameters); a leaf's own dims are
``<name>_dim_<i>``. ``observed_data`` holds ``y`` (dims ``time, ...``) when ``ys`` is given.

``from_filter`` (``FilterResult``):

- ``filtering``: ``<x>_mean`` and ``<x>_variance`` (the filtering moments
  ``E[x_t | y_{0:t}]``, ``Var[x_t | y_{0:t}]``, with ``keep_history=True`` only), ``ess``,
  ``log_evidence_increment``, ``resampled``, ``num_nonfinite``, dims ``(chain, time, ...)``;
- ``sample_stats``: ``log_marginal_likelihood`` and ``failed``, dims ``(chain,)``;
- ``weighted_particles``: the final population ``<x>`` and its normalised ``log_weight``,
  dims ``(chain, particle, ...)``.

``from_trajectories`` (the paths of ``smoothing.ffbs``): ``posterior`` with ``<x>``, dims
``(chain, draw, time, ...)``.

``from_paris`` (``PaRISResult``):

- ``estimate``: the estimate of each functional, ``(chain, ...)``;
- ``online_estimates``: the estimates after each observation, ``(chain, time, ...)``;
- ``filtering``: ``ess``, ``resampled``, ``num_nonfinite``, ``mean_trials``, ``num_exact``,
  ``(chain, time)``;
- ``sample_stats``: ``log_marginal_likelihood``, ``failed``, ``(chain,)``;
- ``weighted_particles``: ``<x>``, ``log_weight`` and the statistics ``tau_<S>``,
  ``(chain, particle, ...)``.

``from_csmc`` (``CSMCResult``; a scalar log-evidence is one draw of one chain, one batch
axis is chains, two are ``(chain, draw)``):

- ``posterior``: the new trajectory ``<x>``, ``(chain, draw, time, ...)``;
- ``sample_stats``: ``log_evidence`` (of the conditional sweep, a diagnostic), ``failed``,
  the total ``num_nonfinite`` and ``num_above_bound`` (backward proposals above a too-small
  ``log_transition_bound``), ``(chain, draw)``;
- ``filtering``: ``ess`` and ``num_nonfinite`` per step, ``(chain, draw, time)``.

``from_ppg`` (``PPGResult``):

- ``posterior``: the per-iteration estimates ``hat S_k`` as a trace ``(chain, draw, ...)``
  (iterations ``k >= burn_in``; the first ``burn_in`` in ``warmup_posterior``);
- ``sample_stats`` (``warmup_sample_stats``): ``log_evidence`` of each sweep and
  ``reference_alone`` (the reference held all the weight at some step of it),
  ``(chain, draw)``;
- ``estimate``: the roll-out estimate, ``(chain, ...)``;
- ``reference``: the final reference trajectory ``<x>``, ``(chain, time, ...)``.

``from_particle_gibbs`` (``ParticleGibbsResult``): ``posterior`` with the parameters
(named as in ``from_mle``), ``(chain, draw, ...)``, and the states ``x``,
``(chain, draw, time, ...)``, and ``sample_stats`` with ``acceptance_rate``, ``failed``,
``num_nonfinite``, dims ``(chain, draw)``.

``observed_data`` must have as many time steps as the result's ``time`` dim (when it has
one): ``ys`` of another length is a ``ValueError``. Two leaves of a pytree whose joined
names are equal (``{"a": {"b": ...}, "a_b": ...}``) are a ``ValueError``, not one variable.

``from_mle`` (``learning.MLEResult``):

- ``theta_trace``: the iterates, ``(chain, iteration, ...)``;
- ``score_trace``: the score estimates, ``(chain, iteration, ...)``;
- ``theta`` and ``theta_average``: the final iterate and the Polyak–Ruppert average,
  ``(chain, ...)``;
- ``iteration_stats``: ``log_evidence`` at each iterate, ``(chain, iteration)``, and
  ``failed`` / ``num_failed`` (iterations whose failed sweep was skipped), ``(chain,)``.

``from_score_climbing`` (``learning.ScoreClimbingResult``):

- ``phi_trace``, ``phi``, ``phi_average``: as ``theta_trace``, ``theta``,
  ``theta_average`` of ``from_mle``;
- ``posterior``: the conditional-SMC paths ``<x>`` (a Markov chain on ``p(x | y)``),
  ``(chain, draw, time, ...)``, draw ``k`` being iteration ``k``;
- ``iteration_stats``: ``num_nonfinite`` ``(chain, iteration, time)`` and ``failed``
  ``(chain,)``.
"""

from __future__ import annotations

import datetime

import jax
import numpy as np
import xarray as xr

from particlekit.types import path_key_name

__all__ = [
    "from_smc",
    "from_draws",
    "wrap_groups",
    "arviz_major_version",
    "from_filter",
    "from_trajectories",
    "from_paris",
    "from_csmc",
    "from_ppg",
    "from_particle_gibbs",
    "from_mle",
    "from_score_climbing",
    "from_mcmc_draws",
    "from_fk_steering",
    "from_fk_corrector",
    "from_pdds",
    "from_svdd",
    "from_best_of_n",
    "from_rollover",
    "from_sequence_steering",
    "from_sequence_gibbs",
    "from_sequence_tempering",
]


def arviz_major_version() -> int:
    """Major version of the installed ArviZ."""
    import arviz as az

    return int(az.__version__.split(".")[0])


def _dataset(variables: dict, sample_dims: list[str], attrs: dict | None = None) -> xr.Dataset:
    data_vars = {}
    coords: dict = {}
    for name, value in variables.items():
        value = np.asarray(value)
        extra = [f"{name}_dim_{i}" for i in range(value.ndim - len(sample_dims))]
        for dim, size in zip(extra, value.shape[len(sample_dims) :], strict=True):
            coords[dim] = np.arange(size)
        data_vars[name] = (sample_dims + extra, value)
    for dim, size in zip(sample_dims, _sample_shape(variables, sample_dims), strict=False):
        coords[dim] = np.arange(size)
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))


def _sample_shape(variables, sample_dims):
    for value in variables.values():
        return np.shape(value)[: len(sample_dims)]
    return ()


def wrap_groups(groups: dict, attrs: dict | None = None):
    """Wrap ``{group: xr.Dataset}`` as ``az.InferenceData`` (arviz < 1) or
    ``xr.DataTree`` (arviz >= 1)."""
    if arviz_major_version() >= 1:
        tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in groups.items()})
        tree.attrs.update(attrs or {})
        return tree
    import arviz as az

    return az.InferenceData(**groups, attrs=attrs, warn_on_custom_groups=False)


def from_draws(posterior: dict, sample_stats: dict | None = None, attrs: dict | None = None):
    """Wrap MCMC-style draws ``{name: array (chain, draw, ...)}`` for ArviZ (any version).

    Examples
    --------
    >>> import numpy as np
    >>> data = from_draws({"theta": np.zeros((2, 10))})
    >>> sorted(data.children if hasattr(data, "children") else data.groups())
    ['posterior']
    """
    for group, variables in (("posterior", posterior), ("sample_stats", sample_stats or {})):
        if not isinstance(variables, dict):
            raise ValueError(f"{group} must be a dict {{name: array (chain, draw, ...)}}")
        for name, value in variables.items():
            if np.ndim(value) < 2:
                raise ValueError(
                    f"{group}[{name!r}] must be an array (chain, draw, ...), got shape "
                    f"{np.shape(value)}"
                )
    groups = {"posterior": _dataset(posterior, ["chain", "draw"])}
    if sample_stats:
        groups["sample_stats"] = _dataset(sample_stats, ["chain", "draw"])
    return wrap_groups(groups, attrs)


def from_smc(smc):
    """Convert a finished ``particlekit.infer.SMC`` run to ArviZ.

    Parameters
    ----------
    smc : particlekit.infer.SMC
        After ``.run(...)``.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        With the groups listed in this module's docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> import arviz as az, particlekit as pk
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> smc = pk.infer.SMC(model, num_particles=200, num_chains=2)
    >>> smc.run(jax.random.key(0), jnp.array(0.5))
    >>> idata = pk.arviz.from_smc(smc)
    >>> float(idata.sample_stats["log_marginal_likelihood"].mean()) < 0
    True
    """
    from numpyro.infer.util import log_likelihood

    from particlekit.infer.log_density import LogDensityModel
    from particlekit.infer.numpyro_adapter import observed_values

    result = smc.diagnostics
    model_args, model_kwargs = smc._args
    info = smc._info
    now = datetime.datetime.now(datetime.UTC).isoformat()
    attrs = {
        "created_at": now,
        "inference_library": "particlekit",
        "num_particles": smc.num_particles,
        "num_chains": smc.num_chains,
    }
    samples = {k: np.asarray(v) for k, v in smc.get_samples(group_by_chain=True).items()}
    groups = {"posterior": _dataset(samples, ["chain", "draw"], attrs)}

    groups["sample_stats"] = _dataset(
        {"lp": result.log_prior + result.log_likelihood}, ["chain", "draw"], attrs
    )
    groups["sample_stats"]["log_marginal_likelihood"] = ("chain", result.log_evidence)
    # a failed chain (every weight zero at some stage) still has draws (the population it
    # stopped with), and one that hit max_stages never reached the posterior: flag both
    for name in ("failed", "reached_max_stages", "num_nonfinite"):
        groups["sample_stats"][name] = ("chain", np.asarray(getattr(result, name)))

    stages = result.stages
    groups["smc_stages"] = _dataset(
        {
            "beta": stages.temperature,
            "ess": stages.ess,
            "acceptance_rate": stages.acceptance_rate,
            "num_mcmc_steps": stages.num_mcmc_steps,
            "log_evidence_increment": stages.log_evidence_increment,
            "scale": stages.scale,
            "trajectory_length": stages.trajectory_length,
            "correlation": stages.correlation,
            "capped": stages.capped,
        },
        ["chain", "stage"],
        attrs,
    )
    groups["smc_stages"]["num_stages"] = ("chain", result.num_stages)

    weighted, log_w = smc.get_weighted_samples(group_by_chain=True)
    weighted = {k: np.asarray(v) for k, v in weighted.items()}
    weighted["log_weight"] = np.asarray(log_w)
    groups["weighted_particles"] = _dataset(weighted, ["chain", "particle"], attrs)

    loglik = {}
    if not isinstance(smc.model, LogDensityModel):  # pointwise terms need NumPyro sites
        latent = {
            k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items() if k in info.latent_names
        }
        loglik = log_likelihood(smc.model, latent, *model_args, batch_ndims=1, **model_kwargs)
        c, n = smc.num_chains, smc.num_particles
        loglik = {k: np.asarray(v).reshape((c, n) + np.shape(v)[1:]) for k, v in loglik.items()}
    if loglik:
        groups["log_likelihood"] = _dataset(loglik, ["chain", "draw"], attrs)
    # the last run's data (``info`` is cached per data shape, its values from the first)
    observed = {} if isinstance(smc.model, LogDensityModel) else info.observed
    if observed:
        observed = observed_values(smc.model, model_args, model_kwargs)
        groups["observed_data"] = _dataset(
            {k: np.asarray(v) for k, v in observed.items()}, [], attrs
        )
    return wrap_groups(groups, attrs)


# --------------------------------------------------------------------------------------
# state-space results
# --------------------------------------------------------------------------------------
def _attrs(result_name: str, **extra) -> dict:
    attrs = {
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "inference_library": "particlekit",
        "particlekit_result": result_name,
    }
    attrs.update(extra)
    return attrs


def _named(tree, default: str) -> dict:
    """``{name: np.ndarray}`` of the leaves of ``tree``: keys / attribute names / indices
    joined by ``_``; a bare array is ``default``; a name starting with a digit (a tuple
    entry) gets ``default_`` in front."""
    if tree is None:
        return {}
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        name = "_".join(path_key_name(k) for k in path) or default
        if name[0].isdigit():
            name = f"{default}_{name}"
        if name in out:  # {"a": {"b": ...}, "a_b": ...}: one would overwrite the other
            raise ValueError(
                f"two leaves of the {default!r} pytree are both named {name!r} (keys joined "
                "by '_'); rename one of them"
            )
        out[name] = np.asarray(jax.device_get(leaf))
    return out


def _group(
    variables: dict,
    sample_dims: list[str],
    attrs: dict | None = None,
    prefix: dict | None = None,
    dims: dict | None = None,
) -> xr.Dataset:
    """As ``_dataset``, with the extra dims of variable ``v`` named ``<prefix[v]>_dim_<i>``
    (default ``prefix[v] = v``, so that ``x_mean`` and ``x_variance`` share ``x_dim_0``)
    and ``dims[v]`` replacing ``sample_dims`` for the leading dims of ``v``."""
    prefix, dims = prefix or {}, dims or {}
    data_vars: dict = {}
    coords: dict = {}
    for name, value in variables.items():
        value = np.asarray(value)
        lead = list(dims.get(name, sample_dims))
        if value.ndim < len(lead):
            raise ValueError(f"{name} has shape {value.shape}, expected dims {lead} at least")
        stem = prefix.get(name, name)
        var_dims = lead + [f"{stem}_dim_{i}" for i in range(value.ndim - len(lead))]
        for dim, size in zip(var_dims, value.shape, strict=True):
            coords[dim] = np.arange(size)
        data_vars[name] = (var_dims, value)
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))


def _field(result, name: str, what: str):
    """``result.name``, or a ``ValueError`` saying that the converter takes a ``what`` (an
    ``AttributeError`` from deep inside otherwise)."""
    if not hasattr(result, name):
        raise ValueError(f"expected a particlekit {what}, got {type(result).__name__}")
    return getattr(result, name)


def _is_batched(value, base_ndim: int, what: str) -> bool:
    """Whether ``value`` (a scalar per run with ``base_ndim`` dims) has one leading batch
    axis (a ``jax.vmap`` over runs)."""
    extra = np.ndim(value) - base_ndim
    if extra not in (0, 1):
        raise ValueError(
            f"{what}: expected one run or one leading batch axis of runs (jax.vmap), got "
            f"{np.ndim(value)} dims where one run has {base_ndim}; reshape nested batches "
            "into one axis first"
        )
    return extra == 1


def _with_chain(variables: dict, batched: bool) -> dict:
    return variables if batched else {k: v[None] for k, v in variables.items()}


def _observations(ys):
    """``ys`` as the filters read it: a list or tuple of observations (``[0.1, 0.4]``)
    is one array, as ``jnp.asarray`` makes it, not a pytree of scalar leaves (a ragged
    one, which no filter takes, stays a pytree)."""
    if isinstance(ys, list | tuple):
        try:
            return np.asarray(jax.device_get(ys))
        except ValueError:
            return ys
    return ys


def _observed(groups: dict, ys, attrs: dict, name: str = "y", scalars: bool = False) -> None:
    """``observed_data`` from ``ys`` (leading axis ``time``; a pytree gives one variable
    per leaf, named by its keys), after checking that its length is the number of time
    steps of the result's groups (when they have one): ``ys`` of another series, or the
    states ``xs`` passed by mistake, would be stored silently."""
    if ys is None:
        return
    variables = _named(_observations(ys), name)
    # a scalar (from_mcmc_draws only: ``observed`` may hold more than ys) has no time
    scalar = {k: [] for k, v in variables.items() if scalars and v.ndim == 0}
    observed = _group(variables, ["time"], attrs, dims=scalar)
    num_steps = {int(ds.sizes["time"]) for ds in groups.values() if "time" in ds.sizes}
    if "time" in observed.sizes and num_steps and int(observed.sizes["time"]) not in num_steps:
        raise ValueError(
            f"ys has {int(observed.sizes['time'])} time steps but the result has "
            f"{min(num_steps)}: pass the observations the result was computed from"
        )
    if "observed_data" in groups:
        clash = set(groups["observed_data"].data_vars) & set(observed.data_vars)
        if clash:
            raise ValueError(f"two observed variables are named {sorted(clash)[0]!r}")
        observed = xr.merge([groups["observed_data"], observed], combine_attrs="override")
    groups["observed_data"] = observed


def _normalised(log_weights) -> np.ndarray:
    """Normalised log-weights along the last axis: ``log W_i`` (``-inf`` for zero weight),
    uniform (``-log N``) where every weight is zero, as ``SteeringResult.weights``; never
    NaN."""
    from particlekit.resampling import sanitize_log_weights

    jnp = jax.numpy
    log_w = sanitize_log_weights(jnp.asarray(log_weights))
    total = jax.nn.logsumexp(log_w, axis=-1, keepdims=True)
    alive = jnp.isfinite(total)
    uniform = -jnp.log(jnp.asarray(log_w.shape[-1], log_w.dtype))
    return np.asarray(jnp.where(alive, log_w - jnp.where(alive, total, 0.0), uniform))


def from_filter(result, ys=None):
    """Convert a particle filter's ``FilterResult`` (of one run, or a ``jax.vmap`` batch of
    runs: then one chain per run) to ArviZ.

    Parameters
    ----------
    result : particlekit.filters.FilterResult
    ys : Array of shape (T, ...), optional
        The observations, stored in ``observed_data``.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Groups ``filtering``, ``sample_stats``, ``weighted_particles`` (and
        ``observed_data``), as listed in this module's docstring.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 20)
    >>> res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=100)
    >>> data = pk.arviz.from_filter(res, ys)
    >>> data["filtering"]["x_mean"].dims
    ('chain', 'time')
    """
    batched = _is_batched(_field(result, "log_evidence", "FilterResult"), 0, "FilterResult")
    attrs = _attrs("FilterResult", num_particles=int(np.shape(result.final_state.log_weights)[-1]))
    per_time: dict = {}
    prefix: dict = {}
    if result.particles is not None:

        def moments(particles, log_weights):
            one = result._replace(particles=particles, log_weights=log_weights)
            return one.filtering_mean(), one.filtering_variance()

        if batched:
            moments = jax.vmap(moments)
        mean, var = moments(result.particles, result.log_weights)
        for name, value in _named(mean, "x").items():
            per_time[f"{name}_mean"], prefix[f"{name}_mean"] = value, name
        for name, value in _named(var, "x").items():
            per_time[f"{name}_variance"], prefix[f"{name}_variance"] = value, name
    per_time.update(
        ess=np.asarray(result.ess),
        log_evidence_increment=np.asarray(result.log_evidence_increments),
        resampled=np.asarray(result.resampled),
        num_nonfinite=np.asarray(result.num_nonfinite),
    )
    groups = {"filtering": _group(_with_chain(per_time, batched), ["chain", "time"], attrs, prefix)}
    stats = {
        "log_marginal_likelihood": np.asarray(result.log_evidence),
        "failed": np.asarray(result.failed),
    }
    groups["sample_stats"] = _group(_with_chain(stats, batched), ["chain"], attrs)
    final = result.final_state
    weighted = _named(final.particles, "x")
    weighted["log_weight"] = _normalised(final.log_weights)
    groups["weighted_particles"] = _group(
        _with_chain(weighted, batched), ["chain", "particle"], attrs
    )
    _observed(groups, ys, attrs)
    return wrap_groups(groups, attrs)


def from_trajectories(paths, ys=None, *, batched: bool = False):
    """Convert smoothing trajectories (``particlekit.smoothing.ffbs``) to ArviZ: a
    ``posterior`` group with ``x`` (or one variable per leaf of a pytree state), dims
    ``(chain, draw, time, ...)``.

    Parameters
    ----------
    paths : PyTree
        Leaves ``(num_samples, T, ...)`` (one chain), or ``(num_chains, num_samples, T, ...)``
        with ``batched=True`` (e.g. FFBS on a ``jax.vmap`` batch of filters).
    ys : Array of shape (T, ...), optional
        The observations, stored in ``observed_data``.
    batched : bool
        Whether the leaves have a leading axis of chains (a state's own dims make the
        number of dims ambiguous, so it is not guessed).

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 20)
    >>> res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=100)
    >>> paths = pk.smoothing.ffbs(jax.random.key(2), ssm, res, 50)
    >>> pk.arviz.from_trajectories(paths, ys)["posterior"]["x"].shape
    (1, 50, 20)
    """
    attrs = _attrs("ffbs")
    groups = {
        "posterior": _group(
            _with_chain(_named(paths, "x"), bool(batched)), ["chain", "draw", "time"], attrs
        )
    }
    _observed(groups, ys, attrs)
    return wrap_groups(groups, attrs)


def from_paris(result, ys=None):
    """Convert a ``PaRISResult`` (``particlekit.smoothing.paris``; one run or a
    ``jax.vmap`` batch of runs, one chain each) to ArviZ.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Groups ``estimate``, ``online_estimates``, ``filtering``, ``sample_stats``,
        ``weighted_particles`` (and ``observed_data``), as listed in this module's
        docstring.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 20)
    >>> res = pk.smoothing.paris(jax.random.key(1), ssm, ys, additive_fn=lambda xp, x, t: x,
    ...                          initial_fn=lambda x: x, num_particles=50)
    >>> pk.arviz.from_paris(res)["online_estimates"]["S"].dims
    ('chain', 'time')
    """
    batched = _is_batched(_field(result, "log_evidence", "PaRISResult"), 0, "PaRISResult")
    attrs = _attrs("PaRISResult", num_particles=int(np.shape(result.log_weights)[-1]))
    groups = {
        "estimate": _group(_with_chain(_named(result.estimate, "S"), batched), ["chain"], attrs),
        "online_estimates": _group(
            _with_chain(_named(result.estimates, "S"), batched), ["chain", "time"], attrs
        ),
    }
    per_time = {
        name: np.asarray(getattr(result, name))
        for name in ("ess", "resampled", "num_nonfinite", "mean_trials", "num_exact")
    }
    groups["filtering"] = _group(_with_chain(per_time, batched), ["chain", "time"], attrs)
    stats = {
        "log_marginal_likelihood": np.asarray(result.log_evidence),
        "failed": np.asarray(result.failed),
    }
    groups["sample_stats"] = _group(_with_chain(stats, batched), ["chain"], attrs)
    weighted = _named(result.particles, "x")
    weighted["log_weight"] = _normalised(result.log_weights)
    prefix = {}
    for name, value in _named(result.tau, "S").items():
        weighted[f"tau_{name}"], prefix[f"tau_{name}"] = value, name
    groups["weighted_particles"] = _group(
        _with_chain(weighted, batched), ["chain", "particle"], attrs, prefix
    )
    _observed(groups, ys, attrs)
    return wrap_groups(groups, attrs)


def from_csmc(result, ys=None):
    """Convert a ``CSMCResult`` (``particlekit.pgibbs.csmc(..., return_info=True)``) to
    ArviZ.

    One sweep is one draw of one chain; a ``jax.vmap`` batch of sweeps (one leading axis)
    is one draw of each of several chains, and two leading axes (e.g. a ``jax.vmap`` over
    chains of a ``lax.scan`` over sweeps) are ``(chain, draw)``.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Groups ``posterior``, ``sample_stats``, ``filtering`` (and ``observed_data``), as
        listed in this module's docstring.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> xs, ys = ssm.simulate(jax.random.key(0), 20)
    >>> res = pk.pgibbs.csmc(jax.random.key(1), ssm, ys, xs, num_particles=16,
    ...                      return_info=True)
    >>> pk.arviz.from_csmc(res)["posterior"]["x"].dims
    ('chain', 'draw', 'time')
    """
    extra = np.ndim(result.log_evidence)
    if extra > 2:
        raise ValueError(
            f"CSMCResult: expected at most two leading batch axes (chain, draw), got {extra}"
        )
    attrs = _attrs("CSMCResult")

    def lead(variables):
        # one sweep -> (1, 1, ...); a batch -> (chain, 1, ...); two axes -> (chain, draw, ...)
        if extra == 0:
            return {k: v[None, None] for k, v in variables.items()}
        if extra == 1:
            return {k: v[:, None] for k, v in variables.items()}
        return variables

    groups = {
        "posterior": _group(lead(_named(result.trajectory, "x")), ["chain", "draw", "time"], attrs)
    }
    num_nonfinite = np.asarray(result.num_nonfinite)
    stats = {
        "log_evidence": np.asarray(result.log_evidence),
        "failed": np.asarray(result.failed),
        "num_nonfinite": num_nonfinite.sum(axis=-1),
        "num_above_bound": np.broadcast_to(
            np.asarray(result.num_above_bound), np.shape(result.log_evidence)
        ),
    }
    groups["sample_stats"] = _group(lead(stats), ["chain", "draw"], attrs)
    per_time = {"ess": np.asarray(result.ess), "num_nonfinite": num_nonfinite}
    groups["filtering"] = _group(lead(per_time), ["chain", "draw", "time"], attrs)
    _observed(groups, ys, attrs)
    return wrap_groups(groups, attrs)


def from_ppg(result, ys=None, *, burn_in: int = 0):
    """Convert a ``PPGResult`` (``particlekit.pgibbs.ppg``; one run or a ``jax.vmap``
    batch of runs, one chain each) to ArviZ.

    Parameters
    ----------
    result : particlekit.pgibbs.PPGResult
    ys : Array of shape (T, ...), optional
        The observations, stored in ``observed_data``.
    burn_in : int
        Iterations put in ``warmup_posterior`` / ``warmup_sample_stats`` rather than
        ``posterior`` / ``sample_stats`` (default 0: all in ``posterior``). With the
        ``burn_in`` of the run, the posterior mean of each chain is its roll-out
        ``estimate``.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Groups ``posterior``, ``sample_stats``, ``estimate``, ``reference`` (and the
        warm-up groups, ``observed_data``), as listed in this module's docstring.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 20)
    >>> res = pk.pgibbs.ppg(jax.random.key(1), ssm, ys, additive_fn=lambda xp, x, t: x,
    ...                     initial_fn=lambda x: x, num_particles=16, num_iterations=10,
    ...                     burn_in=2)
    >>> pk.arviz.from_ppg(res, burn_in=2)["posterior"]["S"].shape
    (1, 8)
    """
    batched = _is_batched(_field(result, "log_evidence", "PPGResult"), 1, "PPGResult")
    num_iterations = int(np.shape(result.log_evidence)[-1])
    burn_in = _checked_burn_in(burn_in, num_iterations)  # 2.5 or "3" is not a burn-in
    attrs = _attrs("PPGResult", burn_in=burn_in)
    draws = _with_chain(_named(result.estimates, "S"), batched)
    stats = {"log_evidence": np.asarray(result.log_evidence)}
    if getattr(result, "reference_alone", None) is not None:
        stats["reference_alone"] = np.asarray(result.reference_alone)
    stats = _with_chain(stats, batched)
    groups = {
        "posterior": _group(
            {k: v[:, burn_in:] for k, v in draws.items()}, ["chain", "draw"], attrs
        ),
        "sample_stats": _group(
            {k: v[:, burn_in:] for k, v in stats.items()}, ["chain", "draw"], attrs
        ),
    }
    if burn_in:
        groups["warmup_posterior"] = _group(
            {k: v[:, :burn_in] for k, v in draws.items()}, ["chain", "draw"], attrs
        )
        groups["warmup_sample_stats"] = _group(
            {k: v[:, :burn_in] for k, v in stats.items()}, ["chain", "draw"], attrs
        )
    groups["estimate"] = _group(
        _with_chain(_named(result.estimate, "S"), batched), ["chain"], attrs
    )
    groups["reference"] = _group(
        _with_chain(_named(result.reference, "x"), batched), ["chain", "time"], attrs
    )
    _observed(groups, ys, attrs)
    return wrap_groups(groups, attrs)


def from_particle_gibbs(result, ys=None):
    """Convert a ``ParticleGibbsResult`` (``particlekit.pgibbs.particle_gibbs``) to ArviZ:
    ``posterior`` (the parameters, a leaf of a pytree ``theta`` named by its keys joined by
    ``_`` as in ``from_mle``, and the states ``x`` with dims ``(chain, draw, time, ...)``)
    and ``sample_stats`` (``acceptance_rate``, ``failed``, ``num_nonfinite``), dims
    ``(chain, draw, ...)``, and ``observed_data`` when ``ys`` is given.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(theta * x_prev, 1.0),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = model_fn(0.9).simulate(jax.random.key(0), 10)
    >>> res = pk.pgibbs.particle_gibbs(
    ...     jax.random.key(1), model_fn, ys, theta_init=jnp.array(0.9), num_samples=5,
    ...     num_particles=8, theta_update=lambda k, th, xs, ys: th)
    >>> pk.arviz.from_particle_gibbs(res)["sample_stats"]["failed"].dims
    ('chain', 'draw')
    """
    attrs = _attrs("ParticleGibbsResult")
    stats = {
        "acceptance_rate": np.asarray(result.acceptance_rate),
        "failed": np.asarray(result.failed),
        "num_nonfinite": np.asarray(result.num_nonfinite),
    }
    # the parameters named as from_mle names them (nested keys joined by "_"; the keystr
    # names of to_dict were "ar']['rho"), the states as the latent path "x"
    theta = _named(result.theta, "theta")
    if "x" in theta:
        raise ValueError("theta has a leaf named 'x', the name of the states in posterior")
    posterior = {**theta, "x": result.states}
    groups = _draws_groups(posterior, stats, {"y": ys}, attrs, "x")
    return wrap_groups(groups, attrs)


def _parameter_groups(groups, name, final, average, trace, batched, attrs):
    """Groups ``<name>_trace`` ``(chain, iteration, ...)``, ``<name>`` and
    ``<name>_average`` ``(chain, ...)``; a bare-array parameter is named ``name``."""
    groups[f"{name}_trace"] = _group(
        _with_chain(_named(trace, name), batched), ["chain", "iteration"], attrs
    )
    groups[name] = _group(_with_chain(_named(final, name), batched), ["chain"], attrs)
    groups[f"{name}_average"] = _group(
        _with_chain(_named(average, name), batched), ["chain"], attrs
    )


def from_mle(result, ys=None):
    """Convert an ``MLEResult`` (``particlekit.learning.mle``; one run or a ``jax.vmap``
    batch of runs, one chain each) to ArviZ.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Groups ``theta_trace``, ``score_trace``, ``theta``, ``theta_average``,
        ``iteration_stats`` (and ``observed_data``), as listed in this module's docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(theta["a"] * x_prev, 1.0),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = model_fn({"a": 0.8}).simulate(jax.random.key(0), 20)
    >>> res = pk.learning.mle(jax.random.key(1), model_fn, {"a": jnp.array(0.2)}, ys,
    ...                       num_particles=16, num_iterations=10)
    >>> pk.arviz.from_mle(res)["theta_trace"]["a"].dims
    ('chain', 'iteration')
    """
    batched = _is_batched(_field(result, "log_evidence", "MLEResult"), 1, "MLEResult")
    attrs = _attrs("MLEResult")
    groups: dict = {}
    _parameter_groups(
        groups, "theta", result.theta, result.theta_average, result.trace, batched, attrs
    )
    groups["score_trace"] = _group(
        _with_chain(_named(result.scores, "theta"), batched), ["chain", "iteration"], attrs
    )
    per_run = np.shape(result.log_evidence)[:-1]
    stats = {
        "log_evidence": np.asarray(result.log_evidence),
        "failed": np.broadcast_to(np.asarray(result.failed), per_run),
        "num_failed": np.broadcast_to(np.asarray(result.num_failed), per_run),
    }
    groups["iteration_stats"] = _group(
        _with_chain(stats, batched),
        ["chain", "iteration"],
        attrs,
        dims={"failed": ["chain"], "num_failed": ["chain"]},
    )
    _observed(groups, ys, attrs)
    return wrap_groups(groups, attrs)


def from_score_climbing(result, ys=None):
    """Convert a ``ScoreClimbingResult`` (``particlekit.learning.score_climbing``; one run
    or a ``jax.vmap`` batch of runs, one chain each) to ArviZ.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Groups ``phi_trace``, ``phi``, ``phi_average``, ``posterior`` (the paths),
        ``iteration_stats`` (and ``observed_data``), as listed in this module's docstring.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = ssm.simulate(jax.random.key(0), 10)
    >>> prop = lambda phi: lambda xp, y, t: dist.Normal(phi[0] * xp + phi[1] * y, 1.0)
    >>> prop0 = lambda phi: lambda y: dist.Normal(phi[1] * y, 1.0)
    >>> res = pk.learning.score_climbing(jax.random.key(1), ssm, ys, proposal_fn=prop,
    ...     initial_proposal_fn=prop0, phi_init=jnp.zeros(2), num_particles=8,
    ...     num_iterations=10)
    >>> pk.arviz.from_score_climbing(res)["phi_trace"]["phi"].dims
    ('chain', 'iteration', 'phi_dim_0')
    """
    batched = _is_batched(_field(result, "failed", "ScoreClimbingResult"), 0, "ScoreClimbingResult")
    attrs = _attrs("ScoreClimbingResult")
    groups: dict = {}
    _parameter_groups(groups, "phi", result.phi, result.phi_average, result.trace, batched, attrs)
    groups["posterior"] = _group(
        _with_chain(_named(result.paths, "x"), batched), ["chain", "draw", "time"], attrs
    )
    stats = {"num_nonfinite": np.asarray(result.num_nonfinite), "failed": np.asarray(result.failed)}
    groups["iteration_stats"] = _group(
        _with_chain(stats, batched),
        ["chain", "iteration", "time"],
        attrs,
        dims={"failed": ["chain"]},
    )
    _observed(groups, ys, attrs)
    return wrap_groups(groups, attrs)


def from_mcmc_draws(
    posterior: dict,
    sample_stats: dict | None = None,
    *,
    observed: dict | None = None,
    attrs: dict | None = None,
    paths: str | None = "x",
):
    """Wrap the draws of an MCMC-like sampler of the state-space family (PMMH, particle
    Gibbs, SMC² as a one-draw-per-particle posterior) for ArviZ.

    - ``posterior``: ``{name: array (chain, draw, ...)}``; a pytree value (the latent path
      of a model whose state is a dict) gives one variable per leaf, ``<name>_<key>``. The
      latent path ``posterior[paths]`` (default ``"x"``) has dims
      ``(chain, draw, time, ...)``, as in ``from_trajectories``;
    - ``sample_stats``: ``{name: array (chain, draw, ...)}``, or ``(chain,)`` for a
      per-chain value such as ``failed``;
    - ``observed_data``: ``{name: array (time, ...) or pytree}`` (``ys``, one variable
      per leaf named by its keys; a scalar has no dims; None values are skipped), which
      must have as many time steps as the latent path.

    Other dims are ``<name>_dim_<i>``.

    Examples
    --------
    >>> import numpy as np
    >>> data = from_mcmc_draws({"rho": np.zeros((2, 5)), "x": np.zeros((2, 5, 3))},
    ...                        {"lp": np.zeros((2, 5)), "failed": np.zeros(2, bool)},
    ...                        observed={"y": np.zeros(3)})
    >>> sorted(data.children if hasattr(data, "children") else data.groups())
    ['observed_data', 'posterior', 'sample_stats']
    >>> data["posterior"]["x"].dims, data["sample_stats"]["failed"].dims
    (('chain', 'draw', 'time'), ('chain',))
    """
    attrs = {"created_at": datetime.datetime.now(datetime.UTC).isoformat(), **(attrs or {})}
    return wrap_groups(_draws_groups(posterior, sample_stats, observed, attrs, paths), attrs)


def _draws_groups(posterior, sample_stats, observed, attrs, paths) -> dict:
    """The groups of ``from_mcmc_draws`` and ``from_particle_gibbs``."""
    posterior = {k: v for k, v in posterior.items() if v is not None}
    draws = _named(posterior, "theta")  # a duplicate name (a path leaf as a site) raises
    path_names = set(_named({paths: posterior[paths]}, paths)) if paths in posterior else set()
    dims = {name: ["chain", "draw", "time"] for name in path_names}
    groups = {"posterior": _group(draws, ["chain", "draw"], attrs, dims=dims)}
    stats = {k: v for k, v in (sample_stats or {}).items() if v is not None}
    if stats:
        stats = _named(stats, "stat")
        per_chain = {name: ["chain"] for name, value in stats.items() if value.ndim == 1}
        groups["sample_stats"] = _group(stats, ["chain", "draw"], attrs, dims=per_chain)
    for name, value in (observed or {}).items():
        _observed(groups, value, attrs, name, scalars=True)
    return groups


# --------------------------------------------------------------------------------------
# diffusion steering results
# --------------------------------------------------------------------------------------
def _check_num_draws_has_key(key, num_draws) -> None:
    """``num_draws`` without ``key``: the draws asked for would silently not be made."""
    if key is None and num_draws is not None:
        raise ValueError(
            f"num_draws={num_draws!r} needs a key: the equally weighted posterior draws are "
            "made by resampling with key=jax.random.key(...); without one there is no "
            "posterior group"
        )


def _resampled_draws(variables, log_weights, failed, batched, key, num_draws) -> dict:
    """Equally weighted draws ``(chain, draw, ...)`` of each chain's weighted particles
    ``variables`` by systematic resampling with ``key`` (NaN for a failed chain)."""
    from particlekit import resampling
    from particlekit.kernels import check_key

    check_key(key)
    log_w = np.asarray(log_weights) if batched else np.asarray(log_weights)[None]
    failed = np.asarray(failed).reshape(-1)
    num_draws = log_w.shape[-1] if num_draws is None else num_draws
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)):
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
    if num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws}")
    keys = jax.random.split(key, log_w.shape[0])
    idx = np.asarray(
        jax.vmap(lambda k, lw: resampling.systematic(k, lw, int(num_draws)))(
            keys, jax.numpy.asarray(log_w)
        )
    )
    draws = {}
    for name, value in _with_chain(variables, batched).items():
        picked = np.take_along_axis(value, idx.reshape(idx.shape + (1,) * (value.ndim - 2)), 1)
        if np.issubdtype(picked.dtype, np.floating):
            picked = np.where(failed.reshape((-1,) + (1,) * (picked.ndim - 1)), np.nan, picked)
        draws[name] = picked
    return draws


def _weighted_steering(result, name, per_step, rewards, key, num_draws):
    """The groups of ``from_fk_steering``, ``from_fk_corrector`` and ``from_pdds``."""
    _check_num_draws_has_key(key, num_draws)
    batched = _is_batched(_field(result, "log_evidence", name), 0, name)
    attrs = _attrs(name, num_particles=int(np.shape(result.log_weights)[-1]))
    samples = _named(result.samples, "x")
    rewards = None if rewards is None else {"reward": np.asarray(rewards)}
    groups = {}
    stats = _with_chain(
        {
            "log_marginal_likelihood": np.asarray(result.log_evidence),
            "failed": np.asarray(result.failed),
        },
        batched,
    )
    per_chain = {k: ["chain"] for k in stats}
    if key is not None:
        draws = _resampled_draws(
            {**samples, **(rewards or {})}, result.log_weights, result.failed, batched, key,
            num_draws,
        )  # fmt: skip
        if rewards is not None:
            stats["reward"] = draws.pop("reward")
        groups["posterior"] = _group(draws, ["chain", "draw"], attrs)
    groups["sample_stats"] = _group(stats, ["chain", "draw"], attrs, dims=per_chain)
    weighted = {**samples, "log_weight": _normalised(result.log_weights), **(rewards or {})}
    groups["weighted_particles"] = _group(
        _with_chain(weighted, batched), ["chain", "particle"], attrs
    )
    steps = {
        out: np.asarray(getattr(result, field))
        for out, field in per_step
        if getattr(result, field, None) is not None
    }
    groups["steps"] = _group(_with_chain(steps, batched), ["chain", "step"], attrs)
    return wrap_groups(groups, attrs)


def from_fk_steering(result, *, key=None, num_draws: int | None = None):
    """Convert an ``FKSteeringResult`` (``particlekit.diffusion.fk_steering``; one run or a
    ``jax.vmap`` batch of runs, one chain each) to ArviZ.

    Groups (as ``from_filter`` for the weighted population, as ``from_smc`` for the
    equally weighted draws):

    - ``weighted_particles``: the final samples ``x`` (not resampled), their normalised
      ``log_weight`` and final ``reward`` ``r(x_0)``, dims ``(chain, particle, ...)``;
    - ``sample_stats``: ``log_marginal_likelihood`` (the estimate of
      ``log E_p[exp(lmbda r(x_0))]``) and ``failed``, dims ``(chain,)``; with ``key`` also
      the ``reward`` of each posterior draw, ``(chain, draw)``;
    - ``steps``: ``ess`` (after each step's reweighting), ``resampled``,
      ``intermediate_reward`` (weighted mean at potential steps, NaN elsewhere),
      ``num_nonfinite`` and ``num_nonfinite_intermediate``, dims ``(chain, step)``;
    - ``posterior`` (only with ``key``): ``num_draws`` equally weighted draws ``x``,
      ``(chain, draw, ...)``, by systematic resampling of the weighted particles (NaN for
      a failed chain). Without ``key`` there is no ``posterior``: the particles are
      weighted, and ArviZ's summaries of unweighted draws would ignore the weights.

    Parameters
    ----------
    result : particlekit.diffusion.FKSteeringResult
    key : PRNG key, optional
        Draw the equally weighted ``posterior`` with this key.
    num_draws : int, optional
        Draws per chain in ``posterior`` (default: the number of particles); only with
        ``key`` (a ``ValueError`` without one).

    Returns
    -------
    arviz.InferenceData or xarray.DataTree

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> res = pk.diffusion.fk_steering(jax.random.key(0), model, lambda x: x[0],
    ...                                num_particles=32, num_steps=10, lmbda=2.0)
    >>> data = pk.arviz.from_fk_steering(res, key=jax.random.key(1))
    >>> data["steps"]["ess"].dims, data["posterior"]["x"].shape
    (('chain', 'step'), (1, 32, 2))
    """
    per_step = [
        ("ess", "ess"),
        ("resampled", "resampled"),
        ("intermediate_reward", "intermediate_rewards"),
        ("num_nonfinite", "num_nonfinite"),
        ("num_nonfinite_intermediate", "num_nonfinite_intermediate"),
    ]
    return _weighted_steering(result, "FKSteeringResult", per_step, result.rewards, key, num_draws)


def from_pdds(result, *, key=None, num_draws: int | None = None):
    """Convert a ``PDDSResult`` (``particlekit.diffusion.pdds``; one run or a ``jax.vmap``
    batch of runs, one chain each) to ArviZ.

    Groups as ``from_fk_corrector``: ``weighted_particles`` (the final ``x`` and normalised
    ``log_weight``; ``(chain, particle, ...)``), ``sample_stats``
    (``log_marginal_likelihood``, the estimate of ``log Z``, and ``failed``; ``(chain,)``),
    ``steps`` (``ess``, ``resampled``, ``acceptance_rate``, ``num_nonfinite`` and
    ``num_nonfinite_intermediate``; ``(chain, step)``, step 0 being the initial weighting,
    where ``acceptance_rate`` is NaN) and, with ``key``, ``posterior`` (``num_draws``
    equally weighted draws ``x`` by systematic resampling; ``(chain, draw, ...)``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> res = pk.diffusion.pdds(jax.random.key(0), lambda x: -0.5 * jnp.sum((x - 1.0) ** 2),
    ...                         dim=1, num_particles=64, num_steps=8)
    >>> data = pk.arviz.from_pdds(res, key=jax.random.key(1))
    >>> data["steps"]["acceptance_rate"].shape, data["posterior"]["x"].dims
    ((1, 9), ('chain', 'draw', 'x_dim_0'))
    """
    rates = np.asarray(result.acceptance_rate, dtype=np.float32)
    nan_first = np.full(rates.shape[:-1] + (1,), np.nan, np.float32)
    padded = result._replace(acceptance_rate=np.concatenate([nan_first, rates], axis=-1))
    per_step = [
        ("ess", "ess"),
        ("resampled", "resampled"),
        ("acceptance_rate", "acceptance_rate"),
        ("num_nonfinite", "num_nonfinite"),
        ("num_nonfinite_intermediate", "num_nonfinite_intermediate"),
    ]
    return _weighted_steering(padded, "PDDSResult", per_step, None, key, num_draws)


def from_fk_corrector(result, *, key=None, num_draws: int | None = None):
    """Convert an ``FKCResult`` (``particlekit.diffusion.fk_corrector``, ``anneal``,
    ``product_of_experts``, ``geometric_average``; one run or a ``jax.vmap`` batch of
    runs, one chain each) to ArviZ.

    Groups as ``from_fk_steering`` without rewards: ``weighted_particles`` (``x``,
    normalised ``log_weight``; ``(chain, particle, ...)``), ``sample_stats``
    (``log_marginal_likelihood`` of ``log int prod_i p_i^{beta_i}``, ``failed``;
    ``(chain,)``), ``steps`` (``ess``, ``resampled``, ``num_nonfinite``;
    ``(chain, step)``) and, with ``key``, ``posterior`` (``num_draws`` equally weighted
    draws ``x`` by systematic resampling; ``(chain, draw, ...)``).

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> m1 = pk.diffusion.gaussian_mixture([1.0], [[-1.0]], stds=1.0)
    >>> m2 = pk.diffusion.gaussian_mixture([1.0], [[1.0]], stds=1.0)
    >>> res = pk.diffusion.product_of_experts(jax.random.key(0), m1, m2, num_particles=64,
    ...                                       num_steps=40)
    >>> pk.arviz.from_fk_corrector(res)["weighted_particles"]["x"].dims
    ('chain', 'particle', 'x_dim_0')
    """
    per_step = [("ess", "ess"), ("resampled", "resampled"), ("num_nonfinite", "num_nonfinite")]
    return _weighted_steering(result, "FKCResult", per_step, None, key, num_draws)


def from_svdd(result):
    """Convert an ``SVDDResult`` (``particlekit.diffusion.svdd``; one run or a ``jax.vmap``
    batch of runs, one chain each) to ArviZ: its particles are equally weighted, so they
    are the draws.

    - ``posterior``: the final particles ``x``, dims ``(chain, draw, ...)``;
    - ``sample_stats``: their ``reward`` ``r(x_0)``, dims ``(chain, draw)``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> res = pk.diffusion.svdd(jax.random.key(0), model, lambda x: x[0], num_particles=8,
    ...                         num_children=4, num_steps=10)
    >>> pk.arviz.from_svdd(res)["sample_stats"]["reward"].shape
    (1, 8)
    """
    batched = _is_batched(_field(result, "rewards", "SVDDResult"), 1, "SVDDResult")
    attrs = _attrs("SVDDResult", num_particles=int(np.shape(result.rewards)[-1]))
    groups = {
        "posterior": _group(
            _with_chain(_named(result.samples, "x"), batched), ["chain", "draw"], attrs
        ),
        "sample_stats": _group(
            _with_chain({"reward": np.asarray(result.rewards)}, batched), ["chain", "draw"], attrs
        ),
    }
    return wrap_groups(groups, attrs)


def from_rollover(result):
    """Convert an ``RBFResult`` (``particlekit.diffusion.rollover_budget_forcing``; one run
    or a ``jax.vmap`` batch of runs, one chain each) to ArviZ: each of its ``N`` chains
    gives one sample, so they are the draws.

    - ``posterior``: the final samples ``x``, dims ``(chain, draw, ...)``;
    - ``sample_stats``: their ``reward`` and ``num_evaluations``, dims ``(chain, draw)``;
    - ``steps``: ``evaluations`` drawn at each step, dims ``(chain, draw, step)``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0], [2.0]], stds=0.5)
    >>> res = pk.diffusion.rollover_budget_forcing(
    ...     jax.random.key(0), model, lambda x: x[0], num_steps=5, budget=20, num_samples=4,
    ...     progress_bar=False)
    >>> pk.arviz.from_rollover(res)["steps"]["evaluations"].shape
    (1, 4, 5)
    """
    batched = _is_batched(_field(result, "rewards", "RBFResult"), 1, "RBFResult")
    attrs = _attrs("RBFResult", num_samples=int(np.shape(result.rewards)[-1]))
    stats = {
        "reward": np.asarray(result.rewards),
        "num_evaluations": np.asarray(result.num_evaluations),
    }
    steps = {"evaluations": np.asarray(result.evaluations_per_step)}
    groups = {
        "posterior": _group(
            _with_chain(_named(result.samples, "x"), batched), ["chain", "draw"], attrs
        ),
        "sample_stats": _group(_with_chain(stats, batched), ["chain", "draw"], attrs),
        "steps": _group(_with_chain(steps, batched), ["chain", "draw", "step"], attrs),
    }
    return wrap_groups(groups, attrs)


def from_best_of_n(result):
    """Convert a ``BestOfNResult`` (``particlekit.diffusion.best_of_n``; one run or a
    ``jax.vmap`` batch of runs, one chain each) to ArviZ.

    Best-of-N steers nothing: it draws ``N`` unsteered candidates and keeps the one with
    the highest reward. The candidates are equally weighted draws of the model, so they are
    the ``posterior``; the pick is flagged in ``sample_stats`` and kept in ``best``.

    - ``posterior``: the ``N`` candidates ``x``, dims ``(chain, draw, ...)``;
    - ``sample_stats``: ``reward`` and ``is_best`` (the returned candidate; the first of
      equal maxima) ``(chain, draw)``, and ``best_reward`` ``(chain,)``;
    - ``best``: the returned sample ``x``, dims ``(chain, ...)``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> res = pk.diffusion.best_of_n(jax.random.key(0), model, lambda x: x[0],
    ...                              num_samples=16, num_steps=10)
    >>> data = pk.arviz.from_best_of_n(res)
    >>> int(data["sample_stats"]["is_best"].sum()), data["best"]["x"].dims
    (1, ('chain', 'x_dim_0'))
    """
    batched = _is_batched(_field(result, "best_reward", "BestOfNResult"), 0, "BestOfNResult")
    rewards = np.asarray(result.rewards)
    attrs = _attrs("BestOfNResult", num_samples=int(rewards.shape[-1]))
    # the pick of best_of_n: the arg-max with NaN rewards as -inf
    best_index = np.argmax(np.where(np.isnan(rewards), -np.inf, rewards), axis=-1)
    is_best = np.arange(rewards.shape[-1]) == best_index[..., None]
    stats = _with_chain({"reward": rewards, "is_best": is_best}, batched)
    stats_ds = _group(stats, ["chain", "draw"], attrs)
    best_reward = np.asarray(result.best_reward)
    stats_ds["best_reward"] = ("chain", best_reward if batched else best_reward[None])
    groups = {
        "posterior": _group(
            _with_chain(_named(result.samples, "x"), batched), ["chain", "draw"], attrs
        ),
        "sample_stats": stats_ds,
        "best": _group(_with_chain(_named(result.best, "x"), batched), ["chain"], attrs),
    }
    return wrap_groups(groups, attrs)


# --------------------------------------------------------------------------------------
# sequence steering results
# --------------------------------------------------------------------------------------
def _check_decode(decode):
    if decode is not None and not callable(decode):
        raise ValueError(f"decode must be a callable tokens -> str or None, got {decode!r}")


def _decoded(decode, tokens, lengths) -> np.ndarray:
    """``decode(tokens[..., :length])`` of every sequence, as a NumPy unicode array of the
    shape of ``lengths`` (equal sequences are decoded once)."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    flat_tokens = tokens.reshape(-1, tokens.shape[-1])
    texts, seen = [], {}
    for row, n in zip(flat_tokens, lengths.reshape(-1), strict=True):
        prefix = row[: int(n)]
        key = prefix.tobytes()
        if key not in seen:
            text = decode(prefix)
            if not isinstance(text, str):
                raise ValueError(
                    f"decode must return a str for each sequence, got {type(text).__name__}"
                )
            seen[key] = text
        texts.append(seen[key])
    return np.array(texts, dtype=str).reshape(lengths.shape)


def _per_run(value, batched):
    """A per-run scalar as an attribute value: a float / int, or a list over the batch
    (NetCDF attributes have no booleans)."""
    value = np.asarray(value)
    if value.dtype == bool:
        value = value.astype(np.int64)
    return value.tolist() if batched else value.item()


def from_sequence_steering(result, *, key=None, num_draws: int | None = None, decode=None):
    """Convert a ``SteeringResult`` (``particlekit.steering.smc``; one run, or a
    ``jax.vmap`` batch of runs, e.g. over prompts: one chain each) to ArviZ.

    Groups, as ``from_fk_steering`` (the final population is weighted, so it is kept as
    ``weighted_particles``, and ``posterior`` holds equally weighted draws only when a
    ``key`` is given; a ``beam_search`` / DVTS result, whose ``log_evidence`` is NaN,
    targets no distribution: a ``key`` is then a ``ValueError``):

    - ``weighted_particles``: the final sequences ``tokens`` (int32, dims
      ``(chain, particle, position)``, padded with the end token after ``length``),
      ``length``, ``ended`` (int8: 1 if closed by the end token, 0 if truncated), the normalised
      ``log_weight`` and ``weight`` (summing to 1 per chain) and ``log_potential``
      (``log phi`` of the sequence), dims ``(chain, particle)``; with ``decode`` also
      ``text``;
    - ``sample_stats``: ``log_marginal_likelihood`` (``result.log_evidence``) and
      ``failed``, dims ``(chain,)``; with ``key`` also the ``log_potential`` (and with
      ``decode`` the ``text``) of each posterior draw, dims ``(chain, draw)``;
    - ``steps``: ``ess``, ``resampled``, ``num_nonfinite`` of each generation step, dims
      ``(chain, step)``;
    - ``posterior`` (only with ``key``): ``num_draws`` equally weighted draws ``tokens``
      ``(chain, draw, position)``, ``length``, ``ended`` ``(chain, draw)``, by systematic
      resampling of the weighted sequences.

    The attributes hold ``num_particles``, ``log_evidence`` and ``failed`` (0 / 1; lists
    over the chains for a batch). A failed run (every weight zero: the reward ruled out
    every sequence) has uniform weights, as ``SteeringResult.weights``, so its draws are
    uniform over its sequences and nothing is NaN; it is flagged by ``failed`` and its
    ``log_marginal_likelihood`` is ``-inf``.

    Parameters
    ----------
    result : particlekit.steering.SteeringResult
    key : PRNG key, optional
        Draw the equally weighted ``posterior`` with this key.
    num_draws : int, optional
        Draws per chain in ``posterior`` (default: the number of particles); only with
        ``key`` (a ``ValueError`` without one).
    decode : callable, optional
        ``decode(tokens) -> str`` for the filled positions ``tokens[:length]`` (prompt and
        end token included) of one sequence, e.g. ``particlekit.lm.task.decode``. The texts
        are the string variable ``text`` (kept out of ``posterior``, where ArviZ's
        numerical summaries would fail on them); NetCDF files written with
        ``to_netcdf`` (h5netcdf) keep them.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()          # letters 0, 1, 2 and end token 3
    >>> def reward(tokens, length):                # favour sequences with many 0s
    ...     return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))
    >>> res = pk.steering.smc(jax.random.key(0), gen, reward, num_particles=64,
    ...                       max_length=4, eos_id=3)
    >>> data = pk.arviz.from_sequence_steering(
    ...     res, key=jax.random.key(1), decode=lambda t: "".join("abc$"[i] for i in t))
    >>> data["posterior"]["tokens"].dims, data["steps"]["ess"].shape
    (('chain', 'draw', 'position'), (1, 4))
    >>> round(float(data["weighted_particles"]["weight"].sum()), 4)
    1.0
    >>> str(data["sample_stats"]["text"].values[0, 0]).endswith("$")  # a finished draw
    True
    """
    _check_decode(decode)
    _check_num_draws_has_key(key, num_draws)
    if key is not None and np.isnan(np.asarray(result.log_evidence)).any():
        # beam search / DVTS: the weights hold rewards of a greedy selection, and draws by
        # them would be labelled a posterior of a distribution nothing targets
        raise ValueError(
            "this SteeringResult targets no distribution (log_evidence is NaN: a "
            "beam_search / DVTS result), so it has no posterior to draw: convert it "
            "without key, and read it with pk.steering.best_of or weighted_vote"
        )
    batched = _is_batched(_field(result, "log_evidence", "SteeringResult"), 0, "SteeringResult")
    tokens = np.asarray(result.sequences)
    attrs = _attrs(
        "SteeringResult",
        num_particles=int(tokens.shape[-2]),
        log_evidence=_per_run(result.log_evidence, batched),
        failed=_per_run(result.failed, batched),
    )
    log_w = _normalised(result.log_weights)
    sequences = {
        "tokens": tokens,
        "length": np.asarray(result.lengths),
        "ended": np.asarray(result.ended).astype(np.int8),
    }
    log_potential = np.asarray(result.log_potentials)
    texts = None if decode is None else _decoded(decode, tokens, result.lengths)
    token_dims = {"tokens": ["chain", "particle", "position"]}
    weighted = {**sequences, "log_weight": log_w, "weight": np.exp(log_w)}
    weighted["log_potential"] = log_potential
    if texts is not None:
        weighted["text"] = texts
    groups: dict = {
        "weighted_particles": _group(
            _with_chain(weighted, batched), ["chain", "particle"], attrs, dims=token_dims
        )
    }
    stats = _with_chain(
        {
            "log_marginal_likelihood": np.asarray(result.log_evidence),
            "failed": np.asarray(result.failed),
        },
        batched,
    )
    per_chain = {name: ["chain"] for name in stats}
    if key is not None:
        index = np.broadcast_to(np.arange(tokens.shape[-2]), log_potential.shape)
        draws = _resampled_draws(
            {**sequences, "log_potential": log_potential, "index": index},
            log_w,
            np.zeros(np.shape(result.failed), bool),  # uniform weights for a failed run
            batched,
            key,
            num_draws,
        )
        stats["log_potential"] = draws.pop("log_potential")
        index = draws.pop("index")
        if texts is not None:
            stats["text"] = np.take_along_axis(_with_chain({"t": texts}, batched)["t"], index, 1)
        groups["posterior"] = _group(
            draws, ["chain", "draw"], attrs, dims={"tokens": ["chain", "draw", "position"]}
        )
    groups["sample_stats"] = _group(stats, ["chain", "draw"], attrs, dims=per_chain)
    steps = {
        "ess": np.asarray(result.ess),
        "resampled": np.asarray(result.resampled),
        "num_nonfinite": np.asarray(result.num_nonfinite),
    }
    groups["steps"] = _group(_with_chain(steps, batched), ["chain", "step"], attrs)
    return wrap_groups(groups, attrs)


def _checked_burn_in(burn_in, num_iterations: int) -> int:
    """``burn_in`` as an int in ``[0, num_iterations)``, else ``ValueError``."""
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)):
        raise ValueError(f"burn_in must be an integer in [0, {num_iterations}), got {burn_in!r}")
    if not 0 <= int(burn_in) < num_iterations:
        raise ValueError(f"burn_in must be in [0, {num_iterations}), got {burn_in}")
    return int(burn_in)


def _check_eos_id(eos_id) -> None:
    if eos_id is not None and (
        isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer))
    ):
        raise ValueError(f"eos_id must be an integer token id or None, got {eos_id!r}")


def _ended(tokens, lengths, eos_id) -> np.ndarray:
    """1 where a sequence's last filled token is the end token (closed), 0 where it was
    truncated; int8, not bool, so that ArviZ's summaries (quantiles) work on it. A
    ``ValueError`` when the padding after ``length`` (which holds the run's end token) is
    not ``eos_id``: a wrong id would report every sequence as truncated."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    padding = np.arange(tokens.shape[-1]) >= lengths[..., None]
    wrong = padding & (tokens != int(eos_id))
    if wrong.any():
        raise ValueError(
            f"eos_id={int(eos_id)} is not the run's end token: the padding after length "
            f"holds {int(tokens[wrong][0])}"
        )
    last = np.take_along_axis(tokens, np.clip(lengths - 1, 0, None)[..., None], -1)
    return (last[..., 0] == int(eos_id)).astype(np.int8)


def from_sequence_gibbs(result, *, burn_in: int = 0, eos_id: int | None = None, decode=None):
    """Convert a ``GibbsResult`` (``particlekit.steering.particle_gibbs``; one run, or a
    ``jax.vmap`` batch of runs: one chain each) to ArviZ: the reference after iteration
    ``k`` is draw ``k`` of a Markov chain that targets ``p(x) phi(x) / Z``.

    - ``posterior``: the references ``tokens`` (int32, dims ``(chain, draw, position)``,
      padded with the end token after ``length``) and ``length`` ``(chain, draw)``; with
      ``eos_id`` also ``ended`` (int8: 1 if closed by the end token, 0 if truncated);
    - ``sample_stats``: ``log_potential`` (``log phi`` of the reference), ``changed`` (the
      iteration moved to another sequence; its mean is the move rate), dims
      ``(chain, draw)``, ``ess`` of each step of the iteration's conditional SMC sweep,
      ``(chain, draw, step)``, with ``decode`` the ``text`` of the reference
      ``(chain, draw)``, and ``failed`` (some sweep had every weight zero), ``(chain,)``;
    - ``warmup_posterior``, ``warmup_sample_stats``: the first ``burn_in`` iterations
      (when ``burn_in > 0``), as ``posterior`` and ``sample_stats``;
    - ``initial``: the starting reference ``tokens``, dims ``(chain, position)``.

    The attributes hold ``burn_in``, ``num_iterations`` and ``failed`` (0 / 1; a list over
    the chains for a batch).

    Parameters
    ----------
    result : particlekit.steering.GibbsResult
    burn_in : int
        Iterations put in the warm-up groups (default 0: all in ``posterior``).
    eos_id : int, optional
        The end token given to ``particle_gibbs``: adds ``ended`` to ``posterior``.
    decode : callable, optional
        ``decode(tokens) -> str`` for ``tokens[:length]`` of one sequence, e.g.
        ``particlekit.lm.task.decode``; the texts are the string variable ``text`` of
        ``sample_stats`` (kept out of ``posterior``, where ArviZ's numerical summaries
        would fail on them).

    Returns
    -------
    arviz.InferenceData or xarray.DataTree

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()
    >>> def reward(tokens, length):
    ...     return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))
    >>> chain = pk.steering.particle_gibbs(jax.random.key(0), gen, reward, num_particles=8,
    ...                                    num_iterations=20, max_length=4, eos_id=3)
    >>> data = pk.arviz.from_sequence_gibbs(chain, burn_in=5, eos_id=3)
    >>> data["posterior"]["tokens"].shape, data["warmup_posterior"]["length"].dims
    ((1, 15, 4), ('chain', 'draw'))
    >>> 0.0 <= float(data["sample_stats"]["changed"].mean()) <= 1.0  # the move rate
    True
    """
    _check_decode(decode)
    batched = _is_batched(_field(result, "failed", "GibbsResult"), 0, "GibbsResult")
    tokens = np.asarray(result.sequences)
    lengths = np.asarray(result.lengths)
    num_iterations = int(lengths.shape[-1])
    burn_in = _checked_burn_in(burn_in, num_iterations)
    attrs = _attrs(
        "GibbsResult",
        burn_in=burn_in,
        num_iterations=num_iterations,
        failed=_per_run(result.failed, batched),
    )
    draws = {"tokens": tokens, "length": lengths}
    _check_eos_id(eos_id)
    if eos_id is not None:
        draws["ended"] = _ended(tokens, lengths, eos_id)
    draws = _with_chain(draws, batched)
    stats = {
        "log_potential": np.asarray(result.log_potentials),
        "changed": np.asarray(result.changed),
        "ess": np.asarray(result.ess),
    }
    if decode is not None:
        stats["text"] = _decoded(decode, tokens, lengths)
    stats = _with_chain(stats, batched)
    token_dims = {"tokens": ["chain", "draw", "position"], "ess": ["chain", "draw", "step"]}

    def part(variables, sl):
        return {name: value[:, sl] for name, value in variables.items()}

    kept = slice(burn_in, None)
    groups: dict = {
        "posterior": _group(part(draws, kept), ["chain", "draw"], attrs, dims=token_dims)
    }
    sample_stats = _group(part(stats, kept), ["chain", "draw"], attrs, dims=token_dims)
    failed = np.asarray(result.failed)
    sample_stats["failed"] = ("chain", failed if batched else failed[None])
    groups["sample_stats"] = sample_stats
    if burn_in:
        warm = slice(None, burn_in)
        groups["warmup_posterior"] = _group(
            part(draws, warm), ["chain", "draw"], attrs, dims=token_dims
        )
        groups["warmup_sample_stats"] = _group(
            part(stats, warm), ["chain", "draw"], attrs, dims=token_dims
        )
    groups["initial"] = _group(
        _with_chain({"tokens": np.asarray(result.initial_sequence)}, batched),
        ["chain", "position"],
        attrs,
    )
    return wrap_groups(groups, attrs)


def from_sequence_tempering(result, *, burn_in: int = 0, eos_id: int | None = None, decode=None):
    """Convert a ``TemperingResult`` (``particlekit.steering.parallel_tempering``; one run,
    or a ``jax.vmap`` batch of runs: one chain each) to ArviZ.

    The cold chain, at the lowest temperature (the first if several are equal; usually
    ``temperatures[0] = 1.0``), is the one whose references target ``p(x) phi(x) / Z``
    (``p(x) phi(x)^{1 / tau} / Z`` for a lowest temperature ``tau != 1``): its reference
    after iteration ``k`` is draw ``k`` of ``posterior``, as in ``from_sequence_gibbs``.
    The hot chains are auxiliary; every temperature's chain, the cold one included, is
    kept in the ``tempering`` group, indexed as in the result.

    - ``posterior``: the cold chain's references ``tokens`` (int32, dims
      ``(chain, draw, position)``, padded with the end token after ``length``) and
      ``length`` ``(chain, draw)``; with ``eos_id`` also ``ended`` (int8: 1 if closed by
      the end token, 0 if truncated);
    - ``sample_stats``: the cold chain's ``log_potential`` (untempered ``log phi`` of the
      reference) and ``changed`` (its Gibbs move selected another sequence; swaps not
      counted), dims ``(chain, draw)``, ``ess`` of each step of its conditional SMC sweep
      ``(chain, draw, step)``, ``swapped`` (the swap of each neighbouring pair ``(j, j + 1)``
      after the iteration was proposed and accepted) ``(chain, draw, pair)``, with
      ``decode`` the ``text`` of the reference ``(chain, draw)``, and ``failed`` (some
      sweep, at any temperature, had every weight zero) ``(chain,)``;
    - ``warmup_posterior``, ``warmup_sample_stats``: the first ``burn_in`` iterations
      (when ``burn_in > 0``), as ``posterior`` and ``sample_stats``;
    - ``tempering``: every iteration (burn-in included) of every temperature: ``tokens``
      ``(chain, temperature, iteration, position)``, ``length``, ``log_potential``,
      ``changed`` (and ``ended``, ``text`` as above) ``(chain, temperature, iteration)``,
      ``ess`` ``(chain, temperature, iteration, step)``, ``swapped``
      ``(chain, iteration, pair)`` and the ``temperatures`` ``(chain, temperature)``;
    - ``initial``: the starting references ``tokens`` ``(chain, temperature, position)``
      and their ``length`` ``(chain, temperature)``.

    The attributes hold ``burn_in``, ``num_iterations``, ``num_temperatures``,
    ``temperatures``, ``cold_index`` (the temperature index of ``posterior``),
    ``swap_acceptance`` (the accepted fraction of the proposed swaps of each pair over the
    whole run; NaN for a pair never proposed, e.g. the odd pairs when only one swap move
    was made, which is why it is an attribute and not a variable) and ``failed`` (0 / 1);
    for a batch each is a list over the chains.

    Parameters
    ----------
    result : particlekit.steering.TemperingResult
    burn_in : int
        Iterations put in the warm-up groups (default 0: all in ``posterior``).
    eos_id : int, optional
        The end token given to ``parallel_tempering``: adds ``ended``.
    decode : callable, optional
        ``decode(tokens) -> str`` for ``tokens[:length]`` of one sequence, e.g.
        ``particlekit.lm.task.decode``; the texts are the string variable ``text`` of
        ``sample_stats`` and ``tempering`` (kept out of ``posterior``, where ArviZ's
        numerical summaries would fail on them).

    Returns
    -------
    arviz.InferenceData or xarray.DataTree

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()          # letters 0, 1, 2 and end token 3
    >>> def reward(tokens, length):                # favour sequences with many 0s
    ...     return 2.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))
    >>> pt = pk.steering.parallel_tempering(
    ...     jax.random.key(0), gen, reward, num_particles=4, num_iterations=20,
    ...     temperatures=[1.0, 2.0, 4.0], max_length=4, eos_id=3)
    >>> data = pk.arviz.from_sequence_tempering(
    ...     pt, burn_in=5, eos_id=3, decode=lambda t: "".join("abc$"[i] for i in t))
    >>> data["posterior"]["tokens"].shape, data["sample_stats"]["swapped"].dims
    ((1, 15, 4), ('chain', 'draw', 'pair'))
    >>> data["tempering"]["log_potential"].dims, data.attrs["cold_index"]
    (('chain', 'temperature', 'iteration'), 0)
    >>> len(data.attrs["swap_acceptance"])           # pairs (1, 2) and (2, 4)
    2
    """
    _check_decode(decode)
    batched = _is_batched(_field(result, "failed", "TemperingResult"), 0, "TemperingResult")
    lengths = _with_chain({"v": np.asarray(result.lengths)}, batched)["v"]  # (C, J, K)
    num_chains, num_temperatures, num_iterations = lengths.shape
    burn_in = _checked_burn_in(burn_in, num_iterations)
    _check_eos_id(eos_id)
    temperatures = np.asarray(result.temperatures)
    cold = np.argmin(_with_chain({"t": temperatures}, batched)["t"], axis=-1)  # (C,)
    attrs = _attrs(
        "TemperingResult",
        burn_in=burn_in,
        num_iterations=num_iterations,
        num_temperatures=num_temperatures,
        temperatures=temperatures.tolist(),
        cold_index=_per_run(cold if batched else cold[0], batched),
        swap_acceptance=np.asarray(result.swap_acceptance, np.float64).tolist(),
        failed=_per_run(result.failed, batched),
    )
    tokens = np.asarray(result.sequences)
    chains = {
        "tokens": tokens,
        "length": np.asarray(result.lengths),
        "log_potential": np.asarray(result.log_potentials),
        "changed": np.asarray(result.changed),
        "ess": np.asarray(result.ess),
    }
    if eos_id is not None:
        chains["ended"] = _ended(tokens, chains["length"], eos_id)
    if decode is not None:
        chains["text"] = _decoded(decode, tokens, result.lengths)
    chains = _with_chain(chains, batched)  # (C, J, K, ...)
    swapped = _with_chain({"swapped": np.asarray(result.swapped)}, batched)["swapped"]
    rows = np.arange(num_chains)
    cold_chain = {name: value[rows, cold] for name, value in chains.items()}  # (C, K, ...)
    draws = {name: cold_chain[name] for name in ("tokens", "length", "ended") if name in cold_chain}
    stats = {
        name: cold_chain[name]
        for name in ("log_potential", "changed", "ess", "text")
        if name in cold_chain
    }
    stats["swapped"] = swapped
    dims = {
        "tokens": ["chain", "draw", "position"],
        "ess": ["chain", "draw", "step"],
        "swapped": ["chain", "draw", "pair"],
    }

    def part(variables, sl):
        return {name: value[:, sl] for name, value in variables.items()}

    kept = slice(burn_in, None)
    groups: dict = {"posterior": _group(part(draws, kept), ["chain", "draw"], attrs, dims=dims)}
    sample_stats = _group(part(stats, kept), ["chain", "draw"], attrs, dims=dims)
    failed = np.asarray(result.failed)
    sample_stats["failed"] = ("chain", failed if batched else failed[None])
    groups["sample_stats"] = sample_stats
    if burn_in:
        warm = slice(None, burn_in)
        groups["warmup_posterior"] = _group(part(draws, warm), ["chain", "draw"], attrs, dims=dims)
        groups["warmup_sample_stats"] = _group(
            part(stats, warm), ["chain", "draw"], attrs, dims=dims
        )
    per_temperature = ["chain", "temperature", "iteration"]
    tempering = {
        **chains,
        "swapped": swapped,
        "temperatures": _with_chain({"t": temperatures}, batched)["t"],
    }
    groups["tempering"] = _group(
        tempering,
        per_temperature,
        attrs,
        dims={
            "tokens": per_temperature + ["position"],
            "ess": per_temperature + ["step"],
            "swapped": ["chain", "iteration", "pair"],
            "temperatures": ["chain", "temperature"],
        },
    )
    initial = {
        "tokens": np.asarray(result.initial_sequences),
        "length": np.asarray(result.initial_lengths),
    }
    groups["initial"] = _group(
        _with_chain(initial, batched),
        ["chain", "temperature"],
        attrs,
        dims={"tokens": ["chain", "temperature", "position"]},
    )
    return wrap_groups(groups, attrs)
