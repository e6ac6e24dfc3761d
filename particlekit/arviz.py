"""The one converter from particlekit results to ArviZ.

We build plain ``xarray.Dataset`` groups and wrap them per ArviZ version: an
``az.InferenceData`` for arviz < 1 (Python 3.11) and an ``xarray.DataTree`` for arviz >= 1
(Python >= 3.12). Building the datasets ourselves keeps the stage group rectangular with
dims ``(chain, stage)`` only (arviz 1.x ``from_dict`` would put ``chain × draw`` on it).

Groups of ``from_smc``:

- ``posterior``: equally weighted draws, dims ``(chain, draw, ...)``;
- ``sample_stats``: ``lp`` ``(chain, draw)`` (log-prior with Jacobians + log-likelihood, i.e.
  ``-potential_energy``) and ``log_marginal_likelihood`` ``(chain,)``;
- ``smc_stages``: ``beta``, ``ess``, ``acceptance_rate``, ``num_mcmc_steps``,
  ``log_evidence_increment``, ``scale``, ``trajectory_length``, ``correlation``,
  ``capped``, dims ``(chain, stage)``, NaN after a chain's last stage;
- ``weighted_particles``: the last stage's population before the final resampling and its
  normalised ``log_weight``, dims ``(chain, particle, ...)``;
- ``log_likelihood``: pointwise log-likelihood of each observed site, ``(chain, draw, ...)``
  (NumPyro models only: a ``LogDensityModel`` has one total, in
  ``sample_stats``' ``lp``);
- ``observed_data``.
"""

from __future__ import annotations

import datetime

import numpy as np
import xarray as xr

__all__ = ["from_smc", "from_draws", "wrap_groups", "arviz_major_version"]


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
    if info.observed:
        groups["observed_data"] = _dataset(
            {k: np.asarray(v) for k, v in info.observed.items()}, [], attrs
        )
    return wrap_groups(groups, attrs)
