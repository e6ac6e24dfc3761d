"""ArviZ converters, found by reading their output as a user would (``pk.arviz``):

- ``from_smc``: a failed chain (every weight zero at some stage) or one that hit
  ``max_stages`` had draws and an ``az.summary`` like any other, with nothing in the
  ``InferenceData`` saying so; ``sample_stats`` now has ``failed``, ``reached_max_stages``
  and ``num_nonfinite`` ``(chain,)``.
- ``from_ppg``: ``burn_in=2.5`` was cut to 2 and ``burn_in="3"`` read as 3 (``int()``);
  now a ``ValueError``, as in the sequence converters.
- ``num_draws`` without ``key`` (``from_fk_steering``, ``from_pdds``, ``from_fk_corrector``,
  ``from_sequence_steering``) was ignored: no ``posterior``, no error.
- ``from_mcmc_draws`` (PMMH, SMC², ``statespace.particle_gibbs``): a dict state's latent
  path (``{"pos", "vel"}``) failed in xarray; the path's time axis was ``x_dim_0`` (the
  state's component axis elsewhere) and the observations' ``y_dim_0``; a per-chain stat
  ``(chain,)`` was refused. Now ``x_pos`` / ``x_vel``, dims ``(chain, draw, time)``,
  ``observed_data`` ``(time, ...)``, per-chain stats ``(chain,)``.
- ``from_particle_gibbs``: nested parameters were named by ``keystr`` (``ar']['rho``,
  ``obs'][0``); now ``ar_rho``, ``obs_0`` as in ``from_mle``, and ``x`` has ``time``.
- ``ys`` of another length than the result's time axis (e.g. the states ``xs`` of another
  run) was stored silently as ``observed_data``; now a ``ValueError``.
- two pytree leaves named alike after joining keys (``{"a": {"b"}}`` and ``"a_b"``): one
  silently overwrote the other; now a ``ValueError``.
- ``from_sequence_steering(beam_search_result, key=...)`` drew a ``posterior`` by the
  rewards of a greedy selection (a distribution nothing targets); now a ``ValueError``
  (without ``key`` the weighted sequences convert as before).
"""

import functools
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from arviz_checks import check_container, group, groups

import particlekit as pk

T = 8
SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)
XS, YS = SSM.simulate(jax.random.key(0), T)


def roundtrip(data, tmp_path, api):
    """Write to NetCDF and read back with the installed ArviZ (a DataTree is written by
    xarray when the ``arviz>=1`` path is forced on arviz < 1)."""
    path = str(tmp_path / "data.nc")
    data.to_netcdf(path)
    if hasattr(data, "children"):
        import xarray as xr

        return xr.open_datatree(path)
    return az.from_netcdf(path)


# ------------------------------------------------------------------------------ from_smc
def _smc_model(y, width):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Uniform(mu - width, mu + width), obs=y)


@functools.cache
def _smc_runs():
    smc = pk.infer.SMC(_smc_model, num_particles=50, num_chains=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tempered SMC failed"
        # all but impossible data: the likelihood is -inf at every draw
        smc.run(jax.random.key(0), jnp.array(50.0), jnp.array(0.001))
    failed = smc.to_inference_data()
    smc.run(jax.random.key(1), jnp.array(0.0), jnp.array(5.0))
    return failed, smc.to_inference_data(), smc


def test_smc_failed_chains_are_flagged(api, tmp_path):
    failed, healthy, smc = _smc_runs()
    # the converter is called again under the patched ArviZ version
    data = smc.to_inference_data()
    check_container(data, api)
    stats = group(failed, "sample_stats")
    for name in ("failed", "reached_max_stages", "num_nonfinite"):
        assert stats[name].dims == ("chain",)
    assert stats["failed"].values.tolist() == [True, True]
    assert np.isneginf(stats["log_marginal_likelihood"].values).all()
    stats = group(data, "sample_stats")
    assert stats["failed"].values.tolist() == [False, False]
    assert stats["reached_max_stages"].values.tolist() == [False, False]
    np.testing.assert_array_equal(stats["num_nonfinite"].values, smc.diagnostics.num_nonfinite)
    back = group(roundtrip(data, tmp_path, api), "sample_stats")
    assert back["failed"].values.tolist() == [False, False]


# ------------------------------------------------------------------------------ from_ppg
@functools.cache
def _ppg():
    return pk.pgibbs.ppg(jax.random.key(1), SSM, YS, additive_fn=lambda xp, x, t: x,
                         initial_fn=lambda x: x, num_particles=8, num_iterations=6, burn_in=2,
                         progress_bar=False)  # fmt: skip


@pytest.mark.parametrize("burn_in", [2.5, "3", 2.0, -1, 6, True, None])
def test_ppg_burn_in_must_be_an_integer_in_range(burn_in):
    with pytest.raises(ValueError, match="burn_in"):
        pk.arviz.from_ppg(_ppg(), burn_in=burn_in)


def test_ppg_numpy_integer_burn_in(api):
    data = pk.arviz.from_ppg(_ppg(), burn_in=np.int64(2))
    assert group(data, "posterior")["S"].shape == (1, 4)
    assert group(data, "warmup_posterior")["S"].shape == (1, 2)


# ------------------------------------------------------------------------------ num_draws
def test_num_draws_without_key_is_an_error():
    model = pk.diffusion.gaussian_mixture([1.0], [[0.0]], stds=1.0)
    res = pk.diffusion.fk_steering(jax.random.key(0), model, lambda x: x[0], num_particles=4,
                                   num_steps=2, progress_bar=False)  # fmt: skip
    with pytest.raises(ValueError, match="num_draws=10 needs a key"):
        pk.arviz.from_fk_steering(res, num_draws=10)
    with pytest.raises(ValueError, match="needs a key"):
        res.to_inference_data(num_draws=10)
    # with a key the draws are made; without both, the weighted population only
    assert "posterior" in groups(res.to_inference_data(key=jax.random.key(1), num_draws=3))
    assert "posterior" not in groups(res.to_inference_data())
    gen = pk.steering.toy_generator()
    seq = pk.steering.smc(jax.random.key(0), gen, lambda tokens, length: 0.0, num_particles=4,
                          max_length=3, eos_id=3)  # fmt: skip
    with pytest.raises(ValueError, match="needs a key"):
        pk.arviz.from_sequence_steering(seq, num_draws=5)


# ------------------------------------------------------------------------------ from_mcmc_draws
def _fake_pmmh(paths, num_chains=4, num_draws=5):
    """A ``PMMHResult`` of fixed arrays: its ``to_inference_data`` is ``from_mcmc_draws``."""
    from particlekit.statespace.pmmh import PMMHResult

    shape = (num_chains, num_draws)
    rng = np.random.default_rng(0)
    return PMMHResult(
        theta={"rho": rng.normal(size=shape), "b": rng.normal(size=shape + (2,))},
        unconstrained=rng.normal(size=shape + (3,)),
        log_likelihood=rng.normal(size=shape),
        log_prior=rng.normal(size=shape),
        is_accepted=rng.random(shape) < 0.3,
        acceptance_rate=np.full(num_chains, 0.3),
        paths=paths,
        proposal_covariance=np.tile(np.eye(3), (num_chains, 1, 1)),
        failed=np.zeros(num_chains, bool),
        num_nonfinite=np.zeros(num_chains, int),
        num_particles=16,
    )


def test_pmmh_paths_have_a_time_dim_and_dict_states_work(api, tmp_path):
    rng = np.random.default_rng(1)
    res = _fake_pmmh({"pos": rng.normal(size=(4, 5, T)), "vel": rng.normal(size=(4, 5, T))})
    data = res.to_inference_data(YS)
    check_container(data, api)
    post = group(data, "posterior")
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 5
    assert set(post.data_vars) == {"rho", "b", "x_pos", "x_vel"}
    assert post["x_pos"].dims == ("chain", "draw", "time")
    np.testing.assert_array_equal(post["x_vel"].values, res.paths["vel"])
    assert post["b"].dims == ("chain", "draw", "b_dim_0")
    obs = group(data, "observed_data")
    assert obs["y"].dims == ("time",)
    np.testing.assert_allclose(obs["y"].values, YS)
    assert group(data, "sample_stats")["lp"].dims == ("chain", "draw")
    roundtrip(data, tmp_path, api)
    # an array path: dims (chain, draw, time, x_dim_0) for a vector state
    vector = _fake_pmmh(rng.normal(size=(4, 5, T, 3)))
    assert group(vector.to_inference_data(), "posterior")["x"].dims == (
        "chain", "draw", "time", "x_dim_0"
    )  # fmt: skip
    # ys of another series is refused
    with pytest.raises(ValueError, match="time steps"):
        vector.to_inference_data(YS[:5])
    if api == "installed":
        table = az.summary(data, var_names=["rho", "b"])
        assert len(table) == 3 and np.all(np.isfinite(np.asarray(table["mean"], float)))


def test_from_mcmc_draws_per_chain_stats_and_observations(api):
    data = pk.arviz.from_mcmc_draws(
        {"rho": np.zeros((2, 5)), "x": np.zeros((2, 5, 3))},
        {"lp": np.zeros((2, 5)), "failed": np.array([False, True]), "skip": None},
        observed={"y": np.ones((3, 2)), "n": np.array(4)},
    )
    stats = group(data, "sample_stats")
    assert stats["failed"].dims == ("chain",) and stats["lp"].dims == ("chain", "draw")
    assert "skip" not in stats
    obs = group(data, "observed_data")
    assert obs["y"].dims == ("time", "y_dim_0") and obs["n"].dims == ()
    # without latent paths nothing fixes the number of time steps
    data = pk.arviz.from_mcmc_draws({"rho": np.zeros((2, 5))}, observed={"y": np.ones(7)})
    assert group(data, "observed_data")["y"].shape == (7,)
    # a site whose name is a path leaf's: refused, not overwritten
    with pytest.raises(ValueError, match="x_pos"):
        pk.arviz.from_mcmc_draws({"x_pos": np.zeros((2, 5)), "x": {"pos": np.zeros((2, 5, 3))}})


# ------------------------------------------------------------------------------ particle Gibbs
def test_particle_gibbs_nested_parameter_names(api, tmp_path):
    rng = np.random.default_rng(2)
    res = pk.pgibbs.ParticleGibbsResult(
        theta={"ar": {"rho": rng.normal(size=(2, 6))},
               "obs": (rng.normal(size=(2, 6)), rng.normal(size=(2, 6, 2)))},
        states=rng.normal(size=(2, 6, T)),
        acceptance_rate=np.full((2, 6), np.nan),
        failed=np.zeros((2, 6), bool),
        num_nonfinite=np.zeros((2, 6), np.int32),
    )  # fmt: skip
    data = res.to_inference_data(YS)
    check_container(data, api)
    post = group(data, "posterior")
    assert set(post.data_vars) == {"ar_rho", "obs_0", "obs_1", "x"}
    assert post["obs_1"].dims == ("chain", "draw", "obs_1_dim_0")
    assert post["x"].dims == ("chain", "draw", "time")
    np.testing.assert_array_equal(post["ar_rho"].values, res.theta["ar"]["rho"])
    assert group(data, "observed_data")["y"].dims == ("time",)
    assert group(data, "sample_stats")["failed"].dims == ("chain", "draw")
    roundtrip(data, tmp_path, api)
    # to_dict, documented as the posterior's draws, has the same names (was "ar']['rho")
    assert set(res.to_dict()) == {"ar_rho", "obs_0", "obs_1", "x"}
    # a bare-array theta is "theta", as before
    bare = res._replace(theta=rng.normal(size=(2, 6)))
    assert set(group(bare.to_inference_data(), "posterior").data_vars) == {"theta", "x"}
    assert set(bare.to_dict()) == {"theta", "x"}
    with pytest.raises(ValueError, match="time steps"):
        res.to_inference_data(YS[:-1])


# ------------------------------------------------------------------------------ observed data
def test_observations_of_another_length_are_refused(api):
    res = pk.filters.bootstrap(jax.random.key(3), SSM, YS, num_particles=16)
    _, longer = SSM.simulate(jax.random.key(4), T + 2)
    with pytest.raises(ValueError, match=f"ys has {T + 2} time steps but the result has {T}"):
        res.to_inference_data(longer)
    data = res.to_inference_data(list(np.asarray(YS)))  # a list of T observations is fine
    assert group(data, "observed_data")["y"].dims == ("time",)
    paths = np.zeros((5, T))
    with pytest.raises(ValueError, match="time steps"):
        pk.arviz.from_trajectories(paths, YS[:4])


# ------------------------------------------------------------------------------ pytree names
def test_leaves_named_alike_are_refused():
    paths = {"a": {"b": np.zeros((5, T))}, "a_b": np.ones((5, T))}
    with pytest.raises(ValueError, match="'a_b'"):
        pk.arviz.from_trajectories(paths)
    ok = pk.arviz.from_trajectories({"a": {"b": np.zeros((5, T))}, "c": np.ones((5, T))})
    assert set(group(ok, "posterior").data_vars) == {"a_b", "c"}


def test_pmmh_log_likelihood_estimate_is_not_read_as_pointwise(api):
    # was: sample_stats["log_likelihood"] held the filter's estimate of the whole series'
    # log-likelihood; ArviZ falls back to that name for pointwise values, and az.loo
    # reported an "elpd_loo" from 1 observation. Per-chain failed / acceptance_rate were
    # left out.
    res = _fake_pmmh(np.random.default_rng(2).normal(size=(4, 5, T)))
    stats = group(res.to_inference_data(YS), "sample_stats")
    assert "log_likelihood" not in stats.data_vars
    np.testing.assert_allclose(stats["log_likelihood_estimate"].values, res.log_likelihood)
    assert stats["failed"].dims == ("chain",) and stats["acceptance_rate"].dims == ("chain",)
    if api == "installed":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Exception, match="(?i)log.likelihood"):
                az.loo(res.to_inference_data(YS))


def test_beam_search_result_has_no_posterior_to_draw(api):
    gen = pk.steering.toy_generator()

    def reward(tokens, length):
        return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))

    beam = pk.steering.beam_search(
        jax.random.key(0), gen, reward, num_particles=8, beam_width=4, max_length=4,
        eos_id=3, separator_id=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="targets no distribution"):
        pk.arviz.from_sequence_steering(beam, key=jax.random.key(1))
    data = pk.arviz.from_sequence_steering(beam)
    assert np.isnan(group(data, "sample_stats")["log_marginal_likelihood"].values).all()
    assert "posterior" not in groups(data)
