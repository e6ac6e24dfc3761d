"""Backward-kernel samplers: the guide-table inverse CDF is ``searchsorted`` exactly, and the
staged accept–reject draws have the backward kernel's law (chi-square against the exact
probabilities), through every stage and the exact fallback."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

import particlekit as pk
from particlekit import backward

SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)
LOG_BOUND = float(backward.max_log_density(dist.Normal(0.0, 1.0)))


def _weights(kind, n, key):
    if kind == "uniform":
        return jnp.ones(n)
    if kind == "zeros":  # runs of zero weight at the start, middle and end
        w = jax.random.uniform(key, (n,))
        return w * (jnp.arange(n) % 3 == 1)
    if kind == "spike":
        return jnp.full(n, 1e-6).at[n // 2].set(1.0)
    return jnp.exp(3.0 * jax.random.normal(key, (n,)))


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 1025])
@pytest.mark.parametrize(
    "kind,unrolled,buckets",
    [
        (kind, unrolled, 1)
        for kind in ("uniform", "zeros", "spike", "lognormal")
        for unrolled in (0, 2)
    ]
    + [("zeros", 2, 2), ("lognormal", 2, 2), ("flattened", 2, 2)],
)
def test_guided_inverse_cdf_is_searchsorted(n, kind, unrolled, buckets):
    key_w, key_u = jax.random.split(jax.random.key(n))
    if kind == "flattened":  # the accept-reject proposal: every probability >= 1 / (2 N)
        log_w, _ = pk.resampling.log_normalize(3.0 * jax.random.normal(key_w, (n,)))
        table = backward.flattened_proposal(log_w, 0.0).table
        # no bucket holds two boundaries: the lookup without a search is the one tested
        assert int(table.num_steps) <= 1
    else:
        w = _weights(kind, n, key_w)
        cdf = jnp.cumsum(w)
        table = backward.guide_table(cdf / cdf[-1], buckets)
    cdf = table.cdf  # made nondecreasing
    num_buckets = table.first.shape[0] - 1
    edges = jnp.arange(num_buckets) / num_buckets  # bucket boundaries, exact in float32
    u = jnp.concatenate([
        jax.random.uniform(key_u, (4096,)),
        edges,
        jnp.nextafter(edges[1:], 0.0),
        cdf[:-1],  # the CDF values themselves (ties go right)
        jnp.nextafter(cdf[:-1], 0.0),
        jnp.asarray([0.0, jnp.nextafter(1.0, 0.0)]),
    ]).astype(jnp.float32)  # fmt: skip
    got = jax.jit(backward.guided_inverse_cdf, static_argnums=2)(table, u, unrolled)
    want = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 1000, 1025, 4096])
@pytest.mark.parametrize("kind", ["flattened", "spike", "zeros"])
def test_sparse_guide_table_is_the_histograms(n, kind):
    """``guide_table(..., sparse=True)`` (a bit per bucket, popcounts) builds the same
    table as the histogram: on the flattened proposal's CDFs (one boundary per bucket at
    most, the bit mask used) and on CDFs with buckets holding several boundaries or
    flat runs (binary searches of the bucket edges used, under the conditional)."""
    key = jax.random.key(n)
    if kind == "flattened":
        log_w, _ = pk.resampling.log_normalize(4.0 * jax.random.normal(key, (n,)))
        q = jnp.exp(jnp.maximum(log_w, jnp.log(1.0 / n)))
    else:
        q = _weights(kind, n, key)
    cdf = pk.resampling.cumulative_sum(q)
    cdf = cdf / cdf[-1]
    sparse, dense = backward.guide_table(cdf, 2, sparse=True), backward.guide_table(cdf, 2)
    for name, a, b in zip(backward.GuideTable._fields, sparse, dense, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    if kind == "flattened":  # one search step resolves any bucket
        assert int(sparse.num_steps) == int(n > 1)


def test_sparse_first_counts_the_boundaries_up_to_each_bucket():
    bins = np.sort(np.random.default_rng(0).choice(np.arange(0, 258), 100, replace=False))
    got = backward.sparse_first(jnp.asarray(bins, jnp.int32), 256)
    want = np.searchsorted(bins, np.arange(257), side="right")  # #{j: bins[j] <= b}
    np.testing.assert_array_equal(np.asarray(got), want)


def _exact_backward_probs(log_w, xs_prev, target):
    logits = np.asarray(log_w + dist.Normal(0.9 * xs_prev, 1.0).log_prob(target), np.float64)
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


def _draws_from_a_random_cloud(seed, n, targets, k, log_bound, max_trials):
    """``k`` accept-reject backward draws per target from a random weighted cloud of ``n``
    particles (``xs_prev ~ N(0, 2^2)``, ``log_w ~ N(0, 1)``, keys from ``seed``). Returns
    ``(log_w, xs_prev, idx, info)`` with ``idx`` a NumPy array."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    xs_prev = 2.0 * jax.random.normal(k1, (n,))
    log_w = jax.random.normal(k2, (n,))
    idx, info = jax.jit(
        lambda key: backward.backward_indices(
            key,
            SSM,
            log_w,
            xs_prev,
            targets,
            1,
            num_draws=k,
            log_bound=log_bound,
            max_trials=max_trials,
        )  # fmt: skip
    )(k3)
    return log_w, xs_prev, np.asarray(idx), info


@pytest.mark.parametrize(
    "n, max_trials, log_bound_shift",
    # N = 7: one stage; few rounds and a loose bound: exact fallbacks; N = 1024: 4 stages
    [(7, 32, 0.0), (7, 1, 6.0), (1024, 32, 0.0), (1024, 1, 3.0)],
)
def test_rejection_draws_have_the_backward_kernel_law(n, max_trials, log_bound_shift):
    m, k = 3, 3000  # 3 targets, 3000 draws each: M = 9000 draws
    targets = jnp.asarray([-2.5, 0.3, 3.0])
    log_w, xs_prev, idx, info = _draws_from_a_random_cloud(
        0, n, targets, k, LOG_BOUND + log_bound_shift, max_trials
    )
    assert idx.shape == (m, k) and idx.min() >= 0 and idx.max() < n
    if log_bound_shift > 0:
        assert int(info.num_exact) > 0  # the fallback was exercised
    for target_id in range(m):
        probs = _exact_backward_probs(log_w, xs_prev, targets[target_id])
        assert _chi_square_p_value(idx[target_id], probs) > 1e-4, target_id


@pytest.mark.parametrize(
    "max_trials, log_bound_shift",
    # a few draws left for the exact fallback; one round per stage and a loose bound:
    # more draws left pending than the buffers hold (they skip the later stages)
    [(32, 1.0), (1, 3.0)],
)
def test_single_draws_have_the_backward_kernel_law(max_trials, log_bound_shift):
    """``num_draws = 1`` (FFBS, PaRIS beside the parents): one draw per target, 9000
    targets at three positions, through the stages and the exact fallback."""
    targets = jnp.repeat(jnp.asarray([-2.5, 0.3, 3.0]), 3000)
    log_w, xs_prev, idx, info = _draws_from_a_random_cloud(
        1, 1024, targets, 1, LOG_BOUND + log_bound_shift, max_trials
    )
    assert idx.min() >= 0 and idx.max() < 1024
    assert int(info.num_exact) > 0  # the fallback was exercised
    for target_id in range(3):
        probs = _exact_backward_probs(log_w, xs_prev, targets[3000 * target_id])
        draws = idx[3000 * target_id : 3000 * (target_id + 1), 0]
        assert _chi_square_p_value(draws, probs) > 1e-4, target_id


def test_round_counters_are_distinct_and_below_the_fallback_counters():
    """Every round of every stage hashes its own counter, none of them a fallback pass's:
    otherwise two rounds (or a round and the fallback) would reuse the same uniforms."""
    last_round = (1 << backward.ROUND_COUNTER_BITS) - 1
    counters = [
        int(backward.round_counter(stage, r)) for stage in range(31) for r in (0, 1, last_round)
    ]
    assert len(set(counters)) == len(counters)
    assert max(counters) < backward.FALLBACK_COUNTER


@pytest.mark.parametrize("max_trials", [0, 4 << 16, 2.5])
def test_max_trials_out_of_range_is_a_value_error(max_trials):
    """``max_trials // 4`` rounds per stage must fit the counter's round field."""
    with pytest.raises(ValueError, match="max_trials"):
        backward.backward_indices(
            jax.random.key(0), SSM, jnp.zeros(8), jnp.zeros(8), jnp.zeros(8), 1,
            log_bound=LOG_BOUND, max_trials=max_trials,
        )  # fmt: skip
    with pytest.raises(ValueError, match="max_trials"):
        pk.smoothing.paris(
            jax.random.key(0), SSM, jnp.zeros(5), additive_fn=lambda xp, x, t: x,
            num_particles=8, max_trials=max_trials,
        )  # fmt: skip
    backward.check_trials((4 << 16) - 1)  # the largest accepted


def test_unproductive_rounds_stop_for_exact_draws_with_the_same_law():
    """With rounds to spare (``max_trials`` large), a stage still stops once a round accepts
    fewer draws than an exact draw costs in proposals: a target in the tail of the
    predictive (acceptance rate ~1e-4) gets exact draws, and the law stays the backward
    kernel's for the hard and the easy target alike."""
    n, k = 1024, 3000
    targets = jnp.asarray([0.3, 7.5])
    log_w, xs_prev, idx, info = _draws_from_a_random_cloud(1, n, targets, k, LOG_BOUND, 4000)
    assert int(info.num_exact) > k // 2  # most of the hard target's draws, made exactly
    assert int(info.num_exact) < 2 * k
    for target_id in range(2):
        probs = _exact_backward_probs(log_w, xs_prev, targets[target_id])
        assert _chi_square_p_value(idx[target_id], probs) > 1e-4


def test_fewer_draws_than_the_threshold_are_made_exactly_with_a_bound():
    """Below ``EXACT_DRAWS_BELOW`` draws in all, accept–reject's set-up costs more than the
    rows: the draws are the exact mode's (the same key, the same indices) even with a
    bound; at the threshold they are accept–reject draws again."""
    n = 1024
    xs_prev = jax.random.normal(jax.random.key(0), (n,))
    log_w = jax.random.normal(jax.random.key(1), (n,))
    targets = jax.random.normal(jax.random.key(2), (64,))
    draw = jax.jit(
        lambda key, m, k, bound: backward.backward_indices(
            key, SSM, log_w, xs_prev, targets[:m], 1, num_draws=k, log_bound=bound
        ),
        static_argnums=(1, 2),
    )
    few = backward.EXACT_DRAWS_BELOW - 1
    idx, stats = draw(jax.random.key(3), few, 1, LOG_BOUND)
    idx_exact, _ = draw(jax.random.key(3), few, 1, None)
    np.testing.assert_array_equal(idx, idx_exact)
    assert int(stats.num_exact) == few and float(stats.mean_trials) == 0.0
    _, stats = draw(jax.random.key(3), backward.EXACT_DRAWS_BELOW // 2, 2, LOG_BOUND)
    assert float(stats.mean_trials) >= 1.0 and int(stats.num_exact) < backward.EXACT_DRAWS_BELOW


def test_buffer_levels_halve_with_doubling_proposals_up_to_the_cost_of_an_exact_draw():
    n = 16384
    levels = backward.buffer_levels(2 * n, 32, n)
    sizes = [level.size for level in levels]
    proposals = [level.proposals for level in levels]
    assert sizes[0] == 2 * n
    assert all(a // 2 == b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert sizes[-1] >= backward.SMALLEST_BUFFER
    assert proposals == [backward.FIRST_PROPOSALS << i for i in range(len(levels))]
    assert proposals[-1] <= n // backward.EXACT_ROW_RATIO < 2 * proposals[-1]
    assert all(level.size * level.proposals == 2 * n * backward.FIRST_PROPOSALS for level in levels)
    assert all(level.max_rounds == 8 for level in levels)
    # small buffers stop at SMALLEST_BUFFER, small N at the exact draw's cost
    assert backward.buffer_levels(5, 32, 10**6) == [backward.BufferLevel(5, 2, 8)]
    assert backward.buffer_levels(100, 1, 10**6) == [
        backward.BufferLevel(100, 2, 1), backward.BufferLevel(50, 4, 1)
    ]  # fmt: skip
    assert len(backward.buffer_levels(10**6, 32, 64)) == 1


def _chi_square_p_value(idx_row, probs):
    k = idx_row.shape[0]
    counts = np.bincount(idx_row, minlength=probs.shape[0])
    keep = probs * k >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(probs[keep] * k, probs[~keep].sum() * k)
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    expected *= observed.sum() / expected.sum()
    return stats.chisquare(observed, expected)[1]


@pytest.mark.parametrize("start", ["exact", "worst"])
def test_mcmc_backward_kernel_leaves_the_backward_law_invariant(start):
    """Chains started at exact draws of the backward kernel keep its law after
    ``MCMC_STEPS`` steps (invariance); chains all started at the least likely index
    reach it after 60 steps (convergence). Chi-square over 3000 chains per target; a
    chain that never moved would fail both."""
    n, m, k = 7, 3, 3000
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    xs_prev = 2.0 * jax.random.normal(k1, (n,))
    log_w = jax.random.normal(k2, (n,))
    targets = jnp.asarray([-2.5, 0.3, 3.0])
    probs = [_exact_backward_probs(log_w, xs_prev, targets[i]) for i in range(m)]
    if start == "exact":
        starts = np.stack([np.random.default_rng(i).choice(n, size=k, p=p)
                           for i, p in enumerate(probs)])  # fmt: skip
        steps = backward.MCMC_STEPS
    else:
        starts = np.stack([np.full(k, np.argmin(p)) for p in probs])
        steps = 60
    draws = jax.jit(
        jax.vmap(
            lambda key, target, anc: backward.mcmc_backward_indices(
                key,
                SSM,
                log_w,
                xs_prev,
                target[None],
                anc[None],
                1,
                num_draws=1,
                num_steps=steps,
            )[0][0, 0],  # fmt: skip
            in_axes=(0, None, 0),
        ),
        static_argnums=(),
    )
    for i in range(m):
        keys = jax.random.split(jax.random.fold_in(k3 if start == "exact" else k4, i), k)
        idx = np.asarray(draws(keys, targets[i], jnp.asarray(starts[i])))
        assert _chi_square_p_value(idx, probs[i]) > 1e-4, (i, np.bincount(idx, minlength=n))
    _, info = backward.mcmc_backward_indices(
        k3, SSM, log_w, xs_prev, targets, jnp.zeros(m, jnp.int32), 1, num_draws=4
    )
    assert 0.0 < float(info.mean_trials) < 1.0  # the acceptance rate


def _log_weights(kind, n, key):
    """Normalised log-weights with entries below the flattened proposal's floor ``1 / N``,
    and zeros (``-inf``) for the ``zeros`` and ``spike`` kinds."""
    w = _weights(kind, n, key)
    if kind == "spike":
        w = w.at[: n // 4].set(0.0)
    return jnp.log(w / jnp.sum(w))


@pytest.mark.parametrize("kind", ["uniform", "zeros", "spike", "lognormal"])
def test_flattened_proposal_is_an_exact_accept_reject(kind):
    """Proposal ``q_j ∝ max(W_j, c)`` times acceptance ``min(W_j / c, 1) f_j / bound`` is
    ``∝ W_j f_j`` (checked from the guide table's own CDF), every acceptance probability is
    at most 1, the table resolves in at most ``UNROLLED_STEPS`` steps, and the accepted
    proposals of a Monte Carlo run pass a chi-square test against the backward kernel."""
    n = 50
    k_w, k_f, k_u = jax.random.split(jax.random.key(11), 3)
    log_w = _log_weights(kind, n, k_w)
    log_bound = 0.3
    log_f = log_bound - 4.0 * jax.random.uniform(k_f, (n,))  # f <= bound
    proposal = backward.flattened_proposal(log_w, log_bound)
    assert int(proposal.table.num_steps) <= backward.UNROLLED_STEPS
    cdf = np.asarray(proposal.table.cdf, np.float64)
    q = np.diff(np.concatenate([[0.0], cdf]))
    accept = np.exp(np.asarray(proposal.log_accept + log_f, np.float64))
    assert accept.max() <= 1.0 + 1e-6
    target = np.exp(np.asarray(log_w + log_f, np.float64))
    target /= target.sum()
    joint = q * accept
    np.testing.assert_allclose(joint / joint.sum(), target, rtol=1e-4, atol=1e-9)

    num = 400_000
    bits = jax.random.bits(k_u, (2, num), jnp.uint32)
    cand = backward.guided_inverse_cdf(
        proposal.table, backward.unit_uniform(bits[0]), backward.UNROLLED_STEPS
    )
    ok = jnp.log(backward.unit_uniform(bits[1])) < log_f[cand] + proposal.log_accept[cand]
    drawn = np.asarray(cand)[np.asarray(ok)]
    assert drawn.size > 10_000
    assert target[drawn].min() > 0  # zero-weight particles are never accepted
    assert _chi_square_p_value(drawn, target) > 1e-4


def test_rejection_draws_with_zero_and_tiny_weights_have_the_backward_kernel_law():
    """Weights far below the flattened proposal's floor and exact zeros: the staged
    accept–reject draws still follow the backward kernel (and never draw a zero weight)."""
    n, k = 40, 4000
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    xs_prev = 2.0 * jax.random.normal(k1, (n,))
    log_w = 4.0 * jax.random.normal(k2, (n,))
    log_w = jnp.where(jnp.arange(n) % 5 == 0, -jnp.inf, log_w)
    targets = jnp.asarray([-1.0, 2.0])
    idx, info = jax.jit(
        lambda key: backward.backward_indices(
            key, SSM, log_w, xs_prev, targets, 1, num_draws=k, log_bound=LOG_BOUND
        )
    )(k3)
    idx = np.asarray(idx)
    assert float(info.mean_trials) >= 1.0
    for i in range(2):
        probs = _exact_backward_probs(log_w, xs_prev, targets[i])
        assert probs[idx[i]].min() > 0
        assert _chi_square_p_value(idx[i], probs) > 1e-4, (i, np.bincount(idx[i], minlength=n))


def test_empty_buffer_slots_never_write():
    """Target 0 can only descend from the last particle (its density from every other one
    underflows to zero), and that particle's weight is tiny, so its draws go through every
    stage and the exact fallback; the other targets finish early and leave empty slots in
    the later buffers. An empty slot that wrote back (index 0, or a draw of another target)
    would show up in target 0's draws."""
    n, m, k = 1024, 300, 2
    k1, k2 = jax.random.split(jax.random.key(0))
    xs_prev = jnp.linspace(-3.0, 3.0, n).at[-1].set(50.0)
    log_w = jnp.zeros(n).at[-1].set(-12.0)
    targets = jnp.concatenate([jnp.asarray([45.0]), jax.random.normal(k1, (m - 1,))])
    for max_trials in (1, 32):
        draws = jax.jit(
            lambda key, log_w, xs_prev, targets, max_trials=max_trials: (
                backward.backward_indices(
                    key, SSM, log_w, xs_prev, targets, 1, num_draws=k, log_bound=LOG_BOUND,
                    max_trials=max_trials,
                )
            )
        )  # fmt: skip
        idx, info = draws(k2, log_w, xs_prev, targets)
        idx = np.asarray(idx)
        assert (idx[0] == n - 1).all(), idx[0]
        assert (idx[1:] < n - 1).all()
        assert int(info.num_exact) >= k  # target 0's draws were made exactly
    levels = backward.buffer_levels(m * k, 32, n)
    assert len(levels) >= 4  # several stages, each with empty slots once draws finish


def test_write_back_and_next_buffer_drop_empty_slots():
    values = jnp.arange(6, dtype=jnp.int32) + 10
    buffer = backward.Pending(jnp.asarray([3, 0, 6, 6], jnp.int32), jnp.asarray([1, 1, 0, 0], bool))
    accepted = jnp.asarray([False, True, False, False])
    out = backward.write_back(values, buffer.slots, jnp.full(4, -1, jnp.int32), accepted)
    np.testing.assert_array_equal(out, [-1, 11, 12, 13, 14, 15])
    out = backward.write_back(values, buffer.slots, jnp.ones(4, jnp.int32), buffer.valid, add=True)
    np.testing.assert_array_equal(out, [11, 11, 12, 14, 14, 15])
    nxt = backward.next_buffer(buffer, accepted, 3, 6)
    np.testing.assert_array_equal(nxt.slots, [3, 6, 6])  # empty slots point past the end
    np.testing.assert_array_equal(nxt.valid, [True, False, False])


@pytest.mark.parametrize("n", [5, 128, 5000])  # one row, one full row, rows and a padded one
def test_compact_packs_the_selected_values(n):
    """Every selected value exactly once, at the front, in the column-by-column order of
    the ``(rows, COMPACT_LANES)`` view; a smaller output keeps a prefix of that order."""
    rng = np.random.default_rng(0)
    mask = rng.random(n) < 0.3
    values = np.arange(n, dtype=np.int32)
    lanes = backward.COMPACT_LANES
    order = sorted(np.flatnonzero(mask), key=lambda i: (i % lanes, i // lanes))
    for size in (1, int(mask.sum()), n):
        out = np.asarray(backward.compact(jnp.asarray(mask), jnp.asarray(values), size, -7))
        kept = np.asarray(order[:size], np.int32)
        np.testing.assert_array_equal(out[: kept.size], kept)
        assert (out[kept.size :] == -7).all()


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000, 4099])
@pytest.mark.parametrize("kind", ["uniform", "zeros", "spike", "lognormal"])
def test_row_inverse_cdf_is_the_two_stage_inverse_cdf(n, kind):
    """``row_inverse_cdf`` returns the block whose cumulative block total first exceeds
    ``u_block`` times the total, then the entry of that block whose cumulative sum first
    exceeds ``u_within`` times the block's total (a float64 reference, away from ties),
    and never an entry of zero mass."""
    k_w, k_u = jax.random.split(jax.random.key(n))
    mass = _weights(kind, n, k_w)
    if kind == "zeros" and n < 3:
        mass = jnp.ones(n)
    u = jax.random.uniform(k_u, (2, 2000))
    got = np.asarray(jax.jit(jax.vmap(backward.row_inverse_cdf, (None, 0, 0)))(mass, *u))
    size = backward.row_block_size(n)
    mass64 = np.asarray(mass, np.float64)
    blocks = np.pad(mass64, (0, -(-n // size) * size - n)).reshape(-1, size)
    block_cdf = np.cumsum(blocks.sum(axis=1))
    u64 = np.asarray(u, np.float64)
    b = np.searchsorted(block_cdf, u64[0] * block_cdf[-1], side="right")
    within = np.cumsum(blocks[b], axis=1)
    scaled = u64[1] * within[:, -1]
    j = (within <= scaled[:, None]).sum(axis=1)
    want = b * size + j
    # away from ties (the float32 sums round differently from the float64 ones)
    gap_b = np.min(np.abs(block_cdf[None, :] - (u64[0] * block_cdf[-1])[:, None]), axis=1)
    gap_j = np.min(np.abs(within - scaled[:, None]), axis=1)
    clear = (gap_b > 1e-4 * block_cdf[-1]) & (gap_j > 1e-4 * within[:, -1])
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], want[clear])
    assert (mass64[got] > 0).all() and got.max() < n


def test_first_above_is_the_inverse_cdf_and_skips_zero_mass_whatever_the_rounding():
    """``first_above`` is ``searchsorted(prefix, level, "right")`` on exact prefix sums, and
    never an entry of zero mass even where rounding made the sums step up over one (here
    forced by hand), or when rounding left no sum above the level (the last positive
    entry); ``prefix_sums`` are the cumulative sums."""
    mass = jnp.asarray([0.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0], jnp.float32)
    prefix = backward.prefix_sums(mass)
    np.testing.assert_allclose(np.asarray(prefix), np.cumsum(np.asarray(mass)), rtol=1e-6)
    levels = jnp.asarray([0.0, 0.5, 1.0, 2.9, 3.0, 3.5, 3.99], jnp.float32)
    got = np.asarray(backward.first_above(mass, prefix, levels))
    np.testing.assert_array_equal(got, [1, 1, 4, 4, 5, 5, 5])
    stepped = prefix.at[2].add(1e-3)  # a zero-mass entry whose sum rounded up
    assert int(backward.first_above(mass, stepped, jnp.asarray(1.0005))) == 4
    assert int(backward.first_above(mass, prefix, jnp.asarray(4.0))) == 5  # none above
    batch = backward.first_above(mass, prefix, jnp.asarray([[0.5], [3.5]]))
    assert batch.shape == (2, 1)


def test_categorical_row_law_and_non_finite_logits():
    """Chi-square of ``categorical_row`` draws against ``softmax``; ``NaN`` / ``+inf`` /
    ``-inf`` logits are never drawn; an all ``-inf`` row is uniform."""
    n, num = 300, 60_000
    k_l, k_d = jax.random.split(jax.random.key(3))
    logits = 2.0 * jax.random.normal(k_l, (n,))
    logits = logits.at[::7].set(-jnp.inf).at[3].set(jnp.nan).at[5].set(jnp.inf)
    draw = jax.jit(jax.vmap(backward.categorical_row, (0, None)))
    idx = np.asarray(draw(jax.random.split(k_d, num), logits))
    logits64 = np.asarray(logits, np.float64)
    finite = np.isfinite(logits64)
    probs = np.zeros(n)
    probs[finite] = np.exp(logits64[finite] - logits64[finite].max())
    probs /= probs.sum()
    assert probs[idx].min() > 0
    assert _chi_square_p_value(idx, probs) > 1e-4
    idx = np.asarray(draw(jax.random.split(k_d, 5000), jnp.full(10, -jnp.inf)))
    assert _chi_square_p_value(idx, np.full(10, 0.1)) > 1e-4


@pytest.mark.parametrize("log_bound", [None, LOG_BOUND])
def test_nan_log_densities_count_as_zero_probability(log_bound):
    """A transition whose log-density is NaN for some particles: exact and accept–reject
    draws never pick them."""
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(
            0.9 * x_prev, jnp.where(x_prev > 0.5, jnp.nan, 1.0)
        ),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    n = 300
    xs_prev = jax.random.normal(jax.random.key(0), (n,))
    targets = jax.random.normal(jax.random.key(1), (n,))
    idx, _ = backward.backward_indices(
        jax.random.key(2), ssm, jnp.zeros(n), xs_prev, targets, 1, num_draws=2,
        log_bound=log_bound,
    )  # fmt: skip
    assert (np.asarray(xs_prev)[np.asarray(idx)] <= 0.5).all()


def test_unit_uniform_is_in_the_unit_interval():
    bits = jnp.asarray([0, 255, 256, 2**32 - 1], jnp.uint32)
    u = np.asarray(backward.unit_uniform(bits))
    assert u.dtype == np.float32
    np.testing.assert_array_equal(u, [0.0, 0.0, 2.0**-24, 1.0 - 2.0**-24])


@pytest.mark.parametrize("log_bound", [None, 30.0])
def test_draws_of_one_target_share_a_row_but_are_independent(log_bound):
    """The exact draws of one target come from one row of densities (exact mode, and the
    accept-reject fallback, forced here by a bound so loose that nothing is accepted):
    each pair of draws of a target must follow the product law, not repeat one uniform."""
    n, m, k = 6, 20_000, 2
    xs_prev = jnp.linspace(-1.5, 1.5, n)
    log_w = jnp.log(jnp.arange(1.0, n + 1.0))
    targets = jnp.full(m, 0.3)
    idx, info = jax.jit(
        lambda key: backward.backward_indices(
            key, SSM, log_w, xs_prev, targets, 1, num_draws=k, log_bound=log_bound
        )
    )(jax.random.key(11))
    assert int(info.num_exact) == m * k  # every draw made exactly
    probs = _exact_backward_probs(log_w, xs_prev, 0.3)
    idx = np.asarray(idx)
    assert _chi_square_p_value(idx[:, 0], probs) > 1e-4
    assert _chi_square_p_value(idx[:, 1], probs) > 1e-4
    pairs = idx[:, 0] * n + idx[:, 1]
    assert _chi_square_p_value(pairs, np.outer(probs, probs).reshape(-1)) > 1e-4


def test_repeat_each_is_jnp_repeat_on_the_leading_axis():
    tree = {"a": jnp.arange(6.0).reshape(3, 2), "b": jnp.asarray([4, 5, 6])}
    for times in (1, 3):
        out = backward.repeat_each(tree, times)
        np.testing.assert_array_equal(out["a"], jnp.repeat(tree["a"], times, axis=0))
        np.testing.assert_array_equal(out["b"], jnp.repeat(tree["b"], times))
