"""Shared helpers of the ArviZ converter tests (the ``api`` fixture is in ``conftest.py``):
group access for both containers, and stacking independent runs as ``jax.vmap`` would."""

import arviz as az
import jax
import jax.numpy as jnp
import xarray as xr

import particlekit as pk


def groups(data) -> set:
    return set(data.children) if hasattr(data, "children") else set(data.groups())


def group(data, name):
    return data[name] if hasattr(data, "children") else getattr(data, name)


def check_container(data, api):
    if api == "arviz>=1" or pk.arviz.arviz_major_version() >= 1:
        assert isinstance(data, xr.DataTree)
    else:
        assert isinstance(data, az.InferenceData)


def stack(results):
    """Independent runs stacked on a leading axis, as ``jax.vmap`` would give them (without
    another compilation)."""
    return jax.tree.map(lambda *a: jnp.stack(a), *results)
