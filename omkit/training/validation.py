"""Validation during training (``--val-every N``): every N steps and at the end, the main
process predicts the validation cases with a copy of the current weights (``omkit predict``'s
default inference for the model, no post-processing) and scores Dice WT/TC/ET against their
ground truth. The scores go into ``metrics.csv`` (``val_dice_*`` columns on that step's row),
``validation.csv`` and the loss-curve figure; the best mean Dice so far is kept as ``best.pt``
beside ``model.pt``. The validation cases: ``--val-input DIR``, else the fold's held-out cases
(``--folds K --fold k``).

Nothing here draws random numbers or changes the model it is given (it predicts with a copy
in eval mode, without gradient), so a run validated is step for step the run not validated,
and a resumed run goes on with the scores and the best model of before. The other processes
of a torchrun wait at a barrier while the main one validates.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from omkit.checkpoint import save_model
from omkit.data import find_cases
from omkit.data.cache import PreprocessedCache
from omkit.data.features import left_right_axis
from omkit.fileio import atomic_write_text
from omkit.labels import internal_regions
from omkit.metrics import overlap_scores

BEST = "best.pt"
VALIDATION_CSV = "validation.csv"
FIELDS = ("val_dice_wt", "val_dice_tc", "val_dice_et", "val_dice_mean")


def validation_cases(config, held_out: Sequence[Path]) -> list[Path]:
    """The case folders ``--val-every`` scores; a one-line ``ValueError`` naming the flag when none."""
    cases = find_cases(config.val_input) if config.val_input else list(held_out)
    if config.val_every is not None and not cases:
        raise ValueError("--val-every: no validation cases; give --val-input DIR, or --folds K --fold k to hold a "
                         "fold out")
    return cases


class Validation:
    """What ``--val-every`` does for one run; :meth:`after_step` after every step."""

    def __init__(self, config, held_out: Sequence[Path], device: torch.device, card: Callable[[], object]):
        self.every = config.val_every
        self.case_dirs = validation_cases(config, held_out) if self.every else []
        self.cache = PreprocessedCache(config.cache_dir)
        self.settings = dict(label_convention=config.label_convention, with_label=True)
        self.device, self.card = device, card
        self._cases = None  # loaded on the first validation

    def due(self, state, last: bool = False) -> bool:
        """Whether the step just made is one to validate at (every N steps, and the run's last)."""
        if not self.every or not state.global_step:
            return False
        done = bool(state.validation) and state.validation[-1]["step"] == state.global_step
        return not done and (last or state.global_step % self.every == 0)

    def scores(self, model: torch.nn.Module, card) -> dict[str, float]:
        """Mean Dice WT/TC/ET (and their mean) of ``model`` (whose card is ``card``) over the
        validation cases."""
        from omkit.inference import SegmentationPredictor

        if self._cases is None:
            self._cases = [self.cache.load(case_dir, **self.settings) for case_dir in self.case_dirs]
        frozen = copy.deepcopy(model).eval()  # fresh: no inference cache keeps earlier weights
        frozen.card = card
        predictor = SegmentationPredictor([frozen], device=self.device)
        per_region: dict[str, list[float]] = {"WT": [], "TC": [], "ET": []}
        with torch.no_grad():
            for pre in self._cases:
                # copies: the cache's arrays are read-only memory maps, which torch does not take as they are
                prediction = predictor.predict(np.array(pre.image), np.array(pre.brain_mask),
                                               left_right_axis=left_right_axis(pre.affine))
                pred, gt = internal_regions(prediction.labels.numpy()), internal_regions(pre.label)
                for region, values in per_region.items():
                    values.append(overlap_scores(pred[region], gt[region])["dice"])
        out = {f"val_dice_{r.lower()}": float(np.mean(v)) for r, v in per_region.items()}
        out["val_dice_mean"] = float(np.mean([out["val_dice_wt"], out["val_dice_tc"], out["val_dice_et"]]))
        return out

    def after_step(self, model: torch.nn.Module, state, run_dir: Path, processes, last: bool = False) -> bool:
        """Validate when :meth:`due` (the main process scores, the others wait at a barrier);
        whether it did (the caller puts its network back in training mode)."""
        from . import distributed

        if not self.due(state, last):
            return False
        if processes.is_main:
            self.run(model, state, run_dir)
        distributed.barrier(processes)
        return True

    def run(self, model: torch.nn.Module, state, run_dir: Path) -> dict[str, float]:
        """Score ``model`` now: a row of ``state.validation``, the metrics row of this step, and
        ``best.pt`` when the mean Dice is the best so far (main process only)."""
        card = self.card()  # once: it describes the weights as they are now
        row = {"step": state.global_step, **self.scores(model, card)}
        state.validation.append(row)
        if state.rows and state.rows[-1]["step"] == state.global_step:
            state.rows[-1].update({k: row[k] for k in FIELDS})
        else:
            state.rows.append({"step": state.global_step, **{k: row[k] for k in FIELDS}})
        if state.best_val is None or row["val_dice_mean"] > state.best_val:
            state.best_val = row["val_dice_mean"]
            save_model(model, run_dir / BEST, card=card.replace(
                training={**card.training, "best_step": state.global_step, "val_dice_mean": state.best_val}))
        lines = ["step," + ",".join(FIELDS)] + [
            f"{r['step']}," + ",".join(f"{r[k]:.6f}" for k in FIELDS) for r in state.validation]
        atomic_write_text(run_dir / VALIDATION_CSV, "\n".join(lines) + "\n")
        return row
