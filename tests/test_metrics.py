"""BraTS metrics: hand-computed values, empty-region conventions, and agreement
with MONAI (an independent implementation; test-only dependency)."""
from __future__ import annotations

import numpy as np
import pytest

from omkit.metrics import case_metrics_internal, hausdorff95, overlap_scores, region_metrics, summarize, volume_diagonal


def test_overlap_scores_by_hand():
    pred = np.zeros(10, bool)
    gt = np.zeros(10, bool)
    pred[:4] = True  # TP 3, FP 1
    gt[1:7] = True   # FN 3
    s = overlap_scores(pred, gt)
    assert s["dice"] == pytest.approx(6 / 10)
    assert s["ppv"] == pytest.approx(3 / 4)
    assert s["sensitivity"] == pytest.approx(3 / 6)


def test_empty_conventions():
    empty = np.zeros((5, 6, 7), bool)
    some = empty.copy()
    some[2, 3, 4] = True
    assert region_metrics(empty, empty) == {"dice": 1.0, "ppv": 1.0, "sensitivity": 1.0, "hd95": 0.0}
    for pred, gt in ((empty, some), (some, empty)):
        m = region_metrics(pred, gt, spacing=(2.0, 1.0, 1.0))
        assert m["dice"] == m["ppv"] == m["sensitivity"] == 0.0
        assert m["hd95"] == pytest.approx(np.sqrt(10**2 + 6**2 + 7**2))
    assert volume_diagonal((155, 240, 240), (1, 1, 1)) == pytest.approx(373.13, abs=0.01)


def test_hd95_uses_spacing_and_takes_the_larger_direction():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:10, 5:10, 5:10] = True
    pred = gt.copy()
    pred[5:10, 5:10, 10:14] = True  # grown by 4 voxels along W
    iso = hausdorff95(pred, gt)
    assert 0 < iso <= 4.0
    # only W distances are involved: doubling W's spacing doubles HD95, D's changes nothing
    assert hausdorff95(pred, gt, (1, 1, 2)) == pytest.approx(2 * iso)
    assert hausdorff95(pred, gt, (3, 1, 1)) == pytest.approx(iso)
    assert hausdorff95(gt, pred) == pytest.approx(iso)  # symmetric


def test_case_metrics_on_internal_maps():
    gt = np.ones((4, 8, 8), np.uint8)
    gt[1:3, 2:6, 2:6] = 3
    gt[1:3, 3:5, 3:5] = 4
    m = case_metrics_internal(gt, gt, (1, 1, 1))
    assert set(m) == {"WT", "TC", "ET"}
    assert all(m[r]["dice"] == 1.0 and m[r]["hd95"] == 0.0 for r in m)
    rows = [{"region": r, **v} for r, v in m.items()] + [{"region": "WT", "dice": 0.0, "ppv": 0.0, "sensitivity": 0.0, "hd95": 10.0}]
    s = summarize(rows)
    assert s["WT"]["dice"] == {"mean": 0.5, "median": 0.5, "std": 0.5, "n": 2}


def random_masks(rng, shape):
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2)
    return noise > rng.uniform(0.02, 0.1), ndimage.shift(noise, rng.integers(-2, 3, 3), order=0) > rng.uniform(0.02, 0.1)


def monai_values(pred, gt, spacing):
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics", reason="MONAI (test-only dependency) is not installed")
    p = torch.from_numpy(pred)[None, None].float()
    g = torch.from_numpy(gt)[None, None].float()
    dice = metrics.DiceMetric(include_background=True)(p, g).item()
    hd = metrics.HausdorffDistanceMetric(include_background=True, percentile=95)(p, g, spacing=list(spacing)).item()
    return dice, hd


pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_monai_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(12, 30, 3))
    spacing = tuple(float(s) for s in rng.choice([0.8, 1.0, 1.5, 2.5], 3))
    pred, gt = random_masks(rng, shape)
    assert pred.any() and gt.any() and not np.array_equal(pred, gt)
    dice, hd = monai_values(pred, gt, spacing)
    ours = region_metrics(pred, gt, spacing)
    assert ours["dice"] == pytest.approx(dice, abs=1e-6)
    assert ours["hd95"] == pytest.approx(hd, rel=1e-5, abs=1e-5)


def test_agrees_with_monai_on_real_masks(sample_data):
    from omkit.data import find_cases, load_case

    case = load_case(find_cases(sample_data)[0])
    gt = case.label
    from omkit.labels import internal_regions

    # the tumor's neighbourhood is enough (and keeps MONAI quick)
    box = tuple(slice(max(int(i.min()) - 12, 0), int(i.max()) + 13) for i in np.nonzero(gt >= 2))
    gt_regions = {r: m[box] for r, m in internal_regions(gt).items()}
    # a plausible "prediction": the ground truth eroded, shifted and with a spurious blob
    from scipy import ndimage

    for region, mask in gt_regions.items():
        if not mask.any():
            continue
        pred = ndimage.shift(ndimage.binary_erosion(mask, iterations=1), (1, -2, 1), order=0)
        pred[1:4, 2:6, 2:6] = True
        dice, hd = monai_values(pred, mask, case.spacing)
        ours = region_metrics(pred, mask, case.spacing)
        assert ours["dice"] == pytest.approx(dice, abs=1e-6), region
        assert ours["hd95"] == pytest.approx(hd, rel=1e-5, abs=1e-5), region
