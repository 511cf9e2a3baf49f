"""Name -> class registries filled by the plug-in hooks."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterator


class PluginError(RuntimeError):
    """A plug-in failed to load or to register; the message names it and says
    how to block it."""


class UnknownNameError(KeyError):
    """Asked for a name that no plug-in registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    plugin: str


class Registry:
    """Maps names of one kind (``backbone``, ``attention``, ...) to objects and
    remembers which plug-in registered each."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.note = ""  # added to unknown-name errors (e.g. which plug-ins are blocked)

    def add(self, name: str, obj: Any, *, plugin: str = "<unknown>") -> Any:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plug-in {plugin!r} registered a {self.kind} with an invalid name {name!r}")
        if name in self._entries:
            first = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered by two plug-ins: {first!r} and {plugin!r}; "
                f"block one with OMKIT_BLOCK_PLUGINS={plugin}"
            )
        self._entries[name] = Entry(name, obj, plugin)
        return obj

    def for_plugin(self, plugin: str) -> "PluginRegistryView":
        return PluginRegistryView(self, plugin)

    def get(self, name: str) -> Any:
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries)) or '(none)'}"
                + (f"; {self.note}" if self.note else "")
            ) from None

    def entry(self, name: str) -> Entry:
        self.get(name)
        return self._entries[name]

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.plugin == plugin)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


class PluginRegistryView:
    """What a hook implementation receives: ``registry.add(name, obj)`` records
    the calling plug-in's name with the entry."""

    def __init__(self, registry: Registry, plugin: str):
        self._registry = registry
        self.plugin = plugin
        self.kind = registry.kind

    def add(self, name: str, obj: Any) -> Any:
        return self._registry.add(name, obj, plugin=self.plugin)

    def names(self, pattern: str | None = None) -> list[str]:
        return self._registry.names(pattern)

    def __contains__(self, name: str) -> bool:
        return name in self._registry
