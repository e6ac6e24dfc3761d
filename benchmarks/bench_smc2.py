"""SMC²: time, accuracy and work-normalised variance against ``particles``' SMC² on the same
model and data, with the exact answers beside them.

Model: ``x_t = rho x_{t-1} + sigma N(0, 1)``, ``y_t = x_t + N(0, 0.5^2)``, ``x_0 ~ N(0, 1)``,
``T = 200`` simulated at ``rho = 0.7, sigma = 1``; prior ``rho ~ U(-1, 1)``,
``sigma ~ Gamma(2, rate 2)``. Exact answers: the Kalman likelihood on an 801 x 801 grid of
``(rho, sigma)`` (posterior means and ``log p(y)`` by the trapezoid rule).

Both samplers use ``M = 1000`` parameter particles, inner filters of ``N_x = 100`` particles
at the start, doubled when a move's acceptance rate falls below 10 %, and their own default
moves (particlekit: 5 PMMH steps with the population's covariance; particles: waste-free
chains of length 10). Each is run ``--runs`` times with different seeds; reported per method:
seconds per run (particlekit's after a first run that compiles), the mean over runs and the
between-run sd of ``E[rho | y]``, ``E[sigma | y]`` and ``log p(y)``, and the work-normalised
variance ``seconds x variance`` (lower is better; the ratio is the speed-up at equal
accuracy).

Run: ``python benchmarks/bench_smc2.py --runs 10 --particles-runs 3`` (``particles`` 0.3 is
patched at run time for NumPy 2). Its numbers are in ``benchmarks/README.md``.
"""

import argparse
import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from peers import import_particles

import particlekit as pk

T, M, NX = 200, 1000, 100
RHO, SIGMA, R = 0.7, 1.0, 0.5


def prior():
    numpyro.sample("rho", dist.Uniform(-1.0, 1.0))
    numpyro.sample("sigma", dist.Gamma(2.0, 2.0))


def model_fn(theta):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(theta["rho"] * x_prev, theta["sigma"]),
        observation=lambda x, t: dist.Normal(x, R),
    )


def exact(ys, size=801):
    """Posterior means of ``(rho, sigma)`` and ``log p(y)`` from the scalar Kalman filter
    vectorised over a grid (float64)."""
    from scipy.stats import gamma

    rho = np.linspace(-0.999, 0.999, size)[:, None]
    sigma = np.linspace(0.3, 2.0, size)[None, :]
    m, p = np.zeros((size, size)), np.ones((size, size))
    loglik = np.zeros((size, size))
    for t, y in enumerate(np.asarray(ys, dtype=np.float64)):
        if t > 0:
            m, p = rho * m, rho**2 * p + sigma**2
        s = p + R**2
        loglik += -0.5 * (np.log(2 * np.pi * s) + (y - m) ** 2 / s)
        k = p / s
        m, p = m + k * (y - m), (1 - k) * p
    log_prior = np.log(0.5) + gamma.logpdf(sigma, 2.0, scale=0.5)
    log_post = loglik + log_prior
    top = log_post.max()
    w = np.exp(log_post - top)
    mass = np.trapezoid(np.trapezoid(w, sigma[0], axis=1), rho[:, 0])
    w_rho = np.trapezoid(w, sigma[0], axis=1) / mass
    w_sigma = np.trapezoid(w, rho[:, 0], axis=0) / mass
    return (
        np.trapezoid(w_rho * rho[:, 0], rho[:, 0]),
        np.trapezoid(w_sigma * sigma[0], sigma[0]),
        np.log(mass) + top,
    )


def run_ours(model, ys, seed):
    t0 = time.perf_counter()
    res = pk.statespace.smc2(
        jax.random.key(seed), model, ys, num_theta_particles=M, num_x_particles=NX,
        latent_paths=False, progress_bar=False,
    )  # fmt: skip
    jax.block_until_ready(res.log_evidence)
    seconds = time.perf_counter() - t0
    rho, sigma = (float(np.mean(res.theta[k])) for k in ("rho", "sigma"))
    return seconds, rho, sigma, float(res.log_evidence[0]), int(res.num_x_particles[0, -1])


def particles_sampler(ys):
    particles = import_particles("particles SMC²")
    if particles is None:
        return None
    pdists, smc_samplers = particles.distributions, particles.smc_samplers
    pssm = particles.state_space_models

    class AR1(pssm.StateSpaceModel):
        default_params = {"rho": RHO, "sigma": SIGMA}

        def PX0(self):
            return pdists.Normal(loc=0.0, scale=1.0)

        def PX(self, t, xp):
            return pdists.Normal(loc=self.rho * xp, scale=self.sigma)

        def PY(self, t, xp, x):
            return pdists.Normal(loc=x, scale=R)

    pprior = pdists.StructDist(
        {"rho": pdists.Uniform(-1.0, 1.0), "sigma": pdists.Gamma(a=2.0, b=2.0)}
    )
    data = [float(v) for v in np.asarray(ys)]

    def run(seed):
        np.random.seed(seed)  # noqa: NPY002 (particles draws from NumPy's global state)
        fk = smc_samplers.SMC2(
            ssm_cls=AR1, prior=pprior, data=data, init_Nx=NX, ar_to_increase_Nx=0.1
        )
        alg = particles.SMC(fk=fk, N=M, verbose=False)
        t0 = time.perf_counter()
        alg.run()
        seconds = time.perf_counter() - t0
        w = alg.W
        theta = alg.X.theta
        return (
            seconds, float(np.sum(w * theta["rho"])), float(np.sum(w * theta["sigma"])),
            float(alg.logLt), int(alg.X.pfs[0].N),
        )  # fmt: skip

    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--particles-runs", type=int, default=3)
    args = parser.parse_args()

    model = pk.statespace.ParametricSSM(prior, model_fn)
    ys = model_fn({"rho": RHO, "sigma": SIGMA}).simulate(jax.random.key(3), T)[1]
    truth = exact(ys)
    print(f"exact: E[rho|y] {truth[0]:.4f}, E[sigma|y] {truth[1]:.4f}, log p(y) {truth[2]:.3f}")

    t0 = time.perf_counter()
    first = run_ours(model, ys, 1000)
    print(f"particlekit first run (compiles): {time.perf_counter() - t0:.1f} s, ours {first}")
    rows = {"particlekit SMC²": [], "particles SMC² (waste-free)": []}
    for s in range(args.runs):
        rows["particlekit SMC²"].append(run_ours(model, ys, s))
        print("particlekit run", s, rows["particlekit SMC²"][-1], flush=True)
    run = particles_sampler(ys)
    for s in range(args.particles_runs if run is not None else 0):
        rows["particles SMC² (waste-free)"].append(run(s))
        print("particles run", s, rows["particles SMC² (waste-free)"][-1], flush=True)
    rows = {name: values for name, values in rows.items() if values}

    print("\n| method | runs | s per run | E[rho] | sd | E[sigma] | sd | log p(y) | sd | N_x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    wnv = {}
    for name, values in rows.items():
        a = np.array(values)
        mean, sd = a.mean(axis=0), a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(5)
        print(
            f"| {name} | {len(a)} | {mean[0]:.1f} | {mean[1]:.4f} | {sd[1]:.4f} | "
            f"{mean[2]:.4f} | {sd[2]:.4f} | {mean[3]:.3f} | {sd[3]:.3f} | "
            f"{sorted(set(a[:, 4].astype(int).tolist()))} |"
        )
        # work-normalised variance of each estimate, using the mean squared error against
        # the exact answer (bias included)
        mse = ((a[:, 1:4] - np.array(truth)) ** 2).mean(axis=0)
        wnv[name] = mean[0] * mse
    print(f"| exact (Kalman, grid) | | | {truth[0]:.4f} | | {truth[1]:.4f} | | {truth[2]:.3f} |")
    if len(wnv) == 2:
        ours, theirs = wnv.values()
        ratio = theirs / ours
        print(
            "\nwork-normalised MSE (seconds x MSE), particles / particlekit: "
            f"E[rho] {ratio[0]:.1f}x, E[sigma] {ratio[1]:.1f}x, log p(y) {ratio[2]:.1f}x"
        )


if __name__ == "__main__":
    main()
