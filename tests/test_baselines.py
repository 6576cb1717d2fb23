"""Point-imputation baselines on synthetic latents with a known linear structure."""

from __future__ import annotations

import numpy as np
import pytest

from cohere.errors import CohereError
from cohere.evaluation import baselines as B
from cohere.evaluation.metrics import r2


@pytest.fixture(scope="module")
def linear():
    """Y = X W + noise: the oracle's held-out R^2 is the truth every linear baseline should reach."""
    rng = np.random.default_rng(0)
    n, p, d = 1200, 6, 3
    w = rng.normal(size=(p, d))
    x = rng.normal(size=(n, p))
    y = x @ w + rng.normal(scale=1.5, size=(n, d))
    train, test = slice(0, 800), slice(800, None)
    oracle = r2(y[test], x[test] @ w)
    return x[train], y[train], x[test], y[test], oracle


def test_ridge_reaches_the_oracle_r2(linear):
    xtr, ytr, xte, yte, oracle = linear
    assert 0.6 < oracle < 0.9
    model = B.RidgeImputer().fit(xtr, ytr)
    assert r2(yte, model.predict(xte)) == pytest.approx(oracle, abs=0.02)
    assert model.alpha_ in B.DEFAULT_ALPHAS


def test_mean_imputer_has_zero_r2_on_held_out_data(linear):
    xtr, ytr, xte, yte, _ = linear
    pred = B.MeanImputer().fit(xtr, ytr).predict(xte)
    assert np.allclose(pred, ytr.mean(axis=0))
    assert r2(yte, pred) == pytest.approx(0.0, abs=0.02)


def test_iterative_imputer_recovers_the_linear_relation(linear):
    xtr, ytr, xte, yte, oracle = linear
    model = B.IterativeImputer().fit(xtr, ytr)
    pred = model.predict(xte)
    assert pred.shape == yte.shape
    assert r2(yte, pred) == pytest.approx(oracle, abs=0.03)
    assert np.array_equal(pred, B.IterativeImputer().fit(xtr, ytr).predict(xte))  # deterministic


def test_knn_is_deterministic_and_averages_its_neighbours(linear):
    xtr, ytr, xte, yte, oracle = linear
    a = B.KNNRegressorImputer().fit(xtr, ytr).predict(xte)
    assert np.array_equal(a, B.KNNRegressorImputer().fit(xtr, ytr).predict(xte))
    assert 0.3 < r2(yte, a) < oracle  # nonparametric: below the linear oracle, well above 0
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    y = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 1.0], [7.0, 1.0], [9.0, 1.0]])
    pred = B.KNNRegressorImputer(n_neighbors=2).fit(x, y).predict([[0.4], [10.8]])
    assert np.allclose(pred, [[2.0, 0.0], [8.0, 1.0]])


def test_random_neighbour_draws_are_training_targets_of_near_neighbours():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    y = np.arange(12.0).reshape(6, 2)
    sampler = B.RandomNeighbourSampler(n_neighbors=3).fit(x, y)
    draws = sampler.sample([[0.5], [11.2]], n_draws=50, seed=1)
    assert draws.shape == (50, 2, 2)
    assert {tuple(r) for r in draws[:, 0]} == {tuple(r) for r in y[:3]}  # every near neighbour, nothing else
    assert {tuple(r) for r in draws[:, 1]} == {tuple(r) for r in y[3:]}
    assert np.array_equal(draws, sampler.sample([[0.5], [11.2]], n_draws=50, seed=1))
    assert not np.array_equal(draws, sampler.sample([[0.5], [11.2]], n_draws=50, seed=2))
    assert np.allclose(sampler.predict([[0.5]]), y[:3].mean(axis=0))


def test_point_imputer_draws_are_copies_of_the_prediction(linear):
    xtr, ytr, xte, _, _ = linear
    model = B.RidgeImputer().fit(xtr, ytr)
    draws = model.sample(xte[:7], n_draws=4, seed=0)
    assert draws.shape == (4, 7, 3)
    assert np.array_equal(draws[2], model.predict(xte[:7]))


def test_input_validation():
    x, y = np.zeros((20, 2)), np.zeros((20, 3))
    with pytest.raises(CohereError, match="not fitted"):
        B.MeanImputer().predict(x)
    with pytest.raises(CohereError, match="one row per patient"):
        B.MeanImputer().fit(x, y[:10])
    with pytest.raises(CohereError, match="2 columns seen in fit"):
        B.RidgeImputer().fit(x, y).predict(np.zeros((5, 3)))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(CohereError, match="NaN"):
        B.KNNRegressorImputer().fit(bad, y)
    with pytest.raises(CohereError, match="exceeds the 20 training patients"):
        B.KNNRegressorImputer(n_neighbors=30).fit(x, y)
    with pytest.raises(CohereError, match="n_draws"):
        B.RandomNeighbourSampler().fit(x, y).sample(x, n_draws=0)
