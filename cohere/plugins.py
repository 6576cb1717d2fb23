"""The plugin host: built-ins and installed plugins, registered through the same hooks.

``COHERE_LOAD_PLUGINS`` (read when plugins load, not at import): unset = every installed
plugin, empty = none, ``a,b`` = only these distributions. A plugin that fails to load is
skipped with a one-line warning naming it; ``COHERE_STRICT_PLUGINS=1`` makes that fatal.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from functools import lru_cache

import pluggy

from . import hookspecs
from .errors import CohereError

DEFAULT_PLUGINS = ("cohere.modalities.builtin",)


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("cohere")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    wanted = os.environ.get("COHERE_LOAD_PLUGINS")
    allow = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
    strict = os.environ.get("COHERE_STRICT_PLUGINS") == "1"
    for ep in importlib.metadata.entry_points(group="cohere"):
        dist = ep.dist.name if ep.dist else ep.name
        if allow is not None and dist not in allow:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as e:  # a broken plugin must not brick the CLI
            if strict:
                raise CohereError(f"plugin {dist!r} ({ep.value}) failed to load: {e}") from e
            print(f"warning: skipping plugin {dist!r} ({ep.value}): {type(e).__name__}: {e}",
                  file=sys.stderr)
    return pm


def reset() -> None:
    """Forget loaded plugins and registrations (tests; after changing the environment)."""
    plugin_manager.cache_clear()
    modalities.cache_clear()


def _collect(hook, what: str) -> dict:
    """Call a ``register_*`` hook; an id registered twice is an error naming both plugins."""
    pm = plugin_manager()
    found: dict = {}
    owner: dict = {}
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        def register(item, *args, _plugin=impl.plugin_name):
            key = item.name if what == "modality" else item
            if key in found:
                raise CohereError(f"{what} {key!r} is registered twice: by {owner[key]!r} and by "
                                  f"{_plugin!r}; uninstall or disable one (COHERE_LOAD_PLUGINS)")
            found[key] = item if not args else args[0]
            owner[key] = _plugin
        impl.function(register)
    return {k: found[k] for k in sorted(found)}


@lru_cache(maxsize=1)
def modalities() -> dict:
    """Registered modalities by name, sorted."""
    from .modalities import Modality

    found = _collect("register_modalities", "modality")
    for name, m in found.items():
        if not isinstance(m, Modality) or not name or name != name.lower():
            raise CohereError(f"plugin registered an invalid modality {name!r}: expected a Modality "
                              "instance with a lowercase name")
    return found


def modality_names() -> list[str]:
    return list(modalities())


def get_modality(name: str):
    found = modalities()
    if name not in found:
        raise CohereError(f"unknown modality {name!r}; known modalities: {', '.join(found)} "
                          "(install a plugin that provides it)")
    return found[name]
