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
- :class:`IterativeImputer`: sklearn's chained-equation imputer (MICE-style, ridge equations) on
  the concatenated [conditions, target] matrix with the target missing.
- :class:`MOFAImputer`: MOFA+ (``mofapy2``, optional extra ``cohere-denoising[mofa]``), the
  standard multi-omics factor model, fitted with each modality as a view; the missing view is
  the factor posterior mean given the observed views, times the target view's weights.
- :class:`RandomNeighbourSampler`: a stochastic floor, the target of a random one of the k
  nearest training patients (a "generator" that can only copy training records).

Distributional baselines, the ones a generator has to beat on proper scores (energy score,
CRPS) and on calibration (interval coverage), each a few lines around the ridge mean:

- :class:`GaussianResidualSampler` ("gauss"): the ridge mean plus N(0, Sigma), Sigma the
  covariance of the training residuals.
- :class:`ResidualBootstrapSampler` ("resboot"): the ridge mean plus one training residual
  vector drawn at random.
- :class:`MICESampler`: ``IterativeImputer(sample_posterior=True)`` (BayesianRidge chained
  equations), each draw one stochastic imputation pass.
"""

from __future__ import annotations

import contextlib
import io
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


def mofa_available() -> bool:
    """Whether the optional MOFA+ baseline can run (``mofapy2`` importable)."""
    import importlib.util

    return importlib.util.find_spec("mofapy2") is not None


class MOFAImputer(PointImputer):
    """MOFA+ (``mofapy2``) with every conditioning modality and the target as views.

    ``views`` gives the column count of each conditioning modality in ``X_cond`` (in order).
    Fit runs mofapy2's variational inference on the training patients' views (Gaussian
    likelihoods, ARD weights, ``factors`` factors), then keeps per view the centring mean, the
    weights' posterior mean W_m (d_m, K) and the noise precisions tau_m (d_m,). A new patient's factors are the Gaussian posterior
    mean given its observed views under the model's N(0, I) factor prior,
    z = (I + sum_m W_m' T_m W_m)^-1 sum_m W_m' T_m (x_m - mu_m), and the missing view is
    mu_t + W_t z: the MOFA+ imputation of a held-out sample. Deterministic for a given ``seed``.

    Defaults chosen on a development split carved from the TCGA training patients (600 held
    out, 32-d latents per modality), latent R^2 of rnaseq / cna / rppa from the other two: 30
    factors without spike-and-slab weights 0.25 / 0.21 / 0.11; 15 factors without 0.20 / 0.17 /
    0.08; 15 factors with spike-and-slab 0.14 / 0.14 (rppa not run); ridge 0.31 / 0.26 / 0.15.
    A low-rank factor model approaches linear regression only as the factors approach the
    feature count.
    """

    def __init__(self, views, factors: int = 30, spikeslab: bool = False, max_iter: int = 1000, seed: int = 0):
        self.views = views
        self.factors = factors
        self.spikeslab = spikeslab
        self.max_iter = max_iter
        self.seed = seed

    def _fit(self, X, Y):
        try:
            from mofapy2.run.entry_point import entry_point
        except ImportError:
            raise CohereError("the MOFA+ baseline needs mofapy2; install the optional extra: "
                              "pip install 'cohere-denoising[mofa]'") from None
        sizes = [int(v) for v in self.views]
        if any(v < 1 for v in sizes) or sum(sizes) != X.shape[1]:
            raise CohereError(f"views must be positive column counts summing to the {X.shape[1]} "
                              f"columns of X_cond; got {sizes}")
        if isinstance(self.factors, bool) or not isinstance(self.factors, (int, np.integer)) or self.factors < 1:
            raise CohereError(f"factors must be a positive integer; got {self.factors!r}")
        blocks = np.split(X, np.cumsum(sizes)[:-1], axis=1) + [Y]
        self.means_ = [b.mean(axis=0) for b in blocks]
        centred = [b - m for b, m in zip(blocks, self.means_)]
        log = io.StringIO()
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ent = entry_point()
            ent.set_data_options(scale_views=False, center_groups=False)
            ent.set_data_matrix([[b] for b in centred], likelihoods=["gaussian"] * len(centred))
            ent.set_model_options(factors=int(self.factors), spikeslab_weights=bool(self.spikeslab),
                                  ard_weights=True)
            ent.set_train_options(iter=int(self.max_iter), convergence_mode="fast", seed=int(self.seed),
                                  verbose=False, dropR2=None, startELBO=1, freqELBO=5)
            ent.build()
            ent.run()
        nodes = ent.model.nodes
        self.weights_ = [np.asarray(w, dtype=np.float64) for w in nodes["W"].getExpectation()]  # (d_m, K)
        self.tau_ = [np.asarray(t, dtype=np.float64).reshape(-1, b.shape[1]).mean(axis=0)
                     for t, b in zip(nodes["Tau"].getExpectation(), blocks)]  # (d_m,)
        self.n_factors_ = self.weights_[0].shape[1]

    def _predict(self, X):
        sizes = [w.shape[0] for w in self.weights_[:-1]]
        blocks = np.split(X, np.cumsum(sizes)[:-1], axis=1)
        precision = np.eye(self.n_factors_)
        rhs = np.zeros((X.shape[0], self.n_factors_))
        for b, mu, w, tau in zip(blocks, self.means_, self.weights_, self.tau_):
            precision += (w * tau[:, None]).T @ w
            rhs += ((b - mu) * tau) @ w
        z = np.linalg.solve(precision, rhs.T).T  # (n, K)
        return self.means_[-1] + z @ self.weights_[-1].T


class GaussianResidualSampler(RidgeImputer):
    """The ridge mean plus Gaussian noise with the covariance of the training residuals.
    ``predict`` is the ridge mean."""

    def _fit(self, X, Y):
        super()._fit(X, Y)
        resid = Y - self._predict(X)
        self.residual_cov_ = np.atleast_2d(np.cov(resid, rowvar=False))  # (d, d)

    def sample(self, X_cond, n_draws: int = 10, seed: int | None = None) -> np.ndarray:
        """(K, n, d): ridge mean + N(0, residual covariance), reproducible for a given ``seed``."""
        k = _check_draws(n_draws)
        mean = self.predict(X_cond)
        noise = np.random.default_rng(seed).multivariate_normal(
            np.zeros(mean.shape[1]), self.residual_cov_, size=(k, mean.shape[0]), method="eigh")
        return mean[None] + noise


class ResidualBootstrapSampler(RidgeImputer):
    """The ridge mean plus a training residual vector drawn uniformly at random (keeps the
    residuals' non-Gaussian shape and their correlation across dimensions, not their
    dependence on the conditions). ``predict`` is the ridge mean."""

    def _fit(self, X, Y):
        super()._fit(X, Y)
        self.residuals_ = Y - self._predict(X)  # (n_train, d)

    def sample(self, X_cond, n_draws: int = 10, seed: int | None = None) -> np.ndarray:
        k = _check_draws(n_draws)
        mean = self.predict(X_cond)
        pick = np.random.default_rng(seed).integers(0, len(self.residuals_), size=(k, mean.shape[0]))
        return mean[None] + self.residuals_[pick]


class MICESampler(PointImputer):
    """Multiple imputation by chained equations: sklearn's ``IterativeImputer`` with
    ``sample_posterior=True`` and its default ``BayesianRidge`` equations, fitted on the
    training matrix [X_cond, Y] plus one row whose target is missing (so that the target
    columns get equations; each equation is fitted on the rows where its column is observed,
    so more masked rows would change nothing but the cost). Each draw is one stochastic
    imputation pass over [X_cond, NaN] with the fitted equations: every round fills each target
    column with a draw from its equation's posterior predictive. The K draws share one fit (K
    independent fits would cost K times as much for the same equations on thousands of
    patients). ``predict`` is the mean of ``n_mean`` draws.
    """

    def __init__(self, max_iter: int = 10, tol: float = 1e-3, random_state: int = 0, n_mean: int = 10):
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_mean = n_mean

    def _fit(self, X, Y):
        masked = np.hstack([X[:1], np.full_like(Y[:1], np.nan)])
        stacked = np.vstack([np.hstack([X, Y]), masked])
        self.imputer_ = _SklearnIterativeImputer(sample_posterior=True, max_iter=self.max_iter, tol=self.tol,
                                                 random_state=self.random_state, skip_complete=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.imputer_.fit(stacked)

    def _draws(self, X, k: int, seed: int) -> np.ndarray:
        """(k, n, d): one imputation pass over k stacked copies of the rows (every row of every
        copy gets its own posterior draws), which costs about one pass over k * n rows."""
        self.imputer_.random_state_ = np.random.RandomState(seed)
        rows = np.tile(np.hstack([X, np.full((X.shape[0], self.n_targets_), np.nan)]), (k, 1))
        filled = self.imputer_.transform(rows)[:, self.n_features_in_:]
        return filled.reshape(k, X.shape[0], self.n_targets_)

    def _predict(self, X):
        return self._draws(X, self.n_mean, self.random_state).mean(axis=0)

    def sample(self, X_cond, n_draws: int = 10, seed: int | None = None) -> np.ndarray:
        return self._draws(self._check_predict(X_cond), _check_draws(n_draws), 0 if seed is None else seed)


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
