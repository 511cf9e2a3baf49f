"""On-disk cache of preprocessed cases, so epochs do not re-decompress NIfTI.

An entry is a folder ``<case_id>-<key>/`` of ``.npy`` arrays (opened as
read-only memory maps) plus ``meta.json``. The key hashes every input file's
resolved path, size and modification time together with the loading and
preprocessing settings, so a changed input or setting gets a new entry instead
of a stale one. Entries are written to a temporary folder and renamed
(:func:`omkit.fileio.atomic_dir`), so an interrupted write never leaves a half
entry; concurrent writers (DDP ranks) race harmlessly, and a temporary folder
stranded by a killed writer is removed the next time the cache is opened.

Nothing in the cache can run code: arrays are read with ``allow_pickle=False``
and the NIfTI header is rebuilt from its bytes by one of nibabel's header
classes named in an allow-list. Every read is checked: each array's file size
against its ``.npy`` header, its shape against ``meta.json``, and its sha256
against the one recorded when it was written (derived arrays: a
``<name>.npy.sha256`` file beside them). A corrupt entry is a warning naming
it, and is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from omkit.fileio import atomic_dir, atomic_path, clean_stale_temporaries, temporary_dir

from .brats import AFFINE_TOLERANCE, case_files, load_case
from .preprocess import PREPROCESSING, Preprocessed, preprocess_case

CACHE_VERSION = 1
CACHE_ENV = "OMKIT_CACHE_DIR"
# the header classes an entry may name (never an arbitrary attribute of nibabel)
HEADER_CLASSES = ("Nifti1Header", "Nifti2Header")
ARRAYS = ("image", "brain_mask", "label")
# temporary entry folders of omkit versions before the writer locks: ".<entry>.<random>"
_LEGACY_TEMP = re.compile(r"^\..+-[0-9a-f]{20}\.[a-z0-9_]{8}$")


class CorruptEntry(ValueError):
    """A cache entry that fails its checks (the message says which file and why)."""


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checked_npy(path: Path, sha256: str | None = None, size: int | None = None) -> np.ndarray:
    """``path`` as a read-only memory map, after checking that it is a
    complete ``.npy`` of plain numbers (its size is what its header says) and,
    when given, its recorded size and sha256. Raises :class:`CorruptEntry`."""
    try:
        actual = path.stat().st_size
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh)
            offset = fh.tell()
    except FileNotFoundError:
        raise CorruptEntry(f"{path}: missing") from None
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise CorruptEntry(f"{path}: not a readable .npy file ({' '.join(str(exc).split())})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise CorruptEntry(f"{path}: holds {dtype}, not plain numbers")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if actual != expected or (size is not None and actual != size):
        raise CorruptEntry(f"{path}: {actual} bytes, its header says {expected}" if actual != expected
                           else f"{path}: {actual} bytes, {size} were written")
    if sha256 is not None and file_sha256(path) != sha256:
        raise CorruptEntry(f"{path}: sha256 differs from the one recorded when it was written")
    return np.load(path, mmap_mode="r", allow_pickle=False)


class PreprocessedCache:
    """``cache.load(case_dir) -> Preprocessed`` with memory-mapped arrays,
    preprocessing on a miss. ``cache.derived(pre, name, fn)`` stores further
    per-case arrays (e.g. sampler regions) in the same entry."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self._cleaned: set[Path] = set()

    def entry_dir(self, case_dir, **settings) -> Path:
        case_id, key = cache_key(case_dir, **settings)
        return self.root / f"{case_id}-{key}"

    def load(self, case_dir, label_convention=None, with_label=True, naming=None, affine_tolerance=None) -> Preprocessed:
        """The preprocessed case; on a miss it is read, validated (``load_case``)
        and preprocessed first, so a cache hit is a case that passed validation.
        A corrupt entry is a warning naming it, and is rebuilt."""
        settings = dict(label_convention=label_convention, with_label=with_label, naming=naming,
                        affine_tolerance=AFFINE_TOLERANCE if affine_tolerance is None else affine_tolerance)
        entry = self.entry_dir(case_dir, **settings)
        self._clean(self.root)
        if (entry / "meta.json").is_file() or entry.exists():
            try:
                return self._read(entry)
            except CorruptEntry as exc:
                warnings.warn(f"corrupt cache entry {entry} ({exc}); rebuilding it", stacklevel=2)
                self._discard(entry)
        pre = preprocess_case(load_case(case_dir, **settings))
        self._write(entry, pre)
        return self._read(entry)

    # -- entries ------------------------------------------------------------------
    def _clean(self, folder: Path) -> None:
        """Remove temporaries stranded by killed writers (once per folder and cache)."""
        if folder in self._cleaned:
            return
        self._cleaned.add(folder)
        clean_stale_temporaries(folder)
        if folder == self.root and folder.is_dir():
            for path in folder.iterdir():
                if _LEGACY_TEMP.match(path.name) and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)

    def _discard(self, entry: Path) -> None:
        """Remove an entry (a rename first, so that no reader sees half of it)."""
        trash = temporary_dir(entry.parent, entry.name)
        try:
            os.replace(entry, trash / entry.name)
        except FileNotFoundError:  # another process discarded it first
            pass
        shutil.rmtree(trash, ignore_errors=True)

    def _write(self, entry: Path, pre: Preprocessed) -> None:
        with atomic_dir(entry) as tmp:
            arrays = {"image": np.ascontiguousarray(pre.image, dtype=np.float32),
                      "brain_mask": np.ascontiguousarray(pre.brain_mask, dtype=bool)}
            if pre.label is not None:
                arrays["label"] = np.ascontiguousarray(pre.label, dtype=np.uint8)
            files = {}
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
                files[f"{name}.npy"] = {"size": (tmp / f"{name}.npy").stat().st_size,
                                        "sha256": file_sha256(tmp / f"{name}.npy")}
            (tmp / "header.bin").write_bytes(pre.header.binaryblock if pre.header is not None else b"")
            meta = {
                "case_id": pre.case_id,
                "bbox": [[s.start, s.stop] for s in pre.bbox],
                "full_shape": list(pre.full_shape),
                "affine": np.asarray(pre.affine).tolist(),
                "spacing": list(pre.spacing),
                "convention": pre.convention,
                "header_class": type(pre.header).__name__ if pre.header is not None else None,
                "files": files,
            }
            # meta.json last: its presence marks a complete entry
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")

    @staticmethod
    def _read(entry: Path) -> Preprocessed:
        import nibabel as nib

        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
            bbox = tuple(slice(int(a), int(b)) for a, b in meta["bbox"])
            full_shape = tuple(int(s) for s in meta["full_shape"])
            affine = np.asarray(meta["affine"], dtype=np.float64).reshape(4, 4)
            spacing = tuple(float(s) for s in meta["spacing"])
            case_id, convention = str(meta["case_id"]), str(meta["convention"])
            files = meta.get("files") or {}  # entries of omkit versions before the checksums have none
            if len(bbox) != 3 or len(full_shape) != 3 or len(spacing) != 3 or not isinstance(files, dict):
                raise ValueError("wrong lengths")
            if not all(np.isfinite(s) and s > 0 for s in spacing) or not np.all(np.isfinite(affine)):
                raise ValueError(f"spacing {spacing} or affine not positive finite numbers")
        except FileNotFoundError:
            raise CorruptEntry(f"{entry / 'meta.json'}: missing") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptEntry(f"{entry / 'meta.json'}: malformed ({type(exc).__name__}: {exc})") from None
        header_class = meta.get("header_class")
        if header_class is not None and header_class not in HEADER_CLASSES:
            raise CorruptEntry(f"{entry / 'meta.json'}: unknown header class {header_class!r}")
        header = None
        try:
            raw = (entry / "header.bin").read_bytes()
            if raw and header_class:
                header = getattr(nib, header_class)(binaryblock=raw)
        except Exception as exc:  # nibabel raises several kinds for a bad block
            raise CorruptEntry(f"{entry / 'header.bin'}: unreadable ({type(exc).__name__}: {exc})") from None
        arrays = {}
        for name in ARRAYS:
            path = entry / f"{name}.npy"
            record = files.get(path.name) or {}
            if name == "label" and not path.is_file() and not record:
                arrays[name] = None
                continue
            arrays[name] = checked_npy(path, record.get("sha256"), record.get("size"))
        box = tuple(s.stop - s.start for s in bbox)
        expected = {"image": (4, *box), "brain_mask": box, "label": box}
        for name, array in arrays.items():
            if array is not None and tuple(array.shape) != expected[name]:
                raise CorruptEntry(f"{entry / (name + '.npy')}: shape {tuple(array.shape)}, expected {expected[name]}")
        return Preprocessed(
            case_id=case_id,
            image=arrays["image"],
            label=arrays["label"],
            brain_mask=arrays["brain_mask"],
            bbox=bbox,
            full_shape=full_shape,
            affine=affine,
            header=header,
            spacing=spacing,
            convention=convention,
        )

    def derived(self, case_dir, name: str, compute: Callable[[], np.ndarray], **settings) -> np.ndarray:
        """A per-case array stored beside the entry as ``<name>.npy`` (``name``
        must encode its own settings) with its sha256 in ``<name>.npy.sha256``;
        computed on first use, and again when the stored one fails its check."""
        entry = self.entry_dir(case_dir, **settings)
        path, digest = entry / f"{name}.npy", entry / f"{name}.npy.sha256"
        self._clean(entry)
        if path.is_file() and digest.is_file():
            try:
                return checked_npy(path, digest.read_text(encoding="ascii").strip())
            except (CorruptEntry, OSError, UnicodeDecodeError) as exc:
                warnings.warn(f"corrupt cached array {path} ({exc}); computing it again", stacklevel=2)
        array = np.asarray(compute())
        with atomic_path(path) as tmp:
            np.save(tmp, array, allow_pickle=False)
        with atomic_path(digest) as tmp:  # after the array: a digest always describes a complete file
            tmp.write_text(file_sha256(path), encoding="ascii")
        return checked_npy(path)
