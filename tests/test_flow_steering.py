"""Flow models in the steering recipes (issue 15 item 2b, 2c): the closed-form
Gaussian-mixture flow, its samplers' marginals against the closed form (ODE, flow SDE and
the VP rewrite's SDE, at t = 0 and at an intermediate time, on non-uniform grids), FK
steering of the flow reaching the exactly tilted mixture, and rollover budget forcing.

Tolerances are ``K_SE`` Monte Carlo standard errors (fixed seeds). Mixture weights are
checked through the identity ``E_p[P(k | x)] = w_k``: the mean posterior component
probability of exact samples is the component weight.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk

W = [0.7, 0.3]
MU = [[-1.5, 0.0], [1.5, 1.0]]
SD = [[0.6, 0.8], [0.7, 0.5]]
COVS = [[[0.36, 0.15], [0.15, 0.64]], [[0.49, -0.1], [-0.1, 0.25]]]
A = jnp.array([1.0, 0.5])
K_SE = 5.0
FLOW = pk.diffusion.gaussian_mixture_flow(W, MU, stds=SD)
VP = FLOW.as_diffusion_model("linear")


class LinearReward(eqx.Module):
    """``r(x) = a . x`` with ``a`` a traced array (one compilation for every ``a``)."""

    a: jax.Array

    def __call__(self, x):
        return x @ self.a


REWARD = LinearReward(A)


def _closed_form(t):
    """Mean and per-coordinate variance of the flow marginal p_t (a Gaussian mixture with
    means (1 - t) mu_k and covariances (1 - t)^2 S_k + t^2 I)."""
    w, mu, var = np.array(W), np.array(MU), np.array(SD) ** 2
    means, variances = (1 - t) * mu, (1 - t) ** 2 * var + t**2
    mean = w @ means
    return mean, w @ (variances + means**2) - mean**2


def _check_marginal(x, t):
    """Mean, variance and mixture weights of samples ``x`` of p_t against the closed form,
    within K_SE standard errors."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    mean, var = _closed_form(t)
    xc = x - x.mean(0)
    se_var = np.sqrt((np.mean(xc**4, 0) - x.var(0) ** 2) / n)  # non-Gaussian variance SE
    resp = np.asarray(jax.vmap(FLOW.fn.responsibilities, in_axes=(0, None))(jnp.asarray(x), t))
    checks = [
        (x.mean(0), mean, x.std(0) / np.sqrt(n)),
        (x.var(0), var, se_var),
        (resp.mean(0), np.array(W), resp.std(0) / np.sqrt(n)),
    ]
    for est, exact, se in checks:
        assert np.all(np.abs(est - exact) < K_SE * se), (t, est, exact, se)


# ---------------------------------------------------------------------- exact conversions
FULL = pk.diffusion.gaussian_mixture_flow(W, MU, covs=COVS)


@jax.jit
def _velocity_checks(x, t):
    grad = jax.grad(lambda y: FULL.fn.distribution(t).log_prob(y))(x)
    log_probs = (FULL.fn.log_prob(x, t), FULL.fn.distribution(t).log_prob(x))
    return FULL.score(x, t), grad, log_probs, (1 - t) * FULL.x0(x, t) + t * FULL.eps(x, t)


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9, 1.0])
def test_mixture_velocity_is_exact(t):
    """Full covariances: the score from the velocity is grad log p_t (NumPyro's mixture);
    x0 and eps are E[x_0 | x_t] and E[eps | x_t] (so x_t = (1 - t) x0_hat + t eps_hat)."""
    x = jnp.array([0.4, -0.3])
    score, grad, (log_p, log_p_ref), x_back = _velocity_checks(x, jnp.float32(t))
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(log_p, log_p_ref, rtol=1e-5)
    np.testing.assert_allclose(x_back, x, atol=1e-5)


def test_single_gaussian_velocity_is_the_known_formula():
    # data N(0, I): v(x, t) = (2t - 1) x / ((1 - t)^2 + t^2)
    flow = pk.diffusion.gaussian_mixture_flow([1.0], [[0.0, 0.0]], stds=1.0)
    x, t = jnp.array([0.7, -1.2]), 0.3
    v = eqx.filter_jit(flow.velocity)(x, t)
    np.testing.assert_allclose(v, (2 * t - 1) * x / ((1 - t) ** 2 + t**2), rtol=1e-5)


def test_vp_rewrite_of_the_mixture_flow_is_the_vp_mixture():
    """The flow's VP rewrite has exactly the scores of the VP mixture model."""
    gm = pk.diffusion.gaussian_mixture(W, MU, stds=SD)
    x = jnp.array([0.3, -0.4])
    tau = jnp.array([0.01, 0.3, 0.8, 1.0])
    both = jax.jit(jax.vmap(lambda t: (VP.score(x, t), gm.score(x, t))))(tau)
    np.testing.assert_allclose(*both, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- marginals
N_MARGINAL, K_MARGINAL, T_MID = 4000, 100, 0.5


def _flow_grid(t_end, spacing):
    return pk.diffusion.time_grid(K_MARGINAL, t_min=t_end, spacing=spacing, schedule="flow")[::-1]


@pytest.mark.parametrize("method,spacing", [("ode", "karras"), ("sde", "quadratic")])
def test_flow_sampler_marginals_match_the_closed_form(method, spacing):
    """Euler ODE and Euler–Maruyama SDE of the flow on non-uniform grids: at t = 0 and,
    with a grid that stops at T_MID, at the intermediate time."""
    for seed, t_end in enumerate([0.0, T_MID]):
        x = FLOW.sample(jax.random.key(seed), N_MARGINAL, method=method,
                        grid=_flow_grid(t_end, spacing))  # fmt: skip
        _check_marginal(x, t_end)


def test_vp_rewrite_sde_marginals_match_the_closed_form():
    """The converted SDE (Euler–Maruyama of the reverse VP SDE of as_diffusion_model) on a
    Karras grid. Flow time T_MID is VP time tau with the same signal-to-noise ratio,
    alpha_bar(tau) = 1/2, where x_tau = (sqrt(ab) + sqrt(1 - ab)) x_t."""
    tau = float(VP.schedule.time_of_alpha_bar(0.5))
    scale = 2 * np.sqrt(0.5)
    for seed, (tau_end, t_end, s) in enumerate([(0.0, 0.0, 1.0), (tau, T_MID, scale)]):
        grid = pk.diffusion.time_grid(K_MARGINAL, t_min=tau_end, spacing="karras")[::-1]
        x = VP.sample(jax.random.key(10 + seed), N_MARGINAL, grid=grid, sampler="em")
        _check_marginal(np.asarray(x) / s, t_end)


# ---------------------------------------------------------------------- FK steering
def check_weighted_target(res, tilted, tw, tm, log_z, seeds, k_se=5.0):
    """A batch of ``seeds`` weighted runs against a mixture target: weighted mean,
    component weights (mean posterior component probabilities under ``tilted``) and ``Z``
    within ``k_se`` standard errors (over seeds) of the closed form."""
    w = jax.vmap(pk.resampling.normalize)(res.log_weights)
    resp = jax.vmap(jax.vmap(tilted.fn.responsibilities, in_axes=(0, None)), in_axes=(0, None))(
        res.samples, 0.0
    )
    estimates = [
        (jnp.einsum("sn,snd->sd", w, res.samples), jnp.sum(tw[:, None] * tm, axis=0)),
        (jnp.einsum("sn,snk->sk", w, resp), tw),
        (jnp.exp(res.log_evidence - log_z), 1.0),  # unbiased for 1
    ]
    for est, exact in estimates:
        se = jnp.std(est, axis=0) / np.sqrt(seeds)
        assert bool(jnp.all(jnp.abs(jnp.mean(est, axis=0) - exact) < k_se * se + 1e-3)), (
            jnp.mean(est, axis=0), exact, se)  # fmt: skip
    assert not bool(jnp.any(res.failed))


def test_fk_steering_of_the_mixture_flow_reaches_the_tilted_mixture():
    """FK steering of the flow (through its VP rewrite, on a Karras grid) targets
    p(x) exp(lmbda a.x) / Z: its weighted mean, component weights (mean posterior
    probabilities of the tilted mixture's components) and Z match the closed form."""
    lmbda, n, seeds = 1.0, 512, 8
    tw, tm, tc, log_z = pk.diffusion.tilted_gaussian_mixture(W, MU, stds=SD, direction=A,
                                                             lmbda=lmbda)  # fmt: skip
    tilted = pk.diffusion.gaussian_mixture_flow(tw, tm, covs=tc)  # its p_0 is the target
    grid = pk.diffusion.sampling_grid("karras", 100, schedule=VP.schedule)
    res = jax.vmap(
        lambda k: pk.diffusion.fk_steering(
            k, VP, REWARD, num_particles=n, lmbda=lmbda, grid=grid, sampler="em"
        )  # fmt: skip
    )(jax.random.split(jax.random.key(3), seeds))
    check_weighted_target(res, tilted, tw, tm, log_z, seeds)


# ---------------------------------------------------------------------- rollover budget forcing
K_RBF = 20


def _rbf(key, reward_fn=REWARD, **kw):
    kw.setdefault("num_steps", K_RBF)
    kw.setdefault("num_samples", 64)
    return pk.diffusion.rollover_budget_forcing(key, FLOW, reward_fn, progress_bar=True, **kw)


def _quotas(budget, stochastic_last):
    """Each step's share of budget - 1 (the initial evaluation): 1 for a deterministic last
    step, the rest evenly over the stochastic steps, remainder to the earliest."""
    num_sto = K_RBF if stochastic_last else K_RBF - 1
    spare = budget - 1 - (K_RBF - num_sto)
    base, rem = divmod(spare, num_sto)
    quota = [base + (i < rem) for i in range(num_sto)]
    return np.array(quota + ([] if stochastic_last else [1]))


def test_rbf_without_improvement_spends_each_share(capsys):
    """A reward that never improves (zero everywhere): every step draws exactly its share,
    nothing rolls over, the whole budget is spent; the progress bar ends at K."""
    res = _rbf(jax.random.key(0), LinearReward(jnp.zeros(2)), budget=97)
    jax.effects_barrier()
    assert f"{K_RBF}/{K_RBF}" in capsys.readouterr().err
    np.testing.assert_array_equal(res.evaluations_per_step, np.tile(_quotas(97, False), (64, 1)))
    assert bool(jnp.all(res.num_evaluations == 97))
    # a grid that stops at t = 0.02: the last DDPM step is stochastic and gets a share too
    grid = pk.diffusion.time_grid(K_RBF, t_min=0.02)[::-1]
    res = _rbf(jax.random.key(1), LinearReward(jnp.zeros(2)), budget=97, grid=grid,
               num_steps=None)  # fmt: skip
    np.testing.assert_array_equal(res.evaluations_per_step[0], _quotas(97, True))


def test_rbf_rolls_unused_budget_over():
    """With a reward that improves often, steps stop early and later steps use the rolled
    over budget: at every step used <= share + leftover, and the accounting adds up."""
    budget = 4 * (K_RBF + 1)
    res = _rbf(jax.random.key(2), budget=budget)
    used = np.asarray(res.evaluations_per_step)
    quota = _quotas(budget, False)
    leftover = np.zeros(used.shape[0], np.int64)
    for k in range(K_RBF - 1):  # stochastic steps
        allowance = quota[k] + leftover
        assert np.all((used[:, k] >= 1) & (used[:, k] <= allowance))
        leftover = allowance - used[:, k]
    assert np.all(used[:, -1] == 1)  # the deterministic last step
    assert np.any(used[:, :-1] < quota[:-1])  # some steps stopped early ...
    assert np.any(used[:, :-1] > quota[:-1])  # ... and others spent rolled-over budget
    np.testing.assert_array_equal(res.num_evaluations, 1 + used.sum(1))
    assert bool(jnp.all(res.num_evaluations <= budget))
    np.testing.assert_allclose(res.rewards, jax.vmap(REWARD)(res.samples), rtol=1e-5)


def test_rbf_raises_the_reward_and_minimal_budget_is_plain_sampling():
    base = _rbf(jax.random.key(4), budget=K_RBF + 1)  # one candidate per step
    assert bool(jnp.all(base.evaluations_per_step == 1))
    rbf = _rbf(jax.random.key(4), budget=8 * (K_RBF + 1))
    se = float(jnp.std(base.rewards)) / np.sqrt(64)
    assert float(jnp.mean(rbf.rewards)) > float(jnp.mean(base.rewards)) + K_SE * se
    # unsteered rewards: the flow's own law, mean a . E[x_0]
    exact = float(np.array(W) @ np.array(MU) @ np.asarray(A))
    assert abs(float(jnp.mean(base.rewards)) - exact) < K_SE * se


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget": K_RBF}, "at least"),
        ({"budget": 100.0}, "integer"),
        ({"budget": True}, "integer"),
        ({"budget": 100, "num_samples": 0}, "num_samples"),
        ({"budget": 100, "sampler": "ddim", "eta": 0.0}, "eta"),
    ],
)
def test_rbf_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pk.diffusion.rollover_budget_forcing(jax.random.key(0), FLOW, REWARD,
                                             num_steps=K_RBF, **kwargs)  # fmt: skip
    with pytest.raises(ValueError, match="model"):
        pk.diffusion.rollover_budget_forcing(jax.random.key(0), "flow", REWARD, budget=100)
    with pytest.raises(ValueError, match="reward_fn"):
        pk.diffusion.rollover_budget_forcing(jax.random.key(0), FLOW, lambda x: x, budget=200)
