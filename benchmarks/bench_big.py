"""Big populations on one device: the bootstrap filter and tempered SMC up to N = 10^7.

Each configuration runs in a fresh process (so its peak resident memory is its own) and
reports the wall time of a second call (after the compiling first call), nanoseconds per
particle-step, the compile time and the process's peak memory (``ru_maxrss``; on a GPU
also the device's ``peak_bytes_in_use``):

* filter: ``pk.filters.bootstrap`` on ``x_t = 0.9 x_{t-1} + N(0, 1)``, ``y_t = x_t +
  N(0, 0.5^2)``, ``T = 20``, history off (past ``pk.filters.HISTORY_LIMIT_BYTES`` it is off
  by default anyway), with and without ``batch_size``;
* tempered SMC: ``pk.infer.SMC`` (default HMC moves, one chain) on a 2-D conjugate normal
  model; particle-steps = particles x (MCMC steps + 1) summed over stages.

Run: ``python benchmarks/bench_big.py`` (about 15 minutes on 2 CPU cores; ``--max 1e6`` for
a quick run). Numbers in ``benchmarks/README.md``.
"""

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    import particlekit as pk

    kind, n, batch = sys.argv[1], int(float(sys.argv[2])), sys.argv[3]
    batch = None if batch == "none" else int(batch)
    if kind == "filter":
        ssm = pk.StateSpaceModel(
            initial=lambda: dist.Normal(0.0, 1.0),
            transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
            observation=lambda x, t: dist.Normal(x, 0.5))
        _, ys = ssm.simulate(jax.random.key(0), 20)

        def call(seed):
            res = pk.filters.bootstrap(jax.random.key(seed), ssm, ys, num_particles=n,
                                       keep_history=False, batch_size=batch,
                                       progress_bar=False)
            return jax.block_until_ready(res.log_evidence), 20
    else:
        def model(y):
            mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

        smc = pk.infer.SMC(model, num_particles=n, num_chains=1, progress_bar=False)

        def call(seed):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # one chain: no R-hat
                smc.run(jax.random.key(seed), jnp.array([0.5, -0.3]))
            d = smc.diagnostics
            s = int(d.num_stages[0])
            steps = int((d.stages.num_mcmc_steps[0, :s] + 1).sum())
            return smc.log_evidence, steps

    t0 = time.perf_counter(); call(0); first = time.perf_counter() - t0
    t0 = time.perf_counter(); value, steps = call(1); second = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = jax.devices()[0].memory_stats() or {}
    out = {"s": second, "compile": first - second, "ns": 1e9 * second / (n * steps),
           "peak_gib": peak / 2**30, "device_peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30,
           "value": float(value), "device": str(jax.devices()[0].device_kind)}
    print("RESULT" + json.dumps(out))
    """
)


def run(kind: str, n: float, batch) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(n), str(batch)],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1][:120]}
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max", type=float, default=1e7)
    args = parser.parse_args()
    sizes = [n for n in (1e5, 1e6, 1e7) if n <= args.max]
    configs = [("filter", n, "none") for n in sizes]
    configs += [("filter", n, 2**16) for n in sizes if n >= 1e6]
    configs += [("smc", n, "none") for n in sizes]
    print("| recipe | N | batch_size | s per run | ns / particle-step | compile s | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, n, batch in configs:
        r = run(kind, n, batch)
        if "error" in r:
            print(f"| {kind} | {n:.0e} | {batch} | failed: {r['error']} | | | |")
            continue
        peak = max(r["peak_gib"], r["device_peak_gib"])
        print(
            f"| {kind} | {n:.0e} | {batch} | {r['s']:.2f} | {r['ns']:.0f} | "
            f"{r['compile']:.1f} | {peak:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
