// Shared helpers for the fastfields CPU (OpenMP) and CUDA kernels.
//
// The kernel headers in csrc/include/fastfields/ must compile as plain C++17 (g++, for the
// CPU extension and the torch-facing bindings) and under nvcc (for the .cu kernels), so
// the kernel part of this file includes no torch header. Per-element math is written once
// as FF_HD functions and used by both the CPU loops and the CUDA kernels.
//
// The end of this file holds the binding helpers every torch-facing .cpp shares (dtype
// codes, the accumulation dtype, device checks); they are compiled only where ATen is
// available and never under nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fastfields/enums.h"  // option codes, generated from fastfields/_enums.py

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define FF_HD __host__ __device__ __forceinline__
#else
#define FF_HD inline
#endif

namespace fastfields {

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// Conversions between storage types and the accumulation type. The generic version
// covers float, double, and (on the CPU side) c10::Half / c10::BFloat16, which convert
// with static_cast. The CUDA half types get explicit intrinsics because torch compiles
// CUDA sources with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__.
template <typename T>
struct Convert {
  template <typename A>
  static FF_HD A to(T v) {
    return static_cast<A>(v);
  }
  template <typename A>
  static FF_HD T from(A v) {
    return static_cast<T>(v);
  }
};

#ifdef __CUDACC__
template <>
struct Convert<__half> {
  template <typename A>
  static FF_HD A to(__half v) {
    return static_cast<A>(__half2float(v));
  }
  template <typename A>
  static FF_HD __half from(A v) {
    return __float2half_rn(static_cast<float>(v));
  }
};
template <>
struct Convert<__nv_bfloat16> {
  template <typename A>
  static FF_HD A to(__nv_bfloat16 v) {
    return static_cast<A>(__bfloat162float(v));
  }
  template <typename A>
  static FF_HD __nv_bfloat16 from(A v) {
    return __float2bfloat16_rn(static_cast<float>(v));
  }
};
#endif

// Load a storage value as the accumulation type A.
template <typename A, typename T>
FF_HD A ff_load(const T& v) {
  return Convert<T>::template to<A>(v);
}

// Convert an accumulation value to storage type T.
template <typename T, typename A>
FF_HD T ff_store(A v) {
  return Convert<T>::template from<A>(v);
}

template <typename A>
FF_HD bool ff_isfinite(A x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

template <typename A>
FF_HD A ff_floor(A x) {
#ifdef __CUDA_ARCH__
  return floor(x);
#else
  return std::floor(x);
#endif
}

// Storage dtype codes used by the raw-pointer CUDA launchers.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// CPU loops compiled twice, for the baseline ISA (SSE2 on x86-64: the extension is built
// without -march so it runs anywhere) and with __attribute__((target("avx2"))) or
// ("avx2,fma"), picked at run time by ff_cpu_has_avx2_fma() (AVX2 machines without FMA are
// rare enough to take the baseline). Without FMA contraction (ISO C++ mode) both versions give
// bitwise equal results; a version that contracts (composite's optics, render_triplane's
// GEMM) differs by rounding. FASTFIELDS_CPU_BASELINE=1 in the environment forces the baseline
// versions (the tests run them that way too).
// A loop body shared by both versions must be inlined into each (FF_ALWAYS_INLINE), or the
// AVX2 version would call the baseline code.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define FF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FF_ALWAYS_INLINE inline
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__CUDACC__)
#define FF_X86_AVX2_DISPATCH 1
inline bool ff_cpu_has_avx2_fma() {
  static const bool has = [] {
    const char* forced = std::getenv("FASTFIELDS_CPU_BASELINE");
    const bool baseline = forced != nullptr && forced[0] != '\0' && forced[0] != '0';
    return !baseline && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#endif

// N consecutive values of A as one GCC/clang vector (SSE2 or AVX2 registers), with unaligned
// loads and stores: for CPU loops gcc does not vectorise by itself (lanes it keeps in
// arrays, short runs of a run-time length).
#if defined(__GNUC__) && !defined(__CUDACC__)
template <typename A, int N>
struct FFVec {
  typedef A type __attribute__((vector_size(N * sizeof(A))));
  static FF_ALWAYS_INLINE type load(const A* src) {
    type v;
    std::memcpy(&v, src, sizeof(type));
    return v;
  }
  static FF_ALWAYS_INLINE void store(A* dst, const type& v) { std::memcpy(dst, &v, sizeof(type)); }
};
#endif

// Runs body() (a lambda calling a CPU loop) with everything it calls inlined into an AVX2
// build where the CPU has AVX2 + FMA, else as compiled. No FMA contraction: both versions
// give bitwise equal results. For loops whose helpers are ordinary inline functions; a
// function with its own dispatch inside (or a call into ATen) is inlined too, so keep body()
// to the loop.
#ifdef FF_X86_AVX2_DISPATCH
template <typename F>
__attribute__((target("avx2"), flatten)) void ff_avx2_flat(const F& body) {
  body();
}
#endif
template <typename F>
inline void ff_with_avx2(const F& body) {
#ifdef FF_X86_AVX2_DISPATCH
  if (ff_cpu_has_avx2_fma()) {
    ff_avx2_flat(body);
    return;
  }
#endif
  body();
}

}  // namespace fastfields

// ---------------------------------------------------------------------------------------
// Binding helpers (torch side only).

#if !defined(__CUDACC__) && defined(__has_include)
#if __has_include(<ATen/ATen.h>)
#include <ATen/ATen.h>

namespace fastfields {

// Accumulation dtype of a storage dtype: float64 for float64, else float32 (as acc_t).
inline at::ScalarType acc_dtype(at::ScalarType storage) { return storage == at::kDouble ? at::kDouble : at::kFloat; }

// The DType code of a float32 / float64 / float16 / bfloat16 tensor; any other dtype is an
// error naming the op and the argument.
inline DType dtype_code(at::ScalarType t, const char* op, const char* name) {
  switch (t) {
    case at::kFloat:
      return kFloat32;
    case at::kDouble:
      return kFloat64;
    case at::kHalf:
      return kFloat16;
    case at::kBFloat16:
      return kBFloat16;
    default:
      break;
  }
  TORCH_CHECK(false, op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", t);
  return kFloat32;  // unreachable
}

// `t` lives on the backend's device type and on the device of `first` (named `first_name`).
inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& first, const char* first_name,
                         at::DeviceType type, const char* op) {
  const bool cuda = type == at::kCUDA;
  TORCH_CHECK(t.device().type() == type, op, " (", cuda ? "cuda" : "cpu", "): ", name, " must be a ",
              cuda ? "CUDA" : "CPU", " tensor, got ", t.device());
  TORCH_CHECK(t.device() == first.device(), op, " (", cuda ? "cuda" : "cpu", "): ", name, " is on ", t.device(),
              " but ", first_name, " is on ", first.device());
}

}  // namespace fastfields

#endif  // __has_include(<ATen/ATen.h>)
#endif  // !__CUDACC__
