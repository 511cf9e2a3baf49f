"""Does task 2 veto task 1's false tumor? For one row of a cross-validated ``omkit ablation``
study, each held-out case is predicted by the fold model that held it out (the study's
tile, ROI and inference settings), and inside task 1's coarse mask this measures:

* false coarse voxels: the coarse mask where the ground truth has no tumor, split into
  *far* (farther than the ROI dilation from any true tumor: the false regions of the
  brain's edge) and *near* (the coarse mask's margin around the true tumor);
* task 2's veto: the fraction of them task 2 calls non-tumor (the label the fusion gives
  them, as task 2 decides the whole tumor inside its ROI);
* task 2's kept tumor: the fraction of true tumor inside task 2's ROI that it calls tumor.

    python scripts/task_veto_report.py STUDY ROW [STUDY ROW ...] [--csv OUT.csv] [--cases ID,ID]

STUDY is the study folder (its ``ablation_config.json`` names the data and settings;
the study's device is used).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from omkit.ablation import load_config, row_folder, saved_row_results, study_predictor
from omkit.data import find_cases
from omkit.data.features import left_right_axis
from omkit.data.preprocess import preprocess_case
from omkit.inference import SegmentationPredictor
from omkit.inference.fusion import class_index, dilate, task1_labels
from omkit.inference.pipeline import load_for_prediction
from omkit.labels import TUMOR_CLASSES


def case_veto(predictor: SegmentationPredictor, case_dir: Path, roi_dilation: float) -> dict:
    case = load_for_prediction(case_dir, with_label=True)
    pre = preprocess_case(case)
    result = predictor.predict(pre.image, pre.brain_mask, return_probabilities=True,
                               left_right_axis=left_right_axis(pre.affine))
    probs = result.probabilities
    coarse = task1_labels(probs["task1"][None])[0][0].bool()
    brain = torch.as_tensor(pre.brain_mask)
    roi = dilate(coarse, roi_dilation) & brain
    task2_tumor = torch.isin(class_index(probs["task2"][None])[0], torch.tensor(TUMOR_CLASSES))
    truth = torch.isin(torch.as_tensor(pre.label), torch.tensor(TUMOR_CLASSES))
    near_truth = dilate(truth, roi_dilation)
    false_far = coarse & ~near_truth
    false_near = coarse & near_truth & ~truth
    truth_in_roi = truth & roi

    def share(mask, of):
        n = int(of.sum())
        return (float((mask & of).sum()) / n) if n else float("nan")

    return {"case": case.case_id, "false_far_voxels": int(false_far.sum()), "veto_far": share(~task2_tumor, false_far),
            "false_near_voxels": int(false_near.sum()), "veto_near": share(~task2_tumor, false_near),
            "tumor_voxels": int(truth.sum()), "tumor_in_roi": share(roi, truth), "kept_tumor": share(task2_tumor, truth_in_roi)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="STUDY ROW [STUDY ROW ...]")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--cases", default="", help="only these held-out cases (comma-separated ids)")
    args = parser.parse_args(argv)
    only = {c.strip() for c in args.cases.split(",") if c.strip()}
    if len(args.pairs) % 2:
        parser.error("give STUDY ROW pairs")
    rows = []
    for study, row in zip(args.pairs[::2], args.pairs[1::2]):
        study = Path(study)
        config = load_config(study)
        cases = {p.name: p for p in find_cases(config.input)}
        results = saved_row_results(study, row)
        if not results:
            raise SystemExit(f"{study / 'runs' / row}: no scored fold (scores.json) to read")
        for result in results:
            predictor = study_predictor(config, [study / "runs" / row_folder(row) / result["split"] / "model.pt"])
            for name in result["held_out"]:
                if only and name not in only:
                    continue
                r = {"study": str(study), "row": row, **case_veto(predictor, cases[name], config.roi_dilation)}
                rows.append(r)
                print(f"{study.name}/{row} {r['case']}: far false coarse {r['false_far_voxels']} voxels, task 2 vetoes "
                      f"{r['veto_far']:.2f}; near {r['false_near_voxels']}, vetoes {r['veto_near']:.2f}; "
                      f"true tumor in ROI {r['tumor_in_roi']:.2f}, task 2 keeps {r['kept_tumor']:.2f}", flush=True)
    for study, row in zip(args.pairs[::2], args.pairs[1::2]):
        own = [r for r in rows if r["study"] == str(Path(study)) and r["row"] == row]
        far = sum(r["false_far_voxels"] for r in own)
        vetoed = sum(r["false_far_voxels"] * r["veto_far"] for r in own if r["false_far_voxels"])
        near = sum(r["false_near_voxels"] for r in own)
        vetoed_near = sum(r["false_near_voxels"] * r["veto_near"] for r in own if r["false_near_voxels"])
        if not own:
            continue
        kept = np.nanmean([r["kept_tumor"] for r in own])
        print(f"{study} {row}: {len(own)} cases; far false coarse voxels {far}, task 2 vetoes {vetoed / max(far, 1):.1%}; "
              f"near {near}, vetoes {vetoed_near / max(near, 1):.1%}; task 2 keeps {kept:.3f} of the true tumor in its ROI "
              "(mean over cases)")
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
