import jax
import numpyro.distributions as dist

import particlekit as pk


def test_bootstrap_runs():
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    _, ys = ssm.simulate(jax.random.key(0), 20)
    res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=64)
    assert res.particles.shape == (20, 64)
    assert bool(jax.numpy.isfinite(res.log_evidence))
