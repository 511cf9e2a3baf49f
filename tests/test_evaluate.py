"""``omkit evaluate``: outputs, both ground-truth layouts, conventions, bad inputs."""
from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from omkit.cli import main
from omkit.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def gt_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    make_dataset(root / "data", num_cases=2, shape=(16, 32, 32))
    return root / "data"


def seg_of(case_dir):
    return next(case_dir.glob("*_seg.nii.gz"))


def make_predictions(gt_cases, out, change=None):
    """Predictions = the ground truth, optionally altered by ``change(array)``."""
    out.mkdir(parents=True)
    for case_dir in sorted(gt_cases.iterdir()):
        image = nib.load(str(seg_of(case_dir)))
        data = np.asanyarray(image.dataobj).copy()
        if change is not None:
            data = change(data)
        nib.save(nib.Nifti1Image(data.astype(np.uint8), image.affine), str(out / f"{case_dir.name}.nii.gz"))
    return out


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_perfect_predictions_and_output_format(gt_cases, tmp_path, capsys):
    pred = make_predictions(gt_cases, tmp_path / "pred")
    assert main(["evaluate", "-i", str(pred), "--gt", str(gt_cases), "-o", str(tmp_path / "scores")]) == 0
    printed = capsys.readouterr().out
    assert "WT" in printed and "Dice" in printed
    rows = read_csv(tmp_path / "scores" / "metrics.csv")
    assert list(rows[0]) == ["case", "region", "dice", "ppv", "sensitivity", "hd95"]
    assert [(r["case"], r["region"]) for r in rows[:3]] == [(sorted(p.name for p in gt_cases.iterdir())[0], r) for r in ("WT", "TC", "ET")]
    assert len(rows) == 6 and all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in rows)
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert summary["cases"] == 2
    assert set(summary["regions"]["ET"]["dice"]) >= {"mean", "median", "std"}


def test_gt_as_label_files_and_2023_convention(gt_cases, tmp_path):
    def drop_edema(a):
        a = a.copy()
        a[a == 2] = 0
        return a

    pred = make_predictions(gt_cases, tmp_path / "pred", drop_edema)
    assert main(["evaluate", "-i", str(pred), "--gt", str(gt_cases), "-o", str(tmp_path / "a")]) == 0
    # the same ground truth as <case-id>.nii.gz files, everything in the 2023 convention (ET = 3)
    files = tmp_path / "gt_files"
    files.mkdir()
    pred23 = tmp_path / "pred23"
    pred23.mkdir()
    for case_dir in gt_cases.iterdir():
        for src, dst in ((seg_of(case_dir), files), (pred / f"{case_dir.name}.nii.gz", pred23)):
            image = nib.load(str(src))
            data = np.asanyarray(image.dataobj).copy()
            data[data == 4] = 3
            nib.save(nib.Nifti1Image(data, image.affine), str(dst / f"{case_dir.name}.nii.gz"))
    assert main(["evaluate", "-i", str(pred23), "--gt", str(files), "-o", str(tmp_path / "b"),
                 "--label-convention", "2023"]) == 0
    a, b = read_csv(tmp_path / "a" / "metrics.csv"), read_csv(tmp_path / "b" / "metrics.csv")
    assert a == b
    wt = [r for r in a if r["region"] == "WT"]
    assert all(float(r["dice"]) < 1.0 and float(r["ppv"]) == 1.0 for r in wt)  # edema missed, nothing extra
    assert all(float(r["dice"]) == 1.0 for r in a if r["region"] != "WT")


@pytest.mark.parametrize("problem", ["shape", "no ground truth", "corrupt", "4-D", "bad values", "affine"])
def test_bad_inputs(problem, gt_cases, tmp_path, capsys):
    pred = make_predictions(gt_cases, tmp_path / "pred")
    victim = sorted(pred.iterdir())[0]
    image = nib.load(str(victim))
    if problem == "shape":
        nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), image.affine), str(victim))
    elif problem == "no ground truth":
        victim = victim.rename(pred / "Unknown_case.nii.gz")
    elif problem == "corrupt":
        victim.write_bytes(b"\x1f\x8b\x08garbage")
    elif problem == "4-D":
        nib.save(nib.Nifti1Image(np.zeros((*image.shape, 2), np.uint8), image.affine), str(victim))
    elif problem == "bad values":
        nib.save(nib.Nifti1Image(np.full(image.shape, 7, np.uint8), image.affine), str(victim))
    elif problem == "affine":
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine * 2), str(victim))
    out = tmp_path / "scores"
    rc = main(["evaluate", "-i", str(pred), "--gt", str(gt_cases), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and victim.name in err, err
    assert not out.exists() or not any(out.iterdir())


def test_existing_outputs_need_force(gt_cases, tmp_path, capsys):
    pred = make_predictions(gt_cases, tmp_path / "pred")
    out = tmp_path / "scores"
    args = ["evaluate", "-i", str(pred), "--gt", str(gt_cases), "-o", str(out)]
    assert main(args) == 0
    before = (out / "metrics.csv").read_text()
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == before
    assert main(args + ["--force"]) == 0
