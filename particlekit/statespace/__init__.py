"""Bayesian inference of state-space model parameters: a NumPyro prior on ``theta``, a
``StateSpaceModel`` built from ``theta``, and the posterior of ``theta`` and of the latent
path.

- ``ParametricSSM(prior, model_fn)``: the model;
- ``pmmh``: particle marginal Metropolis–Hastings (several chains, adaptive random walk);
- ``smc2``: SMC² (parameter particles each carrying a filter; the evidence, ``N_x`` doubling);
- ``particle_gibbs``: particle Gibbs for ``(theta, x)`` with the same prior interface;
- ``log_likelihood_sd`` / ``choose_num_particles``: the filter size for pseudo-marginal MCMC.

Every result has ``print_summary()``, ``get_samples()`` and ``to_inference_data(ys)``.
"""

from particlekit.statespace.gibbs import ParticleGibbsDraws, particle_gibbs
from particlekit.statespace.likelihood import choose_num_particles, log_likelihood_sd
from particlekit.statespace.model import ParametricSSM
from particlekit.statespace.pmmh import PMMHResult, pmmh
from particlekit.statespace.smc2 import SMC2Result, smc2

__all__ = [
    "ParametricSSM",
    "pmmh",
    "PMMHResult",
    "smc2",
    "SMC2Result",
    "particle_gibbs",
    "ParticleGibbsDraws",
    "log_likelihood_sd",
    "choose_num_particles",
]
