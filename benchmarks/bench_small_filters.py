"""Small bootstrap filters, alone and in a ``vmap`` (the filters of PMMH chains and of
SMC²'s parameter particles): the per-particle keys derived by ``jax.random``'s rolled loop
against the unrolled hash in a conditional (``particlekit.prng.particle_keys``, switched
at ``prng.ROLLED_SPLIT_MAX`` particles), side by side in one process.

Both variants give the same keys, so the same results; each is compiled ahead of time from
a fresh trace with the threshold set (``ROLLED_SPLIT_MAX = 64``, the library's: the
conditional from 65 particles on; and a threshold above every ``N``: the rolled loop
always), then all are timed round-robin. Models of ``bench_filters.py`` (``lg``: 1-D
linear Gaussian, ``lg4``: 4-D), default per-particle path, ``T`` steps; ns per
particle-step (minimum of ``--repeats`` calls), the ratio conditional / rolled, and compile
times.

Usage::

    python benchmarks/bench_small_filters.py                       # N = 128 .. 512
    python benchmarks/bench_small_filters.py --sizes 128,256 --batches 1,4 --models lg
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(__file__))
from bench_filters import pk_model  # noqa: E402

import particlekit as pk  # noqa: E402
from particlekit import prng  # noqa: E402

VARIANTS = {"conditional": 64, "rolled": 1 << 30}  # ROLLED_SPLIT_MAX of each


def compiled_filter(ssm, ys, n: int, batch: int, rolled_split_max: int):
    """A ``vmap`` of ``batch`` filters of ``n`` particles over a batch of keys, compiled
    from a fresh trace with ``prng.ROLLED_SPLIT_MAX = rolled_split_max``; (compiled,
    seconds)."""

    def filters(keys):
        def one(key):
            out = pk.filters.bootstrap(
                key, ssm, ys, num_particles=n, keep_history=False, progress_bar=False
            )
            return out.log_evidence

        return jax.vmap(one)(keys)

    saved = prng.ROLLED_SPLIT_MAX
    prng.ROLLED_SPLIT_MAX = rolled_split_max
    try:
        jax.clear_caches()
        t0 = time.perf_counter()
        compiled = jax.jit(filters).lower(jax.random.split(jax.random.key(0), batch)).compile()
        return compiled, time.perf_counter() - t0
    finally:
        prng.ROLLED_SPLIT_MAX = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lg,lg4")
    parser.add_argument("--sizes", default="128,256,384,512", help="comma-separated N")
    parser.add_argument("--batches", default="1,4,32", help="filters per vmap")
    parser.add_argument("--steps", type=int, default=200, help="T")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="lg, N = 128, B = 1, 4, T = 50")
    args = parser.parse_args()
    models, num_steps, repeats = args.models.split(","), args.steps, args.repeats
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(s) for s in args.batches.split(",")]
    if args.quick:
        models, sizes, batches, num_steps, repeats = ["lg"], [128], [1, 4], 50, 3
    print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}); T = {num_steps}, minimum "
          f"of {repeats} calls; ROLLED_SPLIT_MAX now {prng.ROLLED_SPLIT_MAX}")  # fmt: skip
    print("\n| model | N | filters in vmap | conditional ns / particle-step | rolled | "
          "conditional / rolled | compile conditional / rolled (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in models:
        ssm = pk_model(name, vectorized=False)
        _, ys = ssm.simulate(jax.random.key(7), num_steps)
        for n in sizes:
            for batch in batches:
                keys = jax.random.split(jax.random.key(1), batch)
                compiled = {
                    label: compiled_filter(ssm, ys, n, batch, value)
                    for label, value in VARIANTS.items()
                }
                times = {label: [] for label in compiled}
                for r in range(repeats + 1):  # the first round warms up
                    for label, (fn, _) in compiled.items():
                        t0 = time.perf_counter()
                        jax.block_until_ready(fn(keys))
                        if r:
                            times[label].append(time.perf_counter() - t0)
                per = {k: min(v) * 1e9 / (batch * n * num_steps) for k, v in times.items()}
                c, r_ = per["conditional"], per["rolled"]
                print(f"| {name} | {n} | {batch} | {c:.1f} | {r_:.1f} | {c / r_:.2f} | "
                      f"{compiled['conditional'][1]:.2f} / {compiled['rolled'][1]:.2f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
