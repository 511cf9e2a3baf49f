"""The network's input features (omkit.data.features): the four modalities, or
those plus their left-right asymmetry, the same in training patches and at inference."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from omkit.data import preprocess_case, synthetic
from omkit.data.features import (
    MRI,
    MRI_ASYMMETRY,
    features_of_channels,
    input_channels,
    left_right_axis,
    mirrored,
    network_input,
)
from omkit.data.patches import extract_patch
from omkit.inference import SegmentationPredictor, TileSettings
from omkit.models.build import create_model
from omkit.plugins.samplers import BrainSampler, CoreSampler, DilatedTumorSampler
from omkit.training import TaskPatches, TrainConfig

TINY_PATCH = (8, 16, 16)


def test_left_right_axis_follows_the_affine():
    # omkit's (D, H, W) = NIfTI (Z, X, Y): the NIfTI axis along the scanner's x is omkit's H ...
    assert left_right_axis(np.eye(4)) == 1
    assert left_right_axis(np.diag([-1.0, -1.0, 1.0, 1.0])) == 1  # BraTS (LPS-like): a flip changes no mirror
    # ... unless the volume is stored with its axes permuted
    permuted = np.zeros((4, 4))
    permuted[0, 2], permuted[1, 0], permuted[2, 1], permuted[3, 3] = 1.2, 1.0, 1.0, 1.0  # x along NIfTI axis 2
    assert left_right_axis(permuted) == 0
    permuted = np.zeros((4, 4))
    permuted[0, 1], permuted[1, 0], permuted[2, 2], permuted[3, 3] = -0.9, 1.0, 1.0, 1.0  # x along NIfTI axis 1
    assert left_right_axis(permuted) == 2
    # an oblique volume: the axis closest to x, whatever its voxel size
    oblique = np.diag([3.0, 1.0, 1.0, 1.0])
    oblique[0, 1] = 0.5
    assert left_right_axis(oblique) == 1


def test_asymmetry_is_the_image_minus_its_mirror():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 5, 6, 7)).astype(np.float32)
    symmetric = image + image[:, :, ::-1, :]
    out = network_input(symmetric, MRI_ASYMMETRY)
    assert out.shape == (8, 5, 6, 7)
    np.testing.assert_array_equal(out[:4], symmetric)
    np.testing.assert_allclose(out[4:], 0.0, atol=1e-6)  # symmetric tissue: no asymmetry
    blob = np.zeros_like(image)
    blob[:, 2, 1, 3] = 5.0  # a one-sided lesion: its contrast on its side, the negative on the other
    out = network_input(blob, MRI_ASYMMETRY, axis=1)
    assert out[4:, 2, 1, 3].tolist() == [5.0] * 4 and out[4:, 2, 4, 3].tolist() == [-5.0] * 4
    assert np.count_nonzero(out[4:]) == 8
    # along another axis when the affine says so; tensors give the same numbers
    along_w = network_input(torch.from_numpy(image), MRI_ASYMMETRY, axis=2)
    np.testing.assert_allclose(along_w[4:].numpy(), image - image[:, :, :, ::-1], atol=1e-6)
    assert network_input(image, MRI) is image
    assert np.shares_memory(mirrored(image), image)  # a view: a memory-mapped case is not read whole
    assert (input_channels(MRI), input_channels(MRI_ASYMMETRY)) == (4, 8)
    assert features_of_channels(8) == MRI_ASYMMETRY
    with pytest.raises(ValueError, match="5 input channels reads no known input features"):
        features_of_channels(5)
    with pytest.raises(ValueError, match=re.escape("unknown input features 'mri+t2'")):
        network_input(image, "mri+t2")


@pytest.fixture(scope="module")
def cases():
    return [preprocess_case(synthetic.make_case((24, 40, 40), seed=s)) for s in (0, 1)]


def test_training_patches_carry_the_asymmetry_of_the_whole_crop(cases):
    samplers = [BrainSampler(), DilatedTumorSampler(), CoreSampler()]
    plain = TaskPatches(cases, samplers, TINY_PATCH, (6, 6, 6), 3, seed=1)
    patches = TaskPatches(cases, samplers, TINY_PATCH, (6, 6, 6), 3, seed=1, input_features=MRI_ASYMMETRY)
    for step in range(2):
        batches, reference = patches.batch_at(0, step, (0, 1, 2)), plain.batch_at(0, step, (0, 1, 2))
        for t in range(3):
            images, labels = batches[t]
            assert images.shape == (3, 8, *TINY_PATCH)
            np.testing.assert_array_equal(images[:, :4], reference[t][0])
            np.testing.assert_array_equal(labels, reference[t][1])
            # the oracle: the feature of the whole crop, then the patch (patches reaching past the crop included)
            for row, (case, *centre) in zip(images, patches.centres(0, step, t).tolist()):
                pre = cases[case]
                whole = network_input(pre.image, MRI_ASYMMETRY, left_right_axis(pre.affine))
                np.testing.assert_allclose(row, extract_patch(whole, centre, TINY_PATCH), atol=1e-6)


def test_config_names_the_option():
    with pytest.raises(ValueError, match="--input-features: unknown input features 'rgb'"):
        TrainConfig(input_features="rgb")
    with pytest.raises(ValueError, match="--model-options: input_features has its own option, --input-features"):
        TrainConfig(model_options={"in_channels": 8})


def _predictor(in_channels, **kw):
    torch.manual_seed(0)
    model = create_model("omnet_cga", width=0.125, in_channels=in_channels)
    return SegmentationPredictor(model, tiles=TileSettings(size=TINY_PATCH, keep=(4, 8, 8), batch=4), **kw)


def test_predictor_feeds_the_features_its_models_read(cases):
    pre = cases[0]
    predictor = _predictor(8, inference="tiles")
    assert predictor.input_features == MRI_ASYMMETRY  # from the models' input channels
    assert _predictor(4).input_features == MRI
    seen = []
    predictor.models[0].backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    symmetric = np.ascontiguousarray(pre.image + pre.image[:, :, ::-1, :])
    predictor.predict(symmetric, pre.brain_mask)
    assert seen and all(batch.shape[1] == 8 for batch in seen)
    assert all(float(batch[:, 4:].abs().max()) < 1e-5 for batch in seen)  # symmetric input: no asymmetry
    seen.clear()
    predictor.predict(pre.image, pre.brain_mask)
    assert max(float(batch[:, 4:].abs().max()) for batch in seen) > 0.1
    # dense inference reads the same features
    dense = _predictor(8, inference="dense")
    seen.clear()
    dense.models[0].backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    dense.predict(symmetric, pre.brain_mask)
    assert seen and all(batch.shape[1] == 8 and float(batch[:, 4:].abs().max()) < 1e-5 for batch in seen)
    with pytest.raises(ValueError, match="must hold the 4 modalities"):
        predictor.predict(np.zeros((8, 8, 16, 16), np.float32))
    with pytest.raises(ValueError, match="input_features 'mri' has 4 channels; the models read 8"):
        _predictor(8, input_features=MRI)


def test_worker_processes_give_the_same_asymmetry_patches(cases):
    from omkit.training.patches import iterate_steps

    patches = TaskPatches(cases, [BrainSampler(), DilatedTumorSampler(), CoreSampler()], TINY_PATCH, (4, 4, 4), 2,
                          seed=2, input_features=MRI_ASYMMETRY)
    in_process = list(iterate_steps(patches, 0, (0, 1, 2), start=0, workers=0))
    with_worker = list(iterate_steps(patches, 0, (0, 1, 2), start=0, workers=1))
    assert len(in_process) == len(with_worker) == 2
    for (_, a), (_, b) in zip(in_process, with_worker):
        for t in range(3):
            assert a[t][0].shape[1] == 8
            np.testing.assert_array_equal(a[t][0], np.asarray(b[t][0]))


def test_the_precise_recipe_is_cpu_budget_with_both_options():
    precise, budget = TrainConfig.from_recipe("cpu-budget-precise", {}), TrainConfig.from_recipe("cpu-budget", {})
    assert precise.input_features == MRI_ASYMMETRY and budget.input_features == MRI
    assert precise.samplers == ("brain:1+dilated_tumor:1", "dilated_tumor:3+tumor_mimic:1", "core")
    assert budget.samplers[1] == "dilated_tumor"
    same = ("width", "batch_per_task", "stage_epochs", "patches_per_epoch", "optimizer", "lr", "lr_step_epochs")
    assert all(getattr(precise, name) == getattr(budget, name) for name in same)
