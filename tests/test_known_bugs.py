"""Known wrong answers, kept as strict expected failures until they are fixed (a fix makes
the test pass, and ``strict=True`` then asks for the marker to be removed), then as
regression tests.

Fixed: ``jit(vmap(pk.steering.smc))`` on CPU with jax 0.10-0.11 returned wrong logits from a
step function with a reduction (``x.mean()``) once prompts x particles reached 4096 (right
with jax 0.12.0, and without the outer ``vmap``). Not reproduced since the loop over steps
stopped wrapping each step in a ``lax.cond`` (which ``vmap`` turns into a select of both
branches); the cause inside XLA was not isolated."""

import equinox as eqx
import jax
import jax.numpy as jnp

import particlekit as pk

V, D = 16, 64
_K1, _K2 = jax.random.split(jax.random.key(0))
W = jax.random.normal(_K1, (V, D))
E = jax.random.normal(_K2, (V, D))


def _logits_of(token):
    x = E[token]
    return W @ (x - x.mean())


class _Spy(eqx.Module):
    """A cached step function that returns its logits as the cache, to read them back."""

    def __call__(self, tokens, length, cache):
        out = _logits_of(tokens[length - 1])
        return out, out


def _vmapped_logits(num_prompts, num_particles):
    def one(key, prompt):
        res = pk.steering.smc(
            key, _Spy(), lambda t, n: jnp.float32(0.0), num_particles=num_particles,
            max_length=1, eos_id=V - 1, prompt=prompt, init_cache=jnp.zeros(V),
            progress_bar=False,
        )  # fmt: skip
        return res.final_state.particles.cache

    keys = jax.random.split(jax.random.key(1), num_prompts)
    return jax.jit(jax.vmap(one))(keys, jnp.tile(jnp.arange(3), (num_prompts, 1)))


def test_vmapped_sequence_steering_is_right_below_4096_particles():
    got = _vmapped_logits(16, 128)
    assert float(jnp.max(jnp.abs(got - _logits_of(2)))) < 1e-4


def test_vmapped_sequence_steering_is_right_at_4096_particles():
    got = _vmapped_logits(16, 256)
    assert float(jnp.max(jnp.abs(got - _logits_of(2)))) < 1e-4
