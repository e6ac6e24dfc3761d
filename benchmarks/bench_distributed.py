"""Distributed resampling and scaling on forced host CPU devices.

1. **Estimator variance**: the bootstrap filter's log-evidence with global systematic
   resampling against island resampling (``pk.resampling.islands``, ``P`` islands of
   ``N / P`` particles), ``N = 4096``, ``T = 100``, linear Gaussian model, over ``--seeds``
   seeds on one device: the sd of ``log Z`` and its bias against the Kalman value.
   Island rows with ``exchange = k`` pass ``k`` particles per island on to the next island
   at every step (local exchange).
2. **Communication**: collectives in the compiled resampling step with the particle axis
   sharded over 8 devices (counted in the HLO), global against islands.
3. **Strong and weak scaling** of the sharded bootstrap filter (``T = 100``) on 1, 2, 4 and
   8 forced host devices: fixed ``N = 2^18`` (strong) and ``N = 2^15`` per device (weak),
   global and island resampling. Honest label: the forced devices share this machine's CPU
   cores (2 here), so these tables measure the overhead of sharding and communication, not
   a speed-up; on real devices (GPUs, hosts) the same programs run unchanged.

Run: ``python benchmarks/bench_distributed.py`` (a few minutes). Numbers in
``benchmarks/README.md``.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import numpyro.distributions as dist

import particlekit as pk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from exact import kalman, scalar_model  # noqa: E402

SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)

SCALING = textwrap.dedent(
    """
    import json, re, sys, time
    import jax, numpyro.distributions as dist
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk
    from particlekit.run import constrain_particles

    d = jax.device_count()
    mesh = jax.make_mesh((d,), ("p",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("p"))
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5))
    _, ys = ssm.simulate(jax.random.key(0), 100)
    out = {}
    for label, n in (("strong", 2**18), ("weak", d * 2**15)):
        for scheme_name in ("global", "islands"):
            scheme = "systematic" if scheme_name == "global" else pk.resampling.islands(
                "systematic", d)
            def call(k):
                return pk.filters.bootstrap(k, ssm, ys, num_particles=n, resampling=scheme,
                                            sharding=sharding, keep_history=False,
                                            progress_bar=False).log_evidence
            t0 = time.perf_counter(); jax.block_until_ready(call(jax.random.key(0)))
            first = time.perf_counter() - t0
            times = []
            for s in range(3):
                t0 = time.perf_counter(); jax.block_until_ready(call(jax.random.key(s + 1)))
                times.append(time.perf_counter() - t0)
            out[f"{label}/{scheme_name}"] = {"n": n, "s": sorted(times)[1],
                                             "compile": first - sorted(times)[1]}
    if d == 8:
        n = 8 * 4096
        state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), n)
        state = state._replace(log_weights=jax.random.normal(jax.random.key(1), (n,)))
        for scheme_name in ("global", "islands"):
            scheme = "systematic" if scheme_name == "global" else pk.resampling.islands(
                "systematic", 8)
            kernel = pk.resample(scheme, ess_threshold=1.0)
            step = jax.jit(lambda k, s: constrain_particles(kernel(k, s)[0], sharding))
            text = step.lower(jax.random.key(2), state).compile().as_text()
            out[f"hlo/{scheme_name}"] = {
                op: len(re.findall(rf"\\b{op}(?:-start)?\\(", text))
                for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")}
    print("RESULT" + json.dumps(out))
    """
)


def on_devices(count: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCALING], env=env, capture_output=True, text=True, timeout=3000
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def variance_table(seeds: int) -> None:
    _, ys = SSM.simulate(jax.random.key(0), 100)
    exact = kalman(scalar_model(0.9, 1.0, 0.5), np.asarray(ys))[0]
    print("\n**Estimator variance** (N = 4096, T = 100, systematic inside each island):\n")
    print("| resampling | islands x size | sd of log Z | mean log Z - exact |")
    print("|---|---|---:|---:|")
    configs = [(1, 0), (8, 0), (8, 64), (32, 0), (32, 16), (128, 0), (128, 4), (512, 0)]
    for num_islands, exchange in configs:
        scheme = "systematic"
        if num_islands > 1:
            scheme = pk.resampling.islands("systematic", num_islands, exchange=exchange)
        log_z = np.array([
            float(pk.filters.bootstrap(
                jax.random.key(s), SSM, ys, num_particles=4096, resampling=scheme,
                keep_history=False, progress_bar=False).log_evidence)
            for s in range(seeds)
        ])  # fmt: skip
        name = "global" if num_islands == 1 else "islands"
        name += f", exchange {exchange}" if exchange else ""
        print(
            f"| {name} | {num_islands} x {4096 // num_islands} | {log_z.std(ddof=1):.3f} | "
            f"{log_z.mean() - exact:+.3f} |"
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4, 8])
    args = parser.parse_args()
    variance_table(args.seeds)

    results = {d: on_devices(d) for d in args.devices}
    if 8 in results:
        print("\n**Collectives in one compiled resampling step** (8 devices, N = 32768):\n")
        print("| resampling | all-gather | all-reduce | all-to-all | collective-permute |")
        print("|---|---:|---:|---:|---:|")
        for name in ("global", "islands"):
            c = results[8][f"hlo/{name}"]
            print(
                f"| {name} | {c['all-gather']} | {c['all-reduce']} | {c['all-to-all']} | "
                f"{c['collective-permute']} |"
            )
    for label, title in (("strong", "N = 2^18 in all"), ("weak", "N = 2^15 per device")):
        print(f"\n**{label.capitalize()} scaling** ({title}, T = 100, s per run; compile):\n")
        print("| devices | N | global | islands | global compile | islands compile |")
        print("|---:|---:|---:|---:|---:|---:|")
        for d, res in results.items():
            g, i = res[f"{label}/global"], res[f"{label}/islands"]
            print(
                f"| {d} | {g['n']} | {g['s']:.3f} | {i['s']:.3f} | {g['compile']:.1f} | "
                f"{i['compile']:.1f} |"
            )


if __name__ == "__main__":
    main()
