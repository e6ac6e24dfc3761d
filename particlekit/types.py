"""Core types: the particle population, per-step diagnostics, and the kernel protocol."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

__all__ = [
    "PyTree",
    "ParticleState",
    "StepInfo",
    "Kernel",
    "RunTrace",
    "num_particles_of",
]

PyTree = Any


class ParticleState(NamedTuple):
    """A weighted particle population.

    Attributes
    ----------
    particles : PyTree
        Leaves with leading axis ``N``.
    log_weights : Array of shape (N,)
        Unnormalised log-weights.
    log_evidence : Array of shape ()
        Running estimate of ``log Z``; grows only in ``particlekit.reweight``.
    ancestors : Array of shape (N,), int32
        Indices into the population before the last resampling (``arange(N)`` if none).
    previous_particles : PyTree
        The particles before the most recent ``particlekit.move`` (equal to
        ``particles`` when nothing has moved yet); the ``x_prev`` argument of
        ``particlekit.reweight`` potentials.
    """

    particles: PyTree
    log_weights: jax.Array
    log_evidence: jax.Array
    ancestors: jax.Array
    previous_particles: PyTree


class StepInfo(NamedTuple):
    """Diagnostics of one kernel application (scalars; stacked over time by ``run``).

    Attributes
    ----------
    ess : Array of shape ()
        Effective sample size of the weights at the end of the step (0 if all are zero).
    resampled : Array of shape (), bool
        Whether the step resampled.
    log_evidence_increment : Array of shape ()
        ``log_evidence`` after the step minus before it.
    acceptance_rate : Array of shape ()
        Mean MCMC acceptance rate (over particles and MCMC steps) of the step's last
        ``mcmc`` kernel (NaN if none): ``merge`` keeps the later kernel's rate, so with
        several ``mcmc`` kernels in one ``chain`` only the last one is reported.
    num_nonfinite : Array of shape (), int32
        Number of particles whose log-potential was NaN or ``+inf`` (counted as
        zero weight), plus, at a resampling step with a user's scheme, the ancestor
        indices it returned outside ``[0, N)`` (those slots get zero weight too).
    """

    ess: jax.Array
    resampled: jax.Array
    log_evidence_increment: jax.Array
    acceptance_rate: jax.Array
    num_nonfinite: jax.Array

    @classmethod
    def neutral(cls, state: ParticleState, ess: jax.Array | None = None) -> StepInfo:
        """The info of a step that changed nothing; ``ess`` is computed from ``state``
        unless given."""
        if ess is None:
            from particlekit.resampling import ess as ess_of

            ess = ess_of(state.log_weights)
        return cls(
            ess=ess,
            resampled=jnp.asarray(False),
            log_evidence_increment=jnp.zeros((), state.log_weights.dtype),
            acceptance_rate=jnp.full((), jnp.nan, state.log_weights.dtype),
            num_nonfinite=jnp.zeros((), jnp.int32),
        )

    def merge(self, later: StepInfo) -> StepInfo:
        """Combine the info of this kernel with that of a kernel applied after it."""
        return StepInfo(
            ess=later.ess,
            resampled=self.resampled | later.resampled,
            log_evidence_increment=self.log_evidence_increment + later.log_evidence_increment,
            acceptance_rate=jnp.where(
                jnp.isnan(later.acceptance_rate), self.acceptance_rate, later.acceptance_rate
            ),
            num_nonfinite=self.num_nonfinite + later.num_nonfinite,
        )


class RunTrace(NamedTuple):
    """What ``particlekit.run`` records per step.

    Attributes
    ----------
    info : StepInfo
        Each field stacked over the ``T`` steps, shape ``(T,)``.
    log_evidence : Array of shape (T,)
        Running log-evidence after each step.
    history : ParticleState or None
        The state after each step, leaves ``(T, N, ...)``, when ``keep_history=True``.
    """

    info: StepInfo
    log_evidence: jax.Array
    history: ParticleState | None


class Kernel(Protocol):
    """A kernel maps ``(key, state, inputs)`` to ``(state, info)``."""

    def __call__(
        self, key: jax.Array, state: ParticleState, inputs: PyTree
    ) -> tuple[ParticleState, StepInfo]: ...


def num_particles_of(state: ParticleState) -> int:
    """Number of particles ``N`` of a state (a static Python int)."""
    return state.log_weights.shape[0]


def path_key_name(key) -> str:
    """The name of one entry of a ``jax.tree_util`` key path: a dict key, an attribute
    name or a sequence index, as a string."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
