// The window-consistent ops (window_sums, block_linear, cga_windowed, and the backward ops
// window_sums_backward, block_linear_backward): their geometry, the passes over the feature map
// that each backend implements (WindowKernels, defined as omkit::<backend>::kWindowKernels in
// <backend>/window_kernel.*), and the ops' bodies (window_common.cpp), which backend.h registers
// for every backend. Their contract is the reference in omkit/ops/window.py.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "cga_common.h"

namespace omkit {

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

// The passes over the feature map that each backend implements for the window ops.
struct WindowKernels {
  // The backend's name in messages ("CPU") and the feature dtypes its passes take; the ops check
  // them before any pass runs. omkit/ops/window.py lists the same dtypes (WINDOW_DTYPES).
  const char* device;
  c10::ArrayRef<at::ScalarType> dtypes;
  // x (B, C, D, H, W) contiguous, P (B, D, H, W) contiguous in x's
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

namespace impl {

// Window-consistent ops (window_common.cpp): window_sums and block_linear train (each has its
// backward op); cga_windowed is inference only.
using Grads5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
Tensor window_sums(const WindowKernels& kernels, const Tensor& x, const OptionalTensor& guidance,
                   c10::IntArrayRef window, c10::IntArrayRef block, c10::IntArrayRef offset, c10::IntArrayRef origin);
Tensor window_sums_backward(const WindowKernels& kernels, const Tensor& grad, const Tensor& x,
                            const OptionalTensor& guidance, c10::IntArrayRef window, c10::IntArrayRef block,
                            c10::IntArrayRef offset, c10::IntArrayRef origin);
Tensor block_linear(const WindowKernels& kernels, const Tensor& x, const OptionalTensor& guidance, const Tensor& m0,
                    const OptionalTensor& c0, const OptionalTensor& m1, const OptionalTensor& c1,
                    c10::IntArrayRef block, c10::IntArrayRef origin);
Grads5 block_linear_backward(const WindowKernels& kernels, const Tensor& grad_out, const Tensor& x,
                             const OptionalTensor& guidance, const Tensor& m0, const OptionalTensor& c0,
                             const OptionalTensor& m1, const OptionalTensor& c1, c10::IntArrayRef block,
                             c10::IntArrayRef origin);
std::tuple<Tensor, Tensor> cga_windowed(const WindowKernels& kernels, const Tensor& features, const Tensor& guidance,
                                        const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                                        const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                        const OptionalTensor& w_out, const OptionalTensor& b_out,
                                        c10::IntArrayRef window, c10::IntArrayRef block, c10::IntArrayRef offset,
                                        c10::IntArrayRef origin, c10::string_view variant, double eps);

}  // namespace impl

}  // namespace omkit
