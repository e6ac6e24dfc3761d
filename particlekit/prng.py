"""Threefry keys whose hash XLA fuses: the same bits as ``jax.random``, without its rolled
CPU loop.

``jax.random`` lowers the Threefry-2x32 hash (Salmon et al. 2011) on CPU as a rolled
``fori_loop`` over five groups of four rounds, to keep compile times short. For an array
of ``N`` words every iteration of that loop copies its ``N``-word carries (and, for ``N``
per-particle keys, the key schedule too), so a filter step that draws one normal per
particle spends a third to a half of its time in that loop. Here the 20 rounds are
unrolled into straight-line integer code that XLA fuses into one pass with the code that
uses the words.

The engine hands the user's functions keys of two PRNG implementations defined here
(``jax.extend.random.define_prng_impl``), both the Threefry-2x32 of ``jax.random`` with
``jax_threefry_partitionable=True`` bit for bit: splits, folds and random bits are the
same, so draws are the same numbers (``tests/test_prng.py``), up to the rounding of float
arithmetic that XLA compiles differently around the fused hash (a few float32 ulps, e.g.
in a gamma sampler's rejection loop; the filters' results came out identical):

- ``particle_keys(key, N)``: the ``N`` keys of a per-particle ``move`` / ``init`` /
  ``mcmc`` (``jax.random.split(key, N)``), of the implementation ``threefry2x32_fused``:
  every draw made with them is unrolled.
- ``population_key(key)``: the key of a ``vectorized`` ``move`` / ``init``, of the
  implementation ``threefry2x32_fused_wide``: draws of more than ``SMALL`` words are
  unrolled, smaller ones (a scalar shared by every particle) use ``jax.random``'s loop,
  which XLA cannot fuse: an unrolled scalar hash would be recomputed for each of the ``N``
  elements that broadcast it.

Keys derived *inside* a function (``split``, ``fold_in``) use ``jax.random``'s rolled
loop, whose output XLA cannot fuse, because an unrolled hash keyed by another unrolled
hash in the same fusion made XLA (jax 0.12) take minutes to compile. The per-particle
split of ``particle_keys`` is unrolled too, but computed in a branch of a conditional
(``_materialized``), which XLA keeps out of the draws' fusions: the keys are an array in
memory, as with the rolled loop, without its carries. On the 1-D bootstrap filter both
the vectorized path (0.85-0.9x) and the default per-particle path (1.0-1.1x) run at about
the speed of a tuned hand-written JAX filter (``benchmarks/README.md``, issue #19).

Keys of other implementations (``rbg``, ``unsafe_rbg``, custom), legacy ``uint32[2]`` keys
(user code may index them) and the non-partitionable mode are left as they are (a legacy
key's per-particle split is unrolled by ``split``; the draws made with legacy keys are
``jax.random``'s).

Examples
--------
>>> import jax
>>> from particlekit import prng
>>> key = jax.random.key(0)
>>> keys = prng.particle_keys(key, 1000)
>>> bool((jax.random.key_data(keys) == jax.random.key_data(jax.random.split(key, 1000))).all())
True
>>> bool((jax.random.normal(prng.population_key(key), (1000,))
...       == jax.random.normal(key, (1000,))).all())
True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.extend.random import define_prng_impl, threefry2x32_p

__all__ = ["threefry_2x32", "split", "particle_keys", "population_key", "rolled_key"]

# the Threefry-2x32 rotation constants (Salmon et al. 2011), as in ``jax.random``
THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))

SMALL = 64
"""Outputs of at most this many words (splits, draws) of a ``population_key`` use
``jax.random``'s rolled loop, which XLA does not fuse into its consumers."""

ROLLED_SPLIT_MAX = SMALL
"""``particle_keys`` derives at most this many keys with ``jax.random``'s rolled loop, more
by the unrolled hash in a conditional (``_materialized``). Where the two cross depends on
the model (``benchmarks/bench_small_filters.py``, CPU: with the rolled loop up to 256
particles the 1-D filter is 1.1-1.4x faster at 128-256 particles, the 4-D one 0.8-0.97x
as fast), so the threshold stays ``SMALL``."""


def threefry_2x32(k1, k2, x1, x2):
    """The Threefry-2x32 block cipher (20 rounds) of the counters ``(x1, x2)`` under the key
    ``(k1, k2)`` (``uint32`` arrays that broadcast), unrolled so that XLA fuses it into the
    code that uses the words: bit-identical to ``jax.random``'s hash, whose CPU lowering is
    a rolled loop."""
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in THREEFRY_ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r)))
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x1, x2


def _threefry_words(key, size: int):
    """``(k1, k2, typed)`` for a Threefry key whose ``size`` outputs are computed here
    (typed key or legacy ``uint32[2]``), or None when ``jax.random`` must handle it."""
    if size <= SMALL or size >= 2**32 or not jax.config.jax_threefry_partitionable:
        return None
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        data = jax.random.key_data(key)
        return data[0], data[1], True
    if key.dtype != jnp.uint32 or key.shape != (2,):
        return None
    if jax.config.jax_default_prng_impl != "threefry2x32":
        return None
    return key[0], key[1], False


def _counters(shape):
    """``jax.random``'s counters for an output of ``shape`` (fewer than ``2**32``
    elements): the row-major index as a 64-bit ``(high, low)`` pair, high word zero."""
    low = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    return jnp.zeros_like(low), low


def split(key, num: int = 2):
    """``jax.random.split(key, num)``: the same keys, without the rolled loop when ``num``
    is large.

    Examples
    --------
    >>> import jax
    >>> from particlekit import prng
    >>> prng.split(jax.random.key(0), 1000).shape
    (1000,)
    """
    num = int(num)
    words = _threefry_words(key, num)
    if words is None:
        return jax.random.split(key, num)
    k1, k2, typed = words
    data = _split_words(k1, k2, num)
    return jax.random.wrap_key_data(data, impl="threefry2x32") if typed else data


# ------------------------------------------------------------------ PRNG implementations
def _seed(seed):
    """``jax.random.key(seed)``'s key data: a 64-bit seed as two words (high word zero for
    32-bit seeds)."""
    seed = jnp.asarray(seed)
    low = seed.astype(jnp.uint32)
    if seed.dtype.itemsize == 8:
        return jnp.stack([(seed >> 32).astype(jnp.uint32), low])
    return jnp.stack([jnp.zeros_like(low), low])


def _hash(key_data, counters, fused: bool):
    if fused:
        return threefry_2x32(key_data[0], key_data[1], *counters)
    return threefry2x32_p.bind(key_data[0], key_data[1], *counters)


def _make_impl(name: str, fuse_small: bool):
    def fused(shape) -> bool:
        return fuse_small or math.prod(shape) > SMALL

    # Keys derived inside a function use jax.random's rolled loop, whose output XLA cannot
    # fuse: an unrolled hash whose key words come from another unrolled hash in the same
    # fusion made XLA (jax 0.12) take minutes to compile a per-particle draw.
    def split(key_data, shape):
        shape = tuple(shape)
        y1, y2 = _hash(key_data, _counters(shape), False)
        return jnp.stack([y1, y2], axis=-1)

    def random_bits(key_data, bit_width, shape):
        shape = tuple(shape)
        b1, b2 = _hash(key_data, _counters(shape), fused(shape))
        if bit_width == 64:
            return (b1.astype(jnp.uint64) << jnp.uint64(32)) | b2.astype(jnp.uint64)
        bits = b1 ^ b2
        return bits if bit_width == 32 else bits.astype(f"uint{bit_width}")

    def fold_in(key_data, data):
        counters = (jnp.zeros((), jnp.uint32), jnp.asarray(data, jnp.uint32))
        y1, y2 = _hash(key_data, counters, False)
        return jnp.stack([y1, y2])

    return define_prng_impl(
        key_shape=(2,), seed=_seed, split=split, random_bits=random_bits, fold_in=fold_in,
        name=name, tag="fry",
    )  # fmt: skip


PARTICLE_IMPL = _make_impl("threefry2x32_fused", fuse_small=True)
POPULATION_IMPL = _make_impl("threefry2x32_fused_wide", fuse_small=False)


def _typed_threefry(key) -> bool:
    """A typed key of ``jax.random``'s Threefry-2x32 or of the implementations here."""
    if not jax.config.jax_threefry_partitionable:
        return False
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return False
    impl = jax.random.key_impl(key)
    return impl in (PARTICLE_IMPL, POPULATION_IMPL) or str(impl) == "threefry2x32"


def particle_keys(key, num: int):
    """``jax.random.split(key, num)`` (the same bits) as keys whose every draw is unrolled
    and fused (``threefry2x32_fused``), for ``num`` per-particle functions. More than
    ``ROLLED_SPLIT_MAX`` keys are derived by the unrolled hash in a conditional of their
    own (``_materialized``), fewer by ``jax.random``'s loop. A legacy
    ``uint32[2]`` key gives legacy keys (``split``), another implementation's key
    ``jax.random.split``'s.

    Examples
    --------
    >>> import jax
    >>> from particlekit import prng
    >>> keys = prng.particle_keys(jax.random.key(0), 4)
    >>> x = jax.vmap(lambda k: jax.random.normal(k))(keys)
    >>> bool((x == jax.vmap(lambda k: jax.random.normal(k))(
    ...     jax.random.split(jax.random.key(0), 4))).all())
    True
    """
    if not _typed_threefry(key) or key.shape != () or num >= 2**32:
        return split(key, num)
    data = jax.random.key_data(key)
    if num <= ROLLED_SPLIT_MAX:
        data = jax.random.key_data(jax.random.split(key, num))  # the rolled loop
    else:
        data = _materialized(lambda d: _split_words(d[0], d[1], num), data, (num, 2))
    return jax.random.wrap_key_data(data, impl=PARTICLE_IMPL)


def call_with_keys(call, keys):
    """``call(keys)`` for keys made here; if a ``jax.random`` sampler refuses them,
    ``call`` again with ``jax.random``'s own keys of the same bits (the same draws, not
    fused). ``jax.random.poisson`` (so NumPyro's ``Poisson`` and the laws sampled through
    it) accepts only ``jax.random``'s Threefry implementation: a model with a Poisson state
    failed with ``NotImplementedError`` in every filter. The refusal comes while tracing,
    so the retry costs one more trace, nothing at run time.

    Examples
    --------
    >>> import jax
    >>> from particlekit import prng
    >>> keys = prng.particle_keys(jax.random.key(0), 3)
    >>> prng.call_with_keys(jax.vmap(lambda k: jax.random.poisson(k, 2.0)), keys).shape
    (3,)
    """
    try:
        return call(keys)
    except NotImplementedError as err:
        fused = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) and (
            jax.random.key_impl(keys) in (PARTICLE_IMPL, POPULATION_IMPL)
        )
        if not fused or "threefry2x32" not in str(err):
            raise
    return call(jax.random.wrap_key_data(jax.random.key_data(keys), impl="threefry2x32"))


def _split_words(k1, k2, num: int):
    """``jax.random.split``'s key data ``(num, 2)`` for the key words ``(k1, k2)``, by the
    unrolled hash."""
    y1, y2 = threefry_2x32(k1, k2, *_counters((num,)))
    return jnp.stack([y1, y2], axis=-1)


def _materialized(fn, key_data, shape):
    """``fn(key_data)`` (``uint32`` words of ``shape``) computed in a branch of a
    conditional, which XLA does not fuse with the code that uses the words: the per-particle
    keys are then an array in memory, not an unrolled hash recomputed inside each draw's
    unrolled hash (a nesting that made XLA on jax 0.12 take minutes to compile). The
    predicate is always true, but not a constant XLA can fold."""
    shapes = jax.ShapeDtypeStruct(shape, jnp.uint32)
    # a conditional on every platform, not only on CPU: computed inline, the nesting of
    # hashes could compile as slowly anywhere
    return in_memory(fn, key_data, key_data, shapes=shapes, only_cpu=False)


def in_memory(fn, key_data, *operands, shapes=None, only_cpu: bool = True):
    """``fn(*operands)``, computed in a branch of a conditional whose predicate is always
    true but not a constant XLA can fold (it reads ``key_data``, a key's words): XLA does
    not fuse the branch with the code that uses its results, so they are arrays in memory,
    computed once, instead of an unrolled hash (and what depends on it) recomputed inside
    every fusion that reads them. With ``only_cpu``, other platforms compute
    ``fn(*operands)`` as it is (``lax.platform_dependent``, resolved when lowering): a GPU
    conditional reads its predicate back to the host. ``shapes``: the results' shapes and
    dtypes when known (else ``fn`` is traced once more to find them).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> key = jax.random.key(0)
    >>> bits = jax.jit(lambda k: in_memory(
    ...     lambda k: jax.random.bits(k, (4,)), jax.random.key_data(k), k))(key)
    >>> bool((bits == jax.random.bits(key, (4,))).all())
    True
    """
    if shapes is None:
        shapes = jax.eval_shape(fn, *operands)

    def conditional(*operands):
        return jax.lax.cond(
            (jnp.ravel(key_data)[0] | jnp.uint32(1)) != 0,
            fn,
            lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
            *operands,
        )

    if not only_cpu:
        return conditional(*operands)
    return jax.lax.platform_dependent(*operands, cpu=conditional, default=fn)


def unit_uniform(bits: jax.Array) -> jax.Array:
    """Uniforms on ``[0, 1)`` from ``uint32`` words: the top 24 bits times ``2**-24``,
    exact in float32 (so ``floor(u * B)`` is the top ``log2 B`` bits for ``B <= 2**24``)."""
    return (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def pack_words(w1: jax.Array, w2: jax.Array) -> jax.Array:
    """Two ``uint32`` arrays as one ``complex64`` array, bit for bit (each word's bits as
    a float32's, real and imaginary parts; ``unpack_words`` undoes it). XLA computes a
    fused array element by element: two word arrays computed by one unrolled hash are two
    outputs, and the fusion that computes them runs the hash once for each, while one
    array holding both words runs it once. No arithmetic touches the floats, so NaN
    payloads and subnormals come back unchanged (``tests/test_prng.py``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> words = jnp.asarray([0, 1, 0x7FC00001, 0xFFFFFFFF], jnp.uint32)
    >>> a, b = unpack_words(pack_words(words, words[::-1]))
    >>> bool((a == words).all() and (b == words[::-1]).all())
    True
    """
    as_float = lambda w: jax.lax.bitcast_convert_type(w, jnp.float32)  # noqa: E731
    return jax.lax.complex(as_float(w1), as_float(w2))


def unpack_words(packed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two ``uint32`` arrays of ``pack_words``."""
    as_words = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint32)  # noqa: E731
    return as_words(jnp.real(packed)), as_words(jnp.imag(packed))


def population_key(key):
    """``key`` (the same bits) as a ``threefry2x32_fused_wide`` key, for a function that
    draws for the whole population at once; any other key as it is.

    Examples
    --------
    >>> import jax
    >>> from particlekit import prng
    >>> key = jax.random.key(0)
    >>> bool((jax.random.uniform(prng.population_key(key), (500,))
    ...       == jax.random.uniform(key, (500,))).all())
    True
    """
    if not _typed_threefry(key) or key.shape != ():
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=POPULATION_IMPL)


def rolled_key(key):
    """``key`` (the same bits) as a key of ``jax.random``'s own Threefry implementation,
    whose draws use its rolled loop; any other key as it is. For a draw made once, outside
    the time loop (a filter's initial particles, ``batched_laws.sample_iid``): unrolled, its
    hash was fused into, and compiled again in, each of the fusions that read the draw (four
    on the bootstrap filter), for a run time gain of one step's draw.

    Examples
    --------
    >>> import jax
    >>> from particlekit import prng
    >>> key = prng.population_key(jax.random.key(0))
    >>> bool((jax.random.normal(prng.rolled_key(key), (500,))
    ...       == jax.random.normal(jax.random.key(0), (500,))).all())
    True
    """
    if not _typed_threefry(key):
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl="threefry2x32")
