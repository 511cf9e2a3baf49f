"""ECA: global average pooling, a 1-D convolution across channels (kernel size
adapted to the channel count), sigmoid, channel-wise rescale. Unguided, so
omkit places it between a task head's conv and its classifier.

It declares its pooling (``omkit.models.window_protocol``): the per-voxel term is
the feature itself, whose sum over the count is ECA's channel mean, and the scale is
made of that mean. ``PooledChannelAttention.forward`` pools the declaration over
the whole input, so omkit's dense inference and window-consistent training pool it
per window, with nothing else to write.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import omkit
from omkit.models.window_protocol import PooledChannelAttention


def adaptive_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    k = int(abs((math.log2(channels) + beta) / gamma))
    return k if k % 2 else k + 1


class ECABlock(PooledChannelAttention):
    def __init__(self, channels: int, kernel_size: int | None = None):
        super().__init__()
        k = kernel_size or adaptive_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def pooled_terms(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)

    def channel_scale(self, sums, count: int) -> torch.Tensor:
        mean = (sums[0] / count).to(self.conv.weight.dtype)  # (..., C): one row per input or window
        lead, channels = mean.shape[:-1], mean.shape[-1]
        scale = torch.sigmoid(self.conv(mean.reshape(-1, 1, channels)))
        return scale.reshape(*lead, channels)


@omkit.hookimpl
def omkit_register_attention(registry):
    registry.add("eca", ECABlock)
