"""Static models: pk.infer.SMC vs BlackJAX's adaptive_tempered_smc, particles and PyMC.

Problems
--------
- Bayesian logistic regression, d = 10, n = 500, prior w ~ N(0, I). Reference log Z from
  importance sampling in float64 (4e6 draws from a Student-t fitted at the posterior mode,
  standard error ~3e-4), independent of every SMC implementation.
- 10-D two-component Gaussian mixture "likelihood" L(x) = 0.5 N(x; m, s^2 I) + 0.5 N(x; -m,
  s^2 I) under the prior N(0, s0^2 I): log Z = log N(m; 0, (s0^2 + s^2) I) exactly.

Methods (same particle count N, same target ESS 0.5 unless a row says ``ESS=``), two
kernel families
----------------------------------------------------------------------------
Random walk:

- ``pk rwm``: ``pk.infer.SMC(model, kernel="rwm", num_chains=1)`` (random walk with the
  weighted particle covariance, scale tuned towards 30 % acceptance, adaptive number of
  steps), NumPyro model in.
- ``pk waste-free rwm``: the same with ``waste_free=True`` (P = N / 10).
- ``blackjax rwm``: ``blackjax.adaptive_tempered_smc`` with BlackJAX's Gaussian random walk
  (fixed proposal scale, hand-tuned to the posterior, 10 steps per stage, as a user wires it),
  in a hand-written ``lax.while_loop`` under ``jit``.
- ``particles``: ``particles.smc_samplers.AdaptiveTempering`` (NumPy, waste-free, its default
  adaptive random walk, chains of length 10). Its ``N`` counts the resampled particles, so
  ``N = 1000`` grows 1000 chains into a population of 10 000: the same model evaluations
  per stage as ``pk rwm``'s ~10 steps on 1000 particles, and 10x those of ``pk waste-free
  rwm`` (100 chains of length 10).

Independent Metropolis-Hastings from the Gaussian fitted to the particles:

- ``pk imh``: ``pk.infer.SMC(model, kernel="imh")`` (adaptive number of steps; it settles at 2
  per stage on the logistic regression).
- ``pk imh 2 comp.``: the same with ``imh_components=2`` (a two-component Gaussian mixture
  fitted by EM as the proposal).
- ``blackjax irmh``: ``blackjax.irmh`` inside ``adaptive_tempered_smc``, with the proposal
  refitted to the weighted particles at every stage through ``blackjax.inner_kernel_tuning``
  and 2 steps per stage: the same kernel, tuning and work per stage as ``pk imh``.
- ``pymc imh``: ``pm.sample_smc(draws=N, chains=1)`` with PyMC's default IMH kernel (adaptive
  number of steps), run by ``bench_static_pymc.py`` in a subprocess with the Python given by
  ``--pymc-python`` (default: ``$PYMC_PYTHON``; skipped if neither is set). Its time includes
  building the PyTensor functions on every call, as ``pm.sample_smc`` does.

Variants (both libraries):

- ``... 5 st.``: BlackJAX with 5 MCMC steps per stage instead of 10 (rwm) or 2 (irmh).
- ``... ESS=x``: another target ESS. BlackJAX picks each temperature from the particles
  *before* they move (it moves at the old temperature, then reweights the moved particles),
  so its stages land near an ESS of 0.63-0.64 for a nominal 0.5. ``pk ... ESS=`` rows with
  the ESS BlackJAX realises (its default row's first run, to 0.05) compare at the same stage
  granularity; ``blackjax ... ESS=0.8`` rows are BlackJAX's finer schedule (realised ~0.85).
- ``pk imh 2 c. ESS=0.9 1 st.``: many small stages of one IMH step each from the
  two-component mixture (accepted ~70 % of the time on the mixture problem).

``ESS`` is the mean ESS fraction after reweighting over the non-final stages. ``x BJ`` is
the wall time relative to the default BlackJAX row of the same kernel family (``blackjax
rwm`` or ``blackjax irmh``). ``eq.acc. x BJ`` is ``time x RMSE^2`` relative to the best
BlackJAX row of the family: the time ratio at equal accuracy, since the MSE falls like ``1 /
N`` while the time grows like ``N`` (the issue's target is <= 0.5). RMSE is over seeds
against the reference; its relative standard error is about ``1/sqrt(2 seeds)`` (11 % at
the default 40 seeds, so ``eq.acc.`` ratios carry about +-25 %).
Wall time: median over seeds after a warm-up run. A problem's JAX contenders are timed
round-robin (seed by seed) so that load swings of the machine hit them alike, with Python's
garbage collector paused during each timed call (as ``timeit`` does); ``particles`` runs
after them, so that its NumPy (OpenBLAS) threads cannot land inside a JAX timing. JAX
compile time is reported separately (first call minus median).

Usage: ``python benchmarks/bench_static.py [--quick] [--seeds K] [--pymc-python PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import norm
from peers import import_particles

import particlekit as pk

D = 10


# ----------------------------------------------------------------- problems
def logistic_problem(seed=0, n=500):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    w = rng.normal(scale=0.5, size=D)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w))).astype(np.float32)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def model(x, y):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(D), 1.0).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=x @ w).to_event(1), obs=y)

    def log_prior(w):
        return jnp.sum(norm.logpdf(w))

    def log_lik(w):
        # The model's own density (NumPyro's Bernoulli-with-logits formula), so that both
        # libraries evaluate the same function. A hand-written ``y l - logaddexp(0, l)``
        # is about 1.3x cheaper on CPU, for either library.
        return jnp.sum(dist.Bernoulli(logits=x @ w).log_prob(y))

    def log_lik_np(w):  # (N, D) -> (N,)
        logits = w @ np.asarray(x).T
        return np.sum(np.asarray(y) * logits - np.logaddexp(0.0, logits), axis=1)

    return dict(
        name="logistic d=10 n=500",
        model=model,
        args=(x, y),
        log_prior=log_prior,
        log_lik=log_lik,
        log_lik_np=log_lik_np,
        prior_sd=1.0,
        bj_sigma=0.15,
        log_z=None,
    )


def mixture_problem(s0=3.0, s=0.5, shift=1.5):
    m = jnp.full(D, shift)

    def log_lik(x):
        a = jnp.sum(norm.logpdf(x, m, s))
        b = jnp.sum(norm.logpdf(x, -m, s))
        return jnp.logaddexp(a, b) + jnp.log(0.5)

    def model():
        x = numpyro.sample("x", dist.Normal(jnp.zeros(D), s0).to_event(1))
        numpyro.factor("lik", log_lik(x))

    def log_prior(x):
        return jnp.sum(norm.logpdf(x, 0.0, s0))

    def log_lik_np(x):
        from scipy.special import logsumexp as lse
        from scipy.stats import norm as snorm

        a = snorm.logpdf(x, shift, s).sum(1)
        b = snorm.logpdf(x, -shift, s).sum(1)
        return lse(np.stack([a, b]), axis=0) + np.log(0.5)

    log_z = float(jnp.sum(norm.logpdf(m, 0.0, np.sqrt(s0**2 + s**2))))
    return dict(
        name="GMM 10-D 2 comp.",
        model=model,
        args=(),
        log_prior=log_prior,
        log_lik=log_lik,
        log_lik_np=log_lik_np,
        prior_sd=s0,
        bj_sigma=s,
        log_z=log_z,
    )


def importance_sampling_log_z(problem, num_draws=4_000_000, seed=0):
    """log Z of the logistic regression by importance sampling in float64 from a Student-t
    (8 d.o.f.) at the posterior mode with the Laplace covariance (x 1.1); returns
    ``(log_z, standard_error)``."""
    from scipy import optimize, stats
    from scipy.special import logsumexp

    x, y = (np.asarray(a, np.float64) for a in problem["args"])

    def log_joint(w):  # (M, D) -> (M,)
        logits = w @ x.T
        return np.sum(y * logits - np.logaddexp(0.0, logits), 1) + stats.norm.logpdf(w).sum(1)

    mode = optimize.minimize(lambda w: -log_joint(w[None])[0], np.zeros(D), method="BFGS").x
    p = 1.0 / (1.0 + np.exp(-x @ mode))
    hessian = x.T @ (x * (p * (1.0 - p))[:, None]) + np.eye(D)
    proposal = stats.multivariate_t(loc=mode, shape=1.1 * np.linalg.inv(hessian), df=8)
    rng = np.random.default_rng(seed)
    chunks = []
    for _ in range(num_draws // 100_000):
        w = proposal.rvs(size=100_000, random_state=rng)
        chunks.append(log_joint(w) - proposal.logpdf(w))
    log_w = np.concatenate(chunks)
    ratio = np.exp(log_w - log_w.max())
    log_z = float(logsumexp(log_w) - np.log(log_w.size))
    return log_z, float(np.std(ratio) / np.sqrt(ratio.size) / np.mean(ratio))


# ------------------------------------------------------------------ methods
# Each contender is a function ``once(seed) -> (seconds, stages, log_z, ess)`` for one run,
# timing the run itself (not the diagnostics read afterwards); all of a problem's contenders
# are then run round-robin (``time_round_robin``).
def particlekit_contender(problem, n, **options):
    # one chain per call, random walk unless another kernel is named (the rows as they were
    # defined before the default became adaptive HMC with 2 chains)
    options = {"kernel": "rwm", "num_chains": 1, **options}
    smc = pk.infer.SMC(problem["model"], num_particles=n, **options)

    def once(seed):
        t0 = time.perf_counter()
        smc.run(jax.random.key(seed), *problem["args"])
        log_z = float(jax.block_until_ready(smc.log_evidence))
        elapsed = time.perf_counter() - t0
        stages = int(np.asarray(smc.result.num_stages)[0])
        ess = float(np.mean(np.asarray(smc.result.stages.ess)[0, : stages - 1]))
        return elapsed, stages, log_z, ess

    return once


def _blackjax_contender(run):
    def once(seed):
        t0 = time.perf_counter()
        stages, log_z, ess_sum, last_ess = jax.block_until_ready(run(jax.random.key(seed)))
        elapsed = time.perf_counter() - t0
        ess = float(ess_sum - last_ess) / max(int(stages) - 1, 1)  # non-final stages
        return elapsed, int(stages), float(log_z), ess

    return once


def _blackjax_loop(algo, problem, n):
    """The loop a BlackJAX user writes around ``algo.step``, under one ``jit``."""

    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)
        positions = problem["prior_sd"] * jax.random.normal(k0, (n, D))
        state = algo.init(positions)

        def cond(c):
            lam = getattr(c[1], "sampler_state", c[1]).tempering_param
            return (lam < 1.0) & (c[0] < 500)

        def body(c):
            i, state, log_z, ess_sum, _ = c
            state, info = algo.step(jax.random.fold_in(k1, i), state)
            weights = getattr(state, "sampler_state", state).weights
            ess = 1.0 / jnp.sum(weights**2) / n  # realised ESS fraction of the stage
            return i + 1, state, log_z + info.log_likelihood_increment, ess_sum + ess, ess

        i, _, log_z, ess_sum, last_ess = jax.lax.while_loop(cond, body, (0, state, 0.0, 0.0, 0.0))
        return i, log_z, ess_sum, last_ess

    return run


def blackjax_contender(problem, n, num_mcmc_steps=10, target_ess=0.5):
    """Random walk with a fixed scale (tuned by hand to the posterior), 10 steps per stage."""
    sigma = 2.38 / np.sqrt(D) * problem["bj_sigma"] * jnp.eye(D)
    rw = blackjax.additive_step_random_walk.build_kernel()

    def step_fn(key, state, logdensity_fn, sigma):
        return rw(key, state, logdensity_fn, blackjax.mcmc.random_walk.normal(sigma))

    algo = blackjax.adaptive_tempered_smc(
        problem["log_prior"],
        problem["log_lik"],
        step_fn,
        blackjax.additive_step_random_walk.init,
        blackjax.smc.extend_params({"sigma": sigma}),
        blackjax.smc.resampling.systematic,
        target_ess,
        num_mcmc_steps=num_mcmc_steps,
    )
    return _blackjax_contender(_blackjax_loop(algo, problem, n))


def blackjax_irmh_contender(problem, n, num_mcmc_steps=2, target_ess=0.5):
    """BlackJAX's independent MH with the proposal N(mean, cov) refitted to the weighted
    particles at every stage through ``blackjax.inner_kernel_tuning``: the same kernel and
    tuning as ``pk.infer.SMC(kernel="imh")``, with a fixed number of steps."""
    irmh = blackjax.irmh.build_kernel()

    def step_fn(key, state, logdensity_fn, mean, chol, inv_chol):
        def propose(k):
            return mean + chol @ jax.random.normal(k, (D,))

        def log_q(state_from, state_to):
            return -0.5 * jnp.sum((inv_chol @ (state_to.position - mean)) ** 2)

        return irmh(key, state, logdensity_fn, propose, log_q)

    def fit(positions, weights):
        mean = weights @ positions
        centred = positions - mean
        cov = (centred * weights[:, None]).T @ centred + 1e-6 * jnp.eye(D)
        chol = jnp.linalg.cholesky(cov)
        inv_chol = jax.scipy.linalg.solve_triangular(chol, jnp.eye(D), lower=True)
        return blackjax.smc.extend_params({"mean": mean, "chol": chol, "inv_chol": inv_chol})

    def update(key, state, info):
        return fit(state.particles, state.weights)

    # first stage: the prior N(0, prior_sd^2 I) is the exact fit
    prior_fit = blackjax.smc.extend_params(
        {
            "mean": jnp.zeros(D),
            "chol": problem["prior_sd"] * jnp.eye(D),
            "inv_chol": jnp.eye(D) / problem["prior_sd"],
        }
    )
    algo = blackjax.inner_kernel_tuning(
        smc_algorithm=blackjax.adaptive_tempered_smc,
        logprior_fn=problem["log_prior"],
        loglikelihood_fn=problem["log_lik"],
        mcmc_step_fn=step_fn,
        mcmc_init_fn=blackjax.irmh.init,
        resampling_fn=blackjax.smc.resampling.systematic,
        mcmc_parameter_update_fn=update,
        initial_parameter_value=prior_fit,
        num_mcmc_steps=num_mcmc_steps,
        target_ess=target_ess,
    )
    return _blackjax_contender(_blackjax_loop(algo, problem, n))


def particles_contender(problem, n):
    particles = import_particles("particles")
    if particles is None:
        return None
    pdists, ssp = particles.distributions, particles.smc_samplers

    class Static(ssp.StaticModel):
        def loglik(self, theta, t=None):
            return problem["log_lik_np"](theta["x"])

    prior = pdists.StructDist(
        {"x": pdists.IndepProd(*[pdists.Normal(scale=problem["prior_sd"]) for _ in range(D)])}
    )

    def once(seed):
        np.random.seed(seed)  # noqa: NPY002 (particles draws from the global NumPy RNG)
        fk = ssp.AdaptiveTempering(model=Static(data=None, prior=prior), len_chain=10)
        alg = particles.SMC(fk=fk, N=n, verbose=False)
        t0 = time.perf_counter()
        alg.run()
        elapsed = time.perf_counter() - t0
        population = len(alg.wgts.lw)  # waste-free: N chains of length len_chain
        ess = float(np.mean(alg.summaries.ESSs[:-1])) / population
        return elapsed, alg.t, float(alg.logLt), ess

    return once


def without_gc(once):
    """``once`` with Python's garbage collector run before and paused during the call (as
    ``timeit`` does), so that no contender pays for collecting the others' objects."""

    def timed(seed):
        gc.collect()
        gc.disable()
        try:
            return once(seed)
        finally:
            gc.enable()

    return timed


def time_round_robin(contenders, seeds, first=None):
    """Run every contender on every seed, round-robin (seed-major), so that load swings of
    the machine hit all contenders alike. A first call on ``seeds[0]`` compiles and is timed
    separately (unless ``first`` already holds its time). Returns ``{name: (first, [(time,
    stages, log_z, ess), ...])}``."""
    first = dict(first or {})
    contenders = {name: without_gc(once) for name, once in contenders.items()}
    for name, once in contenders.items():
        if name not in first:
            first[name] = once(seeds[0])[0]
    rows = {name: [] for name in contenders}
    for seed in seeds:
        for name, once in contenders.items():
            rows[name].append(once(seed))
    return {name: (first[name], rows[name]) for name in contenders}


def run_pymc(python, n, seeds):
    """Run ``bench_static_pymc.py`` once with ``python``; {problem name: (first, rows)}."""
    script = Path(__file__).with_name("bench_static_pymc.py")
    cmd = [python, str(script), "--particles", str(n), "--seeds", str(len(seeds)), "--json"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    results = {}
    for line in proc.stdout.splitlines():
        if line.strip():
            record = json.loads(line)
            results[record["problem"]] = (record["first"], [tuple(r) for r in record["rows"]])
    return results


# ------------------------------------------------------------------ driver
def summarise(name, family, first, out, log_z_ref):
    times = np.array([o[0] for o in out])
    stages = np.array([o[1] for o in out])
    log_z = np.array([o[2] for o in out])
    ess = np.array([o[3] if len(o) > 3 else np.nan for o in out])
    median = float(np.median(times))
    return dict(
        method=name,
        family=family,
        time=median,
        compile=max(first - median, 0.0),
        stages=float(stages.mean()),
        ess=float(ess.mean()),
        log_z=float(log_z.mean()),
        sd=float(log_z.std(ddof=1)) if len(log_z) > 1 else np.nan,
        bias=float(np.mean(log_z) - log_z_ref),
        rmse=float(np.sqrt(np.mean((log_z - log_z_ref) ** 2))),
    )


def run_problem(problem, n, seeds):
    """Every JAX and ``particles`` contender on one problem, timed round-robin."""
    log_z_ref = problem["log_z"]
    # BlackJAX picks each temperature on the particles before they move, so its stages land
    # above its nominal target ESS; the "ESS=" rows give pk.infer.SMC the ESS BlackJAX
    # realises (its default rows' first run, mean over non-final stages, to 0.05).
    warm = {
        "blackjax rwm": ("rwm", blackjax_contender(problem, n)),
        "blackjax irmh": ("imh", blackjax_irmh_contender(problem, n)),
    }
    first, matched = {}, {}
    for name, (family, once) in warm.items():
        first[name], _, _, ess = once(seeds[0])
        matched[family] = round(20 * ess) / 20

    def pk(**options):
        return particlekit_contender(problem, n, **options)

    rwm, imh = matched["rwm"], matched["imh"]
    contenders = {
        "pk rwm": ("rwm", pk()),
        f"pk rwm ESS={rwm:.2f}": ("rwm", pk(target_ess=rwm)),
        "pk waste-free rwm": ("rwm", pk(waste_free=True)),
        "blackjax rwm": warm["blackjax rwm"],
        "blackjax rwm 5 st.": ("rwm", blackjax_contender(problem, n, num_mcmc_steps=5)),
        "blackjax rwm ESS=0.8": ("rwm", blackjax_contender(problem, n, target_ess=0.8)),
        "pk imh": ("imh", pk(kernel="imh")),
        f"pk imh ESS={imh:.2f}": ("imh", pk(kernel="imh", target_ess=imh)),
        "pk imh 2 comp.": ("imh", pk(kernel="imh", imh_components=2)),
        f"pk imh 2 c. ESS={imh:.2f}": ("imh", pk(kernel="imh", imh_components=2, target_ess=imh)),
        "pk imh 2 c. ESS=0.9 1 st.": (
            "imh",
            pk(kernel="imh", imh_components=2, target_ess=0.9, num_mcmc_steps=1),
        ),
        "blackjax irmh": warm["blackjax irmh"],
        "blackjax irmh 5 st.": ("imh", blackjax_irmh_contender(problem, n, num_mcmc_steps=5)),
        "blackjax irmh ESS=0.8": ("imh", blackjax_irmh_contender(problem, n, target_ess=0.8)),
    }
    timed = time_round_robin(
        {name: once for name, (_, once) in contenders.items()}, seeds, first=first
    )
    # particles (NumPy) runs after the JAX contenders, not between them, so that its
    # OpenBLAS threads (which spin for a while after each call) cannot disturb a JAX timing.
    once = particles_contender(problem, n)
    order = [*contenders][:6] + (["particles"] if once is not None else []) + [*contenders][6:]
    if once is not None:
        contenders["particles"] = ("rwm", once)
        timed["particles"] = (0.0, time_round_robin({"": once}, seeds)[""][1])
    return [summarise(name, contenders[name][0], *timed[name], log_z_ref) for name in order]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few particles and seeds")
    parser.add_argument("--particles", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument(
        "--pymc-python",
        default=os.environ.get("PYMC_PYTHON"),
        help="Python with PyMC installed, to run bench_static_pymc.py (default: $PYMC_PYTHON)",
    )
    args = parser.parse_args()
    n = args.particles or (200 if args.quick else 1000)
    num_seeds = args.seeds or (2 if args.quick else 40)
    seeds = list(range(1, num_seeds + 1))
    print(
        f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s), jax {jax.__version__}, blackjax "
        f"{blackjax.__version__}; N={n}, seeds={num_seeds}"
    )
    problems = (logistic_problem(), mixture_problem())
    for problem in problems:  # references first: no NumPy work between timed JAX runs
        if problem["log_z"] is None:
            problem["log_z"], se = importance_sampling_log_z(
                problem, num_draws=400_000 if args.quick else 4_000_000
            )
            print(f"reference log Z ({problem['name']}): {problem['log_z']:.4f} (IS, se {se:.1e})")
    if args.pymc_python:
        print(f"running PyMC with {args.pymc_python} ...", flush=True)
        pymc_results = run_pymc(args.pymc_python, n, seeds)
    else:
        pymc_results = {}
        print("note: PyMC skipped (pass --pymc-python PATH or set PYMC_PYTHON)")
    for problem in problems:
        log_z_ref = problem["log_z"]
        rows = run_problem(problem, n, seeds)
        if problem["name"] in pymc_results:
            rows.append(summarise("pymc imh", "imh", *pymc_results[problem["name"]], log_z_ref))
        by_name = {r["method"]: r for r in rows}
        default_blackjax = {"rwm": by_name["blackjax rwm"], "imh": by_name["blackjax irmh"]}
        # work x MSE: the time needed for a given accuracy (MSE ~ 1/N, time ~ N)
        best_blackjax = {
            family: min(
                r["time"] * r["rmse"] ** 2
                for r in rows
                if r["family"] == family and r["method"].startswith("blackjax")
            )
            for family in default_blackjax
        }
        print(f"\n## {problem['name']}  (log Z ref = {log_z_ref:.4f})")
        print(
            f"{'method':<28}{'time s':>9}{'compile s':>11}{'x BJ':>7}{'stages':>8}{'ESS':>6}"
            f"{'mean logZ':>11}{'sd':>8}{'bias':>8}{'rmse':>8}{'eq.acc. x BJ':>14}"
        )
        for r in rows:
            ratio = r["time"] / default_blackjax[r["family"]]["time"]
            equal_accuracy = r["time"] * r["rmse"] ** 2 / best_blackjax[r["family"]]
            print(
                f"{r['method']:<28}{r['time']:>9.3f}{r['compile']:>11.2f}{ratio:>7.2f}"
                f"{r['stages']:>8.1f}{r['ess']:>6.2f}{r['log_z']:>11.3f}{r['sd']:>8.3f}{r['bias']:>8.3f}"
                f"{r['rmse']:>8.3f}{equal_accuracy:>14.2f}"
            )


if __name__ == "__main__":
    main()
