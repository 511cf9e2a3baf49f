"""Training-patch augmentation (omkit.data.augment, plugins/augment.py): every
registered transform keeps the contract (image and label aligned on a known
lesion, shapes and dtypes, seeded), the pipeline is a function of
(seed, rank, epoch, step) with or without worker processes and across a
resume, spec errors are one line naming --augment, and a third-party
transform registers and trains like a sampler."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

import omkit
from omkit.cli import main as cli_main
from omkit.data import preprocess_case, synthetic
from omkit.data.augment import Augmentation, PatchTransform, check_transform_contract
from omkit.training.patches import TaskPatches, iterate_steps
from omkit.plugins.samplers import BrainSampler, CoreSampler, DilatedTumorSampler

# every kind of built-in but elastic (the slowest; its contract test covers it)
ALL = ("mirror+rotate(degrees=15,axes=(0,1,2)):0.5+scale(factor=0.15):0.5+intensity_scale:0.5"
       "+intensity_shift:0.5+gamma:0.5+noise(std=0.1):0.5+blur:0.3")


def _registry():
    return omkit.get_plugins().registry("transform")


@pytest.mark.parametrize("name", omkit.get_plugins().registry("transform").names())
def test_every_registered_transform_keeps_the_contract(name):
    check_transform_contract(_registry().get(name)(), name, seeds=range(4))


def test_a_rotation_moves_image_and_label_together():
    from omkit.data.augment import _lesion_sample

    rotate = _registry().get("rotate")(degrees=90, axes=(0,))
    pipeline = Augmentation.from_spec("rotate(degrees=90)", _registry())
    size = (16, 32, 32)
    sample = _lesion_sample(size, pipeline.margin(size), with_mirror=False)
    before = np.argwhere(sample["label"][tuple(slice(m, -m or None) for m in pipeline.margin(size))] > 0).mean(0)
    moved = [pipeline.apply({k: v.copy() for k, v in sample.items()}, size, np.random.default_rng(s)) for s in range(4)]
    for out in moved:
        label_centre = np.argwhere(out["label"] > 0).mean(0)
        image_centre = np.argwhere(out["image"][0] > 1.25).mean(0)
        assert np.abs(label_centre - image_centre).max() < 0.5  # together ...
    # ... and really moved, in plane only: the lesion sits off the centre of H and W
    shifts = [np.abs(np.argwhere(out["label"] > 0).mean(0) - before) for out in moved]
    assert max(s[1:].max() for s in shifts) > 2 and max(s[0] for s in shifts) < 0.5
    assert rotate.margin(size)[0] == 1 and rotate.margin(size)[1] >= 7  # in-plane: context in H, W only


def test_intensity_transforms_leave_the_background_and_label_alone():
    pipeline = Augmentation.from_spec("intensity_scale+intensity_shift(offset=0.5)+gamma+noise+blur", _registry())
    rng = np.random.default_rng(0)
    image = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    image[:, :, :4] = 0  # outside the brain
    label = rng.integers(0, 5, (8, 16, 16)).astype(np.uint8)
    out = pipeline.apply({"image": image.copy(), "label": label.copy()}, (8, 16, 16), rng)
    assert (out["image"][:, :, :4] == 0).all() and (out["image"][:, :, 4:] != image[:, :, 4:]).any()
    assert np.array_equal(out["label"], label)


def test_gamma_keeps_each_modalitys_brain_statistics():
    gamma = _registry().get("gamma")(range=(0.5, 0.5))
    rng = np.random.default_rng(1)
    image = (rng.standard_normal((4, 8, 16, 16)) * [[[[1]]], [[[2]]], [[[0.5]]], [[[1]]]]).astype(np.float32)
    out = gamma({"image": image, "label": None}, rng)["image"]
    assert not np.allclose(out, image)
    np.testing.assert_allclose(out.reshape(4, -1).mean(1), image.reshape(4, -1).mean(1), atol=1e-4)
    np.testing.assert_allclose(out.reshape(4, -1).std(1), image.reshape(4, -1).std(1), rtol=1e-4)


@pytest.mark.parametrize("spec, message", [
    ("mirror:1.5", "the probability after ':' must be in [0, 1], got 1.5"),
    ("mirorr", "unknown transform 'mirorr'"),
    ("rotate(degree=15)", "transform 'rotate' has no option 'degree'; it accepts degrees (default 15.0), axes"),
    ("rotate(degrees=400)", "degrees must be a number in [0, 180)"),
    ("rotate(axes=(0,3))", "axes must be distinct spatial axes"),
    ("gamma(range=(2,1))", "range must be a number or a pair (low, high)"),
    ("mirror+", "expected a transform name"),
])
def test_spec_errors_are_one_line_naming_the_flag(spec, message):
    with pytest.raises(ValueError) as info:
        Augmentation.from_spec(spec, _registry())
    text = str(info.value)
    assert text.startswith("--augment") and message in text and "\n" not in text


@pytest.fixture(scope="module")
def patch_source_cases():
    return [preprocess_case(synthetic.make_case((24, 40, 40), seed=s)) for s in (0, 1)]


def _patches(cases, spec=ALL, features="mri", supervised=None, size=(8, 16, 16)):
    return TaskPatches(cases, [BrainSampler(), DilatedTumorSampler(), CoreSampler()], size, (6, 6, 6), 3,
                       seed=5, input_features=features, supervised=supervised,
                       augmentation=Augmentation.from_spec(spec, _registry()))


@pytest.mark.parametrize("features", ["mri", "mri+asymmetry"])
def test_batches_are_a_function_of_the_step_with_workers_and_on_resume(patch_source_cases, features):
    patches = _patches(patch_source_cases, features=features)
    plain = _patches(patch_source_cases, spec="", features=features)
    tasks = (0, 1, 2)
    inline = list(iterate_steps(patches, 1, tasks, 0, workers=0))
    threaded = list(iterate_steps(patches, 1, tasks, 0, workers=2))
    resumed = list(iterate_steps(_patches(patch_source_cases, features=features), 1, tasks, 1, workers=0))
    assert len(inline) == 2
    for (step, a), (_, b) in zip(inline, threaded):
        for t in tasks:
            assert np.array_equal(a[t][0], torch.as_tensor(b[t][0]).numpy())
            assert np.array_equal(a[t][1], torch.as_tensor(b[t][1]).numpy())
    for t in tasks:
        assert np.array_equal(inline[1][1][t][0], resumed[0][1][t][0])
        images, labels = inline[0][1][t]
        assert images.dtype == np.float32 and labels.dtype == np.uint8
        assert images.shape == (3, 4 if features == "mri" else 8, 8, 16, 16) and labels.shape == (3, 8, 16, 16)
        # the augmentation changed something, and another epoch draws other transforms
        assert not np.array_equal(images, plain.batch_at(1, 0, tasks)[t][0])
        assert not np.array_equal(images, patches.batch_at(2, 0, tasks)[t][0])


def test_windows_mode_crops_are_augmented_and_their_labels_cut_after(patch_source_cases):
    supervised = (slice(2, 6), slice(4, 12), slice(4, 12))
    patches = _patches(patch_source_cases, supervised=supervised)
    images, labels = patches.batch_at(0, 0, (0,))[0]
    assert images.shape == (3, 4, 8, 16, 16) and labels.shape == (3, 4, 8, 8)


class Invert(PatchTransform):
    """A third party's transform: the image negated inside the brain (an intensity transform)."""

    def __init__(self, factor: float = 1.0):
        self.factor = float(factor)

    def __call__(self, sample, rng):
        out = dict(sample)
        out["image"] = (-self.factor * sample["image"]).astype(np.float32)
        return out


class Shrink(PatchTransform):
    """A faulty one: it returns a smaller image."""

    def __call__(self, sample, rng):
        return {**sample, "image": sample["image"][:, 1:]}


@omkit.hookimpl
def _register(registry):
    registry.add("invert", Invert)
    registry.add("shrink", Shrink)


@pytest.fixture
def with_plugin():
    omkit.setup_plugins(extra_plugins={"invert_plugin": types.SimpleNamespace(omkit_register_transforms=_register)})
    yield
    omkit.setup_plugins()


def test_a_third_party_transform_registers_keeps_the_contract_and_trains(with_plugin, tmp_path, capsys):
    from omkit.checkpoint import load_model

    assert "invert" in omkit.get_plugins().registry("transform").names()
    check_transform_contract(Invert(2.0), "invert")
    with pytest.raises(TypeError, match="transform 'shrink' must keep 'image' a numpy float32 array of shape"):
        check_transform_contract(Shrink(), "shrink")
    synthetic.make_dataset(tmp_path / "data", num_cases=2, shape=(16, 32, 32), seed=60)
    run = tmp_path / "run"
    args = ["train", "--preset", "omnet_cga", "-i", str(tmp_path / "data"), "-o", str(run),
            "--augment", "mirror+invert(factor=2):0.5", "--width", "0.125", "--patch-size", "8,16,16",
            "--stage-epochs", "0,0,1", "--patches-per-epoch", "4", "--batch-per-task", "2", "--max-steps", "2",
            "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--device", "cpu", "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert cli_main(args) == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    assert json.loads((run / "config.json").read_text())["config"]["augment"] == "mirror+invert(factor=2):0.5"
    _, meta = load_model(run / "model.pt")
    assert meta.training["augment"] == "mirror+invert(factor=2):0.5"
    # a misspelt option is one line naming --augment, before anything is written
    bad = list(args)
    bad[bad.index("mirror+invert(factor=2):0.5")] = "mirror+invert(facter=2)"
    bad[bad.index(str(run))] = str(tmp_path / "bad")
    capsys.readouterr()
    assert cli_main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--augment" in err and "transform 'invert' has no option 'facter'" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kind", ["rotate", "scale"])
def test_rotate_and_scale_resample_as_monais_affine_does(kind):
    """Rotate and scale resample through torch's grid_sample directly with the grid MONAI's
    ``Affined`` builds: on a patch of unequal sides, image and mirror within float rounding,
    labels equal (measured: at most 1.5e-5 apart)."""
    from monai.transforms import Affined

    from omkit.plugins.augment import Rotate, Scale

    rng = np.random.default_rng(0)
    for seed in range(4):
        sample = {"image": rng.standard_normal((4, 12, 20, 24)).astype(np.float32),
                  "mirror": rng.standard_normal((4, 12, 20, 24)).astype(np.float32),
                  "label": rng.integers(0, 5, (12, 20, 24)).astype(np.uint8)}
        if kind == "rotate":
            moved = Rotate(15, (0, 1, 2))(sample, np.random.default_rng(seed))
            draws = np.random.default_rng(seed).uniform(-np.radians(15), np.radians(15), 3)
            params = {"rotate_params": [float(a) for a in draws]}
        else:
            moved = Scale(0.15)(sample, np.random.default_rng(seed))
            params = {"scale_params": [float(np.random.default_rng(seed).uniform(0.85, 1.15))] * 3}
        want = Affined(["image", "mirror", "label"], **params, mode=["bilinear", "bilinear", "nearest"],
                       padding_mode="zeros")({**sample, "label": sample["label"][None]})
        for key in ("image", "mirror"):
            assert moved[key].dtype == np.float32 and moved[key].shape == sample[key].shape
            np.testing.assert_allclose(moved[key], np.asarray(want[key]), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(moved["label"], np.asarray(want["label"])[0].round().astype(np.uint8))
        assert not np.array_equal(moved["image"], sample["image"])  # it moved


def test_elastic_runs_monai_without_metadata_and_puts_the_setting_back():
    from monai.data import get_track_meta

    from omkit.plugins.augment import Elastic

    rng = np.random.default_rng(0)
    sample = {"image": rng.standard_normal((4, 12, 20, 20)).astype(np.float32),
              "label": rng.integers(0, 5, (12, 20, 20)).astype(np.uint8), "mirror": None}
    assert get_track_meta()
    moved = Elastic()(sample, np.random.default_rng(3))
    assert get_track_meta()
    assert moved["image"].shape == sample["image"].shape and moved["label"].dtype == np.uint8
