"""Fake (shape-only) kernels and autograd formulas of the omkit ops.

The schemas live in ``csrc/ops.h``; ``csrc/ops.cpp`` names this module
(``set_python_module``), so torch imports it whenever it needs a fake kernel, and
``omkit.ops._library`` imports it once the compiled library is loaded. It only
registers: it needs the library's ops defined (checked below, without importing
``_library``) and imports nothing of omkit but the manifest and the references'
argument checks, so it can be imported however the library was loaded (C++ users,
``torch.ops.load_library``). The fake kernels repeat the C++ argument checks that
concern shapes, so a wrong call fails the same way eagerly and under
``torch.compile``. The backward formulas call the backward ops, which are ops
themselves (with fake kernels), so AOTAutograd can trace them. Which ops have an
autograd formula: the manifest's ``trains`` (tests/test_ops_manifest.py checks).
"""
from __future__ import annotations

import torch

from omkit.ops.manifest import OPS
from omkit.ops.reference import _accumulate_dtype, _check_volume, check_features_guidance, check_variant
from omkit.ops.reference import num_outputs, window_geometry

_undefined = [op.qualname for op in OPS if not torch._C._dispatch_has_kernel(op.qualname)]
if _undefined:  # imported by torch for a library that failed to load, or before loading it
    raise ImportError(f"omkit.ops._meta needs the compiled omkit ops loaded; missing {', '.join(_undefined)}")


@torch.library.register_fake("omkit::cga_pool")
def _cga_pool_fake(features, guidance, eps):
    check_features_guidance("cga_pool", features, guidance)
    b, c = features.shape[:2]
    return features.new_empty((b, 2, c)), features.new_empty((b, 2))


@torch.library.register_fake("omkit::cga_pool_backward")
def _cga_pool_backward_fake(grad_m, grad_l1_norm, m, l1_norm, guidance, eps):
    return m.new_empty((m.shape[0], m.shape[2], *guidance.shape[2:]))


@torch.library.register_fake("omkit::cga_recalibrate")
def _cga_recalibrate_fake(features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant):
    check_features_guidance("cga_recalibrate", features, guidance)
    k = num_outputs("cga_recalibrate", variant, w_pos, w_neg, w_out)
    return features.new_empty((features.shape[0], k, *features.shape[2:]))


@torch.library.register_fake("omkit::cga_recalibrate_backward")
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


@torch.library.register_fake("omkit::cga")
def _cga_fake(features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, eps):
    check_features_guidance("cga", features, guidance)
    k = num_outputs("cga", variant, w_pos, w_neg, w_out)
    b, c = features.shape[:2]
    return (features.new_empty((b, k, *features.shape[2:])), features.new_empty((b, 2, c)),
            features.new_empty((b, 2)))


@torch.library.register_fake("omkit::cga_backward")
def _cga_backward_fake(grad_out, grad_m, grad_l1_norm, features, guidance, m, l1_norm, w_pos, b_pos, w_neg, b_neg,
                       w_out, b_out, variant, eps):
    grads = _cga_recalibrate_backward_fake(grad_out, features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out,
                                           variant)
    return (grads[0], *grads[2:])


@torch.library.register_fake("omkit::gather_tiles")
def _gather_tiles_fake(volume, origins, tile_size):
    if volume.dim() != 4:
        raise ValueError(f"gather_tiles: volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    if origins.dim() != 2 or origins.shape[1] != 3:
        raise ValueError(f"gather_tiles: origins must be (T, 3), got shape {tuple(origins.shape)}")
    return volume.new_empty((origins.shape[0], volume.shape[0], *tile_size))


@torch.library.register_fake("omkit::stitch_tiles_")
def _stitch_tiles_fake(out, tiles, origins, keep_offset, tile_keep):
    return None


@torch.library.register_fake("omkit::stitch_tiles_argmax_")
def _stitch_tiles_argmax_fake(labels, tiles, origins, keep_offset, tile_keep, label_map):
    return None


@torch.library.register_fake("omkit::window_sums")
def _window_sums_fake(x, guidance, window, block, offset, origin):
    _check_volume("window_sums", x, guidance)
    *_, blocks = window_geometry(x.shape[2:], window, block, offset, origin)
    rows = 1 if guidance is None else 2
    return x.new_empty((x.shape[0], *blocks, rows, x.shape[1]), dtype=_accumulate_dtype(x.dtype))


@torch.library.register_fake("omkit::block_linear")
def _block_linear_fake(x, guidance, m0, c0, m1, c1, block, origin):
    _check_volume("block_linear", x, guidance)
    *_, blocks = window_geometry(x.shape[2:], block, block, 0, origin)
    if m0.dim() != 6 or tuple(m0.shape[:4]) != (x.shape[0], *blocks) or m0.shape[5] != x.shape[1]:
        raise ValueError(f"block_linear: m0 must be (B, nD, nH, nW, K, C) = ({x.shape[0]}, "
                         f"{', '.join(map(str, blocks))}, K, {x.shape[1]}), got shape {tuple(m0.shape)}")
    return x.new_empty((x.shape[0], m0.shape[4], *x.shape[2:]))


@torch.library.register_fake("omkit::window_sums_backward")
def _window_sums_backward_fake(grad, x, guidance, window, block, offset, origin):
    _check_volume("window_sums_backward", x, guidance)
    window_geometry(x.shape[2:], window, block, offset, origin)
    return x.new_empty(x.shape)


@torch.library.register_fake("omkit::block_linear_backward")
def _block_linear_backward_fake(grad_out, x, guidance, m0, c0, m1, c1, block, origin):
    _check_volume("block_linear_backward", x, guidance)
    window_geometry(x.shape[2:], block, block, 0, origin)

    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else x.new_empty((0,))

    return x.new_empty(x.shape), like(m0), like(c0), like(m1), like(c1)


@torch.library.register_fake("omkit::cga_windowed")
def _cga_windowed_fake(features, guidance, w_pos, b_pos, w_neg, b_neg, w_out, b_out, window, block, offset, origin,
                       variant, eps):
    _check_volume("cga_windowed", features, guidance)
    *_, blocks = window_geometry(features.shape[2:], window, block, offset, origin)
    k = num_outputs("cga_windowed", variant, w_pos, w_neg, w_out)
    b, c = features.shape[:2]
    return features.new_empty((b, k, *features.shape[2:])), features.new_empty((b, *blocks, 2, c))


# ---- autograd ---------------------------------------------------------------------------------

def _pool_setup_context(ctx, inputs, output):
    _features, guidance, eps = inputs
    m, l1_norm = output
    ctx.save_for_backward(m, l1_norm, guidance)
    ctx.eps = eps


def _pool_backward(ctx, grad_m, grad_l1_norm):
    m, l1_norm, guidance = ctx.saved_tensors
    grad_features = torch.ops.omkit.cga_pool_backward(grad_m, grad_l1_norm, m, l1_norm, guidance, ctx.eps)
    return grad_features, None, None  # the guidance is a constant (forward-only cross-task guidance)


torch.library.register_autograd("omkit::cga_pool", _pool_backward, setup_context=_pool_setup_context)


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


torch.library.register_autograd("omkit::cga", _cga_backward, setup_context=_cga_setup_context)


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


torch.library.register_autograd(
    "omkit::cga_recalibrate", _recalibrate_backward, setup_context=_recalibrate_setup_context
)


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


torch.library.register_autograd("omkit::window_sums", _window_sums_backward, setup_context=_window_sums_setup_context)


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


torch.library.register_autograd("omkit::block_linear", _block_linear_backward,
                                setup_context=_block_linear_setup_context)
