"""Overlap-tile inference over one volume: batched tiles, only where asked
(a bounding box, or the tiles whose kept centre touches a mask), each batch's
prediction cropped to its kept centre on the compute device before it moves.

In MONAI's ``sliding_window_inference`` terms: ``tile_size`` is its
``roi_size``, ``tile_batch`` its ``sw_batch_size``, ``device`` its ``sw_device``
(where the network runs) and ``output_device`` its ``device``; ``tile_stride`` and
``tile_keep`` replace its ``overlap`` because the paper keeps only each tile's centre
instead of blending whole windows. ("ROI" in omkit means task 2's region, never a tile.)
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

from omkit.deprecation import renamed_keywords
from omkit.protocol import PATCH_SIZE, TILE_KEEP

from .tiling import check_geometry, keep_centre, keep_offset, tile_origins


def tile_ops():
    """``(gather_tiles, stitch_tiles)`` of ``omkit.ops``: the compiled kernels
    when built, their reference otherwise."""
    from omkit import ops

    return ops.gather_tiles, ops.stitch_tiles


def tiles_touching(mask: Tensor, origins: Tensor, tile_size: Sequence[int], keep: Sequence[int]) -> Tensor:
    """The origins whose kept centre contains at least one voxel of ``mask (D, H, W)``."""
    offset = keep_offset(tile_size, keep)
    mask = mask.to("cpu", torch.bool)
    shape = mask.shape
    selected = []
    for t, origin in enumerate(origins.tolist()):
        box = []
        for o, k, size, n in zip(origin, offset, keep, shape):
            lo, hi = max(o + k, 0), min(o + k + size, n)
            box.append(slice(lo, max(lo, hi)))
        if mask[tuple(box)].any():
            selected.append(t)
    return origins[torch.tensor(selected, dtype=torch.long)] if selected else origins[:0]


@renamed_keywords(stride="tile_stride", keep="tile_keep", batch_size="tile_batch")
def overlap_tile_inference(
    inputs: Tensor,
    predictor: Callable[[Tensor], Tensor],
    out_channels: int,
    *,
    tile_size: Sequence[int] = PATCH_SIZE,
    tile_stride: Sequence[int] | None = None,
    tile_keep: Sequence[int] = TILE_KEEP,
    tile_batch: int = 16,
    bbox: tuple[slice, slice, slice] | None = None,
    only_touching: Tensor | None = None,
    origins: Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    progress: bool = False,
    sw_device: torch.device | str | None = None,
) -> Tensor:
    """Predict ``inputs (C, D, H, W)`` tile by tile and stitch the kept centres.

    ``predictor`` maps a batch ``(B, C, *tile_size)`` on ``device`` to
    ``(B, out_channels, *tile_size)``, or to ``(B, out_channels, *tile_keep)`` when it
    already cropped the kept centre (``keep_centre``: cheaper when it reduces
    probabilities to labels, since only the centre is stitched); reduce there
    (probabilities, labels) before returning so that only what is kept travels. Tiles: ``origins`` if
    given, else those covering ``bbox`` (default: the whole volume), restricted
    to the ones whose kept centre touches ``only_touching`` when given. Voxels no
    computed tile covers stay zero. Returns ``(out_channels, D, H, W)`` of
    ``out_dtype`` on ``output_device`` (default: ``device``). The inputs move to
    ``device`` (default: theirs) once; tiles are cut there. The MONAI-style pair
    ``sw_device=`` (compute) with ``device=`` (output) still works, with a
    ``DeprecationWarning``.
    """
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be (C, D, H, W), got shape {tuple(inputs.shape)}")
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be at least 1, got {tile_batch}")
    if sw_device is not None:  # the MONAI-style pair: sw_device computes, device holds the output
        warnings.warn("overlap_tile_inference(sw_device=...) is deprecated: device= is where the network runs, "
                      "output_device= where the output goes", DeprecationWarning, stacklevel=3)
        device, output_device = sw_device, (device if output_device is None else output_device)
    tile_size, stride, keep = check_geometry(tile_size, tile_stride, tile_keep)
    spatial = tuple(inputs.shape[1:])
    compute = torch.device(device) if device is not None else inputs.device
    output = torch.device(output_device) if output_device is not None else compute
    if origins is None:
        origins = tile_origins(spatial, tile_size, stride, keep, bbox)
        if only_touching is not None:
            origins = tiles_touching(only_touching, origins, tile_size, keep)
    gather, stitch = tile_ops()
    inputs = inputs.to(compute)
    out = torch.zeros((out_channels, *spatial), dtype=out_dtype, device=output)
    offset = keep_offset(tile_size, keep)
    centre = keep_centre(tile_size, keep)
    offset_t = torch.tensor(offset, dtype=torch.long)
    starts = range(0, origins.shape[0], tile_batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="tiles", unit="batch", leave=False)
    for start in starts:
        batch_origins = origins[start : start + tile_batch]
        batch = gather(inputs, batch_origins.to(compute), tile_size)
        pred = predictor(batch)
        if pred.shape[:2] != (batch.shape[0], out_channels) or tuple(pred.shape[2:]) not in (tile_size, keep):
            raise ValueError(
                f"predictor returned shape {tuple(pred.shape)}, expected "
                f"({batch.shape[0]}, {out_channels}, {', '.join(map(str, tile_size))}) or its kept centre "
                f"({batch.shape[0]}, {out_channels}, {', '.join(map(str, keep))})"
            )
        if tuple(pred.shape[2:]) != keep:
            pred = pred[(slice(None), slice(None)) + centre]
        kept = pred.to(output, out_dtype)
        # the cropped centres are tiles of size keep starting at origin + offset
        stitch(out, kept.contiguous(), (batch_origins + offset_t).to(output), (0, 0, 0), keep)
    return out
