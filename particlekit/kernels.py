"""Composable SMC kernels: ``init``, ``move``, ``reweight``, ``resample``, ``mcmc``, ``chain``.

User functions act on **one** particle; the kernels vectorise them over the population with
``jax.vmap`` (or, with ``vectorized=True``, hand the whole batch to the user function). A
kernel is a function ``(key, state, inputs) -> (state, info)`` with ``state`` a
``ParticleState`` and ``info`` a ``StepInfo``.

The one evidence rule (docs/architecture.md §3): ``log_evidence`` grows only in ``reweight``, by
``logsumexp(log W_prev + log G)`` with ``W_prev`` the normalised weights before the step.
It makes the evidence estimate unbiased on the natural scale whether or not a step
resampled.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import prng, resampling
from particlekit.types import Kernel, ParticleState, PyTree, StepInfo, num_particles_of

__all__ = [
    "init",
    "move",
    "reweight",
    "resample",
    "mcmc",
    "chain",
    "check_num_particles",
    "check_size",
    "check_memory",
    "check_key",
    "compensated_add",
    "reported_log_evidence",
]


MAX_SIZE = 2**31 - 1
"""The largest particle count (or other array length) a recipe accepts: particle indices
(ancestors, resampling output) are int32."""


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:,.1f} GiB"


def check_size(n: int, name: str = "num_particles") -> int:
    """A ``ValueError`` naming the memory needed if ``n`` exceeds ``MAX_SIZE`` (int32
    indices), instead of an ``OverflowError`` or ``RESOURCE_EXHAUSTED`` from deep inside JAX.
    Returns ``n``."""
    if n > MAX_SIZE:
        raise ValueError(
            f"{name}={n} is too large: at most 2**31 - 1 = {MAX_SIZE} (indices are int32), "
            f"and one float32 for each would already need {_gib(4 * n)}"
        )
    return n


def check_callable(fn, name: str, what: str) -> None:
    """A ``ValueError`` before tracing when ``fn`` (the argument ``name``, which should be
    ``what``) is not callable: a ``TypeError`` from inside the trace otherwise."""
    if not callable(fn):
        raise ValueError(f"{name} must be {what}, got {fn!r}")


def check_flag(value, name: str) -> bool:
    """A ``ValueError`` before tracing unless ``value`` is ``True`` or ``False`` (a NumPy
    bool too): ``bool("no")`` is true, so a string would silently turn the option on.

    Examples
    --------
    >>> check_flag(False, "keep_history")
    False
    >>> check_flag("no", "keep_history")
    Traceback (most recent call last):
    ...
    ValueError: keep_history must be True or False, got 'no'
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_num_particles(num_particles, name: str = "num_particles") -> int:
    """Validate a particle count before tracing: a positive integer (any integral type, e.g.
    ``np.int64``) of at most ``MAX_SIZE``.

    Examples
    --------
    >>> check_num_particles(10**10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: num_particles=10000000000 is too large: ... would already need 37.3 GiB
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer, got {num_particles!r}")
    if num_particles <= 0:
        raise ValueError(f"{name} must be a positive integer, got {num_particles}")
    return check_size(int(num_particles), name)


def _memory_limit() -> int | None:
    """Bytes of memory of the default backend's local devices together (the host's physical
    memory for CPU devices, which share it), or None if unknown."""
    try:
        devices = jax.local_devices()
        if all(d.platform == "cpu" for d in devices):
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    return sum(limits) if limits and all(limits) else None


def check_memory(num_bytes: int, what: str) -> None:
    """A ``ValueError`` naming the memory needed when ``what`` (e.g. "the population of
    10**9 particles") needs more than the memory of all local devices together: the run
    could only end in ``RESOURCE_EXHAUSTED``, raised late and from deep inside XLA."""
    limit = _memory_limit()
    if limit is not None and num_bytes > limit:
        raise ValueError(
            f"{what} needs {_gib(num_bytes)}, more than the {_gib(limit)} of memory of the "
            "devices; use fewer particles"
        )


def check_not_traced(where: str, hint: str, *trees) -> None:
    """A ``ValueError`` before tracing when a host-side driver (one that reads results on the
    host: adaptive sizes grown in Python, returned Python floats, checks across chains) is
    called inside ``jax.jit`` / ``jax.vmap`` / ``jax.grad``, where it failed deep inside with
    a ``TracerArrayConversionError`` or ``ConcretizationTypeError``. ``hint`` names the
    alternative."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees)):
        raise ValueError(
            f"{where} cannot run inside jax.jit / jax.vmap / jax.grad: it reads its results "
            f"on the host; call it on concrete arrays. {hint}".rstrip()
        )


def check_key(key, name: str = "key"):
    """Validate a PRNG key before tracing: a typed key (``jax.random.key(seed)``, shape
    ``()``) or a legacy ``uint32`` key (``jax.random.PRNGKey(seed)``, shape ``(2,)``);
    traced keys (inside ``jit`` / ``vmap``) are checked by dtype and shape the same way.
    Anything else (an ``int`` seed, data passed where the key belongs) is a ``ValueError``
    that says so. Returns ``key``.

    Examples
    --------
    >>> import jax
    >>> _ = check_key(jax.random.key(0))
    >>> check_key(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: key must be a JAX PRNG key such as jax.random.key(0), got int 0; ...
    """
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return key
        problem = f"a batch of keys of shape {shape}; pass one key"
    elif dtype == jnp.uint32 and shape == (2,):
        return key
    else:
        described = repr(key) if jnp.ndim(key) == 0 and shape in (None, ()) else ""
        if dtype is not None:
            problem = f"an array of dtype {dtype} and shape {shape}"
        else:
            problem = f"{type(key).__name__} {described[:40]}".strip()
    raise ValueError(
        f"{name} must be a JAX PRNG key such as jax.random.key(0), got {problem}; the key "
        "is the first argument of every particlekit sampler"
    )


def compensated_add(total, compensation, value):
    """One step of compensated (Kahan) summation: ``total + value`` with the rounding error
    carried in ``compensation``. Every recipe that accumulates the log-evidence over a long
    horizon goes through it, which keeps the sum accurate in float32 at ``T = 1e5`` and
    more (plain float32 addition drifts by nats there). Non-finite terms are added plainly
    (a ``-inf`` increment makes the total ``-inf``) and reset the compensation.

    Returns ``(new_total, new_compensation)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> def body(carry, x):
    ...     return compensated_add(*carry, x), None
    >>> (total, _), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)),
    ...                              jnp.full(100_000, 0.1, jnp.float32))
    >>> round(float(total), 2)
    10000.0
    """
    finite = jnp.isfinite(value) & jnp.isfinite(total)
    y = value - compensation
    t = total + y
    new_compensation = (t - total) - y
    return jnp.where(finite, t, total + value), jnp.where(finite, new_compensation, 0.0)


def reported_log_evidence(log_evidence: jax.Array) -> jax.Array:
    """The log-evidence a recipe reports: NaN (a run whose weights all vanished) becomes
    ``-inf``, so a failure is a zero evidence, never a silent NaN.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> reported_log_evidence(jnp.array([-3.0, jnp.nan])).tolist()
    [-3.0, -inf]
    """
    return jnp.where(jnp.isnan(log_evidence), -jnp.inf, log_evidence)


def _take(tree: PyTree, idx: jax.Array) -> PyTree:
    return jax.tree.map(lambda leaf: leaf[idx], tree)


def _check_population(particles: PyTree, n: int, what: str) -> None:
    """A ``ValueError`` at trace time (a static shape check, no work per step) when a leaf
    of ``particles`` lacks the leading particle axis of length ``n``: the population would
    silently change size, and the error surface later as a misleading shape error of
    ``reweight`` or a scan carry mismatch."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(particles):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != n:
            where = f"the leaf {jax.tree_util.keystr(path)}" if path else "it"
            raise ValueError(
                f"{what} must return the population with leading axis {n} (one entry per "
                f"particle; vectorized functions return the whole batch), but {where} has "
                f"shape {shape}"
            )


def init(
    key: jax.Array, sample_fn: Callable, num_particles: int, *, vectorized: bool = False
) -> ParticleState:
    """Draw an equally weighted initial population.

    Parameters
    ----------
    key : PRNG key
    sample_fn : callable
        ``sample_fn(key) -> particle`` (one particle, any PyTree). With
        ``vectorized=True``: ``sample_fn(key, num_particles) -> particles`` with leading
        axis ``N``.
    num_particles : int
        ``N > 0``.

    Returns
    -------
    ParticleState
        Zero log-weights, zero log-evidence, ``ancestors = arange(N)``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 100)
    >>> state.particles.shape
    (100,)
    """
    check_key(key)
    check_callable(sample_fn, "sample_fn", "a function sample_fn(key) -> particle")
    n = check_num_particles(num_particles)

    def sample(key):
        if vectorized:
            return prng.call_with_keys(lambda k: sample_fn(k, n), prng.population_key(key))
        return prng.call_with_keys(jax.vmap(sample_fn), prng.particle_keys(key, n))

    shapes = jax.eval_shape(sample, key)  # before anything is allocated
    num_bytes = sum(
        math.prod(a.shape) * getattr(a.dtype, "itemsize", 4) for a in jax.tree.leaves(shapes)
    )
    check_memory(num_bytes, f"the population of {n} particles")
    particles = sample(key)
    for leaf in jax.tree.leaves(particles):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != n:
            raise ValueError(
                f"sample_fn must return one particle (vectorized=False) or a batch with "
                f"leading axis {n} (vectorized=True); got a leaf of shape {jnp.shape(leaf)}"
            )
    dtype = jnp.result_type(float)
    return ParticleState(
        particles=particles,
        log_weights=jnp.zeros(n, dtype),
        log_evidence=jnp.zeros((), dtype),
        ancestors=jnp.arange(n, dtype=jnp.int32),
        previous_particles=particles,
    )


def per_particle(fn: Callable, batch_size: int | None = None) -> Callable:
    """``fn`` mapped over the leading axis of its first two arguments (the third is shared):
    ``jax.vmap``, or with ``batch_size`` a ``lax.map`` over chunks of that many particles
    (each chunk vmapped), so that the intermediates of an expensive per-particle function
    need memory for ``batch_size`` particles instead of all of them."""
    if batch_size is None:
        return jax.vmap(fn, in_axes=(0, 0, None))
    batch_size = check_num_particles(batch_size, "batch_size")

    def mapped(a, b, shared):
        return jax.lax.map(lambda ab: fn(ab[0], ab[1], shared), (a, b), batch_size=batch_size)

    return mapped


def move(fn: Callable, *, vectorized: bool = False, batch_size: int | None = None) -> Kernel:
    """A kernel moving every particle with ``x' = fn(key, x, inputs)``.

    Weights and evidence are unchanged; ``previous_particles`` becomes the particles
    before the move. With ``vectorized=True``, ``fn(key, xs, inputs)`` receives the batch.
    The per-particle keys are ``jax.random.split(key, N)``'s bits; from a typed Threefry key
    they are keys of ``particlekit.prng``'s fused implementation (the same draws, faster).
    ``batch_size`` evaluates ``fn`` on that many particles at a time (``per_particle``);
    a ``vectorized`` function sees the whole batch, so the two together are a ``ValueError``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> step = pk.move(lambda key, x, t: 0.9 * x + jax.random.normal(key))
    """
    check_callable(fn, "fn", "a function fn(key, x, inputs) -> x'")
    _check_batch_size(vectorized, batch_size)

    def kernel(key, state: ParticleState, inputs=None):
        check_key(key)  # static (dtype and shape): a clear error, no work per step
        n = num_particles_of(state)

        def moved(keys):
            if vectorized:
                return fn(keys, state.particles, inputs)
            return per_particle(fn, batch_size)(keys, state.particles, inputs)

        keys = prng.population_key(key) if vectorized else prng.particle_keys(key, n)
        new = prng.call_with_keys(moved, keys)
        _check_population(new, n, "the move function")
        state = state._replace(particles=new, previous_particles=state.particles)
        return state, StepInfo.neutral(state)

    return kernel


def reweight(fn: Callable, *, vectorized: bool = False, batch_size: int | None = None) -> Kernel:
    """A kernel multiplying the weights by the potential ``G = exp(fn(x_prev, x, inputs))``.

    This is the one place where ``log_evidence`` grows, by
    ``logsumexp(log W_prev + log G)`` with ``W_prev`` the normalised weights before the
    step. ``NaN`` and ``+inf`` log-potentials count as zero weight and are reported in
    ``info.num_nonfinite``; if every weight becomes zero the increment is ``-inf``.

    Parameters
    ----------
    fn : callable
        ``fn(x_prev, x, inputs) -> log G`` for one particle, with ``x_prev`` the particle
        before the most recent move. With ``vectorized=True`` it receives batches and
        returns shape ``(N,)``.
    batch_size : int, optional
        Evaluate ``fn`` on that many particles at a time (``per_particle``); not with
        ``vectorized=True`` (a ``ValueError``: the function sees the whole batch).

    Examples
    --------
    >>> import jax.numpy as jnp, particlekit as pk
    >>> step = pk.reweight(lambda x_prev, x, y: -0.5 * (y - x) ** 2)
    """
    check_callable(fn, "fn", "a function fn(x_prev, x, inputs) -> log-potential")
    return _reweight(fn, vectorized=vectorized, batch_size=batch_size, normalized_input=False)


def reweight_normalized(
    fn: Callable, *, vectorized: bool = False, batch_size: int | None = None
) -> Kernel:
    """``reweight`` for a population whose log-weights are already normalised
    (``logsumexp = 0``), as ``normalizing_resample`` leaves them: it skips the
    normalisation pass over the previous weights. Internal (not in ``__all__``): the
    filters' ``normalizing_resample -> move -> reweight_normalized`` step gives the same
    results, bit for bit, as ``resample -> move -> reweight`` with one pass fewer per step.
    On weights that are not normalised its evidence increments are wrong."""
    return _reweight(fn, vectorized=vectorized, batch_size=batch_size, normalized_input=True)


def _check_batch_size(vectorized, batch_size) -> None:
    """``batch_size`` chunks a per-particle function; a vectorized one would ignore it."""
    if vectorized and batch_size is not None:
        raise ValueError(
            f"batch_size={batch_size!r} needs a per-particle function (vectorized=False): a "
            "vectorized function receives the whole population at once"
        )


def _reweight(fn, *, vectorized, batch_size, normalized_input) -> Kernel:
    _check_batch_size(vectorized, batch_size)

    def kernel(key, state: ParticleState, inputs=None):
        del key
        if vectorized:
            log_g = fn(state.previous_particles, state.particles, inputs)
        else:
            log_g = per_particle(fn, batch_size)(state.previous_particles, state.particles, inputs)
        resampling.check_real_log_weights(log_g, "the log-potential")
        log_g = jnp.asarray(log_g, state.log_weights.dtype)
        if log_g.shape != state.log_weights.shape:
            raise ValueError(
                f"the log-potential must be a scalar per particle; got shape {log_g.shape} "
                f"for {num_particles_of(state)} particles (a log_prob of a batch of "
                "distributions? declare vector coordinates as one event with .to_event(1))"
            )
        nonfinite = resampling.invalid_log_weights(log_g)
        log_g = jnp.where(nonfinite, -jnp.inf, log_g)
        if normalized_input:
            log_w_prev = state.log_weights
        else:
            log_w_prev, _ = resampling.log_normalize(state.log_weights)
        log_weights = log_w_prev + log_g
        increment, new_ess = resampling.log_sum_and_ess(log_weights)
        state = state._replace(log_weights=log_weights, log_evidence=state.log_evidence + increment)
        info = StepInfo(
            ess=new_ess,
            resampled=jnp.asarray(False),
            log_evidence_increment=increment,
            acceptance_rate=jnp.full((), jnp.nan, log_weights.dtype),
            num_nonfinite=jnp.sum(nonfinite).astype(jnp.int32),
        )
        return state, info

    return kernel


def _is_builtin_scheme(scheme) -> bool:
    """Whether ``scheme`` is one of ``particlekit.resampling``'s (whose indices are valid by
    construction); by identity, since a user's scheme may not be hashable."""
    builtins = (*resampling.SCHEMES.values(), *resampling.CONDITIONAL_SCHEMES.values())
    return any(scheme is b for b in builtins)


def _resample_state(key, state: ParticleState, scheme, normalize: bool, check: bool):
    """The population resampled by ``scheme``, and the number of ancestor indices outside
    ``[0, N)`` (``check``: a user's scheme; the built-in ones return valid indices): those
    slots get weight zero, the count is reported as ``info.num_nonfinite`` (a gather would
    silently clamp them to the first or last particle)."""
    n = num_particles_of(state)
    # the documented scheme signature is (key, log_weights, num_samples) -> indices
    idx = _check_indices(scheme(key, state.log_weights, n), n)
    equal = jnp.zeros_like(state.log_weights)
    num_invalid = jnp.zeros((), jnp.int32)
    if check:
        invalid = (idx < 0) | (idx >= n)
        num_invalid = jnp.sum(invalid, dtype=jnp.int32)
        equal = jnp.where(invalid, -jnp.inf, equal)
    if normalize:  # -log N exactly as reweight's log_normalize of zeros computes it
        equal, _ = resampling.log_normalize(equal)
    new = state._replace(
        particles=_take(state.particles, idx),
        previous_particles=_take(state.previous_particles, idx),
        log_weights=equal,
        ancestors=idx,
    )
    return new, num_invalid


def _check_indices(idx, n: int) -> jax.Array:
    """The ancestor indices of a resampling scheme as ``int32[n]``; a ``ValueError`` at trace
    time (static shape and dtype checks) for the wrong shape or a non-integer dtype. A custom
    scheme may return any integer dtype (``jax.random.categorical`` gives int64 under
    ``jax_enable_x64``): the cast is a no-op for the built-in schemes."""
    idx = jnp.asarray(idx)
    if idx.shape != (n,) or not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(
            f"a resampling scheme must return {n} integer ancestor indices (shape ({n},)), "
            f"got shape {idx.shape} and dtype {idx.dtype}"
        )
    return idx.astype(jnp.int32)


def resample(scheme="systematic", ess_threshold: float = 0.5) -> Kernel:
    """A kernel resampling the population when ``ESS < ess_threshold * N``.

    Parameters
    ----------
    scheme : str or callable
        A scheme of ``particlekit.resampling`` (name or function), or any function
        ``(key, log_weights, num_samples) -> indices``.
    ess_threshold : float in [0, 1]
        ``1.0`` resamples at every step, ``0.0`` never.

    Notes
    -----
    After resampling the weights are equal and ``ancestors`` holds the drawn indices;
    otherwise ``ancestors = arange(N)``.

    Examples
    --------
    >>> import particlekit as pk
    >>> step = pk.resample(pk.resampling.systematic, ess_threshold=0.5)
    """
    return _resample(scheme, ess_threshold, normalize=False)


def normalizing_resample(scheme="systematic", ess_threshold: float = 0.5) -> Kernel:
    """``resample`` that also leaves the log-weights normalised (``resampling.log_normalize``:
    ``logsumexp = 0``, uniform ``-log N`` after resampling or when every weight is zero),
    whether or not it resampled; the ESS test already computes the maximum and the sum
    that this needs. Pair it with ``reweight_normalized``. Internal (not in ``__all__``)."""
    return _resample(scheme, ess_threshold, normalize=True)


def check_ess_threshold(ess_threshold) -> float:
    """``ess_threshold`` as a Python float in ``[0, 1]``: a real number (any real type, or a
    concrete 0-d array); a ``ValueError`` before tracing for ``NaN``, values outside
    ``[0, 1]``, and strings, booleans or ``None`` (``"0.5"`` used to pass the range check and
    fail at trace time with a ``TypeError``)."""
    if isinstance(ess_threshold, (str, bytes, bool)) or ess_threshold is None:
        raise ValueError(f"ess_threshold must be a number in [0, 1], got {ess_threshold!r}")
    try:
        value = float(ess_threshold)
    except (TypeError, ValueError):
        raise ValueError(
            f"ess_threshold must be a number in [0, 1], got {ess_threshold!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    return value


def _resample(scheme, ess_threshold: float, normalize: bool) -> Kernel:
    scheme_fn = resampling.get_scheme(scheme)
    ess_threshold = check_ess_threshold(ess_threshold)
    if isinstance(scheme_fn, resampling.Islands):
        islands_kernel = _resample_islands(scheme_fn, float(ess_threshold))
        if not normalize:
            return islands_kernel

        def normalized_islands_kernel(key, state: ParticleState, inputs=None):
            new_state, info = islands_kernel(key, state, inputs)
            log_w, _ = resampling.log_normalize(new_state.log_weights)
            return new_state._replace(log_weights=log_w), info

        return normalized_islands_kernel

    check_ancestors = not _is_builtin_scheme(scheme_fn)

    def kernel(key, state: ParticleState, inputs=None):
        del inputs
        n = num_particles_of(state)
        current_ess = resampling.ess(state.log_weights)
        if ess_threshold >= 1.0:
            do_resample = jnp.asarray(True)
        elif ess_threshold <= 0.0:
            do_resample = jnp.asarray(False)
        else:
            do_resample = current_ess < ess_threshold * n
        kept = state._replace(ancestors=jnp.arange(n, dtype=jnp.int32))
        if normalize:  # shares the max and the sum with the ESS above (XLA merges them)
            kept = kept._replace(log_weights=resampling.log_normalize(state.log_weights)[0])
        none_invalid = jnp.zeros((), jnp.int32)
        if ess_threshold >= 1.0:
            new_state, num_invalid = _resample_state(
                key, state, scheme_fn, normalize, check_ancestors
            )
        elif ess_threshold <= 0.0:
            new_state, num_invalid = kept, none_invalid
        else:
            new_state, num_invalid = jax.lax.cond(
                do_resample,
                lambda s: _resample_state(key, s, scheme_fn, normalize, check_ancestors),
                lambda s: (kept, none_invalid),
                state,
            )
        # the ESS after the step: N if resampled (equal weights), unchanged otherwise
        ess_after = jnp.where(do_resample, jnp.asarray(n, current_ess.dtype), current_ess)
        if check_ancestors:  # (invalid ancestors: zero weights)
            ess_after = jnp.where(num_invalid > 0, resampling.ess(new_state.log_weights), ess_after)
        info = StepInfo.neutral(new_state, ess=ess_after)._replace(
            resampled=do_resample, num_nonfinite=num_invalid
        )
        return new_state, info

    return kernel


def _resample_islands(islands, ess_threshold: float) -> Kernel:
    """``resample`` with ``resampling.Islands``: each block of ``N / num_islands``
    particles resamples within itself when its own ESS is below ``ess_threshold`` times its
    size, and its offspring share the block's total weight. Every array is reshaped to
    ``(num_islands, N / num_islands, ...)`` and the island operations are vmapped, so a
    particle axis sharded into the same blocks stays local."""
    num_islands, scheme, exchange = islands.num_islands, islands.scheme, islands.exchange

    def kernel(key, state: ParticleState, inputs=None):
        del inputs
        n = num_particles_of(state)
        if n % num_islands:
            raise ValueError(
                f"island resampling needs num_particles ({n}) to be a multiple of "
                f"num_islands ({num_islands})"
            )
        m = n // num_islands
        if exchange > m:
            raise ValueError(
                f"island exchange of {exchange} particles is more than an island holds ({m})"
            )
        log_w = state.log_weights.reshape(num_islands, m)
        log_mass, island_ess = jax.vmap(resampling.log_sum_and_ess)(log_w)
        if ess_threshold >= 1.0:
            do = jnp.ones(num_islands, bool)
        else:
            do = island_ess < ess_threshold * m
        keys = prng.split(key, num_islands)
        local = jax.vmap(lambda k, w: scheme(k, w, m))(keys, log_w)
        local = jnp.where(do[:, None], local, jnp.arange(m, dtype=local.dtype)[None])
        even = jnp.broadcast_to((log_mass - jnp.log(m))[:, None], log_w.shape)
        new_log_w = jnp.where(do[:, None], even.astype(log_w.dtype), log_w)
        offsets = (jnp.arange(num_islands, dtype=jnp.int32) * m)[:, None]
        ancestors = offsets + local.astype(jnp.int32)

        def pass_on(blocks):
            # the first ``exchange`` slots of island p come from island p - 1 (a ring)
            if not exchange:
                return blocks
            moved = jnp.roll(blocks[:, :exchange], 1, axis=0)
            return jnp.concatenate([moved, blocks[:, exchange:]], axis=1)

        def take(leaf):
            blocks = leaf.reshape((num_islands, m) + leaf.shape[1:])
            return pass_on(jax.vmap(lambda x, i: x[i])(blocks, local)).reshape(leaf.shape)

        new_state = state._replace(
            particles=jax.tree.map(take, state.particles),
            previous_particles=jax.tree.map(take, state.previous_particles),
            log_weights=pass_on(new_log_w).reshape(n),
            ancestors=pass_on(ancestors).reshape(n),
        )
        info = StepInfo.neutral(new_state, ess=resampling.ess(new_state.log_weights))
        return new_state, info._replace(resampled=jnp.any(do))

    return kernel


def mcmc(kernel, num_steps: int = 1) -> Kernel:
    """Rejuvenate every particle with ``num_steps`` steps of a BlackJAX MCMC kernel.

    Parameters
    ----------
    kernel : blackjax SamplingAlgorithm or callable
        Either an algorithm with ``init(position)`` and ``step(key, state)`` (e.g.
        ``blackjax.rmh(logdensity_fn, ...)``), or a function ``inputs -> algorithm`` when
        the target depends on the step inputs (e.g. a temperature).
    num_steps : int
        Number of MCMC steps per particle.

    Notes
    -----
    The weights are unchanged (the kernel leaves the current target invariant), and
    ``info.acceptance_rate`` is the mean acceptance rate over particles and steps.

    Examples
    --------
    >>> import blackjax, jax.numpy as jnp, particlekit as pk
    >>> rw = blackjax.additive_step_random_walk.normal_random_walk(
    ...     lambda x: -0.5 * x**2, sigma=jnp.array(0.5))
    >>> step = pk.mcmc(rw, num_steps=5)
    """
    num_steps = check_num_particles(num_steps, "num_steps")
    if not hasattr(kernel, "step"):
        check_callable(
            kernel, "kernel", "a BlackJAX algorithm (init, step) or a function inputs -> one"
        )

    def kernel_fn(key, state: ParticleState, inputs=None):
        check_key(key)
        algorithm = kernel if hasattr(kernel, "step") else kernel(inputs)
        n = num_particles_of(state)

        def one_particle(key, position):
            mcmc_state = algorithm.init(position)

            def body(carry, step_key):
                new_state, info = algorithm.step(step_key, carry)
                rate = getattr(info, "acceptance_rate", None)
                if rate is None:
                    rate = getattr(info, "is_accepted", jnp.nan)
                return new_state, jnp.asarray(rate, jnp.float32)

            final, rates = jax.lax.scan(body, mcmc_state, prng.split(key, num_steps))
            return final.position, jnp.mean(rates)

        new, rates = prng.call_with_keys(
            lambda k: jax.vmap(one_particle)(k, state.particles), prng.particle_keys(key, n)
        )
        state = state._replace(particles=new, previous_particles=state.particles)
        info = StepInfo.neutral(state)._replace(
            acceptance_rate=jnp.mean(rates).astype(state.log_weights.dtype)
        )
        return state, info

    return kernel_fn


def _check_kernel(kern) -> None:
    """A ``ValueError`` when building a ``chain`` from something that is not a kernel: a
    primitive itself instead of the kernel it makes (``pk.resample`` for
    ``pk.resample()``), which failed at the first step with a ``TypeError`` about its
    arguments, or a non-callable."""
    factories = {f.__name__: f for f in (init, move, reweight, resample, mcmc, chain)}
    for name, factory in factories.items():
        if kern is factory:
            raise ValueError(
                f"chain takes kernels; got the primitive pk.{name} itself: call it, e.g. "
                f"pk.{name}(...)"
            )
    if not callable(kern):
        raise ValueError(f"chain takes kernels (key, state, inputs) -> (state, info), got {kern!r}")


def chain(*kernels: Kernel) -> Kernel:
    """Compose kernels left to right into one kernel; the infos are merged (ESS of the
    final weights, ``resampled`` if any resampled, evidence increments summed).

    Examples
    --------
    >>> import particlekit as pk
    >>> step = pk.chain(pk.resample(), pk.move(lambda k, x, y: x), pk.reweight(
    ...     lambda xp, x, y: -0.5 * (x - y) ** 2))
    """
    if not kernels:
        raise ValueError("chain needs at least one kernel")
    for kern in kernels:
        _check_kernel(kern)

    def kernel(key, state: ParticleState, inputs=None):
        keys = jax.random.split(check_key(key), len(kernels))
        info = StepInfo.neutral(state)
        for k, kern in zip(keys, kernels, strict=True):
            out = kern(k, state, inputs)
            if not (isinstance(out, tuple) and len(out) == 2):  # (a ParticleState has 5)
                raise ValueError(
                    f"a kernel of chain must return (state, info), as pk.move / pk.reweight / "
                    f"pk.resample / pk.mcmc kernels do; {kern!r} returned "
                    f"{type(out).__name__}"
                )
            state, step_info = out
            info = info.merge(step_info)
        return state, info

    return kernel
