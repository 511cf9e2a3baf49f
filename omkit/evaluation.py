"""Scoring label maps on disk: reading predicted and ground-truth label maps
(one-line errors naming the file), pairing them by case id, the voxel-wise
BraTS metrics per case and region (:mod:`omkit.metrics`) and, on request, the
lesion-wise ones of the BraTS 2023+ challenges (:mod:`omkit.lesionwise`), and
the evaluation outputs (``metrics.csv`` in long form, ``summary.json``) that
``omkit evaluate``, the demo and the ablation runner write. Regions: WT, TC,
ET, and RC when the ground truth has the 2024 post-treatment labels."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from omkit.data.brats import AFFINE_TOLERANCE, NIFTI_SUFFIXES

COLUMNS = ("case", "region", "dice", "ppv", "sensitivity", "hd95")
LESIONWISE_COLUMNS = ("lesionwise_dice", "lesionwise_hd95", "lesions_tp", "lesions_fn", "lesions_fp")


def label_files(folder: Path) -> dict[str, Path]:
    """case id -> label map in ``folder``; two files of one case (``C1.nii`` and
    ``C1.nii.gz``) are an error naming both, not one of them scored silently."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        for suffix in NIFTI_SUFFIXES:
            if path.is_file() and path.name.endswith(suffix) and not path.name.startswith("."):
                case_id = path.name[: -len(suffix)]
                if case_id in found:
                    raise ValueError(f"{path}: case {case_id!r} has two label maps here ({found[case_id].name} and "
                                     f"{path.name}); keep one")
                found[case_id] = path
                break
    return found


def ground_truth_files(folder: Path) -> dict[str, tuple[Path, str | None]]:
    """case id -> (label map, convention implied by its naming or None)."""
    from omkit.data import case_files, find_cases

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    direct = label_files(folder)
    if direct:
        return {case_id: (path, None) for case_id, path in direct.items()}
    gt = {}
    for case_dir in find_cases(folder):
        naming, case_id, paths = case_files(case_dir, with_label=True)
        gt[case_id] = (paths["seg"], naming)
    return gt


def read_label_map(path: Path):
    """``(labels int array (X, Y, Z), affine, zooms)``; one-line errors naming the file.
    The header is checked before any voxel is read, as for cases (3-D, a voxel count
    no MRI exceeds, a finite affine, positive finite voxel sizes)."""
    from omkit.data.brats import load_nifti

    image, data = load_nifti(path)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D label map, got {data.ndim}-D shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError(f"{path}: label map has non-integer or non-finite values")
    return data.astype(np.int64), np.asarray(image.affine), tuple(float(z) for z in image.header.get_zooms()[:3])


def detect_convention(labels: np.ndarray, path: Path, given: str | None, fits: str | None = None) -> str:
    """``given``, else ``fits`` (the ground truth's) when every value of
    ``labels`` is valid in it, else read from the values: 3 and 4 is the 2024
    post-treatment convention, 3 alone 2023, otherwise 2018."""
    from omkit.labels import get_convention

    if given:
        return given
    present = set(np.unique(labels).tolist())
    if fits and present <= set(get_convention(fits).valid_values):
        return fits
    if 4 in present and 3 in present:
        return "2024"
    return "2023" if 3 in present else "2018"


def regions_of(labels: np.ndarray, convention: str, path: Path) -> dict[str, np.ndarray]:
    from omkit.labels import get_convention

    conv = get_convention(convention)
    bad = sorted(set(np.unique(labels).tolist()) - set(conv.valid_values))
    if bad:
        raise ValueError(f"{path}: label values {bad} are not in the {convention} convention {conv.valid_values}")
    return conv.regions(labels)


def paired_cases(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, Path, Path, str | None]], list[str]]:
    """``(case id, prediction, ground truth, the ground truth's naming convention or None)`` for
    every prediction, and the ground-truth case ids that have no prediction."""
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: no such folder")
    predictions = label_files(pred_dir)
    if not predictions:
        raise ValueError(f"{pred_dir}: no <case-id>.nii.gz label maps")
    gt = ground_truth_files(gt_dir)
    pairs = []
    for case_id, pred_path in predictions.items():
        if case_id not in gt:
            raise ValueError(f"{pred_path}: no ground truth for case {case_id!r} in {gt_dir}")
        pairs.append((case_id, pred_path, *gt[case_id]))
    return pairs, sorted(set(gt) - set(predictions))


def read_pair(pred_path: Path, gt_path: Path, naming: str | None, label_convention: str | None = None):
    """``(pred labels, gt labels, zooms, pred convention, gt convention)`` of one case, checked to
    share a grid; conventions as given, else from the naming and the values."""
    from omkit.labels import convention_of

    gt_labels, gt_affine, zooms = read_label_map(gt_path)
    pred_labels, pred_affine, _ = read_label_map(pred_path)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"{pred_path}: shape {pred_labels.shape} differs from the ground truth {gt_path} {gt_labels.shape}")
    if not np.all(np.abs(pred_affine - gt_affine) <= AFFINE_TOLERANCE):  # NaN never passes
        raise ValueError(f"{pred_path}: affine differs from the ground truth {gt_path}; not in the same space")
    gt_convention = label_convention or (convention_of(naming, gt_labels).name if naming else
                                         detect_convention(gt_labels, gt_path, None))
    pred_convention = detect_convention(pred_labels, pred_path, label_convention, gt_convention)
    return pred_labels, gt_labels, zooms, pred_convention, gt_convention


def evaluate_folders(pred_dir: Path, gt_dir: Path, label_convention: str | None = None, lesionwise: bool = False,
                     challenge: str | None = None) -> tuple[list[dict], list[str]]:
    """Long-form metric rows for every prediction (per case and region: the
    voxel-wise metrics, and with ``lesionwise`` the lesion-wise ones of
    ``challenge``, default :data:`omkit.lesionwise.DEFAULT_CHALLENGE`), and the
    ground-truth case ids that have no prediction."""
    from omkit.lesionwise import DEFAULT_CHALLENGE, case_lesionwise, get_challenge
    from omkit.metrics import case_metrics

    challenge = get_challenge(challenge or DEFAULT_CHALLENGE)
    pairs, unmatched = paired_cases(pred_dir, gt_dir)
    rows = []
    for case_id, pred_path, gt_path, naming in pairs:
        pred_labels, gt_labels, zooms, pred_convention, gt_convention = read_pair(pred_path, gt_path, naming,
                                                                                  label_convention)
        gt_regions = regions_of(gt_labels, gt_convention, gt_path)
        pred_regions = regions_of(pred_labels, pred_convention, pred_path)
        scores = case_metrics(pred_regions, gt_regions, spacing=zooms)  # NIfTI axes, NIfTI zooms
        if lesionwise:
            for region, values in case_lesionwise(pred_regions, gt_regions, zooms, challenge).items():
                scores[region].update(values)
        rows.extend({"case": case_id, "region": r, **values} for r, values in scores.items())
    return rows, unmatched


def format_table(summary: dict, count: int) -> str:
    """Mean ± std per region; lesion-wise Dice and HD95 columns when the summary has them."""
    lesionwise = any("lesionwise_dice" in metrics for metrics in summary.values())
    header = f"{'region':<7}{'Dice':>16}{'PPV':>16}{'Sensitivity':>16}{'HD95 (mm)':>18}"
    if lesionwise:
        header += f"{'LW Dice':>16}{'LW HD95 (mm)':>18}"
    lines = [header]
    for region, metrics in summary.items():
        cells = [f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}" for m in ("dice", "ppv", "sensitivity")]
        cells.append(f"{metrics['hd95']['mean']:.2f} ± {metrics['hd95']['std']:.2f}")
        line = f"{region:<7}{cells[0]:>16}{cells[1]:>16}{cells[2]:>16}{cells[3]:>18}"
        if lesionwise:
            dice, hd = metrics["lesionwise_dice"], metrics["lesionwise_hd95"]
            line += f"{dice['mean']:.3f} ± {dice['std']:.3f}".rjust(16) + f"{hd['mean']:.2f} ± {hd['std']:.2f}".rjust(18)
        lines.append(line)
    lines.append(f"mean ± std over {count} case(s); medians in summary.json"
                 + ("; LW = lesion-wise" if lesionwise else ""))
    return "\n".join(lines)


def write_evaluation(rows: list[dict], out_dir: Path, force: bool, extra: dict | None = None,
                     columns: tuple[str, ...] | None = None, summary: dict | None = None) -> dict:
    """Write ``metrics.csv`` (``columns``, default the voxel-wise ones and the lesion-wise ones
    the rows have) and ``summary.json`` (``summary``, default :func:`omkit.metrics.summarize`
    of the rows) as one set: both or neither; returns the summary."""
    from omkit.fileio import OutputExistsError, atomic_paths, naming_failures
    from omkit.metrics import summarize

    targets = (out_dir / "metrics.csv", out_dir / "summary.json")
    if not force:
        for target in targets:
            if target.exists():
                raise OutputExistsError(None, None, str(target))
    if columns is None:
        columns = COLUMNS + tuple(c for c in LESIONWISE_COLUMNS if rows and c in rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in columns})
    if summary is None:
        summary = summarize(rows)
    cases = sorted({row["case"] for row in rows})
    document = {"cases": len(cases), "case_ids": cases, "hd95_unit": "mm", "regions": summary, **(extra or {})}
    # both or neither: written to temporaries, renamed only when both are whole
    texts = (buffer.getvalue(), json.dumps(_plain_json(document), indent=2, allow_nan=False) + "\n")
    with atomic_paths(targets, force=True) as temporaries:
        for tmp, target, text in zip(temporaries, targets, texts):
            with naming_failures(target):
                tmp.write_text(text, encoding="utf-8")
    return summary


def _plain_json(value):
    """``value`` with NaN and infinities as null: JSON has no token for them."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    return value
