"""omkit's BraTS 2023 lesion-wise scores against the organisers' own 2023 code, wherever
that code can run.

The organisers' 2023 scoring (github.com/rachitsaluja/BraTS-2023-Metrics: ``metrics.py``
with ``get_LesionWiseResults``, or its later ``brats_2023_metrics`` package with
``get_lesion_wise_results``) is not on the package registry and needs NumPy < 2 and
pandas < 2, so it cannot share omkit's test environment. Point
``OMKIT_BRATS2023_METRICS`` at a checkout of it and ``OMKIT_BRATS2023_PYTHON`` at an
interpreter that has its requirements (numpy, pandas, scipy, nibabel,
connected-components-3d); the test then scores 22 label-map pairs (multi-lesion, lesions
under the volume threshold, lesions merged by the dilation, empty prediction, empty
reference, both empty, an anisotropic spacing, and real ground truths when the BraTS
sample is there) with both, in that interpreter and in omkit, and requires every region's
lesion-wise Dice within 1e-6 and the same TP / FN / FP lesion counts. HD95 differs by
design (omkit.lesionwise: voxel surfaces, where the organisers' code weights surface
elements by their area, DeepMind's surface-distance): within HD95_TOLERANCE_MM, and
the largest difference is printed. Without them it skips, saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from omkit.labels import BRATS2023
from omkit.lesionwise import region_lesionwise

from conftest import SAMPLE_DATA

CHECKOUT = os.environ.get("OMKIT_BRATS2023_METRICS")
PYTHON = os.environ.get("OMKIT_BRATS2023_PYTHON", sys.executable)
CHALLENGES = {"BraTS-GLI": "BraTS-GLI-2023", "BraTS-MET": "BraTS-MET-2023"}
# a region's lesion-wise HD95 (mm): omkit's voxel-surface HD95 per lesion against the organisers' area-weighted one
HD95_TOLERANCE_MM = 1.0

pytestmark = pytest.mark.skipif(
    not CHECKOUT or not Path(CHECKOUT).is_dir(),
    reason="the organisers' BraTS 2023 lesion-wise code is not on the package registry: set OMKIT_BRATS2023_METRICS "
           "to a checkout of it and OMKIT_BRATS2023_PYTHON to an interpreter with its requirements")

# Runs in the organisers' interpreter: their scores of every pair, as JSON.
DRIVER = r"""
import json, sys
import numpy as np
import pandas as pd

# Their code calls DataFrame.replace(np.inf, 374) on a frame whose first column holds arrays
# (the predicted lesions); pandas 1.3 skipped such cells, 1.4 and later raise. The same
# replacement, on the other columns only: the arrays (lesion numbers) never hold inf.
_replace = pd.DataFrame.replace


def replace_skipping_arrays(frame, to_replace=None, value=None, **kw):
    columns = [c for c in frame.columns if not frame[c].map(lambda v: isinstance(v, np.ndarray)).any()]
    out = frame.copy()
    out[columns] = _replace(frame[columns], to_replace, value, **kw)
    return out


pd.DataFrame.replace = replace_skipping_arrays
sys.path.insert(0, sys.argv[1])
try:
    from metrics import get_LesionWiseResults as score  # the 2023 repository's layout
    keys = ("LesionWise_Score_Dice", "LesionWise_Score_HD95")
except ImportError:
    from brats_2023_metrics.surface_distance.brats_metrics import get_lesion_wise_results as score
    keys = ("Lesion_Wise_Score_Dice", "Lesion_Wise_Score_HD95")
out = []
for pred, gt, challenge in json.loads(sys.argv[2]):
    frame = score(pred, gt, challenge)
    out.append({row["Labels"]: {"dice": float(row[keys[0]]), "hd95": float(row[keys[1]]), "tp": int(row["Num_TP"]),
                                "fn": int(row["Num_FN"]), "fp": int(row["Num_FP"])} for _, row in frame.iterrows()})
print(json.dumps(out))
"""


def random_lesions(rng, shape, count, radius=(2, 7)) -> np.ndarray:
    """A 2023-convention label map of ``count`` blobs: edema shells around cores (NETC, ET)."""
    labels = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for _ in range(count):
        centre = [rng.integers(r, s - r) for r, s in zip((8, 8, 8), shape)]
        r = rng.uniform(*radius)
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        labels[distance <= r] = 2
        labels[distance <= r * 0.6] = rng.choice([1, 3])
        labels[distance <= r * 0.3] = 3 if rng.random() < 0.7 else 1
    return labels


def perturbed(rng, labels: np.ndarray) -> np.ndarray:
    """A prediction near ``labels``: shifted, one lesion dropped at random, a few false blobs."""
    pred = np.roll(labels, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    components, count = ndimage.label(pred > 0)
    if count > 1 and rng.random() < 0.5:
        pred[components == rng.integers(1, count + 1)] = 0
    pred = np.where(pred > 0, pred, random_lesions(rng, labels.shape, int(rng.integers(0, 3)), (1, 3)))
    return pred.astype(np.uint8)


def label_pairs(rng) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, ...], str]]:
    shape = (48, 48, 40)
    pairs = []
    for i in range(14):
        gt = random_lesions(rng, shape, int(rng.integers(1, 6)))
        pairs.append((f"random{i}", perturbed(rng, gt), gt, (1.0, 1.0, 1.0), "BraTS-GLI" if i % 3 else "BraTS-MET"))
    gt = random_lesions(rng, shape, 3)
    empty = np.zeros(shape, np.uint8)
    pairs += [("empty_prediction", empty, gt, (1.0, 1.0, 1.0), "BraTS-GLI"),
              ("empty_reference", gt, empty, (1.0, 1.0, 1.0), "BraTS-GLI"),
              ("both_empty", empty, empty, (1.0, 1.0, 1.0), "BraTS-GLI"),
              ("anisotropic", perturbed(rng, gt), gt, (1.0, 0.8, 1.5), "BraTS-GLI")]
    small = np.zeros(shape, np.uint8)
    small[10:13, 10:13, 10:13] = 3  # 27 voxels: under the 50 mm3 threshold of BraTS-GLI, over BraTS-MET's 2
    small[30:40, 30:40, 20:30] = 2
    pairs += [("small_lesion", perturbed(rng, small), small, (1.0, 1.0, 1.0), name) for name in CHALLENGES]
    near = np.zeros(shape, np.uint8)
    near[10:20, 10:20, 10:20] = 2
    near[10:20, 10:20, 23:30] = 2  # 3 voxels apart: one lesion after the dilation of 3, two after 1
    pairs += [("merged_by_dilation", np.roll(near, 1, axis=0), near, (1.0, 1.0, 1.0), name) for name in CHALLENGES]
    return pairs


def real_pairs(rng) -> list:
    """Real ground truths (2018 labels as 2023) against eroded / shifted copies of themselves."""
    if not SAMPLE_DATA.is_dir():
        return []
    pairs = []
    for case in sorted(p for p in SAMPLE_DATA.iterdir() if p.is_dir())[:2]:
        image = nib.load(str(next(case.glob("*_seg.nii*"))))
        gt = np.asarray(image.dataobj, dtype=np.uint8)
        gt[gt == 4] = 3
        pred = np.where(ndimage.binary_erosion(gt > 0, iterations=2), gt, 0).astype(np.uint8)
        pred = perturbed(rng, pred)
        pairs.append((case.name, pred, gt, tuple(float(z) for z in image.header.get_zooms()[:3]), "BraTS-GLI"))
    return pairs


def test_lesionwise_scores_equal_the_organisers_2023_code(tmp_path):
    rng = np.random.default_rng(2023)
    pairs = label_pairs(rng) + real_pairs(rng)
    jobs = []
    for index, (name, pred, gt, spacing, challenge) in enumerate(pairs):
        affine = np.diag([*spacing, 1.0])
        files = [str(tmp_path / f"{index:02d}_{name}_{kind}.nii.gz") for kind in ("pred", "gt")]
        for path, labels in zip(files, (pred, gt)):
            nib.save(nib.Nifti1Image(labels, affine), path)
        jobs.append((*files, challenge))
    run = subprocess.run([PYTHON, "-c", DRIVER, CHECKOUT, json.dumps(jobs)], capture_output=True, text=True,
                         timeout=1200, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(theirs) == len(pairs) >= 22
    largest = (0.0, "")
    for (name, pred, gt, spacing, challenge), their in zip(pairs, theirs):
        pred_regions, gt_regions = BRATS2023.regions(pred), BRATS2023.regions(gt)
        for region in ("WT", "TC", "ET"):
            ours = region_lesionwise(pred_regions[region], gt_regions[region], spacing, CHALLENGES[challenge])
            other = their[region]
            where = f"{name} {region} ({challenge})"
            assert abs(ours["lesionwise_dice"] - other["dice"]) <= 1e-6, (where, ours, other)
            assert (ours["lesions_tp"], ours["lesions_fn"], ours["lesions_fp"]) == \
                   (other["tp"], other["fn"], other["fp"]), (where, ours, other)
            difference = abs(ours["lesionwise_hd95"] - other["hd95"])
            assert difference <= HD95_TOLERANCE_MM, (where, ours, other)
            largest = max(largest, (difference, where))
    print(f"largest lesion-wise HD95 difference: {largest[0]:.3f} mm ({largest[1]})")
