"""Whole models by name: a preset (the paper's rows) or a bare architecture."""
from __future__ import annotations

from torch import nn

from omkit.factory import list_presets, preset_registry

from .omnet import MCNet, OMNet

# Architectures addressable without a preset; the presets give the paper's rows.
ARCHITECTURES = {"omnet_base": OMNet, "mc_base": MCNet}


def list_models(pattern: str | None = None) -> list[str]:
    """Everything ``create_model`` accepts: presets and the architecture names."""
    from fnmatch import fnmatchcase

    names = sorted(set(list_presets()) | set(ARCHITECTURES))
    return [n for n in names if pattern is None or fnmatchcase(n, pattern)]


def create_model(preset_or_name: str, width: float = 1.0, **kw) -> nn.Module:
    """Build a model from a preset name (``omkit.list_presets()``) or an
    architecture name; keyword arguments override the preset's
    (``attention="se"`` puts that plug-in in every head, ``backbone=...``)."""
    registry = preset_registry()
    if preset_or_name in registry:
        preset = registry.get(preset_or_name)
        model = preset.build(width=width, **kw)
        model.preset = preset.name
    elif preset_or_name in ARCHITECTURES:
        model = ARCHITECTURES[preset_or_name](width=width, **kw)
        model.preset = preset_or_name
    else:
        raise ValueError(
            f"unknown model {preset_or_name!r}; available: {', '.join(list_models())}"
        )
    model.width = width
    model.model_kw = dict(kw)  # what load_model needs to rebuild it
    return model
