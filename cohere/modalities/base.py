"""The ``Modality`` base class and the ``Preprocessor`` every modality shares.

A modality says which *input forms* its tables may be in (raw counts, log ratios, already
normalised z-scores...), how each form is transformed per sample, which features to keep,
how to impute, and which encoder compresses it. The configuration always names the form
(``cohort.json`` or ``--input-form``); forms are checked for plausibility, never guessed.

Fitting (training samples only): transform -> drop features with > ``max_missing`` missing
-> modality filter -> centring -> standardisation -> imputer, and a probabilistic PCA of the
standardised features (the training covariance as low rank + isotropic noise). The fitted
state is a few tensors and a feature list, saved inside the encoder artifact.

Encoding a user's table: its columns are matched to the encoder's features by name
(:func:`feature_key`: case and ``-``/``_``/``.``/space spelling do not matter); a table that
covers only part of the features (a targeted gene panel, a smaller antibody set) is completed
with the PPCA conditional mean of the absent features given the present ones, per sample,
and refused below a minimum coverage. A table in another form than the encoder's can be
converted when the modality says how (``Modality.convert``: e.g. log-scale expression to
within-cohort z-scores); every other mismatch is refused.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CohereError

if TYPE_CHECKING:  # pandas and torch are imported where used: plugins load without them
    import pandas as pd
    import torch


class Modality:
    """One data modality. Subclass it and register it with ``register_modalities``.

    Class attributes:
      name          lowercase id (also the table's file name)
      input_forms   {form: one-line description}; the first is the default
      encoder       "autoencoder" or "pca"
      imputer       "knn" or "median"
      center        "median" to subtract train medians per feature (RPPA), else None
    """

    name: str = ""
    description: str = ""
    input_forms: dict[str, str] = {}
    encoder: str = "autoencoder"
    imputer: str = "knn"
    center: str | None = None
    max_missing: float = 0.10

    @property
    def default_form(self) -> str:
        return next(iter(self.input_forms))

    def resolve_form(self, form: str | None) -> str:
        form = form or self.default_form
        if form not in self.input_forms:
            raise CohereError(f"{self.name}: unknown input form {form!r}; expected one of "
                              f"{', '.join(self.input_forms)}")
        return form

    def check(self, X: np.ndarray, form: str) -> None:
        """Raise ``CohereError`` if the values are implausible for ``form``."""

    def transform(self, X: np.ndarray, form: str) -> np.ndarray:
        """Stateless per-sample transform from the input form to the modelled scale."""
        return X

    def keep_features(self, Xt: np.ndarray, form: str) -> np.ndarray:
        """Boolean mask of features to keep, from transformed *training* values."""
        return np.ones(Xt.shape[1], dtype=bool)

    def output_units(self, form: str) -> str:
        """What decoded values mean."""
        return f"{self.name} features on the modelled scale"

    def modelled_form(self, form: str) -> str:
        """The input form that describes values on ``form``'s modelled scale (what decoded
        features are): ``form`` itself unless its transform changes the scale."""
        return form

    #: {(table form, encoder form): one line saying what :meth:`convert` does}
    conversions: dict[tuple[str, str], str] = {}

    def convert(self, X: np.ndarray, form: str, to: str, groups: np.ndarray) -> np.ndarray:
        """Convert a whole cohort's table ``X`` (samples x features) from ``form`` to the
        encoder's form ``to``; ``groups`` labels each sample's cohort (e.g. cancer type) for
        conversions that normalise within cohorts. Only pairs in ``conversions`` (the values
        are checked for ``form`` first); subclasses implement :meth:`_convert`."""
        if (form, to) not in self.conversions:
            raise CohereError(self.form_mismatch(form, to))
        self.check(X, form)
        return self._convert(X, form, to, groups)

    def _convert(self, X: np.ndarray, form: str, to: str, groups: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def form_mismatch(self, form: str, to: str) -> str:
        """The refusal for a table in ``form`` given to an encoder trained on ``to``."""
        return (f"{self.name}: the cohort says input form {form!r} but the encoder was trained on {to!r}; "
                "re-train the encoder or convert the table")

    def __repr__(self) -> str:
        return f"<Modality {self.name}>"


# ---------------------------------------------------------------- preprocessing

#: encoding refuses a table that covers less than this share of the encoder's features
#: (chosen from the coverage measurement in the README: below it the latent R^2 falls fast)
DEFAULT_MIN_COVERAGE = 0.3


#: the PPCA ranks an encoder chooses from (by held-out likelihood)
PPCA_RANKS = (8, 16, 32, 64, 128, 256)


def feature_key(name) -> str:
    """What feature names are matched by: case-folded, with spaces, ``-``, ``_`` and ``.``
    removed, so ``HER2-pY1248``, ``her2_py1248`` and ``HER2.pY1248`` are one feature."""
    return re.sub(r"[\s_.\-]+", "", str(name)).casefold()


@dataclass
class Imputation:
    """What preprocessing one table imputed: the encoder's features absent from the table
    (imputed for every sample; at most ``Modality.max_missing`` of them, else it refuses) and
    the missing cells of the features present (NaN, or made missing by the input form's
    transform)."""

    modality: str
    n_features: int            # the encoder's features
    absent: list[str]          # of them, absent from the table, in the encoder's order
    n_samples: int
    missing_cells: int         # missing cells of the present features
    per_sample: pd.Series      # imputed features per sample (absent + missing), by sample id
    method: str = ""           # how: "ppca" (conditional mean given the present features), "knn", "median"
    renamed: int = 0           # table columns matched to a feature under another spelling
    converted: str = ""        # the input-form conversion applied to the whole table, if any

    @property
    def coverage(self) -> float:
        """The share of the encoder's features the table has."""
        return 1.0 - len(self.absent) / self.n_features

    @property
    def fraction_per_sample(self) -> pd.Series:
        """Per sample, the fraction of the encoder's features that were imputed."""
        return self.per_sample / self.n_features

    def note(self) -> str:
        """One line saying what was imputed ("" when nothing was)."""
        parts = [self.converted] if self.converted else []
        if self.renamed:
            parts.append(f"{self.renamed:,} column names matched the encoder's features only up to case or "
                         "'-', '_', '.', space")
        if self.absent:
            first = ", ".join(self.absent[:3]) + (", ..." if len(self.absent) > 3 else "")
            how = (" from the present ones (PPCA conditional mean)" if self.method == "ppca" else "")
            parts.append(f"{len(self.absent):,} of the encoder's {self.n_features:,} features are absent "
                         f"from the table (coverage {self.coverage:.0%}) and were imputed{how} for all "
                         f"{self.n_samples:,} samples (first: {first})")
        if self.missing_cells:
            present = self.n_features - len(self.absent)
            share = self.missing_cells / (present * self.n_samples)
            parts.append(f"{self.missing_cells:,} missing values of the {present:,} present features "
                         f"({f'{share:.1%}' if share >= 0.001 else '< 0.1%'}) were imputed")
        return f"{self.modality}: " + "; ".join(parts) if parts else ""

    def to_dict(self) -> dict:
        """JSON-ready summary (the per-sample counts are left out)."""
        return {"features": self.n_features, "absent": len(self.absent), "absent_features": list(self.absent),
                "coverage": round(self.coverage, 4), "samples": self.n_samples, "missing_cells": self.missing_cells,
                "method": self.method, "renamed": self.renamed, "converted": self.converted}


@dataclass
class Preprocessor:
    """Fit-on-train preprocessing of one modality (sklearn-like; state ends in ``_``)."""

    modality: Modality
    form: str
    knn_neighbors: int = 5
    n_prototypes: int = 256
    seed: int = 0
    features_: list[str] = field(default_factory=list)
    state_: dict[str, torch.Tensor] = field(default_factory=dict)

    def fit(self, df: pd.DataFrame) -> "Preprocessor":
        m = self.modality
        X = df.to_numpy(np.float64)
        m.check(X, self.form)
        Xt = m.transform(X, self.form)
        missing = np.isnan(Xt).mean(axis=0)
        keep = (missing <= m.max_missing) & m.keep_features(Xt, self.form)
        with warnings.catch_warnings():  # all-NaN columns are dropped just above
            warnings.simplefilter("ignore", RuntimeWarning)
            keep &= np.nan_to_num(np.nanstd(Xt, axis=0)) > 1e-8
        if keep.sum() < 2:
            raise CohereError(f"{m.name}: only {int(keep.sum())} feature(s) pass the filters "
                              f"(<= {m.max_missing:.0%} missing in train, non-constant); check the "
                              "table and its input form")
        self.features_ = [str(c) for c in df.columns[keep]]
        Xt = Xt[:, keep]
        center = np.nanmedian(Xt, axis=0) if m.center == "median" else np.zeros(Xt.shape[1])
        Xc = Xt - center
        mean = np.nanmean(Xc, axis=0)
        std = np.nanstd(Xc, axis=0)
        std = np.where(std > 1e-8, std, 1.0)
        Z = (Xc - mean) / std
        median = np.nanmedian(Z, axis=0)
        state = {"center": center, "mean": mean, "std": std, "median": median}
        filled = np.where(np.isnan(Z), median, Z)
        if m.imputer == "knn":
            state["prototypes"] = self._prototypes(filled)
        state |= self._ppca(filled)
        import torch

        self.state_ = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in state.items()}
        return self

    def _prototypes(self, Z: np.ndarray, iterations: int = 25) -> np.ndarray:
        """k-means centroids of the training rows: the KNN imputer's reference set.

        The artifact stores prototypes, not patients, so publishing it shares no one's data.
        Plain Lloyd iterations from a seeded random start (fast; a few matmuls each).
        """
        rng = np.random.default_rng(self.seed)
        k = int(min(self.n_prototypes, max(2, len(Z) // 4)))
        C = Z[rng.choice(len(Z), k, replace=False)].copy()              # (k, d)
        sq = (Z ** 2).sum(1)[:, None]
        for _ in range(iterations):
            assign = np.argmin(sq - 2 * Z @ C.T + (C ** 2).sum(1)[None], axis=1)
            counts = np.bincount(assign, minlength=k)
            sums = np.zeros_like(C)
            np.add.at(sums, assign, Z)
            filled = counts > 0
            C[filled] = sums[filled] / counts[filled, None]
        return C

    def _ppca(self, Z: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilistic PCA of the standardised training rows (Tipping & Bishop 1999, the
        maximum-likelihood fit that scikit-learn's PCA computes): covariance = W^T W + s2 I
        with W the top q loadings, q in ``PPCA_RANKS`` chosen by the Gaussian log-likelihood
        of a seeded tenth of the rows held out. Used to impute absent features from present ones."""
        from sklearn.decomposition import PCA

        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(Z))
        held, fit = Z[order[: max(1, len(Z) // 10)]], Z[order[max(1, len(Z) // 10):]]
        ranks = [q for q in PPCA_RANKS if q < min(Z.shape[1], len(fit))] or [1]
        scores = [PCA(n_components=q, svd_solver="full").fit(fit).score(held) for q in ranks]
        q = ranks[int(np.argmax(scores))]
        pca = PCA(n_components=q, svd_solver="full").fit(Z)
        s2 = max(float(pca.noise_variance_), 1e-6)
        W = pca.components_ * np.sqrt(np.maximum(pca.explained_variance_ - s2, 0.0))[:, None]   # (q, d)
        return {"ppca_loadings": W, "ppca_mean": pca.mean_, "ppca_noise": np.array([s2])}

    def match(self, columns) -> dict:
        """{table column: encoder feature} for the columns that are features: exact names
        first (a column named exactly as a feature wins over respellings of it, which are
        left out), then the features left by :func:`feature_key` (a key two features share
        matches neither). Two respelled columns for one feature are an error naming both."""
        features = set(self.features_)
        mapping = {c: c for c in columns if c in features}
        keys: dict[str, list[str]] = {}
        for f in self.features_:
            if f not in mapping:
                keys.setdefault(feature_key(f), []).append(f)
        taken: dict[str, str] = {}
        for c in columns:
            hit = keys.get(feature_key(c)) if c not in mapping else None
            if not hit or len(hit) != 1:
                continue
            f = hit[0]
            if f in taken:
                raise CohereError(f"{self.modality.name}: columns {taken[f]!r} and {c!r} are both the encoder's "
                                  f"feature {f!r} (names are matched up to case and '-', '_', '.', space); drop "
                                  "one of them")
            mapping[c], taken[f] = f, c
        return mapping

    def transform(self, df: pd.DataFrame, min_coverage: float = DEFAULT_MIN_COVERAGE) -> np.ndarray:
        """Return the standardised, imputed matrix (n_samples, n_features_) as float32."""
        return self.transform_recorded(df, min_coverage)[0]

    def transform_recorded(self, df: pd.DataFrame, min_coverage: float = DEFAULT_MIN_COVERAGE,
                           converted: str = "") -> tuple[np.ndarray, "Imputation"]:
        """:meth:`transform`, and the :class:`Imputation` record of what it imputed.

        Features absent from ``df`` are imputed from the present ones (PPCA conditional mean)
        when the table covers at least ``min_coverage`` of them; an encoder saved without the
        PPCA (older versions) accepts at most ``Modality.max_missing`` absent."""
        if not self.features_:
            raise CohereError("the preprocessor is not fitted; call fit() first")
        m, d = self.modality, len(self.features_)
        mapping = self.match(df.columns)
        present = set(mapping.values())
        absent = [f for f in self.features_ if f not in present]
        ppca = "ppca_loadings" in self.state_
        as_rows = int(df.index.isin(self.features_).sum()) if len(absent) > m.max_missing * d else 0
        if as_rows > d - len(absent):
            raise CohereError(f"{m.name}: the table looks transposed ({as_rows} of its row ids are "
                              f"features of the encoder, {d - len(absent)} of its column names); expected "
                              "samples as rows and features as columns: transpose it (pandas: df.T) and "
                              "save it again")
        coverage = 1.0 - len(absent) / d
        if not ppca and len(absent) > m.max_missing * d:
            raise CohereError(f"{m.name}: the table lacks {len(absent)} of the encoder's {d} features "
                              f"(e.g. {absent[0]!r}); this encoder was saved without the model that imputes "
                              "absent features, so it needs at least "
                              f"{1 - m.max_missing:.0%} of them: re-train it with this version of cohere")
        if ppca and coverage < min_coverage:
            raise CohereError(f"{m.name}: the table lacks {len(absent)} of the encoder's {d} features "
                              f"(e.g. {absent[0]!r}): it covers {coverage:.1%} of them, below the minimum "
                              f"{min_coverage:.0%}; provide more of the encoder's features (names are matched "
                              "up to case and '-', '_', '.', space) or lower --min-feature-coverage")
        import pandas as pd

        table = df[list(mapping)].rename(columns=mapping)
        X = table.to_numpy(np.float64)
        m.check(X, self.form)
        Xt = pd.DataFrame(m.transform(X, self.form), index=df.index, columns=table.columns)
        Xt = Xt.reindex(columns=self.features_).to_numpy(np.float64)
        s = {k: v.double().numpy() for k, v in self.state_.items()}
        Z = (Xt - s["center"] - s["mean"]) / s["std"]
        nan = np.isnan(Z)                               # absent features and missing cells
        method = ("ppca" if absent and ppca else m.imputer) if nan.any() else ""
        record = Imputation(m.name, d, absent, len(df), int(nan.sum()) - len(absent) * len(df),
                            pd.Series(nan.sum(1), index=df.index), method,
                            sum(c != f for c, f in mapping.items()), converted)
        Z = self._impute_ppca(Z, s) if method == "ppca" else self._impute(Z, s)
        return Z.astype(np.float32), record

    @staticmethod
    def _impute_ppca(Z: np.ndarray, s: dict) -> np.ndarray:
        """Fill every missing cell with its PPCA conditional mean given the row's observed
        cells: h = (W_o W_o^T + s2 I)^-1 W_o (z_o - mu_o), z_m = W_m^T h + mu_m. Rows that
        share an observation pattern share one solve."""
        W, mu, s2 = s["ppca_loadings"], s["ppca_mean"], float(s["ppca_noise"][0])   # (q, d), (d,)
        nan = np.isnan(Z)
        Z = Z.copy()
        patterns, inverse = np.unique(nan, axis=0, return_inverse=True)
        for p, mis in enumerate(patterns):
            if not mis.any():
                continue
            rows, obs = np.flatnonzero(inverse.ravel() == p), ~mis
            Wo = W[:, obs]                                                     # (q, |o|)
            M = Wo @ Wo.T + s2 * np.eye(len(W))                                # (q, q)
            H = np.linalg.solve(M, Wo @ (Z[np.ix_(rows, obs)] - mu[obs]).T)     # (q, r)
            Z[np.ix_(rows, mis)] = H.T @ W[:, mis] + mu[mis]
        return Z

    def _impute(self, Z: np.ndarray, s: dict) -> np.ndarray:
        nan = np.isnan(Z)
        if not nan.any():
            return Z
        if "prototypes" not in s:
            return np.where(nan, s["median"], Z)
        P = s["prototypes"]                                   # (k, d)
        rows = np.flatnonzero(nan.any(axis=1))
        Zr, obs = Z[rows], ~nan[rows]                         # (r, d)
        Z0 = np.where(obs, Zr, 0.0)
        # mean squared distance over each row's observed features
        d2 = ((Z0 ** 2).sum(1)[:, None] - 2 * Z0 @ P.T + obs.astype(float) @ (P ** 2).T)
        d2 /= np.maximum(obs.sum(1, keepdims=True), 1)
        k = min(self.knn_neighbors, len(P))
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]   # (r, k)
        fill = P[nearest].mean(axis=1)                        # (r, d)
        Z = Z.copy()
        Z[rows] = np.where(obs, Zr, fill)
        return Z

    def inverse_transform(self, Z: np.ndarray, index=None) -> pd.DataFrame:
        """Standardised features back to the modelled scale (see ``Modality.output_units``)."""
        import pandas as pd

        s = {k: v.double().numpy() for k, v in self.state_.items()}
        X = np.asarray(Z, np.float64) * s["std"] + s["mean"] + s["center"]
        return pd.DataFrame(X.astype(np.float32), index=index, columns=self.features_)

    # -- persistence (inside an encoder artifact)

    def to_config(self) -> dict:
        return {"modality": self.modality.name, "input_form": self.form, "features": self.features_,
                "imputer": self.modality.imputer, "knn_neighbors": self.knn_neighbors,
                "center": self.modality.center}

    def tensor_shapes(self, n_prototypes: int | None = None, ppca_rank: int | None = None) -> dict[str, tuple[int, ...]]:
        """Expected tensor shapes; ``ppca_rank`` None for encoders saved before the PPCA."""
        d = len(self.features_)
        shapes = {k: (d,) for k in ("center", "mean", "std", "median")}
        if self.modality.imputer == "knn":
            shapes["prototypes"] = (n_prototypes, d)
        if ppca_rank is not None:
            shapes |= {"ppca_loadings": (ppca_rank, d), "ppca_mean": (d,), "ppca_noise": (1,)}
        return shapes

    @classmethod
    def from_state(cls, modality: Modality, config: dict, state: dict[str, torch.Tensor]) -> "Preprocessor":
        pre = cls(modality, config["input_form"], knn_neighbors=config.get("knn_neighbors", 5))
        pre.features_ = list(config["features"])
        pre.state_ = dict(state)
        return pre
