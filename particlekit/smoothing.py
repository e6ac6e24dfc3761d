"""Particle smoothing for ``StateSpaceModel``: forward filtering
backward sampling (FFBS) and PaRIS online smoothing of additive functionals.

Both rest on the *backward kernel* of a particle filter,

    Lambda_t(i, j) ∝ W_t^j f_{t+1}(x_{t+1}^i | x_t^j),     j = 1..N,

which picks an ancestor at time ``t`` for a state at time ``t + 1``. Drawing from it costs
``O(N)`` exactly (one row of log-densities and an inverse-CDF draw), or ``O(1)`` on average
by accept–reject: propose ``j ~ W_t`` and accept with probability
``f(x_{t+1}^i | x_t^j) / bound`` where ``bound >= max_j f(x_{t+1}^i | x_t^j)`` (Douc, Garivier,
Moulines & Olsson 2011). Rejection is run for a capped number of rounds; the draws still
pending are then made exactly, so the result is always an exact draw.

The bound is the user's ``log_transition_bound`` (a number, or ``t -> number``) or, when the
transition is a NumPyro ``Normal``, ``MultivariateNormal`` or an ``Independent`` ``Normal``,
the maximum density over the current particle cloud (``max_j`` of
``-log(scale_j) - log(2 pi) / 2`` per dimension), computed automatically; scales may then
depend on the state.

PaRIS (Olsson & Westerborn 2017) estimates ``E[sum_t h_t(x_{t-1}, x_t) | y_{0:t}]`` online
with the per-particle statistics

    tau_0^i = h_0(x_0^i),
    tau_t^i = (1/K) sum_{k=1..K} [tau_{t-1}^{J_ik} + h_t(x_{t-1}^{J_ik}, x_t^i)],
    J_ik ~ Lambda_{t-1}(i, .),

and the estimate ``sum_i W_t^i tau_t^i``; ``K >= 2`` backward draws keep the variance stable
over long horizons at a cost linear in ``N``.
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
from particlekit.backward import (
    PARIS_METHODS,
    BackwardStats,
    backward_indices,
    max_log_density,
    mcmc_backward_indices,
    warn_if_above_bound,
    warn_if_degenerate,
)
from particlekit.backward import categorical as _categorical
from particlekit.backward import check_log_transition_bound as _check_log_transition_bound
from particlekit.backward import check_method as _check_method
from particlekit.backward import check_trials as _check_trials
from particlekit.backward import log_f_rows as _log_f_rows
from particlekit.backward import resolve_bound as _resolve_bound
from particlekit.backward import take as _take
from particlekit.filters import (
    FilterResult,
    finite_per_particle,
    initial_sampler,
    transition_move,
    zero_increment_if_missing,
)
from particlekit.run import progress_bar_callback, resolve_progress_bar
from particlekit.ssm import StateSpaceModel
from particlekit.types import ParticleState, PyTree

__all__ = [
    "ffbs",
    "paris",
    "paris_online",
    "OnlinePaRIS",
    "PaRISState",
    "PaRISInfo",
    "PaRISResult",
    "backward_indices",
    "max_log_density",
]


# --------------------------------------------------------------------------------------
# FFBS
# --------------------------------------------------------------------------------------
def _bound_check(log_transition_bound) -> dict:
    """``backward_indices``' keyword that counts a user bound's violations (none for the
    derived bounds, so that ``bench_backward_revisions`` can swap in older modules)."""
    return {} if log_transition_bound is None else {"count_above_bound": True}


def backward_trajectories(
    key, ssm, particles, log_weights, num_samples, *, method, log_transition_bound, max_trials,
    tick=None, with_count=False, warn_where=None,
):  # fmt: skip
    """FFBS on a stored particle history: ``(num_samples, T, ...)`` trajectories (traced).
    ``tick``: a ``progress_bar_callback`` over the ``T - 1`` backward steps, or None. With
    ``with_count``: ``(trajectories, num_above_bound)``, the accept-reject proposals whose
    acceptance probability exceeded 1 (``BackwardStats``). With ``warn_where`` (a name for
    the message), a ``RuntimeWarning`` after the pass when draws met rows without a positive
    finite transition density (``backward.warn_if_degenerate``)."""
    num_steps, n = log_weights.shape
    k_last, k_back = jax.random.split(key)
    idx_last = _categorical(k_last, log_weights[-1], num_samples)
    x_last = _take(_take(particles, num_steps - 1), idx_last)
    above = degenerate = jnp.zeros((), jnp.int32)
    if num_steps == 1:
        paths = jax.tree.map(lambda a: a[:, None], x_last)
        return (paths, above) if with_count else paths

    def body(carry, inp):
        x_next, above, degenerate = carry
        xs_t, lw_t, t = inp
        bound = _resolve_bound(ssm, xs_t, t + 1, method, log_transition_bound)
        idx, stats = backward_indices(
            jax.random.fold_in(k_back, t), ssm, lw_t, xs_t, x_next, t + 1,
            num_draws=1, log_bound=bound, max_trials=max_trials,
            **_bound_check(log_transition_bound),
        )  # fmt: skip
        above = above + getattr(stats, "num_above_bound", 0)  # (older modules: none)
        degenerate = degenerate + getattr(stats, "num_degenerate", 0)
        x_t = _take(xs_t, idx[:, 0])
        if tick is not None:
            tick(num_steps - 2 - t)  # the backward steps done so far, minus one
        return (x_t, above, degenerate), x_t

    ts = jnp.arange(num_steps - 1, dtype=jnp.int32)
    inputs = (_take(particles, slice(0, num_steps - 1)), log_weights[:-1], ts)
    (_, above, degenerate), xs = jax.lax.scan(
        body, (x_last, above, degenerate), inputs, reverse=True
    )
    if warn_where is not None:
        warn_if_degenerate(degenerate, warn_where)
    out = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), xs, x_last)
    paths = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)
    return (paths, above) if with_count else paths


@partial(
    jax.jit,
    static_argnames=(
        "ssm", "num_samples", "method", "log_transition_bound", "max_trials", "progress_bar",
    ),
)  # fmt: skip
def _ffbs(key, particles, log_weights, *, ssm, num_samples, method, log_transition_bound,
          max_trials, progress_bar):  # fmt: skip
    num_steps = log_weights.shape[0]
    tick = progress_bar_callback(num_steps - 1, desc="ffbs") if progress_bar else None
    paths, above = backward_trajectories(
        key, ssm, particles, log_weights, num_samples,
        method=method, log_transition_bound=log_transition_bound, max_trials=max_trials,
        tick=tick, with_count=True, warn_where="ffbs",
    )  # fmt: skip
    warn_if_above_bound(above, "ffbs", log_transition_bound)
    return paths


def _check_history_matches_model(ssm: StateSpaceModel, filter_result: FilterResult) -> None:
    """A ``ValueError`` when the filter's particles (``(T, N, ...)`` per leaf) are not
    states of ``ssm`` (another model's filter): a NumPyro shape error from deep inside
    the backward pass otherwise."""
    state = jax.eval_shape(lambda k: ssm.initial().sample(k), jax.random.key(0))
    expected = jax.tree.structure(state)
    got = jax.tree.structure(filter_result.particles)
    shapes = [tuple(jnp.shape(a)[2:]) for a in jax.tree.leaves(filter_result.particles)]
    model_shapes = [tuple(a.shape) for a in jax.tree.leaves(state)]
    if got != expected or shapes != model_shapes:
        raise ValueError(
            f"the filter's particles (structure {got}, state shapes {shapes}) are not states "
            f"of this model (structure {expected}, shapes {model_shapes}): pass the model "
            "the filter was run with"
        )


def ffbs(
    key: jax.Array,
    ssm: StateSpaceModel,
    filter_result: FilterResult,
    num_samples: int,
    *,
    method: str = "exact",
    log_transition_bound: float | Callable | None = None,
    max_trials: int = 32,
    progress_bar: bool | None = None,
) -> PyTree:
    """Forward filtering backward sampling: draw trajectories from the particle
    approximation of the joint smoothing law ``p(x_{0:T-1} | y_{0:T-1})``.

    Backward pass: ``x_{T-1} ~ W_{T-1}``, then for ``t = T-2, ..., 0`` the index of
    ``x_t`` is drawn from the backward kernel ``∝ W_t^j f_{t+1}(x_{t+1} | x_t^j)``. Each
    draw costs ``O(N)`` exactly (``method="exact"``) or ``O(1)`` on average by
    accept–reject (``method="rejection"``, needs a bounded transition density).

    Parameters
    ----------
    key : PRNG key
    ssm : StateSpaceModel
        The model the filter was run on.
    filter_result : FilterResult
        Output of a filter of ``particlekit.filters`` run with ``keep_history=True``.
    num_samples : int
        Number ``M`` of trajectories.
    method : {"exact", "rejection", "auto"}
        ``"auto"`` uses rejection when a bound is known and ``N >= 256``, otherwise exact
        draws.
    log_transition_bound : float or callable, optional
        ``log sup f_t`` (a number or a function of ``t``); derived automatically for
        Normal / MultivariateNormal transitions.
    max_trials : int
        Rejection rounds before finishing the pending draws exactly.
    progress_bar : bool, optional
        Show a tqdm bar over the backward pass (about 100 updates); ``None`` (default):
        shown when standard error is a terminal (``particlekit.run.resolve_progress_bar``).

    Returns
    -------
    Array, shape (num_samples, T, ...)
        Smoothing trajectories (unweighted); ``particlekit.arviz.from_trajectories`` puts
        them in an ArviZ ``posterior`` group with dims ``(chain, draw, time, ...)``. All
        NaN when ``filter_result.failed`` is traced and true (an eager call raises).

    Raises
    ------
    ValueError
        If ``filter_result`` has no history or the filter failed (``failed`` true).

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 50)
    >>> res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=200)
    >>> paths = pk.smoothing.ffbs(jax.random.key(2), ssm, res, 100)
    >>> paths.shape
    (100, 50)
    """
    kernels.check_key(key)
    if not isinstance(ssm, StateSpaceModel):
        raise ValueError(f"ssm must be a particlekit.StateSpaceModel, got {type(ssm).__name__}")
    if not isinstance(filter_result, FilterResult) or filter_result.particles is None:
        raise ValueError("ffbs needs a FilterResult computed with keep_history=True")
    if jnp.ndim(filter_result.log_weights) != 2:
        raise ValueError(
            "ffbs needs the history of one filter run, log_weights of shape (T, N); got "
            f"shape {jnp.shape(filter_result.log_weights)} (a jax.vmap batch of runs? call "
            "ffbs under the same jax.vmap)"
        )
    failed = filter_result.failed
    # NumPy: under an outer jit a jnp reduction of a closed-over result is staged (a tracer)
    if not isinstance(failed, jax.core.Tracer) and bool(np.any(np.asarray(failed))):
        raise ValueError(
            "ffbs of a failed filter (filter_result.failed: every weight was zero at some "
            "step, log_evidence is -inf): its weights carry no smoothing law. Check the data "
            "and the observation model"
        )
    _check_history_matches_model(ssm, filter_result)
    num_samples = kernels.check_num_particles(num_samples, "num_samples")
    _check_method(method)
    paths = _ffbs(
        key,
        filter_result.particles,
        filter_result.log_weights,
        ssm=ssm,
        num_samples=num_samples,
        method=method,
        log_transition_bound=_check_log_transition_bound(log_transition_bound),
        max_trials=_check_trials(max_trials),
        progress_bar=resolve_progress_bar(progress_bar),
    )
    if isinstance(failed, jax.core.Tracer):  # traced: NaN paths flag a failed filter
        paths = jax.tree.map(lambda a: _nan_if(jnp.any(failed), a), paths)
    return paths


def _nan_if(flag, a):
    """``a`` set to NaN where ``flag`` (floating arrays; others as they are)."""
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return a
    return jnp.where(flag, jnp.nan, a)


# --------------------------------------------------------------------------------------
# PaRIS
# --------------------------------------------------------------------------------------
class PaRISState(NamedTuple):
    """State of the online PaRIS smoother after observing ``y_{0:t}``.

    Attributes
    ----------
    particle_state : ParticleState
        Filtering population at ``t`` (particles ``(N, ...)``, log-weights ``(N,)``).
    tau : PyTree
        Per-particle statistics ``tau_t^i``, leaves ``(N, ...)``.
    t : Array of shape (), int32
        Current time index.
    log_evidence_compensation : Array of shape ()
        Rounding error of the compensated sum of ``particle_state.log_evidence``
        (``particlekit.kernels.compensated_add``).
    tau_compensation : PyTree
        Low-order parts of the statistics (same structure as ``tau``): ``tau +
        tau_compensation`` is each statistic in double-float arithmetic, so ``tau`` stays
        accurate to its last bit over long horizons.
    """

    particle_state: ParticleState
    tau: PyTree
    t: jax.Array
    log_evidence_compensation: jax.Array = 0.0
    tau_compensation: PyTree = None

    @property
    def estimate(self) -> PyTree:
        """``sum_i W_t^i tau_t^i``, the estimate of ``E[sum_s h_s | y_{0:t}]`` (meaningless
        once ``failed``)."""
        return _weighted_mean(self.particle_state.log_weights, self.tau)

    @property
    def failed(self) -> jax.Array:
        """True once every weight became zero at some step (``log_evidence = -inf``), as
        ``PaRISResult.failed``: the filter then restarts from uniform weights and
        ``estimate`` stays a finite number that estimates nothing."""
        return ~jnp.isfinite(self.particle_state.log_evidence)


class PaRISInfo(NamedTuple):
    """Diagnostics of one PaRIS step (scalars; stacked over time in results)."""

    ess: jax.Array
    resampled: jax.Array
    log_evidence_increment: jax.Array
    num_nonfinite: jax.Array
    mean_trials: jax.Array
    num_exact: jax.Array
    # accept-reject proposals with an acceptance probability above 1 (a bound too small)
    num_above_bound: jax.Array = 0
    # backward draws from rows without a positive finite transition density (uniform)
    num_degenerate: jax.Array = 0
    # particles of positive weight whose statistics tau hold a NaN or an infinity (from
    # additive_fn / initial_fn): the estimate is then not finite
    num_nonfinite_statistics: jax.Array = 0


def count_nonfinite_statistics(log_weights: jax.Array, tau: PyTree) -> jax.Array:
    """The particles of positive weight whose statistics ``tau`` (leaves ``(N, ...)``) hold
    a NaN or an infinity: with any, ``sum_i W^i tau^i`` is not finite (a zero-weight
    particle's statistic is left out of it)."""
    bad = ~finite_per_particle(tau)
    return jnp.sum(bad & (log_weights > -jnp.inf)).astype(jnp.int32)


def warn_if_nonfinite_statistics(counts: jax.Array, where: str) -> None:
    """After a run (also traced: a ``jax.debug.callback``), a ``RuntimeWarning`` when the
    last entry of ``counts`` (``PaRISInfo.num_nonfinite_statistics`` per step) is positive:
    the estimate is NaN or infinite because ``additive_fn`` or ``initial_fn`` was, with the
    first step where a statistic was."""

    def emit(counts):
        counts = np.asarray(counts)
        if counts[-1] > 0:
            warnings.warn(
                f"{where}: additive_fn or initial_fn returned NaN or an infinity: "
                f"{int(counts[-1])} particles of positive weight end with non-finite "
                f"statistics, so the estimate is not finite (the first at step "
                f"t = {int(np.argmax(counts > 0))}). The terms are evaluated at the filter's "
                "particles and their backward draws: guard additive_fn where it is undefined "
                "(e.g. jnp.log of a state that can be negative)",
                RuntimeWarning,
                stacklevel=2,
            )

    jax.debug.callback(emit, counts)


class PaRISResult(NamedTuple):
    """Output of ``paris``.

    Attributes
    ----------
    estimate : PyTree
        Estimate of ``E[sum_{t=0}^{T-1} h_t(x_{t-1}, x_t) | y_{0:T-1}]`` (same structure
        as the output of ``additive_fn``).
    estimates : PyTree
        Online estimates after each observation, leaves ``(T, ...)``.
    tau : PyTree
        Final per-particle statistics, leaves ``(N, ...)``.
    particles : Array of shape (N, ...)
        Final filtering particles.
    log_weights : Array of shape (N,)
        Final filtering log-weights.
    log_evidence : Array of shape ()
        Filter estimate of ``log p(y_{0:T-1})`` (``-inf`` on failure).
    ess, resampled, num_nonfinite : Array of shape (T,)
        Filter diagnostics per step.
    mean_trials : Array of shape (T,)
        Mean rejection proposals per backward draw (0 in exact mode and at ``t = 0``);
        with ``method="mcmc"``, the acceptance rate of the Metropolis–Hastings moves (near
        0: the moves rarely leave the filter's own ancestor, e.g. a very peaked
        transition, and the statistics degenerate as with ``K = 1``).
    num_exact : Array of shape (T,)
        Backward draws made exactly (fallbacks in rejection mode).
    failed : Array of shape (), bool
        True if every weight became zero at some step.
    """

    estimate: PyTree
    estimates: PyTree
    tau: PyTree
    particles: PyTree
    log_weights: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array
    num_nonfinite: jax.Array
    mean_trials: jax.Array
    num_exact: jax.Array
    failed: jax.Array

    def to_inference_data(self, ys=None):
        """The run for ArviZ (``particlekit.arviz.from_paris``): groups ``estimate``
        (``(chain, ...)``), ``online_estimates`` (``(chain, time, ...)``), ``filtering``
        (``ess``, ``resampled``, ``num_nonfinite``, ``mean_trials``, ``num_exact``;
        ``(chain, time)``), ``sample_stats`` (``log_marginal_likelihood``, ``failed``;
        ``(chain,)``), ``weighted_particles`` (final particles, ``log_weight``, the
        statistics ``tau_<name>``; ``(chain, particle, ...)``) and ``observed_data`` (``y``,
        when ``ys`` is given). Functionals are named by their dict keys (a bare array is
        ``S``). A ``jax.vmap`` batch of runs (non-scalar ``log_evidence``) is one chain per
        run.

        Examples
        --------
        >>> import jax, numpyro.distributions as dist, particlekit as pk
        >>> ssm = pk.StateSpaceModel(
        ...     initial=lambda: dist.Normal(0.0, 1.0),
        ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        ...     observation=lambda x, t: dist.Normal(x, 0.5),
        ... )
        >>> _, ys = ssm.simulate(jax.random.key(0), 20)
        >>> res = pk.smoothing.paris(jax.random.key(1), ssm, ys, num_particles=50,
        ...                          additive_fn=lambda xp, x, t: {"sum": x})
        >>> res.to_inference_data(ys)["estimate"]["sum"].dims
        ('chain',)
        """
        from particlekit.arviz import from_paris

        return from_paris(self, ys)


class OnlinePaRIS(NamedTuple):
    """The online PaRIS smoother as a pair of pure functions (see ``paris_online``).

    ``init(key, y0) -> PaRISState`` and ``update(key, state, y) -> (PaRISState,
    PaRISInfo)``; both jit-compilable.
    """

    init: Callable
    update: Callable


def _weighted_mean(log_weights, tree):
    """``sum_i W^i tree^i``; a zero-weight particle (e.g. a NaN state the filter killed,
    whose statistic is NaN) contributes nothing."""
    w = resampling.normalize(log_weights)
    return jax.tree.map(lambda a: resampling.weighted_sum(w, a), tree)


def _float_leaves(tree):
    """Integer and boolean leaves as the default float dtype (a weighted mean of counts or
    indicators is a fraction); floating leaves as they are; complex ones a ValueError."""

    def cast(a):
        try:
            a = jnp.asarray(a)
        except TypeError as err:
            raise ValueError(
                "additive_fn and initial_fn must return a pytree of numeric arrays, got a "
                f"leaf {a!r}: {err}"
            ) from None
        if not (jnp.issubdtype(a.dtype, jnp.number) or a.dtype == jnp.bool_):
            raise ValueError(
                f"additive_fn and initial_fn must return numeric values, got dtype {a.dtype}"
            )
        if jnp.issubdtype(a.dtype, jnp.complexfloating):
            # the estimate kept the real part only (with a ComplexWarning at most)
            raise ValueError(
                f"additive_fn and initial_fn must return real values, got dtype {a.dtype}"
            )
        if jnp.issubdtype(a.dtype, jnp.inexact):
            return a
        return a.astype(jnp.result_type(float))

    return jax.tree.map(cast, tree)


def _h_spec(additive_fn, x, t):
    """Shapes and (floating) dtypes of ``additive_fn``'s output for one pair of states; a
    ``ValueError`` when it returns no array (``None``, an empty container)."""
    spec = jax.eval_shape(lambda a: _float_leaves(additive_fn(a, a, t)), x)
    if not jax.tree.leaves(spec):
        raise ValueError(
            "additive_fn(x_prev, x, t) must return the term h_t of the additive functional: "
            f"a pytree of numeric arrays, got {spec!r} (no array)"
        )
    return spec


def _backward_draw(key, ssm, log_w_prev, prev, x, t, *, with_degenerate=False):
    """One exact draw of ``x``'s parent from the backward kernel
    ``∝ W_{t-1}^j f_t(x | x_{t-1}^j)`` (one row of ``N`` densities): ancestor sampling of
    the reference, and the reference slot's PaRIS draw in conditional SMC. With
    ``with_degenerate``: ``(draw, degenerate)``, the flag true when the row had no finite
    entry (the draw is then uniform; ``BackwardStats.num_degenerate``)."""
    logits = resampling.log_normalize(log_w_prev)[0] + _log_f_rows(ssm, prev, x, t)
    draw = _categorical(key, logits, 1)[0]
    return (draw, ~jnp.any(jnp.isfinite(logits))) if with_degenerate else draw


def _pin_first(particles, ref):
    """``particles`` (leaves ``(N, ...)``) with slot 0 set to ``ref`` (conditional SMC's
    reference), by a select on the slot index rather than ``.at[0].set``: XLA fused the
    update's operand, the moved particles with their unrolled random draws, badly (conditional
    PaRIS's filter part 2.3x slower at ``N = 16384``: 40 against 17 ns per particle-step)."""

    def pin(a, r):
        first = (jnp.arange(a.shape[0]) == 0).reshape((-1,) + (1,) * (a.ndim - 1))
        return jnp.where(first, jnp.asarray(r, a.dtype), a)

    return jax.tree.map(pin, particles, ref)


def _smc_step(
    key, state: ParticleState, y, t, ref_t, *, ssm, scheme, ess_threshold, conditional,
    ancestor_sampling,
):  # fmt: skip
    """One bootstrap-filter step ``t - 1 -> t`` (resample, move, reweight), optionally
    conditional on a reference state ``ref_t`` pinned in slot 0 (conditional SMC), with
    ancestor sampling of the reference's parent (Lindsten, Jordan & Schön 2014). A fully
    missing ``y`` adds exactly 0 to the evidence, as in the filters. ``multinomial`` is
    replaced by ``resampling.unsorted_multinomial`` (same law, quicker; its slots'
    parents are independent, which ``ancestors_are_backward_draws`` relies on)."""
    v = ssm.vectorized
    k_res, k_as, k_move, k_w = jax.random.split(key, 4)
    prev, log_w_prev = state.particles, state.log_weights
    log_evidence_before = state.log_evidence
    if conditional:
        state, info = kernels.resample(resampling.get_conditional_scheme(scheme), 1.0)(k_res, state)
        if ancestor_sampling:
            a0 = _backward_draw(k_as, ssm, log_w_prev, prev, ref_t, t)
            state = state._replace(ancestors=state.ancestors.at[0].set(a0))
    else:
        if resampling.get_scheme(scheme) is resampling.multinomial:
            scheme = resampling.unsorted_multinomial
        state, info = kernels.resample(scheme, ess_threshold)(k_res, state)

    def log_g(x_prev, x, inputs):
        return ssm.observation_log_prob(x, inputs[0], inputs[1])

    state, minfo = transition_move(ssm)(k_move, state, (y, t))
    if conditional:
        state = state._replace(particles=_pin_first(state.particles, ref_t))
    state, winfo = kernels.reweight(log_g, vectorized=v)(k_w, state, (y, t))
    return zero_increment_if_missing(y, log_evidence_before, state, info.merge(minfo).merge(winfo))


def _smc_init(key, ssm, y0, ref0, *, num_particles, conditional):
    """``x_0 ~ initial`` (slot 0 pinned to ``ref0`` if conditional), weighted by ``g_0``."""
    v = ssm.vectorized
    k_init, k_w = jax.random.split(key)
    state = kernels.init(k_init, initial_sampler(ssm), num_particles, vectorized=True)
    if conditional:
        pinned = _pin_first(state.particles, ref0)
        state = state._replace(particles=pinned, previous_particles=pinned)

    def log_g(x_prev, x, inputs):
        return ssm.observation_log_prob(x, inputs[0], inputs[1])

    return kernels.reweight(log_g, vectorized=v)(k_w, state, (y0, jnp.int32(0)))


def _tau_init(state: ParticleState, *, additive_fn, initial_fn, ssm):
    x0 = state.particles
    n = state.log_weights.shape[0]
    spec = _h_spec(additive_fn, _take(x0, 0), jnp.int32(1))
    if initial_fn is None:
        return jax.tree.map(lambda s: jnp.zeros((n,) + s.shape, s.dtype), spec)
    tau0 = _float_leaves(jax.vmap(initial_fn)(x0))
    if jax.tree.structure(tau0) != jax.tree.structure(spec):
        raise ValueError(
            "initial_fn(x0) and additive_fn(x_prev, x, t) must return the same structure "
            f"(the statistics are their sums): got {jax.tree.structure(tau0)} and "
            f"{jax.tree.structure(spec)}"
        )

    def match(a, s):
        # h_0 may be a constant (e.g. 0.0) broadcast to h's shape; the statistic takes the
        # wider of the two float dtypes, so that tau + h keeps its dtype step after step
        shape, own = tuple(s.shape), tuple(a.shape[1:])
        try:
            ok = len(own) <= len(shape) and jnp.broadcast_shapes(own, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"initial_fn(x0) returns a leaf of shape {own} where additive_fn "
                f"returns shape {tuple(s.shape)}: the two terms of the additive functional "
                "must have the same shape"
            )
        a = a.reshape((n,) + (1,) * (len(shape) - len(own)) + own)
        return jnp.broadcast_to(a, (n,) + shape).astype(jnp.promote_types(a.dtype, s.dtype))

    return jax.tree.map(match, tau0, spec)


def ancestors_are_backward_draws(scheme, method: str, conditional: bool) -> bool:
    """Whether PaRIS (and PaRIS particle Gibbs) takes the filter's ancestors as backward
    draws at the steps that resampled: with multinomial resampling and exact or
    accept–reject draws.

    Multinomial resampling draws each particle's parent ``a_i`` from ``W_{t-1}`` and
    then ``x_t^i ~ f_t(. | x_{t-1}^{a_i})``, independently over ``i``. Summing the parents
    out, the positions have density ``prod_i sum_j W_{t-1}^j f_t(x_t^i | x_{t-1}^j)``, so
    given every position (of all times) the parents are independent, each ``a_i`` with law
    ``∝ W_{t-1}^j f_t(x_t^i | x_{t-1}^j)``: the backward kernel itself, and independent of
    the draws PaRIS makes (they use other random numbers and never move a particle). One
    of the ``K`` draws per particle can therefore be the parent, with the same joint law of
    particles and draws as ``K`` independent draws (the remark behind Dau & Chopin 2023's
    MCMC kernel started at the ancestor, and behind AdaSmooth, Mastrototaro, Olsson &
    Alenlöv 2021). With ``K = 1`` PaRIS is then the genealogy-tracing smoother, which
    has the same law. PaRIS resamples with ``resampling.unsorted_multinomial`` when given
    ``multinomial`` (the same law; ``multinomial``'s output is sorted by parent, and
    slower), so that each slot's parent is a draw of its own. A step that did not resample
    (``ess_threshold < 1``) keeps each particle's own parent, which is not a draw: it
    draws all ``K``. Systematic, stratified and residual resampling correlate the parents,
    so there the draws are all made.

    Conditional SMC (``conditional``, PPG) with ``conditional_multinomial`` draws the
    parents of slots ``1..N-1`` the same way (the reference in slot 0 among the previous
    particles), so they are draws too; slot 0's parent is pinned, and it gets an exact
    draw of its own (one row of ``N`` densities). The new reference is drawn by backward
    simulation from the positions alone, so the sweep's joint law is unchanged.

    Examples
    --------
    >>> from particlekit import smoothing
    >>> smoothing.ancestors_are_backward_draws("multinomial", "rejection", conditional=False)
    True
    >>> smoothing.ancestors_are_backward_draws("systematic", "exact", conditional=False)
    False
    """
    multinomial = (resampling.multinomial, resampling.unsorted_multinomial)
    if conditional:  # (conditional SMC takes the base scheme or its conditional version)
        multinomial += (resampling.conditional_multinomial,)
    return method != "mcmc" and resampling.get_scheme(scheme) in multinomial


def _draws_beside_ancestors(key, sample, ancestors, resampled, num_backward: int):
    """``K`` backward indices per particle, the last one the particle's ancestor when the
    step resampled (``ancestors_are_backward_draws``), the others drawn by
    ``sample(key, num_draws) -> (indices (N, num_draws), BackwardStats)``. Returns
    ``(indices (N, K), BackwardStats)``, the stats over the drawn indices. A ``resampled``
    known when tracing (``ess_threshold`` 0 or 1) compiles one branch only."""
    parents = ancestors.astype(jnp.int32)[:, None]

    def with_parents():
        if num_backward == 1:  # nothing drawn
            return parents, _stat_arrays(BackwardStats(0.0, 0, 0, 0))
        idx, stats = sample(key, num_backward - 1)
        return jnp.concatenate([idx.astype(jnp.int32), parents], axis=1), _stat_arrays(stats)

    def all_drawn():
        idx, stats = sample(key, num_backward)
        return idx.astype(jnp.int32), _stat_arrays(stats)

    if not isinstance(resampled, jax.core.Tracer):
        return with_parents() if bool(resampled) else all_drawn()
    return jax.lax.cond(resampled, with_parents, all_drawn)


def _stat_arrays(stats: BackwardStats) -> BackwardStats:
    """``stats`` with every field an array of the default float dtype (``mean_trials``;
    float64 under ``jax_enable_x64``) or int32 (``lax.cond``'s branches must return the
    same types)."""
    return BackwardStats(
        jnp.asarray(stats.mean_trials, jnp.result_type(float)),
        *(jnp.asarray(v, jnp.int32) for v in stats[1:]),
    )


def _tau_update(
    key, tau, prev, log_w_prev, xs, t, *, ssm, additive_fn, num_backward, method,
    log_transition_bound, max_trials, compensation=None, ancestors=None, resampled=None,
):  # fmt: skip
    """PaRIS update (Olsson & Westerborn 2017, Alg. 2): ``K`` backward indices per
    particle, ``tau_t^i = mean_k [tau_{t-1}^{J_ik} + h_t(x_{t-1}^{J_ik}, x_t^i)]``, as
    double-float pairs when ``compensation`` (the pytree of low-order parts) is given.
    ``resampled`` (the step's flag, when ``ancestors_are_backward_draws``): the ancestors
    are one of the ``K`` draws at the steps that resampled. Returns ``(tau, compensation,
    stats)``."""
    if method == "mcmc":
        idx, stats = mcmc_backward_indices(
            key, ssm, log_w_prev, prev, xs, ancestors, t, num_draws=num_backward
        )
    else:
        bound = _resolve_bound(ssm, prev, t, method, log_transition_bound)

        def sample(k, num_draws):
            return backward_indices(
                k, ssm, log_w_prev, prev, xs, t,
                num_draws=num_draws, log_bound=bound, max_trials=max_trials,
                **_bound_check(log_transition_bound),
            )  # fmt: skip

        if resampled is None:
            idx, stats = sample(key, num_backward)
        else:
            idx, stats = _draws_beside_ancestors(key, sample, ancestors, resampled, num_backward)
    x_back = _take(prev, idx)  # (N, K, ...)
    h = jax.vmap(lambda xb, x: jax.vmap(lambda a: _float_leaves(additive_fn(a, x, t)))(xb))(
        x_back, xs
    )
    h = jax.tree.map(lambda old, hk: hk.astype(old.dtype), tau, h)  # (tau: the wider dtype)
    if compensation is None:
        new_tau = jax.tree.map(lambda old, hk: jnp.mean(old[idx] + hk, axis=1), tau, h)
        return new_tau, None, stats
    new = jax.tree.map(
        lambda old, c, hk: _compensated_backward_mean(old[idx], c[idx], hk), tau, compensation, h
    )
    new_tau, new_compensation = jax.tree.transpose(
        jax.tree.structure(tau), jax.tree.structure((0, 0)), new
    )
    return new_tau, new_compensation, stats


def _two_sum(a, b):
    """``a + b = s + e`` exactly in floating point (Knuth's TwoSum, branch-free)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def _add_to_pair(hi, lo, x):
    """``(hi + lo) + x`` as a renormalised pair ``hi + lo`` (double-float addition)."""
    s, e = _two_sum(hi, x)
    lo = lo + e
    hi = s + lo
    return hi, lo - (hi - s)


def _compensated_backward_mean(tau_back, low_back, h):
    """``mean_k (tau_back[:, k] + h[:, k])`` in double-float arithmetic: each statistic is
    carried as a pair ``tau + low`` (``low`` below tau's last bit), so that adding the
    small terms ``h`` to the large running sums step after step does not lose their
    low-order bits (plain float32 drifts by 1e-4 relative over 1e5 steps). Kahan's
    compensation does not survive the sum of two large terms of the backward mean, TwoSum
    does. Returns the pair ``(mean, low)``."""
    num_backward = tau_back.shape[1]
    hi, lo = _add_to_pair(tau_back[:, 0], low_back[:, 0], h[:, 0])
    for k in range(1, num_backward):
        hi, lo = _add_to_pair(hi, lo + low_back[:, k], tau_back[:, k])
        hi, lo = _add_to_pair(hi, lo, h[:, k])
    return hi / num_backward, lo / num_backward


def _paris_config(ssm, additive_fn, initial_fn, num_particles, num_backward, resampling_,
                  ess_threshold, method, log_transition_bound, max_trials):  # fmt: skip
    if not isinstance(ssm, StateSpaceModel):
        raise ValueError(f"ssm must be a particlekit.StateSpaceModel, got {type(ssm).__name__}")
    if not callable(additive_fn):
        raise ValueError("additive_fn must be a function h(x_prev, x, t) -> PyTree")
    if initial_fn is not None and not callable(initial_fn):
        raise ValueError("initial_fn must be a function h_0(x_0) -> PyTree or None")
    kernels.check_num_particles(num_particles)
    kernels.check_num_particles(num_backward, "num_backward")
    _check_method(method, PARIS_METHODS)
    ess_threshold = kernels.check_ess_threshold(ess_threshold)
    return dict(
        ssm=ssm,
        additive_fn=additive_fn,
        initial_fn=initial_fn,
        num_particles=int(num_particles),
        num_backward=int(num_backward),
        scheme=resampling.get_scheme(resampling_),
        ess_threshold=float(ess_threshold),
        method=method,
        log_transition_bound=_check_log_transition_bound(log_transition_bound),
        max_trials=_check_trials(max_trials),
    )


def paris_init_state(key, y0, ref0=None, *, cfg, conditional=False):
    """Traced PaRIS initialisation (used by ``paris`` and particle Gibbs)."""
    state, info = _smc_init(
        key, cfg["ssm"], y0, ref0, num_particles=cfg["num_particles"], conditional=conditional
    )
    tau = _tau_init(
        state, additive_fn=cfg["additive_fn"], initial_fn=cfg["initial_fn"], ssm=cfg["ssm"]
    )
    pinfo = PaRISInfo(
        ess=info.ess,
        resampled=info.resampled,
        log_evidence_increment=info.log_evidence_increment,
        num_nonfinite=info.num_nonfinite,
        mean_trials=jnp.zeros(()),
        num_exact=jnp.zeros((), jnp.int32),
        num_above_bound=jnp.zeros((), jnp.int32),
        num_degenerate=jnp.zeros((), jnp.int32),
        num_nonfinite_statistics=count_nonfinite_statistics(state.log_weights, tau),
    )
    compensation = jnp.zeros_like(state.log_evidence)
    tau_compensation = jax.tree.map(jnp.zeros_like, tau)
    return (
        PaRISState(state, tau, jnp.zeros((), jnp.int32), compensation, tau_compensation),
        pinfo,
    )


def paris_update_state(
    key, pstate: PaRISState, y, ref_t=None, *, cfg, conditional=False, ancestor_sampling=False
):
    """Traced PaRIS step ``t - 1 -> t`` (used by ``paris`` and particle Gibbs)."""
    k_step, k_back = jax.random.split(key)
    t = pstate.t + 1
    old = pstate.particle_state
    with_ancestors = ancestors_are_backward_draws(cfg["scheme"], cfg["method"], conditional)
    state, info = _smc_step(
        k_step, old, y, t, ref_t, ssm=cfg["ssm"], scheme=cfg["scheme"],
        ess_threshold=cfg["ess_threshold"], conditional=conditional,
        ancestor_sampling=ancestor_sampling,
    )  # fmt: skip
    parents = state.ancestors
    if with_ancestors and conditional:
        # the reference's parent is pinned (or drawn by ancestor sampling, for the
        # reference path): slot 0 gets an exact backward draw of its own
        k_back, k_ref = jax.random.split(k_back)
        ref_draw, ref_degenerate = _backward_draw(
            k_ref, cfg["ssm"], old.log_weights, old.particles, _take(state.particles, 0), t,
            with_degenerate=True,
        )  # fmt: skip
        parents = parents.at[0].set(ref_draw)
    tau, tau_compensation, stats = _tau_update(
        k_back, pstate.tau, old.particles, old.log_weights, state.particles, t,
        ssm=cfg["ssm"], additive_fn=cfg["additive_fn"], num_backward=cfg["num_backward"],
        method=cfg["method"], log_transition_bound=cfg["log_transition_bound"],
        max_trials=cfg["max_trials"], compensation=pstate.tau_compensation,
        ancestors=parents, resampled=info.resampled if with_ancestors else None,
    )  # fmt: skip
    if with_ancestors and conditional:  # (conditional SMC resamples at every step)
        stats = stats._replace(num_exact=stats.num_exact + 1)
        if cfg["num_backward"] == 1:  # (with K > 1 the sampler drew slot 0 from its row too)
            stats = stats._replace(num_degenerate=stats.num_degenerate + ref_degenerate)
    pinfo = PaRISInfo(
        ess=info.ess,
        resampled=info.resampled,
        log_evidence_increment=info.log_evidence_increment,
        num_nonfinite=info.num_nonfinite,
        mean_trials=stats.mean_trials,
        num_exact=stats.num_exact,
        # (getattr: bench_backward_revisions swaps in older modules without the field)
        num_above_bound=jnp.asarray(getattr(stats, "num_above_bound", 0), jnp.int32),
        num_degenerate=jnp.asarray(getattr(stats, "num_degenerate", 0), jnp.int32),
        num_nonfinite_statistics=count_nonfinite_statistics(state.log_weights, tau),
    )
    # the evidence as a compensated sum of the increments (plain float32 drifts over 1e5 steps)
    log_evidence, compensation = kernels.compensated_add(
        old.log_evidence, pstate.log_evidence_compensation, info.log_evidence_increment
    )
    state = state._replace(log_evidence=log_evidence)
    return PaRISState(state, tau, t, compensation, tau_compensation), pinfo


def paris_online(
    ssm: StateSpaceModel,
    *,
    additive_fn: Callable,
    num_particles: int,
    num_backward: int = 2,
    initial_fn: Callable | None = None,
    resampling="multinomial",
    ess_threshold: float = 1.0,
    method: str = "auto",
    log_transition_bound: float | Callable | None = None,
    max_trials: int = 32,
) -> OnlinePaRIS:
    """The PaRIS smoother as an online algorithm: one observation at a time.

    Parameters are those of ``paris``. Returns an ``OnlinePaRIS`` with
    ``init(key, y0) -> PaRISState`` and ``update(key, state, y_t) -> (PaRISState,
    PaRISInfo)`` (both jitted); ``state.estimate`` is the current estimate of
    ``E[sum_{s<=t} h_s | y_{0:t}]``.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 20)
    >>> smoother = pk.smoothing.paris_online(
    ...     ssm, additive_fn=lambda xp, x, t: x, initial_fn=lambda x: x, num_particles=100)
    >>> state = smoother.init(jax.random.key(1), ys[0])
    >>> for t in range(1, 20):
    ...     state, info = smoother.update(jax.random.fold_in(jax.random.key(2), t), state, ys[t])
    >>> state.estimate.shape
    ()
    """
    cfg = _paris_config(ssm, additive_fn, initial_fn, num_particles, num_backward, resampling,
                        ess_threshold, method, log_transition_bound, max_trials)  # fmt: skip

    @jax.jit
    def init(key, y0):
        kernels.check_key(key)  # at trace time (dtype and shape)
        return paris_init_state(key, jnp.asarray(y0), cfg=cfg)[0]

    @jax.jit
    def update(key, state, y):
        kernels.check_key(key)
        if not isinstance(state, PaRISState):
            raise ValueError(
                "update(key, state, y) needs the PaRISState returned by init or by the "
                f"previous update, got {type(state).__name__} (update returns a pair "
                "(state, info))"
            )
        return paris_update_state(key, state, jnp.asarray(y), cfg=cfg)

    return OnlinePaRIS(init=init, update=update)


def paris_forward(key, ys, refs=None, *, cfg, conditional=False, ancestor_sampling=False,
                  keep_history=False, tick=None):  # fmt: skip
    """Run PaRIS over the whole sequence (traced). Returns the final PaRISState, the
    stacked PaRISInfo (T,), the online estimates (T, ...) and, with ``keep_history``, the
    particle history ``(particles (T, N, ...), log_weights (T, N))``. ``tick``: a
    ``progress_bar_callback`` over the ``T - 1`` steps, or None."""
    num_steps = ys.shape[0]
    k0, k_run = jax.random.split(key)
    ref0 = None if refs is None else _take(refs, 0)
    pstate, info0 = paris_init_state(k0, ys[0], ref0, cfg=cfg, conditional=conditional)
    first = (pstate.particle_state.particles, pstate.particle_state.log_weights)

    def body(carry, inp):
        ps = carry
        t, y, r = inp
        ps, inf = paris_update_state(
            jax.random.fold_in(k_run, t), ps, y, r, cfg=cfg, conditional=conditional,
            ancestor_sampling=ancestor_sampling,
        )  # fmt: skip
        if tick is not None:
            tick(t - 1)
        hist = (ps.particle_state.particles, ps.particle_state.log_weights)
        return ps, (inf, ps.estimate, hist if keep_history else None)

    ts = jnp.arange(1, num_steps, dtype=jnp.int32)
    ref_rest = None if refs is None else _take(refs, slice(1, None))
    final, (infos, ests, hist) = jax.lax.scan(body, pstate, (ts, ys[1:], ref_rest))

    def cat(a, b):
        return jnp.concatenate([jnp.asarray(a)[None], b])

    infos = jax.tree.map(cat, info0, infos)
    ests = jax.tree.map(cat, pstate.estimate, ests)
    history = None
    if keep_history:
        history = jax.tree.map(cat, first, hist)
    return final, infos, ests, history


@partial(jax.jit, static_argnames=("cfg_items", "progress_bar"))
def _paris(key, ys, *, cfg_items, progress_bar):
    cfg = dict(cfg_items)
    tick = progress_bar_callback(ys.shape[0] - 1, desc="paris") if progress_bar else None
    final, infos, ests, _ = paris_forward(key, ys, cfg=cfg, tick=tick)
    ps = final.particle_state
    log_evidence = ps.log_evidence
    failed = ~jnp.isfinite(log_evidence)
    warn_if_above_bound(jnp.sum(infos.num_above_bound), "paris", cfg["log_transition_bound"])
    warn_if_degenerate(jnp.sum(infos.num_degenerate), "paris")
    warn_if_nonfinite_statistics(infos.num_nonfinite_statistics, "paris")
    return PaRISResult(
        estimate=final.estimate,
        estimates=ests,
        tau=final.tau,
        particles=ps.particles,
        log_weights=ps.log_weights,
        log_evidence=kernels.reported_log_evidence(log_evidence),
        ess=infos.ess,
        resampled=infos.resampled,
        num_nonfinite=infos.num_nonfinite,
        mean_trials=infos.mean_trials,
        num_exact=infos.num_exact,
        failed=failed,
    )


def _freeze(cfg: dict):
    return tuple(sorted(cfg.items()))


def paris(
    key: jax.Array,
    ssm: StateSpaceModel,
    ys,
    *,
    additive_fn: Callable,
    num_particles: int,
    num_backward: int = 2,
    initial_fn: Callable | None = None,
    resampling="multinomial",
    ess_threshold: float = 1.0,
    method: str = "auto",
    log_transition_bound: float | Callable | None = None,
    max_trials: int = 32,
    progress_bar: bool | None = None,
) -> PaRISResult:
    """PaRIS: online smoothing of an additive functional (Olsson & Westerborn 2017).

    Estimates ``E[S_T | y_{0:T-1}]`` for ``S_T = h_0(x_0) + sum_{t=1}^{T-1} h_t(x_{t-1},
    x_t)`` with a bootstrap filter (Feynman–Kac model ``M_t = f_t``, ``G_t = g_t``) and
    per-particle statistics ``tau_t^i = (1/K) sum_k [tau_{t-1}^{J_ik} +
    h_t(x_{t-1}^{J_ik}, x_t^i)]``, the indices ``J_ik`` drawn from the backward kernel
    ``∝ W_{t-1}^j f_t(x_t^i | x_{t-1}^j)``. The estimate is ``sum_i W_{T-1}^i tau^i``.

    Parameters
    ----------
    key : PRNG key
    ssm : StateSpaceModel
    ys : Array of shape (T, ...)
        Observations (NaN rows are missing).
    additive_fn : callable
        ``h(x_prev, x, t) -> PyTree`` for one pair of states, ``t >= 1``. Several
        functionals at once: return a dict / tuple of arrays. Integer and boolean terms
        (counts, indicators) are averaged as floats.
    num_particles : int
        ``N``.
    num_backward : int
        ``K`` backward draws per particle per step (2 is the usual choice).
    initial_fn : callable, optional
        ``h_0(x_0) -> PyTree``, the term at ``t = 0`` (default: zero), of the same
        structure as ``h``'s output; each leaf broadcasts to the shape of ``h``'s (e.g.
        ``lambda x: 0.0``).
    resampling : str or callable
        Resampling scheme of the filter. With ``"multinomial"`` (the default; or
        ``"unsorted_multinomial"``) each particle's parent is one of its ``K`` backward
        draws at the steps that resampled, the same law as drawing it
        (``ancestors_are_backward_draws``): half the backward work with ``K = 2`` when
        every step resamples.
    ess_threshold : float
        Resample when ``ESS < ess_threshold * N``; the default ``1.0`` resamples at every
        step (the filters' default is 0.5). PaRIS's defaults differ from the filters':
        on the linear Gaussian benchmark (``benchmarks/bench_smoothing.py``, sections 4
        and 5) multinomial resampling at every step was 1.2-1.6x quicker than systematic
        resampling at ESS 0.5 (``N = 1024 ... 16384``) and its mean squared error lower
        (11.5 against 14.7 at ``N = 1024``, 2.7 against 5.7 at ``N = 4096``).
    method : {"auto", "rejection", "exact", "mcmc"}
        Backward draws by accept–reject against a density bound (average cost linear in
        ``N``) or exactly (``O(N^2)``). ``"auto"``: rejection when a bound is known or
        derivable and ``N >= 256``, exact otherwise. ``"mcmc"``: the ancestor moved by
        ``backward.MCMC_STEPS`` independent Metropolis–Hastings steps on the backward
        kernel (Dau & Chopin 2023): consistent rather than exact draws, at a fixed cost of
        a few transition densities per draw and no bound needed; the fastest for large
        ``N`` (see the Smoothing page).
    log_transition_bound : float or callable, optional
        ``log sup f_t`` (number or function of ``t``); derived automatically for Normal /
        MultivariateNormal transitions.
    max_trials : int
        Rejection rounds before the pending draws are made exactly.
    progress_bar : bool, optional
        Show a tqdm bar over the time steps (about 100 updates per run); ``None``
        (default): shown when standard error is a terminal
        (``particlekit.run.resolve_progress_bar``).

    Returns
    -------
    PaRISResult
        ``.to_inference_data()`` gives an ArviZ object.

    Examples
    --------
    Smoothed ``E[sum_t x_t | y]`` and ``E[sum_t x_{t-1} x_t | y]`` together:

    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 50)
    >>> h = lambda xp, x, t: {"sum": x, "cross": xp * x}
    >>> res = pk.smoothing.paris(jax.random.key(1), ssm, ys, additive_fn=h,
    ...                          initial_fn=lambda x: {"sum": x, "cross": 0.0 * x},
    ...                          num_particles=500)
    >>> sorted(res.estimate)
    ['cross', 'sum']
    """
    kernels.check_key(key)
    cfg = _paris_config(ssm, additive_fn, initial_fn, num_particles, num_backward, resampling,
                        ess_threshold, method, log_transition_bound, max_trials)  # fmt: skip
    ys = ssm.validate(ys, num_particles)
    return _paris(key, ys, cfg_items=_freeze(cfg), progress_bar=resolve_progress_bar(progress_bar))
