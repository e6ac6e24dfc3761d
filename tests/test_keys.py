"""One shared key check at every entry point: an int, a float or data where the key belongs
is a ValueError that says a PRNG key is expected (before anything is traced)."""

import inspect

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

import particlekit as pk

ENTRY_POINTS = [
    pk.init,
    pk.run,
    pk.run_until,
    pk.filters.bootstrap,
    pk.filters.guided,
    pk.filters.auxiliary,
    pk.smoothing.ffbs,
    pk.smoothing.paris,
    pk.pgibbs.csmc,
    pk.pgibbs.ppg,
    pk.pgibbs.particle_gibbs,
    pk.learning.mle,
    pk.learning.score_climbing,
    pk.diffusion.pdds,
    pk.diffusion.fk_steering,
    pk.diffusion.fk_corrector,
    pk.diffusion.fit_pdds_potential,
    pk.diffusion.best_of_n,
    pk.diffusion.svdd,
    pk.steering.smc,
    pk.steering.particle_gibbs,
]


def _call_with_key(fn, key):
    """Call ``fn(key, None, ...)`` with ``None`` for every other required argument: the key
    check comes first, so nothing else is looked at."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    args = [None for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    kwargs = {p.name: None for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty}
    return fn(key, *args, **kwargs)


@pytest.mark.parametrize("fn", ENTRY_POINTS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@pytest.mark.parametrize("bad", [0, 1.5, jnp.zeros(3)], ids=["int", "float", "array"])
def test_bad_key_is_a_clear_value_error(fn, bad):
    with pytest.raises(ValueError, match="must be a JAX PRNG key"):
        _call_with_key(fn, bad)


def test_legacy_and_typed_keys_are_accepted():
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        state = pk.init(key, lambda k: jax.random.normal(k), 4)
        assert state.log_weights.shape == (4,)


def test_smc_run_with_the_key_forgotten_names_the_key():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match="must be a JAX PRNG key"):
        pk.infer.SMC(model, num_particles=10).run(jnp.array([0.5, 1.0]))


@pytest.mark.parametrize("num_steps", [-3, 2.5, True])
def test_run_rejects_impossible_num_steps(num_steps):
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 4)
    with pytest.raises(ValueError, match="num_steps must be a non-negative integer"):
        pk.run(jax.random.key(1), pk.chain(pk.resample()), state, num_steps=num_steps)


@pytest.mark.parametrize(
    "fn",
    [pk.filters.bootstrap, pk.filters.guided, pk.filters.auxiliary, pk.run],
    ids=lambda f: f.__name__,
)
def test_bad_sharding_is_a_clear_value_error(fn):
    params = list(inspect.signature(fn).parameters.values())[1:]
    args = [None for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    kwargs = {p.name: None for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty}
    with pytest.raises(ValueError, match="sharding must be a jax.sharding.Sharding"):
        fn(jax.random.key(0), *args, **{**kwargs, "sharding": "gpu"})
