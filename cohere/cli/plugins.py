"""``cohere plugins``, and the ``register_commands`` hook that lets plugins add commands."""

from __future__ import annotations

import json

import typer

from .. import plugins as host


def plugins(json_: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the plugins: the built-in ones (modalities, the store) and the installed ones,
    with version and hooks (skipped ones with the error).

    COHERE_LOAD_PLUGINS=a,b loads only these installed distributions (empty: none);
    COHERE_STRICT_PLUGINS=1 makes a plugin that fails to load an error.
    """
    found = [p.to_dict() for p in host.plugin_info()]
    if json_:
        typer.echo(json.dumps(found, indent=2))
        return
    for p in found:
        state = "  (built-in)" if p["builtin"] else f"  SKIPPED: {p['error']}" if p.get("error") else ""
        typer.echo(f"{p['name']} {p['version']}  {', '.join(p['hooks']) or '-'}{state}")
    if not any(not p["builtin"] for p in found):
        typer.echo("no installed plugins (pip install a cohere plugin, e.g. plugins/cohere-mirna)")


def register(app: typer.Typer) -> None:
    """Add ``cohere plugins``, then let every plugin add its own commands."""
    app.command("plugins")(plugins)
    host.register_commands(app)
