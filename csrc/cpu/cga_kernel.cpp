// CPU kernels of the CGA ops (OpenMP through at::parallel_for).
//
// Every kernel streams the feature map F (B, C, N) row by row: a row is one
// channel of one sample, N voxels contiguous. The per-sample 1x1x1 weights
// (K x C, with m already folded in) are tiny and stay in L1, so each pass
// costs one read of F (and one write of dF in the backward) plus K-channel
// maps: the memory floor of the op, with no U_t/U_n/S_t/S_n intermediates.
//
// Dtypes: float32 and float64 run in their own precision; bfloat16 (what
// torch.autocast gives on a CPU) is read and written as bfloat16 and accumulated
// in float32, as the CUDA kernels do for their half types: the folded weights,
// the reductions and the per-block scratch rows are float32 (Acc<T>), and every
// element is converted once, when it is loaded or stored.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../cga_common.h"
#include "cpu_simd.h"

namespace omkit {
namespace {

using c10::BFloat16;

// The dispatch over the dtypes of kCgaDtypes below.
#define OMKIT_DISPATCH_CGA_TYPES(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Voxels per work item: the K accumulator rows of that many voxels (2 x K x 256
// values) stay in L1 while the C feature rows stream past them.
constexpr int64_t kVoxelBlock = 256;
// Voxels summed in the native dtype before the partial sum is added in double:
// keeps float32 pooling accurate over whole volumes without slowing the SIMD loop.
constexpr int64_t kPoolBlock = 2048;

// A fresh output of feature-map size (e.g. dF, 126 MB at 60 patches) is mostly
// page faults on its first write: 4 KiB pages cost about as much as the whole
// kernel. Where transparent huge pages are on "madvise", ask for them on the
// 2 MiB-aligned interior of large outputs before any page is touched (a hint:
// it changes nothing where THP is off or the range is already backed).
Tensor empty_output(c10::IntArrayRef sizes, const at::TensorOptions& options) {
  Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + out.nbytes();
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = end & ~(kHugePage - 1);
  if (last > first + kHugePage) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return out;
}

// ---- pooling: z_t = F^T Pt, z_n = F^T (1 - Pt) -------------------------------------------

template <typename T>
OMKIT_ALWAYS_INLINE void pool_rows_impl(const T* F, const T* P, Acc<T>* z, int64_t C, int64_t N, int64_t row_begin,
                                        int64_t row_end) {
  using A = Acc<T>;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / C, c = row % C;
    const T* f = F + row * N;
    const T* p = P + b * N;
    double z_t = 0.0, z_n = 0.0;
    for (int64_t n0 = 0; n0 < N; n0 += kPoolBlock) {
      const int64_t n1 = std::min(N, n0 + kPoolBlock);
      A s_t = 0, s_n = 0;
      // Both categories from the same load of f: F is read exactly once.
      OMKIT_SIMD_REDUCTION2(s_t, s_n)
      for (int64_t n = n0; n < n1; ++n) {
        const A fv = static_cast<A>(f[n]), pv = static_cast<A>(p[n]);
        s_t += fv * pv;
        s_n += fv * (A(1) - pv);
      }
      z_t += s_t;
      z_n += s_n;
    }
    z[(b * 2 + 0) * C + c] = static_cast<A>(z_t);
    z[(b * 2 + 1) * C + c] = static_cast<A>(z_n);
  }
}

#define OMKIT_POOL_ROWS_CLONE(T)                                                                              \
  OMKIT_CPU_CLONES void pool_rows(const T* F, const T* P, Acc<T>* z, int64_t C, int64_t N, int64_t r0,        \
                                  int64_t r1) {                                                               \
    pool_rows_impl(F, P, z, C, N, r0, r1);                                                                    \
  }
OMKIT_POOL_ROWS_CLONE(float)
OMKIT_POOL_ROWS_CLONE(double)
OMKIT_POOL_ROWS_CLONE(BFloat16)
#undef OMKIT_POOL_ROWS_CLONE

Tensor pool_reduce_cpu(const Tensor& F, const Tensor& P) {
  const int64_t B = F.size(0), C = F.size(1), N = F.size(2);
  Tensor z = at::empty({B, 2, C}, F.options().dtype(accumulate_type(F.scalar_type())));
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N, 1));
  OMKIT_DISPATCH_CGA_TYPES(F.scalar_type(), "omkit_pool_reduce_cpu", [&] {
    const scalar_t* f = F.const_data_ptr<scalar_t>();
    const scalar_t* p = P.const_data_ptr<scalar_t>();
    Acc<scalar_t>* zp = z.mutable_data_ptr<Acc<scalar_t>>();
    at::parallel_for(0, B * C, grain, [&](int64_t r0, int64_t r1) { pool_rows(f, p, zp, C, N, r0, r1); });
  });
  return z;
}

// ---- pooling backward: dF = base + slope * Pt ---------------------------------------------

template <typename T>
OMKIT_ALWAYS_INLINE void expand_rows_impl(const Acc<T>* base, const Acc<T>* slope, const T* P, T* dF, int64_t C,
                                          int64_t N, int64_t row_begin, int64_t row_end) {
  using A = Acc<T>;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const A a = base[row], s = slope[row];
    const T* p = P + (row / C) * N;
    T* d = dF + row * N;
    OMKIT_SIMD
    for (int64_t n = 0; n < N; ++n) d[n] = static_cast<T>(a + s * static_cast<A>(p[n]));
  }
}

#define OMKIT_EXPAND_ROWS_CLONE(T)                                                                            \
  OMKIT_CPU_CLONES void expand_rows(const Acc<T>* a, const Acc<T>* s, const T* P, T* d, int64_t C, int64_t N, \
                                    int64_t r0, int64_t r1) {                                                 \
    expand_rows_impl(a, s, P, d, C, N, r0, r1);                                                               \
  }
OMKIT_EXPAND_ROWS_CLONE(float)
OMKIT_EXPAND_ROWS_CLONE(double)
OMKIT_EXPAND_ROWS_CLONE(BFloat16)
#undef OMKIT_EXPAND_ROWS_CLONE

Tensor pool_expand_cpu(const Tensor& base, const Tensor& slope, const Tensor& P, at::ScalarType dtype) {
  const int64_t B = base.size(0), C = base.size(1), N = P.size(1);
  Tensor dF = empty_output({B, C, N}, P.options().dtype(dtype));
  const auto acc = accumulate_type(dtype);
  Tensor a = base.to(acc).contiguous(), s = slope.to(acc).contiguous();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N, 1));
  OMKIT_DISPATCH_CGA_TYPES(dtype, "omkit_pool_expand_cpu", [&] {
    const Acc<scalar_t>* ap = a.const_data_ptr<Acc<scalar_t>>();
    const Acc<scalar_t>* sp = s.const_data_ptr<Acc<scalar_t>>();
    const scalar_t* pp = P.const_data_ptr<scalar_t>();
    scalar_t* dp = dF.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, grain, [&](int64_t r0, int64_t r1) { expand_rows(ap, sp, pp, dp, C, N, r0, r1); });
  });
  return dF;
}

// ---- recalibrate + CompSeg forward: out = M0 F + c0 + Pt (M1 F + c1) ------------------------

// One block of `len` voxels of one sample. acc0/acc1 are K x kVoxelBlock scratch rows.
template <typename T, bool kGuided>
OMKIT_ALWAYS_INLINE void mix_forward_block_impl(const T* f, const T* p, T* out, const Acc<T>* M0, const Acc<T>* M1,
                                                const Acc<T>* c0, const Acc<T>* c1, int64_t C, int64_t K, int64_t N,
                                                int64_t len, Acc<T>* acc0, Acc<T>* acc1) {
  using A = Acc<T>;
  for (int64_t k = 0; k < K; ++k) {
    A* a0 = acc0 + k * kVoxelBlock;
    A* a1 = acc1 + k * kVoxelBlock;
    OMKIT_SIMD
    for (int64_t n = 0; n < len; ++n) {
      a0[n] = c0[k];
      if (kGuided) a1[n] = c1[k];
    }
  }
  // Each feature row is loaded once and applied to all K outputs while it is in L1.
  for (int64_t c = 0; c < C; ++c) {
    const T* fr = f + c * N;
    for (int64_t k = 0; k < K; ++k) {
      const A w0 = M0[k * C + c];
      A* a0 = acc0 + k * kVoxelBlock;
      if (kGuided) {
        const A w1 = M1[k * C + c];
        A* a1 = acc1 + k * kVoxelBlock;
        OMKIT_SIMD
        for (int64_t n = 0; n < len; ++n) {
          const A fv = static_cast<A>(fr[n]);
          a0[n] += w0 * fv;
          a1[n] += w1 * fv;
        }
      } else {
        OMKIT_SIMD
        for (int64_t n = 0; n < len; ++n) a0[n] += w0 * static_cast<A>(fr[n]);
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const A* a0 = acc0 + k * kVoxelBlock;
    const A* a1 = acc1 + k * kVoxelBlock;
    T* o = out + k * N;
    if (kGuided) {
      OMKIT_SIMD
      for (int64_t n = 0; n < len; ++n) o[n] = static_cast<T>(a0[n] + static_cast<A>(p[n]) * a1[n]);
    } else {
      OMKIT_SIMD
      for (int64_t n = 0; n < len; ++n) o[n] = static_cast<T>(a0[n]);
    }
  }
}

#define OMKIT_MIX_FORWARD_CLONE(T)                                                                              \
  OMKIT_CPU_CLONES void mix_forward_block(const T* f, const T* p, T* out, const Acc<T>* M0, const Acc<T>* M1,   \
                                          const Acc<T>* c0, const Acc<T>* c1, int64_t C, int64_t K, int64_t N,  \
                                          int64_t len, Acc<T>* acc0, Acc<T>* acc1) {                            \
    if (M1 != nullptr)                                                                                          \
      mix_forward_block_impl<T, true>(f, p, out, M0, M1, c0, c1, C, K, N, len, acc0, acc1);                     \
    else                                                                                                        \
      mix_forward_block_impl<T, false>(f, p, out, M0, M1, c0, c1, C, K, N, len, acc0, acc1);                    \
  }
OMKIT_MIX_FORWARD_CLONE(float)
OMKIT_MIX_FORWARD_CLONE(double)
OMKIT_MIX_FORWARD_CLONE(BFloat16)
#undef OMKIT_MIX_FORWARD_CLONE

Tensor mix_forward_cpu(const Tensor& F, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& c0,
                       const Tensor& c1) {
  const int64_t B = F.size(0), C = F.size(1), N = F.size(2), K = M0.size(1);
  const int64_t blocks = (N + kVoxelBlock - 1) / kVoxelBlock;
  Tensor out = empty_output({B, K, N}, F.options());
  OMKIT_DISPATCH_CGA_TYPES(F.scalar_type(), "omkit_mix_forward_cpu", [&] {
    using A = Acc<scalar_t>;
    const scalar_t* f = F.const_data_ptr<scalar_t>();
    const scalar_t* p = P.const_data_ptr<scalar_t>();
    const A* m0 = M0.const_data_ptr<A>();
    const A* m1 = M1.defined() ? M1.const_data_ptr<A>() : nullptr;
    const A* b0 = c0.const_data_ptr<A>();
    const A* b1 = c1.defined() ? c1.const_data_ptr<A>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * blocks, 1, [&](int64_t i0, int64_t i1) {
      std::vector<A> acc(2 * K * kVoxelBlock);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / blocks, n0 = (i % blocks) * kVoxelBlock;
        const int64_t len = std::min(kVoxelBlock, N - n0);
        mix_forward_block(f + b * C * N + n0, p + b * N + n0, o + b * K * N + n0, m0 + b * K * C,
                          m1 ? m1 + b * K * C : nullptr, b0, b1, C, K, N, len, acc.data(),
                          acc.data() + K * kVoxelBlock);
      }
    });
  });
  return out;
}

// ---- recalibrate + CompSeg backward ----------------------------------------------------------
// Per block of voxels of one sample, reading (G, Pt) and, for the reductions, F:
//   kReduce:    dM0 = G F^T, dM1 = (Pt G) F^T (K x C), dc0 = sum G, dc1 = sum Pt G (K)
//   kInputGrad: dF = M0^T G + Pt M1^T G (+ base + slope Pt when the pooling's gradient is folded in)
// Both together are the backward of cga_recalibrate alone (one pass: F read, dF written);
// the whole-head backward runs them as two passes so dF can include the pooling term
// that depends on the reductions.

//
// In float32/float64 the dF row is accumulated in place; in bfloat16 it is accumulated in
// a float32 scratch row (drow) and rounded once when stored. g is converted to the
// accumulation type once per block (gbuf, next to Pt * G in pg), so the C-channel loop
// reads converted values.
template <typename T, bool kGuided, bool kReduce, bool kInputGrad>
OMKIT_ALWAYS_INLINE void mix_backward_block_impl(const T* g, const T* f, const T* p, T* dF, const Acc<T>* M0,
                                                 const Acc<T>* M1, const Acc<T>* base, const Acc<T>* slope,
                                                 int64_t C, int64_t K, int64_t N, int64_t len, Acc<T>* dM0,
                                                 Acc<T>* dM1, Acc<T>* dc0, Acc<T>* dc1, Acc<T>* pg, Acc<T>* gbuf,
                                                 Acc<T>* drow) {
  using A = Acc<T>;
  constexpr bool kConvert = !std::is_same_v<T, A>;
  // Pt * G once per block, reused by all C channels.
  for (int64_t k = 0; k < K; ++k) {
    const T* gk = g + k * N;
    A* gbk = gbuf + k * kVoxelBlock;
    A* pgk = pg + k * kVoxelBlock;
    A s0 = 0, s1 = 0;
    OMKIT_SIMD_REDUCTION2(s0, s1)
    for (int64_t n = 0; n < len; ++n) {
      const A gv = static_cast<A>(gk[n]);
      const A v = kGuided ? static_cast<A>(p[n]) * gv : A(0);
      if constexpr (kConvert) gbk[n] = gv;
      if (kGuided) pgk[n] = v;
      s0 += gv;
      s1 += v;
    }
    if (kReduce) {
      dc0[k] = s0;
      if (kGuided) dc1[k] = s1;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    // Only the pointers of the pass being run exist (the other is null).
    const T* fr = kReduce ? f + c * N : nullptr;
    T* dout = kInputGrad ? dF + c * N : nullptr;
    A* d = nullptr;
    if constexpr (kInputGrad) {
      if constexpr (kConvert) {
        d = drow;
      } else {
        d = dout;
      }
      const A a = base ? base[c] : A(0), s = slope ? slope[c] : A(0);
      OMKIT_SIMD
      for (int64_t n = 0; n < len; ++n) d[n] = a + s * static_cast<A>(p[n]);
    }
    for (int64_t k = 0; k < K; ++k) {
      const A* gk;
      if constexpr (kConvert) {
        gk = gbuf + k * kVoxelBlock;
      } else {
        gk = g + k * N;
      }
      const A* pgk = pg + k * kVoxelBlock;
      const A w0 = M0[k * C + c];
      const A w1 = kGuided ? M1[k * C + c] : A(0);
      A s0 = 0, s1 = 0;
      if (kReduce && kInputGrad) {
        // The reduction (weight gradient) and the input gradient share the loads of g and f.
        OMKIT_SIMD_REDUCTION2(s0, s1)
        for (int64_t n = 0; n < len; ++n) {
          const A fv = static_cast<A>(fr[n]);
          s0 += gk[n] * fv;
          if (kGuided) s1 += pgk[n] * fv;
          d[n] += kGuided ? w0 * gk[n] + w1 * pgk[n] : w0 * gk[n];
        }
      } else if (kReduce) {
        OMKIT_SIMD_REDUCTION2(s0, s1)
        for (int64_t n = 0; n < len; ++n) {
          const A fv = static_cast<A>(fr[n]);
          s0 += gk[n] * fv;
          if (kGuided) s1 += pgk[n] * fv;
        }
      } else {
        OMKIT_SIMD
        for (int64_t n = 0; n < len; ++n) d[n] += kGuided ? w0 * gk[n] + w1 * pgk[n] : w0 * gk[n];
      }
      if (kReduce) {
        dM0[k * C + c] = s0;
        if (kGuided) dM1[k * C + c] = s1;
      }
    }
    if constexpr (kInputGrad && kConvert) {
      OMKIT_SIMD
      for (int64_t n = 0; n < len; ++n) dout[n] = static_cast<T>(d[n]);
    }
  }
}

// Which passes a call runs.
enum class BackwardPass { kBoth, kReduceOnly, kInputGradOnly };

// The guided or unguided instantiation of one pass (inlined into each target clone below).
template <typename T, bool kReduce, bool kInputGrad, typename... Args>
OMKIT_ALWAYS_INLINE void mix_backward_block_pass(bool guided, Args... args) {
  if (guided)
    mix_backward_block_impl<T, true, kReduce, kInputGrad>(args...);
  else
    mix_backward_block_impl<T, false, kReduce, kInputGrad>(args...);
}

#define OMKIT_MIX_BACKWARD_CLONE(T)                                                                               \
  OMKIT_CPU_CLONES void mix_backward_block(BackwardPass pass, const T* g, const T* f, const T* p, T* dF,           \
                                           const Acc<T>* M0, const Acc<T>* M1, const Acc<T>* base,               \
                                           const Acc<T>* slope, int64_t C, int64_t K, int64_t N, int64_t len,    \
                                           Acc<T>* dM0, Acc<T>* dM1, Acc<T>* dc0, Acc<T>* dc1, Acc<T>* pg,        \
                                           Acc<T>* gbuf, Acc<T>* drow) {                                          \
    const bool guided = M1 != nullptr;                                                                            \
    if (pass == BackwardPass::kBoth)                                                                              \
      mix_backward_block_pass<T, true, true>(guided, g, f, p, dF, M0, M1, base, slope, C, K, N, len, dM0, dM1,    \
                                             dc0, dc1, pg, gbuf, drow);                                           \
    else if (pass == BackwardPass::kReduceOnly)                                                                   \
      mix_backward_block_pass<T, true, false>(guided, g, f, p, dF, M0, M1, base, slope, C, K, N, len, dM0, dM1,   \
                                              dc0, dc1, pg, gbuf, drow);                                          \
    else                                                                                                          \
      mix_backward_block_pass<T, false, true>(guided, g, f, p, dF, M0, M1, base, slope, C, K, N, len, dM0, dM1,   \
                                              dc0, dc1, pg, gbuf, drow);                                          \
  }
OMKIT_MIX_BACKWARD_CLONE(float)
OMKIT_MIX_BACKWARD_CLONE(double)
OMKIT_MIX_BACKWARD_CLONE(BFloat16)
#undef OMKIT_MIX_BACKWARD_CLONE

// Runs the requested passes over all blocks. Returns (dF, dM0, dM1, dc0, dc1); tensors
// of a pass not run are undefined.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mix_backward_passes(BackwardPass pass, const Tensor& G,
                                                                       const Tensor& F_or_undefined, const Tensor& P,
                                                                       const Tensor& M0, const Tensor& M1,
                                                                       const Tensor& base_in, const Tensor& slope_in,
                                                                       int64_t C, at::ScalarType dtype) {
  const int64_t B = G.size(0), N = G.size(2), K = M0.size(1);
  const int64_t blocks = std::max<int64_t>(1, (N + kVoxelBlock - 1) / kVoxelBlock);
  const bool guided = M1.defined();
  const bool reduce = pass != BackwardPass::kInputGradOnly, input_grad = pass != BackwardPass::kReduceOnly;
  // dF in the features' dtype; the reductions and the coefficient maps in the accumulation dtype.
  const auto acc = accumulate_type(dtype);
  Tensor dF = input_grad ? empty_output({B, C, N}, G.options().dtype(dtype)) : Tensor();
  auto acc_options = G.options().dtype(acc);
  // Per-block partial reductions, summed per sample below (deterministic, no atomics).
  Tensor dM0p = reduce ? at::empty({B, blocks, K, C}, acc_options) : Tensor();
  Tensor dc0p = reduce ? at::empty({B, blocks, K}, acc_options) : Tensor();
  Tensor dM1p = reduce && guided ? at::empty({B, blocks, K, C}, acc_options) : Tensor();
  Tensor dc1p = reduce && guided ? at::empty({B, blocks, K}, acc_options) : Tensor();
  Tensor base = base_in.defined() ? base_in.to(acc).contiguous() : Tensor();
  Tensor slope = slope_in.defined() ? slope_in.to(acc).contiguous() : Tensor();
  OMKIT_DISPATCH_CGA_TYPES(dtype, "omkit_mix_backward_cpu", [&] {
    using A = Acc<scalar_t>;
    auto ptr = [](const Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
    auto acc_ptr = [](const Tensor& t) { return t.defined() ? t.const_data_ptr<A>() : nullptr; };
    auto acc_mut = [](Tensor& t) { return t.defined() ? t.mutable_data_ptr<A>() : nullptr; };
    const scalar_t *g = ptr(G), *f = ptr(F_or_undefined), *p = ptr(P);
    const A *m0 = acc_ptr(M0), *m1 = acc_ptr(M1), *a = acc_ptr(base), *s = acc_ptr(slope);
    scalar_t* d = dF.defined() ? dF.mutable_data_ptr<scalar_t>() : nullptr;
    A *dm0 = acc_mut(dM0p), *dc0 = acc_mut(dc0p), *dm1 = acc_mut(dM1p), *dc1 = acc_mut(dc1p);
    constexpr bool kConvert = !std::is_same_v<scalar_t, A>;
    at::parallel_for(0, B * blocks, 1, [&](int64_t i0, int64_t i1) {
      // Pt * G, and for a converted dtype G itself and one dF row, in the accumulation type.
      std::vector<A> pg(K * kVoxelBlock), gbuf(kConvert ? K * kVoxelBlock : 0), drow(kConvert ? kVoxelBlock : 0);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / blocks, n0 = (i % blocks) * kVoxelBlock;
        const int64_t len = std::max<int64_t>(0, std::min(kVoxelBlock, N - n0));
        mix_backward_block(pass, g + b * K * N + n0, f ? f + b * C * N + n0 : nullptr, p + b * N + n0,
                           d ? d + b * C * N + n0 : nullptr, m0 + b * K * C, m1 ? m1 + b * K * C : nullptr,
                           a ? a + b * C : nullptr, s ? s + b * C : nullptr, C, K, N, len,
                           dm0 ? dm0 + i * K * C : nullptr, dm1 ? dm1 + i * K * C : nullptr,
                           dc0 ? dc0 + i * K : nullptr, dc1 ? dc1 + i * K : nullptr, pg.data(), gbuf.data(),
                           drow.data());
      }
    });
  });
  auto per_sample = [](const Tensor& t) { return t.defined() ? t.sum(1) : Tensor(); };
  return {dF, per_sample(dM0p), per_sample(dM1p), per_sample(dc0p), per_sample(dc1p)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mix_backward_cpu(const Tensor& G, const Tensor& F,
                                                                    const Tensor& P, const Tensor& M0,
                                                                    const Tensor& M1) {
  return mix_backward_passes(BackwardPass::kBoth, G, F, P, M0, M1, Tensor(), Tensor(), F.size(1), F.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mix_reduce_cpu(const Tensor& G, const Tensor& F, const Tensor& P,
                                                          const Tensor& M0, const Tensor& M1) {
  auto [dF, dM0, dM1, dc0, dc1] =
      mix_backward_passes(BackwardPass::kReduceOnly, G, F, P, M0, M1, Tensor(), Tensor(), F.size(1), F.scalar_type());
  return {dM0, dM1, dc0, dc1};
}

Tensor mix_input_grad_cpu(const Tensor& G, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& base,
                          const Tensor& slope) {
  return std::get<0>(mix_backward_passes(BackwardPass::kInputGradOnly, G, Tensor(), P, M0, M1, base, slope,
                                         M0.size(2), G.scalar_type()));
}

}  // namespace

namespace cpu {

// Every pass is written for these dtypes (OMKIT_DISPATCH_CGA_TYPES and the target clones;
// bfloat16 accumulated in float32); omkit/devices.py says the same (KERNEL_BACKENDS), and the ops check
// it before any pass runs.
constexpr at::ScalarType kCgaDtypes[] = {at::kFloat, at::kDouble, at::kBFloat16};

extern const CgaKernels kCgaKernels{"CPU",           kCgaDtypes,     pool_reduce_cpu, pool_expand_cpu,
                                    mix_forward_cpu, mix_backward_cpu, mix_reduce_cpu, mix_input_grad_cpu};

}  // namespace cpu

}  // namespace omkit
