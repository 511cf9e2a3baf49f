"""The whole pipeline in about ten minutes on a CPU: train a small OM-Net + CGA, predict held-out cases, post-process, evaluate.

Examples::

    omkit demo -o demo_out                    # the README's `make demo`
    omkit demo -o demo_out -i BraTS2018/ --max-minutes 20
    omkit demo -o demo_out --synthetic        # no data needed

Uses the real BraTS sample cases when they are found (``-i/--input``, else
``$OMKIT_SAMPLE_DATA``, else ``../shared/data/brats2018-sample`` beside the
repository), otherwise SYNTHETIC cases, and says which. One fold of the cases
is held out; the model (width-reduced, wall-clock training budget) predicts
it. Training starts from the ``cpu-budget`` recipe (see ``omkit train
--help`` and ``omkit.training.config.RECIPES``): the three tasks train jointly
from the first step, as the authors' released solver does (``--stage-epochs
1,1,998`` for the paper's curriculum), Adam instead of the paper's SGD (with
SGD, lr 1e-3 and momentum 0.99, task 1 still calls every voxel "normal" after
ten minutes, so the fusion finds no tumor at all), and half of task 1's
patches centred around the tumor (``--optimizer sgd --samplers
brain,dilated_tumor,core`` for the paper's), and every patch augmented
(mirroring, small rotations and zooms, intensity changes: ``--augment ""``
for none, as the paper describes none). Every training option of
``omkit train`` is accepted. Outputs under OUT: ``run/`` (training run,
``model.pt``), ``predictions/`` (post-processed label maps) and
``predictions_raw/`` (without post-processing), ``overlays/`` (paper Fig. 7
style PNGs), ``evaluation/`` and ``evaluation_raw/`` (metrics.csv,
summary.json), ``metrics_table.txt``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from omkit.cli import CLIError
from omkit.cli.training_options import add_training_arguments, training_settings
from omkit.cli.options import (
    add_device_argument,
    add_postprocess_arguments,
    add_tile_arguments,
    inference_settings,
    int_list,
    postprocess_steps,
    tile_settings,
)

SAMPLE_ENV = "OMKIT_SAMPLE_DATA"
RECIPE = "cpu-budget"
DEMO_MAX_MINUTES = 6.5


def default_sample_data() -> Path:
    """``$OMKIT_SAMPLE_DATA``, else ``<repo>/../shared/data/brats2018-sample``."""
    if os.environ.get(SAMPLE_ENV):
        return Path(os.environ[SAMPLE_ENV])
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "brats2018-sample"


def add_arguments(parser):
    parser.add_argument("-o", "--output", default="demo_out", metavar="OUT", help="output folder (default demo_out)")
    parser.add_argument("-i", "--input", metavar="DATA",
                        help=f"folder of BraTS case folders (default: ${SAMPLE_ENV} or ../shared/data/brats2018-sample)")
    parser.add_argument("--synthetic", action="store_true", help="use synthetic cases even when real ones are found")
    parser.add_argument("--synthetic-cases", type=int, default=8, help="number of synthetic cases (default 8)")
    parser.add_argument("--synthetic-shape", type=int_list("--synthetic-shape"), default=(48, 96, 96),
                        metavar="D,H,W", help="synthetic volume shape (default 48,96,96)")
    parser.add_argument("--folds", type=int, default=4,
                        help="cases are split into this many folds; fold 0 is held out (default 4)")
    parser.add_argument("--force", action="store_true", help="overwrite the outputs of an earlier demo in OUT")
    add_device_argument(parser)
    add_training_arguments(parser, groups=("run", "model", "schedule", "patches", "optimiser"), recipe=RECIPE,
                           defaults={"max_minutes": DEMO_MAX_MINUTES, "seed": 0})
    add_postprocess_arguments(parser)
    # the paper's tiles (16 x 32 x 32, kept 5 x 20 x 20): dense inference (the default)
    # pools each kept centre's attention over them and runs the backbone once per voxel
    # whatever the kept centre, so the demo no longer trades the paper's geometry for speed
    # (with --inference tiles, --tile-keep 8,24,24 gives 2.3x fewer tiles). Not larger
    # tiles: CGA (and SE) pool over the whole tile, and a tile much larger than the
    # training patches changes the pooled statistics (a 32 x 128 x 128 tile dropped
    # task 3's mean P(enhancing) inside a held-out enhancing tumor from 0.84 to 0.46).
    add_tile_arguments(parser, dense=True, batch=32)


def locate_data(args, out_dir: Path) -> tuple[Path, bool]:
    """The case folder to use and whether it is synthetic."""
    from omkit.data.synthetic import make_dataset

    if not args.synthetic:
        data = Path(args.input) if args.input else default_sample_data()
        if args.input and not data.is_dir():
            raise FileNotFoundError(f"{data}: --input folder not found")
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
    from omkit.devices import resolve_device
    from omkit.evaluation import evaluate_folders, format_table, write_evaluation
    from omkit.fileio import atomic_write_text
    from omkit.inference.pipeline import load_for_prediction, write_label_map
    from omkit.inference.segmenter import Segmenter
    from omkit.training import TrainConfig, train
    from omkit.viz import save_overlay

    started = time.perf_counter()
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise CLIError(f"{out_dir}: not empty (outputs of an earlier demo?); pass --force to overwrite")
    tiles = tile_settings(args)
    inference = inference_settings(args)
    steps = postprocess_steps(args)
    device = str(resolve_device(args.device))
    # the training settings are checked before any data is made or read
    settings = {**training_settings(args), "output": str(out_dir / "run"), "device": device,
                "folds": args.folds, "fold": 0, "progress": True}
    config = TrainConfig.from_recipe(RECIPE, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    data, synthetic = locate_data(args, out_dir)
    config = dataclasses.replace(config, input=str(data))
    cases = find_cases(data)
    _, held_out = kfold_split(cases, args.folds, 0, seed=0)  # the split the trainer makes for fold 0
    print(f"omkit demo: {len(cases)} {'synthetic' if synthetic else 'real'} cases in {data}; "
          f"training on {len(cases) - len(held_out)}, holding out {', '.join(p.name for p in held_out)}")

    # -- train until the wall-clock budget is spent (the recipe's epochs are more than it allows)
    run_dir = train(config, force=True)
    model_path = Path(run_dir) / "model.pt"

    # -- predict the held-out cases, with and without post-processing
    segmenter = Segmenter.from_files([model_path], device=device, tiles=tiles, roi_dilation=args.roi_dilation,
                                     postprocess=steps, **inference)
    pred_dir, raw_dir, overlay_dir = out_dir / "predictions", out_dir / "predictions_raw", out_dir / "overlays"
    for case_dir in held_out:
        t0 = time.perf_counter()
        case = load_for_prediction(case_dir, with_label=True)
        result = segmenter.segment_case(case)
        convention = segmenter.convention_for(case)
        write_label_map(result.raw_labels, case, raw_dir / f"{case.case_id}.nii.gz", convention, force=True)
        if steps:
            write_label_map(result.labels, case, pred_dir / f"{case.case_id}.nii.gz", convention, force=True)
        save_overlay(overlay_dir / f"{case.case_id}.png", case.image[0], result.labels, case.label, title=case.case_id,
                     force=True)
        per_task = ", ".join(f"{task} {count}" for task, count in result.tile_counts.items())
        unit = "blocks (one per paper tile)" if segmenter.predictor.inference == "dense" else "tiles"
        print(f"omkit demo: predicted {case.case_id} in {time.perf_counter() - t0:.1f} s "
              f"({segmenter.predictor.inference_note}; {unit} per task: {per_task})")

    # -- evaluate
    tables = []
    variants = [("without post-processing", raw_dir, "evaluation_raw")]
    if steps:
        variants.append(("with post-processing", pred_dir, "evaluation"))
    for name, folder, evaluation in variants:
        rows, _ = evaluate_folders(folder, data)
        summary = write_evaluation(rows, out_dir / evaluation, force=True, extra={"pred": str(folder), "gt": str(data)})
        tables.append(f"{name}:\n{format_table(summary, len(held_out))}")
    kind = "SYNTHETIC cases" if synthetic else "real BraTS cases"
    header = (f"omkit demo: {config.preset} (width {config.width:g}), {config.max_minutes:g} min training budget "
              f"({config.optimizer}, lr {config.lr:g}), {len(held_out)} held-out {kind}")
    table = header + "\n\n" + "\n\n".join(tables) + "\n"
    atomic_write_text(out_dir / "metrics_table.txt", table, force=True)
    print("\n" + table)
    print(f"omkit demo: done in {(time.perf_counter() - started) / 60:.1f} min. Outputs in {out_dir}/:")
    for sub, what in (("run/model.pt", "trained model"), ("predictions/", "label maps (NIfTI, input space)"),
                      ("overlays/", "Fig. 7 style PNGs"), ("evaluation/metrics.csv", "per-case metrics"),
                      ("metrics_table.txt", "the tables above")):
        print(f"  {out_dir / sub}  {what}")
    return 0
