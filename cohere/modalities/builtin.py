"""The built-in modalities: cna, rnaseq, rppa, wsi (the paper's preprocessing).

Registered through the same ``register_modalities`` hook as third-party plugins.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import CohereError
from ..hookspecs import hookimpl
from .base import Modality


def _median(X):
    finite = X[np.isfinite(X)]
    return float(np.median(finite)) if finite.size else 0.0


GISTIC_CALLS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def _only_gistic_calls(X) -> bool:
    """True when every finite value is a GISTIC thresholded call (and there are values)."""
    finite = X[np.isfinite(X)]
    return finite.size > 0 and bool(np.isin(finite, GISTIC_CALLS).all())


# cohorts (e.g. cancer types) smaller than this are z-scored together, not alone
MIN_ZSCORE_GROUP = 10


def zscore_within(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per feature, z-scores within each group of samples (mean 0, SD 1 over its observed
    values); groups smaller than ``MIN_ZSCORE_GROUP`` are pooled into one. Constant features
    of a group become 0."""
    groups = np.asarray(groups, dtype=object).copy()
    labels, counts = np.unique(groups.astype(str), return_counts=True)
    small = set(labels[counts < MIN_ZSCORE_GROUP])
    groups = np.array(["<pooled>" if str(g) in small else str(g) for g in groups], dtype=object)
    out = np.full_like(X, np.nan, dtype=np.float64)
    for g in np.unique(groups):
        rows = groups == g
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN features stay NaN
            mean, sd = np.nanmean(X[rows], axis=0), np.nanstd(X[rows], axis=0)
        out[rows] = np.where(sd > 1e-8, (X[rows] - mean) / np.where(sd > 1e-8, sd, 1.0), 0.0)
        out[rows] = np.where(np.isnan(X[rows]), np.nan, out[rows])
    return out


class CNA(Modality):
    name = "cna"
    description = "gene-level copy number"
    input_forms = {
        "log2_ratio": "log2 segment mean vs diploid (TCGA/Firehose gene-level CNA); clipped to [-2, 2]",
        "absolute": "absolute copy number (e.g. ABSOLUTE); 0 excluded, log2(CN/2) clipped to [-2, 2]",
        "gistic": "GISTIC thresholded calls in {-2, -1, 0, 1, 2} (deep loss .. amplification); modelled as given",
    }
    imputer = "median"

    conversions = {("absolute", "log2_ratio"): "log2(copy number / 2), 0 excluded (what the absolute form models)"}

    def modelled_form(self, form):
        return "log2_ratio" if form == "absolute" else form

    def _convert(self, X, form, to, groups):
        return self.transform(X, form)

    def form_mismatch(self, form, to):
        if form == "gistic" or to == "gistic":
            return ("cna: GISTIC thresholded calls and log2 ratios are different forms (a call of 1 stands for "
                    "any gain, log2 ratios from about 0.1 to over 1), and cohere does not map one onto the other; "
                    "use an encoder trained on the same form (cohere encoders train --input-form cna=gistic for "
                    "calls) or give the segment-level log2 ratios")
        return super().form_mismatch(form, to)

    def check(self, X, form):
        if form == "gistic":
            finite = X[np.isfinite(X)]
            bad = finite[~np.isin(finite, GISTIC_CALLS)]
            if bad.size:
                raise CohereError(f"cna: value {bad[0]:g} is not a GISTIC call; input form 'gistic' expects "
                                  "values in {-2, -1, 0, 1, 2}; set the form to 'log2_ratio' for log2 ratios")
            return
        if form == "absolute" and np.nanmin(X) < 0:
            raise CohereError("cna: negative values, but input form 'absolute' expects copy numbers "
                              ">= 0; set the form to 'log2_ratio' if the table holds log2 ratios")
        if form == "log2_ratio" and _median(X) > 1.0:
            raise CohereError(f"cna: median value {_median(X):.2f} is implausible for log2 ratios "
                              "(expected about 0); set the form to 'absolute' for copy numbers")
        if form == "log2_ratio" and _only_gistic_calls(X):
            raise CohereError("cna: every value is one of -2, -1, 0, 1, 2: these look like GISTIC thresholded "
                              "calls, not log2 ratios; declare the form 'gistic' (cohort.json or "
                              "--input-form cna=gistic)")

    def transform(self, X, form):
        if form == "gistic":
            return X
        if form == "absolute":
            with np.errstate(divide="ignore"):
                X = np.where(X > 0, np.log2(np.where(X > 0, X, 1.0) / 2.0), np.nan)
        return np.clip(X, -2.0, 2.0)

    def output_units(self, form):
        if form == "gistic":
            return "GISTIC call scale (-2 .. 2; decoded values are continuous)"
        return "log2(copy number / 2), clipped to [-2, 2]"


class RNASeq(Modality):
    name = "rnaseq"
    description = "bulk RNA-seq gene expression"
    input_forms = {
        "zscore": "expression z-scores (already normalised); clipped to [-10, 10] (real data holds "
                  "outliers up to 1.7e4)",
        "log2_count": "log2(count + 1); the paper's CPM normalisation, CPM > 1 in >= 20% filter, log2(CPM + 1)",
        "log2_expression": "log-scale expression of any kind (log2 RSEM/TPM/FPKM + 1, microarray intensities); "
                           "may be negative; modelled as given",
    }
    zscore_clip = 10.0
    min_cpm, min_fraction = 1.0, 0.20
    _within = (f"z-scored per gene within each cancer type of the cohort (clinical cancer_type; types with "
               f"fewer than {MIN_ZSCORE_GROUP} patients pooled), as the training z-scores were made")
    conversions = {("log2_count", "zscore"): "log2(CPM + 1), then " + _within,
                   ("log2_expression", "zscore"): _within}

    def modelled_form(self, form):
        return "log2_expression" if form == "log2_count" else form

    def _convert(self, X, form, to, groups):
        if form == "log2_count":
            X = self.transform(X, form)
        return zscore_within(X, groups)

    def check(self, X, form):
        if form == "log2_count" and np.nanmin(X) < 0:
            raise CohereError("rnaseq: negative values, but input form 'log2_count' expects "
                              "log2(count + 1) >= 0; set the form to 'zscore' for z-scores")
        if form == "zscore" and np.nanmin(X) >= 0 and _median(X) > 2.0:
            raise CohereError(f"rnaseq: all values >= 0 with median {_median(X):.2f}: implausible for "
                              "z-scores; set the form to 'log2_count' for log2(count + 1)")

    def transform(self, X, form):
        if form == "zscore":
            return np.clip(X, -self.zscore_clip, self.zscore_clip)
        if form == "log2_expression":
            return X
        counts = np.exp2(X) - 1.0                                  # (n, genes)
        library = np.nansum(counts, axis=1, keepdims=True)
        cpm = counts / np.where(library > 0, library, 1.0) * 1e6
        return np.log2(cpm + 1.0)

    def keep_features(self, Xt, form):
        if form != "log2_count":
            return np.ones(Xt.shape[1], dtype=bool)
        # CPM > 1  <=>  log2(CPM + 1) > 1
        return np.nanmean(Xt > 1.0, axis=0) >= self.min_fraction

    def output_units(self, form):
        return {"zscore": "z-score (clipped to [-10, 10])", "log2_count": "log2(CPM + 1)"}.get(form, "log-scale expression as given")


class RPPA(Modality):
    name = "rppa"
    description = "reverse-phase protein array"
    input_forms = {
        "normalized": "normalised protein levels (e.g. Firehose RPPA); median-centred per antibody",
        "raw": "un-centred protein levels; median-centred per antibody (the paper's step)",
    }
    center = "median"

    def output_units(self, form):
        return "protein level on the input scale (train medians added back)"


class WSI(Modality):
    name = "wsi"
    description = "whole-slide image embeddings (slide-level, e.g. 768-d from a foundation model)"
    input_forms = {"embedding": "slide-level embedding vectors; standardised, then PCA"}
    encoder = "pca"
    imputer = "median"

    def output_units(self, form):
        return "slide embedding dimensions"


BUILTIN_MODALITIES = (CNA, RNASeq, RPPA, WSI)


@hookimpl
def register_modalities(register):
    for cls in BUILTIN_MODALITIES:
        register(cls())
