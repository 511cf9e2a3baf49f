"""ECA: global average pooling, a 1-D convolution across channels (kernel size
adapted to the channel count), sigmoid, channel-wise rescale. Unguided, so
omkit places it between a task head's conv and its classifier."""
from __future__ import annotations

import math

import torch
from torch import nn

import omkit


def adaptive_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    k = int(abs((math.log2(channels) + beta) / gamma))
    return k if k % 2 else k + 1


class ECABlock(nn.Module):
    guided = False

    def __init__(self, channels: int, kernel_size: int | None = None):
        super().__init__()
        k = kernel_size or adaptive_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3, 4)).unsqueeze(1)  # (B, 1, C)
        scale = torch.sigmoid(self.conv(y)).squeeze(1)
        return x * scale.view(*scale.shape, 1, 1, 1)


@omkit.hookimpl
def omkit_register_attention(registry):
    registry.add("eca", ECABlock)
