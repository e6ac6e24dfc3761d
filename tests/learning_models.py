"""Small state-space models shared by the learning tests (``theta["a"]`` the AR coefficient)."""

import numpyro.distributions as dist

import particlekit as pk


def model_fn(theta):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(theta["a"] * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )


def narrow_fn(theta):
    """Observation noise of width 0.02: data shifted by 100 have zero likelihood."""
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(theta["a"] * x_prev, 1.0),
        observation=lambda x, t: dist.Uniform(x - 0.01, x + 0.01),
    )
