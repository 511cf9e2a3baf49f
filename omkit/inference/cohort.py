"""Predicting a cohort with several processes (``torchrun ... -m omkit predict``): a shared
queue of cases instead of fixed shares, and the next case read while the current one computes.

* :class:`CaseQueue`: every process walks the same list of cases and takes the next one no
  process has claimed. A claim is a file ``OUT/.omkit-claims/<run>/<case id>.claim``, created
  exclusively and held under an OS lock (``flock``) while the case is worked on; ``<run>`` is
  torchrun's run id, the same on every node. When the case is done (written, or failed and
  reported), the claim says ``done``. A claim whose lock is free but that is not done was left
  by a process that died (or given back by one that stopped at a failed case): another process
  takes the case over; a process out of cases waits for the ones being worked on. So a slow process or
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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

CLAIMS = ".omkit-claims"
DONE = "done"
POLL_S = 0.2  # while the cases left are being worked on by other processes


class CaseQueue:
    """The cases of ``keys`` (case ids, in the same order in every process) that this process
    claims, one at a time: ``for key in chain(queue, queue.leftovers()): ...; queue.done(key)``."""

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

    def _done(self, key: str) -> bool:
        try:
            return self._path(key).read_text(errors="replace").startswith(DONE)
        except FileNotFoundError:
            return False

    def __iter__(self) -> Iterator[str]:
        """The first pass: every case no process has claimed yet, in order."""
        for key in self.keys:
            if self._claim(key):
                yield key

    def leftovers(self) -> Iterator[str]:
        """After the first pass, until every case is done: what is left unfinished (given back by a
        process that stopped, or left by one that died), waiting while a live process works on a
        case. Ask for the next one only once the current one is done (no read-ahead here), so a
        process never waits while it holds a case another one waits for."""
        while True:
            pending = [key for key in self.keys if key not in self._held and not self._done(key)]
            if not pending:
                return
            taken = False
            for key in pending:
                if self._claim(key):
                    taken = True
                    yield key
            if not taken:
                time.sleep(POLL_S)

    def done(self, key: str) -> None:
        """Mark ``key`` done (written or failed) and release its claim."""
        fd = self._held.pop(key)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{DONE}\n".encode(), 0)
        os.close(fd)

    def release(self) -> None:
        """Give back every case claimed and not done (this process takes no more): the others
        take them over."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()

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
