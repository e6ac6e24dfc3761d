"""Drivers: ``run`` (a fixed horizon under ``lax.scan``) and ``run_until`` (an adaptive
horizon under ``lax.while_loop``), with an optional progress bar."""

from __future__ import annotations

import numbers
import sys
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import kernels
from particlekit.kernels import check_key
from particlekit.types import Kernel, ParticleState, PyTree, RunTrace, StepInfo, num_particles_of

__all__ = [
    "run",
    "run_until",
    "progress_bar_callback",
    "resolve_progress_bar",
    "constrain_particles",
    "check_sharding",
]


def resolve_progress_bar(progress_bar: bool | None) -> bool:
    """The progress-bar setting of every entry point: ``None`` (their default) shows a bar
    when standard error is a terminal (interactive use) and hides it in scripts, tests and
    CI logs; ``True`` / ``False`` force it.

    Examples
    --------
    >>> resolve_progress_bar(True), resolve_progress_bar(False)
    (True, False)

    Anything else is a ``ValueError`` (``bool("False")`` would show the bar).
    """
    if progress_bar is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    if not isinstance(progress_bar, (bool, np.bool_)):
        raise ValueError(
            f"progress_bar must be True or False (or None: shown on a terminal), got "
            f"{progress_bar!r}"
        )
    return bool(progress_bar)


def progress_bar_callback(num_steps: int, desc: str = "particlekit"):
    """A ``(step_index) -> None`` function updating a tqdm bar from inside a jitted loop
    through ``jax.debug.callback``, about 100 times per run whatever ``num_steps`` (a host
    call every step would slow long horizons). Host side only; nothing is returned to the
    device."""
    from tqdm.auto import tqdm

    stride = max(1, num_steps // 100)
    bars: dict[str, tqdm] = {}

    def _update(i):
        i = int(i)
        if i < stride or "bar" not in bars:
            if "bar" in bars:
                bars["bar"].close()
            bars["bar"] = tqdm(total=num_steps, desc=desc)
        bars["bar"].n = i + 1
        bars["bar"].refresh()
        if i + 1 >= num_steps:
            bars["bar"].close()
            bars.pop("bar")

    def callback(i):
        due = ((i + 1) % stride == 0) | (i + 1 >= num_steps)
        jax.lax.cond(due, lambda: jax.debug.callback(_update, i, ordered=True), lambda: None)

    return callback


def warn_if_counted(counts, message: str) -> None:
    """A ``RuntimeWarning`` (``message.format(count=...)``) after an eager run whose
    ``counts`` sum to more than zero; nothing for traced counts (under ``jit`` / ``vmap``
    the result's field reports them) or counts spread over other processes."""
    if isinstance(counts, jax.core.Tracer) or not getattr(counts, "is_fully_addressable", True):
        return
    count = int(jnp.sum(counts))
    if count > 0:
        warnings.warn(message.format(count=count), RuntimeWarning, stacklevel=3)


def warn_if_counted_after_run(counts, message: str) -> None:
    """``warn_if_counted`` for counts that may be traced: a ``jax.debug.callback`` (one
    per call, after the run, also under ``jit``) emits a ``RuntimeWarning``
    (``message.format(count=..., size=...)``, ``size`` the number of entries of ``counts``)
    when they sum to more than zero."""

    def emit(values):
        values = np.asarray(values)
        count = int(np.sum(values))
        if count > 0:
            warnings.warn(
                message.format(count=count, size=values.size), RuntimeWarning, stacklevel=2
            )

    jax.debug.callback(emit, counts)


def check_sharding(sharding, num_particles: int | None = None, **same_on_every_process):
    """Return ``sharding`` if it is ``None`` or a ``jax.sharding.Sharding`` (of the particle
    axis); raise ValueError otherwise. Recipes call it before tracing.

    A ``NamedSharding`` whose particle axis names mesh axes that are not
    ``AxisType.Auto`` (``jax.make_mesh``'s default is ``Explicit``) is a ``ValueError``.
    With ``num_particles``, also a ``ValueError`` when the sharding cuts the particle axis
    into a number of pieces that does not divide it. When the sharding spans several
    processes (``jax.distributed``), every process checks that all of them were given the
    same ``num_particles`` and ``same_on_every_process`` values (key, data), and raises the
    same error otherwise (``particlekit.distributed``).

    Examples
    --------
    >>> import jax
    >>> from jax.sharding import SingleDeviceSharding
    >>> check_sharding(None) is None
    True
    >>> check_sharding(SingleDeviceSharding(jax.devices()[0])) is not None
    True
    """
    if sharding is None:
        return None
    if not isinstance(sharding, jax.sharding.Sharding):
        raise ValueError(
            f"sharding must be a jax.sharding.Sharding of the particle axis, got {sharding!r}"
        )
    from particlekit import distributed

    if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.spec) > 1:
        # one sharding serves every per-particle array, the 1-D weights included
        raise ValueError(
            f"sharding must name the particle (leading) axis only, e.g. PartitionSpec("
            f"{sharding.spec[0]!r}), got {sharding.spec}: the same sharding is applied to "
            "the weights (1-D) and to every leaf of the particles"
        )
    _check_auto_axes(sharding)
    if isinstance(num_particles, int) and num_particles > 0:  # else the recipe's own check
        _check_divides(sharding, num_particles)
    if num_particles is not None:
        same_on_every_process["num_particles"] = num_particles
    if same_on_every_process and distributed.spans_processes(sharding):
        distributed.check_same_on_every_process(**same_on_every_process)
    return sharding


def _check_auto_axes(sharding) -> None:
    """A ``ValueError`` before tracing when a ``NamedSharding`` shards the particle axis
    over mesh axes that are not ``AxisType.Auto``. ``jax.make_mesh`` makes *explicit* axes
    by default in recent JAX, and re-imposing such a sharding after every step
    (``with_sharding_constraint``) failed mid-trace with JAX's "can only refer to Auto axes
    of the mesh" and a hint at ``reshard``, which is not the fix here."""
    if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.spec) == 0:
        return
    first = sharding.spec[0]
    if first is None or first is jax.sharding.PartitionSpec.UNCONSTRAINED:
        return
    mesh = sharding.mesh
    types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()), strict=False))
    names = (first,) if isinstance(first, str) else tuple(first)
    auto = jax.sharding.AxisType.Auto
    not_auto = {
        name: getattr(types[name], "name", str(types[name]))
        for name in names
        if name in types and types[name] != auto
    }
    if not_auto:
        raise ValueError(
            f"the particle axis is sharded over mesh axes {not_auto} that are not "
            "AxisType.Auto (jax.make_mesh makes Explicit axes by default), and resampling "
            "gathers particles across the whole axis; build the mesh with "
            "jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))"
        )


def _check_divides(sharding, num_particles: int) -> None:
    """A ``ValueError`` when ``sharding`` cuts ``num_particles`` into unequal pieces."""
    from particlekit import distributed

    pieces = distributed.num_shards(sharding)
    if int(num_particles) % pieces:
        up = -(-int(num_particles) // pieces) * pieces
        raise ValueError(
            f"num_particles={num_particles} is not a multiple of the {pieces} shards of "
            f"the particle axis (mesh {dict(sharding.mesh.shape)}, spec "
            f"{sharding.spec}); use a multiple of {pieces}, e.g. {up}"
        )


def constrain_particles(state: ParticleState, sharding) -> ParticleState:
    """Pin the particle axis of every per-particle array of ``state`` to ``sharding``
    (a ``jax.sharding.Sharding`` over the leading axis). ``None`` leaves it alone."""
    if sharding is None:
        return state

    def constrain(leaf):
        return jax.lax.with_sharding_constraint(leaf, sharding)

    return state._replace(
        particles=jax.tree.map(constrain, state.particles),
        previous_particles=jax.tree.map(constrain, state.previous_particles),
        log_weights=constrain(state.log_weights),
        ancestors=constrain(state.ancestors),
    )


def _time_axes(inputs) -> list[int]:
    """The leading (time) axis length of every leaf of ``inputs``, with a ``ValueError``
    before tracing for a leaf that has none (a scalar, or a Python number, e.g. a list of
    temperatures ``[0.1, 0.5, 1.0]``, whose elements are separate scalar leaves) or for
    leaves of different lengths, instead of an ``IndexError`` / ``AttributeError``."""
    axes = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(inputs):
        shape = np.shape(leaf)
        if not shape:
            where = jax.tree_util.keystr(path) or "inputs"
            hint = "; a list or tuple of numbers is a PyTree of scalars: pass jnp.asarray(...)"
            raise ValueError(
                "every leaf of inputs needs a leading time axis (one slice per step), but "
                f"{where} is the scalar {repr(leaf)[:40]}{hint if path else ''}"
            )
        axes.append(shape[0])
    if len(set(axes)) > 1:
        raise ValueError(
            f"the leaves of inputs have different leading (time) axes {sorted(set(axes))}; "
            "every leaf needs one slice per step"
        )
    return axes


def _num_steps_of(inputs, num_steps):
    leaves = _time_axes(inputs)
    if num_steps is None:
        if not leaves:
            raise ValueError("run needs inputs with a leading time axis, or num_steps")
        return int(leaves[0])
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    if num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps}")
    kernels.check_size(int(num_steps), "num_steps")  # a step index per step, int32
    if leaves and leaves[0] != num_steps:
        raise ValueError(
            f"num_steps={num_steps} does not match the leading axis {leaves[0]} of inputs"
        )
    return int(num_steps)


def _check_state(state) -> None:
    """A ``ValueError`` before tracing when ``state`` is not a ``ParticleState``; the usual
    slip is passing a kernel's whole ``(state, info)`` output."""
    if isinstance(state, ParticleState):
        return
    if isinstance(state, tuple) and state and isinstance(state[0], ParticleState):
        raise ValueError(
            "state must be a ParticleState, got a tuple starting with one: a kernel returns "
            "(state, info); pass its first element"
        )
    raise ValueError(f"state must be a ParticleState (from pk.init), got {type(state).__name__}")


def check_same_layout(before, after, where: str) -> None:
    """A ``ValueError`` at trace time when a step returns a state whose leaves differ in
    shape or dtype from the ones it received (``lax.scan`` / ``lax.while_loop`` raised a
    ``TypeError`` about a "carry component"), naming the leaf, or whose structure differs.
    Weak types are not compared (the loops promote them)."""
    if jax.tree.structure(after) != jax.tree.structure(before):
        # (run's steps return (state, info) and it unpacks them; run_until's return the
        # state alone, so a kernel's pair there changes the structure)
        hint = (
            " (a kernel's (state, info)? run_until's step returns the new state only)"
            if isinstance(after, tuple) and len(after) == 2
            else ""
        )
        raise ValueError(
            f"{where}'s step must return a state of the same structure as the one it "
            f"receives{hint}; got {jax.tree.structure(after)} for {jax.tree.structure(before)}"
        )
    leaves_after = jax.tree.leaves(after)
    paths = jax.tree_util.tree_flatten_with_path(before)[0]
    for (path, a), b in zip(paths, leaves_after, strict=True):
        if jnp.shape(a) != jnp.shape(b) or jnp.asarray(a).dtype != jnp.asarray(b).dtype:
            raise ValueError(
                f"{where}: the step changed state{jax.tree_util.keystr(path)} from "
                f"{jnp.asarray(a).dtype}{list(jnp.shape(a))} to "
                f"{jnp.asarray(b).dtype}{list(jnp.shape(b))}; a step must return the state "
                "with the shapes and dtypes it received (a move returns one particle of the "
                "shape and dtype of its input: cast with .astype(x.dtype), keep the same "
                "coordinates)"
            )


def _evidence_increment(before, after, info):
    """The evidence increment a driver adds for one step: ``info.log_evidence_increment``
    (exact, which the compensated sum needs), unless the step reported the neutral ``0``
    while changing ``state.log_evidence`` itself, as a hand-written kernel returning
    ``StepInfo.neutral(state)`` after updating the evidence does: then that change
    (``StepInfo.log_evidence_increment`` is by definition the change). The driver used to
    overwrite such a kernel's evidence with the sum of the reported increments, silently.
    Three scalar operations per step."""
    reported = info.log_evidence_increment
    changed = after - before  # NaN from a -inf evidence: then the reported one
    forgot = (reported == 0) & (changed != 0) & ~jnp.isnan(changed)
    return jnp.where(forgot, changed, reported)


def advance(key, step: Kernel, state: ParticleState, compensation, t, inputs_t, sharding):
    """Step ``t`` of a driver loop: ``step`` with the key ``fold_in(key, t)``, its evidence
    increment added to ``state.log_evidence`` by compensated summation (``compensation``
    carried between steps), the particle axis pinned to ``sharding``. Returns
    ``(new_state, new_compensation, info)``; ``run``'s scan and loops that stop early (e.g.
    ``particlekit.steering``'s) share it."""
    out = step(jax.random.fold_in(key, t), state, inputs_t)
    if isinstance(out, ParticleState):  # a static check at trace time
        raise ValueError(
            "step must return (state, info), as the kernels of pk.move / pk.reweight / "
            "pk.chain do; it returned a ParticleState alone (for a step that returns the "
            "state only, use run_until)"
        )
    new_state, info = out
    increment = _evidence_increment(state.log_evidence, new_state.log_evidence, info)
    if isinstance(info, StepInfo):  # recipes may wrap it (e.g. FK steering's info)
        info = info._replace(log_evidence_increment=increment)
    log_evidence, compensation = kernels.compensated_add(
        state.log_evidence, compensation, increment
    )
    new_state = constrain_particles(new_state._replace(log_evidence=log_evidence), sharding)
    return new_state, compensation, info


def run(
    key: jax.Array,
    step: Kernel,
    state: ParticleState,
    inputs: PyTree = None,
    *,
    num_steps: int | None = None,
    keep_history: bool = True,
    progress_bar: bool | None = None,
    sharding=None,
) -> tuple[ParticleState, RunTrace]:
    """Apply ``step`` once per element of the leading axis of ``inputs`` (``lax.scan``).

    Parameters
    ----------
    key : PRNG key
        Step ``t`` uses ``fold_in(key, t)``.
    step : kernel
        ``(key, state, inputs_t) -> (state, info)``, e.g. built by ``chain``. The
        log-evidence is the compensated sum of the steps' ``info.log_evidence_increment``
        (a hand-written kernel that reports ``0`` there but changes
        ``state.log_evidence`` gets its own change).
    state : ParticleState
        Initial population.
    inputs : PyTree, optional
        Leaves with leading axis ``T``; step ``t`` receives the ``t``-th slice.
    num_steps : int, optional
        Number of steps when ``inputs`` is None (the step then receives the step index).
    keep_history : bool
        Record the full state after each step (memory ``O(N T)``). With ``False`` only
        the per-step scalars are kept, so very long horizons run in ``O(N)`` memory.
    progress_bar : bool, optional
        Show a tqdm bar (through ``jax.debug.callback``, about 100 updates per run).
        ``None`` (default): shown when standard error is a terminal
        (``resolve_progress_bar``).
    sharding : jax.sharding.Sharding, optional
        Sharding of the particle axis, re-imposed after every step.

    Returns
    -------
    final_state : ParticleState
    trace : RunTrace
        Per-step ``StepInfo`` (each field ``(T,)``), running
        log-evidence ``(T,)``, and the history when requested.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> ys = jnp.zeros(5)
    >>> state = pk.init(jax.random.key(0), lambda k: jax.random.normal(k), 256)
    >>> step = pk.chain(
    ...     pk.resample(),
    ...     pk.move(lambda k, x, y: 0.9 * x + jax.random.normal(k)),
    ...     pk.reweight(lambda xp, x, y: -0.5 * (y - x) ** 2),
    ... )
    >>> final, trace = pk.run(jax.random.key(1), step, state, ys)
    >>> trace.info.ess.shape
    (5,)
    """
    check_key(key)
    check_sharding(sharding)
    kernels.check_callable(step, "step", "a kernel step(key, state, inputs) -> (state, info)")
    keep_history = kernels.check_flag(keep_history, "keep_history")
    _check_state(state)
    if sharding is not None:  # the count only: run may be traced inside a recipe, whose
        _check_divides(sharding, num_particles_of(state))  # own check compares processes
    total_steps = _num_steps_of(inputs, num_steps)
    if inputs is None:
        inputs = jnp.arange(total_steps)
    tick = progress_bar_callback(total_steps) if resolve_progress_bar(progress_bar) else None
    state = constrain_particles(state, sharding)

    def body(carry, xs):
        state, compensation = carry
        t, inputs_t = xs
        new_state, compensation, info = advance(key, step, state, compensation, t, inputs_t,
                                                sharding)  # fmt: skip
        check_same_layout(state, new_state, "run")
        if tick is not None:
            tick(t)
        out = (info, new_state.log_evidence, new_state if keep_history else None)
        return (new_state, compensation), out

    init_carry = (state, jnp.zeros_like(state.log_evidence))
    steps = jnp.arange(total_steps)
    (final_state, _), (info, log_evidence, history) = jax.lax.scan(
        body, init_carry, (steps, inputs)
    )
    return final_state, RunTrace(info=info, log_evidence=log_evidence, history=history)


def _check_max_steps(max_steps) -> None:
    """A ``ValueError`` before tracing unless ``max_steps`` is a non-negative integer (any
    integral type) or an integer 0-d JAX array (possibly traced): ``"5"`` failed inside the
    loop, and ``2.5`` or ``-1`` ran a number of steps nobody asked for."""
    if isinstance(max_steps, np.ndarray) and max_steps.shape == ():
        max_steps = max_steps[()]  # a 0-d NumPy array (np.array(5)) is its integer
    if isinstance(max_steps, jax.Array):
        if max_steps.shape == () and jnp.issubdtype(max_steps.dtype, jnp.integer):
            return
    elif isinstance(max_steps, numbers.Integral) and not isinstance(max_steps, bool):
        if max_steps >= 0:
            kernels.check_size(int(max_steps), "max_steps")
            return
    raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")


def run_until(
    key: jax.Array,
    step: Kernel,
    state: PyTree,
    done_fn: Callable[[PyTree], jax.Array],
    *,
    max_steps: int,
) -> tuple[PyTree, jax.Array]:
    """Apply ``step(key, state, t)`` until ``done_fn(state)`` or ``max_steps`` steps
    (``lax.while_loop``). Returns the final state and the number of steps taken.

    ``done_fn`` returns a boolean scalar (an integer one is read as ``!= 0``; a float is a
    ``ValueError``, since ``1.0 - temperature`` would be read as "done" whenever non-zero).

    ``state`` may be any PyTree (adaptive recipes nest a ``ParticleState`` with their own
    fields, e.g. a temperature); ``step`` returns the new state only.
    """
    check_key(key)
    kernels.check_callable(step, "step", "a function step(key, state, t) -> state")
    kernels.check_callable(done_fn, "done_fn", "a function done_fn(state) -> bool")
    _check_max_steps(max_steps)

    def cond(carry):
        state, t = carry
        done = jnp.asarray(done_fn(state))
        if done.shape != ():  # static, at trace time
            raise ValueError(f"done_fn must return a boolean scalar, got shape {done.shape}")
        if not (done.dtype == jnp.bool_ or jnp.issubdtype(done.dtype, jnp.integer)):
            # a float was truthy whenever non-zero: ``lambda s: 1.0 - s.temperature``
            # stopped at once, and a NaN stopped too
            raise ValueError(
                f"done_fn must return a boolean scalar, got dtype {done.dtype}; compare, "
                "e.g. s.temperature >= 1.0"
            )
        # ``~`` of a Python bool is an int (``~False == -1``): cast before negating
        return (t < max_steps) & ~done.astype(bool)

    def body(carry):
        state, t = carry
        new_state = step(jax.random.fold_in(key, t), state, t)
        check_same_layout(state, new_state, "run_until")  # static, at trace time
        return new_state, t + 1

    return jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32)))
