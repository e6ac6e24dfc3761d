"""Resampling schemes: nanoseconds per particle, side by side with naive baselines.

Every scheme of :mod:`particlekit.resampling` is timed (jitted, median of repeats after a
warm-up call; compile time reported separately) at ``N`` in {1e3, 1e4, 1e5, 1e6} next to

* ``searchsorted``: the textbook systematic resampler, ``jnp.searchsorted(cumsum(W), (j + U) / N)``;
* ``categorical``: ``jax.random.categorical(key, logw, shape=(N,))`` (N x N Gumbels; only
  run for ``N <= 1e4``);

and a few building blocks (exp, cumulative sums, scatter-add histogram) that explain the
costs. Usage::

    python benchmarks/bench_resampling.py            # full table (about a minute)
    python benchmarks/bench_resampling.py --quick    # smoke run in a few seconds
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import particlekit as pk
from particlekit import resampling

SCHEMES = list(resampling.SCHEMES)  # every scheme the library registers, in its order


def time_jitted(fn, *args, repeats=5, min_time=0.2):
    """(compile seconds, median seconds per call) of ``jax.jit(fn)(*args)``.

    Compilation is timed through ``lower().compile()``; then one warm-up call and at least
    ``repeats`` timed calls (more for fast functions, until ``min_time`` has elapsed)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    times = []
    t_total = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_total < min_time and len(times) < 200):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def naive_systematic(key, log_weights):
    """The textbook O(N log N) systematic resampler (binary search of the CDF)."""
    n = log_weights.shape[0]
    w = jnp.exp(log_weights - jnp.max(log_weights))
    cdf = jnp.cumsum(w)
    points = (jnp.arange(n) + jax.random.uniform(key)) / n * cdf[-1]
    return jnp.clip(jnp.searchsorted(cdf, points), 0, n - 1).astype(jnp.int32)


def categorical(key, log_weights):
    n = log_weights.shape[0]
    return jax.random.categorical(key, log_weights, shape=(n,)).astype(jnp.int32)


def building_blocks(n):
    x = jax.random.uniform(jax.random.key(3), (n,))
    i = jax.random.randint(jax.random.key(4), (n,), 0, n)
    return {
        "exp": (jnp.exp, x),
        "jnp.cumsum f32": (jnp.cumsum, x),
        "associative_scan f32": (lambda v: jax.lax.associative_scan(jnp.add, v), x),
        "jnp.cumsum i32": (jnp.cumsum, i),
        "associative_scan i32": (lambda v: jax.lax.associative_scan(jnp.add, v), i),
        "scatter-add hist i32": (lambda v: jnp.zeros(n + 1, jnp.int32).at[v].add(1), i),
        "gather x[idx]": (lambda v, j: v[j], x, i),
        "uniform (N,)": (lambda k: jax.random.uniform(k, (n,)), jax.random.key(5)),
        "searchsorted (sorted)": (
            lambda c, u: jnp.searchsorted(c, u),
            jnp.cumsum(x) / jnp.sum(x),
            jnp.sort(jax.random.uniform(jax.random.key(6), (n,))),
        ),
    }


def check(idx, log_weights, name):
    """Cheap sanity check: indices in range; for systematic and SSP, report offspring
    counts that are not floor or ceil of N W (float32 CDF rounding at large N)."""
    n = log_weights.shape[0]
    idx = np.asarray(idx)
    assert idx.dtype == np.int32 and idx.min() >= 0 and idx.max() < n, name
    if name in ("systematic", "ssp"):
        counts = np.bincount(idx, minlength=n)
        nw = n * np.asarray(resampling.normalize(log_weights), np.float64)
        dev = np.abs(counts - nw)
        if dev.max() >= 1.0 + 1e-6:
            print(
                f"  note: {name} N={n}: {int((dev >= 1.0 + 1e-6).sum())} counts not floor/ceil "
                f"of N W (max |count - N W| = {dev.max():.2f})"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    repeats = 3 if args.quick else args.repeats
    min_time = 0.02 if args.quick else 0.3

    print(
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}, devices "
        f"{jax.devices()}, particlekit {getattr(pk, '__version__', '?')}"
    )
    key = jax.random.key(0)
    rows: dict[str, dict[int, float]] = {}
    compiles: dict[str, dict[int, float]] = {}

    def record(name, n, fn, *fargs):
        c, t = time_jitted(fn, *fargs, repeats=repeats, min_time=min_time)
        rows.setdefault(name, {})[n] = t / n * 1e9
        compiles.setdefault(name, {})[n] = c

    for n in sizes:
        # log-weights spread over ~10 nats, shifted far from 0 to exercise max-subtraction
        log_w = 3.0 * jax.random.normal(jax.random.key(1), (n,)) - 1e4
        for name in SCHEMES:
            fn = resampling.get_scheme(name)
            record(name, n, fn, key, log_w)
            check(jax.jit(fn)(key, log_w), log_w, name)
        record("baseline: searchsorted systematic", n, naive_systematic, key, log_w)
        if n <= (1_000 if args.quick else 10_000):
            record("baseline: jax.random.categorical", n, categorical, key, log_w)
        for name, (fn, *fargs) in building_blocks(n).items():
            record(f"block: {name}", n, fn, *fargs)

    width = max(len(r) for r in rows) + 2
    header = "ns / particle".ljust(width) + "".join(f"{'N=' + f'{n:.0e}':>11}" for n in sizes)
    print("\n" + header)
    print("-" * len(header))
    for name, vals in rows.items():
        cells = "".join(f"{vals[n]:11.2f}" if n in vals else f"{'-':>11}" for n in sizes)
        print(name.ljust(width) + cells)
    ref = rows["baseline: searchsorted systematic"]
    print("\nratio to the searchsorted baseline (lower is faster)")
    for name in SCHEMES:
        print(name.ljust(width) + "".join(f"{rows[name][n] / ref[n]:11.2f}" for n in sizes))
    print("\ncompile time (s)")
    for name in [*SCHEMES, "baseline: searchsorted systematic"]:
        print(name.ljust(width) + "".join(f"{compiles[name][n]:11.2f}" for n in sizes))


if __name__ == "__main__":
    main()
