"""Inference-time scaling of a small transformer: particle filtering over reasoning steps
against search baselines, with the shipped arithmetic models.

``particlekit.lm`` ships a 2-layer transformer that writes the running sums of 3 or 4
numbers (``12+7+30=19;49;A49$``, each step ended by ``;``), trained on purpose only until
greedy decoding gets about half of the held-out problems right, an exact verifier of
partial solutions, and a learned process reward model (PRM) trained on the verifier's
labels of the generator's samples.

On 64 held-out problems and for a budget of N = 4, 16, 64 generated sequences per problem,
this compares the final-answer accuracy (the fraction of problems whose chosen answer is
right) of

- sampling + majority vote: N samples at temperature 1, the most frequent final answer;
- best-of-N with the learned PRM: the same N samples, the one the PRM scores highest;
- particle filtering over reasoning steps (``pk.steering.smc(..., separator_id=task.SEP)``)
  with the PRM as step reward, ``variant="softmax"`` (Puri et al. 2025) and
  ``variant="exact"``, the answer chosen by a vote weighted with the final weights;
- DVTS (``pk.steering.beam_search(..., diverse=True)``, subtrees of 4) with the PRM, the
  answer of the best final sequence;
- particle filtering with the exact verifier (0 / -inf) as step reward: it keeps only
  particles whose every step is right;

with greedy decoding for reference. ``benchmarks/bench_lm_steering.py`` runs more methods,
budgets and problems, and times them.

Run: ``python3 examples/lm_steering.py`` (about 2 minutes on a 2-core CPU, most of it
compilation). Writes ``examples/lm_steering.png``.
"""

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

import particlekit as pk
from particlekit.lm import pretrained, task, train, transformer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NUM_PROBLEMS = 64
BUDGETS = (4, 16, 64)
OUTPUT = Path(__file__).resolve().with_name("lm_steering.png")

model = pretrained.arithmetic_model()
prm = pretrained.arithmetic_prm()
problems = task.heldout_problems(NUM_PROBLEMS)
prompts = train.problem_prompts(problems)


def solve(key, prompt, method, reward, n):
    """Whether each answer rule picks the right final answer of one problem: a dict of
    booleans, from one run of ``method`` with budget ``n``."""
    lm, cache = transformer.steering_model(model, prompt)
    common = dict(num_particles=n, max_length=task.MAX_NEW_TOKENS, eos_id=task.EOS,
                  prompt=prompt, init_cache=cache, separator_id=task.SEP,
                  max_steps=task.MAX_STEPS + 2)  # fmt: skip
    if method == "sample":  # plain samples, scored by the reward, never resampled
        res = pk.steering.smc(key, lm, reward, ess_threshold=0.0, **common)
    elif method == "dvts":
        res = pk.steering.beam_search(key, lm, reward, beam_width=4, diverse=True, **common)
    else:
        res = pk.steering.smc(key, lm, reward, variant=method, **common)
    answers, valid = jax.vmap(task.final_answer)(res.sequences, res.lengths)
    right = jax.vmap(task.answer_correct)(res.sequences, res.lengths)

    def chosen(answer):  # the chosen answer is the right total
        return jnp.any(right & valid & (answers == answer))

    return {
        "majority": chosen(pk.steering.weighted_vote(answers, None, valid)[0]),
        "best": right[pk.steering.best_of(res)],
        "weighted": chosen(pk.steering.weighted_vote(answers, res.weights, valid)[0]),
    }


def accuracy(key, method, reward, n):
    """Per-rule accuracy over the problems; at most 1024 particles vmapped at once (with
    4096, jax 0.10.2 on CPU computed wrong logits inside a vmapped smc)."""
    batch = max(1, min(NUM_PROBLEMS, 1024 // n))
    run = jax.jit(lambda ks, ps: jax.lax.map(
        lambda a: solve(*a, method, reward, n), (ks, ps), batch_size=batch))  # fmt: skip
    out = run(jax.random.split(key, NUM_PROBLEMS), prompts)
    return {rule: float(jnp.mean(right)) for rule, right in out.items()}


# label: (method, reward, answer rule); the first two share one run
methods = {
    "sampling + majority vote": ("sample", prm, "majority"),
    "best-of-N (PRM)": ("sample", prm, "best"),
    "PF softmax (PRM)": ("softmax", prm, "weighted"),
    "PF exact (PRM)": ("exact", prm, "weighted"),
    "DVTS (PRM)": ("dvts", prm, "best"),
    "PF exact (verifier)": ("exact", task.verifier_log_reward, "weighted"),
}

start = time.perf_counter()
greedy, _ = train.evaluate_generator(model, problems, jax.random.key(0), temperature=0.0)
results = {name: [] for name in methods}
for n in BUDGETS:
    key = jax.random.fold_in(jax.random.key(1), n)
    runs = {}
    for name, (method, reward, rule) in methods.items():
        run_id = (method, id(reward))
        if run_id not in runs:
            runs[run_id] = accuracy(key, method, reward, n)
        results[name].append(runs[run_id][rule])


def se(p):
    return math.sqrt(p * (1 - p) / NUM_PROBLEMS)


report = pretrained.training_report()
print(f"{NUM_PROBLEMS} held-out problems; greedy decoding: {greedy:.3f} ± {se(greedy):.3f}")
print(f"learned PRM on held-out samples: token AUC {report['prm']['token_auc']:.3f}, "
      f"within-problem AUC {report['prm']['within_problem_auc']:.3f}")  # fmt: skip
print(f"{'final-answer accuracy':28s}" + "".join(f"N = {n:<12d}" for n in BUDGETS))
for name, accs in results.items():
    print(f"{name:28s}" + "".join(f"{a:.3f} ± {se(a):.3f}   " for a in accs))
print(f"({time.perf_counter() - start:.0f} s)")

fig, ax = plt.subplots(figsize=(8.4, 4.2))
for i, ((name, accs), marker) in enumerate(zip(results.items(), "osD^vP", strict=True)):
    shifted = [n * 2 ** (0.04 * (i - 2.5)) for n in BUDGETS]  # error bars side by side
    ax.errorbar(shifted, accs, yerr=[se(a) for a in accs], marker=marker, capsize=3,
                linestyle=":" if "verifier" in name else "-", label=name)  # fmt: skip
ax.axhline(greedy, color="grey", linestyle="--", label="greedy decoding")
ax.set_xscale("log", base=2)
ax.set_xticks(BUDGETS, [str(n) for n in BUDGETS])
ax.set_xlabel("budget N (sequences generated per problem)")
ax.set_ylabel("final-answer accuracy (± standard error)")
ax.set_ylim(0, 1.02)
ax.set_title(f"Inference-time scaling of the shipped transformer ({NUM_PROBLEMS} problems)",
             fontsize=10)  # fmt: skip
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.tight_layout()
fig.savefig(OUTPUT, dpi=120)
print(f"wrote {OUTPUT}")
