"""Artifact folders: ``config.json`` + ``model.safetensors`` + ``README.md`` (model card).

The same layout is a local directory or a Hub repository. Weights *and* fitted statistics
are tensors in ``model.safetensors`` (no pickle anywhere); ``config.json`` holds everything
else as JSON, including the sha256 of ``model.safetensors`` so a changed or truncated file is
refused. An artifact's *digest* is the sha256 of its ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import __version__, ids
from .atomic import writing
from .errors import CohereError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
KINDS = ("encoder", "expert", "multi")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def render_card(template: str, **context) -> str:
    """Render ``cards/<template>`` (a Jinja template shipped with the package)."""
    import jinja2

    text = resources.files("cohere._cards").joinpath(template).read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v: json.dumps(v)
    return env.from_string(text).render(**context)


@dataclass
class Artifact:
    """A loaded artifact: its config, its tensors, and its digest."""

    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]
    digest: str

    def expect(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Strict check: exactly these tensor names, with exactly these shapes."""
        missing = sorted(set(shapes) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(shapes))
        if missing or extra:
            raise CohereError(f"{self.path}: {WEIGHTS} does not match its config (missing "
                              f"tensors: {missing[:3] or 'none'}; unexpected: {extra[:3] or 'none'}); "
                              "re-download or re-train the artifact")
        for k, shape in shapes.items():
            if tuple(self.tensors[k].shape) != tuple(shape):
                raise CohereError(f"{self.path}: tensor {k!r} has shape {tuple(self.tensors[k].shape)}, "
                                  f"expected {tuple(shape)}; re-download or re-train the artifact")


def save_artifact(folder: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor],
                  card: str) -> str:
    """Write an artifact folder atomically (replacing an existing one); return its digest."""
    folder = Path(folder)
    if config.get("kind") not in KINDS:
        raise ValueError(f"config['kind'] must be one of {KINDS}")
    _check_ids(folder / CONFIG, config)  # nothing is saved that read_config would refuse
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    # one metadata key only: safetensors writes metadata in hash-map order, so several keys
    # would make the bytes (and the digest) differ between two saves of the same weights
    weights = save(tensors, metadata={"format": "pt"})
    digest = hashlib.sha256(weights).hexdigest()
    config = {**config, "cohere_version": __version__, "files": {WEIGHTS: digest}}
    with writing(folder, folder=True) as tmp:
        (tmp / WEIGHTS).write_bytes(weights)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / CARD).write_text(card)
    return digest


def read_config(folder: str | os.PathLike, kind: str | None = None) -> dict:
    """config.json of an artifact folder, its ids checked (they name folders), ``kind`` if given."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise CohereError(f"{folder}: not an artifact folder (no {CONFIG}); expected a folder "
                          f"written by cohere with {CONFIG}, {WEIGHTS} and {CARD}")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CohereError(f"{folder / CONFIG}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CohereError(f"{folder / CONFIG}: expected a JSON object; re-download or re-train the artifact")
    if kind is not None and config.get("kind") != kind:
        raise CohereError(f"{folder}: is a {config.get('kind')!r} artifact, expected {kind!r}")
    _check_ids(folder / CONFIG, config)
    return config


def _check_ids(path: Path, config: dict) -> None:
    """Every modality name and model id of a config follows the one rule (``cohere.ids``)."""
    kind = config.get("kind")
    if kind not in KINDS:
        return

    def field(name: str) -> str:
        return f"{path}: field {name!r}"

    if kind == "encoder":
        ids.modality(config.get("id"), field("id"))
    else:
        ids.parse_id(config.get("id"), field("id"))
    for key in ("modality", "source", "target"):
        if key in config:
            ids.modality(config[key], field(key))
    sources, encoders = config.get("sources", []), config.get("encoders", {})
    if not isinstance(sources, list) or not isinstance(encoders, dict):
        raise CohereError(f"{path}: fields 'sources' and 'encoders' must be a list of modality names and an "
                          "object {modality: digest}; re-download or re-train the artifact")
    for i, m in enumerate(sources):
        ids.modality(m, field(f"sources[{i}]"))
    for m in encoders:
        ids.modality(m, f"{path}: a key of field 'encoders'")


def load_artifact(folder: str | os.PathLike, kind: str | None = None) -> Artifact:
    """Load and verify an artifact folder: recorded sha256, safetensors format, kind."""
    folder = Path(folder)
    config = read_config(folder, kind)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CohereError(f"{folder}: {WEIGHTS} is missing; re-download or re-train the artifact")
    digest = sha256_file(weights)
    recorded = config.get("files", {}).get(WEIGHTS)
    if recorded != digest:
        raise CohereError(f"{weights}: sha256 {digest[:12]}... does not match the recorded "
                          f"{str(recorded)[:12]}...; the file was changed or truncated, re-download "
                          "or re-train it")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CohereError(f"{weights}: not a valid safetensors file ({e})") from None
    return Artifact(folder, config, tensors, digest)
