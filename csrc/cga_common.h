// Device-independent part of the CGA ops: argument checks, folding the
// per-sample importance vectors m into per-sample 1x1x1 weights, and the
// chain rule back through that folding. All of it works on tensors of size
// O(B * K * C) and runs as ordinary ATen calls; the passes over the feature
// map (size B * C * voxels) are the backend kernels in CgaKernels. The impl::
// functions are the ops' bodies; backend.h registers them once for every backend.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>

namespace omkit {

using at::Tensor;

// The passes over the feature map that each backend implements.
// Shapes: F (B, C, N) contiguous, P (B, N) contiguous in F's dtype.
struct CgaKernels {
  // The backend's name in messages ("CPU") and the feature dtypes its passes take; the
  // ops check them before any pass runs. omkit/devices.py lists the same dtypes (KERNEL_BACKENDS)
  // (tests/test_ops_manifest.py checks the CPU ones by calling the ops).
  const char* device;
  c10::ArrayRef<at::ScalarType> dtypes;
  // z (B, 2, C) in the accumulation dtype: z[:, 0] = F^T Pt, z[:, 1] = F^T (1 - Pt).
  Tensor (*pool_reduce)(const Tensor& F, const Tensor& P);
  // dF (B, C, N) in F's dtype: dF[b, c, n] = base[b, c] + slope[b, c] * P[b, n].
  Tensor (*pool_expand)(const Tensor& base, const Tensor& slope, const Tensor& P, at::ScalarType dtype);
  // out (B, K, N) = M0[b] F[b] + c0 + P * (M1[b] F[b] + c1); M1/c1 undefined = no guided term.
  Tensor (*mix_forward)(const Tensor& F, const Tensor& P, const Tensor& M0, const Tensor& M1,
                        const Tensor& c0, const Tensor& c1);
  // Given G = d loss / d out (B, K, N): dF = M0^T G + P * M1^T G, and the per-sample
  // reductions dM0 = sum_n G F^T, dM1 = sum_n P G F^T (B, K, C), dc0 = sum G, dc1 = sum P G (B, K).
  // dM1/dc1 are returned undefined when M1 is undefined.
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> (*mix_backward)(
      const Tensor& G, const Tensor& F, const Tensor& P, const Tensor& M0, const Tensor& M1);
  // The reductions of mix_backward alone (F is read, dF not written): (dM0, dM1, dc0, dc1).
  std::tuple<Tensor, Tensor, Tensor, Tensor> (*mix_reduce)(const Tensor& G, const Tensor& F, const Tensor& P,
                                                           const Tensor& M0, const Tensor& M1);
  // The input gradient of mix_backward plus the pooling gradient, without reading F:
  // dF = M0^T G + P * M1^T G + base + slope * P (base/slope (B, C) in the accumulation dtype).
  Tensor (*mix_input_grad)(const Tensor& G, const Tensor& P, const Tensor& M0, const Tensor& M1, const Tensor& base,
                           const Tensor& slope);
};

// How a variant merges the two branches: out = alpha(P) S_t + beta(P) S_n with
// alpha = a0 + a1 P and beta = b0 + b1 P. has_pos/has_neg say which branches exist.
struct VariantCoefficients {
  double a0, a1, b0, b1;
  bool has_pos, has_neg;
  bool guided() const { return a1 != 0.0 || b1 != 0.0; }
};
VariantCoefficients variant_coefficients(const std::string& variant);

// Accumulation dtype of the kernels: float for half/bfloat16, else the dtype itself.
at::ScalarType accumulate_type(at::ScalarType dtype);

// TypeError unless `dtype` is one of `dtypes`, the feature dtypes of `device`'s kernels
// ("cga_pool: the CPU kernel supports float32 and float64, got Half").
void check_dtype_supported(const char* device, c10::ArrayRef<at::ScalarType> dtypes, at::ScalarType dtype,
                           const char* op);
// The same for a kernel table (CgaKernels, WindowKernels): its `device` and `dtypes`.
template <typename Kernels>
void check_kernel_dtype(const Kernels& kernels, at::ScalarType dtype, const char* op) {
  check_dtype_supported(kernels.device, kernels.dtypes, dtype, op);
}

// Validates features/guidance and returns F (B, C, N) and P (B, N), contiguous, in F's dtype.
std::tuple<Tensor, Tensor> flatten_features_guidance(const Tensor& features, const Tensor& guidance,
                                                     const char* op);

// The ops' bodies, one per CGA op of ops.h, named as the op: the kernels, then the op's
// arguments in its schema's order (backend.h registers them for every backend).
namespace impl {

using OptionalTensor = std::optional<Tensor>;
using Grads7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Grads8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

std::tuple<Tensor, Tensor> cga_pool(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance,
                                    double eps);
Tensor cga_pool_backward(const CgaKernels& kernels, const Tensor& grad_m, const OptionalTensor& grad_l1_norm,
                         const Tensor& m, const Tensor& l1_norm, const Tensor& guidance, double eps);
Tensor cga_recalibrate(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance, const Tensor& m,
                       const OptionalTensor& w_pos, const OptionalTensor& b_pos, const OptionalTensor& w_neg,
                       const OptionalTensor& b_neg, const OptionalTensor& w_out, const OptionalTensor& b_out,
                       c10::string_view variant);
Grads8 cga_recalibrate_backward(const CgaKernels& kernels, const Tensor& grad_out, const Tensor& features,
                                const Tensor& guidance, const Tensor& m, const OptionalTensor& w_pos,
                                const OptionalTensor& b_pos, const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                const OptionalTensor& w_out, const OptionalTensor& b_out, c10::string_view variant);

// The whole CGA head in one op pair: forward = pooling + recalibration (two reads of F);
// backward = one pass reading F and G for the weight-side reductions, then one pass
// writing dF that folds in the pooling's gradient (F is not read again, and no second
// dF map is summed by autograd).
std::tuple<Tensor, Tensor, Tensor> cga(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance,
                                       const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                                       const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                       const OptionalTensor& w_out, const OptionalTensor& b_out,
                                       c10::string_view variant, double eps);
Grads7 cga_backward(const CgaKernels& kernels, const Tensor& grad_out, const OptionalTensor& grad_m,
                    const OptionalTensor& grad_l1_norm, const Tensor& features, const Tensor& guidance,
                    const Tensor& m, const Tensor& l1_norm, const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                    const OptionalTensor& w_neg, const OptionalTensor& b_neg, const OptionalTensor& w_out,
                    const OptionalTensor& b_out, c10::string_view variant, double eps);

}  // namespace impl

// The CGA head's 1x1x1 weights with importance vectors m (N, 2, C) folded in, for any N (one row
// per sample, or per sample and block): out = M0 F + c0 + Pt (M1 F + c1), M0/M1 (N, K2, C), c0/c1
// (K2) in the accumulation dtype; M1/c1 undefined for the unguided variant (minus). Checks the
// weights against the variant and `features` (device, dtype, C).
struct FoldedHead {
  Tensor M0, M1, c0, c1;
  int64_t num_outputs;
};
FoldedHead fold_cga_head(const Tensor& features, const Tensor& m, const std::optional<Tensor>& w_pos,
                         const std::optional<Tensor>& b_pos, const std::optional<Tensor>& w_neg,
                         const std::optional<Tensor>& b_neg, const std::optional<Tensor>& w_out,
                         const std::optional<Tensor>& b_out, const std::string& variant, const char* op);

}  // namespace omkit
