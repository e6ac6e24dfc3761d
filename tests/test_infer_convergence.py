"""When to trust a run: the checks across chains warn on under-resourced runs of hard
posteriors and stay silent on well-resourced runs of a conjugate model; the default HMC
move and its tuning; one compilation for new data of the same shape."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import particlekit as pk
from particlekit.infer import adaptive_hmc, convergence

D = 20
SCALES = np.logspace(-2, 1, D).astype(np.float32)


def ill_conditioned(y):
    """Prior N(0, 10^2 I), likelihood N(y; x, diag(SCALES^2)): exact log Z in closed form."""
    x = numpyro.sample("x", dist.Normal(jnp.zeros(D), 10.0).to_event(1))
    numpyro.sample("y", dist.Normal(x, jnp.asarray(SCALES)).to_event(1), obs=y)


def ill_conditioned_log_z(y):
    var = 100.0 + SCALES.astype(np.float64) ** 2
    return float(np.sum(-0.5 * np.log(2 * np.pi * var) - 0.5 * y**2 / var))


def _run(smc, *args):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        smc.run(*args)
    return [w for w in record if issubclass(w.category, UserWarning) and "trust" in str(w.message)]


def test_under_resourced_run_on_an_ill_conditioned_gaussian_warns():
    y = np.random.default_rng(0).normal(size=D) * np.sqrt(100.0 + SCALES**2)
    smc = pk.infer.SMC(
        ill_conditioned, num_particles=100, kernel="rwm", num_mcmc_steps=1, num_chains=4
    )
    warned = _run(smc, jax.random.key(0), jnp.asarray(y, jnp.float32))
    # the run is wrong (by tens of nats) ...
    err = np.abs(np.asarray(smc.log_evidence) - ill_conditioned_log_z(y))
    assert np.all(err > 5.0)
    # ... and says so, loudly and in the report
    assert len(warned) == 1
    report = smc.convergence
    assert not report.trustworthy
    assert np.nanmax(report.r_hat) > convergence.RHAT_THRESHOLD or report.log_evidence_sd > 1


@pytest.mark.optimized
@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_on_the_ill_conditioned_gaussian_are_right_and_silent(seed):
    y = np.random.default_rng(0).normal(size=D) * np.sqrt(100.0 + SCALES**2)
    smc = pk.infer.SMC(ill_conditioned, num_chains=4)
    warned = _run(smc, jax.random.key(seed), jnp.asarray(y, jnp.float32))
    assert not warned
    report = smc.convergence
    assert report.trustworthy and report.r_hat.shape == (D,)
    # exact posterior: x_j ~ N(m_j, v_j)
    v = 1.0 / (1.0 / 100.0 + 1.0 / SCALES.astype(np.float64) ** 2)
    m = v * y / SCALES**2
    x = np.asarray(smc.get_samples()["x"])  # (4000, D)
    # standardised error of the means: MC sd ~ 1 / sqrt(ESS ~ 1000); 5 sd
    assert np.max(np.abs(x.mean(0) - m) / np.sqrt(v)) < 5 / np.sqrt(1000)
    assert np.all(np.abs(x.std(0) / np.sqrt(v) - 1.0) < 0.1)
    # log Z within 5 sd of the perfect-mixing sd (plus the Jensen bias) of the truth
    err = np.asarray(smc.log_evidence) - ill_conditioned_log_z(y)
    sd = report.ideal_log_evidence_sd
    assert np.all(np.abs(err) < 5 * sd + 0.5 * sd**2), (err, sd)


def normal_mean(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_well_resourced_conjugate_run_does_not_warn_and_does_not_recompile():
    y = jnp.asarray(np.random.default_rng(3).normal(1.0, 1.0, size=20), jnp.float32)
    smc = pk.infer.SMC(normal_mean, num_chains=4)
    for seed in range(3):
        assert not _run(smc, jax.random.key(seed), y + seed)
    assert smc.convergence.trustworthy
    # three runs on new data of the same shape: one model trace, one compilation
    ((info, sample, constrain),) = smc._compiled.values()
    assert sample._cache_size() == 1


def test_convergence_report_is_printed(capsys):
    y = jnp.asarray([0.1, 0.4, -0.3], jnp.float32)
    smc = pk.infer.SMC(normal_mean, num_particles=300)
    smc.run(jax.random.key(0), y)
    smc.print_summary()
    out = capsys.readouterr().out
    for line in ("max R-hat", "log evidence per chain", "final-stage ESS", "acceptance"):
        assert line in out


def test_assess_flags_each_problem():
    rng = np.random.default_rng(0)
    n, c = 1000, 2
    ess = np.full((c, 4), 0.5)
    capped = np.zeros((c, 4), bool)
    stages = np.array([4, 4])
    good = convergence.assess(
        rng.normal(size=(c, n, 3)), np.array([-1.0, -1.02]), ess, stages, capped, n
    )
    assert good.trustworthy
    # ideal sd sqrt(4 / 1000) = 0.063: chains 1 nat apart disagree
    far = convergence.assess(
        rng.normal(size=(c, n, 3)), np.array([-1.0, -2.0]), ess, stages, capped, n
    )
    assert len(far.messages) == 1 and "log Z" in far.messages[0]
    last_capped = capped.copy()
    last_capped[1, 3] = True
    # a capped final stage alone is reported, not warned about ...
    cap = convergence.assess(
        rng.normal(size=(c, n, 3)), np.array([-1.0, -1.02]), ess, stages, last_capped, n
    )
    assert cap.trustworthy and cap.capped_stages.tolist() == [0, 1]
    assert cap.final_stage_capped.tolist() == [False, True]
    # ... but clumps of duplicates (each draw repeated 20 times: ESS ~ 2 x 50) warn, naming
    # the cap
    clumped = np.repeat(rng.normal(size=(c, n // 20, 3)), 20, axis=1)
    low = convergence.assess(clumped, np.array([-1.0, -1.02]), ess, stages, last_capped, n)
    assert any("ESS" in m and "cap" in m for m in low.messages)
    assert np.nanmin(low.ess_bulk) < convergence.MIN_ESS_PER_CHAIN * c


@pytest.mark.slow
def test_adaptive_hmc_leaves_a_gaussian_invariant_and_tunes_its_trajectory():
    """Starting from exact draws of N(0, diag(s^2)), the moved population has the same
    moments; the trajectory length settles where the ESJD per unit time peaks (about 2.3 in
    standardised units for a Gaussian), from a start at 1."""
    s = jnp.asarray([0.01, 1.0, 30.0])
    x = jax.random.normal(jax.random.key(0), (4000, 3)) * s
    tuning = adaptive_hmc.initial_tuning(3)
    for i in range(6):
        x, acc, steps, tuning, corr, decorrelated = adaptive_hmc.mutate_hmc(
            jax.random.key(i + 1),
            x,
            lambda u: -0.5 * jnp.sum((u / s) ** 2),
            jnp.diag(s**2),
            tuning,
            max_steps=20,
            max_correlation=0.1,
            max_integration_steps=64,
        )
        assert decorrelated and corr <= 0.11 and 1 <= int(steps) < 20
    z = np.asarray(x / s)
    # 4000 draws: the sd of a mean is 0.016 and of an sd 0.011
    assert np.all(np.abs(z.mean(0)) < 0.08) and np.all(np.abs(z.std(0) - 1) < 0.06)
    assert abs(float(acc) - adaptive_hmc.TARGET_ACCEPTANCE) < 0.1
    assert 1.5 < float(np.exp(tuning.log_trajectory_length)) < 3.5


def test_population_correlation_is_robust_to_heavy_tails():
    """A log-normal population whose bulk has moved and whose 2 % largest particles have
    not: the Pearson correlation is dominated by the stuck tail, the squashed one much less
    (it still sees the stuck particles)."""
    rng = np.random.default_rng(0)
    x = np.exp(2 * rng.normal(size=(1000, 1))).astype(np.float32)
    moved = np.exp(2 * rng.normal(size=(1000, 1))).astype(np.float32)
    top = np.argsort(x[:, 0])[-20:]
    moved[top] = x[top]
    pearson = np.corrcoef(x[:, 0], moved[:, 0])[0, 1]
    squashed = float(adaptive_hmc.population_correlation(jnp.asarray(x), jnp.asarray(moved)))
    assert pearson > 0.5 and 0.1 < squashed < pearson / 2
    # nothing moved: 1; independent populations: near 0 (sd 1 / sqrt(1000))
    assert (
        abs(float(adaptive_hmc.population_correlation(jnp.asarray(x), jnp.asarray(x))) - 1) < 1e-5
    )
    fresh = np.exp(2 * rng.normal(size=(1000, 1))).astype(np.float32)
    assert float(adaptive_hmc.population_correlation(jnp.asarray(x), jnp.asarray(fresh))) < 0.1


def test_rank_normalize_matches_scipy_average_ranks():
    from scipy.special import ndtri
    from scipy.stats import rankdata

    x = np.round(np.random.default_rng(0).normal(size=(3, 50, 4)), 1)  # many ties
    ranks = rankdata(x.reshape(150, 4), axis=0)
    expected = ndtri((ranks - 0.375) / (150 + 0.25)).reshape(x.shape)
    np.testing.assert_allclose(convergence.rank_normalize(x), expected, atol=1e-12)


def test_assess_thins_a_device_population_before_the_host_copy():
    """More than MAX_ASSESSED_PARTICLES particles per chain: R-hat and bulk ESS come from an
    even thinning (the ESS of independent draws is then about the thinned count, not N)."""
    cap = convergence.MAX_ASSESSED_PARTICLES
    n = 3 * cap + 5
    x = jax.random.normal(jax.random.key(0), (2, n, 2))  # a device array
    ess, capped = np.full((2, 3), 0.5), np.zeros((2, 3), bool)
    report = convergence.assess(x, np.array([-3.0, -3.0]), ess, np.array([3, 3]), capped, n)
    assert report.trustworthy
    thinned = 2 * -(-n // -(-n // cap))  # both chains, every ceil(n / cap)-th particle
    assert np.all(report.ess_bulk <= 1.1 * thinned) and np.all(report.ess_bulk > 0.8 * thinned)
