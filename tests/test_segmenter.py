"""omkit.Segmenter: images in memory to label maps, the same path as ``omkit predict``
(voxel for voxel, on synthetic and real cases), inputs of every kind, one-line errors."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import omkit
from omkit.checkpoint import save_model
from omkit.cli import main
from omkit.data import CaseError, find_cases

from conftest import TINY_PATCH, TINY_WIDTH, model_workspace

TILES = {"size": TINY_PATCH, "keep": TINY_PATCH}
TILE_FLAGS = ["--tile-size", ",".join(map(str, TINY_PATCH)), "--tile-keep", ",".join(map(str, TINY_PATCH))]
# the 2018 file naming's modality suffixes, in omkit's channel order
SUFFIXES = ("flair", "t1", "t1ce", "t2")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return model_workspace(tmp_path_factory.mktemp("segmenter"), shape=(16, 40, 40))


def read_volumes(case_dir: Path) -> dict[str, np.ndarray]:
    """The four modalities as nibabel reads them, (X, Y, Z)."""
    return {s: nib.load(str(next(case_dir.glob(f"*_{s}.nii*")))).get_fdata(dtype=np.float32) for s in SUFFIXES}


def predict_files(case_dir: Path, model: Path, out: Path, *flags) -> np.ndarray:
    assert main(["predict", "--no-progress", "-i", str(case_dir), "-o", str(out), "-m", str(model), *flags]) == 0
    return np.asanyarray(nib.load(str(out / f"{case_dir.name}.nii.gz")).dataobj)


def test_in_memory_equals_omkit_predict_for_every_input_kind(workspace, tmp_path):
    case_dir = find_cases(workspace / "data")[0]
    want = predict_files(case_dir, workspace / "model.pt", tmp_path / "out", *TILE_FLAGS)
    assert set(np.unique(want).tolist()) - {0}, "the check needs some tumor predicted"
    seg = omkit.Segmenter.from_files(workspace / "model.pt", device="cpu", tiles=TILES)
    volumes = read_volumes(case_dir)
    stacked = np.stack([volumes[s] for s in SUFFIXES])
    for image in (volumes, stacked, torch.from_numpy(stacked),
                  {"t2": volumes["t2"], "t1c": volumes["t1ce"], "FLAIR": volumes["flair"], "t1": volumes["t1"]}):
        got = seg(image)
        assert isinstance(got, torch.Tensor if isinstance(image, torch.Tensor) else np.ndarray)
        got = np.asarray(got)
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_segment_keeps_affine_probabilities_and_convention(workspace, tmp_path):
    case_dir = find_cases(workspace / "data")[0]
    flair = nib.load(str(next(case_dir.glob("*_flair.nii.gz"))))
    want = predict_files(case_dir, workspace / "model.pt", tmp_path / "out", *TILE_FLAGS, "--no-postprocess",
                         "--save-probabilities", "--label-convention", "2023")
    seg = omkit.Segmenter.from_files([workspace / "model.pt"], device="cpu", tiles=TILES, postprocess=False,
                                     label_convention="2023")
    result = seg.segment(read_volumes(case_dir), affine=flair.affine, return_probabilities=True)
    np.testing.assert_array_equal(result.labels, want)
    assert result.label_convention == "2023" and 4 not in np.unique(result.labels)
    probabilities = np.load(tmp_path / "out" / f"{case_dir.name}_probabilities.npz")
    for task, array in result.probabilities.items():
        np.testing.assert_array_equal(array, probabilities[task])
    assert np.allclose(result.affine, flair.affine)
    assert np.allclose(result.spacing, flair.header.get_zooms()[:3])
    image = result.to_nifti()
    assert image.shape == flair.shape and np.allclose(image.affine, flair.affine)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), want)


def test_options_reach_the_predictor(workspace):
    seg = omkit.Segmenter.from_files(workspace / "model.pt", device="cpu", tiles=TILES, tta=True,
                                     postprocess=["remove_small_components"], roi_dilation=3)
    assert len(seg.predictor.flips) == 8 and seg.predictor.roi_dilation == 3
    assert [name for name, _ in seg.steps] == ["remove_small_components"]
    assert seg.label_convention == "2018"  # the model file's
    assert "omnet_cga" in repr(seg)


@pytest.mark.parametrize("bad, message", [
    (lambda v: {k: v[k] for k in ("flair", "t1", "t2")}, r"image: no T1C volume"),
    (lambda v: {**v, "dwi": v["t1"]}, r"image\['dwi'\]: unknown modality"),
    (lambda v: np.stack([v[s] for s in SUFFIXES])[:3], r"image: expected a \(4, X, Y, Z\) array"),
    (lambda v: {**v, "t2": v["t2"][:-1]}, r"the modalities differ in shape"),
    (lambda v: {**v, "t1": np.where(v["t1"] > 0, np.nan, 0)}, r"image\['t1'\]: \d+ non-finite"),
    (lambda v: {**v, "t1ce": np.zeros_like(v["t1ce"])}, r"image\['t1ce'\]: the T1C modality is all zero"),
])
def test_bad_images_are_one_line_errors(workspace, bad, message):
    seg = omkit.Segmenter.from_files(workspace / "model.pt", device="cpu", tiles=TILES)
    volumes = read_volumes(find_cases(workspace / "data")[0])
    with pytest.raises(CaseError, match=message) as info:
        seg(bad(volumes))
    assert "\n" not in str(info.value)


def crop_case(case_dir: Path, target: Path, size=(96, 96, 64)) -> Path:
    """A copy of a real case cut to ``size`` voxels (X, Y, Z) around its tumor, with the
    affine moved to match: real anatomy, a fraction of the network time."""
    seg = nib.load(str(next(case_dir.glob("*_seg.nii*"))))
    centre = np.round(np.argwhere(np.asanyarray(seg.dataobj) > 0).mean(0)).astype(int)
    start = [int(np.clip(c - n // 2, 0, s - n)) for c, n, s in zip(centre, size, seg.shape)]
    box = tuple(slice(a, a + n) for a, n in zip(start, size))
    target.mkdir(parents=True)
    for path in case_dir.iterdir():
        image = nib.load(str(path))
        affine = image.affine.copy()
        affine[:3, 3] = image.affine[:3, :3] @ np.array(start) + image.affine[:3, 3]
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[box], affine, image.header), str(target / path.name))
    return target


def test_real_case_in_memory_equals_omkit_predict(sample_data, tmp_path):
    """A real BraTS 2018 case (cut around its tumor): nibabel's arrays through
    omkit.Segmenter give the very label map `omkit predict` writes for the case folder
    (with the paper's post-processing)."""
    source = find_cases(sample_data)[0]
    case_dir = crop_case(source, tmp_path / "cases" / source.name)
    torch.manual_seed(1)
    model = tmp_path / "model.pt"
    save_model(omkit.create_model("omnet_cga", width=TINY_WIDTH), model)
    flags = ["--tile-size", "16,32,32", "--tile-keep", "16,32,32", "--tile-batch", "32"]
    want = predict_files(case_dir, model, tmp_path / "out", *flags)
    seg = omkit.Segmenter.from_files(model, device="cpu", tiles={"size": (16, 32, 32), "keep": (16, 32, 32),
                                                                  "batch": 32})
    affine = nib.load(str(next(case_dir.glob("*_flair.nii*")))).affine
    result = seg.segment(read_volumes(case_dir), affine=affine)
    assert result.labels.shape == want.shape == (96, 96, 64)
    np.testing.assert_array_equal(result.labels, want)
    # post-processing ran and changed something: the comparison covers it too
    assert not np.array_equal(result.result.labels, result.result.raw_labels)


def test_one_rule_for_the_output_label_convention(workspace):
    """omkit.labels.output_convention: asked for, else the input's file naming, else the model's;
    the Segmenter (arrays, cases read from files) and omkit predict / demo follow it."""
    from omkit.data import load_case
    from omkit.labels import output_convention

    assert output_convention("2024", input_convention="2018", model_convention="2023").name == "2024"
    assert output_convention(None, input_convention="2023", model_convention="2018").name == "2023"
    assert output_convention(None, input_convention=None, model_convention="2023").name == "2023"
    assert output_convention().name == "2018"
    case = load_case(find_cases(workspace / "data")[0], with_label=False)  # 2018 file naming
    in_memory = omkit.Segmenter.case_from(np.stack(list(read_volumes(find_cases(workspace / "data")[0]).values())))
    seg = omkit.Segmenter.from_files(workspace / "model.pt", device="cpu", tiles=TILES)
    model_convention = seg.cards[0].label_convention
    assert seg.label_convention == model_convention == seg.convention_for(in_memory)
    assert seg.convention_for(case) == case.convention == "2018"
    asked = omkit.Segmenter.from_files(workspace / "model.pt", device="cpu", tiles=TILES, label_convention="2023")
    assert asked.convention_for(case) == asked.convention_for(in_memory) == asked.label_convention == "2023"


def test_the_predict_path_resolves_the_device_once(workspace, monkeypatch):
    """--device is resolved by the predictor only (from_files, to load onto it); the CLI and the
    Segmenter hand the setting on."""
    import omkit.devices
    import omkit.inference.predictor as predictor_module

    resolved = []

    def counting(name="auto", local_rank=None):
        if not isinstance(name, torch.device):
            resolved.append(name)
        return omkit.devices.resolve_device(name, local_rank)

    monkeypatch.setattr(predictor_module, "resolve_device", counting)
    seg = omkit.Segmenter.from_files(workspace / "model.pt", device="auto", tiles=TILES)
    assert resolved == ["auto"] and seg.predictor.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(__file__).resolve().parents[1] / "omkit"
    callers = sorted(p.relative_to(root).as_posix() for p in [*(root / "inference").glob("*.py"), root / "cli/predict.py"]
                     if "resolve_device" in p.read_text())
    assert callers == ["inference/predictor.py"]
