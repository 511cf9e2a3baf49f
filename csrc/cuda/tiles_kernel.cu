// CUDA kernels of the tile ops. Gather and stitch move raw elements, so they are
// instantiated per element size (1, 2, 4, 8 bytes) rather than per dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../tiles_common.h"
#include "cuda_utils.cuh"

namespace omkit {
namespace {

using cuda::kThreads;

// Thread per output element (grid-stride): each warp writes a contiguous run of
// the tile batch; reads are coalesced along x wherever the tile is inside.
template <typename word_t>
__global__ void gather_tiles_kernel(const word_t* __restrict__ volume, const int64_t* __restrict__ origins,
                                    word_t* __restrict__ tiles, int64_t C, int64_t D, int64_t H, int64_t W,
                                    int64_t d, int64_t h, int64_t w, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = i % w, y = (i / w) % h, z = (i / (w * h)) % d, c = (i / (w * h * d)) % C;
    const int64_t t = i / (w * h * d * C);
    const int64_t vz = origins[t * 3] + z, vy = origins[t * 3 + 1] + y, vx = origins[t * 3 + 2] + x;
    const bool inside = vz >= 0 && vz < D && vy >= 0 && vy < H && vx >= 0 && vx < W;
    tiles[i] = inside ? volume[((c * D + vz) * H + vy) * W + vx] : word_t(0);
  }
}

template <typename Fn>
void dispatch_word(int64_t element_size, const char* op, Fn fn) {
  switch (element_size) {
    case 1: fn(uint8_t{}); break;
    case 2: fn(uint16_t{}); break;
    case 4: fn(uint32_t{}); break;
    case 8: fn(uint64_t{}); break;
    default: TORCH_CHECK_TYPE(false, op, ": elements of ", element_size, " bytes are not supported");
  }
}

void gather_tiles_cuda(const Tensor& V, const Tensor& O, const Tensor& tiles) {
  const int64_t total = tiles.numel();
  dispatch_word(V.element_size(), "gather_tiles", [&](auto word) {
    using word_t = decltype(word);
    gather_tiles_kernel<word_t><<<cuda::stride_blocks(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        static_cast<const word_t*>(V.const_data_ptr()), O.const_data_ptr<int64_t>(),
        static_cast<word_t*>(tiles.mutable_data_ptr()), V.size(0), V.size(1), V.size(2), V.size(3), tiles.size(2),
        tiles.size(3), tiles.size(4), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Block (output slice z, channel k): walks the tiles in order and copies every kept
// row that lands in slice z. One block owns the slice, and a barrier separates
// consecutive tiles that touch it, so where kept regions overlap the later tile
// wins, as in the reference, with no atomics and no per-voxel ownership buffer.
template <typename word_t>
__global__ void stitch_tiles_kernel(const word_t* __restrict__ tiles, const int64_t* __restrict__ origins,
                                    word_t* __restrict__ out, int64_t K, KeptGeometry g) {
  const int64_t z = blockIdx.x, k = blockIdx.y;
  for (int64_t t = 0; t < g.T; ++t) {
    Span ys, xs;
    if (!kept_rows(g, origins + t * 3, z, &ys, &xs)) continue;  // the same for the whole block
    const int64_t oz = origins[t * 3], oy = origins[t * 3 + 1], ox = origins[t * 3 + 2];
    const int64_t rw = xs.hi - xs.lo, count = (ys.hi - ys.lo) * rw;
    const word_t* src = tiles + ((t * K + k) * g.d + (z - oz)) * g.h * g.w;
    word_t* dst = out + (k * g.D + z) * g.H * g.W;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t y = ys.lo + i / rw, x = xs.lo + i % rw;
      dst[y * g.W + x] = src[(y - oy) * g.w + (x - ox)];
    }
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void stitch_tiles_argmax_kernel(const scalar_t* __restrict__ tiles, const int64_t* __restrict__ origins,
                                           const uint8_t* __restrict__ label_map, uint8_t* __restrict__ labels,
                                           int64_t K, KeptGeometry g) {
  using acc_t = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;
  const int64_t z = blockIdx.x;
  const int64_t channel_stride = g.d * g.h * g.w;
  for (int64_t t = 0; t < g.T; ++t) {
    Span ys, xs;
    if (!kept_rows(g, origins + t * 3, z, &ys, &xs)) continue;  // the same for the whole block
    const int64_t oz = origins[t * 3], oy = origins[t * 3 + 1], ox = origins[t * 3 + 2];
    const int64_t rw = xs.hi - xs.lo, count = (ys.hi - ys.lo) * rw;
    const scalar_t* src = tiles + (t * K * g.d + (z - oz)) * g.h * g.w;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t y = ys.lo + i / rw, x = xs.lo + i % rw;
      const scalar_t* v = src + (y - oy) * g.w + (x - ox);
      acc_t best = static_cast<acc_t>(v[0]);
      int64_t arg = 0;
      for (int64_t k = 1; k < K; ++k) {
        const acc_t cand = static_cast<acc_t>(v[k * channel_stride]);
        // torch.argmax semantics: NaN is the maximum, ties keep the first index.
        if (!isnan(best) && (cand > best || isnan(cand))) {
          best = cand;
          arg = k;
        }
      }
      labels[(z * g.H + y) * g.W + x] = label_map ? label_map[arg] : static_cast<uint8_t>(arg);
    }
    __syncthreads();
  }
}

void stitch_tiles_cuda(const Tensor& target, const Tensor& tiles, const Tensor& O, const KeptGeometry& g) {
  const int64_t K = tiles.size(1);
  TORCH_CHECK(K <= 65535, "stitch_tiles_: at most 65535 channels, got ", K);
  dispatch_word(target.element_size(), "stitch_tiles_", [&](auto word) {
    using word_t = decltype(word);
    stitch_tiles_kernel<word_t><<<dim3(static_cast<unsigned int>(g.D), static_cast<unsigned int>(K)), kThreads, 0,
                                  at::cuda::getCurrentCUDAStream()>>>(
        static_cast<const word_t*>(tiles.const_data_ptr()), O.const_data_ptr<int64_t>(),
        static_cast<word_t*>(target.mutable_data_ptr()), K, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void stitch_tiles_argmax_cuda(const Tensor& target, const Tensor& tiles, const Tensor& O, const Tensor& lut,
                              const KeptGeometry& g) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tiles.scalar_type(), "omkit_stitch_argmax_cuda", [&] {
    stitch_tiles_argmax_kernel<scalar_t><<<static_cast<unsigned int>(g.D), kThreads, 0,
                                           at::cuda::getCurrentCUDAStream()>>>(
        tiles.const_data_ptr<scalar_t>(), O.const_data_ptr<int64_t>(),
        lut.defined() ? lut.const_data_ptr<uint8_t>() : nullptr, target.mutable_data_ptr<uint8_t>(), tiles.size(1), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

namespace cuda {
extern const TileKernels kTileKernels{gather_tiles_cuda, stitch_tiles_cuda, stitch_tiles_argmax_cuda};
}  // namespace cuda

}  // namespace omkit
