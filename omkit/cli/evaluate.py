"""Score predicted label maps against ground truth: Dice, PPV, sensitivity, HD95 for WT, TC, ET
(and RC for the 2024 post-treatment labels); with ``--lesionwise`` also the lesion-wise Dice and HD95
of the BraTS 2023+ challenges.

Examples::

    omkit evaluate -i preds/ --gt BraTS2018/ -o scores/
    omkit evaluate -i preds/ --gt labels/ --label-convention 2023 -o scores/
    omkit evaluate -i preds/ --gt BraTS2023/ -o scores/ --lesionwise --challenge BraTS-GLI-2023

``-i/--input``: a folder of ``<case-id>.nii.gz`` predicted label maps (what
``omkit predict`` writes). ``--gt``: a folder of BraTS case folders (their
``seg`` files) or of ``<case-id>.nii.gz`` label maps. Writes
``OUT/metrics.csv`` (long form: one row per case and region, columns
case,region,dice,ppv,sensitivity,hd95, and with ``--lesionwise``
lesionwise_dice,lesionwise_hd95,lesions_tp,lesions_fn,lesions_fp) and
``OUT/summary.json`` (mean, median, std per region and metric; the lesion-wise
parameters used), and prints a table. HD95 is in mm; empty-region conventions
are those of ``omkit.metrics`` (voxel-wise) and ``omkit.lesionwise``.
"""
from __future__ import annotations

from pathlib import Path

from omkit.labels import CONVENTIONS
from omkit.lesionwise import CHALLENGES, DEFAULT_CHALLENGE


def add_arguments(parser):
    parser.add_argument("-i", "--input", required=True, metavar="PRED",
                        help="folder of <case-id>.nii.gz predicted label maps")
    parser.add_argument("--gt", required=True, metavar="GT",
                        help="folder of BraTS case folders, or of <case-id>.nii.gz ground-truth label maps")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for metrics.csv and summary.json")
    parser.add_argument("--label-convention", choices=tuple(CONVENTIONS),
                        help="label values of every file: 2018 (4 = enhancing), 2023 (3 = enhancing) or 2024 "
                             "(post-treatment: 3 = enhancing, 4 = resection cavity); default: the file naming's for "
                             "case folders (2024 when a 2023-named seg holds 3 and 4), else read from the values")
    parser.add_argument("--lesionwise", action="store_true",
                        help="also score lesion-wise Dice and HD95 as the BraTS 2023+ challenges rank them")
    parser.add_argument("--challenge", choices=tuple(CHALLENGES), default=DEFAULT_CHALLENGE, metavar="NAME",
                        help=f"lesion-wise parameters (dilation, volume threshold) of this challenge: "
                             f"{', '.join(CHALLENGES)} (default {DEFAULT_CHALLENGE})")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def run(args) -> int:
    from omkit.evaluation import evaluate_folders, format_table, write_evaluation

    from omkit.lesionwise import settings

    rows, unmatched = evaluate_folders(Path(args.input), Path(args.gt), args.label_convention,
                                       lesionwise=args.lesionwise, challenge=args.challenge)
    out_dir = Path(args.output)
    extra = {"pred": str(args.input), "gt": str(args.gt)}
    if args.lesionwise:
        extra["lesionwise"] = settings(args.challenge)
    summary = write_evaluation(rows, out_dir, args.force, extra)
    print(format_table(summary, len({r["case"] for r in rows})))
    if unmatched:
        print(f"note: {len(unmatched)} ground-truth case(s) have no prediction and were not scored")
    print(f"wrote {out_dir / 'metrics.csv'} and {out_dir / 'summary.json'}")
    return 0
