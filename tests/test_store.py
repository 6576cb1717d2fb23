"""The store of installed encoders and experts ($COHERE_HOME), from local folders.

The Hub path (pinned shas, offline reloads, tampered cache) is in test_hub.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
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
    header = ["id", "source", "target", "encoders", "r2_mean", "ridge_r2", "energy", "resboot_energy", "cov90",
              "size", "origin"]
    assert out.splitlines()[0].split() == header
    # the held-out quality beside ridge, not the single-draw val_r2 that reads as failure
    held = r["held_out"]
    line = out.splitlines()[1].split()
    # an expert's quality is that of its stacked draws (what generation gives)
    assert line[header.index("r2_mean")] == f"{held['stacked_r2_mean']:.3f}"
    assert line[header.index("energy")] == f"{held['stacked_energy']:.3f}"
    assert line[header.index("cov90")] == f"{held['stacked_coverage90']:.3f}"
    assert line[header.index("resboot_energy")] == f"{held['ridge_resboot_energy']:.3f}"
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


def test_the_store_writes_and_deletes_only_inside_its_home(home, models, tmp_path, capsys):
    """The second line of defence: an edited store.json or a linked folder cannot reach out."""
    folder, _ = models
    Store().add("encoders", "cna", folder)
    victim = precious(tmp_path / "victim")
    manifest = json.loads((home / "store.json").read_text())
    manifest["encoders"]["cna"]["folder"] = "../victim"
    (home / "store.json").write_text(json.dumps(manifest))
    code, _, err = run(["encoders", "remove", "cna"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert re.search(r"refusing .*victim: it resolves to .*victim, outside the store .*home; expected a path inside "
                     r"it \(check the id, and .*store.json if it was edited\)", err)
    assert untouched(victim)
    with pytest.raises(CohereError, match="outside the store"):
        Store().encoders()
    # a group folder that is a link to elsewhere: nothing is placed through it
    (home / "store.json").unlink()
    shutil.rmtree(home / "encoders")
    (home / "encoders").symlink_to(victim, target_is_directory=True)
    with pytest.raises(CohereError, match=r"resolves to .*victim/cna, outside the store"):
        Store().add("encoders", "cna", folder)
    assert untouched(victim)


# ---------------------------------------------------------------- interrupted changes, permissions, concurrency


def leftovers(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob(".*") if p.name != ".store.lock")


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_install_leaves_no_temporary_folder_and_the_store_as_before(home, models, monkeypatch, error):
    import cohere.store

    folder, _ = models
    Store().add("encoders", "cna", folder)
    manifest = (home / "store.json").read_text()
    real, calls = shutil.copyfile, []

    def copyfile(src, dst):
        calls.append(dst)
        real(src, dst)
        if len(calls) % 2 == 0:  # the second file of each install
            raise error("interrupted")

    monkeypatch.setattr(cohere.store.shutil, "copyfile", copyfile)
    with pytest.raises(error):
        Store().add("encoders", "rppa", folder)
    with pytest.raises(error):  # replacing an installed version: the old one stays
        Store().add("encoders", "cna", folder / "encoders" / "cna", force=True)
    assert len(calls) == 4 and leftovers(home) == []
    assert (home / "store.json").read_text() == manifest
    assert sorted(p.name for p in (home / "encoders").iterdir()) == ["cna"]
    monkeypatch.setattr(cohere.store.shutil, "copyfile", real)
    assert list(Store().encoders()) == ["cna"]  # verified: the installed files are intact
    Store().add("encoders", "rppa", folder)  # and the lock was released
    assert [e["id"] for e in Store().entries("encoders")] == ["cna", "rppa"]


def test_the_store_tidies_what_an_interrupted_run_left(home, models, tmp_path, capsys):
    folder, _ = models
    Store().add("encoders", "cna", folder)
    outside = precious(tmp_path / "outside")
    left = {"home": [".store.json.0123abcd.tmp", ".store.ab_12cd3.json"],
            "encoders": [".rppa.89abcdef.tmp", ".rppa.k2j_4h5x"], "experts": [".rppa_to_cna.00ff00ff.tmp"]}
    (home / left["home"][0]).write_text("{")
    (home / left["home"][1]).write_text("{")
    for name in left["encoders"]:
        (home / "encoders" / name).mkdir()
        (home / "encoders" / name / "model.safetensors").write_bytes(b"half")
    (home / "experts").mkdir()
    (home / "experts" / left["experts"][0]).symlink_to(outside, target_is_directory=True)
    keep = [home / "notes.txt", home / "encoders" / ".keep", home / "hub" / ".x.0123abcd.tmp"]
    for path in keep:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine\n")
    assert run(["encoders", "list"], capsys)[0] == 0 and len(leftovers(home)) == 7  # reading writes nothing
    Store().add("encoders", "rppa", folder)
    assert leftovers(home) == ["encoders/.keep", "hub/.x.0123abcd.tmp"]
    assert all(p.read_text() == "mine\n" for p in keep) and untouched(outside)
    (home / "encoders" / ".cna.0123abcd.tmp").mkdir()
    Store().remove("encoders", "rppa")  # remove tidies too
    assert leftovers(home) == ["encoders/.keep", "hub/.x.0123abcd.tmp"]


def test_the_store_gets_the_permissions_of_a_normal_write(home, models, umask):
    folder, _ = models
    for m in ("cna", "rppa"):
        Store().add("encoders", m, folder)
    Store().add("experts", "rppa->cna", folder)
    Store().add("encoders", "cna", folder / "encoders" / "cna", force=True)  # a replaced folder too
    modes = {str(p.relative_to(home)): stat.S_IMODE(p.stat().st_mode) for p in home.rglob("*")
             if p.name != ".store.lock"}
    want = {p: (0o777 if (home / p).is_dir() else 0o666) & ~umask for p in modes}
    assert modes == want and "store.json" in modes and "experts/rppa_to_cna/model.safetensors" in modes


CONCURRENT_ADD = """
import sys, time
from pathlib import Path
from cohere.store import Store

real = Store._write
def slow(self, data):  # widen the read-modify-write window: without a lock one entry is lost
    time.sleep(1.5)
    real(self, data)
Store._write = slow
modality, folder, ready, other = sys.argv[1:]
Path(ready).touch()
while not Path(other).exists():  # start both adds at the same moment
    time.sleep(0.01)
from cohere.cli import main
main(["encoders", "add", modality, "--from", folder])
"""


def test_two_concurrent_adds_keep_both_entries(home, models, tmp_path):
    folder, _ = models
    script = tmp_path / "add.py"
    script.write_text(CONCURRENT_ADD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), m, str(folder), str(tmp_path / f"{m}.ready"),
                               str(tmp_path / f"{o}.ready")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for m, o in (("cna", "rppa"), ("rppa", "cna"))]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert all(out.startswith("installed encoder") for out, _ in results)
    assert [e["id"] for e in Store().entries("encoders")] == ["cna", "rppa"]
    assert list(Store().encoders()) == ["cna", "rppa"] and leftovers(home) == []


def test_a_store_locked_by_another_process_is_a_one_line_error(home, models, monkeypatch, capsys):
    import cohere.store
    from filelock import FileLock

    folder, _ = models
    monkeypatch.setattr(cohere.store, "LOCK_TIMEOUT", 0.2)
    home.mkdir()
    with FileLock(home / ".store.lock"):
        code, _, err = run(["encoders", "add", "cna", "--from", str(folder)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "is busy: another cohere process has held" in err and "wait for it to finish and try again" in err
    assert Store().entries("encoders") == []
