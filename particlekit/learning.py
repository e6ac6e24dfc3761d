"""Parameter learning in state-space models with particle smoothers.

Maximum likelihood by stochastic approximation. Fisher's identity writes the score as a
smoothed additive functional,

    grad_theta log p_theta(y_{0:T-1}) = E_theta[ sum_t h_t(x_{t-1}, x_t) | y_{0:T-1} ],
    h_t = grad_theta log [ f_theta(x_t | x_{t-1}) g_theta(y_t | x_t) ]
    (h_0 = grad_theta log [ p_theta(x_0) g_theta(y_0 | x_0) ]),

so PaRIS (or one PaRIS particle Gibbs sweep, Cardoso et al. 2023, Sec. 4) estimates it at
cost linear in ``N``; ``jax.grad`` of the model's NumPyro log-densities gives ``h_t``. The
parameters follow an optax optimiser on ``-score / T``. With the PPG estimator the
conditioning path is carried over from one parameter update to the next, as in the paper.

Markov score climbing (Naesseth, Lindsten & Blei 2020) fits a proposal
``q_phi(x_t | x_{t-1}, y_t)`` by minimising ``KL(p(x | y) || q_phi(x | y))``: each iteration
draws a path ``x*`` by guided conditional SMC with proposal ``q_phi`` (a Markov kernel
leaving ``p(x | y)`` invariant) and takes an ascent step on
``log q_phi(x*_0 | y_0) + sum_t log q_phi(x*_t | x*_{t-1}, y_t)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from particlekit import kernels
from particlekit import resampling as _rs
from particlekit.backward import PARIS_METHODS
from particlekit.pgibbs import ppg_sweep, resampling_scheme_for_csmc
from particlekit.run import progress_bar_callback, resolve_progress_bar, warn_if_counted
from particlekit.smoothing import _check_method, _check_trials, _take, paris_forward
from particlekit.ssm import StateSpaceModel, is_missing, missing_mask
from particlekit.types import PyTree

__all__ = ["mle", "MLEResult", "score_functional", "score_climbing", "ScoreClimbingResult"]


def _one(ssm: StateSpaceModel, fn_name: str, *args):
    """Call a per-particle log-density of ``ssm`` on one particle, batching if vectorised."""
    fn = getattr(ssm, fn_name)
    if not ssm.vectorized:
        return fn(*args)
    batched = [jax.tree.map(lambda a: jnp.asarray(a)[None], a) for a in args[:-1]]
    return fn(*batched, args[-1])[0]


def score_functional(model_fn: Callable, theta: PyTree, ys):
    """The Fisher-identity functional of the score at ``theta``.

    Returns ``(additive_fn, initial_fn)`` with ``additive_fn(x_prev, x, t) = grad_theta
    [log f_theta(x | x_prev) + log g_theta(y_t | x)]`` and ``initial_fn(x_0) = grad_theta
    [log p_theta(x_0) + log g_theta(y_0 | x_0)]`` (pytrees shaped like ``theta``), ready for
    ``particlekit.smoothing.paris``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(theta["a"] * x_prev, 1.0),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> theta = {"a": jnp.array(0.5)}
    >>> _, ys = model_fn(theta).simulate(jax.random.key(0), 20)
    >>> h, h0 = pk.learning.score_functional(model_fn, theta, ys)
    >>> float(h(1.0, 2.0, 1)["a"])  # (x - a x_prev) x_prev
    1.5
    """

    def log_step(th, x_prev, x, t):
        ssm = model_fn(th)
        y = _take(ys, t)
        return _one(ssm, "transition_log_prob", x_prev, x, t) + _one(
            ssm, "observation_log_prob", x, y, t
        )

    def log_first(th, x):
        ssm = model_fn(th)
        y0 = _take(ys, 0)
        log_p0 = ssm.initial_log_prob(x)
        return log_p0 + _one(ssm, "observation_log_prob", x, y0, jnp.int32(0))

    def additive_fn(x_prev, x, t):
        return jax.grad(log_step)(theta, x_prev, x, t)

    def initial_fn(x):
        return jax.grad(log_first)(theta, x)

    return additive_fn, initial_fn


def default_learning_rate(step):
    """Robbins–Monro step sizes ``0.5 (1 + k / 10)^-0.6`` (sum infinite, squares finite)."""
    return 0.5 * (1.0 + step / 10.0) ** -0.6


DEFAULT_OPTIMIZER = optax.sgd(default_learning_rate)
"""``mle``'s and ``score_climbing``'s default optimizer: one object, so that the compiled
run (the optimizer is a static argument) is reused by the next call instead of recompiled."""


# --------------------------------------------------------------------------------------
# checks before tracing and failure-safe updates
# --------------------------------------------------------------------------------------
_USER_ERRORS = (KeyError, IndexError, TypeError, AttributeError)


def _all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf of ``tree`` is finite (a traced bool)."""
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _keep_if(failed, old, new):
    """``old`` where ``failed``, else ``new`` (leaf by leaf)."""
    return jax.tree.map(lambda a, b: jnp.where(failed, a, b), old, new)


def _skipping_update(optimizer, failed, grads, opt_state, params):
    """One optimiser step, or none at all (parameters and optimiser state kept) where
    ``failed``: no NaN from a failed sweep ever reaches them."""
    updates, new_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: jnp.where(failed, jnp.zeros_like(u), u), updates)
    return optax.apply_updates(params, updates), _keep_if(failed, opt_state, new_state)


def _as_params(params, name: str):
    """``params`` with float leaves; a ``ValueError`` before tracing for an empty pytree, a
    non-numeric leaf or a non-finite value (concrete leaves only)."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{name} must be a non-empty pytree of arrays, got {params!r}")
    try:
        dtypes = [jnp.result_type(a) for a in leaves]
        if any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes):
            # the cast below kept the real part only
            raise ValueError(f"{name} must be real, got leaves of dtypes {dtypes}")
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.result_type(float)), params)
    except TypeError as err:
        raise ValueError(f"{name} must be a pytree of numeric arrays: {err}") from err
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        # numpy, not jnp: under an outer jit, jnp ops on a concrete closed-over leaf trace
        if not isinstance(leaf, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(leaf))):
            where = jax.tree_util.keystr(path) or "(the array)"
            raise ValueError(f"{name} must be finite, got a NaN or infinite value at {name}{where}")
    return params


@partial(jax.jit, static_argnames=("optimizer", "num_iterations"))
def _optimizer_probe(params, *, optimizer, num_iterations):
    """Run ``optimizer`` for ``num_iterations`` steps on the constant loss gradient 1 (the
    parameters held at ``params``): whether every update was finite, the sum of the
    updates' inner products with the gradient (negative for a descent method) and the
    largest absolute update."""
    grads = jax.tree.map(jnp.ones_like, params)

    def one(state, _):
        updates, state = optimizer.update(grads, state, params)
        leaves = jax.tree.leaves(updates)
        dot = sum(jnp.sum(u) for u in leaves)
        size = jnp.max(jnp.stack([jnp.max(jnp.abs(u)) for u in leaves]))
        return state, (_all_finite(updates), dot, size)

    _, (finite, dots, sizes) = jax.lax.scan(one, optimizer.init(params), None, num_iterations)
    return jnp.all(finite), jnp.sum(dots), jnp.max(sizes)


def _check_optimizer(optimizer, params, num_iterations: int):
    """A ``ValueError`` before tracing for an optimizer that cannot descend: NaN or infinite
    updates (a NaN learning rate), updates along the loss gradient (a negative learning
    rate: it would descend the likelihood) or none at all (a zero learning rate). Checked
    on the constant gradient 1 over the run's ``num_iterations`` steps, so schedules that
    warm up from zero pass. The default optimizer is not probed."""
    if optimizer is None:
        return DEFAULT_OPTIMIZER
    if not isinstance(optimizer, optax.GradientTransformation) and not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise ValueError(f"optimizer must be an optax.GradientTransformation, got {optimizer!r}")
    # concrete stand-ins for traced parameters, and an eager probe even inside an outer
    # jit / vmap (else its answers are tracers that bool() cannot read)
    params = jax.tree.map(
        lambda a: np.zeros(a.shape, a.dtype) if isinstance(a, jax.core.Tracer) else a, params
    )
    with jax.ensure_compile_time_eval():
        probe = _optimizer_probe(params, optimizer=optimizer, num_iterations=num_iterations)
    if any(isinstance(a, jax.core.Tracer) for a in probe):
        return optimizer  # an optimizer closing over traced values: not checkable here
    finite, dot, size = probe
    if not bool(finite):
        raise ValueError(
            "the optimizer's updates are not finite on a unit gradient (a NaN or infinite "
            "learning rate?): every iterate would be NaN"
        )
    if float(size) == 0.0:
        raise ValueError(
            f"the optimizer never moves the parameters over {num_iterations} iterations (a "
            "zero learning rate?)"
        )
    if float(dot) > 0.0:
        raise ValueError(
            "the optimizer moves the parameters along the loss gradient (a negative learning "
            "rate?): it would descend the objective instead of ascending it. Pass a positive "
            "learning rate (the recipes minimise -score / T)"
        )
    return optimizer


class MLEResult(NamedTuple):
    """Output of ``mle``.

    Attributes
    ----------
    theta : PyTree
        Final iterate.
    theta_average : PyTree
        Polyak–Ruppert average of the iterates over the last half of the iterations
        (lower variance; the recommended point estimate).
    trace : PyTree
        Iterates, leaves ``(num_iterations, ...)`` (after each update).
    scores : PyTree
        Score estimates ``hat grad log p_theta(y)`` at each iterate, ``(num_iterations, ...)``.
    log_evidence : Array of shape (num_iterations,)
        Particle estimate of ``log p_theta(y)`` at each iterate (PaRIS) or the conditional
        sweep's value (PPG, diagnostic only).
    num_failed : Array of shape (), int32
        Iterations whose sweep failed (every weight zero at some step, e.g. impossible data,
        or a non-finite score estimate; for PPG also a sweep in which the reference held
        all the weight at some step, its ``log_evidence`` then ``-inf``): their update was
        skipped (``theta``, the optimiser state and the PPG reference kept as they were),
        so no NaN reaches ``theta``. Failures from some iteration to the end, after
        successful ones, mean that the iterates diverged (``mle`` warns so).
    failed : Array of shape (), bool
        ``num_failed > 0``: some score estimates were meaningless; with every iteration
        failed, ``theta`` is ``theta_init``.
    """

    theta: PyTree
    theta_average: PyTree
    trace: PyTree
    scores: PyTree
    log_evidence: jax.Array
    num_failed: jax.Array = 0
    failed: jax.Array = False

    def to_inference_data(self, ys=None):
        """The run for ArviZ (``particlekit.arviz.from_mle``): ``theta_trace`` and
        ``score_trace`` (the iterates and score estimates, dims ``(chain, iteration,
        ...)``), ``theta`` and ``theta_average`` (``(chain, ...)``), ``iteration_stats``
        (``log_evidence``; ``(chain, iteration)``) and ``observed_data`` (``y``, when ``ys``
        is given). Parameters are named by their dict keys (a bare array is ``theta``). A
        ``jax.vmap`` batch of runs (``log_evidence`` of shape ``(C, num_iterations)``) is
        one chain per run.

        Examples
        --------
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
        >>> def model_fn(theta):
        ...     return pk.StateSpaceModel(
        ...         initial=lambda: dist.Normal(0.0, 1.0),
        ...         transition=lambda x_prev, t: dist.Normal(theta["a"] * x_prev, 1.0),
        ...         observation=lambda x, t: dist.Normal(x, 0.5))
        >>> _, ys = model_fn({"a": 0.8}).simulate(jax.random.key(0), 20)
        >>> res = pk.learning.mle(jax.random.key(1), model_fn, {"a": jnp.array(0.2)}, ys,
        ...                       num_particles=16, num_iterations=10)
        >>> res.to_inference_data(ys)["theta_trace"]["a"].shape
        (1, 10)
        """
        from particlekit.arviz import from_mle

        return from_mle(self, ys)


@partial(
    jax.jit,
    static_argnames=(
        "model_fn", "num_particles", "num_iterations", "optimizer", "estimator",
        "num_backward", "scheme", "ess_threshold", "method", "max_trials", "progress_bar",
    ),
)  # fmt: skip
def _mle(key, theta_init, ys, *, model_fn, num_particles, num_iterations, optimizer, estimator,
         num_backward, scheme, ess_threshold, method, max_trials, progress_bar):  # fmt: skip
    num_steps = ys.shape[0]
    k_ref, k_iter = jax.random.split(key)
    ref0, _ = model_fn(theta_init).simulate(k_ref, num_steps)
    tick = progress_bar_callback(num_iterations, desc="mle") if progress_bar else None

    def step(carry, inp):
        theta, opt_state, ref = carry
        i, k = inp
        h, h0 = score_functional(model_fn, theta, ys)
        cfg = dict(
            ssm=model_fn(theta), additive_fn=h, initial_fn=h0, num_particles=num_particles,
            num_backward=num_backward, scheme=scheme, ess_threshold=ess_threshold,
            method=method, log_transition_bound=None, max_trials=max_trials,
        )  # fmt: skip
        if estimator == "paris":
            final, _, _, _ = paris_forward(k, ys, cfg=cfg)
            score, log_z = final.estimate, final.particle_state.log_evidence
        else:
            score, ref, log_z, propped = ppg_sweep(k, ys, ref, cfg=cfg, with_propped=True)
            # the reference alone carrying the weight is a failure too: the "score" is then
            # the reference path's, and a diverging theta would go on diverging unflagged
            log_z = jnp.where(propped, -jnp.inf, log_z)
        # a failed sweep (every weight zero at some step: log_z = -inf, or a non-finite
        # score) leaves theta, the optimiser state and the reference as they were
        failed = ~jnp.isfinite(log_z) | ~_all_finite(score)
        ref = _keep_if(failed, carry[2], ref)
        grads = jax.tree.map(lambda g: jnp.where(failed, 0.0, -g / num_steps), score)
        theta, opt_state = _skipping_update(optimizer, failed, grads, opt_state, theta)
        if tick is not None:
            tick(i)
        return (theta, opt_state, ref), (theta, score, log_z, failed)

    init = (theta_init, optimizer.init(theta_init), ref0)
    keys = jax.random.split(k_iter, num_iterations)
    steps = jnp.arange(num_iterations)
    (theta, _, _), (trace, scores, log_z, failed) = jax.lax.scan(step, init, (steps, keys))
    half = num_iterations // 2
    average = jax.tree.map(lambda a: jnp.mean(a[half:], axis=0), trace)
    num_failed = jnp.sum(failed).astype(jnp.int32)
    return MLEResult(theta, average, trace, scores, log_z, num_failed, num_failed > 0)


def mle(
    key: jax.Array,
    model_fn: Callable[[PyTree], StateSpaceModel],
    theta_init: PyTree,
    ys,
    *,
    num_particles: int,
    num_iterations: int,
    optimizer: optax.GradientTransformation | None = None,
    estimator: str = "paris",
    num_backward: int = 2,
    resampling="multinomial",
    ess_threshold: float = 1.0,
    method: str = "auto",
    max_trials: int = 32,
    progress_bar: bool | None = None,
) -> MLEResult:
    """Maximum likelihood by stochastic gradient ascent with particle score estimates.

    At each iteration the score ``grad_theta log p_theta(y_{0:T-1})`` is estimated through
    Fisher's identity (see ``score_functional``) by PaRIS (``estimator="paris"``) or
    one PaRIS particle Gibbs sweep (``estimator="ppg"``, nearly unbiased at small ``N``),
    and the optimiser takes a step on ``-score / T``.

    Parameters
    ----------
    key : PRNG key
    model_fn : callable
        ``model_fn(theta) -> StateSpaceModel``, differentiable in ``theta`` (a pytree of
        unconstrained arrays; map to constrained values inside ``model_fn``).
    theta_init : PyTree
        Starting point.
    ys : Array of shape (T, ...)
    num_particles : int
        Particles per score estimate (``>= 2`` for PPG).
    num_iterations : int
        Number of parameter updates.
    optimizer : optax.GradientTransformation, optional
        Default: Robbins–Monro steps ``optax.sgd(0.5 (1 + k / 10)^-0.6)`` on ``-score / T``
        (suited to unconstrained parameters with per-observation Fisher information of
        order one; pass e.g. ``optax.adam(1e-2)`` otherwise). The optimizer is a static
        argument of the compiled run: pass the same object again to reuse the compilation.
    estimator : {"paris", "ppg"}
    num_backward, method, max_trials
        PaRIS options (see ``particlekit.smoothing.paris``).
    resampling, ess_threshold
        Resampling of the filter (PPG always resamples, with the conditional scheme).
    progress_bar : bool, optional
        Show a tqdm bar over the iterations (about 100 updates per run); ``None``
        (default): shown when standard error is a terminal
        (``particlekit.run.resolve_progress_bar``).

    Returns
    -------
    MLEResult
        ``.to_inference_data()`` gives an ArviZ object. Check ``failed``: an iteration
        whose sweep failed (impossible data, a non-finite score, a PPG sweep carried by
        its reference alone) is skipped, counted in ``num_failed`` and warned about after
        an eager call. A too-large learning rate typically throws ``theta`` where every
        later sweep fails: the run is then stuck there, and the warning says that the
        iterates diverged.

    Raises
    ------
    ValueError
        Before tracing, for a non-finite ``theta_init``, a ``theta_init`` that ``model_fn``
        cannot read, and an ``optimizer`` whose updates are NaN, zero throughout or along
        the loss gradient (a NaN, zero or negative learning rate).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(theta["a"] * x_prev, 1.0),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = model_fn({"a": 0.8}).simulate(jax.random.key(0), 50)
    >>> res = pk.learning.mle(jax.random.key(1), model_fn, {"a": jnp.array(0.2)}, ys,
    ...                       num_particles=64, num_iterations=50)
    >>> res.trace["a"].shape
    (50,)
    """
    kernels.check_key(key)
    if estimator not in ("paris", "ppg"):
        raise ValueError(f"estimator must be 'paris' or 'ppg', got {estimator!r}")
    num_particles = kernels.check_num_particles(num_particles)
    num_iterations = kernels.check_num_particles(num_iterations, "num_iterations")
    num_backward = kernels.check_num_particles(num_backward, "num_backward")
    _check_method(method, PARIS_METHODS)
    theta_init = _as_params(theta_init, "theta_init")
    try:
        ssm = model_fn(theta_init)
        if not isinstance(ssm, StateSpaceModel):
            raise ValueError("model_fn(theta) must return a particlekit.StateSpaceModel")
        ys = ssm.validate(ys, num_particles)
    except _USER_ERRORS as err:
        raise ValueError(
            f"model_fn(theta_init) failed ({type(err).__name__}: {str(err)[:120]}): "
            f"theta_init (structure {jax.tree.structure(theta_init)}) does not match the "
            "parameters model_fn reads"
        ) from err
    if estimator == "ppg":
        if num_particles < 2:
            raise ValueError("the PPG estimator needs num_particles >= 2")
        resampling_scheme_for_csmc(resampling)
    ess_threshold = kernels.check_ess_threshold(ess_threshold)
    optimizer = _check_optimizer(optimizer, theta_init, num_iterations)
    result = _mle(
        key, theta_init, ys, model_fn=model_fn, num_particles=num_particles,
        num_iterations=num_iterations, optimizer=optimizer, estimator=estimator,
        num_backward=num_backward, scheme=_rs.get_scheme(resampling),
        ess_threshold=float(ess_threshold),
        method=method, max_trials=_check_trials(max_trials),
        progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip
    _warn_if_failed(result)
    return result


def _failed_iterations(result: MLEResult) -> jax.Array:
    """Which iterations of ``result`` failed (``-inf`` or NaN ``log_evidence``, or a
    non-finite score), shape ``(..., num_iterations)``: what ``_mle`` counts."""
    log_z = jnp.asarray(result.log_evidence)
    bad_score = jax.tree.map(
        lambda s: ~jnp.all(jnp.isfinite(s).reshape(*log_z.shape, -1), axis=-1), result.scores
    )
    return jax.tree.reduce(jnp.logical_or, bad_score, ~jnp.isfinite(log_z))


def _warn_if_failed(result: MLEResult) -> None:
    """The ``RuntimeWarning`` of an eager ``mle`` run with failed iterations. Failures that
    start after successful iterations and last to the end mean that the iterates diverged
    (an update moved ``theta`` where the sweep degenerates, and every later update is
    skipped there): the warning says so instead of blaming the data."""
    if isinstance(result.num_failed, jax.core.Tracer) or int(result.num_failed) == 0:
        return
    failed = np.asarray(_failed_iterations(result))
    first = int(np.argmax(failed))
    if first > 0 and bool(np.all(failed[first:])):
        warn_if_counted(
            result.num_failed,
            "mle: the iterates diverged: every sweep from iteration "
            f"{first} on failed (every weight zero at some step, a non-finite score or, for "
            "PPG, the reference alone holding the weight, at the theta the updates reached) "
            "and the remaining {count} update(s) were "
            "skipped, so theta and theta_average are stuck there and are not estimates. "
            "Lower the learning rate, clip the updates (e.g. optax.clip_by_global_norm) or "
            "reparameterise; see MLEResult.failed",
        )
        return
    warn_if_counted(
        result.num_failed,
        "mle: {count} iteration(s) failed (every weight zero at some step, a non-finite "
        "score, or with estimator='ppg' the reference alone holding the weight, e.g. an "
        "observation the model cannot explain) and were skipped; see MLEResult.failed",
    )


# --------------------------------------------------------------------------------------
# Markov score climbing
# --------------------------------------------------------------------------------------
class ScoreClimbingResult(NamedTuple):
    """Output of ``score_climbing``.

    Attributes
    ----------
    phi : PyTree
        Final proposal parameters.
    phi_average : PyTree
        Average of the iterates over the last half of the iterations.
    trace : PyTree
        Iterates, leaves ``(num_iterations, ...)``.
    paths : Array of shape (num_iterations, T, ...)
        The conditional-SMC paths (a Markov chain targeting ``p(x | y)``).
    num_nonfinite : Array of shape (num_iterations, T), int32
        Particles of each sweep whose log-weight was NaN or ``+inf`` (counted as zero
        weight).
    failed : Array of shape (), bool
        True if in some sweep every weight, the reference's included, became zero at some
        step (impossible data, e.g. an observation with zero likelihood everywhere): the
        paths and ``phi`` are then meaningless.
    """

    phi: PyTree
    phi_average: PyTree
    trace: PyTree
    paths: jax.Array
    num_nonfinite: jax.Array
    failed: jax.Array

    def to_inference_data(self, ys=None):
        """The run for ArviZ (``particlekit.arviz.from_score_climbing``): ``phi_trace``
        (the iterates, dims ``(chain, iteration, ...)``), ``phi`` and ``phi_average``
        (``(chain, ...)``), ``posterior`` (the conditional-SMC paths ``x``, draw ``k`` being
        iteration ``k``; ``(chain, draw, time, ...)``), ``iteration_stats``
        (``num_nonfinite`` ``(chain, iteration, time)``, ``failed`` ``(chain,)``) and
        ``observed_data`` (``y``, when ``ys`` is given). Parameters are named by their dict
        keys (a bare array is ``phi``). A ``jax.vmap`` batch of runs (non-scalar
        ``failed``) is one chain per run.

        Examples
        --------
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
        >>> ssm = pk.StateSpaceModel(
        ...     initial=lambda: dist.Normal(0.0, 1.0),
        ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        ...     observation=lambda x, t: dist.Normal(x, 0.5))
        >>> _, ys = ssm.simulate(jax.random.key(0), 10)
        >>> prop = lambda phi: lambda xp, y, t: dist.Normal(phi[0] * xp + phi[1] * y, 1.0)
        >>> prop0 = lambda phi: lambda y: dist.Normal(phi[1] * y, 1.0)
        >>> res = pk.learning.score_climbing(jax.random.key(1), ssm, ys, proposal_fn=prop,
        ...     initial_proposal_fn=prop0, phi_init=jnp.zeros(2), num_particles=8,
        ...     num_iterations=10)
        >>> res.to_inference_data(ys)["posterior"]["x"].shape
        (1, 10, 10)
        """
        from particlekit.arviz import from_score_climbing

        return from_score_climbing(self, ys)


def _safe_y(y):
    """A missing observation (NaN) replaced by zeros, so that a proposal evaluated on it
    stays finite (its value is then discarded)."""
    return jnp.where(jnp.isnan(y), 0.0, y)


def _guided_csmc(key, ssm, ys, ref, *, proposal, initial_proposal, num_particles, scheme):
    """Conditional SMC with proposal ``q`` (weights ``f g / q``) and backward sampling.

    As in the guided filter, a missing ``y_t`` (NaN) is not weighted and the particles
    follow the model (``initial`` at ``t = 0``, the transition after); NaN and ``+inf``
    log-weights count as zero weight. Returns ``(path, num_nonfinite (T,), failed)``."""
    from particlekit.smoothing import _categorical, _log_f_rows, _pin_first

    cond_scheme = _rs.get_conditional_scheme(scheme)
    num_steps = ys.shape[0]
    k0, k0_model, k_run, k_back = jax.random.split(key, 4)
    n = num_particles

    def checked(log_w):
        bad = _rs.invalid_log_weights(log_w)
        log_w = jnp.where(bad, -jnp.inf, log_w)
        return log_w, jnp.sum(bad).astype(jnp.int32), ~jnp.any(jnp.isfinite(log_w))

    y0 = _take(ys, 0)
    missing0 = is_missing(y0)
    q0 = initial_proposal(_safe_y(y0))
    x0_q = q0.sample(k0, (n,))
    x0_p = ssm.initial().sample(k0_model, (n,))
    x0 = _pin_first(jnp.where(missing0, x0_p, x0_q), _take(ref, 0))
    logw0 = (
        jax.vmap(ssm.initial_log_prob)(x0)
        + jax.vmap(lambda x: ssm.observation_log_prob(x, y0, jnp.int32(0)))(x0)
        - q0.log_prob(x0)
    )
    logw0, bad0, dead0 = checked(jnp.where(missing0, 0.0, logw0))

    def body(carry, inp):
        xs, logw = carry
        t, y, r, k = inp
        k_res, k_mv, k_f = jax.random.split(k, 3)
        missing = is_missing(y)
        y_q = _safe_y(y)
        idx = cond_scheme(k_res, logw)
        xp = _take(xs, idx)
        x_f = jax.vmap(ssm.sample_transition, in_axes=(0, 0, None))(jax.random.split(k_f, n), xp, t)
        # one key per particle: a vmapped distribution keeps batch shape () and would
        # give every particle the same noise
        x_q = jax.vmap(lambda a, kk: proposal(a, y_q, t).sample(kk))(xp, jax.random.split(k_mv, n))
        new = _pin_first(jnp.where(missing, x_f, x_q), r)
        log_w = (
            jax.vmap(lambda a, b: ssm.transition_log_prob(a, b, t))(xp, new)
            + jax.vmap(lambda b: ssm.observation_log_prob(b, y, t))(new)
            - jax.vmap(lambda a, b: proposal(a, y_q, t).log_prob(b))(xp, new)
        )
        log_w, bad, dead = checked(jnp.where(missing, 0.0, log_w))
        return (new, log_w), (new, log_w, bad, dead)

    ts = jnp.arange(1, num_steps, dtype=jnp.int32)
    keys = jax.random.split(k_run, num_steps - 1)
    _, (hx, hw, hbad, hdead) = jax.lax.scan(body, (x0, logw0), (ts, ys[1:], ref[1:], keys))
    particles = jnp.concatenate([x0[None], hx])
    log_weights = jnp.concatenate([logw0[None], hw])
    num_nonfinite = jnp.concatenate([bad0[None], hbad])
    failed = dead0 | jnp.any(hdead)

    k_last, k_b = jax.random.split(k_back)
    last = _categorical(k_last, log_weights[-1], 1)[0]

    def back(x_next, inp):
        xs_t, lw_t, t, k = inp
        logits = _rs.log_normalize(lw_t)[0] + _log_f_rows(ssm, xs_t, x_next, t + 1)
        x_t = _take(xs_t, _categorical(k, logits, 1)[0])
        return x_t, x_t

    x_last = _take(particles[-1], last)
    _, path = jax.lax.scan(
        back, x_last,
        (particles[:-1], log_weights[:-1], jnp.arange(num_steps - 1, dtype=jnp.int32),
         jax.random.split(k_b, num_steps - 1)),
        reverse=True,
    )  # fmt: skip
    return jnp.concatenate([path, x_last[None]]), num_nonfinite, failed


def _check_proposals(ssm, ys, proposal_fn, initial_proposal_fn, phi) -> None:
    """A ``ValueError`` before tracing unless ``initial_proposal_fn(phi)(y0)`` and
    ``proposal_fn(phi)(x_prev, y, t)`` are distributions of one state (the shape and dtype
    of ``ssm.initial()``'s draws) with a scalar ``log_prob``; an error inside them (a
    ``phi`` that does not match, ...) is reported as such."""
    state = jax.eval_shape(lambda k: ssm.initial().sample(k), jax.random.key(0))
    y = jax.ShapeDtypeStruct(ys.shape[1:], ys.dtype)

    def law_shape(make, args, what):
        try:
            draw, log_prob = jax.eval_shape(lambda *a: _law_summary(make(*a)), *args)
        except _USER_ERRORS as err:
            raise ValueError(
                f"{what} failed ({type(err).__name__}: {str(err)[:120]}): check that it "
                "returns a numpyro Distribution of one state and that phi_init matches it"
            ) from err
        if draw.shape != state.shape or log_prob.shape != ():
            raise ValueError(
                f"{what} must be the law of one state (draws of shape {state.shape}, a "
                f"scalar log_prob), got draws of shape {draw.shape} and log_prob of shape "
                f"{log_prob.shape}"
            )

    t = jax.ShapeDtypeStruct((), jnp.int32)
    law_shape(lambda p, yy: initial_proposal_fn(p)(yy), (phi, y), "initial_proposal_fn(phi)(y0)")
    law_shape(
        lambda p, xp, yy, tt: proposal_fn(p)(xp, yy, tt),
        (phi, state, y, t),
        "proposal_fn(phi)(x_prev, y, t)",
    )


def _law_summary(law):
    """One draw and its ``log_prob`` (for shape checks under ``eval_shape``)."""
    if not hasattr(law, "sample") or not hasattr(law, "log_prob"):
        raise TypeError(f"got {type(law).__name__}, not a Distribution")
    draw = law.sample(jax.random.key(0))
    return draw, law.log_prob(draw)


def score_climbing(
    key: jax.Array,
    ssm: StateSpaceModel,
    ys,
    *,
    proposal_fn: Callable,
    initial_proposal_fn: Callable,
    phi_init: PyTree,
    num_particles: int,
    num_iterations: int,
    optimizer: optax.GradientTransformation | None = None,
    resampling="multinomial",
    progress_bar: bool | None = None,
) -> ScoreClimbingResult:
    """Markov score climbing (Naesseth, Lindsten & Blei 2020) of a proposal for an SSM.

    Minimises ``KL(p(x_{0:T-1} | y) || q_phi(x_{0:T-1} | y))`` with ``q_phi = q0_phi(x_0 |
    y_0) prod_t q_phi(x_t | x_{t-1}, y_t)``: iteration ``k`` draws ``x*_k`` by conditional SMC
    with proposal ``q_phi`` and backward sampling (Feynman–Kac model ``M_t = q_phi``,
    ``G_t = f g / q_phi``; the kernel leaves ``p(x | y)`` invariant for every ``phi``) and
    ascends ``log q_phi(x*_k | y)``.

    Parameters
    ----------
    key : PRNG key
    ssm : StateSpaceModel
        Non-vectorised model.
    ys : Array of shape (T, ...)
        Observations; a NaN ``y_t`` is missing, as in the filters: that step is not
        weighted, the particles follow the model's transition (its initial law at
        ``t = 0``) and the step's proposal term is left out of ``log q_phi`` (the proposal
        is not used there).
    proposal_fn : callable
        ``proposal_fn(phi) -> (lambda x_prev, y, t: Distribution)``.
    initial_proposal_fn : callable
        ``initial_proposal_fn(phi) -> (lambda y0: Distribution)`` of ``x_0``.
    phi_init : PyTree
    num_particles : int
        ``N >= 2``.
    num_iterations : int
    optimizer : optax.GradientTransformation, optional
        Applied to ``-grad log q_phi(x*) / T``; default: Robbins–Monro steps
        ``optax.sgd(0.5 (1 + k / 10)^-0.6)``. A static argument of the compiled run: pass
        the same object again to reuse the compilation.
    resampling : str or callable
        Scheme with a conditional version.
    progress_bar : bool, optional
        Show a tqdm bar over the iterations (about 100 updates per run); ``None``
        (default): shown when standard error is a terminal
        (``particlekit.run.resolve_progress_bar``).

    Returns
    -------
    ScoreClimbingResult
        ``.to_inference_data()`` gives an ArviZ object. Check ``failed``: impossible
        data (every weight zero at some step of a sweep) give finite but meaningless
        ``phi`` and paths.

    Raises
    ------
    ValueError
        Before tracing, for a non-finite ``phi_init``, proposals that fail on ``phi_init``
        or are not the law of one state, and an ``optimizer`` whose updates are NaN, zero
        throughout or along the loss gradient (a NaN, zero or negative learning rate).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = ssm.simulate(jax.random.key(0), 20)
    >>> prop = lambda phi: lambda xp, y, t: dist.Normal(phi[0] * xp + phi[1] * y,
    ...                                                 jnp.exp(phi[2]))
    >>> prop0 = lambda phi: lambda y: dist.Normal(phi[1] * y, jnp.exp(phi[2]))
    >>> res = pk.learning.score_climbing(jax.random.key(1), ssm, ys, proposal_fn=prop,
    ...     initial_proposal_fn=prop0, phi_init=jnp.zeros(3), num_particles=16,
    ...     num_iterations=20)
    >>> res.trace.shape
    (20, 3)
    """
    kernels.check_key(key)
    if ssm.vectorized:
        raise ValueError("score_climbing needs a non-vectorised StateSpaceModel")
    ys = ssm.validate(ys, num_particles)
    num_particles = kernels.check_num_particles(num_particles)
    if num_particles < 2:
        raise ValueError("score_climbing needs num_particles >= 2 (one is the reference)")
    num_iterations = kernels.check_num_particles(num_iterations, "num_iterations")
    scheme = resampling_scheme_for_csmc(resampling)
    phi_init = _as_params(phi_init, "phi_init")
    _check_proposals(ssm, ys, proposal_fn, initial_proposal_fn, phi_init)
    optimizer = _check_optimizer(optimizer, phi_init, num_iterations)
    return _score_climbing(
        key, ys, phi_init, ssm=ssm, proposal_fn=proposal_fn,
        initial_proposal_fn=initial_proposal_fn, num_particles=num_particles,
        num_iterations=num_iterations, optimizer=optimizer, scheme=scheme,
        progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip


@partial(
    jax.jit,
    static_argnames=("ssm", "proposal_fn", "initial_proposal_fn", "num_particles",
                     "num_iterations", "optimizer", "scheme", "progress_bar"),
)  # fmt: skip
def _score_climbing(key, ys, phi_init, *, ssm, proposal_fn, initial_proposal_fn, num_particles,
                    num_iterations, optimizer, scheme, progress_bar):  # fmt: skip
    tick = progress_bar_callback(num_iterations, desc="score_climbing") if progress_bar else None
    num_steps = ys.shape[0]
    k_ref, k_iter = jax.random.split(key)
    ref0, _ = ssm.simulate(k_ref, num_steps)
    ts = jnp.arange(1, num_steps, dtype=jnp.int32)

    observed = ~missing_mask(ys)

    def log_q(phi, path):
        # a missing step moves with the model, not q_phi: its term is left out
        q = proposal_fn(phi)
        lq = jax.vmap(lambda a, b, y, t: q(a, _safe_y(y), t).log_prob(b))(
            path[:-1], path[1:], ys[1:], ts
        )
        lq0 = initial_proposal_fn(phi)(_safe_y(_take(ys, 0))).log_prob(path[0])
        return jnp.where(observed[0], lq0, 0.0) + jnp.sum(jnp.where(observed[1:], lq, 0.0))

    def step(carry, inp):
        phi, opt_state, ref = carry
        i, k = inp
        new_ref, num_nonfinite, failed = _guided_csmc(
            k, ssm, ys, ref, proposal=proposal_fn(phi),
            initial_proposal=initial_proposal_fn(phi), num_particles=num_particles,
            scheme=scheme,
        )  # fmt: skip
        # a failed sweep (impossible data) keeps the previous reference and leaves phi
        # and the optimiser state as they were: no NaN gradient ever reaches them
        ref = _keep_if(failed, ref, new_ref)
        grads = jax.tree.map(lambda g: -g / num_steps, jax.grad(log_q)(phi, ref))
        grads = jax.tree.map(lambda g: jnp.where(failed, jnp.zeros_like(g), g), grads)
        phi, opt_state = _skipping_update(optimizer, failed, grads, opt_state, phi)
        if tick is not None:
            tick(i)
        return (phi, opt_state, ref), (phi, ref, num_nonfinite, failed)

    init = (phi_init, optimizer.init(phi_init), ref0)
    keys = jax.random.split(k_iter, num_iterations)
    steps = jnp.arange(num_iterations)
    (phi, _, _), (trace, paths, num_nonfinite, failed) = jax.lax.scan(step, init, (steps, keys))
    half = num_iterations // 2
    average = jax.tree.map(lambda a: jnp.mean(a[half:], axis=0), trace)
    return ScoreClimbingResult(phi, average, trace, paths, num_nonfinite, jnp.any(failed))
