// Every op of omkit's library, in one list: X(name, signature), the schema being
// name + signature. ops.cpp defines the schemas from it (TORCH_LIBRARY) and
// backend.h registers each backend's wrapper of every op under the same names
// (TORCH_LIBRARY_IMPL), so a backend cannot miss an op. omkit/ops/manifest.py
// lists the same ops for Python (public function, dtypes per backend, autograd);
// tests/test_ops_manifest.py checks that the two lists agree.
//
// * cga_pool: the CSCI block (CGA pooling). features (B, C, *spatial), guidance Pt
//   (B, 1, *spatial) -> m (B, 2, C) = rows [m_t, m_n], each L1-normalised by
//   max(||z||_1, eps), and the unclamped norms ||z_t||_1, ||z_n||_1 (B, 2) that
//   the backward needs to undo the normalisation.
// * cga_pool_backward: its gradient with respect to the features (guidance is a
//   constant); grad_l1_norm may be None when the norms were not used downstream.
// * cga_recalibrate: CSCI recalibration + CompSeg (+ optional final 1x1x1 conv), fused:
//     S_t = W_pos (m_t * F) + b_pos,  S_n = W_neg (m_n * F) + b_neg
//     full: Pt S_t + (1 - Pt) S_n | minus: S_t + S_n | pos: Pt S_t | neg: (1 - Pt) S_n
//     then S = W_out S~ + b_out when w_out is given.
//   A branch's weight is required only when the variant uses it; biases are optional.
// * cga_recalibrate_backward: gradients for (features, m, w_pos, b_pos, w_neg, b_neg,
//   w_out, b_out); an input that was None (or unused by the variant) gets an empty tensor.
// * cga: the whole CGA head (pooling + recalibration + CompSeg + final conv) as one
//   autograd node, what omkit.ops.cga runs. Forward: two passes over F. Backward: one
//   pass reading F for the weight-side reductions, one pass writing dF with the
//   pooling's gradient folded in. m and l1_norm are returned for the backward (and for
//   inspection); gradients reaching them are honoured.
// * cga_backward: gradients for (features, w_pos, b_pos, w_neg, b_neg, w_out, b_out);
//   empty where absent.
// * Overlap-tile inference (contract: omkit.inference.tiling):
//   gather_tiles: volume (C, D, H, W), origins int64 (T, 3) -> tiles (T, C, d, h, w),
//   zero outside; stitch_tiles_: out (K, D, H, W) <- tiles[i, :, ko:ko+ks] at
//   origins[i] + ko, clipped, later tiles win; stitch_tiles_argmax_: labels (D, H, W)
//   uint8 <- label_map[argmax_k tiles[i, k, ko:ko+ks]] (or the index itself when
//   label_map is None), the class map without a float full-volume buffer.
// * Window-consistent (dense) ops (contract: omkit/ops/window.py, where the geometry is
//   described; WindowGeometry in cga_common.h):
//   window_sums: x (B, C, D, H, W), guidance? -> (B, nD, nH, nW, R, C) sums over each block's
//   window, rows [sum Pt x, sum x] (R = 2) or [sum x] (R = 1), in the accumulation dtype;
//   block_linear: a 1x1x1 conv with per-block weights m0/m1 (B, nD, nH, nW, K, C), biases c0/c1
//   (K,): out = m0 x + c0 + Pt (m1 x + c1); cga_windowed: the CGA head with each block's m pooled
//   over its window -> (out (B, K, D, H, W), m (B, nD, nH, nW, 2, C)), inference only.
// * window_sums_backward: the gradient with respect to x (in x's dtype; x gives the shape and
//   dtype, the guidance is a constant): each voxel gets grad[w, 0] Pt + grad[w, 1] (R = 2) or
//   grad[w, 0] (R = 1) summed over the blocks w whose window holds it.
// * block_linear_backward: gradients for (x, m0, c0, m1, c1) (the guidance is a constant); an
//   input that was None gets an empty tensor.
#pragma once

#define OMKIT_OPS(X)                                                                                              \
  X(cga_pool, "(Tensor features, Tensor guidance, float eps) -> (Tensor m, Tensor l1_norm)")                       \
  X(cga_pool_backward,                                                                                            \
    "(Tensor grad_m, Tensor? grad_l1_norm, Tensor m, Tensor l1_norm, Tensor guidance, float eps) -> Tensor")      \
  X(cga_recalibrate,                                                                                              \
    "(Tensor features, Tensor guidance, Tensor m, Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, Tensor? b_neg, "   \
    "Tensor? w_out, Tensor? b_out, str variant) -> Tensor")                                                       \
  X(cga_recalibrate_backward,                                                                                     \
    "(Tensor grad_out, Tensor features, Tensor guidance, Tensor m, Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, " \
    "Tensor? b_neg, Tensor? w_out, Tensor? b_out, str variant) "                                                  \
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")                                        \
  X(cga,                                                                                                          \
    "(Tensor features, Tensor guidance, Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, Tensor? b_neg, "             \
    "Tensor? w_out, Tensor? b_out, str variant, float eps) -> (Tensor out, Tensor m, Tensor l1_norm)")            \
  X(cga_backward,                                                                                                 \
    "(Tensor grad_out, Tensor? grad_m, Tensor? grad_l1_norm, Tensor features, Tensor guidance, Tensor m, "        \
    "Tensor l1_norm, Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, Tensor? b_neg, Tensor? w_out, Tensor? b_out, "  \
    "str variant, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")                        \
  X(gather_tiles, "(Tensor volume, Tensor origins, int[] tile_size) -> Tensor")                                    \
  X(stitch_tiles_,                                                                                                \
    "(Tensor(a!) out, Tensor tiles, Tensor origins, int[] keep_offset, int[] tile_keep) -> ()")                   \
  X(stitch_tiles_argmax_,                                                                                         \
    "(Tensor(a!) labels, Tensor tiles, Tensor origins, int[] keep_offset, int[] tile_keep, Tensor? label_map) "   \
    "-> ()")                                                                                                      \
  X(window_sums,                                                                                                  \
    "(Tensor x, Tensor? guidance, int[] window, int[] block, int[] offset, int[] origin) -> Tensor")              \
  X(window_sums_backward,                                                                                         \
    "(Tensor grad, Tensor x, Tensor? guidance, int[] window, int[] block, int[] offset, int[] origin) -> Tensor") \
  X(block_linear,                                                                                                 \
    "(Tensor x, Tensor? guidance, Tensor m0, Tensor? c0, Tensor? m1, Tensor? c1, int[] block, int[] origin) "     \
    "-> Tensor")                                                                                                  \
  X(block_linear_backward,                                                                                        \
    "(Tensor grad_out, Tensor x, Tensor? guidance, Tensor m0, Tensor? c0, Tensor? m1, Tensor? c1, int[] block, "  \
    "int[] origin) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")                                                  \
  X(cga_windowed,                                                                                                 \
    "(Tensor features, Tensor guidance, Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, Tensor? b_neg, "             \
    "Tensor? w_out, Tensor? b_out, int[] window, int[] block, int[] offset, int[] origin, str variant, "          \
    "float eps) -> (Tensor out, Tensor m)")
