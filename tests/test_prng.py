"""particlekit.prng: the same keys as jax.random.split, without the rolled loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit import prng


def _data(keys):
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(keys))
    return np.asarray(keys)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
@pytest.mark.parametrize("num", [1, 2, prng.SMALL, prng.SMALL + 1, 1000, 4097])
def test_split_is_bit_identical_to_jax_random(make_key, num):
    for seed in (0, 1, 2**31 - 1):
        key = make_key(seed)
        expected = _data(jax.random.split(key, num))
        assert (_data(prng.split(key, num)) == expected).all()
        jitted = jax.jit(prng.split, static_argnums=1)(key, num)
        assert jitted.dtype == key.dtype and (_data(jitted) == expected).all()


@pytest.mark.parametrize(
    "num", [1, prng.SMALL + 1, prng.ROLLED_SPLIT_MAX, prng.ROLLED_SPLIT_MAX + 1, 1000]
)
def test_particle_keys_are_jax_random_split_on_both_sides_of_the_rolled_loop(num):
    """Up to ``ROLLED_SPLIT_MAX`` keys come from ``jax.random``'s loop, more from the
    unrolled hash in a conditional: the same key data either way, under ``jit`` and
    ``vmap`` too."""
    key = jax.random.key(7)
    expected = _data(jax.random.split(key, num))
    keys = jax.jit(prng.particle_keys, static_argnums=1)(key, num)
    assert jax.random.key_impl(keys) == prng.PARTICLE_IMPL
    assert (_data(keys) == expected).all()
    batch = jax.random.split(key, 3)
    ours = jax.jit(jax.vmap(lambda k: prng.particle_keys(k, num)))(batch)
    theirs = jax.vmap(lambda k: jax.random.split(k, num))(batch)
    assert (_data(ours) == _data(theirs)).all()


def test_split_under_vmap_and_of_split_keys():
    keys = jax.random.split(jax.random.key(3), 5)
    ours = jax.vmap(lambda k: prng.split(k, 300))(keys)
    theirs = jax.vmap(lambda k: jax.random.split(k, 300))(keys)
    assert ours.shape == (5, 300)
    assert (_data(ours) == _data(theirs)).all()


def test_other_implementations_and_modes_go_to_jax_random():
    key = jax.random.key(0, impl="rbg")
    assert (_data(prng.split(key, 500)) == _data(jax.random.split(key, 500))).all()
    with jax.threefry_partitionable(False):
        key = jax.random.key(0)
        assert (_data(prng.split(key, 500)) == _data(jax.random.split(key, 500))).all()


def _num_while_loops(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text().count(" while(")


def test_move_draws_without_a_loop():
    """``pk.move``'s per-particle keys and the draws made with them are unrolled: a move that
    draws a normal per particle compiles to no while loop, and its keys are derived in a
    conditional of their own (kept out of the draws' fusion), while the same draws with
    ``jax.random.split``'s keys compile to two rolled loops (the split and the draws)."""
    n = 1000
    state = pk.init(jax.random.key(0), lambda k: jnp.zeros(()), n)
    read = pk.move(lambda k, x, t: x + jax.random.key_data(k)[0].astype(x.dtype))
    draw = pk.move(lambda k, x, t: x + jax.random.normal(k))

    def compiled(move):
        moved = jax.jit(lambda k, s: move(k, s, None)[0].particles)
        return moved.lower(jax.random.key(1), state).compile().as_text()

    for move in (read, draw):
        text = compiled(move)
        assert text.count(" while(") == 0
        assert text.count(" conditional(") == 1
    plain = jax.vmap(lambda k, x: x + jax.random.normal(k))
    assert (
        _num_while_loops(
            lambda k, x: plain(jax.random.split(k, n), x), jax.random.key(1), state.particles
        )
        == 2
    )
    # and the keys are jax.random.split's
    moved = read(jax.random.key(1), state, None)[0].particles
    expected = jax.random.key_data(jax.random.split(jax.random.key(1), n))[:, 0]
    assert (np.asarray(moved) == np.asarray(expected, np.float32)).all()


DRAWS = {
    "normal": lambda k: jax.random.normal(k, (300,)),
    "normal_scalar": lambda k: jax.random.normal(k),
    "uniform_2d": lambda k: jax.random.uniform(k, (7, 13)),
    "bits8": lambda k: jax.random.bits(k, (100,), jnp.uint8),
    "bits16": lambda k: jax.random.bits(k, (100,), jnp.uint16),
    "randint": lambda k: jax.random.randint(k, (100,), 0, 10),
    "gamma": lambda k: jax.random.gamma(k, 2.5, (50,)),
    "categorical": lambda k: jax.random.categorical(k, jnp.log(jnp.arange(1.0, 6.0)), shape=(80,)),
    "permutation": lambda k: jax.random.permutation(k, 100),
    "split_data": lambda k: jax.random.key_data(jax.random.split(k, 100)),
    "split_small": lambda k: jax.random.key_data(jax.random.split(k, 3)),
    "fold_in": lambda k: jax.random.key_data(jax.random.fold_in(k, 12345)),
    "numpyro": lambda k: __import__("numpyro").distributions.Normal(1.0, 2.0).sample(k, (100,)),
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_fused_keys_draw_the_same_bits(name):
    """The same random bits: integer results are equal; float results too, up to the
    rounding of arithmetic that XLA compiles differently around the fused hash (a gamma
    sampler's rejection loop, NumPyro's affine transform): a few float32 ulps."""
    draw = DRAWS[name]
    key = jax.random.key(7)

    def check(actual, expected):
        actual, expected = np.asarray(actual), np.asarray(expected)
        if np.issubdtype(expected.dtype, np.floating):
            np.testing.assert_allclose(actual, expected, rtol=4e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(actual, expected)

    expected = jax.jit(draw)(key)
    check(jax.jit(draw)(prng.population_key(key)), expected)
    check(draw(prng.population_key(key)), expected)
    # per-particle keys, under vmap, against jax.random.split's keys
    ours = jax.jit(jax.vmap(draw))(prng.particle_keys(key, 5))
    check(ours, jax.jit(jax.vmap(draw))(jax.random.split(key, 5)))


def test_fused_keys_only_for_typed_threefry_keys():
    legacy = jax.random.PRNGKey(0)
    assert prng.population_key(legacy) is legacy
    assert prng.particle_keys(legacy, 100).dtype == jnp.uint32
    rbg = jax.random.key(0, impl="rbg")
    assert prng.population_key(rbg) is rbg
    assert str(jax.random.key_impl(prng.particle_keys(rbg, 100))) == "rbg"
    key = jax.random.key(0)
    assert jax.random.key_impl(prng.particle_keys(key, 100)) == prng.PARTICLE_IMPL
    assert jax.random.key_impl(prng.population_key(key)) == prng.POPULATION_IMPL
    # keys of the implementations here are recognised again (no double wrapping)
    twice = prng.particle_keys(prng.population_key(key), 100)
    assert (_data(twice) == _data(jax.random.split(key, 100))).all()


def test_population_key_leaves_small_draws_to_the_rolled_loop():
    """A scalar drawn once and broadcast over the population stays a rolled loop (XLA
    would recompute an unrolled hash for every element); a population-wide draw and every
    per-particle draw are unrolled (no loop)."""
    xs = jnp.zeros(10_000)
    key = prng.population_key(jax.random.key(0))
    assert _num_while_loops(lambda k, x: x + jax.random.uniform(k), key, xs) >= 1
    assert _num_while_loops(lambda k, x: x + jax.random.normal(k, x.shape), key, xs) == 0
    keys = prng.particle_keys(jax.random.key(0), xs.shape[0])  # made outside: no loop below
    draw = jax.vmap(lambda k, x: x + jax.random.normal(k))
    assert _num_while_loops(draw, keys, xs) == 0


def test_in_memory_returns_the_function_values():
    key_data = jax.random.key_data(jax.random.key(3))
    got = jax.jit(lambda x: prng.in_memory(lambda a: (a + 1, a * 2), key_data, x))(jnp.arange(4))
    np.testing.assert_array_equal(got[0], np.arange(1, 5))
    np.testing.assert_array_equal(got[1], np.arange(4) * 2)


def test_in_memory_is_a_conditional_on_cpu_only_by_default():
    """On CPU the results come from a conditional on the key's words (kept out of the
    fusions that read them); lowered for a GPU there is none (a GPU conditional reads its
    predicate back to the host)."""
    key_data = jax.random.key_data(jax.random.key(3))
    traced = jax.jit(lambda x: prng.in_memory(lambda a: a + 1, key_data, x)).trace(jnp.arange(4))
    on_cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    on_gpu = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.compare" in on_cpu
    assert "stablehlo.compare" not in on_gpu
    everywhere = jax.jit(
        lambda x: prng.in_memory(lambda a: a + 1, key_data, x, only_cpu=False)
    ).trace(jnp.arange(4))
    assert "stablehlo.compare" in everywhere.lower(lowering_platforms=("cuda",)).as_text()


def test_packed_words_come_back_bit_for_bit_through_memory():
    special = [0, 1, 0x7FFFFF, 0x800000, 0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF,
               0x80000000, 0x80000001, 0xFF800001, 0xFFC00001, 0xFFFFFFFF]  # fmt: skip
    rng = np.random.default_rng(0)
    random_words = rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32)
    w1 = np.concatenate([np.asarray(special, np.uint32), random_words])
    w2 = np.roll(w1, 5)
    key_data = jax.random.key_data(jax.random.key(0))

    @jax.jit
    def round_trip(a, b):  # stored by a conditional's branch, as the backward rounds do
        return prng.unpack_words(prng.in_memory(prng.pack_words, key_data, a, b))

    a, b = round_trip(w1, w2)
    np.testing.assert_array_equal(np.asarray(a), w1)
    np.testing.assert_array_equal(np.asarray(b), w2)
