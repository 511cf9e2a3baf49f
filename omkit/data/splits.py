"""K-fold splits of a case list (the paper's ten-model ensemble trains one
model per fold)."""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def kfold_split(items: Sequence[T], folds: int, fold: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """``(train, held_out)`` for fold ``fold`` (0-based) of ``folds``; the
    assignment depends only on the sorted items and ``seed``."""
    from sklearn.model_selection import KFold

    items = sorted(items, key=str)
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"--fold must be in 0..{folds - 1}, got {fold}")
    if len(items) < folds:
        raise ValueError(f"{folds} folds need at least {folds} cases, found {len(items)}")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, held_idx = list(splitter.split(items))[fold]
    return [items[i] for i in train_idx], [items[i] for i in held_idx]
