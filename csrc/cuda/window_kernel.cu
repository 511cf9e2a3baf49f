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
//
// window_sums_backward: one thread per input element (sample, channel, voxel); the blocks holding
// the voxel are a box of the block grid, so its gradient is eight terms of the grid's prefix sums
// per row.
//
// block_mix_backward: the input gradient with one thread per input element (sample, channel,
// voxel), summing over the K outputs; the weight gradients with one thread block per (sample,
// block, output, channel or bias) reducing over the block's voxels (block_sum2: deterministic, no
// atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "../window_common.h"
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
  // [first, last) of the blocks whose window holds voxel v (WindowGeometry::blocks_holding).
  static __device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) {
    return a >= 0 ? a / b : -((-a + b - 1) / b);
  }
  __device__ __forceinline__ void holding(int64_t v, int64_t& first, int64_t& last) const {
    const int64_t t = v - origin + offset;
    first = floor_div(t - window, block) + 1;
    first = first < 0 ? 0 : (first > blocks ? blocks : first);
    last = floor_div(t, block) + 1;
    last = last > blocks ? blocks : last;
    last = last < first ? first : last;
  }
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

// Sum over the box [d0, d1) x [h0, h1) x [w0, w1) of a grid's exclusive prefix sums s
// (strides sd, sh, 1).
__device__ __forceinline__ double box_sum(const double* __restrict__ s, int64_t sd, int64_t sh, int64_t d0,
                                          int64_t d1, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
  const double* a = s + d1 * sd;
  const double* b = s + d0 * sd;
  return (a[h1 * sh + w1] - a[h0 * sh + w1] - a[h1 * sh + w0] + a[h0 * sh + w0]) -
         (b[h1 * sh + w1] - b[h0 * sh + w1] - b[h1 * sh + w0] + b[h0 * sh + w0]);
}

// dx (B, C, D, H, W) from the prefix sums S (B, R, C, nD + 1, nH + 1, nW + 1); one thread per element.
template <typename scalar_t>
__global__ void window_scatter_kernel(const double* __restrict__ S, const scalar_t* __restrict__ P,
                                      scalar_t* __restrict__ dx, int64_t B, int64_t R, int64_t C, AxisWindows ad,
                                      AxisWindows ah, AxisWindows aw) {
  const int64_t D = ad.size, H = ah.size, W = aw.size, N = D * H * W, total = B * C * N;
  const int64_t sh = aw.blocks + 1, sd = (ah.blocks + 1) * sh, grid = (ad.blocks + 1) * sd;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = t % N, c = (t / N) % C, b = t / (C * N);
    const int64_t d = v / (H * W), h = (v / W) % H, w = v % W;
    int64_t d0, d1, h0, h1, w0, w1;
    ad.holding(d, d0, d1);
    ah.holding(h, h0, h1);
    aw.holding(w, w0, w1);
    double sum = box_sum(S + ((b * R + R - 1) * C + c) * grid, sd, sh, d0, d1, h0, h1, w0, w1);  // row "sum x"
    if (P) sum += static_cast<double>(P[b * N + v]) * box_sum(S + (b * R * C + c) * grid, sd, sh, d0, d1, h0, h1,
                                                             w0, w1);  // row "sum P x"
    dx[t] = static_cast<scalar_t>(sum);
  }
}

// dx = M0[b, blk]^T G + P M1[b, blk]^T G, zero before the origin; one thread per (sample, channel, voxel).
template <typename scalar_t, typename acc_t>
__global__ void block_mix_input_grad_kernel(const scalar_t* __restrict__ G, const scalar_t* __restrict__ P,
                                            const acc_t* __restrict__ M0, const acc_t* __restrict__ M1,
                                            scalar_t* __restrict__ dx, int64_t B, int64_t C, int64_t K,
                                            WindowGeometry g) {
  const int64_t D = g.size[0], H = g.size[1], W = g.size[2], N = D * H * W, total = B * C * N;
  const int64_t nb = g.blocks[0] * g.blocks[1] * g.blocks[2];
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = t % N, c = (t / N) % C, b = t / (C * N);
    const int64_t d = v / (H * W), h = (v / W) % H, w = v % W;
    if (d < g.origin[0] || h < g.origin[1] || w < g.origin[2]) {
      dx[t] = scalar_t(0);
      continue;
    }
    const int64_t blk = (((d - g.origin[0]) / g.block[0]) * g.blocks[1] + (h - g.origin[1]) / g.block[1]) *
                            g.blocks[2] + (w - g.origin[2]) / g.block[2];
    const acc_t* m0 = M0 + (b * nb + blk) * K * C + c;
    const scalar_t* gv = G + b * K * N + v;
    acc_t s0 = 0;
    if (P) {
      const acc_t* m1 = M1 + (b * nb + blk) * K * C + c;
      acc_t s1 = 0;
      for (int64_t k = 0; k < K; ++k) {
        const acc_t gk = static_cast<acc_t>(gv[k * N]);
        s0 += m0[k * C] * gk;
        s1 += m1[k * C] * gk;
      }
      dx[t] = static_cast<scalar_t>(s0 + static_cast<acc_t>(P[b * N + v]) * s1);
    } else {
      for (int64_t k = 0; k < K; ++k) s0 += m0[k * C] * static_cast<acc_t>(gv[k * N]);
      dx[t] = static_cast<scalar_t>(s0);
    }
  }
}

// One thread block per (sample, block, output k, column j) with j < C a channel and j = C the bias:
// r0 = sum over the block's voxels of G[k] x[j] (x[C] := 1), r1 = the same weighted by P.
// R0/R1 (B, nb, K, C + 1); a grid-stride loop over the tasks (uniform per thread block).
template <typename scalar_t, typename acc_t>
__global__ void block_mix_reduce_kernel(const scalar_t* __restrict__ G, const scalar_t* __restrict__ x,
                                        const scalar_t* __restrict__ P, acc_t* __restrict__ R0,
                                        acc_t* __restrict__ R1, int64_t B, int64_t C, int64_t K, WindowGeometry g) {
  const int64_t D = g.size[0], H = g.size[1], W = g.size[2], N = D * H * W;
  const int64_t nb = g.blocks[0] * g.blocks[1] * g.blocks[2], tasks = B * nb * K * (C + 1);
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t j = task % (C + 1), k = (task / (C + 1)) % K, blk = (task / ((C + 1) * K)) % nb,
                  b = task / ((C + 1) * K * nb);
    const int64_t bd = blk / (g.blocks[1] * g.blocks[2]), bh = (blk / g.blocks[2]) % g.blocks[1],
                  bw = blk % g.blocks[2];
    const int64_t d_lo = g.origin[0] + bd * g.block[0], h_lo = g.origin[1] + bh * g.block[1],
                  w_lo = g.origin[2] + bw * g.block[2];
    const int64_t ld = (d_lo + g.block[0] < D ? d_lo + g.block[0] : D) - d_lo;
    const int64_t lh = (h_lo + g.block[1] < H ? h_lo + g.block[1] : H) - h_lo;
    const int64_t lw = (w_lo + g.block[2] < W ? w_lo + g.block[2] : W) - w_lo;
    const scalar_t* gk = G + (b * K + k) * N;
    const scalar_t* xj = j < C ? x + (b * C + j) * N : nullptr;
    const scalar_t* p = P ? P + b * N : nullptr;
    acc_t s0 = 0, s1 = 0;
    for (int64_t i = threadIdx.x; i < ld * lh * lw; i += blockDim.x) {
      const int64_t v = ((d_lo + i / (lh * lw)) * H + h_lo + (i / lw) % lh) * W + w_lo + i % lw;
      acc_t term = static_cast<acc_t>(gk[v]);
      if (xj) term *= static_cast<acc_t>(xj[v]);
      s0 += term;
      if (p) s1 += static_cast<acc_t>(p[v]) * term;
    }
    block_sum2(s0, s1);
    if (threadIdx.x == 0) {
      R0[task] = s0;
      if (R1) R1[task] = s1;
    }
    __syncthreads();  // block_sum2's shared memory is reused by the next task
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

Tensor window_sums_backward_cuda(const Tensor& S, const Tensor& P, const WindowGeometry& g, at::ScalarType dtype) {
  const int64_t B = S.size(0), R = S.size(1), C = S.size(2);
  Tensor dx = at::empty({B, C, g.size[0], g.size[1], g.size[2]}, S.options().dtype(dtype));
  if (dx.numel() == 0) return dx;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "omkit_window_sums_backward_cuda", [&] {
    window_scatter_kernel<scalar_t><<<stride_blocks(dx.numel()), kThreads, 0, stream>>>(
        S.const_data_ptr<double>(), P.defined() ? P.const_data_ptr<scalar_t>() : nullptr,
        dx.mutable_data_ptr<scalar_t>(), B, R, C, axis_windows(g, 0), axis_windows(g, 1), axis_windows(g, 2));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> block_mix_backward_cuda(const Tensor& G, const Tensor& x,
                                                                           const Tensor& P, const Tensor& M0,
                                                                           const Tensor& M1, const WindowGeometry& g) {
  const int64_t B = x.size(0), C = x.size(1), K = M0.size(2), nb = g.num_blocks();
  const bool guided = P.defined();
  Tensor dx = at::empty(x.sizes(), x.options());
  // Column C of the reductions is the bias: dM = R[..., :C], the per-block dc = R[..., C].
  Tensor R0 = at::zeros({B, nb, K, C + 1}, M0.options());
  Tensor R1 = guided ? at::zeros({B, nb, K, C + 1}, M0.options()) : Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "omkit_block_mix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = guided ? P.const_data_ptr<scalar_t>() : nullptr;
    if (dx.numel() > 0) {
      block_mix_input_grad_kernel<scalar_t, acc_t><<<stride_blocks(dx.numel()), kThreads, 0, stream>>>(
          G.const_data_ptr<scalar_t>(), p, M0.const_data_ptr<acc_t>(), guided ? M1.const_data_ptr<acc_t>() : nullptr,
          dx.mutable_data_ptr<scalar_t>(), B, C, K, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t tasks = R0.numel();
    if (tasks > 0) {
      const unsigned int blocks = static_cast<unsigned int>(std::min<int64_t>(tasks, int64_t(1) << 30));
      block_mix_reduce_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          G.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), p, R0.mutable_data_ptr<acc_t>(),
          guided ? R1.mutable_data_ptr<acc_t>() : nullptr, B, C, K, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  Tensor dM0 = R0.narrow(3, 0, C).contiguous(), dc0 = R0.select(3, C).sum(1);
  Tensor dM1 = guided ? R1.narrow(3, 0, C).contiguous() : Tensor();
  Tensor dc1 = guided ? R1.select(3, C).sum(1) : Tensor();
  return {dx, dM0, dM1, dc0, dc1};
}

// Every pass is written for these dtypes (half types accumulated in float32); omkit/ops/window.py
// says the same (WINDOW_DTYPES), and the ops check it before any pass runs.
constexpr at::ScalarType kWindowDtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

extern const WindowKernels kWindowKernels{"CUDA", kWindowDtypes, window_sums_cuda, block_mix_cuda,
                                          window_sums_backward_cuda, block_mix_backward_cuda};

}  // namespace cuda
}  // namespace omkit
