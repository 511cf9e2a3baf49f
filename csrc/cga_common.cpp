#include "cga_common.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/irange.h>

namespace omkit {

namespace {

bool present(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

Tensor empty_grad(const Tensor& like) { return at::empty({0}, like.options()); }

void check_same_device_dtype(const Tensor& t, const Tensor& features, const char* op, const char* name) {
  TORCH_CHECK(t.device() == features.device(), op, ": ", name, " is on ", t.device(),
              " but features are on ", features.device());
  TORCH_CHECK_TYPE(t.scalar_type() == features.scalar_type(), op, ": ", name, " has dtype ",
                   t.scalar_type(), " but features have dtype ", features.scalar_type());
}

// The branch weights after checking them against the variant and each other.
struct CgaParams {
  VariantCoefficients coef;
  int64_t num_channels, num_scores, num_outputs;  // C, K, K2
  Tensor w_pos, b_pos, w_neg, b_neg, w_out, b_out;  // undefined when absent or unused
};

CgaParams check_params(const Tensor& features, const Tensor& m, const std::optional<Tensor>& w_pos,
                       const std::optional<Tensor>& b_pos, const std::optional<Tensor>& w_neg,
                       const std::optional<Tensor>& b_neg, const std::optional<Tensor>& w_out,
                       const std::optional<Tensor>& b_out, const std::string& variant, const char* op,
                       int64_t m_rows = -1) {
  CgaParams p;
  p.coef = variant_coefficients(variant);
  const int64_t B = m_rows >= 0 ? m_rows : features.size(0), C = features.size(1);
  p.num_channels = C;
  check_same_device_dtype(m, features, op, "m");
  TORCH_CHECK_VALUE(m.dim() == 3 && m.size(0) == B && m.size(1) == 2 && m.size(2) == C, op,
                    ": m must be (B, 2, C) = (", B, ", 2, ", C, "), got ", m.sizes());
  int64_t K = -1;
  auto take_branch = [&](bool used, const std::optional<Tensor>& w, const std::optional<Tensor>& b,
                         const char* wname, const char* bname, Tensor& w_slot, Tensor& b_slot) {
    if (!used) return;
    TORCH_CHECK_VALUE(present(w), op, ": variant '", variant, "' needs ", wname, " (K, C)");
    check_same_device_dtype(*w, features, op, wname);
    TORCH_CHECK_VALUE(w->dim() == 2 && w->size(1) == C, op, ": ", wname, " must be (K, C) with C = ", C,
                      ", got ", w->sizes());
    TORCH_CHECK_VALUE(K < 0 || w->size(0) == K, op, ": w_pos and w_neg must have the same number of rows K, got ",
                      K, " and ", w->size(0));
    K = w->size(0);
    w_slot = *w;
    if (present(b)) {
      check_same_device_dtype(*b, features, op, bname);
      TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == K, op, ": ", bname, " must be (K,) with K = ", K,
                        ", got ", b->sizes());
      b_slot = *b;
    }
  };
  take_branch(p.coef.has_pos, w_pos, b_pos, "w_pos", "b_pos", p.w_pos, p.b_pos);
  take_branch(p.coef.has_neg, w_neg, b_neg, "w_neg", "b_neg", p.w_neg, p.b_neg);
  TORCH_CHECK_VALUE(K > 0, op, ": the score weights must have at least one row");
  p.num_scores = K;
  p.num_outputs = K;
  if (present(w_out)) {
    check_same_device_dtype(*w_out, features, op, "w_out");
    TORCH_CHECK_VALUE(w_out->dim() == 2 && w_out->size(1) == K && w_out->size(0) > 0, op,
                      ": w_out must be (K_out, K) with K = ", K, ", got ", w_out->sizes());
    p.w_out = *w_out;
    p.num_outputs = w_out->size(0);
    if (present(b_out)) {
      check_same_device_dtype(*b_out, features, op, "b_out");
      TORCH_CHECK_VALUE(b_out->dim() == 1 && b_out->size(0) == p.num_outputs, op, ": b_out must be (",
                        p.num_outputs, ",), got ", b_out->sizes());
      p.b_out = *b_out;
    }
  }
  return p;
}

// One branch folded into the final conv: Wm = W * m_row (B, K, C), A = W_out Wm
// (B, K2, C), c = W_out b (K2). Everything in the accumulation dtype.
struct FoldedBranch {
  Tensor Wm, A, c;
};

FoldedBranch fold_branch(const Tensor& w, const Tensor& b, const Tensor& m_row, const Tensor& w_out,
                         at::ScalarType acc, int64_t K2) {
  FoldedBranch f;
  f.Wm = w.to(acc).unsqueeze(0) * m_row.to(acc).unsqueeze(1);
  f.A = w_out.defined() ? at::matmul(w_out.to(acc), f.Wm) : f.Wm;
  if (b.defined()) {
    f.c = w_out.defined() ? at::mv(w_out.to(acc), b.to(acc)) : b.to(acc);
  } else {
    f.c = at::zeros({K2}, w.options().dtype(acc));
  }
  return f;
}

// alpha * x + beta * y, skipping zero coefficients and absent operands.
Tensor combine(double alpha, const Tensor& x, double beta, const Tensor& y) {
  Tensor out;
  if (alpha != 0.0 && x.defined()) out = alpha == 1.0 ? x : x * alpha;
  if (beta != 0.0 && y.defined()) {
    Tensor term = beta == 1.0 ? y : y * beta;
    out = out.defined() ? out + term : term;
  }
  return out;
}

struct Folded {
  FoldedBranch pos, neg;
  Tensor M0, M1, c0, c1;  // M1/c1 undefined for unguided variants
};

Folded fold(const CgaParams& p, const Tensor& m, at::ScalarType acc) {
  Folded f;
  const int64_t K2 = p.num_outputs;
  if (p.coef.has_pos) f.pos = fold_branch(p.w_pos, p.b_pos, m.select(1, 0), p.w_out, acc, K2);
  if (p.coef.has_neg) f.neg = fold_branch(p.w_neg, p.b_neg, m.select(1, 1), p.w_out, acc, K2);
  const auto& c = p.coef;
  Tensor zeros_bkc = at::zeros({m.size(0), K2, p.num_channels}, m.options().dtype(acc));
  Tensor zeros_k = at::zeros({K2}, m.options().dtype(acc));
  f.M0 = combine(c.a0, f.pos.A, c.b0, f.neg.A);
  if (!f.M0.defined()) f.M0 = zeros_bkc;  // pos / neg: everything is in the guided term
  f.c0 = combine(c.a0, f.pos.c, c.b0, f.neg.c);
  if (!f.c0.defined()) f.c0 = zeros_k;
  if (p.b_out.defined()) f.c0 = f.c0 + p.b_out.to(acc);
  if (c.guided()) {
    f.M1 = combine(c.a1, f.pos.A, c.b1, f.neg.A);
    f.c1 = combine(c.a1, f.pos.c, c.b1, f.neg.c);
    f.M1 = f.M1.contiguous();
    f.c1 = f.c1.contiguous();
  }
  f.M0 = f.M0.contiguous();
  f.c0 = f.c0.contiguous();
  return f;
}

}  // namespace

VariantCoefficients variant_coefficients(const std::string& variant) {
  // out = (a0 + a1 Pt) S_t + (b0 + b1 Pt) S_n
  if (variant == "full") return {0.0, 1.0, 1.0, -1.0, true, true};
  if (variant == "minus") return {1.0, 0.0, 1.0, 0.0, true, true};
  if (variant == "pos") return {0.0, 1.0, 0.0, 0.0, true, false};
  if (variant == "neg") return {0.0, 0.0, 1.0, -1.0, false, true};
  TORCH_CHECK_VALUE(false, "unknown CGA variant '", variant, "'; choose one of full, minus, pos, neg");
}

FoldedHead fold_cga_head(const Tensor& features, const Tensor& m, const std::optional<Tensor>& w_pos,
                         const std::optional<Tensor>& b_pos, const std::optional<Tensor>& w_neg,
                         const std::optional<Tensor>& b_neg, const std::optional<Tensor>& w_out,
                         const std::optional<Tensor>& b_out, const std::string& variant, const char* op) {
  CgaParams params = check_params(features, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant, op, m.size(0));
  Folded f = fold(params, m, accumulate_type(features.scalar_type()));
  return {f.M0, f.M1, f.c0, f.c1, params.num_outputs};
}

at::ScalarType accumulate_type(at::ScalarType dtype) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) ? at::kFloat : dtype;
}

namespace {

// Python's name of a dtype, as omkit/ops/manifest.py writes it.
std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(dtype);
  }
}

}  // namespace

void check_dtype_supported(const char* device, c10::ArrayRef<at::ScalarType> dtypes, at::ScalarType dtype,
                           const char* op) {
  for (at::ScalarType supported : dtypes) {
    if (supported == dtype) return;
  }
  std::string names;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    names += (i == 0 ? "" : (i + 1 == dtypes.size() ? " and " : ", ")) + dtype_name(dtypes[i]);
  }
  TORCH_CHECK_TYPE(false, op, ": the ", device, " kernel supports ", names, ", got ", dtype);
}

std::tuple<Tensor, Tensor> flatten_features_guidance(const Tensor& features, const Tensor& guidance,
                                                     const char* op) {
  TORCH_CHECK_VALUE(features.dim() >= 3, op, ": features must be (B, C, *spatial), got shape ", features.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(features.scalar_type()), op, ": features must be floating point, got ",
                   features.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(guidance.scalar_type()), op, ": guidance must be floating point, got ",
                   guidance.scalar_type());
  TORCH_CHECK(guidance.device() == features.device(), op, ": guidance is on ", guidance.device(),
              " but features are on ", features.device());
  const int64_t B = features.size(0), C = features.size(1);
  bool ok = guidance.dim() == features.dim() && guidance.size(0) == B && guidance.size(1) == 1;
  for (int64_t d = 2; ok && d < features.dim(); ++d) ok = guidance.size(d) == features.size(d);
  if (!ok) {
    std::vector<int64_t> want(features.sizes().begin(), features.sizes().end());
    want[1] = 1;
    TORCH_CHECK_VALUE(false, op, ": guidance must be (B, 1, *spatial) = ", c10::IntArrayRef(want), ", got ",
                      guidance.sizes());
  }
  const int64_t N = features.numel() / std::max<int64_t>(B * C, 1);
  Tensor F = features.reshape({B, C, N}).contiguous();
  Tensor P = guidance.reshape({B, N}).to(features.scalar_type()).contiguous();
  return {F, P};
}

namespace impl {

std::tuple<Tensor, Tensor> cga_pool(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance,
                                    double eps) {
  // The ATen calls below are implementation details of this kernel: keep them out of
  // autograd (its formula is registered for the op as a whole), also when a caller runs
  // the op with grad mode on and parameters that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_VALUE(eps >= 0.0, "cga_pool: eps must be >= 0, got ", eps);
  auto [F, P] = flatten_features_guidance(features, guidance, "cga_pool");
  check_kernel_dtype(kernels, features.scalar_type(), "cga_pool");
  Tensor z = kernels.pool_reduce(F, P);  // (B, 2, C), accumulation dtype
  Tensor l1_norm = z.abs().sum(-1);
  Tensor m = z / l1_norm.clamp_min(eps).unsqueeze(-1);
  return {m.to(features.scalar_type()), l1_norm.to(features.scalar_type())};
}

}  // namespace impl

// d loss / d z (B, 2, C) of the pooling, in the accumulation dtype. For m = z / max(||z||_1, eps):
// (g - sign(z) <g, m>) / ||z||_1 while the norm is above eps, g / eps where the clamp holds it
// (sign(z) = sign(m) as the denominator is > 0); plus grad_l1_norm * sign(z).
static Tensor pool_grad_z(const Tensor& grad_m, const std::optional<Tensor>& grad_l1_norm, const Tensor& m,
                          const Tensor& l1_norm, double eps, const char* op) {
  const auto acc = accumulate_type(m.scalar_type());
  Tensor g = grad_m.to(acc);
  Tensor mm = m.to(acc);
  Tensor norm = l1_norm.to(acc).unsqueeze(-1);
  Tensor denom = norm.clamp_min(eps);
  Tensor sign = mm.sign();
  Tensor through_norm = (g - sign * (g * mm).sum(-1, true)) / denom;
  Tensor dz = at::where(norm >= eps, through_norm, g / denom);
  if (present(grad_l1_norm)) {
    TORCH_CHECK_VALUE(grad_l1_norm->sizes() == l1_norm.sizes(), op, ": grad_l1_norm must be (B, 2), got ",
                      grad_l1_norm->sizes());
    dz = dz + grad_l1_norm->to(acc).unsqueeze(-1) * sign;
  }
  return dz;
}

static void check_pool_state(const Tensor& m, const Tensor& l1_norm, const Tensor& guidance, const char* op) {
  TORCH_CHECK_VALUE(m.dim() == 3 && m.size(1) == 2, op, ": m must be (B, 2, C), got ", m.sizes());
  TORCH_CHECK_VALUE(l1_norm.dim() == 2 && l1_norm.size(0) == m.size(0) && l1_norm.size(1) == 2, op,
                    ": l1_norm must be (B, 2), got ", l1_norm.sizes());
  TORCH_CHECK_VALUE(guidance.dim() >= 3 && guidance.size(0) == m.size(0) && guidance.size(1) == 1, op,
                    ": guidance must be (B, 1, *spatial) with B = ", m.size(0), ", got ", guidance.sizes());
  TORCH_CHECK(guidance.device() == m.device() && l1_norm.device() == m.device(), op,
              ": all tensors must be on one device");
}

namespace impl {

Tensor cga_pool_backward(const CgaKernels& kernels, const Tensor& grad_m, const OptionalTensor& grad_l1_norm,
                         const Tensor& m, const Tensor& l1_norm, const Tensor& guidance, double eps) {
  // The ATen calls below are implementation details of this kernel: keep them out of
  // autograd (its formula is registered for the op as a whole), also when a caller runs
  // the op with grad mode on and parameters that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cga_pool_backward";
  check_pool_state(m, l1_norm, guidance, op);
  TORCH_CHECK_VALUE(grad_m.sizes() == m.sizes(), op, ": grad_m must have m's shape ", m.sizes(), ", got ",
                    grad_m.sizes());
  TORCH_CHECK(grad_m.device() == m.device(), op, ": all tensors must be on one device");
  const auto dtype = m.scalar_type();
  check_kernel_dtype(kernels, dtype, op);
  const int64_t B = m.size(0), C = m.size(2);
  const int64_t N = guidance.numel() / B;
  Tensor dz = pool_grad_z(grad_m, grad_l1_norm, m, l1_norm, eps, op);
  // dF = dz_t Pt + dz_n (1 - Pt) = dz_n + (dz_t - dz_n) Pt: one write pass, F itself is not read.
  Tensor base = dz.select(1, 1).contiguous();
  Tensor slope = (dz.select(1, 0) - dz.select(1, 1)).contiguous();
  Tensor P = guidance.reshape({B, N}).to(dtype).contiguous();
  Tensor dF = kernels.pool_expand(base, slope, P, dtype);
  std::vector<int64_t> shape(guidance.sizes().begin(), guidance.sizes().end());
  shape[1] = C;
  return dF.view(shape);
}

Tensor cga_recalibrate(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance, const Tensor& m,
                       const OptionalTensor& w_pos, const OptionalTensor& b_pos, const OptionalTensor& w_neg,
                       const OptionalTensor& b_neg, const OptionalTensor& w_out, const OptionalTensor& b_out,
                       c10::string_view variant) {
  // The ATen calls below are implementation details of this kernel: keep them out of
  // autograd (its formula is registered for the op as a whole), also when a caller runs
  // the op with grad mode on and parameters that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cga_recalibrate";
  auto [F, P] = flatten_features_guidance(features, guidance, op);
  CgaParams params = check_params(features, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, std::string(variant), op);
  check_kernel_dtype(kernels, features.scalar_type(), op);
  Folded f = fold(params, m, accumulate_type(features.scalar_type()));
  Tensor out = kernels.mix_forward(F, P, f.M0, f.M1, f.c0, f.c1);
  std::vector<int64_t> shape(features.sizes().begin(), features.sizes().end());
  shape[1] = params.num_outputs;
  return out.view(shape);
}

}  // namespace impl

namespace {

// Gradients of m and of the parameters from the per-sample reductions of the
// folded weights (dM0, dM1 (B, K2, C); dc0, dc1 summed over samples (K2)).
struct ParamGrads {
  Tensor m;  // (B, 2, C), accumulation dtype
  Tensor w_pos, b_pos, w_neg, b_neg, w_out, b_out;  // empty tensors where absent
};

ParamGrads param_grads(const CgaParams& params, const Folded& f, const Tensor& m, const Tensor& dM0,
                       const Tensor& dM1, const Tensor& dc0, const Tensor& dc1, const Tensor& like) {
  const auto acc = accumulate_type(like.scalar_type());
  const int64_t B = m.size(0), K2 = params.num_outputs;
  const auto& c = params.coef;
  ParamGrads out;
  Tensor grad_w_out = params.w_out.defined() ? at::zeros({K2, params.num_scores}, like.options().dtype(acc)) : Tensor();
  out.m = at::zeros({B, 2, params.num_channels}, like.options().dtype(acc));
  // Chain rule back through A = W_out (W * m_row), c = W_out b for one branch whose
  // merge coefficient is (k0 + k1 Pt): dA = k0 dM0 + k1 dM1, dc = k0 dc0 + k1 dc1.
  auto branch = [&](const FoldedBranch& fb, const Tensor& w, const Tensor& b, double k0, double k1,
                    int64_t row) -> std::pair<Tensor, Tensor> {
    Tensor dA = combine(k0, dM0, k1, dM1);
    Tensor dc = combine(k0, dc0, k1, dc1);
    if (!dA.defined()) dA = at::zeros_like(fb.A);
    if (!dc.defined()) dc = at::zeros({K2}, like.options().dtype(acc));
    Tensor dWm, db;
    if (params.w_out.defined()) {
      Tensor wo = params.w_out.to(acc);
      dWm = at::matmul(wo.t(), dA);
      grad_w_out.add_(at::matmul(dA, fb.Wm.transpose(1, 2)).sum(0));
      if (b.defined()) {
        grad_w_out.add_(at::outer(dc, b.to(acc)));
        db = at::mv(wo.t(), dc);
      }
    } else {
      dWm = dA;
      if (b.defined()) db = dc;
    }
    out.m.select(1, row).copy_((dWm * w.to(acc).unsqueeze(0)).sum(1));
    Tensor dW = (dWm * m.select(1, row).to(acc).unsqueeze(1)).sum(0);
    return {dW.to(w.scalar_type()), db.defined() ? db.to(b.scalar_type()) : empty_grad(like)};
  };
  out.w_pos = out.b_pos = out.w_neg = out.b_neg = empty_grad(like);
  if (c.has_pos) std::tie(out.w_pos, out.b_pos) = branch(f.pos, params.w_pos, params.b_pos, c.a0, c.a1, 0);
  if (c.has_neg) std::tie(out.w_neg, out.b_neg) = branch(f.neg, params.w_neg, params.b_neg, c.b0, c.b1, 1);
  out.w_out = grad_w_out.defined() ? grad_w_out.to(like.scalar_type()) : empty_grad(like);
  out.b_out = params.b_out.defined() ? dc0.to(like.scalar_type()) : empty_grad(like);
  return out;
}

Tensor checked_grad_out(const Tensor& grad_out, const Tensor& features, const CgaParams& params, const char* op) {
  std::vector<int64_t> out_shape(features.sizes().begin(), features.sizes().end());
  out_shape[1] = params.num_outputs;
  TORCH_CHECK_VALUE(grad_out.sizes() == c10::IntArrayRef(out_shape), op, ": grad_out must have shape ",
                    c10::IntArrayRef(out_shape), ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == features.device(), op, ": grad_out is on ", grad_out.device(),
              " but features are on ", features.device());
  return grad_out.reshape({features.size(0), params.num_outputs, -1}).to(features.scalar_type()).contiguous();
}

}  // namespace

namespace impl {

Grads8 cga_recalibrate_backward(const CgaKernels& kernels, const Tensor& grad_out, const Tensor& features,
                                const Tensor& guidance, const Tensor& m, const OptionalTensor& w_pos,
                                const OptionalTensor& b_pos, const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                const OptionalTensor& w_out, const OptionalTensor& b_out, c10::string_view variant) {
  // The ATen calls below are implementation details of this kernel: keep them out of
  // autograd (its formula is registered for the op as a whole), also when a caller runs
  // the op with grad mode on and parameters that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cga_recalibrate_backward";
  auto [F, P] = flatten_features_guidance(features, guidance, op);
  CgaParams params = check_params(features, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, std::string(variant), op);
  Tensor G = checked_grad_out(grad_out, features, params, op);
  check_kernel_dtype(kernels, features.scalar_type(), op);
  Folded f = fold(params, m, accumulate_type(features.scalar_type()));
  auto [dF, dM0, dM1, dc0_b, dc1_b] = kernels.mix_backward(G, F, P, f.M0, f.M1);
  ParamGrads g = param_grads(params, f, m, dM0, dM1, dc0_b.sum(0), dc1_b.defined() ? dc1_b.sum(0) : Tensor(), F);
  return {dF.view(features.sizes()), g.m.to(m.scalar_type()), g.w_pos, g.b_pos, g.w_neg, g.b_neg, g.w_out, g.b_out};
}

std::tuple<Tensor, Tensor, Tensor> cga(const CgaKernels& kernels, const Tensor& features, const Tensor& guidance,
                                       const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                                       const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                       const OptionalTensor& w_out, const OptionalTensor& b_out,
                                       c10::string_view variant, double eps) {
  // The ATen calls below are implementation details of this kernel: keep them out of
  // autograd (its formula is registered for the op as a whole), also when a caller runs
  // the op with grad mode on and parameters that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto [m, l1_norm] = cga_pool(kernels, features, guidance, eps);
  Tensor out = cga_recalibrate(kernels, features, guidance, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, variant);
  return {out, m, l1_norm};
}

Grads7 cga_backward(const CgaKernels& kernels, const Tensor& grad_out, const OptionalTensor& grad_m,
                    const OptionalTensor& grad_l1_norm, const Tensor& features, const Tensor& guidance,
                    const Tensor& m, const Tensor& l1_norm, const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                    const OptionalTensor& w_neg, const OptionalTensor& b_neg, const OptionalTensor& w_out,
                    const OptionalTensor& b_out, c10::string_view variant, double eps) {
  // The ATen calls below are implementation details of this kernel: keep them out of
  // autograd (its formula is registered for the op as a whole), also when a caller runs
  // the op with grad mode on and parameters that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cga_backward";
  auto [F, P] = flatten_features_guidance(features, guidance, op);
  CgaParams params = check_params(features, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, std::string(variant), op);
  check_pool_state(m, l1_norm, guidance, op);
  Tensor G = checked_grad_out(grad_out, features, params, op);
  check_kernel_dtype(kernels, features.scalar_type(), op);
  Folded f = fold(params, m, accumulate_type(features.scalar_type()));
  // Pass 1 (reads F, G, Pt): the per-sample weight-side reductions.
  auto [dM0, dM1, dc0_b, dc1_b] = kernels.mix_reduce(G, F, P, f.M0, f.M1);
  ParamGrads g = param_grads(params, f, m, dM0, dM1, dc0_b.sum(0), dc1_b.defined() ? dc1_b.sum(0) : Tensor(), F);
  Tensor dm = g.m;
  if (present(grad_m)) {
    TORCH_CHECK_VALUE(grad_m->sizes() == m.sizes(), op, ": grad_m must have m's shape ", m.sizes());
    dm = dm + grad_m->to(dm.scalar_type());
  }
  // The pooling's gradient is dz_n + (dz_t - dz_n) Pt per channel: two (B, C) coefficient
  // maps that pass 2 adds while it writes dF.
  Tensor dz = pool_grad_z(dm, grad_l1_norm, m, l1_norm, eps, op);
  Tensor base = dz.select(1, 1).contiguous();
  Tensor slope = (dz.select(1, 0) - dz.select(1, 1)).contiguous();
  // Pass 2 (reads G, Pt; writes dF).
  Tensor dF = kernels.mix_input_grad(G, P, f.M0, f.M1, base, slope);
  return {dF.view(features.sizes()), g.w_pos, g.b_pos, g.w_neg, g.b_neg, g.w_out, g.b_out};
}

}  // namespace impl

}  // namespace omkit
