// assign: fused distance + arg-min over cache blocks (never an N x K buffer).
//
// Scores are computed GEMM-style (BLIS-like): the centroids are packed once per call into
// panels of NR = 16 centroids laid out [D][NR] and pre-scaled (L2: by -2, IP: by -1, both exact
// in floating point), so that for every row i and centroid j
//     score(i, j) = sum_d x[i,d] * cpack[j,d] + bias[j]
// with bias = ||c_j||^2 (L2) or 0 (IP), and the answer is the smallest score (IP: the largest
// inner product = -smallest score, ties resolved identically). Ragged K is padded with zero
// columns whose bias is +inf, so they never win. Rows of x are processed in blocks of MC rows
// (the packed block lives in L2); inside a block the loop runs over centroid panels (one panel
// lives in L1) and then over MR-row slivers of the block. A micro-kernel computes an MR x NR
// tile of scores in registers and its epilogue folds them into a per-row, per-lane running
// (min, argmin) kept across panels; the final horizontal reduction picks the smallest value
// and, among equal values, the smallest centroid index.
//
// Determinism: every score is produced by the same instruction sequence (fixed order over d)
// whatever the block, sliver or thread, and panels are visited in increasing j, so per-row
// results do not depend on the thread count or block sizes.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "aligned.h"
#include "common.h"
#include "kernels.h"

#if FASTDC_X86
#include <immintrin.h>
#endif

namespace fastdc {
namespace {

// Tile shape. 6 x 16 reaches 92-96 % of the FMA peak measured on one core of this Zen 1 VM
// (a loop of 12 independent ymm FMAs: 45 GFLOP/s = 16 flop/cycle at ~2.9 GHz; 84 GFLOP/s on
// 2 cores) for D = 256..1024 (87 % at D = 64 and D = 2048, 67 % at D = 16, where the epilogue
// weighs more); unrolling the d loop by 4 or software-prefetching x changed nothing (+-2 %).
constexpr i64 NR = 16;        // centroids per packed panel: two ymm registers of 8 floats
constexpr i64 MR_AVX2 = 6;    // rows per AVX2 tile: 6 x 2 = 12 ymm accumulators + 2 for the
                              // centroid vectors + 1 broadcast = 15 of the 16 ymm registers;
                              // 12 independent FMA chains cover Zen 1's 5-cycle FMA latency
constexpr i64 MR_GENERIC = 2; // rows per portable tile: 2 x 16 floats = 8 SSE registers
constexpr float INF = std::numeric_limits<float>::infinity();

// Bytes of packed x per block: 192 KiB, so the block stays in Zen 1's 512 KiB L2 beside the
// centroid panels streaming through. Measured on one core (N = 12 000, D = 256, K = 1000):
// 96, 192 and 384 KiB all give 92-94 % of the FMA peak, 48 KiB 88-93 %.
constexpr i64 BLOCK_BYTES = 192 * 1024;

// ---------------------------------------------------------------------------------------------
// Packing

// Packed centroids of one problem: panels [P][D][NR] (P = ceil(K / NR)) and bias [P * NR].
struct PackedCentroids {
    i64 K = 0, D = 0, P = 0;
    const float* panels = nullptr;  // float32 [P, D, NR], 64-byte aligned
    const float* bias = nullptr;    // float32 [P * NR]
};

// Pack panel p of c (float32 [K, D]) into out [D][NR] scaled by `scale`, and its bias [NR].
void pack_panel(const float* c, i64 K, i64 D, i64 p, bool ip, float* out, float* bias) {
    const float scale = ip ? -1.0f : -2.0f;
    for (i64 l = 0; l < NR; ++l) {
        const i64 j = p * NR + l;
        if (j >= K) {  // padding column: zeros, bias +inf (never the minimum)
            for (i64 d = 0; d < D; ++d) out[d * NR + l] = 0.0f;
            bias[l] = INF;
            continue;
        }
        const float* cj = c + j * D;
        float sq = 0.0f;
        for (i64 d = 0; d < D; ++d) {
            out[d * NR + l] = scale * cj[d];
            sq += cj[d] * cj[d];  // fixed order over d: deterministic
        }
        bias[l] = ip ? 0.0f : sq;
    }
}

// Pack rows [row0, row0 + rows) of x (float32 [N, D]) as slivers [S][D][MR], zero-padding the
// last sliver; also store each row's squared norm in xsq[rows].
void pack_rows(const float* x, i64 N, i64 D, i64 row0, i64 rows, i64 MR, float* out,
               float* xsq) {
    const i64 slivers = (rows + MR - 1) / MR;
    for (i64 s = 0; s < slivers; ++s) {
        float* sl = out + s * D * MR;
        for (i64 r = 0; r < MR; ++r) {
            const i64 i = row0 + s * MR + r;
            if (s * MR + r >= rows || i >= N) {
                for (i64 d = 0; d < D; ++d) sl[d * MR + r] = 0.0f;
                continue;
            }
            const float* xi = x + i * D;
            float sq = 0.0f;
            for (i64 d = 0; d < D; ++d) {
                sl[d * MR + r] = xi[d];
                sq += xi[d] * xi[d];
            }
            xsq[s * MR + r] = sq;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels: one MR x NR tile of scores + the running (min, argmin) update.
//   D:    feature dimension (loop length)
//   a:    packed x sliver [D][MR]
//   b:    packed centroid panel [D][NR]
//   bias: [NR] added to the dot products
//   j0:   index of the panel's first centroid
//   best: [MR][NR] running minimum per row and lane (in/out)
//   arg:  [MR][NR] centroid index of that minimum (in/out)
// Strict "<" while panels come in increasing j keeps the smallest index per lane.

void tile_generic(i64 D, const float* a, const float* b, const float* bias, int j0, float* best,
                  int* arg) {
    constexpr i64 MR = MR_GENERIC;
    float acc[MR][NR] = {};
    for (i64 d = 0; d < D; ++d) {
        for (i64 r = 0; r < MR; ++r) {
            const float av = a[d * MR + r];
            for (i64 l = 0; l < NR; ++l) acc[r][l] += av * b[d * NR + l];
        }
    }
    for (i64 r = 0; r < MR; ++r) {
        for (i64 l = 0; l < NR; ++l) {
            const float s = acc[r][l] + bias[l];
            if (s < best[r * NR + l]) {
                best[r * NR + l] = s;
                arg[r * NR + l] = j0 + static_cast<int>(l);
            }
        }
    }
}

#if FASTDC_X86
// Fold one row's two score vectors into its running (min, argmin).
FASTDC_AVX2 inline void update_row(__m256 s0, __m256 s1, __m256i j_lo, __m256i j_hi, float* best,
                                   int* arg) {
    const __m256 m0 = _mm256_load_ps(best), m1 = _mm256_load_ps(best + 8);
    const __m256 lt0 = _mm256_cmp_ps(s0, m0, _CMP_LT_OQ), lt1 = _mm256_cmp_ps(s1, m1, _CMP_LT_OQ);
    _mm256_store_ps(best, _mm256_blendv_ps(m0, s0, lt0));
    _mm256_store_ps(best + 8, _mm256_blendv_ps(m1, s1, lt1));
    const __m256 i0 = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<__m256i*>(arg)));
    const __m256 i1 = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<__m256i*>(arg + 8)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(arg),
                       _mm256_castps_si256(_mm256_blendv_ps(i0, _mm256_castsi256_ps(j_lo), lt0)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(arg + 8),
                       _mm256_castps_si256(_mm256_blendv_ps(i1, _mm256_castsi256_ps(j_hi), lt1)));
}

// 6 x 16 tile: 12 ymm accumulators; per d, 2 vector loads of b and 6 broadcasts of a.
FASTDC_AVX2 void tile_avx2(i64 D, const float* a, const float* b, const float* bias, int j0,
                           float* best, int* arg) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (i64 d = 0; d < D; ++d) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 av = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(av, b0, c00);
        c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10);
        c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20);
        c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30);
        c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40);
        c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50);
        c51 = _mm256_fmadd_ps(av, b1, c51);
        a += MR_AVX2;
        b += NR;
    }
    const __m256 bias0 = _mm256_loadu_ps(bias), bias1 = _mm256_loadu_ps(bias + 8);
    const __m256i j_lo = _mm256_add_epi32(_mm256_set1_epi32(j0),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i j_hi = _mm256_add_epi32(j_lo, _mm256_set1_epi32(8));
    update_row(_mm256_add_ps(c00, bias0), _mm256_add_ps(c01, bias1), j_lo, j_hi, best, arg);
    update_row(_mm256_add_ps(c10, bias0), _mm256_add_ps(c11, bias1), j_lo, j_hi, best + 16,
               arg + 16);
    update_row(_mm256_add_ps(c20, bias0), _mm256_add_ps(c21, bias1), j_lo, j_hi, best + 32,
               arg + 32);
    update_row(_mm256_add_ps(c30, bias0), _mm256_add_ps(c31, bias1), j_lo, j_hi, best + 48,
               arg + 48);
    update_row(_mm256_add_ps(c40, bias0), _mm256_add_ps(c41, bias1), j_lo, j_hi, best + 64,
               arg + 64);
    update_row(_mm256_add_ps(c50, bias0), _mm256_add_ps(c51, bias1), j_lo, j_hi, best + 80,
               arg + 80);
}
#endif

using TileFn = void (*)(i64, const float*, const float*, const float*, int, float*, int*);

// ---------------------------------------------------------------------------------------------
// Blocking

// Rows per block: BLOCK_BYTES of packed x, but at least 4 blocks per thread so that the
// dynamic schedule balances (N = 1000 on 2 threads: 8 blocks). A multiple of MR.
i64 choose_block_rows(i64 N, i64 D, i64 MR, int n_threads) {
    i64 rows = BLOCK_BYTES / (4 * std::max<i64>(D, 1));
    const i64 balanced = (N + 4 * n_threads - 1) / (4 * n_threads);
    rows = std::min(rows, balanced);
    return std::max(MR, round_up(std::max<i64>(rows, 1), MR));
}

// Per-thread scratch for one block of rows.
struct Scratch {
    AlignedBuffer<float> xpack, xsq, best;
    AlignedBuffer<int> arg;
    Scratch(i64 rows, i64 D) : xpack(rows * D), xsq(rows), best(rows * NR), arg(rows * NR) {}
};

// Smallest value over a row's NR lanes; among equal values the smallest centroid index.
inline void reduce_row(const float* best, const int* arg, float* value, i64* index) {
    float v = best[0];
    int j = arg[0];
    for (i64 l = 1; l < NR; ++l) {
        if (best[l] < v || (best[l] == v && arg[l] < j)) {
            v = best[l];
            j = arg[l];
        }
    }
    *value = v;
    *index = j;
}

// Assign rows [row0, row0 + rows) of one problem.
void assign_block(const float* x, i64 N, i64 D, const PackedCentroids& pc, bool ip, i64 row0,
                  i64 rows, i64 MR, TileFn tile, Scratch& s, float* dist, i64* idx) {
    const i64 slivers = (rows + MR - 1) / MR;
    pack_rows(x, N, D, row0, rows, MR, s.xpack.data(), s.xsq.data());
    for (i64 t = 0; t < slivers * MR * NR; ++t) {
        s.best[t] = INF;
        s.arg[t] = 0;
    }
    for (i64 p = 0; p < pc.P; ++p) {
        const float* panel = pc.panels + p * D * NR;
        const float* bias = pc.bias + p * NR;
        for (i64 sl = 0; sl < slivers; ++sl) {
            tile(D, s.xpack.data() + sl * D * MR, panel, bias, static_cast<int>(p * NR),
                 s.best.data() + sl * MR * NR, s.arg.data() + sl * MR * NR);
        }
    }
    for (i64 r = 0; r < rows; ++r) {
        float v;
        reduce_row(s.best.data() + r * NR, s.arg.data() + r * NR, &v, idx + row0 + r);
        if (ip) {
            v = -v;
        } else {
            v = s.xsq[r] + v;
            v = v < 0.0f ? 0.0f : v;  // clamp at 0 as the reference does (NaN stays NaN)
        }
        dist[row0 + r] = v;
    }
}

}  // namespace

void assign(const float* x, const float* c, i64 B, i64 N, i64 K, i64 D, bool ip, float* dist,
            i64* idx, int n_threads) {
    if (K < 1) throw std::invalid_argument("assign: need at least one centroid (K >= 1)");
    if (K > std::numeric_limits<int>::max() - NR)
        throw std::invalid_argument("assign: K must be below 2^31 - 16");
    if (B == 0 || N == 0) return;
    const int nt = clamp_threads(n_threads);
    const bool avx2 = has_avx2_fma();
    const i64 MR = avx2 ? MR_AVX2 : MR_GENERIC;
    TileFn tile = tile_generic;
#if FASTDC_X86
    if (avx2) tile = tile_avx2;
#endif

    // Pack every problem's centroids once: B * P panels of [D][NR] plus biases.
    const i64 P = (K + NR - 1) / NR;
    AlignedBuffer<float> panels(B * P * D * NR), bias(B * P * NR);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 bp = 0; bp < B * P; ++bp) {
        const i64 b = bp / P, p = bp % P;
        pack_panel(c + b * K * D, K, D, p, ip, panels.data() + bp * D * NR,
                   bias.data() + bp * NR);
    }

    const i64 rows = choose_block_rows(N, D, MR, nt);
    const i64 blocks = (N + rows - 1) / rows;
    std::vector<Scratch*> scratch(nt, nullptr);
    try {  // allocate outside the parallel region: an exception inside it would terminate
        for (int t = 0; t < nt; ++t) scratch[t] = new Scratch(rows, D);
    } catch (...) {
        for (Scratch* s : scratch) delete s;
        throw;
    }
#pragma omp parallel num_threads(nt)
    {
#if defined(_OPENMP)
        Scratch& s = *scratch[omp_get_thread_num()];
#else
        Scratch& s = *scratch[0];
#endif
#pragma omp for schedule(dynamic, 1)
        for (i64 task = 0; task < B * blocks; ++task) {
            const i64 b = task / blocks, blk = task % blocks;
            const PackedCentroids pc{K, D, P, panels.data() + b * P * D * NR,
                                     bias.data() + b * P * NR};
            const i64 row0 = blk * rows;
            assign_block(x + b * N * D, N, D, pc, ip, row0, std::min(rows, N - row0), MR, tile, s,
                         dist + b * N, idx + b * N);
        }
    }
    for (Scratch* s : scratch) delete s;
}

}  // namespace fastdc
