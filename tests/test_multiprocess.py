"""The particle axis sharded across several processes started with ``jax.distributed`` on
this machine (loopback address, Gloo CPU collectives, one CPU device per process): the
bootstrap filter, tempered SMC and FK steering against exact answers and against the same
runs unsharded in one process; every process must report the same numbers. Bad input:
processes given different data raise the same ``ValueError`` on every process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from exact import kalman, scalar_model

SEEDS = 8

WORKER = textwrap.dedent(
    """
    import json, sys
    pid, num_processes, port, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes,
                               process_id=pid)
    import jax.numpy as jnp, numpy as np
    import numpyro, numpyro.distributions as dist
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import particlekit as pk

    assert jax.process_count() == num_processes and jax.local_device_count() == 1
    mesh = jax.make_mesh((jax.device_count(),), ("p",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("p"))
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    _, ys = ssm.simulate(jax.random.key(0), 30)
    out = {"pid": pid, "ys": np.asarray(ys).tolist()}
    if mode == "disagree":
        try:
            pk.filters.bootstrap(jax.random.key(1), ssm, ys + pid, num_particles=512,
                                 sharding=sharding)
        except ValueError as err:
            out["error"] = str(err)
        print("RESULT" + json.dumps(out), flush=True)
        raise SystemExit(0)

    out["sharded"], out["local"] = [], []
    for seed in range(int(sys.argv[5])):
        key = jax.random.key(100 + seed)
        res = pk.filters.bootstrap(key, ssm, ys, num_particles=512, sharding=sharding)
        out["sharded"].append(float(res.log_evidence))
        out["local"].append(float(pk.filters.bootstrap(key, ssm, ys, num_particles=512)
                                   .log_evidence))
    final = res.final_state.particles
    out["local_rows"] = sorted(s.data.shape[0] for s in final.addressable_shards)
    history = pk.distributed.to_host(res.particles)
    out["history_shape"] = list(history.shape)

    if mode == "all":
        def model(y):
            mu = numpyro.sample("mu", dist.Normal(0.5, 2.0))
            with numpyro.plate("n", y.shape[0]):
                numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

        y = jnp.asarray(np.random.default_rng(0).normal(1.0, 1.0, size=20), jnp.float32)
        out["y"] = np.asarray(y).tolist()
        smc = pk.infer.SMC(model, num_particles=512, kernel="imh", sharding=sharding,
                           num_chains=1)
        out["smc_log_z"], out["smc_mean"] = [], []
        for seed in range(4):
            smc.run(jax.random.key(seed), y)
            out["smc_log_z"].append(float(smc.log_evidence))
            out["smc_mean"].append(float(np.mean(smc.get_samples()["mu"])))

        mixture = pk.diffusion.gaussian_mixture(
            weights=jnp.array([0.3, 0.7]), means=jnp.array([[-2.0], [2.0]]),
            stds=jnp.array([0.5, 0.5]))
        out["fk_log_z"] = []
        for seed in range(4):
            res = pk.diffusion.fk_steering(
                jax.random.key(seed), mixture, lambda x: x[0], num_particles=256, lmbda=1.0,
                potential="difference", sharding=sharding)
            out["fk_log_z"].append(float(res.log_evidence))
    print("RESULT" + json.dumps(out), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(num_processes: int, mode: str, *args) -> list[dict]:
    """Start ``num_processes`` copies of the worker (one per process id) and return each
    one's ``RESULT`` dict, in process order."""
    env = dict(os.environ)
    # each process has its own CPU device; the compile flags of conftest.py are kept
    env["XLA_FLAGS"] = " ".join(
        flag for flag in env.get("XLA_FLAGS", "").split() if "device_count" not in flag
    )
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(i),
                str(num_processes),
                str(port),
                mode,
                *map(str, args),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(num_processes)
    ]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, stderr[-3000:]
            line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT"))
            outs.append(json.loads(line[len("RESULT") :]))
    finally:
        for proc in procs:
            proc.kill()
    return outs


def _check_filter(outs, num_processes):
    first = outs[0]
    for out in outs[1:]:  # every process reads the same replicated results
        assert out["sharded"] == first["sharded"] and out["local"] == first["local"]
    # each process holds 512 / P particles; the history gathers to the whole (T, N)
    assert all(out["local_rows"] == [512 // num_processes] for out in outs)
    assert first["history_shape"] == [30, 512]
    exact = kalman(scalar_model(0.9, 1.0, 0.5), np.asarray(first["ys"]))[0]
    sharded, local = np.asarray(first["sharded"]), np.asarray(first["local"])
    assert np.isfinite(sharded).all()
    for log_z in (sharded, local):  # unbiased for Z on the natural scale
        ratio = np.exp(log_z - exact)
        assert abs(ratio.mean() - 1.0) < 5.0 * ratio.std() / np.sqrt(SEEDS)
    diff = sharded - local  # same keys: sharded and single-process runs agree
    assert abs(diff.mean()) < 5.0 * diff.std() / np.sqrt(SEEDS) + 1e-4


@pytest.mark.slow
def test_two_processes_filter_smc_and_steering():
    from scipy.stats import multivariate_normal

    outs = launch(2, "all", SEEDS)
    _check_filter(outs, 2)
    first = outs[0]
    assert outs[1]["smc_log_z"] == first["smc_log_z"] and outs[1]["fk_log_z"] == first["fk_log_z"]

    # tempered SMC on a conjugate model: exact evidence and posterior mean
    y = np.asarray(first["y"])
    n = y.size
    log_z = multivariate_normal(np.full(n, 0.5), np.eye(n) + 4.0 * np.ones((n, n))).logpdf(y)
    post_var = 1.0 / (1.0 / 4.0 + n)
    post_mean = post_var * (0.5 / 4.0 + y.sum())
    zs = np.asarray(first["smc_log_z"])
    se = zs.std(ddof=1) / np.sqrt(zs.size)
    assert abs(zs.mean() - log_z) < 5.0 * se + 0.5 * zs.var(ddof=1) + 1e-3, (zs, log_z)
    # 4 runs of 512 draws: sd of the mean about sqrt(post_var / 2048) ~ 0.005
    assert abs(np.mean(first["smc_mean"]) - post_mean) < 0.05

    # FK steering of a mixture by exp(x): log E[exp(x)] in closed form
    w, m, s = np.array([0.3, 0.7]), np.array([-2.0, 2.0]), 0.5
    exact_fk = np.log(np.sum(w * np.exp(m + s**2 / 2)))
    fk = np.asarray(first["fk_log_z"])
    assert abs(np.log(np.mean(np.exp(fk - exact_fk)))) < 5.0 * np.exp(fk - exact_fk).std() / 2


def test_processes_given_different_data_all_raise():
    outs = launch(2, "disagree")
    for out in outs:
        assert "different" in out["error"] and "ys" in out["error"]


@pytest.mark.slow
def test_four_processes_filter():
    outs = launch(4, "filter", SEEDS)
    _check_filter(outs, 4)
