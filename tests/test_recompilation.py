"""Calling an entry point again with new keys and new data of the same shape reuses its
compilation (the default optimizer of ``mle`` and ``score_climbing`` is one object;
``particle_gibbs`` compiles through a module-level ``jax.jit``)."""

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import particlekit as pk
from particlekit import learning, pgibbs


def _model_fn(a):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(a * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )


def _keep(key, a, xs, ys):
    return a


def _data(seed):
    return jax.random.normal(jax.random.key(seed), (12,))


def _cache_sizes_of_three_calls(compiled, call):
    sizes = []
    for seed in range(3):
        jax.block_until_ready(jax.tree.leaves(call(jax.random.key(seed), _data(seed))))
        sizes.append(compiled._cache_size())
    return sizes


def test_mle_compiles_once():
    sizes = _cache_sizes_of_three_calls(
        learning._mle,
        lambda key, ys: pk.learning.mle(
            key, _model_fn, jnp.float32(0.5), ys, num_particles=8, num_iterations=2
        ),
    )
    assert sizes[0] == sizes[1] == sizes[2]


def test_particle_gibbs_compiles_once():
    sizes = _cache_sizes_of_three_calls(
        pgibbs._particle_gibbs,
        lambda key, ys: pk.pgibbs.particle_gibbs(
            key, _model_fn, ys, theta_init=jnp.float32(0.5), num_samples=2, num_particles=8,
            theta_update=_keep,
        ),
    )  # fmt: skip
    assert sizes[0] == sizes[1] == sizes[2]
