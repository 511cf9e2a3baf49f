"""The CGA op family (Zhou et al., TIP 2020, Sec. III-C), every piece in one place: the
public functions, their pure-PyTorch references, the ops' fake kernels and autograd
formulas, and the ops' entries (:data:`OPS`, joined by ``omkit.ops.manifest``).

* :func:`cga`: the whole head (CSCI pooling + recalibration + CompSeg + final conv) as one
  autograd node; :func:`category_importance`: the CSCI block's m; :func:`cga_pool`: CSCI
  pooling, both categories in one pass, with the L1 norms; :func:`cga_recalibrate`:
  recalibration + CompSeg + optional final 1x1x1 conv for given m. Each op has its own
  backward op. ``omkit.functional`` is the documented functional API over these.
* References: :func:`cga_pool_reference`, :func:`category_importance_reference`,
  :func:`cga_recalibrate_reference`, :func:`cga_reference` and :func:`cga_head` (the
  ``omkit::cga`` op's outputs); :func:`cga_block_maps` reads the head off as an affine map
  per importance (the window family folds it per block).

Shapes: features ``F`` (B, C, *spatial); guidance ``Pt`` (B, 1, *spatial) is the preceding
task's probability of the positive category (tumor for CGA-tumor, core for CGA-core), and
``Pn = 1 - Pt``. C++: ``csrc/cga_common.{h,cpp}`` (bodies) and each backend's
``cga_kernel.*`` (passes).
"""
from __future__ import annotations

import torch
from torch import Tensor

from omkit.ops._library import call
from omkit.ops.spec import KERNEL_BACKENDS, Op

CGA_VARIANTS = ("full", "minus", "pos", "neg")
DEFAULT_EPS = 1e-12
# The dtypes of the features the CGA passes take per backend (csrc/<backend>/cga_kernel.*, kCgaDtypes).
CGA_DTYPES = {backend.device_type: backend.float_dtypes for backend in KERNEL_BACKENDS}


# ---- argument checks ---------------------------------------------------------------------------

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


def num_outputs(op: str, variant: str, w_pos, w_neg, w_out) -> int:
    """Output channels of a CGA op: ``w_out``'s rows, else the used branch weight's
    (ValueError naming ``op`` when a branch the variant uses has no weight)."""
    w_pos, w_neg = branch_weights(op, variant, w_pos, w_neg)
    weight = w_pos if w_pos is not None else w_neg
    return w_out.shape[0] if w_out is not None else weight.shape[0]


# ---- references --------------------------------------------------------------------------------

def cga_pool_reference(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
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


def category_importance_reference(features: Tensor, guidance: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Pure-PyTorch ``omkit.ops.category_importance``: ``m`` (B, 2, C) of :func:`cga_pool_reference`
    for features (B, C, D, H, W)."""
    check_cga_inputs(features, guidance)
    return cga_pool_reference(features, guidance, eps)[0]


def _conv_bias(out: Tensor, bias: Tensor | None) -> Tensor:
    return out if bias is None else out + bias.view(1, -1, *([1] * (out.dim() - 2)))


def cga_recalibrate_reference(features: Tensor, guidance: Tensor, m: Tensor, w_pos: Tensor | None, b_pos: Tensor | None,
                    w_neg: Tensor | None, b_neg: Tensor | None, w_out: Tensor | None = None,
                    b_out: Tensor | None = None, variant: str = "full") -> Tensor:
    """Recalibration + CompSeg (+ final conv) of :func:`cga_reference` for given importance vectors
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
    """``m`` (..., 2, C) of :func:`cga_pool_reference` from the sums ``[sum Pt F, sum F]`` (..., 2, C) over
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
    :func:`cga_recalibrate_reference` (linear in F at fixed Pt, affine in Pt) at F = 0 and the C unit
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
    # (the meta device, where dense inference plans its memory, has no autocast of its own)
    with torch.autocast("cpu" if m.device.type == "meta" else m.device.type, enabled=False):
        at = [cga_recalibrate_reference(features, features.new_full((n, 1, c + 1, 1, 1), pt), flat_m, *weights, variant)[..., 0, 0]
              for pt in (0.0, 1.0)]  # (n, K, C + 1) each
    c0, c_both = at[0][-1, :, 0], at[1][-1, :, 0]
    m0 = at[0][:-1, :, 1:] - at[0][:-1, :, :1]
    m1 = at[1][:-1, :, 1:] - at[1][:-1, :, :1] - m0
    k = m0.shape[1]
    return m0.reshape(*lead, k, c), c0, m1.reshape(*lead, k, c), c_both - c0


def cga_head(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None, w_neg: Tensor | None,
             b_neg: Tensor | None, w_out: Tensor | None, b_out: Tensor | None, variant: str,
             eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ``omkit::cga`` op's outputs ``(out, m, l1_norm)`` from its arguments: :func:`cga_pool_reference`,
    then :func:`cga_recalibrate_reference`."""
    m, l1_norm = cga_pool_reference(features, guidance, eps)
    return cga_recalibrate_reference(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant), m, l1_norm


def cga_reference(features: Tensor, guidance: Tensor, w_pos: Tensor | None, b_pos: Tensor | None, w_neg: Tensor | None,
        b_neg: Tensor | None, w_out: Tensor | None = None, b_out: Tensor | None = None, variant: str = "full",
        eps: float = DEFAULT_EPS) -> Tensor:
    """Pure-PyTorch ``omkit.ops.cga`` (the oracle of the fused ops): the CGA head's scores
    (B, K, D, H, W); the guidance is a constant."""
    check_variant(variant)
    check_cga_inputs(features, guidance)
    return cga_head(features, guidance.detach(), w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps)[0]


# ---- public functions --------------------------------------------------------------------------

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


# ---- fake kernels and autograd formulas (registered by omkit.ops._meta) ------------------------

def _cga_pool_fake(features, guidance, eps):
    check_features_guidance("cga_pool", features, guidance)
    b, c = features.shape[:2]
    return features.new_empty((b, 2, c)), features.new_empty((b, 2))


def _cga_pool_backward_fake(grad_m, grad_l1_norm, m, l1_norm, guidance, eps):
    return m.new_empty((m.shape[0], m.shape[2], *guidance.shape[2:]))


def _cga_recalibrate_fake(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant):
    check_features_guidance("cga_recalibrate", features, guidance)
    k = num_outputs("cga_recalibrate", variant, w_pos, w_neg, w_out)
    return features.new_empty((features.shape[0], k, *features.shape[2:]))


def _cga_recalibrate_backward_fake(grad_out, features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant):
    has_pos, has_neg = check_variant(variant)

    def like(t, used=True):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if (t is not None and used) else features.new_empty((0,))

    return (
        features.new_empty(features.shape),
        torch.empty_like(m, memory_format=torch.contiguous_format),
        like(w_pos, has_pos), like(b_pos, has_pos),
        like(w_neg, has_neg), like(b_neg, has_neg),
        like(w_out), like(b_out, w_out is not None),
    )


def _cga_fake(features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps):
    check_features_guidance("cga", features, guidance)
    k = num_outputs("cga", variant, w_pos, w_neg, w_out)
    b, c = features.shape[:2]
    return (features.new_empty((b, k, *features.shape[2:])), features.new_empty((b, 2, c)),
            features.new_empty((b, 2)))


def _cga_backward_fake(grad_out, grad_m, grad_l1_norm, features, guidance, m, l1_norm, w_pos, b_pos, w_neg, b_neg,
                       w_out, b_out, variant, eps):
    grads = _cga_recalibrate_backward_fake(grad_out, features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out,
                                           variant)
    return (grads[0], *grads[2:])


def _pool_setup_context(ctx, inputs, output):
    _features, guidance, eps = inputs
    m, l1_norm = output
    ctx.save_for_backward(m, l1_norm, guidance)
    ctx.eps = eps


def _pool_backward(ctx, grad_m, grad_l1_norm):
    m, l1_norm, guidance = ctx.saved_tensors
    grad_features = torch.ops.omkit.cga_pool_backward(grad_m, grad_l1_norm, m, l1_norm, guidance, ctx.eps)
    return grad_features, None, None  # the guidance is a constant (forward-only cross-task guidance)



def _cga_setup_context(ctx, inputs, output):
    features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps = inputs
    _out, m, l1_norm = output
    ctx.present = tuple(t is not None for t in (w_pos, b_pos, w_neg, b_neg, w_out, b_out))
    ctx.save_for_backward(features, guidance, m, l1_norm, w_pos, b_pos, w_neg, b_neg, w_out, b_out)
    ctx.variant, ctx.eps = variant, eps


def _cga_backward(ctx, grad_out, grad_m, grad_l1_norm):
    features, guidance, m, l1_norm, *params = ctx.saved_tensors
    grad_features, *param_grads = torch.ops.omkit.cga_backward(
        grad_out, grad_m, grad_l1_norm, features, guidance, m, l1_norm, *params, ctx.variant, ctx.eps
    )
    param_grads = [g if (present and g.numel() > 0) else None for g, present in zip(param_grads, ctx.present)]
    return (grad_features, None, *param_grads, None, None)



def _recalibrate_setup_context(ctx, inputs, output):
    features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant = inputs
    ctx.present = tuple(t is not None for t in (w_pos, b_pos, w_neg, b_neg, w_out, b_out))
    ctx.save_for_backward(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out)
    ctx.variant = variant


def _recalibrate_backward(ctx, grad_out):
    features, guidance, m, *params = ctx.saved_tensors
    grads = torch.ops.omkit.cga_recalibrate_backward(grad_out, features, guidance, m, *params, ctx.variant)
    grad_features, grad_m, *param_grads = grads
    # The op returns an empty tensor for a parameter that was None or that the variant does not use.
    param_grads = [g if (present and g.numel() > 0) else None for g, present in zip(param_grads, ctx.present)]
    return (grad_features, None, grad_m, *param_grads, None)


OPS: tuple[Op, ...] = (
    Op("cga", "cga", ("cga",), CGA_DTYPES, cga_head, _cga_fake, _cga_backward, _cga_setup_context),
    Op("cga_backward", "cga_backward", (), CGA_DTYPES, None, _cga_backward_fake, backward_of="cga"),
    Op("cga_pool", "cga_pool", ("cga_pool", "category_importance"), CGA_DTYPES, cga_pool_reference, _cga_pool_fake,
       _pool_backward, _pool_setup_context),
    Op("cga_pool_backward", "cga_pool_backward", (), CGA_DTYPES, None, _cga_pool_backward_fake,
       backward_of="cga_pool"),
    Op("cga_recalibrate", "cga_recalibrate", ("cga_recalibrate",), CGA_DTYPES, cga_recalibrate_reference,
       _cga_recalibrate_fake, _recalibrate_backward, _recalibrate_setup_context),
    Op("cga_recalibrate_backward", "cga_recalibrate_backward", (), CGA_DTYPES, None, _cga_recalibrate_backward_fake,
       backward_of="cga_recalibrate"),
)
