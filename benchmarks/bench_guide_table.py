"""The flattened accept-reject proposal's guide table: bit mask against histogram.

`backward.guide_table(cdf, PROPOSAL_BUCKETS, sparse=True)` counts each bucket's first
particle from a bit per bucket (`backward.sparse_first`); `sparse=False` from a histogram
and a prefix sum over all `2N` buckets. Both build the same table (checked here). Side by
side in one process, interleaved: the table alone and the whole
`backward.flattened_proposal`'s set-up (the histogram variant as `flattened_proposal` built
it before), nanoseconds per particle (minimum over repeats of a compiled loop of calls),
and compile time. Usage::

    python benchmarks/bench_guide_table.py                  # N = 1024, 4096, 16384
    python benchmarks/bench_guide_table.py --sizes 4096 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import backward, resampling

CALLS = 50  # table builds per timed call (a fori_loop)
BUCKETS = backward.PROPOSAL_BUCKETS  # the flattened proposal's buckets per particle


def variants(sparse: bool):
    """The table alone and the proposal's whole set-up, each a loop of ``CALLS`` builds."""

    def table_only(cdf):
        def body(i, acc):
            t = backward.guide_table(cdf * (1.0 - acc * 1e-30), BUCKETS, sparse=sparse)
            return acc + t.first[3] + t.threshold[5] + t.num_steps

        return jax.lax.fori_loop(0, CALLS, body, jnp.zeros(()))

    def setup(log_w):
        def body(i, acc):
            lw, _ = resampling.log_normalize(log_w + acc * 1e-30)
            t = backward.guide_table(backward.flattened_cdf(lw), BUCKETS, sparse=sparse)
            # (flattened_proposal's acceptance term, without the bound)
            log_accept = jnp.minimum(lw - math.log(backward.FLATTEN_FLOOR / lw.shape[0]), 0.0)
            return acc + t.first[3] + t.threshold[5] + t.num_steps + log_accept[7]

        return jax.lax.fori_loop(0, CALLS, body, jnp.zeros(()))

    return {"table": table_only, "proposal set-up": setup}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"jax {jax.__version__} ({jax.default_backend()}); minimum of {args.repeats}")
    print("\n| N | part | histogram ns / particle | bit mask | ratio | compile hist / bits (s) |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        log_w, _ = resampling.log_normalize(3.0 * jax.random.normal(jax.random.key(n), (n,)))
        cdf = backward.flattened_cdf(log_w)
        dense = backward.guide_table(cdf, BUCKETS)
        sparse = backward.guide_table(cdf, BUCKETS, sparse=True)
        for a, b in zip(dense, sparse, strict=True):  # the same table
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for part in ("table", "proposal set-up"):
            arg = cdf if part == "table" else log_w
            compiled, compile_s = {}, {}
            for sparse_flag in (False, True):
                jax.clear_caches()
                start = time.perf_counter()
                fn = jax.jit(variants(sparse_flag)[part]).lower(arg).compile()
                compile_s[sparse_flag] = time.perf_counter() - start
                jax.block_until_ready(fn(arg))
                compiled[sparse_flag] = fn
            times = {False: [], True: []}
            for _ in range(args.repeats):
                for flag, fn in compiled.items():
                    start = time.perf_counter()
                    jax.block_until_ready(fn(arg))
                    times[flag].append(time.perf_counter() - start)
            ns = {flag: min(v) * 1e9 / (CALLS * n) for flag, v in times.items()}
            print(
                f"| {n} | {part} | {ns[False]:.2f} | {ns[True]:.2f} | "
                f"{ns[True] / ns[False]:.2f} | {compile_s[False]:.2f} / {compile_s[True]:.2f} |"
            )


if __name__ == "__main__":
    main()
