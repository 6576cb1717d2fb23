"""The registry of data modalities that the lower layers read and the plugin host fills.

``cohort.py`` and ``encoders.py`` look modalities up here, never in the plugin host
(``cohere.plugins``, a higher layer). The host collects every plugin's
``register_modalities`` hook; the package root (``cohere/__init__.py``) installs it as the
registry's loader, called on the first lookup, so the layers below never import it.

    registry.names()          ["cna", "rnaseq", ...], sorted
    registry.get("cna")       the Modality, or a CohereError listing the known ones
"""

from __future__ import annotations

from typing import Callable

from ..errors import CohereError

_loader: Callable[[], dict] | None = None


def set_loader(loader: Callable[[], dict]) -> None:
    """Install the function that returns every registered modality, ``{name: Modality}``."""
    global _loader
    _loader = loader


def modalities() -> dict:
    """Registered modalities by name, sorted."""
    if _loader is None:
        raise CohereError("no modality loader is installed; import cohere (the package) first")
    return _loader()


def names() -> list[str]:
    return list(modalities())


def get(name: str):
    """The registered modality ``name``; an unknown name is an error listing the known ones."""
    found = modalities()
    if name not in found:
        raise CohereError(f"unknown modality {name!r}; known modalities: {', '.join(found)} "
                          "(install a plugin that provides it; 'cohere plugins' lists them)")
    return found[name]
