// Small helpers shared by the CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace omkit {
namespace cuda {

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid for a grid-stride loop over n elements: enough blocks to fill the device
// several times over, never more than needed.
inline unsigned int stride_blocks(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(ceil_div(n, kThreads), sms * 8)));
}

// Sum of two values over the block (blockDim.x a multiple of 32, at most 1024);
// the result is valid in thread 0. Warp shuffles first, then one value per warp
// through shared memory: no atomics, so the result is deterministic.
template <typename T>
__device__ __forceinline__ void block_sum2(T& a, T& b) {
  __shared__ T warp_a[32], warp_b[32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, offset);
    b += __shfl_down_sync(0xffffffffu, b, offset);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_a[warp] = a;
    warp_b[warp] = b;
  }
  __syncthreads();
  const int warps = blockDim.x >> 5;
  if (warp == 0) {
    a = lane < warps ? warp_a[lane] : T(0);
    b = lane < warps ? warp_b[lane] : T(0);
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, offset);
      b += __shfl_down_sync(0xffffffffu, b, offset);
    }
  }
}

}  // namespace cuda
}  // namespace omkit
