"""Static models from NumPyro: adaptive tempered SMC and waste-free SMC with BlackJAX moves.

>>> import particlekit as pk
>>> smc = pk.infer.SMC(lambda: None, num_particles=100)  # doctest: +SKIP
"""

from particlekit.infer import (
    adaptive_hmc,
    convergence,
    log_density,
    moves,
    numpyro_adapter,
    tempering,
)
from particlekit.infer.convergence import ConvergenceReport
from particlekit.infer.log_density import LogDensityModel
from particlekit.infer.smc import SMC, SMCResult, StageDiagnostics

__all__ = [
    "SMC",
    "SMCResult",
    "StageDiagnostics",
    "LogDensityModel",
    "ConvergenceReport",
    "adaptive_hmc",
    "convergence",
    "log_density",
    "moves",
    "numpyro_adapter",
    "tempering",
]
