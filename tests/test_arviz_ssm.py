"""ArviZ converters of the state-space family (filters, FFBS, PaRIS, conditional SMC, PPG,
particle Gibbs, learning) and the progress bars of their entry points.

Each test runs its algorithm once (small T, N) with ``progress_bar=True`` and checks the
bar on standard error, then the groups, dims and values of ``to_inference_data()``. Runs on
arviz < 1 (``InferenceData``) and arviz >= 1 (``xarray.DataTree``)."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import particlekit as pk

T, N = 12, 32
SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)
SSM2 = pk.StateSpaceModel(
    initial=lambda: dist.Normal(jnp.zeros(2), 1.0).to_event(1),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0).to_event(1),
    observation=lambda x, t: dist.Normal(x[0] + x[1], 0.5),
)
YS = SSM.simulate(jax.random.key(0), T)[1]
XS = SSM.simulate(jax.random.key(0), T)[0]


def groups(data) -> set:
    return set(data.children) if hasattr(data, "children") else set(data.groups())


def group(data, name):
    return data[name] if hasattr(data, "children") else getattr(data, name)


def bar_shown(capsys, desc, total):
    jax.effects_barrier()
    err = capsys.readouterr().err
    assert desc in err and f"{total}/{total}" in err, err[-300:]


def check_observed(data, ys):
    obs = group(data, "observed_data")
    assert obs["y"].dims == ("time",)
    np.testing.assert_allclose(obs["y"].values, ys)


def stack(results):
    """Independent runs stacked on a leading axis, as ``jax.vmap`` would give them (without
    a second compilation)."""
    return jax.tree.map(lambda *a: jnp.stack(a), *results)


def summary_ok(data, var_names, num_chains):
    table = az.summary(data, var_names=var_names)
    assert len(table) > 0
    assert group(data, "posterior").sizes["chain"] == num_chains


# ------------------------------------------------------------------------------ filters
def test_filter_groups_dims_and_values(capsys):
    _, ys = SSM2.simulate(jax.random.key(1), T)
    res = pk.filters.bootstrap(jax.random.key(2), SSM2, ys, num_particles=N, progress_bar=True)
    bar_shown(capsys, "particlekit", T - 1)  # the filters' bar is the one of pk.run
    data = res.to_inference_data(ys)
    assert groups(data) >= {"filtering", "sample_stats", "weighted_particles", "observed_data"}
    assert "posterior" not in groups(data)
    filt = group(data, "filtering")
    assert filt["x_mean"].dims == ("chain", "time", "x_dim_0")
    assert filt["x_variance"].dims == ("chain", "time", "x_dim_0")
    assert filt["x_mean"].shape == (1, T, 2)
    np.testing.assert_allclose(filt["x_mean"].values[0], res.filtering_mean(), rtol=1e-6)
    np.testing.assert_allclose(filt["x_variance"].values[0], res.filtering_variance(), rtol=1e-6)
    for name, field in [
        ("ess", res.ess),
        ("log_evidence_increment", res.log_evidence_increments),
        ("resampled", res.resampled),
        ("num_nonfinite", res.num_nonfinite),
    ]:
        assert filt[name].dims == ("chain", "time")
        np.testing.assert_array_equal(filt[name].values[0], field)
    stats = group(data, "sample_stats")
    assert stats["log_marginal_likelihood"].dims == ("chain",)
    np.testing.assert_allclose(stats["log_marginal_likelihood"].values, [res.log_evidence])
    assert not stats["failed"].values.any()
    weighted = group(data, "weighted_particles")
    assert weighted["x"].dims == ("chain", "particle", "x_dim_0")
    np.testing.assert_allclose(weighted["x"].values[0], res.final_state.particles)
    np.testing.assert_allclose(np.exp(weighted["log_weight"].values).sum(-1), 1.0, rtol=1e-5)
    check_observed(data, ys)


def test_filter_batch_of_runs_is_chains():
    keys = jax.random.split(jax.random.key(3), 3)
    runs = jax.vmap(lambda k: pk.filters.bootstrap(k, SSM, YS, num_particles=N))(keys)
    data = runs.to_inference_data()
    filt = group(data, "filtering")
    assert filt["x_mean"].shape == (3, T) and filt["ess"].shape == (3, T)
    for c in range(3):
        one = jax.tree.map(lambda a, c=c: a[c], runs)
        np.testing.assert_allclose(filt["x_mean"].values[c], one.filtering_mean(), rtol=1e-5)
    assert group(data, "sample_stats")["failed"].shape == (3,)
    assert group(data, "weighted_particles")["x"].shape == (3, N)
    # keep_history=False: the diagnostics, no filtering moments
    short = pk.filters.bootstrap(jax.random.key(4), SSM, YS, num_particles=N, keep_history=False)
    filt = group(short.to_inference_data(), "filtering")
    assert "x_mean" not in filt and filt["ess"].shape == (1, T)
    # a nested batch is refused
    nested = jax.tree.map(lambda a: a[None], runs)
    with pytest.raises(ValueError, match="batch"):
        pk.arviz.from_filter(nested)


# ------------------------------------------------------------------------------ FFBS
def test_ffbs_trajectories_as_posterior(capsys):
    res = pk.filters.bootstrap(jax.random.key(5), SSM, YS, num_particles=N)
    paths = pk.smoothing.ffbs(jax.random.key(6), SSM, res, 40, progress_bar=True)
    bar_shown(capsys, "ffbs", T - 1)
    data = pk.arviz.from_trajectories(paths, YS)
    post = group(data, "posterior")
    assert post["x"].dims == ("chain", "draw", "time") and post["x"].shape == (1, 40, T)
    np.testing.assert_allclose(post["x"].values[0], paths)
    check_observed(data, YS)
    # three independent filter + FFBS runs as three chains
    runs = []
    for k in jax.random.split(jax.random.key(7), 3):
        filt = pk.filters.bootstrap(k, SSM, YS, num_particles=N)
        runs.append(pk.smoothing.ffbs(k, SSM, filt, 40, progress_bar=True))
    data = pk.arviz.from_trajectories(stack(runs), batched=True)
    assert group(data, "posterior")["x"].shape == (3, 40, T)
    summary_ok(data, ["x"], 3)


# ------------------------------------------------------------------------------ PaRIS
def test_paris_groups_and_values(capsys):
    h = lambda xp, x, t: {"sum": x, "cross": xp * x}  # noqa: E731
    h0 = lambda x: {"sum": x, "cross": 0.0 * x}  # noqa: E731
    res = pk.smoothing.paris(jax.random.key(8), SSM, YS, additive_fn=h, initial_fn=h0,
                             num_particles=N, progress_bar=True)  # fmt: skip
    bar_shown(capsys, "paris", T - 1)
    data = res.to_inference_data(YS)
    assert groups(data) >= {"estimate", "online_estimates", "filtering", "sample_stats",
                            "weighted_particles", "observed_data"}  # fmt: skip
    est = group(data, "estimate")
    assert est["sum"].dims == ("chain",)
    np.testing.assert_allclose(est["sum"].values, [res.estimate["sum"]])
    np.testing.assert_allclose(est["cross"].values, [res.estimate["cross"]])
    online = group(data, "online_estimates")
    assert online["sum"].dims == ("chain", "time")
    np.testing.assert_allclose(online["sum"].values[0], res.estimates["sum"])
    filt = group(data, "filtering")
    for name in ("ess", "resampled", "num_nonfinite", "mean_trials", "num_exact"):
        assert filt[name].dims == ("chain", "time")
    np.testing.assert_allclose(filt["ess"].values[0], res.ess)
    stats = group(data, "sample_stats")
    np.testing.assert_allclose(stats["log_marginal_likelihood"].values, [res.log_evidence])
    weighted = group(data, "weighted_particles")
    assert weighted["tau_sum"].dims == ("chain", "particle")
    np.testing.assert_allclose(weighted["tau_sum"].values[0], res.tau["sum"])
    # the estimate is the weighted mean of the statistics
    w = np.exp(weighted["log_weight"].values[0])
    np.testing.assert_allclose((w * weighted["tau_sum"].values[0]).sum(), res.estimate["sum"],
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    check_observed(data, YS)


# ------------------------------------------------------------------------------ CSMC
def test_csmc_one_sweep_and_batches(capsys):
    res = pk.pgibbs.csmc(jax.random.key(9), SSM, YS, XS, num_particles=N, return_info=True,
                         progress_bar=True)  # fmt: skip
    bar_shown(capsys, "csmc", T - 1)
    data = res.to_inference_data(YS)
    assert groups(data) >= {"posterior", "sample_stats", "filtering", "observed_data"}
    post = group(data, "posterior")
    assert post["x"].dims == ("chain", "draw", "time") and post["x"].shape == (1, 1, T)
    np.testing.assert_allclose(post["x"].values[0, 0], res.trajectory)
    stats = group(data, "sample_stats")
    assert stats["log_evidence"].dims == ("chain", "draw")
    np.testing.assert_allclose(stats["log_evidence"].values, [[res.log_evidence]])
    assert int(stats["num_nonfinite"].values.sum()) == int(res.num_nonfinite.sum())
    assert stats["num_above_bound"].dims == ("chain", "draw")
    assert stats["num_above_bound"].values.tolist() == [[0]]  # the derived bound is exact
    assert group(data, "filtering")["ess"].dims == ("chain", "draw", "time")
    # one batch axis (a vmap over sweeps) is chains; two (chains of iterated sweeps) are
    # (chain, draw)
    chains = []
    for c in range(2):
        ref, sweeps = XS, []
        for d in range(3):
            sweeps.append(
                pk.pgibbs.csmc(
                    jax.random.key(10 * c + d),
                    SSM,
                    YS,
                    ref,
                    num_particles=N,
                    return_info=True,
                    progress_bar=True,
                )
            )
            ref = sweeps[-1].trajectory  # fmt: skip
        chains.append(stack(sweeps))
    draws = stack(chains)
    data = draws.to_inference_data()
    assert group(data, "posterior")["x"].shape == (2, 3, T)
    assert group(data, "filtering")["ess"].shape == (2, 3, T)
    np.testing.assert_allclose(group(data, "posterior")["x"].values, draws.trajectory)
    batch = jax.tree.map(lambda a: a[:, 0], draws)
    assert group(batch.to_inference_data(), "posterior")["x"].shape == (2, 1, T)


# ------------------------------------------------------------------------------ PPG
def test_ppg_trace_as_posterior(capsys):
    h, h0 = (lambda xp, x, t: x), (lambda x: x)  # one pair: one compilation for all runs

    def run(k):
        return pk.pgibbs.ppg(k, SSM, YS, additive_fn=h, initial_fn=h0, num_particles=8,
                             num_iterations=12, burn_in=4, progress_bar=True)  # fmt: skip

    one = run(jax.random.key(11))
    bar_shown(capsys, "ppg", 12)
    data = one.to_inference_data(YS, burn_in=4)
    assert groups(data) >= {"posterior", "sample_stats", "warmup_posterior", "estimate",
                            "warmup_sample_stats", "reference", "observed_data"}  # fmt: skip
    post = group(data, "posterior")
    assert post["S"].dims == ("chain", "draw") and post["S"].shape == (1, 8)
    np.testing.assert_allclose(post["S"].values[0], one.estimates[4:])
    np.testing.assert_allclose(group(data, "warmup_posterior")["S"].values[0], one.estimates[:4])
    np.testing.assert_allclose(post["S"].values.mean(), one.estimate, rtol=1e-5)
    np.testing.assert_allclose(group(data, "estimate")["S"].values, [one.estimate])
    np.testing.assert_allclose(group(data, "sample_stats")["log_evidence"].values[0],
                               one.log_evidence[4:])  # fmt: skip
    assert group(data, "reference")["x"].dims == ("chain", "time")
    check_observed(data, YS)
    assert "warmup_posterior" not in groups(one.to_inference_data())
    with pytest.raises(ValueError, match="burn_in"):
        one.to_inference_data(burn_in=12)
    # independent runs (a batch as jax.vmap gives it) are chains; ArviZ's diagnostics run
    runs = stack([run(k) for k in jax.random.split(jax.random.key(12), 3)])
    data = runs.to_inference_data(burn_in=4)
    assert group(data, "posterior")["S"].shape == (3, 8)
    summary_ok(data, ["S"], 3)


# ------------------------------------------------------------------------------ particle Gibbs
def test_particle_gibbs_sample_stats(capsys):
    def model_fn(a):
        return pk.StateSpaceModel(
            initial=lambda: dist.Normal(0.0, 1.0),
            transition=lambda x_prev, t: dist.Normal(a["a"] * x_prev, 1.0),
            observation=lambda x, t: dist.Normal(x, 0.5),
        )

    res = pk.pgibbs.particle_gibbs(
        jax.random.key(13), model_fn, YS, theta_init={"a": jnp.array(0.9)}, num_samples=20,
        num_particles=8, num_chains=2, theta_update=lambda k, th, xs, ys: th, progress_bar=True,
    )  # fmt: skip
    bar_shown(capsys, "particle_gibbs", 20)
    data = res.to_inference_data(YS)
    assert groups(data) >= {"posterior", "sample_stats", "observed_data"}
    post = group(data, "posterior")
    assert post["a"].shape == (2, 20) and post["x"].shape == (2, 20, T)
    stats = group(data, "sample_stats")
    for name in ("acceptance_rate", "failed", "num_nonfinite"):
        assert stats[name].dims == ("chain", "draw")
        np.testing.assert_array_equal(stats[name].values, getattr(res, name))
    check_observed(data, YS)
    summary_ok(data, ["x"], 2)


# ------------------------------------------------------------------------------ learning
def test_mle_traces(capsys):
    def model_fn(theta):
        return pk.StateSpaceModel(
            initial=lambda: dist.Normal(0.0, 1.0),
            transition=lambda x_prev, t: dist.Normal(theta["a"] * x_prev, 1.0),
            observation=lambda x, t: dist.Normal(x, jnp.exp(theta["log_r"])),
        )

    theta0 = {"a": jnp.array(0.2), "log_r": jnp.array(0.0)}
    res = pk.learning.mle(jax.random.key(14), model_fn, theta0, YS, num_particles=16,
                          num_iterations=10, progress_bar=True)  # fmt: skip
    bar_shown(capsys, "mle", 10)
    data = res.to_inference_data(YS)
    assert groups(data) >= {"theta_trace", "score_trace", "theta", "theta_average",
                            "iteration_stats", "observed_data"}  # fmt: skip
    trace = group(data, "theta_trace")
    assert trace["a"].dims == ("chain", "iteration") and trace["a"].shape == (1, 10)
    np.testing.assert_allclose(trace["a"].values[0], res.trace["a"])
    np.testing.assert_allclose(group(data, "score_trace")["log_r"].values[0], res.scores["log_r"])
    np.testing.assert_allclose(group(data, "theta")["a"].values, [res.theta["a"]])
    np.testing.assert_allclose(group(data, "theta_average")["a"].values, [res.theta_average["a"]])
    stats = group(data, "iteration_stats")
    assert stats["log_evidence"].dims == ("chain", "iteration")
    np.testing.assert_allclose(stats["log_evidence"].values[0], res.log_evidence)
    assert stats["failed"].dims == ("chain",) and stats["failed"].values.tolist() == [False]
    assert stats["num_failed"].values.tolist() == [0]
    check_observed(data, YS)


def test_score_climbing_traces(capsys):
    prop = lambda phi: lambda xp, y, t: dist.Normal(phi[0] * xp + phi[1] * y, jnp.exp(phi[2]))  # noqa: E731
    prop0 = lambda phi: lambda y: dist.Normal(phi[1] * y, jnp.exp(phi[2]))  # noqa: E731
    res = pk.learning.score_climbing(
        jax.random.key(15), SSM, YS, proposal_fn=prop, initial_proposal_fn=prop0,
        phi_init=jnp.zeros(3), num_particles=8, num_iterations=10, progress_bar=True,
    )  # fmt: skip
    bar_shown(capsys, "score_climbing", 10)
    data = res.to_inference_data(YS)
    assert groups(data) >= {"phi_trace", "phi", "phi_average", "posterior", "iteration_stats",
                            "observed_data"}  # fmt: skip
    trace = group(data, "phi_trace")
    assert trace["phi"].dims == ("chain", "iteration", "phi_dim_0")
    np.testing.assert_allclose(trace["phi"].values[0], res.trace)
    np.testing.assert_allclose(group(data, "phi")["phi"].values[0], res.phi)
    post = group(data, "posterior")
    assert post["x"].dims == ("chain", "draw", "time") and post["x"].shape == (1, 10, T)
    np.testing.assert_allclose(post["x"].values[0], res.paths)
    stats = group(data, "iteration_stats")
    assert stats["num_nonfinite"].dims == ("chain", "iteration", "time")
    assert stats["failed"].dims == ("chain",) and not stats["failed"].values.any()
    check_observed(data, YS)


# ------------------------------------------------------------------------------ progress bars
def test_progress_bar_calls_the_host_about_100_times(capsys, monkeypatch):
    """A 301-step PaRIS run updates its bar about 100 times (not once per step) and ends at
    300/300; ``progress_bar=False`` makes no progress call: two host calls per run remain,
    the end-of-run checks ``backward.warn_if_degenerate`` and
    ``smoothing.warn_if_nonfinite_statistics`` (not one per step)."""
    calls = []
    original = jax.debug.callback

    def counting(fn, *args, **kwargs):
        return original(lambda *a: (calls.append(1), fn(*a)), *args, **kwargs)

    monkeypatch.setattr(jax.debug, "callback", counting)
    _, ys = SSM.simulate(jax.random.key(16), 301)

    def run(progress_bar):
        return pk.smoothing.paris(jax.random.key(17), SSM, ys, additive_fn=lambda xp, x, t: x,
                                  num_particles=8, progress_bar=progress_bar)  # fmt: skip

    run(True)
    jax.effects_barrier()
    assert 96 <= len(calls) <= 102
    assert "300/300" in capsys.readouterr().err
    calls.clear()
    run(False)
    jax.effects_barrier()
    assert len(calls) == 2 and "paris" not in capsys.readouterr().err
