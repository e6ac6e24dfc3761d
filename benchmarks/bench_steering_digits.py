"""Steering the shipped 8x8-digit models towards a class, at EQUAL numbers of network
evaluations: plain sampling, best-of-k, FK steering (four potentials; interval and
ESS-adaptive resampling; and "difference" with a potential at every step), SVDD,
classifier guidance (``gradient_guided_proposal``, alone and inside FK steering) and
rollover budget forcing (when ``pk.diffusion`` has it), for k = 2, 4, 8, 16 particles.

Models: ``pk.diffusion.digits_diffusion()`` and ``digits_flow().as_diffusion_model()`` (the
exact VP rewrite of the flow). Reward: ``r(x_0) = log p(class = c | x_0)`` of the shipped
classifier, target ``p(x_0) p(c | x_0)^lmbda`` (``lmbda = 1``: the class posterior
``p(x_0 | c)``); every target class ``c = 0..9``, several seeds each.

Cost. A budget of ``B = k * K0`` denoiser evaluations (NFE) per run, ``K0`` steps of plain
DDPM sampling of k samples. Every method gets the largest number of reverse steps ``K``
whose NFE fits in ``B`` (the ``K`` column), counted from what the recipes evaluate (checked
once with a counting network):

* plain sampling and best-of-k: ``k K``;
* FK steering with the ``"x0"`` intermediate reward: ``k K`` (a potential step predicts the
  noise at the new state for its Tweedie reward, and the next move reuses that prediction;
  the last step scores ``x_0`` itself). Before 2026-12-03 ``fk_steering`` evaluated the
  network again there, ``k (K + P)`` with ``P`` the potential steps before the last one,
  and the results below from before that date were measured at that cost;
* SVDD with one particle and ``M = k`` children: ``(K - 1)(1 + M) + 1`` (one evaluation at
  the parent, one per child for its value);
* the gradient-guided proposal: 3 per particle and step (the kernel mean, and a forward and
  a backward pass for ``grad_x r(x0_hat(x_t))``; XLA merges the repeated evaluations at the
  same input), plus ``P``, the potential steps before the last one (no reuse here);
* rollover budget forcing: one chain given the whole budget ``k K0`` over ``K0`` steps (it
  counts one evaluation per candidate and may leave some unused).

Classifier calls (a network about a quarter of the denoiser's size) are not in the budget;
the wall time shows their cost.

Metrics of the sample a method returns (one run = one target class and one seed): the
expected reward and the target-class hit rate (classifier's arg-max = c) under the
distribution the method returns from (FK: its weighted population; best-of-k: the best;
plain, SVDD and classifier guidance: a uniform pick among their samples), mean ± standard
error over runs. Diversity, per target class, of the returned samples of different seeds
(FK: one draw from the weights): their mean pairwise L2 distance and the entropy (nats) of
their predicted classes, averaged over the classes (± standard error over the classes).
Wall time per run of a batch of runs under ``jax.vmap`` (second call), and compile time
(first call minus second; 0 when a configuration shares the compiled program of the row
above: the four FK potentials share one). Then the steering overhead of single runs at
k = 16: FK steering against plain sampling at equal NFE.

Run: ``python benchmarks/bench_steering_digits.py [--quick]`` (5-10 minutes on 2 cores at
load average 3-8, mostly compilation; ``--quick``: a smoke run, about 3 minutes there).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import particlekit as pk

NUM_CLASSES = 10
POTENTIALS = ("difference", "max", "sum", "immediate")


def say(*args):
    print(*args, flush=True)


class ClassReward(eqx.Module):
    """``log p(class = c | x_0)`` with the class ``c`` an array leaf, so that one compiled
    program serves every target class (``class_log_prob_reward`` fixes ``c`` in a closure,
    which would recompile per class)."""

    classifier: eqx.Module
    c: jax.Array

    def __call__(self, x0):
        return jnp.take(self.classifier.log_probs(x0), self.c)


# ------------------------------------------------------------------------------ costs
def num_potentials(num_steps: int, every: int, window) -> int:
    """Potential steps before the last one of ``fk_steering`` (each costs one NFE)."""
    try:
        from particlekit.diffusion.fk_steering import potential_steps

        return int(np.asarray(potential_steps(num_steps, every, window)).sum()) - 1
    except (ImportError, TypeError):  # the same rule, if the helper moved
        k = np.arange(num_steps)
        s = (num_steps - k - 1) / num_steps
        mask = ((k + 1) % every == 0) & (s >= window[0]) & (s <= window[1])
        return int((mask | (k == num_steps - 1)).sum()) - 1


def largest_steps(nfe: Callable[[int], int], budget: int) -> int:
    """The largest ``K`` with ``nfe(K) <= budget`` (at least 1)."""
    k = 1
    while nfe(k + 1) <= budget:
        k += 1
    return k


# ------------------------------------------------------------------------------ methods
@dataclass
class Method:
    """One configuration: ``run(key, reward, k, K) -> (samples (k', D), log_weights (k',)
    or None for equal weights, or "best" to pick the highest reward)``, vmapped over runs."""

    name: str
    nfe: Callable[[int, int], int]  # (k, K) -> NFE of one run
    run: Callable
    pick: str = "weights"  # "weights" or "best"
    group: str = ""  # methods with the same group share a compiled program
    classifier_calls: Callable[[int, int], int] = field(default=lambda k, K: k)
    # under our own jax.jit: a recipe given a new closure per call (the guided proposal)
    # recompiles at every call under a bare jax.vmap
    outer_jit: bool = False


def methods_for(model, args, *, full: bool) -> list[Method]:
    every, window, lmbda = args.resample_every, (0.0, args.window), args.lmbda
    fk_kw = dict(lmbda=lmbda, resample_every=every, resample_window=window, progress_bar=False)

    def fk_nfe(k, K):  # the next move reuses the Tweedie prediction of a potential step
        return k * K

    def fk_calls(k, K):
        return k * (num_potentials(K, every, window) + 1)

    def plain(key, reward, k, K):
        res = pk.diffusion.best_of_n(key, model, reward, num_samples=k, num_steps=K)
        return res.samples, None

    def best(key, reward, k, K):
        res = pk.diffusion.best_of_n(key, model, reward, num_samples=k, num_steps=K)
        return res.samples, res.rewards

    out = [
        Method("plain sampling", lambda k, K: k * K, plain, group="bon"),
        Method("best-of-k", lambda k, K: k * K, best, pick="best", group="bon"),
    ]
    for ess, label in [(1.0, "interval"), (args.ess_threshold, "ESS-adaptive")]:
        if label == "ESS-adaptive" and not full:
            continue
        for potential in POTENTIALS if full or label == "interval" else ("difference",):

            def fk(key, reward, k, K, potential=potential, ess=ess):
                res = pk.diffusion.fk_steering(
                    key, model, reward, num_particles=k, num_steps=K, potential=potential,
                    ess_threshold=ess, **fk_kw,
                )  # fmt: skip
                return res.samples, res.log_weights

            out.append(
                Method(
                    f"FK {potential}, {label}",
                    fk_nfe,
                    fk,
                    group=f"fk-{label}",
                    classifier_calls=fk_calls,
                )  # fmt: skip
            )

    if full:  # the library's default for "difference": a potential at every step

        def fk_every(key, reward, k, K):
            res = pk.diffusion.fk_steering(
                key, model, reward, num_particles=k, num_steps=K, lmbda=lmbda,
                resample_every=1, resample_window=window, progress_bar=False,
            )  # fmt: skip
            return res.samples, res.log_weights

        out.append(
            Method("FK difference, every step, interval",
                   lambda k, K: k * K, fk_every,
                   group="fk-every",
                   classifier_calls=lambda k, K: k * (num_potentials(K, 1, window) + 1)),
        )  # fmt: skip

    def svdd(key, reward, k, K):
        res = pk.diffusion.svdd(key, model, reward, num_particles=1, num_children=k,
                                num_steps=K, progress_bar=False)  # fmt: skip
        return res.samples, None

    out.append(
        Method(
            "SVDD (1 particle, M = k)",
            lambda k, K: (K - 1) * (1 + k) + 1,
            svdd,
            group="svdd",
            classifier_calls=lambda k, K: k * K,
        )  # fmt: skip
    )
    rollover = rollover_method(model, args)
    if rollover is not None:
        out.append(rollover)
    if not full:
        return out

    def guided(key, reward, k, K):
        prop = pk.diffusion.gradient_guided_proposal(model, reward, lmbda)
        res = pk.diffusion.fk_steering(
            key, model, reward, num_particles=k, num_steps=K, lmbda=lmbda,
            resample_window=(0.0, 0.0), ess_threshold=0.0, proposal=prop, progress_bar=False,
        )  # fmt: skip
        return res.samples, None  # the guided samples themselves, unweighted

    def fk_guided(key, reward, k, K):
        prop = pk.diffusion.gradient_guided_proposal(model, reward, lmbda)
        res = pk.diffusion.fk_steering(key, model, reward, num_particles=k, num_steps=K,
                                       proposal=prop, **fk_kw)  # fmt: skip
        return res.samples, res.log_weights

    out += [
        Method("classifier guidance", lambda k, K: 3 * k * K, guided, group="cg",
               classifier_calls=lambda k, K: k * (K + 1), outer_jit=True),  # fmt: skip
        Method("FK difference + guided proposal",
               lambda k, K: k * (3 * K + num_potentials(K, every, window)), fk_guided,
               group="fk-guided", classifier_calls=lambda k, K: k * (K + 1) + fk_calls(k, K),
               outer_jit=True),
    ]  # fmt: skip
    return out


def rollover_method(model, args) -> Method | None:
    """Rollover budget forcing (one chain with the whole budget of ``k K0`` NFE over ``K0``
    steps), if this particlekit has it."""
    if not hasattr(pk.diffusion, "rollover_budget_forcing"):
        return None

    def rollover(key, reward, k, K):
        res = pk.diffusion.rollover_budget_forcing(
            key, model, reward, num_steps=K, budget=k * K, num_samples=1, progress_bar=False
        )
        return res.samples, None

    return Method("rollover budget forcing", lambda k, K: k * K, rollover, group="rollover",
                  classifier_calls=lambda k, K: k * K)  # fmt: skip


# ------------------------------------------------------------------------------ metrics
@eqx.filter_jit
def run_metrics(classifier, key, samples, weights, classes, pick):
    """Per run: expected reward and hit rate of the returned sample, one returned sample
    (a draw from the weights) and its predicted class."""
    log_probs = jax.vmap(jax.vmap(classifier.log_probs))(samples)  # (R, k, 10)
    rewards = jnp.take_along_axis(log_probs, classes[:, None, None], axis=-1)[..., 0]
    preds = jnp.argmax(log_probs, axis=-1)
    k = samples.shape[1]
    if pick == "best":
        safe = jnp.where(jnp.isnan(rewards), -jnp.inf, rewards)
        log_w = jnp.where(jax.nn.one_hot(jnp.argmax(safe, axis=1), k) > 0, 0.0, -jnp.inf)
    elif weights is None:
        log_w = jnp.zeros(rewards.shape)
    else:
        log_w = weights
    w = jax.vmap(pk.resampling.normalize)(log_w)
    live = w > 0
    reward = jnp.sum(jnp.where(live, w * rewards, 0.0), axis=1)
    hit = jnp.sum(jnp.where(live, w * (preds == classes[:, None]), 0.0), axis=1)
    idx = jax.random.categorical(key, jnp.log(w), axis=1)
    returned = jnp.take_along_axis(samples, idx[:, None, None], axis=1)[:, 0]
    returned_pred = jnp.take_along_axis(preds, idx[:, None], axis=1)[:, 0]
    return reward, hit, returned, returned_pred


def diversity(returned, returned_pred, classes):
    """Mean pairwise distance and predicted-class entropy of the returned samples of each
    target class: (mean, se) over the classes for both."""
    dists, ents = [], []
    for c in np.unique(classes):
        xs = returned[classes == c]
        if len(xs) > 1:
            d = np.sqrt(((xs[:, None] - xs[None]) ** 2).sum(-1))
            dists.append(d[np.triu_indices(len(xs), 1)].mean())
        p = np.bincount(returned_pred[classes == c], minlength=NUM_CLASSES) / len(xs)
        ents.append(-np.sum(p[p > 0] * np.log(p[p > 0])))

    def mean_se(v):
        v = np.asarray(v, float)
        if len(v) == 0:
            return math.nan, math.nan
        return v.mean(), (v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else math.nan)

    return mean_se(dists), mean_se(ents)


def mean_se(values):
    v = np.asarray(values, float)
    return v.mean(), v.std(ddof=1) / np.sqrt(len(v))


# ------------------------------------------------------------------------------ driver
def run_method(method, classifier, k, K, keys, classes):
    """Two vmapped batches (the first compiles): per-run metrics of both, the wall time of
    the second, compile time = first - second."""

    def one(key, c):
        return method.run(key, ClassReward(classifier, c), k, K)

    vmapped = jax.jit(jax.vmap(one)) if method.outer_jit else jax.vmap(one)

    def batch(ks, cs):
        return jax.block_until_ready(vmapped(ks, cs))

    half = len(keys) // 2
    times, outs = [], []
    for sl in (slice(0, half), slice(half, None)):
        t0 = time.perf_counter()
        outs.append(batch(keys[sl], classes[sl]))
        times.append(time.perf_counter() - t0)
    samples = jnp.concatenate([o[0] for o in outs])
    weights = None if outs[0][1] is None else jnp.concatenate([o[1] for o in outs])
    mkey = jax.random.fold_in(keys[0], 12345)
    reward, hit, returned, pred = run_metrics(
        classifier, mkey, samples, None if method.pick == "best" else weights, classes,
        method.pick,
    )  # fmt: skip
    run_s = times[1] / (len(keys) - half)
    compile_s = max(times[0] - times[1] * half / (len(keys) - half), 0.0)
    return dict(
        reward=mean_se(reward), hit=mean_se(hit), hits=np.asarray(hit),
        rewards=np.asarray(reward),
        div=diversity(np.asarray(returned), np.asarray(pred), np.asarray(classes)),
        run_ms=1e3 * run_s, compile_s=compile_s, returned=np.asarray(returned),
        returned_pred=np.asarray(pred),
    )  # fmt: skip


def fmt(m, s, digits=3):
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def bench_model(label, model, classifier, args, ks, classes_per_batch, full):
    say(f"\n### {label}\n")
    say("| k | method | K | NFE | clf calls | reward | hit rate | pairwise dist | class entropy "
        "| ms / run | compile s |")  # fmt: skip
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    methods = methods_for(model, args, full=full)
    results = {}
    for k in ks:
        budget = k * args.steps
        base = jax.random.fold_in(jax.random.key(args.seed), k)
        for i, method in enumerate(methods):
            K = largest_steps(lambda K, m=method: m.nfe(k, K), budget)
            keys = jax.random.split(jax.random.fold_in(base, i), len(classes_per_batch))
            classes = jnp.asarray(classes_per_batch)
            try:
                r = run_method(method, classifier, k, K, keys, classes)
            except Exception as err:  # noqa: BLE001 - a new recipe's API may differ
                say(f"| {k} | {method.name} | {K} | - | - | skipped: {type(err).__name__}: "
                    f"{str(err)[:80]} | | | | | |")  # fmt: skip
                continue
            results[(k, method.name)] = r
            (dm, ds), (em, es) = r["div"]
            say(f"| {k} | {method.name} | {K} | {method.nfe(k, K)} | "
                f"{method.classifier_calls(k, K)} | {fmt(*r['reward'])} | {fmt(*r['hit'])} | "
                f"{dm:.2f} ± {ds:.2f} | {em:.2f} ± {es:.2f} | {r['run_ms']:.2f} | "
                f"{r['compile_s']:.1f} |")  # fmt: skip
    return results


def headline(results, ks, label):
    say(f"\n**FK steering (difference potential, interval resampling) vs best-of-k at equal "
        f"NFE, {label}** (FK - best-of-k, ± standard error; z = diff / se)\n")  # fmt: skip
    say("| k | FK hit | best-of-k hit | hit diff (z) | FK reward | best-of-k reward "
        "| reward diff (z) | verdict |")  # fmt: skip
    say("|---|---|---|---|---|---|---|---|")
    for k in ks:
        fk = results.get((k, "FK difference, interval"))
        bon = results.get((k, "best-of-k"))
        if fk is None or bon is None:
            continue
        cells = []
        zs = []
        for name in ("hit", "reward"):
            d = fk[name][0] - bon[name][0]
            se = math.hypot(fk[name][1], bon[name][1])
            z = d / se if se > 0 else math.inf
            zs.append(z)
            cells.append((fmt(*fk[name]), fmt(*bon[name]), f"{d:+.3f} ± {se:.3f} ({z:+.1f})"))
        verdict = (
            "FK better" if zs[0] > 2 else "best-of-k better" if zs[0] < -2 else "no difference"
        )
        say(f"| {k} | {cells[0][0]} | {cells[0][1]} | {cells[0][2]} | {cells[1][0]} | "
            f"{cells[1][1]} | {cells[1][2]} | {verdict} (hit rate) |")  # fmt: skip


def reference_diversity(model, classifier, args):
    """Within-class pairwise distance of the data (scikit-learn's digits, if installed)
    and of plain samples grouped by their predicted class."""
    lines = []
    try:
        from sklearn.datasets import load_digits

        data = load_digits()
        xs = data.data / 8.0 - 1.0
        (dm, ds), _ = diversity(xs, data.target, data.target)
        log_probs = np.asarray(jax.vmap(classifier.log_probs)(jnp.asarray(xs)))
        own = log_probs[np.arange(len(xs)), data.target]
        acc = np.mean(log_probs.argmax(-1) == data.target)
        lines.append(f"data (scikit-learn digits, within each class): {dm:.2f} ± {ds:.2f} "
                     f"(the classifier on the data: hit rate {acc:.3f}, mean reward "
                     f"{own.mean():.3f}, what exact samples of p(x | c) would score)")  # fmt: skip
    except ImportError:
        pass
    xs = model.sample(jax.random.key(args.seed + 1), 2000, num_steps=args.steps)
    preds = np.asarray(classifier.predict(xs))
    (dm, ds), _ = diversity(np.asarray(xs), preds, preds)
    counts = np.bincount(preds, minlength=NUM_CLASSES) / len(preds)
    lines.append(f"plain samples ({args.steps} steps, within each predicted class): "
                 f"{dm:.2f} ± {ds:.2f}; class frequencies "
                 f"{np.array2string(counts, precision=2, separator=' ')}")  # fmt: skip
    return lines


def _round_robin(calls: dict, repeats: int):
    """First-call time (compile + run) and the per-call times of ``repeats`` round-robin
    calls (so load swings hit all alike) of ``{name: fn(key)}``."""
    first, times = {}, {name: [] for name in calls}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(0)))
        first[name] = time.perf_counter() - t0
    for r in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(jax.random.key(r + 1)))
            times[name].append(time.perf_counter() - t0)
    return first, times


def overhead(model, classifier, args, k=16, repeats=15, batch=64):
    """Wall time at k particles: FK steering vs plain sampling at equal NFE, for single
    runs and for batches of runs under ``jax.vmap``."""
    every, window = args.resample_every, (0.0, args.window)
    K0 = args.steps
    K_fk = largest_steps(lambda K: K, K0)  # potential steps cost no extra NFE
    fk_kw = dict(num_particles=k, lmbda=args.lmbda, resample_every=every, progress_bar=False)

    def one_run(reward):
        return {
            f"plain sampling (K = {K0})": lambda key: model.sample(key, k, num_steps=K0),
            f"best-of-k (K = {K0})": lambda key: (
                pk.diffusion.best_of_n(key, model, reward, num_samples=k, num_steps=K0).best
            ),
            f"FK, final weighting only (K = {K0})": lambda key: (
                pk.diffusion.fk_steering(
                    key, model, reward, num_steps=K0, resample_window=(0.0, 0.0), **fk_kw
                ).samples
            ),
            f"FK at equal NFE (K = {K_fk})": lambda key: (
                pk.diffusion.fk_steering(
                    key, model, reward, num_steps=K_fk, resample_window=window, **fk_kw
                ).samples
            ),
        }

    nfe = [k * K0, k * K0, k * K0, k * K_fk]
    single = one_run(ClassReward(classifier, jnp.asarray(3)))
    names = list(single)
    plain_name, fk_name = names[0], names[3]
    # the same calls under the caller's jax.jit: no per-call Python work (argument checks,
    # tracing of the reward for its shape, dispatch)
    single[f"{plain_name}, under jax.jit"] = jax.jit(single[plain_name])
    single[f"{fk_name}, under jax.jit"] = jax.jit(single[fk_name])
    nfe_single = nfe + [nfe[0], nfe[3]]
    classes = jnp.arange(batch) % NUM_CLASSES

    def batched(name):
        def fn(key):
            def one(key, c):
                return one_run(ClassReward(classifier, c))[name](key)

            return jax.vmap(one)(jax.random.split(key, batch), classes)

        return jax.jit(fn)

    for label, calls, reps, nfes in [
        ("single runs", single, repeats, nfe_single),
        (f"batches of {batch} runs, jax.jit of jax.vmap", {n: batched(n) for n in names}, 5, nfe),
    ]:
        first, times = _round_robin(calls, reps)
        base_med, base_min = float(np.median(times[plain_name])), float(np.min(times[plain_name]))
        say(
            f"\n**Steering overhead, k = {k}, digits diffusion, {label}** (median and "
            f"minimum of {reps} round-robin calls; overhead relative to plain sampling)\n"
        )
        say("| call | NFE per run | first call s | median ms | min ms | overhead (median) "
            "| overhead (min) |")  # fmt: skip
        say("|---|---|---|---|---|---|---|")
        for name, n in zip(calls, nfes, strict=True):
            med, mn = float(np.median(times[name])), float(np.min(times[name]))
            if name.endswith("under jax.jit"):
                ref = times[f"{plain_name}, under jax.jit"]
                base_med, base_min = float(np.median(ref)), float(np.min(ref))
            say(
                f"| {name} | {n} | {first[name]:.1f} | {1e3 * med:.2f} | {1e3 * mn:.2f} | "
                f"{100 * (med / base_med - 1):+.0f} % | {100 * (mn / base_min - 1):+.0f} % |"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (compile-bound)")
    parser.add_argument("--steps", type=int, default=None, help="K0, steps of plain sampling")
    parser.add_argument("--seeds", type=int, default=None, help="runs per class (even)")
    parser.add_argument("--lmbda", type=float, default=1.0)
    parser.add_argument("--resample-every", type=int, default=5)
    parser.add_argument("--window", type=float, default=0.7, help="potentials at t <= window")
    parser.add_argument("--ess-threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flow", action="store_true", help="skip the flow model")
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (10 if quick else 50)
    seeds = args.seeds or (2 if quick else 32)
    ks = (4,) if quick else (2, 4, 8, 16)
    classes = (2, 7) if quick else tuple(range(NUM_CLASSES))
    # runs: every class `seeds` times, interleaved so each half-batch covers every class
    classes_per_batch = np.tile(np.asarray(classes), seeds)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    say(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min); "
        f"python {sys.version.split()[0]}, jax {jax.__version__}, backend "
        f"{jax.default_backend()}")  # fmt: skip
    has_rollover = hasattr(pk.diffusion, "rollover_budget_forcing")
    say(f"K0 = {args.steps} steps (budget k K0 NFE), lmbda = {args.lmbda}, potentials every "
        f"{args.resample_every} steps at t <= {args.window}, ESS-adaptive threshold "
        f"{args.ess_threshold}; {len(classes)} target classes x {seeds} seeds = "
        f"{len(classes_per_batch)} runs per row; rollover budget forcing: "
        f"{'yes' if has_rollover else 'not in this version'}")  # fmt: skip
    t_start = time.perf_counter()
    classifier = pk.diffusion.digits_classifier()
    diffusion = pk.diffusion.digits_diffusion()
    flow = pk.diffusion.digits_flow().as_diffusion_model()
    if not quick:
        say("\nreference pairwise distances: " + "; ".join(
            reference_diversity(diffusion, classifier, args)))  # fmt: skip
    res = bench_model("digits diffusion (`digits_diffusion()`)", diffusion, classifier, args, ks,
                      classes_per_batch, full=True)  # fmt: skip
    headline(res, ks, "digits diffusion")
    if not args.no_flow:
        res_flow = bench_model("digits flow (`digits_flow().as_diffusion_model()`)", flow,
                               classifier, args, ks, classes_per_batch, full=False)  # fmt: skip
        headline(res_flow, ks, "digits flow")
    if quick:
        overhead(diffusion, classifier, args, k=4, repeats=3, batch=8)
    else:
        overhead(diffusion, classifier, args, k=16, repeats=15, batch=64)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    say(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
