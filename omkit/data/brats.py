"""Reading and validating BraTS case folders (nibabel).

Two file namings are understood; each implies a label convention
(:mod:`omkit.labels`), which can be overridden:

* 2018-2021: ``<id>_flair``, ``<id>_t1``, ``<id>_t1ce``, ``<id>_t2``, ``<id>_seg``
  (labels 1 NCR/NET, 2 edema, 4 enhancing);
* 2023+: ``<id>-t2f``, ``<id>-t1n``, ``<id>-t1c``, ``<id>-t2w``, ``<id>-seg``
  (labels 1 NCR, 2 edema, 3 enhancing; a ``seg`` that holds both 3 and 4 has
  the 2024 post-treatment labels 1 NETC, 2 SNFH, 3 ET, 4 resection cavity);

each as ``.nii`` or ``.nii.gz``. Arrays are returned in omkit's axis order
``(D, H, W)`` = NIfTI ``(Z, X, Y)`` (see docs/ARCHITECTURE.md).

Every validation failure is a :class:`CaseError` whose message is one line
naming the offending file and the problem.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from omkit.labels import convention_of, get_convention

MODALITIES = ("flair", "t1", "t1c", "t2")  # channel order inside omkit
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# naming name -> (separator, {modality or "seg": file suffix}); the naming's
# label convention has the same name.
NAMINGS = {
    "2018": ("_", {"flair": "flair", "t1": "t1", "t1c": "t1ce", "t2": "t2", "seg": "seg"}),
    "2023": ("-", {"flair": "t2f", "t1": "t1n", "t1c": "t1c", "t2": "t2w", "seg": "seg"}),
}

# Affines of the four modalities and the label may differ by rounding in the
# header (BraTS files carry float32 affines); larger differences mean the
# volumes are not co-registered.
AFFINE_TOLERANCE = 1e-3

# A volume's header may claim any size; refuse before reading more voxels than
# any MRI has (2**28: 1 GiB as float32; BraTS volumes hold 8.9 M).
MAX_VOXELS = 2**28


class CaseError(ValueError):
    """A case folder that cannot be used; the message is one line naming the file."""


# nibabel's axis order (X, Y, Z) -> omkit's (D, H, W) = (Z, X, Y)
TO_OMKIT_AXES = (2, 0, 1)
TO_NIFTI_AXES = (1, 2, 0)


def to_omkit_axes(array: np.ndarray) -> np.ndarray:
    """A NIfTI-ordered ``(X, Y, Z)`` array in omkit's ``(D, H, W)`` order."""
    return np.transpose(array, TO_OMKIT_AXES)


def to_nifti_axes(array: np.ndarray) -> np.ndarray:
    """An omkit-ordered ``(D, H, W)`` array back in NIfTI ``(X, Y, Z)`` order."""
    return np.transpose(array, TO_NIFTI_AXES)


@dataclass
class Case:
    """One BraTS case in omkit's axis order.

    ``image`` float32 ``(4, D, H, W)`` in modality order FLAIR, T1, T1c, T2;
    ``label`` uint8 internal classes ``(D, H, W)`` (``omkit.labels``) or None;
    ``spacing`` voxel size in mm in ``(D, H, W)`` order; ``paths`` the files
    read (``"flair"``, ``"t1"``, ``"t1c"``, ``"t2"``, and ``"seg"`` when read).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: object
    spacing: tuple[float, float, float]
    convention: str
    paths: dict[str, Path] = field(default_factory=dict)
    naming: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])


def _find_file(case_dir: Path, stem: str) -> Path | None:
    found = [case_dir / f"{stem}{suffix}" for suffix in NIFTI_SUFFIXES if (case_dir / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise CaseError(f"{found[0]}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _strip_nifti_suffix(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _candidates(case_dir: Path) -> dict[tuple[str, str], int]:
    """``{(naming, case id): files of that case}`` for the BraTS file names in ``case_dir``."""
    stems = [s for s in (_strip_nifti_suffix(p.name) for p in case_dir.iterdir() if p.is_file()) if s]
    scores: dict[tuple[str, str], int] = {}
    for naming, (sep, suffixes) in NAMINGS.items():
        for stem in stems:
            for suffix in suffixes.values():
                tail = f"{sep}{suffix}"
                if stem.endswith(tail) and len(stem) > len(tail):
                    key = (naming, stem[: -len(tail)])
                    scores[key] = scores.get(key, 0) + 1
    return scores


def detect_naming(case_dir: Path) -> tuple[str, str] | None:
    """``(naming, case_id)`` of the BraTS files in ``case_dir``, or None when
    it holds none. The case id is the folder name when files use it, else the
    common prefix found in the file names."""
    scores = _candidates(case_dir)
    if not scores:
        return None
    # prefer the folder's own name as the case id, then the most complete set
    best = max(scores, key=lambda k: (k[1] == case_dir.name, scores[k]))
    return best


def is_case_dir(path: Path) -> bool:
    return path.is_dir() and detect_naming(path) is not None


def find_cases(path: str | os.PathLike) -> list[Path]:
    """A BraTS case folder, or the sorted case folders directly inside ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a folder (expected a BraTS case folder or a folder of them)")
    if is_case_dir(path):
        return [path]
    cases = sorted(p for p in path.iterdir() if is_case_dir(p))
    if not cases:
        raise FileNotFoundError(
            f"{path}: no BraTS case folders found (expected files like <id>_flair.nii.gz or <id>-t2f.nii.gz)"
        )
    return cases


def _complete_cases(case_dir: Path) -> list[str]:
    """The case ids in ``case_dir`` with all four modalities."""
    complete = []
    for naming, case_id in _candidates(case_dir):
        sep, suffixes = NAMINGS[naming]
        if all(_find_file(case_dir, f"{case_id}{sep}{suffixes[key]}") for key in MODALITIES):
            complete.append(case_id)
    return sorted(set(complete))


def case_files(case_dir: str | os.PathLike, with_label: bool | None = True,
               naming: str | None = None) -> tuple[str, str, dict[str, Path]]:
    """``(naming, case_id, {modality/"seg": path})`` for a case folder; a
    missing file is a :class:`CaseError` naming the expected file, and so is a
    folder holding more than one complete case. ``with_label=None``: the
    segmentation when there is one."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise CaseError(f"{case_dir}: not a folder")
    detected = detect_naming(case_dir)
    if detected is None:
        raise CaseError(f"{case_dir}: no BraTS image files (<id>_flair.nii.gz or <id>-t2f.nii.gz naming)")
    found_naming, case_id = detected
    complete = _complete_cases(case_dir)
    if len(complete) > 1:
        raise CaseError(f"{case_dir}: holds {len(complete)} complete cases ({', '.join(complete)}); "
                        "put each case in a folder of its own")
    naming = naming or found_naming
    if naming not in NAMINGS:
        raise CaseError(f"{case_dir}: unknown file naming {naming!r}; choose one of {sorted(NAMINGS)}")
    sep, suffixes = NAMINGS[naming]
    wanted = list(MODALITIES) + (["seg"] if with_label or with_label is None else [])
    paths: dict[str, Path] = {}
    for key in wanted:
        stem = f"{case_id}{sep}{suffixes[key]}"
        path = _find_file(case_dir, stem)
        if path is None and key == "seg" and with_label is None:
            continue
        if path is None:
            what = "segmentation" if key == "seg" else f"{key.upper()} modality"
            raise CaseError(f"{case_dir / (stem + '.nii.gz')}: missing ({what} of case {case_id})")
        paths[key] = path
    return naming, case_id, paths


def load_nifti(path: Path):
    """``(image, voxels)`` of a NIfTI file whose header passed the checks below
    (before any voxel is read); every problem is a :class:`CaseError` naming it."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape, dtype = tuple(int(n) for n in img.shape), np.dtype(img.get_data_dtype())
        if len(shape) != 3:
            raise CaseError(f"{path}: expected a 3-D volume, got {len(shape)}-D shape {shape}")
        if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
            raise CaseError(f"{path}: header claims {shape} = {np.prod(shape, dtype=np.int64)} voxels, "
                            f"more than {MAX_VOXELS} (a corrupt header?)")
        if dtype.kind not in "biuf":
            raise CaseError(f"{path}: voxel type {dtype} is not a real number type")
        affine = img.affine
        if affine is None or not np.all(np.isfinite(affine)):
            raise CaseError(f"{path}: the header's affine is not finite")
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
            raise CaseError(f"{path}: voxel sizes {zooms} in the header are not positive finite numbers")
        data = np.asanyarray(img.dataobj)
        if data.dtype.kind not in "biuf":  # a scaling in the header can change the type
            raise CaseError(f"{path}: voxel type {data.dtype} is not a real number type")
    except CaseError:
        raise
    except Exception as exc:  # nibabel raises many kinds for corrupt files
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaseError(f"{path}: unreadable NIfTI file ({message})") from None
    return img, data


def load_case(
    case_dir: str | os.PathLike,
    label_convention: str | None = None,
    with_label: bool = True,
    naming: str | None = None,
    affine_tolerance: float = AFFINE_TOLERANCE,
) -> Case:
    """Read and validate one case folder.

    ``label_convention`` ("2018"/"2023"/"2024") overrides the convention
    implied by the file naming and the label values (``omkit.labels.convention_of``);
    ``naming`` overrides the detected naming. Checks: one case in the folder,
    four modalities (and the label when ``with_label``) present, 3-D, one
    shape, sane headers (real voxel type, finite affine, positive voxel sizes),
    affines equal within ``affine_tolerance``, finite intensities, a non-empty
    brain, no modality constant inside the brain (a blank or missing
    modality), label values inside the convention. Raises :class:`CaseError`.
    ``with_label=None`` reads the segmentation when the folder has one; a
    problem with it is then a warning, and the case has no label.
    """
    optional_label = with_label is None
    naming, case_id, paths = case_files(case_dir, with_label=with_label, naming=naming)
    convention = get_convention(label_convention or naming)
    channels = []
    ref_path = ref_img = None
    for key in MODALITIES:
        path = paths[key]
        img, data = load_nifti(path)
        if ref_img is None:
            ref_path, ref_img = path, img
        else:
            _check_like(path, img, data, ref_path, ref_img, affine_tolerance)
        if not np.all(np.isfinite(data)):
            count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise CaseError(f"{path}: {count} non-finite (NaN/inf) intensities")
        with np.errstate(over="ignore"):
            volume = np.asarray(data, dtype=np.float32)
        if not np.all(np.isfinite(volume)):  # finite in the file, beyond float32 (omkit computes in float32)
            peak = float(np.max(np.abs(data)))
            raise CaseError(f"{path}: intensities up to {peak:.3g} are beyond float32's range "
                            f"({np.finfo(np.float32).max:.3g}), which omkit computes in; rescale the volume")
        channels.append(to_omkit_axes(volume))
    image = np.ascontiguousarray(np.stack(channels))
    brain = check_brain(image, paths)
    label = None
    if "seg" in paths:
        try:
            label, convention = _read_label(paths["seg"], ref_path, ref_img, affine_tolerance, naming,
                                            label_convention, convention, brain)
        except CaseError as exc:
            if not optional_label:
                raise
            warnings.warn(f"{exc}; going on without this ground truth", stacklevel=2)
            paths = {k: v for k, v in paths.items() if k != "seg"}
    zooms = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[0], zooms[1])
    return Case(
        case_id=case_id,
        image=image,
        label=label,
        affine=np.asarray(ref_img.affine, dtype=np.float64),
        header=ref_img.header.copy(),
        spacing=spacing,
        convention=convention.name,
        paths=paths,
        naming=naming,
    )


def check_brain(image: np.ndarray, sources) -> np.ndarray:
    """The brain mask (any modality non-zero) of ``image (4, D, H, W)``, after checking
    that there is a brain and that no modality is constant inside it (a blank or missing
    modality); ``sources[modality]`` (a file, or where an array came from) starts each
    :class:`CaseError`'s message."""
    brain = np.any(image != 0, axis=0)
    if not brain.any():
        raise CaseError(f"{sources['flair']}: all four modalities are zero (no brain)")
    for c, key in enumerate(MODALITIES):
        inside = image[c][brain]
        low, high = float(inside.min()), float(inside.max())
        if low == high:
            what = "all zero" if low == 0 and not np.any(image[c]) else f"constant ({low:g}) inside the brain"
            raise CaseError(f"{sources[key]}: the {key.upper()} modality is {what}; each of the four modalities "
                            "must be a real image (a blank or missing modality cannot be segmented)")
    return brain


def _check_like(path: Path, img, data, ref_path: Path, ref_img, affine_tolerance: float) -> None:
    """``img`` has the shape and (within ``affine_tolerance``) the affine of the first volume."""
    if tuple(data.shape) != tuple(ref_img.shape):
        raise CaseError(f"{path}: shape {tuple(data.shape)} differs from {ref_path.name} {tuple(ref_img.shape)}")
    diff = float(np.max(np.abs(img.affine - ref_img.affine)))
    if diff > affine_tolerance:
        raise CaseError(
            f"{path}: affine differs from {ref_path.name} by {diff:.3g} (tolerance {affine_tolerance:g}); "
            "volumes are not co-registered"
        )


def _read_label(path: Path, ref_path: Path, ref_img, affine_tolerance: float, naming: str,
                label_convention: str | None, convention, brain: np.ndarray):
    """``(internal labels, convention)`` of the segmentation ``path``, checked
    against the first modality; problems are :class:`CaseError`."""
    img, seg = load_nifti(path)
    _check_like(path, img, seg, ref_path, ref_img, affine_tolerance)
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.all(np.isfinite(seg)):
            raise CaseError(f"{path}: label map has non-finite values")
        if np.any(seg != np.round(seg)):
            raise CaseError(f"{path}: label map has non-integer values")
    if seg.size and (float(np.min(seg)) < 0 or float(np.max(seg)) > 255):
        raise CaseError(f"{path}: label values {float(np.min(seg)):g}..{float(np.max(seg)):g} are outside 0..255")
    seg = to_omkit_axes(np.asarray(seg).astype(np.int64))
    if label_convention is None:
        convention = convention_of(naming, seg)
    try:
        return np.ascontiguousarray(convention.to_internal(seg, brain_mask=brain)), convention
    except ValueError as exc:
        raise CaseError(f"{path}: {exc} (override with label convention '2018', '2023' or '2024')") from None


def load_cases(
    case_dirs: Iterable[str | os.PathLike],
    skip_bad_cases: bool = False,
    **kw,
) -> list[Case]:
    """Load several cases; with ``skip_bad_cases`` a :class:`CaseError` is a
    warning and the case is left out (an error if none is left)."""
    cases = []
    for case_dir in case_dirs:
        try:
            cases.append(load_case(case_dir, **kw))
        except CaseError as exc:
            if not skip_bad_cases:
                raise
            warnings.warn(f"skipping case: {exc}", stacklevel=2)
    if not cases:
        raise CaseError("no usable cases left after skipping the bad ones")
    return cases


def validate_cases(
    case_dirs: Sequence[str | os.PathLike], skip_bad_cases: bool = False, **kw
) -> list[Path]:
    """Validate every case before training starts; returns the good folders.
    Without ``skip_bad_cases`` the first bad case raises its :class:`CaseError`."""
    good = []
    for case_dir in case_dirs:
        try:
            load_case(case_dir, **kw)
        except CaseError as exc:
            if not skip_bad_cases:
                raise
            warnings.warn(f"skipping case: {exc}", stacklevel=2)
            continue
        good.append(Path(case_dir))
    if not good:
        raise CaseError("no usable cases left after skipping the bad ones")
    return good
