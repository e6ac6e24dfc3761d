"""Particle marginal Metropolis–Hastings (Andrieu, Doucet & Holenstein 2010).

PMMH is random-walk Metropolis on the unconstrained parameters ``u`` with the intractable
likelihood replaced by the bootstrap filter's unbiased estimate ``p_hat(y | u)``. The chain
lives on the extended space of ``(u, seed)``, where ``seed`` is the filter's random input;
on that space the log-density ``log p(u) + log p_hat(y | u, seed)`` is a deterministic
function, so BlackJAX's Rosenbluth–Metropolis–Hastings kernel (``blackjax.rmh``) runs it as
is: the proposal moves ``u`` by a Gaussian step and draws a fresh ``seed``, whose law
cancels from the acceptance ratio. The estimate attached to the current state is kept, never
recomputed, which is what makes the chain exact (its ``u``-marginal is the posterior).

Adaptation, during warm-up only (the sampling phase is a fixed MH kernel): the proposal
covariance is ``s^2 (2.38^2 / D) Sigma`` (Roberts & Rosenthal 2001) with ``Sigma`` the
within-chain covariance pooled over chains of the previous warm-up window, and each chain's
``log s`` follows a Robbins–Monro recursion towards ``target_acceptance`` (Andrieu & Thoms
2008). The default target, 0.15, sits between the 0.234 of exact-likelihood random walks and
the about 0.07 that Sherlock et al. (2015) find optimal for a noisy likelihood whose
log-estimate has sd 1.8; with sd 1 to 1.5 (``choose_num_particles``) acceptance runs higher.

Each draw can carry a latent path: a trajectory from the genealogy of the particle system
that produced the draw's likelihood estimate (ibid., Section 2.4.2), recomputed from the
draw's ``(u, seed)`` at each kept iteration (one more filter run with history per draw).

With ``correlation=rho`` the chain carries the filter's Gaussian noise instead of a seed and
proposes it by a Crank–Nicolson step (correlated pseudo-marginal MCMC, Deligiannidis, Doucet
& Pitt 2018; the filter is ``pk.statespace.correlated``), which keeps the current and
proposed estimates correlated and the chain mixing with far fewer particles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import kernels, resampling
from particlekit.run import progress_bar_callback, resolve_progress_bar
from particlekit.statespace import correlated
from particlekit.statespace.likelihood import (
    filter_history,
    filter_prefix,
    flagged_log_likelihood,
    sample_path,
)
from particlekit.statespace.model import (
    LOW_ACCEPTANCE,
    ParametricSSM,
    check_model_and_data,
    draws_with_paths,
    unconstrain_params,
    warn_if_nan_likelihood,
)
from particlekit.types import PyTree

__all__ = ["pmmh", "PMMHResult", "NUM_INIT_CANDIDATES"]

NUM_INIT_CANDIDATES = 16  # prior draws scored per chain to pick its starting point
_NUM_WINDOWS = 5  # warm-up windows; the covariance is re-estimated after each but the last
_MIN_WINDOW_ACCEPTANCE = 0.02  # below this a window's covariance estimate is not used
_RHAT_WARN = 1.05
_get_scheme = resampling.get_scheme  # the argument ``resampling`` shadows the module


class PMMHResult(NamedTuple):
    """Draws of PMMH chains, leading axes ``(chain, draw)``.

    Attributes
    ----------
    theta : dict
        Constrained parameter draws ``{site: (num_chains, num_samples, ...)}`` (with the
        prior's deterministic sites).
    unconstrained : Array of shape (num_chains, num_samples, D)
        The chain's state ``u``.
    log_likelihood : Array of shape (num_chains, num_samples)
        The filter's estimate ``log p_hat(y | theta)`` attached to each draw.
    log_prior : Array of shape (num_chains, num_samples)
        ``log p(u)`` (log-Jacobian included).
    is_accepted : Array of shape (num_chains, num_samples), bool
        Whether the proposal of the iteration was accepted.
    acceptance_rate : Array of shape (num_chains,)
        Fraction of accepted proposals in the sampling phase.
    paths : PyTree or None
        Latent paths ``(num_chains, num_samples, T, ...)`` (``latent_paths=True``).
    proposal_covariance : Array of shape (num_chains, D, D)
        The random-walk covariance of each chain after warm-up.
    failed : Array of shape (num_chains,), bool
        The chain never found a finite likelihood estimate (impossible data under every
        starting draw): its draws are the prior draws it started from.
    num_nonfinite : Array of shape (num_chains,), int
        Log-densities (starting candidates and proposals) that were NaN: the prior, or a
        potential of the filter, was NaN or ``+inf`` there (a model undefined at those
        parameters, e.g. ``jnp.sqrt`` of a negative value). Each was read as a zero
        likelihood (never a starting point, always rejected), which biases the posterior
        if the model is meant to be defined there; ``pmmh`` warns when any is nonzero.
    num_particles : int
        Particles of the filter.
    """

    theta: dict
    unconstrained: jax.Array
    log_likelihood: jax.Array
    log_prior: jax.Array
    is_accepted: jax.Array
    acceptance_rate: jax.Array
    paths: PyTree
    proposal_covariance: jax.Array
    failed: jax.Array
    num_nonfinite: jax.Array
    num_particles: int

    def get_samples(self, group_by_chain: bool = False) -> dict:
        """``{site: draws}``, plus ``"x"`` for the latent paths; chains concatenated unless
        ``group_by_chain``."""
        return draws_with_paths(self.theta, self.paths, group_by_chain)

    def print_summary(self, prob: float = 0.9) -> None:
        """NumPyro's summary table of ``theta`` (mean, sd, quantiles, ESS, R-hat) and each
        chain's acceptance rate."""
        from numpyro.diagnostics import print_summary

        print_summary(jax.device_get(self.theta), prob=prob, group_by_chain=True)
        rates = ", ".join(f"{float(r):.2f}" for r in np.asarray(self.acceptance_rate))
        print(f"PMMH with {self.num_particles} particles; acceptance rate per chain: {rates}")

    def to_inference_data(self, ys=None):
        """The draws for ArviZ: ``posterior`` (``theta`` and the latent path ``x``),
        ``sample_stats`` (``log_likelihood_estimate``, the filter's estimate of the whole
        series' log-likelihood; ``lp`` = log prior + estimate; ``is_accepted``; and per
        chain ``acceptance_rate``, ``failed`` and ``num_nonfinite``) and ``observed_data``
        when ``ys`` is given. An ``InferenceData`` with arviz < 1, a ``DataTree`` with arviz >= 1.

        The estimate is not named ``log_likelihood``: ArviZ reads a ``sample_stats``
        variable of that name as pointwise log-likelihoods, so ``az.loo`` reported an
        "elpd" from one observation."""
        from particlekit.arviz import from_mcmc_draws

        return from_mcmc_draws(
            self.get_samples(group_by_chain=True),
            {
                "log_likelihood_estimate": self.log_likelihood,
                "lp": self.log_prior + self.log_likelihood,
                "is_accepted": self.is_accepted,
                "acceptance_rate": self.acceptance_rate,
                "failed": self.failed,
                "num_nonfinite": self.num_nonfinite,
            },
            observed={"y": ys} if ys is not None else None,
            attrs={"inference_library": "particlekit", "algorithm": "pmmh",
                   "num_particles": self.num_particles},
        )  # fmt: skip


class _Chains(NamedTuple):
    position: tuple  # (u (C, D), randomness of the filter (C, ...))
    logdensity: jax.Array  # (C,)


class _FilterRandomness(NamedTuple):
    """How the chain carries the filter's random input ``z``: ``draw(key) -> z``,
    ``propose(key, z) -> z'``, ``log_likelihood(ssm, z)`` and ``path(key, ssm, z)`` (a
    trajectory from the genealogy of the run with input ``z``)."""

    draw: Callable
    propose: Callable
    log_likelihood: Callable
    path: Callable


def _independent(ys, num_particles, scheme, ess_threshold) -> _FilterRandomness:
    """Plain PMMH: ``z`` is the filter's PRNG seed, drawn afresh with every proposal."""
    run = partial(filter_history, ys=ys, num_particles=num_particles, scheme=scheme,
                  ess_threshold=ess_threshold)  # fmt: skip

    def log_likelihood(ssm, seed):
        carry = filter_prefix(
            jax.random.wrap_key_data(seed), ssm, ys, ys.shape[0], num_particles=num_particles,
            scheme=scheme, ess_threshold=ess_threshold,
        )  # fmt: skip
        return flagged_log_likelihood(carry)

    def path(key, ssm, seed):
        _, parts, log_w, anc = run(jax.random.wrap_key_data(seed), ssm)
        return sample_path(key, parts, log_w, anc)

    return _FilterRandomness(
        jax.random.key_data, lambda key, seed: jax.random.key_data(key), log_likelihood, path
    )


def _correlated(ys, num_particles, state_shape, correlation) -> _FilterRandomness:
    """Correlated PMMH: ``z`` is the Gaussian noise of ``correlated.correlated_filter``,
    moved by a Crank–Nicolson step of correlation ``rho``."""

    def path(key, ssm, noise):
        _, (parts, log_w, anc) = correlated.correlated_filter(ssm, ys, noise, keep_history=True)
        return sample_path(key, parts, log_w, anc)

    return _FilterRandomness(
        lambda key: correlated.sample_noise(key, ys.shape[0], num_particles, state_shape),
        lambda key, noise: correlated.refresh_noise(key, noise, correlation),
        lambda ssm, noise: correlated.correlated_filter(ssm, ys, noise, flag_nonfinite=True),
        path,
    )


def _log_target(model: ParametricSSM, randomness: _FilterRandomness):
    """``(u, z) -> log p(u) + log p_hat(y | u, z)``, NaN where the prior or the filter met a
    NaN or ``+inf`` (``flagged_log_likelihood``): the callers count those and read them as
    ``-inf`` (``_read_nan_as_impossible``)."""

    def logdensity(position):
        u, z = position
        return model.log_prior(u) + randomness.log_likelihood(model.ssm(u), z)

    return logdensity


def _read_nan_as_impossible(value):
    return jnp.where(jnp.isnan(value), -jnp.inf, value)


def rmh_accept(key, position, logdensity_value, proposal, proposal_value):
    """BlackJAX's RMH accept–reject (``blackjax.mcmc.random_walk.build_rmh``) of a
    ``proposal`` and its log-density that the caller computed, so that a NaN one (a model
    undefined there, ``_log_target``) can be counted: the kernel reads it as ``-inf``
    (rejected). PMMH's and SMC²'s moves. Returns the kernel's ``(state, info)``."""
    import blackjax
    from blackjax.mcmc.random_walk import RWState

    kernel = blackjax.mcmc.random_walk.build_rmh()
    return kernel(
        key,
        RWState(position, logdensity_value),
        lambda _: _read_nan_as_impossible(proposal_value),  # (evaluated at ``proposal``)
        lambda _k, _pos: proposal,
    )


def _rw_step(logdensity, propose_z, key, position, logdensity_value, chol, log_scale):
    """One RMH step of one chain with proposal ``u + exp(log_scale) chol eps`` and the
    filter's random input proposed by ``propose_z`` (``rmh_accept``). Returns
    ``(position, logdensity, acceptance probability, accepted, proposal was NaN)``."""
    k_eps, k_z, k_accept = jax.random.split(key, 3)
    u, z = position
    eps = jax.random.normal(k_eps, u.shape, u.dtype)
    proposal = (u + jnp.exp(log_scale) * (chol @ eps), propose_z(k_z, z))
    proposal_value = logdensity(proposal)
    state, info = rmh_accept(k_accept, position, logdensity_value, proposal, proposal_value)
    accept_prob = jnp.where(jnp.isnan(info.acceptance_rate), 0.0, info.acceptance_rate)
    proposal_nan = jnp.isnan(proposal_value)
    return state.position, state.logdensity, accept_prob, info.is_accepted, proposal_nan


def _pooled_covariance(moments):
    """The within-chain covariance of a window, averaged over chains, from its running
    moments ``(count, shift, sum du (C, D), sum du du^T (C, D, D), _)`` of the shifted
    draws ``du = u - shift``."""
    count, _, total_u, total_uu = moments[:4]
    n = jnp.maximum(count, 2).astype(total_u.dtype)
    mean = total_u / n
    cov = (total_uu - n * jnp.einsum("ci,cj->cij", mean, mean)) / (n - 1)
    return jnp.mean(cov, axis=0)


def _safe_cholesky(cov):
    d = cov.shape[-1]
    jitter = 1e-6 * (jnp.trace(cov) / d + 1e-12)
    return jnp.linalg.cholesky(cov + jitter * jnp.eye(d, dtype=cov.dtype))


@partial(
    jax.jit,
    static_argnames=(
        "model", "num_particles", "num_samples", "num_warmup", "num_chains", "scheme",
        "ess_threshold", "target_acceptance", "latent_paths", "progress_bar", "correlation",
        "state_shape",
    ),
)  # fmt: skip
def _pmmh(
    key, ys, u_init, *, model, num_particles, num_samples, num_warmup, num_chains, scheme,
    ess_threshold, target_acceptance, latent_paths, progress_bar, correlation, state_shape,
):  # fmt: skip
    if correlation is None:
        randomness = _independent(ys, num_particles, scheme, ess_threshold)
    else:
        randomness = _correlated(ys, num_particles, state_shape, correlation)
    logdensity = _log_target(model, randomness)
    dim = model.dim
    key_init, key_run, key_paths = jax.random.split(key, 3)
    total = num_warmup + num_samples
    tick = progress_bar_callback(total, desc="pmmh") if progress_bar else None

    # ---- starting points: the best of NUM_INIT_CANDIDATES prior draws per chain (or the
    # user's), scored with the same log-density the chain uses
    keys_cand = jax.random.split(key_init, 3)
    if u_init is None:
        candidates = model.sample_prior(keys_cand[0], num_chains * NUM_INIT_CANDIDATES)
        candidates = candidates.reshape(num_chains, NUM_INIT_CANDIDATES, dim)
    else:
        candidates = jnp.broadcast_to(u_init, (num_chains, 1, dim))
    num_cand = candidates.shape[1]
    zs = jax.vmap(randomness.draw)(jax.random.split(keys_cand[1], num_chains * num_cand))
    zs = jax.tree.map(lambda a: a.reshape((num_chains, num_cand) + a.shape[1:]), zs)
    scores = jax.vmap(jax.vmap(lambda u, z: logdensity((u, z))))(candidates, zs)
    num_nonfinite = jnp.sum(jnp.isnan(scores), axis=1, dtype=jnp.int32)  # (C,)
    scores = _read_nan_as_impossible(scores)
    best = jnp.argmax(scores, axis=1)
    pick = jax.vmap(lambda a, i: a[i])
    z_best = jax.tree.map(lambda a: pick(a, best), zs)
    chains = _Chains((pick(candidates, best), z_best), pick(scores, best))
    failed = ~jnp.isfinite(chains.logdensity)

    # initial proposal: the prior's spread (the scale adapts down quickly)
    prior_draws = model.sample_prior(keys_cand[2], max(4 * dim, 64))
    chol = _safe_cholesky(jnp.atleast_2d(jnp.cov(prior_draws, rowvar=False)) * 2.38**2 / dim)
    step = jax.vmap(partial(_rw_step, logdensity, randomness.propose), in_axes=(0, 0, 0, None, 0))

    def paths_of(k, position):
        u, z = position
        keys = jax.random.split(k, num_chains)
        return jax.vmap(lambda kk, uu, zz: randomness.path(kk, model.ssm(uu), zz))(keys, u, z)

    no_paths = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(paths_of, key_paths, chains.position)
    )
    window = max(num_warmup // _NUM_WINDOWS, 2 * dim + 2)

    # ---- one scan: warm-up iterations adapt (scale every step, covariance at the end of
    # each window from its running moments), sampling iterations do not
    def body(carry, inp):
        chains, log_scale, chol, moments, num_nonfinite = carry
        i, k = inp
        pos, ld, accept_prob, accepted, proposal_nan = step(
            jax.random.split(k, num_chains), chains.position, chains.logdensity, chol, log_scale
        )
        num_nonfinite = num_nonfinite + proposal_nan.astype(jnp.int32)
        warming = i < num_warmup
        gain = jnp.minimum(1.0, 2.0 / (i + 1.0) ** 0.6)
        log_scale = jnp.where(warming, log_scale + gain * (accept_prob - target_acceptance),
                              log_scale)  # fmt: skip
        count, shift, total_u, total_uu, total_prob, total_log_scale = moments
        du = pos[0] - shift  # shifted sums: no float32 cancellation far from the origin
        moments = (count + 1, shift, total_u + du, total_uu + jnp.einsum("ci,cj->cij", du, du),
                   total_prob + jnp.mean(accept_prob), total_log_scale + log_scale)  # fmt: skip
        # the sampling phase uses the noisy scale's average over the last window and chains
        last = i == num_warmup - 1
        averaged = jnp.mean(moments[5]) / jnp.maximum(moments[0], 1)
        log_scale = jnp.where(last, jnp.full_like(log_scale, averaged), log_scale)
        # re-estimate the covariance at the end of a window that leaves another one to adapt
        window_end = warming & ((i + 1) % window == 0) & (i + 1 + window <= num_warmup)
        new_chol = _safe_cholesky(_pooled_covariance(moments) * 2.38**2 / dim)
        use = window_end & (moments[4] / jnp.maximum(count, 1) >= _MIN_WINDOW_ACCEPTANCE)
        use = use & jnp.all(jnp.isfinite(new_chol))
        chol = jnp.where(use, new_chol, chol)
        log_scale = jnp.where(use, jnp.zeros_like(log_scale), log_scale)
        reset = (jnp.zeros_like(count), pos[0], jnp.zeros_like(total_u),
                 jnp.zeros_like(total_uu), jnp.zeros_like(total_prob),
                 jnp.zeros_like(total_log_scale))  # fmt: skip
        moments = jax.tree.map(lambda r, m: jnp.where(window_end, r, m), reset, moments)
        if tick is not None:
            tick(i)
        # a latent path per kept draw, from the particle system of the draw's estimate
        paths = None
        if latent_paths:
            paths = jax.lax.cond(
                warming, lambda: no_paths, lambda: paths_of(jax.random.fold_in(key_paths, i), pos)
            )
        carry = (_Chains(pos, ld), log_scale, chol, moments, num_nonfinite)
        return carry, (pos[0], ld, accepted, paths)

    zero_moments = (
        jnp.zeros((), jnp.int32),
        chains.position[0],
        jnp.zeros((num_chains, dim)),
        jnp.zeros((num_chains, dim, dim)),
        jnp.zeros(()),
        jnp.zeros(num_chains),
    )
    steps = jnp.arange(total)
    keys = jax.vmap(lambda s: jax.random.fold_in(key_run, s))(steps)
    carry = (chains, jnp.zeros(num_chains), chol, zero_moments, num_nonfinite)
    (_, log_scale, chol, _, num_nonfinite), (us, lds, accepted, paths) = jax.lax.scan(
        body, carry, (steps, keys)
    )
    keep = slice(num_warmup, total)
    us = jnp.swapaxes(us[keep], 0, 1)  # (C, num_samples, D)
    lds, accepted = lds[keep].T, accepted[keep].T
    paths = jax.tree.map(lambda a: jnp.swapaxes(a[keep], 0, 1), paths)
    log_prior = jax.vmap(jax.vmap(model.log_prior))(us)
    log_lik = jnp.where(jnp.isfinite(lds), lds - log_prior, -jnp.inf)
    theta = jax.vmap(jax.vmap(model.constrain))(us)

    scale2 = jnp.exp(2.0 * log_scale)[:, None, None]
    cov = scale2 * (chol @ chol.T)[None]
    return theta, us, log_lik, log_prior, accepted, paths, cov, failed, num_nonfinite


def pmmh(
    key: jax.Array,
    model: ParametricSSM,
    ys,
    *,
    num_particles: int,
    num_samples: int = 1000,
    num_warmup: int = 1000,
    num_chains: int = 4,
    init_params: dict | None = None,
    target_acceptance: float = 0.15,
    latent_paths: bool = True,
    resampling="systematic",
    ess_threshold: float = 0.5,
    correlation: float | None = None,
    progress_bar: bool | None = None,
) -> PMMHResult:
    """Particle marginal Metropolis–Hastings for the parameters and the latent path of a
    ``ParametricSSM``, with ``num_chains`` chains run in parallel (vmapped).

    Parameters
    ----------
    key : PRNG key
    model : ParametricSSM
        The prior and ``model_fn(theta) -> StateSpaceModel``.
    ys : Array of shape (T, ...)
        Observations (NaN marks a missing ``y_t``, as in the filters).
    num_particles : int
        Particles of the bootstrap filter. Choose it so that the sd of the log-likelihood
        estimate near the posterior mean is about 1 to 1.5 (``choose_num_particles``).
    num_samples, num_warmup : int
        Iterations kept, and adaptation iterations before them (discarded).
    num_chains : int
        Independent chains (default 4, so that R-hat can be read).
    init_params : dict, optional
        Starting ``theta`` (constrained values of every site, with its shape; the
        prior's deterministic sites and ``"x"`` are ignored, any other key is an error) for
        all chains. Default: per chain, the best (highest prior times likelihood estimate) of
        ``NUM_INIT_CANDIDATES`` prior draws.
    target_acceptance : float
        Acceptance rate the warm-up steers the random-walk scale to.
    latent_paths : bool
        Also return a latent path per draw (``paths``); costs one more filter run with
        history per kept draw.
    resampling, ess_threshold
        The filter's resampling scheme and ESS trigger, as in ``pk.filters.bootstrap``
        (without ``correlation``; with it, other values than the defaults are a
        ``ValueError``).
    correlation : float, optional
        Correlated pseudo-marginal moves (Deligiannidis, Doucet & Pitt 2018): the chain
        carries the filter's Gaussian noise ``z`` and proposes ``rho z + sqrt(1 - rho^2)
        xi`` with ``rho = correlation`` (e.g. 0.99), so that the estimates at the current
        and proposed ``theta`` are strongly correlated and far fewer particles give the
        same acceptance. The filter then moves by inverse transform and resamples at every
        step by the sorted (Hilbert-ordered) inverse CDF
        (``pk.statespace.correlated``); the initial and transition laws must be those
        ``pk.filters.sqmc`` supports. ``None`` (default): a fresh filter seed per proposal.
    progress_bar : bool, optional
        A bar over the iterations; ``None``: shown when standard error is a terminal.

    Returns
    -------
    PMMHResult
        ``.print_summary()``, ``.get_samples()``, ``.to_inference_data(ys)``.

    Warns
    -----
    UserWarning
        When a chain accepted under 2 % of its proposals (the likelihood estimate is too
        noisy, or the chain is stuck), R-hat of a parameter exceeds 1.05, or the model was
        NaN at some proposals (``num_nonfinite``).

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
    >>> _, ys = model_fn({"rho": 0.8}).simulate(jax.random.key(0), 50)
    >>> res = pk.statespace.pmmh(jax.random.key(1), model, ys, num_particles=128,
    ...                          num_samples=100, num_warmup=200, num_chains=2)
    >>> res.theta["rho"].shape, res.paths.shape
    ((2, 100), (2, 100, 50))
    """
    kernels.check_key(key)
    ys = check_model_and_data(model, ys, num_particles)
    num_samples = kernels.check_num_particles(num_samples, "num_samples")
    num_chains = kernels.check_num_particles(num_chains, "num_chains")
    if isinstance(num_warmup, bool) or int(num_warmup) != num_warmup or num_warmup < 0:
        raise ValueError(f"num_warmup must be a non-negative integer, got {num_warmup!r}")
    if not 0.0 < float(target_acceptance) < 1.0:
        raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
    ess_threshold = kernels.check_ess_threshold(ess_threshold)
    state_shape = None
    if correlation is not None:
        if not 0.0 <= float(correlation) < 1.0:
            raise ValueError(f"correlation must be in [0, 1), got {correlation}")
        if _get_scheme(resampling) is not _get_scheme("systematic"):  # (name or function)
            raise ValueError(
                "correlated PMMH resamples by the sorted inverse CDF at every step: leave "
                f"resampling at its default (got {resampling!r})"
            )
        if float(ess_threshold) != 0.5:  # (the default, which it cannot honour either)
            raise ValueError(
                "correlated PMMH resamples at every step, so ess_threshold has no effect: "
                f"leave it at its default (got {ess_threshold})"
            )
        u0 = model.sample_prior(jax.random.key(0), 1)[0]
        state_shape = correlated.check_model(model.ssm(u0))
        correlation = float(correlation)
    u_init = None if init_params is None else _unconstrain(model, init_params)
    theta, us, log_lik, log_prior, accepted, paths, cov, failed, num_nonfinite = _pmmh(
        key, ys, u_init, model=model, num_particles=num_particles, num_samples=num_samples,
        num_warmup=int(num_warmup), num_chains=num_chains,
        scheme=_get_scheme(resampling), ess_threshold=float(ess_threshold),
        target_acceptance=float(target_acceptance), latent_paths=bool(latent_paths),
        progress_bar=resolve_progress_bar(progress_bar), correlation=correlation,
        state_shape=state_shape,
    )  # fmt: skip
    rate = jnp.mean(accepted.astype(jnp.float32), axis=1)
    result = PMMHResult(
        theta, us, log_lik, log_prior, accepted, rate, paths, cov, failed, num_nonfinite,
        num_particles,
    )  # fmt: skip
    _warn_if_untrustworthy(result)
    return result


def _unconstrain(model: ParametricSSM, params: dict) -> jax.Array:
    return unconstrain_params(model, params, "init_params")


def _warn_if_untrustworthy(result: PMMHResult) -> None:
    if isinstance(result.failed, jax.core.Tracer):  # under jit / vmap: not checked
        return  # (np.asarray of it was a TracerArrayConversionError)
    warn_if_nan_likelihood(np.asarray(result.num_nonfinite), "PMMH", "chain")
    failed = np.asarray(result.failed)
    if failed.any():
        warnings.warn(
            f"PMMH chains {np.flatnonzero(failed).tolist()} found no theta with a finite "
            "likelihood estimate among their starting draws: the data look impossible under "
            "the prior (check the observation model and the data), or pass init_params",
            UserWarning,
            stacklevel=3,
        )
        return
    rates = np.asarray(result.acceptance_rate)
    if (rates < LOW_ACCEPTANCE).any():
        warnings.warn(
            f"PMMH acceptance rates {np.round(rates, 3).tolist()}: below "
            f"{LOW_ACCEPTANCE * 100:g} % the chain hardly moves. FIX: more particles "
            "(pk.statespace.choose_num_particles gives an N whose "
            "log-likelihood sd is ~1.2), or a longer warm-up",
            UserWarning,
            stacklevel=3,
        )
    if rates.shape[0] >= 2:
        from numpyro.diagnostics import split_gelman_rubin

        for name, draws in result.theta.items():
            draws = np.asarray(draws, dtype=np.float64)
            if draws.shape[1] >= 4:
                rhat = np.nanmax(np.atleast_1d(split_gelman_rubin(draws)))
                if rhat > _RHAT_WARN:
                    warnings.warn(
                        f"PMMH R-hat of {name!r} is {rhat:.3f} (> {_RHAT_WARN}): the chains "
                        "disagree. FIX: more warm-up and samples, or more particles",
                        UserWarning,
                        stacklevel=3,
                    )
