"""The particle of sequence steering and its Feynman–Kac pieces: the move ``M_t`` (extend by
one generator step), the potentials ``G_t`` of the two variants, and argument checks.

Shared by ``particlekit.steering.smc`` and ``particlekit.steering.particle_gibbs``.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from particlekit import kernels
from particlekit.run import warn_if_counted
from particlekit.types import PyTree

__all__ = [
    "SequenceState",
    "VARIANTS",
    "check_config",
    "initial_state",
    "initial_potential",
    "extend_move",
    "potential",
]

VARIANTS = ("exact", "softmax")


class SequenceState(NamedTuple):
    """One particle of sequence steering (leaves gain a leading axis ``N`` in a population).

    Attributes
    ----------
    tokens : Array of shape (L,), int32
        The prompt followed by the generated tokens; positions ``>= length`` hold the end
        token (padding).
    length : Array of shape (), int32
        Number of filled positions (prompt and end token included).
    finished : Array of shape (), bool
        The sequence ended with the end token or reached ``L``; it no longer moves.
    log_potential : Array of shape ()
        ``log phi(tokens[:length])``, the reward model's value of the current prefix (cached
        so that each prefix is scored once).
    cache : PyTree
        The generator's carried state (e.g. a key/value cache) when ``init_cache`` is
        given, else ``()``.
    """

    tokens: jax.Array
    length: jax.Array
    finished: jax.Array
    log_potential: jax.Array
    cache: PyTree


class Config(NamedTuple):
    """Validated static configuration (hashable; built before tracing)."""

    total_length: int
    prompt_length: int
    vocab_size: int
    eos_id: int
    has_cache: bool
    #: Step-level steering: the token that ends a reasoning step (``-1``: token level).
    separator_id: int = -1
    #: Tokens a particle may add in one step (1 at token level).
    max_step_tokens: int = 1
    #: Number of SMC steps ``T`` (0: ``total_length - prompt_length``, one per token).
    max_steps: int = 0

    @property
    def num_steps(self) -> int:
        """Number of SMC steps (reweightings after the initial one)."""
        return self.max_steps or self.total_length - self.prompt_length

    @property
    def step_level(self) -> bool:
        return self.separator_id >= 0


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _prompt_array(prompt):
    if prompt is None:
        return jnp.zeros((0,), jnp.int32)
    if isinstance(prompt, jax.core.Tracer):
        if prompt.ndim != 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
            raise ValueError(f"prompt must be a 1-D integer array, got {prompt.shape}")
        return prompt.astype(jnp.int32)
    batch_hint = (
        "; for a batch of prompts, pad them to one length and jax.vmap over them, or run "
        "them one at a time"
    )
    try:
        arr = np.asarray(prompt)
    except ValueError:  # a ragged nested list: numpy's "inhomogeneous shape"
        raise ValueError(f"prompt must be a 1-D integer array of token ids{batch_hint}") from None
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"prompt must be a 1-D integer array of token ids, got shape {arr.shape} "
            f"and dtype {arr.dtype}" + (batch_hint if arr.ndim > 1 else "")
        )
    return jnp.asarray(arr, jnp.int32)


def check_config(
    step_fn,
    reward_fn,
    *,
    num_particles,
    max_length,
    eos_id,
    prompt,
    init_cache,
    variant,
    separator_id=None,
    max_step_tokens=None,
    max_steps=None,
):
    """Check every argument before tracing; return ``(Config, prompt)``.

    Raises ``ValueError`` for a non-callable ``step_fn`` / ``reward_fn``, a non-positive
    ``num_particles`` or ``max_length``, an ``eos_id`` outside the vocabulary, a prompt
    that is not 1-D integer ids in the vocabulary or that ends with ``eos_id``, logits
    that are not of shape ``(V,)``, a reward that is not a real (non-bool) scalar, a new
    cache whose structure, shapes or dtypes differ from ``init_cache``, an unknown variant,
    a ``separator_id`` outside the vocabulary or equal to ``eos_id``, non-positive
    ``max_step_tokens`` / ``max_steps``, or either of these without ``separator_id``.
    """
    if not callable(step_fn):
        raise ValueError(f"step_fn must be callable (tokens, length) -> logits, got {step_fn!r}")
    if not callable(reward_fn):
        raise ValueError(
            f"reward_fn must be callable (tokens, length) -> log potential, got {reward_fn!r}"
        )
    kernels.check_num_particles(num_particles)
    max_length = _positive_int(max_length, "max_length")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    prompt = _prompt_array(prompt)
    total = prompt.shape[0] + max_length
    tokens = jax.ShapeDtypeStruct((total,), jnp.int32)
    length = jax.ShapeDtypeStruct((), jnp.int32)
    has_cache = init_cache is not None
    if has_cache:
        out = _eval_step(step_fn, (tokens, length, init_cache), "step_fn(tokens, length, cache)")
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("with init_cache, step_fn must return (logits, new_cache)")
        logits, cache_out = out
        cache_in = jax.eval_shape(lambda c: c, init_cache)
        if jax.tree.structure(cache_out) != jax.tree.structure(cache_in) or any(
            a.shape != b.shape or a.dtype != b.dtype
            for a, b in zip(jax.tree.leaves(cache_out), jax.tree.leaves(cache_in), strict=True)
        ):
            raise ValueError(
                "step_fn must return a new cache with the structure, shapes and dtypes of "
                f"init_cache; got {_describe(cache_out)} for {_describe(cache_in)}"
            )
    else:
        logits = _eval_step(step_fn, (tokens, length), "step_fn(tokens, length)")
    if not hasattr(logits, "shape") or len(logits.shape) != 1 or logits.shape[0] < 2:
        raise ValueError(
            "step_fn must return next-token logits of shape (V,) with V >= 2 for one "
            f"sequence; got {getattr(logits, 'shape', type(logits))}"
        )
    if jnp.issubdtype(logits.dtype, jnp.complexfloating):
        raise ValueError(f"step_fn must return real logits, got {logits.dtype}")
    vocab = int(logits.shape[0])
    if isinstance(eos_id, bool) or not isinstance(eos_id, numbers.Integral):
        raise ValueError(f"eos_id must be an integer token id, got {eos_id!r}")
    if not 0 <= int(eos_id) < vocab:
        raise ValueError(f"eos_id must be in [0, {vocab}) (the vocabulary), got {eos_id}")
    if not isinstance(prompt, jax.core.Tracer) and prompt.shape[0]:
        p = np.asarray(prompt)
        if p.min() < 0 or p.max() >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab}), got {p.tolist()}")
        if int(p[-1]) == int(eos_id):
            # every sequence would end at once (its first new token the end token, as for
            # any finished sequence): a "result" of N copies of the prompt, without a word
            raise ValueError(
                f"the prompt ends with the end token eos_id={int(eos_id)} (a tokenizer that "
                "appends it?), so nothing would be generated: strip it from the prompt"
            )
    reward = jax.eval_shape(reward_fn, tokens, length)
    if not hasattr(reward, "shape") or reward.shape != ():
        raise ValueError(
            "reward_fn must return a scalar log potential for one sequence; got shape "
            f"{getattr(reward, 'shape', type(reward))}"
        )
    if reward.dtype == jnp.bool_:
        # True / False would be read as log phi = 1 / 0, i.e. phi = e / 1: a tilt of e, not
        # the hard constraint an indicator usually means
        raise ValueError(
            "reward_fn must return the log potential log phi, got a bool (an indicator?); "
            "for a hard constraint return jnp.where(ok, 0.0, -jnp.inf)"
        )
    if jnp.issubdtype(reward.dtype, jnp.complexfloating):
        # cast to a real weight, its imaginary part would be dropped without an error
        raise ValueError(f"reward_fn must return a real log potential, got {reward.dtype}")
    step_options = _check_step_level(
        separator_id, max_step_tokens, max_steps, vocab=vocab, eos_id=int(eos_id),
        max_length=max_length,
    )  # fmt: skip
    config = Config(total, int(prompt.shape[0]), vocab, int(eos_id), has_cache, *step_options)
    return config, prompt


def _eval_step(step_fn, args, call: str):
    """``jax.eval_shape(step_fn, *args)``; a ``TypeError`` (most often a step function with a
    cache called without ``init_cache``, or the other way round) becomes a ``ValueError``
    that says which protocol was used."""
    try:
        return jax.eval_shape(step_fn, *args)
    except TypeError as err:
        raise ValueError(
            f"calling {call} raised TypeError: {err}. A step function that carries a cache "
            "takes (tokens, length, cache) and needs init_cache=...; without init_cache it "
            "takes (tokens, length)"
        ) from err


def _describe(tree) -> str:
    """A short description of a pytree of arrays: its leaves' dtypes and shapes."""
    return str(jax.tree.map(lambda a: f"{a.dtype}{list(a.shape)}", tree))


def _check_step_level(separator_id, max_step_tokens, max_steps, *, vocab, eos_id, max_length):
    """``(separator_id, max_step_tokens, max_steps)`` of ``Config``, checked."""
    if separator_id is None:
        if max_step_tokens is not None or max_steps is not None:
            raise ValueError(
                "max_step_tokens and max_steps apply to step-level steering: give "
                "separator_id (the token that ends a step) as well"
            )
        return -1, 1, 0
    if isinstance(separator_id, bool) or not isinstance(separator_id, numbers.Integral):
        raise ValueError(f"separator_id must be an integer token id, got {separator_id!r}")
    if not 0 <= int(separator_id) < vocab:
        raise ValueError(
            f"separator_id must be in [0, {vocab}) (the vocabulary), got {separator_id}"
        )
    if int(separator_id) == eos_id:
        raise ValueError(
            f"separator_id must differ from eos_id ({eos_id}): the end token already ends "
            "the last step"
        )
    step_tokens = max_length if max_step_tokens is None else max_step_tokens
    step_tokens = _positive_int(step_tokens, "max_step_tokens")
    steps = max_length if max_steps is None else _positive_int(max_steps, "max_steps")
    return int(separator_id), min(step_tokens, max_length), steps


def initial_state(prompt, reward_fn, config: Config, init_cache) -> SequenceState:
    """The single particle before generation: the prompt padded with the end token.

    A prompt with a token id outside the vocabulary is a ``ValueError`` in ``check_config``
    when it is concrete; a traced one (under ``jit`` / ``vmap``) cannot be checked there,
    so its potential is NaN instead: every particle gets zero weight (counted at step 0)
    and the result reports ``failed``."""
    total, p = config.total_length, config.prompt_length
    tokens = jnp.full((total,), config.eos_id, jnp.int32).at[:p].set(prompt)
    length = jnp.asarray(p, jnp.int32)
    log_potential = jnp.asarray(reward_fn(tokens, length), jnp.result_type(float))
    in_vocabulary = jnp.all((prompt >= 0) & (prompt < config.vocab_size))
    log_potential = jnp.where(in_vocabulary, log_potential, jnp.nan)
    return SequenceState(
        tokens=tokens,
        length=length,
        finished=jnp.asarray(False),
        log_potential=log_potential,
        cache=init_cache if config.has_cache else (),
    )


def extend_move(step_fn, reward_fn, config: Config, reference: SequenceState | None = None):
    """The move ``M_t``: every unfinished particle draws its next token from the generator
    and scores the new prefix; finished particles are left unchanged.

    At step level (``config.separator_id >= 0``) a move adds a whole reasoning step: each
    unfinished particle draws tokens until the separator (included), the end token, or
    ``config.max_step_tokens`` tokens, and the reward scores the prefix once, at the end
    of the step.

    With a ``reference`` (one sequence, conditional SMC), slot 0 is extended by the
    reference's next tokens instead of draws. Returns a vectorised ``fn(key, xs, inputs)``
    for ``particlekit.move``.
    """
    total, eos = config.total_length, config.eos_id
    select_cache = cache_selector(step_fn) if config.has_cache else lambda keep, old, new: ()

    def propose(key, x: SequenceState):
        if config.has_cache:
            logits, cache = step_fn(x.tokens, x.length, x.cache)
        else:
            logits, cache = step_fn(x.tokens, x.length), ()
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        ok = jnp.any(logits > -jnp.inf) & ~jnp.any(logits == jnp.inf)
        token = jax.random.categorical(key, jnp.where(ok, logits, 0.0)).astype(jnp.int32)
        return token, cache, ok

    def append(x: SequenceState, token, cache, ok):
        pos = jnp.clip(x.length, 0, total - 1)
        tokens = x.tokens.at[pos].set(token)
        length = x.length + 1
        log_potential = jnp.asarray(reward_fn(tokens, length), x.log_potential.dtype)
        # a generator returning no valid distribution kills the particle (counted as a
        # non-finite potential by the engine)
        log_potential = jnp.where(ok, log_potential, jnp.nan)
        new = SequenceState(
            tokens=tokens,
            length=length,
            finished=(token == eos) | (length >= total),
            log_potential=log_potential,
            cache=(),
        )
        kept = jax.tree.map(lambda a, b: jnp.where(x.finished, a, b), x._replace(cache=()), new)
        return kept._replace(cache=select_cache(x.finished, x.cache, cache))

    def draw(key, xs: SequenceState):
        n = xs.length.shape[0]
        tokens, caches, ok = jax.vmap(propose)(jax.random.split(key, n), xs)
        if reference is not None:
            ref_token = reference.tokens[jnp.clip(xs.length[0], 0, total - 1)]
            tokens = tokens.at[0].set(ref_token)
            ok = ok.at[0].set(True)
        return tokens, caches, ok

    def fn(key, xs: SequenceState, inputs):
        del inputs
        return jax.vmap(append)(xs, *draw(key, xs))

    if not config.step_level:
        return fn

    def extend_token(x: SequenceState, token, cache):
        length = x.length + 1
        return x._replace(
            tokens=x.tokens.at[jnp.clip(x.length, 0, total - 1)].set(token),
            length=length,
            finished=(token == eos) | (length >= total),
            cache=cache,
        )

    def step_fn_level(key, xs: SequenceState, inputs):
        """Extend each unfinished particle token by token until it emits the separator,
        finishes, or has added ``max_step_tokens`` tokens; then score each moved prefix
        once. A particle whose generator returned no valid distribution stops and gets a
        NaN potential (zero weight, counted by the engine)."""
        del inputs

        def one_token(loop: _TokenLoop) -> _TokenLoop:
            key, key_draw = jax.random.split(loop.key)
            xs, active = loop.particles, loop.active
            tokens, caches, ok = draw(key_draw, xs)
            new = jax.vmap(extend_token)(xs, tokens, caches)
            cache = jax.vmap(select_cache)(~active, xs.cache, new.cache)
            xs = jax.tree.map(
                lambda a, b: jnp.where(_expand(active, a), a, b),
                new._replace(cache=()),
                xs._replace(cache=()),
            )._replace(cache=cache)
            stop = new.finished | (tokens == config.separator_id) | ~ok
            return _TokenLoop(key, xs, active & ~stop, loop.bad | (active & ~ok))

        n = xs.length.shape[0]
        init = _TokenLoop(key, xs, ~xs.finished, jnp.zeros((n,), bool))
        out = _while_any_active(one_token, config.max_step_tokens, init)
        moved = out.particles
        log_potential = jax.vmap(reward_fn)(moved.tokens, moved.length)
        log_potential = jnp.asarray(log_potential, xs.log_potential.dtype)
        log_potential = jnp.where(out.bad, jnp.nan, log_potential)
        log_potential = jnp.where(xs.finished, xs.log_potential, log_potential)
        return moved._replace(log_potential=log_potential)

    return step_fn_level


class _TokenLoop(NamedTuple):
    """The carry of the token loop of a step-level move (``N`` particles)."""

    key: jax.Array
    particles: SequenceState
    #: (N,) bool: the particle is still drawing tokens in this step.
    active: jax.Array
    #: (N,) bool: the generator returned no valid distribution to the particle.
    bad: jax.Array


def _while_any_active(body, limit: int, carry: _TokenLoop) -> _TokenLoop:
    """Apply ``carry = body(carry)`` while some particle is active, at most ``limit`` times.

    ``body`` must leave inactive particles as they are (their caches up to entries that
    are not read, see ``cache_selector``) and never reactivate one. Then batching the loop
    (``jax.vmap`` over problems, each with its own population) needs no selection of the
    carry: the batched loop runs ``body`` on every problem while any particle of any problem
    is active, and gives each problem the result of its own loop (a problem whose particles
    have all stopped only draws keys that are not used). JAX's own batching of a
    ``lax.while_loop`` whose predicate is batched selects every leaf of the carry (the
    key/value caches of all particles included) between old and new at every iteration,
    which costs as much as the generator's step on small models.

    The values ``body`` closes over (the generator's parameters, a reference sequence)
    become explicit operands, so that they may be batched too.
    """
    closed = jax.make_jaxpr(body)(carry)
    tree = jax.tree.structure(carry)

    def pure(operands, leaves):
        return jax.core.eval_jaxpr(closed.jaxpr, operands, *leaves)

    leaves = _active_loop(pure, limit, tree)(list(closed.consts), jax.tree.leaves(carry))
    return jax.tree.unflatten(tree, leaves)


def _active_loop(body, limit: int, tree):
    """``loop(operands, leaves)``: the ``lax.while_loop`` of ``_while_any_active`` over the
    flat carry ``leaves`` (of structure ``tree``), with ``body(operands, leaves)`` pure; its
    batching rule is the same loop over the body vmapped, stopping when no particle of any
    problem is active."""

    def active(leaves):
        return jax.tree.unflatten(tree, leaves).active

    @jax.custom_batching.custom_vmap
    def loop(operands, leaves):
        def more(c):
            return (c[0] < limit) & jnp.any(active(c[1]))

        def once(c):
            return c[0] + 1, body(operands, c[1])

        return jax.lax.while_loop(more, once, (jnp.asarray(0), leaves))[1]

    @loop.def_vmap
    def batched(axis_size, in_batched, operands, leaves):
        operands_batched, leaves_batched = in_batched
        leaves = [
            x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, b in zip(leaves, leaves_batched, strict=True)
        ]
        axes = [0 if b else None for b in operands_batched]
        vbody = jax.vmap(body, in_axes=(axes, 0))
        return _active_loop(vbody, limit, tree)(operands, leaves), [True] * len(leaves)

    return loop


def cache_selector(step_fn):
    """How a particle that does not move keeps its cache: ``select(keep, old, new)`` for one
    particle, given the cache before and after a step that the particle must not take.

    The step function's own ``select_cache`` method when it has one, else every leaf of
    ``old`` where ``keep``. Selecting whole caches reads and writes all of them at every
    token; a key/value cache whose entries past its position are unused only needs its
    position kept (``particlekit.lm.transformer.SteeringLM.select_cache``): the stale entry
    a frozen particle wrote at its position is overwritten by its next real token."""
    custom = getattr(step_fn, "select_cache", None)
    if callable(custom):
        return custom
    return lambda keep, old, new: jax.tree.map(lambda a, b: jnp.where(keep, a, b), old, new)


def _expand(mask, leaf):
    """``mask (N,)`` broadcast against ``leaf (N, ...)``."""
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - 1))


def potential(variant: str):
    """The log-potential ``log G_t(x_prev, x)`` of a variant (one particle).

    ``"exact"``: ``log phi(x_{1:t}) - log phi(x_{1:t-1})`` for a sequence that moved, 0
    for a finished one, so the product over steps telescopes to ``phi(x)``.
    ``"softmax"``: ``log phi(x_{1:t})``, the current reward, for every particle (finished
    ones included), as in Puri et al. (2025).
    In both, a particle whose previous potential was not finite (zero weight already)
    gets ``-inf``: it stays at zero weight even if an all-zero population was resampled.
    """
    if variant == "exact":

        def log_g(x_prev: SequenceState, x: SequenceState, inputs):
            # a prefix already at zero (or NaN) potential stays at zero weight, without
            # computing -inf - (-inf) = NaN and without counting its bad reward twice
            dead = ~jnp.isfinite(x_prev.log_potential)
            diff = jnp.where(x_prev.finished, 0.0, x.log_potential - x_prev.log_potential)
            return jnp.where(dead, -jnp.inf, diff)

    else:

        def log_g(x_prev: SequenceState, x: SequenceState, inputs):
            prev = x_prev.log_potential
            return jnp.where(jnp.isfinite(prev), x.log_potential, -jnp.inf)

    return log_g


def initial_potential(x_prev: SequenceState, x: SequenceState, inputs):
    """``log G_0 = log phi(prompt)`` (the same for every particle)."""
    return x.log_potential


_UNFINISHED_WARNING = (
    "{where}: {{count}} sequences were still unfinished (no end token, shorter than "
    "len(prompt) + max_length) after max_steps={max_steps} steps. They are returned as "
    "prefixes weighted by the reward of a prefix, so the result does not target "
    "p(x) phi(x) / Z over complete sequences (nor log_evidence log E_p[phi(x)]). Raise "
    "max_steps (the default, max_length, always suffices)."
)


def warn_unfinished(where: str, config: Config, max_steps, sequences, lengths, keep=None):
    """A ``RuntimeWarning`` after an eager step-level run whose ``max_steps`` (given by the
    user) ran out before some sequences ended: ``sequences (..., L)`` with ``lengths``
    whose last token is not the end token and which are shorter than ``L`` (``keep``: a
    mask of the sequences that count, e.g. those of positive weight). Nothing for traced
    results (under ``jit`` / ``vmap``) or without ``max_steps``."""
    if max_steps is None or isinstance(lengths, jax.core.Tracer):
        return
    last = jnp.take_along_axis(sequences, jnp.clip(lengths - 1, 0)[..., None], axis=-1)[..., 0]
    unfinished = (last != config.eos_id) & (lengths < config.total_length)
    if keep is not None:
        unfinished = unfinished & keep
    warn_if_counted(unfinished, _UNFINISHED_WARNING.format(where=where, max_steps=max_steps))
