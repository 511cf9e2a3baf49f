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
from omkit.data.features import INPUT_FEATURES

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

def add_tile_arguments(parser, roi_dilation: bool = True, dense: bool = False, **defaults) -> None:
    """``--tile-size``, ``--tile-keep``, ``--tile-stride``, ``--tile-batch`` (and
    ``--roi-dilation`` for commands that fuse the tasks; ``--inference``,
    ``--dense-max-voxels``, ``--dense-halo`` for commands that predict cases with
    ``dense``); ``defaults`` (TileSettings fields) override the paper's."""
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
        max_voxels = dense_fields["max_voxels"]
        g.add_argument("--dense-max-voxels", type=int, default=max_voxels, metavar="N",
                       help="dense: the most voxels per backbone call; a larger region goes through in slabs along "
                            "D (default " + ("none: the whole region in one call" if max_voxels is None else
                                             str(max_voxels)) + ")")
        g.add_argument("--dense-halo", type=int, default=dense_fields["halo"], metavar="VOXELS",
                       help="dense: backbone context on each side of a slab, rounded up to a multiple of 8 "
                            f"(default {dense_fields['halo']})")
    # the paper's unless the command chooses by inference mode (dense: a default of None)
    size_default = "the paper's " + _format_default(PATCH_SIZE)
    keep_default = "the paper's " + _format_default(TILE_KEEP)
    if dense:
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
    ``--inference``, ``--dense-max-voxels`` and ``--dense-halo`` give."""
    from omkit.inference import DenseSettings

    try:
        dense = DenseSettings(halo=args.dense_halo, max_voxels=args.dense_max_voxels)
    except ValueError as exc:
        raise CLIError(f"--dense-halo/--dense-max-voxels: {exc}") from None
    if args.inference == "dense" and args.tile_stride is not None and tuple(args.tile_stride) != tuple(args.tile_keep):
        raise CLIError(f"--inference dense needs --tile-stride equal to --tile-keep, got "
                       f"{_format_default(args.tile_stride)} and {_format_default(args.tile_keep)}")
    return {"inference": args.inference, "dense": dense}


# -- training settings ---------------------------------------------------------------------

# (group, TrainConfig field, argparse keywords, help without the default); the
# flag is the field with dashes. Every default is None: a command can tell
# what was given (a resumed run refuses changes, a recipe fills the rest).
_TRAINING_OPTIONS: list[tuple[str, str, dict, str]] = [
    ("model", "preset", {}, "model preset (omkit models lists them)"),
    ("model", "width", {"type": float}, "channel width multiplier (1.0 = the paper's 32-256 maps)"),
    ("model", "attention", {"metavar": "NAME"},
     "attention plug-in in every OM-Net head (omkit plugins lists them), without writing a preset"),
    ("model", "input_features", {"choices": list(INPUT_FEATURES), "metavar": "SET"},
     "what the network reads: mri (the paper's four modalities) or mri+asymmetry (also each modality minus "
     "its left-right mirror image, an omkit option)"),
    ("model", "model_options", {"type": _key_value, "nargs": "+", "action": "extend", "metavar": "KEY=VALUE"},
     "further keyword arguments of the model (each VALUE a Python literal, else a string)"),
    ("schedule", "stage_epochs", {"type": int_list("--stage-epochs"), "metavar": "A,B,C"},
     "epochs of curriculum stages 1-3; presets without curriculum train A+B+C epochs"),
    ("schedule", "epochs", {"type": int}, "total epochs (lengthens or shortens the last stage)"),
    ("schedule", "plateau_tol", {"type": float},
     "end stage 1 or 2 early when its newest task's epoch loss improves by less than this fraction"),
    ("schedule", "transfer_tumor_threshold", {"type": float, "metavar": "FRACTION"},
     "online data transfer: a task-1 patch with at least this fraction of tumor also trains task 2"),
    ("schedule", "transfer_core_threshold", {"type": float, "metavar": "FRACTION"},
     "online data transfer: a task-1/2 patch with at least this fraction of core also trains task 3"),
    ("run", "max_minutes", {"type": float},
     "stop (with a checkpoint and model.pt) once the run's total training time reaches this "
     "(data preparation not counted); not carried over by --resume"),
    ("run", "max_steps", {"type": int}, "stop once the run has made this many steps in total"),
    ("patches", "patch_size", {"type": int_list("--patch-size"), "metavar": "D,H,W"},
     "patch size in (axial, H, W) order"),
    ("patches", "patches_per_epoch", {"type": int_list("--patches-per-epoch", (1, 3)), "metavar": "N[,N2,N3]"},
     "patches per epoch, one count for all tasks or one per task"),
    ("patches", "batch_per_task", {"type": int}, "patches (windows mode: crops) per task per step and process"),
    ("patches", "train_mode", {"choices": ["patches", "windows"]},
     "patches: each patch alone through the backbone (the paper's); windows: train as dense inference infers "
     "(crops with context, the loss over a grid of windows, attention pooled per window)"),
    ("patches", "window_block", {"type": int_list("--window-block"), "metavar": "D,H,W"},
     "windows mode: the kept centre of each window (the dense block)"),
    ("patches", "window_blocks", {"type": int_list("--window-blocks"), "metavar": "D,H,W"},
     "windows mode: supervised blocks per crop"),
    ("patches", "window_context", {"type": int_list("--window-context"), "metavar": "D,H,W"},
     "windows mode: voxels of image context beyond the outermost windows"),
    ("patches", "samplers", {"type": _sampler_specs, "metavar": "S1,S2,S3"},
     "patch sampler per task (omkit plugins lists them); options in parentheses, weighted mixtures as "
     "NAME:W+NAME:W, e.g. brain:1+dilated_tumor(radius=3):1"),
    ("patches", "augment", {"metavar": "SPEC"},
     "training-patch augmentation (omkit plugins lists the transforms): NAME(KEY=VALUE,...):PROBABILITY "
     "joined by '+', e.g. mirror:0.5+rotate(degrees=15):0.2+gamma:0.3; '' for none"),
    ("optimiser", "optimizer", {"choices": ("sgd", "adam")},
     "sgd (the paper's) or adam (converges in fewer steps: for budgets of minutes)"),
    ("optimiser", "lr", {"type": float}, "initial learning rate"),
    ("optimiser", "momentum", {"type": float}, "SGD momentum"),
    ("optimiser", "weight_decay", {"type": float}, "weight decay"),
    ("optimiser", "lr_step_epochs", {"type": int}, "multiply the learning rate by --lr-gamma every this many epochs"),
    ("optimiser", "lr_gamma", {"type": float}, "learning-rate decay factor"),
    ("data", "folds", {"type": int}, "split the cases into K folds (with --fold)"),
    ("data", "fold", {"type": fold_choice, "metavar": "k|all"},
     "train on every fold but this one (0-based); all: every fold in turn, into RUN/fold_k"),
    ("data", "label_convention", {"choices": ("2018", "2023", "2024")},
     "label values of the seg files: 2018, 2023, or 2024 post-treatment (4 = resection cavity, read as normal "
     "brain) (default: from the file naming; 2024 when a 2023-named seg holds 3 and 4)"),
    ("data", "skip_bad_cases", {"action": "store_true", "default": None},
     "warn about and leave out cases that fail validation instead of stopping"),
    ("data", "cache_dir", {}, "preprocessed-case cache (default $OMKIT_CACHE_DIR or ~/.cache/omkit/preprocessed)"),
    ("data", "workers", {"type": int}, "background processes preparing batches"),
    ("data", "threads", {"type": int}, "CPU threads per process for torch (default: torch's choice)"),
    ("run", "seed", {"type": int}, "seed of weights and patch sampling"),
    ("run", "precision", {"choices": PRECISIONS}, PRECISION_HELP),
    ("data", "checkpoint_every", {"type": int}, "steps between checkpoints (also at every epoch end)"),
    ("data", "log_every", {"type": int}, "steps per metrics row"),
]
_GROUP_TITLES = {
    "run": "budget and run", "model": "model", "schedule": "curriculum and data transfer", "patches": "patches",
    "optimiser": "optimiser", "data": "data, reproducibility and bookkeeping",
}
TRAINING_FIELDS = tuple(name for _, name, _, _ in _TRAINING_OPTIONS)


def training_defaults(recipe: str | None = None) -> dict[str, Any]:
    """The value each training setting takes when not given: TrainConfig's
    defaults (the paper's), overridden by ``recipe``'s settings."""
    from omkit.training import TrainConfig
    from omkit.training.config import recipe_settings

    defaults = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            defaults[f.name] = f.default_factory()  # type: ignore[misc]
    if recipe is not None:
        defaults.update(recipe_settings(recipe))
    return defaults


def add_training_arguments(parser, groups=tuple(_GROUP_TITLES), recipe: str | None = "paper",
                           skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> None:
    """The training settings of ``groups`` as options. Their argparse default
    is None (so a command can tell what was given), except for the command's
    own ``defaults``; the help shows those, else the value ``recipe`` gives."""
    own = dict(defaults or {})
    defaults = {**training_defaults(recipe), **own}
    for group in groups:
        g = parser.add_argument_group(_GROUP_TITLES[group])
        for option_group, name, kwargs, text in _TRAINING_OPTIONS:
            if option_group != group or name in skip:
                continue
            default = defaults.get(name)
            shown = "" if default in (None, {}, False) or kwargs.get("action") == "store_true" else \
                f" (default {_format_default(default)})"
            if kwargs.get("type") is float:  # NaN and infinities refused when the command line is parsed
                kwargs = {**kwargs, "type": finite_float(f"--{name.replace('_', '-')}")}
            g.add_argument(f"--{name.replace('_', '-')}", help=text + shown, **{"default": own.get(name), **kwargs})


def training_settings(args) -> dict[str, Any]:
    """The training settings given on the command line, as TrainConfig fields."""
    given = {}
    for name in TRAINING_FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "model_options":
            value = dict(value)
        given[name] = value
    return given
