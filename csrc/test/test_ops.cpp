// C++ test of the omkit ops through the dispatcher (as a libtorch user calls them):
// every op of ops.h registered with its schema and a CPU kernel, each op against a
// direct ATen formulation on small random inputs, plus an argument error. Exits
// non-zero on a failure; ctest runs it.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <tuple>

#include "../ops.h"

namespace {

using at::Tensor;

int failures = 0, passes = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "PASS " : "FAIL ") << what << std::endl;
  ok ? ++passes : ++failures;
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

void test_registrations() {
#define OMKIT_CHECK_OP(name, signature)                                                                       \
  {                                                                                                          \
    auto handle = c10::Dispatcher::singleton().findSchema({"omkit::" #name, ""});                             \
    expect(handle.has_value() && c10::toString(handle->schema()) == "omkit::" #name signature,               \
           "omkit::" #name " is registered with the schema of ops.h");                                       \
    expect(handle.has_value() && handle->hasKernelForDispatchKey(c10::DispatchKey::CPU),                     \
           "omkit::" #name " has a CPU kernel");                                                             \
  }
  OMKIT_OPS(OMKIT_CHECK_OP)
#undef OMKIT_CHECK_OP
}

void test_cga() {
  at::manual_seed(0);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t B = 2, C = 5, K = 3;
  Tensor F = at::randn({B, C, 3, 4, 5}, opts), P = at::rand({B, 1, 3, 4, 5}, opts);
  auto pool = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double)>("omkit::cga_pool");
  auto [m, l1_norm] = pool.call(F, P, 1e-12);
  Tensor flat = F.flatten(2), p = P.flatten(2);
  Tensor z = at::stack({(flat * p).sum(-1), (flat * (1 - p)).sum(-1)}, 1);
  expect(at::allclose(m, z / z.abs().sum(-1, true)), "cga_pool matches F^T Pt, F^T (1 - Pt), L1-normalised");

  Tensor w_pos = at::randn({K, C}, opts), b_pos = at::randn({K}, opts);
  Tensor w_neg = at::randn({K, C}, opts), b_neg = at::randn({K}, opts);
  Tensor w_out = at::randn({K, K}, opts), b_out = at::randn({K}, opts);
  using Opt = const std::optional<Tensor>&;
  auto recalibrate = op<Tensor(const Tensor&, const Tensor&, const Tensor&, Opt, Opt, Opt, Opt, Opt, Opt,
                               c10::string_view)>("omkit::cga_recalibrate");
  Tensor out = recalibrate.call(F, P, m, w_pos, b_pos, w_neg, b_neg, w_out, b_out, "full");
  // Unfused: recalibrate, two 1x1x1 convs, soft masks, final conv.
  auto conv = [](const Tensor& x, const Tensor& w, const Tensor& b) {
    return at::einsum("kc,bcn->bkn", {w, x}) + b.view({1, -1, 1});
  };
  Tensor u_t = flat * m.select(1, 0).unsqueeze(-1), u_n = flat * m.select(1, 1).unsqueeze(-1);
  Tensor merged = p * conv(u_t, w_pos, b_pos) + (1 - p) * conv(u_n, w_neg, b_neg);
  Tensor expected = conv(merged, w_out, b_out).view({B, K, 3, 4, 5});
  expect(at::allclose(out, expected), "cga_recalibrate (full, final conv) matches the unfused composition");

  bool threw = false;
  try {
    pool.call(F, P.narrow(2, 0, 1), 1e-12);
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "cga_pool rejects a guidance of the wrong shape");

  // bfloat16 (what torch.autocast gives on a CPU) is accumulated in float: within bfloat16's
  // rounding of the double result on the same (rounded) inputs.
  auto bf = [](const Tensor& t) { return t.to(at::kBFloat16); };
  auto whole = op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, Opt, Opt, Opt, Opt, Opt, Opt,
                                                     c10::string_view, double)>("omkit::cga");
  auto [out_bf, m_bf, l1_bf] = whole.call(bf(F), bf(P), bf(w_pos), bf(b_pos), bf(w_neg), bf(b_neg), bf(w_out),
                                          bf(b_out), "full", 1e-12);
  auto d = [](const Tensor& t) { return t.to(at::kDouble); };
  auto [out_d, m_d, l1_d] = whole.call(d(bf(F)), d(bf(P)), d(bf(w_pos)), d(bf(b_pos)), d(bf(w_neg)), d(bf(b_neg)),
                                       d(bf(w_out)), d(bf(b_out)), "full", 1e-12);
  const double scale = out_d.abs().max().item<double>();
  expect(out_bf.scalar_type() == at::kBFloat16 && (d(out_bf) - out_d).abs().max().item<double>() <= 2e-2 * scale,
         "cga in bfloat16 matches float64 within bfloat16 rounding");
}

void test_tiles() {
  at::manual_seed(1);
  Tensor volume = at::randn({2, 7, 9, 10});
  // stride == keep: the kept centres cover the volume exactly once
  const int64_t roi[3] = {4, 6, 6}, keep[3] = {2, 3, 4}, offset[3] = {1, 1, 1};
  std::vector<int64_t> rows;
  for (int64_t z = 0; z < 7; z += keep[0])
    for (int64_t y = 0; y < 9; y += keep[1])
      for (int64_t x = 0; x < 10; x += keep[2]) rows.insert(rows.end(), {z - offset[0], y - offset[1], x - offset[2]});
  Tensor origins = at::tensor(rows, at::kLong).view({-1, 3});
  auto gather = op<Tensor(const Tensor&, const Tensor&, c10::IntArrayRef)>("omkit::gather_tiles");
  Tensor tiles = gather.call(volume, origins, roi);
  expect(tiles.size(0) == origins.size(0) && tiles.size(1) == 2 && tiles.size(4) == 6, "gather_tiles shape");
  auto stitch = op<void(const Tensor&, const Tensor&, const Tensor&, c10::IntArrayRef, c10::IntArrayRef)>(
      "omkit::stitch_tiles_");
  Tensor out = at::zeros_like(volume);
  stitch.call(out, tiles, origins, offset, keep);
  expect(at::equal(out, volume), "gather_tiles then stitch_tiles_ rebuilds the volume");

  auto argmax = op<void(const Tensor&, const Tensor&, const Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                        const std::optional<Tensor>&)>("omkit::stitch_tiles_argmax_");
  Tensor labels = at::zeros({7, 9, 10}, at::kByte);
  argmax.call(labels, tiles, origins, offset, keep, std::nullopt);
  expect(at::equal(labels, volume.argmax(0).to(at::kByte)), "stitch_tiles_argmax_ equals argmax of the volume");
}

}  // namespace

int main() {
  try {
    test_registrations();
    test_cga();
    test_tiles();
  } catch (const std::exception& e) {
    std::cout << "FAIL unexpected exception: " << e.what() << std::endl;
    ++failures;
  }
  std::cout << passes << " passed, " << failures << " failed" << std::endl;
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
