"""Known wrong answers, kept as strict expected failures until they are fixed (a fix makes
the test pass, and ``strict=True`` then asks for the marker to be removed)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

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


@pytest.mark.xfail(
    jax.__version_info__ < (0, 12),
    strict=True,
    reason="jit(vmap(pk.steering.smc)) on CPU with jax 0.10-0.11: a step function with a "
    "reduction (x.mean()) returns wrong logits once prompts x particles reaches 4096 (not "
    "reproduced in plain JAX yet; right with jax 0.12.0); workaround: lax.map over prompts "
    "with batch_size so that at most 1024 particles are vmapped at once",
)
def test_vmapped_sequence_steering_is_right_at_4096_particles():
    got = _vmapped_logits(16, 256)
    assert float(jnp.max(jnp.abs(got - _logits_of(2)))) < 1e-4
