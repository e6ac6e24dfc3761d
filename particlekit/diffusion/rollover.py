"""Rollover budget forcing (RBF): a search baseline for a fixed budget of network
evaluations, after Kim, Yoon, Hwang & Sung 2025, "Inference-Time Scaling for Flow Models
via Stochastic Generation and Rollover Budget Forcing".

The paper's recipe for flow models is (i) sample with a stochastic (SDE) sampler instead of
the ODE, so that each step can propose several candidates; (ii) optionally convert the
linear interpolant to a variance-preserving one (here: ``FlowModel.as_diffusion_model``,
an exact rewrite); (iii) at every step propose candidates from the SDE kernel, score each
by the reward of its Tweedie prediction ``x0_hat``, and keep the best; and (iv) *rollover
budget forcing*: the budget of network evaluations is split evenly over the steps, and
when a step finds a candidate better than the current sample before its share is spent,
it stops there and the unused evaluations roll over to the next step.

What is implemented (our reading of the paper's description; there are no importance
weights and no target distribution, as for ``svdd``). Each of ``num_samples`` chains runs
independently with the whole ``budget``:

1. ``x_{g_0} ~ N(0, I)``; one evaluation gives ``eps_hat(x, g_0)``, hence ``x0_hat`` and the
   current reward ``r_cur = r(x0_hat)``.
2. The remaining ``budget - 1`` evaluations are split over the steps: a step whose kernel
   is deterministic (the DDPM / DDIM step to ``t = 0``) gets 1, the others an equal share
   (the remainder to the earliest steps). Step ``k`` may use its share plus the leftover
   ``L`` of earlier steps.
3. At step ``k`` (``t = g_k -> s = g_{k+1}``) candidates
   ``y_j ~ N(mean(x, t, s), var(t, s) I)`` of the model's reverse kernel are drawn one at a
   time. Each costs one evaluation, ``eps_hat(y_j, s)``, which gives its reward
   ``r_j = r(x0_hat(y_j, s))`` (at the last step ``r_j = r(y_j)``, the reward of the
   sample itself) and, for the kept candidate, the next step's kernel (so nothing is
   evaluated twice). The step stops at the first ``r_j > r_cur`` (an improvement) or when
   its allowance is spent; the best candidate drawn is kept (the improving one, or the
   best of a step without improvement), ``r_cur`` becomes its reward, and the unused
   allowance rolls over: ``L <- share + L - used``.

``num_evaluations = 1 + sum_k used_k <= budget`` (every candidate is counted once, the
last step's included although its reward needs no network call; the leftover of the last
step is not spent). With ``budget = num_steps + 1`` every step draws one candidate: plain
ancestral sampling. NaN rewards count as ``-inf``; final rewards that were NaN are reported
with a ``RuntimeWarning`` after an eager call, as in ``svdd`` and ``best_of_n``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from particlekit import kernels
from particlekit.diffusion.flow import FlowModel
from particlekit.diffusion.model import (
    DiffusionModel,
    check_reward,
    check_sampler,
    warn_coarse_em,
)
from particlekit.diffusion.schedules import sampling_grid
from particlekit.run import resolve_progress_bar, run, warn_if_counted

__all__ = ["RBFResult", "rollover_budget_forcing"]


class RBFResult(NamedTuple):
    """Output of ``rollover_budget_forcing`` (``N = num_samples`` chains, ``K`` steps).

    Attributes
    ----------
    samples : Array of shape (N, *shape)
        The final sample of each chain.
    rewards : Array of shape (N,)
        Their rewards ``r(x)`` (``-inf`` where the reward was NaN: that sample is then an
        arbitrary pick; an eager call warns, ``RuntimeWarning``).
    num_evaluations : Array of shape (N,), int32
        Network evaluations used by each chain (at most ``budget``).
    evaluations_per_step : Array of shape (N, K), int32
        Candidates drawn at each step (each one evaluation); a step that used less than
        its allowance found an improvement and rolled the rest over.
    """

    samples: jax.Array
    rewards: jax.Array
    num_evaluations: jax.Array
    evaluations_per_step: jax.Array

    def to_inference_data(self):
        """The run for ArviZ (``particlekit.arviz.from_rollover``): the samples as
        ``posterior`` draws with ``reward`` / ``num_evaluations``, and the evaluations
        drawn at each step."""
        from particlekit.arviz import from_rollover

        return from_rollover(self)


class _Chain(NamedTuple):
    x: jax.Array  # the current sample x_t
    eps: jax.Array  # eps_hat(x, t), reused by the next reverse kernel
    reward: jax.Array  # r(x0_hat(x, t)) (after the last step: r(x)), NaN read as -inf
    nan: jax.Array  # bool, the reward was NaN
    leftover: jax.Array  # int32, evaluations rolled over from earlier steps
    evals: jax.Array  # int32 (K,), candidates drawn at each step


def _check_budget(budget, num_steps: int):
    """A Python / NumPy integer or a 0-d integer array; a tracer (under ``jax.jit``: the
    budget is a traced input of ``_rbf``) is checked for its type only."""
    dtype = getattr(budget, "dtype", None)
    if isinstance(budget, jax.core.Tracer):
        if jnp.ndim(budget) != 0 or not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"budget must be a scalar integer, got {budget!r}")
        return budget
    if isinstance(budget, bool) or (dtype is not None and not jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"budget must be an integer number of evaluations, got {budget!r}")
    try:
        budget = operator.index(budget)  # int, NumPy integer, concrete 0-d integer array
    except TypeError:
        raise ValueError(
            f"budget must be an integer number of evaluations, got {budget!r}"
        ) from None
    if int(budget) < num_steps + 1:
        raise ValueError(
            f"budget must be at least num_steps + 1 = {num_steps + 1} (one evaluation for the "
            f"initial sample and one candidate per step), got {budget}"
        )
    kernels.check_size(int(budget), "budget")
    return int(budget)


def rollover_budget_forcing(
    key: jax.Array,
    model: DiffusionModel | FlowModel,
    reward_fn: Callable,
    *,
    num_steps: int | None = None,
    budget: int,
    num_samples: int = 1,
    sampler: str = "ddpm",
    eta: float = 1.0,
    grid="uniform",
    progress_bar: bool | None = None,
) -> RBFResult:
    """Reward search under a fixed budget of network evaluations by rollover budget
    forcing (Kim et al. 2025; the algorithm is spelled out in the module docstring).

    Parameters
    ----------
    key : PRNG key
    model : DiffusionModel or FlowModel
        A ``FlowModel`` is used through ``model.as_diffusion_model()`` (the linear VP
        schedule; pass ``flow.as_diffusion_model(schedule)`` for another), whose reverse
        kernels are the stochastic sampler the candidates come from.
    reward_fn : callable
        ``r(x_0) -> scalar`` for ONE sample (NaN counts as ``-inf``; NaN final rewards are
        reported with a ``RuntimeWarning`` after an eager call, none under ``jit``).
    num_steps : int, optional
        Steps of a named ``grid`` (default 100); with an array ``grid``, ``len(grid) - 1``.
    budget : int
        Network evaluations per chain, at least ``num_steps + 1``; a 0-d integer array
        too, traced under ``jax.jit`` (then its value is not checked, and a budget below
        ``num_steps + 1`` acts as ``num_steps + 1``).
    num_samples : int
        Independent chains, each with the whole ``budget``.
    sampler : {"ddpm", "ddim", "em"}, eta : float
        The reverse kernel the candidates are drawn from (DDIM needs ``eta > 0``).
    grid : {"uniform", "quadratic", "karras"} or array
        The reverse-time grid (``sampling_grid``).
    progress_bar : bool, optional
        A tqdm bar over the steps, as in ``fk_steering`` (``None``: shown when standard
        error is a terminal).

    Returns
    -------
    RBFResult
        ``samples``, ``rewards``, ``num_evaluations``, ``evaluations_per_step``.

    Notes
    -----
    One compiled function (``jax.jit`` with static shapes): the steps run under
    ``lax.scan`` (the engine's ``run`` with a ``move`` kernel over the chains), and each
    step's candidates under a ``lax.while_loop`` bounded by its allowance. ``budget`` is a
    traced value: other budgets reuse the compilation.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> flow = pk.diffusion.gaussian_mixture_flow([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]],
    ...                                           stds=0.5)
    >>> res = pk.diffusion.rollover_budget_forcing(jax.random.key(0), flow, lambda x: x[0],
    ...                                            num_steps=20, budget=100, num_samples=4)
    >>> res.samples.shape, bool(jnp.all(res.num_evaluations <= 100))
    ((4, 2), True)
    """
    kernels.check_key(key)
    if isinstance(model, FlowModel):
        model = model.as_diffusion_model()
    if not isinstance(model, DiffusionModel):
        raise ValueError(
            f"model must be a DiffusionModel or a FlowModel, got {type(model).__name__}"
        )
    if not callable(reward_fn):
        raise ValueError("reward_fn must be a callable r(x_0) -> scalar")
    num_samples = kernels.check_num_particles(num_samples, "num_samples")
    check_sampler(sampler, eta)
    grid = sampling_grid(grid, num_steps, schedule=model.schedule)
    num_steps = int(grid.shape[0]) - 1
    budget = _check_budget(budget, num_steps)
    check_reward(model, reward_fn)
    warn_coarse_em(model.schedule, grid, sampler, "rollover_budget_forcing")
    result, nan_rewards = _rbf(
        key, model, reward_fn, grid, jnp.asarray(budget, jnp.int32), num_samples=num_samples,
        sampler=sampler, eta=float(eta), progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip
    # as svdd: a NaN final reward (reported as -inf) made its pick blind
    warn_if_counted(
        nan_rewards,
        f"rollover_budget_forcing: {{count}} of {num_samples} final rewards are NaN (NaN "
        "counts as -inf and is reported as -inf in rewards, so those picks were blind); "
        "check reward_fn",
    )
    return result


def _quotas(model, ts, ss, budget, sampler, eta):
    """Per-step allowance (int32 (K,)) and whether each step's kernel is stochastic."""
    zeros = jnp.zeros(model.shape, jnp.result_type(float))
    var = jax.vmap(
        lambda t, s: model.reverse_mean_var(zeros, t, s, sampler=sampler, eta=eta, eps=zeros)[1]
    )(ts, ss)
    stochastic = var > 0
    num_steps = ts.shape[0]
    n_sto = jnp.sum(stochastic).astype(jnp.int32)
    # evaluations for the stochastic steps; at least one each (a traced budget is not
    # checked: below num_steps + 1 it acts as num_steps + 1, never a step without a move)
    spare = jnp.maximum(budget - 1 - (num_steps - n_sto), n_sto)
    per = jnp.maximum(n_sto, 1)
    base, rem = spare // per, spare % per
    rank = jnp.cumsum(stochastic.astype(jnp.int32)) - 1
    quota = jnp.where(stochastic, base + (rank < rem).astype(jnp.int32), 1)
    return quota.astype(jnp.int32), stochastic


@eqx.filter_jit
def _rbf(key, model, reward_fn, grid, budget, *, num_samples, sampler, eta, progress_bar=False):
    dtype = jnp.result_type(float)
    ts, ss = grid[:-1], grid[1:]
    num_steps = ts.shape[0]
    quota, stochastic = _quotas(model, ts, ss, budget, sampler, eta)
    is_last = jnp.arange(num_steps) == num_steps - 1
    schedule = model.schedule

    def x0_from_eps(x, e, t):
        ab = schedule.alpha_bar(t)
        return (x - jnp.sqrt(1.0 - ab) * e) / jnp.sqrt(ab)

    def clean(r):
        """The reward with NaN read as ``-inf``, and whether it was NaN."""
        r = jnp.asarray(r, dtype)
        return jnp.where(jnp.isnan(r), -jnp.inf, r), jnp.isnan(r)

    def sample_init(k):
        x = model.sample_prior(k)
        e = model.eps(x, grid[0])
        r, nan = clean(reward_fn(x0_from_eps(x, e, grid[0])))
        zero = jnp.zeros((), jnp.int32)
        return _Chain(x, e, r, nan, zero, jnp.zeros((num_steps,), jnp.int32))

    def step(key, c: _Chain, inputs):
        k, t, s, share, sto, last = inputs
        mean, var = model.reverse_mean_var(c.x, t, s, sampler=sampler, eta=eta, eps=c.eps)
        allowance = jnp.where(sto, share + c.leftover, 1)
        sd = jnp.sqrt(var)

        def evaluate(y):
            def final(y):
                return *clean(reward_fn(y)), jnp.zeros_like(y)

            def inner(y):
                e = model.eps(y, s)
                return *clean(reward_fn(x0_from_eps(y, e, s))), e

            return jax.lax.cond(last, final, inner, y)

        def cond(carry):
            j, _, _, _, _, improved = carry
            return (j < allowance) & ~improved

        def body(carry):
            j, y_best, e_best, r_best, nan_best, _ = carry
            noise = jax.random.normal(jax.random.fold_in(key, j), jnp.shape(mean), mean.dtype)
            y = mean + sd * noise
            r, nan, e = evaluate(y)
            take = (j == 0) | (r > r_best)
            return (
                j + 1,
                jnp.where(take, y, y_best),
                jnp.where(take, e, e_best),
                jnp.where(take, r, r_best),
                jnp.where(take, nan, nan_best),
                r > c.reward,
            )

        start = (jnp.zeros((), jnp.int32), c.x, c.eps, jnp.full((), -jnp.inf, dtype), c.nan,
                 False)  # fmt: skip
        used, y, e, r, nan, _ = jax.lax.while_loop(cond, body, start)
        leftover = jnp.where(sto, allowance - used, c.leftover + share - used)
        return _Chain(y, e, r, nan, leftover, c.evals.at[k].set(used))

    k_init, k_run = jax.random.split(key)
    state = kernels.init(k_init, sample_init, num_samples)
    inputs = (jnp.arange(num_steps, dtype=jnp.int32), ts, ss, quota, stochastic, is_last)
    final, _ = run(
        k_run, kernels.move(step), state, inputs, keep_history=False, progress_bar=progress_bar
    )
    chains = final.particles
    result = RBFResult(
        samples=chains.x,
        rewards=chains.reward,
        num_evaluations=1 + jnp.sum(chains.evals, axis=1),
        evaluations_per_step=chains.evals,
    )
    return result, chains.nan  # the NaN final rewards, for the warning
