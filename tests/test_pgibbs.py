"""Conditional SMC, PaRIS particle Gibbs and particle Gibbs against exact Kalman / RTS
answers. Standard errors come from independent chains or seeds (vmapped)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from exact import kalman, rts, scalar_model

import particlekit as pk

Z = 5.0
A, Q, R = 0.9, 1.0, 0.5


def _ssm(a=A, r=R):
    return pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(a * x_prev, Q),
        observation=lambda x, t: dist.Normal(x, r),
    )


SSM = _ssm()


def _z(samples, exact):
    samples = np.asarray(samples, np.float64)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return np.max(np.abs(samples.mean(axis=0) - exact) / se)


@pytest.mark.parametrize(
    "backward_sampling,ancestor_sampling", [(True, False), (False, True)], ids=["BS", "AS"]
)
def test_csmc_chain_leaves_smoothing_law_invariant(backward_sampling, ancestor_sampling):
    """Particle Gibbs with fixed parameters: per-chain time averages of x_t and x_t^2 match
    the RTS marginals (SE across 32 independent chains)."""
    num_steps, num_chains, num_iter, burn = 15, 32, 200, 20
    xs, ys = SSM.simulate(jax.random.key(0), num_steps)
    sm, sP, _ = rts(scalar_model(A, Q, R, 1.0), np.asarray(ys))
    sm, s2 = sm[:, 0], sP[:, 0, 0] + sm[:, 0] ** 2

    def chain(key):
        k0, k_run = jax.random.split(key)
        ref0 = SSM.simulate(k0, num_steps)[0]  # a poor start: a draw from the prior

        def body(ref, k):
            new = pk.pgibbs.csmc(
                k, SSM, ys, ref, num_particles=10, backward_sampling=backward_sampling,
                ancestor_sampling=ancestor_sampling,
            )  # fmt: skip
            return new, new

        _, paths = jax.lax.scan(body, ref0, jax.random.split(k_run, num_iter))
        kept = paths[burn:]
        return kept.mean(0), (kept**2).mean(0)

    m1, m2 = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(1), num_chains))
    assert _z(m1, sm) < Z
    assert _z(m2, s2) < Z


@pytest.mark.slow
def test_ppg_rollout_is_less_biased_than_paris_at_small_n():
    """Cardoso et al. (2023): at N = 24 the PaRIS estimate of E[sum_t x_t^2 | y] has an
    O(T/N) bias visible over 256 seeds; the PPG roll-out estimate at the same N has none."""
    r, num_steps, n = 0.3, 100, 24
    ssm = _ssm(r=r)
    _, ys = ssm.simulate(jax.random.key(0), num_steps)
    sm, sP, _ = rts(scalar_model(A, Q, r, 1.0), np.asarray(ys))
    exact = float(np.sum(sP[:, 0, 0] + sm[:, 0] ** 2))

    def h(xp, x, t):
        return x**2

    def h0(x):
        return x**2

    keys = jax.random.split(jax.random.key(5), 256)
    paris = jax.jit(
        jax.vmap(
            lambda k: (
                pk.smoothing.paris(
                    k, ssm, ys, additive_fn=h, initial_fn=h0, num_particles=n
                ).estimate
            )
        )
    )(keys)

    def run_ppg(k):
        res = pk.pgibbs.ppg(k, ssm, ys, additive_fn=h, initial_fn=h0, num_particles=n,
                            num_iterations=20, burn_in=5)  # fmt: skip
        return res.estimate, res.estimates

    ppg, per_iter = jax.jit(jax.vmap(run_ppg))(keys[:64])
    np.testing.assert_allclose(ppg, per_iter[:, 5:].mean(1), rtol=1e-5)
    bias_paris = float(np.mean(paris)) - exact
    se_paris = float(np.std(paris)) / np.sqrt(paris.shape[0])
    bias_ppg = float(np.mean(ppg)) - exact
    se_ppg = float(np.std(ppg)) / np.sqrt(ppg.shape[0])
    assert abs(bias_paris) > 3 * se_paris  # PaRIS is measurably biased at this N ...
    assert abs(bias_ppg) < Z * se_ppg  # ... PPG is not ...
    assert abs(bias_ppg) < abs(bias_paris) / 3  # ... and is at least 3x less biased


def _exact_posterior_of_a(ys, grid):
    """p(a | y) on a grid from the Kalman likelihood and a N(0, 1) prior."""
    log_post = np.array(
        [kalman(scalar_model(a, Q, R, 1.0), np.asarray(ys))[0] - 0.5 * a**2 for a in grid]
    )
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean = np.sum(w * grid)
    return mean, np.sqrt(np.sum(w * (grid - mean) ** 2))


@pytest.mark.slow
@pytest.mark.parametrize("update", ["conjugate", "blackjax"])
def test_particle_gibbs_recovers_exact_posterior_of_ar_coefficient(update):
    import blackjax

    num_steps = 30
    _, ys = SSM.simulate(jax.random.key(11), num_steps)
    mean, sd = _exact_posterior_of_a(ys, np.linspace(-1.5, 2.0, 701))

    def model_fn(a):
        return _ssm(a=a)

    def conjugate(key, a, xs, ys):
        prec = 1.0 + jnp.sum(xs[:-1] ** 2) / Q**2
        m = jnp.sum(xs[:-1] * xs[1:]) / Q**2 / prec
        return m + jax.random.normal(key) / jnp.sqrt(prec)

    kw = dict(theta_update=conjugate)
    if update == "blackjax":
        kw = dict(
            log_prior=lambda a: -0.5 * a**2,
            mcmc=lambda ld: blackjax.additive_step_random_walk.normal_random_walk(
                ld, jnp.array(0.15)
            ),
            num_mcmc_steps=3,
        )
    res = pk.pgibbs.particle_gibbs(
        jax.random.key(12), model_fn, ys, theta_init=jnp.array(0.5), num_samples=300,
        num_particles=16, num_chains=8, **kw,
    )  # fmt: skip
    assert res.theta.shape == (8, 300) and res.states.shape == (8, 300, num_steps)
    chain_means = np.asarray(res.theta[:, 50:]).mean(1)
    assert _z(chain_means[:, None], np.array([mean])) < Z
    assert abs(float(np.asarray(res.theta[:, 50:]).std()) - sd) < 0.3 * sd
    if update == "blackjax":
        assert 0.05 < float(np.nanmean(res.acceptance_rate)) < 0.95
    idata = res.to_inference_data()
    assert idata.posterior["theta"].shape == (8, 300)


def test_invalid_arguments():
    xs, ys = SSM.simulate(jax.random.key(0), 10)
    h = lambda xp, x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="num_particles >= 2"):
        pk.pgibbs.csmc(jax.random.key(0), SSM, ys, xs, num_particles=1)
    with pytest.raises(ValueError, match="reference"):
        pk.pgibbs.csmc(jax.random.key(0), SSM, ys, xs[:5], num_particles=8)
    with pytest.raises(ValueError, match="conditional"):
        pk.pgibbs.csmc(jax.random.key(0), SSM, ys, xs, num_particles=8, resampling="ssp")
    with pytest.raises(ValueError, match="burn_in"):
        pk.pgibbs.ppg(jax.random.key(0), SSM, ys, additive_fn=h, num_particles=8,
                      num_iterations=5, burn_in=5)  # fmt: skip
    with pytest.raises(ValueError, match="exactly one"):
        pk.pgibbs.particle_gibbs(jax.random.key(0), lambda a: _ssm(a=a), ys,
                                 theta_init=0.5, num_samples=5, num_particles=8)  # fmt: skip


@pytest.mark.filterwarnings("ignore:Out-of-support")
@pytest.mark.parametrize("backward_sampling", [True, False], ids=["BS", "AS-trace"])
def test_csmc_reports_failures_like_the_filters(backward_sampling):
    """csmc returned a finite trajectory and no diagnostics whatever the input. With
    return_info=True it reports failed / num_nonfinite / ess as the filters do: impossible
    data (an observation outside a uniform density's support) and an infinite observation
    fail at their step; ordinary data do not."""
    xs, ys = SSM.simulate(jax.random.key(0), 20)
    kw = dict(num_particles=16, backward_sampling=backward_sampling, return_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ok = pk.pgibbs.csmc(jax.random.key(1), SSM, ys, xs, **kw)
    assert not bool(ok.failed) and np.isfinite(float(ok.log_evidence))
    assert ok.trajectory.shape == xs.shape and ok.num_nonfinite.shape == (20,)
    assert int(ok.num_nonfinite.sum()) == 0 and float(ok.ess.min()) >= 1.0
    default = pk.pgibbs.csmc(jax.random.key(1), SSM, ys, xs, num_particles=16,
                             backward_sampling=backward_sampling)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(default), np.asarray(ok.trajectory))

    uniform = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.5 * x_prev, 1.0),
        observation=lambda x, t: dist.Uniform(x - 1.0, x + 1.0),
    )
    ref = jnp.zeros(20)
    failed = "csmc: 1 of 1 conditional SMC sweep.* failed"
    with pytest.warns(RuntimeWarning, match=failed):  # the trajectory alone says nothing
        bad = pk.pgibbs.csmc(jax.random.key(1), uniform, jnp.zeros(20).at[7].set(100.0), ref, **kw)
        jax.block_until_ready(bad)  # the warning comes from a host callback of the run
    assert bool(bad.failed) and float(bad.log_evidence) == -np.inf
    assert float(bad.ess[7]) == 0.0
    with pytest.warns(RuntimeWarning, match=failed):
        inf = pk.pgibbs.csmc(jax.random.key(1), SSM, ys.at[3].set(jnp.inf), xs, num_particles=16,
                             backward_sampling=backward_sampling)  # fmt: skip
        jax.block_until_ready(inf)
    assert np.isfinite(np.asarray(inf)).all()


def test_csmc_nan_reference():
    """A NaN reference is a ValueError eagerly; under jit it is counted in num_nonfinite
    (the reference slot gets zero weight) instead of passing silently."""
    xs, ys = SSM.simulate(jax.random.key(0), 10)
    with pytest.raises(ValueError, match="reference has non-finite values .* steps \\[4\\]"):
        pk.pgibbs.csmc(jax.random.key(1), SSM, ys, xs.at[4].set(jnp.nan), num_particles=8)
    with pytest.raises(ValueError, match="non-finite"):
        pk.pgibbs.particle_gibbs(jax.random.key(0), lambda a: _ssm(a=a), ys, theta_init=0.5,
                                 num_samples=2, num_particles=8, reference=xs.at[0].set(jnp.inf),
                                 theta_update=lambda k, th, x, y: th)  # fmt: skip

    @jax.jit
    def traced(ref):
        return pk.pgibbs.csmc(jax.random.key(1), SSM, ys, ref, num_particles=8,
                              return_info=True)  # fmt: skip

    res = traced(xs.at[4].set(jnp.nan))
    assert int(res.num_nonfinite[4]) >= 1
    assert np.isfinite(np.asarray(res.trajectory)).all()


def test_joint_log_prob_vectorized_missing_step():
    """joint_log_prob of a vectorised model skips only the missing step (it used to read a
    NaN anywhere in ys as every observation missing)."""
    vec = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(A * x_prev, Q),
        observation=lambda x, t: dist.Normal(x, R),
        vectorized=True,
    )
    xs, ys = SSM.simulate(jax.random.key(0), 10)
    ys = ys.at[3].set(jnp.nan)
    np.testing.assert_allclose(
        float(pk.pgibbs.joint_log_prob(vec, xs, ys)),
        float(pk.pgibbs.joint_log_prob(SSM, xs, ys)),
        rtol=1e-5,
    )


def test_particle_gibbs_reports_failed_sweeps():
    """A sweep on impossible data (an observation outside the support of every state) is
    flagged in the draws, as csmc(return_info=True) flags it; a model that explains the
    data is not."""
    _, ys = SSM.simulate(jax.random.key(3), 12)

    def conjugate(key, a, xs, ys):
        return a  # keep theta: only the sweeps' flags are under test

    def model_fn(a):
        return pk.StateSpaceModel(
            initial=lambda: dist.Normal(0.0, 1.0),
            transition=lambda x_prev, t: dist.Normal(a * x_prev, Q),
            observation=lambda x, t: dist.Uniform(x - 1e-3, x + 1e-3),  # y far from x: 0
        )

    with pytest.warns(RuntimeWarning, match="particle_gibbs: 6 of 6 conditional SMC sweep"):
        bad = pk.pgibbs.particle_gibbs(
            jax.random.key(4), model_fn, ys + 50.0, theta_init=jnp.array(0.5), num_samples=3,
            num_particles=8, num_chains=2, theta_update=conjugate,
            reference=jnp.zeros_like(ys),
        )  # fmt: skip
        jax.block_until_ready(bad)
    assert bad.failed.shape == (2, 3) and np.all(np.asarray(bad.failed))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        good = pk.pgibbs.particle_gibbs(
            jax.random.key(4), lambda a: _ssm(a=a), ys, theta_init=jnp.array(0.5), num_samples=3,
            num_particles=8, num_chains=2, theta_update=conjugate,
        )  # fmt: skip
    assert not np.any(np.asarray(good.failed))
    assert np.all(np.asarray(good.num_nonfinite) == 0)


def test_ppg_flags_sweeps_carried_by_the_reference_alone():
    """An outlier (y = 40 under an observation sd of 0.05) that only the reference passes
    near: every fresh particle's weight underflows to zero at that step, so each sweep's
    estimate is the reference path's value and the chain is stuck on it. Before,
    ``ppg`` returned it silently; now ``reference_alone`` flags the sweeps (also in
    ArviZ's ``sample_stats``) and a RuntimeWarning says so. The same model on data it
    explains flags nothing and warns nothing."""
    ssm = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        observation=lambda x, t: dist.Normal(x, 0.05),
    )
    _, ys = ssm.simulate(jax.random.key(0), 10)
    h = lambda xp, x, t: x  # noqa: E731
    through_outlier = jnp.zeros(10).at[4:7].set(jnp.array([40.0 / 0.9, 40.0, 36.0]))
    with pytest.warns(RuntimeWarning, match="6 of 6 sweeps the reference trajectory alone"):
        stuck = pk.pgibbs.ppg(
            jax.random.key(1), ssm, ys.at[5].set(40.0), additive_fn=h, num_particles=16,
            num_iterations=6, burn_in=1, reference=through_outlier,
        )  # fmt: skip
    assert np.all(np.asarray(stuck.reference_alone)) and not bool(stuck.failed)
    stats = pk.arviz.from_ppg(stuck)["sample_stats"]
    assert np.all(np.asarray(stats["reference_alone"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fine = pk.pgibbs.ppg(
            jax.random.key(1), ssm, ys, additive_fn=h, num_particles=16, num_iterations=6,
            burn_in=1,
        )  # fmt: skip
    assert fine.reference_alone.shape == (6,) and not np.any(np.asarray(fine.reference_alone))


def test_pin_first_sets_slot_zero_of_every_leaf():
    """Conditional SMC's pin of the reference (``smoothing._pin_first``, a select on the slot
    index): slot 0 of every leaf is the reference's value, cast to the leaf's dtype; the
    other slots are untouched."""
    from particlekit import smoothing

    particles = {"x": jnp.arange(12.0).reshape(4, 3), "k": jnp.arange(4, dtype=jnp.int32)}
    reference = {"x": jnp.asarray([-1.0, -2.0, -3.0]), "k": 7.0}
    pinned = jax.jit(smoothing._pin_first)(particles, reference)
    np.testing.assert_array_equal(pinned["x"][0], [-1.0, -2.0, -3.0])
    np.testing.assert_array_equal(pinned["x"][1:], particles["x"][1:])
    np.testing.assert_array_equal(pinned["k"], [7, 1, 2, 3])
    assert pinned["k"].dtype == jnp.int32 and pinned["x"].dtype == particles["x"].dtype
