// knn: fused distance + top-k per row over cache blocks (never an N x M buffer).
//
// The database y is packed once per call into panels of NR rows laid out [D][NR] and
// scaled by -2 (L2) or -1 (IP), with bias ||y_j||^2 (L2) or 0 (IP), so that
//     score(i, j) = sum_d x[i,d] * ypack[j,d] + bias[j]
// and the k best rows are the k smallest scores (the packing idea of assign.cpp). Rows of x
// are processed in blocks (kept in L2) and read in place; inside a block the loop runs over
// y panels and MR-row slivers. A micro-kernel writes an MR x NR tile of scores to a small
// buffer, and each row folds its NR scores into its own sorted list of k (score, index)
// pairs: a score enters only when it beats the current k-th one (one compare for most
// scores once the list has filled), then is inserted by shifting the worse entries. The x86
// tiles are assign's width-generic ones without their epilogue (assign_tile.h: scores), 12 x 32
// on AVX-512 and 6 x 16 on AVX2, so every lane's chain, and the result, is the same on both.
//
// Determinism and ties: every score is produced by the same instruction sequence whatever
// the block, sliver or thread, and panels are visited in increasing j with strict "<", so an
// equal score never displaces an earlier (smaller) index and results do not depend on the
// thread count.

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "aligned.h"
#include "common.h"
#include "kernels.h"
#include "pool.h"
#include "simd_vec.h"

namespace fastdc {
namespace {

constexpr i64 NR_GENERIC = 16;  // database rows per packed panel of the portable tile
constexpr i64 MR_GENERIC = 2;   // query rows per portable tile
constexpr i64 MR_MAX = 12, NR_MAX = 32;  // the largest tile (AVX-512)
constexpr i64 BLOCK_BYTES = 192 * 1024;  // x per block, kept in L2
constexpr float INF = std::numeric_limits<float>::infinity();

// Pack panel p of y (float32 [M, D]) into out [D][NR] scaled for the metric, and its bias.
void pack_panel(const float* y, i64 M, i64 D, i64 p, i64 NR, bool ip, float* out,
                float* bias) {
    const float scale = ip ? -1.0f : -2.0f;
    for (i64 l = 0; l < NR; ++l) {
        const i64 j = p * NR + l;
        float sq = 0.0f;
        for (i64 d = 0; d < D; ++d) {
            const float v = j < M ? y[j * D + d] : 0.0f;
            out[d * NR + l] = scale * v;
            sq += v * v;
        }
        bias[l] = j >= M ? INF : (ip ? 0.0f : sq);  // padding rows never enter a list
    }
}

// Squared norms of rows [row0, row0 + rows) of x into xsq, and a last sliver of fewer than MR
// rows copied into tail [MR][D] with zero rows after the real ones (full slivers are read in
// place). Returns the number of full slivers.
i64 block_rows(const float* x, i64 D, i64 row0, i64 rows, i64 MR, float* tail, float* xsq) {
    const float* first = x + row0 * D;
    for (i64 r = 0; r < rows; ++r) {
        float sq = 0.0f;
        for (i64 d = 0; d < D; ++d) sq += first[r * D + d] * first[r * D + d];
        xsq[r] = sq;
    }
    const i64 full = rows / MR, left = rows - full * MR;
    if (left > 0) {
        std::copy(first + full * MR * D, first + rows * D, tail);
        std::fill(tail + left * D, tail + MR * D, 0.0f);
    }
    return full;
}

// MR x NR tile of scores: out[r * NR + l] = sum_d a[r * lda + d] * b[d * NR + l] + bias[l].
void tile_generic(i64 D, const float* a, i64 lda, const float* b, const float* bias,
                  float* out) {
    constexpr i64 NR = NR_GENERIC;
    for (i64 r = 0; r < MR_GENERIC; ++r) {
        float acc[NR] = {};
        for (i64 d = 0; d < D; ++d) {
            const float av = a[r * lda + d];
            for (i64 l = 0; l < NR; ++l) acc[l] += av * b[d * NR + l];
        }
        for (i64 l = 0; l < NR; ++l) out[r * NR + l] = acc[l] + bias[l];
    }
}

using TileFn = void (*)(i64, const float*, i64, const float*, const float*, float*);

// A tile shape and its micro-kernel.
struct Path {
    i64 MR, NR;
    TileFn tile;
};

// The path of default_isa() (FASTDC_CPU_ISA, else the widest this CPU runs).
Path pick_path() {
#if FASTDC_X86
    switch (default_isa()) {
        case Isa::avx512: return {12, 32, avx512::scores<12>};
        case Isa::avx2: return {6, 16, avx2::scores<6>};
        case Isa::generic: break;
    }
#endif
    return {MR_GENERIC, NR_GENERIC, tile_generic};
}

// Fold NR scores (database rows j0..j0+NR-1) into one row's sorted list of k entries.
inline void fold_scores(const float* s, i64 NR, i64 j0, i64 k, float* best, i64* arg) {
    for (i64 l = 0; l < NR; ++l) {
        const float v = s[l];
        if (!(v < best[k - 1])) continue;  // also drops NaN and the +inf padding
        i64 pos = k - 1;
        while (pos > 0 && v < best[pos - 1]) {
            best[pos] = best[pos - 1];
            arg[pos] = arg[pos - 1];
            --pos;
        }
        best[pos] = v;
        arg[pos] = j0 + l;
    }
}

// One thread's scratch: a last sliver's copy, the rows' norms and one tile of scores (views
// into buffers shared by all threads, allocated before the parallel region).
struct Scratch {
    float* tail;
    float* xsq;
    float* tile;
};

struct Problem {
    const float* x;
    const float* panels;  // [P, D, NR]
    const float* bias;    // [P * NR]
    i64 M, D, P, k;
    bool ip;
};

// The k best database rows of query rows [row0, row0 + rows).
void knn_block(const Problem& pr, i64 row0, i64 rows, const Path& path, const Scratch& s,
               float* dist, i64* idx) {
    const i64 D = pr.D, k = pr.k, MR = path.MR, NR = path.NR;
    const i64 full = block_rows(pr.x, D, row0, rows, MR, s.tail, s.xsq);
    float* best = dist + row0 * k;
    i64* arg = idx + row0 * k;
    std::fill(best, best + rows * k, INF);
    std::fill(arg, arg + rows * k, i64(-1));
    for (i64 p = 0; p < pr.P; ++p) {
        const float* panel = pr.panels + p * D * NR;
        for (i64 sl = 0; sl * MR < rows; ++sl) {
            const float* a = sl < full ? pr.x + (row0 + sl * MR) * D : s.tail;
            path.tile(D, a, D, panel, pr.bias + p * NR, s.tile);
            const i64 live = std::min(MR, rows - sl * MR);
            for (i64 r = 0; r < live; ++r) {
                const i64 row = sl * MR + r;
                fold_scores(s.tile + r * NR, NR, p * NR, k, best + row * k, arg + row * k);
            }
        }
    }
    for (i64 r = 0; r < rows; ++r) {
        for (i64 t = 0; t < k; ++t) {
            float& v = best[r * k + t];
            v = pr.ip ? -v : std::max(s.xsq[r] + v, 0.0f);
        }
    }
}

}  // namespace

void knn(const float* x, const float* y, i64 B, i64 N, i64 M, i64 D, i64 k, bool ip,
         float* dist, i64* idx, int n_threads) {
    if (k < 1 || k > M) throw std::invalid_argument("knn: need 1 <= k <= M");
    if (B == 0 || N == 0) return;
    const int nt = clamp_threads(n_threads);
    const Path path = pick_path();
    const i64 MR = path.MR, NR = path.NR, P = (M + NR - 1) / NR;
    AlignedBuffer<float> panels(B * P * D * NR), bias(B * P * NR);
    parallel_for(B * P, nt, [&](i64 bp, int) {
        pack_panel(y + (bp / P) * M * D, M, D, bp % P, NR, ip, panels.data() + bp * D * NR,
                   bias.data() + bp * NR);
    });
    i64 rows = std::min(BLOCK_BYTES / (4 * std::max<i64>(D, 1)), (N + 4 * nt - 1) / (4 * nt));
    rows = std::max(MR, round_up(std::max<i64>(rows, 1), MR));
    const i64 blocks = (N + rows - 1) / rows;
    // Every thread's scratch in three buffers, one slot per thread of the pool.
    AlignedBuffer<float> tail(nt * MR * D), xsq(nt * rows), tiles(nt * MR_MAX * NR_MAX);
    parallel_for(B * blocks, nt, [&](i64 task, int t) {
        const Scratch s{tail.data() + t * MR * D, xsq.data() + t * rows,
                        tiles.data() + t * MR_MAX * NR_MAX};
        const i64 b = task / blocks, row0 = (task % blocks) * rows;
        const Problem pr{x + b * N * D, panels.data() + b * P * D * NR, bias.data() + b * P * NR,
                         M, D, P, k, ip};
        knn_block(pr, row0, std::min(rows, N - row0), path, s, dist + b * N * k,
                  idx + b * N * k);
    });
}

}  // namespace fastdc
