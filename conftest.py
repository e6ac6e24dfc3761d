"""Test-session guard shared by the tests (``tests/``) and the doctests (``particlekit/``):
this file sits at the repository root so that it applies to both (a ``conftest.py`` applies
to its own directory and below)."""

import gc

import jax
import pytest

# Every compiled XLA:CPU program keeps a few memory mappings (its JIT-linked code) for as
# long as JAX's caches hold it, and Linux caps a process at ``vm.max_map_count`` mappings
# (65530 by default). One pytest-xdist worker compiles thousands of programs over the
# suite: a CI run reached 45 000 mappings a quarter of the way through, and a worker that
# hits the cap fails to link its next program ("Failed to materialize symbols") and then
# segfaults (the crashes "in a doctest that passes alone" that pyproject.toml's reruns
# answer were most likely this: the doctests run last). So the caches are cleared after a
# test or doctest once a worker holds many mappings (a count costs about a millisecond;
# clearing, the recompilation of what later tests share).
_MAX_MEMORY_MAPPINGS = 30_000


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as maps:
            return maps.read().count(b"\n")
    except OSError:  # not Linux: no cap to watch
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    yield
    if _memory_mappings() > _MAX_MEMORY_MAPPINGS:
        jax.clear_caches()
        gc.collect()
