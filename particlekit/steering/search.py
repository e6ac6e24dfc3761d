"""Search baselines for steering by reasoning steps: beam search and diverse verifier tree
search (DVTS), and the answer-selection rules that turn a population of sequences into one
answer (best-of-N, majority and weighted majority vote).

Both searches are the step-level Feynman–Kac model of ``particlekit.steering.smc`` with a
deterministic selection in place of resampling: at every step the population of ``N``
sequences is scored by the reward of its current prefix, and

- beam search (Snell et al. 2024) keeps the ``N / M`` best prefixes and extends each of
  them ``M`` times (``M`` = ``beam_width``);
- DVTS (Beeching et al. 2024) splits the population into ``N / M`` independent subtrees of
  ``M`` sequences and keeps the best prefix of each subtree, extended ``M`` times.

Ties are broken uniformly at random. Selection is greedy, so neither search targets a
distribution; their final population is read with ``best_of`` or a vote.
"""

from __future__ import annotations

import numbers
import warnings

import jax
import jax.numpy as jnp

from particlekit.steering.smc import SteeringResult, smc

__all__ = [
    "beam_search",
    "beam_selection",
    "best_of",
    "dvts_selection",
    "weighted_vote",
]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _ranked(key, log_weights):
    """Indices by decreasing log-weight, ties in uniformly random order (NaN last)."""
    n = log_weights.shape[0]
    perm = jax.random.permutation(key, n)
    score = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)[perm]
    return perm[jnp.argsort(-score, stable=True)]


def beam_selection(beam_width: int):
    """A selection "scheme" for ``resampling=``: the ``N / M`` prefixes of highest weight,
    each repeated ``M = beam_width`` times (``N`` a multiple of ``M``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> select = pk.steering.beam_selection(2)
    >>> select(jax.random.key(0), jnp.array([0.0, 3.0, 1.0, 2.0])).tolist()
    [1, 1, 3, 3]
    """
    width = _positive_int(beam_width, "beam_width")

    def select(key, log_weights, num_samples=None):
        n = log_weights.shape[0]
        m = n if num_samples is None else num_samples
        if m % width:
            raise ValueError(f"the number of particles ({m}) must be a multiple of {width}")
        return jnp.repeat(_ranked(key, log_weights)[: m // width], width)

    select.__name__ = f"beam_selection_{width}"
    return select


def dvts_selection(subtree_size: int):
    """A selection "scheme" for ``resampling=``: particles ``g M, ..., g M + M - 1`` form
    subtree ``g``; each subtree keeps its prefix of highest weight, repeated ``M`` times.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> select = pk.steering.dvts_selection(2)
    >>> select(jax.random.key(0), jnp.array([0.0, 3.0, 1.0, -2.0])).tolist()
    [1, 1, 2, 2]
    """
    size = _positive_int(subtree_size, "subtree_size")

    def select(key, log_weights, num_samples=None):
        n = log_weights.shape[0]
        if num_samples not in (None, n) or n % size:
            raise ValueError(f"DVTS needs a number of particles that is a multiple of {size}")
        groups = log_weights.reshape(n // size, size)
        keys = jax.random.split(key, n // size)
        best = jax.vmap(lambda k, lw: _ranked(k, lw)[0])(keys, groups)
        return jnp.repeat(best + size * jnp.arange(n // size), size)

    select.__name__ = f"dvts_selection_{size}"
    return select


def beam_search(
    key: jax.Array,
    step_fn,
    reward_fn,
    *,
    num_particles: int,
    beam_width: int,
    max_length: int,
    eos_id: int,
    separator_id: int,
    diverse: bool = False,
    prompt=None,
    init_cache=None,
    max_step_tokens: int | None = None,
    max_steps: int | None = None,
    progress_bar: bool | None = None,
) -> SteeringResult:
    """Step-level beam search (``diverse=False``) or diverse verifier tree search (DVTS,
    ``diverse=True``) with a process reward, at a budget of ``num_particles`` sequences.

    Each step extends every unfinished sequence up to the separator (as
    ``pk.steering.smc(..., separator_id=...)``), scores the prefixes with ``reward_fn``,
    then selects: beam search keeps the ``N / M`` best prefixes over the population,
    DVTS the best prefix in each of the ``N / M`` subtrees of ``M`` consecutive
    sequences; each kept prefix is extended ``M = beam_width`` times at the next step.
    Finished sequences stay in the pool and compete with their final reward.

    Parameters
    ----------
    key : PRNG key
    step_fn, reward_fn, max_length, eos_id, prompt, init_cache
        As in ``particlekit.steering.smc``; ``reward_fn`` returns the log-score of a
        prefix (e.g. ``log PRM``), only its order matters.
    num_particles : int
        The budget ``N``: sequences generated in parallel, a multiple of ``beam_width``.
    beam_width : int
        ``M``: extensions of each kept prefix (DVTS: the subtree size).
    separator_id : int
        The token that ends a reasoning step.
    diverse : bool
        DVTS instead of beam search.
    max_step_tokens, max_steps, progress_bar
        As in ``particlekit.steering.smc``.

    Returns
    -------
    SteeringResult
        The final population; ``log_weights`` and ``log_potentials`` hold the reward of
        each final sequence. Read the answer with ``best_of`` or ``weighted_vote``; a
        greedy search estimates no evidence, so ``log_evidence`` is NaN. A NaN (or ``+inf``) reward
        ranks as ``-inf`` (its prefix is kept only when too few others are) and is
        counted in ``num_nonfinite``; when every prefix has a NaN or ``-inf`` reward, ``failed``
        is True (``best_of`` then warns that its pick is arbitrary).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> gen = pk.steering.toy_generator()          # letters 0, 1, 2 and end token 3
    >>> def reward(tokens, length):                # favour sequences with many 0s
    ...     return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))
    >>> res = pk.steering.beam_search(jax.random.key(0), gen, reward, num_particles=16,
    ...                               beam_width=4, max_length=6, eos_id=3, separator_id=1)
    >>> best = pk.steering.best_of(res)
    >>> res.sequences.shape, int(res.log_potentials[best]) >= 1
    ((16, 6), True)
    """
    n = _positive_int(num_particles, "num_particles")
    width = _positive_int(beam_width, "beam_width")
    if n % width:
        raise ValueError(
            f"num_particles ({n}) must be a multiple of beam_width ({width}): the budget is "
            f"{n // max(1, width)} beams of {width} extensions"
        )
    if separator_id is None:
        raise ValueError("beam_search works by reasoning steps: give separator_id")
    selection = dvts_selection(width) if diverse else beam_selection(width)
    result = smc(
        key,
        step_fn,
        reward_fn,
        num_particles=n,
        max_length=max_length,
        eos_id=eos_id,
        variant="softmax",
        prompt=prompt,
        resampling=selection,
        ess_threshold=1.0,
        init_cache=init_cache,
        separator_id=separator_id,
        max_step_tokens=max_step_tokens,
        max_steps=max_steps,
        progress_bar=progress_bar,
    )
    # a greedy selection weights nothing: the evidence the filter accumulated is no
    # estimate of anything, and a finite number invited reading it as log E_p[phi]
    return result._replace(log_evidence=jnp.full_like(result.log_evidence, jnp.nan))


def best_of(result: SteeringResult, scores=None) -> jax.Array:
    """Index of the best final sequence: the highest ``scores`` (default: the final
    reward ``log_potentials``, i.e. best-of-N with an outcome reward), ties to the first.
    Works on a batch of results (leading axes) too. NaN scores count as ``-inf`` (never
    picked while another score is not NaN), and so does a final reward of ``+inf`` (an
    invalid reward, which the samplers give zero weight); when every score of a result is
    NaN the pick (index 0) is arbitrary, and an eager call warns (``RuntimeWarning``).

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> int(pk.steering.best_of(None, scores=jnp.array([0.1, 0.7, jnp.nan, 0.7])))
    1
    """
    if result is not None and not hasattr(result, "log_potentials"):
        raise ValueError(
            f"result must be a SteeringResult (or None with scores), got {type(result).__name__}"
        )
    if scores is None:
        if result is None:
            raise ValueError("best_of needs a result, scores or both")
        # a reward of +inf is invalid (zero weight, counted in num_nonfinite), like NaN
        scores = jnp.where(result.log_potentials == jnp.inf, jnp.nan, result.log_potentials)
    else:
        scores = jnp.asarray(scores)
        # one score per sequence: a shorter array gave an index into the wrong population
        if result is not None and scores.shape != jnp.shape(result.log_potentials):
            raise ValueError(
                f"scores must have one entry per sequence, shape "
                f"{jnp.shape(result.log_potentials)}, got {scores.shape}"
            )
    nan = jnp.isnan(scores)
    if not isinstance(scores, jax.core.Tracer):
        num_all_nan = int(jnp.sum(jnp.all(nan, axis=-1)))
        if num_all_nan:
            warnings.warn(
                f"best_of: every score is NaN in {num_all_nan} result(s) (e.g. a NaN reward "
                "for every sequence; see the result's num_nonfinite and failed): the index "
                "returned there (0) is arbitrary",
                RuntimeWarning,
                stacklevel=2,
            )
    return jnp.argmax(jnp.where(nan, -jnp.inf, scores), axis=-1)


def _vote_weights(w, valid):
    """The voting weights: NaN and negative weights count as 0, those of invalid
    sequences too; if some weight is ``+inf`` (e.g. ``exp`` of a large log-reward), the
    infinite ones count as 1 and the finite ones as 0 (the limit of ``w / max(w)``), so
    that the share is never ``inf / inf = NaN``."""
    w = jnp.where(jnp.isnan(w) | (w < 0), 0.0, w)
    if valid is not None:
        w = jnp.where(valid, w, 0.0)
    infinite = w == jnp.inf
    return jnp.where(jnp.any(infinite), infinite.astype(w.dtype), w)


def weighted_vote(answers, weights=None, valid=None) -> tuple[jax.Array, jax.Array]:
    """The answer with the largest total weight among ``N`` candidates (majority vote
    when ``weights`` is None; weighted majority vote with, e.g., the final reward
    probabilities or the SMC weights).

    Parameters
    ----------
    answers : Array of shape (N,), int
        The answer of each sequence (e.g. ``pk.lm.task.final_answer``), ``N >= 1``.
    weights : Array of shape (N,), optional
        Non-negative weights (NaN and negative weights count as 0; when some weights are
        ``+inf``, only those vote, equally); default 1 each.
    valid : Array of shape (N,), bool, optional
        Sequences with an answer; the others do not vote.

    Returns
    -------
    answer : Array of shape ()
        The winning answer (the first among equals); that of sequence 0 when no
        sequence may vote.
    share : Array of shape ()
        Its share of the total weight (0 when nobody votes).

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> answers = jnp.array([7, 3, 7, 3, 3])
    >>> int(pk.steering.weighted_vote(answers)[0])
    3
    >>> int(pk.steering.weighted_vote(answers, jnp.array([0.9, 0.1, 0.8, 0.2, 0.1]))[0])
    7
    """
    answers = jnp.asarray(answers)
    if answers.ndim != 1 or answers.shape[0] == 0:
        # an empty vote failed inside jnp.argmax ("attempt to get argmax of an empty
        # sequence"), which does not say which argument was wrong
        raise ValueError(f"answers must have shape (N,) with N >= 1, got {answers.shape}")
    w = jnp.ones(answers.shape) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != answers.shape:
        raise ValueError(f"weights must have the shape of answers {answers.shape}, got {w.shape}")
    if valid is not None:
        valid = jnp.asarray(valid)
        if valid.shape != answers.shape:
            # an (N, 1) mask would broadcast against (N,) into an (N, N) vote
            raise ValueError(
                f"valid must have the shape of answers {answers.shape}, got {valid.shape}"
            )
    w = _vote_weights(w, valid)
    totals = jnp.sum(jnp.where(answers[:, None] == answers[None, :], w[None, :], 0.0), axis=1)
    totals = jnp.where(w > 0, totals, -1.0)
    best = jnp.argmax(totals)
    total = jnp.sum(w)
    share = jnp.where(
        total > 0, jnp.maximum(totals[best], 0.0) / jnp.where(total > 0, total, 1.0), 0.0
    )
    return answers[best], share
