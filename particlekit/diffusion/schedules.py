"""Noise schedules, the Ornstein–Uhlenbeck reference process and time grids: the shared
base of the diffusion recipes (PDDS, FK steering, FK correctors).

Convention (variance preserving, time ``t`` in ``[0, 1]``, data at ``t = 0``): the forward
(noising) process started at ``x_0`` has

    x_t = sqrt(alpha_bar(t)) x_0 + sigma * sqrt(1 - alpha_bar(t)) * eps,  eps ~ N(0, I),

an Ornstein–Uhlenbeck process with stationary law ``N(0, sigma^2 I)``. Between times
``s < t`` it moves by ``x_t = sqrt(1 - lambda_{t,s}) x_s + sigma sqrt(lambda_{t,s}) eps``
with ``lambda_{t,s} = 1 - alpha_bar(t) / alpha_bar(s)`` (PDDS paper's ``lambda``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = [
    "NoiseSchedule",
    "linear_schedule",
    "cosine_schedule",
    "get_schedule",
    "time_grid",
    "ou_transition_mean_var",
]


@dataclass(frozen=True)
class NoiseSchedule:
    """A variance-preserving noise schedule ``alpha_bar : [0, 1] -> (0, 1]``.

    Use ``linear_schedule`` or ``cosine_schedule`` to build one. Hashable, so it
    can be a static argument of jitted functions.

    Attributes
    ----------
    kind : str
        ``"linear"`` or ``"cosine"``.
    beta_min, beta_max : float
        Linear schedule: ``beta(t) = beta_min + t (beta_max - beta_min)``.
    s : float
        Cosine schedule offset (Nichol & Dhariwal 2021).
    min_alpha_bar : float
        ``alpha_bar`` is clipped below at this value, so ``t = 1`` is never exactly
        pure noise and every ratio stays finite.
    """

    kind: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    s: float = 0.008
    min_alpha_bar: float = 1e-5

    def alpha_bar(self, t):
        """Signal fraction ``alpha_bar(t)``: 1 at ``t = 0``, near 0 at ``t = 1``."""
        t = jnp.asarray(t, jnp.result_type(float))
        if self.kind == "linear":
            log_ab = -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
            value = jnp.exp(log_ab)
        elif self.kind == "cosine":
            f = lambda u: jnp.cos((u + self.s) / (1.0 + self.s) * math.pi / 2) ** 2
            value = f(t) / f(jnp.zeros_like(t))
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        return jnp.clip(value, self.min_alpha_bar, 1.0)

    def log_alpha_bar(self, t):
        """``log alpha_bar(t)``."""
        return jnp.log(self.alpha_bar(t))

    def sigma(self, t):
        """Noise fraction ``sqrt(1 - alpha_bar(t))`` (times the reference scale)."""
        return jnp.sqrt(1.0 - self.alpha_bar(t))

    def lmbda(self, t, s):
        """``lambda_{t,s} = 1 - alpha_bar(t) / alpha_bar(s)`` for ``s <= t``: the noise
        variance fraction added when going forward from ``s`` to ``t``."""
        return -jnp.expm1(self.log_alpha_bar(t) - self.log_alpha_bar(s))

    def beta(self, t):
        """Instantaneous rate ``beta(t) = -d log alpha_bar / dt`` (forward SDE
        ``dx = -beta x / 2 dt + sigma sqrt(beta) dW``)."""
        return -jax.grad(lambda u: self.log_alpha_bar(u))(jnp.asarray(t, jnp.float32))


def linear_schedule(beta_min: float = 0.1, beta_max: float = 20.0) -> NoiseSchedule:
    """The VP-SDE linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)``
    (Song et al. 2021). ``alpha_bar(1) = exp(-(beta_min + beta_max) / 2)``.

    Examples
    --------
    >>> sched = linear_schedule()
    >>> float(sched.alpha_bar(0.0))
    1.0
    """
    if not 0 <= beta_min <= beta_max:
        raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
    return NoiseSchedule(kind="linear", beta_min=float(beta_min), beta_max=float(beta_max))


def cosine_schedule(s: float = 0.008, min_alpha_bar: float = 1e-5) -> NoiseSchedule:
    """The cosine schedule ``alpha_bar(t) ∝ cos^2((t + s) / (1 + s) * pi / 2)`` (Nichol &
    Dhariwal 2021), clipped below at ``min_alpha_bar``."""
    if s <= 0:
        raise ValueError(f"the cosine offset s must be positive, got {s}")
    return NoiseSchedule(kind="cosine", s=float(s), min_alpha_bar=float(min_alpha_bar))


def get_schedule(schedule) -> NoiseSchedule:
    """Resolve ``"linear"``, ``"cosine"`` or a ``NoiseSchedule``."""
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if schedule == "linear":
        return linear_schedule()
    if schedule == "cosine":
        return cosine_schedule()
    raise ValueError(f"schedule must be 'linear', 'cosine' or a NoiseSchedule, got {schedule!r}")


def time_grid(num_steps: int, t_min: float = 0.0, t_max: float = 1.0) -> jax.Array:
    """Uniform grid ``t_min = t_0 < ... < t_K = t_max`` with ``K = num_steps`` intervals.

    Reverse-time recipes walk it backwards, from ``t_max`` (noise) to ``t_min`` (data).
    """
    if int(num_steps) <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
    return jnp.linspace(t_min, t_max, int(num_steps) + 1)


def ou_transition_mean_var(schedule: NoiseSchedule, x_s, s, t, sigma: float = 1.0):
    """Mean and (isotropic) variance of the forward OU transition ``x_t | x_s``, ``s < t``:
    ``N(sqrt(1 - lambda_{t,s}) x_s, sigma^2 lambda_{t,s} I)``."""
    lam = schedule.lmbda(t, s)
    return jnp.sqrt(1.0 - lam) * x_s, sigma**2 * lam
