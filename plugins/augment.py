"""Built-in patch transforms for ``--augment`` (the interface and the pipeline:
:mod:`omkit.data.augment`). The geometry is MONAI's: rotations and zooms resample
with the grid of ``monai.transforms.Affined`` (its rotation and scale matrices;
image and mirror bilinear, label nearest, zero padding) through torch's
``grid_sample`` directly, elastic deformation is ``Rand3DElasticd``, blur is
``GaussianSmooth``. MONAI rather than batchgenerators because omkit already
builds on torch tensors and MONAI's dictionary transforms move image and label
together with one draw, need nothing beyond torch and numpy, and are kept by a
large team; nnU-Net's batchgenerators v2 would add scipy, scikit-image and its
own patch pipeline for the same few operations. The intensity transforms are a
few lines of numpy each, so that every parameter they draw comes from the
sample's own random stream.

Spatial (move voxels; label resampled by nearest neighbour):

* ``mirror(axes=(0, 1, 2))``: flips each listed axis with probability 1/2;
* ``rotate(degrees=15, axes=(0,))``: rotation by up to ``degrees`` about each
  listed axis (0 = D, the axial slices' normal: an in-plane rotation);
* ``scale(factor=0.15)``: isotropic zoom by ``1 +- factor``;
* ``elastic(sigma=(5, 7), magnitude=(50, 150))``: MONAI's smooth random
  displacement field.

Intensity (the brain only; the label is untouched):

* ``intensity_scale(factor=0.1)``: each modality times ``1 +- factor``;
* ``intensity_shift(offset=0.1)``: each modality plus up to ``+- offset``
  (in units of its z-scored standard deviation);
* ``gamma(range=(0.7, 1.5))``: each modality's brain voxels, mapped to [0, 1],
  raised to a gamma drawn from ``range``, then given back their mean and
  standard deviation (nnU-Net's gamma with kept statistics);
* ``noise(std=0.1)``: Gaussian noise of a standard deviation drawn up to ``std``;
* ``blur(sigma=(0.5, 1.0))``: Gaussian smoothing with sigma drawn from ``sigma``.
"""
from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch

from omkit.data.augment import PatchTransform
from omkit.hookspecs import hookimpl

IMAGE_KEYS = ("image", "mirror")


def _number_pair(name: str, value, low: float = 0.0) -> tuple[float, float]:
    pair = tuple(float(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
    if len(pair) != 2 or not all(math.isfinite(v) and v >= low for v in pair) or pair[0] > pair[1]:
        raise ValueError(f"{name} must be a number or a pair (low, high) with {low:g} <= low <= high, got {value!r}")
    return pair  # type: ignore[return-value]


def _fraction(name: str, value, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < high):
        raise ValueError(f"{name} must be a number in [0, {high:g}), got {value!r}")
    return float(value)


def _axes(value) -> tuple[int, ...]:
    axes = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not axes or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"axes must be distinct spatial axes among 0, 1, 2 (D, H, W), got {value!r}")
    return axes


def _numpy(value, dtype) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return np.ascontiguousarray(array, dtype=dtype)


def _spatial_keys(sample: dict) -> tuple[list[str], list[str]]:
    """The keys a spatial transform moves, and their interpolation modes."""
    keys = [k for k in (*IMAGE_KEYS, "label") if sample.get(k) is not None]
    return keys, ["nearest" if k == "label" else "bilinear" for k in keys]


def _monai_moved(transform, sample: dict) -> dict:
    """``sample`` through a MONAI dictionary transform (the label with a channel axis there).
    MONAI's metadata tracking is off meanwhile: the same arrays, less time (measured on its
    affine resampling: a quarter, benchmarks/RESULTS.md)."""
    from monai.data import get_track_meta, set_track_meta

    data = {k: (v[None] if k == "label" else v) for k, v in sample.items() if v is not None}
    tracking = get_track_meta()
    set_track_meta(False)
    try:
        moved = transform(data)
    finally:
        set_track_meta(tracking)
    out = dict(sample)
    for key in data:
        value = moved[key]
        if key == "label":
            out[key] = _numpy(torch.as_tensor(value)[0].round(), np.uint8)
        else:
            out[key] = _numpy(value, sample[key].dtype)
    return out


def _affine_moved(sample: dict, matrix: torch.Tensor) -> dict:
    """``sample`` resampled as MONAI's ``Affined`` resamples it with ``matrix`` (the output
    voxel at centred coordinates p reads the input at ``matrix @ p``; image and mirror
    bilinear, label nearest, zeros outside): the same grid, through torch's ``affine_grid``
    and ``grid_sample`` directly. MONAI's wrapper around them (tensor conversions, the grid
    built and scaled in separate passes) took two thirds of the resampling's time."""
    keys, _ = _spatial_keys(sample)
    size = tuple(sample[keys[0]].shape[-3:])
    # grid_sample's coordinates are (x, y, z) = (W, H, D), normalised as 2 p / size (align_corners=False)
    to_normalised = torch.diag(torch.tensor([2.0 / s for s in reversed(size)], dtype=torch.float64))
    linear = torch.as_tensor(matrix, dtype=torch.float64)[:3, :3].flip(0).flip(1)
    theta = torch.zeros((1, 3, 4), dtype=torch.float64)
    theta[0, :, :3] = to_normalised @ linear @ torch.linalg.inv(to_normalised)
    grid = torch.nn.functional.affine_grid(theta.float(), [1, 1, *size], align_corners=False)
    out = dict(sample)
    for key in keys:
        value = torch.as_tensor(sample[key])
        volume = (value[None] if key == "label" else value).float()[None]
        moved = torch.nn.functional.grid_sample(volume, grid, mode="nearest" if key == "label" else "bilinear",
                                                padding_mode="zeros", align_corners=False)[0]
        out[key] = (_numpy(moved[0].round(), np.uint8) if key == "label" else _numpy(moved, sample[key].dtype))
    return out


def _rotated_extent(half: np.ndarray, matrices) -> np.ndarray:
    """Per axis, the largest coordinate the corners of a box of ``half`` sizes reach under any of ``matrices``."""
    corners = np.array(list(product(*[(-h, h) for h in half])), dtype=np.float64)
    return np.max([np.abs(corners @ m.T).max(axis=0) for m in matrices], axis=0)


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


class Mirror(PatchTransform):
    spatial = True

    def __init__(self, axes=(0, 1, 2)):
        self.axes = _axes(axes)

    def __call__(self, sample, rng):
        flips = [axis for axis in self.axes if rng.random() < 0.5]
        if not flips:
            return sample
        out = dict(sample)
        for key, value in sample.items():
            if value is not None:
                lead = 0 if key == "label" else 1
                out[key] = np.ascontiguousarray(np.flip(value, [lead + a for a in flips]))
        return out


class Rotate(PatchTransform):
    spatial = True

    def __init__(self, degrees: float = 15.0, axes=(0,)):
        self.radians = math.radians(_fraction("degrees", degrees, 180.0))
        self.axes = _axes(axes)

    def margin(self, size):
        half = np.asarray(size, dtype=np.float64) / 2
        # the box's reach peaks at 45 degrees (|cos| + |sin|): sample it where the range includes it
        angles = np.union1d(np.linspace(-self.radians, self.radians, 7),
                            [a for a in (-math.pi / 4, math.pi / 4) if abs(a) <= self.radians])
        matrices = []
        for combo in product(angles, repeat=len(self.axes)):
            m = np.eye(3)
            for axis, angle in zip(self.axes, combo):
                m = _rotation(axis, angle) @ m
            matrices.append(m)
        return tuple(int(math.ceil(e - h)) + 1 for e, h in zip(_rotated_extent(half, matrices), half))

    def __call__(self, sample, rng):
        from monai.transforms.utils import create_rotate

        angles = [0.0, 0.0, 0.0]
        for axis in self.axes:
            angles[axis] = float(rng.uniform(-self.radians, self.radians))
        return _affine_moved(sample, create_rotate(3, angles, backend="torch"))


class Scale(PatchTransform):
    spatial = True

    def __init__(self, factor: float = 0.15):
        self.factor = _fraction("factor", factor, 1.0)

    def margin(self, size):
        return tuple(int(math.ceil(s / 2 * self.factor)) + 1 for s in size)

    def __call__(self, sample, rng):
        from monai.transforms.utils import create_scale

        zoom = float(rng.uniform(1 - self.factor, 1 + self.factor))
        return _affine_moved(sample, create_scale(3, [zoom] * 3, backend="torch"))


class Elastic(PatchTransform):
    spatial = True

    def __init__(self, sigma=(5.0, 7.0), magnitude=(50.0, 150.0)):
        self.sigma = _number_pair("sigma", sigma, low=1e-3)
        self.magnitude = _number_pair("magnitude", magnitude)

    def margin(self, size):
        # MONAI's field is uniform noise smoothed by a Gaussian of sigma, times the magnitude: its
        # largest displacement stays under magnitude / (sigma^1.5 (2 pi)^0.75 sqrt(3)) (the noise's
        # standard deviation after smoothing) times 4; at least two voxels
        reach = 4 * self.magnitude[1] / (self.sigma[0] ** 1.5 * (2 * math.pi) ** 0.75 * math.sqrt(3))
        return (int(math.ceil(reach)) + 2,) * 3

    def __call__(self, sample, rng):
        from monai.transforms import Rand3DElasticd

        keys, modes = _spatial_keys(sample)
        transform = Rand3DElasticd(keys, sigma_range=self.sigma, magnitude_range=self.magnitude, prob=1.0,
                                   mode=modes, padding_mode="zeros")
        transform.set_random_state(seed=int(rng.integers(2**32)))
        return _monai_moved(transform, sample)


def _per_image(sample: dict, change) -> dict:
    """``change(array, params)`` on image and mirror with the same draw per modality."""
    out = dict(sample)
    for key in IMAGE_KEYS:
        if sample.get(key) is not None:
            out[key] = np.ascontiguousarray(change(sample[key]), dtype=sample[key].dtype)
    return out


class IntensityScale(PatchTransform):
    def __init__(self, factor: float = 0.1):
        self.factor = _fraction("factor", factor, 1.0)

    def __call__(self, sample, rng):
        scale = rng.uniform(1 - self.factor, 1 + self.factor, size=sample["image"].shape[0])
        return _per_image(sample, lambda x: x * scale[:, None, None, None])


class IntensityShift(PatchTransform):
    def __init__(self, offset: float = 0.1):
        self.offset = _fraction("offset", offset, 100.0)

    def __call__(self, sample, rng):
        shift = rng.uniform(-self.offset, self.offset, size=sample["image"].shape[0])
        return _per_image(sample, lambda x: x + shift[:, None, None, None])


class Gamma(PatchTransform):
    def __init__(self, range=(0.7, 1.5)):  # noqa: A002 (the option's name on the command line)
        self.range = _number_pair("range", range, low=1e-3)

    def __call__(self, sample, rng):
        brain = np.any(sample["image"] != 0, axis=0)
        gammas = rng.uniform(*self.range, size=sample["image"].shape[0])
        if not brain.any():
            return sample

        def change(x):
            out = np.array(x, dtype=np.float64)
            for c, gamma in enumerate(gammas):
                values = out[c][brain]
                low, high = values.min(), values.max()
                mean, std = values.mean(), values.std()
                mapped = ((values - low) / max(high - low, 1e-7)) ** gamma
                mapped = (mapped - mapped.mean()) / max(mapped.std(), 1e-7) * std + mean
                out[c][brain] = mapped
            return out

        return _per_image(sample, change)


class Noise(PatchTransform):
    def __init__(self, std: float = 0.1):
        self.std = _fraction("std", std, 100.0)

    def __call__(self, sample, rng):
        sigma = rng.uniform(0, self.std)
        noise = rng.standard_normal(sample["image"].shape) * sigma
        return _per_image(sample, lambda x: x + noise)


class Blur(PatchTransform):
    def __init__(self, sigma=(0.5, 1.0)):
        self.sigma = _number_pair("sigma", sigma)

    def __call__(self, sample, rng):
        from monai.transforms import GaussianSmooth

        smooth = GaussianSmooth(sigma=float(rng.uniform(*self.sigma)))
        return _per_image(sample, lambda x: _numpy(smooth(torch.from_numpy(np.ascontiguousarray(x))), x.dtype))


BUILTIN_TRANSFORMS = {
    "mirror": Mirror, "rotate": Rotate, "scale": Scale, "elastic": Elastic,
    "intensity_scale": IntensityScale, "intensity_shift": IntensityShift, "gamma": Gamma,
    "noise": Noise, "blur": Blur,
}


@hookimpl
def omkit_register_transforms(registry):
    for name, cls in BUILTIN_TRANSFORMS.items():
        registry.add(name, cls)
