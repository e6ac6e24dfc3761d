"""pk.infer.SMC.to_inference_data(): groups, dims, and ArviZ's own diagnostics on them."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import particlekit as pk


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    numpyro.deterministic("mu2", 2.0 * mu)
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def run_smc():
    y = jnp.array([0.3, 0.5, 0.1, 1.2, 0.8, -0.2])
    smc = pk.infer.SMC(model, num_particles=300, num_chains=3, num_mcmc_steps=3)
    smc.run(jax.random.key(0), y)
    return smc


def _group(idata, name):
    return idata[name] if hasattr(idata, "children") else getattr(idata, name)


def test_inference_data():
    # one run (one compile) for all checks
    smc = run_smc()
    idata = smc.to_inference_data()
    check_groups_and_dims(smc, idata)
    check_arviz_diagnostics(idata)
    # a second run on other data of the same shape (the compiled sampler is reused):
    # observed_data is that run's data, not the first run's
    y2 = jnp.array([5.0, 6.0, 7.0, 5.5, 6.5, 4.0])
    smc.run(jax.random.key(1), y2)
    obs = _group(smc.to_inference_data(), "observed_data")
    np.testing.assert_allclose(obs["y"].values, y2, rtol=1e-6)


def check_groups_and_dims(smc, idata):
    names = set(idata.children) if hasattr(idata, "children") else set(idata.groups())
    expected = {
        "posterior",
        "sample_stats",
        "smc_stages",
        "weighted_particles",
        "log_likelihood",
        "observed_data",
    }
    assert expected <= names
    post = _group(idata, "posterior")
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (3, 300)
    assert "mu2" in post
    np.testing.assert_allclose(post["mu"].values, smc.get_samples(group_by_chain=True)["mu"])
    stats = _group(idata, "sample_stats")
    assert stats["lp"].dims == ("chain", "draw")
    np.testing.assert_allclose(stats["log_marginal_likelihood"].values, smc.log_evidence)
    stages = _group(idata, "smc_stages")
    assert stages["beta"].dims == ("chain", "stage")
    beta = stages["beta"].values
    num = stages["num_stages"].values
    for c in range(3):
        assert beta[c, num[c] - 1] == 1.0 and np.all(np.isnan(beta[c, num[c] :]))
    weighted = _group(idata, "weighted_particles")
    log_w = weighted["log_weight"].values
    np.testing.assert_allclose(np.exp(log_w).sum(1), 1.0, rtol=1e-4)
    assert weighted["mu"].dims == ("chain", "particle")
    ll = _group(idata, "log_likelihood")
    assert ll["y"].shape == (3, 300, 6)
    obs = _group(idata, "observed_data")
    np.testing.assert_allclose(obs["y"].values, [0.3, 0.5, 0.1, 1.2, 0.8, -0.2], rtol=1e-6)
    # pointwise log-likelihood agrees with the draws
    mu = post["mu"].values[0, 0]
    s = post["s"].values[0, 0]
    expected_ll = dist.Normal(mu, s).log_prob(obs["y"].values)
    np.testing.assert_allclose(ll["y"].values[0, 0], expected_ll, rtol=1e-4)


def check_arviz_diagnostics(idata):
    summary = az.summary(idata, var_names=["mu", "s"])
    assert np.all(np.isfinite(summary["r_hat"])) and np.all(summary["r_hat"] < 1.1)
    ess = az.ess(idata, var_names=["mu"])
    assert float(ess["mu"]) > 50
    # the posterior mean agrees with the weighted particles of the last stage
    weighted = _group(idata, "weighted_particles")
    w = np.exp(weighted["log_weight"].values)
    weighted_mean = np.sum(w * weighted["mu"].values) / np.sum(w)
    post_sd = float(summary.loc["mu", "sd"])
    assert abs(float(summary.loc["mu", "mean"]) - weighted_mean) < 5 * post_sd / np.sqrt(100)
