"""FK correctors against exact Gaussian answers: ``prod_i N(m_i, S_i)^{beta_i}`` is the
Gaussian with precision ``sum_i beta_i P_i`` and mean ``P^{-1} sum_i beta_i P_i m_i``.
Tolerances are ``K_SE`` standard errors over vmapped seeds (time discretisation bias at
``K = 400`` steps is below one standard error)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk

M1, S1 = np.array([-1.0, 0.5]), np.array([0.8, 1.2])
M2, S2 = np.array([1.0, -0.5]), np.array([1.0, 0.6])
P1 = pk.diffusion.gaussian_mixture([1.0], [M1], stds=[S1])
P2 = pk.diffusion.gaussian_mixture([1.0], [M2], stds=[S2])
N, K, SEEDS, K_SE = 1000, 400, 16, 5.0


def _exact(means, stds, betas):
    prec = 1.0 / np.asarray(stds) ** 2
    betas = np.asarray(betas)[:, None]
    p = np.sum(betas * prec, axis=0)
    return np.sum(betas * prec * np.asarray(means), axis=0) / p, 1.0 / p


def _check(run, means, stds, betas):
    res = jax.vmap(run)(jax.random.split(jax.random.key(0), SEEDS))
    w = jax.vmap(pk.resampling.normalize)(res.log_weights)
    mean = jnp.einsum("sn,snd->sd", w, res.samples)
    var = jnp.einsum("sn,snd->sd", w, res.samples**2) - mean**2
    exact_mean, exact_var = _exact(means, stds, betas)
    for est, truth in [(mean, exact_mean), (var, exact_var)]:
        se = jnp.std(est, axis=0) / np.sqrt(SEEDS)
        assert jnp.all(jnp.abs(jnp.mean(est, axis=0) - truth) < K_SE * se), (est.mean(0), truth)
    assert not bool(jnp.any(res.failed))
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    return res


@pytest.mark.slow
def test_product_of_two_gaussians():
    _check(
        lambda k: pk.diffusion.product_of_experts(k, P1, P2, num_particles=N, num_steps=K),
        [M1, M2], [S1, S2], [1.0, 1.0],
    )  # fmt: skip


@pytest.mark.slow
def test_geometric_average():
    # same shapes as the product: one compilation (betas and noise are traced)
    gamma = 0.3
    _check(
        lambda k: pk.diffusion.geometric_average(k, P1, P2, gamma, num_particles=N, num_steps=K),
        [M1, M2], [S1, S2], [1.0 - gamma, gamma],
    )  # fmt: skip


@pytest.mark.slow
def test_annealed_gaussian_beta_3():
    # sigma^2 = 2 g^2: more noise keeps the uncorrected process closer to p^beta, so the
    # weights stay well behaved (the "tempered" sigma^2 = g^2 / beta degenerates)
    res = _check(
        lambda k: pk.diffusion.anneal(k, P1, 3.0, num_particles=N, num_steps=K, noise=2.0),
        [M1], [S1], [3.0],
    )  # fmt: skip
    assert res.ess.shape == (SEEDS, K)


@pytest.mark.parametrize(
    "args,kwargs",
    [
        (([P1, P2], [1.0]), {"num_particles": 8}),
        (([P1], [-1.0]), {"num_particles": 8}),
        (([P1], [1.0]), {"num_particles": 0}),
        (([P1], [1.0]), {"num_particles": 8, "noise": "loud"}),
        (([P1], [1.0]), {"num_particles": 8, "ess_threshold": 2.0}),
        (([P1, pk.diffusion.gaussian_mixture([1.0], [[0.0]], stds=1.0)], [1.0, 1.0]),
         {"num_particles": 8}),
        (([P1, pk.diffusion.gaussian_mixture([1.0], [M1], stds=[S1], schedule="cosine")],
          [1.0, 1.0]), {"num_particles": 8}),
    ],
)  # fmt: skip
def test_invalid_arguments(args, kwargs):
    with pytest.raises(ValueError):
        pk.diffusion.fk_corrector(jax.random.key(0), *args, **kwargs)
