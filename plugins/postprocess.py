"""Built-in post-processing steps (paper Sec. III-D), registered through the
same hook a third party uses (``omkit_register_postprocessors``).

Both steps work on an internal class map ``(D, H, W)`` (see ``omkit.labels``)
and the z-scored image ``(4, D, H, W)`` (FLAIR, T1, T1c, T2), and return a new
map; tumor components are 3-D connected with 26-connectivity (configurable).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from omkit.hookspecs import hookimpl
from omkit.labels import EDEMA, ENHANCING, NCR_NET, NORMAL, TUMOR_CLASSES
from omkit.protocol import (
    COMPONENT_CONNECTIVITY,
    KMEANS_COMPONENT_ET_RATIO,
    KMEANS_GLOBAL_ET_RATIO,
    KMEANS_MAX_ET_VOXELS,
    SMALL_COMPONENT_FRACTION,
    SMALL_COMPONENT_MAX_VOXELS,
)

T1C_CHANNEL = 2


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def tumor_components(labels: np.ndarray, connectivity: int = COMPONENT_CONNECTIVITY) -> tuple[np.ndarray, int]:
    """Connected components of the predicted tumor (every tumor class)."""
    return ndimage.label(np.isin(labels, TUMOR_CLASSES), structure=_structure(connectivity))


class RemoveSmallComponents:
    """Step 1: remove tumor components smaller than
    ``tau = min(max_voxels, fraction * V_max)`` voxels, ``V_max`` being the
    largest component's volume (paper: min(2000, 0.1 V_max), on BraTS's 1 mm
    isotropic voxels); removed voxels become normal tissue (they were predicted
    inside the brain). ``max_volume_mm3``: the absolute limit as a volume instead,
    converted with the voxel spacing the pipeline passes (for data of another
    resolution); given, it replaces ``max_voxels``."""

    order = 10
    default_enabled = True

    def __init__(self, max_voxels: int = SMALL_COMPONENT_MAX_VOXELS, fraction: float = SMALL_COMPONENT_FRACTION,
                 connectivity: int = COMPONENT_CONNECTIVITY, max_volume_mm3: float | None = None):
        if max_voxels < 0 or not 0 <= fraction <= 1 or (max_volume_mm3 is not None and not max_volume_mm3 >= 0):
            raise ValueError(f"need max_voxels >= 0, 0 <= fraction <= 1 and max_volume_mm3 >= 0, got {max_voxels}, "
                             f"{fraction}, {max_volume_mm3}")
        self.max_voxels, self.fraction, self.connectivity = max_voxels, fraction, connectivity
        self.max_volume_mm3 = max_volume_mm3

    def threshold(self, sizes: np.ndarray, spacing=None) -> float:
        limit = self.max_voxels
        if self.max_volume_mm3 is not None:
            if spacing is None:
                raise ValueError("remove_small_components: max_volume_mm3 needs the voxel spacing, which was not given")
            limit = self.max_volume_mm3 / float(np.prod(spacing))
        return min(limit, self.fraction * float(sizes.max())) if sizes.size else 0.0

    def __call__(self, labels: np.ndarray, image: np.ndarray | None = None, spacing=None) -> np.ndarray:
        components, count = tumor_components(labels, self.connectivity)
        if count == 0:
            return labels.copy()
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        small = np.flatnonzero(sizes < self.threshold(sizes, spacing)) + 1
        out = labels.copy()
        out[np.isin(components, small)] = NORMAL
        return out


class KMeansEdemaToNecrosis:
    """Step 2: non-enhancing core predicted as edema (paper Sec. III-D).

    When enhancing tumor is scarce overall (``vol_ET / vol_WT < global_ratio``,
    0.1), then in each tumor component ``n`` with ``vol_ET(n) / vol_WT(n) <
    component_ratio`` (0.05) and ``vol_ET(n) < max_enhancing`` (1000 voxels),
    the component's edema voxels are split by K-means (k = 2) on their z-scored
    intensities (all four modalities); the cluster with the lower mean T1c
    becomes NCR/NET. Only edema labels ever change."""

    order = 20
    default_enabled = True

    def __init__(self, global_ratio: float = KMEANS_GLOBAL_ET_RATIO, component_ratio: float = KMEANS_COMPONENT_ET_RATIO,
                 max_enhancing: int = KMEANS_MAX_ET_VOXELS, connectivity: int = COMPONENT_CONNECTIVITY, seed: int = 0):
        self.global_ratio, self.component_ratio = global_ratio, component_ratio
        self.max_enhancing, self.connectivity, self.seed = max_enhancing, connectivity, seed

    def __call__(self, labels: np.ndarray, image: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans

        image = np.asarray(image)
        if image.ndim != 4 or image.shape[1:] != labels.shape or image.shape[0] <= T1C_CHANNEL:
            raise ValueError(f"K-means step needs the image (4, D, H, W) matching labels {labels.shape}, got {image.shape}")
        out = labels.copy()
        tumor_volume = int(np.isin(labels, TUMOR_CLASSES).sum())
        if tumor_volume == 0 or (labels == ENHANCING).sum() / tumor_volume >= self.global_ratio:
            return out
        components, count = tumor_components(labels, self.connectivity)
        ids = components.ravel()
        tumor_n = np.bincount(ids, minlength=count + 1)
        enhancing_n = np.bincount(ids, weights=(labels.ravel() == ENHANCING), minlength=count + 1)
        for n in range(1, count + 1):
            if enhancing_n[n] / tumor_n[n] >= self.component_ratio or enhancing_n[n] >= self.max_enhancing:
                continue
            edema = (components == n) & (labels == EDEMA)
            features = image[:, edema].T  # (voxels, modalities)
            if features.shape[0] < 2 or np.ptp(features, axis=0).max() == 0:
                continue  # nothing to split
            assignment = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit_predict(features)
            t1c_means = [features[assignment == c, T1C_CHANNEL].mean() for c in (0, 1)]
            darker = int(np.argmin(t1c_means))
            coords = np.nonzero(edema)
            to_core = assignment == darker
            out[tuple(c[to_core] for c in coords)] = NCR_NET
        return out


@hookimpl
def omkit_register_postprocessors(registry):
    registry.add("remove_small_components", RemoveSmallComponents)
    registry.add("kmeans_edema_to_necrosis", KMeansEdemaToNecrosis)
