// Shared helpers for the fastdc CPU kernels: run-time SIMD dispatch, thread setup, index types.
//
// The extension is built without -march flags, so every AVX2 / AVX-512 code path is compiled
// with a function-level __attribute__((target(...))) and chosen at run time (isa.cpp).
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
#define FASTDC_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define FASTDC_X86 0
#endif

namespace fastdc {

using i64 = std::int64_t;

// SIMD paths of the kernels, narrowest first. assign has all three; the other kernels have
// AVX2 and portable paths and take AVX2 whenever the chosen path is avx2 or wider.
enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

// "generic", "avx2" or "avx512".
const char* isa_name(Isa isa);

// The CPU features `isa` needs that this CPU (and OS) lacks, space-separated; "" if it can run.
std::string isa_missing(Isa isa);

// The path used when the caller names none: FASTDC_CPU_ISA=generic|avx2|avx512 from the
// environment if set (read once; FASTDC_CPU_SIMD is accepted as an older name), else the
// widest path this CPU runs. Throws std::invalid_argument for an unknown name or a path the
// CPU cannot run, naming the missing feature.
Isa default_isa();

// `name` ("" or "auto": default_isa()) as a path this CPU runs; throws std::invalid_argument
// otherwise, naming the missing feature or the accepted names.
Isa resolve_isa(const std::string& name);

// True when the chosen path may use AVX2+FMA (the paths of cluster_sums and sobel).
inline bool has_avx2_fma() { return default_isa() >= Isa::avx2; }

// Name of the path the kernels take by default (default_isa()).
inline const char* simd_name() { return isa_name(default_isa()); }

// Number of OpenMP threads to use: the caller's request, at least 1.
inline int clamp_threads(int n_threads) { return n_threads < 1 ? 1 : n_threads; }

// Smallest multiple of m that is >= v (m > 0).
inline i64 round_up(i64 v, i64 m) { return (v + m - 1) / m * m; }

}  // namespace fastdc
