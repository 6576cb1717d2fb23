"""The pretrained package plugins/cohere-tcga-pancan: what it ships matches the registry, and
it installs, registers and verifies in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from cohere.artifacts import read_config, sha256_file

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "plugins" / "cohere-tcga-pancan"
ARTIFACTS = PACKAGE / "cohere_tcga_pancan" / "artifacts"
IDS = ["cna", "rnaseq", "rppa", "cna->rnaseq", "cna->rppa", "multi->cna", "multi->rnaseq", "multi->rppa",
       "rnaseq->cna", "rnaseq->rppa", "rppa->cna", "rppa->rnaseq"]


def entries() -> list[dict]:
    from cohere import hub

    return [e for e in hub.load_index(REPO / "registry" / "index.json") if e.get("package") == "cohere-tcga-pancan"]


def test_every_shipped_file_matches_its_registry_entry():
    index = json.loads((ARTIFACTS / "index.json").read_text())
    found = {e["id"]: e for e in entries()}
    assert sorted(found) == sorted(IDS) == sorted(a["id"] for a in index["artifacts"])
    version = __import__("tomllib").loads((PACKAGE / "pyproject.toml").read_text())["project"]["version"]
    encoders = {m: found[m]["files"]["model.safetensors"] for m in ("cna", "rnaseq", "rppa")}
    for art in index["artifacts"]:
        e = found[art["id"]]
        assert e["path"] == art["path"] and e["version"] == version == index["version"]
        folder = ARTIFACTS / art["path"]
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        assert {n: sha256_file(folder / n) for n in e["files"]} == e["files"]
        config = read_config(folder)
        assert config["id"] == art["id"]
        if art["kind"] != "encoder":                 # the latent-space contract holds inside the package
            assert config["encoders"] == {m: encoders[m] for m in config["encoders"]}
        card = (folder / "README.md").read_text()
        for section in ("## Pretrained release: cohere-tcga-pancan", "**Training data.**", "**Input forms.**",
                        "**Validation**", "**Limitations.**", "**License and citation.**"):
            assert section in card, (art["id"], section)
        if art["kind"] != "encoder":                 # val metrics beside ridge, from the same conditions
            assert "| R^2 of the 50-draw mean | ridge R^2 |" in card, art["id"]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment that sees this environment's packages (cohere, torch) and
    has the pretrained package pip-installed into it (a copy, not editable)."""
    root = tmp_path_factory.mktemp("fresh")
    # no pip of its own: this environment's pip and setuptools (a fresh 3.11 venv's setuptools 65
    # cannot build PEP 639 metadata, and offline nothing newer can be fetched)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    py = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # this environment's site-packages as a site dir of the new one (its .pth files run too)
    (Path(purelib) / "outer.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    str(PACKAGE)], check=True, capture_output=True)
    env = {**os.environ, "COHERE_HOME": str(root / "home"), "COHERE_LOAD_PLUGINS": "cohere-tcga-pancan"}
    env.pop("COHERE_REGISTRY", None)
    return py, env, Path(purelib)


def run(venv, *args: str) -> subprocess.CompletedProcess:
    py, env, _ = venv
    return subprocess.run([str(py), "-m", "cohere", *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_package_installs_registers_and_verifies_in_a_fresh_environment(venv, real_path, tmp_path):
    py, env, purelib = venv
    installed = purelib / "cohere_tcga_pancan" / "artifacts"
    assert (installed / "index.json").is_file() and not str(installed).startswith(str(REPO))
    r = run(venv, "experts", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["id"]: x for x in json.loads(r.stdout)}
    assert sorted(rows) == sorted(i for i in IDS if "->" in i)
    assert {x["origin"] for x in rows.values()} == {"package"} and {x["package"] for x in rows.values()} == \
        {"cohere-tcga-pancan"}
    r = run(venv, "encoders", "list")
    assert r.returncode == 0 and "package cohere-tcga-pancan" in r.stdout

    # complete a small real cohort with no --models: 20 val patients, rppa removed from half
    from cohere.cohort import Cohort

    c = Cohort.read(real_path, ["cna", "rnaseq", "rppa"])
    ids = c.samples(["cna", "rnaseq", "rppa"]).intersection(c.ids_in("val"))[:20]
    Cohort({"cna": c.tables["cna"].loc[ids], "rnaseq": c.tables["rnaseq"].loc[ids],
            "rppa": c.tables["rppa"].loc[ids[10:]]}, c.clinical.loc[ids]).write(tmp_path / "cohort")
    r = run(venv, "complete", "--cohort", str(tmp_path / "cohort"), "--out", str(tmp_path / "done"), "--draws", "3")
    assert r.returncode == 0, r.stderr
    assert "rppa: 10 patient(s) from cna+rnaseq" in r.stdout
    prov = (tmp_path / "done" / "provenance.csv").read_text()
    assert "rnaseq->rppa" in prov

    # a changed file is refused before it is loaded, naming the file and the fix
    card = installed / "experts" / "rnaseq_to_rppa" / "README.md"
    card.write_text(card.read_text() + "\nedited\n")
    r = run(venv, "complete", "--cohort", str(tmp_path / "cohort"), "--out", str(tmp_path / "again"))
    assert r.returncode == 1
    assert "rnaseq_to_rppa/README.md changed since it was built" in r.stderr and "reinstall" in r.stderr
    assert not (tmp_path / "again").exists()


def test_experts_add_installs_from_the_package_with_the_same_check(venv):
    r = run(venv, "experts", "add", "rnaseq->cna")
    assert r.returncode == 1
    assert "needs encoders that are not installed; install them first with: cohere encoders add cna && " \
           "cohere encoders add rnaseq" in r.stderr
    for m in ("cna", "rnaseq"):
        r = run(venv, "encoders", "add", m)
        assert r.returncode == 0, r.stderr
    r = run(venv, "experts", "add", "rnaseq->cna")
    assert r.returncode == 0 and "installed expert rnaseq->cna from " in r.stdout, r.stderr
    rows = json.loads(run(venv, "experts", "list", "--json").stdout)
    assert [x["origin"] for x in rows if x["id"] == "rnaseq->cna"] == ["path"]     # listed once: the store's copy
    assert len(rows) == 9
