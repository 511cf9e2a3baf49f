"""Segment BraTS cases with a trained model (or an ensemble): label maps in the input's space.

Examples::

    omkit predict -i BraTS2018/Brats18_CBICA_ABM_1 -o preds/ -m runs/cga/model.pt
    omkit predict -i BraTS2018/ -o preds/ -m fold0/model.pt -m fold1/model.pt --overlay
    torchrun --nproc_per_node=2 -m omkit predict -i BraTS2018/ -o preds/ -m runs/cga/model.pt --device cuda
    omkit predict -i BraTS2018/ -o preds/ -m runs/cga/model.pt --tta          # test-time mirroring, 8 flips

Writes ``OUT/<case-id>.nii.gz`` (uint8 labels in the chosen BraTS convention,
the input's affine and header), and on request ``OUT/<case-id>_probabilities.npz``
(per-task probabilities) and ``OUT/<case-id>_overlay.png`` (paper Fig. 7 style).
Under torchrun the cases are split between the processes.
"""
from __future__ import annotations

import os
from pathlib import Path

from omkit.cli import CLIError
from omkit.cli.options import (add_device_argument, add_postprocess_arguments, add_precision_argument,
                               add_tile_arguments, add_tta_argument, postprocess_steps, tile_settings, tta_setting)


def add_arguments(parser):
    parser.add_argument("-i", "--input", required=True, metavar="IN", help="a BraTS case folder or a folder of them")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument("-m", "--model", required=True, action="append", metavar="MODEL",
                        help="model file (RUN/model.pt); repeat for an ensemble (probabilities are averaged)")
    parser.add_argument("--expect-preset", metavar="PRESET", help="refuse model files that do not hold this preset")
    add_device_argument(parser)
    add_precision_argument(parser)
    parser.add_argument("--label-convention", choices=("2018", "2023", "2024"),
                        help="labels of the written maps: 2018 (4 = enhancing) or 2023/2024 (3 = enhancing; "
                             "no resection cavity is predicted); default: the convention of the input's file naming")
    parser.add_argument("--save-probabilities", action="store_true", help="also write OUT/<case-id>_probabilities.npz")
    parser.add_argument("--overlay", action="store_true",
                        help="also write OUT/<case-id>_overlay.png (FLAIR, ground truth when present, prediction)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_postprocess_arguments(parser)
    add_tile_arguments(parser)
    add_tta_argument(parser)


def shard(items: list, rank: int | None = None, world: int | None = None) -> list:
    """This process's share of ``items`` under torchrun (RANK / WORLD_SIZE)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    return items[rank::world]


def output_paths(out_dir: Path, case_id: str) -> dict[str, Path]:
    return {
        "labels": out_dir / f"{case_id}.nii.gz",
        "probabilities": out_dir / f"{case_id}_probabilities.npz",
        "overlay": out_dir / f"{case_id}_overlay.png",
    }


def run(args) -> int:
    from tqdm.auto import tqdm

    from omkit.data import find_cases
    from omkit.devices import check_precision, resolve_device
    from omkit.fileio import OutputExistsError
    from omkit.inference.pipeline import case_id_of, load_for_prediction, write_label_map, write_probabilities
    from omkit.inference.segmenter import Segmenter
    from omkit.viz import save_overlay

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"{out_dir}: exists and is not a folder")
    tiles = tile_settings(args)
    tta = tta_setting(args)
    cases = shard(find_cases(args.input))
    wanted = ["labels"] + (["probabilities"] if args.save_probabilities else []) + (["overlay"] if args.overlay else [])
    jobs = []
    for case_dir in cases:
        paths = output_paths(out_dir, case_id_of(case_dir))
        if not args.force:
            for key in wanted:
                if paths[key].exists():
                    raise OutputExistsError(None, None, str(paths[key]))
        jobs.append((case_dir, paths))
    steps = postprocess_steps(args)
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    # the one path from an image to labels, the one omkit.Segmenter users call
    segmenter = Segmenter.from_files(args.model, device=device, expect_preset=args.expect_preset, tiles=tiles,
                                     roi_dilation=args.roi_dilation, tta=tta, postprocess=steps,
                                     precision=args.precision)
    main_process = int(os.environ.get("RANK", 0)) == 0
    progress = tqdm(jobs, desc="predict", unit="case", disable=args.no_progress or not main_process or len(jobs) < 2)
    for case_dir, paths in progress:
        case = load_for_prediction(case_dir, with_label=None if args.overlay else False)
        result = segmenter.segment_case(case, return_probabilities=args.save_probabilities)
        convention = args.label_convention or case.convention
        write_label_map(result.labels, case, paths["labels"], convention, force=args.force)
        if args.save_probabilities:
            write_probabilities(result.probabilities, paths["probabilities"], force=args.force)
        if args.overlay:
            save_overlay(paths["overlay"], case.image[0], result.labels, case.label, title=case.case_id, force=args.force)
    if main_process:
        print(f"wrote {len(jobs)} label map(s) to {out_dir}")
    return 0
