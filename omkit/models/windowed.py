"""Window-consistent task heads: every *block* of a feature map (a kept centre of the
tile grid) gets the attention that its *window* (the tile that predicts it) gives it.

Dense inference (``omkit.inference.dense``) and window-consistent training
(``omkit.training.windows``, ``--train-mode windows``) both run the heads through
:func:`task_logits`, so a model trained that way computes in training exactly what
dense inference computes at every supervised voxel. The geometry is the keywords of
the ``omkit.ops`` window ops: ``window`` (the tile), ``block`` (its kept centre),
``offset`` (the block inside its window) and ``origin`` (the first block's start).

What a head computes per window is its own declaration (``omkit.models.window_protocol``):
no head or attention class is named here. One thing is the model's: a guided head guided
by a guided head (OM-Net + CGA's task 3) pools, per window, the guidance the tile would
have had: the preceding head over that window with the block's own maps
(:func:`guided_window_sums`), not the neighbouring blocks'.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from omkit import ops

from .omnet import MCNet, OMNet, positive_probability
from .window_protocol import (apply_block_maps, backbone_problem, declares, head_problem, head_window_logits,
                              tile_term_sums)


# -- which models ---------------------------------------------------------------------------

# what to do instead, per use of the window-consistent heads
ALTERNATIVE = {
    "dense inference": "use tile inference (inference='tiles', --inference tiles)",
    "window-consistent training": "train on patches (--train-mode patches)",
}


def check_windowed_model(model: nn.Module, what: str = "dense inference") -> None:
    """A one-line ``ValueError`` (beginning with ``what``: ``"dense inference"`` or
    ``"window-consistent training"``) unless ``model``'s heads can be run window by
    window: OM-Net or the MC cascade, in 3-D, whose backbones and heads declare the window
    protocol (:func:`window_problem`)."""
    if getattr(model, "spatial_dims", 3) != 3:
        raise ValueError(f"{what} runs 3-D models only; {ALTERNATIVE[what]}")
    if isinstance(model, MCNet):
        if not all(hasattr(net, "backbone") and hasattr(net, "head") for net in model.networks):
            raise ValueError(f"{what} runs MC networks made of a backbone and a head; {ALTERNATIVE[what]}")
    elif not isinstance(model, OMNet):
        raise ValueError(f"{what} runs OM-Net and MC models, not {type(model).__name__}; {ALTERNATIVE[what]}")
    problem = window_problem(model)
    if problem is not None:
        raise ValueError(f"{what} cannot run this model: {problem}; {ALTERNATIVE[what]}")


def window_problem(model: nn.Module) -> str | None:
    """What keeps an OM-Net or MC ``model`` off the window path (a backbone or head
    that does not declare it, ``omkit.models.window_protocol``), or None."""
    if isinstance(model, MCNet):
        parts = [(net.backbone, net.head) for net in model.networks]
    else:
        parts = [(model.backbone, head) for head in model.heads]
    for backbone, head in parts:
        problem = backbone_problem(backbone) or head_problem(head)
        if problem is not None:
            return problem
    return None


# -- a guided head guided by a guided head -------------------------------------------------------

def block_windows(features: Tensor, geometry: dict) -> tuple[Tensor, list[int]]:
    """Origins (T, 3) in ``features``' coordinates of every block's window, D-major as the
    window ops number the blocks, and the blocks per axis."""
    counts = list(ops.reference.window_geometry(features.shape[2:], **geometry)[-1])
    axes = [g + b * torch.arange(n, dtype=torch.long) - o
            for n, g, b, o in zip(counts, geometry["origin"], geometry["block"], geometry["offset"])]
    return torch.cartesian_prod(*axes).reshape(-1, 3), counts


def _fitting_blocks(features: Tensor, geometry: dict, counts: Sequence[int]) -> list[int]:
    """Per axis, how many of the first blocks have their whole window inside ``features``
    (0 where the first window starts before it)."""
    fit = []
    for start, n, b, w, size in zip((g - o for g, o in zip(geometry["origin"], geometry["offset"])), counts,
                                    geometry["block"], geometry["window"], features.shape[2:]):
        fit.append(0 if start < 0 else max(0, min(n, (size - start - w) // b + 1)))
    return fit


def _window_tiles(x: Tensor, geometry: dict, fit: Sequence[int]) -> Tensor:
    """The windows of the first ``fit`` blocks per axis as tiles (B * fD * fH * fW, C, *window),
    D-major, differentiable in ``x``."""
    start = [g - o for g, o in zip(geometry["origin"], geometry["offset"])]
    view = x[:, :, start[0]:, start[1]:, start[2]:]
    for axis, (w, b) in enumerate(zip(geometry["window"], geometry["block"])):
        view = view.unfold(2 + axis, w, b)
    view = view[:, :, :fit[0], :fit[1], :fit[2]]  # (B, C, fD, fH, fW, *window)
    return view.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, x.shape[1], *geometry["window"])


def _term_sums_over_tiles(head: nn.Module, source_task: int, tiles: Tensor, guidance_tiles: Tensor,
                          maps: tuple, window: Sequence[int]) -> list[Tensor]:
    """``head``'s term sums over each tile (T, C_i), its guidance being the preceding head's
    positive probability over the tile with that tile's block maps (rows of ``maps``:
    ``m0``/``m1`` (T, K, C), shared ``c0``/``c1``); the guidance is a constant."""
    m0, c0, m1, c1 = maps
    per_tile = lambda m: None if m is None else m[:, None, None, None]  # noqa: E731 (T, 1, 1, 1, K, C)
    with torch.no_grad():
        scores = apply_block_maps(tiles.detach(), (per_tile(m0), c0, per_tile(m1), c1), guidance_tiles,
                                  block=window, origin=(0, 0, 0))
        pt = positive_probability(source_task, scores.to(torch.promote_types(scores.dtype, torch.float32)))
    return tile_term_sums(head.pooled_terms(tiles, pt))


def _map_rows(maps: tuple, samples: Sequence[int], which: Tensor) -> tuple:
    """The per-block maps (``m0``, ``m1`` (B, nD, nH, nW, K, C)) of blocks ``which`` (D-major
    numbers) of ``samples``, as rows (T, K, C); the shared biases as they are."""
    def rows(m):
        if m is None or m.dim() == 1:
            return m
        flat = m.reshape(m.shape[0], -1, *m.shape[-2:])
        return torch.cat([flat[n, which.to(m.device)] for n in samples])
    return tuple(rows(m) for m in maps)


def guided_window_sums(features: Tensor, head: nn.Module, source_task: int, source_guidance: Tensor,
                       source_maps: tuple, geometry: dict, batch: int) -> list[Tensor]:
    """``head``'s term sums (``pooled_terms``) per block window, ``(B, nD, nH, nW, C_i)`` per
    term, with the guidance a tile of the block would have had: the preceding guided head
    (of task ``source_task``, guided by ``source_guidance``) over the window with that
    block's maps ``source_maps``, not the neighbouring blocks'. Where gradients are enabled
    (training), the sums of the blocks whose windows lie inside ``features`` (a crop's
    supervised blocks) are differentiable in ``features``; the others, and all without
    gradient, are gathered ``batch`` windows at a time."""
    origins, counts = block_windows(features, geometry)
    window = geometry["window"]
    b = features.shape[0]
    fit = _fitting_blocks(features, geometry, counts) if torch.is_grad_enabled() else [0, 0, 0]
    index = torch.cartesian_prod(*(torch.arange(n) for n in counts)).reshape(-1, 3)
    inside = (index < torch.tensor(fit)).all(1)
    out: list[Tensor] | None = None
    if bool(inside.any()):
        which = inside.nonzero().flatten()  # the first fit blocks per axis, D-major as the tiles
        tiles = _window_tiles(features, geometry, fit)
        g_tiles = _window_tiles(source_guidance, geometry, fit)
        maps = _map_rows(source_maps, range(b), which)
        sums = _term_sums_over_tiles(head, source_task, tiles, g_tiles, maps, window)
        if bool(inside.all()):
            return [s.reshape(b, *counts, s.shape[-1]) for s in sums]
        out = [s.new_zeros((b, index.shape[0], s.shape[-1])) for s in sums]
        for o, s in zip(out, sums):
            o[:, which.to(o.device)] = s.reshape(b, -1, s.shape[-1])
    gathered = (~inside).nonzero().flatten()
    with torch.no_grad():
        for n in range(b):
            for start in range(0, gathered.numel(), batch):
                which = gathered[start:start + batch]
                part = origins[which].to(features.device)
                tiles = ops.gather_tiles(features[n], part, window)
                g_tiles = ops.gather_tiles(source_guidance[n], part, window)
                maps = _map_rows(source_maps, [n], which)
                sums = _term_sums_over_tiles(head, source_task, tiles, g_tiles, maps, window)
                if out is None:
                    out = [s.new_zeros((b, index.shape[0], s.shape[-1])) for s in sums]
                for o, s in zip(out, sums):
                    o[n, which.to(o.device)] = s.to(o.dtype)
    return [o.reshape(b, *counts, o.shape[-1]) for o in out]


# -- the heads of a model ----------------------------------------------------------------------

def task_logits(model: OMNet, features: Tensor, tasks: Sequence[int], geometry: dict,
                batch: int = 16) -> list[Tensor]:
    """OM-Net's logits of ``tasks`` on the backbone's ``features`` (B, C, D, H, W), every
    head window-consistent, guidance between tasks as in ``OMNet.forward`` (the preceding
    task's positive probability, no gradient). Tasks before those asked for run without
    gradient (the cross-task forward flow); ``batch`` windows at a time where a guided head
    guided by a guided head pools its guidance without gradient."""
    logits: dict[int, Tensor] = {}
    guidance: Tensor | None = None  # the guidance of the current task
    previous: tuple | None = None  # (task, its guidance, its block maps) of a preceding guided head
    for task in range(max(tasks) + 1):
        head = model.heads[task]
        guided = getattr(head, "guided", False)
        with torch.set_grad_enabled(torch.is_grad_enabled() and task in tasks):
            sums = None
            if guided and previous is not None and not declares(head, ("window_logits",)):
                sums = guided_window_sums(features, head, *previous, geometry, batch)
            logits[task], maps = head_window_logits(head, features, guidance if guided else None, geometry, sums)
        previous = (task, guidance, maps) if guided and maps is not None else None
        if task < 2 and getattr(model.heads[task + 1], "guided", False):
            guidance = positive_probability(task, logits[task].detach())
    return [logits[t] for t in tasks]
