"""Pretrained cohere models for TCGA pan-cancer data: the cna, rnaseq and rppa encoders and the
9 diffusion models between them (6 experts, 3 multi-condition models), trained on the shared
cohort's train split by ``scripts/build_pretrained.py`` in the cohere repository.

The artifacts are registered through cohere's plugin hooks, so after ``pip install`` they
are listed by ``cohere experts list`` and used by ``cohere complete`` with no ``--models``;
cohere checks every file against its sha256 in the registry index before loading it. The
hooks only read ``artifacts/index.json`` (no hashing, no network).
"""

import json
from pathlib import Path

from cohere.hookspecs import hookimpl

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def artifacts() -> list[dict]:
    """[{id, kind, path}] of the shipped artifacts (from artifacts/index.json)."""
    return json.loads((ARTIFACTS / "index.json").read_text())["artifacts"]


@hookimpl
def register_encoders(register):
    for a in artifacts():
        if a["kind"] == "encoder":
            register(a["id"], ARTIFACTS / a["path"])


@hookimpl
def register_experts(register):
    for a in artifacts():
        if a["kind"] != "encoder":
            register(a["id"], ARTIFACTS / a["path"])
