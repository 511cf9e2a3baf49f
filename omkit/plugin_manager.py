"""Loads the built-in and third-party plug-ins and fills the registries.

Order (as in pluggy's own example and datasette): the built-in modules listed
in :data:`BUILTIN_PLUGINS`, then every entry point of group ``omkit``. Each
hook implementation is called on its own so that a failure, or a duplicate
name, is reported with the plug-in that caused it.
"""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Iterable

import pluggy

from . import hookspecs
from .registry import PluginError, Registry

ENTRY_POINT_GROUP = "omkit"
BLOCK_ENV = "OMKIT_BLOCK_PLUGINS"

# Built-in plug-in modules; each registers through the same hooks as a third party.
BUILTIN_PLUGINS = (
    "omkit.plugins.backbones",
    "omkit.plugins.attention",
    "omkit.plugins.presets",
    "omkit.plugins.postprocess",
    "omkit.plugins.samplers",
    "omkit.plugins.augment",
    "omkit.plugins.monai_peers",  # registers only when MONAI is installed
)

# hook name -> registry kind
REGISTER_HOOKS = {
    "omkit_register_backbones": "backbone",
    "omkit_register_attention": "attention",
    "omkit_register_presets": "preset",
    "omkit_register_samplers": "sampler",
    "omkit_register_transforms": "transform",
    "omkit_register_postprocessors": "postprocessor",
}


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin" or "entry point <dist> <version>: <value>"
    registered: dict[str, list[str]] = field(default_factory=dict)


def _disable_hint(name: str) -> str:
    return f"disable it with {BLOCK_ENV}={name} or omkit.setup_plugins(block=[{name!r}])"


def _fault(exc: BaseException) -> str:
    """What a plug-in did, in a few words (``SystemExit: 3`` rather than a bare ``3``)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def blocked_from_env() -> set[str]:
    raw = os.environ.get(BLOCK_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


class OmkitPlugins:
    """One loaded set of plug-ins: the pluggy manager, the registries, and
    where every plug-in came from."""

    def __init__(
        self,
        block: Iterable[str] | None = None,
        load_entry_points: bool = True,
        extra_plugins: dict[str, object] | None = None,
    ):
        self.blocked = set(block or ()) | blocked_from_env()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind) for kind in REGISTER_HOOKS.values()}
        self.plugins: dict[str, PluginInfo] = {}
        self._check_blocked(block or (), extra_plugins or {})
        for module_name in BUILTIN_PLUGINS:
            short = module_name.rsplit(".", 1)[-1]
            if short in self.blocked or module_name in self.blocked:
                continue
            module = importlib.import_module(module_name)
            self._register(module, short, "builtin")
        if load_entry_points:
            self._load_entry_points()
        # plug-ins handed over in code (embedding pipelines, tests): same hooks, same checks
        for name, plugin in (extra_plugins or {}).items():
            if name not in self.blocked:
                self._register(plugin, name, "registered in code")
        self._fill_registries()
        if self.blocked:  # "unknown attention 'cga'" says why when its plug-in is blocked
            for registry in self.registries.values():
                registry.note = f"blocked plug-ins: {', '.join(sorted(self.blocked))} ({BLOCK_ENV} or block=)"

    def _check_blocked(self, block: Iterable[str], extra_plugins: dict) -> None:
        """Blocking a name no plug-in has is a typo, not a no-op: one line naming it."""
        known = {m.rsplit(".", 1)[-1] for m in BUILTIN_PLUGINS} | set(BUILTIN_PLUGINS) | set(extra_plugins)
        known |= {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        unknown = sorted(self.blocked - known)
        if unknown:
            where = BLOCK_ENV if unknown[0] in blocked_from_env() and unknown[0] not in set(block) else "block"
            names = sorted(n for n in known if "." not in n)
            raise PluginError(f"{where}: no plug-in named {unknown[0]!r} to block; plug-ins: {', '.join(names)}")

    # -- loading ----------------------------------------------------------------
    def _register(self, plugin: object, name: str, source: str) -> None:
        if name in self.plugins:
            raise PluginError(
                f"two plug-ins are named {name!r} ({self.plugins[name].source} and {source}); "
                f"{_disable_hint(name)}"
            )
        try:
            self.pm.register(plugin, name=name)
        except BaseException as exc:  # pluggy validates hook signatures here
            raise PluginError(f"plug-in {name!r} ({source}) is invalid: {exc}; {_disable_hint(name)}") from exc
        self.plugins[name] = PluginInfo(name, source)

    def _load_entry_points(self) -> None:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.blocked:
                continue
            dist = getattr(ep, "dist", None)
            where = f"entry point {ep.value}"
            if dist is not None:
                where = f"{dist.metadata['Name']} {dist.version}: {ep.value}"
            try:
                plugin = ep.load()
            except BaseException as exc:  # sys.exit() or os._exit-like exits in a module body too
                raise PluginError(
                    f"plug-in {ep.name!r} ({where}) failed to import: "
                    f"{_fault(exc)}; {_disable_hint(ep.name)}"
                ) from exc
            self._register(plugin, ep.name, where)

    def _fill_registries(self) -> None:
        for hook_name, kind in REGISTER_HOOKS.items():
            registry = self.registries[kind]
            hook = getattr(self.pm.hook, hook_name)
            # get_hookimpls() is in registration order: built-ins first, then
            # entry points, so a clash is blamed on the later plug-in
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name
                before = set(registry.names())
                try:
                    impl.function(**{arg: registry.for_plugin(plugin_name) for arg in impl.argnames})
                except PluginError:
                    raise
                except BaseException as exc:  # SystemExit too: a hook must not end omkit silently
                    raise PluginError(
                        f"plug-in {plugin_name!r} ({self.plugins[plugin_name].source}) raised in "
                        f"{hook_name}: {_fault(exc)}; {_disable_hint(plugin_name)}"
                    ) from exc
                added = sorted(set(registry.names()) - before)
                if added:
                    self.plugins[plugin_name].registered.setdefault(kind, []).extend(added)

    # -- access -----------------------------------------------------------------
    def registry(self, kind: str) -> Registry:
        return self.registries[kind]


_lock = threading.Lock()
_current: OmkitPlugins | None = None


def setup_plugins(
    block: Iterable[str] | None = None,
    load_entry_points: bool = True,
    extra_plugins: dict[str, object] | None = None,
) -> OmkitPlugins:
    """(Re)load all plug-ins, blocking the named ones, and make them current.

    ``extra_plugins`` maps names to plug-in objects (modules, classes or
    instances with hook implementations) registered after the entry points.
    On error the previously current plug-ins stay current.
    """
    global _current
    with _lock:
        _current = OmkitPlugins(block=block, load_entry_points=load_entry_points, extra_plugins=extra_plugins)
        return _current


def get_plugins() -> OmkitPlugins:
    """The current plug-ins, loaded on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = OmkitPlugins()
    return _current

