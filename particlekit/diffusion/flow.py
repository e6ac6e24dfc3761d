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

Samplers, from ``t = 1`` to ``t = 0`` on a time grid (``grid=``: ``"uniform"``,
``"quadratic"``, ``"karras"`` with the flow's noise-to-signal ratio ``t / (1 - t)``, or an
array of decreasing times, see ``particlekit.diffusion.sampling_grid``):

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

Gaussian mixtures. For data ``sum_k w_k N(mu_k, S_k)`` the interpolant's marginal is the
mixture ``p_t = sum_k w_k N((1 - t) mu_k, C_k)``, ``C_k = (1 - t)^2 S_k + t^2 I``, and per
component ``E[eps | x_t, k] = t C_k^{-1} (x - (1 - t) mu_k)``,
``E[x_0 | x_t, k] = mu_k + (1 - t) S_k C_k^{-1} (x - (1 - t) mu_k)``; the velocity is their
difference averaged with the posterior component probabilities. ``gaussian_mixture_flow``
builds that exact ``FlowModel`` (the flow counterpart of ``gaussian_mixture``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from particlekit.diffusion.model import (
    DiffusionModel,
    _mixture_arrays,
    sample_shape,
    warn_nonfinite_samples,
)
from particlekit.diffusion.schedules import NoiseSchedule, get_schedule, sampling_grid
from particlekit.kernels import check_key, check_num_particles, init, move
from particlekit.run import run

__all__ = [
    "FlowModel",
    "FlowAsEps",
    "FLOW_SAMPLERS",
    "GaussianMixtureVelocity",
    "gaussian_mixture_flow",
]

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
        self.shape = sample_shape(shape)

    # ------------------------------------------------------------------ conversions
    def velocity(self, x, t):
        """Velocity ``v(x, t) = E[eps - x_0 | x_t = x]``, shape ``shape``."""
        _check_shape(x, self.shape)
        v = self.fn(x, jnp.asarray(t, jnp.result_type(float)))
        # a scalar (or other) output was silently broadcast against x: wrong samples
        _check_shape(v, self.shape, "the velocity fn(x, t)")
        return v

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
        self, key, num_samples: int, *, num_steps: int | None = None, method: str = "ode",
        noise_scale: float = 1.0, grid="uniform",
    ):  # fmt: skip
        """``num_samples`` samples of the data distribution: the ``"ode"`` (Euler) or
        ``"sde"`` (Euler–Maruyama, ``g^2 = 2 noise_scale t``) sampler from ``t = 1`` to
        ``t = 0`` on the time grid ``grid``, run by the engine (``init``, ``move``,
        ``run``) in one compiled function.

        Parameters
        ----------
        key : PRNG key
        num_samples : int
        num_steps : int, optional
            Steps of a named grid (default 100); with an array ``grid``, ``len(grid) - 1``.
        method : {"ode", "sde"}
        noise_scale : float
            ``eta >= 0`` of the SDE (``0``: the ODE); a traced input of the compiled
            sampler, so it may be a tracer under ``jax.jit``.
        grid : {"uniform", "quadratic", "karras"} or array
            Flow times visited, strictly decreasing from the noise end ``t = 1`` (the
            start, where ``x_1 ~ N(0, I)``; a grid starting below 1 is a ``ValueError``);
            an array ending at ``t > 0`` returns draws of ``x_t``. ``"karras"`` spaces the
            noise-to-signal ratio ``t / (1 - t)`` (``sampling_grid(..., schedule="flow")``).

        Returns
        -------
        Array of shape (num_samples, *shape)
        """
        check_key(key)
        num_samples = check_num_particles(num_samples, "num_samples")
        if method not in FLOW_SAMPLERS:
            raise ValueError(f"method must be one of {FLOW_SAMPLERS}, got {method!r}")
        if not isinstance(noise_scale, jax.core.Tracer):  # under jit: no value check
            value = float(noise_scale)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"noise_scale must be finite and >= 0, got {value}")
        grid = sampling_grid(grid, num_steps, schedule="flow")
        _check_grid_start(grid)
        if method == "sde":
            _warn_coarse_sde(grid, noise_scale)
        # a traced input: other values reuse the compilation (a Python float was static)
        noise_scale = jnp.asarray(noise_scale, jnp.result_type(float))
        samples = _sample(key, self, num_samples, grid, method, noise_scale)
        warn_nonfinite_samples(samples, "FlowModel.sample", "velocity", stacklevel=4)  # + equinox
        return samples

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


def _check_grid_start(grid) -> None:
    """The samplers start from ``N(0, I)``, the law of ``x_t`` at ``t = 1`` only: unlike
    the variance-preserving reference, the interpolant's ``p_t`` is not ``N(0, I)`` at any
    ``t < 1`` (it is ``N((1 - t) mu, (1 - t)^2 S + t^2 I)`` for ``N(mu, S)`` data), so a
    grid starting below 1 gave silently wrong samples. Concrete grids only."""
    if isinstance(grid, jax.core.Tracer):
        return
    start = float(grid[0])
    if start < 1.0 - 1e-6:
        raise ValueError(
            f"a flow's time grid must start at the noise end t = 1, got t = {start}: the "
            "sampler starts from N(0, I), the law of x_1 only (x_t at t < 1 is not N(0, I))"
        )


def _warn_coarse_sde(grid, noise_scale) -> None:
    """A ``RuntimeWarning`` before tracing when the first Euler–Maruyama step overshoots.
    At ``t = 1`` the drift ``v + eta (x + (1 - t) v)`` is ``(1 + eta) x - E[x_0]`` for any
    data (``v(x, 1) = x - E[x_0]``), so a step ``h`` with ``h (1 + eta) > 1`` flips the sign
    of ``x`` and ``> 2`` diverges: for ``N(1.5, 0.3^2)`` data, ``noise_scale=20`` with 10
    steps gave sd 4446 and ``noise_scale=200`` with 100 steps NaN, without a word (later
    steps, where the drift's slope depends on the data, need smaller steps still)."""
    if isinstance(grid, jax.core.Tracer) or isinstance(noise_scale, jax.core.Tracer):
        return
    h = float(grid[0]) - float(grid[1])
    rate = h * (1.0 + float(noise_scale))
    if rate > 1.0:
        warnings.warn(
            f"FlowModel.sample: the first SDE step is too coarse for noise_scale = "
            f"{float(noise_scale):.3g}: Euler-Maruyama overshoots at the noise end "
            f"(h (1 + noise_scale) = {rate:.3g} > 1), so the samples are unreliable; take "
            "more steps or a smaller noise_scale",
            RuntimeWarning,
            stacklevel=4,  # _warn_coarse_sde, FlowModel.sample, equinox's bound method
        )


@eqx.filter_jit
def _sample(key, model, num_samples, grid, method, noise_scale):
    k_init, k_run = jax.random.split(key)
    state = init(k_init, model.sample_prior, num_samples)

    def step_fn(k, x, ts):
        if method == "ode":
            return model.ode_step(x, ts[0], ts[1])
        return model.sde_step(k, x, ts[0], ts[1], noise_scale)

    inputs = jnp.stack([grid[:-1], grid[1:]], axis=1)
    final, _ = run(k_run, move(step_fn), state, inputs, keep_history=False)
    return final.particles


# ---------------------------------------------------------------------- Gaussian mixtures
class GaussianMixtureVelocity(eqx.Module):
    """Exact velocity ``E[eps - x_0 | x_t = x]`` of the linear interpolant for Gaussian
    mixture data ``sum_k w_k N(mu_k, S_k)`` (module docstring), with the marginal density
    ``log_prob(x, t)`` and ``distribution(t)``.

    With ``S_k = U_k diag(l_k) U_k^T`` the marginal covariance is
    ``C_k = U_k diag((1 - t)^2 l_k + t^2) U_k^T``, so nothing is factorised per call.
    """

    log_weights: jax.Array  # (K,)
    means: jax.Array  # (K, d)
    covs: jax.Array  # (K, d, d)
    eigvals: jax.Array  # (K, d)
    eigvecs: jax.Array  # (K, d, d)

    def __init__(self, log_weights, means, covs):
        self.log_weights = log_weights
        self.means = means
        self.covs = covs
        self.eigvals, self.eigvecs = jnp.linalg.eigh(covs)

    def distribution(self, t):
        """The marginal ``p_t`` of ``x_t = (1 - t) x_0 + t eps`` as a NumPyro mixture."""
        d = self.means.shape[-1]
        covs = (1.0 - t) ** 2 * self.covs + t**2 * jnp.eye(d)
        comps = dist.MultivariateNormal((1.0 - t) * self.means, covariance_matrix=covs)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.log_weights), comps)

    def _parts(self, x, t):
        c = (1.0 - t) ** 2 * self.eigvals + t**2  # (K, d) eigenvalues of C_k
        z = jnp.einsum("kji,kj->ki", self.eigvecs, x - (1.0 - t) * self.means)
        log_comp = -0.5 * jnp.sum(z**2 / c + jnp.log(2 * jnp.pi * c), axis=-1)
        return c, z, self.log_weights + log_comp

    def log_prob(self, x, t):
        """``log p_t(x)`` (normalised)."""
        return jax.scipy.special.logsumexp(self._parts(x, t)[2])

    def responsibilities(self, x, t):
        """Posterior component probabilities ``P(k | x_t = x)``, shape ``(K,)``."""
        return jax.nn.softmax(self._parts(x, t)[2])

    def __call__(self, x, t):
        c, z, log_joint = self._parts(x, t)
        resp = jax.nn.softmax(log_joint)
        # per component, in the eigenbasis: E[eps - x_0 | x, k] + mu_k
        #   = (t - (1 - t) l) z / c
        v = jnp.einsum("kij,kj->ki", self.eigvecs, (t - (1.0 - t) * self.eigvals) * z / c)
        return resp @ (v - self.means)


def gaussian_mixture_flow(weights, means, stds=None, covs=None) -> FlowModel:
    """A ``FlowModel`` whose data distribution is a Gaussian mixture, with the exact
    velocity of the linear interpolant (for tests and examples; the flow counterpart of
    ``gaussian_mixture``).

    Parameters
    ----------
    weights : array (K,)
        Mixture weights (normalised internally).
    means : array (K, d)
        Component means (``(K,)`` is read as ``d = 1``).
    stds : array, optional
        Scalar, ``(K,)`` (isotropic) or ``(K, d)`` (diagonal) standard deviations.
    covs : array (K, d, d), optional
        Full covariances (instead of ``stds``).

    Returns
    -------
    FlowModel
        ``shape=(d,)``; ``flow.fn`` is a ``GaussianMixtureVelocity`` with
        ``log_prob(x, t)``, ``responsibilities(x, t)`` and ``distribution(t)``. Its
        ``as_diffusion_model(schedule)`` has the same data distribution, so
        ``fk_steering`` of it targets ``tilted_gaussian_mixture`` exactly.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> flow = pk.diffusion.gaussian_mixture_flow([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]],
    ...                                           stds=0.5)
    >>> flow.sample(jax.random.key(0), 4, num_steps=20).shape
    (4, 2)
    >>> x, t = jnp.array([0.3, -0.2]), 0.4   # the score is the gradient of log p_t
    >>> bool(jnp.allclose(flow.score(x, t), jax.grad(flow.fn.log_prob)(x, t), atol=1e-5))
    True
    """
    weights, means, covs = _mixture_arrays(weights, means, stds, covs)
    fn = GaussianMixtureVelocity(jnp.log(weights), means, covs)
    return FlowModel(fn, shape=(means.shape[1],))
