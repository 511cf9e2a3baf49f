"""The paper's preprocessing (Sec. IV-C): each modality z-scored inside the
brain (non-zero) mask, the volume cropped to the brain's bounding box. The box
is kept so that predictions can be put back into the full volume."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .brats import Case

PREPROCESSING = {"normalization": "zscore-nonzero", "crop": "brain-bbox", "version": 1}


@dataclass
class Preprocessed:
    """A preprocessed case. ``image`` float32 ``(4, d, h, w)`` (zero outside the
    brain), ``label`` uint8 internal classes ``(d, h, w)`` or None,
    ``brain_mask`` bool ``(d, h, w)``, ``bbox`` three slices into the full
    ``full_shape`` volume. The arrays may be read-only memory maps (cache)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    brain_mask: np.ndarray
    bbox: tuple[slice, slice, slice]
    full_shape: tuple[int, int, int]
    affine: np.ndarray
    header: object
    spacing: tuple[float, float, float]
    convention: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any modality is non-zero (BraTS volumes are skull-stripped)."""
    return np.any(np.asarray(image) != 0, axis=0)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest box holding every True voxel of a 3-D mask."""
    if not mask.any():
        raise ValueError("empty mask has no bounding box")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def zscore_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each channel to zero mean, unit variance over ``mask``; zero outside it.
    A channel constant over ``mask`` (std 0, e.g. an all-zero modality) becomes
    zero everywhere rather than dividing by zero. (``load_case`` refuses such
    a case; this keeps the function total for arrays built in code.)"""
    out = np.zeros(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        if values.size == 0:
            continue
        mean, std = values.mean(), values.std()
        if std > 0:
            out[c][mask] = ((values - mean) / std).astype(np.float32)
    return out


def preprocess_case(case: Case) -> Preprocessed:
    """z-score inside the brain mask, then crop to the brain's bounding box."""
    mask = brain_mask(case.image)
    bbox = bounding_box(mask)
    cropped_mask = mask[bbox]
    image = zscore_in_mask(case.image[(slice(None), *bbox)], cropped_mask)
    label = None if case.label is None else np.ascontiguousarray(case.label[bbox])
    return Preprocessed(
        case_id=case.case_id,
        image=image,
        label=label,
        brain_mask=np.ascontiguousarray(cropped_mask),
        bbox=bbox,
        full_shape=tuple(case.image.shape[1:]),
        affine=case.affine,
        header=case.header,
        spacing=case.spacing,
        convention=case.convention,
    )


def uncrop(volume: np.ndarray, bbox: tuple[slice, slice, slice], full_shape, fill=0) -> np.ndarray:
    """Put a cropped map ``(..., d, h, w)`` back into a ``(..., *full_shape)``
    volume filled with ``fill`` (leading axes, e.g. channels, are kept)."""
    volume = np.asarray(volume)
    full_shape = tuple(int(s) for s in full_shape)
    expected = tuple(s.stop - s.start for s in bbox)
    if tuple(volume.shape[-3:]) != expected:
        raise ValueError(f"cropped volume has shape {tuple(volume.shape[-3:])}, the box {expected}")
    out = np.full(volume.shape[:-3] + full_shape, fill, dtype=volume.dtype)
    out[(Ellipsis, *bbox)] = volume
    return out
