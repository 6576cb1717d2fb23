"""The plugin hooks (pluggy project and entry-point group ``cohere``).

A plugin is a module with ``@hookimpl`` functions, installed with an entry point::

    [project.entry-points.cohere]
    mirna = "cohere_mirna"

Hooks receive a ``register`` callback (or the CLI app); the host validates what is
registered, sorts it by id, and refuses an id registered by two plugins. Hooks must be
cheap and must not touch the network.
"""

import pluggy

hookspec = pluggy.HookspecMarker("cohere")
hookimpl = pluggy.HookimplMarker("cohere")


@hookspec
def register_modalities(register):
    """Register data modalities: call ``register(modality)`` with ``Modality`` instances."""


@hookspec
def register_encoders(register):
    """Register encoder artifact folders: call ``register(modality, folder)``."""


@hookspec
def register_experts(register):
    """Register expert or multi-condition artifact folders: ``register(model_id, folder)``."""


@hookspec
def register_commands(app):
    """Add commands or command groups to the Typer ``app`` of the ``cohere`` CLI."""
