"""Flow-matching models on the linear interpolant (rectified flow): the velocity, its
conversions to the noise, ``x0`` and score predictions, Euler ODE and Euler–Maruyama SDE
samplers, and an exact rewrite as a variance-preserving ``DiffusionModel`` so that the
steering recipes (``fk_steering``, ``best_of_n``, ``svdd``) apply unchanged.

Convention (as the diffusion models: data at ``t = 0``, noise at ``t = 1``):
``x_t = (1 - t) x_0 + t eps`` with ``eps ~ N(0, I)``. A network predicts the velocity
``v(x_t, t) = E[eps - x_0 | x_t]`` (Lipman et al. 2023; Liu et al. 2023), the minimiser of
``E || v(x_t, t) - (eps - x_0) ||^2``.

Conversions. Taking conditional expectations of ``x_t = (1 - t) x_0 + t eps`` and of
``v = eps - x_0`` given ``x_t`` gives two linear equations for ``E[x_0 | x_t]`` and
``E[eps | x_t]``:

* ``eps_hat(x, t) = E[eps | x_t = x] = x + (1 - t) v(x, t)``;
* ``x0_hat(x, t) = E[x_0 | x_t = x] = x - t v(x, t)``;
* ``score(x, t) = grad log p_t(x) = -eps_hat(x, t) / t`` (Tweedie: ``x_t | x_0`` is
  ``N((1 - t) x_0, t^2 I)``, so the score is ``-E[x_t - (1 - t) x_0 | x_t] / t^2``).

Samplers, from ``t = 1`` to ``t = 0`` on a uniform grid:

* ``"ode"``: Euler steps of the probability-flow ODE ``dx = v dt``;
* ``"sde"``: Euler–Maruyama steps of the reverse-time SDE
  ``dx = [v - (g^2 / 2) score] dt + g dW`` (``dt < 0``), which has the same marginals
  ``p_t`` for every diffusion coefficient ``g``. We take ``g(t)^2 = 2 eta t``
  (``eta = noise_scale``): then ``-(g^2 / 2) score = eta eps_hat`` has no ``1 / t``, the
  drift ``v + eta (x + (1 - t) v)`` is bounded on ``[0, 1]``, the noise vanishes at the data
  end, and ``eta = 0`` is the ODE. (The diffusion of the interpolant's own forward SDE,
  ``g^2 = 2 t / (1 - t)``, blows up at ``t = 1``; the DDPM sampler of
  ``as_diffusion_model`` plays that role.)

As a diffusion model. With a variance-preserving schedule (``a = sqrt(ab_tau)``,
``s = sqrt(1 - ab_tau)``), ``x_tau = a x_0 + s eps = (a + s) x_t`` at flow time
``t = s / (a + s)``: both processes have the same signal-to-noise ratio, so
``E[eps | x_tau] = eps_hat(x_tau / (a + s), t)`` exactly. ``as_diffusion_model`` wraps the
velocity in that ``"eps"`` prediction; its DDPM / DDIM / EM kernels sample the flow's data
distribution, and every recipe that takes a ``DiffusionModel`` takes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from particlekit.diffusion.model import DiffusionModel
from particlekit.diffusion.schedules import NoiseSchedule, get_schedule, time_grid
from particlekit.kernels import check_key, check_num_particles, init, move
from particlekit.run import run

__all__ = ["FlowModel", "FlowAsEps", "FLOW_SAMPLERS"]

FLOW_SAMPLERS = ("ode", "sde")


def _check_shape(x, shape, what="x"):
    """A ``ValueError`` (while tracing, shapes are static) when ``x`` is not ONE sample."""
    if tuple(jnp.shape(x)) != tuple(shape):
        raise ValueError(
            f"{what} must be ONE sample of shape {tuple(shape)}, got shape {tuple(jnp.shape(x))}"
        )


class FlowModel(eqx.Module):
    """A flow-matching model on the linear interpolant ``x_t = (1 - t) x_0 + t eps``.

    An equinox module, so the network parameters are PyTree leaves (jit / vmap friendly).

    Parameters
    ----------
    fn : callable
        ``fn(x, t) -> v`` the velocity ``E[eps - x_0 | x_t = x]`` for ONE sample ``x`` of
        shape ``shape`` and a scalar time ``t`` in ``[0, 1]``.
    shape : tuple of int
        Shape of one sample ``x_0``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> # data N(0, I): the exact velocity is (2t - 1) x / ((1 - t)^2 + t^2)
    >>> flow = pk.diffusion.FlowModel(lambda x, t: (2 * t - 1) * x / ((1 - t) ** 2 + t**2),
    ...                               shape=(2,))
    >>> flow.score(jnp.ones(2), 0.5)   # exact score -x / ((1 - t)^2 + t^2)
    Array([-2., -2.], dtype=float32)
    >>> flow.sample(jax.random.key(0), 8, num_steps=20).shape
    (8, 2)
    """

    fn: Callable
    shape: tuple = eqx.field(static=True)

    def __init__(self, fn, *, shape=()):
        if not callable(fn):
            raise ValueError("fn must be a callable fn(x, t) -> velocity")
        self.fn = fn
        self.shape = tuple(int(s) for s in ((shape,) if isinstance(shape, int) else shape))

    # ------------------------------------------------------------------ conversions
    def velocity(self, x, t):
        """Velocity ``v(x, t) = E[eps - x_0 | x_t = x]``, shape ``shape``."""
        _check_shape(x, self.shape)
        return self.fn(x, jnp.asarray(t, jnp.result_type(float)))

    def eps(self, x, t):
        """Predicted noise ``E[eps | x_t = x] = x + (1 - t) v(x, t)``."""
        return x + (1.0 - t) * self.velocity(x, t)

    def x0(self, x, t):
        """Predicted data ``E[x_0 | x_t = x] = x - t v(x, t)``."""
        return x - t * self.velocity(x, t)

    def score(self, x, t):
        """Score ``grad_x log p_t(x) = -(x + (1 - t) v(x, t)) / t`` (``t > 0``)."""
        return -self.eps(x, t) / t

    # ------------------------------------------------------------------ sampling
    def sample_prior(self, key):
        """One draw of ``x_1 ~ N(0, I)``."""
        return jax.random.normal(key, self.shape)

    def ode_step(self, x, t, s):
        """One Euler step of ``dx = v dt`` from ``t`` to ``s < t``."""
        return x + (s - t) * self.velocity(x, t)

    def sde_step(self, key, x, t, s, noise_scale: float = 1.0):
        """One Euler–Maruyama step of ``dx = [v - (g^2 / 2) score] dt + g dW`` from ``t``
        to ``s < t``, with ``g(t)^2 = 2 noise_scale t`` (see the module docstring)."""
        h = t - s
        v = self.velocity(x, t)
        drift = v + noise_scale * (x + (1.0 - t) * v)  # v - (g^2 / 2) score
        noise = jax.random.normal(key, jnp.shape(x), drift.dtype)
        return x - h * drift + jnp.sqrt(2.0 * noise_scale * t * h) * noise

    def sample(
        self, key, num_samples: int, *, num_steps: int = 100, method: str = "ode",
        noise_scale: float = 1.0,
    ):  # fmt: skip
        """``num_samples`` samples of the data distribution: ``num_steps`` steps of the
        ``"ode"`` (Euler) or ``"sde"`` (Euler–Maruyama, ``g^2 = 2 noise_scale t``) sampler
        on a uniform grid from ``t = 1`` to ``t = 0``, run by the engine (``init``,
        ``move``, ``run``) in one compiled function.

        Returns
        -------
        Array of shape (num_samples, *shape)
        """
        check_key(key)
        num_samples = check_num_particles(num_samples, "num_samples")
        num_steps = check_num_particles(num_steps, "num_steps")
        if method not in FLOW_SAMPLERS:
            raise ValueError(f"method must be one of {FLOW_SAMPLERS}, got {method!r}")
        noise_scale = float(noise_scale)
        if not (math.isfinite(noise_scale) and noise_scale >= 0.0):
            raise ValueError(f"noise_scale must be finite and >= 0, got {noise_scale}")
        return _sample(key, self, num_samples, num_steps, method, noise_scale)

    # ------------------------------------------------------------------ as a diffusion model
    def as_diffusion_model(self, schedule="linear") -> DiffusionModel:
        """The same data distribution as a variance-preserving ``DiffusionModel``
        (``prediction="eps"``): the velocity is evaluated at the flow time with the same
        signal-to-noise ratio (module docstring), so scores, ``x0`` predictions and the
        reverse kernels are exact rewrites of this model's.

        Parameters
        ----------
        schedule : NoiseSchedule or str
            ``"linear"``, ``"cosine"`` or a ``NoiseSchedule``.

        Examples
        --------
        >>> import jax, jax.numpy as jnp, particlekit as pk
        >>> flow = pk.diffusion.FlowModel(lambda x, t: (2 * t - 1) * x / ((1 - t) ** 2 + t**2),
        ...                               shape=(2,))
        >>> model = flow.as_diffusion_model()
        >>> score = model.score(jnp.ones(2), 0.3)   # N(0, I) is stationary: score -x
        >>> bool(jnp.allclose(score, -1.0))
        True
        """
        sched = get_schedule(schedule)
        return DiffusionModel(FlowAsEps(self, sched), sched, prediction="eps", shape=self.shape)


class FlowAsEps(eqx.Module):
    """``eps_hat(x_tau, tau)`` of a variance-preserving schedule from a ``FlowModel``:
    ``eps_hat(x_tau / (a + s), s / (a + s))`` with ``a = sqrt(ab_tau)``,
    ``s = sqrt(1 - ab_tau)`` (see ``FlowModel.as_diffusion_model``)."""

    flow: FlowModel
    schedule: NoiseSchedule = eqx.field(static=True)

    def __call__(self, x, tau):
        ab = self.schedule.alpha_bar(tau)
        a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        return self.flow.eps(x / (a + s), s / (a + s))


@eqx.filter_jit
def _sample(key, model, num_samples, num_steps, method, noise_scale):
    k_init, k_run = jax.random.split(key)
    grid = time_grid(num_steps)
    state = init(k_init, model.sample_prior, num_samples)

    def step_fn(k, x, ts):
        if method == "ode":
            return model.ode_step(x, ts[0], ts[1])
        return model.sde_step(k, x, ts[0], ts[1], noise_scale)

    inputs = jnp.stack([grid[1:][::-1], grid[:-1][::-1]], axis=1)
    final, _ = run(k_run, move(step_fn), state, inputs, keep_history=False)
    return final.particles
