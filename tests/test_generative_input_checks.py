"""Input checks of the generative recipes (audit findings): concrete invalid arguments are a
``ValueError`` before tracing, a NaN reward is a warning, and under tracing the documented
NaN / ``-inf`` behaviour is kept.

1. ``lm.step`` with a token outside the vocabulary, or past the context, gave NaN logits.
2. ``steering.sequence_log_prob`` with a token outside the vocabulary gave ``-inf``.
3. ``diffusion.gradient_guided_proposal`` checked none of its arguments (DDIM with
   ``eta = 0`` killed every particle of ``fk_steering``; ``sampler="foo"`` was read as
   DDIM); ``DiffusionModel.reverse_step`` with ``s > t`` gave NaN.
4. ``diffusion.rollover_budget_forcing`` with an all-NaN reward returned ``-inf`` rewards
   and arbitrary samples without a word.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlekit as pk
from particlekit.lm import transformer

KEY = jax.random.key(0)


# ----------------------------------------------------------------------------- 1. lm.step
CFG = pk.lm.TransformerConfig(vocab_size=16, context_length=8, d_model=16, num_heads=2,
                              num_layers=1)  # fmt: skip


def _lm():
    return pk.lm.Transformer(CFG, jax.random.key(1))


@pytest.mark.parametrize("token", [16, 99, -1, 2**40, jnp.int32(16), np.int64(-3)], ids=repr)
def test_step_concrete_token_outside_the_vocabulary_is_a_value_error(token):
    model = _lm()
    cache = pk.lm.prefill(model, jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"token must be in \[0, 16\) \(the vocabulary\)"):
        pk.lm.step(model, cache, token)
    # a valid id still steps; traced, the id cannot be checked: NaN logits, as documented
    assert bool(jnp.isfinite(pk.lm.step(model, cache, 15)[0]).all())
    traced = jax.jit(lambda c, t: pk.lm.step(model, c, t)[0])
    assert bool(jnp.isnan(traced(cache, jnp.int32(99))).all())


def test_step_past_the_context_is_a_value_error():
    model = _lm()
    full = pk.lm.prefill(model, jnp.arange(CFG.context_length))
    with pytest.raises(ValueError, match=r"cache.position is 8.*\[0, 8\) \(the context\)"):
        pk.lm.step(model, full, 3)
    with pytest.raises(ValueError, match=r"cache.position is -1"):
        pk.lm.step(model, full._replace(position=jnp.int32(-1)), 3)
    # the last position still steps; traced, the position is not checked (NaN logits)
    last = pk.lm.prefill(model, jnp.arange(CFG.context_length - 1))
    logits, after = pk.lm.step(model, last, 3)
    assert bool(jnp.isfinite(logits).all()) and int(after.position) == CFG.context_length
    traced = jax.jit(lambda c: transformer.step(model, c, 3)[0])
    assert bool(jnp.isnan(traced(full)).all())


# ------------------------------------------------------------- 2. steering.sequence_log_prob
@pytest.mark.parametrize("bad", [9, -1, 4])
def test_sequence_log_prob_concrete_token_outside_the_vocabulary_is_a_value_error(bad):
    gen = pk.steering.toy_generator()  # vocabulary of 4 tokens
    tokens = jnp.array([0, bad, 3])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\) \(the vocabulary\)"):
        pk.steering.sequence_log_prob(gen, tokens, jnp.array(3))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\)"):
        pk.steering.sequence_log_prob(gen, np.asarray(tokens), 3, start=1)
    # positions from length on are padding and not checked; traced tokens are not either
    # (probability 0: -inf)
    assert np.isfinite(float(pk.steering.sequence_log_prob(gen, jnp.array([0, 3, bad]), 2)))
    traced = jax.jit(lambda t: pk.steering.sequence_log_prob(gen, t, 3))
    assert float(traced(tokens)) == -np.inf


# ------------------------------------------------------------- 3. gradient_guided_proposal
MIXTURE = pk.diffusion.gaussian_mixture(
    [0.7, 0.3], [[-1.5, 0.0], [1.5, 1.0]], stds=[[0.6, 0.8], [0.7, 0.5]], schedule="linear"
)


def _reward(x):
    return x[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="ddim", eta=0.0), "eta = 0 makes the DDIM kernel deterministic"),
        (dict(sampler="foo"), "sampler must be one of"),
        (dict(eta=5.0), r"eta must be in \[0, 1\]"),
        (dict(eta=-1.0), r"eta must be in \[0, 1\]"),
        (dict(lmbda=float("nan")), "lmbda must be finite"),
        (dict(lmbda=float("inf")), "lmbda must be finite"),
        (dict(lmbda=jnp.ones(2)), "lmbda must be a scalar"),
        (dict(scale=-1.0), "scale must be a finite number >= 0"),
        (dict(scale=float("nan")), "scale must be a finite number >= 0"),
        (dict(scale=float("inf")), "scale must be a finite number >= 0"),
        (dict(reward_fn=3), "reward_fn must be a callable"),
        (dict(reward_fn=jnp.negative), "must return a scalar"),
        (dict(model="model"), "model must be a DiffusionModel"),
    ],
    ids=repr,
)
def test_gradient_guided_proposal_checks_its_arguments(kwargs, match):
    args = dict(model=MIXTURE, reward_fn=_reward, lmbda=1.0) | kwargs
    model, reward_fn, lmbda = args.pop("model"), args.pop("reward_fn"), args.pop("lmbda")
    with pytest.raises(ValueError, match=match):
        pk.diffusion.gradient_guided_proposal(model, reward_fn, lmbda, **args)


def test_gradient_guided_proposal_valid_and_traced_arguments_still_run():
    """``scale = 0`` (the base kernel) and a DDIM kernel with ``eta > 0`` run; a proposal
    built under ``jit`` with traced ``lmbda`` / ``scale`` is not checked by value. The
    old code accepted ``eta = 0`` here and killed every particle."""
    with pytest.raises(ValueError, match="eta = 0"):
        pk.diffusion.fk_steering(
            KEY, MIXTURE, _reward, num_particles=8, num_steps=5,
            proposal=pk.diffusion.gradient_guided_proposal(
                MIXTURE, _reward, 1.0, sampler="ddim", eta=0.0
            ),
        )  # fmt: skip
    for kwargs in (dict(scale=0.0), dict(sampler="ddim", eta=0.5)):
        proposal = pk.diffusion.gradient_guided_proposal(MIXTURE, _reward, 1.0, **kwargs)
        res = pk.diffusion.fk_steering(
            KEY, MIXTURE, _reward, num_particles=8, num_steps=5, proposal=proposal
        )
        assert not bool(res.failed) and np.isfinite(float(res.log_evidence))

    def traced(lmbda, scale):
        proposal = pk.diffusion.gradient_guided_proposal(MIXTURE, _reward, lmbda, scale=scale)
        return pk.diffusion.fk_steering(
            KEY, MIXTURE, _reward, num_particles=8, num_steps=5, proposal=proposal
        ).log_evidence

    assert np.isfinite(float(jax.jit(traced)(1.0, 0.5)))


@pytest.mark.parametrize("t, s", [(0.4, 0.5), (0.5, 0.5), (1.5, 0.5), (0.5, -0.1)])
def test_reverse_step_concrete_times_out_of_order_or_range_are_a_value_error(t, s):
    x = jnp.ones(2)
    with pytest.raises(ValueError, match=r"0 <= s < t <= 1"):
        MIXTURE.reverse_step(KEY, x, t, s)
    with pytest.raises(ValueError, match=r"0 <= s < t <= 1"):
        MIXTURE.reverse_log_prob(x, x, jnp.asarray(t), jnp.asarray(s))
    # traced times are not checked (NaN for s > t, as before)
    traced = jax.jit(lambda t, s: MIXTURE.reverse_step(KEY, x, t, s))
    assert traced(0.5, 0.4).shape == (2,)


def test_reverse_step_unknown_sampler_is_a_value_error():
    x = jnp.ones(2)
    assert bool(jnp.isfinite(MIXTURE.reverse_step(KEY, x, 0.5, 0.4, sampler="ddim")).all())
    with pytest.raises(ValueError, match="sampler must be one of"):
        MIXTURE.reverse_step(KEY, x, 0.5, 0.4, sampler="foo")
    with pytest.raises(ValueError, match="sampler must be one of"):  # static: under jit too
        jax.jit(lambda t: MIXTURE.reverse_step(KEY, x, t, 0.4, sampler="foo"))(0.5)


# --------------------------------------------------------------- 4. rollover_budget_forcing
def _rbf(reward_fn):
    return pk.diffusion.rollover_budget_forcing(
        KEY, MIXTURE, reward_fn, num_steps=4, budget=10, num_samples=3
    )


def test_rollover_all_nan_reward_warns_as_svdd():
    with pytest.warns(RuntimeWarning, match=r"rollover_budget_forcing: 3 of 3 final rewards"):
        res = _rbf(lambda x: jnp.nan * x[0])
    assert np.all(np.asarray(res.rewards) == -np.inf)
    with pytest.warns(RuntimeWarning, match="svdd: 3 of 3 final rewards are NaN"):
        pk.diffusion.svdd(KEY, MIXTURE, lambda x: jnp.nan * x[0], num_particles=3, num_steps=4)
    # a finite reward, and any reward under jit (the rewards report -inf): no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(np.isfinite(np.asarray(_rbf(_reward).rewards)))
        jitted = jax.jit(lambda: _rbf(lambda x: jnp.nan * x[0]).rewards)()
        assert np.all(np.asarray(jitted) == -np.inf)
