"""Static models from NumPyro: adaptive tempered SMC and waste-free SMC with BlackJAX moves.

>>> import particlekit as pk
>>> smc = pk.infer.SMC(lambda: None, num_particles=100)  # doctest: +SKIP
"""

from particlekit.infer import moves, numpyro_adapter, tempering
from particlekit.infer.smc import SMC, SMCResult, StageDiagnostics

__all__ = ["SMC", "SMCResult", "StageDiagnostics", "moves", "numpyro_adapter", "tempering"]
