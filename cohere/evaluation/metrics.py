"""The one definition of every metric the evaluation reports.

Every experiment, script and test imports its numbers from here, so a table can never mix
two definitions of the same quantity (the authors' code had three R^2 definitions); the
reconstruction scores are defined in :mod:`cohere.scores` (training scores its checkpoints
with them too) and re-exported here. Inputs are
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
from sklearn.metrics import balanced_accuracy_score, f1_score

from ..errors import CohereError
from ..scores import (R2Runs, as_matrix, calibrated_coverage, calibrated_single_draw_r2, crps,  # noqa: F401  (re-exported)
                      energy_score, interval_coverage, observed_r2, output_variance_pct, r2, r2_runs,
                      rank_histogram)


# rows of one block of a pairwise-distance matrix: blocks stay around 32 MB whatever n is
_BLOCK_ELEMENTS = 4_000_000


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


# ----------------------------------------------------------------------------- 2. distributions

def energy_distance(x, y) -> float:
    """Squared energy distance between two samples, V-statistic (as ``dcor.energy_distance``).

    D^2 = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||  (Szekely & Rizzo), each expectation the mean
    over *all* pairs of the two samples, i.e. within-sample means include the zero self-pairs
    (the V-statistic; it is >= 0 and 0 iff the two empirical distributions coincide).
    The paper's Table 3 reports the square root, ``sqrt(energy_distance(x, y))``.
    ``x``: (n, d), ``y``: (m, d).
    """
    a, b = as_matrix("x", x), as_matrix("y", y)
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
    r, f = as_matrix("real", real), as_matrix("fake", fake)
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
    g, t, h = as_matrix("generated", generated), as_matrix("train", train), as_matrix("holdout", holdout)
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
