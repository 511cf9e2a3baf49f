"""Overlap-tile geometry (Sec. III-A of the paper, after U-Net's overlap-tile
strategy): where the tiles go, cutting them out of a volume, and stitching the
kept centre of each tile's prediction back.

Cutting and stitching (``gather_tiles``, ``stitch_tiles``) are ops of
``omkit.ops``; their pure-PyTorch references, re-exported here, are the oracle
the fused kernels are tested against.

Geometry, per axis (``(D, H, W)`` order, D axial): a tile of ``roi_size``
voxels starts at its *origin*; only its centre of ``keep`` voxels, starting
``(roi_size - keep) // 2`` voxels after the origin, is kept. Kept centres
start at the region's first voxel and advance by ``stride``; with
``stride == keep`` they cover the region exactly once. Origins may be negative
and tiles may run past the end of the volume: what lies outside reads as zero
(the brain is zero-padded, like the paper's borders) and is never written.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from omkit.ops.reference import _triple, gather_tiles, stitch_tiles  # noqa: F401  (the contract's reference)

# The paper's patch 32 x 32 x 16, stride 20 x 20 x 5, kept centre 20 x 20 x 5,
# in omkit's (D, H, W) order.
PAPER_ROI_SIZE = (16, 32, 32)
PAPER_STRIDE = (5, 20, 20)
PAPER_KEEP = (5, 20, 20)


def keep_offset(roi_size: Sequence[int], keep: Sequence[int]) -> tuple[int, int, int]:
    """Offset of the kept centre inside a tile: ``(roi_size - keep) // 2`` per axis."""
    roi_size, keep = _triple("roi_size", roi_size), _triple("keep", keep)
    return tuple((r - k) // 2 for r, k in zip(roi_size, keep))  # type: ignore[return-value]


def keep_centre(roi_size: Sequence[int], keep: Sequence[int]) -> tuple[slice, slice, slice]:
    """The slices of a tile's kept centre."""
    return tuple(slice(o, o + k) for o, k in zip(keep_offset(roi_size, keep), _triple("keep", keep)))  # type: ignore[return-value]


def check_geometry(roi_size, stride, keep) -> tuple[tuple[int, int, int], ...]:
    """Validate tile size, stride and kept centre; returns them as triples."""
    roi_size, stride, keep = _triple("roi_size", roi_size), _triple("stride", stride), _triple("keep", keep)
    for axis in range(3):
        if not 1 <= keep[axis] <= roi_size[axis]:
            raise ValueError(f"keep {list(keep)} must be between 1 and roi_size {list(roi_size)} on every axis")
        if not 1 <= stride[axis] <= keep[axis]:
            # a stride beyond the kept centre would leave voxels nobody predicts
            raise ValueError(f"stride {list(stride)} must be between 1 and keep {list(keep)} on every axis")
    return roi_size, stride, keep


def tile_origins(
    shape: Sequence[int],
    roi_size: Sequence[int] = PAPER_ROI_SIZE,
    stride: Sequence[int] = PAPER_STRIDE,
    keep: Sequence[int] = PAPER_KEEP,
    bbox: tuple[slice, slice, slice] | None = None,
) -> Tensor:
    """Origins ``(T, 3)`` (int64, D-major order) of the tiles whose kept centres
    cover every voxel of a volume of spatial ``shape`` (or of ``bbox``, a tuple
    of three slices into it); exactly once when ``stride == keep``."""
    shape = _triple("shape", shape)
    roi_size, stride, keep = check_geometry(roi_size, stride, keep)
    offset = keep_offset(roi_size, keep)
    if bbox is None:
        bbox = tuple(slice(0, n) for n in shape)
    if len(bbox) != 3:
        raise ValueError(f"bbox needs three slices, got {bbox!r}")
    axes = []
    for axis in range(3):
        lo, hi, step = bbox[axis].indices(shape[axis])
        if step != 1:
            raise ValueError(f"bbox slices must have step 1, got {bbox[axis]!r}")
        axes.append(torch.arange(lo, hi, stride[axis], dtype=torch.long) - offset[axis])
    if any(a.numel() == 0 for a in axes):
        return torch.empty(0, 3, dtype=torch.long)
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)
