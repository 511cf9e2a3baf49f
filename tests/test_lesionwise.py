"""Lesion-wise Dice and HD95 (BraTS 2023 rules, omkit.lesionwise): every rule
on constructed volumes with hand-computed values.

The organisers' reference code is not a package on PyPI (and needs NumPy < 2 and
pandas < 2), so it is not a test dependency; tests/test_lesionwise_organisers.py
compares omkit with it wherever it can run."""
from __future__ import annotations

import numpy as np
import pytest

from omkit.lesionwise import (CHALLENGES, DEFAULT_CHALLENGE, LESION_HD95_PENALTY, case_lesionwise, get_challenge,
                              lesion_regions, region_lesionwise)

SHAPE = (40, 40, 40)


def box(mask, z, y, x):
    mask[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return mask


def empty():
    return np.zeros(SHAPE, bool)


def test_the_challenge_table():
    gli = get_challenge(DEFAULT_CHALLENGE)
    assert (gli.name, gli.dilation, gli.volume_threshold) == ("BraTS-GLI-2023", 3, 50)
    assert (CHALLENGES["BraTS-MET-2023"].dilation, CHALLENGES["BraTS-MET-2023"].volume_threshold) == (1, 2)
    assert CHALLENGES["BraTS-MEN-2023"].dilation == 1
    with pytest.raises(ValueError, match="BraTS-GLI-2023"):
        get_challenge("BraTS-XYZ")


def test_perfect_prediction():
    gt = box(empty(), (2, 8), (2, 8), (2, 8))
    s = region_lesionwise(gt.copy(), gt)
    assert s == {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "lesions_tp": 1, "lesions_fn": 0, "lesions_fp": 0}


def test_a_missed_lesion_scores_zero_and_374():
    gt = box(box(empty(), (2, 8), (2, 8), (2, 8)), (25, 30), (25, 30), (25, 30))  # 216 and 125 voxels
    pred = box(empty(), (2, 8), (2, 8), (2, 8))
    s = region_lesionwise(pred, gt, lesions=True)
    assert s["lesionwise_dice"] == pytest.approx((1 + 0) / 2)
    assert s["lesionwise_hd95"] == pytest.approx((0 + 374) / 2)
    assert (s["lesions_tp"], s["lesions_fn"], s["lesions_fp"]) == (1, 1, 0)
    assert [lesion["volume"] for lesion in s["lesions"]] == [216.0, 125.0]


def test_a_false_positive_scores_zero_and_374():
    gt = box(empty(), (2, 8), (2, 8), (2, 8))
    pred = box(gt.copy(), (30, 32), (30, 32), (30, 32))  # an 8-voxel blob far away: FP whatever its size
    s = region_lesionwise(pred, gt)
    assert s["lesionwise_dice"] == pytest.approx(1 / 2)
    assert s["lesionwise_hd95"] == pytest.approx(374 / 2)
    assert (s["lesions_tp"], s["lesions_fn"], s["lesions_fp"]) == (1, 0, 1)


def test_two_predicted_components_on_one_lesion():
    # a 1-voxel-thick 10 x 10 plate: every voxel is surface
    gt = box(empty(), (5, 6), (5, 15), (5, 15))
    # predicted: columns 5-8 and 11-14 of it, two components (a 2-column gap)
    pred = box(box(empty(), (5, 6), (5, 15), (5, 9)), (5, 6), (5, 15), (11, 15))
    s = region_lesionwise(pred, gt, lesions=True)
    (lesion,) = s["lesions"]
    assert lesion["components"] == 2
    assert s["lesionwise_dice"] == pytest.approx(2 * 80 / (100 + 80))
    # predicted voxels are all on the plate (distance 0); 20 of the 100 plate
    # voxels (columns 9, 10) are 1 mm from the prediction: the 95th percentile
    # (linear interpolation over the sorted 80 zeros and 20 ones) is 1
    assert s["lesionwise_hd95"] == pytest.approx(1.0)
    assert (s["lesions_tp"], s["lesions_fn"], s["lesions_fp"]) == (1, 0, 0)


def test_a_component_in_the_dilated_region_counts_for_the_lesion():
    gt = box(empty(), (10, 14), (10, 14), (10, 14))                   # 64 voxels
    pred = box(gt.copy(), (10, 12), (10, 12), (16, 18))              # + 8 voxels 2 voxels away (within 3)
    s = region_lesionwise(pred, gt, lesions=True)
    assert s["lesions"][0]["components"] == 2 and s["lesions_fp"] == 0
    assert s["lesionwise_dice"] == pytest.approx(2 * 64 / (64 + 72))
    # with a dilation of 1 (meningioma parameters) the blob lies outside: a false positive
    s = region_lesionwise(pred, gt, challenge="BraTS-MEN-2023")
    assert s["lesions_fp"] == 1
    assert s["lesionwise_dice"] == pytest.approx(1 / 2)


def test_fragments_within_the_dilation_are_one_lesion():
    gt = box(box(empty(), (10, 14), (10, 14), (10, 14)), (10, 14), (10, 14), (18, 22))  # a 4-voxel gap
    assert lesion_regions(gt, 3).max() == 1     # dilated by 3 from each side, the gap closes
    assert lesion_regions(gt, 1).max() == 2
    pred = box(empty(), (10, 14), (10, 14), (10, 14))                   # only the first fragment
    s = region_lesionwise(pred, gt, lesions=True)
    assert len(s["lesions"]) == 1 and s["lesions"][0]["volume"] == 128.0
    assert s["lesionwise_dice"] == pytest.approx(2 * 64 / (128 + 64))
    assert s["lesions_tp"] == 1 and s["lesions_fn"] == 0


def test_lesions_at_or_under_the_threshold_are_ignored():
    big = box(empty(), (2, 8), (2, 8), (2, 8))
    tiny = box(big.copy(), (30, 32), (30, 32), (30, 32))                   # + 8 voxels, missed
    s = region_lesionwise(big.copy(), tiny, lesions=True)
    assert [lesion["counted"] for lesion in s["lesions"]] == [True, False]
    assert s == {**s, "lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "lesions_tp": 1, "lesions_fn": 0,
                 "lesions_fp": 0}
    # a component on an ignored lesion is no false positive either
    s = region_lesionwise(tiny.copy(), tiny)
    assert (s["lesionwise_dice"], s["lesions_fp"]) == (1.0, 0)
    # exactly the threshold (50 voxels) is ignored; 51 is counted
    at = box(empty(), (2, 4), (2, 7), (2, 7))                           # 2 x 5 x 5 = 50
    assert region_lesionwise(empty(), at)["lesionwise_dice"] == 1.0
    above = at.copy()
    above[4, 2, 2] = True
    assert region_lesionwise(empty(), above)["lesionwise_dice"] == 0.0


def test_the_threshold_is_a_volume_in_cubic_millimetres():
    lesion = box(empty(), (2, 5), (2, 7), (2, 4))                        # 30 voxels
    assert region_lesionwise(empty(), lesion)["lesions_fn"] == 0                       # 30 mm³: ignored
    s = region_lesionwise(empty(), lesion, spacing=(2.0, 1.0, 1.0), lesions=True)      # 60 mm³: counted
    assert s["lesions"][0]["volume"] == 60.0 and s["lesions_fn"] == 1
    assert (s["lesionwise_dice"], s["lesionwise_hd95"]) == (0.0, LESION_HD95_PENALTY)


def test_both_empty_is_perfect():
    s = region_lesionwise(empty(), empty())
    assert s == {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "lesions_tp": 0, "lesions_fn": 0, "lesions_fp": 0}


def test_an_empty_prediction():
    gt = box(box(empty(), (2, 8), (2, 8), (2, 8)), (25, 30), (25, 30), (25, 30))
    s = region_lesionwise(empty(), gt)
    assert (s["lesionwise_dice"], s["lesionwise_hd95"]) == (0.0, 374.0)
    assert (s["lesions_tp"], s["lesions_fn"], s["lesions_fp"]) == (0, 2, 0)
    # nothing counted (ground truth only under the threshold) scores as perfect, as in the challenge
    tiny = box(empty(), (2, 4), (2, 4), (2, 4))
    assert region_lesionwise(empty(), tiny)["lesionwise_dice"] == 1.0


def test_an_empty_ground_truth():
    pred = box(box(empty(), (2, 4), (2, 4), (2, 4)), (20, 22), (20, 22), (20, 22))
    s = region_lesionwise(pred, empty())
    assert (s["lesionwise_dice"], s["lesionwise_hd95"], s["lesions_fp"]) == (0.0, 374.0, 2)


def test_case_lesionwise_scores_every_ground_truth_region():
    gt = {"WT": box(empty(), (2, 8), (2, 8), (2, 8)), "TC": empty(), "ET": empty(), "RC": box(empty(), (20, 25), (20, 25), (20, 25))}
    pred = {"WT": gt["WT"].copy(), "TC": empty(), "ET": empty()}          # no RC: counted as empty
    scores = case_lesionwise(pred, gt)
    assert list(scores) == ["WT", "TC", "ET", "RC"]
    assert scores["WT"]["lesionwise_dice"] == 1.0 and scores["TC"]["lesionwise_dice"] == 1.0
    assert (scores["RC"]["lesionwise_dice"], scores["RC"]["lesionwise_hd95"]) == (0.0, 374.0)


def test_real_ground_truth_against_itself_and_nothing(sample_data):
    from omkit.data import find_cases
    from omkit.evaluation import read_label_map
    from omkit.labels import get_convention

    case = find_cases(sample_data)[0]
    labels, _, zooms = read_label_map(next(case.glob("*_seg.nii*")))
    regions = get_convention("2018").regions(labels)
    for region, gt in regions.items():
        same = region_lesionwise(gt.copy(), gt, zooms)
        assert (same["lesionwise_dice"], same["lesionwise_hd95"], same["lesions_fp"]) == (1.0, 0.0, 0)
        none = region_lesionwise(np.zeros_like(gt), gt, zooms)
        assert none["lesions_tp"] == 0 and none["lesions_fp"] == 0
        assert none["lesionwise_dice"] == (1.0 if none["lesions_fn"] == 0 else 0.0)


def test_evaluate_cli_writes_lesionwise_columns_and_parameters(tmp_path, capsys):
    import csv
    import json
    import shutil

    from omkit.cli import main
    from omkit.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", num_cases=2, shape=(16, 32, 32))
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in (tmp_path / "data").iterdir():
        shutil.copy(next(case.glob("*_seg.nii.gz")), preds / f"{case.name}.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", "-i", str(preds), "--gt", str(tmp_path / "data"), "-o", str(out), "--lesionwise",
                 "--challenge", "BraTS-MET-2023"]) == 0
    assert "LW Dice" in capsys.readouterr().out
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "region", "dice", "ppv", "sensitivity", "hd95", "lesionwise_dice",
                             "lesionwise_hd95", "lesions_tp", "lesions_fn", "lesions_fp"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lesionwise"]["challenge"] == "BraTS-MET-2023" and summary["lesionwise"]["dilation"] == 1
    assert summary["regions"]["WT"]["lesionwise_dice"]["mean"] == 1.0
    assert summary["regions"]["WT"]["dice"]["mean"] == 1.0
    # without --lesionwise: the voxel-wise columns only
    assert main(["evaluate", "-i", str(preds), "--gt", str(tmp_path / "data"), "-o", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "metrics.csv").read_text().splitlines()[0] == "case,region,dice,ppv,sensitivity,hd95"
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "-i", str(preds), "--gt", str(tmp_path / "data"), "-o", str(out), "--force",
              "--lesionwise", "--challenge", "BraTS-XYZ"])
    assert exit_.value.code == 2


def test_false_positive_components_count_only_components_touching_no_truth():
    from omkit.lesionwise import false_positive_components

    gt = np.zeros((10, 10, 10), dtype=bool)
    gt[2:4, 2:4, 2:4] = True
    pred = np.zeros_like(gt)
    pred[3:6, 3:6, 3:6] = True   # overlaps the truth: not a false positive
    pred[8:10, 0:2, 0:3] = True  # 12 voxels far away
    pred[0, 9, 9] = True         # one voxel
    pred[7, 7, 7] = True         # two voxels beyond the overlapping block: its own component
    count, voxels = false_positive_components(pred, gt)
    assert (count, voxels) == (3, 14)
    assert false_positive_components(np.zeros_like(gt), gt) == (0, 0)
    assert false_positive_components(gt, gt) == (0, 0)
    # 26-connectivity: a corner-touching voxel joins the component that overlaps the truth
    pred2 = gt.copy()
    pred2[4, 4, 4] = True
    assert false_positive_components(pred2, gt) == (0, 0)
