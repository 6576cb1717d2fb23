"""The plugin host: built-ins, the store and installed plugins, through the same hooks.

Default plugins (always loaded): the built-in modalities and the store of installed
encoders and experts. Installed plugins are the ``cohere`` entry points, filtered by
``COHERE_LOAD_PLUGINS`` (read when plugins load, not at import): unset = every installed
plugin, empty = none, ``a,b`` = only these distributions. A plugin that fails to load, or
whose hook raises, is skipped with a one-line warning naming it; ``COHERE_STRICT_PLUGINS=1``
makes that fatal. Two plugins registering one id is an error naming both. Registered items
are sorted by id, so results never depend on load order.

    plugins.modalities()     {name: Modality}
    plugins.encoders()       {modality: artifact folder}
    plugins.experts("cna")   {model id: artifact folder}, experts and multi models for cna
    plugins.plugin_info()    [PluginInfo(name, version, hooks, ...)]
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import pluggy

from . import __version__, hookspecs, ids
from .errors import CohereError

DEFAULT_PLUGINS = ("cohere.modalities.builtin", "cohere.store")
HOOKS = ("register_modalities", "register_encoders", "register_experts", "register_commands")


@dataclass
class PluginInfo:
    """One loaded (or skipped) plugin, as ``cohere plugins`` shows it."""

    name: str  # distribution name (installed plugins) or module name (default plugins)
    version: str
    hooks: list[str] = field(default_factory=list)
    default: bool = False
    entry_point: str = ""  # "name = module" of an installed plugin
    error: str = ""  # why it was skipped

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in ("", None) or k in ("name", "version", "hooks")}


_plugins: dict[str, PluginInfo] = {}  # pluggy name -> info, filled by plugin_manager()
_warned: set[str] = set()  # each warning once per load


def _strict() -> bool:
    return os.environ.get("COHERE_STRICT_PLUGINS", "") not in ("", "0")


def _canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _broken(info: PluginInfo, what: str, e: BaseException) -> None:
    """Skip a broken plugin with a one-line warning, or fail in strict mode."""
    msg = f"plugin {info.name!r} ({info.entry_point or info.name}) {what}: {_one_line(e)}"
    if _strict():
        raise CohereError(f"{msg}; fix or uninstall it, disable it with COHERE_LOAD_PLUGINS, or unset "
                          "COHERE_STRICT_PLUGINS to skip it") from e
    info.error = info.error or f"{what}: {_one_line(e)}"
    if msg in _warned:
        return
    _warned.add(msg)
    print(f"warning: skipping {msg} (COHERE_STRICT_PLUGINS=1 makes this an error)", file=sys.stderr)


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    """Load the default plugins and the allowed installed ones (once; ``reset()`` forgets)."""
    pm = pluggy.PluginManager("cohere")
    pm.add_hookspecs(hookspecs)
    _plugins.clear()
    _warned.clear()
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
        _plugins[name] = PluginInfo(name, __version__, default=True)
    wanted = os.environ.get("COHERE_LOAD_PLUGINS")
    allow = None if wanted is None else {_canonical(w.strip()) for w in wanted.split(",") if w.strip()}
    eps = sorted(importlib.metadata.entry_points(group="cohere"),
                 key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))
    for ep in eps:
        dist = ep.dist.name if ep.dist else ep.name
        if allow is not None and _canonical(dist) not in allow:
            continue
        info = PluginInfo(dist, ep.dist.version if ep.dist else "", entry_point=f"{ep.name} = {ep.value}")
        key = ep.name if ep.name not in _plugins else f"{dist}:{ep.name}"
        _plugins[key] = info
        try:
            plugin = ep.load()
            pm.register(plugin, name=key)
            try:
                pm.check_pending()  # a hook that does not exist (e.g. a typo) or a bad signature
            except Exception:
                pm.unregister(name=key)
                raise
        except Exception as e:  # one broken plugin must not brick the CLI
            _broken(info, "failed to load", e)
    for key, info in _plugins.items():
        plugin = pm.get_plugin(key)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return pm


def reset() -> None:
    """Forget loaded plugins and registrations (tests; after changing the environment)."""
    plugin_manager.cache_clear()
    modalities.cache_clear()
    _plugins.clear()
    _warned.clear()


def plugin_info(include_default: bool = False) -> list[PluginInfo]:
    """Loaded and skipped plugins, sorted by name (default plugins only if asked)."""
    plugin_manager()
    found = [i for i in _plugins.values() if include_default or not i.default]
    return sorted(found, key=lambda i: (not i.default, i.name, i.entry_point))


def register_commands(app) -> None:
    """Let every plugin add commands to ``app``; a plugin whose hook raises is skipped."""
    pm = plugin_manager()
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(**{a: app for a in impl.argnames})
        except Exception as e:
            _broken(_plugins.get(impl.plugin_name, PluginInfo(impl.plugin_name, "")), "failed in register_commands", e)


# ---------------------------------------------------------------- registrations


def _collect(hook: str, what: str, check) -> dict:
    """Call a ``register_*`` hook plugin by plugin; return {id: (value, plugin name)} sorted.

    ``check(args, plugin)`` validates one ``register(*args)`` call and returns (id, value).
    A plugin whose hook raises is skipped (none of its items are kept); an id registered
    twice is an error naming both plugins.
    """
    pm = plugin_manager()
    registered: list[tuple[str, object, str]] = []
    for impl in sorted(getattr(pm.hook, hook).get_hookimpls(), key=lambda i: i.plugin_name):
        plugin = impl.plugin_name
        calls: list[tuple] = []

        def register(*args, _calls=calls):
            _calls.append(args)

        try:
            impl.function(**{a: register for a in impl.argnames})
            registered += [(*check(args, plugin), plugin) for args in calls]
        except Exception as e:
            _broken(_plugins.get(plugin, PluginInfo(plugin, "")), f"failed in {hook}", e)
    found: dict = {}
    for key, value, plugin in sorted(registered, key=lambda r: (r[0], r[2])):
        if key in found:
            other = found[key][1]
            who = f"by {other!r} and by {plugin!r}" if other != plugin else f"twice by {plugin!r}"
            raise CohereError(f"{what} {key!r} is registered {who}; uninstall or disable one of them "
                              "(COHERE_LOAD_PLUGINS=name,... loads only the named plugins)")
        found[key] = (value, plugin)
    return {k: found[k] for k in sorted(found)}


def _check_modality(args, plugin):
    from .modalities import Modality

    if len(args) != 1 or not isinstance(args[0], Modality):
        raise TypeError(f"register() expects one Modality instance, got {args!r}")
    m = args[0]
    ids.modality(m.name, "registered modality")
    if not m.input_forms:
        raise ValueError(f"modality {m.name!r} declares no input_forms")
    if m.encoder not in ("autoencoder", "pca") or m.imputer not in ("knn", "median"):
        raise ValueError(f"modality {m.name!r}: encoder must be autoencoder|pca and imputer knn|median")
    return m.name, m


def _check_folder(args, what):
    if len(args) != 2 or not isinstance(args[1], (str, os.PathLike)):
        raise TypeError(f"register() expects ({what}, folder), got {args!r}")
    return Path(args[1])


def _check_encoder(args, plugin):
    folder = _check_folder(args, "modality")
    return ids.modality(args[0], "registered encoder"), folder


def _check_expert(args, plugin):
    folder = _check_folder(args, "model id")
    return ids.model_id(args[0], "registered model id"), folder


@lru_cache(maxsize=1)
def modalities() -> dict:
    """Registered modalities by name, sorted."""
    return {k: v for k, (v, _) in _collect("register_modalities", "modality", _check_modality).items()}


def modality_names() -> list[str]:
    return list(modalities())


def get_modality(name: str):
    found = modalities()
    if name not in found:
        raise CohereError(f"unknown modality {name!r}; known modalities: {', '.join(found)} "
                          "(install a plugin that provides it; 'cohere plugins' lists them)")
    return found[name]


def encoders() -> dict[str, Path]:
    """Registered encoder folders by modality (the store's and plugins'), sorted.

    Not cached: the store changes with ``cohere encoders add/remove``.
    """
    return {k: v for k, (v, _) in _collect("register_encoders", "encoder", _check_encoder).items()}


def experts(target: str | None = None) -> dict[str, Path]:
    """Registered expert and multi-condition folders by id, sorted; only ``target``'s if given."""
    found = _collect("register_experts", "expert", _check_expert)
    return {k: v for k, (v, _) in found.items() if target is None or k.split("->")[1] == target}


def owners(hook: str) -> dict[str, str]:
    """{id: plugin name} for one ``register_*`` hook (which plugin provides what)."""
    checks = {"register_modalities": ("modality", _check_modality),
              "register_encoders": ("encoder", _check_encoder),
              "register_experts": ("expert", _check_expert)}
    what, check = checks[hook]
    return {k: p for k, (_, p) in _collect(hook, what, check).items()}
