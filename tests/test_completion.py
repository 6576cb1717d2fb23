"""``cohere complete`` / :func:`cohere.completion.complete` on a simulated cohort with tiny models."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from cohere.errors import CohereError
from cohere.plugins import get_modality

MODS = ["cna", "rnaseq", "rppa"]
PATTERNS = [p for k in range(4) for p in itertools.combinations(MODS, k)]   # 8, from () to all three


@pytest.fixture(scope="module")
def user(tiny):
    """Val patients of the tiny cohort, 5 per presence pattern (every pattern, the empty one
    included: those patients are in clinical.csv only)."""
    from cohere.cohort import Cohort

    root, cohort = tiny
    ids = list(cohort.samples(MODS).intersection(cohort.ids_in("val")))[:5 * len(PATTERNS)]
    has = {p: PATTERNS[i % len(PATTERNS)] for i, p in enumerate(ids)}
    tables = {m: cohort.tables[m].loc[[p for p in ids if m in has[p]]] for m in MODS}
    return Cohort(tables, cohort.clinical.loc[ids], input_forms=dict(cohort.input_forms)), has, root


@pytest.fixture(scope="module")
def done(user):
    from cohere.completion import complete
    from cohere.generation import ModelSource

    cohort, _, root = user
    return complete(cohort, ModelSource.folder(root / "models"), draws=6, keep_draws=2, seed=1)


def test_every_presence_pattern_is_completed_from_all_it_has(user, done):
    _, has, _ = user
    empty = sorted(p for p, h in has.items() if not h)
    assert done.empty == empty and len(empty) == 5
    for m in MODS:
        table = done.cohort.tables[m]
        assert sorted(table.index) == sorted(p for p, h in has.items() if h)      # everyone with something
        gen = done.provenance.loc[done.provenance["modality"] == m, "sample"]
        modelled = done.sd[m].columns                                            # the encoder's features
        assert not table.loc[gen, modelled].isna().any().any()                   # generated rows are whole
        assert table.loc[gen].drop(columns=modelled).isna().all().all()          # the others stay empty
    got = done.summary[done.summary["generated"] > 0]
    expected = {(t, "+".join(h)) for h in PATTERNS if h for t in MODS if t not in h}
    assert set(zip(got["target"], got["from"])) == expected                  # 12 (target, pattern) groups
    assert (got["patients"] == 5).all()
    assert set(done.summary.loc[done.summary["generated"] == 0, "note"]) == {"nothing to condition on"}


def test_provenance_is_exact(user, done):
    cohort, has, _ = user
    prov = done.provenance
    cells = {(p, m) for p, h in has.items() if h for m in MODS if m not in h}
    assert set(zip(prov["sample"], prov["modality"])) == cells and len(prov) == len(cells)
    for r in prov.itertuples():
        assert r.available == "+".join(has[r.sample])               # offered: all the patient has
        used = r.generated_from.split("+")                          # used: the experts the consensus kept
        assert set(used) <= set(has[r.sample]) and r.models == ";".join(f"{m}->{r.modality}" for m in used)
        assert r.method == "coherent" and r.draws == 6 and r.latent_variance > 0
    assert cohort.input_forms == {"cna": "absolute", "rnaseq": "log2_count", "rppa": "raw"}
    # absolute copy numbers and log2 counts are modelled as log2 ratios and log2(CPM + 1): those tables
    # are written on the modelled scale, real rows included, and cohort.json says so
    assert done.cohort.input_forms == {"cna": "log2_ratio", "rnaseq": "log2_expression", "rppa": "raw"}
    for m in MODS:                                   # real rows: as given, or on the modelled scale
        real, form = cohort.tables[m], cohort.input_forms[m]
        if m != "rppa":
            real = pd.DataFrame(get_modality(m).transform(real.to_numpy(np.float64), form),
                                index=real.index, columns=real.columns)
        pd.testing.assert_frame_equal(done.cohort.tables[m].loc[real.index], real.astype(np.float32),
                                      check_names=False)
        assert set(done.sd[m].index) == {p for p, mm in cells if mm == m}
        assert (done.sd[m].to_numpy() > 0).all()


def test_the_table_holds_the_mean_of_the_kept_draws_and_the_copies_differ(done):
    sd = done.sd["cna"]
    a, b = (c.tables["cna"].loc[sd.index] for c in done.copies)
    assert not np.allclose(a.to_numpy(), b.to_numpy())
    assert len(done.copies) == 2


def test_shuffled_features_and_rows_give_identical_output(user, done):
    from cohere.cohort import Cohort
    from cohere.completion import complete
    from cohere.generation import ModelSource

    cohort, _, root = user
    rng = np.random.default_rng(0)
    shuffled = {m: t.iloc[rng.permutation(len(t)), rng.permutation(t.shape[1])] for m, t in cohort.tables.items()}
    again = complete(Cohort(shuffled, cohort.clinical), ModelSource.folder(root / "models"), draws=6, keep_draws=2,
                     seed=1)
    for m in MODS:
        pd.testing.assert_frame_equal(again.cohort.tables[m][done.cohort.tables[m].columns], done.cohort.tables[m])
    pd.testing.assert_frame_equal(again.provenance, done.provenance)


def test_a_feature_subset_gives_the_stated_coverage_and_refusal(user):
    from cohere.cohort import Cohort
    from cohere.completion import complete
    from cohere.generation import ModelSource, generate_missing

    cohort, _, root = user
    source = ModelSource.folder(root / "models")
    rppa = cohort.tables["rppa"]
    half = Cohort({"rppa": rppa.iloc[:, :20], "cna": cohort.tables["cna"]}, cohort.clinical)
    done = complete(half, source, draws=2, targets=["rnaseq"])
    n = len(source.encoder("rppa").preprocessor_.features_)
    kept = len(set(rppa.columns[:20]) & set(source.encoder("rppa").preprocessor_.features_))
    assert done.coverage["rppa"]["coverage"] == pytest.approx(round(kept / n, 4))
    assert done.coverage["rppa"]["method"] == "ppca" and not done.refused
    few = Cohort({"rppa": rppa.iloc[:, :5], "cna": cohort.tables["cna"]}, cohort.clinical)
    with pytest.raises(CohereError, match=r"rppa: the table lacks \d+ of the encoder's \d+ features .*: it covers "
                                          r"\d+\.\d% of them, below the minimum 30%; .* --min-feature-coverage"):
        generate_missing(few, "rnaseq", ["rppa"], source)
    done = complete(few, source, draws=2, targets=["rnaseq"])                 # rppa refused, cna still used
    assert "below the minimum 30%" in done.refused["rppa"]
    assert set(done.provenance["generated_from"]) == {"cna"}
    assert complete(few, source, draws=2, targets=["rnaseq"], min_coverage=0.1).refused == {}


def test_feature_names_match_up_to_case_and_separators(user):
    from cohere.generation import ModelSource

    cohort, _, root = user
    enc = ModelSource.folder(root / "models").encoder("rppa")
    table = cohort.tables["rppa"]
    def respell(c):
        return c.lower().replace("0", "-0", 1)

    respelled = table.rename(columns=respell)
    pd.testing.assert_frame_equal(enc.encode(respelled), enc.encode(table))
    assert enc.preprocessor_.transform_recorded(respelled)[1].renamed == len(enc.preprocessor_.features_)
    first = enc.preprocessor_.features_[0]
    exact = pd.concat([table[[first]].rename(columns=str.lower), table], axis=1)
    pd.testing.assert_frame_equal(enc.encode(exact), enc.encode(table))     # the exact name wins
    clash = pd.concat([respelled[[respell(first)]].rename(columns=str.upper), respelled], axis=1)
    with pytest.raises(CohereError, match=r"rppa: columns .* are both the encoder's feature"):
        enc.encode(clash)


def test_write_a_folder_and_an_h5mu(done, tmp_path):
    import mudata

    from cohere.cohort import Cohort
    from cohere.completion import write_completion

    write_completion(done, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["clinical.csv", "cna.parquet", "cohort.json", "draws", "provenance.csv", "rnaseq.parquet", "rppa.parquet",
                     "summary.json", "uncertainty"]
    back = Cohort.read(tmp_path / "out")
    for m in MODS:
        pd.testing.assert_frame_equal(back.tables[m], done.cohort.tables[m], check_names=False)
    assert len(pd.read_csv(tmp_path / "out" / "provenance.csv")) == len(done.provenance)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["empty"] == done.empty
    assert sorted(p.name for p in (tmp_path / "out" / "draws").iterdir()) == ["draw_001", "draw_002"]

    write_completion(done, tmp_path / "out.h5mu")
    md = mudata.read_h5mu(tmp_path / "out.h5mu")
    for m in MODS:
        mod = md.mod[m]
        gen = done.provenance[done.provenance["modality"] == m]
        assert set(mod.obs_names[mod.obs["generated"].to_numpy()]) == set(gen["sample"])
        assert sorted(mod.layers) == ["draw_001", "draw_002", "sd"]
        sd = pd.DataFrame(mod.layers["sd"], index=mod.obs_names, columns=mod.var_names)
        np.testing.assert_allclose(sd.loc[done.sd[m].index, done.sd[m].columns], done.sd[m], rtol=1e-6)
    again = Cohort.read(tmp_path / "out.h5mu")                        # .h5mu -> complete -> .h5mu reads back
    for m in MODS:
        pd.testing.assert_frame_equal(again.tables[m], done.cohort.tables[m], check_names=False)


def test_h5mu_in_complete_h5mu_out(user, tmp_path):
    from cohere.completion import complete, write_completion
    from cohere.cohort import Cohort
    from cohere.generation import ModelSource

    cohort, _, root = user
    cohort.write(tmp_path / "in.h5mu")
    done = complete(Cohort.read(tmp_path / "in.h5mu"), ModelSource.folder(root / "models"), draws=2)
    write_completion(done, tmp_path / "out.h5mu")
    out = Cohort.read(tmp_path / "out.h5mu")
    assert all(len(out.tables[m]) == 35 for m in MODS)               # 40 patients, 5 with nothing


def _cli(args) -> int:
    from cohere.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_cli_complete(user, tmp_path, capsys):
    cohort, has, root = user
    cohort.write(tmp_path / "cohort")
    code = _cli(["complete", "--cohort", str(tmp_path / "cohort"), "--models", str(root / "models"), "--out",
                 str(tmp_path / "done"), "--draws", "3", "--keep-draws", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "cna: 5 patient(s) from rnaseq+rppa" in out and "5 patient(s) have nothing to condition on" in out
    assert "rppa: 38 of the encoder's 38 features present (coverage 100%)" in err
    assert (tmp_path / "done" / "draws" / "draw_001" / "cna.parquet").is_file()
    code = _cli(["complete", "--cohort", str(tmp_path / "cohort"), "--models", str(root / "models"), "--out",
                 str(tmp_path / "done")])
    assert code == 1 and "already exists and is not empty" in capsys.readouterr().err
    code = _cli(["complete", "--cohort", str(tmp_path / "cohort"), "--models", str(root / "models"), "--out",
                 str(tmp_path / "x"), "--draws", "2", "--keep-draws", "3"])
    assert code == 1 and "--keep-draws 3 exceeds --draws 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_multi_method_and_argument_checks(user):
    from cohere.completion import complete
    from cohere.generation import ModelSource

    cohort, has, root = user
    source = ModelSource.folder(root / "models")
    done = complete(cohort, source, method="multi", draws=2)
    assert set(done.provenance["models"]) == {f"multi->{m}" for m in MODS}
    assert (done.provenance["generated_from"] == done.provenance["available"]).all()
    with pytest.raises(CohereError, match="keep_draws .3. cannot exceed draws .2."):
        complete(cohort, source, draws=2, keep_draws=3)
    with pytest.raises(CohereError, match="unknown method 'mean'"):
        complete(cohort, source, method="mean")


# ---------------------------------------------------------------- models from a pip package


FAKEPACK = """
    from pathlib import Path
    from cohere.hookspecs import hookimpl

    ROOT = Path({root!r})

    @hookimpl
    def register_encoders(register):
        for m in ("cna", "rnaseq", "rppa"):
            register(m, ROOT / "encoders" / m)

    @hookimpl
    def register_experts(register):
        for p in sorted((ROOT / "experts").iterdir()):
            register(p.name.replace("_to_", "->"), p)
"""


@pytest.fixture
def package(user, tmp_path, monkeypatch):
    """The tiny models shipped by a fake installed distribution 'cohere-fakepack', with a
    registry index (COHERE_REGISTRY) whose entries have it as their source."""
    import shutil
    import sys
    import textwrap

    from cohere import hub, plugins
    from cohere.artifacts import read_config, sha256_file

    _, _, root = user
    art = tmp_path / "fakepack"
    shutil.copytree(root / "models", art)
    site = tmp_path / "site"
    site.mkdir()
    (site / "cohere_fakepack.py").write_text(textwrap.dedent(FAKEPACK.format(root=str(art))))
    info = site / "cohere_fakepack-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cohere-fakepack\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[cohere]\nfakepack = cohere_fakepack\n")
    monkeypatch.syspath_prepend(str(site))
    entries = []
    for folder in sorted(art.glob("*/*")):
        files = {n: sha256_file(folder / n) for n in ("config.json", "model.safetensors", "README.md")}
        entries.append(hub.package_entry(read_config(folder), "cohere-fakepack", "0.1.0",
                                         f"{folder.parent.name}/{folder.name}", files))
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "entries": entries}))
    monkeypatch.setenv("COHERE_REGISTRY", str(tmp_path / "index.json"))
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-fakepack")
    monkeypatch.setenv("COHERE_HOME", str(tmp_path / "home"))
    plugins.reset()
    yield art
    sys.modules.pop("cohere_fakepack", None)
    plugins.reset()


def test_models_a_package_registers_are_used_and_checked_against_the_registry(user, package, tmp_path, monkeypatch,
                                                                            capsys):
    from cohere.completion import complete
    from cohere.generation import ModelSource

    cohort, _, _ = user
    source = ModelSource.installed()
    assert sorted(source.model_folders) == sorted(f"{s}->{t}" for t in MODS for s in [*MODS, "multi"] if s != t)
    done = complete(cohort, source, draws=2, targets=["rppa"])
    assert len(done.provenance) == 15                        # 3 patterns without rppa, 5 patients each
    assert _cli(["experts", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 9 and {r["origin"] for r in rows} == {"package"} and {r["package"] for r in rows} == \
        {"cohere-fakepack"}

    card = package / "experts" / "cna_to_rppa" / "README.md"
    card.write_text(card.read_text() + "\nedited\n")
    with pytest.raises(CohereError, match=r"cna_to_rppa/README.md changed since it was built \(expected sha256 "
                                          r"[0-9a-f]{12}\); reinstall the package"):
        complete(cohort, ModelSource.installed(), draws=2, targets=["rppa"])

    monkeypatch.setenv("COHERE_REGISTRY", str(tmp_path / "empty.json"))
    (tmp_path / "empty.json").write_text('{"version": 1, "entries": []}')
    with pytest.raises(CohereError, match="a plugin registers this artifact but the registry index has no entry"):
        ModelSource.installed().encoder("cna")


def test_an_artifact_in_the_store_and_in_a_package_is_one_artifact(user, package, capsys):
    from cohere import plugins

    assert _cli(["encoders", "add", "rppa"]) == 0           # resolved through the registry to the package
    assert "installed encoder rppa from " in capsys.readouterr().out
    plugins.reset()
    assert list(plugins.encoders()) == ["cna", "rnaseq", "rppa"]    # registered twice, same digest: once
    assert _cli(["encoders", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["origin"] for r in rows if r["id"] == "rppa"] == ["path"]


def test_a_packaged_model_can_be_pushed_to_a_hub(package, tmp_path, monkeypatch, capsys):
    from hubserver import FakeHub

    with FakeHub(token="hf_test") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        assert _cli(["experts", "push", "rnaseq->cna", "--repo", "lab/rnaseq-to-cna", "--dataset", "simulated"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["id"] == "rnaseq->cna" and entry["repo"] == "lab/rnaseq-to-cna" and len(entry["sha"]) == 40


def test_the_clis_minimum_coverage_is_the_librarys():
    import inspect

    from cohere.cli import complete as cli_complete, generate as cli_generate
    from cohere.modalities.base import DEFAULT_MIN_COVERAGE

    for fn in (cli_complete.complete, cli_generate.generate):
        assert inspect.signature(fn).parameters["min_feature_coverage"].default.default == DEFAULT_MIN_COVERAGE
