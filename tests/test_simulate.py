"""The simulated cohort: determinism, raw input forms, missingness and known structure."""

import numpy as np
import pandas as pd
import pytest

from cohere.cohort import Cohort
from cohere.errors import CohereError
from cohere.simulate import PRESENCE, simulate_cohort

MODALITIES = ["cna", "rnaseq", "rppa", "wsi"]


@pytest.fixture(scope="module")
def sim():
    return simulate_cohort()


# ---------------------------------------------------------------- helpers


def log2_cpm(table: pd.DataFrame) -> np.ndarray:
    """The paper's RNA preprocessing: counts -> CPM -> log2(CPM + 1), CPM > 1 in >= 20%."""
    counts = 2.0 ** table.to_numpy(np.float64) - 1
    cpm = counts / counts.sum(axis=1, keepdims=True) * 1e6
    return np.log2(cpm[:, (cpm > 1).mean(axis=0) >= 0.2] + 1)


def centred_rppa(table: pd.DataFrame) -> np.ndarray:
    """Median-centre each antibody; fill NaN cells with the (zero) median."""
    x = table.to_numpy(np.float64)
    return np.nan_to_num(x - np.nanmedian(x, axis=0))


def standardise(y):
    return (y - y.mean(axis=0)) / y.std(axis=0)


def ridge_r2(x, y, lam=100.0, seed=0):
    """Held-out R^2 (pooled over outputs) of a ridge fit on a random 70% of rows."""
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[: int(0.7 * len(x))], order[int(0.7 * len(x)):]
    mu, sd, y_mu = x[train].mean(0), x[train].std(0) + 1e-8, y[train].mean(0)
    a = (x - mu) / sd
    gram = a[train].T @ a[train] + lam * np.eye(a.shape[1])
    w = np.linalg.solve(gram, a[train].T @ (y[train] - y_mu))
    resid = y[test] - (a[test] @ w + y_mu)
    return 1 - (resid ** 2).sum() / ((y[test] - y[test].mean(0)) ** 2).sum()


def assert_same(a, b):
    (ca, ta), (cb, tb) = a, b
    for m in ca.tables:
        pd.testing.assert_frame_equal(ca.tables[m], cb.tables[m])
        pd.testing.assert_frame_equal(ta.complete[m], tb.complete[m])
        pd.testing.assert_frame_equal(ta.private[m], tb.private[m])
    pd.testing.assert_frame_equal(ca.clinical, cb.clinical)
    pd.testing.assert_series_equal(ca.split, cb.split)
    pd.testing.assert_frame_equal(ta.shared, tb.shared)


# ---------------------------------------------------------------- determinism and arguments


def test_same_seed_same_cohort_and_different_seed_differs(sim):
    assert_same(sim, simulate_cohort(seed=0))
    other, other_truth = simulate_cohort(seed=1)
    assert not np.allclose(other_truth.shared, sim[1].shared)
    assert not other.tables["wsi"].index.equals(sim[0].tables["wsi"].index)
    assert not other.clinical["os_time"].equals(sim[0].clinical["os_time"])


def test_changing_one_modality_leaves_the_others_unchanged(sim):
    cohort, truth = simulate_cohort(features={"cna": 50}, wsi_dim=32)
    for m in ("rnaseq", "rppa"):
        pd.testing.assert_frame_equal(cohort.tables[m], sim[0].tables[m])
    pd.testing.assert_frame_equal(truth.shared, sim[1].shared)


def test_default_shapes_ids_and_dtypes(sim):
    cohort, truth = sim
    assert cohort.modalities == MODALITIES
    assert {m: t.shape[1] for m, t in cohort.tables.items()} == {
        "cna": 200, "rnaseq": 300, "rppa": 60, "wsi": 768}
    ids = cohort.samples()
    assert len(ids) == 800 and ids[0] == "SIM-0001" and ids[-1] == "SIM-0800"
    for t in cohort.tables.values():
        assert t.index.name == "sample" and t.index.is_monotonic_increasing
        assert (t.dtypes == np.float32).all()
    for m in ("cna", "rnaseq", "wsi"):
        assert np.isfinite(cohort.tables[m].to_numpy()).all()
    assert truth.shared.shape == (800, 8) and truth.shared.index.equals(ids)
    assert all(p.shape == (800, 4) for p in truth.private.values())
    assert all(c.shape[0] == 800 and c.index.equals(ids) for c in truth.complete.values())
    assert cohort.input_forms == {"cna": "absolute", "rnaseq": "log2_count",
                                  "rppa": "raw", "wsi": "embedding"}


def test_feature_overrides_and_omitted_modalities():
    cohort, truth = simulate_cohort(100, features={"cna": 50, "rppa": 0}, wsi_dim=64)
    assert cohort.modalities == ["cna", "rnaseq", "wsi"]
    assert [cohort.tables[m].shape[1] for m in cohort.modalities] == [50, 300, 64]
    assert set(cohort.input_forms) == set(truth.complete) == set(cohort.modalities)
    assert cohort.presence().any(axis=1).all()
    assert simulate_cohort(60, features={"wsi": 16})[0].tables["wsi"].shape[1] == 16


@pytest.mark.parametrize("kwargs", [
    {"n_patients": 49}, {"n_patients": 800.0}, {"seed": -1}, {"n_cancer_types": 1},
    {"n_cancer_types": 27}, {"n_patients": 60, "n_cancer_types": 20},
    {"features": {"mirna": 10}}, {"features": [("cna", 10)]}, {"features": {"cna": -1}},
    {"wsi_dim": 2.5},
    {"features": {"cna": 0, "rnaseq": 0, "rppa": 0}, "wsi_dim": 0},
])
def test_bad_arguments_raise_one_line_cohere_errors(kwargs):
    with pytest.raises(CohereError) as err:
        simulate_cohort(**kwargs)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- missingness and split


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_missingness_rates_and_complete_patients(seed):
    cohort, _ = simulate_cohort(seed=seed)
    presence = cohort.presence()
    assert presence.any(axis=1).all()  # every patient has at least one modality
    rates = presence.mean()
    for m in ("rnaseq", "rppa", "wsi"):
        assert abs(rates[m] - PRESENCE[m]) < 0.02, (m, rates[m])
    assert 0.93 <= rates["cna"] <= 0.99  # the patients left with nothing get one modality
    assert presence.all(axis=1).mean() >= 0.25  # measured 0.27-0.38 over seeds 0-29
    # correlated with cancer type: the smallest type has no RNA-seq at all
    by_type = presence.join(cohort.clinical["cancer_type"]).groupby("cancer_type").mean()
    assert by_type.loc["SIMF", "rnaseq"] == 0 and (by_type["rnaseq"].drop("SIMF") > 0).all()
    assert (by_type.max() - by_type.min()).drop("rnaseq").max() > 0.15


def test_no_missingness_when_asked():
    cohort, _ = simulate_cohort(100, missing=False)
    assert cohort.presence().all().all()
    assert set(cohort.split) == {"train", "val", "test"}


def test_split_draws_val_and_test_from_complete_patients(sim):
    cohort, _ = sim
    assert cohort.split.index.equals(cohort.samples())
    complete = set(cohort.samples(cohort.modalities))
    held_out = cohort.split.index[cohort.split != "train"]
    assert set(held_out) <= complete
    assert (cohort.split == "test").sum() >= 80 and (cohort.split == "val").sum() >= 20


# ---------------------------------------------------------------- raw input forms


def test_cna_is_absolute_copy_number_in_segments(sim):
    x = sim[1].complete["cna"].to_numpy()
    assert set(np.unique(x)) <= {0, 1, 2, 3, 4, 5, 6}
    assert (x == 2).mean() > 0.6 and (x > 2).mean() > 0.03 and (x < 2).mean() > 0.03
    assert 0 < (x == 0).mean() and (x == 0).mean(axis=0).max() < 0.1  # rare homozygous losses
    # neighbouring genes share copy number far more often than genes in random order
    shuffled = x[:, np.random.default_rng(0).permutation(x.shape[1])]
    adjacent = (x[:, 1:] == x[:, :-1]).mean()
    assert adjacent > 0.85 and adjacent > (shuffled[:, 1:] == shuffled[:, :-1]).mean() + 0.2


def test_rnaseq_library_sizes_vary_and_low_genes_are_filtered(sim):
    table = sim[0].tables["rnaseq"]
    library = (2.0 ** table.to_numpy(np.float64) - 1).sum(axis=1)
    assert library.min() > 0 and library.max() / library.min() > 5
    cpm = log2_cpm(table)
    kept = cpm.shape[1] / table.shape[1]
    assert 0.7 < kept < 0.95  # the CPM > 1 in >= 20% filter drops the low-expressed genes
    # CPM normalisation changes values by a per-sample amount, not one constant
    shift = table.to_numpy(np.float64).mean(axis=1) - np.log2(2.0 ** cpm).mean(axis=1)
    assert np.corrcoef(shift, np.log(library))[0, 1] > 0.5


def test_rppa_has_offsets_panel_gaps_and_sparse_nans(sim):
    table = sim[0].tables["rppa"]
    nan = table.isna()
    assert 0.01 < nan.to_numpy().mean() < 0.05
    gappy = nan.mean() > 0.15  # antibodies a batch of samples' panel lacks
    assert gappy.sum() == 3  # 5% of 60
    assert nan.any(axis=1).mean() > 0.3 and not nan.all(axis=1).any()
    assert table.median().std() > 1.0  # per-antibody offsets: median centring matters
    assert abs(np.nanmedian(centred_rppa(table), axis=0)).max() < 1e-6


def test_clinical_labels(sim):
    clinical = sim[0].clinical
    assert list(clinical.columns) == [
        "cancer_type", "stage", "os_time", "os_event", "age", "gender"]
    sizes = clinical["cancer_type"].value_counts()
    assert list(sizes.index) == [f"SIM{c}" for c in "ABCDEF"] and sizes.iloc[0] > 3 * sizes.iloc[-1]
    assert 0.08 < clinical["stage"].isna().mean() < 0.22
    assert set(clinical["stage"].dropna()) == {1.0, 2.0, 3.0, 4.0}
    assert (clinical["os_time"] > 0).all() and set(clinical["os_event"]) == {0, 1}
    assert 0.45 < clinical["os_event"].mean() < 0.75
    assert set(clinical["gender"]) == {"FEMALE", "MALE"} and clinical["age"].between(20, 90).all()
    # the hazard rises with stage
    events = clinical.groupby("stage")["os_event"].mean()
    assert events[4.0] > events[1.0] + 0.15


# ---------------------------------------------------------------- ground truth and structure


def test_ground_truth_agrees_with_observed_tables(sim):
    cohort, truth = sim
    for m, table in cohort.tables.items():
        full = truth.complete[m].loc[table.index].to_numpy()
        seen = ~np.isnan(table.to_numpy())
        assert np.array_equal(table.to_numpy()[seen], full[seen])
        assert np.isfinite(truth.complete[m].to_numpy()).all()
        assert len(table) < len(truth.complete[m])


def test_shared_factors_are_predictable_across_modalities_private_ones_are_not(sim):
    cohort, truth = sim
    ids = cohort.samples(cohort.modalities)
    assert len(ids) >= 200
    rppa = centred_rppa(cohort.tables["rppa"].loc[ids])
    rnaseq = standardise(log2_cpm(cohort.tables["rnaseq"].loc[ids]))
    # measured on seeds 0-29: 0.67-0.74 / 0.90-0.93 / -0.15 to -0.02 (cna below: -0.04-0.04)
    assert ridge_r2(rppa, rnaseq) > 0.5
    assert ridge_r2(rppa, truth.shared.loc[ids].to_numpy()) > 0.8
    assert ridge_r2(rppa, truth.private["rnaseq"].loc[ids].to_numpy()) < 0.05
    # copy number is much harder to predict (as in the paper)
    cna = np.log2(np.maximum(cohort.tables["cna"].loc[ids].to_numpy(np.float64), 0.5) / 2)
    cna = standardise(cna[:, cna.std(axis=0) > 0])
    assert ridge_r2(rppa, cna) < 0.1


def test_cancer_types_separate_in_slide_embeddings(sim):
    cohort, _ = sim
    wsi = cohort.tables["wsi"].to_numpy(np.float64)
    labels = cohort.clinical["cancer_type"].loc[cohort.tables["wsi"].index].to_numpy()
    order = np.random.default_rng(0).permutation(len(wsi))
    train, test = order[: len(wsi) // 2], order[len(wsi) // 2:]
    types = np.unique(labels)
    centroids = np.stack([wsi[train][labels[train] == t].mean(axis=0) for t in types])
    nearest = ((wsi[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
    # chance 1/6; seeds 0-29: >= 0.63, mean 0.77
    assert (types[nearest] == labels[test]).mean() > 0.5


def test_write_read_round_trip(sim, tmp_path):
    cohort, _ = sim
    back = Cohort.read(cohort.write(tmp_path / "sim"), known=MODALITIES)
    assert back.modalities == cohort.modalities
    for m in cohort.modalities:
        pd.testing.assert_frame_equal(back.tables[m], cohort.tables[m])
    pd.testing.assert_frame_equal(back.clinical, cohort.clinical)
    pd.testing.assert_series_equal(back.split, cohort.split)
    assert back.input_forms == cohort.input_forms
