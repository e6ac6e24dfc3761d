"""User-style reports on ``StateSpaceModel.simulate``, pytree states, SQMC in several
dimensions and SQMC on sharded populations.

- ``simulate`` took ``num_steps=True`` as 1, raised ``TypeError`` for ``2.5`` / ``"3"``, a
  ``TracerBoolConversionError`` for a traced count and a ``TypeError`` for an ``int`` seed;
  a transition that changed the state's shape or dtype was a raw ``lax.scan`` carry error,
  and a vectorized law that dropped the particle axis an ``IndexError``. All are now
  ``ValueError`` naming the argument or the law.
- A pytree state (a custom distribution drawing a dict) failed in ``simulate``
  (``KeyError``) and in every filter's model check (``zeros_like`` of a dict).
- ``pk.filters.sqmc`` had no ``sharding=`` argument, unlike the other filters; it now takes
  one and gives the unsharded run's answer with the same key (up to float rounding).
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import LinearGaussian, kalman
from forced_devices import run_on_forced_devices
from numpyro.distributions import Distribution

import particlekit as pk

SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)


# ---------------------------------------------------------------------------- simulate
@pytest.mark.parametrize("bad", [0, -3, 2.5, 3.0, True, "3", None])
def test_simulate_rejects_bad_num_steps(bad):
    with pytest.raises(ValueError, match="num_steps must be"):
        SSM.simulate(jax.random.key(0), bad)


def test_simulate_accepts_integral_counts_and_rejects_traced_ones():
    for n in (1, np.int64(4), jnp.int32(4)):
        xs, ys = SSM.simulate(jax.random.key(0), n)
        assert xs.shape == ys.shape == (int(n),)
    with pytest.raises(ValueError, match="concrete integer.*static"):
        jax.jit(lambda k, n: SSM.simulate(k, n))(jax.random.key(0), 4)
    xs, _ = jax.jit(SSM.simulate, static_argnums=1)(jax.random.key(0), 4)
    assert xs.shape == (4,)


def test_simulate_rejects_a_seed_for_a_key():
    with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
        SSM.simulate(0, 5)


@pytest.mark.parametrize(
    "initial, transition, match",
    [
        (
            lambda: dist.Normal(0.0, 1.0),
            lambda x, t: dist.Normal(x + jnp.zeros(2), 1.0).to_event(1),
            r"transition\(x_prev, t\) draws float32\[2\], but x_0 ~ initial\(\) is float32\[\]",
        ),
        (
            lambda: dist.Normal(jnp.zeros(2), 1.0).to_event(1),
            lambda x, t: dist.Normal(jnp.zeros(3), 1.0).to_event(1),
            r"draws float32\[3\], but x_0 ~ initial\(\) is float32\[2\]",
        ),
        (
            lambda: dist.Poisson(3.0),
            lambda x, t: dist.Normal(x, 1.0),
            r"draws float32\[\], but x_0 ~ initial\(\) is int32\[\]",
        ),
    ],
    ids=["scalar-to-vector", "event-size", "int-to-float"],
)
def test_simulate_names_a_transition_that_changes_the_state(initial, transition, match):
    ssm = pk.StateSpaceModel(initial, transition, lambda x, t: dist.Normal(jnp.sum(x), 1.0))
    with pytest.raises(ValueError, match=match):
        ssm.simulate(jax.random.key(0), 5)


@pytest.mark.parametrize("which", ["transition", "observation"])
def test_simulate_vectorized_law_without_particle_axis(which):
    laws = {
        "transition": lambda xs, t: dist.Normal(0.9 * xs, 1.0),
        "observation": lambda xs, t: dist.Normal(xs, 0.5),
    }
    laws[which] = lambda xs, t: dist.Normal(xs.mean(), 1.0)  # drops the batch
    ssm = pk.StateSpaceModel(lambda: dist.Normal(0.0, 1.0), **laws, vectorized=True)
    with pytest.raises(ValueError, match=f"{which}.*vectorized model.*draws shape \\(\\)"):
        ssm.simulate(jax.random.key(0), 5)


def test_simulate_non_distribution_is_named():
    ssm = pk.StateSpaceModel(
        lambda: dist.Normal(0.0, 1.0), lambda x, t: 0.9 * x, lambda x, t: dist.Normal(x, 1.0)
    )
    with pytest.raises(ValueError, match=r"transition\(x_prev, t\) must return"):
        ssm.simulate(jax.random.key(0), 5)


# ---------------------------------------------------------------------------- pytree states
class _PosVel(Distribution):
    """Independent unit normals around ``loc``, a dict ``{"pos", "vel"}`` of scalars: a
    state that is a pytree, not an array."""

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale
        super().__init__(batch_shape=(), event_shape=())

    def sample(self, key, sample_shape=()):
        keys = jax.random.split(key)
        return {
            name: self.loc[name] + self.scale[name] * jax.random.normal(k, sample_shape)
            for name, k in zip(("pos", "vel"), keys, strict=True)
        }

    def log_prob(self, x):
        return sum(dist.Normal(self.loc[n], self.scale[n]).log_prob(x[n]) for n in ("pos", "vel"))


PYTREE_SSM = pk.StateSpaceModel(
    initial=lambda: _PosVel({"pos": 0.0, "vel": 0.0}, {"pos": 1.0, "vel": 1.0}),
    transition=lambda x, t: _PosVel(
        {"pos": x["pos"] + 0.5 * x["vel"], "vel": 0.8 * x["vel"]}, {"pos": 0.5, "vel": 0.5}
    ),
    observation=lambda x, t: dist.Normal(x["pos"], 0.5),
)
PYTREE_LG = LinearGaussian(
    m0=np.zeros(2), P0=np.eye(2), A=np.array([[1.0, 0.5], [0.0, 0.8]]),
    Q=np.eye(2) * 0.25, H=np.array([[1.0, 0.0]]), R=np.eye(1) * 0.25,
)  # fmt: skip


def test_pytree_state_simulates_and_filters_to_the_kalman_evidence():
    xs, ys = PYTREE_SSM.simulate(jax.random.key(0), 15)
    assert set(xs) == {"pos", "vel"} and xs["pos"].shape == xs["vel"].shape == (15,)
    assert ys.shape == (15,)
    exact = kalman(PYTREE_LG, np.asarray(ys, np.float64))[0]
    seeds = 16
    keys = jax.random.split(jax.random.key(1), seeds)
    run = jax.jit(
        jax.vmap(
            lambda k: (
                pk.filters.bootstrap(
                    k, PYTREE_SSM, ys, num_particles=512, keep_history=False
                ).log_evidence
            )
        )
    )
    ratio = np.exp(np.asarray(run(keys), np.float64) - exact)
    assert abs(ratio.mean() - 1.0) < 5.0 * ratio.std() / np.sqrt(seeds) + 0.02, ratio
    res = pk.filters.bootstrap(jax.random.key(2), PYTREE_SSM, ys, num_particles=64)
    assert res.particles["vel"].shape == (15, 64) and not bool(res.failed)


# ---------------------------------------------------------------------------- SQMC in d dims
@pytest.mark.optimized
@pytest.mark.slow
def test_sqmc_five_dimensional_state_is_unbiased_at_large_n():
    """d = 5 (12 bits per axis of the Hilbert index, two uint32 words, the key-value sort
    above N = 2**16): ``Z_hat / Z`` has mean 1 and the filtering means match Kalman's."""
    d, steps = 5, 10
    a = 0.6 * np.eye(d)
    lg = LinearGaussian(np.zeros(d), np.eye(d), a, 0.5 * np.eye(d), np.eye(d), 0.25 * np.eye(d))
    a32, q32 = jnp.asarray(lg.A, jnp.float32), jnp.asarray(lg.Q, jnp.float32)
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.MultivariateNormal(jnp.zeros(d), jnp.eye(d)),
        transition=lambda x, t: dist.MultivariateNormal(a32 @ x, q32),
        observation=lambda x, t: dist.Normal(x, 0.5).to_event(1),
    )
    ys = ssm.simulate(jax.random.key(5), steps)[1]
    exact, means = kalman(lg, np.asarray(ys, np.float64))[:2]
    seeds = 8

    def one(key):
        res = pk.filters.sqmc(key, ssm, ys, num_particles=2**17, keep_history=True)
        return res.log_evidence, res.filtering_mean()

    log_z, mean = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), seeds))
    log_z, mean = np.asarray(log_z, np.float64), np.asarray(mean, np.float64)
    ratio = np.exp(log_z - exact)
    assert abs(ratio.mean() - 1.0) < 5.0 * ratio.std() / np.sqrt(seeds) + 0.01, log_z - exact
    assert np.abs(mean - means).max() < 0.1  # measured 0.04


def test_sqmc_small_populations_are_unbiased():
    """N = 1, 2, 4 (a Sobol net of one point is a uniform point): the evidence estimate is
    unbiased for the Kalman evidence over many seeds."""
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x, t: dist.Normal(0.9 * x, 1.0),
        observation=lambda x, t: dist.Normal(x, 1.0),
    )
    ys = ssm.simulate(jax.random.key(0), 5)[1]
    lg = LinearGaussian(np.zeros(1), np.eye(1), 0.9 * np.eye(1), np.eye(1), np.eye(1), np.eye(1))
    exact = kalman(lg, np.asarray(ys, np.float64))[0]
    seeds = 4000
    keys = jax.random.split(jax.random.key(11), seeds)
    for n in (1, 2, 4):
        run = jax.jit(
            jax.vmap(
                lambda k, n=n: pk.filters.sqmc(k, ssm, ys, num_particles=n, keep_history=False)
            )
        )
        res = run(keys)
        assert not bool(res.failed.any())
        ratio = np.exp(np.asarray(res.log_evidence, np.float64) - exact)
        assert abs(ratio.mean() - 1.0) < 5.0 * ratio.std() / np.sqrt(seeds), (n, ratio.mean())


def test_sqmc_every_observation_missing_and_one_step():
    res = pk.filters.sqmc(jax.random.key(0), SSM, np.full(6, np.nan), num_particles=8)
    assert float(res.log_evidence) == 0.0 and not bool(res.failed)
    y0 = 0.7
    one = jax.vmap(
        lambda k: pk.filters.sqmc(k, SSM, jnp.array([y0]), num_particles=256).log_evidence
    )(jax.random.split(jax.random.key(0), 16))
    exact = -0.5 * (np.log(2 * np.pi * 1.25) + y0**2 / 1.25)  # y_0 ~ N(0, 1 + 0.5**2)
    assert np.abs(np.exp(np.asarray(one, np.float64) - exact) - 1.0).max() < 0.05


# ---------------------------------------------------------------------------- sharded SQMC
SHARDED_SQMC = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import numpyro.distributions as dist
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk

    assert jax.device_count() == 8, jax.devices()

    def sharding(devices):
        mesh = jax.make_mesh((devices,), ("p",), axis_types=(AxisType.Auto,),
                             devices=jax.devices()[:devices])
        return NamedSharding(mesh, P("p"))

    a = jnp.array([[0.8, 0.2], [0.0, 0.7]])
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
        transition=lambda x, t: dist.MultivariateNormal(a @ x, 0.3 * jnp.eye(2)),
        observation=lambda x, t: dist.Normal(x, 0.5).to_event(1),
    )
    _, ys = ssm.simulate(jax.random.key(0), 20)
    out = {"ys": np.asarray(ys).tolist(), "runs": []}
    for devices, n, seed in [(8, 64, 1), (8, 1024, 2), (1, 64, 3), (2, 256, 4)]:
        key = jax.random.key(seed)
        res = pk.filters.sqmc(key, ssm, ys, num_particles=n, sharding=sharding(devices))
        ref = pk.filters.sqmc(key, ssm, ys, num_particles=n)
        final = res.final_state.particles
        out["runs"].append({
            "devices": devices, "n": n,
            "log_z": float(res.log_evidence), "ref": float(ref.log_evidence),
            "mean_diff": float(jnp.abs(res.filtering_mean() - ref.filtering_mean()).max()),
            "shards": sorted(s.data.shape[0] for s in final.addressable_shards),
        })
    errors = {}
    for name, devices, n in [("three", 3, 64), ("too_few", 8, 4)]:
        try:
            pk.filters.sqmc(jax.random.key(0), ssm, ys, num_particles=n,
                            sharding=sharding(devices))
        except ValueError as err:
            errors[name] = str(err)
    out["errors"] = errors
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_sqmc_with_sharded_particles_matches_the_unsharded_run():
    out = run_on_forced_devices(SHARDED_SQMC)
    for run in out["runs"]:
        # the particles are spread: n / devices per device
        assert run["shards"] == [run["n"] // run["devices"]] * run["devices"], run
        # same key, same answer up to float rounding of the cumulative weights
        assert abs(run["log_z"] - run["ref"]) < 1e-3 * max(1.0, abs(run["ref"])), run
        assert run["mean_diff"] < 0.05, run
    a = np.array([[0.8, 0.2], [0.0, 0.7]])
    lg = LinearGaussian(np.zeros(2), np.eye(2), a, 0.3 * np.eye(2), np.eye(2), 0.25 * np.eye(2))
    exact = kalman(lg, np.asarray(out["ys"]))[0]
    big = next(r for r in out["runs"] if r["n"] == 1024)
    assert abs(big["log_z"] - exact) < 0.5  # SQMC at N = 1024 in 2-D: sd about 0.1
    assert "power of two" in out["errors"]["three"] and "3 shards" in out["errors"]["three"]
    assert "multiple of the 8 shards" in out["errors"]["too_few"]
