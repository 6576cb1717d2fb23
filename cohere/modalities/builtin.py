"""The built-in modalities: cna, rnaseq, rppa, wsi (the paper's preprocessing).

Registered through the same ``register_modalities`` hook as third-party plugins.
"""

from __future__ import annotations

import numpy as np

from ..errors import CohereError
from ..hookspecs import hookimpl
from .base import Modality


def _median(X):
    finite = X[np.isfinite(X)]
    return float(np.median(finite)) if finite.size else 0.0


class CNA(Modality):
    name = "cna"
    description = "gene-level copy number"
    input_forms = {
        "log2_ratio": "log2 segment mean vs diploid (TCGA/Firehose gene-level CNA); clipped to [-2, 2]",
        "absolute": "absolute copy number (e.g. ABSOLUTE); 0 excluded, log2(CN/2) clipped to [-2, 2]",
    }
    imputer = "median"

    def check(self, X, form):
        if form == "absolute" and np.nanmin(X) < 0:
            raise CohereError("cna: negative values, but input form 'absolute' expects copy numbers "
                              ">= 0; set the form to 'log2_ratio' if the table holds log2 ratios")
        if form == "log2_ratio" and _median(X) > 1.0:
            raise CohereError(f"cna: median value {_median(X):.2f} is implausible for log2 ratios "
                              "(expected about 0); set the form to 'absolute' for copy numbers")

    def transform(self, X, form):
        if form == "absolute":
            with np.errstate(divide="ignore"):
                X = np.where(X > 0, np.log2(np.where(X > 0, X, 1.0) / 2.0), np.nan)
        return np.clip(X, -2.0, 2.0)

    def output_units(self, form):
        return "log2(copy number / 2), clipped to [-2, 2]"


class RNASeq(Modality):
    name = "rnaseq"
    description = "bulk RNA-seq gene expression"
    input_forms = {
        "zscore": "expression z-scores (already normalised); clipped to [-10, 10] (real data holds "
                  "outliers up to 1.7e4)",
        "log2_count": "log2(count + 1); the paper's CPM normalisation, CPM > 1 in >= 20% filter, log2(CPM + 1)",
    }
    zscore_clip = 10.0
    min_cpm, min_fraction = 1.0, 0.20

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
        return "z-score (clipped to [-10, 10])" if form == "zscore" else "log2(CPM + 1)"


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
