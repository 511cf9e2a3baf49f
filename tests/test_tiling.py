"""Overlap-tile geometry: coverage, gathering with zero padding, stitching."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omkit.inference import keep_offset, overlap_tile_inference, tile_origins
from omkit.ops.reference import gather_tiles, stitch_tiles
from omkit.protocol import PATCH_SIZE, TILE_KEEP


def coverage(shape, origins, tile_size, keep):
    """How often each voxel lies in a kept centre (independent of stitch_tiles)."""
    count = torch.zeros(shape, dtype=torch.int64)
    offset = keep_offset(tile_size, keep)
    for origin in origins.tolist():
        box = tuple(slice(max(o + k, 0), max(min(o + k + s, n), 0)) for o, k, s, n in zip(origin, offset, keep, shape))
        count[box] += 1
    return count


def test_paper_geometry_covers_every_voxel_once():
    shape = (23, 47, 61)
    origins = tile_origins(shape)
    assert origins.dtype == torch.long and origins.shape[1] == 3
    # the first kept centre starts at voxel 0: origin = -(roi - keep) // 2
    assert origins[0].tolist() == [-5, -6, -6]
    assert coverage(shape, origins, PATCH_SIZE, TILE_KEEP).eq(1).all()
    assert origins.shape[0] == 5 * 3 * 4  # ceil(23/5) * ceil(47/20) * ceil(61/20)


def test_bbox_tiles_cover_only_the_box_once():
    shape = (20, 40, 40)
    bbox = (slice(3, 17), slice(5, 30), slice(0, 40))
    count = coverage(shape, tile_origins(shape, bbox=bbox), PATCH_SIZE, TILE_KEEP)
    assert count[bbox].eq(1).all()
    # kept centres may run past the box (not past the volume) but never start before it
    assert count[:3].sum() == 0 and count[:, :5].sum() == 0


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 30)] * 3),
    roi=st.tuples(*[st.integers(1, 12)] * 3),
    data=st.data(),
)
def test_coverage_property(shape, roi, data):
    keep = tuple(data.draw(st.integers(1, r)) for r in roi)
    stride = tuple(data.draw(st.integers(1, k)) for k in keep)
    count = coverage(shape, tile_origins(shape, roi, keep, keep), roi, keep)
    assert count.eq(1).all()  # stride == keep: exactly once
    assert coverage(shape, tile_origins(shape, roi, stride, keep), roi, keep).ge(1).all()


def test_gather_pads_with_zeros():
    volume = torch.arange(1, 2 * 4 * 5 * 6 + 1, dtype=torch.float32).reshape(2, 4, 5, 6)
    tiles = gather_tiles(volume, torch.tensor([[-1, -2, 3], [0, 0, 0]]), (3, 4, 5))
    assert tiles.shape == (2, 2, 3, 4, 5)
    # tile 0 covers D -1..1, H -2..1, W 3..7: inside part D 0..1, H 0..1, W 3..5
    assert torch.equal(tiles[0, :, 1:, 2:, :3], volume[:, 0:2, 0:2, 3:6])
    assert tiles[0, :, 0].abs().sum() == 0 and tiles[0, :, :, :2].abs().sum() == 0 and tiles[0, :, :, :, 3:].abs().sum() == 0
    assert torch.equal(tiles[1], volume[:, :3, :4, :5])


def test_stitch_writes_kept_centre_clipped():
    out = torch.full((1, 6, 6, 6), -1.0)
    tiles = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(1, 1, 4, 4, 4)
    stitch_tiles(out, tiles, torch.tensor([[-1, 3, 0]]), (1, 1, 1), (2, 2, 2))
    # kept centre spans D 0..1, H 4..5, W 1..2 of the volume
    assert torch.equal(out[0, 0:2, 4:6, 1:3], tiles[0, 0, 1:3, 1:3, 1:3])
    assert (out == -1).sum() == out.numel() - 8


@pytest.mark.parametrize("tile_size,stride,keep", [(PATCH_SIZE, TILE_KEEP, TILE_KEEP), ((8, 16, 16), (4, 8, 8), (4, 8, 8)), ((8, 16, 16), (3, 5, 7), (4, 8, 8))])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_identity_network_stitches_input_exactly(tile_size, stride, keep, batch_size):
    volume = torch.randn(3, 17, 29, 41)
    calls = []

    def identity(batch):
        calls.append(batch.shape[0])
        return batch

    out = overlap_tile_inference(volume, identity, 3, tile_size=tile_size, tile_stride=stride, tile_keep=keep, tile_batch=batch_size)
    assert torch.equal(out, volume)
    origins = tile_origins(volume.shape[1:], tile_size, stride, keep)
    assert sum(calls) == origins.shape[0] and max(calls) <= batch_size
    if stride == keep:
        assert coverage(volume.shape[1:], origins, tile_size, keep).eq(1).all()


def test_predictor_may_return_only_the_kept_centre():
    from omkit.inference.tiling import keep_centre

    volume = torch.randn(2, 17, 29, 41)
    tile_size, stride, keep = (8, 16, 16), (4, 8, 8), (4, 8, 8)
    centre = keep_centre(tile_size, keep)
    out = overlap_tile_inference(volume, lambda b: b[(slice(None), slice(None)) + centre], 2,
                                 tile_size=tile_size, tile_stride=stride, tile_keep=keep, tile_batch=5)
    assert torch.equal(out, volume)


def test_only_masked_tiles_are_computed():
    volume = torch.randn(1, 20, 60, 60)
    mask = torch.zeros(20, 60, 60, dtype=torch.bool)
    mask[7, 30, 30] = True
    seen = []
    out = overlap_tile_inference(volume, lambda b: seen.append(b.shape[0]) or b, 1, only_touching=mask, out_dtype=torch.float64)
    assert sum(seen) == 1
    assert out[0, 5:10, 20:40, 20:40].equal(volume[0, 5:10, 20:40, 20:40].double())
    assert out.abs().sum() == out[0, 5:10, 20:40, 20:40].abs().sum()


def test_bad_geometry_is_an_error():
    with pytest.raises(ValueError, match="stride"):
        tile_origins((10, 10, 10), (4, 4, 4), (3, 3, 3), (2, 2, 2))
    with pytest.raises(ValueError, match="keep"):
        tile_origins((10, 10, 10), (4, 4, 4), (2, 2, 2), (5, 2, 2))
    with pytest.raises(ValueError, match="predictor returned"):
        overlap_tile_inference(torch.zeros(1, 8, 8, 8), lambda b: b[:, :, :2], 1, tile_size=(4, 4, 4), tile_stride=2, tile_keep=2)
