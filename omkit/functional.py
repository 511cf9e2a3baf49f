"""Functional form of Cross-task Guided Attention (Zhou et al., TIP 2020, Sec. III-C).

Explicit weights, no modules: for embedding in other code and as the oracle in
tests. The CGA plug-in modules call these functions; ``omkit.ops`` may swap in
fused kernels without changing what they compute.

:func:`category_importance` and :func:`cga` run the fused ops of
``omkit.ops`` (one pass over F for the pooling, one for recalibration +
CompSeg, no U/S maps in memory) when the compiled extension is loaded and has
a kernel for the tensors' device and dtype, and the pure-PyTorch references
:func:`category_importance_reference` / :func:`cga_reference` otherwise (see
``omkit.ops`` for forcing either). The references are the test oracle.

Shapes: features ``F`` (B, C, D, H, W); guidance ``Pt`` (B, 1, D, H, W) is the
preceding task's probability of the positive category (tumor for CGA-tumor,
core for CGA-core), and ``Pn = 1 - Pt``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from omkit.ops import _library as _ops

CGA_VARIANTS = ("full", "minus", "pos", "neg")
DEFAULT_EPS = 1e-12


def _check_inputs(features: Tensor, guidance: Tensor) -> None:
    if features.dim() != 5:
        raise ValueError(f"features must be (B, C, D, H, W), got shape {tuple(features.shape)}")
    b, _, *spatial = features.shape
    if guidance.dim() != 5 or guidance.shape[0] != b or guidance.shape[1] != 1 or list(guidance.shape[2:]) != spatial:
        raise ValueError(
            f"guidance must be (B, 1, D, H, W) = ({b}, 1, {', '.join(map(str, spatial))}), "
            f"got shape {tuple(guidance.shape)}"
        )


def category_importance(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """CSCI block: category-specific channel importance, Eq. (4)-(5).

    Returns ``m`` of shape (B, 2, C): row 0 is ``m_t = L1norm(F^T Pt)``, row 1 is
    ``m_n = L1norm(F^T Pn)``; each row is divided by ``max(||z||_1, eps)``.
    """
    _check_inputs(features, guidance)
    if _ops.use_kernel("cga_pool", features, dtypes=True):
        return torch.ops.omkit.cga_pool(features, guidance.detach(), eps)[0]
    return category_importance_reference(features, guidance, eps)


def category_importance_reference(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Pure-PyTorch :func:`category_importance` (the oracle of the fused ``cga_pool`` op).

    Returns ``m`` of shape (B, 2, C): row 0 is ``m_t = L1norm(F^T Pt)``, row 1 is
    ``m_n = L1norm(F^T Pn)``; each row is divided by ``max(||z||_1, eps)``.
    """
    _check_inputs(features, guidance)
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    pt = guidance.reshape(b, -1, 1).to(features.dtype)
    # F^T Pn = F^T (1 - Pt) = sum(F) - F^T Pt: one pass gives both categories.
    z_t = torch.bmm(flat, pt).squeeze(-1)
    z_n = flat.sum(-1) - z_t
    z = torch.stack((z_t, z_n), dim=1)
    return z / z.abs().sum(-1, keepdim=True).clamp_min(eps)


def cga(
    features: Tensor,
    guidance: Tensor,
    w_pos: Tensor,
    b_pos: Tensor,
    w_neg: Tensor,
    b_neg: Tensor,
    w_out: Tensor | None = None,
    b_out: Tensor | None = None,
    variant: str = "full",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """CSCI + CompSeg: the CGA head's scores (B, K, D, H, W).

    ``S_t = W_pos (m_t * F) + b_pos`` and ``S_n = W_neg (m_n * F) + b_neg`` are the
    two 1x1x1 convolutions of the recalibrated features; they merge as

    * ``full``:  S~ = Pt * S_t + Pn * S_n   (CGA)
    * ``minus``: S~ = S_t + S_n             (CGA-, no soft spatial masks)
    * ``pos``:   S~ = Pt * S_t              (CGAt, tumor branch only)
    * ``neg``:   S~ = Pn * S_n              (CGAn, non-tumor branch only)

    and, when ``w_out`` (K, K) is given, the final 1x1x1 conv gives
    ``S = W_out S~ + b_out``. The guidance is treated as a constant: no gradient
    flows into it (the paper's forward-only cross-task guidance).
    """
    if variant not in CGA_VARIANTS:
        raise ValueError(f"unknown CGA variant {variant!r}; choose one of {CGA_VARIANTS}")
    _check_inputs(features, guidance)
    if _ops.use_kernel("cga", features, dtypes=True):
        # One autograd node for the whole head: its backward reads F once and writes dF once.
        return torch.ops.omkit.cga(
            features, guidance.detach(), w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps
        )[0]
    return cga_reference(features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps)


def cga_reference(
    features: Tensor,
    guidance: Tensor,
    w_pos: Tensor,
    b_pos: Tensor,
    w_neg: Tensor,
    b_neg: Tensor,
    w_out: Tensor | None = None,
    b_out: Tensor | None = None,
    variant: str = "full",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Pure-PyTorch :func:`cga` (the oracle of the fused ops): the CSCI pooling, then
    :func:`recalibrate_reference`."""
    if variant not in CGA_VARIANTS:
        raise ValueError(f"unknown CGA variant {variant!r}; choose one of {CGA_VARIANTS}")
    _check_inputs(features, guidance)
    guidance = guidance.detach()
    m = category_importance_reference(features, guidance, eps)
    return recalibrate_reference(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant)


def recalibrate_reference(
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
    """Recalibration + CompSeg (+ final conv) of :func:`cga` for given importance
    vectors ``m`` (B, 2, C): the oracle of the fused ``cga_recalibrate`` op."""
    if variant not in CGA_VARIANTS:
        raise ValueError(f"unknown CGA variant {variant!r}; choose one of {CGA_VARIANTS}")
    pt = guidance.to(features.dtype)
    # (m * F) then a 1x1x1 conv equals F convolved with per-sample weights W * m:
    # fold the recalibration into the weights instead of materialising U_t, U_n.
    out = None
    if variant != "neg":
        w = w_pos.unsqueeze(0) * m[:, 0:1, :]  # (B, K, C)
        s_t = torch.einsum("bkc,bc...->bk...", w, features) + b_pos.view(1, -1, 1, 1, 1)
        out = s_t if variant == "minus" else pt * s_t
    if variant != "pos":
        w = w_neg.unsqueeze(0) * m[:, 1:2, :]
        s_n = torch.einsum("bkc,bc...->bk...", w, features) + b_neg.view(1, -1, 1, 1, 1)
        s_n = s_n if variant == "minus" else (1 - pt) * s_n
        out = s_n if out is None else out + s_n
    if w_out is not None:
        out = torch.einsum("kj,bj...->bk...", w_out, out)
        if b_out is not None:
            out = out + b_out.view(1, -1, 1, 1, 1)
    return out
