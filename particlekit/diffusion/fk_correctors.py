"""Feynman–Kac correctors (Skreta et al. 2025, "Feynman-Kac Correctors in Diffusion:
Annealing, Guidance, and Product of Experts"): weighted reverse SDEs that sample the
geometric combination ``q_0(x) ∝ prod_i p_i(x)^{beta_i}`` of pretrained diffusion models
``p_i`` (same schedule), e.g. annealing ``p^beta``, products of experts ``p1 p2`` and
classifier-free-guidance-style geometric averages ``p1^{1 - gamma} p2^gamma``.

Derivation (variance preserving, forward drift ``f = -b x / 2``, ``g^2 = b = beta(t)``,
reverse time ``dtau = -dt``). The intermediate targets are ``q_t ∝ prod_i p_{i,t}^{beta_i}``
with ``u_i = log p_{i,t}``. Simulating

    dx = [b x / 2 + a_t sum_i beta_i grad u_i] dtau + sigma_t dW,   a_t = (g^2 + sigma_t^2) / 2,

the Feynman–Kac weights ``dlog w = h dtau`` with

    h = (B - 1) div f + g^2 / 2 (|sum_i beta_i grad u_i|^2 - sum_i beta_i |grad u_i|^2),
    B = sum_i beta_i,  div f = -b d / 2,

make ``E[w phi(x_t)] ∝ int q_t phi`` for every noise level ``sigma_t`` (the Laplacian
terms of the Fokker–Planck equations cancel exactly with this ``a_t``, so only scores are
needed; Skreta et al. 2025, Sec. 3). Special cases: annealing (one model)
``h = (beta - 1) div f + beta (beta - 1) g^2 / 2 |grad u|^2``; product
``h = div f + g^2 <grad u_1, grad u_2>``.

The noise level ``sigma_t^2 = c g^2`` is free (``noise``): ``"target"`` (``c = 1``, drift
``g^2 grad log q_t``, the target-score SDE), ``"tempered"`` (``c = 1 / B``) or any
``c >= 0``. It changes the variance, not the target: for ``B > 1`` the uncorrected SDE is
more concentrated than ``q_t`` (for Gaussian data its stationary variance is
``c / (B (1 + c) - 1)`` against ``1 / B``), and larger ``c`` keeps it closer, so the
weights stay well behaved; ``"tempered"`` and ``c = 0`` (an ODE) degenerate for ``B > 1``.

The Feynman–Kac model per step ``t -> s = t - 1/K``: potential ``G = exp(h(x_t, t) / K)``
(``reweight``), ``resample`` on ESS, then the Euler–Maruyama move. Particles start from
``N(0, I / B)`` (``∝ prod_i N(0, I)^{beta_i}``, the ``t = 1`` limit), so
``log_evidence`` estimates ``log int prod_i p_i(x)^{beta_i} dx`` (up to time
discretisation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from particlekit import kernels, resampling
from particlekit.diffusion.model import DiffusionModel
from particlekit.diffusion.schedules import noise_end_step_rate, sampling_grid
from particlekit.run import check_sharding, constrain_particles, resolve_progress_bar, run

__all__ = [
    "FKCResult",
    "fk_corrector",
    "anneal",
    "product_of_experts",
    "geometric_average",
]


class FKCResult(NamedTuple):
    """Output of ``fk_corrector`` (``N`` particles, ``K`` steps).

    Attributes
    ----------
    samples : Array (N, *shape)
        Final particles (weighted by ``log_weights``).
    log_weights : Array (N,)
    log_evidence : Array ()
        Estimate of ``log int prod_i p_i^{beta_i}`` (``-inf`` if all weights vanished).
    ess : Array (K,)
        ESS after each step's reweighting (before resampling).
    resampled : Array (K,) bool
    num_nonfinite : Array (K,) int32
        Particles whose log-weight was NaN or ``+inf`` at each step, or whose move gave a
        non-finite state (e.g. a NaN score, or an Euler–Maruyama step that overflows at a
        large ``B``): such a particle keeps its last finite state, gets zero weight, is
        counted once and is resampled away (at the latest after the last step).
        ``samples`` are therefore always finite.
    failed : Array () bool
        True if every weight vanished (every particle non-finite, for example); then
        ``log_evidence = -inf`` and ``samples`` (finite: the particles' last finite
        states) are not usable.
    """

    samples: jax.Array
    log_weights: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array
    num_nonfinite: jax.Array
    failed: jax.Array

    def to_inference_data(self, *, key=None, num_draws: int | None = None):
        """The run for ArviZ (``particlekit.arviz.from_fk_corrector``): weighted final
        particles, ``log_marginal_likelihood``, ``failed`` and per-step ``ess`` /
        ``resampled`` / ``num_nonfinite``; with a ``key``, also a ``posterior`` of
        ``num_draws`` equally weighted draws."""
        from particlekit.arviz import from_fk_corrector

        return from_fk_corrector(self, key=key, num_draws=num_draws)

    def mean(self, fn=lambda x: x):
        """Weighted estimate of ``E[fn(x)]`` under the combined target (zero-weight
        particles are left out, so a dead non-finite particle cannot make it NaN)."""
        w = resampling.normalize(self.log_weights)
        return resampling.weighted_sum(w, jax.vmap(fn)(self.samples))


def _is_finite(x) -> jax.Array:
    """Whether every coordinate of one particle is finite."""
    return jnp.all(jnp.isfinite(x))


class _Particle(NamedTuple):
    """One particle inside the run: its state ``x`` (always finite) and whether every move
    so far gave a finite state. A move that would make ``x`` non-finite (a NaN score, an
    Euler–Maruyama step that overflows) keeps the last finite ``x`` and sets
    ``alive = False``; the next potential is then NaN (zero weight, counted once). So the
    returned samples are finite even when every particle dies, as in ``fk_steering`` and
    ``pdds``, whose moves never leave the finite states either."""

    x: jax.Array
    alive: jax.Array


def _dead_stays_dead(log_g, state):
    """A particle that already has zero weight (``-inf``), or that was already dead before
    the last move, keeps a zero weight without being counted in ``num_nonfinite`` again (as
    ``pdds`` does for an already-dead particle): a particle whose state or potential turns
    non-finite is counted once, at the step it happens. Once the run has failed (every
    weight zero, ``log_evidence = -inf``) nothing more is counted."""
    dead = (
        (state.log_weights == -jnp.inf)
        | ~state.previous_particles.alive
        | (state.log_evidence == -jnp.inf)
    )
    return jnp.where(dead, -jnp.inf, log_g)


def _noise_factor(noise, total_beta):
    if noise == "target":
        return 1.0
    if noise == "tempered":
        return 1.0 / total_beta
    try:
        value = float(noise)
    except (TypeError, ValueError):
        value = math.nan
    # noise = inf made every move NaN: a run that failed instead of a ValueError
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(
            f"noise must be 'target', 'tempered' or a finite float >= 0, got {noise!r}"
        )
    return value


def _noise_end_step_rate(schedule, grid, total_beta: float, noise_factor: float) -> float:
    """``max_k kappa b(t_k) (t_k - t_{k+1})`` with ``kappa = (B (1 + c) - 1) / 2``: the
    contraction of one Euler–Maruyama step near the noise end, where every ``p_{i,t}`` is
    close to ``N(0, I)`` (score ``-x``) and the move is ``x <- (1 - kappa b dt) x + noise``
    whatever the data. Above 1 the step overshoots (above 2 it diverges), and the weights,
    which grow like ``b dt |x|^2``, lose all accuracy. Stiffness from narrow data near
    ``t = 0`` is not measured. 0 for a traced grid (it cannot be checked)."""
    kappa = (total_beta * (1.0 + noise_factor) - 1.0) / 2.0
    return noise_end_step_rate(schedule, grid, kappa)


def _warn_unstable_steps(schedule, grid, total_beta: float, noise_factor: float) -> None:
    """A ``RuntimeWarning`` before tracing when the time steps are too coarse for the
    Euler–Maruyama move (``_noise_end_step_rate > 1``): anneal(beta=2) of ``N(0, 1)`` at 5,
    10 and 20 steps gave ``log_evidence`` 127191, 4760 and 37 (exact -1.27) with no sign
    of trouble but a collapsed ESS. The run still goes on (a weight that overflows is
    reported in ``num_nonfinite`` / ``failed``). On the cosine schedule the default 200
    uniform steps overshoot for ``B = 2`` (``kappa b dt = 3`` at ``t = 0.995``): log_evidence
    between 73 and 140 for ``N(0, 0.25)`` data (exact -0.57)."""
    rate = _noise_end_step_rate(schedule, grid, total_beta, noise_factor)
    if rate > 1.0:
        warnings.warn(
            f"fk_corrector: the time steps are too coarse for B = {total_beta:.3g}: one "
            f"Euler-Maruyama step near the noise end overshoots (kappa b dt = {rate:.3g} > 1), "
            "so the samples, weights and log_evidence are unreliable; take more steps, or "
            "smaller ones where beta(t) is large (a grid array; for the cosine schedule, "
            "whose beta(t) grows without bound near t = 1, start the grid below 1)",
            RuntimeWarning,
            stacklevel=3,
        )


def _log_gaussian_power_integral(total_beta: float, dim: int) -> float:
    """``log int prod_i N(x; 0, I)^{beta_i} dx`` with ``B = sum beta_i``."""
    return dim * (1.0 - total_beta) / 2 * math.log(2 * math.pi) - dim / 2 * math.log(total_beta)


def fk_corrector(
    key: jax.Array,
    models: Sequence[DiffusionModel],
    betas: Sequence[float],
    *,
    num_particles: int,
    num_steps: int | None = None,
    grid="uniform",
    noise: str | float = "target",
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    sharding=None,
    progress_bar: bool | None = None,
) -> FKCResult:
    """Sample ``prod_i p_i(x)^{beta_i} / Z`` with a Feynman–Kac corrector.

    Parameters
    ----------
    key : PRNG key
    models : sequence of DiffusionModel
        Pretrained models ``p_i`` with the same schedule and sample shape.
    betas : sequence of float
        Exponents ``beta_i`` with ``B = sum_i beta_i > 0``.
    num_particles : int
    num_steps : int, optional
        Euler–Maruyama steps from ``t = 1`` to ``t = 0`` (default 200, or
        ``len(grid) - 1`` for an array ``grid``).
    grid : {"uniform", "quadratic", "karras"} or array
        The times visited, strictly decreasing from 1 to 0 (``sampling_grid``).
    noise : {"target", "tempered"} or float
        ``sigma_t^2 / g_t^2``: 1 (target-score SDE), ``1 / B`` (tempered noise) or a
        number ``>= 0``; the weights correct any choice, more noise lowers their variance
        when ``B > 1``.
    ess_threshold : float in [0, 1]
        Resample when ``ESS < ess_threshold * N`` (weights carried otherwise).
    resampling : str or callable
        A scheme of ``particlekit.resampling``.
    sharding : jax.sharding.Sharding, optional
        Sharding of the particle axis, e.g. ``NamedSharding(mesh, P("p"))`` over a 1-D
        mesh: the particles are spread over the devices and pinned there after every
        step (``num_particles`` a multiple of the number of devices); see the Scaling
        page.
    progress_bar : bool, optional
        A tqdm bar over the steps (about 100 updates); ``None`` (default): shown when
        standard error is a terminal.

    Returns
    -------
    FKCResult

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> m1 = pk.diffusion.gaussian_mixture([1.0], [[-1.0]], stds=1.0)
    >>> m2 = pk.diffusion.gaussian_mixture([1.0], [[1.0]], stds=1.0)
    >>> res = pk.diffusion.fk_corrector(jax.random.key(0), [m1, m2], [1.0, 1.0],
    ...                                 num_particles=256, num_steps=50)
    >>> res.samples.shape
    (256, 1)
    """
    kernels.check_key(key)
    if isinstance(models, DiffusionModel):
        raise ValueError("models must be a sequence of DiffusionModel, e.g. [model]")
    models = tuple(models)
    if not models or not all(isinstance(m, DiffusionModel) for m in models):
        raise ValueError("models must be a non-empty sequence of DiffusionModel")
    if any(m.schedule != models[0].schedule for m in models):
        raise ValueError("all models must share the same noise schedule")
    if any(m.shape != models[0].shape for m in models):
        raise ValueError("all models must have the same sample shape")
    try:
        betas_list = [float(b) for b in betas]
    except (TypeError, ValueError) as err:
        raise ValueError(f"betas must be a sequence of numbers, one per model: {err}") from err
    if len(betas_list) != len(models):
        raise ValueError(f"need one beta per model: {len(models)} models, {len(betas_list)} betas")
    total = sum(betas_list)
    if not total > 0 or not all(math.isfinite(b) for b in betas_list):
        raise ValueError(f"betas must be finite with a positive sum, got {betas_list}")
    dtype = jnp.result_type(float)
    tiny, big = float(jnp.finfo(dtype).tiny), float(jnp.finfo(dtype).max)
    if not (tiny <= total <= big and all(abs(b) <= big for b in betas_list)):
        # the particles start from N(0, I / B): B must be a normal number of the dtype
        raise ValueError(
            f"betas must be representable in {dtype.name} with a sum between {tiny:.3g} and "
            f"{big:.3g}, got {betas_list}"
        )
    num_particles = kernels.check_num_particles(num_particles)
    grid = sampling_grid(grid, num_steps, schedule=models[0].schedule, default_num_steps=200)
    ess_threshold = kernels.check_ess_threshold(ess_threshold)
    noise_factor = _noise_factor(noise, total)
    sharding = check_sharding(sharding, num_particles, key=key)
    _warn_unstable_steps(models[0].schedule, grid, total, noise_factor)  # after every check
    dim = math.prod(models[0].shape)
    return _fk_corrector(
        key, models, jnp.asarray(betas_list, dtype), jnp.asarray(noise_factor, dtype),
        jnp.asarray(_log_gaussian_power_integral(total, dim), dtype), grid.astype(dtype),
        num_particles=num_particles, ess_threshold=float(ess_threshold),
        scheme=resampling_scheme(resampling), sharding=sharding,
        progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip


def resampling_scheme(scheme):
    """Resolve a resampling scheme by name or function."""
    return resampling.get_scheme(scheme)


@eqx.filter_jit
def _fk_corrector(
    key, models, betas, noise_factor, log_z0, grid, *, num_particles, ess_threshold, scheme,
    sharding=None, progress_bar=False,
):  # fmt: skip
    schedule = models[0].schedule
    shape = models[0].shape
    total = jnp.sum(betas)
    dim = math.prod(shape)
    num_steps = grid.shape[0] - 1
    steps = (grid[:-1], grid[:-1] - grid[1:])  # (t, dt): step k moves from g_k to g_{k+1}

    def scores(x, t):
        return jnp.stack([m.score(x, t) for m in models])  # (M, *shape)

    def log_potential(p, t, dt):
        x = p.x
        b = schedule.beta(t)
        sc = scores(x, t)
        combined = jnp.tensordot(betas, sc, axes=1)
        sq = jnp.sum(sc.reshape(len(models), -1) ** 2, axis=1)
        h = (total - 1.0) * (-0.5 * b * dim) + 0.5 * b * (jnp.sum(combined**2) - betas @ sq)
        # a particle whose last move failed is a NaN weight (zero weight, counted)
        return jnp.where(p.alive, h * dt, jnp.nan)

    def log_potentials(ps_prev, ps, inputs):
        (t, dt), state = inputs
        return _dead_stays_dead(jax.vmap(log_potential, in_axes=(0, None, None))(ps, t, dt), state)

    def propagate(key, p, step):
        t, dt = step
        x = p.x
        b = schedule.beta(t)
        sigma2 = noise_factor * b
        a = 0.5 * (b + sigma2)
        drift = 0.5 * b * x + a * jnp.tensordot(betas, scores(x, t), axes=1)
        new = x + dt * drift + jnp.sqrt(sigma2 * dt) * jax.random.normal(key, x.shape, x.dtype)
        # a non-finite move is not taken: the particle keeps its finite state and dies
        ok = p.alive & _is_finite(new)
        return _Particle(jnp.where(ok, new, x), ok)

    resample = kernels.resample(scheme, ess_threshold)

    def step(key, state, t):
        k_w, k_r, k_m = jax.random.split(key, 3)
        state, info = kernels.reweight(log_potentials, vectorized=True)(k_w, state, (t, state))
        ess = info.ess
        state, res_info = resample(k_r, state, t)
        state, mv_info = kernels.move(propagate)(k_m, state, t)
        return state, info.merge(res_info).merge(mv_info)._replace(ess=ess)

    def sample_init(k):
        x = jax.random.normal(k, shape) / jnp.sqrt(total)
        finite = _is_finite(x)
        return _Particle(jnp.where(finite, x, 0.0), finite)

    k_init, k_run = jax.random.split(key)
    state = constrain_particles(kernels.init(k_init, sample_init, num_particles), sharding)
    final, trace = run(
        k_run, step, state, steps, keep_history=False, sharding=sharding, progress_bar=progress_bar
    )
    # the last move is not followed by a reweight: particles that died in it get zero
    # weight here (counted in the last step), and if any did, the population is resampled
    # so that the samples are live particles (all of them dead: failed, log_evidence = -inf,
    # the samples still finite)
    k_kill, k_final = jax.random.split(jax.random.fold_in(k_run, num_steps))

    def kill(ps_prev, ps, state):
        return _dead_stays_dead(jnp.where(ps.alive, 0.0, jnp.nan), state)

    final, kill_info = kernels.reweight(kill, vectorized=True)(k_kill, final, final)
    any_dead = ~jnp.all(final.particles.alive)
    final = jax.lax.cond(
        any_dead,
        lambda st: kernels.resample(scheme, 1.0)(k_final, st)[0],
        lambda st: st,
        final,
    )
    log_evidence = final.log_evidence + log_z0
    failed = ~jnp.isfinite(log_evidence) | jnp.all(final.log_weights == -jnp.inf)
    num_nonfinite = trace.info.num_nonfinite.at[-1].add(kill_info.num_nonfinite)
    return FKCResult(
        samples=final.particles.x,
        log_weights=final.log_weights,
        log_evidence=kernels.reported_log_evidence(log_evidence),
        ess=trace.info.ess,
        resampled=trace.info.resampled,
        num_nonfinite=num_nonfinite,
        failed=failed,
    )


def anneal(key, model: DiffusionModel, beta: float, **kwargs) -> FKCResult:
    """Sample ``p(x)^beta / Z`` (temperature ``1 / beta``) from one model; ``kwargs`` as in
    ``fk_corrector``, ``sharding`` included (for ``beta > 1`` prefer ``noise >= 1``,
    e.g. ``noise=2.0``)."""
    return fk_corrector(key, [model], [beta], **kwargs)


def product_of_experts(key, model1: DiffusionModel, model2: DiffusionModel, **kwargs):
    """Sample ``p1(x) p2(x) / Z``; ``kwargs`` as in ``fk_corrector``, ``sharding``
    included."""
    return fk_corrector(key, [model1, model2], [1.0, 1.0], **kwargs)


def geometric_average(key, model1: DiffusionModel, model2: DiffusionModel, gamma: float, **kw):
    """Sample ``p1(x)^{1 - gamma} p2(x)^gamma / Z``. With ``p1`` unconditional, ``p2``
    conditional and ``gamma > 1`` this is the target of classifier-free guidance with
    guidance scale ``gamma``, sampled exactly (up to time discretisation) instead of by the
    CFG heuristic of mixing scores. ``kw`` as in ``fk_corrector``, ``sharding``
    included."""
    return fk_corrector(key, [model1, model2], [1.0 - gamma, gamma], **kw)
