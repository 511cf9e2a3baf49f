"""Local stages over a large volume in slabs of planes along D: the same function as the
whole stage, holding only one slab's temporaries at a time.

A *local* stage is a chain of stride-1 convolutions with pointwise layers between them
(BatchNorm in eval mode, ReLU, residual sums): its output at a plane depends on the
input's planes within its *reach* (the sum of its convolutions' half-widths along D) and
nothing else. Computing the output planes ``[o0, o1)`` from the input planes
``[o0 - reach, o1 + reach)`` (clipped to the volume) gives exactly the whole stage's
values there: inside the volume each convolution reads the same neighbours, and at the
volume's ends the slab ends too, so every convolution pads the same zeros as the whole
stage does. Only the order of float sums inside a convolution backend may differ.

Dense inference uses this for the full-resolution stages, where a whole-region map of 32
channels is about 0.5 GB on a BraTS case (``FusionNet3D.slab_forward``, ``PlainHead``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

# bytes of a slab's widest activation when the caller names no slab size: large enough
# that the reach's recomputed planes stay a small share, small enough to stay cheap
SLAB_BYTES = 64 << 20


def conv_reach(stage: nn.Module) -> int:
    """Input planes a local ``stage``'s output plane reads on each side along D: the sum
    of its convolutions' half-widths. A ``ValueError`` naming the layer when the stage is
    not local (a convolution with a stride along D, a pooling or an upsampling)."""
    reach = 0
    for name, layer in stage.named_modules():
        if isinstance(layer, (nn.ConvTranspose3d, nn.MaxPool3d, nn.AvgPool3d, nn.Upsample)):
            raise ValueError(f"{type(layer).__name__} {name!r} changes the resolution: not a local stage")
        if isinstance(layer, nn.Conv3d):
            if layer.stride[0] != 1 or isinstance(layer.padding, str):
                raise ValueError(f"Conv3d {name!r} has a stride or string padding along D: not a local stage")
            reach += layer.dilation[0] * (layer.kernel_size[0] - 1) // 2
    return reach


def default_planes(x: Tensor, channels: int) -> int:
    """Slab planes whose widest map (``channels`` maps of ``x``'s planes) is about :data:`SLAB_BYTES`."""
    plane = x.shape[0] * channels * x.shape[3] * x.shape[4] * x.element_size()
    return max(1, SLAB_BYTES // max(plane, 1))


def local_in_slabs(stage: Callable[[Tensor], Tensor], x: Tensor, planes: int, reach: int) -> Tensor:
    """``stage(x)`` for a local stage of the given ``reach`` (see the module docstring),
    ``planes`` output planes at a time; the output is allocated once, whole."""
    depth = x.shape[2]
    if planes >= depth:
        return stage(x)
    out = None
    for o0 in range(0, depth, planes):
        o1 = min(depth, o0 + planes)
        i0, i1 = max(0, o0 - reach), min(depth, o1 + reach)
        part = stage(x[:, :, i0:i1])
        if out is None:
            out = part.new_empty((*part.shape[:2], depth, *part.shape[3:]))
        out[:, :, o0:o1] = part[:, :, o0 - i0:o1 - i0]
    return out


def merge_in_place(stage: Callable[[Tensor, Tensor], Tensor], coarse: Tensor, skip: Tensor, planes: int,
                   reach: int, scale: int) -> Tensor:
    """``stage(coarse, skip)`` written over ``skip`` (same shape as the output), ``planes``
    output planes at a time: a decoder level that upsamples ``coarse`` by ``scale`` along D
    (each coarse plane makes ``scale`` planes, no reach of its own), merges ``skip`` and runs
    a local stage of ``reach``. The skip's planes a later slab still reads are kept aside
    before they are overwritten, so the level needs no second whole-size map. ``planes`` and
    ``reach`` are rounded up to multiples of ``scale``; ``planes`` to at least ``reach``."""
    depth = skip.shape[2]
    reach = -(-reach // scale) * scale
    planes = max(reach, -(-planes // scale) * scale)
    if planes >= depth:
        return stage(coarse, skip)
    kept = None  # the skip's planes [o0 - reach, o0), saved before the previous slab overwrote them
    for o0 in range(0, depth, planes):
        o1 = min(depth, o0 + planes)
        i0, i1 = max(0, o0 - reach), min(depth, o1 + reach)
        part = skip[:, :, i0:i1] if kept is None else torch.cat([kept, skip[:, :, o0:i1]], 2)
        kept = skip[:, :, max(o0, o1 - reach):o1].clone()
        out = stage(coarse[:, :, i0 // scale:i1 // scale], part)
        skip[:, :, o0:o1] = out[:, :, o0 - i0:o1 - i0]
    return skip
