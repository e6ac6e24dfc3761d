"""Resampling schemes against their exact laws.

Offspring counts ``c_i = #{j : a_j = i}`` are checked against ``M W_i`` with ``W`` computed
in float64 from the (float32) log-weights actually passed in. Means are estimated over
``K`` keys (one ``vmap``) and compared within ``5`` standard errors, the SE being
estimated from the same draws (plus ``5 / K`` for events too rare to show up in ``K``
draws). Deterministic bounds (floor/ceil) allow ``1e-3`` for float32 rounding of the CDF.

Every scheme is jitted once per ``(N, M)`` from a small fixed set, so hypothesis examples
do not recompile.
"""

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from particlekit import resampling as rs

K = 4096  # keys per expectation
Z = 5.0  # standard errors allowed
SIZES = (1, 7, 32)
SCHEMES = [
    "multinomial",
    "unsorted_multinomial",
    "systematic",
    "stratified",
    "residual",
    "ssp",
    "killing",
]
CONDITIONAL = ["multinomial", "systematic", "stratified", "residual"]
HYP = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@cache
def _counts_fn(scheme, n, m, conditional=False, skip_first=False):
    """Jitted ``(keys (K,), log_w (n,)) -> (indices (K, m), counts (K, n))``."""
    fn = rs.get_conditional_scheme(scheme) if conditional else rs.get_scheme(scheme)

    def one(key, log_w):
        idx = fn(key, log_w, m)
        used = idx[1:] if skip_first else idx
        return idx, rs.offspring_counts(used, n)

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def _draw(scheme, log_w, m=None, *, seed=0, conditional=False, skip_first=False):
    log_w = jnp.asarray(log_w, jnp.float32)
    n = log_w.shape[0]
    m = n if m is None else m
    keys = jax.random.split(jax.random.key(seed), K)
    idx, counts = _counts_fn(scheme, n, m, conditional, skip_first)(keys, log_w)
    return np.asarray(idx), np.asarray(counts, dtype=np.float64)


def _exact_weights(log_w):
    """Normalised weights in float64; NaN and +inf count as zero weight."""
    lw = np.asarray(jnp.asarray(log_w, jnp.float32), dtype=np.float64)
    lw = np.where(np.isnan(lw) | (lw == np.inf), -np.inf, lw)
    w = np.exp(lw - lw.max())
    return w / w.sum()


def _assert_mean(samples, expected, what=""):
    """Mean over axis 0 equals ``expected`` within Z standard errors."""
    mean = samples.mean(axis=0)
    se = samples.std(axis=0) / np.sqrt(samples.shape[0]) + 5.0 / samples.shape[0]
    bad = np.abs(mean - expected) > Z * se
    assert not bad.any(), f"{what}: mean {mean[bad]} vs exact {expected[bad]} (se {se[bad]})"


def _assert_basic(idx, n, m):
    assert idx.shape == (K, m)
    assert idx.dtype == np.int32
    assert idx.min() >= 0 and idx.max() < n


# ---------------------------------------------------------------------------- strategies
@st.composite
def log_weight_vectors(draw, low=-6.0, high=6.0, allow_zero=True):
    n = draw(st.sampled_from(SIZES))
    entry = st.floats(low, high, allow_nan=False, width=32)
    if allow_zero:
        entry = st.one_of(entry, st.just(-np.inf))
    values = draw(st.lists(entry, min_size=n, max_size=n))
    values[0] = draw(st.floats(0.0, high, width=32))  # at least one positive weight
    return np.array(values, dtype=np.float32)


# ---------------------------------------------------------------------------- all schemes
@pytest.mark.parametrize("scheme", SCHEMES)
@HYP
@given(log_w=log_weight_vectors())
def test_mean_offspring_is_n_w(scheme, log_w):
    n = log_w.shape[0]
    idx, counts = _draw(scheme, log_w)
    _assert_basic(idx, n, n)
    assert (counts.sum(axis=1) == n).all()
    w = _exact_weights(log_w)
    assert (counts[:, w == 0] == 0).all(), "zero-weight particles must have no offspring"
    _assert_mean(counts, n * w, scheme)


@pytest.mark.parametrize("scheme", ["systematic", "ssp", "stratified"])
@HYP
@given(log_w=log_weight_vectors())
def test_counts_are_floor_or_ceil(scheme, log_w):
    n = log_w.shape[0]
    _, counts = _draw(scheme, log_w)
    expected = n * _exact_weights(log_w)
    if scheme == "stratified":
        assert (np.abs(counts - expected) <= 2.0 + 1e-3).all()
    else:
        assert (counts >= np.floor(expected - 1e-3)).all()
        assert (counts <= np.ceil(expected + 1e-3)).all()


def test_unsorted_multinomial_slots_are_independent_draws():
    """Each slot of ``unsorted_multinomial`` is a draw from ``W`` (slot 0's parent has the
    law ``W``: a chi-square test over 4096 keys), where ``multinomial``'s slot 0 is the
    smallest parent drawn; and the two have the same mean offspring counts."""
    log_w = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    keys = jax.random.split(jax.random.key(11), 4096)
    first = {
        scheme.__name__: np.asarray(jax.vmap(lambda k, f=scheme: f(k, log_w)[0])(keys))
        for scheme in (rs.unsorted_multinomial, rs.multinomial)
    }
    expected = 4096 * np.exp(log_w)
    chi2 = {
        n: np.sum((np.bincount(f, minlength=4) - expected) ** 2 / expected)
        for n, f in first.items()
    }
    assert chi2["unsorted_multinomial"] < 16.3  # chi-square, 3 d.o.f., p = 0.001
    assert chi2["multinomial"] > 1000.0


def _adversarial_cdfs():
    """Normalised CDFs (``rs._cdf`` of log-weights) the coarse guide table of
    ``_inverse_cdf`` finds hard: long runs of zero or negligible weights inside one bucket,
    one dominant weight first or last, equal weights, sizes around the table's span."""
    rng = np.random.default_rng(3)
    cases = {}
    for n in (1, 2, 31, 32, 33, 100, 1000, 4097):
        cases[f"gauss{n}"] = rng.normal(0, 3, n)
        cases[f"equal{n}"] = np.zeros(n)
        spiky = np.full(n, -np.inf)
        spiky[rng.integers(0, n, max(1, n // 50))] = 0.0
        cases[f"sparse{n}"] = spiky
        cases[f"first{n}"] = np.where(np.arange(n) == 0, 0.0, -40.0)
        cases[f"last{n}"] = np.where(np.arange(n) == n - 1, 0.0, -np.inf)
    clumped = rng.normal(0, 1, 5000)
    clumped[1000:3000] = -60.0  # 2000 negligible weights: one bucket holds them all
    cases["clumped"] = clumped
    return {k: np.asarray(rs._cdf(jnp.asarray(v, jnp.float32))) for k, v in cases.items()}


@pytest.mark.parametrize("name", sorted(_adversarial_cdfs()))
def test_inverse_cdf_is_searchsorted(name):
    """``_inverse_cdf`` (coarse guide table and a binary search from it) is exactly
    ``searchsorted(cdf, u, side="right")`` clipped to ``N - 1``, at random uniforms, the
    CDF's own values and the buckets' edges (ties), and 0."""
    cdf = _adversarial_cdfs()[name]
    n = cdf.shape[0]
    u = np.concatenate([
        np.asarray(jax.random.uniform(jax.random.key(n), (2000,))),
        cdf[cdf < 1.0], np.arange(64, dtype=np.float32) / 64, [0.0],
    ]).astype(np.float32)  # fmt: skip
    got = np.asarray(jax.jit(rs._inverse_cdf)(jnp.asarray(cdf), jnp.asarray(u)))
    np.testing.assert_array_equal(got, np.minimum(np.searchsorted(cdf, u, side="right"), n - 1))


def test_multinomial_is_the_unsorted_draws_sorted():
    """``multinomial`` sorts the draws of ``unsorted_multinomial`` (same key, same draws),
    so its law is the i.i.d. draws' (checked above) and its output is sorted."""
    log_w = jnp.asarray(np.random.default_rng(0).normal(0, 2, 300), jnp.float32)
    for seed in range(5):
        key = jax.random.key(seed)
        sorted_draws = np.asarray(rs.multinomial(key, log_w, 500))
        np.testing.assert_array_equal(
            sorted_draws, np.sort(np.asarray(rs.unsorted_multinomial(key, log_w, 500)))
        )


@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "residual", "ssp"])
@pytest.mark.parametrize("m", [16, 48])
def test_num_samples_differs_from_n(scheme, m):
    log_w = np.log(np.arange(1, 33, dtype=np.float32))
    idx, counts = _draw(scheme, log_w, m)
    _assert_basic(idx, 32, m)
    expected = m * _exact_weights(log_w)
    _assert_mean(counts, expected, f"{scheme} M={m}")
    if scheme in ("systematic", "ssp"):
        assert (counts >= np.floor(expected - 1e-3)).all()
        assert (counts <= np.ceil(expected + 1e-3)).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_large_population(scheme):
    """N = 2000 exercises the blocked cumulative sum; few keys suffice per particle."""
    n = 2000
    log_w = jax.random.normal(jax.random.key(3), (n,)) * 1.5
    keys = jax.random.split(jax.random.key(4), 256)
    fn = jax.jit(jax.vmap(lambda k: rs.offspring_counts(rs.get_scheme(scheme)(k, log_w), n)))
    counts = np.asarray(fn(keys), dtype=np.float64)
    expected = n * _exact_weights(log_w)
    assert (counts.sum(axis=1) == n).all()
    if scheme in ("systematic", "ssp"):
        # float32 CDF over 2000 terms: rounding below 0.05 offspring
        assert (counts >= np.floor(expected - 0.05)).all()
        assert (counts <= np.ceil(expected + 0.05)).all()
    if scheme == "stratified":
        assert (np.abs(counts - expected) <= 2.05).all()
    # aggregate test: sum over particles of (mean count - N W) / SE is N(0, 1)-like per
    # particle, so the standardised mean over particles has SE 1/sqrt(n)
    mean = counts.mean(axis=0)
    se = counts.std(axis=0) / np.sqrt(counts.shape[0])
    ok = se > 0
    zs = (mean - expected)[ok] / se[ok]
    assert abs(zs.mean()) < Z / np.sqrt(ok.sum()) + 0.05
    # heaviest particles: their counts are right on average
    top = np.argsort(expected)[-20:]
    _assert_mean(counts[:, top], expected[top], scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_single_particle(scheme):
    idx, _ = _draw(scheme, np.array([-3.0], np.float32))
    assert (idx == 0).all()
    if scheme != "killing":
        idx, _ = _draw(scheme, np.array([-3.0], np.float32), 5)
        assert (idx == 0).all()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("others", [-np.inf, -1e4])
def test_one_weight_carries_everything(scheme, others):
    log_w = np.full(7, others, np.float32)
    log_w[4] = 2.0
    idx, _ = _draw(scheme, log_w)
    assert (idx == 4).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_log_weights_spanning_1e4_nats(scheme):
    """float32 log-weights around +-5000 (exp overflows without max-subtraction)."""
    base = np.array([0.0, -1e4, np.log(2.0), -0.5, -1e4 + 3.0, np.log(3.0), -2.0])
    for shift in (5000.0, -5000.0):
        log_w = (base + shift).astype(np.float32)
        idx, counts = _draw(scheme, log_w)
        _assert_basic(idx, 7, 7)
        w = _exact_weights(log_w)
        assert (counts[:, w < 1e-30] == 0).all()
        _assert_mean(counts, 7 * w, f"{scheme} shift {shift}")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_nan_and_inf_log_weights_are_zero_weight(scheme):
    log_w = np.array([0.0, np.nan, 1.0, np.inf, -np.inf, 0.5, np.nan], np.float32)
    idx, counts = _draw(scheme, log_w)
    _assert_basic(idx, 7, 7)
    assert (counts[:, [1, 3, 4, 6]] == 0).all()
    _assert_mean(counts, 7 * _exact_weights(log_w), scheme)


@pytest.mark.optimized
@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "stratified"])
def test_underflowing_and_zero_weights_in_blocks(scheme):
    """A blocked CDF (N >= 4096) with weights that underflow relative to the largest
    (log-weights -200) next to weights that are
    exactly zero (-inf, NaN): the CDF is non-decreasing and exactly flat over the zeros
    (also at the end: the last particle has zero weight), and no zero-weight particle ever
    receives offspring."""
    n = 8192
    rng = np.random.default_rng(0)
    log_w = rng.normal(size=n).astype(np.float32)
    kind = rng.integers(0, 4, size=n)
    log_w[kind == 1] = -200.0
    log_w[kind == 2] = -np.inf
    log_w[kind == 3] = np.nan
    log_w[-1] = np.nan
    kind[-1] = 3
    cdf = np.asarray(rs._cdf(jnp.asarray(log_w)))
    assert (np.diff(cdf) >= 0).all() and cdf[-1] == 1.0
    zero = (kind >= 2)[1:]
    assert (np.diff(cdf)[zero] == 0.0).all()
    assert (np.diff(cdf)[kind[1:] == 0] > 0).all()
    idx, counts = _draw(scheme, log_w)
    assert (counts[:, kind >= 2] == 0).all()
    # underflowing weights (far below the CDF's unit, 2**-30 of the total) count as zero
    assert (counts[:, kind == 1] == 0).all()


def _exact_shares(log_w):
    w = np.exp(log_w.astype(np.float64) - np.max(log_w))
    return w / w.sum()


def _cdf_weights(n, case, rng):
    if case == "spread":
        return (3.0 * rng.normal(size=n)).astype(np.float32)
    if case == "classes":  # equal weights within each class, classes interleaved
        return rng.choice(np.array([0.0, -0.3, -1.7, -4.2], np.float32), size=n)
    log_w = np.full(n, -25 * np.log(2.0), np.float32)  # 2**-25 of the largest
    log_w[0 if case == "dominant_first" else -1] = 0.0
    return log_w


@pytest.mark.parametrize("case", ["spread", "classes", "dominant_first", "dominant_last"])
def test_cdf_shares_match_the_weights(case):
    """Every particle's share of ``_cdf`` (``cdf_i - cdf_{i-1}``, what its expected
    offspring count is ``M`` times) is within four float32 ulps of 1 of its exact weight
    at ``N = 2**18`` (measured: at most 1.5), and each class of equal weights has its mass
    within ``1e-5`` (measured 5e-6: float32's rounding of the cumulative weights). The
    float cumulative sums this replaced were 7.4 ulps off at one dominant weight; integer
    units rounded to nearest instead of dithered, 1000 ulps and ``6e-5`` of mass off (all
    the tiny weights rounded the same way, their error went to the dominant one)."""
    n = 1 << 18
    log_w = _cdf_weights(n, case, np.random.default_rng(3))
    cdf = np.asarray(jax.jit(rs._cdf)(jnp.asarray(log_w)), np.float64)
    assert cdf[-1] == 1.0 and (np.diff(cdf) >= 0).all()
    shares, exact = np.diff(cdf, prepend=0.0), _exact_shares(log_w)
    assert np.abs(shares - exact).max() <= 4 * 2.0**-24
    # each class's total error, all classes at once (a loop over the 2**18 distinct values
    # of "spread" took 26 s)
    _, inverse = np.unique(log_w, return_inverse=True)
    assert np.abs(np.bincount(inverse.ravel(), weights=shares - exact)).max() <= 1e-5


def test_cdf_integer_sums_cannot_overflow():
    """The scale of ``_cdf``'s integer sums leaves room for the worst rounding of the float
    total at every ``N`` it takes, and the largest weight counts at least one unit."""
    for n in [1, 2, 1000, 1 << 20, 1 << 24, 50_000_000]:
        int_dtype, scale = rs._cdf_integers(n, jnp.float32)
        overshoot = min(n, (1 - 2.0**-24) ** -(n - 1)) * (1 + 2.0**-24) ** 3
        assert int_dtype == jnp.uint32 and scale * overshoot + 2 * n < 2.0**32
        assert scale >= 2 * n
    assert rs._cdf_integers(1 << 22, jnp.float32)[1] == 2.0**30
    assert rs._cdf_integers(1 << 27, jnp.float32) is None  # a float sum then
    assert rs._cdf_integers(1 << 24, jnp.float64) == (jnp.uint64, 2.0**62)
    assert rs._cdf_integers(100, jnp.float16) is None


@pytest.mark.parametrize("scheme", SCHEMES)
def test_all_zero_weights_fall_back_to_uniform(scheme):
    log_w = np.full(7, -np.inf, np.float32)
    log_w[2] = np.nan
    idx, counts = _draw(scheme, log_w)
    _assert_basic(idx, 7, 7)
    _assert_mean(counts, np.ones(7), scheme)
    assert float(rs.ess(jnp.asarray(log_w))) == 0.0


def test_killing_and_conditional_need_num_samples_n():
    log_w = jnp.zeros(5)
    with pytest.raises(ValueError, match="num_samples == N"):
        rs.killing(jax.random.key(0), log_w, 3)
    for scheme in CONDITIONAL:
        with pytest.raises(ValueError, match="num_samples == N"):
            rs.get_conditional_scheme(scheme)(jax.random.key(0), log_w, 4)


@pytest.mark.parametrize("bad", [jnp.zeros((2, 3)), jnp.zeros(0)])
def test_bad_log_weight_shapes(bad):
    with pytest.raises(ValueError):
        rs.systematic(jax.random.key(0), bad)


def test_bad_num_samples():
    with pytest.raises(ValueError, match="num_samples"):
        rs.multinomial(jax.random.key(0), jnp.zeros(3), 0)


@pytest.mark.parametrize("scheme", SCHEMES[:-1])
@pytest.mark.parametrize("bad", [2.5, 3.0, True, "3"])
def test_non_integer_num_samples_is_an_error(scheme, bad):
    """num_samples=2.5 used to be truncated to 2; a non-integer is now a ValueError."""
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        rs.get_scheme(scheme)(jax.random.key(0), jnp.zeros(4), bad)


@pytest.mark.parametrize("scheme", SCHEMES[:-1])
def test_integral_num_samples_of_any_type(scheme):
    fn = rs.get_scheme(scheme)
    for m in (3, np.int64(3), np.int32(3), np.array(3)):
        assert fn(jax.random.key(0), jnp.zeros(4), m).shape == (3,)


@pytest.mark.parametrize(
    "fn",
    [rs.ess, rs.normalize, rs.log_normalize, rs.log_sum_and_ess,
     lambda w: rs.systematic(jax.random.key(0), w),
     lambda w: rs.conditional_multinomial(jax.random.key(0), w)],
)  # fmt: skip
@pytest.mark.parametrize(
    "bad,match", [(jnp.array(0.0), "got a scalar"), (jnp.zeros(0), "is empty")], ids=["0d", "N0"]
)
def test_scalar_or_empty_log_weights_are_clear_errors(fn, bad, match):
    """A scalar log-weight array gave an IndexError (or a silent ESS of 1) and an empty one
    failed inside JAX; both are now ValueErrors saying what is wrong, under jit too."""
    with pytest.raises(ValueError, match=match):
        fn(bad)
    with pytest.raises(ValueError, match=match):
        jax.jit(fn)(bad)


# ---------------------------------------------------------------------------- conditional
@pytest.mark.parametrize("scheme", CONDITIONAL)
@HYP
@given(log_w=log_weight_vectors(low=-2.0, high=2.0, allow_zero=True))
def test_conditional_is_size_biased_scheme(scheme, log_w):
    """The conditional law is the scheme's law size-biased by the reference's offspring
    count (Chopin & Singh 2015): ``E_cond[f(c)] = E[f(c) c_0] / (N W_0)`` for any
    function ``f`` of the count vector. Checked for ``f = c_i`` and ``f = c_i^2``."""
    n = log_w.shape[0]
    idx, cond = _draw(scheme, log_w, seed=1, conditional=True)
    _assert_basic(idx, n, n)
    assert (idx[:, 0] == 0).all(), "slot 0 must keep the reference"
    w = _exact_weights(log_w)
    assert (cond[:, (w == 0) & (np.arange(n) > 0)] == 0).all()
    _, plain = _draw(scheme, log_w, seed=2)
    biased = plain * plain[:, :1] / (n * w[0])
    biased_sq = plain**2 * plain[:, :1] / (n * w[0])
    for f_cond, f_biased, name in ((cond, biased, "c"), (cond**2, biased_sq, "c^2")):
        diff = f_cond.mean(0) - f_biased.mean(0)
        se = np.sqrt(f_cond.var(0) / K + f_biased.var(0) / K) + 5.0 / K
        assert (np.abs(diff) <= Z * se).all(), f"{scheme} {name}: {diff} (se {se})"
    if scheme == "multinomial":
        # slots 1..N-1 are i.i.d. draws from W
        _, rest = _draw(scheme, log_w, seed=1, conditional=True, skip_first=True)
        _assert_mean(rest, (n - 1) * w, "conditional multinomial")
    if scheme == "systematic":
        expected = n * w
        assert (cond >= np.floor(expected - 1e-3)).all()
        assert (cond <= np.ceil(expected + 1e-3)).all()
    if scheme == "stratified":
        assert (np.abs(cond - n * w) <= 2.0 + 1e-3).all()


@pytest.mark.parametrize("scheme", CONDITIONAL)
def test_conditional_single_particle(scheme):
    idx, _ = _draw(scheme, np.array([0.3], np.float32), conditional=True)
    assert (idx == 0).all()


# ---------------------------------------------------------------------------- weights
def test_ess_exact_values():
    assert float(rs.ess(jnp.zeros(10))) == pytest.approx(10.0)
    w = np.array([1.0, 2.0, 3.0])
    assert float(rs.ess(jnp.log(w))) == pytest.approx(36.0 / 14.0, rel=1e-6)
    assert float(rs.ess(jnp.log(w) + 1e4)) == pytest.approx(36.0 / 14.0, rel=1e-3)
    assert float(rs.ess(jnp.array([0.0, -jnp.inf, jnp.nan]))) == pytest.approx(1.0)
    assert float(rs.ess(jnp.array([-jnp.inf, -jnp.inf]))) == 0.0
    assert float(rs.ess(jnp.array([0.0, -1e4]))) == pytest.approx(1.0)


def test_log_normalize_exact_values():
    log_w = jnp.log(jnp.array([1.0, 3.0])) - 7000.0
    log_W, log_sum = rs.log_normalize(log_w)
    np.testing.assert_allclose(np.exp(np.asarray(log_W)), [0.25, 0.75], rtol=1e-3)
    assert float(log_sum) == pytest.approx(np.log(4.0) - 7000.0, abs=1e-3)
    log_W, log_sum = rs.log_normalize(jnp.array([0.0, jnp.nan, jnp.inf, 0.0]))
    np.testing.assert_allclose(np.exp(np.asarray(log_W)), [0.5, 0.0, 0.0, 0.5], atol=1e-7)
    assert float(log_sum) == pytest.approx(np.log(2.0))
    log_W, log_sum = rs.log_normalize(jnp.full(4, -jnp.inf))
    np.testing.assert_allclose(np.asarray(log_W), np.full(4, -np.log(4.0)), rtol=1e-6)
    assert float(log_sum) == -np.inf
    np.testing.assert_allclose(
        np.asarray(rs.normalize(jnp.log(jnp.array([2.0, 6.0])))), [0.25, 0.75], rtol=1e-6
    )


def test_get_scheme():
    for name in SCHEMES:
        assert rs.get_scheme(name) is getattr(rs, name)
    custom = lambda key, log_w, num_samples=None: jnp.zeros(log_w.shape[0], jnp.int32)
    assert rs.get_scheme(custom) is custom
    with pytest.raises(ValueError, match="unknown resampling scheme 'bogus'"):
        rs.get_scheme("bogus")
    assert rs.get_conditional_scheme("systematic") is rs.conditional_systematic
    assert rs.get_conditional_scheme(rs.residual) is rs.conditional_residual
    assert rs.get_conditional_scheme(rs.conditional_stratified) is rs.conditional_stratified
    with pytest.raises(ValueError, match="no conditional version"):
        rs.get_conditional_scheme("ssp")


@pytest.mark.filterwarnings("error")
def test_float64_mode():
    """With ``jax_enable_x64`` every scheme runs on float64 weights, returns int32
    indices, and raises no dtype-promotion warnings (future JAX errors)."""
    with jax.enable_x64(True):
        log_w = jnp.log(jnp.array([0.1, 0.2, 0.0, 0.4, 0.3]))
        assert log_w.dtype == jnp.float64
        fns = [rs.get_scheme(s) for s in SCHEMES]
        fns += [rs.get_conditional_scheme(s) for s in CONDITIONAL]
        for fn in fns:
            idx = jax.jit(fn)(jax.random.key(0), log_w)
            assert idx.dtype == jnp.int32 and idx.shape == (5,)
            assert int(rs.offspring_counts(idx, 5)[2]) == 0


@pytest.mark.parametrize(
    "scheme", SCHEMES + ["conditional_" + s for s in ("multinomial", "systematic", "stratified")]
)
def test_schemes_take_lists_tuples_and_numpy_arrays(scheme):
    """A list of log-weights raised ``TypeError: Cannot determine dtype`` from inside the
    shape checks; now any array-like gives the draws of the same JAX array."""
    fn = getattr(rs, scheme)
    values = [0.0, -1.0, -jnp.inf, -0.5]
    expected = fn(jax.random.key(3), jnp.asarray(values)).tolist()
    for like in (values, tuple(values), np.asarray(values)):
        assert fn(jax.random.key(3), like).tolist() == expected
    assert fn(jax.random.key(3), log_weights=values).tolist() == expected
    with pytest.raises(ValueError, match="array of numbers"):
        fn(jax.random.key(3), [[0.0, 1.0], [2.0]])


def test_weight_summaries_take_lists():
    values = [0.0, -1.0, -jnp.inf]
    for fn in (rs.ess, rs.normalize, rs.log_normalize, rs.log_sum_and_ess):
        got, want = fn(values), fn(jnp.asarray(values))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    assert abs(float(rs.ess(values)) - 1.6480543) < 1e-5  # (1 + e^-1)^2 / (1 + e^-2)
