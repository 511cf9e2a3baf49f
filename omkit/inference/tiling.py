"""Overlap-tile geometry (Sec. III-A of the paper, after U-Net's overlap-tile
strategy): where the tiles go, cutting them out of a volume, and stitching the
kept centre of each tile's prediction back.

Cutting and stitching (``gather_tiles``, ``stitch_tiles``) are ops of
``omkit.ops``; their pure-PyTorch references, re-exported here, are the oracle
the fused kernels are tested against.

Geometry, per axis (``(D, H, W)`` order, D axial): a tile of ``tile_size``
voxels starts at its *origin*; only its centre of ``keep`` voxels, starting
``(tile_size - keep) // 2`` voxels after the origin, is kept. Kept centres
start at the region's first voxel and advance by ``stride``; with
``stride == keep`` they cover the region exactly once. Origins may be negative
and tiles may run past the end of the volume: what lies outside reads as zero
(the brain is zero-padded, like the paper's borders) and is never written.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from omkit.ops.reference import _triple
from omkit.protocol import PATCH_SIZE, TILE_KEEP


def keep_offset(tile_size: Sequence[int], keep: Sequence[int]) -> tuple[int, int, int]:
    """Offset of the kept centre inside a tile: ``(tile_size - keep) // 2`` per axis."""
    tile_size, keep = _triple("tile_size", tile_size), _triple("keep", keep)
    return tuple((r - k) // 2 for r, k in zip(tile_size, keep))  # type: ignore[return-value]


def keep_centre(tile_size: Sequence[int], keep: Sequence[int]) -> tuple[slice, slice, slice]:
    """The slices of a tile's kept centre."""
    return tuple(slice(o, o + k) for o, k in zip(keep_offset(tile_size, keep), _triple("keep", keep)))  # type: ignore[return-value]


def check_geometry(tile_size, stride, keep) -> tuple[tuple[int, int, int], ...]:
    """Validate tile size, stride and kept centre; returns them as triples.
    ``stride=None`` means ``keep``: every voxel predicted exactly once (the
    paper's stride equals its kept centre)."""
    tile_size, keep = _triple("tile_size", tile_size), _triple("keep", keep)
    stride = keep if stride is None else _triple("stride", stride)
    for axis in range(3):
        if not 1 <= keep[axis] <= tile_size[axis]:
            raise ValueError(f"keep {list(keep)} must be between 1 and tile_size {list(tile_size)} on every axis")
        if not 1 <= stride[axis] <= keep[axis]:
            # a stride beyond the kept centre would leave voxels nobody predicts
            raise ValueError(f"stride {list(stride)} must be between 1 and keep {list(keep)} on every axis")
    return tile_size, stride, keep


def tile_origins(
    shape: Sequence[int],
    tile_size: Sequence[int] = PATCH_SIZE,
    stride: Sequence[int] | None = None,
    keep: Sequence[int] = TILE_KEEP,
    bbox: tuple[slice, slice, slice] | None = None,
) -> Tensor:
    """Origins ``(T, 3)`` (int64, D-major order) of the tiles whose kept centres
    cover every voxel of a volume of spatial ``shape`` (or of ``bbox``, a tuple
    of three slices into it); exactly once when ``stride == keep``."""
    shape = _triple("shape", shape)
    tile_size, stride, keep = check_geometry(tile_size, stride, keep)
    offset = keep_offset(tile_size, keep)
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
