"""The plugin hooks (pluggy project and entry-point group ``cohere``)."""

import pluggy

hookspec = pluggy.HookspecMarker("cohere")
hookimpl = pluggy.HookimplMarker("cohere")


@hookspec
def register_modalities(register):
    """Register data modalities: call ``register(modality)`` with ``Modality`` instances."""


@hookspec
def register_experts(register):
    """Register loadable experts: call ``register(expert_id, folder)`` for artifact folders."""


@hookspec
def register_commands(app):
    """Add commands or command groups to the Typer ``app`` of the ``cohere`` CLI."""
