"""Score predicted label maps against ground truth: Dice, PPV, sensitivity, HD95 for WT, TC, ET
(and RC for the 2024 post-treatment labels); with ``--lesionwise`` also the lesion-wise Dice and HD95
of the BraTS 2023 challenges; with ``--challenge`` of a 2025 edition, the organisers' own scoring
(``brats-evaluation``: lesion-wise and global DSC, NSD, HD95 and lesion counts per region group).

Examples::

    omkit evaluate -i preds/ --gt BraTS2018/ -o scores/
    omkit evaluate -i preds/ --gt labels/ --label-convention 2023 -o scores/
    omkit evaluate -i preds/ --gt BraTS2023/ -o scores/ --lesionwise --challenge BraTS-GLI-2023
    omkit evaluate -i preds/ --gt BraTS2024/ -o scores/ --challenge BraTS-GLI-2025   # pip install 'omkit[challenge]'

``-i/--input``: a folder of ``<case-id>.nii.gz`` predicted label maps (what
``omkit predict`` writes). ``--gt``: a folder of BraTS case folders (their
``seg`` files) or of ``<case-id>.nii.gz`` label maps. Writes
``OUT/metrics.csv`` (long form: one row per case and region, columns
case,region,dice,ppv,sensitivity,hd95, and with ``--lesionwise``
lesionwise_dice,lesionwise_hd95,lesions_tp,lesions_fn,lesions_fp) and
``OUT/summary.json`` (mean, median, std per region and metric; the lesion-wise
parameters used), and prints a table. HD95 is in mm; empty-region conventions
are those of ``omkit.metrics`` (voxel-wise) and ``omkit.lesionwise``. With a 2025
``--challenge``, ``metrics.csv`` has one row per case and region group with the columns
of ``omkit.challenge.COLUMNS`` and ``summary.json`` records the package, its version and
config (``omkit.challenge``).
"""
from __future__ import annotations

from pathlib import Path

from omkit.challenge import CHALLENGE_CONFIGS, EXTRA, NATIVE
from omkit.labels import CONVENTIONS
from omkit.lesionwise import CHALLENGES, DEFAULT_CHALLENGE


def add_arguments(parser):
    parser.add_argument("-i", "--input", required=True, metavar="PRED",
                        help="folder of <case-id>.nii.gz predicted label maps")
    parser.add_argument("--gt", required=True, metavar="GT",
                        help="folder of BraTS case folders, or of <case-id>.nii.gz ground-truth label maps")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for metrics.csv and summary.json")
    parser.add_argument("--label-convention", choices=tuple(CONVENTIONS) + (NATIVE,),
                        help="label values of every file: 2018 (4 = enhancing), 2023 (3 = enhancing) or 2024 "
                             "(post-treatment: 3 = enhancing, 4 = resection cavity); default: the file naming's for "
                             "case folders (2024 when a 2023-named seg holds 3 and 4), else read from the values; "
                             f"{NATIVE}: the files hold a 2025 --challenge's own labels")
    parser.add_argument("--lesionwise", action="store_true",
                        help="also score lesion-wise Dice and HD95 with the BraTS 2023 rules")
    parser.add_argument("--challenge", choices=tuple(CHALLENGES) + tuple(CHALLENGE_CONFIGS), default=None,
                        metavar="NAME",
                        help=f"a 2023 name sets the --lesionwise parameters (dilation, volume threshold; "
                             f"{', '.join(CHALLENGES)}; default {DEFAULT_CHALLENGE}); a 2025 name scores with the "
                             f"organisers' package instead (pip install 'omkit[{EXTRA}]'): "
                             f"{', '.join(CHALLENGE_CONFIGS)}")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def run(args) -> int:
    from omkit.evaluation import evaluate_folders, format_table, write_evaluation

    from omkit.lesionwise import settings

    out_dir = Path(args.output)
    extra = {"pred": str(args.input), "gt": str(args.gt)}
    if args.challenge in CHALLENGE_CONFIGS:
        return _run_challenge(args, out_dir, extra)
    if args.label_convention == NATIVE:
        raise ValueError(f"--label-convention {NATIVE} needs a 2025 --challenge ({', '.join(CHALLENGE_CONFIGS)})")
    lesionwise = args.lesionwise or args.challenge is not None  # a 2023 challenge named is a lesion-wise request
    challenge = args.challenge or DEFAULT_CHALLENGE
    rows, unmatched = evaluate_folders(Path(args.input), Path(args.gt), args.label_convention,
                                       lesionwise=lesionwise, challenge=challenge)
    if lesionwise:
        extra["lesionwise"] = settings(challenge)
    summary = write_evaluation(rows, out_dir, args.force, extra)
    print(format_table(summary, len({r["case"] for r in rows})))
    if unmatched:
        print(f"note: {len(unmatched)} ground-truth case(s) have no prediction and were not scored")
    print(f"wrote {out_dir / 'metrics.csv'} and {out_dir / 'summary.json'}")
    return 0


def _run_challenge(args, out_dir: Path, extra: dict) -> int:
    from omkit.challenge import (COLUMNS, evaluate_challenge_folders, format_challenge_table, get_challenge_config,
                                 summarize_challenge)
    from omkit.evaluation import write_evaluation

    if args.lesionwise:
        raise ValueError(f"--lesionwise applies the 2023 rules; --challenge {args.challenge} already scores "
                         "lesion-wise with the organisers' package")
    config = get_challenge_config(args.challenge)
    rows, unmatched = evaluate_challenge_folders(Path(args.input), Path(args.gt), config.name, args.label_convention)
    summary = summarize_challenge(rows)
    write_evaluation(rows, out_dir, args.force, {**extra, "challenge": config.settings()}, columns=COLUMNS,
                     summary=summary)
    print(format_challenge_table(summary, len({r["case"] for r in rows}), config.name))
    if unmatched:
        print(f"note: {len(unmatched)} ground-truth case(s) have no prediction and were not scored")
    print(f"wrote {out_dir / 'metrics.csv'} and {out_dir / 'summary.json'}")
    return 0
