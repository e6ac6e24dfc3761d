"""Compile time of ``pk.infer.SMC``: the first call of ``run`` against later calls.

Each configuration runs in a fresh subprocess (no JAX cache shared), for three models with
``d <= 31``: eight schools (centred, d = 10), logistic regression on scikit-learn's
breast-cancer data (d = 31) and a 2-parameter normal model. Reported per row:

- ``first``: wall and CPU seconds of the first ``run`` (model trace, JAX tracing, XLA
  compilation and one run);
- ``later``: median wall seconds of three later runs on new keys;
- ``compile ~ first - later``;
- ``recompiles``: executables in the sampler's cache after the later runs (must be 1: new
  data of the same shape reuses the executable);

and with JAX's persistent compilation cache (a second process with the same cache
directory). (Lowering XLA's CPU optimisation level was tried: level 1 saved only ~5 % of the
compile time of the whole sampler, level 0 halved it but made runs 4.5x slower.)

    python3 benchmarks/bench_static_compile.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import jax, jax.numpy as jnp, numpy as np
    import numpyro, numpyro.distributions as dist
    cache = os.environ.get("PK_BENCH_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import particlekit as pk

    problem = sys.argv[1]

    if problem == "eight_schools":
        y = jnp.array([28.0, 8, -3, 7, -1, 1, 18, 12])
        sigma = jnp.array([15.0, 10, 16, 11, 9, 11, 10, 18])

        def model(y, sigma):
            mu = numpyro.sample("mu", dist.Normal(0, 5))
            tau = numpyro.sample("tau", dist.HalfCauchy(5))
            with numpyro.plate("J", 8):
                theta = numpyro.sample("theta", dist.Normal(mu, tau))
                numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)

        args = (y, sigma)
    elif problem == "logistic":
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        x = (data.data - data.data.mean(0)) / data.data.std(0)
        x, yb = jnp.asarray(x, jnp.float32), jnp.asarray(data.target, jnp.float32)

        def model(x, y):
            b = numpyro.sample("b", dist.Normal(0.0, 1.0))
            w = numpyro.sample("w", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
            with numpyro.plate("n", x.shape[0]):
                numpyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)

        args = (x, yb)
    else:
        def model(y):
            mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
            s = numpyro.sample("sigma", dist.HalfNormal(1.0))
            numpyro.sample("y", dist.Normal(mu, s), obs=y)

        args = (jnp.array([0.3, -0.2, 1.1, 0.8]),)

    smc = pk.infer.SMC(model, progress_bar=False)
    w0, c0 = time.perf_counter(), time.process_time()
    smc.run(jax.random.key(0), *args)
    first_wall, first_cpu = time.perf_counter() - w0, time.process_time() - c0
    later = []
    for seed in (1, 2, 3):
        w0 = time.perf_counter()
        smc.run(jax.random.key(seed), *args)
        later.append(time.perf_counter() - w0)
    (_, sample, _), = smc._compiled.values()
    print("RESULT" + json.dumps({
        "first_wall": first_wall, "first_cpu": first_cpu,
        "later": float(np.median(later)), "executables": sample._cache_size(),
    }))
    """
)


def run_child(problem: str, cache: str | None = None) -> dict:
    env = None
    if cache:
        import os

        env = dict(os.environ, PK_BENCH_CACHE=cache)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, problem],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if not lines:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(lines[-1][len("RESULT") :])


def main() -> None:
    print(
        "| problem | d | first call wall (s) | first call CPU (s) | later call (s) |"
        " compile ~ first - later (s) | executables after 4 runs |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for problem, dim in (("normal", 2), ("eight_schools", 10), ("logistic", 31)):
        res = run_child(problem)
        print(
            f"| {problem} | {dim} | {res['first_wall']:.2f} | {res['first_cpu']:.2f} | "
            f"{res['later']:.3f} | {res['first_wall'] - res['later']:.2f} | "
            f"{res['executables']} |"
        )
    print()
    print("JAX persistent compilation cache (eight schools): two processes, one cache directory")
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child("eight_schools", cache)
        warm = run_child("eight_schools", cache)
    print("| process | first call wall (s) | first call CPU (s) |")
    print("| --- | --- | --- |")
    print(f"| first (cache empty) | {cold['first_wall']:.2f} | {cold['first_cpu']:.2f} |")
    print(f"| second (cache warm) | {warm['first_wall']:.2f} | {warm['first_cpu']:.2f} |")


if __name__ == "__main__":
    main()
