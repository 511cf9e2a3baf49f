// CPU kernels of the tile ops. Gather and stitch only move bytes, so they run
// on raw element bytes (any dtype) with memcpy/memset of whole x-runs; the
// argmax stitch reads K values per voxel and writes one byte.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>

#include "../tiles_common.h"

namespace omkit {
namespace {

Tensor gather_tiles_cpu(const Tensor& volume, const Tensor& origins, c10::IntArrayRef roi_size) {
  const char* op = "gather_tiles";
  check_gather_args(volume, op);
  const auto roi = checked_roi(roi_size, op);
  Tensor O = checked_origins(origins, -1, at::kCPU, op);
  Tensor V = volume.contiguous();
  const int64_t T = O.size(0), C = V.size(0), D = V.size(1), H = V.size(2), W = V.size(3);
  const int64_t d = roi[0], h = roi[1], w = roi[2];
  Tensor tiles = at::empty({T, C, d, h, w}, V.options());
  const int64_t es = V.element_size();
  const char* src = static_cast<const char*>(V.const_data_ptr());
  char* dst = static_cast<char*>(tiles.mutable_data_ptr());
  const int64_t* org = O.const_data_ptr<int64_t>();
  // One work item = one x-run of one tile row: a memcpy of the part inside the
  // volume and memsets for the padding on either side.
  const int64_t rows = T * C * d * h;
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t y = r % h, z = (r / h) % d, c = (r / (h * d)) % C, t = r / (h * d * C);
      const int64_t vz = org[t * 3] + z, vy = org[t * 3 + 1] + y, ox = org[t * 3 + 2];
      char* out = dst + r * w * es;
      if (vz < 0 || vz >= D || vy < 0 || vy >= H) {
        std::memset(out, 0, w * es);
        continue;
      }
      const int64_t x_lo = std::min(std::max<int64_t>(-ox, 0), w);
      const int64_t x_hi = std::max(x_lo, std::min(W - ox, w));
      std::memset(out, 0, x_lo * es);
      if (x_hi > x_lo)
        std::memcpy(out + x_lo * es, src + (((c * D + vz) * H + vy) * W + ox + x_lo) * es, (x_hi - x_lo) * es);
      std::memset(out + x_hi * es, 0, (w - x_hi) * es);
    }
  });
  return tiles;
}

// Calls fn(t, z, tz, ys, xs) for every tile t whose kept region meets output slice z,
// in tile order, with the clipped y/x spans in volume coordinates. Work is split
// by output slice so that where kept regions overlap, later tiles still win
// without locks: a slice is written by one thread, tile after tile.
template <typename Fn>
void for_each_kept_row(const int64_t* org, int64_t T, int64_t D, int64_t H, int64_t W,
                       const std::array<int64_t, 3>& ko, const std::array<int64_t, 3>& ks, Fn fn) {
  at::parallel_for(0, D, 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t oz = org[t * 3], oy = org[t * 3 + 1], ox = org[t * 3 + 2];
        const Span zs = clip_span(oz + ko[0], ks[0], D);
        if (z < zs.lo || z >= zs.hi) continue;
        const Span ys = clip_span(oy + ko[1], ks[1], H), xs = clip_span(ox + ko[2], ks[2], W);
        if (ys.empty() || xs.empty()) continue;
        fn(t, z, z - oz, ys, xs, oy, ox);
      }
    }
  });
}

void stitch_tiles_cpu(const Tensor& out, const Tensor& tiles_in, const Tensor& origins, c10::IntArrayRef keep_offset,
                      c10::IntArrayRef keep_size) {
  const char* op = "stitch_tiles_";
  check_stitch_args(out, 4, tiles_in, out.dim() == 4 ? out.size(0) : -1, keep_offset, keep_size, op);
  Tensor O = checked_origins(origins, tiles_in.size(0), at::kCPU, op);
  // Tiles are cast to the output's dtype (as the reference does); the volume is never copied
  // unless it is not contiguous.
  Tensor tiles = tiles_in.to(out.scalar_type()).contiguous();
  Tensor target = out.is_contiguous() ? out : out.contiguous();
  const auto ko = as_triple(keep_offset, op, "keep_offset");
  const auto ks = as_triple(keep_size, op, "keep_size");
  const int64_t T = tiles.size(0), K = tiles.size(1), d = tiles.size(2), h = tiles.size(3), w = tiles.size(4);
  const int64_t D = target.size(1), H = target.size(2), W = target.size(3);
  const int64_t es = target.element_size();
  const char* src = static_cast<const char*>(tiles.const_data_ptr());
  char* dst = static_cast<char*>(target.mutable_data_ptr());
  for_each_kept_row(O.const_data_ptr<int64_t>(), T, D, H, W, ko, ks,
                    [&](int64_t t, int64_t z, int64_t tz, Span ys, Span xs, int64_t oy, int64_t ox) {
                      for (int64_t k = 0; k < K; ++k) {
                        for (int64_t y = ys.lo; y < ys.hi; ++y) {
                          const int64_t from = (((t * K + k) * d + tz) * h + (y - oy)) * w + (xs.lo - ox);
                          const int64_t to = ((k * D + z) * H + y) * W + xs.lo;
                          std::memcpy(dst + to * es, src + from * es, (xs.hi - xs.lo) * es);
                        }
                      }
                    });
  if (!target.is_same(out)) out.copy_(target);
}

template <typename T>
inline bool argmax_takes(T candidate, T best) {
  // torch.argmax semantics: NaN is the maximum, ties keep the first index.
  const float v = static_cast<float>(candidate), b = static_cast<float>(best);
  return !std::isnan(b) && (v > b || std::isnan(v));
}
inline bool argmax_takes(double v, double b) { return !std::isnan(b) && (v > b || std::isnan(v)); }

void stitch_tiles_argmax_cpu(const Tensor& labels, const Tensor& tiles_in, const Tensor& origins,
                             c10::IntArrayRef keep_offset, c10::IntArrayRef keep_size,
                             const std::optional<Tensor>& label_map) {
  const char* op = "stitch_tiles_argmax_";
  check_stitch_args(labels, 3, tiles_in, -1, keep_offset, keep_size, op);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kByte, op, ": labels must be uint8, got ", labels.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(tiles_in.scalar_type()), op, ": tiles must be floating point, got ",
                   tiles_in.scalar_type());
  const int64_t K = tiles_in.size(1);
  Tensor lut;
  if (label_map.has_value() && label_map->defined()) {
    TORCH_CHECK_VALUE(label_map->dim() == 1 && label_map->size(0) == K, op, ": label_map must be (K,) = (", K,
                      ",), got ", label_map->sizes());
    lut = label_map->to(at::kCPU, at::kByte).contiguous();
  } else {
    TORCH_CHECK_VALUE(K <= 256, op, ": without a label_map the class index must fit uint8, got K = ", K);
  }
  Tensor O = checked_origins(origins, tiles_in.size(0), at::kCPU, op);
  Tensor tiles = tiles_in.contiguous();
  Tensor target = labels.is_contiguous() ? labels : labels.contiguous();
  const auto ko = as_triple(keep_offset, op, "keep_offset");
  const auto ks = as_triple(keep_size, op, "keep_size");
  const int64_t T = tiles.size(0), d = tiles.size(2), h = tiles.size(3), w = tiles.size(4);
  const int64_t D = target.size(0), H = target.size(1), W = target.size(2);
  const int64_t channel_stride = d * h * w;
  uint8_t* dst = target.mutable_data_ptr<uint8_t>();
  const uint8_t* map = lut.defined() ? lut.const_data_ptr<uint8_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tiles.scalar_type(), "omkit_stitch_argmax_cpu", [&] {
    const scalar_t* src = tiles.const_data_ptr<scalar_t>();
    for_each_kept_row(O.const_data_ptr<int64_t>(), T, D, H, W, ko, ks,
                      [&](int64_t t, int64_t z, int64_t tz, Span ys, Span xs, int64_t oy, int64_t ox) {
                        for (int64_t y = ys.lo; y < ys.hi; ++y) {
                          const scalar_t* row = src + ((t * K * d + tz) * h + (y - oy)) * w;
                          uint8_t* out_row = dst + (z * H + y) * W;
                          for (int64_t x = xs.lo; x < xs.hi; ++x) {
                            const scalar_t* v = row + (x - ox);
                            scalar_t best = v[0];
                            int64_t arg = 0;
                            for (int64_t k = 1; k < K; ++k) {
                              if (argmax_takes(v[k * channel_stride], best)) {
                                best = v[k * channel_stride];
                                arg = k;
                              }
                            }
                            out_row[x] = map ? map[arg] : static_cast<uint8_t>(arg);
                          }
                        }
                      });
  });
  if (!target.is_same(labels)) labels.copy_(target);
}

}  // namespace

TORCH_LIBRARY_IMPL(omkit, CPU, m) {
  m.impl("gather_tiles", &gather_tiles_cpu);
  m.impl("stitch_tiles_", &stitch_tiles_cpu);
  m.impl("stitch_tiles_argmax_", &stitch_tiles_argmax_cpu);
}

}  // namespace omkit
