"""Posterior accuracy benchmark: pk.infer.SMC vs NumPyro NUTS vs BlackJAX tempered SMC.

Eight posteriors with reference answers made independently of particlekit (defined in
``posteriors.py``, which documents each problem and how its reference is made):

=========================== ======================================= =========================
problem                     what it tests                           reference
=========================== ======================================= =========================
ill_gaussian                100-D, prior 10-1000x wider than the    closed form
                            posterior, scales over 3 decades
funnel                      Neal's funnel with data (D = 10)        1-D quadrature over v
banana                      thin curved 2-D ridge                   1-D quadrature, conjugate
mixture20                   two modes 26 sds apart in 20-D          closed form
eight_schools_centered      hierarchical funnel (centred)           2-D quadrature
eight_schools_noncentered   same posterior, non-centred             2-D quadrature
logistic_breast_cancer      31-D GLM on real data                   NUTS (means, sds), IS
                                                                    (log Z, with its s.e.)
horseshoe                   heavy-tailed shrinkage prior, 22-D      NUTS (no exact log Z)
=========================== ======================================= =========================

References are cached in ``benchmarks/reference/<problem>.npz`` (KBs). A missing cache is
made by a subprocess, ``python3 benchmarks/bench_posteriors.py --make-references``, which
runs in float64 (``jax_enable_x64``) and prints each reference's sanity checks (closed forms
against the NumPyro log density, quadrature at a second resolution, quick NUTS runs); the
contenders run in float32 (JAX's default) in the main process.

Contenders, one problem at a time:

- ``pk default``: ``pk.infer.SMC(model)`` with no tuning arguments (whatever the library's
  defaults are at the time of the run; the notes under each table record the kernel and
  number of chains). ``log Z`` of a run with several chains is ``log mean_c Z_c``.
- ``pk <kernel>``: ``pk.infer.SMC(model, kernel=<kernel>)`` for every kernel in
  ``--pk-kernels`` (default ``rwm,imh,hmc``; a kernel equal to the default one is skipped).
- ``blackjax hmc (hand)``: ``blackjax.adaptive_tempered_smc`` with an HMC kernel, N = 1000,
  target ESS 0.5, 10 MCMC steps per stage, systematic resampling; inverse mass matrix: the
  prior variance of each unconstrained coordinate (4000 prior draws); step size and number
  of leapfrog steps chosen by hand per problem (``Problem.bj_step_size`` and
  ``bj_num_integration_steps``: a few pilot runs looking at the acceptance rate). Run on the
  unconstrained log-prior / log-likelihood split of the same NumPyro model
  (``particlekit.infer.numpyro_adapter``). Moments use the final weighted particles.
- ``blackjax hmc (stage-tuned)``: the same, with the inverse mass matrix re-set to the
  weighted particle variance after every stage and the step size multiplied by
  ``exp(2 (acceptance - 0.65))`` (what ``blackjax.inner_kernel_tuning`` is for; written as
  a plain loop), 10 leapfrog steps. Start: prior variance, step ``0.5 D^-1/4``.
- ``numpyro nuts``: ``MCMC(NUTS(model), num_warmup=1000, num_samples=1000, num_chains=1)``.

Columns: ``max |dmean|/sd`` is the largest ``|mean - ref mean| / ref sd`` over every scalar
coordinate; ``sd ratio`` the range of ``sd / ref sd``; both from the seed-0 run. ``log Z err``
is the seed-0 estimate minus the reference, ``/ MC sd`` divides it by the standard deviation
of the estimates over the ``R`` repeats (seeds ``0 .. R-1``), and ``mean err (R)`` is the
mean over the repeats minus the reference, +- its standard error. Run time: median over
the repeats after the first (compiling) call, in seconds; compile: first call minus that
median. ``warned``: a ``UserWarning`` or ``RuntimeWarning`` in any call (texts in the notes).
A contender that raises shows ``error: ...``.

Usage::

    python3 benchmarks/bench_posteriors.py --write            # all problems, results_posteriors.md
    python3 benchmarks/bench_posteriors.py --quick --problems banana,funnel
    python3 benchmarks/bench_posteriors.py --make-references [--recompute]
    python3 benchmarks/bench_posteriors.py --pk-kernels imh,hmc --repeats 10
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import posteriors as P  # noqa: E402

RESULTS = HERE / "results_posteriors.md"
BJ_PARTICLES, BJ_TARGET_ESS, BJ_STEPS, BJ_MAX_STAGES = 1000, 0.5, 10, 500


# ------------------------------------------------------------------------------ references
def make_references(names, recompute: bool) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    for name in names:
        problem, path = P.PROBLEMS[name], P.reference_path(name)
        if path.exists() and not recompute:
            print(f"[{name}] cached: {path.relative_to(HERE.parent)}")
            continue
        t0 = time.perf_counter()
        ref = problem.make_reference()
        t_ref = time.perf_counter() - t0
        lines = problem.check_reference(ref) if problem.check_reference else []
        ref.check = "\n".join(lines)
        ref.save(path)
        print(f"[{name}] {ref.method}")
        print(f"  log Z = {ref.log_z:.6f} +- {ref.log_z_se:.2g}; made in {t_ref:.1f} s, checks:")
        for line in lines:
            print(f"  - {line}")
        print(f"  total {time.perf_counter() - t0:.1f} s -> {path.relative_to(HERE.parent)}")


def ensure_references(names, recompute: bool) -> dict:
    missing = [n for n in names if recompute or not P.reference_path(n).exists()]
    if missing:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--make-references"]
        cmd += ["--problems", ",".join(missing)] + (["--recompute"] if recompute else [])
        print(f"making references for {missing} (float64 subprocess)...", flush=True)
        subprocess.run(cmd, check=True)
    return {n: P.Reference.load(P.reference_path(n)) for n in names}


# ------------------------------------------------------------------------------ contenders
@dataclass
class Outcome:
    name: str
    samples: dict | None = None  # constrained draws of the seed-0 run
    weights: np.ndarray | None = None
    log_z: list = field(default_factory=list)  # per seed, seed 0 first
    run_times: list = field(default_factory=list)
    first_call: float = float("nan")
    warned: list = field(default_factory=list)  # (kind, count, first text)
    error: str | None = None
    notes: list = field(default_factory=list)

    @property
    def run_time(self) -> float:
        return float(np.median(self.run_times)) if self.run_times else float("nan")

    @property
    def compile_time(self) -> float:
        return self.first_call - self.run_time


def _timed(fn):
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0
    finally:
        gc.enable()


def _record_warnings(outcome: Outcome, caught) -> None:
    """Keep one text per kind of warning (its words before the first number), with a count."""
    for w in caught:
        if not issubclass(w.category, (UserWarning, RuntimeWarning)):
            continue
        text = " ".join(str(w.message).split())
        kind = f"{w.category.__name__}: " + text.split(":")[0][:80]
        for i, (k, n, full) in enumerate(outcome.warned):
            if k == kind:
                outcome.warned[i] = (k, n + 1, full)
                break
        else:
            outcome.warned.append((kind, 1, f"{w.category.__name__}: {text[:400]}"))


def _combine_log_z(le) -> float:
    le = np.atleast_1d(np.asarray(le, np.float64))
    if not np.all(np.isfinite(le)):
        return float(np.mean(le)) if np.any(np.isnan(le)) else float("-inf")
    m = le.max()
    return float(m + np.log(np.mean(np.exp(le - m))))


def _guard(name):
    """Decorator: a contender that raises becomes an Outcome with ``error``."""

    def wrap(fn):
        def run(*args, **kwargs):
            outcome = Outcome(name)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    fn(outcome, *args, **kwargs)
                except Exception as exc:  # report, do not stop the benchmark
                    msg = " ".join(str(exc).split())
                    outcome.error = f"{type(exc).__name__}: {msg[:160]}"
                    outcome.notes.append("traceback tail: " + _tb_tail())
            _record_warnings(outcome, caught)
            return outcome

        return run

    return wrap


def _tb_tail() -> str:
    tb = traceback.format_exc().strip().splitlines()
    frames = [line.strip() for line in tb if line.strip().startswith("File ")]
    return frames[-1][:200] if frames else ""


def _jax_args(problem):
    import jax.numpy as jnp

    return tuple(jnp.asarray(a) for a in problem.args(np.float32))


def run_pk(problem, repeats: int, kernel: str | None, name: str) -> Outcome:
    import jax

    import particlekit as pk

    @_guard(name)
    def go(out: Outcome):
        args = _jax_args(problem)
        smc = (
            pk.infer.SMC(problem.model)
            if kernel is None
            else pk.infer.SMC(problem.model, kernel=kernel)
        )
        out.notes.append(_pk_config(smc))

        def call(seed):
            smc.run(jax.random.key(seed), *args)
            jax.block_until_ready(smc.result)

        _, out.first_call = _timed(lambda: call(0))
        out.samples = {k: np.asarray(v) for k, v in smc.get_samples().items()}
        out.log_z.append(_combine_log_z(smc.log_evidence))
        out.notes.append(_pk_diagnostics(smc))
        for seed in range(1, repeats):
            _, t = _timed(lambda s=seed: call(s))
            out.run_times.append(t)
            out.log_z.append(_combine_log_z(smc.log_evidence))

    return go()


def _pk_config(smc) -> str:
    cfg = getattr(smc, "_cfg", None)
    spec = getattr(cfg, "spec", None)
    kernel = getattr(spec, "kernel", "?")
    kernel = kernel if isinstance(kernel, str) else getattr(kernel, "__name__", "callable")
    return (
        f"config: kernel={kernel}, num_chains={getattr(smc, 'num_chains', '?')}, "
        f"num_particles={getattr(smc, 'num_particles', '?')}, "
        f"target_ess={getattr(cfg, 'target_ess', '?')}"
    )


def _pk_diagnostics(smc) -> str:
    d = smc.diagnostics
    st = d.stages
    steps = np.nansum(st.num_mcmc_steps, axis=1)
    last_acc = [
        float(a[np.isfinite(a)][-1]) if np.any(np.isfinite(a)) else float("nan")
        for a in st.acceptance_rate
    ]
    le = np.atleast_1d(np.asarray(d.log_evidence))
    txt = (
        f"seed 0: stages {list(map(int, d.num_stages))}, MCMC steps {list(map(int, steps))}, "
        f"mean acceptance {np.nanmean(st.acceptance_rate):.2f} (last stage "
        f"{', '.join(f'{a:.2f}' for a in last_acc)})"
    )
    if le.size > 1:
        txt += f", log Z per chain {', '.join(f'{x:.3f}' for x in le)}"
    flags = []
    if np.any(d.reached_max_stages):
        flags.append("hit max_stages")
    if np.any(d.failed):
        flags.append("FAILED")
    if np.any(d.forced_increment):
        flags.append(f"forced increments {list(map(int, d.forced_increment))}")
    return txt + (f"; {', '.join(flags)}" if flags else "")


def run_nuts(problem, warmup: int, draws: int) -> Outcome:
    import jax
    from numpyro.infer import MCMC, NUTS

    @_guard("numpyro nuts")
    def go(out: Outcome):
        args = _jax_args(problem)
        mcmc = MCMC(
            NUTS(problem.model),
            num_warmup=warmup,
            num_samples=draws,
            num_chains=1,
            progress_bar=False,
        )

        def call(seed):
            mcmc.run(jax.random.key(seed), *args, extra_fields=("diverging", "num_steps"))
            jax.block_until_ready(mcmc.get_samples())

        _, out.first_call = _timed(lambda: call(0))
        out.samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
        div = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))
        steps = float(np.mean(np.asarray(mcmc.get_extra_fields()["num_steps"])))
        _, t = _timed(lambda: call(1))
        out.run_times.append(t)
        out.notes.append(
            f"{warmup} warm-up + {draws} draws, seed 0: {div} divergences, mean "
            f"{steps:.0f} leapfrog steps per draw"
        )

    return go()


def blackjax_runner(problem, variant: str):
    """``(run, constrain, step0, num_leapfrog)``: ``run(key, step0)`` is the jitted BlackJAX
    adaptive tempered SMC of ``problem`` (``variant`` "hand" or "stage-tuned"), returning
    ``(particles, weights, log_z, stages, final step size, last acceptance)``."""
    import blackjax
    import jax
    import jax.numpy as jnp

    from particlekit.infer.numpyro_adapter import inspect_model, make_target

    tuned = variant == "stage-tuned"
    if variant not in ("hand", "stage-tuned"):
        raise ValueError(f"unknown BlackJAX variant {variant!r}")
    args = _jax_args(problem)
    info = inspect_model(problem.model, args)
    target = make_target(problem.model, args, {}, info)
    dim = target.dim

    def log_prior(u):
        return target.log_prior_and_likelihood(u)[0]

    def log_lik(u):
        return target.log_prior_and_likelihood(u)[1]

    prior_u = jax.jit(jax.vmap(target.sample_prior))(jax.random.split(jax.random.key(12345), 4000))
    # prior scale per coordinate, robust to heavy-tailed priors (a half-Cauchy scale makes
    # the prior variance of a coefficient infinite): 1.4826 x median absolute deviation
    med = jnp.median(prior_u, axis=0)
    inv_mass0 = (1.4826 * jnp.median(jnp.abs(prior_u - med), axis=0)) ** 2
    if tuned:
        step0, num_leapfrog = 0.5 * dim**-0.25, 10
    else:
        step0, num_leapfrog = problem.bj_step_size, problem.bj_num_integration_steps
    hmc_kernel = blackjax.hmc.build_kernel()

    @jax.jit
    def run(key, step0):
        k_init, k_loop = jax.random.split(key)
        u0 = jax.vmap(target.sample_prior)(jax.random.split(k_init, BJ_PARTICLES))
        state = blackjax.adaptive_tempered_smc.init(u0)
        state = state._replace(tempering_param=jnp.zeros((), u0.dtype))
        zero = jnp.zeros((), u0.dtype)
        carry = (state, zero, jnp.int32(0), jnp.asarray(step0, u0.dtype), inv_mass0, zero)

        def cond(c):
            return (c[0].tempering_param < 1.0) & (c[2] < BJ_MAX_STAGES)

        def body(c):
            state, log_z, i, step, inv_mass, _ = c
            params = blackjax.smc.extend_params(
                {
                    "step_size": step,
                    "inverse_mass_matrix": inv_mass,
                    "num_integration_steps": jnp.int32(num_leapfrog),
                }
            )
            smc = blackjax.adaptive_tempered_smc(
                log_prior,
                log_lik,
                hmc_kernel,
                blackjax.hmc.init,
                params,
                blackjax.smc.resampling.systematic,
                target_ess=BJ_TARGET_ESS,
                num_mcmc_steps=BJ_STEPS,
            )
            state, step_info = smc.step(jax.random.fold_in(k_loop, i), state)
            acc = jnp.mean(step_info.update_info.acceptance_rate)
            if tuned:
                w = state.weights
                mean = w @ state.particles
                inv_mass = w @ (state.particles - mean) ** 2
                step = step * jnp.exp(2.0 * (acc - 0.65))
            return state, log_z + step_info.log_likelihood_increment, i + 1, step, inv_mass, acc

        state, log_z, stages, step, _, acc = jax.lax.while_loop(cond, body, carry)
        return state.particles, state.weights, log_z, stages, step, acc

    constrain = jax.jit(jax.vmap(target.constrain))
    return run, constrain, step0, num_leapfrog


def run_blackjax(problem, repeats: int, variant: str) -> Outcome:
    import jax

    @_guard(f"blackjax hmc ({variant})")
    def go(out: Outcome):
        run, constrain, step0, num_leapfrog = blackjax_runner(problem, variant)

        def call(seed):
            return jax.block_until_ready(run(jax.random.key(seed), step0))

        res, out.first_call = _timed(lambda: call(0))
        particles, weights, log_z, stages, step, acc = res
        out.samples = {k: np.asarray(v) for k, v in constrain(particles).items()}
        out.weights = np.asarray(weights, np.float64)
        out.log_z.append(float(log_z))
        ess = 1.0 / np.sum((out.weights / out.weights.sum()) ** 2)
        out.notes.append(
            f"{BJ_PARTICLES} particles, {BJ_STEPS} HMC steps x {num_leapfrog} leapfrog per "
            f"stage, initial step size {step0:.3g}; seed 0: {int(stages)} stages, last-stage "
            f"acceptance {float(acc):.2f}, final step size {float(step):.3g}, final ESS {ess:.0f}"
            + (" (HIT max stages)" if int(stages) >= BJ_MAX_STAGES else "")
        )
        for seed in range(1, repeats):
            res, t = _timed(lambda s=seed: call(s))
            out.run_times.append(t)
            out.log_z.append(float(res[2]))

    return go()


# ------------------------------------------------------------------------------ metrics
def accuracy(problem, ref, outcome: Outcome):
    summ = problem.summarise(outcome.samples)
    mean, sd = P.moments(summ, outcome.weights)
    z, ratio, worst = [], [], ("", -1.0)
    for k in ref.mean:
        if k not in mean:
            raise KeyError(f"site {k!r} missing from the samples")
        zk = np.ravel(np.abs(mean[k] - ref.mean[k]) / ref.sd[k])
        z.append(zk)
        ratio.append(np.ravel(sd[k] / ref.sd[k]))
        j = int(np.nanargmax(zk)) if np.any(np.isfinite(zk)) else 0
        if zk.size and (np.isnan(zk[j]) or zk[j] > worst[1]):
            worst = (k if zk.size == 1 else f"{k}[{j}]", float(zk[j]))
    z, ratio = np.concatenate(z), np.concatenate(ratio)
    return float(np.max(z)), float(np.min(ratio)), float(np.max(ratio)), worst[0]


def _f(x, fmt="{:.2f}"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def table_rows(problem, ref, outcomes):
    header = (
        "| contender | max \\|dmean\\|/sd | sd ratio | log Z err | / MC sd | mean err (R) "
        "| MC sd | run s | compile s | warned |"
    )
    rows = [header, "|" + "---|" * 10]
    exact = problem.exact_log_z and math.isfinite(ref.log_z)
    for o in outcomes:
        if o.error:
            err = o.error.replace("|", "\\|")
            rows.append(f"| {o.name} | error: {err} |" + " - |" * 7 + " - |")
            continue
        try:
            zmax, rmin, rmax, worst = accuracy(problem, ref, o)
            acc = f"{zmax:.2f} ({worst})"
            sdr = f"[{rmin:.2f}, {rmax:.2f}]"
        except Exception as exc:
            acc, sdr = f"error: {type(exc).__name__}: {exc}"[:120], "-"
        lz = np.asarray(o.log_z, np.float64)
        if lz.size:
            sd = float(np.std(lz, ddof=1)) if lz.size > 1 else float("nan")
            if exact:
                err0 = lz[0] - ref.log_z
                mean_err = f"{np.mean(lz) - ref.log_z:+.3f}"
                if lz.size > 1:
                    mean_err += f" +- {sd / math.sqrt(lz.size):.3f}"
                cols = [f"{err0:+.3f}", _f(err0 / sd if sd > 0 else float("nan")), mean_err]
            else:
                cols = [f"({lz[0]:.3f})", "-", f"({np.mean(lz):.3f})"]
            cols.append(_f(sd, "{:.3f}"))
        else:
            cols = ["-", "-", "-", "-"]
        warned = "yes" if o.warned else "no"
        rows.append(
            f"| {o.name} | {acc} | {sdr} | " + " | ".join(cols) + f" | {_f(o.run_time, '{:.3g}')}"
            f" | {_f(o.compile_time, '{:.1f}')} | {warned} |"
        )
    return rows


def problem_section(problem, ref, outcomes, repeats, elapsed) -> str:
    lines = [f"### {problem.name}: {problem.description}", ""]
    lz = f"{ref.log_z:.4f}" if math.isfinite(ref.log_z) else "unknown"
    if math.isfinite(ref.log_z_se) and ref.log_z_se > 0:
        lz += f" +- {ref.log_z_se:.4f}"
    lines.append(f"Reference: {ref.method}. log Z = {lz}. R = {repeats} repeats.")
    if not (problem.exact_log_z and math.isfinite(ref.log_z)):
        lines.append(
            "No exact log Z: the log Z columns show the seed-0 estimate and the mean over the "
            "repeats in brackets; compare them across contenders."
        )
    if ref.check:
        lines.append("Reference checks (from `--make-references`):")
        lines += [f"  - {line}" for line in ref.check.splitlines()]
    lines.append("")
    lines += table_rows(problem, ref, outcomes)
    lines.append("")
    for o in outcomes:
        for note in o.notes:
            lines.append(f"- {o.name}: {note}")
        for _, count, text in o.warned:
            lines.append(f"- {o.name}: warned {count}x, e.g. {text}")
    lines.append(f"- problem wall time (all contenders): {elapsed:.0f} s")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def _header(argv, total, per_problem) -> str:
    import blackjax
    import jax
    import numpyro

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "particlekit"],
            capture_output=True,
            text=True,
            cwd=HERE.parent,
        ).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return "\n".join(
        [
            "# Posterior benchmark (`bench_posteriors.py`)",
            "",
            f"Command: `python3 benchmarks/bench_posteriors.py {' '.join(argv)}`; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; total {total / 60:.1f} min "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in per_problem.items())}).",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average at the end "
            f"{', '.join(f'{x:.1f}' for x in load)}; Python {platform.python_version()}, jax "
            f"{jax.__version__} ({jax.default_backend()}, float32), numpyro {numpyro.__version__}, "
            f"blackjax {blackjax.__version__}; particlekit at commit {commit}"
            + (" with uncommitted changes under particlekit/" if dirty else "")
            + ".",
            "",
            "See the module docstring of `bench_posteriors.py` for the contenders and columns,"
            " and `posteriors.py` for the problems and their references.",
            "",
        ]
    )


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default=",".join(P.PROBLEMS))
    ap.add_argument("--repeats", type=int, default=None, help="seeds per SMC contender (5)")
    ap.add_argument("--quick", action="store_true", help="3 repeats, NUTS 300 + 300")
    ap.add_argument("--pk-kernels", default="rwm,imh,hmc", help="extra pk rows ('' for none)")
    ap.add_argument("--bj-variants", default="hand,stage-tuned", help="'' for none")
    ap.add_argument("--no-nuts", action="store_true")
    ap.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--make-references", action="store_true")
    ap.add_argument("--recompute", action="store_true", help="remake cached references")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.problems.split(",") if n.strip()]
    unknown = [n for n in names if n not in P.PROBLEMS]
    if unknown:
        ap.error(f"unknown problems {unknown}; choose from {list(P.PROBLEMS)}")
    if a.make_references:
        make_references(names, a.recompute)
        return
    repeats = a.repeats if a.repeats is not None else (3 if a.quick else 5)
    if repeats < 2:
        ap.error("--repeats must be >= 2 (the first call compiles)")
    warmup, draws = (300, 300) if a.quick else (1000, 1000)
    refs = ensure_references(names, a.recompute)

    import particlekit as pk

    default_kernel = None
    try:
        default_kernel = pk.infer.SMC(lambda: None)._cfg.spec.kernel
    except Exception:
        pass
    kernels = [k.strip() for k in a.pk_kernels.split(",") if k.strip()]
    variants = [v.strip() for v in a.bj_variants.split(",") if v.strip()]
    t_start = time.perf_counter()
    sections, per_problem = [], {}
    for name in names:
        problem, ref = P.PROBLEMS[name], refs[name]
        t0 = time.perf_counter()
        print(f"== {name} ...", flush=True)
        outcomes = [run_pk(problem, repeats, None, "pk default")]
        for k in kernels:
            if k == default_kernel:
                outcomes[0].notes.append(f"(row 'pk {k}' skipped: same as the default)")
                continue
            outcomes.append(run_pk(problem, repeats, k, f"pk {k}"))
        for v in variants:
            outcomes.append(run_blackjax(problem, repeats, v))
        if not a.no_nuts:
            outcomes.append(run_nuts(problem, warmup, draws))
        per_problem[name] = time.perf_counter() - t0
        section = problem_section(problem, ref, outcomes, repeats, per_problem[name])
        print(section, flush=True)
        sections.append(section)
    total = time.perf_counter() - t_start
    text = _header(argv, total, per_problem) + "\n" + "\n".join(sections)
    print(f"total {total / 60:.1f} min")
    if a.write:
        a.output.write_text(text)
        print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
