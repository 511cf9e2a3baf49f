"""The training configuration. Every default is the paper's (Sec. IV-C; the
authors' released solver), imported from :mod:`omkit.protocol`;
``dataclasses.fields(TrainConfig)`` is the one place the command line reads
defaults from (a flag is its field's name with dashes: ``transfer_core_threshold``
is ``--transfer-core-threshold``). ``config.json`` in a run folder holds the
resolved copy."""
from __future__ import annotations

import importlib.util

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omkit.protocol import (
    BATCH_PER_TASK,
    FAST_TILE_KEEP,
    LR,
    LR_GAMMA,
    LR_STEP_EPOCHS,
    MOMENTUM,
    PATCH_DIVISOR,
    PATCH_SIZE,
    PATCHES_PER_EPOCH,
    STAGE_EPOCHS,
    TRANSFER_CORE_THRESHOLD,
    TRANSFER_TUMOR_THRESHOLD,
    WEIGHT_DECAY,
)
from omkit.data.features import DEFAULT_INPUT_FEATURES, check_input_features
from omkit.data.augment import check_augment_spec
from omkit.data.sampler_specs import parse_spec
from omkit.devices import DEVICE_CHOICES, PRECISIONS, is_valid_device_name

AUGMENT_CPU_BUDGET = ("mirror+rotate(degrees=15,axes=(0,1,2)):0.2+scale(factor=0.15):0.2"
                      "+intensity_scale(factor=0.25):0.15+intensity_shift(offset=0.1):0.15+gamma:0.3"
                      "+noise(std=0.1):0.1+blur:0.2")

# Named bundles of settings; settings given explicitly override a recipe's.
RECIPES: dict[str, dict[str, Any]] = {
    # the dataclass defaults: the paper's protocol (20 epochs of 200k-400k patches per task)
    "paper": {},
    # a budget of minutes on a CPU (``--max-minutes``), measured on the BraTS 2018
    # sample: with the paper's SGD and uniform task-1 sampling, minutes of training
    # leave task 1 calling every voxel normal and the fusion finds no tumor. So:
    # a quarter of the width, small batches, Adam at a constant lr, half of task 1's
    # patches around the tumor, and all three tasks from the first step (as the
    # authors' released solver does) instead of a curriculum the budget would spend
    # before task 3 starts.
    "cpu-budget": {
        "width": 0.25,
        "batch_per_task": 4,
        "stage_epochs": (0, 0, 1000),
        "patches_per_epoch": (200,),
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_step_epochs": 1000,
        "samplers": ("brain:1+dilated_tumor:1", "dilated_tumor", "core"),
        # every patch mirrored on each axis with probability 1/2, and nnU-Net-like odds of a small
        # rotation or zoom and of intensity, gamma, noise and blur changes (omkit.data.augment): on the
        # 4-fold 25-minute study no region worse beyond noise and ET's HD95 better; twelve training
        # cases are too few to go without (docs/RESULTS.md, "Augmentation")
        "augment": AUGMENT_CPU_BUDGET,
    },
}

# cpu-budget against the false tumor a short run leaves in FLAIR-bright normal
# tissue: the image's left-right asymmetry as input, and a quarter of task 2's
# patches on normal tissue as bright as the tumor (tumor_mimic), which task 2 learns
# to veto (docs/RESULTS.md, "The fix kept: the other hemisphere, and tissue that
# mimics tumor"). For budgets of 10 minutes and more on a CPU (about 500 steps):
# with a few hundred steps task 2 learns the veto before the tumor, and the demo's
# 6.5 minutes found almost none.
RECIPES["cpu-budget-precise"] = {
    **RECIPES["cpu-budget"],
    "samplers": ("brain:1+dilated_tumor:1", "dilated_tumor:3+tumor_mimic:1", "core"),
    "input_features": "mri+asymmetry",
    "augment": "",  # as measured (on cases it was not tuned on it did worse than cpu-budget)
}

# cpu-budget trained as dense inference infers (--train-mode windows, omkit.training.windows):
# one 32 x 72 x 72 crop per task and step, its 2 x 2 x 2 blocks of 8 x 24 x 24 supervised,
# each pooled over its 16 x 32 x 32 window, 4 x 8 x 8 voxels of context beyond the windows
# (more context barely brought a crop's features closer to dense ones and costs steps);
# --inference auto then runs dense (docs/RESULTS.md, "Train as you infer").
RECIPES["cpu-budget-windows"] = {
    **RECIPES["cpu-budget"],
    "train_mode": "windows",
    "batch_per_task": 1,
    "augment": "",  # as measured; a rotation's context around a 32 x 72 x 72 crop is not measured
}


# Upper limits of what a run may ask for: each far beyond the paper's and any
# useful run, but short of an allocation failure or an overflow deep inside it,
# so that a slip of the keyboard is a one-line error naming the flag.
from omkit.model_card import MAX_WIDTH  # noqa: E402 (4x the paper's 32-256 feature maps: a model of ~0.2 G parameters)
MAX_PATCH_SIDE = 256  # voxels (BraTS volumes are 155 x 240 x 240)
MAX_BATCH_VOXELS = 2**27  # batch_per_task x voxels of one patch: 2 GiB of float32 input per task and step
MAX_PATCHES_PER_EPOCH = 10**7  # per task (the paper's: 200k-400k); the sampler draws them up front
MAX_SEED = 2**32 - 1  # numpy's seeds
# the optimisers hand lr (Adam: lr / (1 - beta1), 10 lr at the first step) and weight decay to float32
# kernels, whose largest value is 3.4e38: far below that, so a huge value diverges (one line) instead
# of failing to convert inside the first step
MAX_LR = 1e30
MAX_WEIGHT_DECAY = 1e30
MAX_PROCESSES = 256  # --workers, --threads
INT_SETTINGS = ("epochs", "batch_per_task", "lr_step_epochs", "seed", "folds", "fold", "workers", "threads",
                "max_steps", "checkpoint_every", "log_every", "val_every")


def recipe_settings(name: str) -> dict[str, Any]:
    """The settings of recipe ``name``; an unknown name is a one-line error."""
    if name not in RECIPES:
        raise ValueError(f"--recipe: unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def preset_named(name: str):
    """The registered model preset ``name``; an unknown name is a one-line error naming ``--preset``."""
    from omkit.factory import get_preset
    from omkit.registry import UnknownNameError

    try:
        return get_preset(name)
    except UnknownNameError as exc:
        raise ValueError(f"{flag('preset')}: {exc}") from None


def flag(name: str) -> str:
    """The command-line flag of a setting: ``lr_gamma`` -> ``--lr-gamma``."""
    return f"--{name.replace('_', '-')}"


@dataclass
class TrainConfig:
    preset: str = "omnet_cga"
    input: str = ""  # a folder of BraTS case folders
    output: str = ""  # the run folder
    device: str = "auto"
    width: float = 1.0
    # one attention plug-in in every OM-Net head instead of the preset's
    # (create_model(preset, attention=...)); any registered attention
    attention: str | None = None
    model_options: dict = field(default_factory=dict)  # further create_model keyword arguments
    # what the network reads per voxel (omkit.data.features): the paper's four modalities ("mri"),
    # or those and their left-right asymmetry ("mri+asymmetry", an omkit option)
    input_features: str = DEFAULT_INPUT_FEATURES
    # curriculum: epochs of stage 1 (task 1), 2 (tasks 1-2), 3 (tasks 1-3); a
    # preset without curriculum trains its tasks together for their sum
    stage_epochs: tuple = STAGE_EPOCHS
    epochs: int | None = None  # total; overrides the last stage's length
    plateau_tol: float | None = None  # end a stage early when its newest task's loss stalls
    patches_per_epoch: tuple = PATCHES_PER_EPOCH  # per task, over all processes
    batch_per_task: int = BATCH_PER_TASK  # per process
    patch_size: tuple = PATCH_SIZE  # (D, H, W)
    # how the network meets the patches (omkit.training.windows): "patches", each alone through the
    # backbone (the paper's), or "windows", train as dense inference infers: crops with context, the
    # loss over window_blocks blocks of window_block voxels, each pooled over its patch-size window
    train_mode: str = "patches"
    window_block: tuple = FAST_TILE_KEEP
    window_blocks: tuple = (2, 2, 2)
    window_context: tuple = (4, 8, 8)
    # one sampler spec per task (omkit.data.sampling): NAME(KEY=VALUE,...), weighted mixtures NAME:W+NAME:W
    samplers: tuple = ("brain", "dilated_tumor", "core")
    # training-patch augmentation (omkit.data.augment): NAME(KEY=VALUE,...):PROBABILITY joined by '+';
    # empty: none (the paper describes none)
    augment: str = ""
    # online data transfer (Sec. III-B): fractions of tumor / core voxels
    transfer_tumor_threshold: float = TRANSFER_TUMOR_THRESHOLD
    transfer_core_threshold: float = TRANSFER_CORE_THRESHOLD
    optimizer: str = "sgd"  # sgd (the paper's) or adam
    lr: float = LR
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    lr_step_epochs: int = LR_STEP_EPOCHS
    lr_gamma: float = LR_GAMMA
    # fp32, or mixed precision: autocast to bf16, or fp16 with a gradient scaler (CUDA only)
    precision: str = "fp32"
    seed: int = 0
    folds: int | None = None
    fold: int | None = None
    label_convention: str | None = None
    skip_bad_cases: bool = False
    cache_dir: str | None = None
    workers: int = 0
    threads: int | None = None  # torch intra-op threads per process (default: torch's)
    # budgets, totals over the run (all sessions); the CLI does not carry them over on --resume
    max_minutes: float | None = None  # training time, data preparation not counted
    max_steps: int | None = None
    checkpoint_every: int = 500  # steps; also at every epoch end
    log_every: int = 10  # steps per metrics row
    val_every: int | None = None  # steps between validations (omkit.training.validation)
    val_input: str | None = None  # the validation cases (default: the fold's held-out cases)
    tensorboard: bool = False  # TensorBoard event files in RUN/tensorboard (the tensorboard extra)
    progress: bool = True
    recipe: str = "paper"  # which RECIPES entry the unset settings came from (a record; see from_recipe)

    # settings that may change when a run is resumed: they do not change what is computed
    RESUMABLE_OVERRIDES = frozenset(
        {"max_minutes", "max_steps", "workers", "threads", "progress", "checkpoint_every", "log_every", "device",
         "cache_dir", "input", "output", "val_every", "val_input", "tensorboard"}
    )

    def __post_init__(self):
        self.stage_epochs = tuple(int(e) for e in self.stage_epochs)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        for name in ("window_block", "window_blocks", "window_context"):
            setattr(self, name, tuple(getattr(self, name)))
        self.samplers = tuple(self.samplers)
        self.model_options = dict(self.model_options or {})
        ppe = tuple(int(p) for p in (self.patches_per_epoch if isinstance(self.patches_per_epoch, (tuple, list)) else [self.patches_per_epoch]))
        self.patches_per_epoch = ppe * 3 if len(ppe) == 1 else ppe
        self.validate()

    def validate(self) -> None:
        """One-line ``ValueError`` naming the flag of the first bad setting."""
        def bad(name, why):
            raise ValueError(f"{flag(name)}: {why}")

        for name in ("width", "lr", "momentum", "weight_decay", "lr_gamma", "transfer_tumor_threshold",
                     "transfer_core_threshold", "max_minutes", "plateau_tol"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                bad(name, f"must be a number, got {value!r}")
            if value is not None and not math.isfinite(value):
                bad(name, f"must be a finite number, got {value}")
        for name in INT_SETTINGS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                bad(name, f"must be an integer, got {value!r}")
        if len(self.stage_epochs) != 3 or min(self.stage_epochs) < 0 or sum(self.stage_epochs) < 1:
            bad("stage_epochs", f"needs three non-negative epoch counts a,b,c with a positive sum, got {self.stage_epochs}")
        if self.epochs is not None and self.epochs < 1:
            bad("epochs", f"must be >= 1, got {self.epochs}")
        if len(self.patches_per_epoch) != 3 or min(self.patches_per_epoch) < 1:
            bad("patches_per_epoch", f"needs one or three positive counts, got {self.patches_per_epoch}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            bad("patch_size", f"needs three positive sizes D,H,W, got {self.patch_size}")
        if any(p % PATCH_DIVISOR for p in self.patch_size):
            bad("patch_size", f"each size must be divisible by {PATCH_DIVISOR} (three 2x poolings), "
                              f"got {self.patch_size}")
        self._check_windows(bad)
        self._check_limits(bad)
        if len(self.samplers) != 3:
            bad("samplers", f"needs one sampler per task, got {self.samplers}")
        for spec in self.samplers:
            parse_spec(spec)  # the grammar; names and options are checked when the samplers are built
        check_augment_spec(self.augment)  # likewise: the transforms are built with the samplers
        if self.batch_per_task < 1:
            bad("batch_per_task", f"must be >= 1, got {self.batch_per_task}")
        if self.width <= 0:
            bad("width", f"must be > 0, got {self.width}")
        if self.attention is not None and (not isinstance(self.attention, str) or not self.attention.strip()):
            bad("attention", f"must be the name of an attention plug-in, got {self.attention!r}")
        check_input_features(self.input_features, flag("input_features"))
        own_option = {"width": "width", "attention": "attention", "in_channels": "input_features"}
        if any(key in self.model_options for key in own_option):
            key = next(own_option[key] for key in own_option if key in self.model_options)
            bad("model_options", f"{key} has its own option, {flag(key)}")
        for name in ("transfer_tumor_threshold", "transfer_core_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, f"must be a fraction in [0, 1], got {getattr(self, name)}")
        if self.optimizer not in ("sgd", "adam"):
            bad("optimizer", f"must be sgd or adam, got {self.optimizer!r}")
        if self.lr <= 0:
            bad("lr", f"must be > 0, got {self.lr}")
        if self.lr_step_epochs < 1:
            bad("lr_step_epochs", f"must be >= 1, got {self.lr_step_epochs}")
        if not 0 < self.lr_gamma <= 1:
            bad("lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")
        if self.recipe not in RECIPES:
            bad("recipe", f"unknown recipe {self.recipe!r}; known: {', '.join(RECIPES)}")
        if (self.folds is None) != (self.fold is None):
            bad("folds" if self.folds is None else "fold", "--folds K and --fold k go together")
        if self.max_minutes is not None and self.max_minutes <= 0:
            bad("max_minutes", f"must be > 0, got {self.max_minutes}")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", f"must be >= 1, got {self.max_steps}")
        if self.threads is not None and self.threads < 1:
            bad("threads", f"must be >= 1, got {self.threads}")
        if self.workers < 0:
            bad("workers", f"must be >= 0, got {self.workers}")
        if self.val_every is not None and self.val_every < 1:
            bad("val_every", f"must be >= 1, got {self.val_every}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            bad("tensorboard", "needs the tensorboard package: pip install 'omkit[tensorboard]'")
        if self.checkpoint_every < 1 or self.log_every < 1:
            bad("checkpoint_every" if self.checkpoint_every < 1 else "log_every", "must be >= 1")
        if not is_valid_device_name(self.device):
            bad("device", f"must be {DEVICE_CHOICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and self.device.strip().lower() == "cpu":
            bad("precision", "fp16 (float16 mixed precision) needs --device cuda; on a CPU use bf16")

    def _check_windows(self, bad) -> None:
        from .windows import TRAIN_MODES, WindowGrid

        if self.train_mode not in TRAIN_MODES:
            bad("train_mode", f"must be one of {', '.join(TRAIN_MODES)}, got {self.train_mode!r}")
        for name in ("window_block", "window_blocks", "window_context"):
            value = getattr(self, name)
            if len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                bad(name, f"needs three whole numbers D,H,W, got {list(value)}")
        if self.train_mode != "windows":
            return  # the window grid is used in windows mode only
        try:
            grid = WindowGrid(self.patch_size, self.window_block, self.window_blocks, self.window_context)
        except ValueError as exc:
            bad("window_block", str(exc))
        if max(grid.crop) > MAX_PATCH_SIDE:
            bad("window_blocks", f"a crop of {'x'.join(map(str, grid.crop))} voxels has a side over "
                                 f"{MAX_PATCH_SIDE}; lower {flag('window_blocks')} or {flag('window_context')}")

    def crop_size(self) -> tuple[int, ...]:
        """What one training sample cuts out of a case: the patch, or in windows mode the crop."""
        if self.train_mode != "windows":
            return tuple(self.patch_size)
        from .windows import grid_of

        return grid_of(self).crop

    def _check_limits(self, bad) -> None:
        if self.width > MAX_WIDTH:
            bad("width", f"must be at most {MAX_WIDTH:g} ({MAX_WIDTH:g}x the paper's feature maps), got {self.width:g}")
        if any(p > MAX_PATCH_SIDE for p in self.patch_size):
            bad("patch_size", f"each side must be at most {MAX_PATCH_SIDE} voxels, got {self.patch_size}")
        voxels = self.batch_per_task * math.prod(self.crop_size())
        if voxels > MAX_BATCH_VOXELS:
            bad("batch_per_task", f"{self.batch_per_task} patches of {'x'.join(map(str, self.crop_size()))} are "
                                  f"{voxels} voxels per task and step, more than {MAX_BATCH_VOXELS}; lower "
                                  f"{flag('batch_per_task')} or {flag('patch_size')}")
        if max(self.patches_per_epoch, default=0) > MAX_PATCHES_PER_EPOCH:
            bad("patches_per_epoch", f"must be at most {MAX_PATCHES_PER_EPOCH} per task (use more epochs), "
                                     f"got {max(self.patches_per_epoch)}")
        if not 0 <= self.seed <= MAX_SEED:
            bad("seed", f"must be in 0..{MAX_SEED}, got {self.seed}")
        if not 0 <= self.momentum < 1:
            bad("momentum", f"must be in [0, 1), got {self.momentum:g}")
        if not 0 <= self.weight_decay <= MAX_WEIGHT_DECAY:
            bad("weight_decay", f"must be in [0, {MAX_WEIGHT_DECAY:g}], got {self.weight_decay:g}")
        if self.lr > MAX_LR:
            bad("lr", f"must be at most {MAX_LR:g} (the optimisers step in float32), got {self.lr:g}")
        if self.plateau_tol is not None and self.plateau_tol < 0:
            bad("plateau_tol", f"must be >= 0, got {self.plateau_tol:g}")
        if self.folds is not None and self.folds < 2:
            bad("folds", f"must be at least 2, got {self.folds}")
        if self.folds is not None and self.fold is not None and not 0 <= self.fold < self.folds:
            bad("fold", f"must be in 0..{self.folds - 1} for {flag('folds')} {self.folds}, got {self.fold}")
        for name in ("workers", "threads"):
            if (getattr(self, name) or 0) > MAX_PROCESSES:
                bad(name, f"must be at most {MAX_PROCESSES}, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default (the paper's), read from the dataclass fields."""
        out = {}
        for f in dataclasses.fields(cls):
            out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if "amp" in d and "amp" not in names:  # config.json of runs made before --precision replaced --amp
            amp = d["amp"]
            d = {k: v for k, v in d.items() if k != "amp"}
            d.setdefault("precision", "fp16" if amp else "fp32")
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_recipe(cls, recipe: str, settings: dict[str, Any]) -> "TrainConfig":
        """The recipe's settings, overridden by ``settings`` (explicitly given ones)."""
        return cls.from_dict({**recipe_settings(recipe), **settings, "recipe": recipe})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:  # JSON: nothing in it can run code; anything malformed is one line naming the file
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8"))["config"])
        except (OSError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable omkit run configuration ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from None

    def differences(self, other: "TrainConfig") -> list[str]:
        """Names of the settings that differ and may not change on resume."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if a[k] != b[k] and k not in self.RESUMABLE_OVERRIDES]
