"""The peer library ``particles`` (Chopin's SMC library), for the benchmarks that run it side
by side: one place for its import and its compatibility shim."""

import importlib
import warnings

import numpy as np


def import_particles(what: str):
    """The ``particles`` package with the submodules the benchmarks use
    (``distributions``, ``mcmc``, ``smc_samplers``, ``state_space_models``) loaded, or
    ``None`` after printing that ``what`` is skipped when it is not installed."""
    if not hasattr(np, "float"):  # particles 0.3 still uses the alias NumPy 1.24 removed
        setattr(np, "float", float)  # noqa: B010
    # particles 0.3 sets ndarray.shape in place, deprecated by NumPy 2.5 (Python 3.12 setups):
    # silenced here; a NumPy that removes it will break the `particles` rows
    warnings.filterwarnings(
        "ignore", "Setting the shape on a NumPy array", DeprecationWarning, module="particles"
    )
    try:
        particles = importlib.import_module("particles")
        for name in ("distributions", "mcmc", "smc_samplers", "state_space_models"):
            importlib.import_module(f"particles.{name}")
    except ImportError as error:
        print(f"{what} skipped (not installed): {error}")
        return None
    return particles
