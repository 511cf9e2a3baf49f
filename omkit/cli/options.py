"""Command-line options shared by several commands, defined once so that one
setting has one flag name, one default and one help text everywhere.

Vocabulary: ``-i/--input`` is what a command reads (case folders, or label
maps for ``evaluate``), ``-o/--output`` what it writes, ``-m/--model`` a model
file; ``--device`` is ``auto`` by default; a training setting's flag is its
:class:`omkit.training.TrainConfig` field with dashes, and its default is read
from the dataclass (or the recipe a command starts from), never restated;
tile options are ``--tile-<field>`` of :class:`omkit.inference.TileSettings`,
dense-inference options ``--dense-<field>`` of :class:`omkit.inference.DenseSettings`;
``--roi-dilation`` is task 2's ROI at inference, while the training sampler's
dilation is an option of its spec (``dilated_tumor(radius=5)``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable

from omkit.cli import CLIError
from omkit.devices import DEVICE_CHOICES, PRECISIONS

PRECISION_HELP = ("fp32, or mixed precision: the networks run under autocast to bf16 (bfloat16) or fp16 (float16, "
                  "CUDA only; training adds a gradient scaler); the fused ops accumulate in float32")


# -- value parsers ------------------------------------------------------------------------

def int_list(flag: str, counts: tuple[int, ...] = (3,)) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated integers, as many as one of ``counts``."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects comma-separated integers, got {text!r}") from None
        if len(values) not in counts:
            raise argparse.ArgumentTypeError(f"{flag} expects {' or '.join(map(str, counts))} values, got {text!r}")
        return values

    return parse


ALL_FOLDS = "all"


def fold_choice(text: str):
    """An argparse type: a fold number, or ``all``."""
    if text.strip().lower() == ALL_FOLDS:
        return ALL_FOLDS
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number or {ALL_FOLDS}, got {text!r}") from None


def finite_float(flag: str, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number (NaN and infinities refused when the
    command line is parsed), within ``[minimum, maximum]`` when given."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number, got {text!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            low = "" if minimum is None else f"{minimum:g} <= "
            high = "" if maximum is None else f" <= {maximum:g}"
            raise argparse.ArgumentTypeError(f"{flag} must be {low}{flag.lstrip('-')}{high}, got {text!r}")
        return value

    return parse


def _key_value(text: str) -> tuple[str, Any]:
    from omkit.data.sampler_specs import literal_value

    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"--model-options expects KEY=VALUE, got {text!r}")
    return key.strip(), literal_value(value.strip())  # read as sampler options are


def _sampler_specs(text: str) -> tuple[str, str, str]:
    from omkit.data.sampler_specs import split_task_specs

    try:
        return split_task_specs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _format_default(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- device, progress, post-processing ----------------------------------------------------

def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto",
                        help=f"{DEVICE_CHOICES} (default auto: CUDA when available); under torchrun each process "
                             "uses its local GPU")


def add_precision_argument(parser) -> None:
    """``--precision`` for inference (training has it among its TrainConfig options)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP + " (default fp32)")


def add_postprocess_arguments(parser) -> None:
    g = parser.add_argument_group("post-processing (the paper's two steps; omkit plugins lists the registered ones)")
    g.add_argument("--no-postprocess", action="store_true", help="skip every post-processing step")
    g.add_argument("--enable-step", action="append", default=[], metavar="NAME",
                   help="also run this registered post-processing step (one not on by default); repeatable")
    g.add_argument("--disable-step", action="append", default=[], metavar="NAME",
                   help="skip one post-processing step; repeatable")
    g.add_argument("--step-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="an option of a post-processing step, e.g. remove_small_components.max_voxels=500 "
                        "(VALUE read as JSON where it parses); repeatable")


def step_selection(args) -> dict:
    """``--enable-step``, ``--disable-step`` and ``--step-option`` as the keywords of
    ``omkit.inference.build_postprocessors`` (and ``AblationConfig``)."""
    from omkit.inference.postprocess import parse_step_options

    try:
        options = parse_step_options(args.step_option)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return {"enable_steps": list(args.enable_step), "disable_steps": list(args.disable_step), "step_options": options}


def postprocess_steps(args) -> list:
    """The post-processing steps ``--no-postprocess``, ``--enable-step``, ``--disable-step``
    and ``--step-option`` ask for."""
    from omkit.inference import build_postprocessors

    return [] if args.no_postprocess else build_postprocessors(**step_selection(args))


# -- test-time mirroring ------------------------------------------------------------------

def add_tta_argument(parser) -> None:
    """``--tta [AXES]``: test-time mirroring (:mod:`omkit.inference.tta`)."""
    parser.add_argument("--tta", nargs="?", const="all", default=None, metavar="AXES",
                        help="test-time mirroring: average the probabilities of every flip of each tile along AXES "
                             "(D,H,W; alone: all three, 8 flips, about 8 times the network time); default: none")


def tta_setting(args):
    """The ``tta`` of :class:`omkit.inference.SegmentationPredictor` that ``--tta`` gives."""
    from omkit.inference import mirror_flips

    try:
        mirror_flips(args.tta)
    except ValueError as exc:
        raise CLIError(f"--tta: {exc}") from None
    return args.tta


# -- inference tiles ----------------------------------------------------------------------

# far beyond the paper's 16 x 32 x 32 tiles, short of an allocation failure deep inside a case
MAX_TILE_SIDE = 512
MAX_TILE_BATCH_VOXELS = 2**27

def add_tile_arguments(parser, roi_dilation: bool = True, dense: bool = False, mode_defaults: bool = False,
                       **defaults) -> None:
    """``--tile-size``, ``--tile-keep``, ``--tile-stride``, ``--tile-batch`` (and
    ``--roi-dilation`` for commands that fuse the tasks; ``--inference``,
    ``--dense-max-voxels``, ``--dense-halo`` for commands that predict cases with
    ``dense``; with ``dense`` or ``mode_defaults`` the help says the defaults that depend on
    the inference mode); ``defaults`` (TileSettings fields) override the paper's."""
    from omkit.inference import DenseSettings, TileSettings
    from omkit.inference.predictor import DEFAULT_INFERENCE, INFERENCE_MODES
    from omkit.protocol import FAST_TILE_KEEP, PATCH_SIZE, ROI_DILATION, TILE_KEEP

    fields = {f.name: f.default for f in dataclasses.fields(TileSettings)}
    fields.update(defaults)
    title = "overlap-tile inference (sizes in D,H,W = axial,X,Y order)"
    if dense:
        title = "inference: overlap tiles, or dense with the tiles' windows (sizes in D,H,W = axial,X,Y order)"
    g = parser.add_argument_group(title)
    if dense:
        dense_fields = {f.name: f.default for f in dataclasses.fields(DenseSettings)}
        g.add_argument("--inference", choices=INFERENCE_MODES, default=DEFAULT_INFERENCE,
                       help="dense: the backbone once per voxel, each kept centre's attention pooled over its tile "
                            "(needs --tile-stride equal to --tile-keep; OM-Net and MC models with plain, SE or CGA "
                            "heads); tiles: predict tile by tile, keeping each tile's centre; auto: dense for models "
                            "trained with --train-mode windows, else tiles keeping "
                            f"{_format_default(FAST_TILE_KEEP)} (default {DEFAULT_INFERENCE}; it says which and why)")
        g.add_argument("--max-memory", default=None, metavar="SIZE",
                       help="dense: the most memory the process may hold (CPU: resident memory; CUDA: device "
                            "memory), e.g. 2G or 1500M; the full-resolution layers then run in slabs along D with "
                            "the same labels (default: the memory available now)")
        max_voxels = dense_fields["max_voxels"]
        g.add_argument("--dense-max-voxels", type=int, default=max_voxels, metavar="N",
                       help="dense: the most voxels per backbone call; a larger region goes through in slabs along "
                            "D, each with --dense-halo voxels of context: close to, not exactly, the whole region's "
                            "values (default " + ("none" if max_voxels is None else str(max_voxels)) + ")")
        g.add_argument("--dense-halo", type=int, default=dense_fields["halo"], metavar="VOXELS",
                       help="dense: backbone context on each side of a slab, rounded up to a multiple of 8 "
                            f"(default {dense_fields['halo']})")
    # the paper's unless the command chooses by inference mode (dense: a default of None)
    size_default = "the paper's " + _format_default(PATCH_SIZE)
    keep_default = "the paper's " + _format_default(TILE_KEEP)
    if dense or mode_defaults:
        size_default += "; dense on a model trained with --train-mode windows: its training window"
        keep_default += ("; auto on a model trained on patches: " + _format_default(FAST_TILE_KEEP)
                         + "; dense on a model trained with --train-mode windows: its training block")
    g.add_argument("--tile-size", type=int_list("--tile-size"), default=fields["size"], metavar="D,H,W",
                   help=f"tile size; each side divisible by 8 (default {size_default})")
    g.add_argument("--tile-keep", type=int_list("--tile-keep"), default=fields["keep"], metavar="D,H,W",
                   help=f"centre of each tile whose prediction is kept (default {keep_default})")
    g.add_argument("--tile-stride", type=int_list("--tile-stride"), default=fields["stride"], metavar="D,H,W",
                   help="distance between tiles, at most --tile-keep (default: --tile-keep, every voxel once)")
    g.add_argument("--tile-batch", type=int, default=fields["batch"], metavar="N",
                   help=f"tiles per network call (default {fields['batch']})")
    if not roi_dilation:
        return
    g.add_argument("--roi-dilation", type=finite_float("--roi-dilation", 0, 1000), default=ROI_DILATION, metavar="VOXELS",
                   help="task 2's ROI: task 1's coarse tumor mask dilated by this many voxels "
                        f"(default {ROI_DILATION:g})")


def tile_settings(args, resolve: bool = False):
    """The :class:`omkit.inference.TileSettings` the tile options describe: size and keep
    None where not given (the predictor chooses them by inference mode), or with
    ``resolve`` the paper's (commands that run tiles only)."""
    from omkit.inference import TileSettings
    from omkit.protocol import PATCH_DIVISOR, PATCH_SIZE, TILE_KEEP

    if resolve or args.tile_stride is not None:
        args.tile_size = args.tile_size if args.tile_size is not None else PATCH_SIZE
        args.tile_keep = args.tile_keep if args.tile_keep is not None else TILE_KEEP
    if args.tile_size is None:
        return _tiles(args, TileSettings)
    if any(s % PATCH_DIVISOR or s < PATCH_DIVISOR for s in args.tile_size):
        raise CLIError(f"--tile-size: each side must be a positive multiple of {PATCH_DIVISOR} (three 2x poolings), "
                       f"got {_format_default(args.tile_size)}")
    if max(args.tile_size) > MAX_TILE_SIDE:
        raise CLIError(f"--tile-size: each side must be at most {MAX_TILE_SIDE} voxels, got {_format_default(args.tile_size)}")
    if args.tile_batch > 0 and args.tile_batch * math.prod(args.tile_size) > MAX_TILE_BATCH_VOXELS:
        raise CLIError(f"--tile-batch {args.tile_batch} tiles of {'x'.join(map(str, args.tile_size))} are more than "
                       f"{MAX_TILE_BATCH_VOXELS} voxels per network call; lower --tile-batch or --tile-size")
    return _tiles(args, TileSettings)


def _tiles(args, settings):
    try:
        return settings(size=args.tile_size, keep=args.tile_keep, stride=args.tile_stride, batch=args.tile_batch)
    except ValueError as exc:
        raise CLIError(f"--tile-size/--tile-keep/--tile-stride/--tile-batch: {exc}") from None


def inference_settings(args) -> dict:
    """``inference`` and ``dense`` of :class:`omkit.inference.SegmentationPredictor` that
    ``--inference``, ``--max-memory``, ``--dense-max-voxels`` and ``--dense-halo`` give."""
    from omkit.inference import DenseSettings
    from omkit.inference.memory import parse_size

    try:
        max_memory = None if args.max_memory is None else parse_size(args.max_memory)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        dense = DenseSettings(halo=args.dense_halo, max_voxels=args.dense_max_voxels, max_memory=max_memory)
    except ValueError as exc:
        raise CLIError(f"--dense-halo/--dense-max-voxels: {exc}") from None
    if args.inference == "dense" and args.tile_stride is not None and tuple(args.tile_stride) != tuple(args.tile_keep):
        raise CLIError(f"--inference dense needs --tile-stride equal to --tile-keep, got "
                       f"{_format_default(args.tile_stride)} and {_format_default(args.tile_keep)}")
    return {"inference": args.inference, "dense": dense}
