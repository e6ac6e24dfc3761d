"""Train the shipped arithmetic generator and its learned process reward model.

Run ``python3 -m particlekit.lm.train`` (fixed seeds; 3 to 7 minutes on two CPU cores). It

1. trains the generator (``config.GENERATOR``) with optax on fresh training problems
   (cross-entropy on the solution tokens), stopping early on purpose: greedy decoding is
   right on only part of the held-out problems, which is what leaves room for steering;
2. trains the PRM (``config.PRM``): pretrains it as a language model on reference
   solutions (longer than the generator), samples the trained generator (temperature 1) on
   training problems, labels every prefix with the exact verifier
   (``task.prefix_correct(..., partial_steps=True)``) and fine-tunes the PRM's token
   verdicts on these labels (``particlekit.lm.prm``);
3. reports the generator's accuracy and the PRM's accuracy and AUC on held-out problems,
   and writes both models with ``equinox.tree_serialise_leaves`` (``--out``, default the
   package's ``weights/`` folder) with a JSON report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from particlekit.lm import config, task
from particlekit.lm.prm import ProcessRewardModel
from particlekit.lm.transformer import Transformer, generate

__all__ = [
    "auc",
    "check_solutions",
    "evaluate_generator",
    "evaluate_prm",
    "fit",
    "generator_batch",
    "generator_loss",
    "label_prefixes",
    "main",
    "prm_loss",
    "problem_prompts",
    "sample_solutions",
    "train_prm",
]

_CHUNK = 100  # optimiser steps per compiled call (one lax.scan)


# ----------------------------------------------------------------------------- generator
def generator_batch(key, batch_size: int):
    """A batch of training sequences: ``inputs (B, S - 1)``, ``targets (B, S - 1)`` and
    the loss ``mask (B, S - 1)`` (the solution tokens, end token included), with
    ``S = PROMPT_LENGTH + SOLUTION_LENGTH``."""
    probs = task.sample_problems(key, batch_size, split="train")
    prompt, solution, n = jax.vmap(task.problem_tokens)(probs.operands, probs.num_terms)
    seq = jnp.concatenate([prompt, solution], axis=1)
    target_pos = jnp.arange(1, seq.shape[1])
    p = task.PROMPT_LENGTH
    mask = (target_pos >= p) & (target_pos < p + n[:, None])
    return seq[:, :-1], seq[:, 1:], mask


def generator_loss(model, inputs, targets, mask):
    """Mean next-token cross-entropy over the masked positions."""
    logits = jax.vmap(model)(inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)


def fit(model, loss_fn, batch_fn, key, *, steps: int, learning_rate: float, warmup: int,
        weight_decay: float, log=print):  # fmt: skip
    """AdamW (warm-up then cosine decay, gradient clipping at norm 1) on
    ``loss_fn(model, *batch_fn(key))``, ``_CHUNK`` steps per compiled ``lax.scan``.

    Returns the trained model and the mean loss of each chunk."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, steps, end_value=0.05 * learning_rate
    )
    optimiser = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay)
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimiser.init(params)

    @jax.jit
    def chunk(params, opt_state, keys):
        def body(carry, k):
            params, opt_state = carry
            batch = batch_fn(k)
            objective = lambda p: loss_fn(eqx.combine(p, static), *batch)
            loss, grads = jax.value_and_grad(objective)(params)
            updates, opt_state = optimiser.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), keys)
        return params, opt_state, jnp.mean(losses)

    keys = jax.random.split(key, steps)
    history = []
    start = time.perf_counter()
    for i in range(0, steps, _CHUNK):
        params, opt_state, loss = chunk(params, opt_state, keys[i : i + _CHUNK])
        history.append(float(loss))
        log(f"  step {min(i + _CHUNK, steps):5d}  loss {history[-1]:.4f}  "
            f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return eqx.combine(params, static), history


def sample_solutions(model, key, prompts, temperature=1.0):
    """Continue each prompt ``(N, PROMPT_LENGTH)`` with ``MAX_NEW_TOKENS`` tokens at most:
    ``tokens (N, CONTEXT_LENGTH)`` and ``lengths (N,)`` (``temperature=0``: greedy; the
    temperature is traced, so both share one compilation)."""
    return _sample_solutions(model, key, prompts, jnp.asarray(temperature, jnp.float32))


@eqx.filter_jit
def _sample_solutions(model, key, prompts, temperature):
    keys = jax.random.split(key, prompts.shape[0])
    return jax.vmap(
        lambda k, p: generate(
            model, k, p, task.MAX_NEW_TOKENS, eos_id=task.EOS, temperature=temperature
        )
    )(keys, prompts)


@jax.jit
def check_solutions(tokens, lengths):
    """``(answer right, every step right)`` of complete samples ``tokens (N, L)``: two
    ``(N,)`` bool arrays."""
    answer = jax.vmap(task.answer_correct)(tokens, lengths)
    return answer, jax.vmap(task.prefix_correct)(tokens, lengths) & answer


@jax.jit
def problem_prompts(problems: task.Problems):
    """The prompts ``(N, PROMPT_LENGTH)`` of a batch of problems."""
    return jax.vmap(task.problem_tokens)(problems.operands, problems.num_terms)[0]


def evaluate_generator(model, problems: task.Problems, key, temperature: float = 0.0):
    """Fraction of ``problems`` whose final answer is right (``task.answer_correct``), and
    the fraction solved with every step right (``task.prefix_correct`` of an ended
    sequence)."""
    tokens, lengths = sample_solutions(model, key, problem_prompts(problems), temperature)
    answer, steps = check_solutions(tokens, lengths)
    return float(jnp.mean(answer)), float(jnp.mean(steps))


# ----------------------------------------------------------------------------- PRM
@jax.jit
def label_prefixes(tokens, lengths):
    """Token-level verifier labels of every prefix of sampled sequences.

    Parameters
    ----------
    tokens : Array of shape (N, L), int32
    lengths : Array of shape (N,), int32

    Returns
    -------
    labels : Array of shape (N, L), float32
        ``labels[i, t] = prefix_correct(tokens[i], t + 1, partial_steps=True)``: the
        solution up to token ``t`` is right so far.
    judged : Array of shape (N, L), bool
        The generated positions, ``PROMPT_LENGTH <= t < lengths[i]``.
    fresh : Array of shape (N, L), bool
        The judged positions whose prefix before them is right: there ``labels`` is the
        verdict on token ``t`` alone (the PRM's training targets).
    """
    size = tokens.shape[1]
    pos = jnp.arange(size)

    def one(t):
        return jax.vmap(lambda m: task.prefix_correct(t, m, partial_steps=True))(pos + 1)

    labels = jax.vmap(one)(tokens).astype(jnp.float32)
    judged = (pos >= task.PROMPT_LENGTH) & (pos < lengths[:, None])
    before = jnp.concatenate([jnp.ones_like(labels[:, :1]), labels[:, :-1]], axis=1)
    return labels, judged, judged & (before > 0.5)


def _token_logits(model, tokens):
    return jax.vmap(ProcessRewardModel(model, start=task.PROMPT_LENGTH).token_logits)(tokens)


def prm_loss(model, tokens, labels, fresh):
    """Binary cross-entropy of the PRM's token verdicts ``q_t`` over the ``fresh``
    positions (``label_prefixes``)."""
    q = jnp.where(fresh, _token_logits(model, tokens), 0.0)
    bce = optax.sigmoid_binary_cross_entropy(q, labels)
    return jnp.sum(bce * fresh) / jnp.maximum(jnp.sum(fresh), 1)


def auc(scores, labels) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half); NaN with one class.

    Examples
    --------
    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if not pos.size or not neg.size:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(order.size)
    ranks[order] = np.arange(1, order.size + 1)
    # average ranks of ties
    allv = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


@eqx.filter_jit
def _prm_scores(prm: ProcessRewardModel, tokens):
    q = jax.vmap(prm.token_logits)(tokens)
    judged = jnp.arange(tokens.shape[1]) >= prm.start
    log_p = jnp.cumsum(jnp.where(judged, jax.nn.log_sigmoid(q), 0.0), axis=1)
    return jax.nn.sigmoid(q), jnp.exp(log_p)


def evaluate_prm(prm: ProcessRewardModel, generator, problems: task.Problems, key,
                 samples_per_problem: int = 8) -> dict:  # fmt: skip
    """Score samples of ``generator`` (temperature 1) on ``problems`` with the PRM and
    compare with the verifier.

    Returns a dict: ``token_*``: the verdict ``sigmoid(q_t)`` on one new token against the
    verifier's (at the ``fresh`` positions); ``prefix_*``: ``P(prefix right)`` against
    ``prefix_correct(partial_steps=True)`` at every generated position; ``step_*``: the
    same at the ends of steps (``;`` and the end token); ``*_accuracy`` at threshold 1/2,
    ``*_auc``, ``*_positive`` (the fraction of right ones); and ``within_problem_auc``:
    the AUC of ``P(right)`` of complete samples against ``answer_correct`` among the
    samples of one problem, averaged over the problems with both outcomes (what steering
    needs: ranking the candidates of one problem).
    """
    prompts = jnp.repeat(problem_prompts(problems), samples_per_problem, axis=0)
    tokens, lengths = sample_solutions(generator, key, prompts, 1.0)
    labels, judged, fresh = label_prefixes(tokens, lengths)
    verdict, prob = (np.asarray(a) for a in _prm_scores(prm, tokens))
    labels = np.asarray(labels) > 0.5
    is_step = np.asarray((tokens == task.SEP) | (tokens == task.EOS)) & np.asarray(judged)
    out = {}
    for name, score, where in (
        ("token", verdict, np.asarray(fresh)),
        ("prefix", prob, np.asarray(judged)),
        ("step", prob, is_step),
    ):
        s, y = score[where], labels[where]
        out[f"{name}_accuracy"] = float(np.mean((s > 0.5) == y))
        out[f"{name}_auc"] = auc(s, y)
        out[f"{name}_positive"] = float(np.mean(y))
    n = np.asarray(lengths)
    final = prob[np.arange(n.size), n - 1].reshape(-1, samples_per_problem)
    right = np.asarray(check_solutions(tokens, lengths)[0]).reshape(-1, samples_per_problem)
    mixed = [auc(f, r) for f, r in zip(final, right, strict=True) if 0 < r.mean() < 1]
    out["within_problem_auc"] = float(np.mean(mixed)) if mixed else float("nan")
    return out


def train_prm(generator, key, log=print):
    """Train the PRM (``config.PRM``, ``config.PRM_TRAINING``): pretrain it as a language
    model on reference solutions, then fine-tune its token verdicts on the verifier's labels
    of the generator's samples. Returns the ``ProcessRewardModel``."""
    hp = config.PRM_TRAINING
    k_init, k_pre, k_prob, k_samp, k_train = jax.random.split(key, 5)
    batch_size = hp["batch_size"]
    log(f"PRM backbone: language model, {hp['backbone_steps']} steps")
    model = Transformer(config.PRM, k_init)
    model, _ = fit(
        model,
        generator_loss,
        lambda k: generator_batch(k, batch_size),
        k_pre,
        steps=hp["backbone_steps"],
        learning_rate=hp["backbone_learning_rate"],
        warmup=hp["warmup"],
        weight_decay=hp["weight_decay"],
        log=log,
    )
    probs = task.sample_problems(k_prob, hp["num_samples"], split="train")
    tokens, lengths = sample_solutions(generator, k_samp, problem_prompts(probs), 1.0)
    labels, _, fresh = label_prefixes(tokens, lengths)
    wrong = float(jnp.sum((1 - labels) * fresh) / jnp.sum(fresh))
    log(f"PRM fine-tuning: {hp['num_samples']} samples, {hp['steps']} steps; wrong tokens "
        f"{wrong:.3f}")  # fmt: skip

    def batch_fn(k):
        idx = jax.random.randint(k, (batch_size,), 0, tokens.shape[0])
        return tokens[idx], labels[idx], fresh[idx]

    model, _ = fit(
        model,
        prm_loss,
        batch_fn,
        k_train,
        steps=hp["steps"],
        learning_rate=hp["learning_rate"],
        warmup=hp["warmup"],
        weight_decay=hp["weight_decay"],
        log=log,
    )
    return ProcessRewardModel(model, start=task.PROMPT_LENGTH)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=config.WEIGHTS_DIR)
    parser.add_argument("--generator-steps", type=int, default=None)
    parser.add_argument("--eval-problems", type=int, default=512)
    args = parser.parse_args(argv)

    gen_hp = dict(config.GENERATOR_TRAINING)
    prm_hp = dict(config.PRM_TRAINING)
    if args.generator_steps is not None:
        gen_hp["steps"] = args.generator_steps
    heldout = task.heldout_problems(args.eval_problems)
    report = {"generator": {**gen_hp}, "prm": {**prm_hp}}
    t0 = time.perf_counter()

    print(f"generator {config.GENERATOR}")
    k_init, k_train, k_eval = jax.random.split(jax.random.key(gen_hp["seed"]), 3)
    model = Transformer(config.GENERATOR, k_init)
    batch_size = gen_hp["batch_size"]
    model, history = fit(
        model,
        generator_loss,
        lambda k: generator_batch(k, batch_size),
        k_train,
        steps=gen_hp["steps"],
        learning_rate=gen_hp["learning_rate"],
        warmup=gen_hp["warmup"],
        weight_decay=gen_hp["weight_decay"],
    )
    t_gen = time.perf_counter() - t0
    k_greedy, k_sampled = jax.random.split(k_eval)
    greedy = evaluate_generator(model, heldout, k_greedy, 0.0)
    sampled = evaluate_generator(model, heldout, k_sampled, 1.0)
    report["generator"].update(
        final_loss=history[-1],
        train_seconds=round(t_gen, 1),
        heldout_problems=args.eval_problems,
        greedy_answer_accuracy=greedy[0],
        greedy_all_steps_accuracy=greedy[1],
        sampled_answer_accuracy=sampled[0],
        sampled_all_steps_accuracy=sampled[1],
    )
    print(f"generator trained in {t_gen:.0f} s; held-out answer accuracy greedy "
          f"{greedy[0]:.3f}, sampled {sampled[0]:.3f}")  # fmt: skip

    t1 = time.perf_counter()
    k_prm, k_eval = jax.random.split(jax.random.key(prm_hp["seed"]))
    prm = train_prm(model, k_prm)
    t_prm = time.perf_counter() - t1
    quality = evaluate_prm(prm, model, task.heldout_problems(args.eval_problems // 4), k_eval)
    report["prm"].update(train_seconds=round(t_prm, 1), **quality)
    print(
        f"PRM trained in {t_prm:.0f} s (sampling included); held-out: "
        + ", ".join(f"{k} {v:.3f}" for k, v in quality.items())
    )

    args.out.mkdir(parents=True, exist_ok=True)
    gen_file = args.out / config.GENERATOR_FILE.name
    prm_file = args.out / config.PRM_FILE.name
    eqx.tree_serialise_leaves(gen_file, model)
    eqx.tree_serialise_leaves(prm_file, prm.model)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    report["files"] = {f.name: f.stat().st_size for f in (gen_file, prm_file)}
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {gen_file} and {prm_file} in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
