"""The plugin host: built-ins, the store and installed plugins, through the same hooks.

Default plugins (always loaded): the built-in modalities and the store of installed
encoders and experts. Installed plugins are the ``cohere`` entry points, filtered by
``COHERE_LOAD_PLUGINS`` (read when plugins load, not at import): unset = every installed
plugin, empty = none, ``a,b`` = only these distributions. A plugin that fails to load, or
whose hook raises, is skipped with a one-line warning naming it; ``COHERE_STRICT_PLUGINS=1``
makes that fatal. "Fails" means any exception, ``SystemExit`` included (a plugin's
``sys.exit()`` must not end the host); only Ctrl-C and SIGTERM go through. A plugin's
stdout (at import and in its hooks) goes to stderr, so it cannot corrupt ``--json`` output.
A ``COHERE_LOAD_PLUGINS`` name that matches no installed distribution is warned about. Two
plugins registering one id is an error naming both. Registered items are sorted by id, so
results never depend on load order. The modalities fill ``cohere.modalities.registry``,
where the lower layers (cohort, encoders) look them up.

    plugins.modalities()     {name: Modality}
    plugins.encoders()       {modality: artifact folder}
    plugins.experts("cna")   {model id: artifact folder}, experts and multi models for cna
    plugins.plugin_info()    [PluginInfo(name, version, hooks, ...)]
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import pluggy

from . import __version__, hookspecs, ids
from .errors import CohereError, Interrupted
from .modalities import registry

DEFAULT_PLUGINS = ("cohere.modalities.builtin", "cohere.store")
HOOKS = ("register_modalities", "register_encoders", "register_experts", "register_commands")


@dataclass
class PluginInfo:
    """One loaded (or skipped) plugin, as ``cohere plugins`` shows it."""

    name: str  # distribution name (installed plugins) or module name (default plugins)
    version: str
    hooks: list[str] = field(default_factory=list)
    builtin: bool = False  # a default plugin: the built-in modalities, the store
    entry_point: str = ""  # "name = module" of an installed plugin
    error: str = ""  # why it was skipped

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in ("", None) or k in ("name", "version", "hooks")}


_plugins: dict[str, PluginInfo] = {}  # pluggy name -> info, filled by plugin_manager()
_warned: set[str] = set()  # each warning once per load


def _strict() -> bool:
    return os.environ.get("COHERE_STRICT_PLUGINS", "") not in ("", "0")


def canonical(dist: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Cohere_TCGA.pancan`` -> ``cohere-tcga-pancan``."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _problem(error: str, warning: str) -> None:
    """Fail with the one-line ``error`` if COHERE_STRICT_PLUGINS=1, else warn once on stderr."""
    if _strict():
        raise CohereError(error)
    if warning not in _warned:
        _warned.add(warning)
        print(f"warning: {warning} (COHERE_STRICT_PLUGINS=1 makes this an error)", file=sys.stderr)


def _broken(info: PluginInfo, what: str, e: BaseException) -> None:
    """Skip a broken plugin with a one-line warning, or fail in strict mode."""
    info.error = info.error or f"{what}: {_one_line(e)}"
    msg = f"plugin {info.name!r} ({info.entry_point or info.name}) {what}: {_one_line(e)}"
    _problem(f"{msg}; fix or uninstall it, disable it with COHERE_LOAD_PLUGINS, or unset "
             "COHERE_STRICT_PLUGINS to skip it", f"skipping {msg}")


def _run_plugin(info: PluginInfo, what: str, fn, *args, **kwargs):
    """Run a plugin's code (its import or a hook) with its stdout sent to stderr; its result.

    Any failure, ``SystemExit`` included, skips the plugin with a warning and returns None
    (an error in strict mode); only Ctrl-C and SIGTERM (``Interrupted``) stop the host.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return fn(*args, **kwargs)
    except (KeyboardInterrupt, Interrupted):
        raise
    except BaseException as e:  # deliberately broad: a plugin must never take the host down
        _broken(info, what, e)
        return None


def _register(pm: pluggy.PluginManager, ep, key: str) -> None:
    """Import an installed plugin and register it; a hook that does not exist (e.g. a typo)
    or has a bad signature unregisters it again."""
    pm.register(ep.load(), name=key)
    try:
        pm.check_pending()
    except BaseException:
        pm.unregister(name=key)
        raise


def _check_allowed(allow: set[str] | None, eps) -> None:
    """Warn about COHERE_LOAD_PLUGINS names that match no installed plugin distribution."""
    installed = sorted({canonical(ep.dist.name if ep.dist else ep.name) for ep in eps})
    for name in sorted((allow or set()) - set(installed)):
        msg = (f"COHERE_LOAD_PLUGINS names {name!r}, which matches no installed distribution with "
               f"cohere plugins (installed: {', '.join(installed) or 'none'})")
        _problem(f"{msg}; correct the name, or unset COHERE_STRICT_PLUGINS to ignore it", msg)


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    """Load the default plugins and the allowed installed ones (once; ``reset()`` forgets)."""
    pm = pluggy.PluginManager("cohere")
    pm.add_hookspecs(hookspecs)
    _plugins.clear()
    _warned.clear()
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
        _plugins[name] = PluginInfo(name, __version__, builtin=True)
    wanted = os.environ.get("COHERE_LOAD_PLUGINS")
    allow = None if wanted is None else {canonical(w.strip()) for w in wanted.split(",") if w.strip()}
    eps = sorted(importlib.metadata.entry_points(group="cohere"),
                 key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))
    _check_allowed(allow, eps)
    for ep in eps:
        dist = ep.dist.name if ep.dist else ep.name
        if allow is not None and canonical(dist) not in allow:
            continue
        info = PluginInfo(dist, ep.dist.version if ep.dist else "", entry_point=f"{ep.name} = {ep.value}")
        key = ep.name if ep.name not in _plugins else f"{dist}:{ep.name}"
        _plugins[key] = info
        _run_plugin(info, "failed to load", _register, pm, ep, key)
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


def plugin_info() -> list[PluginInfo]:
    """Loaded and skipped plugins: the built-in (default) ones first, then by name."""
    plugin_manager()
    return sorted(_plugins.values(), key=lambda i: (not i.builtin, i.name, i.entry_point))


def _info(plugin_name: str) -> PluginInfo:
    return _plugins.get(plugin_name) or PluginInfo(plugin_name, "")


def distribution(plugin_name: str) -> str:
    """The distribution (pip package) that a loaded plugin comes from (its module for default ones)."""
    return _info(plugin_name).name


def register_commands(app) -> None:
    """Let every plugin add commands to ``app``; a plugin whose hook fails is skipped."""
    pm = plugin_manager()
    for impl in pm.hook.register_commands.get_hookimpls():
        _run_plugin(_info(impl.plugin_name), "failed in register_commands", impl.function,
                    **{a: app for a in impl.argnames})


# ---------------------------------------------------------------- registrations


def _registrations(impl, check) -> list[tuple[str, object, str]]:
    """Call one plugin's ``register_*`` hook; its registrations, validated by ``check``."""
    calls: list[tuple] = []
    impl.function(**{a: (lambda *args: calls.append(args)) for a in impl.argnames})
    return [(*check(args, impl.plugin_name), impl.plugin_name) for args in calls]


def _collect(hook: str, what: str, check) -> dict:
    """Call a ``register_*`` hook plugin by plugin; return {id: (value, plugin name)} sorted.

    ``check(args, plugin)`` validates one ``register(*args)`` call and returns (id, value).
    A plugin whose hook raises is skipped (none of its items are kept); an id registered
    twice is an error naming both plugins.
    """
    pm = plugin_manager()
    registered: list[tuple[str, object, str]] = []
    for impl in sorted(getattr(pm.hook, hook).get_hookimpls(), key=lambda i: i.plugin_name):
        registered += _run_plugin(_info(impl.plugin_name), f"failed in {hook}", _registrations, impl, check) or []
    found: dict = {}
    for key, value, plugin in sorted(registered, key=lambda r: (r[0], r[2])):
        if key in found and _same_artifact(found[key][0], value):
            continue          # e.g. a package's artifact also installed into the store: one artifact
        if key in found:
            other = found[key][1]
            who = f"by {other!r} and by {plugin!r}" if other != plugin else f"twice by {plugin!r}"
            raise CohereError(f"{what} {key!r} is registered {who}; uninstall or disable one of them "
                              "(COHERE_LOAD_PLUGINS=name,... loads only the named plugins)")
        found[key] = (value, plugin)
    return {k: found[k] for k in sorted(found)}


def _same_artifact(a, b) -> bool:
    """Two registered folders hold the same artifact (the same recorded weights digest)."""
    if not isinstance(a, Path) or not isinstance(b, Path):
        return False
    try:
        digests = [json.loads((p / "config.json").read_text()).get("files", {}).get("model.safetensors") for p in (a, b)]
    except (OSError, ValueError):
        return False
    return digests[0] is not None and digests[0] == digests[1]


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
    """Registered modalities by name, sorted: the loader of ``cohere.modalities.registry``."""
    return {k: v for k, (v, _) in _collect("register_modalities", "modality", _check_modality).items()}


def modality_names() -> list[str]:
    return registry.names()


def get_modality(name: str):
    """The registered modality ``name`` (an unknown name is an error listing the known ones)."""
    return registry.get(name)


def encoders() -> dict[str, Path]:
    """Registered encoder folders by modality (the store's and plugins'), sorted.

    Not cached: the store changes with ``cohere encoders add/remove``.
    """
    return {k: v for k, (v, _) in _collect("register_encoders", "encoder", _check_encoder).items()}


def experts(target: str | None = None) -> dict[str, Path]:
    """Registered expert and multi-condition folders by id, sorted; only ``target``'s if given."""
    found = _collect("register_experts", "expert", _check_expert)
    return {k: v for k, (v, _) in found.items() if target is None or k.split("->")[1] == target}


def packaged(group: str) -> dict[str, tuple[Path, str]]:
    """{id: (folder, distribution)} of the artifacts that installed plugins (pip packages such
    as cohere-tcga-pancan), not the store, register for ``group`` ("encoders" or "experts")."""
    hook, what, check = (("register_encoders", "encoder", _check_encoder) if group == "encoders" else
                         ("register_experts", "expert", _check_expert))
    return {k: (Path(v), distribution(p)) for k, (v, p) in _collect(hook, what, check).items()
            if p != "cohere.store"}


def owners(hook: str) -> dict[str, str]:
    """{id: plugin name} for one ``register_*`` hook (which plugin provides what)."""
    checks = {"register_modalities": ("modality", _check_modality),
              "register_encoders": ("encoder", _check_encoder),
              "register_experts": ("expert", _check_expert)}
    what, check = checks[hook]
    return {k: p for k, (_, p) in _collect(hook, what, check).items()}
