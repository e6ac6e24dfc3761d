"""The particle axis of the diffusion and steering recipes sharded over 8 forced host CPU
devices (see ``tests/test_sharding.py`` for the pattern).

One subprocess (XLA fixes the number of host devices at start-up) runs each recipe small,
with and without ``sharding=``, for a few seeds. Sharded and unsharded runs are compared
statistically (cumulative sums, hence resampling decisions, can differ across shardings),
and the final particles must really live on the 8 devices.
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from forced_devices import run_on_forced_devices

import particlekit as pk

SEEDS = 8
RECIPES = ("pdds", "fk_steering", "anneal", "steering_smc")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("p",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("p"))
    N = 256  # 32 particles per device

    mixture = pk.diffusion.gaussian_mixture(
        [0.7, 0.3], [[-1.5, 0.0], [1.5, 1.0]], stds=[[0.6, 0.8], [0.7, 0.5]],
        schedule="linear",
    )
    direction = jnp.array([1.0, 0.5])
    gaussian = pk.diffusion.gaussian_mixture([1.0], [[-1.0, 0.5]], stds=[[0.8, 1.2]])
    generator = pk.steering.toy_generator()

    # module-level functions: one compilation per recipe and sharding, reused over seeds
    def log_gamma(x):  # 2 pi N(x; 1, I): log Z = log(2 pi)
        return -0.5 * jnp.sum((x - 1.0) ** 2)

    def tilt(x):
        return x @ direction

    def count_a(tokens, length):
        return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))

    recipes = {
        "pdds": lambda k, **kw: pk.diffusion.pdds(
            k, log_gamma, 2, num_particles=N, num_steps=8, **kw
        ),
        "fk_steering": lambda k, **kw: pk.diffusion.fk_steering(
            k, mixture, tilt, num_particles=N, num_steps=20, sampler="em", **kw
        ),
        "anneal": lambda k, **kw: pk.diffusion.anneal(
            k, gaussian, 0.5, num_particles=N, num_steps=50, **kw
        ),
        "steering_smc": lambda k, **kw: pk.steering.smc(
            k, generator, count_a, num_particles=N, max_length=4, eos_id=3, **kw
        ),
    }

    def spread(x):
        return {
            "spec": list(x.sharding.spec)[:1],
            "devices": len({s.device for s in x.addressable_shards}),
            "rows": sorted(s.data.shape[0] for s in x.addressable_shards),
        }

    out = {}
    for name, fn in recipes.items():
        res = {"sharded": [], "unsharded": []}
        for seed in range(int(sys.argv[1])):
            key = jax.random.key(seed)
            sharded = fn(key, sharding=sharding)
            res["sharded"].append(float(sharded.log_evidence))
            res["unsharded"].append(float(fn(key).log_evidence))
        if name == "steering_smc":
            res.update(spread(sharded.final_state.particles.tokens))
        else:
            res.update(spread(sharded.samples))
        res["log_weights_devices"] = spread(sharded.log_weights)["devices"]
        out[name] = res
    svdd = pk.diffusion.svdd(
        jax.random.key(0), mixture, tilt, num_particles=N, num_children=2, num_steps=10,
        sharding=sharding,
    )
    out["svdd"] = spread(svdd.samples)
    out["steering_log_z"] = float(
        pk.steering.enumerate_sequences(generator, count_a, max_length=4, eos_id=3).log_evidence
    )
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_recipes_with_sharded_particles():
    out = run_on_forced_devices(SCRIPT, SEEDS)

    for name in (*RECIPES, "svdd"):
        res = out[name]
        # the final particles really live on the 8 devices, 32 per device
        assert res["spec"] == ["p"], (name, res["spec"])
        assert res["devices"] == 8 and res["rows"] == [32] * 8, (name, res)
    for name in RECIPES:
        res = out[name]
        assert res["log_weights_devices"] == 8, name
        sharded, unsharded = np.asarray(res["sharded"]), np.asarray(res["unsharded"])
        assert np.isfinite(sharded).all() and np.isfinite(unsharded).all(), name
        # same keys: the difference has a small spread (often exactly zero)
        diff = sharded - unsharded
        slack = 0.1 * unsharded.std(ddof=1) / np.sqrt(SEEDS) + 1e-4
        assert abs(diff.mean()) < 5.0 * diff.std(ddof=1) / np.sqrt(SEEDS) + slack, (name, diff)

    # and both agree with the exact evidence where it is known without discretisation bias
    for name, exact in (("pdds", np.log(2 * np.pi)), ("steering_smc", out["steering_log_z"])):
        for log_z in (np.asarray(out[name]["sharded"]), np.asarray(out[name]["unsharded"])):
            ratio = np.exp(log_z - exact)  # unbiased for 1
            se = ratio.std(ddof=1) / np.sqrt(SEEDS)
            assert abs(ratio.mean() - 1.0) < 5.0 * se + 1e-3, (name, log_z, exact)


_KEY = jax.random.key(0)
_MODEL = pk.diffusion.gaussian_mixture([1.0], [[0.0]], stds=1.0)
_CALLS = {
    "pdds": lambda **kw: pk.diffusion.pdds(
        _KEY, lambda x: -0.5 * jnp.sum(x**2), 2, num_particles=8, num_steps=2, **kw
    ),
    "fk_steering": lambda **kw: pk.diffusion.fk_steering(
        _KEY, _MODEL, lambda x: x[0], num_particles=8, num_steps=2, **kw
    ),
    "svdd": lambda **kw: pk.diffusion.svdd(
        _KEY, _MODEL, lambda x: x[0], num_particles=8, num_steps=2, **kw
    ),
    "fk_corrector": lambda **kw: pk.diffusion.fk_corrector(
        _KEY, [_MODEL], [1.0], num_particles=8, num_steps=2, **kw
    ),
    "anneal": lambda **kw: pk.diffusion.anneal(_KEY, _MODEL, 2.0, num_particles=8, **kw),
    "product_of_experts": lambda **kw: pk.diffusion.product_of_experts(
        _KEY, _MODEL, _MODEL, num_particles=8, **kw
    ),
    "geometric_average": lambda **kw: pk.diffusion.geometric_average(
        _KEY, _MODEL, _MODEL, 0.5, num_particles=8, **kw
    ),
    "steering_smc": lambda **kw: pk.steering.smc(
        _KEY,
        pk.steering.toy_generator(),
        lambda tokens, length: 0.0,
        num_particles=8,
        max_length=2,
        eos_id=3,
        **kw,
    ),
}


@pytest.mark.parametrize("recipe", sorted(_CALLS))
def test_sharding_must_be_a_sharding(recipe):
    # rejected before tracing, like pk.filters.bootstrap and pk.infer.SMC
    for bad in ("devices", jax.devices()):
        with pytest.raises(ValueError, match="jax.sharding.Sharding"):
            _CALLS[recipe](sharding=bad)
