"""Test-time mirroring: with a model equivariant to flips by construction it
changes nothing; with a real model the batched flips equal a loop over them;
--tta on the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import omkit
from omkit.inference.runners import TileRunner
from omkit.inference import SegmentationPredictor, TileSettings, mirror_flips
from omkit.inference.tta import describe
from omkit.models import TaskOutputs

TILES = TileSettings(size=(8, 16, 16), keep=(4, 8, 8), batch=4)
# kept centres off the tile's middle: their mirror images lie elsewhere in the tile
ODD_TILES = TileSettings(size=(8, 16, 16), keep=(3, 7, 5), batch=4)


def test_mirror_flips():
    assert mirror_flips(None) == mirror_flips(False) == mirror_flips("none") == [()]
    assert mirror_flips(True) == mirror_flips("all") == mirror_flips("D,H,W") == mirror_flips([0, 1, 2]) == [
        (), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_flips("h,w") == mirror_flips("1,2") == [(), (1,), (2,), (1, 2)]
    assert mirror_flips([(2,), (1, 2)]) == [(), (2,), (1, 2)]
    assert describe(mirror_flips(True)) == "8 flips (D,H,W)" and describe([()]) == "none"
    with pytest.raises(ValueError, match="mirroring axis 'X'"):
        mirror_flips("X")


class FlipEquivariant(nn.Module):
    """A 3x3x3 convolution whose kernels are symmetric under every flip (zero
    padding is too), then pointwise heads: equivariant to flips by construction."""

    num_tasks = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(4, 6, 3, padding=1)
        with torch.no_grad():
            w = self.conv.weight
            w.copy_(sum(w.flip(dims) for dims in ([], [2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4])) / 8)
        self.heads = nn.ModuleList(nn.Conv3d(6, k, 1) for k in (5, 5, 2))

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return TaskOutputs(*(head(h) for head in self.heads))


def image_and_brain(seed=0, shape=(12, 24, 20)):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((4, *shape), generator=g)
    brain = torch.zeros(shape, dtype=torch.bool)
    brain[1:-1, 2:-2, 2:-3] = True
    return image, brain


@pytest.mark.parametrize("tiles", [TILES, ODD_TILES], ids=["centred", "off-centre"])
def test_an_equivariant_model_is_unchanged_by_mirroring(tiles):
    model = FlipEquivariant().eval()
    image, brain = image_and_brain()
    plain = SegmentationPredictor([model], tiles=tiles, inference="tiles").predict(image, brain, return_probabilities=True)
    mirrored = SegmentationPredictor([model], tiles=tiles, inference="tiles", tta=True).predict(image, brain, return_probabilities=True)
    for task in plain.probabilities:
        torch.testing.assert_close(mirrored.probabilities[task], plain.probabilities[task], atol=1e-5, rtol=1e-5)
    assert torch.equal(mirrored.labels, plain.labels)


class LoopedFlipsRunner(TileRunner):
    """The reference: one network call per flip, each flipped back."""

    def mean_probabilities(self, ensemble, batch, tasks, centre=None):
        plain = ensemble._replace(flips=[()])
        total = None
        for flip in ensemble.flips:
            dims = [a + 2 for a in flip]
            probs = super().mean_probabilities(plain, batch.flip(dims) if flip else batch, tasks)
            probs = [p.flip(dims) if flip else p for p in probs]
            if centre is not None:
                probs = [p[(slice(None), slice(None)) + centre] for p in probs]
            total = probs if total is None else [t + p for t, p in zip(total, probs)]
        return [t / len(ensemble.flips) for t in total]


class LoopedFlips(SegmentationPredictor):
    def runner(self):
        return LoopedFlipsRunner(self.tiles)


@pytest.mark.parametrize("preset, tta, tiles", [("omnet_cga", True, TILES), ("omnet_cga", "H,W", ODD_TILES),
                                                 ("mc2", "D", ODD_TILES)])
def test_batched_mirroring_equals_a_loop_over_the_flips(preset, tta, tiles):
    torch.manual_seed(1)
    models = [omkit.create_model(preset, width=0.125).eval() for _ in range(2 if preset == "omnet_cga" else 1)]
    image, brain = image_and_brain(seed=2, shape=(16, 32, 24))
    batched = SegmentationPredictor(models, tiles=tiles, inference="tiles", tta=tta).predict(image, brain, return_probabilities=True)
    looped = LoopedFlips(models, tiles=tiles, inference="tiles", tta=tta).predict(image, brain, return_probabilities=True)
    plain = SegmentationPredictor(models, tiles=tiles, inference="tiles").predict(image, brain, return_probabilities=True)
    for task in batched.probabilities:
        torch.testing.assert_close(batched.probabilities[task], looped.probabilities[task], atol=2e-5, rtol=1e-4)
    # a real network is not flip-equivariant: mirroring changes its probabilities
    assert not torch.allclose(batched.probabilities["task1"], plain.probabilities["task1"], atol=1e-4)
    agree = (batched.labels == looped.labels).float().mean().item()
    assert agree > 0.999, agree


def test_predict_cli_tta(tmp_path):
    import nibabel as nib

    from omkit.checkpoint import save_model
    from omkit.cli import main
    from omkit.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", num_cases=1, shape=(16, 32, 32))
    save_model(omkit.create_model("omnet_cga", width=0.125), tmp_path / "model.pt")
    common = ["predict", "--no-progress", "--tile-size", "8,16,16", "--tile-keep", "8,16,16", "-i", str(tmp_path / "data"),
              "-m", str(tmp_path / "model.pt")]
    assert main(common + ["-o", str(tmp_path / "tta"), "--tta"]) == 0
    assert main(common + ["-o", str(tmp_path / "hw"), "--tta", "H,W"]) == 0
    (case,) = (tmp_path / "tta").glob("*.nii.gz")
    assert nib.load(str(case)).shape == (32, 32, 16)
    assert main(common + ["-o", str(tmp_path / "bad"), "--tta", "Q"]) == 2
