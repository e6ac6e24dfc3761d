"""Island resampling (``pk.resampling.islands``): offspring stay in their island, each
island keeps its weight, the filter's evidence stays unbiased, and with the particle axis
sharded into the islands the compiled resampling step has no gather (collectives counted in
the HLO on 8 forced host devices)."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import kalman, scalar_model
from forced_devices import run_on_forced_devices

import particlekit as pk


def test_offspring_stay_in_their_island_and_islands_keep_their_weight():
    n, num_islands = 64, 4
    log_w = jax.random.normal(jax.random.key(0), (n,)) * 3.0
    state = pk.ParticleState(
        particles=jnp.arange(n, dtype=jnp.float32), log_weights=log_w,
        log_evidence=jnp.zeros(()), ancestors=jnp.arange(n), previous_particles=jnp.zeros(n),
    )  # fmt: skip
    kernel = pk.resample(pk.resampling.islands("systematic", num_islands), ess_threshold=1.0)
    new, info = kernel(jax.random.key(1), state)
    anc = np.asarray(new.ancestors)
    assert np.array_equal(anc // 16, np.arange(n) // 16)
    assert np.array_equal(np.asarray(new.particles), anc.astype(np.float32))
    mass = jax.nn.logsumexp(log_w.reshape(num_islands, -1), axis=1)
    new_mass = jax.nn.logsumexp(new.log_weights.reshape(num_islands, -1), axis=1)
    np.testing.assert_allclose(np.asarray(new_mass), np.asarray(mass), rtol=1e-5, atol=1e-5)
    # within an island the offspring weigh the same
    assert np.allclose(np.ptp(np.asarray(new.log_weights).reshape(num_islands, -1), axis=1), 0)
    assert bool(info.resampled)


def test_exchange_passes_particles_with_their_weights_to_the_next_island():
    n, num_islands = 64, 4
    log_w = jax.random.normal(jax.random.key(0), (n,)) * 3.0
    state = pk.ParticleState(
        particles=jnp.arange(n, dtype=jnp.float32), log_weights=log_w,
        log_evidence=jnp.zeros(()), ancestors=jnp.arange(n), previous_particles=jnp.zeros(n),
    )  # fmt: skip
    plain, _ = pk.resample(pk.resampling.islands("systematic", num_islands), 1.0)(
        jax.random.key(1), state
    )
    mixed, _ = pk.resample(pk.resampling.islands("systematic", num_islands, exchange=3), 1.0)(
        jax.random.key(1), state
    )

    # the same weighted population, permuted: 3 particles per island moved one island on
    def pairs(s):
        return sorted(zip(np.asarray(s.particles), np.asarray(s.log_weights), strict=True))

    assert pairs(mixed) == pairs(plain)
    np.testing.assert_array_equal(np.asarray(mixed.particles), np.asarray(mixed.ancestors))
    moved = np.asarray(mixed.ancestors).reshape(num_islands, -1)[:, :3] // 16
    assert np.array_equal(moved, np.repeat((np.arange(num_islands) - 1) % num_islands, 3)
                          .reshape(num_islands, 3))  # fmt: skip
    with pytest.raises(ValueError, match="exchange"):
        pk.resampling.islands("systematic", 2, exchange=-1)


@pytest.mark.parametrize("exchange", [0, 8])
def test_island_filter_evidence_is_unbiased(exchange):
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    _, ys = ssm.simulate(jax.random.key(0), 30)
    exact = kalman(scalar_model(0.9, 1.0, 0.5), np.asarray(ys))[0]
    scheme = pk.resampling.islands("systematic", 8, exchange=exchange)
    log_z = np.array([
        float(pk.filters.bootstrap(jax.random.key(s), ssm, ys, num_particles=256,
                                   resampling=scheme, keep_history=False).log_evidence)
        for s in range(48)
    ])  # fmt: skip
    ratio = np.exp(log_z - exact)
    assert abs(ratio.mean() - 1.0) < 5.0 * ratio.std() / np.sqrt(ratio.size)
    assert ratio.std() < 1.0  # 8 islands of 32: still a usable estimator


def test_islands_bad_input():
    with pytest.raises(ValueError, match="num_islands"):
        pk.resampling.islands("systematic", 0)
    with pytest.raises(ValueError, match="unknown resampling"):
        pk.resampling.islands("nope", 2)
    kernel = pk.resample(pk.resampling.islands("systematic", 3))
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 8)
    with pytest.raises(ValueError, match="multiple of num_islands"):
        kernel(jax.random.key(1), state)
    with pytest.raises(ValueError, match="island resampling keeps"):
        pk.resampling.islands("systematic", 2)(jax.random.key(0), jnp.zeros(4))


HLO_SCRIPT = textwrap.dedent(
    """
    import json, re
    import jax, jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk
    from particlekit.run import constrain_particles

    mesh = jax.make_mesh((8,), ("p",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("p"))
    n = 8 * 256
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), n)
    state = state._replace(log_weights=jax.random.normal(jax.random.key(1), (n,)))
    state = jax.device_put(state, jax.tree.map(
        lambda a: sharding if a.ndim else NamedSharding(mesh, P()), state))
    out = {}
    for name, scheme in (("global", "systematic"),
                         ("islands", pk.resampling.islands("systematic", 8)),
                         ("exchange", pk.resampling.islands("systematic", 8, exchange=16))):
        kernel = pk.resample(scheme, ess_threshold=1.0)
        step = jax.jit(lambda k, s: constrain_particles(kernel(k, s)[0], sharding))
        text = step.lower(jax.random.key(2), state).compile().as_text()
        out[name] = {op: len(re.findall(rf"\\b{op}(?:-start)?\\(", text))
                     for op in ("all-gather", "all-reduce", "all-to-all",
                                "collective-permute", "reduce-scatter")}
    print("RESULT" + json.dumps(out))
    """
)


def test_island_resampling_needs_no_gather_when_sharded():
    out = run_on_forced_devices(HLO_SCRIPT)
    islands, glob = out["islands"], out["global"]
    # global resampling gathers the weights (and the chosen particles) across devices
    assert glob["all-gather"] + glob["all-to-all"] + glob["collective-permute"] >= 1
    # island resampling: nothing moves between devices but the reduction of the ESS
    assert islands["all-gather"] == islands["all-to-all"] == 0
    assert islands["collective-permute"] == islands["reduce-scatter"] == 0
    assert islands["all-reduce"] <= 2
    # the local exchange: neighbour-to-neighbour transfers only
    exchange = out["exchange"]
    assert exchange["all-gather"] == exchange["all-to-all"] == 0
    assert exchange["collective-permute"] >= 1
