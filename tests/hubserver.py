"""A small Hub-compatible HTTP server for tests: the real huggingface_hub client talks to it.

It implements the part of the Hub API that huggingface_hub (2.x) calls to create a repo,
upload files ("regular" uploads only: base64 in the NDJSON commit, never LFS or Xet), read
model info, list the tree and the refs, tag a commit, and resolve files (HEAD and GET with
ETag, X-Repo-Commit and Content-Length). State is in memory; each commit is a full
snapshot of the repo's files.

    with FakeHub(token="hf_test") as server:
        os.environ["HF_ENDPOINT"] = server.url
        HfApi(endpoint=server.url, token="hf_test").create_repo("lab/model")

Routes (the client's, see huggingface_hub/hf_api.py, _commit_api.py and file_download.py):

    POST /api/repos/create                         {name, organization, type}
    POST /api/validate-yaml                        {content, repoType}
    GET  /api/models/{repo}[/revision/{rev}]       model_info (sha, siblings, tags, cardData)
    POST /api/models/{repo}/preupload/{rev}        -> uploadMode "regular"
    POST /api/models/{repo}/commit/{rev}           NDJSON: header, file (base64), deletedFile
    GET  /api/models/{repo}/tree/{rev}[/{path}]    list_repo_tree / list_repo_files
    GET  /api/models/{repo}/refs                   list_repo_refs
    POST /api/models/{repo}/tag/{rev}              create_tag {tag, message}
    HEAD|GET /{repo}/resolve/{rev}/{path}          hf_hub_download
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_oid(data: bytes) -> str:
    """What git (and the Hub, as the ETag of a regular file) calls this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    summary: str
    date: float


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(oid) if oid else None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class FakeHub:
    """The server and its state. ``token``: required for writes when set."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.lock = threading.Lock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self, port: int = 0) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- state changes (also usable directly by tests, e.g. to rewrite history)

    def _new_oid(self, parent: str | None, files: dict[str, bytes], summary: str) -> str:
        self._counter += 1
        tree = {p: git_blob_oid(d) for p, d in sorted(files.items())}
        raw = json.dumps([parent, tree, summary, self._counter]).encode()
        return hashlib.sha1(raw).hexdigest()

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_id, private)
        files = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
        oid = self._new_oid(None, files, "initial commit")
        repo.commits[oid] = Commit(oid, None, files, "initial commit", time.time())
        repo.branches["main"] = oid
        self.repos[repo_id] = repo
        return repo

    def commit(self, repo_id: str, branch: str, changes: dict[str, bytes | None], summary: str,
               parent: str | None = None) -> Commit:
        repo = self.repos[repo_id]
        head = repo.branches.get(branch)
        if head is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        if parent is not None and not head.startswith(parent):
            raise HubError(412, f"A commit has happened since {parent}. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for path, data in changes.items():
            if data is None:
                if path not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            else:
                files[path] = data
        oid = self._new_oid(head, files, summary)
        repo.commits[oid] = Commit(oid, head, files, summary, time.time())
        repo.branches[branch] = oid
        return repo.commits[oid]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _card_data(files: dict[str, bytes]) -> dict | None:
    import yaml

    text = files.get("README.md", b"").decode("utf-8", "replace")
    m = re.match(r"^---\n(.*?\n)---\n", text, flags=re.S)
    if not m:
        return None
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: FakeHub

    def log_message(self, fmt, *args):  # quiet
        pass

    # -- plumbing

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, e: HubError, head: bool = False) -> None:
        headers = {"X-Error-Message": e.message, **e.headers}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._send(e.status, b"" if head else json.dumps({"error": e.message}).encode(), headers, head=head)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip

            data = gzip.decompress(data)
        return data

    def _auth(self) -> None:
        token = self.server_hub.token
        if token is None:
            return
        if self.headers.get("Authorization") != f"Bearer {token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, head_rev: str | None = None) -> Repo:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None or (repo.private and self.headers.get("Authorization") != f"Bearer {self.server_hub.token}"):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        c = repo.resolve(rev)
        if c is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return c

    def _route(self, method: str) -> None:
        hub = self.server_hub
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        with hub.lock:
            hub.requests.append((method, path))
        routes = [
            ("POST", r"^/api/repos/create$", self.create_repo),
            ("POST", r"^/api/validate-yaml$", self.validate_yaml),
            ("GET", r"^/api/whoami-v2$", self.whoami),
            ("GET", rf"^/api/models/{REPO}$", self.model_info),
            ("GET", rf"^/api/models/{REPO}/revision/(?P<rev>[^/]+)$", self.model_info),
            ("POST", rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$", self.preupload),
            ("POST", rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$", self.commit),
            ("GET", rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?$", self.tree),
            ("GET", rf"^/api/models/{REPO}/refs$", self.refs),
            ("POST", rf"^/api/models/{REPO}/tag/(?P<rev>[^/]+)$", self.tag),
            ("GET", rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", self.resolve),
            ("HEAD", rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", self.resolve),
        ]
        for verb, pattern, fn in routes:
            m = re.match(pattern, path)
            if verb == method and m:
                args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                try:
                    with hub.lock:
                        fn(query=query, head=method == "HEAD", **args)
                except HubError as e:
                    self._error(e, head=method == "HEAD")
                return
        self._error(HubError(404, f"no route for {method} {path} in the test Hub"), head=method == "HEAD")

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    # -- endpoints

    def whoami(self, **_):
        self._auth()
        self._json(200, {"type": "user", "name": "test", "orgs": []})

    def create_repo(self, **_):
        self._auth()
        body = json.loads(self._body() or b"{}")
        if body.get("type", "model") != "model":
            raise HubError(400, "this test Hub only hosts model repos")
        name, org = body.get("name"), body.get("organization") or "test"
        repo_id = f"{org}/{name}"
        url = f"{self._base()}/{repo_id}"
        if repo_id in self.server_hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        self.server_hub.create_repo(repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, **_):
        body = json.loads(self._body() or b"{}")
        content = body.get("content", "")
        m = re.match(r"^---\n(.*?\n)---\n", content, flags=re.S)
        if m:
            import yaml

            try:
                yaml.safe_load(m.group(1))
            except yaml.YAMLError as e:
                return self._json(400, {"errors": [{"message": str(e).splitlines()[0]}]})
        self._json(200, {"errors": [], "warnings": []})

    def model_info(self, repo, rev="main", query=None, **_):
        r = self._repo(repo)
        c = self._commit(r, rev)
        card = _card_data(c.files) or {}
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p in sorted(c.files):
            s = {"rfilename": p}
            if blobs:
                s |= {"size": len(c.files[p]), "blobId": git_blob_oid(c.files[p])}
            siblings.append(s)
        tags = list(card.get("tags") or [])
        self._json(200, {
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
            "author": repo.split("/")[0], "sha": c.oid, "private": r.private, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "library_name": card.get("library_name"), "tags": tags,
            "lastModified": _iso(c.date), "createdAt": _iso(r.created), "siblings": siblings,
            "cardData": card or None,
        })

    def preupload(self, repo, rev, **_):
        self._auth()
        r = self._repo(repo)
        c = self._commit(r, rev)
        body = json.loads(self._body() or b"{}")
        files = []
        for f in body.get("files", []):
            old = c.files.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_oid(old) if old is not None else None})
        self._json(200, {"files": files, "commitOid": c.oid})

    def commit(self, repo, rev, **_):
        self._auth()
        self._repo(repo)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x.get("key") == "header"), None)
        if header is None:
            raise HubError(400, "the commit payload has no header line")
        changes: dict[str, bytes | None] = {}
        for item in lines:
            key, value = item.get("key"), item.get("value", {})
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')}")
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
            elif key == "lfsFile":
                raise HubError(400, "this test Hub answered uploadMode 'regular': LFS files are not expected")
            elif key != "header":
                raise HubError(400, f"unsupported commit operation {key!r}")
        c = self.server_hub.commit(repo, rev, changes, header.get("summary", ""), header.get("parentCommit"))
        self._json(200, {"success": True, "commitOid": c.oid, "commitUrl": f"{self._base()}/{repo}/commit/{c.oid}",
                         "hookOutput": "", "pullRequestUrl": None})

    def tree(self, repo, rev, sub=None, query=None, **_):
        r = self._repo(repo)
        c = self._commit(r, rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = (sub.strip("/") + "/") if sub else ""
        out, dirs = [], set()
        for p in sorted(c.files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(len(parts)):
                    dirs.add(prefix + "/".join(parts[: i + 1]))
            out.append({"type": "file", "oid": git_blob_oid(c.files[p]), "size": len(c.files[p]), "path": p})
        if sub and not out and not dirs:
            raise HubError(404, f"{sub} does not exist at {rev}", "EntryNotFound", {"X-Repo-Commit": c.oid})
        folders = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                   for d in sorted(dirs)]
        self._json(200, folders + out)

    def refs(self, repo, **_):
        r = self._repo(repo)

        def ref(kind, name, oid):
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}

        self._json(200, {"branches": [ref("heads", n, o) for n, o in sorted(r.branches.items())],
                         "converts": [], "tags": [ref("tags", n, o) for n, o in sorted(r.tags.items())],
                         "pullRequests": []})

    def tag(self, repo, rev, **_):
        self._auth()
        r = self._repo(repo)
        c = self._commit(r, rev)
        body = json.loads(self._body() or b"{}")
        name = body.get("tag")
        if not name:
            raise HubError(400, "missing tag name")
        if name in r.tags or name in r.branches:
            raise HubError(409, "Tag reference exists already")
        r.tags[name] = c.oid
        self._json(200, {})

    def resolve(self, repo, rev, file, head=False, **_):
        try:
            r = self._repo(repo)
            c = self._commit(r, rev)
        except HubError as e:
            return self._error(e, head=head)
        if file not in c.files:
            return self._error(HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": c.oid}), head=head)
        data = c.files[file]
        headers = {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": c.oid, "Accept-Ranges": "bytes"}
        status, body = 200, data
        rng = self.headers.get("Range")
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng or "")
        if m and not head:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            body = data[start:end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, headers, head=head, content_type="application/octet-stream")

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


# ---------------------------------------------------------------- small artifacts to publish


def make_models(models, seed: int = 0, n: int = 120) -> dict:
    """A tiny models folder: PCA encoders for cna and rppa, experts rppa->cna and cna->rppa.

    Synthetic tables with shared structure; a different ``seed`` gives encoders with other
    digests (another latent space). Returns {"encoders": {m: digest}, "experts": {id: digest}}.
    """
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from cohere.diffusion.train import TrainConfig
    from cohere.encoders import load_encoder, make_encoder
    from cohere.experts import Expert, model_dir
    from cohere.plugins import get_modality

    models = Path(models)
    rng = np.random.default_rng(seed)
    ids = [f"P{i:04d}" for i in range(n)]
    shared = rng.normal(size=(n, 4))
    tables = {}
    for m in ("cna", "rppa"):
        X = shared @ rng.normal(size=(4, 40)) * 0.3 + 0.1 * rng.normal(size=(n, 40))
        tables[m] = pd.DataFrame(X, index=ids, columns=[f"{m}_{j}" for j in range(40)])
    out = {"encoders": {}, "experts": {}}
    encoders = {}
    for m, table in tables.items():
        enc = make_encoder(get_modality(m), None, "pca", seed=seed).fit(table)
        training = {"cohort": "synthetic", "n_train": n, "seed": seed,
                    "description": f"{n} synthetic samples (test fixture)."}
        out["encoders"][m] = enc.save(models / "encoders" / m, {"train_r2": 0.9}, training)
        encoders[m] = load_encoder(models / "encoders" / m)
    latents = {m: encoders[m].encode(t) for m, t in tables.items()}
    config = TrainConfig(hidden=16, layers=1, time_dim=8, cond_emb_dim=4, steps=30, batch_size=32,
                         eval_every=15, val_steps=4, seed=seed)
    for s, t in (("rppa", "cna"), ("cna", "rppa")):
        ex = Expert.fit(s, t, latents[s], latents[t], encoders, config,
                        training={"cohort": "synthetic", "description": "test fixture"})
        out["experts"][ex.id] = ex.save(model_dir(models, ex.id))
    return out


def sealed_copy(src, dest, change):
    """A consistent artifact (config sealed in its weights) with ``change(config)`` applied,
    as a hostile publisher could make it without cohere's own checks of ids."""
    from pathlib import Path

    from cohere import artifacts

    src = Path(src)
    art = artifacts.load_artifact(src)
    config = json.loads(json.dumps(art.config))
    change(config)
    check, artifacts._check_ids = artifacts._check_ids, lambda path, config: None
    try:
        artifacts.save_artifact(dest, config, art.tensors, (src / "README.md").read_text())
    finally:
        artifacts._check_ids = check
    return Path(dest)


if __name__ == "__main__":  # python tests/hubserver.py [--port N] [--token T]: a local Hub for demos
    import argparse

    ap = argparse.ArgumentParser(description="Serve an in-memory Hub-compatible API on 127.0.0.1.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default=None, help="require this token for writes")
    a = ap.parse_args()
    server = FakeHub(token=a.token).start(a.port)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()

