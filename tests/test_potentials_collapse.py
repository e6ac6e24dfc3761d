"""FK steering's "max", "sum" and "immediate" potentials under frequent resampling (issue 15
item 4), against the exactly tilted Gaussian mixture.

What was found (docs/steering.md, "Why max, sum and immediate collapse"): the collapse is
the variance of these potentials, not a defect. Up to the m-th potential step the product
of their potentials tilts the particles by about exp(m lmbda r) ("max", "immediate") or
exp(m (m + 1) / 2 lmbda r) ("sum"); resampling makes the population follow that
over-tilted target and the final correction cannot undo it with affordable N. The
bookkeeping (running aggregates and path totals carried through resampling, the final
correction telescoping to exp(lmbda r(x_0)), evidence increments with the pre-step
weights) is exact, which these tests check where the over-tilt is small. The old default
(a potential at every step: 99 here) was off by 94 ("sum"), 33 ("max") and 38
("immediate") nats of log Z at lmbda = 1; the default is now two intermediate potential
steps for these potentials, exact below.

The model is the Gaussian-mixture flow's VP rewrite (the same scores as
``gaussian_mixture``; the same configuration as test_flow_steering.py's FK test, so the
compilation is shared). Tolerances: K_SE standard errors over independent seeds.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# the model, reward and mixture of the flow FK test: the same reward class (and shapes)
# lets fk_steering's compilation be shared when both files run in one process
from test_flow_steering import MU, REWARD, SD, VP, A, W, check_weighted_target

import particlekit as pk
from particlekit.diffusion.fk_steering import (
    OVER_TILT_WARNING,
    POTENTIALS,
    default_resample_every,
)

N, SEEDS, K = 512, 8, 100
K_SE = 5.0


def _run(seed, lmbda, **kw):
    grid = pk.diffusion.sampling_grid("karras", K, schedule=VP.schedule)
    keys = jax.random.split(jax.random.key(seed), SEEDS)
    return jax.vmap(
        lambda k: pk.diffusion.fk_steering(
            k, VP, REWARD, num_particles=N, lmbda=lmbda, grid=grid, sampler="em", **kw
        )  # fmt: skip
    )(keys)


def _check_tilted_target(res, lmbda):
    """Weighted mean, component weights of the tilted mixture (mean posterior component
    probabilities) and Z against the closed form."""
    tw, tm, tc, log_z = pk.diffusion.tilted_gaussian_mixture(W, MU, stds=SD, direction=A,
                                                             lmbda=lmbda)  # fmt: skip
    tilted = pk.diffusion.gaussian_mixture_flow(tw, tm, covs=tc)
    check_weighted_target(res, tilted, tw, tm, log_z, SEEDS, K_SE)


@pytest.mark.parametrize("potential", ["max", "sum", "immediate"])
def test_default_interval_is_exact(potential):
    """The regime that failed: with the old default (a potential and a resampling at every
    step) log Z was off by 33-94 nats at lmbda = 1; the default now takes two intermediate
    potential steps and hits the tilted mixture."""
    assert default_resample_every(potential, K) == 34
    res = _run(1, 1.0, potential=potential)
    assert int(res.resampled[0].sum()) == 2
    _check_tilted_target(res, 1.0)


# lmbda small enough that the over-tilt of 19 potential steps stays a few nats
SMALL_LAMBDA = {"sum": 0.01, "max": 0.2, "immediate": 0.2}


@pytest.mark.parametrize("potential", ["max", "sum", "immediate"])
def test_frequent_resampling_bookkeeping_is_exact(potential):
    """19 intermediate potential steps, each followed by resampling: exact when the
    over-tilt is small. A defect in the bookkeeping would show here: without the final
    correction (or with path totals not carried through resampling) the target would be
    tilted by about lmbda * 190 ("sum") or lmbda * 20 ("max", "immediate") instead of
    lmbda, moving the mean by several units."""
    lmbda = SMALL_LAMBDA[potential]
    with pytest.warns(UserWarning, match="over-tilt"):
        res = _run(2, lmbda, potential=potential, resample_every=5)
    assert int(res.resampled[0].sum()) == 19
    _check_tilted_target(res, lmbda)


def test_final_weights_telescope_to_the_reward():
    """Without resampling every path's product of potentials must be exp(lmbda r(x_0))
    exactly: the final log-weights minus lmbda r(x_0) are one constant, for every
    potential and 19 intermediate potential steps."""
    lmbda = 0.7
    for potential in POTENTIALS:
        over_tilting = potential in OVER_TILT_WARNING
        with pytest.warns(UserWarning) if over_tilting else contextlib.nullcontext():
            res = pk.diffusion.fk_steering(
                jax.random.key(3), VP, REWARD, num_particles=64, num_steps=20, lmbda=lmbda,
                potential=potential, resample_every=1, ess_threshold=0.0, sampler="em",
            )  # fmt: skip
        assert not bool(jnp.any(res.resampled))
        gap = np.asarray(res.log_weights - lmbda * res.rewards, np.float64)
        scale = 1.0 + np.max(np.abs(np.asarray(res.log_weights)))
        assert np.ptp(gap) < 1e-4 * scale, (potential, np.ptp(gap))
