"""Dense, window-consistent inference (``SegmentationPredictor(inference="dense")``,
``omkit.inference.dense``) against tile inference.

The oracle: a *pointwise* backbone (1x1x1 convolutions only, registered through the
plug-in manager) computes on a tile exactly what it computes on the whole region, so
dense inference must give what tile inference gives, to float rounding, for every
head kind, the MC cascade, ensembles and mirroring, on a volume whose brain touches
its border and on one smaller than a tile. The heads of the attention models get
their 3x3x3 conv cut to its centre tap: in a tile, that conv reads zero padding on
the tile's one-voxel shell, which SE's mean and the guidance CGA pools include, while
dense inference reads the real neighbours there (the one difference by design,
measured in ``test_window_shell_is_the_one_difference``). With the real FusionNet
backbone, the backbone's context differs by design, so those tests bound the
difference instead.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import omkit
from omkit.cli import main
from omkit.data import find_cases
from omkit.data.synthetic import make_case
from omkit.inference import DenseSettings, SegmentationPredictor, SpeedSettings, TileSettings
from omkit.inference import dense as dense_module
from omkit.inference.dense import dense_region, slab_spans
from omkit.inference.sliding import tiles_touching
from omkit.inference.tiling import tile_origins

from conftest import TINY_WIDTH, PointwiseBackbone, ScaleAttention, centre_taps_only, model_workspace, plugin_fixture

# tiles of 8 x 16 x 16 keeping 4 x 8 x 8: blocks 2 x 4 x 4 voxels inside their windows
TILES = TileSettings(size=(8, 16, 16), keep=(4, 8, 8), batch=8)
TILE_FLAGS = ["--tile-size", "8,16,16", "--tile-keep", "4,8,8"]
ATTENTION_PRESETS = ["omnet_se", "omnet_cga", "omnet_cga_minus", "omnet_cga_t", "omnet_cga_n"]


plugins = plugin_fixture("dense_test_plugin", backbones={"pointwise_test": PointwiseBackbone},
                         attention={"gate_test": ScaleAttention})


def pointwise_model(preset: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = omkit.create_model(preset, width=TINY_WIDTH, backbone="pointwise_test")
    return centre_taps_only(model) if preset in ATTENTION_PRESETS else model


VOLUMES = {
    # the brain touches the volume's first D and W faces; sizes no multiple of anything
    "border": ((14, 30, 27), (slice(0, 10), slice(3, 25), slice(0, 20))),
    # smaller than one tile on every axis
    "small": ((6, 12, 10), (slice(1, 6), slice(0, 12), slice(2, 9))),
}


def volume(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape, box = VOLUMES[name]
    image = torch.randn((4, *shape), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[box] = True
    return image, mask


def both(models, image, mask, **kw):
    tiles = SegmentationPredictor(models, tiles=TILES, inference="tiles", **kw).predict(image, mask,
                                                                                      return_probabilities=True)
    dense = SegmentationPredictor(models, tiles=TILES, inference="dense", **kw).predict(image, mask,
                                                                                      return_probabilities=True)
    return tiles, dense


def assert_same(tiles, dense, atol=1e-5):
    assert dense.tile_counts == tiles.tile_counts
    assert torch.equal(dense.roi, tiles.roi)
    assert dense.probabilities.keys() == tiles.probabilities.keys()
    for task, want in tiles.probabilities.items():
        got = dense.probabilities[task]
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=atol, rtol=0, msg=lambda m: f"{task}: {m}")
    assert torch.equal(dense.labels, tiles.labels)


# -- the oracle: a pointwise backbone ----------------------------------------------------------

@pytest.mark.parametrize("where", sorted(VOLUMES))
@pytest.mark.parametrize("preset", ["omnet", *ATTENTION_PRESETS, "mc3"])
def test_dense_equals_tiles_with_a_pointwise_backbone(preset, where):
    image, mask = volume(where)
    tiles, dense = both([pointwise_model(preset)], image, mask)
    assert_same(tiles, dense)
    if where == "border":  # the check means something: a tumor found, every task (network) ran
        assert tiles.roi.any() and min(tiles.tile_counts.values()) > 0


def test_dense_equals_tiles_for_an_ensemble_and_with_mirroring():
    image, mask = volume("border")
    members = [pointwise_model("omnet_cga", seed) for seed in (0, 1)]
    assert_same(*both(members, image, mask))
    assert_same(*both(members, image, mask, tta="D,W"))
    assert_same(*both([pointwise_model("mc3")], image, mask, tta=True))


@pytest.mark.parametrize("preset", ["omnet_se", "omnet_cga"])
def test_dense_under_bf16_autocast_stays_with_tiles(preset):
    """Mixed precision: bfloat16 rounding apart (measured up to 1.5e-3), the same."""
    image, mask = volume("border")
    tiles, dense = both([pointwise_model(preset)], image, mask, precision="bf16")
    assert dense.tile_counts == tiles.tile_counts
    for task, want in tiles.probabilities.items():
        assert dense.probabilities[task].dtype == torch.float32
        torch.testing.assert_close(dense.probabilities[task], want, atol=1e-2, rtol=0)
    assert (tiles.labels == dense.labels).float().mean() > 0.99


def test_the_oracle_sees_a_misplaced_window(monkeypatch):
    """Windows one voxel off their blocks: the oracle must notice."""
    image, mask = volume("border")
    model = pointwise_model("omnet_cga")
    geometry = dense_module.window_geometry

    def shifted(*args, **kw):
        out = geometry(*args, **kw)
        return {**out, "offset": tuple(o + 1 for o in out["offset"])}

    monkeypatch.setattr(dense_module, "window_geometry", shifted)
    tiles, dense = both([model], image, mask)
    diff = max((dense.probabilities[k] - tiles.probabilities[k]).abs().max().item() for k in ("task2", "task3"))
    assert diff > 1e-3


def test_window_shell_is_the_one_difference():
    """With the heads' 3x3x3 convs whole, a plain head still matches (its kept centre is
    inside the tile), while SE's window mean includes the shell where a tile reads zero
    padding: close, not equal."""
    image, mask = volume("border")
    torch.manual_seed(0)
    plain = omkit.create_model("omnet", width=TINY_WIDTH, backbone="pointwise_test")
    assert_same(*both([plain], image, mask))
    torch.manual_seed(0)
    se = omkit.create_model("omnet_se", width=TINY_WIDTH, backbone="pointwise_test")
    tiles, dense = both([se], image, mask)
    diff = max((dense.probabilities[k] - tiles.probabilities[k]).abs().max().item() for k in tiles.probabilities)
    assert 1e-6 < diff < 0.2
    assert (dense.labels == tiles.labels).float().mean() > 0.9


def test_the_region_follows_the_tile_grid():
    _, mask = volume("border")
    region = dense_region(mask, TILES.size, TILES.keep, divisor=8)
    origins = tile_origins(mask.shape, TILES.size, TILES.stride, TILES.keep)
    touching = tiles_touching(mask, origins, TILES.size, TILES.keep)
    assert int(region.touched.sum()) == touching.shape[0]
    assert tuple(region.start) == tuple(touching.min(0).values.tolist())  # the first window is the first tile
    assert all(s % 8 == 0 for s in region.shape)
    assert region.origin == (2, 4, 4)
    assert dense_region(torch.zeros(4, 8, 8, dtype=torch.bool), TILES.size, TILES.keep) is None


# -- the real backbone --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def case():
    from omkit.data import preprocess_case

    pre = preprocess_case(make_case((24, 40, 40), seed=0))
    return torch.as_tensor(pre.image), torch.as_tensor(pre.brain_mask)


def test_slabs_agree_with_one_call_within_the_stated_tolerance():
    """Seams every 16 planes with the default halo (64): within 2e-3 of one call (the
    module docstring's measurement); without a halo they are far off, so the halo is
    what keeps them close."""
    shape = (168, 16, 16)  # tall enough for slabs of 16 + 2 x 64 planes
    image = torch.randn((4, *shape), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(shape, dtype=torch.bool)
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)
    region = dense_region(mask, TILES.size, TILES.keep, 8)
    plane = region.shape[1] * region.shape[2]
    one = SegmentationPredictor([model], tiles=TILES, inference="dense").predict(image, mask, True)

    def slabs(halo):
        settings = DenseSettings(halo=halo, max_voxels=(16 + 2 * halo) * plane)
        assert len(slab_spans(region.shape[0], plane, settings, 8)) > 1
        return SegmentationPredictor([model], tiles=TILES, inference="dense", dense=settings,
                                     progress=True).predict(image, mask, True)

    got = slabs(DenseSettings().halo)
    assert max((got.probabilities[k] - one.probabilities[k]).abs().max().item() for k in one.probabilities) < 2e-3
    assert (got.labels == one.labels).float().mean() > 0.999
    bare = slabs(0)
    assert max((bare.probabilities[k] - one.probabilities[k]).abs().max().item() for k in one.probabilities) > 0.05


def test_slab_spans_are_aligned_and_cover_the_region():
    settings = DenseSettings(halo=5, max_voxels=40 * 10)
    spans = slab_spans(72, 10, settings, 8)
    assert [(c0, c1) for c0, c1, _, _ in spans] == [(0, 24), (24, 48), (48, 72)]  # halo 5 -> 8; cores of 24
    assert all(v % 8 == 0 for span in spans for v in span)
    assert spans[0][2] == 0 and spans[-1][3] == 72 and spans[1][2:] == (16, 56)
    assert slab_spans(72, 10, DenseSettings(), 8) == [(0, 72, 0, 72)]
    with pytest.raises(ValueError, match="dense max_voxels 70 is too small: a slab of 8 planes"):
        slab_spans(72, 10, DenseSettings(halo=0, max_voxels=70), 8)


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum())))


def test_dense_is_close_to_tiles_with_fusionnet(case):
    """Loose: the backbone sees each voxel's real neighbourhood instead of a tile's zero
    padding, and a random-weight network's labels hang on that. Tiles with a margin
    of 6 to 12 voxels around their kept centres (the paper's have 5.5 and 6)."""
    image, mask = case
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)
    geometry = TileSettings(size=(16, 32, 32), keep=(4, 8, 8), batch=8)
    tiles = SegmentationPredictor([model], tiles=geometry, inference="tiles").predict(image, mask, True)
    dense = SegmentationPredictor([model], tiles=geometry, inference="dense").predict(image, mask, True)
    assert dense.tile_counts == tiles.tile_counts
    for task, want in tiles.probabilities.items():
        got = dense.probabilities[task]
        assert got.dtype == torch.float32 and got.shape == want.shape == (want.shape[0], *mask.shape)
    assert dense.labels.dtype == torch.uint8 and dense.labels.shape == mask.shape
    assert not dense.labels[~mask].any()  # outside the brain: background
    assert (dense.labels >= 2).any() and (dense.labels < 2)[mask].any()
    assert dice(dense.labels >= 2, tiles.labels >= 2) > 0.8  # whole tumor (measured 0.94)
    assert (dense.labels == tiles.labels)[mask].float().mean() > 0.7  # every class (measured 0.88)


def test_dense_outputs_stay_where_tiles_compute(case):
    """Zero where no tile would be computed: the cascade's later tasks only near the tumor."""
    image, mask = case
    torch.manual_seed(0)
    tiles, dense = both([omkit.create_model("mc3", width=TINY_WIDTH)], image, mask)
    assert dense.tile_counts == tiles.tile_counts
    for task, want in tiles.probabilities.items():
        assert torch.equal(dense.probabilities[task].sum(0) == 0, want.sum(0) == 0), task


# -- the default: auto ----------------------------------------------------------------------------

def windows_trained(model: nn.Module) -> nn.Module:
    """``model`` marked as trained window-consistently (as its model file would say)."""
    model.train_mode, model.train_windows = "windows", {"window": list(TILES.size), "block": list(TILES.keep)}
    return model


def test_auto_runs_dense_where_it_applies_and_says_why_not_elsewhere():
    model = windows_trained(pointwise_model("omnet_cga"))
    auto = SegmentationPredictor([model], tiles=TILES)
    assert auto.inference == "dense" and auto.inference_note.startswith("dense inference (auto)")
    torch.manual_seed(0)
    gated = windows_trained(omkit.create_model("omnet", width=TINY_WIDTH, attention="gate_test"))
    with pytest.warns(dense_module.DenseFallbackWarning, match="attention 'gate_test' of plug-in 'dense_test_plugin'"):
        fallback = SegmentationPredictor([gated], tiles=TILES)
    assert fallback.inference == "tiles"
    assert fallback.inference_note.startswith("tile inference (auto), tiles 8 x 16 x 16 keeping 4 x 8 x 8: "
                                              "dense inference cannot run this model: attention 'gate_test' of "
                                              "plug-in 'dense_test_plugin'")
    assert "declares no window pooling (pooled_terms, channel_scale" in fallback.inference_note
    strided = SegmentationPredictor([model], tiles=TileSettings(size=(8, 16, 16), keep=(4, 8, 8), stride=(2, 8, 8)))
    assert strided.inference == "tiles" and "stride equal to the kept centre" in strided.inference_note
    # a model trained on patches runs tiles under auto, whatever dense could run
    patches = SegmentationPredictor([pointwise_model("omnet_cga")], tiles=TILES)
    assert patches.inference == "tiles" and "trained on patches" in patches.inference_note
    # auto's dense is dense: the same result as asking for it
    image, mask = volume("border")
    want = SegmentationPredictor([model], tiles=TILES, inference="dense").predict(image, mask, True)
    got = auto.predict(image, mask, True)
    assert torch.equal(got.labels, want.labels)


def test_omkit_predict_says_which_inference_auto_chose_and_why(workspace, tmp_path, capsys):
    from omkit.checkpoint import load_model, save_model

    case_dir = find_cases(workspace / "data")[0]
    args = ["predict", "--no-progress", "-i", str(case_dir), *TILE_FLAGS]
    assert main(args + ["-m", str(workspace / "model.pt"), "-o", str(tmp_path / "patches")]) == 0
    assert ("omkit predict: tile inference (auto), tiles 8 x 16 x 16 keeping 4 x 8 x 8: the model was trained on "
            "patches") in capsys.readouterr().out
    model, meta = load_model(workspace / "model.pt")
    windows = tmp_path / "windows.pt"
    save_model(model, windows, train_mode="windows", train_windows={"window": [8, 16, 16], "block": [4, 8, 8]})
    assert main(args + ["-m", str(windows), "-o", str(tmp_path / "auto")]) == 0
    assert "omkit predict: dense inference (auto): the model was trained window-consistently" in capsys.readouterr().out
    assert main(args + ["-m", str(windows), "-o", str(tmp_path / "strided"), "--tile-stride", "2,8,8"]) == 0
    assert "omkit predict: tile inference (auto), tiles 8 x 16 x 16 keeping 4 x 8 x 8: dense inference needs the " \
           "tile stride equal to the kept centre" in capsys.readouterr().out


# -- errors --------------------------------------------------------------------------------------

def test_dense_errors():
    model = pointwise_model("omnet_cga")
    with pytest.raises(ValueError, match=r"stride equal to the kept centre.*stride \[2, 8, 8\]"):
        SegmentationPredictor([model], tiles=TileSettings(size=(8, 16, 16), keep=(4, 8, 8), stride=(2, 8, 8)),
                              inference="dense")
    with pytest.raises(ValueError, match="inference must be one of auto, dense, tiles, got 'dense2'"):
        SegmentationPredictor([model], tiles=TILES, inference="dense2")
    with pytest.raises(ValueError, match="speed.compile"):
        SegmentationPredictor([model], tiles=TILES, inference="dense", speed=SpeedSettings(compile="default"))
    torch.manual_seed(0)
    gated = omkit.create_model("omnet", width=TINY_WIDTH, attention="gate_test")
    with pytest.raises(ValueError, match="attention 'gate_test' .*declares no window pooling.*; use tile inference"):
        SegmentationPredictor([gated], tiles=TILES, inference="dense")
    with pytest.warns(dense_module.DenseFallbackWarning, match="gate_test"):
        SegmentationPredictor([gated], tiles=TILES)  # tiles take any attention, and auto says why it runs them

    class Custom(nn.Module):
        num_tasks = 3

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(4, 5, 1)

    with pytest.raises(ValueError, match="dense inference runs OM-Net and MC models, not Custom; use tile inference"):
        SegmentationPredictor([Custom()], tiles=TILES, inference="dense")
    for bad, message in (({"halo": -1}, "dense halo must be a whole number >= 0, got -1"),
                         ({"max_voxels": 0}, "dense max_voxels must be a whole number >= 1, got 0"),
                         ({"halo": 2.5}, "dense halo must be a whole number >= 0, got 2.5")):
        with pytest.raises(ValueError, match=message):
            DenseSettings(**bad)
    predictor = SegmentationPredictor([model], tiles=TILES, inference="dense", dense={"max_voxels": 10})
    with pytest.raises(ValueError, match="dense max_voxels 10 is too small"):
        predictor.predict(*volume("border"))


# -- the command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return model_workspace(tmp_path_factory.mktemp("dense"), shape=(24, 40, 40))


def test_omkit_predict_dense_writes_what_the_api_gives(workspace, tmp_path):
    case_dir = find_cases(workspace / "data")[0]
    out = tmp_path / "out"
    assert main(["predict", "--no-progress", "-i", str(case_dir), "-o", str(out), "-m", str(workspace / "model.pt"),
                 "--inference", "dense", "--dense-max-voxels", "200000", *TILE_FLAGS]) == 0
    written = np.asanyarray(nib.load(str(out / f"{case_dir.name}.nii.gz")).dataobj)
    seg = omkit.Segmenter.from_files(workspace / "model.pt", device="cpu", tiles={"size": (8, 16, 16),
                                     "keep": (4, 8, 8)}, inference="dense", dense={"max_voxels": 200000})
    assert seg.predictor.inference == "dense" and seg.predictor.dense.max_voxels == 200000
    stacked = np.stack([nib.load(str(next(Path(case_dir).glob(f"*_{s}.nii*")))).get_fdata(dtype=np.float32)
                        for s in ("flair", "t1", "t1ce", "t2")])
    np.testing.assert_array_equal(seg(stacked), written)
    assert set(np.unique(written).tolist()) - {0}


def test_dense_flags_are_checked(workspace, tmp_path, capsys):
    base = ["predict", "-i", str(workspace / "data"), "-o", str(tmp_path), "-m", str(workspace / "model.pt")]
    assert main(base + ["--inference", "dense", *TILE_FLAGS, "--tile-stride", "2,8,8"]) == 2
    assert "--inference dense needs --tile-stride equal to --tile-keep" in capsys.readouterr().err
    assert main(base + ["--inference", "dense", "--dense-halo", "-3"]) == 2
    assert "--dense-halo/--dense-max-voxels: dense halo must be a whole number >= 0, got -3" in capsys.readouterr().err


def test_the_ablation_runner_predicts_with_the_dense_settings(workspace, tmp_path, monkeypatch):
    from omkit import ablation

    config = ablation.AblationConfig(input=str(workspace / "data"), output=str(tmp_path), rows=["omnet_cga"],
                                     tiles={"size": (8, 16, 16), "keep": (4, 8, 8)}, inference="dense",
                                     dense={"max_voxels": 100000})
    assert config.dense == {"halo": DenseSettings().halo, "max_voxels": 100000, "max_memory": None}
    seen = {}

    def from_files(paths, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(SegmentationPredictor, "from_files", staticmethod(from_files))
    with pytest.raises(RuntimeError, match="stop here"):
        ablation.run._score_cases([workspace / "model.pt"], [], config, tmp_path, print)
    assert seen["inference"] == "dense" and seen["dense"] == {"halo": DenseSettings().halo, "max_voxels": 100000, "max_memory": None}
    with pytest.raises(ValueError, match="dense halo must be a whole number >= 0"):
        ablation.AblationConfig(input="x", output="y", rows=["omnet"], dense={"halo": -2})
    with pytest.raises(ValueError, match="--inference must be auto, tiles or dense, got 'tile'"):
        ablation.AblationConfig(input="x", output="y", rows=["omnet"], inference="tile")
