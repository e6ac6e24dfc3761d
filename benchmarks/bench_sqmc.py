"""SQMC vs the bootstrap filter: variance of ``log Z_hat`` and time per run.

Scalar linear Gaussian model (``x_t = 0.9 x_{t-1} + N(0, 1)``, ``y_t = x_t + N(0, 0.5^2)``,
``x_0 ~ N(0, 1)``), ``T = 100`` simulated observations, ``N`` in ``2^8 .. 2^14``; with
``--dim 2`` a 2-D linear Gaussian model instead (``A = [[0.8, 0.2], [0, 0.7]]``, state noise
sd ``(0.6, 0.5)``, both coordinates observed with sd 0.5: the Hilbert-curve path):

* ``sqmc``: ``pk.filters.sqmc`` (scrambled Sobol, resampling at every step);
* ``bootstrap``: ``pk.filters.bootstrap`` with its defaults (systematic resampling when
  ``ESS < N / 2``).

For each ``N`` both run over ``--seeds`` keys in one ``jax.vmap`` (``keep_history=False``)
to measure ``Var(log Z_hat)`` (and the bias of its mean against the exact Kalman value);
the time per run is the median over ``--repeats`` calls of a single jitted run after a
warm-up call, and its compile time that of ``jax.jit(...).lower(key).compile()``. The
table gives the variance ratio (bootstrap / SQMC) and the work-normalised ratio
``(Var x time)_bootstrap / (Var x time)_SQMC``: above 1, SQMC is the better use of a given
compute budget.

Usage::

    python benchmarks/bench_sqmc.py            # full table (about a minute on 2 cores)
    python benchmarks/bench_sqmc.py --dim 2    # the 2-D model
    python benchmarks/bench_sqmc.py --quick    # smoke run in seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import particlekit as pk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from exact import LinearGaussian, kalman, scalar_model  # noqa: E402

A, Q, R = 0.9, 1.0, 0.5
A2 = np.array([[0.8, 0.2], [0.0, 0.7]])
Q2 = np.diag([0.6, 0.5]) ** 2
MODELS = {
    1: (
        pk.StateSpaceModel(
            initial=lambda: dist.Normal(0.0, 1.0),
            transition=lambda x_prev, t: dist.Normal(A * x_prev, Q),
            observation=lambda x, t: dist.Normal(x, R),
        ),
        scalar_model(A, Q, R),
    ),
    2: (
        pk.StateSpaceModel(
            initial=lambda: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
            transition=lambda x_prev, t: dist.MultivariateNormal(
                jnp.asarray(A2, jnp.float32) @ x_prev, jnp.asarray(Q2, jnp.float32)
            ),
            observation=lambda x, t: dist.Normal(x, R).to_event(1),
        ),
        LinearGaussian(np.zeros(2), np.eye(2), A2, Q2, np.eye(2), np.eye(2) * R**2),
    ),
}
FILTERS = {"sqmc": pk.filters.sqmc, "bootstrap": pk.filters.bootstrap}


def log_z_over_seeds(name, ssm, n, ys, seeds):
    """``log Z_hat`` for ``seeds`` keys, one vmapped call (float64 NumPy)."""
    fn = FILTERS[name]
    batched = jax.jit(
        jax.vmap(lambda k: fn(k, ssm, ys, num_particles=n, keep_history=False).log_evidence)
    )
    keys = jax.random.split(jax.random.key(1), seeds)
    return np.asarray(batched(keys), np.float64)


def time_per_run(name, ssm, n, ys, repeats):
    """(compile seconds, median wall seconds of one run after a warm-up call) of a single
    jitted run; compilation timed through ``lower().compile()``."""
    fn = FILTERS[name]
    start = time.perf_counter()
    single = (
        jax.jit(lambda k: fn(k, ssm, ys, num_particles=n, keep_history=False).log_evidence)
        .lower(jax.random.key(0))
        .compile()
    )
    compile_s = time.perf_counter() - start
    single(jax.random.key(0)).block_until_ready()
    times = []
    for i in range(repeats):
        key = jax.random.key(100 + i)
        start = time.perf_counter()
        single(key).block_until_ready()
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dim", type=int, choices=[1, 2], default=1, help="state dimension")
    parser.add_argument("--quick", action="store_true", help="N = 2^8, 2^10; 10 seeds")
    args = parser.parse_args(argv)
    log2ns = [8, 10] if args.quick else [8, 10, 12, 14]
    seeds = 10 if args.quick else args.seeds

    ssm, exact_model = MODELS[args.dim]
    _, ys = ssm.simulate(jax.random.key(0), args.steps)
    ys = jnp.asarray(ys)
    exact = kalman(exact_model, np.asarray(ys, np.float64))[0]
    print(
        f"# {args.dim}-D linear Gaussian, T = {args.steps}, {seeds} seeds, exact log Z = "
        f"{exact:.3f}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__} on {jax.default_backend()}"
    )
    print()
    print(
        "| N | Var log Z SQMC | Var log Z bootstrap | variance ratio (boot / SQMC) "
        "| mean bias SQMC | mean bias boot | run ms SQMC | run ms boot "
        "| work-normalised ratio (Var x time) | compile s SQMC | compile s boot |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for log2n in log2ns:
        n = 2**log2n
        log_z = {name: log_z_over_seeds(name, ssm, n, ys, seeds) for name in FILTERS}
        timed = {name: time_per_run(name, ssm, n, ys, args.repeats) for name in FILTERS}
        compile_s = {name: timed[name][0] for name in FILTERS}
        secs = {name: timed[name][1] for name in FILTERS}
        var = {name: log_z[name].var(ddof=1) for name in FILTERS}
        bias = {name: log_z[name].mean() - exact for name in FILTERS}
        ratio = var["bootstrap"] / var["sqmc"]
        work = ratio * secs["bootstrap"] / secs["sqmc"]
        print(
            f"| 2^{log2n} | {var['sqmc']:.2e} | {var['bootstrap']:.2e} | {ratio:.1f} "
            f"| {bias['sqmc']:+.4f} | {bias['bootstrap']:+.4f} "
            f"| {1e3 * secs['sqmc']:.2f} | {1e3 * secs['bootstrap']:.2f} | {work:.1f} "
            f"| {compile_s['sqmc']:.2f} | {compile_s['bootstrap']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
