"""Per-task patch batches for training, reproducible from (seed, rank, epoch, step).

Every epoch each task gets a fresh pool of patch centres from its sampler
(``patches_per_epoch[t] / world_size`` per process); each step takes the next
``batch_per_task`` centres of every active task's pool, cycling a smaller pool
(the paper's 200k task-3 patches against 400k for tasks 1-2). Because a batch
depends only on (seed, rank, epoch, step), the sampler's whole state is that
position: resuming, or loading with worker processes, gives the same batches.
Each process (DDP rank) draws from its own random stream. The samplers and
their regions are :mod:`omkit.data.sampling`'s. A network that reads more than
the four modalities (:mod:`omkit.data.features`) gets its extra channels per
patch, from the same patch cut out of each case's mirrored crop (a view: no
case is copied).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from omkit.data.augment import augment_rng
from omkit.data.features import DEFAULT_INPUT_FEATURES, MRI, left_right_axis, mirrored, network_input
from omkit.data.patches import extract_patches
from omkit.data.sampling import region_indices, region_size


class TaskPatches:
    """The patch source of one training process."""

    def __init__(
        self,
        cases: Sequence,
        samplers: Sequence,
        patch_size: Sequence[int],
        patches_per_epoch: Sequence[int],
        batch_per_task: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tasks: Sequence[int] = (0, 1, 2),
        regions: dict[int, list[np.ndarray]] | None = None,
        input_features: str = DEFAULT_INPUT_FEATURES,
        supervised: Sequence[slice] | None = None,
        augmentation=None,
    ):
        self.cases = list(cases)
        self.samplers = list(samplers)
        self.patch_size = tuple(int(p) for p in patch_size)
        # windows mode: the part of each crop whose labels are the targets (the rest is context)
        self.supervised = tuple(supervised) if supervised is not None else None
        self.batch = int(batch_per_task)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.pool_sizes = [max(1, math.ceil(int(n) / self.world_size)) for n in patches_per_epoch]
        self.shapes = [tuple(pre.image.shape[1:]) for pre in self.cases]
        self.regions = regions or {t: [region_indices(self.samplers[t], pre) for pre in self.cases] for t in tasks}
        for t in tasks:
            if not any(region_size(r) for r in self.regions[t]):
                raise ValueError(
                    f"task {t + 1} sampler {type(self.samplers[t]).__name__}: no training case has voxels to sample "
                    "(no tumor / core in the ground truth?)"
                )
        self._pool_cache: dict[tuple[int, int], np.ndarray] = {}
        # omkit.data.augment.Augmentation (None or empty: none); each sample is cut with the margin
        # its spatial transforms need, transformed, and cropped back
        self.augmentation = augmentation if augmentation else None
        self.margin = self.augmentation.margin(self.patch_size) if self.augmentation else (0, 0, 0)
        self.input_features = input_features
        # per case, the axis its mirror image flips (only views of the crops are made, per batch,
        # so that worker processes are not sent a second copy of every case)
        self._mirror_axes = None if input_features == MRI else [left_right_axis(pre.affine) for pre in self.cases]

    def steps_per_epoch(self, tasks: Sequence[int]) -> int:
        return max(math.ceil(self.pool_sizes[t] / self.batch) for t in tasks)

    def pool(self, epoch: int, task: int) -> np.ndarray:
        """This process's centres ``(case, z, y, x)`` of ``task`` for ``epoch``."""
        key = (epoch, task)
        if key not in self._pool_cache:
            rng = np.random.default_rng([self.seed, self.rank, epoch, task])
            # keep only this epoch's pools: earlier ones are never asked for again
            self._pool_cache = {k: v for k, v in self._pool_cache.items() if k[0] == epoch}
            self._pool_cache[key] = self.samplers[task].draw(self.regions[task], self.shapes, self.pool_sizes[task], rng)
        return self._pool_cache[key]

    def centres(self, epoch: int, step: int, task: int) -> np.ndarray:
        pool = self.pool(epoch, task)
        return pool[(step * self.batch + np.arange(self.batch)) % len(pool)]

    def batch_at(self, epoch: int, step: int, tasks: Sequence[int]):
        """Per task (None when inactive): ``(images (B, C, *P) float32, labels (B, *P) uint8)``, C the
        network's input channels, P the patch (crop) size; the labels of the ``supervised``
        part only, when given."""
        out = [None, None, None]
        cut = tuple(p + 2 * m for p, m in zip(self.patch_size, self.margin))
        for t in tasks:
            centres = self.centres(epoch, step, t)
            images, labels = extract_patches(self.cases, centres, cut)
            mirror = None
            if self._mirror_axes is not None:
                mirrors = [SimpleNamespace(image=mirrored(pre.image, axis), label=None)
                           for pre, axis in zip(self.cases, self._mirror_axes)]
                mirror, _ = extract_patches(mirrors, centres, cut)
            if self.augmentation is not None:
                images, labels, mirror = self._augmented(images, labels, mirror, augment_rng(
                    self.seed, self.rank, epoch, step, t))
            if mirror is not None:
                images = network_input(images, self.input_features, mirror=mirror)
            if self.supervised is not None and labels is not None:
                labels = np.ascontiguousarray(labels[(slice(None),) + self.supervised])
            out[t] = (images, labels)
        return out


    def _augmented(self, images, labels, mirror, rng):
        """Each sample of a batch through the augmentation (in order, from one stream), cropped to the patch."""
        out_images = np.empty((len(images), images.shape[1], *self.patch_size), dtype=images.dtype)
        out_labels = None if labels is None else np.empty((len(images), *self.patch_size), dtype=labels.dtype)
        out_mirror = None if mirror is None else np.empty_like(out_images)
        for i in range(len(images)):
            sample = {"image": images[i], "label": None if labels is None else labels[i]}
            if mirror is not None:
                sample["mirror"] = mirror[i]
            sample = self.augmentation.apply(sample, self.patch_size, rng)
            out_images[i] = sample["image"]
            if out_labels is not None:
                out_labels[i] = sample["label"]
            if out_mirror is not None:
                out_mirror[i] = sample["mirror"]
        return out_images, out_labels, out_mirror


class EpochSteps(torch.utils.data.Dataset):
    """Map-style view of one epoch's steps (item = a step's batches), for DataLoader workers."""

    def __init__(self, patches: TaskPatches, epoch: int, tasks: Sequence[int]):
        self.patches, self.epoch, self.tasks = patches, epoch, tuple(tasks)

    def __len__(self) -> int:
        return self.patches.steps_per_epoch(self.tasks)

    def __getitem__(self, step: int):
        return self.patches.batch_at(self.epoch, step, self.tasks)


def iterate_steps(patches: TaskPatches, epoch: int, tasks: Sequence[int], start: int, workers: int = 0):
    """Yield ``(step, batches)`` from ``start`` to the end of the epoch; with
    workers, batches are prepared in background processes (same content)."""
    steps = patches.steps_per_epoch(tasks)
    if workers <= 0:
        for step in range(start, steps):
            yield step, patches.batch_at(epoch, step, tasks)
        return
    loader = torch.utils.data.DataLoader(
        EpochSteps(patches, epoch, tasks),
        batch_size=None,
        sampler=range(start, steps),
        num_workers=workers,
        # a private generator: creating the loader must not consume the global
        # torch RNG (dropout), or a resumed run would diverge
        generator=torch.Generator().manual_seed(0),
        prefetch_factor=2,
    )
    yield from zip(range(start, steps), loader)

