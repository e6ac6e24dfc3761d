"""Draws from the backward kernel of a particle filter,

    Lambda_t(m, j) ∝ W_{t-1}^j f_t(x_t^m | x_{t-1}^j),     j = 1..N,

the step shared by FFBS, PaRIS and particle Gibbs with backward sampling.

Two exact samplers, and one consistent MCMC sampler for PaRIS:

- ``exact``: one row of ``N`` log-densities and an inverse-CDF draw per draw, ``O(N)``;
- accept–reject (Douc, Garivier, Moulines & Olsson 2011, Alg. 1): propose ``j ~ W`` and
  accept with probability ``f(x | x^j) / bound``, ``O(1)`` on average. All pending draws
  get a few proposals at once per *round* (the first accepted one is kept); once at most a
  quarter of a buffer is pending, the pending draws move to a buffer a quarter its size, so
  the work follows the number of pending draws instead of the slowest draw, and the
  sequential loop stays a few rounds long. The few draws left after the last buffer's rounds are
  made exactly, so every draw is exact whatever the bound's quality.

- ``mcmc`` (PaRIS only; Dau & Chopin 2023, "On backward smoothing algorithms"): each draw
  is the target's own ancestor moved by ``MCMC_STEPS`` independent Metropolis–Hastings
  steps that leave the backward kernel invariant (proposal ``j ~ W``, acceptance
  ``min(1, f(x | x^j) / f(x | x^current))``). Not an exact draw, but PaRIS stays
  consistent; a fixed cost per draw with no loop of unknown length and no bound needed.

Proposals use an inverse CDF accelerated by a guide table (Chen & Asau 1974): a power-of-two
number of equal buckets of ``[0, 1)``, each knowing the first particle its interval can map
to, leaves a short binary search (``log2`` of the widest bucket's particle count, usually
1–3 steps) instead of ``log2 N`` steps. It returns exactly ``searchsorted(cdf, u)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from particlekit import kernels, resampling
from particlekit.ssm import StateSpaceModel

__all__ = [
    "AUTO_EXACT_BELOW",
    "BackwardStats",
    "GuideTable",
    "backward_indices",
    "mcmc_backward_indices",
    "guide_table",
    "guided_inverse_cdf",
    "max_log_density",
]

# below this many particles exact backward draws are cheaper than accept-reject rounds
AUTO_EXACT_BELOW = 256
# the last accept-reject buffer, its proposals per draw per round
SMALLEST_BUFFER = 32
LAST_PROPOSALS = 128
# draws finished exactly per pass of the fallback
FALLBACK_CHUNK = 8

METHODS = ("auto", "exact", "rejection")
#: PaRIS also takes the MCMC backward kernel
PARIS_METHODS = METHODS + ("mcmc",)
#: Metropolis–Hastings steps per draw of the ``mcmc`` backward kernel
MCMC_STEPS = 2


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def take(tree, idx):
    """``tree[idx]`` leaf by leaf."""
    return jax.tree.map(lambda a: a[idx], tree)


def log_f_rows(ssm: StateSpaceModel, xs_prev, x, t):
    """``log f_t(x | xs_prev[j])`` for every ``j``: shape (N,)."""
    if ssm.vectorized:
        xb = jax.tree.map(lambda a, p: jnp.broadcast_to(a, p.shape), x, xs_prev)
        return ssm.transition_log_prob(xs_prev, xb, t)
    return jax.vmap(lambda xp: ssm.transition_log_prob(xp, x, t))(xs_prev)


def log_f_pairs(ssm: StateSpaceModel, xs_prev, xs, t):
    """Elementwise ``log f_t(xs[m] | xs_prev[m])``: shape (M,)."""
    if ssm.vectorized:
        return ssm.transition_log_prob(xs_prev, xs, t)
    return jax.vmap(lambda a, b: ssm.transition_log_prob(a, b, t))(xs_prev, xs)


def inverse_cdf(cdf, uniforms, n):
    """Indices ``j`` with ``cdf[j-1] <= u < cdf[j]`` (i.i.d. categorical draws)."""
    return jnp.clip(jnp.searchsorted(cdf, uniforms, side="right"), 0, n - 1).astype(jnp.int32)


def categorical(key, logits, num):
    """``num`` i.i.d. draws from ``softmax(logits)`` by inverse CDF, ``O(N + num log N)``.
    Non-finite logits count as zero probability; all-zero rows fall back to uniform."""
    n = logits.shape[0]
    log_w, _ = resampling.log_normalize(logits)
    cdf = jnp.cumsum(jnp.exp(log_w))
    cdf = cdf / cdf[-1]
    u = jax.random.uniform(key, (num,), dtype=cdf.dtype)
    return inverse_cdf(cdf, u, n)


def categorical_one(key, logits):
    """One draw from ``softmax(logits)`` in a few ``O(N)`` passes (no normalisation, no
    binary search): ``#{j : c_j <= u c_N}`` for the cumulative sums ``c`` of
    ``exp(logits - max)``. Non-finite logits count as zero probability; an all-zero row
    falls back to uniform."""
    n = logits.shape[0]
    logits = jnp.where(jnp.isnan(logits) | (logits == jnp.inf), -jnp.inf, logits)
    top = jnp.max(logits)
    mass = jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0))
    mass = jnp.where(jnp.isfinite(top), mass, 1.0)
    cumulative = jnp.cumsum(mass)
    u = jax.random.uniform(key, (), cumulative.dtype) * cumulative[-1]
    return jnp.minimum(jnp.sum(cumulative <= u), n - 1).astype(jnp.int32)


class GuideTable(NamedTuple):
    """An inverse CDF with a guide table (built by ``guide_table``).

    Attributes
    ----------
    cdf : Array of shape (N,)
        Normalised cumulative weights, nondecreasing.
    first : Array of shape (B + 1,), int32
        ``first[b]``: the first ``j`` with ``cdf[j] > b / B`` (clipped to ``N - 1``), for a
        power of two ``B >= N``.
    num_steps : Array of shape (), int32
        Binary-search steps that resolve any bucket: the bit length of the largest
        ``first[b + 1] - first[b]``.
    """

    cdf: jax.Array
    first: jax.Array
    num_steps: jax.Array


def guide_table(cdf: jax.Array) -> GuideTable:
    """Build the guide table of a normalised CDF in ``O(N)`` (a histogram and a cumulative
    sum). With ``B`` a power of two, ``cdf[j] * B`` and ``b / B`` are exact in floating
    point, so ``cdf[j] <= b / B`` iff ``ceil(cdf[j] * B) <= b``. The CDF is first made
    nondecreasing (a parallel cumulative sum may step down by a rounding error across
    zero weights)."""
    n = cdf.shape[0]
    cdf = jax.lax.cummax(cdf)
    num_buckets = 1 << max(n - 1, 1).bit_length()
    scaled = jnp.ceil(cdf * num_buckets)
    bins = jnp.clip(scaled, 0, num_buckets + 1).astype(jnp.int32)
    counts = jnp.zeros(num_buckets + 2, jnp.int32).at[bins].add(1)
    first = jnp.minimum(jnp.cumsum(counts)[: num_buckets + 1], n - 1)
    widest = jnp.max(first[1:] - first[:-1]).astype(jnp.uint32)
    num_steps = (32 - jax.lax.clz(widest)).astype(jnp.int32)
    return GuideTable(cdf, first, num_steps)


def guided_inverse_cdf(table: GuideTable, uniforms: jax.Array) -> jax.Array:
    """``searchsorted(cdf, u, side="right")`` (clipped to ``N - 1``) for ``u`` in ``[0, 1)``:
    the bucket of ``u`` bounds the answer to ``[first[b], first[b + 1]]``, a binary search
    of ``table.num_steps`` steps finishes it."""
    num_buckets = table.first.shape[0] - 1
    bucket = jnp.clip(jnp.floor(uniforms * num_buckets).astype(jnp.int32), 0, num_buckets - 1)
    lo, hi = table.first[bucket], table.first[bucket + 1]

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) >> 1
        right = table.cdf[mid] <= uniforms
        return jnp.where(right, mid + 1, lo), jnp.where(right, hi, mid)

    lo, _ = jax.lax.fori_loop(0, table.num_steps, halve, (lo, hi))
    return jnp.minimum(lo, table.cdf.shape[0] - 1)  # cdf[-1] may round below 1


def max_log_density(d) -> jax.Array | None:
    """``log max_x p(x)`` of a NumPyro distribution when it is known in closed form.

    Supported: ``Normal`` (elementwise, per batch entry), ``MultivariateNormal`` and
    ``Independent`` wrappers of those (summed over the reinterpreted dimensions). Returns
    ``None`` for other distributions.

    Examples
    --------
    >>> import numpyro.distributions as dist
    >>> round(float(max_log_density(dist.Normal(0.0, 1.0))), 4)
    -0.9189
    """
    if isinstance(d, dist.Independent):
        inner = max_log_density(d.base_dist)
        if inner is None:
            return None
        n = d.reinterpreted_batch_ndims
        return jnp.sum(inner, axis=tuple(range(-n, 0)))
    if isinstance(d, dist.Normal):
        return jnp.broadcast_to(-jnp.log(d.scale) - 0.5 * math.log(2 * math.pi), d.batch_shape)
    if isinstance(d, dist.MultivariateNormal):
        dim = d.event_shape[-1]
        log_det = jnp.sum(jnp.log(jnp.diagonal(d.scale_tril, axis1=-2, axis2=-1)), axis=-1)
        return -log_det - 0.5 * dim * math.log(2 * math.pi)
    return None


def population_log_bound(ssm: StateSpaceModel, xs_prev, t, log_transition_bound):
    """``log`` of a bound on ``f_t(x | x_prev^j)`` valid for every ``x`` and every particle
    ``j`` of ``xs_prev``; ``None`` if none is given and none can be derived."""
    if log_transition_bound is not None:
        value = log_transition_bound(t) if callable(log_transition_bound) else log_transition_bound
        return jnp.asarray(value, jnp.result_type(float))
    if ssm.vectorized:
        bound = max_log_density(ssm.transition(xs_prev, t))
        return None if bound is None else jnp.max(bound)
    probe = ssm.transition(take(xs_prev, 0), t)
    if max_log_density(probe) is None:
        return None
    bounds = jax.vmap(lambda xp: max_log_density(ssm.transition(xp, t)))(xs_prev)
    return jnp.max(bounds)


class BackwardStats(NamedTuple):
    """Cost diagnostics of one batch of backward draws (scalars)."""

    mean_trials: jax.Array  # mean number of rejection proposals per draw (0 if exact)
    num_exact: jax.Array  # number of draws made exactly (all of them in exact mode)


class BufferLevel(NamedTuple):
    """One accept–reject stage (static): ``size`` draws, ``proposals`` per draw per round,
    at most ``max_rounds`` rounds."""

    size: int
    proposals: int
    max_rounds: int


def buffer_levels(num_items: int, max_trials: int) -> list[BufferLevel]:
    """The accept–reject stages: buffers ``M, M / 4, M / 16, ...`` down to
    ``SMALLEST_BUFFER``, with 2, 8, 32 proposals per draw per round (the draws left for
    the later stages are the hard ones, with low acceptance rates) and ``LAST_PROPOSALS``
    in the last one; each stage runs until its pending draws fit the next buffer, or for
    at most ``max_trials // 4`` rounds. Few rounds keep the sequential loop short (each
    iteration has a fixed cost, and the heavy tail of the acceptance rates would
    otherwise keep it going for the slowest draw), large rounds keep the vector units
    busy; the draws left over cost ``O(N)`` each."""
    sizes = [num_items]
    while sizes[-1] // 4 >= SMALLEST_BUFFER:
        sizes.append(sizes[-1] // 4)
    rounds = max(1, max_trials // 4)
    levels = [
        BufferLevel(size, min(2 << (2 * level), 32), rounds)
        for level, size in enumerate(sizes[:-1])
    ]
    levels.append(BufferLevel(sizes[-1], LAST_PROPOSALS, rounds))
    return levels


def backward_indices(
    key,
    ssm: StateSpaceModel,
    log_weights_prev,
    xs_prev,
    targets,
    t,
    *,
    num_draws: int = 1,
    log_bound=None,
    max_trials: int = 32,
    exact_chunk: int | None = None,
):
    """Draw ancestors from the backward kernel ``Lambda(m, j) ∝ W^j f_t(targets_m | xs_prev^j)``.

    Parameters
    ----------
    key : PRNG key
    ssm : StateSpaceModel
    log_weights_prev : Array of shape (N,)
        (Unnormalised) filtering log-weights at ``t - 1``.
    xs_prev : Array of shape (N, ...)
        Filtering particles at ``t - 1``.
    targets : Array of shape (M, ...)
        States at ``t`` whose ancestors are drawn.
    t : int
        Time index of ``targets`` (the transition ``f_t`` maps ``t - 1`` to ``t``).
    num_draws : int
        ``K`` independent draws per target.
    log_bound : Array or None
        ``log`` of a bound of ``f_t`` over ``xs_prev``: accept–reject in shrinking buffers,
        then exact draws for the rest. ``None``: exact draws.
    max_trials : int
        Sets the accept–reject stages' length (at most ``max_trials // 4`` rounds each);
        the draws still pending after them are made exactly (see ``buffer_levels``).
    exact_chunk : int, optional
        Number of pending draws finished exactly per pass (memory ``exact_chunk * N``).

    Returns
    -------
    indices : Array of shape (M, K), int32
    stats : BackwardStats

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> xs_prev = jax.random.normal(jax.random.key(0), (1000,))
    >>> targets = 0.9 * xs_prev + jax.random.normal(jax.random.key(1), (1000,))
    >>> idx, stats = backward_indices(
    ...     jax.random.key(2), ssm, jnp.zeros(1000), xs_prev, targets, 1, num_draws=2,
    ...     log_bound=max_log_density(dist.Normal(0.0, 1.0)))
    >>> idx.shape
    (1000, 2)
    """
    n = log_weights_prev.shape[0]
    m = jax.tree.leaves(targets)[0].shape[0]
    num_items = m * num_draws
    log_w, _ = resampling.log_normalize(log_weights_prev)
    item_target = jnp.repeat(jnp.arange(m, dtype=jnp.int32), num_draws)
    # exact passes: all draws at once (memory-bounded) in exact mode; small chunks for the
    # few rejection fallbacks
    chunk = exact_chunk or max(1, min(num_items, (1 << 22) // max(n, 1)))
    fallback_chunk = exact_chunk or max(1, min(chunk, FALLBACK_CHUNK))

    def one_exact(kk, tid):
        return categorical_one(kk, log_w + log_f_rows(ssm, xs_prev, take(targets, tid), t))

    def exact_rows(k, target_ids):
        return jax.vmap(one_exact)(jax.random.split(k, target_ids.shape[0]), target_ids)

    if log_bound is None:
        keys = jax.random.split(key, num_items)
        if chunk >= num_items:
            idx = jax.vmap(one_exact)(keys, item_target)
        else:  # bound the memory of the (items x N) log-density rows
            idx = jax.lax.map(lambda a: one_exact(*a), (keys, item_target), batch_size=chunk)
        stats = BackwardStats(jnp.zeros(()), jnp.asarray(num_items, jnp.int32))
        return idx.reshape(m, num_draws), stats

    cdf = resampling.cumulative_sum(jnp.exp(log_w))
    table = guide_table(cdf / cdf[-1])
    k_rounds, k_fallback = jax.random.split(key)
    levels = buffer_levels(num_items, max_trials)

    def rounds(k, buffer, valid, level: BufferLevel, leave_at: int):
        """Accept–reject on the draws ``buffer[valid]``, ``level.proposals`` proposals per
        draw per round (the first accepted one is kept: the same law as one proposal per
        round), until at most ``leave_at`` are pending or ``level.max_rounds`` rounds ran."""
        size, per_round = buffer.shape[0], level.proposals
        item_x = take(targets, jnp.repeat(item_target[buffer], per_round))
        first_slot = jnp.arange(size) * per_round

        def cond(carry):
            r, _, done, _ = carry
            return (r < level.max_rounds) & (jnp.sum(~done) > leave_at)

        def body(carry):
            r, idx, done, trials = carry
            k_u, k_acc = jax.random.split(jax.random.fold_in(k, r))
            u = jax.random.uniform(k_u, (size * per_round,), cdf.dtype)
            cand = guided_inverse_cdf(table, u)
            log_f = log_f_pairs(ssm, take(xs_prev, cand), item_x, t)
            log_u = jnp.log(jax.random.uniform(k_acc, (size * per_round,), cdf.dtype))
            ok = (log_u < log_f - log_bound).reshape(size, per_round)
            first = jnp.argmax(ok, axis=1)
            accept = ~done & jnp.any(ok, axis=1)
            used = jnp.where(accept, first + 1, per_round)
            trials = trials + jnp.where(done, 0, used)
            idx = jnp.where(accept, cand[first_slot + first], idx)
            return r + 1, idx, done | accept, trials

        init = (jnp.zeros((), jnp.int32), jnp.zeros(size, jnp.int32), ~valid,
                jnp.zeros(size, jnp.int32))  # fmt: skip
        _, idx, done, trials = jax.lax.while_loop(cond, body, init)
        return idx, done & valid, trials

    idx = jnp.zeros(num_items, jnp.int32)
    done = jnp.zeros(num_items, bool)
    trials = jnp.zeros(num_items, jnp.int32)
    buffer = jnp.arange(num_items, dtype=jnp.int32)
    valid = jnp.ones(num_items, bool)
    for i, level in enumerate(levels):
        last = i == len(levels) - 1
        leave_at = 0 if last else levels[i + 1].size
        idx_b, acc_b, trials_b = rounds(
            jax.random.fold_in(k_rounds, i), buffer, valid, level, leave_at
        )
        target = jnp.where(valid, buffer, num_items)  # out of range: dropped
        idx = idx.at[target].set(idx_b, mode="drop")
        done = done.at[target].set(acc_b, mode="drop")
        trials = trials.at[target].add(trials_b, mode="drop")
        if not last:  # the pending draws move to a smaller buffer (any overflow: exact)
            (slots,) = jnp.nonzero(valid & ~acc_b, size=leave_at, fill_value=level.size)
            valid = slots < level.size
            buffer = jnp.where(valid, buffer[jnp.minimum(slots, level.size - 1)], 0)
    num_pending = jnp.sum(~done).astype(jnp.int32)

    # ---- exact fallback for the draws still pending, ``fallback_chunk`` at a time
    def fb_cond(carry):
        _, done, _ = carry
        return ~jnp.all(done)

    def fb_body(carry):
        idx, done, p = carry
        (pending,) = jnp.nonzero(~done, size=fallback_chunk, fill_value=num_items)
        valid = pending < num_items
        safe = jnp.where(valid, pending, 0)
        new = exact_rows(jax.random.fold_in(k_fallback, p), item_target[safe])
        idx = idx.at[pending].set(new, mode="drop")
        done = done.at[pending].set(True, mode="drop")
        return idx, done, p + 1

    idx, _, _ = jax.lax.while_loop(fb_cond, fb_body, (idx, done, jnp.zeros((), jnp.int32)))
    stats = BackwardStats(jnp.mean(trials.astype(jnp.float32)), num_pending)
    return idx.reshape(m, num_draws), stats


def mcmc_backward_indices(
    key, ssm: StateSpaceModel, log_weights_prev, xs_prev, targets, ancestors, t, *,
    num_draws: int = 1, num_steps: int = MCMC_STEPS,
):  # fmt: skip
    """Backward indices by independent Metropolis–Hastings started at the ancestors (Dau &
    Chopin 2023): ``num_draws`` chains per target, each ``num_steps`` steps with proposal
    ``j ~ W_{t-1}`` and acceptance ``min(1, f_t(x | x_{t-1}^j) / f_t(x | x_{t-1}^J))``, so
    that the backward kernel ``Lambda(m, .)`` is invariant. Each draw costs ``num_steps``
    transition densities and guide-table lookups, whatever the model.

    The other parameters and the return value are those of ``backward_indices``, with
    ``stats.mean_trials`` the acceptance rate of the Metropolis–Hastings steps.

    Parameters
    ----------
    ancestors : Array of shape (M,), int
        The index at ``t - 1`` each target descends from (the filter's ``ancestors``;
        ``arange(N)`` after a step without resampling).
    num_steps : int
        Metropolis–Hastings steps per draw.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> xs_prev = jax.random.normal(jax.random.key(0), (1000,))
    >>> targets = 0.9 * xs_prev + jax.random.normal(jax.random.key(1), (1000,))
    >>> idx, stats = mcmc_backward_indices(jax.random.key(2), ssm, jnp.zeros(1000), xs_prev,
    ...                                    targets, jnp.arange(1000), 1, num_draws=2)
    >>> idx.shape, 0.0 < float(stats.mean_trials) < 1.0
    ((1000, 2), True)
    """
    m = jax.tree.leaves(targets)[0].shape[0]
    num_items = m * num_draws
    log_w, _ = resampling.log_normalize(log_weights_prev)
    cdf = resampling.cumulative_sum(jnp.exp(log_w))
    table = guide_table(cdf / cdf[-1])
    item_x = take(targets, jnp.repeat(jnp.arange(m, dtype=jnp.int32), num_draws))

    def log_f(idx):
        value = log_f_pairs(ssm, take(xs_prev, idx), item_x, t)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    current = jnp.repeat(jnp.asarray(ancestors, jnp.int32), num_draws)

    def step(carry, k):
        current, log_f_current, accepted = carry
        k_prop, k_acc = jax.random.split(k)
        proposal = guided_inverse_cdf(table, jax.random.uniform(k_prop, (num_items,), cdf.dtype))
        log_f_proposal = log_f(proposal)
        log_u = jnp.log(jax.random.uniform(k_acc, (num_items,), cdf.dtype))
        accept = log_u < log_f_proposal - log_f_current
        # a current state of zero density (-inf) accepts any proposal of positive density
        accept = accept | (jnp.isneginf(log_f_current) & (log_f_proposal > -jnp.inf))
        current = jnp.where(accept, proposal, current)
        log_f_current = jnp.where(accept, log_f_proposal, log_f_current)
        return (current, log_f_current, accepted + accept), None

    init = (current, log_f(current), jnp.zeros(num_items, jnp.int32))
    (idx, _, accepted), _ = jax.lax.scan(step, init, jax.random.split(key, num_steps))
    rate = jnp.mean(accepted.astype(jnp.float32)) / max(num_steps, 1)
    return idx.reshape(m, num_draws), BackwardStats(rate, jnp.zeros((), jnp.int32))


def resolve_bound(ssm, xs_prev, t, method, log_transition_bound):
    """The log-bound to use (``None`` = exact draws), per ``method``."""
    n = jax.tree.leaves(xs_prev)[0].shape[0]
    if method in ("exact", "mcmc") or (method == "auto" and n < AUTO_EXACT_BELOW):
        return None
    bound = population_log_bound(ssm, xs_prev, t, log_transition_bound)
    if bound is None and method == "rejection":
        raise ValueError(
            "method='rejection' needs a bound on the transition density: pass "
            "log_transition_bound=..., or use a Normal / MultivariateNormal transition"
        )
    return bound


def check_method(method, allowed=METHODS):
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")


def check_trials(max_trials):
    return kernels.check_num_particles(max_trials, "max_trials")
