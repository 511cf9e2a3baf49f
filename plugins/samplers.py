"""Built-in training patch samplers: where each task's patch centres are drawn
(Sec. III-A of the paper).

* ``brain`` (task 1): uniformly inside the brain;
* ``dilated_tumor`` (task 2): inside the ground-truth whole tumor dilated by
  ``radius`` voxels (a Euclidean ball; the paper's 5 by default), e.g.
  ``dilated_tumor(radius=3)``;
* ``core`` (task 3): inside the ground-truth tumor core (NCR/NET + enhancing);
* ``enhancing`` (not the paper's; for mixtures such as ``core:1+enhancing:1``):
  inside the ground-truth enhancing tumor. Cases are drawn uniformly, so a case
  with a thin rim of enhancement gets as many of these centres as one with a
  large enhancing tumor, where ``core`` centres mostly land in its necrosis.
* ``tumor_mimic`` (not the paper's; for mixtures such as
  ``dilated_tumor:3+tumor_mimic:1``): normal brain tissue farther than
  ``margin`` voxels from any tumor whose FLAIR is at least as bright as the
  ``quantile`` of the case's own whole-tumor FLAIR: the tissue a task confuses
  with edema (the false tumor of docs/RESULTS.md lies in such tissue), which
  the ``dilated_tumor`` sampler never shows task 2. Where fewer than
  ``min_voxels`` voxels qualify (or the case has no tumor to compare with), the
  ``min_voxels`` FLAIR-brightest voxels of that normal tissue stand in, so no
  case with normal tissue has an empty region.

The sampler interface, its base classes and the spec grammar are core
(:mod:`omkit.data.sampling`); this plug-in only defines and registers the
built-ins, as a third party registers its own.
"""
from __future__ import annotations

import numpy as np

from omkit.data.sampling import LabelRegionSampler, RegionSampler, label_region
from omkit.hookspecs import hookimpl
from omkit.data.brats import MODALITIES
from omkit.labels import CORE_CLASSES, ENHANCING, NORMAL, TUMOR_CLASSES
from omkit.morphology import dilate_ball
from omkit.protocol import SAMPLER_TUMOR_DILATION


class BrainSampler(RegionSampler):
    """Task 1: centres uniformly inside the brain (non-zero) mask."""

    task = 0
    key = "brain"

    def region(self, pre) -> np.ndarray:
        return np.asarray(pre.brain_mask, dtype=bool)


# the widest dilation an option may ask for: beyond any MRI's diagonal (a BraTS volume's is 374
# voxels), short of the overflow an infinite or astronomic radius meets in the distance transform
MAX_RADIUS = 1000


class DilatedTumorSampler(RegionSampler):
    """Task 2: centres inside the ground-truth whole tumor dilated by ``radius`` voxels."""

    task = 1
    key = "dilated_tumor"

    def __init__(self, radius: float = SAMPLER_TUMOR_DILATION):
        if not isinstance(radius, (int, float)) or isinstance(radius, bool) or not 0 <= radius <= MAX_RADIUS:
            raise ValueError(f"radius must be a number in [0, {MAX_RADIUS}], got {radius!r}")
        self.radius = float(radius)

    def region(self, pre) -> np.ndarray:
        return dilate_ball(label_region(pre, TUMOR_CLASSES, "task-2 sampling"), self.radius)


class CoreSampler(LabelRegionSampler):
    """Task 3: centres inside the ground-truth tumor core (NCR/NET + enhancing)."""

    task = 2
    key = "core"
    classes = CORE_CLASSES
    purpose = "task-3 sampling"


class EnhancingSampler(LabelRegionSampler):
    """Task 3: centres inside the ground-truth enhancing tumor."""

    task = 2
    key = "enhancing"
    classes = (ENHANCING,)
    purpose = "enhancing-tumor sampling"


class TumorMimicSampler(RegionSampler):
    """Normal tissue far from the tumor that is as FLAIR-bright as the tumor (hard negatives)."""

    task = 1
    key = "tumor_mimic"

    def __init__(self, quantile: float = 0.25, margin: float = SAMPLER_TUMOR_DILATION, min_voxels: int = 1000):
        for name, value, low, high in (("quantile", quantile, 0.0, 1.0), ("margin", margin, 0.0, MAX_RADIUS)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
        if not isinstance(min_voxels, int) or isinstance(min_voxels, bool) or min_voxels < 0:
            raise ValueError(f"min_voxels must be an integer >= 0, got {min_voxels!r}")
        self.quantile, self.margin, self.min_voxels = float(quantile), float(margin), min_voxels

    def region(self, pre) -> np.ndarray:
        tumor = label_region(pre, TUMOR_CLASSES, "tumor-mimic sampling")
        normal = (np.asarray(pre.label) == NORMAL) & ~dilate_ball(tumor, self.margin)
        flair = np.asarray(pre.image[MODALITIES.index("flair")])
        region = normal & (flair >= np.quantile(flair[tumor], self.quantile)) if tumor.any() else np.zeros_like(normal)
        if int(region.sum()) < self.min_voxels and normal.any():
            values = flair[normal]
            k = min(self.min_voxels, values.size)
            region = normal & (flair >= np.partition(values, values.size - k)[values.size - k])
        return region


@hookimpl
def omkit_register_samplers(registry):
    registry.add("brain", BrainSampler)
    registry.add("dilated_tumor", DilatedTumorSampler)
    registry.add("core", CoreSampler)
    registry.add("enhancing", EnhancingSampler)
    registry.add("tumor_mimic", TumorMimicSampler)
