"""Progress bars of the sequence-steering recipes over long runs: particle Gibbs and
parallel tempering over their iterations, SMC and beam search over their steps; shown on
request, ending at the count; none with ``progress_bar=False``."""

import jax
import jax.numpy as jnp
import pytest

import particlekit as pk

GEN = pk.steering.toy_generator()


def _reward(tokens, length):
    return 0.5 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))


COMMON = dict(max_length=4, eos_id=3)
RECIPES = {
    "particle_gibbs": (lambda bar: pk.steering.particle_gibbs(
        jax.random.key(0), GEN, _reward, num_particles=4, num_iterations=12,
        progress_bar=bar, **COMMON), "12/12"),
    "parallel_tempering": (lambda bar: pk.steering.parallel_tempering(
        jax.random.key(1), GEN, _reward, num_particles=4, num_iterations=12,
        temperatures=[1.0, 2.0], progress_bar=bar, **COMMON), "12/12"),
    "smc_steps": (lambda bar: pk.steering.smc(
        jax.random.key(2), GEN, _reward, num_particles=8, separator_id=1, max_steps=4,
        progress_bar=bar, **COMMON), "4/4"),
    "beam_search": (lambda bar: pk.steering.beam_search(
        jax.random.key(3), GEN, _reward, num_particles=8, beam_width=2, separator_id=1,
        max_steps=4, progress_bar=bar, **COMMON), "4/4"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_sequence_progress_bars(name, capsys):
    run, done = RECIPES[name]
    jax.block_until_ready(run(True))
    jax.effects_barrier()
    assert done in capsys.readouterr().err
    jax.block_until_ready(run(False))
    jax.effects_barrier()
    assert done not in capsys.readouterr().err
