"""The particle axis sharded over 8 forced host CPU devices.

XLA fixes the number of host devices at start-up, so the sharded runs happen in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Cumulative sums
are not bitwise equal across shardings (resampling decisions can differ), so the sharded
and unsharded filters are compared statistically: both are unbiased for the Kalman
evidence and agree with each other within Monte Carlo error.
"""

import textwrap

import numpy as np
import pytest
from exact import kalman, scalar_model
from forced_devices import run_on_forced_devices

SEEDS = 16

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import numpyro.distributions as dist
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("p",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("p"))
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    _, ys = ssm.simulate(jax.random.key(0), 30)
    out = {"ys": np.asarray(ys).tolist(), "sharded": [], "unsharded": []}
    for seed in range(int(sys.argv[1])):
        key = jax.random.key(100 + seed)
        res = pk.filters.bootstrap(key, ssm, ys, num_particles=512, sharding=sharding)
        out["sharded"].append(float(res.log_evidence))
        ref = pk.filters.bootstrap(key, ssm, ys, num_particles=512)
        out["unsharded"].append(float(ref.log_evidence))
    final = res.final_state.particles
    out["final_spec"] = list(final.sharding.spec)
    out["final_shards"] = sorted(s.data.shape[0] for s in final.addressable_shards)
    out["final_devices"] = len({s.device for s in final.addressable_shards})
    out["history_spec"] = list(res.particles.sharding.spec)
    out["resampled"] = int(res.resampled.sum())
    print("RESULT" + json.dumps(out))
    """
)


def test_bootstrap_with_sharded_particles():
    out = run_on_forced_devices(SCRIPT, SEEDS)

    # the particles really live on 8 devices, 64 per device
    assert out["final_spec"] == ["p"]
    assert out["final_shards"] == [64] * 8 and out["final_devices"] == 8
    assert out["history_spec"] == [None, "p"]
    assert out["resampled"] > 0

    exact = kalman(scalar_model(0.9, 1.0, 0.5), np.asarray(out["ys"]))[0]
    sharded, unsharded = np.asarray(out["sharded"]), np.asarray(out["unsharded"])
    assert np.isfinite(sharded).all()
    # both unbiased for Z on the natural scale ...
    for log_z in (sharded, unsharded):
        ratio = np.exp(log_z - exact)
        assert abs(ratio.mean() - 1.0) < 5.0 * ratio.std() / np.sqrt(SEEDS)
    # ... and in agreement with each other (same keys: the difference has small spread)
    diff = sharded - unsharded
    assert abs(diff.mean()) < 5.0 * diff.std() / np.sqrt(SEEDS) + 1e-4


SMC_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import numpyro, numpyro.distributions as dist
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk

    mesh = jax.make_mesh((8,), ("p",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("p"))

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.5, 2.0))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = jnp.asarray(np.random.default_rng(0).normal(1.0, 1.0, size=20), jnp.float32)
    out = {"y": np.asarray(y).tolist()}
    for kernel in ("rwm", "imh", "hmc"):
        smc = pk.infer.SMC(
            model, num_particles=512, kernel=kernel, sharding=sharding, num_chains=1
        )
        zs = []
        for seed in range(8):
            smc.run(jax.random.key(seed), y)
            zs.append(float(smc.log_evidence))
        positions = smc.result.positions
        out[kernel] = {
            "log_z": zs,
            "mean": float(np.mean(smc.get_samples()["mu"])),
            "devices": len({s.device for s in positions.addressable_shards}),
            "shard_rows": sorted(s.data.shape[1] for s in positions.addressable_shards),
        }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_tempered_smc_with_sharded_particles():
    from scipy.stats import multivariate_normal

    out = run_on_forced_devices(SMC_SCRIPT)
    y = np.asarray(out["y"])
    n = y.size
    log_z = multivariate_normal(np.full(n, 0.5), np.eye(n) + 4.0 * np.ones((n, n))).logpdf(y)
    post_var = 1.0 / (1.0 / 4.0 + n)
    post_mean = post_var * (0.5 / 4.0 + y.sum())
    for kernel in ("rwm", "imh", "hmc"):
        res = out[kernel]
        # each chain's 512 particles live on the 8 devices, 64 per device
        assert res["devices"] == 8 and res["shard_rows"] == [64] * 8
        zs = np.asarray(res["log_z"])
        se = zs.std(ddof=1) / np.sqrt(zs.size)
        assert abs(zs.mean() - log_z) < 5.0 * se + 0.5 * zs.var(ddof=1) + 1e-3, (zs, log_z)
        # posterior mean from 512 draws: sd sqrt(post_var / 512) ~ 0.01, loose 0.1 bound
        assert abs(res["mean"] - post_mean) < 0.1


BAD_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp
    import numpyro.distributions as dist
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk

    mesh = jax.make_mesh((8,), ("p",), axis_types=(AxisType.Auto,))
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    out = {}
    try:
        pk.filters.bootstrap(jax.random.key(0), ssm, jnp.zeros(5), num_particles=100,
                             sharding=NamedSharding(mesh, P("p")))
    except ValueError as err:
        out["divide"] = str(err)
    try:
        NamedSharding(mesh, P("q"))
    except ValueError as err:
        out["axis"] = str(err)
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 100)
    step = pk.move(lambda k, x, y: x + jax.random.normal(k))
    try:  # pk.run did not check the particle count against the shards
        pk.run(jax.random.key(1), step, state, num_steps=2, sharding=NamedSharding(mesh, P("p")))
    except ValueError as err:
        out["run_divide"] = str(err)
    try:  # a spec for 2-D particles failed inside with_sharding_constraint on the weights
        pk.filters.bootstrap(jax.random.key(0), ssm, jnp.zeros(5), num_particles=104,
                             sharding=NamedSharding(mesh, P("p", None)))
    except ValueError as err:
        out["two_axes"] = str(err)
    print("RESULT" + json.dumps(out))
    """
)


def test_bad_sharding_is_a_value_error():
    out = run_on_forced_devices(BAD_SCRIPT)
    assert "multiple of the 8 shards" in out["divide"] and "e.g. 104" in out["divide"]
    assert "q" in out["axis"]  # JAX itself rejects a mesh axis that does not exist
    assert "num_particles=100 is not a multiple of the 8 shards" in out["run_divide"]
    assert "particle (leading) axis only" in out["two_axes"]
