"""Particle Denoising Diffusion Sampler (PDDS; Phillips, Dau, Hutchinson, De Bortoli,
Deligiannidis & Doucet, ICML 2024): samples and the normalising constant of an
unnormalised density ``gamma`` by running SMC along the time reversal of an
Ornstein–Uhlenbeck noising process.

Feynman–Kac picture (time grid ``t_K > ... > t_0 = 0``, ``t_K <= 1``: uniform by default,
or ``grid=`` any decreasing times ending at 0, see ``schedules.sampling_grid``;
``lambda_k = lambda_{t_k, t_{k-1}}`` from ``schedules``, reference ``N(0, sigma^2 I)``):

- ``M_K = N(0, sigma^2 I)``, ``G_K(x_K) = g_hat_{t_K}(x_K)``;
- ``M_k(x_{k-1} | x_k) = q = N(sqrt(1 - lambda_k) x_k + sigma^2 lambda_k grad log
  g_hat_{t_k}(x_k), sigma^2 lambda_k I)`` (the guided reverse step);
- ``G_k = p_ref(x_{k-1} | x_k) g_hat_{t_{k-1}}(x_{k-1}) / (q(x_{k-1} | x_k)
  g_hat_{t_k}(x_k))`` with ``p_ref = N(sqrt(1 - lambda_k) x_k, sigma^2 lambda_k I)`` and
  ``g_hat_{t_0} = g_0 = gamma / N(0, sigma^2 I)`` exactly.

The product telescopes to ``N(x_K) prod p_ref * g_0(x_0)``, the reference path tilted by
``g_0``, whose mass is ``Z = int gamma``: the evidence estimate is unbiased for any
guidance ``g_hat`` that is positive (finite ``log g_hat_t``) wherever the target can still
be reached (only its variance depends on ``g_hat``). Where an intermediate ``g_hat_t``
vanishes the particle is killed, and paths that would have ended inside the support are
lost: e.g. the naive guidance of a target with bounded support (``log gamma = -inf``
outside it) is ``-inf`` at intermediate times where ``sqrt(alpha_bar_t) x`` leaves the
support. Such particle-steps are counted in ``num_nonfinite_intermediate`` (and warned
about after an eager call).

Non-uniform grids. Nothing above assumes equal steps: every step uses its own pair of
times, ``lambda_k = 1 - alpha_bar(t_k) / alpha_bar(t_{k-1})`` (the exact OU transition
between them, for the reference kernel, the proposal mean and variance and the weight),
``g_hat_{t_k}`` and ``g_hat_{t_{k-1}}`` at the two ends, and the MALA target at
``t_{k-1}``; there is no ``1 / K`` anywhere. The reference is stationary and reversible,
so ``x_K ~ N(0, sigma^2 I)`` is its law at any ``t_K`` and the identity holds for any
strictly decreasing grid that ends at ``t_0 = 0`` (where ``g_hat_0 = g_0``, the target).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from particlekit import kernels, resampling
from particlekit.diffusion.potentials import NaivePotential, log_g0
from particlekit.diffusion.schedules import NoiseSchedule, get_schedule, sampling_grid
from particlekit.run import (
    check_sharding,
    constrain_particles,
    resolve_progress_bar,
    run,
    warn_if_counted,
)
from particlekit.types import ParticleState, RunTrace, StepInfo

__all__ = ["PDDSParticle", "PDDSResult", "pdds"]


class PDDSParticle(NamedTuple):
    """One PDDS particle with its cached guidance: ``x (dim,)``, ``log_potential =
    log g_hat_t(x)`` and ``grad_log_potential = grad log g_hat_t(x)`` at the particle's
    current time (cached so each step costs one gradient evaluation of ``log gamma``)."""

    x: jax.Array
    log_potential: jax.Array
    grad_log_potential: jax.Array


class PDDSResult(NamedTuple):
    """Output of ``pdds``.

    Attributes
    ----------
    samples : Array of shape (N, dim)
        Final particles (approximately distributed as the target once weighted).
    log_weights : Array of shape (N,)
        Their unnormalised log-weights.
    log_evidence : Array of shape ()
        Estimate of ``log Z = log int gamma(x) dx`` (``exp`` of it is unbiased).
    ess : Array of shape (num_steps + 1,)
        ESS of the weights after the initial weighting at ``t = 1`` and after each
        reverse step (before any resampling).
    resampled : Array of shape (num_steps + 1,), bool
        Whether the population was resampled after the initial weighting / each step
        (when ESS < ess_threshold N).
    acceptance_rate : Array of shape (num_steps,)
        Mean MALA acceptance rate of each step (the last one targets ``pi`` itself);
        NaN without MCMC.
    num_nonfinite : Array of shape (num_steps + 1,), int32
        Particles whose weight was NaN / +inf (a NaN or ``+inf`` log-density), set to zero
        weight; also those that a MALA step moved to a NaN / ``+inf`` log-density (they
        die at the next weighting, uncounted there).
    num_nonfinite_intermediate : Array of shape (num_steps + 1,), int32
        Particles of non-zero weight whose *intermediate* guidance ``log g_hat_t`` was
        non-finite (``-inf``, NaN or ``+inf``) at ``t_K`` and after each step (always 0
        at the last step, where ``g_0`` is the target and ``-inf`` is simply outside its
        support). Positive means the guidance vanished where the target may still be
        reached (e.g. a target with bounded support under the naive guidance): the
        estimate is then biased, and an eager call warns (``RuntimeWarning``).
    failed : Array of shape (), bool
        True if every weight became zero (then ``log_evidence = -inf``).
    trace : RunTrace
        The engine's trace of the reverse steps (history of ``PDDSParticle`` states
        with ``keep_history=True``).
    """

    samples: jax.Array
    log_weights: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array
    acceptance_rate: jax.Array
    num_nonfinite: jax.Array
    num_nonfinite_intermediate: jax.Array
    failed: jax.Array
    trace: RunTrace

    def to_inference_data(self, *, key=None, num_draws: int | None = None):
        """The run for ArviZ (``particlekit.arviz.from_pdds``): weighted final particles,
        ``log_marginal_likelihood`` and ``failed``, and per-step ``ess`` / ``resampled`` /
        ``acceptance_rate`` / ``num_nonfinite`` / ``num_nonfinite_intermediate``; with a
        ``key``, also a ``posterior`` of ``num_draws`` equally weighted draws.

        Examples
        --------
        >>> import jax, jax.numpy as jnp, particlekit as pk
        >>> res = pk.diffusion.pdds(jax.random.key(0), lambda x: -0.5 * jnp.sum(x**2), dim=2,
        ...                         num_particles=32, num_steps=8)
        >>> data = res.to_inference_data()  # InferenceData (arviz < 1) or DataTree (arviz 1.x)
        >>> data["weighted_particles"]["x"].dims
        ('chain', 'particle', 'x_dim_0')
        """
        from particlekit.arviz import from_pdds

        return from_pdds(self, key=key, num_draws=num_draws)


class _Info(NamedTuple):
    """A step's ``StepInfo`` and its count of live particles whose intermediate guidance
    became non-finite (``run`` reads only ``log_evidence_increment``)."""

    info: StepInfo
    num_nonfinite_intermediate: jax.Array

    @property
    def log_evidence_increment(self):
        return self.info.log_evidence_increment


class _StepInputs(NamedTuple):
    t_prev: jax.Array  # t_k (noisier)
    t_next: jax.Array  # t_{k-1}
    is_last: jax.Array  # t_{k-1} == 0: use g_0 exactly


def _check_inputs(log_density, dim, num_particles, num_steps, sigma) -> int:
    kernels.check_num_particles(num_particles)
    kernels.check_num_particles(num_steps, "num_steps")
    dim = kernels.check_num_particles(dim, "dim")
    if not callable(log_density):
        raise ValueError("log_density must be a callable x (dim,) -> scalar log gamma(x)")
    if not isinstance(sigma, numbers.Real) or not 0 < float(sigma) < float("inf"):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    try:
        out = jax.eval_shape(log_density, jax.ShapeDtypeStruct((dim,), jnp.result_type(float)))
    except Exception as err:  # noqa: BLE001 - report what the user function did
        raise ValueError(f"log_density failed on an input of shape ({dim},): {err}") from err
    if not hasattr(out, "shape") or out.shape not in ((), (1,)):
        raise ValueError(
            f"log_density must return a scalar for one particle of shape ({dim},), "
            f"got {getattr(out, 'shape', out)}"
        )
    if jnp.issubdtype(out.dtype, jnp.bool_):
        # True / False would be read as log gamma = 1 / 0: a factor e, not an indicator
        raise ValueError(
            "log_density must return log gamma(x), got a bool (an indicator?); for a "
            "bounded support return jnp.where(inside, log_gamma, -jnp.inf)"
        )
    if not jnp.issubdtype(out.dtype, jnp.number) or jnp.issubdtype(out.dtype, jnp.complexfloating):
        # a complex value was cast to a real weight, its imaginary part silently dropped
        raise ValueError(f"log_density must return a real scalar, got dtype {out.dtype}")
    return dim


def _check_grid_ends_at_zero(grid) -> None:
    """PDDS ends on the target, at ``t = 0``: the last grid time must be 0 (a grid built
    under ``jit``, a tracer, cannot be checked and is taken as it is)."""
    if isinstance(grid, jax.core.Tracer):
        return
    # NumPy: a concrete grid (``sampling_grid``'s cache) indexed with jnp under an outer
    # jit would be staged into a tracer
    last = float(np.asarray(grid)[-1])
    if last != 0.0:
        raise ValueError(
            f"the PDDS grid must end at t = 0 (the target), got a last time of {last:.3g}; "
            "append 0.0 to it"
        )


def _potential_sigma(potential):
    """The reference scale a ``NaivePotential`` / ``LearnedPotential`` was built with."""
    naive = getattr(potential, "naive", potential)
    return getattr(naive, "sigma", None) if isinstance(naive, NaivePotential) else None


def _check_exact_potential(potential, log_density, dim: int, sigma: float) -> None:
    """A potential with ``exact_at_zero = True`` weights the last step by its own
    ``g_hat_0``, in place of ``g_0 = gamma / N(0, sigma^2 I)``: the run then targets the
    potential's density. ``ValueError`` when its ``sigma`` is not ``pdds``'s (``g_0`` of
    another reference: a different target, silently), ``UserWarning`` when its value at
    ``t = 0`` differs from ``log g_0`` at a few points (e.g. a ``NaivePotential`` of a
    floored or another density passed directly). Skipped under ``jit`` (traced values)."""
    if potential is None or not getattr(potential, "exact_at_zero", False):
        return
    pot_sigma = _potential_sigma(potential)
    if pot_sigma is not None and float(pot_sigma) != sigma:
        raise ValueError(
            f"the potential was built with sigma={float(pot_sigma):g} but pdds runs with "
            f"sigma={sigma:g}: its g_hat_0 = gamma / N(0, {float(pot_sigma):g}^2 I) is used "
            "as the final weight, so the run would target gamma N(0, sigma^2 I) / "
            f"N(0, {float(pot_sigma):g}^2 I), not gamma. Pass the same sigma to pdds and "
            "to NaivePotential / init_learned_potential / fit_pdds_potential"
        )
    dtype = jnp.result_type(float)
    points = sigma * np.stack(
        [np.zeros(dim), np.full(dim, 0.5), np.linspace(-1.0, 1.0, dim)]
    ).astype(dtype)
    try:
        with jax.ensure_compile_time_eval():
            own = [potential(0.0, jnp.asarray(x)) for x in points]
            exact = [log_g0(log_density, sigma, jnp.asarray(x)) for x in points]
    except Exception:  # noqa: BLE001 - a check only; the run reports real errors
        return
    if any(isinstance(v, jax.core.Tracer) for v in own + exact):
        return
    own = np.asarray([np.asarray(v, np.float64).reshape(()) for v in own])
    exact = np.asarray([np.asarray(v, np.float64).reshape(()) for v in exact])
    same = np.isclose(own, exact, rtol=1e-3, atol=1e-3) | (np.isnan(own) & np.isnan(exact))
    if not np.all(same):
        warnings.warn(
            "the potential has exact_at_zero = True, so pdds weights the last step by its "
            "own g_hat_0 in place of g_0 = gamma / N(0, sigma^2 I), and its value at t = 0 "
            f"differs from log g_0 of log_density ({own.round(3).tolist()} against "
            f"{exact.round(3).tolist()} at 3 test points): the run targets the potential's "
            "density, not log_density's (e.g. a NaivePotential of a floored density). To "
            "weight by log_density exactly at t = 0, pass it wrapped in a plain function, "
            "potential=lambda t, x: pot(t, x); see docs/diffusion.md",
            UserWarning,
            stacklevel=3,
        )


def _value_and_grad(potential, t, x):
    """``(log g_hat_t(x), grad)`` with non-finite gradients zeroed (the value keeps its
    NaN so that the engine zeroes the weight and counts it)."""
    value, grad = jax.value_and_grad(lambda z: jnp.asarray(potential(t, z), z.dtype).reshape(()))(x)
    return value, jnp.where(jnp.isfinite(grad), grad, 0.0)


def _cache(potential, exact_g0, t, x, is_last):
    """A ``PDDSParticle`` at time ``t``; ``g_0`` itself when ``is_last`` (a real
    ``cond``: ``is_last`` is not batched), unless the potential is exact at ``t = 0``."""
    if getattr(potential, "exact_at_zero", False):
        return PDDSParticle(x, *_value_and_grad(potential, t, x))
    value, grad = jax.lax.cond(
        is_last,
        lambda z: _value_and_grad(lambda _, y: exact_g0(y), t, z),
        lambda z: _value_and_grad(potential, t, z),
        x,
    )
    return PDDSParticle(x, value, grad)


def _log_weight(sched: NoiseSchedule, sigma: float, prev: PDDSParticle, new: PDDSParticle, inp):
    """``log p_ref(x'|x) - log q(x'|x) + log g_hat_{t_n}(x') - log g_hat_{t_p}(x)``.

    The ratio of the two Gaussians (same covariance ``v = sigma^2 lambda``, means
    ``m`` and ``m + v g``) is ``-(x' - m).g + v |g|^2 / 2`` in closed form, which avoids
    cancelling two large log-densities in float32.
    """
    lam = sched.lmbda(inp.t_prev, inp.t_next)
    var = sigma**2 * lam
    g = prev.grad_log_potential
    mean = jnp.sqrt(1.0 - lam) * prev.x
    log_ratio = -jnp.dot(new.x - mean, g) + 0.5 * var * jnp.dot(g, g)
    log_w = log_ratio + new.log_potential - prev.log_potential
    # An already-dead particle (non-finite cached potential) stays dead without being
    # counted as non-finite a second time.
    return jnp.where(jnp.isfinite(prev.log_potential), log_w, -jnp.inf)


def _mala_kernel(potential, exact_g0, sigma, num_mcmc_steps, step_scale):
    """MALA (BlackJAX, through ``pk.mcmc``) targeting ``N(x; 0, sigma^2 I) g_hat_t(x)`` at
    ``t = inputs.t_next`` (``g_0`` exactly at the last step), with step size ``step_scale``
    times the weighted mean per-coordinate variance of the particles; the guidance cache
    is recomputed afterwards."""

    def kernel(key, state: ParticleState, inp: _StepInputs):
        xs = state.particles.x
        w = resampling.normalize(state.log_weights)
        # over live particles only: a dead one may hold a NaN state
        mean = resampling.weighted_sum(w, xs)
        var = resampling.weighted_sum(w, (xs - mean) ** 2)
        step = step_scale * jnp.clip(jnp.mean(var), 1e-8 * sigma**2, 4.0 * sigma**2)

        def log_g(x):
            if getattr(potential, "exact_at_zero", False):
                return potential(inp.t_next, x)
            return jax.lax.cond(
                inp.is_last,
                exact_g0,
                lambda y: jnp.asarray(potential(inp.t_next, y), y.dtype).reshape(()),
                x,
            )

        def logdensity(x):
            ref = dist.Normal(jnp.zeros_like(x), sigma).log_prob(x).sum()
            return ref + jnp.asarray(log_g(x)).reshape(())

        x_state = state._replace(particles=xs, previous_particles=xs)
        mala = kernels.mcmc(lambda step_size: blackjax.mala(logdensity, step_size), num_mcmc_steps)
        x_state, info = mala(key, x_state, step)
        cached = jax.vmap(_cache, in_axes=(None, None, None, 0, None))(
            potential, exact_g0, inp.t_next, x_state.particles, inp.is_last
        )
        return state._replace(particles=cached, previous_particles=cached), info

    return kernel


@eqx.filter_jit
def _pdds_run(key, log_density, potential, grid, config):
    (
        dim,
        num_particles,
        sigma,
        sched,
        ess_threshold,
        num_mcmc_steps,
        step_scale,
        scheme,
        keep_history,
        progress_bar,
        sharding,
    ) = config
    dtype = jnp.result_type(float)
    exact_g0 = lambda x: log_g0(log_density, sigma, x)
    if potential is None:
        potential = NaivePotential(log_density, sigma, sched)

    # the grid is a traced input (grids with the same number of steps share a compilation)
    ts = grid.astype(dtype)  # t_K > ... > t_0 = 0, in the order visited
    num_steps = ts.shape[0] - 1
    inputs = _StepInputs(ts[:-1], ts[1:], jnp.arange(num_steps) == num_steps - 1)
    k_init, k_first, k_run = jax.random.split(key, 3)

    def sample_ref(k):
        x = sigma * jax.random.normal(k, (dim,), dtype)
        return _cache(potential, exact_g0, ts[0], x, jnp.asarray(False))

    def propose(k, p: PDDSParticle, inp: _StepInputs):
        lam = sched.lmbda(inp.t_prev, inp.t_next)
        var = sigma**2 * lam
        mean = jnp.sqrt(1.0 - lam) * p.x + var * p.grad_log_potential
        x_new = mean + jnp.sqrt(var) * jax.random.normal(k, p.x.shape, p.x.dtype)
        return _cache(potential, exact_g0, inp.t_next, x_new, inp.is_last)

    move = kernels.move(propose)
    reweight = kernels.reweight(lambda prev, new, inp: _log_weight(sched, sigma, prev, new, inp))
    resample = kernels.resample(scheme, ess_threshold)
    mala = _mala_kernel(potential, exact_g0, sigma, num_mcmc_steps, step_scale)

    def step(k, state, inp):
        """Move, weight, resample on ESS, optionally MALA at ``t_{k-1}`` (as in the paper);
        the recorded ESS is that of the weights before resampling. Also counts the live
        particles whose intermediate guidance became non-finite."""
        k_move, k_res, k_mcmc = jax.random.split(k, 3)
        alive = state.log_weights > -jnp.inf
        state, _ = move(k_move, state, inp)
        state, info_w = reweight(None, state, inp)
        intermediate = ~inp.is_last
        bad = alive & ~jnp.isfinite(state.particles.log_potential) & intermediate
        state, info_r = resample(k_res, state, inp)
        info = info_w.merge(info_r)
        if num_mcmc_steps > 0:
            state, info_c = mala(k_mcmc, state, inp)
            info = info.merge(info_c)
            # MALA accepts moves to a NaN / +inf log-density (never to -inf): such a
            # particle keeps its weight until the next weighting kills it; count it now
            moved_bad = (state.log_weights > -jnp.inf) & resampling.invalid_log_weights(
                state.particles.log_potential
            )
            info = info._replace(num_nonfinite=info.num_nonfinite + jnp.sum(moved_bad))
            bad_count = jnp.sum(bad) + jnp.sum(moved_bad & intermediate)
        else:
            bad_count = jnp.sum(bad)
        return state, _Info(info._replace(ess=info_w.ess), bad_count.astype(jnp.int32))

    # t = 1: draw from the reference, weight by g_hat_1, resample on ESS
    state = constrain_particles(kernels.init(k_init, sample_ref, num_particles), sharding)
    state, info0 = kernels.reweight(lambda _, p, __: p.log_potential)(None, state, None)
    bad0 = jnp.sum(~jnp.isfinite(state.particles.log_potential)).astype(jnp.int32)
    state, info0_r = resample(k_first, state, None)
    final, trace = run(
        k_run,
        step,
        state,
        inputs,
        keep_history=keep_history,
        progress_bar=progress_bar,
        sharding=sharding,
    )
    info, num_bad = trace.info
    trace = trace._replace(info=info)
    log_evidence = final.log_evidence
    return PDDSResult(
        samples=final.particles.x,
        log_weights=final.log_weights,
        log_evidence=log_evidence,
        ess=jnp.concatenate([info0.ess[None], info.ess]),
        resampled=jnp.concatenate([info0_r.resampled[None], info.resampled]),
        acceptance_rate=info.acceptance_rate,
        num_nonfinite=jnp.concatenate([info0.num_nonfinite[None], info.num_nonfinite]),
        num_nonfinite_intermediate=jnp.concatenate([bad0[None], num_bad]),
        failed=~jnp.isfinite(log_evidence) | jnp.all(final.log_weights == -jnp.inf),
        trace=trace,
    )


def pdds(
    key: jax.Array,
    log_density: Callable,
    dim: int,
    *,
    num_particles: int,
    num_steps: int | None = None,
    grid="uniform",
    sigma: float = 1.0,
    schedule: str | NoiseSchedule = "cosine",
    potential: Callable | None = None,
    ess_threshold: float = 0.3,
    num_mcmc_steps: int = 0,
    mcmc_step_size: float | None = None,
    resampling: str | Callable = "systematic",
    keep_history: bool = False,
    progress_bar: bool | None = None,
    sharding=None,
) -> PDDSResult:
    """Particle Denoising Diffusion Sampler: samples from ``pi ∝ gamma`` and an unbiased
    estimate of ``Z = int gamma(x) dx``.

    Starts ``N`` particles from the reference ``N(0, sigma^2 I)`` at ``t = 1`` and walks
    the reverse OU diffusion down to ``t = 0`` with guided Gaussian moves, reweighting by
    the ratio of guidance potentials and resampling when the ESS drops (see the module
    docstring for the Feynman–Kac model). The evidence grows by the engine's one rule
    (``particlekit.reweight``).

    Parameters
    ----------
    key : PRNG key
    log_density : callable
        ``log gamma(x)``, unnormalised, for one particle ``x`` of shape ``(dim,)``.
        Differentiable with JAX. ``NaN`` and ``+inf`` values give zero weight (counted
        in ``num_nonfinite``); ``-inf`` means outside the support. With a bounded support
        the naive guidance is ``-inf`` at intermediate times too, which biases the run
        (see ``potential``). A real scalar: a bool or complex value is a ``ValueError``.
    dim : int
        Dimension of ``x``.
    num_particles : int
        ``N``.
    num_steps : int, optional
        Number of reverse steps ``K`` of a named ``grid`` (default 32); with an array
        ``grid`` it is ``len(grid) - 1`` and may be left out.
    grid : {"uniform", "quadratic", "karras"} or array
        The reverse-time grid ``t_K > ... > t_0``: a spacing of ``time_grid`` on
        ``[0, 1]`` (``"karras"`` on ``schedule``'s noise levels; ``"quadratic"`` and
        ``"karras"`` take smaller steps near the data end, ``t = 0``), or the times
        themselves, strictly decreasing in ``[0, 1]`` and ending at ``0`` (see
        ``sampling_grid``; a ``ValueError`` otherwise, before tracing). Each step uses its
        own pair of times (``lambda_{t_k, t_{k-1}}``, ``g_hat`` at both ends), so the
        evidence stays unbiased on any grid; only its variance changes. A first time below
        1 is allowed (the reference is stationary). Grids with the same ``K`` share one
        compilation (the times are a traced input).
    sigma : float
        Reference scale: the OU process is stationary at ``N(0, sigma^2 I)``. Choose it
        of the order of the target's spread.
    schedule : "cosine", "linear" or NoiseSchedule
        Noise schedule ``alpha_bar(t)``.
    potential : callable, optional
        Guidance ``potential(t, x) -> log g_hat_t(x)`` for one particle; e.g. the
        ``LearnedPotential`` returned by
        ``fit_pdds_potential`` (passed as a traced PyTree: no
        recompilation when its weights change). ``None``: the naive guidance
        ``g_0(sqrt(alpha_bar_t) x)``. Any potential whose ``log g_hat_t`` is finite
        wherever the target can still be reached gives an unbiased evidence; the final
        step always uses ``g_0`` exactly (for a plain function; a potential with
        ``exact_at_zero = True`` is used as it is at ``t = 0``). Where the potential is
        non-finite at an intermediate time the particle dies: those particle-steps are
        counted in ``num_nonfinite_intermediate`` and an eager call gives a
        ``RuntimeWarning``. For a target with bounded support pass a plain function of a
        floored density, e.g. ``lambda t, x: NaivePotential(lambda y:
        jnp.maximum(log_density(y), -20.0), sigma, schedule)(t, x)``.
    ess_threshold : float in [0, 1]
        Resample (after weighting) when ``ESS < ess_threshold * N``.
    num_mcmc_steps : int
        MALA steps (BlackJAX) at the end of every step, targeting ``N(0, sigma^2 I)
        g_hat_t`` at the new time (PDDS-MCMC; ``pi`` itself at the last step). 0
        disables them.
    mcmc_step_size : float, optional
        MALA step size relative to the particles' mean per-coordinate variance
        (default ``0.5 dim^(-1/3)``).
    resampling : str or callable
        A scheme of ``particlekit.resampling``.
    keep_history : bool
        Keep every intermediate population in ``trace.history``.
    progress_bar : bool, optional
        tqdm bar over the reverse steps; ``None`` (default): shown when standard error is a
        terminal.
    sharding : jax.sharding.Sharding, optional
        Sharding of the particle axis, e.g. ``NamedSharding(mesh, P("p"))`` over a 1-D
        mesh: the particles are spread over the devices and pinned there after every
        step (``num_particles`` a multiple of the number of devices); see the Scaling
        page.

    Returns
    -------
    PDDSResult
        ``samples (N, dim)``, ``log_weights (N,)``, ``log_evidence ()``,
        ``ess (num_steps + 1,)``, diagnostics and the trace.

    Warns
    -----
    RuntimeWarning
        After an eager call (not under ``jit`` / ``vmap``, where the fields report it) that
        failed; whose intermediate guidance was non-finite; whose ESS fell below
        ``MIN_ESS_FRACTION`` (5 %) of the particles at some step (the weights degenerated:
        a target much narrower than the reference, too few steps for the guided move,
        separated modes); or, when none of these, whose weighted particles are wider than
        ``2 sigma`` in some coordinate (``sigma`` too small).
    UserWarning
        When a potential with ``exact_at_zero = True`` is not ``log_density``'s ``g_0`` at
        ``t = 0`` (the run then targets the potential's density). One built with another
        ``sigma`` is a ``ValueError``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> logp = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)          # Z = 2 pi
    >>> res = pk.diffusion.pdds(jax.random.key(0), logp, 2, num_particles=1000,
    ...                         num_steps=32)
    >>> bool(abs(res.log_evidence - jnp.log(2 * jnp.pi)) < 0.1)
    True

    A non-uniform grid, by name or as the times themselves (decreasing, ending at 0):

    >>> res = pk.diffusion.pdds(jax.random.key(0), logp, 2, num_particles=1000,
    ...                         num_steps=32, grid="quadratic")
    >>> bool(abs(res.log_evidence - jnp.log(2 * jnp.pi)) < 0.1)
    True
    >>> times = jnp.array([1.0, 0.6, 0.3, 0.15, 0.05, 0.0])
    >>> pk.diffusion.pdds(jax.random.key(0), logp, 2, num_particles=100, grid=times).ess.shape
    (6,)
    """
    kernels.check_key(key)
    sched = get_schedule(schedule)
    grid = sampling_grid(grid, num_steps, schedule=sched, default_num_steps=32)
    _check_grid_ends_at_zero(grid)
    num_steps = int(grid.shape[0]) - 1
    dim = _check_inputs(log_density, dim, num_particles, num_steps, sigma)
    sharding = check_sharding(sharding, num_particles, key=key)
    if isinstance(num_mcmc_steps, bool) or not isinstance(num_mcmc_steps, numbers.Integral):
        raise ValueError(f"num_mcmc_steps must be a non-negative integer, got {num_mcmc_steps!r}")
    if num_mcmc_steps < 0:
        raise ValueError(f"num_mcmc_steps must be a non-negative integer, got {num_mcmc_steps}")
    ess_threshold = kernels.check_ess_threshold(ess_threshold)
    if potential is not None and not callable(potential):
        raise ValueError("potential must be None or a callable (t, x) -> log g_hat_t(x)")
    _check_exact_potential(potential, log_density, dim, float(sigma))
    if mcmc_step_size is None:
        mcmc_step_size = 0.5 * dim ** (-1.0 / 3.0)
    if not 0 < float(mcmc_step_size) < float("inf"):
        raise ValueError(f"mcmc_step_size must be positive and finite, got {mcmc_step_size}")
    scheme = resampling if callable(resampling) else str(resampling)
    config = (
        dim,
        int(num_particles),
        float(sigma),
        sched,
        float(ess_threshold),
        int(num_mcmc_steps),
        float(mcmc_step_size),
        scheme,
        bool(keep_history),
        resolve_progress_bar(progress_bar),
        sharding,
    )
    result = _pdds_run(key, log_density, potential, grid, config)
    warn_if_counted(result.num_nonfinite_intermediate, _NONFINITE_GUIDANCE_WARNING)
    _warn_if_unreliable(result, int(num_particles), float(sigma))
    return result


WIDE_TARGET_SD = 2.0
"""An eager ``pdds`` call warns when the weighted particles' standard deviation exceeds
this multiple of ``sigma`` in some coordinate (a target wider than ``sqrt(2) sigma`` has
infinite-variance weights ``g_0``; ``N(0, 1.5^2)`` under ``sigma = 1`` was still accurate,
a mixture of standard deviation 2.5 was off by up to a nat)."""

MIN_ESS_FRACTION = 0.05
"""An eager ``pdds`` call warns when the ESS of some step falls below this fraction of the
particles: the weights have degenerated and ``log_evidence`` and the weighted moments rest
on a handful of particles (on Gaussian targets narrower than the reference, mixtures and
funnels the runs that fell below it were off by nats)."""


def _weighted_variance(samples: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """Per-coordinate variance of the weighted particles (live ones only: a dead particle
    may hold a NaN state)."""
    live = np.isfinite(log_weights) & np.all(np.isfinite(samples), axis=1)
    if not live.any():
        return np.zeros(samples.shape[1])
    lw = log_weights[live] - log_weights[live].max()
    w = np.exp(lw) / np.exp(lw).sum()
    x = samples[live].astype(np.float64)
    mean = w @ x
    return w @ (x - mean) ** 2


def _warn_if_unreliable(result: PDDSResult, num_particles: int, sigma: float) -> None:
    """``RuntimeWarning`` after an eager run that failed, whose ESS collapsed at some step,
    or (otherwise) whose weighted particles are wider than ``2 sigma`` in some coordinate
    (nothing under ``jit`` / ``vmap``: the result's fields report it)."""
    ess, failed = result.ess, result.failed
    if isinstance(ess, jax.core.Tracer) or not getattr(ess, "is_fully_addressable", True):
        return
    if bool(failed):
        warnings.warn(_FAILED_WARNING, RuntimeWarning, stacklevel=3)
        return
    ess = np.asarray(ess)
    low = np.flatnonzero(~(ess >= MIN_ESS_FRACTION * num_particles))
    if low.size:
        step = int(low[np.argmin(np.nan_to_num(ess[low], nan=0.0))])
        warnings.warn(
            _ESS_COLLAPSE_WARNING.format(
                ess=float(np.nan_to_num(ess[step], nan=0.0)),
                n=num_particles,
                step=step,
                count=low.size,
                fraction=MIN_ESS_FRACTION,
            ),
            RuntimeWarning,
            stacklevel=3,
        )
        return  # a width read off a handful of particles would only add noise
    var = _weighted_variance(np.asarray(result.samples), np.asarray(result.log_weights))
    wide = np.flatnonzero(var > WIDE_TARGET_SD**2 * sigma**2)
    if wide.size:
        worst = int(wide[np.argmax(var[wide])])
        warnings.warn(
            _WIDE_TARGET_WARNING.format(
                count=wide.size, coord=worst, sd=float(np.sqrt(var[worst])), sigma=sigma
            ),
            RuntimeWarning,
            stacklevel=3,
        )


_WIDE_TARGET_WARNING = (
    "PDDS: the weighted particles are wider than 2 sigma in {count} coordinate(s) "
    "(standard deviation {sd:.3g} in coordinate {coord}, sigma = {sigma:.3g}). Where the "
    "target's variance exceeds 2 sigma^2 the weights g_0 = gamma / N(0, sigma^2 I) have "
    "infinite variance under the reference: log_evidence tends to be too low (a Gaussian "
    "mixture at +-3 with sigma = 1 gave -0.5 to -1.1 nats instead of 0) and the mode "
    "proportions can be off. Choose sigma of the order of the target's spread (e.g. the "
    "largest standard deviation reported here); see docs/diffusion.md"
)


_FAILED_WARNING = (
    "PDDS failed: every weight became zero (log_evidence = -inf, failed = True; see "
    "num_nonfinite and num_nonfinite_intermediate for the steps at which the particles "
    "died). The log-density is -inf or NaN wherever the particles went, or the guided "
    "moves overshot and left the float range (too few num_steps for a target much "
    "narrower than the reference N(0, sigma^2 I)); see docs/diffusion.md"
)

_ESS_COLLAPSE_WARNING = (
    "PDDS: the weights degenerated: the ESS fell to {ess:.1f} of {n} particles at step "
    "{step} (below {fraction:.0%} of them at {count} step(s); see res.ess), so "
    "log_evidence and the weighted samples rest on a few particles and can be off by "
    "nats (log Z is then usually too low). Typical causes: a target much narrower than "
    "the reference N(0, sigma^2 I), or much wider than sigma (choose sigma of the "
    "order of its spread); too few num_steps, for which the guided move overshoots "
    "(sigma^2 lambda_k times the curvature of log g_hat above 2); separated modes "
    "(num_mcmc_steps, more particles); or the naive guidance where a learned one is "
    "needed (fit_pdds_potential). See docs/diffusion.md"
)


_NONFINITE_GUIDANCE_WARNING = (
    "PDDS: the intermediate guidance log g_hat_t was -inf, NaN or +inf for {count} live "
    "particle-steps before t = 0 (see num_nonfinite_intermediate). The intermediate "
    "potentials must be positive and finite wherever the target can still be reached; "
    "where they vanish, particles that could still end inside the support are killed and "
    "log_evidence and the samples are biased (e.g. a target with bounded support under "
    "the naive guidance g_0(sqrt(alpha_bar_t) x)). Pass a potential that stays finite, "
    "e.g. potential=lambda t, x: NaivePotential(floored, sigma, schedule)(t, x) with "
    "floored(x) = jnp.maximum(log_density(x), floor) (a plain function, so the last step "
    "still uses log_density exactly), or a potential learned on such a floored density; "
    "see docs/diffusion.md"
)
