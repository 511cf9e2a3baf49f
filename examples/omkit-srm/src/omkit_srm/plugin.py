"""SRM, the style-based recalibration module (Lee et al., ICCV 2019), for 3-D
features: *style pooling* takes each channel's mean and standard deviation over
the input, *style integration* weighs the two per channel (a channel-wise fully
connected layer) and a sigmoid gives the channel scale. Unguided, so omkit places
it between a task head's conv and its classifier.

Unlike SE and ECA it pools more than the channel mean, and it says so
(``omkit.models.window_protocol``): its per-voxel terms are ``x`` and ``x * x``,
whose sums over the count are the first two moments, and the deviation is made of
them. That declaration is all omkit's dense inference and window-consistent
training need to pool it per window. The paper's batch normalisation after the
integration is left out (a per-channel bias stands in): in window-consistent
training it would normalise over blocks rather than over the batch.
"""
from __future__ import annotations

import torch
from torch import nn

import omkit
from omkit.models.window_protocol import PooledChannelAttention


class SRMBlock(PooledChannelAttention):
    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        # style integration: per channel, a weight for the mean, one for the deviation, a bias
        self.weight = nn.Parameter(torch.randn(channels, 2) * 0.1)
        self.bias = nn.Parameter(torch.zeros(channels))

    def pooled_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x * x

    def channel_scale(self, sums, count: int) -> torch.Tensor:
        mean, square = (s.to(self.weight.dtype) / count for s in sums)
        std = (square - mean * mean).clamp_min(0).add(self.eps).sqrt()
        return torch.sigmoid(mean * self.weight[:, 0] + std * self.weight[:, 1] + self.bias)


@omkit.hookimpl
def omkit_register_attention(registry):
    registry.add("srm", SRMBlock)
