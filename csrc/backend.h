// Registering a backend: the one generic wrapper that turns each op's body into
// the backend's kernel of that op, and the one line a backend writes.
//
// A backend (cpu/, cuda/) implements the passes over the data, one table per kernel
// family: a CgaKernels (cga_common.h), a WindowKernels (window_common.h) and a
// TileKernels (tiles_common.h), defined in its namespace as omkit::<ns>::kCgaKernels,
// kWindowKernels and kTileKernels. Everything else is shared: the ops' bodies
// (omkit::impl::<op>, with the argument checks, the output allocation and the ATen work
// around the passes; an op's family is the kernel table its body takes) and, here, the
// device guard and the registration of every op of ops.h. A backend registers with
//
//   OMKIT_REGISTER_BACKEND(<dispatch key>, <ns>)    e.g. OMKIT_REGISTER_BACKEND(CPU, cpu)
//
// in a source file of its own (cpu/register.cpp, cuda/register.cpp). The backends and
// their dispatch keys are listed once for Python and the build in omkit/ops/spec.py.
#pragma once

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "cga_common.h"
#include "ops.h"
#include "tiles_common.h"
#include "window_common.h"

namespace omkit {

// One backend's kernel tables; kernels<K>() is the table of family K.
template <const CgaKernels& Cga, const WindowKernels& Window, const TileKernels& Tiles>
struct KernelSet {
  template <typename K>
  static const K& kernels() {
    if constexpr (std::is_same_v<K, CgaKernels>) {
      return Cga;
    } else if constexpr (std::is_same_v<K, WindowKernels>) {
      return Window;
    } else {
      static_assert(std::is_same_v<K, TileKernels>, "an op's body takes a kernel table of a family in KernelSet");
      return Tiles;
    }
  }
};

// BackendOp<&impl::op, Set>::call has the op's schema as its signature (the body's
// parameters after the kernels): it guards the device of the op's first argument
// (always a tensor) and runs the body with the backend's table of the body's family.
template <auto Body, typename Set>
struct BackendOp;

template <typename R, typename Kernels, typename First, typename... Rest, R (*Body)(const Kernels&, First, Rest...),
          typename Set>
struct BackendOp<Body, Set> {
  static_assert(std::is_same_v<First, const Tensor&>, "an op's first argument is a tensor");

  static R call(First first, Rest... rest) {
    const at::OptionalDeviceGuard guard(at::device_of(first));
    return Body(Set::template kernels<Kernels>(), first, rest...);
  }
};

}  // namespace omkit

#define OMKIT_REGISTER_OP_(name, signature) m.impl(#name, &::omkit::BackendOp<&::omkit::impl::name, OmkitKernels_>::call);

// Registers every op of ops.h for dispatch key KEY with the passes of backend namespace ns.
#define OMKIT_REGISTER_BACKEND(KEY, ns)                                                                  \
  namespace omkit::ns {                                                                                  \
  extern const ::omkit::CgaKernels kCgaKernels;                                                          \
  extern const ::omkit::WindowKernels kWindowKernels;                                                    \
  extern const ::omkit::TileKernels kTileKernels;                                                        \
  }                                                                                                      \
  TORCH_LIBRARY_IMPL(omkit, KEY, m) {                                                                    \
    using OmkitKernels_ =                                                                                \
        ::omkit::KernelSet<::omkit::ns::kCgaKernels, ::omkit::ns::kWindowKernels, ::omkit::ns::kTileKernels>; \
    OMKIT_OPS(OMKIT_REGISTER_OP_)                                                                        \
  }
