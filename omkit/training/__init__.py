"""Training OM-Net and the MC baselines: curriculum, online data transfer,
resumable checkpoints, DDP. ``train(config) -> run_dir`` is the entry point
for Python callers; ``omkit train`` is the command line.

A run folder holds::

    config.json          the resolved TrainConfig, stages, cases and held-out cases
    metrics.csv          one row per --log-every steps: losses per task, lr, patches/s
    metrics.json         per-epoch losses, totals, stop reason, per-process digests
    loss_curve.png       the losses against the step, stage starts marked
    checkpoints/last.pt  full training state (for --resume), rewritten atomically
    checkpoints/stageK.pt  the model at the end of curriculum stage K
    model.pt             the final model (omkit.checkpoint format)
"""
from .config import PAPER_PATCHES_PER_EPOCH, PAPER_STAGE_EPOCHS, RECIPES, TrainConfig
from .patches import TaskPatches
from .trainer import Stage, Trainer, plan_stages, train, weights_digest
from .transfer import TransferRule, class_fraction, task3_target, task_targets

__all__ = [
    "PAPER_PATCHES_PER_EPOCH", "PAPER_STAGE_EPOCHS", "RECIPES", "Stage", "TaskPatches", "TrainConfig", "Trainer",
    "TransferRule", "class_fraction", "plan_stages", "task3_target", "task_targets", "train", "weights_digest",
]
