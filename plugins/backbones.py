"""Built-in backbone: the paper's 3D FusionNet variant (Fig. 2)."""
from __future__ import annotations

import torch
from torch import nn

from omkit.hookspecs import hookimpl
from omkit.models.blocks import ConvBNReLU, ResidualBlock, UpSum, he_init, scaled


class FusionNet3D(nn.Module):
    """Shared backbone of OM-Net / one MC network.

    Encoder level (C maps): conv C -> residual C -> conv C -> max-pool, for
    C = 32, 64, 128; bottom: conv 256 -> residual 256 -> conv 256 -> dropout;
    decoder level: transposed conv to C, SUM with the encoder output, conv C ->
    residual C -> conv C, except the last (full-resolution) level, which ends
    after its residual block: that 32-map output is the shared feature F.

    Spatial sizes must be divisible by 2 ** (len(levels) - 1).
    """

    def __init__(self, in_channels: int = 4, width: float = 1.0, levels=(32, 64, 128, 256), dropout: float = 0.5):
        super().__init__()
        chans = [scaled(c, width) for c in levels]
        self.in_channels = in_channels
        self.levels = tuple(chans)
        self.out_channels = chans[0]
        self.min_divisor = 2 ** (len(chans) - 1)
        self.encoders = nn.ModuleList()
        prev = in_channels
        for c in chans[:-1]:
            self.encoders.append(nn.Sequential(ConvBNReLU(prev, c), ResidualBlock(c), ConvBNReLU(c, c)))
            prev = c
        self.pool = nn.MaxPool3d(2, 2)
        self.bottom = nn.Sequential(
            ConvBNReLU(prev, chans[-1]), ResidualBlock(chans[-1]), ConvBNReLU(chans[-1], chans[-1]),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
        )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(chans) - 2, -1, -1):
            c = chans[i]
            self.ups.append(UpSum(chans[i + 1], c))
            last = i == 0
            layers = [ConvBNReLU(c, c), ResidualBlock(c)]
            if not last:
                layers.append(ConvBNReLU(c, c))
            self.decoders.append(nn.Sequential(*layers))
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % self.min_divisor for s in x.shape[2:]):
            raise ValueError(
                f"FusionNet3D needs spatial sizes divisible by {self.min_divisor}, got {tuple(x.shape[2:])}"
            )
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(up(x, skip))
        return x


@hookimpl
def omkit_register_backbones(registry):
    registry.add("fusionnet3d", FusionNet3D)
