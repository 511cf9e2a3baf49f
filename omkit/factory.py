"""Create models and their parts by name (timm-style), from what plug-ins registered."""
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


def list_samplers(pattern: str | None = None) -> list[str]:
    return _registry("sampler").names(pattern)


def list_postprocessors(pattern: str | None = None) -> list[str]:
    return _registry("postprocessor").names(pattern)


def list_models(pattern: str | None = None) -> list[str]:
    """Everything ``create_model`` accepts: presets and the architecture names."""
    from fnmatch import fnmatchcase

    names = sorted(set(list_presets()) | set(ARCHITECTURES))
    return [n for n in names if pattern is None or fnmatchcase(n, pattern)]


def attention_class(name: str) -> type:
    return _registry("attention").get(name)


def get_preset(name: str):
    return _registry("preset").get(name)


def create_backbone(name: str = "fusionnet3d", **kw) -> nn.Module:
    return _registry("backbone").get(name)(**kw)


def create_attention(name: str, channels: int, **kw) -> nn.Module:
    """An attention module; the first argument is always the channel count.
    Guided (CGA-like) modules also need ``num_classes``."""
    cls = attention_class(name)
    if getattr(cls, "guided", False) and "num_classes" not in kw:
        raise TypeError(f"attention {name!r} is a guided head: pass num_classes=K")
    return cls(channels, **kw)


# Architectures addressable without a preset; the presets give the paper's rows.
ARCHITECTURES = {"omnet_base": "omnet", "mc_base": "mc"}


def create_model(preset_or_name: str, width: float = 1.0, **kw) -> nn.Module:
    """Build a model from a preset name (``omkit.list_presets()``) or an
    architecture name; keyword arguments override the preset's
    (``attention="se"`` puts that plug-in in every head, ``backbone=...``)."""
    from .models.omnet import MCNet, OMNet

    registry = _registry("preset")
    if preset_or_name in registry:
        preset = registry.get(preset_or_name)
        model = preset.build(width=width, **kw)
        model.preset = preset.name
    elif preset_or_name in ARCHITECTURES:
        cls = OMNet if ARCHITECTURES[preset_or_name] == "omnet" else MCNet
        model = cls(width=width, **kw)
        model.preset = preset_or_name
    else:
        raise ValueError(
            f"unknown model {preset_or_name!r}; available: {', '.join(list_models())}"
        )
    model.width = width
    model.model_kw = dict(kw)  # what load_model needs to rebuild it
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
