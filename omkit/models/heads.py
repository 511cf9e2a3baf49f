"""Task heads: the per-task layers on top of the shared features."""
from __future__ import annotations

import torch
from torch import nn

from omkit import ops

from .blocks import ConvBNReLU, check_spatial_dims, conv
from .plugin_checks import call_plugin_module, mark_origin
from .slabs import conv_reach, default_planes, local_in_slabs
from .window_protocol import attention_problem, window_channel_scale


class PlainHead(nn.Module):
    """3x3x3 conv + BN + ReLU, optional unguided attention (e.g. SE), 1x1x1 classifier
    (3x3 and 1x1 with ``spatial_dims=2``)."""

    guided = False

    def __init__(self, channels: int, num_classes: int, attention: nn.Module | None = None, spatial_dims: int = 3):
        super().__init__()
        self.conv = ConvBNReLU(channels, channels, spatial_dims)
        self.attention = attention if attention is not None else nn.Identity()
        self.classifier = conv(spatial_dims)(channels, num_classes, 1)
        nn.init.kaiming_normal_(self.conv[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv[0].bias)

    def forward(self, features: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(features)
        if not isinstance(self.attention, nn.Identity):  # a plug-in's module: checked (plugin_checks)
            x = call_plugin_module(self.attention, (x,), x.shape)
        return self.classifier(x)

    # -- the window protocol (omkit.models.window_protocol) --

    def window_problem(self) -> str | None:
        """Why this head cannot run window by window (its attention declares no pooling), or None."""
        return attention_problem(self.attention)

    def window_logits(self, features: torch.Tensor, guidance: torch.Tensor | None, geometry: dict) -> tuple:
        """The logits with the attention's channel scale pooled over each block's window,
        applied as per-block classifier weights (``omkit.ops.block_linear``); no maps."""
        if isinstance(self.attention, nn.Identity):
            if torch.is_grad_enabled():
                return self.classifier(self.conv(features)), None
            # without attention the head is local: in slabs, no whole-region map of its conv
            planes = default_planes(features, self.classifier.in_channels)
            return local_in_slabs(lambda f: self.classifier(self.conv(f)), features, planes,
                                  conv_reach(self.conv)), None
        x = self.conv(features)
        scale = window_channel_scale(self.attention, x, geometry)  # (B, nD, nH, nW, C)
        weight = self.classifier.weight.flatten(1)  # (K, C)
        m0 = weight * scale[..., None, :].to(weight.dtype)
        return ops.block_linear(x, m0, self.classifier.bias, block=geometry["block"], origin=geometry["origin"]), None


def build_head(channels: int, num_classes: int, attention: str | None, spatial_dims: int = 3,
               **attention_kw) -> nn.Module:
    """A task head with the named attention plug-in (or none).

    Guided attention (CGA-like) is the whole head; unguided attention (SE-like)
    sits between the head's conv and its classifier. ``spatial_dims=2`` is
    passed on to the attention module (a plug-in that takes 3-D features only
    need not accept it).
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    if attention is None:
        return PlainHead(channels, num_classes, spatial_dims=spatial_dims)
    from omkit.factory import attention_class

    cls = attention_class(attention)
    if spatial_dims != 3:
        attention_kw = {**attention_kw, "spatial_dims": spatial_dims}
    guided = getattr(cls, "guided", False)
    try:
        module = cls(channels, num_classes=num_classes, **attention_kw) if guided else cls(channels, **attention_kw)
    except TypeError as exc:
        if spatial_dims != 3 and "spatial_dims" in str(exc):
            raise ValueError(f"attention {attention!r} ({cls.__name__}) takes no spatial_dims: it builds 3-D "
                             "modules only") from None
        raise
    mark_origin(module, "attention", attention)
    return module if guided else PlainHead(channels, num_classes, attention=module, spatial_dims=spatial_dims)
