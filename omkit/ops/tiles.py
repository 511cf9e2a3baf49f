"""The overlap-tile op family, every piece in one place: the public functions
:func:`gather_tiles`, :func:`stitch_tiles` (in place) and :func:`stitch_tiles_argmax`
(uint8 class labels straight from the tiles' scores, without a float full-volume buffer),
their pure-PyTorch references (the contract of ``omkit.inference.tiling``, kept
deliberately simple: one Python-level copy per tile), the ops' fake kernels and the ops'
entries (:data:`OPS`). C++: ``csrc/tiles_common.{h,cpp}`` and each backend's
``tiles_kernel.*``. The kernels move raw elements, so they take any dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from omkit.deprecation import renamed_keywords
from omkit.ops._library import call
from omkit.ops.spec import KERNEL_BACKENDS, Op

# The tile kernels move raw elements (1, 2, 4 or 8 bytes): any dtype on every backend.
TILE_DTYPES = {backend.device_type: None for backend in KERNEL_BACKENDS}


# ---- references --------------------------------------------------------------------------------

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


def gather_tiles_reference(volume: Tensor, origins: Tensor, tile_size) -> Tensor:
    """Tiles ``(T, C, d, h, w)`` cut from ``volume (C, D, H, W)`` at ``origins``; zero outside."""
    if volume.dim() != 4:
        raise ValueError(f"gather_tiles: volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    _check_origins(origins)
    roi = _triple("tile_size", tile_size)
    tiles = volume.new_zeros((origins.shape[0], volume.shape[0], *roi))
    for t, origin in enumerate(origins.tolist()):
        clipped = _clip(origin, roi, volume.shape[1:])
        if clipped is not None:
            vol, box = clipped
            tiles[(t, slice(None)) + box] = volume[(slice(None),) + vol]
    return tiles


def _kept_boxes(tiles: Tensor, origins: Tensor, keep_offset, tile_keep, shape):
    """(tile index, volume slices, tile slices) of each kept centre, in tile order."""
    _check_origins(origins)
    offset, size = _triple("keep_offset", keep_offset), _triple("tile_keep", tile_keep)
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


def stitch_tiles_reference(out: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep) -> Tensor:
    """Write each tile's kept centre into ``out (K, D, H, W)`` at origin + keep_offset,
    clipped to the volume; in place, later tiles win; returns ``out``."""
    if out.dim() != 4 or tiles.dim() != 5 or tiles.shape[1] != out.shape[0]:
        raise ValueError(f"stitch_tiles needs out (K, D, H, W) and tiles (T, K, d, h, w) with the same K, "
                         f"got {tuple(out.shape)} and {tuple(tiles.shape)}")
    for t, vol, box in _kept_boxes(tiles, origins, keep_offset, tile_keep, out.shape[1:]):
        out[(slice(None),) + vol] = tiles[(t, slice(None)) + box].to(out.dtype)
    return out


def stitch_tiles_argmax_reference(labels: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep,
                        label_map: Tensor | None = None) -> Tensor:
    """Like :func:`stitch_tiles_reference`, writing ``label_map[argmax over K]`` (or the index) as uint8
    into ``labels (D, H, W)``; returns ``labels``."""
    if labels.dim() != 3 or labels.dtype != torch.uint8 or tiles.dim() != 5:
        raise ValueError(f"stitch_tiles_argmax needs uint8 labels (D, H, W) and tiles (T, K, d, h, w), "
                         f"got {labels.dtype} {tuple(labels.shape)} and {tuple(tiles.shape)}")
    for t, vol, box in _kept_boxes(tiles, origins, keep_offset, tile_keep, labels.shape):
        index = tiles[(t, slice(None)) + box].argmax(0)
        labels[vol] = (label_map.to(index.device)[index] if label_map is not None else index).to(torch.uint8)
    return labels


# ---- public functions --------------------------------------------------------------------------

def _as_list3(name: str, value) -> list[int]:
    return list(_triple(name, value))


@renamed_keywords(roi_size="tile_size")
def gather_tiles(volume: Tensor, origins: Tensor, tile_size) -> Tensor:
    """Tiles ``(T, C, d, h, w)`` cut out of ``volume (C, D, H, W)`` at ``origins``
    (int64 ``(T, 3)``, may be negative or run past the end); zero outside."""
    return call("gather_tiles", volume, origins, _as_list3("tile_size", tile_size))


@renamed_keywords(keep_size="tile_keep")
def stitch_tiles(out: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep) -> Tensor:
    """Write ``tiles[i, :, ko:ko+ks]`` into ``out (K, D, H, W)`` at ``origins[i] + ko``,
    clipped to the volume, in place (later tiles win where kept regions overlap);
    returns ``out``."""
    call("stitch_tiles", out, tiles, origins, _as_list3("keep_offset", keep_offset), _as_list3("tile_keep", tile_keep))
    return out


@renamed_keywords(keep_size="tile_keep")
def stitch_tiles_argmax(
    labels: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep, label_map: Tensor | None = None
) -> Tensor:
    """Like :func:`stitch_tiles` but reduces on the fly: ``labels (D, H, W)`` uint8
    gets ``label_map[argmax_k tiles[i, k]]`` (the class index when ``label_map`` is
    None) over each kept centre, so no float full-volume score map is needed.
    Ties and NaNs follow ``torch.argmax``. Returns ``labels``."""
    ko, ks = _as_list3("keep_offset", keep_offset), _as_list3("tile_keep", tile_keep)
    call("stitch_tiles_argmax", labels, tiles, origins, ko, ks, label_map)
    return labels


# ---- fake kernels (registered by omkit.ops._meta) ----------------------------------------------

def _gather_tiles_fake(volume, origins, tile_size):
    if volume.dim() != 4:
        raise ValueError(f"gather_tiles: volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    if origins.dim() != 2 or origins.shape[1] != 3:
        raise ValueError(f"gather_tiles: origins must be (T, 3), got shape {tuple(origins.shape)}")
    return volume.new_empty((origins.shape[0], volume.shape[0], *tile_size))


def _stitch_tiles_fake(out, tiles, origins, keep_offset, tile_keep):
    return None


def _stitch_tiles_argmax_fake(labels, tiles, origins, keep_offset, tile_keep, label_map):
    return None


OPS: tuple[Op, ...] = (
    Op("gather_tiles", "gather_tiles", ("gather_tiles",), TILE_DTYPES, gather_tiles_reference, _gather_tiles_fake,
       autocast="keep"),
    Op("stitch_tiles", "stitch_tiles_", ("stitch_tiles",), TILE_DTYPES, stitch_tiles_reference, _stitch_tiles_fake,
       inplace=True, autocast="keep"),
    Op("stitch_tiles_argmax", "stitch_tiles_argmax_", ("stitch_tiles_argmax",), TILE_DTYPES,
       stitch_tiles_argmax_reference, _stitch_tiles_argmax_fake, inplace=True, autocast="keep"),
)
