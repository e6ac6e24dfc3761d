"""The names of docs/architecture.md §4 ("Public contract") are promises to users: every function,
keyword argument and result field listed there must exist. Signature checks only (no
compilation), so this file runs in a second."""

import inspect

import pytest

import particlekit as pk

# (callable, keyword arguments the contract uses by name, positional parameters in order)
CONTRACT = [
    (pk.resampling.multinomial, ["num_samples"], ["key", "log_weights"]),
    (pk.resampling.systematic, ["num_samples"], ["key", "log_weights"]),
    (pk.resampling.stratified, ["num_samples"], ["key", "log_weights"]),
    (pk.resampling.residual, ["num_samples"], ["key", "log_weights"]),
    (pk.resampling.ssp, ["num_samples"], ["key", "log_weights"]),
    (pk.resampling.killing, ["num_samples"], ["key", "log_weights"]),
    (pk.resampling.ess, [], ["log_weights"]),
    (pk.init, [], ["key", "sample_fn", "num_particles"]),
    (pk.move, [], ["fn"]),
    (pk.reweight, [], ["fn"]),
    (pk.resample, ["scheme", "ess_threshold"], []),
    (pk.mcmc, [], ["kernel", "num_steps"]),
    (pk.run, [], ["key", "step", "state", "inputs"]),
    (pk.StateSpaceModel, ["initial", "transition", "observation"], []),
    (pk.filters.bootstrap, ["num_particles"], ["key", "ssm", "ys"]),
    (pk.filters.guided, ["num_particles", "proposal"], ["key", "ssm", "ys"]),
    (pk.filters.auxiliary, ["num_particles"], ["key", "ssm", "ys"]),
    (pk.smoothing.ffbs, [], ["key", "ssm", "filter_result", "num_samples"]),
    (
        pk.smoothing.paris,
        ["additive_fn", "num_particles", "num_backward"],
        ["key", "ssm", "ys"],
    ),
    (pk.pgibbs.csmc, ["num_particles"], ["key", "ssm", "ys", "reference"]),
    (
        pk.pgibbs.ppg,
        ["additive_fn", "num_particles", "num_iterations", "burn_in"],
        ["key", "ssm", "ys"],
    ),
    (pk.filters.sqmc, ["num_particles"], ["key", "ssm", "ys"]),
    (pk.statespace.ParametricSSM, [], ["prior", "model_fn"]),
    (pk.statespace.pmmh, ["num_particles", "num_samples", "num_warmup"], ["key", "model", "ys"]),
    (
        pk.statespace.smc2,
        ["num_theta_particles", "num_x_particles"],
        ["key", "model", "ys"],
    ),
    (pk.statespace.particle_gibbs, ["num_samples", "num_particles"], ["key", "model", "ys"]),
    (pk.infer.SMC, ["num_particles"], ["model"]),
    (pk.diffusion.gaussian_mixture, ["weights", "means", "stds"], []),
    (
        pk.diffusion.fk_steering,
        ["num_particles", "lmbda", "potential"],
        ["key", "model", "reward_fn"],
    ),
    (pk.diffusion.fit_pdds_potential, ["dim"], ["key", "log_density"]),
    (pk.diffusion.pdds, ["dim", "num_particles", "potential"], ["key", "log_density"]),
]


@pytest.mark.parametrize(
    "fn, keywords, positional", CONTRACT, ids=lambda v: getattr(v, "__name__", "")
)
def test_signature(fn, keywords, positional):
    params = inspect.signature(fn).parameters
    names = list(params)
    assert names[: len(positional)] == positional
    for name in keywords:
        assert name in params, f"{fn.__name__} lost the keyword {name!r}"
        assert params[name].kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )


@pytest.mark.parametrize(
    "result_type, fields",
    [
        (pk.ParticleState, ["particles", "log_weights", "log_evidence", "ancestors"]),
        (pk.filters.FilterResult, ["log_evidence", "ess", "particles", "log_weights", "ancestors"]),
        (pk.smoothing.PaRISResult, ["estimate"]),
        (pk.pgibbs.PPGResult, ["estimate", "estimates"]),
        (pk.diffusion.FKSteeringResult, ["samples", "log_weights", "log_evidence"]),
        (pk.diffusion.PDDSResult, ["samples", "log_evidence"]),
        (pk.statespace.PMMHResult, ["theta", "paths"]),
        (pk.statespace.SMC2Result, ["theta", "paths", "log_evidence"]),
        (pk.statespace.ParticleGibbsDraws, ["theta", "paths"]),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_result_fields(result_type, fields):
    assert set(fields) <= set(result_type._fields)


def test_static_model_interface():
    for method in ["run", "get_samples", "print_summary", "to_inference_data"]:
        assert callable(getattr(pk.infer.SMC, method))
    assert isinstance(inspect.getattr_static(pk.infer.SMC, "log_evidence"), property)
    assert "group_by_chain" in inspect.signature(pk.infer.SMC.get_samples).parameters


def test_import_particlekit_leaves_heavy_dependencies_for_first_use():
    """``import particlekit`` loads no equinox, optax, BlackJAX or ArviZ (import time; see
    benchmarks/bench_import.py); the lazy subpackages still resolve as attributes."""
    import subprocess
    import sys

    code = (
        "import sys, particlekit as pk\n"
        "heavy = [m for m in ('equinox', 'optax', 'blackjax', 'arviz', 'xarray') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
        "print(pk.infer.SMC.__name__, pk.diffusion.pdds.__name__, pk.arviz.from_smc.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[]", lines
    assert lines[1] == "SMC pdds from_smc"
    assert set(pk.__all__) <= set(dir(pk))
