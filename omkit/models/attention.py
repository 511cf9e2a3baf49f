"""Attention modules of the paper's Table I: SE (OM-Net + SE) and Cross-task
Guided Attention with its ablation variants (CGA, CGA-, CGAt, CGAn), for 3-D
volumes or 2-D images.

The built-in plug-in ``omkit.plugins.attention`` registers them (``se``,
``cga``, ``cga_minus``, ``cga_t``, ``cga_n``); ``omkit.nn`` exports :class:`SE`
and :class:`CGA` (whose ``variant=`` chooses among the four). CGA runs the fused
``omkit::cga`` op when the compiled ops are loaded and take the tensors' device
and dtype, its pure-PyTorch reference otherwise (``omkit.ops``).
"""
from __future__ import annotations

import torch
from torch import nn

from omkit import functional as OF
from omkit import ops
from omkit.ops import reference

from .blocks import check_input, check_spatial_dims, conv
from .window_protocol import PooledChannelAttention, guidance_weighted


class SE(PooledChannelAttention):
    """Squeeze-and-excitation (Hu et al.): global average pool, FC-ReLU-FC-sigmoid,
    channel-wise rescale. Unguided: OM-Net + SE puts one before each task's
    classifier.

    Shapes: ``(B, channels, D, H, W)`` -> the same (``spatial_dims=3``), or
    ``(B, channels, H, W)`` -> the same (``spatial_dims=2``). Declares its pooling
    (``omkit.models.window_protocol``): the channel mean, so dense inference and
    window-consistent training pool it per window.
    """

    compiles_fullgraph = True  # a claim the conformance kit checks (omkit.testing)

    def __init__(self, channels: int, reduction: int = 16, spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def pooled_terms(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)

    def channel_scale(self, sums, count: int) -> torch.Tensor:
        return self.fc((sums[0] / count).to(self.fc[0].weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.spatial_dims)
        return super().forward(x)


class CGA(nn.Module):
    """Cross-task Guided Attention head: CSCI block + CompSeg block (Sec. III-C).

    Works directly on the shared features F (no 3x3x3 conv, as in the released
    nets): two 1x1x1 convs C -> K score the features recalibrated by the
    category-specific channel importance of the positive (tumor / core) and
    negative categories, merged by the guidance according to ``variant``, then
    a final 1x1x1 conv K -> K (``final_conv``):

    * ``full``:  S = Pt * S_t + Pn * S_n  (CGA)
    * ``minus``: S = S_t + S_n            (CGA-, no soft spatial masks)
    * ``pos``:   S = Pt * S_t             (CGAt, tumor branch only)
    * ``neg``:   S = Pn * S_n             (CGAn, non-tumor branch only)

    ``module(features, guidance)``: features ``(B, channels, D, H, W)`` and
    guidance ``(B, 1, D, H, W)`` -> scores ``(B, num_classes, D, H, W)``
    (``spatial_dims=3``); ``(B, channels, H, W)``, ``(B, 1, H, W)`` ->
    ``(B, num_classes, H, W)`` with ``spatial_dims=2``. The guidance ``Pt`` is
    the probability of the positive category from a preceding prediction (any
    values in [0, 1]; ``Pn = 1 - Pt``) and is a constant: no gradient reaches it.
    The math with explicit weights: :func:`omkit.functional.cga`.
    """

    guided = True
    compiles_fullgraph = True  # a claim the conformance kit checks (omkit.testing)
    variant = "full"  # the subclasses below fix the others (the registry builds cls(channels, num_classes=K))

    def __init__(self, channels: int, num_classes: int, variant: str | None = None, eps: float = OF.DEFAULT_EPS,
                 final_conv: bool = True, spatial_dims: int = 3):
        super().__init__()
        if variant is not None:
            if variant not in OF.CGA_VARIANTS:
                raise ValueError(f"unknown CGA variant {variant!r}; choose one of {', '.join(OF.CGA_VARIANTS)}")
            self.variant = variant
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels, self.num_classes, self.eps = channels, num_classes, eps
        conv_cls = conv(spatial_dims)
        # a one-branch variant has no parameters for the branch it drops
        self.score_pos = conv_cls(channels, num_classes, 1) if self.variant != "neg" else None
        self.score_neg = conv_cls(channels, num_classes, 1) if self.variant != "pos" else None
        self.final = conv_cls(num_classes, num_classes, 1) if final_conv else None
        for score in (self.score_pos, self.score_neg):
            if score is not None:
                nn.init.kaiming_normal_(score.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(score.bias)

    @staticmethod
    def _flat(layer: nn.Module | None):
        if layer is None:
            return None, None
        return layer.weight.flatten(1), layer.bias

    def weights(self) -> tuple:
        """``(w_pos, b_pos, w_neg, b_neg, w_out, b_out)``: the 1x1x1 convs as (K, C) matrices
        and biases (None for a branch the variant drops), the arguments of ``omkit.functional.cga``."""
        return (*self._flat(self.score_pos), *self._flat(self.score_neg), *self._flat(self.final))

    def forward(self, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        check_input(self, features, self.spatial_dims, "features")
        return OF.cga(features, guidance, *self.weights(), variant=self.variant, eps=self.eps)

    # -- the window protocol (omkit.models.window_protocol) --

    def guided_terms(self, features: torch.Tensor) -> tuple[torch.Tensor]:
        """CSCI pooling pools ``F`` weighted by Pt and unweighted (``F * Pn`` is their
        difference): the window op forms ``F * Pt`` itself."""
        return (features,)

    def pooled_terms(self, features: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CSCI pooling's sums: ``F * Pt`` and ``F``."""
        return guidance_weighted(self.guided_terms(features), guidance)

    def block_maps(self, sums, count: int) -> tuple:
        """The head as an affine map of each voxel's features and guidance, per pooled
        importance (the L1 normalisation ignores ``count``)."""
        m = reference.importance_from_sums(torch.stack(list(sums), -2), self.eps)
        return reference.cga_block_maps(m, *self.weights(), variant=self.variant)

    def fused_window_logits(self, features: torch.Tensor, guidance: torch.Tensor, geometry: dict) -> tuple:
        """Without gradient: pooling, fold and scores in one op (``omkit.ops.cga_windowed``)."""
        logits, m = ops.cga_windowed(features, guidance, *self.weights(), **geometry, variant=self.variant,
                                     eps=self.eps, return_importance=True)
        return logits, reference.cga_block_maps(m, *self.weights(), variant=self.variant)

    def extra_repr(self) -> str:
        dims = "" if self.spatial_dims == 3 else f", spatial_dims={self.spatial_dims}"
        return f"channels={self.channels}, num_classes={self.num_classes}, variant={self.variant!r}{dims}"


class CGAMinus(CGA):
    """CGA-: the two score maps are summed without the Pt / Pn soft masks."""

    variant = "minus"


class CGATumor(CGA):
    """CGAt: the upper (positive-category) branch only."""

    variant = "pos"


class CGANonTumor(CGA):
    """CGAn: the lower (negative-category) branch only."""

    variant = "neg"
