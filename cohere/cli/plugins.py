"""``cohere plugins``, and the ``register_commands`` hook that lets plugins add commands."""

from __future__ import annotations

import json

import typer

from .. import plugins as host


def plugins(
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
    all_: bool = typer.Option(False, "--all", help="Include the default plugins (built-ins and the store)."),
):
    """List installed plugins: name, version, hooks (skipped ones with the error).

    COHERE_LOAD_PLUGINS=a,b loads only these distributions (empty: none);
    COHERE_STRICT_PLUGINS=1 makes a plugin that fails to load an error.
    """
    found = [p.to_dict() for p in host.plugin_info(include_default=all_)]
    if json_:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("no plugins installed (pip install a cohere plugin, e.g. plugins/cohere-mirna; --all shows "
                   "the built-in ones)")
        return
    for p in found:
        state = f"  SKIPPED: {p['error']}" if p.get("error") else ""
        typer.echo(f"{p['name']} {p['version']}  {', '.join(p['hooks']) or '-'}{state}")


def register(app: typer.Typer) -> None:
    """Add ``cohere plugins``, then let every plugin add its own commands."""
    app.command("plugins")(plugins)
    host.register_commands(app)
