"""The window-consistent (dense) op family, every piece in one place: the public
functions :func:`window_sums` (every block's window summed, with and without the
guidance, by separable prefix sums), :func:`block_linear` (a 1x1x1 convolution whose
weights change per block), both with a backward op, and :func:`cga_windowed` (the CGA head
with each block's m pooled over its window: both passes fused; inference only); their
pure-PyTorch references; the ops' fake kernels and autograd formulas; and the ops' entries
(:data:`OPS`). C++: ``csrc/window_common.{h,cpp}`` (bodies, ``WindowKernels``) and each
backend's ``window_kernel.*`` (passes).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from omkit.ops._library import call
from omkit.ops.cga import CGA_DTYPES, DEFAULT_EPS, cga_head, check_features_guidance, check_variant, num_outputs
from omkit.ops.spec import Op
from omkit.ops.tiles import _as_list3, _triple, gather_tiles_reference

# The window passes take the CGA passes' dtypes (csrc/<backend>/window_kernel.*, kWindowDtypes).
WINDOW_DTYPES = CGA_DTYPES

#
# The paper predicts a volume tile by tile, keeping each tile's centre; CGA and SE pool over the
# whole tile. Dense inference computes the features once per voxel and gives every voxel the
# attention its tile would have given it: the voxels are split into *blocks* (the kept centres,
# one per tile of the stride grid) and each block's attention is pooled over its *window* (the
# tile). Per axis of a feature map of extent N: block k (k = 0, 1, ...) covers
# [origin + k * block, origin + (k + 1) * block) within [0, N); its window starts ``offset``
# voxels before the block and is ``window`` voxels long; what a window holds outside [0, N) reads
# as zero (as ``gather_tiles`` reads a tile). Voxels before ``origin`` belong to no block.

def window_geometry(shape: Sequence[int], window, block, offset, origin) -> tuple[tuple[int, int, int], ...]:
    """``(window, block, offset, origin, blocks)``: the geometry as triples after checking it
    against a spatial ``shape`` (D, H, W); ``blocks`` is the number of blocks per axis."""
    window, block = _triple("window", window), _triple("block", block)
    offset, origin = _triple("offset", offset), _triple("origin", origin)
    for name, value in (("window", window), ("block", block)):
        if min(value) < 1:
            raise ValueError(f"{name} must be at least 1 voxel on every axis, got {list(value)}")
    if min(origin) < 0:
        raise ValueError(f"origin must be >= 0 on every axis, got {list(origin)}")
    if any(not 0 <= o <= w - b for o, w, b in zip(offset, window, block)):
        raise ValueError(f"every block must lie inside its window: 0 <= offset <= window - block on every axis, "
                         f"got offset {list(offset)}, window {list(window)}, block {list(block)}")
    blocks = tuple(max(0, -(-(n - g) // b)) for n, g, b in zip(shape, origin, block))
    return window, block, offset, origin, blocks  # type: ignore[return-value]


def _check_volume(op: str, x: Tensor, guidance: Tensor | None) -> None:
    if x.dim() != 5:
        raise ValueError(f"{op}: features must be (B, C, D, H, W), got shape {tuple(x.shape)}")
    if guidance is not None:
        check_features_guidance(op, x, guidance)


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def window_sums_reference(x: Tensor, guidance: Tensor | None, window, block, offset, origin) -> Tensor:
    """Sums over every block's window: ``(B, nD, nH, nW, R, C)`` with R = 2, rows
    ``[sum Pt * x, sum x]``, when ``guidance`` Pt (B, 1, D, H, W) is given, R = 1 (``sum x``)
    otherwise; ``x`` (B, C, D, H, W). In float32 for half-precision ``x``, else in its dtype.
    Separable prefix sums, so the cost does not grow with the windows' overlap."""
    _check_volume("window_sums", x, guidance)
    window, block, offset, origin, blocks = window_geometry(x.shape[2:], window, block, offset, origin)
    values = x.to(_accumulate_dtype(x.dtype))
    rows = [values * guidance.to(values.dtype), values] if guidance is not None else [values]
    sums = torch.stack(rows, 1)  # (B, R, C, D, H, W)
    for axis in range(3):
        dim, n = 3 + axis, x.shape[2 + axis]
        starts = origin[axis] + block[axis] * torch.arange(blocks[axis], device=x.device) - offset[axis]
        lo, hi = starts.clamp(0, n), (starts + window[axis]).clamp(0, n)
        prefix = torch.cat([torch.zeros_like(sums.narrow(dim, 0, 1)), sums.cumsum(dim)], dim)
        sums = prefix.index_select(dim, hi) - prefix.index_select(dim, lo)
    return sums.permute(0, 3, 4, 5, 1, 2).contiguous()


def _block_boxes(shape, block, origin, blocks):
    """(block index (i, j, k), its voxel slices) of every block, D-major."""
    for index in torch.cartesian_prod(*(torch.arange(n) for n in blocks)).reshape(-1, 3).tolist():
        yield index, tuple(slice(g + i * b, min(g + (i + 1) * b, n)) for i, g, b, n in zip(index, origin, block, shape))


def block_linear_reference(x: Tensor, guidance: Tensor | None, m0: Tensor, c0: Tensor | None, m1: Tensor | None,
                 c1: Tensor | None, block, origin) -> Tensor:
    """A 1x1x1 convolution whose weights change from block to block:
    ``out[:, v] = m0[blk(v)] x[:, v] + c0 + Pt[v] (m1[blk(v)] x[:, v] + c1)``, ``(B, K, D, H, W)``
    in ``x``'s dtype, zero before ``origin``. ``x`` (B, C, D, H, W); ``m0``, ``m1``
    (B, nD, nH, nW, K, C) per block; ``c0``, ``c1`` (K,); the guided term needs ``guidance``."""
    _check_volume("block_linear", x, guidance)
    _, _, _, _, blocks = window_geometry(x.shape[2:], block, block, 0, origin)
    b, c = x.shape[:2]
    for name, weight in (("m0", m0), ("m1", m1)):
        if weight is not None and (weight.dim() != 6 or tuple(weight.shape[:4]) != (b, *blocks)
                                   or weight.shape[5] != c or weight.shape[4] != m0.shape[4]):
            raise ValueError(f"block_linear: {name} must be (B, nD, nH, nW, K, C) = ({b}, "
                             f"{', '.join(map(str, blocks))}, K, {c}), got shape {tuple(weight.shape)}")
    if (m1 is not None or c1 is not None) and guidance is None:
        raise ValueError("block_linear: the guided term (m1, c1) needs guidance")
    k = m0.shape[4]
    acc = _accumulate_dtype(x.dtype)
    out = torch.zeros((b, k, *x.shape[2:]), dtype=acc, device=x.device)

    def bias(value):
        return 0 if value is None else value.to(acc).view(1, -1, 1, 1, 1)

    for (i, j, l), box in _block_boxes(x.shape[2:], _triple("block", block), _triple("origin", origin), blocks):
        part = x[(slice(None), slice(None)) + box].to(acc)
        res = torch.einsum("bkc,bc...->bk...", m0[:, i, j, l].to(acc), part) + bias(c0)
        if m1 is not None or c1 is not None:
            guided = bias(c1) if m1 is None else torch.einsum("bkc,bc...->bk...", m1[:, i, j, l].to(acc), part) + bias(c1)
            res = res + guidance[(slice(None), slice(None)) + box].to(acc) * guided
        out[(slice(None), slice(None)) + box] = res
    return out.to(x.dtype)


def cga_windowed_reference(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None,
                 w_neg: Tensor | None, b_neg: Tensor | None, w_out: Tensor | None, b_out: Tensor | None, window,
                 block, offset, origin, variant: str, eps: float) -> tuple[Tensor, Tensor]:
    """Window-consistent CGA, literally: for every block, cut its window out of ``features`` and
    ``guidance`` (zero outside, as a tile is cut), run the CGA head on that tile and keep the
    block. Returns ``(out (B, K, D, H, W), m (B, nD, nH, nW, 2, C))``, out zero before ``origin``."""
    check_variant(variant)
    _check_volume("cga_windowed", features, guidance)
    window, block, offset, origin, blocks = window_geometry(features.shape[2:], window, block, offset, origin)
    guidance = guidance.detach()
    b, c = features.shape[:2]
    m_all = features.new_zeros((b, *blocks, 2, c))
    out = None
    for (i, j, l), box in _block_boxes(features.shape[2:], block, origin, blocks):
        start = [s.start - o for s, o in zip(box, offset)]
        kept = tuple(slice(o, o + s.stop - s.start) for s, o in zip(box, offset))
        origins = torch.tensor([start], dtype=torch.long)
        for n in range(b):
            tile = gather_tiles_reference(features[n], origins, window)
            tile_guidance = gather_tiles_reference(guidance[n], origins, window)
            scores, m, _ = cga_head(tile, tile_guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps)
            if out is None:
                out = features.new_zeros((b, scores.shape[1], *features.shape[2:]))
            out[(n, slice(None)) + box] = scores[0][(slice(None),) + kept]
            m_all[n, i, j, l] = m[0]
    if out is None:  # no block at all
        k = num_outputs("cga_windowed", variant, w_pos, w_neg, w_out)
        out = features.new_zeros((b, k, *features.shape[2:]))
    return out, m_all


# ---- public functions --------------------------------------------------------------------------

def _centred(window, block, offset):
    """``offset`` as a list, by default the centred block of the paper's tiles: (window - block) // 2."""
    if offset is None:
        return [(w - b) // 2 for w, b in zip(_as_list3("window", window), _as_list3("block", block))]
    return _as_list3("offset", offset)


def window_sums(x: Tensor, guidance: Tensor | None = None, *, window, block, offset=None, origin=0) -> Tensor:
    """Sums over each block's window, ``(B, nD, nH, nW, R, C)``: R = 2 rows
    ``[sum Pt * x, sum x]`` with ``guidance`` Pt (B, 1, D, H, W), R = 1 without; ``x``
    (B, C, D, H, W); float32 for half-precision ``x``. Blocks of ``block`` voxels start at
    ``origin`` (and every ``block`` after it); each block's window is ``window`` voxels
    starting ``offset`` (default: centred) before it, zero outside the volume. Cost: one
    pass over ``x``, whatever the windows' overlap. Differentiable in ``x`` (its backward op:
    one pass writing the gradient); no gradient reaches the guidance."""
    guidance = guidance.detach() if guidance is not None else None
    args = (x, guidance, _as_list3("window", window), _as_list3("block", block), _centred(window, block, offset),
            _as_list3("origin", origin))
    return call("window_sums", *args)


def block_linear(x: Tensor, m0: Tensor, c0: Tensor | None = None, *, guidance: Tensor | None = None,
                 m1: Tensor | None = None, c1: Tensor | None = None, block, origin=0) -> Tensor:
    """A 1x1x1 convolution whose weights change per block: ``out[:, v] = m0[blk(v)] x[:, v] + c0
    + Pt[v] (m1[blk(v)] x[:, v] + c1)`` (the guided term only with ``m1``/``c1``, which need
    ``guidance``). ``x`` (B, C, D, H, W), ``m0``/``m1`` (B, nD, nH, nW, K, C), ``c0``/``c1``
    (K,); returns (B, K, D, H, W) in ``x``'s dtype, zero before ``origin``. Differentiable in
    ``x``, ``m0``, ``c0``, ``m1`` and ``c1`` (its backward op); no gradient reaches the guidance."""
    guidance = guidance.detach() if guidance is not None else None
    return call("block_linear", x, guidance, m0, c0, m1, c1, _as_list3("block", block), _as_list3("origin", origin))


def cga_windowed(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None,
                 w_neg: Tensor | None, b_neg: Tensor | None, w_out: Tensor | None = None,
                 b_out: Tensor | None = None, *, window, block, offset=None, origin=0, variant: str = "full",
                 eps: float = DEFAULT_EPS, return_importance: bool = False):
    """The CGA head (:func:`cga`) with each block's importance ``m`` pooled over its window
    instead of the whole map: every voxel gets the scores the tile of its block would have
    given it, from one feature map. Geometry as in :func:`window_sums`. Returns the scores
    (B, K, D, H, W), zero before ``origin``, and with ``return_importance`` also ``m``
    (B, nD, nH, nW, 2, C). Inference only (no gradient)."""
    check_variant(variant)
    out, m = call("cga_windowed", features, guidance.detach(), w_pos, b_pos, w_neg, b_neg, w_out, b_out,
                  _as_list3("window", window), _as_list3("block", block), _centred(window, block, offset),
                  _as_list3("origin", origin), variant, eps)
    return (out, m) if return_importance else out


# ---- fake kernels and autograd formulas (registered by omkit.ops._meta) ------------------------

def _window_sums_fake(x, guidance, window, block, offset, origin):
    _check_volume("window_sums", x, guidance)
    *_, blocks = window_geometry(x.shape[2:], window, block, offset, origin)
    rows = 1 if guidance is None else 2
    return x.new_empty((x.shape[0], *blocks, rows, x.shape[1]), dtype=_accumulate_dtype(x.dtype))


def _block_linear_fake(x, guidance, m0, c0, m1, c1, block, origin):
    _check_volume("block_linear", x, guidance)
    *_, blocks = window_geometry(x.shape[2:], block, block, 0, origin)
    if m0.dim() != 6 or tuple(m0.shape[:4]) != (x.shape[0], *blocks) or m0.shape[5] != x.shape[1]:
        raise ValueError(f"block_linear: m0 must be (B, nD, nH, nW, K, C) = ({x.shape[0]}, "
                         f"{', '.join(map(str, blocks))}, K, {x.shape[1]}), got shape {tuple(m0.shape)}")
    return x.new_empty((x.shape[0], m0.shape[4], *x.shape[2:]))


def _window_sums_backward_fake(grad, x, guidance, window, block, offset, origin):
    _check_volume("window_sums_backward", x, guidance)
    window_geometry(x.shape[2:], window, block, offset, origin)
    return x.new_empty(x.shape)


def _block_linear_backward_fake(grad_out, x, guidance, m0, c0, m1, c1, block, origin):
    _check_volume("block_linear_backward", x, guidance)
    window_geometry(x.shape[2:], block, block, 0, origin)

    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else x.new_empty((0,))

    return x.new_empty(x.shape), like(m0), like(c0), like(m1), like(c1)


def _cga_windowed_fake(features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, window, block, offset, origin,
                       variant, eps):
    _check_volume("cga_windowed", features, guidance)
    *_, blocks = window_geometry(features.shape[2:], window, block, offset, origin)
    k = num_outputs("cga_windowed", variant, w_pos, w_neg, w_out)
    b, c = features.shape[:2]
    return features.new_empty((b, k, *features.shape[2:])), features.new_empty((b, *blocks, 2, c))


def _window_sums_setup_context(ctx, inputs, output):
    x, guidance, window, block, offset, origin = inputs
    ctx.save_for_backward(x, guidance)
    ctx.geometry = (window, block, offset, origin)


def _window_sums_backward(ctx, grad):
    x, guidance = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.omkit.window_sums_backward(grad, x, guidance, *ctx.geometry)
    return grad_x, None, None, None, None, None  # the guidance is a constant



def _block_linear_setup_context(ctx, inputs, output):
    x, guidance, m0, c0, m1, c1, block, origin = inputs
    ctx.present = tuple(t is not None for t in (c0, m1, c1))
    ctx.save_for_backward(x, guidance, m0, c0, m1, c1)
    ctx.geometry = (block, origin)


def _block_linear_backward(ctx, grad_out):
    x, guidance, m0, c0, m1, c1 = ctx.saved_tensors
    grad_x, grad_m0, *optional = torch.ops.omkit.block_linear_backward(grad_out, x, guidance, m0, c0, m1, c1,
                                                                        *ctx.geometry)
    # The op returns an empty tensor for an optional input that was None.
    grad_c0, grad_m1, grad_c1 = [g if present else None for g, present in zip(optional, ctx.present)]
    return grad_x, None, grad_m0, grad_c0, grad_m1, grad_c1, None, None  # the guidance is a constant


OPS: tuple[Op, ...] = (
    Op("window_sums", "window_sums", ("window_sums",), WINDOW_DTYPES, window_sums_reference, _window_sums_fake,
       _window_sums_backward, _window_sums_setup_context),
    Op("window_sums_backward", "window_sums_backward", (), WINDOW_DTYPES, None, _window_sums_backward_fake,
       backward_of="window_sums"),
    Op("block_linear", "block_linear", ("block_linear",), WINDOW_DTYPES, block_linear_reference, _block_linear_fake,
       _block_linear_backward, _block_linear_setup_context),
    Op("block_linear_backward", "block_linear_backward", (), WINDOW_DTYPES, None, _block_linear_backward_fake,
       backward_of="block_linear"),
    Op("cga_windowed", "cga_windowed", ("cga_windowed",), WINDOW_DTYPES, cga_windowed_reference, _cga_windowed_fake),
)
