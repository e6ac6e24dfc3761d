"""Smoothing and particle Gibbs, from a user-style hunt: argument checks with clear
messages (bounds given as arrays, callable bounds returning arrays, references of the wrong
kind, flags and burn-in of the wrong type, batched filter results), additive functionals
with integer / boolean / broadcast terms, and the linear-Gaussian answers (RTS) for a
vector state with a pytree functional."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import LinearGaussian, rts

import particlekit as pk

SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)


@pytest.fixture(scope="module")
def data():
    return SSM.simulate(jax.random.key(0), 8)


@pytest.fixture(scope="module")
def history(data):
    _, ys = data
    return pk.filters.bootstrap(jax.random.key(1), SSM, ys, num_particles=32)


# ---- log_transition_bound ------------------------------------------------------------
@pytest.mark.parametrize("bound", [jnp.asarray(0.0), np.asarray(0.0), np.float32(0.0)])
def test_bound_given_as_zero_dim_array_is_a_number(history, bound):
    # a 0-d jax.Array was passed on as an (unhashable) static argument of the jit
    paths = pk.smoothing.ffbs(
        jax.random.key(2), SSM, history, 4, method="rejection", log_transition_bound=bound
    )
    assert paths.shape == (4, 8)
    assert bool(jnp.all(jnp.isfinite(paths)))


@pytest.mark.parametrize("bound", [np.zeros(3), 1j, True, "0.0"])
def test_bound_not_a_real_number_is_rejected(history, bound):
    with pytest.raises(ValueError, match="log_transition_bound must be a real number"):
        pk.smoothing.ffbs(
            jax.random.key(2), SSM, history, 4, method="rejection", log_transition_bound=bound
        )


def test_callable_bound_returning_an_array_is_rejected(history):
    with pytest.raises(ValueError, match=r"log_transition_bound\(t\) must return one number"):
        pk.smoothing.ffbs(
            jax.random.key(2), SSM, history, 4, method="rejection",
            log_transition_bound=lambda t: jnp.zeros(3),
        )  # fmt: skip


def test_traced_bound_is_rejected_with_a_message(history):
    with pytest.raises(ValueError, match="not a traced value"):
        jax.jit(
            lambda b: pk.smoothing.ffbs(
                jax.random.key(2), SSM, history, 4, method="rejection", log_transition_bound=b
            )
        )(0.0)


# ---- ffbs arguments -------------------------------------------------------------------
def test_ffbs_rejects_a_non_model(history):
    with pytest.raises(ValueError, match="ssm must be a particlekit.StateSpaceModel"):
        pk.smoothing.ffbs(jax.random.key(2), "ssm", history, 4)


def test_ffbs_of_a_vmapped_filter_batch_says_so(data):
    _, ys = data
    batch = jax.vmap(lambda k: pk.filters.bootstrap(k, SSM, ys, num_particles=16))(
        jax.random.split(jax.random.key(0), 2)
    )
    with pytest.raises(ValueError, match=r"log_weights of shape \(T, N\).*jax.vmap"):
        pk.smoothing.ffbs(jax.random.key(2), SSM, batch, 4)
    # the way to do it
    paths = jax.vmap(lambda k, r: pk.smoothing.ffbs(k, SSM, r, 4))(
        jax.random.split(jax.random.key(3), 2), batch
    )
    assert paths.shape == (2, 4, 8)


# ---- conditional SMC / PPG references and flags ---------------------------------------
@pytest.mark.parametrize(
    "reference,match",
    [
        (None, "reference must be an array of states"),
        ({"x": np.zeros(8)}, "reference must be an array of states"),
        (np.zeros(8, bool), "real states"),
        (np.zeros(8, np.complex64), "real states"),
    ],
)
def test_csmc_reference_of_the_wrong_kind(data, reference, match):
    _, ys = data
    with pytest.raises(ValueError, match=match):
        pk.pgibbs.csmc(jax.random.key(1), SSM, ys, reference, num_particles=4)


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_csmc_reference_of_another_real_dtype_is_cast(data, dtype):
    xs, ys = data
    new = pk.pgibbs.csmc(jax.random.key(1), SSM, ys, np.asarray(xs).astype(dtype), num_particles=4)
    assert new.shape == (8,) and new.dtype == xs.dtype


@pytest.mark.parametrize("flag", ["backward_sampling", "ancestor_sampling", "return_info"])
def test_csmc_flags_must_be_booleans(data, flag):
    xs, ys = data
    # bool("no") is True: a string flag did the opposite of what it said
    with pytest.raises(ValueError, match=f"{flag} must be True or False"):
        pk.pgibbs.csmc(jax.random.key(1), SSM, ys, xs, num_particles=4, **{flag: "no"})


@pytest.mark.parametrize("burn_in", [1.5, True, "1"])
def test_ppg_burn_in_must_be_an_integer(data, burn_in):
    _, ys = data
    with pytest.raises(ValueError, match="burn_in must be an integer"):
        pk.pgibbs.ppg(
            jax.random.key(1), SSM, ys, additive_fn=lambda xp, x, t: x, num_particles=4,
            num_iterations=3, burn_in=burn_in,
        )  # fmt: skip


def test_ppg_reference_of_the_wrong_kind(data):
    _, ys = data
    with pytest.raises(ValueError, match="reference must be an array of states"):
        pk.pgibbs.ppg(
            jax.random.key(1), SSM, ys, additive_fn=lambda xp, x, t: x, num_particles=4,
            num_iterations=3, burn_in=0, reference={"x": ys},
        )  # fmt: skip


# ---- additive functionals -------------------------------------------------------------
def test_paris_integer_and_boolean_terms_are_averaged_as_floats(data):
    _, ys = data

    def h(xp, x, t):
        return {"count": (x > 0).astype(jnp.int32), "flag": x > 0, "sum": x}

    def h0(x):
        return {"count": (x > 0).astype(jnp.int32), "flag": x > 0, "sum": x}

    res = pk.smoothing.paris(
        jax.random.key(1), SSM, ys, additive_fn=h, initial_fn=h0, num_particles=64
    )
    for name in ("count", "flag"):
        est = res.estimate[name]
        assert jnp.issubdtype(est.dtype, jnp.floating)
        assert 0.0 <= float(est) <= 8.0
    # the two are the same count
    np.testing.assert_allclose(res.estimate["count"], res.estimate["flag"], rtol=1e-6)
    # PPG and the online smoother take them too
    pg = pk.pgibbs.ppg(
        jax.random.key(2), SSM, ys, additive_fn=h, initial_fn=h0, num_particles=8,
        num_iterations=3, burn_in=0,
    )  # fmt: skip
    assert jnp.issubdtype(pg.estimate["count"].dtype, jnp.floating)
    smoother = pk.smoothing.paris_online(SSM, additive_fn=h, initial_fn=h0, num_particles=16)
    state = smoother.init(jax.random.key(3), ys[0])
    state, _ = smoother.update(jax.random.key(4), state, ys[1])
    assert 0.0 <= float(state.estimate["flag"]) <= 2.0


def test_paris_initial_term_of_another_structure_is_named(data):
    _, ys = data
    with pytest.raises(ValueError, match="must return the same structure"):
        pk.smoothing.paris(
            jax.random.key(1), SSM, ys, additive_fn=lambda xp, x, t: {"a": x},
            initial_fn=lambda x: x, num_particles=8,
        )  # fmt: skip


def test_paris_initial_term_of_another_shape_is_named(data):
    _, ys = data
    with pytest.raises(ValueError, match=r"shape \(3,\) where additive_fn returns shape \(2,\)"):
        pk.smoothing.paris(
            jax.random.key(1), SSM, ys, additive_fn=lambda xp, x, t: jnp.stack([x, x * x]),
            initial_fn=lambda x: jnp.zeros(3), num_particles=8,
        )  # fmt: skip


def test_paris_constant_initial_term_broadcasts(data):
    _, ys = data

    def h(xp, x, t):
        return jnp.stack([x, x * x])

    a = pk.smoothing.paris(
        jax.random.key(1), SSM, ys, additive_fn=h, initial_fn=lambda x: 0.0, num_particles=16
    )
    b = pk.smoothing.paris(jax.random.key(1), SSM, ys, additive_fn=h, num_particles=16)
    assert a.estimate.shape == (2,)
    np.testing.assert_allclose(a.estimate, b.estimate, rtol=1e-6)


# ---- vector states, pytree functional, against RTS --------------------------------------
A2 = np.array([[0.9, 0.1], [0.0, 0.8]])
Q2, R2 = np.eye(2) * 0.5, np.eye(2) * 0.3
SSM2 = pk.StateSpaceModel(
    initial=lambda: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
    transition=lambda x_prev, t: dist.MultivariateNormal(jnp.asarray(A2) @ x_prev, jnp.asarray(Q2)),
    observation=lambda x, t: dist.MultivariateNormal(x, jnp.asarray(R2)),
)


@pytest.mark.parametrize("method", ["exact", "rejection"])
def test_paris_vector_state_pytree_functional_matches_rts(method):
    _, ys = SSM2.simulate(jax.random.key(0), 10)
    sm, _, cross = rts(LinearGaussian(np.zeros(2), np.eye(2), A2, Q2, np.eye(2), R2), ys)
    exact = {
        "m": sm.sum(0),
        "outer": sum(cross[t] + np.outer(sm[t], sm[t + 1]) for t in range(9)),
    }

    def h(xp, x, t):
        return {"m": x, "outer": jnp.outer(xp, x)}

    def h0(x):
        return {"m": x, "outer": 0.0}  # broadcast to (2, 2)

    est = jax.vmap(
        lambda k: (
            pk.smoothing.paris(
                k, SSM2, ys, additive_fn=h, initial_fn=h0, num_particles=300, method=method
            ).estimate
        )
    )(jax.random.split(jax.random.key(2), 8))
    for name in ("m", "outer"):
        s = np.asarray(est[name], np.float64)
        se = s.std(0, ddof=1) / np.sqrt(s.shape[0])
        assert np.max(np.abs(s.mean(0) - exact[name]) / se) < 5.0, name


# ---- float64 (jax_enable_x64) ---------------------------------------------------------
def test_rejection_backward_sampling_in_float64():
    # was: "while_loop body function carry input and carry output must have equal types"
    # (jnp.sum of a boolean array is int64 under x64, the loop's counter int32)
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        xs, ys = SSM.simulate(jax.random.key(0), 6)
        assert ys.dtype == jnp.float64
        res = pk.filters.bootstrap(jax.random.key(1), SSM, ys, num_particles=64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            paths = pk.smoothing.ffbs(jax.random.key(2), SSM, res, 4, method="rejection")
        assert paths.dtype == jnp.float64
    finally:
        jax.config.update("jax_enable_x64", prev)


# ---- paris_online ---------------------------------------------------------------------
def test_paris_online_checks_key_and_state(data):
    _, ys = data
    smoother = pk.smoothing.paris_online(SSM, additive_fn=lambda xp, x, t: x, num_particles=8)
    with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
        smoother.init(0, ys[0])
    state = smoother.init(jax.random.key(0), ys[0])
    out = smoother.update(jax.random.key(1), state, ys[1])
    # feeding back the (state, info) pair instead of the state
    with pytest.raises(ValueError, match="needs the PaRISState"):
        smoother.update(jax.random.key(2), out, ys[2])
    state, _ = out
    state, _ = smoother.update(jax.random.key(2), state, ys[2])
    assert int(state.t) == 2


def test_ffbs_under_jit_with_a_closed_over_history(history):
    # the failed-filter check reduced a closed-over (concrete) flag with jnp, which an
    # outer jit stages: TracerBoolConversionError
    paths = jax.jit(lambda k: pk.smoothing.ffbs(k, SSM, history, 3))(jax.random.key(0))
    assert paths.shape == (3, 8)


# ---- particle_gibbs -------------------------------------------------------------------
def _model_fn(theta):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(theta * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )


def _keep(k, theta, xs, ys):
    return 0.9  # a Python number for a float32 parameter: cast, not a scan-carry TypeError


def _wrong_shape(k, theta, xs, ys):
    return jnp.zeros(2)


def test_particle_gibbs_theta_update_output(data):
    _, ys = data
    kw = dict(theta_init=jnp.array(0.9), num_samples=3, num_particles=8)
    res = pk.pgibbs.particle_gibbs(jax.random.key(1), _model_fn, ys, theta_update=_keep, **kw)
    assert res.states.shape == (1, 3, 8)
    with pytest.raises(ValueError, match=r"returned a leaf of shape \(2,\)"):
        pk.pgibbs.particle_gibbs(jax.random.key(1), _model_fn, ys, theta_update=_wrong_shape, **kw)
    with pytest.raises(ValueError, match="ancestor_sampling must be True or False"):
        pk.pgibbs.particle_gibbs(
            jax.random.key(1), _model_fn, ys, theta_update=_keep, ancestor_sampling="no", **kw
        )


def test_ppg_result_says_when_a_sweep_failed(data):
    # was: PPGResult had no `failed` (every other recipe's result has one): on impossible
    # data the estimates were finite numbers and only a -inf log_evidence told
    _, ys = data
    kw = dict(additive_fn=lambda xp, x, t: x, num_particles=16, num_iterations=3, burn_in=0)
    good = pk.pgibbs.ppg(jax.random.key(0), SSM, ys, **kw)
    # and it warns: the mean estimate averages the failed sweeps' values
    with pytest.warns(RuntimeWarning, match="ppg: 3 of 3 conditional SMC sweep.* failed"):
        bad = pk.pgibbs.ppg(jax.random.key(0), SSM, ys.at[3].set(jnp.inf), **kw)
        jax.block_until_ready(bad)
    assert not bool(good.failed) and bool(bad.failed)
    # under vmap the check runs per member: one warning, for the failed one
    with pytest.warns(RuntimeWarning, match="ppg: 3 of 3 conditional SMC sweep"):
        both = jax.vmap(lambda y: pk.pgibbs.ppg(jax.random.key(0), SSM, y, **kw))(
            jnp.stack([ys, ys.at[3].set(jnp.inf)])
        )
        jax.block_until_ready(both)
    assert both.failed.tolist() == [False, True]


def test_csmc_with_a_dict_state():
    # was: csmc rejected a dict reference ("must be an array of states"), though the
    # filters, FFBS, PaRIS and PPG take dict states; the new path keeps the structure
    from test_sqmc_distributed_user_reports import PYTREE_SSM

    xs, ys = PYTREE_SSM.simulate(jax.random.key(0), 6)
    new = pk.pgibbs.csmc(jax.random.key(1), PYTREE_SSM, ys, xs, num_particles=8)
    assert set(new) == {"pos", "vel"} and new["pos"].shape == (6,)
    res = pk.pgibbs.csmc(jax.random.key(1), PYTREE_SSM, ys, xs, num_particles=8,
                         backward_sampling=False, return_info=True)  # fmt: skip
    assert res.trajectory["vel"].shape == (6,) and not bool(res.failed)
    with pytest.raises(ValueError, match="structure"):
        pk.pgibbs.csmc(jax.random.key(1), PYTREE_SSM, ys, {"pos": xs["pos"]}, num_particles=8)
    with pytest.raises(ValueError, match="non-finite"):
        bad = {"pos": xs["pos"].at[2].set(jnp.nan), "vel": xs["vel"]}
        pk.pgibbs.csmc(jax.random.key(1), PYTREE_SSM, ys, bad, num_particles=8)


# ---- additive functionals that are not finite ----------------------------------------
def test_paris_online_counts_particles_with_nonfinite_statistics(data):
    """``h = log x`` is NaN / -inf at the particles with ``x <= 0``: after the first update
    (no initial term) exactly those of positive weight have a non-finite statistic."""
    _, ys = data
    smoother = pk.smoothing.paris_online(
        SSM, additive_fn=lambda xp, x, t: jnp.log(x), num_particles=64
    )
    state0 = smoother.init(jax.random.key(2), ys[0])
    state1, info = smoother.update(jax.random.key(3), state0, ys[1])
    particle_state = state1.particle_state
    expected = np.sum(
        (np.asarray(particle_state.particles) <= 0)
        & np.isfinite(np.asarray(particle_state.log_weights))
    )
    assert 0 < expected < 64
    assert int(info.num_nonfinite_statistics) == expected
    finite = pk.smoothing.paris_online(SSM, additive_fn=lambda xp, x, t: x, num_particles=64)
    _, info = finite.update(jax.random.key(3), finite.init(jax.random.key(2), ys[0]), ys[1])
    assert int(info.num_nonfinite_statistics) == 0


def test_paris_and_ppg_warn_when_the_functional_is_not_finite(data):
    _, ys = data
    log_h = dict(additive_fn=lambda xp, x, t: jnp.log(x), num_particles=32)
    with pytest.warns(RuntimeWarning, match=r"paris: additive_fn or initial_fn returned NaN"):
        res = pk.smoothing.paris(jax.random.key(4), SSM, ys, **log_h)
    assert not np.isfinite(res.estimate) and not bool(res.failed)
    with pytest.warns(RuntimeWarning, match=r"ppg: in \d of 3 sweeps the estimate is not") as w:
        res = pk.pgibbs.ppg(jax.random.key(5), SSM, ys, num_iterations=3, burn_in=1, **log_h)
    bad = ~np.isfinite(np.asarray(res.estimates)) & np.isfinite(np.asarray(res.log_evidence))
    assert bad.sum() > 0 and any(f"in {bad.sum()} of 3 sweeps" in str(x.message) for x in w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finite = dict(additive_fn=lambda xp, x, t: x, num_particles=32)
        assert np.isfinite(pk.smoothing.paris(jax.random.key(4), SSM, ys, **finite).estimate)
        pk.pgibbs.ppg(jax.random.key(5), SSM, ys, num_iterations=3, burn_in=1, **finite)


def test_paris_and_csmc_add_exactly_nothing_at_a_missing_observation(data):
    """As in the filters: a fully missing ``y_t`` has potential 1 for every particle, so
    its increment is exactly 0 (computed, ``log sum_i W_i`` of unequal normalised weights
    missed 0 by an ulp for some populations); never resampled here, so they are unequal."""
    _, ys = data
    ys = ys.at[1].set(jnp.nan)
    smoother = pk.smoothing.paris_online(
        SSM, additive_fn=lambda xp, x, t: x, num_particles=100, ess_threshold=0.0
    )
    for seed in range(8):
        state0 = smoother.init(jax.random.key(seed), ys[0])
        state1, info = smoother.update(jax.random.key(100 + seed), state0, ys[1])
        assert float(info.log_evidence_increment) == 0.0, seed
        assert state1.particle_state.log_evidence == state0.particle_state.log_evidence
    reference = jnp.zeros(ys.shape[0])
    res = pk.pgibbs.csmc(jax.random.key(0), SSM, ys[:2], reference[:2], num_particles=100,
                         return_info=True)  # fmt: skip
    alone = pk.pgibbs.csmc(jax.random.key(0), SSM, ys[:1], reference[:1], num_particles=100,
                           return_info=True)  # fmt: skip
    assert res.log_evidence == alone.log_evidence
