// cluster_sums: per-cluster (weighted) sums and counts without floating-point atomics.
//
// Per problem: a stable counting sort of the row indices by cluster (serial; N = 10^6 takes a
// few ms), then a parallel loop over clusters in which each cluster adds its rows in increasing
// row order into a float64 accumulator, cast to float32 at the end. The order of every sum is
// fixed by the data alone, so results do not depend on the thread count. The products
// w * x (two float32 values) are exact in float64, so the sums are the same as the float64
// reference's sequential index_add_. Small problems skip the sort: one pass over the rows in
// order, each added into its cluster's accumulator (sums_in_row_order), the same order per
// cluster.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "aligned.h"
#include "common.h"
#include "kernels.h"
#include "pool.h"

#if FASTDC_X86
#include <immintrin.h>
#endif

namespace fastdc {
namespace {

// Throws std::out_of_range unless row i's cluster j is in [0, k).
inline void check_id(i64 i, i64 j, i64 k) {
    if (j < 0 || j >= k) {
        throw std::out_of_range("cluster_sums: idx[" + std::to_string(i) + "] = " +
                                std::to_string(j) + " is outside [0, " + std::to_string(k) + ")");
    }
}

// Stable counting sort of rows by cluster: on return, the rows of cluster j are
// order[start[j] .. start[j + 1]) in increasing row index. Throws on ids outside [0, k).
// Row indices are Row (int32 below 2^31 rows: half the memory of int64 at N = 10^6).
template <typename Row>
void sort_rows_by_cluster(const i64* idx, i64 N, i64 k, std::vector<i64>& start,
                          std::vector<Row>& order) {
    start.assign(k + 1, 0);
    for (i64 i = 0; i < N; ++i) {
        const i64 j = idx[i];
        check_id(i, j, k);
        ++start[j + 1];
    }
    for (i64 j = 0; j < k; ++j) start[j + 1] += start[j];
    std::vector<i64> next(start.begin(), start.end() - 1);
    order.resize(N);
    for (i64 i = 0; i < N; ++i) order[next[idx[i]]++] = static_cast<Row>(i);
}

// Doubles per register-blocked chunk of D: 8 ymm accumulators of 4 doubles. The chunk loop
// keeps the accumulators in registers over a group of rows instead of streaming a float64 [D]
// accumulator through L1 for every row: 33 ms -> 19 ms for N = 100 000, D = 256, K = 1000 on
// one core of this (shared, noisy) Zen 1 machine.
constexpr i64 CHUNK = 32;
// Rows per group: each chunk pass re-reads the group, so it must stay in L2 (64 rows = 64 KiB
// at D = 256). Without groups a 1000-row cluster (N = 10^6, K = 1000) spills to L3 and the
// eight chunk passes re-stream it from there.
constexpr i64 ROW_GROUP = 64;
constexpr i64 CLUSTERS_PER_TASK = 4;
// Below this many elements (B * N * D) one thread does it all: handing clusters to a second
// thread cost more than it saved. 2-core AMD EPYC Zen 3, median of 60 calls, 1 / 2 threads:
// 5000 x 32, K = 100: 57 / 73 us; 5000 x 64: 80 / 72 us; 10000 x 64: 139 / 111 us.
constexpr i64 PARALLEL_ELEMENTS = 1 << 18;

// Portable: add columns [d0, d1) of the n rows rows[] of x (float32 [., D]) times their weights
// (or 1) to acc (float64 [D], in/out), each column in row order.
template <typename Row>
void add_rows_generic(const float* x, i64 D, const float* weights, const Row* rows, i64 n,
                      i64 d0, i64 d1, double* acc) {
    double a[CHUNK];
    for (i64 c0 = d0; c0 < d1; c0 += CHUNK) {
        const i64 len = std::min(CHUNK, d1 - c0);
        for (i64 k = 0; k < len; ++k) a[k] = acc[c0 + k];
        for (i64 t = 0; t < n; ++t) {
            const float* xi = x + static_cast<i64>(rows[t]) * D + c0;
            const double w = weights != nullptr ? weights[rows[t]] : 1.0;
            for (i64 k = 0; k < len; ++k) a[k] += w * static_cast<double>(xi[k]);
        }
        for (i64 k = 0; k < len; ++k) acc[c0 + k] = a[k];
    }
}

#if FASTDC_X86
// AVX2: columns [0, D - D % CHUNK) in chunks of 32 with 8 ymm float64 accumulators, added to
// acc (float64 [D], in/out); the rest goes to the portable loop. w * x is exact in float64, so
// the FMA equals the separate multiply and add: same bits as the portable path.
// next[0 .. n_next) are the rows that come after these (next group, possibly of the next
// cluster): each chunk pass prefetches its two cache lines of them, so the whole next group
// is in cache by the time it is needed, a full group of work ahead.
template <typename Row>
FASTDC_AVX2 void add_rows_avx2(const float* x, i64 D, const float* weights, const Row* rows,
                               i64 n, const Row* next, i64 n_next, double* acc) {
    const i64 full = D - D % CHUNK;
    for (i64 c0 = 0; c0 < full; c0 += CHUNK) {
        __m256d a[8];
        for (int k = 0; k < 8; ++k) a[k] = _mm256_loadu_pd(acc + c0 + 4 * k);
        for (i64 t = 0; t < n; ++t) {
            if (t < n_next) {
                const float* ahead = x + static_cast<i64>(next[t]) * D + c0;
                _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(ahead + 16), _MM_HINT_T0);
            }
            const float* xi = x + static_cast<i64>(rows[t]) * D + c0;
            const __m256d w = _mm256_set1_pd(weights != nullptr ? weights[rows[t]] : 1.0);
            for (int k = 0; k < 8; ++k)
                a[k] = _mm256_fmadd_pd(w, _mm256_cvtps_pd(_mm_loadu_ps(xi + 4 * k)), a[k]);
        }
        for (int k = 0; k < 8; ++k) _mm256_storeu_pd(acc + c0 + 4 * k, a[k]);
    }
    add_rows_generic(x, D, weights, rows, n, full, D, acc);
}
#endif

// Sum the n rows rows[] of one cluster into sum (float32 [D]) through acc (float64 [D]
// scratch), ROW_GROUP rows at a time; returns the sum of the weights. rows[n .. n + after)
// exist (the following clusters' rows): they are only prefetched.
template <typename Row>
double sum_cluster(const float* x, i64 D, const float* weights, const Row* rows, i64 n,
                   i64 after, bool avx2, double* acc, float* sum) {
    for (i64 d = 0; d < D; ++d) acc[d] = 0.0;
    for (i64 t0 = 0; t0 < n; t0 += ROW_GROUP) {
        const i64 m = std::min(ROW_GROUP, n - t0);
#if FASTDC_X86
        if (avx2) {
            const i64 n_next = std::min(ROW_GROUP, n + after - (t0 + m));
            add_rows_avx2(x, D, weights, rows + t0, m, rows + t0 + m, n_next, acc);
            continue;
        }
#endif
        (void)avx2;
        (void)after;
        add_rows_generic(x, D, weights, rows + t0, m, 0, D, acc);
    }
    for (i64 d = 0; d < D; ++d) sum[d] = static_cast<float>(acc[d]);
    double wsum = 0.0;
    for (i64 t = 0; t < n; ++t) wsum += weights != nullptr ? weights[rows[t]] : 1.0;
    return wsum;
}

// Problems whose float64 accumulators of every cluster fit in L2 (K * D * 8 bytes at most
// this), when one thread does it all: one pass over the rows in order, each added into its
// cluster's accumulator. Each cluster's rows are then added in increasing row order, as the
// sorted pass adds them, so the sums are the same bits, without the sort and the gathers
// (5 000 x 32, K = 100 on one Zen 3 core: 40 -> 33 us).
constexpr i64 DIRECT_BYTES = 256 * 1024;

// Row i times its weight w (or 1) added into a (float64 [D]): the same w * x_d + a_d,
// rounded once (w * x is exact in float64), as add_rows_avx2 and add_rows_generic add it.
inline void add_row_generic(const float* xi, i64 D, double w, double* a) {
    for (i64 d = 0; d < D; ++d) a[d] += w * static_cast<double>(xi[d]);
}

#if FASTDC_X86
FASTDC_AVX2 void add_row_avx2(const float* xi, i64 D, double w, double* a) {
    const __m256d wv = _mm256_set1_pd(w);
    i64 d = 0;
    for (; d + 4 <= D; d += 4) {
        _mm256_storeu_pd(a + d, _mm256_fmadd_pd(wv, _mm256_cvtps_pd(_mm_loadu_ps(xi + d)),
                                                _mm256_loadu_pd(a + d)));
    }
    for (; d < D; ++d) a[d] += w * static_cast<double>(xi[d]);
}
#endif

// The direct pass over one problem: acc (float64 [k, D]) and wsum (float64 [k]) zeroed
// inside; sums and counts as cluster_sums writes them. Throws on ids outside [0, k).
void sums_in_row_order(const float* x, const i64* idx, const float* weights, i64 N, i64 D,
                       i64 k, bool avx2, double* acc, double* wsum, float* sums,
                       float* counts) {
    std::fill(acc, acc + k * D, 0.0);
    std::fill(wsum, wsum + k, 0.0);
    for (i64 i = 0; i < N; ++i) {
        const i64 j = idx[i];
        check_id(i, j, k);
        const double w = weights != nullptr ? weights[i] : 1.0;
#if FASTDC_X86
        if (avx2) {
            add_row_avx2(x + i * D, D, w, acc + j * D);
        } else {
            add_row_generic(x + i * D, D, w, acc + j * D);
        }
#else
        (void)avx2;
        add_row_generic(x + i * D, D, w, acc + j * D);
#endif
        wsum[j] += w;
    }
    for (i64 t = 0; t < k * D; ++t) sums[t] = static_cast<float>(acc[t]);
    for (i64 j = 0; j < k; ++j) counts[j] = static_cast<float>(wsum[j]);
}

// cluster_sums with row indices of type Row.
template <typename Row>
void cluster_sums_as(const float* x, const i64* idx, const float* weights, i64 B, i64 N, i64 D,
                     i64 k, float* sums, float* counts, int nt) {
    const bool avx2 = has_avx2_fma();
    std::vector<i64> start;
    std::vector<Row> order;
    AlignedBuffer<double> acc(static_cast<i64>(nt) * std::max<i64>(D, 1));
    for (i64 b = 0; b < B; ++b) {
        const float* xb = x + b * N * D;
        const float* wb = weights == nullptr ? nullptr : weights + b * N;
        sort_rows_by_cluster(idx + b * N, N, k, start, order);
        // tasks of CLUSTERS_PER_TASK clusters, handed out one at a time: sizes vary widely
        parallel_for((k + CLUSTERS_PER_TASK - 1) / CLUSTERS_PER_TASK, nt, [&](i64 t, int slot) {
            double* my_acc = acc.data() + static_cast<i64>(slot) * D;
            const i64 end = std::min(k, (t + 1) * CLUSTERS_PER_TASK);
            for (i64 j = t * CLUSTERS_PER_TASK; j < end; ++j) {
                const double w = sum_cluster(xb, D, wb, order.data() + start[j],
                                             start[j + 1] - start[j], N - start[j + 1], avx2,
                                             my_acc, sums + (b * k + j) * D);
                counts[b * k + j] = static_cast<float>(w);
            }
        });
    }
}

}  // namespace

void cluster_sums(const float* x, const i64* idx, const float* weights, i64 B, i64 N, i64 D,
                  i64 k, float* sums, float* counts, int n_threads) {
    if (k < 1) throw std::invalid_argument("cluster_sums: k must be >= 1");
    const int nt = B * N * D < PARALLEL_ELEMENTS ? 1 : clamp_threads(n_threads);
    if (nt == 1 && k * D * 8 <= DIRECT_BYTES) {
        std::vector<double> acc(k * D), wsum(k);
        for (i64 b = 0; b < B; ++b) {
            const float* wb = weights == nullptr ? nullptr : weights + b * N;
            sums_in_row_order(x + b * N * D, idx + b * N, wb, N, D, k, has_avx2_fma(),
                              acc.data(), wsum.data(), sums + b * k * D, counts + b * k);
        }
        return;
    }
    if (N <= std::numeric_limits<std::int32_t>::max()) {
        cluster_sums_as<std::int32_t>(x, idx, weights, B, N, D, k, sums, counts, nt);
    } else {
        cluster_sums_as<i64>(x, idx, weights, B, N, D, k, sums, counts, nt);
    }
}

}  // namespace fastdc
