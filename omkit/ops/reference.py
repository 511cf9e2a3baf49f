"""Pure-PyTorch references of the tile ops: what the public functions run when
the compiled ops are not available, and (with ``omkit.inference.tiling``, whose
contract they share) the oracle of the kernel tests. The CGA references are
``omkit.functional.category_importance_reference`` / ``cga_reference``.

Kept deliberately simple: one Python-level copy per tile.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _triple(name: str, value) -> tuple[int, int, int]:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, int):
        value = (value,) * 3
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} needs three sizes (D, H, W), got {list(value)}")
    return value  # type: ignore[return-value]


def _clip(start: Sequence[int], size: Sequence[int], shape: Sequence[int]):
    """(volume slices, box slices) of the part of the box inside the volume, or None."""
    vol, box = [], []
    for s, n, limit in zip(start, size, shape):
        lo, hi = max(s, 0), min(s + n, limit)
        if lo >= hi:
            return None
        vol.append(slice(lo, hi))
        box.append(slice(lo - s, hi - s))
    return tuple(vol), tuple(box)


def _check_origins(origins: Tensor) -> None:
    if origins.dim() != 2 or origins.shape[1] != 3:
        raise ValueError(f"origins must be (T, 3), got shape {tuple(origins.shape)}")
    if origins.dtype.is_floating_point or origins.dtype == torch.bool:
        raise TypeError(f"origins must be an integer tensor (int64), got {origins.dtype}")


def gather_tiles(volume: Tensor, origins: Tensor, roi_size) -> Tensor:
    """Tiles ``(T, C, d, h, w)`` cut from ``volume (C, D, H, W)`` at ``origins``; zero outside."""
    if volume.dim() != 4:
        raise ValueError(f"gather_tiles: volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    _check_origins(origins)
    roi = _triple("roi_size", roi_size)
    tiles = volume.new_zeros((origins.shape[0], volume.shape[0], *roi))
    for t, origin in enumerate(origins.tolist()):
        clipped = _clip(origin, roi, volume.shape[1:])
        if clipped is not None:
            vol, box = clipped
            tiles[(t, slice(None)) + box] = volume[(slice(None),) + vol]
    return tiles


def _kept_boxes(tiles: Tensor, origins: Tensor, keep_offset, keep_size, shape):
    """(tile index, volume slices, tile slices) of each kept centre, in tile order."""
    _check_origins(origins)
    offset, size = _triple("keep_offset", keep_offset), _triple("keep_size", keep_size)
    for axis in range(3):
        if offset[axis] < 0 or size[axis] < 0 or offset[axis] + size[axis] > tiles.shape[2 + axis]:
            raise ValueError(f"the kept region (offset {list(offset)}, size {list(size)}) must lie inside "
                             f"the tile {tuple(tiles.shape[2:])}")
    for t, origin in enumerate(origins.tolist()):
        start = [o + k for o, k in zip(origin, offset)]
        clipped = _clip(start, size, shape)
        if clipped is not None:
            vol, kept = clipped
            yield t, vol, tuple(slice(k + s.start, k + s.stop) for k, s in zip(offset, kept))


def stitch_tiles(out: Tensor, tiles: Tensor, origins: Tensor, keep_offset, keep_size) -> Tensor:
    """Write each tile's kept centre into ``out (K, D, H, W)`` at origin + keep_offset,
    clipped to the volume; in place, later tiles win; returns ``out``."""
    if out.dim() != 4 or tiles.dim() != 5 or tiles.shape[1] != out.shape[0]:
        raise ValueError(f"stitch_tiles needs out (K, D, H, W) and tiles (T, K, d, h, w) with the same K, "
                         f"got {tuple(out.shape)} and {tuple(tiles.shape)}")
    for t, vol, box in _kept_boxes(tiles, origins, keep_offset, keep_size, out.shape[1:]):
        out[(slice(None),) + vol] = tiles[(t, slice(None)) + box].to(out.dtype)
    return out


def stitch_tiles_argmax(labels: Tensor, tiles: Tensor, origins: Tensor, keep_offset, keep_size,
                        label_map: Tensor | None = None) -> Tensor:
    """Like :func:`stitch_tiles`, writing ``label_map[argmax over K]`` (or the index) as uint8
    into ``labels (D, H, W)``; returns ``labels``."""
    if labels.dim() != 3 or labels.dtype != torch.uint8 or tiles.dim() != 5:
        raise ValueError(f"stitch_tiles_argmax needs uint8 labels (D, H, W) and tiles (T, K, d, h, w), "
                         f"got {labels.dtype} {tuple(labels.shape)} and {tuple(tiles.shape)}")
    for t, vol, box in _kept_boxes(tiles, origins, keep_offset, keep_size, labels.shape):
        index = tiles[(t, slice(None)) + box].argmax(0)
        labels[vol] = (label_map.to(index.device)[index] if label_map is not None else index).to(torch.uint8)
    return labels
