"""A :class:`~omkit.data.brats.Case` from images held in memory (no files):
what ``omkit.Segmenter`` segments.

The image comes in the NIfTI axis order, as nibabel reads it: a ``(4, X, Y, Z)``
array (channels FLAIR, T1, T1c, T2) or a mapping of modality names to
``(X, Y, Z)`` arrays. Names are omkit's (``flair``, ``t1``, ``t1c``, ``t2``) or
a BraTS file naming's suffixes (2018: ``t1ce``; 2023: ``t2f``, ``t1n``, ``t1c``,
``t2w``). Arrays may be numpy or torch tensors (on any device: they are copied to
the CPU). The case is validated as a case folder is: 3-D volumes of one shape,
finite intensities, a non-empty brain, no blank or constant modality; every
problem is a :class:`~omkit.data.brats.CaseError` of one line naming the array.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .brats import MODALITIES, NAMINGS, Case, CaseError, check_brain, to_omkit_axes

# every name a modality may go by: omkit's, and each file naming's suffix
MODALITY_ALIASES = {name: name for name in MODALITIES}
for _sep, _suffixes in NAMINGS.values():
    MODALITY_ALIASES.update({suffix: key for key, suffix in _suffixes.items() if key != "seg"})


def to_numpy(array) -> np.ndarray:
    """A float32 numpy copy (or view) of a numpy array, a torch tensor on any device, or a sequence."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # a torch tensor, without importing torch here
        array = array.detach().cpu().float().numpy()
    return np.asarray(array, dtype=np.float32)


def _channels(image, what: str) -> tuple[list[np.ndarray], dict[str, str]]:
    """The four ``(X, Y, Z)`` volumes in omkit's modality order and what to call each in errors."""
    if isinstance(image, Mapping):
        by_modality: dict[str, tuple[str, object]] = {}
        for name, volume in image.items():
            key = MODALITY_ALIASES.get(str(name).lower())
            if key is None:
                raise CaseError(f"{what}[{name!r}]: unknown modality; expected {', '.join(MODALITIES)} "
                                f"(or a file naming's {', '.join(sorted(set(MODALITY_ALIASES) - set(MODALITIES)))})")
            if key in by_modality:
                raise CaseError(f"{what}: {by_modality[key][0]!r} and {name!r} are both the {key.upper()} modality")
            by_modality[key] = (str(name), volume)
        missing = [key for key in MODALITIES if key not in by_modality]
        if missing:
            raise CaseError(f"{what}: no {', '.join(m.upper() for m in missing)} volume; a case needs all four "
                            f"modalities ({', '.join(MODALITIES)})")
        sources = {key: f"{what}[{by_modality[key][0]!r}]" for key in MODALITIES}
        return [to_numpy(by_modality[key][1]) for key in MODALITIES], sources
    array = to_numpy(image)
    if array.ndim != 4 or array.shape[0] != len(MODALITIES):
        raise CaseError(f"{what}: expected a (4, X, Y, Z) array (FLAIR, T1, T1c, T2) or a dict of modality "
                        f"volumes, got shape {tuple(array.shape)}")
    sources = {key: f"{what}[{c}] ({key.upper()})" for c, key in enumerate(MODALITIES)}
    return list(array), sources


def _affine_and_spacing(affine, spacing, what: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The 4x4 affine and the voxel sizes in NIfTI ``(X, Y, Z)`` order: ``spacing`` when
    given, else the affine's column lengths; without either, 1 mm voxels."""
    if affine is None:
        affine = np.eye(4)
        if spacing is not None:
            affine[:3, :3] = np.diag(np.asarray(spacing, dtype=np.float64))
    if hasattr(affine, "detach"):  # a torch tensor
        affine = affine.detach().cpu().double().numpy()
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise CaseError(f"{what}: the affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if spacing is None:
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise CaseError(f"{what}: spacing must be three positive voxel sizes (X, Y, Z) in mm, got {spacing}")
    return affine, spacing  # type: ignore[return-value]


def case_from_arrays(image, affine=None, spacing: Sequence[float] | None = None, case_id: str = "in-memory",
                     convention: str = "2018", what: str = "image") -> Case:
    """A validated :class:`Case` (omkit's ``(4, D, H, W)`` order) from an image in NIfTI
    order; ``affine`` (4x4, voxel to world) and ``spacing`` (mm, ``(X, Y, Z)``) describe the
    voxels (default: 1 mm, identity) and go into the case's NIfTI header; ``what`` names
    the image in error messages."""
    import nibabel as nib

    volumes, sources = _channels(image, what)
    shapes = {tuple(v.shape) for v in volumes}
    if len(shapes) != 1:
        raise CaseError(f"{what}: the modalities differ in shape: "
                        + ", ".join(f"{sources[k]} {tuple(v.shape)}" for k, v in zip(MODALITIES, volumes)))
    for key, volume in zip(MODALITIES, volumes):
        if volume.ndim != 3:
            raise CaseError(f"{sources[key]}: expected a 3-D (X, Y, Z) volume, got shape {tuple(volume.shape)}")
        if not np.all(np.isfinite(volume)):
            count = int(volume.size - np.count_nonzero(np.isfinite(volume)))
            raise CaseError(f"{sources[key]}: {count} non-finite (NaN/inf) intensities")
    affine, spacing = _affine_and_spacing(affine, spacing, what)
    data = np.ascontiguousarray(np.stack([to_omkit_axes(v) for v in volumes]))
    check_brain(data, sources)
    header = nib.Nifti1Header()
    header.set_data_shape(volumes[0].shape)
    header.set_zooms(spacing)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    return Case(case_id=case_id, image=data, label=None, affine=affine, header=header,
                spacing=(spacing[2], spacing[0], spacing[1]), convention=convention, naming="")
