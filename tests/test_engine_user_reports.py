"""Regression tests from a second user-style hunt through the engine and filter layer.

A user resampled at float32 extremes, built filters from the primitives, ran adaptive loops
with ``pk.run_until`` and sharded runs over meshes made the way JAX's documentation makes
them. Findings (each test below failed before its fix):

1. A boolean (or complex) log-weight array was accepted by every resampling scheme, by
   ``ess``, ``log_normalize`` and ``normalize``, and read as the log-weights ``{0, 1}``: a
   mask ``w > 0`` passed as log-weights gave ``ess([True, False]) = 1.9`` (not 1) and the
   masked-out particles still received offspring, silently. ``pk.reweight`` already refused
   a boolean log-potential. Fix: the shared shape check of ``particlekit.resampling`` also
   rejects boolean and complex dtypes with a ``ValueError`` before tracing.
2. A sharding over a mesh from ``jax.make_mesh(shape, names)`` (whose axes are
   ``AxisType.Explicit`` by default in this JAX) failed in the middle of tracing with JAX's
   "can only refer to Auto axes of the mesh ... You probably meant to use `reshard` API?",
   which is not the fix. Fix: ``check_sharding`` (every recipe, and ``pk.run``) raises a
   ``ValueError`` before tracing naming ``axis_types=(AxisType.Auto,)``.
3. ``pk.run_until`` accepted a ``done_fn`` returning a float and read it as truthy whenever
   non-zero: ``lambda s: 1.0 - s.temperature`` stopped before the first step, and a NaN
   stopped too, silently. Fix: a ``ValueError`` at trace time unless the result is boolean
   (or integer). Also ``max_steps=np.array(3)`` (a 0-d NumPy integer) was refused although
   ``np.int64(3)`` and ``jnp.array(3)`` were accepted; it is now accepted.
4. ``particlekit.distributed``'s cross-process fingerprint (which every multi-process
   recipe uses to check that all processes got the same key and data) handled a PRNG key
   only at the top level: a key inside a PyTree reached ``np.asarray`` and raised a
   ``TypeError``. Fix: key leaves are hashed by their key data wherever they sit.

Also documented (no code change; ``particlekit/resampling.py`` module notes): the inverse-CDF
schemes read shares off float32 cumulative weights, so their expected offspring counts are
off ``M W_i`` by a rounding term of order ``M 2**-24`` (rms 0.3, max 2.5 offspring at
``N = 2**24``); ``ssp`` keeps floor / ceil at every ``N``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import particlekit as pk
from particlekit import resampling

N = 8


def _state():
    return pk.init(jax.random.key(0), lambda k: jax.random.normal(k), N)


# ------------------------------------------------------------------ 1. boolean weights
@pytest.mark.parametrize(
    "fn",
    [
        resampling.ess,
        lambda lw: resampling.log_normalize(lw),
        resampling.normalize,
        lambda lw: resampling.systematic(jax.random.key(0), lw),
        lambda lw: resampling.multinomial(jax.random.key(0), lw, 3),
        lambda lw: resampling.ssp(jax.random.key(0), lw),
        lambda lw: resampling.conditional_systematic(jax.random.key(0), lw),
    ],
)
def test_boolean_log_weights_are_refused(fn):
    mask = jnp.array([True, False, False, True])
    with pytest.raises(ValueError, match="boolean"):
        fn(mask)
    with pytest.raises(ValueError, match="boolean"):
        jax.jit(fn)(mask)  # a static dtype check: also before tracing under jit
    with pytest.raises(ValueError, match="real"):
        fn(mask.astype(jnp.complex64))


def test_integer_log_weights_still_accepted():
    # integers are numbers, not indicators: log-weights [0, 0] give ESS 2 exactly
    assert float(resampling.ess(jnp.zeros(2, jnp.int32))) == 2.0


# ------------------------------------------------------------------ 2. explicit mesh axes
def _explicit_sharding():
    mesh = jax.make_mesh((1,), ("p",), axis_types=(AxisType.Explicit,))
    return NamedSharding(mesh, P("p"))


def test_explicit_mesh_axes_raise_a_clear_error_in_run():
    step = pk.move(lambda k, x, y: x)
    with pytest.raises(ValueError, match=r"not AxisType\.Auto.*axis_types="):
        pk.run(jax.random.key(1), step, _state(), num_steps=2, sharding=_explicit_sharding())


def test_explicit_mesh_axes_raise_a_clear_error_in_the_filters():
    import numpyro.distributions as dist

    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    ys = jnp.zeros(3)
    with pytest.raises(ValueError, match=r"not AxisType\.Auto"):
        pk.filters.bootstrap(
            jax.random.key(1), ssm, ys, num_particles=N, sharding=_explicit_sharding()
        )
    with pytest.raises(ValueError, match=r"not AxisType\.Auto"):
        pk.filters.sqmc(jax.random.key(1), ssm, ys, num_particles=N, sharding=_explicit_sharding())


def test_auto_mesh_axes_still_run():
    mesh = jax.make_mesh((1,), ("p",), axis_types=(AxisType.Auto,))
    step = pk.move(lambda k, x, y: x + 1.0)
    final, _ = pk.run(
        jax.random.key(1), step, _state(), num_steps=2, sharding=NamedSharding(mesh, P("p"))
    )
    np.testing.assert_allclose(final.particles, _state().particles + 2.0, rtol=1e-6)


# ------------------------------------------------------------------ 3. run_until
def _count_step(key, state, t):
    del key, t
    return state + 1.0


def test_run_until_float_done_fn_is_refused():
    with pytest.raises(ValueError, match="boolean"):
        pk.run_until(jax.random.key(0), _count_step, jnp.zeros(()), lambda s: 3.0 - s, max_steps=9)
    with pytest.raises(ValueError, match="boolean"):
        pk.run_until(
            jax.random.key(0), _count_step, jnp.zeros(()), lambda s: jnp.nan * s, max_steps=9
        )


def test_run_until_boolean_and_integer_done_fn():
    final, steps = pk.run_until(
        jax.random.key(0), _count_step, jnp.zeros(()), lambda s: s >= 3.0, max_steps=9
    )
    assert int(steps) == 3 and float(final) == 3.0
    _, steps = pk.run_until(
        jax.random.key(0), _count_step, jnp.zeros(()), lambda s: (s >= 2.0).astype(int), max_steps=9
    )
    assert int(steps) == 2


def test_run_until_accepts_zero_dimensional_numpy_max_steps():
    _, steps = pk.run_until(
        jax.random.key(0), _count_step, jnp.zeros(()), lambda s: False, max_steps=np.array(3)
    )
    assert int(steps) == 3
    with pytest.raises(ValueError, match="max_steps"):
        pk.run_until(
            jax.random.key(0), _count_step, jnp.zeros(()), lambda s: False, max_steps=np.array(2.5)
        )


# ------------------------------------------------------------------ 4. process fingerprints
def test_fingerprint_of_a_pytree_holding_a_key():
    from particlekit import distributed

    # a typed key inside a PyTree was handed to np.asarray (a TypeError) instead of hashed
    one = distributed._fingerprint({"key": jax.random.key(0), "y": jnp.ones(2)})
    same = distributed._fingerprint({"key": jax.random.key(0), "y": jnp.ones(2)})
    other = distributed._fingerprint({"key": jax.random.key(1), "y": jnp.ones(2)})
    assert one == same and one != other
    # a bare key hashes as before: by its key data
    assert distributed._fingerprint(jax.random.key(3)) == distributed._fingerprint(
        jax.random.key_data(jax.random.key(3))
    )
