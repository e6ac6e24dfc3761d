"""Learn the parameters of a stochastic-volatility model with PaRIS particle Gibbs.

Model (log-volatility ``x_t``, returns ``y_t``):

    x_0 ~ N(mu, sigma^2 / (1 - phi^2)),
    x_t = mu + phi (x_{t-1} - mu) + sigma eps_t,
    y_t = exp(x_t / 2) eta_t,           eps_t, eta_t ~ N(0, 1).

The parameters ``theta = (mu, atanh(phi), log(sigma))`` are fitted by stochastic gradient
ascent on the log-likelihood, the score estimated through Fisher's identity by one PPG
sweep per update (``pk.learning.mle(..., estimator="ppg")``) and Adam steps. Then FFBS at the fitted
parameters gives the smoothed volatility. Saves ``examples/sv_learning.png``.

Run: ``python3 examples/sv_learning.py`` (15 to 50 s on a 2-core CPU).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro.distributions as dist
import optax

import particlekit as pk

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUTPUT = Path(__file__).resolve().with_name("sv_learning.png")


def unpack(theta):
    return theta["mu"], jnp.tanh(theta["atanh_phi"]), jnp.exp(theta["log_sigma"])


def model_fn(theta):
    mu, phi, sigma = unpack(theta)
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(mu, sigma / jnp.sqrt(1.0 - phi**2)),
        transition=lambda x_prev, t: dist.Normal(mu + phi * (x_prev - mu), sigma),
        observation=lambda x, t: dist.Normal(0.0, jnp.exp(0.5 * x)),
    )


def main(num_steps=500, num_particles=64, num_iterations=300):
    true = {"mu": -1.0, "atanh_phi": float(np.arctanh(0.95)), "log_sigma": float(np.log(0.3))}
    xs, ys = model_fn(true).simulate(jax.random.key(0), num_steps)

    theta0 = {"mu": 0.0, "atanh_phi": float(np.arctanh(0.5)), "log_sigma": float(np.log(1.0))}
    res = pk.learning.mle(
        jax.random.key(1), model_fn, theta0, ys, num_particles=num_particles,
        num_iterations=num_iterations, estimator="ppg",
        optimizer=optax.adam(optax.exponential_decay(0.05, num_iterations, 0.05)),
    )  # fmt: skip
    mu, phi, sigma = (np.asarray(v) for v in unpack(res.trace))
    names = ("mu", "phi", "sigma")
    fit = {k: float(v) for k, v in zip(names, unpack(res.theta_average), strict=True)}
    print("true   : mu=-1.000 phi=0.950 sigma=0.300")
    print("fitted : " + " ".join(f"{k}={v:.3f}" for k, v in fit.items()))
    print(f"mean of the simulated log-volatility: {float(np.mean(xs)):.3f}")

    ssm = model_fn(res.theta_average)
    filt = pk.filters.bootstrap(jax.random.key(2), ssm, ys, num_particles=1000)
    paths = pk.smoothing.ffbs(jax.random.key(3), ssm, filt, 500)
    vol = np.exp(0.5 * np.asarray(paths))
    lo, med, hi = np.percentile(vol, [5, 50, 95], axis=0)

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    panels = [
        (mu, "mu", -1.0, "mu (mean log-volatility)"),
        (phi, "phi", 0.95, "phi (persistence of x_t)"),
        (sigma, "sigma", 0.3, "sigma (sd of the x_t noise)"),
    ]
    for ax, (trace, name, value, ylabel) in zip(axes[0], panels, strict=True):
        ax.plot(trace, lw=1.2, label="SGA iterate")
        ax.axhline(value, color="k", ls="--", lw=1, label="true value")
        ax.set_title(f"{name}: stochastic gradient ascent")
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
    # mu is weakly identified (sd ~ sigma / ((1 - phi) sqrt(T))): the MLE follows the
    # mean of the simulated path rather than the true mu
    axes[0, 0].axhline(
        float(np.mean(xs)), color="gray", ls=":", lw=1, label="mean of simulated x_t"
    )
    for ax in axes[0]:
        ax.legend(fontsize=8)
    gs = axes[1, 0].get_gridspec()
    for ax in axes[1]:
        ax.remove()
    ax = fig.add_subplot(gs[1, :])
    t = np.arange(num_steps)
    ax.fill_between(t, lo, hi, alpha=0.3, label="smoothed 90% band")
    ax.plot(t, med, lw=1.2, label="smoothed median")
    ax.plot(t, np.exp(0.5 * np.asarray(xs)), "k", lw=0.8, alpha=0.7, label="true volatility")
    ax.set_xlabel("time step t")
    ax.set_ylabel("volatility exp(x_t / 2)")
    ax.set_title("FFBS smoothing at the fitted parameters (500 paths, 1000 particles)")
    ax.legend(loc="upper right")
    fig.suptitle("Stochastic volatility: PPG score ascent and FFBS smoothing")
    fig.tight_layout()
    fig.savefig(OUTPUT, dpi=110)
    print(f"saved {OUTPUT}")
    return res


if __name__ == "__main__":
    main()
