"""A synthetic multi-step reasoning task: adding 3 or 4 numbers, one running sum per step.

A problem ``12+7+30=`` is solved as the running partial sums, one step per sum, each ended
by the step separator ``;``, then the answer line ``A`` + total and the end token ``$``::

    12+7+30=19;49;A49$

Everything is characters of a 16-token vocabulary (``0``-``9``, ``+``, ``=``, ``;``, ``A``,
the end token ``$`` and the padding ``_``). Prompts are left-padded with ``_`` to the fixed
length ``PROMPT_LENGTH``, so every prompt has the same shape and a batch of problems shares
one compilation.

The problem space is split once and for all by a fixed hash of the operands: about one
problem in ten is *held out* (``split="heldout"``) and never drawn for training
(``split="train"``).

The verifier (``step_correct``, ``prefix_correct``, ``answer_correct``,
``process_reward``, ``verifier_log_reward``) works on the buffer that sequence steering
passes to a reward function, ``tokens`` of shape ``(L,)`` int32 holding the prompt followed
by a partial solution in its first ``length`` entries; it is written with ``jax.numpy``
only, so it can be jitted and vmapped as a reward inside ``particlekit.steering.smc``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ANSWER",
    "CHARACTERS",
    "CONTEXT_LENGTH",
    "EOS",
    "EQUALS",
    "MAX_NEW_TOKENS",
    "MAX_OPERAND",
    "MAX_STEPS",
    "MAX_TERMS",
    "MIN_TERMS",
    "PAD",
    "PLUS",
    "PROMPT_LENGTH",
    "Problems",
    "SEP",
    "SOLUTION_LENGTH",
    "VOCAB_SIZE",
    "answer_correct",
    "check_tokens",
    "decode",
    "encode",
    "encode_prompt",
    "final_answer",
    "heldout_problems",
    "is_heldout",
    "prefix_correct",
    "problem_text",
    "problem_tokens",
    "process_reward",
    "sample_problems",
    "step_correct",
    "verifier_log_reward",
]

#: The characters of the vocabulary; token ``i`` is ``CHARACTERS[i]``.
CHARACTERS = "0123456789+=;A$_"
VOCAB_SIZE = len(CHARACTERS)
PLUS, EQUALS, SEP, ANSWER, EOS, PAD = (CHARACTERS.index(c) for c in "+=;A$_")

MIN_TERMS, MAX_TERMS = 3, 4
#: Operands are drawn uniformly from ``0, ..., MAX_OPERAND``.
MAX_OPERAND = 99
#: ``"99+99+99+99="``: every prompt is left-padded with ``_`` to this length.
PROMPT_LENGTH = MAX_TERMS * (len(str(MAX_OPERAND)) + 1)
_MAX_SUM_DIGITS = len(str(MAX_TERMS * MAX_OPERAND))
#: ``"198;297;396;A396$"``: the longest solution (end token included).
SOLUTION_LENGTH = (MAX_TERMS - 1) * (_MAX_SUM_DIGITS + 1) + 1 + _MAX_SUM_DIGITS + 1
#: Number of steps of the longest solution: the partial sums and the answer line.
MAX_STEPS = MAX_TERMS
#: The model's context: the prompt and up to ``MAX_NEW_TOKENS`` generated tokens.
CONTEXT_LENGTH = 32
MAX_NEW_TOKENS = CONTEXT_LENGTH - PROMPT_LENGTH

_HASH_WEIGHTS = (7, 11, 13, 17)  # 7 * 3 = 21: the weight of the first operand is invertible mod 10


class Problems(NamedTuple):
    """A batch of addition problems.

    Attributes
    ----------
    operands : Array of shape (N, MAX_TERMS), int32
        The numbers to add; entries at and after ``num_terms`` are 0.
    num_terms : Array of shape (N,), int32
        ``MIN_TERMS`` or ``MAX_TERMS``.
    """

    operands: jax.Array
    num_terms: jax.Array


# ----------------------------------------------------------------------------- tokenizer
def encode(text: str) -> np.ndarray:
    """Token ids of a string of vocabulary characters.

    Parameters
    ----------
    text : str
        Characters of ``CHARACTERS`` only.

    Returns
    -------
    Array of shape (len(text),), int32

    Raises
    ------
    ValueError
        For a character outside the vocabulary.

    Examples
    --------
    >>> encode("12+7=").tolist()
    [1, 2, 10, 7, 11]
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str of vocabulary characters, got {text!r}")
    bad = sorted(set(text) - set(CHARACTERS))
    if bad:
        raise ValueError(f"characters {bad} are not in the vocabulary {CHARACTERS!r}")
    return np.array([CHARACTERS.index(c) for c in text], dtype=np.int32)


def check_tokens(tokens, name: str = "tokens") -> np.ndarray:
    """Concrete token ids as a 1-D int32 array; ``ValueError`` for another shape or dtype,
    or ids outside ``[0, VOCAB_SIZE)``."""
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"{name} must be a 1-D array of integer token ids, got shape {arr.shape} "
            f"and dtype {arr.dtype}"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(f"{name} must be token ids in [0, {VOCAB_SIZE}), got {arr.tolist()}")
    return arr.astype(np.int32)


def decode(tokens, *, strip: bool = False) -> str:
    """The string of token ids.

    Parameters
    ----------
    tokens : array of shape (T,), int
    strip : bool
        Drop the padding ``_`` and everything after the first end token ``$`` (which is
        kept).

    Raises
    ------
    ValueError
        For ids outside ``[0, VOCAB_SIZE)``.

    Examples
    --------
    >>> decode(encode("__12+7=19;$$"), strip=True)
    '12+7=19;$'
    """
    text = "".join(CHARACTERS[i] for i in check_tokens(tokens).tolist())
    if strip:
        end = text.find("$")
        text = (text if end < 0 else text[: end + 1]).replace("_", "")
    return text


def problem_text(operands) -> tuple[str, str]:
    """The prompt and the reference solution of a problem, as strings.

    Parameters
    ----------
    operands : sequence of int
        ``MIN_TERMS`` to ``MAX_TERMS`` numbers in ``[0, MAX_OPERAND]``.

    Returns
    -------
    (prompt, solution) : tuple of str

    Examples
    --------
    >>> problem_text([12, 7, 30])
    ('12+7+30=', '19;49;A49$')
    """
    ops = _check_operands(operands)
    sums = np.cumsum(ops)[1:].tolist()
    prompt = "+".join(str(a) for a in ops) + "="
    return prompt, "".join(f"{s};" for s in sums) + f"A{sums[-1]}$"


def encode_prompt(operands) -> np.ndarray:
    """The prompt of a problem as token ids, left-padded with ``PAD`` to ``PROMPT_LENGTH``.

    Examples
    --------
    >>> decode(encode_prompt([12, 7, 30]))
    '____12+7+30='
    """
    prompt, _ = problem_text(operands)
    return np.concatenate([np.full(PROMPT_LENGTH - len(prompt), PAD, np.int32), encode(prompt)])


def _check_operands(operands) -> list[int]:
    ops = np.asarray(operands)
    if ops.ndim != 1 or not np.issubdtype(ops.dtype, np.integer):
        raise ValueError(f"operands must be a 1-D sequence of integers, got {operands!r}")
    if not MIN_TERMS <= ops.size <= MAX_TERMS:
        raise ValueError(f"a problem has {MIN_TERMS} to {MAX_TERMS} operands, got {ops.size}")
    if ops.min() < 0 or ops.max() > MAX_OPERAND:
        raise ValueError(f"operands must be in [0, {MAX_OPERAND}], got {ops.tolist()}")
    return ops.astype(int).tolist()


# ----------------------------------------------------------------------------- problems
def _hash(operands):
    return jnp.sum(operands * jnp.asarray(_HASH_WEIGHTS, jnp.int32), axis=-1) % 10


def is_heldout(operands) -> jax.Array:
    """Whether problems belong to the held-out split (about one in ten of all problems).

    Parameters
    ----------
    operands : Array of shape (..., MAX_TERMS), int
        Zero-padded operands, as in ``Problems``; a last axis of ``MIN_TERMS`` to
        ``MAX_TERMS`` entries is zero-padded (a zero operand does not change the hash).

    Returns
    -------
    Array of shape (...,), bool

    Examples
    --------
    >>> bool(is_heldout([12, 7, 30])) == bool(is_heldout([12, 7, 30, 0]))
    True
    """
    operands = jnp.asarray(operands, jnp.int32)
    if operands.ndim < 1 or not MIN_TERMS <= operands.shape[-1] <= MAX_TERMS:
        raise ValueError(
            f"operands must have a last axis of {MIN_TERMS} to {MAX_TERMS} entries, got "
            f"shape {operands.shape}"
        )
    pad = [(0, 0)] * (operands.ndim - 1) + [(0, MAX_TERMS - operands.shape[-1])]
    return _hash(jnp.pad(operands, pad)) == 0


def sample_problems(key, num: int, split: str = "train") -> Problems:
    """Draw problems uniformly from one split (jit-able for a static ``num``).

    Half of the problems have 3 operands, half 4. The ones digit of the first operand is
    drawn among the values that keep the problem in ``split``, which makes the draw uniform
    over that split.

    Parameters
    ----------
    key : PRNG key
    num : int
        Number of problems.
    split : {"train", "heldout"}

    Returns
    -------
    Problems
        ``operands (num, MAX_TERMS)``, ``num_terms (num,)``.

    Examples
    --------
    >>> import jax
    >>> probs = sample_problems(jax.random.key(0), 5, split="heldout")
    >>> bool(is_heldout(probs.operands).all())
    True
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    return _sample_problems(key, int(num), split)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sample_problems(key, num: int, split: str) -> Problems:
    k_terms, k_ops, k_digit = jax.random.split(key, 3)
    num_terms = jax.random.randint(k_terms, (num,), MIN_TERMS, MAX_TERMS + 1, jnp.int32)
    ops = jax.random.randint(k_ops, (num, MAX_TERMS), 0, MAX_OPERAND + 1, jnp.int32)
    ops = jnp.where(jnp.arange(MAX_TERMS) < num_terms[:, None], ops, 0)
    # the ones digit of the first operand that puts the problem in the held-out split:
    # 7 d + rest = 0 (mod 10)  <=>  d = -3 rest (mod 10)
    rest = (_hash(ops) - 7 * (ops[:, 0] % 10)) % 10
    bad = (-3 * rest) % 10
    if split == "heldout":
        digit = bad
    else:
        digit = (bad + jax.random.randint(k_digit, (num,), 1, 10, jnp.int32)) % 10
    first = 10 * (ops[:, 0] // 10) + digit
    return Problems(ops.at[:, 0].set(first), num_terms)


def heldout_problems(num: int, seed: int = 1) -> Problems:
    """A fixed set of ``num`` held-out problems (never drawn for training).

    Examples
    --------
    >>> probs = heldout_problems(3)
    >>> probs.operands.shape, probs.num_terms.shape
    ((3, 4), (3,))
    """
    return sample_problems(jax.random.key(seed), num, split="heldout")


def _digits(x, width: int):
    """Decimal digits of ``x >= 0`` (most significant first, ``width`` slots) and which of
    the slots are used (no leading zeros; ``0`` is one digit)."""
    powers = 10 ** jnp.arange(width - 1, -1, -1)
    digits = (x // powers) % 10
    num_digits = _num_digits(x)
    return digits.astype(jnp.int32), jnp.arange(width) >= width - num_digits


def _num_digits(x):
    return 1 + (x >= 10).astype(jnp.int32) + (x >= 100).astype(jnp.int32)


def _compact(tokens, keep, size: int, right: bool):
    """The kept tokens in order, packed to the left (or right) of ``size`` slots of PAD."""
    index = jnp.cumsum(keep) - 1
    if right:
        index = index + size - jnp.sum(keep)
    index = jnp.where(keep, index, size)
    return jnp.full((size,), PAD, jnp.int32).at[index].set(tokens, mode="drop")


def problem_tokens(operands, num_terms):
    """The prompt and reference solution of ONE problem as fixed-shape token arrays
    (vmap it over a ``Problems`` batch).

    Parameters
    ----------
    operands : Array of shape (MAX_TERMS,), int32
    num_terms : Array of shape (), int32

    Returns
    -------
    prompt : Array of shape (PROMPT_LENGTH,), int32
        Left-padded with ``PAD``.
    solution : Array of shape (SOLUTION_LENGTH,), int32
        The reference solution, end token included, right-padded with ``PAD``.
    solution_length : Array of shape (), int32

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> p, s, n = problem_tokens(jnp.array([12, 7, 30, 0]), 3)
    >>> decode(p) + decode(s), int(n)
    ('____12+7+30=19;49;A49$_______', 10)
    """
    if not isinstance(operands, jax.core.Tracer) and not isinstance(num_terms, jax.core.Tracer):
        # concrete: the checks of ``problem_text`` (traced values cannot be checked; out of
        # range they give a malformed prompt)
        n = np.asarray(num_terms)
        if n.ndim or n.dtype.kind not in "iu" or not MIN_TERMS <= int(n) <= MAX_TERMS:
            raise ValueError(f"num_terms must be {MIN_TERMS} to {MAX_TERMS}, got {num_terms!r}")
        ops = np.asarray(operands)
        if ops.shape != (MAX_TERMS,):
            raise ValueError(f"operands must have shape ({MAX_TERMS},), got {ops.shape}")
        _check_operands(ops[: int(n)])
    operands = jnp.asarray(operands, jnp.int32)
    num_terms = jnp.asarray(num_terms, jnp.int32)
    pieces, keep = [], []
    op_digits = len(str(MAX_OPERAND))
    for i in range(MAX_TERMS):  # static: builds the fixed layout, traced once
        digits, used = _digits(operands[i], op_digits)
        present = i < num_terms
        pieces += [digits, jnp.where(i == num_terms - 1, EQUALS, PLUS)[None]]
        keep += [used & present, present[None]]
    prompt = _compact(jnp.concatenate(pieces), jnp.concatenate(keep), PROMPT_LENGTH, True)

    sums = jnp.cumsum(operands)
    pieces, keep = [], []
    for j in range(MAX_TERMS - 1):
        digits, used = _digits(sums[j + 1], _MAX_SUM_DIGITS)
        present = j + 1 < num_terms
        pieces += [digits, jnp.array([SEP])]
        keep += [used & present, present[None]]
    digits, used = _digits(sums[-1], _MAX_SUM_DIGITS)
    pieces += [jnp.array([ANSWER]), digits, jnp.array([EOS])]
    keep += [jnp.array([True]), used, jnp.array([True])]
    keep = jnp.concatenate(keep)
    solution = _compact(jnp.concatenate(pieces), keep, SOLUTION_LENGTH, False)
    return prompt, solution, jnp.sum(keep).astype(jnp.int32)


# ----------------------------------------------------------------------------- verifier
class _Parse(NamedTuple):
    terminal: jax.Array  # (L,) bool: a completed step ends here (';' or '$' after '=')
    step_index: jax.Array  # (L,) int32: index of the step this position belongs to
    step_ok: jax.Array  # (L,) bool: at a terminal, that step is right (format and value)
    token_ok: jax.Array  # (L,) bool: the step written so far is a prefix of the right one
    answer_ok: jax.Array  # (L,) bool: an answer line "A<total>$" ends here
    has_prompt: jax.Array  # () bool: one '=' in the prefix, after 3 or 4 operands
    past_answer: jax.Array  # (L,) bool: a filled position after the answer step's end


def _shift(x, k: int, fill):
    """``x[t - k]`` at position ``t`` (``fill`` before the start)."""
    k = min(k, x.shape[0])  # a buffer shorter than the shift: all fill
    return jnp.concatenate([jnp.full((k,), fill, x.dtype), x[: x.shape[0] - k]])


def _check_buffer(tokens, length) -> tuple[jax.Array, jax.Array]:
    """``tokens`` as a 1-D int32 array and ``length`` as an int32 scalar, else a
    ``ValueError`` (shapes and dtypes are static: checked under ``jit`` too). Ids outside
    the vocabulary are not errors: such a prefix is wrong."""
    arr = tokens if isinstance(tokens, jax.Array) else np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and not jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(
            f"tokens must be a 1-D array of integer token ids, got shape {arr.shape} and "
            f"dtype {arr.dtype}"
        )
    n = length if isinstance(length, jax.Array) else np.asarray(length)
    if n.ndim != 0 or not jnp.issubdtype(n.dtype, jnp.integer):
        raise ValueError(f"length must be an integer scalar, got {length!r}")
    return jnp.asarray(arr, jnp.int32), jnp.asarray(n, jnp.int32)


def _parse(tokens, length) -> _Parse:
    tokens, length = _check_buffer(tokens, length)
    if tokens.shape[0] == 0:  # nothing filled: parsed as one padding token
        tokens = jnp.full((1,), PAD, jnp.int32)
    return _parse_jit(tokens, length)


@jax.jit
def _parse_jit(tokens, length) -> _Parse:
    size = tokens.shape[0]
    pos = jnp.arange(size)
    tok = jnp.where(pos < length, tokens, PAD)
    is_digit = (tok >= 0) & (tok <= 9)
    digit = jnp.where(is_digit, tok, 0)

    # the number whose last digit is at t (up to _MAX_SUM_DIGITS + 1 digits are read, so
    # that a too-long number is seen as one), and the one whose last digit is at t - 1
    value_here = jnp.zeros((size,), jnp.int32)
    digits_here = jnp.zeros((size,), jnp.int32)
    run = jnp.ones((size,), bool)
    for k in range(_MAX_SUM_DIGITS + 1):  # static, 4 shifts
        run = run & _shift(is_digit, k, False)
        value_here = value_here + jnp.where(run, _shift(digit, k, 0) * 10**k, 0)
        digits_here = digits_here + run.astype(jnp.int32)
    value, num_digits = _shift(value_here, 1, 0), _shift(digits_here, 1, 0)

    is_eq = tok == EQUALS
    eq_pos = jnp.argmax(is_eq)
    before = pos <= eq_pos
    # operands: numbers ended by '+' or '=' up to the first '='
    op_end = before & ((tok == PLUS) | is_eq) & jnp.any(is_eq)
    op_index = jnp.cumsum(op_end) - 1
    onehot = (op_index[None, :] == jnp.arange(MAX_TERMS)[:, None]) & op_end[None, :]
    operands = jnp.sum(jnp.where(onehot, value[None, :], 0), axis=1)
    num_terms = jnp.sum(op_end).astype(jnp.int32)
    well_formed_op = jnp.all(~op_end | ((num_digits >= 1) & (num_digits <= 2)))
    has_prompt = (
        jnp.any(is_eq) & (num_terms >= MIN_TERMS) & (num_terms <= MAX_TERMS) & well_formed_op
    )

    # steps: segments after '=' ended by ';' or the end token
    after = (pos > eq_pos) & (pos < length) & jnp.any(is_eq)
    terminal = after & ((tok == SEP) | (tok == EOS))
    boundary = terminal | (is_eq & (pos == eq_pos))
    last_boundary = jax.lax.cummax(jnp.where(boundary, pos, -1))
    previous = _shift(last_boundary, 1, -1)  # the boundary before t
    content = pos - previous - 1  # index of position t in its step
    step_index = (jnp.cumsum(terminal) - terminal).astype(jnp.int32)
    first = tok[jnp.clip(previous + 1, 0, size - 1)]

    sums = jnp.cumsum(operands)
    total = sums[-1]
    is_sum_step = step_index < num_terms - 1
    is_answer_step = step_index == num_terms - 1
    expected = jnp.where(is_sum_step, sums[jnp.clip(step_index + 1, 0, MAX_TERMS - 1)], total)
    width = _num_digits(expected)
    value_ok = (value == expected) & (num_digits == width)
    sum_form = (tok == SEP) & (num_digits >= 1) & (num_digits == content)
    answer_form = (tok == EOS) & (first == ANSWER) & (num_digits >= 1)
    answer_form = answer_form & (num_digits == content - 1)
    step_ok = value_ok & ((is_sum_step & sum_form) | (is_answer_step & answer_form))
    answer_ok = answer_form & (value == total) & (num_digits == _num_digits(total))

    # the step in progress: its digits so far are the leading digits of the right value
    leading = expected // 10 ** jnp.clip(width - digits_here, 0, _MAX_SUM_DIGITS)
    digits_so_far = jnp.where(is_answer_step, content, content + 1)
    digit_ok = is_digit & (digits_here == digits_so_far) & (digits_here <= width)
    digit_ok = digit_ok & (value_here == leading) & (is_sum_step | (first == ANSWER))
    letter_ok = (tok == ANSWER) & (content == 0) & is_answer_step
    token_ok = ~after | jnp.where(terminal, step_ok, digit_ok | letter_ok)
    past_answer = after & (step_index >= num_terms)
    return _Parse(terminal, step_index, step_ok & has_prompt, token_ok,
                  answer_ok & has_prompt, has_prompt, past_answer)  # fmt: skip


def step_correct(tokens, length) -> tuple[jax.Array, jax.Array]:
    """Check each completed step of a partial solution exactly.

    A step is completed when its terminator is in the prefix: the separator ``;`` for a
    partial sum, the end token ``$`` for the answer line. Step ``j < n - 1`` (``n``
    operands) must be the ``j + 2``-th running sum written without leading zeros; step
    ``n - 1`` must be ``A`` + the total; a step after it is wrong (reported by
    ``prefix_correct``).

    Parameters
    ----------
    tokens : Array of shape (L,), int32
        The prompt (optionally left-padded with ``PAD``) followed by the partial solution.
    length : int or Array of shape ()
        Number of filled positions; the rest of ``tokens`` is ignored.

    Returns
    -------
    correct : Array of shape (MAX_STEPS,), int32
        1 where step ``j`` is completed and right, else 0.
    completed : Array of shape (MAX_STEPS,), int32
        1 where step ``j`` is completed.

    Examples
    --------
    >>> import numpy as np
    >>> t = encode("12+7+30=19;48;")
    >>> correct, completed = step_correct(t, len(t))
    >>> np.asarray(correct).tolist(), np.asarray(completed).tolist()
    ([1, 0, 0, 0], [1, 1, 0, 0])
    """
    p = _parse(tokens, length)
    slot = p.step_index[None, :] == jnp.arange(MAX_STEPS)[:, None]
    completed = jnp.any(slot & p.terminal[None, :], axis=1)
    correct = jnp.any(slot & p.terminal[None, :] & p.step_ok[None, :], axis=1)
    return correct.astype(jnp.int32), completed.astype(jnp.int32)


def prefix_correct(tokens, length, partial_steps: bool = False) -> jax.Array:
    """Whether a partial solution is right so far: a well-formed prompt, every completed
    step right, no step after the answer, and not cut off (a buffer filled to its end
    must end with the end token).

    Parameters
    ----------
    tokens : Array of shape (L,), int32
    length : int or Array of shape ()
    partial_steps : bool
        Also check the step being written: its characters so far must begin the right
        step (a token-level verdict: ``19;5`` is already wrong when ``49`` is right).

    Returns
    -------
    Array of shape (), bool

    Examples
    --------
    >>> t = encode("12+7+30=19;4___")  # the first 12 positions are filled
    >>> bool(prefix_correct(t, 12)), bool(prefix_correct(t, len(t)))
    (True, False)
    >>> bool(prefix_correct(encode("12+7+30=19;49;A48$"), 18))
    False
    >>> t = encode("12+7+30=19;5___")
    >>> bool(prefix_correct(t, 12)), bool(prefix_correct(t, 12, partial_steps=True))
    (True, False)
    """
    tokens, length = _check_buffer(tokens, length)
    p = _parse(tokens, length)
    size = tokens.shape[0]
    last = tokens[jnp.clip(length - 1, 0, max(size - 1, 0))] if size else EOS
    cut = (length >= size) & (last != EOS)
    # a token after the answer line's end token starts a step after the answer: wrong,
    # completed or not
    ok = p.has_prompt & jnp.all(~p.terminal | p.step_ok) & ~jnp.any(p.past_answer) & ~cut
    if isinstance(partial_steps, bool | np.bool_):
        return ok & jnp.all(p.token_ok) if partial_steps else ok
    return ok & (jnp.all(p.token_ok) | ~jnp.asarray(partial_steps, bool))  # traced flag


def answer_correct(tokens, length) -> jax.Array:
    """The outcome check: the sequence ends (``tokens[length - 1]`` is the end token) with
    the answer line ``A<total>``, whatever the steps before it.

    Returns
    -------
    Array of shape (), bool

    Examples
    --------
    >>> bool(answer_correct(encode("12+7+30=19;48;A49$"), 18))
    True
    """
    tokens, length = _check_buffer(tokens, length)
    if tokens.shape[0] == 0:
        return jnp.asarray(False)
    p = _parse(tokens, length)
    end = jnp.clip(length - 1, 0, tokens.shape[0] - 1)
    return p.terminal[end] & p.answer_ok[end] & (length > 0)


def final_answer(tokens, length) -> tuple[jax.Array, jax.Array]:
    """The number on the answer line of a finished sequence, right or wrong: the digits
    between ``A`` (which must start a step) and the end token at ``length - 1``.

    Returns
    -------
    answer : Array of shape (), int32
        The answer (0 when there is none).
    valid : Array of shape (), bool
        The sequence ends with a well-formed answer line ``A<digits>$``.

    Examples
    --------
    >>> [int(a) for a in final_answer(encode("12+7+30=19;48;A48$"), 18)]
    [48, 1]
    >>> bool(final_answer(encode("12+7+30=19;48;"), 14)[1])
    False
    """
    tokens, length = _check_buffer(tokens, length)
    size = tokens.shape[0]
    if size == 0:
        return jnp.asarray(0, jnp.int32), jnp.asarray(False)
    pos = jnp.arange(size)
    end = jnp.clip(length - 1, 0, size - 1)
    is_answer = (tokens == ANSWER) & (pos < end)
    start = jnp.max(jnp.where(is_answer, pos, -1))
    before = tokens[jnp.clip(start - 1, 0, size - 1)]
    digits = (pos > start) & (pos < end)
    is_digit = (tokens >= 0) & (tokens <= 9)
    count = jnp.sum(digits)
    power = jnp.where(digits, end - 1 - pos, 0)
    answer = jnp.sum(jnp.where(digits, tokens * 10**power, 0)).astype(jnp.int32)
    valid = (
        (length > 0)
        & (tokens[end] == EOS)
        & (start > 0)
        & ((before == SEP) | (before == EQUALS))
        & jnp.all(~digits | is_digit)
        & (count >= 1)
        & (count <= _MAX_SUM_DIGITS)
    )
    return jnp.where(valid, answer, 0), valid


def process_reward(tokens, length) -> jax.Array:
    """The exact process reward in ``{0, 1}`` (float32): 1 when the prefix is right so far
    (``prefix_correct``).

    Examples
    --------
    >>> float(process_reward(encode("12+7+30=19;49;__"), 14))
    1.0
    """
    return prefix_correct(tokens, length).astype(jnp.float32)


def verifier_log_reward(tokens, length) -> jax.Array:
    """``log process_reward``: 0 for a prefix that is right so far, ``-inf`` otherwise.
    A ``reward_fn`` for ``particlekit.steering.smc``: the exact variant then targets the
    generator conditioned on a fully right solution.

    Examples
    --------
    >>> float(verifier_log_reward(encode("12+7+30=19;50;__"), 14))
    -inf
    """
    return jnp.where(prefix_correct(tokens, length), 0.0, -jnp.inf).astype(jnp.float32)
