"""The paper's preprocessing per modality, fitted on training samples only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cohere.errors import CohereError
from cohere.modalities import Preprocessor
from cohere.plugins import get_modality, modality_names


def test_builtins_are_registered_sorted():
    assert modality_names() == ["cna", "rnaseq", "rppa", "wsi"]
    with pytest.raises(CohereError, match="unknown modality 'mirna'"):
        get_modality("mirna")


def test_cna_absolute_is_log2_ratio_clipped_and_zero_excluded():
    cna = get_modality("cna")
    X = np.array([[2.0, 4.0, 1.0, 0.0, 64.0]])
    out = cna.transform(X, "absolute")
    assert np.allclose(out[0, :3], [0.0, 1.0, -1.0])
    assert np.isnan(out[0, 3]) and out[0, 4] == 2.0
    assert cna.transform(np.array([[-3.0, 0.5]]), "log2_ratio").tolist() == [[-2.0, 0.5]]
    with pytest.raises(CohereError, match="expects copy numbers >= 0"):
        cna.check(np.array([[-0.5, 1.0]]), "absolute")
    with pytest.raises(CohereError, match="implausible for log2 ratios"):
        cna.check(np.full((3, 3), 2.0), "log2_ratio")
    with pytest.raises(CohereError, match="unknown input form 'segments'"):
        cna.resolve_form("segments")


def test_rnaseq_cpm_is_library_size_invariant_and_filters_low_genes():
    rna = get_modality("rnaseq")
    rng = np.random.default_rng(0)
    counts = rng.poisson(200, size=(40, 6)).astype(float)
    counts[:, 5] = rng.poisson(0.0001, size=40)                 # a silent gene
    a = rna.transform(np.log2(counts + 1), "log2_count")
    b = rna.transform(np.log2(3 * counts + 1), "log2_count")  # 3x deeper sequencing
    assert np.allclose(a[:, :5], b[:, :5], atol=0.02)
    df = pd.DataFrame(np.log2(counts + 1), columns=list("abcdef"))
    pre = Preprocessor(rna, "log2_count").fit(df)
    assert pre.features_ == list("abcde")                       # CPM > 1 in >= 20% of samples
    with pytest.raises(CohereError, match="expects log2\\(count \\+ 1\\) >= 0"):
        rna.check(np.array([[-1.0]]), "log2_count")


def test_real_rnaseq_outliers_are_tamed(real):
    rna = get_modality("rnaseq")
    X = real.tables["rnaseq"].to_numpy(np.float64)
    assert X.max() > 1e4                                         # the raw table's outlier
    assert np.abs(rna.transform(X, "zscore")).max() <= 10.0


def test_preprocessing_is_fit_on_train_only(real):
    table = real.tables["rppa"]
    train = table.loc[table.index.intersection(real.ids_in("train"))]
    val = table.loc[table.index.intersection(real.ids_in("val"))]
    pre = Preprocessor(get_modality("rppa"), "normalized").fit(train)
    X = train.to_numpy(np.float64)
    missing = np.isnan(X).mean(0)
    assert pre.features_ == list(train.columns[missing <= 0.10])      # >10% missing dropped
    kept = train[pre.features_].to_numpy(np.float64)
    assert np.allclose(pre.state_["center"].numpy(), np.nanmedian(kept, 0), atol=1e-6)
    # changing validation rows changes nothing fitted
    before = {k: v.clone() for k, v in pre.state_.items()}
    other = Preprocessor(get_modality("rppa"), "normalized").fit(train)
    assert all(np.array_equal(before[k], other.state_[k]) for k in before)
    Z = pre.transform(val)
    assert Z.shape == (len(val), len(pre.features_)) and np.isfinite(Z).all()
    # median centring is undone on decode: values come back on the input scale
    back = pre.inverse_transform(pre.transform(train.iloc[:20]))
    obs = train.iloc[:20][pre.features_].notna().to_numpy()
    assert np.allclose(back.to_numpy()[obs], train.iloc[:20][pre.features_].to_numpy()[obs], atol=1e-4)


def test_knn_imputation_beats_the_median_on_structured_data(real):
    table = real.tables["rppa"]
    train = table.loc[table.index.intersection(real.ids_in("train"))]
    val = table.loc[table.index.intersection(real.ids_in("val"))]
    pre = Preprocessor(get_modality("rppa"), "normalized").fit(train)
    full = pre.transform(val)
    holed = val[pre.features_].copy()
    rng = np.random.default_rng(0)
    mask = rng.random(holed.shape) < 0.2
    holed = holed.mask(mask)
    imputed = pre.transform(holed)
    err_knn = ((imputed - full)[mask] ** 2).mean()
    err_median = ((pre.state_["median"].numpy()[None].repeat(len(val), 0) - full)[mask] ** 2).mean()
    assert err_knn < 0.8 * err_median


def test_cna_uses_median_imputation_and_stores_no_prototypes(real_cna):
    table = real_cna.tables["cna"].iloc[:400, :100]
    pre = Preprocessor(get_modality("cna"), "log2_ratio").fit(table)
    assert "prototypes" not in pre.state_
    holed = table.copy()
    holed.iloc[0, :5] = np.nan
    Z = pre.transform(holed)
    assert np.allclose(Z[0, :5], pre.state_["median"].numpy()[:5])


def test_transform_needs_the_trained_features(real):
    table = real.tables["rppa"].iloc[:300]
    pre = Preprocessor(get_modality("rppa"), "normalized").fit(table)
    with pytest.raises(CohereError, match="the table lacks .* of the encoder's"):
        pre.transform(table.iloc[:, :10])


# ---------------------------------------------------------------- what was imputed is said (issue 11.6)


def test_the_record_counts_absent_features_and_missing_values(real):
    table = real.tables["rppa"].iloc[:300]
    pre = Preprocessor(get_modality("rppa"), "normalized").fit(table)
    n = len(pre.features_)
    complete = table[pre.features_].dropna().iloc[:40]
    X, rec = pre.transform_recorded(complete)
    assert (rec.absent, rec.missing_cells, rec.note()) == ([], 0, "")          # nothing imputed: no note
    assert np.array_equal(X, pre.transform(complete))
    holed = complete.drop(columns=pre.features_[2:5]).copy()
    holed.iloc[:10, :2] = np.nan
    X, rec = pre.transform_recorded(holed)
    assert rec.absent == pre.features_[2:5] and rec.missing_cells == 20 and rec.n_samples == 40
    assert rec.per_sample.tolist() == [5] * 10 + [3] * 30 and rec.per_sample.index.equals(holed.index)
    assert np.allclose(rec.fraction_per_sample.iloc[0], 5 / n)
    assert rec.note() == (f"rppa: 3 of the encoder's {n} features are absent from the table (coverage "
                          f"{1 - 3 / n:.0%}) and were imputed from the present ones (PPCA conditional mean) "
                          f"for all 40 samples (first: {', '.join(pre.features_[2:5])}); 20 missing values of "
                          f"the {n - 3} present features ({20 / (40 * (n - 3)):.1%}) were imputed")
    assert rec.to_dict() == {"features": n, "absent": 3, "absent_features": pre.features_[2:5],
                             "coverage": round(1 - 3 / n, 4), "samples": 40, "missing_cells": 20,
                             "method": "ppca", "renamed": 0, "converted": ""}
    assert np.isfinite(X).all()
    _, rec = pre.transform_recorded(complete.drop(columns=pre.features_[:5]))
    assert rec.note().startswith(f"rppa: 5 of the encoder's {n} features") and "(first: " in rec.note()
    assert rec.note().endswith(", ...)")                                     # the first three, then ...


def test_values_the_input_form_makes_missing_are_counted():
    """cna in absolute copy numbers: a 0 is excluded (log2 undefined), so it is imputed too."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.integers(1, 5, size=(60, 6)).astype(float), columns=list("abcdef"))
    pre = Preprocessor(get_modality("cna"), "absolute").fit(df)
    df.iloc[0, 0] = 0.0
    assert pre.transform_recorded(df)[1].missing_cells == 1


def test_a_transposed_table_is_named_by_the_encoder(real):
    table = real.tables["rppa"].iloc[:300]
    pre = Preprocessor(get_modality("rppa"), "normalized").fit(table)
    with pytest.raises(CohereError, match=rf"rppa: the table looks transposed \({len(pre.features_)} of its "
                                          r"row ids are features of the encoder, 0 of its column names\); .* "
                                          r"transpose it"):
        pre.transform(table.iloc[:50].T)


# ---------------------------------------------------------------- partial panels and other forms (issue 12)


def test_absent_features_are_imputed_from_the_present_ones_better_than_by_neighbours(real):
    """PPCA conditional mean vs the KNN imputer at 50% coverage, on real rppa (held-out rows)."""
    table = real.tables["rppa"]
    pre = Preprocessor(get_modality("rppa"), "normalized").fit(table.iloc[:2000])
    rows = table.iloc[3000:3300][pre.features_].dropna()
    full = pre.transform(rows)
    half = rows[pre.features_[::2]]
    Z, rec = pre.transform_recorded(half)
    assert rec.method == "ppca" and rec.coverage == pytest.approx(1 - len(pre.features_[1::2]) / len(pre.features_))
    s = {k: v.double().numpy() for k, v in pre.state_.items()}
    holed = full.astype(np.float64).copy()
    holed[:, 1::2] = np.nan
    knn = pre._impute(holed, s)

    def r2(x):
        return 1 - ((x[:, 1::2] - full[:, 1::2]) ** 2).sum() / ((full[:, 1::2] - full[:, 1::2].mean(0)) ** 2).sum()

    assert r2(Z) > r2(knn) + 0.1 and r2(Z) > 0.3, (r2(Z), r2(knn))        # measured: 0.36 vs 0.18
    np.testing.assert_array_equal(Z[:, ::2], full[:, ::2])              # present features are kept as they are


def test_an_encoder_saved_without_the_ppca_keeps_the_old_limit(real):
    table = real.tables["rppa"].iloc[:300]
    pre = Preprocessor(get_modality("rppa"), "normalized").fit(table)
    for k in ("ppca_loadings", "ppca_mean", "ppca_noise"):
        pre.state_.pop(k)
    with pytest.raises(CohereError, match=r"rppa: the table lacks \d+ of the encoder's \d+ features .*saved without "
                                          r"the model that imputes absent features, so it needs at least 90% of "
                                          r"them: re-train it"):
        pre.transform(table[pre.features_[:100]])


def _encoder(real, kind="pca"):
    from cohere.encoders import make_encoder

    table = real.tables["rnaseq"]
    return make_encoder(get_modality("rnaseq"), "zscore", kind).fit(table.iloc[:600])


def test_log_scale_expression_is_z_scored_within_each_cancer_type(real):
    """A z-score encoder given log2 expression: z-scored per gene within each cancer type of
    the user's cohort, as the training z-scores were made (and said so)."""
    from cohere.cohort import Cohort
    from cohere.modalities.builtin import zscore_within

    enc = _encoder(real)
    table = real.tables["rnaseq"].iloc[1000:1150]
    types = real.clinical["cancer_type"].reindex(table.index).to_numpy()
    rng = np.random.default_rng(0)
    level, spread = rng.uniform(4, 12, table.shape[1]), rng.uniform(0.5, 2.5, table.shape[1])
    offsets = {t: rng.normal(0, 0.5, table.shape[1]) for t in set(types)}
    log2 = table * spread + level + np.stack([offsets[t] for t in types])
    user = Cohort({"rnaseq": log2}, real.clinical.loc[table.index], input_forms={"rnaseq": "log2_expression"})
    z = pd.DataFrame(zscore_within(table.to_numpy(np.float64), types), index=table.index, columns=table.columns)
    expected = enc.encode(z)
    got = enc.encode_cohort(user)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), atol=1e-4)
    assert enc.imputation_.note().startswith("rnaseq: converted from 'log2_expression' to the encoder's 'zscore': "
                                             "z-scored per gene within each cancer type")
    small = pd.Series(types).value_counts()
    assert (small >= 10).any()


def test_zscore_within_pools_small_groups_and_keeps_missing_values():
    from cohere.modalities.builtin import zscore_within

    X = np.arange(30, dtype=float).reshape(15, 2)
    X[0, 0] = np.nan
    groups = np.array(["a"] * 12 + ["b"] * 3)               # b is too small: pooled with nothing else
    Z = zscore_within(X, groups)
    assert np.isnan(Z[0, 0]) and np.allclose(np.nanmean(Z[:12], axis=0), 0) and np.allclose(Z[12:].mean(0), 0)
    assert np.allclose(np.nanstd(Z[:12], axis=0), 1)


def test_other_form_mismatches_are_refused(real):
    from cohere.cohort import Cohort

    enc = _encoder(real)
    table = real.tables["rnaseq"].iloc[:50]
    with pytest.raises(CohereError, match="rnaseq: negative values, but input form 'log2_count' expects"):
        enc.encode_cohort(Cohort({"rnaseq": table}, input_forms={"rnaseq": "log2_count"}))


def test_gistic_calls_are_their_own_form(real_cna):
    from cohere.cohort import Cohort
    from cohere.encoders import make_encoder

    cna = get_modality("cna")
    table = real_cna.tables["cna"].iloc[:400, :80]
    calls = np.sign(table).fillna(0) * (table.abs() > 0.1) + np.sign(table).fillna(0) * (table.abs() > 0.7)
    with pytest.raises(CohereError, match=r"cna: every value is one of -2, -1, 0, 1, 2: these look like GISTIC "
                                          r"thresholded calls, not log2 ratios; declare the form 'gistic'"):
        cna.check(calls.to_numpy(), "log2_ratio")
    enc = make_encoder(cna, "log2_ratio", "pca").fit(table)
    with pytest.raises(CohereError, match=r"cna: GISTIC thresholded calls and log2 ratios are different forms .*"
                                          r"cohere encoders train --input-form cna=gistic"):
        enc.encode_cohort(Cohort({"cna": calls}, input_forms={"cna": "gistic"}))
    gistic = make_encoder(cna, "gistic", "pca").fit(calls)            # trained on calls, calls are fine
    assert gistic.encode(calls).shape == (400, 32)
    with pytest.raises(CohereError, match=r"cna: value 0.5 is not a GISTIC call"):
        cna.check(np.array([[0.5, 1.0]]), "gistic")
    absolute = Cohort({"cna": 2 * np.exp2(table.clip(-2, 2))}, input_forms={"cna": "absolute"})
    np.testing.assert_allclose(enc.encode_cohort(absolute).to_numpy(), enc.encode(table).to_numpy(), atol=1e-4)
