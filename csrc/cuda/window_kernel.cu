// CUDA passes of the window-consistent ops.
//
// window_sums: separable window sums, one axis at a time (W, then H, then D), one thread per
// line. Along an axis, block k's window [lo_k, hi_k) only moves forward with k, so a thread keeps
// two running sums (one trailing each end): each element is read at most twice, whatever the
// windows' overlap. The W pass reads the feature map (threads on consecutive lines); the H and D
// passes put consecutive threads on consecutive elements of a line's neighbours (coalesced).
// Running sums are double, so their difference keeps float accuracy.
//
// block_mix: one thread per output element (sample, output channel, voxel); the block's K x C
// weights are read uniformly by the threads of a warp (read-only cache).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "../cga_common.h"
#include "cuda_utils.cuh"

namespace omkit {
namespace cuda {
namespace {

// Window bounds of block k along one axis, clipped to [0, size) (WindowGeometry::window_lo/hi).
struct AxisWindows {
  int64_t size, window, block, offset, origin, blocks;
  __device__ __forceinline__ int64_t clip(int64_t v) const { return v < 0 ? 0 : (v > size ? size : v); }
  __device__ __forceinline__ int64_t lo(int64_t k) const { return clip(origin + k * block - offset); }
  __device__ __forceinline__ int64_t hi(int64_t k) const { return clip(origin + k * block - offset + window); }
};

AxisWindows axis_windows(const WindowGeometry& g, int a) {
  return {g.size[a], g.window[a], g.block[a], g.offset[a], g.origin[a], g.blocks[a]};
}

// One line: `in` at stride `stride`, optionally times `p` (stride 1, same positions), into out[k * out_stride].
template <typename In, typename Out>
__device__ __forceinline__ void line_sums(const In* __restrict__ in, int64_t stride, const In* __restrict__ p,
                                          Out* __restrict__ out, int64_t out_stride, const AxisWindows& ax) {
  double below_lo = 0.0, below_hi = 0.0;
  int64_t lo_pos = 0, hi_pos = 0;
  for (int64_t k = 0; k < ax.blocks; ++k) {
    const int64_t lo = ax.lo(k), hi = ax.hi(k);
    for (; hi_pos < hi; ++hi_pos) {
      double v = static_cast<double>(in[hi_pos * stride]);
      if (p) v *= static_cast<double>(p[hi_pos]);
      below_hi += v;
    }
    for (; lo_pos < lo; ++lo_pos) {
      double v = static_cast<double>(in[lo_pos * stride]);
      if (p) v *= static_cast<double>(p[lo_pos]);
      below_lo += v;
    }
    out[k * out_stride] = static_cast<Out>(below_hi - below_lo);
  }
}

// W pass: (B, C, D, H, W) [* P] -> (B, R, C, D, H, nW); one thread per (line, row r).
template <typename scalar_t, typename acc_t>
__global__ void sums_along_w_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ P,
                                    acc_t* __restrict__ out, int64_t B, int64_t C, int64_t D, int64_t H, int64_t R,
                                    AxisWindows ax) {
  const int64_t W = ax.size, lines = B * C * D * H, total = lines * R;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / lines, line = t % lines;
    const int64_t b = line / (C * D * H), c = (line / (D * H)) % C, dh = line % (D * H);
    const bool weighted = R == 2 && r == 0;  // row 0 of two is sum P x
    const scalar_t* p = weighted ? P + (b * D * H + dh) * W : nullptr;
    line_sums(x + line * W, 1, p, out + (((b * R + r) * C + c) * D * H + dh) * ax.blocks, 1, ax);
  }
}

// A pass along one axis of a map viewed as (outer, L, inner) -> (outer, blocks, inner).
template <typename acc_t>
__global__ void sums_along_kernel(const acc_t* __restrict__ in, acc_t* __restrict__ out, int64_t outer,
                                  int64_t inner, AxisWindows ax) {
  const int64_t total = outer * inner;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = t / inner, i = t % inner;
    line_sums<acc_t, acc_t>(in + o * ax.size * inner + i, inner, nullptr, out + o * ax.blocks * inner + i, inner, ax);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void block_mix_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ P,
                                 scalar_t* __restrict__ out, const acc_t* __restrict__ M0,
                                 const acc_t* __restrict__ M1, const acc_t* __restrict__ c0,
                                 const acc_t* __restrict__ c1, int64_t B, int64_t C, int64_t K, WindowGeometry g) {
  const int64_t D = g.size[0], H = g.size[1], W = g.size[2], N = D * H * W, total = B * K * N;
  const int64_t nb = g.blocks[0] * g.blocks[1] * g.blocks[2];
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = t % N, k = (t / N) % K, b = t / (K * N);
    const int64_t d = v / (H * W), h = (v / W) % H, w = v % W;
    if (d < g.origin[0] || h < g.origin[1] || w < g.origin[2]) {
      out[t] = scalar_t(0);
      continue;
    }
    const int64_t blk = (((d - g.origin[0]) / g.block[0]) * g.blocks[1] + (h - g.origin[1]) / g.block[1]) *
                            g.blocks[2] + (w - g.origin[2]) / g.block[2];
    const acc_t* m0 = M0 + ((b * nb + blk) * K + k) * C;
    const scalar_t* xv = x + b * C * N + v;
    acc_t s0 = c0[k];
    if (P) {
      const acc_t* m1 = M1 + ((b * nb + blk) * K + k) * C;
      acc_t s1 = c1[k];
      for (int64_t c = 0; c < C; ++c) {
        const acc_t xc = static_cast<acc_t>(xv[c * N]);
        s0 += m0[c] * xc;
        s1 += m1[c] * xc;
      }
      out[t] = static_cast<scalar_t>(s0 + static_cast<acc_t>(P[b * N + v]) * s1);
    } else {
      for (int64_t c = 0; c < C; ++c) s0 += m0[c] * static_cast<acc_t>(xv[c * N]);
      out[t] = static_cast<scalar_t>(s0);
    }
  }
}

}  // namespace

Tensor window_sums_cuda(const Tensor& x, const Tensor& P, const WindowGeometry& g) {
  const int64_t B = x.size(0), C = x.size(1), R = P.defined() ? 2 : 1, D = g.size[0], H = g.size[1];
  const auto acc = x.options().dtype(accumulate_type(x.scalar_type()));
  Tensor along_w = at::empty({B, R, C, D, H, g.blocks[2]}, acc);
  Tensor along_h = at::empty({B, R, C, D, g.blocks[1], g.blocks[2]}, acc);
  Tensor out = at::empty({B, R, C, g.blocks[0], g.blocks[1], g.blocks[2]}, acc);
  if (out.numel() == 0) return out.zero_();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "omkit_window_sums_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t lines = B * R * C * D * H;
    sums_along_w_kernel<scalar_t, acc_t><<<stride_blocks(lines), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), P.defined() ? P.const_data_ptr<scalar_t>() : nullptr,
        along_w.mutable_data_ptr<acc_t>(), B, C, D, H, R, axis_windows(g, 2));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t outer_h = B * R * C * D, inner_h = g.blocks[2];
    sums_along_kernel<acc_t><<<stride_blocks(outer_h * inner_h), kThreads, 0, stream>>>(
        along_w.const_data_ptr<acc_t>(), along_h.mutable_data_ptr<acc_t>(), outer_h, inner_h, axis_windows(g, 1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t outer_d = B * R * C, inner_d = g.blocks[1] * g.blocks[2];
    sums_along_kernel<acc_t><<<stride_blocks(outer_d * inner_d), kThreads, 0, stream>>>(
        along_h.const_data_ptr<acc_t>(), out.mutable_data_ptr<acc_t>(), outer_d, inner_d, axis_windows(g, 0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor block_mix_cuda(const Tensor& x, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& c0,
                      const Tensor& c1, const WindowGeometry& g) {
  const int64_t B = x.size(0), C = x.size(1), K = M0.size(2);
  Tensor out = at::empty({B, K, g.size[0], g.size[1], g.size[2]}, x.options());
  if (out.numel() == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "omkit_block_mix_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool guided = P.defined();
    block_mix_kernel<scalar_t, acc_t><<<stride_blocks(out.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), guided ? P.const_data_ptr<scalar_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), M0.const_data_ptr<acc_t>(), guided ? M1.const_data_ptr<acc_t>() : nullptr,
        c0.const_data_ptr<acc_t>(), guided ? c1.const_data_ptr<acc_t>() : nullptr, B, C, K, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace omkit
