"""PDDS on a 2-D Gaussian mixture with unequal weights: samples, and the log-Z error
against the number of steps for the naive and the learned guidance potential.

Run ``python examples/pdds_mixture.py``; it saves ``pdds_mixture.png``
(about a minute on a laptop CPU, mostly training and compilation).
"""

import matplotlib

matplotlib.use("Agg")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

import particlekit as pk

WEIGHTS = jnp.array([0.2, 0.5, 0.3])
MEANS = jnp.array([[-2.5, 0.0], [1.5, 2.0], [2.0, -2.0]])
STDS = jnp.array([0.5, 0.7, 0.4])
LOG_Z = 0.0  # the mixture density is normalised
SIGMA = 2.5  # reference scale, wider than the target


def log_density(x):
    comp = dist.Normal(MEANS, STDS[:, None]).log_prob(x).sum(-1)
    return logsumexp(jnp.log(WEIGHTS) + comp)


def log_z_errors(potential, num_steps, num_seeds=8, num_particles=1000):
    run = lambda k: (
        pk.diffusion.pdds(
            k,
            log_density,
            2,
            num_particles=num_particles,
            num_steps=num_steps,
            sigma=SIGMA,
            potential=potential,
        ).log_evidence
    )
    keys = jax.random.split(jax.random.key(num_steps), num_seeds)
    return np.asarray(jax.jit(jax.vmap(run))(keys)) - LOG_Z


def main():
    pot = pk.diffusion.fit_pdds_potential(
        jax.random.key(0), log_density, 2, sigma=SIGMA, num_rounds=2
    )
    steps = [4, 8, 16, 32]
    naive = [log_z_errors(None, k) for k in steps]
    learned = [log_z_errors(pot, k) for k in steps]

    res = pk.diffusion.pdds(
        jax.random.key(1),
        log_density,
        2,
        num_particles=2000,
        num_steps=16,
        sigma=SIGMA,
        potential=pot,
    )
    idx = pk.resampling.systematic(jax.random.key(2), res.log_weights)
    xs = np.asarray(res.samples[idx])
    nearest = np.argmin(((xs[:, None, :] - np.asarray(MEANS)) ** 2).sum(-1), axis=1)
    print("mode fractions", np.bincount(nearest, minlength=3) / len(xs), "true", WEIGHTS)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.2))
    g = np.linspace(-5, 5, 200)
    gx, gy = np.meshgrid(g, g)
    dens = jax.vmap(jax.vmap(lambda a, b: jnp.exp(log_density(jnp.array([a, b])))))(gx, gy)
    ax0.contour(gx, gy, np.asarray(dens), levels=8, colors="k", linewidths=0.6)
    ax0.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.3)
    ax0.set_title(f"learned PDDS, 16 steps: log Z error {float(res.log_evidence):+.3f}")
    for name, errs in [("naive", naive), ("learned", learned)]:
        m = np.array([e.mean() for e in errs])
        s = np.array([e.std() for e in errs])
        ax1.errorbar(steps, m, yerr=s, marker="o", capsize=3, label=name)
    ax1.axhline(0.0, color="k", lw=0.5)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("number of steps")
    ax1.set_ylabel("log Z estimate - log Z (mean ± sd, 8 seeds)")
    ax1.legend()
    fig.tight_layout()
    fig.savefig("pdds_mixture.png", dpi=120)
    print("saved pdds_mixture.png")
    for k, a, b in zip(steps, naive, learned, strict=True):
        print(
            f"{k:3d} steps  naive {a.mean():+.3f} ± {a.std():.3f}   "
            f"learned {b.mean():+.3f} ± {b.std():.3f}"
        )


if __name__ == "__main__":
    main()
