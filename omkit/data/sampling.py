"""Training patch sampling: the sampler interface, its base classes, and the
per-case sampling regions (Sec. III-A of the
paper). The built-in samplers (``brain``, ``dilated_tumor``, ``core``,
``enhancing``) are a plug-in (``omkit.plugins.samplers``) built on these
classes; a third party registers its own through ``omkit_register_samplers``.

The sampler interface:

* built as ``cls(**options)`` from a spec such as ``dilated_tumor(radius=3)``;
  attribute ``task`` (the 0-based task it serves by default) and
  ``cache_key`` (a string naming the sampler and every option, used to cache
  its regions beside a preprocessed case);
* ``region(pre) -> bool (d, h, w)``: the allowed centres of a preprocessed case;
* ``draw(regions, shapes, count, rng) -> int64 (count, 4)`` rows ``(case, z, y, x)``
  where ``regions`` are the cases' flat region indices
  (``np.flatnonzero(region(pre))``). Vectorised: one pass per case, never one
  per voxel or per patch.

Subclass :class:`RegionSampler` (uniform centres inside a region: define
``region``) or :class:`LabelRegionSampler` (inside ground-truth classes: set
``classes``) to get ``draw`` and a ``cache_key`` that includes every option.

Samplers are built from spec strings such as ``brain:1+dilated_tumor(radius=3):1``
by :mod:`omkit.data.sampler_specs`.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import re
from typing import Any

import numpy as np

FLAG = "--samplers"


# -- the interface -------------------------------------------------------------------------

def _bound_options(cls, args, kwargs) -> dict[str, Any]:
    """The keyword options ``cls(*args, **kwargs)`` is built with, defaults included."""
    if cls.__init__ is object.__init__:
        return {}
    try:
        signature = inspect.signature(cls.__init__)
        bound = signature.bind(None, *args, **kwargs)  # None stands for self
    except (TypeError, ValueError):
        return dict(kwargs)  # __init__ reports the mistake itself
    bound.apply_defaults()
    names = list(signature.parameters)
    options: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name == names[0]:
            continue
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            options.update(value)
        else:
            options[name] = tuple(value) if kind is inspect.Parameter.VAR_POSITIONAL else value
    return options


def _format_option(value) -> str:
    """One spelling per value: ``3``, ``3.0`` and ``np.int64(3)`` are all ``3``."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return repr(bool(value) if value is not None else None)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    return repr(value)


def generic_cache_key(name: str, options: dict[str, Any]) -> str:
    """``name`` followed by every option, sorted: ``name(a=1.0,b='x')`` (just
    ``name`` without options)."""
    if not options:
        return name
    return f"{name}({','.join(f'{k}={_format_option(v)}' for k, v in sorted(options.items()))})"


class RegionSampler:
    """Uniform centres inside a per-case region; subclasses define ``region``.

    The keyword options a sampler is built with (defaults included) are
    recorded in :attr:`options`, and :attr:`cache_key` is ``key`` (or, when a
    subclass leaves ``key`` empty, its import path) followed by every option,
    so two samplers with different options never share a cached region.
    """

    task = 0
    key = ""  # a short name for cache keys; empty: the class's import path

    def __new__(cls, *args, **kwargs):
        if cls.__init__ is object.__init__ and (args or kwargs):
            raise TypeError(f"{cls.__name__} takes no options, got {', '.join(map(str, [*args, *kwargs]))}")
        self = super().__new__(cls)
        self._sampler_options = _bound_options(cls, args, kwargs)
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The options this sampler was built with (defaults included)."""
        return dict(getattr(self, "_sampler_options", {}))

    @property
    def cache_key(self) -> str:
        name = self.key or f"{type(self).__module__}.{type(self).__qualname__}"
        return generic_cache_key(name, self.options)

    def region(self, pre) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must define region(pre)")

    def draw(self, regions, shapes, count: int, rng: np.random.Generator) -> np.ndarray:
        """A case uniformly among those with a non-empty region, then a voxel
        uniformly inside its region."""
        sizes = np.array([len(r) for r in regions], dtype=np.int64)
        eligible = np.flatnonzero(sizes > 0)
        if count and not len(eligible):
            raise ValueError(f"{type(self).__name__}: no case has a non-empty sampling region")
        cases = eligible[rng.integers(len(eligible), size=count)]
        positions = np.floor(rng.random(count) * sizes[cases]).astype(np.int64)
        flat = np.empty(count, dtype=np.int64)
        for case in np.unique(cases):
            chosen = cases == case
            flat[chosen] = np.asarray(regions[case])[positions[chosen]]
        hw = np.array([s[1] * s[2] for s in shapes], dtype=np.int64)[cases]
        w = np.array([s[2] for s in shapes], dtype=np.int64)[cases]
        return np.stack([cases, flat // hw, (flat % hw) // w, flat % w], axis=1)


def label_region(pre, classes, purpose: str = "sampling") -> np.ndarray:
    """The ground-truth voxels of ``classes`` (internal class indices) of a
    preprocessed case; a case without ground truth is an error naming it."""
    if pre.label is None:
        raise ValueError(f"case {pre.case_id}: {purpose} needs the ground truth")
    return np.isin(pre.label, classes)


class LabelRegionSampler(RegionSampler):
    """Centres inside the ground-truth voxels of ``classes``."""

    classes: tuple[int, ...] = ()
    purpose = "sampling"  # for the error message

    def region(self, pre) -> np.ndarray:
        return label_region(pre, self.classes, self.purpose)


def sampler_cache_key(sampler) -> str:
    """The cache key of any sampler: its ``cache_key``, else ``key``, else the
    class path with the options it was built with."""
    key = getattr(sampler, "cache_key", "") or getattr(sampler, "key", "")
    if key:
        return key
    cls = type(sampler)
    return generic_cache_key(f"{cls.__module__}.{cls.__qualname__}", getattr(sampler, "options", {}) or {})


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
        weights = [w for _, w in parts]
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"sampler mixture weights must be > 0, got {weights}")
        self.parts = parts
        self.task = parts[0][0].task
        total = sum(weights)
        self.weights = np.array([w / total for w in weights])
        self.key = "+".join(f"{sampler_cache_key(s)}:{w:g}" for s, w in parts)

    @property
    def cache_key(self) -> str:
        return self.key

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


# -- regions -------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.,+=()-]{1,120}")


def region_file_name(key: str) -> str:
    """A file name for the cached region of ``key``: the key itself when it is
    plain, else a cleaned prefix and a digest of the whole key."""
    if _SAFE_NAME.fullmatch(key):
        return f"region-{key}"
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    return f"region-{clean}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def region_indices(sampler, pre, cache=None, case_dir=None, cache_settings=None):
    """Flat indices of the sampler's region of one case (a tuple, one per part,
    for a mixture); cached beside the preprocessed case when ``cache`` and
    ``case_dir`` are given, under the sampler's :func:`sampler_cache_key`."""
    if isinstance(sampler, MixtureSampler) or hasattr(sampler, "parts"):
        return tuple(region_indices(part, pre, cache, case_dir, cache_settings) for part, _ in sampler.parts)

    def compute():
        region = sampler.region(pre)
        # int32 halves the cache for any volume under 2**31 voxels
        return np.flatnonzero(region).astype(np.int32 if region.size < 2**31 else np.int64)

    if cache is not None and case_dir is not None:
        name = region_file_name(sampler_cache_key(sampler))
        return cache.derived(case_dir, name, compute, **(cache_settings or {}))
    return compute()


def region_size(region) -> int:
    """Voxels a case offers a sampler (summed over a mixture's parts)."""
    return sum(len(r) for r in region) if isinstance(region, tuple) else len(region)
