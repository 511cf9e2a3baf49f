"""Training-patch augmentation: the patch-transform interface, the ``--augment``
spec, and the pipeline that applies it to every training sample.

A spec uses the ``--samplers`` grammar (:mod:`omkit.data.sampler_specs`), with
each part's weight read as the probability that the transform applies to a
sample (no weight: always)::

    mirror:0.5+rotate(degrees=15):0.2+scale:0.2+gamma:0.3+noise(std=0.1):0.1

Names are looked up in the plug-ins' ``transform`` registry; the built-ins
(``plugins/augment.py``, on MONAI's dictionary transforms) register through
``omkit_register_transforms`` as a third party's do.

The patch-transform interface (subclass :class:`PatchTransform`):

* built as ``cls(**options)``; options are ``__init__`` keywords;
* ``spatial`` (bool, class attribute): the transform moves voxels. It gets the
  label too and must resample it with nearest neighbour; the pipeline cuts
  :meth:`~PatchTransform.margin` extra voxels of the case on every side of the
  patch first, so that what a rotation or a zoom brings into the patch is
  image, not padding, and crops back to the patch once all transforms ran;
* ``__call__(sample, rng) -> sample``, where ``sample`` is a dict with
  ``image`` float32 ``(C, D, H, W)`` (the z-scored modalities), ``label``
  uint8 ``(D, H, W)`` (``None`` when the case has none) and, when the network
  reads ``mri+asymmetry``, ``mirror`` float32 ``(C, D, H, W)`` (the same patch
  of the case's mirror image, to move and rescale exactly like ``image``).
  It returns a dict with the same keys, shapes and dtypes, and draws every
  random number from ``rng`` (a :class:`numpy.random.Generator`), never from a
  global stream: that is what makes a batch a function of
  ``(seed, rank, epoch, step)`` whatever the worker and however often the run
  resumed.

Intensity transforms act on the brain only: voxels that are zero in every
modality (outside the skull-stripped brain, and the padding beyond a case's
border) are zero again after them, as inference sees them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .sampler_specs import build_sampler, parse_spec

FLAG = "--augment"
KIND = "transform"
# a transform's random stream: (seed, rank, epoch, step, task, AUGMENT_STREAM); the patch
# samplers draw from (seed, rank, epoch, task), so the two never share numbers
AUGMENT_STREAM = 0x6175


class PatchTransform:
    """Base class of patch transforms: an intensity transform by default
    (``spatial = False``, no margin)."""

    spatial = False

    def margin(self, size: Sequence[int]) -> tuple[int, int, int]:
        """Voxels of context this transform needs on each side of a patch of ``size``."""
        return (0, 0, 0)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define __call__(sample, rng)")


@dataclass(frozen=True)
class Step:
    name: str
    transform: object
    probability: float


def _probability(name: str, weight: float | None, spec: str) -> float:
    p = 1.0 if weight is None else float(weight)
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"{FLAG} {spec!r}: {name}: the probability after ':' must be in [0, 1], got {weight}")
    return p


def check_augment_spec(spec: str) -> str:
    """``spec`` if its grammar and probabilities are sound (names are looked up later);
    the empty spec is no augmentation."""
    if not isinstance(spec, str):
        raise ValueError(f"{FLAG}: expected a spec such as 'mirror:0.5+gamma:0.3', got {spec!r}")
    if spec.strip():
        for part in parse_spec(spec, FLAG, KIND):
            _probability(part.name, part.weight, spec)
    return spec


class Augmentation:
    """The transforms of one ``--augment`` spec, applied in the spec's order."""

    def __init__(self, steps: Sequence[Step] = (), spec: str = ""):
        self.steps = tuple(steps)
        self.spec = spec

    def __bool__(self) -> bool:
        return bool(self.steps)

    @classmethod
    def from_spec(cls, spec: str, registry) -> "Augmentation":
        """The pipeline ``spec`` describes; names looked up in ``registry`` (the
        plug-ins' ``transform`` registry: ``omkit.get_plugins().registry("transform")``)."""
        check_augment_spec(spec)
        if not spec.strip():
            return cls((), spec)
        steps = []
        for part in parse_spec(spec, FLAG, KIND):
            transform = build_sampler(part, registry, spec, FLAG, KIND)
            if not callable(transform):
                raise ValueError(f"{FLAG} {spec!r}: transform {part.name!r} is not callable as transform(sample, rng)")
            steps.append(Step(part.name, transform, _probability(part.name, part.weight, spec)))
        return cls(steps, spec)

    def _step_margins(self, size: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """Each step's context per side for a patch of ``size`` (zero for intensity transforms), computed
        once per size: a rotation's bound searches a grid of angles, too much to repeat per sample."""
        size = tuple(int(s) for s in size)
        cache = self.__dict__.setdefault("_margins", {})
        if size not in cache:
            margins = []
            for step in self.steps:
                own = tuple(int(m) for m in step.transform.margin(size)) \
                    if getattr(step.transform, "spatial", False) else (0, 0, 0)
                if len(own) != 3 or min(own) < 0:
                    raise ValueError(f"{FLAG}: transform {step.name!r}: margin() must give three voxel counts "
                                     f">= 0, got {own}")
                margins.append(own)
            cache[size] = tuple(margins)
        return cache[size]

    def margin(self, size: Sequence[int], steps: Sequence[Step] | None = None) -> tuple[int, ...]:
        """Context voxels per side that the spatial transforms (of ``steps``, by default all) need: the
        sum, since each moves the last one's output."""
        chosen = {id(step) for step in (self.steps if steps is None else steps)}  # a spec may repeat a step
        own = [m for step, m in zip(self.steps, self._step_margins(size)) if id(step) in chosen]
        return tuple(int(sum(axis)) for axis in zip((0, 0, 0), *own))

    def apply(self, sample: dict, size: Sequence[int], rng: np.random.Generator) -> dict:
        """One sample, cut with :meth:`margin` on each side, through the transforms whose draw (against
        their probability) comes up, and cropped to ``size``. Only the margin of the transforms drawn is
        resampled: a sample no spatial transform moves costs a crop."""
        chosen = [step for step in self.steps if rng.random() < step.probability]
        full, needed = self.margin(size), self.margin(size, chosen)
        sample = crop_centre(sample, [f - n for f, n in zip(full, needed)])
        outside = ~np.any(sample["image"] != 0, axis=0)  # no modality: background or padding
        for step in chosen:
            spatial = bool(getattr(step.transform, "spatial", False))
            out = step.transform(dict(sample), rng)
            _check_output(step.name, sample, out)
            if spatial:
                outside = ~np.any(out["image"] != 0, axis=0)
            else:  # the brain's outline stays where inference sees it
                for key in ("image", "mirror"):
                    if key in out:
                        out[key][:, outside] = 0
                out["label"] = sample["label"]  # an intensity change never moves a label
            sample = out
        return crop_centre(sample, needed)


def crop_centre(sample: dict, margin: Sequence[int]) -> dict:
    """``sample`` without ``margin`` voxels on each side."""
    if not any(margin):
        return sample
    inner = tuple(slice(m, -m if m else None) for m in margin)
    out = {}
    for key, value in sample.items():
        if value is None:
            out[key] = None
        elif key == "label":
            out[key] = np.ascontiguousarray(value[inner])
        else:
            out[key] = np.ascontiguousarray(value[(slice(None),) + inner])
    return out


def _check_output(name: str, before: dict, after) -> None:
    """A transform keeps every key's shape and dtype: one line naming it otherwise."""
    if not isinstance(after, dict):
        raise TypeError(f"{FLAG}: transform {name!r} returned {type(after).__name__}, expected the sample dict")
    for key, value in before.items():
        got = after.get(key)
        if value is None:
            if got is not None:
                raise TypeError(f"{FLAG}: transform {name!r} made a {key!r} the sample did not have")
            continue
        if not isinstance(got, np.ndarray) or got.shape != value.shape or got.dtype != value.dtype:
            what = f"{type(got).__name__} {getattr(got, 'shape', '')} {getattr(got, 'dtype', '')}".strip()
            raise TypeError(f"{FLAG}: transform {name!r} must keep {key!r} a numpy {value.dtype} array of shape "
                            f"{tuple(value.shape)}, got {what}")


def augment_rng(seed: int, rank: int, epoch: int, step: int, task: int) -> np.random.Generator:
    """The random stream of one task's batch at one step (shared by its samples, in order)."""
    return np.random.default_rng([seed, rank, epoch, step, task, AUGMENT_STREAM])


# -- the contract, for built-ins and third parties alike -----------------------------------------

def _lesion_sample(size: Sequence[int], margin: Sequence[int], with_mirror: bool, channels: int = 4) -> dict:
    """A sample of ``size`` plus ``margin`` per side, all brain (0.5 in every modality), with a ball of
    radius ``min(size) / 3`` off the centre as tumor (2.0 to 2.3 and class 2)."""
    cut = [s + 2 * m for s, m in zip(size, margin)]
    grid = np.indices(cut, dtype=np.float64)
    centre = [m + s * f for m, s, f in zip(margin, size, (0.5, 0.4, 0.6))]
    radius = min(size) / 3
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2
    image = np.stack([np.where(ball, 2.0 + 0.1 * c, 0.5) for c in range(channels)]).astype(np.float32)
    sample = {"image": image, "label": (ball * 2).astype(np.uint8)}
    if with_mirror:
        sample["mirror"] = np.full_like(image, 0.5)
    return sample


def _overlap(image_channel: np.ndarray, lesion: np.ndarray) -> float:
    """Dice of the image's lesion-like part (beyond the midpoint of lesion and tissue, on the lesion's
    side: an intensity transform may invert) with ``lesion``."""
    if not lesion.any() or lesion.all():
        return 0.0
    inside, outside = image_channel[lesion].mean(), image_channel[~lesion].mean()
    bright = (image_channel > (inside + outside) / 2) == (inside > outside)
    return 2 * float((bright & lesion).sum()) / float(bright.sum() + lesion.sum())


def check_transform_contract(transform, name: str = "transform", size: Sequence[int] = (16, 32, 32),
                             seeds: Sequence[int] = range(8)) -> None:
    """Check that ``transform`` keeps omkit's patch-transform contract, on a synthetic sample with a known
    lesion: shapes and dtypes kept, with and without ``mirror`` and ``label``; the same output for the same
    random stream; image and label still aligned (the lesion's Dice above 0.8); an intensity transform never
    changes the label; a spatial one brings no padding into the patch when the case fills its margin.
    An ``AssertionError`` (or the pipeline's one-line error) says what broke. Third parties call it in their
    own tests, as omkit's do for every registered transform."""
    pipeline = Augmentation([Step(name, transform, 1.0)])
    margin = pipeline.margin(size)
    for seed in seeds:
        for with_mirror in (False, True):
            sample = _lesion_sample(size, margin, with_mirror)
            copy = {k: v.copy() for k, v in sample.items()}
            out = pipeline.apply(copy, size, np.random.default_rng(seed))
            again = pipeline.apply({k: v.copy() for k, v in sample.items()}, size, np.random.default_rng(seed))
            assert set(out) == set(sample), f"{name}: keys {sorted(out)} instead of {sorted(sample)}"
            assert out["image"].shape == (4, *size) and out["image"].dtype == np.float32, \
                f"{name}: image {out['image'].shape} {out['image'].dtype}"
            assert out["label"].shape == tuple(size) and out["label"].dtype == np.uint8, \
                f"{name}: label {out['label'].shape} {out['label'].dtype}"
            for key in out:
                assert np.array_equal(out[key], again[key]), f"{name}: {key} differs for the same random stream"
            lesion = out["label"] > 0
            for key in ("image", "mirror") if with_mirror else ("image",):
                assert np.isfinite(out[key]).all(), f"{name}: non-finite {key} values"
            dice = _overlap(out["image"][0], lesion)
            assert dice >= 0.8, f"{name} (seed {seed}): image and label no longer aligned (lesion Dice {dice:.2f})"
            if not getattr(transform, "spatial", False):
                inner = crop_centre(sample, margin)["label"]
                assert np.array_equal(out["label"], inner), f"{name}: an intensity transform changed the label"
            else:
                assert (out["image"] != 0).any(axis=0).all(), \
                    f"{name} (seed {seed}): padding inside the patch: margin() is too small for what it moves"
        unlabelled = {"image": _lesion_sample(size, margin, False)["image"], "label": None}
        out = pipeline.apply(unlabelled, size, np.random.default_rng(seed))
        assert out["label"] is None and out["image"].shape == (4, *size), f"{name}: a sample without a label"
