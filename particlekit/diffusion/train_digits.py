"""Train the shipped 8x8-digit models (``particlekit.diffusion.pretrained``) and write their
weights.

Run ``python -m particlekit.diffusion.train_digits [--out DIR] [--quick]`` (needs
scikit-learn for the data; about 2 minutes on a 2-core CPU). Every key derives from
``SEED``, so a rerun on the same machine writes the same weights. Three fits, each Adam
with a warm-up and cosine decay under ``lax.scan`` (one compiled chunk of steps at a time),
keeping an exponential moving average (EMA) of the parameters, which is what is saved for
the generative models:

* the diffusion model: ``v``-prediction loss ``|| v_hat(x_t, t) - (a eps - s x_0) ||^2``,
  ``x_t = a x_0 + s eps``, ``a = sqrt(ab_t)``, ``s = sqrt(1 - ab_t)``, ``t ~ U(0, 1)``;
* the flow model: flow-matching loss ``|| v_hat(x_t, t) - (eps - x_0) ||^2``,
  ``x_t = (1 - t) x_0 + t eps``, ``t ~ U(0, 1)``;
* the classifier: cross-entropy on the training split, the inputs jittered with Gaussian
  noise of a random scale in ``[0, CLASSIFIER_NOISE]`` (so the reward stays smooth off the
  data, where Tweedie predictions and imperfect samples lie).

The architectures and the data split are the constants of ``pretrained`` (one place for
training and loading); the training settings are the constants below.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from particlekit.diffusion import pretrained as P

__all__ = ["load_digits_data", "digits_split", "fit", "train_all", "main"]

SEED = 0
GENERATIVE = {"num_steps": 30_000, "batch_size": 256, "learning_rate": 2e-3, "ema": 0.999}
CLASSIFIER = {"num_steps": 4_000, "batch_size": 128, "learning_rate": 1e-3, "ema": 0.0}
CLASSIFIER_NOISE = 0.2
WEIGHT_DECAY = 1e-4
WARMUP_STEPS = 200
CHUNK = 500  # optimiser steps per compiled call


def load_digits_data():
    """The 1,797 digits of scikit-learn, scaled to ``[-1, 1]``.

    Returns
    -------
    x : ndarray of float32, shape (1797, 64)
    y : ndarray of int32, shape (1797,)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data come from scikit-learn: pip install scikit-learn"
        ) from err
    x, y = load_digits(return_X_y=True)
    return (x / 8.0 - 1.0).astype(np.float32), y.astype(np.int32)


def digits_split():
    """The classifier's stratified train / test split (``pretrained.SPLIT_SEED``,
    ``pretrained.TEST_FRACTION``).

    Returns
    -------
    x_train, x_test : ndarray of float32, shapes (1347, 64), (450, 64)
    y_train, y_test : ndarray of int32, shapes (1347,), (450,)
    """
    from sklearn.model_selection import train_test_split

    x, y = load_digits_data()
    return train_test_split(x, y, test_size=P.TEST_FRACTION, random_state=P.SPLIT_SEED, stratify=y)


def fit(key, model, loss_fn, data, *, num_steps, batch_size, learning_rate, ema, log=print):
    """Minimise ``loss_fn(model, batch, key)`` over minibatches (drawn with replacement)
    of the rows of ``data`` with AdamW (warm-up, cosine decay).

    Returns the EMA of the parameters (decay ``ema``; ``0``: the last iterate).
    """
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, WARMUP_STEPS, num_steps)
    opt = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    params, static = eqx.partition(model, eqx.is_array)
    opt_state = opt.init(params)
    data = jnp.asarray(data)

    @jax.jit
    def chunk(carry, keys):
        def step(carry, k):
            params, opt_state, avg = carry
            k_batch, k_loss = jax.random.split(k)
            idx = jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])
            loss, grads = jax.value_and_grad(
                lambda p: loss_fn(eqx.combine(p, static), data[idx], k_loss)
            )(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            avg = jax.tree.map(lambda a, p: ema * a + (1.0 - ema) * p, avg, params)
            return (params, opt_state, avg), loss

        carry, losses = jax.lax.scan(step, carry, keys)
        return carry, jnp.mean(losses)

    carry = (params, opt_state, params)
    start = time.perf_counter()
    for i in range(0, num_steps, CHUNK):
        n = min(CHUNK, num_steps - i)
        keys = jax.random.split(jax.random.fold_in(key, i), n)
        carry, loss = chunk(carry, keys)
        if (i // CHUNK) % 10 == 0 or i + n == num_steps:
            log(f"  step {i + n:6d}  loss {float(loss):.4f}  {time.perf_counter() - start:6.1f} s")
    return eqx.combine(carry[2], static)


def diffusion_loss(model, x0, key):
    """Mean ``v``-prediction loss of the denoiser on a batch ``x0`` (B, 64)."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (x0.shape[0],))
    eps = jax.random.normal(k_eps, x0.shape)
    ab = P.SCHEDULE.alpha_bar(t)[:, None]
    a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    v_hat = jax.vmap(model.velocity)(a * x0 + s * eps, t)
    return jnp.mean((v_hat - (a * eps - s * x0)) ** 2)


def flow_loss(net, x0, key):
    """Mean flow-matching loss of the velocity network on a batch ``x0`` (B, 64)."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (x0.shape[0],))
    eps = jax.random.normal(k_eps, x0.shape)
    x_t = (1.0 - t[:, None]) * x0 + t[:, None] * eps
    return jnp.mean((jax.vmap(net)(x_t, t) - (eps - x0)) ** 2)


def classifier_loss(clf, batch, key):
    """Cross-entropy on a batch of rows ``[x (64), label]``, inputs jittered."""
    x, labels = batch[:, : P.DIGITS_DIM], batch[:, P.DIGITS_DIM].astype(jnp.int32)
    k_scale, k_noise = jax.random.split(key)
    scale = CLASSIFIER_NOISE * jax.random.uniform(k_scale, (x.shape[0], 1))
    x = x + scale * jax.random.normal(k_noise, x.shape)
    logits = jax.vmap(clf)(x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def train_all(out_dir, *, quick: bool = False, log=print):
    """Train the three models and write their weights into ``out_dir``.

    Returns a dict of the trained modules and the classifier's held-out accuracy.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = 0.1 if quick else 1.0
    gen = dict(GENERATIVE, num_steps=int(GENERATIVE["num_steps"] * scale))
    cls = dict(CLASSIFIER, num_steps=int(CLASSIFIER["num_steps"] * scale))
    x, _ = load_digits_data()
    x_train, x_test, y_train, y_test = digits_split()
    k_clf, k_diff, k_flow = jax.random.split(jax.random.key(SEED), 3)
    out = {}
    total = time.perf_counter()

    log("classifier")
    k_init, k_fit = jax.random.split(k_clf)
    rows = np.concatenate([x_train, y_train[:, None].astype(np.float32)], axis=1)
    clf = fit(k_fit, P.classifier_network(k_init), classifier_loss, rows, log=log, **cls)
    out["accuracy"] = float(np.mean(np.asarray(clf.predict(x_test)) == y_test))
    log(f"  held-out accuracy {out['accuracy']:.4f}")
    out["classifier"] = clf

    log("diffusion model")
    k_init, k_fit = jax.random.split(k_diff)
    out["diffusion"] = fit(k_fit, P.diffusion_network(k_init), diffusion_loss, x, log=log, **gen)

    log("flow model")
    k_init, k_fit = jax.random.split(k_flow)
    out["flow"] = fit(k_fit, P.flow_network(k_init), flow_loss, x, log=log, **gen)

    for name, file in P.WEIGHT_FILES.items():
        path = out_dir / file
        eqx.tree_serialise_leaves(path, out[name])
        log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    log(f"total training time {time.perf_counter() - total:.1f} s")
    return out


def main(argv=None):
    """Command line: ``python -m particlekit.diffusion.train_digits [--out DIR] [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().with_name("weights")
    parser.add_argument("--out", type=Path, default=default, help=f"default: {default}")
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps (a smoke test)")
    args = parser.parse_args(argv)
    train_all(args.out, quick=args.quick)


if __name__ == "__main__":
    main()
