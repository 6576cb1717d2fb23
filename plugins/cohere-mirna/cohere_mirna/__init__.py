"""cohere-mirna: the ``mirna`` modality (miRNA-seq) as a cohere plugin.

Registered through the ``cohere`` entry-point group; nothing here touches the network or
any existing expert. Once installed, ``mirna`` tables in a cohort are read like the
built-in modalities, ``cohere encoders train --modality mirna`` trains its encoder, and
experts ``mirna->X`` / ``X->mirna`` train and join a Coherent Denoising consensus.

Input forms:
  log2_rpm   log2(reads per million + 1), the usual miRNA-seq quantification (default)
  counts     raw read counts per miRNA; converted to log2(RPM + 1) per sample

Preprocessing (fitted on training samples only, by cohere's shared Preprocessor): keep
miRNAs expressed (log2(RPM + 1) > 1, i.e. RPM > 1) in at least 20% of training samples,
standardise, KNN-impute; the encoder is an autoencoder to cohere's 32-d latent.
"""

from __future__ import annotations

import numpy as np

from cohere.errors import CohereError
from cohere.hookspecs import hookimpl
from cohere.modalities import Modality

__version__ = "0.1.0"

MAX_LOG2_RPM = float(np.log2(1e6 + 1))  # one miRNA holding every read of a sample


class MiRNA(Modality):
    name = "mirna"
    description = "miRNA-seq expression (mature or precursor miRNAs)"
    input_forms = {
        "log2_rpm": "log2(reads per million + 1); values in [0, ~20]",
        "counts": "raw read counts per miRNA; converted to log2(RPM + 1) with each sample's library size",
    }
    encoder = "autoencoder"
    imputer = "knn"
    min_rpm, min_fraction = 1.0, 0.20

    def check(self, X, form):
        finite = X[np.isfinite(X)]
        if finite.size == 0:
            return
        if finite.min() < 0:
            raise CohereError(f"mirna: negative values (min {finite.min():.2f}), but input form {form!r} expects "
                              "values >= 0; give log2(RPM + 1) or raw counts")
        if form == "log2_rpm" and finite.max() > MAX_LOG2_RPM + 0.5:
            raise CohereError(f"mirna: maximum {finite.max():.1f} is above log2(1e6 + 1) = {MAX_LOG2_RPM:.1f}, "
                              "implausible for log2(RPM + 1); set the input form to 'counts' for raw read counts")
        if form == "counts" and finite.max() <= MAX_LOG2_RPM and not np.allclose(finite, np.round(finite)):
            raise CohereError("mirna: non-integer values all below 20 look like log2(RPM + 1), not counts; set the "
                              "input form to 'log2_rpm'")

    def transform(self, X, form):
        if form == "log2_rpm":
            return X
        library = np.nansum(X, axis=1, keepdims=True)                     # (n, 1)
        rpm = X / np.where(library > 0, library, 1.0) * 1e6               # (n, mirnas)
        return np.log2(rpm + 1.0)

    def keep_features(self, Xt, form):
        # RPM > 1  <=>  log2(RPM + 1) > 1, in at least min_fraction of training samples
        return np.nanmean(Xt > np.log2(self.min_rpm + 1.0), axis=0) >= self.min_fraction

    def output_units(self, form):
        return "log2(reads per million + 1)"


@hookimpl
def register_modalities(register):
    register(MiRNA())
