"""Regression tests from a second user-style hunt of the steering side (diffusion steering
with the shipped models, sequence steering, the shipped language model). Each test
reproduces one reported problem and fails without its fix:

* ``test_diffusion_rewards_must_be_real``: ``fk_steering`` (and ``best_of_n``, ``svdd``,
  ``rollover_budget_forcing``, a callable ``intermediate_reward``) took a reward returning
  a complex number and silently dropped its imaginary part (only a NumPy
  ``ComplexWarning`` / ``DeprecationWarning``), where ``steering.smc`` refuses one. The
  shared ``check_reward`` now raises a ``ValueError`` naming the dtype; bool rewards (an
  indicator, tilt ``exp(lmbda)`` on a region) stay accepted.
* ``test_pdds_log_density_must_be_a_real_non_bool_scalar``: ``pdds`` with a complex
  ``log_density`` returned a finite ``log_evidence`` (the real part), and a bool one (an
  indicator ``inside`` meant as a hard constraint) was read as ``log gamma = 1 / 0``.
  Both are now a ``ValueError`` before tracing.
* ``test_weighted_vote_of_no_answers_is_a_value_error``: ``weighted_vote`` of an empty
  array failed inside ``jnp.argmax`` ("attempt to get argmax of an empty sequence").
* ``test_smc_warns_when_max_steps_leaves_sequences_unfinished``: step-level ``smc`` with a
  ``max_steps`` too small returned prefixes weighted by the reward of a prefix (so the
  population does not target ``p(x) phi(x) / Z`` and ``log_evidence`` is not
  ``log E_p[phi]``) without a word; an eager call now warns (``RuntimeWarning``), and so
  do ``particle_gibbs`` and ``parallel_tempering``, whose references were such prefixes
  (``test_gibbs_and_tempering_warn_when_max_steps_leaves_references_unfinished``).
* ``test_beam_search_reports_no_evidence``: ``beam_search`` (and DVTS) returned the finite
  ``log_evidence`` accumulated by the filter under a greedy selection, a number that
  estimates nothing (the docs said so) but that ``pk.arviz.from_sequence_steering``
  reported as ``log_marginal_likelihood``; it is now NaN, with ``failed`` unchanged.
* ``test_prompt_ending_with_the_end_token_is_an_error``: a prompt ending with ``eos_id``
  (as tokenizers that append the end token give) returned N copies of the prompt plus one
  end token, ``ended`` True, without a word. Fix: a ``ValueError`` before tracing.
"""

import warnings

import jax
import jax.numpy as jnp
import pytest

import particlekit as pk

KEY = jax.random.key(0)
MIXTURE = pk.diffusion.gaussian_mixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
GEN = pk.steering.toy_generator()  # letters 0, 1, 2; end token 3


def _count_zeros(tokens, length):
    return 1.0 * jnp.sum((tokens == 0) & (jnp.arange(tokens.shape[0]) < length))


def _complex_reward(x):
    return x[0] + 1j * x[1]


@pytest.mark.parametrize(
    "run",
    [
        lambda r: pk.diffusion.fk_steering(KEY, MIXTURE, r, num_particles=4, num_steps=3),
        lambda r: pk.diffusion.best_of_n(KEY, MIXTURE, r, num_samples=4, num_steps=3),
        lambda r: pk.diffusion.svdd(KEY, MIXTURE, r, num_particles=2, num_steps=3),
        lambda r: pk.diffusion.rollover_budget_forcing(KEY, MIXTURE, r, num_steps=3, budget=8),
    ],
    ids=["fk_steering", "best_of_n", "svdd", "rollover"],
)
def test_diffusion_rewards_must_be_real(run):
    with pytest.raises(ValueError, match="must return a real scalar, got dtype complex"):
        run(_complex_reward)


def test_diffusion_intermediate_reward_must_be_real_and_bool_rewards_still_work():
    with pytest.raises(ValueError, match="intermediate_reward.*real scalar"):
        pk.diffusion.fk_steering(
            KEY, MIXTURE, lambda x: x[0], num_particles=4, num_steps=3,
            intermediate_reward=lambda x, t: x[0] + 0j,
        )  # fmt: skip
    # a bool reward is an indicator: exp(lmbda) on the region, a valid tilt
    res = pk.diffusion.fk_steering(KEY, MIXTURE, lambda x: x[0] > 0, num_particles=4, num_steps=3)
    assert bool(jnp.isfinite(res.log_evidence))


def test_pdds_log_density_must_be_a_real_non_bool_scalar():
    def run(log_density):
        return pk.diffusion.pdds(KEY, log_density, dim=2, num_particles=8, num_steps=2)

    with pytest.raises(ValueError, match="real scalar, got dtype complex"):
        run(lambda x: -0.5 * jnp.sum(x**2) + 0j)
    with pytest.raises(ValueError, match="got a bool"):
        run(lambda x: x[0] < 0)
    assert bool(jnp.isfinite(run(lambda x: -0.5 * jnp.sum(x**2)).log_evidence))


def test_weighted_vote_of_no_answers_is_a_value_error():
    with pytest.raises(ValueError, match="N >= 1"):
        pk.steering.weighted_vote(jnp.zeros((0,), jnp.int32))
    answer, share = pk.steering.weighted_vote(jnp.array([4]))
    assert int(answer) == 4 and float(share) == 1.0


def test_smc_warns_when_max_steps_leaves_sequences_unfinished():
    # letter 1 ends a step: with one step, sequences that wrote a 1 before any end token
    # stop as prefixes (key 0: two of the four, lengths 2 and 1, ended False)
    common = dict(num_particles=4, max_length=6, eos_id=3, separator_id=1)
    with pytest.warns(RuntimeWarning, match="unfinished .* after max_steps=1"):
        res = pk.steering.smc(KEY, GEN, _count_zeros, max_steps=1, **common)
    unfinished = ~res.ended & (res.lengths < res.sequences.shape[1])
    assert int(jnp.sum(unfinished)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = pk.steering.smc(KEY, GEN, _count_zeros, **common)  # default: max_length steps
        res = pk.steering.smc(KEY, GEN, _count_zeros, max_steps=6, **common)
    assert bool(jnp.all(res.ended | (res.lengths == res.sequences.shape[1])))


@pytest.mark.parametrize("sampler", ["particle_gibbs", "parallel_tempering"])
def test_gibbs_and_tempering_warn_when_max_steps_leaves_references_unfinished(sampler):
    run = getattr(pk.steering, sampler)
    extra = {"temperatures": [1.0, 2.0]} if sampler == "parallel_tempering" else {}
    common = dict(num_particles=4, num_iterations=5, max_length=6, eos_id=3, separator_id=1)
    with pytest.warns(RuntimeWarning, match=f"{sampler}: .* unfinished .* max_steps=1"):
        res = run(KEY, GEN, _count_zeros, max_steps=1, **common, **extra)
    last = jnp.take_along_axis(res.sequences, res.lengths[..., None] - 1, axis=-1)[..., 0]
    assert bool(jnp.any((last != 3) & (res.lengths < res.sequences.shape[-1])))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run(KEY, GEN, _count_zeros, max_steps=6, **common, **extra)


@pytest.mark.parametrize("diverse", [False, True])
def test_beam_search_reports_no_evidence(diverse):
    common = dict(num_particles=8, beam_width=4, max_length=4, eos_id=3, separator_id=1)
    res = pk.steering.beam_search(KEY, GEN, _count_zeros, diverse=diverse, **common)
    assert bool(jnp.isnan(res.log_evidence)) and not bool(res.failed)
    assert bool(jnp.all(jnp.isfinite(res.log_weights)))  # the rewards, read by best_of
    dead = pk.steering.beam_search(KEY, GEN, lambda t, n: -jnp.inf, diverse=diverse, **common)
    assert bool(dead.failed)


@pytest.mark.parametrize(
    "run", [pk.steering.smc, pk.steering.particle_gibbs], ids=["smc", "particle_gibbs"]
)
def test_prompt_ending_with_the_end_token_is_an_error(run):
    extra = {"num_iterations": 2} if run is pk.steering.particle_gibbs else {}
    with pytest.raises(ValueError, match="ends with the end token"):
        run(KEY, GEN, _count_zeros, num_particles=4, max_length=4, eos_id=3, prompt=[0, 3],
            **extra)  # fmt: skip
    run(KEY, GEN, _count_zeros, num_particles=4, max_length=4, eos_id=3, prompt=[0, 1], **extra)
