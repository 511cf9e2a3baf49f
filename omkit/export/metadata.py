"""The metadata an exported file carries (:func:`export_metadata`): everything a runner
needs besides the graph to give the labels ``omkit predict`` gives: the input and its
features, the preprocessing, where the tiles go, how the tasks fuse, the post-processing
steps with their options, test-time mirroring, and how labels are written. The runner
(``runner/omkit_runner.py``) reads nothing else.
"""
from __future__ import annotations

from typing import Sequence

import torch

from omkit.data.features import input_channels
from omkit.deprecation import renamed_keywords
from omkit.inference.tiling import keep_offset
from omkit.labels import (BACKGROUND, CONVENTIONS, CORE_CLASSES, EDEMA, ENHANCING, NCR_NET, NORMAL,
                          NUM_CLASSES_TASK, TUMOR_CLASSES)
from omkit.model_card import ModelCard
from omkit.protocol import COARSE_TUMOR_THRESHOLD, ROI_DILATION

EXPORT_FORMAT = "omkit-export"
# 2: the architecture's options under "model_options" (the model card's name; 1 wrote "model_kw"),
# the post-processing steps, mirroring and the inference mode recorded; 3: dense graphs (the
# "dense" section, inference.runner "dense")
EXPORT_FORMAT_VERSION = 3
INPUT_NAME = "tiles"
# the dense graph's inputs (omkit.export.dense)
REGION_NAME, FLIP_NAME = "region", "flip"


def _omkit_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omkit")
    except PackageNotFoundError:
        return None


def postprocessing_steps(steps: Sequence[tuple[str, object]]) -> list[dict]:
    """``[{"name", "options"}]`` of post-processing ``steps`` (the ``(name, step)`` pairs of
    ``omkit.inference.postprocess.build_postprocessors``, in the order they run): each step's
    public attributes, as its options."""
    return [{"name": name, "options": {k: v for k, v in sorted(vars(step).items()) if not k.startswith("_")}}
            for name, step in steps]


def inference_record(predict_default: str, note: str, runner: str = "tiles") -> dict:
    """What the file's graph stands for: how the runner runs it (``runner``: ``tiles``, or
    ``dense`` for the dense graph), ``omkit predict``'s default mode for the model
    (``tiles``, or ``dense`` for a window-trained model), and whether the two give the
    same labels; ``note`` says why where they differ."""
    return {"runner": runner, "predict_default": predict_default,
            "same_as_predict_default": predict_default == runner, "note": note}


def _dense_section(channels: int, tile_size: Sequence[int], tile_keep: Sequence[int], divisor: int) -> dict:
    return {
        "inputs": {REGION_NAME: [1, channels, "D", "H", "W"], FLIP_NAME: [3]},
        "window": [int(s) for s in tile_size],
        "block": [int(k) for k in tile_keep],
        "offset": list(keep_offset(tile_size, tile_keep)),
        "divisor": int(divisor),
        "region": "per axis of the crop: the blocks (block voxels each, from the crop's first voxel on) that "
                  "touch the brain, k0 to k1; the region starts offset voxels before block k0's start and spans "
                  "(k1 - k0) * block + window voxels, rounded up to a multiple of divisor; it reads zero outside "
                  "the crop",
        "flip": "int64 (3,): 1 flips the region along D, H, W before the network (test-time mirroring); the "
                "logits come back in the region's frame",
        "outputs": "each task's logits (1, K, D, H, W) over the region; a voxel's prediction is kept only in "
                   "the blocks that touch the brain",
    }


@renamed_keywords(keep="tile_keep", stride="tile_stride", batch="tile_batch")
def export_metadata(card: ModelCard, tile_size: Sequence[int], tile_keep: Sequence[int],
                    tile_stride: Sequence[int] | None = None, tile_batch: int = 16, roi_dilation: float = ROI_DILATION,
                    num_tasks: int = 3, architecture: str = "onepass", export_format: str | None = None,
                    postprocessing: Sequence[dict] = (), inference: dict | None = None, divisor: int = 1) -> dict:
    """Everything a runner needs besides the graph: what the input is, how to preprocess,
    where the tiles go (or, for a dense graph (``inference["runner"] == "dense"``), the
    region and its blocks, ``divisor`` the backbone's), how the tasks fuse into labels, the
    post-processing steps (:func:`postprocessing_steps`), mirroring, and how labels are
    written."""
    inference = dict(inference) if inference is not None else inference_record("tiles", "")
    dense = inference["runner"] == "dense"
    channels = input_channels(card.input_features)
    spatial = ["D", "H", "W"] if dense else [int(s) for s in tile_size]
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "export_format": export_format,
        "omkit_version": _omkit_version(),
        "torch_version": torch.__version__,
        "preset": card.preset,
        "width": card.width,
        "model_options": card.model_options,
        "architecture": architecture,  # "onepass" (OM-Net) or "cascade" (MC)
        "input": {
            "name": REGION_NAME if dense else INPUT_NAME,
            "shape": [1 if dense else "batch", channels, *spatial],
            "dtype": "float32",
            "modalities": ["flair", "t1", "t1c", "t2"],
            # omkit.data.features: "mri" = the four modalities; "mri+asymmetry" = those, then each minus its
            # mirror image across the crop's centre along the left-right axis (H for axis-aligned volumes)
            "features": card.input_features,
            "axes": "(batch, modality, D, H, W); D = NIfTI axis 3 (Z, axial), H = axis 1 (X), W = axis 2 (Y)",
            # omkit.data.features.left_right_axis: the mirror's axis, from the case's affine
            "left_right_axis": "the NIfTI voxel axis a maximising |affine[0, a]| / ||affine[:3, a]|| "
                               "(ties: the first), as (D, H, W): NIfTI 0 -> H, 1 -> W, 2 -> D",
        },
        "outputs": {f"task{t + 1}": [1 if dense else "batch", NUM_CLASSES_TASK[t], *spatial]
                    for t in range(num_tasks)},
        "dense": _dense_section(channels, tile_size, tile_keep, divisor) if dense else None,
        "preprocessing": {
            **card.preprocessing,
            "brain_mask": "voxels where any modality is non-zero",
            "zscore": "per modality over the brain mask (float64 mean and population std), zero outside it",
        },
        "tiles": {
            "size": [int(s) for s in tile_size],
            "keep": [int(s) for s in tile_keep],
            "stride": [int(s) for s in (tile_stride if tile_stride is not None else tile_keep)],
            "keep_offset": list(keep_offset(tile_size, tile_keep)),
            "batch": int(tile_batch),
            "placement": "kept centres start at the crop's first voxel and advance by stride; tiles read zero "
                         "outside the crop; only tiles whose kept centre touches the brain are needed",
        },
        "fusion": {
            "classes": {"background": BACKGROUND, "normal": NORMAL, "ncr_net": NCR_NET, "edema": EDEMA,
                        "enhancing": ENHANCING},
            "tumor_classes": list(TUMOR_CLASSES),
            "core_classes": list(CORE_CLASSES),
            "non_tumor_classes": [BACKGROUND, NORMAL],
            "coarse_tumor_threshold": COARSE_TUMOR_THRESHOLD,
            "roi_dilation": float(roi_dilation),
            "rule": "task 1: coarse tumor = sum of tumor-class probabilities > threshold; label = likeliest tumor "
                    "class inside it, likeliest non-tumor class outside; ROI = coarse dilated by a Euclidean ball "
                    "of roi_dilation voxels, within the brain; task 2 labels the ROI; task 3 (1 = enhancing) "
                    "relabels the core classes inside the ROI (enhancing, else ncr_net); outside the brain: "
                    "background",
        },
        "postprocessing": {
            "steps": list(postprocessing),
            "on": "the internal class map of the brain crop (outside the brain: background) and the z-scored "
                  "image crop (4, D, H, W); tumor = every tumor class; the voxel spacing (D, H, W) in mm",
        },
        "mirroring": {
            "default": "none",
            "all": "every flip of the tile along D, H and W (8, the identity first), through the network as one "
                   "batch; each flip's logits flipped back, softmax, the probabilities averaged over the flips "
                   "before the kept centre is reduced to labels (a dense graph: one call per flip, its flip "
                   "input set, the logits already in the region's frame)",
        },
        "inference": inference,
        "label_convention": card.label_convention,
        "label_conventions": {name: {"ncr_net": c.ncr_net, "edema": c.edema, "enhancing": c.enhancing}
                              for name, c in CONVENTIONS.items()},
    }


