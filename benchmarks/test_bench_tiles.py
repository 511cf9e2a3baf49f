"""Overlap-tile gather + stitch of a whole case: a 4 x 155 x 240 x 240 volume
(BraTS size) with the paper's tiles (16 x 32 x 32, kept centre and stride
5 x 20 x 20; 4464 tiles), processed in batches of 128 tiles as inference does.
The "prediction" is the identity, so what is timed is exactly the cutting and
stitching.

* ``reference``: the Python-loop reference functions (omkit.inference.tiling);
* ``fused``: omkit.ops.gather_tiles / stitch_tiles;
* ``*-labels``: stitch straight to uint8 class labels (reference: float scores
  stitched, then argmax over the volume; fused: stitch_tiles_argmax, no float
  volume);
* ``monai``: MONAI's ``sliding_window_inference`` with the same tile size and
  stride (``mode="constant"``: it blends each whole tile and normalises by the
  overlap count) and the same batch, around the same identity predictor
  (optional: skipped without MONAI).
"""
from __future__ import annotations

import pytest
import torch

from omkit import ops
from omkit.ops import reference as oracle

from .conftest import SMOKE, record_bandwidth


SHAPE = (20, 40, 40) if SMOKE else (155, 240, 240)
CHANNELS = 4
ROI, KEEP = (16, 32, 32), (5, 20, 20)
OFFSET = tuple((r - k) // 2 for r, k in zip(ROI, KEEP))
BATCH = 128


def origins_for(shape):
    axes = [torch.arange(0, n, k) - o for n, k, o in zip(shape, KEEP, OFFSET)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def round_trip(gather, stitch, volume, origins, out):
    for start in range(0, origins.shape[0], BATCH):
        batch = origins[start:start + BATCH]
        stitch(out, gather(volume, batch, ROI), batch, OFFSET, KEEP)
    return out


def labels_reference(volume, origins, labels):
    scores = torch.zeros_like(volume)
    round_trip(oracle.gather_tiles, oracle.stitch_tiles, volume, origins, scores)
    labels.copy_(scores.argmax(0).to(torch.uint8))
    return labels


def labels_fused(volume, origins, labels):
    return round_trip(ops.gather_tiles, ops.stitch_tiles_argmax, volume, origins, labels)


def monai_round_trip(volume, out):
    from monai.inferers import sliding_window_inference

    # MONAI's scan interval is int(roi * (1 - overlap)): aim just above the stride
    overlap = [1.0 - (k + 1e-3) / r for k, r in zip(KEEP, ROI)]
    out.copy_(sliding_window_inference(volume[None], ROI, BATCH, lambda tiles: tiles, overlap=overlap,
                                       mode="constant", padding_mode="constant")[0])
    return out


def monai_tile_count(shape) -> int:
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    interval = _get_scan_interval(shape, ROI, 3, [1.0 - (k + 1e-3) / r for k, r in zip(KEEP, ROI)])
    return len(dense_patch_slices(shape, ROI, interval))


@pytest.mark.parametrize("impl", ["reference", "fused", "monai", "reference-labels", "fused-labels"])
def test_tiles_round_trip(benchmark, run_benchmark, device, impl):
    if impl.startswith("fused") and not ops.extension_loaded():
        pytest.skip(f"compiled ops not built: {ops.load_error()}")
    if impl == "monai":
        pytest.importorskip("monai", reason="MONAI is an optional benchmark dependency")
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(CHANNELS, *SHAPE, generator=g).to(device)
    origins = origins_for(SHAPE)
    labels_out = impl.endswith("labels")
    out = torch.empty(SHAPE, dtype=torch.uint8, device=device) if labels_out else torch.empty_like(volume)
    if impl == "reference":
        def step():
            return round_trip(oracle.gather_tiles, oracle.stitch_tiles, volume, origins, out)
    elif impl == "fused":
        def step():
            return round_trip(ops.gather_tiles, ops.stitch_tiles, volume, origins, out)
    elif impl == "monai":
        def step():
            return monai_round_trip(volume, out)
    elif impl == "reference-labels":
        def step():
            return labels_reference(volume, origins, out)
    else:
        def step():
            return labels_fused(volume, origins, out)

    step()
    expected = volume.argmax(0).to(torch.uint8) if labels_out else volume
    if impl == "monai":  # overlapping tiles averaged: equal up to rounding
        torch.testing.assert_close(out, expected)
    else:
        assert torch.equal(out, expected)  # stride == keep: every voxel written exactly once
    tiles = monai_tile_count(SHAPE) if impl == "monai" else int(origins.shape[0])
    run_benchmark(step, rounds=3, group="tiles gather+stitch", impl=impl, tiles=tiles)
    tile_bytes = origins.shape[0] * CHANNELS * torch.Size(ROI).numel() * 4
    # gathered tiles written and read once, the volume read and the output written once
    record_bandwidth(benchmark, 2 * tile_bytes + volume.numel() * 4 + out.numel() * out.element_size())
