"""Artifact folders: ``config.json`` + ``model.safetensors`` + ``README.md`` (model card).

The same layout is a local directory or a Hub repository. Weights *and* fitted statistics
are tensors in ``model.safetensors`` (no pickle anywhere); ``config.json`` holds everything
else as JSON, including the sha256 of ``model.safetensors`` so a changed or truncated file is
refused. An artifact's *digest* is the sha256 of its ``model.safetensors``.

The digest covers the config too: ``save_artifact`` seals the whole config (everything but
its ``files`` block) into the safetensors metadata as canonical JSON, and ``load_artifact``
refuses a config.json that differs from that sealed copy, naming the first differing field.
A field added to a config later is covered without being listed anywhere. The model card is
descriptive and not sealed (the store and the registry still record its sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from . import __version__, ids
from .atomic import writing
from .errors import CohereError

if TYPE_CHECKING:  # type hints only: the CLI starts without torch
    import torch

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
KINDS = ("encoder", "expert", "multi")
SEALED = "cohere_config"  # the one safetensors metadata key: the canonical JSON of the config


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def render_card(template: str, **context) -> str:
    """Render ``cards/<template>`` (a Jinja template shipped with the package)."""
    import jinja2

    cards = resources.files("cohere._cards")
    env = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: cards.joinpath(name).read_text()),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v: json.dumps(v)
    return env.get_template(template).render(**context)


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


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _sealed_part(config: dict) -> dict:
    """What the digest covers: the whole config except its ``files`` block (the digest itself)."""
    return {k: v for k, v in config.items() if k != "files"}


def pack_artifact(config: dict, tensors: dict[str, torch.Tensor], card: str) -> tuple[str, dict[str, bytes]]:
    """The files of an artifact folder as bytes ({name: content}) and its digest, written by
    nothing yet: :func:`write_artifact` puts them in place. A training worker packs, the
    process that owns the models folder writes (cohere.executors)."""
    if config.get("kind") not in KINDS:
        raise ValueError(f"config['kind'] must be one of {KINDS}")
    if not isinstance(card, str):
        raise TypeError(f"the model card must be text, got {type(card).__name__}")
    # the config exactly as it reads back from config.json (tuples -> lists, ...)
    config = json.loads(json.dumps(_sealed_part({**config, "cohere_version": __version__})))
    import torch  # here, not at import: the CLI starts without torch
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    # one metadata key only: safetensors writes metadata in hash-map order, so several keys
    # would make the bytes (and the digest) differ between two saves of the same artifact
    weights = save(tensors, metadata={SEALED: canonical_json(config)})
    digest = hashlib.sha256(weights).hexdigest()
    config["files"] = {WEIGHTS: digest}
    return digest, {WEIGHTS: weights, CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
                    CARD: card.encode()}


def write_artifact(folder: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Write packed files (:func:`pack_artifact`) as the folder, atomically, replacing an
    existing one. Their ids are checked first: nothing is written that read_config would refuse."""
    folder = Path(folder)
    if set(files) != {WEIGHTS, CONFIG, CARD}:
        raise CohereError(f"{folder}: an artifact has the files {WEIGHTS}, {CONFIG} and {CARD}, got {sorted(files)}")
    _check_ids(folder / CONFIG, json.loads(files[CONFIG]))
    with writing(folder, folder=True) as tmp:
        for name in (WEIGHTS, CARD, CONFIG):  # the config last: a folder without it is no artifact
            (tmp / name).write_bytes(files[name])


def save_artifact(folder: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor],
                  card: str) -> str:
    """Write an artifact folder atomically (replacing an existing one); return its digest."""
    digest, files = pack_artifact(config, tensors, card)
    write_artifact(folder, files)
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
    """Load and verify an artifact folder: recorded sha256, the config sealed in the weights,
    safetensors format, kind."""
    folder = Path(folder)
    config = read_config(folder, kind)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CohereError(f"{folder}: {WEIGHTS} is missing; re-download or re-train the artifact")
    digest = sha256_file(weights)
    files = config.get("files")
    recorded = files.get(WEIGHTS) if isinstance(files, dict) else None
    if recorded != digest:
        raise CohereError(f"{weights}: sha256 {digest[:12]}... does not match the recorded "
                          f"{str(recorded)[:12]}...; the file was changed or truncated, re-download "
                          "or re-train it")
    try:
        with safe_open(weights, framework="pt") as f:
            sealed = (f.metadata() or {}).get(SEALED)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CohereError(f"{weights}: not a valid safetensors file ({e})") from None
    _check_sealed(folder, config, sealed)
    return Artifact(folder, config, tensors, digest)


def _check_sealed(folder: Path, config: dict, sealed: str | None) -> None:
    """config.json must equal the copy sealed into the weights when the artifact was saved."""
    if sealed is None:
        raise CohereError(f"{folder}: {WEIGHTS} holds no sealed copy of {CONFIG} (the artifact was saved by "
                          "an older cohere), so its config cannot be verified; re-train it, or re-download "
                          "a version saved by this cohere")
    try:
        saved = json.loads(sealed)
    except json.JSONDecodeError:
        raise CohereError(f"{folder / WEIGHTS}: its sealed config is not valid JSON; the file was changed, "
                          "re-download or re-train the artifact") from None
    found = _sealed_part(config)
    if canonical_json(found) == canonical_json(saved):
        return
    where, before, after = _first_difference(saved, found)
    change = "added" if before is _ABSENT else "removed" if after is _ABSENT else "changed"
    raise CohereError(f"{folder / CONFIG}: field {where!r} was {change} after saving (saved {_short(before)}, "
                      f"found {_short(after)}); re-download or re-train the artifact")


_ABSENT = object()  # a key or list item that one side of _first_difference lacks


def _short(value, width: int = 40) -> str:
    text = "nothing" if value is _ABSENT else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width - 3] + "..."


def _first_difference(a, b, path: str = ""):
    """(path, value in a, value in b) of the first place where two JSON values differ, or None.
    Keys in sorted order; a key only one side has gives ``_ABSENT`` on the other."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                return sub, a.get(k, _ABSENT), b.get(k, _ABSENT)
            found = _first_difference(a[k], b[k], sub)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            sub = f"{path}[{i}]"
            if i >= len(a) or i >= len(b):
                return sub, a[i] if i < len(a) else _ABSENT, b[i] if i < len(b) else _ABSENT
            found = _first_difference(a[i], b[i], sub)
            if found:
                return found
        return None
    return None if canonical_json(a) == canonical_json(b) else (path, a, b)
