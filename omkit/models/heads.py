"""Task heads: the per-task layers on top of the shared features."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBNReLU


class PlainHead(nn.Module):
    """3x3x3 conv + BN + ReLU, optional unguided attention (e.g. SE), 1x1x1 classifier."""

    guided = False

    def __init__(self, channels: int, num_classes: int, attention: nn.Module | None = None):
        super().__init__()
        self.conv = ConvBNReLU(channels, channels)
        self.attention = attention if attention is not None else nn.Identity()
        self.classifier = nn.Conv3d(channels, num_classes, 1)
        nn.init.kaiming_normal_(self.conv[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv[0].bias)

    def forward(self, features: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.attention(self.conv(features)))


def build_head(channels: int, num_classes: int, attention: str | None, **attention_kw) -> nn.Module:
    """A task head with the named attention plug-in (or none).

    Guided attention (CGA-like) is the whole head; unguided attention (SE-like)
    sits between the head's conv and its classifier.
    """
    if attention is None:
        return PlainHead(channels, num_classes)
    from omkit.factory import attention_class

    cls = attention_class(attention)
    if getattr(cls, "guided", False):
        return cls(channels, num_classes=num_classes, **attention_kw)
    return PlainHead(channels, num_classes, attention=cls(channels, **attention_kw))
