"""Reproduce the paper's Table I ablation: train, predict and score each row on the same split and budget."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from omkit.cli.training_options import add_training_arguments, training_settings
from omkit.cli.options import (
    add_device_argument,
    add_postprocess_arguments,
    add_tile_arguments,
    inference_settings,
    step_selection,
)


def add_arguments(parser):
    from omkit.ablation import DEFAULT_ROWS, PAPER_VAL_CASES
    from omkit.training.config import RECIPES

    parser.add_argument("-i", "--input", required=True, metavar="DATA", help="folder of BraTS case folders")
    parser.add_argument("-o", "--output", required=True, metavar="STUDY", help="study folder (resumes when it exists)")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated presets (default: all of Table I)")
    parser.add_argument("--folds", type=int, default=None, help="K-fold cross-validation over all cases")
    parser.add_argument("--val-cases", type=int, default=PAPER_VAL_CASES,
                        help=f"hold-out protocol: cases held out (default {PAPER_VAL_CASES}, the paper's)")
    parser.add_argument("--ensemble", type=int, default=None, metavar="K",
                        help="also the OM-Net + CGA* row: K fold models of omnet_cga, probabilities averaged")
    parser.add_argument("--label-convention", choices=["2018", "2023", "2024"], default=None)
    parser.add_argument("--challenge", default=None, metavar="NAME",
                        help="also score the held-out cases with a challenge's rules, as omkit evaluate --challenge "
                             "(a 2025 name needs pip install 'omkit[challenge]'): STUDY/ablation_challenge.csv")
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help=f"named training settings the options below override: {', '.join(RECIPES)} (default paper)")
    add_device_argument(parser)
    # the training budget is the same for every row; --folds/--fold of a single run do not apply
    add_training_arguments(parser, groups=("run", "model", "schedule", "patches", "optimiser"),
                           skip=("preset",), defaults={"seed": 0})
    parser.add_argument("--cache-dir", default=None, help="preprocessed-case cache shared by every row "
                                                          "(default STUDY/cache)")
    add_postprocess_arguments(parser)
    add_tile_arguments(parser, dense=True)


def run(args) -> int:
    from omkit.ablation import AblationConfig, run_ablation
    from omkit.training.config import recipe_settings

    train = {"progress": False}
    if args.recipe is not None:
        train.update(recipe_settings(args.recipe), recipe=args.recipe)
    train.update(training_settings(args))
    seed = train.pop("seed")
    train["cache_dir"] = args.cache_dir or str(Path(args.output) / "cache")
    tiles = {"size": args.tile_size, "keep": args.tile_keep, "stride": args.tile_stride, "batch": args.tile_batch}
    inference = inference_settings(args)
    dense = dataclasses.asdict(inference["dense"])
    config = AblationConfig(
        input=args.input, output=args.output, rows=[r.strip() for r in args.rows.split(",") if r.strip()],
        folds=args.folds, val_cases=args.val_cases, ensemble=args.ensemble, postprocess=not args.no_postprocess,
        **step_selection(args), seed=seed, device=args.device, train=train, tiles=tiles,
        roi_dilation=args.roi_dilation, label_convention=args.label_convention, challenge=args.challenge,
        inference=inference["inference"], dense=dense,
    )
    paths = run_ablation(config)
    print(Path(paths["markdown"]).read_text(encoding="utf-8"))
    print(f"tables: {paths['markdown']}, {paths['csv']}, {paths['per_split_csv']}, {paths['per_case_csv']}")
    if paths["overlays"]:
        print(f"best / worst case overlays: {Path(paths['overlays'][0]).parent}/")
    return 0
