"""Built-in training patch samplers: where each task's patch centres are drawn
(Sec. III-A of the paper).

* ``brain`` (task 1): uniformly inside the brain;
* ``dilated_tumor`` (task 2): inside the ground-truth whole tumor dilated by
  ``dilation`` voxels (5 in the paper; a Euclidean ball);
* ``core`` (task 3): inside the ground-truth tumor core (NCR/NET + enhancing);
* ``enhancing`` (not the paper's; for mixtures such as ``core:1+enhancing:1``):
  inside the ground-truth enhancing tumor. Cases are drawn uniformly, so a case
  with a thin rim of enhancement gets as many of these centres as one with a
  large enhancing tumor, where ``core`` centres mostly land in its necrosis.

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
from omkit.labels import CORE_CLASSES, ENHANCING, TUMOR_CLASSES

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


class LabelRegionSampler(RegionSampler):
    """Centres inside the ground-truth voxels of ``classes``."""

    classes: tuple[int, ...] = ()
    purpose = "sampling"  # for the error message

    def region(self, pre) -> np.ndarray:
        if pre.label is None:
            raise ValueError(f"case {pre.case_id}: {self.purpose} needs the ground truth")
        return np.isin(pre.label, self.classes)


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


class MixtureSampler:
    """Centres drawn from several samplers in fixed proportions, e.g. half of
    task 1's patches uniformly in the brain and half in the (dilated) tumor.

    The paper samples task 1 uniformly in the brain; with a budget of minutes
    instead of 400k patches per epoch, so few of those patches touch tumor
    that task 1 learns to say "normal" everywhere (the SegResNet baseline
    draws half its crops around the tumor for the same reason). Spelled in a
    run's settings as ``"brain:1+dilated_tumor:1"`` (see :func:`parse_sampler_spec`).

    Its region of a case is the tuple of its parts' regions; ``draw`` splits the
    count multinomially by weight and shuffles the parts' centres together.
    """

    def __init__(self, parts):
        parts = [(sampler, float(weight)) for sampler, weight in parts]
        if len(parts) < 2:
            raise ValueError("a sampler mixture needs at least two parts")
        if min(w for _, w in parts) <= 0:
            raise ValueError(f"sampler mixture weights must be > 0, got {[w for _, w in parts]}")
        self.parts = parts
        self.task = parts[0][0].task
        total = sum(w for _, w in parts)
        self.weights = np.array([w / total for _, w in parts])
        self.key = "+".join(f"{getattr(s, 'cache_key', type(s).__name__)}:{w:g}" for s, w in parts)

    cache_key = property(lambda self: self.key)

    def region(self, pre):
        return tuple(sampler.region(pre) for sampler, _ in self.parts)

    def draw(self, regions, shapes, count: int, rng: np.random.Generator) -> np.ndarray:
        counts = rng.multinomial(count, self.weights)
        drawn = [
            sampler.draw([case_regions[i] for case_regions in regions], shapes, int(n), rng)
            for i, ((sampler, _), n) in enumerate(zip(self.parts, counts))
        ]
        centres = np.concatenate(drawn) if drawn else np.empty((0, 4), dtype=np.int64)
        return centres[rng.permutation(len(centres))]


def parse_sampler_spec(spec: str, registry, dilation: float = 5):
    """A sampler from its name (``"brain"``) or a weighted mixture of names
    (``"brain:1+dilated_tumor:1"``); ``dilation`` goes to ``dilated_tumor``."""
    def build(name):
        cls = registry.get(name.strip())
        return cls(dilation=dilation) if name.strip() == "dilated_tumor" else cls()

    if "+" not in spec and ":" not in spec:
        return build(spec)
    parts = []
    for part in spec.split("+"):
        name, sep, weight = part.partition(":")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"sampler spec {spec!r}: {weight!r} is not a weight (expected NAME:WEIGHT+NAME:WEIGHT)") from None
        parts.append((build(name), value))
    return MixtureSampler(parts)


# the sampler each task uses by default
DEFAULT_TASK_SAMPLERS = ("brain", "dilated_tumor", "core")


@hookimpl
def omkit_register_samplers(registry):
    registry.add("brain", BrainSampler)
    registry.add("dilated_tumor", DilatedTumorSampler)
    registry.add("core", CoreSampler)
    registry.add("enhancing", EnhancingSampler)
