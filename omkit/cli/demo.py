"""The whole pipeline in about ten minutes on a CPU: train a small OM-Net + CGA, predict held-out cases, post-process, evaluate.

Examples::

    omkit demo --out demo_out                 # the README's `make demo`
    omkit demo --out demo_out --data BraTS2018/ --train-minutes 20
    omkit demo --out demo_out --synthetic     # no data needed

Uses the real BraTS sample cases when they are found (``--data``, else
``$OMKIT_SAMPLE_DATA``, else ``../shared/data/brats2018-sample`` beside the
repository), otherwise SYNTHETIC cases, and says which. One fold of the cases
is held out; the model (width-reduced, wall-clock training budget) predicts
it. Training uses the ``cpu-budget`` recipe (see ``omkit train --help``): the
three tasks train jointly from the first step, as the authors' released solver
does (the paper's curriculum would spend a few-minute budget before task 3
starts; ``--curriculum`` to use it anyway), Adam instead of the paper's SGD
(with SGD, lr 1e-3 and momentum 0.99, task 1 still calls every voxel "normal"
after ten minutes, so the fusion finds no tumor at all), and half of task 1's
patches centred around the tumor instead of all uniformly in the brain
(``--optimizer sgd --samplers brain,dilated_tumor,core`` for the paper's). Outputs under DIR: ``run/`` (training run, ``model.pt``),
``predictions/`` (post-processed label maps) and ``predictions_raw/`` (without
post-processing), ``overlays/`` (paper Fig. 7 style PNGs), ``evaluation/`` and
``evaluation_raw/`` (metrics.csv, summary.json), ``metrics_table.txt``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from omkit.cli import CLIError
from omkit.cli.predict import add_tile_arguments, resolve_device, tile_settings
from omkit.cli.train import _ints, sampler_specs
from omkit.training.config import RECIPES

SAMPLE_ENV = "OMKIT_SAMPLE_DATA"
RECIPE = "cpu-budget"
_RECIPE = RECIPES[RECIPE]


def default_sample_data() -> Path:
    """``$OMKIT_SAMPLE_DATA``, else ``<repo>/../shared/data/brats2018-sample``."""
    if os.environ.get(SAMPLE_ENV):
        return Path(os.environ[SAMPLE_ENV])
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "brats2018-sample"


def add_arguments(parser):
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    parser.add_argument("--data", help=f"folder of BraTS case folders (default: ${SAMPLE_ENV} or ../shared/data/brats2018-sample)")
    parser.add_argument("--synthetic", action="store_true", help="use synthetic cases even when real ones are found")
    parser.add_argument("--synthetic-cases", type=int, default=8, help="number of synthetic cases (default 8)")
    parser.add_argument("--synthetic-shape", type=lambda t: _ints(t, "--synthetic-shape", (3,)), default=(48, 96, 96),
                        metavar="D,H,W", help="synthetic volume shape (default 48,96,96)")
    parser.add_argument("--preset", default="omnet_cga", help="model preset (default omnet_cga)")
    parser.add_argument("--width", type=float, default=_RECIPE["width"],
                        help=f"channel width multiplier (default {_RECIPE['width']})")
    parser.add_argument("--train-minutes", type=float, default=6.5, help="wall-clock training budget (default 6.5)")
    parser.add_argument("--max-steps", type=int, help="also stop training after this many steps")
    parser.add_argument("--batch-per-task", type=int, default=_RECIPE["batch_per_task"],
                        help=f"patches per task per step (default {_RECIPE['batch_per_task']})")
    parser.add_argument("--patches-per-epoch", type=lambda t: _ints(t, "--patches-per-epoch", (1, 3)),
                        default=_RECIPE["patches_per_epoch"], metavar="N[,N2,N3]",
                        help=f"patches per task and epoch (default {_RECIPE['patches_per_epoch'][0]} each); "
                             "training runs epochs until the budget is spent")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=_RECIPE["optimizer"],
                        help=f"default {_RECIPE['optimizer']} (see above)")
    parser.add_argument("--lr", type=float, default=_RECIPE["lr"], help=f"learning rate (default {_RECIPE['lr']:g})")
    parser.add_argument("--samplers", type=sampler_specs, default=_RECIPE["samplers"], metavar="S1,S2,S3",
                        help=f"patch sampler per task (default {','.join(_RECIPE['samplers'])})")
    parser.add_argument("--curriculum", action="store_true",
                        help="the paper's curriculum: one epoch of task 1, one of tasks 1-2, then tasks 1-3")
    parser.add_argument("--folds", type=int, default=4, help="cases are split into this many folds; fold 0 is held out (default 4)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and patch sampling (default 0)")
    parser.add_argument("--force", action="store_true", help="overwrite the outputs of an earlier demo in DIR")
    add_tile_arguments(parser)
    # tiles of the training patch size (the paper's 16 x 32 x 32) with a larger kept
    # centre than the paper's (8 x 24 x 24 instead of 5 x 20 x 20): 2.3x fewer tiles on a
    # CPU. Not larger tiles: CGA (and SE) pool over the whole tile, so a tile much larger
    # than the training patches changes the pooled statistics; measured on a held-out
    # case, a 32 x 128 x 128 tile dropped task 3's mean P(enhancing) inside the
    # enhancing tumor from 0.84 to 0.46 and the enhancing Dice to about zero.
    parser.set_defaults(roi_size=(16, 32, 32), keep=(8, 24, 24), sw_batch_size=32)


def locate_data(args, out_dir: Path) -> tuple[Path, bool]:
    """The case folder to use and whether it is synthetic."""
    from omkit.data.synthetic import make_dataset

    if not args.synthetic:
        data = Path(args.data) if args.data else default_sample_data()
        if args.data and not data.is_dir():
            raise FileNotFoundError(f"{data}: --data folder not found")
        if data.is_dir() and any(data.iterdir()):
            return data, False
        print(f"omkit demo: no sample cases at {data}; using SYNTHETIC cases instead")
    if args.synthetic_cases < args.folds:
        raise CLIError(f"--synthetic-cases {args.synthetic_cases}: need at least --folds {args.folds} cases")
    data = out_dir / "synthetic_cases"
    make_dataset(data, num_cases=args.synthetic_cases, shape=tuple(args.synthetic_shape), seed=args.seed, force=True)
    print(f"omkit demo: wrote {args.synthetic_cases} SYNTHETIC cases to {data} "
          "(made-up volumes: the scores below say nothing about real data)")
    return data, True


def run(args) -> int:
    from omkit.data import find_cases, kfold_split
    from omkit.fileio import atomic_write_text
    from omkit.inference import SegmentationPredictor, build_postprocessors
    from omkit.inference.pipeline import load_for_prediction, predict_case, write_label_map
    from omkit.inference.postprocess import postprocess
    from omkit.training import TrainConfig, train
    from omkit.viz import save_overlay

    from .evaluate import evaluate_folders, format_table, write_outputs

    started = time.perf_counter()
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise CLIError(f"{out_dir}: not empty (outputs of an earlier demo?); pass --force to overwrite")
    if args.train_minutes <= 0:
        raise CLIError(f"--train-minutes must be > 0, got {args.train_minutes}")
    tiles = tile_settings(args)
    device = resolve_device(args.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    data, synthetic = locate_data(args, out_dir)
    cases = find_cases(data)
    _, held_out = kfold_split(cases, args.folds, 0, seed=0)  # the split the trainer makes for fold 0
    print(f"omkit demo: {len(cases)} {'synthetic' if synthetic else 'real'} cases in {data}; "
          f"training on {len(cases) - len(held_out)}, holding out {', '.join(p.name for p in held_out)}")

    # -- train until the wall-clock budget is spent (stage-3 epochs are more than it allows)
    settings = dict(
        preset=args.preset, data=str(data), out=str(out_dir / "run"), device=device, width=args.width,
        patches_per_epoch=tuple(args.patches_per_epoch), batch_per_task=args.batch_per_task,
        max_minutes=args.train_minutes, max_steps=args.max_steps, folds=args.folds, fold=0, seed=args.seed,
        progress=True, optimizer=args.optimizer, lr=args.lr, samplers=tuple(args.samplers),
    )
    if args.curriculum:
        settings["stage_epochs"] = (1, 1, _RECIPE["stage_epochs"][2])
    config = TrainConfig.from_recipe(RECIPE, settings)
    run_dir = train(config, force=True)
    model_path = Path(run_dir) / "model.pt"

    # -- predict the held-out cases, with and without post-processing
    predictor = SegmentationPredictor.from_files([model_path], device=device, tiles=tiles, dilation=args.dilation)
    steps = build_postprocessors()
    pred_dir, raw_dir, overlay_dir = out_dir / "predictions", out_dir / "predictions_raw", out_dir / "overlays"
    for case_dir in held_out:
        t0 = time.perf_counter()
        case = load_for_prediction(case_dir, with_label=True)
        raw = predict_case(case, predictor)
        write_label_map(raw.labels, case, raw_dir / f"{case.case_id}.nii.gz", case.convention, force=True)
        pre = raw.preprocessed
        cropped = postprocess(raw.labels[pre.bbox], pre.image, steps)
        final = raw.labels.copy()
        final[pre.bbox] = cropped
        write_label_map(final, case, pred_dir / f"{case.case_id}.nii.gz", case.convention, force=True)
        save_overlay(overlay_dir / f"{case.case_id}.png", case.image[0], final, case.label, title=case.case_id)
        per_task = ", ".join(f"{task} {count}" for task, count in raw.tiles.items())
        print(f"omkit demo: predicted {case.case_id} in {time.perf_counter() - t0:.1f} s (tiles per task: {per_task})")

    # -- evaluate
    tables = []
    for name, folder, evaluation in (("without post-processing", raw_dir, "evaluation_raw"),
                                     ("with post-processing", pred_dir, "evaluation")):
        rows, _ = evaluate_folders(folder, data)
        summary = write_outputs(rows, out_dir / evaluation, force=True, extra={"pred": str(folder), "gt": str(data)})
        tables.append(f"{name}:\n{format_table(summary, len(held_out))}")
    kind = "SYNTHETIC cases" if synthetic else "real BraTS cases"
    header = (f"omkit demo: {args.preset} (width {args.width}), {args.train_minutes:g} min training budget "
              f"({args.optimizer}, lr {args.lr:g}), "
              f"{len(held_out)} held-out {kind}")
    table = header + "\n\n" + "\n\n".join(tables) + "\n"
    atomic_write_text(out_dir / "metrics_table.txt", table)
    print("\n" + table)
    print(f"omkit demo: done in {(time.perf_counter() - started) / 60:.1f} min. Outputs in {out_dir}/:")
    for sub, what in (("run/model.pt", "trained model"), ("predictions/", "label maps (NIfTI, input space)"),
                      ("overlays/", "Fig. 7 style PNGs"), ("evaluation/metrics.csv", "per-case metrics"),
                      ("metrics_table.txt", "the tables above")):
        print(f"  {out_dir / sub}  {what}")
    return 0
