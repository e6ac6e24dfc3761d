"""Particle Gibbs for ``(theta, x)`` with the ``ParametricSSM`` prior interface.

A thin recipe over ``pk.pgibbs.particle_gibbs``: conditional SMC with backward sampling for
``x | theta, y``, then ``num_mcmc_steps`` steps of BlackJAX's Gaussian random walk on the
unconstrained ``u`` for ``theta | x, y``, whose target ``log p(u) + log p(x, y | u)`` is exact
given the path. Draws come back constrained, with the same result methods as ``pmmh``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import kernels
from particlekit.statespace.model import (
    LOW_ACCEPTANCE,
    ParametricSSM,
    check_model_and_data,
    draws_with_paths,
)
from particlekit.types import PyTree

__all__ = ["particle_gibbs", "ParticleGibbsDraws"]


class ParticleGibbsDraws(NamedTuple):
    """Draws of ``pk.statespace.particle_gibbs``, leading axes ``(chain, draw)``.

    Attributes
    ----------
    theta : dict
        Constrained parameter draws ``{site: (num_chains, num_samples, ...)}``.
    unconstrained : Array of shape (num_chains, num_samples, D)
    paths : Array of shape (num_chains, num_samples, T, ...)
        Latent paths.
    acceptance_rate : Array of shape (num_chains, num_samples)
        Acceptance rate of the random-walk steps on ``u`` in each sweep.
    failed : Array of shape (num_chains, num_samples), bool
        The conditional SMC sweep failed (impossible data under that ``theta``).
    """

    theta: dict
    unconstrained: jax.Array
    paths: PyTree
    acceptance_rate: jax.Array
    failed: jax.Array

    def get_samples(self, group_by_chain: bool = False) -> dict:
        """``{site: draws}`` and ``"x"``; chains concatenated unless ``group_by_chain``."""
        return draws_with_paths(self.theta, self.paths, group_by_chain)

    def print_summary(self, prob: float = 0.9) -> None:
        """NumPyro's summary table of ``theta`` and the mean acceptance rate."""
        from numpyro.diagnostics import print_summary

        print_summary(jax.device_get(self.theta), prob=prob, group_by_chain=True)
        rate = float(np.nanmean(np.asarray(self.acceptance_rate)))
        print(f"particle Gibbs: mean acceptance of the theta random walk {rate:.2f}")

    def to_inference_data(self, ys=None):
        """``posterior`` (sites and ``x``), ``sample_stats`` (``acceptance_rate``,
        ``failed``) and ``observed_data`` when ``ys`` is given."""
        from particlekit.arviz import from_mcmc_draws

        return from_mcmc_draws(
            self.get_samples(group_by_chain=True),
            {"acceptance_rate": self.acceptance_rate, "failed": self.failed},
            observed={"y": ys} if ys is not None else None,
            attrs={"inference_library": "particlekit", "algorithm": "particle_gibbs"},
        )


def particle_gibbs(
    key: jax.Array,
    model: ParametricSSM,
    ys,
    *,
    num_samples: int,
    num_particles: int,
    num_chains: int = 4,
    step_size: float = 0.1,
    num_mcmc_steps: int = 5,
    progress_bar: bool | None = None,
) -> ParticleGibbsDraws:
    """Particle Gibbs for the parameters and the latent path of a ``ParametricSSM``.

    Parameters
    ----------
    key : PRNG key
    model : ParametricSSM
    ys : Array of shape (T, ...)
    num_samples : int
        Sweeps per chain (all kept: discard a burn-in yourself).
    num_particles : int
        Particles of each conditional SMC sweep (``>= 2``).
    num_chains : int
        Independent chains (vmapped); all start from one prior draw of ``theta`` and
        their own path simulated from it.
    step_size : float or Array
        Standard deviation of the random walk on ``u`` (a scalar, a ``(D,)`` vector or a
        ``(D, D)`` matrix square root of the step covariance, as BlackJAX's
        ``normal_random_walk``); a zero scale or a singular matrix is a ``ValueError`` (it
        would freeze ``theta``). Not adapted: tune it so that ``acceptance_rate`` is about
        0.2–0.5.
    num_mcmc_steps : int
        Random-walk steps on ``u`` per sweep.
    progress_bar : bool, optional
        A bar over the draws; ``None``: shown when standard error is a terminal.

    Returns
    -------
    ParticleGibbsDraws

    Warns
    -----
    RuntimeWarning
        When conditional SMC sweeps failed (impossible data under a ``theta``; from
        ``pgibbs.particle_gibbs``, also under ``jit``).
    UserWarning
        After an eager call, when a chain's random walk accepted under 2 % of its
        proposals (not said when sweeps failed: a failed sweep rejects every step).

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist, particlekit as pk
    >>> def prior():
    ...     numpyro.sample("rho", dist.Uniform(-1.0, 1.0))
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(theta["rho"] * x_prev, 1.0),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> model = pk.statespace.ParametricSSM(prior, model_fn)
    >>> _, ys = model_fn({"rho": 0.8}).simulate(jax.random.key(0), 30)
    >>> res = pk.statespace.particle_gibbs(jax.random.key(1), model, ys, num_samples=20,
    ...                                    num_particles=16, num_chains=2)
    >>> res.theta["rho"].shape, res.paths.shape
    ((2, 20), (2, 20, 30))
    """
    import blackjax

    from particlekit import pgibbs

    kernels.check_key(key)
    ys = check_model_and_data(model, ys, num_particles)
    step = jnp.asarray(step_size, jnp.float32)
    # (a matrix square root of a covariance may have negative entries: Cholesky factors of
    # negatively correlated steps do, and were refused)
    negative = step.ndim < 2 and not bool(jnp.all(step >= 0))
    if step.ndim > 2 or not bool(jnp.all(jnp.isfinite(step))) or negative:
        raise ValueError(
            "step_size must be a finite non-negative scalar or vector, or a finite matrix"
        )
    if step.shape not in ((), (model.dim,), (model.dim, model.dim)):
        raise ValueError(
            f"step_size has shape {step.shape}: a scalar, a ({model.dim},) vector or a "
            f"({model.dim}, {model.dim}) matrix for the {model.dim} unconstrained parameters"
        )
    _check_step_moves(step, model.dim)
    key_init, key_run = jax.random.split(key)
    u0 = model.sample_prior(key_init, 1)[0]
    res = pgibbs.particle_gibbs(
        key_run, model.ssm, ys, theta_init=u0, num_samples=num_samples,
        num_particles=num_particles, log_prior=model.log_prior,
        mcmc=lambda ld: blackjax.additive_step_random_walk.normal_random_walk(ld, step),
        num_mcmc_steps=num_mcmc_steps, num_chains=num_chains, progress_bar=progress_bar,
    )  # fmt: skip
    theta = jax.vmap(jax.vmap(model.constrain))(res.theta)
    draws = ParticleGibbsDraws(theta, res.theta, res.states, res.acceptance_rate, res.failed)
    _warn_if_untrustworthy(draws)
    return draws


def _check_step_moves(step: jax.Array, dim: int) -> None:
    """A zero step (a zero entry of a vector, a singular matrix) never moves ``u`` along
    some direction: ``theta`` would stay at its prior draw there, every step accepted.
    (A traced step, under ``jit`` / ``vmap``, is not checked.)"""
    if isinstance(step, jax.core.Tracer):
        return
    step = np.asarray(step, np.float64)
    frozen = np.linalg.matrix_rank(step) < dim if step.ndim == 2 else bool(np.any(step == 0.0))
    if frozen:
        raise ValueError(
            f"step_size {step.tolist()} never moves the parameters along some direction "
            "(a zero scale, or a singular matrix): theta would stay at its starting prior "
            "draw. Give positive scales (tune them so that acceptance_rate is about 0.2-0.5)"
        )


def _warn_if_untrustworthy(draws: ParticleGibbsDraws) -> None:
    """Warn after an eager call when a chain's ``theta`` hardly moved. (Failed sweeps:
    ``pgibbs.particle_gibbs`` has warned already, also under ``jit``.)"""
    if isinstance(draws.failed, jax.core.Tracer):  # under jit / vmap: not checked
        return
    if np.asarray(draws.failed).any():
        return  # (a failed sweep rejects every theta step: no word on the step size)
    rates = np.nanmean(np.asarray(draws.acceptance_rate, np.float64), axis=1)
    if (rates < LOW_ACCEPTANCE).any():
        warnings.warn(
            f"particle Gibbs acceptance rates of the theta random walk "
            f"{np.round(rates, 3).tolist()}: below {LOW_ACCEPTANCE:.0%} theta hardly moves. "
            "FIX: a smaller step_size (aim for an acceptance rate of about 0.2-0.5)",
            UserWarning,
            stacklevel=3,
        )
