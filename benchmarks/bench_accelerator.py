"""Accelerator benchmark: four particlekit recipes beside hand-written JAX baselines, from
N = 1e3 to 1e7 particles, on whatever device JAX finds (GPU, TPU or CPU).

Recipes (particlekit call | baseline written directly with ``jax.numpy`` / ``lax``, no
particlekit):

* ``filter``: ``pk.filters.bootstrap`` (vectorized model, ``keep_history=False``) on
  ``x_t = 0.9 x_{t-1} + N(0, 1)``, ``y_t = x_t + N(0, 0.5^2)``, ``T = 100``, systematic
  resampling when ``ESS < N / 2`` | ``bench_filters.make_hand_filter`` with the textbook
  ``searchsorted`` systematic resampler (the same baseline as ``bench_filters.py``);
* ``smc``: ``pk.infer.SMC`` (one chain, ``kernel="rwm"``, ``num_mcmc_steps = M`` fixed,
  ``target_ess = 0.5``) on a NumPyro model, ``theta ~ N(0, I_2)``, 20 observations
  ``y_j ~ N(theta, I_2)`` | a hand-written adaptive tempered SMC with the same rule: the
  next temperature by 30 bisections on ``log delta`` of the conditional ESS, systematic
  resampling at every stage, ``M`` random-walk MH steps with covariance ``s^2 Sigma``
  (``Sigma`` the weighted particle covariance, ``s`` from ``2.38 / sqrt(D)`` towards 30 %
  acceptance). Particle-steps: stages x (M + 1) per particle, read from each run;
* ``pdds``: ``pk.diffusion.pdds`` (naive potential, cosine schedule, ``sigma = 2.5``,
  ``K = 32`` steps, no MCMC, resampling when ``ESS < 0.3 N``) on a normalised 2-D
  three-component Gaussian mixture (``log Z = 0``) | the same discretised sampler by hand:
  guided Gaussian move, closed-form ``p_ref / q`` ratio times the potential ratio,
  systematic resampling on the ESS;
* ``fk``: ``pk.diffusion.fk_steering`` (``potential="difference"``, intermediate reward of
  the Tweedie prediction, resampling at every step, DDPM, ``K = 100``) of
  ``pk.diffusion.gaussian_mixture`` (two modes) with reward ``r(x) = x_0`` and
  ``lmbda = 1`` | the same reverse DDPM chain by hand, with the mixture's exact noised score
  written out (two score evaluations per particle-step, as particlekit does: the move at
  ``t`` and the Tweedie reward at ``s``).

For each recipe, N and contender a fresh subprocess (``--one RECIPE N CONTENDER``) compiles
and runs once (a new seed per call), then times further calls, each wrapped in
``block_until_ready``: at least ``--repeats`` (3) of them, more while they add up to under
``--min-time`` seconds, only one when a call takes over ``--slow`` seconds. It reports one
JSON line: the median time, compile time (first call minus the median), ns per
particle-step, peak memory (the device's ``peak_bytes_in_use`` on GPU / TPU; on CPU the
process's peak resident memory, which includes Python, JAX and XLA's compiler) and the
log-evidence of every call. Extra seeds are then run (within ``--check-budget`` seconds)
so that the log Z column gives particlekit's and the baseline's mean with its standard
error, beside the exact value where there is one: a baseline that did less work would show
there. For tempered SMC the note under the table gives the time of the host-side checks
that ``SMC.run`` makes after its compiled run (``convergence.assess``).

Usage::

    python benchmarks/bench_accelerator.py               # N = 1e3..1e7 (GPU/TPU), 1e3..1e5 (CPU)
    python benchmarks/bench_accelerator.py --max-n 1e6   # change the largest N
    python benchmarks/bench_accelerator.py --quick       # smoke run: N = 1e3, short runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from bench_filters import (  # noqa: E402
    RHO_LG,
    SIG_Y_LG,
    make_hand_filter,
    pk_model,
    searchsorted_systematic,
)
from jax.scipy.special import logsumexp  # noqa: E402

import particlekit as pk  # noqa: E402
from particlekit.infer import convergence  # noqa: E402

RECIPES = ("filter", "smc", "pdds", "fk")
CONTENDERS = ("particlekit", "baseline")
TITLES = {
    "filter": "bootstrap filter: `pk.filters.bootstrap` vs `bench_filters.make_hand_filter`",
    "smc": "tempered SMC: `pk.infer.SMC(kernel='rwm')` vs hand-written adaptive tempered SMC",
    "pdds": "PDDS: `pk.diffusion.pdds` (naive potential) vs hand-written PDDS",
    "fk": "FK steering: `pk.diffusion.fk_steering` vs hand-written FK steering",
}
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# --------------------------------------------------------------------------- problem sizes
FULL = {"T": 100, "M": 5, "K_PDDS": 32, "K_FK": 100}
QUICK = {"T": 20, "M": 2, "K_PDDS": 8, "K_FK": 10}

# tempered SMC: theta ~ N(0, I_2), y_j ~ N(theta, SIG_Y^2 I_2), j = 1..NUM_OBS
DIM, NUM_OBS, SIG_Y = 2, 20, 1.0
# PDDS target: a normalised 2-D mixture (log Z = 0), reference scale sigma = 2.5
PDDS_W = (0.2, 0.5, 0.3)
PDDS_MU = ((-2.5, 0.0), (1.5, 2.0), (2.0, -2.0))
PDDS_SD = (0.5, 0.7, 0.4)
PDDS_SIGMA, PDDS_ESS = 2.5, 0.3
# FK steering: data = 0.5 N((-2, 0), 0.5^2 I) + 0.5 N((2, 0), 0.5^2 I), reward x_0, lmbda 1
FK_W, FK_MU, FK_SD, FK_LMBDA = (0.5, 0.5), ((-2.0, 0.0), (2.0, 0.0)), 0.5, 1.0


# --------------------------------------------------------------------------- exact values
def kalman_log_z(ys) -> float:
    """Exact log-evidence of the linear Gaussian model (float64 Kalman filter)."""
    m, v, total = 0.0, 1.0, 0.0
    for t, y in enumerate(np.asarray(ys, np.float64)):
        if t > 0:
            m, v = RHO_LG * m, RHO_LG**2 * v + 1.0
        s = v + SIG_Y_LG**2
        total += -0.5 * (math.log(2 * math.pi * s) + (y - m) ** 2 / s)
        gain = v / s
        m, v = m + gain * (y - m), (1.0 - gain) * v
    return total


def smc_data() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (np.array([1.0, -0.5]) + SIG_Y * rng.standard_normal((NUM_OBS, DIM))).astype(np.float32)


def smc_log_z(y) -> float:
    """Exact log-evidence: each coordinate's observations are N(0, SIG_Y^2 I + 1 1^T)."""
    cov = SIG_Y**2 * np.eye(NUM_OBS) + np.ones((NUM_OBS, NUM_OBS))
    _, logdet = np.linalg.slogdet(cov)
    y = np.asarray(y, np.float64)
    quad = np.einsum("id,ij,jd->", y, np.linalg.inv(cov), y)
    return float(-0.5 * (quad + DIM * logdet + DIM * NUM_OBS * math.log(2 * math.pi)))


def fk_log_z() -> float:
    """``log E_p[exp(lmbda x_0)]`` under the data mixture (the continuous-time value; the
    K-step DDPM chain samples a slightly different law)."""
    terms = [
        math.log(w) + FK_LMBDA * mu[0] + 0.5 * FK_LMBDA**2 * FK_SD**2
        for w, mu in zip(FK_W, FK_MU, strict=True)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


# --------------------------------------------------------------------------- shared pieces
def mixture_log_density(x):
    """log of the normalised PDDS target (one particle ``x (2,)``), pure jnp: the user's
    function, passed unchanged to particlekit and to the baseline."""
    w, mu, sd = jnp.array(PDDS_W), jnp.array(PDDS_MU), jnp.array(PDDS_SD)
    z = (x - mu) / sd[:, None]
    comp = -0.5 * jnp.sum(z**2, axis=-1) - DIM * (jnp.log(sd) + HALF_LOG_2PI)
    return logsumexp(jnp.log(w) + comp)


def log_mean_exp(lw):
    top = jnp.max(lw)
    return top + jnp.log(jnp.mean(jnp.exp(lw - top)))


def ess_of(lw):
    w = jnp.exp(lw - jnp.max(lw))
    return jnp.sum(w) ** 2 / jnp.sum(w**2)


def cosine_alpha_bar(t, s=0.008, floor=1e-5):
    f = lambda u: jnp.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
    return jnp.clip(f(t) / f(0.0), floor, 1.0)


def linear_alpha_bar(t, beta_min=0.1, beta_max=20.0, floor=1e-5):
    return jnp.clip(jnp.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t**2)), floor, 1.0)


# --------------------------------------------------------------------------- baselines
def make_hand_smc(n, num_mcmc_steps, target_ess=0.5, num_bisections=30, max_stages=500):
    """Adaptive tempered SMC by hand: bisection on the conditional ESS, systematic
    resampling at every stage, random-walk MH with the population-scaled covariance."""
    log_n = math.log(n)
    target_acc = 0.3

    def log_prior(u):
        return -0.5 * jnp.sum(u**2, axis=-1) - DIM * HALF_LOG_2PI

    def log_lik(u, y):  # (N, D), (NUM_OBS, D) -> (N,)
        r = (y[None] - u[:, None]) / SIG_Y
        return -0.5 * jnp.sum(r**2, axis=(1, 2)) - y.size * (math.log(SIG_Y) + HALF_LOG_2PI)

    def cess(ll, delta):  # equal weights after every resampling
        lg = delta * ll
        h = jnp.exp(lg - jnp.max(lg))
        return jnp.sum(h) ** 2 / (n * jnp.sum(h**2))

    @jax.jit
    def run(key, y):
        k0, k_run = jax.random.split(key)
        u = jax.random.normal(k0, (n, DIM))
        init = (u, log_prior(u), log_lik(u, y), 0.0, math.log(2.38 / math.sqrt(DIM)), 0.0, 0)

        def stage(c):
            u, lp, ll, lam, log_s, log_z, i = c
            k_res, k_move = jax.random.split(jax.random.fold_in(k_run, i))
            max_d = 1.0 - lam
            min_d = jnp.minimum(1e-6, max_d)

            def bisect(_, b):
                mid = 0.5 * (b[0] + b[1])
                good = cess(ll, jnp.exp(mid)) >= target_ess
                return jnp.where(good, mid, b[0]), jnp.where(good, b[1], mid)

            lo, _ = jax.lax.fori_loop(0, num_bisections, bisect, (jnp.log(min_d), jnp.log(max_d)))
            delta = jnp.where(cess(ll, max_d) >= target_ess, max_d, jnp.exp(lo))
            delta = jnp.clip(delta, min_d, max_d)
            new_lam = jnp.where((delta >= max_d) | (lam + delta >= 1.0 - min_d), 1.0, lam + delta)
            log_w = (new_lam - lam) * ll
            log_z = log_z + logsumexp(log_w) - log_n
            w = jnp.exp(log_w - logsumexp(log_w))
            mean = w @ u
            cov = ((u - mean) * w[:, None]).T @ (u - mean)
            cov = cov + 1e-6 * (jnp.trace(cov) / DIM + 1e-6) * jnp.eye(DIM)
            chol_t = (jnp.exp(log_s) * jnp.linalg.cholesky(cov)).T
            idx = searchsorted_systematic(k_res, log_w)
            u, lp, ll = u[idx], lp[idx], ll[idx]

            def mh(carry, k):
                u, lp, ll, acc = carry
                k_prop, k_acc = jax.random.split(k)
                u_new = u + jax.random.normal(k_prop, (n, DIM)) @ chol_t
                lp_new, ll_new = log_prior(u_new), log_lik(u_new, y)
                log_ratio = lp_new + new_lam * ll_new - lp - new_lam * ll
                accept = jnp.log(jax.random.uniform(k_acc, (n,))) < log_ratio
                u = jnp.where(accept[:, None], u_new, u)
                lp, ll = jnp.where(accept, lp_new, lp), jnp.where(accept, ll_new, ll)
                return (u, lp, ll, acc + accept.mean()), None

            (u, lp, ll, acc), _ = jax.lax.scan(
                mh, (u, lp, ll, 0.0), jax.random.split(k_move, num_mcmc_steps)
            )
            acc = acc / num_mcmc_steps
            step = jnp.clip(jnp.log((acc + 1e-3) / target_acc), -2.0, 1.0)
            log_s = jnp.clip(log_s + step, -12.0, 5.0)
            return u, lp, ll, new_lam, log_s, log_z, i + 1

        c = jax.lax.while_loop(lambda c: (c[3] < 1.0) & (c[6] < max_stages), stage, init)
        return c[5], c[6]

    return run


def make_hand_pdds(n, num_steps, log_density, sigma=PDDS_SIGMA, ess_threshold=PDDS_ESS):
    """PDDS by hand, naive guidance ``log g_t(x) = log g_0(sqrt(alpha_bar_t) x)``, one
    cached value-and-gradient per particle and step."""
    log_n = math.log(n)

    def potential(t, x):  # one particle
        z = jnp.sqrt(cosine_alpha_bar(t)) * x
        ref = -0.5 * jnp.sum((z / sigma) ** 2) - z.shape[0] * (math.log(sigma) + HALF_LOG_2PI)
        return log_density(z) - ref

    def value_and_grad(t, x):  # (N, D) -> (N,), (N, D)
        v, g = jax.vmap(jax.value_and_grad(potential, argnums=1), in_axes=(None, 0))(t, x)
        return v, jnp.where(jnp.isfinite(g), g, 0.0)

    def maybe_resample(key, x, v, g, lw):
        def resample(args):
            x, v, g, lw = args
            idx = searchsorted_systematic(key, lw)
            return x[idx], v[idx], g[idx], jnp.zeros_like(lw)

        return jax.lax.cond(ess_of(lw) < ess_threshold * n, resample, lambda a: a, (x, v, g, lw))

    @jax.jit
    def run(key):
        ts = jnp.linspace(0.0, 1.0, num_steps + 1)[::-1]
        k0, k_res0, k_run = jax.random.split(key, 3)
        x = sigma * jax.random.normal(k0, (n, DIM))
        v, g = value_and_grad(ts[0], x)
        lw = jnp.where(jnp.isnan(v) | (v == jnp.inf), -jnp.inf, v)
        log_z = logsumexp(lw) - log_n
        x, v, g, lw = maybe_resample(k_res0, x, v, g, lw)

        def step(carry, inp):
            x, v, g, lw, log_z = carry
            t_prev, t_next, k = inp
            k_move, k_res = jax.random.split(k)
            lam = -jnp.expm1(jnp.log(cosine_alpha_bar(t_prev)) - jnp.log(cosine_alpha_bar(t_next)))
            var = sigma**2 * lam
            mean0 = jnp.sqrt(1.0 - lam) * x
            x_new = mean0 + var * g + jnp.sqrt(var) * jax.random.normal(k_move, x.shape)
            v_new, g_new = value_and_grad(t_next, x_new)
            inc = -jnp.sum((x_new - mean0) * g, axis=1) + 0.5 * var * jnp.sum(g**2, axis=1)
            inc = jnp.where(jnp.isfinite(v), inc + v_new - v, -jnp.inf)
            inc = jnp.where(jnp.isnan(inc) | (inc == jnp.inf), -jnp.inf, inc)
            lw = lw - logsumexp(lw) + inc
            log_z = log_z + logsumexp(lw)
            x, v, g, lw = maybe_resample(k_res, x_new, v_new, g_new, lw)
            return (x, v, g, lw, log_z), None

        keys = jax.random.split(k_run, num_steps)
        (_, _, _, _, log_z), _ = jax.lax.scan(step, (x, v, g, lw, log_z), (ts[:-1], ts[1:], keys))
        return log_z

    return run


def make_hand_fk(n, num_steps, lmbda=FK_LMBDA):
    """FK steering by hand: DDPM reverse chain of the Gaussian-mixture model (its exact
    noised score, the same eigen-decomposed formula as ``GaussianMixtureScore``), the
    "difference" potential on the Tweedie prediction, systematic resampling at every step
    but the last."""
    log_n = math.log(n)
    means = jnp.array(FK_MU)
    covs = jnp.stack([FK_SD**2 * jnp.eye(DIM)] * len(FK_W))
    eigvals, eigvecs = jnp.linalg.eigh(covs)
    log_w = jnp.log(jnp.array(FK_W) / sum(FK_W))

    def score_one(x, ab):  # one sample (D,): GaussianMixtureScore's formula
        var = ab * eigvals + (1.0 - ab)  # (K, D)
        z = jnp.einsum("kji,kj->ki", eigvecs, x - jnp.sqrt(ab) * means)
        log_joint = log_w - 0.5 * jnp.sum(z**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        resp = jax.nn.softmax(log_joint)
        return -jnp.einsum("k,kij,kj->i", resp, eigvecs, z / var)

    # the "network" takes one sample and is vmapped, as a user's network would be (the
    # same formula batched by hand with einsums over (N, K, D) ran 3-5x slower on CPU)
    score = jax.vmap(score_one, in_axes=(0, None))

    def eps(x, ab):
        return -jnp.sqrt(1.0 - ab) * score(x, ab)

    def reverse(key, x, t, s):
        ab_t, ab_s = linear_alpha_bar(t), linear_alpha_bar(s)
        e = eps(x, ab_t)
        x0 = (x - jnp.sqrt(1.0 - ab_t) * e) / jnp.sqrt(ab_t)
        lam = -jnp.expm1(jnp.log(ab_t) - jnp.log(ab_s))
        var = (1.0 - ab_s) / (1.0 - ab_t) * lam
        mean = jnp.sqrt(ab_s) * x0 + jnp.sqrt(jnp.clip(1.0 - ab_s - var, 0.0)) * e
        if key is None:  # last step, s = 0: var = 0
            return mean
        return mean + jnp.sqrt(var) * jax.random.normal(key, x.shape)

    def tweedie_reward(x, s):  # r(x0_hat(x_s, s)) with r(x) = x_0
        ab = linear_alpha_bar(s)
        x0 = (x - jnp.sqrt(1.0 - ab) * eps(x, ab)) / jnp.sqrt(ab)
        return x0[:, 0]

    @jax.jit
    def run(key):
        grid = jnp.linspace(0.0, 1.0, num_steps + 1)
        ts, ss = grid[1:][::-1], grid[:-1][::-1]
        k0, k_run, k_last = jax.random.split(key, 3)
        x = jax.random.normal(k0, (n, DIM))

        def step(carry, inp):  # every step but the last: move, weight, resample
            x, r_last, log_z = carry
            t, s, k = inp
            k_move, k_res = jax.random.split(k)
            x = reverse(k_move, x, t, s)
            r = tweedie_reward(x, s)
            lw = lmbda * (r - r_last)  # equal weights before: resampled at every step
            log_z = log_z + logsumexp(lw) - log_n
            idx = searchsorted_systematic(k_res, lw)
            return (x[idx], r[idx], log_z), None

        keys = jax.random.split(k_run, num_steps - 1)
        carry = (x, jnp.zeros(n), jnp.zeros(()))
        (x, r_last, log_z), _ = jax.lax.scan(step, carry, (ts[:-1], ss[:-1], keys))
        x = reverse(None, x, ts[-1], ss[-1])  # final correction: lmbda (r(x_0) - r_last)
        return log_z + logsumexp(lmbda * (x[:, 0] - r_last)) - log_n

    return run


# --------------------------------------------------------------------------- one configuration
def build(recipe: str, contender: str, n: int, sizes: dict):
    """``(call, exact log Z, host_check)``: ``call(seed) -> (log Z, steps per particle)``
    blocks until the result is ready; ``host_check`` (tempered SMC only, else None) times
    the host-side part of ``SMC.run``."""
    pkc = contender == "particlekit"
    if recipe == "filter":
        num_steps = sizes["T"]
        _, ys = pk_model("lg", False).simulate(jax.random.key(42), num_steps)
        exact = kalman_log_z(ys)
        if pkc:
            ssm = pk_model("lg", True)

            def call(seed):
                res = pk.filters.bootstrap(
                    jax.random.key(seed),
                    ssm,
                    ys,
                    num_particles=n,
                    keep_history=False,
                    progress_bar=False,
                )
                return jax.block_until_ready(res.log_evidence), num_steps
        else:
            hand = make_hand_filter("lg", n, searchsorted_systematic)

            def call(seed):
                return jax.block_until_ready(hand(jax.random.key(seed), ys)), num_steps

        return call, exact, None
    if recipe == "smc":
        m = sizes["M"]
        y = jnp.asarray(smc_data())
        exact = smc_log_z(y)
        if pkc:

            def model(y):
                theta = numpyro.sample("theta", dist.Normal(jnp.zeros(DIM), 1.0).to_event(1))
                with numpyro.plate("obs", y.shape[0]):
                    numpyro.sample("y", dist.Normal(theta, SIG_Y).to_event(1), obs=y)

            smc = pk.infer.SMC(
                model,
                num_particles=n,
                kernel="rwm",
                num_mcmc_steps=m,
                num_chains=1,
                progress_bar=False,
            )

            def call(seed):
                smc.run(jax.random.key(seed), y)  # blocks, then checks on the host
                return jax.block_until_ready(smc.log_evidence), smc.result.num_stages[0]

            def host_check():
                """Seconds of the host-side checks that ``SMC.run`` makes after the
                compiled run (``convergence.assess``, with the device-to-host copies)."""
                r = smc.result
                t0 = time.perf_counter()
                convergence.assess(
                    np.asarray(r.positions),
                    np.asarray(r.log_evidence),
                    np.asarray(r.stages.ess),
                    np.asarray(r.num_stages),
                    np.asarray(r.stages.capped) == 1.0,
                    n,
                )
                return time.perf_counter() - t0
        else:
            hand = make_hand_smc(n, m)

            def call(seed):
                return jax.block_until_ready(hand(jax.random.key(seed), y))

        def call_steps(seed):
            log_z, stages = call(seed)
            return log_z, int(stages) * (m + 1)

        return call_steps, exact, host_check if pkc else None
    if recipe == "pdds":
        k = sizes["K_PDDS"]
        if pkc:

            def call(seed):
                res = pk.diffusion.pdds(
                    jax.random.key(seed),
                    mixture_log_density,
                    DIM,
                    num_particles=n,
                    num_steps=k,
                    sigma=PDDS_SIGMA,
                    potential=None,
                    ess_threshold=PDDS_ESS,
                    progress_bar=False,
                )
                return jax.block_until_ready(res.log_evidence), k
        else:
            hand = make_hand_pdds(n, k, mixture_log_density)

            def call(seed):
                return jax.block_until_ready(hand(jax.random.key(seed))), k

        return call, 0.0, None
    if recipe == "fk":
        k = sizes["K_FK"]
        if pkc:
            model = pk.diffusion.gaussian_mixture(FK_W, FK_MU, stds=FK_SD)
            reward = lambda x: x[0]

            def call(seed):
                res = pk.diffusion.fk_steering(
                    jax.random.key(seed),
                    model,
                    reward,
                    num_particles=n,
                    num_steps=k,
                    lmbda=FK_LMBDA,
                    potential="difference",
                )
                return jax.block_until_ready(res.log_evidence), k
        else:
            hand = make_hand_fk(n, k)

            def call(seed):
                return jax.block_until_ready(hand(jax.random.key(seed))), k

        return call, fk_log_z(), None
    raise ValueError(f"unknown recipe {recipe!r}")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_memory() -> tuple[str, float]:
    """``(kind, bytes)``: the device's peak bytes in use (GPU / TPU), else the process's
    peak resident set size."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except (AttributeError, NotImplementedError, RuntimeError):
        stats = {}
    if "peak_bytes_in_use" in stats:
        return "device", float(stats["peak_bytes_in_use"])
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return "rss", float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def run_one(recipe, n, contender, *, quick, repeats, slow, min_time, check_budget, max_check_seeds):
    """Compile, time and check one configuration; returns the JSON-able record."""
    import warnings

    warnings.filterwarnings("ignore")  # one SMC chain: no cross-chain checks
    sizes = QUICK if quick else FULL
    call, exact, host_check = build(recipe, contender, n, sizes)
    rss_start = rss_bytes()
    values, steps, times = [], [], []
    t0 = time.perf_counter()
    value, num_steps = call(0)
    first = time.perf_counter() - t0
    values.append(float(value))
    # at least `repeats` timed calls (one if the first takes over `slow` s), more while
    # they add up to under `min_time` s (at most 25): small-N calls last milliseconds
    while len(times) < 25:
        if times and (times[0] > slow or (len(times) >= repeats and sum(times) >= min_time)):
            break
        t0 = time.perf_counter()
        value, num_steps = call(len(times) + 1)
        times.append(time.perf_counter() - t0)
        values.append(float(value))
        steps.append(num_steps)
    median = float(np.median(times))
    ns = [1e9 * t / (n * s) for t, s in zip(times, steps, strict=True)]
    mem_kind, mem = peak_memory()
    host_s = float(np.median([host_check() for _ in range(3)])) if host_check else None
    # extra seeds, after the timings: the log Z check
    seed, spent = len(values), 0.0
    while len(values) < max_check_seeds and spent + median < check_budget:
        t0 = time.perf_counter()
        values.append(float(call(seed)[0]))
        spent += time.perf_counter() - t0
        seed += 1
    return {
        "recipe": recipe,
        "n": n,
        "contender": contender,
        "first_s": first,
        "median_s": median,
        "times_s": times,
        "compile_s": first - median,
        "steps": float(np.median(steps)),
        "ns": float(np.median(ns)),
        "ns_min": float(np.min(ns)),
        "mem_kind": mem_kind,
        "mem_bytes": mem,
        "rss_start_bytes": rss_start,
        "log_z": values,
        "exact": exact,
        "host_check_s": host_s,
    }


# --------------------------------------------------------------------------- driver
def device_info() -> dict:
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
    }


def child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        timeout=7200,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:160]}"}
    return json.loads(lines[-1][len("RESULT") :])


def fmt_n(n: int) -> str:
    return f"1e{round(math.log10(n))}" if n == 10 ** round(math.log10(n)) else str(n)


def fmt_log_z(values) -> str:
    v = np.asarray(values)
    if len(v) < 2:
        return f"{v.mean():.3f} (1)"
    return f"{v.mean():.3f} ± {v.std(ddof=1) / math.sqrt(len(v)):.3f} ({len(v)})"


def z_score(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return float((a.mean() - b.mean()) / se) if se > 0 else float("nan")


def print_table(recipe, rows, info):
    mem_label = "peak device MB" if info["backend"] in ("gpu", "tpu") else "peak RSS MB"
    where = f"{info['backend']} ({info['device_kind']})"
    print(f"\n### {TITLES[recipe]} — {where}\n")
    print(
        "| N | contender | steps / particle | run s (median, calls) | ns / particle-step | min | "
        f"compile s | {mem_label} | x baseline | log Z (mean ± se, seeds) | z (pk - base) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, pair in rows:
        base = pair.get("baseline", {})
        pkr = pair.get("particlekit", {})
        for contender in CONTENDERS:
            r = pair.get(contender, {})
            if "error" in r or not r:
                print(f"| {fmt_n(n)} | {contender} | failed: {r.get('error', '?')} |" + " |" * 8)
                continue
            ratio = "1.00"
            z = ""
            if contender == "particlekit" and "ns" in base:
                ratio = f"{r['ns'] / base['ns']:.2f}"
            if contender == "baseline" and "log_z" in pkr:
                z = f"{z_score(pkr['log_z'], r['log_z']):+.1f}"
            print(
                f"| {fmt_n(n)} | {contender} | {r['steps']:.0f} | "
                f"{r['median_s']:.4f} ({len(r['times_s'])}) | "
                f"{r['ns']:.1f} | {r['ns_min']:.1f} | {r['compile_s']:.1f} | "
                f"{r['mem_bytes'] / 1e6:.0f} | {ratio} | {fmt_log_z(r['log_z'])} | {z} |",
                flush=True,
            )
    exact = next((r["exact"] for _, p in rows for r in p.values() if "exact" in r), None)
    starts = [r["rss_start_bytes"] for _, p in rows for r in p.values() if "rss_start_bytes" in r]
    notes = []
    if exact is not None:
        kind = "continuous-time value" if recipe == "fk" else "exact"
        notes.append(f"log Z {kind}: {exact:.3f}")
    host = [(n, p["particlekit"]) for n, p in rows if p.get("particlekit", {}).get("host_check_s")]
    if host:
        parts = [
            f"{r['host_check_s']:.4f} s at N = {fmt_n(n)} "
            f"({100 * r['host_check_s'] / r['median_s']:.0f} % of the run)"
            for n, r in host
        ]
        notes.append("host-side checks of `SMC.run` (`convergence.assess`): " + ", ".join(parts))
    if starts and mem_label == "peak RSS MB":
        notes.append(f"process RSS before the first call: {min(starts) / 1e6:.0f} MB")
    print("\n" + "; ".join(notes) + ".")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=float, default=None, help="largest N (default 1e7 on "
                        "GPU/TPU, 1e5 on CPU)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: N=1e3, short runs")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (median)")
    parser.add_argument("--slow", type=float, default=10.0, help="time only one call when it "
                        "takes longer than this many seconds")  # fmt: skip
    parser.add_argument("--min-time", type=float, default=1.0, help="time more calls "
                        "while they add up to less than this many seconds")  # fmt: skip
    parser.add_argument("--check-budget", type=float, default=20.0, help="seconds of extra "
                        "seeds per configuration for the log Z check")  # fmt: skip
    parser.add_argument("--check-seeds", type=int, default=24, help="at most this many seeds")
    parser.add_argument("--one", nargs=3, metavar=("RECIPE", "N", "CONTENDER"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--info", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jsonl", type=Path, default=None, help="also append each "
                        "configuration's record to this file as it finishes (a run cut "
                        "short keeps them)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.min_time, args.check_budget, args.check_seeds = 1, 0.0, 2.0, 4
    if args.info:
        print("RESULT" + json.dumps(device_info()))
        return
    if args.one:
        recipe, n, contender = args.one
        record = run_one(
            recipe,
            int(float(n)),
            contender,
            quick=args.quick,
            repeats=args.repeats,
            slow=args.slow,
            min_time=args.min_time,
            check_budget=args.check_budget,
            max_check_seeds=args.check_seeds,
        )
        print("RESULT" + json.dumps(record))
        return

    # The parent never touches the device (a GPU client here would hold the memory the
    # children need): device facts come from a child too.
    info = child(["--info"])
    if "error" in info:
        sys.exit(f"could not start JAX: {info['error']}")
    accelerator = info["backend"] in ("gpu", "tpu")
    max_n = args.max_n or (1e7 if accelerator else 1e5)
    sizes = [10**k for k in range(3, 8) if 10**k <= max_n]
    if args.quick:
        sizes = [1000]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    s = QUICK if args.quick else FULL
    print(
        f"# Accelerator benchmark: {info['backend']} ({info['device_kind']}) x "
        f"{info['device_count']}, jax {info['jax']}, host {info['cpu']} "
        f"({info['cpu_count']} cores, load {load:.1f})\n\n"
        f"N = {', '.join(fmt_n(n) for n in sizes)}; filter T = {s['T']}; tempered SMC "
        f"{s['M']} RWM steps per stage; PDDS K = {s['K_PDDS']}; FK steering K = "
        f"{s['K_FK']}. Each configuration in a fresh process; median of at least "
        f"{args.repeats} timed calls (more while they total under {args.min_time:g} s) after "
        f"a compiling one; x baseline = ratio of ns / particle-step; "
        f"z = (mean log Z of particlekit - baseline's) / its standard error.",
        flush=True,
    )
    extra = ["--quick"] if args.quick else []
    extra += ["--repeats", str(args.repeats), "--slow", str(args.slow)]
    extra += ["--min-time", str(args.min_time)]
    extra += ["--check-budget", str(args.check_budget), "--check-seeds", str(args.check_seeds)]
    for recipe in args.recipes.split(","):
        rows = []
        for i, n in enumerate(sizes):
            pair = {}
            order = CONTENDERS if i % 2 == 0 else CONTENDERS[::-1]  # spread load drift
            for contender in order:
                pair[contender] = child(["--one", recipe, str(n), contender, *extra])
                if args.jsonl:
                    with args.jsonl.open("a") as f:
                        record = {"recipe": recipe, "n": n, "contender": contender}
                        f.write(json.dumps({**record, **pair[contender]}) + "\n")
            rows.append((n, pair))
        print_table(recipe, rows, info)


if __name__ == "__main__":
    main()
