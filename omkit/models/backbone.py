"""The paper's FusionNet backbone (Fig. 2), 3-D as in the paper or 2-D.

The built-in plug-in ``omkit.plugins.backbones`` registers it as
``fusionnet3d``; ``omkit.nn.FusionNet3D`` is the same class."""
from __future__ import annotations

import torch
from torch import nn

from . import blocks
from .blocks import ConvBNReLU, ResidualBlock, UpSum, check_input, check_spatial_dims, he_init, max_pool, scaled
from .slabs import conv_reach, local_in_slabs, merge_in_place


class FusionNet3D(nn.Module):
    """Shared backbone of OM-Net / one MC network.

    Encoder level (C maps): conv C -> residual C -> conv C -> max-pool, for
    C = 32, 64, 128; bottom: conv 256 -> residual 256 -> conv 256 -> dropout;
    decoder level: transposed conv to C, SUM with the encoder output, conv C ->
    residual C -> conv C, except the last (full-resolution) level, which ends
    after its residual block: that 32-map output is the shared feature F.
    Channel counts are multiplied by ``width``.

    Shapes: ``(B, in_channels, D, H, W)`` -> ``(B, out_channels, D, H, W)``
    (``spatial_dims=3``, the paper's), or ``(B, in_channels, H, W)`` ->
    ``(B, out_channels, H, W)`` (``spatial_dims=2``: the same network with 2-D
    convolutions). Every spatial size must be divisible by ``min_divisor`` =
    ``2 ** (len(levels) - 1)`` (8 with the paper's four levels).

    Window-consistent (``omkit.models.window_protocol``): convolutions, BatchNorm (a fixed
    affine map in eval mode), max-pooling and dropout (off in eval mode), so its output
    at a voxel depends on a bounded neighbourhood only.
    """

    window_consistent = True

    def __init__(self, in_channels: int = 4, width: float = 1.0, levels=(32, 64, 128, 256), dropout: float = 0.5,
                 spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        chans = [scaled(c, width) for c in levels]
        self.in_channels = in_channels
        self.levels = tuple(chans)
        self.out_channels = chans[0]
        self.min_divisor = 2 ** (len(chans) - 1)
        self.encoders = nn.ModuleList()
        prev = in_channels
        for c in chans[:-1]:
            self.encoders.append(nn.Sequential(ConvBNReLU(prev, c, spatial_dims), ResidualBlock(c, spatial_dims),
                                               ConvBNReLU(c, c, spatial_dims)))
            prev = c
        self.pool = max_pool(spatial_dims)(2, 2)
        self.bottom = nn.Sequential(
            ConvBNReLU(prev, chans[-1], spatial_dims), ResidualBlock(chans[-1], spatial_dims),
            ConvBNReLU(chans[-1], chans[-1], spatial_dims),
            _dropout(spatial_dims, dropout),
        )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(chans) - 2, -1, -1):
            c = chans[i]
            self.ups.append(UpSum(chans[i + 1], c, spatial_dims))
            last = i == 0
            layers = [ConvBNReLU(c, c, spatial_dims), ResidualBlock(c, spatial_dims)]
            if not last:
                layers.append(ConvBNReLU(c, c, spatial_dims))
            self.decoders.append(nn.Sequential(*layers))
        he_init(self)

    def _check(self, x: torch.Tensor) -> None:
        check_input(self, x, self.spatial_dims)
        if any(s % self.min_divisor for s in x.shape[2:]):
            raise ValueError(
                f"FusionNet3D needs spatial sizes divisible by {self.min_divisor}, got {tuple(x.shape[2:])}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(up(x, skip))
        return x

    def slab_forward(self, x: torch.Tensor, planes: int) -> torch.Tensor:
        """``forward``'s function (3-D, eval mode) holding about ``planes`` planes of each
        level's temporaries at a time: every level runs in slabs along D
        (``omkit.models.slabs``), and each decoder level writes its output over its skip
        map. Whole-size maps: the input, one map per level (the skips), and the coarser
        level's output while a decoder level runs. Without gradient only; with it
        (training), ``forward``."""
        self._check(x)
        if self.spatial_dims != 3 or torch.is_grad_enabled():
            return self(x)
        skips = []
        for enc in self.encoders:
            x = local_in_slabs(enc, x, planes, conv_reach(enc))
            skips.append(x)
            x = self.pool(x)
        x = local_in_slabs(self.bottom, x, planes, conv_reach(self.bottom))
        for up, dec in zip(self.ups, self.decoders):
            skip = skips.pop()  # dropped as soon as its level is done: the next level's skip is twice its size
            x = merge_in_place(lambda c, s: dec(up(c, s)), x, skip, planes, conv_reach(dec),
                               skip.shape[2] // x.shape[2])
        return x


def _dropout(spatial_dims: int, p: float) -> nn.Module:
    return blocks.dropout(spatial_dims)(p) if p > 0 else nn.Identity()
