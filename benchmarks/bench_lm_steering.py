"""Inference-time scaling of the shipped arithmetic transformer (issue #16): final-answer
accuracy against the budget N = 4, 8, 16, 32, 64 generations per problem, for search
baselines and particle filtering over reasoning steps, with the exact verifier and with the
learned process reward model (PRM) as the step reward.

Model and task: ``pk.lm.arithmetic_model()`` writes the running sums of 3 or 4 numbers
(``12+7+30=19;49;A49$``); every step ends with ``task.SEP`` (``;``). Rewards:
``task.verifier_log_reward`` (0 / -inf: every step so far right) and
``pk.lm.arithmetic_prm()`` (``log P(prefix right)``). Problems: ``task.heldout_problems``.

Methods (N = the budget: sequences generated in parallel per problem; every step-level run
uses ``separator_id=task.SEP`` and at most ``task.MAX_STEPS + 2`` steps):

- greedy decoding (budget-independent reference, ``train.evaluate_generator``);
- sampling + majority vote: N plain samples, ``weighted_vote(answers, None, valid)``
  (reward-free);
- best-of-N: the same N plain samples (``pk.steering.smc(..., ess_threshold=0.0)``, which
  scores each sequence with the reward and never resamples), the one of highest final
  reward (``best_of``); with the verifier this is pass@N;
- weighted majority vote: the same samples, weights ``exp(final reward)``;
- particle filtering at step level, ``variant="softmax"`` (Puri et al. 2025: resampling on
  the current reward at every step) and ``variant="exact"`` (reward ratios, resampling when
  ESS < N / 2); the answer is the weighted vote with ``res.weights``;
- beam search and DVTS (``pk.steering.beam_search``, ``diverse=False`` / ``True``), beam
  width M = 4 at every N (at N = 4 both keep a single prefix and are the same algorithm);
  the answer is ``best_of`` (highest final reward), and, in two more rows, the vote weighted
  by ``exp(final reward)`` over the final population;
- parallel tempering of particle Gibbs chains (``pk.steering.parallel_tempering``, when the
  library has it): temperatures (1, 4), 4 particles per conditional sweep and
  ``K = N / 8 - 1`` iterations, so that the initial sweep and the K sweeps of both chains
  generate N sequences; the answer is the vote over the cold chain's K references weighted by
  ``exp(final reward)`` (a plain majority vote over a short chain lets the references of the
  burn-in outvote a right one found late). Budgets N >= 16 only.

Every method maps over the problems with ``jax.lax.map(..., batch_size=1024 // particles)``
inside one ``jax.jit``: at most 1024 particles are vmapped at once (with 4096, JAX 0.10.2
on CPU computed wrong logits inside a vmapped ``smc``; see docs/language-models.md).

Reported per (reward, method, N): accuracy (fraction of problems whose selected final answer
is right) with its binomial standard error ``sqrt(p (1 - p) / n)``; compile time
(``jax.jit(...).lower(...).compile()``); wall time of the compiled call (minimum of
``--repeats`` calls, all configurations timed round-robin); generated tokens and tokens per
second. Tokens are counted exactly: a counter carried in every particle's cache is raised,
after each move, by the tokens the whole population appended in that move (all particles
hold the same value, so resampling does not change it). This wraps the library's internal
``particlekit.steering.smc.extend_move`` for the run (``TokenCounter``); without it the
script falls back to the lineage count ``sum(lengths) - N * prompt length``, which counts
shared prefixes of resampled particles once per descendant and misses the tokens of
discarded particles. (The vectorised generator also evaluates finished and waiting
particles; that compute is not counted.) Parallel tempering: the budget times the mean
generated length of its references (an approximation).

Paired differences (PF against DVTS, beam search, best-of-N and weighted vote on the same
problems): mean difference of the per-problem 0/1 outcomes with its paired standard error;
``|z| < 2`` is a tie.

Then (a) the steering overhead at 64 particles: step-level PF (softmax, resampling at every
step) with a reward of 0 against plain sampling of 64 sequences per problem with the same
cached model: ``pk.steering.smc`` at step and at token level with ``ess_threshold=0``,
``transformer.generate`` under the same ``lax.map`` / ``vmap``, and
``train.sample_solutions`` on the repeated prompts; (b) cached against uncached generation:
randomly initialised transformers of the shipped model's width, heads and depth with a
context of 32, 128 and 512 positions, ``pk.steering.smc`` with 16 particles and a reward of
0, the end token masked so that every sequence runs to the full length, with the cached
``steering_model`` and with a step function that runs the full forward pass over the buffer
at every token, next to ``transformer.generate`` of as many sequences of the same length
(the same cached model without steering: ``x cached`` below 1 is the cached ``smc``'s
overhead per token).

Run: ``python benchmarks/bench_lm_steering.py [--quick] [--problems 128] [--out FILE.json]``
(128 problems by default, to stay near 25 minutes on 2 shared cores: 18-25 minutes there, of
which the 61 compilations of 5-20 s each take about 9; ``--quick``: 32 problems, N = 4, 16,
about 10 minutes at load 7, compile-bound; ``--skip-accuracy``: only (a) and (b)).
The results in ``benchmarks/README.md`` are from ``--problems 256`` (30 minutes at load 5-7).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import particlekit as pk
from particlekit.lm import config, pretrained, task, train, transformer

# the module (``particlekit.steering.smc`` as an attribute is the function)
smc_module = importlib.import_module("particlekit.steering.smc")

BUDGETS = (4, 8, 16, 32, 64)
QUICK_BUDGETS = (4, 16)
BEAM_WIDTH = 4
MAX_STEPS = task.MAX_STEPS + 2
MAX_VMAPPED = 1024  # particles vmapped at once (see the module docstring)
PT_TEMPERATURES = (1.0, 4.0)
PT_PARTICLES = 4
OVERHEAD_PARTICLES = 64
CACHE_PARTICLES = 16
CACHE_CONTEXTS = (32, 128, 512)

#: (name in the table, method run, selection rule)
ROWS = (
    ("sampling + majority vote", "sample", "majority"),
    ("best-of-N", "sample", "best_of"),
    ("weighted majority vote", "sample", "weighted"),
    ("PF softmax (step)", "pf_softmax", "smc_vote"),
    ("PF exact (step)", "pf_exact", "smc_vote"),
    ("beam search (M = 4)", "beam", "best_of"),
    ("DVTS (M = 4)", "dvts", "best_of"),
    ("beam search + weighted vote", "beam", "weighted"),
    ("DVTS + weighted vote", "dvts", "weighted"),
    ("parallel tempering (T = 1, 4)", "pt", "weighted"),
)
#: answer rules recorded for every run (``other_rules`` in the JSON)
RULES = ("best_of", "majority", "weighted", "smc_vote", "weighted_all_chains")
COMPARISONS = (
    ("PF softmax (step)", "DVTS (M = 4)"),
    ("PF softmax (step)", "beam search (M = 4)"),
    ("PF softmax (step)", "best-of-N"),
    ("PF softmax (step)", "DVTS + weighted vote"),
    ("PF softmax (step)", "beam search + weighted vote"),
    ("PF softmax (step)", "weighted majority vote"),
    ("PF exact (step)", "DVTS (M = 4)"),
    ("PF exact (step)", "best-of-N"),
    ("PF exact (step)", "PF softmax (step)"),
)


def say(*args):
    print(*args, flush=True)


def zero_reward(tokens, length):
    """A trivial reward: ``log phi = 0`` for every prefix."""
    del tokens, length
    return jnp.zeros(())


# ------------------------------------------------------------------------ token counter
class CountingLM(eqx.Module):
    """A cached step function whose cache is ``(kv_cache, count)``; the count passes
    through unchanged (``TokenCounter`` raises it after each move)."""

    lm: eqx.Module

    def __call__(self, tokens, length, cache):
        kv, count = cache
        logits, kv = self.lm(tokens, length, kv)
        return logits, (kv, count)


class TokenCounter(contextlib.AbstractContextManager):
    """While active, ``pk.steering.smc`` with a ``CountingLM`` adds to every particle's
    count the tokens appended by the whole population in each move: afterwards
    ``res.final_state.particles.cache[1][0]`` is the number of tokens generated.

    Wraps ``particlekit.steering.smc.extend_move`` (library internals, looked up when
    ``sweep`` is traced); ``available`` is False when that name is gone."""

    def __init__(self):
        self.original = getattr(smc_module, "extend_move", None)
        self.available = callable(self.original)

    def __enter__(self):
        if not self.available:
            return self
        original = self.original

        def extend_move(step_fn, reward_fn, cfg, reference=None):
            move = original(step_fn, reward_fn, cfg, reference)
            if not isinstance(step_fn, CountingLM):
                return move

            def counted(key, xs, inputs):
                new = move(key, xs, inputs)
                added = jnp.sum(new.length - xs.length)
                kv, count = new.cache
                return new._replace(cache=(kv, xs.cache[1] + added.astype(count.dtype)))

            return counted

        smc_module.extend_move = extend_move
        return self

    def __exit__(self, *exc):
        if self.available:
            smc_module.extend_move = self.original
        return False


# ------------------------------------------------------------------------ compile / time
def compile_call(fn, *args):
    """``jax.jit`` of ``fn(*args)`` with the non-array leaves of ``args`` (model
    configurations) static: returns ``(call, compile seconds)``, ``call()`` blocking."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    jitted = jax.jit(lambda d: fn(*eqx.combine(d, static)))
    start = time.perf_counter()
    exe = jitted.lower(dynamic).compile()
    seconds = time.perf_counter() - start

    def call():
        return jax.block_until_ready(exe(dynamic))

    return call, seconds


def timed(call):
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def round_robin(calls: dict, repeats: int, first: dict | None = None) -> dict:
    """Wall times of ``repeats`` calls of each entry, interleaved; ``first`` holds times
    already measured (they count as the first repeat)."""
    times = {name: ([] if first is None else [first[name]]) for name in calls}
    while min(len(t) for t in times.values()) < repeats:
        for name, call in calls.items():
            if len(times[name]) < repeats:
                times[name].append(timed(call)[1])
    return times


# ------------------------------------------------------------------------ methods
def batch_size(particles_per_problem: int, num_problems: int) -> int:
    return max(1, min(num_problems, MAX_VMAPPED // particles_per_problem))


def pt_iterations(n: int) -> int:
    """Iterations of parallel tempering at budget ``n`` (0: the budget is too small)."""
    return max(0, n // (len(PT_TEMPERATURES) * PT_PARTICLES) - 1)


def method_run(method: str, n: int, num_problems: int, counting: bool):
    """``run(model, reward, keys, prompts) -> dict`` of per-problem outcomes of one method
    at budget ``n``, mapped over the problems."""

    def one(model, reward, key, prompt):
        lm, kv = transformer.steering_model(model, prompt)
        step_fn, cache = (CountingLM(lm), (kv, jnp.zeros((), jnp.int32))) if counting else (lm, kv)
        common = dict(
            max_length=task.MAX_NEW_TOKENS, eos_id=task.EOS, prompt=prompt, init_cache=cache,
            separator_id=task.SEP, max_steps=MAX_STEPS,
        )  # fmt: skip
        if method == "pt":
            pt = pk.steering.parallel_tempering(
                key, step_fn, reward, num_particles=PT_PARTICLES,
                num_iterations=pt_iterations(n), temperatures=jnp.asarray(PT_TEMPERATURES),
                **common,
            )  # fmt: skip
            seqs = pt.sequences.reshape(-1, pt.sequences.shape[-1])  # (J K, L), cold first
            lengths, log_phi = pt.lengths.reshape(-1), pt.log_potentials.reshape(-1)
            answers, valid = jax.vmap(task.final_answer)(seqs, lengths)
            right = jax.vmap(task.answer_correct)(seqs, lengths)
            cold = jnp.arange(answers.shape[0]) < pt.sequences.shape[1]

            def chosen(weights):
                answer = pk.steering.weighted_vote(answers, weights, valid)[0]
                return jnp.any(right & valid & (answers == answer))

            generated = jnp.mean(lengths - prompt.shape[0]) * n
            return {
                "weighted": chosen(jnp.where(cold, jnp.exp(log_phi), 0.0)),
                "majority": chosen(cold.astype(jnp.float32)),
                "weighted_all_chains": chosen(jnp.exp(log_phi)),
                "tokens": generated,
                "lineage_tokens": generated,
                "swap_acceptance": pt.swap_acceptance[0],
            }
        if method in ("beam", "dvts"):
            res = pk.steering.beam_search(
                key, step_fn, reward, num_particles=n, beam_width=BEAM_WIDTH,
                diverse=method == "dvts", **common,
            )  # fmt: skip
        elif method == "sample":
            res = pk.steering.smc(key, step_fn, reward, num_particles=n, ess_threshold=0.0,
                                  **common)  # fmt: skip
        elif method in ("pf_softmax", "pf_exact"):
            res = pk.steering.smc(key, step_fn, reward, num_particles=n,
                                  variant=method.removeprefix("pf_"), **common)  # fmt: skip
        else:
            raise ValueError(method)
        answers, valid = jax.vmap(task.final_answer)(res.sequences, res.lengths)
        right = jax.vmap(task.answer_correct)(res.sequences, res.lengths)

        def chosen(answer):
            return jnp.any(right & valid & (answers == answer))

        lineage = jnp.sum(res.lengths - prompt.shape[0])
        return {
            "best_of": right[pk.steering.best_of(res)],
            "majority": chosen(pk.steering.weighted_vote(answers, None, valid)[0]),
            "weighted": chosen(
                pk.steering.weighted_vote(answers, jnp.exp(res.log_potentials), valid)[0]
            ),
            "smc_vote": chosen(pk.steering.weighted_vote(answers, res.weights, valid)[0]),
            "tokens": res.final_state.particles.cache[1][0] if counting else lineage,
            "lineage_tokens": lineage,
            "fraction_right": jnp.mean(right),
        }

    particles = len(PT_TEMPERATURES) * PT_PARTICLES if method == "pt" else n
    size = batch_size(particles, num_problems)

    def run(model, reward, keys, prompts):
        return jax.lax.map(lambda a: one(model, reward, *a), (keys, prompts), batch_size=size)

    return run


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


# ------------------------------------------------------------------------ main table
def accuracy_table(args, model, prm, problems, prompts, counter: TokenCounter):
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    n_prob = int(prompts.shape[0])
    has_pt = hasattr(pk.steering, "parallel_tempering")
    if not has_pt:
        say("pk.steering.parallel_tempering is absent: its rows are skipped")
    rewards = {"verifier": task.verifier_log_reward, "PRM": prm}

    configs = []  # (reward name, method, n)
    for n in budgets:
        configs.append(("none", "sample", n))
        for rname in rewards:
            for method in ("sample", "pf_softmax", "pf_exact", "beam", "dvts", "pt"):
                if method == "pt" and (not has_pt or pt_iterations(n) < 1):
                    continue
                configs.append((rname, method, n))

    # greedy decoding: budget-independent
    greedy_acc, greedy_steps = train.evaluate_generator(
        model, problems, jax.random.key(0), temperature=0.0
    )

    def greedy_call():
        tokens, lengths = train.sample_solutions(model, jax.random.key(0), prompts, 0.0)
        return jax.block_until_ready((tokens, lengths))

    (g_tokens, g_lengths), greedy_first = timed(greedy_call)

    calls, compile_s, outcomes, first = {}, {}, {}, {}
    for i, (rname, method, n) in enumerate(configs):
        reward = zero_reward if rname == "none" else rewards[rname]
        keys = jax.random.split(jax.random.fold_in(jax.random.key(1), n), n_prob)
        run = method_run(method, n, n_prob, counter.available)
        call, seconds = compile_call(run, model, reward, keys, prompts)
        out, wall = timed(call)
        name = (rname, method, n)
        calls[name], compile_s[name], first[name] = call, seconds, wall
        outcomes[name] = {k: np.asarray(v) for k, v in out.items()}
        say(f"[{i + 1}/{len(configs)}] {rname:8s} {method:10s} N={n:<3d} compile {seconds:5.1f} s"
            f"  run {wall:6.2f} s  load {os.getloadavg()[0]:.1f}")  # fmt: skip
    calls["greedy"], first["greedy"] = greedy_call, greedy_first
    say(f"timing: {args.repeats} round-robin repeats of {len(calls)} compiled calls ...")
    times = round_robin(calls, args.repeats, first)

    greedy_wall = min(times["greedy"])
    greedy_tokens = int(np.sum(np.asarray(g_lengths) - prompts.shape[1]))
    results = [
        {
            "reward": "none", "method": "greedy decoding", "N": 1, "accuracy": greedy_acc,
            "se": binomial_se(greedy_acc, n_prob), "problems": n_prob,
            "all_steps_right": greedy_steps, "wall_s": greedy_wall,
            "wall_s_all": times["greedy"], "compile_s": None, "tokens": greedy_tokens,
            "tokens_per_s": greedy_tokens / greedy_wall,
        }
    ]  # fmt: skip
    per_problem = {}
    for rname in ("verifier", "PRM"):
        for label, method, rule in ROWS:
            for n in budgets:
                src = ("none", "sample", n) if rule == "majority" and method == "sample" else None
                name = src or (rname, method, n)
                if name not in outcomes:
                    continue
                out = outcomes[name]
                right = out[rule].astype(bool)
                acc = float(right.mean())
                wall = min(times[name])
                tokens = float(np.sum(out["tokens"]))
                row = {
                    "reward": "none" if src else rname, "method": label, "N": n,
                    "accuracy": acc, "se": binomial_se(acc, n_prob), "problems": n_prob,
                    "wall_s": wall, "wall_s_all": times[name], "compile_s": compile_s[name],
                    "tokens": tokens, "lineage_tokens": float(np.sum(out["lineage_tokens"])),
                    "tokens_exact": bool(counter.available and method != "pt"),
                    "tokens_per_s": tokens / wall,
                    "other_rules": {
                        k: float(np.mean(v)) for k, v in out.items()
                        if k in RULES
                    },
                }  # fmt: skip
                if "fraction_right" in out:
                    row["mean_fraction_right"] = float(np.mean(out["fraction_right"]))
                if "swap_acceptance" in out:
                    row["swap_acceptance"] = float(np.nanmean(out["swap_acceptance"]))
                if src:
                    if rname == "verifier":  # reward-free: listed once
                        results.append(row)
                else:
                    results.append(row)
                per_problem[(rname, label, n)] = right

    comparisons = []
    for rname in ("verifier", "PRM"):
        for a, b in COMPARISONS:
            for n in budgets:
                if (rname, a, n) not in per_problem or (rname, b, n) not in per_problem:
                    continue
                d = per_problem[(rname, a, n)].astype(float) - per_problem[(rname, b, n)]
                se = float(d.std(ddof=1) / math.sqrt(len(d))) if d.std() > 0 else 0.0
                diff = float(d.mean())
                z = diff / se if se > 0 else (0.0 if diff == 0 else math.inf)
                verdict = "tie" if abs(z) < 2 else (f"{a} better" if z > 0 else f"{b} better")
                comparisons.append(dict(reward=rname, a=a, b=b, N=n, diff=diff, se=se, z=z,
                                        verdict=verdict))  # fmt: skip
    outcomes_json = {
        f"{r} | {m} | {n}": v.astype(int).tolist() for (r, m, n), v in per_problem.items()
    }
    return budgets, results, comparisons, outcomes_json


# ------------------------------------------------------------------------ (a) overhead
def overhead(args, model, prompts):
    n = OVERHEAD_PARTICLES
    n_prob = int(prompts.shape[0])
    size = batch_size(n, n_prob)
    keys = jax.random.split(jax.random.key(2), n_prob)

    def smc_run(kind):
        def one(model, key, prompt):
            lm, cache = transformer.steering_model(model, prompt)
            common = dict(max_length=task.MAX_NEW_TOKENS, eos_id=task.EOS, prompt=prompt,
                          init_cache=cache, num_particles=n)  # fmt: skip
            step = dict(separator_id=task.SEP, max_steps=MAX_STEPS)
            if kind == "pf":
                res = pk.steering.smc(key, lm, zero_reward, variant="softmax", **step, **common)
            elif kind == "step":
                res = pk.steering.smc(key, lm, zero_reward, ess_threshold=0.0, **step, **common)
            else:
                res = pk.steering.smc(key, lm, zero_reward, ess_threshold=0.0, **common)
            return res.sequences, res.lengths

        return lambda model, keys, prompts: jax.lax.map(
            lambda a: one(model, *a), (keys, prompts), batch_size=size
        )

    def generate_run(model, keys, prompts):
        def one(key, prompt):
            return jax.vmap(
                lambda k: transformer.generate(
                    model, k, prompt, task.MAX_NEW_TOKENS, eos_id=task.EOS
                )
            )(jax.random.split(key, n))

        return jax.lax.map(lambda a: one(*a), (keys, prompts), batch_size=size)

    entries = {
        "PF softmax, step level, reward 0": smc_run("pf"),
        "smc ess_threshold=0, step level": smc_run("step"),
        "smc ess_threshold=0, token level": smc_run("token"),
        "transformer.generate (lax.map + vmap)": generate_run,
    }
    calls, compile_s, lengths = {}, {}, {}
    for name, fn in entries.items():
        calls[name], compile_s[name] = compile_call(fn, model, keys, prompts)
        lengths[name] = np.asarray(calls[name]()[1])
    repeated = jnp.repeat(prompts, n, axis=0)

    def sample_solutions():
        return jax.block_until_ready(train.sample_solutions(model, jax.random.key(3), repeated))

    _, first = timed(sample_solutions)
    name = f"train.sample_solutions ({n_prob * n} prompts, one vmap)"
    calls[name], lengths[name] = sample_solutions, np.asarray(sample_solutions()[1])
    compile_s[name] = None
    times = round_robin(calls, args.overhead_repeats)
    pf = "PF softmax, step level, reward 0"
    rows = []
    for name in calls:
        tokens = float(np.sum(lengths[name] - prompts.shape[1]))
        rows.append(dict(
            call=name, problems=n_prob, particles=n, compile_s=compile_s[name],
            min_s=min(times[name]), median_s=float(np.median(times[name])),
            all_s=times[name], tokens=tokens,
            pf_overhead_min=min(times[pf]) / min(times[name]) - 1,
            pf_overhead_median=float(np.median(times[pf]) / np.median(times[name])) - 1,
        ))  # fmt: skip
    return rows


# ------------------------------------------------------------------------ (b) KV cache
class NoEos(eqx.Module):
    """A step function with the end token's logit at -inf: sequences run to full length.
    ``cached``: ``(tokens, length, cache) -> (logits, cache)`` through ``SteeringLM``;
    else the full forward pass ``model(tokens)[length - 1]`` at every call."""

    fn: eqx.Module
    cached: bool = eqx.field(static=True)

    def select_cache(self, keep, old, new):
        return self.fn.select_cache(keep, old, new)

    def __call__(self, tokens, length, *cache):
        if self.cached:
            logits, new = self.fn(tokens, length, *cache)
            return logits.at[task.EOS].set(-jnp.inf), new
        logits = self.fn(tokens)[length - 1]
        return logits.at[task.EOS].set(-jnp.inf)


def cache_cost(args):
    prompt = jnp.asarray(task.encode_prompt([12, 7, 30]))
    calls, meta = {}, {}
    for ctx in args.cache_contexts:
        cfg = config.GENERATOR._replace(context_length=ctx)
        model = transformer.Transformer(cfg, jax.random.key(ctx))
        steps = ctx - prompt.shape[0]
        lm, init = transformer.steering_model(model, prompt)
        for cached in (True, False):

            def run(step_fn, init, key, cached=cached, steps=steps):
                res = pk.steering.smc(
                    key, step_fn, zero_reward, num_particles=CACHE_PARTICLES, max_length=steps,
                    eos_id=task.EOS, prompt=prompt, init_cache=init if cached else None,
                )  # fmt: skip
                return res.lengths

            step_fn = NoEos(lm if cached else model, cached)
            call, seconds = compile_call(run, step_fn, init, jax.random.key(4))
            lengths = np.asarray(call())
            assert (lengths == ctx).all(), (ctx, cached, lengths)
            name = (ctx, "cached" if cached else "full forward")
            calls[name], meta[name] = call, dict(compile_s=seconds, steps=steps)
            say(f"cache ctx={ctx} {name[1]}: compiled in {seconds:.1f} s")

        def plain(model, key, steps=steps):  # the same tokens without steering
            # generate's scan runs all max_new_tokens steps whatever it draws (the end token
            # only masks the rest), so any valid eos_id costs the same (-1 is a ValueError)
            one = functools.partial(transformer.generate, model, prompt=prompt,
                                    max_new_tokens=steps, eos_id=task.EOS)  # fmt: skip
            return jax.vmap(lambda k: one(k)[1])(jax.random.split(key, CACHE_PARTICLES))

        name = (ctx, "transformer.generate")
        calls[name], seconds = compile_call(plain, model, jax.random.key(4))
        meta[name] = dict(compile_s=seconds, steps=steps)
    times = round_robin(calls, args.repeats)
    rows = []
    kinds = ("cached", "full forward", "transformer.generate")
    for ctx in args.cache_contexts:
        best = {kind: min(times[(ctx, kind)]) for kind in kinds}
        steps = meta[(ctx, "cached")]["steps"]
        for kind in kinds:
            rows.append(dict(
                context=ctx, kind=kind, steps=steps, particles=CACHE_PARTICLES,
                compile_s=meta[(ctx, kind)]["compile_s"], min_s=best[kind],
                all_s=times[(ctx, kind)], ms_per_step=1e3 * best[kind] / steps,
                us_per_token=1e6 * best[kind] / (steps * CACHE_PARTICLES),
                ratio_to_cached=best[kind] / best["cached"],
            ))  # fmt: skip
    return rows


# ------------------------------------------------------------------------ printing
def print_tables(budgets, results, comparisons, overhead_rows, cache_rows):
    def cell(r):
        return f"{r['accuracy']:.3f} ± {r['se']:.3f}"

    greedy = next((r for r in results if r["method"] == "greedy decoding"), None)
    if greedy is not None:
        say(f"\ngreedy decoding: {cell(greedy)} ({greedy['problems']} problems)")
    if results:
        for rname in ("verifier", "PRM"):
            say(f"\n**{rname}** (accuracy ± standard error)\n")
            say("| method | " + " | ".join(f"N = {n}" for n in budgets) + " |")
            say("|---|" + "---|" * len(budgets))
            for label, _, _ in ROWS:
                rows = {r["N"]: r for r in results if r["method"] == label
                        and r["reward"] in (rname, "none")}  # fmt: skip
                if rows:
                    say(f"| {label} | " + " | ".join(
                        cell(rows[n]) if n in rows else "" for n in budgets) + " |")  # fmt: skip
        say("\n**Cost** (wall s: min of repeats, compiled; tokens generated; k tok/s)\n")
        say("| reward | method | N | wall s | compile s | tokens | k tok/s | lineage / generated |")
        say("|---|---|---|---|---|---|---|---|")
        for r in results:
            if r["method"] == "greedy decoding":
                continue
            say(f"| {r['reward']} | {r['method']} | {r['N']} | {r['wall_s']:.2f} | "
                f"{r['compile_s']:.1f} | {r['tokens']:.0f} | {r['tokens_per_s'] / 1e3:.1f} | "
                f"{r['lineage_tokens'] / max(r['tokens'], 1):.2f} |")  # fmt: skip
        say("\n**Paired differences** (a - b, per-problem outcomes; |z| < 2: tie)\n")
        say("| reward | a | b | N | diff ± se | z | verdict |")
        say("|---|---|---|---|---|---|---|")
        for c in comparisons:
            say(f"| {c['reward']} | {c['a']} | {c['b']} | {c['N']} | {c['diff']:+.3f} ± "
                f"{c['se']:.3f} | {c['z']:+.1f} | {c['verdict']} |")  # fmt: skip
    if overhead_rows:
        o = overhead_rows[0]
        say(f"\n**(a) Steering overhead**: {o['particles']} particles x {o['problems']} problems\n")
        say("| call | compile s | min s | median s | tokens | PF overhead (min) | (median) |")
        say("|---|---|---|---|---|---|---|")
        for r in overhead_rows:
            c = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
            say(f"| {r['call']} | {c} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                f"{r['tokens']:.0f} | {100 * r['pf_overhead_min']:+.0f} % | "
                f"{100 * r['pf_overhead_median']:+.0f} % |")  # fmt: skip
    if cache_rows:
        say(f"\n**(b) Cached vs full-forward generation** ({CACHE_PARTICLES} particles)\n")
        say("| context | kind | steps | compile s | min s | ms / step | us / token | x cached |")
        say("|---|---|---|---|---|---|---|---|")
        for r in cache_rows:
            say(f"| {r['context']} | {r['kind']} | {r['steps']} | {r['compile_s']:.1f} | "
                f"{r['min_s']:.3f} | {r['ms_per_step']:.3f} | {r['us_per_token']:.1f} | "
                f"{r['ratio_to_cached']:.2f} |")  # fmt: skip


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        cmd = ["git", "-C", str(root), "rev-parse", "--short", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 problems, N = 4, 16")
    parser.add_argument("--problems", type=int, default=None, help="held-out problems (128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per config")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-cache", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true", help="only (a) and (b)")
    args = parser.parse_args(argv)
    num_problems = args.problems or (32 if args.quick else 128)
    args.overhead_repeats = max(args.repeats, 5)
    args.cache_contexts = (32, 128) if args.quick else CACHE_CONTEXTS

    start = time.perf_counter()
    load_start = os.getloadavg()
    say(f"{num_problems} held-out problems; python {platform.python_version()}, jax "
        f"{jax.__version__}, {jax.devices()[0].platform}; load {load_start}")  # fmt: skip
    model, prm = pretrained.arithmetic_model(), pretrained.arithmetic_prm()
    problems = task.heldout_problems(num_problems)
    prompts = train.problem_prompts(problems)

    budgets, results, comparisons, outcomes = (), [], [], {}
    with TokenCounter() as counter:
        if not counter.available:
            say("extend_move not found: tokens are the lineage count (see the docstring)")
        if not args.skip_accuracy:
            budgets, results, comparisons, outcomes = accuracy_table(
                args, model, prm, problems, prompts, counter
            )
    table_s = time.perf_counter() - start
    overhead_rows = [] if args.skip_overhead else overhead(args, model, prompts[:64])
    cache_rows = [] if args.skip_cache else cache_cost(args)
    total = time.perf_counter() - start
    load_end = os.getloadavg()
    print_tables(budgets, results, comparisons, overhead_rows, cache_rows)
    say(f"\naccuracy table {table_s:.0f} s; total {total:.0f} s; load at start {load_start}, "
        f"at end {load_end}")  # fmt: skip
    if args.out is not None:
        meta = dict(
            problems=num_problems, budgets=list(budgets), repeats=args.repeats,
            beam_width=BEAM_WIDTH, max_steps=MAX_STEPS, pt_temperatures=PT_TEMPERATURES,
            pt_particles=PT_PARTICLES, python=platform.python_version(),
            jax=jax.__version__, equinox=eqx.__version__, commit=git_commit(),
            machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
            load_start=load_start, load_end=load_end, table_s=table_s, total_s=total,
            argv=sys.argv[1:],
        )  # fmt: skip
        payload = dict(meta=meta, results=results, comparisons=comparisons,
                       overhead=overhead_rows, cache=cache_rows,
                       per_problem=outcomes)  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=1, default=float))
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
