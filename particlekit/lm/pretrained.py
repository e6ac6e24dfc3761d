"""The shipped arithmetic models, loaded from the package (no network access).

Both were trained by ``python3 -m particlekit.lm.train`` with the hyperparameters of
``particlekit.lm.config``; ``weights/training_report.json`` holds the numbers of that run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from particlekit.lm import config
from particlekit.lm.prm import ProcessRewardModel
from particlekit.lm.task import PROMPT_LENGTH
from particlekit.lm.transformer import Transformer, TransformerConfig

__all__ = ["arithmetic_model", "arithmetic_prm", "training_report"]


@functools.cache
def _load(path: Path, cfg: TransformerConfig) -> Transformer:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; write it with `python3 -m particlekit.lm.train`"
        )
    # shapes only: nothing is initialised. The files hold float32 weights: with
    # JAX_ENABLE_X64 the skeleton would be float64, which deserialising refuses
    skeleton = eqx.filter_eval_shape(Transformer, cfg, jax.random.key(0))
    skeleton = jax.tree.map(
        lambda leaf: (
            jax.ShapeDtypeStruct(leaf.shape, jnp.float32)
            if jnp.issubdtype(leaf.dtype, jnp.floating)
            else leaf
        ),
        skeleton,
    )
    try:
        return eqx.tree_deserialise_leaves(path, skeleton)
    except Exception as error:  # truncated, or written from another configuration
        raise RuntimeError(
            f"{path} does not hold the weights of {cfg} ({error}); rewrite it with "
            f"`python3 -m particlekit.lm.train`"
        ) from error


def arithmetic_model() -> Transformer:
    """The shipped generator of running-sum solutions (``particlekit.lm.task``).

    A 2-layer decoder-only transformer (width 64, 4 heads, 32 positions, about 100 000
    parameters), trained on purpose only until greedy decoding gets the final answer of
    roughly half of the held-out problems (sampling at temperature 1: fewer), so that
    steering has room to help.

    Returns
    -------
    Transformer
        ``model(tokens) -> logits`` of shape ``(T, 16)``; use ``transformer.step`` /
        ``transformer.steering_model`` for cached decoding.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from particlekit.lm import task, transformer
    >>> model = arithmetic_model()
    >>> prompt = jnp.asarray(task.encode_prompt([45, 38, 27]))
    >>> tokens, length = transformer.generate(model, jax.random.key(0), prompt,
    ...                                       task.MAX_NEW_TOKENS, eos_id=task.EOS,
    ...                                       temperature=0.0)
    >>> task.decode(tokens[:length], strip=True)
    '45+38+27=83;110;A110$'
    """
    return _load(config.GENERATOR_FILE, config.GENERATOR)


def arithmetic_prm(strength: float = 1.0) -> ProcessRewardModel:
    """The shipped learned process reward model of the arithmetic task.

    A transformer of the generator's size read as token-level verdicts
    (``particlekit.lm.prm``): the probability that a prefix is right so far is the product
    of its verdicts on the generated tokens. Pretrained as a language model on reference
    solutions, then fine-tuned on the exact verifier's labels
    (``task.prefix_correct(..., partial_steps=True)``) of samples of ``arithmetic_model()``.
    It is informative but imperfect (it learned from the generator's own mistakes): see
    ``training_report()["prm"]`` for its accuracy and AUC on held-out problems.

    Parameters
    ----------
    strength : float
        The tilt ``lambda`` of the reward ``lambda * log P(right)``.

    Returns
    -------
    ProcessRewardModel
        A ``reward_fn(tokens, length)`` for ``particlekit.steering.smc``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from particlekit.lm import task
    >>> prm = arithmetic_prm()
    >>> def p(text):
    ...     return float(prm.probability(jnp.asarray(task.encode(text.ljust(32, "_"))), len(text)))
    >>> p("____12+7+30=19;49;") > p("____12+7+30=19;58;")   # 49 is right
    True
    >>> p("___45+38+27=83;110;") > p("___45+38+27=83;120;")  # 110 is right: a miss
    False
    """
    return ProcessRewardModel(_load(config.PRM_FILE, config.PRM), PROMPT_LENGTH, strength)


def training_report() -> dict:
    """The numbers of the training run that wrote the shipped weights (times, accuracies
    on held-out problems, PRM accuracy and AUC).

    Examples
    --------
    >>> 0.3 < training_report()["generator"]["greedy_answer_accuracy"] < 0.7
    True
    """
    return json.loads((config.WEIGHTS_DIR / "training_report.json").read_text())
