"""Hyperparameters of the shipped arithmetic models, shared by ``particlekit.lm.train``
(which writes the weights) and ``particlekit.lm.pretrained`` (which reads them): a loaded
file must have been written from the same configuration."""

from __future__ import annotations

from pathlib import Path

from particlekit.lm.task import CONTEXT_LENGTH, VOCAB_SIZE
from particlekit.lm.transformer import TransformerConfig

__all__ = [
    "GENERATOR",
    "GENERATOR_TRAINING",
    "PRM",
    "PRM_TRAINING",
    "WEIGHTS_DIR",
    "GENERATOR_FILE",
    "PRM_FILE",
]

#: The generator: 2 layers, width 64, 4 heads, 32 positions.
GENERATOR = TransformerConfig(
    vocab_size=VOCAB_SIZE, context_length=CONTEXT_LENGTH, d_model=64, num_heads=4, num_layers=2
)
#: The learned process reward model: the same architecture, read as token-level verdicts
#: (``particlekit.lm.prm``).
PRM = GENERATOR

#: Training of the generator: seed, steps, batch, peak learning rate, warm-up, weight decay.
#: Stopped early on purpose (greedy decoding right on about half of the held-out problems).
GENERATOR_TRAINING = dict(
    seed=0, steps=1500, batch_size=64, learning_rate=3e-3, warmup=100, weight_decay=0.01
)
#: Training of the PRM: pretrained as a language model on reference solutions
#: (``backbone_steps``, longer than the generator), then fine-tuned (``steps``) on the
#: verifier's labels of ``num_samples`` samples of the trained generator.
PRM_TRAINING = dict(
    seed=1,
    backbone_steps=2500,
    backbone_learning_rate=3e-3,
    num_samples=8192,
    steps=1000,
    batch_size=64,
    learning_rate=1e-3,
    warmup=100,
    weight_decay=0.01,
)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
GENERATOR_FILE = WEIGHTS_DIR / "arithmetic_generator.eqx"
PRM_FILE = WEIGHTS_DIR / "arithmetic_prm.eqx"
