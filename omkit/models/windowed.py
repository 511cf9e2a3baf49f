"""Window-consistent task heads: every *block* of a feature map (a kept centre of the
tile grid) gets the attention that its *window* (the tile that predicts it) gives it.

Dense inference (``omkit.inference.dense``) and window-consistent training
(``omkit.training.windows``, ``--train-mode windows``) both run the heads through
:func:`task_logits`, so a model trained that way computes in training exactly what
dense inference computes at every supervised voxel. The geometry is the keywords of
the ``omkit.ops`` window ops: ``window`` (the tile), ``block`` (its kept centre),
``offset`` (the block inside its window) and ``origin`` (the first block's start).

Per head: a plain head is fully convolutional; SE (:class:`~.attention.SE`) takes each
block's channel mean over its window (``omkit.ops.window_sums``) and applies its scale
as per-block classifier weights (``omkit.ops.block_linear``); CGA and its variants pool
each block's category importance over its window. Without gradient that is the fused
``omkit.ops.cga_windowed``; with gradient, the same math from window sums and one
per-block linear map (both ops have a backward). A CGA head guided by a CGA head
(OM-Net + CGA's task 3) pools, per window, the guidance the tile would have had: the
preceding head over that window with the block's own importance
(:func:`guided_window_sums`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from omkit import ops

from .attention import CGA, SE
from .heads import PlainHead
from .omnet import MCNet, OMNet, positive_probability


# -- which models ---------------------------------------------------------------------------

def _check_head(head: nn.Module, what: str) -> None:
    if isinstance(head, CGA) and type(head).forward is CGA.forward:
        return
    if isinstance(head, PlainHead) and type(head).forward is PlainHead.forward:
        att = head.attention
        if type(att) is nn.Identity or (isinstance(att, SE) and type(att).forward is SE.forward):
            return
        raise ValueError(f"{what} cannot pool attention {type(att).__name__} per window; {ALTERNATIVE[what]}")
    raise ValueError(f"{what} cannot run head {type(head).__name__}; {ALTERNATIVE[what]}")


# what to do instead, per use of the window-consistent heads
ALTERNATIVE = {
    "dense inference": "use tile inference (inference='tiles', --inference tiles)",
    "window-consistent training": "train on patches (--train-mode patches)",
}


def check_windowed_model(model: nn.Module, what: str = "dense inference") -> None:
    """A one-line ``ValueError`` (beginning with ``what``: ``"dense inference"`` or
    ``"window-consistent training"``) unless ``model``'s heads can be run window by
    window: OM-Net (``OMNet``: plain, SE or CGA-like heads) or the MC cascade, in 3-D."""
    if getattr(model, "spatial_dims", 3) != 3:
        raise ValueError(f"{what} runs 3-D models only; {ALTERNATIVE[what]}")
    if isinstance(model, MCNet):
        if not all(hasattr(net, "backbone") and hasattr(net, "head") for net in model.networks):
            raise ValueError(f"{what} runs MC networks made of a backbone and a head; {ALTERNATIVE[what]}")
        heads = [net.head for net in model.networks]
    elif isinstance(model, OMNet):
        heads = list(model.heads)
    else:
        raise ValueError(f"{what} runs OM-Net and MC models, not {type(model).__name__}; {ALTERNATIVE[what]}")
    for head in heads:
        _check_head(head, what)


# -- one head -------------------------------------------------------------------------------

def cga_weights(head: CGA) -> tuple:
    """``(w_pos, b_pos, w_neg, b_neg, w_out, b_out)``: the head's 1x1x1 convs flattened, as
    ``CGA.forward`` passes them to ``omkit.functional.cga``."""
    return (*head._flat(head.score_pos), *head._flat(head.score_neg), *head._flat(head.final))


def importance_from_sums(sums: Tensor, eps: float) -> Tensor:
    """Each block's category importance ``m`` (B, nD, nH, nW, 2, C) from its window sums
    ``[sum Pt * F, sum F]``: CSCI pooling's L1 normalisation (``omkit.ops.reference.cga_pool``)."""
    z = torch.stack([sums[..., 0, :], sums[..., 1, :] - sums[..., 0, :]], -2)
    return z / z.abs().sum(-1, keepdim=True).clamp_min(eps)


def cga_from_importance(head: CGA, features: Tensor, guidance: Tensor, m: Tensor, geometry: dict) -> Tensor:
    """The CGA head's scores with each block's importance ``m``, and the CompSeg merge by
    the voxel's own ``guidance``, as one per-block linear map (``omkit.ops.block_linear``)."""
    w_pos, b_pos, w_neg, b_neg, w_out, b_out = cga_weights(head)
    k = (w_pos if w_pos is not None else w_neg).shape[0]
    zero_w = m.new_zeros((*m.shape[:4], k, m.shape[-1]))
    zero_b = m.new_zeros(k)
    wt = w_pos.to(m.dtype) * m[..., 0:1, :] if w_pos is not None else zero_w
    wn = w_neg.to(m.dtype) * m[..., 1:2, :] if w_neg is not None else zero_w
    bp = b_pos.to(m.dtype) if b_pos is not None and w_pos is not None else zero_b
    bn = b_neg.to(m.dtype) if b_neg is not None and w_neg is not None else zero_b
    # S = m0 F + c0 + Pt (m1 F + c1) for each variant's merge of S_t = Wt F + bp, S_n = Wn F + bn
    if head.variant == "minus":
        m0, c0, m1, c1 = wt + wn, bp + bn, None, None
    elif head.variant == "pos":
        m0, c0, m1, c1 = zero_w, None, wt, bp
    elif head.variant == "neg":
        m0, c0, m1, c1 = wn, bn, -wn, -bn
    else:
        m0, c0, m1, c1 = wn, bn, wt - wn, bp - bn
    if w_out is not None:
        w_out = w_out.to(m.dtype)
        m0 = torch.einsum("jk,...kc->...jc", w_out, m0)
        c0 = w_out @ (c0 if c0 is not None else zero_b) + (b_out.to(m.dtype) if b_out is not None else 0)
        if m1 is not None:
            m1, c1 = torch.einsum("jk,...kc->...jc", w_out, m1), w_out @ c1
    return ops.block_linear(features, m0, c0, guidance=guidance if m1 is not None else None, m1=m1, c1=c1,
                            block=geometry["block"], origin=geometry["origin"])


def cga_from_sums(head: CGA, features: Tensor, guidance: Tensor, sums: Tensor, geometry: dict) -> Tensor:
    """The CGA head's scores with each block's importance pooled from given window sums
    ``[sum Pt * F, sum F]`` (B, nD, nH, nW, 2, C)."""
    return cga_from_importance(head, features, guidance, importance_from_sums(sums, head.eps), geometry)


def head_logits(head: nn.Module, features: Tensor, guidance: Tensor | None,
                geometry: dict) -> tuple[Tensor, Tensor | None]:
    """A task head's logits on ``features`` with its attention pooled per block over the
    block's window, and for a CGA head its importance ``m`` per block (B, nD, nH, nW, 2, C)
    (else None). Differentiable where gradients are enabled."""
    if isinstance(head, CGA):
        if not torch.is_grad_enabled():
            return ops.cga_windowed(features, guidance, *cga_weights(head), **geometry, variant=head.variant,
                                    eps=head.eps, return_importance=True)
        m = importance_from_sums(ops.window_sums(features, guidance.detach(), **geometry), head.eps)
        return cga_from_importance(head, features, guidance.detach(), m, geometry), m.detach()
    if type(head.attention) is nn.Identity:
        return head(features), None
    # SE: each block's channel mean over its window scales the classifier's input channels
    x = head.conv(features)
    mean = ops.window_sums(x, **geometry)[..., 0, :] / math.prod(geometry["window"])
    scale = head.attention.fc(mean.to(x.dtype))  # (B, nD, nH, nW, C)
    weight = head.classifier.weight.flatten(1)  # (K, C)
    m0 = weight * scale[..., None, :].to(weight.dtype)
    return ops.block_linear(x, m0, head.classifier.bias, block=geometry["block"], origin=geometry["origin"]), None


# -- a CGA head guided by a CGA head ----------------------------------------------------------

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


def _window_view(x: Tensor, geometry: dict, fit: Sequence[int]) -> Tensor:
    """The windows of the first ``fit`` blocks per axis as one strided view
    (B, C, fD, fH, fW, *window), no copy."""
    start = [g - o for g, o in zip(geometry["origin"], geometry["offset"])]
    view = x[:, :, start[0]:, start[1]:, start[2]:]
    for axis, (w, b) in enumerate(zip(geometry["window"], geometry["block"])):
        view = view.unfold(2 + axis, w, b)
    return view[:, :, :fit[0], :fit[1], :fit[2]]


def _guided_sums_in_place(features: Tensor, source_task: int, source: CGA, source_guidance: Tensor,
                          source_m: Tensor, geometry: dict, fit: Sequence[int], acc: torch.dtype) -> Tensor:
    """:func:`guided_window_sums` of the blocks whose windows lie inside ``features`` (the
    first ``fit`` per axis), differentiable in ``features``, from strided views."""
    b, c = features.shape[:2]
    view = _window_view(features, geometry, fit)
    with torch.no_grad():
        g_view = _window_view(source_guidance, geometry, fit)
        tiles = view.detach().permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, c, *geometry["window"])
        g_tiles = g_view.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, 1, *geometry["window"])
        m = source_m[:, :fit[0], :fit[1], :fit[2]].reshape(-1, *source_m.shape[-2:]).to(tiles.dtype)
        scores = ops.cga_recalibrate(tiles, g_tiles, m, *cga_weights(source), variant=source.variant)
        pt = positive_probability(source_task, scores.to(acc)).reshape(b, *fit, *geometry["window"])
    values = view.to(acc)
    guided = torch.einsum("bcijkxyz,bijkxyz->bijkc", values, pt)
    return torch.stack([guided, values.sum((-3, -2, -1)).permute(0, 2, 3, 4, 1)], -2)


def guided_window_sums(features: Tensor, source_task: int, source: CGA, source_guidance: Tensor, source_m: Tensor,
                       geometry: dict, batch: int) -> Tensor:
    """Every block's window sums ``[sum Pt_b * F, sum F]`` (B, nD, nH, nW, 2, C), where
    ``Pt_b`` is the guidance a tile of the block would have had: the positive probability
    of the preceding CGA head ``source`` (of task ``source_task``, guided by
    ``source_guidance``) over the window with that block's importance ``source_m``, not
    the neighbouring blocks'. ``Pt_b`` is a constant (forward-only cross-task guidance).
    Where gradients are enabled (training), the sums of the blocks whose windows lie
    inside ``features`` (a crop's supervised blocks) are differentiable in ``features``
    (strided views); the others, and all without gradient, are gathered ``batch`` windows
    at a time."""
    origins, counts = block_windows(features, geometry)
    weights = cga_weights(source)
    acc = torch.float32 if features.dtype in (torch.float16, torch.bfloat16) else features.dtype
    fit = _fitting_blocks(features, geometry, counts) if torch.is_grad_enabled() else [0, 0, 0]
    if list(fit) == list(counts):
        return _guided_sums_in_place(features, source_task, source, source_guidance, source_m, geometry, fit, acc)
    b, c = features.shape[:2]
    out = torch.zeros((b, origins.shape[0], 2, c), dtype=acc, device=features.device)
    # the windows gathered: those the strided views below do not give (all, without gradient)
    index = torch.cartesian_prod(*(torch.arange(n) for n in counts)).reshape(-1, 3)
    gathered = (~(index < torch.tensor(fit)).all(1)).nonzero().flatten()
    with torch.no_grad():
        for n in range(b):
            m_all = source_m[n].reshape(-1, *source_m.shape[-2:])
            for start in range(0, gathered.numel(), batch):
                which = gathered[start:start + batch]
                part = origins[which].to(features.device)
                f = ops.gather_tiles(features[n], part, geometry["window"])
                g = ops.gather_tiles(source_guidance[n], part, geometry["window"])
                scores = ops.cga_recalibrate(f, g, m_all[which.to(m_all.device)].to(f.dtype), *weights,
                                             variant=source.variant)
                pt = positive_probability(source_task, scores.to(acc))
                flat = f.to(acc).flatten(2)
                rows = which.to(out.device)
                out[n, rows, 0] = torch.einsum("tcv,tv->tc", flat, pt.flatten(1)).to(acc)
                out[n, rows, 1] = flat.sum(-1).to(acc)
    out = out.reshape(b, *counts, 2, c)
    if min(fit) > 0:  # the blocks inside get their gradient
        inside = _guided_sums_in_place(features, source_task, source, source_guidance, source_m, geometry, fit, acc)
        out = out.clone()
        out[:, :fit[0], :fit[1], :fit[2]] = inside
    return out


# -- the heads of a model ----------------------------------------------------------------------

def task_logits(model: OMNet, features: Tensor, tasks: Sequence[int], geometry: dict,
                batch: int = 16) -> list[Tensor]:
    """OM-Net's logits of ``tasks`` on the backbone's ``features`` (B, C, D, H, W), every
    head window-consistent, guidance between tasks as in ``OMNet.forward`` (the preceding
    task's positive probability, no gradient). Tasks before those asked for run without
    gradient (the cross-task forward flow); ``batch`` windows at a time where a CGA head
    guided by a CGA head pools its guidance without gradient."""
    logits: dict[int, Tensor] = {}
    guidance: Tensor | None = None  # the guidance of the current task
    previous: tuple | None = None  # (task, CGA head, its guidance, its m) of the preceding task
    for task in range(max(tasks) + 1):
        head = model.heads[task]
        with torch.set_grad_enabled(torch.is_grad_enabled() and task in tasks):
            if isinstance(head, CGA) and previous is not None:
                sums = guided_window_sums(features, *previous, geometry, batch)
                logits[task], m = cga_from_sums(head, features, guidance, sums, geometry), None
            else:
                logits[task], m = head_logits(head, features, guidance if head.guided else None, geometry)
        previous = (task, head, guidance, m) if isinstance(head, CGA) and m is not None else None
        if task < 2 and model.heads[task + 1].guided:
            guidance = positive_probability(task, logits[task].detach())
    return [logits[t] for t in tasks]
