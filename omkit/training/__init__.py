"""Training OM-Net and the MC baselines: curriculum, online data transfer,
resumable checkpoints, DDP. ``train(config) -> run_dir`` is the entry point
for Python callers; ``omkit train`` is the command line."""
from .config import PAPER_PATCHES_PER_EPOCH, PAPER_STAGE_EPOCHS, TrainConfig
from .patches import TaskPatches
from .trainer import Stage, Trainer, plan_stages, train, weights_digest
from .transfer import TransferRule, class_fraction, task3_target, task_targets

__all__ = [
    "PAPER_PATCHES_PER_EPOCH", "PAPER_STAGE_EPOCHS", "Stage", "TaskPatches", "TrainConfig", "Trainer",
    "TransferRule", "class_fraction", "plan_stages", "task3_target", "task_targets", "train", "weights_digest",
]
