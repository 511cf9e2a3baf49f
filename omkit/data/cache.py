"""On-disk cache of preprocessed cases, so epochs do not re-decompress NIfTI.

An entry is a folder ``<case_id>-<key>/`` of ``.npy`` arrays (opened as
read-only memory maps) plus ``meta.json``. The key hashes every input file's
resolved path, size and modification time together with the loading and
preprocessing settings, so a changed input or setting gets a new entry instead
of a stale one. Entries are written to a temporary folder and renamed, so an
interrupted write never leaves a half entry; concurrent writers (DDP ranks)
race harmlessly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .brats import AFFINE_TOLERANCE, case_files, load_case
from .preprocess import PREPROCESSING, Preprocessed, preprocess_case

CACHE_VERSION = 1
CACHE_ENV = "OMKIT_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$OMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/omkit/preprocessed`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "omkit" / "preprocessed"


def _file_fingerprint(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(case_dir, label_convention=None, with_label=True, naming=None, affine_tolerance=None) -> tuple[str, str]:
    """``(case_id, key)`` for a case folder under the given settings."""
    naming, case_id, paths = case_files(case_dir, with_label=with_label, naming=naming)
    record = {
        "version": CACHE_VERSION,
        "preprocessing": PREPROCESSING,
        "naming": naming,
        "label_convention": label_convention or naming,
        "with_label": with_label,
        # validation settings too: a stricter check must not be skipped by a cache hit
        "affine_tolerance": AFFINE_TOLERANCE if affine_tolerance is None else float(affine_tolerance),
        "files": {k: _file_fingerprint(p) for k, p in sorted(paths.items())},
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]
    return case_id, digest


class PreprocessedCache:
    """``cache.load(case_dir) -> Preprocessed`` with memory-mapped arrays,
    preprocessing on a miss. ``cache.derived(pre, name, fn)`` stores further
    per-case arrays (e.g. sampler regions) in the same entry."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry_dir(self, case_dir, **settings) -> Path:
        case_id, key = cache_key(case_dir, **settings)
        return self.root / f"{case_id}-{key}"

    def load(self, case_dir, label_convention=None, with_label=True, naming=None, affine_tolerance=None) -> Preprocessed:
        """The preprocessed case; on a miss it is read, validated (``load_case``)
        and preprocessed first, so a cache hit is a case that passed validation."""
        settings = dict(label_convention=label_convention, with_label=with_label, naming=naming,
                        affine_tolerance=AFFINE_TOLERANCE if affine_tolerance is None else affine_tolerance)
        entry = self.entry_dir(case_dir, **settings)
        if not (entry / "meta.json").is_file():
            pre = preprocess_case(load_case(case_dir, **settings))
            self._write(entry, pre)
        return self._read(entry)

    # -- entries ------------------------------------------------------------------
    def _write(self, entry: Path, pre: Preprocessed) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            np.save(tmp / "image.npy", np.ascontiguousarray(pre.image, dtype=np.float32))
            np.save(tmp / "brain_mask.npy", np.ascontiguousarray(pre.brain_mask, dtype=bool))
            if pre.label is not None:
                np.save(tmp / "label.npy", np.ascontiguousarray(pre.label, dtype=np.uint8))
            (tmp / "header.bin").write_bytes(pre.header.binaryblock if pre.header is not None else b"")
            meta = {
                "case_id": pre.case_id,
                "bbox": [[s.start, s.stop] for s in pre.bbox],
                "full_shape": list(pre.full_shape),
                "affine": np.asarray(pre.affine).tolist(),
                "spacing": list(pre.spacing),
                "convention": pre.convention,
                "header_class": type(pre.header).__name__ if pre.header is not None else None,
            }
            # meta.json last: its presence marks a complete entry
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            try:
                os.replace(tmp, entry)
            except OSError:
                if not (entry / "meta.json").is_file():  # not a concurrent writer's success
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _read(entry: Path) -> Preprocessed:
        import nibabel as nib

        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        header = None
        raw = (entry / "header.bin").read_bytes()
        if raw and meta.get("header_class"):
            header_cls = getattr(nib, meta["header_class"], nib.Nifti1Header)
            header = header_cls(binaryblock=raw)
        label_path = entry / "label.npy"
        return Preprocessed(
            case_id=meta["case_id"],
            image=np.load(entry / "image.npy", mmap_mode="r"),
            label=np.load(label_path, mmap_mode="r") if label_path.is_file() else None,
            brain_mask=np.load(entry / "brain_mask.npy", mmap_mode="r"),
            bbox=tuple(slice(a, b) for a, b in meta["bbox"]),
            full_shape=tuple(meta["full_shape"]),
            affine=np.asarray(meta["affine"], dtype=np.float64),
            header=header,
            spacing=tuple(meta["spacing"]),
            convention=meta["convention"],
        )

    def derived(self, case_dir, name: str, compute: Callable[[], np.ndarray], **settings) -> np.ndarray:
        """A per-case array stored beside the entry as ``<name>.npy`` (``name``
        must encode its own settings); computed on first use."""
        entry = self.entry_dir(case_dir, **settings)
        path = entry / f"{name}.npy"
        if not path.is_file():
            array = np.asarray(compute())
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".npy", dir=entry)
            os.close(fd)
            try:
                np.save(tmp, array)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return np.load(path, mmap_mode="r")
