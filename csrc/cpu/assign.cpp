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
// (the packed block lives in L2); inside a block the loop runs over centroid panels (one panel
// lives in L1) and then over MR-row slivers of the block. A micro-kernel computes an MR x NR
// tile of scores in registers and its epilogue folds them into a per-row, per-lane running
// (min, argmin) kept across panels; the final horizontal reduction picks the smallest value
// and, among equal values, the smallest centroid index.
//
// SIMD paths (chosen per call, see common.h): AVX-512 and AVX2 instantiate the same
// width-generic tile (assign_tile.h); the portable path is plain C++.
//
// Determinism: on a given path every score is produced by the same instruction sequence (fixed order over d)
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
#include "simd_vec.h"

namespace fastdc {
namespace {

constexpr float INF = std::numeric_limits<float>::infinity();

// Tile shapes and block sizes per path: see PATHS below for the measurements behind them.
constexpr i64 MR_GENERIC = 2;  // rows per portable tile: 2 x 16 floats = 8 SSE registers
constexpr i64 NR_GENERIC = 16;

// ---------------------------------------------------------------------------------------------
// Packing

// Packed centroids of one problem: panels [P][D][NR] (P = ceil(K / NR)) and bias [P * NR].
struct PackedCentroids {
    i64 K = 0, D = 0, P = 0;
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
//   best2: [MR][NR] running second smallest per row and lane (in/out; only with SECOND)
// Strict "<" while panels come in increasing j keeps the smallest index per lane.

template <bool SECOND>
void tile_generic(i64 D, const float* a, const float* b, const float* bias, int j0, float* best,
                  int* arg, float* best2) {
    constexpr i64 MR = MR_GENERIC, NR = NR_GENERIC;
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

using TileFn = void (*)(i64, const float*, const float*, const float*, int, float*, int*,
                        float*);

// A SIMD path: its tile shape, micro-kernels (without / with the second smallest) and bytes
// of packed x per block of rows.
struct Path {
    i64 MR, NR;
    TileFn tile, tile2;
    i64 block_bytes;
};

// The paths, indexed by Isa. Tile shapes fill the register file: avx2 6 x 16 (12 ymm
// accumulators + 2 centroid vectors + 1 broadcast = 15 of 16), avx512 12 x 32 (24 zmm
// accumulators + 2 centroid vectors; broadcasts fold into the FMA's memory operand).
// Measured on the shared 2-core KVM "AMD EPYC" (Zen 4, family 25 model 17, 1 MiB L2 per core),
// N = 100 000, D = 256, K = 1 000, 2 threads (benchmarks/results/assign_sweep_cpu.json):
// avx512 1.11 s, avx2 1.07 s, generic 4.8 s. Zen 4 splits a 512-bit FMA into two 256-bit
// halves, so both paths have the same FMA peak here and run within noise of each other; the
// default is still the widest path (AVX-512 doubles the FMA width on Intel cores).
// Block: 192 KiB of packed x stays in L2 beside the streaming centroid panels; 96-384 KiB gave
// the same speed within 2 % when the AVX2 tile was tuned on a Zen 1 VM (92-94 % of its peak).
constexpr i64 BLOCK_BYTES = 192 * 1024;
const Path PATHS[] = {
    {MR_GENERIC, NR_GENERIC, tile_generic<false>, tile_generic<true>, BLOCK_BYTES},
#if FASTDC_X86
    {6, 16, avx2::tile<6, false>, avx2::tile<6, true>, BLOCK_BYTES},
    {12, 32, avx512::tile<12, false>, avx512::tile<12, true>, BLOCK_BYTES},
#endif
};

// ---------------------------------------------------------------------------------------------
// Blocking

// Rows per block: block_bytes of packed x, but at least 4 blocks per thread so that the
// dynamic schedule balances (N = 1000 on 2 threads: 8 blocks). A multiple of MR.
i64 choose_block_rows(i64 N, i64 D, const Path& path, int n_threads) {
    i64 rows = path.block_bytes / (4 * std::max<i64>(D, 1));
    const i64 balanced = (N + 4 * n_threads - 1) / (4 * n_threads);
    rows = std::min(rows, balanced);
    return std::max(path.MR, round_up(std::max<i64>(rows, 1), path.MR));
}

// Per-thread scratch for one block of rows.
struct Scratch {
    AlignedBuffer<float> xpack, xsq, best, best2;
    AlignedBuffer<int> arg;
    Scratch(i64 rows, i64 D, i64 NR, bool second)
        : xpack(rows * D), xsq(rows), best(rows * NR), best2(second ? rows * NR : 0),
          arg(rows * NR) {}
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

// Outputs of one problem: dist, idx and (or nullptr) dist2, each [N].
struct Outputs {
    float* dist;
    i64* idx;
    float* dist2;
};

// Assign rows [row0, row0 + rows) of one problem.
void assign_block(const float* x, i64 N, i64 D, const PackedCentroids& pc, bool ip, i64 row0,
                  i64 rows, const Path& path, Scratch& s, const Outputs& out) {
    const i64 MR = path.MR, NR = path.NR;
    const bool second = out.dist2 != nullptr;
    const TileFn tile = second ? path.tile2 : path.tile;
    const i64 slivers = (rows + MR - 1) / MR;
    pack_rows(x, N, D, row0, rows, MR, s.xpack.data(), s.xsq.data());
    for (i64 t = 0; t < slivers * MR * NR; ++t) {
        s.best[t] = INF;
        s.arg[t] = 0;
        if (second) s.best2[t] = INF;
    }
    for (i64 p = 0; p < pc.P; ++p) {
        const float* panel = pc.panels + p * D * NR;
        const float* bias = pc.bias + p * NR;
        for (i64 sl = 0; sl < slivers; ++sl) {
            const i64 o = sl * MR * NR;
            tile(D, s.xpack.data() + sl * D * MR, panel, bias, static_cast<int>(p * NR),
                 s.best.data() + o, s.arg.data() + o, second ? s.best2.data() + o : nullptr);
        }
    }
    for (i64 r = 0; r < rows; ++r) {
        float v;
        const float* best = s.best.data() + r * NR;
        const i64 win = reduce_row(best, s.arg.data() + r * NR, NR, &v, out.idx + row0 + r);
        out.dist[row0 + r] = finish(v, s.xsq[r], ip);
        if (second) {
            const float v2 = reduce_second(best, s.best2.data() + r * NR, NR, win);
            out.dist2[row0 + r] = finish(v2, s.xsq[r], ip);
        }
    }
}

}  // namespace

void assign(const float* x, const float* c, i64 B, i64 N, i64 K, i64 D, bool ip, float* dist,
            i64* idx, float* dist2, int n_threads, Isa isa) {
    if (K < 1) throw std::invalid_argument("assign: need at least one centroid (K >= 1)");
    if (K > std::numeric_limits<int>::max() - 32)
        throw std::invalid_argument("assign: K must be below 2^31 - 32");
    if (B == 0 || N == 0) return;
    const int nt = clamp_threads(n_threads);
    const Path& path = PATHS[static_cast<int>(isa)];
    const i64 NR = path.NR;

    // Pack every problem's centroids once: B * P panels of [D][NR] plus biases.
    const i64 P = (K + NR - 1) / NR;
    AlignedBuffer<float> panels(B * P * D * NR), bias(B * P * NR);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 bp = 0; bp < B * P; ++bp) {
        const i64 b = bp / P, p = bp % P;
        pack_panel(c + b * K * D, K, D, p, NR, ip, panels.data() + bp * D * NR,
                   bias.data() + bp * NR);
    }

    const i64 rows = choose_block_rows(N, D, path, nt);
    const i64 blocks = (N + rows - 1) / rows;
    std::vector<Scratch*> scratch(nt, nullptr);
    try {  // allocate outside the parallel region: an exception inside it would terminate
        for (int t = 0; t < nt; ++t) scratch[t] = new Scratch(rows, D, NR, dist2 != nullptr);
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
            const Outputs out{dist + b * N, idx + b * N, dist2 ? dist2 + b * N : nullptr};
            assign_block(x + b * N * D, N, D, pc, ip, row0, std::min(rows, N - row0), path, s,
                         out);
        }
    }
    for (Scratch* s : scratch) delete s;
}

}  // namespace fastdc
