"""Noise schedules, the Ornstein–Uhlenbeck reference process and time grids: the shared
base of the diffusion recipes (PDDS, FK steering, FK correctors).

Convention (variance preserving, time ``t`` in ``[0, 1]``, data at ``t = 0``): the forward
(noising) process started at ``x_0`` has

    x_t = sqrt(alpha_bar(t)) x_0 + sigma * sqrt(1 - alpha_bar(t)) * eps,  eps ~ N(0, I),

an Ornstein–Uhlenbeck process with stationary law ``N(0, sigma^2 I)``. Between times
``s < t`` it moves by ``x_t = sqrt(1 - lambda_{t,s}) x_s + sigma sqrt(lambda_{t,s}) eps``
with ``lambda_{t,s} = 1 - alpha_bar(t) / alpha_bar(s)`` (PDDS paper's ``lambda``).

Time grids. ``time_grid`` returns increasing times ``t_min = t_0 < ... < t_K = t_max``;
the samplers (``DiffusionModel.sample``, ``FlowModel.sample``, ``fk_steering``,
``best_of_n``, ``svdd``, ``rollover_budget_forcing``) take ``grid=``: a name
(``"uniform"``, ``"quadratic"``, ``"karras"``) or an array of the times *in the order the
sampler visits them*, strictly decreasing from the noise end (``t_max``, usually 1) to the
data end (``t_min``, usually 0). ``sampling_grid`` resolves and checks either (a
``ValueError`` before tracing).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NoiseSchedule",
    "linear_schedule",
    "cosine_schedule",
    "get_schedule",
    "time_grid",
    "sampling_grid",
    "GRIDS",
    "ou_transition_mean_var",
]

GRIDS = ("uniform", "quadratic", "karras")
KARRAS_SIGMA_MIN = 0.002  # Karras et al. 2022 (EDM): the smallest noise level of the grid
KARRAS_SIGMA_MAX = 80.0  # ... and the largest, used when sigma(t_max) is infinite (flows)


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

    def __post_init__(self):
        _check_schedule_parameters(self)

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

    def time_of_alpha_bar(self, alpha_bar):
        """The inverse of ``alpha_bar`` on concrete values (NumPy, float64): the time ``t``
        in ``[0, 1]`` with ``alpha_bar(t) = alpha_bar`` (values at or below
        ``min_alpha_bar`` map to the first time where the clip starts, at most 1).

        Examples
        --------
        >>> sched = linear_schedule()
        >>> round(float(sched.time_of_alpha_bar(float(sched.alpha_bar(0.3)))), 5)
        0.3
        """
        ab = np.clip(np.asarray(alpha_bar, np.float64), self.min_alpha_bar, 1.0)
        if self.kind == "linear":
            c = -np.log(ab)  # = beta_min t + (beta_max - beta_min) t^2 / 2
            delta = self.beta_max - self.beta_min
            if self.beta_max <= 0.0:
                raise ValueError("alpha_bar is constant (beta_min = beta_max = 0): no inverse")
            # the root of delta t^2 / 2 + beta_min t - c = 0 in its cancellation-free form
            t = 2.0 * c / (self.beta_min + np.sqrt(self.beta_min**2 + 2.0 * delta * c))
        elif self.kind == "cosine":
            f0 = math.cos(self.s / (1.0 + self.s) * math.pi / 2) ** 2
            u = np.arccos(np.sqrt(np.clip(ab * f0, 0.0, 1.0))) * 2.0 / math.pi
            t = u * (1.0 + self.s) - self.s
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        return np.clip(t, 0.0, 1.0)


def _check_schedule_parameters(schedule: NoiseSchedule) -> None:
    """A ``ValueError`` for a schedule outside its domain: an unknown ``kind``, a NaN or
    infinite parameter (``beta_max = inf`` made every ``alpha_bar`` 0 and the samples NaN,
    a NaN cosine offset ``s`` made them silently NaN), ``beta_min > beta_max``, a cosine
    offset ``s <= 0`` or a floor ``min_alpha_bar`` outside ``(0, 1)`` (0 divides by
    ``sqrt(alpha_bar) = 0`` at ``t = 1``; a floor of 1 or more removes all noise)."""
    if schedule.kind not in ("linear", "cosine"):
        raise ValueError(f"unknown schedule kind {schedule.kind!r}; use 'linear' or 'cosine'")
    values = (schedule.beta_min, schedule.beta_max, schedule.s, schedule.min_alpha_bar)
    if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
        raise ValueError(f"schedule parameters must be finite numbers, got {schedule}")
    if not 0.0 <= schedule.beta_min <= schedule.beta_max:
        raise ValueError(
            f"need 0 <= beta_min <= beta_max, got {schedule.beta_min}, {schedule.beta_max}"
        )
    if not schedule.s > 0.0:
        raise ValueError(f"the cosine offset s must be positive, got {schedule.s}")
    if not 0.0 < schedule.min_alpha_bar < 1.0:
        raise ValueError(f"min_alpha_bar must lie in (0, 1), got {schedule.min_alpha_bar}")


def linear_schedule(beta_min: float = 0.1, beta_max: float = 20.0) -> NoiseSchedule:
    """The VP-SDE linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)``
    (Song et al. 2021). ``alpha_bar(1) = exp(-(beta_min + beta_max) / 2)``.

    Examples
    --------
    >>> sched = linear_schedule()
    >>> float(sched.alpha_bar(0.0))
    1.0
    """
    return NoiseSchedule(kind="linear", beta_min=float(beta_min), beta_max=float(beta_max))


def cosine_schedule(s: float = 0.008, min_alpha_bar: float = 1e-5) -> NoiseSchedule:
    """The cosine schedule ``alpha_bar(t) ∝ cos^2((t + s) / (1 + s) * pi / 2)`` (Nichol &
    Dhariwal 2021), clipped below at ``min_alpha_bar`` (in ``(0, 1)``)."""
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


def _noise_levels(schedule):
    """``(sigma(t), t(sigma))`` on concrete float64 values: the noise-to-signal ratio of the
    variance-preserving schedule, ``sqrt((1 - ab_t) / ab_t)``, or of the flow's linear
    interpolant (``schedule="flow"``), ``t / (1 - t)``, and its inverse."""
    if isinstance(schedule, str) and schedule == "flow":

        def sigma(t):
            t = np.asarray(t, np.float64)
            with np.errstate(divide="ignore"):
                return np.where(t < 1.0, t / np.maximum(1.0 - t, 0.0), np.inf)

        return sigma, lambda sig: sig / (1.0 + sig)
    sched = get_schedule(schedule)

    def sigma(t):
        ab = np.asarray(sched.alpha_bar(np.asarray(t, np.float32)), np.float64)
        return np.sqrt((1.0 - ab) / ab)

    return sigma, lambda sig: sched.time_of_alpha_bar(1.0 / (1.0 + sig**2))


def _check_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if int(num_steps) <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    from particlekit.kernels import check_size

    return check_size(int(num_steps), "num_steps")


def time_grid(
    num_steps: int, t_min: float = 0.0, t_max: float = 1.0, *, spacing: str = "uniform",
    rho: float = 7.0, schedule="linear",
) -> jax.Array:  # fmt: skip
    """Increasing grid ``t_min = t_0 < ... < t_K = t_max`` with ``K = num_steps`` intervals.

    Reverse-time recipes walk it backwards, from ``t_max`` (noise) to ``t_min`` (data); pass
    ``time_grid(...)[::-1]`` (or just the ``spacing`` name) as their ``grid=``.

    Parameters
    ----------
    num_steps : int
        ``K``.
    t_min, t_max : float
        The ends, ``0 <= t_min < t_max <= 1``.
    spacing : {"uniform", "quadratic", "karras"}
        * ``"uniform"``: ``t_i = t_min + (t_max - t_min) i / K``;
        * ``"quadratic"``: ``t_i = t_min + (t_max - t_min) (i / K)^2``, denser at the data
          end (the "quadratic" skip of Song et al. 2021a, DDIM);
        * ``"karras"``: Karras et al. 2022 (EDM, eq. 5): noise levels
          ``sigma_j = (sigma_hi^(1/rho) + j / K (sigma_lo^(1/rho) - sigma_hi^(1/rho)))^rho``,
          ``j = 0..K``, mapped to times by inverting the schedule's noise-to-signal ratio
          ``sigma(t) = sqrt((1 - ab_t) / ab_t)`` (``t / (1 - t)`` for ``schedule="flow"``,
          the linear interpolant of ``FlowModel``). ``sigma_hi = sigma(t_max)``, or
          ``KARRAS_SIGMA_MAX = 80`` where that is infinite (the flow at ``t = 1``);
          ``sigma_lo = max(sigma(t_min), KARRAS_SIGMA_MIN = 0.002)``. The two ends are then
          set to ``t_max`` and ``t_min`` exactly, so with ``t_min = 0`` the last step goes
          from the noise level one Karras step above 0.002 down to the data.
    rho : float
        Karras exponent (``rho = 7`` in the paper; ``rho = 1`` is uniform in ``sigma``).
    schedule : NoiseSchedule, str or "flow"
        The schedule whose ``sigma(t)`` the Karras spacing uses (ignored otherwise).

    Returns
    -------
    Array of shape (num_steps + 1,)

    Examples
    --------
    >>> import particlekit as pk
    >>> pk.diffusion.time_grid(4, spacing="quadratic")
    Array([0.    , 0.0625, 0.25  , 0.5625, 1.    ], dtype=float32)
    >>> grid = pk.diffusion.time_grid(10, spacing="karras")   # dense near t = 0
    >>> bool(grid[1] < 0.02 and grid[-2] > 0.8)
    True
    """
    num_steps = _check_steps(num_steps)
    t_min, t_max = float(t_min), float(t_max)
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
    dtype = jnp.result_type(float)
    if spacing == "uniform":
        return jnp.linspace(t_min, t_max, num_steps + 1, dtype=dtype)
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    if spacing == "quadratic":
        t = t_min + (t_max - t_min) * u**2
    elif spacing == "karras":
        rho = float(rho)
        if not (math.isfinite(rho) and rho > 0.0):
            raise ValueError(f"rho must be positive and finite, got {rho}")
        sigma, time_of = _noise_levels(schedule)
        hi = float(sigma(t_max))
        hi = KARRAS_SIGMA_MAX if not math.isfinite(hi) else hi
        lo = max(float(sigma(t_min)), KARRAS_SIGMA_MIN)
        if not hi > lo:
            raise ValueError(
                f"the karras spacing needs sigma(t_max) = {hi:.3g} above sigma(t_min) = "
                f"{lo:.3g}; take a larger t_max or another spacing"
            )
        levels = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        t = np.asarray(time_of(levels[::-1]), np.float64)  # increasing times
        t[0], t[-1] = t_min, t_max
    else:
        raise ValueError(f"spacing must be one of {GRIDS}, got {spacing!r}")
    grid = np.asarray(t, dtype)
    if not np.all(np.diff(grid) > 0):
        raise ValueError(
            f"the {spacing} grid of {num_steps} steps on [{t_min}, {t_max}] is not strictly "
            f"increasing in {np.dtype(dtype).name} (steps below its resolution); take fewer "
            "steps or another spacing"
        )
    return jnp.asarray(grid)


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def sampling_grid(grid="uniform", num_steps: int | None = None, *, schedule="linear",
                  default_num_steps: int = 100) -> jax.Array:  # fmt: skip
    """The times a reverse sampler visits, in order: a strictly decreasing array
    ``t_max = g_0 > g_1 > ... > g_K = t_min`` in ``[0, 1]``; step ``k`` moves from ``g_k`` to
    ``g_{k+1}``. Every sampler resolves its ``grid=`` argument here, before tracing.

    Parameters
    ----------
    grid : {"uniform", "quadratic", "karras"} or array
        A spacing of ``time_grid`` on ``[0, 1]`` (reversed), or the times themselves,
        strictly decreasing (at least two). Arrays that are not one-dimensional, contain
        NaN or infinities, leave ``[0, 1]`` or are not strictly decreasing (in the float
        dtype the samplers compute in) are a ``ValueError``; so is, for a
        variance-preserving schedule, a time before the last with ``alpha_bar(t) = 1`` in
        that dtype (no noise left to remove: the kernels would divide by zero). An array
        built under ``jit`` (a tracer) cannot be checked and is taken as it is.
    num_steps : int, optional
        ``K`` for a named grid (default ``default_num_steps``); with an array it may be
        left out or must equal ``len(grid) - 1``.
    schedule : NoiseSchedule, str or "flow"
        For the Karras spacing and the ``alpha_bar`` check.

    Returns
    -------
    Array of shape (K + 1,)
        For a spacing name, the same (immutable) array at every call with the same
        ``num_steps``, schedule and float dtype: it is built and checked once.

    Examples
    --------
    >>> import particlekit as pk
    >>> pk.diffusion.sampling_grid("uniform", 4)
    Array([1.  , 0.75, 0.5 , 0.25, 0.  ], dtype=float32)
    >>> pk.diffusion.sampling_grid([1.0, 0.5, 0.1, 0.0]).shape
    (4,)
    """
    dtype = jnp.result_type(float)
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS} or an array of times, got {grid!r}")
        k = default_num_steps if num_steps is None else _check_steps(num_steps)
        return _named_grid(grid, k, schedule, dtype)
    else:
        if _is_tracer(grid):
            out = jnp.asarray(grid, dtype)
            if out.ndim != 1 or out.shape[0] < 2:
                raise ValueError(f"grid must be a 1-D array of at least two times, got {out.shape}")
        else:
            try:
                arr = np.asarray(grid, dtype)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"grid must be one of {GRIDS} or an array of times, got {grid!r}"
                ) from err
            _check_grid_values(arr)
            out = jnp.asarray(arr)
        if num_steps is not None and _check_steps(num_steps) != out.shape[0] - 1:
            raise ValueError(
                f"num_steps={num_steps} does not match the grid of {out.shape[0]} times "
                f"({out.shape[0] - 1} steps); leave num_steps out"
            )
    _check_noise_left(out, schedule)
    return out


# (spacing name, num_steps, schedule, float dtype) -> the checked, concrete grid
_NAMED_GRIDS: dict = {}
_NAMED_GRIDS_MAX = 256  # entries kept before the cache is emptied


def _named_grid(grid: str, num_steps: int, schedule, dtype) -> jax.Array:
    """``sampling_grid`` of a spacing name, checked, and cached per (name, steps, schedule,
    float dtype): a sampler called again with the same grid skips the eager grid ops and
    checks (most of a bare call's fixed cost on a small model). Only concrete grids are
    cached (one first built under a trace is a tracer: returned, not kept); a
    ``ValueError`` is raised again at every call."""
    key = (grid, num_steps, schedule, np.dtype(dtype).name)
    cacheable = isinstance(schedule, (str, NoiseSchedule))
    out = _NAMED_GRIDS.get(key) if cacheable else None
    if out is None:
        out = time_grid(num_steps, spacing=grid, schedule=schedule)[::-1]
        _check_noise_left(out, schedule)
        if cacheable and not _is_tracer(out):
            if len(_NAMED_GRIDS) >= _NAMED_GRIDS_MAX:
                _NAMED_GRIDS.clear()
            _NAMED_GRIDS[key] = out
    return out


def _check_noise_left(out, schedule) -> None:
    """A ``ValueError`` if a time before the last has ``alpha_bar(t) = 1`` in the float
    dtype (variance-preserving schedules; a traced grid cannot be checked)."""
    if (isinstance(schedule, str) and schedule == "flow") or _is_tracer(out):
        return
    ab = np.asarray(get_schedule(schedule).alpha_bar(out[:-1]))
    if np.any(ab >= 1.0):
        bad = float(np.asarray(out[:-1])[np.argmax(ab >= 1.0)])
        raise ValueError(
            f"grid time {bad:.3g} has alpha_bar = 1 in {np.dtype(out.dtype).name}: no noise "
            "left to remove before the last time; start the last step from a larger time"
        )


def _check_grid_values(arr: np.ndarray) -> None:
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"grid must be a 1-D array of at least two times, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("grid must be finite (no NaN or inf)")
    if np.any(arr < 0.0) or np.any(arr > 1.0):
        raise ValueError(f"grid times must lie in [0, 1], got [{arr.min()}, {arr.max()}]")
    diffs = np.diff(arr)
    if not np.all(diffs < 0):
        hint = (
            " (it is increasing: pass grid[::-1]; time_grid returns increasing times)"
            if np.all(diffs > 0)
            else ""
        )
        raise ValueError(
            "grid must be strictly decreasing, in the order the sampler visits the times "
            f"(noise end first){hint}"
        )


def noise_end_step_rate(schedule: NoiseSchedule, grid, kappa: float) -> float:
    """``max_k kappa b(t_k) (t_k - t_{k+1})`` over the steps of ``grid``: for a reverse
    Euler–Maruyama step whose drift near the noise end (every score close to ``-x``) is
    ``-kappa b x``, the step multiplies ``x`` by ``1 - kappa b dt``; above 1 it overshoots
    (above 2 it diverges). ``kappa = 1 / 2`` for the reverse SDE of a diffusion model. 0 for
    a traced grid or schedule (it cannot be checked)."""
    if _is_tracer(grid):
        return 0.0
    times = np.asarray(grid, np.float64)
    # evaluated now even inside a user's jit (else ``beta`` of a concrete grid is staged
    # and np.asarray of it raised TracerArrayConversionError); a traced schedule is skipped
    with jax.ensure_compile_time_eval():
        rates = jax.vmap(schedule.beta)(jnp.asarray(grid)[:-1])
    if _is_tracer(rates):
        return 0.0
    return float(np.max(kappa * np.asarray(rates, np.float64) * -np.diff(times)))


def ou_transition_mean_var(schedule: NoiseSchedule, x_s, s, t, sigma: float = 1.0):
    """Mean and (isotropic) variance of the forward OU transition ``x_t | x_s``, ``s < t``:
    ``N(sqrt(1 - lambda_{t,s}) x_s, sigma^2 lambda_{t,s} I)``."""
    lam = schedule.lmbda(t, s)
    return jnp.sqrt(1.0 - lam) * x_s, sigma**2 * lam
