"""Particle filtering over token sequences: steer any autoregressive JAX generator towards
``p(x) phi(x) / Z`` with a reward model ``phi`` on partial sequences.

Feynman–Kac model (one step per generated token, ``t = 1, ..., T`` with ``T = max_length``):

- ``M_0``: the prompt; ``G_0 = phi(prompt)``;
- ``M_t``: an unfinished sequence is extended by one token from the generator,
  ``x_t ~ p(. | x_{1:t-1})``; a finished one (end token or full length) stays as it is;
- ``G_t``: ``"exact"``: ``phi(x_{1:t}) / phi(x_{1:t-1})`` (1 for finished sequences), so
  ``prod_t G_t = phi(x)`` and the final weighted population targets ``p(x) phi(x) / Z``
  with ``Z = E_p[phi(x)]``; ``"softmax"``: ``phi(x_{1:t})``, the current reward (Puri et
  al. 2025), a heuristic whose target is ``p(x) prod_t phi(x_{1:min(t, |x|)})``, not
  ``p(x) phi(x)``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from particlekit import kernels
from particlekit.resampling import get_scheme, normalize, sanitize_log_weights
from particlekit.run import (
    advance,
    check_sharding,
    constrain_particles,
    progress_bar_callback,
    resolve_progress_bar,
    run,
)
from particlekit.steering.sequences import (
    Config,
    SequenceState,
    check_config,
    extend_move,
    initial_potential,
    initial_state,
    potential,
    warn_unfinished,
)
from particlekit.types import ParticleState, StepInfo

__all__ = ["SteeringResult", "smc", "sweep"]


class SteeringResult(NamedTuple):
    """Output of ``smc``: a weighted population of complete sequences.

    Attributes
    ----------
    sequences : Array of shape (N, L), int32
        Prompt and generated tokens, padded with the end token after ``lengths``
        (``L = len(prompt) + max_length``).
    lengths : Array of shape (N,), int32
        Filled positions of each sequence (prompt and end token included).
    ended : Array of shape (N,), bool
        The sequence ended with the end token (False: truncated at ``L``).
    log_weights : Array of shape (N,)
        Final unnormalised log-weights (``-inf`` for zero weight, never NaN).
    log_potentials : Array of shape (N,)
        ``log phi`` of each final sequence.
    log_evidence : Array of shape ()
        ``"exact"``: estimate of ``log E_p[phi(x)]`` (unbiased for ``E_p[phi]`` on the
        natural scale). ``"softmax"``: the normaliser of that variant's own target, not
        ``log E_p[phi]``. ``-inf`` when every weight became zero.
    ess : Array of shape (T,)
        Effective sample size after each generation step.
    resampled : Array of shape (T,), bool
        Whether step ``t`` resampled (before extending).
    num_nonfinite : Array of shape (T,), int32
        Particles whose potential was NaN or ``+inf`` at each step (given zero weight;
        the prompt's reward is counted at step 0).
    failed : Array of shape (), bool
        Every weight became zero (the reward rules out every sampled sequence).
    final_state : ParticleState
        The final population; ``particles`` is a ``SequenceState`` (its
        ``previous_particles`` keep no cache: ``cache=()``).
    """

    sequences: jax.Array
    lengths: jax.Array
    ended: jax.Array
    log_weights: jax.Array
    log_potentials: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array
    num_nonfinite: jax.Array
    failed: jax.Array
    final_state: ParticleState

    @property
    def weights(self) -> jax.Array:
        """Normalised weights ``(N,)`` (uniform if every weight is zero; see ``failed``)."""
        return normalize(self.log_weights)

    def to_inference_data(self, *, key=None, num_draws: int | None = None, decode=None):
        """The run for ArviZ (``particlekit.arviz.from_sequence_steering``): the weighted
        final sequences with their potentials (and texts, given ``decode``: token ids ->
        str), ``log_marginal_likelihood`` and ``failed``, per-step ``ess`` / ``resampled``
        / ``num_nonfinite``; with a ``key``, also a ``posterior`` of ``num_draws``
        equally weighted draws.

        Examples
        --------
        >>> import jax, jax.numpy as jnp, particlekit as pk
        >>> res = pk.steering.smc(jax.random.key(0), pk.steering.toy_generator(),
        ...                       lambda tokens, length: jnp.zeros(()), num_particles=8,
        ...                       max_length=4, eos_id=3)
        >>> idata = res.to_inference_data(key=jax.random.key(1))
        >>> idata.posterior["tokens"].shape
        (1, 8, 4)
        """
        from particlekit.arviz import from_sequence_steering

        return from_sequence_steering(self, key=key, num_draws=num_draws, decode=decode)


def sweep(
    key,
    step_fn,
    reward_fn,
    prompt,
    init_cache,
    *,
    config: Config,
    num_particles: int,
    variant: str,
    scheme,
    ess_threshold: float,
    reference: SequenceState | None = None,
    progress_bar: bool | None = None,
    sharding=None,
) -> tuple[ParticleState, StepInfo, StepInfo]:
    """One SMC pass over ``T = config.num_steps`` steps (conditional on ``reference`` in
    slot 0 when given; ``scheme`` must then be a conditional scheme), with the particle
    axis sharded by ``sharding`` when given.

    Returns the final state, the step-0 info and the stacked per-step infos.
    """
    key_init, key_w0, key_run = jax.random.split(key, 3)
    x0 = initial_state(prompt, reward_fn, config, init_cache)
    state = _previous_without_cache(kernels.init(key_init, lambda k: x0, num_particles))
    state = constrain_particles(state, sharding)
    state, info0 = kernels.reweight(initial_potential)(key_w0, state, None)
    extend = kernels.move(extend_move(step_fn, reward_fn, config, reference), vectorized=True)

    def move(key, state, inputs):
        state, info = extend(key, state, inputs)
        return _previous_without_cache(state), info

    step = kernels.chain(
        kernels.resample(scheme, ess_threshold), move, _reweight_until_failure(potential(variant))
    )
    if variant == "exact" or config.step_level:
        final, info = _run_until_all_finished(
            key_run, step, state, config.num_steps, progress_bar, sharding
        )
        return final, info0, info
    final, trace = run(
        key_run,
        step,
        state,
        num_steps=config.num_steps,
        keep_history=False,
        progress_bar=progress_bar,
        sharding=sharding,
    )
    return final, info0, trace.info


def _reweight_until_failure(log_g):
    """``particlekit.reweight(log_g)``, except that once every weight has been zero (the
    run's ``log_evidence`` is ``-inf``) the weights stay zero and the ESS is 0.

    The engine's ``reweight`` normalises the previous weights first, and an all-zero
    population normalises to uniform weights; its particles whose previous reward is finite
    again (a reward that was ``-inf`` / NaN on one prefix only, or a resampled all-zero
    population) would then come back with finite weights, so that a run reported as
    ``failed`` (``log_evidence = -inf``) ended with a seemingly valid weighted population
    and ESS > 0, and conditional SMC drew its next reference from it without reporting the
    failure.
    """
    base = kernels.reweight(log_g)

    def kernel(key, state: ParticleState, inputs=None):
        new, info = base(key, state, inputs)
        failed = ~jnp.isfinite(new.log_evidence)
        log_weights = jnp.where(failed, -jnp.inf, new.log_weights)
        info = info._replace(ess=jnp.where(failed, jnp.zeros_like(info.ess), info.ess))
        return new._replace(log_weights=log_weights), info

    return kernel


def _previous_without_cache(state: ParticleState) -> ParticleState:
    """``state`` with the generator's cache dropped from ``previous_particles``: the
    potentials read only the previous reward and end flag, and a kept copy of every
    particle's key/value cache would be carried through the loop, gathered at each
    resampling and copied at each step for nothing."""
    return state._replace(previous_particles=state.previous_particles._replace(cache=()))


def _run_until_all_finished(key, step, state, num_steps: int, progress_bar, sharding):
    """``particlekit.run``'s loop (each step through the same ``particlekit.run.advance``),
    stopped once every sequence has finished: a ``lax.while_loop`` instead of a scan.
    Under ``"exact"`` the steps after that would leave every sequence and weight as it is
    and at most resample, which stopping leaves out; step-level ``"softmax"`` stops there,
    as Puri et al.'s Algorithm 1 does (not token-level ``"softmax"``, whose potential keeps
    weighting finished sequences). The steps not taken get neutral infos (same ESS, no
    resampling). Returns the final state and the per-step infos, each field
    ``(num_steps,)``.

    Stopping the loop, rather than skipping each remaining step under ``lax.cond``, keeps
    the generator's caches out of a conditional: XLA on CPU copies a conditional's
    operands that its branch updates in place, twice per step, which made a cached token
    cost twice a token of ``transformer.generate``.
    """
    tick = progress_bar_callback(num_steps) if resolve_progress_bar(progress_bar) else None
    infos = jax.tree.map(
        lambda a: jnp.zeros((num_steps,) + a.shape, a.dtype), StepInfo.neutral(state)
    )

    def more(carry):
        t, state, _, _ = carry
        return (t < num_steps) & ~jnp.all(state.particles.finished)

    def body(carry):
        t, state, compensation, infos = carry
        new_state, compensation, info = advance(key, step, state, compensation, t, t, sharding)
        infos = jax.tree.map(lambda trace, value: trace.at[t].set(value), infos, info)
        if tick is not None:
            tick(t)
        return t + 1, new_state, compensation, infos

    start = (jnp.zeros((), jnp.int32), state, jnp.zeros_like(state.log_evidence), infos)
    taken, final, _, infos = jax.lax.while_loop(more, body, start)
    if tick is not None:  # a loop that stopped early still ends with a full bar
        last = jnp.asarray(num_steps - 1, jnp.int32)
        jax.lax.cond(taken < num_steps, lambda: tick(last), lambda: None)
    skipped = jnp.arange(num_steps) >= taken
    # the steps not taken repeat the last taken step's ESS as it was recorded (recomputed
    # from the final weights it may differ in the last bit: jax 0.12 sums in another order)
    neutral = StepInfo.neutral(final)
    last_ess = jnp.where(taken > 0, infos.ess[jnp.maximum(taken - 1, 0)], neutral.ess)
    infos = jax.tree.map(
        lambda trace, value: jnp.where(skipped, value, trace),
        infos,
        neutral._replace(ess=last_ess.astype(neutral.ess.dtype)),
    )
    return final, infos


@eqx.filter_jit
def _smc(key, step_fn, reward_fn, prompt, init_cache, *, config, num_particles, variant, scheme,
         ess_threshold, progress_bar, sharding=None):  # fmt: skip
    final, info0, info = sweep(
        key,
        step_fn,
        reward_fn,
        prompt,
        init_cache,
        config=config,
        num_particles=num_particles,
        variant=variant,
        scheme=scheme,
        ess_threshold=ess_threshold,
        progress_bar=progress_bar,
        sharding=sharding,
    )
    log_evidence = final.log_evidence
    failed = ~jnp.isfinite(log_evidence)
    xs: SequenceState = final.particles
    last = xs.tokens[jnp.arange(num_particles), jnp.clip(xs.length - 1, 0, None)]
    num_nonfinite = info.num_nonfinite.at[0].add(info0.num_nonfinite)
    return SteeringResult(
        sequences=xs.tokens,
        lengths=xs.length,
        ended=(last == config.eos_id) & (xs.length > config.prompt_length),
        log_weights=sanitize_log_weights(final.log_weights),
        log_potentials=xs.log_potential,
        log_evidence=kernels.reported_log_evidence(log_evidence),
        ess=info.ess,
        resampled=info.resampled,
        num_nonfinite=num_nonfinite,
        failed=failed,
        final_state=final,
    )


def _ess_threshold(ess_threshold, variant):
    if ess_threshold is None:
        return 0.5 if variant == "exact" else 1.0
    return kernels.check_ess_threshold(ess_threshold)


def smc(
    key: jax.Array,
    step_fn,
    reward_fn,
    *,
    num_particles: int,
    max_length: int,
    eos_id: int,
    variant: str = "exact",
    prompt=None,
    resampling: str = "systematic",
    ess_threshold: float | None = None,
    init_cache=None,
    separator_id: int | None = None,
    max_step_tokens: int | None = None,
    max_steps: int | None = None,
    progress_bar: bool | None = None,
    sharding=None,
) -> SteeringResult:
    """Steer an autoregressive generator with a reward model by sequential Monte Carlo.

    Feynman–Kac model: ``M_t`` extends every unfinished sequence by one token drawn from
    the generator; ``G_t`` is the reward ratio ``phi(x_{1:t}) / phi(x_{1:t-1})``
    (``variant="exact"``) or the current reward ``phi(x_{1:t})`` (``variant="softmax"``,
    Puri et al. 2025). Finished sequences (end token, or ``max_length`` tokens) stay in the
    pool: they no longer move, and under ``"exact"`` their weight no longer changes. Under
    ``"exact"`` the steps after every sequence has finished are skipped (the generator is
    not called; their ``ess`` stays at its last value and ``resampled`` is False).

    Parameters
    ----------
    key : PRNG key
    step_fn : callable
        ``step_fn(tokens, length) -> logits``: next-token logits ``(V,)`` for ONE sequence,
        given the int32 buffer ``tokens`` of shape ``(L,)`` whose first ``length`` entries
        are the prefix (the rest is padding with ``eos_id``). Bind model parameters with
        ``jax.tree_util.Partial(apply, params)`` or use an equinox module, so they are
        traced inputs rather than compiled-in constants. With ``init_cache``:
        ``step_fn(tokens, length, cache) -> (logits, new_cache)``.
    reward_fn : callable
        ``reward_fn(tokens, length) -> log phi`` of the prefix ``tokens[:length]`` (a
        scalar; for a tilt ``exp(lambda r)`` return ``lambda * r``). Its value at a complete
        sequence (last token ``eos_id``, or ``length == L``) is the final potential.
        ``NaN``, ``+inf`` and ``-inf`` mean zero weight.
    num_particles : int
        ``N > 0``.
    max_length : int
        Maximum number of generated tokens ``T`` (end token included); sequences reaching
        it are truncated.
    eos_id : int
        The end-of-sequence token, in ``[0, V)``.
    variant : {"exact", "softmax"}
        ``"exact"``: accumulated reward-ratio weights; the weighted sequences target
        ``p(x) phi(x) / Z`` exactly and ``log_evidence`` estimates ``log E_p[phi(x)]``.
        ``"softmax"``: weights are the current reward; with resampling at every step (the
        default for this variant) the resampling weights are ``softmax(log phi(x_{1:t}))``
        as in Puri et al. (2025). This over-counts early rewards and does NOT target
        ``p(x) phi(x)``; its target is ``p(x) prod_{t=1}^T phi(x_{1:min(t, |x|)})``.
    prompt : array of int, shape (P,), optional
        Tokens conditioned on; the sequences have ``L = P + max_length`` positions.
    resampling : str or callable
        A scheme of ``particlekit.resampling``.
    ess_threshold : float in [0, 1], optional
        Resample before a step when ``ESS < ess_threshold * N``. Default 0.5 for
        ``"exact"`` and 1.0 (every step) for ``"softmax"``.
    init_cache : PyTree, optional
        The generator's carried state for one sequence (e.g. an empty key/value cache);
        resampled along with the tokens.
    separator_id : int, optional
        Step-level steering (Puri et al. 2025, Algorithm 1): ``M_t`` extends every
        unfinished sequence by a whole reasoning step, the tokens up to and including
        ``separator_id`` (or the end token, or ``max_step_tokens`` tokens), and the reward
        scores each sequence once per step, at the step's end. Default: token level.
        Steps stop once every sequence has finished, under both variants.
    max_step_tokens : int, optional
        Step level only: most tokens in one step (default ``max_length``).
    max_steps : int, optional
        Step level only: number of SMC steps ``T`` (default ``max_length``, which always
        suffices); sequences unfinished after ``T`` steps are returned as they are
        (``ended`` False), weighted by the reward of a prefix, and an eager call warns
        (``RuntimeWarning``).
    progress_bar : bool, optional
        Show a tqdm bar over the generation steps; ``None`` (default): shown when standard
        error is a terminal.
    sharding : jax.sharding.Sharding, optional
        Sharding of the particle axis, e.g. ``NamedSharding(mesh, P("p"))`` over a 1-D
        mesh: the sequences (and ``init_cache``) are spread over the devices and pinned
        there after every step (``num_particles`` a multiple of the number of devices);
        see the Scaling page.

    Returns
    -------
    SteeringResult
        ``sequences (N, L)``, ``lengths``, ``log_weights``, ``log_potentials``,
        ``log_evidence``, per-step ``ess``, ``failed``.

    Raises
    ------
    ValueError
        Before tracing, for invalid shapes, vocabulary, particle count, variant or step
        options (a separator outside the vocabulary or equal to ``eos_id``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()          # letters 0, 1, 2 and end token 3
    >>> def reward(tokens, length):                # favour sequences with many 0s
    ...     return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))
    >>> res = pk.steering.smc(jax.random.key(0), gen, reward, num_particles=256,
    ...                       max_length=4, eos_id=3)
    >>> res.sequences.shape, bool(jnp.isfinite(res.log_evidence))
    ((256, 4), True)

    Step level: token 2 ends a step, and the reward is evaluated once per step.

    >>> res = pk.steering.smc(jax.random.key(0), gen, reward, num_particles=256,
    ...                       max_length=4, eos_id=3, separator_id=2, max_steps=4)
    >>> res.ess.shape
    (4,)
    """
    kernels.check_key(key)
    config, prompt = check_config(
        step_fn,
        reward_fn,
        num_particles=num_particles,
        max_length=max_length,
        eos_id=eos_id,
        prompt=prompt,
        init_cache=init_cache,
        variant=variant,
        separator_id=separator_id,
        max_step_tokens=max_step_tokens,
        max_steps=max_steps,
    )
    threshold = _ess_threshold(ess_threshold, variant)
    sharding = check_sharding(sharding, num_particles, key=key)
    scheme = get_scheme(resampling)
    result = _smc(
        key,
        step_fn,
        reward_fn,
        prompt,
        init_cache,
        config=config,
        num_particles=int(num_particles),
        variant=variant,
        scheme=scheme,
        ess_threshold=threshold,
        progress_bar=resolve_progress_bar(progress_bar),  # None: shown on a terminal
        sharding=sharding,
    )
    # a max_steps too small for the reasoning steps leaves sequences unfinished: their
    # weight holds phi of a prefix, not of a complete sequence
    warn_unfinished(
        "smc", config, max_steps, result.sequences, result.lengths, result.log_weights > -jnp.inf
    )
    return result
