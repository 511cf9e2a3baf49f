// Device-independent part of the CGA ops: argument checks, folding the
// per-sample importance vectors m into per-sample 1x1x1 weights, and the
// chain rule back through that folding. All of it works on tensors of size
// O(B * K * C) and runs as ordinary ATen calls; the passes over the feature
// map (size B * C * voxels) are the backend kernels in CgaKernels. The impl::
// functions are the ops' bodies; backend.h registers them once for every backend.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>

namespace omkit {

using at::Tensor;

// Geometry of the window-consistent ops (window_sums, block_linear, cga_windowed), per axis
// (D, H, W) of a feature map of `size` voxels: block k covers [origin + k block, origin + (k + 1)
// block) within [0, size); its window starts `offset` voxels before it and is `window` voxels
// long, zero outside [0, size); `blocks` blocks per axis; voxels before `origin` are in none.
struct WindowGeometry {
  int64_t size[3], window[3], block[3], offset[3], origin[3], blocks[3];
  int64_t num_blocks() const { return blocks[0] * blocks[1] * blocks[2]; }
  // [lo, hi) of block k's window along `axis`, clipped to [0, size).
  int64_t window_lo(int axis, int64_t k) const {
    return std::min(std::max<int64_t>(origin[axis] + k * block[axis] - offset[axis], 0), size[axis]);
  }
  int64_t window_hi(int axis, int64_t k) const {
    return std::min(std::max<int64_t>(origin[axis] + k * block[axis] - offset[axis] + window[axis], 0), size[axis]);
  }
  // [first, last) of the blocks whose window holds voxel v (0 <= v < size) along `axis`: the k with
  // origin + k block - offset <= v < origin + k block - offset + window, within [0, blocks); a
  // contiguous range, empty (first == last) when no window holds v. 0 <= first <= last <= blocks.
  void blocks_holding(int axis, int64_t v, int64_t& first, int64_t& last) const {
    const int64_t t = v - origin[axis] + offset[axis];
    const int64_t n = blocks[axis];
    first = std::min(std::max<int64_t>(floor_div(t - window[axis], block[axis]) + 1, 0), n);
    last = std::max(std::min<int64_t>(floor_div(t, block[axis]) + 1, n), first);
  }
  static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }  // b > 0
};

// The passes over the feature map that each backend implements.
// Shapes: F (B, C, N) contiguous, P (B, N) contiguous in F's dtype.
struct CgaKernels {
  // The backend's name in messages ("CPU") and the feature dtypes its passes take; the
  // ops check them before any pass runs. omkit/ops/manifest.py lists the same dtypes
  // (tests/test_ops_manifest.py checks the CPU ones by calling the ops).
  const char* device;
  c10::ArrayRef<at::ScalarType> dtypes;
  // z (B, 2, C) in the accumulation dtype: z[:, 0] = F^T Pt, z[:, 1] = F^T (1 - Pt).
  Tensor (*pool_reduce)(const Tensor& F, const Tensor& P);
  // dF (B, C, N) in F's dtype: dF[b, c, n] = base[b, c] + slope[b, c] * P[b, n].
  Tensor (*pool_expand)(const Tensor& base, const Tensor& slope, const Tensor& P, at::ScalarType dtype);
  // out (B, K, N) = M0[b] F[b] + c0 + P * (M1[b] F[b] + c1); M1/c1 undefined = no guided term.
  Tensor (*mix_forward)(const Tensor& F, const Tensor& P, const Tensor& M0, const Tensor& M1,
                        const Tensor& c0, const Tensor& c1);
  // Given G = d loss / d out (B, K, N): dF = M0^T G + P * M1^T G, and the per-sample
  // reductions dM0 = sum_n G F^T, dM1 = sum_n P G F^T (B, K, C), dc0 = sum G, dc1 = sum P G (B, K).
  // dM1/dc1 are returned undefined when M1 is undefined.
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> (*mix_backward)(
      const Tensor& G, const Tensor& F, const Tensor& P, const Tensor& M0, const Tensor& M1);
  // The reductions of mix_backward alone (F is read, dF not written): (dM0, dM1, dc0, dc1).
  std::tuple<Tensor, Tensor, Tensor, Tensor> (*mix_reduce)(const Tensor& G, const Tensor& F, const Tensor& P,
                                                           const Tensor& M0, const Tensor& M1);
  // The input gradient of mix_backward plus the pooling gradient, without reading F:
  // dF = M0^T G + P * M1^T G + base + slope * P (base/slope (B, C) in the accumulation dtype).
  Tensor (*mix_input_grad)(const Tensor& G, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& base,
                           const Tensor& slope);
  // Window-consistent passes; x (B, C, D, H, W) contiguous, P (B, D, H, W) contiguous in x's
  // dtype or undefined. window_sums: Z (B, R, C, nD, nH, nW) in the accumulation dtype, rows
  // [sum P x, sum x] (R = 2) or [sum x] (R = 1, P undefined); one pass over x (running sums).
  Tensor (*window_sums)(const Tensor& x, const Tensor& P, const WindowGeometry& g);
  // block_mix: out (B, K, D, H, W) in x's dtype = M0[b, blk(v)] x[b, :, v] + c0 + P (M1[b, blk(v)]
  // x[b, :, v] + c1), zero before the origin; M0/M1 (B, num_blocks, K, C), c0/c1 (K) in the
  // accumulation dtype, contiguous; M1 and c1 both defined (guided) or both undefined.
  Tensor (*block_mix)(const Tensor& x, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& c0,
                      const Tensor& c1, const WindowGeometry& g);
  // The window ops' gradients (the guidance P is a constant). window_sums_backward: dx (B, C, D, H, W)
  // in `dtype`; for voxel v, s_r(v) = the gradient of row r summed over the blocks whose window holds
  // v (WindowGeometry::blocks_holding: a box of the block grid), read as eight terms of S
  // (B, R, C, nD + 1, nH + 1, nW + 1), double, contiguous: the gradient's exclusive prefix sums over
  // the block grid (S[..., i, j, k] = sum over the blocks before (i, j, k)); dx = P s_0 + s_1 (R = 2)
  // or s_0 (R = 1).
  Tensor (*window_sums_backward)(const Tensor& S, const Tensor& P, const WindowGeometry& g, at::ScalarType dtype);
  // block_mix_backward: given G = d loss / d out (B, K, D, H, W) contiguous in x's dtype:
  // dx = M0[b, blk(v)]^T G + P M1[b, blk(v)]^T G in x's dtype, zero before the origin; per sample
  // and block dM0 = sum_{v in blk} G x^T and dM1 = sum_{v in blk} P G x^T (B, num_blocks, K, C); per
  // sample dc0 = sum_v G and dc1 = sum_v P G (B, K) over the voxels at or after the origin; in the
  // accumulation dtype. dM1/dc1 are undefined when P is (M1 is then undefined too).
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> (*block_mix_backward)(const Tensor& G, const Tensor& x,
                                                                           const Tensor& P, const Tensor& M0,
                                                                           const Tensor& M1,
                                                                           const WindowGeometry& g);
};

// How a variant merges the two branches: out = alpha(P) S_t + beta(P) S_n with
// alpha = a0 + a1 P and beta = b0 + b1 P. has_pos/has_neg say which branches exist.
struct VariantCoefficients {
  double a0, a1, b0, b1;
  bool has_pos, has_neg;
  bool guided() const { return a1 != 0.0 || b1 != 0.0; }
};
VariantCoefficients variant_coefficients(const std::string& variant);

// Accumulation dtype of the kernels: float for half/bfloat16, else the dtype itself.
at::ScalarType accumulate_type(at::ScalarType dtype);

// TypeError unless `kernels` take `dtype` ("cga_pool: the CPU kernel supports float32 and float64, got Half").
void check_kernel_dtype(const CgaKernels& kernels, at::ScalarType dtype, const char* op);

// Validates features/guidance and returns F (B, C, N) and P (B, N), contiguous, in F's dtype.
std::tuple<Tensor, Tensor> flatten_features_guidance(const Tensor& features, const Tensor& guidance,
                                                     const char* op);

// The ops' bodies, one per CGA op of ops.h, named as the op: the kernels, then the op's
// arguments in its schema's order (backend.h registers them for every backend).
namespace impl {

using OptionalTensor = std::optional<Tensor>;
using Grads7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Grads8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

std::tuple<Tensor, Tensor> cga_pool(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance,
                                    double eps);
Tensor cga_pool_backward(const CgaKernels& kernels, const Tensor& grad_m, const OptionalTensor& grad_l1_norm,
                         const Tensor& m, const Tensor& l1_norm, const Tensor& guidance, double eps);
Tensor cga_recalibrate(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance, const Tensor& m,
                       const OptionalTensor& w_pos, const OptionalTensor& b_pos, const OptionalTensor& w_neg,
                       const OptionalTensor& b_neg, const OptionalTensor& w_out, const OptionalTensor& b_out,
                       c10::string_view variant);
Grads8 cga_recalibrate_backward(const CgaKernels& kernels, const Tensor& grad_out, const Tensor& features,
                                const Tensor& guidance, const Tensor& m, const OptionalTensor& w_pos,
                                const OptionalTensor& b_pos, const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                const OptionalTensor& w_out, const OptionalTensor& b_out, c10::string_view variant);

// The whole CGA head in one op pair: forward = pooling + recalibration (two reads of F);
// backward = one pass reading F and G for the weight-side reductions, then one pass
// writing dF that folds in the pooling's gradient (F is not read again, and no second
// dF map is summed by autograd).
std::tuple<Tensor, Tensor, Tensor> cga(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance,
                                       const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                                       const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                       const OptionalTensor& w_out, const OptionalTensor& b_out,
                                       c10::string_view variant, double eps);
Grads7 cga_backward(const CgaKernels& kernels, const Tensor& grad_out, const OptionalTensor& grad_m,
                    const OptionalTensor& grad_l1_norm, const Tensor& features, const Tensor& guidance,
                    const Tensor& m, const Tensor& l1_norm, const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                    const OptionalTensor& w_neg, const OptionalTensor& b_neg, const OptionalTensor& w_out,
                    const OptionalTensor& b_out, c10::string_view variant, double eps);

// Window-consistent ops (window_common.cpp): window_sums and block_linear train (each has its
// backward op); cga_windowed is inference only.
using Grads5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
Tensor window_sums(const CgaKernels& kernels, const Tensor& x, const OptionalTensor& guidance,
                   c10::IntArrayRef window, c10::IntArrayRef block, c10::IntArrayRef offset, c10::IntArrayRef origin);
Tensor window_sums_backward(const CgaKernels& kernels, const Tensor& grad, const Tensor& x,
                            const OptionalTensor& guidance, c10::IntArrayRef window, c10::IntArrayRef block,
                            c10::IntArrayRef offset, c10::IntArrayRef origin);
Tensor block_linear(const CgaKernels& kernels, const Tensor& x, const OptionalTensor& guidance, const Tensor& m0,
                    const OptionalTensor& c0, const OptionalTensor& m1, const OptionalTensor& c1,
                    c10::IntArrayRef block, c10::IntArrayRef origin);
Grads5 block_linear_backward(const CgaKernels& kernels, const Tensor& grad_out, const Tensor& x,
                             const OptionalTensor& guidance, const Tensor& m0, const OptionalTensor& c0,
                             const OptionalTensor& m1, const OptionalTensor& c1, c10::IntArrayRef block,
                             c10::IntArrayRef origin);
std::tuple<Tensor, Tensor> cga_windowed(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance,
                                        const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                                        const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                        const OptionalTensor& w_out, const OptionalTensor& b_out,
                                        c10::IntArrayRef window, c10::IntArrayRef block, c10::IntArrayRef offset,
                                        c10::IntArrayRef origin, c10::string_view variant, double eps);

}  // namespace impl

// The CGA head's 1x1x1 weights with importance vectors m (N, 2, C) folded in, for any N (one row
// per sample, or per sample and block): out = M0 F + c0 + Pt (M1 F + c1), M0/M1 (N, K2, C), c0/c1
// (K2) in the accumulation dtype; M1/c1 undefined for the unguided variant (minus). Checks the
// weights against the variant and `features` (device, dtype, C).
struct FoldedHead {
  Tensor M0, M1, c0, c1;
  int64_t num_outputs;
};
FoldedHead fold_cga_head(const Tensor& features, const Tensor& m, const std::optional<Tensor>& w_pos,
                         const std::optional<Tensor>& b_pos, const std::optional<Tensor>& w_neg,
                         const std::optional<Tensor>& b_neg, const std::optional<Tensor>& w_out,
                         const std::optional<Tensor>& b_out, const std::string& variant, const char* op);

}  // namespace omkit
