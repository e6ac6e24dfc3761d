"""Few backward draws: accept–reject against exact rows, side by side in one process.

``backward.backward_indices`` makes fewer than ``EXACT_DRAWS_BELOW`` draws exactly even
with a bound, since accept–reject's set-up (the flattened proposal's guide table over the
``N`` particles, a stage's loop) costs about as much as that many rows of densities. This
script times backward simulation of ``M`` paths (``smoothing.backward_trajectories``,
``T`` steps of a stored filter history with multinomial resampling at every step, the
1-D linear Gaussian model of ``bench_smoothing.py``) both ways: accept–reject with the
threshold set to 0 while it is traced, and exact rows (``method="exact"``). Each variant
is a fresh trace; calls are timed round-robin, minimum of ``--repeats``.

Usage::

    python benchmarks/bench_backward_few_draws.py
    python benchmarks/bench_backward_few_draws.py --sizes 1024 --paths 1,32 --steps 50
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(__file__))
from bench_smoothing import SSM  # noqa: E402

import particlekit as pk  # noqa: E402
from particlekit import backward  # noqa: E402


def timed_variants(n, paths, num_steps):
    """``{(M, way): (fn, args)}``, each compiled (a fresh trace) before it is returned."""
    _, ys = SSM.simulate(jax.random.key(7), num_steps)
    res = pk.filters.bootstrap(
        jax.random.key(1), SSM, ys, num_particles=n, resampling="multinomial",
        ess_threshold=1.0, progress_bar=False,
    )  # fmt: skip
    args = (res.particles, res.log_weights)
    variants = {}
    threshold = backward.EXACT_DRAWS_BELOW
    ways = (("accept-reject", "rejection", 0), ("exact", "exact", threshold))
    for m in paths:
        for way, method, below in ways:
            backward.EXACT_DRAWS_BELOW = below
            fn = jax.jit(
                lambda k, p, lw, method=method, m=m: pk.smoothing.backward_trajectories(
                    k, SSM, p, lw, m, method=method, log_transition_bound=None, max_trials=32
                )
            )
            jax.block_until_ready(fn(jax.random.key(0), *args))  # traced with `below`
            variants[(m, way)] = (fn, args)
    backward.EXACT_DRAWS_BELOW = threshold
    return variants


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384", help="comma-separated N")
    parser.add_argument("--paths", default="1,16,32,64", help="comma-separated M")
    parser.add_argument("--steps", type=int, default=200, help="T")
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args()
    paths = [int(v) for v in a.paths.split(",")]
    print(f"jax {jax.__version__} ({jax.default_backend()}); T = {a.steps}, minimum of "
          f"{a.repeats} calls; EXACT_DRAWS_BELOW = {backward.EXACT_DRAWS_BELOW}")  # fmt: skip
    print("\n| N | M paths | accept-reject ms | exact ms | exact / accept-reject |")
    print("|---:|---:|---:|---:|---:|")
    for n in [int(v) for v in a.sizes.split(",")]:
        variants = timed_variants(n, paths, a.steps)
        times = {key: [] for key in variants}
        for r in range(a.repeats):
            for key, (fn, args) in variants.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(jax.random.key(r + 1), *args))
                times[key].append(time.perf_counter() - t0)
        for m in paths:
            ar, ex = min(times[(m, "accept-reject")]), min(times[(m, "exact")])
            print(f"| {n} | {m} | {ar * 1e3:.1f} | {ex * 1e3:.1f} | {ex / ar:.2f} |", flush=True)


if __name__ == "__main__":
    main()
