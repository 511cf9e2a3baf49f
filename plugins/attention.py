"""Built-in attention plug-ins: SE (OM-Net + SE) and CGA with its ablation variants."""
from __future__ import annotations

import torch
from torch import nn

from omkit import functional as OF
from omkit.hookspecs import hookimpl


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al.): global average pool, FC-ReLU-FC-sigmoid,
    channel-wise rescale. Unguided: used before a task's classifier."""

    guided = False

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(2, 3, 4)))
        return x * scale.view(*scale.shape, 1, 1, 1)


class CGAHead(nn.Module):
    """Cross-task Guided Attention head: CSCI block + CompSeg block (Sec. III-C).

    Works directly on the shared features F (no 3x3x3 conv, as in the released
    nets): two 1x1x1 convs C -> K score the recalibrated features of the
    positive (tumor / core) and negative categories, merged by the guidance
    (according to ``variant``), then a final 1x1x1 conv K -> K.
    """

    guided = True
    variant = "full"

    def __init__(self, channels: int, num_classes: int, eps: float = OF.DEFAULT_EPS, final_conv: bool = True):
        super().__init__()
        self.channels, self.num_classes, self.eps = channels, num_classes, eps
        # a one-branch variant has no parameters for the branch it drops
        self.score_pos = nn.Conv3d(channels, num_classes, 1) if self.variant != "neg" else None
        self.score_neg = nn.Conv3d(channels, num_classes, 1) if self.variant != "pos" else None
        self.final = nn.Conv3d(num_classes, num_classes, 1) if final_conv else None
        for conv in (self.score_pos, self.score_neg):
            if conv is not None:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    @staticmethod
    def _flat(conv: nn.Conv3d | None):
        if conv is None:
            return None, None
        return conv.weight.flatten(1), conv.bias

    def forward(self, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        w_pos, b_pos = self._flat(self.score_pos)
        w_neg, b_neg = self._flat(self.score_neg)
        w_out, b_out = self._flat(self.final)
        return OF.cga(features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant=self.variant, eps=self.eps)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_classes={self.num_classes}, variant={self.variant!r}"


class CGAMinusHead(CGAHead):
    """CGA-: the two score maps are summed without the Pt / Pn soft masks."""

    variant = "minus"


class CGATumorHead(CGAHead):
    """CGAt: the upper (positive-category) branch only."""

    variant = "pos"


class CGANonTumorHead(CGAHead):
    """CGAn: the lower (negative-category) branch only."""

    variant = "neg"


@hookimpl
def omkit_register_attention(registry):
    registry.add("se", SEBlock)
    registry.add("cga", CGAHead)
    registry.add("cga_minus", CGAMinusHead)
    registry.add("cga_t", CGATumorHead)
    registry.add("cga_n", CGANonTumorHead)
