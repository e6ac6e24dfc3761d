"""kernels.normalizing_resample + reweight_normalized: the filters' step with one
normalisation pass fewer gives the same results, bit for bit, as resample + reweight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit import kernels


def _steps(normalized: bool, scheme, ess_threshold):
    def propagate(k, x, t):
        return 0.9 * x + jax.random.normal(k)

    def log_g(x_prev, x, t):
        # an impossible observation at t = 5 (every weight zero), outliers elsewhere
        return jnp.where(t == 5, -jnp.inf, -0.5 * ((x - 3.0 * jnp.sin(t)) / 0.3) ** 2)

    if normalized:
        return kernels.chain(
            kernels.normalizing_resample(scheme, ess_threshold),
            kernels.move(propagate),
            kernels.reweight_normalized(log_g),
        )
    return kernels.chain(
        kernels.resample(scheme, ess_threshold), kernels.move(propagate), kernels.reweight(log_g)
    )


@pytest.mark.parametrize("ess_threshold", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("scheme", ["systematic", pk.resampling.islands("systematic", 4)])
def test_same_bits_as_resample_and_reweight(scheme, ess_threshold):
    state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 256)
    ts = jnp.arange(12, dtype=jnp.float32)
    out = []
    for normalized in (False, True):
        step = _steps(normalized, scheme, ess_threshold)
        final, trace = pk.run(jax.random.key(1), step, state, ts, progress_bar=False)
        out.append((final.log_weights, final.particles, trace.log_evidence, trace.info.ess))
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.isneginf(np.asarray(out[1][2][5:])).all()  # the failure is kept, not hidden


@pytest.mark.parametrize("ess_threshold", [0.0, 0.5, 1.0])
def test_normalizing_resample_leaves_normalised_weights(ess_threshold):
    n = 100
    log_w = jnp.linspace(-30.0, 5.0, n)
    state = pk.init(jax.random.key(0), lambda k: jnp.zeros(()), n)._replace(log_weights=log_w)
    new, info = kernels.normalizing_resample("systematic", ess_threshold)(jax.random.key(1), state)
    assert abs(float(jax.nn.logsumexp(new.log_weights))) < 1e-5
    plain, plain_info = kernels.resample("systematic", ess_threshold)(jax.random.key(1), state)
    np.testing.assert_array_equal(np.asarray(new.ancestors), np.asarray(plain.ancestors))
    assert float(info.ess) == float(plain_info.ess)
    if ess_threshold > 0.0:  # this population resamples at 0.5 and 1.0
        np.testing.assert_allclose(np.asarray(new.log_weights), -np.log(n), rtol=1e-6)


def test_reweight_normalized_does_not_normalise():
    """It takes the weights as normalised: on unnormalised ones the increment is
    ``logsumexp(log w + log G)``, not ``logsumexp(log W + log G)``."""
    n = 8
    state = pk.init(jax.random.key(0), lambda k: jnp.zeros(()), n)  # log w = 0: sum N
    _, info = kernels.reweight_normalized(lambda xp, x, y: jnp.zeros(()))(None, state)
    _, plain = kernels.reweight(lambda xp, x, y: jnp.zeros(()))(None, state)
    assert float(plain.log_evidence_increment) == pytest.approx(0.0, abs=1e-6)
    assert float(info.log_evidence_increment) == pytest.approx(np.log(n), rel=1e-6)
