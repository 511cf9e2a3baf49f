"""What stops a run with a one-line error instead of a traceback or a broken
model: allocation failures named by the settings that size them, and a
non-finite loss (:class:`TrainingDiverged`)."""
from __future__ import annotations

import contextlib

from .config import TrainConfig, flag


class TrainingDiverged(ValueError):
    """A loss became NaN or infinite: the run stops without writing the diverged model."""


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "DefaultCPUAllocator" in text))


@contextlib.contextmanager
def fits_in_memory(config: TrainConfig, *names: str):
    """An allocation failure (host or device) inside is a one-line error
    naming the settings ``names`` that size it."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        given = " ".join(f"{flag(n)} {_shown(getattr(config, n))}" for n in names)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{given}: does not fit in memory ({reason}); lower {' or '.join(flag(n) for n in names)}") \
            from None


def memory_checked(steps, config: TrainConfig):
    """``steps`` (batches are made as it is iterated), allocation failures named as by :func:`fits_in_memory`."""
    iterator = iter(steps)
    while True:
        with fits_in_memory(config, "patch_size", "batch_per_task"):
            item = next(iterator, None)
        if item is None:
            return
        yield item


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else f"{value:g}" \
        if isinstance(value, float) else str(value)
