"""Fused C++/CUDA ops of omkit, registered as ``torch.ops.omkit.*``, and the
public functions that run them.

* CGA (Zhou et al., TIP 2020, Sec. III-C): :func:`cga` (the whole head: CSCI
  pooling + recalibration + CompSeg + final conv, one autograd node),
  :func:`category_importance` (the CSCI block's m), :func:`cga_pool` (CSCI
  pooling, both categories in one pass over the features, with the L1 norms)
  and :func:`cga_recalibrate` (recalibration + CompSeg + optional final 1x1x1
  conv in one pass, with m folded into per-sample weights); each op has its
  own backward op. ``omkit.functional`` is the documented functional API over
  these.
* Overlap-tile inference: :func:`gather_tiles`, :func:`stitch_tiles` (in place)
  and :func:`stitch_tiles_argmax` (stitches uint8 class labels straight from
  the tiles' scores, without a float full-volume buffer); contract of
  ``omkit.inference.tiling``.
* Window-consistent (dense) inference and training: :func:`window_sums` (every
  block's window summed, with and without the guidance, by separable prefix
  sums), :func:`block_linear` (a 1x1x1 convolution whose weights change per
  block), both with a backward op, and :func:`cga_windowed` (the CGA head with
  each block's m pooled over its window: both passes fused; inference only); the
  geometry is described in ``omkit.ops.reference``.

The ops are listed once in :mod:`omkit.ops.manifest`. Every public function
checks its arguments and goes through ``_library.call``, which runs the
compiled op when the extension is loaded and has a kernel for the first
argument's device and dtype, else its pure-PyTorch reference in
:mod:`omkit.ops.reference` (warning once); ``OMKIT_OPS_BACKEND=auto|kernel|reference``
or :func:`set_backend` / :func:`use_backend` force either. :func:`backend_report`
tells which one each op uses (``omkit info``), :func:`record_dispatch` which one
each call took, :func:`fallbacks` which calls ran the reference for want of a
kernel for their dtype. Every op has an autocast rule (``omkit.ops._autocast``):
inside ``torch.autocast`` its floating-point inputs are cast to the autocast dtype
and the kernels accumulate in float32.
"""
from __future__ import annotations

from torch import Tensor

import omkit.ops.manifest as manifest
import omkit.ops.reference as reference
from omkit.deprecation import renamed_keywords
from omkit.ops._library import BACKENDS, backend_report, build_info, call, extension_loaded, fallbacks, get_backend
from omkit.ops._library import load_error
from omkit.ops._library import record_dispatch, set_backend, use_backend
from omkit.ops.reference import CGA_VARIANTS, DEFAULT_EPS, check_cga_inputs, check_variant

__all__ = [
    "BACKENDS", "CGA_VARIANTS", "DEFAULT_EPS", "backend_report", "build_info", "category_importance", "cga",
    "cga_pool", "cga_recalibrate", "extension_loaded", "fallbacks", "gather_tiles", "get_backend", "load_error",
    "manifest", "record_dispatch", "reference", "set_backend", "stitch_tiles", "stitch_tiles_argmax", "use_backend",
    "block_linear", "cga_windowed", "window_sums",
]


def category_importance(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """CSCI block: category-specific channel importance, Eq. (4)-(5).

    ``features`` F (B, C, D, H, W), ``guidance`` Pt (B, 1, D, H, W) (or (B, C, H, W) and
    (B, 1, H, W) in 2-D). Returns ``m`` of
    shape (B, 2, C): row 0 is ``m_t = L1norm(F^T Pt)``, row 1 is ``m_n = L1norm(F^T Pn)``
    with ``Pn = 1 - Pt``; each row is divided by ``max(||z||_1, eps)``. No gradient
    reaches the guidance.
    """
    check_cga_inputs(features, guidance)
    return call("cga_pool", features, guidance.detach(), eps)[0]


def cga(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None, w_neg: Tensor | None,
        b_neg: Tensor | None, w_out: Tensor | None = None, b_out: Tensor | None = None, variant: str = "full",
        eps: float = DEFAULT_EPS) -> Tensor:
    """CSCI + CompSeg: the CGA head's scores (B, K, D, H, W).

    ``S_t = W_pos (m_t * F) + b_pos`` and ``S_n = W_neg (m_n * F) + b_neg`` are the
    two 1x1x1 convolutions (weights (K, C), biases optional) of the recalibrated
    features, ``m`` from :func:`category_importance`; they merge as

    * ``full``:  S~ = Pt * S_t + Pn * S_n   (CGA)
    * ``minus``: S~ = S_t + S_n             (CGA-, no soft spatial masks)
    * ``pos``:   S~ = Pt * S_t              (CGAt, tumor branch only)
    * ``neg``:   S~ = Pn * S_n              (CGAn, non-tumor branch only)

    and, when ``w_out`` (K, K) is given, the final 1x1x1 conv gives
    ``S = W_out S~ + b_out``. The guidance is treated as a constant: no gradient
    flows into it (the paper's forward-only cross-task guidance). Fused, this is one
    autograd node: its backward reads F once and writes dF once.
    """
    check_variant(variant)
    check_cga_inputs(features, guidance)
    return call("cga", features, guidance.detach(), w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps)[0]


def _as_list3(name: str, value) -> list[int]:
    return list(reference._triple(name, value))


def cga_pool(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
    """CSCI pooling: ``(m, l1_norm)`` with ``m`` (B, 2, C) the L1-normalised
    ``[F^T Pt, F^T (1 - Pt)]`` and ``l1_norm`` (B, 2) their unclamped L1 norms.
    ``features`` (B, C, *spatial), ``guidance`` (B, 1, *spatial); no gradient
    reaches the guidance."""
    return call("cga_pool", features, guidance.detach(), eps)


def cga_recalibrate(features: Tensor, guidance: Tensor, m: Tensor, w_pos: Tensor | None, b_pos: Tensor | None,
                    w_neg: Tensor | None, b_neg: Tensor | None, w_out: Tensor | None = None,
                    b_out: Tensor | None = None, variant: str = "full") -> Tensor:
    """Recalibration + CompSeg (+ final conv) for given importance vectors ``m``
    (B, 2, C), fused: see :func:`cga` for the formula. Weights are ``(K, C)``
    matrices (flattened 1x1x1 convs), ``w_out`` ``(K_out, K)``; ``features``
    (B, C, *spatial), ``guidance`` (B, 1, *spatial), no gradient reaches it."""
    return call("cga_recalibrate", features, guidance.detach(), m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant)


@renamed_keywords(roi_size="tile_size")
def gather_tiles(volume: Tensor, origins: Tensor, tile_size) -> Tensor:
    """Tiles ``(T, C, d, h, w)`` cut out of ``volume (C, D, H, W)`` at ``origins``
    (int64 ``(T, 3)``, may be negative or run past the end); zero outside."""
    return call("gather_tiles", volume, origins, _as_list3("tile_size", tile_size))


@renamed_keywords(keep_size="tile_keep")
def stitch_tiles(out: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep) -> Tensor:
    """Write ``tiles[i, :, ko:ko+ks]`` into ``out (K, D, H, W)`` at ``origins[i] + ko``,
    clipped to the volume, in place (later tiles win where kept regions overlap);
    returns ``out``."""
    call("stitch_tiles", out, tiles, origins, _as_list3("keep_offset", keep_offset), _as_list3("tile_keep", tile_keep))
    return out


@renamed_keywords(keep_size="tile_keep")
def stitch_tiles_argmax(
    labels: Tensor, tiles: Tensor, origins: Tensor, keep_offset, tile_keep, label_map: Tensor | None = None
) -> Tensor:
    """Like :func:`stitch_tiles` but reduces on the fly: ``labels (D, H, W)`` uint8
    gets ``label_map[argmax_k tiles[i, k]]`` (the class index when ``label_map`` is
    None) over each kept centre, so no float full-volume score map is needed.
    Ties and NaNs follow ``torch.argmax``. Returns ``labels``."""
    ko, ks = _as_list3("keep_offset", keep_offset), _as_list3("tile_keep", tile_keep)
    call("stitch_tiles_argmax", labels, tiles, origins, ko, ks, label_map)
    return labels


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
