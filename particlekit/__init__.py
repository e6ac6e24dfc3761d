"""particlekit: Sequential Monte Carlo and particle methods in JAX.

Users write functions for one particle; the library vectorises them with ``jax.vmap``.
Every algorithm is a recipe over the same primitives: :func:`init`, :func:`move`,
:func:`reweight`, :func:`resample`, :func:`mcmc`, :func:`chain` and :func:`run`.
"""

from particlekit import (
    arviz,
    diffusion,
    filters,
    infer,
    learning,
    pgibbs,
    resampling,
    smoothing,
    steering,
)
from particlekit.kernels import chain, init, mcmc, move, resample, reweight
from particlekit.run import run, run_until
from particlekit.ssm import StateSpaceModel
from particlekit.types import ParticleState, RunTrace, StepInfo

__version__ = "0.1.0"

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
