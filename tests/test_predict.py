"""``omkit predict`` end to end on synthetic cases with a tiny model, and every
bad input: one-line error naming the file, exit status 2, nothing written."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import omkit
from omkit.checkpoint import save_model
from omkit.cli import main
from omkit.cli.predict import shard
from omkit.data.synthetic import make_dataset

FAST_TILES = ["--tile-size", "8,16,16", "--tile-keep", "8,16,16"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    make_dataset(root / "data", num_cases=2, shape=(16, 40, 40))
    save_model(omkit.create_model("omnet_cga", width=0.125), root / "model.pt")
    save_model(omkit.create_model("mc2", width=0.125), root / "mc2.pt")
    return root


def predict(*argv):
    return main(["predict", "--no-progress", *FAST_TILES, *map(str, argv)])


def test_writes_label_maps_in_the_input_space(workspace, tmp_path):
    out = tmp_path / "out"
    assert predict("-i", workspace / "data", "-o", out, "-m", workspace / "model.pt", "--save-probabilities",
                   "--overlay", "--label-convention", "2023") == 0
    for case_dir in sorted((workspace / "data").iterdir()):
        flair = nib.load(str(next(case_dir.glob("*_flair.nii.gz"))))
        pred = nib.load(str(out / f"{case_dir.name}.nii.gz"))
        assert pred.shape == flair.shape
        assert np.allclose(pred.affine, flair.affine)
        assert pred.get_data_dtype() == np.uint8
        values = set(np.unique(np.asanyarray(pred.dataobj)).tolist())
        assert values <= {0, 1, 2, 3}  # 2023 convention: no 4
        probs = np.load(out / f"{case_dir.name}_probabilities.npz")
        assert probs["task1"].shape == (5, *flair.shape) and probs["task3"].shape == (2, *flair.shape)
        assert (out / f"{case_dir.name}_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_single_case_folder_and_ensemble(workspace, tmp_path):
    case = sorted((workspace / "data").iterdir())[0]
    out = tmp_path / "out"
    assert predict("-i", case, "-o", out, "-m", workspace / "model.pt", "-m", workspace / "model.pt", "--no-postprocess") == 0
    assert [p.name for p in out.iterdir()] == [f"{case.name}.nii.gz"]


def test_shard_splits_cases_between_processes():
    cases = list(range(7))
    parts = [shard(cases, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == cases and parts[0] == [0, 3, 6]


def copy_case(workspace, tmp_path) -> Path:
    src = sorted((workspace / "data").iterdir())[0]
    dst = tmp_path / "cases" / src.name
    shutil.copytree(src, dst)
    return dst


def rewrite(path: Path, array=None, affine=None):
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), str(path))


def break_case(kind: str, case: Path) -> Path:
    """Damage one file of ``case`` the way ``kind`` says; returns the file to blame."""
    flair, t2 = next(case.glob("*_flair.nii.gz")), next(case.glob("*_t2.nii.gz"))
    if kind == "missing modality":
        t2.unlink()
        return t2
    if kind == "shape mismatch":
        rewrite(t2, np.zeros((40, 40, 15), np.int16))
        return t2
    if kind == "affine mismatch":
        affine = nib.load(str(t2)).affine.copy()
        affine[0, 3] += 5
        rewrite(t2, affine=affine)
        return t2
    if kind == "NaN":
        data = np.asanyarray(nib.load(str(flair)).dataobj).astype(np.float32)
        data[10, 10, 5] = np.nan
        rewrite(flair, data)
        return flair
    if kind == "empty volume":
        for path in case.glob("*.nii.gz"):
            if not path.name.endswith("_seg.nii.gz"):
                rewrite(path, np.zeros(nib.load(str(path)).shape, np.int16))
        return flair
    if kind == "corrupt gzip":
        flair.write_bytes(gzip.compress(b"not a nifti file at all" * 20)[:60])
        return flair
    if kind == "4-D file":
        data = np.asanyarray(nib.load(str(flair)).dataobj)
        rewrite(flair, np.stack([data, data], axis=-1))
        return flair
    raise AssertionError(kind)


def assert_clean_failure(capsys, rc, blamed, out: Path):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert str(blamed) in err or Path(blamed).name in err, err
    written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert not any(name.endswith((".nii.gz", ".png", ".npz")) or ".tmp" in name for name in written), written


@pytest.mark.parametrize("kind", ["missing modality", "shape mismatch", "affine mismatch", "NaN", "empty volume",
                                  "corrupt gzip", "4-D file"])
def test_bad_case_inputs(kind, workspace, tmp_path, capsys):
    case = copy_case(workspace, tmp_path)
    blamed = break_case(kind, case)
    out = tmp_path / "out"
    rc = predict("-i", case, "-o", out, "-m", workspace / "model.pt", "--overlay")
    assert_clean_failure(capsys, rc, blamed, out)


def test_unreadable_model_file(workspace, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "out"
    assert_clean_failure(capsys, predict("-i", workspace / "data", "-o", out, "-m", bad), bad, out)
    missing = tmp_path / "nowhere.pt"
    assert_clean_failure(capsys, predict("-i", workspace / "data", "-o", out, "-m", missing), missing, out)


def test_model_preset_mismatch(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    model = workspace / "model.pt"
    assert_clean_failure(capsys, predict("-i", workspace / "data", "-o", out, "-m", model, "--expect-preset", "mc3"), model, out)
    mc2 = workspace / "mc2.pt"
    assert_clean_failure(capsys, predict("-i", workspace / "data", "-o", out, "-m", model, "-m", mc2), mc2, out)


def test_existing_output_needs_force(workspace, tmp_path, capsys):
    case = sorted((workspace / "data").iterdir())[0]
    out = tmp_path / "out"
    out.mkdir()
    existing = out / f"{case.name}.nii.gz"
    existing.write_bytes(b"keep me")
    rc = predict("-i", case, "-o", out, "-m", workspace / "model.pt")
    err = capsys.readouterr().err
    assert rc == 2 and str(existing) in err and "--force" in err
    assert existing.read_bytes() == b"keep me"
    assert predict("-i", case, "-o", out, "-m", workspace / "model.pt", "--force") == 0
    assert nib.load(str(existing)).shape == (40, 40, 16)


def test_bad_tile_options(workspace, tmp_path, capsys):
    rc = main(["predict", "-i", str(workspace / "data"), "-o", str(tmp_path), "-m", str(workspace / "model.pt"),
               "--tile-size", "8,16,12"])
    assert rc == 2 and "--tile-size" in capsys.readouterr().err
