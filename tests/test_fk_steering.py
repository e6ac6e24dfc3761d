"""FK steering against the exact tilted Gaussian mixture (docs/architecture.md §6), NaN rewards,
proposals, and the best-of-N / SVDD baselines.

A Gaussian-mixture prior tilted by ``exp(lmbda a.x)`` is the mixture with means
``mu_k + lmbda S_k a`` and weights ``∝ w_k exp(lmbda a.mu_k + lmbda^2 a.S_k a / 2)``; its
normaliser ``Z`` is the log-sum-exp of those terms. Tolerances are ``K_SE`` standard errors
estimated over independent seeds (vmapped, one compilation for all potentials).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import particlekit as pk
from particlekit.diffusion.fk_steering import potential_steps

W = [0.7, 0.3]
MU = [[-1.5, 0.0], [1.5, 1.0]]
SD = [[0.6, 0.8], [0.7, 0.5]]
A = jnp.array([1.0, 0.5])
LAM = 1.0
N, K, SEEDS = 1000, 200, 16
K_SE = 5.0
MODEL = pk.diffusion.gaussian_mixture(W, MU, stds=SD, schedule="linear")


def reward(x):
    return x @ A


def _exact(lmbda=LAM):
    tw, tm, tc, log_z = pk.diffusion.tilted_gaussian_mixture(
        W, MU, stds=SD, direction=A, lmbda=lmbda
    )
    mean = jnp.sum(tw[:, None] * tm, axis=0)
    p_right = jnp.sum(tw * norm.cdf(tm[:, 0] / jnp.sqrt(tc[:, 0, 0])))  # P(x[0] > 0)
    return mean, p_right, log_z


def _run(seed=0, lmbda=LAM, num_particles=N, seeds=SEEDS, reward_fn=reward, **kw):
    keys = jax.random.split(jax.random.key(seed), seeds)
    kw.setdefault("sampler", "em")  # Euler–Maruyama: discretisation bias << MC error at K=200
    return jax.vmap(
        lambda k: pk.diffusion.fk_steering(
            k, MODEL, reward_fn, num_particles=num_particles, num_steps=K, lmbda=lmbda, **kw
        )
    )(keys)


def _check_exact(res, lmbda=LAM):
    mean, p_right, log_z = _exact(lmbda)
    w = jax.vmap(pk.resampling.normalize)(res.log_weights)
    means = jnp.einsum("sn,snd->sd", w, res.samples)
    probs = jnp.einsum("sn,sn->s", w, (res.samples[..., 0] > 0).astype(w.dtype))
    ratio = jnp.exp(res.log_evidence - log_z)  # unbiased for 1
    r = np.sqrt(means.shape[0])
    for est, truth in [(means, mean), (probs, p_right), (ratio, 1.0)]:
        se = jnp.std(est, axis=0) / r
        assert jnp.all(jnp.abs(jnp.mean(est, axis=0) - truth) < K_SE * se + 1e-3), (
            jnp.mean(est, axis=0),
            truth,
            se,
        )
    assert not bool(jnp.any(res.failed))


@pytest.mark.slow
@pytest.mark.parametrize(
    "potential,every",
    [("difference", 1), ("max", 67), ("sum", 67), ("immediate", 67)],
)
def test_exact_tilted_mixture(potential, every):
    # "max" / "sum" / "immediate" with two intermediate potential steps + the final correction
    res = _run(potential=potential, resample_every=every)
    _check_exact(res)
    assert res.ess.shape == (SEEDS, K)
    assert bool(jnp.all(jnp.isfinite(res.samples)))


@pytest.mark.slow
def test_adaptive_resampling_carries_weights():
    # ESS-triggered resampling: weights carried between events, target still exact
    res = _run(seed=3, potential="difference", ess_threshold=0.5)
    _check_exact(res)
    assert bool(jnp.any(~res.resampled)) and bool(jnp.any(res.resampled))


@pytest.mark.slow
def test_gradient_guided_proposal_is_corrected():
    # q != p: corrected by p / q, the target is unchanged
    prop = pk.diffusion.gradient_guided_proposal(MODEL, reward, LAM, sampler="em")
    res = _run(seed=5, potential="difference", proposal=prop)
    _check_exact(res)


@pytest.mark.slow
def test_many_sample_intermediate_reward_is_exact():
    res = _run(seed=6, potential="difference", intermediate_reward="many_sample",
               num_reward_samples=4, resample_every=10)  # fmt: skip
    _check_exact(res)


@pytest.mark.slow
def test_rollout_intermediate_reward_is_exact():
    res = _run(seed=7, potential="difference", intermediate_reward="rollout",
               num_reward_samples=2, resample_every=10)  # fmt: skip
    _check_exact(res)


def test_rollout_draws_follow_the_reverse_kernel():
    """From x_t at small t the rollout lands near the Tweedie mean, at the model's own
    posterior spread (finite, not the prior)."""
    from particlekit.diffusion.fk_steering import _rollout

    x = jnp.full(MODEL.shape, 0.3)
    draws = jax.vmap(lambda k: _rollout(MODEL, k, x, 0.05))(
        jax.random.split(jax.random.key(0), 512)
    )
    assert draws.shape == (512, *MODEL.shape) and bool(jnp.all(jnp.isfinite(draws)))
    mean_gap = jnp.abs(jnp.mean(draws, axis=0) - MODEL.x0(x, 0.05))
    assert bool(jnp.all(mean_gap < 0.1)), mean_gap


def test_lambda_zero_is_unsteered():
    res = _run(seed=1, lmbda=0.0, potential="difference")  # same shapes: no recompilation
    assert bool(jnp.all(res.log_evidence == 0.0))
    assert bool(jnp.all(res.log_weights == res.log_weights[:, :1]))


def nan_or_minus_inf(x):
    # NaN below the line x[1] = -0.5, -inf left of x[0] = -2: both must get zero weight
    r = jnp.where(x[1] < -0.5, jnp.nan, x @ A)
    return jnp.where(x[0] < -2.0, -jnp.inf, r)


def always_nan(x):
    return jnp.nan * x[0]


def test_nonfinite_rewards_get_zero_weight():
    res = _run(seed=2, seeds=1, num_particles=256, reward_fn=nan_or_minus_inf, lmbda=0.5)
    bad = ~jnp.isfinite(res.rewards[0])
    assert int(jnp.sum(res.num_nonfinite)) > 0  # NaN potentials were met (and counted)
    assert bool(jnp.all(res.log_weights[0][bad] == -jnp.inf))
    assert not bool(jnp.any(jnp.isnan(res.log_weights)))
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    assert bool(jnp.isfinite(res.log_evidence[0])) and not bool(res.failed[0])
    # the surviving mass lies where the reward is finite
    w = pk.resampling.normalize(res.log_weights[0])
    x = res.samples[0]
    assert float(jnp.sum(w * ((x[:, 1] < -0.5) | (x[:, 0] < -2.0)))) == 0.0


def test_all_nan_rewards_flag_failure():
    res = _run(seed=2, seeds=1, num_particles=256, reward_fn=always_nan, potential="difference")
    assert bool(res.failed[0])
    assert float(res.log_evidence[0]) == -jnp.inf
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    assert int(jnp.sum(res.num_nonfinite)) > 0


def _partly_nan_model(cut=0.5):
    """N(0, I) data (score -x at every t), whose score is NaN where x[0] > cut."""
    return pk.diffusion.DiffusionModel(
        lambda x, t: jnp.where(x[0] > cut, jnp.nan, -x), "linear", prediction="score", shape=(2,)
    )


def test_nan_model_output_keeps_samples_finite():
    """A model whose output is NaN in part of the space let NaN into the samples and into
    mean() when no resampling removed the dead particles (ess_threshold=0: 476 NaN
    samples of 256 x 2, failed=False), and counted each dead particle again at every later
    step (4196 for 256 particles). A move to a non-finite state is now not taken: the
    particle keeps its finite state with zero weight, counted once."""
    n = 256
    # the NaN outputs make NaN intermediate rewards too: counted and warned about
    with pytest.warns(RuntimeWarning, match="intermediate reward"):
        res = pk.diffusion.fk_steering(
            jax.random.key(1), _partly_nan_model(), lambda x: -x[0] ** 2, num_particles=n,
            num_steps=20, ess_threshold=0.0,
        )  # fmt: skip
    assert int(res.num_nonfinite_intermediate.sum()) > 0
    assert not bool(res.failed) and np.isfinite(float(res.log_evidence))
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    assert bool(jnp.all(jnp.isfinite(res.mean())))
    assert 0 < int(res.num_nonfinite.sum()) <= n
    # the dead particles have zero weight: the weighted mass avoids the NaN region
    w = pk.resampling.normalize(res.log_weights)
    assert float(jnp.sum(w * (res.samples[:, 0] > 0.5))) == 0.0


def test_nan_model_everywhere_fails_with_finite_samples():
    model = pk.diffusion.DiffusionModel(
        lambda x, t: jnp.full_like(x, jnp.nan), "linear", prediction="score", shape=(2,)
    )
    res = pk.diffusion.fk_steering(jax.random.key(0), model, lambda x: x[0], num_particles=16,
                                   num_steps=10)  # fmt: skip
    assert bool(res.failed) and float(res.log_evidence) == -np.inf
    assert int(res.num_nonfinite.sum()) == 16
    assert bool(jnp.all(jnp.isfinite(res.samples)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_particles": 0},
        {"num_particles": 8, "potential": "median"},
        {"num_particles": 8, "intermediate_reward": "bogus"},
        {"num_particles": 8, "resample_every": 0},
        {"num_particles": 8, "resample_window": (0.8, 0.2)},
        {"num_particles": 8, "ess_threshold": 1.5},
        {"num_particles": 8, "sampler": "ddim", "eta": 0.0},
        {"num_particles": 8, "sampler": "heun"},
        {"num_particles": 8, "lmbda": jnp.ones(2)},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        pk.diffusion.fk_steering(jax.random.key(0), MODEL, reward, **kwargs)


def test_potential_steps_mask():
    mask = potential_steps(10, 4, (0.0, 1.0))
    assert np.asarray(mask).tolist() == [False, False, False, True] * 2 + [False, True]
    mask = potential_steps(10, 1, (0.45, 1.0))
    assert int(mask.sum()) == 5 + 1  # s in {0.9, ..., 0.5} plus the final step


def test_best_of_n_and_svdd_improve_reward():
    key = jax.random.key(4)
    bon = pk.diffusion.best_of_n(key, MODEL, reward, num_samples=64, num_steps=50)
    assert float(bon.best_reward) == float(jnp.max(bon.rewards))
    assert bon.samples.shape == (64, 2)
    base = jnp.mean(bon.rewards)
    sv = pk.diffusion.svdd(key, MODEL, reward, num_particles=64, num_children=8, num_steps=50)
    assert sv.samples.shape == (64, 2)
    # picking the best of 8 children at every step must raise the mean reward a lot
    se = jnp.std(bon.rewards) / 8.0
    assert float(jnp.mean(sv.rewards)) > float(base) + 5 * float(se)
    # every reward NaN: the pick is arbitrary, and an eager call says so
    with pytest.warns(RuntimeWarning, match="every reward is NaN"):
        pk.diffusion.best_of_n(key, MODEL, lambda x: jnp.nan * x[0], num_samples=64, num_steps=50)


@pytest.mark.parametrize("potential", ["difference", "max"])
def test_x0_reward_reuses_the_tweedie_prediction_in_the_next_move(potential):
    """With ``intermediate_reward="x0"`` a potential step predicts ``eps_hat(x_s, s)`` for
    its reward and the next move reuses it (one network evaluation per step instead of
    two). The same run with the reward given as a callable of ``(x_t, t)``, which does not
    reuse anything, must give the same samples and weights: a stale prediction (another
    state or time) would change them."""
    model = pk.diffusion.pretrained.digits_diffusion()
    clf = pk.diffusion.pretrained.digits_classifier()
    reward = pk.diffusion.pretrained.class_log_prob_reward(clf, 3)
    kw = dict(num_particles=8, num_steps=12, lmbda=1.0, potential=potential,
              resample_every=2, progress_bar=False)  # fmt: skip
    reused = pk.diffusion.fk_steering(jax.random.key(0), model, reward, **kw)
    direct = pk.diffusion.fk_steering(
        jax.random.key(0), model, reward,
        intermediate_reward=lambda x, t: reward(model.x0(x, t)), **kw,
    )  # fmt: skip
    np.testing.assert_allclose(reused.samples, direct.samples, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reused.log_weights, direct.log_weights, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        reused.intermediate_rewards, direct.intermediate_rewards, rtol=1e-4, atol=1e-4
    )
    assert np.asarray(reused.resampled).any()
