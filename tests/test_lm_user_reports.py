"""User-style reports on ``particlekit.lm``: the transformer, its cache and sampler, the
learned PRM, the task's verifier and the loaders, on edge input. Each test is one report:
a wrong result, a crash, or a cryptic error that is now a clear ``ValueError``."""

import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.lm import pretrained, task, transformer
from particlekit.lm.prm import ProcessRewardModel
from particlekit.lm.transformer import Transformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent
CFG = TransformerConfig(vocab_size=16, context_length=12, d_model=16, num_heads=2, num_layers=2)
_init = eqx.filter_jit(lambda key: Transformer(CFG, key))


def _buffer(text, size=32):
    return jnp.asarray(task.encode(text.ljust(size, "_"))), len(text)


# ----------------------------------------------------------------------------- transformer
def test_empty_sequence_forward_pass():
    """``model(tokens)`` of an empty sequence (allowed: ``T <= context_length``) raised
    ``ZeroDivisionError: integer modulo by zero`` (a ``reshape(T, H, -1)`` of size 0); so
    did a PRM on an empty buffer."""
    model = _init(jax.random.key(0))
    logits, keys, values = model.forward(jnp.zeros((0,), jnp.int32))
    assert logits.shape == (0, 16) and keys.shape == (2, 2, 0, 8) == values.shape
    prm = ProcessRewardModel(model, start=1)
    assert prm.token_logits(jnp.zeros((0,), jnp.int32)).shape == (0,)
    assert float(prm(jnp.zeros((0,), jnp.int32), 0)) == 0.0
    # token_logits has one verdict per token
    assert prm.token_logits(jnp.array([1, 2, 3])).shape == (3,)


@pytest.mark.parametrize(
    "token", [3.7, True, np.float32(2.0), jnp.array([3]), np.array([[1]])], ids=repr
)
def test_step_rejects_non_integer_or_non_scalar_tokens(token):
    """``step(model, cache, 3.7)`` silently read token 3 and ``True`` token 1; a token of
    shape ``(1,)`` failed deep inside ``LayerNorm``."""
    model = _init(jax.random.key(0))
    cache = transformer.prefill(model, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="token must be one integer token id"):
        transformer.step(model, cache, token)
    with pytest.raises(ValueError, match="token must be one integer token id"):
        jax.jit(lambda c, t: transformer.step(model, c, t))(cache, jnp.asarray(token))


def test_step_huge_token_is_a_value_error_not_overflow():
    """A Python id beyond int32 raised ``OverflowError``; like every concrete id outside the
    vocabulary it is now a ``ValueError`` (traced ids give NaN logits)."""
    model = _init(jax.random.key(0))
    cache = transformer.prefill(model, jnp.array([1, 2]))
    with pytest.raises(ValueError, match=r"token must be in \[0, 16\)"):
        transformer.step(model, cache, 2**40)
    assert bool(jnp.isfinite(transformer.step(model, cache, np.uint8(5))[0]).all())


def test_step_rejects_a_cache_of_another_model():
    """A cache prefilled by a model of another size failed with a shape error inside
    ``dynamic_update_slice``."""
    model = _init(jax.random.key(0))
    other = Transformer(CFG._replace(context_length=8), jax.random.key(1))
    cache = transformer.prefill(other, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="cache must be a KVCache"):
        transformer.step(model, cache, 3)
    with pytest.raises(ValueError, match="cache must be a KVCache"):
        transformer.step(model, (1, 2), 3)


def test_cached_decoding_from_empty_to_full_context_and_batched():
    """Every cached step from an empty cache to the last position equals the full pass,
    one sequence or vmapped over a batch; the step past the context is NaN."""
    model = _init(jax.random.key(2))
    tokens = jax.random.randint(jax.random.key(3), (4, CFG.context_length), 0, 16)

    def cached(seq):
        def body(cache, token):
            logits, cache = transformer.step(model, cache, token)
            return cache, logits

        cache, logits = jax.lax.scan(body, transformer.prefill(model, seq[:0]), seq)
        return logits, transformer.step(model, cache, 0)[0]

    logits, past = jax.jit(jax.vmap(cached))(tokens)
    np.testing.assert_allclose(logits, jax.vmap(model)(tokens), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(logits[1], model(tokens[1]), atol=2e-5, rtol=1e-5)
    assert bool(jnp.isnan(past).all())


def test_tiny_positive_temperature_is_greedy():
    """``generate(..., temperature=2e-38)`` divided the logits into ``+inf`` (float32
    overflow), and a categorical draw over several ``+inf`` picked the first of them, not
    the most likely token: the "near-greedy" samples were garbage. ``SteeringLM`` with
    such a temperature returned ``+inf`` logits, which ``smc`` counts as dead particles."""
    model = jax.tree.map(lambda a: 30 * a if a.ndim == 2 else a, _init(jax.random.key(3)))
    prompt = jnp.array([1, 2, 3])
    greedy, n = transformer.generate(model, jax.random.key(0), prompt, 9, eos_id=15,
                                     temperature=0.0)  # fmt: skip
    for t in (1e-6, 5e-38, 2e-38, 1.2e-38):
        keys = jax.random.split(jax.random.key(1), 4)
        out, m = jax.vmap(lambda k: transformer.generate(  # noqa: B023
            model, k, prompt, 9, eos_id=15, temperature=t))(keys)  # fmt: skip
        np.testing.assert_array_equal(out, jnp.broadcast_to(greedy, out.shape))
    lm, cache = transformer.steering_model(model, prompt, temperature=1e-38)
    logits, _ = lm(jnp.concatenate([prompt, jnp.zeros(5, jnp.int32)]), 3, cache)
    assert not bool(jnp.any(logits == jnp.inf))
    assert int(jnp.argmax(logits)) == int(greedy[3])


@pytest.mark.parametrize("temperature", [None, "1.0", np.array([0.5]), jnp.ones(2), 1j])
def test_temperature_must_be_a_real_scalar(temperature):
    """``None`` raised ``TypeError``, the string ``"1.0"`` was accepted, ``[0.5]`` raised
    ``TypeError``."""
    model = _init(jax.random.key(0))
    with pytest.raises(ValueError, match="temperature must be"):
        transformer.generate(model, jax.random.key(0), jnp.array([1, 2]), 3, eos_id=15,
                             temperature=temperature)  # fmt: skip
    with pytest.raises(ValueError, match="temperature must be"):
        transformer.SteeringLM(model, temperature)


@pytest.mark.parametrize(
    "change",
    [
        dict(num_heads=0),
        dict(d_model=-4),
        dict(vocab_size=16.0),
        dict(num_layers=True),
        dict(output_size=0),
        dict(context_length=None),
    ],  # fmt: skip
    ids=str,
)
def test_bad_config_is_a_value_error(change):
    """``num_heads=0`` raised ``ZeroDivisionError``; a float or negative size failed
    inside ``jax.random``."""
    with pytest.raises(ValueError, match="must be a positive integer"):
        Transformer(CFG._replace(**change), jax.random.key(0))


def test_config_as_dict():
    """A dict of hyperparameters was unpacked as its keys (strings)."""
    model = Transformer(CFG._asdict(), jax.random.key(0))
    assert model.config == CFG


# ----------------------------------------------------------------------------- loaders
def test_shipped_models_load_with_x64_enabled():
    """With ``JAX_ENABLE_X64=1`` both loaders raised ``RuntimeError: ... changed dtype
    from float64 in `like` to float32 on disk``, and a cached step of any Transformer
    failed in ``dynamic_update_slice`` (int64 and int32 indices)."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "from particlekit.lm import pretrained, task, transformer\n"
        "assert jax.config.jax_enable_x64\n"
        "m = pretrained.arithmetic_model()\n"
        "assert m.token_embedding.dtype == jnp.float32\n"
        "p = jnp.asarray(task.encode_prompt([45, 38, 27]))\n"
        "t, n = transformer.generate(m, jax.random.key(0), p, task.MAX_NEW_TOKENS,\n"
        "                            eos_id=task.EOS, temperature=0.0)\n"
        "assert task.decode(t[:n], strip=True) == '45+38+27=83;110;A110$', task.decode(t)\n"
        "prm = pretrained.arithmetic_prm()\n"
        "b = jnp.asarray(task.encode('____12+7+30=19;49;'.ljust(32, '_')))\n"
        "assert -5 < float(prm(b, 18)) < 0\n"
    )
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def test_loader_wrong_path_and_corrupt_file(tmp_path):
    """A missing file is a ``FileNotFoundError`` naming the training command; a file that
    is not the weights of the configuration a ``RuntimeError`` saying so (no network)."""
    with pytest.raises(FileNotFoundError, match="particlekit.lm.train"):
        pretrained._load(tmp_path / "missing.eqx", pretrained.config.GENERATOR)
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(b"not weights")
    with pytest.raises(RuntimeError, match="does not hold the weights"):
        pretrained._load(bad, pretrained.config.GENERATOR)
    small = pretrained.config.GENERATOR._replace(d_model=32)
    with pytest.raises(RuntimeError, match="does not hold the weights"):
        pretrained._load(pretrained.config.GENERATOR_FILE, small)


# ----------------------------------------------------------------------------- PRM
def test_prm_ignores_padding_outside_the_vocabulary_after_length():
    """A concrete call with ``-1`` padding after ``length`` raised "token ids must be in
    [0, 16)" although those entries are ignored (the jitted call, as in ``smc``, gave a
    finite value). Ids outside the vocabulary inside the prefix are still an error."""
    prm = pretrained.arithmetic_prm()
    tokens, n = _buffer("____12+7+30=19;49;")
    padded = tokens.at[n:].set(-1)
    expected = float(prm(tokens, n))
    assert float(prm(padded, n)) == pytest.approx(expected, abs=1e-6)
    assert float(prm.log_probability(padded, n)) == pytest.approx(expected, abs=1e-6)
    assert float(jax.jit(lambda t, m: prm(t, m))(padded, n)) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="token ids must be in"):
        prm(padded, n + 1)


@pytest.mark.parametrize(
    "tokens, length, match",
    [
        (np.zeros((2, 32), np.int32), 18, "1-D array of integer"),
        (np.full(32, 1.5, np.float32), 18, "1-D array of integer"),
        (np.zeros(32, np.int32), 17.9, "length must be an integer scalar"),
        (np.zeros(32, np.int32), np.array([18]), "length must be an integer scalar"),
    ],
)
def test_prm_bad_buffer_is_a_value_error(tokens, length, match):
    """Float tokens were truncated to ids, a float length accepted, a 2-D buffer failed
    with a broadcasting error and a length of shape (1,) gave a reward of shape (1,)."""
    prm = pretrained.arithmetic_prm()
    with pytest.raises(ValueError, match=match):
        prm(tokens, length)


@pytest.mark.parametrize("strength", [True, "2", None, np.array([2.0])], ids=repr)
def test_prm_strength_must_be_a_positive_number(strength):
    """``"2"`` and ``True`` were accepted, ``None`` and ``[2.0]`` raised ``TypeError``."""
    with pytest.raises(ValueError, match="strength must be a positive finite number"):
        pretrained.arithmetic_prm(strength)


# ----------------------------------------------------------------------------- task
@pytest.mark.parametrize(
    "text", ["12+7+30=19;49;A49$5", "12+7+30=19;49;A49$_", "12+7+30=19;49;A49$1;"]
)
def test_token_after_the_answer_is_wrong(text):
    """``prefix_correct`` (and the verifier reward) called a prefix right when a token
    followed the answer line's end token without ending a step: "no step after the
    answer" was only checked for completed steps."""
    tokens, n = _buffer(text)
    assert not bool(task.prefix_correct(tokens, n))
    assert float(task.verifier_log_reward(tokens, n)) == -np.inf
    assert bool(task.prefix_correct(tokens, len("12+7+30=19;49;A49$")))


def test_partial_steps_may_be_traced():
    """``jax.jit(task.prefix_correct)(tokens, n, True)`` raised
    ``TracerBoolConversionError``."""
    tokens, n = _buffer("12+7+30=19;5")
    fn = jax.jit(task.prefix_correct)
    assert bool(fn(tokens, n, False)) and not bool(fn(tokens, n, True))


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_verifier_on_tiny_buffers(size):
    """Buffers shorter than 4 tokens (the verifier's digit window) failed with
    "incompatible shapes for broadcasting"; ``final_answer`` of an empty one with "zero-size
    array to reduction operation"."""
    tokens = jnp.asarray(task.encode("12+"[:size]))
    correct, completed = task.step_correct(tokens, size)
    assert correct.shape == (task.MAX_STEPS,) and int(completed.sum()) == 0
    assert not bool(task.prefix_correct(tokens, size))
    assert not bool(task.answer_correct(tokens, size))
    answer, valid = task.final_answer(tokens, size)
    assert int(answer) == 0 and not bool(valid)


@pytest.mark.parametrize(
    "fn",
    [
        task.step_correct,
        task.prefix_correct,
        task.answer_correct,
        task.final_answer,
        task.process_reward,
        task.verifier_log_reward,
    ],  # fmt: skip
    ids=lambda f: f.__name__,
)
def test_verifier_bad_buffer_is_a_value_error(fn):
    """A 2-D buffer failed with a broadcasting error, float tokens were truncated, a float
    length raised "Indexer must have integer or boolean type" and a length of shape (1,)
    returned an array of shape (1,)."""
    tokens, n = _buffer("12+7+30=19;49;A49$")
    for bad_tokens, bad_length, match in [
        (jnp.stack([tokens, tokens]), n, "1-D array of integer"),
        (tokens.astype(jnp.float32), n, "1-D array of integer"),
        (tokens, float(n), "length must be an integer scalar"),
        (tokens, jnp.array([n]), "length must be an integer scalar"),
    ]:
        with pytest.raises(ValueError, match=match):
            fn(bad_tokens, bad_length)
    # int64 / uint8 buffers and NumPy integer lengths are fine
    fn(np.asarray(tokens, np.int64), np.int64(n))
    fn(np.asarray(tokens, np.uint8), n)


def test_is_heldout_of_a_three_operand_problem():
    """``is_heldout([12, 7, 30])`` failed with a broadcasting error: it needed the
    zero-padded ``(4,)`` operands of ``Problems``."""
    for ops in ([12, 7, 30], [45, 38, 27], [3, 1, 0]):
        assert bool(task.is_heldout(ops)) == bool(task.is_heldout(ops + [0]))
    held = task.heldout_problems(8)
    three = held.operands[held.num_terms == 3][:, :3]
    assert bool(task.is_heldout(three).all())
    with pytest.raises(ValueError, match="last axis of 3 to 4"):
        task.is_heldout([1, 2])


@pytest.mark.parametrize(
    "operands, num_terms",
    [([1, 2, 3, 4], 5), ([1, 2, 3, 4], 2), ([100, 2, 3, 0], 3), ([1, 2, 3], 3)],
)
def test_problem_tokens_checks_concrete_input(operands, num_terms):
    """``problem_tokens`` of 5 or 2 terms gave a prompt without ``=``, an operand of 100
    was written as ``00``: silently malformed."""
    with pytest.raises(ValueError):
        task.problem_tokens(jnp.asarray(operands), num_terms)


@pytest.mark.parametrize("text", [123, ["1", "2"], b"12"], ids=repr)
def test_encode_needs_a_string(text):
    """``encode(b"12")`` reported "characters [49, 50] are not in the vocabulary",
    ``encode(123)`` a ``TypeError``, a list of characters was accepted."""
    with pytest.raises(ValueError, match="must be a str"):
        task.encode(text)


def test_steering_still_runs_end_to_end():
    """The fixed pieces together: the shipped generator steered by the PRM at token and
    step level, with the verifier judging the result."""
    model, prm = pretrained.arithmetic_model(), pretrained.arithmetic_prm()
    prompt = jnp.asarray(task.encode_prompt([12, 7, 30]))
    lm, cache = transformer.steering_model(model, prompt)
    res = pk.steering.smc(jax.random.key(0), lm, prm, num_particles=8,
                          max_length=task.MAX_NEW_TOKENS, eos_id=task.EOS, prompt=prompt,
                          init_cache=cache, separator_id=task.SEP,
                          max_steps=task.MAX_STEPS + 2)  # fmt: skip
    assert int(res.num_nonfinite.sum()) == 0 and not bool(res.failed)
    right = jax.vmap(task.answer_correct)(res.sequences, res.lengths)
    assert right.shape == (8,)
