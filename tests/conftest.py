"""Test configuration: float32 (the library default), the persistent XLA compilation
cache (most test time is compilation), and a few shared fixtures."""

import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(__file__))

_CACHE = os.environ.get(
    "PARTICLEKIT_TEST_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def key():
    return jax.random.key(0)
