"""Train a model preset on BraTS case folders (curriculum, online data transfer, resumable, DDP under torchrun).

Examples::

    omkit train --preset omnet_cga --data BraTS2018/ --out runs/cga
    omkit train --preset omnet_cga --data BraTS2018/ --out runs/cga --resume
    torchrun --nproc_per_node=2 -m omkit train --preset omnet_cga --data BraTS2018/ --out runs/cga

    omkit train --recipe cpu-budget --max-minutes 25 --data BraTS2018/ --out runs/cpu

Defaults are the paper's (``--recipe paper``): stages of 1, 1 and 18 epochs; 400k/400k/200k
patches per epoch; 20 patches per task per step; SGD lr 1e-3, momentum 0.99,
weight decay 5e-4, lr halved every 4 epochs. ``RUN/model.pt`` is the final
model, loadable by ``omkit predict``. ``--recipe cpu-budget`` suits a budget of
minutes on a CPU: width 0.25, 4 patches per task per step, Adam at a constant
lr 1e-3, half of task 1's patches around the tumor, all tasks from the first
step (options given explicitly override a recipe's).
"""
from __future__ import annotations

import argparse
import sys

from omkit.cli import CLIError


def _ints(text: str, name: str, count: tuple[int, ...]) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} expects comma-separated integers, got {text!r}") from None
    if len(values) not in count:
        raise argparse.ArgumentTypeError(f"{name} expects {' or '.join(map(str, count))} values, got {text!r}")
    return values


def add_arguments(parser):
    # every default is None so that --resume can tell what was given on the
    # command line (and refuse changes that would alter the run)
    g = parser.add_argument_group("run")
    g.add_argument("--preset", help="model preset (omkit models lists them); default omnet_cga")
    g.add_argument("--recipe", metavar="NAME",
                   help="named settings the other options override: paper (default; the paper's protocol) or "
                        "cpu-budget (for --max-minutes on a CPU: width 0.25, batch 4, Adam, tumor-weighted task 1 "
                        "sampling, all tasks from the start)")
    g.add_argument("--data", required=True, help="a folder of BraTS case folders (2018 or 2023 file naming)")
    g.add_argument("--out", required=True, metavar="RUN", help="run folder: config, metrics, checkpoints, model.pt")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN from checkpoints/last.pt")
    g.add_argument("--force", action="store_true", help="start over in an existing run folder (deletes its contents)")
    g.add_argument("--device", help="cpu (default), cuda[:N] or auto; under torchrun each process uses its local GPU")
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision (float16 autocast; CUDA only)")
    g.add_argument("--seed", type=int, help="seed of weights and patch sampling (default 0)")
    g.add_argument("--max-minutes", type=float,
                   help="stop (with a checkpoint and model.pt) once the run's total training time reaches this "
                        "(data preparation not counted); not carried over by --resume")
    g.add_argument("--max-steps", type=int,
                   help="stop once the run has made this many steps in total; not carried over by --resume")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = parser.add_argument_group("model and curriculum")
    g.add_argument("--width", type=float, help="channel width multiplier (default 1.0 = the paper's 32-256 maps)")
    g.add_argument("--stage-epochs", type=lambda t: _ints(t, "--stage-epochs", (3,)), metavar="A,B,C",
                   help="epochs of curriculum stages 1-3 (default 1,1,18); presets without curriculum train A+B+C epochs")
    g.add_argument("--epochs", type=int, help="total epochs (lengthens or shortens the last stage)")
    g.add_argument("--plateau-tol", type=float,
                   help="end stage 1 or 2 early when its newest task's epoch loss improves by less than this fraction")
    g.add_argument("--transfer-thresholds", type=lambda t: tuple(float(v) for v in t.split(",")), metavar="TUMOR,CORE",
                   help="online data transfer thresholds (default 0.4,0.5)")

    g = parser.add_argument_group("patches and optimiser")
    g.add_argument("--patch-size", type=lambda t: _ints(t, "--patch-size", (3,)), metavar="D,H,W",
                   help="patch size in (axial, H, W) order (default 16,32,32 = the paper's 32x32x16)")
    g.add_argument("--patches-per-epoch", type=lambda t: _ints(t, "--patches-per-epoch", (1, 3)), metavar="N[,N2,N3]",
                   help="patches per epoch, one count for all tasks or one per task (default 400000,400000,200000)")
    g.add_argument("--batch-per-task", type=int, help="patches per task per step and process (default 20)")
    g.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="sgd (default, the paper's) or adam (converges in fewer steps: for budgets of minutes)")
    g.add_argument("--lr", type=float, help="initial learning rate (default 1e-3)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.99)")
    g.add_argument("--weight-decay", type=float, help="weight decay (default 5e-4)")
    g.add_argument("--lr-step-epochs", type=int, help="halve the learning rate every this many epochs (default 4)")
    g.add_argument("--samplers", type=sampler_specs, metavar="S1,S2,S3",
                   help="patch sampler per task (default brain,dilated_tumor,core); a weighted mixture is written "
                        "NAME:W+NAME:W, e.g. brain:1+dilated_tumor:1 draws half of task 1's patches around the tumor")
    g.add_argument("--dilation", type=float, help="task-2 sampling: whole tumor dilated by this many voxels (default 5)")

    g = parser.add_argument_group("data")
    g.add_argument("--folds", type=int, help="split the cases into K folds (with --fold)")
    g.add_argument("--fold", type=int, help="train on every fold but this one (0-based)")
    g.add_argument("--label-convention", choices=("2018", "2023"),
                   help="label values of the seg files (default: from the file naming)")
    g.add_argument("--skip-bad-cases", action="store_true", default=None,
                   help="warn about and leave out cases that fail validation instead of stopping")
    g.add_argument("--cache-dir", help="preprocessed-case cache (default $OMKIT_CACHE_DIR or ~/.cache/omkit/preprocessed)")
    g.add_argument("--workers", type=int, help="background processes preparing batches (default 0)")
    g.add_argument("--threads", type=int, help="CPU threads per process for torch (default: torch's choice)")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500; also every epoch end)")
    g.add_argument("--log-every", type=int, help="steps per metrics row (default 10)")

def sampler_specs(text: str) -> tuple[str, str, str]:
    specs = tuple(t.strip() for t in text.split(","))
    if len(specs) != 3 or not all(specs):
        raise argparse.ArgumentTypeError(f"--samplers expects three sampler specs S1,S2,S3, got {text!r}")
    return specs


# below this --max-minutes, the paper's recipe earns a hint towards cpu-budget
SHORT_BUDGET_MINUTES = 600

# argument name -> TrainConfig field, where they differ
_RENAMED = {"transfer_thresholds": None, "no_progress": None, "recipe": None}


def config_from_args(args):
    from omkit.training import TrainConfig

    given = {k: v for k, v in vars(args).items()
             if v is not None and not k.startswith("_") and k not in ("command", "resume", "force") and k not in _RENAMED}
    if args.transfer_thresholds is not None:
        if len(args.transfer_thresholds) != 2:
            raise CLIError(f"--transfer-thresholds expects TUMOR,CORE, got {args.transfer_thresholds}")
        given["tumor_threshold"], given["core_threshold"] = args.transfer_thresholds
    if args.no_progress:
        given["progress"] = False
    if args.resume:
        from pathlib import Path

        saved = TrainConfig.load(Path(args.out) / "config.json") if (Path(args.out) / "config.json").is_file() else None
        if saved is None:
            raise FileNotFoundError(f"{args.out}: nothing to resume (no config.json)")
        if args.recipe is not None and args.recipe != saved.recipe:
            raise CLIError(f"--recipe {args.recipe}: the run in {args.out} was made with recipe {saved.recipe}; "
                           "a resumed run keeps its settings")
        merged = saved.to_dict()
        # budgets limit one invocation's reach; a resumed run trains to the end
        # of its schedule unless given a new (total) budget
        merged.update(max_steps=None, max_minutes=None)
        merged.update(given)
        merged["progress"] = given.get("progress", True)
        return TrainConfig.from_dict(merged)
    return TrainConfig.from_recipe(args.recipe or "paper", given)


def run(args) -> int:
    from omkit.training import train

    if args.resume and args.force:
        raise CLIError("--resume and --force exclude each other")
    config = config_from_args(args)
    if not args.resume and args.recipe is None and config.max_minutes is not None and config.max_minutes < SHORT_BUDGET_MINUTES:
        # the paper's schedule (20 epochs of 200k-400k patches per task) is days of CPU time
        print(f"omkit train: note: --max-minutes {config.max_minutes:g} with the paper's settings (SGD, full width, "
              "20 patches per task) trains only a sliver of its schedule; for a budget of minutes use "
              "--recipe cpu-budget (see --help)", file=sys.stderr)
    try:
        train(config, resume=args.resume, force=args.force)
    except FileExistsError as exc:  # an existing run folder: tell the user which option to use
        raise CLIError(str(exc)) from None
    return 0
