"""Parallel tempering of particle Gibbs chains over token sequences (Puri et al. 2025,
Algorithm 3).

One particle Gibbs chain (``particlekit.steering.particle_gibbs``, ``"exact"`` weighting)
per inverse temperature ``beta_j = 1 / temperature_j``, each with the tempered reward
``phi(x)^{beta_j}`` (``log phi`` scaled by ``beta_j``), so chain ``j`` targets

    pi_j(x) = p(x) phi(x)^{beta_j} / Z_j.

The chains run side by side (``jax.vmap`` over the temperature axis, one compiled program).
Every ``swap_every`` iterations the references of neighbouring temperatures ``j, j + 1``
are exchanged with the Metropolis probability

    min(1, pi_j(x_{j+1}) pi_{j+1}(x_j) / (pi_j(x_j) pi_{j+1}(x_{j+1})))
        = min(1, exp((beta_j - beta_{j+1}) (log phi(x_{j+1}) - log phi(x_j)))),

(``p(x)`` and the normalisers cancel), alternating the even pairs ``(0, 1), (2, 3), ...``
and the odd pairs ``(1, 2), (3, 4), ...``. Each move leaves the product
``prod_j pi_j(x_j)`` invariant, so the chain at temperature ``j`` targets ``pi_j``; hot
chains (small ``beta``) move easily and pass good sequences down to the cold ones.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from particlekit.kernels import check_ess_threshold, check_key, check_num_particles
from particlekit.resampling import get_conditional_scheme, get_scheme
from particlekit.run import progress_bar_callback, resolve_progress_bar
from particlekit.steering.pgibbs import gibbs_iteration, initial_reference
from particlekit.steering.sequences import (
    Config,
    SequenceState,
    check_config,
    warn_unfinished,
)

__all__ = ["TemperingResult", "parallel_tempering"]


class TemperingResult(NamedTuple):
    """Output of ``parallel_tempering``: one chain of reference sequences per temperature.

    Attributes
    ----------
    sequences : Array of shape (J, K, L), int32
        Reference at temperature ``j`` after each of the ``K`` iterations (after that
        iteration's swap move, if any), padded with the end token.
    lengths : Array of shape (J, K), int32
    log_potentials : Array of shape (J, K)
        ``log phi`` of each reference, untempered (the reward as ``reward_fn`` returns it).
    changed : Array of shape (J, K), bool
        The Gibbs move at temperature ``j`` selected a sequence different from its
        reference (swaps not counted).
    ess : Array of shape (J, K, T)
        Per-step ESS of each conditional SMC sweep.
    swapped : Array of shape (K, J - 1), bool
        The swap between temperatures ``j`` and ``j + 1`` after iteration ``k`` was
        proposed and accepted.
    swap_acceptance : Array of shape (J - 1,)
        Fraction of the proposed swaps between ``j`` and ``j + 1`` that were accepted
        (NaN for a pair never proposed).
    temperatures : Array of shape (J,)
    failed : Array of shape (), bool
        Some sweep ended with every weight zero (an invalid reference).
    initial_sequences : Array of shape (J, L), int32
        The starting references (one unconditional SMC draw per temperature).
    initial_lengths : Array of shape (J,), int32
        Their lengths (filled positions of ``initial_sequences``).
    """

    sequences: jax.Array
    lengths: jax.Array
    log_potentials: jax.Array
    changed: jax.Array
    ess: jax.Array
    swapped: jax.Array
    swap_acceptance: jax.Array
    temperatures: jax.Array
    failed: jax.Array
    initial_sequences: jax.Array
    initial_lengths: jax.Array

    def to_inference_data(self, *, burn_in: int = 0, eos_id: int | None = None, decode=None):
        """The chains for ArviZ (``particlekit.arviz.from_sequence_tempering``): the
        references of the cold chain (the lowest temperature, usually ``1.0``: draws of
        ``p(x) phi(x) / Z``) as ``posterior`` draws after ``burn_in``, their potentials,
        move indicators, per-sweep ESS and swaps in ``sample_stats``, and every
        temperature's chain in ``tempering``.

        Examples
        --------
        >>> import jax, jax.numpy as jnp, particlekit as pk
        >>> pt = pk.steering.parallel_tempering(
        ...     jax.random.key(0), pk.steering.toy_generator(),
        ...     lambda tokens, length: jnp.zeros(()), num_particles=4, num_iterations=10,
        ...     temperatures=[1.0, 2.0], max_length=4, eos_id=3)
        >>> data = pt.to_inference_data(burn_in=2)
        >>> data.posterior["tokens"].shape, data.tempering["tokens"].shape
        ((1, 8, 4), (1, 2, 10, 4))
        """
        from particlekit.arviz import from_sequence_tempering

        return from_sequence_tempering(self, burn_in=burn_in, eos_id=eos_id, decode=decode)


def _swap(key, refs: SequenceState, betas, parity, do_swap):
    """Metropolis exchange of the references of the pairs ``(j, j + 1)`` with
    ``j % 2 == parity`` (disjoint pairs, decided independently), when ``do_swap``.
    ``refs.log_potential`` holds the untempered ``log phi``."""
    num_pairs = betas.shape[0] - 1
    pairs = jnp.arange(num_pairs)
    attempted = do_swap & (pairs % 2 == parity)
    log_phi = refs.log_potential
    log_alpha = (betas[:-1] - betas[1:]) * (log_phi[1:] - log_phi[:-1])
    # NaN from 0 * inf or inf - inf (a zero-potential reference): reject
    log_alpha = jnp.where(jnp.isnan(log_alpha), -jnp.inf, log_alpha)
    log_u = jnp.log(jax.random.uniform(key, (num_pairs,), log_alpha.dtype))
    accepted = attempted & (log_u < log_alpha)
    no = jnp.zeros((1,), jnp.int32)
    up = jnp.concatenate([accepted.astype(jnp.int32), no])  # slot j takes j + 1's reference
    down = jnp.concatenate([no, accepted.astype(jnp.int32)])  # slot j takes j - 1's
    perm = jnp.arange(num_pairs + 1) + up - down
    return jax.tree.map(lambda leaf: leaf[perm], refs), attempted, accepted


@eqx.filter_jit
def _parallel_tempering(key, step_fn, reward_fn, prompt, init_cache, temperatures, *,
                        config: Config, num_particles, num_iterations, swap_every, scheme,
                        ess_threshold, progress_bar=False):  # fmt: skip
    tick = progress_bar_callback(num_iterations, "parallel tempering") if progress_bar else None
    num_chains = temperatures.shape[0]
    betas = 1.0 / temperatures
    common = dict(
        config=config,
        num_particles=num_particles,
        variant="exact",
        scheme=scheme,
        ess_threshold=ess_threshold,
        progress_bar=False,
    )

    def tempered(beta):
        return lambda tokens, length: beta * reward_fn(tokens, length)

    def untempered(ref: SequenceState, beta):
        return ref._replace(log_potential=ref.log_potential / beta)

    def start(key, beta):
        ref = initial_reference(key, step_fn, tempered(beta), prompt, init_cache, None, **common)
        return untempered(ref, beta)

    def move(key, ref, beta):
        new, out = gibbs_iteration(key, ref, step_fn, tempered(beta), prompt, init_cache, **common)
        _, _, _, changed, ess, failed = out
        return untempered(new, beta), (changed, ess, failed)

    key_init, key_iter = jax.random.split(key)
    refs = jax.vmap(start)(jax.random.split(key_init, num_chains), betas)

    def iteration(refs, inputs):
        i, key = inputs
        if tick is not None:
            tick(i)
        key_move, key_swap = jax.random.split(key)
        keys = jax.random.split(key_move, num_chains)
        refs, (changed, ess, failed) = jax.vmap(move)(keys, refs, betas)
        done = i + 1
        parity = (done // swap_every - 1) % 2  # even pairs at the first swap, then odd, ...
        refs, attempted, accepted = _swap(key_swap, refs, betas, parity, done % swap_every == 0)
        out = (refs.tokens, refs.length, refs.log_potential, changed, ess, failed)
        return refs, (out, attempted, accepted)

    steps = (jnp.arange(num_iterations), jax.random.split(key_iter, num_iterations))
    _, (out, attempted, accepted) = jax.lax.scan(iteration, refs, steps)
    tokens, lengths, log_potentials, changed, ess, failed = jax.tree.map(
        lambda leaf: jnp.swapaxes(leaf, 0, 1), out
    )
    num_attempted = jnp.sum(attempted, axis=0)
    rate = jnp.sum(accepted, axis=0) / jnp.maximum(num_attempted, 1)
    return TemperingResult(
        sequences=tokens,
        lengths=lengths,
        log_potentials=log_potentials,
        changed=changed,
        ess=ess,
        swapped=accepted,
        swap_acceptance=jnp.where(num_attempted > 0, rate, jnp.nan),
        temperatures=temperatures,
        failed=jnp.any(failed),
        initial_sequences=refs.tokens,
        initial_lengths=refs.length,
    )


def _check_temperatures(temperatures) -> jax.Array:
    """The temperatures as a float array ``(J,)``: non-empty, 1-D, positive and finite
    (values checked when concrete)."""
    message = "temperatures must be a non-empty 1-D sequence of positive finite numbers"
    if isinstance(temperatures, jax.core.Tracer):
        if temperatures.ndim != 1 or temperatures.shape[0] == 0:
            raise ValueError(f"{message}, got shape {temperatures.shape}")
        return temperatures.astype(jnp.result_type(float))
    try:
        values = np.asarray(temperatures, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{message}, got {temperatures!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{message}, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{message}, got {values.tolist()}")
    return jnp.asarray(values, jnp.result_type(float))


def parallel_tempering(
    key: jax.Array,
    step_fn,
    reward_fn,
    *,
    num_particles: int,
    num_iterations: int,
    temperatures,
    max_length: int,
    eos_id: int,
    prompt=None,
    init_cache=None,
    separator_id: int | None = None,
    max_step_tokens: int | None = None,
    max_steps: int | None = None,
    swap_every: int = 1,
    resampling: str = "systematic",
    ess_threshold: float = 1.0,
    progress_bar: bool | None = None,
) -> TemperingResult:
    """Parallel tempering of particle Gibbs chains over sequences (Puri et al. 2025,
    Algorithm 3, with the exact weighting): chain ``j`` has stationary law
    ``p(x) phi(x)^{beta_j} / Z_j`` with ``beta_j = 1 / temperatures[j]``.

    Each iteration moves every chain by one particle Gibbs step
    (``particlekit.steering.particle_gibbs``, ``variant="exact"``: a conditional SMC sweep
    of the model ``M_t`` = one generator step, ``G_t = (phi(x_{1:t}) /
    phi(x_{1:t-1}))^{beta_j}``, with the chain's reference in slot 0, and the next
    reference drawn from the final weights); the chains run in one program, vmapped over
    the temperatures. After every ``swap_every``-th iteration the references of
    neighbouring temperatures ``j, j + 1`` are exchanged with probability
    ``min(1, exp((beta_j - beta_{j+1}) (log phi(x_{j+1}) - log phi(x_j))))``, the even
    pairs ``(0, 1), (2, 3), ...`` and the odd pairs ``(1, 2), ...`` in turn. Every move
    leaves ``prod_j p(x_j) phi(x_j)^{beta_j}`` invariant.

    Parameters
    ----------
    key : PRNG key
    step_fn, reward_fn : callable
        As in ``particlekit.steering.smc``; ``reward_fn`` returns the untempered
        ``log phi``, which each chain scales by its ``beta_j``.
    num_particles : int
        ``N >= 2`` per sweep (the reference plus ``N - 1`` fresh particles).
    num_iterations : int
        ``K >= 1`` iterations of every chain (discard a burn-in yourself).
    temperatures : array-like of shape (J,)
        Positive, finite temperatures, usually increasing from ``1.0`` (the chain of
        ``p(x) phi(x) / Z``); swaps are proposed between neighbours in this order.
    max_length, eos_id, prompt, init_cache
        As in ``particlekit.steering.smc``.
    separator_id, max_step_tokens, max_steps
        Step level, as in ``particlekit.steering.smc``.
    swap_every : int
        Particle Gibbs iterations between swap moves, in ``[1, num_iterations]``.
    resampling : str
        A scheme with a conditional version (multinomial, systematic, stratified,
        residual).
    ess_threshold : float in [0, 1]
        Resample when ``ESS < ess_threshold * N`` (default every step).
    progress_bar : bool, optional
        A tqdm bar over the iterations; ``None`` (default): shown when standard error is a
        terminal.

    Returns
    -------
    TemperingResult
        ``sequences (J, K, L)``, ``lengths (J, K)``, untempered ``log_potentials (J, K)``,
        ``swap_acceptance (J - 1,)``, ``failed``, ...; ``to_inference_data()``
        (``particlekit.arviz.from_sequence_tempering``) converts it to ArviZ.

    Raises
    ------
    ValueError
        Before tracing, for empty, non-1-D, non-positive or non-finite temperatures,
        ``num_particles < 2``, a non-positive ``num_iterations``, ``swap_every`` outside
        ``[1, num_iterations]``, a scheme without a conditional version, or any argument
        ``particlekit.steering.smc`` refuses.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()          # letters 0, 1, 2 and end token 3
    >>> def reward(tokens, length):                # favour sequences with many 0s
    ...     return 2.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))
    >>> pt = pk.steering.parallel_tempering(
    ...     jax.random.key(0), gen, reward, num_particles=4, num_iterations=50,
    ...     temperatures=[1.0, 2.0, 4.0], max_length=4, eos_id=3)
    >>> pt.sequences.shape, pt.swap_acceptance.shape   # chains (J, K, L); pairs (J - 1,)
    ((3, 50, 4), (2,))
    >>> cold = pt.sequences[0, 10:]                    # draws of p(x) phi(x) / Z
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
        variant="exact",
        separator_id=separator_id,
        max_step_tokens=max_step_tokens,
        max_steps=max_steps,
    )
    if int(num_particles) < 2:
        raise ValueError(f"parallel_tempering needs num_particles >= 2, got {num_particles}")
    num_iterations = check_num_particles(num_iterations, "num_iterations")
    temperatures = _check_temperatures(temperatures)
    if (
        isinstance(swap_every, bool)
        or not isinstance(swap_every, numbers.Integral)
        or not 1 <= swap_every <= num_iterations
    ):
        raise ValueError(
            f"swap_every must be an integer in [1, num_iterations={num_iterations}], "
            f"got {swap_every!r}"
        )
    ess_threshold = check_ess_threshold(ess_threshold)
    base = get_scheme(resampling)
    conditional = get_conditional_scheme(base)
    result = _parallel_tempering(
        key,
        step_fn,
        reward_fn,
        prompt,
        init_cache,
        temperatures,
        config=config,
        num_particles=int(num_particles),
        num_iterations=int(num_iterations),
        swap_every=int(swap_every),
        scheme=(base, conditional),
        ess_threshold=float(ess_threshold),
        progress_bar=resolve_progress_bar(progress_bar),
    )
    warn_unfinished("parallel_tempering", config, max_steps, result.sequences, result.lengths)
    return result
