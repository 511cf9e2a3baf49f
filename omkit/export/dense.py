"""Dense inference as one exportable graph: the region ``omkit predict`` runs dense
(``omkit.inference.dense``) in, and which flip of it, to every task's logits over it,
with standard operators only (pooling, padding, reshapes, matrix products, gathers), so
that ONNX runs it without omkit.

The geometry is fixed when the graph is made: the window (the tile), the block (its kept
centre) and the block's offset inside its window. The region is what
``omkit.inference.dense.dense_region`` makes of the mask: it starts at the first
window, so the blocks start ``offset`` voxels in and every ``block`` voxels after; its
sides (dynamic in the graph) are divisible by the backbone's ``min_divisor``.

Mirroring without a second geometry: a flipped region puts each block elsewhere inside
its window, so dense inference flips the geometry with the region. Here the graph flips
the region (``flip``, one 0/1 per axis D, H, W), runs what has spatial context (the
backbone, a plain head's conv) on it, flips those features back, and runs the rest of
every head in the region's own frame: what remains is per voxel, or sums over a
window's voxels, which are the same voxels in either frame. So one geometry serves every
flip, and the logits come back in the region's frame.

What a head computes is its own declaration (``omkit.models.window_protocol``);
:func:`dense_export_problem` says which models this covers: OM-Net whose backbone is
window-consistent, whose unguided heads are ``PlainHead`` (with or without declared
attention) and whose guided heads declare ``pooled_terms`` and ``block_maps`` (with
per-voxel terms, as the protocol asks).

A guided head guided by a guided head (OM-Net + CGA's task 3) pools, per window, the
guidance the tile would have had (``omkit.models.windowed.guided_window_sums``): the
preceding head over that window with the window's own block's maps. Here without a loop
over windows: the region is cut into *cells* of one block's size aligned with the
windows' starts, so that a window covers the same cells' parts for every block (the
cells ``k`` to ``k + S - 1`` along an axis, the last one's first ``window - (S - 1)
block`` voxels). For each of those ``S_D S_H S_W`` shifts, every block applies its own
maps to its shifted cells at once, and the terms' sums add up.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omkit.inference.tiling import keep_offset
from omkit.models.heads import PlainHead
from omkit.models.omnet import OMNet, positive_classes
from omkit.models.window_protocol import GUIDED_DECLARATION, UNGUIDED_DECLARATION, declares, who


def positive_probability(task: int, logits: Tensor) -> Tensor:
    """``omkit.models.omnet.positive_probability`` as ``sigmoid(logsumexp(positive) -
    logsumexp(the others))``: the same probability (within float rounding), and a graph
    onnxruntime runs faster (its softmax over the class axis, not the last one, transposes
    twice; the whole dense graph takes about 20 % less time per call)."""
    positive = list(positive_classes(task))
    others = [k for k in range(logits.shape[1]) if k not in positive]
    return torch.sigmoid(torch.logsumexp(logits[:, positive], 1, keepdim=True)
                         - torch.logsumexp(logits[:, others], 1, keepdim=True))


def dense_export_problem(model: nn.Module) -> str | None:
    """Why :class:`DenseNetwork` cannot express ``model``'s dense inference (in words
    naming the module), or None."""
    from omkit.models.windowed import window_problem

    if not isinstance(model, OMNet):
        return f"dense export covers OM-Net, not {type(model).__name__}"
    problem = window_problem(model)
    if problem is not None:
        return problem
    for head in model.heads:
        if getattr(head, "guided", False):
            if not declares(head, GUIDED_DECLARATION):
                return f"{who(head)} declares no {', '.join(GUIDED_DECLARATION)}"
        elif type(head) is not PlainHead:
            return f"{who(head)} is an unguided head of its own (dense export knows PlainHead's layers)"
        elif not isinstance(head.attention, nn.Identity) and not declares(head.attention, UNGUIDED_DECLARATION):
            return f"{who(head.attention)} declares no {', '.join(UNGUIDED_DECLARATION)}"
    return None


def flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """``x (B, C, D, H, W)`` reversed along each spatial axis whose ``flip`` entry is 1
    (a gather per axis, so the flags are the graph's input, not its structure)."""
    for axis in range(3):
        n = x.shape[2 + axis]
        forward = torch.arange(n, device=x.device)
        index = torch.where(flip[axis] > 0, n - 1 - forward, forward)
        x = x.index_select(2 + axis, index)
    return x


def windows_per_axis(x: Tensor, block: Sequence[int]) -> list:
    """``ceil(N / block)`` per spatial axis of ``x``: every block's window, a few more at the
    end (whose blocks hold no voxel) than the window ops count. Every map of a graph has this
    many, so that no shape in it depends on a comparison of the region's sides."""
    return [(x.shape[2 + a] + b - 1) // b for a, b in enumerate(block)]


def window_sums(x: Tensor, window: Sequence[int], block: Sequence[int]) -> Tensor:
    """Sums of ``x (B, C, D, H, W)`` over the windows starting at every multiple of
    ``block`` (:func:`windows_per_axis`; zero past the end), ``(B, nD, nH, nW, C)``; an
    axis at a time (average pooling times the window), in float32 at least."""
    counts = windows_per_axis(x, block)
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    for axis, (w, b) in enumerate(zip(window, block)):
        pad = [0, 0] * 3
        pad[2 * (2 - axis) + 1] = (counts[axis] - 1) * b + w - x.shape[2 + axis]  # the last window whole
        kernel, stride = [1, 1, 1], [1, 1, 1]
        kernel[axis], stride[axis] = w, b
        x = F.avg_pool3d(F.pad(x, pad), kernel, stride) * w
    return x.permute(0, 2, 3, 4, 1)


def _cells(x: Tensor, block: Sequence[int], start: Sequence[int], extra: Sequence[int]) -> Tensor:
    """``x (B, C, D, H, W)`` from ``start`` on, padded with zeros at the end and cut into
    cells of ``block``: :func:`windows_per_axis` cells per axis and ``extra`` more,
    ``(B, nD, nH, nW, C, bD, bH, bW)``."""
    counts = [n + e for n, e in zip(windows_per_axis(x, block), extra)]
    pad = []
    for axis in (2, 1, 0):
        pad += [0, counts[axis] * block[axis] - (x.shape[2 + axis] - start[axis])]
    x = F.pad(x[:, :, start[0]:, start[1]:, start[2]:], pad)
    b, c = x.shape[:2]
    x = x.reshape(b, c, counts[0], block[0], counts[1], block[1], counts[2], block[2])
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7)


def _uncells(cells: Tensor, shape: Sequence[int], start: Sequence[int]) -> Tensor:
    """The inverse of :func:`_cells`: ``(B, nD, nH, nW, K, bD, bH, bW)`` back to
    ``(B, K, *shape)``, zero before ``start``."""
    b, nd, nh, nw, k, bd, bh, bw = cells.shape
    x = cells.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, k, nd * bd, nh * bh, nw * bw)
    for axis in range(3):
        x = x.narrow(2 + axis, 0, shape[axis] - start[axis])
    return F.pad(x, [start[2], 0, start[1], 0, start[0], 0])


def _affine(m: Tensor | None, c: Tensor | None, x: Tensor) -> Tensor:
    """``m x + c`` for per-block ``m`` (..., K, C) and voxels ``x`` (..., C, V), a term
    of a block map (``m``, the shared bias ``c`` (K,) or both may be None)."""
    out = torch.matmul(m.to(x.dtype), x) if m is not None else torch.zeros((), dtype=x.dtype)
    return out + c.to(x.dtype)[:, None] if c is not None else out


def _map_scores(maps: Sequence[Tensor | None], x: Tensor, guidance: Tensor | None) -> Tensor:
    """``S = m0 x + c0 + Pt (m1 x + c1)`` over voxels ``x`` (..., C, V), guidance (..., 1, V)."""
    m0, c0, m1, c1 = maps
    scores = _affine(m0, c0, x)
    if m1 is not None or c1 is not None:
        scores = scores + guidance * _affine(m1, c1, x)
    return scores


def apply_maps(features: Tensor, maps: Sequence[Tensor | None], guidance: Tensor | None, block: Sequence[int],
               offset: Sequence[int]) -> Tensor:
    """``S = m0 F + c0 + Pt (m1 F + c1)`` with each block's ``m0``, ``m1`` ``(B, nD, nH,
    nW, K, C)`` (:func:`windows_per_axis` blocks), ``(B, K, D, H, W)``, zero before the
    first block: ``omkit.ops.block_linear`` in reshapes and matrix products."""
    flat = _cells(features, block, offset, (0, 0, 0)).flatten(5)  # (B, nD, nH, nW, C, V)
    guided = guidance is not None and (maps[2] is not None or maps[3] is not None)
    pt = _cells(guidance, block, offset, (0, 0, 0)).flatten(5) if guided else None  # (B, nD, nH, nW, 1, V)
    scores = _map_scores(maps, flat, pt)
    return _uncells(scores.reshape(*scores.shape[:5], *block), features.shape[2:], offset)


def guided_sums(head: nn.Module, features: Tensor, source_task: int, source_guidance: Tensor, source_maps: tuple,
                window: Sequence[int], block: Sequence[int]) -> list[Tensor]:
    """``head``'s term sums per window, ``(B, nD, nH, nW, C_i)`` (as many windows per axis
    as :func:`window_sums` gives), its guidance over each window being the preceding head's
    (task ``source_task``, guided by ``source_guidance``) with that window's block maps
    (see the module docstring); the source maps have :func:`windows_per_axis` blocks."""
    spans = [-(-w // b) for w, b in zip(window, block)]  # S: cells a window touches per axis
    extra = [s - 1 for s in spans]
    f_cells = _cells(features, block, (0, 0, 0), extra)  # (B, nD + S - 1, ..., C, bD, bH, bW)
    g_cells = _cells(source_guidance, block, (0, 0, 0), extra)
    n = windows_per_axis(features, block)
    m0, c0, m1, c1 = source_maps
    b, c = features.shape[:2]
    maps = [None if m is None else m.reshape(-1, *m.shape[-2:]) for m in (m0, m1)]
    totals: list[Tensor] | None = None
    for shift in itertools.product(*(range(s) for s in spans)):
        # the part of a cell a window covers at this shift: whole, or the last cell's first voxels
        part = [b_ if s < spans[a] - 1 else w - (spans[a] - 1) * b_
                for a, (s, w, b_) in enumerate(zip(shift, window, block))]
        cut = (slice(None), *(slice(s, s + k) for s, k in zip(shift, n)), slice(None),
               *(slice(0, p) for p in part))
        f = f_cells[cut].reshape(-1, c, *part)  # (B * windows, C, *part): block t's shifted cells
        g = g_cells[cut].reshape(-1, 1, *part)
        scores = _map_scores((maps[0], c0, maps[1], c1), f.flatten(2), g.flatten(2))
        pt = positive_probability(source_task, scores.reshape(-1, scores.shape[1], *part))
        sums = [t.flatten(2).sum(-1) for t in head.pooled_terms(f, pt)]
        totals = sums if totals is None else [a + s for a, s in zip(totals, sums)]
    return [t.reshape(b, *n, t.shape[-1]) for t in totals]


class DenseNetwork(nn.Module):
    """The exported dense graph of an OM-Net ``model`` (eval mode) for tiles of ``size``
    keeping ``keep``: ``(region (1, C, D, H, W), flip (3,) int64)`` -> each task's logits
    ``(1, K, D, H, W)`` in the region's frame (see the module docstring)."""

    def __init__(self, model: nn.Module, size: Sequence[int], keep: Sequence[int]):
        super().__init__()
        problem = dense_export_problem(model)
        if problem is not None:
            raise ValueError(f"dense export cannot express this model: {problem}")
        self.model = model
        self.num_tasks = len(model.heads)
        self.window, self.block = tuple(int(s) for s in size), tuple(int(k) for k in keep)
        self.offset = keep_offset(self.window, self.block)

    @property
    def output_names(self) -> list[str]:
        return [f"task{t + 1}" for t in range(self.num_tasks)]

    def _plain(self, head: PlainHead, features: Tensor, flip: Tensor) -> Tensor:
        x = flip_where(head.conv(features), flip)  # the conv in the flipped frame, the rest per voxel or window
        if isinstance(head.attention, nn.Identity):
            return head.classifier(x)
        sums = [window_sums(t, self.window, self.block) for t in head.attention.pooled_terms(x)]
        scale = head.attention.channel_scale(sums, math.prod(self.window))  # (B, nD, nH, nW, C)
        weight = head.classifier.weight.flatten(1)
        return apply_maps(x, (weight * scale[..., None, :].to(weight.dtype), head.classifier.bias, None, None), None,
                          self.block, self.offset)

    def forward(self, region: Tensor, flip: Tensor) -> tuple[Tensor, ...]:
        flipped = self.model.backbone(flip_where(region, flip))
        features: Tensor | None = None  # in the region's frame, made when a guided head needs it
        logits: list[Tensor] = []
        guidance: Tensor | None = None
        previous: tuple | None = None  # (task, its guidance, its block maps) of a preceding guided head
        for task, head in enumerate(self.model.heads):
            maps = None
            if not getattr(head, "guided", False):
                logits.append(self._plain(head, flipped, flip))
            else:
                if features is None:
                    features = flip_where(flipped, flip)
                if previous is not None:
                    sums = guided_sums(head, features, *previous, self.window, self.block)
                else:
                    sums = [window_sums(t, self.window, self.block) for t in head.pooled_terms(features, guidance)]
                maps = head.block_maps(sums, math.prod(self.window))
                logits.append(apply_maps(features, maps, guidance, self.block, self.offset))
            previous = (task, guidance, maps) if maps is not None else None
            if task + 1 < self.num_tasks and getattr(self.model.heads[task + 1], "guided", False):
                guidance = positive_probability(task, logits[-1])
        return tuple(logits)
