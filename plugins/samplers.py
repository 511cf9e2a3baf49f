"""Built-in training patch samplers: where each task's patch centres are drawn
(Sec. III-A of the paper).

* ``brain`` (task 1): uniformly inside the brain;
* ``dilated_tumor`` (task 2): inside the ground-truth whole tumor dilated by
  ``dilation`` voxels (5 in the paper; a Euclidean ball);
* ``core`` (task 3): inside the ground-truth tumor core (NCR/NET + enhancing).

The sampler interface (what a third-party sampler registered through
``omkit_register_samplers`` implements):

* built as ``cls(**options)``; attribute ``task`` (0-based task it serves by
  default) and ``key`` (a string naming the sampler and its settings, used to
  cache regions; subclass :class:`RegionSampler` to get ``draw`` and a default);
* ``region(pre) -> bool (d, h, w)``: allowed centres of a preprocessed case;
* ``draw(regions, shapes, count, rng) -> int64 (count, 4)`` rows ``(case, z, y, x)``:
  a case is picked uniformly among the cases whose region is non-empty, then a
  voxel uniformly inside its region. ``regions`` are the cases' flat region
  indices (``np.flatnonzero(region(pre))``). Vectorised: one pass per case,
  never one per voxel or per patch.
"""
from __future__ import annotations

import numpy as np

from omkit.hookspecs import hookimpl
from omkit.labels import CORE_CLASSES, TUMOR_CLASSES

DEFAULT_PATCH_SIZE = (16, 32, 32)  # (D, H, W): the paper's 32 x 32 x 16


class RegionSampler:
    """Uniform centres inside a per-case region; subclasses define the region."""

    task = 0
    key = ""  # subclasses name their settings here; empty: the class's import path

    def region(self, pre) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must define region(pre)")

    @property
    def cache_key(self) -> str:
        return self.key or f"{type(self).__module__}.{type(self).__qualname__}"

    def draw(self, regions, shapes, count: int, rng: np.random.Generator) -> np.ndarray:
        sizes = np.array([len(r) for r in regions], dtype=np.int64)
        eligible = np.flatnonzero(sizes > 0)
        if count and not len(eligible):
            raise ValueError(f"{type(self).__name__}: no case has a non-empty sampling region")
        cases = eligible[rng.integers(len(eligible), size=count)]
        # a uniform position inside the chosen case's region
        positions = np.floor(rng.random(count) * sizes[cases]).astype(np.int64)
        flat = np.empty(count, dtype=np.int64)
        for case in np.unique(cases):
            chosen = cases == case
            flat[chosen] = np.asarray(regions[case])[positions[chosen]]
        hw = np.array([s[1] * s[2] for s in shapes], dtype=np.int64)[cases]
        w = np.array([s[2] for s in shapes], dtype=np.int64)[cases]
        return np.stack([cases, flat // hw, (flat % hw) // w, flat % w], axis=1)


class BrainSampler(RegionSampler):
    """Task 1: centres uniformly inside the brain (non-zero) mask."""

    task = 0
    key = "brain"

    def region(self, pre) -> np.ndarray:
        return np.asarray(pre.brain_mask, dtype=bool)


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a Euclidean ball of ``radius`` voxels (via a distance transform)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if radius <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius


class DilatedTumorSampler(RegionSampler):
    """Task 2: centres inside the ground-truth whole tumor dilated by ``dilation`` voxels."""

    task = 1

    def __init__(self, dilation: float = 5):
        if dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")
        self.dilation = dilation
        self.key = f"dilated_tumor_r{dilation:g}"

    def region(self, pre) -> np.ndarray:
        if pre.label is None:
            raise ValueError(f"case {pre.case_id}: task-2 sampling needs the ground truth")
        return dilate(np.isin(pre.label, TUMOR_CLASSES), self.dilation)


class CoreSampler(RegionSampler):
    """Task 3: centres inside the ground-truth tumor core (NCR/NET + enhancing)."""

    task = 2
    key = "core"

    def region(self, pre) -> np.ndarray:
        if pre.label is None:
            raise ValueError(f"case {pre.case_id}: task-3 sampling needs the ground truth")
        return np.isin(pre.label, CORE_CLASSES)


# the sampler each task uses by default
DEFAULT_TASK_SAMPLERS = ("brain", "dilated_tumor", "core")


@hookimpl
def omkit_register_samplers(registry):
    registry.add("brain", BrainSampler)
    registry.add("dilated_tumor", DilatedTumorSampler)
    registry.add("core", CoreSampler)
