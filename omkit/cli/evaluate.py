"""Score predicted label maps against ground truth: Dice, PPV, sensitivity, HD95 for WT, TC, ET.

Examples::

    omkit evaluate -i preds/ --gt BraTS2018/ -o scores/
    omkit evaluate -i preds/ --gt labels/ --label-convention 2023 -o scores/

``-i/--input``: a folder of ``<case-id>.nii.gz`` predicted label maps (what
``omkit predict`` writes). ``--gt``: a folder of BraTS case folders (their
``seg`` files) or of ``<case-id>.nii.gz`` label maps. Writes
``OUT/metrics.csv`` (long form: one row per case and region, columns
case,region,dice,ppv,sensitivity,hd95) and ``OUT/summary.json`` (mean,
median, std per region and metric), and prints a table. HD95 is in mm;
empty-region conventions are those of ``omkit.metrics``.
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("-i", "--input", required=True, metavar="PRED",
                        help="folder of <case-id>.nii.gz predicted label maps")
    parser.add_argument("--gt", required=True, metavar="GT",
                        help="folder of BraTS case folders, or of <case-id>.nii.gz ground-truth label maps")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for metrics.csv and summary.json")
    parser.add_argument("--label-convention", choices=("2018", "2023"),
                        help="label values of every file: 2018 (4 = enhancing) or 2023 (3 = enhancing); default: "
                             "the file naming's for case folders, else read from the values")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def run(args) -> int:
    from omkit.evaluation import evaluate_folders, format_table, write_evaluation

    rows, unmatched = evaluate_folders(Path(args.input), Path(args.gt), args.label_convention)
    out_dir = Path(args.output)
    summary = write_evaluation(rows, out_dir, args.force, {"pred": str(args.input), "gt": str(args.gt)})
    print(format_table(summary, len({r["case"] for r in rows})))
    if unmatched:
        print(f"note: {len(unmatched)} ground-truth case(s) have no prediction and were not scored")
    print(f"wrote {out_dir / 'metrics.csv'} and {out_dir / 'summary.json'}")
    return 0
