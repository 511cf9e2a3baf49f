"""The curriculum (Sec. III-B): which tasks train in which stage, for how many
epochs, and the optional plateau rule that ends a stage early.

Stages come from the preset: with ``curriculum`` stage 1 trains task 1, stage 2
tasks 1-2, stage 3 tasks 1-3 (``stage_epochs``); without it (``omnet0``,
``omnetd``, the MC baselines) every task of the model trains from the start for
the same total number of epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Stage:
    tasks: tuple[int, ...]  # 0-based tasks trained in this stage
    epochs: int


def plan_stages(preset, stage_epochs, epochs: int | None = None) -> list[Stage]:
    """The curriculum of ``preset``: (tasks, epochs) per stage; stages with 0
    epochs are dropped. ``epochs`` (a total) sets the last stage's length."""
    num_tasks = preset.num_tasks if preset.architecture == "mc" else 3
    stage_epochs = list(stage_epochs)
    if preset.curriculum and num_tasks == 3:
        if epochs is not None:
            last = epochs - sum(stage_epochs[:2])
            if last < 1:
                raise ValueError(f"--epochs {epochs} leaves no epoch for stage 3 after stages 1-2 ({stage_epochs[:2]})")
            stage_epochs[2] = last
        return [Stage(tuple(range(k + 1)), e) for k, e in enumerate(stage_epochs) if e > 0]
    return [Stage(tuple(range(num_tasks)), epochs if epochs is not None else sum(stage_epochs))]


def stages_record(stages: Sequence[Stage]) -> list[dict]:
    """The stages as written to ``config.json`` and the model's metadata (1-based tasks)."""
    return [{"tasks": [t + 1 for t in s.tasks], "epochs": s.epochs} for s in stages]


def plateaued(tol: float | None, stage: Stage, epoch_rows: Sequence[dict], stage_epoch: int, last_stage: bool) -> bool:
    """The optional plateau rule: a non-final stage ends early when its newest
    task's epoch loss improved by less than ``tol`` (relative) over the stage's
    last two epochs (``stage_epoch`` of them finished, rows per epoch)."""
    if tol is None or last_stage or stage_epoch < 2:
        return False
    key = f"loss_task{max(stage.tasks) + 1}"
    prev, cur = epoch_rows[-2][key], epoch_rows[-1][key]
    if not (prev > 0):
        return False
    return (prev - cur) / prev < tol
