// CPU passes of the window-consistent ops (at::parallel_for over lines of voxels).
//
// window_sums: separable window sums, one axis at a time (W, then H, then D). Along an axis,
// block k's window is [lo_k, hi_k) and both ends only move forward with k, so one line costs
// two running sums (one trailing each end): every element is read at most twice, whatever the
// windows' overlap. The first pass reads the feature map (and the guidance); the later ones
// read maps already reduced along W, about block_W / 1 times smaller. Running sums are kept in
// double, so their difference keeps float32 accuracy over long lines.
//
// block_mix: each row of W voxels is cut into its blocks; within a block the weights (K x C,
// with the block's attention folded in) are fixed, so it is the per-sample 1x1x1 mix of the
// CGA kernels applied to a short run of voxels.
//
// window_sums_backward: per line of W voxels, the blocks holding each voxel are a box of the block
// grid (one range per axis), so each voxel's gradient is eight terms of the grid's prefix sums.
//
// block_mix_backward: one task per (sample, block), which owns its voxels' input gradient and its
// weight gradients (no atomics, no reduction across tasks); rows of the block are cut into runs as
// in block_mix.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <vector>

#include "../window_common.h"
#include "cpu_simd.h"

namespace omkit {
namespace cpu {
namespace {

using c10::BFloat16;

// Running-sum window sums of one line (`len` elements at `stride`) into out[k * out_stride].
template <typename In, typename Out, typename Load>
inline void line_window_sums(const In* line, int64_t stride, Out* out, int64_t out_stride, const WindowGeometry& g,
                             int axis, Load load) {
  double below_lo = 0.0, below_hi = 0.0;
  int64_t lo_pos = 0, hi_pos = 0;
  for (int64_t k = 0; k < g.blocks[axis]; ++k) {
    const int64_t lo = g.window_lo(axis, k), hi = g.window_hi(axis, k);
    for (; hi_pos < hi; ++hi_pos) below_hi += load(line, hi_pos * stride);
    for (; lo_pos < lo; ++lo_pos) below_lo += load(line, lo_pos * stride);
    out[k * out_stride] = static_cast<Out>(below_hi - below_lo);
  }
}

// First pass, along W: (B, C, D, H, W) [* P] -> (B, R, C, D, H, nW).
template <typename T>
void sums_along_w(const T* x, const T* P, Acc<T>* out, int64_t B, int64_t C, const WindowGeometry& g) {
  const int64_t D = g.size[0], H = g.size[1], W = g.size[2], nW = g.blocks[2];
  const int64_t R = P ? 2 : 1, lines = B * C * D * H;
  at::parallel_for(0, lines, std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1)), [&](int64_t l0, int64_t l1) {
    for (int64_t line = l0; line < l1; ++line) {
      const int64_t b = line / (C * D * H), c = (line / (D * H)) % C, dh = line % (D * H);
      const T* xl = x + line * W;
      Acc<T>* o_all = out + (((b * R + R - 1) * C + c) * D * H + dh) * nW;  // row "sum x" (the last)
      line_window_sums(xl, 1, o_all, 1, g, 2, [](const T* v, int64_t i) { return static_cast<double>(v[i]); });
      if (P) {
        const T* pl = P + (b * D * H + dh) * W;
        Acc<T>* o_p = out + (((b * R) * C + c) * D * H + dh) * nW;  // row "sum P x"
        line_window_sums(xl, 1, o_p, 1, g, 2, [pl](const T* v, int64_t i) {
          return static_cast<double>(v[i]) * static_cast<double>(pl[i]);
        });
      }
    }
  });
}

// A later pass along one axis of a map viewed as (outer, L, inner) -> (outer, blocks, inner).
template <typename A>
void sums_along(const A* in, A* out, int64_t outer, int64_t L, int64_t inner, const WindowGeometry& g, int axis) {
  const int64_t nb = g.blocks[axis];
  at::parallel_for(0, outer * inner, std::max<int64_t>(1, 2048 / std::max<int64_t>(L, 1)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o = t / inner, i = t % inner;
      line_window_sums(in + o * L * inner + i, inner, out + o * nb * inner + i, inner, g, axis,
                       [](const A* v, int64_t j) { return static_cast<double>(v[j]); });
    }
  });
}

#define OMKIT_DISPATCH_WINDOW_TYPES(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace

Tensor window_sums_cpu(const Tensor& x, const Tensor& P, const WindowGeometry& g) {
  const int64_t B = x.size(0), C = x.size(1), R = P.defined() ? 2 : 1;
  const int64_t D = g.size[0], H = g.size[1];
  const auto acc = x.options().dtype(accumulate_type(x.scalar_type()));
  Tensor along_w = at::empty({B, R, C, D, H, g.blocks[2]}, acc);
  OMKIT_DISPATCH_WINDOW_TYPES(x.scalar_type(), "omkit_window_sums_cpu", [&] {
    sums_along_w<scalar_t>(x.const_data_ptr<scalar_t>(), P.defined() ? P.const_data_ptr<scalar_t>() : nullptr,
                           along_w.mutable_data_ptr<Acc<scalar_t>>(), B, C, g);
  });
  Tensor along_h = at::empty({B, R, C, D, g.blocks[1], g.blocks[2]}, acc);
  Tensor out = at::empty({B, R, C, g.blocks[0], g.blocks[1], g.blocks[2]}, acc);
  AT_DISPATCH_FLOATING_TYPES(along_w.scalar_type(), "omkit_window_sums_cpu_axes", [&] {
    sums_along<scalar_t>(along_w.const_data_ptr<scalar_t>(), along_h.mutable_data_ptr<scalar_t>(), B * R * C * D, H,
                         g.blocks[2], g, 1);
    sums_along<scalar_t>(along_h.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), B * R * C, D,
                         g.blocks[1] * g.blocks[2], g, 0);
  });
  return out;
}

namespace {

template <typename T>
void block_mix_rows(const T* x, const T* P, T* out, const Acc<T>* M0, const Acc<T>* M1, const Acc<T>* c0,
                    const Acc<T>* c1, int64_t B, int64_t C, int64_t K, const WindowGeometry& g) {
  using A = Acc<T>;
  const int64_t D = g.size[0], H = g.size[1], W = g.size[2], N = D * H * W;
  const int64_t rows = B * D * H;
  at::parallel_for(0, rows, std::max<int64_t>(1, 1024 / std::max<int64_t>(W * C, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<A> acc0(K * W), acc1(P ? K * W : 0);
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t b = row / (D * H), d = (row / H) % D, h = row % H;
      const int64_t base = d * H * W + h * W;
      T* o = out + b * K * N + base;
      if (d < g.origin[0] || h < g.origin[1]) {
        for (int64_t k = 0; k < K; ++k) std::fill(o + k * N, o + k * N + W, T(0));
        continue;
      }
      const int64_t bd = (d - g.origin[0]) / g.block[0], bh = (h - g.origin[1]) / g.block[1];
      for (int64_t k = 0; k < K; ++k) std::fill(o + k * N, o + k * N + std::min(W, g.origin[2]), T(0));
      for (int64_t bw = 0; bw < g.blocks[2]; ++bw) {
        const int64_t w0 = g.origin[2] + bw * g.block[2], w1 = std::min(W, w0 + g.block[2]), len = w1 - w0;
        const int64_t blk = (bd * g.blocks[1] + bh) * g.blocks[2] + bw;
        const A* m0 = M0 + (b * g.num_blocks() + blk) * K * C;
        const A* m1 = P ? M1 + (b * g.num_blocks() + blk) * K * C : nullptr;
        for (int64_t k = 0; k < K; ++k) {
          A* a0 = acc0.data() + k * W;
          for (int64_t n = 0; n < len; ++n) a0[n] = c0[k];
          if (P) {
            A* a1 = acc1.data() + k * W;
            for (int64_t n = 0; n < len; ++n) a1[n] = c1[k];
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const T* xr = x + (b * C + c) * N + base + w0;
          for (int64_t k = 0; k < K; ++k) {
            const A w_0 = m0[k * C + c];
            A* a0 = acc0.data() + k * W;
            OMKIT_SIMD
            for (int64_t n = 0; n < len; ++n) a0[n] += w_0 * static_cast<A>(xr[n]);
            if (P) {
              const A w_1 = m1[k * C + c];
              A* a1 = acc1.data() + k * W;
              OMKIT_SIMD
              for (int64_t n = 0; n < len; ++n) a1[n] += w_1 * static_cast<A>(xr[n]);
            }
          }
        }
        const T* p = P ? P + b * N + base + w0 : nullptr;
        for (int64_t k = 0; k < K; ++k) {
          const A* a0 = acc0.data() + k * W;
          T* ok = o + k * N + w0;
          if (P) {
            const A* a1 = acc1.data() + k * W;
            for (int64_t n = 0; n < len; ++n) ok[n] = static_cast<T>(a0[n] + static_cast<A>(p[n]) * a1[n]);
          } else {
            for (int64_t n = 0; n < len; ++n) ok[n] = static_cast<T>(a0[n]);
          }
        }
      }
    }
  });
}

}  // namespace

Tensor block_mix_cpu(const Tensor& x, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& c0,
                     const Tensor& c1, const WindowGeometry& g) {
  const int64_t B = x.size(0), C = x.size(1), K = M0.size(2);
  Tensor out = at::empty({B, K, g.size[0], g.size[1], g.size[2]}, x.options());
  OMKIT_DISPATCH_WINDOW_TYPES(x.scalar_type(), "omkit_block_mix_cpu", [&] {
    using A = Acc<scalar_t>;
    const bool guided = P.defined();
    block_mix_rows<scalar_t>(x.const_data_ptr<scalar_t>(), guided ? P.const_data_ptr<scalar_t>() : nullptr,
                             out.mutable_data_ptr<scalar_t>(), M0.const_data_ptr<A>(),
                             guided ? M1.const_data_ptr<A>() : nullptr, c0.const_data_ptr<A>(),
                             guided ? c1.const_data_ptr<A>() : nullptr, B, C, K, g);
  });
  return out;
}

namespace {

// The blocks holding each voxel along one axis: [first[v], last[v]).
struct HoldingRanges {
  std::vector<int64_t> first, last;
  HoldingRanges(const WindowGeometry& g, int axis) : first(g.size[axis]), last(g.size[axis]) {
    for (int64_t v = 0; v < g.size[axis]; ++v) g.blocks_holding(axis, v, first[v], last[v]);
  }
};

// Sum over the box [d0, d1) x [h0, h1) x [w0, w1) of a grid's exclusive prefix sums s
// ((nD + 1) x (nH + 1) x (nW + 1), strides sd, sh, 1).
inline double box_sum(const double* s, int64_t sd, int64_t sh, int64_t d0, int64_t d1, int64_t h0, int64_t h1,
                      int64_t w0, int64_t w1) {
  const double* a = s + d1 * sd;
  const double* b = s + d0 * sd;
  return (a[h1 * sh + w1] - a[h0 * sh + w1] - a[h1 * sh + w0] + a[h0 * sh + w0]) -
         (b[h1 * sh + w1] - b[h0 * sh + w1] - b[h1 * sh + w0] + b[h0 * sh + w0]);
}

template <typename T>
void window_scatter_lines(const double* S, const T* P, T* dx, int64_t B, int64_t R, int64_t C,
                          const WindowGeometry& g) {
  const int64_t D = g.size[0], H = g.size[1], W = g.size[2];
  const int64_t sh = g.blocks[2] + 1, sd = (g.blocks[1] + 1) * sh, grid = (g.blocks[0] + 1) * sd;
  const HoldingRanges rd(g, 0), rh(g, 1), rw(g, 2);
  const int64_t lines = B * C * D * H;
  at::parallel_for(0, lines, std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1)), [&](int64_t l0, int64_t l1) {
    for (int64_t line = l0; line < l1; ++line) {
      const int64_t b = line / (C * D * H), c = (line / (D * H)) % C, dh = line % (D * H);
      const int64_t d = dh / H, h = dh % H;
      const double* s_plain = S + ((b * R + R - 1) * C + c) * grid;  // row "sum x" (the last)
      const double* s_guided = S + ((b * R) * C + c) * grid;         // row "sum P x" when R = 2
      const T* p = P ? P + (b * D * H + dh) * W : nullptr;
      T* out = dx + line * W;
      const int64_t d0 = rd.first[d], d1 = rd.last[d], h0 = rh.first[h], h1 = rh.last[h];
      for (int64_t w = 0; w < W; ++w) {
        const int64_t w0 = rw.first[w], w1 = rw.last[w];
        double v = box_sum(s_plain, sd, sh, d0, d1, h0, h1, w0, w1);
        if (p) v += static_cast<double>(p[w]) * box_sum(s_guided, sd, sh, d0, d1, h0, h1, w0, w1);
        out[w] = static_cast<T>(v);
      }
    }
  });
}

}  // namespace

Tensor window_sums_backward_cpu(const Tensor& S, const Tensor& P, const WindowGeometry& g, at::ScalarType dtype) {
  const int64_t B = S.size(0), R = S.size(1), C = S.size(2);
  Tensor dx = at::empty({B, C, g.size[0], g.size[1], g.size[2]}, S.options().dtype(dtype));
  OMKIT_DISPATCH_WINDOW_TYPES(dtype, "omkit_window_sums_backward_cpu", [&] {
    window_scatter_lines<scalar_t>(S.const_data_ptr<double>(), P.defined() ? P.const_data_ptr<scalar_t>() : nullptr,
                                   dx.mutable_data_ptr<scalar_t>(), B, R, C, g);
  });
  return dx;
}

namespace {

// One task per (sample, block): dx over the block's voxels, the block's dM0/dM1 (K x C) and its
// share of dc0/dc1 (K), summed over blocks afterwards.
template <typename T>
void block_mix_backward_blocks(const T* G, const T* x, const T* P, const Acc<T>* M0, const Acc<T>* M1, T* dx,
                               Acc<T>* dM0, Acc<T>* dM1, Acc<T>* dc0, Acc<T>* dc1, int64_t B, int64_t C, int64_t K,
                               const WindowGeometry& g) {
  using A = Acc<T>;
  const int64_t D = g.size[0], H = g.size[1], W = g.size[2], N = D * H * W, nb = g.num_blocks();
  at::parallel_for(0, B * nb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> gbuf(K * W), pgbuf(P ? K * W : 0), xbuf(W), a0(W), a1(P ? W : 0);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / nb, blk = task % nb;
      const int64_t bd = blk / (g.blocks[1] * g.blocks[2]), bh = (blk / g.blocks[2]) % g.blocks[1],
                    bw = blk % g.blocks[2];
      const int64_t d_lo = g.origin[0] + bd * g.block[0], d_hi = std::min(D, d_lo + g.block[0]);
      const int64_t h_lo = g.origin[1] + bh * g.block[1], h_hi = std::min(H, h_lo + g.block[1]);
      const int64_t w0 = g.origin[2] + bw * g.block[2], len = std::min(W, w0 + g.block[2]) - w0;
      const A* m0 = M0 + task * K * C;
      const A* m1 = P ? M1 + task * K * C : nullptr;
      A* dm0 = dM0 + task * K * C;
      A* dm1 = P ? dM1 + task * K * C : nullptr;
      A* db0 = dc0 + task * K;
      A* db1 = P ? dc1 + task * K : nullptr;
      for (int64_t d = d_lo; d < d_hi; ++d) {
        for (int64_t h = h_lo; h < h_hi; ++h) {
          const int64_t base = (d * H + h) * W + w0;
          const T* p = P ? P + b * N + base : nullptr;
          for (int64_t k = 0; k < K; ++k) {
            const T* gk = G + (b * K + k) * N + base;
            A* gb = gbuf.data() + k * W;
            A s0 = 0;
            for (int64_t n = 0; n < len; ++n) {
              gb[n] = static_cast<A>(gk[n]);
              s0 += gb[n];
            }
            db0[k] += s0;
            if (p) {
              A* pg = pgbuf.data() + k * W;
              A s1 = 0;
              for (int64_t n = 0; n < len; ++n) {
                pg[n] = static_cast<A>(p[n]) * gb[n];
                s1 += pg[n];
              }
              db1[k] += s1;
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            const T* xc = x + (b * C + c) * N + base;
            for (int64_t n = 0; n < len; ++n) {
              xbuf[n] = static_cast<A>(xc[n]);
              a0[n] = 0;
            }
            if (p) std::fill(a1.begin(), a1.begin() + len, A(0));
            for (int64_t k = 0; k < K; ++k) {
              const A* gb = gbuf.data() + k * W;
              const A w_0 = m0[k * C + c];
              A s0 = 0;
              OMKIT_SIMD
              for (int64_t n = 0; n < len; ++n) a0[n] += w_0 * gb[n];
              for (int64_t n = 0; n < len; ++n) s0 += gb[n] * xbuf[n];
              dm0[k * C + c] += s0;
              if (p) {
                const A* pg = pgbuf.data() + k * W;
                const A w_1 = m1[k * C + c];
                A s1 = 0;
                OMKIT_SIMD
                for (int64_t n = 0; n < len; ++n) a1[n] += w_1 * gb[n];
                for (int64_t n = 0; n < len; ++n) s1 += pg[n] * xbuf[n];
                dm1[k * C + c] += s1;
              }
            }
            T* out = dx + (b * C + c) * N + base;
            if (p) {
              for (int64_t n = 0; n < len; ++n) out[n] = static_cast<T>(a0[n] + static_cast<A>(p[n]) * a1[n]);
            } else {
              for (int64_t n = 0; n < len; ++n) out[n] = static_cast<T>(a0[n]);
            }
          }
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> block_mix_backward_cpu(const Tensor& G, const Tensor& x,
                                                                          const Tensor& P, const Tensor& M0,
                                                                          const Tensor& M1, const WindowGeometry& g) {
  const int64_t B = x.size(0), C = x.size(1), K = M0.size(2), nb = g.num_blocks();
  const bool guided = P.defined();
  const bool before_origin = g.origin[0] > 0 || g.origin[1] > 0 || g.origin[2] > 0;
  // Voxels before the origin belong to no block: their gradient is zero; every other voxel is written.
  Tensor dx = before_origin ? at::zeros(x.sizes(), x.options()) : at::empty(x.sizes(), x.options());
  const auto acc = M0.options();
  Tensor dM0 = at::zeros({B, nb, K, C}, acc), dc0 = at::zeros({B, nb, K}, acc);
  Tensor dM1 = guided ? at::zeros({B, nb, K, C}, acc) : Tensor();
  Tensor dc1 = guided ? at::zeros({B, nb, K}, acc) : Tensor();
  OMKIT_DISPATCH_WINDOW_TYPES(x.scalar_type(), "omkit_block_mix_backward_cpu", [&] {
    using A = Acc<scalar_t>;
    block_mix_backward_blocks<scalar_t>(
        G.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), guided ? P.const_data_ptr<scalar_t>() : nullptr,
        M0.const_data_ptr<A>(), guided ? M1.const_data_ptr<A>() : nullptr, dx.mutable_data_ptr<scalar_t>(),
        dM0.mutable_data_ptr<A>(), guided ? dM1.mutable_data_ptr<A>() : nullptr, dc0.mutable_data_ptr<A>(),
        guided ? dc1.mutable_data_ptr<A>() : nullptr, B, C, K, g);
  });
  return {dx, dM0, dM1, dc0.sum(1), guided ? dc1.sum(1) : Tensor()};
}

// Every pass is written for these dtypes (half types accumulated in float32); omkit/ops/window.py
// says the same (WINDOW_DTYPES), and the ops check it before any pass runs.
constexpr at::ScalarType kWindowDtypes[] = {at::kFloat, at::kDouble, at::kBFloat16};

extern const WindowKernels kWindowKernels{"CPU", kWindowDtypes, window_sums_cpu, block_mix_cpu,
                                          window_sums_backward_cpu, block_mix_backward_cpu};

}  // namespace cpu
}  // namespace omkit
