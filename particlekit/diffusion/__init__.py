"""Diffusion recipes: noise schedules, diffusion models, PDDS, FK steering and FK
correctors."""

from particlekit.diffusion.baselines import BestOfNResult, SVDDResult, best_of_n, svdd
from particlekit.diffusion.fk_correctors import (
    FKCResult,
    anneal,
    fk_corrector,
    geometric_average,
    product_of_experts,
)
from particlekit.diffusion.fk_steering import (
    FKSteeringResult,
    fk_steering,
    gradient_guided_proposal,
)
from particlekit.diffusion.flow import FlowModel
from particlekit.diffusion.model import (
    DiffusionModel,
    gaussian_mixture,
    tilted_gaussian_mixture,
)
from particlekit.diffusion.pdds import PDDSParticle, PDDSResult, pdds
from particlekit.diffusion.potentials import (
    LearnedPotential,
    NaivePotential,
    fit_pdds_potential,
)
from particlekit.diffusion.pretrained import (
    DigitsClassifier,
    class_log_prob_reward,
    digits_classifier,
    digits_diffusion,
    digits_flow,
    digits_to_images,
    ink_reward,
    region_ink_reward,
)
from particlekit.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    get_schedule,
    linear_schedule,
    time_grid,
)

__all__ = [
    "BestOfNResult",
    "DiffusionModel",
    "FKCResult",
    "anneal",
    "fk_corrector",
    "geometric_average",
    "product_of_experts",
    "SVDDResult",
    "best_of_n",
    "svdd",
    "FKSteeringResult",
    "fk_steering",
    "gaussian_mixture",
    "gradient_guided_proposal",
    "tilted_gaussian_mixture",
    "LearnedPotential",
    "NaivePotential",
    "PDDSParticle",
    "PDDSResult",
    "fit_pdds_potential",
    "pdds",
    "NoiseSchedule",
    "cosine_schedule",
    "get_schedule",
    "linear_schedule",
    "time_grid",
    "FlowModel",
    "DigitsClassifier",
    "class_log_prob_reward",
    "digits_classifier",
    "digits_diffusion",
    "digits_flow",
    "digits_to_images",
    "ink_reward",
    "region_ink_reward",
]
