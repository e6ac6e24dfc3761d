"""A static NumPyro model with pk.infer.SMC: posterior, evidence, Bayes factor, ArviZ plots.

Data: y_i ~ Normal(mu^2, s), a posterior with two symmetric modes (mu = +-1) where a single
NUTS chain sticks to one mode. We run adaptive tempered SMC (4 independent runs as ArviZ
chains), print the summary and the log marginal likelihood, compare it with a second model
(y_i ~ Normal(mu, s), unimodal) through the Bayes factor, and save

- ``static_model_posterior.png``: ArviZ posterior plot of ``mu`` and ``s``;
- ``static_model_schedule.png``: the adaptive tempering schedule (inverse temperature,
  ESS, acceptance rate and MCMC steps per stage).

Run: ``python3 examples/static_model.py`` (10 to 30 s on a 2-core CPU); the PNGs are written
next to the script, in ``examples/``.
"""

import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist

import particlekit as pk

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

POSTERIOR_PNG = Path(__file__).resolve().with_name("static_model_posterior.png")
SCHEDULE_PNG = Path(__file__).resolve().with_name("static_model_schedule.png")


def squared_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu**2, s), obs=y)


def linear_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def exact_log_evidences(y):
    """``log p(y)`` of (squared, linear) by quadrature on a grid of the data's mean ``m``
    and ``s`` (the posterior's bulk: ``m`` within 1 +- 0.5, ``s`` in 0.1..0.7): the linear
    model's prior on ``m`` is ``N(0, 2)``, the squared model's the law of ``mu**2``,
    ``N(sqrt m; 0, 2) / sqrt m``."""
    from scipy import integrate, stats

    y = np.asarray(y, np.float64)
    m = np.linspace(0.5, 1.5, 1001)[:, None]
    s = np.linspace(0.1, 0.7, 601)[None, :]
    log_lik = stats.norm.logpdf(y[:, None, None], m, s).sum(0) + stats.halfnorm.logpdf(s)
    priors = (stats.norm.logpdf(np.sqrt(m), 0, 2) - 0.5 * np.log(m), stats.norm.logpdf(m, 0, 2))

    def log_integral(log_f):
        top = log_f.max()
        inner = integrate.trapezoid(np.exp(log_f - top), s[0], axis=1)
        return top + np.log(integrate.trapezoid(inner, m[:, 0]))

    return tuple(log_integral(log_lik + prior) for prior in priors)


def main():
    start = time.perf_counter()
    y = jnp.asarray(np.random.default_rng(0).normal(1.0, 0.3, size=30), jnp.float32)

    smc = pk.infer.SMC(squared_model, num_particles=1000, num_chains=4)
    smc.run(jax.random.key(0), y)
    smc.print_summary()
    print(
        "(a stage 'hit the step cap' when its MCMC move reached max_mcmc_steps before its "
        "stopping criterion;\n this is only a warning sign when R-hat, the ESS or the chains' "
        "log evidence disagree, which would raise a UserWarning)"
    )
    idata = smc.to_inference_data()
    frac = float(np.mean(smc.get_samples()["mu"] > 0))
    print(f"mass of the mode mu > 0: {frac:.3f} (exact: 0.5)")

    other = pk.infer.SMC(linear_model, num_particles=1000, num_chains=4)
    other.run(jax.random.key(1), y)
    log_bf = np.asarray(smc.log_evidence) - np.asarray(other.log_evidence)
    exact_squared, exact_linear = exact_log_evidences(y)
    print(
        f"log Bayes factor squared vs linear: {log_bf.mean():.3f} +- "
        f"{log_bf.std(ddof=1) / np.sqrt(log_bf.size):.3f}, exact (quadrature) "
        f"{exact_squared - exact_linear:.3f} (about 0: both fit equally well; mu**2 has two "
        "modes, each half as wide since d(mu**2)/dmu = 2 at mu = +-1)"
    )

    # ArviZ posterior plot (arviz < 1: az.plot_posterior; arviz >= 1: az.plot_dist, whose
    # PlotCollection gives each variable's axes by get_target); needs matplotlib installed
    var_names = ["mu", "s"]
    if hasattr(az, "plot_posterior"):
        axes = np.ravel(az.plot_posterior(idata, var_names=var_names, figsize=(11, 4)))
    else:
        plots = az.plot_dist(idata, var_names=var_names, backend="matplotlib")
        axes = [plots.get_target(name, {}) for name in var_names]
        axes[0].figure.set_size_inches(11, 4)
    xlabels = ["mu (the data's mean is mu**2)", "s (noise sd of the data)"]
    for ax, xlabel in zip(axes, xlabels, strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("posterior density")
    fig = axes[0].figure
    fig.suptitle("Posterior of the squared model by tempered SMC (4 chains pooled)")
    fig.tight_layout()
    fig.savefig(POSTERIOR_PNG, dpi=120)
    print(f"saved {POSTERIOR_PNG}")

    # the tempering schedule, one line per chain
    d = smc.diagnostics
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    panels = [
        (d.stages.temperature, "inverse temperature lambda", "lambda (log scale)"),
        (d.stages.ess, "ESS / N after reweighting", "ESS / N"),
        (d.stages.acceptance_rate, "MCMC acceptance rate", "mean acceptance"),
        (d.stages.num_mcmc_steps, "MCMC steps per stage", "steps (cap: max_mcmc_steps)"),
    ]
    for ax, (values, title, ylabel) in zip(axes, panels, strict=True):
        for c in range(values.shape[0]):
            ax.plot(
                np.arange(1, values.shape[1] + 1), values[c], marker="o", ms=3, label=f"chain {c}"
            )
        ax.set_title(title)
        ax.set_xlabel("tempering stage")
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("log")
    # one colour per chain (an independent SMC run): one legend for the four panels
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=values.shape[0], fontsize=9)
    fig.suptitle(
        "Adaptive tempering schedule: one line per chain (an independent SMC run, 1000 particles)",
        x=0.02,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(SCHEDULE_PNG, dpi=120)
    print(f"saved {SCHEDULE_PNG}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
