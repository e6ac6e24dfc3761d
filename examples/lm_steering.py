"""Steering a small transformer with process rewards: the shipped arithmetic models.

``particlekit.lm`` ships a 2-layer transformer that writes the running sums of 3 or 4
numbers (``12+7+30=19;49;A49$``), trained on purpose only until greedy decoding gets about
half of the held-out problems right, an exact verifier of partial solutions, and a learned
process reward model (PRM) trained on the verifier's labels of the generator's samples.

On 64 held-out problems and for N = 4, 16, 64 particles per problem, this compares the
final-answer accuracy of

- plain sampling (temperature 1): the fraction of the N samples that are right;
- ``pk.steering.smc`` with the learned PRM as reward, ``variant="exact"`` (target
  ``p(x) PRM(x)``) and ``variant="softmax"`` (Puri et al. 2025);
- ``pk.steering.smc`` with the exact verifier (0 / -inf) as reward: the target is the
  generator conditioned on a solution whose every step is right;

the accuracy of SMC being the weight of the right answers in the final population. Greedy
decoding is shown for reference.

Run: ``python3 examples/lm_steering.py`` (about a minute on a 2-core CPU, most of it
compilation). Writes ``examples/lm_steering.png``.
"""

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
PARTICLES = (4, 16, 64)
OUTPUT = Path(__file__).resolve().with_name("lm_steering.png")

model = pretrained.arithmetic_model()
prm = pretrained.arithmetic_prm()
problems = task.heldout_problems(NUM_PROBLEMS)
prompts = train.problem_prompts(problems)


def plain_accuracy(key, n):
    """Fraction of right final answers among ``n`` samples per problem."""
    tokens, lengths = train.sample_solutions(model, key, jnp.repeat(prompts, n, axis=0))
    return float(jnp.mean(train.check_solutions(tokens, lengths)[0]))


def steered_accuracy(key, n, reward, variant):
    """Weight of the right final answers after SMC, averaged over the problems."""

    def one(k, prompt):
        lm, cache = transformer.steering_model(model, prompt)
        res = pk.steering.smc(k, lm, reward, num_particles=n, max_length=task.MAX_NEW_TOKENS,
                              eos_id=task.EOS, prompt=prompt, init_cache=cache,
                              variant=variant)  # fmt: skip
        right = jax.vmap(task.answer_correct)(res.sequences, res.lengths)
        return jnp.sum(res.weights * right)

    # vmapped over at most 1024 particles at a time: with 4096 (16 problems x 256
    # particles) jax 0.10.2 on CPU computed wrong logits inside the vmapped smc
    chunk = max(1, min(NUM_PROBLEMS, 1024 // n))
    run = jax.jit(lambda ks, ps: jax.lax.map(lambda a: one(*a), (ks, ps), batch_size=chunk))
    return float(jnp.mean(run(jax.random.split(key, NUM_PROBLEMS), prompts)))


methods = {
    "sampling": None,
    "SMC + learned PRM (exact)": (prm, "exact"),
    "SMC + learned PRM (softmax)": (prm, "softmax"),
    "SMC + exact verifier": (task.verifier_log_reward, "exact"),
}

start = time.perf_counter()
greedy, _ = train.evaluate_generator(model, problems, jax.random.key(0), temperature=0.0)
results = {name: [] for name in methods}
keys = iter(jax.random.split(jax.random.key(1), len(PARTICLES) * len(methods)))
for n in PARTICLES:
    for name, how in methods.items():
        key = next(keys)
        acc = plain_accuracy(key, n) if how is None else steered_accuracy(key, n, *how)
        results[name].append(acc)

report = pretrained.training_report()
print(f"{NUM_PROBLEMS} held-out problems; greedy decoding: {greedy:.3f}")
print(f"learned PRM on held-out samples: token AUC {report['prm']['token_auc']:.3f}, "
      f"within-problem AUC {report['prm']['within_problem_auc']:.3f}")  # fmt: skip
print(f"{'final-answer accuracy':32s}" + "".join(f"N = {n:<6d}" for n in PARTICLES))
for name, accs in results.items():
    print(f"{name:32s}" + "".join(f"{a:<10.3f}" for a in accs))
print(f"({time.perf_counter() - start:.0f} s)")

fig, ax = plt.subplots(figsize=(6, 4))
for (name, accs), marker in zip(results.items(), "osD^", strict=True):
    ax.plot(PARTICLES, accs, marker=marker, label=name)
ax.axhline(greedy, color="grey", linestyle="--", label="greedy decoding")
ax.set_xscale("log", base=2)
ax.set_xticks(PARTICLES, [str(n) for n in PARTICLES])
ax.set_xlabel("particles (samples) per problem")
ax.set_ylabel("final-answer accuracy")
ax.set_ylim(0, 1.02)
ax.set_title(f"Steering the shipped transformer ({NUM_PROBLEMS} held-out problems)", fontsize=10)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(OUTPUT, dpi=120)
print(f"wrote {OUTPUT}")
