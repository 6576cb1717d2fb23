"""The store of installed encoders and experts ($COHERE_HOME), from local folders.

The Hub path (pinned shas, offline reloads, tampered cache) is in test_hub.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cohere import plugins
from cohere.errors import CohereError
from cohere.store import Store, default_home
from hubserver import make_models, sealed_copy
from clihelp import run


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return folder, make_models(folder, seed=0)


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    """Trained on another latent space: its encoders have other digests."""
    folder = tmp_path_factory.mktemp("other")
    return folder, make_models(folder, seed=1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COHERE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "")
    plugins.reset()
    yield tmp_path / "home"
    plugins.reset()


def test_default_home_is_the_user_cache_unless_cohere_home(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.delenv("COHERE_HOME", raising=False)
    assert default_home() == Path(platformdirs.user_cache_dir("cohere"))
    monkeypatch.setenv("COHERE_HOME", str(tmp_path))
    assert Store().home == tmp_path


def test_add_list_info_remove_from_a_models_folder(home, models, capsys):
    folder, digests = models
    code, out, err = run(["encoders", "add", "cna", "--from", str(folder)], capsys)
    assert code == 0, err
    assert out.startswith("installed encoder cna from ") and digests["encoders"]["cna"][:12] in out
    run(["encoders", "add", "rppa", "--from", str(folder / "encoders" / "rppa")], capsys)  # an artifact folder
    code, out, err = run(["experts", "add", "rppa->cna", "--from", str(folder)], capsys)
    assert code == 0, err
    code, out, _ = run(["experts", "list", "--json"], capsys)
    rows = json.loads(out)
    assert [r["id"] for r in rows] == ["rppa->cna"]
    r = rows[0]
    assert r["source"] == "rppa" and r["target"] == "cna" and r["origin"] == "path"
    assert r["encoders"] == {"cna": digests["encoders"]["cna"], "rppa": digests["encoders"]["rppa"]}
    assert r["digest"] == digests["experts"]["rppa->cna"]
    assert isinstance(r["val_loss"], float) and r["size"] > 0
    code, out, _ = run(["experts", "list"], capsys)
    assert out.splitlines()[0].split() == ["id", "source", "target", "encoders", "val_loss", "val_r2", "size", "origin"]
    code, out, _ = run(["encoders", "list"], capsys)
    assert [line.split()[0] for line in out.splitlines()] == ["id", "cna", "rppa"]
    code, out, _ = run(["experts", "info", "rppa->cna", "--json"], capsys)
    info = json.loads(out)
    assert info["verified"] is True and set(info["files"]) == {"config.json", "model.safetensors", "README.md"}
    # the store is a models folder: the other commands can use it
    assert (home / "experts" / "rppa_to_cna" / "config.json").is_file()
    code, out, _ = run(["experts", "list", "--models", str(home)], capsys)
    assert code == 0 and "rppa->cna" in out
    # an encoder that installed experts use cannot be removed
    code, _, err = run(["encoders", "remove", "cna"], capsys)
    assert code == 1 and "installed experts rppa->cna use the cna encoder" in err and err.count("\n") == 1
    code, out, _ = run(["experts", "remove", "rppa->cna"], capsys)
    assert code == 0 and out.startswith("removed expert rppa->cna")
    code, out, _ = run(["encoders", "remove", "cna"], capsys)
    assert code == 0 and not (home / "encoders" / "cna").exists()
    assert [e["id"] for e in Store().entries("encoders")] == ["rppa"]


def test_python_api_and_store_is_a_default_plugin(home, models):
    folder, digests = models
    store = Store()
    for m in ("cna", "rppa"):
        store.add("encoders", m, folder)
    for i in ("rppa->cna", "cna->rppa"):
        store.add("experts", i, folder)
    assert list(store.encoders()) == ["cna", "rppa"]
    assert list(store.experts()) == ["cna->rppa", "rppa->cna"]
    assert list(store.experts(target="cna")) == ["rppa->cna"]
    experts = store.load_experts("cna")
    assert experts["rppa->cna"].digest == digests["experts"]["rppa->cna"]
    encs = store.load_encoders()
    assert encs["cna"].digest == digests["encoders"]["cna"]
    # registered through the same hooks as installed plugins
    assert plugins.encoders() == store.encoders()
    assert plugins.experts("rppa") == {"cna->rppa": home / "experts" / "cna_to_rppa"}
    assert plugins.owners("register_experts") == {"cna->rppa": "cohere.store", "rppa->cna": "cohere.store"}


def test_expert_without_its_encoders_offers_the_command(home, models, capsys):
    folder, _ = models
    with pytest.raises(CohereError, match=r"rppa->cna needs encoders that are not installed; install them first "
                                          rf"with: cohere encoders add cna --from {folder}/encoders/cna && "
                                          rf"cohere encoders add rppa --from {folder}/encoders/rppa"):
        Store().add("experts", "rppa->cna", folder)
    assert Store().entries("experts") == []


def test_latent_space_contract_names_both_digests(home, models, other_models):
    folder, digests = models
    other, other_digests = other_models
    Store().add("encoders", "cna", folder)
    Store().add("encoders", "rppa", folder)
    with pytest.raises(CohereError, match=rf"installed cna encoder has digest {digests['encoders']['cna']} but "
                                          rf"rppa->cna was trained on the cna encoder with digest "
                                          rf"{other_digests['encoders']['cna']}"):
        Store().add("experts", "rppa->cna", other)
    Store().add("experts", "rppa->cna", folder)
    # replacing an encoder under an installed expert is refused, even with force
    with pytest.raises(CohereError, match=r"installed experts rppa->cna use the current cna encoder"):
        Store().add("encoders", "cna", other, force=True)


def test_reinstall_is_a_no_op_and_another_version_needs_force(home, models, other_models):
    folder, _ = models
    other, other_digests = other_models
    first = Store().add("encoders", "cna", folder)
    assert Store().add("encoders", "cna", folder) == first
    with pytest.raises(CohereError, match=r"encoder 'cna' is already installed .*pass --force to replace it"):
        Store().add("encoders", "cna", other)
    entry = Store().add("encoders", "cna", other, force=True)
    assert entry["digest"] == other_digests["encoders"]["cna"]


def test_a_changed_file_is_refused(home, models, capsys):
    folder, _ = models
    Store().add("encoders", "cna", folder)
    card = home / "encoders" / "cna" / "README.md"
    card.write_text(card.read_text() + "tampered\n")
    with pytest.raises(CohereError, match=r"encoder cna: .*README.md has sha256 .* was recorded when it was "
                                          r"installed from .*changed or corrupted, so it is refused: reinstall it "
                                          r"with \"cohere encoders add cna --from .* --force\""):
        Store().encoders()
    code, _, err = run(["encoders", "info", "cna"], capsys)
    assert code == 1 and "changed or corrupted" in err and err.count("\n") == 1
    Store().add("encoders", "cna", folder, force=True)
    assert list(Store().encoders()) == ["cna"]


def test_user_errors(home, models, capsys):
    folder, _ = models
    code, _, err = run(["experts", "info", "rppa->cna"], capsys)
    assert code == 1 and err == ("error: expert 'rppa->cna' is not installed in " + str(home) +
                                 " (installed: none); install it with \"cohere experts add 'rppa->cna'\"\n")
    code, _, err = run(["experts", "add", "rppa->cna", "--from", "not a repo"], capsys)
    assert code == 1 and "expected a Hub repository ORG/NAME or ORG/NAME@REVISION, or an existing folder" in err
    code, _, err = run(["experts", "add", "rppa", "--from", str(folder)], capsys)
    assert code == 1 and "expected SOURCE->TARGET" in err
    code, _, err = run(["encoders", "add", "cna", "--from", str(folder / "experts" / "rppa_to_cna")], capsys)
    assert code == 1 and "holds a 'expert' artifact, not one of encoder" in err
    code, _, err = run(["experts", "add", "cna->rppa", "--from", str(folder / "experts" / "rppa_to_cna")], capsys)
    assert code == 1 and "holds expert 'rppa->cna', not 'cna->rppa'" in err
    code, _, err = run(["encoders", "add", "wsi", "--from", str(folder)], capsys)
    assert code == 1 and "neither an artifact folder" in err


# ---------------------------------------------------------------- ids and paths: nothing outside the store


def precious(folder: Path) -> Path:
    """A folder outside the store with a file that must survive."""
    folder.mkdir()
    (folder / "data.txt").write_text("precious\n")
    return folder


def untouched(folder: Path) -> bool:
    return [p.name for p in folder.iterdir()] == ["data.txt"] and (folder / "data.txt").read_text() == "precious\n"


@pytest.mark.parametrize("group,spec", [
    ("experts", "../../pwn->cna"), ("experts", "/abs/dir->data"), ("experts", "rppa->../../cna"),
    ("experts", "rppa/../../x->cna"), ("experts", "RPPA->cna"), ("experts", "rppa->cna\n"),
    ("encoders", "../../pwn"), ("encoders", "/abs/dir"), ("encoders", "cna/../../x"), ("encoders", "CNA"),
    ("encoders", "multi"), ("encoders", "."),
])
def test_ids_on_the_command_line_that_are_not_names_are_refused(home, models, tmp_path, capsys, group, spec):
    folder, _ = models
    for args in (["add", spec, "--from", str(folder)], ["remove", spec], ["info", spec],
                 ["push", spec, "--repo", "lab/x", "--models", str(folder)]):
        code, out, err = run([group, *args], capsys)
        assert code == 1 and out == "" and err.count("\n") == 1, (args, err)
        assert re.search(r"is not a valid modality name: expected a lowercase letter|expected SOURCE->TARGET", err)
    assert not home.exists()


EVIL_CONFIGS = [  # (group, artifact, change, message)
    ("experts", "rppa_to_cna", lambda c: c.update(id="../../pwn->cna", sources=["../../pwn"], source="../../pwn"),
     r"field 'id' '\.\./\.\./pwn->cna': source '\.\./\.\./pwn' is not a valid modality name"),
    ("experts", "rppa_to_cna", lambda c: c.update(id="/abs/dir->cna"), r"field 'id' '/abs/dir->cna': source"),
    ("experts", "rppa_to_cna", lambda c: c.update(sources=["../x"]), r"field 'sources\[0\]' '\.\./x' is not"),
    ("experts", "rppa_to_cna", lambda c: c.update(target="../x"), r"field 'target' '\.\./x' is not"),
    ("experts", "rppa_to_cna", lambda c: c["encoders"].update({"/abs": "0" * 64}),
     r"a key of field 'encoders' '/abs' is not"),
    ("experts", "rppa_to_cna", lambda c: c.update(sources="rppa"), r"fields 'sources' and 'encoders' must be"),
    ("encoders", "cna", lambda c: c.update(id="../../pwn", modality="../../pwn"), r"field 'id' '\.\./\.\./pwn' is not"),
    ("encoders", "cna", lambda c: c.update(modality="/abs/dir"), r"field 'modality' '/abs/dir' is not"),
    ("encoders", "cna", lambda c: c.update(id="CNA"), r"field 'id' 'CNA' is not a valid .*did you mean 'cna'"),
]


@pytest.mark.parametrize("group,name,change,message", EVIL_CONFIGS)
def test_ids_in_an_artifact_config_that_are_not_names_are_refused(home, models, tmp_path, group, name, change,
                                                                  message):
    folder, _ = models
    evil = sealed_copy(folder / group / name, tmp_path / "evil", change)
    for m in ("cna", "rppa"):
        if group == "experts":
            Store().add("encoders", m, folder)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    art_id = "rppa->cna" if group == "experts" else "cna"
    with pytest.raises(CohereError, match=message):
        Store().add(group, art_id, evil)
    with pytest.raises(CohereError, match=message):  # and any other reader (generate, list, push)
        from cohere.artifacts import read_config

        read_config(evil)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_reported_traversal_writes_and_deletes_nothing_outside(home, models, tmp_path, capsys):
    """issue 11: an id ../../pwn->cna in config.json and on the command line."""
    folder, _ = models
    evil = sealed_copy(folder / "experts" / "rppa_to_cna", tmp_path / "evil",
                       lambda c: c.update(id="../../pwn->cna", sources=["../../pwn"], source="../../pwn"))
    for m in ("cna", "rppa"):
        Store().add("encoders", m, folder)
    victim = precious(home.parent / "pwn_to_cna")  # home/experts/../../pwn_to_cna
    code, out, err = run(["experts", "add", "../../pwn->cna", "--from", str(evil)], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "expert id '../../pwn->cna': source '../../pwn' is not a valid modality name" in err
    assert untouched(victim) and Store().entries("experts") == []
