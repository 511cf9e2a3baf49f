// Compile hot loops for several x86 instruction sets and pick one at load time.
//
// Extensions are built with the distribution's baseline flags (x86-64 = SSE2),
// so `-march=native` is not an option for a wheel or a CI cache. GCC's
// target_clones emits an AVX2+FMA copy next to the baseline one and an ifunc
// resolver chooses per CPU; the loop bodies are always_inline templates, so
// each clone gets its own vectorisation of the same source.
#pragma once

#include <c10/util/BFloat16.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define OMKIT_CPU_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define OMKIT_CPU_CLONES
#endif

#if defined(__GNUC__)
#define OMKIT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define OMKIT_ALWAYS_INLINE inline
#endif

// Loop hint: the iterations are independent (or a declared reduction), vectorise.
#define OMKIT_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) || defined(__GNUC__)
#define OMKIT_SIMD OMKIT_PRAGMA(omp simd)
#define OMKIT_SIMD_REDUCTION2(a, b) OMKIT_PRAGMA(omp simd reduction(+ : a, b))
#else
#define OMKIT_SIMD
#define OMKIT_SIMD_REDUCTION2(a, b)
#endif

namespace omkit {

// The accumulation type of a storage type (accumulate_type() of cga_common.h, as a C++ type):
// bfloat16 is read and written as bfloat16 and accumulated in float by every CPU kernel.
template <typename T>
struct AccOf {
  using type = T;
};
template <>
struct AccOf<c10::BFloat16> {
  using type = float;
};
template <typename T>
using Acc = typename AccOf<T>::type;

}  // namespace omkit
