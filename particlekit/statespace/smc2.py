"""SMC² (Chopin, Jacob & Papaspiliopoulos 2013): sequential inference of ``theta`` and the
evidence, with a particle filter inside every parameter particle.

The outer sampler is data tempering (IBIS): ``M`` particles ``u_m ~ p(u)``, each carrying a
bootstrap filter of ``N_x`` particles for its own ``theta``. At time ``t`` every filter
assimilates ``y_t``; its likelihood increment ``p_hat(y_t | y_{0:t-1}, u_m)`` multiplies
the weight of ``u_m``, and ``sum_m W_m p_hat(y_t | ...)`` is the evidence increment. When the
ESS of the weights falls below ``ess_threshold * M`` the population is resampled and moved
by ``num_mcmc_steps`` PMMH steps targeting ``p(u | y_{0:t})``: a Gaussian random walk whose
covariance is ``2.38^2 / D`` times the population's, each proposal scored by a fresh filter
over ``y_{0:t}`` whose state replaces the particle's on acceptance.

When a move's acceptance rate falls below ``min_acceptance`` (the likelihood estimates have
become too noisy as ``t`` grew), ``N_x`` doubles by the exchange step (ibid., Section 3.6):
every ``u_m`` gets a fresh filter of ``2 N_x`` particles over ``y_{0:t}`` and its weight is
multiplied by ``p_hat_new / p_hat_old``, a generalised importance-sampling step that keeps
the target. Shapes depend on ``N_x``, so the run is a host loop over compiled segments, one
per value of ``N_x``: each segment is a ``lax.while_loop`` over time that returns when the
data end, the weights all vanish, or a move's acceptance asks for more inner particles.

Latent paths: at the end each ``u_m`` gets one more filter with history (the same exchange
step with ``N_x`` unchanged), and a path drawn from its genealogy; the pair ``(theta, x)``
is then a weighted draw of the joint posterior.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import kernels, resampling
from particlekit.run import progress_bar_callback, resolve_progress_bar
from particlekit.statespace.likelihood import (
    FilterCarry,
    filter_history,
    filter_init,
    filter_prefix,
    filter_step,
    flagged_log_likelihood,
    sample_path,
)
from particlekit.statespace.model import (
    ParametricSSM,
    check_model_and_data,
    draws_with_paths,
    warn_if_nan_likelihood,
)
from particlekit.statespace.pmmh import rmh_accept
from particlekit.types import PyTree

__all__ = ["smc2", "SMC2Result"]

_PATH_BATCH = 32  # parameter particles whose filter histories are held in memory at once
_get_scheme = resampling.get_scheme  # the argument ``resampling`` shadows the module


class SMC2Result(NamedTuple):
    """Draws of SMC² runs, leading axes ``(chain, draw)``: each chain is an independent run
    whose ``M`` final parameter particles, resampled to equal weights, are its draws.

    Attributes
    ----------
    theta : dict
        Constrained parameter draws ``{site: (num_chains, M, ...)}`` (with the prior's
        deterministic sites).
    unconstrained : Array of shape (num_chains, M, D)
    log_likelihood : Array of shape (num_chains, M)
        The inner filter's ``log p_hat(y | theta)`` attached to each draw.
    log_prior : Array of shape (num_chains, M)
    paths : PyTree or None
        A latent path per draw, ``(num_chains, M, T, ...)`` (``latent_paths=True``).
    log_evidence : Array of shape (num_chains,)
        Estimate of ``log p(y_{0:T-1})``, the prior integrated out.
    ess : Array of shape (num_chains, T)
        ESS of the parameter weights after assimilating ``y_t`` (before any move).
    acceptance_rate : Array of shape (num_chains, T)
        Acceptance rate of the PMMH moves at ``t`` (the last ones if ``N_x`` grew at ``t``);
        NaN where the population was not moved.
    num_x_particles : Array of shape (num_chains, T), int
        Inner particles ``N_x`` in use after step ``t``.
    failed : Array of shape (num_chains,), bool
        Every parameter weight vanished at some ``t`` (the data are impossible under the
        whole population); the run stopped there and ``log_evidence`` is ``-inf``.
    num_nonfinite : Array of shape (num_chains,), int
        Parameter values (particles when they met it, and PMMH proposals) at which the
        prior or a potential of the inner filter was NaN or ``+inf`` (a model undefined
        there, e.g. ``jnp.sqrt`` of a negative value): each was given weight zero, or
        rejected, which biases the posterior if the model is meant to be defined there;
        ``smc2`` warns when any is nonzero.
    num_theta_particles : int
        ``M``.
    """

    theta: dict
    unconstrained: jax.Array
    log_likelihood: jax.Array
    log_prior: jax.Array
    paths: PyTree
    log_evidence: jax.Array
    ess: jax.Array
    acceptance_rate: jax.Array
    num_x_particles: jax.Array
    failed: jax.Array
    num_nonfinite: jax.Array
    num_theta_particles: int

    def get_samples(self, group_by_chain: bool = False) -> dict:
        """``{site: draws}``, plus ``"x"`` for the latent paths; chains concatenated unless
        ``group_by_chain``."""
        return draws_with_paths(self.theta, self.paths, group_by_chain)

    def print_summary(self, prob: float = 0.9) -> None:
        """NumPyro's summary table of ``theta``, the log evidence and the inner particle
        counts of each run."""
        from numpyro.diagnostics import print_summary

        print_summary(jax.device_get(self.theta), prob=prob, group_by_chain=True)
        for c, le in enumerate(np.asarray(self.log_evidence)):
            counts = np.unique(np.asarray(self.num_x_particles[c])).tolist()
            moves = int(np.sum(np.isfinite(np.asarray(self.acceptance_rate[c]))))
            print(f"run {c}: log evidence {le:.3f}; {moves} moves; N_x used {counts}")

    def to_inference_data(self, ys=None):
        """The draws for ArviZ: ``posterior`` (``theta`` and the latent path ``x``),
        ``sample_stats`` (``log_likelihood_estimate``, the inner filter's estimate of the
        whole series' log-likelihood, not named ``log_likelihood``, which ArviZ would read
        as pointwise values; ``lp``; and per chain ``log_marginal_likelihood``, ``failed``
        and ``num_nonfinite``), ``smc2_steps`` (``ess``, ``acceptance_rate``,
        ``num_x_particles`` per time step) and ``observed_data`` when ``ys`` is given."""
        from particlekit.arviz import _dataset, from_mcmc_draws, wrap_groups

        data = from_mcmc_draws(
            self.get_samples(group_by_chain=True),
            {
                "log_likelihood_estimate": self.log_likelihood,
                "lp": self.log_prior + self.log_likelihood,
                "failed": self.failed,
            },
            observed={"y": ys} if ys is not None else None,
            attrs={"inference_library": "particlekit", "algorithm": "smc2",
                   "num_theta_particles": self.num_theta_particles},
        )  # fmt: skip
        groups = {name: data[name] for name in _group_names(data)}
        groups = {
            name: (g.to_dataset() if hasattr(g, "to_dataset") else g) for name, g in groups.items()
        }
        groups["sample_stats"]["log_marginal_likelihood"] = (
            "chain",
            np.asarray(self.log_evidence),
        )
        groups["sample_stats"]["num_nonfinite"] = ("chain", np.asarray(self.num_nonfinite))
        steps = {
            "ess": np.asarray(self.ess),
            "acceptance_rate": np.asarray(self.acceptance_rate),
            "num_x_particles": np.asarray(self.num_x_particles),
        }
        groups["smc2_steps"] = _dataset(steps, ["chain", "time"], dict(groups["posterior"].attrs))
        return wrap_groups(groups, dict(groups["posterior"].attrs))


def _group_names(data) -> list:
    return list(data.children) if hasattr(data, "children") else list(data.groups())


# --------------------------------------------------------------------------------------
# the state of one run and its steps (pure functions of the state)
# --------------------------------------------------------------------------------------
class _History(NamedTuple):
    ess: jax.Array  # (T,)
    acceptance_rate: jax.Array  # (T,), NaN where not moved


class _RunState(NamedTuple):
    """One SMC² run paused after assimilating ``y_t``."""

    key: jax.Array
    u: jax.Array  # (M, D)
    log_prior: jax.Array  # (M,)
    log_weights: jax.Array  # (M,) unnormalised
    filters: FilterCarry  # batched over M; filters.state.log_evidence = log p_hat(y_{0:t})
    t: jax.Array  # () int32
    log_evidence: jax.Array
    compensation: jax.Array
    history: _History
    num_nonfinite: jax.Array  # () int32: parameter values where the model was NaN


class _Config(NamedTuple):
    model: ParametricSSM
    num_x: int
    num_mcmc_steps: int
    ess_threshold: float  # of the outer (parameter) population
    min_acceptance: float
    can_grow: bool
    scheme: object  # of both populations' resampling
    inner_ess_threshold: float


def _log_lik(carry: FilterCarry) -> jax.Array:
    """The filter's ``log p_hat``, NaN where it met a NaN or ``+inf`` potential
    (``flagged_log_likelihood``; every caller reads NaN as ``-inf`` after counting)."""
    return flagged_log_likelihood(carry)


def _newly_flagged(new: FilterCarry, old: FilterCarry) -> jax.Array:
    """How many of the (batched) filters met a NaN or ``+inf`` potential for the first
    time (``old``: the same parameter particles' filters before)."""
    return jnp.sum((new.num_nonfinite > 0) & (old.num_nonfinite == 0), dtype=jnp.int32)


def _add_evidence(state: _RunState, increments: jax.Array, t) -> _RunState:
    """Weight the parameter particles by their filters' increments at ``t`` and add the
    evidence increment ``log sum_m W_m exp(increment_m)``."""
    increments = jnp.where(jnp.isnan(increments), -jnp.inf, increments)
    log_w_norm, _ = resampling.log_normalize(state.log_weights)
    step_evidence = jax.nn.logsumexp(log_w_norm + increments)
    step_evidence = jnp.where(jnp.isnan(step_evidence), -jnp.inf, step_evidence)
    log_weights = state.log_weights + increments
    total, comp = kernels.compensated_add(state.log_evidence, state.compensation, step_evidence)
    ess = resampling.ess(log_weights)
    history = state.history._replace(ess=state.history.ess.at[t].set(ess))
    return state._replace(
        log_weights=log_weights, log_evidence=total, compensation=comp, history=history
    )


def _initial_state(key, ys, cfg: _Config, num_theta: int) -> _RunState:
    model = cfg.model
    key, k_prior, k_filters = jax.random.split(key, 3)
    u = model.sample_prior(k_prior, num_theta)
    log_prior = jax.vmap(model.log_prior)(u)

    def start(k, u_m):
        return filter_init(k, model.ssm(u_m), ys, num_particles=cfg.num_x, scheme=cfg.scheme)

    filters = jax.vmap(start)(jax.random.split(k_filters, num_theta), u)
    num_steps = ys.shape[0]
    history = _History(jnp.zeros(num_steps), jnp.full(num_steps, jnp.nan))
    # the draws come from the prior's sample sites alone: its factors (and scaled sites)
    # weight them, and their mean weight is the first factor of the evidence
    log_w0 = jax.vmap(model.log_draw_weight)(u)
    log_w0 = jnp.where(jnp.isnan(log_w0), -jnp.inf, log_w0)
    log_z0 = jax.nn.logsumexp(log_w0) - jnp.log(num_theta)
    zero = jnp.zeros(())
    # parameter values where the prior or the filter met a NaN (once each)
    num_nonfinite = jnp.sum(jnp.isnan(log_prior) | (filters.num_nonfinite > 0), dtype=jnp.int32)
    state = _RunState(
        key, u, log_prior, log_w0, filters, jnp.zeros((), jnp.int32), log_z0, zero, history,
        num_nonfinite,
    )  # fmt: skip
    return _add_evidence(state, _log_lik(filters), 0)


def _assimilate(state: _RunState, ys, cfg: _Config) -> _RunState:
    """Advance every parameter particle's filter by one observation, ``y_{t+1}``."""
    t = state.t + 1
    key, sub = jax.random.split(state.key)

    def advance(k, u_m, carry):
        new, info = filter_step(
            k, cfg.model.ssm(u_m), carry, ys, t, scheme=cfg.scheme,
            ess_threshold=cfg.inner_ess_threshold,
        )  # fmt: skip
        return new, info.log_evidence_increment

    keys = jax.random.split(sub, state.u.shape[0])
    filters, increments = jax.vmap(advance)(keys, state.u, state.filters)
    # a filter that met a NaN potential (now or before) has no likelihood estimate
    increments = jnp.where(filters.num_nonfinite > 0, jnp.nan, increments)
    num_nonfinite = state.num_nonfinite + _newly_flagged(filters, state.filters)
    state = state._replace(key=key, filters=filters, t=t, num_nonfinite=num_nonfinite)
    return _add_evidence(state, increments, t)


def _fresh_filter(key, u, ys, length, cfg: _Config, num_x: int) -> FilterCarry:
    """A new filter of ``num_x`` particles over ``ys[:length]`` at the parameters ``u``."""
    return filter_prefix(
        key, cfg.model.ssm(u), ys, length, num_particles=num_x, scheme=cfg.scheme,
        ess_threshold=cfg.inner_ess_threshold,
    )  # fmt: skip


def _proposal_cholesky(u, log_weights):
    """Cholesky factor of ``2.38^2 / D`` times the weighted covariance of the population
    (Roberts & Rosenthal 2001)."""
    from particlekit.infer.moves import weighted_moments

    _, cov = weighted_moments(u, log_weights)
    return jnp.linalg.cholesky(cov * 2.38**2 / u.shape[1])


def _move(state: _RunState, ys, cfg: _Config):
    """Resample the parameter particles, then ``num_mcmc_steps`` PMMH steps targeting
    ``p(u | y_{0:t})``; returns the state and the mean acceptance rate."""
    key, k_res, k_moves = jax.random.split(state.key, 3)
    chol = _proposal_cholesky(state.u, state.log_weights)
    num_theta = state.u.shape[0]
    idx = cfg.scheme(k_res, state.log_weights, num_theta)
    u, log_prior, filters = jax.tree.map(
        lambda a: a[idx], (state.u, state.log_prior, state.filters)
    )
    length = state.t + 1

    def logdensity(position):  # NaN where the model is (counted by ``one_step``)
        _, log_prior, filters = position
        return log_prior + _log_lik(filters)

    def propose(k, position):
        # the proposal's filter state is part of the new position: its estimate is the
        # position's log-density, so BlackJAX's symmetric-proposal MH ratio is PMMH's
        u = position[0]
        k_eps, k_filter = jax.random.split(k)
        u_new = u + chol @ jax.random.normal(k_eps, u.shape, u.dtype)
        filters = _fresh_filter(k_filter, u_new, ys, length, cfg, cfg.num_x)
        return u_new, cfg.model.log_prior(u_new), filters

    def one_step(k, position, value):
        """An RMH step (``rmh_accept``); a NaN proposal is counted and rejected."""
        k_prop, k_accept = jax.random.split(k)
        proposal = propose(k_prop, position)
        proposal_value = logdensity(proposal)
        new, info = rmh_accept(k_accept, position, value, proposal, proposal_value)
        return new.position, new.logdensity, info.is_accepted, jnp.isnan(proposal_value)

    def pmmh_step(carry, k):
        position, value = carry
        position, value, accepted, nan = jax.vmap(one_step)(
            jax.random.split(k, num_theta), position, value
        )
        return (position, value), (jnp.mean(accepted.astype(jnp.float32)), jnp.sum(nan))

    position = (u, log_prior, filters)
    start = jax.vmap(logdensity)(position)
    ((u, log_prior, filters), _), (rates, nans) = jax.lax.scan(
        pmmh_step,
        (position, jnp.where(jnp.isnan(start), -jnp.inf, start)),
        jax.random.split(k_moves, cfg.num_mcmc_steps),
    )
    rate = jnp.mean(rates)
    history = state.history._replace(
        acceptance_rate=state.history.acceptance_rate.at[state.t].set(rate)
    )
    state = state._replace(
        key=key, u=u, log_prior=log_prior, filters=filters,
        log_weights=jnp.zeros_like(state.log_weights), history=history,
        num_nonfinite=state.num_nonfinite + jnp.sum(nans, dtype=jnp.int32),
    )  # fmt: skip
    return state, rate


def _failed(state: _RunState) -> jax.Array:
    return state.log_evidence == -jnp.inf


@partial(jax.jit, static_argnames=("cfg", "num_theta"))
def _start(key, ys, cfg: _Config, num_theta: int) -> _RunState:
    return _initial_state(key, ys, cfg, num_theta)


@partial(jax.jit, static_argnames=("cfg", "progress_bar"))
def _segment(state: _RunState, ys, cfg: _Config, progress_bar: bool):
    """Run from the state (``y_t`` assimilated, not yet moved) until the data end, the
    weights vanish, or a move's acceptance falls below ``min_acceptance`` (returned flag
    ``grow``; then the state is the moved population at the same ``t``)."""
    num_steps = ys.shape[0]
    tick = progress_bar_callback(num_steps, desc="smc2") if progress_bar else None

    def body(loop):
        state, _, _ = loop
        low_ess = resampling.ess(state.log_weights) < cfg.ess_threshold * state.u.shape[0]
        state, rate = jax.lax.cond(
            low_ess & ~_failed(state),
            lambda s: _move(s, ys, cfg),
            lambda s: (s, jnp.ones((), jnp.float32)),  # as _move's rate, under x64 too
            state,
        )
        grow = low_ess & (rate < cfg.min_acceptance) & cfg.can_grow
        stop = grow | (state.t >= num_steps - 1) | _failed(state)
        if tick is not None:
            tick(state.t)
        state = jax.lax.cond(stop, lambda s: s, lambda s: _assimilate(s, ys, cfg), state)
        return state, grow, stop

    state, grow, _ = jax.lax.while_loop(
        lambda loop: ~loop[2], body, (state, jnp.zeros((), bool), jnp.zeros((), bool))
    )
    return state, grow


@partial(jax.jit, static_argnames=("cfg", "num_x"))
def _exchange(state: _RunState, ys, cfg: _Config, num_x: int) -> _RunState:
    """The exchange step: fresh filters of ``num_x`` particles over ``y_{0:t}``, weights
    multiplied by ``p_hat_new / p_hat_old``."""
    key, sub = jax.random.split(state.key)
    keys = jax.random.split(sub, state.u.shape[0])
    fresh = partial(_fresh_filter, ys=ys, length=state.t + 1, cfg=cfg, num_x=num_x)
    filters = jax.vmap(fresh)(keys, state.u)
    log_weights = state.log_weights + _log_lik(filters) - _log_lik(state.filters)
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    num_nonfinite = state.num_nonfinite + _newly_flagged(filters, state.filters)
    return state._replace(
        key=key, filters=filters, log_weights=log_weights, num_nonfinite=num_nonfinite
    )


@partial(jax.jit, static_argnames=("cfg", "latent_paths"))
def _finish(state: _RunState, ys, cfg: _Config, latent_paths: bool):
    """Equally weighted draws ``(u, log_prior, log_likelihood, paths)`` from the final
    population, and the ESS of the weights before and after the exchange (the draws are
    resampled from the latter); with ``latent_paths`` each ``u_m`` first gets a filter with
    history whose estimate replaces the old one in its weight (the exchange step at the same
    ``N_x``: the ratio of two independent estimates, so a noisy ``N_x`` makes these weights
    far more uneven than the population's)."""
    key_hist, key_paths, key_res = jax.random.split(state.key, 3)
    num_theta = state.u.shape[0]
    log_weights, log_lik, paths = state.log_weights, _log_lik(state.filters), None
    if latent_paths:

        def one(inp):
            u_m, k_hist, k_path = inp
            ll, parts, log_w, anc = filter_history(
                k_hist, cfg.model.ssm(u_m), ys, num_particles=cfg.num_x, scheme=cfg.scheme,
                ess_threshold=cfg.inner_ess_threshold,
            )  # fmt: skip
            return ll, sample_path(k_path, parts, log_w, anc)

        keys = (jax.random.split(key_hist, num_theta), jax.random.split(key_paths, num_theta))
        new_lik, paths = jax.lax.map(one, (state.u,) + keys, batch_size=_PATH_BATCH)
        log_weights = log_weights + new_lik - log_lik
        log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
        log_lik = new_lik
    idx = resampling.systematic(key_res, log_weights, num_theta)
    draws = jax.tree.map(lambda a: a[idx], (state.u, state.log_prior, log_lik, paths))
    return draws + (resampling.ess(state.log_weights), resampling.ess(log_weights))


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------
def smc2(
    key: jax.Array,
    model: ParametricSSM,
    ys,
    *,
    num_theta_particles: int = 1000,
    num_x_particles: int = 100,
    max_num_x_particles: int = 2**14,
    num_mcmc_steps: int = 5,
    ess_threshold: float = 0.5,
    min_acceptance: float = 0.1,
    num_chains: int = 1,
    latent_paths: bool = True,
    resampling="systematic",
    progress_bar: bool | None = None,
) -> SMC2Result:
    """SMC² for the parameters, the latent path and the evidence of a ``ParametricSSM``.

    Parameters
    ----------
    key : PRNG key
    model : ParametricSSM
        The prior and ``model_fn(theta) -> StateSpaceModel``.
    ys : Array of shape (T, ...)
        Observations (NaN marks a missing ``y_t``, as in the filters).
    num_theta_particles : int
        ``M``, the parameter particles.
    num_x_particles : int
        ``N_x`` at the start: each parameter particle's bootstrap filter.
    max_num_x_particles : int
        ``N_x`` doubles (exchange step) whenever a move's acceptance rate falls below
        ``min_acceptance``, up to this value; ``max_num_x_particles = num_x_particles``
        keeps ``N_x`` fixed.
    num_mcmc_steps : int
        PMMH steps per resample-move.
    ess_threshold : float
        Resample and move when the ESS of the parameter weights falls below
        ``ess_threshold * M``.
    min_acceptance : float
        Acceptance rate under which ``N_x`` doubles (0.1, as Chopin et al. suggest).
    num_chains : int
        Independent runs, one after another (each compiled segment is reused), giving the
        ``chain`` axis of the results.
    latent_paths : bool
        Also return a latent path per draw (one more filter with history per parameter
        particle at the end).
    resampling : str or callable
        Resampling scheme of both the parameter particles and the inner filters.
    progress_bar : bool, optional
        A bar over time steps; ``None``: shown when standard error is a terminal.

    Returns
    -------
    SMC2Result
        ``.print_summary()``, ``.get_samples()``, ``.to_inference_data(ys)``.

    Warns
    -----
    UserWarning
        When the model was NaN at some parameter values (``num_nonfinite``), a run
        failed (every weight vanished), or the last moves' acceptance stayed
        below ``min_acceptance`` with ``N_x`` at ``max_num_x_particles``, or (with
        ``latent_paths``) attaching the paths cut the final weights' ESS by more than the
        factor ``ess_threshold``: each parameter particle's weight is multiplied by the
        ratio of a fresh filter's estimate to its old one, and with a noisy ``N_x`` the
        draws then repeat few values.

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
    >>> res = pk.statespace.smc2(jax.random.key(1), model, ys, num_theta_particles=200,
    ...                          num_x_particles=64)
    >>> res.theta["rho"].shape, res.paths.shape, res.log_evidence.shape
    ((1, 200), (1, 200, 50), (1,))
    """
    kernels.check_key(key)
    kernels.check_not_traced(  # N_x grows in Python between compiled segments
        "pk.statespace.smc2",
        "For independent runs use num_chains=...; for several data sets call it once per "
        "data set.",
        key, ys,
    )  # fmt: skip
    num_x = kernels.check_num_particles(num_x_particles, "num_x_particles")
    ys = check_model_and_data(model, ys, num_x)
    num_theta = kernels.check_num_particles(num_theta_particles, "num_theta_particles")
    if num_theta < 2:
        raise ValueError(f"num_theta_particles must be >= 2, got {num_theta}")
    max_num_x = kernels.check_num_particles(max_num_x_particles, "max_num_x_particles")
    if max_num_x < num_x:
        raise ValueError(f"max_num_x_particles ({max_num_x}) must be >= num_x_particles ({num_x})")
    num_mcmc_steps = kernels.check_num_particles(num_mcmc_steps, "num_mcmc_steps")
    num_chains = kernels.check_num_particles(num_chains, "num_chains")
    try:  # (the filters' check reads [0, 1]; SMC² needs a positive threshold)
        positive = kernels.check_ess_threshold(ess_threshold) > 0.0
    except ValueError:
        positive = False
    if not positive:
        raise ValueError(f"ess_threshold must be in (0, 1], got {ess_threshold}")
    if not 0.0 <= float(min_acceptance) < 1.0:
        raise ValueError(f"min_acceptance must be in [0, 1), got {min_acceptance}")
    bar = resolve_progress_bar(progress_bar)
    base = _Config(
        model, num_x, num_mcmc_steps, float(ess_threshold), float(min_acceptance),
        num_x < max_num_x, _get_scheme(resampling), 0.5,
    )  # fmt: skip
    runs = [
        _run(k, ys, base, num_theta, max_num_x, bool(latent_paths), bar)
        for k in jax.random.split(key, num_chains)
    ]
    stacked = [jnp.stack(parts) for parts in zip(*[r[:-3] for r in runs], strict=True)]
    u, log_prior, log_lik, log_evidence, ess, acc, nx, failed, num_nonfinite = stacked
    paths = None
    if latent_paths:
        paths = jax.tree.map(lambda *a: jnp.stack(a), *[r[-3] for r in runs])
    theta = jax.vmap(jax.vmap(model.constrain))(u)
    result = SMC2Result(
        theta, u, log_lik, log_prior, paths, log_evidence, ess, acc, nx, failed,
        num_nonfinite, num_theta,
    )  # fmt: skip
    _warn_if_untrustworthy(result, [r[-2] for r in runs], max_num_x, float(min_acceptance))
    if latent_paths:
        ok = ~np.asarray(failed)  # (a failed run has warned already)
        final_ess = [r[-1] if ok[i] else (1.0, 1.0) for i, r in enumerate(runs)]
        _warn_if_paths_degenerate(final_ess, num_theta, float(ess_threshold))
    return result


def _run(key, ys, cfg: _Config, num_theta, max_num_x, latent_paths, bar):
    """One run: compiled segments, doubling ``N_x`` between them. Returns the draws, the
    per-step history, whether ``N_x`` hit its cap while acceptance stayed low and the ESS of
    the final weights before and after the latent paths' exchange step."""
    state = _start(key, ys, cfg, num_theta)
    num_steps = ys.shape[0]
    num_x_at = np.full(num_steps, cfg.num_x)
    starved = False
    while True:
        state, grow = _segment(state, ys, cfg, bar)
        t = int(state.t)
        if not bool(grow):
            starved = starved or _low_last_move(state, cfg)
            break
        num_x = cfg.num_x * 2
        cfg = cfg._replace(num_x=num_x, can_grow=num_x < max_num_x)
        state = _exchange(state, ys, cfg, num_x)
        num_x_at[t:] = num_x
    u, log_prior, log_lik, paths, ess_before, ess_after = _finish(state, ys, cfg, latent_paths)
    history = state.history
    return (
        u, log_prior, log_lik, kernels.reported_log_evidence(state.log_evidence),
        history.ess, history.acceptance_rate, jnp.asarray(num_x_at), _failed(state),
        state.num_nonfinite, paths, starved, (float(ess_before), float(ess_after)),
    )  # fmt: skip


def _low_last_move(state: _RunState, cfg: _Config) -> bool:
    rates = np.asarray(state.history.acceptance_rate)
    moved = rates[np.isfinite(rates)]
    return bool(moved.size and moved[-1] < cfg.min_acceptance)


def _warn_if_untrustworthy(result: SMC2Result, starved, max_num_x, min_acceptance):
    warn_if_nan_likelihood(np.asarray(result.num_nonfinite), "SMC²", "run")
    failed = np.asarray(result.failed)
    if failed.any():
        warnings.warn(
            f"SMC² runs {np.flatnonzero(failed).tolist()} failed: every parameter particle's "
            "likelihood estimate was zero at some time (the data look impossible under the "
            "prior); their log_evidence is -inf",
            UserWarning,
            stacklevel=3,
        )
    if any(starved):
        warnings.warn(
            f"SMC²'s last moves accepted under {min_acceptance:.0%} of their proposals with "
            f"N_x at max_num_x_particles={max_num_x}: the parameter particles are poorly "
            "rejuvenated. FIX: raise max_num_x_particles or num_mcmc_steps",
            UserWarning,
            stacklevel=3,
        )


def _warn_if_paths_degenerate(final_ess, num_theta: int, ess_threshold: float) -> None:
    """``final_ess``: per run, the ESS of the final weights before and after the latent
    paths' exchange step. That step reweights each parameter particle by the ratio of a
    fresh estimate to its old one; with noisy estimates (small ``N_x``) the draws then repeat
    a few parameter values and understate the posterior's spread."""
    # (the population's own ESS, before, is whatever the last resample-move left: >= the
    # threshold by design; the exchange should not lose more than that fraction of it)
    low = [i for i, (before, after) in enumerate(final_ess) if after < ess_threshold * before]
    if low:
        shown = ", ".join(f"{final_ess[i][0]:.0f} -> {final_ess[i][1]:.0f}" for i in low)
        warnings.warn(
            f"SMC² runs {low}: attaching latent paths (a fresh filter of N_x particles per "
            f"parameter particle, weighted by the ratio of its estimate to the old one) cut "
            f"the ESS of the M={num_theta} draws ({shown}): they repeat few parameter values and "
            "understate the posterior's spread. FIX: more x-particles (num_x_particles, "
            "max_num_x_particles), or latent_paths=False for the parameters alone",
            UserWarning,
            stacklevel=3,
        )
