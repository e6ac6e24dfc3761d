"""PDDS on a 2-D Gaussian mixture with unequal weights: samples, and the log-Z error
against the number of steps for the naive and the learned guidance potential.

Run: ``python3 examples/pdds_mixture.py`` (20 to 40 s on a 2-core CPU, mostly compilation:
one compilation per number of steps); it saves ``examples/pdds_mixture.png``.
"""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from matplotlib.lines import Line2D

import particlekit as pk

WEIGHTS = jnp.array([0.2, 0.5, 0.3])
MEANS = jnp.array([[-2.5, 0.0], [1.5, 2.0], [2.0, -2.0]])
STDS = jnp.array([0.5, 0.7, 0.4])
LOG_Z = 0.0  # the mixture density is normalised
SIGMA = 2.5  # reference scale, wider than the target
NUM_PARTICLES, NUM_SEEDS, PLOT_STEPS = 1000, 8, 16
OUTPUT = Path(__file__).resolve().with_name("pdds_mixture.png")


def log_density(x):
    comp = dist.Normal(MEANS, STDS[:, None]).log_prob(x).sum(-1)
    return logsumexp(jnp.log(WEIGHTS) + comp)


def counting_degeneracy(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and whether it warned that the PDDS weights degenerated (that
    warning is counted, not printed); any other warning is shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    degenerate = [w for w in caught if "weights degenerated" in str(w.message)]
    for w in caught:
        if w not in degenerate:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out, bool(degenerate)


def runs(potential, num_steps):
    """``NUM_SEEDS`` PDDS runs, and how many of them warned that their weights degenerated.

    ``pdds`` is jitted with the potential as a traced argument: one compilation per
    ``num_steps`` serves every seed and both potentials (they share one PyTree structure),
    and the network's weights are not baked into the program as constants (as they would
    be if a ``jax.jit``-ed function closed over the potential). An eager ``pdds`` call warns
    when the ESS of a step falls below 5 % of the particles; the few-step naive runs do (the
    plot shows what it costs them), so the warnings are counted for the table instead of
    printed one by one."""
    results, warned = [], 0
    for seed in range(NUM_SEEDS):
        result, degenerate = counting_degeneracy(
            pk.diffusion.pdds,
            jax.random.fold_in(jax.random.key(num_steps), seed),
            log_density,
            2,
            num_particles=NUM_PARTICLES,
            num_steps=num_steps,
            sigma=SIGMA,
            potential=potential,
        )
        results.append(result)
        warned += degenerate
    return results, warned


def main():
    # Same particle count, number of steps (16) and MCMC setting (none) as the runs below,
    # so the 16-step runs reuse the fit's compilation of PDDS with a learned potential.
    # Each fitting round after the first runs PDDS with the partly trained potential, which
    # may warn that its weights degenerated (fit_pdds_potential silences the first, naive
    # round's warning): counted like the runs' warnings below.
    learned, fit_warned = counting_degeneracy(
        pk.diffusion.fit_pdds_potential,
        jax.random.key(0),
        log_density,
        2,
        sigma=SIGMA,
        num_rounds=2,
        num_particles=NUM_PARTICLES,
        num_steps=PLOT_STEPS,
        num_mcmc_steps=0,
        progress_bar=False,
    )
    # The naive potential g_0(sqrt(alpha_bar_t) x) (what ``potential=None`` uses) is the
    # learned one with its network zeroed: identical values, but the same PyTree structure
    # as ``learned``, so both share each compilation.
    naive = jax.tree.map(lambda a: jnp.zeros_like(a) if eqx.is_array(a) else a, learned)

    steps = [4, 8, 16, 32]
    potentials = {"naive": naive, "learned": learned}
    runs_and_warned = {name: {k: runs(pot, k) for k in steps} for name, pot in potentials.items()}
    results = {name: {k: rw[0] for k, rw in by_k.items()} for name, by_k in runs_and_warned.items()}
    warned = {name: {k: rw[1] for k, rw in by_k.items()} for name, by_k in runs_and_warned.items()}
    errors = {
        name: {k: np.array([float(r.log_evidence) for r in rs]) - LOG_Z for k, rs in by_k.items()}
        for name, by_k in results.items()
    }

    # samples: the learned 16-step runs, resampled to equal weights
    plot_runs = results["learned"][PLOT_STEPS]
    xs = np.concatenate(
        [
            np.asarray(r.samples[pk.resampling.systematic(jax.random.key(i), r.log_weights)])
            for i, r in enumerate(plot_runs)
        ]
    )
    nearest = np.argmin(((xs[:, None, :] - np.asarray(MEANS)) ** 2).sum(-1), axis=1)
    fractions = np.bincount(nearest, minlength=3) / len(xs)
    print(
        f"mode fractions {fractions} true {np.asarray(WEIGHTS)} ({len(xs)} resampled particles: "
        f"the {len(plot_runs)} seeds of the learned {PLOT_STEPS}-step runs; the plot shows one)"
    )

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.6))
    g = np.linspace(-5, 5, 200)
    gx, gy = np.meshgrid(g, g)
    grid = jnp.stack([gx.ravel(), gy.ravel()], axis=1)
    dens = np.exp(np.asarray(jax.jit(jax.vmap(log_density))(grid))).reshape(gx.shape)
    ax0.contour(gx, gy, dens, levels=8, colors="k", linewidths=0.6)
    shown = xs[:NUM_PARTICLES]  # the first seed's resampled particles
    ax0.scatter(shown[:, 0], shown[:, 1], s=2, alpha=0.3, color="C1")
    ax0.set_title(
        f"Learned PDDS, {PLOT_STEPS} steps: {NUM_PARTICLES} resampled particles\n"
        f"(one seed; log Z error {errors['learned'][PLOT_STEPS][0]:+.3f})"
    )
    ax0.set_xlabel("$x_1$")
    ax0.set_ylabel("$x_2$")
    ax0.set_aspect("equal")
    ax0.legend(
        handles=[
            Line2D([], [], color="k", lw=0.6, label="target density (contours)"),
            Line2D([], [], color="C1", marker="o", ls="", ms=3, label="PDDS particles"),
        ],
        loc="lower left",
        fontsize=8,
    )
    for name, errs in errors.items():
        m = np.array([errs[k].mean() for k in steps])
        s = np.array([errs[k].std() for k in steps])
        ax1.errorbar(steps, m, yerr=s, marker="o", capsize=3, label=f"{name} potential")
    ax1.axhline(0.0, color="k", lw=0.5)
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(steps, [str(k) for k in steps])
    ax1.set_xlabel("number of reverse steps K")
    ax1.set_ylabel("log Z estimate - exact log Z (nats)")
    ax1.set_title(f"Evidence error, {NUM_PARTICLES} particles: mean ± sd over {NUM_SEEDS} seeds")
    ax1.legend(loc="upper right", bbox_to_anchor=(1.0, 0.86))  # below the learned curve
    fig.tight_layout()
    fig.savefig(OUTPUT, dpi=120)
    print(f"saved {OUTPUT}")
    for k in steps:
        a, b = errors["naive"][k], errors["learned"][k]
        print(
            f"{k:3d} steps  naive {a.mean():+.3f} ± {a.std():.3f} "
            f"({warned['naive'][k]}/{NUM_SEEDS} warned)   "
            f"learned {b.mean():+.3f} ± {b.std():.3f} ({warned['learned'][k]}/{NUM_SEEDS} warned)"
        )
    print("(warned: runs whose ESS fell below 5 % of the particles at some step)")
    print(
        "fit_pdds_potential: "
        + ("a" if fit_warned else "no")
        + " round's PDDS run with the partly trained potential warned"
    )


if __name__ == "__main__":
    main()
