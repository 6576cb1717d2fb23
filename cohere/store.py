"""The store of installed encoders and experts under ``$COHERE_HOME``.

``$COHERE_HOME`` defaults to the platform's user cache folder (``platformdirs``). It is a
models folder, so ``--models $COHERE_HOME`` works with every command::

    store.json                        the manifest: one entry per installed artifact, with its
                                      origin, pinned commit sha and the sha256 of every file
    encoders/<modality>/              artifact folders: a copy (installed from a folder) or a
    experts/<source>_to_<target>/     link to the pinned snapshot in hub/ (installed from the Hub)
    hub/                              the huggingface_hub cache (models--org--name/snapshots/<sha>/)

``add`` resolves a Hub revision to a commit sha once, downloads at that sha, records the
sha256 of every file, and checks an expert's latent-space contract against the installed
encoders. Every later access re-hashes the files and refuses one that changed, and needs no
network (``HF_HUB_OFFLINE=1`` works).

Every change (``add``, ``remove``) holds ``.store.lock`` (filelock) around its
read-modify-write of store.json, first deletes the temporary files an interrupted change
left, and writes atomically with normal permissions (``cohere.atomic``). Ids are checked by
``cohere.ids`` and every path written or deleted must resolve inside the home (``_inside``).

    store = Store()                          # $COHERE_HOME
    store.add("encoders", "rnaseq", "my-lab/cohere-encoder-rnaseq@v1")
    store.add("experts", "rnaseq->cna")      # resolved through the registry index
    store.encoders()                         # {"rnaseq": Path(...), ...}
    store.load_experts("cna")                # {"rnaseq->cna": Expert, ...}, contract checked

The store is also a default plugin: it registers its encoders and experts through the
``register_encoders`` / ``register_experts`` hooks, like any installed plugin.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from . import hub, ids
from .artifacts import CARD, CONFIG, WEIGHTS, read_config, sha256_file
from .atomic import is_temp, remove, writing
from .errors import CohereError
from .hookspecs import hookimpl

GROUPS = {"encoders": ("encoder",), "experts": ("expert", "multi")}
MANIFEST = "store.json"
LOCK = ".store.lock"  # held around every change of the store (filelock: released if the process dies)
LOCK_TIMEOUT = 120  # seconds to wait for another add/remove
# what earlier versions named their temporary files (tempfile): .store.XXXXXXXX.json, <group>/.<name>.XXXXXXXX/
_LEGACY_TEMP = {"home": re.compile(r"\.store\.[a-z0-9_]{8}\.json"),
                "group": re.compile(r"\.[a-z][a-z0-9_]*\.[a-z0-9_]{8}")}


def default_home() -> Path:
    """``$COHERE_HOME``, else the platform's user cache folder for cohere."""
    env = os.environ.get("COHERE_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cohere"))


def _group(group: str) -> str:
    if group not in GROUPS:
        raise ValueError(f"group must be one of {list(GROUPS)}, got {group!r}")
    return group


def normalize_id(group: str, spec: str) -> str:
    """A modality name (encoders) or ``source->target`` / ``multi->target`` (experts)."""
    if _group(group) == "encoders":
        return ids.modality(spec, "encoder")
    return ids.model_id(spec, "expert id")


def folder_name(group: str, art_id: str) -> str:
    if group == "encoders":
        return art_id
    from .experts import folder_name as expert_folder

    return expert_folder(art_id)


def _cmd(group: str, art_id: str) -> str:
    return f"cohere {group} add '{art_id}'" if "->" in art_id else f"cohere {group} add {art_id}"


def install_command(group: str, entry: dict) -> str:
    """The command that reinstalls ``entry`` exactly (same repo and sha, or same folder)."""
    if entry.get("origin") == "hub":
        return f"{_cmd(group, entry['id'])} --from {entry['repo']}@{entry['sha']} --force"
    return f"{_cmd(group, entry['id'])} --from {entry.get('path', 'FOLDER')} --force"


class Store:
    """Installed encoders and experts under ``home`` (default ``default_home()``)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser() if home is not None else default_home()

    def __repr__(self) -> str:
        return f"Store({str(self.home)!r})"

    # -- the manifest

    @property
    def manifest_path(self) -> Path:
        return self.home / MANIFEST

    def _read(self) -> dict:
        data = {"version": 1, "encoders": {}, "experts": {}}
        if self.manifest_path.is_file():
            try:
                data |= json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as e:
                raise CohereError(f"{self.manifest_path}: the store manifest is not valid JSON ({e}); "
                                  "restore it or delete the folder and reinstall") from None
        return data

    def _write(self, data: dict) -> None:
        """Replace the manifest atomically (call with the lock held, see ``_changing``)."""
        with writing(self._inside(self.manifest_path)) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def _changing(self):
        """Hold the store's lock for one read-modify-write, after tidying what an interrupted
        change left behind. Two processes adding at once take turns instead of losing an entry."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.home / LOCK, timeout=LOCK_TIMEOUT)
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            raise CohereError(f"the store {self.home} is busy: another cohere process has held {lock.lock_file} "
                              f"for {LOCK_TIMEOUT}s; wait for it to finish and try again") from None
        except OSError as e:
            raise CohereError(f"cannot lock the store {self.home} ({type(e).__name__}: {e.strerror or e}); adding "
                              "and removing need write access there: set COHERE_HOME to a folder of yours") from None
        try:
            self._tidy()
            yield
        finally:
            lock.release()

    def _tidy(self) -> None:
        """Delete the temporary files and folders an interrupted change left (lock held): only
        the store's own temporary names, only in the store home and its group folders."""
        for where, parent in [("home", self.home)] + [("group", self.home / g) for g in GROUPS]:
            if not parent.is_dir() or parent.is_symlink():
                continue
            for path in parent.iterdir():
                if is_temp(path.name) or _LEGACY_TEMP[where].fullmatch(path.name):
                    remove(self._inside(path))

    def _inside(self, path: Path) -> Path:
        """``path``, after checking that it lies inside the store home (links above it resolved).

        The second line of defence after ``cohere.ids``: every path the store writes, renames
        or deletes goes through here, so neither an id nor an edited store.json can reach out.
        """
        home = self.home.resolve()
        full = Path(os.path.abspath(path))
        real = full.parent.resolve() / full.name
        if real == home or home not in real.parents:
            raise CohereError(f"refusing {path}: it resolves to {real}, outside the store {home}; expected a path "
                              f"inside it (check the id, and {self.manifest_path} if it was edited)")
        return path

    def entries(self, group: str) -> list[dict]:
        """Manifest entries of ``group`` ("encoders" or "experts"), sorted by id."""
        found = self._read()[_group(group)]
        return [found[k] for k in sorted(found)]

    def get(self, group: str, spec: str) -> dict | None:
        return self._read()[_group(group)].get(normalize_id(group, spec))

    def entry(self, group: str, spec: str) -> dict:
        art_id = normalize_id(group, spec)
        found = self._read()[_group(group)].get(art_id)
        if found is None:
            have = ", ".join(self._read()[group]) or "none"
            raise CohereError(f"{group[:-1]} {art_id!r} is not installed in {self.home} (installed: {have}); "
                              f"install it with \"{_cmd(group, art_id)}\"")
        return found

    # -- verified access

    def folder(self, group: str, spec: str, verify: bool = True) -> Path:
        """The artifact folder of an installed item; with ``verify`` every file is re-hashed."""
        entry = self.entry(group, spec)
        folder = self._folder_of(entry)
        if verify:
            self._verify(group, entry)
        return folder

    def _folder_of(self, entry: dict) -> Path:
        return self._inside(self.home / entry["folder"])

    def _verify(self, group: str, entry: dict) -> None:
        folder = self._folder_of(entry)
        for name, recorded in sorted(entry["files"].items()):
            path = folder / name
            where = f"{entry['repo']}@{entry['sha'][:12]}" if entry.get("origin") == "hub" else entry.get("path")
            if not path.is_file():
                raise CohereError(f"{group[:-1]} {entry['id']}: {name} is missing from the store ({path}); "
                                  f"reinstall it with \"{install_command(group, entry)}\"")
            actual = sha256_file(path)
            if actual != recorded:
                raise CohereError(f"{group[:-1]} {entry['id']}: {path.resolve()} has sha256 {actual[:12]}... but "
                                  f"{recorded[:12]}... was recorded when it was installed from {where}; the file "
                                  f"was changed or corrupted, so it is refused: reinstall it with "
                                  f"\"{install_command(group, entry)}\"")

    def verify(self) -> dict[str, list[str]]:
        """Re-hash every installed file; raise on the first mismatch; return the ids checked."""
        out = {}
        for group in GROUPS:
            out[group] = []
            for entry in self.entries(group):
                self._verify(group, entry)
                out[group].append(entry["id"])
        return out

    def encoders(self, verify: bool = True) -> dict[str, Path]:
        """{modality: folder} of the installed encoders, sorted."""
        return {e["id"]: self.folder("encoders", e["id"], verify) for e in self.entries("encoders")}

    def experts(self, target: str | None = None, verify: bool = True,
                kinds: tuple[str, ...] = ("expert", "multi")) -> dict[str, Path]:
        """{id: folder} of the installed experts (and multi models), for ``target`` if given."""
        return {e["id"]: self.folder("experts", e["id"], verify) for e in self.entries("experts")
                if e["kind"] in kinds and (target is None or e["target"] == target)}

    def load_encoders(self, modalities=None) -> dict:
        """{modality: Encoder} of the installed encoders (all, or ``modalities``)."""
        from .encoders import load_encoder

        names = list(modalities) if modalities is not None else [e["id"] for e in self.entries("encoders")]
        return {m: load_encoder(self.folder("encoders", m)) for m in names}

    def load_experts(self, target: str | None = None, kinds: tuple[str, ...] = ("expert",)) -> dict:
        """{id: Expert or MultiConditionModel}, each checked against the installed encoders."""
        from .experts import load_model

        digests = self._encoder_digests()
        models = {}
        for art_id, folder in self.experts(target, kinds=kinds).items():
            model = load_model(folder)
            self._check_contract(art_id, model.encoders, digests, None)
            models[art_id] = model
        return models

    # -- install

    def add(self, group: str, spec: str, source: str | os.PathLike | None = None, *, force: bool = False,
            endpoint: str | None = None, token: str | None = None) -> dict:
        """Install ``spec`` from ``source`` and return its manifest entry.

        ``source``: ``ORG/NAME[@REV]`` on the Hub, a folder (an artifact folder or a models
        folder), or None to resolve ``spec`` through the registry index. Installing a
        different version over an installed one needs ``force`` (which also re-downloads).
        """
        group = _group(group)
        art_id = normalize_id(group, spec)
        origin, folder, config, files = self._fetch(group, art_id, source, force, endpoint, token)
        self._check_loads(group, folder)
        with self._changing():
            return self._install(group, art_id, origin, folder, config, files, force)

    def _fetch(self, group: str, art_id: str, source, force: bool, endpoint, token) -> tuple:
        """(origin, folder, config, sha256 of each file) of what ``add`` installs, checked."""
        origin = self._origin(group, art_id, source)
        if origin["origin"] == "hub":
            if "sha" not in origin:  # resolved once; the registry pins it already
                origin["sha"] = hub.resolve_revision(origin["repo"], origin.get("revision"), endpoint, token)
            origin["endpoint"] = hub.endpoint_url(endpoint)
            config_path = hub.download(origin["repo"], origin["sha"], CONFIG, self.home / "hub", endpoint, token,
                                       force=force)
            folder = config_path.parent
        else:
            folder = origin.pop("folder")
        config = read_config(folder)
        self._check_identity(group, art_id, config, origin)
        if group == "experts":  # before downloading the weights; checked again under the lock
            self._check_contract(art_id, config.get("encoders", {}), self._encoder_digests(), origin)
        if origin["origin"] == "hub":
            for name in (WEIGHTS, CARD):
                hub.download(origin["repo"], origin["sha"], name, self.home / "hub", endpoint, token, force=force)
        files = {}
        for name in (CONFIG, WEIGHTS, CARD):
            if not (folder / name).is_file():
                raise CohereError(f"{folder}: {name} is missing; expected a cohere artifact ({CONFIG}, {WEIGHTS}, {CARD})")
            files[name] = sha256_file(folder / name)
        expected = origin.pop("expected_files", None)
        for name, want in (expected or {}).items():
            if files.get(name) != want and "package" in origin:
                raise CohereError(f"{art_id}: {name} of the package {origin['package']} has sha256 "
                                  f"{files.get(name, '')[:12]}... but the registry records {want[:12]}...; "
                                  f"refusing it (reinstall the package: pip install --force-reinstall "
                                  f"{origin['package']})")
            if files.get(name) != want:
                raise CohereError(f"{art_id}: {name} from {origin['repo']}@{origin['sha'][:12]} has sha256 "
                                  f"{files.get(name, '')[:12]}... but the registry records {want[:12]}...; "
                                  "refusing it (the repository or the cache was changed)")
        return origin, folder, config, files

    def _install(self, group: str, art_id: str, origin: dict, folder: Path, config: dict, files: dict,
                 force: bool) -> dict:
        """Place the artifact and record it (lock held: the checks see the store as it is now)."""
        previous = self.get(group, art_id)
        if group == "experts":
            self._check_contract(art_id, config.get("encoders", {}), self._encoder_digests(), origin)
        else:
            self._check_dependents(art_id, files[WEIGHTS])
        if previous is not None and not force:
            if previous["files"] == files:
                return previous
            if origin["origin"] == "hub" and (previous.get("repo"), previous.get("sha")) == (origin["repo"], origin["sha"]):
                raise CohereError(f"the cached files of {origin['repo']}@{origin['sha'][:12]} changed since "
                                  f"{art_id} was installed from them; re-download with \"{install_command(group, previous)}\"")
            raise CohereError(f"{group[:-1]} {art_id!r} is already installed (digest {previous['digest'][:12]}, "
                              f"from {previous.get('repo') or previous.get('path')}); pass --force to replace it "
                              f"with digest {files[WEIGHTS][:12]}")
        entry = self._entry(group, art_id, config, files, origin)
        self._place(group, art_id, folder, origin["origin"])
        data = self._read()
        data[group][art_id] = entry
        self._write(data)
        return entry

    def _encoder_digests(self) -> dict[str, str]:
        return {e["id"]: e["digest"] for e in self.entries("encoders")}

    def _origin(self, group: str, art_id: str, source) -> dict:
        if source is None:
            return self._from_registry(group, art_id)
        path = Path(source).expanduser()
        if path.exists():
            return {"origin": "path", "path": str(path.resolve()), "folder": self._find_in(group, art_id, path)}
        repo, revision = hub.parse_repo_spec(str(source))
        return {"origin": "hub", "repo": repo, "revision": revision or "main"}

    def _from_registry(self, group: str, art_id: str) -> dict:
        found = hub.find(GROUPS[group], art_id)
        where = hub.index_path()
        if not found:
            raise CohereError(f"{art_id!r} is not in the registry index ({where}); give --from ORG/NAME[@REV] "
                              "or --from FOLDER (or point COHERE_REGISTRY at another index)")
        if len(found) > 1:
            options = ", ".join(f"{e['repo']}@{e['sha'][:12]}" for e in found)
            raise CohereError(f"{art_id!r} has {len(found)} registry entries ({options}); choose one with "
                              f"--from REPO@SHA")
        e = found[0]
        if "package" in e:
            return {"origin": "path", "path": str(_package_folder(group, e)), "package": e["package"],
                    "folder": _package_folder(group, e), "registry": True, "expected_files": dict(e["files"])}
        return {"origin": "hub", "repo": e["repo"], "revision": e.get("revision") or e["sha"], "sha": e["sha"],
                "registry": True, "expected_files": dict(e["files"])}

    def _find_in(self, group: str, art_id: str, path: Path) -> Path:
        """An artifact folder, or the item's folder inside a models folder."""
        if (path / CONFIG).is_file():
            return path
        inner = path / group / folder_name(group, art_id)
        if (inner / CONFIG).is_file():
            return inner
        raise CohereError(f"{path}: neither an artifact folder (no {CONFIG}) nor a models folder with "
                          f"{group}/{folder_name(group, art_id)}/; give the folder written by 'cohere {group} train'")

    def _check_identity(self, group: str, art_id: str, config: dict, origin: dict) -> None:
        kind, got = config.get("kind"), config.get("id")
        where = origin.get("path") or f"{origin.get('repo')}@{str(origin.get('sha'))[:12]}"
        if kind not in GROUPS[group]:
            raise CohereError(f"{where}: holds a {kind!r} artifact, not one of {', '.join(GROUPS[group])}; "
                              f"use 'cohere {'encoders' if kind == 'encoder' else 'experts'} add' for it")
        if got != art_id:
            raise CohereError(f"{where}: holds {kind} {got!r}, not {art_id!r}; ask for {got!r} or give the right "
                              "repository or folder")

    def _check_contract(self, art_id: str, recorded: dict, installed: dict, origin: dict | None) -> None:
        """Every encoder the expert was trained on must be installed, with the same digest."""
        commands, wrong = [], []
        for m, digest in sorted(recorded.items()):
            have = installed.get(m)
            if have == digest:
                continue
            if have is not None:
                wrong.append(f"the installed {m} encoder has digest {have} but {art_id} was trained on the {m} "
                              f"encoder with digest {digest}")
                continue
            commands.append(self._encoder_command(m, digest, origin))
        if wrong:
            raise CohereError(f"latent-space contract: {'; '.join(wrong)}; experts must use exactly the encoders "
                              f"they were trained with: install an expert trained on the installed encoder, or "
                              f"replace the encoder (cohere encoders add M --from ... --force)")
        if commands:
            raise CohereError(f"{art_id} needs encoders that are not installed; install them first with: "
                              + " && ".join(commands))

    def _encoder_command(self, modality: str, digest: str, origin: dict | None) -> str:
        try:
            e = hub.find_encoder(modality, digest)
        except CohereError:
            e = None
        if e is not None and "package" in e:
            return f"cohere encoders add {modality}"      # resolved through the registry to the package
        if e is not None:
            return f"cohere encoders add {modality} --from {e['repo']}@{e['sha']}"
        if origin and origin.get("origin") == "path":
            for base in (Path(origin["path"]), Path(origin["path"]).parent.parent):
                cand = base / "encoders" / modality
                if (cand / CONFIG).is_file() and read_config(cand).get("files", {}).get(WEIGHTS) == digest:
                    return f"cohere encoders add {modality} --from {cand}"
        return (f"cohere encoders add {modality} --from ORG/NAME (the {modality} encoder with digest "
                f"{digest[:12]}; not in the registry index)")

    def _check_dependents(self, modality: str, digest: str) -> None:
        users = [e["id"] for e in self.entries("experts") if e["encoders"].get(modality) not in (None, digest)]
        if users:
            raise CohereError(f"installed experts {', '.join(users)} use the current {modality} encoder; a "
                              f"different {modality} encoder would break their latent-space contract: remove them "
                              f"first (cohere experts remove ID)")

    def _check_loads(self, group: str, folder: Path) -> None:
        """Strict load (sha256 of the weights against config.json, tensor names and shapes)."""
        if group == "encoders":
            from .encoders import load_encoder

            load_encoder(folder)
        else:
            from .experts import load_model

            load_model(folder)

    def _entry(self, group: str, art_id: str, config: dict, files: dict, origin: dict) -> dict:
        entry = {"id": art_id, "kind": config["kind"], "folder": f"{group}/{folder_name(group, art_id)}",
                 "files": files, "digest": files[WEIGHTS], "metrics": config.get("metrics", {}),
                 "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **origin}
        if group == "encoders":
            entry |= {"modality": config.get("modality", art_id), "encoder": config.get("encoder"),
                      "encoders": {art_id: files[WEIGHTS]}}
        else:
            entry |= {"sources": list(config.get("sources", [])), "target": config.get("target"),
                      "encoders": dict(sorted(config.get("encoders", {}).items())),
                      "n_train": config.get("n_train")}
        return entry

    def _place(self, group: str, art_id: str, folder: Path, origin: str) -> None:
        """Put the artifact at ``home/group/name``: a copy, or a link into the hub cache."""
        dest = self._inside(self.home / group / folder_name(group, art_id))
        with writing(dest, folder=True) as tmp:
            if origin == "hub":
                tmp.rmdir()
                try:
                    os.symlink(os.path.relpath(folder, dest.parent), tmp, target_is_directory=True)
                except OSError:  # no symlinks (e.g. Windows without developer mode): copy
                    tmp.mkdir()
            if not tmp.is_symlink():
                for n in (CONFIG, WEIGHTS, CARD):
                    shutil.copyfile(folder / n, tmp / n)

    # -- remove

    def remove(self, group: str, spec: str) -> dict:
        """Uninstall; an encoder that installed experts use is refused. Returns the old entry."""
        self.entry(group, spec)  # a bad id or one not installed: refused before anything is written
        with self._changing():
            entry = self.entry(group, spec)
            art_id = entry["id"]
            if group == "encoders":
                users = [e["id"] for e in self.entries("experts") if art_id in e["encoders"]]
                if users:
                    raise CohereError(f"installed experts {', '.join(users)} use the {art_id} encoder; remove them "
                                      f"first (cohere experts remove ID)")
            folder = self._folder_of(entry)
            data = self._read()
            del data[group][art_id]
            self._write(data)
            remove(folder)
            if entry.get("origin") == "hub":
                self._drop_snapshot(entry, data)
        return entry

    def _drop_snapshot(self, entry: dict, data: dict) -> None:
        """Delete the cached revision unless another entry still uses it."""
        still = [e for g in GROUPS for e in data[g].values()
                 if e.get("repo") == entry["repo"] and e.get("sha") == entry["sha"]]
        if still:
            return
        try:
            from huggingface_hub import scan_cache_dir

            cache = scan_cache_dir(self.home / "hub")
            cache.delete_revisions(entry["sha"]).execute()
        except Exception:  # a missing or foreign cache is not worth failing a removal
            pass

    # -- sizes

    def size(self, entry: dict) -> int:
        """Bytes of the installed files (0 for missing ones)."""
        folder = self._folder_of(entry)
        return sum((folder / n).stat().st_size for n in entry["files"] if (folder / n).is_file())


def _package_folder(group: str, entry: dict) -> Path:
    """The folder of a registry entry's artifact inside its installed pip package (found
    through the plugin that the package registers it with)."""
    from . import plugins

    folder, dist = plugins.packaged(group).get(entry["id"], (None, ""))
    if folder is not None and plugins.canonical(dist) == plugins.canonical(entry["package"]):
        return folder
    raise CohereError(f"{entry['id']!r} ships with the package {entry['package']} {entry['version']}, which is not "
                      f"installed (or not loaded: COHERE_LOAD_PLUGINS); install it with 'pip install "
                      f"{entry['package']}=={entry['version']}'")


# ---------------------------------------------------------------- the store as a default plugin


@hookimpl
def register_encoders(register):
    store = Store()
    for e in store.entries("encoders"):
        register(e["id"], store.home / e["folder"])


@hookimpl
def register_experts(register):
    store = Store()
    for e in store.entries("experts"):
        register(e["id"], store.home / e["folder"])
