"""Regression tests from a user-style hunt with real data (scikit-learn and statsmodels
data sets) on static models fitted with ``pk.infer.SMC``, checked against NumPyro's NUTS
and closed forms.

Findings (symptom before the fix, then the fix):

1. Observations as a column vector (``y`` of shape ``(n, 1)``, as ``df[["y"]].values`` or a
   2-D ``endog`` gives them) against a mean of shape ``(n,)`` broadcast to an ``(n, n)``
   log-likelihood, inside a ``numpyro.plate`` too: every observation was paired with every
   mean. On a 50-point linear regression the slope came out ``0.00 ± 0.04`` (exact
   ``1.9 ± 0.17``) and ``log Z`` -5275 (exact -82), with agreeing chains,
   ``trustworthy == True`` and no warning. Fix: ``inspect_model`` compares each observed
   site's value with its distribution's batch shape and warns, naming the site and the
   shapes (``numpyro_adapter.warn_broadcast_observations``).

2. Observations and covariates of different lengths (40 ``y`` for 50 rows of ``x``)
   failed inside the compiled sampler with JAX's "sub got incompatible shapes for
   broadcasting: (40,), (50,)", naming neither the site nor the data. Fix: a
   ``ValueError`` before compiling that names the observed site, its shape, the
   distribution's batch shape and the shapes of the data passed to ``run``.

3. Any other error of the model on the data of ``run`` (a pandas ``Series`` used with
   traced parameters raised ``TracerArrayConversionError`` "... while tracing the function
   draw ..."; a list raised "'list' object has no attribute 'shape'") said nothing about
   the data. Fix: the error carries a note listing the type and shape of every argument
   and how to convert pandas objects and lists (``numpyro_adapter.data_description``).

4. Observations outside a support that the parameters do not move (Bernoulli labels
   coded -1/+1, standardised counts for a Poisson, negative data for an ``Exponential``)
   have log-density ``-inf`` at every parameter value: the run failed at its first stage
   with a ``RuntimeWarning`` about a likelihood "positive on only a small part of the
   prior" and advice to use more particles. Fix: a ``ValueError`` before compiling that
   names the site, its support and a bad value
   (``numpyro_adapter.observations_outside_support``); on new data of the same shapes
   (no new trace) the failed run's warning names them. Masked-out elements are not
   checked.

The hunt also ran, without finding a defect (so with no test here), 4 chains of 1000-2000
particles against NUTS (4 x 3000 draws) or the exact posterior: a conjugate linear
regression on statsmodels' raw, unstandardised longley data (design condition number
4.9e9, posterior 2.4e17, beyond float32: every kernel warned, R-hat 1.08-3.1); a binomial
GLM on star98 (21-D, |z| <= 1.9 MC errors, ``log Z`` sd 0.08 across chains); a
negative-binomial GLM on 1000 rows of randhie (|z| <= 1.8); a robust Student-t regression
with latent degrees of freedom on scotland (|z| <= 2.2); a 4-D multivariate normal with an
LKJ Cholesky factor and HalfNormal scales on iris setosa (|z| <= 2.2); a non-centred
hierarchical regression with varying intercepts and slopes (LKJ) on grunfeld (|z| <= 3.0
over 27 coordinates, NUTS had 17 divergences); logistic regression on ten raw,
unstandardised breast-cancer columns (|z| <= 1.1; ``log Z`` -115.89 at N = 1000 and
-115.90 at N = 4000); integer observations for a Normal likelihood and integer
covariates (correct).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import particlekit as pk

KEY = jax.random.key(0)


def linear_regression(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x, 1.0), obs=y)


def regression_data(n=20):
    rng = np.random.default_rng(0)
    x = rng.normal(size=n).astype(np.float32)
    y = (1.0 + 2.0 * x + rng.normal(size=n)).astype(np.float32)
    return x, y


def test_column_vector_observations_warn():
    """``y[:, None]`` against a mean of shape ``(n,)``: an ``(n, n)`` log-likelihood that
    the sampler fitted faithfully, with no warning. The check is on shapes only, so a
    few particles suffice; the column vector's slope is also far from the exact
    posterior's (``b | y`` Gaussian with sd ``1 / sqrt(sum x^2 + 1/25)``), which is why it
    must warn: the run below puts it about 9 exact sds away."""
    x, y = regression_data()
    smc = pk.infer.SMC(linear_regression, num_particles=200, kernel="rwm")
    with pytest.warns(UserWarning, match=r"broadcast.*'y'.*\(20, 1\).*\(20, 20\)"):
        smc.run(KEY, x, y[:, None])
    design = np.column_stack([np.ones_like(x), x]).astype(np.float64)
    precision = design.T @ design + np.eye(2) / 25.0
    exact_b = np.linalg.solve(precision, design.T @ y)[1]
    exact_sd_b = np.sqrt(np.linalg.inv(precision)[1, 1])
    assert abs(float(np.mean(smc.get_samples()["b"])) - exact_b) > 5 * exact_sd_b


def test_matching_observations_do_not_warn():
    """The same model with ``y`` of shape ``(n,)``: no broadcast warning."""
    x, y = regression_data()
    smc = pk.infer.SMC(linear_regression, num_particles=200, kernel="rwm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        smc.run(KEY, x, y)
    assert not [w for w in caught if "broadcast" in str(w.message)]


def test_observations_of_another_length_name_the_site():
    """40 observations for 50 covariates raised JAX's "sub got incompatible shapes for
    broadcasting" from inside the compiled sampler."""
    x, y = regression_data(50)
    smc = pk.infer.SMC(linear_regression, num_particles=50, kernel="rwm")
    with pytest.raises(ValueError, match=r"'y'.*\(40,\).*batch shape \(50,\)") as err:
        smc.run(KEY, x, y[:40])
    assert "args[0] float32 (50,), args[1] float32 (40,)" in str(err.value)


def test_a_model_error_on_the_data_lists_them():
    """A pandas ``Series`` multiplied by a traced parameter raised
    ``TracerArrayConversionError`` with no word about the data; the error now carries a
    note with the type and shape of every argument."""
    pd = pytest.importorskip("pandas")
    x, y = regression_data()
    smc = pk.infer.SMC(linear_regression, num_particles=50, kernel="rwm")
    with pytest.raises(Exception) as err:
        smc.run(KEY, pd.Series(x), pd.Series(y))
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "args[0] Series float32 (20,)" in notes
    assert ".to_numpy()" in notes


def logistic_regression(x, y=None):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(x.shape[1]), 2.0).to_event(1))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)


def classification_data(n=30):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    labels = (x @ np.array([1.5, -1.0]) + rng.logistic(size=n) > 0).astype(np.float32)
    return x, labels


def test_labels_outside_the_support_raise_before_compiling():
    """Labels coded -1/+1 for a Bernoulli: NumPyro gives -1 the log-density -inf at every
    parameter value, so the run failed at its first stage with a ``RuntimeWarning`` about a
    likelihood "positive on only a small part of the prior" and advice to use more
    particles. Now a ``ValueError`` names the site, its support and a bad value."""
    x, labels = classification_data()
    smc = pk.infer.SMC(logistic_regression, num_particles=50, kernel="rwm")
    with pytest.raises(ValueError, match=r"'y' \(BernoulliLogits, support Boolean\(\)\).*-1\.0"):
        smc.run(KEY, x, 2.0 * labels - 1.0)


def test_labels_outside_the_support_named_on_new_data():
    """New data of the same shapes reuse the compiled sampler without tracing the model
    again, so the check above does not run: the failed run's warning names the site
    instead (before, it spoke of the likelihood and the prior only)."""
    x, labels = classification_data()
    smc = pk.infer.SMC(logistic_regression, num_particles=50, kernel="rwm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 50 particles: only the compile matters here
        smc.run(KEY, x, labels)
    with pytest.warns(RuntimeWarning, match=r"outside the support.*'y'.*Recode the data"):
        smc.run(KEY, x, 2.0 * labels - 1.0)
    assert not smc.convergence.trustworthy


def test_masked_values_outside_the_support_are_allowed():
    """An out-of-support placeholder that a mask removes (``numpyro.handlers.mask``) is not
    a datum: no error, and the evidence is that of the kept data. Exact: the rate
    ``~ Gamma(2, 1)`` of exponential data gives ``log Z = log Gamma(2 + n) / Gamma(2) +
    2 log 1 - (2 + n) log(1 + sum y)``; 4 x 200 particles scatter ``log Z`` by about
    0.03 per chain, so 0.15 is several of their mean's sds."""

    def exponential(y, keep):
        rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
        with numpyro.plate("n", y.shape[0]), numpyro.handlers.mask(mask=keep):
            numpyro.sample("y", dist.Exponential(rate), obs=y)

    y = jnp.array([0.5, 1.5, -1.0, 0.8])
    keep = jnp.array([True, True, False, True])
    smc = pk.infer.SMC(exponential, num_particles=200, num_chains=4, kernel="rwm")
    smc.run(KEY, y, keep)
    from scipy.special import gammaln

    n, total = 3, 0.5 + 1.5 + 0.8
    exact = gammaln(2 + n) - gammaln(2) - (2 + n) * np.log(1 + total)
    assert abs(float(np.mean(smc.log_evidence)) - exact) < 0.15
