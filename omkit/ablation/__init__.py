"""The paper's Table I ablation on any BraTS-layout dataset.

Every requested row (a preset) is trained with the same split, seeds and
budget, its held-out cases are predicted (with and, if asked, without the
two-step post-processing), scored with :mod:`omkit.metrics`, and the results
are tabulated in the layout of Table I (parameters, Dice WT/TC/ET, HD95).

Two protocols:

* hold-out (default, the paper's): ``val_cases`` cases (25 in the paper) are
  held out; every row trains on the rest. ``ensemble=K`` adds the paper's
  OM-Net + CGA* row: K models of ``omnet_cga`` trained on the K folds of the
  training cases, predicting with the average of their probabilities.
* cross-validation (``folds=K``): every case is held out exactly once.

Work is saved per row and fold (a ``scores.json`` next to the run's
``model.pt``): an interrupted study resumes where it stopped, and training
itself resumes from its last checkpoint.
"""
from __future__ import annotations

from .plan import (DEFAULT_ROWS, ENSEMBLE_ROW, PAPER_VAL_CASES, AblationConfig, Split, load_config, plan_splits,
                   row_folder, study_predictor)
from .report import markdown_table, paired_lines, per_case_lines
from .run import read_scores, run_ablation, run_row, saved_row_results, write_extreme_overlays
from .statistics import BOOTSTRAP_RESAMPLES, paired_differences, summarize_results

__all__ = ["BOOTSTRAP_RESAMPLES", "DEFAULT_ROWS", "ENSEMBLE_ROW", "PAPER_VAL_CASES", "AblationConfig", "Split",
           "load_config", "markdown_table", "paired_differences", "paired_lines", "per_case_lines", "plan_splits",
           "read_scores", "row_folder", "run_ablation", "run_row", "saved_row_results", "study_predictor",
           "summarize_results", "write_extreme_overlays"]
