// assign: fused distance + arg-min over cache blocks (never an N x K buffer).
//
// Scores are computed GEMM-style (BLIS-like): the centroids are packed once per call into
// panels of NR centroids (two vectors: 16 on the AVX2 and portable paths, 32 on AVX-512) laid
// out [D][NR] and pre-scaled (L2: by -2, IP: by -1, both exact
// in floating point), so that for every row i and centroid j
//     score(i, j) = sum_d x[i,d] * cpack[j,d] + bias[j]
// with bias = ||c_j||^2 (L2) or 0 (IP), and the answer is the smallest score (IP: the largest
// inner product = -smallest score, ties resolved identically). Ragged K is padded with zero
// columns whose bias is +inf, so they never win. Rows of x are processed in blocks of MC rows
// (the block stays in L2); inside a block the loop runs over centroid panels (one panel lives
// in L1) and then over MR-row slivers of the block, read in place: the micro-kernel broadcasts
// each x[i,d] straight from the row (packing x into [D][MR] slivers cost about 120 ns of a
// row's 710 ns at D = 256, K = 100, one thread, Zen 4: 5.9 ms instead of 7.1 ms for 10 000
// rows, results bit for bit the same). A micro-kernel computes an MR x NR
// tile of scores in registers and its epilogue folds them into a per-row, per-lane running
// (min, argmin) kept across panels; the final horizontal reduction picks the smallest value
// and, among equal values, the smallest centroid index.
//
// SIMD paths (chosen per call, see common.h): AVX-512 and AVX2 instantiate the same
// width-generic tile (assign_tile.h); the portable path is plain C++. On CPUs with
// AVX512-BF16, a bf16 main pass (assign_bf16.h) may score first; it returns the float32 path's
// answers bit for bit.
//
// Determinism: on a given path every score is produced by the same instruction sequence (fixed order over d)
// whatever the block, sliver or thread, and panels are visited in increasing j, so per-row
// results do not depend on the thread count or block sizes.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include "aligned.h"
#include "assign_bf16.h"
#include "assign_chain.h"
#include "common.h"
#include "kernels.h"
#include "pool.h"
#include "simd_vec.h"

namespace fastdc {

// row_sq and chain_scores: see assign_chain.h. row_sq is never inlined, so that every caller
// gets the same instructions (a caller compiled for FMA could otherwise contract the products).
__attribute__((noinline)) float row_sq(const float* xi, i64 D) {
    float part[8] = {};
    i64 d = 0;
    for (; d + 8 <= D; d += 8) {
        for (int l = 0; l < 8; ++l) part[l] += xi[d + l] * xi[d + l];
    }
    for (int l = 0; d < D; ++d, ++l) part[l] += xi[d] * xi[d];
    const float low = (part[0] + part[1]) + (part[2] + part[3]);
    return low + ((part[4] + part[5]) + (part[6] + part[7]));
}

#if FASTDC_X86
static FASTDC_AVX2 void chain_scores_fma(i64 D, i64 n, const float* const* xs,
                                         const float* const* cs, const float* bias, float scale, float* out) {
    float acc[16] = {};
    for (i64 d = 0; d < D; ++d) {
        for (i64 r = 0; r < n; ++r) acc[r] = __builtin_fmaf(xs[r][d], scale * cs[r][d], acc[r]);
    }
    for (i64 r = 0; r < n; ++r) out[r] = acc[r] + bias[r];
}
#endif

void chain_scores(Isa isa, i64 D, i64 n, const float* const* xs, const float* const* cs,
                  const float* bias, float scale, float* out) {
#if FASTDC_X86
    if (isa != Isa::generic) return chain_scores_fma(D, n, xs, cs, bias, scale, out);
#endif
    float acc[16] = {};
    for (i64 d = 0; d < D; ++d) {
        for (i64 r = 0; r < n; ++r) acc[r] += xs[r][d] * (scale * cs[r][d]);
    }
    for (i64 r = 0; r < n; ++r) out[r] = acc[r] + bias[r];
}

namespace {

constexpr float INF = std::numeric_limits<float>::infinity();

// Tile shapes and block sizes per path: see PATHS below for the measurements behind them.
constexpr i64 MR_GENERIC = 2;  // rows per portable tile: 2 x 16 floats = 8 SSE registers
constexpr i64 NR_GENERIC = 16;

// ---------------------------------------------------------------------------------------------
// Packing

// Packed centroids of one problem: panels [P][D][NR] (P = ceil(K / NR)) and bias [P * NR];
// with half_last, the last panel holds at most NR / 2 centroids, packed [D][NR / 2].
struct PackedCentroids {
    i64 K = 0, D = 0, P = 0;
    bool half_last = false;
    const float* panels = nullptr;  // float32 [P, D, NR], 64-byte aligned
    const float* bias = nullptr;    // float32 [P * NR]
};

// Pack panel p of c (float32 [K, D]) into out [D][NR] scaled by `scale`, and its bias [NR].
void pack_panel(const float* c, i64 K, i64 D, i64 p, i64 NR, bool ip, float* out,
                float* bias) {
    const float scale = ip ? -1.0f : -2.0f;
    for (i64 l = 0; l < NR; ++l) {
        const i64 j = p * NR + l;
        if (j >= K) {  // padding column: zeros, bias +inf (never the minimum)
            for (i64 d = 0; d < D; ++d) out[d * NR + l] = 0.0f;
            bias[l] = INF;
            continue;
        }
        const float* cj = c + j * D;
        for (i64 d = 0; d < D; ++d) out[d * NR + l] = scale * cj[d];
        bias[l] = ip ? 0.0f : row_sq(cj, D);
    }
}

// The rows [row0, row0 + rows) of x (float32 [N, D]) as the tiles read them: each row's
// squared norm into xsq[rows], and the rows' slivers of MR rows (row r of sliver s at
// sliver(s) + r * D). Full slivers are read in place; a last sliver of fewer than MR rows is
// copied into `tail` [MR][D] with zero rows after the real ones.
struct BlockRows {
    const float* first;  // row row0 of x
    const float* tail;   // the copied last sliver, or nullptr when every sliver is full
    i64 full;            // slivers read in place
    i64 D, MR;
    const float* sliver(i64 s) const { return s < full ? first + s * MR * D : tail; }
};

BlockRows block_rows(const float* x, i64 D, i64 row0, i64 rows, i64 MR, float* tail,
                     float* xsq) {
    const float* first = x + row0 * D;
    for (i64 r = 0; r < rows; ++r) xsq[r] = row_sq(first + r * D, D);
    const i64 full = rows / MR, left = rows - full * MR;
    if (left == 0) return {first, nullptr, full, D, MR};
    std::memcpy(tail, first + full * MR * D, left * D * sizeof(float));
    std::fill(tail + left * D, tail + MR * D, 0.0f);
    return {first, tail, full, D, MR};
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels: one MR x NR tile of scores + the running (min, argmin) update.
//   D:    feature dimension (loop length)
//   a:    MR rows of x, row r at a + r * lda
//   lda:  the row stride of a (floats)
//   b:    packed centroid panel [D][NR]
//   bias: [NR] added to the dot products
//   j0:   index of the panel's first centroid
//   best: [MR][NR] running minimum per row and lane (in/out)
//   arg:  [MR][NR] centroid index of that minimum (in/out)
//   best2: [MR][NR] running second smallest per row and lane (in/out; only with SECOND)
// Strict "<" while panels come in increasing j keeps the smallest index per lane.

template <bool SECOND>
void tile_generic(i64 D, const float* a, i64 lda, const float* b, const float* bias, int j0,
                  float* best, int* arg, float* best2) {
    constexpr i64 MR = MR_GENERIC, NR = NR_GENERIC;
    float acc[MR][NR] = {};
    for (i64 d = 0; d < D; ++d) {
        for (i64 r = 0; r < MR; ++r) {
            const float av = a[r * lda + d];
            for (i64 l = 0; l < NR; ++l) acc[r][l] += av * b[d * NR + l];
        }
    }
    for (i64 r = 0; r < MR; ++r) {
        for (i64 l = 0; l < NR; ++l) {
            const float s = acc[r][l] + bias[l];
            const i64 t = r * NR + l;
            if (s < best[t]) {
                if (SECOND) best2[t] = best[t];
                best[t] = s;
                arg[t] = j0 + static_cast<int>(l);
            } else if (SECOND && s < best2[t]) {
                best2[t] = s;
            }
        }
    }
}

using TileFn = void (*)(i64, const float*, i64, const float*, const float*, int, float*, int*,
                        float*);
using ReduceFn = i64 (*)(const float*, const int*, float*, i64*);

#if FASTDC_X86
// reduce_row (below) of the AVX-512 path's 32 lanes without branches, the same answer: the
// smallest value (never NaN: the tile's strict "<" keeps NaN scores out of best), then among
// the lanes equal to it (-0 == +0) the smallest centroid index, the first such lane. The
// scalar loop's data-dependent branches cost about as much as the tiles at D = 32, K = 100.
FASTDC_AVX512 i64 reduce_row32(const float* best, const int* arg, float* value, i64* index) {
    const __m512 b0 = _mm512_load_ps(best), b1 = _mm512_load_ps(best + 16);
    const __m512 m = _mm512_set1_ps(_mm512_reduce_min_ps(_mm512_min_ps(b0, b1)));
    const __mmask16 e0 = _mm512_cmp_ps_mask(b0, m, _CMP_EQ_OQ);
    const __mmask16 e1 = _mm512_cmp_ps_mask(b1, m, _CMP_EQ_OQ);
    const __m512i a0 = _mm512_load_si512(arg), a1 = _mm512_load_si512(arg + 16);
    const __m512i none = _mm512_set1_epi32(std::numeric_limits<int>::max());
    const __m512i low = _mm512_min_epi32(_mm512_mask_blend_epi32(e0, none, a0),
                                         _mm512_mask_blend_epi32(e1, none, a1));
    const __m512i j = _mm512_set1_epi32(_mm512_reduce_min_epi32(low));
    const unsigned w0 = e0 & _mm512_cmpeq_epi32_mask(a0, j);
    const unsigned w1 = e1 & _mm512_cmpeq_epi32_mask(a1, j);
    const i64 win = w0 ? __builtin_ctz(w0) : 16 + __builtin_ctz(w1);
    *value = best[win];
    *index = arg[win];
    return win;
}

// The same reduction of the AVX2 path's 16 lanes (two ymm): the minimum by a min tree, the
// smallest index among the lanes equal to it by an integer min tree, the first such lane.
// Against the scalar loop, one thread, 2-core KVM "AMD EPYC" Zen 3 (family 25 model 1), median
// of 40 calls, 3 alternated runs each: 5000 x 32, K = 100: 0.68 -> 0.51 ms; 10000 x 64,
// K = 100: 1.94 -> 1.73 ms; 10000 x 256, K = 100: 6.65 -> 6.20 ms; K = 1000: within 1 %.
FASTDC_AVX2 inline __m256 hmin_ps(__m256 v) {
    v = _mm256_min_ps(v, _mm256_permute2f128_ps(v, v, 1));
    v = _mm256_min_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_min_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
}

FASTDC_AVX2 inline __m256i hmin_epi32(__m256i v) {
    v = _mm256_min_epi32(v, _mm256_permute2x128_si256(v, v, 1));
    v = _mm256_min_epi32(v, _mm256_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_min_epi32(v, _mm256_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
}

FASTDC_AVX2 i64 reduce_row16(const float* best, const int* arg, float* value, i64* index) {
    const __m256 b0 = _mm256_load_ps(best), b1 = _mm256_load_ps(best + 8);
    const __m256 m = hmin_ps(_mm256_min_ps(b0, b1));  // every lane: the minimum
    const __m256i e0 = _mm256_castps_si256(_mm256_cmp_ps(b0, m, _CMP_EQ_OQ));
    const __m256i e1 = _mm256_castps_si256(_mm256_cmp_ps(b1, m, _CMP_EQ_OQ));
    const __m256i a0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(arg));
    const __m256i a1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(arg + 8));
    const __m256i none = _mm256_set1_epi32(std::numeric_limits<int>::max());
    const __m256i j = hmin_epi32(_mm256_min_epi32(_mm256_blendv_epi8(none, a0, e0),
                                                  _mm256_blendv_epi8(none, a1, e1)));
    const unsigned w0 = _mm256_movemask_ps(
        _mm256_castsi256_ps(_mm256_and_si256(e0, _mm256_cmpeq_epi32(a0, j))));
    const unsigned w1 = _mm256_movemask_ps(
        _mm256_castsi256_ps(_mm256_and_si256(e1, _mm256_cmpeq_epi32(a1, j))));
    const i64 win = w0 ? __builtin_ctz(w0) : 8 + __builtin_ctz(w1);
    *value = best[win];
    *index = arg[win];
    return win;
}
#endif

// A SIMD path: its tile shape, micro-kernels (without / with the second smallest) and bytes
// of x per block of rows.
struct Path {
    i64 MR, NR;
    TileFn tile, tile2;
    i64 block_bytes;
    TileFn half, half2;  // the tiles of a half-width last panel (nullptr: the path has none)
    ReduceFn reduce;     // reduce_row for this NR (nullptr: the scalar loop)
};

// The paths, indexed by Isa. Tile shapes fill the register file: avx2 6 x 16 (12 ymm
// accumulators + 2 centroid vectors + 1 broadcast = 15 of 16), avx512 12 x 32 (24 zmm
// accumulators + 2 centroid vectors; broadcasts fold into the FMA's memory operand).
// Measured on the shared 2-core KVM "AMD EPYC" (Zen 4, family 25 model 17, 1 MiB L2 per core),
// N = 100 000, D = 256, K = 1 000, 2 threads (benchmarks/results/assign_sweep_cpu.json):
// avx512 1.11 s, avx2 1.07 s, generic 4.8 s. Zen 4 splits a 512-bit FMA into two 256-bit
// halves, so both paths have the same FMA peak here and run within noise of each other; the
// default is still the widest path (AVX-512 doubles the FMA width on Intel cores).
// Block: 192 KiB of x stays in L2 beside the streaming centroid panels; 96-384 KiB gave
// the same speed within 2 % when the AVX2 tile was tuned on a Zen 1 VM (92-94 % of its peak).
constexpr i64 BLOCK_BYTES = 192 * 1024;
const Path PATHS[] = {
    {MR_GENERIC, NR_GENERIC, tile_generic<false>, tile_generic<true>, BLOCK_BYTES, nullptr,
     nullptr, nullptr},
#if FASTDC_X86
    {6, 16, avx2::tile<6, false>, avx2::tile<6, true>, BLOCK_BYTES, avx2::tile<6, false, 1>,
     avx2::tile<6, true, 1>, reduce_row16},
    {12, 32, avx512::tile<12, false>, avx512::tile<12, true>, BLOCK_BYTES,
     avx512::tile<12, false, 1>, avx512::tile<12, true, 1>, reduce_row32},
#endif
};

// ---------------------------------------------------------------------------------------------
// Blocking

// Threads that pack `elements` floats of centroids: one below PACK_PARALLEL (K = 100, D = 256
// packs in a few microseconds, less than handing the work to another thread).
constexpr i64 PACK_PARALLEL = 1 << 18;
int pack_threads(i64 elements, int n_threads) { return elements < PACK_PARALLEL ? 1 : n_threads; }

// Rows per block: block_bytes of x, but at least 4 blocks per thread so that the
// dynamic schedule balances (N = 1000 on 2 threads: 8 blocks). A multiple of MR.
i64 choose_block_rows(i64 N, i64 D, const Path& path, int n_threads) {
    i64 rows = path.block_bytes / (4 * std::max<i64>(D, 1));
    const i64 balanced = (N + 4 * n_threads - 1) / (4 * n_threads);
    rows = std::min(rows, balanced);
    return std::max(path.MR, round_up(std::max<i64>(rows, 1), path.MR));
}

// Per-thread scratch for one block of rows (tail: a last sliver of fewer than MR rows).
struct Scratch {
    AlignedBuffer<float> tail, xsq, best, best2;
    AlignedBuffer<int> arg;
    Scratch(i64 rows, i64 D, i64 MR, i64 NR, bool second)
        : tail(MR * D), xsq(rows), best(round_up(rows, MR) * NR),
          best2(second ? round_up(rows, MR) * NR : 0), arg(round_up(rows, MR) * NR) {}
};

// Smallest value over a row's NR lanes; among equal values the smallest centroid index.
// Returns the winning lane.
inline i64 reduce_row(const float* best, const int* arg, i64 NR, float* value, i64* index) {
    i64 win = 0;
    for (i64 l = 1; l < NR; ++l) {
        if (best[l] < best[win] || (best[l] == best[win] && arg[l] < arg[win])) win = l;
    }
    *value = best[win];
    *index = arg[win];
    return win;
}

// Second smallest score of a row: the smallest of every lane's second and of the other
// lanes' minima (2-of-NR reduction).
inline float reduce_second(const float* best, const float* best2, i64 NR, i64 win) {
    float v = INF;
    for (i64 l = 0; l < NR; ++l) {
        v = std::min(v, best2[l]);
        if (l != win) v = std::min(v, best[l]);
    }
    return v;
}

// Final distance from a row's smallest score: IP: the inner product; L2: ||x||^2 + score,
// clamped at 0 as the reference does (NaN stays NaN; +inf stays +inf).
inline float finish(float score, float xsq, bool ip) {
    if (ip) return -score;
    const float v = xsq + score;
    return v < 0.0f ? 0.0f : v;
}

// A bound on a final distance from a lower bound on its score (double): L2: ||x||^2 + score
// rounded down and clamped at 0 (a lower bound of the distance); IP: -score rounded up (an upper
// bound of the inner product). NaN stays NaN.
inline float finish_bound(double score, float xsq, bool ip) {
    const double v = ip ? -score : static_cast<double>(xsq) + score;
    float f = static_cast<float>(v);
    if (ip ? f < v : f > v) f = std::nextafter(f, ip ? INF : -INF);
    return !ip && f < 0.0f ? 0.0f : f;
}

// Outputs of one problem: dist, idx and (or nullptr) dist2, each [N].
struct Outputs {
    float* dist;
    i64* idx;
    float* dist2;
};

// Assign rows [row0, row0 + rows) of one problem.
void assign_block(const float* x, i64 D, const PackedCentroids& pc, bool ip, i64 row0, i64 rows,
                  const Path& path, Scratch& s, const Outputs& out) {
    const i64 MR = path.MR, NR = path.NR;
    const bool second = out.dist2 != nullptr;
    const TileFn full = second ? path.tile2 : path.tile;
    const i64 slivers = (rows + MR - 1) / MR;
    const BlockRows xr = block_rows(x, D, row0, rows, MR, s.tail.data(), s.xsq.data());
    for (i64 t = 0; t < slivers * MR * NR; ++t) {
        s.best[t] = INF;
        s.arg[t] = 0;
        if (second) s.best2[t] = INF;
    }
    for (i64 p = 0; p < pc.P; ++p) {
        const float* panel = pc.panels + p * D * NR;
        const float* bias = pc.bias + p * NR;
        const TileFn tile = pc.half_last && p == pc.P - 1 ? (second ? path.half2 : path.half)
                                                          : full;
        for (i64 sl = 0; sl < slivers; ++sl) {
            const i64 o = sl * MR * NR;
            tile(D, xr.sliver(sl), D, panel, bias, static_cast<int>(p * NR), s.best.data() + o,
                 s.arg.data() + o, second ? s.best2.data() + o : nullptr);
        }
    }
    for (i64 r = 0; r < rows; ++r) {
        float v;
        const float* best = s.best.data() + r * NR;
        const int* arg = s.arg.data() + r * NR;
        const i64 win = path.reduce ? path.reduce(best, arg, &v, out.idx + row0 + r)
                                    : reduce_row(best, arg, NR, &v, out.idx + row0 + r);
        out.dist[row0 + r] = finish(v, s.xsq[r], ip);
        if (second) {
            const float v2 = reduce_second(best, s.best2.data() + r * NR, NR, win);
            out.dist2[row0 + r] = finish(v2, s.xsq[r], ip);
        }
    }
}

#if FASTDC_X86
// ---------------------------------------------------------------------------------------------
// The bf16 main pass (assign_bf16.h): bf16 scores leave each row a few candidates, whose
// float32 scores (bit for bit the float32 path's) pick the winner; rows with too many
// candidates are assigned by the float32 path. The answers are the float32 path's, bit for bit.

namespace bf = avx512bf16;

// The thread's later blocks go straight to float32 once the rows the bf16 pass cannot settle
// (their candidates overflow the list) cost more than it saves: a block costs about BF16_COST
// (the bf16 tile runs about 1.8x the float32 one; Zen 4, see PATHS) plus its rows scored in
// float32, against 1 for float32 alone. Not with dist2: which rows get the exact second best
// (rather than a bound) must not depend on which thread ran which block.
constexpr double BF16_COST = 0.6;
constexpr double MAX_RECHECK_COST = 0.9;

// One problem's operands of the bf16 pass. L2 scores are shifted by a per-row constant when
// x and the centroids are both centred on mu (here the centroids' mean): the arg-min is the
// same, and the bound (assign_bf16.h) then scales with the centred norms, far smaller than the
// raw ones on data away from the origin. IP scores are not centred (mu = 0).
struct Bf16Problem {
    std::vector<float> mu;                // [D]
    AlignedBuffer<std::uint32_t> panels;  // [P][D2][NR] bf16 pairs of -2 (c - mu) (IP: -c)
    AlignedBuffer<float> bias;            // [P * NR] |c - mu|^2 (IP: 0); padding +inf
    bf::BoundTerms terms;
};

// c (float32 [K, D]) centred (L2) and packed; the bound's centroid terms.
void prepare_bf16(const float* c, i64 K, i64 D, bool ip, int nt, Bf16Problem& out) {
    const i64 P = (K + bf::NR - 1) / bf::NR, D2 = (D + 1) / 2;
    std::vector<double> mean(D, 0.0);
    for (i64 j = 0; j < K && !ip; ++j)
        for (i64 d = 0; d < D; ++d) mean[d] += c[j * D + d];
    out.mu.assign(D, 0.0f);
    for (i64 d = 0; d < D; ++d) out.mu[d] = static_cast<float>(mean[d] / K);
    std::vector<float> centred(K * D);
    for (i64 i = 0; i < K * D; ++i) centred[i] = c[i] - out.mu[i % D];
    out.panels.reset(P * D2 * bf::NR);
    out.bias.reset(P * bf::NR);
    const float scale = ip ? -1.0f : -2.0f;
    parallel_for(P * bf::NR, pack_threads(K * D, nt), [&](i64 j, int) {
        const i64 p = j / bf::NR, l = j % bf::NR;
        std::uint32_t* panel = out.panels.data() + p * D2 * bf::NR + l;
        const float* cj = centred.data() + j * D;
        for (i64 q = 0; q < D2; ++q) {
            panel[q * bf::NR] = j >= K ? 0u : bf::pair(scale * cj[2 * q],
                                                       2 * q + 1 < D ? scale * cj[2 * q + 1] : 0.0f);
        }
        out.bias[j] = j >= K ? INF : ip ? 0.0f : row_sq(cj, D);
    });
    bf::BoundTerms& t = out.terms;
    t.D = D;
    t.scale = ip ? 1.0 : 2.0;
    for (i64 j = 0; j < K; ++j) {
        double n, r, raw, unused;
        bf::norms(centred.data() + j * D, D, &n, &r);
        bf::norms(c + j * D, D, &raw, &unused);
        t.cmax = std::max(t.cmax, n);
        t.clmax = std::max(t.clmax, r);
        t.bmax = std::max(t.bmax, n * n);
        t.raw_cmax = std::max(t.raw_cmax, raw);
    }
}

// Per-thread scratch of the bf16 pass: packed bf16 rows, each row's bound and candidate state
// (assign_bf16.h), and the float32 path's scratch and buffers for the rows it scores.
struct Bf16Scratch {
    AlignedBuffer<std::uint32_t> xpack;
    AlignedBuffer<std::uint16_t> row;  // one row in bf16
    AlignedBuffer<float> best, limit, score, rejected, dropped, exact, pair_score, full_x,
        full_dist, full_dist2;
    AlignedBuffer<int> count, cand, pair_cand;
    AlignedBuffer<i64> full_idx, first, pair_row;
    std::vector<double> bound, twice_bound;  // per row: E and 2E
    std::vector<i64> full;                   // block rows scored by the float32 path
    Scratch fp32;
    i64 seen = 0, rechecked = 0, scored_full = 0;  // rows of this thread's bf16 blocks so far
    i64 float32_only = 0;                           // rows of its blocks done in float32 only
    Bf16Scratch(i64 rows, i64 D, bool second)
        : xpack(round_up(rows, bf::MR) * ((D + 1) / 2)), row(round_up(D, bf::W)),
          best(round_up(rows, bf::MR)), limit(round_up(rows, bf::MR)),
          score(round_up(rows, bf::MR) * bf::CAP), rejected(round_up(rows, bf::MR) * bf::NR),
          dropped(round_up(rows, bf::MR)), exact(rows * bf::CAP), pair_score(rows * bf::CAP),
          full_x(rows * D),
          full_dist(rows), full_dist2(second ? rows : 0), count(round_up(rows, bf::MR)),
          cand(round_up(rows, bf::MR) * bf::CAP), pair_cand(rows * bf::CAP), full_idx(rows),
          first(rows + 1), pair_row(rows * bf::CAP),
          bound(round_up(rows, bf::MR)), twice_bound(round_up(rows, bf::MR)),
          fp32(rows, D, PATHS[static_cast<int>(Isa::avx512)].MR, bf::NR, second) {}

    bf::RowState state() {
        return {best.data(), limit.data(), twice_bound.data(), count.data(), cand.data(),
                score.data(), rejected.data(), dropped.data()};
    }
};

// Pack rows [row0, row0 + rows) of x as bf16 pair slivers [S][D2][MR], store each row's bound
// and reset its candidate state (padding rows: limit -inf, never a candidate).
void pack_rows_bf16(const float* x, i64 D, i64 row0, i64 rows, const Bf16Problem& pb,
                    Bf16Scratch& s) {
    const i64 D2 = (D + 1) / 2, slivers = (rows + bf::MR - 1) / bf::MR;
    std::uint16_t* row = s.row.data();
    std::uint32_t pairs[1];
    std::fill(s.rejected.data(), s.rejected.data() + slivers * bf::MR * bf::NR, INF);
    for (i64 sl = 0; sl < slivers; ++sl) {
        std::uint32_t* out = s.xpack.data() + sl * D2 * bf::MR;
        for (i64 r = 0; r < bf::MR; ++r) {
            const i64 k = sl * bf::MR + r;
            s.best[k] = s.dropped[k] = INF;
            s.count[k] = 0;
            s.limit[k] = k < rows ? INF : -INF;
            if (k >= rows) {
                for (i64 q = 0; q < D2; ++q) out[q * bf::MR + r] = 0u;
                continue;
            }
            double raw, n, l;
            bf::convert_row(x + (row0 + k) * D, pb.mu.data(), D, row, &raw, &n, &l);
            for (i64 q = 0; q < D2; ++q) {
                std::memcpy(pairs, row + 2 * q, sizeof pairs);
                out[q * bf::MR + r] = pairs[0];
            }
            s.bound[k] = bf::bound_of(pb.terms, raw, n, l);
            s.twice_bound[k] = 2.0 * s.bound[k];
        }
    }
}

// The block's (row, candidate) pairs: row k's candidates still within its final limit go to
// s.pair_row / s.pair_cand from s.first[k] (s.first[rows] ends the list); the others fold into
// s.dropped[k]. Rows with none (the list overflowed, or NaN scores) go to s.full.
void gather_candidates(i64 rows, Bf16Scratch& s) {
    s.full.clear();
    i64 n = 0;
    for (i64 k = 0; k < rows; ++k) {
        s.first[k] = n;
        const i64 m = s.count[k];
        if (m < 1 || m > bf::CAP) {
            s.full.push_back(k);
            continue;
        }
        for (i64 e = 0; e < m; ++e) {
            const float sc = s.score[k * bf::CAP + e];
            if (sc <= s.limit[k]) {
                s.pair_row[n] = k;
                s.pair_score[n] = sc;
                s.pair_cand[n++] = s.cand[k * bf::CAP + e];
            } else {
                s.dropped[k] = std::min(s.dropped[k], sc);
            }
        }
        if (n == s.first[k]) s.full.push_back(k);
    }
    s.first[rows] = n;
}

// Each row's answer from its candidates: their float32 scores, bit for bit the float32 path's
// (chain_scores, 16 pairs at a time), the smallest wins (the first on a tie: candidates ascend
// in j). With out.dist2, a bound on the second best: the other candidates' scores, and every
// centroid not kept has a bf16 score >= the smallest rejected one.
void decide_rows(const float* x, const float* c, i64 D, const float* bias, bool ip, i64 row0,
                 i64 rows, Bf16Scratch& s, const Outputs& out) {
    const i64 pairs = s.first[rows];
    for (i64 g = 0; g < pairs; g += 16) {
        const i64 n = std::min<i64>(16, pairs - g);
        const float* xs[16];
        const float* cs[16];
        float b[16];
        for (i64 e = 0; e < n; ++e) {
            xs[e] = x + (row0 + s.pair_row[g + e]) * D;
            cs[e] = c + static_cast<i64>(s.pair_cand[g + e]) * D;
            b[e] = bias[s.pair_cand[g + e]];
        }
        chain_scores(Isa::avx512, D, n, xs, cs, b, ip ? -1.0f : -2.0f, s.exact.data() + g);
    }
    for (i64 k = 0; k < rows; ++k) {
        const i64 lo = s.first[k], hi = s.first[k + 1];
        if (lo == hi) continue;
        i64 w = lo;
        for (i64 e = lo + 1; e < hi; ++e) w = s.exact[e] < s.exact[w] ? e : w;
        const float xsq = row_sq(x + (row0 + k) * D, D);
        out.idx[row0 + k] = s.pair_cand[w];
        out.dist[row0 + k] = finish(s.exact[w], xsq, ip);
        s.rechecked += hi - lo > 1;
        if (!out.dist2) continue;
        float rejected = s.dropped[k];
        for (i64 l = 0; l < bf::NR; ++l) rejected = std::min(rejected, s.rejected[k * bf::NR + l]);
        // Bf16 scores are off their float32 counterparts (plus the row's centring shift) by at
        // most E, so a centroid not kept has a float32 score >= the winner's + (rejected - its
        // bf16 score) - 2E.
        double lower = static_cast<double>(s.exact[w]) + rejected - s.pair_score[w] -
                       2.0 * s.bound[k];
        for (i64 e = lo; e < hi; ++e) lower = e == w ? lower : std::min<double>(lower, s.exact[e]);
        out.dist2[row0 + k] = finish_bound(lower, xsq, ip);
    }
}

// Rows s.full of the block, gathered and assigned by the float32 path.
void score_full(const float* x, i64 D, const PackedCentroids& pc, bool ip, i64 row0,
                const Path& path, Bf16Scratch& s, const Outputs& out) {
    const i64 n = static_cast<i64>(s.full.size());
    if (n == 0) return;
    for (i64 r = 0; r < n; ++r)
        std::memcpy(s.full_x.data() + r * D, x + (row0 + s.full[r]) * D, D * sizeof(float));
    const Outputs part{s.full_dist.data(), s.full_idx.data(),
                       out.dist2 ? s.full_dist2.data() : nullptr};
    assign_block(s.full_x.data(), D, pc, ip, 0, n, path, s.fp32, part);
    for (i64 r = 0; r < n; ++r) {
        out.dist[row0 + s.full[r]] = s.full_dist[r];
        out.idx[row0 + s.full[r]] = s.full_idx[r];
        if (out.dist2) out.dist2[row0 + s.full[r]] = s.full_dist2[r];
    }
}

// assign_block through the bf16 pass. c: the problem's unpacked centroids; cb: its bf16 panels.
void assign_block_bf16(const float* x, const float* c, i64 D, const PackedCentroids& pc,
                       const Bf16Problem& pb, bool ip, i64 row0, i64 rows, const Path& path,
                       Bf16Scratch& s, const Outputs& out) {
    const double cost = BF16_COST * s.seen + s.scored_full;
    if (!out.dist2 && s.seen > 0 && cost > MAX_RECHECK_COST * s.seen) {
        assign_block(x, D, pc, ip, row0, rows, path, s.fp32, out);
        s.float32_only += rows;
        return;
    }
    const i64 D2 = (D + 1) / 2, NR = bf::NR, slivers = (rows + bf::MR - 1) / bf::MR;
    pack_rows_bf16(x, D, row0, rows, pb, s);
    bf::RowState state = s.state();
    for (i64 p = 0; p < pc.P; ++p) {
        for (i64 sl = 0; sl < slivers; ++sl) {
            bf::tile(D2, s.xpack.data() + sl * D2 * bf::MR, pb.panels.data() + p * D2 * NR,
                     pb.bias.data() + p * NR, static_cast<int>(p * NR), sl * bf::MR, state);
        }
    }
    gather_candidates(rows, s);
    decide_rows(x, c, D, pc.bias, ip, row0, rows, s, out);
    score_full(x, D, pc, ip, row0, path, s, out);
    s.seen += rows;
    s.scored_full += static_cast<i64>(s.full.size());
}
#endif

}  // namespace

i64 assign(const float* x, const float* c, i64 B, i64 N, i64 K, i64 D, bool ip, float* dist,
           i64* idx, float* dist2, int n_threads, Isa isa, bool bf16) {
    if (K < 1) throw std::invalid_argument("assign: need at least one centroid (K >= 1)");
    if (K > std::numeric_limits<int>::max() - 32)
        throw std::invalid_argument("assign: K must be below 2^31 - 32");
    if (bf16 && (isa != Isa::avx512 || !bf16_missing().empty()))
        throw std::invalid_argument("assign: the bf16 pass needs the avx512 path and a CPU with "
                                    "avx512_bf16 (missing: " + bf16_missing() + ")");
    if (B == 0 || N == 0) return 0;
    const int nt = clamp_threads(n_threads);
    const Path& path = PATHS[static_cast<int>(isa)];
    const i64 NR = path.NR;

    // Pack every problem's centroids once: B * P panels of [D][NR] plus biases; a last panel
    // of at most NR / 2 centroids is packed at half width where the path has a half tile
    // (K = 100 on AVX-512: 112 lanes computed instead of 128).
    const i64 P = (K + NR - 1) / NR;
    const bool half_last = path.half != nullptr && K - (P - 1) * NR <= NR / 2;
    AlignedBuffer<float> panels(B * P * D * NR), bias(B * P * NR);
    parallel_for(B * P, pack_threads(B * K * D, nt), [&](i64 bp, int) {
        const i64 b = bp / P, p = bp % P;
        const i64 nr = half_last && p == P - 1 ? NR / 2 : NR;
        pack_panel(c + b * K * D, K, D, p * NR / nr, nr, ip, panels.data() + bp * D * NR,
                   bias.data() + bp * NR);
    });

    const i64 rows = choose_block_rows(N, D, path, nt);
    const i64 blocks = (N + rows - 1) / rows;
    const auto run = [&](auto make_scratch, auto block) {
        using S = typename decltype(make_scratch())::element_type;
        std::vector<std::unique_ptr<S>> scratch;
        for (int t = 0; t < nt; ++t) scratch.push_back(make_scratch());
        parallel_for(B * blocks, nt, [&](i64 task, int slot) {
            const i64 b = task / blocks, row0 = (task % blocks) * rows;
            const PackedCentroids pc{K, D, P, half_last, panels.data() + b * P * D * NR,
                                     bias.data() + b * P * NR};
            const Outputs out{dist + b * N, idx + b * N, dist2 ? dist2 + b * N : nullptr};
            block(*scratch[slot], b, pc, row0, std::min(rows, N - row0), out);
        });
        return scratch;
    };
#if FASTDC_X86
    if (bf16) {
        std::vector<Bf16Problem> problems(B);
        for (i64 b = 0; b < B; ++b) prepare_bf16(c + b * K * D, K, D, ip, nt, problems[b]);
        const auto scratch = run(
            [&] { return std::make_unique<Bf16Scratch>(rows, D, dist2 != nullptr); },
            [&](Bf16Scratch& s, i64 b, const PackedCentroids& pc, i64 row0, i64 n,
                const Outputs& out) {
                assign_block_bf16(x + b * N * D, c + b * K * D, D, pc, problems[b], ip, row0,
                                  n, path, s, out);
            });
        i64 unsettled = 0;
        for (const auto& s : scratch) unsettled += s->rechecked + s->scored_full + s->float32_only;
        return unsettled;
    }
#endif
    run([&] { return std::make_unique<Scratch>(rows, D, path.MR, NR, dist2 != nullptr); },
        [&](Scratch& s, i64 b, const PackedCentroids& pc, i64 row0, i64 n, const Outputs& out) {
            assign_block(x + b * N * D, D, pc, ip, row0, n, path, s, out);
        });
    return 0;
}

void assign_dist(const float* x, const float* c, const i64* idx, i64 B, i64 N, i64 K, i64 D,
                 bool ip, float* dist, int n_threads, Isa isa) {
    for (i64 i = 0; i < B * N; ++i) {
        if (idx[i] < 0 || idx[i] >= K)
            throw std::invalid_argument("assign_dist: idx out of [0, K)");
    }
    const int nt = clamp_threads(n_threads);
    const i64 groups = (B * N + 15) / 16;
    parallel_for(groups, nt, [&](i64 g, int) {
        const i64 first = g * 16, n = std::min<i64>(16, B * N - first);
        const float* xs[16];
        const float* cs[16];
        float bias[16], score[16];
        for (i64 r = 0; r < n; ++r) {
            const i64 i = first + r, b = i / N;
            xs[r] = x + i * D;
            cs[r] = c + (b * K + idx[i]) * D;
            bias[r] = ip ? 0.0f : row_sq(cs[r], D);
        }
        chain_scores(isa, D, n, xs, cs, bias, ip ? -1.0f : -2.0f, score);
        for (i64 r = 0; r < n; ++r) dist[first + r] = finish(score[r], row_sq(xs[r], D), ip);
    });
}

std::string bf16_missing() {
#if FASTDC_X86
    std::string missing = isa_missing(Isa::avx512);
    if (!__builtin_cpu_supports("avx512bw")) missing += " avx512bw";
    if (!__builtin_cpu_supports("avx512bf16")) missing += " avx512_bf16";
    return missing.size() && missing[0] == ' ' ? missing.substr(1) : missing;
#else
    return "x86-64";
#endif
}

}  // namespace fastdc
