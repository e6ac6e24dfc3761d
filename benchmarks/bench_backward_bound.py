"""How fast could exact accept–reject backward draws be? A lower bound, side by side
with the measured smoothers.

PaRIS, PPG and FFBS draw ancestors from the backward kernel ``Lambda(i, j) ∝ W_{t-1}^j
f(x_t^i | x_{t-1}^j)`` by accept–reject from the flattened proposal
(``particlekit.backward.flattened_proposal``) with an exact ``O(N)`` fallback. For each
draw, the number of proposals is geometric with the draw's acceptance rate ``a_i``
(``sum_j q_j a_j(x_t^i)``, computed here exactly, ``O(N^2)`` per step, on the filter
populations of ``bench_smoothing.py``'s model), and an exact draw costs a row of ``N``
transition densities. Even a scheduler that *knew* every ``a_i`` and spent, per draw,
``min(1 / a_i, E)`` proposals' worth of work (``E`` = an exact row's cost in proposals)
would need ``K E[min(1 / a, E)]`` proposals per target. This script measures, in one
run: the unit costs on this machine (one accept–reject round per proposal, one exact
row per density, the proposal's construction per particle, the bootstrap filter per
particle-step), the oracle's cost from them, and the measured PaRIS (K = 2) and FFBS
(K = 1, M = N, the backward pass only) per particle-step, each as a ratio to the filter.

The bound leaves out everything but proposals, exact rows and the proposal's
construction (no rounds' bookkeeping, no compaction, no additive functional): the real
smoothers cannot beat it with this proposal, whatever their schedule.

Usage::

    python benchmarks/bench_backward_bound.py            # N = 1024, 4096, 16384
    python benchmarks/bench_backward_bound.py --quick    # N = 1024, T = 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

sys.path.insert(0, os.path.dirname(__file__))
from bench_smoothing import SSM  # noqa: E402

import particlekit as pk  # noqa: E402
from particlekit import backward, resampling  # noqa: E402

LOG_BOUND = backward.max_log_density(dist.Normal(0.0, 1.0))  # SSM's transition noise


def best_time(fn, *args, repeats):
    """Minimum wall time of ``repeats`` calls after a warm-up call."""
    return first_and_best_time(fn, *args, repeats=repeats)[1]


def first_and_best_time(fn, *args, repeats):
    """(the warm-up call's wall time, the minimum of ``repeats`` later calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, min(times)


@jax.jit
def acceptance_rates(log_weights_prev, xs_prev, targets):
    """Each target's acceptance rate under the flattened proposal: ``sum_j q_j
    exp(log_accept_j + log f(target | x_j))``, in batches of targets."""
    log_w, _ = resampling.log_normalize(log_weights_prev)
    proposal = backward.flattened_proposal(log_w, LOG_BOUND)
    cdf = proposal.table.cdf
    q = jnp.diff(cdf, prepend=0.0)

    def one(x):
        log_f = backward.log_f_rows(SSM, xs_prev, x, 1)
        return jnp.sum(q * jnp.exp(proposal.log_accept + log_f))

    return jax.lax.map(one, targets, batch_size=256)


LOOP = 50  # iterations per timed call: the unit costs without the call's dispatch


def looped(body):
    """``jit`` of ``LOOP`` iterations of ``body(i, carry)``, each depending on the last."""
    return jax.jit(lambda c: jax.lax.fori_loop(0, LOOP, body, c))


def unit_costs(n, repeats):
    """ns per proposal (rounds of ``2 n`` proposals), per density of an exact row and per
    particle of the proposal's construction, on a population like the filter's, each
    timed over ``LOOP`` iterations inside one compiled loop."""
    xs_prev = 0.45 * jax.random.normal(jax.random.key(1), (n,))
    log_w = jax.random.normal(jax.random.key(2), (n,))
    targets = 0.9 * xs_prev + jax.random.normal(jax.random.key(3), (n,))
    size = 2 * n
    item_x = backward.repeat_each(targets, 2)
    key = jax.random.key(0)

    def build(log_w):
        return backward.flattened_proposal(resampling.log_normalize(log_w)[0], LOG_BOUND)

    proposal = jax.jit(build)(log_w)

    def one_round(r, total):  # backward_indices' round, one proposal per entry
        cand, log_u, log_a = backward.round_proposals(SSM, key, r, proposal, xs_prev, item_x, 1)
        return total + jnp.sum(jnp.where(log_u < log_a, cand, 0))

    def one_build(i, total):
        built = build(log_w + 1e-3 * i.astype(log_w.dtype))
        return total + built.table.first[1] + jnp.sum(built.log_accept > -10.0)

    rows = 32

    def exact_rows(i, total):  # targets moved each iteration: no row is loop-invariant
        idx, _ = backward.backward_indices(
            jax.random.fold_in(key, i), SSM, log_w, xs_prev,
            targets[:rows] + 1e-3 * i.astype(targets.dtype), 1, num_draws=2, exact_chunk=rows,
        )  # fmt: skip
        return total + jnp.sum(idx)

    zero = jnp.zeros((), jnp.int32)
    loop_time = {
        name: best_time(looped(body), zero, repeats=repeats) / LOOP
        for name, body in (("proposal", one_round), ("build", one_build), ("row", exact_rows))
    }
    return {
        "proposal": loop_time["proposal"] * 1e9 / size,
        "density": loop_time["row"] * 1e9 / (rows * n),
        "build": loop_time["build"] * 1e9 / n,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1024, T = 30, 2 repeats")
    parser.add_argument("--sizes", default="1024,4096,16384")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [1024] if args.quick else [int(s) for s in args.sizes.split(",")]
    num_steps = 30 if args.quick else args.steps
    repeats = 2 if args.quick else args.repeats
    _, ys = SSM.simulate(jax.random.key(7), num_steps)
    print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}); T = {num_steps}; "
          f"minimum of {repeats} calls; ns per particle-step unless said")  # fmt: skip
    print("\n| N | filter | proposal (ns / proposal) | exact row (ns / density) | build "
          "| mean 1/a | draws best exact | oracle K=2 | PaRIS bound | PaRIS measured "
          "| oracle K=1 | FFBS bound | FFBS measured "
          "| compile s: filter / PaRIS / FFBS |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    h = lambda xp, x, t: x  # noqa: E731
    for n in sizes:
        stored = pk.filters.bootstrap(
            jax.random.key(3), SSM, ys, num_particles=n, keep_history=True, progress_bar=False
        )
        rates = np.stack([
            np.asarray(acceptance_rates(stored.log_weights[t - 1], stored.particles[t - 1],
                                        stored.particles[t]))
            for t in range(1, num_steps)
        ])  # fmt: skip
        costs = unit_costs(n, repeats)
        exact_in_proposals = n * costs["density"] / costs["proposal"]
        per_draw = np.minimum(1.0 / np.maximum(rates, 1e-30), exact_in_proposals)
        oracle = float(np.mean(per_draw)) * costs["proposal"]  # ns per draw
        calls = {
            "filter": lambda k: pk.filters.bootstrap(
                k, SSM, ys, num_particles=n, keep_history=False, progress_bar=False
            ).log_evidence,
            "paris": lambda k: pk.smoothing.paris(
                k, SSM, ys, additive_fn=h, num_particles=n, method="rejection",
                progress_bar=False,
            ).estimate,
            "ffbs": lambda k: pk.smoothing.ffbs(
                k, SSM, stored, n, method="rejection", progress_bar=False
            ),
        }  # fmt: skip
        per, compile_s = {}, {}
        for name, fn in calls.items():
            first, best = first_and_best_time(jax.jit(fn), jax.random.key(1), repeats=repeats)
            per[name] = best * 1e9 / (n * num_steps)
            compile_s[name] = max(first - best, 0.0)  # the first call's extra: compilation
        filt = per["filter"]
        paris_bound = (filt + costs["build"] + 2 * oracle) / filt
        ffbs_bound = (costs["build"] + oracle) / filt
        print(
            f"| {n} | {filt:.1f} | {costs['proposal']:.2f} | {costs['density']:.2f} "
            f"| {costs['build']:.1f} | {np.mean(1.0 / np.maximum(rates, 1e-30)):.0f} "
            f"| {np.mean(rates < 1.0 / exact_in_proposals):.2%} | {2 * oracle:.0f} "
            f"| {paris_bound:.1f}x | {per['paris'] / filt:.1f}x | {oracle:.0f} "
            f"| {ffbs_bound:.1f}x | {per['ffbs'] / filt:.1f}x "
            f"| {compile_s['filter']:.2f} / {compile_s['paris']:.2f} / {compile_s['ffbs']:.2f} |",
            flush=True,
        )
    print(
        "\noracle: ns per target of K draws at min(1/a, exact row) proposals each; bound: "
        "(filter + build + oracle) / filter for PaRIS, (build + oracle) / filter for FFBS"
    )


if __name__ == "__main__":
    main()
