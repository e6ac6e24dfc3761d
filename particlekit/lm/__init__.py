"""Small language models for steering experiments, shipped with their weights.

- ``task``: a synthetic multi-step arithmetic task (running sums of 3 or 4 numbers), its
  character tokenizer, problem generator and exact verifier of partial solutions;
- ``transformer``: a decoder-only Equinox transformer with a full forward pass and a
  key/value-cached single-token step, and its adapter to ``particlekit.steering.smc``;
- ``prm``: a learned process reward model as a steering reward;
- ``pretrained``: ``arithmetic_model()`` and ``arithmetic_prm()``, trained by
  ``python3 -m particlekit.lm.train`` (hyperparameters in ``config``).
"""

from particlekit.lm import pretrained, prm, task, transformer
from particlekit.lm.pretrained import arithmetic_model, arithmetic_prm, training_report
from particlekit.lm.prm import ProcessRewardModel
from particlekit.lm.transformer import (
    KVCache,
    SteeringLM,
    Transformer,
    TransformerConfig,
    generate,
    prefill,
    steering_model,
    step,
)

__all__ = [
    "KVCache",
    "ProcessRewardModel",
    "SteeringLM",
    "Transformer",
    "TransformerConfig",
    "arithmetic_model",
    "arithmetic_prm",
    "generate",
    "prefill",
    "pretrained",
    "prm",
    "step",
    "steering_model",
    "task",
    "training_report",
    "transformer",
]
