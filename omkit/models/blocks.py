"""Building blocks of the FusionNet (paper Fig. 2, as the released nets fix it),
for 3-D volumes (the paper's) or 2-D images: ``spatial_dims`` picks the
convolution, BatchNorm, pooling and dropout of that many spatial axes."""
from __future__ import annotations

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def check_spatial_dims(spatial_dims: int) -> int:
    """``spatial_dims`` as an int, 2 or 3 (ValueError otherwise)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def conv(spatial_dims: int):
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims)]


def conv_transpose(spatial_dims: int):
    return _CONV_T[check_spatial_dims(spatial_dims)]


def batch_norm(spatial_dims: int):
    return _NORM[check_spatial_dims(spatial_dims)]


def max_pool(spatial_dims: int):
    return _POOL[check_spatial_dims(spatial_dims)]


def dropout(spatial_dims: int):
    return _DROPOUT[check_spatial_dims(spatial_dims)]


def check_input(module: nn.Module, x: torch.Tensor, spatial_dims: int, what: str = "x") -> None:
    """A ValueError naming ``module`` unless ``x`` is ``(B, C, *spatial)`` with ``spatial_dims`` axes."""
    if x.dim() != spatial_dims + 2:
        axes = "D, H, W" if spatial_dims == 3 else "H, W"
        raise ValueError(f"{type(module).__name__} (spatial_dims={spatial_dims}) takes {what} of shape "
                         f"(B, C, {axes}), got {tuple(x.shape)}")


def scaled(channels: int, width: float) -> int:
    """Channel count at a width multiplier (never below 1)."""
    return max(1, int(round(channels * width)))


class ConvBNReLU(nn.Sequential):
    """3x3x3 (3x3 in 2-D) conv (stride 1, pad 1, bias) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3):
        super().__init__(
            conv(spatial_dims)(in_channels, out_channels, 3, padding=1, bias=True),
            batch_norm(spatial_dims)(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, conv-BN, add the block input, ReLU."""

    def __init__(self, channels: int, spatial_dims: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels, spatial_dims),
            ConvBNReLU(channels, channels, spatial_dims),
            conv(spatial_dims)(channels, channels, 3, padding=1, bias=True),
            batch_norm(spatial_dims)(channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + x)


class UpSum(nn.Module):
    """2x2x2 (2x2) stride-2 transposed conv (+BN+ReLU) then element-wise SUM with the skip."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3):
        super().__init__()
        self.up = nn.Sequential(
            conv_transpose(spatial_dims)(in_channels, out_channels, 2, stride=2, bias=True),
            batch_norm(spatial_dims)(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x) + skip


def he_init(module: nn.Module) -> None:
    """He (MSRA) initialisation of every conv, as the released nets use."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for inference with every BatchNorm that directly follows a
    convolution in a ``nn.Sequential`` folded into that convolution's weights and bias
    (and replaced by ``nn.Identity``): the same function in eval mode, one pass over the
    activations less per folded pair. The copy is in eval mode; ``module`` is untouched."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(module).eval()
    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = seq._modules[first], seq._modules[second]
            if isinstance(conv, convs) and isinstance(norm, (nn.BatchNorm2d, nn.BatchNorm3d)) \
                    and norm.track_running_stats and norm.running_mean is not None:
                transpose = isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d))
                seq._modules[first] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
                seq._modules[second] = nn.Identity()
    return folded
