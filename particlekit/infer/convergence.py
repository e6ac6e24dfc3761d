"""When to trust a tempered-SMC run: diagnostics across independent chains, and warnings.

``particlekit.infer.SMC`` runs ``num_chains >= 2`` independent SMC samplers by
default. Each gives an (approximately) independent sample of the posterior and an
estimate of ``log Z``, so their agreement is checked after every run (on the host, in
NumPy, at negligible cost):

- **R-hat and bulk ESS** of every unconstrained coordinate, across chains: the particles of
  a chain are read as its draws, rank-normalised (Vehtari et al. 2021, eq. 14) and passed
  to NumPyro's split R-hat and effective sample size. Resampled duplicates lower the ESS;
  chains that settled in different places raise R-hat;
- **log Z agreement**: with perfect mixing the variance of ``log Z_hat`` of one chain is
  ``v = sum_t (1 / ESS_t - 1) / N`` (``ESS_t`` the ESS fraction after the stage's
  reweighting; the chi-square divergence between successive tempered targets). The spread of
  ``log Z`` across chains is compared with it: a sample variance beyond
  ``LOG_Z_VARIANCE_FACTOR`` times ``v`` means that the chains disagree by more than
  their Monte Carlo error;
- **effective sample size**: the smallest bulk ESS must reach ``MIN_ESS_PER_CHAIN``
  per chain (or ``MIN_ESS_FRACTION`` of a chain's particles, if that is fewer). A move
  that does not decorrelate the population from its resampled starting points leaves
  clumps of near-duplicates, which lower it. Stages whose number of MCMC steps hit the cap
  without meeting its criterion (correlation with the start above ``max_correlation`` for
  HMC, or for the Metropolis–Hastings kernels ``(1 - a)^k`` above
  ``decorrelation_threshold``) are counted and printed, and named in the warning when the
  ESS is low. A capped stage alone does not warn: on funnels, ridges and separated modes
  the cap is often hit while the sample is accurate (the posterior suite of
  ``benchmarks/bench_posteriors.py``), and what matters is whether the final sample holds
  enough independent draws and agrees across chains.

Any of these, or a run whose R-hat and ESS cannot be computed (fewer than 4 particles per
chain, non-finite positions), raises a ``UserWarning`` that names the likely fix.
``print_summary`` shows all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "RHAT_THRESHOLD",
    "MIN_ESS_PER_CHAIN",
    "MIN_ESS_FRACTION",
    "LOG_Z_VARIANCE_FACTOR",
    "ConvergenceReport",
    "rank_normalize",
    "stopped_chain_messages",
    "assess",
    "format_report",
]

RHAT_THRESHOLD = 1.01
MIN_ESS_PER_CHAIN = 100  # Vehtari et al. (2021): bulk ESS above 100 per chain ...
MIN_ESS_FRACTION = 0.1  # ... or a tenth of the particles of a chain, if fewer
# Real moves never mix perfectly, which inflates Var(log Z) over the ideal v by a factor of
# about 1.2-2 on well-resourced runs; 10 v (a 3.2x larger sd) is far outside that.
LOG_Z_VARIANCE_FACTOR = 10.0


class ConvergenceReport(NamedTuple):
    """Agreement of the chains of one run (NumPy arrays).

    Attributes
    ----------
    r_hat : ndarray, (D,)
        Rank-normalised split R-hat of each unconstrained coordinate. NaN, like
        ``ess_bulk``, when a chain has fewer than 4 particles or a final position is not
        finite; that is a failed check (a message), since nothing then vouches for the
        sample.
    ess_bulk : ndarray, (D,)
        Bulk effective sample size of each coordinate, over all chains.
    log_evidence : ndarray, (C,)
        ``log Z`` per chain.
    log_evidence_sd : float
        Sample sd of ``log Z`` across chains (NaN for one chain).
    ideal_log_evidence_sd : float
        The sd with perfect mixing, ``sqrt(mean_c v_c)``.
    final_ess : ndarray, (C,)
        ESS fraction of the last stage's weights (before the final resampling).
    capped_stages : ndarray, (C,) int
        Stages whose MCMC move hit the step cap without meeting its criterion.
    final_stage_capped : ndarray, (C,) bool
    messages : tuple of str
        One line per failed check (empty when every check passed).
    """

    r_hat: np.ndarray
    ess_bulk: np.ndarray
    log_evidence: np.ndarray
    log_evidence_sd: float
    ideal_log_evidence_sd: float
    final_ess: np.ndarray
    capped_stages: np.ndarray
    final_stage_capped: np.ndarray
    messages: tuple

    @property
    def trustworthy(self) -> bool:
        """No check failed."""
        return not self.messages


def rank_normalize(draws: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks of ``draws`` ``(C, N, ...)`` per coordinate
    (Vehtari et al. 2021, eq. 14; ties get their average rank).

    Examples
    --------
    >>> z = rank_normalize(np.array([[[3.0], [1.0]], [[2.0], [10.0]]]))
    >>> np.argsort(z.ravel()).tolist()
    [1, 2, 0, 3]
    """
    from scipy.special import ndtri

    c, n = draws.shape[:2]
    flat = draws.reshape((c * n, -1))
    order = np.argsort(flat, axis=0)
    sorted_values = np.take_along_axis(flat, order, axis=0)
    # a run of ties spans sorted positions first..last; each gets their mean 1-based rank
    position = np.arange(c * n)[:, None]
    starts = np.ones(sorted_values.shape, bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    ends = np.ones(sorted_values.shape, bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, position, c * n)[::-1], axis=0)[::-1]
    ranks = np.empty(flat.shape, np.float64)
    np.put_along_axis(ranks, order, 0.5 * (first + last) + 1.0, axis=0)
    z = ndtri((ranks - 0.375) / (c * n + 0.25))
    return z.reshape(draws.shape)


MAX_ASSESSED_PARTICLES = 2**14
"""R-hat and bulk ESS use at most this many particles per chain (evenly thinned, on the
device before the copy to the host): the host-side rank normalisation and FFT grow as
N log N and, on a GPU, took longer than the whole compiled run from N = 10^4 (at 2^16 they
were 50-80 % of `SMC.run` at N = 10^4-10^6 on an H200, see benchmarks/README.md). 2^14 draws
per chain still put the sampling error of R-hat far below `RHAT_THRESHOLD - 1`. The thinned
sample's ESS is a lower bound on the population's."""


def assess(
    positions: np.ndarray,
    log_evidence: np.ndarray,
    stage_ess: np.ndarray,
    num_stages: np.ndarray,
    capped: np.ndarray,
    num_particles: int,
    failed: np.ndarray | None = None,
    reached_max_stages: np.ndarray | None = None,
) -> ConvergenceReport:
    """Check a finished run.

    Parameters
    ----------
    positions : ndarray, (C, N, D)
        Final (equally weighted) unconstrained particles per chain.
    log_evidence : ndarray, (C,)
    stage_ess : ndarray, (C, S)
        ESS fraction after each stage's reweighting (NaN after the last stage).
    num_stages : ndarray, (C,)
    capped : ndarray, (C, S) bool
        Stages whose move hit the cap without meeting its criterion.
    num_particles : int
    failed, reached_max_stages : ndarray, (C,) bool, optional
        Chains whose run failed (every weight zero at some stage) or stopped at
        ``max_stages`` before temperature 1. Either makes the report untrustworthy
        (``stopped_chain_messages``): such a chain's particles are not posterior draws.
        The log Z agreement is then checked on the chains with a finite ``log Z``.

    Examples
    --------
    Two chains that agree, and two that do not:

    >>> rng = np.random.default_rng(0)
    >>> ess = np.full((2, 3), 0.5)
    >>> capped = np.zeros((2, 3), bool)
    >>> good = assess(rng.normal(size=(2, 1000, 2)), np.array([-3.0, -3.05]), ess,
    ...               np.array([3, 3]), capped, 1000)
    >>> good.trustworthy
    True
    >>> x = rng.normal(size=(2, 1000, 2)); x[1] += 1.0
    >>> bad = assess(x, np.array([-3.0, -5.0]), ess, np.array([3, 3]), capped, 1000)
    >>> bad.trustworthy, bad.messages[0][:22]
    (False, 'the chains disagree: R')
    """
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    if positions.shape[1] > MAX_ASSESSED_PARTICLES:  # an even thinning: O(N log N) host work
        stride = -(-positions.shape[1] // MAX_ASSESSED_PARTICLES)
        positions = positions[:, ::stride]  # before the copy to the host, for a device array
    positions = np.asarray(positions, np.float64)
    log_evidence = np.asarray(log_evidence, np.float64)
    c, n = positions.shape[:2]
    finite = np.all(np.isfinite(positions))
    if finite and n >= 4:
        z = rank_normalize(positions)
        r_hat = np.asarray(split_gelman_rubin(z), np.float64)
        ess_bulk = np.asarray(effective_sample_size(z), np.float64)
    else:
        r_hat = np.full(positions.shape[2:], np.nan)
        ess_bulk = np.full(positions.shape[2:], np.nan)
    ess = np.asarray(stage_ess, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ideal_var = np.nansum(1.0 / ess - 1.0, axis=1) / num_particles  # (C,)
    ideal_sd = float(np.sqrt(np.mean(ideal_var)))
    # the chains with a finite log Z (a failed chain's is -inf) are compared among themselves
    compared = np.isfinite(log_evidence)
    agree = int(np.sum(compared)) > 1
    sd = float(np.std(log_evidence[compared], ddof=1)) if agree else float("nan")
    if agree and not np.all(compared):
        ideal_sd = float(np.sqrt(np.mean(ideal_var[compared])))
    last = np.maximum(np.asarray(num_stages) - 1, 0)
    final_ess = ess[np.arange(c), last] if ess.shape[1] else np.full(c, np.nan)
    capped = np.asarray(capped, bool)
    capped_stages = capped.sum(axis=1)
    final_capped = capped[np.arange(c), last] if capped.shape[1] else np.zeros(c, bool)

    messages = stopped_chain_messages(failed, reached_max_stages)
    if not (finite and n >= 4):
        reason = (
            f"only {n} particle(s) per chain, at least 4 are needed"
            if n < 4
            else "some final particle positions are NaN or infinite"
        )
        messages.append(f"R-hat and the bulk ESS cannot be computed: {reason}")
    if np.any(r_hat > RHAT_THRESHOLD):
        worst = float(np.nanmax(r_hat))
        messages.append(
            f"the chains disagree: R-hat up to {worst:.3f} > {RHAT_THRESHOLD} on "
            f"{int(np.sum(r_hat > RHAT_THRESHOLD))} of {r_hat.size} coordinates"
        )
    if agree and sd**2 > LOG_Z_VARIANCE_FACTOR * ideal_sd**2:
        messages.append(
            f"log Z differs across chains by more than its Monte Carlo error: sd {sd:.3g} "
            f"against {ideal_sd:.3g} expected from the stages' ESS"
        )
    min_ess = float(np.nanmin(ess_bulk)) if np.any(np.isfinite(ess_bulk)) else np.nan
    per_chain = min(MIN_ESS_PER_CHAIN, MIN_ESS_FRACTION * n)
    if min_ess < per_chain * c:
        capped_note = (
            " (the final stage's MCMC move hit its step cap before the particles had moved "
            "away from their resampled starting points)"
            if np.any(final_capped)
            else ""
        )
        messages.append(
            f"the sample is worth few independent draws: bulk ESS {min_ess:.0f} over {c} "
            f"chain(s) of {n} particles, below {per_chain:.0f} per chain{capped_note}"
        )
    return ConvergenceReport(
        r_hat=r_hat,
        ess_bulk=ess_bulk,
        log_evidence=log_evidence,
        log_evidence_sd=sd,
        ideal_log_evidence_sd=ideal_sd,
        final_ess=final_ess,
        capped_stages=capped_stages,
        final_stage_capped=final_capped,
        messages=tuple(messages),
    )


def stopped_chain_messages(failed=None, reached_max_stages=None) -> list:
    """The report's lines for chains that did not reach the posterior: a failed stage
    (every weight zero; ``log Z = -inf``) or ``max_stages`` hit before temperature 1.
    ``SMC.run`` warns about these with their own ``RuntimeWarning``.

    Before they were part of the report, a run whose every chain had failed (a likelihood
    that is ``-inf`` on all the prior draws) had ``trustworthy == True``: the checks saw
    the prior draws agree across chains.

    Examples
    --------
    >>> stopped_chain_messages(np.array([False, True]), np.array([False, False]))[0][:24]
    'chain(s) [1] failed: at '
    >>> stopped_chain_messages(np.array([False, False]))
    []
    """
    messages = []
    if failed is not None and np.any(failed):
        messages.append(
            f"chain(s) {np.flatnonzero(failed).tolist()} failed: at some stage every particle "
            "had zero weight; their log Z is -inf and their particles are not posterior draws"
        )
    if reached_max_stages is not None and np.any(reached_max_stages):
        messages.append(
            f"chain(s) {np.flatnonzero(reached_max_stages).tolist()} stopped at max_stages "
            "before temperature 1: their particles are not posterior draws and their log Z "
            "is not the evidence"
        )
    return messages


FIX = (
    "The run may not be trustworthy. Likely fixes: more particles (num_particles), a larger "
    "cap on the MCMC steps per stage (max_mcmc_steps), smaller stages (a higher target_ess), "
    "or the gradient kernel (kernel='hmc', the default) if another kernel was chosen."
)


def format_report(report: ConvergenceReport) -> str:
    """The report as the lines printed by ``SMC.print_summary``."""
    le = report.log_evidence
    lines = [
        f"log evidence per chain: {np.array2string(le, precision=4)}"
        + (
            f"  (sd across chains {report.log_evidence_sd:.3g}; expected with perfect "
            f"mixing {report.ideal_log_evidence_sd:.3g})"
            if le.size > 1
            else ""
        ),
        f"max R-hat: {np.nanmax(report.r_hat):.4f}   min bulk ESS: {np.nanmin(report.ess_bulk):.0f}"
        if np.any(np.isfinite(report.r_hat))
        else "R-hat: not available",
        f"final-stage ESS fraction: {np.array2string(report.final_ess, precision=3)}",
        f"stages whose move hit the step cap: {report.capped_stages.tolist()}",
    ]
    if report.messages:
        lines += ["WARNING: " + m for m in report.messages]
    return "\n".join(lines)
