"""Feynman–Kac steering of a diffusion model towards ``p(x_0) exp(lmbda r(x_0)) / Z``
(Singhal et al. 2025, "A General Framework for Inference-time Scaling and Steering of
Diffusion Models").

The Feynman–Kac model. Particles run the model's reverse chain on a grid
``1 = t_K > ... > t_0 = 0`` (``grid=``: uniform by default, ``"quadratic"``, ``"karras"``
or any decreasing times, see ``sampling_grid``), with move ``M_k`` the reverse kernel
``p(x_{t_{k-1}} | x_{t_k})`` (or a proposal ``q`` with the weight ``p / q``). At
*potential steps* (every ``resample_every``-th step inside ``resample_window``, and
always the last step) each particle gets an intermediate reward
``r_k = r_phi(x_{t_{k-1}})`` and a potential ``G_k = exp(lmbda phi_k)`` with

* ``"difference"``: ``phi_k = r_k - r_prev`` (``r_prev = 0`` at the first potential step);
* ``"max"``:        ``phi_k = max(r_k, r_prev, ...)`` (running maximum of the rewards);
* ``"sum"``:        ``phi_k = r_k + r_prev + ...`` (running sum);
* ``"immediate"``:  ``phi_k = r_k``;

and at the last step the *final correction* ``phi_0 = r(x_0) - sum_j phi_j`` (the sum over
the particle's ancestral path), so the product of potentials along every path is
``exp(lmbda r(x_0))`` and the weighted particles target ``p(x_0) exp(lmbda r(x_0)) / Z``
exactly, whatever the potential (for ``"difference"`` the correction is
``r(x_0) - r_prev``: the potentials telescope), provided the intermediate potentials are
positive (finite ``lmbda phi_k``) wherever the final target can still be reached: a path
killed at an intermediate step cannot be revived by the final correction. A hard
constraint (a reward ``-inf`` or NaN outside a region) applied to the noisy Tweedie
prediction (``"x0"``) breaks this; such particle-steps are counted in
``num_nonfinite_intermediate`` and warned about after an eager call. Weights are carried
forward between resampling events (the engine's ``reweight``), never dropped, so adaptive
(ESS-triggered) resampling stays unbiased, and ``log_evidence`` estimates
``log E_p[exp(lmbda r(x_0))]``.

Intermediate rewards ``r_phi``: ``"x0"``: ``r(x0_hat(x_t, t))`` (Tweedie);
``"many_sample"``: ``(1 / lmbda) log mean_j exp(lmbda r(x0^(j)))`` with
``x0^(j) ~ N(x0_hat, (1 - ab_t) I)`` (a Gaussian approximation of ``p(x_0 | x_t)``);
or a user function ``r_phi(x_t, t)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

from particlekit import kernels, resampling
from particlekit.diffusion.model import (
    DiffusionModel,
    check_reward,
    check_sampler,
    warn_coarse_em,
)
from particlekit.diffusion.schedules import sampling_grid
from particlekit.run import (
    check_sharding,
    constrain_particles,
    resolve_progress_bar,
    run,
    warn_if_counted,
)
from particlekit.types import StepInfo

__all__ = [
    "FKSteeringResult",
    "fk_steering",
    "gradient_guided_proposal",
    "potential_steps",
    "default_resample_every",
    "POTENTIALS",
    "OVER_TILT_WARNING",
]

POTENTIALS = ("difference", "max", "sum", "immediate")
INTERMEDIATE_REWARDS = ("x0", "many_sample", "rollout")
# reverse steps of each "rollout" draw from x_t to x_0 (network evaluations per draw)
ROLLOUT_STEPS = 4


class FKSteeringResult(NamedTuple):
    """Output of ``fk_steering`` (``N`` particles, ``K`` steps).

    Attributes
    ----------
    samples : Array (N, *shape)
        Final particles ``x_0`` (weighted by ``log_weights``; not resampled). Always
        finite: a move that would give a non-finite state (a NaN model output) is not
        taken, the particle keeps its last finite state with zero weight.
    log_weights : Array (N,)
        Unnormalised log-weights targeting ``p(x_0) exp(lmbda r(x_0)) / Z``.
    log_evidence : Array ()
        Estimate of ``log Z = log E_p[exp(lmbda r(x_0))]`` (unbiased on the natural
        scale); ``-inf`` if every weight vanished.
    ess : Array (K,)
        ESS after each step's reweighting (before any resampling).
    resampled : Array (K,) bool
        Whether step ``k`` resampled.
    rewards : Array (N,)
        Final rewards ``r(x_0)`` per particle.
    intermediate_rewards : Array (K,)
        Weighted mean intermediate reward at each potential step (NaN elsewhere).
    num_nonfinite : Array (K,) int32
        Particles whose log-potential was NaN / ``+inf``, or whose move gave a non-finite
        state, at each step (zero weight). A particle is counted once, at the step it dies,
        not again at later steps while it stays dead.
    num_nonfinite_intermediate : Array (K,) int32
        Live particles whose *intermediate* reward ``r_phi`` was non-finite (``-inf``, NaN
        or ``+inf``) at each intermediate potential step (0 at the other steps and at the
        last, where ``-inf`` simply means outside the target). Positive means the potential
        vanished where the final target may still be reached (e.g. a hard constraint on
        the noisy Tweedie prediction): the run is then biased, and an eager call warns
        (``RuntimeWarning``).
    failed : Array () bool
        True if every weight became zero (then ``log_evidence = -inf``; ``samples`` are
        finite but not usable).
    """

    samples: jax.Array
    log_weights: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array
    rewards: jax.Array
    intermediate_rewards: jax.Array
    num_nonfinite: jax.Array
    num_nonfinite_intermediate: jax.Array
    failed: jax.Array

    def mean(self, fn: Callable = lambda x: x):
        """Weighted estimate of ``E[fn(x_0)]`` under the steered target (zero-weight
        particles are left out, so ``fn`` being NaN at a dead particle cannot make it
        NaN)."""
        w = resampling.normalize(self.log_weights)
        return resampling.weighted_sum(w, jax.vmap(fn)(self.samples))

    def to_inference_data(self, *, key=None, num_draws: int | None = None):
        """The run for ArviZ (``particlekit.arviz.from_fk_steering``): weighted final
        particles with rewards, ``log_marginal_likelihood`` and ``failed``, and per-step
        ``ess`` / ``resampled`` / ``intermediate_reward`` / ``num_nonfinite``; with a
        ``key``, also a ``posterior`` of ``num_draws`` equally weighted draws.

        Examples
        --------
        >>> import jax, particlekit as pk
        >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0], [2.0]], [0.5, 0.5])
        >>> res = pk.diffusion.fk_steering(jax.random.key(0), model, lambda x: x[0],
        ...                                num_particles=16, num_steps=10, progress_bar=False)
        >>> data = res.to_inference_data()  # InferenceData (arviz < 1) or DataTree (arviz 1.x)
        >>> "steps" in (data.children if hasattr(data, "children") else data.groups())
        True
        """
        from particlekit.arviz import from_fk_steering

        return from_fk_steering(self, key=key, num_draws=num_draws)


class _Particle(NamedTuple):
    x: jax.Array  # the sample x_t
    r_last: jax.Array  # reward at the last potential step
    agg: jax.Array  # running max / sum of rewards
    total: jax.Array  # sum of phi applied along the path (for the final correction)
    log_increment: jax.Array  # log G of the current step: log p/q + lmbda phi
    reward: jax.Array  # reward computed this step (NaN if none)
    alive: jax.Array  # every move so far gave a finite x (else x is the last finite one)
    eps: jax.Array  # eps_hat(x, t) when this step's "x0" reward computed it, else zeros


class _Info(NamedTuple):
    """Per-step diagnostics: the engine's StepInfo plus the weighted mean reward and the
    count of live particles with a non-finite intermediate reward."""

    info: StepInfo
    mean_reward: jax.Array
    num_nonfinite_intermediate: jax.Array

    @property
    def log_evidence_increment(self):
        return self.info.log_evidence_increment


def potential_steps(
    num_steps: int, resample_every: int = 1, resample_window=(0.0, 1.0), grid=None
):  # fmt: skip
    """Boolean mask ``(K,)`` of potential / resampling steps: step ``k`` moves from
    ``t = grid[k]`` to ``s = grid[k + 1]`` (``grid``: the sampler's decreasing times,
    ``sampling_grid``; ``None``: uniform, ``t = (K - k) / K``); it is a potential step if
    ``(k + 1) % resample_every == 0`` and ``s`` lies in ``resample_window``, and the last
    step always is (final correction)."""
    if grid is None:
        grid = sampling_grid("uniform", num_steps)
    return jnp.asarray(_potential_mask(num_steps, resample_every, resample_window, grid))


def _potential_mask(num_steps: int, resample_every: int, resample_window, grid):
    """``potential_steps`` computed with NumPy when its inputs are concrete (no device
    work: ``fk_steering`` builds it at every call), with ``jax.numpy`` when one is traced."""
    inputs = (grid, resample_every, *resample_window)
    xp = jnp if any(isinstance(v, jax.core.Tracer) for v in inputs) else np
    s = xp.asarray(grid)[1:]
    k = xp.arange(num_steps)
    lo, hi = (xp.asarray(v, s.dtype) for v in resample_window)
    mask = ((k + 1) % resample_every == 0) & (s >= lo) & (s <= hi)
    return mask | (k == num_steps - 1)


def default_resample_every(potential: str, num_steps: int) -> int:
    """The default ``resample_every`` of ``fk_steering``: 1 for ``"difference"``, and
    ``ceil(num_steps / 3)`` (two intermediate potential steps before the final
    correction) for ``"max"``, ``"sum"`` and ``"immediate"``, whose intermediate targets
    over-tilt more with every potential step (see ``fk_steering``, Notes)."""
    if potential == "difference":
        return 1
    return max(1, -(-int(num_steps) // 3))


# intermediate potential steps beyond which the over-tilting potentials are warned about:
# in docs/steering.md's experiment (two-component mixture, lmbda = 1, N = 1000) "sum"
# loses 0.2 nats of log Z at 4 and 1.6 at 6 steps, "max" / "immediate" 0.2-0.5 at 9-14
OVER_TILT_WARNING = {"sum": 3, "max": 6, "immediate": 6}


def gradient_guided_proposal(
    model: DiffusionModel, reward_fn: Callable, lmbda: float, *, scale: float = 1.0,
    sampler: str = "ddpm", eta: float = 1.0,
):  # fmt: skip
    """A reward-gradient-guided proposal for ``fk_steering``:
    ``q(x_s | x_t) = N(m + scale * lmbda * v * grad_x r(x0_hat(x_t, t)), v I)`` with
    ``(m, v)`` the base reverse kernel's mean and variance. ``fk_steering`` corrects it by
    ``p / q``, so the target is unchanged; only the variance of the weights improves.

    The arguments are checked when the proposal is built, as ``fk_steering`` checks its
    own (``ValueError``): ``model`` a ``DiffusionModel``, ``reward_fn`` a callable returning
    a real scalar for one sample, ``lmbda`` a finite scalar, ``scale`` a finite number
    ``>= 0`` (``0``: the base kernel; a negative one would push away from the reward),
    and ``sampler`` / ``eta`` a reverse kernel with a density (DDIM needs ``eta > 0``: with
    ``eta = 0`` the variance is 0 and every particle dies). A traced ``lmbda`` or ``scale``
    (a proposal built under ``jit``) is checked for its shape only.

    Returns a function ``proposal(x_t, t, s) -> numpyro Distribution`` over ``x_s``.
    """
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model must be a DiffusionModel, got {type(model).__name__}")
    if not callable(reward_fn):
        raise ValueError("reward_fn must be a callable r(x_0) -> scalar")
    check_reward(model, reward_fn)
    check_sampler(sampler, eta)
    lmbda = _check_lmbda(lmbda)
    scale = _check_scale(scale)

    def proposal(x, t, s):
        mean, var = model.reverse_mean_var(x, t, s, sampler=sampler, eta=eta)
        grad = jax.grad(lambda y: reward_fn(model.x0(y, t)))(x)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        loc = mean + scale * lmbda * var * grad
        return dist.Independent(dist.Normal(loc, jnp.sqrt(var)), len(model.shape))

    return proposal


def _rollout(model, key, x, t):
    """One draw of ``x_0 ~ p(x_0 | x_t)`` through the model's own DDPM reverse kernel, in
    ``ROLLOUT_STEPS`` steps from ``t`` to 0 (the model's approximation of the posterior, not
    a Gaussian around the Tweedie mean)."""
    times = t * (1.0 - jnp.arange(ROLLOUT_STEPS + 1, dtype=jnp.result_type(float)) / ROLLOUT_STEPS)

    def step(x, inputs):
        k, t_from, t_to = inputs
        return model.reverse_step(k, x, t_from, t_to), None

    keys = jax.random.split(key, ROLLOUT_STEPS)
    x, _ = jax.lax.scan(step, x, (keys, times[:-1], times[1:]))
    return x


def _intermediate_reward_fn(model, reward_fn, intermediate, num_reward_samples, lmbda):
    if callable(intermediate):
        return lambda key, x, t: intermediate(x, t)
    if intermediate == "x0":
        return lambda key, x, t: reward_fn(model.x0(x, t))

    def draws(key, x, t):
        if intermediate == "rollout":
            keys = jax.random.split(key, num_reward_samples)
            return jax.vmap(lambda k: _rollout(model, k, x, t))(keys)
        x0 = model.x0(x, t)
        sd = model.schedule.sigma(t)
        noise = jax.random.normal(key, (num_reward_samples, *jnp.shape(x0)), x0.dtype)
        return x0 + sd * noise

    def soft_maximum(key, x, t):
        r = jax.vmap(reward_fn)(draws(key, x, t))
        lam = jnp.where(lmbda == 0, 1.0, lmbda)
        soft = (logsumexp(lam * r) - jnp.log(num_reward_samples)) / lam
        return jnp.where(lmbda == 0, jnp.mean(r), soft)

    return soft_maximum


def _update(potential, p: _Particle, r):
    """``(phi, new aggregate)`` for the potential with index ``potential`` (a traced int,
    so all four potentials share one compilation)."""
    running_max = jnp.maximum(p.agg, r)
    running_sum = jnp.where(jnp.isneginf(p.agg), 0.0, p.agg) + r
    phi = jnp.select(
        [potential == 0, potential == 1, potential == 2],
        [r - p.r_last, running_max, running_sum],
        r,
    )
    agg = jnp.select([potential == 1, potential == 2], [running_max, running_sum], p.agg)
    return phi, agg


def _check_rewards(model, reward_fn, intermediate) -> None:
    """The reward (and a callable intermediate reward) return a scalar for one particle:
    traces them on abstract inputs (``check_reward``)."""
    check_reward(model, reward_fn)
    if callable(intermediate):
        check_reward(model, intermediate, "intermediate_reward(x_t, t)", with_time=True)


@eqx.filter_jit
def _fk_steering(
    key, model, reward_fn, lmbda, mask, potential, grid, *, num_particles, intermediate,
    num_reward_samples, ess_threshold, scheme, proposal, sampler, eta, sharding=None,
    progress_bar=False,
):  # fmt: skip
    # runs while tracing: once per compiled configuration (the jit cache keys on the
    # reward's structure and shapes, all that the check depends on), not at every call
    _check_rewards(model, reward_fn, intermediate)
    num_steps = mask.shape[0]
    ts, ss = grid[:-1], grid[1:]
    final_flags = jnp.arange(num_steps) == num_steps - 1
    r_inter = _intermediate_reward_fn(model, reward_fn, intermediate, num_reward_samples, lmbda)
    dtype = jnp.result_type(float)
    agg0 = -jnp.inf  # empty running max; read as 0 by the running sum

    def sample_init(k):
        z = jnp.zeros((), dtype)
        x = model.sample_prior(k)
        return _Particle(x, z, z + agg0, z, z, z + jnp.nan, jnp.all(jnp.isfinite(x)),
                         jnp.zeros_like(x))  # fmt: skip

    # the "x0" reward of a potential step predicts eps_hat(x_s, s); the next move reuses it
    # instead of calling the network again on the same input
    reuse_eps = intermediate == "x0" and proposal is None

    def propagate(k, x, t, s, eps=None):
        if proposal is None:
            mean, var = model.reverse_mean_var(x, t, s, sampler=sampler, eta=eta, eps=eps)
            noise = jax.random.normal(k, jnp.shape(x), mean.dtype)
            return mean + jnp.sqrt(var) * noise, jnp.zeros((), dtype)
        mean, var = model.reverse_mean_var(x, t, s, sampler=sampler, eta=eta)
        q = proposal(x, t, s)
        x_q = q.sample(k)
        log_pq = model.reverse_log_prob(x_q, x, t, s, sampler=sampler, eta=eta) - q.log_prob(x_q)
        stochastic = var > 0  # a deterministic last DDPM / DDIM step keeps the base kernel
        return jnp.where(stochastic, x_q, mean), jnp.where(stochastic, log_pq, 0.0)

    def keep_finite(ok, new, old):
        return jnp.where(ok, new, old)

    def move_fn(key, p: _Particle, inputs):
        (t, s, is_pot, is_final, has_eps), dead = inputs
        k_move, k_rew = jax.random.split(key)
        n = p.x.shape[0]
        keys = jax.random.split(k_move, n)
        if reuse_eps:
            eps = jax.lax.cond(
                has_eps, lambda: p.eps, lambda: jax.vmap(model.eps, in_axes=(0, None))(p.x, t)
            )
            x, log_pq = jax.vmap(propagate, in_axes=(0, 0, None, None, 0))(keys, p.x, t, s, eps)
        else:
            x, log_pq = jax.vmap(propagate, in_axes=(0, 0, None, None))(keys, p.x, t, s)
        # a move to a non-finite state (a NaN model output) is not taken: the particle
        # keeps its finite state and dies (a NaN potential now, counted once)
        ok = p.alive & jax.vmap(lambda z: jnp.all(jnp.isfinite(z)))(x)
        x = jax.vmap(keep_finite)(ok, x, p.x)

        no_eps = jnp.zeros_like(x)

        def with_potential(_):
            def final_reward(_):
                return jax.vmap(reward_fn)(x).astype(dtype), no_eps

            def inter_reward(_):
                if reuse_eps:
                    eps_s = jax.vmap(model.eps, in_axes=(0, None))(x, s)
                    a, sd = model._coefs(s)
                    r = jax.vmap(reward_fn)((x - sd * eps_s) / a)  # reward of x0_hat(x, s)
                    return r.astype(dtype), eps_s
                keys = jax.random.split(k_rew, n)
                r = jax.vmap(r_inter, in_axes=(0, 0, None))(keys, x, s)
                return r.astype(dtype), no_eps

            r, eps_s = jax.lax.cond(is_final, final_reward, inter_reward, None)
            phi, agg = _update(potential, p, r)
            phi = jnp.where(is_final, r - p.total, phi)  # the final correction
            return r, agg, p.total + phi, lmbda * phi, eps_s

        def without_potential(_):
            nan = jnp.full((n,), jnp.nan, dtype)
            return nan, p.agg, p.total, jnp.zeros((n,), dtype), no_eps

        r, agg, total, log_g, eps_s = jax.lax.cond(is_pot, with_potential, without_potential, None)
        r = jnp.where(ok, r, jnp.nan)
        r_last = jnp.where(is_pot, r, p.r_last)
        # NaN for a particle that dies now (zero weight, counted); -inf (zero weight, not
        # counted again) for one that was already dead, by its move or by its weight
        log_increment = jnp.where(ok, log_pq + log_g, jnp.where(p.alive, jnp.nan, -jnp.inf))
        log_increment = jnp.where(dead, -jnp.inf, log_increment)
        return _Particle(x, r_last, agg, total, log_increment, r, ok, eps_s)

    resample_kernel = kernels.resample(scheme, ess_threshold)
    move_and_weight = kernels.chain(
        kernels.move(move_fn, vectorized=True),
        kernels.reweight(lambda xp, p, inputs: p.log_increment, vectorized=True),
    )

    def step(key, state, inputs):
        _, _, is_pot, is_final, _ = inputs
        k_mw, k_res = jax.random.split(key)
        # zero-weight particles (and all, once the run failed) stay dead uncounted
        dead = (state.log_weights == -jnp.inf) | (state.log_evidence == -jnp.inf)
        state, info = move_and_weight(k_mw, state, (inputs, dead))
        w = resampling.normalize(state.log_weights)
        mean_reward = jnp.where(is_pot, jnp.nansum(w * state.particles.reward), jnp.nan)
        # the particles alive before this step and after its move (``alive``) whose
        # intermediate reward is non-finite: their potential vanishes (or is invalid)
        bad = ~dead & state.particles.alive & ~jnp.isfinite(state.particles.reward)
        num_bad = jnp.where(is_pot & ~is_final, jnp.sum(bad), 0).astype(jnp.int32)
        n = state.log_weights.shape[0]

        def skip(st):
            st = st._replace(ancestors=jnp.arange(n, dtype=jnp.int32))
            return st, StepInfo.neutral(st)

        state, res_info = jax.lax.cond(
            is_pot & ~is_final, lambda st: resample_kernel(k_res, st, inputs), skip, state
        )
        info = info.merge(res_info)._replace(ess=info.ess)  # ESS before resampling
        return state, _Info(info, mean_reward, num_bad)

    k_init, k_run = jax.random.split(key)
    state = constrain_particles(kernels.init(k_init, sample_init, num_particles), sharding)
    # eps_hat(x_t, t) is known at step k when step k - 1 was a non-final potential step
    has_eps = jnp.concatenate([jnp.zeros((1,), bool), mask[:-1]])
    inputs = (ts, ss, mask, final_flags, has_eps)
    final, trace = run(
        k_run, step, state, inputs, keep_history=False, sharding=sharding,
        progress_bar=progress_bar,
    )  # fmt: skip
    info = trace.info.info
    log_evidence = final.log_evidence
    failed = ~jnp.isfinite(log_evidence)
    return FKSteeringResult(
        samples=final.particles.x,
        log_weights=final.log_weights,
        log_evidence=kernels.reported_log_evidence(log_evidence),
        ess=info.ess,
        resampled=info.resampled,
        rewards=final.particles.reward,
        intermediate_rewards=trace.info.mean_reward,
        num_nonfinite=info.num_nonfinite,
        num_nonfinite_intermediate=trace.info.num_nonfinite_intermediate,
        failed=failed,
    )


def fk_steering(
    key: jax.Array,
    model: DiffusionModel,
    reward_fn: Callable,
    *,
    num_particles: int,
    num_steps: int | None = None,
    lmbda: float = 1.0,
    potential: str = "difference",
    intermediate_reward: str | Callable = "x0",
    num_reward_samples: int = 4,
    resample_every: int | None = None,
    resample_window: tuple[float, float] = (0.0, 1.0),
    ess_threshold: float = 1.0,
    resampling: str | Callable = "systematic",
    proposal: Callable | None = None,
    sampler: str = "ddpm",
    eta: float = 1.0,
    sharding=None,
    progress_bar: bool | None = None,
    grid="uniform",
) -> FKSteeringResult:
    """Sample ``p(x_0) exp(lmbda r(x_0)) / Z`` from a diffusion model with Feynman–Kac
    steering (Singhal et al. 2025), built from the engine (``init``, ``move``,
    ``reweight``, ``resample``, ``chain``, ``run``).

    Parameters
    ----------
    key : PRNG key
    model : DiffusionModel
        The pretrained model (any prediction type).
    reward_fn : callable
        ``r(x_0) -> scalar`` for ONE sample. NaN or ``-inf`` rewards give zero weight
        (NaN counted in ``num_nonfinite``). A reward that is ``-inf`` or NaN on a region
        (a hard constraint) also makes the default ``"x0"`` intermediate reward vanish
        on noisy predictions that leave it, which biases the run: see
        ``intermediate_reward``.
    num_particles : int
        ``N``.
    num_steps : int, optional
        ``K`` reverse steps of a named ``grid`` (default 100); with an array ``grid`` it is
        ``len(grid) - 1`` and may be left out.
    lmbda : float
        Tilt strength ``lambda`` (``0`` = unsteered); a concrete value must be finite
        (``ValueError`` otherwise, before tracing).
    potential : {"difference", "max", "sum", "immediate"}
        Intermediate potential (see the module docstring); the final correction makes
        the target exact for all four, as long as the intermediate potentials are
        positive (finite ``lmbda phi_k``) wherever the final target can still be reached.
    intermediate_reward : {"x0", "many_sample", "rollout"} or callable
        ``r_phi(x_t, t)``: reward of the Tweedie prediction, a soft maximum over
        ``num_reward_samples`` draws around it (``"many_sample"``: Gaussian around the
        Tweedie mean; ``"rollout"``: from the model's own reverse kernel in
        ``ROLLOUT_STEPS`` DDPM steps, ``ROLLOUT_STEPS`` network evaluations per draw), or
        a user function of one particle. It must be finite wherever the final target can
        still be reached: a particle whose intermediate reward is ``-inf`` or NaN dies
        and the final correction cannot bring its path back. A hard-constraint reward
        evaluated on the noisy Tweedie prediction kills paths that would have ended
        inside the constraint (counted in ``num_nonfinite_intermediate``, with a
        ``RuntimeWarning`` after an eager call); give a finite intermediate reward
        instead, e.g. a floored one, ``lambda x, t: jnp.maximum(reward_fn(model.x0(x,
        t)), -1.0)`` (a lower floor stays exact but raises the variance), or ``lambda x,
        t: 0.0`` (the final correction then weights by the reward alone).
    num_reward_samples : int
        Draws for ``"many_sample"`` and ``"rollout"``.
    resample_every : int, optional
        Potentials (and resampling) at every ``resample_every``-th step ... Default
        (``None``): every step for ``"difference"``, ``ceil(num_steps / 3)`` for the
        other potentials (two intermediate potential steps; see Notes).
    resample_window : (float, float)
        ... whose target time ``s`` lies in this window; the last step always weights.
    ess_threshold : float in [0, 1]
        At potential steps resample when ``ESS < ess_threshold * N`` (``1.0``: always, as
        in the paper; weights are carried forward otherwise).
    resampling : str or callable
        A scheme of ``particlekit.resampling``.
    proposal : callable, optional
        ``proposal(x_t, t, s) -> numpyro Distribution`` over ``x_s`` (one particle), used
        instead of the base kernel and corrected by ``p / q`` at every step, e.g.
        ``gradient_guided_proposal``.
    sampler : {"ddpm", "ddim", "em"}, eta : float
        The base reverse kernel (DDIM needs ``eta > 0``).
    sharding : jax.sharding.Sharding, optional
        Sharding of the particle axis, e.g. ``NamedSharding(mesh, P("p"))`` over a 1-D
        mesh: the particles are spread over the devices and pinned there after every
        step (``num_particles`` a multiple of the number of devices); see the Scaling
        page.
    progress_bar : bool, optional
        A tqdm bar over the steps (about 100 updates); ``None`` (default): shown when
        standard error is a terminal.
    grid : {"uniform", "quadratic", "karras"} or array
        The reverse-time grid: a spacing name (``time_grid``, on the model's schedule) or
        the times themselves, strictly decreasing from the noise end (``sampling_grid``;
        a ``ValueError`` before tracing if not). ``resample_window`` refers to these
        times.

    Returns
    -------
    FKSteeringResult

    Notes
    -----
    Over-tilting potentials. With ``"max"``, ``"sum"`` and ``"immediate"`` the product of
    the potentials up to the ``m``-th potential step is ``exp(lmbda sum_j phi_j)``: about
    ``exp(m lmbda r)`` for ``"max"`` / ``"immediate"`` and ``exp(m (m + 1) / 2 lmbda r)``
    for ``"sum"``. Resampling makes the particles follow these over-tilted intermediate
    targets, and the final correction has to undo the tilt; beyond a few potential steps
    its weights degenerate and ``log_evidence`` and the weighted moments are badly off
    (about -17 nats of ``log Z`` for ``"sum"`` with 19 potential steps in the
    tilted-mixture test). This is the variance of the potentials, not a defect: the
    estimators stay unbiased, an independent re-implementation gives the same numbers,
    and the error does not shrink with ``N`` in any affordable range. Hence the default
    ``resample_every`` above, and a ``UserWarning`` when more intermediate potential
    steps than ``OVER_TILT_WARNING`` are asked for. ESS-triggered resampling does not
    help (the potentials, not the resampling, set the intermediate targets).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> res = pk.diffusion.fk_steering(jax.random.key(0), model, lambda x: x[0],
    ...                                num_particles=64, num_steps=20, lmbda=2.0)
    >>> res.samples.shape, res.log_weights.shape
    ((64, 2), (64,))
    """
    kernels.check_key(key)
    num_particles = kernels.check_num_particles(num_particles)
    num_reward_samples = kernels.check_num_particles(num_reward_samples, "num_reward_samples")
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model must be a DiffusionModel, got {type(model).__name__}")
    grid = sampling_grid(grid, num_steps, schedule=model.schedule)
    num_steps = int(grid.shape[0]) - 1
    if not callable(reward_fn):
        raise ValueError("reward_fn must be a callable r(x_0) -> scalar")
    if potential not in POTENTIALS:
        raise ValueError(f"potential must be one of {POTENTIALS}, got {potential!r}")
    if resample_every is None:
        resample_every = default_resample_every(potential, num_steps)
    resample_every = kernels.check_num_particles(resample_every, "resample_every")
    if not (callable(intermediate_reward) or intermediate_reward in INTERMEDIATE_REWARDS):
        raise ValueError(
            f"intermediate_reward must be one of {INTERMEDIATE_REWARDS} or a callable "
            f"(x_t, t) -> reward, got {intermediate_reward!r}"
        )
    try:  # a scalar, a triple or a string raised TypeError / an unpacking ValueError
        lo, hi = (float(v) for v in resample_window)
    except (TypeError, ValueError):
        raise ValueError(
            "resample_window must be a pair (lo, hi) with 0 <= lo <= hi <= 1, got "
            f"{resample_window!r}"
        ) from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"resample_window must satisfy 0 <= lo <= hi <= 1, got {resample_window}")
    ess_threshold = kernels.check_ess_threshold(ess_threshold)
    if proposal is not None and not callable(proposal):
        raise ValueError("proposal must be None or a callable (x_t, t, s) -> Distribution")
    check_sampler(sampler, eta)
    sharding = check_sharding(sharding, num_particles, key=key)
    lmbda = _check_lmbda(lmbda)
    mask = _potential_mask(num_steps, resample_every, (lo, hi), grid)
    _warn_over_tilt(potential, mask)
    if proposal is None:  # a user proposal replaces the reverse kernel
        warn_coarse_em(model.schedule, grid, sampler, "fk_steering")
    # the reward checks (check_reward) run inside, while tracing: see _fk_steering
    result = _fk_steering(
        key, model, reward_fn, lmbda, mask,
        np.asarray(POTENTIALS.index(potential), np.int32), grid,
        num_particles=num_particles, intermediate=intermediate_reward,
        num_reward_samples=num_reward_samples, ess_threshold=float(ess_threshold),
        scheme=resampling_scheme(resampling), proposal=proposal, sampler=sampler,
        eta=float(eta), sharding=sharding, progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip
    warn_if_counted(result.num_nonfinite_intermediate, _NONFINITE_INTERMEDIATE_WARNING)
    return result


def _as_scalar(lmbda):
    """``lmbda`` in the float dtype: a NumPy value for a Python number (no device work
    before the jitted call), else a ``jax.numpy`` array (a traced ``lmbda`` stays traced)."""
    dtype = jnp.result_type(float)
    if isinstance(lmbda, (int, float, np.number)):
        return np.asarray(lmbda, dtype)
    return jnp.asarray(lmbda, dtype)


def _check_lmbda(lmbda):
    """``lmbda`` as a scalar of the float dtype (``_as_scalar``), else a ``ValueError``; a
    concrete value must be finite (a NaN or infinite tilt gave NaN weights: every particle
    dead without an error). A traced one is checked for its shape only."""
    lmbda = _as_scalar(lmbda)
    if lmbda.ndim != 0:
        raise ValueError(f"lmbda must be a scalar, got shape {lmbda.shape}")
    if not isinstance(lmbda, jax.core.Tracer) and not np.isfinite(np.asarray(lmbda)):
        raise ValueError(f"lmbda must be finite, got {float(lmbda)}")
    return lmbda


def _check_scale(scale):
    """The guidance ``scale`` of ``gradient_guided_proposal`` as a scalar of the float
    dtype, else a ``ValueError``: a concrete one must be finite and ``>= 0`` (``0`` is the
    base kernel; a negative scale guides away from the reward, an infinite one gives NaN
    proposals). A traced one is checked for its shape only."""
    if isinstance(scale, str | bytes | bool):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    scale = _as_scalar(scale)
    if scale.ndim != 0:
        raise ValueError(f"scale must be a scalar, got shape {scale.shape}")
    if not isinstance(scale, jax.core.Tracer) and not 0.0 <= float(scale) < np.inf:
        raise ValueError(f"scale must be a finite number >= 0, got {float(scale)}")
    return scale


def _warn_over_tilt(potential: str, mask) -> None:
    if potential not in OVER_TILT_WARNING or isinstance(mask, jax.core.Tracer):
        return
    steps = int(mask.sum()) - 1  # intermediate potential steps (the last one corrects)
    if steps > OVER_TILT_WARNING[potential]:
        warnings.warn(
            f"potential={potential!r} with {steps} intermediate potential steps: its "
            "intermediate targets over-tilt with every step and the final correction's "
            "weights degenerate (log_evidence and the weighted moments can be far off). "
            f"Use at most {OVER_TILT_WARNING[potential]} (resample_every / "
            "resample_window; the default gives 2) or potential='difference'; see "
            "docs/steering.md.",
            UserWarning,
            stacklevel=3,
        )


_NONFINITE_INTERMEDIATE_WARNING = (
    "fk_steering: the intermediate reward was -inf, NaN or +inf for {count} live "
    "particle-steps (see num_nonfinite_intermediate). The intermediate potentials must be "
    "positive wherever the final target can still be reached: a particle killed at an "
    "intermediate step cannot be brought back by the final correction, so log_evidence "
    "and the samples are biased (e.g. a hard-constraint reward, -inf or NaN outside a "
    "region, evaluated on the noisy Tweedie predictions of intermediate_reward='x0'). "
    "Give a finite intermediate reward, e.g. intermediate_reward=lambda x, t: "
    "jnp.maximum(reward_fn(model.x0(x, t)), -1.0) (a floor of a nat or two) or "
    "lambda x, t: 0.0; see "
    "docs/steering.md"
)


def resampling_scheme(scheme):
    """Resolve a resampling scheme by name or function (ValueError if unknown)."""
    return resampling.get_scheme(scheme)
