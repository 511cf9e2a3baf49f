// CUDA kernels of the tile ops. Gather and stitch move raw elements, so they are
// instantiated per element size (1, 2, 4, 8 bytes) rather than per dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

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

Tensor gather_tiles_cuda(const Tensor& volume, const Tensor& origins, c10::IntArrayRef roi_size) {
  const char* op = "gather_tiles";
  check_gather_args(volume, op);
  c10::cuda::CUDAGuard guard(volume.device());
  const auto roi = checked_roi(roi_size, op);
  Tensor O = checked_origins(origins, -1, volume.device(), op);
  Tensor V = volume.contiguous();
  const int64_t T = O.size(0), C = V.size(0);
  Tensor tiles = at::empty({T, C, roi[0], roi[1], roi[2]}, V.options());
  const int64_t total = tiles.numel();
  if (total == 0) return tiles;
  dispatch_word(V.element_size(), op, [&](auto word) {
    using word_t = decltype(word);
    gather_tiles_kernel<word_t><<<cuda::stride_blocks(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        static_cast<const word_t*>(V.const_data_ptr()), O.const_data_ptr<int64_t>(),
        static_cast<word_t*>(tiles.mutable_data_ptr()), C, V.size(1), V.size(2), V.size(3), roi[0], roi[1], roi[2],
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return tiles;
}

struct KeptGeometry {
  int64_t T, d, h, w, D, H, W;
  int64_t ko[3], ks[3];
};

// Block (output slice z, channel k): walks the tiles in order and copies every kept
// row that lands in slice z. One block owns the slice, and a barrier separates
// consecutive tiles that touch it, so where kept regions overlap the later tile
// wins, as in the reference, with no atomics and no per-voxel ownership buffer.
template <typename word_t>
__global__ void stitch_tiles_kernel(const word_t* __restrict__ tiles, const int64_t* __restrict__ origins,
                                    word_t* __restrict__ out, int64_t K, KeptGeometry g) {
  const int64_t z = blockIdx.x, k = blockIdx.y;
  for (int64_t t = 0; t < g.T; ++t) {
    const int64_t oz = origins[t * 3], oy = origins[t * 3 + 1], ox = origins[t * 3 + 2];
    const Span zs = clip_span(oz + g.ko[0], g.ks[0], g.D);
    if (z < zs.lo || z >= zs.hi) continue;
    const Span ys = clip_span(oy + g.ko[1], g.ks[1], g.H), xs = clip_span(ox + g.ko[2], g.ks[2], g.W);
    if (ys.empty() || xs.empty()) continue;
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
    const int64_t oz = origins[t * 3], oy = origins[t * 3 + 1], ox = origins[t * 3 + 2];
    const Span zs = clip_span(oz + g.ko[0], g.ks[0], g.D);
    if (z < zs.lo || z >= zs.hi) continue;
    const Span ys = clip_span(oy + g.ko[1], g.ks[1], g.H), xs = clip_span(ox + g.ko[2], g.ks[2], g.W);
    if (ys.empty() || xs.empty()) continue;
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

KeptGeometry kept_geometry(const Tensor& tiles, int64_t D, int64_t H, int64_t W, c10::IntArrayRef keep_offset,
                           c10::IntArrayRef keep_size, const char* op) {
  const auto ko = as_triple(keep_offset, op, "keep_offset");
  const auto ks = as_triple(keep_size, op, "keep_size");
  return {tiles.size(0), tiles.size(2), tiles.size(3), tiles.size(4), D, H, W, {ko[0], ko[1], ko[2]},
          {ks[0], ks[1], ks[2]}};
}

void stitch_tiles_cuda(const Tensor& out, const Tensor& tiles_in, const Tensor& origins, c10::IntArrayRef keep_offset,
                       c10::IntArrayRef keep_size) {
  const char* op = "stitch_tiles_";
  check_stitch_args(out, 4, tiles_in, out.dim() == 4 ? out.size(0) : -1, keep_offset, keep_size, op);
  c10::cuda::CUDAGuard guard(out.device());
  Tensor O = checked_origins(origins, tiles_in.size(0), out.device(), op);
  Tensor tiles = tiles_in.to(out.scalar_type()).contiguous();
  Tensor target = out.is_contiguous() ? out : out.contiguous();
  const KeptGeometry g = kept_geometry(tiles, target.size(1), target.size(2), target.size(3), keep_offset, keep_size, op);
  const int64_t K = tiles.size(1);
  if (g.T > 0 && g.D > 0 && K > 0) {
    TORCH_CHECK(K <= 65535, op, ": at most 65535 channels, got ", K);
    dispatch_word(target.element_size(), op, [&](auto word) {
      using word_t = decltype(word);
      stitch_tiles_kernel<word_t><<<dim3(static_cast<unsigned int>(g.D), static_cast<unsigned int>(K)), kThreads, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(
          static_cast<const word_t*>(tiles.const_data_ptr()), O.const_data_ptr<int64_t>(),
          static_cast<word_t*>(target.mutable_data_ptr()), K, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (!target.is_same(out)) out.copy_(target);
}

void stitch_tiles_argmax_cuda(const Tensor& labels, const Tensor& tiles_in, const Tensor& origins,
                              c10::IntArrayRef keep_offset, c10::IntArrayRef keep_size,
                              const std::optional<Tensor>& label_map) {
  const char* op = "stitch_tiles_argmax_";
  check_stitch_args(labels, 3, tiles_in, -1, keep_offset, keep_size, op);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kByte, op, ": labels must be uint8, got ", labels.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(tiles_in.scalar_type()), op, ": tiles must be floating point, got ",
                   tiles_in.scalar_type());
  c10::cuda::CUDAGuard guard(labels.device());
  const int64_t K = tiles_in.size(1);
  Tensor lut;
  if (label_map.has_value() && label_map->defined()) {
    TORCH_CHECK_VALUE(label_map->dim() == 1 && label_map->size(0) == K, op, ": label_map must be (K,) = (", K,
                      ",), got ", label_map->sizes());
    lut = label_map->to(labels.device(), at::kByte).contiguous();
  } else {
    TORCH_CHECK_VALUE(K <= 256, op, ": without a label_map the class index must fit uint8, got K = ", K);
  }
  Tensor O = checked_origins(origins, tiles_in.size(0), labels.device(), op);
  Tensor tiles = tiles_in.contiguous();
  Tensor target = labels.is_contiguous() ? labels : labels.contiguous();
  const KeptGeometry g = kept_geometry(tiles, target.size(0), target.size(1), target.size(2), keep_offset, keep_size, op);
  if (g.T > 0 && g.D > 0 && K > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tiles.scalar_type(), "omkit_stitch_argmax_cuda", [&] {
      stitch_tiles_argmax_kernel<scalar_t><<<static_cast<unsigned int>(g.D), kThreads, 0,
                                             at::cuda::getCurrentCUDAStream()>>>(
          tiles.const_data_ptr<scalar_t>(), O.const_data_ptr<int64_t>(),
          lut.defined() ? lut.const_data_ptr<uint8_t>() : nullptr, target.mutable_data_ptr<uint8_t>(), K, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (!target.is_same(labels)) labels.copy_(target);
}

}  // namespace

TORCH_LIBRARY_IMPL(omkit, CUDA, m) {
  m.impl("gather_tiles", &gather_tiles_cuda);
  m.impl("stitch_tiles_", &stitch_tiles_cuda);
  m.impl("stitch_tiles_argmax_", &stitch_tiles_argmax_cuda);
}

}  // namespace omkit
