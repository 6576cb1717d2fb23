"""Each metric against a hand computation or the reference implementation it promises to match."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, r2_score

from cohere.errors import CohereError
from cohere.evaluation import metrics as M


@pytest.fixture
def small_blocks(monkeypatch):
    """Force the pairwise-distance code through many small blocks."""
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 37)


# ----------------------------------------------------------------------------- R^2 family

def test_r2_is_sklearn_variance_weighted():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 4)) * [1.0, 2.0, 0.5, 3.0]
    p = y + rng.normal(size=y.shape)
    assert M.r2(y, p) == pytest.approx(r2_score(y, p, multioutput="variance_weighted"), abs=1e-12)
    assert M.r2(y[:, 0], p[:, 0]) == pytest.approx(r2_score(y[:, 0], p[:, 0]), abs=1e-12)
    # by hand: 1 - sum of squared errors / sum of squared deviations, pooled over columns
    hand = 1 - ((y - p) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert M.r2(y, p) == pytest.approx(hand, abs=1e-12)
    assert M.r2(y, y) == 1.0
    assert M.r2(y, np.tile(y.mean(0), (50, 1))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("pred_shape", [(50, 3), (49, 4), (50,)])
def test_r2_rejects_mismatched_shapes(pred_shape):
    with pytest.raises(CohereError, match="shape"):
        M.r2(np.zeros((50, 4)), np.zeros(pred_shape))


def test_r2_rejects_nan():
    y = np.ones((5, 2))
    y[0, 0] = np.nan
    with pytest.raises(CohereError, match="finite"):
        M.r2(y, np.ones((5, 2)))


def test_r2_runs_per_draw_mean_sd_and_mean_of_draws():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(40, 3))
    draws = y[None] + rng.normal(scale=0.7, size=(5, 40, 3))
    runs = M.r2_runs(y, draws)
    per = [r2_score(y, d, multioutput="variance_weighted") for d in draws]
    assert runs.per_draw == pytest.approx(per)
    assert runs.mean == pytest.approx(np.mean(per))
    assert runs.sd == pytest.approx(np.std(per, ddof=1))
    assert runs.of_mean == pytest.approx(r2_score(y, draws.mean(0), multioutput="variance_weighted"))
    assert runs.of_mean > runs.mean  # averaging draws removes their independent noise
    assert runs.calibrated_single_draw == pytest.approx(2 * runs.of_mean - 1)
    assert math.isnan(M.r2_runs(y, draws[:1]).sd)
    with pytest.raises(CohereError, match=r"\(K, 40, 3\)"):
        M.r2_runs(y, draws[:, :30])


def test_calibrated_sampler_single_draw_r2_is_2r2_of_mean_minus_1():
    assert M.calibrated_single_draw_r2(0.8) == pytest.approx(0.6)
    assert M.calibrated_single_draw_r2(0.5) == pytest.approx(0.0)
    # a calibrated sampler: truth and draws are independent samples of the same posterior
    rng = np.random.default_rng(2)
    mean = rng.normal(size=(20000, 4))  # posterior means m(c)
    y = mean + rng.normal(scale=0.6, size=mean.shape)
    draw = mean + rng.normal(scale=0.6, size=mean.shape)
    assert M.r2(y, draw) == pytest.approx(M.calibrated_single_draw_r2(M.r2(y, mean)), abs=0.02)


# ----------------------------------------------------------------------------- spread and scores

def test_output_variance_pct_by_hand():
    y = np.array([[0.0], [2.0]])  # real variance (ddof=0) = 1
    draws = np.array([[[1.0], [2.0]],  # draw 1
                      [[3.0], [2.0]]])  # draw 2: patient 0 varies (var 1), patient 1 does not
    assert M.output_variance_pct(y, draws) == pytest.approx(50.0)
    with pytest.raises(CohereError, match="at least 2 draw"):
        M.output_variance_pct(y, draws[:1])


def test_energy_score_by_hand():
    y = np.array([[0.0, 0.0], [0.0, 0.0]])
    draws = np.array([[[3.0, 4.0], [1.0, 0.0]],
                      [[0.0, 0.0], [3.0, 0.0]],
                      [[-3.0, -4.0], [1.0, 0.0]]])  # (K=3, n=2, d=2)
    # patient 0: E|X-y| = (5+0+5)/3, E|X-X'| = 2*(5+10+5)/(3*2) -> ES = 10/3 - 10/3 = 0
    # patient 1: E|X-y| = (1+3+1)/3, E|X-X'| = 2*(2+0+2)/6 = 4/3 -> ES = 5/3 - 2/3 = 1
    assert M.energy_score(y, draws) == pytest.approx(0.5)


def test_energy_score_of_point_forecast_is_mean_euclidean_error():
    rng = np.random.default_rng(3)
    y, p = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    assert M.energy_score(y, np.stack([p, p, p])) == pytest.approx(np.linalg.norm(y - p, axis=1).mean())


def test_energy_score_prefers_the_true_distribution():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(2000, 2))
    calibrated = rng.normal(size=(10, 2000, 2))
    too_narrow = 0.3 * rng.normal(size=(10, 2000, 2))
    assert M.energy_score(y, calibrated) < M.energy_score(y, too_narrow)


def test_energy_score_matches_a_hand_computation_on_random_draws():
    rng = np.random.default_rng(7)
    y, x = rng.normal(size=(6, 3)), rng.normal(size=(5, 6, 3))
    to_truth = np.linalg.norm(x - y[None], axis=-1).mean(0)
    pairs = np.mean([[np.linalg.norm(x[i] - x[j], axis=-1) for j in range(5) if j != i] for i in range(5)], axis=(0, 1))
    assert M.energy_score(y, x) == pytest.approx(float(np.mean(to_truth - 0.5 * pairs)), abs=1e-12)


def test_crps_by_hand_and_of_a_point_forecast():
    y = np.array([[0.0]])
    draws = np.array([[[1.0]], [[-1.0]], [[2.0]]])  # K=3: E|X-y| = 4/3, E|X-X'| over k != l = (2+1+3)*2/6 = 2
    assert M.crps(y, draws) == pytest.approx(4 / 3 - 0.5 * 2)
    rng = np.random.default_rng(8)
    y, p = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    assert M.crps(y, np.stack([p, p])) == pytest.approx(np.abs(y - p).mean())


def test_coverage_of_a_calibrated_sampler_is_k_minus_1_over_k_plus_1():
    rng = np.random.default_rng(9)
    y = rng.normal(size=(4000, 2))
    draws = rng.normal(size=(50, 4000, 2))
    for level in (0.5, 0.9):
        expected = M.calibrated_coverage(level, 50)
        assert expected == pytest.approx(49 * level / 51)
        assert M.interval_coverage(y, draws, level) == pytest.approx(expected, abs=0.01)
    assert M.interval_coverage(y, 0.5 * draws, 0.9) < 0.65  # too narrow
    with pytest.raises(CohereError, match="level"):
        M.interval_coverage(y, draws, 1.5)


def test_rank_histogram_is_flat_when_calibrated_and_u_shaped_when_narrow():
    rng = np.random.default_rng(10)
    y = rng.normal(size=(3000, 2))
    flat = M.rank_histogram(y, rng.normal(size=(9, 3000, 2)))
    assert flat.shape == (10,) and flat.sum() == pytest.approx(1.0)
    assert np.abs(flat - 0.1).max() < 0.02
    narrow = M.rank_histogram(y, 0.3 * rng.normal(size=(9, 3000, 2)))
    assert narrow[0] > 0.25 and narrow[-1] > 0.25 and narrow[4] < 0.05


def test_energy_distance_identical_sets_is_zero(small_blocks):
    x = np.random.default_rng(5).normal(size=(20, 3))
    assert M.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shift", [0.25, 0.5, 0.9])
def test_energy_distance_of_shifted_1d_sets(shift, small_blocks):
    # {0, 1} vs {s, 1+s}: 2 * (1+s)/2 - 1/2 - 1/2 = s (= 2 * integral of (F - G)^2)
    x = np.array([[0.0], [1.0]])
    assert M.energy_distance(x, x + shift) == pytest.approx(shift)
    assert M.energy_distance([[0.0]], [[shift]]) == pytest.approx(2 * shift)


def test_energy_distance_matches_the_v_statistic(small_blocks):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(15, 3)), rng.normal(1.0, size=(11, 3))
    d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1).mean()  # noqa: E731
    assert M.energy_distance(x, y) == pytest.approx(2 * d(x, y) - d(x, x) - d(y, y))
    assert M.energy_distance(x, y) == pytest.approx(M.energy_distance(y, x))


# ----------------------------------------------------------------------------- precision / recall

def test_precision_recall_identical_and_far_sets(small_blocks):
    real = np.random.default_rng(7).normal(size=(40, 3))
    same = M.precision_recall(real, real.copy(), k=5)
    assert (same.precision, same.recall, same.coverage, same.f1) == (1.0, 1.0, 1.0, 1.0)
    far = M.precision_recall(real, real + 1000.0, k=5)
    assert (far.precision, far.recall, far.density, far.coverage, far.f1) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_precision_recall_fake_covers_half_the_real_support(small_blocks):
    real = np.column_stack([np.arange(100.0), np.zeros(100)])  # a line of unit-spaced points
    fake = real[:50].copy()  # the first half of it
    # k=1: every radius is 1 (the nearest other point); 50 -> 49 is 1, not strictly inside
    pr = M.precision_recall(real, fake, k=1)
    assert (pr.precision, pr.recall, pr.density, pr.coverage) == (1.0, 0.5, 1.0, 0.5)
    assert pr.f1 == pytest.approx(2 / 3)
    # k=2: the fake end point 49 has radius 2 (its 2nd neighbour other than itself), so real 50
    # (distance 1) is inside, real 51 (distance 2) is not
    assert M.precision_recall(real, fake, k=2).recall == pytest.approx(0.51)


def test_precision_recall_matches_prdc(small_blocks):
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(60, 4)), rng.normal(0.5, 1.3, size=(45, 4))
    ours = M.precision_recall(real, fake, k=5)
    theirs = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, name) == pytest.approx(theirs[name]), name


def test_precision_recall_rejects_bad_input():
    with pytest.raises(CohereError, match="more than k=10"):
        M.precision_recall(np.zeros((10, 2)), np.zeros((30, 2)))
    with pytest.raises(CohereError, match="columns"):
        M.precision_recall(np.zeros((30, 2)), np.zeros((30, 3)))
    with pytest.raises(CohereError, match="positive integer"):
        M.precision_recall(np.zeros((30, 2)), np.zeros((30, 2)), k=0)


def test_f1():
    assert M.f1(0.0, 0.0) == 0.0
    assert M.f1(1.0, 0.5) == pytest.approx(2 / 3)
    with pytest.raises(CohereError):
        M.f1(1.5, 0.5)


# ----------------------------------------------------------------------------- privacy

def test_dcr_fresh_samples_pass_and_copies_fail(small_blocks):
    rng = np.random.default_rng(9)
    train, holdout, fresh = (rng.normal(size=(n, 4)) for n in (300, 150, 200))
    ok = M.distance_to_closest_record(fresh, train, holdout)
    assert ok.passes and ok.frac_copies == 0.0
    assert 0.5 < ok.median_ratio < 1.5
    copies = train[rng.choice(300, 200)] + rng.normal(scale=1e-3, size=(200, 4))
    bad = M.distance_to_closest_record(copies, train, holdout)
    assert not bad.passes and bad.frac_below == 1.0 and bad.median_ratio < 0.01
    assert M.distance_to_closest_record(train[:50], train, holdout).frac_copies == 1.0
    # the threshold is the holdout's 5th percentile of nearest-training distances, by hand
    nearest = np.linalg.norm(holdout[:, None] - train[None], axis=-1).min(axis=1)
    assert ok.holdout_quantile == pytest.approx(np.quantile(nearest, 0.05))


# ----------------------------------------------------------------------------- downstream

def test_macro_f1_and_balanced_accuracy_are_sklearn():
    rng = np.random.default_rng(10)
    y, p = rng.choice(["a", "b", "c"], 80), rng.choice(["a", "b", "c"], 80)
    assert M.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    assert M.balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))
    with pytest.raises(CohereError, match="1-d"):
        M.macro_f1(y, p[:-1])


def test_surv_array_is_the_sksurv_structure():
    sksurv_util = pytest.importorskip("sksurv.util")
    y = M.surv_array([10, 25.5, 15], [1, 0, 1])
    expected = sksurv_util.Surv.from_arrays(event=[True, False, True], time=[10, 25.5, 15])
    assert y.dtype == expected.dtype and (y == expected).all()
    assert (M.surv_array([1.0, 2.0], [True, False]) == sksurv_util.Surv.from_arrays([1, 0], [1.0, 2.0])).all()


@pytest.mark.parametrize("time, event, match", [
    ([0.0, 2.0], [1, 0], "> 0"),
    ([np.nan, 2.0], [1, 0], "> 0"),
    ([1.0, 2.0], [2, 0], "0/1"),
    ([1.0, 2.0], ["yes", "no"], "0/1"),
    ([1.0, 2.0], [1], "one non-zero length"),
])
def test_surv_array_rejects_bad_targets(time, event, match):
    with pytest.raises(CohereError, match=match):
        M.surv_array(time, event)


def test_concordance_index_by_hand():
    time, event = [1.0, 2.0, 3.0, 4.0], [1, 1, 0, 1]
    assert M.concordance_index(time, event, [4.0, 3.0, 2.0, 1.0]) == 1.0
    assert M.concordance_index(time, event, [1.0, 2.0, 3.0, 4.0]) == 0.0
    assert M.concordance_index(time, event, [1.0, 1.0, 1.0, 1.0]) == 0.5
    # comparable pairs (event first): (0,1) (0,2) (0,3) (1,2) (1,3); patient 2 is censored and
    # 3 has the last time. risk = [2, 3, 1, 0]: (0,1) discordant, the other four concordant
    assert M.concordance_index(time, event, [2.0, 3.0, 1.0, 0.0]) == pytest.approx(0.8)


@pytest.mark.parametrize("seed", range(4))
def test_concordance_index_matches_sksurv_with_ties(seed, monkeypatch):
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 500)  # several blocks of events
    rng = np.random.default_rng(seed)
    n = 120
    time = rng.integers(1, 15, n).astype(float)  # many tied times
    event = rng.random(n) < 0.6
    risk = np.round(rng.normal(size=n) - 0.1 * time, 1)  # tied risks, informative
    expected = sksurv_metrics.concordance_index_censored(event, time, risk)[0]
    assert M.concordance_index(time, event, risk) == pytest.approx(expected, abs=1e-12)


def test_concordance_index_without_comparable_pairs_raises():
    with pytest.raises(CohereError, match="comparable"):
        M.concordance_index([1.0, 2.0], [0, 0], [0.5, 0.1])
    with pytest.raises(CohereError, match="risk"):
        M.concordance_index([1.0, 2.0], [1, 0], [0.5])
