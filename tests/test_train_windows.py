"""Window-consistent training (``--train-mode windows``, ``omkit.training.windows``) and the
inference default that follows from it (``--inference auto``).

The oracle of the training pass: with a backbone without spatial context (1x1x1 convs) and
the heads' 3x3x3 convs cut to their centre tap, a crop's supervised blocks computed at once
must equal each block's window computed alone as a paper-style tile, keeping the block:
the same logits, the same loss and the same gradient for every parameter, for plain, SE
and CGA heads, with online data transfer."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import omkit
from omkit.cli import main
from omkit.data.synthetic import make_dataset
from omkit.inference import SegmentationPredictor, TileSettings
from omkit.training import TrainConfig, train
from omkit.training.windows import WindowGrid, forward_tasks

from conftest import TINY_WIDTH, PointwiseBackbone, ScaleAttention, centre_taps_only

GRID = WindowGrid(window=(8, 16, 16), block=(4, 8, 8), blocks=(2, 2, 2), context=(2, 4, 4))


@omkit.hookimpl
def _backbones(registry):
    registry.add("pointwise_windows_test", PointwiseBackbone)


@omkit.hookimpl
def _attention(registry):
    registry.add("scale_windows_test", ScaleAttention)


@pytest.fixture(scope="module", autouse=True)
def plugins():
    plugin = types.SimpleNamespace(omkit_register_backbones=_backbones, omkit_register_attention=_attention)
    omkit.setup_plugins(extra_plugins={"windows_test_plugin": plugin})
    yield
    omkit.setup_plugins()


def test_grid_geometry():
    assert GRID.offset == (2, 4, 4) and GRID.origin == (4, 8, 8)
    assert GRID.supervised == (8, 16, 16) and GRID.crop == (16, 32, 32)
    assert GRID.supervised_slices == (slice(4, 12), slice(8, 24), slice(8, 24))
    # the paper's window, 8 x 24 x 24 blocks: the crop is rounded up to the backbone's divisor
    paper = WindowGrid((16, 32, 32), (8, 24, 24), (2, 2, 2), (8, 16, 16))
    assert paper.crop == (40, 88, 88) and paper.origin == (12, 20, 20)
    with pytest.raises(ValueError, match="must fit in the window"):
        WindowGrid((8, 16, 16), (10, 8, 8), (1, 1, 1), (0, 0, 0))


def _tiles_of(crops: torch.Tensor) -> torch.Tensor:
    """Every block's window of every crop, as tiles (N * blocks, C, *window), crop-major."""
    tiles = []
    for crop in crops:
        for i in range(GRID.blocks[0]):
            for j in range(GRID.blocks[1]):
                for k in range(GRID.blocks[2]):
                    lo = [g - o + n * b for g, o, n, b in zip(GRID.origin, GRID.offset, (i, j, k), GRID.block)]
                    tiles.append(crop[(slice(None),) + tuple(slice(a, a + w) for a, w in zip(lo, GRID.window))])
    return torch.stack(tiles)


def _blocks_to_supervised(kept: torch.Tensor, crops: int) -> torch.Tensor:
    """Tiles' kept centres (N * blocks, K, *block), crop-major, back into (N, K, *supervised)."""
    nd, nh, nw = GRID.blocks
    bd, bh, bw = GRID.block
    k = kept.shape[1]
    x = kept.reshape(crops, nd, nh, nw, k, bd, bh, bw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(crops, k, nd * bd, nh * bh, nw * bw)


def _loss_and_grads(model, outputs, targets):
    model.zero_grad()
    loss = sum(F.cross_entropy(o, t) for o, t in zip(outputs, targets) if o is not None)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", ["omnet", "omnet_se", "omnet_cga"])
def test_a_train_step_equals_its_windows_trained_as_tiles(preset):
    torch.manual_seed(0)
    model = omkit.create_model(preset, width=TINY_WIDTH, backbone="pointwise_windows_test")
    model = centre_taps_only(model).double().eval()  # eval: BatchNorm by its running statistics on both sides
    gen = torch.Generator().manual_seed(1)
    crops = [torch.randn((2, 4, *GRID.crop), generator=gen, dtype=torch.float64) for _ in range(3)]
    labels = [torch.randint(0, k, (2, *GRID.supervised), generator=gen) for k in (5, 5, 2)]
    transfers = {1: [(0, torch.tensor([1]))]}  # task 1's second crop also trains task 2

    windowed = forward_tasks(model, crops, transfers, GRID)
    targets = [labels[0], torch.cat([labels[1], labels[0][1:]]), labels[2]]
    loss_w, grads_w = _loss_and_grads(model, windowed, targets)

    per_crop = GRID.blocks[0] * GRID.blocks[1] * GRID.blocks[2]
    tile_transfers = {1: [(0, torch.arange(per_crop, 2 * per_crop))]}
    tiled = model.forward_tasks([_tiles_of(c) for c in crops], tile_transfers)
    centre = (slice(None), slice(None)) + tuple(slice(o, o + b) for o, b in zip(GRID.offset, GRID.block))
    kept = [_blocks_to_supervised(t[centre], t.shape[0] // per_crop) for t in tiled]
    for got, want in zip(windowed, kept):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    loss_t, grads_t = _loss_and_grads(model, kept, targets)
    torch.testing.assert_close(loss_w, loss_t, rtol=0, atol=1e-10)
    assert grads_w.keys() == grads_t.keys() and len(grads_w) > 0
    for name in grads_w:
        got, want = grads_w[name], grads_t[name]
        if got.dim() == 5 and got.shape[-3:] == (3, 3, 3):
            # the heads' 3x3x3 convs act by their centre tap alone; the gradient of the other taps (zero)
            # reads the neighbours, real in the crop, zero padding on a tile's shell: by design
            got, want = got[..., 1, 1, 1], want[..., 1, 1, 1]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_cga_guided_by_cga_pools_each_windows_own_guidance():
    """OM-Net + CGA's task 3 (a CGA head guided by a CGA head) in training: the window sums
    of each block take the guidance its own tile would have had, and get a gradient."""
    torch.manual_seed(0)
    model = centre_taps_only(omkit.create_model("omnet_cga", width=TINY_WIDTH, backbone="pointwise_windows_test"))
    model = model.double().eval()
    crops = torch.randn((1, 4, *GRID.crop), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = forward_tasks(model, [None, None, crops], None, GRID)[2]
    tiles = model(_tiles_of(crops)).task3
    centre = (slice(None), slice(None)) + tuple(slice(o, o + b) for o, b in zip(GRID.offset, GRID.block))
    torch.testing.assert_close(got, _blocks_to_supervised(tiles[centre], 1), rtol=0, atol=1e-10)
    got.sum().backward()
    assert model.backbone.net[0].weight.grad.abs().sum() > 0


def test_windows_mode_refuses_a_model_it_cannot_run(tmp_path):
    make_dataset(tmp_path / "data", num_cases=2, shape=(16, 40, 40))
    config = TrainConfig(preset="omnet", attention="scale_windows_test", input=str(tmp_path / "data"),
                         output=str(tmp_path / "r"), width=TINY_WIDTH, train_mode="windows", device="cpu")
    with pytest.raises(ValueError, match="--train-mode windows: window-consistent training cannot run this model: "
                                         "attention 'scale_windows_test' .*declares no window pooling.*; "
                                         r"train on patches \(--train-mode patches\)"):
        train(config)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="--train-mode: must be one of patches, windows"):
        TrainConfig(train_mode="tiles")
    with pytest.raises(ValueError, match="--window-blocks: a crop of .* has a side over 256"):
        TrainConfig(train_mode="windows", window_blocks=(2, 40, 2))


def _train(tmp_path, mode: str):
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, num_cases=2, shape=(24, 48, 48))
    config = TrainConfig(
        preset="omnet_cga", input=str(data), output=str(tmp_path / mode), width=TINY_WIDTH, train_mode=mode,
        patch_size=(8, 16, 16), window_block=(4, 8, 8), window_blocks=(1, 2, 2), window_context=(0, 4, 4),
        batch_per_task=1, patches_per_epoch=(2,), stage_epochs=(1, 1, 1), progress=False, device="cpu",
    )
    return train(config) / "model.pt"


def test_auto_runs_dense_only_on_models_trained_for_it_and_says_why(tmp_path, capsys):
    windows, patches = _train(tmp_path, "windows"), _train(tmp_path, "patches")
    dense = SegmentationPredictor.from_files([windows])
    assert dense.inference == "dense" and "trained window-consistently" in dense.inference_note
    # its training window and block are the dense geometry
    assert tuple(dense.tiles.size) == (8, 16, 16) and tuple(dense.tiles.keep) == (4, 8, 8)
    tiled = SegmentationPredictor.from_files([patches])
    assert tiled.inference == "tiles" and "trained on patches" in tiled.inference_note
    # the card's recommended tiles: the training patch, keeping FAST_TILE_KEEP in proportion
    assert tuple(tiled.tiles.size) == (8, 16, 16) and tuple(tiled.tiles.keep) == (4, 12, 12)
    # an explicit choice wins: the paper's tiles when asked for tiles, the given keep when given
    assert tuple(SegmentationPredictor.from_files([patches], inference="tiles").tiles.keep) == (2, 10, 10)
    given = SegmentationPredictor.from_files([patches], tiles=TileSettings(keep=(4, 16, 16)))
    assert given.inference == "tiles" and tuple(given.tiles.keep) == (4, 16, 16)
    # an ensemble with one patch-trained member runs tiles
    assert SegmentationPredictor.from_files([windows, patches]).inference == "tiles"
    # omkit predict says which and why
    case = next(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    for model, said in ((windows, "dense inference (auto)"), (patches, "tile inference (auto), tiles 8 x 16 x 16")):
        assert main(["predict", "--no-progress", "-i", str(case), "-m", str(model), "-o", str(tmp_path / model.parent.name / "pred")]) == 0
        assert f"omkit predict: {said}" in capsys.readouterr().out


def test_the_model_file_records_the_training_mode(tmp_path):
    from omkit.checkpoint import load_model

    model, card = load_model(_train(tmp_path, "windows"))
    assert card.train_mode == "windows" and model.train_mode == "windows"
    assert card.train_windows == {"window": [8, 16, 16], "block": [4, 8, 8], "blocks": [1, 2, 2],
                                     "context": [0, 4, 4]}
