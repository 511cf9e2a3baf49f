"""Cutting fixed-size patches around centres, padding beyond the volume's border."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def patch_bounds(centre: Sequence[int], patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and stop of the patch of ``patch_size`` whose centre
    voxel is ``centre`` (for an even size, the centre is the voxel just past the middle)."""
    size = np.asarray(patch_size, dtype=np.int64)
    start = np.asarray(centre, dtype=np.int64) - size // 2
    return start, start + size


def extract_patch(volume: np.ndarray, centre: Sequence[int], patch_size: Sequence[int], fill=0) -> np.ndarray:
    """The patch of ``volume`` (``(..., D, H, W)``; leading axes kept) around
    ``centre``; voxels outside the volume are ``fill`` (0 = background after
    z-scoring, the background class for labels)."""
    spatial = volume.shape[-3:]
    start, stop = patch_bounds(centre, patch_size)
    out = np.full(volume.shape[:-3] + tuple(int(s) for s in patch_size), fill, dtype=volume.dtype)
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, spatial))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
    if all(s.stop > s.start for s in src):
        out[(Ellipsis, *dst)] = volume[(Ellipsis, *src)]
    return out


def extract_patches(cases, centres: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Images ``(N, C, *patch_size)`` float32 (C: the cases' channels, 4 modalities) and labels
    ``(N, *patch_size)`` uint8 (None when the cases have no labels) for centre rows ``(case, z, y, x)``.
    Each case needs ``image`` and ``label`` (may be None)."""
    n = len(centres)
    channels = cases[0].image.shape[0] if len(cases) else 4
    images = np.zeros((n, channels) + tuple(patch_size), dtype=np.float32)
    with_labels = n > 0 and all(cases[int(c)].label is not None for c in np.unique(centres[:, 0]))
    labels = np.zeros((n,) + tuple(patch_size), dtype=np.uint8) if with_labels else None
    for i, (case, *centre) in enumerate(centres.tolist()):
        pre = cases[case]
        images[i] = extract_patch(pre.image, centre, patch_size)
        if labels is not None:
            labels[i] = extract_patch(pre.label, centre, patch_size)
    return images, labels
