"""The Hugging Face Hub side: publishing artifacts, pinned downloads, and the registry index.

Publishing (``push``): create the repo if needed, upload ``config.json``,
``model.safetensors`` and the model card in one commit, tag that commit, and return the
registry entry (id, kind, modalities, repo, pinned sha, file sha256s, encoder digests,
metrics, license) to add to ``registry/index.json``.

Downloads are pinned: a revision (branch or tag) is resolved to a commit sha once
(``resolve_revision``) and every file is fetched at that sha into a huggingface_hub cache
(``download``), so later loads need no network (``HF_HUB_OFFLINE=1``).

The registry index is the JSON shipped as ``cohere._registry/index.json`` (``registry/`` in
the repository), or the file named by ``COHERE_REGISTRY``; entries are validated against
``schema.json`` with the small validator below (no extra dependency).

The endpoint and token come from ``HF_ENDPOINT`` / ``HF_TOKEN`` (or the arguments).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path

from . import ids
from .artifacts import CARD, CONFIG, WEIGHTS, load_artifact
from .errors import CohereError

FILES = (CONFIG, WEIGHTS, CARD)
DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def endpoint_url(endpoint: str | None = None) -> str:
    """``endpoint``, else ``$HF_ENDPOINT``, else the public Hub (read now, not at import)."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint_url(endpoint), token=token or os.environ.get("HF_TOKEN") or None)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


@contextlib.contextmanager
def hub_errors(repo: str, endpoint: str | None = None, revision: str | None = None):
    """Turn huggingface_hub / network failures into one-line ``CohereError``s."""
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    url = endpoint_url(endpoint)
    try:
        yield
    except RevisionNotFoundError:
        raise CohereError(f"{repo}: revision {revision!r} not found on {url}; give an existing branch, "
                          f"tag or commit sha as --from {repo}@REV") from None
    except RepositoryNotFoundError:
        raise CohereError(f"repository {repo!r} not found on {url}; check ORG/NAME (and HF_TOKEN for a "
                          "private repo, HF_ENDPOINT for another Hub)") from None
    except RemoteEntryNotFoundError as e:
        name = str(e).rstrip(".").rsplit("/", 1)[-1]
        raise CohereError(f"{repo}@{revision}: has no {name}; expected a cohere artifact repo "
                          f"({', '.join(FILES)})") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        raise CohereError(f"{repo}@{revision}: not in the local cache and the Hub cannot be reached "
                          f"({type(e).__name__}); unset HF_HUB_OFFLINE or check the network and "
                          f"HF_ENDPOINT ({url})") from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CohereError(f"{url} refused the request for {repo} ({first}); check HF_TOKEN and the "
                          "repository name") from None
    except OSError as e:  # connection refused, DNS, timeouts (httpx errors are OSErrors or wrapped)
        raise CohereError(f"cannot reach {url} for {repo} ({type(e).__name__}); check the network and "
                          "HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only installed artifacts") from None
    except Exception as e:
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise CohereError(f"cannot reach {url} for {repo} ({type(e).__name__}); check the network "
                              "and HF_ENDPOINT") from None
        raise


# ---------------------------------------------------------------- pinned downloads


def parse_repo_spec(text: str) -> tuple[str, str | None]:
    """``"org/name@v1"`` -> ``("org/name", "v1")``; ``"org/name"`` -> ``("org/name", None)``."""
    repo, _, rev = text.partition("@")
    if not REPO_RE.match(repo) or (_ and not rev):
        raise CohereError(f"{text!r}: expected a Hub repository ORG/NAME or ORG/NAME@REVISION, or an "
                          "existing folder")
    return repo, rev or None


def resolve_revision(repo: str, revision: str | None = None, endpoint: str | None = None,
                     token: str | None = None) -> str:
    """The commit sha that ``revision`` (default: main) points to now."""
    if revision and SHA_RE.match(revision):
        return revision
    if offline():
        raise CohereError(f"{repo}@{revision or 'main'}: cannot resolve a revision to a commit with "
                          "HF_HUB_OFFLINE=1; unset it, or give the full commit sha")
    with hub_errors(repo, endpoint, revision or "main"):
        sha = _api(endpoint, token).model_info(repo, revision=revision).sha
    if not sha or not SHA_RE.match(sha):
        raise CohereError(f"{endpoint_url(endpoint)} returned no commit sha for {repo}@{revision}; is it a Hub?")
    return sha


def download(repo: str, sha: str, filename: str, cache_dir: str | os.PathLike,
             endpoint: str | None = None, token: str | None = None, force: bool = False) -> Path:
    """Fetch one file pinned to commit ``sha`` into the huggingface_hub cache ``cache_dir``."""
    from huggingface_hub import hf_hub_download

    if not SHA_RE.match(sha):
        raise CohereError(f"{sha!r} is not a commit sha; downloads are pinned to a full 40-hex sha")
    with hub_errors(repo, endpoint, sha):
        path = hf_hub_download(repo, filename, revision=sha, cache_dir=str(cache_dir),
                               endpoint=endpoint_url(endpoint), token=token or os.environ.get("HF_TOKEN") or None,
                               force_download=force)
    return Path(path)


# ---------------------------------------------------------------- model card


def split_front_matter(text: str) -> tuple[str, str]:
    m = re.match(r"^---\n(.*?\n)---\n", text, flags=re.S)
    if not m:
        raise CohereError(f"the model card ({CARD}) has no YAML front matter; re-save the artifact with cohere")
    return m.group(1), text[m.end():]


def card_metadata(text: str) -> dict:
    import yaml

    front, _ = split_front_matter(text)
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError as e:
        raise CohereError(f"the model card's front matter is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise CohereError("the model card's front matter must be a YAML mapping")
    return meta


def prepare_card(text: str, config: dict, dataset: str | None = None, license: str | None = None) -> str:
    """The card to publish: the artifact's README.md with a complete Hub front matter.

    Required: ``library_name: cohere``, ``license``, ``tags`` (``cohere``, ``cohere-<kind>``),
    ``datasets``, ``metrics`` and a ``cohere:`` block naming the artifact's kind and id. Keys
    that are missing are appended (the rendered text is kept); a wrong value is rewritten.
    """
    import yaml

    meta = card_metadata(text)
    front, body = split_front_matter(text)
    kind, art_id = config.get("kind"), config.get("id")
    block = meta.get("cohere")
    if isinstance(block, dict) and (block.get("kind") != kind or block.get("id") != art_id):
        raise CohereError(f"the model card describes {block.get('kind')} {block.get('id')!r} but config.json "
                          f"is {kind} {art_id!r}; re-save the artifact so that its card is rendered again")
    training = config.get("training", {}) or {}
    want_tags = ["cohere", f"cohere-{kind}"] + (["cohere-expert"] if kind == "multi" else [])
    metrics = {"encoder": ["r_squared"]}.get(kind, ["mse", "r_squared"])
    missing: dict = {}
    rewrite = False
    if meta.get("library_name") != "cohere":
        rewrite |= "library_name" in meta
        missing["library_name"] = "cohere"
    lic = license or meta.get("license") or config.get("license") or "cc-by-4.0"
    if meta.get("license") != lic:
        rewrite |= "license" in meta
        missing["license"] = lic
    tags = meta.get("tags") if isinstance(meta.get("tags"), list) else None
    if tags is None or not set(want_tags) <= set(tags):
        rewrite |= tags is not None
        missing["tags"] = (tags or []) + [t for t in want_tags if t not in (tags or [])]
    datasets = meta.get("datasets")
    if dataset and datasets != [dataset]:
        rewrite |= "datasets" in meta
        missing["datasets"] = [dataset]
    elif not datasets:
        fallback = training.get("dataset") or training.get("cohort")
        if not fallback:
            raise CohereError("the model card names no training dataset and config.json has no training "
                              "cohort; give one with --dataset NAME")
        rewrite |= "datasets" in meta
        missing["datasets"] = [str(fallback)]
    if not meta.get("metrics"):
        missing["metrics"] = metrics
    if not isinstance(block, dict):
        summary = {k: config[k] for k in ("kind", "id", "modality", "source", "sources", "target", "encoders",
                                          "latent_dim", "metrics", "n_train") if k in config}
        missing["cohere"] = summary
    if not missing:
        return text
    if rewrite:
        front = yaml.safe_dump({**meta, **missing}, sort_keys=False, allow_unicode=True)
    else:
        front = front + yaml.safe_dump(missing, sort_keys=False, allow_unicode=True)
    out = f"---\n{front}---\n{body}"
    card_metadata(out)  # still valid
    return out


# ---------------------------------------------------------------- publishing


def default_tag(config: dict, digest: str) -> str:
    """``expert-<first 12 hex of the weights' sha256>``: one tag per distinct artifact."""
    return f"{config['kind']}-{digest[:12]}"


def push(folder: str | os.PathLike, repo: str, *, endpoint: str | None = None, token: str | None = None,
         tag: str | None = None, private: bool = False, dataset: str | None = None,
         license: str | None = None, log=None) -> dict:
    """Publish an artifact folder to ``repo`` and return its registry entry.

    One commit with config.json, model.safetensors and README.md (the card completed by
    ``prepare_card``), then a tag on that commit (default ``default_tag``).
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    log = log or (lambda msg: None)
    folder = Path(folder)
    if not REPO_RE.match(repo):
        raise CohereError(f"--repo {repo!r}: expected ORG/NAME, e.g. my-lab/cohere-expert-rnaseq-to-cna")
    art = load_artifact(folder)  # verifies the weights against config.json
    config = art.config
    card = prepare_card((folder / CARD).read_text(), config, dataset, license)
    payload = {CONFIG: (folder / CONFIG).read_bytes(), WEIGHTS: (folder / WEIGHTS).read_bytes(),
               CARD: card.encode()}
    files = {name: hashlib.sha256(data).hexdigest() for name, data in payload.items()}
    tag = tag or default_tag(config, art.digest)
    url = endpoint_url(endpoint)
    api = _api(endpoint, token)
    with hub_errors(repo, endpoint, "main"):
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        log(f"{config['kind']} {config['id']}: uploading {', '.join(payload)} to {url}/{repo} ...")
        info = api.create_commit(
            repo, [CommitOperationAdd(path_in_repo=n, path_or_fileobj=d) for n, d in payload.items()],
            commit_message=f"cohere {config['kind']} {config['id']} ({art.digest[:12]})",
            commit_description=f"Weights sha256 {art.digest}. Pushed with cohere {config.get('cohere_version', '')}.")
        sha = info.oid
        try:
            api.create_tag(repo, tag=tag, revision=sha, tag_message=f"cohere {config['kind']} {config['id']}")
        except HfHubHTTPError as e:
            if e.response is None or e.response.status_code != 409:
                raise
            tags = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}
            if tags.get(tag) != sha:
                raise CohereError(f"{repo}: tag {tag!r} already exists at another commit "
                                  f"({str(tags.get(tag))[:12]}); give another one with --tag") from None
    log(f"pushed {url}/{repo} at {sha} (tag {tag})")
    return registry_entry(config, repo, sha, files, tag, card_metadata(card).get("license"))


def registry_entry(config: dict, repo: str, sha: str, files: dict, revision: str | None = None,
                   license: str | None = None) -> dict:
    """The registry index entry of a published artifact (validated against the schema)."""
    where = {"repo": repo, **({"revision": revision} if revision else {}), "sha": sha}
    return _entry(config, where, files, license)


def package_entry(config: dict, package: str, version: str, path: str, files: dict,
                  license: str | None = None) -> dict:
    """The registry index entry of an artifact shipped in a pip package (folder ``path``
    inside its ``artifacts/``), validated against the schema."""
    return _entry(config, {"package": package, "version": version, "path": path}, files, license)


def _entry(config: dict, where: dict, files: dict, license: str | None) -> dict:
    kind = config["kind"]
    if kind == "encoder":
        modalities = [config["modality"]]
        encoders = {config["modality"]: files[WEIGHTS]}
    else:
        modalities = [*config["sources"], config["target"]]
        encoders = dict(sorted(config["encoders"].items()))
    metrics = {k: v for k, v in sorted((config.get("metrics") or {}).items())
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    training = config.get("training") or {}
    entry = {"id": config["id"], "kind": kind, "modalities": modalities, **where,
             "files": dict(sorted(files.items())), "encoders": encoders, "metrics": metrics,
             "license": license or config.get("license") or "cc-by-4.0"}
    if training.get("description"):
        entry["description"] = str(training["description"])
    validate_entry(entry)
    return entry


# ---------------------------------------------------------------- registry index


def _registry_file(name: str):
    return resources.files("cohere._registry").joinpath(name)


def index_path():
    """``$COHERE_REGISTRY`` (a file, or a folder with index.json), else the shipped index."""
    env = os.environ.get("COHERE_REGISTRY")
    if not env:
        return _registry_file("index.json")
    p = Path(env).expanduser()
    if p.is_dir():
        p = p / "index.json"
    if not p.is_file():
        raise CohereError(f"COHERE_REGISTRY={env}: no such index file; point it at a registry index.json "
                          "or unset it to use the shipped registry")
    return p


def schema() -> dict:
    return json.loads(_registry_file("schema.json").read_text())


def load_index(path=None) -> list[dict]:
    """The validated entries of a registry index (``index_path()`` by default)."""
    path = index_path() if path is None else path
    try:
        data = json.loads(Path(str(path)).read_text() if isinstance(path, (str, os.PathLike)) else path.read_text())
    except json.JSONDecodeError as e:
        raise CohereError(f"registry index {path}: not valid JSON ({e})") from None
    errors = schema_errors(data, schema())
    if errors:
        raise CohereError(f"registry index {path}: {errors[0]}; fix the entry (see registry/README.md)")
    entries = data["entries"]
    for i, e in enumerate(entries):
        problems = entry_problems(e)
        if problems:
            raise CohereError(f"registry index {path}: entry {i} ({e.get('id')!r}): {problems[0]}")
    return entries


def find(kinds: tuple[str, ...], art_id: str, entries: list[dict] | None = None) -> list[dict]:
    entries = load_index() if entries is None else entries
    return [e for e in entries if e["kind"] in kinds and e["id"] == art_id]


def find_encoder(modality: str, digest: str, entries: list[dict] | None = None) -> dict | None:
    for e in find(("encoder",), modality, entries):
        if e["files"][WEIGHTS] == digest:
            return e
    return None


def entry_problems(entry: dict) -> list[str]:
    """Schema errors, the id rule of ``cohere.ids``, and the cross-field rules a schema cannot
    say simply."""
    errors = schema_errors(entry, schema()["$defs"]["entry"], schema())
    if errors:
        return errors
    kind, mods = entry["kind"], entry["modalities"]
    if "package" in entry and ({"repo", "sha", "revision"} & set(entry)):
        return ["an entry has one source: repo + sha (a Hub repository) or package + version + path, not both"]
    try:
        for m in [*mods, *entry["encoders"]]:
            ids.modality(m, "modality")
        if kind == "encoder":
            ids.modality(entry["id"], "id")
            source, target = None, entry["id"]
        else:
            source, target = ids.parse_id(entry["id"], "id")
    except CohereError as e:
        return [str(e)]
    if kind == "encoder":
        if mods != [entry["id"]]:
            errors.append(f"an encoder's modalities must be [id], got {mods}")
        if entry["encoders"] != {entry["id"]: entry["files"][WEIGHTS]}:
            errors.append("an encoder's encoders must be {id: sha256 of its model.safetensors}")
    else:
        if (source == ids.MULTI) != (kind == "multi"):
            errors.append(f"kind {kind!r} needs an id {'multi->TARGET' if kind == 'multi' else 'SOURCE->TARGET'}, "
                          f"got {entry['id']!r}")
        if mods[-1] != target or (kind == "expert" and mods != [source, target]):
            errors.append(f"modalities {mods} do not match id {entry['id']!r} (sources then target)")
        if sorted(entry["encoders"]) != sorted(set(mods)):
            errors.append(f"encoders must give one digest for each of {sorted(set(mods))}")
    return errors


def validate_entry(entry: dict) -> None:
    problems = entry_problems(entry)
    if problems:
        raise CohereError(f"invalid registry entry {entry.get('id')!r}: {problems[0]}")


# ---------------------------------------------------------------- a small JSON Schema validator


def schema_errors(value, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Errors of ``value`` against the JSON Schema subset the registry uses.

    Supported: $ref (local), type, const, enum, pattern, minLength, minimum, items,
    minItems, uniqueItems, required, properties, patternProperties, additionalProperties,
    minProperties, allOf, if/then/else.
    """
    root = schema if root is None else root
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, path)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {json.dumps(value)[:60]}"]
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {json.dumps(schema['const'])}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: expected one of {', '.join(map(json.dumps, schema['enum']))}, got {json.dumps(value)}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if _is_type(value, "number") and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items")
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
            errors.append(f"{path}: items must be unique")
        if "items" in schema:
            for i, v in enumerate(value):
                errors += schema_errors(v, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                errors.append(f"{path}: missing required {k!r}")
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: needs at least {schema['minProperties']} entries")
        props, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
        for k, v in value.items():
            matched = False
            if k in props:
                matched = True
                errors += schema_errors(v, props[k], root, f"{path}.{k}")
            for pat, sub in patterns.items():
                if re.search(pat, k):
                    matched = True
                    errors += schema_errors(v, sub, root, f"{path}.{k}")
            extra = schema.get("additionalProperties", True)
            if not matched and extra is False:
                errors.append(f"{path}: unexpected property {k!r}")
            elif not matched and isinstance(extra, dict):
                errors += schema_errors(v, extra, root, f"{path}.{k}")
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, root, path)
    if "if" in schema:
        branch = "then" if not schema_errors(value, schema["if"], root, path) else "else"
        if branch in schema:
            errors += schema_errors(value, schema[branch], root, path)
    return errors


def _is_type(value, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "object": dict, "array": list, "boolean": bool,
                              "null": type(None)}[t])
