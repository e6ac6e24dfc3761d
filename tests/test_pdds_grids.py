"""PDDS on non-uniform time grids (``grid=``): the uniform grid is the old default bit for
bit, the telescoping identity holds path by path with the grid's own pairs of times, Gaussian
targets give log Z and moments within Monte Carlo error on a quadratic grid and on a user
array, and bad grids are a ValueError before tracing."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import particlekit as pk
from particlekit.diffusion.potentials import log_g0

K_SE = 5.0  # tolerance in Monte Carlo standard errors

DIM, N, K, SIGMA = 3, 256, 16, 1.5
S = 128  # seeds per batch (one shape for every call of ``_runs``: one compile)
# an irregular user grid of K steps: decreasing, from the noise end to the data end (t = 0)
USER_GRID = np.array(
    [1.0, 0.97, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.22, 0.15, 0.1, 0.06, 0.03, 0.015, 0.005, 0.0]
)
GRIDS = {
    "quadratic": pk.diffusion.sampling_grid("quadratic", K, schedule="cosine"),
    "user": jnp.asarray(USER_GRID, jnp.float32),
}


class GaussianTarget(eqx.Module):
    """``gamma(x) = exp(log_z) N(x; mean, scale_tril scale_tril^T)``: a PyTree, so one
    compiled sampler serves every Gaussian of the same dimension."""

    mean: jax.Array
    scale_tril: jax.Array
    log_z: jax.Array

    def __call__(self, x):
        d = dist.MultivariateNormal(self.mean, scale_tril=self.scale_tril)
        return d.log_prob(x) + self.log_z


def _isotropic(mean, scale, log_z):
    return GaussianTarget(
        jnp.asarray(mean, jnp.float32),
        jnp.asarray(scale * np.eye(DIM), jnp.float32),
        jnp.asarray(log_z, jnp.float32),
    )


@jax.jit
def _runs(keys, target, grid):
    """Per seed: ``(log Z_hat, weighted mean, weighted second moment, ESS, resampled)``. The
    grid is traced: the quadratic and the user grid (both ``K`` steps) share one compile."""

    def one(k):
        res = pk.diffusion.pdds(
            k, target, DIM, num_particles=N, grid=grid, sigma=SIGMA, progress_bar=False
        )
        w = jax.nn.softmax(res.log_weights)
        m1 = w @ res.samples
        m2 = jnp.einsum("n,ni,nj->ij", w, res.samples, res.samples)
        return res.log_evidence, m1, m2, res.ess, res.resampled

    return jax.vmap(one)(keys)


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_uniform_grid_is_the_old_default():
    """The old sampler walked ``time_grid(num_steps)[::-1]``; ``grid="uniform"``, that array
    and the default call give the same samples, weights, log Z and diagnostics, bit for bit
    (same key), and the grid sets the number of steps."""
    logp = lambda x: -0.5 * jnp.sum(((x - 1.0) / 0.7) ** 2) + 0.3 * jnp.sin(2.0 * x[0])
    key, k = jax.random.key(3), 8
    run = lambda **kw: pk.diffusion.pdds(key, logp, 2, num_particles=64, progress_bar=False, **kw)
    default = run(num_steps=k)
    _same(default, run(num_steps=k, grid="uniform"))
    _same(default, run(grid=pk.diffusion.time_grid(k)[::-1]))
    _same(default, run(grid=np.asarray(pk.diffusion.time_grid(k))[::-1], num_steps=k))
    assert default.ess.shape == (k + 1,) and default.acceptance_rate.shape == (k,)
    # num_steps alone keeps its old default of 32 uniform steps
    assert pk.diffusion.pdds(key, logp, 2, num_particles=8).ess.shape == (33,)
    # a grid built under jit (a tracer) is taken as it is
    jitted = jax.jit(
        lambda g: pk.diffusion.pdds(key, logp, 2, num_particles=64, grid=g).log_evidence
    )(pk.diffusion.time_grid(k)[::-1])
    np.testing.assert_allclose(jitted, default.log_evidence, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "grid", [[0.9, 0.5, 0.2, 0.05, 0.0], "quadratic"], ids=["user-from-0.9", "quadratic"]
)
def test_telescoping_invariant_on_non_uniform_grids(grid):
    """Path by path (N = 1, no resampling, so log_evidence is the sum of the log-weights):
    ``N(x_K) prod q(x_{k-1}|x_k) prod G_k = N(x_K) prod p_ref(x_{k-1}|x_k) g_0(x_0)``
    with ``lambda_k = lambda_{t_k, t_{k-1}}`` of the grid's own pairs of times, the guided
    drift at ``t_k`` and an arbitrary potential evaluated at the grid times. The same
    identity written with the uniform times does not hold, so this pins the pairs."""
    sigma, num_steps, dim = 1.3, 4, 2
    sched = pk.diffusion.linear_schedule()
    logp = lambda x: -jnp.sum((x - 0.7) ** 2) + 0.3 * jnp.sin(2.0 * x[0])
    pot = lambda t, x: -0.4 * jnp.sum((x - t) ** 2) + jnp.sin(3.0 * t + x[0]) + x[1] * t
    ts = pk.diffusion.sampling_grid(grid, num_steps, schedule=sched)

    def one(key):
        res = pk.diffusion.pdds(
            key, logp, dim, num_particles=1, num_steps=num_steps, grid=grid, sigma=sigma,
            schedule=sched, potential=pot, ess_threshold=0.0, keep_history=True,
        )  # fmt: skip
        hist = res.trace.history
        return hist.previous_particles.x[0, 0], hist.particles.x[:, 0], res.log_evidence

    x_first, xs, log_z = jax.vmap(one)(jax.random.split(jax.random.key(3), 8))
    ref = lambda x: dist.Normal(0.0, sigma).log_prob(x).sum()

    def sides(i, times):
        path = [x_first[i]] + [xs[i, k] for k in range(num_steps)]
        lhs = ref(path[0]) + log_z[i]
        rhs = ref(path[0]) + log_g0(logp, sigma, path[-1])
        for k in range(num_steps):
            lam = sched.lmbda(times[k], times[k + 1])
            sd = sigma * jnp.sqrt(lam)
            drift = sigma**2 * lam * jax.grad(pot, argnums=1)(times[k], path[k])
            mean_ref = jnp.sqrt(1.0 - lam) * path[k]
            lhs += dist.Normal(mean_ref + drift, sd).log_prob(path[k + 1]).sum()
            rhs += dist.Normal(mean_ref, sd).log_prob(path[k + 1]).sum()
        return float(lhs), float(rhs)

    uniform = jnp.linspace(1.0, 0.0, num_steps + 1)
    gaps = []
    for i in range(8):
        lhs, rhs = sides(i, ts)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=2e-3)
        lhs_u, rhs_u = sides(i, uniform)
        gaps.append(abs(lhs_u - rhs_u))
    assert max(gaps) > 0.1


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_reference_target_is_exact_on_any_grid(name):
    """``gamma = c N(0, sigma^2 I)``: ``g_0 = c``, the naive guidance is exact at every
    time and has zero gradient, so every step's weight is 1 whatever the pair of times:
    ``log Z_hat = log c`` exactly, ESS = N at every step, no resampling."""
    target = _isotropic([0.0, 0.0, 0.0], SIGMA, 0.8)
    log_z, _, _, ess, resampled = _runs(jax.random.split(jax.random.key(0), S), target, GRIDS[name])
    np.testing.assert_allclose(log_z, 0.8, atol=1e-4)
    assert ess.shape == (S, K + 1)
    np.testing.assert_allclose(ess, N, rtol=1e-4)
    assert not bool(resampled.any())


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_gaussian_log_evidence_and_moments(name):
    """``gamma = Z N(mu, sigma^2 I)`` (the reference's scale, shifted mean): ``g_0(x) =
    Z exp(mu.x / sigma^2 - |mu|^2 / (2 sigma^2))`` is log-linear, so the naive guidance is
    the exact ``g_t`` up to a factor constant in ``x`` and every log-weight is linear in
    Gaussian variables (light tails: the CLT holds over seeds). Exact answers: ``log Z``,
    ``E[x] = mu``, ``E[x x^T] = sigma^2 I + mu mu^T``.

    Checked with estimators that are unbiased for any number of particles (Del Moral: the
    unnormalised particle measure ``Z_hat sum_i W_i delta_{x_i}`` is unbiased):
    ``Z_hat / Z``, ``(Z_hat / Z) sum W_i x_i`` and ``(Z_hat / Z) sum W_i x_i x_i^T``, each
    within ``K_SE`` standard errors estimated over ``S`` seeds; and ``log Z_hat`` within
    ``K_SE`` standard errors plus its Jensen bias ``Var / 2``."""
    mean, log_z_true = np.array([1.5, -1.0, 0.5]), 0.7
    target = _isotropic(mean, SIGMA, log_z_true)
    log_z, m1, m2, _, _ = _runs(jax.random.split(jax.random.key(1), S), target, GRIDS[name])
    err = np.asarray(log_z, np.float64) - log_z_true
    ratio = np.exp(err)
    assert np.all(np.isfinite(err))
    se = lambda a: a.std(0, ddof=1) / np.sqrt(S)
    assert abs(err.mean()) < K_SE * se(err) + 0.5 * err.var()
    assert abs(ratio.mean() - 1.0) < K_SE * se(ratio)
    um1 = ratio[:, None] * np.asarray(m1, np.float64)
    um2 = ratio[:, None, None] * np.asarray(m2, np.float64)
    second = SIGMA**2 * np.eye(DIM) + np.outer(mean, mean)
    assert np.all(np.abs(um1.mean(0) - mean) < K_SE * se(um1))
    assert np.all(np.abs(um2.mean(0) - second) < K_SE * se(um2))
    # the test has power: the standard errors are small next to the moments themselves
    assert err.std() < 0.1 and np.all(se(um1) < 0.05)


BAD_GRIDS = {
    "increasing": (dict(grid=[0.0, 0.5, 1.0]), "grid\\[::-1\\]"),
    "not monotone": (dict(grid=[1.0, 0.3, 0.5, 0.0]), "strictly decreasing"),
    "NaN": (dict(grid=[1.0, np.nan, 0.0]), "finite"),
    "wrong num_steps": (dict(grid=[1.0, 0.5, 0.0], num_steps=3), "does not match"),
    "not ending at 0": (dict(grid=[1.0, 0.5, 0.1]), "end at t = 0"),
    "alpha_bar = 1": (dict(grid=[1.0, 1e-12, 0.0]), "alpha_bar = 1"),
    "unknown name": (dict(grid="cosine"), "one of"),
    "zero steps": (dict(grid="quadratic", num_steps=0), "num_steps"),
    "2-D": (dict(grid=[[1.0, 0.0], [0.5, 0.0]]), "1-D"),
}


@pytest.mark.parametrize("name", sorted(BAD_GRIDS))
def test_bad_grids_are_value_errors_before_tracing(name):
    calls = []

    def logp(x):
        calls.append(1)  # runs only when traced
        return -0.5 * jnp.sum(x**2)

    kwargs, match = BAD_GRIDS[name]
    with pytest.raises(ValueError, match=match):
        pk.diffusion.pdds(jax.random.key(0), logp, 2, num_particles=8, **kwargs)
    assert not calls
