"""``cohere encoders|experts add/list/info/remove/push``: the store and Hub publishing.

Added to the existing ``encoders`` and ``experts`` groups by ``register(app)``. ``list``
shows the store (``$COHERE_HOME``) or, with ``--models DIR``, a models folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import hub, plugins
from ..errors import CohereError
from ..store import Store, normalize_id
from .common import QUALITY, quality, quality_line

SINGULAR = {"encoders": "encoder", "experts": "expert"}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _origin(e: dict) -> str:
    if e.get("origin") == "hub":
        return f"{e['repo']}@{e['sha'][:12]}"
    return e.get("path", "")


def _row(group: str, e: dict, store: Store) -> dict:
    """One store entry as ``list --json`` shows it."""
    m = e.get("metrics", {})
    row = {"id": e["id"], "kind": e["kind"]}
    if group == "encoders":
        row |= {"modality": e.get("modality", e["id"]), "encoder": e.get("encoder"), "digest": e["digest"]}
    else:
        row |= {"source": e["sources"][0] if e["kind"] == "expert" else None, "sources": e["sources"],
                "target": e["target"], "encoders": e["encoders"], "digest": e["digest"]}
    row |= {"origin": e.get("origin"), "repo": e.get("repo"), "revision": e.get("revision"), "sha": e.get("sha"),
            "path": e.get("path"), "val_loss": m.get("val_loss"), "val_r2": m.get("val_r2"),
            "held_out": m.get("held_out"),
            "size": store.size(e), "folder": str(store.home / e["folder"]), "installed_at": e.get("installed_at")}
    return row


def _plugin_rows(group: str, listed: set) -> list[dict]:
    """Rows for the artifacts that installed plugin packages register (e.g. cohere-tcga-pancan),
    beside the store's; one the store also holds (same id and digest) is listed once."""
    from .. import plugins
    from ..artifacts import read_config

    rows = []
    for art_id, (folder, dist) in plugins.packaged(group).items():
        c = read_config(folder)
        digest = c.get("files", {}).get("model.safetensors")
        if (art_id, digest) in listed:
            continue
        m = c.get("metrics", {})
        row = {"id": art_id, "kind": c.get("kind"), "digest": digest}
        if group == "encoders":
            row |= {"modality": c.get("modality"), "encoder": c.get("encoder")}
        else:
            row |= {"source": c["sources"][0] if c.get("kind") == "expert" else None, "sources": c.get("sources"),
                    "target": c.get("target"), "encoders": c.get("encoders", {})}
        row |= {"origin": "package", "package": dist, "repo": None, "revision": None,
                "sha": None, "path": str(folder), "val_loss": m.get("val_loss"), "val_r2": m.get("val_r2"),
                "held_out": m.get("held_out"),
                "size": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()), "folder": str(folder),
                "installed_at": None}
        rows.append(row)
    return rows


def make_commands(group: str, folder_list=None) -> dict:
    """The callbacks for one group; ``folder_list`` is the group's own models-folder list."""
    one = SINGULAR[group]
    what = "MODALITY" if group == "encoders" else "ID"
    example = "rnaseq" if group == "encoders" else "'rnaseq->cna'"

    def add(
        spec: str = typer.Argument(..., metavar=what, help=f"The {one} to install, e.g. {example}."),
        from_: Optional[str] = typer.Option(None, "--from", help="ORG/NAME[@REVISION] on the Hub, or a folder "
                                            "(an artifact folder or a models folder). Default: the registry index."),
        force: bool = typer.Option(False, "--force", help="Replace an installed version; re-download."),
        endpoint: Optional[str] = typer.Option(None, help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)."),
    ):
        store = Store()
        art_id = normalize_id(group, spec)
        before = store.get(group, art_id)
        e = store.add(group, art_id, from_, force=force, endpoint=endpoint)
        if before is not None and before["files"] == e["files"] and not force:
            typer.echo(f"{one} {e['id']} is already installed ({_origin(e)}, digest {e['digest'][:12]})")
            return
        rev = f" (revision {e['revision']})" if e.get("origin") == "hub" and e.get("revision") not in (None, e.get("sha")) else ""
        metric = (" ".join(f"{k}={v}" for k, v in e["metrics"].items() if k == "val_r2") if group == "encoders"
                  else quality_line(e["metrics"]))
        typer.echo(f"installed {e['kind']} {e['id']} from {_origin(e)}{rev} into {store.home / e['folder']}  "
                   f"digest {e['digest'][:12]}  {metric}".rstrip())

    add.__doc__ = f"""Install {'an encoder' if group == 'encoders' else 'an expert'} into the store ($COHERE_HOME).

    A Hub revision is resolved to a commit sha once and the files are downloaded at that
    sha; their sha256 are recorded and checked on every later use (offline afterwards).
    {'An expert needs the encoders it was trained on installed first.' if group == 'experts' else ''}

    Examples:
      cohere {group} add {example} --from my-lab/cohere-{one}@v1
      cohere {group} add {example} --from models/
      cohere {group} add {example}            (resolved through the registry index)
    """

    def list_(
        json_: bool = typer.Option(False, "--json", help="Print JSON."),
        models: Optional[Path] = typer.Option(None, help="List a models folder instead of the store."),
    ):
        if models is not None:
            return _folder_list(group, models, json_, folder_list)
        store = Store()
        rows = [_row(group, e, store) for e in store.entries(group)]
        rows += _plugin_rows(group, {(r["id"], r["digest"]) for r in rows})
        rows.sort(key=lambda r: r["id"])
        if json_:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo(f"no {group} installed in {store.home}; install one with 'cohere {group} add {what} "
                       f"--from ORG/NAME' (or --from a models folder), or list a models folder (e.g. the "
                       f"demo's cohere-demo/models) with 'cohere {group} list --models DIR'")
            return
        for r in rows:
            r["origin"] = (r["repo"] + "@" + r["sha"][:12] if r["origin"] == "hub" else
                           f"package {r['package']}" if r["origin"] == "package" else r["path"])
            r["size"] = _size(r["size"])
            r["digest"] = r["digest"][:12]
            if group == "experts":
                r["encoders"] = ",".join(f"{m}:{d[:8]}" for m, d in r["encoders"].items())
                r["source"] = r["source"] or "+".join(r["sources"])
                r |= quality(r["held_out"])
            r["val_r2"] = "" if r["val_r2"] is None else f"{r['val_r2']:.4f}"
        cols = (["id", "encoder", "digest", "val_r2", "size", "origin"] if group == "encoders" else
                ["id", "source", "target", "encoders", *QUALITY.values(), "size", "origin"])
        typer.echo(_table(rows, cols))

    list_.__doc__ = f"""List the installed {group} (or those of a models folder with --models)."""

    def info(
        spec: str = typer.Argument(..., metavar=what, help=f"An installed {one}, e.g. {example}."),
        json_: bool = typer.Option(False, "--json", help="Print JSON."),
    ):
        store = Store()
        e = store.entry(group, spec)
        store.folder(group, e["id"])  # verifies every file
        row = _row(group, e, store) | {"files": e["files"], "metrics": e["metrics"], "verified": True}
        if group == "experts":
            row["n_train"] = e.get("n_train")
        if json_:
            typer.echo(json.dumps(row, indent=2))
            return
        for k, v in row.items():
            if v in (None, "", {}, []):
                continue
            if isinstance(v, dict):
                typer.echo(f"{k}:")
                for kk, vv in v.items():
                    typer.echo(f"  {kk}: {vv}")
            elif isinstance(v, list):
                typer.echo(f"{k}: {', '.join(map(str, v))}")
            else:
                typer.echo(f"{k}: {_size(v) if k == 'size' else v}")

    info.__doc__ = f"""Show an installed {one}: origin, pinned sha, digests, metrics; re-hashes its files."""

    def remove(spec: str = typer.Argument(..., metavar=what, help=f"An installed {one}, e.g. {example}.")):
        e = Store().remove(group, spec)
        typer.echo(f"removed {e['kind']} {e['id']} ({_origin(e)})")

    remove.__doc__ = f"""Uninstall {'an encoder (refused while installed experts use it)' if group == 'encoders' else 'an expert'}."""

    def push(
        spec: str = typer.Argument(..., metavar=what, help=f"The {one} to publish, e.g. {example}."),
        repo: str = typer.Option(..., help="Hub model repository ORG/NAME (created if needed)."),
        models: Optional[Path] = typer.Option(None, help="Publish from this models folder (default: the store)."),
        endpoint: Optional[str] = typer.Option(None, help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)."),
        tag: Optional[str] = typer.Option(None, help=f"Tag for the pushed commit (default: {one}-<digest[:12]>)."),
        private: bool = typer.Option(False, "--private", help="Create the repository as private."),
        dataset: Optional[str] = typer.Option(None, help="Training dataset for the card (default: the training cohort)."),
        license_: Optional[str] = typer.Option(None, "--license", help="License for the card (default: the card's)."),
    ):
        art_id = normalize_id(group, spec)
        if models is not None:
            from ..store import folder_name

            folder = models / group / folder_name(group, art_id)
            if not (folder / "config.json").is_file():
                raise CohereError(f"{folder}: no {one} {art_id!r} in the models folder {models}; train it first or "
                                  "leave out --models to push from the store")
        elif Store().get(group, art_id) is None and art_id in plugins.packaged(group):
            folder = plugins.packaged(group)[art_id][0]   # shipped by a plugin package (e.g. cohere-tcga-pancan)
        else:
            folder = Store().folder(group, art_id)
        entry = hub.push(folder, repo, endpoint=endpoint, tag=tag, private=private, dataset=dataset,
                         license=license_, log=lambda msg: typer.echo(msg, err=True))
        typer.echo("registry entry (add it to registry/index.json, see registry/README.md):", err=True)
        typer.echo(json.dumps(entry, indent=2))

    push.__doc__ = f"""Publish {'an encoder' if group == 'encoders' else 'an expert'} to the Hub and print its registry entry.

    Uploads config.json, model.safetensors and the model card in one commit, tags it, and
    prints the JSON entry for registry/index.json. Token: $HF_TOKEN.

    Example: cohere {group} push {example} --models models/ --repo my-lab/cohere-{one}-{'rnaseq' if group == 'encoders' else 'rnaseq-to-cna'}
    """
    return {"add": add, "list": list_, "info": info, "remove": remove, "push": push}


def _folder_list(group: str, models: Path, json_: bool, folder_list) -> None:
    if folder_list is not None:  # the group's own listing of a models folder
        return folder_list(models=models, json_=json_)
    from ..artifacts import read_config

    rows = []
    for folder in sorted((models / group).glob("*")):
        if (folder / "config.json").is_file():
            c = read_config(folder)
            rows.append({"id": c.get("id"), "kind": c.get("kind"), "encoder": c.get("encoder"),
                         "digest": c.get("files", {}).get("model.safetensors"),
                         "val_r2": c.get("metrics", {}).get("val_r2"), "folder": str(folder)})
    if json_:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo(f"no {group} in {models / group}")
    else:
        for r in rows:
            r["digest"] = (r["digest"] or "")[:12]
        typer.echo(_table(rows, ["id", "kind", "encoder", "digest", "val_r2", "folder"]))


def _group(app: typer.Typer, name: str) -> typer.Typer:
    for info in app.registered_groups:
        if info.name == name:
            return info.typer_instance
    group = typer.Typer(help=f"Install, list and publish {name}.", no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


def register(app: typer.Typer) -> None:
    """Add add/list/info/remove/push to the ``encoders`` and ``experts`` groups."""
    for name in ("encoders", "experts"):
        group = _group(app, name)
        own = [c for c in group.registered_commands if (c.name or c.callback.__name__) in ("list", "list_")]
        for c in own:
            group.registered_commands.remove(c)
        commands = make_commands(name, own[0].callback if own else None)
        for verb, fn in commands.items():
            group.command(verb)(fn)
