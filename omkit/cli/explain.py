"""Show what CGA attends to: category-specific channel importance on one axial slice (paper Fig. 6), as a PNG.

Examples::

    omkit explain -m runs/cga/model.pt -i BraTS2018/Brats18_CBICA_ABM_1 -o abm_fig6.png
    omkit explain -m runs/cga/model.pt -i CASE --task 3 --slice 80 -o core.png

As in the paper, the shared features F and the guidance P of the preceding
task are stitched over the whole slice (overlap-tile), m_t and m_n are computed
on that slice (CSCI block), and the feature maps of the channels with the
largest and smallest m_t and m_n are shown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omkit.cli import CLIError
from omkit.cli.options import add_device_argument, add_tile_arguments, tile_settings

CATEGORIES = {2: ("tumor", "non-tumor"), 3: ("core", "non-core")}


def add_arguments(parser):
    parser.add_argument("-i", "--input", required=True, metavar="CASE_DIR", help="one BraTS case folder")
    parser.add_argument("-o", "--output", required=True, metavar="PNG", help="figure to write")
    parser.add_argument("-m", "--model", required=True, help="model file with a CGA-like head (e.g. preset omnet_cga)")
    parser.add_argument("--task", type=int, choices=(2, 3), default=2,
                        help="2: CGA-tumor, guided by task 1 (default); 3: CGA-core, guided by task 2")
    parser.add_argument("--slice", type=int, help="axial slice of the input volume (default: the one with the most "
                                                  "ground-truth tumor, else the brain's middle)")
    parser.add_argument("--count", type=int, default=5, help="channels shown per row (default 5)")
    add_device_argument(parser)
    parser.add_argument("--force", action="store_true", help="overwrite an existing figure")
    add_tile_arguments(parser, roi_dilation=False)


def slice_maps(model, image, z: int, task: int, tiles, device) -> tuple[np.ndarray, np.ndarray]:
    """Stitched shared features ``(C, H, W)`` and guidance ``(H, W)`` of axial slice ``z``."""
    import torch

    from omkit.inference import overlap_tile_inference

    channels = model.backbone.out_channels

    def features_and_guidance(batch):
        features = model.backbone(batch)
        return torch.cat([features, model.cross_task_guidance(task - 1, features)], 1)

    with torch.no_grad():
        out = overlap_tile_inference(
            torch.as_tensor(image), features_and_guidance, channels + 1,
            tile_size=tiles.size, tile_stride=tiles.stride, tile_keep=tiles.keep, tile_batch=tiles.batch,
            bbox=(slice(z, z + 1), slice(None), slice(None)), device=device, output_device="cpu",
        )
    return out[:channels, z].numpy(), out[channels, z].numpy()


def run(args) -> int:
    import torch

    from omkit.checkpoint import load_model
    from omkit.data import preprocess_case
    from omkit.devices import resolve_device
    from omkit.fileio import OutputExistsError
    from omkit.functional import category_importance
    from omkit.inference.pipeline import load_for_prediction
    from omkit.viz import save_channel_importance, tumor_slice

    target = Path(args.output)
    if target.exists() and not args.force:
        raise OutputExistsError(None, None, str(target))
    if args.count < 1:
        raise CLIError(f"--count must be at least 1, got {args.count}")
    tiles = tile_settings(args, resolve=True)
    device = resolve_device(args.device)
    model, card = load_model(args.model, map_location=device)
    heads = getattr(model, "heads", None)
    head = heads[args.task - 1] if heads is not None else None
    if head is None or not getattr(head, "guided", False):
        raise CLIError(f"{args.model}: preset {card.preset!r} has no guided (CGA-like) head for task {args.task}")
    case = load_for_prediction(args.input, with_label=None)
    pre = preprocess_case(case)
    z = args.slice
    if z is None:
        z = tumor_slice(case.label) if case.label is not None else (pre.bbox[0].start + pre.bbox[0].stop) // 2
    if not pre.bbox[0].start <= z < pre.bbox[0].stop:
        raise CLIError(f"--slice {z}: outside the brain of {case.paths['flair']} "
                       f"(axial slices {pre.bbox[0].start}..{pre.bbox[0].stop - 1})")
    local = z - pre.bbox[0].start
    features, guidance = slice_maps(model, pre.image, local, args.task, tiles, device)
    importance = category_importance(torch.from_numpy(features)[None, :, None], torch.from_numpy(guidance)[None, None, None])
    save_channel_importance(
        target, pre.image[0, local], guidance, features, importance[0].numpy(), count=args.count,
        title=f"{case.case_id}, axial slice {z}: CGA-{CATEGORIES[args.task][0]} channel importance",
        category_names=CATEGORIES[args.task], force=args.force,
    )
    print(f"wrote {target}")
    return 0
