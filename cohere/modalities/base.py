"""The ``Modality`` base class and the ``Preprocessor`` every modality shares.

A modality says which *input forms* its tables may be in (raw counts, log ratios, already
normalised z-scores...), how each form is transformed per sample, which features to keep,
how to impute, and which encoder compresses it. The configuration always names the form
(``cohort.json`` or ``--input-form``); forms are checked for plausibility, never guessed.

Fitting (training samples only): transform -> drop features with > ``max_missing`` missing
-> modality filter -> centring -> standardisation -> imputer. The fitted state is a few
tensors and a feature list, saved inside the encoder artifact.
"""

from __future__ import annotations

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

    def __repr__(self) -> str:
        return f"<Modality {self.name}>"


# ---------------------------------------------------------------- preprocessing


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

    @property
    def fraction_per_sample(self) -> pd.Series:
        """Per sample, the fraction of the encoder's features that were imputed."""
        return self.per_sample / self.n_features

    def note(self) -> str:
        """One line saying what was imputed ("" when nothing was)."""
        parts = []
        if self.absent:
            first = ", ".join(self.absent[:3]) + (", ..." if len(self.absent) > 3 else "")
            parts.append(f"{len(self.absent):,} of the encoder's {self.n_features:,} features are absent "
                         f"from the table and were imputed for all {self.n_samples:,} samples (first: {first})")
        if self.missing_cells:
            present = self.n_features - len(self.absent)
            share = self.missing_cells / (present * self.n_samples)
            parts.append(f"{self.missing_cells:,} missing values of the {present:,} present features "
                         f"({f'{share:.1%}' if share >= 0.001 else '< 0.1%'}) were imputed")
        return f"{self.modality}: " + "; ".join(parts) if parts else ""

    def to_dict(self) -> dict:
        """JSON-ready summary (the per-sample counts are left out)."""
        return {"features": self.n_features, "absent": len(self.absent), "absent_features": list(self.absent),
                "samples": self.n_samples, "missing_cells": self.missing_cells}


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
        if m.imputer == "knn":
            state["prototypes"] = self._prototypes(np.where(np.isnan(Z), median, Z))
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

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Return the standardised, imputed matrix (n_samples, n_features_) as float32."""
        return self.transform_recorded(df)[0]

    def transform_recorded(self, df: pd.DataFrame) -> tuple[np.ndarray, "Imputation"]:
        """:meth:`transform`, and the :class:`Imputation` record of what it imputed."""
        if not self.features_:
            raise CohereError("the preprocessor is not fitted; call fit() first")
        m = self.modality
        absent = [f for f in self.features_ if f not in df.columns]
        if len(absent) > m.max_missing * len(self.features_):
            as_rows = int(df.index.isin(self.features_).sum())
            if as_rows > len(self.features_) - len(absent):
                raise CohereError(f"{m.name}: the table looks transposed ({as_rows} of its row ids are "
                                  f"features of the encoder, {len(self.features_) - len(absent)} of its "
                                  "column names); expected samples as rows and features as columns: "
                                  "transpose it (pandas: df.T) and save it again")
            raise CohereError(f"{m.name}: the table lacks {len(absent)} of the encoder's "
                              f"{len(self.features_)} features (e.g. {absent[0]!r}); expected the "
                              "features the encoder was trained on")
        import pandas as pd

        X = df.to_numpy(np.float64)
        m.check(X, self.form)
        Xt = pd.DataFrame(m.transform(X, self.form), index=df.index, columns=df.columns)
        Xt = Xt.reindex(columns=self.features_).to_numpy(np.float64)
        s = {k: v.double().numpy() for k, v in self.state_.items()}
        Z = (Xt - s["center"] - s["mean"]) / s["std"]
        nan = np.isnan(Z)                               # absent features and missing cells
        record = Imputation(m.name, len(self.features_), absent, len(df),
                            int(nan.sum()) - len(absent) * len(df), pd.Series(nan.sum(1), index=df.index))
        return self._impute(Z, s).astype(np.float32), record

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

    def tensor_shapes(self, n_prototypes: int | None = None) -> dict[str, tuple[int, ...]]:
        d = len(self.features_)
        shapes = {k: (d,) for k in ("center", "mean", "std", "median")}
        if self.modality.imputer == "knn":
            shapes["prototypes"] = (n_prototypes, d)
        return shapes

    @classmethod
    def from_state(cls, modality: Modality, config: dict, state: dict[str, torch.Tensor]) -> "Preprocessor":
        pre = cls(modality, config["input_form"], knn_neighbors=config.get("knn_neighbors", 5))
        pre.features_ = list(config["features"])
        pre.state_ = dict(state)
        return pre
