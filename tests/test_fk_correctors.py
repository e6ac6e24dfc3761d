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


def _partly_nan_model(cut=1.5):
    """N(0, I) data (score -x at every t), whose score is NaN where x[0] > cut."""
    return pk.diffusion.DiffusionModel(
        lambda x, t: jnp.where(x[0] > cut, jnp.nan, -x), "linear", prediction="score", shape=(2,)
    )


@pytest.mark.parametrize("ess_threshold", [0.0, 0.5])
def test_nan_score_in_part_of_space_is_resampled_away(ess_threshold):
    """A score that is NaN in part of the space used to let NaN into the samples and the
    mean (hundreds of non-finite samples, failed=False). A particle whose state turns
    non-finite now gets zero weight, is counted once in num_nonfinite and is resampled away,
    as in fk_steering and pdds: without resampling during the run (ess_threshold=0) every
    particle can die at most once, so the count is at most N."""
    n = 512
    res = pk.diffusion.fk_corrector(jax.random.key(0), [_partly_nan_model()], [1.0],
                                    num_particles=n, num_steps=100,
                                    ess_threshold=ess_threshold)  # fmt: skip
    assert not bool(res.failed) and np.isfinite(float(res.log_evidence))
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    assert bool(jnp.all(jnp.isfinite(res.mean())))
    total = int(res.num_nonfinite.sum())
    assert 0 < total <= n
    # the survivors are N(0, I) restricted away from the NaN region
    assert float(jnp.max(res.samples[:, 0])) <= 1.5 + 1.0


def test_anneal_large_beta_keeps_samples_finite():
    """anneal(beta=1e4) gave NaN samples: at this temperature the Euler-Maruyama drift
    overflows for every particle. A move that would leave the finite states is not taken
    (the particle keeps its last finite state and dies), so the run reports failed with
    log Z = -inf, each particle is counted once in num_nonfinite, and the samples and
    mean() stay finite, as in fk_steering and pdds."""
    res = pk.diffusion.anneal(jax.random.key(0), P1, 1e4, num_particles=64, num_steps=50)
    assert bool(res.failed)
    assert float(res.log_evidence) == -np.inf
    assert 0 < int(res.num_nonfinite.sum()) <= 64
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    assert bool(jnp.all(jnp.isfinite(res.mean())))
    assert not bool(jnp.any(jnp.isnan(res.log_weights)))


def test_nan_score_everywhere_keeps_samples_finite():
    """A score that is NaN everywhere kills every particle at its first move: failed, each
    particle counted once, and the samples are the finite initial states, never NaN."""
    model = pk.diffusion.DiffusionModel(
        lambda x, t: jnp.full_like(x, jnp.nan), "linear", prediction="score", shape=(2,)
    )
    res = pk.diffusion.fk_corrector(jax.random.key(0), [model], [1.0], num_particles=16,
                                    num_steps=10)  # fmt: skip
    assert bool(res.failed) and float(res.log_evidence) == -np.inf
    assert int(res.num_nonfinite.sum()) == 16
    assert bool(jnp.all(jnp.isfinite(res.samples)))


@pytest.mark.parametrize("betas", [[1e-40], [1e39], [3e38, 3e38, -1.0]])
def test_betas_outside_the_dtype_are_rejected(betas):
    """B below the smallest normal float32 made the N(0, I / B) start infinite, and a beta
    above the largest float32 overflowed in the cast; both are ValueErrors naming the range."""
    models = [P1] * len(betas)
    with pytest.raises(ValueError, match="representable"):
        pk.diffusion.fk_corrector(jax.random.key(0), models, betas, num_particles=8)
