// CPU kernels of the tile ops. Gather and stitch only move bytes, so they run
// on raw element bytes (any dtype) with memcpy/memset of whole x-runs; the
// argmax stitch reads K values per voxel and writes one byte.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>

#include "../tiles_common.h"

namespace omkit {
namespace {

void gather_tiles_cpu(const Tensor& V, const Tensor& O, const Tensor& tiles) {
  const int64_t T = O.size(0), C = V.size(0), D = V.size(1), H = V.size(2), W = V.size(3);
  const int64_t d = tiles.size(2), h = tiles.size(3), w = tiles.size(4);
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
}

// Calls fn(t, z, tz, ys, xs, oy, ox) for every tile t whose kept region meets output
// slice z, in tile order, with the clipped y/x spans in volume coordinates. Work is
// split by output slice so that where kept regions overlap, later tiles still win
// without locks: a slice is written by one thread, tile after tile.
template <typename Fn>
void for_each_kept_row(const int64_t* org, const KeptGeometry& g, Fn fn) {
  at::parallel_for(0, g.D, 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z) {
      for (int64_t t = 0; t < g.T; ++t) {
        Span ys, xs;
        if (!kept_rows(g, org + t * 3, z, &ys, &xs)) continue;
        fn(t, z, z - org[t * 3], ys, xs, org[t * 3 + 1], org[t * 3 + 2]);
      }
    }
  });
}

void stitch_tiles_cpu(const Tensor& target, const Tensor& tiles, const Tensor& O, const KeptGeometry& g) {
  const int64_t K = tiles.size(1), d = g.d, h = g.h, w = g.w;
  const int64_t D = g.D, H = g.H, W = g.W;
  const int64_t es = target.element_size();
  const char* src = static_cast<const char*>(tiles.const_data_ptr());
  char* dst = static_cast<char*>(target.mutable_data_ptr());
  for_each_kept_row(O.const_data_ptr<int64_t>(), g,
                    [&](int64_t t, int64_t z, int64_t tz, Span ys, Span xs, int64_t oy, int64_t ox) {
                      for (int64_t k = 0; k < K; ++k) {
                        for (int64_t y = ys.lo; y < ys.hi; ++y) {
                          const int64_t from = (((t * K + k) * d + tz) * h + (y - oy)) * w + (xs.lo - ox);
                          const int64_t to = ((k * D + z) * H + y) * W + xs.lo;
                          std::memcpy(dst + to * es, src + from * es, (xs.hi - xs.lo) * es);
                        }
                      }
                    });
}

template <typename T>
inline bool argmax_takes(T candidate, T best) {
  // torch.argmax semantics: NaN is the maximum, ties keep the first index.
  const float v = static_cast<float>(candidate), b = static_cast<float>(best);
  return !std::isnan(b) && (v > b || std::isnan(v));
}
inline bool argmax_takes(double v, double b) { return !std::isnan(b) && (v > b || std::isnan(v)); }

void stitch_tiles_argmax_cpu(const Tensor& target, const Tensor& tiles, const Tensor& O, const Tensor& lut,
                             const KeptGeometry& g) {
  const int64_t K = tiles.size(1), d = g.d, h = g.h, w = g.w;
  const int64_t H = g.H, W = g.W;
  const int64_t channel_stride = d * h * w;
  uint8_t* dst = target.mutable_data_ptr<uint8_t>();
  const uint8_t* map = lut.defined() ? lut.const_data_ptr<uint8_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tiles.scalar_type(), "omkit_stitch_argmax_cpu", [&] {
    const scalar_t* src = tiles.const_data_ptr<scalar_t>();
    for_each_kept_row(O.const_data_ptr<int64_t>(), g,
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
}

}  // namespace

namespace cpu {
extern const TileKernels kTileKernels{gather_tiles_cpu, stitch_tiles_cpu, stitch_tiles_argmax_cpu};
}  // namespace cpu

}  // namespace omkit
