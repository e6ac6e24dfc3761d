"""PMMH: cost per iteration against one particle-filter run, and against ``particles``'
PMMH on the same model and data.

Model: ``x_t = rho x_{t-1} + N(0, 1)``, ``y_t = x_t + N(0, 0.5^2)``, ``T = 100``, prior
``rho ~ U(-1, 1)``; ``N = 128`` particles. Reported: seconds per iteration of
``pk.statespace.pmmh`` (4 chains vmapped, per chain-iteration, without latent paths), of a
vmapped batch of 4 bootstrap filters (the floor PMMH cannot beat), and of ``particles.mcmc.PMMH``
(one chain), with the ratios, and each method's posterior mean and sd of ``rho`` beside the
exact posterior (Kalman likelihood on a grid). Work-normalised efficiency: the effective
sample size of ``rho`` (NumPyro's, over the kept draws of all chains) per second of run
time, also for correlated PMMH (``correlation=0.99``) at ``N = 128`` and ``N = 32``; and
each JAX method's compile time (its first call's time minus a later call's).

Run: ``python benchmarks/bench_pmmh.py`` (about a minute on a laptop CPU).
"""

import os
import sys
import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from peers import import_particles

import particlekit as pk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from exact import kalman, scalar_model  # noqa: E402

T, N, CHAINS, ITERS = 100, 128, 4, 2000


def prior():
    numpyro.sample("rho", dist.Uniform(-1.0, 1.0))


def model_fn(theta):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(theta["rho"] * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )


def particles_pmmh(ys):
    """``particles``' PMMH (one chain): (seconds per iteration, kept draws, iterations), or
    ``None`` when ``particles`` is not installed."""
    particles = import_particles("particles PMMH")
    if particles is None:
        return None
    pdists, mcmc, pssm = particles.distributions, particles.mcmc, particles.state_space_models

    class AR1(pssm.StateSpaceModel):
        default_params = {"rho": 0.7}

        def PX0(self):
            return pdists.Normal(loc=0.0, scale=1.0)

        def PX(self, t, xp):
            return pdists.Normal(loc=self.rho * xp, scale=1.0)

        def PY(self, t, xp, x):
            return pdists.Normal(loc=x, scale=0.5)

    class ScalarPrior(pdists.StructDist):
        # particles 0.3 assigns the log-prior of a 1-element theta to a scalar slot, which
        # NumPy >= 2 refuses for a shape (1,) array
        def logpdf(self, theta):
            out = super().logpdf(theta)
            return out[0] if np.ndim(out) == 1 and len(out) == 1 else out

    pprior = ScalarPrior({"rho": pdists.Uniform(-1.0, 1.0)})
    data = [float(v) for v in np.asarray(ys)]
    p_iters = 500
    alg = mcmc.PMMH(ssm_cls=AR1, prior=pprior, data=data, Nx=N, niter=p_iters)
    t0 = time.perf_counter()
    alg.run()
    t_particles = (time.perf_counter() - t0) / p_iters
    p_draws = alg.chain.theta["rho"][p_iters // 2 :]
    return t_particles, p_draws, p_iters


def main():
    model = pk.statespace.ParametricSSM(prior, model_fn)
    ys = model_fn({"rho": 0.7}).simulate(jax.random.key(3), T)[1]
    grid = np.linspace(-0.999, 0.999, 4001)
    ll = np.array([kalman(scalar_model(a=a), np.asarray(ys))[0] for a in grid])
    w = np.exp(ll - ll.max())
    w /= w.sum()
    mean = np.sum(w * grid)
    sd = np.sqrt(np.sum(w * (grid - mean) ** 2))

    # the process's first trace and compilation (imports inside JAX and NumPyro) are not
    # counted in the compile times below: warm up with a small filter
    warm = model_fn({"rho": 0.5})
    jax.block_until_ready(
        pk.filters.bootstrap(jax.random.key(0), warm, ys, num_particles=16, progress_bar=False)
    )

    def ours(seed):
        res = pk.statespace.pmmh(
            jax.random.key(seed), model, ys, num_particles=N, num_samples=ITERS // 2,
            num_warmup=ITERS // 2, num_chains=CHAINS, latent_paths=False, progress_bar=False,
        )  # fmt: skip
        jax.block_until_ready(res.theta)
        return res

    t0 = time.perf_counter()
    ours(0)
    first_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = ours(1)
    t_ours = (time.perf_counter() - t0) / ITERS  # one vmapped step of all chains
    compile_ours = first_ours - t_ours * ITERS  # the first call's compilation

    def correlated(seed, n):
        res = pk.statespace.pmmh(
            jax.random.key(seed), model, ys, num_particles=n, num_samples=ITERS // 2,
            num_warmup=ITERS // 2, num_chains=CHAINS, latent_paths=False, progress_bar=False,
            correlation=0.99,
        )  # fmt: skip
        jax.block_until_ready(res.theta)
        return res

    corr_rows = []
    for n in (N, 32):
        t0 = time.perf_counter()
        correlated(0, n)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res_c = correlated(1, n)
        seconds = time.perf_counter() - t0
        corr_rows.append((n, res_c, seconds, first - seconds))

    ssm = model_fn({"rho": 0.7})
    filt = jax.jit(
        jax.vmap(
            lambda k: (
                pk.filters.bootstrap(
                    k, ssm, ys, num_particles=N, keep_history=False, progress_bar=False
                ).log_evidence
            )
        )
    )
    keys = jax.random.split(jax.random.key(0), CHAINS)
    t0 = time.perf_counter()
    filt(keys).block_until_ready()
    first_filter = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(200):
        filt(keys).block_until_ready()
    t_filter = (time.perf_counter() - t0) / 200
    compile_filter = first_filter - t_filter

    p_result = particles_pmmh(ys)

    from numpyro.diagnostics import effective_sample_size

    def ess(draws):  # (chains, draws)
        return float(effective_sample_size(np.asarray(draws, dtype=np.float64)))

    draws = np.asarray(res.theta["rho"])
    print(f"exact posterior of rho: mean {mean:.4f}, sd {sd:.4f}\n")
    print(
        "| method | s per chain-iteration | vs one filter run | posterior mean | sd | ESS | ESS/s "
        "| compile s (first call - run) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    per_chain = t_ours / CHAINS
    ess_ours = ess(draws)
    print(
        f"| particlekit PMMH (4 chains vmapped) | {per_chain:.2e} | "
        f"{t_ours / t_filter:.2f} | {draws.mean():.4f} | {draws.std():.4f} | "
        f"{ess_ours:.0f} | {ess_ours / (t_ours * ITERS):.0f} | {compile_ours:.1f} |"
    )
    for n, res_c, seconds, compile_s in corr_rows:
        d = np.asarray(res_c.theta["rho"])
        e = ess(d)
        print(
            f"| particlekit correlated PMMH, N = {n} | {seconds / ITERS / CHAINS:.2e} | "
            f"{seconds / ITERS / t_filter:.2f} | {d.mean():.4f} | {d.std():.4f} | {e:.0f} | "
            f"{e / seconds:.0f} | {compile_s:.1f} |"
        )
    print(
        f"| particlekit bootstrap filter | {t_filter / CHAINS:.2e} | 1.00 | | | | | "
        f"{compile_filter:.1f} |"
    )
    if p_result is None:
        return
    t_particles, p_draws, p_iters = p_result
    ess_p = ess(p_draws[None])
    print(
        f"| particles PMMH (1 chain, {p_iters} iterations) | {t_particles:.2e} | "
        f"{t_particles / (t_filter / CHAINS):.1f} | {p_draws.mean():.4f} | "
        f"{p_draws.std():.4f} | {ess_p:.0f} | {ess_p / (t_particles * p_iters):.1f} | - |"
    )
    print(f"\nparticles / particlekit time per chain-iteration: {t_particles / per_chain:.1f}x")


if __name__ == "__main__":
    main()
