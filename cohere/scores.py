"""Scores of generated latents against the truth: the one definition of each, shared by the
checkpoint selection of training (the experts layer) and by the evaluation, which re-exports
them from :mod:`cohere.evaluation.metrics`. It sits low in the layers (numpy, scikit-learn and
scoringrules only), so that training can score its validation generations without importing
the evaluation.

Conventions: ``y_true`` is (n, d) real latents (standardised on train); ``draws`` is (K, n, d),
K generated versions of the same n patients. Shapes are checked and a
:class:`~cohere.errors.CohereError` says what was expected. In reading order: :func:`r2`,
:func:`calibrated_single_draw_r2`, :func:`r2_runs`, :func:`output_variance_pct`,
:func:`energy_score`, :func:`crps`, :func:`interval_coverage`, :func:`calibrated_coverage`,
:func:`rank_histogram`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import r2_score

from .errors import CohereError

# ----------------------------------------------------------------------------- validation

def as_matrix(name: str, x, *, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 (n, d) matrix with n >= ``min_rows``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise CohereError(f"{name} must be a 2-d array (samples, features); got shape {a.shape}")
    if a.shape[0] < min_rows or a.shape[1] < 1:
        raise CohereError(f"{name} needs at least {min_rows} row(s) and 1 column; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise CohereError(f"{name} contains NaN or infinite values; pass complete, finite rows")
    return a


def truth_and_draws(y_true, draws, *, min_draws: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Check ``y_true`` (n, d) against ``draws`` (K, n, d) with K >= ``min_draws``."""
    y = as_matrix("y_true", y_true)
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != y.shape:
        raise CohereError(f"draws must have shape (K, n, d) = (K, {y.shape[0]}, {y.shape[1]}) "
                          f"to match y_true; got {x.shape}")
    if x.shape[0] < min_draws:
        raise CohereError(f"draws needs at least {min_draws} draw(s) along axis 0; got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise CohereError("draws contains NaN or infinite values")
    return y, x


# ----------------------------------------------------------------------------- 1. reconstruction

def r2(y_true, y_pred) -> float:
    """Coefficient of determination, pooled over dimensions.

    Exactly ``sklearn.metrics.r2_score(y_true, y_pred, multioutput="variance_weighted")``:
    ``1 - sum_j SS_res_j / sum_j SS_tot_j`` over the d columns, i.e. one minus the mean squared
    error over the total variance of the (standardised) latents. 1 is perfect, 0 is predicting
    the mean of ``y_true``, negative is worse. ``y_true`` and ``y_pred``: (n, d) or (n,), n >= 2.
    """
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape != p.shape or y.shape[0] < 2:
        raise CohereError(f"y_true and y_pred must have one shape (n, d) or (n,) with n >= 2; "
                          f"got {y.shape} and {p.shape}")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise CohereError("y_true and y_pred must be finite (no NaN rows: drop unobserved patients)")
    return float(r2_score(y, p, multioutput="variance_weighted"))


def observed_r2(truth, pred) -> float:
    """Variance-weighted R^2 of ``pred`` against ``truth`` (n, p) over the observed (non-NaN)
    cells of ``truth``: 1 - SSE / SST around each column's observed mean. The feature-space
    score (features may be missing; latents never are)."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    if truth.shape != pred.shape:
        raise CohereError(f"truth and prediction differ in shape: {truth.shape} vs {pred.shape}")
    obs = ~np.isnan(truth)
    sst = ((truth - np.nanmean(truth, axis=0)) ** 2)[obs].sum()
    return float(1.0 - ((truth - pred) ** 2)[obs].sum() / sst)


def calibrated_single_draw_r2(r2_of_mean: float) -> float:
    """The R^2 a single draw of a *calibrated* sampler has, given the R^2 of its posterior mean.

    If a draw x and the truth y are independent samples of the same posterior p(. | c) with mean
    m(c), then E||x - y||^2 = 2 E||y - m(c)||^2: one draw has twice the squared error of the
    posterior mean, so ``1 - R^2(draw) = 2 (1 - R^2(mean))``, i.e.
    ``R^2(draw) = 2 R^2(mean) - 1``. Single-draw R^2 well below this line means the sampler is
    miscalibrated (too diffuse or biased); well above it, its posterior mean is not the best
    point estimate or its spread is too narrow. Use the K-draw mean's R^2 as the estimate of
    R^2(mean) (it is slightly pessimistic for finite K).
    """
    value = float(r2_of_mean)
    if not np.isfinite(value):
        raise CohereError(f"r2_of_mean must be a finite number; got {r2_of_mean!r}")
    return 2.0 * value - 1.0


@dataclass(frozen=True)
class R2Runs:
    """R^2 of K generation runs: per draw (the paper's metric) and of the K-draw mean."""

    per_draw: tuple[float, ...]
    mean: float  # mean of per_draw (the paper's Table 1 number)
    sd: float  # sample standard deviation (ddof=1) of per_draw; NaN when K = 1
    of_mean: float  # R^2 of the mean of the K draws (a point estimate of the posterior mean)

    @property
    def calibrated_single_draw(self) -> float:
        """The single-draw R^2 a calibrated sampler with this ``of_mean`` would have."""
        return calibrated_single_draw_r2(self.of_mean)


def r2_runs(y_true, draws) -> R2Runs:
    """:func:`r2` of each of K draws (K, n, d) against ``y_true`` (n, d), and of their mean."""
    y, x = truth_and_draws(y_true, draws)
    per_draw = tuple(r2(y, xk) for xk in x)
    sd = float(np.std(per_draw, ddof=1)) if len(per_draw) > 1 else float("nan")
    return R2Runs(per_draw=per_draw, mean=float(np.mean(per_draw)), sd=sd,
                  of_mean=r2(y, x.mean(axis=0)))


def output_variance_pct(y_true, draws) -> float:
    """Spread of the draws as a percentage of the real data's variance (the paper's Table 1).

    For each patient the variance across the K draws (ddof=0), averaged over the d dimensions
    and the n patients, divided by the variance of ``y_true`` over patients (ddof=0) averaged
    over dimensions, times 100. ``draws``: (K, n, d) with K >= 2; ``y_true``: (n, d), n >= 2.
    """
    y, x = truth_and_draws(y_true, draws, min_draws=2)
    real = float(y.var(axis=0).mean())
    if y.shape[0] < 2 or real == 0.0:
        raise CohereError("y_true needs at least 2 rows that are not all identical "
                          "to define the real variance")
    return 100.0 * float(x.var(axis=0).mean()) / real


def energy_score(y_true, draws) -> float:
    """Multivariate energy score of K draws per patient, averaged over patients (lower is better).

    ES(F, y) = E||X - y|| - 1/2 E||X - X'||  with X, X' ~ F independent (Gneiting & Raftery
    2007), a strictly proper score of the whole predictive distribution, computed by
    ``scoringrules.es_ensemble(..., estimator="fair")``: the unbiased pair form
    (1/K) sum_k ||x_k - y|| - 1 / (2 K (K-1)) sum_{k != l} ||x_k - x_l||. For K identical
    draws (a point forecast) it is the mean Euclidean error.
    ``draws``: (K, n, d) with K >= 2; ``y_true``: (n, d).
    """
    import scoringrules as sr

    y, x = truth_and_draws(y_true, draws, min_draws=2)
    return float(np.mean(sr.es_ensemble(y, np.moveaxis(x, 0, 1), estimator="fair", backend="numpy")))


def crps(y_true, draws) -> float:
    """Continuous ranked probability score of each dimension, averaged over patients and
    dimensions (lower is better): the univariate counterpart of :func:`energy_score`,
    ``scoringrules.crps_ensemble(..., estimator="fair")``. For a point forecast it is the mean
    absolute error. ``draws``: (K, n, d) with K >= 2; ``y_true``: (n, d).
    """
    import scoringrules as sr

    y, x = truth_and_draws(y_true, draws, min_draws=2)
    return float(np.mean(sr.crps_ensemble(y, np.moveaxis(x, 0, -1), estimator="fair", backend="numpy")))


def interval_coverage(y_true, draws, level: float) -> float:
    """Fraction of true values (over patients and dimensions) inside the central ``level``
    interval of the K draws, its ends the (1 - level)/2 and (1 + level)/2 empirical quantiles
    of each (patient, dimension) with linear interpolation (``numpy.quantile``'s default).

    A calibrated sampler (truth and draws from one distribution) covers
    :func:`calibrated_coverage` ``(level, K)`` = (K - 1) level / (K + 1), not ``level``.
    """
    y, x = truth_and_draws(y_true, draws, min_draws=2)
    if not 0.0 < float(level) < 1.0:
        raise CohereError(f"level must be in (0, 1); got {level!r}")
    lo, hi = np.quantile(x, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)  # (n, d) each
    return float(np.mean((y >= lo) & (y <= hi)))


def calibrated_coverage(level: float, k: int) -> float:
    """Expected :func:`interval_coverage` of a calibrated sampler with ``k`` draws.

    If the truth and the K draws are exchangeable, the truth's rank among them is uniform on
    0..K, so P(truth < the j-th smallest draw) = j / (K + 1). ``numpy.quantile`` puts the q
    quantile at 0-based order position q (K - 1), hence the central ``level`` interval holds
    the truth with probability (K - 1) level / (K + 1): 0.865 for level 0.9 and K = 50.
    """
    if not 0.0 < float(level) < 1.0 or isinstance(k, bool) or int(k) != k or k < 2:
        raise CohereError(f"need 0 < level < 1 and an integer k >= 2; got {level!r}, {k!r}")
    return (k - 1) * float(level) / (k + 1)


def rank_histogram(y_true, draws) -> np.ndarray:
    """(K + 1,) fractions: how often the truth is exceeded by 0, 1, ..., K of the K draws,
    over every (patient, dimension): the Talagrand / PIT rank histogram, rank = the number of
    draws below the truth. Flat (1 / (K + 1) each) = calibrated; U-shaped = draws too narrow;
    hump-shaped = too wide; sloped = biased."""
    y, x = truth_and_draws(y_true, draws, min_draws=1)
    ranks = (x < y[None]).sum(0)  # (n, d) in 0..K
    return np.bincount(ranks.ravel(), minlength=x.shape[0] + 1) / ranks.size
