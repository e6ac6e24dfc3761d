"""Diffusion recipes: noise schedules and time grids, diffusion and flow models, PDDS, FK
steering, FK correctors and the best-of-N / SVDD / rollover-budget-forcing baselines."""

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
from particlekit.diffusion.flow import FlowModel, gaussian_mixture_flow
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
from particlekit.diffusion.rollover import RBFResult, rollover_budget_forcing
from particlekit.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    get_schedule,
    linear_schedule,
    sampling_grid,
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
    "RBFResult",
    "rollover_budget_forcing",
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
    "sampling_grid",
    "FlowModel",
    "gaussian_mixture_flow",
    "DigitsClassifier",
    "class_log_prob_reward",
    "digits_classifier",
    "digits_diffusion",
    "digits_flow",
    "digits_to_images",
    "ink_reward",
    "region_ink_reward",
]
