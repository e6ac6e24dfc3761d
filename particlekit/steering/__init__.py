"""Particle steering of sequence generators: sample ``p(x) phi(x) / Z`` from any JAX
autoregressive step function and a reward model on partial sequences, without fine-tuning.

- ``smc``: particle filtering over sequences (``"exact"`` and ``"softmax"`` variants);
- ``particle_gibbs``: conditional SMC with a reference sequence, iterated (both variants);
- ``parallel_tempering``: particle Gibbs chains at several temperatures with swaps;
- ``probability_reward``: a reward from a score in ``[0, 1]`` (e.g. a PRM), checked;
- ``beam_search`` (and DVTS), ``best_of``, ``weighted_vote``: search baselines and
  answer-selection rules;
- ``MarkovGenerator``, ``toy_generator``: a tiny generator shipped for tests;
- ``enumerate_sequences``: the exact steered distribution of a small generator.
"""

from particlekit.steering.exact import Enumeration, enumerate_sequences, sequence_frequencies
from particlekit.steering.generators import (
    MarkovGenerator,
    markov_generator,
    sequence_log_prob,
    toy_generator,
)
from particlekit.steering.pgibbs import GibbsResult, particle_gibbs
from particlekit.steering.rewards import ProbabilityReward, probability_reward
from particlekit.steering.search import (
    beam_search,
    beam_selection,
    best_of,
    dvts_selection,
    weighted_vote,
)
from particlekit.steering.sequences import SequenceState
from particlekit.steering.smc import SteeringResult, smc
from particlekit.steering.tempering import TemperingResult, parallel_tempering

__all__ = [
    "Enumeration",
    "GibbsResult",
    "MarkovGenerator",
    "ProbabilityReward",
    "SequenceState",
    "SteeringResult",
    "TemperingResult",
    "beam_search",
    "beam_selection",
    "best_of",
    "dvts_selection",
    "enumerate_sequences",
    "markov_generator",
    "parallel_tempering",
    "particle_gibbs",
    "probability_reward",
    "sequence_frequencies",
    "sequence_log_prob",
    "smc",
    "toy_generator",
    "weighted_vote",
]
