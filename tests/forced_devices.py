"""Run a script on 8 forced host CPU devices in a subprocess.

XLA fixes the number of host devices at start-up, so multi-device tests run their JAX code
in a fresh interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``. The
script prints one line ``RESULT<json>``, returned here as a dict.
"""

import json
import os
import subprocess
import sys

NUM_DEVICES = 8


def run_on_forced_devices(script: str, *args) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])
