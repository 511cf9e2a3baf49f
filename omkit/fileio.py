"""Outputs are written atomically: to a temporary file in the target's folder,
then renamed over the target, so a crash never leaves a half-written file and
an existing output is replaced only when asked to (``force``)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


class OutputExistsError(FileExistsError):
    def __str__(self) -> str:
        return f"{self.filename}: exists; pass --force to overwrite"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it to
    ``target``; on error remove it. With ``force=False`` an existing target is
    an :class:`OutputExistsError` (raised before anything is written).

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.png``) so
    writers that infer the format from the name still work.
    """
    target = Path(target)
    if not force and target.exists():
        raise OutputExistsError(None, None, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs get the usual permissions
    os.chmod(tmp, 0o666 & ~_current_umask())
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(target: str | os.PathLike, text: str, force: bool = True) -> Path:
    with atomic_path(target, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_torch_save(obj, target: str | os.PathLike, force: bool = True) -> Path:
    import torch

    with atomic_path(target, force=force) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)
