"""Every pure-PyTorch reference of omkit's ops, in one place: what the public
functions of ``omkit.ops`` run when the compiled ops are not available (or do
not take the inputs' device or dtype), and the oracle of the kernel tests.

* CGA (Zhou et al., TIP 2020, Sec. III-C): :func:`cga_pool` (CSCI pooling, with
  the L1 norms), :func:`category_importance` (its m), :func:`cga_recalibrate`
  (recalibration + CompSeg + final conv for given m), :func:`cga` (the whole
  head) and :func:`cga_head` (the same with the ``omkit::cga`` op's outputs);
  ``omkit.functional`` re-exports them as ``category_importance_reference``,
  ``cga_reference`` and ``recalibrate_reference``.
* Overlap-tile inference: :func:`gather_tiles`, :func:`stitch_tiles`,
  :func:`stitch_tiles_argmax` (the contract of ``omkit.inference.tiling``, which
  re-exports them), kept deliberately simple: one Python-level copy per tile.

Each op's reference takes the op's arguments and returns its outputs
(``omkit.ops.manifest`` names it). Only torch is imported, so
``scripts/check_ops_registered.py`` can load this file by its path.

Shapes: features ``F`` (B, C, *spatial); guidance ``Pt`` (B, 1, *spatial) is the
preceding task's probability of the positive category (tumor for CGA-tumor, core
for CGA-core), and ``Pn = 1 - Pt``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

CGA_VARIANTS = ("full", "minus", "pos", "neg")
DEFAULT_EPS = 1e-12


# ---- CGA ---------------------------------------------------------------------------------------

def check_variant(variant: str) -> tuple[bool, bool]:
    """``(has_pos, has_neg)``: which branches CGA ``variant`` uses (ValueError for an unknown one)."""
    if variant not in CGA_VARIANTS:
        raise ValueError(f"unknown CGA variant {variant!r}; choose one of {', '.join(CGA_VARIANTS)}")
    return variant != "neg", variant != "pos"


def check_features_guidance(op: str, features: Tensor, guidance: Tensor) -> None:
    """The ops' shape contract: features (B, C, *spatial), guidance (B, 1, *spatial)."""
    if features.dim() < 3:
        raise ValueError(f"{op}: features must be (B, C, *spatial), got shape {tuple(features.shape)}")
    want = (features.shape[0], 1, *features.shape[2:])
    if tuple(guidance.shape) != want:
        raise ValueError(f"{op}: guidance must be (B, 1, *spatial) = {want}, got shape {tuple(guidance.shape)}")


def check_cga_inputs(features: Tensor, guidance: Tensor) -> None:
    """The public CGA functions' contract: features (B, C, D, H, W), guidance (B, 1, D, H, W),
    or in 2-D features (B, C, H, W), guidance (B, 1, H, W)."""
    if features.dim() not in (4, 5):
        raise ValueError(f"features must be (B, C, D, H, W) or (B, C, H, W), got shape {tuple(features.shape)}")
    b, _, *spatial = features.shape
    axes = "D, H, W" if len(spatial) == 3 else "H, W"
    if guidance.dim() != features.dim() or guidance.shape[0] != b or guidance.shape[1] != 1 \
            or list(guidance.shape[2:]) != spatial:
        raise ValueError(
            f"guidance must be (B, 1, {axes}) = ({b}, 1, {', '.join(map(str, spatial))}), "
            f"got shape {tuple(guidance.shape)}"
        )


def branch_weights(op: str, variant: str, w_pos: Tensor | None, w_neg: Tensor | None):
    """``(w_pos, w_neg)`` of the branches ``variant`` uses, None for an unused one; ValueError
    when a used branch has no weight."""
    has_pos, has_neg = check_variant(variant)
    for used, weight, name in ((has_pos, w_pos, "w_pos"), (has_neg, w_neg, "w_neg")):
        if used and weight is None:
            raise ValueError(f"{op}: variant '{variant}' needs {name} (K, C)")
    return (w_pos if has_pos else None), (w_neg if has_neg else None)


def cga_pool(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
    """CSCI pooling, Eq. (4)-(5): ``(m, l1_norm)``. ``m`` (B, 2, C) has rows
    ``m_t = L1norm(F^T Pt)`` and ``m_n = L1norm(F^T Pn)``, each divided by
    ``max(||z||_1, eps)``; ``l1_norm`` (B, 2) are the unclamped norms."""
    check_features_guidance("cga_pool", features, guidance)
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    pt = guidance.reshape(b, -1, 1).to(features.dtype)
    # Both categories from one product: F^T [Pt, 1 - Pt] (B, C, 2).
    z = torch.bmm(flat, torch.cat((pt, 1 - pt), -1)).transpose(1, 2)
    l1_norm = z.abs().sum(-1)
    return z / l1_norm.clamp_min(eps).unsqueeze(-1), l1_norm


def category_importance(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Pure-PyTorch ``omkit.ops.category_importance``: ``m`` (B, 2, C) of :func:`cga_pool`
    for features (B, C, D, H, W)."""
    check_cga_inputs(features, guidance)
    return cga_pool(features, guidance, eps)[0]


def _conv_bias(out: Tensor, bias: Tensor | None) -> Tensor:
    return out if bias is None else out + bias.view(1, -1, *([1] * (out.dim() - 2)))


def cga_recalibrate(features: Tensor, guidance: Tensor, m: Tensor, w_pos: Tensor | None, b_pos: Tensor | None,
                    w_neg: Tensor | None, b_neg: Tensor | None, w_out: Tensor | None = None,
                    b_out: Tensor | None = None, variant: str = "full") -> Tensor:
    """Recalibration + CompSeg (+ final conv) of :func:`cga` for given importance vectors
    ``m`` (B, 2, C); weights are (K, C) matrices (flattened 1x1x1 convs), ``w_out`` (K_out, K)."""
    check_features_guidance("cga_recalibrate", features, guidance)
    w_pos, w_neg = branch_weights("cga_recalibrate", variant, w_pos, w_neg)
    pt = guidance.to(features.dtype)
    # (m * F) then a 1x1x1 conv equals F convolved with per-sample weights W * m:
    # fold the recalibration into the weights instead of materialising U_t, U_n.
    out = None
    if w_pos is not None:
        s_t = _conv_bias(torch.einsum("bkc,bc...->bk...", w_pos.unsqueeze(0) * m[:, 0:1, :], features), b_pos)
        out = s_t if variant == "minus" else pt * s_t
    if w_neg is not None:
        s_n = _conv_bias(torch.einsum("bkc,bc...->bk...", w_neg.unsqueeze(0) * m[:, 1:2, :], features), b_neg)
        s_n = s_n if variant == "minus" else (1 - pt) * s_n
        out = s_n if out is None else out + s_n
    if w_out is not None:
        out = _conv_bias(torch.einsum("kj,bj...->bk...", w_out, out), b_out)
    return out


def importance_from_sums(sums: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``m`` (..., 2, C) of :func:`cga_pool` from the sums ``[sum Pt F, sum F]`` (..., 2, C) over
    a tile (or a window): the same L1 normalisation, for statistics pooled elsewhere."""
    z = torch.stack([sums[..., 0, :], sums[..., 1, :] - sums[..., 0, :]], -2)
    return z / z.abs().sum(-1, keepdim=True).clamp_min(eps)


def cga_block_maps(m: Tensor, w_pos: Tensor | None, b_pos: Tensor | None, w_neg: Tensor | None,
                   b_neg: Tensor | None, w_out: Tensor | None = None, b_out: Tensor | None = None,
                   variant: str = "full") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The CGA head with importance ``m`` (..., 2, C) as an affine map of one voxel's features F
    and guidance Pt: ``S = m0 F + c0 + Pt (m1 F + c1)``; ``m0``, ``m1`` (..., K, C) per
    importance, ``c0``, ``c1`` (K,) (the biases do not depend on ``m``), in float32 at least
    (autocast off). Not a second copy of the variants' algebra: the map is read off
    :func:`cga_recalibrate` (linear in F at fixed Pt, affine in Pt) at F = 0 and the C unit
    vectors, with Pt = 0 and Pt = 1; differentiable in ``m`` and the weights. The C++
    kernels fold the same map (``fold_cga_head``)."""
    lead, c = m.shape[:-2], m.shape[-1]
    dtype = torch.promote_types(m.dtype, torch.float32)
    # one row per importance, and a last one (m = 0) for the biases, which hold for any m
    flat_m = torch.cat([m.reshape(-1, 2, c).to(dtype), torch.zeros((1, 2, c), dtype=dtype, device=m.device)])
    n = flat_m.shape[0]
    weights = [None if w is None else w.to(dtype) for w in (w_pos, b_pos, w_neg, b_neg, w_out, b_out)]
    # C + 1 voxels per row: the zero vector, then each unit vector
    basis = torch.cat([torch.zeros((c, 1), dtype=dtype, device=m.device), torch.eye(c, dtype=dtype, device=m.device)], 1)
    features = basis.expand(n, c, c + 1)[..., None, None]
    with torch.autocast(m.device.type, enabled=False):
        at = [cga_recalibrate(features, features.new_full((n, 1, c + 1, 1, 1), pt), flat_m, *weights, variant)[..., 0, 0]
              for pt in (0.0, 1.0)]  # (n, K, C + 1) each
    c0, c_both = at[0][-1, :, 0], at[1][-1, :, 0]
    m0 = at[0][:-1, :, 1:] - at[0][:-1, :, :1]
    m1 = at[1][:-1, :, 1:] - at[1][:-1, :, :1] - m0
    k = m0.shape[1]
    return m0.reshape(*lead, k, c), c0, m1.reshape(*lead, k, c), c_both - c0


def cga_head(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None, w_neg: Tensor | None,
             b_neg: Tensor | None, w_out: Tensor | None, b_out: Tensor | None, variant: str,
             eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ``omkit::cga`` op's outputs ``(out, m, l1_norm)`` from its arguments: :func:`cga_pool`,
    then :func:`cga_recalibrate`."""
    m, l1_norm = cga_pool(features, guidance, eps)
    return cga_recalibrate(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant), m, l1_norm


def cga(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None, w_neg: Tensor | None,
        b_neg: Tensor | None, w_out: Tensor | None = None, b_out: Tensor | None = None, variant: str = "full",
        eps: float = DEFAULT_EPS) -> Tensor:
    """Pure-PyTorch ``omkit.ops.cga`` (the oracle of the fused ops): the CGA head's scores
    (B, K, D, H, W); the guidance is a constant."""
    check_variant(variant)
    check_cga_inputs(features, guidance)
    return cga_head(features, guidance.detach(), w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps)[0]


# ---- overlap tiles -----------------------------------------------------------------------------

def _triple(name: str, value) -> tuple[int, int, int]:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, int):
        value = (value,) * 3
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} needs three sizes (D, H, W), got {list(value)}")
    return value  # type: ignore[return-value]


def _clip(start: Sequence[int], size: Sequence[int], shape: Sequence[int]):
    """(volume slices, box slices) of the part of the box inside the volume, or None."""
    vol, box = [], []
    for s, n, limit in zip(start, size, shape):
        lo, hi = max(s, 0), min(s + n, limit)
        if lo >= hi:
            return None
        vol.append(slice(lo, hi))
        box.append(slice(lo - s, hi - s))
    return tuple(vol), tuple(box)


def _check_origins(origins: Tensor) -> None:
    if origins.dim() != 2 or origins.shape[1] != 3:
        raise ValueError(f"origins must be (T, 3), got shape {tuple(origins.shape)}")
    if origins.dtype.is_floating_point or origins.dtype == torch.bool:
        raise TypeError(f"origins must be an integer tensor (int64), got {origins.dtype}")


def gather_tiles(volume: Tensor, origins: Tensor, tile_size) -> Tensor:
    """Tiles ``(T, C, d, h, w)`` cut from ``volume (C, D, H, W)`` at ``origins``; zero outside."""
    if volume.dim() != 4:
        raise ValueError(f"gather_tiles: volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    _check_origins(origins)
    roi = _triple("tile_size", tile_size)
    tiles = volume.new_zeros((origins.shape[0], volume.shape[0], *roi))
    for t, origin in enumerate(origins.tolist()):
        clipped = _clip(origin, roi, volume.shape[1:])
        if clipped is not None:
            vol, box = clipped
            tiles[(t, slice(None)) + box] = volume[(slice(None),) + vol]
    return tiles


def _kept_boxes(tiles: Tensor, origins: Tensor, keep_offset, tile_keep, shape):
    """(tile index, volume slices, tile slices) of each kept centre, in tile order."""
    _check_origins(origins)
    offset, size = _triple("keep_offset", keep_offset), _triple("tile_keep", tile_keep)
    for axis in range(3):
        if offset[axis] < 0 or size[axis] < 0 or offset[axis] + size[axis] > tiles.shape[2 + axis]:
            raise ValueError(f"the kept region (offset {list(offset)}, size {list(size)}) must lie inside "
                             f"the tile {tuple(tiles.shape[2:])}")
    for t, origin in enumerate(origins.tolist()):
        start = [o + k for o, k in zip(origin, offset)]
        clipped = _clip(start, size, shape)
        if clipped is not None:
            vol, kept = clipped
            yield t, vol, tuple(slice(k + s.start, k + s.stop) for k, s in zip(offset, kept))


def stitch_tiles(out: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep) -> Tensor:
    """Write each tile's kept centre into ``out (K, D, H, W)`` at origin + keep_offset,
    clipped to the volume; in place, later tiles win; returns ``out``."""
    if out.dim() != 4 or tiles.dim() != 5 or tiles.shape[1] != out.shape[0]:
        raise ValueError(f"stitch_tiles needs out (K, D, H, W) and tiles (T, K, d, h, w) with the same K, "
                         f"got {tuple(out.shape)} and {tuple(tiles.shape)}")
    for t, vol, box in _kept_boxes(tiles, origins, keep_offset, tile_keep, out.shape[1:]):
        out[(slice(None),) + vol] = tiles[(t, slice(None)) + box].to(out.dtype)
    return out


def stitch_tiles_argmax(labels: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep,
                        label_map: Tensor | None = None) -> Tensor:
    """Like :func:`stitch_tiles`, writing ``label_map[argmax over K]`` (or the index) as uint8
    into ``labels (D, H, W)``; returns ``labels``."""
    if labels.dim() != 3 or labels.dtype != torch.uint8 or tiles.dim() != 5:
        raise ValueError(f"stitch_tiles_argmax needs uint8 labels (D, H, W) and tiles (T, K, d, h, w), "
                         f"got {labels.dtype} {tuple(labels.shape)} and {tuple(tiles.shape)}")
    for t, vol, box in _kept_boxes(tiles, origins, keep_offset, tile_keep, labels.shape):
        index = tiles[(t, slice(None)) + box].argmax(0)
        labels[vol] = (label_map.to(index.device)[index] if label_map is not None else index).to(torch.uint8)
    return labels


# ---- window-consistent (dense) inference ---------------------------------------------------------
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


def window_sums(x: Tensor, guidance: Tensor | None, window, block, offset, origin) -> Tensor:
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


def block_linear(x: Tensor, guidance: Tensor | None, m0: Tensor, c0: Tensor | None, m1: Tensor | None,
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


def cga_windowed(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None,
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
            tile = gather_tiles(features[n], origins, window)
            tile_guidance = gather_tiles(guidance[n], origins, window)
            scores, m, _ = cga_head(tile, tile_guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps)
            if out is None:
                out = features.new_zeros((b, scores.shape[1], *features.shape[2:]))
            out[(n, slice(None)) + box] = scores[0][(slice(None),) + kept]
            m_all[n, i, j, l] = m[0]
    if out is None:  # no block at all
        k = num_outputs("cga_windowed", variant, w_pos, w_neg, w_out)
        out = features.new_zeros((b, k, *features.shape[2:]))
    return out, m_all


def num_outputs(op: str, variant: str, w_pos, w_neg, w_out) -> int:
    """Output channels of a CGA op: ``w_out``'s rows, else the used branch weight's
    (ValueError naming ``op`` when a branch the variant uses has no weight)."""
    w_pos, w_neg = branch_weights(op, variant, w_pos, w_neg)
    weight = w_pos if w_pos is not None else w_neg
    return w_out.shape[0] if w_out is not None else weight.shape[0]
