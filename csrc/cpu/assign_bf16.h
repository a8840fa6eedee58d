// The bf16 main pass of assign (see assign.cpp) on CPUs with AVX512-BF16: operand packing,
// the micro-kernel and the rounding bound that decides which rows it settles.
//
// Scores are computed from bf16 copies of x and of the scaled centroids with float32
// accumulation (VDPBF16PS: two bf16 products per lane and step, each product exact in float32).
// For a row x and a centroid c (split as x = x_h + x_l, c = c_h + c_l, x_h = bf16(x), the
// residual x_l = x - x_h exact in float32), the identity x.c - x_h.c_h = x_l.c + x_h.c_l and
// Cauchy-Schwarz give |x.c - x_h.c_h| <= |x_l||c| + |x_h||c_l|. Float32 accumulation of D terms
// adds at most gamma_D * sum |x_h,i c_h,i| <= gamma_D |x_h||c_h| (gamma_D = D u / (1 - D u),
// u = 2^-24; Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.1), and the
// float32 kernel's own score is off the exact one by at most gamma_D |x||c|. So the bf16 score
// and the float32 kernel's score of the same centroid differ by at most E (bound_of below: the
// sum of these terms, scaled by the score's factor 2 (L2) or 1 (IP), with |x_h| <= |x| + |x_l|,
// the largest |c| and |c_l| over the centroids, the bias addition's rounding, and slack for
// flushed denormals). So a centroid whose bf16 score exceeds the row's best bf16 score by more
// than 2E cannot be the float32 kernel's winner: the pass keeps, per row, the centroids within
// 2E of the best so far (RowState), and the float32 scores of those candidates, computed bit
// for bit as the float32 kernel does, pick the winner. A row with more than CAP candidates is
// assigned by the float32 path. The fraction of rows with more than one candidate or assigned in
// float32 ("unsettled") is measured in benchmarks/bench_assign.py.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common.h"
#include "simd_vec.h"

#if FASTDC_X86
#define FASTDC_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma")))

namespace fastdc {
namespace avx512bf16 {

constexpr int W = 16;       // float32 lanes of a zmm register
constexpr int NR = 2 * W;   // centroids per panel: two accumulators per row
constexpr int MR = 12;      // rows per tile: 24 accumulators + 2 panel vectors + 1 broadcast

// bfloat16 bits of v, rounded to nearest even; values below the smallest normal float become
// zero (VDPBF16PS treats denormal inputs as zero; the residual keeps them); NaN stays NaN.
inline std::uint16_t to_bf16(float v) {
    std::uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((b >> 16) | 0x40u);
    if ((b & 0x7f800000u) == 0) return static_cast<std::uint16_t>((b >> 16) & 0x8000u);
    b += 0x7fffu + ((b >> 16) & 1u);
    return static_cast<std::uint16_t>(b >> 16);
}

inline float from_bf16(std::uint16_t h) {
    const std::uint32_t b = static_cast<std::uint32_t>(h) << 16;
    float v;
    std::memcpy(&v, &b, sizeof v);
    return v;
}

// Two bf16 values as the 32-bit word VDPBF16PS reads (the even index in the low half).
inline std::uint32_t pair(float even, float odd) {
    return static_cast<std::uint32_t>(to_bf16(even)) |
           (static_cast<std::uint32_t>(to_bf16(odd)) << 16);
}

// |v| and |v - bf16(v)| of a vector of n floats, in double.
inline void norms(const float* v, i64 n, double* norm, double* residual) {
    double s = 0.0, r = 0.0;
    for (i64 d = 0; d < n; ++d) {
        const double e = static_cast<double>(v[d]) - from_bf16(to_bf16(v[d]));
        s += static_cast<double>(v[d]) * v[d];
        r += e * e;
    }
    *norm = std::sqrt(s);
    *residual = std::sqrt(r);
}

// bf16 bits of the row xi - mu (D floats, the difference rounded to float32) into
// out[round_up(D, 16)] (zero past D), with upper bounds of |x|, |xi - mu| and
// |(xi - mu) - bf16(xi - mu)|: float32 sums of squares, raised by their own worst rounding
// ((D + 32) 2^-23 relative, Higham sec. 3.1).
FASTDC_AVX512BF16 inline void convert_row(const float* xi, const float* mu, i64 D,
                                          std::uint16_t* out, double* raw, double* norm,
                                          double* residual) {
    __m512 xq = _mm512_setzero_ps(), sq = _mm512_setzero_ps(), rq = _mm512_setzero_ps();
    for (i64 d = 0; d < D; d += W) {
        const __mmask16 m = D - d >= W ? 0xffff : static_cast<__mmask16>((1u << (D - d)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(m, xi + d);
        const __m512 v = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, mu + d));
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
        const __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        const __m512 e = _mm512_sub_ps(v, back);
        xq = _mm512_fmadd_ps(x, x, xq);
        sq = _mm512_fmadd_ps(v, v, sq);
        rq = _mm512_fmadd_ps(e, e, rq);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), h);
    }
    const double raise = 1.0 + (D + 32) * std::ldexp(1.0, -23);
    *raw = std::sqrt(_mm512_reduce_add_ps(xq) * raise);
    *norm = std::sqrt(_mm512_reduce_add_ps(sq) * raise);
    *residual = std::sqrt(_mm512_reduce_add_ps(rq) * raise);
}

// What the bound needs of the centroids of one problem, centred on mu (L2; IP: mu = 0): the
// largest |c_j - mu|, |(c_j - mu) - bf16(c_j - mu)| and bias |c_j - mu|^2, the largest raw
// |c_j|, and the score's factor (2 for L2, 1 for IP).
struct BoundTerms {
    double cmax = 0.0, clmax = 0.0, bmax = 0.0, raw_cmax = 0.0, scale = 2.0;
    i64 D = 0;
};

// E for a row with |x| = raw, |x - mu| = xn (after the float32 subtraction) and
// |(x - mu) - bf16(x - mu)| = xl: the most by which a bf16 score of the row can differ from
// the float32 kernel's score of the same centroid plus the row's centring shift
// 2 x.mu - |mu|^2 (see the top of this file). Terms: the bf16 products of the centred operands
// (the float32 subtractions add u |x - mu| and u |c - mu| to the residuals), their float32
// accumulation, the centred bias (float32 sum of D squares of rounded differences), and the
// float32 kernel's own error on the raw operands; each bias addition rounds once.
inline double bound_of(const BoundTerms& t, double raw, double xn, double xl) {
    const double u = std::ldexp(1.0, -24);
    const double gamma = t.D * u / (1.0 - t.D * u);
    const double xr = xl + u * xn, cr = t.clmax + u * t.cmax;  // residuals with the centring
    const double xh = xn + xr, ch = t.cmax + cr;
    const double centred = t.scale * (xr * t.cmax + xh * cr + gamma * xh * ch) +
                           (gamma + 3.0 * u) * t.bmax + 2.0 * u * (t.bmax + t.scale * xh * ch);
    const double rawb = t.raw_cmax * t.raw_cmax;
    const double kernel = t.scale * gamma * raw * t.raw_cmax + gamma * rawb +
                          2.0 * u * (rawb + t.scale * raw * t.raw_cmax);
    const double e = centred + kernel + std::ldexp(1.0, -100);
    return e * (1.0 + std::ldexp(1.0, -20));  // covers the rounding of this evaluation
}

// acc = the MR x NR dot products of a packed x sliver a [D2][MR] of pairs and a packed centroid
// panel b [D2][NR] of pairs, in a fixed order over the pairs.
FASTDC_AVX512BF16 __attribute__((always_inline)) inline void accumulate(
    i64 D2, const std::uint32_t* a, const std::uint32_t* b, __m512 (&acc)[MR][2]) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (i64 p = 0; p < D2; ++p) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(b);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(b + W);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
        a += MR;
        b += NR;
    }
}

// Candidates a row keeps; a row with more goes to the float32 path.
constexpr int CAP = 16;

// Per-row state of the bf16 pass over one block of rows (arrays indexed by the row in the
// block). A row's candidates are the centroids whose bf16 score was at most its limit when
// scored; the limit is the best score so far plus 2E (rounded up), so it only falls, and every
// centroid whose final score is within 2E of the final best is kept.
struct RowState {
    float* best;      // [rows] best bf16 score so far (+inf at the start)
    float* limit;     // [rows] best + 2E rounded up (+inf at the start; -inf once overflowed)
    const double* twice_bound;  // [rows] 2E
    int* count;       // [rows] candidates kept; CAP + 1 once the list overflowed
    int* cand;        // [rows][CAP] their centroids, in increasing j
    float* score;     // [rows][CAP] their bf16 scores
    float* rejected;  // [rows][NR] per lane, the smallest score that was not kept
    float* dropped;   // [rows] the smallest score dropped from the list when it filled
};

// Row k's best bf16 score so far becomes v, and its limit v + 2E rounded up.
inline void new_best(RowState& st, i64 k, float v) {
    st.best[k] = v;
    const float up = static_cast<float>(v + st.twice_bound[k]);
    st.limit[k] = std::nextafter(up, std::numeric_limits<float>::infinity());
}

// Row k's hits (bit l of `hits`: centroid j0 + l scored s[l] <= its limit): new bests lower the
// limit; kept entries are appended; a full list first drops the entries above the limit, and
// overflows (limit -inf: no more hits) when none is.
inline void take_hits(RowState& st, i64 k, std::uint32_t hits, const float* s, int j0) {
    int* cand = st.cand + k * CAP;
    float* score = st.score + k * CAP;
    for (std::uint32_t m = hits; m != 0 && st.count[k] <= CAP; m &= m - 1) {
        const int l = __builtin_ctz(m);
        if (!(s[l] <= st.limit[k])) {  // above a limit lowered by an earlier lane
            st.dropped[k] = std::min(st.dropped[k], s[l]);
            continue;
        }
        if (s[l] < st.best[k]) new_best(st, k, s[l]);
        if (st.count[k] == CAP) {
            int kept = 0;
            for (int e = 0; e < CAP; ++e) {
                if (score[e] <= st.limit[k]) {
                    cand[kept] = cand[e];
                    score[kept++] = score[e];
                } else {
                    st.dropped[k] = std::min(st.dropped[k], score[e]);
                }
            }
            st.count[k] = kept;
            if (kept == CAP) {
                st.count[k] = CAP + 1;
                st.limit[k] = -std::numeric_limits<float>::infinity();
                return;
            }
        }
        cand[st.count[k]] = j0 + l;
        score[st.count[k]++] = s[l];
    }
}

// One MR x NR tile of bf16 scores (D2 = ceil(D / 2) pair steps): a is a packed x sliver
// [D2][MR] of pairs, b a packed centroid panel [D2][NR] of pairs, bias [NR] is added; then the
// scores at most a row's limit go to take_hits, the others into the row's per-lane minimum of
// rejected scores. k0: the block row of the sliver's first row.
FASTDC_AVX512BF16 inline void tile(i64 D2, const std::uint32_t* a, const std::uint32_t* b,
                                   const float* bias, int j0, i64 k0, RowState& st) {
    __m512 acc[MR][2];
    accumulate(D2, a, b, acc);
    const __m512 bias0 = _mm512_loadu_ps(bias), bias1 = _mm512_loadu_ps(bias + W);
    for (int r = 0; r < MR; ++r) {
        const i64 k = k0 + r;
        const __m512 s0 = _mm512_add_ps(acc[r][0], bias0), s1 = _mm512_add_ps(acc[r][1], bias1);
        if (st.limit[k] == std::numeric_limits<float>::infinity()) {
            // the row's first finite scores: its limit from their minimum before the masks,
            // so that only the lanes within 2E of it are hits (not all NR of the panel)
            const float m = _mm512_reduce_min_ps(_mm512_min_ps(s0, s1));
            if (m < st.best[k]) new_best(st, k, m);
        }
        const __m512 t = _mm512_set1_ps(st.limit[k]);
        const __mmask16 m0 = _mm512_cmp_ps_mask(s0, t, _CMP_LE_OQ);
        const __mmask16 m1 = _mm512_cmp_ps_mask(s1, t, _CMP_LE_OQ);
        float* rej = st.rejected + k * NR;
        _mm512_store_ps(rej, _mm512_mask_min_ps(_mm512_load_ps(rej), ~m0, _mm512_load_ps(rej), s0));
        _mm512_store_ps(rej + W, _mm512_mask_min_ps(_mm512_load_ps(rej + W), ~m1,
                                                    _mm512_load_ps(rej + W), s1));
        const std::uint32_t hits = m0 | (static_cast<std::uint32_t>(m1) << W);
        if (hits == 0) continue;
        alignas(64) float s[NR];
        _mm512_store_ps(s, s0);
        _mm512_store_ps(s + W, s1);
        take_hits(st, k, hits, s, j0);
    }
}

// Throughput yardstick of the bf16 pass (fma_peak.cpp): REGS independent VDPBF16PS chains
// (as many as the tile has accumulators), run by run(seconds, step) until `seconds` have passed.
// Returns the lane multiply-adds done (two per lane and instruction); stores a value of the
// chains in *sink so that the loop is kept.
template <int REGS, typename Run>
FASTDC_AVX512BF16 i64 dot_chains(double seconds, float* sink, Run run) {
    alignas(64) float state[REGS][W] = {};
    const i64 n = run(seconds, [&](i64 inner) FASTDC_AVX512BF16 {
        const __m512bh m = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f);  // bf16 pairs of ~0.996
        __m512 acc[REGS];
#pragma GCC unroll 32
        for (int r = 0; r < REGS; ++r) acc[r] = _mm512_load_ps(state[r]);
        for (i64 i = 0; i < inner; ++i) {
#pragma GCC unroll 32
            for (int r = 0; r < REGS; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], m, m);
        }
#pragma GCC unroll 32
        for (int r = 0; r < REGS; ++r) _mm512_store_ps(state[r], acc[r]);
    });
    *sink = state[0][0];
    return n * REGS * W * 2;
}

}  // namespace avx512bf16
}  // namespace fastdc
#endif
