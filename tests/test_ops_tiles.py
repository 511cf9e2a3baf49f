"""Fused tile gather / stitch ops against their pure-PyTorch reference
(omkit.ops.reference, which omkit.inference.tiling re-exports)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omkit import ops
from omkit.inference import tiling
from omkit.ops import reference as oracle

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason=f"compiled ops not built: {ops.load_error()}")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in ops._library.STATE.kernels.get("gather_tiles", ()) else [])


def random_origins(n, roi, shape, generator):
    """Origins that start before the volume, inside it and past its end."""
    cols = [torch.randint(-r, s + 1, (n,), generator=generator) for r, s in zip(roi, shape)]
    return torch.stack(cols, 1)


def random_volume(c, shape, dtype, generator, device="cpu"):
    if dtype.is_floating_point:
        return torch.randn(c, *shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    if dtype == torch.bool:
        return (torch.rand(c, *shape, generator=generator) > 0.5).to(device)
    return torch.randint(0, 100, (c, *shape), generator=generator).to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.bool])
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_gather_matches_reference(device, dtype, noncontiguous):
    g = torch.Generator().manual_seed(3)
    shape, roi = (7, 9, 11), (4, 5, 6)
    volume = random_volume(3, shape, dtype, g, device)
    if noncontiguous:
        volume = random_volume(3, shape[::-1], dtype, g, device).permute(0, 3, 2, 1)
    origins = random_origins(40, roi, volume.shape[1:], g)
    tiles = ops.gather_tiles(volume, origins, roi)
    expected = oracle.gather_tiles(volume.cpu(), origins, roi)
    assert tiles.shape == (40, 3, *roi) and tiles.dtype == dtype
    assert torch.equal(tiles.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_stitch_paper_layout_covers_exactly_once(device, dtype):
    """Tiles from the inference geometry (stride == keep): stitching gathered tiles rebuilds the volume."""
    g = torch.Generator().manual_seed(7)
    shape, roi, keep = (11, 23, 17), (8, 12, 12), (3, 6, 6)
    offset = tiling.keep_offset(roi, keep)
    origins = tiling.tile_origins(shape, roi, keep, keep)
    volume = random_volume(2, shape, dtype, g, device)
    tiles = ops.gather_tiles(volume, origins, roi)
    out = torch.zeros_like(volume)
    returned = ops.stitch_tiles(out, tiles, origins, offset, keep)
    assert returned is out
    assert torch.equal(out, volume)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cast", [False, True])
def test_stitch_overlapping_later_tiles_win(device, cast):
    g = torch.Generator().manual_seed(11)
    shape, roi, keep, offset = (6, 9, 10), (4, 5, 6), (3, 4, 4), (1, 0, 1)
    origins = random_origins(60, roi, shape, g)  # many overlapping kept regions
    tiles = torch.randn(60, 3, *roi, generator=g).to(device)
    out_dtype = torch.float64 if cast else torch.float32
    out = torch.full((3, *shape), -7.0, dtype=out_dtype, device=device)
    ops.stitch_tiles(out, tiles, origins, offset, keep)
    expected = oracle.stitch_tiles(torch.full((3, *shape), -7.0, dtype=out_dtype), tiles.cpu(), origins, offset, keep)
    assert torch.equal(out.cpu(), expected)


def test_stitch_into_noncontiguous_out():
    g = torch.Generator().manual_seed(13)
    base = torch.zeros(3, 6, 8, 10)
    out = base[::2]  # K = 2, strided
    tiles = torch.randn(9, 2, 3, 4, 5, generator=g)
    origins = random_origins(9, (3, 4, 5), (6, 8, 10), g)
    ops.stitch_tiles(out, tiles, origins, (0, 1, 1), (2, 2, 3))
    expected = oracle.stitch_tiles(torch.zeros(2, 6, 8, 10), tiles, origins, (0, 1, 1), (2, 2, 3))
    assert torch.equal(base[::2], expected) and torch.equal(base[1], torch.zeros(6, 8, 10))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_map", [False, True])
def test_stitch_argmax_matches_reference(device, dtype, with_map):
    g = torch.Generator().manual_seed(17)
    shape, roi, keep, offset = (5, 8, 9), (4, 5, 6), (2, 3, 4), (1, 1, 1)
    origins = random_origins(50, roi, shape, g)
    # small integers: plenty of ties, which must resolve to the first index like torch.argmax
    tiles = torch.randint(0, 3, (50, 5, *roi), generator=g).to(dtype)
    tiles[0, 2, 1, 1, 1] = float("nan")
    tiles, = [tiles.to(device)]
    label_map = torch.tensor([0, 1, 2, 3, 4], dtype=torch.uint8) * 10 if with_map else None
    labels = torch.full(shape, 255, dtype=torch.uint8, device=device)
    returned = ops.stitch_tiles_argmax(labels, tiles, origins, offset, keep, label_map)
    expected = oracle.stitch_tiles_argmax(torch.full(shape, 255, dtype=torch.uint8), tiles.cpu(), origins,
                                                   offset, keep, label_map)
    assert returned is labels
    assert torch.equal(labels.cpu(), expected)


def test_stitch_argmax_equals_stitch_then_argmax():
    """The fused reduction gives what a float score volume + argmax would, without the volume."""
    g = torch.Generator().manual_seed(19)
    shape, roi, keep = (6, 10, 10), (4, 6, 6), (2, 4, 4)
    offset = tuple((r - k) // 2 for r, k in zip(roi, keep))
    origins = torch.stack(torch.meshgrid(*[torch.arange(0, s, k) - o for s, k, o in zip(shape, keep, offset)],
                                         indexing="ij"), -1).reshape(-1, 3)
    tiles = torch.randn(origins.shape[0], 4, *roi, generator=g)
    scores = ops.stitch_tiles(torch.zeros(4, *shape), tiles, origins, offset, keep)
    labels = ops.stitch_tiles_argmax(torch.zeros(shape, dtype=torch.uint8), tiles, origins, offset, keep)
    assert torch.equal(labels, scores.argmax(0).to(torch.uint8))


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
    roi=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    data=st.data(),
    channels=st.integers(1, 4),
    num_tiles=st.integers(0, 12),
)
def test_tile_layout_property(shape, roi, data, channels, num_tiles):
    """Any volume, tile size, kept region and origins (also outside): gather and stitch equal the reference."""
    keep = tuple(data.draw(st.integers(0, r)) for r in roi)
    offset = tuple(data.draw(st.integers(0, r - k)) for r, k in zip(roi, keep))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    origins = random_origins(num_tiles, roi, shape, g).reshape(num_tiles, 3)
    volume = torch.randn(channels, *shape, generator=g)
    tiles = ops.gather_tiles(volume, origins, roi)
    assert torch.equal(tiles, oracle.gather_tiles(volume, origins, roi))
    tiles = tiles + 1.0
    out = ops.stitch_tiles(torch.zeros(channels, *shape), tiles, origins, offset, keep)
    assert torch.equal(out, oracle.stitch_tiles(torch.zeros(channels, *shape), tiles, origins, offset, keep))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_tile_ops(device):
    g = torch.Generator().manual_seed(23)
    volume = torch.randn(2, 5, 6, 7, generator=g).to(device)
    origins = random_origins(6, (3, 4, 4), (5, 6, 7), g).to(device)
    torch.library.opcheck(torch.ops.omkit.gather_tiles.default, (volume, origins, [3, 4, 4]))
    tiles = torch.randn(6, 2, 3, 4, 4, generator=g).to(device)
    torch.library.opcheck(torch.ops.omkit.stitch_tiles_.default,
                          (torch.zeros(2, 5, 6, 7, device=device), tiles, origins, [1, 1, 1], [1, 2, 2]))
    torch.library.opcheck(torch.ops.omkit.stitch_tiles_argmax_.default,
                          (torch.zeros(5, 6, 7, dtype=torch.uint8, device=device), tiles, origins, [1, 1, 1], [1, 2, 2],
                           None))


def test_tile_argument_errors():
    volume = torch.zeros(2, 5, 6, 7)
    origins = torch.zeros(3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="volume must be"):
        torch.ops.omkit.gather_tiles(volume[0], origins, [2, 2, 2])
    with pytest.raises(TypeError, match="integer"):
        torch.ops.omkit.gather_tiles(volume, origins.float(), [2, 2, 2])
    with pytest.raises(ValueError, match="origins must be"):
        torch.ops.omkit.gather_tiles(volume, origins[:, :2], [2, 2, 2])
    with pytest.raises(ValueError, match="tile_size"):
        ops.gather_tiles(volume, origins, [2, 2])
    tiles = torch.zeros(3, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="inside the tile"):
        torch.ops.omkit.stitch_tiles_(torch.zeros(2, 5, 6, 7), tiles, origins, [1, 1, 1], [3, 1, 1])
    with pytest.raises(ValueError, match="same K"):
        torch.ops.omkit.stitch_tiles_(torch.zeros(3, 5, 6, 7), tiles, origins, [0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="rows but there are"):
        torch.ops.omkit.stitch_tiles_(torch.zeros(2, 5, 6, 7), tiles, origins[:2], [0, 0, 0], [1, 1, 1])
    with pytest.raises(TypeError, match="uint8"):
        torch.ops.omkit.stitch_tiles_argmax_(torch.zeros(5, 6, 7), tiles, origins, [0, 0, 0], [1, 1, 1], None)
    with pytest.raises(ValueError, match="label_map"):
        torch.ops.omkit.stitch_tiles_argmax_(torch.zeros(5, 6, 7, dtype=torch.uint8), tiles, origins, [0, 0, 0],
                                             [1, 1, 1], torch.zeros(3, dtype=torch.uint8))
