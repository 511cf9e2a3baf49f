"""Reproduce the paper's Table I ablation: train, predict and score each row on the same split and budget."""
from __future__ import annotations

from pathlib import Path

from omkit.cli import CLIError
from omkit.cli.train import sampler_specs


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise CLIError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser):
    from omkit.ablation import DEFAULT_ROWS, PAPER_VAL_CASES

    parser.add_argument("--data", required=True, help="folder of BraTS case folders")
    parser.add_argument("--out", required=True, help="study folder (resumes when it exists)")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated presets (default: all of Table I)")
    parser.add_argument("--folds", type=int, default=None, help="K-fold cross-validation over all cases")
    parser.add_argument("--val-cases", type=int, default=PAPER_VAL_CASES,
                        help=f"hold-out protocol: cases held out (default {PAPER_VAL_CASES}, the paper's)")
    parser.add_argument("--ensemble", type=int, default=None, metavar="K",
                        help="also the OM-Net + CGA* row: K fold models of omnet_cga, probabilities averaged")
    parser.add_argument("--postprocess", dest="postprocess", action="store_true", default=True,
                        help="also score the post-processed maps (+p rows; default)")
    parser.add_argument("--no-postprocess", dest="postprocess", action="store_false")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-convention", choices=["2018", "2023"], default=None)
    budget = parser.add_argument_group("training budget (the same for every row; defaults: the paper's)")
    budget.add_argument("--recipe", default=None, metavar="NAME",
                        help="named settings the options below override: paper (default) or cpu-budget "
                             "(for --max-minutes on a CPU; see omkit train --help)")
    budget.add_argument("--width", type=float, default=None, help="width multiplier (1.0 = the paper's)")
    budget.add_argument("--stage-epochs", default=None, help="curriculum epochs a,b,c")
    budget.add_argument("--epochs", type=int, default=None, help="total epochs (overrides the last stage's length)")
    budget.add_argument("--patches-per-epoch", default=None, help="per task: N or n1,n2,n3")
    budget.add_argument("--batch-per-task", type=int, default=None)
    budget.add_argument("--patch-size", default=None, help="D,H,W (default 16,32,32)")
    budget.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                        help="sgd (the paper's) or adam (for budgets of minutes)")
    budget.add_argument("--lr", type=float, default=None, help="initial learning rate (default 1e-3)")
    budget.add_argument("--lr-step-epochs", type=int, default=None,
                        help="halve the learning rate every this many epochs (default 4, the paper's)")
    budget.add_argument("--samplers", type=sampler_specs, default=None, metavar="S1,S2,S3",
                        help="patch sampler per task, e.g. brain:1+dilated_tumor:1,dilated_tumor,core "
                             "(half of task 1's patches around the tumor; see omkit train --help)")
    budget.add_argument("--max-minutes", type=float, default=None, help="wall-clock training budget per row and split")
    budget.add_argument("--max-steps", type=int, default=None, help="optimiser steps per row and split (for smoke runs)")
    budget.add_argument("--cache-dir", default=None, help="preprocessed-case cache shared by every row")
    tiles = parser.add_argument_group("inference tiles (default: the paper's)")
    tiles.add_argument("--roi-size", default=None, help="D,H,W")
    tiles.add_argument("--stride", default=None, help="D,H,W")
    tiles.add_argument("--keep", default=None, help="D,H,W")
    tiles.add_argument("--sw-batch-size", type=int, default=None)


def run(args) -> int:
    from omkit.ablation import AblationConfig, run_ablation

    from omkit.training.config import recipe_settings

    train = {"progress": False}
    if args.recipe is not None:
        train.update(recipe_settings(args.recipe), recipe=args.recipe)
    # budget options are TrainConfig fields of the same name; comma lists become integer lists
    for name, as_ints in (("width", False), ("stage_epochs", True), ("epochs", False), ("patches_per_epoch", True),
                          ("batch_per_task", False), ("patch_size", True), ("max_minutes", False), ("max_steps", False),
                          ("optimizer", False), ("lr", False), ("lr_step_epochs", False)):
        value = getattr(args, name)
        if value is not None:
            train[name] = _ints(value) if as_ints else value
    if args.samplers is not None:
        train["samplers"] = list(args.samplers)
    train["cache_dir"] = args.cache_dir or str(Path(args.out) / "cache")
    tiles = {}
    for name in ("roi_size", "stride", "keep"):
        if getattr(args, name) is not None:
            tiles[name] = _ints(getattr(args, name))
    if args.sw_batch_size is not None:
        tiles["sw_batch_size"] = args.sw_batch_size
    config = AblationConfig(
        data=args.data, out=args.out, rows=[r.strip() for r in args.rows.split(",") if r.strip()],
        folds=args.folds, val_cases=args.val_cases, ensemble=args.ensemble, postprocess=args.postprocess,
        seed=args.seed, device=args.device, train=train, tiles=tiles, label_convention=args.label_convention,
    )
    paths = run_ablation(config)
    print(Path(paths["markdown"]).read_text(encoding="utf-8"))
    print(f"tables: {paths['markdown']}, {paths['csv']}, {paths['per_split_csv']}, {paths['per_case_csv']}")
    if paths["overlays"]:
        print(f"best / worst case overlays: {Path(paths['overlays'][0]).parent}/")
    return 0
