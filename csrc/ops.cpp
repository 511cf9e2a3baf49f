// Schemas of every omkit op, in one place. The kernels live in cpu/ and cuda/
// and register under TORCH_LIBRARY_IMPL; fake (meta) kernels and autograd
// formulas are registered from Python (omkit/ops/_meta.py), named here with
// set_python_module so that torch finds them even when only this library
// was loaded (C++ users, torch.compile in a fresh process).
#include <torch/library.h>

TORCH_LIBRARY(omkit, m) {
  m.set_python_module("omkit.ops._meta");

  // CSCI block (CGA pooling): features (B, C, *spatial), guidance Pt
  // (B, 1, *spatial) -> m (B, 2, C) = rows [m_t, m_n], each L1-normalised by
  // max(||z||_1, eps), and the unclamped norms ||z_t||_1, ||z_n||_1 (B, 2)
  // that the backward needs to undo the normalisation.
  m.def("cga_pool(Tensor features, Tensor guidance, float eps) -> (Tensor m, Tensor l1_norm)");
  // Gradient of cga_pool with respect to the features (guidance is a constant).
  // grad_l1_norm may be None when the norms were not used downstream.
  m.def(
      "cga_pool_backward(Tensor grad_m, Tensor? grad_l1_norm, Tensor m, Tensor l1_norm, "
      "Tensor guidance, float eps) -> Tensor");

  // CSCI recalibration + CompSeg (+ optional final 1x1x1 conv), fused:
  //   S_t = W_pos (m_t * F) + b_pos,  S_n = W_neg (m_n * F) + b_neg
  //   full: Pt S_t + (1 - Pt) S_n | minus: S_t + S_n | pos: Pt S_t | neg: (1 - Pt) S_n
  //   then S = W_out S~ + b_out when w_out is given.
  // A branch's weight is required only when the variant uses it; biases are optional.
  m.def(
      "cga_recalibrate(Tensor features, Tensor guidance, Tensor m, Tensor? w_pos, Tensor? b_pos, "
      "Tensor? w_neg, Tensor? b_neg, Tensor? w_out, Tensor? b_out, str variant) -> Tensor");
  // Gradients for (features, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out); an
  // input that was None (or unused by the variant) gets an empty tensor.
  m.def(
      "cga_recalibrate_backward(Tensor grad_out, Tensor features, Tensor guidance, Tensor m, "
      "Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, Tensor? b_neg, Tensor? w_out, Tensor? b_out, "
      "str variant) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The whole CGA head (pooling + recalibration + CompSeg + final conv) as one
  // autograd node: what omkit.functional.cga runs. Forward: two passes over F.
  // Backward: one pass reading F for the weight-side reductions, one pass writing
  // dF with the pooling's gradient folded in. m and l1_norm are returned for the
  // backward (and for inspection); gradients reaching them are honoured.
  m.def(
      "cga(Tensor features, Tensor guidance, Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, Tensor? b_neg, "
      "Tensor? w_out, Tensor? b_out, str variant, float eps) -> (Tensor out, Tensor m, Tensor l1_norm)");
  // Gradients for (features, w_pos, b_pos, w_neg, b_neg, w_out, b_out); empty where absent.
  m.def(
      "cga_backward(Tensor grad_out, Tensor? grad_m, Tensor? grad_l1_norm, Tensor features, Tensor guidance, "
      "Tensor m, Tensor l1_norm, Tensor? w_pos, Tensor? b_pos, Tensor? w_neg, Tensor? b_neg, Tensor? w_out, "
      "Tensor? b_out, str variant, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Overlap-tile inference. Contract: omkit.inference.tiling.
  // volume (C, D, H, W), origins int64 (T, 3) -> tiles (T, C, d, h, w), zero outside.
  m.def("gather_tiles(Tensor volume, Tensor origins, int[] roi_size) -> Tensor");
  // out (K, D, H, W) <- tiles[i, :, ko:ko+ks] at origins[i] + ko, clipped; later tiles win.
  m.def(
      "stitch_tiles_(Tensor(a!) out, Tensor tiles, Tensor origins, int[] keep_offset, "
      "int[] keep_size) -> ()");
  // labels (D, H, W) uint8 <- label_map[argmax_k tiles[i, k, ko:ko+ks]] (or the index itself
  // when label_map is None): the class map without a float full-volume buffer.
  m.def(
      "stitch_tiles_argmax_(Tensor(a!) labels, Tensor tiles, Tensor origins, int[] keep_offset, "
      "int[] keep_size, Tensor? label_map) -> ()");
}
