"""Reward vs compute for FK steering, best-of-N and SVDD on a small trained 2-D diffusion
model, side by side in one run; and FK steering wall time per step vs particle count.

The model is the one of ``examples/steer_diffusion.py`` (ring of eight Gaussians, eps-MLP
trained with equinox + optax); the reward is ``r(x) = x_0 + x_1``. Compute is counted in
network evaluations (NFE): FK steering and best-of-N use ``N x K``, SVDD ``N x M x K``
(``M`` children). The "reward" of each method is the expected reward of the sample it
returns: FK steering's weighted mean reward (one draw from its weighted population),
best-of-N's best reward, SVDD's mean particle reward; next to it, how far that sample is
from the data manifold (``| |x| - 3 |``, 0.2 for the data itself), which shows reward
hacking. Median over repeats (seeds) after a warm-up call; compile time reported
separately.

Run: ``python benchmarks/bench_steering.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import particlekit as pk

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_example():
    path = os.path.join(HERE, "..", "examples", "steer_diffusion.py")
    spec = importlib.util.spec_from_file_location("steer_diffusion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def off_ring(x):
    """Distance of one sample from the data manifold (the ring of radius 3)."""
    return jnp.abs(jnp.linalg.norm(x) - 3.0)


def _timed(fn, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(0))
    first = time.perf_counter() - t0
    times, outs = [], []
    for r in range(1, repeats + 1):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(r))
        times.append(time.perf_counter() - t0)
        outs.append(out)
    run = float(np.median(times))
    return max(first - run, 0.0), run, outs


def main(quick: bool = False):
    ex = _load_example()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, backend {jax.default_backend()}")  # fmt: skip
    t0 = time.perf_counter()
    model = ex.train_model(jax.random.key(0), num_steps=300 if quick else 3000)
    print(f"training: {time.perf_counter() - t0:.1f} s")
    reward, lmbda = ex.reward, 2.0
    steps = 20 if quick else 50
    budgets = [16, 64] if quick else [16, 64, 256, 1024]
    repeats = 1 if quick else 5
    children = 4
    base_key = jax.random.key(1)

    print(f"\n## reward vs compute (K = {steps} steps, lambda = {lmbda}, median of {repeats})")
    print("reward of the returned sample, and in brackets its distance | |x| - 3 | from the ring")
    header = f"{'NFE':>8} | {'FK steering':>14} | {'best-of-N':>14} | {'SVDD (M=4)':>14} |"
    print(header + f" {'FK run s':>9} | {'BoN run s':>9} | {'SVDD run s':>10}")
    for n in budgets:

        def fk(r, n=n):
            res = pk.diffusion.fk_steering(
                jax.random.fold_in(base_key, r), model, reward, num_particles=n,
                num_steps=steps, lmbda=lmbda, resample_every=5, resample_window=(0.0, 0.7),
            )  # fmt: skip
            return jnp.stack([res.mean(reward), res.mean(off_ring)])

        def bon(r, n=n):
            res = pk.diffusion.best_of_n(
                jax.random.fold_in(base_key, r), model, reward, num_samples=n, num_steps=steps
            )
            return jnp.stack([res.best_reward, off_ring(res.best)])

        def sv(r, n=n):
            res = pk.diffusion.svdd(
                jax.random.fold_in(base_key, r), model, reward,
                num_particles=max(n // children, 1), num_children=children, num_steps=steps,
            )  # fmt: skip
            return jnp.stack([jnp.mean(res.rewards), jnp.mean(jax.vmap(off_ring)(res.samples))])

        rows = [_timed(f, repeats) for f in (fk, bon, sv)]
        vals = [np.median(np.stack([np.asarray(o) for o in outs]), axis=0) for *_, outs in rows]
        cells = " | ".join(f"{v[0]:>6.3f} ({v[1]:.3f})" for v in vals)
        print(f"{n * steps:>8} | {cells} |"
              f" {rows[0][1]:>9.3f} | {rows[1][1]:>9.3f} | {rows[2][1]:>10.3f}")  # fmt: skip

    print(f"\n## FK steering wall time per step vs particles (K = {steps})")
    print(f"{'N':>6} | {'compile s':>9} | {'run s':>7} | {'ms / step':>9} | {'ratio vs N0':>11}")
    base_time = None
    for n in [64, 256] if quick else [64, 256, 1024, 4096]:

        def fk_run(r, n=n):
            return pk.diffusion.fk_steering(
                jax.random.fold_in(base_key, r), model, reward, num_particles=n,
                num_steps=steps, lmbda=lmbda, resample_window=(0.0, 0.7),
            ).log_evidence  # fmt: skip

        compile_s, run_s, _ = _timed(fk_run, repeats)
        base_time = base_time or run_s
        print(f"{n:>6} | {compile_s:>9.2f} | {run_s:>7.3f} | {1e3 * run_s / steps:>9.2f} |"
              f" {run_s / base_time:>11.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    main(parser.parse_args().quick)
