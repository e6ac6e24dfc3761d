"""ArviZ converters of the sequence steering results (``pk.arviz.from_sequence_steering``,
``from_sequence_gibbs``, ``from_sequence_tempering``): groups, dims and values equal to the
result's fields, normalised weights, equally weighted draws taken from the population with
the weights' frequencies, batches of runs (``jax.vmap`` over prompts) as chains, failed
runs, decoded texts, the cold chain of parallel tempering as the posterior, and the
shipped arithmetic language model.

The toy Markov generator of ``pk.steering`` (letters 0, 1, 2, end token 3) keeps the runs
small. Each structural check runs on the installed ArviZ (``InferenceData`` for arviz < 1)
and, with ``arviz_major_version`` patched to 1, on the ``xarray.DataTree`` that arviz >= 1
uses."""

import functools

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from arviz_checks import check_container, group, groups, stack

import particlekit as pk

N, MAX_LENGTH, EOS, K = 32, 4, 3, 12
GEN = pk.steering.toy_generator()
LETTERS = "abc$"


def reward(tokens, length):
    """Favour sequences with many ``a`` (token 0)."""
    return 1.5 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))


def letters(tokens) -> str:
    return "".join(LETTERS[int(i)] for i in tokens)


def float_values(data):
    """Every floating-point array of every group."""
    for name in groups(data):
        for var in group(data, name).data_vars.values():
            if np.issubdtype(var.dtype, np.floating):
                yield f"{name}/{var.name}", var.values


@functools.cache
def smc_runs():
    # one compilation, three runs; seed 0 never resamples, 1 and 2 resample once
    return [
        pk.steering.smc(
            jax.random.key(s),
            GEN,
            reward,
            num_particles=N,
            max_length=MAX_LENGTH,
            eos_id=EOS,
            progress_bar=False,
        )  # fmt: skip
        for s in range(3)
    ]


@functools.cache
def dead_run():
    """A failed run: the reward rules out every sequence."""
    return pk.steering.smc(jax.random.key(3), GEN, lambda tokens, length: -jnp.inf,
                           num_particles=N, max_length=MAX_LENGTH, eos_id=EOS,
                           progress_bar=False)  # fmt: skip


@functools.cache
def prompt_batch():
    prompts = jnp.array([[0], [1], [2]], jnp.int32)

    def one(prompt):
        return pk.steering.smc(jax.random.key(4), GEN, reward, num_particles=N,
                               max_length=MAX_LENGTH, eos_id=EOS, prompt=prompt,
                               progress_bar=False)  # fmt: skip

    return jax.vmap(one)(prompts)


@functools.cache
def gibbs_runs():
    return [
        pk.steering.particle_gibbs(
            jax.random.key(s),
            GEN,
            reward,
            num_particles=8,
            num_iterations=K,
            max_length=MAX_LENGTH,
            eos_id=EOS,
        )  # fmt: skip
        for s in range(2)
    ]


TEMPERATURES = (1.0, 2.0, 4.0)


@functools.cache
def tempering_runs(temperatures=TEMPERATURES):
    # one compilation: the temperatures are traced, so another ladder of three reuses it
    return [
        pk.steering.parallel_tempering(
            jax.random.key(s),
            GEN,
            reward,
            num_particles=4,
            num_iterations=K,
            temperatures=temperatures,
            max_length=MAX_LENGTH,
            eos_id=EOS,
            progress_bar=False,
        )  # fmt: skip
        for s in range(2)
    ]


def normalised(log_w):
    log_w = np.asarray(log_w, np.float64)
    return log_w - np.logaddexp.reduce(log_w)


# ------------------------------------------------------------------------------ smc
def test_sequence_steering_groups_dims_and_values(api):
    res = smc_runs()[0]
    data = pk.arviz.from_sequence_steering(res)
    check_container(data, api)
    # a weighted population: no posterior without a key
    assert groups(data) == {"weighted_particles", "sample_stats", "steps"}
    weighted = group(data, "weighted_particles")
    assert set(weighted.data_vars) == {
        "tokens", "length", "ended", "log_weight", "weight", "log_potential"
    }  # fmt: skip
    assert weighted["tokens"].dims == ("chain", "particle", "position")
    assert weighted["tokens"].shape == (1, N, MAX_LENGTH)
    assert np.issubdtype(weighted["tokens"].dtype, np.integer)
    np.testing.assert_array_equal(weighted["tokens"].values[0], res.sequences)
    np.testing.assert_array_equal(weighted["position"].values, np.arange(MAX_LENGTH))
    for name, field in [
        ("length", res.lengths),
        ("ended", res.ended),
        ("log_potential", res.log_potentials),
    ]:
        assert weighted[name].dims == ("chain", "particle") and weighted[name].shape == (1, N)
        np.testing.assert_array_equal(weighted[name].values[0], field)
    assert weighted["ended"].dtype == np.int8  # 0 / 1, so that az.summary works on it
    # normalised weights: log_weight is log W, weight is W = SteeringResult.weights
    assert weighted["weight"].dims == ("chain", "particle")
    np.testing.assert_allclose(weighted["log_weight"].values[0], normalised(res.log_weights),
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(weighted["weight"].values[0], res.weights, rtol=1e-5)
    np.testing.assert_allclose(weighted["weight"].values.sum(-1), 1.0, rtol=1e-5)
    assert np.ptp(weighted["weight"].values) > 0.01  # the weights are not uniform
    stats = group(data, "sample_stats")
    assert set(stats.data_vars) == {"log_marginal_likelihood", "failed"}
    assert stats["log_marginal_likelihood"].dims == ("chain",)
    np.testing.assert_array_equal(stats["log_marginal_likelihood"].values, [res.log_evidence])
    assert stats["failed"].values.tolist() == [False]
    steps = group(data, "steps")
    assert set(steps.data_vars) == {"ess", "resampled", "num_nonfinite"}
    for name in ("ess", "resampled", "num_nonfinite"):
        assert steps[name].dims == ("chain", "step") and steps[name].shape == (1, MAX_LENGTH)
        np.testing.assert_array_equal(steps[name].values[0], getattr(res, name))
    assert data.attrs["particlekit_result"] == "SteeringResult"
    assert data.attrs["num_particles"] == N
    assert data.attrs["failed"] == 0
    np.testing.assert_allclose(data.attrs["log_evidence"], float(res.log_evidence), rtol=1e-6)
    assert group(data, "steps").attrs["num_particles"] == N


def test_sequence_steering_posterior_draws(api):
    res = smc_runs()[1]
    data = pk.arviz.from_sequence_steering(res, key=jax.random.key(7), num_draws=40)
    assert groups(data) == {"posterior", "weighted_particles", "sample_stats", "steps"}
    post = group(data, "posterior")
    assert set(post.data_vars) == {"tokens", "length", "ended"}
    assert post["tokens"].dims == ("chain", "draw", "position")
    assert post["tokens"].shape == (1, 40, MAX_LENGTH)
    assert post["length"].dims == ("chain", "draw") and post["ended"].dims == ("chain", "draw")
    # every draw is a particle of the population, with that particle's length, end flag and
    # log-potential (in sample_stats)
    seqs = np.asarray(res.sequences)
    match = np.all(post["tokens"].values[0][:, None, :] == seqs[None], axis=-1)  # (draw, N)
    assert match.any(axis=1).all()
    idx = match.argmax(axis=1)
    np.testing.assert_array_equal(post["length"].values[0], np.asarray(res.lengths)[idx])
    np.testing.assert_array_equal(post["ended"].values[0], np.asarray(res.ended)[idx])
    stats = group(data, "sample_stats")
    assert stats["log_potential"].dims == ("chain", "draw")
    np.testing.assert_array_equal(stats["log_potential"].values[0],
                                  np.asarray(res.log_potentials)[idx])  # fmt: skip
    assert stats["log_marginal_likelihood"].dims == ("chain",)
    # the same key gives the same draws; the default number of draws is N
    again = pk.arviz.from_sequence_steering(res, key=jax.random.key(7), num_draws=40)
    np.testing.assert_array_equal(group(again, "posterior")["tokens"].values,
                                  post["tokens"].values)  # fmt: skip
    default = pk.arviz.from_sequence_steering(res, key=jax.random.key(8))
    assert group(default, "posterior")["tokens"].shape == (1, N, MAX_LENGTH)
    if api == "installed":  # ArviZ's own summaries work on the equally weighted draws
        table = az.summary(default, kind="stats")
        assert np.all(np.isfinite(np.asarray(table["mean"], float)))


def test_sequence_steering_draw_frequencies_match_weights():
    """Empirical frequencies of 20 000 draws against the weights, per particle and per
    distinct sequence (equal sequences pool their weights)."""
    res = smc_runs()[0]
    num_draws = 20_000
    data = pk.arviz.from_sequence_steering(res, key=jax.random.key(11), num_draws=num_draws)
    draws = group(data, "posterior")["tokens"].values[0]
    seqs = np.asarray(res.sequences)
    w = np.exp(normalised(res.log_weights))
    assert w.max() > 2 * w.min()  # a population with unequal weights
    # per distinct sequence (a particle cannot be told apart from an equal one)
    distinct, inverse = np.unique(seqs, axis=0, return_inverse=True)
    target = np.bincount(inverse.reshape(-1), weights=w, minlength=len(distinct))
    drawn = np.all(draws[:, None, :] == distinct[None], axis=-1)  # (draw, distinct)
    assert np.all(drawn.sum(axis=1) == 1)  # every draw is one of the sequences
    freq = drawn.mean(axis=0)
    tolerance = 4 * np.sqrt(target * (1 - target) / num_draws) + 1 / num_draws
    assert np.all(np.abs(freq - target) <= tolerance), (freq, target)
    np.testing.assert_allclose(freq.sum(), 1.0)
    # systematic resampling: each particle of weight W drawn floor or ceil of M W times, so
    # each distinct sequence within (number of its particles) of M times its weight
    counts = drawn.sum(axis=0)
    multiplicity = np.bincount(inverse.reshape(-1), minlength=len(distinct))
    assert np.all(np.abs(counts - num_draws * target) < multiplicity + 0.05)  # float32 rounding


def test_sequence_steering_batch_of_prompts_is_chains(api):
    batch = prompt_batch()  # jax.vmap of smc over three one-token prompts
    assert batch.sequences.shape == (3, N, 1 + MAX_LENGTH)
    data = pk.arviz.from_sequence_steering(batch, key=jax.random.key(0), num_draws=10,
                                           decode=letters)  # fmt: skip
    weighted = group(data, "weighted_particles")
    assert weighted["tokens"].shape == (3, N, 1 + MAX_LENGTH)
    assert weighted["weight"].shape == (3, N) and weighted["text"].shape == (3, N)
    np.testing.assert_allclose(weighted["weight"].values.sum(-1), 1.0, rtol=1e-5)
    assert group(data, "steps")["ess"].shape == (3, MAX_LENGTH)
    assert group(data, "posterior")["tokens"].shape == (3, 10, 1 + MAX_LENGTH)
    stats = group(data, "sample_stats")
    assert stats["log_potential"].shape == (3, 10) and stats["text"].shape == (3, 10)
    assert stats["failed"].dims == ("chain",) and stats["failed"].shape == (3,)
    assert data.attrs["failed"] == [0, 0, 0]
    assert len(data.attrs["log_evidence"]) == 3
    for c in range(3):
        seqs = np.asarray(batch.sequences[c])
        assert np.all(seqs[:, 0] == c)  # chain c holds the sequences of prompt c
        np.testing.assert_array_equal(weighted["tokens"].values[c], seqs)
        np.testing.assert_array_equal(group(data, "steps")["ess"].values[c], batch.ess[c])
        np.testing.assert_allclose(weighted["log_weight"].values[c],
                                   normalised(batch.log_weights[c]), atol=1e-5)  # fmt: skip
        np.testing.assert_array_equal(stats["log_marginal_likelihood"].values[c],
                                      batch.log_evidence[c])  # fmt: skip
        # each chain's draws are its own sequences, and each text is that of its draw
        post = group(data, "posterior")
        for tokens, length, text in zip(post["tokens"].values[c], post["length"].values[c],
                                        stats["text"].values[c], strict=True):  # fmt: skip
            assert np.any(np.all(tokens == seqs, axis=-1))
            assert text == letters(tokens[:length])
    nested = jax.tree.map(lambda a: a[None], batch)
    with pytest.raises(ValueError, match="batch"):
        pk.arviz.from_sequence_steering(nested)


def test_sequence_steering_failed_run_has_no_nan(api):
    res = dead_run()
    assert bool(res.failed) and np.isneginf(res.log_evidence)
    data = pk.arviz.from_sequence_steering(res, key=jax.random.key(0), decode=letters)
    for name, values in float_values(data):
        assert not np.isnan(values).any(), name
    # flagged, in sample_stats and in the attributes
    stats = group(data, "sample_stats")
    assert stats["failed"].values.tolist() == [True]
    assert np.isneginf(stats["log_marginal_likelihood"].values).all()
    assert data.attrs["failed"] == 1 and np.isneginf(data.attrs["log_evidence"])
    # uniform weights, as SteeringResult.weights; the draws are sequences of the population
    weighted = group(data, "weighted_particles")
    np.testing.assert_allclose(weighted["weight"].values, 1.0 / N, rtol=1e-6)
    np.testing.assert_allclose(weighted["log_weight"].values, -np.log(N), rtol=1e-6)
    np.testing.assert_allclose(weighted["weight"].values[0], res.weights, rtol=1e-6)
    assert np.isneginf(weighted["log_potential"].values).all()
    post = group(data, "posterior")["tokens"].values[0]
    assert np.all(np.any(np.all(post[:, None] == np.asarray(res.sequences)[None], -1), 1))
    assert np.isneginf(stats["log_potential"].values).all()
    # a failed chain in a batch only flags that chain
    batch = stack([smc_runs()[0], res])
    both = pk.arviz.from_sequence_steering(batch, key=jax.random.key(1))
    assert group(both, "sample_stats")["failed"].values.tolist() == [False, True]
    assert both.attrs["failed"] == [0, 1]
    for name, values in float_values(both):
        assert not np.isnan(values).any(), name


def test_sequence_steering_texts_survive_netcdf(api, tmp_path):
    res = smc_runs()[2]
    data = pk.arviz.from_sequence_steering(res, key=jax.random.key(2), decode=letters)
    weighted = group(data, "weighted_particles")
    assert weighted["text"].dims == ("chain", "particle")
    expected = [letters(t[:n]) for t, n in zip(np.asarray(res.sequences),
                                                np.asarray(res.lengths), strict=True)]  # fmt: skip
    assert weighted["text"].values[0].tolist() == expected
    assert "text" not in group(data, "posterior")  # strings would break ArviZ's summaries
    path = tmp_path / "steering.nc"
    if api == "arviz>=1":
        data.to_netcdf(path, engine="h5netcdf")
        back = xr.open_datatree(path, engine="h5netcdf")
    else:
        data.to_netcdf(str(path))
        back = az.from_netcdf(str(path))
    assert groups(back) == groups(data)
    for name in groups(data):
        xr.testing.assert_equal(group(back, name).load(), group(data, name))
    assert group(back, "weighted_particles")["text"].values[0].tolist() == expected
    assert back.attrs["num_particles"] == N and back.attrs["failed"] == 0


def test_sequence_steering_bad_arguments():
    res = smc_runs()[0]
    with pytest.raises(ValueError, match="decode"):
        pk.arviz.from_sequence_steering(res, decode="abc$")
    with pytest.raises(ValueError, match="str"):
        pk.arviz.from_sequence_steering(res, decode=lambda tokens: tokens.tolist())
    with pytest.raises(ValueError, match="num_draws"):
        pk.arviz.from_sequence_steering(res, key=jax.random.key(0), num_draws=0)
    with pytest.raises(ValueError, match="num_draws"):
        pk.arviz.from_sequence_steering(res, key=jax.random.key(0), num_draws=2.5)
    with pytest.raises(ValueError, match="key"):
        pk.arviz.from_sequence_steering(res, key=0)


# ------------------------------------------------------------------------------ particle Gibbs
def test_sequence_gibbs_groups_dims_and_values(api):
    res = gibbs_runs()[0]
    data = pk.arviz.from_sequence_gibbs(res, eos_id=EOS, decode=letters)
    check_container(data, api)
    assert groups(data) == {"posterior", "sample_stats", "initial"}
    post = group(data, "posterior")
    assert set(post.data_vars) == {"tokens", "length", "ended"}
    assert post["tokens"].dims == ("chain", "draw", "position")
    assert post["tokens"].shape == (1, K, MAX_LENGTH)
    np.testing.assert_array_equal(post["tokens"].values[0], res.sequences)
    np.testing.assert_array_equal(post["length"].values[0], res.lengths)
    seqs, lengths = np.asarray(res.sequences), np.asarray(res.lengths)
    ended = seqs[np.arange(K), lengths - 1] == EOS
    np.testing.assert_array_equal(post["ended"].values[0], ended)
    stats = group(data, "sample_stats")
    assert set(stats.data_vars) == {"log_potential", "changed", "ess", "text", "failed"}
    for name, field in [("log_potential", res.log_potentials), ("changed", res.changed)]:
        assert stats[name].dims == ("chain", "draw")
        np.testing.assert_array_equal(stats[name].values[0], field)
    assert stats["ess"].dims == ("chain", "draw", "step")
    assert stats["ess"].shape == (1, K, MAX_LENGTH)
    np.testing.assert_array_equal(stats["ess"].values[0], res.ess)
    assert stats["text"].values[0].tolist() == [
        letters(t[:n]) for t, n in zip(seqs, lengths, strict=True)
    ]
    assert stats["failed"].dims == ("chain",) and stats["failed"].values.tolist() == [False]
    initial = group(data, "initial")
    assert initial["tokens"].dims == ("chain", "position")
    np.testing.assert_array_equal(initial["tokens"].values[0], res.initial_sequence)
    assert data.attrs["particlekit_result"] == "GibbsResult"
    assert data.attrs["num_iterations"] == K and data.attrs["burn_in"] == 0
    assert data.attrs["failed"] == 0
    # the end flag of smc is the same rule: the last filled token is the end token
    run = smc_runs()[0]
    last = np.asarray(run.sequences)[np.arange(N), np.asarray(run.lengths) - 1]
    np.testing.assert_array_equal(last == EOS, run.ended)
    # without eos_id there is no end flag
    assert "ended" not in group(pk.arviz.from_sequence_gibbs(res), "posterior")
    if api == "installed":
        table = az.summary(data, kind="stats")
        assert np.all(np.isfinite(np.asarray(table["mean"], float)))


def test_sequence_gibbs_burn_in_and_batch(api):
    runs = gibbs_runs()
    batch = stack(runs)  # as jax.vmap over keys would give them
    data = pk.arviz.from_sequence_gibbs(batch, burn_in=4)
    assert groups(data) == {
        "posterior", "sample_stats", "warmup_posterior", "warmup_sample_stats", "initial"
    }  # fmt: skip
    post, warm = group(data, "posterior"), group(data, "warmup_posterior")
    assert post["tokens"].shape == (2, K - 4, MAX_LENGTH)
    assert warm["tokens"].shape == (2, 4, MAX_LENGTH)
    stats, warm_stats = group(data, "sample_stats"), group(data, "warmup_sample_stats")
    assert stats["ess"].shape == (2, K - 4, MAX_LENGTH) and warm_stats["ess"].shape[1] == 4
    assert "failed" not in warm_stats and stats["failed"].shape == (2,)
    assert data.attrs["burn_in"] == 4 and data.attrs["failed"] == [0, 0]
    for c, res in enumerate(runs):
        whole = np.concatenate([warm["tokens"].values[c], post["tokens"].values[c]])
        np.testing.assert_array_equal(whole, res.sequences)
        whole = np.concatenate([warm_stats["log_potential"].values[c],
                                stats["log_potential"].values[c]])  # fmt: skip
        np.testing.assert_array_equal(whole, res.log_potentials)
        np.testing.assert_array_equal(group(data, "initial")["tokens"].values[c],
                                      res.initial_sequence)  # fmt: skip
    for bad in (K, -1, True, 1.5):
        with pytest.raises(ValueError, match="burn_in"):
            pk.arviz.from_sequence_gibbs(runs[0], burn_in=bad)
    with pytest.raises(ValueError, match="eos_id"):
        pk.arviz.from_sequence_gibbs(runs[0], eos_id="$")
    # an id that is not the run's end token would report every sequence as truncated: the
    # padding after length tells (a run whose last position is padding)
    short = runs[0]._replace(
        sequences=jnp.asarray(runs[0].sequences).at[..., -1].set(EOS),
        lengths=jnp.minimum(jnp.asarray(runs[0].lengths), MAX_LENGTH - 1),
    )
    pk.arviz.from_sequence_gibbs(short, eos_id=EOS)
    with pytest.raises(ValueError, match="not the run's end token"):
        pk.arviz.from_sequence_gibbs(short, eos_id=EOS + 99)
    with pytest.raises(ValueError, match="decode"):
        pk.arviz.from_sequence_gibbs(runs[0], decode=3)
    with pytest.raises(ValueError, match="batch"):
        pk.arviz.from_sequence_gibbs(jax.tree.map(lambda a: a[None], batch))


# ------------------------------------------------------------------------------ tempering
def test_sequence_tempering_groups_dims_and_values(api):
    res = tempering_runs()[0]
    J = len(TEMPERATURES)
    data = pk.arviz.from_sequence_tempering(res, eos_id=EOS, decode=letters)
    check_container(data, api)
    assert groups(data) == {"posterior", "sample_stats", "tempering", "initial"}
    seqs, lengths = np.asarray(res.sequences), np.asarray(res.lengths)  # (J, K, L), (J, K)
    ended = np.take_along_axis(seqs, lengths[..., None] - 1, -1)[..., 0] == EOS
    texts = [[letters(t[:n]) for t, n in zip(seqs[j], lengths[j], strict=True)] for j in range(J)]
    # posterior: the cold chain (temperature 1, index 0)
    post = group(data, "posterior")
    assert set(post.data_vars) == {"tokens", "length", "ended"}
    assert post["tokens"].dims == ("chain", "draw", "position")
    assert post["tokens"].shape == (1, K, MAX_LENGTH)
    np.testing.assert_array_equal(post["tokens"].values[0], seqs[0])
    np.testing.assert_array_equal(post["length"].values[0], lengths[0])
    np.testing.assert_array_equal(post["ended"].values[0], ended[0])
    stats = group(data, "sample_stats")
    assert set(stats.data_vars) == {"log_potential", "changed", "ess", "swapped", "text", "failed"}
    for name, field in [("log_potential", res.log_potentials), ("changed", res.changed)]:
        assert stats[name].dims == ("chain", "draw")
        np.testing.assert_array_equal(stats[name].values[0], np.asarray(field)[0])
    assert stats["ess"].dims == ("chain", "draw", "step")
    assert stats["ess"].shape == (1, K, MAX_LENGTH)
    np.testing.assert_array_equal(stats["ess"].values[0], np.asarray(res.ess)[0])
    assert stats["swapped"].dims == ("chain", "draw", "pair")
    assert stats["swapped"].shape == (1, K, J - 1)
    np.testing.assert_array_equal(stats["swapped"].values[0], res.swapped)
    assert stats["swapped"].values.any()  # swaps happen on this run
    assert stats["text"].values[0].tolist() == texts[0]
    assert stats["failed"].dims == ("chain",) and stats["failed"].values.tolist() == [False]
    # tempering: every temperature, indexed as in the result, every iteration
    temp = group(data, "tempering")
    assert set(temp.data_vars) == {
        "tokens", "length", "log_potential", "changed", "ess", "ended", "text", "swapped",
        "temperatures",
    }  # fmt: skip
    assert temp["tokens"].dims == ("chain", "temperature", "iteration", "position")
    assert temp["ess"].dims == ("chain", "temperature", "iteration", "step")
    assert temp["swapped"].dims == ("chain", "iteration", "pair")
    assert temp["temperatures"].dims == ("chain", "temperature")
    for name, field in [
        ("tokens", seqs),
        ("length", lengths),
        ("log_potential", res.log_potentials),
        ("changed", res.changed),
        ("ess", res.ess),
        ("ended", ended),
        ("swapped", res.swapped),
        ("temperatures", res.temperatures),
    ]:
        np.testing.assert_array_equal(temp[name].values[0], np.asarray(field))
    for name in ("length", "log_potential", "changed", "ended", "text"):
        assert temp[name].dims == ("chain", "temperature", "iteration")
    assert temp["text"].values[0].tolist() == texts
    initial = group(data, "initial")
    assert initial["tokens"].dims == ("chain", "temperature", "position")
    assert initial["length"].dims == ("chain", "temperature")
    np.testing.assert_array_equal(initial["tokens"].values[0], res.initial_sequences)
    np.testing.assert_array_equal(initial["length"].values[0], res.initial_lengths)
    assert data.attrs["particlekit_result"] == "TemperingResult"
    assert data.attrs["num_iterations"] == K and data.attrs["burn_in"] == 0
    assert data.attrs["num_temperatures"] == J and data.attrs["cold_index"] == 0
    assert data.attrs["temperatures"] == list(TEMPERATURES)
    np.testing.assert_allclose(data.attrs["swap_acceptance"], res.swap_acceptance)
    assert data.attrs["failed"] == 0
    for name, values in float_values(data):
        assert not np.isnan(values).any(), name
    # without eos_id there is no end flag, without decode no text
    plain = pk.arviz.from_sequence_tempering(res)
    assert "ended" not in group(plain, "posterior") and "ended" not in group(plain, "tempering")
    assert "text" not in group(plain, "sample_stats") and "text" not in group(plain, "tempering")
    if api == "installed":
        table = az.summary(data, kind="stats")
        assert np.all(np.isfinite(np.asarray(table["mean"], float)))


def test_sequence_tempering_cold_chain_is_the_lowest_temperature(api):
    """A decreasing ladder: the cold chain is the last one; the posterior holds it."""
    res = tempering_runs((4.0, 2.0, 1.0))[0]
    data = pk.arviz.from_sequence_tempering(res)
    assert data.attrs["cold_index"] == 2 and data.attrs["temperatures"] == [4.0, 2.0, 1.0]
    np.testing.assert_array_equal(group(data, "posterior")["tokens"].values[0],
                                  np.asarray(res.sequences)[2])  # fmt: skip
    np.testing.assert_array_equal(group(data, "sample_stats")["log_potential"].values[0],
                                  np.asarray(res.log_potentials)[2])  # fmt: skip
    # in a batch, each chain's own cold index
    cold_first = tempering_runs()[1]
    batch = stack([res, cold_first])
    both = pk.arviz.from_sequence_tempering(batch)
    assert both.attrs["cold_index"] == [2, 0]
    post = group(both, "posterior")["tokens"].values
    np.testing.assert_array_equal(post[0], np.asarray(res.sequences)[2])
    np.testing.assert_array_equal(post[1], np.asarray(cold_first.sequences)[0])


def test_sequence_tempering_burn_in_batch_and_netcdf(api, tmp_path):
    runs = tempering_runs()
    batch = stack(runs)  # as jax.vmap over keys would give them
    # a pair never proposed has a NaN acceptance rate: an attribute, never a variable
    batch = batch._replace(swap_acceptance=batch.swap_acceptance.at[1, 1].set(jnp.nan))
    data = pk.arviz.from_sequence_tempering(batch, burn_in=4, decode=letters)
    assert groups(data) == {
        "posterior", "sample_stats", "warmup_posterior", "warmup_sample_stats", "tempering",
        "initial",
    }  # fmt: skip
    post, warm = group(data, "posterior"), group(data, "warmup_posterior")
    assert post["tokens"].shape == (2, K - 4, MAX_LENGTH)
    assert warm["tokens"].shape == (2, 4, MAX_LENGTH)
    stats, warm_stats = group(data, "sample_stats"), group(data, "warmup_sample_stats")
    assert stats["ess"].shape == (2, K - 4, MAX_LENGTH) and warm_stats["ess"].shape[1] == 4
    assert stats["swapped"].shape == (2, K - 4, 2) and warm_stats["swapped"].shape == (2, 4, 2)
    assert "failed" not in warm_stats and stats["failed"].shape == (2,)
    # the tempering group keeps every iteration
    assert group(data, "tempering")["tokens"].shape == (2, 3, K, MAX_LENGTH)
    assert group(data, "initial")["length"].shape == (2, 3)
    assert data.attrs["burn_in"] == 4 and data.attrs["failed"] == [0, 0]
    assert data.attrs["cold_index"] == [0, 0]
    assert data.attrs["temperatures"] == [list(TEMPERATURES)] * 2
    assert np.isnan(data.attrs["swap_acceptance"][1][1])
    for name, values in float_values(data):
        assert not np.isnan(values).any(), name
    for c, res in enumerate(runs):
        whole = np.concatenate([warm["tokens"].values[c], post["tokens"].values[c]])
        np.testing.assert_array_equal(whole, np.asarray(res.sequences)[0])
        for name, field in [("log_potential", res.log_potentials[0]), ("swapped", res.swapped),
                            ("text", group(data, "tempering")["text"].values[c, 0])]:  # fmt: skip
            whole = np.concatenate([warm_stats[name].values[c], stats[name].values[c]])
            np.testing.assert_array_equal(whole, np.asarray(field))
        np.testing.assert_array_equal(group(data, "tempering")["tokens"].values[c],
                                      res.sequences)  # fmt: skip
        np.testing.assert_array_equal(group(data, "initial")["length"].values[c],
                                      res.initial_lengths)  # fmt: skip
    # the texts and the nested attributes survive NetCDF
    path = tmp_path / "tempering.nc"
    if api == "arviz>=1":
        data.to_netcdf(path, engine="h5netcdf")
        back = xr.open_datatree(path, engine="h5netcdf")
    else:
        data.to_netcdf(str(path))
        back = az.from_netcdf(str(path))
    assert groups(back) == groups(data)
    for name in groups(data):
        xr.testing.assert_equal(group(back, name).load(), group(data, name))
    np.testing.assert_array_equal(back.attrs["temperatures"], data.attrs["temperatures"])
    # bad arguments
    for bad in (K, -1, True, 1.5):
        with pytest.raises(ValueError, match="burn_in"):
            pk.arviz.from_sequence_tempering(runs[0], burn_in=bad)
    with pytest.raises(ValueError, match="eos_id"):
        pk.arviz.from_sequence_tempering(runs[0], eos_id="$")
    with pytest.raises(ValueError, match="decode"):
        pk.arviz.from_sequence_tempering(runs[0], decode=3)
    with pytest.raises(ValueError, match="batch"):
        pk.arviz.from_sequence_tempering(jax.tree.map(lambda a: a[None], batch))


def test_sequence_tempering_method_matches_converter(api):
    res = tempering_runs()[0]
    data = res.to_inference_data(burn_in=3, eos_id=EOS)
    again = pk.arviz.from_sequence_tempering(res, burn_in=3, eos_id=EOS)
    assert groups(data) == groups(again)
    for name in groups(data):
        xr.testing.assert_equal(group(data, name), group(again, name))


# ------------------------------------------------------------------------------ language model
def test_language_model_steering_with_decoded_texts():
    task = pk.lm.task
    model = pk.lm.arithmetic_model()
    prompt = jnp.asarray(task.encode_prompt([45, 38, 27]))
    lm, cache = pk.lm.steering_model(model, prompt)
    res = pk.steering.smc(jax.random.key(2), lm, task.verifier_log_reward, num_particles=8,
                          max_length=task.MAX_NEW_TOKENS, eos_id=task.EOS, prompt=prompt,
                          init_cache=cache, progress_bar=False)  # fmt: skip
    data = pk.arviz.from_sequence_steering(res, key=jax.random.key(1), decode=task.decode)
    length = task.CONTEXT_LENGTH
    weighted = group(data, "weighted_particles")
    assert weighted["tokens"].dims == ("chain", "particle", "position")
    assert weighted["tokens"].shape == (1, 8, length)
    assert group(data, "posterior")["tokens"].shape == (1, 8, length)
    assert group(data, "steps")["ess"].shape == (1, task.MAX_NEW_TOKENS)
    np.testing.assert_allclose(weighted["weight"].values.sum(), 1.0, rtol=1e-5)
    seqs, lengths = np.asarray(res.sequences), np.asarray(res.lengths)
    texts = weighted["text"].values[0].tolist()
    assert texts == [task.decode(t[:n]) for t, n in zip(seqs, lengths, strict=True)]
    prompt_text = task.decode(prompt)
    assert all(t.startswith(prompt_text) for t in texts)
    assert all(t.endswith("$") == e for t, e in zip(texts, np.asarray(res.ended), strict=True))
    # the verifier's reward: every sequence with weight is right so far, and a finished one
    # has the right answer
    weights = weighted["weight"].values[0]
    assert not bool(res.failed) and weights.max() > 0
    for text, w, ended in zip(texts, weights, weighted["ended"].values[0], strict=True):
        if w > 0 and ended:
            assert text.replace("_", "") == "45+38+27=83;110;A110$"
    # each draw's text is that of its sequence
    post, stats = group(data, "posterior"), group(data, "sample_stats")
    for tokens, n, text in zip(post["tokens"].values[0], post["length"].values[0],
                               stats["text"].values[0], strict=True):  # fmt: skip
        assert text == task.decode(tokens[:n])
    assert data.attrs["num_particles"] == 8
