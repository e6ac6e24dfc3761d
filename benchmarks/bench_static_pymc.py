"""PyMC's ``pm.sample_smc`` (default IMH kernel) on the two problems of ``bench_static.py``.

Standalone (NumPy, SciPy, PyMC only) so that it can run in a separate virtual environment;
``bench_static.py --pymc-python PATH`` calls it in a subprocess. The problems are copied from
``bench_static.py`` exactly (same data, priors and likelihoods):

- Bayesian logistic regression, d = 10, n = 500, prior w ~ N(0, I).
- 10-D two-component Gaussian mixture "likelihood" L(x) = 0.5 N(x; m, s^2 I) + 0.5 N(x; -m,
  s^2 I), m = 1.5 * ones, s = 0.5, prior N(0, 3^2 I), added via ``pm.Potential`` (PyMC's SMC
  counts potentials as part of the tempered likelihood).

Each seed is one ``pm.sample_smc(draws=N, chains=1, cores=1, ...)`` call (threshold 0.5, the
target ESS shared with the other methods), timed with ``time.perf_counter``; it includes
building the SMC kernel (PyTensor graph compilation, cached C modules after the first call).
``seeds[0]`` is run once first as a warm-up and its time reported as ``first``.

Usage: ``python benchmarks/bench_static_pymc.py --particles 1000 --seeds 10 [--json]``; with
``--json`` prints one JSON object per problem,
``{"problem": name, "first": seconds, "rows": [[time, stages, log_z], ...]}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

try:
    import pymc as pm
    import pytensor.tensor as pt
except ImportError as error:  # PyMC is optional: it may live in another environment
    pm = pt = None
    PYMC_MISSING = f"{type(error).__name__}: {error}"

D = 10
LOG_2PI = float(np.log(2 * np.pi))


def logistic_data(seed=0, n=500):
    """Same generator calls, in the same order, as ``bench_static.logistic_problem``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    w = rng.normal(scale=0.5, size=D)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w))).astype(np.float32)
    return x, y


def logistic_model():
    x, y = logistic_data()
    with pm.Model() as model:
        w = pm.Normal("w", 0.0, 1.0, shape=D)
        pm.Bernoulli("y", logit_p=pt.dot(x, w), observed=y)
    return "logistic d=10 n=500", model


def mixture_model(s0=3.0, s=0.5, shift=1.5):
    def normal_logpdf(x, mu):  # sum over the D coordinates of log N(x_i; mu, s^2)
        return pt.sum(-0.5 * ((x - mu) / s) ** 2) - D * (np.log(s) + 0.5 * LOG_2PI)

    with pm.Model() as model:
        x = pm.Normal("x", 0.0, s0, shape=D)
        a = normal_logpdf(x, shift)
        b = normal_logpdf(x, -shift)
        pm.Potential("lik", pt.logaddexp(a, b) + np.log(0.5))
    return "GMM 10-D 2 comp.", model


def run_pymc(model, n, seeds):
    out = []
    first = None
    for i, seed in enumerate([seeds[0]] + list(seeds)):
        t0 = time.perf_counter()
        idata = pm.sample_smc(
            draws=n,
            chains=1,
            cores=1,
            model=model,
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
            return_inferencedata=True,
        )
        elapsed = time.perf_counter() - t0
        # One value per stage (shape (chain, stage)), NaN except at the last stage (beta = 1).
        lml = np.asarray(idata.sample_stats["log_marginal_likelihood"].values, dtype=float)
        stages = lml.shape[-1]
        log_z = float(lml[0, -1])
        if i > 0:
            out.append((elapsed, stages, log_z))
        else:
            first = elapsed
    return first, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="one JSON object per problem")
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    if pm is None:  # no JSON lines: bench_static.py reports no PyMC rows
        print(f"PyMC skipped (not installed here): {PYMC_MISSING}", file=sys.stderr)
        return

    # Keep stdout clean for the JSON consumer: PyMC logs and warnings go to stderr.
    logging.getLogger("pymc").setLevel(logging.WARNING)

    for name, model in (logistic_model(), mixture_model()):
        first, out = run_pymc(model, args.particles, seeds)
        if args.json:
            print(json.dumps({"problem": name, "first": first, "rows": out}), flush=True)
        else:
            times = np.array([o[0] for o in out])
            log_z = np.array([o[2] for o in out])
            print(
                f"{name}: pymc {pm.__version__}, N={args.particles}, first {first:.2f} s, "
                f"median {np.median(times):.3f} s, stages {np.mean([o[1] for o in out]):.1f}, "
                f"log Z {log_z.mean():.3f} +- {log_z.std(ddof=1) if len(out) > 1 else 0:.3f}",
                file=sys.stdout,
            )


if __name__ == "__main__":
    main()
