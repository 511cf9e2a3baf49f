// Registering a backend: the one generic wrapper that turns each op's body into
// the backend's kernel of that op, and the one line a backend writes.
//
// A backend (cpu/, cuda/) implements the passes over the data: a CgaKernels
// (cga_common.h) and a TileKernels (tiles_common.h), defined in its namespace as
// omkit::<ns>::kCgaKernels and omkit::<ns>::kTileKernels. Everything else is
// shared: the ops' bodies (omkit::impl::<op>, with the argument checks, the
// output allocation and the ATen work around the passes) and, here, the device
// guard and the registration of every op of ops.h. A backend registers with
//
//   OMKIT_REGISTER_BACKEND(<dispatch key>, <ns>)    e.g. OMKIT_REGISTER_BACKEND(CPU, cpu)
//
// in a source file of its own (cpu/register.cpp, cuda/register.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "cga_common.h"
#include "ops.h"
#include "tiles_common.h"

namespace omkit {

// BackendOp<&impl::op, cga_kernels, tile_kernels>::call has the op's schema as its
// signature (the body's parameters after the kernels): it guards the device of the
// op's first argument (always a tensor) and runs the body with the backend's kernels.
template <auto Body, const CgaKernels& Cga, const TileKernels& Tiles>
struct BackendOp;

template <typename R, typename Kernels, typename First, typename... Rest, R (*Body)(const Kernels&, First, Rest...),
          const CgaKernels& Cga, const TileKernels& Tiles>
struct BackendOp<Body, Cga, Tiles> {
  static_assert(std::is_same_v<Kernels, CgaKernels> || std::is_same_v<Kernels, TileKernels>);
  static_assert(std::is_same_v<First, const Tensor&>, "an op's first argument is a tensor");

  static R call(First first, Rest... rest) {
    const at::OptionalDeviceGuard guard(at::device_of(first));
    if constexpr (std::is_same_v<Kernels, CgaKernels>) {
      return Body(Cga, first, rest...);
    } else {
      return Body(Tiles, first, rest...);
    }
  }
};

}  // namespace omkit

#define OMKIT_REGISTER_OP_(name, signature) \
  m.impl(#name, &::omkit::BackendOp<&::omkit::impl::name, kOmkitCga_, kOmkitTiles_>::call);

// Registers every op of ops.h for dispatch key KEY with the passes of backend namespace ns.
#define OMKIT_REGISTER_BACKEND(KEY, ns)                                      \
  namespace omkit::ns {                                                      \
  extern const ::omkit::CgaKernels kCgaKernels;                              \
  extern const ::omkit::TileKernels kTileKernels;                            \
  }                                                                          \
  TORCH_LIBRARY_IMPL(omkit, KEY, m) {                                        \
    static constexpr const ::omkit::CgaKernels& kOmkitCga_ = ::omkit::ns::kCgaKernels;    \
    static constexpr const ::omkit::TileKernels& kOmkitTiles_ = ::omkit::ns::kTileKernels; \
    OMKIT_OPS(OMKIT_REGISTER_OP_)                                            \
  }
