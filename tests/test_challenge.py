"""``omkit evaluate --challenge <2025 edition>`` against the organisers' package
(``brats-evaluation``, the ``challenge`` extra, part of the ``test`` extra): the
same files scored by ``omkit evaluate`` and by the package's own
``evaluate_single_exam`` must agree per case and region group. Without the
package these tests skip, unless OMKIT_REQUIRE_CHALLENGE_PACKAGE=1 (``make test``
sets it, so CI cannot skip them)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from omkit.challenge import CHALLENGE_CONFIGS, METRIC_SOURCES, to_challenge_labels
from omkit.cli import main

DSC_TOLERANCE = 1e-6  # metrics.csv keeps 6 significant digits: DSC and NSD below 1 lose at most 5e-7
HD95_TOLERANCE_MM = 0.1


@pytest.fixture(scope="module")
def package():
    try:
        import brats_evaluation
        import panoptica  # noqa: F401
    except ImportError:
        if os.environ.get("OMKIT_REQUIRE_CHALLENGE_PACKAGE") == "1":
            raise
        pytest.skip("brats-evaluation not installed: pip install 'omkit[challenge]'")
    return brats_evaluation


def _save(labels: np.ndarray, path: Path, zooms=(1.0, 1.0, 1.0)) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([*zooms, 1.0])), str(path))
    return path


def _blob_map(rng, shape, lesions: int, rc: bool) -> np.ndarray:
    """A glioma-like map in the 2024 labels: each lesion an edema ball around a core of
    necrosis and an enhancing rim, some touching, plus an optional resection cavity."""
    out = np.zeros(shape, np.uint8)
    grid = np.indices(shape).astype(np.float32)
    for _ in range(lesions):
        centre = [rng.uniform(6, n - 6) for n in shape]
        radius = rng.uniform(2.0, 7.0)
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        out[(distance <= radius) & (out == 0)] = 2
        out[distance <= radius * 0.6] = 3
        out[distance <= radius * 0.35] = 1
    if rc:
        centre = [rng.uniform(5, n - 5) for n in shape]
        out[np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) <= rng.uniform(2, 4)] = 4
    return out


def _perturbed(rng, labels: np.ndarray) -> np.ndarray:
    """A prediction: the map shifted by a voxel, some lesions dropped, a false-positive blob."""
    from scipy import ndimage

    pred = np.roll(labels, tuple(int(v) for v in rng.integers(-1, 2, size=3)), axis=(0, 1, 2))
    components, count = ndimage.label(pred > 0)
    for lesion in range(1, count + 1):
        if rng.random() < 0.3:
            pred[components == lesion] = 0
    if rng.random() < 0.7:
        corner = [int(rng.integers(1, n - 5)) for n in labels.shape]
        pred[tuple(slice(c, c + int(rng.integers(2, 4))) for c in corner)] = int(rng.integers(1, 4))
    return pred


def _real_maps(sample_root: Path | None, count: int) -> list[np.ndarray]:
    """Real BraTS 2018 ground truths, cropped to the tumor plus a margin, in the 2023 labels."""
    if sample_root is None or not sample_root.is_dir():
        return []
    import nibabel as nib
    from scipy import ndimage

    maps = []
    for seg in sorted(sample_root.glob("*/*_seg.nii.gz"))[:count]:
        labels = np.asarray(nib.load(str(seg)).dataobj).astype(np.uint8)
        box = ndimage.find_objects((labels > 0).astype(np.uint8))[0]
        box = tuple(slice(max(s.start - 4, 0), s.stop + 4) for s in box)
        labels = labels[box]
        labels[labels == 4] = 3
        maps.append(labels)
    return maps


@pytest.fixture(scope="module")
def label_maps(tmp_path_factory):
    """>= 20 (prediction, ground truth) pairs in the glioma config's labels (the 2024
    convention): random multi-lesion maps (some with a resection cavity, some at
    1 x 1 x 2 mm), an empty prediction, an empty reference, both empty, and real label
    maps against shifted copies."""
    from conftest import SAMPLE_DATA

    rng = np.random.default_rng(2025)
    root = tmp_path_factory.mktemp("challenge")
    pairs = []
    for i in range(16):
        gt = _blob_map(rng, (36, 40, 32), lesions=int(rng.integers(1, 5)), rc=i % 3 == 0)
        pairs.append((f"random{i:02d}", _perturbed(rng, gt), gt, (1.0, 1.0, 2.0) if i % 4 == 1 else (1.0, 1.0, 1.0)))
    gt = _blob_map(rng, (36, 40, 32), lesions=3, rc=True)
    pairs.append(("empty_prediction", np.zeros_like(gt), gt, (1.0, 1.0, 1.0)))
    pairs.append(("empty_reference", _perturbed(rng, gt), np.zeros_like(gt), (1.0, 1.0, 1.0)))
    pairs.append(("both_empty", np.zeros_like(gt), np.zeros_like(gt), (1.0, 1.0, 1.0)))
    pairs.append(("rc_only", np.where(gt == 4, 4, 0), np.where(np.roll(gt, 1, 0) == 4, 4, 0), (1.0, 1.0, 1.0)))
    for j, real in enumerate(_real_maps(SAMPLE_DATA, 3)):
        pairs.append((f"real{j}", _perturbed(rng, real), real, (1.0, 1.0, 1.0)))
    for case, pred, gt, zooms in pairs:
        _save(pred, root / "pred" / f"{case}.nii.gz", zooms)
        _save(gt, root / "gt" / f"{case}.nii.gz", zooms)
    return root, [case for case, *_ in pairs]


def _read_rows(path: Path) -> dict[tuple[str, str], dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {(row["case"], row["region"]): row for row in csv.DictReader(f)}


def _close(ours: str, theirs, tolerance: float) -> bool:
    ours, theirs = float(ours), float("nan") if theirs is None else float(theirs)
    if math.isnan(theirs) or math.isinf(theirs):
        return (math.isnan(ours) and math.isnan(theirs)) or ours == theirs
    return abs(ours - theirs) <= tolerance


def test_brats_gli_2025_agrees_with_the_package_on_every_map(package, label_maps, tmp_path, capsys):
    import nibabel as nib
    from panoptica import Panoptica_Evaluator

    from omkit.challenge import _quiet

    root, cases = label_maps
    assert len(cases) >= 20
    assert main(["evaluate", "-i", str(root / "pred"), "--gt", str(root / "gt"), "-o", str(tmp_path / "eval"),
                 "--challenge", "BraTS-GLI-2025", "--label-convention", "2024"]) == 0
    ours = _read_rows(tmp_path / "eval" / "metrics.csv")
    with _quiet():
        evaluator = Panoptica_Evaluator.load_from_config(str(package.config_path("gli")))
    compared = 0
    for case in cases:
        pred_path, gt_path = root / "pred" / f"{case}.nii.gz", root / "gt" / f"{case}.nii.gz"
        if len(set(nib.load(str(gt_path)).header.get_zooms())) == 1:  # the organisers' own route, from files
            theirs = package.evaluate_single_exam(str(pred_path), str(gt_path), case, evaluator)
        else:
            # From a file path panoptica reads with SimpleITK, whose arrays are (z, y, x) but whose
            # spacing stays (x, y, z): anisotropic voxels get the wrong spacing per axis there.
            # BraTS data is 1 mm isotropic; these maps go through its nibabel route, which pairs them right.
            with _quiet():
                results = evaluator.evaluate(nib.load(str(pred_path)), nib.load(str(gt_path)))
            theirs = {group: result.to_dict(True) for group, result in results.items()}
        assert "error" not in theirs, theirs
        groups = {k: v for k, v in theirs.items() if isinstance(v, dict)}
        assert {(case, g.upper()) for g in groups} == {key for key in ours if key[0] == case}
        for group, values in groups.items():
            row = ours[(case, group.upper())]
            for metric, source in METRIC_SOURCES.items():
                tolerance = HD95_TOLERANCE_MM if metric.endswith("hd95") else DSC_TOLERANCE
                assert _close(row[metric], values.get(source), tolerance), (case, group, metric, row[metric],
                                                                            values.get(source))
                compared += 1
    assert compared >= 20 * 6 * len(METRIC_SOURCES)
    # the edge cases of the bundled config, as omkit reports them
    assert ours[("empty_prediction", "WT")]["lesionwise_dsc"] == "0" and ours[("empty_prediction", "WT")][
        "global_hd95"] == "inf"
    assert ours[("empty_reference", "WT")]["global_nsd"] == "0" and ours[("empty_reference", "WT")]["lesions_fp"] != "0"
    assert ours[("both_empty", "ET")]["global_dsc"] == "nan"
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["challenge"]["package_config"] == "gli" and summary["challenge"]["package"] == "brats-evaluation"
    assert summary["regions"]["WT"]["global_hd95"]["infinite"] >= 1
    assert "BraTS-GLI-2025" in capsys.readouterr().out


def test_omkit_conventions_are_mapped_onto_the_config(package, label_maps, tmp_path):
    """2018-labelled files (4 = enhancing) score as the same maps in the config's labels."""
    from omkit.challenge import load_evaluator, score_labels

    root, cases = label_maps
    legacy = tmp_path / "legacy"
    import nibabel as nib

    for case in ("random00", "random02", "empty_prediction"):
        for side in ("pred", "gt"):
            labels = np.asarray(nib.load(str(root / side / f"{case}.nii.gz")).dataobj).astype(np.uint8)
            labels[labels == 4] = 0  # no cavity in 2018
            reference = labels.copy()
            labels[labels == 3] = 4
            _save(labels, legacy / side / f"{case}.nii.gz")
            _save(reference, legacy / f"{side}_as_config" / f"{case}.nii.gz")
    assert main(["evaluate", "-i", str(legacy / "pred"), "--gt", str(legacy / "gt"), "-o", str(tmp_path / "eval"),
                 "--challenge", "BraTS-GLI-2025", "--label-convention", "2018"]) == 0
    ours = _read_rows(tmp_path / "eval" / "metrics.csv")
    evaluator = load_evaluator("BraTS-GLI-2025")
    for case in ("random00", "random02", "empty_prediction"):
        pred = np.asarray(nib.load(str(legacy / "pred_as_config" / f"{case}.nii.gz")).dataobj)
        gt = np.asarray(nib.load(str(legacy / "gt_as_config" / f"{case}.nii.gz")).dataobj)
        for group, values in score_labels(evaluator, pred, gt, (1.0, 1.0, 1.0)).items():
            for metric in METRIC_SOURCES:
                assert _close(ours[(case, group)][metric], values[metric], HD95_TOLERANCE_MM), (case, group, metric)


@pytest.mark.parametrize("name", sorted(CHALLENGE_CONFIGS))
def test_every_config_is_bundled_and_takes_omkits_labels(package, name):
    from omkit.challenge import load_evaluator

    import re

    config = CHALLENGE_CONFIGS[name]
    assert load_evaluator(config).segmentation_class_groups_names, name
    text = package.config_path(config.package_config).read_text(encoding="utf-8")
    defined = {int(v) for labels in re.findall(r"value_labels: \[([\d, ]+)\]", text) for v in labels.split(",")}
    assert set(config.values) == defined, (name, defined)
    assert set(config.labels.values()) <= defined


def test_label_mapping_without_the_package():
    labels_2023 = np.array([0, 1, 2, 3])
    assert to_challenge_labels(labels_2023, "2023", "BraTS-PED-2025").tolist() == [0, 2, 4, 1]
    assert to_challenge_labels(labels_2023, "2023", "BraTS-MEN-RT-2025").tolist() == [0, 1, 0, 1]
    assert to_challenge_labels(np.array([0, 1, 2, 3, 4]), "2024", "BraTS-GoAT-2025").tolist() == [0, 1, 2, 3, 0]
    assert to_challenge_labels(np.array([0, 1, 2, 4]), "2018", "BraTS-MET-2025").tolist() == [0, 1, 2, 3]
    assert to_challenge_labels(np.array([0, 3, 4]), "native", "BraTS-PED-2025").tolist() == [0, 3, 4]
    with pytest.raises(ValueError, match="seg.nii.gz: label values \\[2\\] are not labels of BraTS-MEN-RT-2025"):
        to_challenge_labels(np.array([0, 2]), "native", "BraTS-MEN-RT-2025", "seg.nii.gz")


def test_a_missing_package_is_one_line_naming_the_extra(label_maps, tmp_path, capsys, monkeypatch):
    import sys

    root, _ = label_maps
    monkeypatch.setitem(sys.modules, "brats_evaluation", None)  # import fails as if not installed
    code = main(["evaluate", "-i", str(root / "pred"), "--gt", str(root / "gt"), "-o", str(tmp_path / "eval"),
                 "--challenge", "BraTS-MET-2025"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pip install 'omkit[challenge]'" in err and "BraTS-MET-2025" in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("extra, message", [
    (["--challenge", "BraTS-GLI-2025", "--lesionwise"], "--lesionwise applies the 2023 rules"),
    (["--label-convention", "native"], "--label-convention native needs a 2025 --challenge"),
])
def test_option_conflicts_are_one_line(label_maps, tmp_path, capsys, extra, message):
    root, _ = label_maps
    assert main(["evaluate", "-i", str(root / "pred"), "--gt", str(root / "gt"), "-o", str(tmp_path / "e")] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
