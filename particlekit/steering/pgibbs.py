"""Particle Gibbs over token sequences: conditional SMC with a reference sequence pinned in
slot 0, iterated so that the chain of references targets ``p(x) phi(x) / Z``.

Each iteration runs the Feynman–Kac model of ``particlekit.steering.smc`` (``M_t`` = one
generator step; ``"exact"``: ``G_t = phi(x_{1:t}) / phi(x_{1:t-1})``, ``"softmax"``:
``G_t = phi(x_{1:t})``) with slot 0 forced to follow the current reference and conditional
resampling (``particlekit.resampling.get_conditional_scheme``: slot 0 keeps ancestor 0),
then draws the next reference from the final weights (Andrieu, Doucet & Holenstein 2010;
Puri et al. 2025, Algorithm 2, for the softmax weighting). The chain leaves the target of
the variant's Feynman–Kac model invariant (``p(x) phi(x) / Z`` only for ``"exact"``).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from particlekit.kernels import check_ess_threshold, check_key, check_num_particles
from particlekit.resampling import get_conditional_scheme, get_scheme, sanitize_log_weights
from particlekit.run import progress_bar_callback, resolve_progress_bar
from particlekit.steering.sequences import (
    Config,
    SequenceState,
    check_config,
    warn_unfinished,
)
from particlekit.steering.smc import sweep

__all__ = ["GibbsResult", "gibbs_iteration", "initial_reference", "particle_gibbs"]


class GibbsResult(NamedTuple):
    """Output of ``particle_gibbs``: the chain of reference sequences.

    Attributes
    ----------
    sequences : Array of shape (K, L), int32
        Reference after each of the ``K`` iterations (padded with the end token).
    lengths : Array of shape (K,), int32
    log_potentials : Array of shape (K,)
        ``log phi`` of each reference.
    changed : Array of shape (K,), bool
        The iteration selected a sequence different from the previous reference.
    ess : Array of shape (K, T)
        Per-step ESS of each conditional SMC sweep.
    failed : Array of shape (), bool
        Some sweep ended with every weight zero (the reference itself had zero potential:
        an invalid reference).
    initial_sequence : Array of shape (L,), int32
        The starting reference (given, or drawn from one unconditional SMC run).
    """

    sequences: jax.Array
    lengths: jax.Array
    log_potentials: jax.Array
    changed: jax.Array
    ess: jax.Array
    failed: jax.Array
    initial_sequence: jax.Array

    def to_inference_data(self, *, burn_in: int = 0, eos_id: int | None = None, decode=None):
        """The chain for ArviZ (``particlekit.arviz.from_sequence_gibbs``): the references
        as ``posterior`` draws (after ``burn_in``), their potentials, move indicators and
        per-sweep ESS in ``sample_stats``.

        Examples
        --------
        >>> import jax, jax.numpy as jnp, particlekit as pk
        >>> chain = pk.steering.particle_gibbs(
        ...     jax.random.key(0), pk.steering.toy_generator(),
        ...     lambda tokens, length: jnp.zeros(()), num_particles=4, num_iterations=10,
        ...     max_length=4, eos_id=3)
        >>> chain.to_inference_data(burn_in=2).posterior["tokens"].shape
        (1, 8, 4)
        """
        from particlekit.arviz import from_sequence_gibbs

        return from_sequence_gibbs(self, burn_in=burn_in, eos_id=eos_id, decode=decode)


def _select(key, final) -> tuple[SequenceState, jax.Array]:
    """Draw one particle from the final weights (slot 0, the reference, if all are zero)."""
    log_w = sanitize_log_weights(final.log_weights)
    ok = jnp.any(log_w > -jnp.inf)
    idx = jnp.where(ok, jax.random.categorical(key, jnp.where(ok, log_w, 0.0)), 0)
    return jax.tree.map(lambda leaf: leaf[idx], final.particles), ~ok


def initial_reference(key, step_fn, reward_fn, prompt, init_cache, reference, *,
                      config: Config, num_particles, variant, scheme, ess_threshold,
                      progress_bar=None):  # fmt: skip
    """The first reference (``cache=()``): ``reference = (tokens, length)`` as given, or
    one sequence drawn from the final weights of an unconditional SMC run of ``variant``
    (``scheme`` is ``(base, conditional)``)."""
    if reference is None:
        key_run, key_pick = jax.random.split(key)
        final, _, _ = sweep(
            key_run,
            step_fn,
            reward_fn,
            prompt,
            init_cache,
            config=config,
            num_particles=num_particles,
            variant=variant,
            ess_threshold=ess_threshold,
            scheme=scheme[0],
            progress_bar=progress_bar,
        )
        ref, _ = _select(key_pick, final)
    else:
        tokens, length = reference
        ref = SequenceState(
            tokens=tokens,
            length=length,
            finished=jnp.asarray(True),
            log_potential=jnp.zeros(()),
            cache=(),
        )
    return ref._replace(cache=())


def gibbs_iteration(key, ref: SequenceState, step_fn, reward_fn, prompt, init_cache, *,
                    config: Config, num_particles, variant, scheme, ess_threshold,
                    progress_bar=None):  # fmt: skip
    """One particle Gibbs iteration: a conditional SMC sweep of ``variant`` with ``ref`` in
    slot 0, then the next reference drawn from the final weights.

    Returns ``(new_ref, (tokens, length, log_potential, changed, ess, failed))``, the new
    reference with ``cache=()``.
    """
    key_run, key_pick = jax.random.split(key)
    final, _, info = sweep(
        key_run,
        step_fn,
        reward_fn,
        prompt,
        init_cache,
        config=config,
        num_particles=num_particles,
        variant=variant,
        ess_threshold=ess_threshold,
        scheme=scheme[1],
        reference=ref,
        progress_bar=progress_bar,
    )
    new, failed = _select(key_pick, final)
    changed = jnp.any(new.tokens != ref.tokens) | (new.length != ref.length)
    new = new._replace(cache=())
    return new, (new.tokens, new.length, new.log_potential, changed, info.ess, failed)


@eqx.filter_jit
def _particle_gibbs(key, step_fn, reward_fn, prompt, init_cache, reference, *, config: Config,
                    num_particles, num_iterations, scheme, ess_threshold, variant,
                    progress_bar=False):  # fmt: skip
    tick = progress_bar_callback(num_iterations, "particle Gibbs") if progress_bar else None
    common = dict(
        config=config,
        num_particles=num_particles,
        variant=variant,
        scheme=scheme,
        ess_threshold=ess_threshold,
        progress_bar=False,  # not one bar per sweep
    )
    key_init, key_iter = jax.random.split(key)
    ref = initial_reference(key_init, step_fn, reward_fn, prompt, init_cache, reference, **common)

    def iteration(ref, inputs):
        i, key = inputs
        if tick is not None:
            tick(i)
        return gibbs_iteration(key, ref, step_fn, reward_fn, prompt, init_cache, **common)

    steps = (jnp.arange(num_iterations), jax.random.split(key_iter, num_iterations))
    _, (tokens, lengths, log_potentials, changed, ess, failed) = jax.lax.scan(iteration, ref, steps)
    return GibbsResult(
        sequences=tokens,
        lengths=lengths,
        log_potentials=log_potentials,
        changed=changed,
        ess=ess,
        failed=jnp.any(failed),
        initial_sequence=ref.tokens,
    )


def _check_reference(reference, config: Config, prompt):
    if reference is None:
        return None
    if not (isinstance(reference, tuple) and len(reference) == 2):
        raise ValueError("reference must be a tuple (tokens (L,), length) or None")
    tokens, length = reference
    tokens = jnp.asarray(tokens)
    if tokens.shape != (config.total_length,) or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"reference tokens must be an integer array of shape ({config.total_length},) "
            f"(prompt + max_length), got {tokens.shape} {tokens.dtype}"
        )
    length = jnp.asarray(length)
    if length.shape != () or not jnp.issubdtype(length.dtype, jnp.integer):
        raise ValueError(f"reference length must be an integer scalar, got {length!r}")
    if not isinstance(length, jax.core.Tracer):
        n = int(length)
        if not config.prompt_length < n <= config.total_length:
            raise ValueError(
                f"reference length must be in ({config.prompt_length}, {config.total_length}]"
                f", got {n}"
            )
    if not isinstance(tokens, jax.core.Tracer):
        t = np.asarray(tokens)
        if t.min() < 0 or t.max() >= config.vocab_size:
            raise ValueError(f"reference token ids must be in [0, {config.vocab_size})")
        if not isinstance(length, jax.core.Tracer):
            _check_reference_sequence(t, int(length), prompt, config)
    return tokens.astype(jnp.int32), length.astype(jnp.int32)


def _check_reference_sequence(tokens: np.ndarray, length: int, prompt, config: Config):
    """A reference is a sequence the steering model can produce: the prompt, then tokens up
    to ``length`` with ``eos_id`` only as the last one (or none at ``total_length``), then
    ``eos_id`` padding. Anything else was replayed as a different sequence (an early
    ``eos_id`` cut it) or reported with another prompt, silently."""
    p, eos = config.prompt_length, config.eos_id
    if p and not isinstance(prompt, jax.core.Tracer):
        if not np.array_equal(tokens[:p], np.asarray(prompt)):
            raise ValueError(
                f"the reference must start with the prompt {np.asarray(prompt).tolist()}, "
                f"got {tokens[:p].tolist()}"
            )
    body = tokens[p : length - 1]
    if np.any(body == eos):
        first = p + int(np.argmax(body == eos))
        raise ValueError(
            f"the reference has eos_id={eos} at position {first}, before its end "
            f"(length={length}): a sequence stops at its first eos_id"
        )
    if length < config.total_length and tokens[length - 1] != eos:
        raise ValueError(
            f"a reference shorter than prompt + max_length ({config.total_length}) must end "
            f"with eos_id={eos} at position length - 1 = {length - 1}, got {tokens[length - 1]}"
        )
    if np.any(tokens[length:] != eos):
        raise ValueError(f"the reference must be padded with eos_id={eos} after its length")


def particle_gibbs(
    key: jax.Array,
    step_fn,
    reward_fn,
    *,
    num_particles: int,
    num_iterations: int,
    max_length: int,
    eos_id: int,
    reference=None,
    prompt=None,
    resampling: str = "systematic",
    ess_threshold: float = 1.0,
    init_cache=None,
    separator_id: int | None = None,
    max_step_tokens: int | None = None,
    max_steps: int | None = None,
    variant: str = "exact",
    progress_bar: bool | None = None,
) -> GibbsResult:
    """Particle Gibbs over sequences: a Markov chain of sequences with stationary law
    ``p(x) phi(x) / Z`` (``variant="exact"``).

    Each iteration is one conditional SMC sweep of the steering model of
    ``particlekit.steering.smc``: slot 0 replays the current reference token by token, the
    other ``N - 1`` particles are extended by the generator and weighted by the reward
    ratio ``phi(x_{1:t}) / phi(x_{1:t-1})`` (``"exact"``) or the current reward
    ``phi(x_{1:t})`` (``"softmax"``), resampling is conditional (slot 0 keeps its own
    ancestor), and the next reference is drawn from the final weights (Andrieu, Doucet &
    Holenstein 2010; with ``"softmax"``, Algorithm 2 of Puri et al. 2025).

    Conditional SMC leaves the target of its own Feynman–Kac model invariant, so the
    chain's stationary law is that of the variant's SMC: ``p(x) phi(x) / Z`` for
    ``"exact"``; for token-level ``"softmax"``, ``p(x) prod_{t=1}^T phi(x_{1:min(t,|x|)})
    / Z'`` (``particlekit.steering.enumerate_sequences(..., variant="softmax")``), which
    over-weights early rewards and is NOT ``p(x) phi(x) / Z``. At step level the softmax
    sweeps stop once every particle has finished, so the number of reward factors depends
    on the whole population and the softmax chain's stationary law has no closed form: a
    heuristic, like the softmax SMC it iterates.

    Parameters
    ----------
    key : PRNG key
    step_fn, reward_fn : callable
        As in ``particlekit.steering.smc``.
    num_particles : int
        ``N >= 2`` (the reference plus ``N - 1`` fresh particles).
    num_iterations : int
        ``K >= 1`` iterations (discard a burn-in yourself).
    max_length, eos_id, prompt, init_cache
        As in ``particlekit.steering.smc``.
    separator_id, max_step_tokens, max_steps
        Step level, as in ``particlekit.steering.smc``: each sweep moves whole reasoning
        steps and slot 0 replays the reference step by step.
    reference : tuple (tokens (L,), length), optional
        Starting sequence (with the prompt, padded with ``eos_id``), e.g.
        ``(res.sequences[i], res.lengths[i])`` of an SMC result: its only ``eos_id``
        before the padding is its last token (none at full length), and a sequence the
        model could not produce is a ``ValueError``. Default: one sequence drawn from an
        unconditional SMC run.
    resampling : str
        A scheme with a conditional version (multinomial, systematic, stratified,
        residual).
    ess_threshold : float in [0, 1]
        Resample when ``ESS < ess_threshold * N`` (default every step).
    variant : {"exact", "softmax"}
        The weighting of the sweeps, as in ``particlekit.steering.smc`` (the stationary
        law above). ``"exact"`` (default) targets ``p(x) phi(x) / Z``.
    progress_bar : bool, optional
        A tqdm bar over the iterations; ``None`` (default): shown when standard error is a
        terminal.

    Returns
    -------
    GibbsResult
        ``sequences (K, L)``, ``lengths (K,)``, ``log_potentials``, ``changed`` (the
        move rate), per-sweep ``ess (K, T)``, ``failed``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()
    >>> def reward(tokens, length):
    ...     return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))
    >>> chain = pk.steering.particle_gibbs(jax.random.key(0), gen, reward, num_particles=8,
    ...                                    num_iterations=20, max_length=4, eos_id=3)
    >>> chain.sequences.shape
    (20, 4)
    """
    check_key(key)
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
    if int(num_particles) < 2:
        raise ValueError(f"particle_gibbs needs num_particles >= 2, got {num_particles}")
    num_iterations = check_num_particles(num_iterations, "num_iterations")
    ess_threshold = check_ess_threshold(ess_threshold)
    base = get_scheme(resampling)
    conditional = get_conditional_scheme(base)
    reference = _check_reference(reference, config, prompt)
    result = _particle_gibbs(
        key,
        step_fn,
        reward_fn,
        prompt,
        init_cache,
        reference,
        config=config,
        num_particles=int(num_particles),
        num_iterations=int(num_iterations),
        scheme=(base, conditional),
        ess_threshold=float(ess_threshold),
        variant=variant,
        progress_bar=resolve_progress_bar(progress_bar),
    )
    warn_unfinished("particle_gibbs", config, max_steps, result.sequences, result.lengths)
    return result
