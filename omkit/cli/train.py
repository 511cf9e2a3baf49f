"""Train a model preset on BraTS case folders (curriculum, online data transfer, resumable, DDP under torchrun).

Examples::

    omkit train --preset omnet_cga -i BraTS2018/ -o runs/cga
    omkit train --preset omnet_cga -i BraTS2018/ -o runs/cga --resume
    omkit train --preset omnet_cga -i BraTS2018/ -o runs/cga --resume auto   # in a job that may be requeued
    torchrun --nproc_per_node=2 -m omkit train --preset omnet_cga -i BraTS2018/ -o runs/cga --device cuda

    omkit train --recipe cpu-budget --max-minutes 25 -i BraTS2018/ -o runs/cpu
    omkit train --config runs/cpu/config.json -o runs/cpu-again     # the same run again (flags override)
    omkit train --preset omnet --attention se --samplers "brain,dilated_tumor(radius=3),core" -i BraTS2018/ -o runs/eca

Defaults are the paper's (``--recipe paper``; every option's help shows its
default). SIGTERM or SIGUSR1 (a scheduler's notice) ends the current step, writes
the checkpoint and exits with 75 (EX_TEMPFAIL), for the job to be requeued with
``--resume auto``. ``RUN/model.pt`` is the final model, loadable by ``omkit predict``.
``--recipe cpu-budget`` suits a budget of minutes on a CPU (see
``omkit.training.config.RECIPES``); options given explicitly override a recipe's.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omkit.cli import CLIError
from omkit.cli.options import ALL_FOLDS, add_device_argument
from omkit.cli.training_options import add_training_arguments, training_settings

# below this --max-minutes, the paper's recipe earns a hint towards cpu-budget
SHORT_BUDGET_MINUTES = 600


def add_arguments(parser):
    from omkit.training.config import RECIPES

    g = parser.add_argument_group("input and output")
    g.add_argument("-i", "--input", metavar="DATA",
                   help="a folder of BraTS case folders (2018 or 2023 file naming); with --config, default its input")
    g.add_argument("-o", "--output", required=True, metavar="RUN",
                   help="run folder: config, metrics, checkpoints, model.pt")
    g.add_argument("--recipe", metavar="NAME",
                   help=f"named settings the other options override: {', '.join(RECIPES)} (default paper)")
    g.add_argument("--config", metavar="FILE", type=Path,
                   help="train with the settings a run recorded (RUN/config.json), budgets included; options given "
                        "explicitly override them")
    g.add_argument("--resume", nargs="?", const="yes", choices=("yes", "auto"), default=None, metavar="auto",
                   help="continue the run in RUN from checkpoints/last.pt; --resume auto: continue it when RUN holds "
                        "one, else start it (a job array or a requeued job runs the same command again)")
    g.add_argument("--force", action="store_true", help="start over in an existing run folder (deletes its contents)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_argument(g)
    add_training_arguments(parser)


def _resolve_resume(args) -> None:
    """``--resume auto``: resume when the run folder holds a checkpoint, else start (see :func:`_fold_resume`)."""
    if args.resume == "auto":
        resume, force = _fold_resume(Path(args.output), True)
        args.resume, args.force = ("yes" if resume else None), (args.force or force)


def config_from_args(args):
    from omkit.training import TrainConfig

    given = training_settings(args)
    if args.input is None and (args.config is None or args.resume):
        raise CLIError("-i/--input DATA is required (unless --config gives it)")
    given.update(input=args.input, output=args.output, device=args.device)
    if args.no_progress:
        given["progress"] = False
    if args.resume:
        from omkit.training.distributed import from_environment
        from omkit.training.run_folder import check_free

        if from_environment()[0] == 0:  # the other ranks would find the lock of their own rank 0 (Trainer._setup)
            check_free(Path(args.output))  # "in use by pid ..." rather than "nothing to resume" for a run starting
        config_path = Path(args.output) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{args.output}: nothing to resume (no config.json)")
        saved = TrainConfig.load(config_path)
        if args.recipe is not None and args.recipe != saved.recipe:
            raise CLIError(f"--recipe {args.recipe}: the run in {args.output} was made with recipe {saved.recipe}; "
                           "a resumed run keeps its settings")
        merged = saved.to_dict()
        # budgets limit one invocation's reach; a resumed run trains to the end
        # of its schedule unless given a new (total) budget
        merged.update(max_steps=None, max_minutes=None)
        merged.update(given)
        merged["progress"] = given.get("progress", True)
        return TrainConfig.from_dict(merged)
    if args.config is not None:
        if args.recipe is not None:
            raise CLIError("--recipe and --config exclude each other: the recorded settings already hold a recipe's")
        recorded = TrainConfig.load(args.config).to_dict()  # one line naming the file if it is not a run's
        if args.input is None:
            given["input"] = recorded["input"]
        given.setdefault("progress", True)  # a bar is no setting of the run
        return TrainConfig.from_dict({**recorded, **given})
    return TrainConfig.from_recipe(args.recipe or "paper", given)


def _fold_resume(run_dir: Path, resume) -> tuple[bool, bool]:
    """``(resume, force)`` for one run folder under ``--resume [auto]``: resume when it holds a checkpoint;
    else start, over a run of omkit's that stopped before its first checkpoint (config.json, no checkpoint)."""
    from omkit.training.run_folder import last_checkpoint

    if not resume:
        return False, False
    if last_checkpoint(run_dir).is_file():
        return True, False
    return False, (run_dir / "config.json").is_file()


def _train_every_fold(config, train, resume, force: bool) -> None:
    """``--fold all``: each fold in turn into ``RUN/fold_k``; with ``--resume`` (or ``auto``) each fold
    goes on where it stopped, so a requeued job repeats the same command. ``omkit predict -m RUN``
    ensembles the folds."""
    from omkit.checkpoint import FOLD_FOLDERS
    from omkit.training import TrainConfig

    settings = config.to_dict()
    for k in range(config.folds):
        run_dir = Path(config.output) / FOLD_FOLDERS.replace("*", str(k))
        fold_resume, fold_force = _fold_resume(run_dir, resume)
        train(TrainConfig.from_dict({**settings, "fold": k, "output": str(run_dir)}), resume=fold_resume,
              force=fold_force or force)


def run(args) -> int:
    from omkit.training import train
    from omkit.training.preemption import EXIT_REQUEUE, Preempted

    every_fold = getattr(args, "fold", None) == ALL_FOLDS
    if every_fold:  # the settings are checked with fold 0; each fold then trains (or resumes) in turn
        if args.folds is None:
            raise CLIError("--fold all needs --folds K")
        args.fold, fold_resume, args.resume = 0, args.resume, None
    else:
        _resolve_resume(args)
    if args.resume and args.force:
        raise CLIError("--resume and --force exclude each other")
    if args.resume and args.config is not None:
        raise CLIError("--resume and --config exclude each other: a resumed run keeps the settings in its folder")
    config = config_from_args(args)
    if not args.resume and args.recipe is None and config.max_minutes is not None and config.max_minutes < SHORT_BUDGET_MINUTES:
        # the paper's schedule (20 epochs of 200k-400k patches per task) is days of CPU time
        print(f"omkit train: note: --max-minutes {config.max_minutes:g} with the paper's settings (SGD, full width, "
              "20 patches per task) trains only a sliver of its schedule; for a budget of minutes use "
              "--recipe cpu-budget (see --help)", file=sys.stderr)
    try:
        if every_fold:
            _train_every_fold(config, train, fold_resume, args.force)
        else:
            train(config, resume=bool(args.resume), force=args.force)
    except FileExistsError as exc:  # an existing run folder: tell the user which option to use
        raise CLIError(str(exc)) from None
    except Preempted as stopped:  # checkpoint written: the scheduler may requeue the same command
        print(f"omkit train: {stopped}; exit {EXIT_REQUEUE}", file=sys.stderr, flush=True)
        return EXIT_REQUEUE
    return 0
