"""Trained models that ship with the package: a diffusion model, a flow-matching model and a
classifier on scikit-learn's 8x8 handwritten digits, plus rewards for steering them.

Loading needs no network access and no scikit-learn: the weights are files of the package
(``particlekit/diffusion/weights/``), written by ``python -m particlekit.diffusion.train_digits``
and read with ``equinox.tree_deserialise_leaves`` into networks built from the
hyperparameters below (the training script builds them from the same constants).

Data. The 1,797 images of ``sklearn.datasets.load_digits``, pixel values ``0..16`` scaled
to ``[-1, 1]`` (``x = pixels / 8 - 1``) and flattened row by row into vectors of length 64
(``x.reshape(8, 8)`` is the image). The generative models are trained on all images; the
classifier on the training part of a stratified split (``TEST_FRACTION`` of the images held
out, ``random_state=SPLIT_SEED``), so its accuracy on the held-out part is honest.

Models:

* ``digits_diffusion()``: a ``DiffusionModel`` on the linear VP schedule (``SCHEDULE``). The
  network predicts ``v = sqrt(ab) eps - sqrt(1 - ab) x_0`` (well scaled at every time) and
  is wrapped to return ``eps_hat = sqrt(1 - ab) x + sqrt(ab) v_hat`` (``prediction="eps"``).
* ``digits_flow()``: a ``FlowModel`` (velocity of the linear interpolant); its
  ``as_diffusion_model()`` is an exact VP rewrite for the steering recipes.
* ``digits_classifier()``: ``logits(x_0)`` over the ten classes.

Rewards: ``class_log_prob_reward(classifier, c)`` (``log p(class = c | x_0)``), and the
analytic ``ink_reward`` (mean pixel intensity in ``[0, 1]``) and ``region_ink_reward``.
"""

from __future__ import annotations

import functools
import numbers
import operator
from importlib import resources

import equinox as eqx
import jax
import jax.numpy as jnp

from particlekit.diffusion.flow import FlowModel
from particlekit.diffusion.model import DiffusionModel
from particlekit.diffusion.schedules import NoiseSchedule, linear_schedule

__all__ = [
    "DIGITS_DIM",
    "DIGITS_IMAGE_SHAPE",
    "DIGITS_NUM_CLASSES",
    "DigitsClassifier",
    "DigitsDenoiser",
    "TimeMLP",
    "class_log_prob_reward",
    "digits_classifier",
    "digits_diffusion",
    "digits_flow",
    "digits_to_images",
    "ink_reward",
    "region_ink_reward",
]

# ---------------------------------------------------------------------- shared constants
DIGITS_IMAGE_SHAPE = (8, 8)
DIGITS_DIM = 64
DIGITS_NUM_CLASSES = 10
SPLIT_SEED = 0  # sklearn train_test_split(random_state=...) of the classifier's data
TEST_FRACTION = 0.25
SCHEDULE: NoiseSchedule = linear_schedule()  # beta from 0.1 to 20
NUM_TIME_FEATURES = 16  # sin / cos of pi k t, k = 1..16
DIFFUSION_ARCH = {"width": 192, "depth": 3}
FLOW_ARCH = {"width": 192, "depth": 3}
CLASSIFIER_ARCH = {"width": 128, "depth": 2}
WEIGHT_FILES = {
    "diffusion": "digits_diffusion.eqx",
    "flow": "digits_flow.eqx",
    "classifier": "digits_classifier.eqx",
}


def _check_one(x, what="x"):
    if tuple(jnp.shape(x)) != (DIGITS_DIM,):
        raise ValueError(
            f"{what} must be ONE digit, a vector of shape ({DIGITS_DIM},) (an 8x8 image "
            f"flattened row by row), got shape {tuple(jnp.shape(x))}"
        )


def _check_time(t):
    if jnp.ndim(t) != 0:
        raise ValueError(f"t must be a scalar time in [0, 1], got shape {jnp.shape(t)}")


def time_features(t, num_features: int = NUM_TIME_FEATURES):
    """Fourier features ``[sin(pi k t), cos(pi k t)]``, ``k = 1..num_features``: Array of
    shape (2 num_features,)."""
    freqs = jnp.pi * jnp.arange(1, num_features + 1, dtype=jnp.result_type(float))
    return jnp.concatenate([jnp.sin(freqs * t), jnp.cos(freqs * t)])


# ---------------------------------------------------------------------- networks
class TimeMLP(eqx.Module):
    """An MLP ``f(x, t)`` on ``[x, time_features(t)]`` for ONE digit: the network of the
    diffusion model (predicting ``v``) and of the flow model (predicting the velocity).

    Parameters
    ----------
    width, depth : int
        Hidden width and number of hidden layers (SiLU activations).
    key : PRNG key
        Initialisation.
    """

    mlp: eqx.nn.MLP

    def __init__(self, width: int, depth: int, *, key):
        self.mlp = eqx.nn.MLP(
            DIGITS_DIM + 2 * NUM_TIME_FEATURES, DIGITS_DIM, width, depth,
            activation=jax.nn.silu, key=key,
        )  # fmt: skip

    def __call__(self, x, t):
        _check_one(x)
        _check_time(t)
        return self.mlp(jnp.concatenate([x, time_features(t)]))


class DigitsDenoiser(eqx.Module):
    """``eps_hat(x_t, t)`` for ONE digit from a ``v``-predicting ``TimeMLP``:
    ``eps_hat = sqrt(1 - ab_t) x_t + sqrt(ab_t) v_hat(x_t, t)``, ``ab_t = SCHEDULE.alpha_bar(t)``.
    """

    net: TimeMLP

    def velocity(self, x, t):
        """The network output ``v_hat(x_t, t)`` (target ``sqrt(ab) eps - sqrt(1 - ab) x_0``)."""
        return self.net(x, t)

    def __call__(self, x, t):
        _check_one(x)
        _check_time(t)
        ab = SCHEDULE.alpha_bar(t)
        return jnp.sqrt(1.0 - ab) * x + jnp.sqrt(ab) * self.net(x, t)


class DigitsClassifier(eqx.Module):
    """A classifier of clean digits: ``classifier(x)`` are the ten logits of ONE digit.

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> clf = pk.diffusion.digits_classifier()
    >>> clf.log_probs(jnp.zeros(64)).shape
    (10,)
    >>> clf.predict(jnp.zeros((5, 64))).shape
    (5,)
    """

    mlp: eqx.nn.MLP

    def __init__(self, width: int, depth: int, *, key):
        self.mlp = eqx.nn.MLP(
            DIGITS_DIM, DIGITS_NUM_CLASSES, width, depth, activation=jax.nn.silu, key=key
        )

    def __call__(self, x):
        """Logits: Array of shape (10,)."""
        _check_one(x)
        return self.mlp(x)

    def log_probs(self, x):
        """``log p(class | x)`` of ONE digit: Array of shape (10,)."""
        return jax.nn.log_softmax(self(x))

    def predict(self, xs):
        """Most probable class of every digit of ``xs``, an Array of shape (..., 64):
        Array of int32 of shape (...)."""
        xs = jnp.asarray(xs)
        if xs.ndim < 1 or xs.shape[-1] != DIGITS_DIM:
            raise ValueError(f"xs must have shape (..., {DIGITS_DIM}), got {xs.shape}")
        flat = xs.reshape(-1, DIGITS_DIM)
        return _predict(self, flat).reshape(xs.shape[:-1])


@eqx.filter_jit
def _predict(classifier, xs):
    return jnp.argmax(jax.vmap(classifier)(xs), axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------- skeletons and loaders
def diffusion_network(key) -> DigitsDenoiser:
    """A freshly initialised denoiser with the shipped architecture (training)."""
    return DigitsDenoiser(TimeMLP(**DIFFUSION_ARCH, key=key))


def flow_network(key) -> TimeMLP:
    """A freshly initialised velocity network with the shipped architecture (training)."""
    return TimeMLP(**FLOW_ARCH, key=key)


def classifier_network(key) -> DigitsClassifier:
    """A freshly initialised classifier with the shipped architecture (training)."""
    return DigitsClassifier(**CLASSIFIER_ARCH, key=key)


_BUILDERS = {
    "diffusion": diffusion_network,
    "flow": flow_network,
    "classifier": classifier_network,
}


WEIGHT_DTYPE = jnp.float32  # the dtype of every array in the weight files


def _on_disk_dtype(leaf):
    """A skeleton leaf with the files' dtype: under ``jax_enable_x64`` the networks are
    built in float64 and equinox refused the float32 arrays on disk (a ``RuntimeError``)."""
    if isinstance(leaf, jax.ShapeDtypeStruct) and jnp.issubdtype(leaf.dtype, jnp.floating):
        return jax.ShapeDtypeStruct(leaf.shape, WEIGHT_DTYPE)
    return leaf


@functools.cache
def _load(name: str):
    skeleton = eqx.filter_eval_shape(_BUILDERS[name], jax.random.key(0))
    skeleton = jax.tree.map(_on_disk_dtype, skeleton)
    filename = WEIGHT_FILES[name]
    path = resources.files("particlekit.diffusion").joinpath("weights", filename)
    if not path.is_file():
        raise FileNotFoundError(
            f"the weights {filename} are missing from particlekit/diffusion/weights/; "
            "run `python -m particlekit.diffusion.train_digits` to write them"
        )
    fix = (
        "reinstall particlekit, or run `python -m particlekit.diffusion.train_digits` to "
        "rewrite the weights"
    )
    with path.open("rb") as f:
        try:
            module = eqx.tree_deserialise_leaves(f, skeleton)
        except Exception as err:  # noqa: BLE001 - equinox raised a bare tree-path error
            raise ValueError(
                f"the weights file {filename} cannot be read as the {name} network of "
                f"particlekit.diffusion.pretrained (truncated, corrupted, or written for "
                f"another architecture: {err}); {fix}"
            ) from err
        if f.read(1):
            raise ValueError(
                f"the weights file {filename} is longer than the {name} network of "
                f"particlekit.diffusion.pretrained (corrupted, or written for another "
                f"architecture); {fix}"
            )
    if not all(
        bool(jnp.all(jnp.isfinite(leaf)))
        for leaf in jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array))
    ):
        raise ValueError(f"the weights file {filename} holds NaN or infinite parameters; {fix}")
    return module


def digits_diffusion() -> DiffusionModel:
    """The pretrained VP diffusion model of 8x8 digits (vectors of shape (64,) in
    ``[-1, 1]``), on the linear schedule, ``prediction="eps"``.

    Returns
    -------
    DiffusionModel
        ``shape=(64,)``; works with ``fk_steering``, ``best_of_n``, ``svdd``, ...

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.digits_diffusion()
    >>> xs = model.sample(jax.random.key(0), 4, num_steps=20)   # Array of shape (4, 64)
    >>> pk.diffusion.digits_to_images(xs).shape
    (4, 8, 8)
    """
    return DiffusionModel(_load("diffusion"), SCHEDULE, prediction="eps", shape=(DIGITS_DIM,))


def digits_flow() -> FlowModel:
    """The pretrained flow-matching model of 8x8 digits (linear interpolant, velocity
    prediction); ``digits_flow().as_diffusion_model()`` steers like ``digits_diffusion()``.

    Returns
    -------
    FlowModel
        ``shape=(64,)``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> flow = pk.diffusion.digits_flow()
    >>> flow.sample(jax.random.key(0), 4, num_steps=20).shape
    (4, 64)
    """
    return FlowModel(_load("flow"), shape=(DIGITS_DIM,))


def digits_classifier() -> DigitsClassifier:
    """The pretrained classifier of clean 8x8 digits (accuracy about 0.97 on the held-out
    images).

    Returns
    -------
    DigitsClassifier
        ``classifier(x)``: the ten logits of ONE digit of shape (64,).

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> clf = pk.diffusion.digits_classifier()
    >>> clf(jnp.zeros(64)).shape
    (10,)
    """
    return _load("classifier")


# ---------------------------------------------------------------------- rewards
def class_log_prob_reward(classifier: DigitsClassifier, c: int):
    """The reward ``r(x_0) = log p(class = c | x_0)`` of a classifier, for ONE digit.

    Parameters
    ----------
    classifier : DigitsClassifier
    c : int
        Target class, ``0 <= c < 10``.

    Returns
    -------
    callable
        ``x0 -> scalar`` for ``x0`` of shape (64,); a ``reward_fn`` for ``fk_steering``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> reward = pk.diffusion.class_log_prob_reward(pk.diffusion.digits_classifier(), 3)
    >>> res = pk.diffusion.fk_steering(jax.random.key(0), pk.diffusion.digits_diffusion(),
    ...                                reward, num_particles=8, num_steps=10, lmbda=1.0)
    >>> res.samples.shape
    (8, 64)
    """
    if not isinstance(classifier, DigitsClassifier):
        raise ValueError(f"classifier must be a DigitsClassifier, got {type(classifier).__name__}")
    try:
        dtype = getattr(c, "dtype", None)
        if isinstance(c, bool) or (dtype is not None and not jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError
        index = operator.index(c)  # int, NumPy integer, concrete 0-d integer array
    except TypeError:
        raise ValueError(f"c must be an integer class index, got {c!r}") from None
    if not 0 <= index < DIGITS_NUM_CLASSES:
        raise ValueError(f"c must be a class index in [0, {DIGITS_NUM_CLASSES}), got {index}")

    def reward(x0):
        return classifier.log_probs(x0)[index]

    return reward


def ink_reward(x0):
    """Mean pixel intensity of ONE digit, in ``[0, 1]`` for images in ``[-1, 1]`` (thicker
    strokes, more ink): ``mean((x0 + 1) / 2)``. Analytic, no training.

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> float(pk.diffusion.ink_reward(jnp.zeros(64)))
    0.5
    """
    _check_one(x0, "x0")
    return jnp.mean((x0 + 1.0) / 2.0)


def region_ink_reward(rows: tuple[int, int], cols: tuple[int, int]):
    """Mean pixel intensity (in ``[0, 1]``) of ONE digit inside the rectangle
    ``rows[0] <= i < rows[1]``, ``cols[0] <= j < cols[1]`` of the 8x8 image.

    Returns
    -------
    callable
        ``x0 -> scalar`` for ``x0`` of shape (64,).

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> top = pk.diffusion.region_ink_reward((0, 4), (0, 8))   # the upper half
    >>> float(top(jnp.ones(64)))
    1.0
    """
    bounds = []
    for name, pair in (("rows", rows), ("cols", cols)):
        try:
            lo, hi = pair
        except (TypeError, ValueError):
            msg = f"{name} must be a pair of integers (start, stop), got {pair!r}"
            raise ValueError(msg) from None
        if not (isinstance(lo, numbers.Integral) and isinstance(hi, numbers.Integral)):
            raise ValueError(f"{name} must be a pair of integers (start, stop), got {(lo, hi)}")
        if not 0 <= lo < hi <= 8:
            raise ValueError(f"{name} must satisfy 0 <= start < stop <= 8, got {(lo, hi)}")
        bounds.append((int(lo), int(hi)))
    (r0, r1), (c0, c1) = bounds

    def reward(x0):
        _check_one(x0, "x0")
        return jnp.mean((x0.reshape(DIGITS_IMAGE_SHAPE)[r0:r1, c0:c1] + 1.0) / 2.0)

    return reward


def digits_to_images(xs):
    """Vectors of shape (..., 64) in ``[-1, 1]`` to images of shape (..., 8, 8) in
    ``[0, 1]`` (clipped), for plotting.

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> pk.diffusion.digits_to_images(jnp.zeros((3, 64))).shape
    (3, 8, 8)
    """
    xs = jnp.asarray(xs)
    if xs.ndim < 1 or xs.shape[-1] != DIGITS_DIM:
        raise ValueError(f"xs must have shape (..., {DIGITS_DIM}), got {xs.shape}")
    return jnp.clip((xs.reshape(*xs.shape[:-1], *DIGITS_IMAGE_SHAPE) + 1.0) / 2.0, 0.0, 1.0)
