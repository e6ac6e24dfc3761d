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
@pytest.mark.parametrize("kind", ["uniform", "zeros", "spike", "lognormal"])
def test_guided_inverse_cdf_is_searchsorted(n, kind):
    key_w, key_u = jax.random.split(jax.random.key(n))
    w = _weights(kind, n, key_w)
    cdf = jnp.cumsum(w)
    cdf = cdf / cdf[-1]
    table = backward.guide_table(cdf)
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
    got = jax.jit(backward.guided_inverse_cdf)(table, u)
    want = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _exact_backward_probs(log_w, xs_prev, target):
    logits = np.asarray(log_w + dist.Normal(0.9 * xs_prev, 1.0).log_prob(target), np.float64)
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


@pytest.mark.parametrize(
    "max_trials, log_bound_shift",
    [(32, 0.0), (1, 6.0)],  # every stage; few rounds and a loose bound: exact fallbacks
)
def test_rejection_draws_have_the_backward_kernel_law(max_trials, log_bound_shift):
    n, m, k = 7, 3, 3000  # 3 targets, 3000 draws each: M = 9000 draws, 6 stages
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    xs_prev = 2.0 * jax.random.normal(k1, (n,))
    log_w = jax.random.normal(k2, (n,))
    targets = jnp.asarray([-2.5, 0.3, 3.0])
    idx, info = jax.jit(
        lambda key: backward.backward_indices(
            key,
            SSM,
            log_w,
            xs_prev,
            targets,
            1,
            num_draws=k,
            log_bound=LOG_BOUND + log_bound_shift,
            max_trials=max_trials,
        )  # fmt: skip
    )(k3)
    idx = np.asarray(idx)
    assert idx.shape == (m, k) and idx.min() >= 0 and idx.max() < n
    if log_bound_shift > 0:
        assert int(info.num_exact) > 0  # the fallback was exercised
    for target_id in range(m):
        probs = _exact_backward_probs(log_w, xs_prev, targets[target_id])
        counts = np.bincount(idx[target_id], minlength=n)
        keep = probs * k >= 5  # chi-square cells with enough expected counts
        observed = np.append(counts[keep], counts[~keep].sum())
        expected = np.append(probs[keep] * k, probs[~keep].sum() * k)
        if expected[-1] == 0:
            observed, expected = observed[:-1], expected[:-1]
        expected *= observed.sum() / expected.sum()
        _, p_value = stats.chisquare(observed, expected)
        assert p_value > 1e-4, (target_id, counts, probs * k)


def test_buffer_levels_shrink_and_end_with_a_full_budget():
    levels = backward.buffer_levels(2 * 16384, 32)
    sizes = [level.size for level in levels]
    assert sizes[0] == 2 * 16384
    assert all(a // 4 == b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert sizes[-1] >= backward.SMALLEST_BUFFER
    assert all(level.max_rounds == 8 for level in levels)
    assert levels[-1].proposals == backward.LAST_PROPOSALS
    assert backward.buffer_levels(5, 32) == [backward.BufferLevel(5, 128, 8)]


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
