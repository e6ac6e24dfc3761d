"""Conditional SMC, PaRIS particle Gibbs (PPG) and particle Gibbs for parameters and states.

Conditional SMC (Andrieu, Doucet & Holenstein 2010) runs the bootstrap filter with slot 0
pinned to a reference trajectory ``x*_{0:T-1}``: conditional resampling gives slot 0 the
ancestor 0 (``particlekit.resampling.get_conditional_scheme``) and the move sets
``x_t^0 = x*_t``. A new trajectory drawn from the conditional particle system, by backward
sampling (Whiteley 2010) or ancestor sampling (Lindsten, Jordan & Schön 2014), leaves the
smoothing law ``p(x_{0:T-1} | y)`` invariant.

PaRIS particle Gibbs (Cardoso, Janati El Idrissi, Le Corff, Moulines & Olsson 2023) runs
PaRIS on top of each conditional SMC sweep: iteration ``k`` gives an estimate
``hat S_k = sum_i W_{T-1}^i tau_{T-1}^i`` of ``E[S | y]`` for an additive functional
``S``, and the next reference is drawn by backward simulation. The roll-out estimator

    hat S = (1 / (k_1 - k_0)) sum_{k = k_0 + 1}^{k_1} hat S_k

has a bias that decays geometrically in the burn-in ``k_0`` at a fixed particle count, in
contrast with the ``O(1/N)`` bias of a single PaRIS run.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import kernels, resampling
from particlekit.backward import (
    check_log_transition_bound,
    warn_if_above_bound,
    warn_if_degenerate,
)
from particlekit.filters import finite_per_particle
from particlekit.run import progress_bar_callback, resolve_progress_bar, warn_if_counted_after_run
from particlekit.smoothing import (
    _check_method,
    _check_trials,
    _freeze,
    _paris_config,
    _smc_init,
    _smc_step,
    _take,
    backward_trajectories,
    paris_forward,
)
from particlekit.ssm import StateSpaceModel
from particlekit.types import PyTree

__all__ = [
    "csmc",
    "CSMCResult",
    "ppg",
    "PPGResult",
    "particle_gibbs",
    "ParticleGibbsResult",
    "joint_log_prob",
]


# --------------------------------------------------------------------------------------
# conditional SMC
# --------------------------------------------------------------------------------------
def joint_log_prob(ssm: StateSpaceModel, xs, ys) -> jax.Array:
    """``log p(x_{0:T-1}, y_{0:T-1})`` of one trajectory ``xs`` (leading axis ``T``).

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> xs, ys = ssm.simulate(jax.random.key(0), 10)
    >>> pk.pgibbs.joint_log_prob(ssm, xs, ys).shape
    ()
    """
    ys = ssm.validate(ys)
    xs = _check_reference(xs, ys, ssm, name="xs", check_finite=False)
    num_steps = ys.shape[0]
    ts = jnp.arange(num_steps, dtype=jnp.int32)
    if ssm.vectorized:
        # one time step at a time (a batch of one particle), so that missingness is per y_t
        log_g = jax.vmap(
            lambda x, y, t: ssm.observation_log_prob(jax.tree.map(lambda a: a[None], x), y, t)[0]
        )(xs, ys, ts)
        log_f = ssm.transition_log_prob(_take(xs, slice(0, -1)), _take(xs, slice(1, None)), ts[1:])
        log_p0 = ssm.initial_log_prob(_take(xs, 0))
    else:
        log_g = jax.vmap(ssm.observation_log_prob)(xs, ys, ts)
        log_f = jax.vmap(ssm.transition_log_prob)(
            _take(xs, slice(0, -1)), _take(xs, slice(1, None)), ts[1:]
        )
        log_p0 = ssm.initial_log_prob(_take(xs, 0))
    return jnp.sum(log_p0) + jnp.sum(log_f) + jnp.sum(log_g)


class CSMCResult(NamedTuple):
    """Output of ``csmc(..., return_info=True)``: the new trajectory and the failure
    diagnostics of the conditional sweep, as in ``particlekit.filters.FilterResult``.

    Attributes
    ----------
    trajectory : Array of shape (T, ...)
        The new trajectory (what ``csmc`` returns by default).
    log_evidence : Array of shape ()
        Log-evidence of the conditional sweep (diagnostic only: conditional SMC is not an
        unbiased estimator of the evidence); ``-inf`` if every weight vanished.
    ess : Array of shape (T,)
        ESS of the weights at each step.
    num_nonfinite : Array of shape (T,), int32
        Particles whose log-weight was NaN or ``+inf`` (counted as zero weight), e.g. an
        infinite observation or a non-finite reference state.
    failed : Array of shape (), bool
        True if every weight, the reference's included, became zero at some step
        (impossible data or a reference outside the model's support); the trajectory is
        then not a draw of the smoothing law.
    num_above_bound : Array of shape (), int32
        With ``backward_sampling`` and a user ``log_transition_bound``: the accept-reject
        backward proposals whose acceptance probability exceeded 1 (the bound is below the
        transition density and the new trajectory is not an exact draw; ``csmc`` warns).
        0 otherwise.
    """

    trajectory: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    num_nonfinite: jax.Array
    failed: jax.Array
    num_above_bound: jax.Array = 0

    def to_inference_data(self, ys=None):
        """The sweep for ArviZ (``particlekit.arviz.from_csmc``): ``posterior`` (the new
        trajectory ``x``, dims ``(chain, draw, time, ...)``), ``sample_stats``
        (``log_evidence``, ``failed``, total ``num_nonfinite``; ``(chain, draw)``),
        ``filtering`` (``ess``, ``num_nonfinite`` per step; ``(chain, draw, time)``) and
        ``observed_data`` (``y``, when ``ys`` is given).

        One sweep is one draw of one chain; a ``jax.vmap`` batch of sweeps (one leading
        axis, ``log_evidence`` of shape ``(C,)``) is one draw of each of ``C`` chains; two
        leading axes (``log_evidence`` of shape ``(C, D)``, e.g. a ``jax.vmap`` over chains
        of a ``lax.scan`` of sweeps) are ``(chain, draw)``.

        Examples
        --------
        >>> import jax, numpyro.distributions as dist, particlekit as pk
        >>> ssm = pk.StateSpaceModel(
        ...     initial=lambda: dist.Normal(0.0, 1.0),
        ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        ...     observation=lambda x, t: dist.Normal(x, 0.5),
        ... )
        >>> xs, ys = ssm.simulate(jax.random.key(0), 20)
        >>> res = pk.pgibbs.csmc(jax.random.key(1), ssm, ys, xs, num_particles=16,
        ...                      return_info=True)
        >>> res.to_inference_data(ys)["filtering"]["ess"].shape
        (1, 1, 20)
        """
        from particlekit.arviz import from_csmc

        return from_csmc(self, ys)


def csmc_traced(
    key, ssm, ys, reference, *, num_particles, backward_sampling, ancestor_sampling, scheme,
    method, log_transition_bound, max_trials, tick=None,
):  # fmt: skip
    """Conditional SMC sweep and new trajectory (traced; ``ssm`` may depend on tracers).
    Returns a ``CSMCResult``. ``tick``: a ``progress_bar_callback`` over the ``T - 1``
    forward steps, or None."""
    k_init, k_run, k_back = jax.random.split(key, 3)
    state, info0 = _smc_init(
        k_init, ssm, ys[0], _take(reference, 0), num_particles=num_particles, conditional=True
    )
    first = (state.particles, state.log_weights, state.ancestors)

    def body(st, inp):
        t, y, r = inp
        st, info = _smc_step(
            jax.random.fold_in(k_run, t), st, y, t, r, ssm=ssm, scheme=scheme,
            ess_threshold=1.0, conditional=True, ancestor_sampling=ancestor_sampling,
        )  # fmt: skip
        if tick is not None:
            tick(t - 1)
        return st, ((st.particles, st.log_weights, st.ancestors), (info.ess, info.num_nonfinite))

    ts = jnp.arange(1, ys.shape[0], dtype=jnp.int32)
    final, (hist, (ess, num_nonfinite)) = jax.lax.scan(
        body, state, (ts, ys[1:], _take(reference, slice(1, None)))
    )
    particles, log_weights, ancestors = jax.tree.map(
        lambda a, b: jnp.concatenate([a[None], b]), first, hist
    )
    log_evidence = final.log_evidence
    # a step whose weights all vanished adds -inf (or NaN) to the evidence
    failed = ~jnp.isfinite(log_evidence)

    def result(path, num_above_bound=None):
        if num_above_bound is None:
            num_above_bound = jnp.zeros((), jnp.int32)
        return CSMCResult(
            trajectory=path,
            log_evidence=kernels.reported_log_evidence(log_evidence),
            ess=jnp.concatenate([info0.ess[None], ess]),
            num_nonfinite=jnp.concatenate([info0.num_nonfinite[None], num_nonfinite]),
            failed=failed,
            num_above_bound=num_above_bound,
        )

    if backward_sampling:
        paths, above = backward_trajectories(
            k_back, ssm, particles, log_weights, 1, method=method,
            log_transition_bound=log_transition_bound, max_trials=max_trials, with_count=True,
        )  # fmt: skip
        return result(_take(paths, 0), above)
    # trace the genealogy of one particle drawn from the final weights
    last = resampling.multinomial(k_back, log_weights[-1], 1)[0]

    def trace(i, inp):
        anc_t = inp
        return anc_t[i], i

    # scanning back over ancestors[1:], the outputs are the indices at times 1..T-1 and the
    # final carry the index at time 0
    first, idx = jax.lax.scan(trace, last, ancestors[1:], reverse=True)
    idx = jnp.concatenate([first[None], idx])
    return result(jax.tree.map(lambda a: a[jnp.arange(a.shape[0]), idx], particles))


@partial(
    jax.jit,
    static_argnames=(
        "ssm", "num_particles", "backward_sampling", "ancestor_sampling", "scheme", "method",
        "log_transition_bound", "max_trials", "progress_bar",
    ),
)  # fmt: skip
def _csmc(key, ys, reference, **kw):
    tick = progress_bar_callback(ys.shape[0] - 1, desc="csmc") if kw.pop("progress_bar") else None
    result = csmc_traced(key, kw.pop("ssm"), ys, reference, tick=tick, **kw)
    warn_if_above_bound(result.num_above_bound, "csmc", kw["log_transition_bound"])
    warn_if_failed_sweeps(
        result.failed, "csmc", "the trajectory is then not a draw of the smoothing law"
    )
    return result


def warn_if_failed_sweeps(failed, where: str, consequence: str) -> None:
    """After a run (also traced: ``jax.debug.callback``, once per call, or per member of a
    ``jax.vmap`` batch), a ``RuntimeWarning`` when conditional SMC sweeps failed
    (``failed``: every weight, the reference's included, zero at some step), with the
    ``consequence`` for what the sweeps returned."""
    warn_if_counted_after_run(
        failed,
        where + ": {count} of {size} conditional SMC sweep(s) failed (every weight, the "
        "reference's included, became zero at some step: data the model finds impossible, "
        "a reference outside the model's support, or a transition or observation density "
        "that is NaN or -inf wherever the particles are); " + consequence + ". See failed "
        "and num_nonfinite (return_info=True for csmc)",
    )


def _check_finite_reference(reference):
    """An eager reference trajectory must be finite (a traced one is checked in the graph:
    a non-finite reference state gets zero weight and is counted in ``num_nonfinite``)."""
    for leaf in jax.tree.leaves(reference):
        if isinstance(leaf, jax.core.Tracer):
            continue
        bad = ~np.isfinite(np.asarray(leaf).reshape(leaf.shape[0], -1)).all(axis=1)
        if bad.any():
            raise ValueError(
                f"reference has non-finite values (NaN or inf) at steps "
                f"{np.flatnonzero(bad)[:5].tolist()}: it must be a trajectory of the model, "
                "e.g. one simulated with ssm.simulate or drawn by an earlier sweep"
            )


def _check_reference(reference, ys, ssm, name: str = "reference", check_finite: bool = True):
    """The reference trajectory (or any trajectory, called ``name`` in the messages) with
    the model's state structure, shapes and dtypes: one array ``(T, ...)`` per leaf of a
    state (a pytree state, e.g. a dict, has a dict of trajectories, as the ``xs`` of
    ``ssm.simulate``); finite values when ``check_finite``."""
    x0 = jax.eval_shape(lambda k: ssm.initial().sample(k), jax.random.key(0))
    x0_leaves, x0_def = jax.tree.flatten(x0)
    not_an_array = (
        f"{name} must be an array of states with leading axis T (e.g. the xs of "
        f"ssm.simulate; a dict of them for dict states), got {type(reference).__name__}"
    )
    if reference is None or isinstance(reference, (str, bytes)):
        raise ValueError(not_an_array)
    if x0_def.num_leaves == 1 and x0_def == jax.tree.structure(0):
        if isinstance(reference, dict):
            raise ValueError(f"{not_an_array}; the model's states are arrays")
        leaves = [reference]  # an array state: the reference is one array (or a list)
    else:
        leaves, ref_def = jax.tree.flatten(reference)
        if ref_def != x0_def:
            raise ValueError(
                f"{name} has the structure {ref_def}, the model's states {x0_def} (one "
                "trajectory per leaf, as the xs of ssm.simulate)"
            )
    checked = [
        _check_reference_leaf(r, x, ys, not_an_array, name)
        for r, x in zip(leaves, x0_leaves, strict=True)
    ]
    reference = jax.tree.unflatten(x0_def, checked)
    if check_finite:
        _check_finite_reference(reference)
    return reference


def _check_reference_leaf(reference, x0, ys, not_an_array, name: str = "reference"):
    """One leaf of the reference: real values of shape ``(T,) + x0.shape``, cast to the
    model's dtype (integer states must get integer values)."""
    try:
        reference = jnp.asarray(reference)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{not_an_array}: {err}") from None
    if not (
        jnp.issubdtype(reference.dtype, jnp.floating)
        or jnp.issubdtype(reference.dtype, jnp.integer)
    ):
        raise ValueError(
            f"{name} must hold real states (a float array), got dtype {reference.dtype}"
        )
    if reference.ndim == 0 or reference.shape[0] != ys.shape[0]:
        raise ValueError(
            f"{name} must be a trajectory with leading axis T={ys.shape[0]}, got shape "
            f"{reference.shape}"
        )
    if not jnp.issubdtype(x0.dtype, jnp.floating) and jnp.issubdtype(reference.dtype, jnp.floating):
        if not isinstance(reference, jax.core.Tracer) and not np.all(
            np.asarray(reference) == np.round(np.asarray(reference))
        ):
            raise ValueError(f"{name} has non-integer values; the model's states are {x0.dtype}")
    if tuple(reference.shape[1:]) != tuple(x0.shape):
        raise ValueError(
            f"{name} has state shape {reference.shape[1:]}, the model's states are {x0.shape}"
        )
    return reference.astype(x0.dtype)


def csmc(
    key: jax.Array,
    ssm: StateSpaceModel,
    ys,
    reference,
    *,
    num_particles: int,
    backward_sampling: bool = True,
    ancestor_sampling: bool = False,
    resampling="multinomial",
    method: str = "exact",
    log_transition_bound=None,
    max_trials: int = 32,
    return_info: bool = False,
    progress_bar: bool | None = None,
) -> jax.Array | CSMCResult:
    """One conditional SMC sweep: a new trajectory given a reference trajectory.

    The Markov kernel ``x*_{0:T-1} -> x'_{0:T-1}`` leaves the smoothing law
    ``p(x_{0:T-1} | y_{0:T-1})`` invariant, so iterating it is a particle Gibbs sampler.

    Parameters
    ----------
    key : PRNG key
    ssm : StateSpaceModel
    ys : Array of shape (T, ...)
    reference : Array of shape (T, ...)
        Conditioning trajectory, pinned in slot 0.
    num_particles : int
        ``N >= 2`` (including the reference).
    backward_sampling : bool
        Draw the new trajectory by backward sampling (default). Otherwise trace the
        ancestry of one particle drawn at ``T - 1``.
    ancestor_sampling : bool
        Redraw the reference's ancestor at each step from
        ``∝ W_{t-1}^j f_t(x*_t | x_{t-1}^j)`` (PGAS).
    resampling : str or callable
        A scheme with a conditional version (``multinomial``, ``systematic``,
        ``stratified``, ``residual``).
    method, log_transition_bound, max_trials
        Backward-sampling options, as in ``particlekit.smoothing.ffbs``.
    return_info : bool
        Return a ``CSMCResult`` (trajectory plus ``failed``, ``num_nonfinite``, ``ess``
        and ``log_evidence`` of the sweep, as in the filters) instead of the trajectory
        alone. Impossible data (every weight zero at some step, the reference's included)
        or an infinite observation give a finite trajectory that is not a draw of the
        smoothing law: check ``failed``.
    progress_bar : bool, optional
        Show a tqdm bar over the forward sweep's time steps (about 100 updates); ``None``
        (default): shown when standard error is a terminal
        (``particlekit.run.resolve_progress_bar``).

    Returns
    -------
    Array, shape (T, ...), or CSMCResult
        The new trajectory (``return_info=False``, the default), or the ``CSMCResult``
        (``.to_inference_data()`` gives an ArviZ object).

    Raises
    ------
    ValueError
        If the reference (given eagerly) has NaN or infinite values, among the other
        argument checks.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> xs, ys = ssm.simulate(jax.random.key(0), 30)
    >>> new = pk.pgibbs.csmc(jax.random.key(1), ssm, ys, xs, num_particles=20)
    >>> new.shape
    (30,)
    >>> res = pk.pgibbs.csmc(jax.random.key(1), ssm, ys, xs, num_particles=20,
    ...                      return_info=True)
    >>> bool(res.failed), res.num_nonfinite.shape
    (False, (30,))
    """
    kernels.check_key(key)
    if not isinstance(ssm, StateSpaceModel):
        raise ValueError(f"ssm must be a particlekit.StateSpaceModel, got {type(ssm).__name__}")
    ys = ssm.validate(ys, num_particles)
    num_particles = kernels.check_num_particles(num_particles)
    if num_particles < 2:
        raise ValueError("conditional SMC needs num_particles >= 2 (one is the reference)")
    _check_method(method)
    flags = {
        "backward_sampling": backward_sampling,
        "ancestor_sampling": ancestor_sampling,
        "return_info": return_info,
    }
    for name, flag in flags.items():
        kernels.check_flag(flag, name)
    reference = _check_reference(reference, ys, ssm)
    scheme = resampling_scheme_for_csmc(resampling)
    result = _csmc(
        key, ys, reference, ssm=ssm, num_particles=num_particles,
        backward_sampling=bool(backward_sampling), ancestor_sampling=bool(ancestor_sampling),
        scheme=scheme, method=method,
        log_transition_bound=check_log_transition_bound(log_transition_bound),
        max_trials=_check_trials(max_trials), progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip
    return result if return_info else result.trajectory


def resampling_scheme_for_csmc(scheme):
    """Validate that ``scheme`` has a conditional version; return the base scheme."""
    base = resampling.get_scheme(scheme)
    resampling.get_conditional_scheme(base)
    return base


# --------------------------------------------------------------------------------------
# PaRIS particle Gibbs
# --------------------------------------------------------------------------------------
class PPGResult(NamedTuple):
    """Output of ``ppg``.

    Attributes
    ----------
    estimate : PyTree
        Roll-out estimator: mean of ``estimates`` over iterations ``burn_in .. K - 1``.
    estimates : PyTree
        Per-iteration PaRIS estimates ``hat S_k``, leaves ``(num_iterations, ...)``.
    reference : Array of shape (T, ...)
        The final conditioning trajectory (a draw of the Markov chain on paths).
    log_evidence : Array of shape (num_iterations,)
        Log-evidence of each conditional sweep (diagnostic only: conditional SMC is not
        an unbiased estimator of the evidence). ``-inf`` marks a failed sweep (every
        weight zero at some step: impossible data or an infinite observation), whose
        estimate is not an estimate of the smoothed functional: check ``failed``.
    reference_alone : Array of shape (num_iterations,), bool
        Whether at some step of the sweep the reference held all the weight (every fresh
        particle's normalised weight zero, ``reference_holds_all_weight``): that sweep's
        estimate is the reference path's value, and a chain whose sweeps keep doing this is
        stuck on its reference (too few particles, or data the model finds impossible away
        from the reference, e.g. an outlier under a narrow observation density). ``ppg``
        warns when any sweep is. ``None`` in results built without it.
    failed : Array of shape ()
        (A property.) Whether any sweep failed.
    """

    estimate: PyTree
    estimates: PyTree
    reference: jax.Array
    log_evidence: jax.Array
    reference_alone: jax.Array | None = None

    @property
    def failed(self) -> jax.Array:
        """Whether a sweep failed (a ``-inf`` ``log_evidence``): then ``estimate`` is not
        an estimate of the smoothed functional. Shape ``()`` (``(C,)`` for a ``jax.vmap``
        batch of ``C`` runs), as the other recipes' ``failed``."""
        return ~jnp.all(jnp.isfinite(self.log_evidence), axis=-1)

    def to_inference_data(self, ys=None, *, burn_in: int = 0):
        """The run for ArviZ (``particlekit.arviz.from_ppg``): ``posterior`` (the
        per-iteration estimates ``hat S_k`` as a trace, dims ``(chain, draw, ...)``),
        ``sample_stats`` (``log_evidence`` and ``reference_alone`` of each sweep;
        ``(chain, draw)``), ``estimate``
        (the roll-out estimate; ``(chain, ...)``), ``reference`` (the final reference ``x``;
        ``(chain, time, ...)``) and ``observed_data`` (``y``, when ``ys`` is given).
        Functionals are named by their dict keys (a bare array is ``S``).

        The first ``burn_in`` iterations go to ``warmup_posterior`` and
        ``warmup_sample_stats`` (default 0: none); with the run's ``burn_in`` the posterior
        mean of each chain is its ``estimate``. A ``jax.vmap`` batch of runs
        (``log_evidence`` of shape ``(C, K)``) is one chain per run.

        Examples
        --------
        >>> import jax, numpyro.distributions as dist, particlekit as pk
        >>> ssm = pk.StateSpaceModel(
        ...     initial=lambda: dist.Normal(0.0, 1.0),
        ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
        ...     observation=lambda x, t: dist.Normal(x, 0.5),
        ... )
        >>> _, ys = ssm.simulate(jax.random.key(0), 20)
        >>> runs = jax.vmap(lambda k: pk.pgibbs.ppg(
        ...     k, ssm, ys, additive_fn=lambda xp, x, t: x, num_particles=8,
        ...     num_iterations=10, burn_in=2))(jax.random.split(jax.random.key(1), 2))
        >>> runs.to_inference_data(burn_in=2)["posterior"]["S"].shape
        (2, 8)
        """
        from particlekit.arviz import from_ppg

        return from_ppg(self, ys, burn_in=burn_in)


def reference_holds_all_weight(log_weights) -> jax.Array:
    """Per step of a conditional particle system (``log_weights`` ``(T, N)``, the
    reference in slot 0), whether every other particle's normalised weight is zero: the
    sweep is then propped up by the reference alone (e.g. parameters far off the data, or
    impossible data), and what it estimates is the reference path's value."""
    log_w = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    normalised = jnp.exp(log_w - jax.scipy.special.logsumexp(log_w, axis=-1, keepdims=True))
    return jnp.all(normalised[:, 1:] == 0.0, axis=-1) & jnp.isfinite(log_w[:, 0])


def ppg_sweep(key, ys, reference, *, cfg, conditional=True, with_count=False,
              with_propped=False, with_degenerate=False):  # fmt: skip
    """One PPG iteration (traced): conditional PaRIS with ``reference`` pinned, then a new
    reference by backward simulation. Returns ``(estimate, new_reference, log_evidence)``,
    and with ``with_count`` the accept–reject proposals whose acceptance probability
    exceeded 1 (a user bound too small; ``BackwardStats.num_above_bound``); with
    ``with_propped`` last, whether at some step the reference held all the weight
    (``reference_holds_all_weight``); with ``with_degenerate`` last, the PaRIS targets
    whose backward draws found no positive finite transition density
    (``BackwardStats.num_degenerate``)."""
    k_fwd, k_back = jax.random.split(key)
    final, infos, _, (particles, log_weights) = paris_forward(
        k_fwd, ys, reference if conditional else None, cfg=cfg, conditional=conditional,
        keep_history=True,
    )  # fmt: skip
    new_ref, above = backward_trajectories(
        k_back, cfg["ssm"], particles, log_weights, 1, method=cfg["method"],
        log_transition_bound=cfg["log_transition_bound"], max_trials=cfg["max_trials"],
        with_count=True,
    )  # fmt: skip
    out = final.estimate, _take(new_ref, 0), final.particle_state.log_evidence
    if with_count:
        out = (*out, above + jnp.sum(infos.num_above_bound))
    if with_propped:
        out = (*out, jnp.any(reference_holds_all_weight(log_weights)))
    if with_degenerate:
        out = (*out, jnp.sum(infos.num_degenerate))
    return out


def ppg_traced(key, ys, reference, *, cfg, num_iterations, burn_in, tick=None):
    """The PPG chain (traced). ``reference=None`` starts from a path simulated from the
    model. ``tick``: a ``progress_bar_callback`` over the iterations, or None."""
    k_start, k_iter = jax.random.split(key)
    if reference is None:
        reference, _ = cfg["ssm"].simulate(k_start, ys.shape[0])

    def body(ref, inp):
        i, k = inp
        est, new_ref, log_z, above, alone, degenerate = ppg_sweep(
            k, ys, ref, cfg=cfg, with_count=True, with_propped=True, with_degenerate=True
        )
        if tick is not None:
            tick(i)
        return new_ref, (est, log_z, above, alone, degenerate)

    keys = jax.random.split(k_iter, num_iterations)
    steps = jnp.arange(num_iterations)
    final_ref, (estimates, log_z, above, alone, degenerate) = jax.lax.scan(
        body, reference, (steps, keys)
    )
    warn_if_above_bound(jnp.sum(above), "ppg", cfg["log_transition_bound"])
    warn_if_degenerate(jnp.sum(degenerate), "ppg")
    warn_if_reference_alone(alone & jnp.isfinite(log_z))
    warn_if_nonfinite_estimates(estimates, log_z)
    warn_if_failed_sweeps(
        ~jnp.isfinite(log_z), "ppg", "their estimates are then not estimates of the smoothed "
        "functional, and the mean estimate averages them",
    )  # fmt: skip
    estimate = jax.tree.map(lambda a: jnp.mean(a[burn_in:], axis=0), estimates)
    return PPGResult(estimate, estimates, final_ref, log_z, alone)


def warn_if_nonfinite_estimates(estimates, log_z) -> None:
    """After a run (also traced), a ``RuntimeWarning`` when sweeps that did not fail (finite
    ``log_z``) have an estimate that is not finite: ``additive_fn`` or ``initial_fn``
    returned NaN or an infinity at some particle (``PaRISInfo.num_nonfinite_statistics``)."""
    warn_if_counted_after_run(
        ~finite_per_particle(estimates) & jnp.isfinite(log_z),
        "ppg: in {count} of {size} sweeps the estimate is not finite although the sweep "
        "did not fail: additive_fn or initial_fn returned NaN or an infinity at some "
        "particle (they are evaluated at every particle of the sweep and its backward "
        "draws): guard them where they are undefined (e.g. jnp.log of a state that can be "
        "negative)",
    )


def warn_if_reference_alone(reference_alone) -> None:
    """After a run (also traced: ``jax.debug.callback``, once per call), a
    ``RuntimeWarning`` when the reference alone held the weight in some sweeps
    (``PPGResult.reference_alone``; failed sweeps are reported by ``failed`` instead)."""
    warn_if_counted_after_run(
        reference_alone,
        "ppg: in {count} of {size} sweeps the reference trajectory alone held all the weight "
        "at some step (every fresh particle's weight was zero): those sweeps' estimates are "
        "the reference path's value, and the chain is stuck on it where this repeats. Use "
        "more particles, or check the model against the data (an observation the model finds "
        "impossible away from the reference). See PPGResult.reference_alone",
    )


@partial(jax.jit, static_argnames=("cfg_items", "num_iterations", "burn_in", "progress_bar"))
def _ppg(key, ys, reference, *, cfg_items, num_iterations, burn_in, progress_bar):
    tick = progress_bar_callback(num_iterations, desc="ppg") if progress_bar else None
    return ppg_traced(
        key, ys, reference, cfg=dict(cfg_items), num_iterations=num_iterations, burn_in=burn_in,
        tick=tick,
    )  # fmt: skip


def ppg(
    key: jax.Array,
    ssm: StateSpaceModel,
    ys,
    *,
    additive_fn: Callable,
    num_particles: int,
    num_iterations: int,
    burn_in: int,
    num_backward: int = 2,
    initial_fn: Callable | None = None,
    reference=None,
    resampling="multinomial",
    method: str = "auto",
    log_transition_bound=None,
    max_trials: int = 32,
    progress_bar: bool | None = None,
) -> PPGResult:
    """PaRIS particle Gibbs (Cardoso et al. 2023): a nearly unbiased estimate of
    ``E[h_0(x_0) + sum_t h_t(x_{t-1}, x_t) | y_{0:T-1}]`` at a small particle count.

    Each of ``num_iterations`` iterations runs PaRIS (see
    ``particlekit.smoothing.paris``) on a conditional SMC sweep with the current
    reference trajectory pinned (Feynman–Kac model ``M_t = f_t``, ``G_t = g_t``, slot 0
    forced to the reference), records the estimate ``hat S_k``, and draws the next
    reference by backward simulation. ``.estimate`` is the roll-out mean of ``hat S_k``
    over ``k >= burn_in``.

    Parameters
    ----------
    key : PRNG key
    ssm : StateSpaceModel
    ys : Array of shape (T, ...)
    additive_fn, initial_fn, num_backward, method, log_transition_bound, max_trials
        As in ``particlekit.smoothing.paris``.
    num_particles : int
        ``N >= 2`` per sweep (including the reference).
    num_iterations : int
        Number ``K`` of conditional sweeps.
    burn_in : int
        Number ``k_0 < K`` of initial sweeps left out of the roll-out estimate.
    reference : Array of shape (T, ...), optional
        Initial reference; default: a trajectory simulated from the model (the burn-in
        removes its influence).
    resampling : str or callable
        Scheme with a conditional version (default multinomial).
    progress_bar : bool, optional
        Show a tqdm bar over the iterations (about 100 updates per run); ``None``
        (default): shown when standard error is a terminal
        (``particlekit.run.resolve_progress_bar``).

    Returns
    -------
    PPGResult
        ``.to_inference_data(burn_in=...)`` gives an ArviZ object.

    Examples
    --------
    >>> import jax, numpyro.distributions as dist, particlekit as pk
    >>> ssm = pk.StateSpaceModel(
    ...     initial=lambda: dist.Normal(0.0, 1.0),
    ...     transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    ...     observation=lambda x, t: dist.Normal(x, 0.5),
    ... )
    >>> _, ys = ssm.simulate(jax.random.key(0), 30)
    >>> res = pk.pgibbs.ppg(jax.random.key(1), ssm, ys, additive_fn=lambda xp, x, t: x,
    ...                     initial_fn=lambda x: x, num_particles=32, num_iterations=20,
    ...                     burn_in=5)
    >>> res.estimates.shape
    (20,)
    """
    kernels.check_key(key)
    cfg = _paris_config(ssm, additive_fn, initial_fn, num_particles, num_backward, resampling,
                        1.0, method, log_transition_bound, max_trials)  # fmt: skip
    resampling_scheme_for_csmc(resampling)
    ys = ssm.validate(ys, num_particles)
    num_particles = kernels.check_num_particles(num_particles)
    if num_particles < 2:
        raise ValueError("PPG needs num_particles >= 2 (one is the reference)")
    num_iterations = kernels.check_num_particles(num_iterations, "num_iterations")
    if isinstance(burn_in, bool) or not isinstance(burn_in, numbers.Integral):
        raise ValueError(f"burn_in must be an integer in [0, num_iterations), got {burn_in!r}")
    if not 0 <= int(burn_in) < num_iterations:
        raise ValueError(f"burn_in must be in [0, num_iterations), got {burn_in}")
    if reference is not None:
        reference = _check_reference(reference, ys, ssm)
    return _ppg(
        key, ys, reference, cfg_items=_freeze(cfg), num_iterations=num_iterations,
        burn_in=int(burn_in), progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# particle Gibbs for parameters and states
# --------------------------------------------------------------------------------------
class ParticleGibbsResult(NamedTuple):
    """Draws of a particle Gibbs sampler, arrays with leading axes ``(chain, draw)``.

    Attributes
    ----------
    theta : PyTree
        Parameter draws, leaves ``(num_chains, num_samples, ...)``.
    states : Array of shape (num_chains, num_samples, T, ...)
        State-trajectory draws.
    acceptance_rate : Array of shape (num_chains, num_samples)
        Acceptance rate of the ``theta`` MCMC step (NaN for a user update).
    failed : Array of shape (num_chains, num_samples), bool
        The conditional SMC sweep of the draw failed (every weight zero at some step, the
        reference's included: impossible data under that ``theta``), as ``CSMCResult``.
    num_nonfinite : Array of shape (num_chains, num_samples), int32
        NaN or ``+inf`` log-weights in the sweep of the draw (counted as zero weight).
    """

    theta: PyTree
    states: jax.Array
    acceptance_rate: jax.Array
    failed: jax.Array
    num_nonfinite: jax.Array

    def to_dict(self) -> dict:
        """A flat ``{name: array (chain, draw, ...)}`` dict of the parameter draws (nested
        keys joined by ``_``, e.g. ``ar_rho``; a bare array is ``theta``), plus ``"x"`` for
        the states: the names of ``to_inference_data``'s posterior."""
        from particlekit.arviz import _named

        return {**_named(self.theta, "theta"), "x": np.asarray(jax.device_get(self.states))}

    def to_inference_data(self, ys=None):
        """The draws for ArviZ (``particlekit.arviz.from_particle_gibbs``; an
        ``InferenceData`` with arviz < 1, a ``DataTree`` with arviz >= 1): ``posterior``
        (the ``to_dict`` draws, dims ``(chain, draw, ...)``), ``sample_stats``
        (``acceptance_rate``, ``failed``, ``num_nonfinite``; ``(chain, draw)``) and
        ``observed_data`` (``y``, when ``ys`` is given)."""
        from particlekit.arviz import from_particle_gibbs

        return from_particle_gibbs(self, ys)


def _like_theta(new, theta):
    """``theta_update``'s draw in the structure, shapes and dtypes of ``theta`` (the
    chain's carry): another dtype is cast (e.g. a Python number), another structure or
    shape is a ``ValueError`` (at trace time)."""
    if jax.tree.structure(new) != jax.tree.structure(theta):
        raise ValueError(
            "theta_update(key, theta, xs, ys) must return theta's structure "
            f"{jax.tree.structure(theta)}, got {jax.tree.structure(new)}"
        )

    def cast(a, b):
        a = jnp.asarray(a)
        if a.shape != b.shape:
            raise ValueError(
                f"theta_update(key, theta, xs, ys) returned a leaf of shape {a.shape} for a "
                f"parameter of shape {b.shape}"
            )
        return a.astype(b.dtype)

    return jax.tree.map(cast, new, theta)


@partial(
    jax.jit,
    static_argnames=(
        "model_fn", "num_samples", "num_particles", "theta_update", "log_prior", "mcmc",
        "num_mcmc_steps", "num_chains", "ancestor_sampling", "scheme", "progress_bar",
    ),
)  # fmt: skip
def _particle_gibbs(key, ys, theta_init, reference, *, model_fn, num_samples, num_particles,
                    theta_update, log_prior, mcmc, num_mcmc_steps, num_chains,
                    ancestor_sampling, scheme, progress_bar):  # fmt: skip
    """``particle_gibbs`` after its checks, compiled once per model function, sizes and
    options (the callables are static: module-level functions reuse the compilation)."""
    tick = progress_bar_callback(num_samples, desc="particle_gibbs") if progress_bar else None
    ssm0 = model_fn(theta_init)

    def theta_step(k, theta, xs):
        if theta_update is not None:
            return _like_theta(theta_update(k, theta, xs, ys), theta), jnp.full((), jnp.nan)

        def logdensity(th):
            return log_prior(th) + joint_log_prob(model_fn(th), xs, ys)

        algo = mcmc(logdensity)
        st = algo.init(theta)

        def body(s, kk):
            s, info = algo.step(kk, s)
            rate = getattr(info, "acceptance_rate", getattr(info, "is_accepted", jnp.nan))
            return s, jnp.asarray(rate, jnp.float32)

        st, rates = jax.lax.scan(body, st, jax.random.split(k, num_mcmc_steps))
        return st.position, jnp.mean(rates)

    def one_chain(k):
        k_ref, k_iter = jax.random.split(k)
        ref0 = reference
        if ref0 is None:
            ref0, _ = ssm0.simulate(k_ref, ys.shape[0])

        def body(carry, inp):
            theta, ref = carry
            i, kk = inp
            k_x, k_th = jax.random.split(kk)
            ssm = model_fn(theta)
            sweep = csmc_traced(
                k_x, ssm, ys, ref, num_particles=num_particles, backward_sampling=True,
                ancestor_sampling=ancestor_sampling, scheme=scheme, method="exact",
                log_transition_bound=None, max_trials=1,
            )  # fmt: skip
            ref = sweep.trajectory
            theta, rate = theta_step(k_th, theta, ref)
            flags = (sweep.failed, jnp.sum(sweep.num_nonfinite).astype(jnp.int32))
            if tick is not None:
                tick(i)  # the draw index is not batched: one host call for all chains
            return (theta, ref), (theta, ref, rate, flags)

        steps = jnp.arange(num_samples)
        _, (thetas, refs, rates, flags) = jax.lax.scan(
            body, (theta_init, ref0), (steps, jax.random.split(k_iter, num_samples))
        )
        return thetas, refs, rates, flags

    keys = jax.random.split(key, num_chains)
    thetas, states, rates, (failed, nonfinite) = jax.vmap(one_chain)(keys)
    warn_if_failed_sweeps(
        failed, "particle_gibbs", "those draws' trajectories are then not draws of the "
        "smoothing law, nor are the parameter draws that follow them",
    )  # fmt: skip
    return ParticleGibbsResult(thetas, states, rates, failed, nonfinite)


def particle_gibbs(
    key: jax.Array,
    model_fn: Callable[[PyTree], StateSpaceModel],
    ys,
    *,
    theta_init: PyTree,
    num_samples: int,
    num_particles: int,
    theta_update: Callable | None = None,
    log_prior: Callable | None = None,
    mcmc: Callable | None = None,
    num_mcmc_steps: int = 1,
    num_chains: int = 1,
    reference=None,
    ancestor_sampling: bool = False,
    resampling="multinomial",
    progress_bar: bool | None = None,
) -> ParticleGibbsResult:
    """Particle Gibbs for parameters and states: alternate ``x | theta, y`` by conditional
    SMC with backward sampling and ``theta | x, y`` by a user update or a BlackJAX kernel.

    Parameters
    ----------
    key : PRNG key
    model_fn : callable
        ``model_fn(theta) -> StateSpaceModel`` (traceable in ``theta``).
    ys : Array of shape (T, ...)
    theta_init : PyTree
        Initial parameters (shared by all chains).
    num_samples : int
        Draws per chain (every sweep is kept; discard a burn-in yourself).
    num_particles : int
        Particles of each conditional SMC sweep (``>= 2``).
    theta_update : callable, optional
        ``theta_update(key, theta, xs, ys) -> theta``: an exact draw from
        ``p(theta | x, y)`` (e.g. a conjugate update).
    log_prior : callable, optional
        ``log p(theta)``; with ``mcmc``, the target is ``log p(theta) + log p(x, y |
        theta)`` (``joint_log_prob`` of ``model_fn(theta)``).
    mcmc : callable, optional
        ``mcmc(logdensity_fn) -> blackjax.SamplingAlgorithm``, e.g.
        ``lambda ld: blackjax.additive_step_random_walk.normal_random_walk(ld, 0.1)`` on
        an unconstrained parametrisation of ``theta``.
    num_mcmc_steps : int
        MCMC steps on ``theta`` per sweep.
    num_chains : int
        Independent chains (vmapped).
    reference : Array of shape (T, ...), optional
        Initial trajectory; default: simulated from the model at ``theta_init``.
    ancestor_sampling, resampling
        As in ``csmc``.
    progress_bar : bool, optional
        Show a tqdm bar over the draws (about 100 updates per run; the chains advance
        together); ``None`` (default): shown when standard error is a terminal
        (``particlekit.run.resolve_progress_bar``).

    Returns
    -------
    ParticleGibbsResult
        ``.to_inference_data()`` gives an ArviZ object.

    Examples
    --------
    A conjugate update of the observation precision... here a fixed-parameter chain:

    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, particlekit as pk
    >>> def model_fn(theta):
    ...     return pk.StateSpaceModel(
    ...         initial=lambda: dist.Normal(0.0, 1.0),
    ...         transition=lambda x_prev, t: dist.Normal(theta * x_prev, 1.0),
    ...         observation=lambda x, t: dist.Normal(x, 0.5))
    >>> _, ys = model_fn(0.9).simulate(jax.random.key(0), 30)
    >>> res = pk.pgibbs.particle_gibbs(
    ...     jax.random.key(1), model_fn, ys, theta_init=jnp.array(0.9), num_samples=10,
    ...     num_particles=16, theta_update=lambda k, th, xs, ys: th)
    >>> res.states.shape
    (1, 10, 30)
    """
    kernels.check_key(key)
    if (theta_update is None) == (mcmc is None):
        raise ValueError("give exactly one of theta_update (exact draw) or mcmc (BlackJAX)")
    if mcmc is not None and log_prior is None:
        raise ValueError("mcmc needs log_prior(theta)")
    num_samples = kernels.check_num_particles(num_samples, "num_samples")
    num_chains = kernels.check_num_particles(num_chains, "num_chains")
    num_mcmc_steps = kernels.check_num_particles(num_mcmc_steps, "num_mcmc_steps")
    ssm0 = model_fn(theta_init)
    if not isinstance(ssm0, StateSpaceModel):
        raise ValueError("model_fn(theta) must return a particlekit.StateSpaceModel")
    ys = ssm0.validate(ys, num_particles)
    num_particles = kernels.check_num_particles(num_particles)
    if num_particles < 2:
        raise ValueError("particle Gibbs needs num_particles >= 2 (one is the reference)")
    scheme = resampling_scheme_for_csmc(resampling)
    if not isinstance(ancestor_sampling, (bool, np.bool_)):
        raise ValueError(f"ancestor_sampling must be True or False, got {ancestor_sampling!r}")
    if reference is not None:
        reference = _check_reference(reference, ys, ssm0)
    theta_init = jax.tree.map(jnp.asarray, theta_init)
    return _particle_gibbs(
        key, ys, theta_init, reference, model_fn=model_fn, num_samples=num_samples,
        num_particles=num_particles, theta_update=theta_update, log_prior=log_prior, mcmc=mcmc,
        num_mcmc_steps=num_mcmc_steps, num_chains=num_chains,
        ancestor_sampling=ancestor_sampling, scheme=scheme,
        progress_bar=resolve_progress_bar(progress_bar),
    )  # fmt: skip
