"""The one definition of every metric the evaluation reports.

Every experiment, script and test imports its numbers from here, so a table can never mix
two definitions of the same quantity (the authors' code had three R^2 definitions). Inputs are
numpy arrays (anything ``np.asarray`` accepts), outputs are floats or small frozen records of
floats. Shapes are checked and a :class:`~cohere.errors.CohereError` says what was expected.

Conventions: ``y_true`` is (n, d) real latents (standardised on train); ``draws`` is (K, n, d),
K generated versions of the same n patients; distances are Euclidean. In reading order:

1. reconstruction: :func:`r2`, :func:`r2_runs`, :func:`calibrated_single_draw_r2`,
   :func:`output_variance_pct`, :func:`energy_score`, :func:`crps`, :func:`interval_coverage`,
   :func:`calibrated_coverage`, :func:`rank_histogram`
2. distributions and privacy: :func:`energy_distance`, :func:`precision_recall`, :func:`f1`,
   :func:`distance_to_closest_record`
3. downstream tasks: :func:`macro_f1`, :func:`balanced_accuracy`, :func:`surv_array`,
   :func:`concordance_index`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import sqrt

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.metrics import balanced_accuracy_score, f1_score, r2_score

from ..errors import CohereError

# rows of one block of a pairwise-distance matrix: blocks stay around 32 MB whatever n is
_BLOCK_ELEMENTS = 4_000_000


# ----------------------------------------------------------------------------- validation

def _matrix(name: str, x, *, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 (n, d) matrix with n >= ``min_rows``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise CohereError(f"{name} must be a 2-d array (samples, features); got shape {a.shape}")
    if a.shape[0] < min_rows or a.shape[1] < 1:
        raise CohereError(f"{name} needs at least {min_rows} row(s) and 1 column; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise CohereError(f"{name} contains NaN or infinite values; pass complete, finite rows")
    return a


def _truth_and_draws(y_true, draws, *, min_draws: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Check ``y_true`` (n, d) against ``draws`` (K, n, d) with K >= ``min_draws``."""
    y = _matrix("y_true", y_true)
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != y.shape:
        raise CohereError(f"draws must have shape (K, n, d) = (K, {y.shape[0]}, {y.shape[1]}) "
                          f"to match y_true; got {x.shape}")
    if x.shape[0] < min_draws:
        raise CohereError(f"draws needs at least {min_draws} draw(s) along axis 0; got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise CohereError("draws contains NaN or infinite values")
    return y, x


def _labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(y_true), np.asarray(y_pred)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise CohereError(f"y_true and y_pred must be 1-d label arrays of one non-zero length; "
                          f"got shapes {a.shape} and {b.shape}")
    return a, b


# ----------------------------------------------------------------------------- distances

def _blocks(a: np.ndarray, b: np.ndarray):
    """Yield (start, cdist(a[start:stop], b)) so that no block exceeds ~32 MB."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, len(b)))
    for start in range(0, len(a), rows):
        yield start, cdist(a[start:start + rows], b)


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of ||a_i - b_j|| over all n_a * n_b pairs (i = j included when a is b)."""
    return float(sum(block.sum() for _, block in _blocks(a, b)) / (len(a) * len(b)))


def _nearest_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n_a,) distance from each row of ``a`` to its nearest row of ``b``."""
    return np.concatenate([block.min(axis=1) for _, block in _blocks(a, b)])


def _kth_neighbour_radius(a: np.ndarray, k: int) -> np.ndarray:
    """(n,) distance from each row of ``a`` to its k-th nearest *other* row of ``a``.

    As ``prdc``: the (k+1)-th smallest distance in the row of the self-distance matrix, whose
    smallest entry is the point itself (0).
    """
    return np.concatenate([np.partition(block, k, axis=1)[:, k] for _, block in _blocks(a, a)])


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
    y, x = _truth_and_draws(y_true, draws)
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
    y, x = _truth_and_draws(y_true, draws, min_draws=2)
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

    y, x = _truth_and_draws(y_true, draws, min_draws=2)
    return float(np.mean(sr.es_ensemble(y, np.moveaxis(x, 0, 1), estimator="fair", backend="numpy")))


def crps(y_true, draws) -> float:
    """Continuous ranked probability score of each dimension, averaged over patients and
    dimensions (lower is better): the univariate counterpart of :func:`energy_score`,
    ``scoringrules.crps_ensemble(..., estimator="fair")``. For a point forecast it is the mean
    absolute error. ``draws``: (K, n, d) with K >= 2; ``y_true``: (n, d).
    """
    import scoringrules as sr

    y, x = _truth_and_draws(y_true, draws, min_draws=2)
    return float(np.mean(sr.crps_ensemble(y, np.moveaxis(x, 0, -1), estimator="fair", backend="numpy")))


def interval_coverage(y_true, draws, level: float) -> float:
    """Fraction of true values (over patients and dimensions) inside the central ``level``
    interval of the K draws, its ends the (1 - level)/2 and (1 + level)/2 empirical quantiles
    of each (patient, dimension) with linear interpolation (``numpy.quantile``'s default).

    A calibrated sampler (truth and draws from one distribution) covers
    :func:`calibrated_coverage` ``(level, K)`` = (K - 1) level / (K + 1), not ``level``.
    """
    y, x = _truth_and_draws(y_true, draws, min_draws=2)
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
    y, x = _truth_and_draws(y_true, draws, min_draws=1)
    ranks = (x < y[None]).sum(0)  # (n, d) in 0..K
    return np.bincount(ranks.ravel(), minlength=x.shape[0] + 1) / ranks.size


# ----------------------------------------------------------------------------- 2. distributions

def energy_distance(x, y) -> float:
    """Squared energy distance between two samples, V-statistic (as ``dcor.energy_distance``).

    D^2 = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||  (Szekely & Rizzo), each expectation the mean
    over *all* pairs of the two samples, i.e. within-sample means include the zero self-pairs
    (the V-statistic; it is >= 0 and 0 iff the two empirical distributions coincide).
    The paper's Table 3 reports the square root, ``sqrt(energy_distance(x, y))``.
    ``x``: (n, d), ``y``: (m, d).
    """
    a, b = _matrix("x", x), _matrix("y", y)
    if a.shape[1] != b.shape[1]:
        raise CohereError(f"x and y must have the same number of columns; got {a.shape[1]} and {b.shape[1]}")
    value = 2.0 * _mean_distance(a, b) - _mean_distance(a, a) - _mean_distance(b, b)
    return max(0.0, value)  # clip the rounding error of identical sets


@dataclass(frozen=True)
class PrecisionRecall:
    """k-NN manifold precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem
    et al. 2020), computed as the ``prdc`` package does."""

    precision: float  # fraction of fake samples inside the real manifold (fidelity)
    recall: float  # fraction of real samples inside the fake manifold (diversity)
    density: float
    coverage: float
    k: int

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (the paper's Table 3 "F1 score")."""
        return f1(self.precision, self.recall)


def precision_recall(real, fake, k: int = 10) -> PrecisionRecall:
    """Precision, recall, density and coverage of ``fake`` (m, d) against ``real`` (n, d).

    Each sample's manifold ball has radius its distance to its k-th nearest neighbour within
    its own set. precision = fraction of fake points strictly inside some real ball; recall =
    fraction of real points strictly inside some fake ball; density = mean over fake points of
    the number of real balls containing it, / k; coverage = fraction of real points whose ball
    contains its nearest fake point. Identical to ``prdc.compute_prdc(real, fake, k)`` up to
    float rounding (prdc computes distances with the dot-product formula, here directly).
    Both sets need more than k rows.
    """
    r, f = _matrix("real", real), _matrix("fake", fake)
    if r.shape[1] != f.shape[1]:
        raise CohereError(f"real and fake must have the same number of columns; "
                          f"got {r.shape[1]} and {f.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CohereError(f"k must be a positive integer; got {k!r}")
    if min(len(r), len(f)) <= k:
        raise CohereError(f"real and fake need more than k={k} rows each; got {len(r)} and {len(f)}")
    r_radius = _kth_neighbour_radius(r, k)  # (n,)
    f_radius = _kth_neighbour_radius(f, k)  # (m,)
    in_real = np.zeros(len(f), dtype=np.int64)  # per fake point: how many real balls contain it
    in_fake = np.zeros(len(r), dtype=bool)  # per real point: inside some fake ball
    covered = np.zeros(len(r), dtype=bool)  # per real point: nearest fake inside its own ball
    for start, d in _blocks(r, f):  # d: (rows, m) real x fake
        stop = start + len(d)
        inside = d < r_radius[start:stop, None]
        in_real += inside.sum(axis=0)
        in_fake[start:stop] = (d < f_radius[None, :]).any(axis=1)
        covered[start:stop] = d.min(axis=1) < r_radius[start:stop]
    return PrecisionRecall(precision=float((in_real > 0).mean()), recall=float(in_fake.mean()),
                           density=float(in_real.mean() / k), coverage=float(covered.mean()),
                           k=int(k))


def f1(precision: float, recall: float) -> float:
    """Harmonic mean 2 p r / (p + r); 0 when both are 0."""
    p, r = float(precision), float(recall)
    if not (0.0 <= p <= 1.0 and 0.0 <= r <= 1.0):
        raise CohereError(f"precision and recall must lie in [0, 1]; got {precision!r}, {recall!r}")
    return 0.0 if p + r == 0.0 else 2.0 * p * r / (p + r)


@dataclass(frozen=True)
class DCRResult:
    """Distance-to-closest-record privacy check; see :func:`distance_to_closest_record`."""

    median_generated: float  # median over generated samples of the distance to the nearest training record
    median_holdout: float  # the same for held-out real patients
    holdout_quantile: float  # the q-quantile of holdout DCR (q = ``quantile``)
    frac_below: float  # fraction of generated samples with DCR < holdout_quantile (expected: q)
    tolerance: float  # the largest frac_below that passes
    frac_copies: float  # fraction of generated samples within 1e-8 of a training record
    quantile: float
    passes: bool
    dcr_generated: np.ndarray = field(repr=False, compare=False)
    dcr_holdout: np.ndarray = field(repr=False, compare=False)

    @property
    def median_ratio(self) -> float:
        """median DCR(generated) / median DCR(holdout): below 1, generated samples sit closer."""
        return self.median_generated / self.median_holdout if self.median_holdout > 0 else float("inf")


def distance_to_closest_record(generated, train, holdout, *, quantile: float = 0.05,
                               z: float = 2.326) -> DCRResult:
    """Do generated samples lie closer to training patients than unseen patients do?

    DCR of a record = Euclidean distance to its nearest training record. ``holdout`` must be
    real patients *not* in ``train`` (e.g. the validation split): their DCR is what a generator
    that learned the distribution without memorising anyone should match. Memorised or
    near-copied patients show up as an excess of generated samples in the lower tail.

    Criterion. Let q_h be the ``quantile`` (default 5th percentile) of holdout DCR and f the
    fraction of generated samples with DCR < q_h. If generated samples were, as to their
    distance from the training set, like fresh patients, f would be ``quantile`` up to sampling
    noise of sd = sqrt(q (1 - q) (1/n_generated + 1/n_holdout)) (the binomial noise of f plus
    that of the empirical quantile). The check *passes* when f <= q + z sd, a one-sided test
    at level 1% for the default z = 2.326. Medians are reported beside it; a generator whose
    samples are merely typical (closer to dense regions) can have a lower median and still pass.
    ``generated``: (m, d), ``train``: (n, d), ``holdout``: (h, d).
    """
    g, t, h = _matrix("generated", generated), _matrix("train", train), _matrix("holdout", holdout)
    if not g.shape[1] == t.shape[1] == h.shape[1]:
        raise CohereError(f"generated, train and holdout must have the same number of columns; "
                          f"got {g.shape[1]}, {t.shape[1]} and {h.shape[1]}")
    if not 0.0 < quantile < 0.5:
        raise CohereError(f"quantile must be in (0, 0.5); got {quantile!r}")
    if not z >= 0.0:
        raise CohereError(f"z must be a non-negative number of standard deviations; got {z!r}")
    dcr_g, dcr_h = _nearest_distance(g, t), _nearest_distance(h, t)
    q_h = float(np.quantile(dcr_h, quantile))
    frac = float(np.mean(dcr_g < q_h))
    tol = quantile + z * sqrt(quantile * (1.0 - quantile) * (1.0 / len(g) + 1.0 / len(h)))
    return DCRResult(median_generated=float(np.median(dcr_g)), median_holdout=float(np.median(dcr_h)),
                     holdout_quantile=q_h, frac_below=frac, tolerance=tol,
                     frac_copies=float(np.mean(dcr_g <= 1e-8)), quantile=float(quantile),
                     passes=bool(frac <= tol), dcr_generated=dcr_g, dcr_holdout=dcr_h)


# ----------------------------------------------------------------------------- 3. downstream tasks

def macro_f1(y_true, y_pred) -> float:
    """Unweighted mean over classes of per-class F1 (``sklearn.metrics.f1_score(average="macro")``)."""
    a, b = _labels(y_true, y_pred)
    return float(f1_score(a, b, average="macro", zero_division=0))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall (``sklearn.metrics.balanced_accuracy_score``)."""
    a, b = _labels(y_true, y_pred)
    return float(balanced_accuracy_score(a, b))


SURV_DTYPE = np.dtype([("event", bool), ("time", np.float64)])


def surv_array(time, event) -> np.ndarray:
    """Survival target as scikit-survival expects it; the one place times and events are checked.

    Returns the structured array ``sksurv.util.Surv.from_arrays(event, time)`` builds (fields
    ``event`` bool and ``time`` float64). ``time``: (n,) finite and > 0 (drop patients with a
    missing or zero follow-up before calling); ``event``: (n,) of 0/1 or bool, 1 = death.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event)
    if t.ndim != 1 or e.shape != t.shape or t.size == 0:
        raise CohereError(f"time and event must be 1-d arrays of one non-zero length; "
                          f"got {t.shape} and {e.shape}")
    if not np.isfinite(t).all() or (t <= 0).any():
        bad = int((~np.isfinite(t) | (t <= 0)).sum())
        raise CohereError(f"survival times must be finite and > 0; {bad} are not "
                          "(drop patients without a positive follow-up time)")
    if e.dtype != bool:
        numeric = e.astype(np.float64) if e.dtype.kind in "iuf" else None
        if numeric is None or not np.isin(numeric, (0.0, 1.0)).all():
            raise CohereError("event must be boolean or 0/1 (1 = event observed, 0 = censored)")
        e = numeric.astype(bool)
    y = np.empty(t.shape[0], dtype=SURV_DTYPE)
    y["event"], y["time"] = e, t
    return y


def concordance_index(time, event, risk, *, tied_tol: float = 1e-8) -> float:
    """Harrell's concordance index of a risk score (higher risk = earlier event), computed by
    ``sksurv.metrics.concordance_index_censored(event, time, risk, tied_tol)``.

    A pair (i, j) is comparable when i has an event before j's observed time (sksurv's rule,
    tied times included); it is concordant when risk_i > risk_j, and counts 1/2 when
    |risk_i - risk_j| <= ``tied_tol``.
    C = (concordant + ties / 2) / comparable. ``time``, ``event`` as :func:`surv_array`;
    ``risk``: (n,) finite.
    """
    from sksurv.metrics import concordance_index_censored

    y = surv_array(time, event)
    r = np.asarray(risk, dtype=np.float64)
    if r.shape != y.shape or not np.isfinite(r).all():
        raise CohereError(f"risk must be a finite 1-d array with one value per patient "
                          f"({y.shape[0]}); got {r.shape}")
    try:
        return float(concordance_index_censored(y["event"], y["time"], r, tied_tol=tied_tol)[0])
    except ValueError as e:  # no comparable pairs, or no event at all
        raise CohereError(f"no comparable pairs ({e}): the C-index needs an event that happened "
                          "before another patient's observed time") from None
