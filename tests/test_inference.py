"""Fusion rules, the one-pass / cascade / ensemble predictor, and that tiling
does not change what a voxel-wise network predicts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import omkit
from omkit.inference import Prediction, SegmentationPredictor, TileSettings, dilate, fuse
from omkit.inference.fusion import task1_labels
from omkit.labels import BACKGROUND, EDEMA, ENHANCING, NCR_NET, NORMAL
from omkit.models.omnet import MCNet, TaskOutputs

SMALL_TILES = TileSettings(size=(8, 16, 16), keep=(4, 8, 8), batch=8)


class PointwiseOMNet(nn.Module):
    """A voxel-wise stand-in for OM-Net: its prediction does not depend on the
    tile, so overlap-tile inference must reproduce whole-volume application."""

    num_tasks = 3

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.convs = nn.ModuleList(nn.Conv3d(4, k, 1) for k in (5, 5, 2))
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=3.0)

    def forward(self, x):
        return TaskOutputs(*(conv(x) for conv in self.convs))


def pointwise_cascade(omnet: PointwiseOMNet, num_tasks: int = 3) -> MCNet:
    mc = MCNet(num_tasks=num_tasks, width=0.125)
    mc.networks = nn.ModuleList(list(omnet.convs)[:num_tasks])
    return mc


def volume_and_brain(seed=0, shape=(13, 37, 29)):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((4, *shape), generator=g)
    brain = torch.zeros(shape, dtype=torch.bool)
    brain[1:-1, 3:-4, 2:-2] = True
    image[:, ~brain] = 0
    return image, brain


def expected_labels(models, image, brain, num_tasks=3, roi_dilation=5):
    """Whole-volume reference: average the softmax of every member per task, fuse."""
    x = image[None]
    probs = [torch.stack([torch.softmax(m.convs[t](x), 1) for m in models]).mean(0) for t in range(num_tasks)]
    coarse, label1 = (v[0] for v in task1_labels(probs[0]))
    roi = dilate(coarse.bool(), roi_dilation) & brain
    rest = [p.argmax(1)[0].to(torch.uint8) for p in probs[1:]]
    labels, _ = fuse(label1, coarse, *rest, roi=roi)
    labels[~brain] = BACKGROUND  # tiles outside the brain are not computed
    return labels


def test_fusion_rules_on_constructed_maps():
    shape = (1, 1, 9)
    coarse = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.uint8).reshape(shape)
    label1 = torch.tensor([0, 1, 1, 1, 3, 1, 1, 1, 1], dtype=torch.uint8).reshape(shape)
    label2 = torch.tensor([4, 4, 3, 2, 4, 2, 1, 4, 4], dtype=torch.uint8).reshape(shape)
    label3 = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.uint8).reshape(shape)
    # dilation 2: task 2's ROI is voxels 2..6
    labels, roi = fuse(label1, coarse, label2, label3, roi_dilation=2)
    assert roi.flatten().tolist() == [False, False, True, True, True, True, True, False, False]
    assert labels.flatten().tolist() == [BACKGROUND, NORMAL, EDEMA, ENHANCING, ENHANCING, NCR_NET, NORMAL, NORMAL, NORMAL]
    # MC2: no task 3, the core keeps task 2's classes; MC1: task 1 only
    assert fuse(label1, coarse, label2, roi_dilation=2)[0].flatten().tolist()[2:7] == [EDEMA, NCR_NET, ENHANCING, NCR_NET, NORMAL]
    assert torch.equal(fuse(label1, coarse, roi_dilation=2)[0], label1)


def test_task1_labels_are_hierarchical():
    # tumor sum 0.45 although NCR/NET alone is the likeliest class: not tumor
    p = torch.tensor([0.30, 0.25, 0.35, 0.05, 0.05]).reshape(1, 5, 1, 1, 1)
    coarse, label = task1_labels(p)
    assert coarse.item() == 0 and label.item() == BACKGROUND
    p = torch.tensor([0.40, 0.05, 0.15, 0.25, 0.15]).reshape(1, 5, 1, 1, 1)
    coarse, label = task1_labels(p)
    assert coarse.item() == 1 and label.item() == EDEMA


def test_dilation_is_a_euclidean_ball():
    mask = torch.zeros(9, 9, 9, dtype=torch.bool)
    mask[4, 4, 4] = True
    assert dilate(mask, 2).sum() == 33  # |x|^2 + |y|^2 + |z|^2 <= 4
    assert dilate(mask, 0).sum() == 1
    assert dilate(torch.zeros(3, 3, 3, dtype=torch.bool), 5).sum() == 0


@pytest.mark.parametrize("ensemble_size", [1, 2])
def test_onepass_tiling_equals_whole_volume(ensemble_size):
    image, brain = volume_and_brain()
    models = [PointwiseOMNet(seed) for seed in range(ensemble_size)]
    result = SegmentationPredictor(models, SMALL_TILES, roi_dilation=2, inference="tiles").predict(image, brain)
    assert isinstance(result, Prediction) and result.labels.dtype == torch.uint8
    expected = expected_labels(models, image, brain, roi_dilation=2)
    assert torch.equal(result.labels, expected)
    assert len(set(result.labels.unique().tolist())) >= 4  # the check is not vacuous


@pytest.mark.parametrize("num_tasks", [1, 2, 3])
def test_cascade_matches_onepass_fusion_and_skips_tiles(num_tasks):
    image, brain = volume_and_brain(shape=(16, 48, 48))
    omnet = PointwiseOMNet(0)
    # task 1 sees edema only where FLAIR is high: one small bright blob
    with torch.no_grad():
        omnet.convs[0].weight.zero_()
        omnet.convs[0].weight[EDEMA, 0] = 1.0
        omnet.convs[0].bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0]))
    image[0] = image[0].clamp(max=1.0)
    image[0, 6:9, 20:26, 20:26] = 8.0
    cascade = SegmentationPredictor([pointwise_cascade(omnet, num_tasks)], SMALL_TILES, roi_dilation=2,
                                    inference="tiles").predict(image, brain)
    expected = expected_labels([omnet], image, brain, num_tasks=num_tasks, roi_dilation=2)
    assert torch.equal(cascade.labels, expected)
    assert cascade.roi.any()
    if num_tasks >= 2:
        assert 0 < cascade.tile_counts["task2"] < cascade.tile_counts["task1"]


def test_probabilities_give_the_same_labels():
    image, brain = volume_and_brain(1)
    predictor = SegmentationPredictor([PointwiseOMNet(3)], SMALL_TILES, inference="tiles")
    plain = predictor.predict(image, brain)
    with_probs = predictor.predict(image, brain, return_probabilities=True)
    assert plain.probabilities is None
    assert torch.equal(plain.labels, with_probs.labels)
    probs = with_probs.probabilities
    assert [tuple(probs[k].shape) for k in ("task1", "task2", "task3")] == [(5, *brain.shape), (5, *brain.shape), (2, *brain.shape)]
    assert torch.allclose(probs["task1"].sum(0)[brain], torch.ones(()), atol=1e-5)


def test_real_tiny_models_predict_a_synthetic_case():
    from omkit.data import preprocess_case
    from omkit.data.synthetic import make_case

    pp = preprocess_case(make_case((24, 40, 40), seed=2))
    for preset in ("omnet_cga", "mc3"):
        model = omkit.create_model(preset, width=0.125)
        no_overlap = TileSettings(size=(8, 16, 16), keep=(8, 16, 16), batch=16)
        result = SegmentationPredictor([model], no_overlap, inference="tiles").predict(pp.image, pp.brain_mask)
        assert result.labels.shape == pp.brain_mask.shape
        assert result.labels.max() <= ENHANCING
        assert (result.labels[torch.from_numpy(~pp.brain_mask)] == BACKGROUND).all()


def test_ensemble_members_must_share_an_architecture():
    with pytest.raises(ValueError, match="share an architecture"):
        SegmentationPredictor([PointwiseOMNet(0), MCNet(num_tasks=1, width=0.125)])


def test_device_means_where_the_networks_run_everywhere():
    model = omkit.create_model("omnet_cga", width=0.125)
    predictor = SegmentationPredictor([model], device="cpu")
    assert predictor.device == torch.device("cpu") and predictor.output_device == torch.device("cpu")
    assert predictor.ensemble().device == predictor.device
    # the MONAI-style pair still works, said to be deprecated: sw_device computes, device holds the maps
    with pytest.warns(DeprecationWarning, match="device= is where the networks run"):
        old = SegmentationPredictor([model], sw_device="cpu", device="meta")
    assert old.device == torch.device("cpu") and old.output_device == torch.device("meta")
