"""The window protocol: what a backbone, an attention module or a task head declares so
that dense inference (``omkit.inference.dense``) and window-consistent training
(``omkit.training.windows``) can give every *block* of a feature map the output that
its *window* (the tile that predicts it) would have given it, from one feature map.

Attention that is not pointwise pools statistics over its input and acts with them.
A module declares the two halves; the toolkit pools them per window with the window
ops (``omkit.ops.window_sums``, ``omkit.ops.block_linear``), and a module's own
``forward`` is the same declaration pooled over the whole input:

* ``pooled_terms(...) -> tuple of (B, C_i, *spatial) tensors``: per-voxel terms whose
  *sums* over the input are the module's statistics. SE and ECA: ``(x,)`` (the channel
  mean is the sum over the count); a mean-and-deviation module: ``(x, x * x)``; CGA:
  ``(F * Pt, F)``, the sums of its category pooling.
* the action made of the sums (each ``(..., C_i)``, the leading dims one per block)
  and ``count``, the voxels pooled over (a tile's or a window's, padding included, as
  a tile's mean includes its zero padding):

  - unguided attention (``guided = False``, between a plain head's conv and its
    classifier): ``channel_scale(sums, count) -> (..., C)``, the module's output being
    ``x * scale``. :class:`PooledChannelAttention` is the base class: its ``forward``
    is the declaration pooled over the whole input.
  - a guided head (``guided = True``, CGA-like, the whole head of a task):
    ``block_maps(sums, count) -> (m0, c0, m1, c1)``, its scores as an affine map of
    the voxel's features F and guidance Pt, ``S = m0 F + c0 + Pt (m1 F + c1)``
    (``m0``, ``m1`` (..., K, C); ``c0``, ``c1`` (..., K)). It may add
    ``fused_window_logits(features, guidance, geometry) -> (logits, maps)``: the same
    computation fused for inference (CGA: the ``omkit::cga_windowed`` op), used
    without gradient. A guided head whose terms are guidance-weighted copies of terms of
    the features (CGA: ``F * Pt`` and ``F``) may declare ``guided_terms(features) ->
    tuple of (B, C_i, *spatial)``: its ``pooled_terms`` are then each term times Pt, then
    each term (:func:`guidance_weighted`), and the window op forms the products itself in
    one pass (no product map, no concatenation, in the forward or the backward).

  A head of another kind declares ``window_logits(features, guidance, geometry) ->
  (logits, maps or None)`` itself (``PlainHead`` does, for any declared attention).

* a backbone declares ``window_consistent = True`` when its output at a voxel in eval
  mode depends on a bounded neighbourhood only (no GroupNorm, InstanceNorm, global
  pooling or other statistic over the input's extent), and ``min_divisor``, the
  number every input side must be divisible by. Undeclared means not consistent: such
  a model runs tile inference and trains on patches. A backbone may also declare
  ``slab_forward(x, planes)``: ``forward``'s function without gradient, holding about
  ``planes`` planes of temporaries at a time, which dense inference runs when the whole
  region does not fit its memory budget (``omkit.inference.memory``).

A declaration counts only where it is made by the class that defines ``forward`` or by
a subclass of it: a subclass that changes ``forward`` and not the declaration would
pool one thing and compute another. :func:`window_problem` says, in words naming the
plug-in, what keeps a model off the window path; the conformance kit
(``omkit.testing``) checks that a declaration matches the module's ``forward``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from omkit import ops

from .plugin_checks import ORIGIN_ATTR, describe

UNGUIDED_DECLARATION = ("pooled_terms", "channel_scale")
GUIDED_DECLARATION = ("pooled_terms", "block_maps")


# -- declarations --------------------------------------------------------------------------

def _owner(cls: type, name: str) -> type | None:
    return next((k for k in cls.__mro__ if name in vars(k)), None)


def declares(module: object, names: Sequence[str]) -> bool:
    """Whether ``module``'s class defines every one of ``names`` in the class that defines
    its ``forward`` or below it (see the module docstring)."""
    cls = type(module)
    forward = _owner(cls, "forward")
    for name in names:
        owner = _owner(cls, name)
        if owner is None or not callable(getattr(module, name, None)):
            return False
        if forward is not None and not issubclass(owner, forward):
            return False
    return True


def who(module: nn.Module) -> str:
    """``attention 'eca' of plug-in 'omkit_eca' (...)``, or the module's class."""
    return describe(getattr(module, ORIGIN_ATTR, None), module)


def backbone_problem(backbone: nn.Module) -> str | None:
    """Why ``backbone`` is not window-consistent, or None."""
    if getattr(backbone, "window_consistent", False) is not True:
        return (f"{who(backbone)} does not declare window_consistent = True (its output at a voxel may depend "
                "on statistics over the whole input, as GroupNorm or InstanceNorm do)")
    return None


def attention_problem(attention: nn.Module) -> str | None:
    """Why the unguided ``attention`` cannot be pooled per window, or None."""
    if type(attention) is nn.Identity or declares(attention, UNGUIDED_DECLARATION):
        return None
    return (f"{who(attention)} declares no window pooling ({', '.join(UNGUIDED_DECLARATION)} with its "
            "forward; see omkit.models.window_protocol)")


def head_problem(head: nn.Module) -> str | None:
    """Why ``head`` cannot be run window by window, or None."""
    if declares(head, ("window_logits",)):
        check = getattr(head, "window_problem", None)
        return check() if callable(check) else None
    if getattr(head, "guided", False) and declares(head, GUIDED_DECLARATION):
        return None
    names = GUIDED_DECLARATION if getattr(head, "guided", False) else ("window_logits",)
    return f"{who(head)} declares no window pooling ({', '.join(names)}; see omkit.models.window_protocol)"


# -- unguided attention ----------------------------------------------------------------------

class PooledChannelAttention(nn.Module):
    """Base class of unguided channel attention that declares its pooling: a subclass
    defines ``pooled_terms(x)`` and ``channel_scale(sums, count)``; ``forward`` scales
    ``x`` by the declaration pooled over the whole input, so a tile, a window and the
    module agree by construction."""

    guided = False

    def forward(self, x: Tensor) -> Tensor:
        spatial = tuple(range(2, x.dim()))
        # float32 sums of half-precision terms, as the window ops take them (a float16 sum overflows)
        sums = [t.sum(spatial, dtype=_accumulate(t.dtype)) for t in self.pooled_terms(x)]
        scale = self.channel_scale(sums, math.prod(x.shape[2:]))
        return x * scale.reshape(*scale.shape, *([1] * len(spatial))).to(x.dtype)


# -- pooling per window --------------------------------------------------------------------------

def _accumulate(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def window_term_sums(terms: Sequence[Tensor], geometry: dict) -> list[Tensor]:
    """Each term's sums over every block's window, ``(B, nD, nH, nW, C_i)`` per term."""
    # one window op a term: the op reads each once, where a concatenation would copy them all
    return [ops.window_sums(t, **geometry)[..., 0, :] for t in terms]


def guidance_weighted(terms: Sequence[Tensor], guidance: Tensor) -> tuple[Tensor, ...]:
    """The pooled terms of a guided head that declares ``guided_terms``: each term times
    the guidance, then each term."""
    return (*(t * guidance.to(t.dtype) for t in terms), *terms)


def guided_window_term_sums(terms: Sequence[Tensor], guidance: Tensor, geometry: dict) -> list[Tensor]:
    """The window sums of :func:`guidance_weighted` ``(terms, guidance)``, ``(B, nD, nH, nW,
    C_i)`` per pooled term, from one guided window op over the terms."""
    sums = [ops.window_sums(t, guidance, **geometry) for t in terms]  # rows [sum Pt * x, sum x]
    return [s[..., 0, :] for s in sums] + [s[..., 1, :] for s in sums]


def head_window_term_sums(head: nn.Module, features: Tensor, guidance: Tensor, geometry: dict) -> list[Tensor]:
    """A guided head's pooled-term sums over every block's window."""
    if declares(head, ("guided_terms",)):
        return guided_window_term_sums(head.guided_terms(features), guidance, geometry)
    return window_term_sums(head.pooled_terms(features, guidance), geometry)


def tile_term_sums(terms: Sequence[Tensor]) -> list[Tensor]:
    """Each term's sums over each whole tile (T, C_i, *window) -> (T, C_i)."""
    return [t.to(_accumulate(t.dtype)).flatten(2).sum(-1) for t in terms]


def window_channel_scale(attention: nn.Module, x: Tensor, geometry: dict) -> Tensor:
    """An unguided attention's channel scale per block, pooled over each block's window:
    ``(B, nD, nH, nW, C)``."""
    sums = window_term_sums(attention.pooled_terms(x), geometry)
    return attention.channel_scale(sums, math.prod(geometry["window"]))


def apply_block_maps(features: Tensor, maps: Sequence[Tensor | None], guidance: Tensor | None,
                     block: Sequence[int], origin: Sequence[int]) -> Tensor:
    """``S = m0 F + c0 + Pt (m1 F + c1)`` with per-block ``m0``, ``m1`` (B, nD, nH, nW, K, C)
    and shared ``c0``, ``c1`` (K,) (``omkit.ops.block_linear``)."""
    m0, c0, m1, c1 = maps
    guided = m1 is not None or c1 is not None
    return ops.block_linear(features, m0, c0, guidance=guidance if guided else None, m1=m1, c1=c1,
                            block=block, origin=origin)


def guided_head_window_logits(head: nn.Module, features: Tensor, guidance: Tensor, geometry: dict,
                              sums: Sequence[Tensor] | None = None) -> tuple[Tensor, tuple]:
    """A guided head's logits with each block's statistics pooled over its window (or the
    given per-block ``sums``), and its per-block maps (detached) for a head it guides."""
    guidance = guidance.detach()
    if sums is None and not torch.is_grad_enabled() and declares(head, ("fused_window_logits",)):
        return head.fused_window_logits(features, guidance, geometry)
    if sums is None:
        sums = head_window_term_sums(head, features, guidance, geometry)
    maps = head.block_maps(sums, math.prod(geometry["window"]))
    logits = apply_block_maps(features, maps, guidance, geometry["block"], geometry["origin"])
    return logits, tuple(None if m is None else m.detach() for m in maps)


def head_window_logits(head: nn.Module, features: Tensor, guidance: Tensor | None, geometry: dict,
                       sums: Sequence[Tensor] | None = None) -> tuple[Tensor, tuple | None]:
    """Any declared head's logits on ``features`` window by window (see the module
    docstring), and for a guided head its per-block maps (else None)."""
    if declares(head, ("window_logits",)):
        return head.window_logits(features, guidance, geometry)
    return guided_head_window_logits(head, features, guidance, geometry, sums)
