"""Resampling schemes, effective sample size and log-weight normalisation.

Every scheme has the signature ``scheme(key, log_weights, num_samples=None) -> int32[M]``
and takes *unnormalised log* weights, so it is safe in float32 for log-weights that span
thousands of nats. ``num_samples`` defaults to ``N = log_weights.shape[0]``.

The returned ancestor indices ``a`` are such that the offspring count of particle ``i``,
``#{j : a_j = i}``, has expectation ``M W_i`` where ``W`` are the normalised weights.

Non-finite log-weights are handled the same way everywhere: ``NaN`` and ``+inf`` count as
``-inf`` (zero weight). If *every* weight is zero the schemes fall back to uniform weights;
callers that care (the filters) detect this case through ``log_normalize``'s second
output, which is then ``-inf``.

Cost. ``systematic``, ``stratified``, ``ssp`` and ``killing`` run in ``O(N + M)``: the
inverse-CDF search is replaced by a scatter-add histogram of "first point" indices and a
cumulative sum (no sort, no binary search). ``unsorted_multinomial`` (and the random
parts of ``residual`` and ``killing``) invert the CDF at i.i.d. uniforms by a binary search
started from a coarse guide table, ``O(N + M log S)`` with ``S`` the widest bucket;
``multinomial`` sorts those draws by a histogram and a prefix sum.

Precision at very large ``N``. The inverse-CDF schemes (``multinomial``, ``systematic``,
``stratified``, the random part of ``residual``, ``killing``'s replacements) read each
particle's share off the cumulative weights (exact integer sums, ``_cdf``), which float32
holds to about ``2**-24``: the expected offspring count ``M (cdf_i - cdf_{i-1})`` then
differs from ``M W_i`` by a rounding term of order ``M 2**-24`` per particle (measured on
Gaussian log-weights: rms 0.002 and max 0.006 offspring at ``N = M = 1e5``, rms 0.02 / max
0.1 at ``1e6``, rms 0.3 / max 1 at ``2**24``), so ``systematic``'s "floor or ceil" also
fails there. ``ssp`` works from the weights themselves and keeps ``floor(M W_i)`` /
``ceil(M W_i)`` at every ``N``; above about ``1e6`` particles in float32 prefer it, or run
in float64 (``jax_enable_x64`` and float64 log-weights).

Conditional variants (``conditional_*``) are the reference-preserving versions used by
conditional SMC (particle Gibbs): slot 0 always receives ancestor 0, and the other slots
are drawn from the scheme's law conditional on that event (Chopin & Singh 2015, Sec. 3).
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from particlekit import prng

__all__ = [
    "ess",
    "log_sum_and_ess",
    "log_normalize",
    "normalize",
    "sanitize_log_weights",
    "invalid_log_weights",
    "multinomial",
    "unsorted_multinomial",
    "systematic",
    "stratified",
    "residual",
    "ssp",
    "killing",
    "conditional_multinomial",
    "conditional_systematic",
    "conditional_stratified",
    "conditional_residual",
    "SCHEMES",
    "CONDITIONAL_SCHEMES",
    "get_scheme",
    "get_conditional_scheme",
    "offspring_counts",
    "Islands",
    "islands",
]

Resampler = Callable[..., jax.Array]


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------
def _array_like(log_weights):
    """``log_weights`` as a JAX array (a list, a tuple or a NumPy array of numbers), or a
    ``ValueError`` saying what it got."""
    if isinstance(log_weights, jax.Array):
        return log_weights
    try:
        return jnp.asarray(log_weights)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"log_weights must be an array of numbers of shape (N,), got "
            f"{type(log_weights).__name__}: {error}"
        ) from None


def _takes_array_like(fn: Callable) -> Callable:
    """``fn`` with its ``log_weights`` argument passed through ``_array_like``: a plain
    list of log-weights raised ``TypeError: Cannot determine dtype`` from inside the
    shape checks."""
    position = list(inspect.signature(fn).parameters).index("log_weights")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if len(args) > position:
            args = (*args[:position], _array_like(args[position]), *args[position + 1 :])
        elif "log_weights" in kwargs:
            kwargs["log_weights"] = _array_like(kwargs["log_weights"])
        return fn(*args, **kwargs)

    return wrapper


def invalid_log_weights(log_weights: jax.Array) -> jax.Array:
    """Mask of the log-weights that carry no valid weight: ``NaN`` and ``+inf`` (``-inf``
    is a valid zero weight).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> invalid_log_weights(jnp.array([0.0, -jnp.inf, jnp.nan, jnp.inf])).tolist()
    [False, False, True, True]
    """
    log_weights = jnp.asarray(log_weights)
    return jnp.isnan(log_weights) | (log_weights == jnp.inf)


def sanitize_log_weights(log_weights: jax.Array) -> jax.Array:
    """Map ``NaN`` and ``+inf`` log-weights to ``-inf`` (zero weight)."""
    log_weights = jnp.asarray(log_weights)
    return jnp.where(invalid_log_weights(log_weights), -jnp.inf, log_weights)


def _check_not_scalar_or_empty(log_weights) -> None:
    """A ``ValueError`` before tracing for a scalar, an empty or a multi-dimensional
    log-weight array (a shape check, so it also holds for traced arrays): a batch of
    populations was silently treated as one population (``ess`` of a ``(2, N)`` array
    summed over both); ``jax.vmap`` the function over the batch instead. Also for a
    boolean or complex dtype (static too): a boolean mask was silently read as the
    log-weights ``{0, 1}`` (``ess`` of ``[True, False]`` was 1.9, not 1), as
    ``pk.reweight`` already refuses for a log-potential."""
    shape = jnp.shape(log_weights)
    if len(shape) == 0:
        raise ValueError(
            "log_weights must be an array of shape (N,) with one log-weight per particle, "
            "got a scalar"
        )
    if shape[0] == 0:
        raise ValueError(f"log_weights is empty (shape {shape}): there must be at least one")
    if len(shape) != 1:
        raise ValueError(
            f"log_weights must be one-dimensional (N,), got shape {shape}; for a batch of "
            "populations use jax.vmap"
        )
    check_real_log_weights(log_weights, "log_weights")


def check_real_log_weights(values, what: str) -> None:
    """A ``ValueError`` (at trace time: the dtype is static) for boolean or complex
    log-weights ``values`` (``what`` names them): a boolean (an indicator ``x > 0``) would
    be read as log-weights ``{0, 1}`` (weights 1 and e) instead of ``{-inf, 0}``, and a
    complex one would lose its imaginary part, both silently."""
    dtype = jnp.result_type(values)
    if dtype == jnp.bool_:
        raise ValueError(
            f"{what} is boolean; return log-weights, e.g. jnp.where(indicator, 0.0, -jnp.inf) "
            "for the weights 1{indicator}"
        )
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"{what} must be real, got dtype {dtype}")


def _shift_by_max(log_weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sanitised log-weights minus their maximum, the maximum, and whether any weight is
    positive. Subtracting the max is exact for nearby floats; subtracting a rounded
    logsumexp of size 1e4 instead would shift every log-weight by up to half an ulp of
    1e4 (5e-4 in float32), so the weights would miss summing to one by that much."""
    _check_not_scalar_or_empty(log_weights)
    log_weights = sanitize_log_weights(log_weights)
    top = jnp.max(log_weights)
    ok = jnp.isfinite(top)
    return log_weights - jnp.where(ok, top, 0.0), top, ok


def _relative_weights(log_weights: jax.Array) -> jax.Array:
    """Weights divided by the largest one (in ``[0, 1]``), or all ones if every weight is
    zero (the uniform fallback)."""
    shifted, _, ok = _shift_by_max(log_weights)
    return jnp.where(ok, jnp.exp(shifted), 1.0)


@_takes_array_like
def log_normalize(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalise log-weights with max-subtraction.

    Parameters
    ----------
    log_weights : Array of shape (N,)
        Unnormalised log-weights; ``NaN`` / ``+inf`` count as ``-inf``.

    Returns
    -------
    log_W : Array of shape (N,)
        Normalised log-weights, ``logsumexp(log_W) == 0``. If all weights are zero,
        uniform ``-log N`` is returned (so downstream resampling stays well defined).
    log_sum : Array of shape ()
        ``logsumexp(log_weights)``; ``-inf`` when all weights are zero.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> log_W, log_sum = log_normalize(jnp.array([0.0, jnp.log(3.0)]))
    >>> jnp.exp(log_W).round(2).tolist(), round(float(log_sum), 3)
    ([0.25, 0.75], 1.386)
    """
    shifted, top, ok = _shift_by_max(log_weights)
    n = jnp.shape(log_weights)[0]
    log_total = jnp.log(jnp.sum(jnp.exp(shifted)))
    log_sum = jnp.where(ok, top + log_total, -jnp.inf)
    log_W = jnp.where(ok, shifted - log_total, -jnp.log(n))
    return log_W, log_sum


@_takes_array_like
def normalize(log_weights: jax.Array) -> jax.Array:
    """Normalised weights ``W`` (summing to one up to rounding) from unnormalised
    log-weights; uniform if every weight is zero."""
    weights = _relative_weights(log_weights)
    return weights / jnp.sum(weights)


def weighted_sum(weights: jax.Array, values: jax.Array) -> jax.Array:
    """``sum_n W[n] values[n, ...]`` over particles, with ``weights`` of shape ``(N,)`` and
    ``values`` of shape ``(N, ...)``. A zero-weight particle contributes exactly zero,
    whatever its value (``0 * NaN`` would be NaN), and so does its gradient.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> weighted_sum(jnp.array([1.0, 0.0]), jnp.array([2.0, jnp.nan]))
    Array(2., dtype=float32)
    """
    values = values.astype(weights.dtype)
    alive = (weights > 0).reshape(weights.shape + (1,) * (values.ndim - 1))
    return jnp.tensordot(weights, jnp.where(alive, values, 0.0), axes=(0, 0))


@_takes_array_like
def log_sum_and_ess(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``logsumexp(log_weights)`` and ``ess`` together, from one max-subtraction and
    one ``exp`` pass (the engine's ``reweight`` needs both every step).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> log_sum, value = log_sum_and_ess(jnp.zeros(4))
    >>> round(float(log_sum), 4), float(value)
    (1.3863, 4.0)
    """
    shifted, top, ok = _shift_by_max(log_weights)
    # w_i = W_i / max_j W_j in [0, 1]: the sums cannot overflow and sum(w^2) >= 1
    w = jnp.exp(shifted)
    total = jnp.sum(w)
    log_sum = jnp.where(ok, top + jnp.log(total), -jnp.inf)
    return log_sum, jnp.where(ok, total * total / jnp.sum(w * w), 0.0)


@_takes_array_like
def ess(log_weights: jax.Array) -> jax.Array:
    """Effective sample size ``1 / sum W_i^2`` from unnormalised log-weights.

    Returns a value in ``[1, N]``, or ``0`` when every weight is zero (an impossible
    observation), which callers report as a failure.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(ess(jnp.zeros(10)))
    10.0
    """
    return log_sum_and_ess(log_weights)[1]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _num_samples(key, log_weights, num_samples):
    """Check the key (the shared ``kernels.check_key``), the log-weights (one-dimensional,
    not empty) and ``num_samples`` (a positive integer of any integral type, at most
    ``kernels.MAX_SIZE``, default ``N``) before tracing; returns ``(N, M)``."""
    from particlekit import kernels  # kernels imports this module

    kernels.check_key(key)
    _check_not_scalar_or_empty(log_weights)
    shape = jnp.shape(log_weights)
    if len(shape) != 1:
        raise ValueError(f"log_weights must be one-dimensional (N,), got shape {shape}")
    n = shape[0]
    if num_samples is None:
        return n, n
    try:
        m = operator.index(num_samples)  # any integral type; 2.5 or "3" are errors
    except TypeError:
        m = None
    if isinstance(num_samples, bool) or m is None or m <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    return n, kernels.check_size(m, "num_samples")


_BLOCKED_MIN_SIZE = 1 << 12
_BLOCK_SIZE = 1 << 10


def _blocked(op: Callable, cumulative: Callable, x: jax.Array) -> jax.Array:
    """Inclusive scan of ``x`` with ``op`` in blocks: the array as rows of ``_BLOCK_SIZE``,
    a scan along each row, then a scan over the row totals added back (``O(N)``, two short
    scans instead of one long one). ``cumulative(a, axis)`` is the scan, ``op`` combines."""
    n = x.shape[0]
    num_blocks = -(-n // _BLOCK_SIZE)
    pad = num_blocks * _BLOCK_SIZE - n
    identity = 0 if op is jnp.add else jnp.finfo(x.dtype).min
    rows = jnp.pad(x, (0, pad), constant_values=identity).reshape(num_blocks, _BLOCK_SIZE)
    inner = cumulative(rows, axis=1)
    totals = cumulative(inner[:, -1], axis=0)
    offsets = jnp.concatenate([jnp.full((1,), identity, x.dtype), totals[:-1]])
    return op(inner, offsets[:, None]).reshape(-1)[:n]


def cumulative_sum(x: jax.Array) -> jax.Array:
    """Inclusive cumulative sum of non-negative ``x``, exactly flat over zero entries.

    From ``2**12`` elements on, in blocks of ``2**10`` (a cumulative sum along rows, then
    over the row totals): on CPU ``jnp.cumsum`` of one long vector costs 12 ns per element
    at 1e4 and 4 at 1e5 (against 4 and 2 in blocks), and ``associative_scan`` compiles
    slowly inside a filter's time loop; the rounding error grows like the block length
    plus the number of blocks. Prefixes may be summed in different orders, so in floating
    point a prefix can differ from the previous one by an ulp; where ``x`` has zeros, a
    running maximum over the prefixes at ``x > 0`` makes the result non-decreasing and
    *exactly* flat over them, so zero-weight particles never receive offspring (skipped,
    under ``lax.cond``, when every entry is positive: there an ulp changes nothing but
    which of two neighbours takes a point on their boundary). Integer sums are exact and
    skip it."""
    large = x.shape[0] >= _BLOCKED_MIN_SIZE
    out = _blocked(jnp.add, jax.lax.cumsum, x) if large else jnp.cumsum(x)
    if jnp.issubdtype(out.dtype, jnp.floating):
        positive = x > 0

        def flatten_zeros(out):
            kept = jnp.where(positive, out, 0.0)
            return _blocked(jnp.maximum, jax.lax.cummax, kept) if large else jax.lax.cummax(kept)

        out = jax.lax.cond(jnp.all(positive), lambda out: out, flatten_zeros, out)
    return out


# ``_cdf`` sums the weights as unsigned integers, each weight a multiple of
# ``2**-CDF_SCALE_BITS`` of the total (the bits by width of the integers)
CDF_SCALE_BITS = {32: 30, 64: 62}
# ``floor(2**32 / golden ratio)``: ``i * CDF_DITHER`` modulo ``2**32`` is the Weyl sequence
# ``frac(i / phi)`` in 32-bit fixed point, ``_cdf``'s rounding offsets
CDF_DITHER = 0x9E3779B9


def _cdf_integers(n: int, dtype) -> tuple[type, float] | None:
    """The unsigned integer type and the scale ``S`` (a power of two) of ``_cdf``'s sums
    for ``n`` weights of ``dtype``: the largest ``S <= 2**CDF_SCALE_BITS`` for which the
    counts ``floor(w_i S / total + d_i) <= w_i S / total + 1`` cannot overflow their sum
    whatever the rounding of the float ``total`` (a sum of non-negatives: at least
    ``(1 - u)**(n - 1)`` times the exact one, and at least the largest weight, 1) and of
    the scaling (three roundings, and one more unit per count for safety), with
    ``S >= 2 n`` (the largest weight counts at least 1). ``None`` when there is none
    (beyond about ``5.8e7`` float32 weights) or ``dtype`` is neither float32 nor float64."""
    if dtype not in (jnp.float32, jnp.float64):
        return None
    bits = jnp.finfo(dtype).bits
    unit = float(jnp.finfo(dtype).eps) / 2
    overshoot = min(float(n), (1.0 - unit) ** -(n - 1)) * (1.0 + unit) ** 3
    scale_bits = CDF_SCALE_BITS[bits]
    while scale_bits > 0 and 2.0**scale_bits * overshoot + 2 * n >= 2.0**bits:
        scale_bits -= 1
    if 2.0**scale_bits < 2 * n:
        return None
    return (jnp.uint64 if bits == 64 else jnp.uint32), 2.0**scale_bits


def _cdf(log_weights: jax.Array) -> jax.Array:
    """Normalised cumulative weights: non-decreasing, exactly 1 from the last positive
    weight on, and *exactly flat* over zero weights (a zero-weight particle never receives
    offspring); uniform if every weight is zero. One max-subtraction and one ``exp`` pass.

    The sums are integer sums: each weight is scaled to ``S = 2**30`` units of the total
    (``2**62`` in float64; ``_cdf_integers``) and rounded down after adding an offset
    ``d_i`` in ``[0, 1)`` from the Weyl sequence ``frac(i / phi)`` (dithering: equal
    weights do not all round the same way, so rounding moves no mass from a class of
    particles to another; plain rounding to nearest moved up to ``N / 2`` units to the
    largest weight). Integers sum exactly in any order (``cumulative_sum``'s blocks), and
    converting them back to floating point is monotone, so the cumulative weights are
    flat over zero weights by construction. A float cumulative sum in blocks (or any
    parallel scan) sums neighbouring prefixes in different orders and may step by an ulp
    across a zero weight: keeping it flat took a running maximum under a ``lax.cond``,
    compiled into every filter (7-15 % of a bootstrap filter's compile time).

    Accuracy: a particle's share is off its weight by at most one unit (``2**-30``) before
    the conversion to float32, which then rounds each cumulative weight to half an ulp
    (``2**-25`` in the upper half), as the float sums did; against float64 every share is
    within ``4 * 2**-24`` (``test_cdf_shares_match_the_weights``; the float sums were 7.4
    ulps off at ``N = 2**18`` with one dominant weight). A positive weight of less than a
    unit counts as zero or one unit, by its index's offset (float32 sums drop most such
    weights)."""
    weights = _relative_weights(log_weights)
    n = weights.shape[0]
    integers = _cdf_integers(n, weights.dtype)
    if integers is None:  # float sums, made flat over zeros (``cumulative_sum``)
        sums = cumulative_sum(weights)
        return jnp.where(sums >= sums[-1], 1.0, sums / sums[-1])
    int_dtype, scale = integers
    weyl = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(CDF_DITHER)
    offsets = prng.unit_uniform(weyl).astype(weights.dtype)  # in [0, 1): zeros stay 0
    # the largest weight is 1, so the float total is at least 1 and no unit count exceeds S
    units = jnp.floor(weights * (scale / jnp.sum(weights)) + offsets).astype(int_dtype)
    sums = cumulative_sum(units).astype(weights.dtype)
    return sums / sums[-1]


def _indices_from_first_points(first: jax.Array, n: int, m: int) -> jax.Array:
    """Ancestors from the index of the first output slot each particle does *not* cover.

    ``first[i]`` is ``#{j : slot j is taken by a particle <= i}``, i.e. the cumulative
    offspring count. Slot ``j`` then belongs to particle ``#{i : first[i] <= j}``, which a
    scatter-add histogram plus a cumulative sum computes in ``O(N + M)``.
    """
    first = jnp.clip(first, 0, m).astype(jnp.int32)
    hist = jnp.zeros(m + 1, dtype=jnp.int32).at[first].add(1)
    idx = cumulative_sum(hist[:m])
    return jnp.clip(idx, 0, n - 1).astype(jnp.int32)


def _stratified_first_points(cdf: jax.Array, uniforms: jax.Array, m: int) -> jax.Array:
    """Cumulative offspring counts for points ``p_j = (j + U_j) / M``.

    Particle ``i`` covers every point below ``cdf[i]``: all strata ``j < k_i`` with
    ``k_i = floor(M cdf_i)`` and stratum ``k_i`` itself when ``U_{k_i} < frac(M cdf_i)``.
    """
    scaled = m * cdf
    k = jnp.floor(scaled)
    frac = scaled - k
    k = jnp.clip(k.astype(jnp.int32), 0, m)
    u_k = uniforms if uniforms.ndim == 0 else uniforms[jnp.clip(k, 0, m - 1)]
    return jnp.where((k < m) & (u_k < frac), k + 1, k)


def offspring_counts(indices: jax.Array, num_particles: int) -> jax.Array:
    """Number of offspring of each of ``num_particles`` parents given ancestor indices.

    An index outside ``[0, num_particles)`` is a ``ValueError`` (it used to be dropped,
    and a negative one counted for the parent it wraps to). Under ``jit`` / ``vmap``
    such an index is not counted (never wrapped), so ``counts.sum() < len(indices)``
    shows it.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> offspring_counts(jnp.array([0, 0, 2]), 3).tolist()
    [2, 0, 1]
    >>> offspring_counts(jnp.array([0, 3]), 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: indices must lie in [0, 3) ...
    """
    from particlekit import kernels  # kernels imports this module

    n = kernels.check_num_particles(num_particles)
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    inside = (indices >= 0) & (indices < n)
    if not isinstance(indices, jax.core.Tracer) and not bool(jnp.all(inside)):
        bad = indices[~inside]
        raise ValueError(
            f"indices must lie in [0, {n}) (one ancestor index per offspring), got "
            f"{bad[:5].tolist()}"
        )
    safe = jnp.where(inside, indices, n)  # out of range: dropped, never wrapped
    return jnp.zeros(n, dtype=jnp.int32).at[safe].add(1, mode="drop")


# --------------------------------------------------------------------------------------
# schemes
# --------------------------------------------------------------------------------------
@_takes_array_like
def multinomial(key: jax.Array, log_weights: jax.Array, num_samples: int | None = None):
    """Multinomial resampling: ``M`` i.i.d. draws from the categorical law ``W``.

    The draws of ``unsorted_multinomial``, sorted by parent: their offspring counts (a
    histogram) and the slots of each parent from the counts' prefix sums, ``O(N + M)``
    (2-3x quicker on CPU than merging ``M`` sorted uniforms, from exponential spacings,
    with the CDF). The output is sorted by parent.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> idx = multinomial(jax.random.key(0), jnp.log(jnp.array([0.0, 1.0, 0.0])))
    >>> idx.tolist()
    [1, 1, 1]
    """
    n, m = _num_samples(key, log_weights, num_samples)
    draws = _iid_categorical(key, log_weights, m)
    counts = jnp.zeros(n, jnp.int32).at[draws].add(1)
    # particle i takes the slots cumulative[i - 1] .. cumulative[i] - 1
    return _indices_from_first_points(cumulative_sum(counts), n, m)


# ``_count_at_most``'s coarse table: one entry per ``COARSE_GUIDE_SPAN`` particles
COARSE_GUIDE_SPAN = 32


def _count_at_most(cdf: jax.Array, q: jax.Array, start: jax.Array, steps) -> jax.Array:
    """``#{j : cdf[j] <= q}`` for each query, given a ``start`` at most the answer and
    ``answer - start < 2**steps``: a branch-free binary search of ``steps`` steps up from
    ``start`` (each adds ``2**s`` where ``cdf`` at the new count is still at most ``q``),
    one gather per step. Probes past the end read ``cdf[-1]``, which must exceed every
    query (else the count overshoots ``N``)."""
    n = cdf.shape[0]

    def step(s, count):
        probe = count + jnp.left_shift(jnp.int32(1), steps - 1 - s)
        return jnp.where(cdf[jnp.minimum(probe - 1, n - 1)] <= q, probe, count)

    return jax.lax.fori_loop(0, steps, step, start)


def _inverse_cdf(cdf: jax.Array, uniforms: jax.Array) -> jax.Array:
    """``searchsorted(cdf, u, side="right")`` clipped to ``N - 1``, for a normalised CDF
    (``cdf[-1] == 1``) and unsorted ``u`` in ``[0, 1)``. A coarse guide table of
    ``C = 2**k ~ N / COARSE_GUIDE_SPAN`` entries (``first[b] = #{j : cdf[j] <= b / C}``,
    found by full binary searches, ``C log N`` work) starts each draw's search at its
    bucket's first candidate; the search then takes as many steps as the widest bucket
    needs (about ``log2 COARSE_GUIDE_SPAN`` plus a few: a run of negligible weights in one
    bucket widens it), one gather each. ``b / C`` is exact in floating point, so the
    answer is exact. On a 2-core CPU at ``N = 16384`` it costs half of a bucketed binary
    search with a full guide table (whose histogram and prefix sum over ``2 N`` buckets
    cost more than the search they save)."""
    n = cdf.shape[0]
    num_buckets = 1 << max(n // COARSE_GUIDE_SPAN, 1).bit_length() - 1
    edges = jnp.arange(num_buckets, dtype=cdf.dtype) / num_buckets  # (below 1 = cdf[-1])
    first = _count_at_most(cdf, edges, jnp.zeros(num_buckets, jnp.int32), n.bit_length())
    first = jnp.append(first, jnp.int32(n))
    widest = jnp.max(first[1:] - first[:-1]).astype(jnp.uint32)
    steps = (32 - jax.lax.clz(widest)).astype(jnp.int32)  # bit length of the widest bucket
    bucket = jnp.clip(jnp.floor(uniforms * num_buckets).astype(jnp.int32), 0, num_buckets - 1)
    return jnp.minimum(_count_at_most(cdf, uniforms, first[bucket], steps), n - 1)


def _iid_categorical(key: jax.Array, log_weights: jax.Array, m: int) -> jax.Array:
    """``m`` i.i.d. categorical draws in *random order* (unlike ``multinomial``, whose
    output is sorted): needed wherever individual slots are used, not just the multiset.
    Inverse CDF of unsorted uniforms (``_inverse_cdf``); the uniforms are
    ``jax.random.uniform``'s, hashed unrolled (``prng.population_key``)."""
    cdf = _cdf(log_weights)
    uniforms = jax.random.uniform(prng.population_key(key), (m,), dtype=cdf.dtype)
    return _inverse_cdf(cdf, uniforms).astype(jnp.int32)


@_takes_array_like
def unsorted_multinomial(key: jax.Array, log_weights: jax.Array, num_samples: int | None = None):
    """Multinomial resampling with the ``M`` i.i.d. draws in the order they are drawn
    (``multinomial`` sorts them by parent): slot ``j``'s parent is a draw from ``W``,
    independent of the other slots. Same law of the offspring counts as ``multinomial``.
    Quicker than the sorted version (no histogram, no prefix sums), and each slot's parent
    is a draw from ``W`` of its own, which PaRIS uses: given ``"multinomial"`` or
    ``"unsorted_multinomial"`` it resamples with this scheme and takes each particle's
    parent as one of its backward draws (``smoothing.ancestors_are_backward_draws``).
    Its conditional version (conditional SMC) is ``conditional_multinomial``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> idx = unsorted_multinomial(jax.random.key(0), jnp.log(jnp.array([0.0, 1.0, 0.0])))
    >>> idx.tolist()
    [1, 1, 1]
    """
    _, m = _num_samples(key, log_weights, num_samples)
    return _iid_categorical(key, log_weights, m)


@_takes_array_like
def systematic(key: jax.Array, log_weights: jax.Array, num_samples: int | None = None):
    """Systematic resampling: points ``(j + U) / M`` with one shared uniform ``U``.

    Each offspring count is ``floor(M W_i)`` or ``ceil(M W_i)`` (up to the float32 rounding
    of the cumulative weights, of order ``M 2**-24`` offspring: see the module notes on
    very large ``N``). ``O(N + M)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> idx = systematic(jax.random.key(0), jnp.log(jnp.array([0.5, 0.25, 0.25])), 4)
    >>> idx.tolist()
    [0, 0, 1, 2]
    """
    n, m = _num_samples(key, log_weights, num_samples)
    cdf = _cdf(log_weights)
    u = jax.random.uniform(key, (), dtype=cdf.dtype)
    first = _stratified_first_points(cdf, u, m)
    return _indices_from_first_points(first, n, m)


@_takes_array_like
def stratified(key: jax.Array, log_weights: jax.Array, num_samples: int | None = None):
    """Stratified resampling: points ``(j + U_j) / M`` with independent uniforms.

    Each offspring count is within 2 of ``M W_i``. ``O(N + M)``.
    """
    n, m = _num_samples(key, log_weights, num_samples)
    cdf = _cdf(log_weights)
    uniforms = jax.random.uniform(key, (m,), dtype=cdf.dtype)
    first = _stratified_first_points(cdf, uniforms, m)
    return _indices_from_first_points(first, n, m)


def _residual_parts(log_weights, m):
    weights = normalize(log_weights)
    scaled = m * weights
    floors = jnp.floor(scaled).astype(jnp.int32)
    floors = jnp.minimum(floors, m)
    residual_weights = jnp.clip(scaled - floors, 0.0, None)
    num_deterministic = jnp.minimum(jnp.sum(floors), m)
    return floors, residual_weights, num_deterministic


def _residual_from_draws(floors, residual_draws, num_deterministic, n, m):
    first = cumulative_sum(floors)
    deterministic = _indices_from_first_points(first, n, m)
    slots = jnp.arange(m)
    extra = residual_draws[jnp.clip(slots - num_deterministic, 0, m - 1)]
    return jnp.where(slots < num_deterministic, deterministic, extra).astype(jnp.int32)


@_takes_array_like
def residual(key: jax.Array, log_weights: jax.Array, num_samples: int | None = None):
    """Residual resampling: ``floor(M W_i)`` deterministic copies of particle ``i``, the
    remaining ``R = M - sum_i floor(M W_i)`` slots filled by multinomial draws from the
    residual weights ``M W_i - floor(M W_i)``."""
    n, m = _num_samples(key, log_weights, num_samples)
    floors, residual_weights, num_deterministic = _residual_parts(log_weights, m)
    draws = _iid_categorical(key, jnp.log(residual_weights), m)
    return _residual_from_draws(floors, draws, num_deterministic, n, m)


def _ssp_counts(key: jax.Array, scaled: jax.Array, m: int) -> jax.Array:
    """Srinivasan sampling process on expected counts ``scaled`` (summing to ``m``).

    Fractional parts are paired in a tournament: at each level the surviving fractional
    particle of two neighbouring groups meet, and one of the two fractions is made 0 or 1
    with probabilities that keep every fraction's expectation (Gerber, Chopin & Whiteley
    2019, Alg. 2). Only the survivors are carried to the next level (half as many), and the
    settled fractions are written once at the end, so the total cost is ``O(N)``.
    """
    n = scaled.shape[0]
    floors = jnp.floor(scaled)
    size = 1 << max(0, (n - 1).bit_length())
    survivors = jnp.arange(size, dtype=jnp.int32)
    fracs = jnp.pad(scaled - floors, (0, size - n))
    settled_index, settled_value = [], []
    level = 0
    while survivors.shape[0] > 1:
        i, j = survivors[0::2], survivors[1::2]
        fi, fj = fracs[0::2], fracs[1::2]
        total = fi + fj
        u = jax.random.uniform(jax.random.fold_in(key, level), i.shape, dtype=fracs.dtype)
        below = total < 1.0
        # total < 1: one of them takes everything.
        p_i_takes = jnp.where(total > 0, fi / jnp.where(total > 0, total, 1.0), 0.5)
        # total >= 1: one of them becomes 1, the other keeps total - 1.
        denom = 2.0 - total
        p_i_full = jnp.where(denom > 0, (1.0 - fj) / jnp.where(denom > 0, denom, 1.0), 0.5)
        i_keeps = jnp.where(below, u < p_i_takes, u >= p_i_full)
        settled_index.append(jnp.where(i_keeps, j, i))
        settled_value.append(jnp.where(below, 0.0, 1.0).astype(fracs.dtype))
        survivors = jnp.where(i_keeps, i, j)
        fracs = jnp.where(below, total, total - 1.0)
        level += 1
    last = survivors[0]
    # every index is settled exactly once, or is the last survivor
    final = (
        jnp.zeros(size, scaled.dtype)
        .at[jnp.concatenate([*settled_index, survivors])]
        .set(jnp.concatenate([*settled_value, fracs]))
    )
    counts = floors.astype(jnp.int32) + (final[:n] > 0.5).astype(jnp.int32)
    # the last survivor's fraction is an integer up to rounding: give it what makes the sum m
    others = jnp.sum(counts) - counts[last]
    counts = counts.at[last].set(jnp.maximum(m - others, 0).astype(jnp.int32))
    return counts


@_takes_array_like
def ssp(key: jax.Array, log_weights: jax.Array, num_samples: int | None = None):
    """Srinivasan sampling process (SSP) resampling (Gerber, Chopin & Whiteley 2019).

    Offspring counts are ``floor(M W_i)`` or ``ceil(M W_i)`` with expectation ``M W_i``,
    and negatively associated; the output is ordered by parent. ``O(N + M)``.
    """
    n, m = _num_samples(key, log_weights, num_samples)
    weights = normalize(log_weights)
    counts = _ssp_counts(key, m * weights, m)
    first = cumulative_sum(counts)
    return _indices_from_first_points(first, n, m)


@_takes_array_like
def killing(key: jax.Array, log_weights: jax.Array, num_samples: int | None = None):
    """Killing resampling: particle ``i`` survives in its own slot with probability
    ``W_i / max_j W_j``, otherwise it is replaced by a multinomial draw.

    Requires ``num_samples == N``. Offspring counts have expectation ``N W_i``; particles
    with the largest weight are never killed.
    """
    n, m = _num_samples(key, log_weights, num_samples)
    if m != n:
        raise ValueError(f"killing resampling needs num_samples == N ({n}), got {m}")
    key_survive, key_replace = jax.random.split(key)
    log_W = log_normalize(log_weights)[0]
    survive_prob = jnp.exp(log_W - jnp.max(log_W))
    survive = jax.random.uniform(key_survive, (n,), dtype=log_W.dtype) < survive_prob
    replacements = _iid_categorical(key_replace, log_W, n)
    return jnp.where(survive, jnp.arange(n, dtype=jnp.int32), replacements).astype(jnp.int32)


# --------------------------------------------------------------------------------------
# conditional (reference-preserving) schemes for conditional SMC
# --------------------------------------------------------------------------------------
def _pin_reference(key: jax.Array, idx: jax.Array) -> jax.Array:
    """Given ancestors whose slot 0 holds ancestor 0, randomly permute the other slots, so
    that the resulting scheme is exchangeable over slots (Chopin & Singh 2015)."""
    rest = jax.random.permutation(key, idx[1:])
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), rest]).astype(jnp.int32)


def _check_conditional(key, log_weights, num_samples):
    n, m = _num_samples(key, log_weights, num_samples)
    if m != n:
        raise ValueError(f"conditional resampling needs num_samples == N ({n}), got {m}")
    return n


@_takes_array_like
def conditional_multinomial(key, log_weights, num_samples=None):
    """Conditional multinomial resampling: slot 0 gets ancestor 0 (the reference), the
    other ``N - 1`` slots are i.i.d. draws from ``W``, in the order drawn
    (``unsorted_multinomial``'s ``N`` draws with slot 0's replaced: the others stay
    i.i.d.). Quicker than ``N - 1`` sorted draws, and than ``N - 1`` unsorted ones (an
    odd size): PaRIS particle Gibbs 4-7 % quicker at ``N = 4096 ... 16384``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> idx = conditional_multinomial(jax.random.key(0), jnp.log(jnp.array([0.0, 1.0, 0.0])))
    >>> idx.tolist()
    [0, 1, 1]
    """
    n = _check_conditional(key, log_weights, num_samples)
    return _iid_categorical(key, log_weights, n).at[0].set(0)


def _size_biased_uniform(key, scaled0, dtype):
    """Uniform ``U`` on [0, 1) drawn with density proportional to the number of points
    ``(j + U)`` falling below ``scaled0 = N W_0``, i.e. ``ceil(scaled0 - U)``."""
    whole = jnp.floor(scaled0)
    frac = scaled0 - whole
    key_branch, key_u = jax.random.split(key)
    # no floor on the denominator: clamping it at 1e-30 made p_low ~ N W_0 / 1e-30 for a
    # reference weight W_0 below 1e-30 / N, so U was drawn unconditionally
    p_low = jnp.where(scaled0 > 0, frac * (whole + 1.0) / jnp.where(scaled0 > 0, scaled0, 1.0), 1.0)
    low = jax.random.uniform(key_branch, (), dtype=dtype) < p_low
    v = jax.random.uniform(key_u, (), dtype=dtype)
    return jnp.where(low, v * frac, frac + v * (1.0 - frac)), whole, low


@_takes_array_like
def conditional_systematic(key, log_weights, num_samples=None):
    """Conditional systematic resampling (Chopin & Singh 2015): the shared uniform is drawn
    given that slot 0 descends from particle 0, then the other slots are permuted."""
    n = _check_conditional(key, log_weights, num_samples)
    key_u, key_perm = jax.random.split(key)
    cdf = _cdf(log_weights)
    u, _, _ = _size_biased_uniform(key_u, n * cdf[0], cdf.dtype)
    first = _stratified_first_points(cdf, u, n)
    return _pin_reference(key_perm, _indices_from_first_points(first, n, n))


@_takes_array_like
def conditional_stratified(key, log_weights, num_samples=None):
    """Conditional stratified resampling: the uniform of the stratum straddling particle
    0's boundary is drawn size-biased, the others i.i.d., then the slots are permuted."""
    n = _check_conditional(key, log_weights, num_samples)
    key_u, key_rest, key_perm = jax.random.split(key, 3)
    cdf = _cdf(log_weights)
    u, whole, _ = _size_biased_uniform(key_u, n * cdf[0], cdf.dtype)
    uniforms = jax.random.uniform(key_rest, (n,), dtype=cdf.dtype)
    stratum = jnp.clip(whole.astype(jnp.int32), 0, n - 1)
    uniforms = uniforms.at[stratum].set(jnp.where(whole < n, u, uniforms[stratum]))
    first = _stratified_first_points(cdf, uniforms, n)
    return _pin_reference(key_perm, _indices_from_first_points(first, n, n))


@_takes_array_like
def conditional_residual(key, log_weights, num_samples=None):
    """Conditional residual resampling: the number of residual draws landing on particle
    0 is size-biased by its total offspring count, then the slots are permuted."""
    n = _check_conditional(key, log_weights, num_samples)
    key_branch, key_draws, key_perm = jax.random.split(key, 3)
    floors, residual_weights, num_deterministic = _residual_parts(log_weights, n)
    num_residual = n - num_deterministic
    # P(slot 0 <- particle 0) is proportional to floors[0] + K_0, K_0 ~ Bin(R, p_0): with
    # probability floors[0] / E[floors[0] + K_0] keep the draws as they are, otherwise
    # force one residual draw onto particle 0 (size-biasing a binomial).
    expected = floors[0] + residual_weights[0]
    p_keep = jnp.where(expected > 0, floors[0] / jnp.maximum(expected, 1e-30), 1.0)
    keep = jax.random.uniform(key_branch, (), dtype=residual_weights.dtype) < p_keep
    draws = _iid_categorical(key_draws, jnp.log(residual_weights), n)
    draws = draws.at[0].set(jnp.where(keep | (num_residual == 0), draws[0], 0))
    idx = _residual_from_draws(floors, draws, num_deterministic, n, n)
    # put a copy of particle 0 into slot 0 (output is grouped: deterministic copies first,
    # the forced residual draw at position num_deterministic)
    src = jnp.where(floors[0] > 0, 0, num_deterministic)
    idx = idx.at[src].set(idx[0]).at[0].set(0)
    return _pin_reference(key_perm, idx)


SCHEMES: dict[str, Resampler] = {
    "multinomial": multinomial,
    "unsorted_multinomial": unsorted_multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
    "ssp": ssp,
    "killing": killing,
}

CONDITIONAL_SCHEMES: dict[Resampler, Resampler] = {
    multinomial: conditional_multinomial,
    unsorted_multinomial: conditional_multinomial,
    systematic: conditional_systematic,
    stratified: conditional_stratified,
    residual: conditional_residual,
}


class Islands(NamedTuple):
    """Island resampling (Vergé, Dubarry, Del Moral & Moulines 2015): the population is cut
    into ``num_islands`` contiguous blocks of ``N / num_islands`` particles, and each island
    resamples on its own with ``scheme`` when its own ESS falls below the threshold, keeping
    its total weight (every offspring weighs the island's mass over its size). With the
    particle axis sharded into the same blocks (``num_islands`` = the number of devices, as
    ``particlekit.distributed.num_shards`` gives) resampling needs no communication; the
    evidence estimator stays the one of ``pk.reweight`` (unbiased: each particle's expected
    offspring weight is its weight). Local resampling never corrects the imbalance between
    islands, so the estimator's variance grows with the number of islands;
    ``benchmarks/bench_distributed.py`` measures it against global resampling.

    ``exchange = k > 0`` adds a local exchange at every resampling step (in the spirit
    of Murray, Lee & Jacob 2016): the first ``k`` particles of each island move, with their
    weights, to the next island (a ring), so that heavy and light islands mix and later
    local resampling spreads the mass; a permutation leaves the weighted population, and so
    every estimate, unchanged. Sharded, it is one neighbour-to-neighbour transfer of ``k``
    particles per device.

    Made by ``islands(...)``; accepted wherever ``pk.resample`` resamples (the filters, FK
    steering and correctors, PDDS, sequence steering). Calling it as a plain scheme is an
    error: a recipe that sets the weights equal after resampling would be wrong with it.
    """

    scheme: Resampler
    num_islands: int
    exchange: int = 0

    def __call__(self, key, log_weights, num_samples=None):
        raise ValueError(
            "island resampling keeps each island's weight, so it only runs inside "
            "pk.resample (the filters, FK steering and correctors, PDDS, sequence steering); "
            "this recipe sets the weights equal after resampling: use a global scheme"
        )


def islands(
    scheme: str | Resampler = "systematic", num_islands: int = 1, exchange: int = 0
) -> Islands:
    """Island resampling with ``scheme`` inside each of ``num_islands`` blocks, and
    ``exchange`` particles passed on to the next island at each step; see
    ``Islands``.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = ssm.simulate(jax.random.key(0), 20)
    >>> res = pk.filters.bootstrap(jax.random.key(1), ssm, ys, num_particles=512,
    ...                            resampling=pk.resampling.islands("systematic", 8))
    >>> res.ancestors.shape
    (20, 512)
    """
    if isinstance(num_islands, bool) or not isinstance(num_islands, int) or num_islands < 1:
        raise ValueError(f"num_islands must be a positive integer, got {num_islands!r}")
    if isinstance(exchange, bool) or not isinstance(exchange, int) or exchange < 0:
        raise ValueError(f"exchange must be a non-negative integer, got {exchange!r}")
    base = get_scheme(scheme)
    if isinstance(base, Islands):
        raise ValueError("islands(...) of islands: pass a global scheme")
    return Islands(base, num_islands, exchange)


def get_scheme(scheme: str | Resampler) -> Resampler:
    """Resolve a scheme given by name (``"systematic"``) or as a function."""
    if callable(scheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ValueError(
            f"unknown resampling scheme {scheme!r}; choose one of {sorted(SCHEMES)} "
            "or pass a function (key, log_weights, num_samples) -> indices"
        ) from None


def get_conditional_scheme(scheme: str | Resampler) -> Resampler:
    """The reference-preserving version of a scheme, for conditional SMC."""
    base = get_scheme(scheme)
    if base in CONDITIONAL_SCHEMES.values():
        return base
    try:
        return CONDITIONAL_SCHEMES[base]
    except KeyError:
        names = [f.__name__ for f in CONDITIONAL_SCHEMES]
        raise ValueError(
            f"no conditional version of {getattr(base, '__name__', base)!r} for conditional "
            f"SMC; use one of {names}"
        ) from None
