"""Outputs are written atomically: to a temporary file in the target's folder,
then renamed over the target, so a crash never leaves a half-written file and
an existing output is replaced only when asked to (``force``).

A temporary is named ``.<target name>.<random>.tmp<suffixes>`` (folders:
``.<target name>.<random>.tmpdir``) and its writer holds an OS lock on it
(``fcntl.flock``) while writing. The OS drops the lock when the writer dies,
even by ``kill -9``, so :func:`clean_stale_temporaries` can tell a temporary
stranded by a crash (unlocked: removed) from one being written right now by
another process (locked: left alone). Every atomic write first removes the
stale temporaries of its own target, and commands clean their output folders
when they start.

What makes a file omkit's temporary is a marker only omkit writes: the extended
attribute ``user.omkit.temporary`` on the file or folder, removed just before the
rename. The name alone never decides, since a case id can look like a temporary's
name (``.x.abcdefgh.tmp``); on a file system without extended attributes a
stranded temporary is left where it is rather than risk removing a user's file.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

try:  # POSIX; elsewhere temporaries are not locked and only old ones count as stale
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

# tempfile's names: 8 characters of [a-z0-9_]
_TEMP_FILE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(?:\..*)?$")
_TEMP_DIR = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmpdir$")
DIR_LOCK = ".writer"  # the lock file inside a temporary folder
MARKER = "user.omkit.temporary"  # the extended attribute that marks omkit's temporaries
# the longest target name a temporary's name quotes in full: longer ones are shortened to a
# prefix and a hash, so that a temporary's name stays within the usual 255-byte limit
MAX_QUOTED_NAME = 200
# a temporary whose writer cannot be asked (no lock file yet, or no flock) is stale only when this old
UNLOCKED_GRACE_S = 60.0


class OutputExistsError(FileExistsError):
    def __str__(self) -> str:
        return f"{self.filename}: exists; pass --force to overwrite"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock(fd: int) -> bool | None:
    """flock ``fd`` exclusively without waiting: True when locked, False when
    another process holds it, None where the system or file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # e.g. a file system without locks
        return None
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _mark(target: int | Path) -> None:
    """Mark a file descriptor or folder as omkit's temporary (where the file system allows)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setxattr(target, MARKER, b"1")


def _unmark(target: int | Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.removexattr(target, MARKER)


def is_marked(path: str | os.PathLike) -> bool:
    """Whether ``path`` carries omkit's temporary marker."""
    try:
        return os.getxattr(path, MARKER, follow_symlinks=False) == b"1"
    except (OSError, AttributeError):
        return False


def quoted_name(name: str) -> str:
    """The part of a temporary's name that names its target: the name itself, or
    for a long one a prefix and a hash of the whole."""
    if len(name.encode("utf-8", "surrogateescape")) <= MAX_QUOTED_NAME:
        return name
    import hashlib

    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return name.encode("utf-8", "surrogateescape")[:120].decode("utf-8", "ignore") + "~" + digest


def _locked_temporary(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new temporary file, marked and locked by this process (retried in the rare
    case a cleaner removed it between its creation and the lock)."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        _mark(fd)
        _lock(fd)
        if _same_file(fd, Path(tmp)):
            return fd, Path(tmp)
        os.close(fd)


def _writer_alive(path: Path) -> bool:
    """Whether a live process holds the writer lock of temporary ``path`` (a
    file, or a folder with its :data:`DIR_LOCK`)."""
    lock_path = path / DIR_LOCK if path.is_dir() else path
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:  # a folder whose writer has not made its lock yet, or one from an old omkit
        try:
            return time.time() - path.stat().st_mtime < UNLOCKED_GRACE_S
        except FileNotFoundError:
            return True  # gone already
    except OSError:  # not ours to read (another user's): leave it
        return True
    try:
        locked = _lock(fd)
        if locked is None:  # no locks here: only an old temporary is stale
            return time.time() - os.fstat(fd).st_mtime < UNLOCKED_GRACE_S
        if not locked:
            return True
        return not _same_file(fd, lock_path)  # replaced meanwhile: let its new writer be
    finally:
        os.close(fd)  # releases the probe's lock


def is_temporary(name: str, target: str | None = None) -> bool:
    """Whether ``name`` is named like an omkit temporary (of ``target``'s name, when
    given); only :func:`is_marked` says that omkit wrote it."""
    match = _TEMP_FILE.match(name) or _TEMP_DIR.match(name)
    return bool(match) and (target is None or match.group("target") == quoted_name(target))


def clean_stale_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (of ``target``'s name only, when
    given) that no live process is writing; returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not is_temporary(entry.name, target):
            continue
        path = Path(entry.path)
        if not is_marked(path) or _writer_alive(path):  # a user's file named like one, or being written
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it to
    ``target``; on error remove it. With ``force=False`` an existing target is
    an :class:`OutputExistsError` (raised before anything is written).

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.png``) so
    writers that infer the format from the name still work. Stale temporaries
    of the same target (left by a killed writer) are removed first.
    """
    target = Path(target)
    if not force and target.exists():
        raise OutputExistsError(None, None, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent, target.name)
    fd, tmp_path = _temporary_for(target)
    try:
        yield tmp_path
        _unmark(fd)
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        _raise_naming(exc, target)
        raise
    finally:
        os.close(fd)  # and with it the writer lock


def _temporary_for(target: Path) -> tuple[int, Path]:
    # the format-telling suffixes (".nii.gz", ".png") for writers that read them; not every dot of a
    # case id ('.x.abcdefgh.tmp.nii.gz'), which could make the name too long
    suffix = "".join(target.suffixes[-2:])
    suffix = suffix if len(suffix) <= 16 else target.suffix[-16:]
    fd, tmp_path = _locked_temporary(target.parent, f".{quoted_name(target.name)}.", f".tmp{suffix}")
    # mkstemp makes the file private (0600); outputs get the usual permissions
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    return fd, tmp_path


class OutputWriteError(OSError):
    """A write that failed (disk full, file too large, I/O error), naming the output."""

    def __str__(self) -> str:
        return self.args[-1]


def _raise_naming(exc: BaseException, target: Path) -> None:
    """A failed write as one line naming the output rather than its temporary or nothing."""
    if isinstance(exc, OSError) and not isinstance(exc, (FileExistsError, OutputWriteError)) \
            and not str(exc).startswith(str(target)):
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        raise OutputWriteError(exc.errno, f"{target}: cannot write it ({reason})") from exc


@contextlib.contextmanager
def naming_failures(target: str | os.PathLike) -> Iterator[None]:
    """An ``OSError`` inside (a write to ``target``'s temporary) names ``target``."""
    try:
        yield
    except OSError as exc:
        _raise_naming(exc, Path(target))
        raise


@contextlib.contextmanager
def atomic_paths(targets, force: bool = True) -> Iterator[list[Path]]:
    """:func:`atomic_path` for several outputs as one set: temporaries for all,
    renamed over the targets only when every one was written; on any error none is
    (nothing half-written is left, and an existing set is untouched)."""
    targets = [Path(t) for t in targets]
    if not force:
        for target in targets:
            if target.exists():
                raise OutputExistsError(None, None, str(target))
    made: list[tuple[int, Path, Path]] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(target.parent, target.name)
            made.append((*_temporary_for(target), target))
        yield [tmp for _, tmp, _ in made]
        for fd, tmp, target in made:
            _unmark(fd)
            os.replace(tmp, target)
    finally:
        for fd, tmp, _ in made:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def temporary_dir(folder: Path, target_name: str) -> Path:
    """A new, marked temporary folder in ``folder`` named after ``target_name``
    (for moving something aside before removing it: a kill in between leaves a
    temporary that the next clean removes)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{quoted_name(target_name)}.", suffix=".tmpdir", dir=folder))
    _mark(tmp)
    return tmp


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``target`` to fill; on success rename
    it to ``target`` (when another writer got there first, theirs is kept and
    ours dropped); on error remove it. Its writer lock is the file
    :data:`DIR_LOCK` inside, removed before the rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent, target.name)
    tmp = temporary_dir(target.parent, target.name)
    fd = os.open(tmp / DIR_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd)
        with naming_failures(target):
            yield tmp
        os.unlink(tmp / DIR_LOCK)
        _unmark(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():  # not a concurrent writer's success
                raise
    finally:
        os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(target: str | os.PathLike, text: str, force: bool = True) -> Path:
    with atomic_path(target, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_torch_save(obj, target: str | os.PathLike, force: bool = True) -> Path:
    import torch

    with atomic_path(target, force=force) as tmp:
        with open(tmp, "wb") as fh:
            try:
                torch.save(obj, fh)
            except RuntimeError as exc:  # how torch's zip writer reports a failed write (disk full, ulimit)
                said = " ".join(str(exc).split())[:120]
                raise OutputWriteError(f"{target}: cannot write it (the write stopped part-way: a full disk or a "
                                       f"file-size limit?; torch: {said})") from exc
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)


class UnsafeFileError(ValueError):
    """A pickled file that holds objects other than tensors and plain data."""


def torch_load_weights_only(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: a file that would need any
    other object (and so could run code) is refused before any of it runs.
    Errors are one line naming the file: :class:`UnsafeFileError` for such a
    file, ``ValueError`` for an unreadable one."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        text = " ".join(lines)
        unsafe = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if isinstance(exc, pickle.UnpicklingError) and unsafe:
            unsafe = unsafe.split(". ")[0].rstrip(".")  # torch goes on about allow-listing it: do not
            raise UnsafeFileError(f"{path}: refusing to load it: it holds objects other than tensors and plain "
                                  f"data, which could run code ({unsafe})") from None
        reason = text.split("WeightsUnpickler error:", 1)[1].strip() if "WeightsUnpickler error:" in text else None
        first = (reason or (lines[0] if lines else "")).split(". ")[0]
        raise ValueError(f"{path}: unreadable ({type(exc).__name__}: {first})") from None
