"""Import time of ``particlekit`` against its unavoidable base, ``jax`` + ``numpyro``.

Each measurement is a fresh interpreter (median of 5): the CPU time of the import
(``time.process_time`` around it) and the modules it loads. The heavy optional dependencies
(equinox, optax, BlackJAX, ArviZ/xarray) are imported on first use of the subpackages that
need them (``pk.infer``, ``pk.diffusion``, ``pk.steering``, ``pk.learning``, ``pk.arviz``).

    python3 benchmarks/bench_import.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys

CHILD = """
import sys, time
t0 = time.process_time()
import {module}
print(time.process_time() - t0)
"""


def cpu_seconds(module: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(module=module)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def main() -> None:
    rows = [
        ("jax, numpyro, numpyro.distributions", "jax, numpyro, numpyro.distributions"),
        ("particlekit", "particlekit"),
        ("particlekit + pk.infer (BlackJAX)", "particlekit, particlekit.infer"),
        ("particlekit + pk.diffusion (equinox, optax)", "particlekit, particlekit.diffusion"),
        ("particlekit + pk.arviz (ArviZ, xarray)", "particlekit, particlekit.arviz"),
    ]
    base = None
    print("| import | CPU s (median of 5 fresh processes) | beyond jax + numpyro |")
    print("| --- | --- | --- |")
    for label, module in rows:
        seconds = cpu_seconds(module)
        base = seconds if base is None else base
        print(f"| `{label}` | {seconds:.2f} | {seconds - base:+.2f} |")


if __name__ == "__main__":
    main()
