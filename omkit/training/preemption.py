"""Stopping cleanly when a scheduler asks: SIGTERM (what SLURM, Kubernetes and most
schedulers send before they kill a job) and SIGUSR1 (SLURM's ``--signal=USR1@600``
warning) make training finish its current step, write an atomic checkpoint and
``model.pt``, and end with :class:`Preempted`; ``omkit train`` then exits with
:data:`EXIT_REQUEUE`. Under torchrun every process stops at the same step: one
signalled process is enough (:func:`omkit.training.distributed.any_process`).

The handlers are installed only while a run trains, only from the main thread
(Python's rule), and the previous ones are put back afterwards, so a pipeline
that embeds omkit keeps its own.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". A job script
# requeues on it (SLURM: `scontrol requeue $SLURM_JOB_ID`), and `omkit train --resume auto` with the
# same arguments continues from the checkpoint.
EXIT_REQUEUE = 75
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Exception):
    """Training stopped on a signal after writing its checkpoint; resume to continue."""

    def __init__(self, run_dir: Path, signal_name: str, step: int):
        self.run_dir, self.signal_name, self.step = Path(run_dir), signal_name, step
        super().__init__(f"{run_dir}: stopped by {signal_name} after step {step}; the checkpoint is written; "
                         "continue with omkit train --resume (or --resume auto)")


class StopSignals:
    """While entered, :attr:`received` names the first stop signal that arrived ("" before)."""

    def __init__(self, names=STOP_SIGNALS):
        self.names = tuple(n for n in names if hasattr(signal, n))  # SIGUSR1 does not exist on Windows
        self.received = ""
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if not self.received:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.names:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}
