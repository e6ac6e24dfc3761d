"""Draws from the backward kernel of a particle filter,

    Lambda_t(m, j) ∝ W_{t-1}^j f_t(x_t^m | x_{t-1}^j),     j = 1..N,

the step shared by FFBS, PaRIS and particle Gibbs with backward sampling.

Two exact samplers, and one consistent MCMC sampler for PaRIS:

- ``exact``: one row of ``N`` log-densities per target (shared by its ``K`` draws) and an
  inverse-CDF draw per draw, ``O(N)``
  (``categorical_row``: the row's cumulative sums in blocks, so a draw costs one pass over
  the row and two short cumulative sums instead of one long one);
- accept–reject (Douc, Garivier, Moulines & Olsson 2011, Alg. 1), ``O(1)`` on average,
  with a *flattened* proposal: ``j`` is proposed with probability ``∝ max(W^j, c)``,
  ``c = FLATTEN_FLOOR / N``, and accepted with probability
  ``min(W^j / c, 1) f(x | x^j) / bound`` (see ``flattened_proposal`` for why the draws
  are exact). All pending draws get proposals at once per *round* (the first accepted
  one is kept); once at most half a buffer is pending, the pending draws move to a buffer
  half its size with twice the proposals per draw per round, so each round's work
  follows the number of pending draws instead of the slowest draw, and the sequential
  loop stays a few rounds long (``buffer_levels``). The buffers stop where a round would
  cost about as much as exact draws for its pending draws, and a stage stops as soon as
  a round accepts fewer draws than an exact draw costs in proposals (``EXACT_DRAW_RATIO``;
  the acceptance rates have a heavy tail, so the last rounds of a stage would otherwise
  spend most of the work on a few hard draws). The draws left then are made exactly
  (``categorical_row``; one row of densities per target serves all its pending draws), so
  every draw is exact whatever the bound's quality. (Stopping on
  the *number* of acceptances keeps every draw exact: an accepted proposal's value is
  independent of when, and of how many, proposals were accepted.)

- ``mcmc`` (PaRIS only; Dau & Chopin 2023, "On backward smoothing algorithms"): each draw
  is the target's own ancestor moved by ``MCMC_STEPS`` independent Metropolis–Hastings
  steps that leave the backward kernel invariant (proposal ``j ~ W``, acceptance
  ``min(1, f(x | x^j) / f(x | x^current))``). Not an exact draw, but PaRIS stays
  consistent; a fixed cost per draw with no loop of unknown length and no bound needed.

Proposals use an inverse CDF accelerated by a guide table (Chen & Asau 1974): a power-of-two
number of equal buckets of ``[0, 1)``, each knowing the first particle its interval can map
to, leaves a short binary search (``log2`` of the widest bucket's particle count) instead of
``log2 N`` steps. It returns exactly ``searchsorted(cdf, u)``. The flattened proposal gives
every particle a probability of at least ``c / (1 + FLATTEN_FLOOR) = 1 / (2 N)``, so with
``2 N`` buckets or more (``PROPOSAL_BUCKETS``) no bucket holds two boundaries of its CDF and
a lookup is ``first[b] + (cdf[first[b]] <= u)``, two independent loads and no search,
whatever the weights.
Since no bucket holds two boundaries, the table is built from a bit per bucket
(``sparse_first``: popcounts and a prefix sum over ``B / 32`` words) rather than a
histogram and a prefix sum over all ``B`` buckets.

Random numbers: one 64-bit Threefry block (two 32-bit words) per proposal, counter
``(stage and round, proposal)`` under the call's key (``round_counter``; the exact
fallback's uniforms likewise, one block per draw, counters from ``FALLBACK_COUNTER``),
hashed by an unrolled Threefry-2x32 that is bit-identical to ``jax.random``'s
(``round_bits``; other PRNG implementations use ``jax.random.bits``): the first word's
top 24 bits are the inverse-CDF uniform, the second's the acceptance uniform
(``unit_uniform``). A round's words are computed once into memory on CPU
(``prng.in_memory``), not re-hashed inside each fusion that reads them, and packed two to
an entry (``prng.pack_words``) so that the hash runs once per block.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from particlekit import kernels, prng, resampling
from particlekit.prng import unit_uniform
from particlekit.run import warn_if_counted_after_run
from particlekit.ssm import StateSpaceModel

__all__ = [
    "AUTO_EXACT_BELOW",
    "EXACT_DRAWS_BELOW",
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
# fewer draws than this are made exactly even with a bound: accept-reject's set-up (the
# flattened proposal's guide table, O(N), and a stage's loop) costs about as much as 32
# rows of densities (measured: one FFBS path 7x quicker exact at N = 1024...16384, 32 paths
# 1.1-1.5x, 64 paths 0.8x)
EXACT_DRAWS_BELOW = 32
# the smallest accept-reject buffer; the proposals per draw per round of the first one
SMALLEST_BUFFER = 32
FIRST_PROPOSALS = 2
# the proposals per draw per round of the accept-reject stages stop growing at
# N / EXACT_ROW_RATIO (the stages stop there)
EXACT_ROW_RATIO = 64
# an exact draw (a row of N transition densities, 1-2 ns each on CPU, against 8-10 ns per
# proposal) costs about as much as N / EXACT_DRAW_RATIO proposals: a stage stops once a
# round accepts fewer than one draw per that many proposals (16 measured best of 4..32)
EXACT_DRAW_RATIO = 16
# targets finished exactly per pass of the fallback (a pass computes this many rows of N
# densities whatever the number pending: a dozen for PaRIS, up to hundreds on FFBS's hard
# steps). 16 against 32 (two A/B runs of bench_backward_revisions.py): PaRIS 0.90-0.96x,
# PPG 0.92-1.00x, FFBS 0.95-1.04x; 8 made FFBS 13 % slower at N = 16384
FALLBACK_CHUNK = 16
# the flattened proposal's floor ``c``, in units of the mean weight ``1 / N``
FLATTEN_FLOOR = 1.0
# guide-table buckets per particle of the flattened proposal: its probabilities are at
# least 1 / (2 N), so with 2 N buckets or more a lookup needs no search
PROPOSAL_BUCKETS = 2
# binary-search steps of the guide table unrolled (the rare extra steps run in a loop)
UNROLLED_STEPS = 2
# the rounds of a stage are counted in the low bits of the random words' counter, the stage
# above them; counters from ``FALLBACK_COUNTER`` on are the exact fallback's passes
ROUND_COUNTER_BITS = 16
FALLBACK_COUNTER = 1 << 31

# ``BackwardStats.num_above_bound`` counts acceptance probabilities above
# ``exp(ABOVE_BOUND_TOLERANCE)``: a bound equal to the density's maximum, rounded
# differently, is not reported
ABOVE_BOUND_TOLERANCE = 1e-4

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


def repeat_each(tree, times: int):
    """Each entry of ``tree``'s leaves ``times`` times in a row (``jnp.repeat`` on the
    leading axis) as a broadcast and a reshape: XLA fuses it into the code that reads it
    instead of gathering a new array."""
    if times == 1:
        return tree
    return jax.tree.map(
        lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], times) + a.shape[1:]).reshape(
            (a.shape[0] * times,) + a.shape[1:]
        ),
        tree,
    )


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


def round_bits(key, r, num: int):
    """Two independent ``uint32`` words for each of ``num`` proposals of round ``r``: one
    64-bit Threefry block per proposal, counter ``(r, i)`` under ``key`` (so no block is
    used twice across rounds). Keys of other PRNG implementations: ``jax.random.bits``
    of ``fold_in(key, r)``."""
    if str(jax.random.key_impl(key)) != "threefry2x32":
        bits = jax.random.bits(jax.random.fold_in(key, r), (2, num), jnp.uint32)
        return bits[0], bits[1]
    k1, k2 = jax.random.key_data(key)
    counter = jnp.broadcast_to(jnp.asarray(r, jnp.uint32), (num,))
    return prng.threefry_2x32(k1, k2, counter, jnp.arange(num, dtype=jnp.uint32))


def counter_words(key, counter, num: int):
    """``round_bits(key, counter, num)``, computed once into memory (on CPU;
    ``prng.in_memory``): fused, XLA recomputed the unrolled hash in each of the fusions that
    read the words. And packed, the two words of a block in one ``complex64`` entry
    (``prng.pack_words``), so the fusion computing them runs the hash once per block, not
    once per word (5-15 % of PaRIS)."""
    return prng.unpack_words(
        prng.in_memory(
            lambda c: prng.pack_words(*round_bits(key, c, num)), jax.random.key_data(key),
            counter, shapes=jax.ShapeDtypeStruct((num,), jnp.complex64),
        )
    )  # fmt: skip


def round_counter(stage: int, r) -> jax.Array:
    """The counter of round ``r`` of accept–reject stage ``stage`` (``round_bits``): the
    stage in the high bits, below ``FALLBACK_COUNTER``, so that every round of every stage
    and every pass of the fallback draws its own blocks under one key (``check_trials``
    keeps a stage's rounds below ``2**ROUND_COUNTER_BITS``). Deriving a key per stage
    (``fold_in``) and per fallback pass (``fold_in``, ``split``, ``bits``) instead ran
    ``jax.random``'s rolled hash each time, a loop of five iterations of about 16 small XLA
    operations on CPU: 4-6 % of PaRIS at ``N <= 4096``."""
    return (jnp.uint32(stage) << jnp.uint32(ROUND_COUNTER_BITS)) + jnp.asarray(r, jnp.uint32)


def prefix_sums(mass: jax.Array) -> jax.Array:
    """Inclusive cumulative sums along the last axis (a few dozen entries) as a product with
    an upper-triangular matrix of ones: on CPU ``jnp.cumsum`` lowers to a ``reduce-window``
    doing ``length`` operations per entry, which on ``categorical_row``'s short rows cost
    more than the row's densities (a matrix product: 0.4-0.6x the draw's time)."""
    size = mass.shape[-1]
    upper = (jnp.arange(size)[:, None] <= jnp.arange(size)[None, :]).astype(mass.dtype)
    return jnp.matmul(mass, upper, precision=jax.lax.Precision.HIGHEST)


def first_above(mass: jax.Array, prefix: jax.Array, level: jax.Array) -> jax.Array:
    """The first entry of positive ``mass`` whose prefix sum (``prefix``, last axis) exceeds
    ``level``: the inverse CDF at ``level``, which never lands on an entry of zero mass
    whatever the rounding of the sums (the last entry of positive mass if rounding leaves
    none above ``level``; entry 0 if none is positive)."""
    size = mass.shape[-1]
    column = jnp.arange(size, dtype=jnp.int32)
    positive = mass > 0
    first = jnp.min(jnp.where(positive & (prefix > level[..., None]), column, size), axis=-1)
    last = jnp.max(jnp.where(positive, column, 0), axis=-1)
    return jnp.where(first < size, first, last)


def row_block_size(n: int) -> int:
    """Block length of ``categorical_row`` for a row of ``n``: the power of two nearest
    above ``sqrt(n)``, so both cumulative sums are ``O(sqrt n)`` long."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1)) / 2))


def row_inverse_cdf(mass: jax.Array, u_block: jax.Array, u_within: jax.Array) -> jax.Array:
    """The index drawn from ``mass`` (non-negative, not all zero) by a two-stage inverse
    CDF: the row cut into blocks of ``row_block_size(n)``, a block ``b`` drawn by inverse
    CDF over the block totals with ``u_block``, then an entry of block ``b`` by inverse
    CDF over its cumulative sums with ``u_within``. Its law is ``mass / sum(mass)``
    (``P(b) P(j | b)``, up to rounding); entries of zero mass are never drawn
    (``first_above``). The uniforms may be arrays (of one shape): one draw per pair,
    sharing the block totals."""
    n = mass.shape[0]
    size = row_block_size(n)
    num_blocks = -(-n // size)
    blocks = jnp.pad(mass, (0, num_blocks * size - n)).reshape(num_blocks, size)
    block_mass = jnp.sum(blocks, axis=1)
    block_cdf = prefix_sums(block_mass)
    b = first_above(block_mass, block_cdf, u_block * block_cdf[-1])
    within = blocks[b]
    within_cdf = prefix_sums(within)
    j = first_above(within, within_cdf, u_within * within_cdf[..., -1])
    return jnp.minimum(b * size + j, n - 1)


def categorical_row(key, logits, num: int | None = None):
    """One draw (``num`` i.i.d. draws, shape ``(num,)``) from ``softmax(logits)`` by
    ``row_inverse_cdf`` (one pass over the row and two cumulative sums of about
    ``sqrt N`` per draw, no normalisation). ``NaN`` and ``+inf`` logits count as zero
    probability; an all-zero row falls back to uniform."""
    return row_inverse_cdf(row_mass(logits), *row_uniforms(key, num))


def row_mass(logits: jax.Array) -> jax.Array:
    """``exp(logits - max)``, ``NaN`` and ``+inf`` logits as zero mass; all ones when no
    logit is finite (an all-zero row falls back to uniform)."""
    logits = jnp.where(jnp.isnan(logits) | (logits == jnp.inf), -jnp.inf, logits)
    top = jnp.max(logits)
    mass = jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0))
    return jnp.where(jnp.isfinite(top), mass, 1.0)


def row_uniforms(key, num: int | None):
    """``row_inverse_cdf``'s two uniforms (block, within) for one draw or ``num``."""
    u = unit_uniform(jax.random.bits(key, (2,) if num is None else (2, num), jnp.uint32))
    return u[0], u[1]


def row_draws(row: jax.Array, u_block: jax.Array, u_within: jax.Array):
    """Draws from ``softmax(row)`` (``row_mass``, ``row_inverse_cdf``) and whether the row
    had no finite entry (then the draws are uniform): a draw lands on a finite entry unless
    none is, so one lookup instead of a pass over the row."""
    draws = row_inverse_cdf(row_mass(row), u_block, u_within)
    return draws, ~jnp.isfinite(row[jnp.ravel(draws)[0]])


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
    threshold : Array of shape (B,)
        ``cdf[first[b]]``: when ``num_steps <= 1`` (no bucket holds two boundaries of the
        CDF), the draw of a ``u`` of bucket ``b`` is ``first[b] + (threshold[b] <= u)``,
        two independent lookups and no search.
    """

    cdf: jax.Array
    first: jax.Array
    num_steps: jax.Array
    threshold: jax.Array


def guide_table(
    cdf: jax.Array, buckets_per_particle: int = 1, *, sparse: bool = False
) -> GuideTable:
    """Build the guide table of a normalised CDF in ``O(N)`` (a histogram and a cumulative
    sum), with ``B = buckets_per_particle * 2**ceil(log2 N)`` buckets. With ``B`` a power
    of two, ``cdf[j] * B`` and ``b / B`` are exact in floating point, so
    ``cdf[j] <= b / B`` iff ``ceil(cdf[j] * B) <= b``. The CDF is first made nondecreasing
    (a parallel cumulative sum may step down by a rounding error across zero weights; the
    running maximum only runs when it does). When every probability is at least ``1 / B``,
    no bucket holds two boundaries and a lookup needs no search (``guided_inverse_cdf``).

    ``sparse``: the caller expects no bucket to hold two boundaries (the flattened
    proposal); the table is then built from a bit mask of the buckets holding one
    (``sparse_first``: popcounts and a prefix sum over ``B / 32`` words instead of a prefix
    sum over ``B`` buckets), the same table, and where a bucket does hold two (rounding;
    other CDFs) by binary searches of the bucket edges (a ``lax.cond``; less to compile than
    the histogram).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> table = guide_table(jnp.asarray([0.25, 0.5, 0.75, 1.0]), buckets_per_particle=2)
    >>> int(table.num_steps), guided_inverse_cdf(table, jnp.asarray([0.1, 0.3, 0.99])).tolist()
    (1, [0, 1, 3])
    >>> sparse = guide_table(jnp.asarray([0.25, 0.5, 0.75, 1.0]), 2, sparse=True)
    >>> bool((sparse.first == table.first).all()), int(sparse.num_steps)
    (True, 1)
    """
    n = cdf.shape[0]
    num_buckets = buckets_per_particle << max(n - 1, 1).bit_length()

    def bucket_of(cdf):
        return jnp.clip(jnp.ceil(cdf * num_buckets), 0, num_buckets + 1).astype(jnp.int32)

    def histogram_first(cdf):
        cdf = jax.lax.cond(jnp.all(cdf[1:] >= cdf[:-1]), lambda c: c, jax.lax.cummax, cdf)
        counts = jnp.zeros(num_buckets + 2, jnp.int32).at[bucket_of(cdf)].add(1)
        first = jnp.minimum(resampling.cumulative_sum(counts)[: num_buckets + 1], n - 1)
        return cdf, first, search_steps(first)

    def one_per_bucket(cdf):
        first = jnp.minimum(sparse_first(bins, num_buckets), n - 1)
        # no bucket's range is wider than one (one search step), none if ``first`` is flat
        return cdf, first, (first[0] < first[-1]).astype(jnp.int32)

    def searched_first(cdf):  # (rare: the same table as the histogram's, less to compile)
        cdf = jax.lax.cummax(cdf)
        edges = jnp.arange(num_buckets + 1, dtype=cdf.dtype) / num_buckets  # exact
        first = jnp.minimum(jnp.searchsorted(cdf, edges, side="right"), n - 1).astype(jnp.int32)
        return cdf, first, search_steps(first)

    if sparse:
        bins = bucket_of(cdf)
        # at most one boundary per bucket, in order (then the CDF is increasing)
        distinct = jnp.all(bins[1:] > bins[:-1])
        cdf, first, num_steps = jax.lax.cond(distinct, one_per_bucket, searched_first, cdf)
    else:
        cdf, first, num_steps = histogram_first(cdf)
    return GuideTable(cdf, first, num_steps, cdf[first[:-1]])


def search_steps(first: jax.Array) -> jax.Array:
    """The binary-search steps that resolve any bucket of a guide table: the bit length of
    the widest bucket's range ``first[b + 1] - first[b]``."""
    widest = jnp.max(first[1:] - first[:-1]).astype(jnp.uint32)
    return (32 - jax.lax.clz(widest)).astype(jnp.int32)


# buckets per word of ``sparse_first``'s bit mask
MASK_BITS = 32


def sparse_first(bins: jax.Array, num_buckets: int) -> jax.Array:
    """``first[b] = #{j : bins[j] <= b}`` for ``b = 0..num_buckets``, for distinct ``bins``
    in ``[0, num_buckets + 1]`` (each bucket the boundary of one particle at most): a bit
    per bucket, set where a boundary falls (a scatter of ``N`` bits into words of
    ``MASK_BITS``: the bits are distinct, so adding them sets them), then each bucket's
    count is the bits set in the words before its own (a prefix sum over the words'
    popcounts) and in its own word up to its bit, computed as a (words x bits) grid, with no
    gather. On CPU the table costs 0.7-0.85x the histogram's, whose prefix sum runs over
    all ``B`` buckets."""
    one = jnp.uint32(1)
    bits = jnp.left_shift(one, (bins % MASK_BITS).astype(jnp.uint32))
    words = jnp.zeros(num_buckets // MASK_BITS + 1, jnp.uint32).at[bins // MASK_BITS].add(bits)
    counts = jax.lax.population_count(words).astype(jnp.int32)
    before = resampling.cumulative_sum(counts) - counts
    # bits 0..i of a word, i = 0..MASK_BITS - 1 (uint32 arithmetic wraps: 2 << 31 is 0)
    up_to = jnp.left_shift(jnp.uint32(2), jnp.arange(MASK_BITS, dtype=jnp.uint32)) - one
    grid = before[:, None] + jax.lax.population_count(words[:, None] & up_to).astype(jnp.int32)
    return grid.reshape(-1)[: num_buckets + 1]


def guided_inverse_cdf(table: GuideTable, uniforms: jax.Array, unrolled: int = 0) -> jax.Array:
    """``searchsorted(cdf, u, side="right")`` (clipped to ``N - 1``) for ``u`` in ``[0, 1)``:
    the bucket of ``u`` bounds the answer to ``[first[b], first[b + 1]]``, a binary search
    of ``table.num_steps`` steps finishes it. When one step does (no bucket holds two
    boundaries), the answer is ``first[b] + (threshold[b] <= u)``: two independent lookups
    instead of a chain of dependent ones. Otherwise the first ``unrolled`` steps are
    unrolled (a search step past convergence changes nothing) and the others run in a
    loop."""
    num_buckets = table.first.shape[0] - 1
    n = table.cdf.shape[0]
    bucket = jnp.clip(jnp.floor(uniforms * num_buckets).astype(jnp.int32), 0, num_buckets - 1)

    def one_step(_):
        lo = table.first[bucket] + (table.threshold[bucket] <= uniforms).astype(jnp.int32)
        return jnp.minimum(lo, n - 1)

    def search(_):
        lo, hi = table.first[bucket], table.first[bucket + 1]

        def halve(_, bounds):
            lo, hi = bounds
            mid = (lo + hi) >> 1
            right = table.cdf[mid] <= uniforms
            return jnp.where(right, mid + 1, lo), jnp.where(right, hi, mid)

        for step in range(unrolled):
            lo, hi = halve(step, (lo, hi))
        if unrolled:
            lo, _ = jax.lax.cond(
                table.num_steps > unrolled,
                lambda b: jax.lax.fori_loop(unrolled, table.num_steps, halve, b),
                lambda b: b,
                (lo, hi),
            )
        else:
            lo, _ = jax.lax.fori_loop(0, table.num_steps, halve, (lo, hi))
        return jnp.minimum(lo, n - 1)  # cdf[-1] may round below 1

    return jax.lax.cond(table.num_steps <= 1, one_step, search, None)


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
        if jnp.shape(value) != () or not jnp.issubdtype(jnp.result_type(value), jnp.number):
            raise ValueError(
                "log_transition_bound(t) must return one number, log sup_x f_t(x | x_prev) "
                f"over every previous particle; got shape {jnp.shape(value)}, dtype "
                f"{jnp.result_type(value)}"
            )
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

    # mean number of rejection proposals per draw (0 if exact; mcmc: the MH acceptance rate)
    mean_trials: jax.Array
    num_exact: jax.Array  # number of draws made exactly (all of them in exact mode)
    # accept-reject proposals whose acceptance probability exceeded 1: the bound given is
    # below the transition density there, and the draws are not exact (0 if exact / mcmc;
    # for fewer than EXACT_DRAWS_BELOW draws, made exactly, the previous particles where
    # the density exceeds a bound given, counted when ``count_above_bound``)
    num_above_bound: jax.Array = 0
    # targets whose row of W^j f(x | x^j) had no positive finite entry (a transition
    # log-density NaN or -inf at every previous particle): their draws are uniform, not
    # backward-kernel draws (0 for mcmc; ``warn_if_degenerate``)
    num_degenerate: jax.Array = 0


class Proposal(NamedTuple):
    """The flattened accept–reject proposal (built by ``flattened_proposal``).

    Attributes
    ----------
    table : GuideTable
        Inverse CDF of ``q_j ∝ max(W_j, c)``.
    log_accept : Array of shape (N,)
        ``log min(W_j / c, 1) - log_bound``: a proposal ``j`` for the state ``x`` is
        accepted when ``log u < log f(x | x^j) + log_accept[j]``.
    """

    table: GuideTable
    log_accept: jax.Array


def flattened_proposal(log_w: jax.Array, log_bound, floor: float = FLATTEN_FLOOR) -> Proposal:
    """The accept–reject proposal for the backward kernel ``Lambda_j ∝ W_j f_j`` from
    normalised log-weights ``log_w``: propose ``j`` with probability
    ``q_j = max(W_j, c) / Z``, ``c = floor / N``, ``Z = sum_j max(W_j, c) <= 1 + floor``,
    and accept with probability ``a_j = min(W_j / c, 1) f_j / bound``.

    Exactness: ``a_j <= 1`` since ``f_j <= bound``, and ``max(W_j, c) min(W_j / c, 1) =
    W_j`` (both cases ``W_j >= c`` and ``W_j < c``), so one proposal is ``j`` *and*
    accepted with probability ``q_j a_j = W_j f_j / (Z bound)``, proportional to
    ``Lambda_j``: the first accepted proposal is an exact draw (the target over the
    proposal, ``W_j f_j / q_j``, is at most ``Z bound``, the accept–reject envelope). The
    acceptance rate is that of the proposal ``j ~ W`` divided by ``Z`` (at most
    ``1 + floor``, close to 1 when few weights are below ``c``). In exchange every
    ``q_j >= c / Z``: the guide table's buckets hold a few particles each, so the search
    takes one or two steps, and zero-weight particles stay out of the search's way."""
    cdf = flattened_cdf(log_w, floor)
    table = guide_table(cdf, PROPOSAL_BUCKETS, sparse=True)
    log_accept = jnp.minimum(log_w - math.log(floor / log_w.shape[0]), 0.0) - log_bound
    return Proposal(table, log_accept.astype(cdf.dtype))


def flattened_cdf(log_w: jax.Array, floor: float = FLATTEN_FLOOR) -> jax.Array:
    """The normalised CDF of the flattened proposal ``q_j ∝ max(W_j, c)``, ``c = floor / N``
    (``flattened_proposal``), from normalised log-weights ``log_w``."""
    q = jnp.exp(jnp.maximum(log_w, math.log(floor / log_w.shape[0])))
    cdf = resampling.cumulative_sum(q)
    return cdf / cdf[-1]


def round_proposals(ssm: StateSpaceModel, key, r, proposal: Proposal, xs_prev, item_x, t):
    """Round ``r`` of accept–reject: one proposal ``j`` from ``proposal`` for each entry
    of ``item_x`` (a state at ``t``). Returns the candidates ``j``, the log-uniforms and
    the log acceptance probabilities ``log f_t(item_x | xs_prev[j]) + log_accept[j]``
    (accept where the first is below the last; NaN densities never are). The round's
    words: ``counter_words``."""
    bits_j, bits_u = counter_words(key, r, jax.tree.leaves(item_x)[0].shape[0])
    cand = guided_inverse_cdf(proposal.table, unit_uniform(bits_j), UNROLLED_STEPS)
    log_f = log_f_pairs(ssm, take(xs_prev, cand), item_x, t)
    log_u = jnp.log(unit_uniform(bits_u))
    return cand, log_u, log_f + proposal.log_accept[cand]


class BufferLevel(NamedTuple):
    """One accept–reject stage (static): ``size`` draws, ``proposals`` per draw per round,
    at most ``max_rounds`` rounds."""

    size: int
    proposals: int
    max_rounds: int


def buffer_levels(num_items: int, max_trials: int, num_particles: int) -> list[BufferLevel]:
    """The accept–reject stages: buffers ``M, M / 2, M / 4, ...`` with ``FIRST_PROPOSALS``,
    twice as many, four times as many, ... proposals per draw per round (the draws left
    for the later stages are the hard ones, with low acceptance rates), so that each
    round's work ``size * proposals`` stays ``FIRST_PROPOSALS * M``. The stages stop at
    ``SMALLEST_BUFFER`` draws, or when a round would give each draw more than
    ``N / EXACT_ROW_RATIO`` proposals: the draws still pending then are made exactly,
    ``O(N)`` each. Each stage runs until its pending draws fit the next buffer, for at
    most ``max_trials // 4`` rounds, or until a round accepts too few draws to be worth
    its cost (``backward_indices``, ``EXACT_DRAW_RATIO``). Few rounds keep the sequential
    loop short (each iteration has a fixed cost, and the heavy tail of the acceptance rates
    would otherwise keep it going for the slowest draw)."""
    budget = max(FIRST_PROPOSALS, num_particles // EXACT_ROW_RATIO)
    rounds = max(1, max_trials // 4)
    levels = [BufferLevel(num_items, FIRST_PROPOSALS, rounds)]
    while levels[-1].size // 2 >= SMALLEST_BUFFER and 2 * levels[-1].proposals <= budget:
        levels.append(BufferLevel(levels[-1].size // 2, 2 * levels[-1].proposals, rounds))
    return levels


class Pending(NamedTuple):
    """A buffer of draws: ``slots[i]`` is a draw's index in ``0..M-1``, or ``M`` for an
    empty slot (``valid[i]`` false), which is never proposed for nor written back."""

    slots: jax.Array
    valid: jax.Array


# lanes of ``compact``'s prefix sum: a scan over ``len / COMPACT_LANES`` rows of this width
COMPACT_LANES = 128


def compact(mask: jax.Array, values: jax.Array, size: int, fill) -> jax.Array:
    """``values[mask]`` packed at the front of an array of ``size`` entries (the rest
    ``fill``; entries beyond ``size`` left out), in a fixed order that depends on ``mask``
    only: the entries seen as a ``(len / COMPACT_LANES, COMPACT_LANES)`` array, taken
    column by column. The ranks come from a ``lax.scan`` down the rows (a running sum of
    ``COMPACT_LANES``-wide vectors) and the column totals' prefix sum, with no transpose:
    on CPU that is 2x cheaper than a prefix sum in row order and 4x cheaper than
    ``jnp.nonzero`` (the order of the pending draws does not change their law)."""
    n = mask.shape[0]
    rows = -(-n // COMPACT_LANES)
    counts = jnp.pad(mask.astype(jnp.int32), (0, rows * COMPACT_LANES - n))

    def running_sum(total, row):
        total = total + row
        return total, total

    _, within = jax.lax.scan(
        running_sum, jnp.zeros(COMPACT_LANES, jnp.int32), counts.reshape(rows, COMPACT_LANES)
    )
    column_totals = within[-1]
    rank = (within + (jnp.cumsum(column_totals) - column_totals)).reshape(-1)[:n] - 1
    dest = jnp.where(mask & (rank < size), rank, size)
    return jnp.full(size, fill, values.dtype).at[dest].set(values, mode="drop")


def next_buffer(buffer: Pending, accepted: jax.Array, size: int, num_items: int) -> Pending:
    """The draws of ``buffer`` still pending (valid and not accepted), packed into a buffer
    of ``size`` slots; the rest of it empty (slot ``num_items``). Pending draws beyond
    ``size`` are left out (they stay pending and are made exactly)."""
    slots = compact(buffer.valid & ~accepted, buffer.slots, size, num_items)
    return Pending(slots, slots < num_items)


def write_back(
    values: jax.Array, slots: jax.Array, new: jax.Array, keep: jax.Array, *, add: bool = False
) -> jax.Array:
    """``values[slots] = new`` (``+=`` when ``add``) where ``keep``; the other entries
    (empty slots included) are pointed past the end and dropped, so they never write."""
    slots = jnp.where(keep, slots, values.shape[0])
    ref = values.at[slots]
    return ref.add(new, mode="drop") if add else ref.set(new, mode="drop")


def _check_populations(log_weights_prev, xs_prev, targets) -> None:
    """A ``ValueError`` before tracing when the log-weights are not one per particle of
    ``xs_prev`` (a broadcasting TypeError from deep inside) or ``targets`` has no leading
    axis (shapes only: fine under ``jit``)."""
    if jnp.ndim(log_weights_prev) != 1:
        raise ValueError(
            f"log_weights_prev must have shape (N,), got {jnp.shape(log_weights_prev)}"
        )
    n = jnp.shape(log_weights_prev)[0]
    shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(xs_prev)]
    if not shapes or any(shape[:1] != (n,) for shape in shapes):
        raise ValueError(
            f"xs_prev must hold N = {n} particles (one per log-weight) on its leading axis, "
            f"got leaves of shapes {shapes}"
        )
    if not jax.tree.leaves(targets) or any(jnp.ndim(a) == 0 for a in jax.tree.leaves(targets)):
        raise ValueError("targets must be a population (M, ...) of states at t")


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
    count_above_bound: bool = False,
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
        ``log`` of a bound of ``f_t`` over ``xs_prev``: accept–reject (flattened proposal,
        see ``flattened_proposal``) in shrinking buffers, then exact draws for the rest.
        ``None``, or fewer than ``EXACT_DRAWS_BELOW`` draws in all (``M K``): exact draws
        (quicker there than accept–reject's set-up; the same law).
    max_trials : int
        Sets the accept–reject stages' length (at most ``max_trials // 4`` rounds each);
        the draws still pending after them are made exactly (see ``buffer_levels``).
    exact_chunk : int, optional
        Number of pending draws finished exactly per pass (memory ``exact_chunk * N``).
    count_above_bound : bool
        Count the proposals whose acceptance probability exceeds 1 (``stats``), to check
        a bound that may be too small (a reduction per round; the smoothers turn it on for
        a ``log_transition_bound`` given by the user).

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
    >>> draw = jax.jit(lambda key: backward_indices(
    ...     key, ssm, jnp.zeros(1000), xs_prev, targets, 1, num_draws=2,
    ...     log_bound=max_log_density(dist.Normal(0.0, 1.0))))  # jit: its loops run compiled
    >>> idx, stats = draw(jax.random.key(2))
    >>> idx.shape
    (1000, 2)
    """
    num_draws = kernels.check_num_particles(num_draws, "num_draws")
    max_trials = check_trials(max_trials)
    _check_populations(log_weights_prev, xs_prev, targets)
    n = log_weights_prev.shape[0]
    m = jax.tree.leaves(targets)[0].shape[0]
    num_items = m * num_draws
    log_w, _ = resampling.log_normalize(log_weights_prev)
    item_target = jnp.repeat(jnp.arange(m, dtype=jnp.int32), num_draws)
    # exact passes (one row of densities per target, shared by its draws): all targets at
    # once (memory-bounded) in exact mode; small chunks for the few rejection fallbacks
    chunk = exact_chunk or max(1, min(m, (1 << 22) // max(n, 1)))
    fallback_chunk = exact_chunk or max(1, min(chunk, FALLBACK_CHUNK, m))

    def draws_of(u_block, u_within, tid):
        """The ``num_draws`` draws of target ``tid``, exact, from one row of densities and
        the uniforms of ``row_inverse_cdf``, and whether the row had no positive finite
        entry (then the draws are uniform)."""
        row = log_w + log_f_rows(ssm, xs_prev, take(targets, tid), t)
        return row_draws(row, u_block, u_within)

    # few draws made exactly although a bound was given by the user: the bound is checked
    # on their rows instead of proposals (the previous particles of positive weight where
    # the density exceeds it)
    check_rows = log_bound is not None and count_above_bound

    def exact_draws(kk, tid):
        """``draws_of`` with uniforms from ``kk``, and the row's count of densities above
        the bound (``check_rows``; else 0)."""
        u_block, u_within = row_uniforms(kk, num_draws)
        log_f = log_f_rows(ssm, xs_prev, take(targets, tid), t)
        draws, degenerate = row_draws(log_w + log_f, u_block, u_within)
        if not check_rows:
            return draws, degenerate, jnp.zeros((), jnp.int32)
        too_high = (log_f - log_bound > ABOVE_BOUND_TOLERANCE) & (log_w > -jnp.inf)
        return draws, degenerate, jnp.sum(too_high, dtype=jnp.int32)

    def fallback_rows(p, target_ids):
        """``exact_draws`` for the targets of pass ``p`` of the accept–reject fallback,
        their uniforms from the blocks of counter ``FALLBACK_COUNTER + p`` under ``key``
        (as a round's words: one block per draw)."""
        counter = jnp.uint32(FALLBACK_COUNTER) + p.astype(jnp.uint32)
        bits = counter_words(key, counter, target_ids.shape[0] * num_draws)
        u_block, u_within = (unit_uniform(b).reshape(-1, num_draws) for b in bits)
        return jax.vmap(draws_of)(u_block, u_within, target_ids)

    if log_bound is None or num_items < EXACT_DRAWS_BELOW:
        keys = jax.random.split(key, m)
        target_ids = jnp.arange(m, dtype=jnp.int32)
        if chunk >= m:
            idx, degenerate, above = jax.vmap(exact_draws)(keys, target_ids)
        else:  # bound the memory of the (targets x N) log-density rows
            idx, degenerate, above = jax.lax.map(
                lambda a: exact_draws(*a), (keys, target_ids), batch_size=chunk
            )
        stats = BackwardStats(
            jnp.zeros(()), jnp.asarray(num_items, jnp.int32), jnp.sum(above, dtype=jnp.int32),
            jnp.sum(degenerate, dtype=jnp.int32),
        )  # fmt: skip
        return idx, stats

    proposal = flattened_proposal(log_w, log_bound)
    levels = buffer_levels(num_items, max_trials, n)  # (at most 31: the buffers halve)
    exact_cost = n / EXACT_DRAW_RATIO  # an exact draw's cost, in proposals

    def rounds(stage: int, buffer: Pending, level: BufferLevel, leave_at: int):
        """Accept–reject on the draws of ``buffer``, ``level.proposals`` proposals per
        draw per round (the first accepted one is kept: the same law as one proposal per
        round), until at most ``leave_at`` are pending, ``level.max_rounds`` rounds ran,
        or a round accepted too few draws to be worth its cost (fewer than one per
        ``exact_cost`` proposals: exact draws are then cheaper for the draws left).
        Returns the buffer's indices, accepted flags and proposal counts (all zero and
        false at empty slots)."""
        size, per_round = buffer.slots.shape[0], level.proposals
        if stage == 0:  # the first buffer holds every draw in order: no gather
            slot_x = repeat_each(targets, num_draws)
        else:  # each slot's target, once per stage
            slot_x = take(targets, item_target[jnp.minimum(buffer.slots, num_items - 1)])

        round_cost = size * per_round  # proposals per round, empty slots included

        def cond(carry):
            r, _, done, _, last_accepted, _ = carry
            worth_it = (r == 0) | (last_accepted.astype(jnp.float32) * exact_cost >= round_cost)
            return (r < level.max_rounds) & (jnp.sum(~done) > leave_at) & worth_it

        def body(carry):
            r, idx, done, trials, _, above = carry
            cand, log_u, log_a = round_proposals(
                ssm, key, round_counter(stage, r), proposal, xs_prev,
                repeat_each(slot_x, per_round), t,
            )  # fmt: skip
            ok = log_u < log_a  # NaN densities: rejected
            # an acceptance probability above 1: the bound is too small (counted, reported)
            if count_above_bound:
                too_high = (log_a > ABOVE_BOUND_TOLERANCE).reshape(size, per_round)
                above = above + jnp.sum(too_high & ~done[:, None], dtype=jnp.int32)
            if per_round == 1:
                accept, picked, used = ~done & ok, cand, 1
            else:
                # the first accepted proposal of each slot (per_round if none) by a plain
                # min-reduction: XLA's CPU argmax is a variadic reduction it does not
                # vectorise
                column = jnp.arange(per_round, dtype=jnp.int32)
                first = jnp.min(jnp.where(ok.reshape(size, per_round), column, per_round), axis=1)
                accept = ~done & (first < per_round)
                first = jnp.minimum(first, per_round - 1)
                picked = cand[jnp.arange(size) * per_round + first]
                used = jnp.where(accept, first + 1, per_round)
            trials = trials + jnp.where(done, 0, used)
            idx = jnp.where(accept, picked, idx)
            return r + 1, idx, done | accept, trials, jnp.sum(accept, dtype=jnp.int32), above

        init = (jnp.zeros((), jnp.int32), jnp.zeros(size, jnp.int32), ~buffer.valid,
                jnp.zeros(size, jnp.int32), jnp.zeros((), jnp.int32),
                jnp.zeros((), jnp.int32))  # fmt: skip
        _, idx, done, trials, _, above = jax.lax.while_loop(cond, body, init)
        return idx, done & buffer.valid, trials, above

    idx = jnp.full(num_items, -1, jnp.int32)  # -1: pending
    total_trials = jnp.zeros((), jnp.float32)
    num_above_bound = jnp.zeros((), jnp.int32)
    buffer = Pending(jnp.arange(num_items, dtype=jnp.int32), jnp.ones(num_items, bool))
    for i, level in enumerate(levels):
        last = i == len(levels) - 1
        leave_at = 0 if last else levels[i + 1].size
        idx_b, acc_b, trials_b, above_b = rounds(i, buffer, level, leave_at)
        num_above_bound = num_above_bound + above_b
        if i == 0:  # the first buffer holds every draw, in order
            idx = jnp.where(acc_b, idx_b, -1)
        else:
            idx = write_back(idx, buffer.slots, idx_b, acc_b)
        total_trials = total_trials + jnp.sum(trials_b.astype(jnp.float32))
        if not last:  # the pending draws move to a smaller buffer (any overflow: exact)
            buffer = next_buffer(buffer, acc_b, leave_at, num_items)
    pending = idx < 0
    num_pending = jnp.sum(pending).astype(jnp.int32)

    # ---- exact fallback: every target with a pending draw queued once, ``fallback_chunk``
    # per pass; one row of densities per target draws all its pending draws
    pending_targets = jnp.any(pending.reshape(m, num_draws), axis=1)
    num_pending_targets = jnp.sum(pending_targets).astype(jnp.int32)
    num_passes = -(-m // fallback_chunk)
    queue = compact(pending_targets, jnp.arange(m, dtype=jnp.int32), num_passes * fallback_chunk, m)
    draw_offsets = jnp.arange(num_draws, dtype=jnp.int32)

    def exact_pass(carry):
        """Exact draws for the queue's pass ``p`` (``m``: an empty entry, dropped)."""
        idx, p, num_degenerate = carry
        target_ids = jax.lax.dynamic_slice(queue, (p * fallback_chunk,), (fallback_chunk,))
        new, degenerate = fallback_rows(p, jnp.minimum(target_ids, m - 1))
        num_degenerate = num_degenerate + jnp.sum(degenerate & (target_ids < m), dtype=jnp.int32)
        draws = (target_ids[:, None] * num_draws + draw_offsets).reshape(-1)
        keep = (draws < num_items) & pending[jnp.minimum(draws, num_items - 1)]
        return write_back(idx, draws, new.reshape(-1), keep), p + 1, num_degenerate

    idx, _, num_degenerate = jax.lax.while_loop(
        lambda c: c[1] * fallback_chunk < num_pending_targets,
        exact_pass,
        (idx, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)),
    )
    stats = BackwardStats(total_trials / num_items, num_pending, num_above_bound, num_degenerate)
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
    # (resampling's CDF: underflowing weights floored, so the zero-flattening pass runs
    # only for weights that are exactly zero)
    table = guide_table(resampling._cdf(log_weights_prev))
    dtype = table.cdf.dtype
    item_x = repeat_each(targets, num_draws)

    def log_f(idx):
        value = log_f_pairs(ssm, take(xs_prev, idx), item_x, t)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    current = jnp.repeat(jnp.asarray(ancestors, jnp.int32), num_draws)

    def uniforms(k):
        k_prop, k_acc = jax.random.split(prng.population_key(k))  # draws unrolled, same bits
        return tuple(jax.random.uniform(kk, (num_items,), dtype) for kk in (k_prop, k_acc))

    uniforms_shape = (jax.ShapeDtypeStruct((num_items,), dtype),) * 2

    def step(carry, k):
        current, log_f_current, accepted = carry
        # the uniforms in memory, computed once (on CPU; see ``prng.in_memory``)
        u_prop, u_acc = prng.in_memory(uniforms, jax.random.key_data(k), k, shapes=uniforms_shape)
        proposal = guided_inverse_cdf(table, u_prop)
        log_f_proposal = log_f(proposal)
        log_u = jnp.log(u_acc)
        accept = log_u < log_f_proposal - log_f_current
        # a current state of zero density (-inf) accepts any proposal of positive density
        accept = accept | (jnp.isneginf(log_f_current) & (log_f_proposal > -jnp.inf))
        current = jnp.where(accept, proposal, current)
        log_f_current = jnp.where(accept, log_f_proposal, log_f_current)
        return (current, log_f_current, accepted + accept), None

    init = (current, log_f(current), jnp.zeros(num_items, jnp.int32))
    (idx, _, accepted), _ = jax.lax.scan(step, init, jax.random.split(key, num_steps))
    rate = jnp.mean(accepted.astype(jnp.float32)) / max(num_steps, 1)
    no_bound = jnp.zeros((), jnp.int32)
    return idx.reshape(m, num_draws), BackwardStats(rate, jnp.zeros((), jnp.int32), no_bound)


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


def check_log_transition_bound(value):
    """A number given as ``log_transition_bound`` must be a finite scalar or ``+inf`` (a
    callable of ``t`` is checked when called, by its use: not here). Returns a number as a
    Python float (a static, hashable argument), a callable or None as it is."""
    if value is None or callable(value):
        return value
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            "log_transition_bound must be a concrete number or a function of t, not a traced "
            "value (it is a static setting of the compiled backward pass)"
        )
    array = np.asarray(value)  # NumPy: under an outer jit jnp would stage the checks
    if (
        array.shape != ()
        or not np.issubdtype(array.dtype, np.number)
        or np.issubdtype(array.dtype, np.complexfloating)
    ):
        raise ValueError(f"log_transition_bound must be a real number, got {value!r}")
    if bool(np.isnan(array)) or bool(array == -np.inf):
        raise ValueError(
            f"log_transition_bound must be log sup_x f_t(x | x_prev), a number above -inf, "
            f"got {value!r} (-inf would accept every proposal, NaN none)"
        )
    # a Python float: the bound is a static argument of the compiled passes (hashable; a
    # 0-d jax.Array is not)
    return float(array)


def warn_if_above_bound(num_above_bound, where: str, log_transition_bound) -> None:
    """After a run (also traced: ``jax.debug.callback``, once per call), a
    ``RuntimeWarning`` when accept-reject proposals had an acceptance probability above 1
    (``BackwardStats.num_above_bound``): the bound given is too small and the draws are
    not exact. Nothing when no bound was given (the derived ones are the densities'
    maxima)."""
    if log_transition_bound is None:
        return
    warn_if_counted_after_run(
        num_above_bound,
        f"{where}: {{count}} accept-reject backward proposals had an acceptance probability "
        "above 1 (or, where fewer than EXACT_DRAWS_BELOW draws were made exactly, previous "
        "particles a transition density above the bound), so log_transition_bound is below "
        "the transition density and the accept-reject draws are not exact. Pass a bound of "
        "log sup_x f_t(x | x_prev) (it may depend on t), or method='exact'",
    )


def warn_if_degenerate(num_degenerate, where: str) -> None:
    """After a run (also traced: ``jax.debug.callback``, once per call), a
    ``RuntimeWarning`` when some backward draws came from rows with no positive finite
    transition density (``BackwardStats.num_degenerate``): they were drawn uniformly, so the
    smoothed paths or estimates are not those of the model. Such rows arise when
    ``transition(x_prev, t).log_prob`` is NaN or ``-inf`` at every previous particle, e.g. a
    negative scale, which the filters never evaluate (they only sample the transition)."""
    warn_if_counted_after_run(
        num_degenerate,
        f"{where}: for {{count}} targets of backward draws no previous particle had a "
        "positive, finite transition density (transition(x_prev, t).log_prob was NaN or -inf "
        "at every one), so their draws were uniform: the result is not the model's smoother. "
        "Check the transition's log-density (e.g. a negative scale)",
    )


def check_method(method, allowed=METHODS):
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")


def check_trials(max_trials):
    """A positive ``max_trials`` whose stages' rounds fit the counter (``round_counter``)."""
    max_trials = kernels.check_num_particles(max_trials, "max_trials")
    if max_trials // 4 >= 1 << ROUND_COUNTER_BITS:
        raise ValueError(
            f"max_trials must be below {4 << ROUND_COUNTER_BITS} (the accept-reject stages "
            f"run max_trials // 4 rounds each), got {max_trials}"
        )
    return max_trials
