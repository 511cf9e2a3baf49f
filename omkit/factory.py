"""Model parts by name (timm-style), from what plug-ins registered: the
registry lookups that models and the rest of omkit build on. Whole models:
:func:`omkit.models.build.create_model`."""
from __future__ import annotations

from torch import nn

from .plugin_manager import get_plugins


def _registry(kind: str):
    return get_plugins().registry(kind)


def list_backbones(pattern: str | None = None) -> list[str]:
    return _registry("backbone").names(pattern)


def list_attention(pattern: str | None = None) -> list[str]:
    return _registry("attention").names(pattern)


def list_presets(pattern: str | None = None) -> list[str]:
    return _registry("preset").names(pattern)


def preset_registry():
    """The registry of model presets (name -> :class:`omkit.models.Preset`)."""
    return _registry("preset")


def list_samplers(pattern: str | None = None) -> list[str]:
    return _registry("sampler").names(pattern)


def list_postprocessors(pattern: str | None = None) -> list[str]:
    return _registry("postprocessor").names(pattern)


def registered_class(kind: str, name: str) -> type:
    """What plug-ins registered as ``kind`` (``"attention"``, ``"backbone"``, ``"sampler"``, ...)
    under ``name``; an unknown name is a ``KeyError`` listing the known ones."""
    return _registry(kind).get(name)


def attention_class(name: str) -> type:
    return registered_class("attention", name)


def backbone_class(name: str) -> type:
    return registered_class("backbone", name)


def get_preset(name: str):
    return _registry("preset").get(name)


def create_backbone(name: str = "fusionnet3d", **kw) -> nn.Module:
    return backbone_class(name)(**kw)


def create_attention(name: str, channels: int, **kw) -> nn.Module:
    """An attention module; the first argument is always the channel count.
    Guided (CGA-like) modules also need ``num_classes``."""
    cls = attention_class(name)
    if getattr(cls, "guided", False) and "num_classes" not in kw:
        raise TypeError(f"attention {name!r} is a guided head: pass num_classes=K")
    return cls(channels, **kw)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def registered_by(kind: str, name: str) -> tuple[str, str]:
    """The plug-in that registered ``kind`` ``name``, and where that plug-in came from."""
    plugins = get_plugins()
    owner = plugins.registry(kind).entry(name).plugin
    info = plugins.plugins.get(owner)
    return owner, info.source if info else "unknown source"


def block_hint(plugin: str) -> str:
    """How to block ``plugin``."""
    from .plugin_manager import BLOCK_ENV

    return f"block it with {BLOCK_ENV}={plugin} or omkit.setup_plugins(block=[{plugin!r}])"
