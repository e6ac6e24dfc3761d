"""Smoothing benchmarks: PaRIS cost vs N, FFBS vs `particles`, PPG vs PaRIS at equal compute.

Model: x_t = 0.9 x_{t-1} + N(0, 1), y_t = x_t + N(0, 0.5^2), x_0 ~ N(0, 1).

1. PaRIS (K = 2) wall time per run for N = 1e2 .. 1e5, accept-reject backward draws
   (linear) vs exact draws (quadratic), compile time separately.
2. FFBS of M = N trajectories from one filter: particlekit exact / rejection vs
   `particles` 0.3 ``hist.backward_sampling(M, linear_cost=False / True)`` (its O(N^2) and
   rejection FFBS). (`particles`' PaRIS collector fails in 0.3: ``'Paris' object has no
   attribute 'N'``, so it is not compared.)
3. PPG (n particles x k sweeps) vs PaRIS (k n particles): mean squared error of
   E[sum_t x_t^2 | y] against the RTS smoother over seeds, at equal particle budget.
4. Cost per particle-step against the bootstrap filter, side by side in one run (T = 200):
   PaRIS (K = 2, rejection; its default multinomial resampling at every step, where each
   particle's parent is one of its two draws, and the filters' settings, systematic at ESS
   0.5, and multinomial at 0.5, which make every draw or most), one PPG sweep (K = 2,
   rejection), FFBS of M = N trajectories by rejection (the backward pass only, on a
   stored filter); time per particle-step, the ratio to the filter's, and compile time.
5. PaRIS's resampling settings (multinomial / systematic, ESS threshold 1.0 / 0.5): bias,
   standard deviation and MSE of E[sum_t x_t^2 | y] against the RTS smoother over 48
   seeds, and the time per run (T = 200).

Usage: ``python benchmarks/bench_smoothing.py [--quick]``.
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from exact import rts, scalar_model  # noqa: E402

import particlekit as pk  # noqa: E402

A, Q, R = 0.9, 1.0, 0.5
SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(A * x_prev, Q),
    observation=lambda x, t: dist.Normal(x, R),
)


def timeit(fn, repeats):
    """(first-call time, median of ``repeats`` later calls) in seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(0))
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(i + 1))
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def bench_paris(ys, sizes, exact_max, repeats):
    print("\n## 1. PaRIS (K=2) wall time per run, T =", ys.shape[0])
    print(f"{'N':>8} {'rejection s':>12} {'compile s':>10} {'trials/draw':>12} "
          f"{'exact frac':>11} {'exact s':>10} {'ratio':>7}")  # fmt: skip
    h = lambda xp, x, t: x  # noqa: E731
    rows = []
    for n in sizes:
        out = {}
        for method in ("rejection", "exact"):
            if method == "exact" and n > exact_max:
                out[method] = (np.nan, np.nan, None)
                continue

            @jax.jit
            def run(key, method=method, n=n):
                return pk.smoothing.paris(key, SSM, ys, additive_fn=h, num_particles=n,
                                          method=method)  # fmt: skip

            res = {}

            def call(i, run=run, res=res):
                r = run(jax.random.key(i))
                res["r"] = r
                return r.estimate

            first, med = timeit(call, repeats)
            out[method] = (med, first - med, res["r"])
        rej, ex = out["rejection"], out["exact"]
        trials = float(np.mean(rej[2].mean_trials[1:]))
        frac = float(np.mean(rej[2].num_exact[1:])) / (2 * n)
        ratio = ex[0] / rej[0] if np.isfinite(ex[0]) else np.nan
        print(f"{n:>8} {rej[0]:>12.4f} {rej[1]:>10.2f} {trials:>12.2f} {frac:>11.4f} "
              f"{ex[0]:>10.4f} {ratio:>7.2f}")  # fmt: skip
        rows.append((n, rej[0], ex[0]))
    ns = np.array([r[0] for r in rows], float)
    ts = np.array([r[1] for r in rows], float)
    if len(ns) >= 2:
        slope = np.polyfit(np.log(ns[1:]), np.log(ts[1:]), 1)[0] if len(ns) > 2 else np.nan
        print(f"log-log slope of rejection time vs N (N >= {int(ns[1])}): {slope:.2f} (1 = linear)")


def bench_ffbs(ys, sizes, particles_max, repeats):
    print("\n## 2. FFBS, M = N trajectories, T =", ys.shape[0], "(backward pass only)")
    try:
        import particles
        from particles import state_space_models as ssms
    except ImportError:  # pragma: no cover
        particles = None
    print(f"{'N':>7} {'pk exact s':>11} {'pk rej s':>9} {'particles ON2 s':>16} "
          f"{'particles rej s':>16} {'ON2 ratio':>10} {'rej ratio':>10} "
          f"{'pk compile exact / rej s':>25}")  # fmt: skip
    if particles is not None:

        class AR(ssms.StateSpaceModel):
            default_params = {"a": A, "q": Q, "r": R}

            def PX0(self):
                return particles.distributions.Normal(0.0, 1.0)

            def PX(self, t, xp):
                return particles.distributions.Normal(self.a * xp, self.q)

            def PY(self, t, xp, x):
                return particles.distributions.Normal(x, self.r)

            def upper_bound_log_pt(self, t):
                return -np.log(self.q * np.sqrt(2 * np.pi))

        ys_np = [np.array(v) for v in np.asarray(ys, np.float64)]
    for n in sizes:
        res = pk.filters.bootstrap(jax.random.key(0), SSM, ys, num_particles=n)
        pk_times, pk_compile = {}, {}
        for method in ("exact", "rejection"):
            if method == "exact" and n > particles_max:
                pk_times[method] = pk_compile[method] = np.nan
                continue
            fn = lambda i, method=method, n=n, res=res: pk.smoothing.ffbs(  # noqa: E731
                jax.random.key(i), SSM, res, n, method=method
            )
            first, pk_times[method] = timeit(fn, repeats)
            pk_compile[method] = max(first - pk_times[method], 0.0)  # the first call's extra
        p_times = {False: np.nan, True: np.nan}
        if particles is not None:
            fk = ssms.Bootstrap(ssm=AR(), data=ys_np)
            alg = particles.SMC(fk=fk, N=n, store_history=True)
            alg.run()
            for lin in (False, True):
                if not lin and n > particles_max:
                    continue
                reps = []
                for _ in range(max(1, repeats // 2)):
                    t0 = time.perf_counter()
                    alg.hist.backward_sampling(n, linear_cost=lin)
                    reps.append(time.perf_counter() - t0)
                p_times[lin] = float(np.median(reps))
        print(f"{n:>7} {pk_times['exact']:>11.4f} {pk_times['rejection']:>9.4f} "
              f"{p_times[False]:>16.4f} {p_times[True]:>16.4f} "
              f"{p_times[False] / pk_times['exact']:>10.1f} "
              f"{p_times[True] / pk_times['rejection']:>10.1f} "
              f"{pk_compile['exact']:>12.2f} / {pk_compile['rejection']:>10.2f}")  # fmt: skip


def bench_ppg(ys, n, sweeps, num_seeds):
    print(f"\n## 3. PPG ({n} particles x {sweeps} sweeps, burn-in {sweeps // 5}) vs PaRIS "
          f"({n * sweeps} particles), E[sum x_t^2 | y], {num_seeds} seeds")  # fmt: skip
    sm, sP, _ = rts(scalar_model(A, Q, R, 1.0), np.asarray(ys))
    exact = float(np.sum(sP[:, 0, 0] + sm[:, 0] ** 2))
    h = lambda xp, x, t: x**2  # noqa: E731
    h0 = lambda x: x**2  # noqa: E731
    keys = jax.random.split(jax.random.key(1), num_seeds)
    paris = jax.jit(
        jax.vmap(
            lambda k: (
                pk.smoothing.paris(
                    k, SSM, ys, additive_fn=h, initial_fn=h0, num_particles=n * sweeps
                ).estimate
            )
        )
    )
    ppg = jax.jit(jax.vmap(lambda k: pk.pgibbs.ppg(
        k, SSM, ys, additive_fn=h, initial_fn=h0, num_particles=n, num_iterations=sweeps,
        burn_in=sweeps // 5).estimate))  # fmt: skip
    paris_small = jax.jit(
        jax.vmap(
            lambda k: (
                pk.smoothing.paris(
                    k, SSM, ys, additive_fn=h, initial_fn=h0, num_particles=n
                ).estimate
            )
        )
    )
    print(f"{'estimator':>26} {'bias':>8} {'std':>8} {'MSE':>9} {'time s':>8} {'compile s':>10}")
    for name, fn in ((f"PaRIS N={n}", paris_small), (f"PaRIS N={n * sweeps}", paris),
                     (f"PPG N={n} x {sweeps}", ppg)):  # fmt: skip
        t0 = time.perf_counter()
        jax.block_until_ready(fn(keys))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        est = np.asarray(jax.block_until_ready(fn(keys)), np.float64)
        elapsed = time.perf_counter() - t0
        compile_s = max(first - elapsed, 0.0)  # the first call's extra: compilation
        bias, std = est.mean() - exact, est.std()
        print(f"{name:>26} {bias:>8.3f} {std:>8.3f} {bias**2 + std**2:>9.4f} {elapsed:>8.2f} "
              f"{compile_s:>10.2f}")  # fmt: skip


def smoother_calls(n, ys, stored, methods=("rejection", "mcmc")):
    """Section 4's calls at ``N = n``, not jitted, as ``{name: fn(key)}``: the bootstrap
    filter, PaRIS (full result) and one PPG sweep with K = 2 for each backward ``method``,
    and FFBS of ``M = N`` trajectories by rejection from the stored filter ``stored``
    (``bench_backward_revisions.py`` compiles the same calls)."""
    h = lambda xp, x, t: x  # noqa: E731

    def tag(method):
        return "" if method == "rejection" else f" {method}"

    calls = {
        "filter": lambda k: (
            pk.filters.bootstrap(
                k, SSM, ys, num_particles=n, keep_history=False, progress_bar=False
            ).log_evidence
        )
    }
    for method in methods:
        calls[f"PaRIS K=2{tag(method)}"] = lambda k, method=method: pk.smoothing.paris(
            k, SSM, ys, additive_fn=h, num_particles=n, method=method, progress_bar=False
        )
    # PaRIS's default is multinomial resampling at every step (each particle's parent is
    # one of its two draws: smoothing.ancestors_are_backward_draws); the filters' settings
    # (systematic at ESS 0.5) make every draw, and so does an adaptive multinomial step
    # that kept its particles
    for label, scheme, threshold in (
        (" systematic, ess 0.5", "systematic", 0.5),
        (" multinomial, ess 0.5", "multinomial", 0.5),
    ):
        calls[f"PaRIS K=2{label}"] = lambda k, scheme=scheme, threshold=threshold: (
            pk.smoothing.paris(
                k, SSM, ys, additive_fn=h, num_particles=n, resampling=scheme,
                ess_threshold=threshold, progress_bar=False,
            )
        )  # fmt: skip
    # a sweep returns its estimate *and* the next reference (backward simulation of one
    # path): returning the estimate alone let XLA drop the reference's draws (until
    # 2026-12-07 the PPG rows did not count them)
    for method in methods:
        name = "PPG K=2 (one sweep)" if method == "rejection" else f"PPG K=2{tag(method)}"
        calls[name] = lambda k, method=method: (
            lambda res: (res.estimate, res.reference)
        )(
            pk.pgibbs.ppg(
                k, SSM, ys, additive_fn=h, num_particles=n, num_iterations=1, burn_in=0,
                method=method, progress_bar=False,
            )
        )  # fmt: skip
    calls["FFBS M=N (backward)"] = lambda k: pk.smoothing.ffbs(
        k, SSM, stored, n, method="rejection", progress_bar=False
    )
    return calls


def bench_ratio(sizes, num_steps, repeats):
    print(f"\n## 4. Cost per particle-step against the bootstrap filter, T = {num_steps}")
    print("| N | method | ns / particle-step | x filter | compile s | proposals / draw "
          "(mcmc: acceptance) |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|")
    _, ys = SSM.simulate(jax.random.key(7), num_steps)
    for n in sizes:
        stored = pk.filters.bootstrap(
            jax.random.key(3), SSM, ys, num_particles=n, keep_history=True, progress_bar=False
        )
        jitted = {name: jax.jit(fn) for name, fn in smoother_calls(n, ys, stored).items()}
        keyed = {name: (lambda i, f=f: f(jax.random.key(i))) for name, f in jitted.items()}
        times, compiles, trials = {}, {}, {}
        for name, fn in keyed.items():  # warm-up (compile) first, then interleaved timing
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(0))
            compiles[name] = time.perf_counter() - t0
            if name.startswith("PaRIS"):
                trials[name] = f"{float(np.mean(out.mean_trials[1:])):.2f}"
            times[name] = []
        for r in range(repeats):
            for name, fn in keyed.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(r + 1))
                times[name].append(time.perf_counter() - t0)
        per = {name: min(v) * 1e9 / (n * num_steps) for name, v in times.items()}
        for name in keyed:
            compile_s = max(compiles[name] - min(times[name]), 0.0)
            extra = trials.get(name, "-")
            print(f"| {n} | {name} | {per[name]:.1f} | {per[name] / per['filter']:.1f} | "
                  f"{compile_s:.2f} | {extra} |", flush=True)  # fmt: skip


def bench_paris_resampling(sizes, num_steps, num_seeds):
    """Section 5: PaRIS's estimate of ``E[sum_t x_t^2 | y]`` against the RTS smoother over
    ``num_seeds`` seeds, and its time per run, for the filter's resampling settings."""
    print(f"\n## 5. PaRIS (K = 2) resampling settings: error and time, T = {num_steps}, "
          f"{num_seeds} seeds, E[sum x_t^2 | y]")  # fmt: skip
    print("| N | resampling | ESS threshold | bias | s.d. | MSE | ms / run | MSE x time |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    _, ys = SSM.simulate(jax.random.key(7), num_steps)
    sm, sP, _ = rts(scalar_model(A, Q, R, 1.0), np.asarray(ys))
    exact = float(np.sum(sP[:, 0, 0] + sm[:, 0] ** 2))
    h = lambda xp, x, t: x**2  # noqa: E731
    h0 = lambda x: x**2  # noqa: E731
    settings = [("multinomial", 1.0), ("multinomial", 0.5), ("systematic", 1.0),
                ("systematic", 0.5)]  # fmt: skip
    for n in sizes:
        for scheme, threshold in settings:
            run = jax.jit(
                lambda k, scheme=scheme, threshold=threshold: pk.smoothing.paris(
                    k, SSM, ys, additive_fn=h, initial_fn=h0, num_particles=n,
                    resampling=scheme, ess_threshold=threshold, progress_bar=False,
                ).estimate
            )  # fmt: skip
            jax.block_until_ready(run(jax.random.key(0)))
            t0 = time.perf_counter()
            est = np.array([float(run(k)) for k in jax.random.split(jax.random.key(1), num_seeds)])
            per_run = (time.perf_counter() - t0) / num_seeds * 1e3
            mse = float(np.mean((est - exact) ** 2))
            print(f"| {n} | {scheme} | {threshold} | {est.mean() - exact:.3f} | {est.std():.3f} "
                  f"| {mse:.3f} | {per_run:.1f} | {mse * per_run:.0f} |", flush=True)  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--ratio-only", action="store_true", help="section 4 only")
    parser.add_argument("--resampling-only", action="store_true", help="section 5 only")
    parser.add_argument("--sizes", default=None, help="section 4's N, comma-separated "
                        "(default 1024,4096,16384)")  # fmt: skip
    args = parser.parse_args()
    device = f"{jax.default_backend()}: {jax.devices()[0].device_kind}"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"jax {jax.__version__} ({device})")  # fmt: skip
    ratio_sizes = [1024] if args.quick else [1024, 4096, 16384]
    if args.sizes:
        ratio_sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.ratio_only:
        bench_ratio(ratio_sizes, 50 if args.quick else 200, 2 if args.quick else 5)
        return
    if args.resampling_only:
        bench_paris_resampling([1024, 4096], 200, 48)
        return
    num_steps = 20 if args.quick else 50
    _, ys = SSM.simulate(jax.random.key(0), num_steps)
    if args.quick:
        bench_paris(ys, [100, 1000], exact_max=1000, repeats=2)
        bench_ffbs(ys, [100, 300], particles_max=300, repeats=2)
        bench_ppg(ys, 16, 5, 16)
        bench_ratio([1024], 50, 2)
        bench_paris_resampling([256], 50, 8)
    else:
        bench_paris(ys, [100, 1000, 10_000, 100_000], exact_max=3000, repeats=3)
        bench_ffbs(ys, [100, 1000, 10_000], particles_max=1000, repeats=3)
        bench_ppg(ys, 32, 32, 64)
        bench_ratio(ratio_sizes, 200, 5)
        bench_paris_resampling([1024, 4096], 200, 48)


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
