"""DiffusionModel conversions and reverse kernels, and the exact noised Gaussian mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk

W = [0.3, 0.7]
MU = [[-2.0, 0.0], [1.5, 1.0]]
COVS = [[[0.25, 0.1], [0.1, 0.64]], [[0.49, -0.1], [-0.1, 0.16]]]
GM = pk.diffusion.gaussian_mixture(W, MU, covs=COVS)


def _wrapped(prediction):
    """The exact mixture re-expressed as an eps / x0 / score network."""
    sched = GM.schedule

    def fn(x, t):
        ab = sched.alpha_bar(t)
        score = GM.score(x, t)
        if prediction == "eps":
            return -jnp.sqrt(1 - ab) * score
        if prediction == "x0":
            return (x + (1 - ab) * score) / jnp.sqrt(ab)
        return score

    return pk.diffusion.DiffusionModel(fn, sched, prediction=prediction, shape=(2,))


@pytest.mark.parametrize("sampler,eta", [("ddpm", 1.0), ("ddim", 0.5), ("em", 1.0)])
def test_predictions_give_the_same_step(sampler, eta):
    x = jnp.array([0.3, -0.7])
    key = jax.random.key(1)
    steps = []
    for pred in ("eps", "x0", "score"):
        m = _wrapped(pred)
        mean, var = m.reverse_mean_var(x, 0.6, 0.55, sampler=sampler, eta=eta)
        step = m.reverse_step(key, x, 0.6, 0.55, sampler=sampler, eta=eta)
        lp = m.reverse_log_prob(step, x, 0.6, 0.55, sampler=sampler, eta=eta)
        steps.append((mean, var, step, lp, m.x0(x, 0.6), m.eps(x, 0.6), m.score(x, 0.6)))
    for other in steps[1:]:
        for a, b in zip(steps[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    # the log-density is the Gaussian N(mean, var I)
    mean, var, step, lp = steps[0][:4]
    expected = -0.5 * jnp.sum((step - mean) ** 2) / var - jnp.log(2 * jnp.pi * var)
    np.testing.assert_allclose(lp, expected, rtol=1e-5)


def test_ddpm_is_ddim_eta_one_and_last_step_is_tweedie():
    x = jnp.array([0.3, -0.7])
    a = GM.reverse_mean_var(x, 0.5, 0.4, sampler="ddpm")
    b = GM.reverse_mean_var(x, 0.5, 0.4, sampler="ddim", eta=1.0)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    # DDPM posterior variance (1 - ab_s)(1 - ab_t / ab_s) / (1 - ab_t)
    ab_t, ab_s = GM.schedule.alpha_bar(0.5), GM.schedule.alpha_bar(0.4)
    np.testing.assert_allclose(a[1], (1 - ab_s) * (1 - ab_t / ab_s) / (1 - ab_t), rtol=1e-5)
    mean, var = GM.reverse_mean_var(x, 0.01, 0.0)
    assert float(var) == 0.0
    np.testing.assert_allclose(mean, GM.x0(x, 0.01), rtol=1e-5, atol=1e-6)


def test_mixture_score_and_density_match_numpyro():
    @jax.jit
    def both(x, t):
        d = GM.fn.distribution(t)
        ours = (GM.fn.log_prob(x, t), GM.score(x, t))
        return ours, (d.log_prob(x), jax.grad(d.log_prob)(x))

    x = jnp.array([0.4, -0.3])
    for t in (0.0, 0.3, 0.9):
        (lp, score), (lp_ref, score_ref) = both(x, t)
        np.testing.assert_allclose(lp, lp_ref, rtol=1e-5)
        np.testing.assert_allclose(score, score_ref, rtol=1e-4)


def test_tweedie_x0_is_posterior_mean_for_gaussian_data():
    # data N(m, s^2 I): E[x0 | x_t] = m + s^2 sqrt(ab) (x - sqrt(ab) m) / (ab s^2 + 1 - ab)
    m, s = jnp.array([1.0, -2.0]), 0.7
    model = pk.diffusion.gaussian_mixture([1.0], [m], stds=s)
    x, t = jnp.array([0.2, 0.5]), 0.4
    ab = model.schedule.alpha_bar(t)
    expected = m + s**2 * jnp.sqrt(ab) * (x - jnp.sqrt(ab) * m) / (ab * s**2 + 1 - ab)
    np.testing.assert_allclose(model.x0(x, t), expected, rtol=1e-5)


@pytest.mark.slow
def test_unsteered_reverse_chain_reproduces_mixture_moments():
    n = 20000
    x = GM.sample(jax.random.key(0), n, num_steps=200, sampler="em")
    w, mu, covs = np.array(W), np.array(MU), np.array(COVS)
    mean = w @ mu
    second = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", mu, mu))
    cov = second - np.outer(mean, mean)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(np.mean(x, 0) - mean) < 5 * se_mean)
    # variance SE for a non-Gaussian law: sqrt((m4 - var^2) / n), from the samples
    xc = np.asarray(x) - np.mean(x, 0)
    se_var = np.sqrt((np.mean(xc**4, 0) - np.var(x, 0) ** 2) / n)
    assert np.all(np.abs(np.var(x, 0) - np.diag(cov)) < 5 * se_var)
    p_right = np.mean(np.asarray(x)[:, 0] > 0)  # P(x[0] > 0), components well separated
    from scipy.stats import norm

    exact = np.sum(w * norm.cdf(mu[:, 0] / np.sqrt(covs[:, 0, 0])))
    assert abs(p_right - exact) < 5 * np.sqrt(exact * (1 - exact) / n)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": [0.5, 0.5], "means": [[0.0, 0.0]], "stds": 1.0},
        {"weights": [1.0], "means": [[0.0, 0.0]], "stds": -1.0},
        {"weights": [1.0], "means": [[0.0, 0.0]]},
        {"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[1.0]]},
        {"weights": [-1.0], "means": [[0.0]], "stds": 1.0},
    ],
)
def test_gaussian_mixture_validation(kwargs):
    with pytest.raises(ValueError):
        pk.diffusion.gaussian_mixture(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": [1.0, 1.0], "means": [[0.0, jnp.nan], [1.0, 1.0]], "stds": 1.0}, "means"),
        ({"weights": [1.0], "means": [[jnp.inf]], "stds": 1.0}, "means"),
        ({"weights": [1.0], "means": [[0.0]], "covs": [[[jnp.nan]]]}, "covs"),
    ],
)
def test_gaussian_mixture_rejects_non_finite_parameters(kwargs, match):
    """NaN means used to be accepted (and gave NaN scores and samples)."""
    with pytest.raises(ValueError, match=f"{match} must be finite"):
        pk.diffusion.gaussian_mixture(**kwargs)
    with pytest.raises(ValueError, match=f"{match} must be finite"):
        pk.diffusion.tilted_gaussian_mixture(**kwargs, direction=[1.0] * len(kwargs["means"][0]),
                                             lmbda=0.5)  # fmt: skip


def test_model_validation():
    with pytest.raises(ValueError):
        pk.diffusion.DiffusionModel(lambda x, t: x, "linear", prediction="velocity")
    with pytest.raises(ValueError):
        pk.diffusion.DiffusionModel(3.0, "linear")
    with pytest.raises(ValueError):
        GM.sample(jax.random.key(0), 0)
    with pytest.raises(ValueError):
        GM.sample(jax.random.key(0), 4, sampler="ddim", eta=0.0)


def test_tilted_mixture_closed_form():
    # one 1-D Gaussian N(m, s^2) tilted by exp(l x): N(m + l s^2, s^2), log Z = l m + l^2 s^2 / 2
    w, mu, covs, log_z = pk.diffusion.tilted_gaussian_mixture(
        [1.0], [[0.5]], stds=2.0, direction=[1.0], lmbda=0.3
    )
    np.testing.assert_allclose(mu[0, 0], 0.5 + 0.3 * 4.0, rtol=1e-6)
    np.testing.assert_allclose(log_z, 0.3 * 0.5 + 0.5 * 0.09 * 4.0, rtol=1e-6)
