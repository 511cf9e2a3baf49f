"""A run's training data: the case folders (after the k-fold split), each case
validated and preprocessed through the cache, the task samplers built from
their specs, their regions per case (cached beside the case), and the
per-process patch source (:class:`~omkit.training.patches.TaskPatches`).

Everything is prepared before the first step; under DDP the main process
fills the cache first and the others then read it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omkit.data.brats import CaseError, find_cases
from omkit.data.cache import PreprocessedCache
from omkit.data.sampler_specs import build_task_samplers
from omkit.data.sampling import region_indices
from omkit.data.splits import kfold_split
from omkit.fileio import OutputWriteError
from omkit.registry import PluginError

from . import distributed
from .config import TrainConfig
from .patches import TaskPatches
from .windows import grid_of


@dataclass
class TrainingData:
    cases: list  # omkit.data.Preprocessed, in training order
    case_dirs: list[Path]
    held_out: list[Path]  # case folders of the held-out fold
    samplers: list
    patches: TaskPatches
    label_convention: str

    @property
    def case_ids(self) -> list[str]:
        return [pre.case_id for pre in self.cases]


def build_samplers(config: TrainConfig, registry=None) -> list:
    """One sampler per task from ``config.samplers`` (one-line errors naming
    ``--samplers``), looked up in the current plug-ins' samplers by default."""
    if registry is None:
        from omkit.plugin_manager import get_plugins

        registry = get_plugins().registry("sampler")
    return build_task_samplers(config.samplers, registry)


def split_cases(config: TrainConfig) -> tuple[list[Path], list[Path]]:
    """``(training case folders, held-out case folders)`` of ``config.input``."""
    case_dirs = find_cases(config.input)
    if config.folds is None:
        return case_dirs, []
    return kfold_split(case_dirs, config.folds, config.fold, seed=0)


def _load_cases(config: TrainConfig, case_dirs, samplers, tasks, cache, warn: bool):
    settings = dict(label_convention=config.label_convention, with_label=True)
    cases, dirs, regions = [], [], {t: [] for t in tasks}
    for case_dir in case_dirs:
        try:  # everything done for one case: a failure is this case's, named as such
            pre = cache.load(case_dir, **settings)
            own = {t: region_indices(samplers[t], pre, cache, case_dir, settings) for t in tasks}
        except (OutputWriteError, PluginError):  # a full disk or a faulty plug-in: every case would fail
            raise
        except Exception as exc:
            error = exc if isinstance(exc, CaseError) else \
                CaseError(f"{case_dir}: {type(exc).__name__}: {' '.join(str(exc).split())}")
            if not config.skip_bad_cases:
                raise error from None
            if warn:
                warnings.warn(f"skipping case: {error}", stacklevel=3)
            continue
        cases.append(pre)
        dirs.append(case_dir)
        for t in tasks:
            regions[t].append(own[t])
    if not cases:
        raise CaseError(f"{config.input}: no usable cases left after skipping the bad ones")
    return cases, dirs, regions


def build_augmentation(config: TrainConfig, registry=None):
    """The ``--augment`` pipeline (one-line errors naming ``--augment``), its
    transforms looked up in the current plug-ins' transforms by default."""
    from omkit.data.augment import Augmentation

    if registry is None:
        from omkit.plugin_manager import get_plugins

        registry = get_plugins().registry("transform")
    return Augmentation.from_spec(config.augment, registry)


def prepare_data(config: TrainConfig, samplers: Sequence, tasks: Sequence[int],
                 processes: distributed.Processes, augmentation=None) -> TrainingData:
    """Find, split, validate and preprocess every case, and compute every
    sampler region, before training starts."""
    case_dirs, held_out = split_cases(config)
    cache = PreprocessedCache(config.cache_dir)
    if processes.is_main:
        cases, dirs, regions = _load_cases(config, case_dirs, samplers, tasks, cache, warn=True)
    distributed.barrier(processes)
    if not processes.is_main:
        cases, dirs, regions = _load_cases(config, case_dirs, samplers, tasks, cache, warn=False)
    supervised = grid_of(config).supervised_slices if config.train_mode == "windows" else None
    patches = TaskPatches(
        cases, samplers, config.crop_size(), config.patches_per_epoch, config.batch_per_task,
        seed=config.seed, rank=processes.rank, world_size=processes.world_size, tasks=tasks, regions=regions,
        input_features=config.input_features, supervised=supervised, augmentation=augmentation,
    )
    conventions = sorted({pre.convention for pre in cases})
    convention = conventions[0] if len(conventions) == 1 else (config.label_convention or conventions[0])
    return TrainingData(cases, dirs, held_out, list(samplers), patches, convention)
