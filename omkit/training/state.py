"""Where a run stands: the curriculum position, counters, the metrics rows and
the running loss sums of the current log window and epoch. Saved in every
checkpoint (as plain numbers, lists and strings), so a resumed run reports
exactly what a straight one does."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

NUM_LOSSES = 4  # task 1-3 and their sum


@dataclass
class TrainState:
    stage: int = 0
    stage_epoch: int = 0  # epochs finished in the current stage
    epoch: int = 0  # epochs finished in total (the lr schedule and sampler count these)
    step: int = 0  # steps finished in the current epoch
    global_step: int = 0
    elapsed_s: float = 0.0  # training time over all sessions (the --max-minutes budget)
    patches: int = 0  # own patches seen by all processes
    rows: list = field(default_factory=list)  # metrics rows
    epoch_rows: list = field(default_factory=list)
    stage_starts: list = field(default_factory=lambda: [0])
    finished: bool = False
    stopped_by: str = ""
    # running loss sums (task 1-3, total) of the current log window and epoch
    window_sums: list = field(default_factory=lambda: [0.0] * NUM_LOSSES)
    window_counts: list = field(default_factory=lambda: [0] * NUM_LOSSES)
    window_count: int = 0
    window_patches: int = 0
    epoch_sums: list = field(default_factory=lambda: [0.0] * NUM_LOSSES)
    epoch_counts: list = field(default_factory=lambda: [0] * NUM_LOSSES)
    # --val-every: one row per validation ({"step", "val_dice_wt", ...}) and the best mean Dice (best.pt)
    validation: list = field(default_factory=list)
    best_val: float | None = None
    # --tensorboard: the metrics rows and validation rows already in the event files
    events_written: int = 0
    val_events_written: int = 0

    def add_losses(self, values, patches: int) -> None:
        """One step's losses (NaN for a task without patches) and own patches."""
        for i, v in enumerate(values):
            if not math.isnan(v):
                self.window_sums[i] += v
                self.window_counts[i] += 1
                self.epoch_sums[i] += v
                self.epoch_counts[i] += 1
        self.window_count += 1
        self.window_patches += patches

    def take_window(self) -> tuple[list[float], int]:
        """The log window's mean losses and patches; starts a new window."""
        mean = [s / c if c else math.nan for s, c in zip(self.window_sums, self.window_counts)]
        patches = self.window_patches
        self.window_sums, self.window_counts = [0.0] * NUM_LOSSES, [0] * NUM_LOSSES
        self.window_count = self.window_patches = 0
        return mean, patches

    def take_epoch(self) -> list[float]:
        """The epoch's mean losses; starts a new epoch."""
        mean = [s / c if c else math.nan for s, c in zip(self.epoch_sums, self.epoch_counts)]
        self.epoch_sums, self.epoch_counts = [0.0] * NUM_LOSSES, [0] * NUM_LOSSES
        return mean

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)
