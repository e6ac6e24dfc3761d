"""Quick start: a bootstrap particle filter on a stochastic-volatility model.

The model, written with NumPyro distributions, is

    x_0 ~ N(mu, sigma^2 / (1 - rho^2))                       (stationary law)
    x_t = mu + rho (x_{t-1} - mu) + sigma eps_t,  eps_t ~ N(0, 1)
    y_t ~ N(0, exp(x_t / 2))                                  (exp(x_t / 2) is the std-dev)

We simulate T = 300 observations and run ``pk.filters.bootstrap`` with 20 independent
seeds in one ``jax.vmap``-ed call: the spread of the log-evidence ``log p(y_{0:T-1})``
over seeds is its Monte Carlo error, and the first run's filtered log-volatility is
plotted.

Run: ``python3 examples/quickstart.py`` (5 to 10 s on a 2-core CPU). Writes
``examples/quickstart.png``.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpyro.distributions as dist

import particlekit as pk

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MU, RHO, SIGMA = -1.0, 0.95, 0.3
T, NUM_PARTICLES, NUM_SEEDS = 300, 1000, 20
OUTPUT = Path(__file__).resolve().with_name("quickstart.png")

sv = pk.StateSpaceModel(
    initial=lambda: dist.Normal(MU, SIGMA / jnp.sqrt(1.0 - RHO**2)),
    transition=lambda x_prev, t: dist.Normal(MU + RHO * (x_prev - MU), SIGMA),
    observation=lambda x, t: dist.Normal(0.0, jnp.exp(x / 2.0)),
)


def main():
    start = time.perf_counter()
    # the same data and seeds as docs/quickstart.md, so the printed log p(y) matches the page
    xs, ys = sv.simulate(jax.random.key(0), T)  # true log-volatilities and returns, each (T,)

    # 20 independent filters in one vmapped call. Results are NamedTuples of arrays, so
    # every field gains a leading seed axis: log_evidence (20,), particles (20, T, N), ...
    def run_filter(key):
        return pk.filters.bootstrap(key, sv, ys, num_particles=NUM_PARTICLES)

    runs = jax.vmap(run_filter)(jax.random.split(jax.random.key(2), NUM_SEEDS))
    log_zs = runs.log_evidence
    print(
        f"log p(y) = {float(log_zs.mean()):.2f} ± {float(log_zs.std(ddof=1)):.2f} "
        f"(mean ± sd over {NUM_SEEDS} seeds, N = {NUM_PARTICLES}, T = {T})"
    )

    res = jax.tree.map(lambda a: a[0], runs)  # the first run, for the plot
    mean = res.filtering_mean()  # E[x_t | y_{0:t}], shape (T,)
    sd = jnp.sqrt(jnp.maximum(res.filtering_variance(), 0.0))  # sd[x_t | y_{0:t}], (T,)
    print(
        f"first run: min ESS = {float(res.ess.min()):.0f} / {NUM_PARTICLES}, "
        f"resampled at {int(res.resampled.sum())} of {T} steps, failed = {bool(res.failed)}"
    )

    fig, (ax_y, ax_x) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    ts = jnp.arange(T)
    ax_y.plot(ts, ys, lw=0.8, color="0.3")
    ax_y.set_ylabel("$y_t$ (return)")
    fig.suptitle(f"Stochastic volatility: bootstrap particle filter, N = {NUM_PARTICLES}")
    ax_y.set_title("simulated returns (the data)", fontsize=10)
    ax_x.set_title("log-volatility: true path and filtering distribution", fontsize=10)
    ax_x.plot(ts, xs, lw=1.0, color="k", label="true $x_t$")
    ax_x.plot(ts, mean, lw=1.2, color="C0", label=r"filtered mean $E[x_t \mid y_{0:t}]$")
    ax_x.fill_between(ts, mean - 2 * sd, mean + 2 * sd, color="C0", alpha=0.25, label=r"$\pm 2$ sd")
    ax_x.set_ylabel("$x_t$ (log-volatility)")
    ax_x.set_xlabel("time step $t$")
    lo, hi = ax_x.get_ylim()
    ax_x.set_ylim(lo, hi + 0.3 * (hi - lo))  # room for the legend above the band
    ax_x.legend(loc="upper left", fontsize=8, ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(OUTPUT, dpi=120)
    print(f"saved {OUTPUT}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
