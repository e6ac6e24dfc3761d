"""Particle filters for ``StateSpaceModel``: bootstrap, guided and
auxiliary. Each is a short recipe over the engine (``init``, ``reweight``, ``resample``,
``move``, ``chain``, ``run``).

Time runs over ``t = 0, ..., T - 1``. At ``t = 0`` particles are drawn from the initial law
(or an initial proposal) and weighted by the observation density; at ``t >= 1`` the
population is resampled when its ESS falls below ``ess_threshold * N``, moved, and
reweighted. A ``NaN`` in ``ys[t]`` marks a missing observation: that step is not weighted.
A vector ``y_t`` with only some coordinates NaN (partly missing) is a ``ValueError`` before
tracing; under ``jit`` / ``vmap``, where the data cannot be inspected, it gives every particle
zero weight at that step, counted in ``num_nonfinite``, and the result reports
``failed=True`` (see ``particlekit.ssm.is_partly_missing``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution

from particlekit import batched_laws, kernels, resampling
from particlekit.run import check_sharding, constrain_particles, run
from particlekit.ssm import StateSpaceModel, check_no_batch_shape, is_missing
from particlekit.types import ParticleState, PyTree, RunTrace, StepInfo

__all__ = ["FilterResult", "bootstrap", "guided", "auxiliary"]

_get_scheme = resampling.get_scheme


class FilterResult(NamedTuple):
    """Output of a particle filter.

    Attributes
    ----------
    log_evidence : Array of shape ()
        Estimate of ``log p(y_{0:T-1})``; ``-inf`` if the data are impossible.
    log_evidence_increments : Array of shape (T,)
        Estimates of ``log p(y_t | y_{0:t-1})``.
    ess : Array of shape (T,)
        ESS of the filtering weights at each step.
    resampled : Array of shape (T,), bool
        Whether step ``t`` resampled (before moving); False at ``t = 0``.
    particles : PyTree or None
        Filtering particles, leaves ``(T, N, ...)``; None with ``keep_history=False``.
    log_weights : Array or None
        Filtering log-weights ``(T, N)``.
    ancestors : Array or None
        ``(T, N)`` int32; ``ancestors[t, i]`` indexes the population at ``t - 1``.
    num_nonfinite : Array of shape (T,)
        Particles whose log-weight was NaN or ``+inf`` (counted as zero weight).
    failed : Array of shape (), bool
        True if every weight became zero at some step (then ``log_evidence = -inf``).
    final_state : ParticleState
        The population at ``T - 1``.
    """

    log_evidence: jax.Array
    log_evidence_increments: jax.Array
    ess: jax.Array
    resampled: jax.Array
    particles: PyTree
    log_weights: jax.Array | None
    ancestors: jax.Array | None
    num_nonfinite: jax.Array
    failed: jax.Array
    final_state: ParticleState

    def filtering_mean(self, fn: Callable = lambda x: x) -> PyTree:
        """Weighted filtering expectations ``E[fn(x_t) | y_{0:t}]`` for every ``t``.

        ``fn`` acts on one particle; the result has leading axis ``T``. Particles of zero
        weight do not contribute, even where they are NaN or infinite (a model whose
        transition drew a non-finite state: the filter gave it zero weight).
        """
        if self.particles is None:
            raise ValueError("filtering_mean needs the history: run with keep_history=True")
        weights = jax.vmap(resampling.normalize)(self.log_weights)
        values = jax.vmap(jax.vmap(fn))(self.particles)
        return jax.tree.map(lambda v: jax.vmap(resampling.weighted_sum)(weights, v), values)

    def filtering_variance(self, fn: Callable = lambda x: x) -> PyTree:
        """Weighted filtering variances ``Var[fn(x_t) | y_{0:t}]`` (elementwise)."""
        mean = self.filtering_mean(fn)
        second = self.filtering_mean(lambda x: jax.tree.map(jnp.square, fn(x)))
        return jax.tree.map(lambda m2, m: m2 - m**2, second, mean)

    def to_inference_data(self, ys=None):
        """The run for ArviZ (``particlekit.arviz.from_filter``): groups ``filtering``
        (filtering mean and variance of the state, ``ess``, ``log_evidence_increment``,
        ``resampled``, ``num_nonfinite``; dims ``(chain, time, ...)``), ``sample_stats``
        (``log_marginal_likelihood``, ``failed``; ``(chain,)``), ``weighted_particles``
        (the final population and normalised ``log_weight``; ``(chain, particle, ...)``)
        and ``observed_data`` (``y``, when ``ys`` is given). An ``InferenceData`` with
        arviz < 1, an ``xarray.DataTree`` with arviz >= 1.

        One run is one chain. A batch of runs made with ``jax.vmap`` (a leading axis on
        every array, so ``log_evidence`` is not a scalar) is one chain per run.

        Examples
        --------
        >>> import jax, numpyro.distributions as dist, particlekit as pk
        >>> ssm = pk.StateSpaceModel(
        ...     initial=lambda: dist.Normal(0.0, 1.0),
        ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        ...     observation=lambda x, t: dist.Normal(x, 0.5),
        ... )
        >>> _, ys = ssm.simulate(jax.random.key(0), 20)
        >>> runs = jax.vmap(
        ...     lambda k: pk.filters.bootstrap(k, ssm, ys, num_particles=100)
        ... )(jax.random.split(jax.random.key(1), 3))
        >>> runs.to_inference_data(ys)["filtering"]["x_mean"].shape
        (3, 20)
        """
        from particlekit.arviz import from_filter

        return from_filter(self, ys)


# ------------------------------------------------------------------------------ helpers


def _observation_term(ssm: StateSpaceModel):
    def log_g(x_prev, x, inputs):
        y, t = inputs
        return ssm.observation_log_prob(x, y, t)

    return log_g


def _assemble(first: ParticleState, info0: StepInfo, final, trace, keep_history) -> FilterResult:
    def cat(a, b):
        return jnp.concatenate([jnp.asarray(a)[None], b])

    increments = cat(info0.log_evidence_increment, trace.info.log_evidence_increment)
    log_evidence = final.log_evidence
    failed = ~jnp.isfinite(log_evidence)
    log_evidence = kernels.reported_log_evidence(log_evidence)
    if keep_history:
        hist = trace.history
        particles = jax.tree.map(cat, first.particles, hist.particles)
        log_weights = cat(first.log_weights, hist.log_weights)
        ancestors = cat(first.ancestors, hist.ancestors)
    else:
        particles = log_weights = ancestors = None
    return FilterResult(
        log_evidence=log_evidence,
        log_evidence_increments=increments,
        ess=cat(info0.ess, trace.info.ess),
        resampled=cat(jnp.asarray(False), trace.info.resampled),
        particles=particles,
        log_weights=log_weights,
        ancestors=ancestors,
        num_nonfinite=cat(info0.num_nonfinite, trace.info.num_nonfinite),
        failed=failed,
        final_state=final,
    )


def _filter(
    key,
    ys,
    *,
    num_particles,
    init_sample,
    init_log_weight,
    step,
    keep_history,
    progress_bar,
    sharding,
    vectorized,
    batch_size=None,
):
    """The shared skeleton: weight ``t = 0``, then ``run`` over ``t = 1..T-1``.
    ``init_sample(key, N)`` draws the initial population at once (``initial_sampler``)."""
    key_init, key_w0, key_run = jax.random.split(key, 3)
    ts = jnp.arange(ys.shape[0], dtype=jnp.int32)
    state = kernels.init(key_init, init_sample, num_particles, vectorized=True)
    state = constrain_particles(state, sharding)
    y0 = jax.tree.map(lambda a: a[0], ys)
    state, info0 = kernels.reweight(init_log_weight, vectorized=vectorized, batch_size=batch_size)(
        key_w0, state, (y0, ts[0])
    )
    inputs = (ys[1:], ts[1:])
    if ys.shape[0] == 1:
        empty = jax.tree.map(lambda a: a[None], info0)
        trace_info = jax.tree.map(lambda a: a[:0], empty)
        hist = jax.tree.map(lambda a: a[None][:0], state) if keep_history else None
        trace = RunTrace(info=trace_info, log_evidence=trace_info.ess, history=hist)
        return _assemble(state, info0, state, trace, keep_history)
    final, trace = run(
        key_run,
        skipping_missing(step),
        state,
        inputs,
        keep_history=keep_history,
        progress_bar=progress_bar,
        sharding=sharding,
    )
    return _assemble(state, info0, final, trace, keep_history)


def skipping_missing(step):
    """``step`` with an evidence increment of exactly 0 at a fully missing ``y_t`` (every
    coordinate NaN), where every potential is 1: computed, ``log sum_i W_i`` misses 0 by
    the float32 rounding of the normalised weights' sum (an ulp, 1e-7). A non-finite
    increment (every particle dead) is kept: a failure stays reported."""

    def skipping(key, state: ParticleState, inputs):
        new, info = step(key, state, inputs)
        return zero_increment_if_missing(inputs[0], state.log_evidence, new, info)

    return skipping


def zero_increment_if_missing(y, log_evidence_before, new: ParticleState, info):
    """``(new, info)`` of a step at ``y`` with the increment exactly 0 and the evidence
    left at ``log_evidence_before`` where ``y`` is fully missing and the increment finite
    (``skipping_missing``; conditional SMC's step calls it directly)."""
    skip = is_missing(y) & jnp.isfinite(info.log_evidence_increment)
    increment = jnp.where(skip, 0.0, info.log_evidence_increment)
    log_evidence = jnp.where(skip, log_evidence_before, new.log_evidence)
    return new._replace(log_evidence=log_evidence), info._replace(
        log_evidence_increment=increment.astype(info.log_evidence_increment.dtype)
    )


def initial_sampler(ssm: StateSpaceModel):
    """``sample(key, N)``: the ``N`` initial particles of ``ssm`` as one draw of its initial
    law (``batched_laws.sample_iid``), vectorized model or not, for
    ``kernels.init(..., vectorized=True)``."""
    return lambda key, num: batched_laws.sample_iid(key, ssm.initial(), num)


HISTORY_LIMIT_BYTES = 2**30
"""With ``keep_history=None`` (the default) the filters keep the history only if it needs at
most this many bytes (1 GiB): particles, log-weights and ancestors of every step."""


def resolve_keep_history(keep_history, ssm: StateSpaceModel, ys, num_particles: int) -> bool:
    """``keep_history`` as given, or for ``None`` whether the history of ``T`` steps of
    ``num_particles`` particles fits in ``HISTORY_LIMIT_BYTES``; a ``UserWarning`` says so
    when it is turned off."""
    if keep_history is not None:
        return kernels.check_flag(keep_history, "keep_history")
    one = jax.eval_shape(lambda k: ssm.sample_initial(k), jax.random.key(0))
    per_particle = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(one))
    num_steps = jax.tree.leaves(ys)[0].shape[0]
    needed = num_steps * num_particles * (per_particle + 8)  # + log-weight and ancestor
    if needed <= HISTORY_LIMIT_BYTES:
        return True
    warnings.warn(
        f"the history of {num_steps} steps x {num_particles} particles would need "
        f"{needed / 2**30:.1f} GiB (more than {HISTORY_LIMIT_BYTES / 2**30:.0f} GiB), so it is "
        "not kept: particles, log_weights and ancestors are None. Pass keep_history=True to "
        "keep it anyway, or keep_history=False to silence this",
        UserWarning,
        stacklevel=3,
    )
    return False


def _probe_inputs(ssm: StateSpaceModel, ys):
    """Abstract ``(x_prev, y, t)`` of one particle (a batch of one if ``ssm.vectorized``),
    as the proposals see them, and the shape of one state (``None`` for a pytree state,
    e.g. a dict, whose law's shapes are not checked)."""
    state = jax.eval_shape(lambda k: ssm.sample_initial(k), jax.random.key(0))
    lead = (1,) if ssm.vectorized else ()
    x_prev = jax.tree.map(lambda a: jax.ShapeDtypeStruct(lead + tuple(a.shape), a.dtype), state)
    y = jax.ShapeDtypeStruct(tuple(ys.shape[1:]), ys.dtype)
    t = jax.ShapeDtypeStruct((), jnp.int32)
    state_shape = tuple(state.shape) if isinstance(state, jax.ShapeDtypeStruct) else None
    return (x_prev, y, t), state_shape


def _describe(value) -> str:
    """What a user callable returned, for an error message."""
    if isinstance(value, jax.Array | np.ndarray):
        return f"an array of shape {tuple(value.shape)}"
    return type(value).__name__


def _check_law_of_state(law, what: str, state_shape: tuple, lead: tuple, example: str) -> None:
    """A ``ValueError`` unless ``law`` (what a user callable ``what`` returned) is a NumPyro
    distribution of one state: samples of shape ``lead + state_shape`` and, for a
    per-particle model (``lead == ()``), batch shape ``()`` (a scalar ``log_prob``); for a
    pytree state (``state_shape`` None) the type only."""
    if not isinstance(law, Distribution):
        raise ValueError(
            f"{what} must return a numpyro.distributions.Distribution of x_t, got "
            f"{_describe(law)}; e.g. `{example}`"
        )
    if state_shape is None:
        return
    got = tuple(law.batch_shape) + tuple(law.event_shape)
    if got != lead + state_shape:
        raise ValueError(
            f"{what} returned {type(law).__name__} with samples of shape {got} "
            f"(batch {tuple(law.batch_shape)} + event {tuple(law.event_shape)}); the state "
            f"x_t has shape {state_shape}, so expected {lead + state_shape}"
        )
    if not lead:
        check_no_batch_shape({what: tuple(law.batch_shape)})


def _check_proposals(ssm: StateSpaceModel, ys, proposal=None, initial_proposal=None) -> None:
    """Trace ``proposal(x_prev, y, t)`` and ``initial_proposal(y0)`` abstractly on one
    particle (``jax.eval_shape``: nothing is computed) and raise a ``ValueError`` before
    tracing the filter if one does not return a NumPyro distribution of one state."""
    (x_prev, y, t), state_shape = _probe_inputs(ssm, ys)
    lead = (1,) if ssm.vectorized else ()
    if proposal is not None:
        jax.eval_shape(
            lambda xp, y, t: _check_law_of_state(
                proposal(xp, y, t), "proposal(x_prev, y, t)", state_shape, lead,
                "lambda x_prev, y, t: dist.Normal(0.9 * x_prev, 1.0)",
            ),
            x_prev, y, t,
        )  # fmt: skip
    if initial_proposal is not None:
        if not callable(initial_proposal):
            raise ValueError("initial_proposal must be a function y0 -> Distribution")
        jax.eval_shape(
            lambda y: _check_law_of_state(
                initial_proposal(y), "initial_proposal(y0)", state_shape, (),
                "lambda y0: dist.Normal(y0, 1.0)",
            ),
            y,
        )  # fmt: skip


def _check_log_predictive(ssm: StateSpaceModel, ys, log_predictive) -> None:
    """Trace ``log_predictive(x_prev, y, t)`` abstractly on one particle and raise a
    ``ValueError`` before tracing the filter unless it returns a real scalar (a batch of one
    if ``ssm.vectorized``): a log-weight, not a distribution."""
    (x_prev, y, t), _ = _probe_inputs(ssm, ys)
    expected = (1,) if ssm.vectorized else ()

    def probe(xp, y, t):
        value = log_predictive(xp, y, t)
        if isinstance(value, Distribution):
            raise ValueError(
                "log_predictive(x_prev, y, t) must return a log-weight (a real scalar per "
                f"particle), got a {type(value).__name__} distribution; return its log "
                "density of y, e.g. `dist.Normal(0.9 * x_prev, 1.2).log_prob(y)`"
            )
        try:
            value = jnp.asarray(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                "log_predictive(x_prev, y, t) must return a log-weight (a real scalar per "
                f"particle), got {_describe(value)}"
            ) from err
        if value.shape != expected or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(
                "log_predictive(x_prev, y, t) must return a log-weight (a real scalar per "
                f"particle): expected shape {expected}, got {value.dtype} of shape "
                f"{value.shape}"
            )

    jax.eval_shape(probe, x_prev, y, t)


def _check_common(ssm, ys, num_particles, ess_threshold):
    if not isinstance(ssm, StateSpaceModel):
        raise ValueError(f"ssm must be a particlekit.StateSpaceModel, got {type(ssm).__name__}")
    ys = ssm.validate(ys, num_particles)
    kernels.check_ess_threshold(ess_threshold)
    return ys


# ------------------------------------------------------------------------------ bootstrap
@partial(
    jax.jit,
    static_argnames=(
        "ssm",
        "num_particles",
        "resampling_scheme",
        "ess_threshold",
        "keep_history",
        "progress_bar",
        "sharding",
        "batch_size",
    ),
)
def _bootstrap(
    key, ys, *, ssm, num_particles, resampling_scheme, ess_threshold, keep_history,
    progress_bar, sharding, batch_size=None,
):  # fmt: skip
    return _filter(
        key,
        ys,
        num_particles=num_particles,
        init_sample=initial_sampler(ssm),
        init_log_weight=_observation_term(ssm),
        step=bootstrap_step(ssm, resampling_scheme, ess_threshold, batch_size),
        keep_history=keep_history,
        progress_bar=progress_bar,
        sharding=sharding,
        vectorized=ssm.vectorized,
        batch_size=batch_size,
    )


def bootstrap_step(ssm: StateSpaceModel, resampling_scheme, ess_threshold, batch_size=None):
    """The bootstrap filter's step ``t - 1 -> t`` as a kernel ``(key, state, (y_t, t))``:
    resample when the ESS is low, draw from the transition, weight by the observation
    density (``bootstrap``; the state-space recipes' filters, ``particlekit.statespace``,
    run the same one). The move: ``transition_move``."""
    return kernels.chain(
        kernels.normalizing_resample(resampling_scheme, ess_threshold),
        transition_move(ssm, batch_size),
        kernels.reweight_normalized(
            _observation_term(ssm), vectorized=ssm.vectorized, batch_size=batch_size
        ),
    )


def transition_move(ssm: StateSpaceModel, batch_size=None):
    """The move ``x_t ~ f_t(. | x_{t-1})`` of every particle, a kernel ``(key, state,
    (y_t, t))``: a per-particle model's transition drawn as one batch where NumPyro can
    batch it exactly (``batched_laws.sample_population``; other laws with per-particle
    keys, ``batch_size`` at a time)."""

    def propagate(k, x_prev, inputs):
        return ssm.sample_transition(k, x_prev, inputs[1])

    def propagate_population(k, xs_prev, inputs):
        num = jax.tree.leaves(xs_prev)[0].shape[0]
        return batched_laws.sample_population(
            k, lambda x: ssm.transition(x, inputs[1]), xs_prev, num, batch_size
        )

    if ssm.vectorized:
        return kernels.move(propagate, vectorized=True, batch_size=batch_size)
    return kernels.move(propagate_population, vectorized=True)


def bootstrap(
    key: jax.Array,
    ssm: StateSpaceModel,
    ys,
    *,
    num_particles: int,
    resampling="systematic",
    ess_threshold: float = 0.5,
    keep_history: bool | None = None,
    progress_bar: bool | None = None,
    sharding=None,
    batch_size: int | None = None,
) -> FilterResult:
    """Bootstrap particle filter: move with the transition ``f``, weight with ``g``.

    Feynman–Kac model: ``M_0 = initial``, ``M_t = f_t(x_t | x_{t-1})``,
    ``G_t = g_t(y_t | x_t)``.

    Parameters
    ----------
    key : PRNG key
    ssm : StateSpaceModel
    ys : Array of shape (T, ...)
        Observations; a NaN at step ``t`` (every coordinate of a vector ``y_t``) marks it
        missing (not weighted). A partly missing vector ``y_t`` is a ``ValueError``; under
        ``jit`` / ``vmap`` it zeroes every weight at that step and sets ``failed``.
    num_particles : int
        ``N > 0``.
    resampling : str or callable
        Scheme of ``particlekit.resampling`` (default ``"systematic"``).
    ess_threshold : float
        Resample when ``ESS < ess_threshold * N``; 1.0 resamples every step.
    keep_history : bool, optional
        Keep particles, weights and ancestors of every step (``O(N T)`` memory); with
        False only the final population and per-step scalars are returned. ``None``
        (default): kept when it needs at most ``HISTORY_LIMIT_BYTES`` (1 GiB), otherwise
        not, with a warning.
    progress_bar : bool, optional
        Show a tqdm progress bar (about 100 updates per run); ``None`` (default): shown
        when standard error is a terminal.
    sharding : jax.sharding.Sharding, optional
        Sharding of the particle axis (e.g. ``NamedSharding(mesh, P("p"))``) to spread the
        particles over devices.
    batch_size : int, optional
        Evaluate the per-particle transition and observation functions on this many
        particles at a time (a ``lax.map`` over chunks) instead of all ``N`` at once: for
        very large populations whose per-particle intermediates would not fit in memory.
        Ignored for ``vectorized`` models (they receive the whole batch).

    Returns
    -------
    FilterResult

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 100)
    >>> res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=1000)
    >>> res.ess.shape, res.particles.shape
    ((100,), (100, 1000))
    """
    kernels.check_key(key)
    check_sharding(sharding, num_particles, key=key, ys=ys)
    ys = _check_common(ssm, ys, num_particles, ess_threshold)
    return _bootstrap(
        key,
        ys,
        ssm=ssm,
        num_particles=num_particles,
        resampling_scheme=_get_scheme(resampling),
        ess_threshold=float(ess_threshold),
        keep_history=resolve_keep_history(keep_history, ssm, ys, num_particles),
        progress_bar=progress_bar,
        sharding=sharding,
        batch_size=None
        if batch_size is None or ssm.vectorized  # documented: ignored for vectorized models
        else kernels.check_num_particles(batch_size, "batch_size"),
    )


# ------------------------------------------------------------------------------ guided
@partial(
    jax.jit,
    static_argnames=(
        "ssm",
        "proposal",
        "initial_proposal",
        "num_particles",
        "resampling_scheme",
        "ess_threshold",
        "keep_history",
        "progress_bar",
        "sharding",
    ),
)
def _guided(
    key, ys, *, ssm, proposal, initial_proposal, num_particles, resampling_scheme,
    ess_threshold, keep_history, progress_bar, sharding,
):  # fmt: skip
    v = ssm.vectorized

    def sample_init(k, n):
        if initial_proposal is None:
            return initial_sampler(ssm)(k, n)
        # a missing y_0: the initial law, as the transition at later missing steps (a
        # proposal built for a made-up y_0 may be narrower than the prior: weights of
        # infinite variance)
        k_q, k_0 = jax.random.split(k)
        y0 = jnp.where(jnp.isnan(ys[0]), 0.0, ys[0])  # as in log_w0
        x_q = batched_laws.sample_iid(k_q, initial_proposal(y0), n)
        x_0 = initial_sampler(ssm)(k_0, n)
        return jax.tree.map(lambda a, b: jnp.where(is_missing(ys[0]), a, b), x_0, x_q)

    def log_w0(x_prev, x, inputs):
        y, t = inputs
        log_g = ssm.observation_log_prob(x, y, t)
        if initial_proposal is None:
            return log_g
        y0 = jnp.where(jnp.isnan(y), 0.0, y)
        q = initial_proposal(y0)
        return jnp.where(is_missing(y), log_g, log_g + ssm.initial_log_prob(x) - q.log_prob(x))

    def propagate(k, x_prev, inputs):
        y, t = inputs
        missing = is_missing(y)
        k_q, k_f = jax.random.split(k)
        x_q = proposal(x_prev, jnp.where(jnp.isnan(y), 0.0, y), t).sample(k_q)
        x_f = ssm.sample_transition(k_f, x_prev, t)
        return jax.tree.map(lambda f, q: jnp.where(missing, f, q), x_f, x_q)  # (pytree states)

    def log_w(x_prev, x, inputs):
        y, t = inputs
        missing = is_missing(y)
        log_f = ssm.transition_log_prob(x_prev, x, t)
        log_q = proposal(x_prev, jnp.where(jnp.isnan(y), 0.0, y), t).log_prob(x)
        log_g = ssm.observation_log_prob(x, y, t)
        return jnp.where(missing, 0.0, log_g + log_f - log_q)

    resample_kernel = kernels.normalizing_resample(resampling_scheme, ess_threshold)
    move_kernel = kernels.move(propagate, vectorized=v)

    def step(key, state, inputs=None):
        # as kernels.chain(resample, move, reweight), but a move to a non-finite state
        # keeps the previous particle and gives it a NaN log-weight (zero weight, counted
        # in num_nonfinite), so no NaN or inf ever enters the particles
        k_r, k_m, k_w = jax.random.split(key, 3)
        info = StepInfo.neutral(state)
        state, i_r = resample_kernel(k_r, state, inputs)
        state, i_m = move_kernel(k_m, state, inputs)
        ok = finite_per_particle(state.particles)
        kept = jax.tree.map(
            lambda new, old: jnp.where(ok.reshape(ok.shape + (1,) * (new.ndim - 1)), new, old),
            state.particles,
            state.previous_particles,
        )
        state = state._replace(particles=kept)

        def guarded_log_w(x_prev, x, inp):
            lw = (
                log_w(x_prev, x, inp)
                if v
                else jax.vmap(log_w, in_axes=(0, 0, None))(x_prev, x, inp)
            )
            return jnp.where(ok, lw, jnp.nan)

        state, i_w = kernels.reweight_normalized(guarded_log_w, vectorized=True)(k_w, state, inputs)
        return state, info.merge(i_r).merge(i_m).merge(i_w)

    return _filter(
        key,
        ys,
        num_particles=num_particles,
        init_sample=sample_init,
        init_log_weight=log_w0,
        step=step,
        keep_history=keep_history,
        progress_bar=progress_bar,
        sharding=sharding,
        vectorized=v,
    )


def finite_per_particle(particles) -> jax.Array:
    """``(N,)`` mask: every entry of the particle (all leaves, along the leading axis) is
    finite (integer leaves always are)."""
    leaves = jax.tree.leaves(particles)
    n = leaves[0].shape[0]
    ok = jnp.ones((n,), bool)
    for leaf in leaves:
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf.reshape(n, -1)), axis=1)
    return ok


def guided(
    key: jax.Array,
    ssm: StateSpaceModel,
    ys,
    *,
    proposal: Callable,
    num_particles: int,
    initial_proposal: Callable | None = None,
    resampling="systematic",
    ess_threshold: float = 0.5,
    keep_history: bool | None = None,
    progress_bar: bool | None = None,
    sharding=None,
) -> FilterResult:
    """Guided particle filter: move with a user proposal ``q``, weight by ``f g / q``.

    Feynman–Kac model: ``M_t = q_t(x_t | x_{t-1}, y_t)``,
    ``G_t = f_t(x_t | x_{t-1}) g_t(y_t | x_t) / q_t(x_t | x_{t-1}, y_t)``.

    Parameters
    ----------
    proposal : callable
        ``proposal(x_prev, y, t) -> Distribution`` of ``x_t`` (one particle, or a batch if
        ``ssm.vectorized``). At missing steps the transition is used instead.
    initial_proposal : callable, optional
        ``initial_proposal(y0) -> Distribution`` of ``x_0``; default: the model's initial
        law (then ``G_0 = g_0``). If ``y_0`` is missing the initial law is used instead.

    Notes
    -----
    The other parameters and the result are as in ``bootstrap``.

    Examples
    --------
    The locally optimal proposal of ``x_t = 0.9 x_{t-1} + N(0, 1)``, ``y_t = x_t + N(0, 0.5^2)``:

    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> var = 1.0 / (1.0 + 1.0 / 0.25)
    >>> prop = lambda x_prev, y, t: dist.Normal(var * (0.9 * x_prev + y / 0.25), var**0.5)
    >>> _, ys = ssm.simulate(jax.random.key(0), 50)
    >>> res = pk.filters.guided(jax.random.key(1), ssm, ys, proposal=prop, num_particles=500)
    """
    kernels.check_key(key)
    check_sharding(sharding, num_particles, key=key, ys=ys)
    ys = _check_common(ssm, ys, num_particles, ess_threshold)
    if not callable(proposal):
        raise ValueError("proposal must be a function (x_prev, y, t) -> Distribution")
    _check_proposals(ssm, ys, proposal, initial_proposal)
    return _guided(
        key,
        ys,
        ssm=ssm,
        proposal=proposal,
        initial_proposal=initial_proposal,
        num_particles=num_particles,
        resampling_scheme=_get_scheme(resampling),
        ess_threshold=float(ess_threshold),
        keep_history=resolve_keep_history(keep_history, ssm, ys, num_particles),
        progress_bar=progress_bar,
        sharding=sharding,
    )


# ------------------------------------------------------------------------------ auxiliary
@partial(
    jax.jit,
    static_argnames=(
        "ssm",
        "log_predictive",
        "num_particles",
        "resampling_scheme",
        "ess_threshold",
        "keep_history",
        "progress_bar",
        "sharding",
    ),
)
def _auxiliary(
    key, ys, *, ssm, log_predictive, num_particles, resampling_scheme, ess_threshold,
    keep_history, progress_bar, sharding,
):  # fmt: skip
    v = ssm.vectorized

    sample_init = initial_sampler(ssm)

    def raw_eta(x, inputs):
        y, t = inputs[:2]
        missing = is_missing(y)
        value = log_predictive(x, jnp.where(jnp.isnan(y), 0.0, y), t)
        return jnp.where(missing, jnp.zeros_like(value), value)

    def log_eta(x_prev, x, inputs):
        # first stage: look ahead at y_t from the current particle x_{t-1} (= ``x`` here),
        # less the step's constant ``inputs[2]`` (``centred_step``)
        return raw_eta(x, inputs) - inputs[2]

    def propagate(k, x_prev, inputs):
        return ssm.sample_transition(k, x_prev, inputs[1])

    def log_second_stage(x_prev, x, inputs):
        # a non-finite first-stage weight was counted (or was a zero weight) at the first
        # stage: the particle stays dead here without being counted a second time
        y, t = inputs[:2]
        eta = log_eta(None, x_prev, inputs)
        value = ssm.observation_log_prob(x, y, t) - eta
        return jnp.where(jnp.isfinite(eta), value, -jnp.inf)

    log_g = _observation_term(ssm)
    two_stages = kernels.chain(
        kernels.reweight(log_eta, vectorized=v),
        kernels.normalizing_resample(resampling_scheme, ess_threshold),
        kernels.move(propagate, vectorized=v),
        kernels.reweight_normalized(log_second_stage, vectorized=v),
    )

    def centred_step(key, state, inputs):
        """Both stages with ``eta - c``, ``c`` the step's largest finite ``eta``: the two
        evidence increments then sum to the same value without a float32 cancellation of
        ``+c`` and ``-c`` (a constant in ``log_predictive`` changed ``log_evidence``)."""
        etas = (
            raw_eta(state.particles, inputs)
            if v
            else jax.vmap(lambda x: raw_eta(x, inputs))(state.particles)
        )
        largest = jnp.max(jnp.where(jnp.isfinite(etas), etas, -jnp.inf))
        c = jax.lax.stop_gradient(jnp.where(jnp.isfinite(largest), largest, 0.0))
        return two_stages(key, state, (*inputs, c.astype(etas.dtype)))

    return _filter(
        key,
        ys,
        num_particles=num_particles,
        init_sample=sample_init,
        init_log_weight=log_g,
        step=centred_step,
        keep_history=keep_history,
        progress_bar=progress_bar,
        sharding=sharding,
        vectorized=v,
    )


def auxiliary(
    key: jax.Array,
    ssm: StateSpaceModel,
    ys,
    *,
    log_predictive: Callable,
    num_particles: int,
    resampling="systematic",
    ess_threshold: float = 0.5,
    keep_history: bool | None = None,
    progress_bar: bool | None = None,
    sharding=None,
) -> FilterResult:
    """Auxiliary particle filter (Pitt & Shephard 1999) with first-stage weights.

    Step ``t`` multiplies the weights by ``eta_t(x_{t-1}) = exp(log_predictive(x_{t-1},
    y_t, t))`` (an approximation of ``p(y_t | x_{t-1})``), resamples on ESS, moves with
    the transition, and weights by ``g_t(y_t | x_t) / eta_t(x_{t-1})``. Both stages grow
    the evidence by the engine's one rule, so ``log_evidence`` is the standard unbiased
    APF estimate.

    Parameters
    ----------
    log_predictive : callable
        ``log_predictive(x_prev, y, t) -> scalar`` for one particle (a batch if
        ``ssm.vectorized``). It must be finite wherever ``g`` is positive.

    Notes
    -----
    The other parameters and the result are as in ``bootstrap``.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> pred = lambda x_prev, y, t: dist.Normal(0.9 * x_prev, (1.0 + 0.25) ** 0.5).log_prob(y)
    >>> _, ys = ssm.simulate(jax.random.key(0), 50)
    >>> res = pk.filters.auxiliary(jax.random.key(1), ssm, ys, log_predictive=pred,
    ...                            num_particles=500)
    """
    kernels.check_key(key)
    check_sharding(sharding, num_particles, key=key, ys=ys)
    ys = _check_common(ssm, ys, num_particles, ess_threshold)
    if not callable(log_predictive):
        raise ValueError("log_predictive must be a function (x_prev, y, t) -> log weight")
    _check_log_predictive(ssm, ys, log_predictive)
    return _auxiliary(
        key,
        ys,
        ssm=ssm,
        log_predictive=log_predictive,
        num_particles=num_particles,
        resampling_scheme=_get_scheme(resampling),
        ess_threshold=float(ess_threshold),
        keep_history=resolve_keep_history(keep_history, ssm, ys, num_particles),
        progress_bar=progress_bar,
        sharding=sharding,
    )


from particlekit.sqmc import sqmc  # noqa: E402

__all__ += ["sqmc"]
