"""Static models from NumPyro: tempered and waste-free SMC (under construction)."""

__all__: list[str] = []
