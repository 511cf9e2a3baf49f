"""Run-folder outputs: metrics CSV/JSON and the loss-curve PNG (all atomic)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

from omkit.fileio import atomic_path, atomic_write_text

from .run_folder import LOSS_CURVE, METRICS_CSV, METRICS_JSON

EVENTS = "tensorboard"  # the event files' folder in a run folder

METRIC_FIELDS = (
    "step", "epoch", "stage", "lr", "loss_task1", "loss_task2", "loss_task3", "loss_total",
    "patches", "patches_per_s", "elapsed_s", "val_dice_wt", "val_dice_tc", "val_dice_et", "val_dice_mean",
)


def metrics_row(state, lr: float, steps_per_epoch: int, seconds: float) -> dict:
    """One ``metrics.csv`` row: the losses of the steps since the last row (``state.take_window``)."""
    mean, patches = state.take_window()
    return {
        "step": state.global_step,
        "epoch": round(state.epoch + state.step / max(1, steps_per_epoch), 4),
        "stage": state.stage + 1,
        "lr": lr,
        "loss_task1": mean[0], "loss_task2": mean[1], "loss_task3": mean[2], "loss_total": mean[3],
        "patches": state.patches,
        "patches_per_s": round(patches / seconds, 3) if seconds > 0 else None,
        "elapsed_s": round(state.elapsed_s, 3),
    }


def progress_postfix(row: dict) -> str:
    """The progress bar's summary of a metrics row."""
    losses = " ".join(f"t{t + 1}={row[f'loss_task{t + 1}']:.3f}" for t in range(3) if not math.isnan(row[f"loss_task{t + 1}"]))
    rate = f"{row['patches_per_s']:.1f}" if row["patches_per_s"] else "-"
    return f"loss {losses} | {rate} patches/s"


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_metrics_csv(rows: Sequence[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if _clean(row.get(k)) is None else row.get(k)) for k in METRIC_FIELDS})
    atomic_write_text(path, buffer.getvalue())


def write_json(obj, path: Path) -> None:
    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return _clean(o)

    atomic_write_text(path, json.dumps(clean(obj), indent=2) + "\n")


def plot_losses(rows: Sequence[dict], stage_starts: Sequence[int], path: Path, title: str = "") -> None:
    """Per-task and total training loss against the step; dashed lines where a
    curriculum stage begins."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, thread-safe

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in rows]
    for key, label in (("loss_task1", "task 1"), ("loss_task2", "task 2"), ("loss_task3", "task 3"), ("loss_total", "sum")):
        values = [_clean(r.get(key)) for r in rows]
        points = [(s, v) for s, v in zip(steps, values) if v is not None]
        if points:
            ax.plot(*zip(*points), label=label, linewidth=1.2 if key != "loss_total" else 0.8,
                    linestyle="-" if key != "loss_total" else ":")
    for start in stage_starts[1:]:
        ax.axvline(start, color="grey", linestyle="--", linewidth=0.8)
    validated = [(r["step"], r["val_dice_mean"]) for r in rows if _clean(r.get("val_dice_mean")) is not None]
    if validated:  # --val-every: the validation curve on its own axis
        val_ax = ax.twinx()
        val_ax.plot(*zip(*validated), color="black", marker="o", markersize=3, linewidth=1.0,
                    label="validation Dice (mean WT/TC/ET)")
        val_ax.set_ylabel("validation Dice")
        val_ax.set_ylim(0, 1)
        val_ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title or "training loss")
    if steps:
        ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_run_reports(run_dir: Path, state, config, world_size: int, extra: dict | None = None) -> None:
    """The run folder's ``metrics.csv``, ``metrics.json`` (totals, per-epoch losses,
    ``extra``) and ``loss_curve.png`` for a :class:`~omkit.training.state.TrainState`."""
    write_metrics_csv(state.rows, run_dir / METRICS_CSV)
    summary = {
        "preset": config.preset,
        "finished": state.finished,
        "stopped_by": state.stopped_by,
        "epochs": state.epoch,
        "steps": state.global_step,
        "patches": state.patches,
        "elapsed_s": round(state.elapsed_s, 3),
        "patches_per_s": round(state.patches / state.elapsed_s, 3) if state.elapsed_s else None,
        "world_size": world_size,
        "per_epoch": state.epoch_rows,
    }
    summary.update(extra or {})
    write_json(summary, run_dir / METRICS_JSON)
    if state.rows:
        plot_losses(state.rows, state.stage_starts, run_dir / LOSS_CURVE,
                    title=f"{config.preset} (width {config.width:g})")
    if getattr(config, "tensorboard", False):
        write_events(run_dir / EVENTS, state)


def write_events(folder: Path, state) -> None:
    """What is not yet in the event files, as TensorBoard scalars against the step: of the
    metrics rows ``loss/task1..3``, ``loss/total``, ``lr``, ``patches_per_s``; of the
    ``--val-every`` rows ``validation/dice_wt|tc|et|mean``."""
    from torch.utils.tensorboard import SummaryWriter

    rows, validation = state.rows[state.events_written:], state.validation[state.val_events_written:]
    if not rows and not validation:
        return
    losses = (*((f"loss_task{t}", f"loss/task{t}") for t in (1, 2, 3)), ("loss_total", "loss/total"), ("lr", "lr"),
              ("patches_per_s", "patches_per_s"))
    with SummaryWriter(log_dir=str(folder)) as writer:
        for source, keys in ((rows, losses), (validation, [(f"val_dice_{r}", f"validation/dice_{r}")
                                                           for r in ("wt", "tc", "et", "mean")])):
            for row in source:
                for key, tag in keys:
                    value = _clean(row.get(key))
                    if value is not None:
                        writer.add_scalar(tag, float(value), int(row["step"]))
    state.events_written, state.val_events_written = len(state.rows), len(state.validation)
