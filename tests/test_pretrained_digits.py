"""The shipped 8x8-digit models (particlekit.diffusion.pretrained) and the flow-matching
conversions (particlekit.diffusion.flow).

Exact checks: the velocity -> score / eps / x0 conversions and the rewrite of a flow as a
VP diffusion model, against the closed forms of a Gaussian data distribution. Statistical
checks (fixed seeds, margins far above the Monte Carlo noise): the trained models' samples
are classified into (nearly) all ten classes, the classifier is accurate on held-out
digits, and FK steering with the classifier's log-probability raises the hit rate of the
target class far above plain sampling's (about one in ten)."""

from importlib import resources

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.diffusion import pretrained

NUM_SAMPLES = 256
NUM_STEPS = 50


@pytest.fixture(scope="module")
def classifier():
    return pk.diffusion.digits_classifier()


@pytest.fixture(scope="module")
def diffusion():
    return pk.diffusion.digits_diffusion()


@pytest.fixture(scope="module")
def flow():
    return pk.diffusion.digits_flow()


# ---------------------------------------------------------------------- loading
def test_weights_are_package_files_and_load(classifier, diffusion, flow):
    weights = resources.files("particlekit.diffusion").joinpath("weights")
    sizes = {n: weights.joinpath(f).stat().st_size for n, f in pretrained.WEIGHT_FILES.items()}
    assert sum(sizes.values()) < 2**20, sizes  # under 1 MiB in all
    assert isinstance(diffusion, pk.diffusion.DiffusionModel) and diffusion.shape == (64,)
    assert isinstance(flow, pk.diffusion.FlowModel) and flow.shape == (64,)
    assert isinstance(classifier, pk.diffusion.DigitsClassifier)
    for module in (diffusion, flow, classifier):
        leaves = jax.tree.leaves(eqx.filter(module, eqx.is_array))
        assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    x = jnp.zeros(64)
    assert diffusion.eps(x, 0.5).shape == flow.velocity(x, 0.5).shape == (64,)
    assert classifier(x).shape == (10,)


def test_shipped_weights_fit_the_training_losses():
    """The loaded networks are the trained ones, read in the training parameterisation: their
    losses on the data are near the end-of-training values, far below an untrained net's."""
    pytest.importorskip("sklearn")
    from particlekit.diffusion import train_digits

    x, _ = train_digits.load_digits_data()
    x = jnp.asarray(x[:512])
    key = jax.random.key(0)
    diffusion_loss = eqx.filter_jit(train_digits.diffusion_loss)
    flow_loss = eqx.filter_jit(train_digits.flow_loss)
    assert float(diffusion_loss(pretrained._load("diffusion"), x, key)) < 0.33
    assert float(flow_loss(pretrained._load("flow"), x, key)) < 0.52
    untrained = diffusion_loss(pretrained.diffusion_network(jax.random.key(1)), x, key)
    assert float(untrained) > 0.5


# ---------------------------------------------------------------------- classifier
def test_classifier_held_out_accuracy(classifier):
    pytest.importorskip("sklearn")
    from particlekit.diffusion.train_digits import digits_split

    _, x_test, _, y_test = digits_split()
    assert x_test.shape == (450, 64)
    accuracy = np.mean(np.asarray(classifier.predict(x_test)) == y_test)
    assert accuracy >= 0.95, accuracy


def _class_counts(classifier, xs):
    assert xs.shape == (NUM_SAMPLES, 64)
    assert bool(jnp.all(jnp.isfinite(xs)))
    return np.bincount(np.asarray(classifier.predict(xs)), minlength=10)


def _check_not_collapsed(counts):
    # every class has prior mass about 1/10: 256 samples give about 26 each
    assert (counts > 0).sum() >= 8, counts
    assert counts.max() <= 0.25 * NUM_SAMPLES, counts


# ---------------------------------------------------------------------- samples
def test_diffusion_samples_cover_the_classes(classifier, diffusion):
    xs = diffusion.sample(jax.random.key(1), NUM_SAMPLES, num_steps=NUM_STEPS)
    _check_not_collapsed(_class_counts(classifier, xs))
    # the classifier is confident on them, as on real digits
    confidence = jnp.exp(jax.vmap(classifier.log_probs)(xs).max(axis=-1))
    assert float(jnp.mean(confidence)) > 0.85


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_flow_samples_cover_the_classes(classifier, flow, method):
    xs = flow.sample(jax.random.key(2), NUM_SAMPLES, num_steps=NUM_STEPS, method=method)
    _check_not_collapsed(_class_counts(classifier, xs))
    confidence = jnp.exp(jax.vmap(classifier.log_probs)(xs).max(axis=-1))
    assert float(jnp.mean(confidence)) > 0.85


def test_flow_as_diffusion_model_samples_and_best_of_n(classifier, flow):
    """The VP rewrite of the flow samples the digits, and the recipes take it unchanged."""
    model = flow.as_diffusion_model()
    reward = pk.diffusion.class_log_prob_reward(classifier, 0)
    res = pk.diffusion.best_of_n(
        jax.random.key(3), model, reward, num_samples=NUM_SAMPLES, num_steps=NUM_STEPS
    )
    _check_not_collapsed(_class_counts(classifier, res.samples))
    assert res.best.shape == (64,) and int(classifier.predict(res.best)) == 0


# ---------------------------------------------------------------------- exact conversions
M = jnp.array([0.7, -1.3, 0.2])
S0 = 0.6  # data N(M, S0^2 I)


def _gauss_velocity(x, t):
    """E[eps - x_0 | x_t = x] for x_0 ~ N(M, S0^2 I), x_t = (1 - t) x_0 + t eps."""
    var = (1 - t) ** 2 * S0**2 + t**2
    r = x - (1 - t) * M
    return t / var * r - (M + (1 - t) * S0**2 / var * r)


@pytest.mark.parametrize("t", [0.01, 0.2, 0.5, 0.8, 0.99])
def test_flow_conversions_are_exact_on_a_gaussian(t):
    flow = pk.diffusion.FlowModel(_gauss_velocity, shape=(3,))
    x = jnp.array([0.3, 1.1, -2.0])
    var = (1 - t) ** 2 * S0**2 + t**2
    r = x - (1 - t) * M
    np.testing.assert_allclose(flow.score(x, t), -r / var, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow.eps(x, t), t / var * r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow.x0(x, t), M + (1 - t) * S0**2 / var * r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("tau", [0.02, 0.3, 0.7, 0.98])
def test_flow_as_diffusion_model_is_exact_on_a_gaussian(schedule, tau):
    """The VP rewrite's score and x0 prediction are those of the VP-noised Gaussian,
    N(a M, (a^2 S0^2 + s^2) I)."""
    model = pk.diffusion.FlowModel(_gauss_velocity, shape=(3,)).as_diffusion_model(schedule)
    x = jnp.array([0.3, 1.1, -2.0])
    ab = model.schedule.alpha_bar(tau)
    a, s = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    var = a**2 * S0**2 + s**2
    np.testing.assert_allclose(model.score(x, tau), -(x - a * M) / var, rtol=2e-5, atol=2e-5)
    x0 = M + a * S0**2 / var * (x - a * M)
    np.testing.assert_allclose(model.x0(x, tau), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_flow_samplers_recover_a_gaussian(method):
    """With the exact velocity both samplers return N(M, S0^2 I) (up to the Euler error)."""
    flow = pk.diffusion.FlowModel(_gauss_velocity, shape=(3,))
    xs = flow.sample(jax.random.key(4), 4000, num_steps=100, method=method)
    se = S0 / np.sqrt(4000)
    np.testing.assert_allclose(xs.mean(axis=0), M, atol=5 * se + 0.01)
    np.testing.assert_allclose(xs.std(axis=0), S0, rtol=0.05)


# ---------------------------------------------------------------------- steering
def test_fk_steering_towards_a_class(classifier, diffusion):
    target = 3
    plain = diffusion.sample(jax.random.key(5), NUM_SAMPLES, num_steps=NUM_STEPS)
    plain_rate = float(np.mean(np.asarray(classifier.predict(plain)) == target))
    reward = pk.diffusion.class_log_prob_reward(classifier, target)
    res = pk.diffusion.fk_steering(
        jax.random.key(6), diffusion, reward, num_particles=NUM_SAMPLES, num_steps=NUM_STEPS,
        lmbda=1.0, resample_window=(0.0, 0.7),
    )  # fmt: skip
    assert not bool(res.failed)
    steered_rate = float(res.mean(lambda x: (classifier.predict(x) == target).astype(float)))
    # plain: about 0.1 +- 0.02; steered: above 0.9
    assert plain_rate < 0.2, plain_rate
    assert steered_rate > 0.8, steered_rate
    assert steered_rate - plain_rate > 0.6


# ---------------------------------------------------------------------- rewards and bad input
def test_rewards():
    x = -jnp.ones(64)  # blank page
    assert float(pk.diffusion.ink_reward(x)) == 0.0
    x = x.reshape(8, 8).at[:4].set(1.0).reshape(64)  # ink in the upper half only
    assert float(pk.diffusion.ink_reward(x)) == 0.5
    assert float(pk.diffusion.region_ink_reward((0, 4), (0, 8))(x)) == 1.0
    assert float(pk.diffusion.region_ink_reward((4, 8), (2, 5))(x)) == 0.0
    images = pk.diffusion.digits_to_images(jnp.stack([x, -x]))
    assert images.shape == (2, 8, 8) and float(images[0, 0, 0]) == 1.0


def test_class_reward_is_a_log_probability(classifier):
    x = jax.random.normal(jax.random.key(8), (64,))
    for c in (np.int64(4), jnp.array(4)):  # integer scalars of any kind
        assert float(pk.diffusion.class_log_prob_reward(classifier, c)(x)) == float(
            classifier.log_probs(x)[4]
        )
    values = jnp.array([pk.diffusion.class_log_prob_reward(classifier, c)(x) for c in range(10)])
    np.testing.assert_allclose(jax.scipy.special.logsumexp(values), 0.0, atol=1e-5)


@pytest.mark.parametrize(
    "c", [-1, 10, 2.0, True, "3", jnp.array([1, 2]), np.int64(12), np.bool_(True)]
)
def test_bad_class_index(classifier, c):
    with pytest.raises(ValueError, match="class index"):
        pk.diffusion.class_log_prob_reward(classifier, c)


def test_bad_input_is_a_value_error(classifier, diffusion, flow):
    with pytest.raises(ValueError, match="DigitsClassifier"):
        pk.diffusion.class_log_prob_reward(lambda x: x, 3)
    with pytest.raises(ValueError, match="shape \\(64,\\)"):
        classifier(jnp.zeros((8, 8)))
    with pytest.raises(ValueError, match="shape \\(64,\\)"):
        diffusion.eps(jnp.zeros(63), 0.5)
    with pytest.raises(ValueError, match="scalar time"):
        diffusion.eps(jnp.zeros(64), jnp.zeros(2))
    with pytest.raises(ValueError, match="shape \\(64,\\)"):
        flow.velocity(jnp.zeros((2, 64)), 0.5)
    with pytest.raises(ValueError, match="shape \\(64,\\)"):
        pk.diffusion.ink_reward(jnp.zeros(10))
    with pytest.raises(ValueError, match="xs must have shape"):
        classifier.predict(jnp.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="xs must have shape"):
        pk.diffusion.digits_to_images(jnp.zeros(5))
    # a reward on the wrong shape is caught by the recipe before tracing
    with pytest.raises(ValueError, match="reward_fn"):
        pk.diffusion.fk_steering(
            jax.random.key(0), diffusion, lambda x: pk.diffusion.ink_reward(x[:10]),
            num_particles=4, num_steps=2,
        )  # fmt: skip


@pytest.mark.parametrize("rows, cols", [((0, 9), (0, 8)), ((4, 4), (0, 8)), (3, (0, 8))])
def test_bad_region(rows, cols):
    with pytest.raises(ValueError, match="rows"):
        pk.diffusion.region_ink_reward(rows, cols)


def test_bad_flow_sampler_arguments():
    flow = pk.diffusion.FlowModel(lambda x, t: x, shape=(2,))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="method"):
        flow.sample(key, 4, method="heun")
    with pytest.raises(ValueError, match="noise_scale"):
        flow.sample(key, 4, method="sde", noise_scale=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        flow.sample(key, 0)
    with pytest.raises(ValueError, match="PRNG key"):
        flow.sample(0, 4)
    with pytest.raises(ValueError, match="callable"):
        pk.diffusion.FlowModel(3.0, shape=(2,))
