"""Fused C++/CUDA ops of omkit, registered as ``torch.ops.omkit.*``.

* CGA: :func:`cga_pool` (CSCI pooling, both categories in one pass over the
  features) and :func:`cga_recalibrate` (recalibration + CompSeg + optional
  final 1x1x1 conv in one pass, with m folded into per-sample weights), each
  with its own backward op; ``omkit.functional.category_importance`` / ``cga``
  use them.
* Overlap-tile inference: :func:`gather_tiles`, :func:`stitch_tiles` (in place)
  and :func:`stitch_tiles_argmax` (stitches uint8 class labels straight from
  the tiles' scores, without a float full-volume buffer); contract of
  ``omkit.inference.tiling``.

Every public function runs the compiled op when the extension is loaded and
has a kernel for the inputs, else its pure-PyTorch reference (warning once);
``OMKIT_OPS_BACKEND=auto|kernel|reference`` or :func:`set_backend` /
:func:`use_backend` force either. :func:`backend_report` tells which one each
op uses (``omkit info``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from omkit import functional as _functional

from . import reference
from ._library import (
    BACKENDS,
    backend_report,
    extension_loaded,
    get_backend,
    load_error,
    set_backend,
    use_backend,
    use_kernel,
)

DEFAULT_EPS = 1e-12

__all__ = [
    "BACKENDS", "backend_report", "category_importance", "cga", "cga_pool", "cga_recalibrate", "extension_loaded",
    "gather_tiles", "get_backend", "load_error", "reference", "set_backend", "stitch_tiles", "stitch_tiles_argmax",
    "use_backend",
]



def category_importance(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``omkit.functional.category_importance``: m (B, 2, C), fused when compiled."""
    return _functional.category_importance(features, guidance, eps)


def cga(features: Tensor, guidance: Tensor, *args, **kwargs) -> Tensor:
    """``omkit.functional.cga``: the CGA head's scores, fused when compiled."""
    return _functional.cga(features, guidance, *args, **kwargs)


def _as_list3(name: str, value) -> list[int]:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, int):
        value = (value,) * 3
    value = [int(v) for v in value]
    if len(value) != 3:
        raise ValueError(f"{name} needs three sizes (D, H, W), got {value}")
    return value


def cga_pool(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
    """CSCI pooling: ``(m, l1_norm)`` with ``m`` (B, 2, C) the L1-normalised
    ``[F^T Pt, F^T (1 - Pt)]`` and ``l1_norm`` (B, 2) their unclamped L1 norms.
    ``features`` (B, C, *spatial), ``guidance`` (B, 1, *spatial); no gradient
    reaches the guidance."""
    guidance = guidance.detach()
    if use_kernel("cga_pool", features, dtypes=True):
        return torch.ops.omkit.cga_pool(features, guidance, eps)
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    pt = guidance.reshape(b, -1, 1).to(features.dtype)
    z = torch.stack((torch.bmm(flat, pt).squeeze(-1), torch.bmm(flat, 1 - pt).squeeze(-1)), dim=1)
    l1_norm = z.abs().sum(-1)
    return z / l1_norm.clamp_min(eps).unsqueeze(-1), l1_norm


def cga_recalibrate(
    features: Tensor,
    guidance: Tensor,
    m: Tensor,
    w_pos: Tensor | None,
    b_pos: Tensor | None,
    w_neg: Tensor | None,
    b_neg: Tensor | None,
    w_out: Tensor | None = None,
    b_out: Tensor | None = None,
    variant: str = "full",
) -> Tensor:
    """Recalibration + CompSeg (+ final conv) for given importance vectors ``m``
    (B, 2, C), fused: see ``omkit.functional.cga`` for the formula. Weights are
    ``(K, C)`` matrices (flattened 1x1x1 convs), ``w_out`` ``(K_out, K)``."""
    guidance = guidance.detach()
    if use_kernel("cga_recalibrate", features, dtypes=True):
        return torch.ops.omkit.cga_recalibrate(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant)
    return _functional.recalibrate_reference(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant)


def gather_tiles(volume: Tensor, origins: Tensor, roi_size) -> Tensor:
    """Tiles ``(T, C, d, h, w)`` cut out of ``volume (C, D, H, W)`` at ``origins``
    (int64 ``(T, 3)``, may be negative or run past the end); zero outside."""
    roi = _as_list3("roi_size", roi_size)
    if use_kernel("gather_tiles", volume):
        return torch.ops.omkit.gather_tiles(volume, origins, roi)
    return reference.gather_tiles(volume, origins, roi)


def stitch_tiles(out: Tensor, tiles: Tensor, origins: Tensor, keep_offset, keep_size) -> Tensor:
    """Write ``tiles[i, :, ko:ko+ks]`` into ``out (K, D, H, W)`` at ``origins[i] + ko``,
    clipped to the volume, in place (later tiles win where kept regions overlap);
    returns ``out``."""
    ko, ks = _as_list3("keep_offset", keep_offset), _as_list3("keep_size", keep_size)
    if use_kernel("stitch_tiles", out):
        torch.ops.omkit.stitch_tiles_(out, tiles, origins, ko, ks)
        return out
    return reference.stitch_tiles(out, tiles, origins, ko, ks)


def stitch_tiles_argmax(
    labels: Tensor, tiles: Tensor, origins: Tensor, keep_offset, keep_size, label_map: Tensor | None = None
) -> Tensor:
    """Like :func:`stitch_tiles` but reduces on the fly: ``labels (D, H, W)`` uint8
    gets ``label_map[argmax_k tiles[i, k]]`` (the class index when ``label_map`` is
    None) over each kept centre, so no float full-volume score map is needed.
    Ties and NaNs follow ``torch.argmax``. Returns ``labels``."""
    ko, ks = _as_list3("keep_offset", keep_offset), _as_list3("keep_size", keep_size)
    if use_kernel("stitch_tiles_argmax", labels):
        torch.ops.omkit.stitch_tiles_argmax_(labels, tiles, origins, ko, ks, label_map)
        return labels
    return reference.stitch_tiles_argmax(labels, tiles, origins, ko, ks, label_map)
