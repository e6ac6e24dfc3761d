"""``pk.infer.SMC``: adaptive tempered SMC (and waste-free SMC) for NumPyro models and plain
JAX log-densities (``LogDensityModel``).

The Feynman–Kac model (docs/architecture.md §1): particles ``u`` live in the unconstrained
space of the latent sites; ``M0`` is the prior; stage ``t`` picks ``lambda_t`` by bisection
on the conditional ESS (``tempering``), reweights with the potential
``G_t(u) = L(u)^(lambda_t - lambda_{t-1})`` through ``particlekit.reweight`` (the one
place the evidence grows), resamples, and moves with a BlackJAX kernel invariant for
``pi_{lambda_t} ∝ p(u) L(u)^lambda_t`` tuned from the population (``adaptive_hmc`` for the
default HMC move, ``moves`` for the others). The whole run is one ``lax.while_loop`` under
``jit``; independent chains are ``vmap``-ped and checked against each other afterwards
(``convergence``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import distributed, resampling
from particlekit.infer import adaptive_hmc, convergence, log_density, moves, tempering
from particlekit.infer.numpyro_adapter import (
    ModelInfo,
    inspect_model,
    invalid_prior_sites,
    make_target,
    observed_sites_outside_support,
)
from particlekit.kernels import check_key, check_not_traced, check_num_particles, reweight
from particlekit.run import check_sharding, constrain_particles, resolve_progress_bar
from particlekit.types import ParticleState

__all__ = ["SMC", "SMCResult", "StageDiagnostics"]


class StageDiagnostics(NamedTuple):
    """Per-stage diagnostics, each of shape ``(num_chains, max_stages)``, NaN after the last
    stage of a chain.

    Attributes
    ----------
    temperature : inverse temperature ``lambda_t`` reached at the stage.
    ess : ESS fraction in ``[0, 1]`` after reweighting (before resampling).
    acceptance_rate : mean MCMC acceptance rate of the stage's move.
    num_mcmc_steps : MCMC steps of the stage (float, NaN-padded).
    log_evidence_increment : ``log Z_t / Z_{t-1}``.
    scale : the tuned move scale ``s`` (RWM scale, MALA/HMC/NUTS step size parameter).
    trajectory_length : HMC integration time ``T = eps L`` in standardised units
        (``kernel="hmc"``; NaN for other kernels).
    correlation : largest correlation, across particles, between a coordinate (or the
        tempered log-density) at the start of the stage's move and after it
        (``kernel="hmc"``; NaN for the other kernels). Near 1: the population barely
        moved.
    capped : 1.0 where the adaptive number of MCMC steps hit ``max_mcmc_steps`` before its
        stopping criterion was met (correlation thresholds for HMC, ``(1 - a)^k <=
        decorrelation_threshold`` for the other kernels), else 0.0.
    """

    temperature: jax.Array
    ess: jax.Array
    acceptance_rate: jax.Array
    num_mcmc_steps: jax.Array
    log_evidence_increment: jax.Array
    scale: jax.Array
    trajectory_length: jax.Array
    correlation: jax.Array
    capped: jax.Array


class SMCResult(NamedTuple):
    """Raw output of a run (leading axis ``C = num_chains`` everywhere).

    Attributes
    ----------
    positions : Array, (C, N, D)
        Final unconstrained particles, equally weighted (after a final resample + move).
        Waste-free SMC orders them chain major: the ``N / P`` states of each of its ``P``
        MCMC chains are adjacent.
    log_prior, log_likelihood : Array, (C, N)
        At ``positions``; ``log_prior`` includes the log-Jacobians.
    log_evidence : Array, (C,)
        ``log Z`` estimate per chain (``-inf`` if a stage failed).
    stages : StageDiagnostics
    num_stages : Array, (C,) int32
    weighted_positions : Array, (C, N, D)
        The population of the last stage after reweighting, before resampling.
    weighted_log_weights : Array, (C, N)
        Its normalised log-weights.
    reached_max_stages : Array, (C,) bool
        The schedule did not reach ``lambda = 1`` within ``max_stages``.
    forced_increment : Array, (C,) int32
        Number of stages where the ESS rule asked for less than ``min_increment``.
    failed : Array, (C,) bool
        A stage had every weight zero (e.g. a likelihood that is ``-inf`` everywhere).
    num_nonfinite : Array, (C,) int32
        Total number of NaN/``+inf`` log-potentials (counted as zero weight).
    """

    positions: jax.Array
    log_prior: jax.Array
    log_likelihood: jax.Array
    log_evidence: jax.Array
    stages: StageDiagnostics
    num_stages: jax.Array
    weighted_positions: jax.Array
    weighted_log_weights: jax.Array
    reached_max_stages: jax.Array
    forced_increment: jax.Array
    failed: jax.Array
    num_nonfinite: jax.Array


class _Carry(NamedTuple):
    state: ParticleState  # particles = {"u", "log_prior", "log_lik"}
    temperature: jax.Array
    log_scale: jax.Array
    hmc_tuning: adaptive_hmc.HMCTuning
    stage: jax.Array
    forced: jax.Array
    failed: jax.Array
    num_nonfinite: jax.Array
    stages: StageDiagnostics
    weighted_positions: jax.Array
    weighted_log_weights: jax.Array


def _particle(target, u):
    """One model evaluation: the particle ``{"u", "log_prior", "log_lik"}`` at ``u``."""
    log_prior, log_lik = target.log_prior_and_likelihood(u)
    return {"u": u, "log_prior": log_prior, "log_lik": log_lik}


def _evaluate(target, positions):
    return jax.vmap(functools.partial(_particle, target))(positions)


def _tempered_potential(x_prev, x, delta):
    del x_prev
    log_lik = tempering.safe_log_likelihood(x["log_lik"])
    return jnp.where(delta > 0, delta * log_lik, 0.0)


class _Config(NamedTuple):
    num_particles: int
    spec: moves.MoveSpec
    num_mcmc_steps: int | None
    max_mcmc_steps: int
    decorrelation_threshold: float
    target_ess: float
    waste_free: bool
    num_resampled: int
    resampling: Callable
    max_stages: int
    min_increment: float
    max_correlation: float = 0.05
    max_integration_steps: int = 32
    sharding: object = None

    @property
    def adaptive_hmc(self) -> bool:
        """The population-tuned HMC move of ``adaptive_hmc``."""
        return self.spec.kernel == "hmc" and not self.waste_free


def _stage(key, carry: _Carry, target, cfg: _Config) -> _Carry:
    """One tempering stage: choose lambda, reweight, resample, move, tune."""
    state = carry.state
    n = cfg.num_particles
    k_resample, k_move = jax.random.split(key)
    temperature, forced = tempering.next_temperature(
        state.log_weights,
        state.particles["log_lik"],
        carry.temperature,
        target_ess=cfg.target_ess,
        min_increment=cfg.min_increment,
    )
    delta = temperature - carry.temperature
    state, info = reweight(_tempered_potential)(None, state, delta)
    failed = ~jnp.isfinite(info.log_evidence_increment)
    log_w, _ = resampling.log_normalize(state.log_weights)

    def tempered_log_density(log_prior, log_lik):
        log_lik = tempering.safe_log_likelihood(log_lik)
        value = log_prior + jnp.where(temperature > 0, temperature * log_lik, 0.0)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    num_starts = cfg.num_resampled if cfg.waste_free else n
    idx = cfg.resampling(k_resample, state.log_weights, num_starts)
    resampled = jax.tree.map(lambda a: a[idx], state.particles)
    dtype = state.log_weights.dtype
    hmc_tuning, correlation = carry.hmc_tuning, jnp.full((), jnp.nan, dtype)
    decorrelated = jnp.ones((), bool)
    if cfg.adaptive_hmc:

        def on_vector(u):
            particle = _particle(target, u)
            return tempered_log_density(particle["log_prior"], particle["log_lik"])

        _, cov = moves.weighted_moments(state.particles["u"], state.log_weights)
        moved, acc, steps, hmc_tuning, correlation, decorrelated = adaptive_hmc.mutate_hmc(
            k_move,
            resampled["u"],
            on_vector,
            cov,
            carry.hmc_tuning,
            max_steps=cfg.max_mcmc_steps,
            max_correlation=cfg.max_correlation,
            max_integration_steps=cfg.max_integration_steps,
            target_acceptance=cfg.spec.target_acceptance,
            num_steps=cfg.num_mcmc_steps,
            num_integration_steps=cfg.spec.num_integration_steps,
        )
        particles = _evaluate(target, moved)
    else:
        move = moves.build_move(
            cfg.spec,
            functools.partial(_particle, target),
            tempered_log_density,
            state.particles["u"],
            state.log_weights,
            carry.log_scale,
        )
        starts = move.prepare(resampled, idx)
        if cfg.waste_free:
            moved, acc, steps = moves.mutate_waste_free(
                k_move, starts, move.algorithm, chain_length=n // cfg.num_resampled
            )
        else:
            moved, acc, steps = moves.mutate(
                k_move,
                starts,
                move.algorithm,
                num_steps=cfg.num_mcmc_steps,
                max_steps=cfg.max_mcmc_steps,
                decorrelation_threshold=cfg.decorrelation_threshold,
            )
        particles = move.finish(moved)
        if not cfg.waste_free:
            unmoved = jnp.exp(steps * jnp.log1p(-jnp.clip(acc, 0.0, 1.0 - 1e-6)))
            decorrelated = unmoved <= cfg.decorrelation_threshold
    # waste-free chains have a fixed length: ``decorrelated`` stays True, nothing is capped
    capped = (cfg.num_mcmc_steps is None) & (steps >= cfg.max_mcmc_steps) & ~decorrelated
    new_state = state._replace(
        particles=particles,
        log_weights=jnp.zeros_like(state.log_weights),
        ancestors=jnp.arange(n, dtype=jnp.int32),
    )
    new_state = constrain_particles(
        new_state._replace(previous_particles=new_state.particles), cfg.sharding
    )
    # A failed stage keeps the reweighted (all-zero) population and stops the loop.
    new_state = jax.tree.map(lambda a, b: jnp.where(failed, a, b), state, new_state)
    i = carry.stage
    stages = StageDiagnostics(
        temperature=carry.stages.temperature.at[i].set(temperature),
        ess=carry.stages.ess.at[i].set(info.ess / n),
        acceptance_rate=carry.stages.acceptance_rate.at[i].set(acc.astype(dtype)),
        num_mcmc_steps=carry.stages.num_mcmc_steps.at[i].set(steps.astype(dtype)),
        log_evidence_increment=carry.stages.log_evidence_increment.at[i].set(
            info.log_evidence_increment
        ),
        scale=carry.stages.scale.at[i].set(
            jnp.exp(carry.hmc_tuning.log_step_size if cfg.adaptive_hmc else carry.log_scale)
        ),
        trajectory_length=carry.stages.trajectory_length.at[i].set(
            jnp.exp(carry.hmc_tuning.log_trajectory_length) if cfg.adaptive_hmc else jnp.nan
        ),
        correlation=carry.stages.correlation.at[i].set(correlation),
        capped=carry.stages.capped.at[i].set(capped.astype(dtype)),
    )
    return _Carry(
        state=new_state,
        temperature=temperature,
        log_scale=moves.adapt_log_scale(cfg.spec, carry.log_scale, acc),
        hmc_tuning=jax.tree.map(lambda a, b: jnp.where(failed, a, b), carry.hmc_tuning, hmc_tuning),
        stage=i + 1,
        forced=carry.forced + forced.astype(jnp.int32),
        failed=failed,
        num_nonfinite=carry.num_nonfinite + info.num_nonfinite,
        stages=stages,
        weighted_positions=state.particles["u"],
        weighted_log_weights=log_w,
    )


def _init_chain(key, target, cfg: _Config):
    positions = target.initial_positions(key, cfg.num_particles)
    return _evaluate(target, positions)


def _initial_problems(particles) -> jax.Array:
    """Counts checked on the host after the run, ``(4,)`` int32: prior draws whose
    log-prior, resp. log-likelihood, is NaN or ``+inf``; 1 if the log-prior is ``-inf``
    at every draw; and the coordinates (unconstrained) in which every draw is the same
    (the moves scale their steps by the particles' spread, so the particles would never
    leave that value: an ``initial_population`` of copies, a ``sample_prior`` that ignores
    its key)."""

    def invalid(values):
        return jnp.sum(resampling.invalid_log_weights(values)).astype(jnp.int32)

    u = particles["u"]
    no_spread = jnp.all(u == u[:1], axis=0) if u.shape[0] > 1 else jnp.zeros(u.shape[1:], bool)
    return jnp.stack(
        [
            invalid(particles["log_prior"]),
            invalid(particles["log_lik"]),
            jnp.all(jnp.isneginf(particles["log_prior"])).astype(jnp.int32),
            jnp.sum(no_spread, dtype=jnp.int32),
        ]
    )


def _init_and_run_chain(key, target, cfg: _Config, progress):
    k_init, k_run = jax.random.split(key)
    particles = _init_chain(k_init, target, cfg)
    problems = _initial_problems(particles)
    return _run_chain(k_run, particles, target, cfg, progress, jnp.any(problems > 0)), problems


def _run_chain(key, particles, target, cfg: _Config, progress, invalid_start):
    n = cfg.num_particles
    dtype = particles["log_prior"].dtype
    state = ParticleState(
        particles=particles,
        log_weights=jnp.zeros(n, dtype),
        log_evidence=jnp.zeros((), dtype),
        ancestors=jnp.arange(n, dtype=jnp.int32),
        previous_particles=particles,
    )
    state = constrain_particles(state, cfg.sharding)
    nan_buffer = jnp.full((cfg.max_stages,), jnp.nan, dtype)
    carry = _Carry(
        state=state,
        temperature=jnp.zeros((), dtype),
        log_scale=jnp.asarray(moves.initial_log_scale(cfg.spec.kernel, target.dim), dtype),
        hmc_tuning=adaptive_hmc.initial_tuning(target.dim, dtype),
        stage=jnp.zeros((), jnp.int32),
        forced=jnp.zeros((), jnp.int32),
        failed=invalid_start,  # reported by the host check; the loop does not start
        num_nonfinite=jnp.zeros((), jnp.int32),
        stages=StageDiagnostics(*(nan_buffer,) * len(StageDiagnostics._fields)),
        weighted_positions=particles["u"],
        weighted_log_weights=jnp.full((n,), -jnp.log(n), dtype),
    )

    def cond(c):
        return (c.temperature < 1.0) & ~c.failed & (c.stage < cfg.max_stages)

    def body(c):
        c = _stage(jax.random.fold_in(key, c.stage), c, target, cfg)
        if progress is not None:
            i = c.stage - 1
            jax.debug.callback(
                progress,
                c.stage,
                c.temperature,
                c.stages.acceptance_rate[i],
                c.stages.ess[i],
            )
        return c

    c = jax.lax.while_loop(cond, body, carry)
    log_evidence = jnp.where(c.failed, -jnp.inf, c.state.log_evidence)
    final = c.state.particles
    if cfg.waste_free:
        final = _chain_major(final, cfg.num_resampled, c.stage > 0)
    return SMCResult(
        positions=final["u"],
        log_prior=final["log_prior"],
        log_likelihood=final["log_lik"],
        log_evidence=log_evidence,
        stages=c.stages,
        num_stages=c.stage,
        weighted_positions=c.weighted_positions,
        weighted_log_weights=c.weighted_log_weights,
        reached_max_stages=(c.temperature < 1.0) & ~c.failed,
        forced_increment=c.forced,
        failed=c.failed,
        num_nonfinite=c.num_nonfinite,
    )


def _chain_major(particles, num_resampled: int, moved):
    """A waste-free population ``(N, ...)`` in chain-major order: the ``M = N / P`` states of
    each of the ``P`` MCMC chains adjacent (``moves.mutate_waste_free`` returns them step
    major, ``P`` apart), when ``moved`` (the population came from a move, not the prior).

    The final sample is read as a sequence of draws by the bulk ESS of ``convergence`` and
    by ArviZ: in step-major order a chain's correlated states were never neighbours, so a
    population of ``P`` barely-moving chains had its ESS reported near ``N`` instead of
    ``P`` (and the low-ESS warning never fired). The stages keep the step-major order, on
    which the cross-fitted ``"imh"`` proposal's parity split relies."""

    def reorder(a):
        m = a.shape[0] // num_resampled
        chain_major = jnp.swapaxes(a.reshape((m, num_resampled) + a.shape[1:]), 0, 1)
        return jnp.where(moved, chain_major.reshape(a.shape), a)

    return jax.tree.map(reorder, particles)


def _split_args(args, kwargs):
    """Arrays become traced arguments; everything else (ints, strings, ...) is static.

    The returned spec (the cache key of the traced sampler) holds the arrays' shapes and
    dtypes too: the model's ``ModelInfo`` (latent sites, their sizes, the flattening of the
    unconstrained vector) is read from a trace at the first data and depends on them.
    Without them new data of another shape (a hierarchical model with 5 groups after one
    with 8) reused the stale flattening and failed with ``Sum of sizes 9 must be equal to
    dimension 2 ...``; sites whose sizes traded places would have been mislabelled."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dynamic = tuple(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
    dyn = [leaf for leaf, d in zip(leaves, dynamic, strict=True) if d]
    static = tuple(None if d else leaf for leaf, d in zip(leaves, dynamic, strict=True))
    shapes = tuple((tuple(np.shape(leaf)), str(leaf.dtype)) for leaf in dyn)
    return dyn, (treedef, dynamic, static, shapes)


def _merge_args(dyn, spec):
    treedef, dynamic, static, _ = spec
    it = iter(dyn)
    leaves = [next(it) if d else s for d, s in zip(dynamic, static, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


class _ProgressBar:
    """tqdm bar of a tempered-SMC run: announced while compiling, then the temperature with
    the stage, acceptance rate, ESS and elapsed time, updated from inside the compiled loop
    by ``jax.debug.callback``. Under ``vmap`` the callback runs once per chain, in chain
    order, at every iteration; the bar shows the chain with the lowest temperature."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| lambda={n:.3f} [{elapsed}{postfix}]"

    def __init__(self, num_chains: int):
        self.num_chains = num_chains
        self.bar = None
        self.calls = 0
        self.latest: dict = {}

    def start(self, compiling: bool):
        from tqdm.auto import tqdm

        self.close()
        self.calls, self.latest = 0, {}
        desc = "tempered SMC (compiling)" if compiling else "tempered SMC"
        self.bar = tqdm(total=1.0, desc=desc, bar_format=self.FORMAT)
        self.bar.refresh()

    def update(self, stage, temperature, acceptance, ess):
        if self.bar is None:
            return
        self.latest[self.calls % self.num_chains] = (
            float(temperature),
            int(stage),
            float(acceptance),
            float(ess),
        )
        self.calls += 1
        lam, stage, acceptance, ess = min(self.latest.values())
        self.bar.set_description_str("tempered SMC", refresh=False)
        self.bar.n = lam
        self.bar.set_postfix(stage=stage, acc=f"{acceptance:.2f}", ess=f"{ess:.2f}", refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SMC:
    """Adaptive tempered SMC for a NumPyro model, with the feel of ``numpyro.infer.MCMC``.

    Targets the posterior through the path ``pi_lambda(u) ∝ p(u) L(u)^lambda``, ``lambda``
    from 0 (prior) to 1 (posterior), in the unconstrained space of the latent sites, and
    estimates the log marginal likelihood ``log Z = log ∫ p(theta) L(theta) dtheta``.

    Parameters
    ----------
    model : callable
        A NumPyro model with continuous latent sites (discrete ones raise ``ValueError``).
        Observed sites and ``numpyro.factor`` sites form the likelihood.
    num_particles : int
        ``N`` particles per chain.
    kernel : {"hmc", "rwm", "mala", "nuts", "imh"} or callable
        The rejuvenation move, tuned from the population at every stage. ``"hmc"`` (the
        default) tunes its mass matrix, step size, trajectory length and number of steps
        from the particles (``particlekit.infer.adaptive_hmc``): the choice for hard
        posteriors (ill-conditioned, funnels, hierarchical models). For the others see
        ``particlekit.infer.moves``. ``"imh"`` (independent Metropolis–Hastings from
        the Gaussian fitted to the particles, PyMC's default) is the fastest when the
        tempered posteriors are roughly Gaussian (regressions, GLMs): a few steps per
        stage; watch its acceptance rate in ``diagnostics`` on multimodal or
        heavy-tailed ones. ``"rwm"`` needs no gradient. A callable is
        a BlackJAX kernel factory
        ``factory(logdensity_fn, cov) -> SamplingAlgorithm``, with ``cov`` the ``(D, D)``
        weighted particle covariance.
    num_mcmc_steps : int, optional
        Fixed number of MCMC steps per stage. ``None`` adapts it: for ``"hmc"`` until
        the population has decorrelated from its start (``max_correlation``), for the
        other kernels with the criterion
        ``(1 - acceptance)^k <= decorrelation_threshold``; both capped by
        ``max_mcmc_steps``. With ``waste_free=True`` it is the chain length minus one,
        ``N / num_resampled - 1`` (default 9).
    target_ess : float in (0, 1)
        Conditional-ESS fraction defining the next temperature. Higher values give more,
        smaller stages: worth it when one MCMC step decorrelates well (e.g. ``0.9`` with
        ``num_mcmc_steps=1`` and a mixture ``"imh"`` proposal on multimodal posteriors) or
        with a random walk (``0.65``). BlackJAX's ``adaptive_tempered_smc`` realises about
        ``0.64`` for its nominal ``0.5``. See "Stage size" on the Static models page.
    waste_free : bool
        Waste-free SMC (Dau & Chopin 2022): resample ``P = num_resampled`` of the ``N``
        particles and grow each into an MCMC chain of length ``N / P``; all ``N`` states
        are the next population.
    num_resampled : int, optional
        ``P`` for waste-free SMC; must divide ``N``. Default ``N // (num_mcmc_steps + 1)``
        or ``N // 10``.
    num_chains : int
        Independent SMC runs (``vmap``-ped), reported as ArviZ chains; ``log_evidence``
        has one estimate per chain. The default, 2, lets every run check itself: R-hat
        across chains and the spread of ``log Z`` (``convergence``, with a
        ``UserWarning`` when they disagree). ``num_chains=1`` keeps only the within-chain
        checks.
    resampling : str or callable
        Resampling scheme of ``particlekit.resampling``.
    max_mcmc_steps : int
        Cap on the adaptive number of MCMC steps per stage.
    decorrelation_threshold : float in (0, 1)
        See ``num_mcmc_steps``.
    max_stages : int
        Maximum number of tempering stages (reported in ``diagnostics`` if hit).
    min_increment : float
        Minimum temperature increment (guards against a stalled schedule).
    target_acceptance : float, optional
        Acceptance rate in ``(0, 1)`` the move scale is tuned to (defaults:
        ``moves.TARGET_ACCEPTANCE``, RWM 0.3, MALA 0.574, HMC 0.8, NUTS 0.8; ``"imh"`` has
        no scale to tune).
    num_integration_steps : int, optional
        Mean leapfrog steps of ``kernel="hmc"`` (jittered by ``U(0.5, 1.5)``); ``None``
        (default) adapts the trajectory length from the population (see
        ``particlekit.infer.adaptive_hmc``). 10 in waste-free SMC.
    max_integration_steps : int
        Cap on the leapfrog steps of one HMC trajectory. It bounds the cost of a step where
        the adapted step size collapses (funnels: the horseshoe's prior).
    max_correlation : float in (0, 1)
        ``kernel="hmc"`` runs MCMC steps until the correlation across particles between
        every coordinate (and the tempered log-density) at the start of the stage and now
        is at most this (or ``max_mcmc_steps`` is hit); the coordinates' threshold is never
        below the noise level of the largest of ``D`` estimated correlations (see
        ``particlekit.infer.adaptive_hmc.correlation_thresholds``). The log-density
        decorrelates last and sets the accuracy of the evidence: on the 100-D
        ill-conditioned benchmark, ``0.1`` left a bias of -0.43 nats, ``0.05`` -0.29.
    imh_components : int
        Gaussian components of the ``kernel="imh"`` proposal, fitted to the weighted
        particles by EM at every stage. ``1`` (PyMC's choice) suits unimodal posteriors;
        ``K > 1`` keeps the acceptance rate up on multimodal ones with up to ``K`` modes
        (two mixtures, cross-fitted to the two halves of the particles: needs
        ``num_particles >= 2 K``).
    progress_bar : bool, optional
        A tqdm bar with the temperature, stage, acceptance rate, ESS and elapsed time
        (announced while the sampler compiles). ``None`` (default): shown when standard
        error is a terminal, hidden in scripts, tests and CI logs.
    sharding : jax.sharding.Sharding, optional
        Sharding of the particle axis within a chain (e.g. ``NamedSharding(mesh, P("p"))``
        over a 1-D device mesh) to spread each chain's ``N`` particles over devices. The
        per-particle work (model evaluations, MCMC steps) runs on each device's share;
        the population statistics (ESS, covariance, evidence) become cross-device
        reductions, inserted by XLA. See the Scaling page.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> import particlekit as pk
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with numpyro.plate("n", y.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> smc = pk.infer.SMC(model, num_particles=500)
    >>> smc.run(jax.random.key(0), jnp.array([0.3, 0.5, 0.1]))
    >>> samples = smc.get_samples()          # {"mu": (1000,)}: 2 chains of 500
    >>> smc.log_evidence.shape               # one estimate per chain
    (2,)
    >>> smc.convergence.trustworthy          # the chains agree (else a UserWarning)
    True
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_particles: int = 1000,
        kernel: str | Callable = "hmc",
        num_mcmc_steps: int | None = None,
        target_ess: float = 0.5,
        waste_free: bool = False,
        num_resampled: int | None = None,
        num_chains: int = 2,
        resampling: str | Callable = "systematic",
        max_mcmc_steps: int = 20,
        decorrelation_threshold: float = 0.05,
        max_stages: int = 200,
        min_increment: float = 1e-6,
        target_acceptance: float | None = None,
        num_integration_steps: int | None = None,
        max_integration_steps: int = 32,
        max_correlation: float = 0.05,
        imh_components: int = 1,
        progress_bar: bool | None = None,
        sharding=None,
    ):
        n = check_num_particles(num_particles)
        self.num_chains = check_num_particles(num_chains, "num_chains")
        if not (isinstance(kernel, str) and kernel in moves.KERNELS) and not callable(kernel):
            raise ValueError(f"kernel must be one of {moves.KERNELS} or a factory, got {kernel!r}")
        if not isinstance(waste_free, (bool, np.bool_)):  # (progress_bar: resolve_progress_bar)
            raise ValueError(
                f"waste_free must be True or False, got {waste_free!r} (any non-empty string, "
                "'False' included, would have switched it on)"
            )
        if not 0.0 < float(target_ess) < 1.0:
            raise ValueError(f"target_ess must be in (0, 1), got {target_ess}")
        if not 0.0 < float(decorrelation_threshold) < 1.0:
            raise ValueError(
                f"decorrelation_threshold must be in (0, 1), got {decorrelation_threshold}"
            )
        if num_mcmc_steps is not None:
            num_mcmc_steps = check_num_particles(num_mcmc_steps, "num_mcmc_steps")
        max_mcmc_steps = check_num_particles(max_mcmc_steps, "max_mcmc_steps")
        max_stages = check_num_particles(max_stages, "max_stages")
        if not 0.0 < float(max_correlation) < 1.0:
            raise ValueError(f"max_correlation must be in (0, 1), got {max_correlation}")
        if not 0.0 < float(min_increment) < 1.0:
            raise ValueError(f"min_increment must be in (0, 1), got {min_increment}")
        if num_resampled is not None:
            if not waste_free:
                raise ValueError(
                    f"num_resampled={num_resampled!r} only applies to waste-free SMC "
                    "(waste_free=True); without it every particle is resampled"
                )
            num_resampled = check_num_particles(num_resampled, "num_resampled")
            if num_resampled >= n or n % num_resampled:
                raise ValueError(
                    f"waste-free SMC needs num_resampled (P={num_resampled}) < num_particles "
                    f"(N={n}), dividing it (chains of length N / P >= 2)"
                )
        if waste_free:
            if num_resampled is None:
                chain_length = 10 if num_mcmc_steps is None else num_mcmc_steps + 1
                if n % chain_length:
                    raise ValueError(
                        f"waste-free SMC grows chains of length num_mcmc_steps + 1 = "
                        f"{chain_length}, which must divide num_particles={n}"
                    )
                num_resampled = max(n // chain_length, 1)
            elif num_mcmc_steps is not None and num_mcmc_steps + 1 != n // num_resampled:
                raise ValueError(
                    f"waste-free SMC: num_mcmc_steps + 1 = {num_mcmc_steps + 1} must equal the "
                    f"chain length num_particles / num_resampled = {n // num_resampled}; "
                    "give only one of them"
                )
            num_resampled = check_num_particles(num_resampled, "num_resampled")
            if n % num_resampled or num_resampled == n:
                raise ValueError(
                    f"waste-free SMC needs num_resampled (P={num_resampled}) to divide "
                    f"num_particles (N={n}) with N / P >= 2"
                )
            if resampling == "killing":
                raise ValueError(
                    "waste-free SMC resamples num_resampled < num_particles starts, and "
                    "resampling='killing' can only draw as many particles as it is given; "
                    "choose another scheme (e.g. 'systematic', the default)"
                )
        else:
            num_resampled = n
        if imh_components != 1 and kernel != "imh":
            raise ValueError(
                f"imh_components={imh_components} only applies to kernel='imh', got "
                f"kernel={kernel!r}"
            )
        if kernel == "imh" and imh_components > 1 and 2 * imh_components > n:
            raise ValueError(
                f"imh_components={imh_components} needs num_particles >= "
                f"{2 * imh_components}: each of the two cross-fitted halves of the particles "
                f"fits {imh_components} components; got num_particles={n}"
            )
        if target_acceptance is None:
            target_acceptance = moves.TARGET_ACCEPTANCE.get(kernel, 0.5)
        elif not 0.0 < float(target_acceptance) < 1.0:
            raise ValueError(
                f"target_acceptance must be in (0, 1), got {target_acceptance} (the move's "
                "tuning aims its acceptance rate there)"
            )
        if isinstance(model, log_density.LogDensityModel):
            size = log_density.population_size(model)
            if size is not None and size < n:
                raise ValueError(
                    f"initial_population has {size} draws, fewer than num_particles={n}"
                )
            if size is not None and size < self.num_chains * n:
                warnings.warn(
                    f"initial_population has {size} draws for num_chains={self.num_chains} "
                    f"chains of num_particles={n}: the chains start from overlapping subsets, "
                    "so they share their initial Monte Carlo error and their agreement "
                    "(R-hat, the spread of log_evidence) understates it. Give at least "
                    f"{self.num_chains * n} draws (many more for nearly independent chains)",
                    UserWarning,
                    stacklevel=2,
                )
        elif not callable(model):
            raise ValueError(
                "model must be a NumPyro model (a callable) or a pk.infer.LogDensityModel, "
                f"got {type(model).__name__}"
            )
        self.model = model
        self.num_particles = n
        self.progress_bar = resolve_progress_bar(progress_bar)
        self._bar = _ProgressBar(self.num_chains)
        self._cfg = _Config(
            num_particles=n,
            spec=moves.MoveSpec(
                kernel,
                float(target_acceptance),
                None
                if num_integration_steps is None
                else check_num_particles(num_integration_steps, "num_integration_steps"),
                check_num_particles(imh_components, "imh_components"),
            ),
            num_mcmc_steps=num_mcmc_steps,
            max_mcmc_steps=max_mcmc_steps,
            decorrelation_threshold=float(decorrelation_threshold),
            target_ess=float(target_ess),
            waste_free=bool(waste_free),
            num_resampled=num_resampled,
            resampling=_scheme_with_num_samples(resampling),
            max_stages=max_stages,
            min_increment=float(min_increment),
            max_correlation=float(max_correlation),
            max_integration_steps=check_num_particles(
                max_integration_steps, "max_integration_steps"
            ),
            sharding=check_sharding(sharding, n),
        )
        self._compiled: dict = {}
        self._result: SMCResult | None = None
        self._args = ((), {})
        self._info: ModelInfo | None = None
        self._convergence: convergence.ConvergenceReport | None = None

    # ------------------------------------------------------------------ running
    def _functions(self, spec, args, kwargs):
        try:
            cached = self._compiled.get(spec)
        except TypeError:  # unhashable static argument: no caching
            cached, spec = None, None
        if cached is not None:
            return cached
        cfg = self._cfg
        model = self.model
        if isinstance(model, log_density.LogDensityModel):
            info = log_density.inspect_log_density_model(model, args, kwargs)
            build_target = log_density.make_log_density_target
        else:
            info = inspect_model(model, args, kwargs)
            build_target = functools.partial(make_target, prior_of_draws=True)
        progress = self._bar.update if self.progress_bar else None

        def target_of(dyn):
            a, kw = _merge_args(dyn, spec_local)
            return build_target(model, a, kw, info)

        spec_local = spec if spec is not None else _split_args(args, kwargs)[1]

        @jax.jit
        def sample(keys, dyn):  # prior draws and every stage, in one executable
            target = target_of(dyn)
            return _map_chains(lambda k: _init_and_run_chain(k, target, cfg, progress), keys)

        @jax.jit
        def constrain(positions, dyn):
            target = target_of(dyn)
            flat = positions.reshape((-1, positions.shape[-1]))
            values = jax.vmap(target.constrain)(flat)
            return {k: v.reshape(positions.shape[:-1] + v.shape[1:]) for k, v in values.items()}

        fns = (info, sample, constrain)
        if spec is not None:
            self._compiled[spec] = fns
        return fns

    def run(self, key, *args, **kwargs) -> None:
        """Run the sampler on the model's data ``*args, **kwargs``.

        Raises
        ------
        ValueError
            If the model has a discrete latent site, or the log-prior / log-likelihood is
            NaN at a prior draw, or (checked at the first data of each shape) observed
            values lie outside a support the parameters do not move (Bernoulli labels
            -1/+1) or do not match their distribution's batch shape. Observations broadcast
            against their distribution (``y`` of shape ``(n, 1)`` for a mean of shape
            ``(n,)``) warn. A failed stage (every weight zero) or hitting
            ``max_stages`` warns and is flagged in ``diagnostics``.
        """
        check_key(key)
        # a host-side driver: under jit / vmap it failed with TracerArrayConversionError
        check_not_traced(
            "SMC.run",
            "For independent runs use num_chains=...; for several data sets call run once "
            "per data set (data of the same shapes reuse the compiled sampler).",
            key, args, kwargs,
        )  # fmt: skip
        dyn, spec = _split_args(args, kwargs)
        across_processes = distributed.spans_processes(self._cfg.sharding)
        if across_processes:
            distributed.check_same_on_every_process(key=key, data=(args, kwargs))
        if self.progress_bar:
            try:
                compiling = spec not in self._compiled
            except TypeError:
                compiling = True
            self._bar.start(compiling)
        info, sample, constrain = self._functions(spec, args, kwargs)
        try:
            result, problems = sample(jax.random.split(key, self.num_chains), dyn)
            jax.block_until_ready(result)
        finally:
            self._bar.close()
        if across_processes:  # every process keeps the whole population (host copies)
            result, problems = jax.tree.map(jnp.asarray, distributed.to_host((result, problems)))
        _check_initial(
            np.asarray(problems),
            self.num_particles,
            info,
            None
            if isinstance(self.model, log_density.LogDensityModel)
            else functools.partial(
                invalid_prior_sites, self.model, args, kwargs, info, result.positions
            ),
            functools.partial(nan_data_note, args, kwargs),  # only on an error
        )
        if not info.has_likelihood:
            warnings.warn(
                "the model has no observed sample site and no numpyro.factor: its likelihood "
                "is 1, so the samples are prior draws and log_evidence is 0. Were the "
                "observations passed to run (an obs=None argument makes that site latent)?",
                UserWarning,
                stacklevel=2,
            )
        self._result = result
        self._args = (args, kwargs)
        self._info = info
        self._constrain_fn = lambda positions: constrain(positions, dyn)
        self._convergence = convergence.assess(
            result.positions,  # thinned on the device before it comes to the host
            np.asarray(result.log_evidence),
            np.asarray(result.stages.ess),
            np.asarray(result.num_stages),
            self._capped_stages(result),
            self.num_particles,
            failed=np.asarray(result.failed),
            reached_max_stages=np.asarray(result.reached_max_stages),
        )
        proposal_note = _imh_proposal_message(self._cfg, info.dim)
        if proposal_note:
            self._convergence = self._convergence._replace(
                messages=self._convergence.messages + (proposal_note,)
            )
        # the stopped chains' lines are in the report; they warn below as RuntimeWarnings
        stopped = convergence.stopped_chain_messages(
            np.asarray(result.failed), np.asarray(result.reached_max_stages)
        )
        checks = [m for m in self._convergence.messages if m not in stopped]
        if checks and not np.any(result.failed):
            warnings.warn("; ".join(checks) + ". " + convergence.FIX, UserWarning, stacklevel=2)
        if bool(np.any(result.failed)):
            warnings.warn(
                f"tempered SMC failed in chain(s) {np.flatnonzero(result.failed).tolist()}: "
                "at some stage every particle had zero weight (the likelihood is -inf or NaN "
                "on the whole population); their log_evidence is -inf. If the likelihood is "
                "positive on only a small part of the prior (a support that the data narrow, "
                "e.g. y ~ Uniform(0, theta)), too few prior draws land there: use more "
                "particles or a prior closer to the data"
                + nan_data_note(args, kwargs)
                + self._support_note(args, kwargs),
                RuntimeWarning,
                stacklevel=2,
            )
        if bool(np.any(result.reached_max_stages)):
            warnings.warn(
                f"tempered SMC stopped after max_stages={self._cfg.max_stages} stages before "
                "reaching temperature 1; the samples are not from the posterior. Increase "
                "max_stages or lower target_ess",
                RuntimeWarning,
                stacklevel=2,
            )

    def _support_note(self, args, kwargs) -> str:
        """``". "`` and ``numpyro_adapter.outside_support_message`` of the data, or ``""``
        (a failed run of a NumPyro model whose observations lie outside their
        distribution's support, e.g. Bernoulli labels coded -1/+1)."""
        if isinstance(self.model, log_density.LogDensityModel):
            return ""
        message = observed_sites_outside_support(self.model, args, kwargs)
        return ". " + message[0].upper() + message[1:] if message else ""

    @staticmethod
    def _capped_stages(result: SMCResult) -> np.ndarray:
        """``(C, S)`` bool: the stage's adaptive move hit ``max_mcmc_steps`` without meeting
        its stopping criterion."""
        return np.asarray(result.stages.capped) == 1.0

    # ------------------------------------------------------------------ results
    @property
    def convergence(self) -> convergence.ConvergenceReport:
        """The checks of the last run across its chains (R-hat, bulk ESS, log Z agreement,
        capped stages): ``particlekit.infer.convergence.ConvergenceReport``. A failed
        check also raised a ``UserWarning`` during ``run``."""
        self.result  # noqa: B018  (raises before the first run)
        return self._convergence

    @property
    def result(self) -> SMCResult:
        """The raw ``SMCResult`` of the last run."""
        if self._result is None:
            raise RuntimeError("call .run(key, *model_args) first")
        return self._result

    def _constrain(self, positions):
        return self._constrain_fn(positions)

    def get_samples(self, group_by_chain: bool = False) -> dict:
        """Equally weighted posterior draws of the latent (and deterministic) sites.

        Returns a dict of arrays ``(num_chains * N, ...)``, or ``(num_chains, N, ...)`` with
        ``group_by_chain=True``, in the constrained space, like ``MCMC.get_samples``.
        """
        samples = self._constrain(self.result.positions)
        if group_by_chain:
            return samples
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items()}

    def get_weighted_samples(self, group_by_chain: bool = False):
        """The last stage's population before the final resampling and its normalised
        log-weights: ``(samples, log_weights)``."""
        samples = self._constrain(self.result.weighted_positions)
        log_w = self.result.weighted_log_weights
        if group_by_chain:
            return samples, log_w
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items()}
        return flat, log_w.reshape(-1)

    @property
    def log_evidence(self) -> jax.Array:
        """Estimate of ``log Z``: a scalar for one chain, shape ``(num_chains,)`` otherwise."""
        le = self.result.log_evidence
        return le[0] if self.num_chains == 1 else le

    @property
    def diagnostics(self) -> SMCResult:
        """The run's ``SMCResult`` with ``stages`` trimmed to the longest chain (NumPy)."""
        r = jax.tree.map(np.asarray, self.result)
        s = int(np.max(r.num_stages))
        return r._replace(stages=StageDiagnostics(*(a[:, :s] for a in r.stages)))

    def print_summary(self, prob: float = 0.9, exclude_deterministic: bool = True) -> None:
        """Print NumPyro's summary table of the posterior draws and the log evidence."""
        from numpyro.diagnostics import print_summary

        samples = self.get_samples(group_by_chain=True)
        if exclude_deterministic:
            samples = {k: v for k, v in samples.items() if k in self._info.latent_names}
        print_summary(samples, prob=prob, group_by_chain=True)
        d = self.diagnostics
        le = np.asarray(self.result.log_evidence)
        print(f"log evidence: {np.mean(le):.4f}")
        print(convergence.format_report(self.convergence))
        print(f"stages: {d.num_stages}, failed: {d.failed}, max_stages hit: {d.reached_max_stages}")
        with np.printoptions(precision=2, suppress=True, linewidth=88):
            for c in range(self.num_chains):
                s = int(d.num_stages[c])
                print(f"chain {c}: temperature {d.stages.temperature[c, :s]}")
                print(f"chain {c}: acceptance  {d.stages.acceptance_rate[c, :s]}")
                print(f"chain {c}: MCMC steps  {d.stages.num_mcmc_steps[c, :s].astype(int)}")

    def to_inference_data(self):
        """An ArviZ ``InferenceData`` (arviz < 1) or ``DataTree`` (arviz >= 1); see
        ``particlekit.arviz.from_smc``."""
        from particlekit.arviz import from_smc

        return from_smc(self)


def _map_chains(fn, *args):
    """``jax.vmap(fn)(*args)`` over chains; one chain runs unbatched (a batched
    ``while_loop`` predicate would add a select over the whole state at every iteration)."""
    if jax.tree.leaves(args)[0].shape[0] == 1:
        out = fn(*jax.tree.map(lambda a: a[0], args))
        return jax.tree.map(lambda a: a[None], out)
    return jax.vmap(fn)(*args)


def _scheme_with_num_samples(scheme):
    fn = resampling.get_scheme(scheme)

    def draw(key, log_weights, num_samples):
        return fn(key, log_weights, num_samples)

    return draw


IMH_PARTICLES_PER_PARAMETER = 3
"""``kernel="imh"`` wants at least this many particles per fitted parameter of its Gaussian
(mixture) proposal, per fit (``_imh_proposal_message``)."""


def _imh_proposal_message(cfg: _Config, dim: int) -> str:
    """A report line when the ``"imh"`` proposal has too many parameters for the particles
    it is fitted to, else ``""``.

    Each stage fits ``K (D + D (D + 1) / 2) + K - 1`` parameters to ``N`` particles (``N / 2``
    per cross-fitted half for ``K > 1``). On a 60-D Gaussian posterior (condition number
    1e4, exact evidence) at ``N = 1000`` the evidence of every chain came out +3.5 nats too
    high (+6 nats with the proposal cross-fitted to halves, at 10 % acceptance) with
    agreeing chains, accurate marginal variances and no warning; at 30-D +0.23 nats (2x the
    Monte Carlo error of one chain), at 20-D none (-0.03). ``kernel="hmc"`` was accurate on
    the 60-D problem. Below ``IMH_PARTICLES_PER_PARAMETER`` particles per parameter (30-D
    and up at ``N = 1000``) the report says so."""
    if cfg.spec.kernel != "imh":
        return ""
    k = cfg.spec.num_components
    num_params = k * (dim + dim * (dim + 1) // 2) + k - 1
    per_fit = cfg.num_particles if k == 1 else cfg.num_particles // 2
    if per_fit >= IMH_PARTICLES_PER_PARAMETER * num_params:
        return ""
    return (
        f"kernel='imh' fits {num_params} parameters (a {dim}-D Gaussian"
        + (f" mixture of {k} components" if k > 1 else "")
        + f") to {per_fit} particles at every stage, fewer than "
        f"{IMH_PARTICLES_PER_PARAMETER} per parameter: its log Z is biased upwards in every "
        "chain alike (+3.5 nats on a 60-D Gaussian at N = 1000), which the agreement of the "
        f"chains cannot show. Use kernel='hmc' or num_particles >= "
        f"{IMH_PARTICLES_PER_PARAMETER * num_params * (1 if k == 1 else 2)}"
    )


def nan_data_note(args, kwargs) -> str:
    """A sentence naming the floating-point data arrays of ``run(key, *args, **kwargs)``
    that hold NaN, or ``""``: appended to the messages of a log-likelihood that is NaN or
    ``-inf`` at every particle.

    A NaN observation is outside every NumPyro support, so its log-density is ``-inf`` at
    every parameter value: the first stage gave every particle zero weight and the run
    failed with a message about the likelihood alone, pointing to the model instead of
    the data (a NaN covariate, which makes the log-likelihood NaN, did the same).

    Examples
    --------
    >>> nan_data_note((np.array([1.0, np.nan]),), {"x": np.ones(2)})  # doctest: +ELLIPSIS
    '. The data hold NaN: args[0] (1 of 2 values). ...'
    >>> nan_data_note((np.ones(2),), {})
    ''
    """
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path((args, kwargs))[0]:
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            continue
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        num_nan = int(np.sum(np.isnan(np.asarray(leaf))))
        if num_nan:
            rest = jax.tree_util.keystr(path[2:])  # within a pytree argument
            name = f"args[{path[1].idx}]{rest}" if path[0].idx == 0 else f"{path[1].key}{rest}"
            found.append(f"{name} ({num_nan} of {np.size(leaf)} values)")
    if not found:
        return ""
    return (
        f". The data hold NaN: {', '.join(found)}. A NaN observation is outside the support "
        "of its distribution (log-density -inf for every parameter value) and a NaN "
        "covariate makes the log-likelihood NaN: drop those data, or leave them out of the "
        "likelihood with numpyro.sample(..., obs_mask=...) or numpyro.handlers.mask"
    )


def _check_initial(
    problems: np.ndarray,
    num_particles: int,
    info: ModelInfo,
    find_boundary=None,
    find_nan_data=None,
) -> None:
    """Raise on invalid prior draws, from the per-chain counts of ``_initial_problems``
    (a chain that starts invalid stops before its first stage, so its positions are the
    prior draws). ``find_boundary``: ``() -> {site: count}`` of
    ``numpyro_adapter.invalid_prior_sites`` at those draws, to name the sites whose draws lie on
    their support's boundary (the message said "check the model's parameters and
    supports" to a valid model with a ``Dirichlet(0.1 * ones(10))`` prior, one of whose
    float32 draws in 2000 had an exact 0). ``find_nan_data``: ``() -> str``,
    ``nan_data_note`` of the data, appended to the log-likelihood's message."""
    bad_prior, bad_lik, all_neginf, _ = problems.sum(axis=0)
    total = problems.shape[0] * num_particles
    if bad_prior and find_boundary is not None:
        on_boundary = find_boundary()
        if on_boundary:
            sites = ", ".join(
                f"{k!r} (at {v} draw{'s' if v > 1 else ''})" for k, v in on_boundary.items()
            )
            raise ValueError(
                f"the log-prior is NaN or +inf at {int(bad_prior)} of {total} prior draws, "
                f"in latent site(s) {sites}. At some draws only: the draws lie on (or round "
                "onto) the boundary of the support in floating point, where the density is "
                "infinite (a Dirichlet or Gamma with small concentrations draws exact zeros "
                "now and then); tempered SMC starts from prior draws, so it needs a prior "
                "whose draws are representable (larger concentrations, float64 with "
                "jax_enable_x64, or the parameter's logarithm as the latent site). At every "
                "draw: check the site's parameters"
            )
    lik_note = find_nan_data() if bad_lik and find_nan_data is not None else ""
    for name, bad, note in (("log-prior", bad_prior, ""), ("log-likelihood", bad_lik, lik_note)):
        if bad:
            raise ValueError(
                f"the {name} is NaN or +inf at {int(bad)} of {total} prior draws "
                f"(latent sites {list(info.latent_names)}); check the model's parameters and "
                "supports" + note
            )
    if all_neginf:
        raise ValueError("the log-prior is -inf at every prior draw")
    no_spread = problems[:, 3].max()
    if no_spread:
        raise ValueError(
            f"the {num_particles} initial particles of a chain are all equal in {int(no_spread)} "
            f"of the {info.dim} unconstrained coordinates (latent sites "
            f"{list(info.latent_names)}): the moves scale their steps by the particles' "
            "spread, so these coordinates would never move and the posterior would collapse "
            "onto the starting value. Start from distinct prior draws (an initial_population "
            "of independent draws, a sample_prior that uses its key)"
        )
