"""The run folder's policy: what it holds, when a run may start in it, and
when it may be resumed. A run folder holds::

    config.json          the resolved TrainConfig, stages, samplers (every option), cases and held-out cases
    metrics.csv          one row per --log-every steps: losses per task, lr, patches/s
    metrics.json         per-epoch losses, totals, stop reason, per-process digests
    loss_curve.png       the losses against the step, stage starts marked
    checkpoints/last.pt  full training state (for --resume), rewritten atomically
    checkpoints/stageK.pt  the model at the end of curriculum stage K
    model.pt             the final model (omkit.checkpoint format)

A new run refuses an existing non-empty folder unless ``--force``, and even
then deletes it only when it holds nothing but these outputs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import TrainConfig, flag

CONFIG = "config.json"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
LOSS_CURVE = "loss_curve.png"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
MODEL = "model.pt"
# what a run folder holds; --force deletes a folder only when it holds nothing else
RUN_OUTPUTS = frozenset({CHECKPOINTS, CONFIG, METRICS_CSV, METRICS_JSON, LOSS_CURVE, MODEL})


def last_checkpoint(run: Path) -> Path:
    return run / CHECKPOINTS / LAST


def stage_checkpoint(run: Path, stage: int) -> Path:
    """The model at the end of curriculum stage ``stage`` (1-based)."""
    return run / CHECKPOINTS / f"stage{stage}.pt"


def require_output(config: TrainConfig) -> Path:
    if not config.output:
        raise ValueError(f"{flag('output')}: a run folder is required")
    return Path(config.output)


def prepare_new_run(run: Path, force: bool) -> None:
    """Make way for a new run in ``run``: an empty or missing folder is fine; an
    existing run needs ``force`` and is deleted; anything else is refused."""
    if run.exists() and not run.is_dir():
        raise FileExistsError(f"{run}: exists and is not a folder")
    if run.exists() and any(run.iterdir()):
        if not force:
            raise FileExistsError(f"{run}: run folder exists; pass --force to start over or --resume to continue")
        foreign = [p.name for p in run.iterdir() if p.name not in RUN_OUTPUTS and not p.name.startswith(".")]
        if foreign:
            raise FileExistsError(f"{run}: not an omkit run folder (holds {foreign[0]!r}); refusing to delete it")
        shutil.rmtree(run)


def check_resumable(run: Path, given: TrainConfig) -> None:
    """``given`` may continue the run in ``run``: it has a checkpoint and the
    settings that change what is computed are the saved ones."""
    if not last_checkpoint(run).is_file():
        raise FileNotFoundError(f"{run}: nothing to resume (no {CHECKPOINTS}/{LAST})")
    saved = TrainConfig.load(run / CONFIG)
    differs = saved.differences(given)
    if differs:
        a, b = saved.to_dict(), given.to_dict()
        name = differs[0]
        raise ValueError(f"{flag(name)}: the run in {run} used {a[name]!r}, not {b[name]!r}; start a new run to change it")


def check_same_cases(run: Path, case_ids: list[str], source: str) -> None:
    """A resumed run trains on the cases it started with."""
    before = json.loads((run / CONFIG).read_text(encoding="utf-8")).get("cases")
    if before is not None and before != case_ids:
        raise ValueError(
            f"{flag('input')}: {source} gives other training cases ({len(case_ids)}) than the run in "
            f"{run} used ({len(before)}); resume with the same cases or start a new run"
        )
