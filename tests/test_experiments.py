"""The paper's experiments end to end on a small simulated cohort with tiny models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cohere.errors import CohereError

MODS = ["cna", "rnaseq", "rppa"]


@pytest.fixture(scope="module")
def setup(tiny):
    return tiny


@pytest.fixture(scope="module")
def data(setup):
    from cohere.evaluation.experiments import EvalData

    root, cohort = setup
    return EvalData.load(cohort, root / "models", MODS)


@pytest.fixture(scope="module")
def forests(data):
    from cohere.evaluation.experiments import DownstreamModels, ForestSettings

    return DownstreamModels(data, ForestSettings(rf_trees=15, rsf_trees=4)).fit()


def test_eval_data_uses_complete_val_patients(data, setup):
    _, cohort = setup
    assert set(data.test_ids) <= set(cohort.ids_in("val")) and len(data.test_ids) >= 20
    assert all(data.test[m].shape == (len(data.test_ids), 32) for m in MODS)
    assert not set(data.test_ids) & set(data.train_ids)


def test_generated_is_cached_and_seeded(data):
    a = data.generated("rppa", ("cna",), "coherent", 2, seed=5)
    assert a.shape == (2, len(data.test_ids), 32)
    assert data.generated("rppa", ("cna",), "coherent", 2, seed=5) is a
    data.cache.pop(("rppa", ("cna",), "coherent", 2, 5))
    np.testing.assert_array_equal(data.generated("rppa", ("cna",), "coherent", 2, seed=5), a)


def test_eval_data_on_a_held_out_cohort(setup, tmp_path):
    """--test-cohort: every complete patient of another cohort folder (no split.csv) is a test
    patient; the training patients still come from the training cohort's train split."""
    from cohere.cohort import Cohort
    from cohere.evaluation.experiments import EvalData, reconstruction

    root, cohort = setup
    held = cohort.ids_in("val")[:40]
    tables = {m: t.loc[t.index.intersection(held)] for m, t in cohort.tables.items()}
    tables["rppa"] = tables["rppa"].iloc[5:]  # 5 held-out patients without rppa: not complete
    Cohort(tables, cohort.clinical.loc[held]).write(tmp_path / "held_out")
    # a split.csv of its own (any labels) is ignored: every complete patient is a test patient
    pd.Series("heldout", index=held, name="split").rename_axis("sample").to_csv(tmp_path / "held_out" / "split.csv")
    data = EvalData.load(cohort, root / "models", MODS, test_cohort=tmp_path / "held_out")
    complete = set(held) - set(cohort.tables["rppa"].index.intersection(held)[:5])
    assert set(data.test_ids) == complete & set(cohort.samples(MODS))
    assert not set(data.test_ids) & set(data.train_ids)
    assert set(data.train_ids) == set(cohort.ids_in("train"))
    df = reconstruction(data, draws=2, baselines=False)
    assert np.isfinite(df.r2_of_mean).all()
    Cohort({m: t.iloc[:10] for m, t in tables.items()}, cohort.clinical.loc[held]).write(tmp_path / "tiny")
    with pytest.raises(CohereError, match="complete test patients"):
        EvalData.load(cohort, root / "models", MODS, test_cohort=tmp_path / "tiny")


def test_reconstruction_rows_and_calibrated_line(data):
    from cohere.evaluation.baselines import mofa_available
    from cohere.evaluation.experiments import reconstruction

    ranks = {}
    df = reconstruction(data, draws=4, iterative=False, histograms=ranks)
    # 3 targets x 3 conditioning sets x (2 generators + mean, knn, ridge, [MOFA+,] random neighbour,
    # gauss, resboot)
    points = ["mean", "knn", "ridge"] + (["MOFA+"] if mofa_available() else [])
    stochastic = ["random neighbour", "gauss", "resboot"]
    assert len(df) == 3 * 3 * (2 + len(points) + len(stochastic))
    assert set(df.method) == {"expert", "coherent", "multi", *points, *stochastic}
    np.testing.assert_allclose(df.calibrated_single_draw_r2, 2 * df.r2_of_mean - 1)
    point = df[df.method.isin(points)]
    assert (point.var_pct == 0).all() and np.allclose(point.r2, point.r2_of_mean) and point.cov90.isna().all()
    assert (df[df.method.isin(stochastic)].var_pct > 0).all()
    assert np.isfinite(df[["r2", "r2_of_mean", "r2_of_mean10", "energy_score", "crps"]].to_numpy()).all()
    assert (df.draws == 4).all() and np.allclose(df.cov90_calibrated, 3 * 0.9 / 5)
    # a rank histogram per stochastic method: the generators and gauss / resboot
    assert ("cna", "rnaseq+rppa", "coherent") in ranks and ("cna", "rnaseq", "resboot") in ranks
    assert all(h.shape == (5,) and abs(h.sum() - 1) < 1e-9 for h in ranks.values())
    with pytest.raises(CohereError, match="draws >= 2"):
        reconstruction(data, draws=1)


def test_privacy_metrics_and_dcr(data):
    from cohere.evaluation.experiments import expert_ensemble_unconditional, privacy

    x = expert_ensemble_unconditional(data, "cna", 30, seed=1)
    assert x.shape == (30, 32) and np.isfinite(x).all()
    res = privacy(data, runs=2, max_reference=200)
    assert set(res.table.method) == {"multi (all masked)", "experts (zero condition)", "held-out real"}
    assert res.table[["precision", "recall", "f1"]].apply(lambda c: c.between(0, 1).all()).all()
    assert (res.table.energy_distance >= 0).all()
    assert len(res.dcr) == 3 * 2 and res.dcr.passes.dtype == bool
    assert res.samples[("rppa", "multi (all masked)")].shape == (200, 32)


def test_completion_and_table2_layout(data, forests):
    from cohere.evaluation.experiments import completion, completion_table

    runs = completion(data, forests, runs=2)
    assert {"full", "ablated", "multi", "coherent", "mean-imputed", "knn-imputed", "cancer type only"} <= set(
        runs.condition)
    assert runs.os_cindex.between(0, 1).all() and runs.stage_f1.between(0, 1).all()
    table = completion_table(runs)
    assert len(table) == 7 * 2  # every non-empty removed set x {stage F1, C-index}
    row = table[(table.removed == "rnaseq") & (table.metric == "stage_f1")].iloc[0]
    assert row["drop"] == pytest.approx(row["ablated"] - row["full"])
    assert row["gain coherent"] == pytest.approx(row["coherent"] - row["ablated"])
    # multiple imputation: one pooled row per (removed, method), the forests' outputs averaged
    pooled = runs[runs.condition == "coherent (MI pooled)"]
    assert len(pooled) == 6 and "gain coherent (MI pooled)" in table.columns
    # single imputation with the mean of the draws (what generate --aggregate writes)
    assert len(runs[runs.condition == "coherent (mean of draws)"]) == 6 and "coherent (mean of draws)" in table.columns


def test_completion_pools_all_k_draws_and_runs_the_first(data, forests):
    """draws=K > runs: MI pooled and the mean of draws use all K draws of cohere complete, the
    single-draw rows are the first ``runs`` of them (draw k in run k)."""
    from cohere.evaluation.experiments import completion, generated_completions

    runs = completion(data, forests, runs=2, draws=4, methods=("coherent",))
    rows = runs[(runs.removed == "rnaseq") & (runs.condition == "coherent")]
    assert list(rows.run) == [0, 1]
    real = {m: data.test[m].to_numpy() for m in MODS if m != "rnaseq"}
    copies, mean = generated_completions(data, forests, real, ("rnaseq",), "coherent", 4, 0)
    assert len(copies) == 4
    gens = data.completed(("rnaseq",), "coherent", 4, 0)["rnaseq"]
    np.testing.assert_allclose(mean[:, 32:64], gens.mean(0))  # rnaseq's block: the mean of all 4 draws
    pooled = runs[(runs.removed == "rnaseq") & (runs.condition == "coherent (MI pooled)")].iloc[0]
    assert pooled.stage_f1 == pytest.approx(forests.scores(copies)["stage_f1"])
    assert pooled.os_cindex == pytest.approx(forests.scores(copies)["os_cindex"])
    assert rows.iloc[1].stage_f1 == pytest.approx(forests.scores(copies[1])["stage_f1"])


def test_pooled_scores_average_the_forests_outputs(data, forests):
    ids = data.test_ids
    real = forests.features({m: data.test[m].to_numpy() for m in MODS}, ids)
    assert forests.scores([real, real]) == forests.scores(real)  # K identical copies = one copy
    blank = forests.features({}, ids)
    ok, _ = forests.stage_targets()
    proba = (forests.stage_.predict_proba(real[ok]) + forests.stage_.predict_proba(blank[ok])) / 2
    from cohere.evaluation import metrics as M

    expect = M.macro_f1(forests.stage_targets()[1], forests.stage_.classes_[proba.argmax(1)])
    assert forests.scores([real, blank])["stage_f1"] == pytest.approx(expect)


def test_paired_bootstrap_of_two_completions(data, forests):
    from cohere.evaluation.experiments import completion_against_knn

    ids = data.test_ids
    real = forests.features({m: data.test[m].to_numpy() for m in MODS}, ids)
    blank = forests.features({}, ids)
    same = forests.paired_difference(real, real, n_resamples=200)
    assert same == {"stage_f1": (0.0, 0.0, 0.0), "os_cindex": (0.0, 0.0, 0.0)}  # a completion against itself
    d = forests.paired_difference(real, blank, n_resamples=200)
    full, none = forests.scores(real), forests.scores(blank)
    for metric, (diff, lo, hi) in d.items():
        assert diff == pytest.approx(full[metric] - none[metric]) and lo <= diff <= hi and lo < hi
    assert forests.paired_difference(real, blank, n_resamples=200) == d  # seeded
    table = completion_against_knn(data, forests, runs=2, n_resamples=100)
    assert len(table) == 6 * 2 * 2  # removed sets with something kept x {MI pooled, mean of draws} x 2 metrics
    assert set(table.completion) == {"coherent (MI pooled)", "coherent (mean of draws)"}
    assert (table["95% low"] <= table["minus knn"]).all() and (table["minus knn"] <= table["95% high"]).all()


def test_feature_space_against_ridge_and_ceiling(data):
    from cohere.evaluation.experiments import feature_space

    df = feature_space(data, draws=3)
    assert len(df) == 3 * 3 and set(df.target) == set(MODS)
    cols = ["decoded mean", "decoded mean, no feature stacking", "decoded latent mean", "mean latent, decoded",
            "decoded latent mean + joint residual ridge",
            "ridge -> features", "ridge -> latent, decoded"]
    assert np.isfinite(df[cols].to_numpy()).all()
    # nothing decoded from a latent beats the encoder's own reconstruction of the truth
    assert (df["ridge -> latent, decoded"] <= df["ceiling"] + 1e-9).all()
    assert (df.draws == 3).all()


def test_counterfactual_curves_meet_at_the_ends(data, forests):
    from cohere.evaluation.experiments import counterfactual

    curves, areas = counterfactual(data, forests, "rnaseq", repeats=2, orders=3, draws=2, n_fractions=5)
    for _, c in curves.groupby(["task", "repeat"]):
        ends = c[c.fraction.isin([0.0, 1.0])]
        np.testing.assert_allclose(ends.informed, ends.random)
    assert len(areas) == 2 * 2 and areas[["auc_informed", "auc_random"]].apply(np.isfinite).all().all()
    with pytest.raises(CohereError, match="not one of"):
        counterfactual(data, forests, "wsi")


def test_run_all_writes_the_report(data, tmp_path):
    from cohere.evaluation.experiments import ForestSettings
    from cohere.evaluation.pipeline import Plan, run_all

    plan = Plan(draws=2, recon_draws=3, completion_draws=3, resamples=100, privacy_runs=1, privacy_reference=150,
                signal_trees=10,
                forests=ForestSettings(rf_trees=10, rsf_trees=3), cf_repeats=1, cf_orders=2, iterative=False,
                reducer="pca")
    run_all(data, tmp_path, plan, {"note": "test"}, log=lambda s: None)
    text = (tmp_path / "report.md").read_text()
    for heading in ("1. Reconstruction", "1b. Feature space", "2. Manifold (PCA)", "3. Signal preservation", "4. Downstream completion",
                    "5. Counterfactual", "6. Privacy"):
        assert heading in text
    for f in ("reconstruction.csv", "feature_space.csv", "privacy_runs.csv", "privacy_dcr.csv", "signal.csv", "downstream.csv",
              "downstream_vs_knn.csv", "counterfactual_auc.csv", "meta.json"):
        assert (tmp_path / f).is_file()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "manifold.png").is_file() and (tmp_path / "rank_histograms.png").is_file()
    assert (tmp_path / "counterfactual.png").is_file()
    assert "issue 10's goals" in text
    assert "Generated completion minus KNN imputation" in text and "OS C-index − KNN" in text
    assert "by `cohere complete` with K = 3 draws per generated cell" in text


def test_cli_evaluate_and_prioritize(setup, tmp_path, capsys):
    from cohere.cli import main

    root, cohort = setup
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "reconstruction", "--cohort", str(root / "cohort"), "--models", str(root / "models"),
              "--out", str(tmp_path / "r"), "--draws", "2", "--no-iterative"])
    assert e.value.code == 0 and (tmp_path / "r" / "reconstruction.csv").is_file()
    with pytest.raises(SystemExit) as e:  # --draws below --runs: raised to --runs
        main(["evaluate", "downstream", "--cohort", str(root / "cohort"), "--models", str(root / "models"),
              "--out", str(tmp_path / "d"), "--runs", "3", "--draws", "2", "--trees", "10", "--rsf-trees", "3",
              "--resamples", "20"])
    assert e.value.code == 0
    report = (tmp_path / "d" / "report.md").read_text()
    assert "with K = 3 draws per generated cell" in report and "percentile, 20 resamples" in report
    runs = pd.read_csv(tmp_path / "d" / "downstream_runs.csv")
    assert sorted(runs[(runs.removed == "rnaseq") & (runs.condition == "coherent")].run) == [0, 1, 2]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["prioritize", "--modality", "rnaseq", "--cohort", str(root / "cohort"), "--models",
              str(root / "models"), "--draws", "2", "--trees", "10", "--rsf-trees", "3", "--top", "5",
              "--out", str(tmp_path / "rank.csv")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "rank" in out and "score" in out
    ranking = pd.read_csv(tmp_path / "rank.csv")
    lacking = set(cohort.samples(["cna", "rppa"])) - set(cohort.tables["rnaseq"].index)
    assert set(ranking["sample"]) == lacking
    assert ranking.score.is_monotonic_decreasing
    with pytest.raises(SystemExit) as e:
        main(["prioritize", "--modality", "rnaseq", "--cohort", str(root / "cohort"), "--models",
              str(root / "models"), "--task", "grade"])
    assert e.value.code == 1


def load_script(name: str):
    """scripts/<name>.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_reproduction_script_runs_on_a_models_folder(setup, tmp_path, monkeypatch):
    """scripts/reproduce_paper.py end to end (its wiring: arguments, plan, report), on the tiny
    models and the quick plan with the slow experiments skipped."""
    root, _ = setup
    script = load_script("reproduce_paper")
    out = tmp_path / "report"
    assert script.main(["--cohort", str(root / "cohort"), "--models", str(root / "models"), "--quick", "--out",
                        str(out), "--skip", "manifold,privacy,signal,downstream,counterfactual",
                        "--no-iterative"]) == 0
    text = (out / "report.md").read_text()
    assert "1. Reconstruction" in text and "quick" in text and "6. Privacy" not in text


def test_the_fill_script_compares_point_fills_with_multiple_imputation(setup, tmp_path):
    """scripts/completion_fill.py on the tiny models: one row per fill, and more neighbours
    shrink a KNN fill further."""
    root, _ = setup
    script = load_script("completion_fill")
    out = tmp_path / "fill.csv"
    assert script.main(["--cohort", str(root / "cohort"), "--models", str(root / "models"), "--removed", "rnaseq",
                        "--draws", "3", "--trees", "10", "--rsf-trees", "3", "--out", str(out)]) == 0
    df = pd.read_csv(out).set_index("fill")
    assert list(df.index) == ["KNN, 10 neighbours", "KNN, 50 neighbours", "ridge mean", "cohere, mean of 3 draws",
                              "cohere, mean rescaled to the training SD", "cohere, MI pooled over 3 copies"]
    share = df["variance share"]
    assert share["KNN, 50 neighbours"] < share["KNN, 10 neighbours"]
    assert share["cohere, mean of 3 draws"] < share["cohere, MI pooled over 3 copies"]  # a mean is narrower
    assert df[["stage_f1", "os_cindex"]].apply(lambda c: c.between(0, 1).all()).all()
