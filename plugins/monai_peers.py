"""Peer baselines from MONAI, registered only when MONAI is importable (a
dependency, for the augmentation's geometry): the SegResNet backbone and the ``segresnet_peer`` preset,
a single five-class network on SegResNet that omkit trains on the same patches,
folds and budget as the paper's rows, and scores with the same metrics."""
from __future__ import annotations

import importlib.util

from torch import nn

from omkit.hookspecs import hookimpl
from omkit.models.blocks import scaled
from omkit.models.presets import Preset


def monai_available() -> bool:
    return importlib.util.find_spec("monai") is not None


class SegResNetBackbone(nn.Module):
    """MONAI's SegResNet (Myronenko, 2018) as an omkit backbone: its decoder
    output (``init_filters`` maps at full resolution) is the shared feature."""

    def __init__(self, in_channels: int = 4, width: float = 1.0, init_filters: int = 8, dropout: float = 0.0):
        super().__init__()
        from monai.networks.nets import SegResNet

        # SegResNet normalises with GroupNorm(8): filters stay a multiple of 8
        filters = max(8, 8 * round(scaled(init_filters, width) / 8))
        self.out_channels = filters
        self.min_divisor = 8
        self.net = SegResNet(spatial_dims=3, init_filters=filters, in_channels=in_channels,
                             out_channels=filters, dropout_prob=dropout or None)

    def forward(self, x):
        if any(s % self.min_divisor for s in x.shape[2:]):
            raise ValueError(f"SegResNet needs spatial sizes divisible by {self.min_divisor}, got {tuple(x.shape[2:])}")
        return self.net(x)


SEGRESNET_PEER = Preset(
    "segresnet_peer", "MONAI SegResNet", "mc", num_tasks=1, curriculum=False, transfer=False,
    description="peer baseline: MONAI SegResNet (8 filters) with one five-class head, omkit's patches",
    model_kw={"backbone": "monai_segresnet"},
)


@hookimpl
def omkit_register_backbones(registry):
    if monai_available():
        registry.add("monai_segresnet", SegResNetBackbone)


@hookimpl
def omkit_register_presets(registry):
    if monai_available():
        registry.add(SEGRESNET_PEER.name, SEGRESNET_PEER)
