"""Predicting a cohort with several processes (``torchrun ... -m omkit predict``): a shared
queue of cases instead of fixed shares, and the next case read while the current one computes.

* :class:`CaseQueue`: every process walks the same list of cases and takes the next one no
  process has claimed. A claim is a file ``OUT/.omkit-claims/<run>/<case id>.claim``, created
  exclusively and held under an OS lock (``flock``) while the case is worked on; ``<run>`` is
  torchrun's run id, the same on every node. When the case is done (written, or failed and
  reported), the claim says ``done``. A claim whose lock is free but that is not done was left
  by a process that died: the next process to meet it takes the case over. So a slow process or
  a large case leaves no other process idle (``omkit predict`` splits round-robin without
  torchrun's run id, or with ``--shard round-robin``). The claims folder lives on the output's
  file system: every node of a multi-node run must see it, and it must support ``flock``.
* :func:`prefetched`: the next case of an iterator loaded (read, checked) in a background
  thread while the caller works on the current one; errors arrive with their case.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

CLAIMS = ".omkit-claims"
DONE = "done"


class CaseQueue:
    """The cases of ``keys`` (case ids, in the same order in every process) that this process
    claims, one at a time: ``for key in queue: ...; queue.done(key)``."""

    def __init__(self, out_dir: Path, run_id: str, keys: Sequence[str]):
        self.folder = Path(out_dir) / CLAIMS / run_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keys = list(keys)
        self._held: dict[str, int] = {}  # key -> the open, locked claim file

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    def _claim(self, key: str) -> bool:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process works on it
            os.close(fd)
            return False
        text = os.pread(fd, 64, 0).decode(errors="replace")
        if text.startswith(DONE):
            os.close(fd)
            return False
        # new, or left unfinished by a process that died: ours now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        self._held[key] = fd
        return True

    def __iter__(self) -> Iterator[str]:
        for key in self.keys:
            if self._claim(key):
                yield key
        # a last pass: cases whose claimer died after this process went by
        for key in self.keys:
            if key not in self._held and self._claim(key):
                yield key

    def done(self, key: str) -> None:
        """Mark ``key`` done (written or failed) and release its claim."""
        fd = self._held.pop(key)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{DONE}\n".encode(), 0)
        os.close(fd)

    def remove(self) -> None:
        """Delete this run's claims (when every process has finished)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:  # other runs' claims, or gone already
            pass


def prefetched(items: Iterable, load: Callable) -> Iterator[tuple]:
    """``(item, loaded, error)`` for every item, ``load(item)`` of the next item running in a
    background thread while the caller works on the current one; ``error`` is the exception
    ``load`` raised (``loaded`` is then None)."""
    iterator = iter(items)

    def job(item):
        try:
            return load(item), None
        except Exception as exc:  # the caller's to report, with its case
            return None, exc

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omkit-prefetch") as pool:
        pending = None
        for item in iterator:
            future = pool.submit(job, item)
            if pending is not None:
                yield (pending[0], *pending[1].result())
            pending = (item, future)
        if pending is not None:
            yield (pending[0], *pending[1].result())
