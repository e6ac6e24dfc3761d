"""particlekit: Sequential Monte Carlo and particle methods in JAX.

Users write functions for one particle; the library vectorises them with ``jax.vmap``.
Every algorithm is a recipe over the same primitives: ``init``, ``move``,
``reweight``, ``resample``, ``mcmc``, ``chain`` and ``run``.
"""

import importlib

from particlekit import filters, pgibbs, resampling, smoothing
from particlekit.kernels import chain, init, mcmc, move, resample, reweight
from particlekit.run import run, run_until
from particlekit.ssm import StateSpaceModel
from particlekit.types import ParticleState, RunTrace, StepInfo

__version__ = "0.1.0"

# Subpackages with heavy dependencies (equinox, optax, BlackJAX, ArviZ/xarray) are imported
# on first use (PEP 562), so that ``import particlekit`` costs little beyond jax + numpyro.
_LAZY_SUBMODULES = ("arviz", "diffusion", "infer", "learning", "steering")


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
    "filters",
    "infer",
    "learning",
    "pgibbs",
    "smoothing",
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
