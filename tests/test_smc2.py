"""SMC² on a ``ParametricSSM``: the posterior of an autoregression coefficient, the latent
path's posterior mean and the evidence against exact answers (the Kalman likelihood and
RTS smoother on a fine grid of the coefficient), the ``N_x`` doubling, ArviZ output,
warnings and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import rts, scalar_log_likelihoods, scalar_model
from test_statespace import MODEL, YS, prior

import particlekit as pk


def exact_answers():
    """Posterior mean and sd of ``rho`` (uniform prior on (-1, 1)), the path's posterior
    mean ``E[x_t | y]`` (the RTS means averaged over the posterior of ``rho``) and
    ``log p(y)`` (the Kalman likelihood integrated over the prior by the trapezoid rule)."""
    grid = np.linspace(-0.999, 0.999, 801)
    ys = np.asarray(YS)
    loglik = scalar_log_likelihoods(grid, ys)
    w = np.exp(loglik - loglik.max())
    log_evidence = np.log(np.trapezoid(w, grid) / 2.0) + loglik.max()
    w /= w.sum()
    mean = np.sum(w * grid)
    sd = np.sqrt(np.sum(w * (grid - mean) ** 2))
    path_mean = w @ np.array([rts(scalar_model(a=a), ys)[0][:, 0] for a in grid])
    return mean, sd, path_mean, log_evidence


@pytest.mark.optimized
@pytest.mark.slow
def test_smc2_matches_exact_posterior_and_evidence():
    res = pk.statespace.smc2(
        jax.random.key(0), MODEL, YS, num_theta_particles=1000, num_x_particles=64,
        num_mcmc_steps=10, num_chains=2,
    )  # fmt: skip
    mean, sd, path_mean, log_evidence = exact_answers()
    rho = np.asarray(res.theta["rho"], dtype=np.float64)
    paths = np.asarray(res.paths, dtype=np.float64)
    # Monte Carlo errors of one run at these settings, measured over 10 seeds (see the
    # module docstring of benchmarks/bench_smc2.py): mean of rho 0.010, sd of rho 0.009,
    # log evidence 0.15, path means <= 0.08; two runs average them (error / sqrt 2)
    se = np.array([0.010, 0.009, 0.15, 0.08]) / np.sqrt(2)
    assert abs(rho.mean() - mean) < 4 * se[0]
    assert abs(rho.std(axis=1).mean() - sd) < 4 * se[1]
    assert abs(float(jnp.mean(res.log_evidence)) - log_evidence) < 4 * se[2]
    for t in (0, 30, 59):
        assert abs(paths[:, :, t].mean() - path_mean[t]) < 4 * se[3]
    # the exchange step ran: N_x doubled once acceptance fell under 10 %
    assert np.asarray(res.num_x_particles)[:, -1].min() == 128
    assert np.asarray(res.num_x_particles)[:, 0].max() == 64
    moved = np.isfinite(np.asarray(res.acceptance_rate))
    assert moved.sum(axis=1).min() >= 3
    assert np.all(np.isfinite(np.asarray(res.log_likelihood)))


@pytest.mark.slow
def test_smc2_arviz_summary_and_fixed_num_x(capsys):
    res = pk.statespace.smc2(
        jax.random.key(1), MODEL, YS, num_theta_particles=64, num_x_particles=16,
        max_num_x_particles=16, min_acceptance=0.0, num_mcmc_steps=2, num_chains=2,
    )  # fmt: skip
    assert np.all(np.asarray(res.num_x_particles) == 16)
    data = res.to_inference_data(YS)
    groups = set(data.children if hasattr(data, "children") else data.groups())
    assert {"posterior", "sample_stats", "observed_data", "smc2_steps"} <= groups
    assert data["posterior"]["rho"].shape == (2, 64)
    assert data["posterior"]["x"].shape == (2, 64, 60)
    assert data["smc2_steps"]["ess"].shape == (2, 60)
    assert data["sample_stats"]["log_marginal_likelihood"].shape == (2,)
    samples = res.get_samples()
    assert samples["rho"].shape == (128,) and samples["x"].shape == (128, 60)
    res.print_summary()
    assert "log evidence" in capsys.readouterr().out


def test_smc2_warns_when_moves_starve():
    with pytest.warns(UserWarning, match="max_num_x_particles"):
        pk.statespace.smc2(
            jax.random.key(2), MODEL, YS, num_theta_particles=64, num_x_particles=2,
            max_num_x_particles=2, min_acceptance=0.9, num_mcmc_steps=1, latent_paths=False,
        )  # fmt: skip


def test_smc2_flags_impossible_data():
    def impossible(theta):
        return pk.StateSpaceModel(
            initial=lambda: dist.Normal(0.0, 1.0),
            transition=lambda x_prev, t: dist.Normal(theta["rho"] * x_prev, 1.0),
            observation=lambda x, t: dist.Uniform(x - 0.1, x + 0.1),
        )

    model = pk.statespace.ParametricSSM(prior, impossible)
    with pytest.warns(UserWarning, match="failed"):
        res = pk.statespace.smc2(
            jax.random.key(0), model, jnp.full(5, 1e6), num_theta_particles=16,
            num_x_particles=8, latent_paths=False,
        )  # fmt: skip
    assert bool(res.failed[0])
    assert float(res.log_evidence[0]) == -np.inf
    assert not np.any(np.isnan(np.asarray(res.unconstrained)))


def test_smc2_bad_input():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="ParametricSSM"):
        pk.statespace.smc2(key, lambda theta: None, YS)
    with pytest.raises(ValueError, match="key"):
        pk.statespace.smc2(0, MODEL, YS)
    with pytest.raises(ValueError, match="num_theta_particles"):
        pk.statespace.smc2(key, MODEL, YS, num_theta_particles=1)
    with pytest.raises(ValueError, match="num_x_particles"):
        pk.statespace.smc2(key, MODEL, YS, num_x_particles=0)
    with pytest.raises(ValueError, match="max_num_x_particles"):
        pk.statespace.smc2(key, MODEL, YS, num_x_particles=64, max_num_x_particles=32)
    with pytest.raises(ValueError, match="ess_threshold"):
        pk.statespace.smc2(key, MODEL, YS, ess_threshold=0.0)
    with pytest.raises(ValueError, match="min_acceptance"):
        pk.statespace.smc2(key, MODEL, YS, min_acceptance=1.0)
    with pytest.raises(ValueError, match="shape"):
        pk.statespace.smc2(key, MODEL, jnp.zeros((10, 2)))
