"""Built-in backbone: the paper's FusionNet (Fig. 2), registered as ``fusionnet3d``.

The module lives in core (``omkit.models.backbone``, public as
``omkit.nn.FusionNet3D``); this plug-in registers it through the same hook a
third party uses."""
from __future__ import annotations

from omkit.hookspecs import hookimpl
from omkit.models.backbone import FusionNet3D

__all__ = ["FusionNet3D"]


@hookimpl
def omkit_register_backbones(registry):
    registry.add("fusionnet3d", FusionNet3D)
