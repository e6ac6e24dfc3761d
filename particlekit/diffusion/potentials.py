"""Guidance potentials for PDDS: the naive (training-free) potential and a learned one.

PDDS (Phillips et al., ICML 2024) writes the target as a tilt of the reference
``N(0, sigma^2 I)``: ``pi(x) = N(x; 0, sigma^2 I) g_0(x) / Z`` with
``g_0(x) = gamma(x) / N(x; 0, sigma^2 I)``. Noising ``pi`` with the Ornstein–Uhlenbeck
reference process gives marginals ``pi_t(x) = N(x; 0, sigma^2 I) g_t(x) / Z`` with the
*guidance potential*

    g_t(x_t) = E_ref[g_0(X_0) | X_t = x_t],
    X_0 | x_t ~ N(sqrt(alpha_bar_t) x_t, sigma^2 (1 - alpha_bar_t) I)

(``sqrt(alpha_bar_t) = sqrt(1 - lambda_t)`` in the paper's notation). Any approximation
``g_hat_t`` that is positive (finite ``log g_hat_t``) wherever the target can still be
reached gives a valid (unbiased) sampler; a better one gives lower variance. The naive
potential of a target with bounded support is ``-inf`` at intermediate times where
``sqrt(alpha_bar_t) x`` leaves the support although ``x`` may still end inside it: it
biases ``pdds`` (which counts and warns about it); build it on a floored log-density
instead, passed as a plain function so that the last step still uses ``g_0``.

- ``NaivePotential``: ``g_hat_t(x) = g_0(sqrt(alpha_bar_t) x)`` (the paper's
  training-free guidance, ``potential=None`` in ``pdds``).
- ``LearnedPotential``: the naive value corrected by a small equinox network,
  ``log g_hat_t(x) = (1 + s_t a_theta(t)) log g_naive_t(x) + s_t f_theta(t, sqrt(alpha_bar_t)
  x)`` with
  ``s_t = sqrt(1 - alpha_bar_t)`` (so it is exact at ``t = 0``), trained by
  ``fit_pdds_potential`` on the paper's score-matching loss:

      E || grad log g_hat_t(x_t) - sqrt(alpha_bar_t) grad log g_0(x_0) ||^2,
      x_0 ~ PDDS particles,  x_t = sqrt(alpha_bar_t) x_0 + sigma sqrt(1 - alpha_bar_t) eps,

  whose minimiser is ``grad log g_t`` (Tweedie / denoising score identity).

A potential is any callable ``potential(t, x) -> log g_hat_t(x)`` on one particle
(``t`` a scalar, ``x`` shape ``(dim,)``); an equinox ``Module`` is passed to the jitted
sampler as a traced argument, so retraining does not recompile.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

from particlekit.diffusion.schedules import NoiseSchedule, get_schedule

__all__ = [
    "log_g0",
    "NaivePotential",
    "LearnedPotential",
    "init_learned_potential",
    "score_matching_loss",
    "fit_pdds_potential",
]


def log_g0(log_density: Callable, sigma: float, x: jax.Array) -> jax.Array:
    """``log g_0(x) = log gamma(x) - log N(x; 0, sigma^2 I)`` for one particle ``x (dim,)``."""
    ref = dist.Normal(jnp.zeros_like(x), sigma).log_prob(x).sum()
    return jnp.asarray(log_density(x)).reshape(()) - ref


class NaivePotential(eqx.Module):
    """Training-free guidance ``log g_hat_t(x) = log g_0(sqrt(alpha_bar_t) x)``.

    Exact at ``t = 0`` and exact at every ``t`` when the target is the reference.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from particlekit.diffusion.potentials import NaivePotential
    >>> pot = NaivePotential(lambda x: -0.5 * jnp.sum((x - 1.0) ** 2))
    >>> float(pot(0.0, jnp.ones(2)))  # log g_0(1) = 0 - log N(1; 0, 1) per dim
    2.837877...
    """

    exact_at_zero = True  # g_hat_0 = g_0: the sampler needs no special final step

    log_density: Callable
    sigma: float = eqx.field(static=True, default=1.0)
    schedule: NoiseSchedule = eqx.field(static=True, default=NoiseSchedule(kind="cosine"))

    def __call__(self, t, x):
        scale = jnp.sqrt(self.schedule.alpha_bar(t))
        return log_g0(self.log_density, self.sigma, scale * x)


def _time_features(t, num_frequencies: int):
    freqs = 2.0 ** jnp.arange(num_frequencies) * math.pi
    return jnp.concatenate([jnp.atleast_1d(t), jnp.sin(freqs * t), jnp.cos(freqs * t)])


class LearnedPotential(eqx.Module):
    """Learned guidance ``log g_hat_t(x) = (1 + s_t a(t)) log g_naive_t(x) + s_t f(t, x)``
    with ``s_t = sqrt(1 - alpha_bar_t)``, ``a`` a linear map of time features and ``f`` an
    equinox MLP on ``(time features, sqrt(alpha_bar_t) x / sigma)``. Both start at zero
    (the naive potential).

    Build it with ``init_learned_potential`` or ``fit_pdds_potential``; call it as
    ``pot(t, x)`` on one particle.
    """

    exact_at_zero = True  # s_0 = 0, so g_hat_0 = g_0

    naive: NaivePotential
    net: eqx.nn.MLP
    scale_head: eqx.nn.Linear
    num_frequencies: int = eqx.field(static=True, default=4)

    def correction(self, t, x):
        """``(a(t), f(t, x))``, the two learned terms."""
        feats = _time_features(t, self.num_frequencies)
        a = self.scale_head(feats)[0]
        # g_t(x) depends on x only through sqrt(alpha_bar_t) x (it is E[g_0(sqrt(alpha_bar_t)
        # x + noise)]), so the network sees that scaled input: flat in x at t = 1.
        u = jnp.sqrt(self.naive.schedule.alpha_bar(t)) * x / self.naive.sigma
        f = self.net(jnp.concatenate([feats, u]))[0]
        return a, f

    def __call__(self, t, x):
        s = self.naive.schedule.sigma(t)
        a, f = self.correction(t, x)
        return (1.0 + s * a) * self.naive(t, x) + s * f


def init_learned_potential(
    key: jax.Array,
    log_density: Callable,
    dim: int,
    *,
    sigma: float = 1.0,
    schedule="cosine",
    width: int = 64,
    depth: int = 2,
    num_frequencies: int = 4,
) -> LearnedPotential:
    """A ``LearnedPotential`` equal to the naive potential (zero-initialised heads)."""
    sched = get_schedule(schedule)
    k1, k2 = jax.random.split(key)
    nf = 1 + 2 * num_frequencies
    net = eqx.nn.MLP(nf + dim, 1, width, depth, activation=jax.nn.silu, key=k1)
    last = net.layers[-1]
    net = eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        net,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )
    head = eqx.nn.Linear(nf, 1, key=k2)
    head = eqx.tree_at(
        lambda m: (m.weight, m.bias), head, (jnp.zeros_like(head.weight), jnp.zeros_like(head.bias))
    )
    naive = NaivePotential(log_density, float(sigma), sched)
    return LearnedPotential(naive, net, head, num_frequencies)


def score_matching_loss(potential: LearnedPotential, t, x_t, grad_naive, target):
    """Mean over a batch of ``|| grad log g_hat_t(x_t) - target ||^2 / dim``.

    ``grad_naive = grad log g_naive_t(x_t)`` and ``target = sqrt(alpha_bar_t) grad log
    g_0(x_0)`` are precomputed (they do not depend on the network), so training
    differentiates only through the network. Shapes: ``t (B,)``, the rest ``(B, dim)``.
    """
    sched = potential.naive.schedule

    def one(t, x, gn, tg):
        s = sched.sigma(t)
        a, _ = potential.correction(t, x)
        grad_f = jax.grad(lambda z: potential.correction(t, z)[1])(x)
        grad = (1.0 + s * a) * gn + s * grad_f
        return jnp.mean((grad - tg) ** 2)

    return jnp.mean(jax.vmap(one)(t, x_t, grad_naive, target))


def _training_batch(key, potential: LearnedPotential, x0, grad_log_g0, batch_size):
    """Draw ``(t, x_t, grad log g_naive_t(x_t), sqrt(alpha_bar_t) grad log g_0(x_0))``."""
    naive = potential.naive
    k_idx, k_t, k_eps = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (batch_size,), 0, x0.shape[0])
    t = jax.random.uniform(k_t, (batch_size,), minval=1e-3, maxval=1.0)
    ab = naive.schedule.alpha_bar(t)[:, None]
    eps = jax.random.normal(k_eps, (batch_size, x0.shape[1]))
    x_t = jnp.sqrt(ab) * x0[idx] + naive.sigma * jnp.sqrt(1.0 - ab) * eps
    grad_naive = jax.vmap(jax.grad(naive, argnums=1))(t, x_t)
    grad_naive = jnp.where(jnp.isfinite(grad_naive), grad_naive, 0.0)
    target = jnp.sqrt(ab) * grad_log_g0[idx]
    return t, x_t, grad_naive, target


@eqx.filter_jit
def _train_chunk(key, potential, opt_state, x0, grad_log_g0, optimizer, batch_size, num_steps):
    # only the network is trained (a PyTree target's own arrays stay fixed)
    params, static = eqx.partition((potential.net, potential.scale_head), eqx.is_inexact_array)
    rebuild = lambda p: eqx.tree_at(
        lambda m: (m.net, m.scale_head), potential, eqx.combine(p, static)
    )

    def body(carry, step_key):
        params, opt_state = carry
        batch = _training_batch(step_key, rebuild(params), x0, grad_log_g0, batch_size)
        loss, grads = eqx.filter_value_and_grad(lambda p: score_matching_loss(rebuild(p), *batch))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(
        body, (params, opt_state), jax.random.split(key, num_steps)
    )
    return rebuild(params), opt_state, losses


@eqx.filter_jit
def _training_data(key, naive: NaivePotential, samples, log_weights):
    """Resample the weighted PDDS output to equal weights; ``grad log g_0`` at each point
    (zero where it is not finite) and the number of such points."""
    from particlekit import resampling

    idx = resampling.systematic(key, log_weights)
    x0 = samples[idx]
    grads = jax.vmap(jax.grad(lambda x: log_g0(naive.log_density, naive.sigma, x)))(x0)
    ok = jnp.all(jnp.isfinite(grads), axis=1, keepdims=True)
    return x0, jnp.where(ok, grads, 0.0), jnp.sum(~ok, dtype=jnp.int32)


def _check_training_round(round_number: int, failed, num_nonfinite_grads, num_points: int):
    """After a fitting round's PDDS run (eager calls only; under a trace nothing is
    checked): a ``ValueError`` when the run failed (every weight zero: the training points
    would be an arbitrary resample of dead particles, and the network would be fitted to
    nothing) or when ``grad log g_0`` is non-finite at every training point; a
    ``RuntimeWarning`` when it is at some (those points are fitted to a zero gradient)."""
    if isinstance(failed, jax.core.Tracer) or isinstance(num_nonfinite_grads, jax.core.Tracer):
        return
    if bool(failed):
        raise ValueError(
            f"fit_pdds_potential: the PDDS run of round {round_number} failed (every weight "
            "became zero), so there is nothing to fit the potential on. The log-density is "
            "-inf or NaN wherever the particles went: check it on draws from N(0, sigma^2 I) "
            "(see the RuntimeWarning above and docs/diffusion.md)"
        )
    bad = int(num_nonfinite_grads)
    if bad == num_points:
        raise ValueError(
            f"fit_pdds_potential: grad log_density is NaN or infinite at every one of the "
            f"{num_points} training points of round {round_number}; the potential cannot be "
            "fitted (a log-density whose value is finite but whose gradient is not, e.g. "
            "jnp.sqrt at 0 or a jnp.where whose other branch is NaN)"
        )
    if bad:
        warnings.warn(
            f"fit_pdds_potential: grad log_density is NaN or infinite at {bad} of the "
            f"{num_points} training points of round {round_number}; they are fitted to a zero "
            "gradient, which biases the potential there (a log-density whose value is finite "
            "but whose gradient is not, e.g. jnp.sqrt at 0 or a jnp.where whose other branch "
            "is NaN)",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_training_args(learning_rate, width, depth, potential) -> None:
    """A ``ValueError`` before tracing for a learning rate that is not a positive finite
    number (NaN made every parameter NaN, a negative one climbed the loss, zero trained
    nothing: all silently), a width that is not a positive integer, a depth that is not a
    non-negative integer (``-1`` raised an IndexError) or a warm start that is not a
    ``LearnedPotential`` (an AttributeError)."""
    if not isinstance(learning_rate, jax.core.Tracer):
        try:
            ok = not isinstance(learning_rate, (bool, str)) and float(learning_rate) > 0
            ok = ok and math.isfinite(float(learning_rate))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"learning_rate must be a positive finite number, got {learning_rate!r}"
            )
    if potential is not None:
        if not isinstance(potential, LearnedPotential):
            raise ValueError(
                "potential must be None or a LearnedPotential (a previous "
                f"fit_pdds_potential result) to warm-start from, got {type(potential).__name__}"
            )
        return  # width and depth are the warm start's
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width <= 0:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer (hidden layers), got {depth!r}")


def fit_pdds_potential(
    key: jax.Array,
    log_density: Callable,
    dim: int,
    *,
    sigma: float = 1.0,
    schedule="cosine",
    num_rounds: int = 3,
    num_train_steps: int = 600,
    batch_size: int = 256,
    learning_rate: float = 2e-3,
    num_particles: int = 1000,
    num_steps: int = 16,
    num_mcmc_steps: int = 2,
    width: int = 64,
    depth: int = 2,
    potential: LearnedPotential | None = None,
    progress_bar: bool | None = None,
    return_losses: bool = False,
):
    """Learn a PDDS guidance potential by iterated score matching (Phillips et al. 2024):
    run PDDS with the current potential, fit the network on its particles, repeat.

    Parameters
    ----------
    key : PRNG key
    log_density : callable
        ``log gamma(x)`` for one particle ``x (dim,)``, unnormalised.
    dim : int
        Dimension of ``x``.
    sigma, schedule
        Reference scale and noise schedule; pass the same ones to
        ``pdds``.
    num_rounds : int
        Rounds of (sample, fit). Round 1 samples with the naive potential.
    num_train_steps, batch_size, learning_rate
        Adam steps per round, minibatch size and learning rate (optax, cosine decay).
    num_particles, num_steps, num_mcmc_steps
        The PDDS run that produces the training particles in each round.
    width, depth
        Hidden width and number of hidden layers of the MLP.
    potential : LearnedPotential, optional
        Warm start (e.g. from a previous call).
    progress_bar : bool, optional
        tqdm bar over the training steps; ``None`` (default): shown when standard error is
        a terminal.
    return_losses : bool
        Also return the loss curve, shape ``(num_rounds * num_train_steps,)``.

    Returns
    -------
    LearnedPotential
        Usable as ``pdds(..., potential=pot)``; an equinox Module (a PyTree).

    Raises
    ------
    ValueError
        When a round's PDDS run fails (every weight zero: nothing to fit on) or
        ``grad log_density`` is non-finite at every training point; a
        ``RuntimeWarning`` when it is at some of them (fitted to a zero gradient there).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> logp = lambda x: -0.5 * jnp.sum(((x - 2.75) / 0.25) ** 2)
    >>> pot = pk.diffusion.fit_pdds_potential(jax.random.key(0), logp, 1, num_rounds=1,
    ...     num_train_steps=50, progress_bar=False)
    >>> res = pk.diffusion.pdds(jax.random.key(1), logp, 1, num_particles=500, num_steps=8,
    ...     potential=pot)  # 50 steps are for speed: this run still warns (degenerate ESS)
    """
    from particlekit.diffusion.pdds import _check_inputs, pdds
    from particlekit.kernels import check_key, check_num_particles
    from particlekit.run import resolve_progress_bar

    check_key(key)

    dim = _check_inputs(log_density, dim, num_particles, num_steps, sigma)
    num_rounds = check_num_particles(num_rounds, "num_rounds")
    num_train_steps = check_num_particles(num_train_steps, "num_train_steps")
    batch_size = check_num_particles(batch_size, "batch_size")
    _check_training_args(learning_rate, width, depth, potential)
    sched = get_schedule(schedule)
    key, k_init = jax.random.split(key)
    if potential is None:
        potential = init_learned_potential(
            k_init, log_density, dim, sigma=sigma, schedule=sched, width=width, depth=depth
        )
    total = num_rounds * num_train_steps
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, total, alpha=0.05))
    opt_state = optimizer.init(
        eqx.filter((potential.net, potential.scale_head), eqx.is_inexact_array)
    )
    chunk = min(num_train_steps, 100)
    bar = None
    if resolve_progress_bar(progress_bar):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="fit_pdds_potential")
    losses = []
    for r in range(num_rounds):
        k_run, k_data, k_train, key = jax.random.split(key, 4)
        current = None if r == 0 else potential
        with warnings.catch_warnings():
            if r == 0:
                # the naive guidance that training corrects: its degenerate weights are
                # expected here (a warning about them would blame the fix itself)
                warnings.filterwarnings("ignore", "PDDS: the weights degenerated")
            res = pdds(
                k_run,
                log_density,
                dim,
                num_particles=num_particles,
                num_steps=num_steps,
                sigma=sigma,
                schedule=sched,
                potential=current,
                num_mcmc_steps=num_mcmc_steps,
            )
        x0, g0, num_nonfinite_grads = _training_data(
            k_data, potential.naive, res.samples, res.log_weights
        )
        _check_training_round(r + 1, res.failed, num_nonfinite_grads, x0.shape[0])
        done = 0
        while done < num_train_steps:
            n = min(chunk, num_train_steps - done)
            potential, opt_state, chunk_losses = _train_chunk(
                jax.random.fold_in(k_train, done),
                potential,
                opt_state,
                x0,
                g0,
                optimizer,
                batch_size,
                n,
            )
            losses.append(chunk_losses)
            done += n
            if bar is not None:
                bar.update(n)
                bar.set_postfix(round=r + 1, loss=float(chunk_losses[-1]))
    if bar is not None:
        bar.close()
    if return_losses:
        return potential, jnp.concatenate(losses)
    return potential
