"""Posterior benchmark problems with reference answers made independently of particlekit.

Used by ``bench_posteriors.py``. Every problem is a NumPyro model, its data (fixed seeds or
a data set that ships with scikit-learn) and a reference: posterior means and standard
deviations of every scalar latent coordinate (constrained space, keyed by site name) and,
where it can be had, ``log Z = log p(data)``. The references are cached in
``benchmarks/reference/<problem>.npz`` by ``python3 benchmarks/bench_posteriors.py
--make-references`` (float64; NumPy/SciPy for closed forms and quadrature, NumPyro NUTS in
float64 where nothing exact exists).

Problems
--------
``ill_gaussian``
    ``x ~ N(0, 10^2 I_100)``, ``y ~ N(x, diag(s)^2)`` observed once, ``s`` log-spaced from
    1e-2 to 1e1: the posterior is 10 to 1000 times narrower than the prior, with a condition
    number of 1e3 in scale. Reference: conjugate closed form (means, sds, log Z).
``funnel``
    Neal's funnel with data, D = 10: ``v ~ N(0, 3)``, ``x_i ~ N(0, exp(v / 2))`` (i < 9),
    ``y_i ~ N(x_i, 1)`` observed. Reference: ``p(y | v) = prod_i N(y_i; 0, e^v + 1)`` on a
    fine grid in ``v`` (50 001 points on [-30, 20]) gives log Z and ``p(v | y)``;
    ``x_i | v, y`` is Gaussian (conjugate), so every mean and sd follows by quadrature.
``banana``
    ``theta ~ N(0, 2^2 I_2)``, ``y ~ N(theta_2 - theta_1^2, 0.1^2)`` observed at ``y = 1``:
    a thin curved ridge ``theta_2 = theta_1^2 + 1``. Reference: ``theta_2 | theta_1, y`` is
    Gaussian, ``p(theta_1, y)`` is integrated on a 1-D grid (log Z, means, sds); checked
    against a brute-force 2-D grid.
``mixture20``
    ``x ~ N(0, 5^2 I_20)`` and the likelihood factor ``0.5 N(x; m 1, I) + 0.5 N(x; -m 1, I)``
    with ``m = 3`` (``numpyro.factor``): two posterior modes 26 sds apart. Reference: the
    posterior is a two-component Gaussian mixture in closed form (log Z, means 0, sds).
``eight_schools_centered``, ``eight_schools_noncentered``
    The eight schools (Rubin 1981): ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~
    N(mu, tau)`` (centred) or ``theta_j = mu + tau theta_tilde_j``, ``theta_tilde_j ~ N(0,
    1)`` (non-centred), ``y_j ~ N(theta_j, sigma_j)``. Reference: ``theta`` integrates out
    (``y_j | mu, tau ~ N(mu, sigma_j^2 + tau^2)``) and ``theta | mu, tau, y`` is Gaussian, so a
    2-D grid over ``(mu, log tau)`` gives log Z and the exact means and sds of ``mu``,
    ``tau``, ``theta`` and ``theta_tilde``. Checked against a long NUTS run (4 x 20 000 draws,
    non-centred, ``target_accept_prob=0.95``).
``logistic_breast_cancer``
    Logistic regression on scikit-learn's breast-cancer data (569 x 30, standardised
    features): ``alpha ~ N(0, 1)``, ``beta ~ N(0, I_30)``. Reference means and sds: NUTS
    in float64 (4 chains x 10 000 draws after 2 000 warm-up, ``target_accept_prob=0.9``).
    log Z: importance sampling in float64 with a multivariate Student-t (5 degrees of
    freedom) at the Laplace approximation (Newton mode, inverse Hessian), 4e6 draws, with
    its delta-method standard error.
``horseshoe``
    Horseshoe regression on scikit-learn's diabetes data (442 x 10, standardised X and y):
    ``tau ~ HalfCauchy(1)``, ``lambda_j ~ HalfCauchy(1)``, ``beta_j ~ N(0, tau lambda_j)``,
    ``sigma ~ HalfNormal(1)``. Reference: NUTS in float64 on the non-centred version of the
    same posterior (``LocScaleReparam`` on ``beta``), 4 chains x 20 000 draws,
    ``target_accept_prob=0.99``; it still has ~0.7 % divergent transitions (the horseshoe's
    funnels), so it is checked against two other parametrisations (the centred model, and
    half-Cauchys written as normal / sqrt(gamma) scale mixtures), which agree with it to
    within 0.07 and 0.04 reference sds. ``lambda_j | rest`` has a ``lambda^-3`` tail
    (infinite variance), so ``tau`` and ``lambda`` are compared on the log scale
    (``log_tau``, ``log_lambda``). No exact log Z: only the agreement between methods is
    reported.

Every reference's checks are stored with it (the ``check`` field of the ``.npz``) and
printed under the problem's table by ``bench_posteriors.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp as jlogsumexp
from scipy.special import logsumexp

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


# ------------------------------------------------------------------------------ references
@dataclass
class Reference:
    """Reference posterior summary of a problem.

    ``mean`` and ``sd`` map a site name to an array of the site's shape; ``mcse`` (NUTS
    references only) holds the Monte Carlo standard errors of the means. ``log_z`` is NaN
    where unknown; ``log_z_se`` is 0 for exact (closed-form or quadrature) values.
    """

    mean: dict
    sd: dict
    log_z: float = float("nan")
    log_z_se: float = float("nan")
    method: str = ""
    check: str = ""
    mcse: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        arrays = {"log_z": np.float64(self.log_z), "log_z_se": np.float64(self.log_z_se)}
        arrays["method"] = np.array(self.method)
        arrays["check"] = np.array(self.check)
        for prefix, d in (("mean", self.mean), ("sd", self.sd), ("mcse", self.mcse)):
            for k, v in d.items():
                arrays[f"{prefix}__{k}"] = np.asarray(v, np.float64)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path, allow_pickle=False) as z:
            groups: dict = {"mean": {}, "sd": {}, "mcse": {}}
            for key in z.files:
                if "__" in key:
                    prefix, name = key.split("__", 1)
                    groups[prefix][name] = z[key]
            return cls(
                mean=groups["mean"],
                sd=groups["sd"],
                log_z=float(z["log_z"]),
                log_z_se=float(z["log_z_se"]),
                method=str(z["method"]),
                check=str(z["check"]),
                mcse=groups["mcse"],
            )


def moments(samples: dict, weights=None) -> tuple[dict, dict]:
    """Means and sds of every site of ``samples`` (leading axis: draws), optionally with
    normalised ``weights``, in float64."""
    mean, sd = {}, {}
    for k, v in samples.items():
        v = np.asarray(v, np.float64)
        if weights is None:
            m = v.mean(axis=0)
            s = v.std(axis=0)
        else:
            w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * (v.ndim - 1))
            w = w / w.sum()
            m = np.sum(w * v, axis=0)
            s = np.sqrt(np.maximum(np.sum(w * (v - m) ** 2, axis=0), 0.0))
        mean[k], sd[k] = m, s
    return mean, sd


def _log_normal(x, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


# ------------------------------------------------------------------------------ problems
@dataclass
class Problem:
    """A benchmark problem.

    Attributes
    ----------
    name, description : str
    model : callable
        NumPyro model taking the arrays of ``data`` positionally.
    data : tuple of numpy arrays
        Float64 arrays (cast to float32 for the contenders by :meth:`args`).
    make_reference : callable
        ``() -> Reference``, run in float64 (x64 enabled) by ``--make-references``.
    check_reference : callable, optional
        ``(Reference) -> list of str``: independent sanity checks, printed.
    summarise : callable
        Maps a dict of constrained draws to the dict the reference is keyed by (e.g. a log
        transform of heavy-tailed scales); identity by default.
    bj_step_size, bj_num_integration_steps : float, int
        Hand-chosen HMC settings of the BlackJAX ``hmc (hand)`` contender, whose inverse
        mass matrix is the prior variance of each unconstrained coordinate.
    exact_log_z : bool
        Whether ``log Z`` of the reference is exact (closed form or quadrature).
    """

    name: str
    description: str
    model: Callable
    data: tuple
    make_reference: Callable
    check_reference: Callable | None = None
    summarise: Callable = staticmethod(lambda s: s)
    bj_step_size: float = 0.1
    bj_num_integration_steps: int = 10
    exact_log_z: bool = True

    def args(self, dtype=np.float32) -> tuple:
        return tuple(
            np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a
            for a in self.data
        )


def _nuts_samples(model, args, *, seed=0, chains=1, warmup=1000, draws=1000, **nuts_kw):
    """NumPyro NUTS draws (sequential chains) and the per-site MCSE of the means."""
    import jax
    from numpyro.diagnostics import effective_sample_size
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(
        NUTS(model, **nuts_kw),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(seed), *args)
    grouped = {k: np.asarray(v, np.float64) for k, v in mcmc.get_samples(True).items()}
    divergences = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in grouped.items()}
    ess = {k: np.asarray(effective_sample_size(v)) for k, v in grouped.items()}
    return flat, ess, divergences


def _nuts_check(problem: Problem, ref: Reference, *, chains=2, draws=2000, ref_mean=None):
    """Quick NUTS run compared with the reference: max |mean - ref| / ref sd, with the
    same quantity for the NUTS Monte Carlo error (sd / sqrt(ESS)) for scale."""
    samples, ess, div = _nuts_samples(
        problem.model, problem.args(np.float64), seed=1, chains=chains, draws=draws
    )
    summ = problem.summarise(samples)
    mean, sd = moments(summ)
    ref_mean = ref.mean if ref_mean is None else ref_mean
    z, ratio, mc = [], [], []
    for k in ref.mean:
        if k not in mean:
            continue
        z.append(np.ravel(np.abs(mean[k] - ref_mean[k]) / ref.sd[k]))
        ratio.append(np.ravel(sd[k] / ref.sd[k]))
        if k in ess:
            mc.append(np.ravel(sd[k] / np.sqrt(ess[k]) / ref.sd[k]))
    z, ratio = np.concatenate(z), np.concatenate(ratio)
    mc_txt = f", typical MC error {np.median(np.concatenate(mc)):.3f}" if mc else ""
    return [
        f"quick NUTS ({chains} x {draws}, {div} divergences): max |mean - ref| / ref sd = "
        f"{z.max():.3f} over {z.size} coordinates{mc_txt}; sd / ref sd in "
        f"[{ratio.min():.3f}, {ratio.max():.3f}]"
    ]


def _density_check(problem: Problem, log_post_fn, params_draw, num=200, seed=3):
    """Check ``log p(theta, y)`` of the NumPyro model (constrained space) minus the
    closed-form ``log p(theta | y)`` equals ``log Z`` at random points: returns the max
    absolute deviation and the mean of the difference."""
    import jax
    from numpyro.infer.util import log_density

    rng = np.random.default_rng(seed)
    args = problem.args(np.float64)
    diffs = []
    for _ in range(num):
        params = params_draw(rng)
        lj, _ = log_density(
            problem.model, args, {}, {k: jax.numpy.asarray(v) for k, v in params.items()}
        )
        diffs.append(float(lj) - log_post_fn(params))
    diffs = np.array(diffs)
    return diffs


# ---------------------------------------------------------------- 1. ill-conditioned Gaussian
ILL_D, ILL_PRIOR_SD = 100, 10.0


def ill_gaussian_model(y, scales):
    x = numpyro.sample("x", dist.Normal(0.0, ILL_PRIOR_SD).expand([y.shape[0]]).to_event(1))
    numpyro.sample("y", dist.Normal(x, scales).to_event(1), obs=y)


def _ill_data():
    rng = np.random.default_rng(101)
    scales = np.logspace(-2, 1, ILL_D)
    x_true = rng.normal(0.0, ILL_PRIOR_SD, ILL_D)
    y = x_true + scales * rng.normal(size=ILL_D)
    return y, scales


def _ill_posterior(y, scales):
    prec = 1.0 / ILL_PRIOR_SD**2 + 1.0 / scales**2
    return (y / scales**2) / prec, 1.0 / np.sqrt(prec)


def _ill_reference():
    y, scales = _ill_data()
    mean, sd = _ill_posterior(y, scales)
    log_z = float(np.sum(_log_normal(y, 0.0, ILL_PRIOR_SD**2 + scales**2)))
    return Reference(
        {"x": mean}, {"x": sd}, log_z, 0.0, "closed form (conjugate Gaussian), float64"
    )


def _ill_check(ref):
    y, scales = _ill_data()
    mean, sd = _ill_posterior(y, scales)
    problem = PROBLEMS["ill_gaussian"]

    def draw(rng):
        return {"x": mean + 3 * sd * rng.normal(size=ILL_D)}

    def log_post(p):
        return float(np.sum(_log_normal(p["x"], mean, sd**2)))

    d = _density_check(problem, log_post, draw)
    lines = [
        f"log p(x, y) - log p(x | y) at 200 points: mean {d.mean():.10f}, spread "
        f"{np.ptp(d):.2e}; reference log Z {ref.log_z:.10f} (difference "
        f"{abs(d.mean() - ref.log_z):.2e})"
    ]
    return lines + _nuts_check(problem, ref)


# --------------------------------------------------------------------------------- 2. funnel
FUNNEL_D, FUNNEL_SIGMA_Y, FUNNEL_V_SD = 10, 1.0, 3.0


def funnel_model(y):
    v = numpyro.sample("v", dist.Normal(0.0, FUNNEL_V_SD))
    x = numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([y.shape[0]]).to_event(1))
    numpyro.sample("y", dist.Normal(x, FUNNEL_SIGMA_Y).to_event(1), obs=y)


def _funnel_data():
    # y from the model at v = -1 (x_i sd 0.61, data sd 1.2): the data cannot tell small x
    # from zero, so p(v | y) stretches far into the neck of the funnel.
    rng = np.random.default_rng(202)
    x = rng.normal(0.0, np.exp(-0.5), FUNNEL_D - 1)
    return (x + FUNNEL_SIGMA_Y * rng.normal(size=FUNNEL_D - 1),)


def _funnel_quadrature(y, num=50_001, lo=-30.0, hi=20.0):
    v = np.linspace(lo, hi, num)
    dv = v[1] - v[0]
    var_y = np.exp(v)[:, None] + FUNNEL_SIGMA_Y**2
    log_joint = _log_normal(v, 0.0, FUNNEL_V_SD**2) + np.sum(_log_normal(y, 0.0, var_y), axis=1)
    log_z = float(logsumexp(log_joint) + np.log(dv))
    w = np.exp(log_joint - log_z) * dv  # p(v | y) dv
    shrink = np.exp(v)[:, None] / var_y  # e^v / (e^v + s^2)
    m = shrink * y
    var = shrink * FUNNEL_SIGMA_Y**2
    mean_x = w @ m
    sd_x = np.sqrt(w @ (m**2 + var) - mean_x**2)
    mean_v = w @ v
    sd_v = np.sqrt(w @ (v - mean_v) ** 2)
    return log_z, {"v": np.array(mean_v), "x": mean_x}, {"v": np.array(sd_v), "x": sd_x}


def _funnel_reference():
    (y,) = _funnel_data()
    log_z, mean, sd = _funnel_quadrature(y)
    return Reference(
        mean, sd, log_z, 0.0, "1-D quadrature over v (50 001 points on [-30, 20]), float64"
    )


def _funnel_check(ref):
    (y,) = _funnel_data()
    lz2, m2, s2 = _funnel_quadrature(y, num=12_501, lo=-40.0, hi=25.0)
    dm = max(np.max(np.abs(m2[k] - ref.mean[k])) for k in m2)
    ds = max(np.max(np.abs(s2[k] - ref.sd[k])) for k in s2)
    problem = PROBLEMS["funnel"]

    def draw(rng):
        v = rng.normal(-2.0, 3.0)
        return {"v": np.array(v), "x": rng.normal(0.0, 1.0, FUNNEL_D - 1)}

    def log_post_times_z(p):  # log p(v, x, y) by the conjugate factorisation
        v, x = float(p["v"]), p["x"]
        var_y = np.exp(v) + FUNNEL_SIGMA_Y**2
        shrink = np.exp(v) / var_y
        return float(
            _log_normal(v, 0.0, FUNNEL_V_SD**2)
            + np.sum(_log_normal(y, 0.0, var_y))
            + np.sum(_log_normal(x, shrink * y, shrink * FUNNEL_SIGMA_Y**2))
        )

    d = _density_check(problem, log_post_times_z, draw)
    lines = [
        f"coarser/wider grid (12 501 points on [-40, 25]): |d log Z| = "
        f"{abs(lz2 - ref.log_z):.1e}, max |d mean| = {dm:.1e}, max |d sd| = {ds:.1e}",
        f"conjugate factorisation vs NumPyro log density at 200 points: max |diff| = "
        f"{np.max(np.abs(d)):.1e}",
    ]
    return lines + _nuts_check(problem, ref, chains=4, draws=5000)


# --------------------------------------------------------------------------------- 3. banana
BANANA_PRIOR_SD, BANANA_SIGMA, BANANA_Y = 2.0, 0.1, 1.0


def banana_model(y):
    theta = numpyro.sample("theta", dist.Normal(0.0, BANANA_PRIOR_SD).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(theta[1] - theta[0] ** 2, BANANA_SIGMA), obs=y)


def _banana_conditional(t1, y):
    """theta_2 | theta_1, y: Gaussian (mean, var), and log p(theta_1, y)."""
    p0, s2 = BANANA_PRIOR_SD**2, BANANA_SIGMA**2
    c = y + t1**2  # likelihood centre in theta_2
    var = 1.0 / (1.0 / p0 + 1.0 / s2)
    mean = var * c / s2
    log_marg = _log_normal(t1, 0.0, p0) + _log_normal(c, 0.0, p0 + s2)
    return mean, var, log_marg


def _banana_quadrature(y, num=200_001, half_width=12.0):
    t1 = np.linspace(-half_width, half_width, num)
    dt = t1[1] - t1[0]
    m2, v2, log_marg = _banana_conditional(t1, y)
    log_z = float(logsumexp(log_marg) + np.log(dt))
    w = np.exp(log_marg - log_z) * dt
    mean = np.array([w @ t1, w @ m2])
    second = np.array([w @ t1**2, w @ (m2**2 + v2)])
    return log_z, mean, np.sqrt(second - mean**2)


def _banana_reference():
    log_z, mean, sd = _banana_quadrature(BANANA_Y)
    return Reference(
        {"theta": mean},
        {"theta": sd},
        log_z,
        0.0,
        "theta_2 | theta_1 conjugate, 1-D quadrature over theta_1 (200 001 points), float64",
    )


def _banana_check(ref):
    # brute-force 2-D grid, independent of the conjugate step
    t1 = np.linspace(-6, 6, 2401)
    t2 = np.linspace(-6, 20, 26001)
    lz_parts, m_parts = [], []
    for chunk in np.array_split(t1, 12):
        a, b = np.meshgrid(chunk, t2, indexing="ij")
        lj = (
            _log_normal(a, 0.0, BANANA_PRIOR_SD**2)
            + _log_normal(b, 0.0, BANANA_PRIOR_SD**2)
            + _log_normal(BANANA_Y, b - a**2, BANANA_SIGMA**2)
        )
        lz_parts.append(logsumexp(lj))
        m_parts.append((lj, a, b))
    cell = (t1[1] - t1[0]) * (t2[1] - t2[0])
    log_z = float(logsumexp(lz_parts) + np.log(cell))
    e = np.zeros(2)
    e2 = np.zeros(2)
    for lj, a, b in m_parts:
        w = np.exp(lj - log_z) * cell
        e += [np.sum(w * a), np.sum(w * b)]
        e2 += [np.sum(w * a**2), np.sum(w * b**2)]
    sd = np.sqrt(e2 - e**2)
    lines = [
        f"brute-force 2-D grid (2401 x 26001): log Z {log_z:.8f} vs {ref.log_z:.8f}; "
        f"means {np.round(e, 6)} vs {np.round(ref.mean['theta'], 6)}; sds {np.round(sd, 6)} "
        f"vs {np.round(ref.sd['theta'], 6)}"
    ]
    return lines + _nuts_check(PROBLEMS["banana"], ref, chains=4, draws=5000)


# ------------------------------------------------------------------------------ 4. mixture20
MIX_D, MIX_PRIOR_SD, MIX_M, MIX_SD = 20, 5.0, 3.0, 1.0


def mixture20_model(center):
    x = numpyro.sample("x", dist.Normal(0.0, MIX_PRIOR_SD).expand([center.shape[0]]).to_event(1))
    comp = jnp.stack(
        [
            jnp.sum(dist.Normal(center, MIX_SD).log_prob(x)),
            jnp.sum(dist.Normal(-center, MIX_SD).log_prob(x)),
        ]
    )
    numpyro.factor("mixture", jlogsumexp(comp) - jnp.log(2.0))


def _mixture_data():
    return (np.full(MIX_D, MIX_M),)


def _mixture_components():
    p0, s2 = MIX_PRIOR_SD**2, MIX_SD**2
    var = p0 * s2 / (p0 + s2)
    mode = MIX_M * p0 / (p0 + s2)
    return mode, var


def _mixture_reference():
    mode, var = _mixture_components()
    log_z = float(MIX_D * _log_normal(MIX_M, 0.0, MIX_PRIOR_SD**2 + MIX_SD**2))
    sd = np.full(MIX_D, np.sqrt(var + mode**2))
    return Reference(
        {"x": np.zeros(MIX_D)},
        {"x": sd},
        log_z,
        0.0,
        "closed form (equal-weight two-component Gaussian mixture posterior), float64",
    )


def _mixture_check(ref):
    mode, var = _mixture_components()
    problem = PROBLEMS["mixture20"]

    def draw(rng):
        sign = rng.choice([-1.0, 1.0])
        return {"x": sign * mode + 2 * np.sqrt(var) * rng.normal(size=MIX_D)}

    def log_post(p):
        comps = [np.sum(_log_normal(p["x"], s * mode, var)) for s in (1.0, -1.0)]
        return float(logsumexp(comps) + np.log(0.5))

    d = _density_check(problem, log_post, draw)
    lines = [
        f"log p(x, y) - log p(x | y) at 200 points: mean {d.mean():.10f}, spread "
        f"{np.ptp(d):.2e}; reference log Z {ref.log_z:.10f}"
    ]
    # NUTS stays in the mode it starts in: compare it with that mode's moments.
    samples, _, div = _nuts_samples(problem.model, problem.args(np.float64), seed=1, draws=2000)
    x = samples["x"]
    sign = np.sign(x.mean())
    err = np.max(np.abs(x.mean(0) - sign * mode)) / np.sqrt(var)
    rat = x.std(0) / np.sqrt(var)
    lines.append(
        f"quick NUTS (1 x 2000, {div} divergences) stays in the {'+' if sign > 0 else '-'} "
        f"mode: max |mean - mode mean| / mode sd = {err:.3f}, sd / mode sd in "
        f"[{rat.min():.3f}, {rat.max():.3f}]"
    )
    return lines


# --------------------------------------------------------------------------- 5-6. eight schools
SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools_centered(y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", y.shape[0]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def _schools_quadrature(n_mu=3501, n_lt=3801, mu_range=(-30.0, 40.0), lt_range=(-12.0, 7.0)):
    """Grid over (mu, log tau): log Z and exact means/sds of mu, tau, theta, theta_tilde."""
    y, s2 = SCHOOLS_Y, SCHOOLS_SIGMA**2
    mu = np.linspace(*mu_range, n_mu)
    lt = np.linspace(*lt_range, n_lt)
    cell = (mu[1] - mu[0]) * (lt[1] - lt[0])
    tau = np.exp(lt)
    t2 = tau**2
    # log prior in (mu, log tau): N(mu; 0, 25) + log HalfCauchy(tau; 5) + log tau
    lp_tau = np.log(2.0 / (np.pi * 5.0 * (1.0 + (tau / 5.0) ** 2))) + lt
    lp_mu = _log_normal(mu, 0.0, 25.0)
    var = s2[None, :] + t2[:, None]  # (n_lt, J)
    # log p(y | mu, tau) on the grid, (n_mu, n_lt)
    ll = np.zeros((n_mu, n_lt))
    for j in range(y.size):
        ll += _log_normal(y[j], mu[:, None], var[None, :, j])
    lj = lp_mu[:, None] + lp_tau[None, :] + ll
    log_z = float(logsumexp(lj) + np.log(cell))
    w = np.exp(lj - logsumexp(lj))  # (n_mu, n_lt), sums to 1
    w_mu, w_lt = w.sum(1), w.sum(0)
    out_m, out_s = {}, {}

    def put(name, e1, e2):
        out_m[name] = np.asarray(e1)
        out_s[name] = np.sqrt(np.asarray(e2) - np.asarray(e1) ** 2)

    put("mu", w_mu @ mu, w_mu @ mu**2)
    put("tau", w_lt @ tau, w_lt @ t2)
    # theta_j | mu, tau, y ~ N(c_j, v_j): v_j = 1 / (1/s2 + 1/t2), c_j = v_j (y/s2 + mu/t2)
    v = 1.0 / (1.0 / s2[None, :] + 1.0 / t2[:, None])  # (n_lt, J)
    a = v * (y / s2)[None, :]  # part of c_j free of mu
    b = v / t2[:, None]  # coefficient of mu
    e_mu_lt = w.T @ mu  # (n_lt,) sum_mu w mu
    e_mu2_lt = w.T @ mu**2
    e1 = w_lt @ a + e_mu_lt @ b
    e2 = w_lt @ (a**2 + v) + 2 * e_mu_lt @ (a * b) + e_mu2_lt @ b**2
    put("theta", e1, e2)
    # theta_tilde = (theta - mu) / tau: mean (a + (b - 1) mu) / tau, var v / t2
    a2, b2 = a / tau[:, None], (b - 1.0) / tau[:, None]
    e1 = w_lt @ a2 + e_mu_lt @ b2
    e2 = w_lt @ (a2**2 + v / t2[:, None]) + 2 * e_mu_lt @ (a2 * b2) + e_mu2_lt @ b2**2
    put("theta_tilde", e1, e2)
    return log_z, out_m, out_s


def _schools_reference(noncentered: bool):
    def make():
        log_z, mean, sd = _schools_quadrature()
        if not noncentered:
            mean.pop("theta_tilde")
            sd.pop("theta_tilde")
        return Reference(
            mean,
            sd,
            log_z,
            0.0,
            "2-D quadrature over (mu, log tau) (3501 x 3801 grid), theta analytic, float64",
        )

    return make


_SCHOOLS_NUTS_CACHE: dict = {}


def _schools_check(name):
    def check(ref):
        lz2, m2, s2 = _schools_quadrature(
            n_mu=1751, n_lt=1901, mu_range=(-40.0, 50.0), lt_range=(-15.0, 8.0)
        )
        dm = max(np.max(np.abs(m2[k] - ref.mean[k])) for k in ref.mean)
        ds = max(np.max(np.abs(s2[k] - ref.sd[k])) for k in ref.sd)
        lines = [
            f"coarser/wider grid (1751 x 1901): |d log Z| = {abs(lz2 - ref.log_z):.1e}, "
            f"max |d mean| = {dm:.1e}, max |d sd| = {ds:.1e}"
        ]
        if "nuts" not in _SCHOOLS_NUTS_CACHE:
            problem = PROBLEMS["eight_schools_noncentered"]
            samples, ess, div = _nuts_samples(
                problem.model,
                problem.args(np.float64),
                seed=7,
                chains=4,
                warmup=2000,
                draws=20_000,
                target_accept_prob=0.95,
            )
            _SCHOOLS_NUTS_CACHE["nuts"] = (samples, ess, div)
        samples, ess, div = _SCHOOLS_NUTS_CACHE["nuts"]
        mean, sd = moments(samples)
        z = np.concatenate([np.ravel((mean[k] - ref.mean[k]) / ref.sd[k]) for k in ref.mean])
        mcse = np.concatenate([np.ravel(sd[k] / np.sqrt(ess[k]) / ref.sd[k]) for k in ref.mean])
        rat = np.concatenate([np.ravel(sd[k] / ref.sd[k]) for k in ref.mean])
        lines.append(
            f"long NUTS (non-centred, 4 x 20 000, target_accept 0.95, {div} divergences): "
            f"max |mean - ref| / ref sd = {np.max(np.abs(z)):.4f} (max |z / mcse| = "
            f"{np.max(np.abs(z) / mcse):.2f}), sd / ref sd in [{rat.min():.4f}, {rat.max():.4f}]"
        )
        return lines

    return check


# ------------------------------------------------------------------- 7. logistic, breast cancer
def logistic_model(X, y):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)


def _breast_cancer_data():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = np.asarray(data.data, np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return X, np.asarray(data.target, np.int32)


def _logistic_log_joint(W, X1, y):
    """(K, 31) -> (K,): log N(w; 0, I) + sum_i log Bernoulli(y_i; logit = X1 w)."""
    eta = W @ X1.T
    ll = np.sum(y * eta - np.logaddexp(0.0, eta), axis=1)
    return ll + np.sum(_log_normal(W, 0.0, 1.0), axis=1)


def _logistic_laplace(X1, y):
    w = np.zeros(X1.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(X1 @ w)))
        grad = X1.T @ (y - p) - w
        hess = (X1 * (p * (1 - p))[:, None]).T @ X1 + np.eye(X1.shape[1])
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.max(np.abs(step)) < 1e-12:
            break
    p = 1.0 / (1.0 + np.exp(-(X1 @ w)))
    hess = (X1 * (p * (1 - p))[:, None]).T @ X1 + np.eye(X1.shape[1])
    return w, np.linalg.inv(hess)


def _logistic_is(num=4_000_000, batch=100_000, df=5.0, seed=11):
    """log Z by importance sampling from a multivariate t at the Laplace approximation."""
    from scipy.special import gammaln

    X, y = _breast_cancer_data()
    X1 = np.hstack([np.ones((X.shape[0], 1)), X])
    mode, cov = _logistic_laplace(X1, y)
    d = mode.size
    chol = np.linalg.cholesky(cov)
    log_det = 2 * np.sum(np.log(np.diag(chol)))
    rng = np.random.default_rng(seed)
    log_norm = (
        gammaln((df + d) / 2) - gammaln(df / 2) - 0.5 * d * np.log(df * np.pi) - 0.5 * log_det
    )
    logw = []
    s1, s2, sw = np.zeros(d), np.zeros(d), []
    for _ in range(num // batch):
        z = rng.normal(size=(batch, d))
        g = rng.chisquare(df, size=batch) / df
        W = mode + (z @ chol.T) / np.sqrt(g)[:, None]
        maha = np.sum(z**2, axis=1) / g
        log_q = log_norm - 0.5 * (df + d) * np.log1p(maha / df)
        lw = _logistic_log_joint(W, X1, y) - log_q
        logw.append(lw)
        sw.append((lw, W))
    logw = np.concatenate(logw)
    m = logw.max()
    w = np.exp(logw - m)
    log_z = float(m + np.log(w.mean()))
    se = float(w.std() / (w.mean() * np.sqrt(w.size)))
    ess = float(w.sum() ** 2 / np.sum(w**2))
    for lw, W in sw:
        ww = np.exp(lw - m)
        s1 += ww @ W
        s2 += ww @ W**2
    is_mean = s1 / w.sum()
    is_sd = np.sqrt(s2 / w.sum() - is_mean**2)
    return log_z, se, ess, is_mean, is_sd


_LOGISTIC_IS: dict = {}


def _logistic_reference():
    problem = PROBLEMS["logistic_breast_cancer"]
    samples, ess, div = _nuts_samples(
        problem.model,
        problem.args(np.float64),
        seed=5,
        chains=4,
        warmup=2000,
        draws=10_000,
        target_accept_prob=0.9,
    )
    mean, sd = moments(samples)
    mcse = {k: sd[k] / np.sqrt(ess[k]) for k in sd}
    log_z, se, is_ess, is_mean, is_sd = _logistic_is()
    _LOGISTIC_IS["is"] = (is_mean, is_sd, is_ess)
    min_ess = min(float(np.min(v)) for v in ess.values())
    return Reference(
        mean,
        sd,
        log_z,
        se,
        f"means/sds: NumPyro NUTS float64, 4 x 10 000 draws (target_accept 0.9, {div} "
        f"divergences, min ESS {min_ess:.0f}); log Z: importance sampling, multivariate t "
        f"(df 5) at the Laplace approximation, 4e6 draws (ESS {is_ess:.0f})",
        mcse=mcse,
    )


def _logistic_check(ref):
    if "is" not in _LOGISTIC_IS:
        _, _, is_ess, is_mean, is_sd = _logistic_is(num=1_000_000)
        _LOGISTIC_IS["is"] = (is_mean, is_sd, is_ess)
    is_mean, is_sd, is_ess = _LOGISTIC_IS["is"]
    ref_m = np.concatenate([np.ravel(ref.mean["alpha"]), ref.mean["beta"]])
    ref_s = np.concatenate([np.ravel(ref.sd["alpha"]), ref.sd["beta"]])
    z = np.abs(is_mean - ref_m) / ref_s
    return [
        f"importance-sampling means vs NUTS: max |diff| / sd = {z.max():.4f}; sd ratio in "
        f"[{np.min(is_sd / ref_s):.4f}, {np.max(is_sd / ref_s):.4f}] (IS ESS {is_ess:.0f})",
        f"log Z = {ref.log_z:.4f} +- {ref.log_z_se:.4f} (IS standard error)",
    ]


# ------------------------------------------------------------------------------ 8. horseshoe
def horseshoe_model(X, y):
    d = X.shape[1]
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    lam = numpyro.sample("lambda", dist.HalfCauchy(jnp.ones(d)).to_event(1))
    beta = numpyro.sample("beta", dist.Normal(0.0, tau * lam).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def _diabetes_data():
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    X = np.asarray(data.data, np.float64)
    X = (X - X.mean(0)) / X.std(0)
    y = np.asarray(data.target, np.float64)
    return X, (y - y.mean()) / y.std()


def _horseshoe_summarise(samples):
    out = {k: v for k, v in samples.items() if k not in ("tau", "lambda")}
    if "tau" in samples:
        out["log_tau"] = np.log(np.asarray(samples["tau"], np.float64))
    if "lambda" in samples:
        out["log_lambda"] = np.log(np.asarray(samples["lambda"], np.float64))
    return out


def _horseshoe_reference():
    from numpyro.handlers import reparam
    from numpyro.infer.reparam import LocScaleReparam

    problem = PROBLEMS["horseshoe"]
    model = reparam(problem.model, config={"beta": LocScaleReparam(0)})
    samples, ess, div = _nuts_samples(
        model,
        problem.args(np.float64),
        seed=9,
        chains=4,
        warmup=2000,
        draws=20_000,
        target_accept_prob=0.99,
    )
    samples = {k: v for k, v in samples.items() if k in ("tau", "lambda", "beta", "sigma")}
    summ = _horseshoe_summarise(samples)
    mean, sd = moments(summ)
    # ESS of the transformed sites: that of the site they come from
    ess = {k: ess.get(k, ess.get(k.removeprefix("log_"), ess.get("beta_decentered"))) for k in summ}
    mcse = {k: sd[k] / np.sqrt(ess[k]) for k in sd}
    return Reference(
        mean,
        sd,
        float("nan"),
        float("nan"),
        f"NumPyro NUTS float64 on the non-centred model (LocScaleReparam on beta), 4 x 20 000 "
        f"draws, target_accept 0.99, {div} divergences; tau and lambda on the log scale; "
        "no exact log Z",
        mcse=mcse,
    )


def _horseshoe_scale_mixture(X, y):
    """The same posterior with each half-Cauchy written as ``|N(0, 1)| / sqrt(Gamma(1/2,
    1/2))`` and ``beta`` non-centred: a second parametrisation for the check."""
    d = X.shape[1]
    a_tau = numpyro.sample("a_tau", dist.HalfNormal(1.0))
    g_tau = numpyro.sample("g_tau", dist.Gamma(0.5, 0.5))
    tau = numpyro.deterministic("tau", a_tau / jnp.sqrt(g_tau))
    a_lam = numpyro.sample("a_lam", dist.HalfNormal(jnp.ones(d)).to_event(1))
    g_lam = numpyro.sample("g_lam", dist.Gamma(jnp.full(d, 0.5), 0.5).to_event(1))
    lam = numpyro.deterministic("lambda", a_lam / jnp.sqrt(g_lam))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
    beta = numpyro.deterministic("beta", tau * lam * z)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def _horseshoe_check(ref):
    problem = PROBLEMS["horseshoe"]
    lines = []
    for label, model, seed in (
        ("centred model as benchmarked", problem.model, 10),
        ("half-Cauchy as scale mixture, non-centred beta", _horseshoe_scale_mixture, 11),
    ):
        samples, _, div = _nuts_samples(
            model,
            problem.args(np.float64),
            seed=seed,
            chains=2,
            warmup=1000,
            draws=5000,
            target_accept_prob=0.95,
        )
        samples = {k: v for k, v in samples.items() if k in ("tau", "lambda", "beta", "sigma")}
        mean, sd = moments(_horseshoe_summarise(samples))
        z = np.concatenate([np.ravel(np.abs(mean[k] - ref.mean[k]) / ref.sd[k]) for k in ref.mean])
        rat = np.concatenate([np.ravel(sd[k] / ref.sd[k]) for k in ref.mean])
        lines.append(
            f"NUTS, {label} (2 x 5000, target_accept 0.95, {div} divergences): max |mean - "
            f"ref| / ref sd = {z.max():.3f}; sd / ref sd in [{rat.min():.3f}, {rat.max():.3f}]"
        )
    return lines


# ------------------------------------------------------------------------------ registry
def _build() -> dict:
    X_bc, y_bc = _breast_cancer_data()
    X_db, y_db = _diabetes_data()
    problems = [
        Problem(
            "ill_gaussian",
            "100-D Gaussian, prior N(0, 10^2 I), noise sds log-spaced 1e-2..1e1",
            ill_gaussian_model,
            _ill_data(),
            _ill_reference,
            _ill_check,
            bj_step_size=0.001,
            bj_num_integration_steps=50,
        ),
        Problem(
            "funnel",
            "Neal's funnel with data, D = 10 (v and 9 x_i), y_i ~ N(x_i, 1)",
            funnel_model,
            _funnel_data(),
            _funnel_reference,
            _funnel_check,
            bj_step_size=0.03,
            bj_num_integration_steps=20,
        ),
        Problem(
            "banana",
            "2-D banana, theta ~ N(0, 4 I), y = 1 ~ N(theta_2 - theta_1^2, 0.1^2)",
            banana_model,
            (np.array(BANANA_Y),),
            _banana_reference,
            _banana_check,
            bj_step_size=0.03,
            bj_num_integration_steps=20,
        ),
        Problem(
            "mixture20",
            "20-D two-mode mixture, prior N(0, 25 I), modes +-3 * 1 with sd 1 (factor)",
            mixture20_model,
            _mixture_data(),
            _mixture_reference,
            _mixture_check,
            bj_step_size=0.2,
            bj_num_integration_steps=20,
        ),
        Problem(
            "eight_schools_centered",
            "eight schools, centred",
            eight_schools_centered,
            (SCHOOLS_Y, SCHOOLS_SIGMA),
            _schools_reference(False),
            _schools_check("eight_schools_centered"),
            bj_step_size=0.005,
            bj_num_integration_steps=20,
        ),
        Problem(
            "eight_schools_noncentered",
            "eight schools, non-centred",
            eight_schools_noncentered,
            (SCHOOLS_Y, SCHOOLS_SIGMA),
            _schools_reference(True),
            _schools_check("eight_schools_noncentered"),
            bj_step_size=0.2,
            bj_num_integration_steps=10,
        ),
        Problem(
            "logistic_breast_cancer",
            "logistic regression, breast cancer (569 x 30, standardised), N(0, 1) priors",
            logistic_model,
            (X_bc, y_bc),
            _logistic_reference,
            _logistic_check,
            bj_step_size=0.1,
            bj_num_integration_steps=10,
        ),
        Problem(
            "horseshoe",
            "horseshoe regression, diabetes (442 x 10, standardised X and y)",
            horseshoe_model,
            (X_db, y_db),
            _horseshoe_reference,
            _horseshoe_check,
            summarise=_horseshoe_summarise,
            bj_step_size=0.02,
            bj_num_integration_steps=10,
            exact_log_z=False,
        ),
    ]
    return {p.name: p for p in problems}


PROBLEMS: dict = _build()


def reference_path(name: str) -> Path:
    return REFERENCE_DIR / f"{name}.npz"
