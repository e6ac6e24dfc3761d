"""Conditional (reference-preserving) resampling targets the size-biased law.

If slot 0 of an exchangeable scheme is conditioned to descend from particle 0, the law of
the offspring counts is the unconditional law reweighted by ``count_0`` (the reference sits
in a uniformly chosen slot). So ``E_cond[counts of slots 1..N-1] = E[c c_0] / E[c_0] - e_0``,
which we estimate independently from the unconditional scheme.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from particlekit import resampling as R

WEIGHTS = np.array([0.05, 0.3, 0.001, 0.149, 0.5])
NUM_DRAWS = 40_000


@pytest.mark.parametrize(
    "base, conditional",
    [
        (R.multinomial, R.conditional_multinomial),
        (R.systematic, R.conditional_systematic),
        (R.stratified, R.conditional_stratified),
        (R.residual, R.conditional_residual),
    ],
)
def test_conditional_matches_size_biased_law(base, conditional):
    n = WEIGHTS.size
    log_w = jnp.log(jnp.asarray(WEIGHTS, jnp.float32))
    keys = jax.random.split(jax.random.key(7), 2 * NUM_DRAWS)
    uncond = jax.jit(jax.vmap(lambda k: R.offspring_counts(base(k, log_w), n)))(keys[:NUM_DRAWS])
    cond_idx = jax.jit(jax.vmap(lambda k: conditional(k, log_w)))(keys[NUM_DRAWS:])
    assert np.all(np.asarray(cond_idx[:, 0]) == 0)
    cond = jax.vmap(lambda i: R.offspring_counts(i[1:], n))(cond_idx)
    c = np.asarray(uncond, dtype=np.float64)
    target = (c * c[:, :1]).mean(0) / c[:, 0].mean() - np.eye(n)[0]
    got = np.asarray(cond, dtype=np.float64)
    # standard errors of both Monte Carlo estimates (the ratio's by the delta method)
    ratio_terms = c * c[:, :1] - target[None, :] * c[:, :1]
    se_target = ratio_terms.std(0) / c[:, 0].mean() / np.sqrt(NUM_DRAWS)
    se_got = got.std(0) / np.sqrt(NUM_DRAWS)
    tol = 5 * np.sqrt(se_target**2 + se_got**2) + 1e-6
    np.testing.assert_array_less(np.abs(got.mean(0) - target), tol)
    assert np.all(got.sum(1) == n - 1)
