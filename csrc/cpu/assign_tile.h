// Width-generic micro-kernel of assign (see assign.cpp), included once per x86 SIMD path, so
// that the AVX-512 instance is the same code as the AVX2 one at twice the width.
//
// Before each inclusion the includer defines FASTDC_TILE_TARGET (the function attribute that
// enables the path's instructions) and opens the path's namespace, where Vec names
// its struct of simd_vec.h, which holds the vector operations on W floats: F (float vector), I (int32 vector),
// M (lane mask), load/store (aligned), loadu/storeu, loadi/storei, set1, zero, fmadd, add, min, lt
// (s < m per lane), blend/blendi (take the second argument where the mask is set), iota
// (j, j+1, ...). No include guard: each inclusion defines products<MR, NV>,
// tile<MR, SECOND, NV>, scores<MR, NV> and fma_chains<REGS> in the includer's namespace.

// Fold a vector of W scores of centroids j.. into a row's running per-lane (min, argmin) and,
// with SECOND, the per-lane second smallest (the old minimum when s wins, else min(s, second):
// a tie with the minimum makes it the second). Strict "<" while panels come in increasing j
// keeps the smallest index per lane.
template <bool SECOND>
FASTDC_TILE_TARGET inline void update(typename Vec::F s, typename Vec::I j, float* best,
                                      int* arg, float* best2) {
    const typename Vec::F m = Vec::load(best);
    const typename Vec::M lt = Vec::lt(s, m);
    Vec::store(best, Vec::blend(lt, m, s));
    Vec::storei(arg, Vec::blendi(lt, Vec::loadi(arg), j));
    if (SECOND) Vec::store(best2, Vec::blend(lt, Vec::min(Vec::load(best2), s), m));
}

// The MR x NR products of MR rows of x (row r at a + r * lda, read in place: no packing) and
// a centroid panel b [D][NR] (NR = NV W), each lane one FMA chain from zero in d order: per d,
// NV vector loads of b and MR broadcasts from the rows. Inlined into tile and scores, so both
// score a pair with the same bits.
template <int MR, int NV>
FASTDC_TILE_TARGET inline __attribute__((always_inline)) void products(
    i64 D, const float* a, i64 lda, const float* b, typename Vec::F (&acc)[MR][NV]) {
    constexpr int W = Vec::W, NR = NV * W;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = Vec::zero();
    for (i64 d = 0; d < D; ++d) {
        typename Vec::F bv[NV];
        for (int v = 0; v < NV; ++v) bv[v] = Vec::load(b + v * W);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const typename Vec::F av = Vec::set1(a[r * lda + d]);
            for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fmadd(av, bv[v], acc[r][v]);
        }
        b += NR;
    }
}

// One MR x NR tile of scores (NR = NV W: NV = 2 for the full panels, 1 for a half-width last
// panel) in NV MR vector accumulators (products), then the epilogue; arguments as tile_generic
// in assign.cpp. Each lane's chain is the same whatever NV, so a centroid scores the same bits
// in a full or a half panel.
template <int MR, bool SECOND, int NV = 2>
FASTDC_TILE_TARGET void tile(i64 D, const float* a, i64 lda, const float* b, const float* bias,
                             int j0, float* best, int* arg, float* best2) {
    constexpr int W = Vec::W;
    typename Vec::F acc[MR][NV];
    products<MR, NV>(D, a, lda, b, acc);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        const i64 o = r * 2 * W;  // the running minima keep the full panel's width
        for (int v = 0; v < NV; ++v) {
            update<SECOND>(Vec::add(acc[r][v], Vec::loadu(bias + v * W)), Vec::iota(j0 + v * W),
                           best + o + v * W, arg + o + v * W, best2 + o + v * W);
        }
    }
}

// The same MR x NR scores without the epilogue, for knn (knn.cpp): out[r * NR + l] = the
// chain of tile's lane l (from zero, one FMA per d, then + bias[l]), so both kernels score a
// pair with the same bits on a path, and each lane the same on every path's width.
template <int MR, int NV = 2>
FASTDC_TILE_TARGET void scores(i64 D, const float* a, i64 lda, const float* b,
                               const float* bias, float* out) {
    constexpr int W = Vec::W, NR = NV * W;
    typename Vec::F acc[MR][NV];
    products<MR, NV>(D, a, lda, b, acc);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v)
            Vec::storeu(out + r * NR + v * W, Vec::add(acc[r][v], Vec::loadu(bias + v * W)));
    }
}

// FMA throughput yardstick of this path (fma_peak.cpp): REGS independent chains
// v = v * m + a (as many as the tile has accumulators), run by run(seconds, step) until
// `seconds` have passed. Returns the lane FMAs done; stores a value of the chains in *sink so
// that the loop is kept.
template <int REGS, typename Run>
FASTDC_TILE_TARGET i64 fma_chains(double seconds, float* sink, Run run) {
    alignas(64) float state[REGS][Vec::W];
    for (auto& lanes : state)
        for (float& v : lanes) v = 1.0f;
    // The chains live in registers for a whole step: the state goes through memory only between
    // steps of `inner` iterations.
    const i64 n = run(seconds, [&](i64 inner) FASTDC_TILE_TARGET {
        const typename Vec::F m = Vec::set1(0.999999f), add = Vec::set1(1e-6f);
        typename Vec::F acc[REGS];
#pragma GCC unroll 32
        for (int r = 0; r < REGS; ++r) acc[r] = Vec::load(state[r]);
        for (i64 i = 0; i < inner; ++i) {
#pragma GCC unroll 32
            for (int r = 0; r < REGS; ++r) acc[r] = Vec::fmadd(acc[r], m, add);
        }
#pragma GCC unroll 32
        for (int r = 0; r < REGS; ++r) Vec::store(state[r], acc[r]);
    });
    *sink = state[0][0];
    return n * REGS * Vec::W;
}
