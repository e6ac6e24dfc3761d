"""PDDS (naive and learned guidance) against adaptive tempered SMC at equal target
evaluations: log-Z error and spread over seeds, on a 2-D Gaussian mixture and the 10-D
funnel; wall time of training and sampling.

Cost model (gradient evaluations of ``log gamma`` per run):

* PDDS without MCMC: ``N (K + 1)`` (one value-and-gradient per particle and step, cached);
* tempered SMC (``pk.infer.SMC``, MALA, ``m`` steps per stage): ``N S (m + 1)`` for ``S``
  stages (``m`` MALA gradients plus one likelihood evaluation per stage), read from the
  run. Its particle count is set so that its cost matches the PDDS budget.

Both use the same reference / prior ``N(0, sigma^2 I)``: SMC tempers
``N(0, sigma^2 I) g_0(x)^lambda`` with ``g_0 = gamma / N(0, sigma^2 I)``, the PDDS
potential at ``t = 0``.

Usage::

    python benchmarks/bench_pdds.py            # full table (several minutes)
    python benchmarks/bench_pdds.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

import particlekit as pk

W_MIX = jnp.array([0.2, 0.5, 0.3])
MU_MIX = jnp.array([[-2.5, 0.0], [1.5, 2.0], [2.0, -2.0]])
SD_MIX = jnp.array([0.5, 0.7, 0.4])


def mixture(x):
    comp = dist.Normal(MU_MIX, SD_MIX[:, None]).log_prob(x).sum(-1)
    return logsumexp(jnp.log(W_MIX) + comp)


def funnel(x):
    v = x[0]
    return (
        dist.Normal(0.0, 3.0).log_prob(v) + dist.Normal(0.0, jnp.exp(v / 2)).log_prob(x[1:]).sum()
    )


# name: (log_density, dim, sigma, exact log Z)
TARGETS = {"mixture-2d": (mixture, 2, 2.5, 0.0), "funnel-10d": (funnel, 10, 1.0, 0.0)}


def timed(fn):
    """(first-call seconds, second-call seconds, output): compile + run, then run only."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return first, time.perf_counter() - t0, out


def pdds_row(log_density, dim, sigma, log_z, n, k, seeds, potential):
    # filter_jit: the potential is a PyTree whose naive part holds the (static) function
    run = eqx.filter_jit(
        lambda keys, pot: jax.vmap(
            lambda key: (
                pk.diffusion.pdds(
                    key, log_density, dim, num_particles=n, num_steps=k, sigma=sigma, potential=pot
                ).log_evidence
            )
        )(keys)
    )
    keys = jax.random.split(jax.random.key(k * 7919 + n), seeds)
    first, second, le = timed(lambda: run(keys, potential))
    err = np.asarray(le) - log_z
    return dict(evals=n * (k + 1), err=err, compile=first - second, run=second / seeds)


def smc_model(log_density, dim, sigma):
    def model():
        x = numpyro.sample("x", dist.Normal(jnp.zeros(dim), sigma).to_event(1))
        log_ref = dist.Normal(jnp.zeros(dim), sigma).log_prob(x).sum()
        numpyro.factor("g0", log_density(x) - log_ref)

    return model


def smc_row(log_density, dim, sigma, log_z, budget, seeds, num_mcmc_steps, stages_guess):
    n = max(32, int(budget / (stages_guess * (num_mcmc_steps + 1))))
    smc = pk.infer.SMC(
        smc_model(log_density, dim, sigma),
        num_particles=n,
        kernel="mala",
        num_mcmc_steps=num_mcmc_steps,
        num_chains=seeds,
    )
    first, second, _ = timed(lambda: (smc.run(jax.random.key(n)), smc.log_evidence)[1])
    res = smc.diagnostics
    stages = np.asarray(res.num_stages, float)
    err = np.asarray(res.log_evidence) - log_z
    evals = float(np.mean(n * stages * (num_mcmc_steps + 1)))
    return dict(
        evals=evals,
        err=err,
        compile=first - second,
        run=second / seeds,
        n=n,
        stages=float(stages.mean()),
    )


def fmt(name, row, extra=""):
    e = row["err"]
    return (
        f"| {name} | {row['evals']:.0f} | {e.mean():+.3f} | {e.std():.3f} | "
        f"{np.sqrt(np.mean(e**2)):.3f} | {row['run'] * 1e3:.1f} | {row['compile']:.1f} |"
        f" {extra} |"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seeds = 4 if args.quick else 16
    grid = [(256, 8)] if args.quick else [(512, 8), (512, 32), (2048, 32)]
    train = dict(num_rounds=1, num_train_steps=100) if args.quick else dict(num_rounds=2)
    print(
        f"# PDDS vs tempered SMC  ({platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__})"
    )
    for name, (log_density, dim, sigma, log_z) in TARGETS.items():
        print(f"\n## {name}: log Z = {log_z}, sigma = {sigma}, {seeds} seeds\n")
        t0 = time.perf_counter()
        pot = pk.diffusion.fit_pdds_potential(
            jax.random.key(0), log_density, dim, sigma=sigma, progress_bar=False, **train
        )
        jax.block_until_ready(pot)
        print(
            f"training the learned potential: {time.perf_counter() - t0:.1f} s "
            f"(including compilation)\n"
        )
        print(
            "| method | target grads / run | mean err | sd err | RMSE | run ms | "
            "compile s | notes |"
        )
        print("|---|---|---|---|---|---|---|---|")
        stages_guess = None
        for n, k in grid:
            naive = pdds_row(log_density, dim, sigma, log_z, n, k, seeds, None)
            learned = pdds_row(log_density, dim, sigma, log_z, n, k, seeds, pot)
            print(fmt(f"PDDS naive N={n} K={k}", naive), flush=True)
            print(fmt(f"PDDS learned N={n} K={k}", learned), flush=True)
            if stages_guess is None:  # pilot: number of tempering stages
                pilot = smc_row(log_density, dim, sigma, log_z, 64 * 3 * 10, 2, 2, 10)
                stages_guess = max(pilot["stages"], 1.0)
            smc = smc_row(log_density, dim, sigma, log_z, naive["evals"], seeds, 2, stages_guess)
            note = f"{smc['stages']:.1f} stages"
            print(fmt(f"tempered SMC (MALA x2) N={smc['n']}", smc, note), flush=True)


if __name__ == "__main__":
    main()
