"""Particle steering of sequence generators (under construction)."""

__all__: list[str] = []
