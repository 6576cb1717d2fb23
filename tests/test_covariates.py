"""The cancer type as a stacking covariate (cohere.experts.TypedStackMean): fitted, recorded,
loaded, refused when malformed, composed once across experts, read from clinical.csv."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cohere.diffusion.train import TrainConfig
from cohere.errors import CohereError
from cohere.experts import (Expert, StackMean, TypedStackMean, covariate_values, covariates_digest, load_model,
                            model_dir)
from cohere.generation import stacked_mean

TINY = TrainConfig(hidden=32, layers=2, time_dim=16, cond_emb_dim=8, steps=40, eval_every=20, batch_size=32,
                   val_steps=4)
DIGESTS = {"rnaseq": "a" * 64, "cna": "b" * 64, "rppa": "c" * 64}
TYPES = ["BRCA", "LUAD", "SKCM"]


def typed_data(n=300, d=4, seed=0):
    """x = the type's offset + s, with sources c1 = s + noise and c2 = s + other noise:
    independent given the target, and the type carries what neither source does."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, len(TYPES), n)
    offsets = np.array([[2.0] * d, [-2.0] * d, [0.0] * d])
    s = rng.standard_normal((n, d))
    x = offsets[t] + s
    c1 = s + rng.standard_normal((n, d))
    c2 = s + rng.standard_normal((n, d))
    types = np.array([TYPES[i] for i in t], dtype=object)
    return c1.astype(np.float32), c2.astype(np.float32), x.astype(np.float32), types


def test_covariate_values_reads_the_clinical_table_and_marks_the_unknown():
    clinical = pd.DataFrame({"cancer_type": ["BRCA", None, "LUAD"]}, index=["p1", "p2", "p3"])
    assert list(covariate_values(clinical, ["p3", "p2", "p9", "p1"])) == ["LUAD", "", "", "BRCA"]
    assert list(covariate_values(None, ["p1", "p2"])) == ["", ""]
    assert list(covariate_values(clinical.rename(columns={"cancer_type": "stage"}), ["p1"])) == [""]


def test_the_typed_ridge_sees_the_type_and_gives_unknown_types_the_training_frequencies():
    c1, _, x, types = typed_data()
    plain = StackMean.fit(c1, x)
    typed = TypedStackMean.fit(c1, x, types)
    assert typed.types == TYPES and np.isclose(float(typed.type_freq.sum()), 1.0)
    cv = [torch.from_numpy(c1)]
    err = lambda p: float(((p.numpy() - x) ** 2).mean())  # noqa: E731
    assert err(typed(cv, types=list(types))) < 0.6 * err(plain(cv))  # the offsets are worth most of the error
    z = typed.onehot(["LUAD", "", "XXXX"])
    assert z[0].tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(z[1], typed.type_freq) and torch.allclose(z[2], typed.type_freq)
    # the prior mean is the ridge on the type alone: close to each type's training mean of x
    prior = typed.prior_mean(TYPES).numpy()
    for i, t in enumerate(TYPES):
        assert np.allclose(prior[i], x[types == t].mean(0), atol=0.35)
    with pytest.raises(CohereError, match=r"covariates: expected 300 cancer types with at least one known, got 300 "
                                          r"\(0 known\)"):
        TypedStackMean.fit(c1, x, np.full(300, "", dtype=object))


@pytest.fixture(scope="module")
def typed_expert():
    c1, _, x, types = typed_data()
    return Expert.fit("rnaseq", "cna", c1, x, DIGESTS, TINY, covariates=types)


def test_an_expert_records_its_covariates_and_loads_them_back(tmp_path, typed_expert):
    _, _, x, types = typed_data()
    e = typed_expert
    assert e.covariate_types == TYPES and isinstance(e.stack, TypedStackMean)
    h = e.metrics["held_out"]
    assert h["stacked_energy"] <= h["energy"] + 1e-9  # alpha = 1 (the network alone) is on the grid
    e.save(tmp_path / "e")
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    assert cfg["stacking"]["covariates"] == {"cancer_type": TYPES}
    back = load_model(tmp_path / "e")
    assert back.covariate_types == TYPES
    c = [torch.from_numpy(typed_data()[0][:5])]
    assert torch.equal(back.stack_point(c, list(types[:5])), e.stack_point(c, list(types[:5])))
    # an unknown type is not the type of any row: the frequencies' average, not a one-hot
    assert not torch.equal(back.stack_point(c, [""] * 5), e.stack_point(c, list(types[:5])))


@pytest.mark.parametrize("block", ["stacking", "feature_stacking"])
@pytest.mark.parametrize("covs", [{"stage": TYPES}, {"cancer_type": []}, {"cancer_type": ["LUAD", "BRCA"]},
                                  {"cancer_type": ["BRCA", ""]}, ["BRCA"]])
def test_malformed_covariates_in_a_config_are_refused(tmp_path, typed_fstack_expert, block, covs):
    from cohere.artifacts import save_artifact, load_artifact

    typed_fstack_expert[0].save(tmp_path / "e")
    art = load_artifact(tmp_path / "e")
    cfg = json.loads(json.dumps(art.config))
    cfg[block]["covariates"] = covs
    save_artifact(tmp_path / "bad", cfg, art.tensors, "card")
    with pytest.raises(CohereError, match=rf"unsupported {block} covariates .*; cohere experts record "
                                          r"\{'cancer_type': \[the sorted distinct cancer types, non-empty strings\]\}"):
        load_model(tmp_path / "bad")


def test_covariates_must_be_one_per_row():
    c1, _, x, types = typed_data(n=120)
    with pytest.raises(CohereError, match=r"covariates: expected one cancer type per row \(120\), got 119"):
        Expert.fit("rnaseq", "cna", c1, x, DIGESTS, TINY, covariates=types[:-1])


class Stub:  # what stacked_mean reads of an expert
    def __init__(self, source, stack):
        self.source, self.stack, self.stack_alpha = source, stack, 0.5

    def stack_point(self, conds, types=None):
        return self.stack(conds, types=types)

    @property
    def covariate_types(self):
        return self.stack.types


def test_the_type_is_counted_once_when_typed_experts_are_composed():
    c1, c2, x, types = typed_data(n=2000, seed=1)
    one, two = TypedStackMean.fit(c1, x, types), TypedStackMean.fit(c2, x, types)
    e1, e2 = Stub("rnaseq", one), Stub("rppa", two)
    conds = {"rnaseq": c1, "rppa": c2}
    single, _ = stacked_mean([e1], conds, [1.0], types)
    assert torch.allclose(single, one([torch.from_numpy(c1)], types=list(types)), atol=1e-5)
    both, alpha = stacked_mean([e1, e2], conds, [1.0, 1.0], types)
    assert alpha == 0.5
    err = lambda p: float(((p.numpy() - x) ** 2).mean())  # noqa: E731
    e_one, e_two, e_both = err(single), err(stacked_mean([e2], conds, [1.0], types)[0]), err(both)
    # sources independent given the target: the product is sharper than either expert and
    # near the oracle posterior, whose error per dimension is 1 / (1 + 1 + 1) (prior and two sources)
    assert e_both < 0.8 * min(e_one, e_two)
    assert e_both < 1.1 / 3
    # with the type-free prior (what an untyped composition uses) the type's offset would be
    # counted once per expert
    class Untyped(Stub):
        covariate_types = None

    twice = stacked_mean([Untyped("rnaseq", one), Untyped("rppa", two)], conds, [1.0, 1.0], types)[0]
    assert err(twice) > 1.5 * e_both


def test_a_jobs_request_carries_the_digest_of_its_covariates(sim):
    from cohere.training import make_jobs

    cohort, _ = sim
    ids = cohort.tables["rnaseq"].index.intersection(cohort.tables["cna"].index)
    rng = np.random.default_rng(0)
    latents = {m: pd.DataFrame(rng.standard_normal((len(ids), 4)), index=ids) for m in ("rnaseq", "cna")}
    encoders = {"rnaseq": "a" * 64, "cna": "b" * 64}
    typed = make_jobs([("rnaseq", "cna"), ("multi", "cna")], latents, encoders, TINY, clinical=cohort.clinical)
    assert typed[0].covariates is not None and typed[1].covariates is None
    assert list(typed[0].covariates) == list(covariate_values(cohort.clinical, latents["cna"].index))
    assert typed[0].request()["covariates_sha256"] == covariates_digest(typed[0].covariates)
    assert "covariates_sha256" not in typed[1].request()
    plain = make_jobs([("rnaseq", "cna")], latents, encoders, TINY)
    assert plain[0].covariates is None and "covariates_sha256" not in plain[0].request()


def test_generation_reads_the_cancer_type_from_clinical_csv(sim, tmp_path, capsys):
    from cohere.encoders import make_encoder
    from cohere.generation import ModelSource, prepare_generation
    from cohere.plugins import get_modality

    cohort, _ = sim
    small = type(cohort)({m: cohort.tables[m] for m in ("cna", "rnaseq")}, cohort.clinical, cohort.split,
                         {m: cohort.input_forms[m] for m in ("cna", "rnaseq")})
    train = small.ids_in("train")
    models = tmp_path / "models"
    enc, lat = {}, {}
    for m, t in small.tables.items():
        enc[m] = make_encoder(get_modality(m), small.input_forms[m], "pca").fit(t.loc[t.index.intersection(train)])
        enc[m].save(models / "encoders" / m)
        lat[m] = enc[m].encode(t.loc[t.index.intersection(train)])
    ids = lat["rnaseq"].index.intersection(lat["cna"].index)
    e = Expert.fit("rnaseq", "cna", lat["rnaseq"].loc[ids], lat["cna"].loc[ids], enc, TINY,
                   covariates=covariate_values(small.clinical, ids))
    assert e.covariate_types == sorted(small.clinical["cancer_type"].loc[ids].unique())
    e.save(model_dir(models, e.id))
    have = small.tables["rnaseq"].index.intersection(small.tables["cna"].index)
    patients = [p for p in have if p not in set(train)][:20]
    prep = prepare_generation(small, "cna", ["rnaseq"], ModelSource.folder(models), patients=patients)
    assert prep.settings["cancer_type"] == ("known for 20 of 20 patients (clinical.csv cancer_type); the others get "
                                            "the types' average")
    blind = type(small)(small.tables, None, small.split, small.input_forms)
    prep0 = prepare_generation(blind, "cna", ["rnaseq"], ModelSource.folder(models), patients=patients)
    assert prep0.settings["cancer_type"].startswith("known for 0 of 20 patients")
    assert not torch.allclose(prep.stack[0], prep0.stack[0])  # the type moved the stacking's point
    # the CLI reads it from the cohort folder's clinical.csv and says for how many it was known
    from clihelp import run

    small.write(tmp_path / "cohort")
    code, _, err = run(["generate", "--target", "cna", "--have", "rnaseq", "--cohort", str(tmp_path / "cohort"),
                        "--models", str(models), "--patients", ",".join(patients), "--draws", "2",
                        "--out", str(tmp_path / "out.parquet")], capsys)
    assert code == 0
    assert "cancer type: known for 20 of 20 patients (clinical.csv cancer_type)" in err


# ----------------------------------------------------------------------------- feature stacking


class LinearDecoder:  # a known linear decoder (latent -> 6 features), standing in for a target encoder
    def __init__(self, d: int = 4):
        self.A = np.random.default_rng(3).standard_normal((d, 6)) / np.sqrt(d)

    def decode(self, z):
        return pd.DataFrame(np.asarray(z, np.float64) @ self.A)


@pytest.fixture(scope="module")
def typed_fstack_expert(typed_expert):
    from cohere.experts import add_feature_stacking, add_head

    c1, _, x, types = typed_data()
    rng = np.random.default_rng(4)
    # the features outside the latent also depend on the type: what a type-free ridge cannot say
    offsets = {"BRCA": 1.5, "LUAD": -1.5, "SKCM": 0.0}
    resid = (np.array([offsets[t] for t in types])[:, None] + 0.1 * rng.standard_normal((len(x), 6))).astype(np.float32)
    with_head = add_head(typed_expert, c1, resid)
    return add_feature_stacking(with_head, LinearDecoder(), c1, x, resid, covariates=types), with_head, resid


def test_the_feature_stacking_sees_the_type_records_it_and_loads_it_back(tmp_path, typed_fstack_expert):
    from cohere.experts import RidgeMean, TypedRidge, add_feature_stacking

    e, with_head, resid = typed_fstack_expert
    c1, _, x, types = typed_data()
    assert isinstance(e.fstack, TypedRidge) and e.fstack.types == TYPES
    f = e.metrics["held_out_features"]
    assert f["r2_stacked"] >= f["r2_decoded_mean"] - 1e-9  # beta = 0 (the draws alone) is on the grid
    untyped = add_feature_stacking(with_head, LinearDecoder(), c1, x, resid)  # no covariates: the type-free ridge
    assert type(untyped.fstack) is RidgeMean
    assert f["r2_ridge"] > untyped.metrics["held_out_features"]["r2_ridge"]  # the type is worth something
    e.save(tmp_path / "e")
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    assert cfg["feature_stacking"]["covariates"] == {"cancer_type": TYPES}
    assert "and the one-hot cancer type" in (tmp_path / "e" / "README.md").read_text()
    back = load_model(tmp_path / "e")
    assert isinstance(back.fstack, TypedRidge) and back.fstack_beta == e.fstack_beta
    c = [torch.from_numpy(c1[:5])]
    assert torch.equal(back.fstack(c, types=list(types[:5])), e.fstack(c, types=list(types[:5])))
    assert not torch.equal(back.fstack(c, types=[""] * 5), e.fstack(c, types=list(types[:5])))


class FStub:  # what feature_stacking reads of an expert
    def __init__(self, source, fstack):
        self.source, self.fstack, self.fstack_beta = source, fstack, 0.5


def test_the_type_is_counted_once_when_typed_feature_stackings_are_composed():
    from cohere.experts import TypedRidge
    from cohere.generation import feature_stacking

    c1, c2, x, types = typed_data(n=2000, seed=1)
    one, two = TypedRidge.fit(c1, x, types), TypedRidge.fit(c2, x, types)
    conds = {"rnaseq": c1, "rppa": c2}
    single, beta = feature_stacking([FStub("rnaseq", one)], conds, [1.0], types)
    assert beta == 0.5 and torch.allclose(single, one([torch.from_numpy(c1)], types=list(types)), atol=1e-5)
    both, _ = feature_stacking([FStub("rnaseq", one), FStub("rppa", two)], conds, [0.5, 0.5], types)
    err = lambda p: float(((p.numpy() - x) ** 2).mean())  # noqa: E731
    assert err(both) < err(single)  # the average of two independent sources is sharper than one
    # m is the features' mean given the type: with weights summing to 2, a type-free m (the
    # global mean) would count the type's offset twice
    twice, _ = feature_stacking([FStub("rnaseq", one), FStub("rppa", two)], conds, [1.0, 1.0], types)
    f1, f2 = (r([torch.from_numpy(c)], types=list(types)) for r, c in ((one, c1), (two, c2)))
    m_type = (one.prior_mean(types) + two.prior_mean(types)) / 2
    assert torch.allclose(twice, f1 + f2 - m_type, atol=1e-4)
    assert err(f1 + f2 - (one.prior + two.prior) / 2) > 1.5 * err(twice)


# ----------------------------------------------------------------------------- a patient of unknown type


def test_an_unknown_type_is_predicted_from_the_condition_so_the_ridge_matches_a_type_free_one():
    """The condition carries the type (c = B[t] + noise): given frequencies, a typed ridge loses
    what c says about the type; given the type predicted from c it gives what a ridge without
    the type gives (the omitted-variable identity, exact for least squares)."""
    rng = np.random.default_rng(5)
    n, d = 3000, 4
    t = rng.integers(0, len(TYPES), n)
    B, A = 2.0 * rng.standard_normal((len(TYPES), d)), 2.0 * rng.standard_normal((len(TYPES), d))
    c = (B[t] + rng.standard_normal((n, d))).astype(np.float32)
    x = (A[t] + 0.5 * c + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    types = np.array([TYPES[i] for i in t], dtype=object)
    typed, plain = TypedStackMean.fit(c, x, types), StackMean.fit(c, x)
    assert typed.type_from is not None
    cv = [torch.from_numpy(c)]
    err = lambda p: float(((p.numpy() - x) ** 2).mean())  # noqa: E731
    unknown = typed(cv, types=[""] * n)
    assert abs(err(unknown) - err(plain(cv))) < 0.02 * err(plain(cv))
    assert float(((unknown - plain(cv)) ** 2).mean()) < 0.01 * err(plain(cv))
    frequencies = copy_without_type_from(typed)
    assert err(frequencies(cv, types=[""] * n)) > 1.5 * err(unknown)  # what artifacts before it gave
    assert torch.equal(typed(cv, types=list(types)), frequencies(cv, types=list(types)))  # known types: the same


def copy_without_type_from(ridge):
    import copy

    out = copy.copy(ridge)
    out.type_from = None
    return out


def test_how_an_unknown_type_is_treated_is_recorded_and_older_artifacts_load(tmp_path, typed_fstack_expert):
    from cohere.artifacts import load_artifact, save_artifact

    e = typed_fstack_expert[0]
    e.save(tmp_path / "e")
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    for block in ("stacking", "feature_stacking"):
        assert cfg[block]["unknown_type"] == "predicted from the condition"
    back = load_model(tmp_path / "e")
    assert back.stack.type_from is not None and back.fstack.type_from is not None
    # an artifact from before: no unknown_type, no type_from tensors: the training frequencies
    art = load_artifact(tmp_path / "e")
    old = json.loads(json.dumps(art.config))
    for block in ("stacking", "feature_stacking"):
        del old[block]["unknown_type"]
    tensors = {k: v for k, v in art.tensors.items() if ".type_from_" not in k}
    save_artifact(tmp_path / "old", old, tensors, "card")
    before = load_model(tmp_path / "old")
    assert before.stack.type_from is None and before.fstack.type_from is None
    bad = json.loads(json.dumps(art.config))
    bad["stacking"]["unknown_type"] = "guess"
    save_artifact(tmp_path / "bad", bad, art.tensors, "card")
    with pytest.raises(CohereError, match=r"unsupported stacking.unknown_type 'guess'; cohere experts record one of "
                                          r"'predicted from the condition', 'training frequencies'"):
        load_model(tmp_path / "bad")
