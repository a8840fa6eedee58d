// Shared helpers for the fastdc CPU kernels: run-time SIMD dispatch, thread setup, index types.
//
// The extension is built without -march flags, so every AVX2 code path is compiled with a
// function-level __attribute__((target("avx2,fma"))) and chosen at run time by has_avx2_fma().
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTDC_X86 1
#define FASTDC_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTDC_X86 0
#endif

namespace fastdc {

using i64 = std::int64_t;

// True when this CPU can run the AVX2+FMA paths (checked once; cheap afterwards).
// FASTDC_CPU_SIMD=generic in the environment forces the portable path (used by the tests).
inline bool has_avx2_fma() {
#if FASTDC_X86
    static const bool ok = [] {
        const char* force = std::getenv("FASTDC_CPU_SIMD");
        if (force != nullptr && std::string(force) == "generic") return false;
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }();
    return ok;
#else
    return false;
#endif
}

// "avx2" or "generic": the SIMD path the kernels take on this CPU.
inline const char* simd_name() { return has_avx2_fma() ? "avx2" : "generic"; }

// Number of OpenMP threads to use: the caller's request, at least 1.
inline int clamp_threads(int n_threads) { return n_threads < 1 ? 1 : n_threads; }

// Smallest multiple of m that is >= v (m > 0).
inline i64 round_up(i64 v, i64 m) { return (v + m - 1) / m * m; }

}  // namespace fastdc
