"""The token loop of step-level steering under ``jax.vmap`` (issue #16, overhead).

A step-level move draws tokens in a ``lax.while_loop`` until every particle has ended its
step. Batched over problems, JAX's own rule for a loop whose predicate is batched selects
every leaf of the carry, key/value caches included, between old and new at every token;
the loop of ``particlekit.steering.sequences`` batches into the same loop over all
problems instead (a problem whose particles have stopped is left as it is by the body).
Checked here: the batched runs equal the runs one problem at a time, also with values the
generator closes over batched, nested ``vmap`` and a conditional (reference) sweep, and
every token loop of a batched run has one (scalar) predicate for all problems, and the
compiled loop neither copies nor transposes the particles' caches at every step.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np

import particlekit as pk
from particlekit.lm import transformer

SEP, EOS, VOCAB, MAX_LENGTH = 1, 5, 6, 8
CONFIG = transformer.TransformerConfig(
    vocab_size=VOCAB, context_length=12, d_model=16, num_heads=2, num_layers=1
)
MODEL = transformer.Transformer(CONFIG, jax.random.key(0))
PROMPTS = jnp.array([[0, 2, 3], [4, 4, 2], [3, 0, 0]])
N = 8


def _count_twos(tokens, length):
    """A reward that varies along the sequence: ``-0.5`` per token 2."""
    mask = jnp.arange(tokens.shape[0]) < length
    return -0.5 * jnp.sum((tokens == 2) & mask)


def _steer(key, prompt, variant="softmax"):
    lm, cache = transformer.steering_model(MODEL, prompt)
    res = pk.steering.smc(
        key, lm, _count_twos, num_particles=N, max_length=MAX_LENGTH, eos_id=EOS,
        prompt=prompt, init_cache=cache, separator_id=SEP, max_steps=MAX_LENGTH,
        variant=variant,
    )  # fmt: skip
    return res.sequences, res.lengths, res.log_weights


def _assert_same(batched, singles):
    for got, want in zip(batched, singles, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_vmapped_step_level_smc_equals_one_problem_at_a_time():
    keys = jax.random.split(jax.random.key(1), PROMPTS.shape[0])
    batched = jax.jit(jax.vmap(_steer))(keys, PROMPTS)
    singles = [jax.jit(_steer)(k, p) for k, p in zip(keys, PROMPTS, strict=True)]
    _assert_same(batched, [jnp.stack(leaves) for leaves in zip(*singles, strict=True)])


def test_nested_vmap_equals_one_problem_at_a_time():
    keys = jax.random.split(jax.random.key(2), (2, PROMPTS.shape[0]))
    batched = jax.jit(jax.vmap(jax.vmap(_steer), in_axes=(0, None)))(keys, PROMPTS)
    for i in range(2):
        singles = [_steer(k, p) for k, p in zip(keys[i], PROMPTS, strict=True)]
        stacked = [jnp.stack(leaves) for leaves in zip(*singles, strict=True)]
        _assert_same([leaf[i] for leaf in batched], stacked)


def test_batched_values_in_the_generator_closure():
    """The generator closes over a batched logit bias: the loop passes it explicitly."""
    gen = pk.steering.toy_generator()

    def steer(bias):
        def step_fn(tokens, length):
            return gen(tokens, length) + bias

        res = pk.steering.smc(
            jax.random.key(3), step_fn, lambda t, n: 0.0, num_particles=16, max_length=6,
            eos_id=3, separator_id=1, max_steps=6,
        )  # fmt: skip
        return res.sequences, res.lengths, res.log_weights

    biases = jnp.array([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.0, -0.5], [0.0, 0.0, 3.0, 0.0]])
    batched = jax.vmap(steer)(biases)
    singles = [steer(b) for b in biases]
    _assert_same(batched, [jnp.stack(leaves) for leaves in zip(*singles, strict=True)])


def test_vmapped_particle_gibbs_equals_one_chain_at_a_time():
    """Conditional sweeps: the reference (slot 0) is an operand of the loop too."""
    gen = pk.steering.toy_generator()

    def chain(key):
        res = pk.steering.particle_gibbs(
            key, gen, lambda t, n: -0.3 * n, num_particles=8, num_iterations=3,
            max_length=6, eos_id=3, separator_id=1,
        )  # fmt: skip
        return res.sequences, res.lengths

    keys = jax.random.split(jax.random.key(4), 3)
    batched = jax.vmap(chain)(keys)
    singles = [chain(k) for k in keys]
    _assert_same(batched, [jnp.stack(leaves) for leaves in zip(*singles, strict=True)])


def _eqns(jaxpr, loops_around=0):
    """Every equation of ``jaxpr``, those of its sub-jaxprs included, with the number of
    ``while`` loops around it."""
    for eqn in jaxpr.eqns:
        yield eqn, loops_around
        inner = loops_around + (eqn.primitive.name == "while")
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _eqns(sub, inner)


def test_batched_token_loop_has_a_scalar_predicate():
    """JAX lowers a ``while`` whose predicate is batched (one flag per problem) with a
    selection of its whole carry, the caches of all particles included, at every
    iteration: the batched token loop (inside the loop over steps) has a single flag. The
    loop over steps stops when every sequence of a problem has finished; batched, its
    carry is selected once per step (reasoning step here), as the per-step skip under
    ``lax.cond`` that it replaced was."""
    keys = jax.random.split(jax.random.key(5), PROMPTS.shape[0])
    jaxpr = jax.make_jaxpr(jax.vmap(_steer))(keys, PROMPTS).jaxpr
    loops = [(e, depth) for e, depth in _eqns(jaxpr) if e.primitive.name == "while"]
    token_loops = [e for e, depth in loops if depth >= 1]
    assert token_loops, "no token loop found"
    for loop in token_loops:
        assert loop.params["cond_jaxpr"].out_avals[0].shape == ()
    step_loops = [e for e, depth in loops if depth == 0]
    assert len(step_loops) == 1


def test_compiled_token_level_smc_copies_no_cache():
    """A cached token costs about a token of ``transformer.generate`` only if nothing
    copies the particles' key/value caches at every step: not a conditional around the
    step (XLA copies a branch's operands that it updates in place), not the loop carry,
    not attention (a head-major cache needs no transpose). Counted in the optimised HLO
    of token-level ``"exact"`` steering without resampling (a resampling step gathers
    the caches, which is a copy). Two layers: with one, XLA changes the cache's layout
    around the loop."""
    prompt = PROMPTS[0]
    model = transformer.Transformer(CONFIG._replace(num_layers=2), jax.random.key(1))
    lm, cache = transformer.steering_model(model, prompt)

    def run(key):
        return pk.steering.smc(
            key, lm, lambda tokens, length: 0.0, num_particles=N, max_length=MAX_LENGTH,
            eos_id=EOS, prompt=prompt, init_cache=cache, ess_threshold=0.0,
        ).lengths  # fmt: skip

    hlo = jax.jit(run).lower(jax.random.key(0)).compile().as_text()
    layers, heads, context, head_dim = cache.keys.shape
    cache_shape = f"f32[{N},{layers},{heads},{context},{head_dim}]"
    assert cache_shape in hlo  # the caches are in the loop
    copies, transposes = [], []
    for line in hlo.splitlines():
        shape = re.match(r"\s*(?:ROOT )?%\S+ = f32\[([\d,]+)\]\S* (copy|transpose)\(", line)
        if shape is None:
            continue
        size = math.prod(int(d) for d in shape.group(1).split(","))
        if shape.group(2) == "copy" and size == N * layers * heads * context * head_dim:
            copies.append(line.strip())  # a whole cache
        if shape.group(2) == "transpose" and size == N * heads * context * head_dim:
            transposes.append(line.strip())  # one layer's cache
    assert not copies, copies
    assert not transposes, transposes
