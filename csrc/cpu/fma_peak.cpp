// fma_peak_gflops: the FMA throughput each SIMD path can reach, the yardstick of the assign
// benchmark (fraction of the peak); bf16_peak_gflops: the same for the bf16 pass's VDPBF16PS. Every thread runs REGS independent multiply-add chains
// (as many as the path's tile has accumulators) on values that stay finite, for about
// `seconds`; flops = threads * iterations * REGS * lanes * 2.

#include <algorithm>
#include <stdexcept>
#include <chrono>
#include <vector>

#include "common.h"
#include "kernels.h"
#include "assign_bf16.h"
#include "simd_vec.h"

namespace fastdc {
namespace {

constexpr i64 INNER = 1 << 14;  // iterations between clock reads

using Clock = std::chrono::steady_clock;

// Runs chains until `seconds` have passed; returns the number of FMA instructions issued per
// register (iterations) and stores a checksum so that the loop is not optimised away.
template <typename Step>
i64 run_chains(double seconds, Step step) {
    const auto stop = Clock::now() + std::chrono::duration<double>(seconds);
    i64 iterations = 0;
    do {
        step(INNER);
        iterations += INNER;
    } while (Clock::now() < stop);
    return iterations;
}

// Portable: 8 chains of 4 floats (at the baseline ISA -O3 makes SSE multiplies and adds).
i64 chains_generic(double seconds, float* sink) {
    float acc[8][4];
    for (auto& row : acc) std::fill(row, row + 4, 1.0f);
    const i64 n = run_chains(seconds, [&](i64 inner) {
        for (i64 i = 0; i < inner; ++i) {
            for (auto& row : acc)
                for (float& v : row) v = v * 0.999999f + 1e-6f;
            asm volatile("" : : "r"(&acc) : "memory");  // one real update per iteration
        }
    });
    *sink = acc[0][0];
    return n * 8 * 4;
}

// Lane-FMAs done by one thread in `seconds` on the given path (x86: as many chains as the
// path's assign tile has accumulators, see assign.cpp).
i64 lane_fmas(Isa isa, double seconds, float* sink) {
    [[maybe_unused]] const auto run = [](double s, auto step) { return run_chains(s, step); };
#if FASTDC_X86
    if (isa == Isa::avx512) return avx512::fma_chains<24>(seconds, sink, run);
    if (isa == Isa::avx2) return avx2::fma_chains<12>(seconds, sink, run);
#endif
    return chains_generic(seconds, sink);
}

// Lane multiply-adds of the bf16 pass's instruction (VDPBF16PS) done by one thread.
i64 lane_bf16_dots(double seconds, float* sink) {
#if FASTDC_X86
    const auto run = [](double s, auto step) { return run_chains(s, step); };
    return avx512bf16::dot_chains<2 * avx512bf16::MR>(seconds, sink, run);
#else
    (void)seconds;
    (void)sink;
    return 0;
#endif
}

// 2 flops per lane multiply-add counted by `count` on n_threads threads, per second, in G.
template <typename Count>
double gflops(int n_threads, double seconds, Count count) {
    const int nt = clamp_threads(n_threads);
    std::vector<i64> fmas(nt, 0);
    std::vector<float> sink(nt, 0.0f);
    const auto start = Clock::now();
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; ++t) fmas[t] = count(seconds, &sink[t]);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    i64 total = 0;
    for (i64 f : fmas) total += f;
    return 2.0 * static_cast<double>(total) / elapsed / 1e9;
}

}  // namespace

double fma_peak_gflops(Isa isa, int n_threads, double seconds) {
    return gflops(n_threads, seconds, [isa](double s, float* sink) {
        return lane_fmas(isa, s, sink);
    });
}

double bf16_peak_gflops(int n_threads, double seconds) {
    if (!bf16_missing().empty())
        throw std::invalid_argument("bf16_peak_gflops: this CPU lacks " + bf16_missing());
    return gflops(n_threads, seconds, lane_bf16_dots);
}

}  // namespace fastdc
