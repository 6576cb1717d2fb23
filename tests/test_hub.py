"""The Hub path for real, offline: the stock huggingface_hub client against tests/hubserver.py.

push (create repo, commit, tag, card) -> add by repo id and pinned sha -> reload in a fresh
process with HF_HUB_OFFLINE=1 -> a tampered cached file is refused; the registry index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cohere import hub, plugins
from cohere.errors import CohereError
from cohere.store import Store
from hubserver import FakeHub, make_models
from clihelp import run

TOKEN = "hf_test_token"
REPOS = {"cna": "lab/cohere-encoder-cna", "rppa": "lab/cohere-encoder-rppa",
         "rppa->cna": "lab/cohere-expert-rppa-to-cna", "cna->rppa": "lab/cohere-expert-cna-to-rppa"}


@pytest.fixture(scope="module")
def server():
    with FakeHub(token=TOKEN) as s:
        yield s


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return folder, make_models(folder, seed=0)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """A fresh COHERE_HOME and HF_HOME, the test Hub as HF_ENDPOINT, its token as HF_TOKEN."""
    monkeypatch.setenv("COHERE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("COHERE_REGISTRY", raising=False)
    plugins.reset()
    yield tmp_path / "home"
    plugins.reset()


@pytest.fixture(scope="module")
def published(server, models, tmp_path_factory):
    """Push the four artifacts once (with the real client); return their registry entries."""
    folder, _ = models
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf")))
    try:
        entries = {}
        for art_id, repo in REPOS.items():
            group = "experts" if "->" in art_id else "encoders"
            src = folder / group / (art_id.replace("->", "_to_"))
            entries[art_id] = hub.push(src, repo, endpoint=server.url, token=TOKEN)
    finally:
        mp.undo()
    return entries


def test_push_creates_repo_commit_tag_card_and_prints_the_entry(env, server, models, capsys):
    folder, digests = models
    code, out, err = run(["experts", "push", "rppa->cna", "--models", str(folder), "--repo", "lab/pushed",
                          "--dataset", "tcga-pancan"], capsys)
    assert code == 0, err
    entry = json.loads(out)
    assert hub.entry_problems(entry) == []
    assert entry["id"] == "rppa->cna" and entry["kind"] == "expert" and entry["repo"] == "lab/pushed"
    assert entry["modalities"] == ["rppa", "cna"] and entry["encoders"] == digests["encoders"]
    assert entry["files"]["model.safetensors"] == digests["experts"]["rppa->cna"]
    repo = server.repos["lab/pushed"]
    head = repo.commits[repo.branches["main"]]
    assert entry["sha"] == head.oid and repo.tags[entry["revision"]] == head.oid
    assert entry["revision"] == f"expert-{digests['experts']['rppa->cna'][:12]}"
    assert sorted(head.files) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    card = hub.card_metadata(head.files["README.md"].decode())
    assert card["library_name"] == "cohere" and {"cohere", "cohere-expert"} <= set(card["tags"])
    assert card["license"] == "cc-by-4.0" and card["datasets"] == ["tcga-pancan"] and card["metrics"]
    assert card["cohere"]["id"] == "rppa->cna" and card["cohere"]["encoders"] == entry["encoders"]
    assert "Research use only" in head.files["README.md"].decode()
    # the uploaded bytes are what the entry records
    assert {n: hashlib.sha256(d).hexdigest() for n, d in head.files.items() if n != ".gitattributes"} == entry["files"]
    # pushing the same artifact again: no new commit, same tag
    code, out, err = run(["experts", "push", "rppa->cna", "--models", str(folder), "--repo", "lab/pushed",
                          "--dataset", "tcga-pancan"], capsys)
    assert code == 0 and json.loads(out)["sha"] == entry["sha"]
    # the client went through the routes of the Hub API, with regular (non-LFS, non-Xet) uploads
    paths = {p for _, p in server.requests}
    assert "/api/models/lab/pushed/preupload/main" in paths and "/api/models/lab/pushed/commit/main" in paths


def test_push_needs_a_token_and_a_valid_repo(env, models, monkeypatch, capsys):
    folder, _ = models
    monkeypatch.setenv("HF_TOKEN", "wrong")
    code, _, err = run(["encoders", "push", "cna", "--models", str(folder), "--repo", "lab/x"], capsys)
    assert code == 1 and "refused the request for lab/x" in err and "HF_TOKEN" in err and err.count("\n") == 1
    code, _, err = run(["encoders", "push", "cna", "--models", str(folder), "--repo", "nope"], capsys)
    assert code == 1 and "expected ORG/NAME" in err
    code, _, err = run(["encoders", "push", "cna", "--repo", "lab/x"], capsys)
    assert code == 1 and "encoder 'cna' is not installed" in err


def test_add_by_repo_id_pins_the_sha_and_reloads_offline_in_a_fresh_process(env, server, published, capsys):
    home = env
    code, out, err = run(["encoders", "add", "cna", "--from", REPOS["cna"]], capsys)  # main -> sha once
    assert code == 0, err
    code, out, err = run(["encoders", "add", "rppa", "--from", f"{REPOS['rppa']}@{published['rppa']['revision']}"],
                         capsys)  # a tag
    assert code == 0, err
    code, out, err = run(["experts", "add", "rppa->cna", "--from", REPOS["rppa->cna"]], capsys)
    assert code == 0, err
    sha = published["rppa->cna"]["sha"]
    assert f"from {REPOS['rppa->cna']}@{sha[:12]} (revision main)" in out
    entry = Store().entry("experts", "rppa->cna")
    assert entry["sha"] == sha and entry["files"] == published["rppa->cna"]["files"]
    assert Store().entry("encoders", "rppa")["revision"] == published["rppa"]["revision"]
    # the repo moves on; the installed expert stays pinned
    server.commit(REPOS["rppa->cna"], "main", {"README.md": b"---\nlibrary_name: cohere\n---\nchanged\n"}, "edit")
    assert Store().entry("experts", "rppa->cna")["sha"] == sha
    assert (home / "experts" / "rppa_to_cna").resolve().name == sha
    # a fresh process, offline, with the Hub unreachable: loads from the pinned cache
    script = textwrap.dedent("""
        import numpy as np
        from cohere.cli import main
        from cohere.store import Store
        store = Store()
        experts = store.load_experts("cna")
        encoders = store.load_encoders()
        draws = experts["rppa->cna"].sample(np.zeros((3, 32), np.float32), n_draws=2, steps=5, seed=0)
        print(sorted(experts), sorted(encoders), draws.shape)
        main(["experts", "list", "--json"])
    """)
    before = len(server.requests)
    env_vars = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", script], env=env_vars, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, listing = proc.stdout.split("\n", 1)
    assert first == "['rppa->cna'] ['cna', 'rppa'] (2, 3, 32)"
    assert json.loads(listing)[0]["sha"] == sha  # the CLI lists it offline too
    assert len(server.requests) == before


def test_a_tampered_cached_file_is_refused_and_force_repairs_it(env, published, capsys):
    home = env
    Store().add("encoders", "cna", REPOS["cna"])
    weights = (home / "encoders" / "cna" / "model.safetensors").resolve()
    assert "hub" in weights.parts and "blobs" in weights.parts  # the huggingface_hub cache
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CohereError, match=rf"encoder cna: {weights} has sha256 .* was recorded when it was installed "
                                          rf"from {REPOS['cna']}@.*changed or corrupted, so it is refused: reinstall "
                                          rf"it with \"cohere encoders add cna --from {REPOS['cna']}@"
                                          rf"{published['cna']['sha']} --force\""):
        Store().load_encoders()
    code, _, err = run(["encoders", "list"], capsys)
    assert code == 0  # listing does not hash
    code, _, err = run(["encoders", "add", "cna", "--from", f"{REPOS['cna']}@{published['cna']['sha']}", "--force"],
                       capsys)
    assert code == 0, err
    assert Store().load_encoders()["cna"].digest == published["cna"]["files"]["model.safetensors"]


def test_offline_add_and_hub_errors_are_one_line(env, server, published, monkeypatch, capsys):
    code, _, err = run(["encoders", "add", "cna", "--from", "lab/missing"], capsys)
    assert code == 1 and err.startswith("error: repository 'lab/missing' not found on " + server.url)
    code, _, err = run(["encoders", "add", "cna", "--from", f"{REPOS['cna']}@v9"], capsys)
    assert code == 1 and "revision 'v9' not found" in err and err.count("\n") == 1
    code, _, err = run(["encoders", "add", "cna", "--from", REPOS["rppa->cna"]], capsys)
    assert code == 1 and "holds a 'expert' artifact" in err
    if "lab/empty" not in server.repos:
        server.create_repo("lab/empty")
    code, _, err = run(["encoders", "add", "cna", "--from", "lab/empty"], capsys)
    assert code == 1 and "has no config.json; expected a cohere artifact repo" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(["encoders", "add", "cna", "--from", REPOS["cna"]], capsys)
    assert code == 1 and "cannot resolve a revision to a commit with HF_HUB_OFFLINE=1" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, _, err = run(["encoders", "add", "cna", "--from", REPOS["cna"]], capsys)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err and err.count("\n") == 1


# ---------------------------------------------------------------- the registry index


def write_index(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"version": 1, "entries": entries}, indent=2))
    return path


def test_add_through_the_registry_and_the_missing_encoder_command(env, published, tmp_path, monkeypatch, capsys):
    index = write_index(tmp_path / "index.json", list(published.values()))
    monkeypatch.setenv("COHERE_REGISTRY", str(index))
    code, _, err = run(["experts", "add", "rppa->cna"], capsys)
    cna, rppa = published["cna"], published["rppa"]
    assert code == 1 and err == (f"error: rppa->cna needs encoders that are not installed; install them first with: "
                                 f"cohere encoders add cna --from {cna['repo']}@{cna['sha']} && "
                                 f"cohere encoders add rppa --from {rppa['repo']}@{rppa['sha']}\n")
    for cmd in err.split("with: ")[1].strip().split(" && "):
        code, out, err = run(cmd.split()[1:], capsys)
        assert code == 0, err
    code, out, err = run(["experts", "add", "rppa->cna"], capsys)
    assert code == 0, err
    e = Store().entry("experts", "rppa->cna")
    assert e["sha"] == published["rppa->cna"]["sha"] and e["registry"] is True
    code, _, err = run(["experts", "add", "cna->cna"], capsys)
    assert code == 1 and "source and target must differ" in err
    write_index(index, [])
    code, _, err = run(["experts", "add", "cna->rppa"], capsys)
    assert code == 1 and "'cna->rppa' is not in the registry index" in err


def test_registry_sha256_mismatch_is_refused(env, published, tmp_path, monkeypatch):
    bad = json.loads(json.dumps(published["cna"]))
    bad["files"]["model.safetensors"] = "0" * 64
    bad["encoders"]["cna"] = "0" * 64
    monkeypatch.setenv("COHERE_REGISTRY", str(write_index(tmp_path / "index.json", [bad])))
    with pytest.raises(CohereError, match=r"cna: model.safetensors from lab/cohere-encoder-cna@.* has sha256 .* but "
                                          r"the registry records 000000000000...; refusing it"):
        Store().add("encoders", "cna")
    assert Store().entries("encoders") == []


def test_every_shipped_registry_entry_is_valid():
    import jsonschema

    schema = hub.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(Path(str(hub._registry_file("index.json"))).read_text())
    jsonschema.validate(data, schema)
    assert hub.schema_errors(data, schema) == []
    for entry in hub.load_index(hub._registry_file("index.json")):
        assert hub.entry_problems(entry) == []


def test_a_constructed_entry_passes_and_broken_ones_fail(published):
    import jsonschema

    schema = hub.schema()
    good = published["rppa->cna"]
    jsonschema.validate({"version": 1, "entries": [good]}, schema)
    assert hub.entry_problems(good) == []
    broken = {
        "missing sha": ({k: v for k, v in good.items() if k != "sha"}, "missing required 'sha'"),
        "short sha": (good | {"sha": "abc"}, r"does not match \^\[0-9a-f\]\{40\}\$"),
        "bad kind": (good | {"kind": "model"}, "expected one of"),
        "bad id": (good | {"id": "rppa-cna"}, "does not match"),
        "bad repo": (good | {"repo": "no-slash"}, "does not match"),
        "extra key": (good | {"url": "x"}, "unexpected property 'url'"),
        "missing file": (good | {"files": {"config.json": "0" * 64}}, "missing required 'model.safetensors'"),
        "modalities": (good | {"modalities": ["cna", "rppa"]}, "do not match id"),
        "encoders": (good | {"encoders": {"cna": "0" * 64}}, "one digest for each"),
        "metric type": (good | {"metrics": {"val_loss": "low"}}, "expected number"),
        "two sources": (good | {"package": "cohere-x", "version": "1", "path": "experts/rppa_to_cna"},
                        "one source: repo \\+ sha .* or package \\+ version \\+ path, not both"),
        "package without version": ({k: v for k, v in good.items() if k not in ("repo", "sha", "revision")}
                                    | {"package": "cohere-x", "path": "experts/rppa_to_cna"},
                                    "missing required 'version'"),
    }
    packaged = {k: v for k, v in good.items() if k not in ("repo", "sha", "revision")} | {
        "package": "cohere-x", "version": "0.1.0", "path": "experts/rppa_to_cna"}
    jsonschema.validate({"version": 1, "entries": [packaged]}, schema)
    assert hub.entry_problems(packaged) == []
    for name, (entry, message) in broken.items():
        problems = hub.entry_problems(entry)
        assert problems and any(re.search(message, p) for p in problems), (name, problems)
        with pytest.raises(CohereError, match="invalid registry entry"):
            hub.validate_entry(entry)
        if name not in ("modalities", "encoders", "two sources"):  # cross-field rules are beyond the schema
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate({"version": 1, "entries": [entry]}, schema)


def test_an_invalid_registry_index_is_a_one_line_error(env, tmp_path, monkeypatch, capsys):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"version": 1, "entries": [{"id": "cna"}]}))
    monkeypatch.setenv("COHERE_REGISTRY", str(path))
    code, _, err = run(["encoders", "add", "cna"], capsys)
    assert code == 1 and "registry index" in err and "missing required 'kind'" in err and err.count("\n") == 1
    monkeypatch.setenv("COHERE_REGISTRY", str(tmp_path / "nope.json"))
    code, _, err = run(["encoders", "add", "cna"], capsys)
    assert code == 1 and "COHERE_REGISTRY" in err and "no such index file" in err


def test_registry_entries_whose_ids_are_not_names_are_refused(env, published, tmp_path, monkeypatch, capsys):
    """What the schema's patterns let through (Python's $ matches before a final newline, an
    expert may not be named multi) is refused by the one rule of cohere.ids."""
    enc, exp = published["cna"], published["rppa->cna"]
    digest = enc["files"]["model.safetensors"]
    bad = [(enc | {"id": "cna\n", "modalities": ["cna\n"], "encoders": {"cna\n": digest}},
            r"modality 'cna\\n' is not a valid modality name"),
           (exp | {"id": "multi->cna", "modalities": ["rppa", "cna"]}, r"kind 'expert' needs an id SOURCE->TARGET"),
           (exp | {"kind": "multi"}, r"does not match \^multi->"),
           (exp | {"id": "../../pwn->cna"}, r"does not match|is not a valid modality name"),
           (exp | {"modalities": ["../x", "cna"]}, r"does not match|is not a valid modality name")]
    for entry, message in bad:
        problems = hub.entry_problems(entry)
        assert problems and re.search(message, problems[0]), (entry["id"], problems)
    monkeypatch.setenv("COHERE_REGISTRY", str(write_index(tmp_path / "index.json", [bad[0][0]])))
    code, _, err = run(["encoders", "add", "cna"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert re.search(r"registry index .*: entry 0 \('cna\\n'\): modality 'cna\\n' is not a valid modality name", err)


def test_a_hub_repo_whose_config_names_a_path_is_refused(env, server, models, tmp_path):
    """A hostile publisher can seal any config; the ids in it are still checked on download."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from hubserver import sealed_copy

    folder, _ = models
    evil = sealed_copy(folder / "experts" / "rppa_to_cna", tmp_path / "evil",
                       lambda c: c.update(id="../../pwn->cna", sources=["../../pwn"], source="../../pwn"))
    api = HfApi(endpoint=server.url, token=TOKEN)
    api.create_repo("lab/evil", exist_ok=True)
    api.create_commit("lab/evil", [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(evil / n))
                                   for n in ("config.json", "model.safetensors", "README.md")], commit_message="x")
    with pytest.raises(CohereError, match=r"config.json: field 'id' '\.\./\.\./pwn->cna': source '\.\./\.\./pwn' is "
                                          r"not a valid modality name"):
        Store().add("experts", "rppa->cna", "lab/evil")
    assert Store().entries("experts") == [] and not (env / "experts").exists()
    assert not (env.parent / "pwn_to_cna").exists()
