"""Lesion-wise Dice and HD95 as the BraTS 2023 challenges rank them.

Per region (WT, TC, ET; RC for the 2024 post-treatment labels), with a
challenge's dilation factor ``k`` and volume threshold ``v`` (:data:`CHALLENGES`):

1. Ground-truth lesions: the ground truth is dilated ``k`` times with the
   18-neighbourhood (``scipy.ndimage.generate_binary_structure(3, 2)``); each
   26-connected component of the dilated mask is one lesion's region, and the
   lesion is the ground-truth voxels inside it (nearby fragments of one tumor
   are one lesion; the ground truth itself is not changed).
2. Predicted lesions: the 26-connected components of the prediction.
3. Each ground-truth lesion is scored against the union of the predicted
   components that touch its region (the lesion dilated ``k`` times): Dice and
   HD95 of that pair. A lesion no component touches is missed: Dice 0, HD95
   374 mm.
4. A predicted component that touches no lesion's region is a false positive:
   Dice 0, HD95 374 mm.
5. Lesions whose volume (voxels times the voxel volume, in mm³; BraTS data is
   1 mm isotropic) is at most ``v`` are left out of the score, and so are the
   components that touch only them (they are neither hits nor false positives).
6. The case's lesion-wise Dice is the sum of the counted lesions' Dice over
   (counted lesions + false positives); HD95 likewise, each false positive
   adding 374 mm.

Empty masks, as the challenge's code scores them: nothing to count (both
masks empty, or an empty prediction against ground truth whose lesions are
all under the threshold) is a perfect score, Dice 1 and HD95 0; an empty
prediction against counted lesions scores Dice 0 and HD95 374 for each; a
prediction against empty ground truth is all false positives, Dice 0 and HD95
374.

The rules, parameters and edge cases follow the organisers' reference code
(``get_LesionWiseResults`` in github.com/rachitsaluja/BraTS-2023-Metrics,
which the BraTS 2023 evaluation platform ran). One difference: each lesion's
HD95 here is :func:`omkit.metrics.hausdorff95` (voxel surfaces, 95th
percentile with linear interpolation, as MONAI computes it), where the
reference uses DeepMind's surface-distance package (surface elements weighted
by their area); Dice, counts and the 374 mm penalties agree exactly, HD95 per
lesion differs by a fraction of a millimetre on smooth lesions (docs/RESULTS.md).

Later editions changed the rules, and these are not reproduced: the BraTS 2024
organisers' code sets parameters per region (e.g. glioma: ET threshold 10,
other regions 20, dilation 5 for NETC, SNFH and RC), merges lesions across
tissues and drops small predicted lesions; the ``brats-evaluation`` package
(BraTS 2025+) matches lesions one-to-one with ``panoptica`` instead of by
dilation. Only the 2023 table is offered here; the 2025 editions are scored by
calling that package (:mod:`omkit.challenge`).

Connected components come from ``connected-components-3d`` (``cc3d``, what the
reference uses; 6-12 times faster than ``scipy.ndimage.label`` on a BraTS
volume), dilation from ``scipy.ndimage``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .labels import ALL_REGIONS
from .metrics import hausdorff95

# HD95 of a missed or a false-positive lesion, in mm (the challenge's constant)
LESION_HD95_PENALTY = 374.0
LESIONWISE_METRICS = ("lesionwise_dice", "lesionwise_hd95", "lesions_tp", "lesions_fn", "lesions_fp")


@dataclass(frozen=True)
class Challenge:
    """One challenge's lesion-wise parameters: ``dilation`` (iterations of the
    18-neighbourhood) and ``volume_threshold`` (mm³; lesions of at most this
    volume are not scored)."""

    name: str
    dilation: int
    volume_threshold: float
    description: str


# Source: the BraTS 2023 organisers' lesion-wise reference code,
# github.com/rachitsaluja/BraTS-2023-Metrics (metrics.py, get_LesionWiseResults),
# parameters set per challenge by its clinical leads.
CHALLENGES: dict[str, Challenge] = {c.name: c for c in (
    Challenge("BraTS-GLI-2023", 3, 50, "BraTS 2023 adult glioma"),
    Challenge("BraTS-SSA-2023", 3, 50, "BraTS 2023 sub-Saharan Africa glioma"),
    Challenge("BraTS-MEN-2023", 1, 50, "BraTS 2023 meningioma"),
    Challenge("BraTS-PED-2023", 3, 50, "BraTS 2023 paediatric tumors"),
    Challenge("BraTS-MET-2023", 1, 2, "BraTS 2023 brain metastases"),
)}
DEFAULT_CHALLENGE = "BraTS-GLI-2023"


def get_challenge(name: str | Challenge) -> Challenge:
    if isinstance(name, Challenge):
        return name
    try:
        return CHALLENGES[str(name)]
    except KeyError:
        raise ValueError(f"unknown challenge {name!r}; choose one of {', '.join(CHALLENGES)}") from None


def settings(challenge: str | Challenge = DEFAULT_CHALLENGE) -> dict:
    """What ``summary.json`` records of the lesion-wise scoring."""
    c = get_challenge(challenge)
    return {"challenge": c.name, "description": c.description, "dilation": c.dilation,
            "volume_threshold_mm3": c.volume_threshold, "hd95_penalty_mm": LESION_HD95_PENALTY,
            "connectivity": 26, "source": "BraTS 2023 lesion-wise reference code (github.com/rachitsaluja/BraTS-2023-Metrics)"}


def _components(mask: np.ndarray) -> np.ndarray:
    import cc3d

    return cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=26).astype(np.int32)


def false_positive_components(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """``(count, voxels)`` of the connected components (26-connectivity) of the predicted
    mask ``pred`` that share no voxel with the ground-truth mask ``gt``: false tumor that no
    true tumor explains (``omkit ablation`` reports them per case, next to precision)."""
    components = _components(pred)
    count = int(components.max())
    if count == 0:
        return 0, 0
    touched = np.zeros(count + 1, dtype=bool)
    touched[np.unique(components[np.asarray(gt, dtype=bool)])] = True
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    false = ~touched
    false[0] = False
    return int(false.sum()), int(sizes[false].sum())


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``mask`` grown by ``margin`` voxels (within the volume)."""
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box or box[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box[0], mask.shape))


def lesion_regions(gt: np.ndarray, dilation: int) -> np.ndarray:
    """int32 map of each ground-truth lesion's region: the 26-connected
    components of the ground truth dilated ``dilation`` times (0 outside).
    The lesion numbered ``i`` is ``gt & (regions == i)``; its region is that
    lesion dilated ``dilation`` times."""
    gt = np.asarray(gt, bool)
    regions = np.zeros(gt.shape, np.int32)
    box = _box(gt, dilation)
    if box is None:
        return regions
    crop = gt[box]
    if dilation > 0:
        crop = ndimage.binary_dilation(crop, structure=ndimage.generate_binary_structure(3, 2), iterations=dilation)
    regions[box] = _components(crop)
    return regions


def region_lesionwise(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                      challenge: str | Challenge = DEFAULT_CHALLENGE, lesions: bool = False) -> dict:
    """Lesion-wise scores of one region's boolean masks (rules above):
    ``lesionwise_dice``, ``lesionwise_hd95`` (mm), ``lesions_tp`` (counted lesions
    hit), ``lesions_fn`` (counted lesions missed), ``lesions_fp`` (false-positive
    components); with ``lesions`` also ``lesions``: one dict per ground-truth
    lesion (``volume`` mm³, ``counted``, ``components`` touching it, ``dice``,
    ``hd95``)."""
    challenge = get_challenge(challenge)
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {gt.shape}")
    spacing = tuple(float(s) for s in spacing)
    voxel_volume = float(np.prod(spacing))

    regions = lesion_regions(gt, challenge.dilation)
    gt_ids = np.where(gt, regions, 0)
    pred_cc = _components(pred) if pred.any() else np.zeros(pred.shape, np.int32)
    n_lesions, n_components = int(regions.max()), int(pred_cc.max())

    # which predicted components touch which lesion's region (regions are disjoint)
    touching = (regions > 0) & (pred_cc > 0)
    pairs = np.unique(regions[touching].astype(np.int64) * (n_components + 1) + pred_cc[touching])
    pair_lesion, pair_component = pairs // (n_components + 1), pairs % (n_components + 1)
    hit_components = np.zeros(n_components + 1, bool)
    hit_components[pair_component] = True
    false_positives = int(np.count_nonzero(~hit_components[1:]))

    lesion_size = np.bincount(gt_ids.ravel(), minlength=n_lesions + 1)
    component_size = np.bincount(pred_cc.ravel(), minlength=n_components + 1)
    overlap = np.bincount(gt_ids[pred], minlength=n_lesions + 1)  # pred voxels inside each lesion
    lesion_boxes = ndimage.find_objects(gt_ids)
    component_boxes = ndimage.find_objects(pred_cc)

    per_lesion = []
    for lesion in range(1, n_lesions + 1):
        components = pair_component[pair_lesion == lesion]
        volume = float(lesion_size[lesion]) * voxel_volume
        if components.size == 0:
            dice, hd = 0.0, LESION_HD95_PENALTY
        else:
            matched_size = int(component_size[components].sum())
            dice = 2.0 * float(overlap[lesion]) / float(lesion_size[lesion] + matched_size)
            boxes = [lesion_boxes[lesion - 1]] + [component_boxes[c - 1] for c in components]
            box = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(gt.ndim))
            hd = hausdorff95(np.isin(pred_cc[box], components), gt_ids[box] == lesion, spacing)
        per_lesion.append({"lesion": lesion, "volume": volume, "counted": volume > challenge.volume_threshold,
                           "components": int(components.size), "dice": dice, "hd95": hd})

    counted = [entry for entry in per_lesion if entry["counted"]]
    denominator = len(counted) + false_positives
    if denominator == 0:
        dice, hd = 1.0, 0.0
    else:
        dice = sum(entry["dice"] for entry in counted) / denominator
        hd = (sum(entry["hd95"] for entry in counted) + LESION_HD95_PENALTY * false_positives) / denominator
    out = {
        "lesionwise_dice": float(dice), "lesionwise_hd95": float(hd),
        "lesions_tp": sum(1 for entry in counted if entry["components"]),
        "lesions_fn": sum(1 for entry in counted if not entry["components"]),
        "lesions_fp": false_positives,
    }
    if lesions:
        out["lesions"] = per_lesion
    return out


def case_lesionwise(pred_regions: Mapping[str, np.ndarray], gt_regions: Mapping[str, np.ndarray],
                    spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    challenge: str | Challenge = DEFAULT_CHALLENGE) -> dict[str, dict]:
    """``{region: scores}`` for every region of ``gt_regions`` (WT, TC, ET, and
    RC when present); a region the prediction lacks counts as empty."""
    out = {}
    for region in ALL_REGIONS:
        if region not in gt_regions:
            continue
        gt = np.asarray(gt_regions[region], bool)
        pred = pred_regions.get(region)
        pred = np.zeros(gt.shape, bool) if pred is None else pred
        out[region] = region_lesionwise(pred, gt, spacing, challenge)
    return out
