"""The run folder's policy: what it holds, when a run may start in it, and
when it may be resumed. A run folder holds::

    config.json          the resolved TrainConfig, stages, samplers (every option), cases and held-out cases
    metrics.csv          one row per --log-every steps: losses per task, lr, patches/s
    metrics.json         per-epoch losses, totals, stop reason, per-process digests
    loss_curve.png       the losses against the step, stage starts marked
    checkpoints/last.pt  full training state (for --resume), rewritten atomically
    checkpoints/stageK.pt  the model at the end of curriculum stage K
    model.pt             the final model (omkit.checkpoint format)
    .omkit-run           the marker: omkit made this folder for a run (who, when)
    .omkit-lock          the lock file (who holds the folder)

A process using a run folder holds an OS lock on ``.omkit-lock``
(``fcntl.flock``; the OS drops it when the process ends, even by ``kill -9``);
a second process is refused in one line naming the holder (pid, host).

A new run refuses an existing non-empty folder unless ``--force``, and even
then replaces only a folder holding the marker, which omkit writes into a
folder it starts a run in: never a folder it did not make, whatever names it
holds. The replacement is the last step of starting a run: every setting, the
cases and the first training step are checked first (:meth:`RunClaim.commit`),
and a run that fails before then leaves the folder as it found it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

from omkit.fileio import atomic_write_text, clean_stale_temporaries

from .config import TrainConfig, flag

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None

CONFIG = "config.json"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
LOSS_CURVE = "loss_curve.png"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
MODEL = "model.pt"
MARKER = ".omkit-run"
LOCK = ".omkit-lock"
RUN_OUTPUTS = frozenset({CHECKPOINTS, CONFIG, METRICS_CSV, METRICS_JSON, LOSS_CURVE, MODEL, MARKER, LOCK})


class RunFolderBusy(FileExistsError):
    """Another live process holds the run folder's lock."""


def _holder() -> dict:
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    program = "omkit" if program in ("omkit", "__main__.py") else program
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([program, *sys.argv[1:]])[:300]}


class RunLock:
    """``fcntl.flock`` on ``RUN/.omkit-lock``, held while this process uses the
    folder; the file records the holder for whoever is refused."""

    def __init__(self, run: Path):
        self.path = run / LOCK
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> "RunLock":
        while True:
            self.created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderBusy(f"{self.path.parent}: in use by another omkit process ({self._holder_text()}); "
                                    "wait for it to end or choose another -o") from None
            except OSError as exc:  # a file system without locks: go on unlocked, and say so
                warnings.warn(f"{self.path.parent}: the file system refuses locks ({exc.strerror or exc}); omkit "
                              "cannot keep a second process out of this run folder: run one job per folder, or put "
                              "it on a file system with flock support (local disk, NFSv4, Lustre mounted with "
                              "-o flock)", stacklevel=3)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not unlinked by a process that gave the folder up meanwhile
                break
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder()) + "\n").encode())
        return self

    def check_free(self) -> None:
        """Raise :class:`RunFolderBusy` when a live process holds the lock (nothing is created)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f"{self.path.parent}: in use by another omkit process ({self._holder_text()}); "
                                "wait for it to end or choose another -o") from None
        except OSError:
            pass
        finally:
            os.close(fd)

    def _holder_text(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self, remove: bool = False) -> None:
        if self.fd is None:
            return
        if remove:  # while still held: nobody can be between its open and its lock on it
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


class RunClaim:
    """This process's hold on a run folder: the lock, and what starting the run
    has still to do (:meth:`commit`) or to undo (:meth:`abort`)."""

    def __init__(self, run: Path, lock: RunLock, made: list[Path], replace: bool, resume: bool):
        self.run, self.lock, self.made, self.replace, self.resume = run, lock, made, replace, resume
        self.committed = resume

    def commit(self) -> None:
        """Start the run for good: with ``--force``, delete the old run (all but
        the lock), then write the marker and make ``checkpoints/``. Idempotent."""
        if self.committed:
            return
        if self.replace:
            for path in self.run.iterdir():
                if path.name == LOCK:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        atomic_write_text(self.run / MARKER, json.dumps({"format": "omkit-run", **_holder()}) + "\n")
        (self.run / CHECKPOINTS).mkdir(exist_ok=True)
        self.committed = True

    def close(self) -> None:
        """Let the folder go. A run that did not start (not committed) leaves
        it as it was found: the lock file and the folders this claim made
        (when nothing else was put in them) are removed."""
        if self.committed:
            self.lock.release()
            return
        self.lock.release(remove=self.lock.created)
        for folder in reversed(self.made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_free(run: Path) -> None:
    """A one-line :class:`RunFolderBusy` naming the holder when another process uses ``run``."""
    RunLock(Path(run)).check_free()


def require_output(config: TrainConfig) -> Path:
    if not config.output:
        raise ValueError(f"{flag('output')}: a run folder is required")
    return Path(config.output)


def claim(run: Path, resume: bool, force: bool, given: TrainConfig | None = None) -> RunClaim:
    """Lock ``run`` for this process and check that a run may start (or, with
    ``resume``, continue) there; nothing is deleted yet (:meth:`RunClaim.commit`).
    Errors are one line: the folder is in use (naming the holder), holds
    something else, or holds a run that needs ``--force`` / ``--resume``."""
    if run.exists() and not run.is_dir():
        raise FileExistsError(f"{run}: exists and is not a folder")
    if resume and not run.is_dir():
        raise FileNotFoundError(f"{run}: nothing to resume (no such folder)")
    made = []
    for folder in reversed([run, *run.parents]):
        if not folder.exists():
            made.append(folder)
    run.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run)
    try:
        lock.acquire()
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    result = RunClaim(run, lock, made, replace=False, resume=resume)
    try:
        for folder in (run, run / CHECKPOINTS):
            clean_stale_temporaries(folder)  # left by a process killed while writing
        if resume:
            check_resumable(run, given)
            return result
        others = [p for p in run.iterdir() if p.name != LOCK]
        if others:
            if not force:
                raise FileExistsError(f"{run}: run folder exists; pass --force to start over or --resume to continue")
            if not (run / MARKER).is_file():
                raise FileExistsError(
                    f"{run}: not an omkit run folder (no {MARKER} marker, which omkit writes into the folders it "
                    f"makes); refusing to delete it: choose another -o or remove it yourself"
                )
            _check_not_inside(run, given)
            result.replace = True
        return result
    except BaseException:
        result.close()
        raise


def _check_not_inside(run: Path, given: TrainConfig | None) -> None:
    """``--force`` replaces ``run`` whole: refuse when the run reads from inside it (its
    input cases or its cache), which would be deleted before they are read."""
    if given is None:
        return
    for name in ("input", "cache_dir"):
        value = getattr(given, name)
        if value and Path(value).resolve().is_relative_to(run.resolve()):
            raise FileExistsError(f"{flag(name)} {value} is inside the run folder {run}, which --force would "
                                  "delete; move it out or choose another -o")


def last_checkpoint(run: Path) -> Path:
    return run / CHECKPOINTS / LAST


def stage_checkpoint(run: Path, stage: int) -> Path:
    """The model at the end of curriculum stage ``stage`` (1-based)."""
    return run / CHECKPOINTS / f"stage{stage}.pt"


def check_resumable(run: Path, given: TrainConfig, free: bool = False) -> None:
    """``given`` may continue the run in ``run``: (with ``free``, no other process uses it,
    :func:`check_free`), it has a checkpoint and the settings that change what is computed
    are the saved ones."""
    if free:
        check_free(run)
    if not last_checkpoint(run).is_file():
        raise FileNotFoundError(f"{run}: nothing to resume (no {CHECKPOINTS}/{LAST}); --force starts over")
    saved = TrainConfig.load(run / CONFIG)
    differs = saved.differences(given)
    if differs:
        a, b = saved.to_dict(), given.to_dict()
        name = differs[0]
        raise ValueError(f"{flag(name)}: the run in {run} used {a[name]!r}, not {b[name]!r}; start a new run to change it")


def check_same_cases(run: Path, case_ids: list[str], source: str) -> None:
    """A resumed run trains on the cases it started with."""
    try:
        before = json.loads((run / CONFIG).read_text(encoding="utf-8")).get("cases")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{run / CONFIG}: not a readable omkit run configuration ({exc})") from None
    if before is not None and before != case_ids:
        raise ValueError(
            f"{flag('input')}: {source} gives other training cases ({len(case_ids)}) than the run in "
            f"{run} used ({len(before)}); resume with the same cases or start a new run"
        )
