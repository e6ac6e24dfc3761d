"""Diffusion models: a noise schedule plus a single-particle network, with the stochastic
reverse step, its Gaussian transition density and the Tweedie ``x0`` prediction; and
``gaussian_mixture``, a diffusion model with exact noised scores.

Convention (variance preserving, see ``particlekit.diffusion.schedules``, reference
scale 1): ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps`` with ``ab_t = alpha_bar(t)``, data
at ``t = 0`` and (nearly) pure noise ``N(0, I)`` at ``t = 1``. A network predicts one of

* ``"eps"``:   ``eps_hat(x_t, t)``, the noise;
* ``"x0"``:    ``x0_hat(x_t, t) = E[x_0 | x_t]``;
* ``"score"``: ``grad log p_t(x_t)``;

related by Tweedie's formula ``score = -eps_hat / sqrt(1 - ab_t)`` and
``x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t)``.

The reverse kernels from ``t`` to ``s < t`` are Gaussian ``N(mean, var I)``:

* ``"ddpm"`` (ancestral sampling, Ho et al. 2020) = ``"ddim"`` with ``eta = 1``;
* ``"ddim"`` with ``eta in [0, 1]`` (Song et al. 2021a): ``mean = sqrt(ab_s) x0_hat +
  sqrt(1 - ab_s - v) eps_hat``, ``v = eta^2 (1 - ab_s) / (1 - ab_t) (1 - ab_t / ab_s)``;
* ``"em"``: Euler–Maruyama of the reverse SDE ``dx = [-b x / 2 - b score] dt + sqrt(b) dW``
  (Song et al. 2021b), ``b = beta(t)``.

With ``s = 0`` the DDPM / DDIM kernels are deterministic (``var = 0``, ``x_0 = x0_hat``).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from particlekit.diffusion.schedules import (
    NoiseSchedule,
    get_schedule,
    noise_end_step_rate,
    sampling_grid,
)
from particlekit.kernels import check_key, check_num_particles, init, move
from particlekit.run import run

__all__ = [
    "DiffusionModel",
    "GaussianMixtureScore",
    "gaussian_mixture",
    "tilted_gaussian_mixture",
    "SAMPLERS",
]

PREDICTIONS = ("eps", "x0", "score")
SAMPLERS = ("ddpm", "ddim", "em")


def check_reward(model, fn, what: str = "reward_fn(x_0)", with_time: bool = False) -> None:
    """Before tracing: ``fn`` (a reward ``r(x_0)``, or with ``with_time`` an intermediate
    reward ``r(x_t, t)``) must return a scalar for ONE sample of the model's shape, as
    ``steering.smc`` checks its reward; a reward of another shape failed while tracing
    with a broadcasting error (or, in ``best_of_n``, gave per-coordinate rewards). The
    value must be real (an integer, a float or a bool, read as 0 / 1): a complex one is a
    ``ValueError`` too."""
    shape = tuple(model.shape)
    args = [jax.ShapeDtypeStruct(shape, jnp.result_type(float))]
    if with_time:
        args.append(jax.ShapeDtypeStruct((), jnp.result_type(float)))
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # noqa: BLE001 - report what the user function did
        raise ValueError(f"{what} failed on one sample of shape {shape}: {err}") from err
    if getattr(out, "shape", None) != ():
        raise ValueError(
            f"{what} must return a scalar for ONE sample of shape {shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )
    dtype = getattr(out, "dtype", None)
    if (
        dtype is None
        or not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_))
        or jnp.issubdtype(dtype, jnp.complexfloating)
    ):
        # a complex reward was cast to a real weight, its imaginary part dropped with only
        # a NumPy ComplexWarning (steering.smc refuses it the same way)
        raise ValueError(f"{what} must return a real scalar, got dtype {dtype}")


def sample_shape(shape) -> tuple:
    """``shape`` (an int or a sequence of ints) as a tuple of non-negative ints; a
    ``ValueError`` otherwise (a negative size was accepted and failed much later, in
    ``sample``, with a JAX error)."""
    try:
        one = isinstance(shape, numbers.Integral)
        dims = tuple(int(s) for s in ((shape,) if one else shape))
    except (TypeError, ValueError) as err:
        raise ValueError(f"shape must be a tuple of ints, got {shape!r}") from err
    if any(s < 0 for s in dims):
        raise ValueError(f"shape must have non-negative sizes, got {dims}")
    return dims


def warn_nonfinite_samples(samples, where: str, what: str, stacklevel: int = 3) -> None:
    """Warn (``RuntimeWarning``, eager calls only) when some unsteered samples are NaN or
    infinite: the plain samplers have no diagnostics, and a network that returns NaN
    somewhere gave NaN samples without a word."""
    if isinstance(samples, jax.core.Tracer):
        return
    flat = jnp.reshape(samples, (samples.shape[0], -1))
    bad = int(jnp.sum(~jnp.all(jnp.isfinite(flat), axis=1)))
    if bad:
        warnings.warn(
            f"{where}: {bad} of {samples.shape[0]} samples are NaN or infinite (the {what} "
            "returned a non-finite value along their path); check the model",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def warn_coarse_em(schedule, grid, sampler: str, where: str) -> None:
    """A ``RuntimeWarning`` before tracing when ``sampler="em"`` takes a step near the noise
    end that overshoots: there every score is close to ``-x`` and one Euler–Maruyama step
    multiplies ``x`` by ``1 - b dt / 2`` (``noise_end_step_rate`` with ``kappa = 1 / 2``).
    Three uniform steps on the linear schedule gave samples of sd 4.4 for data of sd 0.5,
    silently. The DDPM / DDIM kernels are exact for Gaussian data and do not overshoot."""
    if sampler != "em":
        return
    rate = noise_end_step_rate(schedule, grid, 0.5)
    if rate > 1.0:
        warnings.warn(
            f"{where}: the time steps are too coarse for sampler='em': one Euler-Maruyama "
            f"step near the noise end overshoots (b dt / 2 = {rate:.3g} > 1), so the samples "
            "are unreliable; take more steps, or use sampler='ddpm' / 'ddim'",
            RuntimeWarning,
            stacklevel=3,
        )


def check_sampler_name(sampler: str) -> None:
    """A ``ValueError`` unless ``sampler`` names a reverse kernel (static: checked under
    ``jit`` too; an unknown name was silently read as ``"ddim"``)."""
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def check_step_times(t, s) -> None:
    """A ``ValueError`` unless the concrete times of a reverse step from ``t`` to ``s``
    satisfy ``0 <= s < t <= 1`` (the model's time range; ``s >= t`` gave a negative or zero
    variance, NaN samples). A traced time cannot be checked and is left as it is."""
    times = [v for v in (t, s) if not isinstance(v, jax.core.Tracer)]
    values = [np.asarray(v, float) for v in times]
    inside = all(np.all((0.0 <= v) & (v <= 1.0)) for v in values)
    ordered = len(values) < 2 or bool(np.all(values[1] < values[0]))
    if not (inside and ordered):
        raise ValueError(f"a reverse step goes from t to s with 0 <= s < t <= 1, got t={t}, s={s}")


def check_sampler(sampler: str, eta: float) -> None:
    """Validate a reverse-kernel name and DDIM ``eta`` before tracing."""
    check_sampler_name(sampler)
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sampler == "ddim" and float(eta) == 0.0:
        raise ValueError(
            "eta = 0 makes the DDIM kernel deterministic: it has no transition density, so "
            "no particle method can use it; take eta > 0"
        )


class DiffusionModel(eqx.Module):
    """A pretrained diffusion model: noise schedule plus single-particle network.

    An equinox module, so network parameters are PyTree leaves (jit / vmap friendly).

    Parameters
    ----------
    fn : callable
        ``fn(x, t) -> prediction`` for ONE particle ``x`` of shape ``shape`` and a scalar
        time ``t`` in ``[0, 1]``; any JAX function or equinox / flax-bound module.
    schedule : NoiseSchedule or str
        ``"linear"``, ``"cosine"`` or a ``NoiseSchedule``.
    prediction : {"eps", "x0", "score"}
        What ``fn`` predicts; converted internally.
    shape : tuple of int
        Shape of one sample ``x_0``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> model = pk.diffusion.DiffusionModel(lambda x, t: -x, "linear", prediction="score",
    ...                                     shape=(2,))   # N(0, I) data: score = -x
    >>> x = model.reverse_step(jax.random.key(0), jnp.ones(2), 0.5, 0.4)
    >>> x.shape
    (2,)
    """

    fn: Callable
    schedule: NoiseSchedule = eqx.field(static=True)
    prediction: str = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)

    def __init__(self, fn, schedule="linear", *, prediction: str = "eps", shape=()):
        if not callable(fn):
            raise ValueError("fn must be a callable fn(x, t) -> prediction")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.fn = fn
        self.schedule = get_schedule(schedule)
        self.prediction = prediction
        self.shape = sample_shape(shape)

    # ------------------------------------------------------------------ conversions
    def _network(self, x, t):
        """``fn(x, t)``, checked (while tracing, shapes are static) to have the shape of
        ``x``: a network returning a scalar or another shape was silently broadcast
        against ``x`` (every coordinate then got the same prediction: wrong samples, no
        error)."""
        out = self.fn(x, t)
        if jnp.shape(out) != jnp.shape(x):
            raise ValueError(
                f"the network fn(x, t) (prediction={self.prediction!r}) must return an array "
                f"of the shape of x, {jnp.shape(x)}, got {jnp.shape(out)}"
            )
        return out

    def _coefs(self, t):
        ab = self.schedule.alpha_bar(t)
        return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)

    def eps(self, x, t):
        """Predicted noise ``eps_hat(x_t, t)``."""
        out = self._network(x, t)
        a, s = self._coefs(t)
        if self.prediction == "eps":
            return out
        if self.prediction == "x0":
            return (x - a * out) / s
        return -s * out

    def score(self, x, t):
        """Score ``grad_x log p_t(x)`` (Tweedie: ``-eps_hat / sqrt(1 - ab_t)``)."""
        if self.prediction == "score":
            return self._network(x, t)
        _, s = self._coefs(t)
        return -self.eps(x, t) / s

    def x0(self, x, t):
        """Tweedie prediction ``x0_hat = E[x_0 | x_t = x]``."""
        if self.prediction == "x0":
            return self._network(x, t)
        a, s = self._coefs(t)
        return (x - s * self.eps(x, t)) / a

    # ------------------------------------------------------------------ reverse kernel
    def reverse_mean_var(self, x, t, s, *, sampler: str = "ddpm", eta: float = 1.0, eps=None):
        """Mean (shape ``shape``) and isotropic variance (scalar) of the reverse kernel
        ``p(x_s | x_t)``, ``0 <= s < t <= 1``. ``eps``: the noise prediction
        ``eps_hat(x, t)`` if it is already known (then the network is not called again).

        Raises ``ValueError`` for an unknown ``sampler``, or for concrete times outside
        ``0 <= s < t <= 1``; traced times (under ``jit`` / ``vmap``) are not checked, and
        ``s > t`` there gives NaN."""
        check_sampler_name(sampler)
        check_step_times(t, s)
        if sampler == "em":
            b = self.schedule.beta(t)
            dt = t - s
            score = self.score(x, t) if eps is None else -eps / self._coefs(t)[1]
            mean = x + dt * (0.5 * b * x + b * score)
            return mean, b * dt
        eta = 1.0 if sampler == "ddpm" else eta
        ab_t = self.schedule.alpha_bar(t)
        ab_s = self.schedule.alpha_bar(s)
        eps = self.eps(x, t) if eps is None else eps
        x0 = (x - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)
        lam = self.schedule.lmbda(t, s)  # 1 - ab_t / ab_s
        var = eta**2 * (1.0 - ab_s) / (1.0 - ab_t) * lam
        mean = jnp.sqrt(ab_s) * x0 + jnp.sqrt(jnp.clip(1.0 - ab_s - var, 0.0)) * eps
        return mean, var

    def reverse_step(self, key, x, t, s, *, sampler: str = "ddpm", eta: float = 1.0):
        """Draw ``x_s ~ p(x_s | x_t)`` for one particle, ``0 <= s < t <= 1`` (checked as in
        ``reverse_mean_var``)."""
        mean, var = self.reverse_mean_var(x, t, s, sampler=sampler, eta=eta)
        return mean + jnp.sqrt(var) * jax.random.normal(key, jnp.shape(x), mean.dtype)

    def reverse_log_prob(self, x_s, x, t, s, *, sampler: str = "ddpm", eta: float = 1.0):
        """``log p(x_s | x_t)`` of the Gaussian reverse kernel (needs ``var > 0``)."""
        mean, var = self.reverse_mean_var(x, t, s, sampler=sampler, eta=eta)
        return dist.Normal(mean, jnp.sqrt(var)).log_prob(x_s).sum()

    def sample_prior(self, key):
        """One draw of ``x_1 ~ N(0, I)``."""
        return jax.random.normal(key, self.shape)

    # ------------------------------------------------------------------ unsteered sampling
    def sample(
        self, key, num_samples: int, *, num_steps: int | None = None, sampler: str = "ddpm",
        eta: float = 1.0, grid="uniform",
    ):  # fmt: skip
        """Unsteered ancestral sampling: ``num_samples`` reverse chains from ``t = 1`` to
        ``t = 0`` on the time grid ``grid``, run by the engine (``init``, ``move``,
        ``run``).

        Parameters
        ----------
        key : PRNG key
        num_samples : int
        num_steps : int, optional
            Number of reverse steps of a named grid (default 100); with an array ``grid``
            it is ``len(grid) - 1`` and may be left out.
        sampler : {"ddpm", "ddim", "em"}, eta : float
            The reverse kernel.
        grid : {"uniform", "quadratic", "karras"} or array
            The times visited, a name (``time_grid``'s spacing, on this model's schedule)
            or an array strictly decreasing from the noise end, e.g.
            ``[1.0, 0.6, 0.3, 0.1, 0.0]`` (see ``sampling_grid``). The chains start from
            ``N(0, I)``, the law at ``t = 1``; a grid ending at ``t > 0`` returns draws of
            ``x_t``.

        Returns
        -------
        Array of shape (num_samples, *shape)

        Examples
        --------
        >>> import jax, particlekit as pk
        >>> model = pk.diffusion.gaussian_mixture([1.0], [[0.0, 0.0]], stds=1.0)
        >>> model.sample(jax.random.key(0), 3, num_steps=10, grid="karras").shape
        (3, 2)
        """
        check_key(key)
        num_samples = check_num_particles(num_samples, "num_samples")
        check_sampler(sampler, eta)
        grid = sampling_grid(grid, num_steps, schedule=self.schedule)
        warn_coarse_em(self.schedule, grid, sampler, "DiffusionModel.sample")
        samples = _sample(key, self, num_samples, grid, sampler, float(eta))
        warn_nonfinite_samples(
            samples, "DiffusionModel.sample", "eps / x0 / score network", stacklevel=4
        )  # + equinox
        return samples


@eqx.filter_jit
def _sample(key, model, num_samples, grid, sampler, eta):
    k_init, k_run = jax.random.split(key)
    state = init(k_init, model.sample_prior, num_samples)

    def step_fn(k, x, ts):
        return model.reverse_step(k, x, ts[0], ts[1], sampler=sampler, eta=eta)

    inputs = jnp.stack([grid[:-1], grid[1:]], axis=1)
    final, _ = run(k_run, move(step_fn), state, inputs, keep_history=False)
    return final.particles


# ---------------------------------------------------------------------- Gaussian mixtures
class GaussianMixtureScore(eqx.Module):
    """Exact noised density and score of a Gaussian mixture ``sum_k w_k N(mu_k, S_k)``.

    Under the forward process the mixture at time ``t`` is again a mixture, with means
    ``sqrt(ab_t) mu_k`` and covariances ``ab_t S_k + (1 - ab_t) I`` (weights unchanged).
    With ``S_k = U_k diag(l_k) U_k^T`` the noised covariance is
    ``U_k diag(ab_t l_k + 1 - ab_t) U_k^T``, so densities and scores cost no factorisation.
    """

    log_weights: jax.Array  # (K,)
    means: jax.Array  # (K, d)
    covs: jax.Array  # (K, d, d)
    eigvals: jax.Array  # (K, d)
    eigvecs: jax.Array  # (K, d, d)
    schedule: NoiseSchedule = eqx.field(static=True)

    def __init__(self, log_weights, means, covs, schedule):
        self.log_weights = log_weights
        self.means = means
        self.covs = covs
        self.eigvals, self.eigvecs = jnp.linalg.eigh(covs)
        self.schedule = schedule

    def distribution(self, t):
        """The noised mixture ``p_t`` as a NumPyro ``MixtureSameFamily``."""
        ab = self.schedule.alpha_bar(t)
        d = self.means.shape[-1]
        covs = ab * self.covs + (1.0 - ab) * jnp.eye(d)
        comps = dist.MultivariateNormal(jnp.sqrt(ab) * self.means, covariance_matrix=covs)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.log_weights), comps)

    def _parts(self, x, t):
        ab = self.schedule.alpha_bar(t)
        var = ab * self.eigvals + (1.0 - ab)  # (K, d) eigenvalues of the noised covs
        z = jnp.einsum("kji,kj->ki", self.eigvecs, x - jnp.sqrt(ab) * self.means)
        log_comp = -0.5 * jnp.sum(z**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        return var, z, self.log_weights + log_comp

    def log_prob(self, x, t):
        """``log p_t(x)`` (normalised)."""
        return jax.scipy.special.logsumexp(self._parts(x, t)[2])

    def __call__(self, x, t):
        var, z, log_joint = self._parts(x, t)
        resp = jax.nn.softmax(log_joint)  # posterior component probabilities
        return -jnp.einsum("k,kij,kj->i", resp, self.eigvecs, z / var)


def _require(ok, message: str) -> None:
    """A ``ValueError`` when the concrete check ``ok`` fails; a traced one (a mixture built
    under ``jit`` / ``vmap``) cannot be checked before tracing and is left to the recipes,
    which flag non-finite scores (zero weight, ``failed``)."""
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        raise ValueError(message)


def _require_positive_definite(covs) -> None:
    """``covs`` (K, d, d) must be symmetric positive definite: a negative eigenvalue gave
    NaN samples (the log of a negative noised variance), and the eigendecomposition reads
    only the lower triangle, so a non-symmetric matrix was silently another covariance
    (``distribution(t)`` another still)."""
    scale = jnp.max(jnp.abs(covs), axis=(-2, -1), keepdims=True)
    tol = 100 * jnp.finfo(covs.dtype).eps * scale
    _require(jnp.all(jnp.abs(covs - jnp.swapaxes(covs, -1, -2)) <= tol), "covs must be symmetric")
    _require(
        jnp.all(jnp.linalg.eigvalsh(covs) > 0),
        "covs must be positive definite (every eigenvalue > 0)",
    )


def _as_covs(means, stds, covs):
    k, d = means.shape
    if (stds is None) == (covs is None):
        raise ValueError("give exactly one of stds or covs")
    if covs is not None:
        covs = jnp.asarray(covs, jnp.result_type(float))
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape {(k, d, d)}, got {covs.shape}")
        _require(jnp.all(jnp.isfinite(covs)), "covs must be finite (no NaN or inf)")
        _require_positive_definite(covs)
        return covs
    stds = jnp.asarray(stds, jnp.result_type(float))
    if stds.ndim == 0:
        stds = jnp.full((k, d), stds)
    elif stds.shape == (k,):
        stds = jnp.broadcast_to(stds[:, None], (k, d))
    if stds.shape != (k, d):
        raise ValueError(
            f"stds must be a scalar or have shape {(k,)} or {(k, d)}, got {stds.shape}"
        )
    _require(jnp.all(stds > 0) & jnp.all(jnp.isfinite(stds)), "stds must be positive and finite")
    return jax.vmap(jnp.diag)(stds**2)


def _mixture_arrays(weights, means, stds=None, covs=None):
    means = jnp.asarray(means, jnp.result_type(float))
    if means.ndim == 1:
        means = means[:, None]
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, d), got {means.shape}")
    _require(jnp.all(jnp.isfinite(means)), "means must be finite (no NaN or inf)")
    weights = jnp.asarray(weights, jnp.result_type(float))
    if weights.shape != means.shape[:1]:
        raise ValueError(f"weights must have shape {means.shape[:1]}, got {weights.shape}")
    _require(
        jnp.all(weights >= 0) & jnp.all(jnp.isfinite(weights)) & (jnp.sum(weights) > 0),
        "weights must be finite, non-negative and not all zero",
    )
    return weights / jnp.sum(weights), means, _as_covs(means, stds, covs)


def gaussian_mixture(weights, means, stds=None, covs=None, *, schedule="linear"):
    """A ``DiffusionModel`` whose data distribution is a Gaussian mixture, with exact
    noised scores (for tests, examples and sanity checks).

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
    schedule : NoiseSchedule or str

    Returns
    -------
    DiffusionModel
        ``prediction="score"``, ``shape=(d,)``; ``model.fn`` is a
        ``GaussianMixtureScore`` with ``log_prob(x, t)`` and ``distribution(t)``.

    Examples
    --------
    >>> import jax, particlekit as pk
    >>> model = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> model.sample(jax.random.key(0), 4, num_steps=20).shape
    (4, 2)
    """
    weights, means, covs = _mixture_arrays(weights, means, stds, covs)
    sched = get_schedule(schedule)
    fn = GaussianMixtureScore(jnp.log(weights), means, covs, sched)
    return DiffusionModel(fn, sched, prediction="score", shape=(means.shape[1],))


def tilted_gaussian_mixture(weights, means, stds=None, covs=None, *, direction, lmbda):
    """The exact tilt of a Gaussian mixture by ``exp(lmbda a.x)`` (docs/architecture.md §6).

    ``p(x) exp(lmbda a.x) / Z`` is the mixture with means ``mu_k + lmbda S_k a`` and weights
    ``∝ w_k exp(lmbda a.mu_k + lmbda^2 a.S_k a / 2)``, and
    ``log Z = log sum_k w_k exp(lmbda a.mu_k + lmbda^2 a.S_k a / 2)``.

    Returns
    -------
    (weights (K,), means (K, d), covs (K, d, d), log_Z ())
    """
    weights, means, covs = _mixture_arrays(weights, means, stds, covs)
    a = jnp.asarray(direction, means.dtype)
    if a.shape != means.shape[1:]:
        raise ValueError(f"direction must have shape {means.shape[1:]}, got {a.shape}")
    _require(jnp.all(jnp.isfinite(a)), "direction must be finite (no NaN or inf)")
    if isinstance(lmbda, str | bytes | bool) or jnp.ndim(lmbda) != 0:
        raise ValueError(f"lmbda must be one real number, got {lmbda!r}")
    lmbda = jnp.asarray(lmbda, means.dtype)  # (an integer tilt too)
    _require(jnp.isfinite(lmbda), f"lmbda must be finite, got {lmbda}")
    s_a = jnp.einsum("kij,j->ki", covs, a)
    log_terms = jnp.log(weights) + lmbda * means @ a + 0.5 * lmbda**2 * s_a @ a
    log_z = jax.scipy.special.logsumexp(log_terms)
    return jnp.exp(log_terms - log_z), means + lmbda * s_a, covs, log_z
