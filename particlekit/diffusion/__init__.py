"""Diffusion recipes: noise schedules, diffusion models, PDDS, FK steering and FK
correctors."""

from particlekit.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    get_schedule,
    linear_schedule,
    time_grid,
)

__all__ = [
    "NoiseSchedule",
    "cosine_schedule",
    "get_schedule",
    "linear_schedule",
    "time_grid",
]
