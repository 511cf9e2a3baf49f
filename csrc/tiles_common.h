// Device-independent part of the tile ops: argument checks, output allocation and
// the clipping geometry, shared by every backend; the backends implement the byte
// moving passes in TileKernels. The contract is the reference in
// omkit.inference.tiling: volumes (C, D, H, W), tiles (T, C, d, h, w), origins
// int64 (T, 3) in (D, H, W) order, possibly negative or running past the end; what
// lies outside the volume reads as zero and is never written.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#if defined(__CUDACC__)
#define OMKIT_HOST_DEVICE __host__ __device__
#else
#define OMKIT_HOST_DEVICE
#endif

namespace omkit {

using at::Tensor;

inline std::array<int64_t, 3> as_triple(c10::IntArrayRef v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v.size() == 3, op, ": ", name, " needs three sizes (D, H, W), got ", v);
  return {v[0], v[1], v[2]};
}

// origins (T, 3) of any integer dtype -> int64 contiguous on `device`.
inline Tensor checked_origins(const Tensor& origins, int64_t num_tiles, at::Device device, const char* op) {
  TORCH_CHECK_TYPE(!at::isFloatingType(origins.scalar_type()) && !at::isComplexType(origins.scalar_type()) &&
                       origins.scalar_type() != at::kBool,
                   op, ": origins must be an integer tensor (int64), got ", origins.scalar_type());
  TORCH_CHECK_VALUE(origins.dim() == 2 && origins.size(1) == 3, op, ": origins must be (T, 3), got ",
                    origins.sizes());
  TORCH_CHECK_VALUE(num_tiles < 0 || origins.size(0) == num_tiles, op, ": origins has ", origins.size(0),
                    " rows but there are ", num_tiles, " tiles");
  return origins.to(device, at::kLong).contiguous();
}

inline std::array<int64_t, 3> checked_tile_size(c10::IntArrayRef tile_size, const char* op) {
  auto roi = as_triple(tile_size, op, "tile_size");
  for (int64_t r : roi) TORCH_CHECK_VALUE(r >= 1, op, ": tile_size must be positive, got ", tile_size);
  return roi;
}

inline void check_gather_args(const Tensor& volume, const char* op) {
  TORCH_CHECK_VALUE(volume.dim() == 4, op, ": volume must be (C, D, H, W), got shape ", volume.sizes());
}

// Checks out/tiles/keep for the stitch ops; `channels_out` < 0 skips the channel check
// (the argmax variant reduces over the channels).
inline void check_stitch_args(const Tensor& out, int64_t out_dims, const Tensor& tiles, int64_t channels_out,
                              c10::IntArrayRef keep_offset, c10::IntArrayRef tile_keep, const char* op) {
  TORCH_CHECK_VALUE(out.dim() == out_dims, op, ": the output must have ", out_dims, " dimensions, got shape ",
                    out.sizes());
  TORCH_CHECK_VALUE(tiles.dim() == 5, op, ": tiles must be (T, K, d, h, w), got shape ", tiles.sizes());
  TORCH_CHECK_VALUE(channels_out < 0 || tiles.size(1) == channels_out, op,
                    ": out (K, D, H, W) and tiles (T, K, d, h, w) need the same K, got ", out.sizes(), " and ",
                    tiles.sizes());
  TORCH_CHECK(out.device() == tiles.device(), op, ": out is on ", out.device(), " but tiles are on ",
              tiles.device());
  auto ko = as_triple(keep_offset, op, "keep_offset");
  auto ks = as_triple(tile_keep, op, "tile_keep");
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK_VALUE(ko[a] >= 0 && ks[a] >= 0 && ko[a] + ks[a] <= tiles.size(2 + a), op,
                      ": the kept region (offset ", keep_offset, ", size ", tile_keep,
                      ") must lie inside the tile ", tiles.sizes().slice(2));
  }
}

// Half-open range [lo, hi) of positions p in [start, start + size) with 0 <= p < limit.
// Used by the host and the device code alike.
struct Span {
  int64_t lo, hi;
  OMKIT_HOST_DEVICE bool empty() const { return lo >= hi; }
};
OMKIT_HOST_DEVICE inline Span clip_span(int64_t start, int64_t size, int64_t limit) {
  const int64_t end = start + size;
  return Span{start > 0 ? start : 0, end < limit ? end : limit};
}

// The stitch ops' geometry: T tiles of (d, h, w) voxels, kept centres at offset ko and of
// size ks within each tile, written into a (D, H, W) volume. Passed to device kernels by value.
struct KeptGeometry {
  int64_t T, d, h, w, D, H, W;
  int64_t ko[3], ks[3];
};

// Where the kept centre of the tile at `origin` (its (z, y, x) corner) meets output slice z:
// false when it does not, else the clipped y and x spans in volume coordinates.
OMKIT_HOST_DEVICE inline bool kept_rows(const KeptGeometry& g, const int64_t* origin, int64_t z, Span* ys,
                                        Span* xs) {
  const Span zs = clip_span(origin[0] + g.ko[0], g.ks[0], g.D);
  if (z < zs.lo || z >= zs.hi) return false;
  *ys = clip_span(origin[1] + g.ko[1], g.ks[1], g.H);
  *xs = clip_span(origin[2] + g.ko[2], g.ks[2], g.W);
  return !ys->empty() && !xs->empty();
}

// The passes each backend implements. Every tensor is contiguous and on the backend's
// device, origins int64 (T, 3); the ops have checked the arguments and allocated the outputs.
struct TileKernels {
  // tiles (T, C, d, h, w) <- volume (C, D, H, W) at origins, zero outside (not called when tiles is empty).
  void (*gather)(const Tensor& volume, const Tensor& origins, const Tensor& tiles);
  // out (K, D, H, W) <- the kept centres of tiles (T, K, d, h, w), out's dtype, later tiles winning.
  void (*stitch)(const Tensor& out, const Tensor& tiles, const Tensor& origins, const KeptGeometry& g);
  // labels (D, H, W) uint8 <- lut[argmax_k tiles[t, k]] over the kept centres (lut (K,) uint8 on the
  // device, or undefined: the index itself); tiles floating point.
  void (*stitch_argmax)(const Tensor& labels, const Tensor& tiles, const Tensor& origins, const Tensor& lut,
                        const KeptGeometry& g);
};

// The ops' bodies, one per tile op of ops.h, named as the op: the kernels, then the op's
// arguments (checks, allocation, copies back into non-contiguous outputs around the passes).
namespace impl {

Tensor gather_tiles(const TileKernels& kernels, const Tensor& volume, const Tensor& origins,
                    c10::IntArrayRef tile_size);
void stitch_tiles_(const TileKernels& kernels, const Tensor& out, const Tensor& tiles, const Tensor& origins,
                   c10::IntArrayRef keep_offset, c10::IntArrayRef tile_keep);
void stitch_tiles_argmax_(const TileKernels& kernels, const Tensor& labels, const Tensor& tiles,
                          const Tensor& origins, c10::IntArrayRef keep_offset, c10::IntArrayRef tile_keep,
                          const std::optional<Tensor>& label_map);

}  // namespace impl

}  // namespace omkit
