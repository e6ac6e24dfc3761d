"""Test configuration: float32 (the library default), an optional persistent XLA
compilation cache, and a few shared fixtures.

The cache is opt-in (``PARTICLEKIT_TEST_JAX_CACHE=.jax_cache``): it saves compile time when
the suite is re-run locally, but CI starts from an empty cache, where it only writes, and
jaxlib once crashed (SIGSEGV in ``compilation_cache.put_executable_and_time``) while
serialising an executable in a CI run.

The suite is dominated by compilation, not by running, so the tests compile with two
``XLA_FLAGS`` that make XLA's CPU compiler quicker (``LIGHT_COMPILE_FLAGS``; a flag the
caller sets is left as it is):

- ``--xla_backend_optimization_level=1``, LLVM's lighter optimisation level: 16 % off the
  suite on 2 CPU cores (19.5 min against 23 min);
- ``--xla_cpu_use_fusion_emitters=false`` (jaxlib 0.10; jaxlib 0.12 aborts on it as an
  unknown flag), XLA's older loop emitters for fusions instead of the MLIR fusion
  emitters: backend compilation about twice as fast (the smoothing docs page's 61
  compilations: 23 s against 44 s on one core), 41 % off the suite (18.8 min against
  31.9 min on this project's 2-core CI machine, 2026-12-07), the same 1897 tests passing.

On top of them the suite compiles with ``jax_disable_most_optimizations`` (XLA's
backend optimisation level 0, LLVM's expensive passes off): most tests compile far more
than they run: the tests of a fresh-clone CI run took 23.6 min against 31.4 min on the
2-core CI machine (2026-12-07, 2012 tests). Tests dominated by running compiled programs
(long statistical checks) are marked ``optimized`` and compile with the optimisations (the
flag is off for them: at level 0 the SMC² posterior check ran 2.8x longer, 125 s against
45 s); a program an earlier test of the same worker compiled is reused as it is.

The subprocesses of the tests (docs pages, forced multi-device runs, the multi-process
tests) inherit all of them (``JAX_DISABLE_MOST_OPTIMIZATIONS``; an ``optimized`` test's
subprocesses compile with the optimisations); the benchmarks measure XLA's defaults."""

import os
import sys

import jax
import jaxlib
import numpyro.distributions  # noqa: F401  (before any test module imports arviz: see below)
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# XLA flags for a quicker compile (see the module docstring); a flag the caller already sets
# in XLA_FLAGS is left as it is. An XLA that does not know a flag aborts the process
# ("Unknown flag in XLA_FLAGS"): jaxlib 0.12 has no xla_cpu_use_fusion_emitters, so that one
# is set only for the jaxlib it was measured with (0.10).
LIGHT_COMPILE_FLAGS = {"xla_backend_optimization_level": "1"}
if tuple(int(part) for part in jaxlib.__version__.split(".")[:2]) <= (0, 10):
    LIGHT_COMPILE_FLAGS["xla_cpu_use_fusion_emitters"] = "false"

# read when the first backend starts, after this module is imported
for _flag, _value in LIGHT_COMPILE_FLAGS.items():
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_flag}={_value}").strip()

# compile without most of XLA's optimisations (see the module docstring), here and in the
# tests' subprocesses; the ``optimized`` tests turn them back on (``_optimized_compile``)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update(
    "jax_disable_most_optimizations",
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].strip().lower() in ("1", "true", "yes", "on"),
)

# ArviZ 1.x loads NumPyro lazily (lazy_loader); on Python 3.12.1 a NumPyro that is first
# imported through that lazy module loses the submodule attributes of numpyro.distributions
# (``numpyro.factor`` then fails with "has no attribute 'distribution'"). Test modules that
# import arviz before numpyro would hit it, so numpyro is imported here, first.
_CACHE = os.environ.get("PARTICLEKIT_TEST_JAX_CACHE")
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def _optimized_compile(request):
    """XLA's optimisations on for a test marked ``optimized``, in its process and in the
    subprocesses it starts (the suite compiles without most of them: see the module
    docstring), back as they were after it."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    request.getfixturevalue("monkeypatch").setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(params=["installed", "arviz>=1"])
def api(request, monkeypatch):
    """The installed ArviZ, and the ``xarray.DataTree`` path of arviz >= 1 (by patching
    ``particlekit.arviz.arviz_major_version``), for the converter tests."""
    if request.param == "arviz>=1":
        import particlekit as pk

        monkeypatch.setattr(pk.arviz, "arviz_major_version", lambda: 1)
    return request.param


def pytest_collection_modifyitems(config, items):
    """Run the ``slow`` tests first (a stable sort, each group in collection order): with
    ``pytest -n 2`` a long test left for the end keeps one worker busy while the other
    idles, so the longest jobs go first (longest-processing-time-first scheduling)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
