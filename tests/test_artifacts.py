"""Artifact integrity: the digest covers the whole config, sealed into model.safetensors.

An edit of config.json after saving (any field, nested, added or removed, including fields
a later version adds) is refused naming the field, by every loader: encoders, experts, the
store's add, Hub push. Artifacts of the old format (no sealed config) are refused with the fix.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import save

from cohere import hub
from cohere.artifacts import SEALED, load_artifact, save_artifact, sha256_file
from cohere.encoders import load_encoder
from cohere.errors import CohereError
from cohere.experts import load_model
from cohere.store import Store
from clihelp import run
from hubserver import make_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    make_models(folder, seed=0)
    return folder


@pytest.fixture
def copy(models, tmp_path):
    """A fresh copy of the models folder, to edit."""
    return shutil.copytree(models, tmp_path / "models")


def edit(folder, change) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def set_path(path, value):
    def change(cfg):
        *parents, last = path
        for p in parents:
            cfg = cfg[p]
        cfg[last] = value
    return change


EXPERT_EDITS = [
    (set_path(["schedule", "beta_end"], 0.03), r"field 'schedule.beta_end' was changed after saving \(saved 0.02, "
                                               r"found 0.03\)"),
    (set_path(["schedule", "num_train_timesteps"], 500), r"field 'schedule.num_train_timesteps' was changed after "
                                                         r"saving \(saved 1000, found 500\)"),
    (set_path(["metrics", "val_loss"], 1e-9), r"field 'metrics.val_loss' was changed after saving \(saved [0-9.]+, "
                                              r"found 1e-09\)"),
    (set_path(["architecture", "cond_dims", 0], 16), r"field 'architecture.cond_dims\[0\]' was changed"),
    (set_path(["guidance_scale"], 2.0), r"field 'guidance_scale' was added after saving \(saved nothing, found 2.0\)"),
    (set_path(["schedule", "offset"], 1), r"field 'schedule.offset' was added after saving"),
    (lambda cfg: cfg.pop("sampling"), r"field 'sampling' was removed after saving \(saved \{.*\.\.\., found nothing\)"),
    (lambda cfg: cfg["architecture"]["cond_dims"].append(8), r"field 'architecture.cond_dims\[1\]' was added"),
    (set_path(["cohere_version"], "9.9"), r"field 'cohere_version' was changed"),
]


@pytest.mark.parametrize("change,message", EXPERT_EDITS)
def test_any_edit_of_an_expert_config_is_refused_naming_the_field(copy, change, message):
    folder = copy / "experts" / "rppa_to_cna"
    edit(folder, change)
    with pytest.raises(CohereError, match=rf"{folder}/config.json: {message}.*; re-download or re-train the artifact$"):
        load_model(folder)


def test_an_edit_of_an_encoder_config_is_refused(copy):
    folder = copy / "encoders" / "cna"
    edit(folder, set_path(["preprocessing", "input_form"], "absolute"))
    with pytest.raises(CohereError, match=r"field 'preprocessing.input_form' was changed after saving "
                                          r"\(saved \"log2_ratio\", found \"absolute\"\)"):
        load_encoder(folder)


def test_reformatting_config_json_is_not_an_edit(copy):
    folder = copy / "experts" / "rppa_to_cna"
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(reversed(cfg.items()))))  # other order, no indent
    assert load_model(folder).id == "rppa->cna"


def test_the_digest_covers_the_config(tmp_path):
    tensors = {"w": torch.ones(3)}
    config = {"kind": "encoder", "id": "cna", "modality": "cna", "schedule": {"beta_end": 0.02}}
    a = save_artifact(tmp_path / "a", config, tensors, "card")
    assert save_artifact(tmp_path / "b", config, tensors, "card") == a  # deterministic
    other = save_artifact(tmp_path / "c", {**config, "schedule": {"beta_end": 0.03}}, tensors, "card")
    assert other != a == sha256_file(tmp_path / "a" / "model.safetensors")
    art = load_artifact(tmp_path / "a")
    assert art.digest == a and art.config["schedule"] == {"beta_end": 0.02}


def test_artifacts_of_the_old_format_are_refused_with_the_fix(copy):
    """Saved before the config was sealed: metadata {"format": "pt"}, a consistent sha256."""
    folder = copy / "experts" / "rppa_to_cna"
    tensors = load_artifact(folder).tensors
    data = save(tensors, metadata={"format": "pt"})
    (folder / "model.safetensors").write_bytes(data)
    edit(folder, set_path(["files", "model.safetensors"], hashlib.sha256(data).hexdigest()))
    with pytest.raises(CohereError, match=rf"^{folder}: model.safetensors holds no sealed copy of config.json \(the "
                                          r"artifact was saved by an older cohere\), so its config cannot be "
                                          r"verified; re-train it, or re-download a version saved by this cohere$"):
        load_model(folder)
    # resealing by hand is a new artifact: a new digest, which the store and the contract pin
    data = save(tensors, metadata={SEALED: "not json"})
    (folder / "model.safetensors").write_bytes(data)
    edit(folder, set_path(["files", "model.safetensors"], hashlib.sha256(data).hexdigest()))
    with pytest.raises(CohereError, match=r"its sealed config is not valid JSON"):
        load_model(folder)


def test_experts_add_refuses_an_edited_config_and_installs_nothing(copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COHERE_HOME", str(tmp_path / "home"))
    for m in ("cna", "rppa"):
        assert run(["encoders", "add", m, "--from", str(copy)], capsys)[0] == 0
    edit(copy / "experts" / "rppa_to_cna", set_path(["metrics", "val_loss"], 1e-9))
    code, out, err = run(["experts", "add", "rppa->cna", "--from", str(copy)], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "field 'metrics.val_loss' was changed after saving" in err
    assert Store().entries("experts") == [] and not (tmp_path / "home" / "experts" / "rppa_to_cna").exists()


def test_push_refuses_an_edited_config_before_any_network(copy):
    folder = copy / "experts" / "rppa_to_cna"
    edit(folder, set_path(["schedule", "beta_end"], 0.03))
    with pytest.raises(CohereError, match=r"field 'schedule.beta_end' was changed after saving"):
        hub.push(folder, "lab/x", endpoint="http://127.0.0.1:9", token="t")
