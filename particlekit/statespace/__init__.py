"""Bayesian inference of state-space model parameters: a NumPyro prior on ``theta``, a
``StateSpaceModel`` built from ``theta``, and the posterior of ``theta`` and of the latent
path.

- ``ParametricSSM(prior, model_fn)``: the model;
- ``pmmh``: particle marginal Metropolis–Hastings (several chains, adaptive random walk);
- ``particle_gibbs``: particle Gibbs for ``(theta, x)`` with the same prior interface;
- ``log_likelihood_sd`` / ``choose_num_particles``: the filter size for pseudo-marginal MCMC.

Every result has ``print_summary()``, ``get_samples()`` and ``to_inference_data(ys)``.
"""

from particlekit.statespace.gibbs import ParticleGibbsDraws, particle_gibbs
from particlekit.statespace.likelihood import choose_num_particles, log_likelihood_sd
from particlekit.statespace.model import ParametricSSM
from particlekit.statespace.pmmh import PMMHResult, pmmh

__all__ = [
    "ParametricSSM",
    "pmmh",
    "PMMHResult",
    "particle_gibbs",
    "ParticleGibbsDraws",
    "log_likelihood_sd",
    "choose_num_particles",
]
