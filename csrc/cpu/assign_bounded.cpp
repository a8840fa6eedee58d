// assign_bounded: assign (squared L2) with a lower bound per row and centroid (Elkan, "Using
// the triangle inequality to accelerate k-means", ICML 2003), for the Lloyd loop's passes
// when N x K bounds fit in memory. The labels are assign's, bit for bit.
//
// The first pass scores every pair with assign's own tile and packing (so its labels and dist
// are assign's bits) and sets every bound from those scores. In a later pass, per row i with
// previous label a, E = 2 gamma (||x_i||^2 + max_j ||c_j||^2), at least
// gamma (||x_i|| + max_j ||c_j||)^2, bounds the error of both the kernel's squared distances and
// this file's estimates (gamma = 2 (D + 2) 2^-24; see fastdc/engine/pruning.py):
//  1. est_a, an estimate of ||x_i - c_a||^2 (a dot product in any order plus the norms, within
//     E / 2 of the true value): u^2 = est_a + E bounds the true squared distance from above;
//  2. every bound l_ij is read back lowered by the moves of centroid j since it was set;
//     centroid j stays out when l_ij^2 > u^2 + 2E (its true squared distance exceeds a's by more
//     than 2E, so the kernel cannot rank it first, nor tie it);
//  3. the others get an estimate est_j (8 centroids at a time, FMA-bound; one at a time when
//     there are at most FEW_ESTIMATES) and a new bound
//     l_ij = sqrt(est_j - E); the close set is every centroid within 4E of the smallest
//     estimate (a centroid beyond it is worse than the best one by more than 2E in truth);
//  4. a close set of one is the winner; a larger one is scored exactly by assign's own chains
//     (chain_scores): the smallest score wins, the smallest index on a tie. dist is the
//     winner's estimate (clamped at 0), or with exact_dist its exact score finished as assign
//     does (assign's bits).
// Bounds are stored as (l + S_j) rounded down, S_j centroid j's cumulative shift (the caller's
// running sum of upper bounds of its moves, rounded up at every step) when l was set: at a later
// S_j' the true distance is at least l - (S_j' - S_j) >= stored - S_j', so a pass reads its K
// bounds per row and writes only those it sets (writing all N x K lowered bounds back made a
// pass at 5 000 x 32, K = 100 1.45x slower on one Zen 3 core: 0.49 against 0.34 ms).
// Bounds are rounded inwards (square roots by 2^-9 where an approximate reciprocal square root
// takes them, other values by 2^-22) and thresholds outwards (by 2^-22). Rows whose norm (or
// any centroid's) is not finite skip the bounds: every centroid is scored exactly, and their
// stored bounds are set to 0.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "aligned.h"
#include "assign_chain.h"
#include "common.h"
#include "kernels.h"
#include "pool.h"
#include "simd_vec.h"

#if FASTDC_X86
#include <immintrin.h>
#endif

namespace fastdc {
namespace {

constexpr float INF = std::numeric_limits<float>::infinity();
constexpr float SHRINK = 1.0f - 0x1p-22f;  // a float32 bound rounded inwards after 1-2 roundings
constexpr float GROW = 1.0f + 0x1p-22f;
// The bound test compares (stored - S_j) unrounded with a threshold grown by this: exceeding
// it, the difference would exceed the threshold after the subtraction's and SHRINK's roundings
// too ((1 + 2^-21)(1 - 2^-24)^2 (1 - 2^-22) > 1).
constexpr float TEST_GROW = 1.0f + 0x1p-21f;
constexpr float RSQRT_SHRINK = 1.0f - 0x1p-9f;  // covers rsqrt's relative error (<= 1.5 2^-12)
constexpr i64 TASK_ROWS = 128;  // rows per task of the thread pool (later passes)
constexpr i64 FEW_ESTIMATES = 4;  // at most this many candidates: one dot product each
constexpr i64 NR = 16;          // centroids per packed panel in the first pass (the AVX2 tile's)
constexpr i64 MR = 6;           // rows per tile in the first pass (the AVX2 tile's)
constexpr i64 BLOCK_BYTES = 192 * 1024;  // x per block of the first pass (assign's choice)

// One problem's operands.
struct Problem {
    const float* x;      // [N, D]
    const float* c;      // [K, D]
    const float* csq;    // [K] row_sq of the centroids (assign's bias)
    const float* shift;  // [K] cumulative shifts S_j (the stored bounds' offsets)
    i64* labels;         // [N] in/out
    float* lower;        // [N, K] in/out
    float* dist;         // [N] out
    const float* panels;  // first pass: [P, D, NR] packed -2 c (assign's packing)
    const float* bias;    // first pass: [P * NR] csq, +inf on padding
    i64 K, D;
    bool exact_dist;
    double cmax_sq;      // >= max_j ||c_j||^2; +inf when a centroid is not finite
    double gamma;
    Isa isa;
};

// A thread's scratch: candidate indices, their estimates and new bounds, the close set and its
// exact scores, and the rows waiting for their winner's exact score (scored 16 at a time).
struct Scratch {
    std::vector<int> cand;
    std::vector<float> est;
    std::vector<float> bound;
    std::vector<int> close;
    std::vector<float> exact;
    i64 pending_rows[16];
    i64 pending_j[16];
    int n_pending = 0;
    // the task's rows' terms (prepare_rows): ||x||^2 (in any summation order), E, the own
    // estimate, the test threshold
    float xsq[TASK_ROWS], E[TASK_ROWS], est_a[TASK_ROWS], t[TASK_ROWS];
    explicit Scratch(i64 K)
        : cand(K + 32), est(K + 8), bound(K + 8), close(K + 8), exact(K + 16) {}
};

// E of a row with squared norm xsq, rounded up: 2 gamma (||x||^2 + max_j ||c_j||^2), at least
// gamma (||x|| + max_j ||c_j||)^2 since (a + b)^2 <= 2 a^2 + 2 b^2 (no square root per row).
inline float error_bound(const Problem& p, float xsq) {
    return static_cast<float>(2.0 * p.gamma * (static_cast<double>(xsq) + p.cmax_sq)) * GROW;
}

// The estimates' inputs for one row: x (D floats), ||x||^2 and E (rounded up), and the
// problem's centroids.
struct RowTerms {
    const float* x;
    float xsq, E;
};

// est = ||x||^2 + ||c_j||^2 - 2 x.c_j in float32: within E / 2 of the true squared distance
// (the dot product's D roundings in any order and the row_sq norms give (D + 2) 2^-24
// (||x|| + ||c_j||)^2 at most, E is twice that). Its lower bound sqrt(est - E) rounds inwards.
inline float estimate(float xsq, float csq, float dot) { return xsq + csq - 2.0f * dot; }
inline float lower_of(float est, float E) {
    const float v = est - E;
    return v > 0.0f ? std::sqrt(v) * SHRINK : 0.0f;
}

// The stored form of a bound l set when centroid j's cumulative shift is s: (l + s) rounded
// down. Read back at a later cumulative shift s' >= s + (the moves since), (stored - s') is a
// bound then (module comment), so a pass never writes back the bounds it only lowers.
inline float stored(float l, float s) { return (l + s) * SHRINK; }

// assign's dist from a row's squared norm and its winner's score: ||x||^2 + score clamped at 0
// (NaN stays NaN).
inline float finish(float xsq, float score) {
    const float d = xsq + score;
    return d < 0.0f ? 0.0f : d;
}

// x.c (D floats each) in order: the portable path's estimate.
inline float dot_generic(const float* x, const float* c, i64 D) {
    float acc = 0.0f;
    for (i64 d = 0; d < D; ++d) acc += x[d] * c[d];
    return acc;
}

#if FASTDC_X86
// The mask of the first D % 8 lanes (the masked last step of a dot product over d).
FASTDC_AVX2 inline __m256i tail_mask(i64 D) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(D % 8)), lane);
}

// sqrt(max(v, 0)) rounded inwards, per lane: v * rsqrt(v) shrunk by 2^-9 (no square root
// instruction: its throughput bounds the first pass at D = 32); 0 below the smallest normal
// float (rsqrt of a subnormal is +inf) and for NaN.
FASTDC_AVX2 inline __m256 sqrt_down(__m256 v) {
    const __m256 normal = _mm256_cmp_ps(v, _mm256_set1_ps(std::numeric_limits<float>::min()),
                                        _CMP_GE_OQ);
    const __m256 root = _mm256_mul_ps(_mm256_mul_ps(v, _mm256_rsqrt_ps(v)),
                                      _mm256_set1_ps(RSQRT_SHRINK));
    return _mm256_and_ps(normal, root);
}

// x.c_j of one centroid: two FMA chains over d in steps of 8, then a horizontal sum.
FASTDC_AVX2 float dot_avx2(const float* x, const float* cj, i64 D) {
    const i64 full = D / 8 * 8;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    i64 d = 0;
    for (; d + 16 <= full; d += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(cj + d), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + d + 8), _mm256_loadu_ps(cj + d + 8), acc1);
    }
    if (d < full) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(cj + d), acc0);
    if (full < D) {
        const __m256i m = tail_mask(D);
        acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(x + full, m), _mm256_maskload_ps(cj + full, m),
                               acc1);
    }
    const __m256 v = _mm256_add_ps(acc0, acc1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

// x.c_j and ||x||^2 in one pass over x (prepare_rows' own estimate and the row's norm for the
// estimates and E: any summation order is within the bounds of pruning.py; the exact dist of
// a row takes row_sq's bits instead).
FASTDC_AVX2 void dot_and_sq_avx2(const float* x, const float* cj, i64 D, float* dot, float* sq) {
    const i64 full = D / 8 * 8;
    __m256 acc = _mm256_setzero_ps(), acc_sq = _mm256_setzero_ps();
    for (i64 d = 0; d < full; d += 8) {
        const __m256 xv = _mm256_loadu_ps(x + d);
        acc = _mm256_fmadd_ps(xv, _mm256_loadu_ps(cj + d), acc);
        acc_sq = _mm256_fmadd_ps(xv, xv, acc_sq);
    }
    if (full < D) {
        const __m256i m = tail_mask(D);
        const __m256 xv = _mm256_maskload_ps(x + full, m);
        acc = _mm256_fmadd_ps(xv, _mm256_maskload_ps(cj + full, m), acc);
        acc_sq = _mm256_fmadd_ps(xv, xv, acc_sq);
    }
    // both horizontal sums at once: lanes 0-3 of h hold the dot's halves, 4-7 the norm's
    const __m256 h = _mm256_hadd_ps(acc, acc_sq);  // [d01 d23 s01 s23 | d45 d67 s45 s67]
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 r = _mm_hadd_ps(q, q);  // [dot, sq, dot, sq]
    *dot = _mm_cvtss_f32(r);
    *sq = _mm_cvtss_f32(_mm_movehdup_ps(r));
}

// estimates_each, 8 centroids at a time: 8 independent FMA chains over d in steps of 8 (a
// masked last step), one transposing horizontal sum, then the estimates and bounds as vectors.
// A last group of fewer than 8 repeats its first centroid in the spare lanes (the same
// estimate: the minimum is unchanged); est has room for a whole last group.
FASTDC_AVX2 float estimates_avx2(const Problem& p, const RowTerms& r, const int* js, i64 n,
                                 float* l, float* est, float* bound) {
    const i64 D = p.D, full = D / 8 * 8;
    const __m256i tail = tail_mask(D);
    const __m256 xsq = _mm256_set1_ps(r.xsq), E = _mm256_set1_ps(r.E);
    __m256 best = _mm256_set1_ps(INF);
    for (i64 g = 0; g < n; g += 8) {
        int jj[8];
        const float* cp[8];
        for (int q = 0; q < 8; ++q) {
            jj[q] = js[g + q < n ? g + q : g];
            cp[q] = p.c + jj[q] * D;
        }
        __m256 acc[8];
        for (auto& v : acc) v = _mm256_setzero_ps();
        for (i64 d = 0; d < full; d += 8) {
            const __m256 xv = _mm256_loadu_ps(r.x + d);
            for (int q = 0; q < 8; ++q)
                acc[q] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(cp[q] + d), acc[q]);
        }
        if (full < D) {
            const __m256 xv = _mm256_maskload_ps(r.x + full, tail);
            for (int q = 0; q < 8; ++q)
                acc[q] = _mm256_fmadd_ps(xv, _mm256_maskload_ps(cp[q] + full, tail), acc[q]);
        }
        const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
        const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
        const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
        const __m256 dot = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                         _mm256_permute2f128_ps(u0, u1, 0x31));
        // eight scalar loads (a gather instruction is microcoded and slower on Zen)
        const __m256 csq = _mm256_setr_ps(p.csq[jj[0]], p.csq[jj[1]], p.csq[jj[2]], p.csq[jj[3]],
                                          p.csq[jj[4]], p.csq[jj[5]], p.csq[jj[6]], p.csq[jj[7]]);
        const __m256 e = _mm256_sub_ps(_mm256_add_ps(xsq, csq), _mm256_add_ps(dot, dot));
        _mm256_storeu_ps(est + g, e);
        best = _mm256_min_ps(best, e);
        _mm256_storeu_ps(bound + g, sqrt_down(_mm256_sub_ps(e, E)));
    }
    for (i64 t = 0; t < n; ++t)  // after the loop: no store forwarding
        l[js[t]] = stored(bound[t], p.shift[js[t]]);
    __m128 h = _mm_min_ps(_mm256_castps256_ps128(best), _mm256_extractf128_ps(best, 1));
    h = _mm_min_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_min_ss(h, _mm_movehdup_ps(h)));
}

// The lanes of each 8-bit mask in increasing order (the rest 0): compacting a compare mask into
// candidate indices without a branch per candidate.
struct LaneTable {
    alignas(32) int lanes[256][8];
    LaneTable() {
        for (int m = 0; m < 256; ++m) {
            int n = 0;
            for (int l = 0; l < 8; ++l) lanes[m][l] = 0;
            for (int l = 0; l < 8; ++l)
                if (m >> l & 1) lanes[m][n++] = l;
        }
    }
};
const LaneTable LANES;

// The close set's members among the n candidates (estimates est, room for a last group of 8):
// appended to close from *m on, branch-free; *est_win is the estimate of the last one found.
FASTDC_AVX2 void close_set_avx2(const float* est, const int* cand, i64 n, float limit,
                                int* close, i64* m, float* est_win) {
    const __m256 lim = _mm256_set1_ps(limit);
    i64 count = *m;
    for (i64 g = 0; g < n; g += 8) {
        unsigned bits = static_cast<unsigned>(
            _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(est + g), lim, _CMP_LE_OQ)));
        if (n - g < 8) bits &= (1u << (n - g)) - 1;
        if (bits == 0) continue;
        const __m256i lanes =
            _mm256_load_si256(reinterpret_cast<const __m256i*>(LANES.lanes[bits]));
        const __m256i js = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cand + g));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(close + count),
                            _mm256_permutevar8x32_epi32(js, lanes));
        count += __builtin_popcount(bits);
        *est_win = est[g + 31 - __builtin_clz(bits)];
    }
    *m = count;
}

// Step 2 for 32 centroids at a time (then 8): append to cand every centroid other than `own`
// whose bound read back (stored - cumulative shift) is not above t, a NaN one included (cand
// has 32 spare slots). t is prepare_rows' threshold, grown to cover this subtraction's
// rounding and the bound's inward rounding. Most groups have no candidate: one branch per 32
// centroids (one per 16 took 2 % longer at 5 000 x 32, K = 100 on one Zen 3 core). Returns the
// first centroid left for the scalar loop.
FASTDC_AVX2 i64 lower_and_test_avx2(const float* l, const float* shift, i64 K, float t, i64 own,
                                    int* cand, i64* n) {
    const __m256 tv = _mm256_set1_ps(t);
    i64 j = 0, count = *n;
    for (; j + 32 <= K; j += 32) {
        std::uint64_t bits = 0;
        for (int h = 0; h < 4; ++h) {
            const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(l + j + 8 * h),
                                           _mm256_loadu_ps(shift + j + 8 * h));
            bits |= static_cast<std::uint64_t>(static_cast<unsigned>(
                        _mm256_movemask_ps(_mm256_cmp_ps(v, tv, _CMP_NGT_UQ))))
                    << (8 * h);
        }
        if (static_cast<std::uint64_t>(own - j) < 32) bits &= ~(std::uint64_t{1} << (own - j));
        if (bits == 0) continue;
        for (int h = 0; h < 32; h += 8) {
            const unsigned part = static_cast<unsigned>(bits >> h) & 0xffu;
            const __m256i lanes =
                _mm256_load_si256(reinterpret_cast<const __m256i*>(LANES.lanes[part]));
            _mm256_storeu_si256(
                reinterpret_cast<__m256i*>(cand + count),
                _mm256_add_epi32(lanes, _mm256_set1_epi32(static_cast<int>(j + h))));
            count += __builtin_popcount(part);
        }
    }
    for (; j + 8 <= K; j += 8) {
        unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(
            _mm256_sub_ps(_mm256_loadu_ps(l + j), _mm256_loadu_ps(shift + j)), tv, _CMP_NGT_UQ)));
        if (static_cast<std::uint64_t>(own - j) < 8) bits &= ~(1u << (own - j));
        if (bits == 0) continue;
        const __m256i lanes =
            _mm256_load_si256(reinterpret_cast<const __m256i*>(LANES.lanes[bits]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(cand + count),
                            _mm256_add_epi32(lanes, _mm256_set1_epi32(static_cast<int>(j))));
        count += __builtin_popcount(bits);
    }
    *n = count;
    return j;
}
#endif

// Step 2 for centroids [j, K): the scalar loop.
void lower_and_test(const float* l, const float* shift, i64 j, i64 K, float t, i64 own,
                    int* cand, i64* n) {
    for (; j < K; ++j) {
        if (!(l[j] - shift[j] > t) && j != own) cand[(*n)++] = static_cast<int>(j);
    }
}

// Score the pending rows' winners exactly and write their dist.
void flush(const Problem& p, Scratch& s) {
    if (s.n_pending == 0) return;
    const float* xs[16];
    const float* cs[16];
    float bias[16], score[16];
    for (int r = 0; r < s.n_pending; ++r) {
        xs[r] = p.x + s.pending_rows[r] * p.D;
        cs[r] = p.c + s.pending_j[r] * p.D;
        bias[r] = p.csq[s.pending_j[r]];
    }
    chain_scores(p.isa, p.D, s.n_pending, xs, cs, bias, -2.0f, score);
    for (int r = 0; r < s.n_pending; ++r)
        p.dist[s.pending_rows[r]] = finish(row_sq(xs[r], p.D), score[r]);
    s.n_pending = 0;
}

// Exact scores of centroids js[0..n) for row i (chains of 16) into out; returns the winner:
// the smallest score (never NaN: strict "<" from +inf), the smallest index on a tie, centroid 0
// when no score is below +inf (as assign's tiles start).
i64 exact_best(const Problem& p, i64 i, const int* js, i64 n, float* out, float* value) {
    const float* xs[16];
    const float* cs[16];
    float bias[16];
    for (i64 g = 0; g < n; g += 16) {
        const i64 m = std::min<i64>(16, n - g);
        for (i64 r = 0; r < m; ++r) {
            xs[r] = p.x + i * p.D;
            cs[r] = p.c + js[g + r] * p.D;
            bias[r] = p.csq[js[g + r]];
        }
        chain_scores(p.isa, p.D, m, xs, cs, bias, -2.0f, out + g);
    }
    float best = INF;
    i64 arg = 0;
    for (i64 t = 0; t < n; ++t) {
        if (out[t] < best || (out[t] == best && js[t] < arg)) {
            best = out[t];
            arg = js[t];
        }
    }
    *value = best;
    return arg;
}

// x_i . c_j, one centroid's dot product (a row's own estimate, or a few candidates').
float dot_with(const Problem& p, const float* xi, i64 j) {
#if FASTDC_X86
    if (p.isa != Isa::generic) return dot_avx2(xi, p.c + j * p.D, p.D);
#endif
    return dot_generic(xi, p.c + j * p.D, p.D);
}

// Estimates of the n centroids js, one at a time, into est[n], their new bounds into l[js[t]];
// returns the smallest estimate. The portable path's, and the AVX2 path's for at most
// FEW_ESTIMATES centroids (a group of 8 costs as much as about five single dot products).
float estimates_each(const Problem& p, const RowTerms& r, const int* js, i64 n, float* l,
                     float* est) {
    float best = INF;
    for (i64 t = 0; t < n; ++t) {
        est[t] = estimate(r.xsq, p.csq[js[t]], dot_with(p, r.x, js[t]));
        l[js[t]] = stored(lower_of(est[t], r.E), p.shift[js[t]]);
        best = std::min(best, est[t]);
    }
    return best;
}

// Steps 1-2's terms of rows [row0, row0 + rows) (rows <= TASK_ROWS) into s: ||x||^2, E, est_a
// and the test threshold, computed for all the rows before any is tested, so that the rows'
// independent chains (norm, error bound, estimate, square root) overlap.
void prepare_rows(const Problem& p, i64 row0, i64 rows, Scratch& s) {
    for (i64 r = 0; r < rows; ++r) {
        const float* xi = p.x + (row0 + r) * p.D;
        const i64 a = p.labels[row0 + r];
        float xsq, dot;
#if FASTDC_X86
        if (p.isa != Isa::generic) dot_and_sq_avx2(xi, p.c + a * p.D, p.D, &dot, &xsq);
#endif
        if (p.isa == Isa::generic) {
            xsq = row_sq(xi, p.D);
            dot = dot_generic(xi, p.c + a * p.D, p.D);
        }
        const float E = error_bound(p, xsq);
        const float est_a = estimate(xsq, p.csq[a], dot);
        s.xsq[r] = xsq;
        s.E[r] = E;
        s.est_a[r] = est_a;
        // a centroid whose bound exceeds sqrt(est_a + 3E) is worse than a by more than 2E in
        // truth; TEST_GROW lets the test compare the unrounded (stored - shift) with it
        s.t[r] = std::sqrt(std::max((est_a + 3.0f * E) * GROW, 0.0f)) * GROW * TEST_GROW;
    }
}

// Assign row i, the r-th of its task (prepare_rows' terms in s); returns the other centroids
// (not a) it estimated.
i64 assign_row(const Problem& p, i64 i, i64 r, Scratch& s) {
    const i64 K = p.K;
    const float* xi = p.x + i * p.D;
    float* l = p.lower + i * K;
    const float xsq = s.xsq[r], E = s.E[r], est_a = s.est_a[r], t = s.t[r];
    int* cand = s.cand.data();
    if (!std::isfinite(E)) {  // no bounds: every centroid exactly
        for (i64 j = 0; j < K; ++j) cand[j] = static_cast<int>(j);
        float v;
        p.labels[i] = exact_best(p, i, cand, K, s.exact.data(), &v);
        p.dist[i] = finish(row_sq(xi, p.D), v);
        std::fill(l, l + K, 0.0f);
        return K;
    }
    const RowTerms terms{xi, xsq, E};
    const bool wide = p.isa != Isa::generic;
    const i64 a = p.labels[i];
    i64 n = 0, j = 0;
#if FASTDC_X86
    if (wide) j = lower_and_test_avx2(l, p.shift, K, t, a, cand, &n);
#endif
    lower_and_test(l, p.shift, j, K, t, a, cand, &n);
    l[a] = stored(lower_of(est_a, E), p.shift[a]);
    if (n == 0 && !p.exact_dist && !std::isnan(est_a)) {  // a alone is left (most rows): it wins
        p.dist[i] = std::max(est_a, 0.0f);
        return 0;
    }
    float* est = s.est.data();
    float best = est_a;
    const bool grouped = wide && n > FEW_ESTIMATES;
#if FASTDC_X86
    if (grouped) best = std::min(best, estimates_avx2(p, terms, cand, n, l, est, s.bound.data()));
#endif
    if (!grouped) best = std::min(best, estimates_each(p, terms, cand, n, l, est));
    // the close set: every centroid within 4E of the best estimate (exact_best does not need
    // it in order); est_win: the estimate of its last member
    const float limit = (best + 4.0f * E) * GROW;
    int* close = s.close.data();
    close[0] = static_cast<int>(a);
    i64 m = est_a <= limit;
    float est_win = est_a;
#if FASTDC_X86
    if (wide) close_set_avx2(est, cand, n, limit, close, &m, &est_win);
#endif
    for (i64 q = 0; q < n && !wide; ++q) {
        const bool in = est[q] <= limit;
        close[m] = cand[q];
        est_win = in ? est[q] : est_win;
        m += in;
    }
    if (m == 0) {  // every estimate NaN (cannot happen with finite E): score all exactly
        for (i64 q = 0; q < K; ++q) close[q] = static_cast<int>(q);
        m = K;
    }
    if (m == 1 && !p.exact_dist) {
        p.labels[i] = close[0];
        p.dist[i] = std::max(est_win, 0.0f);
    } else if (m == 1) {  // the winner is known; its exact score (16 rows at a time) sets dist
        p.labels[i] = close[0];
        s.pending_rows[s.n_pending] = i;
        s.pending_j[s.n_pending] = close[0];
        if (++s.n_pending == 16) flush(p, s);
    } else {
        float v;
        p.labels[i] = exact_best(p, i, close, m, s.exact.data(), &v);
        p.dist[i] = finish(row_sq(xi, p.D), v);
    }
    return n;
}

// ---------------------------------------------------------------------------------------------
// The first pass: assign's tile over every pair, bounds from every score.

// Panel p of c (float32 [K, D]) packed as assign packs it: out [D][NR] = -2 c, bias [NR] =
// row_sq(c) (+inf and zeros on padding).
void pack_panel(const float* c, i64 K, i64 D, i64 p, float* out, float* bias) {
    for (i64 q = 0; q < NR; ++q) {
        const i64 j = p * NR + q;
        for (i64 d = 0; d < D; ++d) out[d * NR + q] = j < K ? -2.0f * c[j * D + d] : 0.0f;
        bias[q] = j < K ? row_sq(c + j * D, D) : INF;
    }
}

// MR x NR scores of MR rows (a, stride lda) against panel b: the chains of assign's portable
// tile (a product, then a sum, per d).
void scores_generic(i64 D, const float* a, i64 lda, const float* b, const float* bias,
                    float* out) {
    for (i64 r = 0; r < MR; ++r) {
        float acc[NR] = {};
        for (i64 d = 0; d < D; ++d) {
            const float av = a[r * lda + d];
            for (i64 q = 0; q < NR; ++q) acc[q] += av * b[d * NR + q];
        }
        for (i64 q = 0; q < NR; ++q) out[r * NR + q] = acc[q] + bias[q];
    }
}

// Fold one row's NR scores of centroids j0.. into its per-lane (min, argmin) (strict "<": the
// smallest index per lane) and write the bounds of the live lanes, in stored form (shift: the
// cumulative shifts), into l[j0..].
void fold_generic(const float* sc, i64 j0, i64 live, float xsq, float E, const float* shift,
                  float* best, int* arg, float* l) {
    for (i64 q = 0; q < NR; ++q) {
        if (sc[q] < best[q]) {
            best[q] = sc[q];
            arg[q] = static_cast<int>(j0 + q);
        }
        if (q < live) l[j0 + q] = stored(lower_of(xsq + sc[q], E), shift[j0 + q]);
    }
}

#if FASTDC_X86
FASTDC_AVX2 void fold_avx2(const float* sc, i64 j0, i64 live, float xsq, float E,
                           const float* shift, float* best, int* arg, float* l) {
    alignas(32) float bound[NR];
    const __m256 shrink = _mm256_set1_ps(SHRINK);
    for (i64 h = 0; h < NR; h += 8) {
        const __m256 v = _mm256_loadu_ps(sc + h), m = _mm256_load_ps(best + h);
        const __m256 lt = _mm256_cmp_ps(v, m, _CMP_LT_OQ);
        _mm256_store_ps(best + h, _mm256_blendv_ps(m, v, lt));
        const __m256i j = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0 + h)),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 old = _mm256_load_ps(reinterpret_cast<const float*>(arg + h));
        _mm256_store_ps(reinterpret_cast<float*>(arg + h),
                        _mm256_blendv_ps(old, _mm256_castsi256_ps(j), lt));
        const __m256 b = sqrt_down(_mm256_sub_ps(_mm256_add_ps(_mm256_set1_ps(xsq), v),
                                                 _mm256_set1_ps(E)));
        if (live == NR) {
            _mm256_storeu_ps(l + j0 + h,
                             _mm256_mul_ps(_mm256_add_ps(b, _mm256_loadu_ps(shift + j0 + h)),
                                           shrink));
        } else {
            _mm256_store_ps(bound + h, b);
        }
    }
    for (i64 q = 0; q < live && live < NR; ++q) l[j0 + q] = stored(bound[q], shift[j0 + q]);
}
#endif

// A row's winner from its per-lane minima: the smallest value, the smallest index among equal
// ones (assign's reduction); dist finished as assign does.
void finish_row(const float* best, const int* arg, float xsq, i64* label, float* dist) {
    float v = best[0];
    int j = arg[0];
    for (i64 q = 1; q < NR; ++q) {
        if (best[q] < v || (best[q] == v && arg[q] < j)) {
            v = best[q];
            j = arg[q];
        }
    }
    *label = j;
    *dist = finish(xsq, v);
}

// First pass over rows [row0, row0 + rows) of a problem; `state` holds rows * NR minima and
// arguments, `tail` MR * D floats, `terms` 2 * rows floats.
void first_block(const Problem& p, i64 row0, i64 rows, float* best, int* arg, float* tail,
                 float* terms, float* tile) {
    const i64 K = p.K, D = p.D, P = (K + NR - 1) / NR;
    float* xsq = terms;
    float* E = terms + rows;
    for (i64 r = 0; r < rows; ++r) {
        xsq[r] = row_sq(p.x + (row0 + r) * D, D);
        E[r] = error_bound(p, xsq[r]);
        if (!std::isfinite(E[r])) E[r] = INF;  // every bound of the row becomes 0
    }
    std::fill(best, best + rows * NR, INF);
    std::fill(arg, arg + rows * NR, 0);
    const i64 full = rows / MR;
    if (full * MR < rows) {
        std::copy(p.x + (row0 + full * MR) * D, p.x + (row0 + rows) * D, tail);
        std::fill(tail + (rows - full * MR) * D, tail + MR * D, 0.0f);
    }
    const bool wide = p.isa != Isa::generic;
    for (i64 pn = 0; pn < P; ++pn) {
        const float* panel = p.panels + pn * D * NR;
        const float* bias = p.bias + pn * NR;
        const i64 j0 = pn * NR, live = std::min(NR, K - j0);
        for (i64 sl = 0; sl * MR < rows; ++sl) {
            const float* a = sl < full ? p.x + (row0 + sl * MR) * D : tail;
#if FASTDC_X86
            if (wide) avx2::scores<MR>(D, a, D, panel, bias, tile);
#endif
            if (!wide) scores_generic(D, a, D, panel, bias, tile);
            for (i64 r = sl * MR; r < std::min(rows, sl * MR + MR); ++r) {
                float* l = p.lower + (row0 + r) * K;
                const float* sc = tile + (r - sl * MR) * NR;
#if FASTDC_X86
                if (wide)
                    fold_avx2(sc, j0, live, xsq[r], E[r], p.shift, best + r * NR, arg + r * NR, l);
#endif
                if (!wide)
                    fold_generic(sc, j0, live, xsq[r], E[r], p.shift, best + r * NR, arg + r * NR,
                                 l);
            }
        }
    }
    for (i64 r = 0; r < rows; ++r)
        finish_row(best + r * NR, arg + r * NR, xsq[r], p.labels + row0 + r, p.dist + row0 + r);
}

}  // namespace

void assign_bounded(const float* x, const float* c, const float* shift, i64 B, i64 N, i64 K,
                    i64 D, bool first, bool exact_dist, i64* labels, float* lower, float* dist,
                    i64* computed, int n_threads, Isa isa) {
    if (K < 1) throw std::invalid_argument("assign_bounded: need at least one centroid");
    if (K > std::numeric_limits<int>::max() - 16)
        throw std::invalid_argument("assign_bounded: K must be below 2^31 - 16");
    for (i64 i = 0; i < B * N && !first; ++i) {
        if (labels[i] < 0 || labels[i] >= K)
            throw std::invalid_argument("assign_bounded: labels out of [0, K)");
    }
    for (i64 b = 0; b < B; ++b) computed[b] = 0;
    if (B == 0 || N == 0) return;
    const int nt = clamp_threads(n_threads);
    std::vector<float> csq(B * K);
    std::vector<double> cmax(B, 0.0);
    for (i64 b = 0; b < B; ++b) {
        for (i64 j = 0; j < K; ++j) {
            const float v = row_sq(c + (b * K + j) * D, D);
            csq[b * K + j] = v;
            cmax[b] = std::isfinite(v) ? std::max(cmax[b], static_cast<double>(v))
                                       : std::numeric_limits<double>::infinity();
        }
        // row_sq's relative error is below D 2^-24; E's factor 2 covers the rest
        cmax[b] *= 1.0 + static_cast<double>(D + 2) * 0x1p-24;
    }
    const double gamma = 2.0 * static_cast<double>(D + 2) * 0x1p-24;
    const i64 P = (K + NR - 1) / NR;
    AlignedBuffer<float> panels(first ? B * P * D * NR : 0), bias(first ? B * P * NR : 0);
    if (first) {
        parallel_for(B * P, nt, [&](i64 bp, int) {
            pack_panel(c + (bp / P) * K * D, K, D, bp % P, panels.data() + bp * D * NR,
                       bias.data() + bp * NR);
        });
    }
    const auto problem = [&](i64 b) {
        return Problem{x + b * N * D, c + b * K * D, csq.data() + b * K, shift + b * K,
                       labels + b * N, lower + b * N * K, dist + b * N,
                       first ? panels.data() + b * P * D * NR : nullptr,
                       first ? bias.data() + b * P * NR : nullptr, K, D, exact_dist, cmax[b],
                       gamma, isa};
    };
    if (first) {
        i64 rows = std::min(BLOCK_BYTES / (4 * std::max<i64>(D, 1)), (N + 4 * nt - 1) / (4 * nt));
        rows = round_up(std::max<i64>(rows, 1), MR);
        const i64 blocks = (N + rows - 1) / rows;
        AlignedBuffer<float> best(nt * rows * NR), tail(nt * MR * D), terms(nt * 2 * rows),
            tiles(nt * MR * NR);
        AlignedBuffer<int> arg(nt * rows * NR);
        parallel_for(B * blocks, nt, [&](i64 task, int t) {
            const i64 b = task / blocks, row0 = (task % blocks) * rows;
            first_block(problem(b), row0, std::min(rows, N - row0), best.data() + t * rows * NR,
                        arg.data() + t * rows * NR, tail.data() + t * MR * D,
                        terms.data() + t * 2 * rows, tiles.data() + t * MR * NR);
        });
        for (i64 b = 0; b < B; ++b) computed[b] = N * K;
        return;
    }
    const i64 tasks = (N + TASK_ROWS - 1) / TASK_ROWS;
    std::vector<Scratch> scratch;
    for (int t = 0; t < nt; ++t) scratch.emplace_back(K);
    std::vector<i64> work(B * tasks, 0);
    parallel_for(B * tasks, nt, [&](i64 task, int slot) {
        const i64 b = task / tasks, row0 = (task % tasks) * TASK_ROWS;
        const Problem p = problem(b);
        Scratch& s = scratch[slot];
        const i64 rows = std::min(TASK_ROWS, N - row0);
        prepare_rows(p, row0, rows, s);
        i64 done = 0;
        for (i64 r = 0; r < rows; ++r) done += assign_row(p, row0 + r, r, s);
        flush(p, s);
        work[task] = done;
    });
    for (i64 task = 0; task < B * tasks; ++task) computed[task / tasks] += work[task];
}

}  // namespace fastdc
