"""PaRIS with multinomial resampling takes each particle's parent as one of its ``K``
backward draws at the steps that resampled (``smoothing.ancestors_are_backward_draws``):
when it does, the draws it makes, its agreement with the RTS smoother, and the law of its
estimate against PaRIS drawing all ``K`` (a scheme that is multinomial resampling under
another name keeps every draw)."""

from __future__ import annotations

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import particlekit as pk
from particlekit import resampling, smoothing

SSM = pk.StateSpaceModel(
    initial=lambda: dist.Normal(0.0, 1.0),
    transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1.0),
    observation=lambda x, t: dist.Normal(x, 0.5),
)


def renamed_multinomial(key, log_weights, num_samples=None):
    """Multinomial resampling, not recognised as such: PaRIS makes all ``K`` draws."""
    return resampling.multinomial(key, log_weights, num_samples)


@pytest.mark.parametrize(
    "scheme,method,conditional,expected",
    [
        ("multinomial", "rejection", False, True),
        ("unsorted_multinomial", "exact", False, True),
        (resampling.multinomial, "auto", False, True),
        ("multinomial", "mcmc", False, False),
        ("multinomial", "rejection", True, True),
        (resampling.conditional_multinomial, "exact", True, True),
        (resampling.conditional_multinomial, "exact", False, False),
        ("systematic", "rejection", True, False),
        ("systematic", "rejection", False, False),
        ("stratified", "exact", False, False),
        (renamed_multinomial, "rejection", False, False),
    ],
)
def test_only_multinomial_parents_are_draws(scheme, method, conditional, expected):
    assert smoothing.ancestors_are_backward_draws(scheme, method, conditional) is expected


def _run(num_backward, ess_threshold, scheme="multinomial", method="rejection", n=512):
    _, ys = SSM.simulate(jax.random.key(0), 30)
    return pk.smoothing.paris(
        jax.random.key(1), SSM, ys, additive_fn=lambda xp, x, t: x, num_particles=n,
        num_backward=num_backward, resampling=scheme, ess_threshold=ess_threshold,
        method=method, progress_bar=False,
    )  # fmt: skip


def test_parents_replace_one_draw_at_the_steps_that_resampled():
    """``K = 1`` and resampling at every step: no draw at all (the genealogy-tracing
    smoother); never resampling: every draw made; ``K = 2``: half the exact draws of the
    same run with every draw made."""
    none_drawn = _run(1, 1.0)
    assert np.all(np.asarray(none_drawn.mean_trials) == 0)
    assert np.all(np.asarray(none_drawn.num_exact) == 0)
    assert np.all(np.asarray(none_drawn.resampled[1:]))
    all_drawn = _run(1, 0.0)
    assert not np.any(np.asarray(all_drawn.resampled[1:]))
    assert np.all(np.asarray(all_drawn.mean_trials[1:]) >= 1.0)
    exact_half = _run(2, 1.0, method="exact")
    exact_all = _run(2, 1.0, scheme=renamed_multinomial, method="exact")
    np.testing.assert_array_equal(np.asarray(exact_half.num_exact[1:]), 512)
    np.testing.assert_array_equal(np.asarray(exact_all.num_exact[1:]), 2 * 512)
    for res in (none_drawn, all_drawn, exact_half, exact_all):
        assert np.isfinite(float(res.estimate)) and not bool(res.failed)


def test_adaptive_resampling_draws_all_k_where_it_kept_the_particles():
    """``ess_threshold = 0.5``: the exact draws per step are ``N`` where the step
    resampled and ``2 N`` where it did not (``lax.cond`` on the step's flag)."""
    res = _run(2, 0.5, method="exact")
    resampled = np.asarray(res.resampled[1:])
    assert resampled.any() and not resampled.all()
    np.testing.assert_array_equal(np.asarray(res.num_exact[1:]), np.where(resampled, 512, 1024))


@pytest.mark.parametrize("scheme,per_step", [("multinomial", 256 + 1), ("systematic", 2 * 256)])
def test_conditional_sweeps_draw_the_reference_slot_and_take_the_other_parents(scheme, per_step):
    """PPG's conditional PaRIS: with (conditional) multinomial resampling the parents of
    slots ``1..N-1`` are draws and slot 0 (the reference, whose parent is pinned) gets one
    exact draw, so ``N + 1`` exact draws per step; ``2 N`` with systematic resampling."""
    _, ys = SSM.simulate(jax.random.key(0), 12)
    ref, _ = SSM.simulate(jax.random.key(2), 12)
    cfg = smoothing._paris_config(
        SSM, lambda xp, x, t: x, None, 256, 2, scheme, 0.5, "exact", None, 32
    )
    final, infos, _, _ = jax.jit(
        lambda k: smoothing.paris_forward(k, ys, ref, cfg=cfg, conditional=True)
    )(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(infos.num_exact[1:]), per_step)
    assert np.isfinite(float(final.estimate))


def test_one_draw_at_adaptive_steps_runs_under_x64():
    """``K = 1`` at ESS 0.5: the branch with nothing drawn and the one with a draw must
    return the same types under ``lax.cond``; under ``jax_enable_x64`` the nothing-drawn
    branch's ``mean_trials`` was float32 against float64 (a ``TypeError`` at trace
    time)."""
    with jax.enable_x64(True):
        res = _run(1, 0.5, method="exact", n=128)
    resampled = np.asarray(res.resampled[1:])
    assert resampled.any() and not resampled.all()
    np.testing.assert_array_equal(np.asarray(res.num_exact[1:]), np.where(resampled, 0, 128))
    assert res.mean_trials.dtype == np.float64


@pytest.mark.parametrize("num_backward", [1, 2])
def test_the_reference_slots_degenerate_row_is_counted(num_backward):
    """A reference that jumps where no previous particle can reach it (a transition density
    that underflows to zero at every one): slot 0's backward row has no finite entry, its
    draw is uniform, and ``num_degenerate`` reports it at that step only, whatever ``K``
    (with ``K = 1`` the reference slot's own exact draw is its only draw)."""
    narrow = pk.StateSpaceModel(
        initial=lambda: dist.Normal(0.0, 1.0),
        transition=lambda x_prev, t: dist.Normal(0.9 * x_prev, 1e-20),
        observation=lambda x, t: dist.Normal(x, 0.5),
    )
    _, ys = SSM.simulate(jax.random.key(0), 12)
    ref = (0.3 * 0.9 ** np.arange(12.0)).astype(np.float32)
    ref[6] = 50.0
    cfg = smoothing._paris_config(
        narrow, lambda xp, x, t: x, None, 64, num_backward, "multinomial", 0.5, "exact", None, 32
    )
    _, infos, _, _ = jax.jit(
        lambda k: smoothing.paris_forward(k, ys, ref, cfg=cfg, conditional=True)
    )(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(infos.num_degenerate), np.arange(12) == 6)
