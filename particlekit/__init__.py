"""particlekit: Sequential Monte Carlo and particle methods in JAX.

Write a model with NumPyro (or as plain JAX log-densities), call one function, and read
the posterior, the evidence and the diagnostics as arrays or in ArviZ:

- ``pk.infer.SMC(model).run(key, *data)``: tempered SMC for static models, with HMC tuned
  from the particles, independent chains checked against each other, and ``log Z``;
  ``pk.infer.LogDensityModel`` for models without NumPyro;
- ``pk.filters.bootstrap | guided | auxiliary(key, ssm, ys, num_particles=N)``: particle
  filters for a ``pk.StateSpaceModel`` written with NumPyro distributions;
- ``pk.smoothing`` (FFBS, PaRIS), ``pk.pgibbs`` (conditional SMC, particle Gibbs, PPG),
  ``pk.learning`` (maximum likelihood, score climbing);
- ``pk.statespace``: parameters of state-space models with a NumPyro prior (PMMH, SMC²,
  particle Gibbs);
- ``pk.diffusion`` (PDDS, FK steering of diffusion models, FK correctors) and
  ``pk.steering`` (particle steering of token sequences);
- ``pk.arviz``: the converters to ArviZ;
- ``pk.distributed``: runs over several processes (``jax.distributed``).

Every algorithm is a recipe over the same primitives, written for one particle and
vectorised with ``jax.vmap``: ``pk.init``, ``pk.move``, ``pk.reweight``, ``pk.resample``,
``pk.mcmc``, ``pk.chain`` and ``pk.run``. Documentation: the ``docs/`` folder of the
repository (``mkdocs serve``); design: ``docs/architecture.md``.

>>> import particlekit as pk
>>> pk.__version__
'0.2.0'
"""

import importlib

from particlekit import distributed, filters, pgibbs, resampling, smoothing
from particlekit.kernels import chain, init, mcmc, move, resample, reweight
from particlekit.run import run, run_until
from particlekit.ssm import StateSpaceModel
from particlekit.types import ParticleState, RunTrace, StepInfo

__version__ = "0.2.0"

# Subpackages with heavy dependencies (equinox, optax, BlackJAX, ArviZ/xarray) are imported
# on first use (PEP 562), so that ``import particlekit`` costs little beyond jax + numpyro.
_LAZY_SUBMODULES = ("arviz", "diffusion", "infer", "learning", "lm", "statespace", "steering")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"particlekit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'particlekit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "ParticleState",
    "RunTrace",
    "StateSpaceModel",
    "StepInfo",
    "arviz",
    "chain",
    "diffusion",
    "distributed",
    "filters",
    "infer",
    "learning",
    "pgibbs",
    "smoothing",
    "statespace",
    "steering",
    "init",
    "mcmc",
    "move",
    "resample",
    "resampling",
    "reweight",
    "run",
    "run_until",
]
