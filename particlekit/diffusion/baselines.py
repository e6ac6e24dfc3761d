"""Baselines for reward steering of diffusion models, as recipes over the same engine
primitives as ``fk_steering``: best-of-N and SVDD-style
"pick among children" (Li et al. 2024, "Derivative-Free Guidance in Continuous and Discrete
Diffusion Models with Soft Value-Based Decoding").

Neither has importance weights nor an evidence estimate: best-of-N returns the best of
``N`` unsteered samples; SVDD moves every particle by drawing ``M`` children from the
reverse kernel and keeping one, chosen by the soft value ``exp(v / alpha)`` of the
children's Tweedie predictions (``alpha = 0``: the arg-max, SVDD-PM). With ``alpha = 1 /
lmbda`` SVDD approximates ``p exp(lmbda r)`` only heuristically (no final correction).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from particlekit import kernels, resampling
from particlekit.diffusion.flow import FlowModel
from particlekit.diffusion.model import (
    DiffusionModel,
    _sample,
    check_reward,
    check_sampler,
    warn_coarse_em,
)
from particlekit.diffusion.schedules import sampling_grid
from particlekit.run import (
    check_sharding,
    constrain_particles,
    resolve_progress_bar,
    run,
    warn_if_counted,
)

__all__ = ["BestOfNResult", "SVDDResult", "best_of_n", "svdd"]


class BestOfNResult(NamedTuple):
    """Output of ``best_of_n``.

    Attributes
    ----------
    best : Array (*shape)
        The sample with the highest reward (NaN rewards count as ``-inf``).
    best_reward : Array ()
    samples : Array (N, *shape)
        All unsteered samples.
    rewards : Array (N,)
    """

    best: jax.Array
    best_reward: jax.Array
    samples: jax.Array
    rewards: jax.Array

    def to_inference_data(self):
        """The run for ArviZ (``particlekit.arviz.from_best_of_n``): the candidates as
        ``posterior`` draws with ``reward`` and ``is_best``, and the chosen sample."""
        from particlekit.arviz import from_best_of_n

        return from_best_of_n(self)


class SVDDResult(NamedTuple):
    """Output of ``svdd``.

    Attributes
    ----------
    samples : Array (N, *shape)
        Equally weighted final particles.
    rewards : Array (N,)
        Their rewards ``r(x_0)``.
    """

    samples: jax.Array
    rewards: jax.Array

    def to_inference_data(self):
        """The run for ArviZ (``particlekit.arviz.from_svdd``): the particles as
        ``posterior`` draws with their ``reward``."""
        from particlekit.arviz import from_svdd

        return from_svdd(self)


def _check(model, reward_fn, sampler, eta):
    """The arguments' checks before tracing. The reward's shape check (``check_reward``,
    which traces it) runs inside the jitted functions, while tracing: once per compiled
    configuration instead of at every call."""
    if not isinstance(model, DiffusionModel):
        hint = ""
        if isinstance(model, FlowModel):
            hint = "; pass flow.as_diffusion_model(), an exact rewrite of a FlowModel"
        raise ValueError(f"model must be a DiffusionModel, got {type(model).__name__}{hint}")
    if not callable(reward_fn):
        raise ValueError("reward_fn must be a callable r(x_0) -> scalar")
    check_sampler(sampler, eta)


def best_of_n(
    key: jax.Array,
    model: DiffusionModel,
    reward_fn: Callable,
    *,
    num_samples: int,
    num_steps: int | None = None,
    sampler: str = "ddpm",
    eta: float = 1.0,
    grid="uniform",
) -> BestOfNResult:
    """Draw ``num_samples`` unsteered samples (``DiffusionModel.sample``, with
    ``num_steps``, ``sampler``, ``eta`` and the time ``grid`` as there) and keep the one
    with the highest reward.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> res = pk.diffusion.best_of_n(jax.random.key(0), model, lambda x: x[0],
    ...                              num_samples=16, num_steps=20)
    >>> res.best.shape
    (2,)
    """
    kernels.check_key(key)
    _check(model, reward_fn, sampler, eta)
    num_samples = kernels.check_num_particles(num_samples, "num_samples")
    grid = sampling_grid(grid, num_steps, schedule=model.schedule)
    warn_coarse_em(model.schedule, grid, sampler, "best_of_n")
    result = _best_of_n(key, model, reward_fn, num_samples, grid, sampler, float(eta))
    if not isinstance(result.rewards, jax.core.Tracer) and bool(jnp.all(jnp.isnan(result.rewards))):
        warnings.warn(
            "best_of_n: every reward is NaN, so the pick (sample 0) is arbitrary and "
            "best_reward is NaN; check reward_fn",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


@eqx.filter_jit
def _best_of_n(key, model, reward_fn, num_samples, grid, sampler, eta):
    """``DiffusionModel.sample`` and the pick, one jitted call."""
    check_reward(model, reward_fn)  # while tracing only (see _check)
    return _pick_best(reward_fn, _sample(key, model, num_samples, grid, sampler, eta))


def _pick_best(reward_fn, samples):
    rewards = jax.vmap(reward_fn)(samples)
    i = jnp.argmax(jnp.where(jnp.isnan(rewards), -jnp.inf, rewards))
    return BestOfNResult(samples[i], rewards[i], samples, rewards)


def svdd(
    key: jax.Array,
    model: DiffusionModel,
    reward_fn: Callable,
    *,
    num_particles: int,
    num_children: int = 4,
    num_steps: int | None = None,
    alpha: float = 0.0,
    sampler: str = "ddpm",
    eta: float = 1.0,
    sharding=None,
    progress_bar: bool | None = None,
    grid="uniform",
) -> SVDDResult:
    """SVDD-style decoding: at every reverse step each particle draws ``num_children``
    children ``x_s^(j) ~ p(. | x_t)`` and keeps one, picked with probability
    ``∝ exp(v_j / alpha)`` where ``v_j = r(x0_hat(x_s^(j), s))`` (``r(x_0)`` at the last
    step), or the arg-max when ``alpha = 0``. Built as one ``particlekit.move``
    kernel (the pick uses ``particlekit.resampling.multinomial``) run by
    ``particlekit.run``. Cost: ``num_particles * num_children`` network calls per step.
    ``sharding`` (a ``jax.sharding.Sharding`` of the particle axis, optional) spreads the
    particles over devices as in ``fk_steering``; see the Scaling page. ``progress_bar``
    shows a bar over the steps (``None``: when standard error is a terminal). ``grid``:
    the reverse-time grid, a spacing name or decreasing times (as in ``fk_steering``;
    ``num_steps`` counts the steps of a named grid, default 100). NaN rewards count as
    ``-inf`` in the picks; NaN final rewards are reported with a ``RuntimeWarning`` after
    an eager call, as in ``best_of_n``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> res = pk.diffusion.svdd(jax.random.key(0), model, lambda x: x[0], num_particles=8,
    ...                         num_children=4, num_steps=20)
    >>> res.samples.shape
    (8, 2)
    """
    kernels.check_key(key)
    _check(model, reward_fn, sampler, eta)
    num_particles = kernels.check_num_particles(num_particles)
    num_children = kernels.check_num_particles(num_children, "num_children")
    grid = sampling_grid(grid, num_steps, schedule=model.schedule)
    # alpha is a traced input of _svdd: under jax.jit it is a tracer, checked only when
    # concrete (float() of a tracer was a ConcretizationTypeError)
    if not isinstance(alpha, jax.core.Tracer) and not float(alpha) >= 0.0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    sharding = check_sharding(sharding, num_particles, key=key)
    warn_coarse_em(model.schedule, grid, sampler, "svdd")
    result = _svdd(
        key, model, reward_fn, jnp.asarray(alpha, jnp.result_type(float)), grid,
        num_particles=num_particles, num_children=num_children, sampler=sampler,
        eta=float(eta), sharding=sharding, progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip
    # as best_of_n: every child of the last pick had a NaN reward
    warn_if_counted(
        jnp.isnan(result.rewards),
        f"svdd: {{count}} of {num_particles} final rewards are NaN (NaN counts as -inf, so "
        "those picks were blind); check reward_fn",
    )
    return result


def _soft_logits(values, alpha):
    """Logits ``v / alpha`` of the soft pick, with its limit where a value is ``+inf``: the
    children of value ``+inf`` share all the mass (``inf / alpha`` gave NaN weights, and the
    pick then never took an infinitely better child). Where every value is ``-inf`` (NaN
    rewards count as ``-inf``) the pick is uniform instead of undefined."""
    logits = values / jnp.where(alpha > 0, alpha, 1.0)
    top = values == jnp.inf
    logits = jnp.where(jnp.any(top), jnp.where(top, 0.0, -jnp.inf), logits)
    return jnp.where(jnp.all(values == -jnp.inf), jnp.zeros_like(logits), logits)


@eqx.filter_jit
def _svdd(
    key, model, reward_fn, alpha, grid, *, num_particles, num_children, sampler, eta,
    sharding=None, progress_bar=False,
):  # fmt: skip
    check_reward(model, reward_fn)  # while tracing only (see _check)
    num_steps = grid.shape[0] - 1
    ts, ss = grid[:-1], grid[1:]
    last = jnp.arange(num_steps) == num_steps - 1

    def pick_child(key, x, inputs):
        t, s, is_last = inputs
        k_children, k_pick = jax.random.split(key)
        children = jax.vmap(lambda k: model.reverse_step(k, x, t, s, sampler=sampler, eta=eta))(
            jax.random.split(k_children, num_children)
        )
        values = jax.lax.cond(
            is_last,
            lambda c: jax.vmap(reward_fn)(c),
            lambda c: jax.vmap(lambda y: reward_fn(model.x0(y, s)))(c),
            children,
        )
        values = jnp.where(jnp.isnan(values), -jnp.inf, values)
        soft = resampling.multinomial(k_pick, _soft_logits(values, alpha), 1)[0]
        idx = jnp.where(alpha > 0, soft, jnp.argmax(values))
        return children[idx]

    k_init, k_run = jax.random.split(key)
    state = constrain_particles(kernels.init(k_init, model.sample_prior, num_particles), sharding)
    inputs = (ts, ss, last)
    final, _ = run(
        k_run,
        kernels.move(pick_child),
        state,
        inputs,
        keep_history=False,
        sharding=sharding,
        progress_bar=progress_bar,
    )
    return SVDDResult(final.particles, jax.vmap(reward_fn)(final.particles))
