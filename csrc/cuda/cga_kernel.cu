// CUDA kernels of the CGA ops. Memory-bound by design: each kernel touches the
// feature map once (coalesced along the voxel axis, one thread per voxel or a
// block per channel row) and keeps the folded per-sample weights, read
// uniformly by every thread of a block, in the L1/read-only cache.
// Half and bfloat16 inputs are accumulated in float (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <type_traits>

#include "../cga_common.h"
#include "cuda_utils.cuh"

namespace omkit {
namespace {

using cuda::kThreads;

// Output channels held in registers per thread; larger K is processed in groups of this many.
constexpr int kMaxK = 8;

// ---- pooling -----------------------------------------------------------------------------

// Block (split, row): partial sums of F[row] * Pt and F[row] * (1 - Pt) over one slice
// of the voxels. Rows are on grid.x (no 65535 limit), slices on grid.y.
template <typename scalar_t, typename acc_t>
__global__ void pool_reduce_kernel(const scalar_t* __restrict__ F, const scalar_t* __restrict__ P,
                                   acc_t* __restrict__ partial, int64_t C, int64_t N, int64_t slice) {
  const int64_t row = blockIdx.x, b = row / C;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * slice, n1 = (n0 + slice < N) ? n0 + slice : N;
  const scalar_t* f = F + row * N;
  const scalar_t* p = P + b * N;
  acc_t s_t = 0, s_n = 0;
  for (int64_t n = n0 + threadIdx.x; n < n1; n += blockDim.x) {
    const acc_t fv = static_cast<acc_t>(f[n]), pv = static_cast<acc_t>(p[n]);
    s_t += fv * pv;
    s_n += fv * (acc_t(1) - pv);
  }
  cuda::block_sum2(s_t, s_n);
  if (threadIdx.x == 0) {
    partial[(row * gridDim.y + blockIdx.y) * 2 + 0] = s_t;
    partial[(row * gridDim.y + blockIdx.y) * 2 + 1] = s_n;
  }
}

Tensor pool_reduce_cuda(const Tensor& F, const Tensor& P) {
  const int64_t B = F.size(0), C = F.size(1), N = F.size(2);
  const auto acc = accumulate_type(F.scalar_type());
  // Split long rows so that small B * C still fills the device; partial sums are
  // added afterwards (deterministic, unlike atomics).
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t rows = std::max<int64_t>(B * C, 1);
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>({cuda::ceil_div(sms * 4, rows), cuda::ceil_div(N, kThreads * 8), 65535}));
  const int64_t slice = std::max<int64_t>(1, cuda::ceil_div(N, splits));
  Tensor partial = at::zeros({B, C, splits, 2}, F.options().dtype(acc));
  if (B * C > 0 && N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, F.scalar_type(), "omkit_pool_reduce_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      pool_reduce_kernel<scalar_t, acc_t>
          <<<dim3(static_cast<unsigned int>(B * C), static_cast<unsigned int>(splits)), kThreads, 0,
             at::cuda::getCurrentCUDAStream()>>>(F.const_data_ptr<scalar_t>(), P.const_data_ptr<scalar_t>(),
                                                 partial.mutable_data_ptr<acc_t>(), C, N, slice);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return partial.sum(2).permute({0, 2, 1}).contiguous();  // (B, 2, C)
}

template <typename scalar_t, typename acc_t>
__global__ void pool_expand_kernel(const acc_t* __restrict__ base, const acc_t* __restrict__ slope,
                                   const scalar_t* __restrict__ P, scalar_t* __restrict__ dF, int64_t C, int64_t N,
                                   int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t row = i / N, n = i - row * N, b = row / C;
    dF[i] = static_cast<scalar_t>(base[row] + slope[row] * static_cast<acc_t>(P[b * N + n]));
  }
}

Tensor pool_expand_cuda(const Tensor& base, const Tensor& slope, const Tensor& P, at::ScalarType dtype) {
  const int64_t B = base.size(0), C = base.size(1), N = P.size(1);
  Tensor dF = at::empty({B, C, N}, P.options().dtype(dtype));
  const int64_t total = B * C * N;
  if (total == 0) return dF;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "omkit_pool_expand_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Tensor a = base.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    Tensor s = slope.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    pool_expand_kernel<scalar_t, acc_t><<<cuda::stride_blocks(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        a.const_data_ptr<acc_t>(), s.const_data_ptr<acc_t>(), P.const_data_ptr<scalar_t>(),
        dF.mutable_data_ptr<scalar_t>(), C, N, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dF;
}

// ---- recalibrate + CompSeg -------------------------------------------------------------------

// Launches a thread-per-voxel kernel (grid.x over the N voxels, grid.y over the B samples) in its
// guided (M1 defined) or unguided instantiation: launch(grid, std::bool_constant<guided>{}).
template <typename Launch>
void launch_per_voxel(int64_t B, int64_t N, bool guided, const char* op, Launch&& launch) {
  TORCH_CHECK(B <= 65535, op, ": the CUDA kernel supports at most 65535 samples per call, got ", B);
  const dim3 grid(static_cast<unsigned int>(cuda::ceil_div(N, kThreads)), static_cast<unsigned int>(B));
  if (guided) {
    launch(grid, std::true_type{});
  } else {
    launch(grid, std::false_type{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// The voxel n of sample b that a thread of a launch_per_voxel kernel works on.
struct VoxelIndex {
  int64_t b, n;
};
__device__ __forceinline__ VoxelIndex voxel_index() {
  return {static_cast<int64_t>(blockIdx.y), blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x};
}

// Thread per voxel (grid.x over voxels, grid.y over samples): up to kMaxK outputs in
// registers, the C feature values of the voxel read once each (coalesced across the warp).
template <typename scalar_t, typename acc_t, bool kGuided>
__global__ void mix_forward_kernel(const scalar_t* __restrict__ F, const scalar_t* __restrict__ P,
                                   const acc_t* __restrict__ M0, const acc_t* __restrict__ M1,
                                   const acc_t* __restrict__ c0, const acc_t* __restrict__ c1,
                                   scalar_t* __restrict__ out, int64_t C, int64_t K, int64_t N) {
  const auto [b, n] = voxel_index();
  if (n >= N) return;
  const scalar_t* f = F + b * C * N + n;
  const acc_t p = static_cast<acc_t>(P[b * N + n]);
  const acc_t* m0 = M0 + b * K * C;
  const acc_t* m1 = kGuided ? M1 + b * K * C : nullptr;
  for (int64_t k0 = 0; k0 < K; k0 += kMaxK) {
    const int kc = static_cast<int>(K - k0 < kMaxK ? K - k0 : kMaxK);
    acc_t a0[kMaxK], a1[kMaxK];
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      a0[j] = j < kc ? c0[k0 + j] : acc_t(0);
      a1[j] = (kGuided && j < kc) ? c1[k0 + j] : acc_t(0);
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t fv = static_cast<acc_t>(f[c * N]);
#pragma unroll
      for (int j = 0; j < kMaxK; ++j) {
        if (j < kc) {
          a0[j] += __ldg(m0 + (k0 + j) * C + c) * fv;
          if (kGuided) a1[j] += __ldg(m1 + (k0 + j) * C + c) * fv;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      if (j < kc) out[(b * K + k0 + j) * N + n] = static_cast<scalar_t>(kGuided ? a0[j] + p * a1[j] : a0[j]);
    }
  }
}

Tensor mix_forward_cuda(const Tensor& F, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& c0,
                        const Tensor& c1) {
  const int64_t B = F.size(0), C = F.size(1), N = F.size(2), K = M0.size(1);
  Tensor out = at::empty({B, K, N}, F.options());
  if (B == 0 || N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, F.scalar_type(), "omkit_mix_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_per_voxel(B, N, M1.defined(), "cga_recalibrate", [&](dim3 grid, auto guided) {
      mix_forward_kernel<scalar_t, acc_t, decltype(guided)::value>
          <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              F.const_data_ptr<scalar_t>(), P.const_data_ptr<scalar_t>(), M0.const_data_ptr<acc_t>(),
              data_or_null<acc_t>(M1), c0.const_data_ptr<acc_t>(), data_or_null<acc_t>(c1),
              out.mutable_data_ptr<scalar_t>(), C, K, N);
    });
  });
  return out;
}

// dF[c, n] = sum_k (M0[k, c] + Pt[n] M1[k, c]) G[k, n] (+ base[c] + slope[c] Pt[n], the
// pooling's gradient, when given): thread per voxel, G cached in registers, one coalesced
// write per feature channel, F never read.
template <typename scalar_t, typename acc_t, bool kGuided>
__global__ void mix_backward_input_kernel(const scalar_t* __restrict__ G, const scalar_t* __restrict__ P,
                                          const acc_t* __restrict__ M0, const acc_t* __restrict__ M1,
                                          const acc_t* __restrict__ base, const acc_t* __restrict__ slope,
                                          scalar_t* __restrict__ dF, int64_t C, int64_t K, int64_t N) {
  const auto [b, n] = voxel_index();
  if (n >= N) return;
  const acc_t p = static_cast<acc_t>(P[b * N + n]);
  const scalar_t* g = G + b * K * N + n;
  const acc_t* m0 = M0 + b * K * C;
  const acc_t* m1 = kGuided ? M1 + b * K * C : nullptr;
  scalar_t* d = dF + b * C * N + n;
  if (K <= kMaxK) {
    acc_t gv[kMaxK];
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) gv[j] = j < K ? static_cast<acc_t>(g[j * N]) : acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      acc_t s = base ? base[b * C + c] + slope[b * C + c] * p : acc_t(0);
#pragma unroll
      for (int j = 0; j < kMaxK; ++j) {
        if (j < K) {
          const acc_t w = kGuided ? __ldg(m0 + j * C + c) + p * __ldg(m1 + j * C + c) : __ldg(m0 + j * C + c);
          s += w * gv[j];
        }
      }
      d[c * N] = static_cast<scalar_t>(s);
    }
  } else {  // many output channels: re-read G from cache rather than spill registers
    for (int64_t c = 0; c < C; ++c) {
      acc_t s = base ? base[b * C + c] + slope[b * C + c] * p : acc_t(0);
      for (int64_t k = 0; k < K; ++k) {
        const acc_t w = kGuided ? __ldg(m0 + k * C + c) + p * __ldg(m1 + k * C + c) : __ldg(m0 + k * C + c);
        s += w * static_cast<acc_t>(g[k * N]);
      }
      d[c * N] = static_cast<scalar_t>(s);
    }
  }
}

Tensor input_grad_cuda(const Tensor& G, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& base_in,
                       const Tensor& slope_in, int64_t C) {
  const int64_t B = G.size(0), N = G.size(2), K = M0.size(1);
  Tensor dF = at::empty({B, C, N}, G.options());
  if (B == 0 || N == 0 || C == 0) return dF;
  const auto acc = accumulate_type(G.scalar_type());
  Tensor base = base_in.defined() ? base_in.to(acc).contiguous() : Tensor();
  Tensor slope = slope_in.defined() ? slope_in.to(acc).contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "omkit_mix_input_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_per_voxel(B, N, M1.defined(), "cga backward", [&](dim3 grid, auto guided) {
      mix_backward_input_kernel<scalar_t, acc_t, decltype(guided)::value>
          <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              G.const_data_ptr<scalar_t>(), P.const_data_ptr<scalar_t>(), M0.const_data_ptr<acc_t>(),
              data_or_null<acc_t>(M1), data_or_null<acc_t>(base), data_or_null<acc_t>(slope),
              dF.mutable_data_ptr<scalar_t>(), C, K, N);
    });
  });
  return dF;
}

// The weight-side reductions are a batched (2K x N) @ (N x C) product: cuBLAS reads F
// once for both the plain and the Pt-weighted gradient. Accumulated in float/double.
std::tuple<Tensor, Tensor, Tensor, Tensor> mix_reduce_cuda(const Tensor& G, const Tensor& F, const Tensor& P,
                                                           const Tensor& M0, const Tensor& M1) {
  const int64_t K = M0.size(1);
  const bool guided = M1.defined();
  const auto acc = accumulate_type(F.scalar_type());
  Tensor Gc = G.to(acc), Fc = F.to(acc);
  Tensor stacked = guided ? at::cat({Gc, P.to(acc).unsqueeze(1) * Gc}, 1) : Gc;
  Tensor dM = at::bmm(stacked, Fc.transpose(1, 2));  // (B, K or 2K, C)
  Tensor dc = stacked.sum(-1);                        // (B, K or 2K)
  if (guided) {
    return {dM.narrow(1, 0, K).contiguous(), dM.narrow(1, K, K).contiguous(), dc.narrow(1, 0, K).contiguous(),
            dc.narrow(1, K, K).contiguous()};
  }
  return {dM, Tensor(), dc, Tensor()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mix_backward_cuda(const Tensor& G, const Tensor& F,
                                                                     const Tensor& P, const Tensor& M0,
                                                                     const Tensor& M1) {
  Tensor dF = input_grad_cuda(G, P, M0, M1, Tensor(), Tensor(), F.size(1));
  auto [dM0, dM1, dc0, dc1] = mix_reduce_cuda(G, F, P, M0, M1);
  return {dF, dM0, dM1, dc0, dc1};
}

Tensor mix_input_grad_cuda(const Tensor& G, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& base,
                           const Tensor& slope) {
  return input_grad_cuda(G, P, M0, M1, base, slope, M0.size(2));
}

}  // namespace

namespace cuda {

// Every pass is instantiated for these dtypes (AT_DISPATCH_FLOATING_TYPES_AND2, float accumulation
// for the half types); omkit/devices.py says the same (KERNEL_BACKENDS), and the ops check it first.
constexpr at::ScalarType kCgaDtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

extern const CgaKernels kCgaKernels{"CUDA",           kCgaDtypes,        pool_reduce_cuda, pool_expand_cuda,
                                    mix_forward_cuda, mix_backward_cuda, mix_reduce_cuda,  mix_input_grad_cuda};

}  // namespace cuda

}  // namespace omkit
