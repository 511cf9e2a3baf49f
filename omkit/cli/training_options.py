"""The training settings as command-line options, one table: every option of ``omkit train``
(and the training groups of ``omkit demo`` / ``omkit ablation``) is a ``TrainConfig`` field
with dashes, its default read from the dataclass or the recipe a command starts from."""
from __future__ import annotations

import dataclasses
from typing import Any

from omkit.cli.options import (PRECISION_HELP, _format_default, _key_value, _sampler_specs, finite_float, fold_choice,
                               int_list)
from omkit.data.features import INPUT_FEATURES
from omkit.devices import PRECISIONS

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
    ("run", "val_every", {"type": int, "metavar": "N"},
     "every N steps (and at the end) score the validation cases (Dice WT/TC/ET into metrics.csv and "
     "validation.csv) and keep the best model as best.pt"),
    ("run", "val_input", {"metavar": "DIR"},
     "the validation cases (a folder of BraTS case folders; default: the fold's held-out cases)"),
    ("run", "tensorboard", {"action": "store_true", "default": None},
     "also write TensorBoard event files into RUN/tensorboard (pip install 'omkit[tensorboard]')"),
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
