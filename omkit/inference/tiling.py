"""Overlap-tile geometry (Sec. III-A of the paper, after U-Net's overlap-tile
strategy): where the tiles go, cutting them out of a volume, and stitching the
kept centre of each tile's prediction back.

These are the pure-PyTorch reference functions; fused ops (``omkit.ops``)
follow exactly this contract and are tested against it.

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

# The paper's patch 32 x 32 x 16, stride 20 x 20 x 5, kept centre 20 x 20 x 5,
# in omkit's (D, H, W) order.
PAPER_ROI_SIZE = (16, 32, 32)
PAPER_STRIDE = (5, 20, 20)
PAPER_KEEP = (5, 20, 20)


def _triple(name: str, value: Sequence[int] | int) -> tuple[int, int, int]:
    if isinstance(value, int):
        value = (value,) * 3
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} needs three sizes (D, H, W), got {list(value)}")
    return value  # type: ignore[return-value]


def keep_offset(roi_size: Sequence[int], keep: Sequence[int]) -> tuple[int, int, int]:
    """Offset of the kept centre inside a tile: ``(roi_size - keep) // 2`` per axis."""
    roi_size, keep = _triple("roi_size", roi_size), _triple("keep", keep)
    return tuple((r - k) // 2 for r, k in zip(roi_size, keep))  # type: ignore[return-value]


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


def _clipped(origin: Sequence[int], size: Sequence[int], shape: Sequence[int]):
    """Slices into the volume and into the tile for the part of a box
    (``origin``, ``size``) that lies inside ``shape``; None when nothing does."""
    vol, tile = [], []
    for o, s, n in zip(origin, size, shape):
        lo, hi = max(o, 0), min(o + s, n)
        if lo >= hi:
            return None
        vol.append(slice(lo, hi))
        tile.append(slice(lo - o, hi - o))
    return tuple(vol), tuple(tile)


def gather_tiles(volume: Tensor, origins: Tensor, roi_size: Sequence[int]) -> Tensor:
    """Cut tiles ``(T, C, d, h, w)`` out of ``volume (C, D, H, W)`` at ``origins``;
    voxels outside the volume are zero."""
    if volume.dim() != 4:
        raise ValueError(f"volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    roi_size = _triple("roi_size", roi_size)
    tiles = volume.new_zeros((origins.shape[0], volume.shape[0], *roi_size))
    for t, origin in enumerate(origins.tolist()):
        box = _clipped(origin, roi_size, volume.shape[1:])
        if box is not None:
            vol, tile = box
            tiles[(t, slice(None)) + tile] = volume[(slice(None),) + vol]
    return tiles


def stitch_tiles(
    out: Tensor,
    tiles: Tensor,
    origins: Tensor,
    keep_offset: Sequence[int] | Tensor,
    keep_size: Sequence[int] | Tensor,
) -> Tensor:
    """Write the kept centre of each tile ``(T, K, d, h, w)`` into ``out (K, D, H, W)``
    at ``origin + keep_offset``, clipped to the volume; in place, returns ``out``.
    Where kept centres overlap (stride < keep) later tiles win."""
    if out.dim() != 4 or tiles.dim() != 5 or tiles.shape[1] != out.shape[0]:
        raise ValueError(
            f"stitch_tiles needs out (K, D, H, W) and tiles (T, K, d, h, w) with the same K, "
            f"got {tuple(out.shape)} and {tuple(tiles.shape)}"
        )
    offset = [int(v) for v in (keep_offset.tolist() if isinstance(keep_offset, Tensor) else keep_offset)]
    size = [int(v) for v in (keep_size.tolist() if isinstance(keep_size, Tensor) else keep_size)]
    for t, origin in enumerate(origins.tolist()):
        start = [o + k for o, k in zip(origin, offset)]
        box = _clipped(start, size, out.shape[1:])
        if box is not None:
            vol, kept = box
            tile_index = tuple(slice(k + s.start, k + s.stop) for k, s in zip(offset, kept))
            out[(slice(None),) + vol] = tiles[(t, slice(None)) + tile_index].to(out.dtype)
    return out
