"""Regression tests from a second user-style hunt for silent wrong answers, crashes and
bad error handling in the diffusion subsystem (flows, FK correctors, SVDD, the analytic
mixtures, schedules). Each test reproduces one reported problem and fails without its fix:
schedules outside their domain, covariances that are not symmetric positive definite,
networks returning the wrong shape (silently broadcast), bad ``tilted_gaussian_mixture``
arguments, bad ``fk_corrector`` argument types and infinite noise, SVDD's soft pick that
never took a child of reward ``+inf``, and FK corrector time steps too coarse for the
Euler–Maruyama move (garbage ``log_evidence`` without a word)."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.diffusion import baselines

KEY = jax.random.key(0)
NORMAL = pk.diffusion.gaussian_mixture([1.0], [[0.0]], stds=1.0)  # N(0, 1) data
MIXTURE = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0], [2.0]], stds=0.5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: pk.diffusion.cosine_schedule(float("nan")),
        lambda: pk.diffusion.cosine_schedule(min_alpha_bar=0.0),
        lambda: pk.diffusion.cosine_schedule(min_alpha_bar=-1.0),
        lambda: pk.diffusion.cosine_schedule(min_alpha_bar=2.0),
        lambda: pk.diffusion.cosine_schedule(min_alpha_bar=float("nan")),
        lambda: pk.diffusion.linear_schedule(0.1, float("inf")),
        lambda: pk.diffusion.NoiseSchedule(kind="sigmoid"),
        lambda: pk.diffusion.NoiseSchedule(beta_min=5.0, beta_max=1.0),
    ],
)
def test_schedules_outside_their_domain_are_value_errors(build):
    """These schedules were accepted: ``beta_max = inf`` gave NaN samples, a floor
    ``min_alpha_bar = 0`` divides by ``sqrt(alpha_bar(1)) = 0``, a NaN offset made every
    ``alpha_bar`` NaN, an unknown kind failed only at the first ``alpha_bar``."""
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize(
    "covs,match",
    [
        ([[[-1.0]]], "positive definite"),  # gave NaN samples
        ([[[1.0, 1.0], [1.0, 1.0]]], "positive definite"),  # singular
        ([[[1.0, 0.9], [0.0, 1.0]]], "symmetric"),  # silently another covariance
    ],
)
@pytest.mark.parametrize(
    "build", [pk.diffusion.gaussian_mixture, pk.diffusion.gaussian_mixture_flow]
)
def test_mixture_covariances_must_be_symmetric_positive_definite(build, covs, match):
    means = [[0.0] * len(covs[0])]
    with pytest.raises(ValueError, match=match):
        build([1.0], means, covs=covs)


def test_valid_full_covariance_is_still_accepted():
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    model = pk.diffusion.gaussian_mixture([1.0], [[0.0, 0.0]], covs=[cov])
    np.testing.assert_allclose(np.sort(np.asarray(model.fn.eigvals[0])),
                               np.linalg.eigvalsh(cov), rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("prediction", ["eps", "x0", "score"])
def test_diffusion_network_of_the_wrong_shape_is_a_value_error(prediction):
    """A network returning a scalar was broadcast against x: DDPM samples of size ~100
    from a 2-D model, no error."""
    model = pk.diffusion.DiffusionModel(lambda x, t: 0.0 * t, prediction=prediction, shape=(2,))
    with pytest.raises(ValueError, match="shape of x"):
        model.sample(KEY, 3, num_steps=5)


def test_flow_velocity_of_the_wrong_shape_is_a_value_error():
    """A scalar velocity was broadcast (wrong samples); a (2, 1) one failed deep in scan."""
    for fn in (lambda x, t: jnp.sum(x), lambda x, t: x[:, None]):
        flow = pk.diffusion.FlowModel(fn, shape=(2,))
        with pytest.raises(ValueError, match="velocity"):
            flow.sample(KEY, 3, num_steps=5)


def test_fk_corrector_checks_the_network_shape_and_the_sample_shape():
    scalar = pk.diffusion.DiffusionModel(lambda x, t: 0.0 * t, prediction="eps", shape=(2,))
    with pytest.raises(ValueError, match="shape of x"):
        pk.diffusion.anneal(KEY, scalar, 2.0, num_particles=4, num_steps=50)
    for cls in (pk.diffusion.DiffusionModel, pk.diffusion.FlowModel):
        with pytest.raises(ValueError, match="non-negative"):
            cls(lambda x, t: x, shape=(-1,))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"direction": [1.0], "lmbda": float("nan")}, "lmbda"),  # gave NaN weights
        ({"direction": [1.0, 0.0, 0.0], "lmbda": 1.0}, "direction"),
        ({"direction": 1.0, "lmbda": 1.0}, "direction"),
        ({"direction": [1.0], "lmbda": "1"}, "one real number"),  # a TypeError from jnp
        ({"direction": [1.0], "lmbda": [1.0, 2.0]}, "one real number"),  # broadcast
        ({"direction": [1.0], "lmbda": True}, "one real number"),
    ],
)
def test_tilted_mixture_checks_direction_and_lmbda(kwargs, match):
    d = len(kwargs["direction"]) if kwargs["direction"] == [1.0] else 2
    with pytest.raises(ValueError, match=match):
        pk.diffusion.tilted_gaussian_mixture([1.0], [[0.0] * d], stds=1.0, **kwargs)


@pytest.mark.parametrize(
    "call",
    [
        lambda: pk.diffusion.anneal(KEY, NORMAL, 2.0, num_particles=4, noise=float("inf")),
        lambda: pk.diffusion.fk_corrector(KEY, [NORMAL], 2.0, num_particles=4),
        lambda: pk.diffusion.fk_corrector(KEY, NORMAL, [1.0], num_particles=4),
        lambda: pk.diffusion.anneal(KEY, NORMAL, 2.0, num_particles=4, noise=[1.0]),
    ],
)
def test_fk_corrector_bad_argument_types_are_value_errors(call):
    """``noise=inf`` ran and came back failed (every move NaN); a scalar ``betas``, a single
    model and a list ``noise`` were TypeErrors."""
    with pytest.raises(ValueError):
        call()


def _plus_inf_right(x):
    return jnp.where(x[0] > 0, jnp.inf, 0.0)


def test_svdd_soft_pick_takes_children_of_infinite_reward():
    """With ``alpha > 0`` a child of reward ``+inf`` has all the mass of the soft pick, as
    with ``alpha = 0``; ``inf / alpha`` made the weights NaN and the pick ignored it (all
    4 particles ended in the left mode, of reward 0). The right mode is reached by some
    child at every step here, so every particle must end there."""
    res = pk.diffusion.svdd(KEY, MIXTURE, _plus_inf_right, num_particles=16, num_children=4,
                            num_steps=10, alpha=1.0)  # fmt: skip
    assert bool(jnp.all(res.samples[:, 0] > 0))
    assert bool(jnp.all(res.rewards == jnp.inf))


def test_svdd_soft_logits_limits():
    values = jnp.array([1.0, jnp.inf, -jnp.inf, jnp.inf])
    logits = baselines._soft_logits(values, jnp.asarray(2.0))
    np.testing.assert_array_equal(np.asarray(logits), [-np.inf, 0.0, -np.inf, 0.0])
    all_dead = baselines._soft_logits(jnp.full(3, -jnp.inf), jnp.asarray(1.0))
    np.testing.assert_array_equal(np.asarray(all_dead), [0.0, 0.0, 0.0])
    finite = baselines._soft_logits(jnp.array([1.0, -3.0]), jnp.asarray(0.5))
    np.testing.assert_allclose(np.asarray(finite), [2.0, -6.0])


def test_fk_corrector_warns_when_the_steps_are_too_coarse():
    """anneal(beta=2) of N(0, 1) at 10 uniform steps returned log_evidence of thousands of
    nats (exact -1.27) with no warning: near t = 1 one Euler-Maruyama step multiplies x by
    1 - kappa b dt = 1 - 1.5 * 20 * 0.1 = -2. Now a RuntimeWarning says so before tracing,
    and the default 200 steps (kappa b dt = 0.15) stay silent."""
    with pytest.warns(RuntimeWarning, match="too coarse"):
        res = pk.diffusion.anneal(KEY, NORMAL, 2.0, num_particles=64, num_steps=10)
    exact = -0.5 * math.log(2 * math.pi) - 0.5 * math.log(2.0)
    assert abs(float(res.log_evidence) - exact) > 10.0  # why the warning is needed
    grid = pk.diffusion.sampling_grid("uniform", 200)
    from particlekit.diffusion.fk_correctors import _noise_end_step_rate

    assert _noise_end_step_rate(NORMAL.schedule, grid, 2.0, 1.0) == pytest.approx(0.15, 1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pk.diffusion.anneal(KEY, NORMAL, 2.0, num_particles=8, num_steps=200)


def test_fk_corrector_warns_on_the_cosine_schedule_at_the_default_steps():
    """On the cosine schedule beta(t) grows without bound near t = 1: the default 200
    uniform steps gave log_evidence between 73 and 140 for anneal(beta=2) of N(0, 0.25)
    (exact -0.57), ESS about 1, and no warning; kappa b dt = 1.5 * 400 * 0.005 = 3."""
    from particlekit.diffusion.fk_correctors import _noise_end_step_rate

    cosine = pk.diffusion.gaussian_mixture([1.0], [[0.0]], stds=0.5, schedule="cosine")
    grid = pk.diffusion.sampling_grid("uniform", 200, schedule=cosine.schedule)
    assert _noise_end_step_rate(cosine.schedule, grid, 2.0, 1.0) > 2.5
    with pytest.warns(RuntimeWarning, match="too coarse"):
        pk.diffusion.anneal(KEY, cosine, 2.0, num_particles=8)


def test_diffusion_sample_checks_its_key():
    """``DiffusionModel.sample(0, ...)`` was a JAX TypeError deep in ``random.split``; it
    is now the ValueError that every other sampler (``FlowModel.sample`` included) gives."""
    with pytest.raises(ValueError, match="PRNG key"):
        NORMAL.sample(0, 3, num_steps=5)


def test_tilted_mixture_integer_and_array_lmbda_are_the_float():
    args = ([0.3, 0.7], [[-1.0], [2.0]])
    expected = pk.diffusion.tilted_gaussian_mixture(*args, stds=1.0, direction=[1.0], lmbda=1.0)
    for lmbda in (1, np.int32(1), jnp.asarray(1.0)):
        got = pk.diffusion.tilted_gaussian_mixture(*args, stds=1.0, direction=[1.0], lmbda=lmbda)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
