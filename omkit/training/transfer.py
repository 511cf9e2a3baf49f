"""Online training-data transfer (Sec. III-B, Ineq. (1) and (2) of the paper).

A task-1 patch whose fraction of tumor voxels is at least ``tumor_threshold``
also trains task 2; a task-1 or task-2 patch whose fraction of core voxels is
at least ``core_threshold`` also trains task 3, with its labels relabelled
enhancing -> 1, everything else -> 0 (the paper's thresholds are
``omkit.protocol.TRANSFER_TUMOR_THRESHOLD`` and ``TRANSFER_CORE_THRESHOLD``).
The fraction is over all voxels of the patch (padding counts as non-tumor), as
in the released code (6553 of 16384 and 8192 of 16384 voxels)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omkit.labels import CORE_CLASSES, ENHANCING, TUMOR_CLASSES
from omkit.protocol import TRANSFER_CORE_THRESHOLD, TRANSFER_TUMOR_THRESHOLD


def class_fraction(labels: np.ndarray, classes) -> np.ndarray:
    """Per patch (first axis), the fraction of voxels whose class is in ``classes``."""
    labels = np.asarray(labels)
    if labels.shape[0] == 0:
        return np.zeros(0)
    return np.isin(labels, classes).reshape(labels.shape[0], -1).mean(axis=1)


def task3_target(labels: np.ndarray) -> np.ndarray:
    """Task 3's binary target: enhancing -> 1, everything else -> 0."""
    return (np.asarray(labels) == ENHANCING).astype(np.uint8)


@dataclass(frozen=True)
class TransferRule:
    tumor_threshold: float = TRANSFER_TUMOR_THRESHOLD
    core_threshold: float = TRANSFER_CORE_THRESHOLD

    def __post_init__(self):
        for name in ("tumor_threshold", "core_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    def select(self, labels: list[np.ndarray | None], active: set[int]) -> dict[int, list[tuple[int, np.ndarray]]]:
        """``{destination task: [(source task, patch indices)]}`` (0-based) for the
        per-task label batches ``labels`` (None for a task without patches this
        step), only into tasks in ``active`` and leaving out empty selections.
        The order is the order :meth:`OMNet.forward_tasks` appends them in."""
        transfers: dict[int, list[tuple[int, np.ndarray]]] = {}
        if 1 in active and labels[0] is not None:
            index = np.flatnonzero(class_fraction(labels[0], TUMOR_CLASSES) >= self.tumor_threshold)
            if index.size:
                transfers[1] = [(0, index)]
        if 2 in active:
            for src in (0, 1):
                if labels[src] is None:
                    continue
                index = np.flatnonzero(class_fraction(labels[src], CORE_CLASSES) >= self.core_threshold)
                if index.size:
                    transfers.setdefault(2, []).append((src, index))
        return transfers


def task_targets(labels: list[np.ndarray | None], transfers: dict[int, list[tuple[int, np.ndarray]]]) -> list[np.ndarray | None]:
    """Each task's target in the order of its logits from ``forward_tasks``:
    own patches, then transferred ones; task 3's relabelled to enhancing vs not."""
    targets: list[np.ndarray | None] = []
    for task in range(3):
        parts = [labels[task]] if labels[task] is not None else []
        parts += [labels[src][index] for src, index in transfers.get(task, ())]
        if not parts:
            targets.append(None)
            continue
        target = np.concatenate(parts) if len(parts) > 1 else parts[0]
        targets.append(task3_target(target) if task == 2 else target)
    return targets
