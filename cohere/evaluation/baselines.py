"""Point-imputation baselines for a missing modality's latent, the comparison rows of the tables.

Each baseline is fitted on real training patients that have both the conditions and the
target: ``fit(X_cond, Y)`` with ``X_cond`` (n, p) the available modalities' standardised
latents side by side (``np.hstack`` in a fixed modality order) and ``Y`` (n, d) the target's
latents; ``predict(X_cond) -> (n, d)``. ``sample(X_cond, n_draws, seed) -> (K, n, d)`` makes
every baseline scorable by the same draw-based metrics as the generators (a point imputer's
K draws are K copies of its prediction: its energy score is then its mean Euclidean error).

- :class:`MeanImputer`: the training mean of the target, whatever the conditions (R^2 = 0 floor).
- :class:`KNNRegressorImputer`: mean target of the k nearest training patients in condition space.
- :class:`RidgeImputer`: linear regression with an L2 penalty chosen by leave-one-out (RidgeCV).
- :class:`IterativeImputer`: sklearn's chained-equation imputer (MICE-style, BayesianRidge) on
  the concatenated [conditions, target] matrix with the target missing.
- :class:`RandomNeighbourSampler`: a stochastic floor, the target of a random one of the k
  nearest training patients (a "generator" that can only copy training records).

MOFA+ (``mofapy2``) is not included: it is a factor model fitted on all modalities at once with
its own HDF5-based training loop, not a conditional regressor, and would be an optional extra.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (registers the class)
from sklearn.impute import IterativeImputer as _SklearnIterativeImputer
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.neighbors import NearestNeighbors

from ..errors import CohereError

DEFAULT_ALPHAS = tuple(np.logspace(-3, 3, 13))


# ----------------------------------------------------------------------------- validation

def _matrix(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise CohereError(f"{name} must be a non-empty 2-d array (patients, features); got shape {a.shape}")
    if not np.isfinite(a).all():
        raise CohereError(f"{name} contains NaN or infinite values; pass only patients that have "
                          "every conditioning modality (and, for fit, the target)")
    return a


def _check_k(k, n_train: int | None = None) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CohereError(f"n_neighbors must be a positive integer; got {k!r}")
    if n_train is not None and k > n_train:
        raise CohereError(f"n_neighbors={k} exceeds the {n_train} training patients; lower it")
    return int(k)


class PointImputer:
    """Shared fit/predict checks and ``sample`` for the deterministic baselines."""

    def fit(self, X_cond, Y) -> PointImputer:
        X, Y = _matrix("X_cond", X_cond), _matrix("Y", Y)
        if X.shape[0] != Y.shape[0]:
            raise CohereError(f"X_cond and Y must have one row per patient; "
                              f"got {X.shape[0]} and {Y.shape[0]} rows")
        self.n_features_in_ = X.shape[1]
        self.n_targets_ = Y.shape[1]
        self._fit(X, Y)
        return self

    def predict(self, X_cond) -> np.ndarray:
        return self._predict(self._check_predict(X_cond))

    def sample(self, X_cond, n_draws: int = 10, seed: int | None = None) -> np.ndarray:
        """(K, n, d): K identical copies of ``predict`` (``seed`` is accepted and unused)."""
        k = _check_draws(n_draws)
        y = self.predict(X_cond)
        return np.broadcast_to(y, (k, *y.shape)).copy()

    def _check_predict(self, X_cond) -> np.ndarray:
        if not hasattr(self, "n_features_in_"):
            raise CohereError(f"{type(self).__name__} is not fitted; call fit(X_cond, Y) first")
        X = _matrix("X_cond", X_cond)
        if X.shape[1] != self.n_features_in_:
            raise CohereError(f"X_cond must have the {self.n_features_in_} columns seen in fit; "
                              f"got {X.shape[1]}")
        return X

    def _fit(self, X: np.ndarray, Y: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_draws(n_draws) -> int:
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise CohereError(f"n_draws must be a positive integer; got {n_draws!r}")
    return int(n_draws)


# ----------------------------------------------------------------------------- baselines

class MeanImputer(PointImputer):
    """Predict the training mean of the target for every patient (ignores the conditions)."""

    def _fit(self, X, Y):
        self.mean_ = Y.mean(axis=0)  # (d,)

    def _predict(self, X):
        return np.tile(self.mean_, (X.shape[0], 1))


class KNNRegressorImputer(PointImputer):
    """Mean target of the ``n_neighbors`` nearest training patients (Euclidean, condition space)."""

    def __init__(self, n_neighbors: int = 10):
        self.n_neighbors = n_neighbors

    def _fit(self, X, Y):
        k = _check_k(self.n_neighbors, X.shape[0])
        self.nn_ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X)
        self.targets_ = Y

    def _predict(self, X):
        idx = self.nn_.kneighbors(X, return_distance=False)  # (n, k)
        return self.targets_[idx].mean(axis=1)


class RidgeImputer(PointImputer):
    """Multi-output ridge regression, one penalty chosen from ``alphas`` by efficient leave-one-out."""

    def __init__(self, alphas=DEFAULT_ALPHAS):
        self.alphas = alphas

    def _fit(self, X, Y):
        self.model_ = RidgeCV(alphas=np.asarray(self.alphas, dtype=np.float64)).fit(X, Y)
        self.alpha_ = float(self.model_.alpha_)

    def _predict(self, X):
        return np.asarray(self.model_.predict(X)).reshape(X.shape[0], self.n_targets_)


class IterativeImputer(PointImputer):
    """sklearn's ``IterativeImputer`` (chained equations, MICE-style) on [conditions, target].

    Fit runs the imputer on the training matrix stacked with a copy whose target columns are
    missing, so that its rounds learn to fill a missing target from the conditions (and from the
    other target columns' current fill); predict applies the learned rounds to [X_cond, NaN].
    Each chained equation is ``estimator``, by default ``Ridge(alpha=1.0)``: sklearn's default
    BayesianRidge costs an SVD per equation (about a minute per target at TCGA scale on two
    cores) for the same fit on thousands of standardised patients. Deterministic
    (``sample_posterior=False``). Not reaching ``tol`` in ``max_iter`` rounds is normal here
    and not warned about; ``n_iter_`` records the rounds run.
    """

    def __init__(self, max_iter: int = 10, tol: float = 1e-3, estimator=None, random_state: int = 0):
        self.max_iter = max_iter
        self.tol = tol
        self.estimator = estimator
        self.random_state = random_state

    def _fit(self, X, Y):
        masked = np.hstack([X, np.full_like(Y, np.nan)])
        stacked = np.vstack([np.hstack([X, Y]), masked])
        estimator = Ridge(alpha=1.0) if self.estimator is None else self.estimator
        self.imputer_ = _SklearnIterativeImputer(estimator=estimator, max_iter=self.max_iter,
                                                 tol=self.tol, random_state=self.random_state,
                                                 skip_complete=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.imputer_.fit(stacked)
        self.n_iter_ = int(self.imputer_.n_iter_)

    def _predict(self, X):
        filled = self.imputer_.transform(np.hstack([X, np.full((X.shape[0], self.n_targets_), np.nan)]))
        return filled[:, self.n_features_in_:]


class RandomNeighbourSampler(KNNRegressorImputer):
    """Each draw: the target of a uniformly random one of the ``n_neighbors`` nearest training
    patients. ``predict`` is the mean over those neighbours (the KNN imputer)."""

    def sample(self, X_cond, n_draws: int = 10, seed: int | None = None) -> np.ndarray:
        """(K, n, d) draws, each row a copy of a training target; reproducible for a given ``seed``."""
        k = _check_draws(n_draws)
        X = self._check_predict(X_cond)
        idx = self.nn_.kneighbors(X, return_distance=False)  # (n, nn)
        pick = np.random.default_rng(seed).integers(0, idx.shape[1], size=(k, idx.shape[0]))  # (K, n)
        return self.targets_[idx[np.arange(idx.shape[0])[None, :], pick]]  # (K, n, d)
