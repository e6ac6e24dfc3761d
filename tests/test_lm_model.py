"""The arithmetic task, its verifier, the cached transformer and the shipped models
(``particlekit.lm``), and steering them with ``pk.steering.smc``."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.lm import pretrained, task, train, transformer
from particlekit.lm.transformer import Transformer, TransformerConfig

SMALL = TransformerConfig(vocab_size=16, context_length=12, d_model=32, num_heads=4, num_layers=2)
# initialised under jit: one compilation instead of one dispatch per random draw
_small = eqx.filter_jit(lambda key: Transformer(SMALL, key))


def _buffer(text, size=32):
    """Token buffer of ``size`` with ``text`` in front (PAD after it) and its length."""
    ids = task.encode(text)
    return jnp.asarray(np.concatenate([ids, np.full(size - ids.size, task.PAD, np.int32)])), len(
        text
    )


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip():
    text = task.CHARACTERS + "12+7+30=19;49;A49$"
    ids = task.encode(text)
    assert ids.dtype == np.int32 and task.decode(ids) == text
    assert task.VOCAB_SIZE == 16 and len({task.PLUS, task.EQUALS, task.SEP, task.EOS}) == 4
    assert task.decode(task.encode("__3+4+5=7;12;A12$$$"), strip=True) == "3+4+5=7;12;A12$"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        task.encode("1*2")
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        task.decode([1, 16])
    with pytest.raises(ValueError, match="operands"):
        task.encode_prompt([1, 2])
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        task.encode_prompt([1, 2, 100])


def test_problems_and_splits():
    probs = task.sample_problems(jax.random.key(0), 200, split="train")
    prompts, solutions, lengths = jax.jit(jax.vmap(task.problem_tokens))(*probs)
    assert prompts.shape == (200, task.PROMPT_LENGTH)
    assert solutions.shape == (200, task.SOLUTION_LENGTH)
    for i in range(200):
        ops = np.asarray(probs.operands[i, : int(probs.num_terms[i])])
        prompt, solution = task.problem_text(ops)
        assert task.decode(prompts[i]) == prompt.rjust(task.PROMPT_LENGTH, "_")
        assert task.decode(solutions[i, : int(lengths[i])]) == solution
    assert not bool(task.is_heldout(probs.operands).any())
    held = task.heldout_problems(200)
    assert bool(task.is_heldout(held.operands).all())
    assert set(np.asarray(held.num_terms).tolist()) == {3, 4}


# ----------------------------------------------------------------------------- verifier
@pytest.mark.parametrize(
    "text, correct, completed, so_far, partial, answer",
    [
        ("12+7+30=", [0, 0, 0, 0], [0, 0, 0, 0], True, True, False),
        ("12+7+30=19;", [1, 0, 0, 0], [1, 0, 0, 0], True, True, False),
        ("12+7+30=19;4", [1, 0, 0, 0], [1, 0, 0, 0], True, True, False),
        ("12+7+30=19;5", [1, 0, 0, 0], [1, 0, 0, 0], True, False, False),
        ("12+7+30=19;49;A49$", [1, 1, 1, 0], [1, 1, 1, 0], True, True, True),
        ("12+7+30=19;48;A49$", [1, 0, 1, 0], [1, 1, 1, 0], False, False, True),
        ("12+7+30=19;49;A48$", [1, 1, 0, 0], [1, 1, 1, 0], False, False, False),
        ("12+7+30=19;049;", [1, 0, 0, 0], [1, 1, 0, 0], False, False, False),  # leading 0
        ("12+7+30=19;49;49;", [1, 1, 0, 0], [1, 1, 1, 0], False, False, False),  # extra sum
        ("12+7+30=19;49$", [1, 0, 0, 0], [1, 1, 0, 0], False, False, False),  # no 'A'
        ("12+7+30=19;A49$", [1, 0, 0, 0], [1, 1, 0, 0], False, False, True),  # step skipped
        ("1+2+3+4=3;6;10;A10$", [1, 1, 1, 1], [1, 1, 1, 1], True, True, True),
        ("__1+2+3+4=3;6;10;A10$", [1, 1, 1, 1], [1, 1, 1, 1], True, True, True),
        ("99+99+99+99=198;297;396;A396$", [1, 1, 1, 1], [1, 1, 1, 1], True, True, True),
        ("1+2+3+4=3;6;10;A10;", [1, 1, 1, 0], [1, 1, 1, 1], False, False, False),
        ("5+5=10;A10$", [0, 0, 0, 0], [1, 1, 0, 0], False, False, False),  # 2 operands
    ],
)
def test_verifier_hand_written(text, correct, completed, so_far, partial, answer):
    tokens, n = _buffer(text)
    c, d = task.step_correct(tokens, n)
    assert np.asarray(c).tolist() == correct and np.asarray(d).tolist() == completed
    assert bool(task.prefix_correct(tokens, n)) is so_far
    assert bool(task.prefix_correct(tokens, n, partial_steps=True)) is partial
    assert bool(task.answer_correct(tokens, n)) is answer
    assert float(task.process_reward(tokens, n)) == float(so_far)
    assert float(task.verifier_log_reward(tokens, n)) == (0.0 if so_far else -np.inf)


def _reference(ops, generated):
    """String versions of the checks: step-level, token-level, outcome."""
    _, solution = task.problem_text(ops)
    steps = re.findall(r"[^;$]*[;$]", solution)
    done = re.findall(r"[^;$]*[;$]", generated)
    step_level = all(j < len(steps) and s == steps[j] for j, s in enumerate(done))
    outcome = generated.endswith("$") and generated.split(";")[-1] == steps[-1]
    return step_level, solution.startswith(generated), outcome


def test_verifier_matches_string_reference():
    """Random corruptions and random strings, checked jitted and vmapped against string
    comparisons with the reference solution."""
    rng = np.random.default_rng(0)
    cases, buffers, lengths = [], [], []
    for _ in range(600):
        ops = rng.integers(0, 100, rng.integers(3, 5)).tolist()
        _, solution = task.problem_text(ops)
        kind = rng.integers(3)
        if kind == 0:
            gen = solution[: rng.integers(len(solution) + 1)]
        elif kind == 1:
            chars = list(solution)
            chars[rng.integers(len(chars))] = rng.choice(list("0123456789;A$"))
            gen = "".join(chars)[: rng.integers(len(chars) + 1)]
        else:
            alphabet = list("0123456789;A$")
            gen = "".join(rng.choice(alphabet, rng.integers(19), p=[0.07] * 10 + [0.15, 0.05, 0.1]))
        if "$" in gen:
            gen = gen[: gen.index("$") + 1]
        tokens, n = _buffer(task.decode(task.encode_prompt(ops)) + gen)
        cases.append((ops, gen))
        buffers.append(tokens)
        lengths.append(n)

    @jax.jit
    @jax.vmap
    def check(t, n):
        return (
            task.prefix_correct(t, n),
            task.prefix_correct(t, n, partial_steps=True),
            task.answer_correct(t, n),
        )

    got = np.stack([np.asarray(a) for a in check(jnp.stack(buffers), jnp.asarray(lengths))], 1)
    want = np.array([_reference(ops, gen) for ops, gen in cases])
    np.testing.assert_array_equal(got, want)
    assert 0.2 < want[:, 0].mean() < 0.9 and want[:, 2].sum() > 10


# ----------------------------------------------------------------------------- transformer
def _cached_logits(model, tokens, start):
    """Prefill ``tokens[:start]``, then one ``step`` per later token (one ``lax.scan``)."""

    def body(cache, token):
        logits, cache = transformer.step(model, cache, token)
        return cache, logits

    return jax.lax.scan(body, transformer.prefill(model, tokens[:start]), tokens[start:])[1]


def test_cached_step_equals_full_forward():
    """From an empty cache (``start = 0``) on a random model, and after a prompt on the
    shipped one: every cached step's logits equal the full forward pass's."""
    model = _small(jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (SMALL.context_length,), 0, 16)
    full = model(tokens)
    assert full.shape == (12, 16) and full.dtype == jnp.float32
    cached = jax.jit(_cached_logits, static_argnums=2)(model, tokens, 0)
    np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)

    model = pretrained.arithmetic_model()
    tokens, _ = _buffer("____12+7+30=19;49;A49$")
    cached = jax.jit(_cached_logits, static_argnums=2)(model, tokens, 11)
    np.testing.assert_allclose(cached, model(tokens)[11:], atol=1e-4, rtol=1e-5)


def test_bad_input():
    model = _small(jax.random.key(0))
    too_long = jnp.zeros((13,), jnp.int32)
    for fn in (model, lambda t: transformer.prefill(model, t)):
        with pytest.raises(ValueError, match="longer than the context"):
            fn(too_long)
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 16\)"):
            fn(jnp.array([1, 16]))
    with pytest.raises(ValueError, match="longer than the context"):
        transformer.steering_model(model, too_long)
    with pytest.raises(ValueError, match="at least one token"):
        transformer.steering_model(model, jnp.zeros((0,), jnp.int32))
    with pytest.raises(ValueError, match="must divide"):
        Transformer(SMALL._replace(num_heads=3), jax.random.key(0))
    # a concrete token or cache position is checked; traced input cannot raise: NaN logits
    # (a dead particle in smc)
    cache = transformer.prefill(model, jnp.array([1, 2]))
    with pytest.raises(ValueError, match=r"token must be in \[0, 16\)"):
        transformer.step(model, cache, 16)
    traced_step = jax.jit(lambda c, t: transformer.step(model, c, t))
    assert bool(jnp.isnan(traced_step(cache, 16)[0]).all())
    full = cache._replace(position=jnp.int32(SMALL.context_length))
    with pytest.raises(ValueError, match=f"cache.position is {SMALL.context_length}"):
        transformer.step(model, full, 3)
    assert bool(jnp.isnan(traced_step(full, 3)[0]).all())
    lm, cache = transformer.steering_model(model, jnp.array([1, 2, 3]))
    tokens = jnp.array([1, 2, 3, 4, 5, 6], jnp.int32)
    assert bool(jnp.isfinite(lm(tokens, 3, cache)[0]).all())
    assert bool(jnp.isnan(lm(tokens, 4, cache)[0]).all())  # the cache missed a token
    with pytest.raises(ValueError, match="exceeds the model's context"):
        pk.steering.smc(jax.random.key(0), lm, lambda t, n: 0.0, num_particles=2,
                        max_length=10, eos_id=task.EOS, prompt=jnp.array([1, 2, 3]),
                        init_cache=cache)  # fmt: skip


class _FullSelect(eqx.Module):
    """``SteeringLM`` without its ``select_cache``: ``smc`` then freezes a particle by
    selecting every leaf of its cache."""

    lm: transformer.SteeringLM

    def __call__(self, tokens, length, cache):
        return self.lm(tokens, length, cache)


@pytest.mark.parametrize("separator", [None, 5])
def test_select_cache_equals_full_select(separator):
    """``SteeringLM.select_cache`` keeps only a frozen particle's position: runs where
    particles finish (end token 3) and, at step level, wait for the others at separator 5
    give the same sequences, weights and log Z as freezing the whole cache, and no particle
    fails (a stale cache would give NaN logits)."""
    model = _small(jax.random.key(3))
    prompt = jnp.array([1, 2], jnp.int32)
    lm, cache = transformer.steering_model(model, prompt)
    assert callable(getattr(lm, "select_cache", None))

    def run(step_fn):
        return pk.steering.smc(
            jax.random.key(4), step_fn, lambda t, n: 0.1 * jnp.sum(t == 7), num_particles=16,
            max_length=10, eos_id=3, prompt=prompt, init_cache=cache, separator_id=separator,
            ess_threshold=1.0, progress_bar=False,
        )  # fmt: skip

    fast, full = run(lm), run(_FullSelect(lm))
    assert int(fast.num_nonfinite.sum()) == 0 and not bool(fast.failed)
    lengths = np.asarray(fast.lengths)
    assert lengths.min() < lengths.max()  # particles did finish at different times
    np.testing.assert_array_equal(fast.sequences, full.sequences)
    np.testing.assert_array_equal(fast.lengths, full.lengths)
    np.testing.assert_allclose(fast.log_weights, full.log_weights, rtol=1e-6)
    np.testing.assert_allclose(fast.log_evidence, full.log_evidence, rtol=1e-6)


# ----------------------------------------------------------------------------- shipped models
# every sampling call below draws 256 sequences: one compilation serves them all
HELD_OUT = task.heldout_problems(256)


def _first(num):
    return jax.tree.map(lambda a: a[:num], HELD_OUT)


def test_shipped_generator_accuracy_band():
    """Greedy decoding is right on part of the held-out problems only; sampling less."""
    model = pretrained.arithmetic_model()
    greedy, greedy_steps = train.evaluate_generator(model, HELD_OUT, jax.random.key(0), 0.0)
    sampled, _ = train.evaluate_generator(model, HELD_OUT, jax.random.key(1), 1.0)
    assert 0.3 <= greedy <= 0.7, greedy
    assert greedy_steps <= greedy
    assert sampled < greedy, (sampled, greedy)
    report = pretrained.training_report()
    assert 0.3 <= report["generator"]["greedy_answer_accuracy"] <= 0.7


def test_shipped_prm_beats_chance():
    model, prm = pretrained.arithmetic_model(), pretrained.arithmetic_prm()
    quality = train.evaluate_prm(prm, model, _first(32), jax.random.key(3), samples_per_problem=8)
    assert quality["token_auc"] > 0.85, quality
    assert quality["step_auc"] > 0.85, quality
    assert quality["within_problem_auc"] > 0.65, quality
    assert quality["step_accuracy"] > max(quality["step_positive"], 1 - quality["step_positive"])
    # imperfect: it is a learned model, not the verifier
    assert quality["token_accuracy"] < 1.0


NUM_PROBLEMS, NUM_PARTICLES = 16, 16


def _plain_accuracy(model):
    """Final-answer accuracy of NUM_PARTICLES plain samples per problem."""
    prompts = jnp.repeat(train.problem_prompts(_first(NUM_PROBLEMS)), NUM_PARTICLES, axis=0)
    tokens, lengths = train.sample_solutions(model, jax.random.key(5), prompts)
    return float(jnp.mean(train.check_solutions(tokens, lengths)[0]))


def _steered_accuracy(model, reward):
    """Weighted final-answer accuracy of SMC with NUM_PARTICLES particles per problem, and
    the fraction of runs where every particle got zero weight."""

    def one(key, prompt):
        lm, cache = transformer.steering_model(model, prompt)
        res = pk.steering.smc(key, lm, reward, num_particles=NUM_PARTICLES,
                              max_length=task.MAX_NEW_TOKENS, eos_id=task.EOS, prompt=prompt,
                              init_cache=cache)  # fmt: skip
        right = jax.vmap(task.answer_correct)(res.sequences, res.lengths)
        return jnp.sum(res.weights * right), res.failed

    keys = jax.random.split(jax.random.key(6), NUM_PROBLEMS)
    acc, failed = jax.jit(jax.vmap(one))(keys, train.problem_prompts(_first(NUM_PROBLEMS)))
    return float(acc.mean()), float(failed.mean())


def test_smc_with_verifier_beats_sampling():
    """Same generator, same number of particles: the weighted final-answer accuracy of SMC
    with the exact verifier as reward against the accuracy of plain samples."""
    model = pretrained.arithmetic_model()
    plain = _plain_accuracy(model)
    exact, failed = _steered_accuracy(model, task.verifier_log_reward)
    assert 0.2 < plain < 0.55, plain
    assert exact > plain + 0.3, (exact, plain)
    # every sequence the verifier keeps is right: the misses are runs where all died
    assert exact >= 1.0 - failed - 1e-6


@pytest.mark.slow
def test_smc_with_learned_prm_beats_sampling():
    model = pretrained.arithmetic_model()
    plain = _plain_accuracy(model)
    learned, failed = _steered_accuracy(model, pretrained.arithmetic_prm())
    assert failed == 0.0
    assert learned > plain + 0.08, (learned, plain)
