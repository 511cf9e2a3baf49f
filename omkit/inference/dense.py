"""Dense, window-consistent inference: the backbone runs once per voxel, and each task
head gives every voxel the attention the tile that predicts it would have given it.

Tile inference (:mod:`.sliding`) sends every voxel through the backbone about
``prod(size / keep)`` times (8 with the paper's 16 x 32 x 32 tiles and 5 x 20 x 20
kept centres). Here the voxels are split into *blocks*: the kept centres of the tile
grid with ``stride == keep``, which starts at volume voxel 0 on every axis (as
:func:`omkit.inference.tiling.tile_origins` places them). Each block's *window* is the
tile that would have predicted it (``TileSettings.size``, the block
``keep_offset(size, keep)`` voxels inside it). Then:

1. the *region*: the blocks whose block touches the mask's bounding box (the brain,
   task 2's ROI or the core), the union of their windows, padded at its end so that
   each side is divisible by the backbone's ``min_divisor``; the image reads zero
   outside the volume, as a tile does;
2. the backbone once over the region: in one call when it fits the memory budget
   (:attr:`DenseSettings.max_memory`, else the memory available; ``.memory``), else
   through the backbone's ``slab_forward`` (FusionNet: every level in slabs of planes
   along D, the same values; ``omkit.models.slabs``) with the largest slabs that fit.
   Or, when asked (:attr:`DenseSettings.max_voxels`), in context-limited slabs along D
   whose cores are multiples of ``min_divisor`` (from the region's start, so pooling
   phases match), each with :attr:`DenseSettings.halo` voxels of context on both
   sides, of which only the core is kept (close to, not exactly, one call's values);
3. the heads on the region's features (``omkit.models.windowed``, which
   window-consistent training runs too), each as it declares itself
   (``omkit.models.window_protocol``): attention states the per-voxel terms it pools
   and what the pooled sums become (SE: the channel mean, a per-block classifier
   scale; CGA and its variants: the sums of F * Pt and F, a per-block affine map of
   the features and guidance), and the window ops pool every block's window. Guidance
   between tasks as in ``OMNet.forward`` (the preceding task's positive probability),
   except what a guided head guided by a guided head (OM-Net + CGA's task 3) pools:
   inside a tile, the guidance on the whole tile comes from the preceding head with
   *that tile's* statistics, while the dense guidance of a neighbouring block comes
   from that block's. So those sums are taken window by window
   (``omkit.models.windowed.guided_window_sums``: the preceding head's per-block map
   over each window, ``TileSettings.batch`` windows at a time, no backbone), each
   voxel merged by its own guidance;
4. softmax, averaged over ensemble members (and flips), reduced like tile inference;
   only the blocks touching the mask are kept, so the output is zero exactly where
   tile inference computes no tile.

What stays different from tile inference: the backbone sees each voxel's real
neighbourhood instead of a tile's zero padding (the point of it), and so do the heads'
3x3x3 convs on the one-voxel shell of every window, which SE's mean and the task-1
guidance that CGA pools include (the kept centres lie inside that shell, so their own
convolutions are the tiles'). With a backbone and heads without spatial context, dense
and tile inference agree to float rounding for plain, SE and every CGA head, plug-in
attention that declares its pooling, the MC cascade, ensembles and mirroring
(``tests/test_dense_inference.py``, ``tests/test_window_protocol.py``). A guided head
guided by an unguided one (a custom attention tuple) pools that head's dense
guidance: close to, not exactly, its tiles'. A model whose backbone or heads do not
declare the protocol runs tiles (``window_problem`` says which module and why).

Context-limited slab seams (only with ``max_voxels``): a seam is exact when the halo covers the
backbone's receptive field (FusionNet's spans about 180 voxels); short of that, the
slabs' zero padding reaches the kept cores. Measured against one call, with a seam
every 16 planes: a briefly trained width-0.25 OM-Net + CGA on a real BraTS case
(960k brain voxels, 9 seams), largest probability difference and labels changed:
halo 64 (the default) 1.5e-5, none; 48: 1.4e-3, 6; 32: 0.16, 510; 16: 0.6, 1.3 % of
the brain. Width-0.125 models with random weights (what the tests use): at most
7e-4 with halo 64, a few near-tie labels; ``tests/test_dense_inference.py`` asserts
< 2e-3.

Test-time mirroring flips the region: in the mirrored region the blocks start at the
mirror image of the last block's end and sit ``size - keep - offset`` voxels inside
their windows, which is where a mirrored tile's kept centre lies.
"""
from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from omkit import ops
from omkit.devices import autocast
from omkit.models.blocks import fold_batch_norm
from omkit.models.cache_blocked import cache_blocked_convolutions
from omkit.models.omnet import MCNet
from omkit.models.window_protocol import declares, head_window_logits
from omkit.models.windowed import check_windowed_model, task_logits

from .memory import choose_slab_planes, dense_budget, meta_copy, parse_size, region_need, slab_candidates
from .tiling import keep_offset

# voxels of backbone context on each side of a slab; see the module docstring
DEFAULT_HALO = 64


def _whole(name: str, value, minimum: int) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"dense {name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


@dataclass
class DenseSettings:
    """Dense inference (``SegmentationPredictor(inference="dense")``). ``halo``: voxels
    of backbone context on each side of a slab (rounded up to the backbone's
    ``min_divisor``); ``max_voxels``: the most voxels per backbone call, halos included
    (context-limited slabs: close to the whole region's values, see the module
    docstring), None: the whole region in one call, or exact slabs within
    ``max_memory``: the most bytes the process may hold (a number or a size such as
    ``"2G"``; ``omkit.inference.memory``), None: the memory available. On the command
    line: ``--dense-halo``, ``--dense-max-voxels``, ``--max-memory``."""

    halo: int = DEFAULT_HALO
    max_voxels: int | None = None
    max_memory: int | str | None = None

    def __post_init__(self):
        self.halo = _whole("halo", self.halo, 0)
        if self.max_voxels is not None:
            self.max_voxels = _whole("max_voxels", self.max_voxels, 1)
        if self.max_memory is not None:
            self.max_memory = parse_size(self.max_memory, "dense max_memory")


class Region(NamedTuple):
    """Where dense inference computes for one mask. ``start``: volume coordinates of the
    region's first voxel (negative before the volume); ``shape``: its size, each side
    divisible by the backbone's ``min_divisor``; ``origin``: the first block's start
    inside it; ``blocks``: blocks per axis; ``touched`` ``(nD, nH, nW)`` bool: the blocks
    whose block holds a mask voxel (those tile inference computes)."""

    start: tuple[int, int, int]
    shape: tuple[int, int, int]
    origin: tuple[int, int, int]
    blocks: tuple[int, int, int]
    touched: Tensor

    def kept(self, keep: Sequence[int]) -> Tensor:
        """``(D, H, W)`` bool of the region: the voxels of the touched blocks."""
        cube = self.touched
        for axis, k in enumerate(keep):
            cube = cube.repeat_interleave(k, dim=axis)
        out = torch.zeros(self.shape, dtype=torch.bool, device=cube.device)
        out[tuple(slice(g, g + c) for g, c in zip(self.origin, cube.shape))] = cube
        return out


def dense_region(mask: Tensor, size: Sequence[int], keep: Sequence[int], divisor: int = 1) -> Region | None:
    """The :class:`Region` of ``mask (D, H, W)`` for tiles of ``size`` keeping ``keep``
    (stride = keep); None for an empty mask."""
    mask = mask.to("cpu", torch.bool)
    if not bool(mask.any()):
        return None
    offset = keep_offset(size, keep)
    start, shape, origin, blocks, first = [], [], [], [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = mask.any(dim=others).nonzero().flatten()
        k0, k1 = int(hits[0]) // keep[axis], int(hits[-1]) // keep[axis]
        n = k1 - k0 + 1
        length = (n - 1) * keep[axis] + size[axis]  # the union of the blocks' windows
        start.append(k0 * keep[axis] - offset[axis])
        shape.append(-(-length // divisor) * divisor)
        origin.append(offset[axis])
        blocks.append(n)
        first.append(k0 * keep[axis])
    # the blocks' voxels of the mask (zero past the volume), one cell per block
    cells = torch.zeros([n * k for n, k in zip(blocks, keep)], dtype=torch.bool)
    src = tuple(slice(f, min(f + n * k, s)) for f, n, k, s in zip(first, blocks, keep, mask.shape))
    cells[tuple(slice(0, s.stop - s.start) for s in src)] = mask[src]
    touched = cells.reshape(blocks[0], keep[0], blocks[1], keep[1], blocks[2], keep[2]).any(5).any(3).any(1)
    return Region(tuple(start), tuple(shape), tuple(origin), tuple(blocks), touched)


def window_geometry(region: Region, size: Sequence[int], keep: Sequence[int], flip: Sequence[int] = ()) -> dict:
    """The window/block keywords of the ``omkit.ops`` window ops for ``region``, mirrored
    along the axes of ``flip`` (the region flipped there)."""
    offset, origin = list(keep_offset(size, keep)), list(region.origin)
    for a in flip:
        offset[a] = size[a] - keep[a] - offset[a]
        origin[a] = region.shape[a] - region.origin[a] - region.blocks[a] * keep[a]
    return {"window": tuple(size), "block": tuple(keep), "offset": tuple(offset), "origin": tuple(origin)}


# -- which models --------------------------------------------------------------------------

def check_dense_model(model: nn.Module) -> None:
    """A one-line ``ValueError`` unless dense inference can run ``model``: OM-Net or the
    MC cascade, in 3-D,
    whose backbones and heads declare the window protocol
    (``omkit.models.windowed.check_windowed_model``)."""
    check_windowed_model(model)


class DenseFallbackWarning(UserWarning):
    """``inference="auto"`` ran tiles because a module of the model does not declare the
    window protocol (``omkit.models.window_protocol``); the message names it and why."""


def dense_model_problem(models: Sequence[nn.Module]) -> str | None:
    """Why dense inference cannot run one of ``models`` (the first such, in words naming
    the module), or None."""
    for model in models:
        try:
            check_dense_model(model)
        except ValueError as exc:
            return str(exc)
    return None


def backbones(model: nn.Module) -> list[nn.Module]:
    """The backbone of OM-Net, or of each network of the MC cascade."""
    return [net.backbone for net in model.networks] if isinstance(model, MCNet) else [model.backbone]


def min_divisor(model: nn.Module) -> int:
    """The spatial divisor the model's backbone(s) need (1 when they declare none)."""
    return math.lcm(*(int(getattr(b, "min_divisor", 1)) for b in backbones(model)))


# -- the computation -----------------------------------------------------------------------

def slab_spans(depth: int, plane: int, settings: DenseSettings, divisor: int) -> list[tuple[int, int, int, int]]:
    """``(core start, core end, input start, input end)`` along D of the backbone calls
    over a region of ``depth`` planes of ``plane`` voxels (``depth`` divisible by
    ``divisor``): one call, or slabs of at most ``settings.max_voxels`` voxels."""
    if settings.max_voxels is None or depth * plane <= settings.max_voxels:
        return [(0, depth, 0, depth)]
    halo = -(-settings.halo // divisor) * divisor
    core = (settings.max_voxels // plane - 2 * halo) // divisor * divisor
    if core < divisor:
        raise ValueError(f"dense max_voxels {settings.max_voxels} is too small: a slab of {divisor} planes of "
                         f"{plane} voxels with a {halo}-voxel halo on each side needs "
                         f"{(divisor + 2 * halo) * plane}; raise --dense-max-voxels or lower --dense-halo")
    return [(c, min(depth, c + core), max(0, c - halo), min(depth, c + core + halo)) for c in range(0, depth, core)]


def backbone_features(backbone: nn.Module, x: Tensor, settings: DenseSettings, divisor: int = 1,
                      progress: bool = False, planes: int | None = None) -> Tensor:
    """The backbone's features of ``x (B, C, D, H, W)`` over the whole of it: with
    ``planes``, its ``slab_forward`` (the same values, ``planes`` planes of temporaries at
    a time); else in context-limited slabs along D when it holds more than
    ``settings.max_voxels`` voxels (see :func:`slab_spans`)."""
    if planes is not None and declares(backbone, ("slab_forward",)):
        return backbone.slab_forward(x, planes)
    spans = slab_spans(x.shape[2], x.shape[3] * x.shape[4], settings, divisor)
    if len(spans) == 1:
        return backbone(x)
    if progress:
        from tqdm.auto import tqdm

        spans = tqdm(spans, desc="dense slabs", unit="slab", leave=False)
    out = None
    for c0, c1, s0, s1 in spans:
        part = backbone(x[:, :, s0:s1])
        if out is None:
            out = part.new_empty((part.shape[0], part.shape[1], *x.shape[2:]))
        out[:, :, c0:c1] = part[:, :, c0 - s0:c1 - s0]
    return out


def member_logits(model: nn.Module, x: Tensor, tasks: Sequence[int], geometry: dict, settings: DenseSettings,
                  divisor: int, progress: bool = False, batch: int = 16, planes: int | None = None) -> list[Tensor]:
    """One model's logits of ``tasks`` over the region ``x (1, C, D, H, W)``, the backbone
    in slabs of ``planes`` where given (:func:`backbone_features`). A CGA head
    guided by a CGA head (OM-Net + CGA's task 3) pools the guidance its tiles would have
    had (``omkit.models.windowed.guided_window_sums``); ``batch`` windows at a time."""
    if isinstance(model, MCNet):
        out = []
        for task in tasks:
            net = model.networks[task]
            features = backbone_features(net.backbone, x, settings, divisor, progress, planes)
            out.append(head_window_logits(net.head, features, None, geometry)[0])
        return out
    features = backbone_features(model.backbone, x, settings, divisor, progress, planes)
    return task_logits(model, features, tasks, geometry, batch)


def run_dense(ensemble, tiles, settings: DenseSettings, image: Tensor, tasks: Sequence[int],
              reduce: Callable[[list[Tensor]], Tensor], out_channels: int, out_dtype: torch.dtype,
              mask: Tensor) -> tuple[Tensor, int]:
    """Dense counterpart of the tile run of ``ensemble`` (an
    :class:`~omkit.inference.runners.Ensemble`) with the geometry of ``tiles``: ``tasks`` over
    the blocks touching ``mask``, ensemble- (and flip-) mean softmax reduced by ``reduce``
    (which maps ``[(1, K, *region)]`` to ``(1, out_channels, *region)``) on the compute
    device. Returns ``((out_channels, D, H, W)`` of ``out_dtype`` on ``ensemble.output_device``,
    zero where no touched block lies, and the number of blocks (= tiles) computed)."""
    e = ensemble
    spatial = tuple(image.shape[1:])
    out = torch.zeros((out_channels, *spatial), dtype=out_dtype, device=e.output_device)
    divisor = math.lcm(*(min_divisor(m) for m in e.models))
    region = dense_region(mask, tiles.size, tiles.keep, divisor)
    if region is None:
        return out, 0
    models = [folded_model(m) for m in e.models]
    planes = plan_slabs(models, region, settings, tiles, tasks, divisor, e.device, image.shape[0], len(e.flips))
    volume = image.to(e.device)
    origins = torch.tensor([region.start], dtype=torch.long, device=e.device)
    x = ops.gather_tiles(volume, origins, region.shape)  # zero outside the volume, as a tile reads
    sums: list[Tensor | None] = [None] * len(tasks)
    for model in models:
        for flip in e.flips:
            axes = [a + 2 for a in flip]
            xf = x.flip(axes) if flip else x
            if e.speed.channels_last:
                xf = xf.contiguous(memory_format=torch.channels_last_3d)
            geometry = window_geometry(region, tiles.size, tiles.keep, flip)
            with autocast(e.device, e.precision):
                logits = member_logits(model, xf, tasks, geometry, settings, divisor, e.progress, tiles.batch, planes)
            for i, lg in enumerate(logits):
                prob = torch.softmax((lg.flip(axes) if flip else lg).float(), dim=1)
                sums[i] = prob if sums[i] is None else sums[i].add_(prob)
    count = len(e.models) * len(e.flips)
    reduced = reduce([s / count for s in sums])[0]
    kept = region.kept(tiles.keep).to(reduced.device)
    reduced = torch.where(kept, reduced, torch.zeros((), dtype=reduced.dtype, device=reduced.device))
    dst = tuple(slice(max(0, s), min(n, s + r)) for s, r, n in zip(region.start, region.shape, spatial))
    src = tuple(slice(d.start - s, d.stop - s) for d, s in zip(dst, region.start))
    out[(slice(None),) + dst] = reduced[(slice(None),) + src].to(e.output_device, out_dtype)
    return out, int(region.touched.sum())


class DenseMemoryWarning(UserWarning):
    """Dense inference's smallest slabs need more than its memory budget: it runs them
    anyway; the message says how much it needs and has."""


def plan_slabs(models: Sequence[nn.Module], region: Region, settings: DenseSettings, tiles, tasks: Sequence[int],
               divisor: int, device: torch.device, in_channels: int, flips: int = 1) -> int | None:
    """The backbones' slab planes for ``region`` within the memory budget
    (``omkit.inference.memory``): None for the whole region at once, also where
    ``settings.max_voxels`` asks for context-limited slabs instead."""
    if settings.max_voxels is not None:
        return None
    budget = dense_budget(device, settings.max_memory)
    slabbed = all(declares(b, ("slab_forward",)) for m in models for b in backbones(m))
    candidates = slab_candidates(region.shape[0]) if slabbed else [None]
    geometry = window_geometry(region, tiles.size, tiles.keep)
    runs = len(models) * flips

    needs: dict[int | None, int] = {}  # traced once per slab size: the warning reuses the plan's figure

    def need(planes: int | None) -> int:
        if planes not in needs:
            needs[planes] = max(region_need(lambda x, p: member_logits(meta_copy(m), x, tasks, geometry, settings,
                                                                       divisor, batch=tiles.batch, planes=p),
                                            in_channels, region.shape, torch.float32, planes, runs) for m in models)
        return needs[planes]

    try:
        planes, fits = choose_slab_planes(need, candidates, budget)
    except Exception as exc:  # a plug-in's op with no meta kernel: nothing measured
        if settings.max_memory is None:
            return None  # as before budgets: the whole region
        warnings.warn(f"dense inference could not measure what it needs on the meta device ({type(exc).__name__}: "
                      f"{str(exc)[:200]}); it runs the smallest slabs, which may still exceed --max-memory",
                      DenseMemoryWarning, stacklevel=2)
        return candidates[-1]
    if not fits:
        warnings.warn(f"dense inference needs about {need(planes) / 2**30:.2f} GiB over a region of "
                      f"{list(region.shape)} voxels and has {budget / 2**30:.2f} GiB planned (--max-memory, or the "
                      "memory available); it may run out of memory: use tiles (--inference tiles)",
                      DenseMemoryWarning, stacklevel=2)
    return planes


# a model -> the same with its BatchNorms folded into the convolutions, made once per model
_FOLDED: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def folded_model(model: nn.Module) -> nn.Module:
    """``model`` with its BatchNorms folded into the convolutions
    (``omkit.models.blocks.fold_batch_norm``: the same function, one pass over the whole
    region's activations less per folded pair) and its 3-D convolutions computing large CPU
    inputs in cache-sized slabs (``omkit.models.cache_blocked``), made once per model and
    kept while it lives."""
    folded = _FOLDED.get(model)
    if folded is None:
        folded = _FOLDED[model] = cache_blocked_convolutions(fold_batch_norm(model))
    return folded


def check_dense(tiles, speed, models: Sequence[nn.Module]) -> None:
    """One-line ``ValueError`` when the tile geometry, the speed settings or the models rule
    dense inference out."""
    if tuple(tiles.stride) != tuple(tiles.keep):
        raise ValueError(f"dense inference needs the tile stride equal to the kept centre (every voxel in one "
                         f"block), got stride {list(tiles.stride)} and keep {list(tiles.keep)}")
    if speed.compile is not None:
        raise ValueError("dense inference does not compile the networks (speed.compile); use tile inference "
                         "or leave compile off")
    for model in models:
        check_dense_model(model)
