"""Exact backward draws: this checkout's `particlekit.backward` against the module of an
earlier git revision, side by side in one process.

The old module is read with ``git show REV:particlekit/backward.py`` and swapped into
`particlekit.smoothing` (the names it binds from `particlekit.backward`) while the old
variants are compiled; every variant is compiled ahead of time (``jit(...).lower().compile()``
after ``jax.clear_caches()``), so no trace of one module is reused by the other. Then all
variants are timed round-robin. Model and calls as section 4 of ``bench_smoothing.py``
(1-D linear Gaussian; PaRIS with K = 2 backward draws, one PPG sweep with K = 2, FFBS of
M = N trajectories from a stored filter, all ``method="rejection"``); ns per particle-step
(minimum of ``--repeats``), the ratio to the bootstrap filter of the same run, and compile
time. The default old revision ``bc24cfe`` is the last one before the flattened proposal
(``6102fc6``).

Usage::

    python benchmarks/bench_backward_revisions.py                 # N = 1024, 4096, 16384
    python benchmarks/bench_backward_revisions.py --old bc24cfe --sizes 4096 --steps 100
    python benchmarks/bench_backward_revisions.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import jax

sys.path.insert(0, os.path.dirname(__file__))
from bench_smoothing import SSM, smoother_calls  # noqa: E402

import particlekit as pk  # noqa: E402
from particlekit import smoothing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the names particlekit.smoothing binds from particlekit.backward: smoothing's -> backward's
BOUND = {
    "PARIS_METHODS": "PARIS_METHODS",
    "backward_indices": "backward_indices",
    "max_log_density": "max_log_density",
    "mcmc_backward_indices": "mcmc_backward_indices",
    "_categorical": "categorical",
    "_check_method": "check_method",
    "_check_trials": "check_trials",
    "_log_f_rows": "log_f_rows",
    "_resolve_bound": "resolve_bound",
    "_take": "take",
}


def load_revision(rev: str) -> types.ModuleType:
    """`particlekit/backward.py` as it was at git revision ``rev``, as a module."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:particlekit/backward.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    name = f"particlekit_backward_{rev}"
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:particlekit/backward.py"
    sys.modules[name] = module  # NamedTuples and annotations look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module


@contextlib.contextmanager
def swapped_into_smoothing(module: types.ModuleType | None):
    """Within the block, `particlekit.smoothing` calls ``module``'s backward draws (None:
    this checkout's)."""
    saved = {}
    if module is not None:
        for name, source in BOUND.items():
            if hasattr(module, source) and hasattr(smoothing, name):
                saved[name] = getattr(smoothing, name)
                setattr(smoothing, name, getattr(module, source))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(smoothing, name, value)


def compile_ahead(fn, *args):
    """``fn`` compiled for ``args`` from a fresh trace; returns (compiled, seconds)."""
    jax.clear_caches()
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="bc24cfe", help="git revision of the old module")
    parser.add_argument("--sizes", default="1024,4096,16384", help="comma-separated N")
    parser.add_argument("--steps", type=int, default=100, help="T")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N = 256, T = 20, 2 repeats")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    num_steps, repeats = args.steps, args.repeats
    if args.quick:
        sizes, num_steps, repeats = [256], 20, 2
    old = load_revision(args.old)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}); old = {args.old}, new = "
          f"{head} (working tree); T = {num_steps}, minimum of {repeats} calls")  # fmt: skip
    _, ys = SSM.simulate(jax.random.key(7), num_steps)
    print("\n| N | method | old ns / particle-step | new | new / old | old x filter | new x "
          "filter | compile old / new (s) |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    key = jax.random.key(0)
    for n in sizes:
        stored = pk.filters.bootstrap(
            jax.random.key(3), SSM, ys, num_particles=n, keep_history=True, progress_bar=False
        )
        calls = smoother_calls(n, ys, stored, methods=("rejection",))
        compiled = {("filter", "new"): compile_ahead(calls.pop("filter"), key)}
        for label, module in (("old", old), ("new", None)):
            with swapped_into_smoothing(module):
                for name, fn in calls.items():
                    compiled[(name, label)] = compile_ahead(fn, key)
        times = {k: [] for k in compiled}
        for r in range(repeats + 1):  # the first round warms up
            for k, (fn, _) in compiled.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(jax.random.key(r + 1)))
                if r:
                    times[k].append(time.perf_counter() - t0)
        per = {k: min(v) * 1e9 / (n * num_steps) for k, v in times.items()}
        base = per[("filter", "new")]
        for name in calls:
            o, w = per[(name, "old")], per[(name, "new")]
            print(f"| {n} | {name} | {o:.0f} | {w:.0f} | {w / o:.2f} | {o / base:.1f}x | "
                  f"{w / base:.1f}x | {compiled[(name, 'old')][1]:.1f} / "
                  f"{compiled[(name, 'new')][1]:.1f} |", flush=True)  # fmt: skip
        print(f"| {n} | filter | | {base:.1f} | | | 1.0x | {compiled[('filter', 'new')][1]:.1f} |")


if __name__ == "__main__":
    main()
