// The bodies of the window-consistent ops (window_sums, block_linear, cga_windowed) and of the
// first two's backward ops: argument checks, the geometry, and the ATen work on per-block tensors
// (size B x blocks x K x C) around the backends' passes over the feature map (WindowKernels::
// window_sums, ::block_mix, ::window_sums_backward, ::block_mix_backward). Their contract is the
// reference in omkit/ops/window.py, with the autograd formulas that call the backward ops (cga_windowed is inference only).
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include "window_common.h"

namespace omkit {

namespace {

bool present(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// x (B, C, D, H, W) floating point; the geometry checked against its spatial size.
WindowGeometry make_geometry(const Tensor& x, c10::IntArrayRef window, c10::IntArrayRef block,
                             c10::IntArrayRef offset, c10::IntArrayRef origin, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 5, op, ": features must be (B, C, D, H, W), got shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": features must be floating point, got ",
                   x.scalar_type());
  const std::pair<c10::IntArrayRef, const char*> args[] = {
      {window, "window"}, {block, "block"}, {offset, "offset"}, {origin, "origin"}};
  for (const auto& [value, name] : args) {
    TORCH_CHECK_VALUE(value.size() == 3, op, ": ", name, " needs three sizes (D, H, W), got ", value);
  }
  WindowGeometry g;
  for (int a = 0; a < 3; ++a) {
    g.size[a] = x.size(2 + a);
    g.window[a] = window[a];
    g.block[a] = block[a];
    g.offset[a] = offset[a];
    g.origin[a] = origin[a];
    TORCH_CHECK_VALUE(window[a] >= 1 && block[a] >= 1, op, ": window and block must be at least 1 voxel on every ",
                      "axis, got window ", window, ", block ", block);
    TORCH_CHECK_VALUE(origin[a] >= 0, op, ": origin must be >= 0 on every axis, got ", origin);
    TORCH_CHECK_VALUE(offset[a] >= 0 && offset[a] <= window[a] - block[a], op,
                      ": every block must lie inside its window: 0 <= offset <= window - block on every axis, got "
                      "offset ", offset, ", window ", window, ", block ", block);
    const int64_t span = g.size[a] - g.origin[a];
    g.blocks[a] = span > 0 ? (span + g.block[a] - 1) / g.block[a] : 0;
  }
  return g;
}

// guidance (B, 1, D, H, W) -> P (B, D, H, W) contiguous in x's dtype.
Tensor flat_guidance(const Tensor& x, const Tensor& guidance, const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(guidance.scalar_type()), op, ": guidance must be floating point, got ",
                   guidance.scalar_type());
  TORCH_CHECK(guidance.device() == x.device(), op, ": guidance is on ", guidance.device(), " but features are on ",
              x.device());
  std::vector<int64_t> want(x.sizes().begin(), x.sizes().end());
  want[1] = 1;
  TORCH_CHECK_VALUE(guidance.sizes() == c10::IntArrayRef(want), op, ": guidance must be (B, 1, D, H, W) = ",
                    c10::IntArrayRef(want), ", got ", guidance.sizes());
  return guidance.select(1, 0).to(x.scalar_type()).contiguous();
}

// A per-block weight (B, nD, nH, nW, K, C) -> (B, num_blocks, K, C) contiguous in `acc`.
Tensor per_block(const Tensor& m, const WindowGeometry& g, const Tensor& x, int64_t K, const char* op,
                 const char* name) {
  TORCH_CHECK(m.device() == x.device(), op, ": ", name, " is on ", m.device(), " but features are on ", x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(m.scalar_type()), op, ": ", name, " must be floating point, got ",
                   m.scalar_type());
  const std::vector<int64_t> want = {x.size(0), g.blocks[0], g.blocks[1], g.blocks[2], K < 0 ? m.size(4) : K,
                                     x.size(1)};
  TORCH_CHECK_VALUE(m.dim() == 6 && m.sizes() == c10::IntArrayRef(want), op, ": ", name,
                    " must be (B, nD, nH, nW, K, C) = ", c10::IntArrayRef(want), ", got ", m.sizes());
  return m.reshape({x.size(0), g.num_blocks(), want[4], x.size(1)}).to(accumulate_type(x.scalar_type())).contiguous();
}

// The incoming gradient `grad` checked against the shape `want` and x's device.
Tensor checked_grad(const Tensor& grad, c10::IntArrayRef want, const Tensor& x, const char* op, const char* name,
                    const char* layout) {
  TORCH_CHECK(grad.device() == x.device(), op, ": ", name, " is on ", grad.device(), " but features are on ",
              x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": ", name, " must be floating point, got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.sizes() == want, op, ": ", name, " must be ", layout, " = ", want, ", got ", grad.sizes());
  return grad;
}

Tensor empty_grad(const Tensor& x) { return at::empty({0}, x.options()); }

Tensor bias_or_zeros(const std::optional<Tensor>& b, int64_t K, const Tensor& x, const char* op, const char* name) {
  const auto acc = accumulate_type(x.scalar_type());
  if (!present(b)) return at::zeros({K}, x.options().dtype(acc));
  TORCH_CHECK(b->device() == x.device(), op, ": ", name, " is on ", b->device(), " but features are on ", x.device());
  TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == K, op, ": ", name, " must be (K,) with K = ", K, ", got ",
                    b->sizes());
  return b->to(acc).contiguous();
}

}  // namespace

namespace impl {

Tensor window_sums(const WindowKernels& kernels, const Tensor& x, const OptionalTensor& guidance,
                   c10::IntArrayRef window, c10::IntArrayRef block, c10::IntArrayRef offset,
                   c10::IntArrayRef origin) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "window_sums";
  const WindowGeometry g = make_geometry(x, window, block, offset, origin, op);
  Tensor P = present(guidance) ? flat_guidance(x, *guidance, op) : Tensor();
  check_kernel_dtype(kernels, x.scalar_type(), op);
  Tensor z = kernels.window_sums(x.contiguous(), P, g);  // (B, R, C, nD, nH, nW)
  return z.permute({0, 3, 4, 5, 1, 2}).contiguous();
}

Tensor window_sums_backward(const WindowKernels& kernels, const Tensor& grad, const Tensor& x,
                            const OptionalTensor& guidance, c10::IntArrayRef window, c10::IntArrayRef block,
                            c10::IntArrayRef offset, c10::IntArrayRef origin) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "window_sums_backward";
  const WindowGeometry g = make_geometry(x, window, block, offset, origin, op);
  Tensor P = present(guidance) ? flat_guidance(x, *guidance, op) : Tensor();
  check_kernel_dtype(kernels, x.scalar_type(), op);
  const int64_t R = P.defined() ? 2 : 1;
  checked_grad(grad, {x.size(0), g.blocks[0], g.blocks[1], g.blocks[2], R, x.size(1)}, x, op, "grad",
               "(B, nD, nH, nW, R, C)");
  // Exclusive prefix sums over the (small) block grid, in double as the forward's running sums:
  // a voxel's blocks are a box of the grid, eight terms of S.
  Tensor S = grad.to(at::kDouble).permute({0, 4, 5, 1, 2, 3});  // (B, R, C, nD, nH, nW)
  S = S.cumsum(3).cumsum(4).cumsum(5);
  S = at::constant_pad_nd(S, {1, 0, 1, 0, 1, 0}).contiguous();  // (B, R, C, nD + 1, nH + 1, nW + 1)
  return kernels.window_sums_backward(S, P, g, x.scalar_type());
}

Tensor block_linear(const WindowKernels& kernels, const Tensor& x, const OptionalTensor& guidance, const Tensor& m0,
                    const OptionalTensor& c0, const OptionalTensor& m1, const OptionalTensor& c1,
                    c10::IntArrayRef block, c10::IntArrayRef origin) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "block_linear";
  const WindowGeometry g = make_geometry(x, block, block, {0, 0, 0}, origin, op);
  check_kernel_dtype(kernels, x.scalar_type(), op);
  Tensor M0 = per_block(m0, g, x, -1, op, "m0");
  const int64_t K = M0.size(2);
  TORCH_CHECK_VALUE(K >= 1, op, ": m0 needs at least one output row K");
  Tensor C0 = bias_or_zeros(c0, K, x, op, "c0");
  const bool guided = present(m1) || present(c1);
  Tensor P, M1, C1;
  if (guided) {
    TORCH_CHECK_VALUE(present(guidance), op, ": the guided term (m1, c1) needs guidance");
    P = flat_guidance(x, *guidance, op);
    M1 = present(m1) ? per_block(*m1, g, x, K, op, "m1") : at::zeros_like(M0);
    C1 = bias_or_zeros(c1, K, x, op, "c1");
  }
  return kernels.block_mix(x.contiguous(), P, M0, M1, C0, C1, g);
}

Grads5 block_linear_backward(const WindowKernels& kernels, const Tensor& grad_out, const Tensor& x,
                             const OptionalTensor& guidance, const Tensor& m0, const OptionalTensor& c0,
                             const OptionalTensor& m1, const OptionalTensor& c1, c10::IntArrayRef block,
                             c10::IntArrayRef origin) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "block_linear_backward";
  const WindowGeometry g = make_geometry(x, block, block, {0, 0, 0}, origin, op);
  check_kernel_dtype(kernels, x.scalar_type(), op);
  Tensor M0 = per_block(m0, g, x, -1, op, "m0");
  const int64_t K = M0.size(2);
  TORCH_CHECK_VALUE(K >= 1, op, ": m0 needs at least one output row K");
  if (present(c0)) bias_or_zeros(c0, K, x, op, "c0");  // checked only: the bias does not enter the gradient
  const bool guided = present(m1) || present(c1);
  Tensor P, M1;
  if (guided) {
    TORCH_CHECK_VALUE(present(guidance), op, ": the guided term (m1, c1) needs guidance");
    P = flat_guidance(x, *guidance, op);
    M1 = present(m1) ? per_block(*m1, g, x, K, op, "m1") : at::zeros_like(M0);
    if (present(c1)) bias_or_zeros(c1, K, x, op, "c1");
  }
  Tensor G = checked_grad(grad_out, {x.size(0), K, g.size[0], g.size[1], g.size[2]}, x, op, "grad_out",
                          "(B, K, D, H, W)");
  G = G.to(x.scalar_type()).contiguous();
  auto [dx, dM0, dM1, dc0, dc1] = kernels.block_mix_backward(G, x.contiguous(), P, M0, M1, g);
  Tensor grad_m0 = dM0.view(m0.sizes()).to(m0.scalar_type());
  Tensor grad_c0 = present(c0) ? dc0.sum(0).to(c0->scalar_type()) : empty_grad(x);
  Tensor grad_m1 = present(m1) ? dM1.view(m1->sizes()).to(m1->scalar_type()) : empty_grad(x);
  Tensor grad_c1 = present(c1) ? dc1.sum(0).to(c1->scalar_type()) : empty_grad(x);
  return {dx, grad_m0, grad_c0, grad_m1, grad_c1};
}

std::tuple<Tensor, Tensor> cga_windowed(const WindowKernels& kernels, const Tensor& features, const Tensor& guidance,
                                        const OptionalTensor& w_pos, const OptionalTensor& b_pos,
                                        const OptionalTensor& w_neg, const OptionalTensor& b_neg,
                                        const OptionalTensor& w_out, const OptionalTensor& b_out,
                                        c10::IntArrayRef window, c10::IntArrayRef block, c10::IntArrayRef offset,
                                        c10::IntArrayRef origin, c10::string_view variant, double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const char* op = "cga_windowed";
  TORCH_CHECK_VALUE(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  const WindowGeometry g = make_geometry(features, window, block, offset, origin, op);
  Tensor P = flat_guidance(features, guidance, op);
  check_kernel_dtype(kernels, features.scalar_type(), op);
  const int64_t B = features.size(0), C = features.size(1), nb = g.num_blocks();
  // Pass 1: both categories' window sums, [F^T Pt, F^T 1] per block; z_n = F^T (1 - Pt).
  Tensor sums = kernels.window_sums(features.contiguous(), P, g);         // (B, 2, C, nD, nH, nW)
  sums = sums.reshape({B, 2, C, nb}).permute({0, 3, 1, 2}).contiguous();  // (B, nb, 2, C)
  Tensor z_t = sums.select(2, 0), z_n = sums.select(2, 1) - z_t;
  Tensor z = at::stack({z_t, z_n}, 2).reshape({B * nb, 2, C});
  Tensor m = z / z.abs().sum(-1, true).clamp_min(eps);
  // The head's weights with each block's m folded in, then pass 2 over the features.
  FoldedHead f = fold_cga_head(features, m.to(features.scalar_type()), w_pos, b_pos, w_neg, b_neg, w_out, b_out,
                               std::string(variant), op);
  const int64_t K2 = f.num_outputs;
  auto blocks = [&](const Tensor& t) { return t.defined() ? t.reshape({B, nb, K2, C}).contiguous() : t; };
  Tensor out = kernels.block_mix(features.contiguous(), f.M1.defined() ? P : Tensor(), blocks(f.M0), blocks(f.M1),
                                 f.c0, f.c1, g);
  Tensor m_out = m.reshape({B, g.blocks[0], g.blocks[1], g.blocks[2], 2, C}).to(features.scalar_type());
  return {out, m_out};
}

}  // namespace impl

}  // namespace omkit
