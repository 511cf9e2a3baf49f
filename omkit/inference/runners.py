"""The two runners behind :class:`~omkit.inference.predictor.SegmentationPredictor`:
overlap tiles (:class:`TileRunner`) and dense, window-consistent inference
(:class:`DenseRunner`), behind one small protocol.

The predictor resolves the settings and keeps the *ensemble core*
(:class:`Ensemble`: the members and their network calls, the mirror flips, the
precision, the speed settings, the devices); a runner computes, for the tasks asked,
the ensemble- and flip-mean softmax over the voxels that ``mask`` touches, reduced by
the caller's ``reduce``::

    out, computed = runner.run(ensemble, image, tasks, reduce, out_channels, out_dtype, mask)

``out`` (out_channels, D, H, W) of ``out_dtype`` on ``ensemble.output_device``, zero where
nothing was computed; ``computed``: the tiles (dense: the blocks, one per tile the
tile path would compute). Neither runner reads or writes the predictor.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol, Sequence

import torch
from torch import Tensor, nn

from omkit.devices import autocast

from .dense import DenseSettings, run_dense
from .settings import SpeedSettings, TileSettings
from .sliding import overlap_tile_inference, tiles_touching
from .tiling import keep_centre, tile_origins
from .tta import mirrored_centre

Reduce = Callable[[list[Tensor]], Tensor]


class Ensemble(NamedTuple):
    """What every runner needs of a predictor. ``calls``: per member, the whole model
    (one pass) or task -> its network (cascade), compiled where asked; ``flips``: the
    mirror flips (``()`` is the image as it is)."""

    models: Sequence[nn.Module]
    calls: Sequence
    kind: str  # "onepass" or "cascade"
    flips: Sequence[tuple[int, ...]]
    precision: str
    speed: SpeedSettings
    device: torch.device  # where the networks run
    output_device: torch.device  # where the maps go
    progress: bool


class Runner(Protocol):
    def run(self, ensemble: Ensemble, image: Tensor, tasks: Sequence[int], reduce: Reduce, out_channels: int,
            out_dtype: torch.dtype, mask: Tensor) -> tuple[Tensor, int]: ...


class TileRunner:
    """Overlap tiles of ``tiles``: the tiles whose kept centre touches the mask, in batches."""

    def __init__(self, tiles: TileSettings):
        self.tiles = tiles

    def mean_probabilities(self, ensemble: Ensemble, batch: Tensor, tasks: Sequence[int],
                           centre: tuple[slice, ...] | None = None) -> list[Tensor]:
        """Ensemble-mean softmax of ``tasks`` for one batch of tiles, of the tiles' ``centre``
        only when given; every flip of the batch in the same network call."""
        flips, count = ensemble.flips, batch.shape[0]
        if ensemble.speed.fixed_shapes and count < self.tiles.batch:  # one shape for every call: pad the last batch
            batch = torch.cat([batch, batch.new_zeros((self.tiles.batch - count, *batch.shape[1:]))])
        if len(flips) > 1:
            batch = torch.cat([batch.flip([a + 2 for a in flip]) if flip else batch for flip in flips])
        if ensemble.speed.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        size = tuple(batch.shape[2:])
        full = batch.shape[0] // len(flips)  # the padded batch: copy k of the flips is rows k*full ... k*full+count
        sums: list[Tensor | None] = [None] * len(tasks)
        for call in ensemble.calls:
            with autocast(ensemble.device, ensemble.precision):
                if ensemble.kind == "cascade":
                    logits = [call[t](batch) for t in tasks]
                else:
                    outputs = call(batch)
                    logits = [outputs[t] for t in tasks]
            for i, lg in enumerate(logits):
                for k, flip in enumerate(flips):
                    part = lg[k * full:k * full + count]
                    if centre is not None:  # the centre's mirror image, flipped back below
                        part = part[(slice(None), slice(None)) + mirrored_centre(centre, size, flip)]
                    if flip:
                        part = part.flip([a + 2 for a in flip])
                    p = torch.softmax(part.float(), dim=1)
                    sums[i] = p if sums[i] is None else sums[i] + p
        return [s / (len(ensemble.calls) * len(flips)) for s in sums]

    def run(self, ensemble: Ensemble, image: Tensor, tasks: Sequence[int], reduce: Reduce, out_channels: int,
            out_dtype: torch.dtype, mask: Tensor) -> tuple[Tensor, int]:
        t = self.tiles
        origins = tiles_touching(mask, tile_origins(image.shape[1:], t.size, t.stride, t.keep), t.size, t.keep)
        # only the kept centre is stitched: softmax and reduce just that (with the paper's tiles,
        # 12 % of each tile; reducing whole tiles took a third of a width-0.25 case on a CPU)
        centre = keep_centre(t.size, t.keep)

        def predictor(batch: Tensor) -> Tensor:
            return reduce(self.mean_probabilities(ensemble, batch, tasks, centre))

        out = overlap_tile_inference(
            image, predictor, out_channels, origins=origins,
            tile_size=t.size, tile_stride=t.stride, tile_keep=t.keep, tile_batch=t.batch,
            out_dtype=out_dtype, device=ensemble.device, output_device=ensemble.output_device,
            progress=ensemble.progress,
        )
        return out, int(origins.shape[0])


class DenseRunner:
    """Dense, window-consistent inference (:mod:`.dense`) with the geometry of ``tiles``
    (stride = keep) and the slab ``settings``."""

    def __init__(self, tiles: TileSettings, settings: DenseSettings):
        self.tiles, self.settings = tiles, settings

    def run(self, ensemble: Ensemble, image: Tensor, tasks: Sequence[int], reduce: Reduce, out_channels: int,
            out_dtype: torch.dtype, mask: Tensor) -> tuple[Tensor, int]:
        return run_dense(ensemble, self.tiles, self.settings, image, tasks, reduce, out_channels, out_dtype, mask)
