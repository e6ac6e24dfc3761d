"""Progress bars of the diffusion recipes (FK steering, FK correctors, SVDD): shown on
request, ending at the number of steps; none with ``progress_bar=False``."""

import jax
import pytest

import particlekit as pk

MODEL = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0], [2.0]], stds=0.5)

RECIPES = {
    "fk_steering": lambda bar: pk.diffusion.fk_steering(
        jax.random.key(0), MODEL, lambda x: x[0], num_particles=16, num_steps=20,
        progress_bar=bar,
    ),
    "anneal": lambda bar: pk.diffusion.anneal(
        jax.random.key(1), MODEL, 2.0, num_particles=16, num_steps=20, progress_bar=bar
    ),
    "svdd": lambda bar: pk.diffusion.svdd(
        jax.random.key(2), MODEL, lambda x: x[0], num_particles=4, num_children=2,
        num_steps=20, progress_bar=bar,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_diffusion_progress_bars(name, capsys):
    jax.block_until_ready(RECIPES[name](True))
    jax.effects_barrier()
    assert "20/20" in capsys.readouterr().err
    jax.block_until_ready(RECIPES[name](False))
    jax.effects_barrier()
    assert "20/20" not in capsys.readouterr().err
