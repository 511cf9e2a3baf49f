"""Binary morphology shared by training (sampling regions) and inference (task
2's ROI): one dilation by a Euclidean ball; and the depth of a mask's voxels
below its surface (the analysis scripts' brain-edge band)."""
from __future__ import annotations

import numpy as np


def dilate_ball(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of ``mask`` (bool, any number of axes) by a Euclidean
    ball of ``radius`` voxels, as a new bool array. Computed on the mask's
    bounding box grown by the radius (a distance transform), so the cost
    follows the mask, not the volume."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0 or not mask.any():
        return mask.copy()
    from scipy.ndimage import distance_transform_edt

    reach = int(np.ceil(radius))
    box = tuple(
        slice(max(int(idx.min()) - reach, 0), min(int(idx.max()) + reach + 1, n))
        for idx, n in zip(np.nonzero(mask), mask.shape)
    )
    grown = np.zeros_like(mask)
    grown[box] = distance_transform_edt(~mask[box]) <= radius
    return grown


def depth_below_surface(mask: np.ndarray) -> np.ndarray:
    """Per voxel of ``mask``, the Euclidean distance in voxels to the nearest voxel
    outside it (0 outside); the array's own border counts as outside, so a mask
    cropped to its bounding box gets the depths it had uncropped."""
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    return distance_transform_edt(padded)[(slice(1, -1),) * padded.ndim]
