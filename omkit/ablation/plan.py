"""The ablation's plan: the study's configuration, the rows and the splits every row
shares, and the predictor a study scores with."""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..protocol import ROI_DILATION


DEFAULT_ROWS = ("mc1", "mc2", "mc3", "omnet0", "omnetd", "omnet", "omnet_se", "omnet_cga",
                "omnet_cga_minus", "omnet_cga_t", "omnet_cga_n")
ENSEMBLE_ROW = "omnet_cga*"
PAPER_VAL_CASES = 25


@dataclass
class AblationConfig:
    input: str
    output: str
    rows: Sequence[str] = DEFAULT_ROWS
    folds: int | None = None  # cross-validation; None: hold-out of val_cases
    val_cases: int = PAPER_VAL_CASES
    ensemble: int | None = None  # K-fold ensemble row of omnet_cga (hold-out only)
    postprocess: bool = True  # also score the post-processed maps (+p rows)
    # post-processing of the +p rows (omkit.inference.build_postprocessors): steps besides the
    # default ones, steps left out, options per step
    enable_steps: Sequence[str] = ()
    disable_steps: Sequence[str] = ()
    step_options: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    # the training budget, the same for every row (omkit.training.TrainConfig fields)
    train: dict = field(default_factory=dict)
    # overlap-tile settings (omkit.inference.TileSettings fields)
    tiles: dict = field(default_factory=dict)
    roi_dilation: float = ROI_DILATION
    # "auto" (dense for models trained window-consistently, else tiles), "dense" or "tiles"
    # (omkit.inference.SegmentationPredictor);
    # dense: omkit.inference.DenseSettings fields
    inference: str = "auto"
    dense: dict = field(default_factory=dict)
    label_convention: str | None = None
    # also score with a challenge's rules (omkit evaluate --challenge names): ablation_challenge.csv
    challenge: str | None = None

    def __post_init__(self):
        from ..factory import list_presets

        self.rows = tuple(self.rows)
        self.enable_steps, self.disable_steps = tuple(self.enable_steps), tuple(self.disable_steps)
        unknown = [r for r in self.rows if r not in list_presets()]
        if unknown:
            raise ValueError(f"--rows: unknown preset(s) {', '.join(unknown)}; available: {', '.join(list_presets())}")
        if self.folds is not None and self.folds < 2:
            raise ValueError(f"--folds must be at least 2, got {self.folds}")
        if self.ensemble is not None:
            if self.folds is not None:
                raise ValueError("--ensemble needs the hold-out protocol: drop --folds")
            if self.ensemble < 2:
                raise ValueError(f"--ensemble must be at least 2 folds, got {self.ensemble}")
        if self.folds is None and self.val_cases < 1:
            raise ValueError(f"--val-cases must be >= 1, got {self.val_cases}")
        if self.inference not in ("auto", "tiles", "dense"):
            raise ValueError(f"--inference must be auto, tiles or dense, got {self.inference!r}")
        from ..inference import DenseSettings

        self.dense = asdict(DenseSettings(**self.dense))  # checked before any training
        if self.challenge is not None:
            from ..challenge import challenge_scorer

            challenge_scorer(self.challenge)  # an unknown name or a missing package, before any training


@dataclass
class Split:
    name: str  # "fold0", ... or "holdout"
    train: list[Path]
    held_out: list[Path]
    train_data: str  # what TrainConfig.input gets
    train_folds: tuple[int, int] | None  # (K, k) handed to TrainConfig, or None


def plan_splits(config: AblationConfig) -> list[Split]:
    """The same splits for every row: k-fold over all cases, or one hold-out
    whose training cases are linked into ``OUT/splits/train`` so that training
    reads exactly them."""
    from ..data import find_cases
    from ..data.splits import kfold_split

    cases = sorted(find_cases(config.input), key=str)
    if config.folds is not None:
        splits = []
        for k in range(config.folds):
            train, held = kfold_split(cases, config.folds, k, seed=0)
            splits.append(Split(f"fold{k}", train, held, config.input, (config.folds, k)))
        return splits
    if len(cases) <= config.val_cases:
        raise ValueError(
            f"--val-cases {config.val_cases} leaves no training case among the {len(cases)} in {config.input}; "
            "lower it or use --folds"
        )
    order = list(range(len(cases)))
    random.Random(config.seed).shuffle(order)
    held = sorted((cases[i] for i in order[: config.val_cases]), key=str)
    train = sorted((cases[i] for i in order[config.val_cases:]), key=str)
    train_dir = Path(config.output) / "splits" / "train"
    _link_cases(train, train_dir)
    return [Split("holdout", train, held, str(train_dir), None)]


def _link_cases(cases: Sequence[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {c.name: c.resolve() for c in cases}
    for entry in folder.iterdir():
        if entry.name not in wanted or not entry.is_symlink() or entry.resolve() != wanted[entry.name]:
            entry.unlink()
    for name, target in wanted.items():
        link = folder / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)


# -- one row on one split -------------------------------------------------------------

def row_folder(row: str) -> str:
    """The folder name of ``row`` under a study's ``runs/`` and ``predictions/``."""
    return row.replace("*", "_ensemble")


def load_config(study: str | Path) -> AblationConfig:
    """The :class:`AblationConfig` a study folder was run with (its JSON ``ablation_config.json``)."""
    path = Path(study) / "ablation_config.json"
    if not path.is_file():
        raise ValueError(f"{path}: not a study folder (no ablation_config.json)")
    return AblationConfig(**json.loads(path.read_text(encoding="utf-8")))


def study_predictor(config: AblationConfig, models: Sequence[Path]):
    """The predictor a study scores ``models`` with: its device, tiles, ROI dilation and inference."""
    from ..inference import SegmentationPredictor, TileSettings

    return SegmentationPredictor.from_files([str(m) for m in models], device=config.device,
                                            tiles=TileSettings(**config.tiles), roi_dilation=config.roi_dilation,
                                            inference=config.inference, dense=dict(config.dense))
