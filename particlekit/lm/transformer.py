"""A small decoder-only transformer in Equinox, with a full-sequence forward pass (training,
scoring) and a key/value-cached single-token step (generation, steering).

- ``Transformer(config, key)``: ``model(tokens) -> logits`` for one sequence, causal;
- ``prefill(model, tokens) -> KVCache`` and ``step(model, cache, token) -> (logits, cache)``:
  the cached forward pass of one sequence, with a preallocated cache of
  ``config.context_length`` positions and a position counter (static shapes);
- ``generate``: sampling or greedy decoding, one ``lax.scan`` over the new tokens;
- ``SteeringLM`` / ``steering_model``: the adapter to ``particlekit.steering.smc`` through
  its ``init_cache`` protocol.

Everything acts on ONE sequence; ``jax.vmap`` batches it.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "KVCache",
    "SteeringLM",
    "Transformer",
    "TransformerConfig",
    "generate",
    "prefill",
    "step",
    "steering_model",
]


class TransformerConfig(NamedTuple):
    """Hyperparameters of a ``Transformer`` (hashable: stored as a static field).

    Attributes
    ----------
    vocab_size : int
    context_length : int
        Maximum number of positions (learned position embeddings).
    d_model : int
    num_heads : int
        Must divide ``d_model``.
    num_layers : int
    mlp_ratio : int
        Hidden width of the MLP as a multiple of ``d_model``.
    output_size : int, optional
        Width of the output projection; default ``vocab_size`` (next-token logits). A
        reward model uses 1 (one score per position).
    """

    vocab_size: int
    context_length: int
    d_model: int
    num_heads: int
    num_layers: int
    mlp_ratio: int = 4
    output_size: int | None = None


class KVCache(NamedTuple):
    """The key/value cache of ONE sequence.

    Attributes
    ----------
    keys : Array of shape (num_layers, num_heads, context_length, head_dim)
    values : Array of shape (num_layers, num_heads, context_length, head_dim)
        Entries at positions ``>= position`` are unused (zeros or stale). Head-major, so
        that attention reads each head's keys and values as one contiguous matrix: with
        positions before heads, XLA transposes a layer's whole cache at every token.
    position : Array of shape (), int32
        Number of tokens processed: the next token goes to this position.
    """

    keys: jax.Array
    values: jax.Array
    position: jax.Array


def _check_config(config) -> TransformerConfig:
    """``config`` as a ``TransformerConfig`` of positive integers, else a ``ValueError``."""
    if isinstance(config, dict):
        config = TransformerConfig(**config)
    elif not isinstance(config, TransformerConfig):
        config = TransformerConfig(*config)
    for name, value in config._asdict().items():
        if name == "output_size" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {value!r}")
    return TransformerConfig(*(None if v is None else int(v) for v in config))


class _Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, key):
        d, h = config.d_model, config.mlp_ratio * config.d_model
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.LayerNorm(d)
        self.qkv = eqx.nn.Linear(d, 3 * d, key=k1)
        self.out = eqx.nn.Linear(d, d, key=k2)
        self.norm2 = eqx.nn.LayerNorm(d)
        self.fc1 = eqx.nn.Linear(d, h, key=k3)
        self.fc2 = eqx.nn.Linear(h, d, key=k4)
        self.num_heads = config.num_heads

    def project(self, x):
        """Queries, keys, values of positions ``x (T, d)``: three ``(T, H, d / H)``."""
        qkv = jax.vmap(self.qkv)(jax.vmap(self.norm1)(x))
        t = x.shape[0]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        # the head width spelled out: with -1, an empty sequence (T = 0) cannot be reshaped
        shape = (t, self.num_heads, q.shape[-1] // self.num_heads)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def finish(self, x, q, keys, values, mask):
        """Attention of queries ``q (T, H, dh)`` over ``keys/values (H, S, dh)`` (head-major,
        as in ``KVCache``) with ``mask (T, S)``, then the residual MLP."""
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = jnp.einsum("thd,hsd->hts", q, keys) * scale
        scores = jnp.where(mask[None], scores, -jnp.inf)
        attn = jax.nn.softmax(scores, axis=-1)
        mixed = jnp.einsum("hts,hsd->thd", attn, values).reshape(x.shape)
        x = x + jax.vmap(self.out)(mixed)
        hidden = jax.nn.gelu(jax.vmap(self.fc1)(jax.vmap(self.norm2)(x)))
        return x + jax.vmap(self.fc2)(hidden)


class Transformer(eqx.Module):
    """A pre-norm decoder-only transformer: token and learned position embeddings,
    ``num_layers`` blocks of causal multi-head attention and a GELU MLP, a final layer
    norm and an untied output projection.

    Parameters
    ----------
    config : TransformerConfig
    key : PRNG key
        Initialisation.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> cfg = TransformerConfig(vocab_size=16, context_length=8, d_model=16, num_heads=2,
    ...                         num_layers=1)
    >>> model = Transformer(cfg, jax.random.key(0))
    >>> model(jnp.array([1, 2, 3])).shape
    (3, 16)
    """

    token_embedding: jax.Array
    position_embedding: jax.Array
    blocks: tuple[_Block, ...]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    config: TransformerConfig = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, key):
        config = _check_config(config)
        if config.d_model % config.num_heads:
            raise ValueError(
                f"num_heads ({config.num_heads}) must divide d_model ({config.d_model})"
            )
        k_tok, k_pos, k_head, *k_blocks = jax.random.split(key, 3 + config.num_layers)
        d = config.d_model
        self.token_embedding = 0.02 * jax.random.normal(k_tok, (config.vocab_size, d))
        self.position_embedding = 0.02 * jax.random.normal(k_pos, (config.context_length, d))
        self.blocks = tuple(_Block(config, k) for k in k_blocks)
        self.norm = eqx.nn.LayerNorm(d)
        out = config.vocab_size if config.output_size is None else config.output_size
        self.head = eqx.nn.Linear(d, out, key=k_head)
        self.config = config

    def forward(self, tokens):
        """Logits and per-layer keys and values of a sequence ``tokens (T,)``: arrays of
        shape ``(T, vocab_size)`` and two of ``(num_layers, num_heads, T, head_dim)``."""
        return _forward(self, _check_sequence(tokens, self.config))

    def __call__(self, tokens):
        """Next-token logits at every position of one sequence.

        Parameters
        ----------
        tokens : Array of shape (T,), int
            ``T <= context_length`` token ids in ``[0, vocab_size)``.

        Returns
        -------
        Array of shape (T, vocab_size)
            Row ``t``: the logits of token ``t + 1`` given ``tokens[:t + 1]`` (width
            ``output_size`` when set).

        Raises
        ------
        ValueError
            For ``T > context_length``, or (concrete tokens) ids outside the vocabulary.
        """
        return self.forward(tokens)[0]


@eqx.filter_jit
def _forward(model: Transformer, tokens):
    t = tokens.shape[0]
    x = model.token_embedding[tokens] + model.position_embedding[:t]
    mask = jnp.tril(jnp.ones((t, t), bool))
    keys, values = [], []
    for block in model.blocks:  # static: the layers
        q, k, v = block.project(x)
        k, v = jnp.swapaxes(k, 0, 1), jnp.swapaxes(v, 0, 1)  # (H, T, dh)
        x = block.finish(x, q, k, v, mask)
        keys.append(k)
        values.append(v)
    logits = jax.vmap(model.head)(jax.vmap(model.norm)(x))
    return logits, jnp.stack(keys), jnp.stack(values)


def _check_sequence(tokens, config: TransformerConfig):
    if isinstance(tokens, jax.core.Tracer):
        if tokens.ndim != 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be a 1-D integer array, got {tokens.shape}")
        arr = tokens
    else:
        arr = np.asarray(tokens)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(
                f"tokens must be a 1-D array of integer token ids, got shape {arr.shape} "
                f"and dtype {arr.dtype}"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= config.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {config.vocab_size}) (the vocabulary), "
                f"got {arr.tolist()}"
            )
    if arr.shape[0] > config.context_length:
        raise ValueError(
            f"sequence of {arr.shape[0]} tokens is longer than the context "
            f"({config.context_length} positions)"
        )
    return jnp.asarray(arr, jnp.int32)


def prefill(model: Transformer, tokens) -> KVCache:
    """The key/value cache after reading a prefix (one full forward pass).

    Parameters
    ----------
    model : Transformer
    tokens : Array of shape (P,), int
        ``0 <= P <= context_length`` tokens (``P`` is static).

    Returns
    -------
    KVCache
        ``position = P``; ``step`` then reads token ``P``.

    Raises
    ------
    ValueError
        For ``P > context_length``, or (concrete tokens) ids outside the vocabulary.
    """
    return _prefill(model, _check_sequence(tokens, model.config))


@eqx.filter_jit
def _prefill(model: Transformer, tokens) -> KVCache:
    cfg = model.config
    p = tokens.shape[0]
    shape = (cfg.num_layers, cfg.num_heads, cfg.context_length, cfg.d_model // cfg.num_heads)
    dtype = model.token_embedding.dtype
    keys, values = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
    if p:
        _, k, v = _forward(model, tokens)
        keys, values = keys.at[:, :, :p].set(k), values.at[:, :, :p].set(v)
    return KVCache(keys, values, jnp.asarray(p, jnp.int32))


def step(model: Transformer, cache: KVCache, token) -> tuple[jax.Array, KVCache]:
    """Read one token at position ``cache.position``: its next-token logits and the cache
    with its keys and values added.

    Equal (to float32 rounding) to row ``position`` of the full forward pass of the
    prefix followed by ``token``.

    Parameters
    ----------
    model : Transformer
    cache : KVCache
    token : int or Array of shape (), int32

    Returns
    -------
    logits : Array of shape (vocab_size,)
    cache : KVCache
        ``position + 1``.

    Raises
    ------
    ValueError
        For a token that is not one integer id or a cache of another shape (also under
        ``jit``: static); for a concrete token id outside ``[0, vocab_size)``; for a
        concrete ``cache.position`` outside ``[0, context_length)`` (a full cache: the
        step would go past the context). Under tracing (``jit``, ``vmap``, ``scan``, as
        in ``generate`` and ``smc``) the values cannot be checked: such an id or position
        gives NaN logits instead (a dead particle in ``smc``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> cfg = TransformerConfig(vocab_size=16, context_length=8, d_model=16, num_heads=2,
    ...                         num_layers=1)
    >>> model = Transformer(cfg, jax.random.key(0))
    >>> logits, cache = step(model, prefill(model, jnp.array([1, 2])), 3)
    >>> bool(jnp.allclose(logits, model(jnp.array([1, 2, 3]))[2], atol=1e-5))
    True
    """
    config = model.config
    cache = _check_position(_check_cache(cache, config), config)
    return _step(model, cache, _check_step_token(token, config.vocab_size))


def _check_step_token(token, vocab_size: int):
    """``token`` as a scalar int32: a ``ValueError`` for another shape or a non-integer
    (a float would be truncated, a bool read as 0 / 1), or for a concrete id outside
    ``[0, vocab_size)``; a traced id outside int32 becomes -1 (outside the vocabulary:
    NaN logits, as for any other traced such id)."""
    if isinstance(token, jax.Array):  # traced or on the device: static checks first
        if token.ndim != 0 or not jnp.issubdtype(token.dtype, jnp.integer):
            raise ValueError(
                f"token must be one integer token id (shape ()), got shape {token.shape} "
                f"and dtype {token.dtype}"
            )
        if not isinstance(token, jax.core.Tracer):
            return jnp.asarray(_check_token_id(token, vocab_size, "token"), jnp.int32)
        if jnp.iinfo(token.dtype).bits > 32 or token.dtype == jnp.uint32:
            info = np.iinfo(np.int32)
            token = jnp.where((token >= 0) & (token <= info.max), token, -1)
        return token.astype(jnp.int32)
    arr = np.asarray(token)
    if arr.ndim != 0 or arr.dtype.kind not in "iu":
        raise ValueError(
            f"token must be one integer token id (shape ()), got {token!r} of shape "
            f"{arr.shape} and dtype {arr.dtype}"
        )
    return jnp.asarray(_check_token_id(arr[()], vocab_size, "token"), jnp.int32)


def _check_position(cache: KVCache, config: TransformerConfig) -> KVCache:
    """``cache`` if its position, when concrete, is in ``[0, context_length)`` (room for
    one more token), else a ``ValueError``; a traced position is returned unchecked (the
    step gives NaN logits there)."""
    position = cache.position
    if isinstance(position, jax.core.Tracer):
        return cache
    value = int(np.asarray(position))
    if not 0 <= value < config.context_length:
        raise ValueError(
            f"cache.position is {value}: a step writes at that position, which must be in "
            f"[0, {config.context_length}) (the context); a full cache cannot read another "
            "token"
        )
    return cache


def _check_cache(cache, config: TransformerConfig) -> KVCache:
    """``cache`` as a ``KVCache`` whose keys and values fit ``config``, else a
    ``ValueError`` (static shapes: checked under ``jit`` too)."""
    shape = (config.num_layers, config.num_heads, config.context_length,
             config.d_model // config.num_heads)  # fmt: skip
    try:
        cache = KVCache(*cache)
        ok = tuple(cache.keys.shape) == shape and tuple(cache.values.shape) == shape
        ok = ok and len(getattr(cache.position, "shape", ())) == 0
    except (TypeError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(
            f"cache must be a KVCache of keys and values of shape {shape} (from prefill "
            f"with this model) and a scalar position, got {cache!r:.200}"
        )
    return cache


@eqx.filter_jit
def _step(model: Transformer, cache: KVCache, token) -> tuple[jax.Array, KVCache]:
    cfg = model.config
    pos = cache.position
    valid = (token >= 0) & (token < cfg.vocab_size) & (pos >= 0) & (pos < cfg.context_length)
    here = jnp.clip(pos, 0, cfg.context_length - 1)
    x = model.token_embedding[jnp.clip(token, 0, cfg.vocab_size - 1)]
    x = (x + model.position_embedding[here])[None]
    mask = (jnp.arange(cfg.context_length) <= here)[None]
    # one in-place update of the stacked cache per layer (no per-layer slices re-stacked:
    # that would copy the whole cache at every token)
    keys, values = cache.keys, cache.values
    zero = jnp.zeros((), here.dtype)  # indices of one dtype (Python ints are int64 with x64)
    for i, block in enumerate(model.blocks):  # static: the layers
        q, k, v = block.project(x)  # k, v: (1, H, dh), written at (layer i, position here)
        at = (jnp.asarray(i, here.dtype), zero, here, zero)
        keys = jax.lax.dynamic_update_slice(keys, k[None].swapaxes(1, 2).astype(keys.dtype), at)
        values = jax.lax.dynamic_update_slice(
            values, v[None].swapaxes(1, 2).astype(values.dtype), at
        )
        x = block.finish(x, q, keys[i], values[i], mask)
    logits = model.head(model.norm(x[0]))
    logits = jnp.where(valid, logits, jnp.nan)
    return logits, KVCache(keys, values, pos + 1)


def _check_token_id(value, vocab_size: int, name: str) -> int:
    """``value`` as a token id in ``[0, vocab_size)``, else a ``ValueError`` (a traced id
    cannot be checked and is returned as it is)."""
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        if isinstance(value, bool | np.bool_) or np.dtype(getattr(value, "dtype", "i")).kind == "b":
            raise TypeError
        index = operator.index(value)  # Python / NumPy / concrete JAX integer scalars
    except TypeError:
        raise ValueError(f"{name} must be a concrete integer token id, got {value!r}") from None
    if not 0 <= index < vocab_size:
        raise ValueError(f"{name} must be in [0, {vocab_size}) (the vocabulary), got {index}")
    return index


def _check_temperature(temperature, positive: bool) -> jax.Array:
    """A finite temperature ``> 0`` (``positive``) or ``>= 0`` as a float32 scalar, else a
    ``ValueError`` (a traced value is only checked to be a real scalar)."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(temperature, jax.core.Tracer):
        if temperature.ndim != 0 or not jnp.issubdtype(temperature.dtype, jnp.number):
            raise ValueError(f"temperature must be a real scalar, got {temperature}")
        return temperature.astype(jnp.float32)
    arr = np.asarray(temperature) if not isinstance(temperature, str | bytes) else None
    if arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf":
        raise ValueError(f"temperature must be a finite real number {bound}, got {temperature!r}")
    value = float(arr)
    if not (0 < value < math.inf if positive else 0 <= value < math.inf):
        raise ValueError(f"temperature must be finite and {bound}, got {temperature}")
    return jnp.asarray(value, jnp.float32)


def _tempered(logits, temperature):
    """``logits / temperature`` up to a constant (the same distribution): shifted by their
    maximum first, so that a tiny temperature gives 0 for the most likely token and very
    negative values or ``-inf`` for the others (the greedy limit) instead of overflowing to
    ``+inf``, which a categorical draw cannot sample from."""
    return (logits - jnp.max(logits)) / temperature


def generate(model: Transformer, key, prompt, max_new_tokens: int, *, eos_id: int,
             temperature: float = 1.0):  # fmt: skip
    """Continue ONE prompt by ancestral sampling (or greedy decoding), with the cache.

    Parameters
    ----------
    model : Transformer
    key : PRNG key
    prompt : Array of shape (P,), int
        ``P >= 1``, static.
    max_new_tokens : int
        ``P + max_new_tokens <= context_length``.
    eos_id : int
        Generation stops after this token; the rest of the buffer holds it too. In
        ``[0, vocab_size)`` (else a ``ValueError``: an id the model never emits would
        silently never stop the generation).
    temperature : float or Array of shape ()
        Finite, ``>= 0``; ``0`` for greedy decoding (may be traced: one compilation serves
        both).

    Returns
    -------
    tokens : Array of shape (P + max_new_tokens,), int32
    length : Array of shape (), int32
        Filled positions (prompt and end token included).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> cfg = TransformerConfig(vocab_size=4, context_length=8, d_model=8, num_heads=2,
    ...                         num_layers=1)
    >>> model = Transformer(cfg, jax.random.key(0))
    >>> tokens, length = generate(model, jax.random.key(1), jnp.array([0, 1]), 5, eos_id=3)
    >>> tokens.shape
    (7,)
    """
    cfg = model.config
    prompt = _check_sequence(prompt, cfg)
    p = prompt.shape[0]
    if p < 1:
        raise ValueError("generate needs a prompt of at least one token")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, numbers.Integral)
        or max_new_tokens < 1
        or p + max_new_tokens > cfg.context_length
    ):
        raise ValueError(
            f"prompt ({p}) + max_new_tokens ({max_new_tokens}) must be at most the context "
            f"({cfg.context_length}), with max_new_tokens >= 1"
        )
    eos_id = _check_token_id(eos_id, cfg.vocab_size, "eos_id")
    temperature = _check_temperature(temperature, positive=False)
    greedy = temperature <= 0

    def body(carry, k):
        cache, last, done = carry
        logits, cache = step(model, cache, last)
        scaled = _tempered(logits, jnp.where(greedy, 1.0, temperature))
        sampled = jax.random.categorical(k, scaled)
        token = jnp.where(greedy, jnp.argmax(logits), sampled).astype(jnp.int32)
        token = jnp.where(done, eos_id, token)
        return (cache, token, done | (token == eos_id)), (token, ~done)

    init = (prefill(model, prompt[:-1]), prompt[-1], jnp.asarray(False))
    _, (new, fresh) = jax.lax.scan(body, init, jax.random.split(key, max_new_tokens))
    tokens = jnp.concatenate([prompt, new])
    return tokens, (p + jnp.sum(fresh)).astype(jnp.int32)


class SteeringLM(eqx.Module):
    """A ``Transformer`` as a cached step function of ``particlekit.steering.smc``:
    ``lm(tokens, length, cache) -> (logits, new_cache)``.

    The protocol of ``smc`` with ``init_cache``: the step function is called with the
    buffer ``tokens (L,)``, the number ``length`` of filled positions and the particle's
    cache, and returns the logits of token ``length``. Here the cache holds the keys and
    values of positions ``0, ..., length - 2``; the call reads the newest token
    ``tokens[length - 1]`` with ``step``. So the initial cache is the prompt without its
    last token (``init_cache``). A cache that does not match ``length`` (it did not follow
    its sequence) gives NaN logits, which ``smc`` counts as a failed particle. A buffer
    longer than the context (``len(prompt) + max_length > context_length``) is a
    ``ValueError`` when ``smc`` checks its arguments.

    Attributes
    ----------
    model : Transformer
    temperature : Array of shape ()
        The logits are divided by it (a traced value: changing it does not recompile).
        Finite and ``> 0`` (checked when concrete; ``inf`` would silently make the
        generator uniform).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> cfg = TransformerConfig(vocab_size=4, context_length=8, d_model=8, num_heads=2,
    ...                         num_layers=1)
    >>> lm = SteeringLM(Transformer(cfg, jax.random.key(0)))
    >>> prompt = jnp.array([0, 1])
    >>> res = pk.steering.smc(jax.random.key(1), lm, lambda t, n: 0.0, num_particles=4,
    ...                       max_length=3, eos_id=3, prompt=prompt,
    ...                       init_cache=lm.init_cache(prompt))
    >>> res.sequences.shape
    (4, 5)
    """

    model: Transformer
    temperature: jax.Array

    def __init__(self, model: Transformer, temperature: float = 1.0):
        self.model = model
        self.temperature = _check_temperature(temperature, positive=True)

    def init_cache(self, prompt) -> KVCache:
        """The cache before the first step: the prompt (``P >= 1`` tokens) without its last
        token. Raises ``ValueError`` for an empty or too long prompt or ids outside the
        vocabulary."""
        prompt = _check_sequence(prompt, self.model.config)
        if prompt.shape[0] < 1:
            raise ValueError("the prompt must have at least one token")
        return prefill(self.model, prompt[:-1])

    def select_cache(self, keep, old: KVCache, new: KVCache) -> KVCache:
        """The cache of a particle that must not move (``keep``): ``old``'s position with
        ``new``'s entries. ``smc`` calls a step for every particle and freezes the finished
        or waiting ones; their write at ``old.position`` is unused (attention reads only
        positions below the position) and is overwritten by the particle's next token, so
        no whole cache is selected or copied."""
        return new._replace(position=jnp.where(keep, old.position, new.position))

    def __call__(self, tokens, length, cache: KVCache):
        context = self.model.config.context_length
        if tokens.shape[0] > context:  # static: raised when smc checks its arguments
            raise ValueError(
                f"len(prompt) + max_length = {tokens.shape[0]} exceeds the model's context "
                f"of {context} positions"
            )
        last = tokens[jnp.clip(length - 1, 0, tokens.shape[0] - 1)]
        logits, new = step(self.model, cache, last)
        consistent = cache.position == length - 1
        return jnp.where(consistent, _tempered(logits, self.temperature), jnp.nan), new


def steering_model(model: Transformer, prompt, temperature: float = 1.0):
    """The step function and initial cache to pass to ``particlekit.steering.smc``.

    Parameters
    ----------
    model : Transformer
    prompt : Array of shape (P,), int
        The same prompt as given to ``smc``; ``P + max_length <= context_length``.
    temperature : float

    Returns
    -------
    step_fn : SteeringLM
    init_cache : KVCache

    Examples
    --------
    >>> import jax, jax.numpy as jnp, particlekit as pk
    >>> cfg = TransformerConfig(vocab_size=4, context_length=8, d_model=8, num_heads=2,
    ...                         num_layers=1)
    >>> prompt = jnp.array([0, 1])
    >>> lm, cache = steering_model(Transformer(cfg, jax.random.key(0)), prompt)
    >>> int(cache.position)
    1
    """
    lm = SteeringLM(model, temperature)
    return lm, lm.init_cache(prompt)
