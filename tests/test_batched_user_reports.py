"""Regression tests from a user-style hunt over batched and compiled use (``jax.vmap`` over
keys or data, ``jax.jit``) of the public entry points.

Each test failed before its fix:

- ``test_fk_corrector_jit_vmap_matches_unbatched``: ``jax.jit(jax.vmap(fk_corrector))``
  raised ``TracerArrayConversionError`` in the coarse-step check (``noise_end_step_rate``
  staged ``schedule.beta`` of the cached, concrete time grid into the user's jit, then read
  it with ``np.asarray``); the check now evaluates it at trace time.
- ``test_pmmh_vmap_over_keys_matches_unbatched``: ``jax.vmap`` of ``pk.statespace.pmmh``
  raised ``TracerArrayConversionError`` in the warning that reads ``failed``; the
  warnings are now skipped for traced results, and the batched draws equal the unbatched.
- ``test_host_side_drivers_raise_clear_error_under_vmap``: ``SMC.run``, ``smc2``,
  ``log_likelihood_sd`` and ``choose_num_particles`` (which read results on the host) failed
  deep inside with ``TracerArrayConversionError`` / ``ConcretizationTypeError`` under
  ``vmap`` / ``jit``; now a ``ValueError`` before tracing that names the alternative.
- ``test_pmmh_runs_under_x64``, ``test_smc2_runs_under_x64``: with ``jax_enable_x64``
  PMMH failed in its path draw (``scan`` carry int64 from ``categorical`` vs int32
  ancestors) and SMC² in its move ``cond`` (float64 ``jnp.ones(())`` vs the float32
  acceptance rate).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import particlekit as pk

KEYS = jax.random.split(jax.random.key(1), 2)


def _assert_batched_equals_unbatched(batched, unbatched, rtol=1e-5, atol=1e-5):
    for i, one in enumerate(unbatched):
        leaves_b, leaves_u = jax.tree.leaves(batched), jax.tree.leaves(one)
        assert len(leaves_b) == len(leaves_u)
        for b, u in zip(leaves_b, leaves_u, strict=True):
            assert b.shape == (len(unbatched),) + jnp.shape(u)
            np.testing.assert_allclose(
                np.asarray(b[i], np.float64), np.asarray(u, np.float64), rtol=rtol, atol=atol
            )


def test_fk_corrector_jit_vmap_matches_unbatched():
    model = pk.diffusion.gaussian_mixture(
        [0.7, 0.3], [[-1.5, 0.0], [1.5, 1.0]], stds=[[0.6, 0.8], [0.7, 0.5]], schedule="linear"
    )

    def run(key):
        return pk.diffusion.fk_corrector(
            key, [model, model], [0.5, 0.5], num_particles=32, num_steps=10
        )

    unbatched = [run(k) for k in KEYS]  # caches the concrete time grid
    batched = jax.jit(jax.vmap(run))(KEYS)
    _assert_batched_equals_unbatched(batched, unbatched, rtol=1e-4, atol=1e-4)


def _model_fn(theta):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(theta["rho"] * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )


def _prior():
    numpyro.sample("rho", dist.Uniform(-1.0, 1.0))


MODEL = pk.statespace.ParametricSSM(_prior, _model_fn)
YS = _model_fn({"rho": 0.7}).simulate(jax.random.key(3), 10)[1]


def test_pmmh_vmap_over_keys_matches_unbatched():
    def run(key):
        return pk.statespace.pmmh(
            key, MODEL, YS, num_particles=8, num_samples=3, num_warmup=2, num_chains=1,
            progress_bar=False,
        )  # fmt: skip

    batched = jax.vmap(run)(KEYS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # low acceptance of a 10-step run
        unbatched = [run(k) for k in KEYS]
    _assert_batched_equals_unbatched(batched, unbatched, rtol=1e-4, atol=1e-4)


def _static_model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


_SMC = pk.infer.SMC(_static_model, num_particles=16, progress_bar=False)
HOST_SIDE = {
    "SMC.run": lambda k: _SMC.run(k, y=jnp.ones(3)),
    "smc2": lambda k: pk.statespace.smc2(
        k, MODEL, YS, num_theta_particles=8, num_x_particles=8, progress_bar=False
    ),
    "log_likelihood_sd": lambda k: pk.statespace.log_likelihood_sd(
        k, MODEL, YS, {"rho": 0.5}, num_particles=8
    ),
    "choose_num_particles": lambda k: pk.statespace.choose_num_particles(
        k, MODEL, YS, {"rho": 0.5}
    ),
}


@pytest.mark.parametrize("name", sorted(HOST_SIDE))
@pytest.mark.parametrize("transform", ["vmap", "jit"])
def test_host_side_drivers_raise_clear_error_under_vmap(name, transform):
    fn = HOST_SIDE[name]
    with pytest.raises(ValueError, match="cannot run inside jax.jit / jax.vmap"):
        if transform == "vmap":
            jax.vmap(fn)(KEYS)
        else:
            jax.jit(fn)(KEYS[0])


def test_pmmh_runs_under_x64():
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # low acceptance of a short run
        ys = jnp.asarray(YS, jnp.float64)
        res = pk.statespace.pmmh(
            jax.random.key(0), MODEL, ys, num_particles=8, num_samples=2, num_warmup=2,
            num_chains=1, progress_bar=False,
        )  # fmt: skip
        assert res.paths.shape == (1, 2, YS.shape[0]) and res.paths.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(res.log_likelihood)))


def test_smc2_runs_under_x64():
    with jax.enable_x64(True):
        ys = jnp.asarray(YS[:4], jnp.float64)
        res = pk.statespace.smc2(
            jax.random.key(0), MODEL, ys, num_theta_particles=8, num_x_particles=4,
            num_mcmc_steps=1, progress_bar=False,
        )  # fmt: skip
        assert res.log_evidence.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(res.log_evidence)))
