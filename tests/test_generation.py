"""`cohere generate` end to end on a small simulated cohort (known ground truth)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cohere.cli import main
from cohere.diffusion.train import TrainConfig
from cohere.encoders import make_encoder
from cohere.errors import CohereError
from cohere.experts import Expert, MultiConditionModel, model_dir
from cohere import generation
from cohere.generation import ModelSource, consensus_weights, decoded_draws, generate_missing, prepare_generation
from cohere.plugins import get_modality
from cohere.training import feature_residuals
from clihelp import run

TINY = dict(steps=600, eval_every=200, batch_size=128, hidden=64, layers=2, time_dim=16, val_steps=5,
            ema_decay=0.95)


@pytest.fixture(scope="module")
def world(tmp_path_factory, sim):
    """A cohort folder and a models folder with PCA encoders and tiny experts."""
    cohort, truth = sim
    root = tmp_path_factory.mktemp("gen")
    small = type(cohort)({m: cohort.tables[m] for m in ("cna", "rnaseq", "rppa")}, cohort.clinical,
                         cohort.split, {m: cohort.input_forms[m] for m in ("cna", "rnaseq", "rppa")})
    small.write(root / "cohort")
    models = root / "models"
    train = small.ids_in("train")
    encoders, latents = {}, {}
    for m, t in small.tables.items():
        enc = make_encoder(get_modality(m), small.input_forms[m], "pca").fit(t.loc[t.index.intersection(train)])
        enc.save(models / "encoders" / m)
        encoders[m] = enc
        latents[m] = enc.encode(t.loc[t.index.intersection(train)])
    cfg = TrainConfig(**TINY)
    residuals = feature_residuals(encoders["rppa"], small.tables["rppa"], latents["rppa"])
    for s, tgt in [("rnaseq", "rppa"), ("cna", "rppa")]:
        ids = latents[s].index.intersection(latents[tgt].index)
        e = Expert.fit(s, tgt, latents[s].loc[ids], latents[tgt].loc[ids], encoders, cfg,
                       target_residuals=residuals.loc[ids], target_encoder=encoders[tgt])
        e.save(model_dir(models, e.id))
    y = latents["rppa"]
    multi = MultiConditionModel.fit("rppa", y, {m: latents[m].reindex(y.index) for m in ("cna", "rnaseq")},
                                    encoders, cfg)
    multi.save(model_dir(models, multi.id))
    return small, root / "cohort", models, encoders


def test_coherent_generation_writes_draws_and_is_seeded(world, tmp_path, capsys):
    _, cohort_dir, models, _ = world
    args = ["generate", "--target", "rppa", "--have", "rnaseq,cna", "--cohort", str(cohort_dir),
            "--models", str(models), "--draws", "3", "--seed", "7"]
    for name in ("a.parquet", "b.parquet"):
        with pytest.raises(SystemExit) as e:
            main(args + ["--out", str(tmp_path / name)])
        assert e.value.code == 0
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns[:2]) == ["draw", "rppa.z00"] and a.shape[1] == 33
    have = set(pd.read_parquet(cohort_dir / "rnaseq.parquet").index) & set(
        pd.read_parquet(cohort_dir / "cna.parquet").index)
    assert set(a.index) == have and len(a) == 3 * len(have)
    out = capsys.readouterr().out
    assert "rnaseq->rppa w=" in out and "cna->rppa w=" in out


def test_decode_aggregate_and_diagnostics(world, tmp_path):
    _, cohort_dir, models, encoders = world
    with pytest.raises(SystemExit) as e:
        main(["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", str(cohort_dir), "--models",
              str(models), "--draws", "2", "--decode", "--aggregate", "--out", str(tmp_path / "f.csv"),
              "--diagnostics", str(tmp_path / "d.csv"), "--method", "multi"])
    assert e.value.code == 0
    f = pd.read_csv(tmp_path / "f.csv", index_col=0)
    assert list(f.columns[:-2]) == encoders["rppa"].preprocessor_.features_
    assert {"accepted", "latent_variance"} <= set(f.columns)
    d = pd.read_csv(tmp_path / "d.csv", index_col=0)
    assert (d["attempts"] == 1).all()                        # one model: nothing to reject


def test_generation_beats_nothing_on_known_structure(world):
    """rnaseq and rppa share most of their signal in the simulation: the generated rppa
    latents of validation patients must correlate with the real ones."""
    cohort, _, models, encoders = world
    val = cohort.ids_in("val").intersection(cohort.samples(["rnaseq", "cna", "rppa"]))
    res = generate_missing(cohort, "rppa", ["rnaseq", "cna"], ModelSource.folder(models),
                           patients=list(val), draws=4, seed=0)
    truth = encoders["rppa"].encode(cohort.tables["rppa"].loc[val]).to_numpy()
    r = np.corrcoef(res.mean[:, 0], truth[:, 0])[0, 1]
    assert r > 0.3


def test_unconditional_needs_the_flag(world, tmp_path, capsys):
    _, cohort_dir, models, _ = world
    with pytest.raises(SystemExit) as e:
        main(["generate", "--target", "rppa", "--cohort", str(cohort_dir), "--models", str(models),
              "--out", str(tmp_path / "u.csv")])
    assert e.value.code == 1
    assert "pass --allow-unconditional" in capsys.readouterr().err
    assert not (tmp_path / "u.csv").exists()


def test_a_table_declared_in_another_input_form_is_refused(world, tmp_path, capsys):
    cohort, _, models, _ = world
    forms = {**cohort.input_forms, "rnaseq": "zscore"}  # the encoder was trained on log2 counts
    type(cohort)(cohort.tables, cohort.clinical, cohort.split, forms).write(tmp_path / "cohort")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", str(tmp_path / "cohort"),
              "--models", str(models), "--out", str(tmp_path / "x.parquet")])
    assert e.value.code == 1
    assert ("rnaseq: the cohort says input form 'zscore' but the encoder was trained on 'log2_count'; "
            "re-train the encoder or convert the table") in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_mismatched_target_encoder_is_refused_and_nothing_written(world, tmp_path, capsys):
    cohort, cohort_dir, models, encoders = world
    other = tmp_path / "models"
    import shutil
    shutil.copytree(models, other)
    t = cohort.tables["rppa"]
    retrained = make_encoder(get_modality("rppa"), cohort.input_forms["rppa"], "pca").fit(t.iloc[:150])
    new_digest = retrained.save(other / "encoders" / "rppa")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", str(cohort_dir),
              "--models", str(other), "--out", str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and encoders["rppa"].digest in err and new_digest in err
    assert not (tmp_path / "x.parquet").exists()


def test_weights():
    class E:
        def __init__(self, i, loss):
            self.id, self.val_loss = i, loss

    es = [E("a->x", 0.5), E("b->x", 1.0)]
    assert np.allclose(consensus_weights(es, "inverse"), [2 / 3, 1 / 3])
    assert np.allclose(consensus_weights(es, "uniform"), [0.5, 0.5])
    soft = np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()
    assert np.allclose(consensus_weights(es, "softmax"), soft)
    assert np.allclose(consensus_weights(es, explicit={"a->x": 3, "b->x": 1}), [0.75, 0.25])
    with pytest.raises(CohereError, match="explicit weights lack expert 'b->x'"):
        consensus_weights(es, explicit={"a->x": 1})
    with pytest.raises(CohereError, match="unknown weighting 'best'"):
        consensus_weights(es, "best")


def test_imputed_features_are_said_and_recorded(world, tmp_path, capsys):
    """Absent encoder features (up to 10%) and missing values are imputed, never quietly: a note
    per modality on stderr, a per-patient column in --diagnostics, a record in the settings."""
    cohort, _, models, encoders = world
    feats = encoders["rnaseq"].preprocessor_.features_
    ids = cohort.samples(["rnaseq", "cna"])
    rnaseq = cohort.tables["rnaseq"].drop(columns=feats[:4])
    rnaseq.loc[ids[:2], rnaseq.columns[:3]] = np.nan
    user = type(cohort)({**cohort.tables, "rnaseq": rnaseq}, cohort.clinical, cohort.split, cohort.input_forms)
    user.write(tmp_path / "cohort")
    code, _, err = run(["generate", "--target", "rppa", "--have", "rnaseq,cna", "--cohort", str(tmp_path / "cohort"),
                        "--models", str(models), "--out", str(tmp_path / "g.csv"),
                        "--diagnostics", str(tmp_path / "d.csv")], capsys)
    assert code == 0, err
    assert (f"note: rnaseq: 4 of the encoder's {len(feats)} features are absent from the table (coverage "
            f"{1 - 4 / len(feats):.0%}) and were imputed from the present ones (PPCA conditional mean) for all "
            f"{len(ids)} samples (first: {', '.join(feats[:3])}, ...); 6 missing values of "
            f"the {len(feats) - 4} present features") in err
    d = pd.read_csv(tmp_path / "d.csv", index_col=0)
    assert np.allclose(d.loc[ids[:2], "rnaseq_imputed"], 7 / len(feats))
    assert np.allclose(d.loc[ids[2:], "rnaseq_imputed"], 4 / len(feats))
    assert "cna_imputed" in d
    res = generate_missing(user, "rppa", ["rnaseq", "cna"], ModelSource.folder(models))
    assert res.settings["imputation"]["rnaseq"] == {"features": len(feats), "absent": 4, "absent_features": feats[:4],
                                                    "coverage": round(1 - 4 / len(feats), 4), "samples": len(ids),
                                                    "missing_cells": 6, "method": "ppca", "renamed": 0,
                                                    "converted": ""}
    pd.testing.assert_series_equal(res.diagnostics()["rnaseq_imputed"], d["rnaseq_imputed"].rename_axis("sample"),
                                   check_index_type=False)   # ids: object (pandas 2) or str (pandas 3) columns
    code, _, err = run(["encode", "--models", str(models), "--cohort", str(tmp_path / "cohort"),
                        "--out", str(tmp_path / "z.parquet")], capsys)
    n_rna = len(rnaseq.dropna(how="all"))
    assert code in (0, None) and f"note: rnaseq: 4 of the encoder's {len(feats)} features are absent from the " \
                                 f"table (coverage {1 - 4 / len(feats):.0%}) and were imputed from the present " \
                                 f"ones (PPCA conditional mean) for all {n_rna} samples" in err


def test_an_unknown_target_is_named_as_an_unknown_modality(world):
    cohort, _, models, _ = world
    for target in ("foo", "RPPA"):
        with pytest.raises(CohereError, match=rf"unknown modality '{target}'; known modalities: cna, rnaseq, rppa, wsi"):
            generate_missing(cohort, target, ["rnaseq"], ModelSource.folder(models))


# ----------------------------------------------------------------------------- bounded memory


def test_chunked_generation_covers_every_draw_once_and_is_seeded(world, monkeypatch):
    import cohere.generation as G

    small, _, models, _ = world
    source = ModelSource.folder(models)
    job = G.prepare_generation(small, "rppa", ["rnaseq"], source)
    n = len(job.samples)
    monkeypatch.setattr(G, "MAX_BATCH_ROWS", n // 3)  # blocks of patients, each with all of its draws
    layout = job.batches(4)
    per = (n // 3) // 4
    assert len(layout) == -(-n // per) and all(first == 0 and k == 4 and len(rows) <= per for first, k, rows in layout)
    seen = np.zeros((4, n), dtype=int)
    for first, k, rows in layout:
        seen[first:first + k, rows] += 1
    assert (seen == 1).all()
    many = job.batches(n // 3 * 2 + 1)  # more draws than a batch holds: one patient at a time
    assert all(len(rows) == 1 and k <= n // 3 for _, k, rows in many) and len(many) == 3 * n
    sizes = [k for _, k, rows in many if rows[0] == 0]  # near-equal blocks of draws
    assert sum(sizes) == n // 3 * 2 + 1 and max(sizes) - min(sizes) <= 2
    a = generate_missing(small, "rppa", ["rnaseq"], source, draws=4, seed=5)
    b = generate_missing(small, "rppa", ["rnaseq"], source, draws=4, seed=5)
    np.testing.assert_array_equal(a.draws, b.draws)
    assert a.draws.shape == (4, n, 32) and np.isfinite(a.draws).all()
    assert len({a.draws[k, 0].tobytes() for k in range(4)}) == 4  # batches get their own seeds


def test_a_result_that_cannot_fit_in_memory_is_refused_with_its_size(world, monkeypatch):
    import cohere.generation as G

    small, _, models, _ = world
    monkeypatch.setattr(G, "MAX_RESULT_BYTES", 1000)
    with pytest.raises(CohereError, match=r"3 draws of \d+ patients take 0\.0 GB in memory .* use 'cohere generate', "
                                          "which streams them"):
        generate_missing(small, "rppa", ["rnaseq"], ModelSource.folder(models), draws=3)


def test_cli_streams_batches_and_aggregates_them(world, tmp_path, monkeypatch, capsys):
    import cohere.generation as G

    _, cohort_dir, models, _ = world
    n = len(pd.read_parquet(cohort_dir / "rnaseq.parquet"))
    monkeypatch.setattr(G, "MAX_BATCH_ROWS", max(1, n // 2))
    base = ["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", str(cohort_dir), "--models", str(models),
            "--draws", "3", "--seed", "2"]
    for extra, name in (([], "all.csv"), (["--aggregate"], "mean.csv"), (["--decode"], "all_f.csv"),
                        (["--decode", "--aggregate"], "mean_f.csv")):
        code, _, err = run(base + extra + ["--out", str(tmp_path / name)], capsys)
        assert code == 0, err
    for suffix in ("", "_f"):
        draws = pd.read_csv(tmp_path / f"all{suffix}.csv", index_col=0, dtype={"sample": str})
        mean = pd.read_csv(tmp_path / f"mean{suffix}.csv", index_col=0, dtype={"sample": str})
        assert len(draws) == 3 * n and sorted(draws["draw"].unique()) == [0, 1, 2] and len(mean) == n
        cols = [c for c in draws.columns if c not in ("draw", "accepted", "latent_variance")]
        assert cols[0].startswith("rppa.z") == (suffix == "")
        # streamed in batches, the aggregate is the mean of the written draws (decoded or not)
        expect = draws.groupby(level=0)[cols].mean().loc[mean.index]
        np.testing.assert_allclose(mean[cols].to_numpy(), expect.to_numpy(), atol=1e-4)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_an_output_larger_than_the_free_disk_is_refused_up_front(world, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    _, cohort_dir, models, _ = world
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    code, _, err = run(["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", str(cohort_dir), "--models",
                        str(models), "--draws", "5", "--out", str(tmp_path / "g.csv")], capsys)
    assert code == 1 and "take about" in err and "use --aggregate" in err
    assert not (tmp_path / "g.csv").exists()


# ----------------------------------------------------------------------------- mean stacking


def test_stacking_moves_each_patients_mean_to_the_blend_and_keeps_the_spread(world):
    from cohere.generation import PAPER_MODE, prepare_generation

    small, _, models, encoders = world
    source = ModelSource.folder(models)
    for have in (["rnaseq"], ["rnaseq", "cna"]):
        on = generate_missing(small, "rppa", have, source, draws=6, seed=1)
        off = generate_missing(small, "rppa", have, source, draws=6, seed=1, stacking=False)
        point, alpha = prepare_generation(small, "rppa", have, source).stack
        assert 0 <= alpha < 1 and on.settings["stacking"] == round(alpha, 4) and off.settings["stacking"] is None
        np.testing.assert_allclose(on.draws - on.draws.mean(0), off.draws - off.draws.mean(0), atol=1e-4)
        np.testing.assert_allclose(on.mean, alpha * off.mean + (1 - alpha) * point.numpy(), atol=1e-4)
    # one expert: the point is its ridge prediction; the consensus composes them with its weights
    expert = source.model("rnaseq->rppa", encoders)
    conds = [torch.as_tensor(encoders["rnaseq"].encode_cohort(small, small.samples(["rnaseq"])).to_numpy())]
    point, alpha = prepare_generation(small, "rppa", ["rnaseq"], source).stack
    np.testing.assert_allclose(point.numpy(), expert.stack_point(conds).numpy(), atol=1e-5)
    assert alpha == expert.stack_alpha
    # a single draw has no mean to stack; the paper's method has no stacking
    one = generate_missing(small, "rppa", ["rnaseq"], source, draws=1, seed=1)
    np.testing.assert_array_equal(one.draws, generate_missing(small, "rppa", ["rnaseq"], source, draws=1, seed=1,
                                                              stacking=False).draws)
    assert prepare_generation(small, "rppa", ["rnaseq"], source, **PAPER_MODE).stack is None


def test_cli_stacking_flags(world, tmp_path, capsys):
    _, cohort_dir, models, _ = world
    base = ["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", str(cohort_dir), "--models", str(models),
            "--draws", "2"]
    code, _, err = run(base + ["--paper", "--stacking", "--out", str(tmp_path / "a.csv")], capsys)
    assert code == 1 and "--paper fixes the sampler and the consensus; drop --stacking or --paper" in err
    code, _, err = run(base + ["--no-stacking", "--out", str(tmp_path / "b.csv")], capsys)
    assert code == 0, err


def test_decoded_draws_get_the_experts_residual_shift(world, tmp_path, capsys):
    from cohere.generation import PAPER_MODE, prepare_generation

    small, cohort_dir, models, encoders = world
    source = ModelSource.folder(models)
    enc = encoders["rppa"]
    for have in (["rnaseq"], ["rnaseq", "cna"]):
        res = generate_missing(small, "rppa", have, source, draws=3, seed=2)
        plain = generate_missing(small, "rppa", have, source, draws=3, seed=2, residual=False)
        assert res.settings["residual"] and not plain.settings["residual"] and plain.shift is None
        np.testing.assert_array_equal(res.draws, plain.draws)  # latents are untouched
        assert res.shift.shape == (len(res.samples), len(enc.preprocessor_.features_))
        K, n, d = res.draws.shape
        decoded = enc.decode(res.draws.reshape(K * n, d)).to_numpy(np.float32).reshape(K, n, -1)
        # the feature stacking moves every decoded draw of a patient by beta (ridge's features - their mean)
        point, beta = res.fstack
        assert point.shape == res.shift.shape and 0 <= beta <= 1 and res.settings["feature_stacking"] == round(beta, 4)

        def stacked(x):
            return x + beta * (point[None] - x.mean(0, keepdims=True))

        np.testing.assert_allclose(res.decoded(), stacked(decoded + res.shift[None]), atol=1e-5)
        np.testing.assert_allclose(plain.decoded(), stacked(decoded), atol=1e-5)
        spread = res.decoded() - res.decoded().mean(0)
        np.testing.assert_allclose(spread, decoded - decoded.mean(0), atol=1e-4)  # the spread is kept
        # aggregated: the mean of the decoded draws (a PCA encoder here, so also decode(mean latent))
        frame = res.to_frame(decode=True, aggregate=True)
        np.testing.assert_allclose(frame[enc.preprocessor_.features_].to_numpy(), res.decoded().mean(0), atol=1e-4)
    # one expert: its head's prediction; two: composed with the consensus weights
    expert = source.model("rnaseq->rppa", encoders)
    conds = [torch.as_tensor(encoders["rnaseq"].encode_cohort(small, small.samples(["rnaseq"])).to_numpy())]
    np.testing.assert_allclose(prepare_generation(small, "rppa", ["rnaseq"], source).shift,
                               expert.head_shift(conds).numpy(), atol=1e-5)
    assert prepare_generation(small, "rppa", ["rnaseq"], source, **PAPER_MODE).shift is None
    assert prepare_generation(small, "rppa", ["rnaseq"], source, method="multi").shift is None
    # the feature stacking: the expert's ridge to the features and its beta; two experts composed like the
    # residual heads; off without the stacking, in paper mode and for the multi-condition model
    job = prepare_generation(small, "rppa", ["rnaseq"], source)
    np.testing.assert_allclose(job.fstack[0], expert.fstack(conds).numpy(), atol=1e-5)
    assert job.fstack[1] == expert.fstack_beta
    pair = prepare_generation(small, "rppa", ["rnaseq", "cna"], source)
    both = {e.source: e for e in (source.model(i, encoders) for i in pair.models)}
    f = {m: e.fstack([torch.as_tensor(encoders[m].encode_cohort(small, pair.samples).to_numpy())]).numpy()
         for m, e in both.items()}
    prior = np.mean([e.fstack.prior.numpy() for e in both.values()], axis=0)
    w = dict(zip(pair.models, pair.weights))
    np.testing.assert_allclose(pair.fstack[0], prior + sum(w[e.id] * (f[m] - prior) for m, e in both.items()), atol=1e-4)
    for off in (dict(stacking=False), PAPER_MODE, dict(method="multi")):
        assert prepare_generation(small, "rppa", ["rnaseq"], source, **off).fstack is None
    # with beta = 0.5 the mean of a patient's decoded draws is halfway to the point; one draw is left as it is
    res = generate_missing(small, "rppa", ["rnaseq"], source, draws=4, seed=2)
    point = np.random.default_rng(0).standard_normal(res.shift.shape).astype(np.float32)
    half = decoded_draws(enc, res.draws, res.shift, (point, 0.5))
    own = decoded_draws(enc, res.draws, res.shift)
    np.testing.assert_allclose(half.mean(0), 0.5 * own.mean(0) + 0.5 * point, atol=1e-4)
    np.testing.assert_allclose(half - half.mean(0), own - own.mean(0), atol=1e-4)
    np.testing.assert_array_equal(decoded_draws(enc, res.draws[:1], res.shift, (point, 0.5)), own[:1])
    # the CLI writes the same decoded values, streamed
    out = tmp_path / "d.csv"
    code, _, err = run(["generate", "--target", "rppa", "--have", "rnaseq", "--cohort", str(cohort_dir), "--models",
                        str(models), "--draws", "3", "--seed", "2", "--decode", "--out", str(out)], capsys)
    assert code == 0, err
    table = pd.read_csv(out, index_col=0, dtype={"sample": str})
    res = generate_missing(small, "rppa", ["rnaseq"], source, draws=3, seed=2)
    first = table[table["draw"] == 0].loc[res.samples, enc.preprocessor_.features_].to_numpy()
    np.testing.assert_allclose(first, res.decoded()[0], atol=1e-3)


def test_the_product_takes_eps_u_from_the_expert_trained_on_the_most_rows(world):
    import copy

    from cohere.generation import expert_consensus

    small, _, models, encoders = world
    source = ModelSource.folder(models)
    experts = [source.model(i, encoders) for i in ("rnaseq->rppa", "cna->rppa")]
    conds = {e.source: torch.as_tensor(encoders[e.source].encode_cohort(small, small.samples(["cna", "rnaseq"]))
                                       .to_numpy()) for e in experts}
    for most in (0, 1):   # whichever has more training rows gives the one unconditional member
        ranked = [copy.copy(e) for e in experts]
        for i, e in enumerate(ranked):
            e.training = {**e.training, "n_train": 100 if i == most else 50}
        c = expert_consensus(ranked, conds)
        assert len(c.members) == 2 and len(c.prior) == 1
        assert c.prior[0].model is ranked[most].model and not c.prior[0].mask.any()
    # one expert, or the paper's average, runs no unconditional branch
    assert expert_consensus(experts[:1], conds).prior == []
    assert expert_consensus(experts, conds, consensus="average").prior == []


def test_generation_runs_at_the_step_count_the_models_were_calibrated_at(world):
    import copy

    from cohere.experts import SAMPLER_STEPS

    small, _, models, _ = world
    source = ModelSource.folder(models)
    job = prepare_generation(small, "rppa", ["cna", "rnaseq"], source)
    assert job.settings["steps"] == job.options["steps"] == SAMPLER_STEPS == generation.DEFAULT_STEPS
    assert prepare_generation(small, "rppa", ["cna"], source, steps=7).options["steps"] == 7
    assert prepare_generation(small, "rppa", ["cna"], source, sampler="ddpm").options["steps"] is None
    # an expert calibrated by an earlier version at 20 steps: a pair with it runs at 20
    load = source.model

    def older(model_id, encoders):
        model = load(model_id, encoders)
        if model_id == "cna->rppa":
            model = copy.copy(model)
            model.sampler_steps = 20
        return model

    source.model = older
    assert prepare_generation(small, "rppa", ["cna", "rnaseq"], source).options["steps"] == 20
    assert prepare_generation(small, "rppa", ["rnaseq"], source).options["steps"] == SAMPLER_STEPS
